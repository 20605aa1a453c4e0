import Foundation
import NIOCore
import Testing

@testable import Frontend

/// A runtime's context-overflow error and its refusal of image or audio input in OpenAI's shape
/// (400, `invalid_request_error`); every other answer as it came.
struct UpstreamErrorShapeTests {
    static let overflow = #"{"error":{"code":400,"message":"request (3031 tokens) exceeds the available context size (1024 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3031,"n_ctx":1024}}"#

    @Test(arguments: [(Endpoint.chatCompletions, "messages"), (.completions, "prompt"), (.responses, "input")])
    func aContextOverflowBecomesContextLengthExceeded(endpoint: Endpoint, param: String) throws {
        let shaped = try #require(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: Self.overflow), endpoint: endpoint))
        #expect(shaped.status == 400)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(shaped.body.readableBytesView)) as? [String: Any])
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["code"] as? String == "context_length_exceeded")
        #expect(error["type"] as? String == "invalid_request_error")
        #expect(error["param"] as? String == param)
        #expect((error["message"] as? String)?.hasPrefix("request (3031 tokens) exceeds") == true)
        #expect(error["n_prompt_tokens"] as? Int == 3031 && error["n_ctx"] as? Int == 1024)
    }

    static let noVision = #"{"error":{"code":500,"message":"image input is not supported - hint: if this is unexpected, you may need to provide the mmproj","type":"server_error"}}"#

    @Test func imageOrAudioToAModelWithoutAProjectorIsTheRequestsError() throws {
        for body in [Self.noVision, Self.noVision.replacingOccurrences(of: "image input", with: "audio input")] {
            let shaped = try #require(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: body), endpoint: .chatCompletions))
            #expect(shaped.status == 400)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(shaped.body.readableBytesView)) as? [String: Any])
            let error = try #require(object["error"] as? [String: Any])
            #expect(error["type"] as? String == "invalid_request_error")
            #expect(error["param"] as? String == "messages")
            #expect(error["code"] is NSNull)
            #expect((error["message"] as? String)?.hasPrefix(body.contains("image") ? "image input is not supported" : "audio input") == true)
        }
    }

    static func error(of shaped: (status: Int, body: ByteBuffer)?) throws -> [String: Any] {
        let shaped = try #require(shaped)
        #expect(shaped.status == 400)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(shaped.body.readableBytesView)) as? [String: Any])
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["type"] as? String == "invalid_request_error")
        return error
    }

    /// Messages llama-server cannot parse (a content part's text a number) got a 500, which
    /// Strata retried on every replica and the SDKs retried again; its 400s for a field of the
    /// wrong type had an integer code and no param.
    @Test func requestsTheRuntimeCannotParseAre400sNamingTheField() throws {
        let unparsed = #"{"error":{"code":500,"message":"Failed to parse messages: [json.exception.type_error.302] type must be string, but is number; messages = [...]","type":"server_error"}}"#
        var error = try Self.error(of: Gateway.openAIShaped(status: 500, body: ByteBuffer(string: unparsed), endpoint: .chatCompletions))
        #expect(error["param"] as? String == "messages" && error["code"] as? String == "invalid_type")
        #expect((error["message"] as? String)?.hasPrefix("Failed to parse messages") == true)
        let wrongType = #"{"error":{"code":400,"message":"Field 'max_tokens': [json.exception.type_error.302] type must be number, but is string","type":"invalid_request_error"}}"#
        error = try Self.error(of: Gateway.openAIShaped(status: 400, body: ByteBuffer(string: wrongType), endpoint: .chatCompletions))
        #expect(error["param"] as? String == "max_tokens" && error["code"] as? String == "invalid_type")
        // a message's content of the wrong type names no field: the messages are at fault,
        // whether the build answers it with a 400 or a 500
        let content = #"{"error":{"code":400,"message":"Expected 'content' to be a string or an array","type":"invalid_request_error"}}"#
        error = try Self.error(of: Gateway.openAIShaped(status: 400, body: ByteBuffer(string: content), endpoint: .chatCompletions))
        #expect(error["param"] as? String == "messages" && error["code"] is NSNull)
        let contentAs500 = #"{"error":{"code":500,"message":"Expected 'content' to be a string or an array","type":"server_error"}}"#
        let shaped500 = Gateway.openAIShaped(status: 500, body: ByteBuffer(string: contentAs500), endpoint: .chatCompletions)
        #expect(shaped500?.status == 400)
        error = try Self.error(of: shaped500)
        #expect(error["param"] as? String == "messages" && error["type"] as? String == "invalid_request_error")
        let other = #"{"error":{"code":400,"message":"bad temperature","type":"invalid_request_error"}}"#
        error = try Self.error(of: Gateway.openAIShaped(status: 400, body: ByteBuffer(string: other), endpoint: .chatCompletions))
        #expect(error["code"] is NSNull && error["param"] is NSNull, "a string code (or null) and a param key, as OpenAI's")
    }

    @Test func otherAnswersGoAsTheyCame() {
        let crash = #"{"error":{"code":500,"message":"something else: input is not supported here","type":"server_error"}}"#
        #expect(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: crash), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 503, body: ByteBuffer(string: Self.noVision), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: "image input is not supported"), endpoint: .chatCompletions) == nil)
        let shapedAlready = #"{"error":{"code":"invalid_value","message":"bad temperature","param":"temperature","type":"invalid_request_error"}}"#
        #expect(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: shapedAlready), endpoint: .chatCompletions) == nil)
        let serverFault = #"{"error":{"code":500,"message":"failed to allocate the KV cache","type":"server_error"}}"#
        #expect(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: serverFault), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 500, body: ByteBuffer(string: Self.overflow), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 400, body: ByteBuffer(string: "exceed_context_size_error {"), endpoint: .chatCompletions) == nil)
        #expect(Gateway.openAIShaped(status: 200, body: ByteBuffer(string: #"{"text":"exceed_context_size_error"}"#),
                                     endpoint: .completions) == nil)
    }
}
