/// What the Placer knows about the machine and the models. Built by the executable from the
/// config file (or by tests directly); every field has a documented default there.
public struct PlacerConfiguration: Sendable, Equatable {
    public var devices: [DeviceSpec]
    public var models: [ModelSpec]
    /// Longest a runtime may take from start to healthy before it is stopped as failed.
    public var loadTimeout: Duration
    /// Longest a request may wait to be admitted (for a load, a swap or a restart) before a 503.
    public var queueTimeout: Duration
    /// Restart backoff after a runtime failed: `initial * 2^(failures-1)`, capped at `max`.
    public var restartBackoffInitial: Duration
    public var restartBackoffMax: Duration
    /// Host RAM for staged weight files, those of running models included. 0 turns host staging
    /// off: every model starts from the NVMe store or its source.
    public var hostWeightsBudget: UInt64
    /// Read throughput per tier, for reload-cost estimates.
    public var tierBandwidth: TierBandwidth
    /// Longest a staging into host RAM may take before it is abandoned as failed.
    public var stageTimeout: Duration

    public init(
        devices: [DeviceSpec],
        models: [ModelSpec],
        loadTimeout: Duration = .seconds(120),
        queueTimeout: Duration = .seconds(120),
        restartBackoffInitial: Duration = .seconds(1),
        restartBackoffMax: Duration = .seconds(30),
        hostWeightsBudget: UInt64 = 0,
        tierBandwidth: TierBandwidth = TierBandwidth(),
        stageTimeout: Duration = .seconds(1800)
    ) {
        self.devices = devices
        self.models = models
        self.loadTimeout = loadTimeout
        self.queueTimeout = queueTimeout
        self.restartBackoffInitial = restartBackoffInitial
        self.restartBackoffMax = restartBackoffMax
        self.hostWeightsBudget = hostWeightsBudget
        self.tierBandwidth = tierBandwidth
        self.stageTimeout = stageTimeout
    }
}

/// A memory pool that models are loaded into: a GPU, or host RAM for CPU runtimes.
public struct DeviceSpec: Sendable, Equatable {
    public var name: String
    public var memoryBytes: UInt64

    public init(name: String, memoryBytes: UInt64) {
        self.name = name
        self.memoryBytes = memoryBytes
    }
}

/// A model whose runtime Strata starts and stops.
public struct ModelSpec: Sendable, Equatable {
    public var name: String
    public var device: String
    public var memoryBytes: UInt64
    /// Unload after this long without requests; nil keeps it loaded until evicted.
    public var ttl: Duration?
    /// A pinned model is never evicted to make room for another.
    public var pinned: Bool
    /// Most requests that may wait for this model at once; the next is refused with a 503.
    public var maxQueued: Int
    /// Size of the weight files, for reload-cost estimates and the host-weights budget.
    public var weightBytes: UInt64
    /// Time the runtime takes to start beyond reading its weights (estimated or measured).
    public var startSeconds: Double
    /// Whether this model's weights are staged into host RAM before a start; false starts the
    /// runtime directly from the NVMe store or the source.
    public var stagesWeights: Bool
    /// Higher is more important. Making room for a model never evicts one of higher priority;
    /// among the models it may evict, lower priority goes first. Default 0.
    public var priority: Int
    /// Once ready, the model is not evicted to make room for another before this long has
    /// passed (it may still stop for its ttl, an operator unload, a configuration change or a
    /// device over budget). Keeps a swap from undoing itself at once. Default zero.
    public var minResidency: Duration
    /// Whether `memoryBytes` was declared by the operator (true, the default) or is an estimate.
    /// The footprint of an estimated model is replaced by the driver's measurement
    /// (`PlacerEvent.footprintMeasured`) once there is one; a declared one is only reported.
    public var memoryDeclared: Bool
    /// The model this is one replica of (`replicas: N`, named `model#i`); nil for a model of
    /// one process. Replicas of one model never evict each other: a start that stops a sibling
    /// adds no capacity and throws away what the sibling had cached.
    public var replicaOf: String?

    public init(
        name: String, device: String, memoryBytes: UInt64, ttl: Duration? = nil,
        pinned: Bool = false, maxQueued: Int = 256, weightBytes: UInt64 = 0, startSeconds: Double = 1,
        stagesWeights: Bool = false, priority: Int = 0, minResidency: Duration = .zero, memoryDeclared: Bool = true,
        replicaOf: String? = nil
    ) {
        self.name = name
        self.device = device
        self.memoryBytes = memoryBytes
        self.ttl = ttl
        self.pinned = pinned
        self.maxQueued = maxQueued
        self.weightBytes = weightBytes
        self.startSeconds = startSeconds
        self.stagesWeights = stagesWeights
        self.priority = priority
        self.minResidency = minResidency
        self.memoryDeclared = memoryDeclared
        self.replicaOf = replicaOf
    }
}
