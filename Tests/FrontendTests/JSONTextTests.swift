import Foundation
import NIOCore
import StrataTestSupport
import Testing
@testable import Frontend

/// The single-pass JSON reading the gateway does on every request must never disagree with
/// Foundation, which it stands in for: what it accepts Foundation accepts, and every field it
/// reads (model, stream, user, the prompt's chain, a rewrite, an answer's usage) is what
/// Foundation's objects say. Seeded generators of request texts, valid and corrupted.
struct JSONTextTests {
    // MARK: generators

    struct Texts {
        var rng: SplitMix64

        mutating func space() -> String {
            switch Int.random(in: 0..<8, using: &rng) {
            case 0: " "
            case 1: "\n  "
            case 2: "\t"
            default: ""
            }
        }

        mutating func string() -> String {
            var out = "\""
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                switch Int.random(in: 0..<16, using: &rng) {
                case 0: out += "\\\""
                case 1: out += "\\\\"
                case 2: out += "\\n"
                case 3: out += "\\u00e9"
                case 4: out += "\\ud83d\\ude00"   // a surrogate pair
                case 5: out += "é日😀"
                case 6: out += "\\/"
                case 7: out += "\\u0001\\t\\r\\b\\f"
                default: out += String("abc xyz{}[],:".randomElement(using: &rng)!)
                }
            }
            return out + "\""
        }

        mutating func number() -> String {
            var out = Bool.random(using: &rng) ? "-" : ""
            out += Bool.random(using: &rng) ? "0" : String(Int.random(in: 1...99_999, using: &rng))
            if Bool.random(using: &rng) { out += "." + String(Int.random(in: 0...999, using: &rng)) }
            if Int.random(in: 0..<4, using: &rng) == 0 { out += ["e", "E"].randomElement(using: &rng)! + ["", "+", "-"].randomElement(using: &rng)! + String(Int.random(in: 0...20, using: &rng)) }
            return out
        }

        mutating func value(depth: Int = 0) -> String {
            switch Int.random(in: 0..<(depth < 3 ? 8 : 6), using: &rng) {
            case 0: return string()
            case 1: return number()
            case 2: return ["true", "false"].randomElement(using: &rng)!
            case 3: return "null"
            case 4, 5: return string()
            case 6:
                return "[" + (0..<Int.random(in: 0...3, using: &rng)).map { _ in space() + value(depth: depth + 1) + space() }
                    .joined(separator: ",") + "]"
            default:
                return object((0..<Int.random(in: 0...3, using: &rng)).map { _ in (string(), value(depth: depth + 1)) })
            }
        }

        mutating func object(_ members: [(String, String)]) -> String {
            "{" + space() + members.map { "\($0.0)" + space() + ":" + space() + $0.1 }.joined(separator: "," + space()) + space() + "}"
        }

        mutating func content() -> String {
            switch Int.random(in: 0..<8, using: &rng) {
            case 0: return "[" + (0..<Int.random(in: 0...3, using: &rng)).map { _ in string() }.joined(separator: ",") + "]"
            case 1: return "[" + object([("\"type\"", "\"text\""), ("\"text\"", string())]) + "]"
            case 4: return "[" + value(depth: 1) + "," + object([("\"type\"", "\"image_url\""), (string(), value(depth: 2))]) + "]"
            case 2: return "null"
            case 3: return number()
            default: return string()
            }
        }

        mutating func message() -> String {
            var members: [(String, String)] = []
            if Int.random(in: 0..<6, using: &rng) > 0 {
                members.append(("\"role\"", ["\"system\"", "\"user\"", "\"assistant\"", "\"r\\u006fle\"", "7"].randomElement(using: &rng)!))
            }
            if Int.random(in: 0..<8, using: &rng) > 0 { members.append(("\"content\"", content())) }
            if Int.random(in: 0..<6, using: &rng) == 0 { members.append((string(), value(depth: 2))) }
            members.shuffle(using: &rng)
            return Int.random(in: 0..<12, using: &rng) == 0 ? value(depth: 2) : object(members)
        }

        /// A request body: mostly well-formed, with each field now and then of another type,
        /// spelled with escapes, missing or repeated.
        mutating func request() -> String {
            var members: [(String, String)] = []
            func maybe(_ odds: Int, _ name: String, _ make: (inout Texts) -> String) {
                if Int.random(in: 0..<odds, using: &rng) > 0 { members.append((name, make(&self))) }
            }
            maybe(12, "\"model\"") { t in
                switch Int.random(in: 0..<10, using: &t.rng) {
                case 0: "\"\""
                case 1: "null"
                case 2: "12"
                case 3: t.string()
                default: "\"m-" + String(Int.random(in: 0...3, using: &t.rng)) + "\""
                }
            }
            maybe(8, "\"messages\"") { t in
                switch Int.random(in: 0..<10, using: &t.rng) {
                case 0: "[]"
                case 1: "null"
                case 2: t.string()
                default: "[" + (0..<Int.random(in: 1...4, using: &t.rng)).map { _ in t.message() }.joined(separator: ",") + "]"
                }
            }
            maybe(4, "\"stream\"") { t in ["true", "false", "null", "1", "0", "\"yes\""].randomElement(using: &t.rng)! }
            maybe(3, "\"user\"") { t in Bool.random(using: &t.rng) ? t.string() : t.number() }
            if Int.random(in: 0..<4, using: &rng) == 0 { maybe(2, "\"prompt\"") { t in t.content() } }
            if Int.random(in: 0..<6, using: &rng) == 0 { maybe(2, "\"input\"") { t in t.value(depth: 1) } }
            if Int.random(in: 0..<6, using: &rng) == 0 {
                maybe(2, "\"tools\"") { t in
                    Bool.random(using: &t.rng) ? t.value(depth: 1)
                        : ["null", "[]", "\"x\"", "{\"a\":1}", "[{\"type\":\"function\",\"name\":\"f\"}]"].randomElement(using: &t.rng)!
                }
            }
            if Int.random(in: 0..<5, using: &rng) == 0 { maybe(2, "\"id_slot\"") { t in t.number() } }
            if Int.random(in: 0..<6, using: &rng) == 0 { members.append(("\"mod\\u0065l\"", "\"escaped-key\"")) }
            for _ in 0..<Int.random(in: 0...2, using: &rng) { members.append((string(), value(depth: 1))) }
            if Int.random(in: 0..<10, using: &rng) == 0, let repeated = members.randomElement(using: &rng) { members.append(repeated) }
            members.shuffle(using: &rng)
            return space() + object(members) + space()
        }

        /// A text broken the way a client or a network can break it.
        mutating func corrupt(_ text: String) -> [UInt8] {
            var bytes = Array(text.utf8)
            guard !bytes.isEmpty else { return bytes }
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 1: bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            case 2: bytes.insert(Array("{}[]\",:\\ \u{1}0e-".utf8).randomElement(using: &rng)!, at: Int.random(in: 0...bytes.count, using: &rng))
            default: bytes.remove(at: Int.random(in: 0..<bytes.count, using: &rng))
            }
            return bytes
        }
    }

    static func foundation(_ bytes: [UInt8]) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
    }

    static func canonical(_ object: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    }

    static func validates(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { JSONText($0).validate() != nil }
    }

    // MARK: validation

    @Test func acceptsOnlyWhatFoundationAcceptsAndEveryGeneratedText() {
        var texts = Texts(rng: SplitMix64(state: 0x150E))
        var corruptedAccepted = 0
        for _ in 0..<4_000 {
            let text = texts.request()
            #expect(Self.validates(Array(text.utf8)), "a valid text refused: \(text)")
            #expect(Self.foundation(Array(text.utf8)) != nil, "the generator made invalid JSON: \(text)")
            let broken = texts.corrupt(text)
            if Self.validates(broken) {
                corruptedAccepted += 1
                #expect(Self.foundation(broken) != nil, "accepted what Foundation refuses: \(String(decoding: broken, as: UTF8.self))")
            }
        }
        #expect(corruptedAccepted > 100, "corruptions that stay valid JSON (a changed letter) are accepted too")
    }

    @Test(arguments: [
        "", " ", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "[1,]", "[01]", "[1.]", "[.5]", "[-]", "[1e]", "[+1]",
        "[\"\\x\"]", "[\"\\u12\"]", "[\"a\u{01}b\"]", "[tru]", "[nul]", "{\"a\":1}x", "{'a':1}", "[\"\\ud800\"]",
        "[\"\\udc00\"]", "[1E400]", "[1e123]",
    ])
    func refusesInvalidOrUndecidedText(_ text: String) {
        #expect(!Self.validates(Array(text.utf8)))
    }

    @Test func refusesMalformedUTF8AndDeepNesting() {
        for bytes: [UInt8] in [[0x22, 0xC0, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22],
                               [0x22, 0xE2, 0x82, 0x22], [0x22, 0xFF, 0x22]] {
            #expect(!Self.validates(bytes))
        }
        #expect(Self.validates(Array((String(repeating: "[", count: 100) + String(repeating: "]", count: 100)).utf8)))
        #expect(!Self.validates(Array((String(repeating: "[", count: 200) + String(repeating: "]", count: 200)).utf8)),
                "deeper than maxDepth is left to Foundation")
    }

    // MARK: canonical form

    static func canonical(_ text: String) -> String? {
        Array(text.utf8).withUnsafeBytes { raw -> String? in
            let json = JSONText(raw)
            guard let value = json.validate() else { return nil }
            var out: [UInt8] = []
            json.appendCanonical(value, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
    }

    @Test(arguments: [
        (#" { "b" : [true, null, 1.50e1], "a":"x\"y\u0041\/" } "#, #"{"a":"x\"yA/","b":[true,null,15]}"#),
        (#"{"a":1,"a":{"c":2, "b":3}}"#, #"{"a":{"b":3,"c":2}}"#),   // a key given twice: the last counts
        (#"[0.5, -0, 1e2, 1E+30, 12345678901234567890, -7]"#, "[0.5,0,100,1e+30,1.2345678901234567e+19,-7]"),
        (#"{"é":1,"z":2,"A":3,"":4}"#, #"{"":4,"A":3,"z":2,"é":1}"#),   // by UTF-8 bytes, not by locale
        (#""tab\there \u0007 \ud83d\ude00""#, "\"tab\\there \\u0007 😀\""),
        ("[]", "[]"), ("{}", "{}"), ("false", "false"),
    ])
    func canonicalFormIsOneSpellingOfAValue(text: String, expected: String) {
        #expect(Self.canonical(text) == expected)
    }

    // MARK: request bodies

    @Test func bodiesReadInOnePassAgreeWithFoundation() throws {
        var texts = Texts(rng: SplitMix64(state: 0xB0D1))
        var scanned = 0, fellBack = 0
        for _ in 0..<4_000 {
            let text = texts.request()
            for endpoint in Endpoint.allCases {
                let body = ByteBuffer(string: text)
                let viaFoundation = try? Gateway.parseWithFoundation(body, endpoint: endpoint)
                guard let fast = Gateway.scanBody(body, endpoint: endpoint) else {
                    fellBack += 1
                    continue
                }
                scanned += 1
                let slow = try #require(viaFoundation, "one pass accepted a body Foundation's path refuses: \(text)")
                #expect(fast.model == slow.model && fast.stream == slow.stream && fast.user == slow.user, "\(text)")
                #expect(fast.promptChain(blockBytes: 8) == slow.promptChain(blockBytes: 8), "prompt chain differs: \(text)")
            }
        }
        #expect(scanned > 500 && fellBack > 1_000, "both ways are exercised (\(scanned) scanned, \(fellBack) left to Foundation)")
    }

    @Test func fieldsOfOtherTypesAreLeftToFoundationWhichExplainsThem() throws {
        // Foundation reads `"stream": 1` as true; the one pass does not guess.
        let coerced = ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":1}"#)
        #expect(Gateway.scanBody(coerced, endpoint: .chatCompletions) == nil)
        #expect(try Gateway.parseWithFoundation(coerced, endpoint: .chatCompletions).stream == true)
        // A repeated field: Foundation keeps the last.
        let repeated = ByteBuffer(string: #"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#)
        #expect(Gateway.scanBody(repeated, endpoint: .chatCompletions) == nil)
        // An escaped key is the same key.
        let escaped = ByteBuffer(string: #"{"mod\u0065l":"e","messages":[{"role":"user","content":"hi"}]}"#)
        #expect(Gateway.scanBody(escaped, endpoint: .chatCompletions)?.model == "e")
    }

    @Test func toolsOfAnyTypeDoNotTrapThePromptChain() {
        // Foundation traps (it does not throw) serializing a top-level value that is not a list
        // or an object; a client's `"tools": null` must not take the daemon down.
        for tools in ["null", "\"x\"", "3", "true", "[]", "{}"] {
            let text = #"{"model":"m","tools":"# + tools + #","messages":[{"role":"system","content":"a long enough system prompt"}]}"#
            let body = ByteBuffer(string: text)
            let fast = Gateway.scanBody(body, endpoint: .chatCompletions)!.promptChain(blockBytes: 8)
            let slow = try? Gateway.parseWithFoundation(body, endpoint: .chatCompletions).promptChain(blockBytes: 8)
            #expect(fast == slow && !fast.blocks.isEmpty, "\(tools)")
        }
    }

    @Test func rewritesChangeOnlyTheModelAndSlot() throws {
        var texts = Texts(rng: SplitMix64(state: 0x5107))
        var checked = 0
        while checked < 500 {
            let text = texts.request()
            let body = ByteBuffer(string: text)
            guard let parsed = Gateway.scanBody(body, endpoint: .chatCompletions) else { continue }
            checked += 1
            let slot = Int.random(in: 0...7, using: &texts.rng)
            let rename = Bool.random(using: &texts.rng) ? "up\"stream \\ é\n" : nil
            let lease = UpstreamLease(baseURL: "http://127.0.0.1:1/v1", upstreamModel: rename, pinnedSlot: slot, onOutcome: { _ in })
            let rewritten = try Gateway.rewriteBody(parsed, for: lease)
            var expected = try #require(Self.foundation(Array(text.utf8)) as? [String: Any])
            if let rename { expected["model"] = rename }
            expected["id_slot"] = slot
            let got = try #require(Self.foundation(Array(rewritten.readableBytesView)) as? [String: Any], "\(String(buffer: rewritten))")
            #expect(try Self.canonical(got) == Self.canonical(expected), "\(text) → \(String(buffer: rewritten))")
        }
        let untouched = ByteBuffer(string: #"{ "model" : "m", "messages":[{"role":"user","content":"hi"}] }"#)
        let same = try Gateway.rewriteBody(#require(Gateway.scanBody(untouched, endpoint: .chatCompletions)),
                                           for: UpstreamLease(baseURL: "http://x/v1", upstreamModel: "m", onOutcome: { _ in }))
        #expect(same == untouched, "nothing to change: the client's bytes go as they are")
    }

    // MARK: answers

    @Test func answerFiguresAgreeWithFoundation() {
        var rng = SplitMix64(state: 0xA115)
        func number() -> String {
            ["12", "0", "-3", "7.9", "1e2", "null", "\"5\"", "true"].randomElement(using: &rng)!
        }
        var read = 0
        for _ in 0..<3_000 {
            var members: [String] = ["\"id\":\"x\"", "\"choices\":[{\"message\":{\"content\":\"ok\"}}]"]
            if Int.random(in: 0..<4, using: &rng) > 0 {
                var usage = ["\"prompt_tokens\":\(number())", "\"completion_tokens\":\(number())"]
                if Bool.random(using: &rng) { usage.append("\"prompt_tokens_details\":{\"cached_tokens\":\(number())}") }
                members.append("\"usage\":" + (Int.random(in: 0..<6, using: &rng) == 0 ? "null" : "{" + usage.joined(separator: ",") + "}"))
            }
            if Bool.random(using: &rng) {
                members.append("\"timings\":{\"cache_n\":\(number()),\"prompt_n\":\(number()),\"prompt_ms\":\(number())}")
            }
            members.shuffle(using: &rng)
            let text = "{" + members.joined(separator: ",") + "}"
            let fast = Array(text.utf8).withUnsafeBytes { AnswerFigures.read($0) }
            let slow = (Self.foundation(Array(text.utf8)) as? [String: Any]).map(AnswerFigures.init)
            guard let fast, let slow else {
                Issue.record("unread answer \(text)")
                continue
            }
            read += 1
            // Foundation's NSNumber also reads `true` as 1; the one pass counts only numbers.
            if !text.contains("true") {
                #expect(fast.hasUsage == slow.hasUsage && fast.promptTokens == slow.promptTokens
                        && fast.completionTokens == slow.completionTokens && fast.cachedTokens == slow.cachedTokens
                        && fast.cacheN == slow.cacheN && fast.promptN == slow.promptN && fast.promptMs == slow.promptMs,
                        "\(text)")
            }
        }
        #expect(read == 3_000)
        #expect(Array("<html>502</html>".utf8).withUnsafeBytes { AnswerFigures.read($0) } == nil)
    }
}
