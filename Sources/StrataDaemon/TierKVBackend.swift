import Foundation
import Frontend
import NIOCore
import Synchronization
import TierStore

/// The RESP service's keys and values on the storage tiers: each value lives in the block store
/// (host RAM, spilling to NVMe by the store's policy) as blocks of at most `partBytes`, under
/// keys derived from (namespace, key, version, part), so tenants never share blocks and a
/// rewrite never mixes with the value it replaces. The directory (key → size, version, expiry)
/// is in memory: this is the `cache` durability — a restart starts empty, and a value whose
/// blocks the store evicted (with eviction `drop`) reads as absent, never as something else.
actor TierKVBackend: KVBackend {
    struct Entry {
        var version: UInt64
        var size: Int
        var expiresAt: KVTimestamp?
        /// Insertion order, for SCAN cursors that survive concurrent writes.
        var sequence: UInt64
    }

    let tiers: TierService
    let partBytes: Int
    private var namespaces: [String: [[UInt8]: Entry]] = [:]
    private var nextSequence: UInt64 = 1
    private var nextVersion: UInt64 = 1
    private var hits = 0, misses = 0

    init(tiers: TierService, partBytes: Int = 4 << 20) {
        self.tiers = tiers
        self.partBytes = partBytes
    }

    nonisolated func now() -> KVTimestamp {
        KVTimestamp(unixMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
    }

    // MARK: Blocks

    private func store() async throws -> BlockStore {
        do {
            return try await tiers.blockStore()
        } catch {
            throw KVBackendError(.unavailable, "the storage tiers are not open: \(error)")
        }
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
            if let store = try? await store() { await dropBlocks(namespace, key, entry, from: store) }
            return nil
        }
        return entry
    }

    // MARK: KVBackend

    func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer? {
        let name = Array(key.readableBytesView)
        guard let entry = await live(namespace, name) else {
            misses += 1
            return nil
        }
        let store = try await store()
        var value = ByteBufferAllocator().buffer(capacity: entry.size)
        for part in 0..<parts(entry.size) {
            guard let read = try await store.get(Self.blockKey(namespace, name, version: entry.version, part: part)) else {
                // Evicted under the store's policy: the whole value is gone, not a piece of it.
                if namespaces[namespace]?[name]?.version == entry.version { namespaces[namespace]?[name] = nil }
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
        let store = try await store()
        let version = nextVersion
        nextVersion += 1
        var remaining = value
        var part = 0
        do {
            repeat {
                let slice = remaining.readSlice(length: min(partBytes, remaining.readableBytes)) ?? ByteBuffer()
                try await store.put(Self.blockKey(namespace, name, version: version, part: part),
                                    Array(slice.readableBytesView), durable: false)
                part += 1
            } while remaining.readableBytes > 0
        } catch {
            for written in 0..<part { await store.remove(Self.blockKey(namespace, name, version: version, part: written)) }
            throw KVBackendError(.outOfSpace, "cannot store \(value.readableBytes) bytes: \(error)")
        }
        let sequence = namespaces[namespace]?[name]?.sequence ?? { defer { nextSequence += 1 }; return nextSequence }()
        let replaced = namespaces[namespace, default: [:]].updateValue(
            Entry(version: version, size: value.readableBytes, expiresAt: expiresAt, sequence: sequence), forKey: name)
        if let replaced { await dropBlocks(namespace, name, replaced, from: store) }
        return true
    }

    func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws {
        for pair in pairs {
            _ = try await set(namespace: namespace, key: pair.key, value: pair.value, condition: .always, expiry: .never)
        }
    }

    func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        var removed = 0
        for name in Set(keys.map { Array($0.readableBytesView) }) {
            guard await live(namespace, name) != nil, let entry = namespaces[namespace]?.removeValue(forKey: name) else { continue }
            removed += 1
            if let store = try? await store() { await dropBlocks(namespace, name, entry, from: store) }
        }
        return removed
    }

    func exists(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        var count = 0
        for key in keys where await live(namespace, Array(key.readableBytesView)) != nil { count += 1 }
        return count
    }

    func timeToLive(namespace: String, key: ByteBuffer) async throws -> KVTimeToLive {
        guard let entry = await live(namespace, Array(key.readableBytesView)) else { return .missing }
        guard let deadline = entry.expiresAt else { return .persistent }
        return .milliseconds(max(0, deadline.unixMilliseconds - now().unixMilliseconds))
    }

    func expire(namespace: String, key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool {
        let name = Array(key.readableBytesView)
        guard await live(namespace, name) != nil else { return false }
        namespaces[namespace]?[name]?.expiresAt = deadline
        if let deadline, deadline <= now() { _ = await live(namespace, name) }
        return true
    }

    func keyCount(namespace: String) async throws -> KVKeyCount {
        let entries = (namespaces[namespace] ?? [:]).values
        let current = now()
        let alive = entries.filter { $0.expiresAt.map { $0 > current } ?? true }
        return KVKeyCount(keys: alive.count, expiring: alive.filter { $0.expiresAt != nil }.count)
    }

    func flush(namespace: String) async throws {
        guard let entries = namespaces.removeValue(forKey: namespace) else { return }
        let store = try await store()
        for (name, entry) in entries { await dropBlocks(namespace, name, entry, from: store) }
    }

    /// Cursor = the insertion sequence to continue from: every key present for the whole scan
    /// is returned exactly once, whatever is written meanwhile.
    func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage {
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
        var tiersSection: [(String, String)] = [("durability", "cache")]
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
