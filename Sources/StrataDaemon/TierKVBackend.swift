import Foundation
import Frontend
import NIOCore
import Synchronization
import TierStore

/// The RESP service's keys and values on the storage tiers: each value lives in the block store
/// (host RAM, spilling to NVMe by the store's policy) as blocks of at most `partBytes`, under
/// keys derived from (namespace, key, version, part), so tenants never share blocks and a
/// rewrite never mixes with the value it replaces. The directory (key → size, version, expiry)
/// is in memory. With durability `cache` a write is acknowledged once in RAM and a restart
/// starts empty; with `durable` the parts are put durably (fdatasync'd, catalogued) and then the
/// key's record is committed to the catalog before the write is acknowledged, and the directory
/// is loaded from the catalog at start. Either way a value whose blocks are gone (evicted with
/// eviction `drop`, lost) reads as absent, never as something else: every block is checksummed.
actor TierKVBackend: KVBackend {
    enum Durability: Sendable { case cache, durable }
    struct Entry {
        var version: UInt64
        var size: Int
        var expiresAt: KVTimestamp?
        /// Insertion order, for SCAN cursors that survive concurrent writes.
        var sequence: UInt64
    }

    let tiers: TierService
    let partBytes: Int
    let durability: Durability
    private var namespaces: [String: [[UInt8]: Entry]] = [:]
    private var nextSequence: UInt64 = 1
    private var nextVersion: UInt64 = 1
    private var hits = 0, misses = 0
    private var loaded = false

    init(tiers: TierService, durability: Durability = .cache, partBytes: Int = 4 << 20) {
        self.tiers = tiers
        self.durability = durability
        self.partBytes = partBytes
    }

    private var durable: Bool { durability == .durable }

    /// `durable`: the directory as the catalog last committed it, once, when the tiers open.
    private func loadDirectory(_ store: BlockStore) throws {
        guard durable, !loaded else { return }
        loaded = true
        let records = try store.nvme.loadKVRecords()
        // Versions are random per process so a version never repeats across restarts; the
        // sequence (SCAN order) continues after the largest one recorded.
        nextVersion = UInt64.random(in: 1...(UInt64.max / 2))
        for record in records {
            namespaces[record.namespace, default: [:]][record.key] = Entry(
                version: record.version, size: record.size,
                expiresAt: record.expiresAt.map { KVTimestamp(unixMilliseconds: $0) }, sequence: record.sequence)
            nextSequence = max(nextSequence, record.sequence + 1)
        }
    }

    private func persist(_ namespace: String, _ key: [UInt8], _ entry: Entry, in store: BlockStore) async throws {
        guard durable else { return }
        try await store.nvme.putKVRecord(KVRecord(
            namespace: namespace, key: key, version: entry.version, size: entry.size,
            expiresAt: entry.expiresAt?.unixMilliseconds, sequence: entry.sequence))
    }

    private func forget(_ namespace: String, _ key: [UInt8], in store: BlockStore) async throws {
        guard durable else { return }
        try await store.nvme.removeKVRecord(namespace: namespace, key: key)
    }

    nonisolated func now() -> KVTimestamp {
        KVTimestamp(unixMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
    }

    // MARK: Blocks

    /// The block store once open: asked of the tier service once, not on every command.
    private var opened: BlockStore?

    private func store() async throws -> BlockStore {
        if let opened { return opened }
        let store: BlockStore
        do {
            store = try await tiers.blockStore()
        } catch {
            throw KVBackendError(.unavailable, "the storage tiers are not open: \(error)")
        }
        do {
            try loadDirectory(store)
        } catch {
            loaded = false
            throw KVBackendError(.unavailable, "cannot load the key directory from the catalog: \(error)")
        }
        opened = store
        return store
    }

    private static func blockKey(_ namespace: String, _ key: [UInt8], version: UInt64, part: Int) -> BlockKey {
        var bytes = Array("strata-kv-v1".utf8) + [0] + Array(namespace.utf8) + [0]
        bytes += withUnsafeBytes(of: UInt64(key.count).littleEndian, Array.init) + key
        bytes += withUnsafeBytes(of: version.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: UInt64(part).littleEndian, Array.init)
        return BlockKey(bytes: bytes)
    }

    private func parts(_ size: Int) -> Int { max(1, (size + partBytes - 1) / partBytes) }

    private func dropBlocks(_ namespace: String, _ key: [UInt8], _ entry: Entry, from store: BlockStore) async {
        for part in 0..<parts(entry.size) {
            await store.remove(Self.blockKey(namespace, key, version: entry.version, part: part))
        }
    }

    /// The entry of a live key; an expired one is removed on the way.
    private func live(_ namespace: String, _ key: [UInt8]) async -> Entry? {
        guard let entry = namespaces[namespace]?[key] else { return nil }
        if let deadline = entry.expiresAt, deadline <= now() {
            namespaces[namespace]?[key] = nil
            if let store = try? await store() {
                try? await forget(namespace, key, in: store)
                await dropBlocks(namespace, key, entry, from: store)
            }
            return nil
        }
        return entry
    }

    // MARK: KVBackend

    func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer? {
        let name = Array(key.readableBytesView)
        let store = try await store()
        guard let entry = await live(namespace, name) else {
            misses += 1
            return nil
        }
        var value = ByteBufferAllocator().buffer(capacity: entry.size)
        for part in 0..<parts(entry.size) {
            guard let read = try await store.get(Self.blockKey(namespace, name, version: entry.version, part: part)) else {
                // Evicted under the store's policy: the whole value is gone, not a piece of it.
                if namespaces[namespace]?[name]?.version == entry.version {
                    namespaces[namespace]?[name] = nil
                    try? await forget(namespace, name, in: store)
                }
                await dropBlocks(namespace, name, entry, from: store)
                misses += 1
                return nil
            }
            read.withBytes { value.writeBytes($0) }
        }
        guard value.readableBytes == entry.size else {
            throw KVBackendError(.unavailable, "stored value of \(entry.size) bytes read back as \(value.readableBytes)")
        }
        hits += 1
        return value
    }

    func set(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        let name = Array(key.readableBytesView)
        let store = try await store()
        let existing = await live(namespace, name)
        switch condition {
        case .always: break
        case .ifAbsent where existing != nil: return false
        case .ifPresent where existing == nil: return false
        default: break
        }
        let expiresAt: KVTimestamp? = switch expiry {
        case .never: nil
        case .keep: existing?.expiresAt
        case .at(let deadline): deadline
        }
        let version = nextVersion
        nextVersion += 1
        var remaining = value
        var part = 0
        do {
            repeat {
                let slice = remaining.readSlice(length: min(partBytes, remaining.readableBytes)) ?? ByteBuffer()
                try await store.put(Self.blockKey(namespace, name, version: version, part: part),
                                    bytes: slice.readableBytesView, durable: durable)
                part += 1
            } while remaining.readableBytes > 0
        } catch {
            for written in 0..<part { await store.remove(Self.blockKey(namespace, name, version: version, part: written)) }
            throw KVBackendError(.outOfSpace, "cannot store \(value.readableBytes) bytes: \(error)")
        }
        let sequence = namespaces[namespace]?[name]?.sequence ?? { defer { nextSequence += 1 }; return nextSequence }()
        let entry = Entry(version: version, size: value.readableBytes, expiresAt: expiresAt, sequence: sequence)
        do {
            // Durable: the record names the new parts only once they are on disk; until it is
            // committed the old value (if any) stays the one a restart finds.
            try await persist(namespace, name, entry, in: store)
        } catch {
            for written in 0..<part { await store.remove(Self.blockKey(namespace, name, version: version, part: written)) }
            throw KVBackendError(.unavailable, "cannot record \(String(decoding: name, as: UTF8.self)) in the catalog: \(error)")
        }
        let replaced = namespaces[namespace, default: [:]].updateValue(entry, forKey: name)
        if let replaced { await dropBlocks(namespace, name, replaced, from: store) }
        return true
    }

    func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws {
        for pair in pairs {
            _ = try await set(namespace: namespace, key: pair.key, value: pair.value, condition: .always, expiry: .never)
        }
    }

    func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        let store = try await store()
        var removed = 0
        for name in Set(keys.map { Array($0.readableBytesView) }) {
            guard await live(namespace, name) != nil, let entry = namespaces[namespace]?.removeValue(forKey: name) else { continue }
            removed += 1
            try await forget(namespace, name, in: store)
            await dropBlocks(namespace, name, entry, from: store)
        }
        return removed
    }

    func exists(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        _ = try await store()
        var count = 0
        for key in keys where await live(namespace, Array(key.readableBytesView)) != nil { count += 1 }
        return count
    }

    func timeToLive(namespace: String, key: ByteBuffer) async throws -> KVTimeToLive {
        _ = try await store()
        guard let entry = await live(namespace, Array(key.readableBytesView)) else { return .missing }
        guard let deadline = entry.expiresAt else { return .persistent }
        return .milliseconds(max(0, deadline.unixMilliseconds - now().unixMilliseconds))
    }

    func expire(namespace: String, key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool {
        let name = Array(key.readableBytesView)
        let store = try await store()
        guard await live(namespace, name) != nil else { return false }
        namespaces[namespace]?[name]?.expiresAt = deadline
        if let entry = namespaces[namespace]?[name] { try await persist(namespace, name, entry, in: store) }
        if let deadline, deadline <= now() { _ = await live(namespace, name) }
        return true
    }

    func keyCount(namespace: String) async throws -> KVKeyCount {
        _ = try await store()
        let entries = (namespaces[namespace] ?? [:]).values
        let current = now()
        let alive = entries.filter { $0.expiresAt.map { $0 > current } ?? true }
        return KVKeyCount(keys: alive.count, expiring: alive.filter { $0.expiresAt != nil }.count)
    }

    func flush(namespace: String) async throws {
        let store = try await store()
        guard let entries = namespaces.removeValue(forKey: namespace) else { return }
        if durable { try await store.nvme.removeKVNamespace(namespace) }
        for (name, entry) in entries { await dropBlocks(namespace, name, entry, from: store) }
    }

    /// Cursor = the insertion sequence to continue from: every key present for the whole scan
    /// is returned exactly once, whatever is written meanwhile.
    func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage {
        _ = try await store()
        let current = now()
        let ordered = (namespaces[namespace] ?? [:])
            .filter { $0.value.sequence >= cursor && ($0.value.expiresAt.map { $0 > current } ?? true) }
            .sorted { $0.value.sequence < $1.value.sequence }
        let page = ordered.prefix(max(1, count))
        let next = ordered.count > page.count ? page.last!.value.sequence + 1 : 0
        let keys = page.map(\.key).filter { key in
            match.map { RESPGlob.matches(pattern: $0.readableBytesView, key) } ?? true
        }
        return KVScanPage(cursor: next, keys: keys.map { ByteBuffer(bytes: $0) })
    }

    func info() async -> [(section: String, fields: [(String, String)])] {
        var memory: [(String, String)] = [("used_memory", "\(namespaces.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.size } })")]
        var tiersSection: [(String, String)] = [("durability", durable ? "durable" : "cache")]
        if let store = try? await store() {
            let stats = await store.stats()
            memory.append(("strata_host_used_bytes", "\(stats.host.usedBytes)"))
            memory.append(("strata_host_budget_bytes", "\(stats.host.budgetBytes)"))
            memory.append(("strata_nvme_used_bytes", "\(stats.nvme.usedBytes)"))
            tiersSection += [
                ("host_blocks", "\(stats.host.blocks)"), ("host_hits", "\(stats.host.hits)"), ("nvme_blocks", "\(stats.nvme.blocks)"),
                ("nvme_hits", "\(stats.nvme.hits)"), ("demotions", "\(stats.host.demotions)"),
            ]
        }
        return [("memory", memory), ("stats", [("keyspace_hits", "\(hits)"), ("keyspace_misses", "\(misses)")]),
                ("strata", tiersSection)]
    }
}
