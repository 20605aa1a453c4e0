import Glibc
import Synchronization

/// The NVMe copy of a staging that was reported complete as soon as its RAM (or disk) copy was
/// whole and verified: written afterwards from that copy's file, at lower priority, and
/// committed to the object store only when whole. Reads go through a descriptor opened before
/// the copy was published, so the copy being released meanwhile (its file unlinked) does not
/// cut the write short; the pages stay until the write ends.
final class WriteBehind: Sendable {
    let name: String
    /// The source version the bytes are of (the object's `source`).
    let identity: String
    let size: UInt64
    let chunkSize: Int
    /// Read-only descriptor of the published copy; closed by `run`'s owner when it ends.
    let fd: Int32
    /// Size and modification time of the file when its bytes were verified: the write
    /// commits only if they are the same at the end (nothing wrote to the file meanwhile).
    let fingerprint: FileFingerprint
    let ended = OneShot()
    /// How it ended (`.writing` until then).
    let outcome = Mutex(StageStatus.NVMeCopy.writing)
    let task: Mutex<Task<Void, Never>?> = Mutex(nil)

    init(name: String, identity: String, size: UInt64, chunkSize: Int, fd: Int32) throws {
        self.name = name
        self.identity = identity
        self.size = size
        self.chunkSize = chunkSize
        self.fd = fd
        fingerprint = try FileFingerprint(fd: fd, what: name)
        guard fingerprint.size == size else {
            throw IOError(operation: "write \(name) behind", errno: EIO, detail: "its copy holds \(fingerprint.size) bytes, not \(size)")
        }
    }

    func cancel() { task.withLock { $0 }?.cancel() }
}

/// What tells a file's bytes unchanged without reading them: size and modification time. (Not
/// the change time: unlinking the file, as a release of the copy does, changes that.)
struct FileFingerprint: Equatable, Sendable {
    var size: UInt64
    var times: [Int]

    init(fd: Int32, what: String) throws {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw IOError(operation: "stat the copy of \(what)", errno: errno) }
        size = UInt64(info.st_size)
        times = [info.st_mtim.tv_sec, info.st_mtim.tv_nsec]
    }
}

/// A one-time event that any number of tasks wait for. A waiter that is cancelled stops
/// waiting (with `CancellationError`) without affecting the event or the other waiters.
final class OneShot: Sendable {
    private struct State {
        var fired = false
        var next: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        /// Waiters cancelled before they could register.
        var cancelled: Set<UInt64> = []
    }

    private let state = Mutex(State())

    var hasFired: Bool { state.withLock { $0.fired } }

    func fire() {
        let waiters = state.withLock { state in
            state.fired = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async throws {
        let id = state.withLock { state in
            state.next += 1
            return state.next
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = state.withLock { state in
                    if state.fired { return .success(()) }
                    if state.cancelled.remove(id) != nil { return .failure(CancellationError()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let now { continuation.resume(with: now) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                guard let waiter = state.waiters.removeValue(forKey: id) else {
                    if !state.fired { state.cancelled.insert(id) }
                    return nil as CheckedContinuation<Void, any Error>?
                }
                return waiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
