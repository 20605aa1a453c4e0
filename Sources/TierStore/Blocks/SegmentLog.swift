import Foundation
import Glibc

/// The NVMe tier's log: blocks appended into large segment files with O_DIRECT, each record
/// self-describing (`BlockHeader`: key, lengths, codec, checksums). Whole segments are reclaimed
/// when the budget is exceeded: of block segments the oldest holding no live value (its values
/// were all overwritten or removed), else the oldest; of object segments the oldest. A segment
/// left holding nothing live goes at once, unless its lane still appends to it (a segment found
/// at open takes no more appends). Reads
/// verify both checksums: a record that fails is a miss, counted, never returned. A SQLite
/// catalog (`catalog.sqlite`, WAL) records where every block lives; a durable put returns once
/// its record is fsynced and its catalog entry committed.
/// On open the catalog is loaded and only what was appended after its last commit is scanned; a
/// torn or unwritten record is skipped, so a write that was never acknowledged is absent and
/// never half there.
///
/// Blocks and objects (weights, written by `ObjectStore`) go to segments of their own
/// (`Lane`), so that a reclaim can tell them apart: weights up to `objectReserveBytes` are not
/// reclaimed to make room for blocks, which a KV cache writes far more of and far more often.
public actor SegmentLog {
    /// Which segments a record goes to, and which segments a reclaim takes first.
    public enum Lane: Sendable, Hashable, CaseIterable {
        /// KV blocks and whatever else is written block by block: reclaimed first.
        case blocks
        /// Objects' chunks (model weights): kept up to `Configuration.objectReserveBytes`.
        case objects

        /// The start of a segment file's name in this lane.
        var filePrefix: String {
            switch self {
            case .blocks: "segment-"
            case .objects: "objects-"
            }
        }
    }

    public struct Configuration: Sendable {
        public var directory: String
        public var segmentBytes: Int
        public var budgetBytes: UInt64
        /// `.lz4`: each block is stored compressed when that makes it smaller, else as it is.
        public var codec: BlockHeader.Codec
        /// Room the filesystem keeps beyond a new segment (`fitBudgetToFilesystem`): the
        /// catalog's write-ahead log and its checkpoints grow there, and a catalog that cannot
        /// commit fails durable puts.
        public var filesystemReserveBytes: UInt64 = 16 << 20
        /// Bytes of object segments that a reclaim does not take while block segments can go
        /// instead; nil: half the budget in force. Objects beyond it go first (oldest first),
        /// before blocks. It is not a reservation: blocks use what objects leave free.
        public var objectReserveBytes: UInt64?

        public init(
            directory: String, segmentBytes: Int = 64 << 20, budgetBytes: UInt64 = 64 << 30, codec: BlockHeader.Codec = .none,
            objectReserveBytes: UInt64? = nil
        ) {
            precondition(segmentBytes >= 1 << 20 && segmentBytes % BlockHeader.alignment == 0,
                         "segments are at least 1 MiB and a multiple of 4 KiB")
            self.directory = directory
            self.segmentBytes = segmentBytes
            self.budgetBytes = budgetBytes
            self.codec = codec
            self.objectReserveBytes = objectReserveBytes
        }

        /// The object bytes a reclaim keeps while it can take blocks instead, now.
        public var objectReserveInForce: UInt64 { min(objectReserveBytes ?? budgetBytes / 2, budgetBytes) }
    }

    public struct Stats: Sendable, Equatable {
        public var blocks = 0
        public var usedBytes: UInt64 = 0
        /// Of `usedBytes`, those in object segments.
        public var objectBytes: UInt64 = 0
        public var hits = 0
        public var misses = 0
        public var checksumFailures = 0
        public var reclaimedSegments = 0
        /// Times the budget came down because the filesystem could not hold it (`fitBudgetToFilesystem`).
        public var budgetLowered = 0
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        /// Reads, writes and syncs in flight now (the tier's queue depth).
        public var inFlight = 0
    }

    public enum PutError: Error, Equatable, Sendable {
        case tooLarge(bytes: Int, segmentBytes: Int)
    }

    struct Location: Equatable {
        var segment: Int
        var offset: UInt64
        var recordLength: Int
        var sequence: UInt64
        /// Bytes after decompression; nil when unknown (catalogued before compression existed,
        /// and then never compressed).
        var payloadLength: Int?

        /// Bytes a buffer needs to receive the block with `get(_:into:)`.
        var bytesNeeded: Int { max(recordLength, payloadLength ?? 0) }
    }

    struct Segment {
        var id: Int
        var fd: Int32
        var end: UInt64
        var lane: Lane
        /// No more appends: full, or a write to it failed (a hole may follow).
        var sealed = false
    }

    public private(set) var configuration: Configuration
    let engine: any IOEngine
    let catalog: any Catalog
    var index: [BlockKey: Location] = [:]
    /// The keys indexed into each segment, in the order written (a key written again, or
    /// removed, stays listed: a reclaim drops only the keys whose entry still points there), so a
    /// reclaim visits its own segment's keys, not the whole index.
    var segmentKeys: [Int: [BlockKey]] = [:]
    /// Bytes of each segment's records that the index still points to (or that are being
    /// written): a reclaim takes a segment holding none first (`reclaimVictim`), so values
    /// overwritten or removed go before live ones, whatever their age.
    var liveBytes: [Int: UInt64] = [:]
    var segments: [Int: Segment] = [:]
    /// Each lane's largest segment id, the one its appends go to (ids only grow; a reclaim never
    /// takes a lane's newest): kept, not searched for, on every put.
    var newestSegment: [Lane: Int] = [:]
    /// The highest segment id so far, of either lane (ids give segments' ages).
    var lastSegmentID = 0
    var nextSequence: UInt64 = 1
    /// Records with a sequence below this were found when the log opened (`dropRecoveredBlocks`);
    /// until then (0) no segment is reclaimed for being dead, as the count is being built.
    var recoveredBefore: UInt64 = 0
    /// Operations in flight per segment: a reclaimed segment's descriptor is closed only when
    /// none is left, so no read or write ever meets a closed (or reused) descriptor.
    var pins: [Int: Int] = [:]
    /// Reclaimed segments waiting for their last operation: (descriptor, path).
    var closing: [Int: (Int32, String)] = [:]
    /// Segments written since their last fsync (by cache puts).
    var unsynced: Set<Int> = []
    /// Durable puts waiting for the next fdatasync of their segment, and the segments whose
    /// sync rounds are running (`syncGrouped`).
    private var syncWaiters: [Int: [CheckedContinuation<Void, any Error>]] = [:]
    private var syncing: Set<Int> = []
    /// Small records waiting to be written to their segment, and the segments being written
    /// (`writeCombined`).
    private struct QueuedWrite {
        var offset: UInt64
        var buffer: IOBuffer
        var length: Int
        /// Durable: resumed after the round's fdatasync, not after the write.
        var sync: Bool
        var continuation: CheckedContinuation<Void, any Error>
    }
    private var writeQueue: [Int: [QueuedWrite]] = [:]
    private var writing: Set<Int> = []
    public private(set) var stats = Stats()
    let buffers = IOBufferPool()

    /// The budget asked for (config, `setBudget`); `configuration.budgetBytes` is what the
    /// filesystem allows of it now (`fitBudgetToFilesystem`).
    private var askedBudgetBytes: UInt64

    init(configuration: Configuration, engine: any IOEngine, catalog: any Catalog) {
        self.configuration = configuration
        askedBudgetBytes = configuration.budgetBytes
        self.engine = engine
        self.catalog = catalog
    }

    /// Opens (creating if needed) the log in `configuration.directory` and recovers its blocks.
    public static func open(_ configuration: Configuration, engine: any IOEngine) async throws -> SegmentLog {
        try await open(configuration, engine: engine, catalog: nil)
    }

    /// Opens the log over `catalog` (nil: `catalog.sqlite` in the log's directory).
    static func open(_ configuration: Configuration, engine: any IOEngine, catalog: (any Catalog)?) async throws -> SegmentLog {
        try FileManager.default.createDirectory(atPath: configuration.directory, withIntermediateDirectories: true)
        let catalog = try catalog ?? BlockCatalog(path: "\(configuration.directory)/catalog.sqlite")
        let log = SegmentLog(configuration: configuration, engine: engine, catalog: catalog)
        try await log.recover()
        await log.fitBudgetToFilesystem()   // reopened on a filesystem that filled meanwhile
        return log
    }

    /// Appends the block. `unlessSuperseded` is checked on the log's executor just before the
    /// block gets its sequence number: a caller whose value may have been replaced meanwhile
    /// (a queued demotion) skips the write rather than land an older value on top.
    ///
    /// `awaitingCatalog: false` (with `durable`): returns once the block is on disk; its catalog
    /// entry is committed with the next commit rather than waited for. A caller that commits a
    /// record naming the block next (`putKVRecords`) makes both durable in that one commit; until
    /// then a restart still finds the block, by scanning past the catalogued end.
    public func put(
        _ key: BlockKey, _ payload: [UInt8], durable: Bool, awaitingCatalog: Bool = true,
        unlessSuperseded: (@Sendable () -> Bool)? = nil
    ) async throws {
        if let unlessSuperseded, unlessSuperseded() { return }
        var record = try payload.withUnsafeBytes { try prepare(key, payload: $0) }
        record.superseded = unlessSuperseded
        try await append(record, durable: durable, awaitingCatalog: awaitingCatalog)
    }

    /// Appends `buffer[range]` as the block: the path for callers that stream through their own
    /// reused buffers (object import) and must not allocate per block.
    public func put(_ key: BlockKey, from buffer: IOBuffer, range: Range<Int>, durable: Bool, lane: Lane = .blocks)
        async throws
    {
        let record = try prepare(key, payload: UnsafeRawBufferPointer(buffer[range]))
        try await append(record, durable: durable, lane: lane)
    }

    /// Where a record's payload starts in its buffer: a caller that lays the payload out there
    /// (`put(_:record:payloadLength:payloadChecksum:durable:)`) spares the log a copy.
    public static let payloadOffset = BlockHeader.length

    /// A buffer big enough for the record of a `payloadLength`-byte block, laid out for
    /// `put(_:record:...)`: the payload goes at `payloadOffset`.
    public static func recordBufferLength(payloadLength: Int) -> Int {
        BlockHeader.recordLength(storedLength: payloadLength)
    }

    /// The checksum a record carries for `payload`, computed by the caller off the log's
    /// executor (it is the expensive part of a put after the copy it avoids).
    public static func payloadChecksum(_ payload: UnsafeRawBufferPointer) -> UInt64 {
        BlockKey.hash64(payload)
    }

    /// Appends a block whose payload the caller already placed at `payloadOffset` of `buffer`
    /// (at least `recordBufferLength(payloadLength:)` bytes) with its checksum: no copy. The
    /// buffer stays the caller's. With a codec set, the payload is compressed into a record of
    /// the log's own, as any put.
    public func put(
        _ key: BlockKey, record buffer: IOBuffer, payloadLength: Int, payloadChecksum: UInt64, durable: Bool,
        lane: Lane = .blocks
    ) async throws {
        let payloadRange = Self.payloadOffset..<Self.payloadOffset + payloadLength
        guard configuration.codec == .none else {
            return try await put(key, from: buffer, range: payloadRange, durable: durable, lane: lane)
        }
        let recordLength = BlockHeader.recordLength(storedLength: payloadLength)
        precondition(buffer.count >= recordLength, "record buffer of \(buffer.count) bytes for a \(recordLength)-byte record")
        guard recordLength <= configuration.segmentBytes else {
            throw PutError.tooLarge(bytes: payloadLength, segmentBytes: configuration.segmentBytes)
        }
        buffer[payloadRange.upperBound..<recordLength].initializeMemory(as: UInt8.self, repeating: 0)
        let header = BlockHeader(
            key: key, payloadLength: UInt32(payloadLength), storedLength: UInt32(payloadLength), codec: .none,
            sequence: 0, payloadChecksum: payloadChecksum)
        try await append(
            PreparedRecord(key: key, buffer: buffer, recordLength: recordLength, payloadLength: payloadLength, header: header,
                           pooled: false),
            durable: durable, lane: lane)
    }

    /// A block encoded as its on-disk record, in a buffer, waiting for its place.
    struct PreparedRecord {
        var key: BlockKey
        var buffer: IOBuffer
        var recordLength: Int
        var payloadLength: Int
        /// Encoded by `append`, once the record has its sequence number.
        var header: BlockHeader
        /// The buffer is the log's (from its pool) rather than the caller's.
        var pooled = true
        /// Asked again once the record is written: true, and it is left out of the index.
        var superseded: (@Sendable () -> Bool)?
    }

    /// Encodes the record (compressing when the codec says so and it pays), synchronously, so
    /// the payload's memory is needed only here and never across a suspension.
    private func prepare(_ key: BlockKey, payload: UnsafeRawBufferPointer) throws -> PreparedRecord {
        var codec = BlockHeader.Codec.none
        var storedLength = payload.count
        let compressed = configuration.codec == .lz4 ? buffers.take(atLeast: LZ4.bound(payload.count)) : nil
        defer { compressed.map(buffers.give) }
        if let compressed, let n = LZ4.compress(payload, into: compressed.bytes) {
            codec = .lz4
            storedLength = n
        }
        let recordLength = BlockHeader.recordLength(storedLength: storedLength)
        guard recordLength <= configuration.segmentBytes else {
            throw PutError.tooLarge(bytes: payload.count, segmentBytes: configuration.segmentBytes)
        }
        let buffer = buffers.take(atLeast: recordLength)
        let stored = buffer[BlockHeader.length..<BlockHeader.length + storedLength]
        if codec == .lz4, let compressed {
            stored.copyMemory(from: UnsafeRawBufferPointer(compressed[0..<storedLength]))
        } else if storedLength > 0 {
            stored.copyMemory(from: payload)
        }
        // Pooled buffers hold an earlier block's bytes: never write them out as padding.
        buffer[BlockHeader.length + storedLength..<recordLength].initializeMemory(as: UInt8.self, repeating: 0)
        let header = BlockHeader(
            key: key, payloadLength: UInt32(payload.count), storedLength: UInt32(storedLength), codec: codec,
            sequence: 0, payloadChecksum: BlockKey.hash64(UnsafeRawBufferPointer(stored)))
        return PreparedRecord(key: key, buffer: buffer, recordLength: recordLength, payloadLength: payload.count,
                              header: header)
    }

    private func append(_ record: PreparedRecord, durable: Bool, awaitingCatalog: Bool = true, lane: Lane = .blocks)
        async throws
    {
        defer { if record.pooled { buffers.give(record.buffer) } }
        do {
            try await appendOnce(record, durable: durable, awaitingCatalog: awaitingCatalog, lane: lane)
        } catch let error as IOError where error.isNoSpace && !error.isReclaimedDuringWrite {
            // The filesystem filled before the budget did. If the oldest segments can make room,
            // the block goes once more, into a new segment (the failed one takes no more). (A
            // segment reclaimed under the budget while written to says nothing of the filesystem.)
            guard fitBudgetToFilesystem(failedForSpace: true) else { throw error }
            try await appendOnce(record, durable: durable, awaitingCatalog: awaitingCatalog, lane: lane)
        }
    }

    private func appendOnce(_ record: PreparedRecord, durable: Bool, awaitingCatalog: Bool, lane: Lane) async throws {
        let (key, buffer, recordLength) = (record.key, record.buffer, record.recordLength)
        var segment = try activeSegment(room: recordLength, lane: lane)
        let offset = segment.end
        segment.end += UInt64(recordLength)
        segments[segment.id] = segment
        stats.usedBytes += UInt64(recordLength)   // (the sum of the segments' ends, kept as they grow)
        if lane == .objects { stats.objectBytes += UInt64(recordLength) }
        let sequence = nextSequence
        nextSequence += 1
        var header = record.header
        header.sequence = sequence
        header.encode(into: buffer[0..<BlockHeader.length])

        pin(segment.id)
        defer { unpin(segment.id) }
        // Counted live while it is written, so that a reclaim does not take the segment of a
        // write under way for one that holds little (`reclaimVictim`).
        liveBytes[segment.id, default: 0] += UInt64(recordLength)
        var counted = true
        defer { if counted { uncount(recordLength, in: segment.id) } }
        do {
            try await writeCombined(segment.id, fd: segment.fd, buffer: buffer, length: recordLength, at: offset, sync: durable)
        } catch {
            // Nothing after a failed write is appended to this segment, so recovery never has
            // to guess what a hole means.
            segments[segment.id]?.sealed = true
            throw error
        }
        stats.bytesWritten += UInt64(recordLength)
        if !durable { unsynced.insert(segment.id) }
        // The segment may have been reclaimed while this write was in flight: then the block
        // is gone with it, and a durable put must not report success.
        guard segments[segment.id] != nil else {
            throw IOError(operation: "put", errno: ENOSPC, detail: IOError.reclaimedDuringWrite)
        }
        // Removed (or replaced) while it was written, as a demotion racing a DEL: indexed, it
        // would stay on as a block nothing names, holding its segment. Its room is dead now.
        if let superseded = record.superseded, superseded() {
            reclaimOverBudget()
            return
        }
        let location = Location(segment: segment.id, offset: offset, recordLength: recordLength, sequence: sequence,
                                payloadLength: record.payloadLength)
        if (index[key]?.sequence ?? 0) < sequence {
            if let replaced = index.updateValue(location, forKey: key) {
                unindexed(replaced)
            } else {
                stats.blocks += 1
            }
            counted = false   // (its bytes were counted as it was written)
            segmentKeys[segment.id, default: []].append(key)
        }
        reclaimOverBudget()
        try await catalog.record(
            .init(key: key, segment: segment.id, offset: offset, recordLength: recordLength, sequence: sequence,
                  payloadLength: record.payloadLength),
            durable: durable && awaitingCatalog)
    }

    /// Records up to this long are written together with the others waiting for their
    /// segment (`writeCombined`), in writes of at most `combinedWriteBytes`.
    static let combinableRecordBytes = 128 << 10
    static let combinedWriteBytes = 1 << 20

    /// Writes the record at its offset. A small one waits with the others queued for the same
    /// segment while a write to it is under way; then the waiting records that lie end to end
    /// go in one write (copied into one buffer): concurrent small puts cost one O_DIRECT write
    /// a round, not one each, and the round's durable records (`sync`) one fdatasync after
    /// their writes. The bytes land where they would alone, so recovery reads them the same; a
    /// write that fails fails every record in it, a sync every durable record of its round. A
    /// larger record is written alone, and if durable shares a sync with the others of its kind
    /// (`syncGrouped`). The caller holds a pin on the segment.
    private func writeCombined(_ id: Int, fd: Int32, buffer: IOBuffer, length: Int, at offset: UInt64, sync: Bool)
        async throws
    {
        guard length <= Self.combinableRecordBytes else {
            try await engine.write(fd: fd, from: buffer, range: 0..<length, at: offset)
            if sync { try await syncGrouped(id, fd: fd) }
            return
        }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            writeQueue[id, default: []].append(QueuedWrite(offset: offset, buffer: buffer, length: length, sync: sync,
                                                           continuation: continuation))
            if writing.insert(id).inserted {
                Task { await self.runWriteRounds(id, fd: fd) }
            }
        }
    }

    /// Writes the segment's queued records, round after round, until none is queued; a round
    /// with durable records written ends with one fdatasync for all of them.
    private func runWriteRounds(_ id: Int, fd: Int32) async {
        while let queued = writeQueue.removeValue(forKey: id), !queued.isEmpty {
            var run: [QueuedWrite] = []
            var runBytes = 0
            var toSync: [QueuedWrite] = []
            for write in queued.sorted(by: { $0.offset < $1.offset }) {
                if let last = run.last, last.offset + UInt64(last.length) != write.offset
                    || runBytes + write.length > Self.combinedWriteBytes
                {
                    toSync += await writeRun(run, fd: fd, bytes: runBytes)
                    run = []
                    runBytes = 0
                }
                run.append(write)
                runBytes += write.length
            }
            toSync += await writeRun(run, fd: fd, bytes: runBytes)
            guard !toSync.isEmpty else { continue }
            do {
                try await engine.sync(fd: fd, dataOnly: true)
                for write in toSync { write.continuation.resume() }
            } catch {
                for write in toSync { write.continuation.resume(throwing: error) }
            }
        }
        writing.remove(id)
    }

    /// Records lying end to end, in one write. Resumes those written that need no sync, and
    /// those whose write failed; returns the durable ones written, still waiting for their sync.
    private func writeRun(_ run: [QueuedWrite], fd: Int32, bytes: Int) async -> [QueuedWrite] {
        guard let first = run.first else { return [] }
        do {
            if run.count == 1 {
                try await engine.write(fd: fd, from: first.buffer, range: 0..<first.length, at: first.offset)
            } else {
                let combined = buffers.take(atLeast: bytes)
                defer { buffers.give(combined) }
                var at = 0
                for write in run {
                    combined[at..<at + write.length].copyMemory(from: UnsafeRawBufferPointer(write.buffer[0..<write.length]))
                    at += write.length
                }
                try await engine.write(fd: fd, from: combined, range: 0..<bytes, at: first.offset)
            }
            for write in run where !write.sync { write.continuation.resume() }
            return run.filter(\.sync)
        } catch {
            for write in run { write.continuation.resume(throwing: error) }
            return []
        }
    }

    /// Makes a large record's write durable with an fdatasync of its segment that starts after
    /// the write completed: shared by every such put to the segment whose write completed by
    /// then (group commit), so concurrent puts cost one sync a round, not one each. The caller
    /// holds a pin on the segment, so its descriptor stays open until the round is done.
    private func syncGrouped(_ id: Int, fd: Int32) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            syncWaiters[id, default: []].append(continuation)
            if syncing.insert(id).inserted {
                Task { await self.runSyncRounds(id, fd: fd) }
            }
        }
    }

    /// Syncs the segment for the puts waiting, round after round, until none waits.
    private func runSyncRounds(_ id: Int, fd: Int32) async {
        while let waiters = syncWaiters.removeValue(forKey: id), !waiters.isEmpty {
            do {
                try await engine.sync(fd: fd, dataOnly: true)
                for waiter in waiters { waiter.resume() }
            } catch {
                for waiter in waiters { waiter.resume(throwing: error) }
            }
        }
        syncing.remove(id)
    }

    /// Makes every block appended so far durable: fsyncs the segments written without sync
    /// since the last call and commits the catalog. For writers that put many blocks and need
    /// them all on disk once (an object import), cheaper than a durable put each.
    public func sync() async throws {
        let ids = unsynced
        unsynced.removeAll()
        for id in ids.sorted() {
            guard let segment = segments[id] else { continue }
            pin(id)
            defer { unpin(id) }
            do {
                try await engine.sync(fd: segment.fd, dataOnly: true)
            } catch {
                unsynced.insert(id)
                throw error
            }
        }
        try await catalog.flush()
    }

    /// Changes the byte budget at run time; shrinking reclaims whole segments (`reclaimVictim`'s
    /// order) down to it (the active segment stays).
    public func setBudget(_ bytes: UInt64) {
        askedBudgetBytes = bytes
        configuration.budgetBytes = bytes
        reclaimOverBudget()
        fitBudgetToFilesystem()
    }

    /// Changes the object reserve at run time (nil: half the budget); the next reclaim follows it.
    public func setObjectReserve(_ bytes: UInt64?) {
        configuration.objectReserveBytes = bytes
    }

    /// Changes the codec for blocks written from now on; stored blocks keep theirs.
    public func setCodec(_ codec: BlockHeader.Codec) {
        configuration.codec = codec
    }

    /// `observer` is called, on the log's executor (it must not wait), with the keys of every
    /// segment reclaimed (over the budget, or to make room on a full filesystem) once they are
    /// out of the index.
    public func observeReclaims(_ observer: @escaping @Sendable ([BlockKey]) -> Void) {
        reclaimObservers.append(observer)
    }

    private var reclaimObservers: [@Sendable ([BlockKey]) -> Void] = []

    /// Those of `keys` the log does not hold.
    public func absent(among keys: [BlockKey]) -> [BlockKey] { keys.filter { index[$0] == nil } }

    /// The block's bytes, or nil when absent or when its record fails verification.
    public func get(_ key: BlockKey) async throws -> [UInt8]? {
        guard let length = index[key]?.bytesNeeded else {
            stats.misses += 1
            return nil
        }
        let buffer = buffers.take(atLeast: length)
        defer { buffers.give(buffer) }
        guard let payload = try await get(key, into: buffer) else { return nil }
        return Array(buffer.readOnly[payload])
    }

    /// Reads the block into the caller's buffer (at least `bytesNeeded(for:)` bytes) and returns
    /// where its payload lies there, or nil when absent or when the record fails verification.
    /// No allocation: the path for callers that reuse their buffers.
    public func get(_ key: BlockKey, into buffer: IOBuffer) async throws -> Range<Int>? {
        guard let location = index[key] else {
            stats.misses += 1
            return nil
        }
        guard let segment = segments[location.segment] else {
            index[key] = nil   // its segment was reclaimed
            stats.blocks -= 1
            stats.misses += 1
            return nil
        }
        precondition(buffer.count >= location.bytesNeeded, "buffer smaller than the block")
        pin(segment.id)
        defer { unpin(segment.id) }
        let n = try await engine.readFully(fd: segment.fd, into: buffer, range: 0..<location.recordLength, at: location.offset)
        stats.bytesRead += UInt64(n)
        guard let (header, stored) = verifiedRecord(buffer, length: n, expecting: key),
            header.sequence == location.sequence, header.recordLength == location.recordLength,
            let payload = decoded(header, stored: stored, in: buffer)
        else {
            stats.checksumFailures += 1
            stats.misses += 1
            if index[key] == location {
                index[key] = nil
                unindexed(location)
                stats.blocks -= 1
                catalog.remove(key)
            }
            return nil
        }
        stats.hits += 1
        return payload
    }

    /// Bytes a buffer needs to receive the block with `get(_:into:)`, or nil when absent.
    public func bytesNeeded(for key: BlockKey) -> Int? { index[key]?.bytesNeeded }

    public func contains(_ key: BlockKey) -> Bool { index[key] != nil }

    public func remove(_ key: BlockKey) {
        if let removed = index.removeValue(forKey: key) {
            unindexed(removed)
            stats.blocks -= 1
            catalog.remove(key)
        }
    }

    /// A record the index no longer points to: its segment holds that much less live data.
    private func unindexed(_ location: Location) { uncount(location.recordLength, in: location.segment) }

    private func uncount(_ recordLength: Int, in segment: Int) {
        guard let live = liveBytes[segment] else { return }
        let left = live - min(live, UInt64(recordLength))
        liveBytes[segment] = left
        // A segment left holding nothing live goes now, not when the budget is next exceeded
        // (deleting every value freed no disk and INFO kept counting it), unless its lane still
        // appends to it.
        if left == 0, recoveredBefore > 0, let found = segments[segment], found.sealed || newestSegment[found.lane] != segment {
            reclaim(segment)
        }
    }

    /// Removes the blocks-lane blocks found when the log opened that `keep` does not name:
    /// values of an earlier run that nothing can reach any more (the KV service in `cache`
    /// mode starts empty; a durable value's parts whose record was never committed). Their
    /// segments, dead, go at once. Blocks written since the log opened are kept. Returns the count.
    @discardableResult
    public func dropRecoveredBlocks(except keep: Set<BlockKey>) -> Int {
        var dropped = 0
        for (key, location) in index
        where location.sequence < recoveredBefore && segments[location.segment]?.lane == .blocks && !keep.contains(key) {
            remove(key)
            dropped += 1
        }
        return dropped
    }

    /// Commits the catalog and closes every segment.
    public func close() async {
        try? await catalog.flush()
        for segment in segments.values { Glibc.close(segment.fd) }
        segments.removeAll()
        index.removeAll()
    }

    /// Where a block's record lies, for fault-injection tests.
    func recordLocation(_ key: BlockKey) -> (path: String, offset: UInt64)? {
        index[key].flatMap { location in segments[location.segment].map { (path($0), location.offset) } }
    }

    // MARK: Verification and recovery

    /// The header and where the stored bytes lie, if the record is whole: header valid, key as
    /// expected, stored-bytes checksum matching.
    private func verifiedRecord(_ buffer: IOBuffer, length: Int, expecting key: BlockKey) -> (BlockHeader, Range<Int>)? {
        guard case .success(let header) = BlockHeader.decode(UnsafeRawBufferPointer(buffer[0..<min(length, BlockHeader.length)])),
            header.key == key,
            BlockHeader.length + Int(header.storedLength) <= length
        else { return nil }
        let stored = BlockHeader.length..<BlockHeader.length + Int(header.storedLength)
        guard BlockKey.hash64(UnsafeRawBufferPointer(buffer[stored])) == header.payloadChecksum else { return nil }
        return (header, stored)
    }

    /// Where the payload lies in `buffer` once decoded: in place for uncompressed blocks; a
    /// compressed one is decompressed and moved to the buffer's start. Nil if it does not decode.
    private func decoded(_ header: BlockHeader, stored: Range<Int>, in buffer: IOBuffer) -> Range<Int>? {
        switch header.codec {
        case .none:
            return stored
        case .lz4:
            let length = Int(header.payloadLength)
            guard length <= buffer.count else { return nil }
            let scratch = buffers.take(atLeast: length)
            defer { buffers.give(scratch) }
            guard LZ4.decompress(UnsafeRawBufferPointer(buffer[stored]), into: scratch.bytes, expected: length) != nil else {
                return nil
            }
            buffer[0..<length].copyMemory(from: UnsafeRawBufferPointer(scratch[0..<length]))
            return 0..<length
        }
    }

    private func recover() async throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: configuration.directory)) ?? []
        let found = names.compactMap { name -> (id: Int, lane: Lane)? in
            for lane in Lane.allCases where name.hasPrefix(lane.filePrefix) && name.hasSuffix(".log") {
                if let id = Int(name.dropFirst(lane.filePrefix.count).dropLast(".log".count)) { return (id, lane) }
            }
            return nil
        }.sorted { $0.id < $1.id }
        for entry in try catalog.loadBlocks() where (index[entry.key]?.sequence ?? 0) < entry.sequence {
            index[entry.key] = Location(segment: entry.segment, offset: entry.offset, recordLength: entry.recordLength,
                                        sequence: entry.sequence, payloadLength: entry.payloadLength)
            nextSequence = max(nextSequence, entry.sequence + 1)
        }
        let catalogued = try catalog.cataloguedEnds()
        let probe = IOBuffer(count: BlockHeader.alignment)
        for (id, lane) in found {
            let path = segmentPath(id, lane: lane)
            let fd = Glibc.open(path, O_RDWR | O_DIRECT | O_CLOEXEC)
            guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
            var info = stat()
            fstat(fd, &info)
            let size = UInt64(info.st_size)
            // Only what was appended after the catalog's last commit needs a scan.
            var offset: UInt64 = min(catalogued[id] ?? 0, size)
            while offset + UInt64(BlockHeader.alignment) <= size {
                let n = try await engine.readFully(fd: fd, into: probe, at: offset)
                guard n == probe.count,
                    case .success(let header) = BlockHeader.decode(UnsafeRawBufferPointer(probe[0..<BlockHeader.length])),
                    offset + UInt64(header.recordLength) <= size
                else {
                    offset += UInt64(BlockHeader.alignment)   // a hole or a torn record: look further
                    continue
                }
                let record = buffers.take(atLeast: header.recordLength)
                defer { buffers.give(record) }
                let got = try await engine.readFully(fd: fd, into: record, at: offset)
                if verifiedRecord(record, length: got, expecting: header.key) != nil {
                    let location = Location(segment: id, offset: offset, recordLength: header.recordLength,
                                            sequence: header.sequence, payloadLength: Int(header.payloadLength))
                    if (index[header.key]?.sequence ?? 0) < header.sequence {
                        index[header.key] = location
                        try await catalog.record(
                            .init(key: header.key, segment: id, offset: offset, recordLength: header.recordLength,
                                  sequence: header.sequence, payloadLength: Int(header.payloadLength)), durable: false)
                    }
                    nextSequence = max(nextSequence, header.sequence + 1)
                    offset += UInt64(header.recordLength)
                } else {
                    stats.checksumFailures += 1
                    offset += UInt64(BlockHeader.alignment)
                }
            }
            // Recovered segments take no more appends: new writes start a new segment.
            segments[id] = Segment(id: id, fd: fd, end: size, lane: lane, sealed: true)
            newestSegment[lane] = max(newestSegment[lane] ?? id, id)
            lastSegmentID = max(lastSegmentID, id)
        }
        // Catalogued blocks whose segment is gone (reclaimed before the catalog caught up).
        for (key, location) in index where segments[location.segment] == nil {
            index[key] = nil
            catalog.remove(key)
        }
        for (key, location) in index {
            segmentKeys[location.segment, default: []].append(key)
            liveBytes[location.segment, default: 0] += UInt64(location.recordLength)
        }
        stats.blocks = index.count
        stats.usedBytes = segments.values.reduce(0) { $0 + $1.end }
        stats.objectBytes = segments.values.reduce(0) { $0 + ($1.lane == .objects ? $1.end : 0) }
        try await catalog.flush()
        recoveredBefore = nextSequence
        // Segments found holding nothing live (all overwritten or removed before the restart;
        // the newest too: found segments take no more appends).
        for (id, _) in segments where (liveBytes[id] ?? 0) == 0 { reclaim(id) }
    }

    // MARK: Segments

    private func segmentPath(_ id: Int, lane: Lane) -> String {
        "\(configuration.directory)/\(lane.filePrefix)\(String(format: "%08d", id)).log"
    }

    private func path(_ segment: Segment) -> String { segmentPath(segment.id, lane: segment.lane) }

    private func activeSegment(room: Int, lane: Lane) throws -> Segment {
        if let newest = newestSegment[lane], let segment = segments[newest], !segment.sealed,
            segment.end + UInt64(room) <= UInt64(configuration.segmentBytes)
        {
            return segment
        }
        if let newest = newestSegment[lane] { segments[newest]?.sealed = true }
        fitBudgetToFilesystem()
        let id = lastSegmentID + 1
        let path = segmentPath(id, lane: lane)
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOError(operation: "create \(path)", errno: errno) }
        // The new file's directory entry must be durable before a durable put in it returns.
        let directory = Glibc.open(configuration.directory, O_RDONLY | O_DIRECTORY)
        if directory >= 0 {
            fsync(directory)
            Glibc.close(directory)
        }
        let segment = Segment(id: id, fd: fd, end: 0, lane: lane)
        segments[id] = segment
        let previous = newestSegment[lane]
        newestSegment[lane] = id
        lastSegmentID = id
        // The segment this one follows, if nothing in it is live any more, is dead room now.
        if let previous, (liveBytes[previous] ?? 0) == 0, recoveredBefore > 0 { reclaim(previous) }
        return segment
    }

    private func pin(_ id: Int) {
        pins[id, default: 0] += 1
        stats.inFlight += 1
    }

    private func unpin(_ id: Int) {
        stats.inFlight -= 1
        pins[id, default: 1] -= 1
        if pins[id] == 0 {
            pins[id] = nil
            if closing[id] != nil { finishClosing(id) }
        }
    }

    private func finishClosing(_ id: Int) {
        guard let (fd, path) = closing.removeValue(forKey: id) else { return }
        Glibc.close(fd)
        unlink(path)
    }

    /// Before a new segment (and after a write that found no space): the budget in force is
    /// the one asked for, or less where the filesystem cannot hold it — what the log holds plus
    /// what is free, less a segment and `filesystemReserveBytes` (the budget is more than the
    /// filesystem holds, or other files share it). Coming down, segments make room (as above),
    /// as they would at the budget; without this the log would fill the filesystem and then
    /// fail every put, deletes freeing nothing. It goes back up as room comes back.
    /// `configuration.budgetBytes` shows the figure in force; `stats.budgetLowered` counts the
    /// times it came down. `failedForSpace`: the last write found no space whatever `statvfs`
    /// says, so at least one segment must go. True when segments went to make room.
    @discardableResult
    func fitBudgetToFilesystem(failedForSpace: Bool = false) -> Bool {
        var info = statvfs()
        guard statvfs(configuration.directory, &info) == 0 else { return false }
        let free = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        var headroom = UInt64(configuration.segmentBytes) + configuration.filesystemReserveBytes
        if failedForSpace { headroom = max(headroom, free + UInt64(configuration.segmentBytes)) }
        let holdable = stats.usedBytes + free - min(stats.usedBytes + free, headroom)
        let target = min(askedBudgetBytes, holdable)
        guard target != configuration.budgetBytes else { return false }
        let lowered = target < configuration.budgetBytes
        configuration.budgetBytes = target
        guard lowered else { return false }
        stats.budgetLowered += 1
        let reclaimed = stats.reclaimedSegments
        reclaimOverBudget()
        return stats.reclaimedSegments > reclaimed
    }

    /// Drops whole segments until the log fits its budget, never a lane's active one: an object
    /// segment while objects hold more than their reserve, else a block segment, else (only
    /// objects left to take) an object segment (`reclaimVictim` says which of the lane).
    private func reclaimOverBudget() {
        while stats.usedBytes > configuration.budgetBytes, let victim = reclaimVictim() {
            guard reclaim(victim) else { break }
        }
    }

    /// Drops the segment and the blocks the index still has in it (told to the reclaim
    /// observers); its file goes once no read or write holds it. False when there is no such segment.
    @discardableResult
    private func reclaim(_ victim: Int) -> Bool {
        guard let segment = segments.removeValue(forKey: victim) else { return false }
        liveBytes[victim] = nil
        var dropped: [BlockKey] = []
        for key in segmentKeys.removeValue(forKey: victim) ?? [] where index[key]?.segment == victim {
            index[key] = nil
            dropped.append(key)
        }
        stats.blocks -= dropped.count
        if !dropped.isEmpty { for observer in reclaimObservers { observer(dropped) } }
        catalog.dropSegment(victim)
        closing[victim] = (segment.fd, path(segment))
        if pins[victim, default: 0] == 0 { finishClosing(victim) }
        stats.reclaimedSegments += 1
        stats.usedBytes -= segment.end
        if segment.lane == .objects { stats.objectBytes -= segment.end }
        return true
    }

    /// The segment a reclaim takes next (`reclaimOverBudget`), or nil when only the lanes'
    /// active segments are left: a segment of either lane holding nothing live, the oldest
    /// first (it costs nothing: the rest of an object dropped when another of its segments
    /// went, values overwritten); then of the block lane the oldest, of the object lane (over
    /// its reserve) the oldest.
    private func reclaimVictim() -> Int? {
        // (Without this, the rest of a dropped object stayed for good: its lane under the
        // reserve, its segments were never taken, and their room was lost.)
        if let dead = segments.keys.filter({ id in
            id != newestSegment[segments[id]!.lane] && (liveBytes[id] ?? 0) == 0
        }).min() {
            return dead
        }
        // Per lane: (holds nothing live, id), least first: a block segment whose values were all
        // overwritten or removed goes before any with a live one, and otherwise the oldest goes,
        // so a value's own parts just written are not the first to make room for its last.
        // (Objects are written once, in order, and read whole: theirs go oldest first.)
        var best: [Lane: (live: Int, id: Int)] = [:]
        for (id, segment) in segments where id != newestSegment[segment.lane] {
            let holdsLive = segment.lane == .blocks && (liveBytes[id] ?? 0) > 0
            let candidate = (live: holdsLive ? 1 : 0, id: id)
            if let current = best[segment.lane], (current.live, current.id) <= (candidate.live, candidate.id) { continue }
            best[segment.lane] = candidate
        }
        if stats.objectBytes > configuration.objectReserveInForce, let id = best[.objects]?.id { return id }
        return best[.blocks]?.id ?? best[.objects]?.id
    }
}
