import Testing
@testable import Placer

/// Routing choices as tables: a router in a known state, a prompt, and the expected decision.
struct RoutingTableTests {
    static func other(_ id: String) -> String { id == "r0" ? "r1" : "r0" }

    @Test func prefixHitBeatsCold() {
        var router = Routing.router(4)
        let system = Routing.prompt(family: 1, shared: 12)
        let first = router.route(1, system)!
        #expect(first.reason == .coldConsistentHash)
        #expect(first.matchedBlocks == 0)

        let followUp = Routing.prompt(family: 1, shared: 12, own: 4, unique: 2)
        let hit = RouteDecision(replica: first.replica, matchedBlocks: 12, promptBlocks: 16, reason: .prefixHit)
        // While the first is in flight its 12 queued blocks tie with recomputing the prefix
        // anywhere else, and the deeper match wins the tie.
        #expect(router.choose(followUp) == .success(hit))
        router.finish(1)
        #expect(router.choose(followUp) == .success(hit))
        #expect(hit.matchedFraction == 0.75)
    }

    /// A reload that changes the replica set builds a new router, which takes over what the old
    /// one knew of the replicas both have: their requests in flight (released by the same IDs),
    /// health, failure runs and indexes. A new replica starts fresh; a removed one's requests
    /// end in the old router only.
    @Test func aRouterTakesOverTheReplicasItSharesWithTheOneItReplaces() {
        var old = Routing.router(2, requestCost: 0)   // r0, r1
        let r0 = RouteDecision(replica: "r0", matchedBlocks: 0, promptBlocks: 5, reason: .leastLoaded)
        let r1 = RouteDecision(replica: "r1", matchedBlocks: 0, promptBlocks: 3, reason: .leastLoaded)
        old.dispatch(1, to: r0, promptBlocks: Routing.prompt(family: 1, shared: 5))
        old.dispatch(2, to: r1, promptBlocks: Routing.prompt(family: 2, shared: 3))
        old.dispatch(3, to: r1, promptBlocks: Routing.prompt(family: 3, shared: 3))
        old.reportFailure("r1")
        old.reportFailure("r1")
        old.reportFailure("r1")   // ejected
        var new = PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: [ReplicaSpec(id: "r1"), ReplicaSpec(id: "r2")], policy: .prefixAffinity, maxBlocksPerReplica: 1024))
        new.takeOver(from: old)
        #expect(new.replica("r1").inFlight == 2 && new.replica("r1").queuedWork == 6)
        #expect(!new.replica("r1").healthy && new.replica("r1").consecutiveFailures == 3)
        #expect(new.replica("r1").indexedBlocks == 6, "its index came along")
        #expect(new.replica("r2") == ReplicaSnapshot(id: "r2", healthy: true, consecutiveFailures: 0, inFlight: 0, queuedWork: 0,
                                                     indexedBlocks: 0, maxConcurrency: nil))
        #expect(new.inFlightRequests == 2, "r0's request is not r1's or r2's")
        let finished = [new.finish(1), new.finish(2), new.finish(3)]
        #expect(finished == [false, true, true])
        #expect(new.replica("r1").inFlight == 0 && new.replica("r1").queuedWork == 0)
        // a different index bound: the index is not carried (the load still is)
        var bounded = PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: [ReplicaSpec(id: "r1")], policy: .prefixAffinity, maxBlocksPerReplica: 4))
        bounded.takeOver(from: old)
        #expect(bounded.replica("r1").indexedBlocks == 0 && bounded.replica("r1").inFlight == 2)
    }

    /// Expected work decides: a match is worth its length in blocks, queued work on the
    /// replica counts against it.
    @Test(arguments: [
        (matched: 2, queued: 20, staysHome: false),
        (matched: 20, queued: 20, staysHome: true),    // tie on work, the deeper match wins
        (matched: 19, queued: 20, staysHome: false),
        (matched: 30, queued: 20, staysHome: true),
        (matched: 2, queued: 1, staysHome: true),
    ])
    func loadOutweighsAShortMatch(matched: Int, queued: Int, staysHome: Bool) {
        var router = Routing.router(2)
        let home = router.route(1, Routing.prompt(family: 1, shared: matched))!.replica
        router.finish(1)
        // Unrelated work queued on the home replica.
        router.dispatch(2, to: RouteDecision(replica: home, matchedBlocks: 0, promptBlocks: queued, reason: .leastLoaded),
                        promptBlocks: Routing.prompt(family: 2, shared: queued))
        #expect(router.replica(home).queuedWork == queued)

        let decision = try! router.choose(Routing.prompt(family: 1, shared: matched, own: 10)).get()
        #expect(decision.replica == (staysHome ? home : Self.other(home)))
        #expect(decision.reason == (staysHome ? .prefixHit : .leastLoaded))
        #expect(decision.matchedBlocks == (staysHome ? matched : 0))
    }

    /// Each request in flight costs its replica `requestCost` blocks beyond its prefill: a
    /// cached prefix stays home while the home's queue is cheaper than recomputing the prefix
    /// elsewhere, and goes elsewhere (which then holds it too) once it is not.
    @Test(arguments: [
        // 13-block prompt, 12 cached at home. Home costs 1 + inFlight × (1 uncached + cost),
        // the other replica 13.
        (inFlight: 1, requestCost: 4, staysHome: true),     // 6 < 13
        (inFlight: 2, requestCost: 4, staysHome: true),     // 11 < 13
        (inFlight: 3, requestCost: 4, staysHome: false),    // 16 > 13
        (inFlight: 6, requestCost: 0, staysHome: true),     // prefill alone: 7 < 13, it piles up at home
    ])
    func requestsInFlightWeighAgainstAMatch(inFlight: Int, requestCost: Int, staysHome: Bool) {
        var router = Routing.router(2, requestCost: requestCost)
        let tenant = { (n: UInt64) in Routing.prompt(family: 3, shared: 12, own: 1, unique: n) }
        let home = router.route(1, tenant(1))!.replica
        router.finish(1)
        for n in 0..<UInt64(inFlight) {
            #expect(router.route(10 + n, tenant(10 + n))?.replica == home, "cheap while the queue is short")
        }
        #expect(router.replica(home).inFlight == inFlight)
        let next = router.route(99, tenant(99))!
        #expect((next.replica == home) == staysHome, "\(next)")
        if !staysHome {
            #expect(next.matchedBlocks == 0)
            #expect(router.replica(next.replica).indexedBlocks == 13, "the second replica now holds the prefix")
        }
    }

    @Test func hotSpotSpillsToASecondReplicaWhichThenHoldsThePrefix() {
        var router = Routing.router(3, hotSpot: 2)
        let hot = { (n: UInt64) in Routing.prompt(family: 7, shared: 8, own: 1, unique: n) }
        let home = router.route(1, hot(1))!.replica
        router.finish(1)
        for n in 2...3 as ClosedRange<UInt64> {
            let decision = router.route(n, hot(n))
            #expect(decision == RouteDecision(
                replica: home, matchedBlocks: 8, promptBlocks: 9, reason: .prefixHit))
        }

        // Two in flight on the home: the next goes elsewhere and recomputes the prefix there.
        let spill = router.route(4, hot(4))!
        #expect(spill.reason == .hotSpotSpill)
        #expect(spill.replica != home)
        #expect(spill.matchedBlocks == 0)
        #expect(router.replica(spill.replica).indexedBlocks == 9)
        router.finish(4)

        // Now it holds the prefix with nothing queued: plain hits, cheaper than the busy home.
        let fifth = router.route(5, hot(5))
        let sixth = router.route(6, hot(6))
        #expect(fifth == RouteDecision(replica: spill.replica, matchedBlocks: 8, promptBlocks: 9, reason: .prefixHit))
        #expect(sixth?.replica == spill.replica)

        // Both homes at the bound: the third replica becomes a home too.
        let third = router.route(7, hot(7))!
        #expect(third.reason == .hotSpotSpill)
        #expect(![home, spill.replica].contains(third.replica))
        let eighth = router.route(8, hot(8))
        #expect(eighth?.replica == third.replica)
        // Every replica at the bound: nowhere to spill, the best stays the choice.
        #expect(router.replicaSnapshots.map(\.inFlight) == [2, 2, 2])
        #expect(try! router.choose(hot(9)).get().reason == .prefixHit)
    }

    @Test func unhealthyReplicaIsSkippedUntilMarkedHealthy() {
        var router = Routing.router(3, ejectAfter: 3)
        let prompt = Routing.prompt(family: 1, shared: 6)
        let home = router.route(1, prompt)!.replica
        router.finish(1)

        router.markUnhealthy(home)
        let elsewhere = try! router.choose(prompt).get()
        #expect(elsewhere.replica != home)
        #expect(elsewhere.reason == .coldConsistentHash)

        router.markHealthy(home)
        #expect(try! router.choose(prompt).get().replica == home)

        // Passive ejection: the third consecutive failure ejects; a success in between resets.
        var ejections = [router.reportFailure(home)]
        router.reportSuccess(home)
        ejections += [router.reportFailure(home), router.reportFailure(home)]
        #expect(router.replica(home).consecutiveFailures == 2)
        ejections += [router.reportFailure(home), router.reportFailure(home)]
        // Only the third in a row ejects; the fourth finds it already out.
        #expect(ejections == [false, false, false, true, false])
        #expect(!router.replica(home).healthy)
        // A lucky success does not re-admit; the active health check does.
        router.reportSuccess(home)
        #expect(try! router.choose(prompt).get().replica != home)
        router.markHealthy(home)
        #expect(router.replica(home).consecutiveFailures == 0)
        #expect(try! router.choose(prompt).get().replica == home)
    }

    @Test func refusalsSayWhy() {
        var router = Routing.router(2, maxConcurrency: ["r0": 1, "r1": 1])
        let prompt = Routing.prompt(family: 1, shared: 3)
        #expect(router.choose(prompt, excluding: ["r0", "r1"]) == .failure(.allExcluded))
        router.route(1, prompt)
        router.route(2, prompt)
        #expect(router.choose(prompt) == .failure(.allSaturated))
        router.markUnhealthy("r0")
        router.markUnhealthy("r1")
        #expect(router.choose(prompt) == .failure(.noHealthyReplica))
        #expect(router.choose([]) == .failure(.noHealthyReplica))

        #expect(Routing.router(0).choose(prompt) == .failure(.noHealthyReplica))
    }

    @Test func saturatedReplicaIsPassedOver() {
        var router = Routing.router(2, maxConcurrency: ["r0": 1, "r1": 1])
        let prompt = Routing.prompt(family: 1, shared: 5)
        let home = router.route(1, prompt)!.replica
        let next = try! router.choose(prompt).get()
        #expect(next.replica == Self.other(home))
        router.finish(1)
        #expect(try! router.choose(prompt).get().replica == home)
    }

    @Test func retryExcludesReplicasAlreadyTried() {
        var router = Routing.router(3)
        let prompt = Routing.prompt(family: 1, shared: 5)
        let first = router.route(1, prompt)!.replica
        router.finish(1)
        router.reportFailure(first)
        let second = router.route(1, prompt, excluding: [first])!
        #expect(second.replica != first)
        #expect(second.reason == .coldConsistentHash)
        router.finish(1)
        let third = router.route(1, prompt, excluding: [first, second.replica])!
        #expect(![first, second.replica].contains(third.replica))
    }

    @Test func sessionSticksWhileHealthyAndUnderTheLoadBound() {
        var router = Routing.router(4, factor: 1.0)
        let home = try! router.choose(Routing.prompt(family: 1, shared: 2), session: "alice").get()
        #expect(home.reason == .sessionAffinity)
        for n in 2...6 as ClosedRange<UInt64> {
            let decision = try! router.choose(Routing.prompt(family: n, shared: 3), session: "alice").get()
            #expect(decision.replica == home.replica && decision.reason == .sessionAffinity)
        }

        // Another router, replicas listed in another order: same home, without talking.
        let reversed = PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: (0..<4).reversed().map { ReplicaSpec(id: "r\($0)") }))
        #expect(try! reversed.choose([], session: "alice").get().replica == home.replica)

        // Home down: another replica takes the session; back up: it returns.
        router.markUnhealthy(home.replica)
        let stand = try! router.choose([], session: "alice").get()
        #expect(stand.replica != home.replica && stand.reason == .sessionAffinity)
        router.markHealthy(home.replica)

        // Over the load bound (factor 1: ceil((1 + 1) / 4) = 1): the policy decides instead.
        router.route(10, Routing.prompt(family: 9, shared: 2), session: "alice")
        let busy = try! router.choose(Routing.prompt(family: 8, shared: 2), session: "alice").get()
        #expect(busy.replica != home.replica && busy.reason == .coldConsistentHash)
        router.finish(10)
        #expect(try! router.choose([], session: "alice").get() == RouteDecision(
            replica: home.replica, matchedBlocks: 0, promptBlocks: 0, reason: .sessionAffinity))
    }

    @Test func coldPlacementAgreesAcrossRoutersAndSpreads() {
        let a = Routing.router(5)
        let b = PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: ["r3", "r1", "r4", "r0", "r2"].map { ReplicaSpec(id: $0) }))
        var perReplica: [String: Int] = [:]
        for family in 1...500 as ClosedRange<UInt64> {
            let prompt = Routing.prompt(family: family, shared: 4)
            let choice = try! a.choose(prompt).get()
            #expect(choice.reason == .coldConsistentHash)
            #expect(try! b.choose(prompt).get() == choice)
            perReplica[choice.replica, default: 0] += 1
        }
        // 100 expected each; rendezvous hashing keeps every replica well above half that.
        #expect(perReplica.count == 5 && perReplica.values.allSatisfy { $0 > 60 }, "\(perReplica)")
    }

    @Test func coldPrefixSkipsAReplicaOverTheLoadBound() {
        var router = Routing.router(2, factor: 1.25)
        let prompt = Routing.prompt(family: 1, shared: 4)
        let home = try! router.choose(prompt).get().replica
        for id in 1...3 as ClosedRange<RequestID> {
            router.dispatch(id, to: RouteDecision(replica: home, matchedBlocks: 0, promptBlocks: 1, reason: .leastLoaded),
                            promptBlocks: Routing.prompt(family: 100 + id, shared: 1))
        }
        // 3 in flight of 3: the bound ceil(1.25 × (3 + 1) / 2) = 3 is reached.
        #expect(try! router.choose(prompt).get() == RouteDecision(
            replica: Self.other(home), matchedBlocks: 0, promptBlocks: 4, reason: .coldConsistentHash))
        router.finish(3)
        router.finish(2)
        // 1 of 1: the bound is ceil(1.25 × 2 / 2) = 2.
        #expect(try! router.choose(prompt).get().replica == home)
    }

    /// A replica whose process must start first (a managed replica stopped or crashed) takes a
    /// cold prefix only when no running replica is under the load bound, and a prefix it would
    /// otherwise win costs it the start.
    @Test func aReplicaThatMustStartFirstGetsWorkOnlyWhenTheRunningOnesAreFull() {
        var router = Routing.router(3, factor: 1.25)
        // Find a prompt whose rendezvous home is r0, then take r0 down.
        let prompt = (1...64 as ClosedRange<UInt64>).lazy.map { Routing.prompt(family: $0, shared: 4) }
            .first { try! router.choose($0).get().replica == "r0" }!
        router.setStarting("r0", true)
        #expect(router.replica("r0").starting)
        let instead = try! router.choose(prompt).get()
        #expect(instead.replica != "r0" && instead.reason == .coldConsistentHash)
        // Two requests in flight on each running replica.
        for id in 1...4 as ClosedRange<RequestID> {
            let replica = id <= 2 ? "r1" : "r2"
            router.dispatch(id, to: RouteDecision(replica: replica, matchedBlocks: 0, promptBlocks: 1, reason: .leastLoaded),
                            promptBlocks: Routing.prompt(family: 100 + id, shared: 1))
        }
        // 4 in flight: the bound ceil(1.25 × 5 / 3) = 3 leaves r1 and r2 under it; still not r0.
        #expect(try! router.choose(prompt).get().replica != "r0")
        router.dispatch(5, to: RouteDecision(replica: "r1", matchedBlocks: 0, promptBlocks: 1, reason: .leastLoaded),
                        promptBlocks: Routing.prompt(family: 105, shared: 1))
        router.dispatch(6, to: RouteDecision(replica: "r2", matchedBlocks: 0, promptBlocks: 1, reason: .leastLoaded),
                        promptBlocks: Routing.prompt(family: 106, shared: 1))
        // 6 in flight, 3 on each running replica: the bound ceil(1.25 × 7 / 3) = 3 is reached; r0 starts.
        #expect(try! router.choose(prompt).get() == RouteDecision(
            replica: "r0", matchedBlocks: 0, promptBlocks: 4, reason: .coldConsistentHash))
        for id in 1...6 as ClosedRange<RequestID> { router.finish(id) }

        // A prefix held by a replica that must start stays there only if the start costs less
        // than computing the prefix elsewhere (the index of a real restart is forgotten; this is
        // the start's cost alone).
        var small = Routing.router(2, requestCost: 0)
        let held = Routing.prompt(family: 7, shared: 300)
        let home = small.route(1, held)!.replica
        small.finish(1)
        small.setStarting(home, true)
        #expect(try! small.choose(held).get().replica == home, "a start (256 blocks) costs less than computing 300")
        let short = Routing.prompt(family: 7, shared: 200)
        #expect(try! small.choose(short).get().replica == Self.other(home), "...and more than computing 200")
        small.setStarting(home, false)
        #expect(try! small.choose(short).get().replica == home)
    }

    /// Under round-robin, least-loaded and session affinity alike, a replica that must start
    /// first gets a request only once every running replica is at the load bound: a crashed
    /// replica restarting held a round-robin turn's request, least-loaded's every request (it
    /// had none in flight) and its sessions' requests, for the whole start.
    @Test(arguments: [RoutingPolicy.roundRobin, .leastLoaded, .prefixAffinity])
    func everyPolicyPassesOverAReplicaThatMustStartWhileTheRunningOnesHaveRoom(policy: RoutingPolicy) {
        var router = Routing.router(3, policy: policy, factor: 1.25)
        router.setStarting("r0", true)
        // The session whose home r0 is (with all three up).
        let session = (0..<64).lazy.map { "user\($0)" }.first { name in
            var up = Routing.router(3, policy: policy)
            return try! up.choose(Routing.prompt(family: 1, shared: 2), session: name).get().replica == "r0"
        }!
        var chosen: [String] = []
        for id in 1...7 as ClosedRange<RequestID> {
            let decision = router.route(id, Routing.prompt(family: 10 + id, shared: 2), session: id == 1 ? session : nil)!
            chosen.append(decision.replica)
            if decision.replica == "r0" { break }
        }
        // 6 in flight, 3 on each running replica: ceil(1.25 × 7 / 3) = 3 is reached; only then r0.
        #expect(chosen.count == 7 && chosen.last == "r0", "\(chosen)")
        #expect(chosen.dropLast().filter { $0 == "r1" }.count == 3 && chosen.dropLast().filter { $0 == "r2" }.count == 3)
        // And the session goes home once its replica runs again.
        for id in 1...7 as ClosedRange<RequestID> { router.finish(id) }
        router.setStarting("r0", false)
        #expect(try! router.choose(Routing.prompt(family: 1, shared: 2), session: session).get().replica == "r0")
    }

    /// A request placed on a replica that must start (every running one at the load bound)
    /// learns when a running replica has room for it: a request there finished.
    @Test func aRequestWaitingForAStartLearnsWhenARunningReplicaHasRoom() {
        var router = Routing.router(2, factor: 1.25)
        router.setStarting("r0", true)
        for id in 1...2 as ClosedRange<RequestID> {
            #expect(router.route(id, Routing.prompt(family: id, shared: 2))?.replica == "r1")
        }
        // 2 on r1: ceil(1.25 × 3 / 2) = 2 is reached; the third goes to r0, which must start.
        #expect(router.route(3, Routing.prompt(family: 3, shared: 2))?.replica == "r0")
        #expect(!router.runningReplicaHasRoom(besides: "r0", excluding: []))
        router.finish(1)
        #expect(router.runningReplicaHasRoom(besides: "r0", excluding: []))
        #expect(!router.runningReplicaHasRoom(besides: "r0", excluding: ["r1"]), "not where it was tried")
        router.markUnhealthy("r1")
        #expect(!router.runningReplicaHasRoom(besides: "r0", excluding: []), "not an ejected one")
    }

    @Test func roundRobinTakesTurnsAndSkipsUnhealthy() {
        var router = Routing.router(3, policy: .roundRobin)
        let prompt = Routing.prompt(family: 1, shared: 4)
        let turns = (1...4 as ClosedRange<RequestID>).map { router.route($0, prompt)! }
        #expect(turns.map(\.replica) == ["r0", "r1", "r2", "r0"])
        #expect(turns.allSatisfy { $0.reason == .roundRobin })
        // Matches are still reported, so hit rates can be compared with prefix affinity.
        #expect(turns.map(\.matchedBlocks) == [0, 0, 0, 4])
        router.markUnhealthy("r2")
        let skipping = (5...7 as ClosedRange<RequestID>).map { router.route($0, prompt)!.replica }
        #expect(skipping == ["r1", "r0", "r1"])
        // A choice that is not dispatched does not use up a turn.
        #expect(try! router.choose(prompt).get().replica == "r0")
        #expect(try! router.choose(prompt).get().replica == "r0")
    }

    /// A retry (of a request another replica failed) does not use up the next request's turn: a
    /// failing replica still gets only its share of first tries, not every one.
    @Test func aRetryDoesNotTakeTheNextRequestsTurn() {
        var router = Routing.router(2, policy: .roundRobin)
        let prompt = Routing.prompt(family: 1, shared: 4)
        var firstTries: [String] = []
        for id in stride(from: 1, through: 11, by: 2) as StrideThrough<RequestID> {
            let first = try! router.choose(prompt).get()
            router.dispatch(id, to: first, promptBlocks: prompt)
            firstTries.append(first.replica)
            guard first.replica == "r0" else { continue }   // r0 fails: the request is retried elsewhere
            let retry = try! router.choose(prompt, excluding: ["r0"]).get()
            router.dispatch(id + 1, to: retry, promptBlocks: prompt, advancesTurn: false)
        }
        #expect(firstTries == ["r0", "r1", "r0", "r1", "r0", "r1"])
    }

    @Test func leastLoadedIgnoresPrefixes() {
        var router = Routing.router(3, policy: .leastLoaded)
        let prompt = Routing.prompt(family: 1, shared: 8)
        let replicas = (1...3 as ClosedRange<RequestID>).map { router.route($0, prompt)!.replica }
        #expect(Set(replicas).count == 3)
        router.finish(2)
        let next = router.route(4, prompt)!
        #expect(next == RouteDecision(replica: replicas[1], matchedBlocks: 8, promptBlocks: 8, reason: .leastLoaded))
    }

    @Test func promptShorterThanABlockGoesToTheLeastLoaded() {
        var router = Routing.router(2)
        let first = router.route(1, [])!
        #expect(first.reason == .leastLoaded && first.matchedFraction == 0)
        #expect(try! router.choose([]).get().replica == Self.other(first.replica))
    }

    @Test func finishReleasesExactlyOnceAndDispatchIsNotDoubled() {
        var router = Routing.router(2)
        let prompt = Routing.prompt(family: 1, shared: 6)
        let decision = router.route(1, prompt)!
        let again = router.dispatch(1, to: decision, promptBlocks: prompt)
        let unknown = router.dispatch(2, to: RouteDecision(replica: "nope", matchedBlocks: 0, promptBlocks: 6,
                                                           reason: .leastLoaded), promptBlocks: prompt)
        #expect(!again, "already in flight")
        #expect(!unknown)
        #expect(router.replica(decision.replica).inFlight == 1)
        #expect(router.replica(decision.replica).queuedWork == 6)
        let finishes = [router.finish(1), router.finish(1), router.finish(99)]
        #expect(finishes == [true, false, false])
        #expect(router.replicaSnapshots.allSatisfy { $0.inFlight == 0 && $0.queuedWork == 0 })
        #expect(router.inFlightRequests == 0)
    }

    @Test func restartForgetsWhatTheReplicaHeldAndReportsCorrectIt() {
        var router = Routing.router(3)
        let prompt = Routing.prompt(family: 1, shared: 6)
        let home = router.route(1, prompt)!.replica
        router.finish(1)
        #expect(router.replica(home).indexedBlocks == 6)
        router.replicaRestarted(home)
        #expect(router.replica(home).indexedBlocks == 0)
        #expect(try! router.choose(prompt).get().reason == .coldConsistentHash)

        // The replica reports holding the prompt on another replica: it becomes a hit there.
        let holder = home == "r2" ? "r1" : "r2"
        router.replaceIndex(of: holder, with: [prompt])
        #expect(try! router.choose(prompt).get() == RouteDecision(
            replica: holder, matchedBlocks: 6, promptBlocks: 6, reason: .prefixHit))
        router.removeBlocks([prompt[3]], from: holder)
        #expect(try! router.choose(prompt).get().matchedBlocks == 3)
    }
}
