@testable import Placer

/// Prompts and routers for the routing tests.
enum Routing {
    /// Chain hashes of a prompt whose blocks have the contents `blocks`, each hashed with its
    /// parent's hash as the Frontend does with XXH3: prompts that share leading blocks share
    /// leading hashes, and nothing else.
    static func chain(_ blocks: [UInt64]) -> [UInt64] {
        var parent: UInt64 = 0
        return blocks.map { block in
            parent = StableHash.mix(parent ^ StableHash.mix(block))
            return parent
        }
    }

    /// A prompt of `shared` blocks common to everything from `family`, then `own` blocks seen
    /// nowhere else (`unique` picks them).
    static func prompt(family: UInt64, shared: Int, own: Int = 0, unique: UInt64 = 0) -> [UInt64] {
        let head = (0..<UInt64(shared)).map { family << 32 | $0 }
        let tail = (0..<UInt64(own)).map { 1 << 63 | unique << 16 | $0 }
        return chain(head + tail)
    }

    static func router(
        _ count: Int, policy: RoutingPolicy = .prefixAffinity, maxBlocks: Int = 1024, hotSpot: Int = 16,
        factor: Double = 1.25, ejectAfter: Int = 3, maxConcurrency: [String: Int] = [:], requestCost: Int = 0
    ) -> PrefixRouter {
        let replicas = (0..<count).map { ReplicaSpec(id: "r\($0)", maxConcurrency: maxConcurrency["r\($0)"]) }
        return PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: replicas, policy: policy, maxBlocksPerReplica: maxBlocks, hotSpotQueueBound: hotSpot,
            loadBoundFactor: factor, ejectAfterFailures: ejectAfter, requestCostBlocks: requestCost))
    }
}

extension PrefixRouter {
    /// Chooses and dispatches as the Frontend does; nil when refused.
    @discardableResult
    mutating func route(
        _ id: RequestID, _ chain: [UInt64], session: String? = nil, excluding: Set<String> = []
    ) -> RouteDecision? {
        guard case .success(let decision) = choose(chain, session: session, excluding: excluding) else { return nil }
        let sent = dispatch(id, to: decision, promptBlocks: chain)
        precondition(sent, "request \(id) dispatched twice")
        return decision
    }

    func replica(_ id: String) -> ReplicaSnapshot { snapshot(of: id)! }
}
