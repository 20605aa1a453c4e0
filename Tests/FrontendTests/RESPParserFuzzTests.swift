#if canImport(RESP)
import RESP
#else
@testable import Frontend
#endif
import NIOCore
import StrataTestSupport
import Testing

private typealias SeededGenerator = SplitMix64

private func randomValue(_ rng: inout SeededGenerator, depth: Int = 0) -> RESPValue {
    func text() -> String {
        String((0..<Int.random(in: 0...8, using: &rng)).map { _ in "abcXYZ09 _".randomElement(using: &rng)! })
    }
    switch Int.random(in: 0..<(depth < 3 ? 7 : 6), using: &rng) {
    case 0: return .simpleString(text())
    case 1: return .error("ERR " + text())
    case 2: return .integer(Int64.random(in: .min ... .max, using: &rng))
    case 3: return .bulkString(ByteBuffer(bytes: (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }))
    case 4: return .null
    case 5: return .nullArray
    default: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in randomValue(&rng, depth: depth + 1) })
    }
}

private func randomCommand(_ rng: inout SeededGenerator) -> RESPValue {
    .array((0..<Int.random(in: 1...5, using: &rng)).map { _ in
        .bulkString(ByteBuffer(bytes: (0..<Int.random(in: 0...30, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }))
    })
}

/// Feeds `bytes` to `next` in random chunks of up to `chunk` bytes, taking all it yields after
/// each: what it yielded, the error it threw (it is not called again after one), and the bytes
/// left unread.
private func feedChunks<T>(
    _ bytes: [UInt8], chunk: Int, _ rng: inout SeededGenerator,
    _ next: (inout ByteBuffer) throws(RESPProtocolError) -> T?
) -> (values: [T], error: RESPProtocolError?, leftover: Int) {
    var buffer = ByteBuffer()
    var values: [T] = []
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + Int.random(in: 1...chunk, using: &rng))
        buffer.writeBytes(bytes[offset..<end])
        offset = end
        do throws(RESPProtocolError) {
            while let value = try next(&buffer) { values.append(value) }
        } catch {
            return (values, error, buffer.readableBytes)
        }
    }
    return (values, nil, buffer.readableBytes)
}

/// Feeds `bytes` in random chunks; returns the values parsed and whether it threw.
private func feed(
    _ bytes: [UInt8], mode: RESPParser.Mode, limits: RESPParser.Limits, _ rng: inout SeededGenerator
) -> (values: [RESPValue], error: RESPProtocolError?, leftover: Int) {
    var parser = RESPParser(mode: mode, limits: limits)
    return feedChunks(bytes, chunk: 64, &rng) { (buffer) throws(RESPProtocolError) in try parser.next(from: &buffer) }
}

/// Feeds `bytes` in random chunks to a server-mode parser, reading requests with `nextRequest`
/// (its one-pass reading of whole requests), or with `next` alone where `slow`.
private func feedRequests(
    _ bytes: [UInt8], limits: RESPParser.Limits, slow: Bool, _ rng: inout SeededGenerator
) -> (requests: [[ByteBuffer]], error: RESPProtocolError?, leftover: Int) {
    var parser = RESPParser(mode: .server, limits: limits)
    let fed = feedChunks(bytes, chunk: 96, &rng) { (buffer) throws(RESPProtocolError) -> [ByteBuffer]? in
        guard slow else { return try parser.nextRequest(from: &buffer) }
        guard let value = try parser.next(from: &buffer) else { return nil }
        // (server mode yields arrays of bulk strings; anything else shows as a request no reader makes)
        guard case .array(let elements) = value else { return [ByteBuffer(string: "?not an array")] }
        return elements.map { if case .bulkString(let b) = $0 { b } else { ByteBuffer(string: "?not bulk") } }
    }
    return (fed.values, fed.error, fed.leftover)
}

@Suite struct RESPParserFuzzTests {
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomValidFramesRoundTrip(seed: UInt64) {
        var rng = SeededGenerator(state: seed)
        for _ in 0..<500 {
            let clientValues = (0..<Int.random(in: 1...4, using: &rng)).map { _ in randomValue(&rng) }
            var wire = ByteBuffer()
            for value in clientValues { RESPEncoder.encode(value, into: &wire) }
            let client = feed(Array(wire.readableBytesView), mode: .client, limits: .init(), &rng)
            #expect(client.error == nil)
            #expect(client.values == clientValues)

            let commands = (0..<Int.random(in: 1...4, using: &rng)).map { _ in randomCommand(&rng) }
            wire.clear()
            for value in commands { RESPEncoder.encode(value, into: &wire) }
            let server = feed(Array(wire.readableBytesView), mode: .server, limits: .init(), &rng)
            #expect(server.error == nil)
            #expect(server.values == commands)

            // Truncated: a prefix of the values, never an error, never an extra value.
            let bytes = Array(wire.readableBytesView)
            let cut = Int.random(in: 0..<bytes.count, using: &rng)
            let truncated = feed(Array(bytes[..<cut]), mode: .server, limits: .init(), &rng)
            #expect(truncated.error == nil)
            #expect(truncated.values.count < commands.count)
            #expect(Array(commands.prefix(truncated.values.count)) == truncated.values)
        }
    }

    @Test(arguments: [11, 12, 13, 14] as [UInt64])
    func mutatedAndRandomBytesNeverCrash(seed: UInt64) {
        var rng = SeededGenerator(state: seed)
        let limits = RESPParser.Limits(maxBulkLength: 1024, maxArrayElements: 64, maxInlineLength: 256)
        var errors = 0
        for round in 0..<1500 {
            var bytes: [UInt8]
            if round % 3 == 0 {
                let alphabet = Array("*$+-:\r\n0123456789-abc \"'\\".utf8)
                bytes = (0..<Int.random(in: 1...200, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            } else {
                var wire = ByteBuffer()
                for _ in 0..<3 { RESPEncoder.encode(round % 3 == 1 ? randomCommand(&rng) : randomValue(&rng), into: &wire) }
                bytes = Array(wire.readableBytesView)
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            for mode in [RESPParser.Mode.server, .client] {
                let result = feed(bytes, mode: mode, limits: limits, &rng)
                if let error = result.error {
                    errors += 1
                    #expect(error.message.hasPrefix("Protocol error: "))
                }
                // Nothing is buffered beyond the input, and a partial line never exceeds the limit.
                #expect(result.leftover <= bytes.count)
                for case .bulkString(let payload) in result.values.flatMap({ v -> [RESPValue] in
                    if case .array(let a) = v { return a } else { return [v] }
                }) {
                    #expect(payload.readableBytes <= limits.maxBulkLength)
                }
            }
        }
        #expect(errors > 0)
    }

    /// Requests read whole in one pass (`nextRequest`) and by the value parser (`next`) are the
    /// same requests, the same errors and the same bytes left, whatever the input and however it
    /// is cut: valid pipelines, mutated ones, LF-only line ends, inline commands, empty and
    /// negative counts, lengths past the limits, random bytes.
    @Test(arguments: [21, 22, 23] as [UInt64])
    func wholeRequestsReadInOnePassAsTheValueParserReadsThem(seed: UInt64) {
        var rng = SeededGenerator(state: seed)
        let limitsTried = [
            RESPParser.Limits(maxBulkLength: 24, maxArrayElements: 4, maxInlineLength: 256),
            RESPParser.Limits(maxBulkLength: 24, maxArrayElements: 4, maxInlineLength: 2),   // "$10" and longer header lines past it
            RESPParser.Limits().forUnauthenticated,
            RESPParser.Limits(maxBulkLength: .max),
        ]
        var compared = (requests: 0, errors: 0, whole: 0)
        for round in 0..<2000 {
            // (each set of limits meets every kind of input below, which `round % 4` picks)
            let limits = limitsTried[(round / 4) % limitsTried.count]
            var bytes: [UInt8]
            switch round % 4 {
            case 0:
                let alphabet = Array("*$\r\n0123456789-+ abc".utf8)
                bytes = (0..<Int.random(in: 1...160, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
            default:
                var wire = ByteBuffer()
                for _ in 0..<Int.random(in: 1...6, using: &rng) {
                    switch Int.random(in: 0..<10, using: &rng) {
                    case 0: wire.writeString("PING \"a b\"\r\n")   // inline
                    case 1: wire.writeString(["*0\r\n", "*-1\r\n", "*1\n$1\nx\n", "*+1\r\n$1\r\nx\r\n"].randomElement(using: &rng)!)
                    default: RESPEncoder.encode(randomCommand(&rng), into: &wire)
                    }
                }
                bytes = Array(wire.readableBytesView)
                if round % 4 == 2 {
                    for _ in 0..<Int.random(in: 1...3, using: &rng) {
                        bytes[Int.random(in: 0..<bytes.count, using: &rng)] = Array("*$\r\n0129-x".utf8).randomElement(using: &rng)!
                    }
                }
            }
            var cuts = rng
            let slow = feedRequests(bytes, limits: limits, slow: true, &cuts)
            let fast = feedRequests(bytes, limits: limits, slow: false, &rng)
            #expect(fast.requests == slow.requests, "\(bytes)")
            #expect(fast.error == slow.error, "\(bytes)")
            #expect(fast.leftover == slow.leftover, "\(bytes)")
            compared.requests += fast.requests.count
            compared.errors += fast.error == nil ? 0 : 1
            // The one-pass reader itself, on the input whole: each request it takes is the value
            // parser's next one (so the comparison above did go through it).
            var whole = ByteBuffer(bytes: bytes)
            var taken = 0
            while let request = RESPParser.wholeRequest(in: &whole, limits: limits), taken < slow.requests.count {
                #expect(request == slow.requests[taken], "\(bytes)")
                taken += 1
            }
            compared.whole += taken
        }
        // both kinds of outcome were compared, many times, and the one-pass reader took part
        #expect(compared.requests > 1000 && compared.errors > 300 && compared.whole > 1000, "\(compared)")
    }

    /// A bulk length near `Int.max` under a limit that allows it: both readers wait for the
    /// payload (no overflow computing where it ends).
    @Test func aLengthNearIntMaxWaitsForItsPayload() throws {
        let limits = RESPParser.Limits(maxBulkLength: .max)
        for header in ["*1\r\n$9223372036854775800\r\n", "*1\r\n$9223372036854775807\r\nabc"] {
            var buffer = ByteBuffer(string: header)
            #expect(RESPParser.wholeRequest(in: &buffer, limits: limits) == nil)
            #expect(buffer.readableBytes == header.utf8.count)
            var parser = RESPParser(mode: .server, limits: limits)
            #expect(try parser.nextRequest(from: &buffer) == nil)
        }
    }

    @Test func hugeAnnouncedLengthsAreRefusedForAnyDigits() {
        var rng = SeededGenerator(state: 99)
        for _ in 0..<2000 {
            let length = UInt64.random(in: (512 * 1024 * 1024 + 1)...UInt64.max, using: &rng)
            let header = Array("*1\r\n$\(length)\r\n".utf8)
            let result = feed(header, mode: .server, limits: .init(), &rng)
            #expect(result.error == RESPProtocolError("Protocol error: invalid bulk length"))
            let array = Array("*\(length)\r\n".utf8)
            #expect(feed(array, mode: .server, limits: .init(), &rng).error == RESPProtocolError("Protocol error: invalid multibulk length"))
        }
    }
}
