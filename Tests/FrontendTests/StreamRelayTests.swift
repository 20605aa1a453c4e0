import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
@testable import Frontend

#if canImport(Glibc)
import Glibc
#endif

/// Streams (`"stream": true`, SSE answers) relayed on the event loop (`immediate: true`) and on
/// the general path: a client that leaves, a client that reads slowly, an upstream that stops
/// mid-stream, a stop, an upstream that answers a stream request with an error.
struct StreamRelayTests {
    static func request(_ model: String = "raw", path: String = "/v1/chat/completions", stream: Bool = true) -> String {
        let body = #"{"model":"\#(model)","stream":\#(stream),"messages":[{"role":"user","content":"hi"}]}"#
        return "POST \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    static func waitUntil(_ limit: Duration = .seconds(5), _ done: () -> Bool) async throws {
        let started = ContinuousClock.now
        while !done() && ContinuousClock.now - started < limit { try await Task.sleep(for: .milliseconds(10)) }
    }

    @Test(arguments: [false, true])
    func aClientThatLeavesMidStreamEndsTheUpstreamRequest(immediate: Bool) async throws {
        let upstream = try await StreamingUpstream.start(.events(count: nil, every: .milliseconds(10)))
        defer { upstream.stop() }
        try await GatewayTests.withGateway(immediate: immediate, rawPort: upstream.port) { client, backend in
            let port = client.port!
            let head = try await NIOThreadPool.singleton.runIfActive {
                let connection = try StreamClient(port: port, send: Self.request())
                defer { connection.close() }
                let head = try connection.readHead()
                _ = try connection.readBody(until: "data: {\"i\":2}")
                return head
            }
            #expect(head.hasPrefix("HTTP/1.1 200"))
            #expect(head.lowercased().contains("content-type: text/event-stream"))
            #expect(head.lowercased().contains("transfer-encoding: chunked"))
            #expect(head.lowercased().contains("x-accel-buffering: no"), "a proxy in front passes events on as they come")
            try await Self.waitUntil { upstream.openConnections == 0 && !backend.outcomes("raw").isEmpty }
            #expect(upstream.openConnections == 0, "the upstream's connection closes when the client leaves")
            #expect(backend.outcomes("raw") == [.completed], "the lease ends once, as served")
            #expect(upstream.connectionHeaders == ["close"], "a stream's upstream connection is not kept")
        }
    }

    // One case at a time: each moves 96 MiB through a debug build (about 40 s each under the
    // full suite on 2 cores).
    @Test(.serialized, arguments: [false, true])
    func aSlowClientHoldsTheUpstreamBackAndLosesNothing(immediate: Bool) async throws {
        // 96 MiB of events as fast as the upstream may send them; the client reads nothing for
        // a while. A relay that read on regardless would hold all of it in memory meanwhile (what
        // sockets hold between them, autotuned, was 7–32 MiB here). The pause is longer than
        // `upstream_timeout`: a stream held back by its client has not stalled.
        let total = 1536 * StreamingUpstream.floodEvent.count
        let upstream = try await StreamingUpstream.start(.flood(events: 1536))
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(upstreamTimeout: .seconds(2)), immediate: immediate, rawPort: upstream.port
        ) { client, backend in
            let port = client.port!
            let connection = try await NIOThreadPool.singleton.runIfActive {
                try StreamClient(port: port, send: Self.request(), receiveBuffer: 64 << 10)
            }
            defer { connection.close() }
            try await Task.sleep(for: .seconds(3))
            let sentWhileStalled = upstream.bytesWritten
            #expect(sentWhileStalled < total / 2, "the upstream sent \(sentWhileStalled) of \(total) bytes to a client that read none")
            let received = try await NIOThreadPool.singleton.runIfActive {
                _ = try connection.readHead()
                return try connection.readChunkedBody()
            }
            #expect(received == total, "every byte arrives once the client reads")
            try await Self.waitUntil { !backend.outcomes("raw").isEmpty }
            #expect(backend.outcomes("raw") == [.completed])
        }
    }

    @Test func aStreamThatStopsComingEndsWithAnErrorEventAfterTheUpstreamTimeout() async throws {
        let upstream = try await StreamingUpstream.start(.stallAfterOneEvent)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(
            GatewayConfiguration(upstreamTimeout: .milliseconds(500)), immediate: true, rawPort: upstream.port
        ) { client, backend in
            let port = client.port!
            let started = ContinuousClock.now
            let body = try await NIOThreadPool.singleton.runIfActive {
                let connection = try StreamClient(port: port, send: Self.request())
                defer { connection.close() }
                _ = try connection.readHead()
                return try connection.readBody(until: "0\r\n\r\n")
            }
            #expect(ContinuousClock.now - started >= .milliseconds(450))
            #expect(body.contains("data: {\"i\":0}\n\n"))
            #expect(body.contains("\"code\":\"runtime_failed\""), "got \(body)")
            #expect(body.contains("the answer stopped coming for gateway.upstream_timeout"))
            try await Self.waitUntil { upstream.openConnections == 0 }
            #expect(upstream.openConnections == 0)
            #expect(backend.outcomes("raw") == [.completed])
        }
    }

    @Test func aStopCutsAStreamWithAnEventThatSaysSo() async throws {
        let upstream = try await StreamingUpstream.start(.events(count: nil, every: .milliseconds(10)))
        defer { upstream.stop() }
        let backend = FakeBackend(upstreamPort: 1, immediate: true, rawPort: upstream.port)
        let gateway = Gateway(configuration: GatewayConfiguration(), backend: backend, httpClient: .shared, logger: Logger(label: "test"))
        try await GatewayTests.app(gateway).test(.live) { client in
            let port = client.port!
            let body = try await NIOThreadPool.singleton.runIfActive {
                let connection = try StreamClient(port: port, send: Self.request())
                defer { connection.close() }
                _ = try connection.readHead()
                _ = try connection.readBody(until: "data: {\"i\":1}")
                gateway.cutForStop()
                return try connection.readBody(until: "0\r\n\r\n")
            }
            #expect(body.contains("\"code\":\"shutting_down\""), "got \(body)")
            try await Self.waitUntil { upstream.openConnections == 0 }
            #expect(upstream.openConnections == 0)
            #expect(backend.outcomes("raw") == [.completed])
        }
    }

    /// The head of a stream goes to the client with its first event: an upstream that fails
    /// before that event (a runtime dying while it computes the prompt) has sent the client
    /// nothing, so the request is retried on another replica, or answered with a clean 502.
    @Test(arguments: [false, true])
    func aStreamThatFailsBeforeItsFirstEventIsRetriedOrAnswered502(immediate: Bool) async throws {
        let upstream = try await StreamingUpstream.start(.closeAfterHead)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(immediate: immediate, rawPort: upstream.port) { client, backend in
            let port = client.port!
            let (retried, alone) = try await NIOThreadPool.singleton.runIfActive {
                let retried = try StreamClient(port: port, send: Self.request("raw-then-m"))
                defer { retried.close() }
                let head = try retried.readHead()
                let body = try retried.readBody(until: "data: [DONE]")
                let alone = try RawClient.exchange(port: port, send: Self.request("raw"), responses: 1)
                return (head + body, alone)
            }
            #expect(retried.hasPrefix("HTTP/1.1 200") && retried.contains("data: {\"i\":2}"), "got \(retried)")
            #expect(!retried.contains("runtime_failed"))
            #expect(backend.outcomes("raw-then-m") == [.upstreamFailed, .completed])
            #expect(alone.map(\.status) == [502])
            #expect(alone.first?.body.contains("\"code\":\"runtime_failed\"") == true, "\(alone)")
            #expect(backend.outcomes("raw") == [.upstreamFailed])
        }
    }

    @Test(arguments: [false, true])
    func anErrorAnswerToAStreamRequestIsRelayedWhole(immediate: Bool) async throws {
        let upstream = try await StreamingUpstream.start(.error)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(immediate: immediate, rawPort: upstream.port) { client, backend in
            let port = client.port!
            let answers = try await NIOThreadPool.singleton.runIfActive {
                try RawClient.exchange(port: port, send: Self.request(), responses: 1)
            }
            #expect(answers.map(\.status) == [400])
            #expect(answers.first?.body == StreamingUpstream.errorBody)
            #expect(backend.outcomes("raw") == [.completed])
        }
    }

    /// A replica that is up and answers with a server error has sent the client nothing: another
    /// replica gets the request, and where one serves it, the errors count against those that
    /// erred (toward their ejection; two failing replicas do not hide a third that serves).
    /// Where every one errs, the error is the request's doing (an image sent to a model without
    /// vision) and counts against none; with no other replica, the client gets the error as it
    /// came, counted against nobody.
    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func aServerErrorIsRetriedElsewhereAndCountsOnlyWhereAnotherServes(immediate: Bool, stream: Bool) async throws {
        let upstream = try await StreamingUpstream.start(.serverError)
        defer { upstream.stop() }
        try await GatewayTests.withGateway(immediate: immediate, rawPort: upstream.port) { client, backend in
            let port = client.port!
            let (retried, everywhere, alone, third) = try await NIOThreadPool.singleton.runIfActive {
                (try RawClient.exchange(port: port, send: Self.request("raw-then-m", stream: stream), responses: 1),
                 try RawClient.exchange(port: port, send: Self.request("raw-then-raw", stream: stream), responses: 1),
                 try RawClient.exchange(port: port, send: Self.request("raw", stream: stream), responses: 1),
                 try RawClient.exchange(port: port, send: Self.request("two-broken", stream: stream), responses: 1))
            }
            #expect(third.map(\.status) == [200], "\(third)")
            try await Self.waitUntil { backend.outcomes("two-broken").count == 3 }
            #expect(backend.outcomes("two-broken") == [.abandoned, .abandoned, .servedAfterServerErrors(on: ["raw", "raw2"])])
            #expect(retried.map(\.status) == [200], "\(retried)")
            try await Self.waitUntil { backend.outcomes("raw-then-m").count == 2 }   // (a stream's lease ends after its last byte)
            #expect(backend.outcomes("raw-then-m") == [.abandoned, .servedAfterServerErrors(on: ["raw"])])
            #expect(everywhere.map(\.status) == [500] && everywhere.first?.body == StreamingUpstream.serverErrorBody)
            #expect(backend.outcomes("raw-then-raw") == [.abandoned, .serverErrorUnretried])
            #expect(alone.map(\.status) == [500])
            #expect(alone.first?.body == StreamingUpstream.serverErrorBody)
            #expect(backend.outcomes("raw") == [.serverErrorUnretried])
        }
    }
}

/// An HTTP/1.1 upstream on NIO that answers every request the same way (`Mode`), and counts
/// its open connections, the body bytes it has handed to the kernel, and each request's
/// `Connection` header.
final class StreamingUpstream: Sendable {
    enum Mode: Sendable {
        /// SSE events `data: {"i":N}`, one every `every`; after `count` (never, if nil) `[DONE]` and the end.
        case events(count: Int?, every: TimeAmount)
        /// `events` of `floodEvent`, each written as soon as the connection is writable.
        case flood(events: Int)
        /// One SSE event, then nothing.
        case stallAfterOneEvent
        /// A 400 with a JSON error body.
        case error
        /// A 500 with a JSON error body (a replica that is up and broken).
        case serverError
        /// The stream's head, then the connection closes (a runtime that dies computing the prompt).
        case closeAfterHead
    }

    struct Counters {
        var open = 0
        var written = 0
        var connectionHeaders: [String] = []
    }

    /// 64 KiB: `data: ` and `x`s, then the blank line.
    static let floodEvent = "data: " + String(repeating: "x", count: 65536 - 8) + "\n\n"
    static let errorBody = #"{"error":{"message":"bad request","type":"invalid_request_error"}}"#
    static let serverErrorBody = #"{"error":{"code":500,"message":"boom","type":"server_error"}}"#

    let channel: any Channel
    private let counters: NIOLockedValueBox<Counters>

    var port: Int { channel.localAddress!.port! }
    var openConnections: Int { counters.withLockedValue { $0.open } }
    var bytesWritten: Int { counters.withLockedValue { $0.written } }
    var connectionHeaders: [String] { counters.withLockedValue { $0.connectionHeaders } }

    private init(channel: any Channel, counters: NIOLockedValueBox<Counters>) {
        self.channel = channel
        self.counters = counters
    }

    static func start(_ mode: Mode) async throws -> StreamingUpstream {
        let counters = NIOLockedValueBox(Counters())
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                counters.withLockedValue { $0.open += 1 }
                channel.closeFuture.whenComplete { _ in counters.withLockedValue { $0.open -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(mode: mode, counters: counters))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return StreamingUpstream(channel: channel, counters: counters)
    }

    func stop() { try? channel.close().wait() }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let mode: Mode
        let counters: NIOLockedValueBox<Counters>
        var sent = 0
        var floodLeft = 0
        var ended = false
        let event = ByteBuffer(string: StreamingUpstream.floodEvent)

        init(mode: Mode, counters: NIOLockedValueBox<Counters>) {
            self.mode = mode
            self.counters = counters
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                counters.withLockedValue { $0.connectionHeaders.append(head.headers.first(name: "connection") ?? "") }
            case .body:
                break
            case .end:
                answer(context: context)
            }
        }

        private func answer(context: ChannelHandlerContext) {
            if case .error = mode { answerError(.badRequest, StreamingUpstream.errorBody, context: context); return }
            if case .serverError = mode { answerError(.internalServerError, StreamingUpstream.serverErrorBody, context: context); return }
            let headers: HTTPHeaders = ["Content-Type": "text/event-stream", "Connection": "close"]
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            switch mode {
            case .events(let count, let every):
                tick(context: context, count: count, every: every)
            case .flood(let events):
                floodLeft = events
                pump(context: context)
            case .stallAfterOneEvent:
                write("data: {\"i\":0}\n\n", context: context)
            case .closeAfterHead:
                context.close(promise: nil)
            case .error, .serverError:
                break
            }
        }

        private func answerError(_ status: HTTPResponseStatus, _ text: String, context: ChannelHandlerContext) {
            let body = ByteBuffer(string: text)
            let headers: HTTPHeaders = ["Content-Type": "application/json", "Content-Length": "\(body.readableBytes)"]
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        private func write(_ text: String, context: ChannelHandlerContext) {
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
        }

        private func tick(context: ChannelHandlerContext, count: Int?, every: TimeAmount) {
            guard context.channel.isActive else { return }
            if let count, sent == count {
                write("data: [DONE]\n\n", context: context)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                return
            }
            write("data: {\"i\":\(sent)}\n\n", context: context)
            sent += 1
            context.eventLoop.assumeIsolated().scheduleTask(in: every) { self.tick(context: context, count: count, every: every) }
        }

        private func pump(context: ChannelHandlerContext) {
            while floodLeft > 0 && context.channel.isWritable {
                floodLeft -= 1
                let size = event.readableBytes
                context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(event)))).assumeIsolated().whenSuccess {
                    self.counters.withLockedValue { $0.written += size }
                }
            }
            if floodLeft == 0 && !ended {
                ended = true
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if case .flood = mode, context.channel.isWritable { pump(context: context) }
            context.fireChannelWritabilityChanged()
        }
    }
}

/// One blocking client connection that sends a request and reads a streamed (chunked) answer.
final class StreamClient: @unchecked Sendable {
    let fd: Int32
    /// Reads give up past this (with `ETIMEDOUT`), so an answer that never ends fails the test.
    let deadline = ContinuousClock.now + .seconds(180)
    private var pending: [UInt8] = []
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)

    /// `receiveBuffer`: a fixed socket receive buffer (no autotuning), so what the client does
    /// not read is held back by the server, not by the client's kernel.
    init(port: Int, send: String, receiveBuffer: Int? = nil) throws {
        fd = try RawClient.connect(port: port, receiveBuffer: receiveBuffer)
        do {
            try self.send(send)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Sends more on the same connection (a next request).
    func send(_ text: String) throws {
        try RawClient.sendAll(fd, text)
    }

    func close() { Glibc.close(fd) }

    private func receive() throws {
        guard ContinuousClock.now < deadline, pending.count < 64 << 20 else { throw POSIXError(.ETIMEDOUT) }
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw POSIXError(.ETIMEDOUT) }
        pending += buffer[0..<n]
    }

    private static func find(_ needle: [UInt8], in bytes: [UInt8]) -> Int? {
        guard bytes.count >= needle.count else { return nil }
        for start in 0...(bytes.count - needle.count) where bytes[start] == needle[0] {
            if Array(bytes[start..<(start + needle.count)]) == needle { return start }
        }
        return nil
    }

    /// The answer's head, up to its blank line.
    func readHead() throws -> String {
        let blank = Array("\r\n\r\n".utf8)
        while true {
            if let end = Self.find(blank, in: pending) {
                let head = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 4)
                return head
            }
            try receive()
        }
    }

    /// A body of `length` bytes (an answer with `Content-Length`).
    func readBody(length: Int) throws -> String {
        while pending.count < length { try receive() }
        defer { pending.removeFirst(length) }
        return String(decoding: pending[..<length], as: UTF8.self)
    }

    /// What comes (chunk framing included) until `marker` has come.
    func readBody(until marker: String) throws -> String {
        let needle = Array(marker.utf8)
        while Self.find(needle, in: pending) == nil { try receive() }
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Reads a chunked body to its end; the count of its bytes (framing excluded).
    func readChunkedBody() throws -> Int {
        var total = 0
        let crlf = Array("\r\n".utf8)
        while true {
            var line: Int?
            while true {
                line = Self.find(crlf, in: Array(pending.prefix(32)))
                if line != nil { break }
                try receive()
            }
            let size = Int(String(decoding: pending[..<line!], as: UTF8.self), radix: 16) ?? -1
            guard size >= 0 else { throw POSIXError(.EBADMSG) }
            pending.removeFirst(line! + 2)
            var left = size + 2   // the data and its CRLF
            while left > 0 {
                if pending.isEmpty { try receive() }
                let take = min(left, pending.count)
                pending.removeFirst(take)
                left -= take
            }
            if size == 0 { return total }
            total += size
        }
    }
}
