import CStrataHash
import Foundation

/// A request's prompt as a chain of block hashes, for prefix-affinity routing. The prompt is
/// put in a canonical byte form (tools, then each message's role and content in order; or the
/// completion prompt), cut into fixed-size blocks, and chain-hashed with XXH3 under a fixed
/// seed: block i's hash covers blocks 0...i, so equal hashes mean equal prefixes, on every
/// host. Only whole blocks count: a prompt shorter than a block has no chain.
///
/// Bytes stand in for tokens: a runtime applies the same chat template to the same messages,
/// so a shared byte prefix is a shared token prefix (up to the block at which they part).
public struct PromptChain: Sendable, Equatable {
    public var blocks: [UInt64]
    /// Bytes of canonical prompt (the whole of it, not only whole blocks).
    public var bytes: Int

    /// Fixed: changing it would make routers on different hosts disagree.
    public static let seed: UInt64 = 0x5354_5241_5441_5046   // "STRATAPF"

    public init(blocks: [UInt64], bytes: Int) {
        self.blocks = blocks
        self.bytes = bytes
    }

    /// The chain of a request body (an OpenAI chat or completion request); empty when it has
    /// no prompt this can read. Foundation's objects (a body the gateway's single pass left to
    /// Foundation) are written back to text once, so that both share one canonical form.
    /// `instructions`: the Responses API's, put before the messages as `canonicalPrompt` does.
    public static func of(body: [String: Any], blockBytes: Int, instructions: Any? = nil) -> PromptChain {
        var body = body
        if let instructions { body["\u{1}instructions"] = instructions }   // (a key no request has)
        guard JSONSerialization.isValidJSONObject(body), let data = try? JSONSerialization.data(withJSONObject: body) else {
            return PromptChain(blocks: [], bytes: 0)
        }
        return data.withUnsafeBytes { raw in
            let text = JSONText(raw)
            var members: [(key: JSONText.Span, value: JSONText.Span)]?
            guard text.validate(members: &members) != nil, let members else { return PromptChain(blocks: [], bytes: 0) }
            let canonical = canonicalPrompt(
                text, messages: text.member("messages", in: members), prompt: text.member("prompt", in: members),
                tools: text.member("tools", in: members),
                instructions: instructions == nil ? nil : text.member("\u{1}instructions", in: members))
            return PromptChain(canonical: canonical, blockBytes: blockBytes)
        }
    }

    init(canonical: [UInt8], blockBytes: Int) {
        self.init(blocks: Self.chain(canonical, blockBytes: blockBytes), bytes: canonical.count)
    }

    static func chain(_ bytes: [UInt8], blockBytes: Int) -> [UInt64] {
        precondition(blockBytes > 0 && blockBytes <= 65536)
        let count = bytes.count / blockBytes
        guard count > 0 else { return [] }
        // In C (one stack buffer for the parent and the block): the same hashes as laying them out in an array here.
        return [UInt64](unsafeUninitializedCapacity: count) { hashes, written in
            written = bytes.withUnsafeBytes { strata_xxh3_chain($0.baseAddress, $0.count, blockBytes, seed, hashes.baseAddress) }
        }
    }

    /// Separators that cannot occur in JSON text, so fields never run into each other.
    private static let fieldEnd: UInt8 = 0x1F, messageEnd: UInt8 = 0x1E, sectionEnd: UInt8 = 0x1D

    /// The canonical prompt of a request's validated JSON text: its tools (canonical JSON), then
    /// `instructions` (the Responses API's) as a system message, then each message's role and
    /// content in order; or the completion prompt. Content that is text (or a list of texts)
    /// counts as its text, anything else (content parts, token arrays) as its canonical JSON.
    static func canonicalPrompt(_ text: JSONText, messages: JSONText.Span?, prompt: JSONText.Span?, tools: JSONText.Span?,
                                instructions: JSONText.Span? = nil) -> [UInt8]
    {
        var out: [UInt8] = []
        if let tools, text.kind(tools) == .array || text.kind(tools) == .object {
            text.appendCanonical(tools, to: &out)
            out.append(sectionEnd)
        }
        func appendContent(_ value: JSONText.Span?) {
            guard let value else { return }
            switch text.kind(value) {
            case .string:
                text.appendString(value, to: &out)
            case .array:
                var strings = true
                text.forEachElement(of: value) { if text.kind($0) != .string { strings = false } }
                if strings {
                    text.forEachElement(of: value) { text.appendString($0, to: &out) }
                } else {
                    text.appendCanonical(value, to: &out)
                }
            default:
                break
            }
        }
        if let instructions, text.kind(instructions) == .string {
            out.append(contentsOf: "system".utf8)
            out.append(fieldEnd)
            text.appendString(instructions, to: &out)
            out.append(messageEnd)
        }
        if let messages, text.kind(messages) == .array {
            out.reserveCapacity(messages.end - messages.start)
            text.forEachElementStart(of: messages) { start in
                guard text.bytes[start] == UInt8(ascii: "{") else { return text.end(ofValueAt: start) }
                var role, content: JSONText.Span?
                let end = text.forEachMember(ofObjectAt: start) { key, value in
                    if text.keyEquals(key, "role") { role = value } else if text.keyEquals(key, "content") { content = value }
                    return true
                }
                if let role, text.kind(role) == .string { text.appendString(role, to: &out) }
                out.append(fieldEnd)
                appendContent(content)
                out.append(messageEnd)
                return end!
            }
        } else if let prompt {
            appendContent(prompt)
        }
        return out
    }
}
