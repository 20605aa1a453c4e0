import Foundation
import Synchronization
import Testing
@testable import TierStore

/// Host tier over the NVMe log: placement, demotion on eviction, promotion on read.
struct BlockStoreTests {
    static func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] { HostTierTests.bytes(n, seed) }
    static func key(_ i: Int) -> BlockKey { HostTierTests.key(i) }

    static func isHost(_ read: BlockStore.Read?) -> Bool { if case .host = read { true } else { false } }
    static func isNVMe(_ read: BlockStore.Read?) -> Bool { if case .nvme = read { true } else { false } }

    /// A 16 MiB host tier over a 16 MiB-segment log in a fresh directory, for `body`.
    static func withSmallStore(_ body: (BlockStore, SegmentLog) async throws -> Void) async throws {
        let engine = try IOEngineKind.auto.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 16 << 20), engine: engine)
        let store = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: log)
        try await body(store, log)
    }

    /// 16 MiB of RAM over a log of at most 32 MiB in 8 MiB segments, where blocks of 2 MiB leave
    /// every tier after 24; `body` gets the losses reported so far (`observeLosses`) from its
    /// third argument.
    static func withOverfullStore(
        policy: BlockStore.EvictionPolicy = .demote, _ body: (BlockStore, SegmentLog, () -> [BlockKey]) async throws -> Void
    ) async throws {
        let engine = try IOEngineKind.auto.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 8 << 20, budgetBytes: 32 << 20), engine: engine)
        let store = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: log, policy: policy)
        let reported = Mutex<[BlockKey]>([])
        store.observeLosses { lost in reported.withLock { $0 += lost } }
        try await body(store, log, { reported.withLock { $0 } })
        await log.close()
    }

    @Test func evictedBlocksAreDemotedThenPromotedBack() async throws {
        try await Self.withSmallStore { store, log in
            let block = 2 << 20   // 8 fit in the 16 MiB host tier
            for i in 0..<20 { try await store.put(Self.key(i), Self.bytes(block, UInt8(i)), durable: false) }
            await store.close()   // waits for queued demotions

            let stats = await store.stats()
            #expect(stats.host.evictions >= 12)
            #expect(stats.nvme.blocks + stats.demotionsDropped == stats.host.evictions)
            // newest blocks are in RAM, oldest were demoted
            let newest = try await store.get(Self.key(19))
            #expect(Self.isHost(newest))
            #expect(newest?.withBytes { Array($0) } == Self.bytes(block, 19))
            #expect(stats.demotionsDropped == 0, "12 evictions fit the 64-deep demotion queue")
            // presence without a read: in RAM, in the log, in neither; no hit or miss counted
            let uncounted = await store.stats()
            #expect(await store.contains(Self.key(19)) && store.host.contains(Self.key(19)))
            #expect(await store.contains(Self.key(0)) && !store.host.contains(Self.key(0)))
            #expect(await !store.contains(Self.key(99)))
            let counted = await store.stats()
            #expect(counted.host.hits == uncounted.host.hits && counted.host.misses == uncounted.host.misses)
            #expect(counted.nvme.hits == uncounted.nvme.hits && counted.nvme.misses == uncounted.nvme.misses)
            let oldest = try await store.get(Self.key(0))
            #expect(Self.isNVMe(oldest), "read from NVMe")
            #expect(oldest?.withBytes { Array($0) } == Self.bytes(block, 0))
            #expect(Self.isHost(try await store.get(Self.key(0))), "promoted into RAM by the read")
            await log.close()
        }
    }

    /// The non-waiting paths: a put into RAM, a get from RAM, and discarding a write-once block,
    /// which succeeds only while RAM holds its only copy.
    @Test func immediatePutGetAndDiscard() async throws {
        try await Self.withSmallStore { store, log in
            let block = 2 << 20
            #expect(store.putInRAMImmediately(Self.key(1), bytes: Self.bytes(block, 1)))
            #expect(try store.getFromRAM(Self.key(1))?.withBytes { Array($0) } == Self.bytes(block, 1))
            #expect(!store.putInRAMImmediately(Self.key(2), bytes: Self.bytes(32 << 20, 2)), "larger than RAM: must wait")
            #expect(try store.getFromRAM(Self.key(2)) == nil)
            #expect(store.discardFromRAM(Self.key(1)))
            #expect(try await store.get(Self.key(1)) == nil)
            #expect(store.trackedGenerations == 0)

            // Written down durably: a copy is below, so discarding from RAM is refused.
            try await store.put(Self.key(3), Self.bytes(block, 3), durable: true)
            #expect(!store.discardFromRAM(Self.key(3)))
            #expect(try await store.get(Self.key(3))?.withBytes { Array($0) } == Self.bytes(block, 3), "still in the log")
            // Evicted (demoted): not in RAM any more, refused; `remove` takes it from every tier.
            for i in 10..<20 { #expect(store.putInRAMImmediately(Self.key(i), bytes: Self.bytes(block, UInt8(i)))) }
            await store.close()
            #expect(!store.discardFromRAM(Self.key(10)))
            #expect(try await store.get(Self.key(10))?.withBytes { Array($0) } == Self.bytes(block, 10))
            await store.remove(Self.key(10))
            #expect(try await store.get(Self.key(10)) == nil)
            await log.close()
        }
    }

    /// A block received piece by piece into RAM: published complete, it reads back byte for
    /// byte; incomplete, it is refused; discarded or dropped, its room comes back; a host tier
    /// that compresses does not stage.
    @Test func stagedBlocksArePublishedOnlyWhole() async throws {
        try await Self.withSmallStore { store, log in
            let value = Self.bytes(3 << 20, 7)
            let staged = try #require(store.stageInRAM(length: value.count))
            value.withUnsafeBytes { raw in
                var offset = 0
                for piece in [1, 4095, 65536, 1 << 20, 3 << 20] where offset < raw.count {
                    let taken = staged.append(UnsafeRawBufferPointer(rebasing: raw[offset..<min(raw.count, offset + piece)]))
                    offset += taken
                    #expect(staged.isComplete == (offset == raw.count))
                }
                #expect(staged.append(UnsafeRawBufferPointer(rebasing: raw[0..<10])) == 0, "takes nothing past its length")
            }
            #expect(store.publishStaged(staged, as: Self.key(1)))
            #expect(try store.getFromRAM(Self.key(1))?.withBytes { Array($0) } == value)
            #expect(!store.publishStaged(staged, as: Self.key(2)), "published once only")
            #expect(staged.withBytes { _ in 0 } == nil)

            let used = store.host.stats.usedBytes
            let partial = try #require(store.stageInRAM(length: 1 << 20))
            _ = value.withUnsafeBytes { partial.append(UnsafeRawBufferPointer(rebasing: $0[..<1000])) }
            #expect(!store.publishStaged(partial, as: Self.key(3)), "incomplete")
            #expect(partial.withBytes { Array($0) } == Array(value[..<1000]))
            #expect(try store.getFromRAM(Self.key(3)) == nil)
            partial.discard()
            #expect(store.host.stats.usedBytes == used)
            do { _ = store.stageInRAM(length: 2 << 20) }   // dropped unpublished
            #expect(store.host.stats.usedBytes == used)
            #expect(store.stageInRAM(length: 17 << 20) == nil, "larger than a host unit")
            // Staged blocks hold a quarter of the 16 MiB budget at most.
            let held = try #require(store.stageInRAM(length: 3 << 20))
            #expect(store.stageInRAM(length: 2 << 20) == nil, "past a quarter of the host budget")
            held.discard()
            #expect(store.stageInRAM(length: 2 << 20) != nil)
            #expect(store.host.stats.reservedBytes == 0, "the one just staged was dropped")

            try await store.apply(BlockStore.Policy(hostBudgetBytes: 16 << 20, nvmeBudgetBytes: log.configuration.budgetBytes,
                                                    hostCodec: .lz4))
            #expect(store.stageInRAM(length: 1 << 20) == nil, "a compressing host tier takes puts whole")
            await store.close()
            await log.close()
        }
    }

    /// `receive` hands out the room after what came (a socket read would fill it), counts only
    /// what its closure says it wrote, never offers room past the length, and none once the
    /// block is complete or discarded.
    @Test func stagedBlocksReceiveIntoTheirRoomOnly() async throws {
        try await Self.withSmallStore { store, log in
            let value = Self.bytes(1 << 20, 3)
            let staged = try #require(store.stageInRAM(length: value.count))
            _ = value.withUnsafeBytes { staged.append(UnsafeRawBufferPointer(rebasing: $0[..<100])) }
            var offered: [Int] = [], have = 100
            for (piece, claimed) in [(5000, 5000), (0, 0), (7, -1), (1 << 20, 1 << 20)] {
                let written = staged.receive { room in
                    offered.append(room.count)
                    let count = min(piece, room.count)
                    value.withUnsafeBytes { room.baseAddress!.copyMemory(from: $0.baseAddress! + have, byteCount: count) }
                    return min(claimed, room.count)
                }
                #expect(written == min(claimed, value.count - have))
                have += max(0, written)
            }
            // Room offered each time: all that was missing (nothing counted for 0 or -1).
            #expect(offered == [value.count - 100, value.count - 5100, value.count - 5100, value.count - 5100])
            #expect(staged.isComplete)
            #expect(staged.receive { _ in Issue.record("room offered past the length"); return 1 } == 0)
            #expect(store.publishStaged(staged, as: Self.key(1)))
            #expect(try store.getFromRAM(Self.key(1))?.withBytes { Array($0) } == value)

            let discarded = try #require(store.stageInRAM(length: 1000))
            discarded.discard()
            #expect(discarded.receive { _ in Issue.record("room offered after discard"); return 1 } == 0)
            await store.close()
            await log.close()
        }
    }

    /// `readFromRAM` hands over the exact bytes of blocks below and above the size it copies
    /// under the lock, counts each as a hit, and does not run for a block that is not in RAM.
    @Test func readFromRAMReadsSmallAndLargeBlocksWhole() async throws {
        try await Self.withSmallStore { store, log in
            let sizes = [1, 100, BlockStore.lockedCopyLimit, BlockStore.lockedCopyLimit + 1, 2 << 20]
            for (i, size) in sizes.enumerated() {
                #expect(store.putInRAMImmediately(Self.key(i), bytes: Self.bytes(size, UInt8(i + 1))))
            }
            for (i, size) in sizes.enumerated() {
                let hits = store.host.stats.hits
                var read: [UInt8] = []
                let found = try store.readFromRAM(Self.key(i)) { read += $0 }
                #expect(found)
                #expect(read == Self.bytes(size, UInt8(i + 1)), "\(size) bytes")
                #expect(store.host.stats.hits == hits + 1)
            }
            var ran = false
            let misses = store.host.stats.misses
            let found = try store.readFromRAM(Self.key(99)) { _ in ran = true }
            #expect(!found && !ran)
            #expect(store.host.stats.misses == misses, "a miss here is the caller's to count")
            await store.close()
            await log.close()
        }
    }

    /// Blocks that leave every tier are reported (`observeLosses`), and only those: reclaimed
    /// from a log over its budget, and, under eviction `drop`, dropped when evicted from RAM.
    /// A block still readable anywhere (dirty in RAM, on its way down, a clean copy, in the log)
    /// is never reported, and none that is gone is missed.
    @Test(arguments: BlockStore.EvictionPolicy.allCases)
    func blocksLeavingEveryTierAreReportedAndNoOthers(policy: BlockStore.EvictionPolicy) async throws {
        try await Self.withOverfullStore(policy: policy) { store, log, reported in
            for i in 0..<60 {
                try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false)
                // reads promote blocks from the log into RAM as clean copies, which are evicted in turn
                if i % 7 == 6 { _ = try await store.get(Self.key(i - 5)) }
            }
            await store.close()   // waits for the demotions, then for the checks of what they dropped
            let lost = Set(reported())
            #expect(lost.count == reported().count, "each loss reported once")
            var present = 0
            for i in 0..<60 {
                let held = await store.contains(Self.key(i))
                #expect(held != lost.contains(Self.key(i)), "block \(i): held \(held), reported lost \(lost.contains(Self.key(i)))")
                if held { present += 1 }   // (not read here: after `close` a read's promotion may drop what it evicts)
            }
            #expect(present <= 24 && lost.count >= 36, "at most 16 + 32 MiB of 2 MiB blocks are held")
        }
    }

    /// A block read back into RAM is a clean copy there; once its segment is reclaimed that copy
    /// is all that is left, and evicting it loses the block: reported then, not before.
    @Test func aCleanCopyOutlivingItsSegmentIsReportedWhenEvicted() async throws {
        try await Self.withOverfullStore { store, log, reported in
            let hot = Self.key(1000)
            try await store.put(hot, Self.bytes(2 << 20, 7), durable: false)
            for i in 0..<12 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
            #expect(!store.host.contains(hot), "demoted")
            #expect(Self.isNVMe(try await store.get(hot)), "read back from the log")
            // kept hot in RAM while the log reclaims the segment it was demoted to
            var next = 12
            for i in 12..<80 where await log.absent(among: [hot]).isEmpty {
                next = i + 1
                try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false)
                // (a read promotes only while the demotion writer is less than half a queue behind)
                var inRAM = false
                for _ in 0..<400 where !inRAM {
                    inRAM = Self.isHost(try await store.get(hot))
                    if !inRAM { try await Task.sleep(for: .milliseconds(5)) }
                }
                #expect(inRAM)
            }
            #expect(await log.absent(among: [hot]) == [hot], "its segment was reclaimed")
            #expect(await store.contains(hot), "the RAM copy still holds it")
            try await Task.sleep(for: .milliseconds(300))   // the reclaim's suspects are checked meanwhile
            #expect(!reported().contains(hot), "not reported while its RAM copy holds it")
            for i in next..<(next + 12) { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
            await store.close()
            #expect(await !store.contains(hot))
            #expect(reported().contains(hot), "lost with its last copy, and reported")
        }
    }

    @Test func dropPolicyForgetsEvictedBlocksAndDurablePutsSurviveRestart() async throws {
        let engine = try IOEngineKind.auto.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 16 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: log, policy: .drop)
        try await store.put(Self.key(100), Self.bytes(1 << 20, 100), durable: true)
        for i in 0..<20 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        await store.close()
        #expect(try await store.get(Self.key(0)) == nil, "dropped, not demoted")
        #expect(await !store.contains(Self.key(0)))
        #expect(await store.contains(Self.key(100)))
        await store.remove(Self.key(100))
        #expect(await !store.contains(Self.key(100)), "removed from every tier")
        try await store.put(Self.key(100), Self.bytes(1 << 20, 100), durable: true)
        #expect(await log.stats.blocks == 1, "only the durable block reached NVMe")
        await log.close()

        let reopened = try await SegmentLog.open(config, engine: engine)
        let again = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: reopened)
        let read = try await again.get(Self.key(100))
        #expect(Self.isNVMe(read))
        #expect(read?.withBytes { Array($0) } == Self.bytes(1 << 20, 100))
        await again.close()
        await reopened.close()
    }
}

import MetricsTestKit

extension BlockStoreTests {
    @Test func tierMetricsArePublishedAndCountersStayMonotonic() async throws {
        let engine = try IOEngineKind.auto.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 16 << 20, budgetBytes: 1 << 30), engine: engine)
        let store = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: log)
        let metrics = TestMetrics()
        let reporter = TierMetrics(factory: metrics)
        for i in 0..<10 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: i == 0) }
        _ = try await store.get(Self.key(9))      // host hit
        _ = try await store.get(Self.key(999))    // miss in both tiers
        await store.close()
        await store.report(to: reporter)
        await store.report(to: reporter)          // a second report adds nothing new

        #expect(try metrics.expectGauge("strata_tier_budget_bytes", [("tier", "host")]).lastValue == Double(16 << 20))
        #expect(try metrics.expectGauge("strata_tier_used_bytes", [("tier", "host")]).lastValue == Double(16 << 20))
        #expect(try metrics.expectGauge("strata_tier_blocks", [("tier", "nvme")]).lastValue == 2, "key 0 (durable) and key 1 (demoted)")
        #expect(try metrics.expectCounter("strata_tier_hits_total", [("tier", "host")]).totalValue == 1)
        #expect(try metrics.expectCounter("strata_tier_misses_total", [("tier", "nvme")]).totalValue == 1)
        #expect(try metrics.expectCounter("strata_tier_evictions_total", [("tier", "host")]).totalValue == 2)
        #expect(try metrics.expectCounter("strata_tier_written_bytes_total", [("tier", "nvme")]).totalValue > 4 << 20)
        #expect(try metrics.expectCounter("strata_tier_written_bytes_total", [("tier", "nvme")]).totalValue < 6 << 20,
                "key 0 was clean when evicted (already on NVMe): not written twice")
        #expect(try metrics.expectGauge("strata_tier_queue_depth", [("tier", "nvme")]).lastValue == 0)
        await log.close()
    }
}

extension BlockStoreTests {
    @Test func aQueuedDemotionNeverOverridesANewerDurablePut() async throws {
        let engine = try IOEngineKind.auto.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 16 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await BlockStore(hostBudgetBytes: 16 << 20, nvme: log)
        for round in 0..<20 {
            let key = Self.key(1000 + round)
            try await store.put(key, Self.bytes(2 << 20, 1), durable: false)            // v1, cache only
            for i in 0..<8 { try await store.put(Self.key(round * 10 + i), Self.bytes(2 << 20, 9), durable: false) }  // evicts v1
            try await store.put(key, Self.bytes(2 << 20, 2), durable: true)             // v2, durable
        }
        await store.close()
        await log.close()
        let reopened = try await SegmentLog.open(config, engine: engine)
        for round in 0..<20 {
            #expect(try await reopened.get(Self.key(1000 + round)) == Self.bytes(2 << 20, 2), "round \(round): v1 came back")
        }
        await reopened.close()
    }
}
