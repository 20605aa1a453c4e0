/// Where a managed model's runtime is in its life.
public enum ModelPhase: Sendable, Equatable {
    case stopped
    /// Spawned, waiting for its health check to pass.
    case starting(since: Duration)
    /// Fits its device and holds that reservation while its weights are staged into host RAM;
    /// no process exists yet. `.start` follows `.staged`.
    case staging(since: Duration)
    case ready
    /// Ready, but chosen to be stopped once its in-flight requests finish; new requests wait.
    case draining(reason: StopReason)
    /// Stop issued; memory counts as used until the process is gone.
    case stopping(reason: StopReason)
    /// Last start or run failed; no restart before `retryAt`.
    case failed(retryAt: Duration, detail: String)

    /// The four states users see in `/v1/models`.
    public var publicStatus: String {
        switch self {
        case .stopped, .stopping: "stopped"
        case .staging, .starting: "loading"
        case .ready, .draining: "ready"
        case .failed: "failed"
        }
    }

    /// Whether the runtime process may exist (or is about to, while its weights are staged) and
    /// hold its memory.
    public var holdsMemory: Bool {
        switch self {
        case .staging, .starting, .ready, .draining, .stopping: true
        case .stopped, .failed: false
        }
    }
}

struct Waiter: Equatable {
    /// nil for an operator's load request, which has no client behind it.
    var id: RequestID?
    var arrived: Duration
    var deadline: Duration
}

/// The Placer's book on one model. Public read-only views come through `ModelSnapshot`.
struct ModelState {
    /// Replaced by a reconfiguration; the rest of the book carries over.
    var spec: ModelSpec
    var phase: ModelPhase = .stopped
    var inFlight: Set<RequestID> = []
    /// Admitted requests whose runtime died under them: they wait only for their `finished`
    /// and do not hold the next instance.
    var orphaned: Set<RequestID> = []
    var waiters: [Waiter] = []
    var lastUsed: Duration = .zero
    var consecutiveFailures = 0
    /// The last failure was a start that never became ready (not a crash after serving): until
    /// its backoff passes, a request is answered with that failure at once rather than waiting
    /// for a restart likely to fail the same way (and evicting others for it).
    var failedToStart = false
    /// Set by an operator unload: keep draining until stopped even if nobody needs the memory.
    var operatorDrain = false
    var loads = 0
    /// Where the fastest whole copy of the weights is, as far as the Placer knows.
    var weights: WeightTier = .remote
    var hostCopy: HostCopy = .absent
    /// When the current (or last) runtime became ready, for `minResidency`.
    var readySince: Duration = .zero
    /// Largest footprint measured of the runtime that was the `measuredLoad`-th to become ready.
    var measuredBytes: UInt64?
    var measuredLoad = 0
    /// Draining or stopping because the configuration changed (removed, or restarting with a
    /// new command). Unlike an operator drain, a later `.load` does not undo it.
    var configDrain = false
    /// Gone from the configuration: new requests are unknown; forgotten once stopped.
    var removed = false

    /// Device memory accounted for this model: the measured footprint if `memoryBytes` was only
    /// an estimate and there is a measurement, otherwise `memoryBytes`.
    var memoryBytes: UInt64 {
        spec.memoryDeclared ? spec.memoryBytes : measuredBytes ?? spec.memoryBytes
    }

    /// Whether a reconcile may turn this model's drain back into ready.
    var drainIsRederived: Bool { !operatorDrain && !configDrain }
}

/// A read-only view for status endpoints and tests.
public struct ModelSnapshot: Sendable, Equatable {
    public var name: String
    public var device: String
    /// Accounted device memory: the measured footprint for a model whose memory was estimated,
    /// once measured; the configured `memoryBytes` otherwise.
    public var memoryBytes: UInt64
    /// Largest footprint measured of its latest runtime, declared or not; nil before any.
    public var measuredBytes: UInt64?
    public var phase: ModelPhase
    public var inFlight: Int
    public var waiting: Int
    public var lastUsed: Duration
    public var consecutiveFailures: Int
    public var loads: Int
    public var pinned: Bool
    public var weights: WeightTier
    public var hostCopy: HostCopy
    /// An operator's load (`PlacerEvent.load`) waits for it: for room, a priority, a residency.
    public var loadWaiting = false
}

public struct DeviceSnapshot: Sendable, Equatable {
    public var name: String
    public var budgetBytes: UInt64
    /// Accounted memory (see `ModelSnapshot.memoryBytes`) of every model whose runtime may exist
    /// (staging, starting, ready, draining, stopping), models removed but not yet stopped included.
    /// Above `budgetBytes` only after a measured footprint or a reconfiguration, while the rest
    /// is held by models that are busy, pinned, starting or already stopping.
    public var usedBytes: UInt64

    public init(name: String, budgetBytes: UInt64, usedBytes: UInt64) {
        self.name = name
        self.budgetBytes = budgetBytes
        self.usedBytes = usedBytes
    }
}
