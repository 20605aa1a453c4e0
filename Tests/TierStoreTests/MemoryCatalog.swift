import Synchronization
@testable import TierStore

/// A fake catalog: the `Catalog` contract in memory, with what is committed kept per directory
/// across opens (as a file would be) and what is only queued lost when the log is dropped (as a
/// crash would lose it). `failCommits` makes every commit fail, as a full disk would.
final class MemoryCatalog: Catalog, Sendable {
    struct Committed {
        var blocks: [BlockKey: BlockCatalog.Entry] = [:]
        var ends: [Int: UInt64] = [:]
        var objects: [String: ObjectInfo] = [:]
        var kv: [String: KVRecord] = [:]
    }

    struct Queued {
        var entries: [BlockCatalog.Entry] = []
        var removed: [BlockKey] = []
        var dropped: [Int] = []
    }

    /// Committed state by directory: what survives a reopen.
    private static let disks = Mutex<[String: Committed]>([:])
    private let directory: String
    private let queued = Mutex(Queued())
    let failCommits = Mutex(false)

    init(directory: String) { self.directory = directory }

    private var committed: Committed { Self.disks.withLock { $0[directory] ?? Committed() } }

    func loadBlocks() throws -> [BlockCatalog.Entry] { Array(committed.blocks.values) }
    func cataloguedEnds() throws -> [Int: UInt64] { committed.ends }
    func loadObjects() throws -> [ObjectInfo] { Array(committed.objects.values) }

    func record(_ entry: BlockCatalog.Entry, durable: Bool) async throws {
        queued.withLock { $0.entries.append(entry) }
        if durable { try commit() }
    }

    func remove(_ key: BlockKey) {
        queued.withLock { queued in
            queued.entries.removeAll { $0.key == key }
            queued.removed.append(key)
        }
    }

    func dropSegment(_ id: Int) {
        queued.withLock { queued in
            queued.entries.removeAll { $0.segment == id }
            queued.dropped.append(id)
        }
    }

    func flush() async throws { try commit() }

    func putObject(_ info: ObjectInfo) async throws {
        try commit { $0.objects[info.name] = info }
    }

    func removeObject(_ name: String) async throws {
        try commit { $0.objects[name] = nil }
    }

    func loadKV() throws -> [KVRecord] { Array(committed.kv.values) }

    func putKV(_ records: [KVRecord], committed: @escaping @Sendable () -> Void) async throws {
        try commit({ state in
            for record in records { state.kv["\(record.namespace)\0\(record.keyHex)"] = record }
        }, then: committed)
    }

    func removeKV(_ records: [KVRecordVersion]) async throws {
        try commit { state in
            for record in records where state.kv["\(record.namespace)\0\(record.keyHex)"]?.version == record.version {
                state.kv["\(record.namespace)\0\(record.keyHex)"] = nil
            }
        }
    }

    func setKVExpiry(_ record: KVRecordVersion, expiresAt: Int64?, committed: @escaping @Sendable () -> Void) async throws {
        try commit({ state in
            let key = "\(record.namespace)\0\(record.keyHex)"
            if state.kv[key]?.version == record.version { state.kv[key]?.expiresAt = expiresAt }
        }, then: committed)
    }

    func removeKVNamespace(_ namespace: String, committed: @escaping @Sendable () -> Void) async throws {
        try commit({ $0.kv = $0.kv.filter { $0.value.namespace != namespace } }, then: committed)
    }

    struct CommitFailed: Error {}

    /// Applies what is queued (segments dropped, then keys removed, then entries, a newer
    /// sequence winning) and then `change`, all at once; `then` runs once that is committed,
    /// before any later commit.
    private func commit(_ change: (inout Committed) -> Void = { _ in }, then: () -> Void = {}) throws {
        if failCommits.withLock({ $0 }) { throw CommitFailed() }
        let batch = queued.withLock { queued in
            defer { queued = Queued() }
            return queued
        }
        Self.disks.withLock { disks in
            var state = disks[directory] ?? Committed()
            for id in batch.dropped {
                state.blocks = state.blocks.filter { $0.value.segment != id }
                state.ends[id] = nil
            }
            for key in batch.removed { state.blocks[key] = nil }
            for entry in batch.entries where (state.blocks[entry.key]?.sequence ?? 0) < entry.sequence {
                state.blocks[entry.key] = entry
            }
            for entry in batch.entries {
                state.ends[entry.segment] = max(state.ends[entry.segment] ?? 0, entry.offset + UInt64(entry.recordLength))
            }
            change(&state)
            disks[directory] = state
            then()
        }
    }
}

extension EngineUnderTest {
    /// Opens a log on this engine, over the SQLite catalog for the real engines and over the
    /// in-memory fake catalog for the fake device.
    func openLog(_ configuration: SegmentLog.Configuration, engine: any IOEngine) async throws -> SegmentLog {
        let catalog: (any Catalog)? = self == .fake ? MemoryCatalog(directory: configuration.directory) : nil
        return try await SegmentLog.open(configuration, engine: engine, catalog: catalog)
    }
}
