import Testing
@testable import Placer

/// A stored prefix (a saved llama-server slot) counts as cached on every replica, at a fraction
/// of the cost of computing it: a busy holder loses to an idle replica that restores it, an
/// idle holder keeps it, and a prefix stored but resident nowhere is restored where it lands.
struct RoutingRestoreTests {
    @Test func aBusyHolderLosesToAnIdleReplicaThatRestores() {
        var router = Routing.router(2, requestCost: 8)
        let system = Routing.prompt(family: 1, shared: 20)
        let home = router.route(1, system)!.replica
        router.finish(1)
        // A follow-up stays home and is in flight there: 2 uncached blocks queued.
        #expect(router.route(2, Routing.prompt(family: 1, shared: 20, own: 2, unique: 1))!.replica == home)
        let next = Routing.prompt(family: 1, shared: 20, own: 2, unique: 2)

        // Without a stored copy the busy home still wins: 2 + 2 queued + 8 against 22 elsewhere.
        #expect(try! router.choose(next).get().replica == home)

        // Stored: elsewhere costs 2 uncached + 2 to restore (20 × 5 %, rounded up), home 12.
        let restored = try! router.choose(next, restorable: 20).get()
        #expect(restored == RouteDecision(replica: RoutingTableTests.other(home), matchedBlocks: 20, promptBlocks: 22,
                                          reason: .restoredPrefix, restoreBlocks: 20))
    }

    @Test func anIdleHolderKeepsItsPrefixAndNothingIsRestored() {
        var router = Routing.router(2, requestCost: 8)
        let system = Routing.prompt(family: 1, shared: 20)
        let home = router.route(1, system)!.replica
        router.finish(1)
        let decision = try! router.choose(Routing.prompt(family: 1, shared: 20, own: 2), restorable: 20).get()
        #expect(decision.replica == home && decision.reason == .prefixHit && decision.restoreBlocks == 0)
    }

    @Test func aStoredPrefixResidentNowhereIsRestoredWhereItLands() {
        let router = Routing.router(3)
        let prompt = Routing.prompt(family: 7, shared: 16, own: 4)
        let decision = try! router.choose(prompt, restorable: 16).get()
        #expect(decision.reason == .restoredPrefix && decision.restoreBlocks == 16 && decision.matchedBlocks == 16)
        // Every router agrees on where: the first block's rendezvous order, as for a cold prefix.
        let again = Routing.router(3)
        #expect(try! again.choose(prompt, restorable: 16).get().replica == decision.replica)
    }

    @Test func aShortStoredPrefixIsNotWorthItsCost() {
        let router = Routing.router(2)
        // One block stored costs one block to restore: nothing gained, so nothing restored.
        let decision = try! router.choose(Routing.prompt(family: 3, shared: 1, own: 8), restorable: 1).get()
        #expect(decision.restoreBlocks == 0 && decision.reason != .restoredPrefix)
    }
}

/// Replicas whose slots the caller pins know what they hold (`held`), and that replaces the
/// index: a replica whose slots were taken over by other prompts no longer counts as the home of
/// a prefix routed there earlier, and the prefix is restored (or placed) as if seen nowhere.
struct RoutingHeldTests {
    @Test func aHolderWhoseSlotsMovedOnIsNoLongerItsHome() {
        var router = Routing.router(3)
        let system = Routing.prompt(family: 1, shared: 16)
        let home = router.route(1, system)!.replica
        router.finish(1)
        let next = Routing.prompt(family: 1, shared: 16, own: 2)
        // The index still says home; the slots say nobody holds it.
        #expect(try! router.choose(next).get().replica == home)
        let nobody = ["r0": 0, "r1": 0, "r2": 0]
        let cold = try! router.choose(next, held: nobody).get()
        #expect(cold.reason == .coldConsistentHash && cold.matchedBlocks == 0)
        // With a stored copy it is restored rather than computed, wherever it lands.
        let restored = try! router.choose(next, restorable: 16, held: nobody).get()
        #expect(restored.reason == .restoredPrefix && restored.restoreBlocks == 16)
    }

    @Test func aReplicaKnownToHoldThePrefixWinsWithoutAnIndexEntry() {
        let router = Routing.router(3)
        let prompt = Routing.prompt(family: 2, shared: 12, own: 3)
        let decision = try! router.choose(prompt, held: ["r0": 0, "r1": 0, "r2": 12]).get()
        #expect(decision == RouteDecision(replica: "r2", matchedBlocks: 12, promptBlocks: 15, reason: .prefixHit))
        // A replica missing from `held` keeps its index's answer (nothing recorded: 0).
        #expect(try! router.choose(prompt, held: ["r2": 12]).get().replica == "r2")
        // Out-of-range figures are clamped to the prompt.
        #expect(try! router.choose(prompt, held: ["r1": 99]).get().matchedBlocks == 15)
    }

    @Test func workARequestInFlightComputesForThisOneIsNotCountedAgainstItsReplica() {
        var router = Routing.router(2, requestCost: 1)
        let first = Routing.prompt(family: 1, shared: 16, own: 2, unique: 1)
        let home = router.route(1, first)!.replica   // cold: 18 blocks queued there
        let other = RoutingTableTests.other(home)
        // A second conversation with the same system prompt, which the caller would have wait
        // for the first (its slot will hold the 16 blocks).
        let second = Routing.prompt(family: 1, shared: 16, own: 2, unique: 2)
        let held = [home: 16, other: 0]
        // Counting the first request's work in full, waiting looks dearer (2 + 18 + 1) than
        // computing elsewhere (18)...
        #expect(try! router.choose(second, held: held).get().replica == other)
        // ...but 16 of those 18 blocks are the prefix this request would compute anyway: 2 + 2 + 1.
        let decision = try! router.choose(second, held: held, computing: [home: 16]).get()
        #expect(decision == RouteDecision(replica: home, matchedBlocks: 16, promptBlocks: 18, reason: .prefixHit))
        // At most the replica's queued work is discounted: nothing is queued on the other, so
        // a figure for it changes nothing (uncapped, it would cost 2 and win).
        #expect(try! router.choose(second, held: held, computing: [home: 16, other: 16]).get().replica == home)
    }

    @Test func dispatchChargesWhatTheReplicaHoldsAndWhatIsRestoredAsNoWork() {
        var router = Routing.router(2)
        let prompt = Routing.prompt(family: 3, shared: 10, own: 2)
        let decision = RouteDecision(replica: "r0", matchedBlocks: 10, promptBlocks: 12, reason: .prefixHit)
        #expect(dispatched(&router, 1, decision, prompt, held: 10))
        #expect(router.replica("r0").queuedWork == 2)
        let restore = RouteDecision(replica: "r1", matchedBlocks: 10, promptBlocks: 12, reason: .restoredPrefix, restoreBlocks: 10)
        #expect(dispatched(&router, 2, restore, prompt, held: 0))
        #expect(router.replica("r1").queuedWork == 2)
        router.finish(1)
        router.finish(2)
        #expect(router.replica("r0").queuedWork == 0 && router.replica("r1").queuedWork == 0)
        // Without `held` the index decides: r0 recorded the prompt at the first dispatch.
        #expect(dispatched(&router, 3, decision, prompt))
        #expect(router.replica("r0").queuedWork == 0)
    }
}

private func dispatched(
    _ router: inout PrefixRouter, _ id: RequestID, _ decision: RouteDecision, _ chain: [UInt64], held: Int? = nil
) -> Bool {
    router.dispatch(id, to: decision, promptBlocks: chain, held: held)
}

/// Passive correction: a replica that reports finding much less of the prompt cached than its
/// index expected has evicted that prefix, and everything recorded before it.
struct RoutingCorrectionTests {
    @Test func aMissDropsTheStaleAndOlderBlocksButNotTheNewer() {
        var router = Routing.router(1)
        let old = Routing.prompt(family: 1, shared: 6)
        let stale = Routing.prompt(family: 2, shared: 10)
        let recent = Routing.prompt(family: 3, shared: 4)
        router.route(1, old)!
        router.route(2, stale)!
        router.route(3, recent)!
        for id: RequestID in 1...3 { router.finish(id) }
        #expect(router.replica("r0").indexedBlocks == 20)

        // The stale prompt again: the index expects all 10 blocks, the replica found 5 %.
        let decision = router.route(4, Routing.prompt(family: 2, shared: 10, own: 2))!
        #expect(decision.matchedBlocks == 10)
        let dropped = router.reportCached(4, fraction: 0.05)
        #expect(dropped == 6, "the old prompt, recorded before the stale one, is gone too")
        router.finish(4)
        // The request just computed its prompt, so that is held now; the newer prompt stays.
        let after = router.replica("r0").indexedBlocks
        #expect(after == 12 + 4)
        #expect(try! router.choose(recent).get().matchedBlocks == 4)
        #expect(try! router.choose(old).get().matchedBlocks == 0)
    }

    @Test func aReportThatAgreesOrComesAfterTheFinishChangesNothing() {
        var router = Routing.router(1)
        router.route(1, Routing.prompt(family: 1, shared: 6))!
        router.route(2, Routing.prompt(family: 2, shared: 8))!
        router.route(3, Routing.prompt(family: 1, shared: 6, own: 1))!
        #expect(router.reportCached(3, fraction: 0.8) == 0)   // 6 of 7 expected, most found
        router.finish(3)
        #expect(router.reportCached(3, fraction: 0) == 0)     // unknown now
        #expect(router.replica("r0").indexedBlocks == 15)
    }
}

extension RoutingCorrectionTests {
    /// A block another request recorded again after the dispatch no longer marks where the
    /// replica's eviction stopped: the report drops nothing rather than most of the index.
    @Test func aNeighbourRecordedAgainSinceTheDispatchDropsNothing() {
        var router = Routing.router(1)
        let old = Routing.prompt(family: 1, shared: 6)
        let stale = Routing.prompt(family: 2, shared: 10)
        router.route(1, old)!
        router.route(2, stale)!
        for id: RequestID in 1...2 { router.finish(id) }
        router.route(3, Routing.prompt(family: 2, shared: 10, own: 1))!   // expects the stale prompt whole
        router.route(4, Routing.prompt(family: 1, shared: 6, own: 1))!    // makes the old prompt recent again
        #expect(router.reportCached(3, fraction: 0) == 0)
        #expect(try! router.choose(old).get().matchedBlocks == 6)
    }
}
