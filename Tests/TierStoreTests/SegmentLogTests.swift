import Foundation
import Synchronization
import Glibc
import Testing
@testable import TierStore

/// The NVMe tier's log on real files (O_DIRECT) through each engine.
struct SegmentLogTests {
    static let kinds = EngineUnderTest.all

    static func directory() -> String {
        let path = FileManager.default.currentDirectoryPath + "/.build/test-tmp/segments-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func payload(_ size: Int, seed: UInt64) -> [UInt8] { IOEngineContractTests.pattern(size, seed: seed) }

    @Test(arguments: kinds)
    func putGetRoundTripAcrossSizes(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await kind.openLog(.init(directory: dir, segmentBytes: 4 << 20), engine: engine)
        let sizes = [0, 1, 4031, 4032, 4033, 65536, 1 << 20]
        for (i, size) in sizes.enumerated() {
            try await log.put(BlockKey(bytes: [UInt8(i)]), Self.payload(size, seed: UInt64(i)), durable: i % 2 == 0)
        }
        for (i, size) in sizes.enumerated() {
            #expect(try await log.get(BlockKey(bytes: [UInt8(i)])) == Self.payload(size, seed: UInt64(i)), "size \(size)")
        }
        #expect(try await log.get(BlockKey(bytes: [99])) == nil)
        let stats = await log.stats
        #expect(stats.hits == sizes.count && stats.misses == 1 && stats.blocks == sizes.count)
        // the newest write of a key wins
        try await log.put(BlockKey(bytes: [0]), [1, 2, 3], durable: true)
        #expect(try await log.get(BlockKey(bytes: [0])) == [1, 2, 3])
        await #expect(throws: SegmentLog.PutError.tooLarge(bytes: 5 << 20, segmentBytes: 4 << 20)) {
            try await log.put(BlockKey(bytes: [7]), [UInt8](repeating: 0, count: 5 << 20), durable: false)
        }
        await log.close()
    }

    /// A write that finds the filesystem full (ENOSPC, injected once) while older segments
    /// exist: the budget comes down, the oldest segment goes, and the block is written once more
    /// in a new segment, so the put succeeds; the failed segment takes no more appends.
    @Test func aWriteThatFindsNoSpaceMakesRoomFromTheOldestAndGoesOnce() async throws {
        let engine = FaultInjectingEngine(base: try IOEngineKind.psync.make(queueDepth: 8))
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 1 << 20, budgetBytes: 1 << 30), engine: engine)
        for i in 0..<160 {   // 160 × 12 KiB over two 1 MiB segments
            try await log.put(BlockKey(bytes: [UInt8(i)]), Self.payload(10_000, seed: UInt64(i)), durable: false)
        }
        let before = await log.stats
        #expect(before.usedBytes > 1 << 20)
        engine.arm(.init(writeErrno: ENOSPC, times: 1))
        try await log.put(BlockKey(bytes: [200]), Self.payload(10_000, seed: 200), durable: true)
        engine.disarm()
        #expect(try await log.get(BlockKey(bytes: [200])) == Self.payload(10_000, seed: 200))
        let after = await log.stats
        #expect(after.budgetLowered == before.budgetLowered + 1 && after.reclaimedSegments > before.reclaimedSegments)
        // (The budget in force went back up at once: the real filesystem has room, the fault was injected.)
        #expect(try await log.get(BlockKey(bytes: [0])) == nil, "the oldest made room")
        // (The log now keeps a segment less than what filled the filesystem, so that a new
        // segment always has room; what it keeps is never different.)
        for i in 1..<160 {
            if let got = try await log.get(BlockKey(bytes: [UInt8(i)])) { #expect(got == Self.payload(10_000, seed: UInt64(i))) }
        }
        // Twice in a row: nothing more to gain from the same failure, so it is the caller's.
        engine.arm(.init(writeErrno: ENOSPC))
        await #expect(throws: IOError.self) {
            try await log.put(BlockKey(bytes: [201]), Self.payload(10_000, seed: 201), durable: true)
        }
        engine.disarm()
        await log.close()
    }

    @Test(arguments: kinds)
    func blocksSurviveReopenAndNewestWins(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20)
        let first = try await kind.openLog(config, engine: engine)
        for i in 0..<40 {   // ~40 × 12 KiB: spills over several 1 MiB segments
            try await first.put(BlockKey(bytes: [UInt8(i)]), Self.payload(10_000, seed: UInt64(i)), durable: true)
        }
        try await first.put(BlockKey(bytes: [3]), [9, 9, 9], durable: true)
        await first.close()

        let second = try await kind.openLog(config, engine: engine)
        #expect(await second.stats.blocks == 40)
        for i in 0..<40 where i != 3 {
            #expect(try await second.get(BlockKey(bytes: [UInt8(i)])) == Self.payload(10_000, seed: UInt64(i)))
        }
        #expect(try await second.get(BlockKey(bytes: [3])) == [9, 9, 9])
        // appends after recovery go to a new segment and are found by the next recovery too
        try await second.put(BlockKey(bytes: [200]), [1], durable: true)
        await second.close()
        let third = try await kind.openLog(config, engine: engine)
        #expect(try await third.get(BlockKey(bytes: [200])) == [1])
        #expect(try await third.get(BlockKey(bytes: [3])) == [9, 9, 9])
        await third.close()
    }

    static func segmentFiles(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
    }

    /// Values removed or overwritten left their segments on disk, counted as used, until the
    /// budget was next exceeded (deleting every value freed nothing; INFO kept counting it). A
    /// segment left with nothing live goes at once, unless its lane still appends to it, and so
    /// does the active one once the next segment starts.
    @Test(arguments: kinds)
    func aSegmentLeftWithNothingLiveGoesAtOnce(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await kind.openLog(.init(directory: dir, segmentBytes: 1 << 20), engine: engine)
        let record = 300_000   // three to a 1 MiB segment
        for i in 0..<6 { try await log.put(BlockKey(bytes: [UInt8(i)]), Self.payload(record, seed: UInt64(i)), durable: i == 5) }
        #expect(Self.segmentFiles(dir).count == 2)
        let used = await log.stats.usedBytes
        for i in 0..<3 { await log.remove(BlockKey(bytes: [UInt8(i)])) }
        #expect(Self.segmentFiles(dir).count == 1, "the first segment holds nothing live: gone")
        #expect(await log.stats.usedBytes < used * 3 / 4, "no longer counted as used")
        for i in 3..<5 { await log.remove(BlockKey(bytes: [UInt8(i)])) }
        #expect(Self.segmentFiles(dir).count == 1, "the active segment stays while its lane appends to it")
        try await log.put(BlockKey(bytes: [5]), Self.payload(record, seed: 9), durable: true)   // overwrites the last one
        try await log.put(BlockKey(bytes: [6]), Self.payload(record, seed: 6), durable: true)   // starts the next segment
        #expect(Self.segmentFiles(dir).count == 1, "the segment it follows, dead, went")
        #expect(try await log.get(BlockKey(bytes: [5])) == Self.payload(record, seed: 9))
        #expect(try await log.get(BlockKey(bytes: [6])) == Self.payload(record, seed: 6))
        await log.close()
        let reopened = try await kind.openLog(.init(directory: dir, segmentBytes: 1 << 20), engine: engine)
        #expect(try await reopened.get(BlockKey(bytes: [5])) == Self.payload(record, seed: 9))
        #expect(try await reopened.get(BlockKey(bytes: [0])) == nil)
        // everything removed: a segment found at open takes no appends, so it goes at once
        for i in [5, 6] { await reopened.remove(BlockKey(bytes: [UInt8(i)])) }
        #expect(Self.segmentFiles(dir).isEmpty)
        // the active segment emptied (after a FLUSHDB, say): it stays while it can take appends,
        // and is found dead at the next open, where it goes (it was counted until a write)
        for i in [1, 2] { try await reopened.put(BlockKey(bytes: [UInt8(i)]), Self.payload(1000, seed: 1), durable: true) }
        for i in [1, 2] { await reopened.remove(BlockKey(bytes: [UInt8(i)])) }
        #expect(Self.segmentFiles(dir).count == 1)
        await reopened.close()
        let empty = try await kind.openLog(.init(directory: dir, segmentBytes: 1 << 20), engine: engine)
        let usedAtOpen = await empty.stats.usedBytes
        #expect(Self.segmentFiles(dir).isEmpty && usedAtOpen == 0, "\(Self.segmentFiles(dir))")
        try await empty.put(BlockKey(bytes: [7]), Self.payload(1000, seed: 7), durable: true)
        #expect(try await empty.get(BlockKey(bytes: [7])) == Self.payload(1000, seed: 7))
        await empty.close()
    }

    /// A demotion whose block is removed while it is being written (a DEL racing it): it was
    /// indexed when the write ended, a block nothing names holding its segment (and INFO's
    /// count) until the budget or a restart took it. Asked again after the write, it is left out.
    @Test func aBlockSupersededWhileWrittenIsNotIndexed() async throws {
        let engine = try EngineUnderTest.all[0].make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try await EngineUnderTest.all[0].openLog(.init(directory: dir, segmentBytes: 1 << 20), engine: engine)
        let asked = Mutex(0)
        // current before the write, superseded once it is on disk
        try await log.put(BlockKey(bytes: [1]), Self.payload(5000, seed: 1), durable: false) {
            asked.withLock { $0 += 1; return $0 > 1 }
        }
        #expect(asked.withLock { $0 } == 2)
        #expect(try await log.get(BlockKey(bytes: [1])) == nil)
        #expect(await log.stats.blocks == 0)
        try await log.put(BlockKey(bytes: [2]), Self.payload(5000, seed: 2), durable: false) { false }
        #expect(try await log.get(BlockKey(bytes: [2])) == Self.payload(5000, seed: 2))
        await log.close()
    }

    /// After a restart, the blocks an earlier run left that the caller no longer names (the KV
    /// service's values in `cache` mode) are dropped and their segments go; those it names and
    /// those written since the log opened stay.
    @Test(arguments: kinds)
    func blocksOfAnEarlierRunNobodyNamesAreDropped(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20)
        let log = try await kind.openLog(config, engine: engine)
        for i in 0..<7 { try await log.put(BlockKey(bytes: [UInt8(i)]), Self.payload(300_000, seed: UInt64(i)), durable: true) }
        await log.close()
        let reopened = try await kind.openLog(config, engine: engine)
        #expect(await reopened.stats.blocks == 7)
        try await reopened.put(BlockKey(bytes: [9]), Self.payload(1000, seed: 9), durable: true)   // written since it opened
        #expect(await reopened.dropRecoveredBlocks(except: [BlockKey(bytes: [6])]) == 6)
        #expect(await reopened.stats.blocks == 2)
        #expect(try await reopened.get(BlockKey(bytes: [6])) == Self.payload(300_000, seed: 6))
        #expect(try await reopened.get(BlockKey(bytes: [9])) == Self.payload(1000, seed: 9))
        #expect(try await reopened.get(BlockKey(bytes: [0])) == nil)
        #expect(Self.segmentFiles(dir).count == 2, "the dead segments went: \(Self.segmentFiles(dir))")
        #expect(await reopened.stats.usedBytes < 1 << 20)
        await reopened.close()
    }

    @Test(arguments: kinds)
    func flippedBytesOnDiskAreAMissNeverWrongData(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20)
        let log = try await kind.openLog(config, engine: engine)
        let victim = BlockKey(bytes: [1]), bystander = BlockKey(bytes: [2])
        try await log.put(victim, Self.payload(20_000, seed: 1), durable: true)
        try await log.put(bystander, Self.payload(20_000, seed: 2), durable: true)
        let (path, offset) = try #require(await log.recordLocation(victim))
        let fd = open(path, O_WRONLY)
        var flipped: UInt8 = 0xFF
        #expect(pwrite(fd, &flipped, 1, off_t(offset) + 64 + 12_345) == 1)
        close(fd)

        #expect(try await log.get(victim) == nil)
        #expect(await log.stats.checksumFailures == 1)
        #expect(try await log.get(victim) == nil, "a failed block stays gone")
        #expect(try await log.get(bystander) == Self.payload(20_000, seed: 2))
        await log.close()
        // damage while the daemon is down: the catalog still names the block, the read refuses it
        let (path2, offset2) = (path, offset + 20_480)   // the bystander's record follows the victim's
        let fd2 = open(path2, O_WRONLY)
        #expect(pwrite(fd2, &flipped, 1, off_t(offset2) + 64 + 7) == 1)
        close(fd2)
        let reopened = try await kind.openLog(config, engine: engine)
        #expect(try await reopened.get(victim) == nil, "the catalog forgot the block that failed before")
        #expect(await reopened.stats.checksumFailures == 0)
        #expect(try await reopened.get(bystander) == nil)
        #expect(await reopened.stats.checksumFailures == 1)
        await reopened.close()
    }

    @Test(arguments: kinds)
    func tornTailIsAbsentNotHalfThere(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20)
        let log = try await kind.openLog(config, engine: engine)
        try await log.put(BlockKey(bytes: [1]), Self.payload(5000, seed: 1), durable: true)
        try await log.put(BlockKey(bytes: [2]), Self.payload(50_000, seed: 2), durable: true)
        try await log.put(BlockKey(bytes: [3]), Self.payload(5000, seed: 3), durable: true)
        let (path, offset) = try #require(await log.recordLocation(BlockKey(bytes: [2])))
        await log.close()
        // a crash mid-write: the middle record's second half never reached the disk
        let fd = open(path, O_WRONLY)
        let zeros = [UInt8](repeating: 0, count: 24_576)
        #expect(pwrite(fd, zeros, zeros.count, off_t(offset) + 28_672) == zeros.count)
        close(fd)

        let reopened = try await kind.openLog(config, engine: engine)
        #expect(try await reopened.get(BlockKey(bytes: [1])) == Self.payload(5000, seed: 1))
        #expect(try await reopened.get(BlockKey(bytes: [2])) == nil)
        #expect(try await reopened.get(BlockKey(bytes: [3])) == Self.payload(5000, seed: 3), "a record after the hole is found")
        await reopened.close()
    }

    @Test(arguments: kinds)
    func budgetReclaimsOldestSegmentsWhileReadsGoOn(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20, budgetBytes: 3 << 20)
        let log = try await kind.openLog(config, engine: engine)
        let reclaimed = Mutex<[BlockKey]>([])
        await log.observeReclaims { keys in reclaimed.withLock { $0 += keys } }
        let block = 60_000   // 15 records of 64 KiB per 1 MiB segment
        let kept = BlockKey(bytes: [200])   // written first, then again every 10 records: never reclaimed
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<120 {
                    try await log.put(BlockKey(bytes: [UInt8(i)]), Self.payload(block, seed: UInt64(i)), durable: false)
                    if i % 10 == 0 { try await log.put(kept, Self.payload(block, seed: 1000 + UInt64(i)), durable: false) }
                }
            }
            group.addTask {   // readers racing the reclaim: a hit is always right, a miss is fine
                for round in 0..<400 {
                    let i = round % 120
                    if let got = try await log.get(BlockKey(bytes: [UInt8(i)])) {
                        #expect(got == Self.payload(block, seed: UInt64(i)))
                    }
                }
            }
            try await group.waitForAll()
        }
        let stats = await log.stats
        #expect(stats.usedBytes <= 3 << 20, "budget held: \(stats.usedBytes)")
        #expect(stats.reclaimedSegments >= 4)
        #expect(stats.checksumFailures == 0)
        #expect(try await log.get(BlockKey(bytes: [119])) == Self.payload(block, seed: 119), "newest kept")
        #expect(try await log.get(BlockKey(bytes: [0])) == nil, "oldest reclaimed")
        // the reclaims named exactly the keys they took out of the index, each once; a key written
        // again into a newer segment stays with its newest copy
        let dropped = reclaimed.withLock { $0 }
        #expect(Set(dropped).count == dropped.count && !dropped.contains(kept))
        #expect(await log.absent(among: dropped) == dropped)
        #expect(stats.blocks == 121 - dropped.count, "120 keys and `kept`, less those reclaimed")
        #expect(try await log.get(kept) == Self.payload(block, seed: 1110))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".log") }
        #expect(files.count <= 3)
        // the usage kept as segments grow and go is what the segment files hold
        let onDisk = try files.reduce(UInt64(0)) {
            $0 + ((try FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? UInt64) ?? 0)
        }
        #expect(stats.usedBytes == onDisk)
        await log.close()
    }

    @Test func aCatalogThatCannotCommitFailsDurablePutsAndLosesNothingCommitted() async throws {
        let engine = try IOEngineKind.psync.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 1 << 20)
        let catalog = MemoryCatalog(directory: dir)
        let log = try await SegmentLog.open(config, engine: engine, catalog: catalog)
        let a = BlockKey(bytes: [1]), b = BlockKey(bytes: [2])
        try await log.put(a, Self.payload(10_000, seed: 1), durable: true)
        catalog.failCommits.withLock { $0 = true }
        await #expect(throws: MemoryCatalog.CommitFailed.self) {
            try await log.put(b, Self.payload(10_000, seed: 2), durable: true)
        }
        await log.close()
        catalog.failCommits.withLock { $0 = false }
        let reopened = try await SegmentLog.open(config, engine: engine, catalog: MemoryCatalog(directory: dir))
        #expect(try await reopened.get(a) == Self.payload(10_000, seed: 1), "what was committed is there")
        let maybe = try await reopened.get(b)
        #expect(maybe == nil || maybe == Self.payload(10_000, seed: 2), "the unacknowledged put is absent or whole")
        await reopened.close()
    }

    /// Durable puts under way together share their segment's writes and fdatasyncs (group
    /// commit): while one write is held up, 32 concurrent puts queue and go in a few writes, not
    /// 32; on a device whose syncs are slow they take a few syncs; every one acknowledged is there
    /// after a reopen, whole.
    @Test func concurrentDurablePutsShareWritesAndSyncsAndSurviveReopen() async throws {
        let engine = FaultInjectingEngine(base: try IOEngineKind.psync.make(queueDepth: 8))
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        engine.slowSyncs(by: .milliseconds(200))
        let (writesBefore, syncsBefore) = (engine.writesStarted, engine.syncsStarted)
        engine.hold()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in 0..<32 {
                group.addTask { try await log.put(BlockKey(bytes: [UInt8(n)]), Self.payload(4096 + n, seed: UInt64(n)), durable: true) }
            }
            while engine.writesHeld == 0 { try await Task.sleep(for: .milliseconds(5)) }
            try await Task.sleep(for: .milliseconds(200))   // the other 31 queue behind the held write
            engine.release()
            try await group.waitForAll()
        }
        let writes = engine.writesStarted - writesBefore, syncs = engine.syncsStarted - syncsBefore
        #expect(writes >= 2 && writes <= 4, "32 durable puts took \(writes) writes")
        #expect(syncs >= 1 && syncs <= 4, "32 durable puts took \(syncs) syncs")
        await log.close()
        engine.slowSyncs(by: nil)
        let reopened = try await SegmentLog.open(config, engine: engine)
        for n in 0..<32 {
            #expect(try await reopened.get(BlockKey(bytes: [UInt8(n)])) == Self.payload(4096 + n, seed: UInt64(n)))
        }
        await reopened.close()
    }

    /// A shared sync that fails fails every put it covered, and only those: each put that was
    /// acknowledged is there after a reopen, and each that failed is absent or whole.
    @Test func aFailedSharedSyncFailsThePutsItCoveredAndNoOthers() async throws {
        let engine = FaultInjectingEngine(base: try IOEngineKind.psync.make(queueDepth: 8))
        defer { engine.shutdown() }
        let dir = Self.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        engine.slowSyncs(by: .milliseconds(100))
        engine.arm(.init(syncErrno: EIO, after: 0, times: 1))
        let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
            for n in 0..<16 {
                group.addTask {
                    do {
                        try await log.put(BlockKey(bytes: [UInt8(n)]), Self.payload(4096, seed: UInt64(n)), durable: true)
                        return (n, true)
                    } catch {
                        return (n, false)
                    }
                }
            }
            return await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes.values.contains(false), "the failing sync failed the puts it covered")
        // A put after the fault is acknowledged as usual.
        try await log.put(BlockKey(bytes: [99]), Self.payload(4096, seed: 99), durable: true)
        await log.close()
        engine.disarm()
        engine.slowSyncs(by: nil)
        let reopened = try await SegmentLog.open(config, engine: engine)
        for (n, acknowledged) in outcomes {
            let found = try await reopened.get(BlockKey(bytes: [UInt8(n)]))
            if acknowledged {
                #expect(found == Self.payload(4096, seed: UInt64(n)), "acknowledged put \(n) is there")
            } else {
                #expect(found == nil || found == Self.payload(4096, seed: UInt64(n)), "failed put \(n) is absent or whole")
            }
        }
        #expect(try await reopened.get(BlockKey(bytes: [99])) == Self.payload(4096, seed: 99))
        await reopened.close()
    }

}
