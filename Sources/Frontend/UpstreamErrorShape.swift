import Foundation
import NIOCore

extension Gateway {
    /// A runtime's error answer in OpenAI's shape where clients act on it:
    /// - llama-server says a prompt is over the context with `"type":"exceed_context_size_error"`
    ///   and an integer `code`; OpenAI says `"code":"context_length_exceeded"`,
    ///   `"type":"invalid_request_error"` and names the `param`, which SDKs and agent frameworks
    ///   test to trim a conversation. llama-server's figures (`n_prompt_tokens`, `n_ctx`) are kept.
    /// - llama-server answers an image or audio part sent to a model without a projector with a
    ///   500 `server_error` ("image input is not supported"): the request's doing, not the
    ///   server's, and a 5xx is what clients (the openai SDKs retry it twice) and the replica
    ///   retry rule take for a passing failure. It goes out as OpenAI answers content a model does
    ///   not take: 400, `invalid_request_error`, `param` the messages.
    /// The message is kept. nil: the answer goes as it came (any other status or error).
    static func openAIShaped(status: Int, body: ByteBuffer, endpoint: Endpoint) -> (status: Int, body: ByteBuffer)? {
        guard status == 400 || status == 500, body.readableBytes < 64 << 10 else { return nil }
        let view = body.readableBytesView
        let overflow = status == 400 && view.firstRange(of: Array("exceed_context_size_error".utf8)) != nil
        let unsupportedInput = status == 500 && view.firstRange(of: Array("input is not supported".utf8)) != nil
        guard overflow || unsupportedInput,
            var object = try? JSONSerialization.jsonObject(with: Data(view)) as? [String: Any],
            var error = object["error"] as? [String: Any]
        else { return nil }
        if overflow {
            guard error["type"] as? String == "exceed_context_size_error" else { return nil }
            error["code"] = "context_length_exceeded"
        } else {
            guard let message = error["message"] as? String,
                message.hasPrefix("image input is not supported") || message.hasPrefix("audio input is not supported")
            else { return nil }
            error["code"] = NSNull()
        }
        error["type"] = "invalid_request_error"
        error["param"] = switch endpoint {
        case .chatCompletions: "messages"
        case .completions: "prompt"
        case .responses, .embeddings: "input"
        }
        object["error"] = error
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return (400, ByteBuffer(bytes: data))
    }
}
