/// How the prefix router chooses among the replicas of one model. Built by the executable from
/// the config file (or by tests directly); the defaults are documented here.
public struct PrefixRouterConfiguration: Sendable, Equatable {
    /// Replicas in a fixed order; IDs must be unique. Replicas that are down stay listed, marked
    /// unhealthy; managed ones whose process is not running, marked starting (`setStarting`).
    public var replicas: [ReplicaSpec]
    public var policy: RoutingPolicy
    /// Block hashes remembered per replica. Sized near the replica's KV cache in blocks: much
    /// larger remembers prefixes the replica has long evicted, much smaller forgets ones it has.
    public var maxBlocksPerReplica: Int
    /// A replica with this many requests in flight is a hot spot: a request whose prefix it
    /// holds goes to the next best replica with fewer, which then holds that prefix too. Prefill
    /// work alone would let a popular, fully cached prefix pile every request onto one replica,
    /// because cached requests add almost no prefill work while still taking decode slots.
    public var hotSpotQueueBound: Int
    /// Consistent hashing with bounded loads for cold prefixes: a replica is skipped once its
    /// in-flight requests would exceed `ceil(factor × (total + 1) / healthy)`. At least 1, so
    /// some healthy replica is always under the bound. Lower spreads cold prefixes more evenly;
    /// higher keeps more of them where every router's hash puts them.
    public var loadBoundFactor: Double
    /// Consecutive failures after which a replica is ejected until marked healthy again.
    public var ejectAfterFailures: Int
    /// Work, in prompt blocks, that each request in flight costs a replica beyond the blocks it
    /// prefills: its decode and its hold on a slot. Without it a fully cached prefix adds no
    /// work, and every request for a popular tenant piles onto one replica while others idle;
    /// with it, once a replica's queue outweighs recomputing the prefix elsewhere, the request
    /// goes elsewhere and that replica then holds the prefix too. 0 counts prefill alone.
    public var requestCostBlocks: Int
    /// What loading a stored prefix costs against computing it (llama-server restores a slot's
    /// KV in tens of milliseconds where computing it takes seconds; copying it in from the store
    /// is the larger part). Counted as at least one block.
    public var restoreCostFraction: Double
    /// What starting a replica's process costs, in prompt blocks, while it is not running (a
    /// managed replica that is stopped, has crashed or is still loading: `setStarting`). Large
    /// by default, a start taking longer than computing a long prompt: a replica not running is
    /// chosen only where every running one is at the load bound (a cold prefix) or a hot spot,
    /// so a crashed replica's traffic goes to the running ones while it restarts, and a request
    /// does not wait for a start that a running replica with room would spare it.
    public var startCostBlocks: Int

    public init(
        replicas: [ReplicaSpec],
        policy: RoutingPolicy = .prefixAffinity,
        maxBlocksPerReplica: Int = 65_536,
        hotSpotQueueBound: Int = 16,
        loadBoundFactor: Double = 1.25,
        ejectAfterFailures: Int = 3,
        requestCostBlocks: Int = 0,
        restoreCostFraction: Double = 0.05,
        startCostBlocks: Int = 256
    ) {
        self.startCostBlocks = startCostBlocks
        self.restoreCostFraction = restoreCostFraction
        self.replicas = replicas
        self.policy = policy
        self.maxBlocksPerReplica = maxBlocksPerReplica
        self.hotSpotQueueBound = hotSpotQueueBound
        self.loadBoundFactor = loadBoundFactor
        self.ejectAfterFailures = ejectAfterFailures
        self.requestCostBlocks = requestCostBlocks
    }
}

/// One runtime instance that can serve the model: an upstream URL to the Frontend, an ID here.
public struct ReplicaSpec: Sendable, Equatable {
    /// Stable across restarts and across the routers of a fleet: cold prefixes are hashed to it.
    public var id: String
    /// Most requests in flight at once (the runtime's slots); nil for no limit. A saturated
    /// replica is not chosen.
    public var maxConcurrency: Int?

    public init(id: String, maxConcurrency: Int? = nil) {
        self.id = id
        self.maxConcurrency = maxConcurrency
    }
}

public enum RoutingPolicy: String, Sendable, Equatable, CaseIterable {
    /// Least expected work: uncached prompt blocks plus work already queued on the replica.
    case prefixAffinity
    /// Replicas in turn; the baseline that prefix affinity is measured against.
    case roundRobin
    /// Fewest requests in flight, ignoring prefixes.
    case leastLoaded
}
