import Synchronization
import Testing
@testable import TierStore

struct BuddyAllocatorTests {
    @Test func splitsAndMergesBackToWholeUnits() {
        var buddy = BuddyAllocator(minBlock: 4096, unitSize: 1 << 20, units: 2)
        var offsets: [Int] = []
        while let offset = buddy.allocate(5000) { offsets.append(offset) }   // 8 KiB blocks
        #expect(offsets.count == 256)
        #expect(buddy.allocatedBytes == buddy.capacity)
        for offset in offsets { buddy.release(offset) }
        #expect(buddy.allocatedBytes == 0)
        #expect(buddy.allocate(1 << 20) != nil && buddy.allocate(1 << 20) != nil, "merged back into two whole units")
        #expect(buddy.allocate(1 << 20) == nil)
        #expect(buddy.allocate((1 << 20) + 1) == nil && buddy.blockSize(for: (1 << 20) + 1) == nil)
    }

    @Test func randomUseNeverOverlaps() {
        var buddy = BuddyAllocator(minBlock: 4096, unitSize: 1 << 20, units: 3)
        var live: [Int: Int] = [:]   // offset → block size
        var seed: UInt64 = 42
        var overlaps = 0, misaligned = 0, accountingErrors = 0
        for _ in 0..<3000 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            if seed >> 63 == 0 || live.isEmpty {
                let size = Int(seed >> 40) % (300 << 10) + 1
                if let offset = buddy.allocate(size) {
                    let block = buddy.blockSize(for: size)!
                    if offset % block != 0 { misaligned += 1 }
                    for (other, otherSize) in live where !(offset + block <= other || other + otherSize <= offset) {
                        overlaps += 1
                    }
                    live[offset] = block
                }
            } else {
                let offset = live.keys.sorted()[Int(seed >> 33) % live.count]
                buddy.release(offset)
                live[offset] = nil
            }
            if buddy.allocatedBytes != live.values.reduce(0, +) { accountingErrors += 1 }
        }
        #expect(overlaps == 0 && misaligned == 0 && accountingErrors == 0)
        #expect(live.count > 5, "the run kept several blocks alive at once")
    }
}

struct HostTierTests {
    /// Cheap to build even in debug: one byte value per seed (a torn read mixes seeds), with the
    /// length stamped in front.
    static func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] {
        var bytes = [UInt8](repeating: seed, count: n)
        for i in 0..<min(8, n) { bytes[i] = UInt8(truncatingIfNeeded: n >> (8 * i)) }
        return bytes
    }
    static func key(_ i: Int) -> BlockKey { BlockKey(bytes: [UInt8(i & 0xFF), UInt8(i >> 8)]) }

    @Test func putAndBorrowInPlace() throws {
        let tier = try HostTier(budgetBytes: 16 << 20)
        let data = Self.bytes(100_000, 1)
        #expect(data.withUnsafeBytes { tier.put(Self.key(1), $0) })
        let a = try #require(tier.borrow(Self.key(1)))
        let b = try #require(tier.borrow(Self.key(1)))
        #expect(a.bytes.baseAddress == b.bytes.baseAddress, "views point into the arena, no copy")
        #expect(Array(a.bytes) == data)
        a.release(); b.release()
        #expect(tier.withBlock(Self.key(2)) { _ in 0 } == nil)
        #expect(tier.stats.hits == 2 && tier.stats.misses == 1)
        #expect(!Self.bytes(17 << 20, 0).withUnsafeBytes { tier.put(Self.key(3), $0) }, "larger than a unit")
    }

    @Test func evictsLeastRecentlyUsedAndDemotesItsBytes() throws {
        let demoted = Mutex<[BlockKey: [UInt8]]>([:])
        let tier = try HostTier(budgetBytes: 16 << 20) { block in demoted.withLock { $0[block.key] = block.bytes } }
        let block = 4 << 20   // four fit in one unit
        for i in 0..<4 { _ = Self.bytes(block, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        _ = tier.withBlock(Self.key(0)) { _ in () }   // 0 is now the most recently used
        _ = Self.bytes(block, 9).withUnsafeBytes { tier.put(Self.key(9), $0) }
        #expect(!tier.contains(Self.key(1)), "least recently used went")
        #expect(tier.contains(Self.key(0)) && tier.contains(Self.key(9)))
        #expect(demoted.withLock { $0[Self.key(1)] } == Self.bytes(block, 1), "demoted with its exact bytes")
        #expect(tier.stats.evictions == 1 && tier.stats.demotions == 1)
        #expect(tier.stats.usedBytes <= tier.capacity)
    }

    @Test func borrowedBlocksAreNeverEvictedOrOverwritten() throws {
        let tier = try HostTier(budgetBytes: 16 << 20)
        let pinned = Self.bytes(4 << 20, 7)
        _ = pinned.withUnsafeBytes { tier.put(Self.key(0), $0) }
        let view = try #require(tier.borrow(Self.key(0)))
        // churn far past the budget while the view is held
        for i in 1..<40 { _ = Self.bytes(4 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        #expect(tier.contains(Self.key(0)))
        #expect(Array(view.bytes) == pinned)
        // replacing a borrowed block: the reader keeps the old bytes until it lets go
        _ = Self.bytes(1000, 99).withUnsafeBytes { tier.put(Self.key(0), $0) }
        #expect(Array(view.bytes) == pinned)
        #expect(tier.withBlock(Self.key(0)) { Array($0) } == Self.bytes(1000, 99))
        view.release()
        #expect(tier.stats.usedBytes <= tier.capacity)
        // everything unborrowed can go, so a full unit fits again
        #expect(Self.bytes(16 << 20, 1).withUnsafeBytes { tier.put(Self.key(500), $0) })
    }

    @Test func concurrentReadersAndWritersStayConsistent() async throws {
        let tier = try HostTier(budgetBytes: 32 << 20)
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for round in 0..<300 {
                        let i = (round * 7 + worker) % 50
                        if round % 3 == 0 {
                            _ = Self.bytes(300_000, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) }
                        } else if let got = tier.withBlock(Self.key(i), { Array($0) }) {
                            #expect(got == Self.bytes(300_000, UInt8(i)), "block \(i) read torn or wrong")
                        }
                    }
                }
            }
        }
        #expect(tier.stats.usedBytes <= tier.capacity)
    }
}

extension HostTierTests {
    @Test func budgetShrinksUnderLoadAndGrowsBack() async throws {
        let tier = try HostTier(budgetBytes: 64 << 20)
        for i in 0..<30 { _ = Self.bytes(2 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        #expect(tier.stats.usedBytes == 60 << 20)
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<3 {   // readers and writers keep going while the budget shrinks
                group.addTask {
                    for round in 0..<200 {
                        let i = (round * 5 + worker) % 40
                        if round % 4 == 0 {
                            _ = Self.bytes(2 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) }
                        } else if let got = tier.withBlock(Self.key(i), { Array($0) }) {
                            #expect(got == Self.bytes(2 << 20, UInt8(i)))
                        }
                    }
                }
            }
            group.addTask { #expect(tier.setBudget(16 << 20)) }
        }
        #expect(tier.stats.budgetBytes == 16 << 20)
        #expect(tier.stats.usedBytes <= 16 << 20, "shrunk to the new budget: \(tier.stats.usedBytes)")
        #expect(!tier.setBudget(128 << 20), "cannot grow past what was mapped")
        #expect(tier.setBudget(64 << 20))
        for i in 100..<128 { _ = Self.bytes(2 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        #expect(tier.stats.usedBytes > 32 << 20, "the room came back")
    }

    /// Shrinking keeps the most recently used blocks wherever their slots lay: the recent ones
    /// past the new budget move into it and the least recently used leave (demoted), not
    /// whichever sat past the line. A borrowed block past it leaves, its bytes intact for the reader.
    @Test func aShrinkKeepsTheMostRecentlyUsedBlocksNotThoseThatSatLow() throws {
        let demoted = Mutex<[BlockKey]>([])
        let tier = try HostTier(budgetBytes: 32 << 20) { evicted in demoted.withLock { $0.append(evicted.key) } }
        for i in 0..<8 { _ = Self.bytes(2 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }        // the low unit
        for i in 10..<18 { _ = Self.bytes(2 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }      // the high unit
        _ = tier.withBlock(Self.key(3)) { _ in }   // an old block used again: among the most recent
        let held = try #require(tier.borrow(Self.key(17)))
        #expect(tier.setBudget(16 << 20))
        let kept = (0..<18).filter { tier.contains(Self.key($0)) }
        #expect(kept == [3, 11, 12, 13, 14, 15, 16, 10].sorted(), "kept \(kept)")
        for i in kept { #expect(tier.withBlock(Self.key(i), { Array($0) }) == Self.bytes(2 << 20, UInt8(i)), "block \(i) moved whole") }
        #expect(Set(demoted.withLock { $0 }) == Set([0, 1, 2, 4, 5, 6, 7, 17].map { Self.key($0) }))
        #expect(Array(held.bytes) == Self.bytes(2 << 20, 17), "a borrowed block leaves with its bytes intact for the reader")
        held.release()
        #expect(tier.stats.usedBytes == 16 << 20, "its slot freed when the reader let go")
    }

    /// A reserved slot is filled in place and published as a block; while held it is neither
    /// readable nor evictable; cancelled, its room comes back; when the budget shrinks below it,
    /// publishing is refused with its bytes intact.
    @Test func reservedSlotsArePublishedCancelledOrRefusedPastTheBudget() throws {
        let demoted = Mutex<[BlockKey]>([])
        let tier = try HostTier(budgetBytes: 32 << 20) { evicted in demoted.withLock { $0.append(evicted.key) } }
        for i in 0..<8 { _ = Self.bytes(4 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        let slot = try #require(tier.reserve(4 << 20))
        #expect(demoted.withLock { $0 } == [Self.key(0)], "room made by evicting the least recently used block")
        let value = Self.bytes(4 << 20, 50)
        value.withUnsafeBytes { tier.bytes(of: slot).copyMemory(from: $0) }
        #expect(tier.borrow(Self.key(50)) == nil, "not readable before it is published")
        #expect(tier.publish(slot, Self.key(50)) == .published)
        #expect(tier.withBlock(Self.key(50), { Array($0) }) == value)
        // Publishing under a key that has a block replaces it.
        let smaller = try #require(tier.reserve(1 << 20))
        Self.bytes(1 << 20, 51).withUnsafeBytes { tier.bytes(of: smaller).copyMemory(from: $0) }
        #expect(tier.publish(smaller, Self.key(50)) == .published)
        #expect(tier.withBlock(Self.key(50), { Array($0) }) == Self.bytes(1 << 20, 51))
        // Cancelled: the room is free again.
        let before = tier.stats.usedBytes
        let cancelled = try #require(tier.reserve(1 << 20))
        #expect(tier.stats.usedBytes == before + (1 << 20))
        #expect(tier.stats.reservedBytes == 1 << 20)
        tier.cancel(cancelled)
        #expect(tier.stats.usedBytes == before && tier.stats.reservedBytes == 0)
        // A cap on what reservations hold in all.
        // (Counted in allocator slots: 3 MiB holds a 4 MiB slot, so not even 1 MiB more fits.)
        let capped = try #require(tier.reserve(3 << 20, maxReservedBytes: 4 << 20))
        #expect(tier.stats.reservedBytes == 4 << 20)
        #expect(tier.reserve(1 << 20, maxReservedBytes: 4 << 20) == nil, "3 MiB holds its whole 4 MiB slot: the cap is reached")
        tier.cancel(capped)
        #expect(tier.reserve(4 << 20, maxReservedBytes: 4 << 20).map { tier.cancel($0) } != nil)
        #expect(tier.stats.reservedBytes == 0)

        // Two held halves of the arena: nothing is left to evict for a third.
        let whole = try HostTier(budgetBytes: 32 << 20)
        let first = try #require(whole.reserve(16 << 20)), second = try #require(whole.reserve(16 << 20))
        #expect(whole.reserve(1) == nil, "held slots are never evicted")
        Self.bytes(16 << 20, 60).withUnsafeBytes { whole.bytes(of: first).copyMemory(from: $0) }
        Self.bytes(16 << 20, 61).withUnsafeBytes { whole.bytes(of: second).copyMemory(from: $0) }
        #expect(whole.setBudget(16 << 20))
        let (low, high) = first.offset < second.offset ? (first, second) : (second, first)
        #expect(whole.publish(high, Self.key(61)) == .beyondBudget)
        #expect(Array(whole.bytes(of: high)) == Self.bytes(16 << 20, high == first ? 60 : 61), "refused with its bytes intact")
        whole.cancel(high)
        #expect(whole.publish(low, Self.key(60)) == .published)
        #expect(whole.stats.usedBytes == 16 << 20 && whole.stats.blocks == 1)
        #expect(whole.reserve(1 << 20) != nil, "the published block is evicted for room")
        #expect(whole.stats.blocks == 0)
    }

    /// `withSmallBlock` reads a block up to the length asked under the lock, as a hit that makes
    /// it most recently used; a longer or compressed block is left to a borrow, uncounted.
    @Test func smallBlocksAreReadUnderTheLockAsHits() throws {
        let demoted = Mutex<[BlockKey]>([])
        let tier = try HostTier(budgetBytes: 16 << 20) { evicted in demoted.withLock { $0.append(evicted.key) } }
        for i in 0..<4 { _ = Self.bytes(4 << 20, UInt8(i)).withUnsafeBytes { tier.put(Self.key(i), $0) } }
        let hits = tier.stats.hits
        guard case .read(let bytes) = tier.withSmallBlock(Self.key(0), maxLength: 4 << 20, { Array($0) }) else {
            Issue.record("a block of the length asked was not read")
            return
        }
        #expect(bytes == Self.bytes(4 << 20, 0))
        #expect(tier.stats.hits == hits + 1)
        guard case .notSmall = tier.withSmallBlock(Self.key(1), maxLength: (4 << 20) - 1, { _ in Issue.record("ran") }) else {
            Issue.record("a longer block was read under the lock")
            return
        }
        guard case .absent = tier.withSmallBlock(Self.key(9), maxLength: 4 << 20, { _ in Issue.record("ran") }) else {
            Issue.record("an absent block was found")
            return
        }
        #expect(tier.stats.hits == hits + 1 && tier.stats.misses == 0, "only the read counted")
        // Key 0 became the most recently used: room for a new block evicts key 1 instead.
        _ = Self.bytes(4 << 20, 9).withUnsafeBytes { tier.put(Self.key(9), $0) }
        #expect(demoted.withLock { $0 } == [Self.key(1)])

        let packed = try HostTier(budgetBytes: 16 << 20)
        _ = Self.bytes(100, 1).withUnsafeBytes { packed.put(Self.key(1), $0, decodedLength: 4096) }
        guard case .notSmall = packed.withSmallBlock(Self.key(1), maxLength: 1 << 20, { _ in Issue.record("ran") }) else {
            Issue.record("a compressed block was read as is")
            return
        }
    }
}
