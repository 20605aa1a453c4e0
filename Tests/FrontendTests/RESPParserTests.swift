#if canImport(RESP)
import RESP
#else
import Frontend
#endif
import NIOCore
import Testing

/// Parses every value in `bytes` fed in chunks of the given sizes (the rest in one go).
private func parseAll(
    _ bytes: [UInt8], mode: RESPParser.Mode = .server, limits: RESPParser.Limits = .init(), chunks: [Int] = []
) throws(RESPProtocolError) -> [RESPValue] {
    var parser = RESPParser(mode: mode, limits: limits)
    var buffer = ByteBuffer()
    var values: [RESPValue] = []
    var offset = 0
    for size in chunks + [bytes.count] where offset < bytes.count {
        let end = min(bytes.count, offset + size)
        buffer.writeBytes(bytes[offset..<end])
        offset = end
        while let value = try parser.next(from: &buffer) { values.append(value) }
    }
    return values
}

private func command(_ words: String...) -> RESPValue {
    .array(words.map { .bulk($0) })
}

private func encoded(_ values: [RESPValue]) -> [UInt8] {
    var buffer = ByteBuffer()
    for value in values { RESPEncoder.encode(value, into: &buffer) }
    return Array(buffer.readableBytesView)
}

@Suite struct RESPParserTests {
    static let clientCases: [(String, RESPValue)] = [
        ("+OK\r\n", .simpleString("OK")),
        ("+\r\n", .simpleString("")),
        ("-ERR bad thing\r\n", .error("ERR bad thing")),
        (":0\r\n", .integer(0)),
        (":-42\r\n", .integer(-42)),
        (":9223372036854775807\r\n", .integer(.max)),
        (":-9223372036854775808\r\n", .integer(.min)),
        ("$3\r\nfoo\r\n", .bulk("foo")),
        ("$0\r\n\r\n", .bulk("")),
        ("$4\r\na\r\nb\r\n", .bulk("a\r\nb")),
        ("$-1\r\n", .null),
        ("*0\r\n", .array([])),
        ("*-1\r\n", .nullArray),
        ("*3\r\n:1\r\n$1\r\nx\r\n$-1\r\n", .array([.integer(1), .bulk("x"), .null])),
        ("*2\r\n*1\r\n+a\r\n*0\r\n", .array([.array([.simpleString("a")]), .array([])])),
    ]

    @Test(arguments: clientCases)
    func clientModeParsesEveryType(_ wire: String, _ expected: RESPValue) throws {
        #expect(try parseAll(Array(wire.utf8), mode: .client) == [expected])
        // ...and the encoder writes it back byte for byte.
        #expect(encoded([expected]) == Array(wire.utf8))
    }

    static let serverCases: [(String, [RESPValue])] = [
        ("*1\r\n$4\r\nPING\r\n", [command("PING")]),
        ("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", [command("SET", "k", "")]),
        ("PING\r\n", [command("PING")]),
        ("PING\n", [command("PING")]),
        ("  set  a   b \r\n", [command("set", "a", "b")]),
        ("SET k \"hello world\"\r\n", [command("SET", "k", "hello world")]),
        ("SET k \"a\\r\\n\\x41\"\r\n", [command("SET", "k", "a\r\nA")]),
        ("SET k 'it\\'s'\r\n", [command("SET", "k", "it's")]),
        ("ECHO \"\"\r\n", [command("ECHO", "")]),
        ("\r\n\r\nPING\r\n", [command("PING")]),
        ("*0\r\n*-1\r\nPING\r\n", [command("PING")]),
        ("PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nDBSIZE\r\n", [command("PING"), command("ECHO", "hi"), command("DBSIZE")]),
    ]

    @Test(arguments: serverCases)
    func serverModeParsesCommands(_ wire: String, _ expected: [RESPValue]) throws {
        #expect(try parseAll(Array(wire.utf8)) == expected)
    }

    @Test func splitAtEveryByteBoundaryParsesIdentically() throws {
        let wire = Array(
            ("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\nGET key\r\n\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
                + "*1\r\n$4\r\nPING\r\nSET q \"x y\"\r\n").utf8)
        let whole = try parseAll(wire)
        #expect(whole.count == 5)
        for split in 0...wire.count {
            #expect(try parseAll(wire, chunks: [split]) == whole, "split at \(split)")
        }
        for split in 0...wire.count {
            for second in stride(from: 1, through: 7, by: 3) {
                #expect(try parseAll(wire, chunks: [split, second]) == whole)
            }
        }
        #expect(try parseAll(wire, chunks: Array(repeating: 1, count: wire.count)) == whole)
        var client = encoded(Self.clientCases.map(\.1))
        let replies = try parseAll(client, mode: .client)
        for split in 0...client.count {
            #expect(try parseAll(client, mode: .client, chunks: [split]) == replies)
        }
        client.removeAll()
    }

    static let limitCases: [(String, String, RESPParser.Limits)] = [
        ("*1\r\n$10737418240\r\n", "Protocol error: invalid bulk length", .init()),
        ("*1\r\n$11\r\n", "Protocol error: invalid bulk length", .init(maxBulkLength: 10)),
        ("*1\r\n$-1\r\n", "Protocol error: invalid bulk length", .init()),
        ("*1\r\n$abc\r\n", "Protocol error: invalid bulk length", .init()),
        ("*1\r\n$ 3\r\n", "Protocol error: invalid bulk length", .init()),
        ("*1\r\n$+3\r\n", "Protocol error: invalid bulk length", .init()),
        ("*1048577\r\n", "Protocol error: invalid multibulk length", .init()),
        ("*4\r\n", "Protocol error: invalid multibulk length", .init(maxArrayElements: 3)),
        ("*x\r\n", "Protocol error: invalid multibulk length", .init()),
        // Before AUTH: Redis's bounds and wording (a client without the password cannot make the server buffer much).
        ("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16385\r\n", "Protocol error: unauthenticated bulk length", RESPParser.Limits().forUnauthenticated),
        ("*11\r\n", "Protocol error: unauthenticated multibulk length", RESPParser.Limits().forUnauthenticated),
        ("*2\r\n$9\r\n", "Protocol error: unauthenticated bulk length", RESPParser.Limits(maxBulkLength: 8).forUnauthenticated),
        ("*99999999999999999999999\r\n", "Protocol error: invalid multibulk length", .init()),
        ("*1\r\n:1\r\n", "Protocol error: expected '$', got ':'", .init()),
        ("*2\r\n$1\r\na\r\n*1\r\n", "Protocol error: expected '$', got '*'", .init()),
        ("*1\r\n$1\r\nab\r\n", "Protocol error: bulk string not terminated by CRLF", .init()),
        ("SET k \"open\r\n", "Protocol error: unbalanced quotes in request", .init()),
        ("SET k \"a\"b\r\n", "Protocol error: unbalanced quotes in request", .init()),
        (String(repeating: "a", count: 100), "Protocol error: too big inline request", .init(maxInlineLength: 64)),
        ("*" + String(repeating: "1", count: 100), "Protocol error: too big mbulk count string", .init(maxInlineLength: 64)),
        ("*1\r\n$" + String(repeating: "1", count: 100), "Protocol error: too big bulk count string", .init(maxInlineLength: 64)),
    ]

    @Test func theUnauthenticatedLimitsLetAnAuthAndASmallValueThrough() throws {
        let limits = RESPParser.Limits().forUnauthenticated
        #expect(limits.maxBulkLength == 16 * 1024 && limits.maxArrayElements == 10 && limits.unauthenticated)
        let wire = "*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$16384\r\n" + String(repeating: "p", count: 16384) + "\r\n"
        #expect(try parseAll(Array(wire.utf8), limits: limits).count == 1)
        // The limits can change between values: a parser past AUTH takes the configured ones again.
        var parser = RESPParser(mode: .server, limits: limits)
        var buffer = ByteBuffer(string: "*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n" + String(repeating: "v", count: 20000) + "\r\n")
        #expect(try parser.next(from: &buffer) != nil)
        parser.limits = RESPParser.Limits()
        guard case .array(let set)? = try parser.next(from: &buffer) else { Issue.record("no SET parsed"); return }
        #expect(set.count == 3 && buffer.readableBytes == 0)
    }

    @Test(arguments: limitCases)
    func limitsAndMalformedInputAreCleanErrors(_ wire: String, _ message: String, _ limits: RESPParser.Limits) {
        #expect(throws: RESPProtocolError(message)) { try parseAll(Array(wire.utf8), limits: limits) }
    }

    @Test func hugeInlineLineIsRefusedWithoutNewline() throws {
        let line = [UInt8](repeating: UInt8(ascii: "a"), count: 64 * 1024 + 2)
        #expect(throws: RESPProtocolError("Protocol error: too big inline request")) { try parseAll(line) }
        // Exactly at the limit is fine.
        let ok = [UInt8](repeating: UInt8(ascii: "a"), count: 64 * 1024) + [13, 10]
        #expect(try parseAll(ok).count == 1)
    }

    @Test func announcedHugeBulkIsRefusedBeforeAnyPayload() throws {
        var parser = RESPParser(mode: .client)
        var buffer = ByteBuffer(string: "$10737418240\r\n")
        #expect(throws: RESPProtocolError.self) { try parser.next(from: &buffer) }
        // A poisoned parser keeps failing.
        var more = ByteBuffer(string: "+OK\r\n")
        #expect(throws: RESPProtocolError.self) { try parser.next(from: &more) }
        // An accepted bulk header asks for exactly what is missing.
        var ok = RESPParser(mode: .client)
        var header = ByteBuffer(string: "$100\r\nabc")
        #expect(try ok.next(from: &header) == nil)
        #expect(ok.minimumBytesStillNeeded(in: header) == 99)
    }

    @Test func clientModeLimitsNesting() {
        let deep = String(repeating: "*1\r\n", count: 40) + ":1\r\n"
        #expect(throws: RESPProtocolError.self) { try parseAll(Array(deep.utf8), mode: .client) }
    }

    @Test func bulkPayloadIsASliceNotACopy() throws {
        var parser = RESPParser()
        var buffer = ByteBuffer(string: "*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n")
        let value = try parser.next(from: &buffer)
        guard case .array(let args)? = value, case .bulkString(let key) = args[1] else {
            Issue.record("not a command")
            return
        }
        let sameStorage = key.withUnsafeReadableBytes { keyBytes in
            buffer.withUnsafeReadableBytes { rest in keyBytes.baseAddress! + 7 == rest.baseAddress! }
        }
        #expect(sameStorage)
    }
}
