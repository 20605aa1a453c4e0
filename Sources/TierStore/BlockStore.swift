import Logging
import Synchronization

/// The block store over its tiers: host RAM first, the NVMe log below it.
///
/// - A cache put lands in the host tier only (straight in the log if it is larger than a host
///   unit); when the host tier evicts it, it is demoted to the NVMe log (eviction `.demote`,
///   subject to the log's admission) or dropped (`.drop`). Demotions go through a bounded queue
///   to a single writer; a put waits while that queue is half full (backpressure, at most 5 s,
///   so a stalled disk cannot stop puts); a demotion that still finds it full is dropped and
///   counted. A demotion the log refuses (ENOSPC, EIO) is logged and counted, and the block
///   goes back into free host room if any: a lower tier's failure never takes a block that was
///   only in the upper one unless there is truly nowhere to keep it.
/// - A durable put is written to the NVMe log and its catalog before it returns, and also kept
///   in the host tier (as clean: eviction just drops it) for fast reads.
/// - A get is served from the host tier in place when it is there, else read (verified) from the
///   NVMe log and promoted into the host tier, subject to the host tier's admission.
/// - Admission `.secondHit` keeps one-hit blocks out of a tier: the log takes a demoted block
///   only if it was read while in RAM or was turned away once before; RAM takes a block read
///   from the log only on its second read there.
public final class BlockStore: Sendable {
    public enum EvictionPolicy: String, Sendable, CaseIterable { case demote, drop }
    public enum Admission: String, Sendable, CaseIterable {
        case always
        case secondHit = "second-hit"
    }

    /// What can change at run time (the config's `tiers` section).
    public struct Policy: Sendable, Equatable {
        public var hostBudgetBytes: Int
        public var nvmeBudgetBytes: UInt64
        public var hostAdmission: Admission
        public var nvmeAdmission: Admission
        public var nvmeCodec: BlockHeader.Codec
        public var eviction: EvictionPolicy
        /// `.lz4`: blocks are kept compressed in RAM when that makes them smaller; a get of such
        /// a block decompresses a copy instead of lending the bytes in place.
        public var hostCodec: BlockHeader.Codec
        /// Staged weights up to this many bytes are not reclaimed from NVMe to make room for
        /// blocks; nil: half the NVMe budget (`SegmentLog.Configuration.objectReserveBytes`).
        public var nvmeWeightsReserveBytes: UInt64?

        public init(
            hostBudgetBytes: Int, nvmeBudgetBytes: UInt64, hostAdmission: Admission = .always,
            nvmeAdmission: Admission = .always, nvmeCodec: BlockHeader.Codec = .none, eviction: EvictionPolicy = .demote,
            hostCodec: BlockHeader.Codec = .none, nvmeWeightsReserveBytes: UInt64? = nil
        ) {
            self.nvmeWeightsReserveBytes = nvmeWeightsReserveBytes
            self.hostCodec = hostCodec
            self.hostBudgetBytes = hostBudgetBytes
            self.nvmeBudgetBytes = nvmeBudgetBytes
            self.hostAdmission = hostAdmission
            self.nvmeAdmission = nvmeAdmission
            self.nvmeCodec = nvmeCodec
            self.eviction = eviction
        }
    }

    public struct Stats: Sendable, Equatable {
        public var host: HostTier.Stats
        public var nvme: SegmentLog.Stats
        public var demotionsDropped: Int
        public var demotionFailures: Int
        /// Blocks turned away by a tier's second-hit admission.
        public var hostAdmissionsRefused: Int
        public var nvmeAdmissionsRefused: Int
        /// Blocks whose only copy was lost because a demotion failed and RAM had no room left.
        public var blocksLost: Int
        public var lastError: String?
    }

    public enum Read: Sendable {
        /// In the host tier, borrowed in place until released.
        case host(HostBlockView)
        /// In the host tier stored compressed: a decompressed copy.
        case decoded([UInt8])
        /// A copy: read (verified) from NVMe and promoted into the host tier for the next get, by
        /// admission; or taken from a demotion still on its way down.
        case nvme([UInt8])

        public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            switch self {
            case .host(let view): return try body(view.bytes)
            case .nvme(let bytes), .decoded(let bytes): return try bytes.withUnsafeBytes(body)
            }
        }

        /// `withBytes`, then gives a borrowed host block back: for a read whose bytes are copied
        /// out, not kept.
        public func withBytesReleasing<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            defer { if case .host(let view) = self { view.release() } }
            return try withBytes(body)
        }
    }

    public let host: HostTier
    public let nvme: SegmentLog
    private let demotions: AsyncStream<HostTier.Evicted>.Continuation
    private let losses = Losses()
    /// Checks the blocks `losses` suspects, in the background.
    private let lossChecker: Task<Void, Never>
    /// Demotions the queue holds before it drops.
    let demotionCapacity: Int
    private let puttingInRAM = Mutex(0)
    private let generations = Generations()
    /// Demotions queued and not yet written: still readable, so a get never goes past a newer
    /// value on its way down to an older one in the log.
    private let pending = Pending()
    private let shared: Shared
    private let writer: Task<Void, Never>

    final class Shared: Sendable {
        let state: Mutex<MutableState>
        init(_ state: MutableState) { self.state = Mutex(state) }
    }

    /// Who is told of blocks that left every tier (`observeLosses`), and the keys suspected of
    /// it, waiting to be checked: a block dropped when evicted from RAM or whose demotion was
    /// given up, a clean copy evicted from RAM, the blocks of a reclaimed segment. Nothing is
    /// queued while no one observes.
    final class Losses: Sendable {
        private let observers = Mutex<[@Sendable ([BlockKey]) -> Void]>([])
        let suspects: AsyncStream<[BlockKey]>
        private let queue: AsyncStream<[BlockKey]>.Continuation

        init() {
            // Past this many batches waiting, the newest win: a loss not reported is found by
            // the next read of the block instead.
            (suspects, queue) = AsyncStream<[BlockKey]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        }

        func add(_ observer: @escaping @Sendable ([BlockKey]) -> Void) { observers.withLock { $0.append(observer) } }
        func suspect(_ keys: [BlockKey]) {
            guard !keys.isEmpty, observers.withLock({ !$0.isEmpty }) else { return }
            queue.yield(keys)
        }
        func report(_ lost: [BlockKey]) { for observer in observers.withLock({ $0 }) { observer(lost) } }
        func finish() { queue.finish() }
    }

    final class Pending: Sendable {
        private let byKey = Mutex<[BlockKey: HostTier.Evicted]>([:])
        func add(_ evicted: HostTier.Evicted) { byKey.withLock { $0[evicted.key] = evicted } }
        func get(_ key: BlockKey) -> HostTier.Evicted? { byKey.withLock { $0[key] } }
        func remove(_ key: BlockKey) { byKey.withLock { _ = $0.removeValue(forKey: key) } }
        var count: Int { byKey.withLock { $0.count } }
        /// Removes the entry if it is still this demotion (not a later one of the same key).
        func settle(_ evicted: HostTier.Evicted) {
            byKey.withLock { if $0[evicted.key]?.tag == evicted.tag { $0[evicted.key] = nil } }
        }
    }

    struct MutableState {
        var policy: Policy
        var hostSeen = Doorkeeper()
        var nvmeSeen = Doorkeeper()
        var demotionsDropped = 0
        var demotionFailures = 0
        var hostAdmissionsRefused = 0
        var nvmeAdmissionsRefused = 0
        var blocksLost = 0
        var lastError: String?
    }

    /// `policy.hostBudgetBytes` is also the most the host budget can grow to later (the arena is
    /// mapped once, pre-faulted).
    public init(policy: Policy, nvme: SegmentLog, demotionQueue: Int = 64,
                logger: Logger = Logger(label: "strata.tierstore")) async throws {
        let (stream, continuation) = AsyncStream<HostTier.Evicted>.makeStream(bufferingPolicy: .bufferingOldest(demotionQueue))
        self.demotionCapacity = demotionQueue
        let shared = Shared(MutableState(policy: policy))
        let generations = self.generations
        let pending = self.pending
        self.shared = shared
        self.demotions = continuation
        self.nvme = nvme
        let losses = self.losses
        await nvme.setObjectReserve(policy.nvmeWeightsReserveBytes)   // (before the budget, whose change reclaims by it)
        await nvme.setBudget(policy.nvmeBudgetBytes)
        await nvme.setCodec(policy.nvmeCodec)
        await nvme.observeReclaims { losses.suspect($0) }
        self.host = try HostTier(budgetBytes: policy.hostBudgetBytes, demote: { evicted in
            let demote = shared.state.withLock { state -> Bool in
                if state.policy.eviction == .drop { return false }
                if state.policy.nvmeAdmission == .secondHit, evicted.hits == 0, !state.nvmeSeen.checkAndRecord(evicted.key) {
                    state.nvmeAdmissionsRefused += 1
                    return false
                }
                return true
            }
            guard demote else {
                generations.clear(evicted.key, ifCurrent: evicted.tag)
                losses.suspect([evicted.key])
                return
            }
            pending.add(evicted)
            switch continuation.yield(evicted) {
            case .enqueued: break
            case .dropped, .terminated:   // queue full, or the store is closed
                shared.state.withLock { $0.demotionsDropped += 1 }
                Self.settle(evicted, pending: pending, generations: generations)
                losses.suspect([evicted.key])
            @unknown default: break
            }
        }, forget: { losses.suspect($0) })
        let host = self.host
        lossChecker = Task {
            for await suspects in losses.suspects {
                // A block dirty in RAM or on its way down (even between leaving RAM and joining
                // the queue) holds its key's generation; a clean one in RAM has a copy below.
                let unseen = suspects.filter { generations.current($0) == nil && !host.contains($0) }
                guard !unseen.isEmpty else { continue }
                let lost = await nvme.absent(among: unseen)
                if !lost.isEmpty { losses.report(lost) }
            }
        }
        writer = Task {
            for await evicted in stream {
                do {
                    // Checked on the log's executor right before the write gets its sequence
                    // number, so a newer put of the key always ends up on top.
                    try await nvme.put(evicted.key, try Self.decode(evicted), durable: false) {
                        generations.current(evicted.key) != evicted.tag
                    }
                    Self.settle(evicted, pending: pending, generations: generations)
                } catch {
                    // Keep the block in RAM if there is free room and nothing newer replaced it.
                    let kept = generations.current(evicted.key) == evicted.tag
                        && evicted.bytes.withUnsafeBytes {
                            host.put(evicted.key, $0, tag: evicted.tag, options: [.noEviction, .ifAbsent],
                                     decodedLength: evicted.decodedLength)
                        }
                    if kept {
                        pending.settle(evicted)
                    } else {
                        Self.settle(evicted, pending: pending, generations: generations)
                        losses.suspect([evicted.key])
                    }
                    shared.state.withLock { state in
                        state.demotionFailures += 1
                        if !kept { state.blocksLost += 1 }
                        state.lastError = "demotion to NVMe failed: \(error)"
                    }
                    logger.error("demotion of block \(evicted.key) to NVMe failed: \(error); \(kept ? "kept in host RAM" : "no host room left, block lost")")
                }
            }
        }
    }

    struct CorruptInRAM: Error, CustomStringConvertible {
        var key: BlockKey
        var description: String { "block \(key) kept compressed in RAM does not decompress" }
    }

    /// An evicted block's bytes as they were put (decompressed if RAM kept them compressed).
    static func decode(_ evicted: HostTier.Evicted) throws -> [UInt8] {
        guard let length = evicted.decodedLength else { return evicted.bytes }
        guard let bytes = evicted.bytes.withUnsafeBytes({ LZ4.decompressed($0, length: length) }) else {
            throw CorruptInRAM(key: evicted.key)
        }
        return bytes
    }

    /// Backpressure: while the demotion writer is more than half a queue behind, a put waits
    /// (up to `demotionWaitLimit`) instead of evicting blocks into a full queue, where they
    /// would be dropped — acknowledged values lost while the NVMe tier has room. Only past the
    /// limit (a stalled disk) does a put go ahead and let the queue drop.
    /// Puts past this wait that have not yet placed their block count as queue entries too, so
    /// many puts at once cannot all see room and then all evict into the same last slots.
    private func waitForDemotionRoom() async {
        let deadline = ContinuousClock.now + Self.demotionWaitLimit
        while !admitPutInRAM(regardless: ContinuousClock.now >= deadline || Task.isCancelled) {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Counts a put in as placing its block in RAM (the caller takes it out again once placed),
    /// unless the demotion writer is more than half a queue behind and not `regardless`.
    private func admitPutInRAM(regardless: Bool) -> Bool {
        puttingInRAM.withLock { putting -> Bool in
            if !regardless, policy.eviction == .demote, pending.count + putting >= demotionCapacity / 2 { return false }
            putting += 1
            return true
        }
    }

    static let demotionWaitLimit: Duration = .seconds(5)

    /// Stores a copy in RAM, compressed when the host codec says so and it pays.
    @discardableResult
    private func putInRAM<Bytes: RandomAccessCollection<UInt8>>(
        _ key: BlockKey, _ bytes: Bytes, tag: UInt64 = 0, options: HostTier.PutOptions = []
    ) -> Bool {
        func put(_ raw: UnsafeRawBufferPointer) -> Bool {
            if policy.hostCodec == .lz4, let packed = LZ4.compressed(raw) {
                return packed.withUnsafeBytes { host.put(key, $0, tag: tag, options: options, decodedLength: raw.count) }
            }
            return host.put(key, raw, tag: tag, options: options)
        }
        return bytes.withContiguousStorageIfAvailable { put(UnsafeRawBufferPointer($0)) }
            ?? Array(bytes).withUnsafeBytes { put($0) }
    }

    /// A demotion is over (written, skipped or given up): it is no longer readable from the
    /// queue and no longer holds its key's generation.
    private static func settle(_ evicted: HostTier.Evicted, pending: Pending, generations: Generations) {
        pending.settle(evicted)
        generations.clear(evicted.key, ifCurrent: evicted.tag)
    }

    /// The store with the defaults for everything but the host budget (tests and benchmarks).
    public convenience init(hostBudgetBytes: Int, nvme: SegmentLog, policy: EvictionPolicy = .demote,
                            demotionQueue: Int = 64) async throws {
        try await self.init(
            policy: Policy(hostBudgetBytes: hostBudgetBytes, nvmeBudgetBytes: nvme.configuration.budgetBytes, eviction: policy),
            nvme: nvme, demotionQueue: demotionQueue)
    }

    public var policy: Policy { shared.state.withLock { $0.policy } }

    /// Applies a new policy at run time: a smaller budget evicts (demoting, by policy) down to
    /// it at once. The host budget cannot grow past the arena mapped at start; such a policy is
    /// refused whole with the reason, and nothing changes.
    public func apply(_ policy: Policy) async throws {
        guard policy.hostBudgetBytes > 0, policy.hostBudgetBytes <= host.capacity else {
            throw PolicyError.hostBudgetBeyondArena(requested: policy.hostBudgetBytes, capacity: host.capacity)
        }
        shared.state.withLock { $0.policy = policy }
        host.setBudget(policy.hostBudgetBytes)
        await nvme.setObjectReserve(policy.nvmeWeightsReserveBytes)
        await nvme.setBudget(policy.nvmeBudgetBytes)
        await nvme.setCodec(policy.nvmeCodec)
    }

    public enum PolicyError: Error, Equatable, CustomStringConvertible {
        case hostBudgetBeyondArena(requested: Int, capacity: Int)
        public var description: String {
            switch self {
            case .hostBudgetBeyondArena(let requested, let capacity):
                "tiers.host.budget: \(requested) bytes is more than the \(capacity) bytes mapped at start (restart to grow it)"
            }
        }
    }

    /// A put that fails (the log refused it) changes nothing: the key keeps its earlier value.
    public func put(_ key: BlockKey, _ bytes: [UInt8], durable: Bool) async throws {
        try await put(key, bytes: bytes, durable: durable)
    }

    /// `put` from any contiguous bytes (a network buffer's view): a block that goes to RAM is
    /// copied once, into the arena, with no array in between. `awaitingCatalog: false` (durable
    /// only): see `SegmentLog.put`; for a caller that commits a record naming the block next.
    public func put<Bytes: RandomAccessCollection<UInt8> & Sendable>(
        _ key: BlockKey, bytes: Bytes, durable: Bool, awaitingCatalog: Bool = true
    ) async throws {
        let (generation, previous) = generations.bump(key)
        if durable {
            do {
                try await nvme.put(key, Array(bytes), durable: true, awaitingCatalog: awaitingCatalog)
            } catch {
                generations.restore(key, to: previous, ifCurrent: generation)
                throw error
            }
            putInRAM(key, bytes, tag: generation, options: .clean)
            generations.clear(key, ifCurrent: generation)
            return
        }
        await waitForDemotionRoom()
        let fitted = putInRAM(key, bytes, tag: generation)
        puttingInRAM.withLock { $0 -= 1 }
        if !fitted {
            // Larger than a host unit (or RAM is all borrowed): the log is the only place for it.
            do {
                try await nvme.put(key, Array(bytes), durable: false) { self.generations.current(key) != generation }
            } catch {
                generations.restore(key, to: previous, ifCurrent: generation)
                throw error
            }
            host.remove(key)   // an older value must not shadow this one
            generations.clear(key, ifCurrent: generation)
        }
    }

    /// A cache put that does not wait: the block goes into RAM now, unless the demotion writer
    /// is behind (a put would have to wait) or it does not fit in RAM (it would have to go to the
    /// log). Returns false, with nothing changed, in those cases: call `put`.
    public func putInRAMImmediately<Bytes: RandomAccessCollection<UInt8>>(_ key: BlockKey, bytes: Bytes) -> Bool {
        guard admitPutInRAM(regardless: false) else { return false }
        defer { puttingInRAM.withLock { $0 -= 1 } }
        let (generation, previous) = generations.bump(key)
        guard putInRAM(key, bytes, tag: generation) else {
            generations.restore(key, to: previous, ifCurrent: generation)
            return false
        }
        return true
    }

    /// Holds room in RAM for a block of `length` bytes that arrives piece by piece (a value read
    /// off a socket), so its bytes are written once, into the arena, as they come; publish it
    /// with `publishStaged`. Nil, with nothing changed, when a cache put would not go straight
    /// to RAM either (the demotion writer is behind, it does not fit, the host tier stores
    /// blocks compressed) or when staged blocks already hold a quarter of the host budget.
    public func stageInRAM(length: Int) -> StagedBlock? {
        guard length >= 0, policy.hostCodec != .lz4 else { return nil }
        guard admitPutInRAM(regardless: false) else { return nil }
        defer { puttingInRAM.withLock { $0 -= 1 } }
        // A quarter of the budget at most is held for values still arriving, so clients that
        // announce values and send them slowly cannot push the cache out of RAM.
        guard let reservation = host.reserve(length, maxReservedBytes: policy.hostBudgetBytes / 4) else { return nil }
        return StagedBlock(host: host, reservation: reservation)
    }

    /// `putInRAMImmediately` for a staged block: a complete one becomes the block `key` (a
    /// cache put: demoted when evicted). False, with nothing changed and the staged bytes still
    /// readable, when it is incomplete, already published or discarded, or the host budget shrank
    /// under its slot: put its bytes the ordinary way.
    public func publishStaged(_ staged: StagedBlock, as key: BlockKey) -> Bool {
        let (generation, previous) = generations.bump(key)
        guard staged.publish(as: key, tag: generation) else {
            generations.restore(key, to: previous, ifCurrent: generation)
            return false
        }
        return true
    }

    /// A get that does not wait: the block if it is in RAM (borrowed in place, or decompressed),
    /// nil if it is not. Never reads the log. A miss here is not counted (the `get` that follows
    /// counts it).
    public func getFromRAM(_ key: BlockKey) throws -> Read? {
        try getFromRAM(key, countingMiss: false)
    }

    /// Blocks up to this size are copied out under the host tier's lock by `readFromRAM`.
    public static let lockedCopyLimit = 64 << 10

    /// Runs `body` on the block's bytes if it is in RAM (decompressed if stored so) and returns
    /// true; false, without running it, if it is not. A block of up to `lockedUpTo` bytes is
    /// read under the host tier's lock with no borrow (`body` must be short and must not call
    /// into the store: the lock is not reentrant); a larger one is borrowed for the call, where
    /// it lies, and `body` may take its time (a socket write). Never reads the log; a miss is not
    /// counted.
    public func readFromRAM(
        _ key: BlockKey, lockedUpTo: Int = lockedCopyLimit, _ body: (UnsafeRawBufferPointer) -> Void
    ) throws -> Bool {
        switch host.withSmallBlock(key, maxLength: lockedUpTo, body) {
        case .absent: return false
        case .read: return true
        case .notSmall: break
        }
        guard let read = try getFromRAM(key, countingMiss: false) else { return false }
        read.withBytesReleasing(body)
        return true
    }

    private func getFromRAM(_ key: BlockKey, countingMiss: Bool) throws -> Read? {
        guard let view = host.borrow(key, countingMiss: countingMiss) else { return nil }
        guard let length = view.decodedLength else { return .host(view) }
        defer { view.release() }
        guard let bytes = LZ4.decompressed(view.bytes, length: length) else { throw CorruptInRAM(key: key) }
        return .decoded(bytes)
    }

    public func get(_ key: BlockKey) async throws -> Read? {
        if let read = try getFromRAM(key, countingMiss: true) { return read }
        if let queued = pending.get(key) {
            // On its way down; a newer put of the key (not in RAM: too large) would have no
            // generation equal to the queued one.
            if generations.current(key) == queued.tag { return .nvme(try Self.decode(queued)) }
        }
        let before = generations.current(key)
        guard let bytes = try await nvme.get(key) else { return nil }
        let admit = shared.state.withLock { state -> Bool in
            guard state.policy.hostAdmission == .secondHit else { return true }
            if state.hostSeen.checkAndRecord(key) { return true }
            state.hostAdmissionsRefused += 1
            return false
        }
        // A put that came meanwhile is newer than what the log had: never replace it. While the
        // demotion writer is behind, a read does not promote: that would evict dirty blocks into
        // a queue that may have to drop them.
        if admit, before == nil, generations.current(key) == nil, pending.count < demotionCapacity / 2 {
            putInRAM(key, bytes, options: [.clean, .ifAbsent])
        }
        return .nvme(bytes)
    }

    /// Whether a tier holds the block (RAM, on its way down, or the log), without reading it or
    /// counting a hit or miss. A block found in the log can still fail its checksum when read:
    /// `get` then throws; it never returns other bytes.
    public func contains(_ key: BlockKey) async -> Bool {
        // Checked in this order, so a block moving down is seen somewhere: one dirty in RAM or on
        // its way down (even between leaving RAM and joining the queue) holds its key's
        // generation until it is in the log; a clean one in RAM has a copy in the log.
        if generations.current(key) != nil || host.contains(key) { return true }
        return await nvme.contains(key)
    }

    /// `observer` is called, from a background task, with blocks found to have left every tier
    /// without `remove`: dropped when evicted from RAM (eviction `drop`, the NVMe tier refused
    /// it, its demotion was given up) or reclaimed from the log (over its budget, a full disk).
    /// Each is checked before it is reported, so a block still in some tier never is; a loss the
    /// checks miss (their queue overflowed) is found by the block's next `get`, which returns nil.
    public func observeLosses(_ observer: @escaping @Sendable ([BlockKey]) -> Void) {
        losses.add(observer)
    }

    /// Removes a block whose key is written once and never again, without waiting when it can:
    /// true if its only copy was in RAM (put there and never written down), so no tier holds it
    /// now; false if a copy may be below (or it was not in RAM): call `remove`. For a key put
    /// more than once an older value could still be in the log: use `remove`.
    public func discardFromRAM(_ key: BlockKey) -> Bool {
        guard let removed = host.remove(key), removed.dirty else { return false }
        generations.clear(key, ifCurrent: removed.tag)
        return true
    }

    /// Removes the block from every tier; a queued demotion of it is skipped.
    public func remove(_ key: BlockKey) async {
        let (generation, _) = generations.bump(key)
        pending.remove(key)
        host.remove(key)
        await nvme.remove(key)
        generations.clear(key, ifCurrent: generation)
    }

    public func stats() async -> Stats {
        let nvmeStats = await nvme.stats
        return shared.state.withLock { state in
            Stats(host: host.stats, nvme: nvmeStats, demotionsDropped: state.demotionsDropped,
                  demotionFailures: state.demotionFailures, hostAdmissionsRefused: state.hostAdmissionsRefused,
                  nvmeAdmissionsRefused: state.nvmeAdmissionsRefused, blocksLost: state.blocksLost,
                  lastError: state.lastError)
        }
    }

    /// Publishes both tiers' figures (see `TierMetrics`).
    public func report(to metrics: TierMetrics) async {
        let stats = await stats()
        metrics.report(host: stats.host)
        metrics.report(nvme: stats.nvme, budgetBytes: await nvme.configuration.budgetBytes)
        metrics.report(store: stats)
    }

    /// Stops taking demotions and waits until the queued ones are written.
    public func close() async {
        demotions.finish()
        await writer.value
        losses.finish()
        await lossChecker.value
    }

    /// How many keys have a generation now: bounded by the dirty blocks in RAM plus the
    /// demotions queued (a test checks it returns to zero).
    var trackedGenerations: Int { generations.count }

    /// Demotions queued or being written.
    var queuedDemotions: Int { pending.count }

    /// The generation of each key whose newest value is only in RAM (a dirty block) or on its
    /// way down. A demotion carries the generation it evicted and is skipped if a newer put came
    /// since; a key whose newest value has a copy in the log has no entry, so the map never
    /// grows past the dirty blocks plus the queued demotions.
    final class Generations: Sendable {
        private let state = Mutex<(next: UInt64, byKey: [BlockKey: UInt64])>((1, [:]))

        /// A new generation for the key, and the one it replaces.
        func bump(_ key: BlockKey) -> (UInt64, UInt64?) {
            state.withLock { state in
                defer { state.next += 1 }
                return (state.next, state.byKey.updateValue(state.next, forKey: key))
            }
        }

        /// Undoes a bump whose put failed, unless another put came since.
        func restore(_ key: BlockKey, to previous: UInt64?, ifCurrent generation: UInt64) {
            state.withLock { state in
                if state.byKey[key] == generation { state.byKey[key] = previous }
            }
        }

        func current(_ key: BlockKey) -> UInt64? { state.withLock { $0.byKey[key] } }

        func clear(_ key: BlockKey, ifCurrent generation: UInt64) {
            state.withLock { state in
                if state.byKey[key] == generation { state.byKey[key] = nil }
            }
        }

        var count: Int { state.withLock { $0.byKey.count } }
    }
}

/// Remembers, approximately and in bounded memory, which keys were seen once: a direct-mapped
/// table of fingerprints (a collision forgets an older key, which then just needs one more hit).
struct Doorkeeper {
    private var slots = [UInt64](repeating: 0, count: 1 << 16)

    /// True if `key` was recorded before; records it either way.
    mutating func checkAndRecord(_ key: BlockKey) -> Bool {
        let fingerprint = key.low | 1   // never 0, the empty slot
        let slot = Int(truncatingIfNeeded: key.high & UInt64(slots.count - 1))
        defer { slots[slot] = fingerprint }
        return slots[slot] == fingerprint
    }
}
