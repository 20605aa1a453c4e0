import Foundation
import Logging
import Metrics
import Synchronization

/// Brings a model's weights to the tier asked for: from the source into a file in a RAM-backed
/// (or disk) directory that the runtime opens by path, and into the NVMe store; or from the
/// NVMe copy into that directory when the source has not changed since. From HTTP and S3 the
/// transfer fills the file only, and the staging is done (the runtime may start) once the file
/// is whole and verified; the NVMe copy is then written *behind* it, from the file, at lower
/// priority (see `WeightStager+WriteBehind.swift`). A local file is read once and written to
/// both in the same pass. Stagings are deduplicated by name (a second request joins the running
/// one, and any staging of a name waits for its write-behind unless the RAM copy asked for is
/// already there), cancelled when every caller has gone, bounded in memory (pooled chunk
/// buffers) and report their progress. Nothing is published before it is whole and, when a
/// SHA-256 is given, verified.
public actor WeightStager {
    public let objects: ObjectStore
    public let remote: RemoteClient
    public let host: StagedFiles
    public let disk: StagedFiles
    let logger: Logger
    /// How often a running staging writes its progress to the log.
    let logInterval: Duration
    /// Chunks in flight while an NVMe copy is written behind a RAM copy: few, so that it leaves
    /// the CPU and the disk to the runtime that is starting from the RAM copy meanwhile.
    let writeBehindDepth: Int
    /// Where `strata_stage_write_behind_total` goes (the executable's backend unless a test
    /// gives its own).
    let metrics: any MetricsFactory

    final class Job: Sendable {
        let request: StageRequest
        let status: Mutex<StageStatus>
        let task: Mutex<Task<StageResult, any Error>?> = Mutex(nil)
        let callers = Mutex(0)
        init(request: StageRequest) {
            self.request = request
            status = Mutex(StageStatus(
                name: request.name, source: request.source, destination: request.destination, origin: nil,
                state: .running, bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, secondsLeft: nil,
                elapsedSeconds: 0, path: nil, error: nil, nvmeCopy: nil))
        }
    }

    private var running: [String: Job] = [:]
    /// Copies of an earlier version of a source found to have a model's configured SHA-256
    /// (`pinnedCopy`), by model: the version's identity and the checksum. Hashed once, not on
    /// every staging while the source holds another version.
    private var pinnedVerified: [String: (identity: String, sha256: String)] = [:]
    var finished: [String: StageStatus] = [:]
    /// NVMe copies being written behind RAM copies, by name: at most one per name.
    var writesBehind: [String: WriteBehind] = [:]
    /// How the last NVMe copy written behind each name ended.
    var writtenBehindLast: [String: StageStatus.NVMeCopy] = [:]
    /// Set by `stopWritesBehind`: the log is about to close, so no NVMe copy starts any more.
    var writesBehindStopped = false

    public init(
        objects: ObjectStore, remote: RemoteClient, host: StagedFiles, disk: StagedFiles, logger: Logger,
        logInterval: Duration = .seconds(2), writeBehindDepth: Int = 2, metrics: any MetricsFactory = MetricsSystem.factory
    ) {
        self.objects = objects
        self.remote = remote
        self.host = host
        self.disk = disk
        self.logger = logger
        self.logInterval = logInterval
        self.writeBehindDepth = max(1, writeBehindDepth)
        self.metrics = metrics
    }

    /// Stages `request`, joining a staging of the same name already under way. `progress`
    /// sees the status after every chunk. Cancelling the calling task leaves the staging to
    /// the other callers, and cancels it when none is left.
    public func stage(
        _ request: StageRequest, progress: (@Sendable (StageStatus) -> Void)? = nil
    ) async throws -> StageResult {
        while let other = running[request.name], other.request != request {
            // A different request for the same object: let it finish (its work is likely ours).
            _ = try? await other.task.withLock { $0 }?.value
        }
        let job: Job
        if let existing = running[request.name] {
            job = existing
        } else {
            job = Job(request: request)
            running[request.name] = job
            job.task.withLock {
                $0 = Task { [weak self] in
                    guard let self else { throw CancellationError() }
                    return try await self.run(job)
                }
            }
        }
        job.callers.withLock { $0 += 1 }
        let task = job.task.withLock { $0! }
        let watcher = progress.map { report in
            Task {
                while !Task.isCancelled {
                    report(job.status.withLock { $0 })
                    try? await Task.sleep(for: .milliseconds(250))
                }
            }
        }
        defer { watcher?.cancel() }
        let result = await withTaskCancellationHandler {
            await task.result
        } onCancel: {
            if job.callers.withLock({ $0 -= 1; return $0 }) == 0 { task.cancel() }
        }
        if Task.isCancelled == false { job.callers.withLock { $0 -= 1 } }
        progress?(job.status.withLock { $0 })
        return try result.get()
    }

    /// Cancels the staging of `name` for every caller, and the NVMe copy being written behind it.
    public func cancel(_ name: String) {
        running[name]?.task.withLock { $0 }?.cancel()
        writesBehind[name]?.cancel()
    }

    /// Running stagings, then the last result of each finished one.
    public func statuses() -> [StageStatus] {
        running.values.map { $0.status.withLock { $0 } }.sorted { $0.name < $1.name }
            + finished.values.filter { running[$0.name] == nil }.sorted { $0.name < $1.name }
    }

    /// Drops `name`'s copy in the RAM-backed directory (the NVMe copy stays). An NVMe copy still
    /// being written from it goes on from its open descriptor, and its pages are freed when that
    /// write ends.
    public func releaseHost(_ name: String) {
        host.remove(name)
    }

    /// Removes the RAM-backed copies that are not of a configured model's current source
    /// (`sources`: model name to source): models no longer configured, or whose source is now
    /// another (by `hostCopy`'s rule), or damaged. Such a copy is RAM nothing would use or count
    /// against the budget. Returns the names removed, each with why.
    public func removeHostCopies(keeping sources: [String: String]) -> [String: String] {
        var removed: [String: String] = [:]
        for name in host.names() where running[name] == nil {
            if let source = sources[name] {
                guard let stored = host.identity(of: name), hostCopy(of: name, source: source) == nil else { continue }
                if host.path(of: name, identity: stored) == nil {
                    removed[name] = "damaged: its size or change time is not what was written"
                } else if let location = try? RemoteLocation(parsing: source), Self.isCopy(stored, of: location) {
                    removed[name] = "its source changed since it was copied"
                } else {
                    removed[name] = "of another source than the configured one"
                }
            } else {
                removed[name] = "no configured model has this name"
            }
            host.remove(name)
        }
        return removed
    }

    /// `name`'s complete copy in the RAM-backed directory, if it is of the current version of
    /// `source`: checked for local files (a stat); for HTTP and S3 sources a copy of that URL or
    /// object (whether it changed there is asked once per daemon start, `checkSource`,
    /// and by `strata stage`; not on every start of the model).
    public func hostCopy(of name: String, source: String) -> String? {
        guard let location = try? RemoteLocation(parsing: source) else { return nil }
        guard case .file(let path) = location else {
            guard let stored = host.identity(of: name), Self.isVersion(stored, of: location) else { return nil }
            return host.path(of: name, identity: stored)
        }
        guard let current = try? SourceFile.identity(path: path) else { return nil }
        return host.path(of: name, identity: current.identity)
    }

    /// `hostCopy`, and with a checksum (`sha256`), only a copy whose bytes have it (hashed once
    /// per version and checksum): a runtime never starts on a copy staged under another.
    public func hostCopy(of name: String, source: String, sha256 expected: String?) async -> String? {
        guard let path = hostCopy(of: name, source: source) else { return nil }
        guard let expected, let identity = host.identity(of: name) else { return path }
        return await hasPinned(name, identity, expected.lowercased(), hash: { try? Self.sha256(ofFile: path) }) ? path : nil
    }

    /// The fastest tier holding a current copy of `name` (by the same rule as `hostCopy`).
    public func residency(of name: String, source: String) -> StageOrigin {
        if hostCopy(of: name, source: source) != nil { return .host }
        guard let stored = objects.info(name), let location = try? RemoteLocation(parsing: source) else { return .remote }
        if case .file(let path) = location {
            return (try? SourceFile.identity(path: path).identity) == stored.source ? .nvme : .remote
        }
        return Self.isVersion(stored.source, of: location) ? .nvme : .remote
    }

    /// The size of `name`'s weights as a current copy here (RAM, else NVMe) has them; nil
    /// without one.
    public func knownSize(of name: String, source: String) -> UInt64? {
        if let path = hostCopy(of: name, source: source), case .success(let status) = FileIO.status(path) {
            return status.size
        }
        guard let stored = objects.info(name), let location = try? RemoteLocation(parsing: source) else { return nil }
        if case .file(let path) = location {
            return (try? SourceFile.identity(path: path).identity) == stored.source ? stored.size : nil
        }
        return Self.isVersion(stored.source, of: location) ? stored.size : nil
    }

    /// Whether `identity` (a `RemoteObject.identity`) names a version of the object at `location`.
    static func isVersion(_ identity: String, of location: RemoteLocation) -> Bool {
        identity.hasPrefix("\(location) size=")
    }

    /// Whether `identity` names a version of `location`: of that URL or object, or for a local
    /// file (`SourceFile.identity`), of that path.
    static func isCopy(_ identity: String, of location: RemoteLocation) -> Bool {
        if case .file(let path) = location { return identity.hasPrefix("file:\(path) size=") }
        return isVersion(identity, of: location)
    }

    /// Asks an http or s3 source which version it holds now, and removes `name`'s host copy if
    /// it is of another, unless the config pins the bytes (`sha256`; a source that cannot be
    /// asked keeps it too). Returns the size the source
    /// gave; nil for a local file or a source that did not answer.
    public func checkSource(of name: String, source: String, sha256: String? = nil) async -> UInt64? {
        guard let location = try? RemoteLocation(parsing: source) else { return nil }
        if case .file = location { return nil }
        guard let current = try? await Self.describe(location, remote: remote) else { return nil }
        if running[name] == nil, let stored = host.identity(of: name), Self.isVersion(stored, of: location),
            current.identity != stored
        {
            // With a checksum the bytes are pinned: a copy that has them stays (`pinnedCopy`).
            if let sha256, let path = host.path(of: name, identity: stored),
                await hasPinned(name, stored, sha256, hash: { try? Self.sha256(ofFile: path) })
            {
                logger.warning("\(Self.keptMessage(name, current: current.identity, copy: stored))")
            } else {
                logger.notice("the source of \(name) changed (\(current.identity), the copy in RAM is of \(stored)): removing that copy")
                host.remove(name)
            }
        }
        return current.size
    }

    // MARK: The work

    private func run(_ job: Job) async throws -> StageResult {
        let started = ContinuousClock.now
        let request = job.request
        do {
            let result = try await transfer(job, started: started)
            job.status.withLock {
                $0.state = .done
                $0.origin = result.origin
                $0.path = result.path
                $0.bytesDone = result.bytes
                $0.bytesTotal = result.bytes
                $0.elapsedSeconds = result.seconds
                $0.secondsLeft = 0
            }
            if result.seconds > 0 {
                logger.info("staged \(request.name) to \(request.destination.rawValue) from \(result.origin.rawValue): \(result.bytes) bytes in \(String(format: "%.2f", result.seconds)) s (\(String(format: "%.0f", Double(result.bytes) / result.seconds / 1_048_576)) MiB/s)")
            } else {
                logger.debug("\(request.name) already in \(request.destination.rawValue) (\(result.identity))")
            }
            retire(job)
            return result
        } catch {
            let cancelled = error is CancellationError || Task.isCancelled
            job.status.withLock {
                $0.state = cancelled ? .cancelled : .failed
                $0.error = cancelled ? "cancelled" : "\(error)"
                $0.elapsedSeconds = (ContinuousClock.now - started).seconds
                $0.secondsLeft = nil   // (no time is left to a staging that ended)
                $0.bytesPerSecond = 0
            }
            if cancelled {
                logger.notice("staging \(request.name) cancelled")
            } else if request.destination == .host, (error as? IOError)?.isNoSpace == true {
                // A full RAM-backed directory is the caller's to handle (the daemon then runs the
                // model from the source file or a copy on disk, and says so): not an error here.
                logger.warning("staging \(request.name) from \(request.source) found no room: \(error)")
            } else {
                logger.error("staging \(request.name) from \(request.source) failed: \(error)")
            }
            retire(job)
            throw cancelled ? CancellationError() : error
        }
    }

    private func retire(_ job: Job) {
        if running[job.request.name] === job { running[job.request.name] = nil }
        finished[job.request.name] = job.status.withLock { $0 }
    }

    private func transfer(_ job: Job, started: ContinuousClock.Instant) async throws -> StageResult {
        let request = job.request
        let location = try RemoteLocation(parsing: request.source)
        let files: StagedFiles? = switch request.destination {
        case .host: host
        case .disk: disk
        case .nvme: nil
        }
        // Which version is current at the source? An unreachable source does not stop a start
        // from a copy already here.
        let current: (identity: String, size: UInt64, object: RemoteObject?)
        do {
            current = try await Self.describe(location, remote: remote)
        } catch {
            // Only a copy of this source will do (an earlier version of it, as the source cannot
            // say which is current), and with a checksum, one that meets it.
            if request.sha256 == nil, let files, let behind = writesBehind[request.name], Self.isCopy(behind.identity, of: location),
                let path = files.path(of: request.name, identity: behind.identity)
            {
                logger.warning("source of \(request.name) unreachable (\(error)); using the copy staged from \(behind.identity)")
                return StageResult(path: path, origin: .host, bytes: behind.size, seconds: 0, identity: behind.identity)
            }
            try await writtenBehind(request.name)
            guard let stored = objects.info(request.name), Self.isCopy(stored.source, of: location) else { throw error }
            if let expected = request.sha256 {
                let actual = try await Self.sha256(of: stored, in: objects)
                guard actual == expected else {
                    throw StageError(name: request.name, message: "\(location) cannot be reached (\(error)), and the copy on NVMe "
                        + "has SHA-256 \(actual) where the config expects \(expected), so it is not used", isChecksumMismatch: true)
                }
            }
            if let files, let path = files.path(of: request.name, identity: stored.source) {
                logger.warning("source of \(request.name) unreachable (\(error)); using the copy staged from \(stored.source)")
                return StageResult(path: path, origin: .host, bytes: stored.size, seconds: 0, identity: stored.source)
            }
            logger.warning("source of \(request.name) unreachable (\(error)); using the NVMe copy of \(stored.source)")
            return try await fromNVMe(job, stored, into: files, started: started)
        }

        if let files, let path = files.path(of: request.name, identity: current.identity) {
            // (With a checksum, only a copy that has it: one staged under another, or none, is
            // not what the config asks for, whatever version of the source it is.)
            if let expected = request.sha256,
                !(await hasPinned(request.name, current.identity, expected, hash: { try? Self.sha256(ofFile: path) }))
            {
                logger.warning("the copy of \(request.name) in \(request.destination.rawValue) does not have the configured SHA-256 \(expected): not used")
            } else {
                return StageResult(path: path, origin: .host, bytes: current.size, seconds: 0, identity: current.identity)
            }
        }
        if let expected = request.sha256,
            let kept = try await pinnedCopy(job, of: location, expected: expected, current: current.identity, into: files,
                                            started: started)
        {
            return kept
        }
        // Another model of the same weights has them here: shared, not fetched again. (Not for a
        // request with a checksum: that copy may not have been verified against one.)
        if let files, request.sha256 == nil, let path = files.link(request.name, toCopyOf: current.identity) {
            logger.info("\(request.name): the same weights are already in \(request.destination.rawValue) for another model; linked")
            return StageResult(path: path, origin: .host, bytes: current.size, seconds: 0, identity: current.identity)
        }
        // Anything else may need the NVMe copy, or would write one: it waits for one being
        // written behind (an NVMe-only or disk staging of a model just staged to RAM is answered
        // by that write, not by a second transfer).
        try await writtenBehind(request.name)
        let stored = objects.info(request.name)
        // (Copied into a file, the copy is hashed there, from RAM or the page cache, rather than
        // the NVMe copy read twice.)
        if let stored, stored.source == current.identity, files != nil ? true : try await nvmeCopyMeets(request, stored) {
            do {
                let result = try await fromNVMe(job, stored, into: files, started: started)
                guard let expected = request.sha256, let files, let path = result.path else { return result }
                if await hasPinned(request.name, stored.source, expected, hash: { try? Self.sha256(ofFile: path) }) { return result }
                logger.warning("the NVMe copy of \(request.name) does not have the configured SHA-256 \(expected): not used")
                files.remove(request.name)
            } catch let error as ObjectError {
                guard case .damaged = error else { throw error }
                // A chunk went (reclaimed under the budget, or damaged) after the copy was
                // listed: the store dropped it; the source is there, so fetch it again.
                logger.warning("the NVMe copy of \(request.name) is no longer whole (\(error)); fetching it from \(location) again")
            }
        }
        return try await fromSource(job, location, current: current, into: files, started: started)
    }

    /// The source holds another version than the copies here, and the config pins the bytes
    /// (`sha256`): a copy of an earlier version of this source that has them still serves (the
    /// new version would fail the check, and a model pinned to its weights would stop working
    /// for a change it refuses). The RAM copy, else the NVMe one, each hashed first; nil when
    /// neither has them.
    private func pinnedCopy(
        _ job: Job, of location: RemoteLocation, expected: String, current: String, into files: StagedFiles?,
        started: ContinuousClock.Instant
    ) async throws -> StageResult? {
        let name = job.request.name
        func kept(_ identity: String) { logger.warning("\(Self.keptMessage(name, current: current, copy: identity))") }
        if let files, let stored = files.identity(of: name), stored != current, Self.isCopy(stored, of: location),
            let path = files.path(of: name, identity: stored),
            await hasPinned(name, stored, expected, hash: { try? Self.sha256(ofFile: path) })
        {
            kept(stored)
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
            return StageResult(path: path, origin: .host, bytes: size, seconds: 0, identity: stored)
        }
        try await writtenBehind(name)
        guard let stored = objects.info(name), stored.source != current, Self.isCopy(stored.source, of: location) else { return nil }
        do {
            guard try await hasPinned(name, stored.source, expected, hash: { try await Self.sha256(of: stored, in: self.objects) })
            else { return nil }
            kept(stored.source)
            return try await fromNVMe(job, stored, into: files, started: started)
        } catch let error as ObjectError {
            guard case .damaged = error else { throw error }
            // (The source is asked instead, and its bytes checked: a kept copy that broke must
            // not fail every staging until a restart.)
            logger.warning("the NVMe copy of \(name) is no longer whole (\(error)); fetching it from \(location) again")
            return nil
        }
    }

    /// Whether the NVMe copy may serve `request`: without a checksum, yes; with one, if its
    /// bytes have it (hashed once per version and checksum). A copy found damaged on the way
    /// is no copy (the source is asked instead).
    private func nvmeCopyMeets(_ request: StageRequest, _ stored: ObjectInfo) async throws -> Bool {
        guard let expected = request.sha256 else { return true }
        do {
            if try await hasPinned(request.name, stored.source, expected, hash: { try await Self.sha256(of: stored, in: self.objects) }) {
                return true
            }
            logger.warning("the NVMe copy of \(request.name) does not have the configured SHA-256 \(expected): not used")
            return false
        } catch let error as ObjectError {
            guard case .damaged = error else { throw error }
            logger.warning("the NVMe copy of \(request.name) is no longer whole (\(error)); fetching it again")
            return false
        }
    }

    /// Whether `name`'s copy of version `identity` has the SHA-256 `expected`, as `hash` finds
    /// (nil: unreadable); hashed once per version and checksum (`pinnedVerified`).
    private func hasPinned(
        _ name: String, _ identity: String, _ expected: String, hash: () async throws -> String?
    ) async rethrows -> Bool {
        if let known = pinnedVerified[name], known == (identity, expected) { return true }
        guard try await hash() == expected else { return false }
        pinnedVerified[name] = (identity, expected)
        return true
    }

    /// SHA-256 of an object in the NVMe store, its chunks as stored.
    static func sha256(of info: ObjectInfo, in objects: ObjectStore) async throws -> String {
        var digest = SHA256Digest()
        try await objects.forEachChunk(of: info) { digest.update($0) }
        return digest.finalize()
    }

    static func keptMessage(_ name: String, current: String, copy: String) -> String {
        "the source of \(name) changed (now \(current)); the copy of \(copy) has the configured SHA-256, "
            + "so it is kept and served (set the new sha256 to take the new version)"
    }

    /// SHA-256 of a file, read in 8 MiB pieces.
    static func sha256(ofFile path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw POSIXError(.ENOENT) }
        defer { try? handle.close() }
        var digest = SHA256Digest()
        while let piece = try handle.read(upToCount: 8 << 20), !piece.isEmpty {
            piece.withUnsafeBytes { digest.update($0) }
        }
        return digest.finalize()
    }

    private func fromNVMe(_ job: Job, _ stored: ObjectInfo, into files: StagedFiles?, started: ContinuousClock.Instant)
        async throws -> StageResult
    {
        guard let files else {
            // NVMe only, and the NVMe copy is current: nothing to move.
            return StageResult(path: nil, origin: .host, bytes: stored.size, seconds: 0, identity: stored.source)
        }
        job.status.withLock { $0.origin = .nvme; $0.bytesTotal = stored.size }
        let writer = try files.begin(stored.name, fileName: Self.fileName(stored.source), size: stored.size)
        defer { writer.abandon() }
        let engine = objects.log.engine
        try await objects.read(stored.name, progress: tracker(job)) { offset, buffer, range in
            try await writer.write(from: buffer, range: range, at: offset, engine: engine)
        }
        let path = try writer.commit(identity: stored.source)
        return StageResult(path: path, origin: .nvme, bytes: stored.size, seconds: (ContinuousClock.now - started).seconds,
                           identity: stored.source)
    }

    private func fromSource(
        _ job: Job, _ location: RemoteLocation, current: (identity: String, size: UInt64, object: RemoteObject?),
        into files: StagedFiles?, started: ContinuousClock.Instant
    ) async throws -> StageResult {
        let request = job.request
        job.status.withLock { $0.origin = .remote; $0.bytesTotal = current.size }
        let writer = try files?.begin(request.name, fileName: Self.fileName(location.description), size: current.size)
        defer { writer?.abandon() }
        let verify: @Sendable (ObjectInfo, PrefixDigest?) async throws -> Void = { [objects] info, digest in
            guard let expected = request.sha256 else { return }
            let actual: String
            if let digest {
                actual = try await digest.finish()   // the RAM (or disk) copy, hashed as it filled
            } else {   // NVMe only: the chunks as stored
                actual = try await Self.sha256(of: info, in: objects)
            }
            guard actual == expected else {
                throw StageError(name: request.name, message: "\(location) has SHA-256 \(actual), the config expects \(expected); nothing was staged",
                                 isChecksumMismatch: true)
            }
        }
        switch (location, current.object) {
        case (.file(let path), _):
            let engine = objects.log.engine
            let chunkSize = ObjectStore.defaultChunkSize
            var toRAM: (@Sendable (UInt64, IOBuffer, Range<Int>) async throws -> Void)?
            var digest: PrefixDigest?
            let inRAM = WrittenBytes()
            if let writer {
                // With a checksum to meet, the RAM copy is hashed while it fills, behind the import.
                let hashing = try PrefixDigest.checking(request, writer: writer, size: current.size, chunkSize: chunkSize)
                digest = hashing
                toRAM = { offset, buffer, range in
                    try await writer.write(from: buffer, range: range, at: offset, engine: engine)
                    inRAM.add(range.count)
                    hashing?.completed(Int(offset / UInt64(chunkSize)))
                }
            }
            defer { digest?.cancel() }
            do {
                try await objects.importFile(request.name, path: path, chunkSize: chunkSize, bufferSink: toRAM,
                                             progress: tracker(job), beforeCommit: { [digest] info in try await verify(info, digest) })
            } catch let error as ObjectError where writer != nil {
                // Too large for the NVMe tier: the RAM copy serves alone, if it is whole (the
                // import may have stopped before the end) and, with a checksum, right.
                guard case .noRoom = error, inRAM.total == current.size else { throw error }
                if let expected = request.sha256, let digest {
                    let actual = try await digest.finish()
                    guard actual == expected else {
                        throw StageError(name: request.name, message: "\(location) has SHA-256 \(actual), the config expects \(expected); nothing was staged",
                                         isChecksumMismatch: true)
                    }
                }
                logger.warning("\(error); \(request.name) is staged in RAM only")
            }
        case (_, let object?):
            if let writer {
                // RAM (or disk) first; the NVMe copy is written behind it once it is published.
                return try await toFileThenNVMe(job, object, writer: writer, identity: current.identity,
                                                chunkSize: remote.settings.chunkBytes, started: started)
            }
            let remote = self.remote
            try await objects.ingest(
                request.name, size: current.size, source: current.identity, chunkSize: remote.settings.chunkBytes,
                workers: remote.settings.parallelism,
                read: { offset, buffer, range in
                    try await remote.read(object, range: offset..<offset + UInt64(range.count), into: buffer[range])
                },
                progress: tracker(job), beforeCommit: { info in try await verify(info, nil) })
        default:
            throw StageError(name: request.name, message: "no description of \(location)")
        }
        let path = try writer?.commit(identity: current.identity)
        return StageResult(path: path, origin: .remote, bytes: current.size, seconds: (ContinuousClock.now - started).seconds,
                           identity: current.identity)
    }

    /// Progress into the job's status, and a log line every `logInterval`.
    func tracker(_ job: Job) -> @Sendable (TransferProgress) -> Void {
        let lastLog = Mutex(ContinuousClock.now)
        let interval = logInterval
        let logger = logger
        return { progress in
            let status = job.status.withLock {
                $0.bytesDone = progress.bytesDone
                $0.bytesTotal = progress.bytesTotal
                $0.bytesPerSecond = progress.bytesPerSecond
                $0.secondsLeft = progress.secondsLeft
                $0.elapsedSeconds = progress.elapsed.seconds
                return $0
            }
            let due = lastLog.withLock { last in
                guard ContinuousClock.now - last >= interval else { return false }
                last = .now
                return true
            }
            if due {
                logger.info("staging \(status.name) from \(status.origin?.rawValue ?? "?"): \(status.bytesDone >> 20)/\(status.bytesTotal >> 20) MiB, \(String(format: "%.0f", status.bytesPerSecond / 1_048_576)) MiB/s, ETA \(status.secondsLeft.map { String(format: "%.0f s", $0) } ?? "?")")
            }
        }
    }

    /// Size and version of the source as it is now.
    static func describe(_ location: RemoteLocation, remote: RemoteClient) async throws
        -> (identity: String, size: UInt64, object: RemoteObject?)
    {
        switch location {
        case .file(let path):
            let (identity, size) = try SourceFile.identity(path: path)
            return (identity, size, nil)
        default:
            let object = try await remote.stat(location)
            return (object.identity, object.size, object)
        }
    }

    /// The staged file's name: the source's last path component (runtimes look at extensions).
    static func fileName(_ source: String) -> String {
        var text = source
        if let query = text.firstIndex(where: { $0 == "?" || $0 == "#" }) { text = String(text[..<query]) }
        if text.hasPrefix("file:") { text = String(text.dropFirst(5)) }
        if let space = text.firstIndex(of: " ") { text = String(text[..<space]) }   // a file identity: "file:PATH size=…"
        let last = text.split(separator: "/").last.map(String.init) ?? ""
        return last.isEmpty || last == "." || last == ".." ? "weights.bin" : last
    }
}

extension Duration {
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }
}

/// Bytes written so far, from any task.
final class WrittenBytes: Sendable {
    private let bytes = Atomic<UInt64>(0)
    func add(_ count: Int) { bytes.add(UInt64(count), ordering: .relaxed) }
    var total: UInt64 { bytes.load(ordering: .relaxed) }
}
