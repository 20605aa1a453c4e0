import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTPTypes

/// The relay of a request that can be served at once, done on the client connection's event
/// loop: no task, no hop between threads from the client's bytes to the upstream's and back.
/// The general path (`proxy`, on Swift concurrency) takes everything else.
extension Gateway {
    /// The channel handlers the HTTP/1 server puts before its request handling: the client
    /// idle timeout, then the event-loop relay.
    public func channelHandlers() -> [any RemovableChannelHandler] {
        [ClientIdleHandler(timeout: TimeAmount(configuration.clientIdleTimeout)),
         ExpectContinueHandler(maxBodyBytes: configuration.maxBodyBytes, authorize: { [self] headers in
             do {
                 try authorize(headers: headers)
                 return nil
             } catch let error as GatewayError {
                 return error
             } catch {
                 return nil
             }
         }) { [metrics] endpoint, error in
             if let endpoint { metrics.rejected(model: "", endpoint: endpoint, code: error.code) }
         }]
            + (configuration.relayOnEventLoop ? [EventLoopRelayHandler(gateway: self)] : [])
    }

    /// The HTTP/1 server: Hummingbird's, with `ClosingRequestHandler` inside the codec,
    /// `channelHandlers()` after it and, with the event-loop relay on, `RequestFrontHandler`
    /// before it. For tests: `extra` handlers go before `channelHandlers()`, `socketSide` ones
    /// first of all (they see bytes).
    public func httpServer(extra: @escaping @Sendable () -> [any RemovableChannelHandler] = { [] },
                           socketSide: @escaping @Sendable () -> [any ChannelHandler & Sendable] = { [] }) -> HTTPServerBuilder
    {
        let configuration = HTTP1Channel.Configuration(additionalChannelHandlers: extra() + self.channelHandlers())
        let bodyLimit = self.configuration.relayOnEventLoop ? relayBodyLimit : nil
        return HTTPServerBuilder { responder in
            FrontedHTTP1Channel(inner: HTTP1Channel(responder: responder, configuration: configuration), bodyLimit: bodyLimit,
                                socketSide: socketSide)
        }
    }

    /// One request the event loop can relay, and the lease that admits it.
    struct ImmediateRelay {
        var lease: UpstreamLease
        /// Where the lease points, parsed once per lease.
        var target: UpstreamTarget
        var parsed: ParsedBody
        var endpoint: Endpoint
        var started: ContinuousClock.Instant
        var admitted: ContinuousClock.Instant

        /// What follows the request from its answer's head (`statusCode`) to its end.
        func observer(_ metrics: GatewayMetrics, statusCode: Int) -> RequestObserver {
            RequestObserver(
                metrics: metrics, model: lease.servedModel ?? parsed.model, endpoint: endpoint, started: started,
                admitted: admitted, statusCode: statusCode, tenant: parsed.hints.tenant, price: lease.price,
                cacheReport: lease.cacheReport)
        }
    }

    /// Largest body parsed on the event loop; larger requests go the general way, so one long
    /// prompt does not hold up the loop's other connections while it is parsed.
    static let immediateBodyLimit = 256 << 10

    /// Largest body the relay collects: `immediateBodyLimit`, or `gateway.max_body_bytes` if lower.
    var relayBodyLimit: Int { min(configuration.maxBodyBytes, Self.immediateBodyLimit) }

    /// The endpoint of a request head the event loop may relay; nil sends it the general way.
    static func immediateEndpoint(_ head: HTTPRequest) -> Endpoint? {
        guard head.method == .post, let path = head.path, head.headerFields[.expect] == nil else { return nil }
        if let connection = head.headerFields[.connection], connection.utf8.count == 5, connection.lowercased() == "close" {
            return nil
        }
        return Endpoint(requestPath: path)
    }

    /// Checks, parses and admits a whole request without waiting. Nil where the general path is
    /// needed: any error (it answers it), a model the backend cannot admit at once, an upstream
    /// that is not plain `http://`.
    func prepareImmediately(_ head: HTTPRequest, endpoint: Endpoint, body: ByteBuffer, started: ContinuousClock.Instant,
                            pool: UpstreamPool) -> ImmediateRelay?
    {
        guard let tenant = try? authorize(headers: head.headerFields),
            let policy = try? policy(of: head.headerFields, tenant: tenant),
            var parsed = try? parseBody(body, endpoint: endpoint)
        else { return nil }
        addHints(to: &parsed, headers: head.headerFields, tenant: tenant, policy: policy)
        guard let lease = backend.acquireImmediately(model: parsed.model, hints: parsed.hints) else { return nil }
        guard let target = pool.target(url: lease.baseURL + endpoint.suffix) else {
            lease.release(.abandoned)
            return nil
        }
        return ImmediateRelay(lease: lease, target: target, parsed: parsed, endpoint: endpoint, started: started,
                              admitted: .now)
    }

    /// What routing may use: the prompt's block chain and session (only for models routed by
    /// prompt), the tenant and its policy.
    func addHints(to parsed: inout ParsedBody, headers: HTTPFields, tenant: Tenant, policy: SubstratePolicy) {
        if backend.routesByPrompt(model: parsed.model) {
            parsed.hints = RequestHints(
                prompt: parsed.promptChain(blockBytes: configuration.routingBlockBytes),
                session: sessionField.flatMap { headers[$0] } ?? parsed.user)
        }
        parsed.hints.policy = policy
        parsed.hints.tenant = tenant.name
    }

    /// The upstream request for a lease: the target, and the request as bytes.
    func upstreamRequest(_ relay: ImmediateRelay) throws -> (UpstreamTarget, ByteBuffer) {
        let target = relay.target
        let body = try Self.rewriteBody(relay.parsed, for: relay.lease)
        var headers = [("Host", target.hostHeader), ("Content-Type", "application/json")]
        if relay.parsed.stream {
            headers.append(("Accept", "text/event-stream"))
            // As on the general path: llama-server closes the connection after every stream
            // without saying so, so a stream's connection is not kept.
            headers.append(("Connection", "close"))
        } else {
            headers.append(("Accept", "application/json"))
        }
        do {
            return (target, try HTTP1Wire.request(path: target.path, standard: headers, extra: relay.lease.headers, body: body))
        } catch {
            throw GatewayError.badGateway("Cannot send the request to \(relay.lease.upstreamLabel): \(describe(error))")
        }
    }
}

/// Sits between the HTTP/1 codec and Hummingbird's request handling on each connection. A POST
/// to an OpenAI endpoint is collected here; if the gateway can admit it at once
/// (`Gateway.prepareImmediately`), it is sent on a pooled upstream connection of the same event
/// loop and the answer written back, all on that loop: a whole answer at once, a stream (SSE)
/// event by event as it comes, reading the upstream only as fast as the client takes the
/// events (its connection's writability). Otherwise the request's parts go on to
/// Hummingbird unchanged. Answers stay in request order: a request is relayed here only when
/// no earlier one is still with Hummingbird, and requests that arrive while one is relayed
/// here wait until it is answered.
final class EventLoopRelayHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// (Every case with a payload holds one reference: the state is copied at each step.)
    private enum State {
        case idle
        /// A request that may be relayed here, until its end.
        case collecting(Collecting)
        /// A request on its way to Hummingbird, until its end.
        case passing
        /// A request relayed here, until its answer is written.
        case relaying(Exchange)
    }

    private final class Collecting {
        let head: HTTPRequest
        let endpoint: Endpoint
        var body: ByteBuffer?
        let started: ContinuousClock.Instant

        init(head: HTTPRequest, endpoint: Endpoint) {
            self.head = head
            self.endpoint = endpoint
            started = .now
        }
    }

    /// A reference, so the state holds it without copying its fields at every step.
    private final class Exchange {
        var relay: Gateway.ImmediateRelay
        let head: HTTPRequest
        var attempt = 0
        var connection: UpstreamConnection?
        /// When the current attempt's bound runs out (`bound`), and the upstream's reads counted
        /// when it was set (nil before the answer began).
        var deadline = NIODeadline.distantFuture
        var readsSeen: Int?
        /// The request went once more on a new connection after a kept one failed unanswered.
        var resentOnNewConnection = false
        /// A stream whose head has come from the upstream, and what follows it to its end.
        var stream: RequestObserver?
        /// That stream's head, until it goes to the client with the first event: a stream that
        /// fails before it (a runtime that dies computing the prompt) is retried like a request
        /// never answered.
        var streamHead: HTTPResponse?
        /// Its answer goes to the socket as bytes (`answersRaw` when it began).
        let raw: Bool
        /// Replicas that answered it with a server error, blamed only if another serves it.
        var serverErrorsFrom: [String] = []

        init(relay: Gateway.ImmediateRelay, head: HTTPRequest, raw: Bool) {
            self.relay = relay
            self.head = head
            self.raw = raw
        }
    }

    private let gateway: Gateway
    private var pool: UpstreamPool?
    private var state = State.idle
    /// Requests handed to Hummingbird whose answer has not ended.
    private var handedOn = 0
    /// What arrived while a request was relayed here, in order: request parts, and the events
    /// and errors behind them (a client that half-closes after its requests, a malformed
    /// request after a good one), which must not reach Hummingbird before the requests ahead.
    private enum Held {
        case part(HTTPRequestPart)
        case event(Any)
        case error(any Error)
    }
    private var held = CircularBuffer<Held>()
    private var replaying = false
    /// A quiesce (graceful shutdown) that came while a request was relayed here.
    private var heldEvent: Any?
    /// Shutdown under way: every request goes to Hummingbird, which closes the connection after it.
    private var quiescing = false
    /// A socket read was asked for while a request was relayed; done after its answer.
    private var readDeferred = false
    private var attempts = 0
    /// The connection's `RequestFrontHandler`, its context (next to the socket) and the idle
    /// handler that counts answers: where this handler's own answers to requests the front
    /// parsed are written as bytes, past the HTTP/1 encoder and the HTTPTypes codec.
    private var front: RequestFrontHandler?
    private var socket: ChannelHandlerContext?
    /// The connection's socket itself, looked up on the first answer written to it directly.
    private var descriptor: NIOBSDSocket.Handle??
    /// Something was written to the channel (not straight to the socket) since NIO was last seen
    /// to hold nothing for it: an answer of the general path or the codec, a stream, the rest of
    /// an answer the socket did not take. While false, only direct writes that went out whole
    /// have happened, and asking NIO (`DirectSocketWrite.nothingQueued`, a costly option lookup)
    /// is not needed.
    private var channelMayHold = false
    private var idle: ClientIdleHandler?
    /// This handler's context, for requests the front offers directly (`offer`).
    private var ownContext: ChannelHandlerContext?
    /// The connection's one timer for the exchanges' bounds (`bound`), while one is scheduled.
    private var watchdog: Scheduled<Void>?

    /// Answers go to the socket as bytes while the front parses the connection's requests (or
    /// holds back the codec's until those are answered). A request the codec decoded is answered
    /// through it: NIO's encoder pairs each answer with the method its decoder recorded.
    private var answersRaw: Bool {
        guard socket != nil, let front else { return false }
        return !front.passingThrough || front.isHolding
    }

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func handlerAdded(context: ChannelHandlerContext) {
        ownContext = context
        pool = gateway.upstreamPools.pool(for: context.eventLoop)
        let sync = context.pipeline.syncOperations
        if let front = try? sync.handler(type: RequestFrontHandler.self), let idle = try? sync.handler(type: ClientIdleHandler.self) {
            self.front = front
            self.idle = idle
            socket = try? sync.context(handlerType: RequestFrontHandler.self)
        }
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if mustHold {
            held.append(.part(part))
            return
        }
        take(part, context: context)
    }

    /// A request is relayed here, or parts held meanwhile wait to be replayed.
    private var mustHold: Bool {
        if case .relaying = state { return true }
        return !held.isEmpty && !replaying
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if mustHold {
            held.append(.error(error))
            return
        }
        handOnCollected(context: context)
        context.fireErrorCaught(error)
    }

    /// A request still being collected when its input ends or breaks goes to Hummingbird as far
    /// as it came, which answers or drops it as it would have without this handler.
    private func handOnCollected(context: ChannelHandlerContext) {
        guard case .collecting(let request) = state else { return }
        state = .passing
        handOn(.head(request.head), context: context)
        if let body = request.body, body.readableBytes > 0 { handOn(.body(body), context: context) }
        releaseHeldEvent(context: context)   // a quiesce that waited for this request
    }

    /// Stops reading the socket once something has arrived while a request is relayed: what
    /// arrives meanwhile is held in memory, so it is bounded by one read, not by what a client
    /// sends. Until then the socket stays armed: a client that waits for its answer (nearly all
    /// of them) costs no change of the poller's interest, two `epoll_ctl` calls a request.
    func read(context: ChannelHandlerContext) {
        if case .relaying = state, !held.isEmpty {
            readDeferred = true
            return
        }
        context.read()
    }

    private func take(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch (state, part) {
        case (.idle, .head(let head)):
            if let endpoint = collectable(head) {
                state = .collecting(Collecting(head: head, endpoint: endpoint))
            } else {
                handOn(part, context: context)
                state = .passing
            }
        case (.collecting(let request), .body(var chunk)):
            if request.body == nil {
                request.body = chunk
            } else {
                request.body!.writeBuffer(&chunk)
            }
            if request.body!.readableBytes > gateway.relayBodyLimit {
                // Too large to parse on the event loop (or at all: the general path reads the
                // rest and answers 413).
                handOn(.head(request.head), context: context)
                handOn(.body(request.body!), context: context)
                state = .passing
                releaseHeldEvent(context: context)   // a quiesce that waited for this request
            }
        case (.collecting(let request), .end(_)):
            state = .idle
            relayOrHandOn(request.head, endpoint: request.endpoint, body: request.body ?? ByteBuffer(), started: request.started,
                          context: context)
        case (.passing, _):
            if case .end = part { state = .idle }
            context.fireChannelRead(wrapInboundOut(part))
        default:
            // Out of order parts (a body without a head): the general path deals with them.
            state = .passing
            handOn(part, context: context)
        }
    }

    /// A whole request the front parsed, offered here directly instead of as three parts through
    /// the pipeline (the idle handler is told, as the parts would have told it). False, changing
    /// nothing, where `take` must see the parts: anything but a request this handler would
    /// collect now.
    func offer(_ head: HTTPRequest, body: ByteBuffer) -> Bool {
        guard let context = ownContext, let idle, case .idle = state, held.isEmpty,
            body.readableBytes <= gateway.relayBodyLimit, let endpoint = collectable(head)
        else { return false }
        idle.requestTaken()
        relayOrHandOn(head, endpoint: endpoint, body: body, started: .now, context: context)
        return true
    }

    /// The endpoint of a request this handler would collect now; nil sends it to Hummingbird
    /// (one before it is still there, shutdown has begun, nothing can be admitted at once, or
    /// not a POST to an OpenAI endpoint).
    private func collectable(_ head: HTTPRequest) -> Endpoint? {
        guard handedOn == 0, !quiescing, gateway.backend.admitsAnyImmediately else { return nil }
        // A browser's request is let in (or not) and gets its CORS headers on the general path
        // (`CORSMiddleware`).
        if head.headerFields[.origin] != nil { return nil }
        return Gateway.immediateEndpoint(head)
    }

    /// A whole request: relayed here if the gateway admits it at once, else on to Hummingbird.
    private func relayOrHandOn(_ head: HTTPRequest, endpoint: Endpoint, body: ByteBuffer,
                               started: ContinuousClock.Instant, context: ChannelHandlerContext) {
        if !quiescing, let pool,
            let relay = gateway.prepareImmediately(head, endpoint: endpoint, body: body, started: started, pool: pool)
        {
            state = .relaying(Exchange(relay: relay, head: head, raw: answersRaw))
            send(context: context)
        } else {
            handOn(head: head, body: body, context: context)
            releaseHeldEvent(context: context)
        }
    }

    private func handOn(head: HTTPRequest, body: ByteBuffer, context: ChannelHandlerContext) {
        handOn(.head(head), context: context)
        if body.readableBytes > 0 { handOn(.body(body), context: context) }
        handOn(.end(nil), context: context)
    }

    private func releaseHeldEvent(context: ChannelHandlerContext) {
        guard let event = heldEvent else { return }
        heldEvent = nil
        context.fireUserInboundEventTriggered(event)
    }

    private func handOn(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if case .head = part { handedOn += 1 }
        handedOnSinceAsked = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// Parts went on to Hummingbird since the last call: a request offered here (`offer`) can
    /// still go there at once, and then the read-complete after it must reach Hummingbird too
    /// (`RequestFrontHandler.channelReadComplete`), which delivers what it was given only then.
    func handedOnSinceLastAsked() -> Bool {
        defer { handedOnSinceAsked = false }
        return handedOnSinceAsked
    }
    private var handedOnSinceAsked = false

    func channelInactive(context: ChannelHandlerContext) {
        if case .relaying(let exchange) = state {
            // The client left: the upstream request is dropped with its connection.
            state = .idle
            exchange.connection?.channel.close(promise: nil)
            if let stream = exchange.stream {
                // As on the general path: the upstream did serve part of the answer.
                stream.finish(outcome: "client_disconnected")
                exchange.relay.lease.release(.served(after: exchange.serverErrorsFrom))
            } else {
                exchange.relay.lease.release(.abandoned)
            }
        }
        held.removeAll()
        detach()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        detach()
    }

    /// Drops what holds the pipeline's contexts (and the timer that holds this handler).
    private func detach() {
        socket = nil
        ownContext = nil
        watchdog?.cancel()
        watchdog = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !(event is ChannelShouldQuiesceEvent) {
            // With `cancel_on_disconnect` (as on the general path) the end of a client's input
            // means it left: it goes on at once and the connection closes, ending the relay.
            // Without, it may be a client that half-closed after its requests: it waits behind them.
            var departure = false
            if case .inputClosed? = event as? ChannelEvent { departure = gateway.configuration.cancelOnDisconnect }
            if mustHold && !departure {
                held.append(.event(event))
                return
            }
            handOnCollected(context: context)
        }
        if event is ChannelShouldQuiesceEvent {
            quiescing = true
            switch state {
            case .relaying, .collecting:
                heldEvent = event   // passed on once that request is answered or handed on
                return
            case .idle, .passing:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A stream's upstream is read only while the client's connection takes what is written:
    /// a slow client holds the upstream back (TCP), not Strata's memory.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .relaying(let exchange) = state, exchange.stream != nil, let connection = exchange.connection {
            let writable = context.channel.isWritable
            try? connection.channel.syncOptions?.setOption(.autoRead, value: writable)
            if writable {
                // Read again: the upstream has a whole `upstream_timeout` from now to send more.
                bound(exchange, readsSeen: connection.handler.reads, context: context)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { handedOn = max(0, handedOn - 1) }
        channelMayHold = true
        context.write(data, promise: promise)
    }

    // MARK: the exchange

    private func send(context: ChannelHandlerContext) {
        guard case .relaying(let exchange) = state, let pool else { return }
        let request: (UpstreamTarget, ByteBuffer)
        do {
            request = try gateway.upstreamRequest(exchange.relay)
        } catch {
            exchange.relay.lease.release(.abandoned)
            finish(exchange, answer: (error as? GatewayError) ?? GatewayError.badGateway(describe(error)), context: context)
            return
        }
        attempts += 1
        let attempt = attempts
        exchange.attempt = attempt
        bound(exchange, readsSeen: nil, context: context)
        let (target, bytes) = request
        let limit = gateway.configuration.maxResponseBytes
        let tap = exchange.relay.parsed.stream ? UpstreamStreamTap(
            began: { self.streamBegan($0, attempt: attempt, context: context) },
            chunk: { self.streamed($0, context: context) },
            readComplete: { [raw = exchange.raw] in
                if raw, let socket = self.socket { socket.flush() } else { context.flush() }
            }) : nil
        if !exchange.resentOnNewConnection, let connection = pool.idleConnection(to: target) {
            exchange.connection = connection
            sendAttempt(bytes, on: connection, attempt: attempt, limit: limit, tap: tap, context: context)
            return
        }
        pool.newConnection(to: target, connectTimeout: .seconds(5)).assumeIsolated().whenComplete { result in
            guard case .relaying(let current) = self.state, current.attempt == attempt else {
                // The client left (or the attempt timed out) while this connected: send nothing.
                if case .success(let connection) = result { pool.release(connection) }
                return
            }
            switch result {
            case .success(let connection):
                current.connection = connection
                self.sendAttempt(bytes, on: connection, attempt: attempt, limit: limit, tap: tap, context: context)
            case .failure(let error):
                self.answered(.failure(error), exchange: current, context: context)
            }
        }
    }

    /// Sends attempt `attempt`'s request on `connection`; its answer goes to `answered`.
    private func sendAttempt(_ bytes: ByteBuffer, on connection: UpstreamConnection, attempt: Int, limit: Int,
                             tap: UpstreamStreamTap?, context: ChannelHandlerContext) {
        connection.send(bytes, limit: limit, tap: tap) { result in
            // Otherwise the client left meanwhile, and the connection was closed then.
            guard case .relaying(let current) = self.state, current.attempt == attempt else { return }
            self.answered(result, exchange: current, context: context)
        }
    }

    /// Each attempt's bound (as the general path's): `upstream_timeout` for the answer's head, so
    /// a retried request is bounded too; then, once the answer has begun, the same between its
    /// reads, so an upstream that stops mid-answer does not hold the client for ever. Sets the
    /// exchange's deadline from `start`; the connection's one timer (`watchdog`) checks it then.
    private func bound(_ exchange: Exchange, readsSeen: Int?, from start: NIODeadline = .now(), context: ChannelHandlerContext) {
        exchange.deadline = start + TimeAmount(gateway.configuration.upstreamTimeout)
        exchange.readsSeen = readsSeen
        if watchdog == nil { scheduleWatchdog(at: exchange.deadline, context: context) }
    }

    /// One timer per client connection rather than one scheduled and cancelled per request: it
    /// stays when an exchange ends, and when it comes it checks the exchange then under way, or
    /// waits for that one's deadline, or (none under way) ends.
    private func scheduleWatchdog(at deadline: NIODeadline, context: ChannelHandlerContext) {
        watchdog = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.watchdog = nil
            guard case .relaying(let exchange) = self.state else { return }
            guard NIODeadline.now() >= exchange.deadline else {
                self.scheduleWatchdog(at: exchange.deadline, context: context)
                return
            }
            guard let connection = exchange.connection, connection.handler.answerBegan == false
                || (connection.handler.reads == exchange.readsSeen && context.channel.isWritable)
            else {
                // Still connecting (its own timeout bounds that), the answer is still coming (its
                // bound counts from its last read, so a stall ends after upstream_timeout, not up
                // to twice that), or a stream is held back by a client that does not take it.
                let handler = exchange.connection?.handler
                let coming = handler.map { $0.answerBegan && context.channel.isWritable } ?? false
                self.bound(exchange, readsSeen: handler?.reads, from: coming ? handler!.lastRead : .now(), context: context)
                return
            }
            let began = connection.handler.answerBegan
            connection.handler.fail(began ? UpstreamRelayError.stalled : UpstreamRelayError.timedOut)
            connection.channel.close(promise: nil)
        }
    }

    /// The head of a stream's answer came: an event stream goes on to the client as it comes
    /// (true), its head with its first event; anything else (an error answer) is collected and
    /// answered whole.
    private func streamBegan(_ head: UpstreamHead, attempt: Int, context: ChannelHandlerContext) -> Bool {
        guard case .relaying(let exchange) = state, exchange.attempt == attempt,
            let contentType = head.first(lowercased: HTTP1Wire.Lowercase.contentType), contentType.hasPrefix("text/event-stream")
        else { return false }
        let relay = exchange.relay
        exchange.stream = relay.observer(gateway.metrics, statusCode: head.status)
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = "no-cache"
        headers[Gateway.accelBuffering] = "no"
        if let served = relay.lease.servedModel { headers[Gateway.servedByHeader] = served }
        addServerHeaders(&headers)
        // No length: chunked.
        exchange.streamHead = HTTPResponse(status: .init(code: head.status), headerFields: headers)
        return true
    }

    /// Writes the stream's head, held since it came, ahead of its first event (or its end).
    private func writeStreamHead(_ exchange: Exchange, context: ChannelHandlerContext) {
        guard let response = exchange.streamHead else { return }
        exchange.streamHead = nil
        channelMayHold = true
        if exchange.raw, let socket {
            var bytes = context.channel.allocator.buffer(capacity: 256)
            HTTP1Wire.responseHead(response, chunked: true, into: &bytes)
            socket.write(NIOAny(bytes), promise: nil)
        } else {
            context.write(wrapOutboundOut(.head(response)), promise: nil)
        }
        if !context.channel.isWritable, let connection = exchange.connection {
            try? connection.channel.syncOptions?.setOption(.autoRead, value: false)
        }
    }

    /// A part of a stream's answer: written now, flushed at the end of the upstream's read.
    private func streamed(_ chunk: ByteBuffer, context: ChannelHandlerContext) {
        guard case .relaying(let exchange) = state, let stream = exchange.stream, chunk.readableBytes > 0 else { return }
        writeStreamHead(exchange, context: context)
        stream.streamed(chunk)
        channelMayHold = true
        if exchange.raw, let socket {
            socket.write(NIOAny(HTTP1Wire.chunk(chunk, allocator: context.channel.allocator)), promise: nil)
        } else {
            context.write(wrapOutboundOut(.body(chunk)), promise: nil)
        }
    }

    /// The end of a stream whose head went to the client: its last event (an error event when
    /// it broke), then the end of the answer.
    private func endStream(_ exchange: Exchange, _ stream: RequestObserver, failure: (any Error)?, context: ChannelHandlerContext) {
        // Not kept: the upstream was asked to close it (`Connection: close`).
        exchange.connection?.channel.close(promise: nil)
        let model = exchange.relay.parsed.model
        var event: GatewayError?
        if let failure {
            if gateway.isStopping {
                stream.finish(outcome: "cancelled")
                event = gateway.stoppingError(model)
            } else {
                gateway.logger.warning("stream from \(exchange.relay.lease.upstreamLabel) broke: \(describe(failure))")
                stream.finish(outcome: "runtime_failed")
                event = .badGateway("The runtime for '\(model)' failed mid-stream: \(describe(failure))")
            }
        } else {
            stream.finish(outcome: "ok")
        }
        exchange.relay.lease.release(.served(after: exchange.serverErrorsFrom))
        state = .idle
        writeStreamHead(exchange, context: context)   // (a stream that ended before any event)
        channelMayHold = true
        if exchange.raw, let socket {
            if let event { socket.write(NIOAny(HTTP1Wire.chunk(event.sseEvent, allocator: context.channel.allocator)), promise: nil) }
            socket.writeAndFlush(NIOAny(HTTP1Wire.chunk(ByteBuffer(), allocator: context.channel.allocator)), promise: nil)
            idle?.answerEnded()
        } else {
            if let event { context.write(wrapOutboundOut(.body(event.sseEvent)), promise: nil) }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        resumeAfterRelay(context: context)
    }

    private func answered(_ result: Result<UpstreamAnswer, any Error>, exchange: Exchange, context: ChannelHandlerContext) {
        let relay = exchange.relay
        let model = relay.parsed.model
        var unsent = false
        if let stream = exchange.stream {
            let failure: (any Error)? = if case .failure(let error) = result { error } else { nil }
            if failure == nil || exchange.streamHead == nil || gateway.isStopping {
                endStream(exchange, stream, failure: failure, context: context)
                return
            }
            // It failed before its first event: the client has seen nothing, so it is handled
            // as an upstream that never answered (retried where it can be).
            exchange.stream = nil
            exchange.streamHead = nil
            exchange.connection?.channel.close(promise: nil)
            exchange.connection = nil
            unsent = true
        }
        if case .failure = result, gateway.isStopping {
            // The daemon's drain time is over (`Gateway.cutForStop`): no retry, no blame on the runtime.
            exchange.connection?.channel.close(promise: nil)
            relay.lease.release(.abandoned)
            finish(exchange, answer: gateway.stoppingError(model), context: context)
            return
        }
        switch result {
        case .success(let answer):
            if let connection = exchange.connection {
                // A stream's request asked the upstream to close the connection (an error answer
                // to it comes here, whole): it is not kept, whatever the answer's head says.
                if relay.parsed.stream { connection.channel.close(promise: nil) } else { pool?.release(connection) }
            }
            // An error of the request's own making (`openAIShaped`) goes to the client as a 4xx,
            // not to another replica.
            var answer = answer
            if let shaped = Gateway.openAIShaped(status: answer.head.status, body: answer.body, endpoint: relay.endpoint) {
                (answer.head.status, answer.body) = shaped
            }
            // A server error: the client has seen none of it, so another replica gets the
            // request, where there is one. It counts against this one only if another serves it
            // (the same request erring everywhere is the request's doing).
            let serverError = answer.head.status >= 500
            if serverError, relay.lease.hasAlternatives {
                relay.lease.release(.abandoned)
                exchange.serverErrorsFrom.append(relay.lease.upstreamLabel)
                if tryAnotherReplica(exchange, after: "answered \(answer.head.status)", context: context) { return }
            }
            let observer = relay.observer(gateway.metrics, statusCode: answer.head.status)
            observer.completed(answer.body)   // reports the cached share to the lease, so before its release
            relay.lease.release(serverError ? .serverErrorUnretried : .served(after: exchange.serverErrorsFrom))
            let contentType = answer.head.first(lowercased: HTTP1Wire.Lowercase.contentType) ?? "application/json"
            if exchange.raw, let socket {
                write(raw: HTTP1Wire.answer(
                    status: answer.head.status, contentType: contentType, servedBy: relay.lease.servedModel,
                    date: pool?.httpDate, server: Gateway.serverName, body: answer.body, allocator: context.channel.allocator),
                      to: socket, context: context)
                return
            }
            var headers = HTTPFields()
            headers[.contentType] = contentType
            headers[.contentLength] = String(answer.body.readableBytes)
            if let served = relay.lease.servedModel { headers[Gateway.servedByHeader] = served }
            addServerHeaders(&headers)
            let response = HTTPResponse(status: .init(code: answer.head.status), headerFields: headers)
            write(response, body: answer.body, raw: false, context: context)

        case .failure(let error):
            let relayError = error as? UpstreamRelayError
            if relayError?.answerBegan == true && !unsent {
                // It began to answer, then broke (or sent too much): as the general path, no
                // retry, the lease ends and the client gets a 502.
                exchange.connection?.channel.close(promise: nil)
                // (Nothing streamed, so nothing to read figures from: its cache report is not called.)
                relay.observer(gateway.metrics, statusCode: 502).finish(outcome: "runtime_failed")
                relay.lease.release()
                finish(exchange, answer: .badGateway("The runtime for '\(model)' failed while answering: \(describe(error))"),
                       context: context)
                return
            }
            if let connection = exchange.connection, connection.reused, !exchange.resentOnNewConnection,
                relayError != .timedOut
            {
                // A kept connection the upstream had closed while idle: send once more on a new one.
                exchange.resentOnNewConnection = true
                exchange.connection = nil
                send(context: context)
                return
            }
            let refused = refusedConnection(error)
            relay.lease.release(refused ? .unreachable : .upstreamFailed)
            if tryAnotherReplica(exchange, after: "failed before answering (\(describe(error)))", context: context) { return }
            if refused, relay.lease.routedAmongReplicas {
                // The last replica up refused the connection: it is out now, and the general path
                // routes the request again (another that came up, or the 503 of a model with
                // every replica down).
                handToGeneralPath(exchange, context: context)
                return
            }
            gateway.metrics.rejected(model: model, endpoint: relay.endpoint, code: "runtime_failed")
            finish(exchange, answer: .badGateway("The runtime for '\(model)' did not answer: \(describe(error))"), context: context)
        }
    }

    /// Sends the exchange's request to another replica, its lease (released by the caller) having
    /// failed it before the client saw anything; or hands it to the general path when none can
    /// take it at once (it can wait, probe, spill over). False when the model has no other.
    private func tryAnotherReplica(_ exchange: Exchange, after failure: String, context: ChannelHandlerContext) -> Bool {
        let relay = exchange.relay
        let model = relay.parsed.model
        var hints = relay.parsed.hints
        guard relay.lease.hasAlternatives, hints.excluding.count < 8 else { return false }
        gateway.logger.warning("\(relay.lease.upstreamLabel) \(failure); trying another replica")
        hints.excluding.insert(relay.lease.upstreamLabel)
        gateway.metrics.retried(model: model, endpoint: relay.endpoint)
        if let lease = gateway.backend.acquireImmediately(model: model, hints: hints) {
            guard let target = pool?.target(url: lease.baseURL + relay.endpoint.suffix) else {
                lease.release(.abandoned)
                finish(exchange, answer: .badGateway("Upstream URL \(lease.baseURL) is not http://"), context: context)
                return true
            }
            exchange.relay.lease = lease
            exchange.relay.target = target
            exchange.relay.admitted = .now
            exchange.relay.parsed.hints = hints
            exchange.connection = nil
            exchange.resentOnNewConnection = false
            send(context: context)
            return true
        }
        handToGeneralPath(exchange, context: context)
        return true
    }

    /// Nothing was written to the client yet, so the general path takes the request (it can
    /// wait, probe, spill over).
    private func handToGeneralPath(_ exchange: Exchange, context: ChannelHandlerContext) {
        state = .idle
        handOn(head: exchange.head, body: exchange.relay.parsed.body, context: context)
        context.fireChannelReadComplete()
        releaseHeldEvent(context: context)
        resumeAfterRelay(context: context)
    }

    /// Writes an error answer for the exchange.
    private func finish(_ exchange: Exchange, answer error: GatewayError, context: ChannelHandlerContext) {
        var (headers, body) = error.encoded
        headers[.contentLength] = String(body.readableBytes)
        addServerHeaders(&headers)
        write(HTTPResponse(status: error.status, headerFields: headers), body: body, raw: exchange.raw, context: context)
    }

    /// What Hummingbird adds to the general path's answers: `Date` (made at most once a second
    /// per event loop) and `Server`.
    private func addServerHeaders(_ headers: inout HTTPFields) {
        if let pool { headers[.date] = pool.httpDate }
        headers[.server] = Gateway.serverName
    }

    private func write(_ response: HTTPResponse, body: ByteBuffer, raw: Bool, context: ChannelHandlerContext) {
        if raw, let socket {
            write(raw: HTTP1Wire.response(response, body: body, allocator: context.channel.allocator), to: socket, context: context)
            return
        }
        state = .idle
        channelMayHold = true
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(body)), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        resumeAfterRelay(context: context)
    }

    /// A whole answer as bytes, past the HTTP/1 encoder (`socket`: the front's context): straight
    /// to the socket when the front is next to it and NIO holds nothing for it
    /// (`DirectSocketWrite`; an answer Hummingbird wrote before may still wait there), and what
    /// the socket does not take through the front's context after it.
    private func write(raw answer: ByteBuffer, to socket: ChannelHandlerContext, context: ChannelHandlerContext) {
        state = .idle
        var rest: ByteBuffer? = answer
        if front?.nextToSocket == true, !channelMayHold || DirectSocketWrite.nothingQueued(in: context.channel),
            let fd = DirectSocketWrite.socket(of: context.channel, cache: &descriptor)
        {
            channelMayHold = false
            rest = DirectSocketWrite.write(answer, to: fd)
        }
        if let rest {
            channelMayHold = true
            socket.writeAndFlush(NIOAny(rest), promise: nil)
        }
        idle?.answerEnded()
        resumeAfterRelay(context: context)
    }

    /// After a relay: the requests held meanwhile (in order; with a quiesce under way they go to
    /// Hummingbird, which then knows them), then a held quiesce, then reading again.
    private func resumeAfterRelay(context: ChannelHandlerContext) {
        replayHeld(context: context)
        if case .relaying = state { return }
        releaseHeldEvent(context: context)
        if readDeferred {
            readDeferred = false
            context.read()
        }
    }

    /// Reads what was held back while a request was relayed here, as if it came now.
    private func replayHeld(context: ChannelHandlerContext) {
        guard !replaying, !held.isEmpty else { return }
        replaying = true
        defer { replaying = false }
        var delivered = false
        while let next = held.popFirst() {
            if case .relaying = state, !held.isEmpty {
                held.prepend(next)
                break
            }
            switch next {
            case .part(let part):
                take(part, context: context)
            case .event(let event):
                userInboundEventTriggered(context: context, event: event)
            case .error(let error):
                errorCaught(context: context, error: error)
            }
            delivered = true
        }
        if delivered { context.fireChannelReadComplete() }
    }
}
