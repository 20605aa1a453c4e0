import Synchronization
import Foundation
import Glibc
import Testing
@testable import TierStore

struct CodecAndMigrationTests {
    static func compressible(_ n: Int, _ seed: UInt8) -> [UInt8] {
        (0..<n).map { i in UInt8(truncatingIfNeeded: (i / 64) &+ Int(seed)) }   // long runs: lz4 shrinks it a lot
    }

    @Test(arguments: IOEngineContractTests.kinds)
    func lz4StoresSmallerWhenItPaysAndReadsBackExactly(kind: IOEngineKind) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = SegmentLog.Configuration(directory: dir, segmentBytes: 4 << 20, codec: .lz4)
        let log = try await SegmentLog.open(config, engine: engine)
        let squeezy = Self.compressible(1 << 20, 3)
        let noisy = IOEngineContractTests.pattern(200_000, seed: 9)   // incompressible: stored as it is
        try await log.put(BlockKey(bytes: [1]), squeezy, durable: true)
        try await log.put(BlockKey(bytes: [2]), noisy, durable: true)
        let written = await log.stats.bytesWritten
        #expect(written < UInt64(squeezy.count / 4 + noisy.count + 8192), "the compressible block shrank: \(written)")
        #expect(try await log.get(BlockKey(bytes: [1])) == squeezy)
        #expect(try await log.get(BlockKey(bytes: [2])) == noisy, "incompressible block stored as it is")
        // the zero-copy path needs room for the decompressed payload, and says how much
        #expect(await log.bytesNeeded(for: BlockKey(bytes: [1])) == squeezy.count)
        let buffer = IOBuffer(count: squeezy.count)
        let range = try #require(try await log.get(BlockKey(bytes: [1]), into: buffer))
        #expect(Array(buffer.readOnly[range]) == squeezy)
        let (path, offset) = try #require(await log.recordLocation(BlockKey(bytes: [1])))
        await log.close()

        // after a restart the catalog knows the payload length; then damage the compressed bytes
        let reopened = try await SegmentLog.open(config, engine: engine)
        #expect(try await reopened.get(BlockKey(bytes: [1])) == squeezy)
        let fd = open(path, O_WRONLY)
        var junk: UInt8 = 0x5A
        #expect(pwrite(fd, &junk, 1, off_t(offset) + 64 + 100) == 1)
        close(fd)
        #expect(try await reopened.get(BlockKey(bytes: [1])) == nil, "a damaged compressed block is a miss")
        #expect(await reopened.stats.checksumFailures == 1)
        await reopened.close()
    }

    @Test func catalogMigratesVersionOneAndRefusesNewerSchemas() throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/catalog.sqlite"
        do {   // a catalog as version 1 wrote it
            let old = try SQLiteDatabase(path: path)
            try old.execute("BEGIN; \(BlockCatalog.migrations[0]) PRAGMA user_version = 1; COMMIT;")
            try old.run("INSERT INTO blocks VALUES (?1, ?2, ?3, ?4, ?5, ?6)", rows: [[7, 8, 1, 4096, 8192, 42] as [Int64]])
        }
        let catalog = try BlockCatalog(path: path)
        let entries = try catalog.loadBlocks()
        #expect(entries == [BlockCatalog.Entry(key: BlockKey(high: 7, low: 8), segment: 1, offset: 4096, recordLength: 8192,
                                               sequence: 42, payloadLength: nil)])
        let version = try SQLiteDatabase(path: path).query("PRAGMA user_version", columns: 1)
        #expect(version == [[Int64(BlockCatalog.migrations.count)]])

        let future = dir + "/future.sqlite"
        try SQLiteDatabase(path: future).execute("PRAGMA user_version = 99")
        #expect(throws: SQLiteDatabase.Error.self) { try BlockCatalog(path: future) }
    }

    /// The KV service's key records go through the catalog's batches: what a sequence of puts
    /// and removals leaves is what a reopened catalog loads, every key byte intact (keys are
    /// stored as hex), an expiry set only on the version named, and concurrent puts all commit.
    @Test func keyRecordsCommitInOrderWithEveryKeyByte() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/catalog.sqlite"
        let every = (0...255).map { UInt8($0) }
        #expect(KVRecord(namespace: "a", key: [0x00, 0x0F, 0xA5, 0xFF], version: 0, size: 0, expiresAt: nil, sequence: 0).keyHex
                == "000fa5ff")
        do {
            let catalog = try BlockCatalog(path: path)
            try await catalog.putKV([KVRecord(namespace: "a", key: every, version: 1, size: 10, expiresAt: nil, sequence: 1)])
            // several in one call: in order, the later record of a key wins
            try await catalog.putKV([KVRecord(namespace: "a", key: [1], version: 2, size: 20, expiresAt: 5_000, sequence: 2),
                                     KVRecord(namespace: "a", key: [1], version: 3, size: 30, expiresAt: nil, sequence: 2),
                                     KVRecord(namespace: "a", key: [2], version: 4, size: 40, expiresAt: nil, sequence: 3)])
            // in one commit: key [2]'s record, and a removal of an older version of key [1]
            // (queued after a newer write), which leaves the newer record
            try await catalog.removeKV([KVRecordVersion(namespace: "a", key: [2], version: 4),
                                        KVRecordVersion(namespace: "a", key: [1], version: 2)])
            try await catalog.putKV([KVRecord(namespace: "b", key: [3], version: 5, size: 50, expiresAt: nil, sequence: 4)])
            try await catalog.removeKVNamespace("b")
            // an expiry changes the record that names that version, and creates none
            try await catalog.setKVExpiry(KVRecordVersion(namespace: "a", key: every, version: 1), expiresAt: 9_000) {}
            try await catalog.setKVExpiry(KVRecordVersion(namespace: "a", key: [1], version: 2), expiresAt: 7_000) {}
            try await catalog.setKVExpiry(KVRecordVersion(namespace: "a", key: [2], version: 4), expiresAt: 7_000) {}
            try await catalog.setKVExpiry(KVRecordVersion(namespace: "b", key: [3], version: 5), expiresAt: 7_000) {}
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in 0..<64 {
                    group.addTask {
                        try await catalog.putKV([KVRecord(namespace: "c", key: Array("key\(n)".utf8), version: UInt64(n), size: n,
                                                          expiresAt: nil, sequence: UInt64(100 + n))])
                    }
                }
                try await group.waitForAll()
            }
        }
        let loaded = try BlockCatalog(path: path).loadKV()
        let byKey = Dictionary(uniqueKeysWithValues: loaded.map { ("\($0.namespace)/\($0.key)", $0) })
        #expect(loaded.count == 2 + 64)
        #expect(byKey["a/\(every)"] == KVRecord(namespace: "a", key: every, version: 1, size: 10, expiresAt: 9_000, sequence: 1))
        #expect(byKey["a/[1]"] == KVRecord(namespace: "a", key: [1], version: 3, size: 30, expiresAt: nil, sequence: 2))
        #expect(byKey["a/[2]"] == nil && !loaded.contains { $0.namespace == "b" })
        #expect(loaded.filter { $0.namespace == "c" }.map(\.size).sorted() == Array(0..<64))
    }

    /// Writes of one key at once (durable SETs of it): `putKV`'s closures run in the order the
    /// catalog committed the records, each before its call returns, so the directory the KV
    /// service updates there ends on the record a reopened catalog loads.
    @Test func keyRecordsOfOneKeyAtOnceCallBackInCommitOrder() async throws {
        let dir = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/catalog.sqlite"
        final class Applied: Sendable { let versions = Mutex<[UInt64]>([]) }
        let applied = Applied()
        do {
            let catalog = try BlockCatalog(path: path)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for version in 1...200 {
                    group.addTask {
                        try await catalog.putKV([KVRecord(namespace: "", key: [7], version: UInt64(version), size: version,
                                                          expiresAt: nil, sequence: 1)]) {
                            applied.versions.withLock { $0.append(UInt64(version)) }
                        }
                        #expect(applied.versions.withLock { $0.contains(UInt64(version)) })
                    }
                }
                try await group.waitForAll()
            }
        }
        let order = applied.versions.withLock { $0 }
        #expect(order.count == 200 && Set(order).count == 200)
        #expect(try BlockCatalog(path: path).loadKV().map(\.version) == [order.last!])
    }

}
