import CStrataURing
import Foundation
import Synchronization

/// io_uring engine: one ring owned by one thread, which submits queued operations in batches
/// and resumes their callers as completions arrive. An eventfd read kept armed on the ring
/// wakes the thread when new work is queued while it waits for completions.
public final class IOUringEngine: IOEngine, @unchecked Sendable {
    public let name = "io_uring"
    public let queueDepth: Int

    // The pointers belong to a caller that is suspended until the operation completes.
    enum Operation: @unchecked Sendable {
        case read(fd: Int32, buffer: UnsafeMutableRawPointer, length: UInt32, offset: UInt64)
        case write(fd: Int32, buffer: UnsafeRawPointer, length: UInt32, offset: UInt64)
        case sync(fd: Int32, dataOnly: Bool)
    }
    private struct Job: Sendable {
        var operation: Operation
        /// Keeps the caller's memory alive until the kernel is done with it.
        var buffer: IOBuffer?
        var continuation: CheckedContinuation<Int32, Never>
    }
    private struct State {
        var queued: [Job] = []
        var inFlight: [UInt64: (IOBuffer?, CheckedContinuation<Int32, Never>)] = [:]
        var nextID: UInt64 = 1
        var running = true
    }

    // Touched only by the ring thread after init (the ring and the wake buffer).
    private let ring: OpaquePointer
    private let wakeFD: Int32
    private let wakeBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private let state = Mutex(State())
    private let permits: AsyncSemaphore
    private let stopped = DispatchSemaphore(value: 0)
    private static let wakeID: UInt64 = 0

    public static var isAvailable: Bool { strata_ring_probe() == 0 }

    public init(queueDepth: Int = 64) throws {
        precondition(queueDepth > 0 && queueDepth <= 4096, "queue depth must be 1...4096")
        self.queueDepth = queueDepth
        var ring: OpaquePointer?
        // One slot more than the queue depth for the armed wake read.
        let rc = strata_ring_create(UInt32(queueDepth + 1), &ring)
        guard rc == 0, let ring else { throw IOError(operation: "io_uring_queue_init", errno: -rc) }
        let fd = strata_eventfd_create()
        guard fd >= 0 else {
            strata_ring_destroy(ring)
            throw IOError(operation: "eventfd", errno: -fd)
        }
        self.ring = ring
        self.wakeFD = fd
        self.permits = AsyncSemaphore(permits: queueDepth)
        let thread = Thread { [self] in self.run() }
        thread.name = "strata-io_uring"
        thread.start()
    }

    deinit {
        wakeBuffer.deallocate()
    }

    public func read(fd: Int32, into buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws -> Int {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range outside the buffer")
        guard !range.isEmpty else { return 0 }
        await permits.acquire()
        defer { permits.release() }
        while true {
            let res = await submit(
                .read(fd: fd, buffer: buffer.pointer + range.lowerBound, length: UInt32(range.count), offset: offset),
                holding: buffer)
            switch IOOutcome.classifyCompletion(res, operation: "read") {
            case .done(let n): return n
            case .retry: continue
            case .failed(let error): throw error
            }
        }
    }

    public func write(fd: Int32, from buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range outside the buffer")
        await permits.acquire()
        defer { permits.release() }
        var done = 0
        while done < range.count {
            let res = await submit(
                .write(fd: fd, buffer: buffer.pointer + range.lowerBound + done, length: UInt32(range.count - done),
                       offset: offset + UInt64(done)),
                holding: buffer)
            switch IOOutcome.classifyCompletion(res, operation: "write") {
            case .done(0): throw IOError(operation: "write", errno: EIO, detail: "wrote 0 bytes")
            case .done(let n): done += n
            case .retry: continue
            case .failed(let error): throw error
            }
        }
    }

    public func sync(fd: Int32, dataOnly: Bool) async throws {
        await permits.acquire()
        defer { permits.release() }
        while true {
            switch IOOutcome.classifyCompletion(await submit(.sync(fd: fd, dataOnly: dataOnly), holding: nil), operation: "fsync") {
            case .done: return
            case .retry: continue
            case .failed(let error): throw error
            }
        }
    }

    public func shutdown() {
        let first = state.withLock { state -> Bool in
            defer { state.running = false }
            return state.running
        }
        guard first else { return }
        wake()
        stopped.wait()
        close(wakeFD)
        strata_ring_destroy(ring)
    }

    private func submit(_ operation: Operation, holding buffer: IOBuffer?) async -> Int32 {
        await withCheckedContinuation { continuation in
            let accepted = state.withLock { state -> Bool in
                guard state.running else { return false }
                state.queued.append(Job(operation: operation, buffer: buffer, continuation: continuation))
                return true
            }
            if accepted { wake() } else { continuation.resume(returning: -ECANCELED) }
        }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    // MARK: The ring thread

    private func run() {
        armWake()
        var userData = [UInt64](repeating: 0, count: 128)
        var results = [Int32](repeating: 0, count: 128)
        while true {
            let (jobs, finished) = state.withLock { state -> ([Job], Bool) in
                let room = Int(strata_ring_sq_space(ring))
                let take = min(room, state.queued.count)
                let jobs = Array(state.queued.prefix(take))
                state.queued.removeFirst(take)
                return (jobs, !state.running && state.queued.isEmpty && state.inFlight.isEmpty)
            }
            if finished { break }
            for job in jobs { prepare(job) }
            let rc = strata_ring_submit_and_wait(ring, 1)
            if rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN {
                fatalError("io_uring_submit_and_wait: \(String(cString: strerror(-rc)))")
            }
            while true {
                let count = Int(strata_ring_reap(ring, &userData, &results, UInt32(userData.count)))
                if count == 0 { break }
                for i in 0..<count {
                    if userData[i] == Self.wakeID {
                        armWake()
                    } else {
                        let entry = state.withLock { $0.inFlight.removeValue(forKey: userData[i]) }
                        entry?.1.resume(returning: results[i])
                    }
                }
            }
        }
        stopped.signal()
    }

    private func armWake() {
        let rc = strata_ring_prep_read(ring, wakeFD, wakeBuffer, 8, 0, Self.wakeID)
        precondition(rc == 0, "the ring always keeps a slot for the wake read")
    }

    private func prepare(_ job: Job) {
        let id = state.withLock { state -> UInt64 in
            let id = state.nextID
            state.nextID += 1
            state.inFlight[id] = (job.buffer, job.continuation)
            return id
        }
        let rc: Int32
        switch job.operation {
        case .read(let fd, let buffer, let length, let offset):
            rc = strata_ring_prep_read(ring, fd, buffer, length, offset, id)
        case .write(let fd, let buffer, let length, let offset):
            rc = strata_ring_prep_write(ring, fd, buffer, length, offset, id)
        case .sync(let fd, let dataOnly):
            rc = strata_ring_prep_fsync(ring, fd, dataOnly ? 1 : 0, id)
        }
        precondition(rc == 0, "prepared only as many operations as there were free slots")
    }
}
