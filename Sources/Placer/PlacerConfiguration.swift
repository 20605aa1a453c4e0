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

    public init(
        devices: [DeviceSpec],
        models: [ModelSpec],
        loadTimeout: Duration = .seconds(120),
        queueTimeout: Duration = .seconds(120),
        restartBackoffInitial: Duration = .seconds(1),
        restartBackoffMax: Duration = .seconds(30)
    ) {
        self.devices = devices
        self.models = models
        self.loadTimeout = loadTimeout
        self.queueTimeout = queueTimeout
        self.restartBackoffInitial = restartBackoffInitial
        self.restartBackoffMax = restartBackoffMax
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

    public init(
        name: String, device: String, memoryBytes: UInt64, ttl: Duration? = nil,
        pinned: Bool = false, maxQueued: Int = 256
    ) {
        self.name = name
        self.device = device
        self.memoryBytes = memoryBytes
        self.ttl = ttl
        self.pinned = pinned
        self.maxQueued = maxQueued
    }
}
