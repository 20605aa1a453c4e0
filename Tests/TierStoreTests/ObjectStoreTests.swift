import Foundation
import Glibc
import Synchronization
import Testing
@testable import TierStore

/// Objects (model weights) as chunk sequences in the NVMe log: import from a local path, read
/// into caller memory, restarts, damage, replacement, and bad input.
struct ObjectStoreTests {
    /// A source file of `size` bytes in a fresh temp directory (not a chunk multiple on purpose).
    static func sourceFile(_ dir: String, size: Int, seed: UInt64) throws -> (String, [UInt8]) {
        let bytes = IOEngineContractTests.pattern(size, seed: seed)
        let path = dir + "/weights-\(seed).gguf"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return (path, bytes)
    }

    /// An I/O engine and a fresh directory for one test; `done` shuts the one and removes the other.
    static func scratch() throws -> (engine: any IOEngine, dir: String, done: () -> Void) {
        let engine = try IOEngineKind.auto.make(queueDepth: 8)
        let dir = SegmentLogTests.directory()
        return (engine, dir, {
            engine.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        })
    }

    static func read(_ store: ObjectStore, _ name: String, size: Int) async throws -> [UInt8] {
        let destination = IOBuffer(count: size)
        try await store.read(name, into: destination.bytes)
        return Array(destination.readOnly)
    }

    @Test(arguments: EngineUnderTest.all)
    func importReadRestartAndReplace(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 16)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let size = 5 * (1 << 20) + 12_345
        let (path, bytes) = try Self.sourceFile(dir, size: size, seed: 1)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 4 << 20)
        let log = try await kind.openLog(config, engine: engine)
        let store = try await ObjectStore.open(log: log, queueDepth: 4)

        // the sink sees every byte once, in whatever order chunks arrive; progress ends at the size
        let sunk = Mutex([UInt8](repeating: 0, count: size))
        let last = Mutex<TransferProgress?>(nil)
        let info = try await store.importFile(
            "smollm2", path: path, chunkSize: 1 << 20,
            sink: { offset, chunk in sunk.withLock { $0.replaceSubrange(Int(offset)..<Int(offset) + chunk.count, with: chunk) } },
            progress: { progress in last.withLock { if ($0?.bytesDone ?? 0) < progress.bytesDone { $0 = progress } } })
        #expect(info.size == UInt64(size) && info.chunks == 6 && info.source.contains(path))
        #expect(sunk.withLock { $0 } == bytes)
        #expect(last.withLock { $0?.bytesDone } == UInt64(size))
        #expect(try await Self.read(store, "smollm2", size: size) == bytes)
        await log.close()

        // found again after a restart, byte for byte
        let log2 = try await kind.openLog(config, engine: engine)
        let store2 = try await ObjectStore.open(log: log2, queueDepth: 4)
        #expect(store2.info("smollm2") == info)
        #expect(try await Self.read(store2, "smollm2", size: size) == bytes)

        // a re-import replaces the object whole; the old chunks go
        let (path2, bytes2) = try Self.sourceFile(dir, size: 3 << 20, seed: 2)
        let blocksBefore = await log2.stats.blocks
        let info2 = try await store2.importFile("smollm2", path: path2, chunkSize: 1 << 20)
        #expect(info2.version != info.version)
        #expect(try await Self.read(store2, "smollm2", size: 3 << 20) == bytes2)
        #expect(await log2.stats.blocks == blocksBefore - 6 + 3)
        try await store2.remove("smollm2")
        #expect(store2.info("smollm2") == nil && store2.list().isEmpty)
        #expect(await log2.stats.blocks == blocksBefore - 6)
        await log2.close()
    }

    @Test func damagedChunkDropsTheObjectAndNothingWrongIsServed() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, _) = try Self.sourceFile(dir, size: 2 << 20, seed: 3)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log, queueDepth: 4)
        let info = try await store.importFile("m", path: path, chunkSize: 256 << 10)
        let (segment, offset) = try #require(await log.recordLocation(info.chunkKey(5)))
        let fd = open(segment, O_WRONLY)
        var flipped: UInt8 = 0x5A
        #expect(pwrite(fd, &flipped, 1, off_t(offset) + 64 + 999) == 1)
        close(fd)
        let dropped = Mutex<[String]>([])
        store.observeDrops { names in dropped.withLock { $0 += names } }

        await #expect(throws: ObjectError.damaged(name: "m", chunk: 5)) {
            _ = try await Self.read(store, "m", size: 2 << 20)
        }
        #expect(store.info("m") == nil, "dropped, so nobody maps half an object")
        #expect(dropped.withLock { $0 } == ["m"], "whoever indexes objects hears of the drop (a saved KV prefix is forgotten)")
        await #expect(throws: ObjectError.notFound(name: "m")) { _ = try await Self.read(store, "m", size: 2 << 20) }
        await log.close()
        let reopened = try await ObjectStore.open(log: try await SegmentLog.open(config, engine: engine))
        #expect(reopened.info("m") == nil, "and it stays dropped after a restart")
        await reopened.log.close()
    }

    @Test func anImportCutShortLeavesNoObject() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, _) = try Self.sourceFile(dir, size: 4 << 20, seed: 4)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log, queueDepth: 2)
        struct Stop: Error {}
        let seen = Mutex(0)
        await #expect(throws: Stop.self) {
            try await store.importFile("m", path: path, chunkSize: 256 << 10, sink: { _, _ in
                if seen.withLock({ $0 += 1; return $0 }) > 5 { throw Stop() }
            })
        }
        #expect(store.info("m") == nil)
        await log.close()
        let reopened = try await ObjectStore.open(log: try await SegmentLog.open(config, engine: engine))
        #expect(reopened.list().isEmpty, "no manifest was written for the partial import")
        await reopened.log.close()
    }

    @Test func badInputIsAClearErrorAndChangesNothing() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, bytes) = try Self.sourceFile(dir, size: 300_000, seed: 5)
        let log = try await SegmentLog.open(.init(directory: dir + "/log", segmentBytes: 4 << 20), engine: engine)
        let store = try await ObjectStore.open(log: log)
        await #expect(throws: ObjectError.badChunkSize(5000)) { try await store.importFile("m", path: path, chunkSize: 5000) }
        await #expect(throws: IOError.self) { try await store.importFile("m", path: dir + "/missing", chunkSize: 1 << 20) }
        await #expect(throws: IOError.self) { try await store.importFile("m", path: dir, chunkSize: 1 << 20) }
        let blocks = await log.stats.blocks
        #expect(store.list().isEmpty && blocks == 0)
        try await store.importFile("m", path: path, chunkSize: 64 << 10)
        let small = IOBuffer(count: 4096)
        await #expect(throws: ObjectError.destinationTooSmall(name: "m", needed: 300_000, given: 4096)) {
            try await store.read("m", into: small.bytes)
        }
        #expect(try await Self.read(store, "m", size: 300_000) == bytes)
        await log.close()
    }

    /// While the store runs: an object that loses a chunk to a reclaim is dropped then, so
    /// `info` and `list` never name an object that cannot be read whole; a newer object whose
    /// chunks all stayed is untouched.
    @Test func anObjectLosingAChunkToAReclaimIsDroppedAtOnce() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (old, _) = try Self.sourceFile(dir, size: 3 << 20, seed: 7)
        let (new, newBytes) = try Self.sourceFile(dir, size: 1 << 20, seed: 8)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 64 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("old", path: old, chunkSize: 512 << 10)
        try await store.importFile("new", path: new, chunkSize: 512 << 10)
        await log.setBudget(2 << 20)   // the oldest segments (the first object's chunks) go
        for _ in 0..<200 where store.info("old") != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.info("old") == nil && store.list().map(\.name) == ["new"])
        #expect(try await Self.read(store, "new", size: newBytes.count) == newBytes)
        await log.close()
        #expect(try BlockCatalog(path: dir + "/log/catalog.sqlite").loadObjects().map(\.name) == ["new"],
                "its catalog entry went too")
    }

    @Test func aChunkReclaimedUnderTheBudgetMakesTheObjectAbsentAfterRestart() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, _) = try Self.sourceFile(dir, size: 3 << 20, seed: 6)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 64 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("m", path: path, chunkSize: 512 << 10)
        await log.setBudget(2 << 20)   // the oldest segments (the object's first chunks) go
        await log.close()
        let reopened = try await ObjectStore.open(log: try await SegmentLog.open(config, engine: engine))
        #expect(reopened.info("m") == nil)
        await reopened.log.close()
    }

    /// Writes `count` blocks of 256 KiB into the log's block lane: the KV service's churn.
    static func churn(_ log: SegmentLog, count: Int, seed: UInt64) async throws {
        let payload = IOEngineContractTests.pattern(256 << 10, seed: seed)
        for n in 0..<count {
            try await log.put(BlockKey(bytes: Array("churn-\(seed)-\(n)".utf8)), payload, durable: false)
        }
    }

    /// Weights staged on NVMe are not pushed out by KV blocks: blocks many times the budget go
    /// through the log, and an object within the reserve stays whole, before and after a
    /// restart; without a reserve the same churn takes it.
    @Test func weightsWithinTheirReserveOutliveBlockChurn() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, bytes) = try Self.sourceFile(dir, size: 3 << 20, seed: 9)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 8 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("m", path: path, chunkSize: 512 << 10)
        try await Self.churn(log, count: 160, seed: 1)   // 40 MiB of blocks through an 8 MiB log
        let stats = await log.stats
        #expect(stats.reclaimedSegments >= 24 && stats.usedBytes <= 9 << 20)
        #expect(stats.objectBytes > 3 << 20 && stats.objectBytes < 4 << 20)
        #expect(store.info("m") != nil)
        #expect(try await Self.read(store, "m", size: bytes.count) == bytes)
        await log.close()

        // The segments' lanes come back with them.
        let log2 = try await SegmentLog.open(config, engine: engine)
        let store2 = try await ObjectStore.open(log: log2)
        #expect(await log2.stats.objectBytes == stats.objectBytes)
        try await Self.churn(log2, count: 80, seed: 2)
        #expect(try await Self.read(store2, "m", size: bytes.count) == bytes)
        await log2.close()

        // With no reserve (changed at run time), blocks and objects are reclaimed oldest first
        // alike: the churn takes it.
        let log3 = try await SegmentLog.open(config, engine: engine)
        await log3.setObjectReserve(0)
        let store3 = try await ObjectStore.open(log: log3)
        try await Self.churn(log3, count: 80, seed: 3)
        for _ in 0..<200 where store3.info("m") != nil { try await Task.sleep(for: .milliseconds(10)) }
        let left = await log3.stats.objectBytes
        #expect(store3.info("m") == nil && left < 1 << 20, "all but the lane's active segment went")
        await log3.close()
    }

    /// An object put in the blocks lane (a saved KV cache) is reclaimed with the blocks, before
    /// the weights in the objects lane, though it came after them; it reads back whole until then.
    @Test func anObjectInTheBlocksLaneGoesBeforeTheWeights() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (weights, weightBytes) = try Self.sourceFile(dir, size: 3 << 20, seed: 13)
        let (kv, kvBytes) = try Self.sourceFile(dir, size: 2 << 20, seed: 14)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 8 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("weights", path: weights, chunkSize: 512 << 10)
        try await store.importFile("kv", path: kv, chunkSize: 512 << 10, lane: .blocks)
        let dropped = Mutex<[String]>([])
        store.observeDrops { names in dropped.withLock { $0 += names } }
        #expect(try await Self.read(store, "kv", size: kvBytes.count) == kvBytes)
        #expect(await log.stats.objectBytes < 4 << 20, "the saved cache does not count against the weights' reserve")
        try await Self.churn(log, count: 40, seed: 5)   // 10 MiB of blocks through an 8 MiB log
        for _ in 0..<200 where store.info("kv") != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.list().map(\.name) == ["weights"])
        #expect(try await Self.read(store, "weights", size: weightBytes.count) == weightBytes)
        for _ in 0..<200 where dropped.withLock({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(dropped.withLock { $0 } == ["kv"], "whoever indexes objects hears of the drop")
        await log.close()
    }

    /// Objects beyond the reserve go before blocks, oldest first: the newer object stays.
    @Test func objectsBeyondTheReserveGoOldestFirst() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (old, _) = try Self.sourceFile(dir, size: 3 << 20, seed: 10)
        let (new, newBytes) = try Self.sourceFile(dir, size: 3 << 20, seed: 11)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 10 << 20,
                                              objectReserveBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("old", path: old, chunkSize: 512 << 10)
        try await store.importFile("new", path: new, chunkSize: 512 << 10)
        try await Self.churn(log, count: 40, seed: 4)
        for _ in 0..<200 where store.info("old") != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.list().map(\.name) == ["new"])
        #expect(try await Self.read(store, "new", size: newBytes.count) == newBytes)
        #expect(await log.stats.objectBytes <= 4 << 20)
        await log.close()
    }

    /// Weights larger than their reserve lose a segment to block churn and are dropped whole; the
    /// rest of their segments then hold nothing live and go before any live block (they stayed
    /// for good: under the reserve, the object lane was never reclaimed again).
    @Test func theRestOfADroppedObjectGoesBeforeLiveBlocks() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (weights, _) = try Self.sourceFile(dir, size: 6 << 20, seed: 15)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 10 << 20,
                                              objectReserveBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        try await store.importFile("weights", path: weights, chunkSize: 512 << 10)
        try await Self.churn(log, count: 24, seed: 6)   // 6 MiB of blocks: over the budget
        for _ in 0..<200 where store.info("weights") != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.info("weights") == nil)
        try await Self.churn(log, count: 16, seed: 7)   // 4 MiB more: room comes from the dead segments first
        let stats = await log.stats
        #expect(stats.objectBytes <= 1 << 20, "only the object lane's active segment is left, \(stats.objectBytes) bytes")
        let kept = await log.absent(among: (0..<16).map { BlockKey(bytes: Array("churn-7-\($0)".utf8)) })
        #expect(kept.isEmpty, "the newest blocks are all there")
        await log.close()
    }

    /// An object larger than the log can keep is refused with a clear error, and nothing of it
    /// stays, where it used to be listed with its first chunks already reclaimed.
    @Test func anObjectTooLargeForTheLogIsRefusedWhole() async throws {
        let (engine, dir, done) = try Self.scratch()
        defer { done() }
        let (path, _) = try Self.sourceFile(dir, size: 6 << 20, seed: 12)
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        do {
            try await store.importFile("big", path: path, chunkSize: 512 << 10)
            Issue.record("an object larger than the log was imported")
        } catch let error as ObjectError {
            guard case .noRoom(let name, let size, let lost, let chunks) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(name == "big" && size == 6 << 20 && chunks == 12 && lost > 0 && lost < chunks)
            #expect("\(error)".contains("does not fit in the NVMe tier"))
        }
        let blocks = await log.stats.blocks
        #expect(store.list().isEmpty && blocks == 0)
        await log.close()
        #expect(try BlockCatalog(path: dir + "/log/catalog.sqlite").loadObjects().isEmpty)
    }

    /// The same when a chunk's own segment is reclaimed while the chunk is being written (the
    /// log's put then fails): refused as not fitting, not with the put's ENOSPC. Ten chunk
    /// writes are held at once, so the log's segments hold more than its budget when they land.
    @Test func anObjectWhoseChunkIsReclaimedWhileWrittenIsRefusedWhole() async throws {
        let engine = FaultInjectingEngine(base: try IOEngineKind.psync.make(queueDepth: 16))
        let dir = SegmentLogTests.directory()
        defer {
            engine.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
        let config = SegmentLog.Configuration(directory: dir + "/log", segmentBytes: 1 << 20, budgetBytes: 4 << 20)
        let log = try await SegmentLog.open(config, engine: engine)
        let store = try await ObjectStore.open(log: log)
        engine.hold()
        let importing = Task {
            try await store.ingest("big", size: 8 << 20, source: "test", chunkSize: 512 << 10, workers: 10) { offset, buffer, range in
                memset(buffer.pointer + range.lowerBound, Int32(truncatingIfNeeded: offset >> 19), range.count)
            }
        }
        for _ in 0..<1000 where engine.writesHeld < 10 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(engine.writesHeld == 10)
        engine.release()
        do {
            _ = try await importing.value
            Issue.record("an object larger than the log was imported")
        } catch let error as ObjectError {
            guard case .noRoom(let name, let size, let lost, let chunks) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(name == "big" && size == 8 << 20 && chunks == 16 && lost > 0 && lost <= 11)
        } catch {
            Issue.record("unexpected \(error)")
        }
        let blocks = await log.stats.blocks
        #expect(store.list().isEmpty && blocks == 0)
        await log.close()
    }
}
