import Testing
@testable import Placer

struct RoutingPrefixIndexTests {
    @Test func matchesTheLongestRecordedPrefix() {
        var index = PrefixIndex(capacity: 64)
        let recorded = Routing.prompt(family: 1, shared: 4)
        index.record(recorded)
        #expect(index.count == 4)
        #expect(index.matchedBlocks(Routing.prompt(family: 1, shared: 4, own: 3)) == 4)
        #expect(index.matchedBlocks(Routing.prompt(family: 1, shared: 2, own: 3)) == 2)
        #expect(index.matchedBlocks(Routing.prompt(family: 2, shared: 4)) == 0)
        #expect(index.matchedBlocks([]) == 0)
        // Recording a shared prefix again adds nothing.
        index.record(Routing.prompt(family: 1, shared: 2, own: 1))
        #expect(index.count == 5)
    }

    @Test func evictsLeastRecentlyRecordedTailFirst() {
        var index = PrefixIndex(capacity: 4)
        let a = Routing.prompt(family: 1, shared: 2)
        let b = Routing.prompt(family: 2, shared: 2)
        let c = Routing.prompt(family: 3, shared: 1)
        index.record(a)
        index.record(b)
        // Within a chain the head is the more recent, so it outlives its tail.
        #expect(index.hashesByRecency == [a[1], a[0], b[1], b[0]])
        index.record(c)
        #expect(index.hashesByRecency == [a[0], b[1], b[0], c[0]])
        #expect(index.matchedBlocks(a) == 1)
        // Refreshing b protects it; the next eviction takes what is left of a.
        index.record(b)
        index.record(Routing.prompt(family: 4, shared: 1))
        #expect(index.matchedBlocks(a) == 0)
        #expect(index.matchedBlocks(b) == 2)
        #expect(index.count == 4)
        #expect(index.inconsistency == nil)
    }

    @Test func keepsOnlyWhatFitsOfALongChain() {
        var index = PrefixIndex(capacity: 3)
        let long = Routing.prompt(family: 1, shared: 10)
        index.record(long)
        #expect(index.count == 3)
        #expect(index.matchedBlocks(long) == 3)
        #expect(index.allocatedSlots == 3)
    }

    @Test func aRemovedMiddleBlockEndsTheMatchAndItsSlotIsReused() {
        var index = PrefixIndex(capacity: 4)
        let chain = Routing.prompt(family: 1, shared: 4)
        index.record(chain)
        let removed = index.remove(chain[1])
        let removedAgain = index.remove(chain[1])
        #expect(removed && !removedAgain)
        // Blocks 2 and 3 are still indexed but cannot be reused behind the hole.
        #expect(index.contains(chain[2]))
        #expect(index.matchedBlocks(chain) == 1)
        #expect(index.count == 3)
        index.record(Routing.prompt(family: 2, shared: 1))
        #expect(index.count == 4)
        #expect(index.allocatedSlots == 4)
        #expect(index.inconsistency == nil)
        // Re-recording fills the hole.
        index.record(chain)
        #expect(index.matchedBlocks(chain) == 4)
    }

    @Test func forgetEmptiesAndReplaceTakesTheReportedChains() {
        var index = PrefixIndex(capacity: 8)
        let a = Routing.prompt(family: 1, shared: 3)
        let b = Routing.prompt(family: 2, shared: 2)
        index.record(a)
        index.forget()
        #expect(index.count == 0)
        #expect(index.matchedBlocks(a) == 0)
        #expect(index.hashesByRecency.isEmpty)

        index.record(Routing.prompt(family: 9, shared: 5))
        index.replace(with: [a, b])
        #expect(index.count == 5)
        #expect(index.matchedBlocks(Routing.prompt(family: 9, shared: 5)) == 0)
        // Later chains in the report are the more recent.
        #expect(index.hashesByRecency == [a[2], a[1], a[0], b[1], b[0]])
        #expect(index.inconsistency == nil)
    }

    /// Chains sharing prefixes, recorded and refreshed at random on a small index: eviction
    /// alone never leaves a hole, so the binary search is exact. Then removals join in: matches
    /// stop at the holes, and the bound and the links still hold.
    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func boundHoldsAndEvictionLeavesNoHoles(seed: UInt64) {
        var rng = PlacerSimulationTests.SplitMix64(state: seed)
        var index = PrefixIndex(capacity: 48)
        let chains = (0..<40).map { i in
            Routing.prompt(family: UInt64(i % 7), shared: 1 + i % 9, own: rng.below(6), unique: UInt64(i))
        }
        for step in 0..<4000 {
            let removing = step >= 3000
            if removing, rng.below(4) == 0 {
                let chain = chains[rng.below(chains.count)]
                index.remove(chain[rng.below(chain.count)])
            } else if rng.below(300) == 0 {
                index.forget()
            } else {
                index.record(chains[rng.below(chains.count)])
            }
            #expect(index.count <= index.capacity && index.allocatedSlots <= index.capacity, "seed \(seed) step \(step)")
            if let problem = index.inconsistency {
                Issue.record("seed \(seed) step \(step): \(problem)")
                return
            }
            for chain in chains {
                // The definition, whichever way the index finds it.
                let matched = index.matchedBlocks(chain)
                #expect(matched == chain.prefix(while: index.contains).count, "seed \(seed) step \(step)")
                guard !removing else { continue }
                let heldBehindHole = chain[matched...].contains { index.contains($0) }
                #expect(!heldBehindHole, "seed \(seed) step \(step): block held behind a hole")
            }
        }
    }
}
