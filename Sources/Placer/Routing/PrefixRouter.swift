/// Chooses the replica for each request of one model, preferring the replica that already
/// holds the prompt's prefix in its KV cache unless load says otherwise.
///
/// Pure, like `Placer`: no I/O, no clock, no locks. The Frontend hashes each prompt into chain
/// hashes (block i's hash covers blocks 0...i), asks `choose`, then reports what it did:
/// `dispatch` when the request is sent, `finish` exactly once when it is over, and the
/// replica's health as it learns it. A choice is a query; only reports change the router, so a
/// choice that is never dispatched leaves no trace.
///
/// Invariants, checked by the simulation tests:
/// - never chooses an unhealthy, excluded or saturated replica;
/// - a cold prefix lands on a replica whose in-flight count stays within the load bound,
///   whenever any eligible replica is under it;
/// - in-flight counts and queued work never go negative and return to zero once every
///   dispatched request has finished;
/// - no replica's index holds more than `maxBlocksPerReplica` blocks.
public struct PrefixRouter: Sendable {
    public private(set) var configuration: PrefixRouterConfiguration
    var replicas: [ReplicaState]
    var position: [String: Int] = [:]
    /// Requests dispatched and not yet finished: what each added to its replica.
    var dispatched: [RequestID: Dispatch] = [:]
    /// Where the round-robin policy looks first; moves past each dispatched replica.
    var nextTurn = 0

    public init(configuration: PrefixRouterConfiguration) {
        precondition(configuration.maxBlocksPerReplica > 0, "maxBlocksPerReplica must be positive")
        precondition(configuration.hotSpotQueueBound > 0, "hotSpotQueueBound must be positive")
        precondition(configuration.loadBoundFactor >= 1, "loadBoundFactor below 1 can leave no replica under the bound")
        precondition(configuration.ejectAfterFailures > 0, "ejectAfterFailures must be positive")
        self.configuration = configuration
        replicas = configuration.replicas.map { spec in
            precondition((spec.maxConcurrency ?? 1) > 0, "replica \(spec.id): maxConcurrency must be positive")
            return ReplicaState(spec: spec, capacity: configuration.maxBlocksPerReplica)
        }
        for (offset, spec) in configuration.replicas.enumerated() {
            precondition(position.updateValue(offset, forKey: spec.id) == nil, "replica \(spec.id) listed twice")
        }
    }

    /// The replica for a prompt whose chain hashes are `chain`.
    ///
    /// - Parameters:
    ///   - session: sticks the request to the session's replica (rendezvous-hashed, so every
    ///     router agrees) while that replica is healthy, unsaturated and under the load bound.
    ///     Checked before the policy.
    ///   - excluded: replicas already tried for this request (a retry elsewhere).
    ///   - restorable: leading blocks of the chain whose KV cache a store holds and any replica
    ///     can load instead of computing (llama-server slot restore), at `restoreCost` of
    ///     computing them. Prefix affinity weighs it like a cached prefix on every replica, so a
    ///     busy holder of a prefix loses to an idle replica that restores it.
    ///   - held: leading blocks of the chain that a replica is known to hold, by ID, where the
    ///     caller knows it exactly (the slots of replicas it pins requests to). Takes the place
    ///     of that replica's index, which remembers what was routed there, not what the
    ///     runtime's few slots still hold.
    ///   - computing: of `held`, leading blocks of the chain that a request in flight on the
    ///     replica is computing now, by ID, where this request would wait for that one and
    ///     reuse them. They are queued work on the replica that is not in this request's way
    ///     (it would compute them itself anywhere else), so prefix affinity does not count them
    ///     (at most that replica's queued work).
    public func choose(
        _ chain: [UInt64], session: String? = nil, excluding excluded: Set<String> = [], restorable: Int = 0,
        held: [String: Int] = [:], computing: [String: Int] = [:]
    ) -> Result<RouteDecision, RouteRefusal> {
        var healthy: [Int] = []
        healthy.reserveCapacity(replicas.count)   // (one allocation: `filter` grows its array as it goes)
        for replica in replicas.indices where replicas[replica].healthy { healthy.append(replica) }
        guard !healthy.isEmpty else { return .failure(.noHealthyReplica) }
        // (The same array where nothing is filtered out: no copy on every request.)
        let allowed = excluded.isEmpty ? healthy : healthy.filter { !excluded.contains(replicas[$0].spec.id) }
        guard !allowed.isEmpty else { return .failure(.allExcluded) }
        let candidates = allowed.contains { replicas[$0].saturated } ? allowed.filter { !replicas[$0].saturated } : allowed
        guard !candidates.isEmpty else { return .failure(.allSaturated) }
        let bound = loadBound(healthy: healthy)
        // A replica whose process must start first (stopped, crashed, loading) would hold the
        // request for its start: while a running one is under the load bound, the session's home,
        // the round-robin turn and the least loaded are taken among the running ones. (Prefix
        // affinity weighs the start in its cost instead.)
        var ready = candidates
        if candidates.contains(where: { replicas[$0].starting }) {
            let running = candidates.filter { !replicas[$0].starting && replicas[$0].inFlight < bound }
            if !running.isEmpty { ready = running }
        }

        if let session {
            let key = StableHash.string(session)
            // Among `allowed`, not `candidates`: a saturated session replica should make the
            // request look elsewhere, not move the session's home.
            let home = allowed.min { ranks($0, before: $1, key: key) }!
            if !replicas[home].saturated && replicas[home].inFlight < bound && ready.contains(home) {
                return .success(decision(home, chain, .sessionAffinity, held: held))
            }
        }

        let key = chain.first ?? 0
        switch configuration.policy {
        case .roundRobin:
            let eligible = Set(ready)
            let turn = (0..<replicas.count).lazy.map { (nextTurn + $0) % replicas.count }.first(where: eligible.contains)!
            return .success(decision(turn, chain, .roundRobin, held: held))
        case .leastLoaded:
            return .success(decision(leastLoaded(ready, key: key), chain, .leastLoaded, held: held))
        case .prefixAffinity:
            return .success(prefixAffinity(
                chain, candidates: candidates, bound: bound, restorable: min(restorable, chain.count), held: held,
                computing: computing))
        }
    }
}

/// The router's book on one replica. Public read-only views come through `ReplicaSnapshot`.
struct ReplicaState: Sendable {
    let spec: ReplicaSpec
    /// Its ID's stable hash, computed once: every cold choice ranks all replicas by it.
    let idHash: UInt64
    var index: PrefixIndex
    var healthy = true
    var consecutiveFailures = 0
    var inFlight = 0
    var queuedWork = 0
    /// Its process is not running (`setStarting`): a start stands before any work there.
    var starting = false

    init(spec: ReplicaSpec, capacity: Int) {
        self.spec = spec
        idHash = StableHash.string(spec.id)
        index = PrefixIndex(capacity: capacity)
    }

    var saturated: Bool { spec.maxConcurrency.map { inFlight >= $0 } ?? false }
}

/// What one dispatched request added to its replica, released as is by `finish`.
struct Dispatch: Sendable {
    var replica: Int
    var work: Int
    /// What the index expected the replica to hold of the prompt, for `reportCached`.
    var expectedFraction = 0.0
    /// The block recorded just before the deepest expected one, before this dispatch moved it,
    /// and when it was recorded.
    var colder: (hash: UInt64, stamp: UInt64)?
}
