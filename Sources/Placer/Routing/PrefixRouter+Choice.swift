/// The choice itself: prefix affinity and the tie-breaks and bounds all policies share.
extension PrefixRouter {
    private struct Scored {
        var replica: Int
        var matched: Int
        /// Expected prefill work if sent there: its uncached blocks plus the replica's queue.
        var cost: Int
        /// It would load a stored prefix (`restorable`) rather than compute it.
        var restores = false
    }

    /// Least expected work: the prompt blocks a replica would compute plus the uncached blocks
    /// already queued on it and `requestCostBlocks` per request in flight there, so a long
    /// match outweighs a short queue and a long queue outweighs a short match. Ties go to the
    /// deeper match, then to fewer requests, then to the first block's rendezvous order. A
    /// prompt held nowhere eligible is placed by consistent hashing instead, and a request
    /// whose best replica is a hot spot goes to the next best.
    func prefixAffinity(
        _ chain: [UInt64], candidates: [Int], bound: Int, restorable: Int = 0, held: [String: Int] = [:],
        computing: [String: Int] = [:]
    ) -> RouteDecision {
        guard let key = chain.first else {
            return decision(leastLoaded(candidates, key: 0), chain, .leastLoaded, held: held)
        }
        // Loading a stored prefix costs a fraction of computing it (at least one block).
        let restoreCost = restorable > 0 ? max(1, Int(Double(restorable) * configuration.restoreCostFraction) + 1) : 0
        let scored = candidates.map { replica in
            var matched = matchedBlocks(chain, on: replica, held: held)
            // (Less what a request in flight there computes for this one: see `choose`.)
            let shared = computing.isEmpty ? 0 : min(max(computing[replicas[replica].spec.id] ?? 0, 0), replicas[replica].queuedWork)
            let queue = replicas[replica].queuedWork - shared + replicas[replica].inFlight * configuration.requestCostBlocks
            var extra = 0
            let restores = restorable - restoreCost > matched
            if restores { (matched, extra) = (restorable, restoreCost) }
            let start = replicas[replica].starting ? configuration.startCostBlocks : 0
            return Scored(replica: replica, matched: matched, cost: chain.count - matched + queue + extra + start,
                          restores: restores)
        }
        func made(_ chosen: Scored, _ reason: RouteReason) -> RouteDecision {
            let restore = chosen.restores
            return RouteDecision(
                replica: replicas[chosen.replica].spec.id, matchedBlocks: chosen.matched, promptBlocks: chain.count,
                reason: restore ? .restoredPrefix : reason, restoreBlocks: restore ? restorable : 0)
        }
        if scored.allSatisfy({ $0.matched == 0 }) {
            // Seen nowhere: every router on every host ranks replicas alike for this first
            // block, so the prefix gathers on one replica without coordination. Each router
            // bounds only the load it sees itself. A replica that must start first is chosen
            // only when no running one is under the bound.
            let ranked = candidates.sorted { ranks($0, before: $1, key: key) }
            if let home = ranked.first(where: { replicas[$0].inFlight < bound && !replicas[$0].starting })
                ?? ranked.first(where: { replicas[$0].inFlight < bound })
            {
                return RouteDecision(
                    replica: replicas[home].spec.id, matchedBlocks: 0, promptBlocks: chain.count,
                    reason: .coldConsistentHash)
            }
            // Only when the replicas under the bound are excluded or saturated.
            return decision(leastLoaded(candidates, key: key), chain, .leastLoaded, held: held)
        }

        func better(_ a: Scored, _ b: Scored) -> Bool {
            if a.cost != b.cost { return a.cost < b.cost }
            if a.matched != b.matched { return a.matched > b.matched }
            let (loadA, loadB) = (replicas[a.replica].inFlight, replicas[b.replica].inFlight)
            if loadA != loadB { return loadA < loadB }
            return ranks(a.replica, before: b.replica, key: key)
        }
        let best = scored.min(by: better)!
        let hotSpot = configuration.hotSpotQueueBound
        if best.matched > 0, replicas[best.replica].inFlight >= hotSpot,
            let spill = scored.filter({ $0.replica != best.replica && replicas[$0.replica].inFlight < hotSpot })
                .min(by: better)
        {
            return made(spill, .hotSpotSpill)
        }
        return made(best, best.matched > 0 ? .prefixHit : .leastLoaded)
    }

    /// Fewest requests, then least queued work, then the key's rendezvous order, so that
    /// routers that see the same loads agree.
    func leastLoaded(_ candidates: [Int], key: UInt64) -> Int {
        candidates.min { a, b in
            if replicas[a].inFlight != replicas[b].inFlight { return replicas[a].inFlight < replicas[b].inFlight }
            if replicas[a].queuedWork != replicas[b].queuedWork { return replicas[a].queuedWork < replicas[b].queuedWork }
            return ranks(a, before: b, key: key)
        }!
    }

    /// Whether replica `a` comes before `b` in `key`'s rendezvous order. IDs break the
    /// (astronomically rare) equal scores, not list positions, which may differ between hosts.
    func ranks(_ a: Int, before b: Int, key: UInt64) -> Bool {
        let scoreA = StableHash.rendezvous(key: key, replica: replicas[a].idHash)
        let scoreB = StableHash.rendezvous(key: key, replica: replicas[b].idHash)
        return scoreA != scoreB ? scoreA > scoreB : replicas[a].spec.id < replicas[b].spec.id
    }

    /// Most requests a replica may have in flight and still take a cold prefix or a session:
    /// `ceil(factor × (total + placing) / healthy)`, counting the request being placed (`placing`
    /// 1; 0 for one already dispatched, and so counted). With a factor of at least 1, the least
    /// loaded healthy replica is always under it.
    func loadBound(healthy: [Int], placing: Int = 1) -> Int {
        let total = healthy.reduce(0) { $0 + replicas[$1].inFlight }
        let bound = configuration.loadBoundFactor * Double(total + placing) / Double(healthy.count)
        // Ceiling by hand: `rounded(.up)` calls libm's ceil, which this module does not link.
        let whole = Int(bound)
        return Double(whole) < bound ? whole + 1 : whole
    }

    /// What `replica` holds of `chain`: as the caller knows it (`held`), else as its index expects.
    func matchedBlocks(_ chain: [UInt64], on replica: Int, held: [String: Int]) -> Int {
        if !held.isEmpty, let known = held[replicas[replica].spec.id] { return min(max(known, 0), chain.count) }
        return replicas[replica].index.matchedBlocks(chain)
    }

    func decision(_ replica: Int, _ chain: [UInt64], _ reason: RouteReason, held: [String: Int] = [:]) -> RouteDecision {
        RouteDecision(
            replica: replicas[replica].spec.id, matchedBlocks: matchedBlocks(chain, on: replica, held: held),
            promptBlocks: chain.count, reason: reason)
    }
}
