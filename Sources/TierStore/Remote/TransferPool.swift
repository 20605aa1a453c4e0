import Foundation

/// Dedicated threads for blocking transfers. curl's easy interface blocks its thread for the
/// whole exchange; on Swift's cooperative pool (two threads on small machines) that would stall
/// every other task. Each thread keeps one easy handle, so its connections are reused.
final class TransferPool: @unchecked Sendable {  // `jobs` and `stopped` are guarded by `condition`
    typealias Job = @Sendable (CurlEasy) -> Void

    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var stopped = false

    init(threads: Int, name: String = "strata-remote") {
        precondition(threads > 0)
        for index in 0..<threads {
            let thread = Thread { [self] in work() }
            thread.name = "\(name)-\(index)"
            thread.start()
        }
    }

    /// Lets the threads finish what is queued and exit.
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    /// Runs `body` on a transfer thread and resumes the caller with its result.
    func run<T: Sendable>(_ body: @escaping @Sendable (CurlEasy) -> T) async -> T {
        await withCheckedContinuation { continuation in
            condition.lock()
            precondition(!stopped, "transfer submitted after the RemoteClient was released")
            // Unbounded only in form: callers hold at most `parallelism` transfers each in flight.
            jobs.append { easy in continuation.resume(returning: body(easy)) }
            condition.signal()
            condition.unlock()
        }
    }

    private func work() {
        let easy = CurlEasy()
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job(easy)
        }
    }
}
