import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOPosix
import Testing
@testable import Frontend

#if canImport(Glibc)
import Glibc
#endif

/// The event-loop relay (requests the backend admits at once): its answers, its upstream
/// connections, its failure paths, and its ordering against requests that go the general way.
struct EventLoopRelayTests {
    static let chat = #"{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}"#

    static func body(_ model: String, extra: String = "") -> ByteBuffer {
        ByteBuffer(string: chat.replacingOccurrences(of: "MODEL", with: model).replacingOccurrences(of: "}]}", with: "}]\(extra)}"))
    }

    @Test func keptConnectionsAreReusedAndOneClosedByTheUpstreamIsResent() async throws {
        // The raw upstream answers one request per connection and closes the connection when a
        // second comes, without an answer (as a server that timed the idle connection out).
        let upstream = try await RawUpstream.start(answersPerConnection: 1)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(cancelOnDisconnect: false), immediate: true, rawPort: upstream.port
        ) { client, backend in
            for _ in 0..<3 {
                let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
                #expect(response.status == .ok)
                #expect(String(buffer: response.body).hasPrefix(#"{"ok":"#))
            }
            #expect(backend.outcomes("raw") == [.completed, .completed, .completed])
            #expect(upstream.connections == 3, "each request after the first found its kept connection closed and was sent again")
        }

        let keeping = try await RawUpstream.start(answersPerConnection: 100)
        defer { keeping.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(cancelOnDisconnect: false), immediate: true, rawPort: keeping.port
        ) { client, backend in
            for _ in 0..<5 {
                let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
                #expect(response.status == .ok)
                // as on the general path (Hummingbird adds them there)
                #expect(response.headers[.server] == "strata")
                #expect(response.headers[.date]?.hasSuffix(" GMT") == true)
            }
            #expect(keeping.connections == 1, "one kept-alive upstream connection serves them all")
            #expect(backend.outcomes("raw").count == 5)
        }
    }

    @Test func theDateHeaderIsIMFFixdate() {
        #expect(UpstreamPool.imfFixdate(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")   // RFC 9110's example
        #expect(UpstreamPool.imfFixdate(1_798_761_600) == "Fri, 01 Jan 2027 00:00:00 GMT")
    }

    @Test func idleUpstreamConnectionsAreClosedAfterTheIdleTimeout() async throws {
        let upstream = try await RawUpstream.start(answersPerConnection: 100)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(cancelOnDisconnect: false, upstreamIdleTimeout: .milliseconds(300)), immediate: true,
            rawPort: upstream.port
        ) { client, _ in
            let first = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
            #expect(first.status == .ok)
            let started = ContinuousClock.now
            while upstream.openConnections > 0 && ContinuousClock.now - started < .seconds(10) {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(upstream.openConnections == 0, "closed once idle past the timeout")
            // Both instants are taken by the upstream, so a slow test machine only lengthens this.
            let idle = try #require(upstream.lastClosedAt) - #require(upstream.lastAnsweredAt)
            #expect(idle >= .milliseconds(280), "kept alive until the timeout (\(idle))")
            let second = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
            #expect(second.status == .ok)
            #expect(upstream.connections == 2, "the next request opens a new one")
        }
    }

    /// Records what the relay handler passes on toward Hummingbird.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = HTTPRequestPart
        var parts: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head: parts.append("head")
            case .body(let body): parts.append("body \(body.readableBytes)")
            case .end: parts.append("end")
            }
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is ChannelShouldQuiesceEvent { parts.append("quiesce") }
        }
    }

    @Test func aQuiesceDuringAnUploadHandedOnFollowsIt() throws {
        // Shutdown begins while a request's body is collected here; the body then grows past
        // what the loop parses, so the request goes to Hummingbird — and the quiesce after it,
        // or Hummingbird would never close the connection and shutdown would wait for it.
        let gateway = Gateway(configuration: GatewayConfiguration(), backend: FakeBackend(upstreamPort: 1, immediate: true),
                              httpClient: .shared, logger: Logger(label: "test"))
        let recorder = Recorder()
        let channel = EmbeddedChannel(handlers: [EventLoopRelayHandler(gateway: gateway), recorder])
        defer { _ = try? channel.finish() }
        let head = HTTPRequest(method: .post, scheme: "http", authority: "x", path: "/v1/chat/completions")
        try channel.writeInbound(HTTPRequestPart.head(head))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: #"{"model":"m","#)))
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        #expect(recorder.parts.isEmpty, "held while the request is collected")
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x20, count: Gateway.immediateBodyLimit)))
        #expect(recorder.parts == ["head", "body \(Gateway.immediateBodyLimit + 13)", "quiesce"])
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(recorder.parts.last == "end")
    }

    @Test func aRefusedReplicaIsLeftForAnother() async throws {
        try await GatewayTests.withGateway(immediate: true) { client, backend in
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("retry"))
            #expect(response.status == .ok)
            #expect(String(buffer: response.body).hasPrefix(#"{"echo":"#))
            #expect(backend.outcomes("retry") == [.unreachable, .completed], "a refused connection says nothing listens there")
        }
    }

    @Test func anUpstreamThatIsDownGets502() async throws {
        // A port bound and not listening refuses connections, and no other test's server can
        // take it meanwhile (a stopped server's port could be, under a parallel run).
        let reserved = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(reserved) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(reserved, $0, length) == 0 && getsockname(reserved, $0, &length) == 0 }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        try await GatewayTests.withGateway(immediate: true, rawPort: port) { client, backend in
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
            #expect(response.status == .badGateway)
            #expect(try GatewayTests.errorCode(response) == "runtime_failed")
            #expect(backend.outcomes("raw") == [.unreachable])
        }
    }

    @Test func anAnswerThatStopsComingGets502AfterTheUpstreamTimeout() async throws {
        let upstream = try await RawUpstream.start(answersPerConnection: 10, stall: true)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            // Long enough that a loaded test machine gets the answer's head out within it.
            GatewayConfiguration(upstreamTimeout: .seconds(1), cancelOnDisconnect: false), immediate: true,
            rawPort: upstream.port
        ) { client, backend in
            let started = ContinuousClock.now
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
            #expect(response.status == .badGateway)
            #expect(try GatewayTests.errorCode(response) == "runtime_failed")
            #expect(String(buffer: response.body).contains("the answer stopped coming for gateway.upstream_timeout"))
            // (Bounded by the 1 s timeout, not the default 10 min; slack for a loaded machine,
            // where this once took 8.6 s.)
            #expect(ContinuousClock.now - started < .seconds(30))
            #expect(upstream.connections == 1, "an answer that had begun is not sent again")
            #expect(backend.outcomes("raw").count == 1, "the lease ended: \(backend.outcomes("raw"))")
        }
    }

    /// A stall is measured from the answer's last read: the answer stops at once after its head
    /// and half its body, and the check at `upstream_timeout` (which sees those reads) now waits
    /// only what is left of the timeout from them. It re-armed a whole timeout from the check, so
    /// such a stall ended after twice `upstream_timeout` (here 6 s, never less).
    @Test func aStallEndsUpstreamTimeoutAfterTheLastReadNotTwiceThat() async throws {
        let upstream = try await RawUpstream.start(answersPerConnection: 10, stall: true)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(upstreamTimeout: .seconds(3), cancelOnDisconnect: false), immediate: true, rawPort: upstream.port
        ) { client, _ in
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("raw"))
            #expect(response.status == .badGateway)
            // Both instants are taken by the upstream, on an event loop (a test run's load starves
            // the test's own tasks for many seconds, not the relay's timers this much).
            let stalled = try #require(upstream.lastAnsweredAt), cut = try #require(upstream.lastClosedAt)
            #expect(cut - stalled >= .milliseconds(2900) && cut - stalled < .milliseconds(5500), "cut \(cut - stalled) after the stall")
        }
    }

    /// The relay bounds each request from its own start with one timer per client connection:
    /// requests that together outlast `upstream_timeout` on one kept connection are not cut,
    /// and a later one whose answer does not come in time is. The upstream times its answers on
    /// its own event loop (a test run's load does not stretch them much); each answer within the
    /// bound has 1.5 s to spare.
    @Test func eachRequestOnAKeptConnectionHasItsOwnUpstreamTimeout() async throws {
        let upstream = try await RawUpstream.start(
            answersPerConnection: 10, delays: [.milliseconds(1500), .milliseconds(1500), .milliseconds(1500), .seconds(10)])
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(upstreamTimeout: .seconds(3), cancelOnDisconnect: false), immediate: true, rawPort: upstream.port
        ) { client, backend in
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive { () -> [(head: String, seconds: Double)] in
                let connection = try StreamClient(port: port, send: "")
                defer { connection.close() }
                var answers: [(head: String, seconds: Double)] = []
                let body = String(buffer: Self.body("raw"))
                for _ in 0..<4 {
                    let started = ContinuousClock.now
                    try connection.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
                    let head = try connection.readHead()
                    let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                        .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                    _ = try connection.readBody(length: length)
                    let elapsed = ContinuousClock.now - started
                    answers.append((head, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18))
                }
                return answers
            }
            for answer in answers.prefix(3) {
                #expect(answer.head.hasPrefix("HTTP/1.1 200"), "an answer within the timeout: \(answer.head)")
            }
            #expect(answers[3].head.hasPrefix("HTTP/1.1 502"), "\(answers[3].head)")
            #expect(answers[3].seconds >= 2.9 && answers[3].seconds < 9.5, "cut after \(answers[3].seconds) s")
            #expect(upstream.connections == 1, "one kept upstream connection for the answered requests")
            #expect(backend.outcomes("raw").count == 4)
        }
    }

    @Test func anAnswerOverTheLimitGets502() async throws {
        try await GatewayTests.withGateway(GatewayConfiguration(maxResponseBytes: 64), immediate: true) { client, backend in
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("m"))
            #expect(response.status == .badGateway)
            #expect(try GatewayTests.errorCode(response) == "runtime_failed")
            #expect(backend.released == 1)
        }
    }

    @Test func aClientThatLeavesEndsItsRequest() async throws {
        try await GatewayTests.withGateway(immediate: true) { client, backend in
            let body = String(buffer: Self.body("m", extra: #","sleep_ms":4000"#))
            let wire = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            let port = client.port!
            let connection = try await NIOThreadPool.singleton.runIfActive { try StreamClient(port: port, send: wire) }
            try await StreamRelayTests.waitUntil { backend.acquired == 1 }
            let started = ContinuousClock.now
            connection.close()
            // The upstream answers after 4 s; the lease ends when the client goes, long before.
            try await StreamRelayTests.waitUntil(.seconds(3)) { backend.released == 1 }
            #expect(backend.acquired == 1)
            #expect(ContinuousClock.now - started < .seconds(3))
            #expect(backend.released == 1, "released when the client left, not when the upstream answered")
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await GatewayTests.withGateway(GatewayConfiguration(cancelOnDisconnect: false), immediate: true) { client, backend in
            // relayed here (answered after 100 ms), general path (503), general path (400), relayed here
            let bodies = [
                String(buffer: Self.body("m", extra: #","sleep_ms":100,"n":1"#)),
                #"{"model":"busy","prompt":"x"}"#,
                "not json",
                String(buffer: Self.body("m", extra: #","n":2"#)),
            ]
            let paths = ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions", "/v1/chat/completions"]
            var wire = ""
            for (path, body) in zip(paths, bodies) {
                wire += "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            }
            // blocking socket calls: on a thread of their own, not the cooperative pool the servers use
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive { [wire] in
                try RawClient.exchange(port: port, send: wire, responses: 4)
            }
            #expect(answers.map(\.status) == [200, 503, 400, 200])
            #expect(answers[0].body.contains(#""n":1"#))
            #expect(answers[3].body.contains(#""n":2"#))
            #expect(backend.acquired == 2)
            #expect(backend.released == 2)
        }
    }

    @Test func anAnswerTheSocketCannotTakeAtOnceArrivesWholeBeforeTheNext() async throws {
        // Answers go straight to the socket (`DirectSocketWrite`); this one (the upstream echoes
        // the 200 KB request 40 times: 8 MB, more than a socket's largest send buffer here) does
        // not fit a client that reads late through a 4 KiB window, so the rest goes through the
        // channel, and the pipelined second answer must wait behind it.
        try await GatewayTests.withGateway(GatewayConfiguration(cancelOnDisconnect: false), immediate: true) { client, backend in
            let pad = String(repeating: "0123456789", count: 20_000)
            let bodies = [String(buffer: Self.body("m", extra: #","pad":"\#(pad)","n":1,"echo_times":39"#)),
                          String(buffer: Self.body("m", extra: #","n":2"#))]
            let wire = bodies.map {
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \($0.utf8.count)\r\n\r\n\($0)"
            }.joined()
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchange(port: port, send: wire, responses: 2, receiveBuffer: 4 << 10, readAfter: .milliseconds(300))
            }
            #expect(answers.map(\.status) == [200, 200])
            #expect(answers.first?.body.components(separatedBy: #""pad":"\#(pad)","n":1"#).count == 41, "the first answer whole")
            #expect(answers.last?.body.contains(#""n":2"#) == true)
            #expect(answers.last?.body.contains("pad") == false)
            #expect(backend.released == 2)
        }
    }

    @Test func aClientThatHalfClosesAfterItsRequestsGetsEveryAnswer() async throws {
        try await GatewayTests.withGateway(GatewayConfiguration(cancelOnDisconnect: false), immediate: true) { client, backend in
            // relayed here (answered after 100 ms), general path (503), relayed here; then the
            // client shuts its sending side while the first is still with the upstream
            let bodies = [
                String(buffer: Self.body("m", extra: #","sleep_ms":100,"n":1"#)),
                #"{"model":"busy","prompt":"x"}"#,
                String(buffer: Self.body("m", extra: #","n":3"#)),
            ]
            let paths = ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions"]
            var wire = ""
            for (path, body) in zip(paths, bodies) {
                wire += "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            }
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive { [wire] in
                try RawClient.exchange(port: port, send: wire, responses: 3, halfClose: true)
            }
            #expect(answers.map(\.status) == [200, 503, 200])
            #expect(answers.first?.body.contains(#""n":1"#) == true)
            #expect(answers.last?.body.contains(#""n":3"#) == true)
            #expect(backend.released == backend.acquired)
        }
    }

    @Test func aMalformedRequestBehindARelayedOneWaitsForItsAnswer() async throws {
        try await GatewayTests.withGateway(GatewayConfiguration(cancelOnDisconnect: false), immediate: true) { client, backend in
            let body = String(buffer: Self.body("m", extra: #","sleep_ms":100,"n":1"#))
            let wire = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                + "NOT HTTP AT ALL\r\n\r\n"
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchange(port: port, send: wire, responses: 1)
            }
            #expect(answers.map(\.status) == [200], "the parser's error reaches Hummingbird (which closes) after the answer")
            #expect(answers.first?.body.contains(#""n":1"#) == true)
            #expect(backend.released == 1)
        }
    }

    @Test func theRelayTakesPostsToTheOpenAIEndpointsOnly() {
        func head(_ method: HTTPRequest.Method, _ path: String, _ fields: HTTPFields = [:]) -> HTTPRequest {
            HTTPRequest(method: method, scheme: "http", authority: "h", path: path, headerFields: fields)
        }
        for endpoint in Endpoint.allCases {
            #expect(Gateway.immediateEndpoint(head(.post, endpoint.path)) == endpoint)
            #expect(Gateway.immediateEndpoint(head(.post, endpoint.path + "?x=1")) == endpoint)
            #expect(Gateway.immediateEndpoint(head(.get, endpoint.path)) == nil)
            #expect(Gateway.immediateEndpoint(head(.post, endpoint.path, [.connection: "Close"])) == nil)
            #expect(Gateway.immediateEndpoint(head(.post, endpoint.path, [.expect: "100-continue"])) == nil)
        }
        #expect(Gateway.immediateEndpoint(head(.post, "/v1/chat/completions", [.connection: "keep-alive"])) == .chatCompletions)
        #expect(Gateway.immediateEndpoint(head(.post, "/v1/chat/completionsX")) == nil)
        #expect(Gateway.immediateEndpoint(head(.post, "/v1/models")) == nil)
    }

    @Test func aBackendThatAdmitsNothingAtOnceHasItsRequestsParsedOnce() async throws {
        // Only managed runtimes (as in the default config): the event loop neither collects nor
        // parses the request; the general path does, once.
        try await GatewayTests.withGateway(immediate: false) { client, backend in
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body("m"))
            #expect(response.status == .ok)
            #expect(String(buffer: response.body).hasPrefix(#"{"echo":"#))
            #expect(backend.attemptedImmediately == 0)
            #expect(backend.lastHints != nil, "admitted by the general path")
        }
    }

    @Test func readingStopsDuringARelayOnlyOnceSomethingArrivesMeanwhile() async throws {
        // A client that waits for its answer keeps its socket armed (no change of the poller's
        // interest, two `epoll_ctl` calls a request); one that sends more meanwhile is not read
        // until the answer, so what is held stays bounded by one read.
        let log = NIOLockedValueBox<[String]>([])
        try await GatewayTests.fakeUpstream().test(.live) { upstream in
            let backend = FakeBackend(upstreamPort: upstream.port!, immediate: true)
            let gateway = Gateway(configuration: GatewayConfiguration(cancelOnDisconnect: false), backend: backend,
                                  httpClient: .shared, logger: Logger(label: "test"))
            let app = Application(
                router: gateway.buildRouter(),
                server: gateway.httpServer(socketSide: { [ReadWatcher(log: log)] }),
                configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in
                let port = client.port!
                func wire(_ numbers: [Int]) -> String {
                    numbers.map { n in
                        let body = String(buffer: Self.body("m", extra: #","sleep_ms":100,"n":\#(n)"#))
                        return "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                    }.joined()
                }
                let one = wire([1]), two = wire([2, 3])
                let alone = try await NIOThreadPool.singleton.runIfActive { try RawClient.exchange(port: port, send: one, responses: 1) }
                #expect(alone.map(\.status) == [200])
                let first = log.withLockedValue { $0 }
                let request = try #require(first.firstIndex(of: "request"))
                let answer = try #require(first.firstIndex(of: "answer"))
                #expect(first[request..<answer].contains("read"), "armed while the request is relayed: \(first)")

                log.withLockedValue { $0 = [] }
                let pipelined = try await NIOThreadPool.singleton.runIfActive {
                    try RawClient.exchange(port: port, send: two, responses: 2)
                }
                #expect(pipelined.map(\.status) == [200, 200])
                #expect(pipelined.last?.body.contains(#""n":3"#) == true)
                let second = log.withLockedValue { $0 }
                let both = try #require(second.indices.filter { second[$0] == "request" }.dropFirst().first)
                let firstAnswer = try #require(second.firstIndex(of: "answer"))
                #expect(both < firstAnswer, "the second request came in the first one's read: \(second)")
                #expect(!second[both..<firstAnswer].contains("read"), "not read while a request waits held: \(second)")
            }
        }
    }
}

/// Logs what passes between the socket and the server's handlers: requests in (one per
/// `POST ` at the start of a read or after a request's body, good enough for these requests),
/// answers out (writes that begin with a status line), and the socket reads asked for.
final class ReadWatcher: ChannelDuplexHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = IOData
    let log: NIOLockedValueBox<[String]>

    init(log: NIOLockedValueBox<[String]>) { self.log = log }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: unwrapInboundIn(data))
        let requests = text.components(separatedBy: "POST /").count - 1
        log.withLockedValue { $0.append(contentsOf: Array(repeating: "request", count: requests)) }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .byteBuffer(let bytes) = unwrapOutboundIn(data), bytes.readableBytesView.starts(with: "HTTP/1.1 ".utf8) {
            log.withLockedValue { $0.append("answer") }
        }
        context.write(data, promise: promise)
    }

    func read(context: ChannelHandlerContext) {
        log.withLockedValue { $0.append("read") }
        context.read()
    }
}

/// An HTTP/1.1 upstream on NIO that answers `{"ok":N}` and counts its connections; after
/// `answersPerConnection` answers on a connection it closes it when the next request comes.
final class RawUpstream: Sendable {
    let channel: any Channel
    private let accepted: NIOLockedValueBox<Int>
    private let open: NIOLockedValueBox<Int>
    private let instants: NIOLockedValueBox<(answered: ContinuousClock.Instant?, closed: ContinuousClock.Instant?)>

    var lastAnsweredAt: ContinuousClock.Instant? { instants.withLockedValue { $0.answered } }
    var lastClosedAt: ContinuousClock.Instant? { instants.withLockedValue { $0.closed } }

    var port: Int { channel.localAddress!.port! }
    var connections: Int { accepted.withLockedValue { $0 } }
    /// Connections not yet closed.
    var openConnections: Int { open.withLockedValue { $0 } }

    private init(channel: any Channel, accepted: NIOLockedValueBox<Int>, open: NIOLockedValueBox<Int>,
                 instants: NIOLockedValueBox<(answered: ContinuousClock.Instant?, closed: ContinuousClock.Instant?)>) {
        self.channel = channel
        self.accepted = accepted
        self.open = open
        self.instants = instants
    }

    /// `stall`: every answer stops after its head and half its body, and the connection stays open.
    /// `delays`: the upstream's n-th answer (over all connections) comes `delays[n]` after its
    /// request, timed on the upstream's own event loop; answers past the list come at once.
    static func start(answersPerConnection: Int, stall: Bool = false, delays: [TimeAmount] = []) async throws -> RawUpstream {
        let requests = NIOLockedValueBox(0)
        let accepted = NIOLockedValueBox(0)
        let open = NIOLockedValueBox(0)
        let instants = NIOLockedValueBox<(answered: ContinuousClock.Instant?, closed: ContinuousClock.Instant?)>((nil, nil))
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 += 1 }
                open.withLockedValue { $0 += 1 }
                channel.closeFuture.whenComplete { _ in
                    instants.withLockedValue { $0.closed = .now }
                    open.withLockedValue { $0 -= 1 }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(limit: answersPerConnection, stall: stall, delay: {
                        let n = requests.withLockedValue { count in
                            defer { count += 1 }
                            return count
                        }
                        return n < delays.count ? delays[n] : nil
                    }) {
                        instants.withLockedValue { $0.answered = .now }
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return RawUpstream(channel: channel, accepted: accepted, open: open, instants: instants)
    }

    func stop() { try? channel.close().wait() }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let limit: Int
        let stall: Bool
        /// How long the next answer waits (nil: none).
        let delay: @Sendable () -> TimeAmount?
        let onAnswer: @Sendable () -> Void
        var answered = 0
        init(limit: Int, stall: Bool = false, delay: @escaping @Sendable () -> TimeAmount? = { nil },
             onAnswer: @escaping @Sendable () -> Void = {}) {
            self.limit = limit
            self.stall = stall
            self.delay = delay
            self.onAnswer = onAnswer
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data) else { return }
            guard answered < limit else {
                context.close(promise: nil)
                return
            }
            answered += 1
            if let wait = delay() {
                let n = answered
                context.eventLoop.assumeIsolated().scheduleTask(in: wait) { self.answer(n, context: context) }
                return
            }
            answer(answered, context: context)
        }

        private func answer(_ n: Int, context: ChannelHandlerContext) {
            let body = ByteBuffer(string: #"{"ok":\#(n)}"#)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            if stall {
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(body.getSlice(at: 0, length: body.readableBytes / 2)!))),
                                      promise: nil)
                onAnswer()   // (the instant its answer stopped)
                return
            }
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            onAnswer()
        }
    }
}

/// Writes bytes on one TCP connection and reads `responses` HTTP/1.1 answers with Content-Length.
enum RawClient {
    struct Answer: Sendable {
        var status: Int
        var body: String
        /// The status line and header lines.
        var head: String = ""
        /// A header's value (the first of that name, compared without case).
        func header(_ name: String) -> String? {
            head.split(separator: "\r\n").dropFirst().lazy.compactMap { line -> String? in
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == name.lowercased() else { return nil }
                return parts[1].trimmingCharacters(in: .whitespaces)
            }.first
        }
    }

    /// Writes all of `text` to the blocking socket `fd`.
    static func sendAll(_ fd: Int32, _ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw POSIXError(.EPIPE) }
            sent += n
        }
    }

    /// Sends `send` and reads until the server closes the connection (or 10 s pass): the whole
    /// of what came back.
    static func exchangeUntilClosed(port: Int, send: String) throws -> String {
        let fd = try connect(port: port)
        defer { close(fd) }
        try sendAll(fd, send)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return String(decoding: received, as: UTF8.self) }
            guard n > 0 else { throw POSIXError(.ETIMEDOUT) }
            received += buffer[0..<n]
        }
    }

    /// `halfClose`: shut the sending side after the request bytes (as clients that end their
    /// input with the request do).
    /// A blocking TCP connection to 127.0.0.1:`port` whose reads give up after 10 s; the caller
    /// closes it. `receiveBuffer`: a fixed socket receive buffer (no autotuning), set before
    /// connecting so the window is small from the start.
    static func connect(port: Int, receiveBuffer: Int? = nil) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        if var size = receiveBuffer.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
        return fd
    }

    /// `receiveBuffer` (see `connect`) and `readAfter`: a client that reads its answers late, through
    /// a small window, so that the server's socket cannot take a large answer at once.
    static func exchange(port: Int, send: String, responses: Int, halfClose: Bool = false,
                         receiveBuffer: Int? = nil, readAfter: Duration? = nil) throws -> [Answer] {
        let fd = try connect(port: port, receiveBuffer: receiveBuffer)
        defer { close(fd) }
        try sendAll(fd, send)
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
        if let readAfter {
            usleep(UInt32(readAfter.components.seconds * 1_000_000 + readAfter.components.attoseconds / 1_000_000_000_000))
        }
        return try read(fd, responses: responses)
    }

    /// Reads `responses` answers (framed by Content-Length) from `fd`.
    static func read(_ fd: Int32, responses: Int) throws -> [Answer] {
        var received: [UInt8] = []
        var answers: [Answer] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while answers.count < responses {
            if let (answer, used) = parse(received) {
                answers.append(answer)
                received.removeFirst(used)
                continue
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw POSIXError(.ETIMEDOUT) }
            received += buffer[0..<n]
        }
        return answers
    }

    private static func parse(_ bytes: [UInt8]) -> (Answer, Int)? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let headEnd = text.range(of: "\r\n\r\n") else { return nil }
        let head = text[..<headEnd.lowerBound]
        let lines = head.split(separator: "\r\n")
        guard let status = lines.first.flatMap({ Int($0.split(separator: " ")[1]) }) else { return nil }
        let length = lines.dropFirst().compactMap { line -> Int? in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
            return Int(parts[1].trimmingCharacters(in: .whitespaces))
        }.first ?? 0
        let headBytes = text[..<headEnd.upperBound].utf8.count
        guard bytes.count >= headBytes + length else { return nil }
        let body = String(decoding: bytes[headBytes..<(headBytes + length)], as: UTF8.self)
        return (Answer(status: status, body: body, head: String(head)), headBytes + length)
    }
}
