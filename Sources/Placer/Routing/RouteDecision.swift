/// Where one request goes, and why: the reason and match feed the Frontend's metrics, so a
/// policy's cache hit rate can be compared with round-robin on the same traffic.
public struct RouteDecision: Sendable, Equatable {
    public var replica: String
    /// Leading prompt blocks the chosen replica is believed to hold.
    public var matchedBlocks: Int
    public var promptBlocks: Int
    public var reason: RouteReason
    /// Leading blocks to restore from the store into the chosen replica before sending (0: none).
    public var restoreBlocks: Int

    public init(replica: String, matchedBlocks: Int, promptBlocks: Int, reason: RouteReason, restoreBlocks: Int = 0) {
        self.replica = replica
        self.matchedBlocks = matchedBlocks
        self.promptBlocks = promptBlocks
        self.reason = reason
        self.restoreBlocks = restoreBlocks
    }

    /// 0 for a prompt shorter than one block.
    public var matchedFraction: Double {
        promptBlocks == 0 ? 0 : Double(matchedBlocks) / Double(promptBlocks)
    }
}

public enum RouteReason: String, Sendable, Equatable, CaseIterable {
    /// Least expected work, on a replica that holds part of the prompt.
    case prefixHit
    /// No eligible replica holds any of the prompt: placed by rendezvous hashing of the first
    /// block under the load bound, so routers on other hosts place it alike.
    case coldConsistentHash
    /// The best replica for the prefix is a hot spot; the next best takes it and learns it.
    case hotSpotSpill
    /// Least expected work on a replica that loads the prefix's stored KV cache instead of
    /// computing it (see `choose(_:session:excluding:restorable:)`).
    case restoredPrefix
    /// The session's replica, healthy and under the load bound.
    case sessionAffinity
    /// Least work or fewest requests, prefixes aside: the policy, an empty prompt, load that
    /// outweighed a match, or every replica over the load bound.
    case leastLoaded
    case roundRobin
}

/// Why no replica was chosen. Expected outcomes, not errors: the gateway maps each to a 503
/// (or, for `allExcluded`, gives up retrying and returns the last attempt's error).
public enum RouteRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    case noHealthyReplica
    /// Every healthy replica was excluded by the caller (already tried for this request).
    case allExcluded
    /// Every healthy, non-excluded replica is at its `maxConcurrency`.
    case allSaturated

    public var description: String {
        switch self {
        case .noHealthyReplica: "no healthy replica"
        case .allExcluded: "every healthy replica was already tried"
        case .allSaturated: "every healthy replica is at its concurrency limit"
        }
    }
}

/// A read-only view of one replica for status endpoints, metrics and tests.
public struct ReplicaSnapshot: Sendable, Equatable {
    public var id: String
    public var healthy: Bool
    public var consecutiveFailures: Int
    public var inFlight: Int
    /// Uncached prompt blocks of the requests in flight.
    public var queuedWork: Int
    /// Block hashes in its prefix index.
    public var indexedBlocks: Int
    public var maxConcurrency: Int?
    /// Its process must start before it serves (`PrefixRouter.setStarting`).
    public var starting = false
}
