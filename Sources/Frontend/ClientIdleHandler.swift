import NIOCore
import NIOHTTPTypes

/// Closes a client connection that has been idle for `timeout`: kept alive with no request under
/// way, opened and never used, or a request whose bytes stopped arriving (a client that died, or
/// one holding connections open on purpose). Waiting for an answer is not idle, however long a
/// generation takes. Sits first after the HTTP/1 codec, so it sees every request and answer,
/// relayed on the event loop or not. Also keeps the connection's `ClientDeparture`, which tells
/// a request on the general path that its client has gone.
final class ClientIdleHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    /// Requests whose head has been read and whose answer has not ended.
    private var inProgress = 0
    /// A request's head has been read, its end not yet.
    private var reading = false
    private var lastActivity = NIODeadline.now()
    private var timer: Scheduled<Void>?
    /// Fired when the connection or its input closes.
    let departure = ClientDeparture()

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context, at: .now() + timeout) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        lastActivity = .now()
        if timer == nil { arm(context, at: lastActivity + timeout) }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        departure.departed()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed? = event as? ChannelEvent { departure.departed() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = .now()
        switch unwrapInboundIn(data) {
        case .head:
            inProgress += 1
            reading = true
        case .body:
            break
        case .end:
            reading = false
        }
        context.fireChannelRead(data)
    }

    /// Bytes of a request's body arrived that a handler before this one holds until the request
    /// is whole (`RequestFrontHandler`).
    func bytesArrived() {
        lastActivity = .now()
    }

    /// A whole request that went past this handler, straight from the front to the relay
    /// (`EventLoopRelayHandler.offer`): counted as its parts would have been.
    func requestTaken() {
        lastActivity = .now()
        inProgress += 1
        reading = false
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        context.write(data, promise: promise)
        answerEnded()
    }

    /// An answer has ended: through this handler, or written as bytes closer to the socket (the
    /// event-loop relay's own answers, `EventLoopRelayHandler`).
    func answerEnded() {
        inProgress = max(0, inProgress - 1)
        lastActivity = .now()
        if inProgress == 0, let waiting = whenAllAnswered {
            whenAllAnswered = nil
            waiting()
        }
    }

    /// Requests read whose answer has not ended.
    var unanswered: Int { inProgress }
    /// Called once, after the answer that leaves no request unanswered has been written.
    var whenAllAnswered: (() -> Void)?

    private func arm(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            guard context.channel.isActive else { return }
            if inProgress - (reading ? 1 : 0) > 0 {
                // An answer is on its way: not idle; looked at again a timeout later.
                arm(context, at: .now() + timeout)
                return
            }
            let due = lastActivity + timeout
            if NIODeadline.now() >= due {
                context.close(promise: nil)
            } else {
                arm(context, at: due)
            }
        }
    }
}
