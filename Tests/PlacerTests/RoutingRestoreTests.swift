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
