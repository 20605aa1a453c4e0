import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Testing
@testable import Frontend

/// `RequestFrontHandler` against NIO's codec: every request, whole or cut into pieces, reaches
/// the handlers after the codec exactly as the codec alone would have made it; plain ones are
/// parsed by the front, the others go through the codec from then on.
struct RequestFrontTests {
    /// Records what reaches the handlers after the codec; answers each request at its end
    /// unless told to wait.
    final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPRequestPart
        typealias OutboundOut = HTTPResponsePart

        struct Request: Equatable {
            var head: HTTPRequest
            var body = ""
            var ended = false
        }
        var requests: [Request] = []
        var errors: [String] = []
        var answerAtOnce = true
        var context: ChannelHandlerContext?
        var readsCompleted = 0

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): requests.append(Request(head: head))
            case .body(let body): requests[requests.count - 1].body += String(buffer: body)
            case .end:
                requests[requests.count - 1].ended = true
                if answerAtOnce { answer() }
            }
        }

        func answer() {
            guard let context else { return }
            context.write(wrapOutboundOut(.head(HTTPResponse(status: .ok, headerFields: [.contentLength: "0"]))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            errors.append("\(error)")
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            readsCompleted += 1
        }
    }

    static func pipeline(front: Bool) throws -> (EmbeddedChannel, Collector, RequestFrontHandler?) {
        let channel = EmbeddedChannel()
        let frontHandler = front ? RequestFrontHandler(bodyLimit: 1 << 20) : nil
        let sync = channel.pipeline.syncOperations
        if let frontHandler { try sync.addHandler(frontHandler) }
        try sync.configureHTTPServerPipeline(
            withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false,
            withEncoderConfiguration: .init(), withDecoderLimitConfiguration: .init())
        try sync.addHandler(HTTP1ToHTTPServerCodec(secure: false))
        try sync.addHandler(ClientIdleHandler(timeout: .seconds(60)))
        let collector = Collector()
        try sync.addHandler(collector)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, collector, frontHandler)
    }

    /// Feeds `wire` in pieces of `size` bytes; what the handlers got, and whether the front
    /// passes the connection's bytes on to the codec by the end.
    static func run(_ wire: String, front: Bool, size: Int) throws -> ([Collector.Request], [String], Bool?) {
        let (channel, collector, frontHandler) = try pipeline(front: front)
        let bytes = Array(wire.utf8)
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + size)
            _ = try? channel.writeInbound(ByteBuffer(bytes: bytes[start..<end]))
            start = end
        }
        _ = try? channel.finish()
        return (collector.requests, collector.errors, frontHandler?.passingThrough)
    }

    static let post = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\nContent-Type: application/json\r\n"
        + "Content-Length: 11\r\n\r\n{\"a\":\"bcd\"}"
    /// (request bytes, taken by the front)
    static let cases: [(String, Bool)] = [
        (post, true),
        ("GET /v1/models HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer x\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n", true),
        ("GET /metrics?x=1 HTTP/1.1\r\nhost: h\r\nHost: second\r\nX-Space: \t v  w \t\r\nX-Empty:\r\n\r\n", true),
        ("DELETE /v1/blocks/k HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
        ("DELETE /v1/blocks/k HTTP/1.1\r\nConnection: Close\r\n\r\nGET / HTTP/1.1\r\n\r\n", false),
        ("PUT /v1/blocks/k HTTP/1.1\r\nContent-Length: 3\r\nCookie: a=1; b=2\r\n\r\nabc", true),
        ("HEAD /health HTTP/1.1\r\nHost: h\r\n\r\n", false),
        ("POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
        ("POST /v1/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", false),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET http://h/v1/models HTTP/1.1\r\nHost: h\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n", false),
        ("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", false),
        ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\na", false),
        ("OPTIONS * HTTP/1.1\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nX-Bell: a\u{07}b\r\n\r\n", false),
    ]

    @Test(arguments: cases.indices)
    func eachRequestReachesTheHandlersAsTheCodecWouldMakeIt(index: Int) throws {
        let (wire, taken) = Self.cases[index]
        let (expected, expectedErrors, _) = try Self.run(wire, front: false, size: .max)
        for size in [1, 5, 64, .max] {
            let (got, errors, passing) = try Self.run(wire, front: true, size: size)
            #expect(got == expected, "pieces of \(size)")
            // (The codec reports each read after an error once more; the front hands it a
            // request's bytes at once, so only the first error is the same.)
            #expect(errors.first == expectedErrors.first, "pieces of \(size)")
            #expect(passing == !taken, "pieces of \(size)")
        }
    }

    @Test func aConnectionMixingPlainAndOtherRequestsGetsThemAllInOrder() throws {
        let wire = Self.cases.filter { $0.1 }.map(\.0).joined() + Self.cases[6].0 + Self.post
        let (expected, _, _) = try Self.run(wire, front: false, size: .max)
        #expect(expected.count == 7)   // (the plain ones, the chunked one, the POST)
        for size in [1, 13, .max] {
            let (got, errors, passing) = try Self.run(wire, front: true, size: size)
            #expect(got == expected, "pieces of \(size)")
            #expect(errors.isEmpty)
            #expect(passing == true)
        }
    }

    @Test func requestsForTheCodecWaitUntilThoseTakenHereAreAnswered() throws {
        // NIO's encoder pairs an answer with the method its decoder recorded: a HEAD decoded
        // while a GET taken by the front is unanswered would take the GET's answer's body.
        let (channel, collector, front) = try Self.pipeline(front: true)
        collector.answerAtOnce = false
        try channel.writeInbound(ByteBuffer(string: "GET /v1/models HTTP/1.1\r\n\r\nHEAD /health HTTP/1.1\r\n\r\n"))
        #expect(collector.requests.map(\.head.method) == [.get])
        #expect(front?.passingThrough == true)
        #expect(front?.isHolding == true)
        try channel.writeInbound(ByteBuffer(string: "GET /later HTTP/1.1\r\n\r\n"))
        #expect(collector.requests.count == 1)
        collector.answer()
        #expect(collector.requests.map(\.head.method) == [.get, .head, .get])
        #expect(front?.isHolding == false)
        _ = try? channel.finish()
    }

    /// A read that passes nothing on (part of a head, kept by the front) completes nothing
    /// after it; a read that passes a request on completes it, and once the codec takes the
    /// connection every read-complete goes through.
    @Test func aReadCompletesPastTheFrontOnlyWhenItPassedSomethingOn() throws {
        let (channel, collector, front) = try Self.pipeline(front: true)
        try channel.writeInbound(ByteBuffer(string: "GET /v1/models HTTP/1.1\r\n"))
        #expect(collector.requests.isEmpty && collector.readsCompleted == 0)
        try channel.writeInbound(ByteBuffer(string: "Host: h\r\n\r\n"))
        #expect(collector.requests.count == 1 && collector.readsCompleted == 1)
        try channel.writeInbound(ByteBuffer(string: "HEAD /health HTTP/1.1\r\n"))
        #expect(collector.readsCompleted == 1)
        try channel.writeInbound(ByteBuffer(string: "\r\n"))
        #expect(collector.requests.map(\.head.method) == [.get, .head] && collector.readsCompleted == 2)
        #expect(front?.passingThrough == true)
        try channel.writeInbound(ByteBuffer(string: "GET /later HTTP/1.1\r\n"))
        #expect(collector.readsCompleted == 3, "the codec has the connection: every read-complete goes on")
        _ = try? channel.finish()
    }

    @Test func aRequestCutShortByTheEndOfInputGoesToTheCodec() throws {
        let wire = String(Self.post.dropLast(3))
        let (expected, expectedErrors, _) = try Self.run(wire, front: false, size: .max)
        let (channel, collector, front) = try Self.pipeline(front: true)
        try channel.writeInbound(ByteBuffer(string: wire))
        #expect(collector.requests.isEmpty && front?.passingThrough == false)
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(front?.passingThrough == true)
        #expect(collector.requests == expected)
        _ = try? channel.finish()
        #expect(collector.errors.first == expectedErrors.first)
    }

    @Test func aHeadLongerThanTheFrontTakesGoesToTheCodecWhichKeepsItsOwnLimits() throws {
        let (channel, collector, front) = try Self.pipeline(front: true)
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))
        let filler = "X-Filler: " + String(repeating: "a", count: 1000) + "\r\n"
        for _ in 0..<(RequestFrontHandler.maxHeadBytes / filler.utf8.count) {
            try channel.writeInbound(ByteBuffer(string: filler))
        }
        #expect(front?.passingThrough == false, "still waiting for the head's end")
        try channel.writeInbound(ByteBuffer(string: filler))
        #expect(front?.passingThrough == true)
        try channel.writeInbound(ByteBuffer(string: "\r\n"))
        #expect(collector.requests.count == 1 && collector.requests[0].head.headerFields[values: HTTPField.Name("X-Filler")!].count == 17)
        _ = try? channel.finish()
    }
}
