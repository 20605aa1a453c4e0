import Glibc
import Synchronization

/// The host-RAM tier: one pre-faulted anonymous mapping (MAP_POPULATE: first-touch faults are
/// very slow on these VMs, so they are all paid at start) carved by a buddy allocator, under a
/// byte budget. Gets hand out borrowed views into the arena, no copy; a block that is borrowed
/// is never evicted or overwritten under its reader. When room is needed, the least recently
/// used unborrowed blocks are evicted (recency kept in an O(1) list): a dirty one (no copy
/// below) is handed to `demote` (to the NVMe tier), a clean one is dropped (its key handed to
/// `forget`, whose copy below is all that is left of it).
// @unchecked: `base` is written only in slots the allocator hands to one writer at a time;
// all bookkeeping is under `state`.
public final class HostTier: @unchecked Sendable {
    public struct Stats: Sendable, Equatable {
        public var blocks = 0
        public var usedBytes = 0
        public var budgetBytes = 0
        public var hits = 0
        public var misses = 0
        public var evictions = 0
        public var demotions = 0
        /// Held by reservations (blocks being filled) not yet published or cancelled, in whole
        /// allocator slots.
        public var reservedBytes = 0
    }

    /// A block leaving the tier that has no copy below: its bytes, the caller's tag, and how
    /// often it was read while here (for admission to the tier below).
    public struct Evicted: Sendable {
        public var key: BlockKey
        public var bytes: [UInt8]
        public var tag: UInt64
        public var hits: Int
        /// Set when `bytes` are compressed (by the caller's codec): the length they decode to.
        public var decodedLength: Int?
    }

    struct Entry {
        var offset: Int
        var length: Int
        /// Its place in the recency list.
        var node: Int32
        /// The caller's tag for this value (BlockStore: its generation), handed back on eviction.
        var tag: UInt64 = 0
        /// No copy exists below: eviction hands the bytes to `demote`.
        var dirty = true
        /// The caller stored these bytes compressed: the length they decode to.
        var decodedLength: Int?
        var hits = 0
        var borrowers = 0
        /// Replaced or removed while borrowed: freed when the last borrower lets go.
        var retired = false
    }

    struct State {
        var allocator: BuddyAllocator
        var entries: [BlockKey: Entry] = [:]
        /// Retired entries still borrowed, by offset.
        var zombies: [Int: Entry] = [:]
        var recency = LRUList<BlockKey>()
        var stats = Stats()

        /// The slot the allocator hands out for `length` bytes (a power of two), nil if larger
        /// than a unit. Reservations are counted in these.
        func slotBytes(_ length: Int) -> Int? { allocator.blockSize(for: max(length, 1)) }
    }

    public static let unitSize = 16 << 20
    public let capacity: Int
    private let base: UnsafeMutableRawPointer
    private let state: Mutex<State>
    /// Receives evicted blocks' bytes (to write them to a lower tier); nil drops them.
    private let demote: (@Sendable (Evicted) -> Void)?
    /// Receives the keys of clean blocks evicted (outside the lock).
    private let forget: (@Sendable ([BlockKey]) -> Void)?

    /// What one call evicted: dirty blocks with their bytes, clean ones by key.
    private struct Evictions {
        var dirty: [Evicted] = []
        var clean: [BlockKey] = []
    }

    /// `budgetBytes` is rounded up to whole 16 MiB units. Blocks larger than a unit do not fit here.
    public init(budgetBytes: Int, demote: (@Sendable (Evicted) -> Void)? = nil,
                forget: (@Sendable ([BlockKey]) -> Void)? = nil) throws {
        let units = max(1, (budgetBytes + Self.unitSize - 1) / Self.unitSize)
        capacity = units * Self.unitSize
        let mapped = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else { throw IOError(operation: "mmap \(capacity) bytes", errno: errno) }
        base = mapped
        var initial = State(allocator: BuddyAllocator(unitSize: Self.unitSize, units: units))
        initial.stats.budgetBytes = capacity
        state = Mutex(initial)
        self.demote = demote
        self.forget = forget
    }

    deinit { munmap(base, capacity) }

    public var stats: Stats { state.withLock { $0.stats } }

    public struct PutOptions: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// A copy exists below: eviction may simply drop it.
        public static let clean = PutOptions(rawValue: 1)
        /// Use free room only; evict nothing.
        public static let noEviction = PutOptions(rawValue: 2)
        /// Do nothing if the key is already here (a promotion must not replace a newer put).
        public static let ifAbsent = PutOptions(rawValue: 4)
    }

    /// Stores a copy of `bytes` under `key`, evicting least recently used blocks if needed.
    /// Returns false when it cannot fit (larger than a unit, everything else is borrowed, or
    /// no free room under `.noEviction`); true also when `.ifAbsent` found the key here.
    @discardableResult
    public func put(
        _ key: BlockKey, _ bytes: UnsafeRawBufferPointer, tag: UInt64 = 0, options: PutOptions = [], decodedLength: Int? = nil
    ) -> Bool {
        var evicted = Evictions()
        let offset: Int?? = state.withLock { state in
            if options.contains(.ifAbsent), state.entries[key] != nil { return .some(nil) }
            guard let slot = state.slotBytes(bytes.count) else { return nil }
            let offset: Int?
            if options.contains(.noEviction) {
                offset = state.allocator.allocate(max(bytes.count, 1))
            } else {
                // The value it replaces makes room first.
                if let old = take(key, &state) { retire(old, &state) }
                offset = allocateEvicting(bytes.count, &state, into: &evicted)
            }
            // (`.none`, not `.some(nil)`: that would mean "already here".)
            guard let offset else { return .none }
            // Held as a reservation while it is filled (publish and cancel account for it).
            state.stats.reservedBytes += slot
            return .some(offset)
        }
        handOver(evicted)
        guard let found = offset else { return false }
        guard let offset = found else { return true }   // .ifAbsent, and it is here
        // The slot is ours alone until published below.
        (base + offset).copyMemory(from: bytes.baseAddress ?? UnsafeRawPointer(base), byteCount: bytes.count)
        let reservation = Reservation(offset: offset, length: bytes.count)
        switch publish(reservation, key, tag: tag, options: options, decodedLength: decodedLength) {
        case .published:
            return true
        case .alreadyPresent:
            cancel(reservation)
            return true
        case .beyondBudget:
            cancel(reservation)
            return put(key, bytes, tag: tag, options: options, decodedLength: decodedLength)
        }
    }

    /// A slot of the arena held for one writer, not yet a block: nothing reads it, nothing
    /// evicts it. Fill `bytes`, then `publish` it under a key, or `cancel` it.
    public struct Reservation: Sendable, Hashable {
        public let offset: Int
        public let length: Int
    }

    /// Holds a slot of `length` bytes, evicting least recently used blocks for room as `put`
    /// does; nil when it cannot fit (larger than a unit, or everything else is borrowed or held)
    /// or when reservations would then hold more than `maxReservedBytes` in all (counted in the
    /// allocator's slots: powers of two).
    public func reserve(_ length: Int, maxReservedBytes: Int = .max) -> Reservation? {
        var evicted = Evictions()
        let offset = state.withLock { state -> Int? in
            // Counted as the slot the allocator hands out (a power of two), not the length asked.
            guard let slot = state.slotBytes(length), state.stats.reservedBytes + slot <= maxReservedBytes else { return nil }
            let offset = allocateEvicting(length, &state, into: &evicted)
            if offset != nil {
                state.stats.reservedBytes += slot
                state.stats.usedBytes = state.allocator.allocatedBytes
            }
            return offset
        }
        handOver(evicted)
        return offset.map { Reservation(offset: $0, length: length) }
    }

    /// The reserved slot's memory, to fill before `publish`. Only its holder may touch it.
    public func bytes(of reservation: Reservation) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + reservation.offset, count: reservation.length)
    }

    public enum PublishOutcome: Sendable, Equatable {
        /// The slot is now the block `key`; the reservation is used up.
        case published
        /// `.ifAbsent` and the key is here: the reservation is still held (cancel it).
        case alreadyPresent
        /// The budget shrank below the slot while it was held: the reservation is still held, its
        /// bytes intact (copy them out, then cancel it).
        case beyondBudget
    }

    /// Makes a filled reservation the block `key`, replacing (retiring) any block of that key.
    public func publish(
        _ reservation: Reservation, _ key: BlockKey, tag: UInt64 = 0, options: PutOptions = [], decodedLength: Int? = nil
    ) -> PublishOutcome {
        state.withLock { state -> PublishOutcome in
            guard reservation.offset < state.allocator.usableUnits * Self.unitSize else { return .beyondBudget }
            if options.contains(.ifAbsent), state.entries[key] != nil { return .alreadyPresent }
            // a concurrent put of the same key published first: this one is newer
            if let other = take(key, &state) { retire(other, &state) }
            state.entries[key] = Entry(offset: reservation.offset, length: reservation.length, node: state.recency.pushFront(key),
                                       tag: tag, dirty: !options.contains(.clean), decodedLength: decodedLength)
            state.stats.reservedBytes -= state.slotBytes(reservation.length)!
            state.stats.blocks = state.entries.count
            state.stats.usedBytes = state.allocator.allocatedBytes
            return .published
        }
    }

    /// Gives a reservation's slot back unpublished.
    public func cancel(_ reservation: Reservation) {
        state.withLock { state in
            state.allocator.release(reservation.offset)
            state.stats.reservedBytes -= state.slotBytes(reservation.length)!
            state.stats.usedBytes = state.allocator.allocatedBytes
        }
    }

    /// A slot of `length` bytes, evicting unborrowed blocks from the least recently used on
    /// until one is free; nil when nothing more can be evicted. Call under the lock.
    private func allocateEvicting(_ length: Int, _ state: inout State, into evicted: inout Evictions) -> Int? {
        while true {
            if let offset = state.allocator.allocate(max(length, 1)) { return offset }
            guard let (_, victim) = state.recency.leastRecent(where: { state.entries[$0]?.borrowers == 0 }) else {
                return nil
            }
            evict(victim, &state, into: &evicted)
        }
    }

    /// Runs `body` on the block's bytes in place (no copy); nil when absent. The block cannot
    /// be evicted or overwritten while `body` runs.
    public func withBlock<T>(_ key: BlockKey, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T? {
        guard let view = borrow(key) else { return nil }
        defer { view.release() }
        return try body(view.bytes)
    }

    public enum LockedRead<T> {
        /// Not here (not counted as a miss).
        case absent
        /// Here, but longer than asked or stored compressed: nothing ran, nothing counted.
        case notSmall
        case read(T)
    }

    /// Runs `body` on the block's bytes under the tier's lock if it is stored uncompressed and at
    /// most `maxLength` long, counted as a hit: one lock and no borrow for a read that copies a
    /// small block out. `body` must be short (it holds every other reader and writer off) and
    /// must not call into the tier.
    public func withSmallBlock<T>(_ key: BlockKey, maxLength: Int, _ body: (UnsafeRawBufferPointer) -> T) -> LockedRead<T> {
        state.withLock { state -> LockedRead<T> in
            guard let index = state.entries.index(forKey: key) else { return .absent }
            let entry = state.entries.values[index]
            guard entry.decodedLength == nil, entry.length <= maxLength else { return .notSmall }
            state.recency.moveToFront(entry.node)
            state.entries.values[index].hits += 1
            state.stats.hits += 1
            return .read(body(UnsafeRawBufferPointer(start: base + entry.offset, count: entry.length)))
        }
    }

    /// A borrowed view that keeps the block in place until `release()` (or deinit).
    /// `countingMiss: false` for a look that a full read follows when it fails (which counts it).
    public func borrow(_ key: BlockKey, countingMiss: Bool = true) -> HostBlockView? {
        let found: Entry? = state.withLock { state in
            // (by index: the key hashed once, not again to write the entry back)
            guard let index = state.entries.index(forKey: key) else {
                if countingMiss { state.stats.misses += 1 }
                return nil
            }
            state.recency.moveToFront(state.entries.values[index].node)
            state.entries.values[index].hits += 1
            state.entries.values[index].borrowers += 1
            state.stats.hits += 1
            return state.entries.values[index]
        }
        guard let found else { return nil }
        return HostBlockView(tier: self, key: key, offset: found.offset,
                             bytes: UnsafeRawBufferPointer(start: base + found.offset, count: found.length),
                             decodedLength: found.decodedLength)
    }

    /// Changes the budget at run time, up to the capacity mapped at start. Shrinking keeps the
    /// most recently used blocks: those whose slots lie past the new budget move into it, most
    /// recent first, making room there by evicting (demoting, by policy) the least recently
    /// used; a block that is borrowed, or older than everything left to evict, leaves instead
    /// (a borrowed one when its reader lets go). Returns false and changes nothing when `bytes`
    /// exceeds the capacity.
    @discardableResult
    public func setBudget(_ bytes: Int) -> Bool {
        guard bytes <= capacity, bytes > 0 else { return false }
        let units = (bytes + Self.unitSize - 1) / Self.unitSize
        let limit = units * Self.unitSize
        var evicted = Evictions()
        state.withLock { state in
            state.allocator.usableUnits = units
            state.stats.budgetBytes = limit
            for key in state.recency.mostRecentFirst() {
                guard let entry = state.entries[key], entry.offset >= limit else { continue }
                guard entry.borrowers == 0, let slot = allocateBelow(entry, key, &state, into: &evicted) else {
                    evict(key, &state, into: &evicted)
                    continue
                }
                (base + slot).copyMemory(from: base + entry.offset, byteCount: entry.length)
                state.allocator.release(entry.offset)
                state.entries[key]?.offset = slot
            }
            state.stats.blocks = state.entries.count
            state.stats.usedBytes = state.allocator.allocatedBytes
        }
        handOver(evicted)
        return true
    }

    /// A slot within the (shrunk) budget for `entry`, made by evicting blocks used less recently
    /// than it; nil when only it or more recent ones (or borrowed ones) are left to evict.
    private func allocateBelow(_ entry: Entry, _ key: BlockKey, _ state: inout State, into evicted: inout Evictions) -> Int? {
        while true {
            if let slot = state.allocator.allocate(max(entry.length, 1)) { return slot }
            guard let (_, victim) = state.recency.leastRecent(where: { state.entries[$0]?.borrowers == 0 }), victim != key else {
                return nil
            }
            evict(victim, &state, into: &evicted)
        }
    }

    /// Takes `key` out (copying a dirty block's bytes for demotion when there is a lower tier)
    /// and frees its slot, or leaves the slot to its borrowers. Call under the lock.
    private func evict(_ key: BlockKey, _ state: inout State, into evicted: inout Evictions) {
        guard let entry = take(key, &state) else { return }
        if !entry.dirty {
            if forget != nil { evicted.clean.append(key) }
        } else if demote != nil {
            evicted.dirty.append(Evicted(key: key, bytes: Array(UnsafeRawBufferPointer(start: base + entry.offset, count: entry.length)),
                                   tag: entry.tag, hits: entry.hits, decodedLength: entry.decodedLength))
        }
        retire(entry, &state)
        state.stats.evictions += 1
    }

    /// Removes the entry and its place in the recency list. Call under the lock.
    private func take(_ key: BlockKey, _ state: inout State) -> Entry? {
        guard let entry = state.entries.removeValue(forKey: key) else { return nil }
        state.recency.remove(entry.node)
        return entry
    }

    /// Gives evicted blocks to the lower tier, and clean ones' keys to `forget`, outside the lock.
    private func handOver(_ evicted: Evictions) {
        if let forget, !evicted.clean.isEmpty { forget(evicted.clean) }
        guard let demote, !evicted.dirty.isEmpty else { return }
        for block in evicted.dirty { demote(block) }
        state.withLock { $0.stats.demotions += evicted.dirty.count }
    }

    public func contains(_ key: BlockKey) -> Bool { state.withLock { $0.entries[key] != nil } }

    /// What `remove` took out.
    public struct Removed: Sendable, Equatable {
        /// No copy of it existed below (see `PutOptions.clean`).
        public var dirty: Bool
        public var tag: UInt64
    }

    /// Removes the block; returns what it was, nil if it was not here.
    @discardableResult
    public func remove(_ key: BlockKey) -> Removed? {
        state.withLock { state in
            defer {
                state.stats.blocks = state.entries.count
                state.stats.usedBytes = state.allocator.allocatedBytes
            }
            guard let entry = take(key, &state) else { return nil }
            retire(entry, &state)
            return Removed(dirty: entry.dirty, tag: entry.tag)
        }
    }

    func giveBack(_ key: BlockKey, offset: Int) {
        state.withLock { state in
            if let index = state.entries.index(forKey: key), state.entries.values[index].offset == offset {
                state.entries.values[index].borrowers -= 1
            } else if var zombie = state.zombies[offset] {
                zombie.borrowers -= 1
                if zombie.borrowers == 0 {
                    state.zombies[offset] = nil
                    state.allocator.release(offset)
                } else {
                    state.zombies[offset] = zombie
                }
            }
            state.stats.usedBytes = state.allocator.allocatedBytes
        }
    }

    private func retire(_ entry: Entry, _ state: inout State) {
        if entry.borrowers == 0 {
            state.allocator.release(entry.offset)
        } else {
            var zombie = entry
            zombie.retired = true
            state.zombies[entry.offset] = zombie
        }
        state.stats.blocks = state.entries.count
        state.stats.usedBytes = state.allocator.allocatedBytes
    }
}

/// A block borrowed from the host tier: valid until `release()`; released at deinit at the latest.
public final class HostBlockView: @unchecked Sendable {
    public let key: BlockKey
    /// The bytes as stored: compressed when `decodedLength` is set.
    public let bytes: UnsafeRawBufferPointer
    public let decodedLength: Int?
    private let tier: HostTier
    private let offset: Int
    private let released = Mutex(false)

    init(tier: HostTier, key: BlockKey, offset: Int, bytes: UnsafeRawBufferPointer, decodedLength: Int? = nil) {
        self.tier = tier
        self.decodedLength = decodedLength
        self.key = key
        self.offset = offset
        self.bytes = bytes
    }

    public func release() {
        let first = released.withLock { released -> Bool in
            defer { released = true }
            return !released
        }
        if first { tier.giveBack(key, offset: offset) }
    }

    deinit { release() }
}
