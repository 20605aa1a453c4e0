import Hummingbird
import NIOConcurrencyHelpers
import NIOCore

/// The gateway's request context: Hummingbird's basic one, and the client's connection, so a
/// request can be told when its client goes away (`ClientDeparture`).
public struct GatewayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The client's connection.
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }

    /// The departure watch of the client's connection (`ClientIdleHandler` keeps one on every
    /// connection); one that has fired when the connection is already gone; nil when it has none.
    func departure() async -> ClientDeparture? {
        let channel = self.channel
        do {
            return try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.handler(type: ClientIdleHandler.self).departure
            }.get()
        } catch {
            guard !channel.isActive else { return nil }
            let gone = ClientDeparture()
            gone.departed()
            return gone
        }
    }
}

/// Tells a request waiting for its answer that its client has gone: the connection closed, or
/// its input did (`cancel_on_disconnect` treats a half-close as departure, as the event-loop
/// relay does). Unlike Hummingbird's `consumeWithCancellationOnInboundClose`, it reads nothing
/// of the connection's next request, so the connection stays open for it and pipelined
/// requests behind this one are still answered.
final class ClientDeparture: Sendable {
    private struct State {
        var departed = false
        var onDeparture: (@Sendable () -> Void)?
    }
    private let state = NIOLockedValueBox(State())

    /// Calls `action` once when the client goes away, at once if it already has; one watch at a
    /// time (the connection's requests are answered one after another).
    func watch(_ action: @escaping @Sendable () -> Void) {
        let departed = state.withLockedValue { state in
            if !state.departed { state.onDeparture = action }
            return state.departed
        }
        if departed { action() }
    }

    /// The request has its answer: nothing to call any more.
    func unwatch() {
        state.withLockedValue { $0.onDeparture = nil }
    }

    /// The client has gone (from the connection's event loop).
    func departed() {
        let action = state.withLockedValue { state -> (@Sendable () -> Void)? in
            state.departed = true
            defer { state.onDeparture = nil }
            return state.onDeparture
        }
        action?()
    }

    var hasDeparted: Bool { state.withLockedValue { $0.departed } }
}
