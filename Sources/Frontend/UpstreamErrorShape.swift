import Foundation
import NIOCore

extension Gateway {
    /// A runtime's error answer in OpenAI's shape where clients act on it:
    /// - llama-server says a prompt is over the context with `"type":"exceed_context_size_error"`
    ///   and an integer `code`; OpenAI says `"code":"context_length_exceeded"`,
    ///   `"type":"invalid_request_error"` and names the `param`, which SDKs and agent frameworks
    ///   test to trim a conversation. llama-server's figures (`n_prompt_tokens`, `n_ctx`) are kept.
    /// - llama-server answers an image or audio part sent to a model without a projector, and
    ///   messages it cannot parse (a content part whose text is a number: "Failed to parse
    ///   messages", a `[json.exception…]`), with a 500 `server_error`: the request's doing, not
    ///   the server's, and a 5xx is what clients (the openai SDKs retry it twice) and the replica
    ///   retry rule take for a passing failure (the request went to every replica). It goes out as
    ///   OpenAI answers content it cannot take: 400, `invalid_request_error`, `param` the field.
    /// - Its other 400s (a field of the wrong type: "Field 'max_tokens': [json.exception.type_error…")
    ///   carry the status as an integer `code` and no `param`: they get OpenAI's string code
    ///   (`invalid_type` for a type error, else null) and the field llama-server names.
    /// The message is kept. nil: the answer goes as it came (any other status or error).
    static func openAIShaped(status: Int, body: ByteBuffer, endpoint: Endpoint) -> (status: Int, body: ByteBuffer)? {
        guard status == 400 || status == 500, body.readableBytes < 64 << 10,
            // (Cheap tests first: this runs on every 400 and 500 a runtime answers.)
            status == 400 || body.readableBytesView.firstRange(of: Array("\"server_error\"".utf8)) != nil,
            var object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
            var error = object["error"] as? [String: Any], let message = error["message"] as? String
        else { return nil }
        let whole: String? = switch endpoint {
        case .chatCompletions: "messages"
        case .completions: "prompt"
        case .responses, .embeddings: "input"
        }
        let typeError = message.contains("[json.exception.type_error")
        if status == 400 {
            if error["type"] as? String == "exceed_context_size_error" {
                error["code"] = "context_length_exceeded"
                error["param"] = whole
            } else if error["code"] is NSNumber, error["param"] == nil {
                error["code"] = typeError ? "invalid_type" : NSNull()
                error["param"] = Self.fieldNamed(in: message) ?? (Self.isAboutContent(message) ? whole : nil) ?? NSNull()
            } else {
                return nil
            }
        } else if message.hasPrefix("image input is not supported") || message.hasPrefix("audio input is not supported")
            || Self.isAboutContent(message)
        {
            error["code"] = NSNull()
            error["param"] = whole
        } else if message.hasPrefix("Failed to parse") || message.contains("[json.exception.") {
            error["code"] = typeError ? "invalid_type" : NSNull()
            error["param"] = Self.fieldNamed(in: message) ?? whole
        } else {
            return nil
        }
        error["type"] = "invalid_request_error"
        object["error"] = error
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return (400, ByteBuffer(bytes: data))
    }

    /// A llama-server message about a message's `content` (of the wrong type: "Expected 'content'
    /// to be a string or an array"; a part of an unsupported type), which names no field: it is
    /// the messages' (or the prompt's) fault. Some builds answer it with a 400, others a 500.
    static func isAboutContent(_ message: String) -> Bool {
        message.hasPrefix("Expected 'content'") || message.hasPrefix("unsupported content[")
    }

    /// The field a llama-server message names: `Field 'max_tokens': …` gives `max_tokens`;
    /// `Failed to parse messages: …` gives `messages`.
    static func fieldNamed(in message: String) -> String? {
        if message.hasPrefix("Field '"), let end = message.dropFirst(7).firstIndex(of: "'") {
            return String(message[message.index(message.startIndex, offsetBy: 7)..<end])
        }
        if message.hasPrefix("Failed to parse "), let word = message.dropFirst(16).split(separator: ":").first,
            !word.contains(" ")
        {
            return String(word)
        }
        return nil
    }
}
