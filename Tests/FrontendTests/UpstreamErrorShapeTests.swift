import Foundation
import NIOCore
import Testing

@testable import Frontend

/// A runtime's context-overflow error in OpenAI's shape; every other answer as it came.
struct UpstreamErrorShapeTests {
    static let overflow = #"{"error":{"code":400,"message":"request (3031 tokens) exceeds the available context size (1024 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3031,"n_ctx":1024}}"#

    @Test(arguments: [(Endpoint.chatCompletions, "messages"), (.completions, "prompt"), (.responses, "input")])
    func aContextOverflowBecomesContextLengthExceeded(endpoint: Endpoint, param: String) throws {
        let shaped = try #require(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: Self.overflow), endpoint: endpoint))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(shaped.readableBytesView)) as? [String: Any])
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["code"] as? String == "context_length_exceeded")
        #expect(error["type"] as? String == "invalid_request_error")
        #expect(error["param"] as? String == param)
        #expect((error["message"] as? String)?.hasPrefix("request (3031 tokens) exceeds") == true)
        #expect(error["n_prompt_tokens"] as? Int == 3031 && error["n_ctx"] as? Int == 1024)
    }

    @Test func otherAnswersGoAsTheyCame() {
        let other = #"{"error":{"code":400,"message":"bad temperature","type":"invalid_request_error"}}"#
        #expect(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: other), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: Self.overflow), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: "exceed_context_size_error {"), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 200, body: ByteBuffer(string: #"{"text":"exceed_context_size_error"}"#),
                                     endpoint: .completions) == nil)
    }
}
