import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Keep-alive HTTP/1.1 connections to upstreams, one pool per event loop: a request relayed on
/// a client connection's loop is sent on a connection of the same loop, so it never changes
/// threads (see `EventLoopRelayHandler`).
final class UpstreamPools: Sendable {
    private let pools = NIOLockedValueBox<[ObjectIdentifier: UpstreamPool]>([:])
    /// Idle connections kept per upstream and loop; more are closed when they come back.
    let maxIdlePerUpstream: Int
    let idleTimeout: TimeAmount

    init(maxIdlePerUpstream: Int = 64, idleTimeout: TimeAmount = .seconds(60)) {
        self.maxIdlePerUpstream = maxIdlePerUpstream
        self.idleTimeout = idleTimeout
    }

    func pool(for eventLoop: any EventLoop) -> UpstreamPool {
        pools.withLockedValue { pools in
            if let pool = pools[ObjectIdentifier(eventLoop)] { return pool }
            let pool = UpstreamPool(eventLoop: eventLoop, maxIdlePerUpstream: maxIdlePerUpstream, idleTimeout: idleTimeout)
            pools[ObjectIdentifier(eventLoop)] = pool
            return pool
        }
    }

    /// Closes every upstream connection in use, on its loop: the daemon's drain time is over, and
    /// the exchanges on them end with the error that says Strata is stopping.
    func cutAll() {
        for pool in pools.withLockedValue({ Array($0.values) }) {
            pool.eventLoop.execute { pool.closeInUse() }
        }
    }
}

/// Where an upstream request goes: `http://host:port` and the path on it.
struct UpstreamTarget: Hashable, Sendable {
    let host: String
    let port: Int
    let path: String
    /// The `Host` header's value, made once (targets are parsed once per URL and pool).
    let hostHeader: String

    /// Parses `http://host[:port]/path`; nil for anything else (https goes the general way).
    init?(url: String) {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst(7)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if authority.hasPrefix("[") {   // [::1]:8080
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.isEmpty {
                port = 80
            } else {
                guard after.hasPrefix(":"), let value = Int(after.dropFirst()) else { return nil }
                port = value
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let value = Int(authority[authority.index(after: colon)...]) else { return nil }
            port = value
        } else {
            host = String(authority)
            port = 80
        }
        guard !host.isEmpty, (1...65535).contains(port), !host.utf8.contains(UInt8(ascii: "@")) else { return nil }
        let name = host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]" : host
        hostHeader = port == 80 ? name : "\(name):\(port)"
    }
}

/// The pool of one event loop. Used only on that loop (not locked).
final class UpstreamPool: @unchecked Sendable {
    let eventLoop: any EventLoop
    private let maxIdlePerUpstream: Int
    private let idleTimeout: TimeAmount
    /// Idle connections per upstream, oldest first (reuse takes the newest).
    private var idle: [Authority: [UpstreamConnection]] = [:]
    /// Closes connections idle past `idleTimeout`; scheduled only while some are idle.
    private var sweep: Scheduled<Void>?
    /// Upstream URLs parsed before (a lease's URL is one of a few per model).
    private var targets: [String: UpstreamTarget] = [:]
    static let maxCachedTargets = 256
    /// Connections handed out and not yet back or closed.
    private var inUse: [ObjectIdentifier: UpstreamConnection] = [:]

    init(eventLoop: any EventLoop, maxIdlePerUpstream: Int, idleTimeout: TimeAmount) {
        self.eventLoop = eventLoop
        self.maxIdlePerUpstream = maxIdlePerUpstream
        self.idleTimeout = idleTimeout
    }

    private var dateSecond = -1
    private var dateText = ""

    /// Now as an HTTP `Date` value (IMF-fixdate), formatted again only when the second changes.
    var httpDate: String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if now.tv_sec != dateSecond {
            dateSecond = now.tv_sec
            dateText = Self.imfFixdate(now.tv_sec)
        }
        return dateText
    }

    static func imfFixdate(_ seconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }

    /// Where `url` points, if the event loop can send to it (plain `http://`).
    func target(url: String) -> UpstreamTarget? {
        if let target = targets[url] { return target }
        guard let target = UpstreamTarget(url: url) else { return nil }
        if targets.count >= Self.maxCachedTargets { targets.removeAll(keepingCapacity: true) }
        targets[url] = target
        return target
    }

    /// An idle connection to `target` (the most recently used), now; nil if there is none.
    func idleConnection(to target: UpstreamTarget) -> UpstreamConnection? {
        eventLoop.preconditionInEventLoop()
        let key = Authority(host: target.host, port: target.port)
        // (Taken out and put back rather than popped in place: `idle[key]?.popLast()` goes
        // through the dictionary's modify accessor, whose coroutine frame is allocated on the
        // heap, three allocations per request.)
        while var list = idle.removeValue(forKey: key), let connection = list.popLast() {
            if !list.isEmpty { idle[key] = list }
            if connection.isUsable {
                inUse[ObjectIdentifier(connection)] = connection
                return connection
            }
            connection.channel.close(promise: nil)   // e.g. the upstream sent bytes unasked
        }
        return nil
    }

    /// A new connection to `target`.
    func newConnection(to target: UpstreamTarget, connectTimeout: TimeAmount) -> EventLoopFuture<UpstreamConnection> {
        eventLoop.preconditionInEventLoop()
        let key = Authority(host: target.host, port: target.port)
        return ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UpstreamResponseHandler())
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: UpstreamResponseHandler.self)
                let connection = UpstreamConnection(channel: channel, handler: handler, key: key, reused: false)
                let id = ObjectIdentifier(connection)
                self.inUse[id] = connection
                channel.closeFuture.assumeIsolated().whenComplete { _ in self.inUse[id] = nil }
                return connection
            }
    }

    /// Takes back a connection whose exchange ended cleanly and may be kept alive.
    func release(_ connection: UpstreamConnection) {
        eventLoop.preconditionInEventLoop()
        inUse[ObjectIdentifier(connection)] = nil
        guard connection.isUsable else {
            connection.channel.close(promise: nil)
            return
        }
        // (Taken out and put back, as in `idleConnection`.)
        var list = idle.removeValue(forKey: connection.key) ?? []
        guard list.count < maxIdlePerUpstream else {
            if !list.isEmpty { idle[connection.key] = list }
            connection.channel.close(promise: nil)
            return
        }
        connection.reused = true
        connection.idleSince = .now()
        list.append(connection)
        idle[connection.key] = list
        scheduleSweep()
    }

    /// Closes the connections in use (their exchanges fail as their upstream closing would).
    func closeInUse() {
        eventLoop.preconditionInEventLoop()
        for connection in inUse.values { connection.channel.close(promise: nil) }
    }

    private func scheduleSweep() {
        guard sweep == nil else { return }
        let interval = TimeAmount.nanoseconds(max(10_000_000, idleTimeout.nanoseconds / 2))
        sweep = eventLoop.assumeIsolated().scheduleTask(in: interval) {
            self.sweep = nil
            self.closeIdle(olderThan: self.idleTimeout)
            if !self.idle.isEmpty { self.scheduleSweep() }
        }
    }

    /// Closes the connections idle for `age` or longer.
    func closeIdle(olderThan age: TimeAmount) {
        eventLoop.preconditionInEventLoop()
        let now = NIODeadline.now()
        for key in Array(idle.keys) {
            guard var list = idle[key] else { continue }
            let stale = list.prefix { now - $0.idleSince >= age }.count
            for connection in list[..<stale] { connection.channel.close(promise: nil) }
            list.removeFirst(stale)
            idle[key] = list.isEmpty ? nil : list
        }
    }
}

/// An upstream's host and port: the pool keeps idle connections per authority.
struct Authority: Hashable {
    var host: String
    var port: Int
}

/// One upstream connection and its response handler.
final class UpstreamConnection: @unchecked Sendable {   // used only on its channel's event loop
    let channel: any Channel
    let handler: UpstreamResponseHandler
    let key: Authority
    /// Served an exchange before: a failure before any answer may be the upstream having closed
    /// it while idle, so the request is sent once more on a new connection.
    var reused: Bool
    /// When it last went back to the pool.
    var idleSince = NIODeadline.now()

    init(channel: any Channel, handler: UpstreamResponseHandler, key: Authority, reused: Bool) {
        self.channel = channel
        self.handler = handler
        self.key = key
        self.reused = reused
    }

    /// The last request was written whole (an upstream may answer before reading it all; the
    /// connection is not reused with request bytes still going out).
    private var written = true

    var isUsable: Bool { channel.isActive && handler.isIdle && handler.keepAlive && written }

    /// The socket, looked up on the first send (`DirectSocketWrite`).
    private var descriptor: NIOBSDSocket.Handle??

    /// Sends one request (`HTTP1Wire.request`: head and body in one buffer); `completion` gets,
    /// once, on the event loop, the whole answer (at most `limit` bytes of body) or, where `tap`
    /// takes the answer's body as it comes, the answer's head once it has ended; or the failure.
    ///
    /// The request goes straight to the socket (`DirectSocketWrite`): nothing else is ever written
    /// on an upstream connection, and a request goes out only once the last one was written whole
    /// (`isUsable`), so nothing waits in the channel that it would overtake. What the socket does
    /// not take (all of it where the write failed: an upstream that closed an idle connection) is
    /// written through the channel, whose failure fails the exchange as before.
    func send(_ request: ByteBuffer, limit: Int, tap: UpstreamStreamTap? = nil,
              completion: @escaping (Result<UpstreamAnswer, any Error>) -> Void) {
        let exchange = handler.expect(limit: limit, tap: tap, completion: completion)
        var request = request
        if let socket = DirectSocketWrite.socket(of: channel, cache: &descriptor) {
            guard let rest = DirectSocketWrite.write(request, to: socket) else {
                written = true
                return
            }
            request = rest
        }
        written = false
        channel.writeAndFlush(request).assumeIsolated().whenComplete { [handler] result in
            switch result {
            case .success: self.written = true
            case .failure(let error): handler.fail(error, only: exchange)
            }
        }
    }
}

struct UpstreamAnswer {
    var head: UpstreamHead
    var body: ByteBuffer
}

enum UpstreamRelayError: Error, Equatable, CustomStringConvertible {
    /// The connection closed before the whole answer came (`answered`: its head had come).
    case closed(answered: Bool)
    case tooLarge(limit: Int)
    case timedOut
    /// The answer began, then nothing more came for `upstream_timeout`.
    case stalled

    /// The upstream had begun to answer (so the request is not sent again).
    var answerBegan: Bool {
        switch self {
        case .closed(let answered): answered
        case .tooLarge, .stalled: true
        case .timedOut: false
        }
    }

    var description: String {
        switch self {
        case .closed(let answered): answered ? "the connection closed mid-answer" : "the connection closed before an answer"
        case .tooLarge(let limit): "the answer is larger than \(limit) bytes"
        case .timedOut: "no answer within gateway.upstream_timeout"
        case .stalled: "the answer stopped coming for gateway.upstream_timeout"
        }
    }
}

/// Where a stream's answer goes as it comes, for one exchange. Called on the connection's event
/// loop; dropped when the exchange ends or fails.
struct UpstreamStreamTap {
    /// The answer's head came: whether its body is passed on as it comes (else collected, as any
    /// answer is: an error answer to a stream request, say).
    var began: (UpstreamHead) -> Bool
    /// A part of the body, in order.
    var chunk: (ByteBuffer) -> Void
    /// The end of one socket read: what came in it may be flushed on.
    var readComplete: () -> Void
}

/// Reads one answer at a time (`HTTP1ResponseParser`) into an `UpstreamAnswer`, or passes its
/// body on as it comes.
final class UpstreamResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var parser = HTTP1ResponseParser()
    /// Where the answer under way goes; nil between exchanges.
    private var completion: ((Result<UpstreamAnswer, any Error>) -> Void)?
    /// Counts the exchanges on this connection (`fail(_:only:)`).
    private var exchanges = 0
    private var head: UpstreamHead?
    private var body: ByteBuffer?
    private var limit = 0
    private var tap: UpstreamStreamTap?
    /// The current answer's body goes to `tap`.
    private var passing = false
    private(set) var keepAlive = true

    var isIdle: Bool { completion == nil }
    /// The current answer's head has come.
    var answerBegan: Bool { head != nil }
    /// Socket reads on this connection so far: whether an answer is still coming.
    private(set) var reads = 0
    /// When the last of them came: a stall is measured from it.
    private(set) var lastRead = NIODeadline.now()

    /// The next answer goes to `completion`; returns the exchange's number.
    func expect(limit: Int, tap: UpstreamStreamTap? = nil, completion: @escaping (Result<UpstreamAnswer, any Error>) -> Void) -> Int {
        precondition(self.completion == nil, "one request at a time on an upstream connection")
        self.completion = completion
        exchanges += 1
        self.limit = limit
        self.tap = tap
        passing = false
        head = nil
        body = nil
        return exchanges
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reads &+= 1
        lastRead = .now()
        var buffer = unwrapInboundIn(data)
        guard completion != nil else {
            // Bytes nobody asked for: the connection is not in a state to be trusted again.
            keepAlive = false
            context.close(promise: nil)
            return
        }
        do {
            while completion != nil, let event = try parser.next(&buffer) {
                switch event {
                case .head(let head):
                    self.head = head
                    keepAlive = keepAlive && head.keepAlive
                    if let tap { passing = tap.began(head) }
                case .body(var chunk):
                    if passing {
                        tap?.chunk(chunk)
                        continue
                    }
                    if body == nil {
                        body = chunk
                    } else {
                        body!.writeBuffer(&chunk)
                    }
                    if body!.readableBytes > limit {
                        keepAlive = false
                        fail(UpstreamRelayError.tooLarge(limit: limit))
                        context.close(promise: nil)
                        return
                    }
                case .end:
                    // Bytes after the answer were not asked for: not kept (checked before the
                    // completion, which may hand the connection out again).
                    if buffer.readableBytes > 0 { keepAlive = false }
                    complete()
                    return
                }
            }
        } catch {
            keepAlive = false
            fail(error)
            context.close(promise: nil)
        }
    }

    /// The answer under way has ended: the exchange succeeds with it.
    private func complete() {
        guard let completion, let head else { return }
        self.completion = nil
        let answer = UpstreamAnswer(head: head, body: body ?? ByteBuffer())
        self.head = nil
        body = nil
        tap = nil
        passing = false
        completion(.success(answer))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if passing { tap?.readComplete() }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepAlive = false
        if completion != nil, head != nil, case .end? = parser.inputClosed() {
            complete()   // an answer framed by the connection's close
        } else {
            fail(UpstreamRelayError.closed(answered: head != nil))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        keepAlive = false
        fail(error)
        context.close(promise: nil)
    }

    /// Fails the exchange under way (only if it is exchange number `only`, when given); the
    /// connection is not kept.
    func fail(_ error: any Error, only: Int? = nil) {
        keepAlive = false
        guard let completion, only == nil || only == exchanges else { return }
        self.completion = nil
        head = nil
        body = nil
        tap = nil
        passing = false
        completion(.failure(error))
    }
}
