import Foundation
import NIOCore
import Testing
@testable import Frontend

/// The prompt's block chain the router matches prefixes by.
struct PromptChainTests {
    static func chat(_ messages: [(String, String)], tools: [Any]? = nil) -> [String: Any] {
        var body: [String: Any] = ["model": "m", "messages": messages.map { ["role": $0.0, "content": $0.1] }]
        if let tools { body["tools"] = tools }
        return body
    }

    static let system = String(repeating: "You are a careful assistant for the river company. ", count: 20)

    @Test func sharedPrefixesShareLeadingBlocksAndPartWhereTheyDiffer() {
        let a = PromptChain.of(body: Self.chat([("system", Self.system), ("user", "What is the tide today?")]), blockBytes: 64)
        let b = PromptChain.of(body: Self.chat([("system", Self.system), ("user", "Who owns the mill?")]), blockBytes: 64)
        #expect(a.blocks.count == a.bytes / 64 && a.blocks.count > 10)
        let shared = zip(a.blocks, b.blocks).prefix { $0 == $1 }.count
        #expect(shared == (Self.system.utf8.count + "system".utf8.count + 2) / 64, "they part in the block holding the user turn")
        #expect(a.blocks[shared...].allSatisfy { !b.blocks.contains($0) }, "after parting, nothing matches again")
    }

    /// The Responses API's `instructions` and `input` (items or a string) make the chain as a
    /// system message and the conversation would: requests sharing instructions share blocks.
    @Test func aResponsesRequestIsChainedByItsInstructionsThenItsInput() throws {
        func chain(_ json: String) throws -> PromptChain {
            let parsed = try #require(Gateway.scanBody(ByteBuffer(string: json), endpoint: .responses))
            return parsed.promptChain(blockBytes: 64)
        }
        let instructions = Self.system.replacingOccurrences(of: "\"", with: "")
        let a = try chain(#"{"model":"m","instructions":"\#(instructions)","input":[{"role":"user","content":"What is the tide?"}]}"#)
        let b = try chain(#"{"model":"m","instructions":"\#(instructions)","input":"Who owns the mill?"}"#)
        let shared = zip(a.blocks, b.blocks).prefix { $0 == $1 }.count
        #expect(shared == (instructions.utf8.count + "system".utf8.count + 2) / 64, "they part after the instructions")
        // the same conversation as chat messages (a system message, then the user's) chains alike
        let chat = PromptChain.of(body: Self.chat([("system", instructions), ("user", "What is the tide?")]), blockBytes: 64)
        #expect(chat.blocks == a.blocks)
        #expect(Gateway.scanBody(ByteBuffer(string: #"{"model":"m","instructions":"x"}"#), endpoint: .responses) == nil,
                "no input: left to the full parse, which says what is missing")
    }

    @Test func roleToolsAndOrderArePartOfThePrefix() {
        let base = PromptChain.of(body: Self.chat([("system", Self.system)]), blockBytes: 64)
        let asUser = PromptChain.of(body: Self.chat([("user", Self.system)]), blockBytes: 64)
        #expect(base.blocks.first != asUser.blocks.first)
        let withTools = PromptChain.of(body: Self.chat([("system", Self.system)], tools: [["type": "function", "name": "f"]]),
                                       blockBytes: 64)
        #expect(withTools.blocks.first != base.blocks.first, "tools come first, so they change every block")
    }

    @Test func theSameToolsAndPartsSpelledAnotherWayHaveTheSameChain() throws {
        func chain(_ text: String) throws -> PromptChain {
            try #require(Gateway.scanBody(ByteBuffer(string: text), endpoint: .chatCompletions)).promptChain(blockBytes: 16)
        }
        let tool = #"{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}"#
        let respelled = #"{ "function": { "parameters": {"properties":{"city":{"type":"str\u0069ng"}}, "type":"object"}, "name":"get_weather" }, "type":"function" }"#
        let parts = #"[{"type":"text","text":"What is in the picture of the river mill at dawn?"}]"#
        let partsRespelled = #"[ {"text":"What is in the picture of the river mill at dawn?", "type" : "text"} ]"#
        func body(_ tools: String, _ content: String) -> String {
            #"{"model":"m","tools":["# + tools + #"],"messages":[{"role":"system","content":"# + "\"" + Self.system + "\""
                + #"},{"role":"user","content":"# + content + "}]}"
        }
        let a = try chain(body(tool, parts))
        #expect(a.blocks.count > 20)
        #expect(try chain(body(respelled, partsRespelled)) == a)
        func shared(_ x: PromptChain) -> Int { zip(x.blocks, a.blocks).prefix { $0 == $1 }.count }
        let otherTool = try chain(body(tool.replacingOccurrences(of: "get_weather", with: "get_tides"), parts))
        #expect(shared(otherTool) < 3, "tools come first: another tool is another prefix from it on")
        let otherQuestion = try chain(body(tool, parts.replacingOccurrences(of: "at dawn", with: "at dusk")))
        #expect(shared(otherQuestion) > 20 && otherQuestion != a, "the same tools and system prompt, another question")
    }

    @Test func shortPromptsAndOddBodiesHaveNoChain() {
        #expect(PromptChain.of(body: Self.chat([("user", "hi")]), blockBytes: 256).blocks.isEmpty)
        #expect(PromptChain.of(body: ["model": "m"], blockBytes: 16).blocks.isEmpty)
        #expect(PromptChain.of(body: ["model": "m", "messages": "not a list"], blockBytes: 16).blocks.isEmpty)
        let completion = PromptChain.of(body: ["model": "m", "prompt": Self.system], blockBytes: 64)
        #expect(completion.blocks.count == Self.system.utf8.count / 64)
    }

    @Test func hashesAreStableAcrossProcessesAndHosts() {
        // Routers on different hosts must agree: a fixed input has a fixed chain (XXH3, fixed seed).
        let chain = PromptChain.chain(Array("0123456789abcdef0123456789abcdef".utf8), blockBytes: 16)
        #expect(chain.count == 2)
        #expect(chain == PromptChain.chain(Array("0123456789abcdef0123456789abcdef".utf8), blockBytes: 16))
        #expect(String(chain[0], radix: 16) == Self.pinnedFirstHash, "the seed or block framing changed")
        #expect(String(chain[1], radix: 16) == Self.pinnedSecondHash, "the chaining (parent hash, little-endian, before the block) changed")
        // Only whole blocks count; the largest block size routing accepts works.
        #expect(PromptChain.chain(Array("0123456789abcdef0123456789abcde".utf8), blockBytes: 16).count == 1)
        #expect(PromptChain.chain([UInt8](repeating: 7, count: 65536 * 2 + 5), blockBytes: 65536).count == 2)
    }

    static let pinnedFirstHash = "1060fe0ab9833daa"
    static let pinnedSecondHash = "911b35ded7d6834a"
}
