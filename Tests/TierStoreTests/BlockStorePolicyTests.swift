import Foundation
import Glibc
import Testing
@testable import TierStore

/// Admission, run-time policy changes, failures of the log under the host tier, and the
/// bookkeeping that must not grow or go stale.
struct BlockStorePolicyTests {
    static func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] { HostTierTests.bytes(n, seed) }
    static func key(_ i: Int) -> BlockKey { HostTierTests.key(i) }

    /// A store of 16 MiB RAM (eight 2 MiB blocks) over a log on the fault-injecting fake.
    static func makeStore(_ dir: String, policy: (inout BlockStore.Policy) -> Void = { _ in })
        async throws -> (BlockStore, FaultInjectingEngine)
    {
        let engine = FaultInjectingEngine(base: try IOEngineKind.auto.make(queueDepth: 16))
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 16 << 20), engine: engine)
        var settings = BlockStore.Policy(hostBudgetBytes: 16 << 20, nvmeBudgetBytes: 1 << 30)
        policy(&settings)
        return (try await BlockStore(policy: settings, nvme: log), engine)
    }

    /// Waits (bounded) until every queued demotion is written or given up.
    static func settle(_ store: BlockStore) async throws {
        for _ in 0..<500 where store.queuedDemotions > 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(store.queuedDemotions == 0)
    }

    static func waitUntilHeld(_ engine: FaultInjectingEngine) async throws {
        for _ in 0..<500 where engine.writesHeld == 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(engine.writesHeld > 0)
    }

    @Test func secondHitAdmissionKeepsOneHitBlocksOutOfTheLog() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir) { $0.nvmeAdmission = .secondHit }
        defer { engine.shutdown() }
        for i in 0..<8 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        for i in 0..<2 { _ = try await store.get(Self.key(i)) }   // 0 and 1 are read once while in RAM
        for i in 8..<20 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        try await Self.settle(store)
        var stats = await store.stats()
        #expect(stats.host.evictions == 12)
        #expect(stats.nvme.blocks == 2, "only the blocks read while in RAM went down")
        #expect(stats.nvmeAdmissionsRefused == 10)
        #expect(try await store.get(Self.key(0))?.withBytes { Array($0) } == Self.bytes(2 << 20, 0))
        #expect(try await store.get(Self.key(2)) == nil, "one-hit block dropped")
        // turned away once, admitted the second time it is evicted
        try await store.put(Self.key(2), Self.bytes(2 << 20, 2), durable: false)
        for i in 20..<30 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        await store.close()
        stats = await store.stats()
        #expect(await store.nvme.contains(Self.key(2)))
        await store.nvme.close()
    }

    @Test func hostSecondHitAdmissionPromotesOnTheSecondRead() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir) { $0.hostAdmission = .secondHit }
        defer { engine.shutdown() }
        try await store.put(Self.key(1), Self.bytes(1 << 20, 1), durable: true)
        store.host.remove(Self.key(1))   // only on NVMe now
        #expect(BlockStoreTests.isNVMe(try await store.get(Self.key(1))))
        #expect(BlockStoreTests.isNVMe(try await store.get(Self.key(1))), "first read did not promote")
        #expect(BlockStoreTests.isHost(try await store.get(Self.key(1))), "second read did")
        #expect(await store.stats().hostAdmissionsRefused == 1)
        await store.close()
        await store.nvme.close()
    }

    @Test func aFailingLogLosesNothingHeldInRAMAndSaysSo() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir)
        defer { engine.shutdown() }
        for i in 0..<8 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        engine.arm(.init(writeErrno: EIO))

        // a durable put that fails is a clear error and the key keeps its value
        await #expect(throws: IOError.self) { try await store.put(Self.key(3), Self.bytes(2 << 20, 99), durable: true) }
        #expect(try await store.get(Self.key(3))?.withBytes { Array($0) } == Self.bytes(2 << 20, 3))

        // a demotion that fails goes back into RAM when there is room…
        engine.hold()
        try await store.put(Self.key(8), Self.bytes(2 << 20, 8), durable: false)   // evicts key 0
        try await Self.waitUntilHeld(engine)
        await store.remove(Self.key(5))                                          // room for it
        engine.release()
        try await Self.settle(store)
        var stats = await store.stats()
        #expect(stats.demotionFailures == 1 && stats.blocksLost == 0)
        #expect(BlockStoreTests.isHost(try await store.get(Self.key(0))), "kept in RAM")
        #expect(try await store.get(Self.key(0))?.withBytes { Array($0) } == Self.bytes(2 << 20, 0))
        #expect(stats.lastError?.contains("Input/output error") == true, "\(String(describing: stats.lastError))")

        // …and is counted as lost when there is none
        try await store.put(Self.key(9), Self.bytes(2 << 20, 9), durable: false)
        try await Self.settle(store)
        stats = await store.stats()
        #expect(stats.demotionFailures == 2 && stats.blocksLost == 1)
        for i in [0, 2, 4, 6, 7, 8, 9] {
            #expect(try await store.get(Self.key(i))?.withBytes { Array($0) } == Self.bytes(2 << 20, UInt8(i)), "block \(i)")
        }
        engine.disarm()
        await store.close()
        await store.nvme.close()
    }

    @Test func putsWaitForTheDemotionWriterInsteadOfDroppingBlocks() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let engine = FaultInjectingEngine(base: try IOEngineKind.auto.make(queueDepth: 16))
        defer { engine.shutdown() }
        let log = try await SegmentLog.open(.init(directory: dir, segmentBytes: 16 << 20), engine: engine)
        // RAM for eight 2 MiB blocks; a demotion queue of 4, so puts wait from 2 queued on
        let store = try await BlockStore(
            policy: BlockStore.Policy(hostBudgetBytes: 16 << 20, nvmeBudgetBytes: 1 << 30), nvme: log, demotionQueue: 4)
        for i in 0..<8 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        engine.hold()   // the disk stalls: the writer's first demotion waits at the gate
        let writer = Task {
            for i in 8..<14 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: false) }
        }
        try await Self.waitUntilHeld(engine)
        try await Task.sleep(for: .milliseconds(200))
        #expect(await store.stats().demotionsDropped == 0, "a full queue makes puts wait, it does not drop")
        engine.release()
        try await writer.value
        try await Self.settle(store)
        #expect(await store.stats().demotionsDropped == 0)
        for i in 0..<14 {
            #expect(try await store.get(Self.key(i))?.withBytes { Array($0) } == Self.bytes(2 << 20, UInt8(i)), "block \(i)")
        }
        await store.close()
        await store.nvme.close()
    }

    @Test func aGetNeverReturnsAnOlderValueWhileTheNewerIsOnItsWayDown() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir)
        defer { engine.shutdown() }
        let k = Self.key(500)
        try await store.put(k, Self.bytes(2 << 20, 1), durable: false)
        for i in 0..<8 { try await store.put(Self.key(i), Self.bytes(2 << 20, 0), durable: false) }
        try await Self.settle(store)
        #expect(await store.nvme.contains(k), "v1 demoted")
        try await store.put(k, Self.bytes(2 << 20, 2), durable: false)   // v2 in RAM, v1 in the log
        engine.hold()
        for i in 10..<18 { try await store.put(Self.key(i), Self.bytes(2 << 20, 0), durable: false) }
        try await Self.waitUntilHeld(engine)
        #expect(!store.host.contains(k), "v2 evicted, its demotion held")
        #expect(try await store.get(k)?.withBytes { Array($0) } == Self.bytes(2 << 20, 2))
        engine.release()
        await store.close()
        #expect(try await store.nvme.get(k) == Self.bytes(2 << 20, 2), "v2 landed on top")
        #expect(store.trackedGenerations <= store.host.stats.blocks, "generations only for dirty blocks in RAM")
        await store.nvme.close()
    }

    @Test func policyChangesAtRunTimeAndBadOnesChangeNothing() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir)
        defer { engine.shutdown() }
        for i in 0..<40 { try await store.put(Self.key(i), Self.bytes(2 << 20, UInt8(i)), durable: i % 2 == 0) }
        try await Self.settle(store)
        #expect(await store.nvme.stats.usedBytes > 48 << 20)
        var policy = store.policy
        policy.hostBudgetBytes = 64 << 20
        await #expect(throws: BlockStore.PolicyError.hostBudgetBeyondArena(requested: 64 << 20, capacity: 16 << 20)) {
            try await store.apply(policy)
        }
        #expect(store.policy.hostBudgetBytes == 16 << 20, "unchanged")
        policy.hostBudgetBytes = 8 << 20   // rounds up to one 16 MiB unit
        policy.nvmeBudgetBytes = 32 << 20
        policy.nvmeCodec = .lz4
        try await store.apply(policy)
        try await Self.settle(store)
        #expect(await store.nvme.stats.usedBytes <= 48 << 20, "the log shrank to its budget (plus the active segment)")
        #expect(await store.nvme.configuration.codec == .lz4)
        // a block bigger than a host unit still has a home: the log
        let big = Self.bytes(20 << 20, 7)
        policy.nvmeBudgetBytes = 1 << 30
        try await store.apply(policy)
        try await store.put(Self.key(1000), big, durable: false)
        #expect(BlockStoreTests.isNVMe(try await store.get(Self.key(1000))))
        #expect(try await store.get(Self.key(1000))?.withBytes { Array($0) } == big)
        await store.close()
        await store.nvme.close()
    }
}

extension BlockStorePolicyTests {
    @Test func lz4InRAMKeepsMoreBlocksAndReadsBackExactly() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (store, engine) = try await Self.makeStore(dir) { $0.hostCodec = .lz4 }
        defer { engine.shutdown() }
        // 2 MiB blocks, a quarter random and the rest zeros: lz4 takes each to just over 512 KiB
        // (a 1 MiB buddy block), so sixteen fit where eight would uncompressed
        let compressible = { (i: Int) -> [UInt8] in
            IOEngineContractTests.pattern(512 << 10, seed: UInt64(i)) + [UInt8](repeating: 0, count: (2 << 20) - (512 << 10))
        }
        for i in 0..<16 { try await store.put(Self.key(i), compressible(i), durable: false) }
        var stats = await store.stats()
        #expect(stats.host.blocks == 16 && stats.host.evictions == 0, "compressed, all sixteen fit")
        #expect(stats.host.usedBytes == 16 << 20, "sixteen 1 MiB slots")
        let read = try #require(try await store.get(Self.key(3)))
        guard case .decoded(let bytes) = read else { Issue.record("expected a decompressed copy"); return }
        #expect(bytes == compressible(3))
        // incompressible blocks are kept as they are and lent in place
        let random = IOEngineContractTests.pattern(1 << 20, seed: 9)
        try await store.put(Self.key(100), random, durable: false)
        #expect(BlockStoreTests.isHost(try await store.get(Self.key(100))))
        // compressed blocks demote decompressed (the log has its own codec) and read back exactly
        for i in 200..<260 { try await store.put(Self.key(i), compressible(i), durable: false) }
        await store.close()
        stats = await store.stats()
        #expect(stats.host.evictions > 0 && stats.demotionFailures == 0)
        #expect(try await store.nvme.get(Self.key(3)) == compressible(3))
        // switched off at run time: new puts are stored as they are, old ones still read back
        var policy = store.policy
        policy.hostCodec = .none
        try await store.apply(policy)
        try await store.put(Self.key(300), compressible(300), durable: true)
        #expect(BlockStoreTests.isHost(try await store.get(Self.key(300))))
        #expect(try await store.get(Self.key(259))?.withBytes { Array($0) } == compressible(259))
        await store.nvme.close()
    }
}
