import Foundation
import NIOCore

extension Gateway {
    /// What the gateway reads from an OpenAI request body.
    struct ParsedBody: @unchecked Sendable {  // Foundation objects are read-only after parsing
        var model: String
        var stream: Bool
        /// The `user` field, when it is a string (a sticky-routing key).
        var user: String?
        var hints = RequestHints()
        /// The client's bytes, forwarded as they are unless the lease renames the model or pins a slot.
        var body: ByteBuffer
        var fields: Fields

        /// Where the prompt and the fields a rewrite touches are.
        enum Fields {
            /// Spans in `body` (the single pass decided the text).
            case spans(BodySpans)
            /// Foundation's objects (text the single pass left to Foundation); `responses`: a
            /// Responses API body, whose prompt is its `instructions` and `input`.
            case objects([String: Any], responses: Bool)
        }
    }

    struct BodySpans {
        var object: JSONText.Span
        var model: JSONText.Span
        var idSlot: JSONText.Span?
        var messages: JSONText.Span?
        var prompt: JSONText.Span?
        var tools: JSONText.Span?
        /// The Responses API's system prompt.
        var instructions: JSONText.Span?
    }

    func parseBody(_ body: ByteBuffer, endpoint: Endpoint) throws -> ParsedBody {
        guard body.readableBytes > 0 else {
            throw GatewayError.badRequest("Request body is empty; expected a JSON object", code: "invalid_json")
        }
        if let parsed = Self.scanBody(body, endpoint: endpoint) { return parsed }
        return try Self.parseWithFoundation(body, endpoint: endpoint)
    }

    /// The single pass: a valid body with the fields the gateway needs, each of the type it
    /// needs. Anything else (an error to explain, a field Foundation would coerce, such as
    /// `"stream": 1`) is nil and goes to `parseWithFoundation`, which answers as before.
    static func scanBody(_ body: ByteBuffer, endpoint: Endpoint) -> ParsedBody? {
        body.withUnsafeReadableBytes { raw -> ParsedBody? in
            let text = JSONText(raw)
            var members: [(key: JSONText.Span, value: JSONText.Span)]?
            guard let root = text.validate(members: &members), let members else { return nil }
            var model, stream, messages, prompt, input, tools, user, idSlot, instructions: JSONText.Span?
            var duplicate = false
            for (key, value) in members where !duplicate {
                func take(_ field: inout JSONText.Span?) {
                    if field != nil { duplicate = true }
                    field = value
                }
                if text.keyEquals(key, "model") { take(&model) }
                else if text.keyEquals(key, "messages") { take(&messages) }
                else if text.keyEquals(key, "stream") { take(&stream) }
                else if text.keyEquals(key, "prompt") { take(&prompt) }
                else if text.keyEquals(key, "input") { take(&input) }
                else if text.keyEquals(key, "tools") { take(&tools) }
                else if text.keyEquals(key, "user") { take(&user) }
                else if text.keyEquals(key, "id_slot") { take(&idSlot) }
                else if text.keyEquals(key, "instructions") { take(&instructions) }
            }
            guard !duplicate, let model, text.kind(model) == .string else { return nil }
            let name = text.string(model)
            guard !name.isEmpty else { return nil }
            let required: JSONText.Span? = switch endpoint {
            case .chatCompletions: messages
            case .completions: prompt
            case .embeddings, .responses: input
            }
            guard let required, text.kind(required) != .null else { return nil }
            if endpoint == .chatCompletions {
                guard text.kind(required) == .array else { return nil }
                var empty = true
                text.forEachElement(of: required) { _ in empty = false }
                guard !empty else { return nil }
            }
            var streamFlag = false
            if let stream, text.kind(stream) != .null {
                guard let flag = text.bool(stream) else { return nil }
                streamFlag = flag
            }
            if let user, text.kind(user) != .string && text.kind(user) != .null { return nil }
            return ParsedBody(
                model: name, stream: streamFlag, user: user.flatMap { text.kind($0) == .string ? text.string($0) : nil },
                body: body,
                fields: .spans(endpoint == .responses
                    // The prompt the chain is made of: `input` as messages (a list of items) or as
                    // the prompt (a string), after `instructions`.
                    ? BodySpans(object: root, model: model, idSlot: idSlot, messages: text.kind(required) == .array ? required : nil,
                                prompt: text.kind(required) == .string ? required : nil, tools: tools, instructions: instructions)
                    : BodySpans(object: root, model: model, idSlot: idSlot, messages: messages, prompt: prompt, tools: tools)))
        }
    }

    static func parseWithFoundation(_ body: ByteBuffer, endpoint: Endpoint) throws -> ParsedBody {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(body.readableBytesView), options: [.fragmentsAllowed])
        } catch {
            // Foundation's own explanation ("Unexpected character 'n' around line 1, column 1."),
            // without the error domain and user-info dump around it.
            let reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? describe(error)
            throw GatewayError.badRequest("Request body is not valid JSON: \(reason)", code: "invalid_json")
        }
        guard let json = object as? [String: Any] else {
            throw GatewayError.badRequest("Request body must be a JSON object", code: "invalid_json")
        }
        guard let modelValue = json["model"] else {
            throw GatewayError.badRequest("Missing required field 'model'", code: "missing_field", param: "model")
        }
        guard let model = modelValue as? String, !model.isEmpty else {
            throw GatewayError.badRequest("Field 'model' must be a non-empty string", code: "invalid_field", param: "model")
        }
        guard let required = json[endpoint.requiredField], !(required is NSNull) else {
            throw GatewayError.badRequest("Missing required field '\(endpoint.requiredField)'", code: "missing_field", param: endpoint.requiredField)
        }
        if endpoint == .chatCompletions {
            guard let messages = required as? [Any], !messages.isEmpty else {
                throw GatewayError.badRequest("Field 'messages' must be a non-empty array", code: "invalid_field", param: "messages")
            }
        }
        var stream = false
        if let value = json["stream"], !(value is NSNull) {
            guard let flag = value as? Bool else {
                throw GatewayError.badRequest("Field 'stream' must be a boolean", code: "invalid_field", param: "stream")
            }
            stream = flag
        }
        if let value = json["user"], !(value is NSNull), !(value is String) {
            // (It keys session affinity: a number there was ignored without a word.)
            throw GatewayError.badRequest("Field 'user' must be a string", code: "invalid_field", param: "user")
        }
        return ParsedBody(model: model, stream: stream, user: json["user"] as? String, body: body,
                          fields: .objects(json, responses: endpoint == .responses))
    }

    /// Forwards the client's bytes as they are unless the upstream knows the model by another
    /// name or the lease pins the request to a runtime slot; then only those values change.
    static func rewriteBody(_ parsed: ParsedBody, for lease: UpstreamLease) throws -> ByteBuffer {
        let rename = lease.upstreamModel.flatMap { $0 == parsed.model ? nil : $0 }
        guard rename != nil || lease.pinnedSlot != nil else { return parsed.body }
        switch parsed.fields {
        case .objects(var json, _):
            if let rename { json["model"] = rename }
            if let slot = lease.pinnedSlot { json["id_slot"] = slot }
            return ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json))
        case .spans(let spans):
            // Edits in order of position: (range replaced, new bytes).
            var edits: [(Range<Int>, [UInt8])] = []
            if let rename {
                var literal: [UInt8] = []
                appendJSONString(rename, to: &literal)
                edits.append((spans.model.start..<spans.model.end, literal))
            }
            if let slot = lease.pinnedSlot {
                if let idSlot = spans.idSlot {
                    edits.append((idSlot.start..<idSlot.end, Array(String(slot).utf8)))
                } else {
                    edits.append((spans.object.start + 1..<spans.object.start + 1, Array("\"id_slot\":\(slot),".utf8)))
                }
            }
            edits.sort { $0.0.lowerBound < $1.0.lowerBound }
            let bytes = parsed.body.readableBytesView
            var out = ByteBuffer()
            out.reserveCapacity(bytes.count + edits.reduce(0) { $0 + $1.1.count })
            var at = 0
            for (range, replacement) in edits {
                out.writeBytes(bytes[bytes.startIndex + at..<bytes.startIndex + range.lowerBound])
                out.writeBytes(replacement)
                at = range.upperBound
            }
            out.writeBytes(bytes[(bytes.startIndex + at)...])
            return out
        }
    }
}

extension Gateway.ParsedBody {
    /// The prompt's block chain, for routing by prefix.
    func promptChain(blockBytes: Int) -> PromptChain {
        switch fields {
        case .objects(let json, let responses):
            guard responses else { return PromptChain.of(body: json, blockBytes: blockBytes) }
            // As the single pass reads it (`scanBody`): `input` as the messages or the prompt.
            var prompt: [String: Any] = [:]
            prompt[json["input"] is [Any] ? "messages" : "prompt"] = json["input"]
            prompt["tools"] = json["tools"]
            return PromptChain.of(body: prompt, blockBytes: blockBytes, instructions: json["instructions"])
        case .spans(let spans):
            let canonical = body.withUnsafeReadableBytes { raw in
                PromptChain.canonicalPrompt(JSONText(raw), messages: spans.messages, prompt: spans.prompt, tools: spans.tools,
                                            instructions: spans.instructions)
            }
            return PromptChain(canonical: canonical, blockBytes: blockBytes)
        }
    }
}
