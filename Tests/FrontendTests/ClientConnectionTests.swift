import Foundation
import Frontend
import Glibc
import NIOPosix
import Testing

/// What a client's connection sees on the general path: kept alive after non-streaming answers
/// while it is watched for the client leaving (`ClientDeparture`), pipelined requests answered
/// in order, HTTP/1.0 clients answered in HTTP/1.0 (`ClosingRequestHandler`).
struct ClientConnectionTests {
    static func wire(_ requests: [(path: String, body: String)], version: String = "1.1", extra: String = "") -> String {
        requests.map { path, body in
            "POST \(path) HTTP/\(version)\r\nHost: x\r\nContent-Type: application/json\r\n\(extra)"
                + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
        }.joined()
    }

    static func chat(_ extra: String) -> String {
        #"{"model":"m","messages":[{"role":"user","content":"hi"}]"# + extra + "}"
    }

    @Test(arguments: [false, true])
    func pipelinedRequestsAreAnsweredOnAConnectionKeptAlive(immediate: Bool) async throws {
        // The default config: non-streaming requests on the general path are watched for the
        // client leaving. (`immediate`: those to `m` go the event-loop way, the rest do not.)
        try await GatewayTests.withGateway(immediate: immediate) { client, backend in
            let wire = Self.wire([
                ("/v1/chat/completions", Self.chat(#","sleep_ms":100,"n":1"#)),
                ("/v1/completions", #"{"model":"busy","prompt":"x"}"#),
                ("/v1/chat/completions", Self.chat(#","n":2"#)),
                ("/v1/chat/completions", Self.chat(#","sleep_ms":50,"n":3"#)),
            ])
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchange(port: port, send: wire, responses: 4)
            }
            #expect(answers.map(\.status) == [200, 503, 200, 200])
            #expect(answers[0].body.contains(#""n":1"#))
            #expect(answers[2].body.contains(#""n":2"#))
            #expect(answers[3].body.contains(#""n":3"#))
            #expect(answers.allSatisfy { $0.header("connection") == nil }, "kept alive: \(answers.map(\.head))")
            #expect(backend.acquired == 3)
            #expect(backend.released == 3)
        }
    }

    @Test(arguments: [false, true])
    func aClientThatLeavesWithdrawsItsWaitingRequest(halfClose: Bool) async throws {
        try await GatewayTests.withGateway { client, backend in
            let port = client.port!
            // (timed from the moment it leaves: the thread pool may run the client late)
            let left = try await NIOThreadPool.singleton.runIfActive {
                let fd = try RawClient.connect(port: port)
                defer { close(fd) }
                try RawClient.sendAll(fd, Self.wire([("/v1/chat/completions", Self.chat(#","sleep_ms":8000"#))]))
                usleep(300_000)
                if halfClose {
                    shutdown(fd, Int32(SHUT_WR))
                    // the connection ends once the request is withdrawn, with no answer
                    let left = ContinuousClock.now
                    var end = [UInt8](repeating: 0, count: 4096)
                    let n = end.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    #expect(n == 0, "closed without an answer: \(String(decoding: end[0..<max(0, n)], as: UTF8.self))")
                    return left
                }
                return ContinuousClock.now
            }
            while backend.released == 0, ContinuousClock.now - left < .seconds(6) {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(backend.acquired == 1)
            #expect(backend.released == 1)
            // (slack for a loaded machine: the answer would have come 7.7 s or more after the leaving;
            // timed at the release, not when this task, which a parallel run starves, looks)
            let releasedAt = try #require(backend.releasedAt)
            #expect(releasedAt - left < .seconds(5), "withdrawn when the client left, not after the 8 s answer")
        }
    }

    @Test(arguments: [false, true])
    func anHTTP10ClientGetsAnHTTP10AnswerAndTheConnectionCloses(immediate: Bool) async throws {
        try await GatewayTests.withGateway(immediate: immediate) { client, backend in
            let port = client.port!
            // keep-alive asked for: not offered, the answer says so and the connection ends
            let whole = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchangeUntilClosed(
                    port: port, send: Self.wire([("/v1/chat/completions", Self.chat(#","n":1"#))], version: "1.0",
                                                extra: "Connection: keep-alive\r\n"))
            }
            #expect(whole.hasPrefix("HTTP/1.0 200"), "\(whole.prefix(200))")
            let (head, body) = Self.split(whole)
            #expect(head.lowercased().contains("\r\nconnection: close"))
            #expect(head.lowercased().contains("\r\ncontent-length: \(body.utf8.count)"))
            #expect(body.contains(#""n":1"#))

            // a stream: no chunked framing (an HTTP/1.0 client cannot read it); it ends with the connection
            let streamed = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchangeUntilClosed(
                    port: port, send: Self.wire([("/v1/chat/completions", Self.chat(#","stream":true"#))], version: "1.0"))
            }
            #expect(streamed.hasPrefix("HTTP/1.0 200"), "\(streamed.prefix(200))")
            let (streamHead, events) = Self.split(streamed)
            #expect(!streamHead.lowercased().contains("transfer-encoding"))
            #expect(streamHead.lowercased().contains("\r\nconnection: close"))
            #expect(events.hasPrefix(#"data: {"i":0}"#), "the events as they are, no chunk sizes: \(events.prefix(80))")
            #expect(events.hasSuffix("data: [DONE]\n\n"))
            #expect(backend.acquired == 2)
            #expect(backend.released == 2)
        }
    }

    @Test func anHTTP11ClientThatAsksToCloseIsAnsweredSoAndGetsChunkedStreams() async throws {
        try await GatewayTests.withGateway { client, _ in
            let port = client.port!
            let streamed = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchangeUntilClosed(
                    port: port, send: Self.wire([("/v1/chat/completions", Self.chat(#","stream":true"#))],
                                                extra: "Connection: close\r\n"))
            }
            #expect(streamed.hasPrefix("HTTP/1.1 200"))
            #expect(Self.split(streamed).head.lowercased().contains("transfer-encoding: chunked"))
            #expect(Self.split(streamed).head.lowercased().contains("\r\nconnection: close"), "says it closes")
            #expect(streamed.hasSuffix("\r\n0\r\n\r\n"))
            // `close` among other options: the connection ends after the answer, which says so
            let plain = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchangeUntilClosed(
                    port: port, send: Self.wire([("/v1/chat/completions", Self.chat(#","n":5"#))], extra: "Connection: TE, Close\r\nTE: trailers\r\n"))
            }
            #expect(plain.hasPrefix("HTTP/1.1 200"))
            #expect(Self.split(plain).head.lowercased().contains("\r\nconnection: close"))
            #expect(plain.contains(#""n":5"#))
        }
    }

    /// A request NIO's parser refuses is answered with what was wrong, as an OpenAI-shaped
    /// error (it was a bare 400 with no body), and the connection ends; an answer before it on
    /// the same connection is untouched.
    @Test(arguments: [false, true])
    func aRequestTheParserRefusesIsToldWhy(immediate: Bool) async throws {
        try await GatewayTests.withGateway(immediate: immediate) { client, backend in
            let port = client.port!
            let cases: [(send: String, status: String, code: String, says: String, afterAnswer: Bool)] = [
                ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", "400", "malformed_request",
                 "content-length", false),
                ("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 90 << 10))\r\n\r\n", "431",
                 "headers_too_large", "80 kib", false),
                // after a good request on the same connection: its answer first, whole
                (Self.wire([("/v1/chat/completions", Self.chat(#","n":7"#))]) + "GET /health HTTP/1.1\r\nHo st: x\r\n\r\n", "400",
                 "malformed_request", "header", true),
            ]
            for (send, status, code, says, afterAnswer) in cases {
                let whole = try await NIOThreadPool.singleton.runIfActive {
                    try RawClient.exchangeUntilClosed(port: port, send: send)
                }
                var answer = Substring(whole)
                if afterAnswer {
                    #expect(whole.hasPrefix("HTTP/1.1 200") && whole.contains(#""n":7"#), "\(whole.prefix(300))")
                    let rest = whole.index(after: whole.startIndex)..<whole.endIndex
                    let second = try #require(whole.range(of: "HTTP/1.1 \(status)", range: rest), "\(whole.prefix(600))")
                    answer = whole[second.lowerBound...]
                }
                #expect(answer.hasPrefix("HTTP/1.1 \(status)"), "\(whole.prefix(300))")
                let (head, body) = Self.split(String(answer))
                #expect(head.lowercased().contains("\r\nconnection: close"))
                #expect(head.lowercased().contains("\r\ncontent-type: application/json"))
                #expect(head.lowercased().contains("\r\ncontent-length: \(body.utf8.count)"))
                let error = try #require(
                    (try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])?["error"] as? [String: Any],
                    "\(body)")
                #expect(error["code"] as? String == code && error["type"] as? String == "invalid_request_error")
                #expect((error["message"] as? String)?.lowercased().contains(says) == true, "\(error)")
            }
            #expect(backend.acquired == 1)
        }
    }

    @Test func aClientWaitingFor100IsToldAtOnceWhenItsDeclaredBodyIsOverTheRoutesLimit() async throws {
        try await GatewayTests.withGateway(GatewayConfiguration(maxBodyBytes: 1024)) { client, backend in
            let port = client.port!
            func head(_ method: String, _ path: String, _ length: Int) -> String {
                "\(method) \(path) HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: \(length)\r\n\r\n"
            }
            for (wire, code) in [(head("POST", "/v1/chat/completions", 5000), "request_too_large"),
                                 (head("PUT", "/v1/blocks/k", 100 << 20), "block_too_large")] {
                let answer = try await NIOThreadPool.singleton.runIfActive { try RawClient.exchangeUntilClosed(port: port, send: wire) }
                #expect(answer.hasPrefix("HTTP/1.1 413"), "\(answer)")
                #expect(answer.contains(code))
                #expect(Self.split(answer).head.lowercased().contains("\r\nconnection: close"))
            }
            // within the limits: the go-ahead (a block of 1 MiB is over max_body but not over a block's limit)
            for wire in [head("POST", "/v1/chat/completions", 1000), head("PUT", "/v1/blocks/k", 1 << 20)] {
                let interim = try await NIOThreadPool.singleton.runIfActive {
                    let fd = try RawClient.connect(port: port)
                    defer { close(fd) }
                    try RawClient.sendAll(fd, wire)
                    var buffer = [UInt8](repeating: 0, count: 256)
                    let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    return String(decoding: buffer[0..<max(0, n)], as: UTF8.self)
                }
                #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n")
            }
            #expect(backend.acquired == 0)
        }
    }

    static func split(_ answer: String) -> (head: String, body: String) {
        guard let end = answer.range(of: "\r\n\r\n") else { return (answer, "") }
        return (String(answer[..<end.lowerBound]), String(answer[end.upperBound...]))
    }
}
