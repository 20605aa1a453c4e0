import Glibc
import Metrics
import Synchronization

/// Staging from HTTP or S3 into a RAM (or disk) file first, and the NVMe copy written behind it.
///
/// Why: on a loopback or LAN source the transfer is CPU-bound, and writing each chunk to the
/// NVMe log in the same pass made the staging slower than a plain download; the runtime waits
/// for the RAM copy only. So the transfer fills the file alone, the staging is done once the
/// file is whole and verified (SHA-256 when the config gives one), and the NVMe copy is then
/// read from that file (no second download), `writeBehindDepth` chunks at a time, in a task of
/// background priority. What stays true:
/// - nothing half-written is visible: the object is committed only when every chunk is in the
///   log and synced, and only if the file is unchanged (size, mtime) since it was
///   verified; a write cut short (cancel, error, crash) leaves no object and drops its chunks;
/// - a failed write costs only the NVMe copy: the RAM copy still serves; it is logged and
///   counted (`strata_stage_write_behind_total{result}`), and shown in the status (`nvme_copy`);
/// - a staging of the same name that may need the NVMe copy waits for the write (`transfer`);
/// - memory stays bounded: the file is the buffer, plus `writeBehindDepth` pooled chunk buffers.
extension WeightStager {
    /// Fills `writer` from `object`, verifies it, publishes it, and starts its NVMe copy.
    func toFileThenNVMe(
        _ job: Job, _ object: RemoteObject, writer: StagedFileWriter, identity: String, chunkSize: Int,
        started: ContinuousClock.Instant
    ) async throws -> StageResult {
        let request = job.request
        let remote = self.remote
        let size = object.size
        let chunk = UInt64(chunkSize)
        let count = Int((size + chunk - 1) / chunk)
        let workers = max(1, remote.settings.parallelism)
        // One buffer per range GET in flight (populated mappings, reused): the bytes land there
        // and go on to the file from the transfer thread while they are still in cache.
        let buffers = IOBufferPool(perClass: workers)
        // Progress counts bytes as they land (the tee hands each byte once, in spans of 1 MiB or
        // more), not whole chunks: on a slow link 8 chunks of 8 MiB in flight showed 0 % until
        // 64 MiB had arrived.
        let received = Mutex<UInt64>(0)
        let progress = tracker(job)
        let tee: @Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void = { offset, bytes in
            try writer.write(bytes, at: offset)
            let total = received.withLock { $0 += UInt64(bytes.count); return $0 }
            progress(TransferProgress(bytesDone: total, bytesTotal: size, elapsed: ContinuousClock.now - started))
        }
        // With a checksum to meet, the copy is hashed while it fills, behind the transfer.
        let digest = try PrefixDigest.checking(request, writer: writer, size: size, chunkSize: chunkSize)
        defer { digest?.cancel() }
        _ = try await Parallel.run(workers: workers, count: count) { index in
            let range = UInt64(index) * chunk..<min(size, UInt64(index + 1) * chunk)
            let buffer = buffers.take(atLeast: chunkSize)
            defer { buffers.give(buffer) }
            try await remote.read(object, range: range, into: buffer[0..<range.count], tee: tee)
            digest?.completed(index)
        }
        try Task.checkCancellation()
        if let expected = request.sha256, let digest {
            let actual = try await digest.finish()
            guard actual == expected else {
                throw StageError(name: request.name,
                                 message: "\(object.location) has SHA-256 \(actual), the config expects \(expected); nothing was staged",
                                 isChecksumMismatch: true)
            }
        }
        // Opened before the copy is published, so that a release of the copy cannot take the
        // bytes from under the NVMe write.
        let fd = try writer.openForReading()
        let behind: WriteBehind
        let path: String
        do {
            behind = try WriteBehind(name: request.name, identity: identity, size: size, chunkSize: chunkSize, fd: fd)
            path = try writer.commit(identity: identity)
        } catch {
            close(fd)
            throw error
        }
        startWriteBehind(behind, job: job)
        return StageResult(path: path, origin: .remote, bytes: size, seconds: (ContinuousClock.now - started).seconds,
                           identity: identity)
    }

    /// Registers `behind` and starts it. No suspension between the RAM copy's commit and here,
    /// so no other staging of the name can slip in between.
    private func startWriteBehind(_ behind: WriteBehind, job: Job) {
        precondition(writesBehind[behind.name] == nil, "two NVMe copies of \(behind.name) written at once")
        guard !writesBehindStopped else {
            // Shutting down: the log closes next. The RAM copy serves; no NVMe copy is started.
            close(behind.fd)
            job.status.withLock { $0.nvmeCopy = .cancelled }
            writtenBehindLast[behind.name] = .cancelled
            logger.notice("no NVMe copy of \(behind.name) is written: the tiers are closing")
            return
        }
        writesBehind[behind.name] = behind
        job.status.withLock { $0.nvmeCopy = .writing }
        let objects = self.objects
        let logger = self.logger
        let depth = writeBehindDepth
        let metrics = self.metrics
        let task = Task.detached(priority: .background) {
            let started = ContinuousClock.now
            let outcome: StageStatus.NVMeCopy
            do {
                try await Self.write(behind, into: objects, depth: depth)
                outcome = .committed
                let seconds = (ContinuousClock.now - started).seconds
                logger.info("wrote the NVMe copy of \(behind.name) behind its staged copy: \(behind.size) bytes in \(String(format: "%.2f", seconds)) s")
            } catch {
                if error is CancellationError || Task.isCancelled {
                    outcome = .cancelled
                    logger.notice("NVMe copy of \(behind.name) cancelled; nothing of it was kept")
                } else {
                    outcome = .failed
                    logger.error("NVMe copy of \(behind.name) failed (the staged copy still serves; nothing of the NVMe copy was kept): \(error)")
                }
            }
            close(behind.fd)
            Counter(label: "strata_stage_write_behind_total", dimensions: [("result", outcome.rawValue)], factory: metrics).increment()
            await self.writeBehindEnded(behind, outcome)
        }
        behind.task.withLock { $0 = task }
    }

    /// The object from the file's bytes, committed only if the file did not change meanwhile.
    private static func write(_ behind: WriteBehind, into objects: ObjectStore, depth: Int) async throws {
        let engine = objects.log.engine
        let fd = behind.fd
        try await objects.ingest(
            behind.name, size: behind.size, source: behind.identity, chunkSize: behind.chunkSize, workers: depth,
            read: { offset, buffer, range in
                // Buffered reads of the RAM file, straight into the log record's payload area.
                let got = try await engine.readFully(fd: fd, into: buffer, range: range, at: offset)
                guard got == range.count else {
                    throw IOError(operation: "read the staged copy of \(behind.name)", errno: EIO,
                                  detail: "it ended at \(offset + UInt64(got)), before \(behind.size)")
                }
            },
            beforeCommit: { _ in
                guard try FileFingerprint(fd: fd, what: behind.name) == behind.fingerprint else {
                    throw StageError(name: behind.name, message: "the staged copy changed while its NVMe copy was written; nothing was committed")
                }
            })
    }

    private func writeBehindEnded(_ behind: WriteBehind, _ outcome: StageStatus.NVMeCopy) {
        behind.outcome.withLock { $0 = outcome }
        if writesBehind[behind.name] === behind { writesBehind[behind.name] = nil }
        writtenBehindLast[behind.name] = outcome
        if finished[behind.name]?.nvmeCopy == .writing { finished[behind.name]?.nvmeCopy = outcome }
        behind.ended.fire()
    }

    /// Waits while an NVMe copy of `name` is being written behind (a cancelled caller stops
    /// waiting; the write goes on).
    func writtenBehind(_ name: String) async throws {
        guard let behind = writesBehind[name] else { return }
        try await behind.ended.wait()
    }

    /// Waits until the NVMe copy being written behind `name`'s staged copy (if any) has ended,
    /// and says how the last one written behind it ended; nil when none was, since the start.
    public func nvmeCopyWritten(_ name: String) async throws -> StageStatus.NVMeCopy? {
        if let behind = writesBehind[name] {
            try await behind.ended.wait()
            return behind.outcome.withLock { $0 }
        }
        return writtenBehindLast[name]
    }

    /// Stops every NVMe copy being written behind and waits until they have ended (nothing of
    /// them is kept): call before the object store's log closes.
    /// No NVMe copy starts after this call (a staging that finishes later keeps its RAM copy only).
    public func stopWritesBehind() async {
        writesBehindStopped = true
        let all = Array(writesBehind.values)
        for behind in all { behind.cancel() }
        for behind in all { try? await behind.ended.wait() }
    }
}
