/// Identifies one client request for the lifetime of its admission and service.
public typealias RequestID = UInt64

/// Everything that can happen to the Placer. The driver feeds these in with the current time.
public enum PlacerEvent: Sendable, Equatable {
    /// A request for `model` wants to be served.
    case request(RequestID, model: String)
    /// A request that was still waiting gave up (client gone). Ignored if already admitted.
    case cancel(RequestID)
    /// An admitted request is over: completed, failed or cancelled. Every admitted request
    /// produces exactly one of these.
    case finished(RequestID)
    /// The runtime of `model` answers its health check.
    case runtimeReady(model: String)
    /// The runtime process of `model` is gone (after a stop, a crash, or a failed spawn).
    case runtimeExited(model: String, detail: String)
    /// Operator asks for `model` to be loaded now.
    case load(model: String)
    /// Operator asks for `model` to be unloaded once its in-flight requests finish.
    case unload(model: String)
    /// Time passed; deadlines, TTLs and backoffs are checked.
    case tick
}

/// What the driver must carry out, in order.
public enum PlacerAction: Sendable, Equatable {
    case start(model: String)
    case stop(model: String, reason: StopReason)
    case admit(RequestID, model: String)
    case reject(RequestID, model: String, Rejection)
}

public enum StopReason: Sendable, Equatable, CustomStringConvertible {
    case idle
    case evicted(forModel: String)
    case operatorRequest
    case loadTimeout

    public var description: String {
        switch self {
        case .idle: "idle past its ttl"
        case .evicted(let other): "evicted to make room for \(other)"
        case .operatorRequest: "unloaded by operator"
        case .loadTimeout: "did not become healthy within the load timeout"
        }
    }
}

/// Why a request was not admitted. Expected outcomes, not errors: the gateway maps each to a
/// status code.
public enum Rejection: Sendable, Equatable {
    case unknownModel
    case queueFull(limit: Int)
    /// Waited `waited` and the model was still not ready (loading, swapping or backing off).
    case timedOut(waited: Duration, retryAfter: Duration)
    /// Cannot fit even after evicting every unpinned model on the device.
    case doesNotFit(needBytes: UInt64, device: String, budgetBytes: UInt64, pinnedBytes: UInt64)
    /// The runtime failed to start or died while the request waited.
    case runtimeFailed(detail: String)
}
