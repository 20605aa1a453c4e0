import Foundation
import NIOCore

extension Gateway {
    /// A runtime's error answer in OpenAI's shape where clients check for it: llama-server says
    /// a prompt is over the context with `"type":"exceed_context_size_error"` and an integer
    /// `code`; OpenAI says `"code":"context_length_exceeded"`, `"type":"invalid_request_error"`
    /// and names the `param`, which SDKs and agent frameworks test to trim a conversation. The
    /// message and llama-server's figures (`n_prompt_tokens`, `n_ctx`) are kept. nil: the answer
    /// goes as it came (any other status or error).
    static func openAIShaped(status: Int, body: ByteBuffer, endpoint: Endpoint) -> ByteBuffer? {
        guard status == 400, body.readableBytes < 64 << 10,
            body.readableBytesView.firstRange(of: Array("exceed_context_size_error".utf8)) != nil,
            var object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
            var error = object["error"] as? [String: Any], error["type"] as? String == "exceed_context_size_error"
        else { return nil }
        error["type"] = "invalid_request_error"
        error["code"] = "context_length_exceeded"
        error["param"] = switch endpoint {
        case .chatCompletions: "messages"
        case .completions: "prompt"
        case .responses, .embeddings: "input"
        }
        object["error"] = error
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return ByteBuffer(bytes: data)
    }
}
