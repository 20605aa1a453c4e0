import AsyncHTTPClient
import Logging
@testable import StrataDaemon
import Testing
import TierStore

/// Which llama-server slot a request is pinned to: the decision, without a runtime (nothing is
/// saved or restored here; `minBlocks` is above every chain so `finished` only releases).
@Suite struct SlotCacheTests {
    private func cache(slots: Int) -> SlotCache {
        let logger = Logger(label: "slot-test")
        return SlotCache(
            model: "m", fingerprint: "f", slotsPerReplica: slots, minBlocks: 1_000, directory: "/nonexistent",
            tiers: TierService(configuration: TierConfiguration(), stateDirectory: "/nonexistent", logger: logger),
            httpClient: HTTPClient.shared, logger: logger)
    }

    @Test func aSlotHoldingThePromptsPrefixIsPreferred() {
        let slots = cache(slots: 3)
        let a: [UInt64] = [1, 2, 3, 4], b: [UInt64] = [9, 8, 7]
        let first = slots.claimSlot(on: "r", for: a)!
        let second = slots.claimSlot(on: "r", for: b)!
        #expect(first.slot == 0 && second.slot == 1)
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: first, completed: true)
        slots.finished(b, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: second, completed: true)
        // The next turn of b's conversation goes back to b's slot, not the lowest free one.
        #expect(slots.claimSlot(on: "r", for: b + [6, 5])?.slot == 1)
        #expect(slots.claimSlot(on: "r", for: [1, 2, 99])?.slot == 0)
        // Only slot 2 is free now, holding nothing.
        #expect(slots.claimSlot(on: "r", for: a)?.slot == 2)
        #expect(slots.claimSlot(on: "r", for: a) == nil)
    }

    @Test func anUnfinishedRequestLeavesItsSlotHoldingNothingKnown() {
        let slots = cache(slots: 2)
        let a: [UInt64] = [1, 2, 3]
        let claim = slots.claimSlot(on: "r", for: a)!
        slots.finished(a, replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: claim, completed: false)
        #expect(slots.held(on: "r", slot: claim.slot) == nil)
        #expect(slots.claimSlot(on: "r", for: a)?.slot == 0)   // free again, lowest
    }

    @Test func claimsOfAReplacedProcessReleaseNothing() {
        let slots = cache(slots: 1)
        let old = slots.claimSlot(on: "r", for: [1])!
        slots.replicaRestarted("r")
        let new = slots.claimSlot(on: "r", for: [2])!
        #expect(new.slot == old.slot && new.generation != old.generation)
        // The old request ends after the restart: the new claim stays taken.
        slots.finished([1], replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: old, completed: true)
        #expect(slots.claimSlot(on: "r", for: [3]) == nil)
        #expect(slots.held(on: "r", slot: 0) == nil)
        slots.finished([2], replica: "r", baseURL: "http://127.0.0.1:1/v1", claim: new, completed: true)
        #expect(slots.held(on: "r", slot: 0) == [2])
        #expect(slots.claimSlot(on: "r", for: [3])?.slot == 0)
    }
}

@Suite struct SlotCacheLabelTests {
    @Test func aSavedPrefixsLabelGivesBackItsChain() {
        let chain: [UInt64] = [0, 1, .max, 0xdead_beef]
        #expect(SlotCache.chain(fromLabel: SlotCache.label(chain)) == chain)
        #expect(SlotCache.chain(fromLabel: "/var/lib/file 123 456") == nil)
        #expect(SlotCache.chain(fromLabel: SlotCache.labelPrefix) == nil)
        #expect(SlotCache.chain(fromLabel: SlotCache.labelPrefix + "12,zz") == nil)
    }
}
