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
/// starts empty; with `durable` the parts are put durably (fdatasync'd) and then the key's
/// record is committed to the catalog, with the parts' entries and whatever else is queued
/// (group commit), before the write is acknowledged, and the directory is loaded from the
/// catalog at start. Either way a value whose blocks are gone (evicted with
/// eviction `drop`, lost) reads as absent, never as something else: every block is checksummed.
///
/// The directory is under a lock, never held across a wait, so a GET of a value in RAM and a
/// `cache` SET that fits there run on the connection's own thread (`getImmediately`,
/// `setImmediately`) with no hop; everything else takes the `async` methods. As with an actor
/// between its suspension points, a command's check and its write are not atomic against a
/// concurrent command on the same key, except on the fast path's SET, which checks again where
/// it records the write.
final class TierKVBackend: KVBackend, Sendable {
    enum Durability: Sendable { case cache, durable }
    struct Entry: KVDirectoryEntry {
        var version: UInt64
        var size: Int
        var expiresAt: KVTimestamp?
        /// Insertion order, for SCAN cursors that survive concurrent writes.
        var sequence: UInt64
    }

    /// Whose value a block is: recorded for each value's first part (`State.own`), so that when
    /// the store loses that block (evicted past its last tier) the key leaves the directory.
    struct Owner {
        var namespace: String
        var name: [UInt8]
        var version: UInt64
    }

    struct State {
        var namespaces: [String: KVKeyDirectory<Entry>] = [:]
        /// By the key of each value's first part (`own`).
        var owners: [BlockKey: Owner] = [:]
        var nextSequence: UInt64 = 1
        var nextVersion: UInt64 = 1
        var hits = 0, misses = 0
        /// Keys whose value the store evicted past its last tier (INFO `evicted_keys`).
        var evictedKeys = 0
        /// `durable`: evicted since the last warning, and when that was (at most one a minute).
        var evictedUnwarned = 0
        var lastEvictionWarning: ContinuousClock.Instant?
        /// The block store once open (and, `durable`, the directory loaded): asked of the tier service once, not on every command.
        var opened: BlockStore?
        /// `cache`: per namespace, raised when a FLUSHDB starts and again when it is done: a SET
        /// that saw it move while it wrote is ordered before that flush (`orderedBeforeFlush`).
        /// (`durable` needs none: a FLUSHDB changes the directory when its catalog removal
        /// commits, in commit order with the writes, and a SET that reads its key first waits
        /// for it, `flushing`.)
        var flushEpochs: [String: UInt64] = [:]

        mutating func takeVersion() -> UInt64 {
            defer { nextVersion += 1 }
            return nextVersion
        }

        /// Records a value just written (this version of the key) as its first part's owner
        /// (`first`: that part's key, where the caller has it already).
        mutating func own(_ namespace: String, _ name: [UInt8], version: UInt64, first: BlockKey? = nil) {
            owners[first ?? TierKVBackend.blockKey(namespace, name, version: version, part: 0)] =
                Owner(namespace: namespace, name: name, version: version)
        }

        /// Records the value's other parts as its own too (`parts` in all), so that losing any
        /// of them, not only the first, takes its key out of the directory.
        mutating func ownRest(_ namespace: String, _ name: [UInt8], version: UInt64, parts: Int) {
            guard parts > 1 else { return }
            for part in 1..<parts {
                owners[TierKVBackend.blockKey(namespace, name, version: version, part: part)] =
                    Owner(namespace: namespace, name: name, version: version)
            }
        }

        /// Makes `entry`, a value just written in `parts` blocks, the key's; returns the entry it
        /// replaced. Two writes of a new key at once took a sequence each: the key keeps the one
        /// applied first, its place in SCAN order.
        mutating func install(_ entry: Entry, for name: [UInt8], in namespace: String, parts: Int) -> Entry? {
            var entry = entry
            if let existing = namespaces[namespace]?[name] { entry.sequence = existing.sequence }
            own(namespace, name, version: entry.version)
            ownRest(namespace, name, version: entry.version, parts: parts)
            return namespaces[namespace, default: [:]].updateValue(entry, forKey: name)
        }

        mutating func sequence(for namespace: String, _ key: [UInt8]) -> UInt64 {
            Self.sequence(continuing: namespaces[namespace]?[key], next: &nextSequence)
        }

        /// A key keeps its place in SCAN order (an expired one's too); a new one takes the next.
        static func sequence(continuing existing: Entry?, next: inout UInt64) -> UInt64 {
            if let sequence = existing?.sequence { return sequence }
            defer { next += 1 }
            return next
        }
    }

    let tiers: TierService
    let partBytes: Int
    let durability: Durability
    private let state = Mutex(State())
    /// Blocks of replaced or deleted values, removed from every tier in the background: their
    /// keys name a version no directory entry points to any more, so nothing can read them.
    private let reaper: AsyncStream<BlockKey>.Continuation
    private let reaperStream: Mutex<AsyncStream<BlockKey>?>
    /// `durable`: plain SETs of a key at once, other writes of it alone (`KeyWriteLocks`).
    private let writing = KeyWriteLocks()
    /// `durable`: per namespace (`name` empty), a FLUSHDB alone, SETs that read their key first
    /// (NX, XX, KEEPTTL) shared: such a SET never overlaps a FLUSHDB, whose condition it could
    /// have read before the flush and written after it.
    private let flushing = KeyWriteLocks()

    /// A value is stored in parts of this many bytes (the last one shorter).
    static let defaultPartBytes = 4 << 20

    init(tiers: TierService, durability: Durability = .cache, partBytes: Int = defaultPartBytes) {
        self.tiers = tiers
        self.durability = durability
        self.partBytes = partBytes
        let (stream, continuation) = AsyncStream<BlockKey>.makeStream()
        self.reaper = continuation
        self.reaperStream = Mutex(stream)
    }

    deinit { reaper.finish() }

    private var durable: Bool { durability == .durable }

    /// `durable`: the directory as the catalog last committed it, once, when the tiers open.
    private static func loadDirectory(_ state: inout State, _ store: BlockStore, partBytes: Int) throws {
        let records = try store.nvme.loadKVRecords()
        // Versions are random per process so a version never repeats across restarts; the
        // sequence (SCAN order) continues after the largest one recorded.
        state.nextVersion = UInt64.random(in: 1...(UInt64.max / 2))
        // (In SCAN order, so that each key goes to the end of the directory's order.)
        for record in records.sorted(by: { $0.sequence < $1.sequence }) {
            let entry = Entry(
                version: record.version, size: record.size,
                expiresAt: record.expiresAt.map { KVTimestamp(unixMilliseconds: $0) }, sequence: record.sequence)
            state.namespaces[record.namespace, default: [:]][record.key] = entry
            state.own(record.namespace, record.key, version: entry.version)
            state.ownRest(record.namespace, record.key, version: entry.version, parts: parts(entry.size, of: partBytes))
            state.nextSequence = max(state.nextSequence, record.sequence + 1)
        }
    }

    /// `durable`: the keys' records, in order, committed together; then `apply` (the directory's
    /// change), run in the catalog's commit order (`Catalog.putKV`), so of two writes of a key at
    /// once the directory keeps the one the catalog keeps. `cache`: `apply` at once.
    private func persist<Applied: Sendable>(
        _ namespace: String, _ entries: [(key: [UInt8], entry: Entry)], in store: BlockStore,
        apply: @escaping @Sendable () -> Applied
    ) async throws -> Applied {
        guard durable else { return apply() }
        let records = entries.map {
            KVRecord(namespace: namespace, key: $0.key, version: $0.entry.version, size: $0.entry.size,
                     expiresAt: $0.entry.expiresAt?.unixMilliseconds, sequence: $0.entry.sequence)
        }
        return try await Self.inCommitOrder({ try await store.nvme.putKVRecords(records, committed: $0) }, apply)
    }

    /// Runs `commit`, which hands the closure it is given to the catalog to run once committed
    /// (in commit order), with `apply` as that closure, and returns what `apply` returned.
    private static func inCommitOrder<Applied: Sendable>(
        _ commit: (@escaping @Sendable () -> Void) async throws -> Void, _ apply: @escaping @Sendable () -> Applied
    ) async throws -> Applied {
        let applied = Mutex<Applied?>(nil)
        try await commit {
            let outcome = apply()
            applied.withLock { $0 = outcome }
        }
        guard let outcome = applied.withLock({ $0 }) else { preconditionFailure("a KV commit returned before its directory change ran") }
        return outcome
    }

    /// `durable`: removes the key's record if it still names `version`; a newer write's record,
    /// committed meanwhile (a SET racing this removal), stays with it.
    private func forget(_ namespace: String, _ key: [UInt8], version: UInt64, in store: BlockStore) async throws {
        guard durable else { return }
        try await store.nvme.removeKVRecords([KVRecordVersion(namespace: namespace, key: key, version: version)])
    }

    func now() -> KVTimestamp {
        KVTimestamp(unixMilliseconds: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
    }

    // MARK: Blocks

    /// Opens the store now (as the first command would): the directory loaded (`durable`) and
    /// the blocks of an earlier run that no key names dropped. Tiers that fail to open are
    /// said by the commands that need them.
    func open() async {
        _ = try? await store()
    }

    private func store() async throws -> BlockStore {
        if let opened = state.withLock({ $0.opened }) { return opened }
        let store: BlockStore
        do {
            store = try await tiers.blockStore()
        } catch {
            throw KVBackendError(.unavailable, "the storage tiers are not open: \(error)")
        }
        try state.withLock { state in
            guard state.opened == nil else { return }
            if durable {
                do {
                    try Self.loadDirectory(&state, store, partBytes: partBytes)
                } catch {
                    throw KVBackendError(.unavailable, "cannot load the key directory from the catalog: \(error)")
                }
            }
            state.opened = store
        }
        if let stream = reaperStream.withLock({ stream in defer { stream = nil }; return stream }) {
            store.observeLosses { [weak self] lost in self?.lost(lost, in: store) }
            if durable {
                // Values the catalog names whose first part did not survive (a crash between an
                // eviction and the removal of its record): gone from the directory too.
                let firstParts = state.withLock { Array($0.owners.keys) }
                Task { [weak self] in self?.lost(await store.nvme.absent(among: firstParts), in: store) }
            }
            Task.detached(priority: .utility) {
                for await key in stream { await store.remove(key) }
            }
            // Blocks of an earlier run no key names (in `cache` mode, which starts empty, all
            // of them but a durable run's values, kept for a return to `durable`): they held
            // NVMe, counted as used, until the budget pushed them out.
            let keep: Set<BlockKey> = durable
                ? state.withLock { Set($0.owners.keys) }
                : Self.partKeys(of: (try? store.nvme.loadKVRecords()) ?? [], partBytes: partBytes)
            Task { [logger = tiers.logger] in
                let dropped = await store.nvme.dropRecoveredBlocks(except: keep)
                if dropped > 0 { logger.info("dropped \(dropped) block(s) of values an earlier run left on NVMe that no key names") }
            }
        }
        return store
    }

    /// The keys of every part of `records`' values.
    private static func partKeys(of records: [KVRecord], partBytes: Int) -> Set<BlockKey> {
        var keys: Set<BlockKey> = []
        for record in records {
            for part in 0..<parts(record.size, of: partBytes) {
                keys.insert(blockKey(record.namespace, record.key, version: record.version, part: part))
            }
        }
        return keys
    }

    static func blockKey(_ namespace: String, _ key: [UInt8], version: UInt64, part: Int) -> BlockKey {
        // Laid out in a stack buffer, not an array: a SET computes two of these (the new
        // version's and the one it replaces), a GET one.
        var namespace = namespace
        return namespace.withUTF8 { space in
            key.withUnsafeBytes { key in
                withUnsafeTemporaryAllocation(byteCount: blockKeyTag.utf8CodeUnitCount + 2 + space.count + key.count + 24, alignment: 8) {
                    buffer in
                    var end = 0
                    func append(_ bytes: UnsafeRawBufferPointer) {
                        if let source = bytes.baseAddress, bytes.count > 0 {
                            (buffer.baseAddress! + end).copyMemory(from: source, byteCount: bytes.count)
                        }
                        end += bytes.count
                    }
                    func append(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian, append) }
                    append(UnsafeRawBufferPointer(start: blockKeyTag.utf8Start, count: blockKeyTag.utf8CodeUnitCount))
                    buffer[end] = 0
                    end += 1
                    append(UnsafeRawBufferPointer(space))
                    buffer[end] = 0
                    end += 1
                    append(UInt64(key.count))
                    append(key)
                    append(version)
                    append(UInt64(part))
                    return BlockKey(hashing: UnsafeRawBufferPointer(rebasing: buffer[..<end]))
                }
            }
        }
    }

    /// The first bytes hashed into every KV block key ("strata-kv-v1"); changing them renames every stored value.
    private static let blockKeyTag: StaticString = "strata-kv-v1"

    private func parts(_ size: Int) -> Int { Self.parts(size, of: partBytes) }
    private static func parts(_ size: Int, of partBytes: Int) -> Int { max(1, (size + partBytes - 1) / partBytes) }

    /// A value's blocks: its parts of at most `partBytes` (one, empty, for an empty value), each
    /// under its key for this version.
    private func blocks(_ namespace: String, _ name: [UInt8], version: UInt64, parts: [ByteBuffer])
        -> [(key: BlockKey, bytes: ByteBuffer)]
    {
        parts.enumerated().map { (Self.blockKey(namespace, name, version: version, part: $0.offset), $0.element) }
    }

    /// `value` cut into its parts (slices, not copies).
    private func partSlices(of value: ByteBuffer) -> [ByteBuffer] {
        var remaining = value
        var parts: [ByteBuffer] = []
        repeat {
            parts.append(remaining.readSlice(length: min(partBytes, remaining.readableBytes)) ?? ByteBuffer())
        } while remaining.readableBytes > 0
        return parts
    }

    /// Removes a value no entry names any more: at once when it was only in RAM (block keys carry
    /// the version, so each is written once), else through the reaper.
    /// `disowned`: its first part's key, whose owner record the caller has removed already.
    private func reap(_ namespace: String, _ key: [UInt8], _ entry: Entry, from store: BlockStore, disowned: BlockKey? = nil) {
        for part in 0..<parts(entry.size) {
            let block = (part == 0 ? disowned : nil) ?? Self.blockKey(namespace, key, version: entry.version, part: part)
            if part > 0 || disowned == nil { state.withLock { _ = $0.owners.removeValue(forKey: block) } }
            if !store.discardFromRAM(block) { reaper.yield(block) }
        }
    }

    /// Refuses, before anything is written, a write larger than the NVMe log can keep (its budget
    /// less the segment being written), which would push out every other value and then its own
    /// first parts. In `cache` mode too: what leaves host RAM goes down to the log, so a value
    /// the log cannot hold whole is lost, with every other value, as soon as RAM lets go of a part
    /// of it (a read that brings another part up is enough); host and NVMe budgets together
    /// were accepted and lost so.
    private func refuseIfTooLarge(_ size: Int, for store: BlockStore) async throws {
        // (`cache`: a value of a MiB or less needs no look at the log: no hop to it per SET.)
        if !durable && size <= 1 << 20 { return }
        let log = await store.nvme.configuration
        let room = log.budgetBytes - min(log.budgetBytes, UInt64(log.segmentBytes))
        guard UInt64(size) <= room else {
            throw KVBackendError(.outOfSpace, "cannot store \(size) bytes\(durable ? " durably" : ""): the NVMe tier keeps \(room) (tiers.nvme.budget less a segment)")
        }
    }

    /// Whether every one of `blocks`, just put, is still held (`durable`: in the NVMe tier; `cache`:
    /// in either): a value larger than the room the tiers keep pushes its own first parts out
    /// while its last go in.
    private func allStored(_ blocks: [BlockKey], in store: BlockStore) async throws -> Bool {
        for block in blocks where durable ? await !store.nvme.contains(block) : await !store.contains(block) { return false }
        return true
    }

    /// The store lost these blocks (`BlockStore.observeLosses`): a value with a part among
    /// them (each part is owned, `own` and `ownRest`) is gone, and its key leaves the directory now, not when a read finds it
    /// missing, so DBSIZE, SCAN, EXISTS and INFO count only values the store holds, and the
    /// directory of a store that evicts does not grow with every key ever written. Its other
    /// parts are removed; `durable`: its record too (if it still names this version).
    private func lost(_ blocks: [BlockKey], in store: BlockStore) {
        let gone = state.withLock { state -> [(namespace: String, name: [UInt8], entry: Entry)] in
            let gone = blocks.compactMap { block -> (namespace: String, name: [UInt8], entry: Entry)? in
                guard let owner = state.owners.removeValue(forKey: block),
                    let entry = state.namespaces[owner.namespace]?[owner.name], entry.version == owner.version
                else { return nil }
                state.namespaces[owner.namespace]?[owner.name] = nil
                return (owner.namespace, owner.name, entry)
            }
            state.evictedKeys += gone.count
            return gone
        }
        guard !gone.isEmpty else { return }
        if durable {
            // Durable values are written before they are acknowledged, not kept for ever: when
            // the NVMe tier is full the oldest go. Said in the log, not only counted.
            let warn = state.withLock { state -> (count: Int, total: Int)? in
                state.evictedUnwarned += gone.count
                if let last = state.lastEvictionWarning, ContinuousClock.now - last < .seconds(60) { return nil }
                state.lastEvictionWarning = .now
                defer { state.evictedUnwarned = 0 }
                return (state.evictedUnwarned, state.evictedKeys)
            }
            if let warn {
                let detail = "(\(warn.total) since start; INFO evicted_keys): raise tiers.nvme.budget to keep more"
                tiers.logger.warning("KV: \(warn.count) durable value(s) evicted, the oldest, to make room on a full NVMe tier \(detail)")
            }
        }
        for value in gone { reap(value.namespace, value.name, value.entry, from: store) }
        guard durable else { return }
        let records = gone.map { KVRecordVersion(namespace: $0.namespace, key: $0.name, version: $0.entry.version) }
        Task { try? await store.nvme.removeKVRecords(records) }   // one commit for all of them
    }

    /// The entry of a live key; an expired one is removed on the way.
    private func live(_ namespace: String, _ key: [UInt8]) async -> Entry? {
        let current = now()
        let (entry, expired) = state.withLock { state -> (Entry?, Bool) in
            guard let entry = state.namespaces[namespace]?[key] else { return (nil, false) }
            guard let deadline = entry.expiresAt, deadline <= current else { return (entry, false) }
            state.namespaces[namespace]?[key] = nil
            return (entry, true)
        }
        guard let entry else { return nil }
        guard expired else { return entry }
        if let store = try? await store() {
            try? await forget(namespace, key, version: entry.version, in: store)
            reap(namespace, key, entry, from: store)
        }
        return nil
    }

    /// Removes the key's entry if it still names this version; true if it did.
    @discardableResult
    private func removeEntry(_ namespace: String, _ key: [UInt8], version: UInt64) -> Bool {
        state.withLock { state in
            guard state.namespaces[namespace]?[key]?.version == version else { return false }
            state.namespaces[namespace]?[key] = nil
            return true
        }
    }

    // MARK: Fast paths

    func getImmediately(namespace: String, key: ByteBuffer) throws -> KVImmediate<ByteBuffer?> {
        let name = Array(key.readableBytesView)
        guard let (store, entry) = immediateEntry(namespace, name) else { return .wait }
        guard let entry else { return .done(nil) }
        // A value of several parts is copied off the event loop: the loop serves other connections.
        guard entry.size <= partBytes, let value = try copyFromRAM(store, namespace, name, entry) else { return .wait }
        state.withLock { $0.hits += 1 }
        return .done(value)
    }

    /// A copy of the entry's value, every part of it read from RAM; nil if one is not there whole.
    private func copyFromRAM(_ store: BlockStore, _ namespace: String, _ name: [UInt8], _ entry: Entry) throws -> ByteBuffer? {
        var value = ByteBufferAllocator().buffer(capacity: entry.size)
        for part in 0..<parts(entry.size) {
            let found = try store.readFromRAM(Self.blockKey(namespace, name, version: entry.version, part: part)) {
                value.writeBytes($0)
            }
            guard found else { return nil }
        }
        return value.readableBytes == entry.size ? value : nil
    }

    /// A value of one part in RAM, handed to `body` in place (borrowed for the call), so the
    /// connection writes it to its socket without a copy; one the connection copies into its
    /// replies (under `RESPEncoder.zeroCopyThreshold`) is handed over under the host tier's
    /// lock, with no borrow to take and give back.
    func withValueImmediately(
        namespace: String, key: ByteBuffer, _ body: (UnsafeRawBufferPointer) -> Void
    ) throws -> KVImmediate<Bool> {
        let name = Array(key.readableBytesView)
        guard let (store, entry) = immediateEntry(namespace, name) else { return .wait }
        guard let entry else { return .done(false) }
        guard parts(entry.size) == 1 else { return .wait }
        // Not in RAM (or not whole): the slow path reads it from below.
        let block = Self.blockKey(namespace, name, version: entry.version, part: 0)
        var whole = false
        let found = try store.readFromRAM(block, lockedUpTo: RESPEncoder.zeroCopyThreshold - 1) { bytes in
            guard bytes.count == entry.size else { return }
            body(bytes)
            whole = true
        }
        guard found, whole else { return .wait }
        state.withLock { $0.hits += 1 }
        return .done(true)
    }

    /// The sizes first, under one lock, so that an MGET that must wait copies nothing: `.wait`
    /// as for `withImmediateEntries`, or for a value of several parts or values over `maxBytes` in
    /// all; then each copied out of RAM (`.wait` if one is not there).
    func getImmediately(namespace: String, keys: [ByteBuffer], maxBytes: Int) throws -> KVImmediate<[ByteBuffer?]> {
        let names = keys.map { Array($0.readableBytesView) }
        var entries: [Entry?] = []
        entries.reserveCapacity(names.count)
        var total = 0
        let store = withImmediateEntries(namespace, names) { entry in
            total += entry?.size ?? 0
            entries.append(entry)
            return (entry?.size ?? 0) <= partBytes && total <= maxBytes
        }
        guard let store else { return .wait }
        var values: [ByteBuffer?] = []
        values.reserveCapacity(entries.count)
        for (name, entry) in zip(names, entries) {
            guard let entry else {
                values.append(nil)
                continue
            }
            guard let value = try copyFromRAM(store, namespace, name, entry) else { return .wait }
            values.append(value)
        }
        let hits = values.count(where: { $0 != nil })
        state.withLock { state in
            state.hits += hits
            state.misses += values.count - hits
        }
        return .done(values)
    }

    /// Counts from the directory alone.
    func existsImmediately(namespace: String, keys: [ByteBuffer]) -> KVImmediate<Int> {
        var count = 0
        let store = withImmediateEntries(namespace, keys.map { Array($0.readableBytesView) }) { entry in
            if entry != nil { count += 1 }
            return true
        }
        return store == nil ? .wait : .done(count)
    }

    /// For the fast paths of several keys: hands `visit` each key's entry (nil: absent), in
    /// order, under one lock, and returns the store; nil (the caller waits) when the store is not
    /// open (the slow path reports why), a listed key has expired (the slow path removes it), or
    /// `visit` says no. No hit or miss is counted.
    private func withImmediateEntries(_ namespace: String, _ names: [[UInt8]], _ visit: (Entry?) -> Bool) -> BlockStore? {
        let current = now()
        return state.withLock { state -> BlockStore? in
            guard let store = state.opened else { return nil }
            for name in names {
                let entry = state.namespaces[namespace]?[name]
                if let deadline = entry?.expiresAt, deadline <= current { return nil }
                guard visit(entry) else { return nil }
            }
            return store
        }
    }

    /// For the fast paths: the store and the key's live entry (nil entry: certainly absent, a
    /// miss counted); nil when they must wait (the store not open, or the entry expired, which
    /// the slow path removes).
    private func immediateEntry(_ namespace: String, _ name: [UInt8]) -> (BlockStore, Entry?)? {
        let current = now()
        return state.withLock { state -> (BlockStore, Entry?)? in
            guard let store = state.opened else { return nil }
            guard let entry = state.namespaces[namespace]?[name] else {
                state.misses += 1
                return (store, nil)
            }
            if let deadline = entry.expiresAt, deadline <= current { return nil }
            return (store, entry)
        }
    }

    func setImmediately(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> {
        guard !durable, value.readableBytes <= partBytes else { return .wait }
        return setImmediately(namespace: namespace, key: key, size: value.readableBytes, condition: condition, expiry: expiry) {
            $0.putInRAMImmediately($1(0), bytes: value.readableBytesView)
        }
    }

    /// A `cache` value is received straight into slots of the host arena, one per part (all
    /// reserved up front: a value the arena cannot take whole goes the ordinary way).
    func stageValue(length: Int) -> (any KVStagedValue)? {
        // Durable: the value is written to disk from buffers of its parts' sizes (`set(pieces:)`),
        // not from the connection's buffer, which NIO rounds up to a power of two (a 16 MiB value
        // in a 32 MiB buffer, which glibc maps fresh from the kernel each time).
        if durable { return BufferedValue(length: length, partBytes: partBytes) }
        guard let store = state.withLock({ $0.opened }) else { return nil }
        var blocks: [StagedBlock] = []
        blocks.reserveCapacity(parts(length))
        for part in 0..<parts(length) {
            guard let block = store.stageInRAM(length: min(partBytes, length - part * partBytes)) else {
                for block in blocks { block.discard() }
                return nil
            }
            blocks.append(block)
        }
        return StagedValue(blocks)
    }

    func setImmediately(
        namespace: String, key: ByteBuffer, staged: any KVStagedValue, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> {
        guard !durable, let staged = staged as? StagedValue, staged.isComplete else { return .wait }
        return try setImmediately(namespace: namespace, key: key, size: staged.length, condition: condition, expiry: expiry) {
            store, partKey in
            // Part 0 decides: until it is published nothing is used up, and `.wait` may still
            // take the value the ordinary way.
            guard store.publishStaged(staged.blocks[0], as: partKey(0)) else { return false }
            for part in staged.blocks.indices.dropFirst() where !store.publishStaged(staged.blocks[part], as: partKey(part)) {
                // The host budget shrank under the value while it was stored (a reload): what
                // was published goes, and the client hears it; the key is unchanged.
                for published in 0..<part where !store.discardFromRAM(partKey(published)) { reaper.yield(partKey(published)) }
                staged.discard()
                throw KVBackendError(.unavailable, "the host tier shrank while a \(staged.length)-byte value was stored; try again")
            }
            return true
        }
    }

    /// A value's parts, each a staged slot of the arena, filled in order: `receive` offers the
    /// room of the first part not yet full (a socket read fills one part at most).
    final class StagedValue: KVStagedValue {
        let blocks: [StagedBlock]
        let length: Int
        init(_ blocks: [StagedBlock]) {
            self.blocks = blocks
            length = blocks.reduce(0) { $0 + $1.length }
        }
        var isComplete: Bool { blocks.allSatisfy(\.isComplete) }
        /// The part being filled; nil once all are full (or none can take more).
        private var filling: StagedBlock? { blocks.first { !$0.isComplete } }
        func append(_ bytes: UnsafeRawBufferPointer) -> Int {
            var taken = 0
            while taken < bytes.count, let block = filling {
                let count = block.append(UnsafeRawBufferPointer(rebasing: bytes[taken...]))
                if count == 0 { break }   // published or discarded under us
                taken += count
            }
            return taken
        }
        func receive(_ fill: (UnsafeMutableRawBufferPointer) -> Int) -> Int { filling?.receive(fill) ?? 0 }
        func materialize() -> ByteBuffer? {
            var value = ByteBuffer()
            value.reserveCapacity(length)
            for block in blocks {
                guard block.withBytes({ value.writeBytes($0) }) != nil else { return nil }
            }
            return value
        }
        func discard() { for block in blocks { block.discard() } }
    }

    /// A value received into buffers of its parts' sizes, in order (`durable`): `pieces()`
    /// hands them to `set(pieces:)` as the value's parts. Filled on the connection's event loop,
    /// then handed over whole; the lock only makes that hand-over checkable.
    final class BufferedValue: KVStagedValue {
        let length: Int
        private let partBytes: Int
        /// The parts received so far, in order; nil once discarded.
        private let received: Mutex<[ByteBuffer]?>

        init(length: Int, partBytes: Int) {
            self.length = length
            self.partBytes = partBytes
            received = Mutex([])
        }

        var isComplete: Bool { received.withLock { $0.map { $0.reduce(0) { $0 + $1.readableBytes } == length } ?? false } }

        func append(_ bytes: UnsafeRawBufferPointer) -> Int {
            var taken = 0
            while taken < bytes.count {
                let count = receive { room in
                    let count = min(room.count, bytes.count - taken)
                    room.baseAddress!.copyMemory(from: bytes.baseAddress! + taken, byteCount: count)
                    return count
                }
                if count <= 0 { break }
                taken += count
            }
            return taken
        }

        /// Offers the room left in the part being filled (each part a buffer of its own, made
        /// when its first byte comes).
        func receive(_ fill: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
            received.withLock { slot -> Int in
                guard var received = slot else { return 0 }
                slot = nil   // (not copied on write while it is filled)
                defer { slot = received }
                let done = received.reduce(0) { $0 + $1.readableBytes }
                guard done < length else { return 0 }
                if received.last.map({ $0.readableBytes == partBytes }) ?? true {
                    received.append(ByteBufferAllocator().buffer(capacity: min(partBytes, length - done)))
                }
                let last = received.count - 1
                let room = min(partBytes, length - last * partBytes) - received[last].readableBytes
                let count = received[last].withUnsafeMutableWritableBytes { writable in
                    fill(UnsafeMutableRawBufferPointer(rebasing: writable[..<room]))
                }
                guard count > 0 else { return count }
                received[last].moveWriterIndex(forwardBy: count)
                return count
            }
        }

        func materialize() -> ByteBuffer? { pieces()?.joined() }

        func pieces() -> [ByteBuffer]? { received.withLock { $0 } }

        func discard() { received.withLock { $0 = nil } }
    }

    /// The fast path's SET: an early check under the lock, then `place` puts the block of the new
    /// version (false: it would have to wait; nothing changed), then the check again and the
    /// record, atomically: what the command answers is decided there.
    private func setImmediately(
        namespace: String, key: ByteBuffer, size: Int, condition: KVSetCondition, expiry: KVExpiry,
        place: (BlockStore, (Int) -> BlockKey) throws -> Bool
    ) rethrows -> KVImmediate<Bool> {
        let name = Array(key.readableBytesView)
        let current = now()
        enum Decision { case wait, skip, write(store: BlockStore, version: UInt64) }
        let decision = state.withLock { state -> Decision in
            guard let store = state.opened else { return .wait }
            // (An unconditional SET has nothing to check before it writes.)
            if case .always = condition { return .write(store: store, version: state.takeVersion()) }
            var existing = state.namespaces[namespace]?[name]
            if let deadline = existing?.expiresAt, deadline <= current { existing = nil }
            switch condition {
            case .ifAbsent where existing != nil, .ifPresent where existing == nil: return .skip
            default: return .write(store: store, version: state.takeVersion())
            }
        }
        guard case .write(let store, let version) = decision else {
            if case .skip = decision { return .done(false) }
            return .wait
        }
        // (Part 0's key is needed again for the owner record: computed once.)
        let first = Self.blockKey(namespace, name, version: version, part: 0)
        let partKey = { (part: Int) in part == 0 ? first : Self.blockKey(namespace, name, version: version, part: part) }
        guard try place(store, partKey) else { return .wait }
        // Checked again where the write is recorded, under the same lock: another command may
        // have changed the key since the check above. The answer is decided here, never `.wait`,
        // since `place` may have used up its bytes (a staged value is published by then).
        let recordedAt = now()
        let recorded = state.withLock { state -> (written: Bool, old: Entry?, oldFirst: BlockKey?) in
            // One lookup of the key for the check and the write (the directory is modified in
            // place, so the sequence counter is taken out of `state` meanwhile).
            var nextSequence = state.nextSequence
            let outcome = Self.replace(&state.namespaces[namespace, default: [:]][name]) { old -> Entry? in
                var now = old
                if let deadline = now?.expiresAt, deadline <= recordedAt { now = nil }   // expired: absent
                switch condition {
                case .ifAbsent where now != nil, .ifPresent where now == nil: return nil
                default: break
                }
                let expiresAt: KVTimestamp? = switch expiry {
                case .never: nil
                case .keep: now?.expiresAt
                case .at(let deadline): deadline
                }
                return Entry(version: version, size: size, expiresAt: expiresAt,
                             sequence: State.sequence(continuing: old, next: &nextSequence))
            }
            state.nextSequence = nextSequence
            // A refused write leaves no empty namespace behind (the access above made one).
            if !outcome.written, state.namespaces[namespace]?.isEmpty == true { state.namespaces[namespace] = nil }
            guard outcome.written else { return (false, nil, nil) }
            state.own(namespace, name, version: version, first: first)
            // (An expired entry it replaces goes too: its blocks are reaped below.) Its owner
            // record goes here, under the same lock, rather than in `reap`.
            let oldFirst = outcome.old.map { Self.blockKey(namespace, name, version: $0.version, part: 0) }
            if let oldFirst { state.owners.removeValue(forKey: oldFirst) }
            return (true, outcome.old, oldFirst)
        }
        guard recorded.written else {
            for part in 0..<parts(size) where !store.discardFromRAM(partKey(part)) { reaper.yield(partKey(part)) }
            return .done(false)
        }
        if let old = recorded.old { reap(namespace, name, old, from: store, disowned: recorded.oldFirst) }
        return .done(true)
    }

    /// Replaces `slot` with what `decide` makes of it, unless that is nil (the write is refused):
    /// (written, the entry it replaced). Through one `inout` access, so one lookup of the key.
    private static func replace(_ slot: inout Entry?, _ decide: (Entry?) -> Entry?) -> (written: Bool, old: Entry?) {
        guard let entry = decide(slot) else { return (false, nil) }
        defer { slot = entry }
        return (true, slot)
    }

    // MARK: KVBackend

    func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer? {
        try await read(namespace, key, into: { ByteBufferAllocator().buffer(capacity: $0) }) { value, part in
            value.writeBytes(part)
        }
    }

    /// Each part in a buffer of its own (at most `partBytes`, which glibc serves from its heap
    /// and reuses), never the whole value in one.
    func getPieces(namespace: String, key: ByteBuffer) async throws -> [ByteBuffer]? {
        let allocator = ByteBufferAllocator()
        return try await read(namespace, key, into: { _ in [ByteBuffer]() }) { pieces, part in
            pieces.append(allocator.buffer(bytes: part))
        }
    }

    /// The length of the value of `key` from the directory, once every part of it is found in a
    /// tier, without reading any (HTTP HEAD, STRLEN); nil if the key does not exist or its value
    /// was evicted, as `get` would find it.
    func length(namespace: String, key: ByteBuffer) async throws -> Int? {
        let store = try await store()
        guard let entry = try await walkParts(namespace, Array(key.readableBytesView), in: store, start: { _ in }, part: {
            await store.contains($0)
        }) else { return nil }
        state.withLock { $0.hits += 1 }
        return entry.size
    }

    /// The value of `key`, its parts from whichever tier holds them appended in order to what
    /// `start(size)` made; nil if the key does not exist, or its value was evicted.
    private func read<Value>(
        _ namespace: String, _ key: ByteBuffer, into start: (Int) -> Value,
        append: (inout Value, UnsafeRawBufferPointer) -> Void
    ) async throws -> Value? {
        let store = try await store()
        var value: Value?
        var bytes = 0
        guard let entry = try await walkParts(namespace, Array(key.readableBytesView), in: store, start: { entry in
            value = start(entry.size)
            bytes = 0
        }, part: { block in
            guard let read = try await store.get(block) else { return false }
            read.withBytesReleasing {
                bytes += $0.count
                append(&value!, $0)
            }
            return true
        }), let value else { return nil }
        guard bytes == entry.size else {
            throw KVBackendError(.unavailable, "stored value of \(entry.size) bytes read back as \(bytes)")
        }
        state.withLock { $0.hits += 1 }
        return value
    }

    /// Walks the live value of `name` part by part: `start(entry)`, then `part(block)` for each
    /// of its blocks in order (false: no tier has it), and returns its entry. A value replaced
    /// meanwhile (its blocks went with the old version) is walked again as the new one, so a key
    /// that always had a value is never reported missing; one whose part is gone was evicted
    /// under the store's policy, and is removed. Nil (a miss counted) if the key does not exist
    /// or was evicted.
    private func walkParts(
        _ namespace: String, _ name: [UInt8], in store: BlockStore, start: (Entry) -> Void,
        part: (BlockKey) async throws -> Bool
    ) async throws -> Entry? {
        var replacedWhileReading = 0
        walk: while true {
            guard let entry = await live(namespace, name) else {
                state.withLock { $0.misses += 1 }
                return nil
            }
            start(entry)
            for index in 0..<parts(entry.size) {
                if try await part(Self.blockKey(namespace, name, version: entry.version, part: index)) { continue }
                if replacedWhileReading < 8, state.withLock({ $0.namespaces[namespace]?[name]?.version }) != entry.version {
                    replacedWhileReading += 1
                    continue walk
                }
                // Evicted: the whole value is gone, not a piece of it.
                if removeEntry(namespace, name, version: entry.version) {
                    state.withLock { $0.evictedKeys += 1 }
                    try? await forget(namespace, name, version: entry.version, in: store)
                }
                reap(namespace, name, entry, from: store)
                state.withLock { $0.misses += 1 }
                return nil
            }
            return entry
        }
    }

    func set(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        try await set(namespace, key, size: value.readableBytes, parts: partSlices(of: value), condition: condition, expiry: expiry)
    }

    func set(
        namespace: String, key: ByteBuffer, pieces: [ByteBuffer], condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        let (size, parts) = self.parts(of: pieces)
        return try await set(namespace, key, size: size, parts: parts, condition: condition, expiry: expiry)
    }

    /// A value's size and parts: `pieces` themselves when they are cut as the store cuts values
    /// (a `BufferedValue`'s are), else slices of them joined.
    private func parts(of pieces: [ByteBuffer]) -> (size: Int, parts: [ByteBuffer]) {
        let size = pieces.reduce(0) { $0 + $1.readableBytes }
        if pieces.count == parts(size), pieces.dropLast().allSatisfy({ $0.readableBytes == partBytes }) {
            return (size, pieces)
        }
        return (size, partSlices(of: pieces.joined()))
    }

    private func set(
        _ namespace: String, _ key: ByteBuffer, size: Int, parts: [ByteBuffer], condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        guard durable else { return try await write(namespace, key, size: size, parts: parts, condition: condition, expiry: expiry) }
        // (A write that reads the key before it writes holds it alone; plain SETs share it.)
        let readsKey = condition != .always || expiry == .keep
        let keyLock = KeyWriteLocks.Key(namespace: namespace, name: Array(key.readableBytesView))
        guard readsKey else {
            return try await writing.withLocks([keyLock], .shared) {
                try await write(namespace, key, size: size, parts: parts, condition: condition, expiry: expiry)
            }
        }
        return try await flushing.withLocks([.init(namespace: namespace, name: [])], .shared) {
            try await writing.withLocks([keyLock], .alone) {
                try await write(namespace, key, size: size, parts: parts, condition: condition, expiry: expiry)
            }
        }
    }

    private func write(
        _ namespace: String, _ key: ByteBuffer, size: Int, parts: [ByteBuffer], condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        let name = Array(key.readableBytesView)
        let store = try await store()
        let epoch = state.withLock { $0.flushEpochs[namespace] ?? 0 }   // (`cache`)
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
        try await refuseIfTooLarge(size, for: store)
        let version = state.withLock { $0.takeVersion() }
        let blocks = self.blocks(namespace, name, version: version, parts: parts)
        var written = 0
        do {
            for block in blocks {
                // Durable: on disk now, catalogued by the commit of the key's record below (one
                // commit for both, shared with the other writes of the moment).
                try await store.put(block.key, bytes: block.bytes.readableBytesView, durable: durable, awaitingCatalog: false)
                written += 1
            }
        } catch {
            for block in blocks[..<written] { await store.remove(block.key) }
            throw KVBackendError(.outOfSpace, "cannot store \(size) bytes: \(error)")
        }
        if try await !allStored(blocks.map(\.key), in: store) {
            for block in blocks { await store.remove(block.key) }
            throw KVBackendError(.outOfSpace, "cannot store \(size) bytes: the tiers made room for it with its own parts (tiers.host.budget, tiers.nvme.budget)")
        }
        let sequence = state.withLock { $0.sequence(for: namespace, name) }
        let entry = Entry(version: version, size: size, expiresAt: expiresAt, sequence: sequence)
        let outcome: (flushed: Bool, replaced: Entry?)
        do {
            // Durable: the record names the new parts only once they are on disk; until it is
            // committed the old value (if any) stays the one a restart finds.
            let parts = blocks.count
            outcome = try await persist(namespace, [(name, entry)], in: store) {
                self.state.withLock { state -> (flushed: Bool, replaced: Entry?) in
                    // (`durable`: in commit order with a FLUSHDB's own change, `flush`.)
                    guard self.durable || state.flushEpochs[namespace] ?? 0 == epoch else { return (true, nil) }
                    return (false, state.install(entry, for: name, in: namespace, parts: parts))
                }
            }
        } catch {
            for block in blocks { await store.remove(block.key) }
            throw KVBackendError(.unavailable, "cannot record \(String(decoding: name, as: UTF8.self)) in the catalog: \(error)")
        }
        if outcome.flushed {
            await orderedBeforeFlush(blocks.map(\.key), in: store)
        } else if let replaced = outcome.replaced {
            reap(namespace, name, replaced, from: store)
        }
        return true
    }

    /// `cache`: writes that a FLUSHDB overlapped (it ran between their start and their directory
    /// update) count as done before it, so their blocks go as it took everything else.
    private func orderedBeforeFlush(_ blocks: [BlockKey], in store: BlockStore) async {
        for key in blocks { await store.remove(key) }
    }

    /// Parts of an MSET put at once, at most (`durable`).
    static let concurrentPuts = 32
    static let concurrentPutBytes = 64 << 20

    /// MSET, and a run of plain SETs (`RESPCommandHandler.handle(batch:)`): every value's parts
    /// are put (`durable`: all at once, so they share the log's writes and syncs), then the
    /// records committed in one transaction, then the directory updated under one lock, so no
    /// one sees some of the pairs and not others. A failure writes none of them.
    func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws {
        try await set(namespace: namespace, piecePairs: pairs.map { ($0.key, [$0.value]) })
    }

    func set(namespace: String, piecePairs pairs: [(key: ByteBuffer, pieces: [ByteBuffer])]) async throws {
        guard pairs.count > 1 else {
            for pair in pairs {
                _ = try await set(namespace: namespace, key: pair.key, pieces: pair.pieces, condition: .always, expiry: .never)
            }
            return
        }
        guard durable else { return try await write(namespace: namespace, piecePairs: pairs) }
        try await writing.withLocks(pairs.map { .init(namespace: namespace, name: Array($0.key.readableBytesView)) }, .shared) {
            try await write(namespace: namespace, piecePairs: pairs)
        }
    }

    private func write(namespace: String, piecePairs pairs: [(key: ByteBuffer, pieces: [ByteBuffer])]) async throws {
        let store = try await store()
        let values = pairs.map { self.parts(of: $0.pieces) }
        // (`cache`: each value alone must fit; together they may evict each other, as in any cache.)
        try await refuseIfTooLarge(durable ? values.reduce(0) { $0 + $1.size } : values.map(\.size).max() ?? 0, for: store)
        let epoch = state.withLock { $0.flushEpochs[namespace] ?? 0 }
        let items = state.withLock { state in
            zip(pairs, values).map { pair, value in
                (name: Array(pair.key.readableBytesView), size: value.size, parts: value.parts, version: state.takeVersion())
            }
        }
        let blocks = items.flatMap { self.blocks(namespace, $0.name, version: $0.version, parts: $0.parts) }
        func removeBlocks() async {
            for (key, _) in blocks { await store.remove(key) }
        }
        do {
            if durable {
                // At once, but bounded: each put in flight holds a copy of its part.
                try await withThrowingTaskGroup(of: Int.self) { group in
                    var (puts, bytes) = (0, 0)
                    for (key, slice) in blocks {
                        while puts > 0 && (puts >= Self.concurrentPuts || bytes + slice.readableBytes > Self.concurrentPutBytes) {
                            bytes -= try await group.next() ?? 0
                            puts -= 1
                        }
                        group.addTask {
                            try await store.put(key, bytes: slice.readableBytesView, durable: true, awaitingCatalog: false)
                            return slice.readableBytes
                        }
                        (puts, bytes) = (puts + 1, bytes + slice.readableBytes)
                    }
                    try await group.waitForAll()
                }
            } else {
                for (key, slice) in blocks { try await store.put(key, bytes: slice.readableBytesView, durable: false) }
            }
        } catch {
            await removeBlocks()
            throw KVBackendError(.outOfSpace, "cannot store \(pairs.count) values: \(error)")
        }
        if durable, try await !allStored(blocks.map(\.0), in: store) {
            await removeBlocks()
            throw KVBackendError(.outOfSpace, "cannot store \(pairs.count) values: the NVMe tier made room for them with their own parts (tiers.nvme.budget)")
        }
        let entries = state.withLock { state in
            var fresh: [[UInt8]: UInt64] = [:]   // a key new to the directory, listed twice: one sequence
            return items.map { item -> (key: [UInt8], entry: Entry) in
                let sequence = fresh[item.name] ?? state.sequence(for: namespace, item.name)
                if state.namespaces[namespace]?[item.name] == nil { fresh[item.name] = sequence }
                return (item.name, Entry(version: item.version, size: item.size, expiresAt: nil, sequence: sequence))
            }
        }
        let replaced: [Entry?]?
        do {
            let partBytes = self.partBytes
            replaced = try await persist(namespace, entries, in: store) {
                self.state.withLock { state -> [Entry?]? in
                    guard self.durable || state.flushEpochs[namespace] ?? 0 == epoch else { return nil }
                    return entries.map { state.install($0.entry, for: $0.key, in: namespace, parts: Self.parts($0.entry.size, of: partBytes)) }
                }
            }
        } catch {
            await removeBlocks()
            throw KVBackendError(.unavailable, "cannot record \(pairs.count) keys in the catalog: \(error)")
        }
        guard let replaced else {
            await orderedBeforeFlush(blocks.map(\.0), in: store)
            return
        }
        for (item, old) in zip(entries, replaced) {
            if let old { reap(namespace, item.key, old, from: store) }
        }
    }

    func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        let store = try await store()
        var removed = 0
        for name in Set(keys.map { Array($0.readableBytesView) }) {
            guard let entry = await live(namespace, name), removeEntry(namespace, name, version: entry.version) else { continue }
            removed += 1
            try await forget(namespace, name, version: entry.version, in: store)
            reap(namespace, name, entry, from: store)
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
        // Durable: a write of the key between the entry's change and its record's would leave
        // the catalog naming the value it replaced.
        guard durable else { return try await changeExpiry(namespace, key, at: deadline) }
        return try await writing.withLocks([.init(namespace: namespace, name: Array(key.readableBytesView))], .alone) {
            try await changeExpiry(namespace, key, at: deadline)
        }
    }

    private func changeExpiry(_ namespace: String, _ key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool {
        let name = Array(key.readableBytesView)
        let store = try await store()
        guard let entry = await live(namespace, name) else { return false }
        // PERSIST of a key with no expiry changes nothing and answers 0, as in Redis.
        guard deadline != nil || entry.expiresAt != nil else { return false }
        let change: @Sendable () -> Bool = {
            self.state.withLock { state in
                // (`cache`: whichever value the key holds now.)
                guard let held = state.namespaces[namespace]?[name], held.version == entry.version || !self.durable else { return false }
                state.namespaces[namespace]?[name]?.expiresAt = deadline
                return true
            }
        }
        // Durable: the record's expiry changes only while it names this version, and the entry's
        // when that commits, so an EXPIRE racing a FLUSHDB, DEL or eviction of the key never
        // brings back a record they removed. A key removed meanwhile answers 0.
        let changed = durable
            ? try await Self.inCommitOrder({
                try await store.nvme.setKVExpiry(KVRecordVersion(namespace: namespace, key: name, version: entry.version),
                                                 expiresAt: deadline?.unixMilliseconds, committed: $0)
            }, change)
            : change()
        guard changed else { return false }
        if let deadline, deadline <= now() { _ = await live(namespace, name) }
        return true
    }

    func keyCount(namespace: String) async throws -> KVKeyCount {
        _ = try await store()
        let current = now()
        // (Only where some key has an expiry is the namespace walked, for those that passed it.)
        return state.withLock { state in
            guard let keys = state.namespaces[namespace] else { return KVKeyCount(keys: 0, expiring: 0) }
            guard keys.expiringCount > 0 else { return KVKeyCount(keys: keys.count, expiring: 0) }
            var expired = 0
            for entry in keys.values { if let deadline = entry.expiresAt, deadline <= current { expired += 1 } }
            return KVKeyCount(keys: keys.count - expired, expiring: keys.expiringCount - expired)
        }
    }

    func flush(namespace: String) async throws {
        let store = try await store()
        if durable {
            // The directory is emptied when the catalog commits the removal, in order with the
            // writes' own commits (`persist`): a SET committed before it is removed with the rest,
            // one committed after it stays, in the directory as in the catalog. A SET that reads
            // its key first is not under way meanwhile (`flushing`).
            let entries = try await flushing.withLocks([.init(namespace: namespace, name: [])], .alone) {
                try await Self.inCommitOrder({ try await store.nvme.removeKVNamespace(namespace, committed: $0) }) {
                    self.state.withLock { $0.namespaces.removeValue(forKey: namespace) }
                }
            }
            for (name, entry) in entries ?? [:] { reap(namespace, name, entry, from: store) }
            return
        }
        let entries = state.withLock { state in
            state.flushEpochs[namespace, default: 0] += 1
            return state.namespaces.removeValue(forKey: namespace)
        }
        defer { state.withLock { $0.flushEpochs[namespace, default: 0] += 1 } }
        guard let entries else { return }
        for (name, entry) in entries { reap(namespace, name, entry, from: store) }
    }

    /// Cursor = the insertion sequence to continue from: every key present for the whole scan
    /// is returned exactly once, whatever is written meanwhile. A call costs its page
    /// (`KVKeyDirectory.scan`), not the namespace.
    func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage {
        _ = try await store()
        let current = now()
        let (page, next) = state.withLock { state in
            state.namespaces[namespace]?.scan(from: cursor, count: count) { $0.expiresAt.map { $0 > current } ?? true }
        } ?? ([], 0)
        let keys = page.filter { key in
            match.map { RESPGlob.matches(pattern: $0.readableBytesView, key) } ?? true
        }
        return KVScanPage(cursor: next, keys: keys.map { ByteBuffer(bytes: $0) })
    }

    func info() async -> [(section: String, fields: [(String, String)])] {
        let opened = try? await store()   // (durable: loads the directory, which the counts below read)
        let (used, hits, misses, evicted) = state.withLock { state in
            (state.namespaces.values.reduce(0) { $0 + $1.totalSize }, state.hits, state.misses,
             state.evictedKeys)
        }
        var memory: [(String, String)] = [("used_memory", "\(used)")]
        var tiersSection: [(String, String)] = [("durability", durable ? "durable" : "cache")]
        if let store = opened {
            let stats = await store.stats()
            memory.append(("strata_host_used_bytes", "\(stats.host.usedBytes)"))
            memory.append(("strata_host_budget_bytes", "\(stats.host.budgetBytes)"))
            memory.append(("strata_nvme_used_bytes", "\(stats.nvme.usedBytes)"))
            tiersSection += [
                ("host_blocks", "\(stats.host.blocks)"), ("host_hits", "\(stats.host.hits)"), ("nvme_blocks", "\(stats.nvme.blocks)"),
                ("nvme_hits", "\(stats.nvme.hits)"), ("demotions", "\(stats.host.demotions)"),
            ]
        }
        return [("memory", memory),
                ("stats", [("keyspace_hits", "\(hits)"), ("keyspace_misses", "\(misses)"), ("evicted_keys", "\(evicted)")]),
                ("strata", tiersSection)]
    }
}

/// Durable writes of a key (`TierKVBackend.writing`): plain SETs of it at once, each of the
/// others (a conditional SET, one keeping the TTL, EXPIRE) alone. Plain SETs need no turn: each
/// updates the directory when the catalog commits its record, in the catalog's order
/// (`Catalog.putKV`), so the two agree on which write of a key came last whatever order their
/// puts finish in. A write that reads the key first (NX, XX, KEEPTTL, EXPIRE) holds it alone
/// until it is recorded: no write of the key is under way when it reads, and none starts until
/// it is done, so two SET NX cannot both win and a SET NX cannot win over a SET it did not see.
/// Waiting writes are let in in the order they came (a lone writer is not starved by a stream
/// of plain SETs).
final class KeyWriteLocks: Sendable {
    struct Key: Hashable {
        var namespace: String
        var name: [UInt8]
    }

    enum Mode: Sendable { case shared, alone }

    private struct Holders {
        var shared = 0
        var alone = false
        /// Writes waiting for the key, in order.
        var waiting: [(mode: Mode, continuation: CheckedContinuation<Void, Never>)] = []

        func admits(_ mode: Mode) -> Bool {
            switch mode {
            case .shared: !alone
            case .alone: !alone && shared == 0
            }
        }

        mutating func enter(_ mode: Mode) {
            if mode == .alone { alone = true } else { shared += 1 }
        }
    }

    /// Keys being written, with the writes waiting for each.
    private let busy = Mutex<[Key: Holders]>([:])

    /// Runs `body` once each of `keys` admits it (taken in a fixed order, so writes of
    /// overlapping sets of keys cannot wait for each other).
    func withLocks<T>(_ keys: [Key], _ mode: Mode, _ body: () async throws -> T) async rethrows -> T {
        let ordered = keys.count == 1 ? keys : Array(Set(keys)).sorted { a, b in
            a.namespace != b.namespace ? a.namespace < b.namespace : a.name.lexicographicallyPrecedes(b.name)
        }
        for key in ordered { await take(key, mode) }
        defer { for key in ordered.reversed() { give(key, mode) } }
        return try await body()
    }

    /// The writes that hold `key` and how many wait for it (tests).
    func state(of key: Key) -> (shared: Int, alone: Bool, waiting: Int)? {
        busy.withLock { busy in busy[key].map { ($0.shared, $0.alone, $0.waiting.count) } }
    }

    private func take(_ key: Key, _ mode: Mode) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = busy.withLock { busy -> Bool in
                var holders = busy[key] ?? Holders()
                defer { busy[key] = holders }
                guard holders.waiting.isEmpty, holders.admits(mode) else {
                    holders.waiting.append((mode, continuation))
                    return false
                }
                holders.enter(mode)
                return true
            }
            if admitted { continuation.resume() }
        }
    }

    private func give(_ key: Key, _ mode: Mode) {
        let admitted = busy.withLock { busy -> [CheckedContinuation<Void, Never>] in
            guard var holders = busy[key] else { return [] }
            if mode == .alone { holders.alone = false } else { holders.shared -= 1 }
            var admitted: [CheckedContinuation<Void, Never>] = []
            while let next = holders.waiting.first, holders.admits(next.mode) {
                holders.waiting.removeFirst()
                holders.enter(next.mode)   // handed over: taken before it runs
                admitted.append(next.continuation)
            }
            busy[key] = holders.shared == 0 && !holders.alone ? nil : holders
            return admitted
        }
        for continuation in admitted { continuation.resume() }
    }
}
