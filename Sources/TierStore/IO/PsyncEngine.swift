import Foundation
import Glibc

/// pread/pwrite on a fixed pool of threads: the fallback where io_uring is not allowed, and
/// the baseline it is measured against. Same contract as `IOUringEngine`.
public final class PsyncEngine: IOEngine, @unchecked Sendable {
    public let name = "psync"
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []   // guarded by `condition`
    private var running = true            // guarded by `condition`
    private var live: Int                 // guarded by `condition`
    private let permits: AsyncSemaphore

    public init(threads: Int = 8) {
        precondition(threads > 0)
        live = threads
        permits = AsyncSemaphore(permits: threads)
        for index in 0..<threads {
            let thread = Thread { [self] in self.work() }
            thread.name = "strata-psync-\(index)"
            thread.start()
        }
    }

    public func read(fd: Int32, into buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws -> Int {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range outside the buffer")
        guard !range.isEmpty else { return 0 }
        // the closure holds `buffer`, so its memory lives until the call returns
        return try await perform("pread") { pread(fd, buffer.pointer + range.lowerBound, range.count, off_t(offset)) }
    }

    public func write(fd: Int32, from buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws {
        precondition(range.lowerBound >= 0 && range.upperBound <= buffer.count, "range outside the buffer")
        var done = 0
        while done < range.count {
            let start = done
            let n = try await perform("pwrite") {
                pwrite(fd, buffer.pointer + range.lowerBound + start, range.count - start, off_t(offset) + off_t(start))
            }
            if n == 0 { throw IOError(operation: "pwrite", errno: EIO, detail: "wrote 0 bytes") }
            done += n
        }
    }

    public func sync(fd: Int32, dataOnly: Bool) async throws {
        _ = try await perform("fsync") { Int(dataOnly ? fdatasync(fd) : fsync(fd)) }
    }

    public func shutdown() {
        condition.lock()
        running = false
        condition.broadcast()
        while live > 0 { condition.wait() }
        condition.unlock()
    }

    /// Runs `call` on a pool thread, retrying EINTR/EAGAIN, and maps failures in one place.
    private func perform(_ operation: String, _ call: @escaping () -> Int) async throws -> Int {
        await permits.acquire()
        defer { permits.release() }
        let (result, code) = await withCheckedContinuation { (continuation: CheckedContinuation<(Int, Int32), Never>) in
            enqueue {
                while true {
                    let result = call()
                    let code = result < 0 ? errno : 0
                    if case .retry = IOOutcome.classify(result, errno: code, operation: operation) { continue }
                    continuation.resume(returning: (result, code))
                    return
                }
            } orElse: {
                continuation.resume(returning: (-1, ECANCELED))
            }
        }
        switch IOOutcome.classify(result, errno: code, operation: operation) {
        case .done(let n): return n
        case .failed(let error): throw error
        case .retry: preconditionFailure("retries happen on the pool thread")
        }
    }

    private func enqueue(_ job: @escaping () -> Void, orElse rejected: () -> Void) {
        condition.lock()
        guard running else {
            condition.unlock()
            rejected()
            return
        }
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func work() {
        condition.lock()
        while true {
            if let job = jobs.first {
                jobs.removeFirst()
                condition.unlock()
                job()
                condition.lock()
            } else if !running {
                break
            } else {
                condition.wait()
            }
        }
        live -= 1
        condition.broadcast()
        condition.unlock()
    }
}
