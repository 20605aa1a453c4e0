import Foundation

/// Where each NVMe block lives, in SQLite (WAL), so a restart finds blocks without reading the
/// segments. Commits are batched: entries and the KV service's key records queue up and one
/// transaction writes them all; a durable put or a key record waits for the commit that holds
/// it (group commit), a cache put does not.
/// All SQLite work runs on one serial queue, off the callers' threads.
final class BlockCatalog: @unchecked Sendable {
    struct Entry: Equatable, Sendable {
        var key: BlockKey
        var segment: Int
        var offset: UInt64
        var recordLength: Int
        var sequence: UInt64
        /// Bytes after decompression; nil for blocks catalogued before compression existed.
        var payloadLength: Int?
    }

    /// Numbered migrations; `PRAGMA user_version` says how many have run.
    static let migrations: [String] = [
        """
        CREATE TABLE blocks (key_hi INTEGER NOT NULL, key_lo INTEGER NOT NULL, segment INTEGER NOT NULL,
                             offset INTEGER NOT NULL, record_length INTEGER NOT NULL, sequence INTEGER NOT NULL,
                             PRIMARY KEY (key_hi, key_lo)) WITHOUT ROWID;
        CREATE INDEX blocks_by_segment ON blocks (segment);
        CREATE TABLE segments (id INTEGER PRIMARY KEY, catalogued_end INTEGER NOT NULL);
        """,
        // 2: blocks may be stored compressed; readers size buffers by the payload length.
        // -1 for rows from version 1, which were never compressed.
        """
        ALTER TABLE blocks ADD COLUMN payload_length INTEGER NOT NULL DEFAULT -1;
        """,
        // 3: objects (model weights) as chunk sequences; a row exists only once every chunk
        // is on disk, so an import cut short leaves no object behind.
        """
        CREATE TABLE objects (name TEXT PRIMARY KEY, version INTEGER NOT NULL, size INTEGER NOT NULL,
                              chunk_size INTEGER NOT NULL, source TEXT NOT NULL);
        """,
        // 4: the KV service's durable key directory (key bytes as hex; expires_at 0 = never).
        """
        CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL,
                         expires_at INTEGER NOT NULL, sequence INTEGER NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID;
        """,
    ]

    private let database: SQLiteDatabase
    private let queue = DispatchQueue(label: "strata.catalog")
    // guarded by `lock`
    private let lock = NSLock()
    private var pending: [Entry] = []
    private var pendingDeletes: [BlockKey] = []
    private var droppedSegments: [Int] = []
    private var pendingKV: [KVChange] = []
    /// `putKV`'s and `removeKVNamespace`'s closures, in the order their changes were queued:
    /// run after the commit.
    private var kvCommitted: [@Sendable () -> Void] = []
    private var waiters: [CheckedContinuation<Void, any Error>] = []
    private var flushScheduled = false

    init(path: String) throws {
        database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        let version = Int(try database.query("PRAGMA user_version", columns: 1).first?.first ?? 0)
        guard version <= Self.migrations.count else {
            throw SQLiteDatabase.Error(code: 0, message: "catalog \(path) has schema \(version), newer than this Strata (\(Self.migrations.count))")
        }
        for number in version..<Self.migrations.count {
            try database.execute("BEGIN; \(Self.migrations[number]) PRAGMA user_version = \(number + 1); COMMIT;")
        }
    }

    func loadBlocks() throws -> [Entry] {
        try database.query(
            "SELECT key_hi, key_lo, segment, offset, record_length, sequence, payload_length FROM blocks", columns: 7
        ).map {
            Entry(key: BlockKey(high: UInt64(bitPattern: $0[0]), low: UInt64(bitPattern: $0[1])), segment: Int($0[2]),
                  offset: UInt64($0[3]), recordLength: Int($0[4]), sequence: UInt64($0[5]),
                  payloadLength: $0[6] < 0 ? nil : Int($0[6]))
        }
    }

    /// Per segment, the end of the catalogued records: scanning resumes there after a restart.
    func cataloguedEnds() throws -> [Int: UInt64] {
        Dictionary(uniqueKeysWithValues: try database.query("SELECT id, catalogued_end FROM segments", columns: 2).map {
            (Int($0[0]), UInt64($0[1]))
        })
    }

    /// The object manifests, as stored.
    func loadObjects() throws -> [ObjectInfo] {
        try database.query("SELECT name, source, version, size, chunk_size FROM objects", texts: 2, integers: 3).map {
            ObjectInfo(name: $0.texts[0], version: UInt64(bitPattern: $0.integers[0]), size: UInt64($0.integers[1]),
                       chunkSize: Int($0.integers[2]), source: $0.texts[1])
        }
    }

    /// Writes (or replaces) an object's manifest and commits it before returning.
    func putObject(_ info: ObjectInfo) async throws {
        try await onQueue { database in
            try database.run(
                """
                INSERT INTO objects (name, version, size, chunk_size, source) VALUES (?1, ?2, ?3, ?4, ?5)
                ON CONFLICT (name) DO UPDATE SET version = excluded.version, size = excluded.size,
                  chunk_size = excluded.chunk_size, source = excluded.source
                """,
                rows: [[info.name, Int64(bitPattern: info.version), Int64(info.size), Int64(info.chunkSize), info.source]])
        }
    }

    func removeObject(_ name: String) async throws {
        try await onQueue { database in try database.run("DELETE FROM objects WHERE name = ?1", rows: [[name]]) }
    }

    func loadKV() throws -> [KVRecord] {
        try database.query("SELECT namespace, key, version, size, expires_at, sequence FROM kv", texts: 2, integers: 4).map {
            KVRecord(namespace: $0.texts[0], key: KVRecord.bytes(hex: $0.texts[1]), version: UInt64(bitPattern: $0.integers[0]),
                     size: Int($0.integers[1]), expiresAt: $0.integers[2] == 0 ? nil : $0.integers[2],
                     sequence: UInt64(bitPattern: $0.integers[3]))
        }
    }

    /// Writes (or replaces) keys' records, in order, and commits them (all in one transaction)
    /// before returning, after the blocks they name, which the caller put durably first. Queued
    /// with the block entries and the other key records of the moment: one commit for all of
    /// them (group commit).
    func putKV(_ records: [KVRecord], committed: @escaping @Sendable () -> Void) async throws {
        try await commitKV(records.map(KVChange.put), committed: committed)
    }

    func removeKV(_ records: [KVRecordVersion]) async throws {
        try await commitKV(records.map { .remove(namespace: $0.namespace, keyHex: $0.keyHex, version: $0.version) })
    }

    func setKVExpiry(_ record: KVRecordVersion, expiresAt: Int64?, committed: @escaping @Sendable () -> Void) async throws {
        try await commitKV([.setExpiry(namespace: record.namespace, keyHex: record.keyHex, version: record.version, expiresAt: expiresAt)],
                           committed: committed)
    }

    func removeKVNamespace(_ namespace: String, committed: @escaping @Sendable () -> Void) async throws {
        try await commitKV([.removeNamespace(namespace)], committed: committed)
    }

    /// A change to the key directory, applied in the order queued.
    private enum KVChange {
        case put(KVRecord)
        /// Only while the record names this version: a removal queued after a newer write of
        /// the key (a DEL racing a SET) leaves that write's record alone.
        case remove(namespace: String, keyHex: String, version: UInt64)
        case removeNamespace(String)
        /// Only while the record names this version; never creates one.
        case setExpiry(namespace: String, keyHex: String, version: UInt64, expiresAt: Int64?)
    }

    /// Queues the changes, in order and together (one commit holds all of them), and returns
    /// once they are committed (`committed` first, after the commit, in queue order).
    private func commitKV(_ changes: [KVChange], committed: (@Sendable () -> Void)? = nil) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            enqueue { catalog in
                catalog.pendingKV.append(contentsOf: changes)
                if let committed { catalog.kvCommitted.append(committed) }
                catalog.waiters.append(continuation)
            }
        }
    }

    private func onQueue(_ body: @escaping @Sendable (SQLiteDatabase) throws -> Void) async throws {
        try await flush()
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            queue.async {
                do {
                    try body(self.database)
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// Queues an entry; when `durable`, returns once it is committed to disk.
    func record(_ entry: Entry, durable: Bool) async throws {
        if durable {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enqueue { $0.pending.append(entry); $0.waiters.append(continuation) }
            }
        } else {
            enqueue { $0.pending.append(entry) }
        }
    }

    // A batch runs its deletes before its upserts, so a delete drops the upserts queued before
    // it; whatever is queued after it is newer and rightly wins.
    func remove(_ key: BlockKey) {
        enqueue {
            $0.pending.removeAll { $0.key == key }
            $0.pendingDeletes.append(key)
        }
    }

    func dropSegment(_ id: Int) {
        enqueue {
            $0.pending.removeAll { $0.segment == id }
            $0.droppedSegments.append(id)
        }
    }

    /// Waits until everything queued so far is committed.
    func flush() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            enqueue { $0.waiters.append(continuation) }
        }
    }

    private func enqueue(_ change: (BlockCatalog) -> Void) {
        lock.lock()
        change(self)
        let schedule = !flushScheduled
        flushScheduled = true
        lock.unlock()
        if schedule { queue.async { self.commitBatch() } }
    }

    private func commitBatch() {
        lock.lock()
        let entries = pending, deletes = pendingDeletes, segments = droppedSegments, kv = pendingKV, batchWaiters = waiters
        let committed = kvCommitted
        pending = []; pendingDeletes = []; droppedSegments = []; pendingKV = []; kvCommitted = []; waiters = []
        flushScheduled = false
        lock.unlock()
        do {
            try database.step("BEGIN")
            try database.run("DELETE FROM blocks WHERE segment = ?1", rows: segments.map { [Int64($0)] })
            try database.run("DELETE FROM segments WHERE id = ?1", rows: segments.map { [Int64($0)] })
            try database.run("DELETE FROM blocks WHERE key_hi = ?1 AND key_lo = ?2",
                             rows: deletes.map { [Int64(bitPattern: $0.high), Int64(bitPattern: $0.low)] })
            try database.run(
                """
                INSERT INTO blocks (key_hi, key_lo, segment, offset, record_length, sequence, payload_length)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                ON CONFLICT (key_hi, key_lo) DO UPDATE SET segment = excluded.segment, offset = excluded.offset,
                  record_length = excluded.record_length, sequence = excluded.sequence,
                  payload_length = excluded.payload_length WHERE excluded.sequence > blocks.sequence
                """,
                rows: entries.map {
                    [Int64(bitPattern: $0.key.high), Int64(bitPattern: $0.key.low), Int64($0.segment), Int64($0.offset),
                     Int64($0.recordLength), Int64($0.sequence), Int64($0.payloadLength ?? -1)]
                })
            var ends: [Int: UInt64] = [:]
            for entry in entries { ends[entry.segment] = max(ends[entry.segment] ?? 0, entry.offset + UInt64(entry.recordLength)) }
            try database.run(
                "INSERT INTO segments VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET catalogued_end = max(catalogued_end, excluded.catalogued_end)",
                rows: ends.map { [Int64($0.key), Int64($0.value)] })
            try applyKV(kv)
            try database.step("COMMIT")
            for closure in committed { closure() }
            for waiter in batchWaiters { waiter.resume() }
        } catch {
            try? database.step("ROLLBACK")
            for waiter in batchWaiters { waiter.resume(throwing: error) }
        }
    }

    /// Key-directory changes in the order they were queued (after the blocks they name).
    private func applyKV(_ changes: [KVChange]) throws {
        for change in changes {
            switch change {
            case .put(let record):
                try database.run(
                    """
                    INSERT INTO kv (namespace, key, version, size, expires_at, sequence) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                    ON CONFLICT (namespace, key) DO UPDATE SET version = excluded.version, size = excluded.size,
                      expires_at = excluded.expires_at, sequence = excluded.sequence
                    """,
                    rows: [[record.namespace, record.keyHex, Int64(bitPattern: record.version), Int64(record.size),
                            record.expiresAt ?? 0, Int64(bitPattern: record.sequence)]])
            case .remove(let namespace, let keyHex, let version):
                try database.run("DELETE FROM kv WHERE namespace = ?1 AND key = ?2 AND version = ?3",
                                 rows: [[namespace, keyHex, Int64(bitPattern: version)]])
            case .removeNamespace(let namespace):
                try database.run("DELETE FROM kv WHERE namespace = ?1", rows: [[namespace]])
            case .setExpiry(let namespace, let keyHex, let version, let expiresAt):
                try database.run("UPDATE kv SET expires_at = ?1 WHERE namespace = ?2 AND key = ?3 AND version = ?4",
                                 rows: [[expiresAt ?? 0, namespace, keyHex, Int64(bitPattern: version)]])
            }
        }
    }
}
