import Testing
@testable import Placer

/// Seeded random runs of the router against a book the test keeps from what it told the
/// router, checking the invariants at every step. A failing seed reproduces exactly.
struct RoutingSimulationTests {
    typealias Random = PlacerSimulationTests.SplitMix64

    /// Keeps `target` requests in flight over `replicas` replicas, finishing at random.
    struct Traffic {
        var router: PrefixRouter
        var rng: Random
        var nextID: RequestID = 1
        var inFlight: [RequestID] = []
        var served: [String: Int] = [:]
        var reasons: [RouteReason: Int] = [:]

        mutating func send(_ chain: [UInt64], target: Int) -> RouteDecision? {
            if inFlight.count >= target {
                router.finish(inFlight.remove(at: rng.below(inFlight.count)))
            }
            guard let decision = router.route(nextID, chain) else { return nil }
            inFlight.append(nextID)
            nextID += 1
            served[decision.replica, default: 0] += 1
            reasons[decision.reason, default: 0] += 1
            return decision
        }
    }

    @Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64], RoutingPolicy.allCases)
    func invariantsHoldUnderRandomEvents(seed: UInt64, policy: RoutingPolicy) {
        var rng = Random(state: seed)
        let ids = (0..<5).map { "r\($0)" }
        let limits = ["r3": 3, "r4": 5]
        let maxBlocks = 200
        let ejectAfter = 3
        var router = Routing.router(
            5, policy: policy, maxBlocks: maxBlocks, hotSpot: 6, factor: 1.25, ejectAfter: ejectAfter,
            maxConcurrency: limits)

        // The book: what the router must report, derived only from what it was told.
        var healthy = Array(repeating: true, count: 5)
        var failures = Array(repeating: 0, count: 5)
        /// Replicas whose process must start first (`setStarting`).
        var starting = Array(repeating: false, count: 5)
        var inFlight = Array(repeating: 0, count: 5)
        var queued = Array(repeating: 0, count: 5)
        var requests: [RequestID: (replica: Int, work: Int)] = [:]
        var finished: [RequestID] = []
        var nextID: RequestID = 1
        var reasons: [RouteReason: Int] = [:]

        func check(_ step: Int) {
            let context = "seed \(seed) \(policy) step \(step)"
            #expect(router.inFlightRequests == requests.count, "\(context)")
            for (i, snapshot) in router.replicaSnapshots.enumerated() {
                #expect(snapshot.healthy == healthy[i] && snapshot.consecutiveFailures == failures[i], "\(context) \(ids[i])")
                #expect(snapshot.inFlight == inFlight[i] && snapshot.queuedWork == queued[i], "\(context) \(ids[i])")
                #expect(snapshot.inFlight >= 0 && snapshot.queuedWork >= 0, "\(context) \(ids[i])")
                let index = router.replicas[i].index
                #expect(index.count <= maxBlocks && index.allocatedSlots <= maxBlocks, "\(context) \(ids[i])")
                if step % 10 == 0, let problem = index.inconsistency {
                    Issue.record("\(context) \(ids[i]): \(problem)")
                }
            }
        }

        for step in 0..<3000 {
            let roll = rng.below(100)
            let replica = rng.below(5)
            if roll < 45, requests.count < 40 {
                let family = UInt64(rng.below(80))
                // Family 0 with no own blocks is a prompt shorter than one block.
                let chain = Routing.prompt(family: family, shared: Int(family % 24), own: rng.below(8), unique: nextID)
                let session = rng.below(5) == 0 ? "s\(rng.below(12))" : nil
                var excluded: Set<String> = []
                if rng.below(8) == 0 {
                    for id in ids where rng.below(3) == 0 { excluded.insert(id) }
                }
                let allowed = (0..<5).filter { healthy[$0] && !excluded.contains(ids[$0]) }
                let open = allowed.filter { inFlight[$0] < limits[ids[$0], default: .max] }
                let healthyCount = healthy.filter { $0 }.count
                let total = (0..<5).filter { healthy[$0] }.reduce(0) { $0 + inFlight[$1] }
                // ceil(1.25 × (total + 1) / healthy) in integers, independent of the router's arithmetic.
                let bound = healthyCount == 0 ? 0 : (5 * (total + 1) + 4 * healthyCount - 1) / (4 * healthyCount)
                let context = "seed \(seed) \(policy) step \(step)"

                switch router.choose(chain, session: session, excluding: excluded) {
                case .failure(let refusal):
                    let expected: RouteRefusal =
                        healthyCount == 0 ? .noHealthyReplica : allowed.isEmpty ? .allExcluded : .allSaturated
                    #expect(open.isEmpty && refusal == expected, "\(context): refused \(refusal), open \(open)")
                case .success(let decision):
                    let chosen = Int(decision.replica.dropFirst())!
                    let matched = router.replicas[chosen].index.matchedBlocks(chain)
                    #expect(open.contains(chosen), "\(context): \(decision.replica) is unhealthy, excluded or full")
                    #expect(decision.matchedBlocks == matched && decision.promptBlocks == chain.count, "\(context)")
                    if decision.reason == .coldConsistentHash || decision.reason == .sessionAffinity {
                        #expect(inFlight[chosen] < bound, "\(context): \(decision.reason) over the load bound \(bound)")
                    }
                    switch policy {
                    case .roundRobin, .leastLoaded:
                        let own: RouteReason = policy == .roundRobin ? .roundRobin : .leastLoaded
                        #expect([own, .sessionAffinity].contains(decision.reason), "\(context): \(decision.reason)")
                    case .prefixAffinity:
                        // A prompt held nowhere eligible is hashed whenever a replica is under the bound.
                        let cold = !chain.isEmpty && open.allSatisfy { router.replicas[$0].index.matchedBlocks(chain) == 0 }
                        if cold && decision.reason != .sessionAffinity {
                            let hashed = open.contains { inFlight[$0] < bound }
                            #expect(decision.reason == (hashed ? .coldConsistentHash : .leastLoaded), "\(context)")
                            // ...on a running replica whenever one is under the bound.
                            if open.contains(where: { !starting[$0] && inFlight[$0] < bound }) {
                                #expect(!starting[chosen], "\(context): a cold prefix started \(decision.replica)")
                            }
                        }
                    }
                    let sent = router.dispatch(nextID, to: decision, promptBlocks: chain)
                    #expect(sent, "\(context)")
                    requests[nextID] = (chosen, chain.count - matched)
                    inFlight[chosen] += 1
                    queued[chosen] += chain.count - matched
                    reasons[decision.reason, default: 0] += 1
                    nextID += 1
                }
            } else if roll < 75, let id = requests.keys.sorted().dropFirst(rng.below(max(1, requests.count))).first {
                // One release per request, whatever its outcome.
                let (on, work) = requests.removeValue(forKey: id)!
                let released = router.finish(id)
                #expect(released)
                inFlight[on] -= 1
                queued[on] -= work
                finished.append(id)
                if rng.below(4) == 0 {
                    let ejected = router.reportFailure(ids[on])
                    failures[on] += 1
                    let ejects = healthy[on] && failures[on] >= ejectAfter
                    if ejects { healthy[on] = false }
                    #expect(ejected == ejects, "seed \(seed) \(policy) step \(step)")
                } else {
                    router.reportSuccess(ids[on])
                    failures[on] = 0
                }
            } else if roll < 83 {
                router.markUnhealthy(ids[replica])
                healthy[replica] = false
            } else if roll < 91 {
                router.markHealthy(ids[replica])
                healthy[replica] = true
                failures[replica] = 0
            } else if roll < 94 {
                router.replicaRestarted(ids[replica])
                #expect(router.replica(ids[replica]).indexedBlocks == 0)
                starting[replica] = rng.below(2) == 0   // down until its new process is ready, or ready again
                router.setStarting(ids[replica], starting[replica])
            } else if roll < 97 {
                // Late or duplicate finishes (a cancel racing a completion) change nothing.
                let stale = finished.isEmpty || rng.below(4) == 0 ? nextID + 1000 : finished[rng.below(finished.count)]
                let released = router.finish(stale)
                #expect(!released)
            } else if let id = requests.keys.sorted().first {
                let again = router.dispatch(id, to: RouteDecision(
                    replica: ids[replica], matchedBlocks: 0, promptBlocks: 1, reason: .leastLoaded), promptBlocks: [7])
                #expect(!again, "a request in flight is not dispatched twice")
            }
            check(step)
        }

        for id in requests.keys.sorted() {
            let released = router.finish(id)
            #expect(released)
        }
        #expect(router.inFlightRequests == 0)
        for snapshot in router.replicaSnapshots {
            #expect(snapshot.inFlight == 0 && snapshot.queuedWork == 0, "seed \(seed) \(policy): \(snapshot)")
        }
        // The run exercised the paths it is meant to check.
        #expect(reasons[.sessionAffinity, default: 0] > 0)
        if policy == .prefixAffinity {
            #expect(reasons[.prefixHit, default: 0] > 0 && reasons[.coldConsistentHash, default: 0] > 0, "\(reasons)")
        }
    }

    /// Uniform traffic over many prefixes: every healthy replica keeps a fair share. One that
    /// comes back from an outage with an empty cache starts with less, since the others hold
    /// every prefix, and wins its share back as load sends it prefixes to learn.
    @Test(arguments: [11, 12, 13, 14] as [UInt64])
    func noHealthyReplicaStarvesUnderUniformTraffic(seed: UInt64) {
        var traffic = Traffic(router: Routing.router(4, maxBlocks: 4096), rng: Random(state: seed))
        let perPhase = 2000
        var phases: [[String: Int]] = []
        for phase in 0..<5 {
            if phase == 1 { traffic.router.markUnhealthy("r3") }
            if phase == 2 {
                traffic.router.replicaRestarted("r3")
                traffic.router.markHealthy("r3")
            }
            traffic.served = [:]
            for _ in 0..<perPhase {
                let family = UInt64(traffic.rng.below(300))
                let own = traffic.rng.below(5)
                let chain = Routing.prompt(family: family, shared: 4 + Int(family % 13), own: own, unique: traffic.nextID)
                let decision = traffic.send(chain, target: 24)
                #expect(decision != nil)
            }
            phases.append(traffic.served)
        }
        #expect(phases[1]["r3"] == nil, "seed \(seed): an unhealthy replica got traffic")
        for id in ["r0", "r1", "r2", "r3"] {
            #expect(phases[0][id, default: 0] >= perPhase / 8, "seed \(seed): \(id) starved: \(phases[0])")
            #expect(phases[2][id, default: 0] >= perPhase / 10, "seed \(seed): \(id) starved after r3's restart: \(phases[2])")
            #expect(phases[4][id, default: 0] >= perPhase / 8, "seed \(seed): \(id) starved later: \(phases[4])")
        }
        #expect(phases[4]["r3", default: 0] > phases[2]["r3", default: 0], "seed \(seed): r3 won nothing back: \(phases)")
    }

    /// Most traffic shares one long prefix, so long that its queued suffixes never outweigh
    /// recomputing it: without the hot-spot bound every such request would pile onto the first
    /// replica that held it. With it, the prefix spreads to every replica.
    @Test(arguments: [21, 22, 23] as [UInt64])
    func hotPrefixSpreadsOverReplicas(seed: UInt64) {
        var traffic = Traffic(router: Routing.router(4, hotSpot: 4), rng: Random(state: seed))
        let hotPrefix = Routing.prompt(family: 0, shared: 200)
        // Warm one replica first: requests that arrive while the first is still computing the
        // prefix see its queued work and spread anyway.
        traffic.router.route(0, hotPrefix)
        traffic.router.finish(0)
        var hotServed: [String: Int] = [:]
        for _ in 0..<3000 {
            let hot = traffic.rng.below(10) < 7
            let family = hot ? 0 : UInt64(1 + traffic.rng.below(200))
            let chain = Routing.prompt(
                family: family, shared: hot ? 200 : 16, own: 1 + traffic.rng.below(3), unique: traffic.nextID)
            let decision = traffic.send(chain, target: 24)!
            if hot { hotServed[decision.replica, default: 0] += 1 }
        }
        for id in ["r0", "r1", "r2", "r3"] {
            #expect(traffic.router.replicas[traffic.router.position[id]!].index.matchedBlocks(hotPrefix) == 200,
                    "seed \(seed): \(id) never learned the hot prefix")
            #expect(hotServed[id, default: 0] >= hotServed.values.reduce(0, +) / 8, "seed \(seed): \(hotServed)")
        }
        #expect(traffic.reasons[.hotSpotSpill, default: 0] > 0)
    }
}
