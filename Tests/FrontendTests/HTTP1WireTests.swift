import NIOCore
import Testing
@testable import Frontend

/// The relay's own HTTP/1 on the upstream side: answers as real servers frame them (llama-server,
/// uvicorn, nginx), cut at every byte, and what must fail.
struct HTTP1WireTests {
    /// What the parser made of `wire`: status, keep-alive, content type, the body, and whether
    /// it ended; fed `cuts` pieces (1 = whole).
    struct Parsed: Equatable {
        var status: Int?
        var keepAlive: Bool?
        var contentType: String?
        var body = ""
        var ends = 0
    }

    static func parse(_ wire: String, pieceSize: Int = .max, closeAfter: Bool = false) throws -> Parsed {
        var parser = HTTP1ResponseParser()
        var parsed = Parsed()
        let bytes = Array(wire.utf8)
        var start = 0
        repeat {
            let end = min(bytes.count, start + pieceSize)
            var buffer = ByteBuffer(bytes: bytes[start..<end])
            while let event = try parser.next(&buffer) {
                switch event {
                case .head(let head):
                    parsed.status = head.status
                    parsed.keepAlive = head.keepAlive
                    parsed.contentType = head.first(name: "content-type")
                case .body(let chunk):
                    parsed.body += String(buffer: chunk)
                case .end:
                    parsed.ends += 1
                }
            }
            #expect(buffer.readableBytes == 0, "the parser leaves nothing of a read unconsumed")
            start = end
        } while start < bytes.count
        if closeAfter, case .end? = parser.inputClosed() { parsed.ends += 1 }
        return parsed
    }

    static let answers: [(String, Parsed)] = [
        // nginx, fixed length
        ("HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n{\"ok\":true}",
         Parsed(status: 200, keepAlive: true, contentType: "application/json", body: "{\"ok\":true}", ends: 1)),
        // llama-server's stream: chunked, with an extension, a trailer, lower-case names
        ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + "e\r\ndata: {\"a\":1}\n\r\n5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n",
         Parsed(status: 200, keepAlive: true, contentType: "text/event-stream", body: "data: {\"a\":1}\nhello", ends: 1)),
        // an interim 100 Continue, then the answer
        ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
         Parsed(status: 400, keepAlive: true, contentType: nil, body: "no", ends: 1)),
        // no body by status
        ("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", Parsed(status: 204, keepAlive: true, ends: 1)),
        // HTTP/1.0: kept only when asked; Connection: close on 1.1 is not kept
        ("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", Parsed(status: 200, keepAlive: true, ends: 1)),
        ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Parsed(status: 200, keepAlive: false, ends: 1)),
        ("HTTP/1.1 503 Service Unavailable\r\nConnection: upgrade, close\r\nContent-Length: 1\r\n\r\nx",
         Parsed(status: 503, keepAlive: false, body: "x", ends: 1)),
        // status line without a reason; spaces around a value
        ("HTTP/1.1 200\r\nContent-Type:   text/plain  \r\nContent-Length: 2\r\n\r\nab",
         Parsed(status: 200, keepAlive: true, contentType: "text/plain", body: "ab", ends: 1)),
        // Transfer-Encoding wins over Content-Length, and the connection is not kept
        ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
         Parsed(status: 200, keepAlive: false, body: "ok", ends: 1)),
    ]

    @Test(arguments: answers.indices)
    func answersParseTheSameWholeOrCutAtEveryByte(index: Int) throws {
        let (wire, expected) = Self.answers[index]
        #expect(try Self.parse(wire) == expected)
        for size in [1, 2, 3, 7, 16] {
            #expect(try Self.parse(wire, pieceSize: size) == expected, "in pieces of \(size)")
        }
    }

    @Test func anAnswerWithoutLengthEndsWhenTheConnectionCloses() throws {
        let wire = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
        #expect(try Self.parse(wire) == Parsed(status: 200, keepAlive: false, contentType: "text/plain", body: "until the end", ends: 0))
        #expect(try Self.parse(wire, pieceSize: 3, closeAfter: true)
            == Parsed(status: 200, keepAlive: false, contentType: "text/plain", body: "until the end", ends: 1))
    }

    @Test func aCutShortAnswerDoesNotEndAtTheClose() throws {
        #expect(try Self.parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", closeAfter: true).ends == 0)
        #expect(try Self.parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", closeAfter: true).ends == 0)
    }

    @Test func twoAnswersInARowOnAKeptConnection() throws {
        let one = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
        let two = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
        for size in [1, 5, 1000] {
            let parsed = try Self.parse(one + two, pieceSize: size)
            #expect(parsed.status == 201 && parsed.body == "ab" && parsed.ends == 2)
        }
    }

    static let malformed: [(String, String)] = [
        ("HTTP/2 200 OK\r\n\r\n", "status line"),
        ("HTTP/1.1 20 OK\r\n\r\n", "status line"),
        ("HTTP/1.1 200 OK\nContent-Length: 0\n\n\r\n\r\n", "status line"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "Content-Length '1x'"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "two different Content-Length"),
        ("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "valid name"),
        ("HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", "valid name"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size line"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n", "no CRLF after a chunk"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", "chunk size too large"),
        ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ]

    @Test(arguments: malformed.indices)
    func malformedAnswersFailWithWhatIsWrong(index: Int) throws {
        let (wire, says) = Self.malformed[index]
        for size in [1, 1000] {
            do {
                _ = try Self.parse(wire, pieceSize: size)
                Issue.record("'\(wire)' parsed")
            } catch let error as HTTP1Wire.Failure {
                #expect(error.description.contains(says), "\(error.description)")
            }
        }
    }

    @Test func aHeadThatNeverEndsIsRefusedAtTheLimit() throws {
        var parser = HTTP1ResponseParser()
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n")
        #expect(try parser.next(&buffer) == nil)
        let line = ByteBuffer(string: "X-Filler: " + String(repeating: "a", count: 1000) + "\r\n")
        #expect(throws: HTTP1Wire.Failure.headTooLarge(limit: HTTP1ResponseParser.maxHeadBytes)) {
            for _ in 0..<100 {
                var piece = line
                _ = try parser.next(&piece)
            }
        }
    }

    @Test func requestsAreWrittenWithTheLeaseHeadersReplacingStandardOnes() throws {
        let body = ByteBuffer(string: #"{"a":1}"#)
        let bytes = try HTTP1Wire.request(
            path: "/v1/chat/completions", standard: [("Host", "h:1"), ("Content-Type", "application/json")],
            extra: [("content-type", "application/x"), ("Authorization", "Bearer k")], body: body)
        #expect(String(buffer: bytes) == "POST /v1/chat/completions HTTP/1.1\r\nHost: h:1\r\ncontent-type: application/x\r\n"
            + "Authorization: Bearer k\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
    }

    @Test(arguments: [("Authorization", "Bearer k\r\nX-Injected: 1"), ("Bad Name", "v"), ("", "v"), ("X-Nul", "a\u{0}b")])
    func headersThatWouldBreakTheRequestAreRefused(name: String, value: String) {
        #expect(throws: HTTP1Wire.Failure.self) {
            _ = try HTTP1Wire.request(path: "/", standard: [], extra: [(name, value)], body: ByteBuffer())
        }
    }

    @Test func aRelayedAnswerIsWrittenWithItsFieldsAndLength() {
        let bytes = HTTP1Wire.answer(
            status: 200, contentType: "application/json", servedBy: "m#1", date: "Fri, 04 Dec 2026 08:00:00 GMT",
            server: "strata", body: ByteBuffer(string: #"{"ok":1}"#), allocator: ByteBufferAllocator())
        #expect(String(buffer: bytes) == "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-strata-served-by: m#1\r\n"
            + "Date: Fri, 04 Dec 2026 08:00:00 GMT\r\nServer: strata\r\nContent-Length: 8\r\n\r\n{\"ok\":1}")
    }

    @Test func aRelayedAnswerCannotBeBrokenByAnUpstreamsFieldValue() throws {
        // An upstream's Content-Type with CR LF in it must not add a field (or end the head):
        // such bytes are written as spaces, as HTTPTypes does.
        let bytes = HTTP1Wire.answer(
            status: 502, contentType: "text/plain\r\nSet-Cookie: x=1", servedBy: nil, date: nil, server: "strata",
            body: ByteBuffer(string: "no"), allocator: ByteBufferAllocator())
        #expect(String(buffer: bytes) == "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain  Set-Cookie: x=1\r\n"
            + "Server: strata\r\nContent-Length: 2\r\n\r\nno")
    }

    @Test(arguments: [204, 304])
    func aRelayedAnswerWithoutBodyHasNoLengthNorBody(status: Int) {
        let bytes = HTTP1Wire.answer(
            status: status, contentType: "application/json", servedBy: nil, date: nil, server: "strata",
            body: ByteBuffer(string: "ignored"), allocator: ByteBufferAllocator())
        #expect(!String(buffer: bytes).contains("Content-Length"))
        #expect(String(buffer: bytes).hasSuffix("Server: strata\r\n\r\n"))
    }
}
