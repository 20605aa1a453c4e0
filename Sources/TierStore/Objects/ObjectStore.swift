import Foundation
import Glibc
import Synchronization

/// A large file (model weights) kept in the NVMe log as a sequence of chunks.
public struct ObjectInfo: Sendable, Equatable, Codable {
    public var name: String
    /// Random per import, part of every chunk's key: a re-import never mixes with the chunks
    /// of an earlier version, even across restarts.
    public var version: UInt64
    public var size: UInt64
    public var chunkSize: Int
    /// Where the bytes came from and which state of it (for a local file: path, size and
    /// modification time), so a caller can tell whether the stored copy is current.
    public var source: String

    public var chunks: Int { Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize)) }

    /// Bytes of chunk `index` (the last one may be short).
    public func chunkLength(_ index: Int) -> Int {
        Int(min(UInt64(chunkSize), size - UInt64(index) * UInt64(chunkSize)))
    }

    func chunkKey(_ index: Int) -> BlockKey {
        var bytes = Array("strata-object-v1".utf8) + [0] + Array(name.utf8) + [0]
        bytes += withUnsafeBytes(of: version.littleEndian, Array.init)
        bytes += withUnsafeBytes(of: UInt64(index).littleEndian, Array.init)
        return BlockKey(bytes: bytes)
    }
}

public enum ObjectError: Error, Equatable, Sendable, CustomStringConvertible {
    case notFound(name: String)
    case destinationTooSmall(name: String, needed: UInt64, given: Int)
    /// A chunk was missing (reclaimed under the budget) or failed verification: the object is
    /// dropped from the store and must be fetched again; no byte of it was trusted.
    case damaged(name: String, chunk: Int)
    case badChunkSize(Int)
    case sourceChanged(path: String)
    /// The NVMe tier could not keep the whole object: `lost` of its `chunks` were reclaimed
    /// under the budget before the rest was written. Nothing of it was kept.
    case noRoom(name: String, size: UInt64, lost: Int, chunks: Int)

    public var description: String {
        switch self {
        case .notFound(let name): "object '\(name)' is not in the store"
        case .destinationTooSmall(let name, let needed, let given):
            "object '\(name)' needs \(needed) bytes, the destination has \(given)"
        case .damaged(let name, let chunk):
            "object '\(name)': chunk \(chunk) is missing or failed its checksum; the object was dropped"
        case .badChunkSize(let size): "chunk size \(size): expected a multiple of 4 KiB from 64 KiB to 64 MiB"
        case .sourceChanged(let path): "\(path) changed while it was being imported"
        case .noRoom(let name, let size, let lost, let chunks):
            "object '\(name)' (\(size) bytes) does not fit in the NVMe tier: \(lost) of its \(chunks) chunks were reclaimed under the budget before the rest was written (raise tiers.nvme.budget or tiers.nvme.weights_reserve); nothing of it was kept"
        }
    }
}

/// How far a long transfer has come, for logs and progress bars.
public struct TransferProgress: Sendable, Equatable {
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var elapsed: Duration

    public var bytesPerSecond: Double {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return seconds > 0 ? Double(bytesDone) / seconds : 0
    }

    /// Seconds left at the rate so far; nil before any byte moved.
    public var secondsLeft: Double? {
        bytesPerSecond > 0 ? Double(bytesTotal - bytesDone) / bytesPerSecond : nil
    }
}

/// Objects over the NVMe log. An import reads the source with O_DIRECT at full queue depth and
/// writes each chunk through to the log as it arrives (optionally handing it to a sink, so a
/// caller can fill host RAM in the same pass); the manifest is committed only after every chunk
/// is synced, so an import cut short leaves nothing behind. A read streams the chunks, verified,
/// into memory the caller provides (for instance a file mapped in /dev/shm), `queueDepth` at once.
public final class ObjectStore: Sendable {
    public let log: SegmentLog
    public let queueDepth: Int
    private let manifests: Mutex<[String: ObjectInfo]>
    /// Each committed object's chunk keys, to its name and version: a reclaimed chunk names
    /// its object.
    private let chunkOwners: Mutex<[BlockKey: (name: String, version: UInt64)]>
    /// Told the names of objects dropped because the log reclaimed one of their chunks.
    private let dropObservers = Mutex<[@Sendable ([String]) -> Void]>([])

    /// `observer` hears of every object the store drops because the log reclaimed a chunk of it
    /// (not of removals asked for): whoever indexes objects can forget them at once.
    public func observeDrops(_ observer: @escaping @Sendable ([String]) -> Void) {
        dropObservers.withLock { $0.append(observer) }
    }
    private let buffers: IOBufferPool

    public static let defaultChunkSize = 8 << 20

    init(log: SegmentLog, queueDepth: Int, manifests: [ObjectInfo]) {
        self.log = log
        self.queueDepth = queueDepth
        let byName = Dictionary(manifests.map { ($0.name, $0) }, uniquingKeysWith: { $1 })
        self.manifests = Mutex(byName)
        self.chunkOwners = Mutex(Dictionary(byName.values.flatMap(Self.owned), uniquingKeysWith: { first, _ in first }))
        self.buffers = IOBufferPool(perClass: queueDepth)
    }

    private static func owned(_ info: ObjectInfo) -> [(BlockKey, (name: String, version: UInt64))] {
        (0..<info.chunks).map { (info.chunkKey($0), (info.name, info.version)) }
    }

    /// The log reclaimed these blocks: an object that had a chunk among them can no longer be
    /// read whole, so it is dropped now (manifest, catalog entry, its other chunks), not when a
    /// read finds it damaged, and `info` and `list` name only objects that can be read.
    private func reclaimed(_ keys: [BlockKey]) {
        let objects = chunkOwners.withLock { owners in
            Dictionary(keys.compactMap { owners[$0] }, uniquingKeysWith: { first, _ in first })
        }
        guard !objects.isEmpty else { return }
        Task {
            // (only the version that lost the chunk: a newer one committed meanwhile stays)
            for (name, version) in objects { try? await remove(name, ifVersionOf: version) }
            let dropped = objects.keys.filter { info($0) == nil }
            if !dropped.isEmpty { for observer in dropObservers.withLock({ $0 }) { observer(Array(dropped)) } }
        }
    }

    /// The objects of `log`, as its catalog recorded them. An object whose chunks did not all
    /// survive (reclaimed, or lost to damage) is dropped here, before anyone reads it.
    public static func open(log: SegmentLog, queueDepth: Int = 8) async throws -> ObjectStore {
        var whole: [ObjectInfo] = []
        for info in try log.catalog.loadObjects() {
            var complete = true
            for chunk in 0..<info.chunks where await !log.contains(info.chunkKey(chunk)) {
                complete = false
                break
            }
            if complete { whole.append(info) } else { try await log.catalog.removeObject(info.name) }
        }
        let store = ObjectStore(log: log, queueDepth: max(1, queueDepth), manifests: whole)
        await log.observeReclaims { [weak store] keys in store?.reclaimed(keys) }
        return store
    }

    public func info(_ name: String) -> ObjectInfo? { manifests.withLock { $0[name] } }

    public func list() -> [ObjectInfo] { manifests.withLock { $0.values.sorted { $0.name < $1.name } } }

    /// Copies the file at `path` into the store as `name`, replacing an earlier version once
    /// the new one is whole. `sink` receives every chunk (offset, bytes) as it passes, in no
    /// particular order; `progress` is called after each chunk. `label`, when given, is recorded
    /// as the object's `source` instead of the file's identity (for a file that is a temporary
    /// copy: what the bytes are matters, not where they passed). `lane`: where its chunks go in
    /// the log; `.blocks` for data cheaper to lose than weights (a saved KV cache), which the
    /// log then reclaims before the weights in `.objects`.
    @discardableResult
    public func importFile(
        _ name: String, path: String, chunkSize: Int = ObjectStore.defaultChunkSize, label: String? = nil,
        lane: SegmentLog.Lane = .objects,
        sink: (@Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void)? = nil,
        bufferSink: (@Sendable (UInt64, IOBuffer, Range<Int>) async throws -> Void)? = nil,
        progress: (@Sendable (TransferProgress) -> Void)? = nil,
        beforeCommit: (@Sendable (ObjectInfo) async throws -> Void)? = nil
    ) async throws -> ObjectInfo {
        let source = try SourceFile(path: path)
        defer { source.close() }
        let engine = log.engine
        return try await ingest(
            name, size: source.size, source: label ?? source.identity, chunkSize: chunkSize, inPlace: false, lane: lane,
            read: { offset, buffer, range in
                // O_DIRECT wants whole blocks at an aligned address (so not in place): ask for the
                // rounded length, the file's end cuts it short.
                let want = (range.count + BlockHeader.alignment - 1) / BlockHeader.alignment * BlockHeader.alignment
                let got = try await engine.readFully(fd: source.fd, into: buffer, range: 0..<want, at: offset)
                guard got >= range.count else { throw ObjectError.sourceChanged(path: path) }
            },
            sink: sink, bufferSink: bufferSink, progress: progress,
            beforeCommit: { info in
                guard try source.identityNow() == source.identity else { throw ObjectError.sourceChanged(path: path) }
                try await beforeCommit?(info)
            })
    }

    /// Brings an object of `size` bytes into the store as `name`, chunk by chunk, `queueDepth`
    /// chunks at once: `read(offset, buffer, range)` fills `buffer[range]` with the bytes at
    /// `offset` of the source (a file, a remote object). With `inPlace` the range is where the
    /// log's record keeps its payload, so the chunk is written out with no copy (for readers
    /// that can fill any address; O_DIRECT file reads cannot). Each chunk goes to `sink` (in no
    /// particular order) and is written through to the log. Only when every chunk is in and
    /// `beforeCommit` (a checksum, a check that the source did not change) passes are the
    /// segments synced and the manifest committed, replacing an earlier version; an ingest cut
    /// short or refused leaves nothing behind. Memory is bounded: `workers` (default
    /// `queueDepth`) pooled buffers.
    @discardableResult
    public func ingest(
        _ name: String, size: UInt64, source: String, chunkSize: Int = ObjectStore.defaultChunkSize, workers: Int? = nil,
        inPlace: Bool = true, lane: SegmentLog.Lane = .objects,
        read: @escaping @Sendable (_ offset: UInt64, _ buffer: IOBuffer, _ range: Range<Int>) async throws -> Void,
        sink: (@Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void)? = nil,
        bufferSink: (@Sendable (UInt64, IOBuffer, Range<Int>) async throws -> Void)? = nil,
        progress: (@Sendable (TransferProgress) -> Void)? = nil,
        beforeCommit: (@Sendable (ObjectInfo) async throws -> Void)? = nil
    ) async throws -> ObjectInfo {
        guard chunkSize % BlockHeader.alignment == 0, (64 << 10...64 << 20).contains(chunkSize) else {
            throw ObjectError.badChunkSize(chunkSize)
        }
        let info = ObjectInfo(name: name, version: UInt64.random(in: 1...UInt64.max), size: size,
                              chunkSize: chunkSize, source: source)
        let started = ContinuousClock.now
        let done = Mutex<UInt64>(0)
        let written = Mutex<[Int]>([])   // chunks in the log, for the count of those lost below
        do {
            _ = try await Parallel.run(workers: workers ?? queueDepth, count: info.chunks) { [buffers, log] chunk in
                let length = info.chunkLength(chunk)
                let offset = UInt64(chunk) * UInt64(chunkSize)
                let buffer = buffers.take(atLeast: SegmentLog.recordBufferLength(payloadLength: length))
                defer { buffers.give(buffer) }
                let range = inPlace ? SegmentLog.payloadOffset..<SegmentLog.payloadOffset + length : 0..<length
                try await read(offset, buffer, range)
                let payload = UnsafeRawBufferPointer(buffer[range])
                try sink?(offset, payload)
                try await bufferSink?(offset, buffer, range)
                if inPlace {
                    try await log.put(info.chunkKey(chunk), record: buffer, payloadLength: length,
                                      payloadChecksum: SegmentLog.payloadChecksum(payload), durable: false, lane: lane)
                } else {
                    try await log.put(info.chunkKey(chunk), from: buffer, range: range, durable: false, lane: lane)
                }
                written.withLock { $0.append(chunk) }
                let total = done.withLock { $0 += UInt64(length); return $0 }
                progress?(TransferProgress(bytesDone: total, bytesTotal: info.size, elapsed: ContinuousClock.now - started))
            }
            try await beforeCommit?(info)
        } catch {
            // A chunk whose segment the budget reclaimed while it was written: the object does
            // not fit, as when its first chunks go before the last are written (below), and is
            // refused the same way (a stage then keeps its RAM copy).
            let noRoom = (error as? IOError)?.isReclaimedDuringWrite == true
            let lost = noRoom ? await lostChunks(of: info, among: written.withLock { $0 }) + 1 : 0
            await dropChunks(of: info)   // written but never committed: give the space back now
            if noRoom { throw ObjectError.noRoom(name: name, size: size, lost: lost, chunks: info.chunks) }
            throw error
        }
        // The chunks' owner is known before the check below: a chunk reclaimed after the check
        // drops the object through `reclaimed` once it is committed.
        own(info)
        do {
            try await log.sync()
            // An object larger than the log keeps loses its first chunks while the last are
            // written; such an object is refused, not listed and then found damaged.
            let lost = await lostChunks(of: info)
            guard lost == 0 else { throw ObjectError.noRoom(name: name, size: size, lost: lost, chunks: info.chunks) }
            try await log.catalog.putObject(info)
        } catch {
            disown(info)
            await dropChunks(of: info)
            throw error
        }
        let replaced = manifests.withLock { $0.updateValue(info, forKey: name) }
        if let replaced {
            disown(replaced)
            await dropChunks(of: replaced)
        }
        // (A chunk reclaimed while the catalog committed, before the manifest was listed, was
        // not dropped by `reclaimed`: it found no manifest yet.)
        let lost = await lostChunks(of: info)
        if lost > 0 {
            try? await remove(name, ifVersionOf: info.version)
            throw ObjectError.noRoom(name: name, size: size, lost: lost, chunks: info.chunks)
        }
        return info
    }

    /// Streams the object into `destination` (at least its size), verifying every chunk.
    /// A missing or damaged chunk drops the object and throws `ObjectError.damaged`; the
    /// destination then holds partial data that must not be used.
    public func read(
        _ name: String, into destination: UnsafeMutableRawBufferPointer,
        progress: (@Sendable (TransferProgress) -> Void)? = nil
    ) async throws {
        try await read(name, into: destination, progress: progress, chunkTimes: nil)
    }

    /// `chunkTimes` receives each chunk's time from its read's start to its verified copy.
    func read(
        _ name: String, into destination: UnsafeMutableRawBufferPointer,
        progress: (@Sendable (TransferProgress) -> Void)? = nil, chunkTimes: (@Sendable (Duration) -> Void)?
    ) async throws {
        guard let info = info(name) else { throw ObjectError.notFound(name: name) }
        guard UInt64(destination.count) >= info.size else {
            throw ObjectError.destinationTooSmall(name: name, needed: info.size, given: destination.count)
        }
        let target = UnsafeDestination(base: destination.baseAddress, count: destination.count)
        try await read(name, progress: progress, chunkTimes: chunkTimes) { offset, bytes in
            target.copy(from: bytes, at: Int(offset))
        }
    }

    /// Streams the object's verified chunks to `sink` (offset, bytes), `queueDepth` at once, in no
    /// particular order. A missing or damaged chunk drops the object and throws
    /// `ObjectError.damaged`; what the sink received must then not be used.
    public func read(
        _ name: String, progress: (@Sendable (TransferProgress) -> Void)? = nil,
        chunkTimes: (@Sendable (Duration) -> Void)? = nil,
        sink: @escaping @Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void
    ) async throws {
        try await read(name, progress: progress, chunkTimes: chunkTimes) { offset, buffer, range in
            try sink(offset, UnsafeRawBufferPointer(buffer[range]))
        }
    }

    /// As `read(_:progress:chunkTimes:sink:)`, handing each chunk as the pooled buffer and the
    /// payload's range in it, for a sink that writes it out with the I/O engine (no thread of the
    /// cooperative pool blocks in a write) before the buffer goes back to the pool.
    public func read(
        _ name: String, progress: (@Sendable (TransferProgress) -> Void)? = nil,
        chunkTimes: (@Sendable (Duration) -> Void)? = nil,
        bufferSink: @escaping @Sendable (UInt64, IOBuffer, Range<Int>) async throws -> Void
    ) async throws {
        guard let info = info(name) else { throw ObjectError.notFound(name: name) }
        let started = ContinuousClock.now
        let done = Mutex<UInt64>(0)
        do {
            _ = try await Parallel.run(workers: queueDepth, count: info.chunks) { [buffers, log] chunk in
                let key = info.chunkKey(chunk)
                let chunkStarted = ContinuousClock.now
                guard let needed = await log.bytesNeeded(for: key) else { throw ObjectError.damaged(name: name, chunk: chunk) }
                let buffer = buffers.take(atLeast: needed)
                defer { buffers.give(buffer) }
                guard let payload = try await log.get(key, into: buffer), payload.count == info.chunkLength(chunk) else {
                    throw ObjectError.damaged(name: name, chunk: chunk)
                }
                try await bufferSink(UInt64(chunk) * UInt64(info.chunkSize), buffer, payload)
                chunkTimes?(ContinuousClock.now - chunkStarted)
                let total = done.withLock { $0 += UInt64(payload.count); return $0 }
                progress?(TransferProgress(bytesDone: total, bytesTotal: info.size, elapsed: ContinuousClock.now - started))
            }
        } catch let error as ObjectError {
            if case .damaged = error, self.info(name) != nil {
                try? await remove(name)
                // (As for a reclaim: whoever indexes objects stops counting on it.)
                if self.info(name) == nil { for observer in dropObservers.withLock({ $0 }) { observer([name]) } }
            }
            throw error
        }
    }

    /// Hands the chunks of `info` (committed or still being ingested) to `body` in order, one at
    /// a time, verified: for a checksum over the whole object without holding it in memory.
    public func forEachChunk(of info: ObjectInfo, _ body: (UnsafeRawBufferPointer) throws -> Void) async throws {
        let buffer = IOBuffer(count: IOBufferPool.sizeClass(info.chunkSize + 2 * BlockHeader.alignment))
        for chunk in 0..<info.chunks {
            guard let needed = await log.bytesNeeded(for: info.chunkKey(chunk)), needed <= buffer.count,
                let payload = try await log.get(info.chunkKey(chunk), into: buffer), payload.count == info.chunkLength(chunk)
            else { throw ObjectError.damaged(name: info.name, chunk: chunk) }
            try body(UnsafeRawBufferPointer(buffer[payload]))
        }
    }

    /// Removes the object and its chunks.
    public func remove(_ name: String) async throws {
        try await remove(name, ifVersionOf: nil)
    }

    private func remove(_ name: String, ifVersionOf version: UInt64?) async throws {
        guard let info = manifests.withLock({ manifests -> ObjectInfo? in
            guard let info = manifests[name], version == nil || info.version == version else { return nil }
            return manifests.removeValue(forKey: name)
        }) else { return }
        disown(info)
        try await log.catalog.removeObject(name)
        await dropChunks(of: info)
    }

    /// Its chunks name it from now on (`reclaimed`).
    private func own(_ info: ObjectInfo) {
        chunkOwners.withLock { owners in for (key, owner) in Self.owned(info) { owners[key] = owner } }
    }

    private func disown(_ info: ObjectInfo) {
        chunkOwners.withLock { owners in for (key, _) in Self.owned(info) { owners[key] = nil } }
    }

    /// How many of its chunks (of `chunks`, by index; nil: all) the log no longer holds.
    private func lostChunks(of info: ObjectInfo, among chunks: [Int]? = nil) async -> Int {
        await log.absent(among: (chunks ?? Array(0..<info.chunks)).map { info.chunkKey($0) }).count
    }

    private func dropChunks(of info: ObjectInfo) async {
        for chunk in 0..<info.chunks { await log.remove(info.chunkKey(chunk)) }
    }
}

/// Caller memory that chunk tasks fill, each its own disjoint range.
struct UnsafeDestination: @unchecked Sendable {
    let base: UnsafeMutableRawPointer?
    let count: Int

    func copy(from bytes: UnsafeRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && offset + bytes.count <= count)
        guard let base, let from = bytes.baseAddress else { return }
        (base + offset).copyMemory(from: from, byteCount: bytes.count)
    }
}

/// A file being imported: opened with O_DIRECT where the file system allows it.
struct SourceFile: Sendable {
    let fd: Int32
    let path: String
    let size: UInt64
    let identity: String

    init(path: String) throws {
        var fd = Glibc.open(path, O_RDONLY | O_DIRECT | O_CLOEXEC)
        if fd < 0 && errno == EINVAL { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) }   // no O_DIRECT here
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        self.fd = fd
        self.path = path
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw IOError(operation: "stat \(path)", errno: code)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            Glibc.close(fd)
            throw IOError(operation: "import \(path)", errno: EINVAL, detail: "not a regular file")
        }
        size = UInt64(info.st_size)
        identity = Self.identity(path: path, info)
    }

    func identityNow() throws -> String {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw IOError(operation: "stat \(path)", errno: errno) }
        return Self.identity(path: path, info)
    }

    /// The identity `importFile` records for the file at `path` as it is now.
    static func identity(path: String) throws -> (identity: String, size: UInt64) {
        var info = stat()
        guard stat(path, &info) == 0 else { throw IOError(operation: "stat \(path)", errno: errno) }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw IOError(operation: "stat \(path)", errno: EINVAL, detail: "not a regular file")
        }
        return (identity(path: path, info), UInt64(info.st_size))
    }

    static func identity(path: String, _ info: stat) -> String {
        "file:\(path) size=\(info.st_size) mtime=\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }

    func close() { Glibc.close(fd) }
}
