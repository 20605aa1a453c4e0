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
    /// Where the weights of `model` are: reported at startup after scanning the store, or when
    /// a copy was lost. `.host` for a copy the Placer did not ask for is kept if the host-weights
    /// budget has room for it and the model stages weights; otherwise it is released.
    case weightsAt(model: String, tier: WeightTier)
    /// The size of `model`'s weights, once known (an http or s3 source has none until looked
    /// up: the configuration's estimate stands in until then). Host copies are accounted at it.
    case weightsSized(model: String, bytes: UInt64)
    /// The host copy `.stage` asked for is complete.
    case staged(model: String)
    /// The host copy `.stage` asked for could not be made; nothing of it is left in host RAM.
    case stageFailed(model: String, detail: String)
    /// Operator asks for the weights of `model` to be brought into host RAM without starting it.
    case stageRequest(model: String)
    /// The runtime of `model` runs weights that are no longer current (its copy was staged anew
    /// from a changed source): it finishes its requests and starts again on the new ones.
    case weightsReplaced(model: String)
    /// The runtime of `model` was measured to hold `bytes` of its device (after it became ready,
    /// and again for each larger peak). The first report of a runtime replaces what an earlier
    /// runtime measured; later reports of the same runtime only raise it. Accounted instead of
    /// `memoryBytes` if that was an estimate (`memoryDeclared` false), only recorded otherwise.
    /// Ignored unless the model is ready or draining (a late report of a runtime on its way out).
    case footprintMeasured(model: String, bytes: UInt64)
    /// Time passed; deadlines, TTLs, backoffs and minimum residencies are checked.
    case tick
}

/// What the driver must carry out, in order.
public enum PlacerAction: Sendable, Equatable {
    case start(model: String)
    case stop(model: String, reason: StopReason)
    case admit(RequestID, model: String)
    case reject(RequestID, model: String, Rejection)
    /// Bring the weights of `model` into host RAM (through the NVMe store if they are only at
    /// the source), then answer `.staged` or `.stageFailed`.
    case stage(model: String)
    /// Drop the host copy of `model`, or abandon its staging; the NVMe copy stays. Idempotent.
    case releaseWeights(model: String)
}

public enum StopReason: Sendable, Equatable, CustomStringConvertible {
    case idle
    case evicted(forModel: String)
    case operatorRequest
    case loadTimeout
    /// Its device holds more than its budget (a measured footprint larger than the estimate,
    /// or a smaller budget after a reconfiguration) and this model was idle.
    case overBudget
    /// Gone from the configuration.
    case removed
    /// Its runtime command changed: it starts again with the new configuration when needed.
    case restarted
    /// Its weights were staged anew (`weightsReplaced`): it starts again on them when needed.
    case newWeights

    public var description: String {
        switch self {
        case .idle: "idle past its ttl"
        case .evicted(let other): "evicted to make room for \(other)"
        case .operatorRequest: "unloaded by operator"
        case .loadTimeout: "did not become healthy within the load timeout"
        case .overBudget: "device over budget after a measured footprint or a configuration change"
        case .removed: "removed from the configuration"
        case .restarted: "restarting with a changed configuration"
        case .newWeights: "restarting on weights staged anew"
        }
    }
}

/// Why a request was not admitted. Expected outcomes, not errors: the gateway maps each to a
/// status code.
public enum Rejection: Sendable, Equatable {
    /// Not configured, or removed from the configuration while the request waited.
    case unknownModel
    case queueFull(limit: Int)
    /// Waited `waited` and the model was still not ready (loading, swapping or backing off);
    /// `reason` says what it was waiting for (`Placer.waitReason`).
    case timedOut(waited: Duration, retryAfter: Duration, reason: String? = nil)
    /// Cannot fit even after evicting every unpinned model on the device. (A model that would
    /// fit but for models it may not evict yet, for their priority or minimum residency, waits.)
    case doesNotFit(needBytes: UInt64, device: String, budgetBytes: UInt64, pinnedBytes: UInt64)
    /// The runtime failed to start or died while the request waited.
    case runtimeFailed(detail: String)
}
