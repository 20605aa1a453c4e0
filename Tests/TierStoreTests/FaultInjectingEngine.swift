import Glibc
import Synchronization
@testable import TierStore

/// A fake device: a real engine underneath, with faults injected on command (writes or syncs
/// failing with a chosen errno, after a number of successful ones). With no fault armed it must
/// meet the whole engine contract, so the suites that run on it test the store, not the fake.
final class FaultInjectingEngine: IOEngine {
    struct Plan {
        var writeErrno: Int32?
        var syncErrno: Int32?
        var readErrno: Int32?
        /// Operations of the failing kind that still succeed before the fault starts.
        var after = 0
        /// Operations that fail once it has started (then they succeed again).
        var times = Int.max
    }

    let base: any IOEngine
    private let plan = Mutex(Plan())
    private let counts = Mutex((writes: 0, syncs: 0, reads: 0))

    init(base: any IOEngine) { self.base = base }

    var name: String { base.name }

    func arm(_ plan: Plan) {
        self.plan.withLock { $0 = plan }
        counts.withLock { $0 = (0, 0, 0) }
    }

    func disarm() { arm(Plan()) }

    /// While held, writes wait (before their fault or real write) until `release()`.
    private let gate = Mutex<(held: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func hold() { gate.withLock { $0.held = true } }

    func release() {
        let waiting = gate.withLock { gate in
            defer { gate = (false, []) }
            return gate.waiting
        }
        for waiter in waiting { waiter.resume() }
    }

    /// Writes waiting at the gate now.
    var writesHeld: Int { gate.withLock { $0.waiting.count } }

    private func passGate() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = gate.withLock { gate -> Bool in
                if gate.held { gate.waiting.append(continuation) }
                return gate.held
            }
            if !wait { continuation.resume() }
        }
    }

    private func fault(_ kind: KeyPath<Plan, Int32?>, count: WritableKeyPath<(writes: Int, syncs: Int, reads: Int), Int>) -> Int32? {
        let plan = self.plan.withLock { $0 }
        guard let code = plan[keyPath: kind] else { return nil }
        let n = counts.withLock { counts in
            defer { counts[keyPath: count] += 1 }
            return counts[keyPath: count]
        }
        return n >= plan.after && n - plan.after < plan.times ? code : nil
    }

    func read(fd: Int32, into buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws -> Int {
        if let code = fault(\.readErrno, count: \.reads) { throw IOError(operation: "read", errno: code, detail: "injected") }
        return try await base.read(fd: fd, into: buffer, range: range, at: offset)
    }

    /// Writes that reached the engine, since the engine was made.
    var writesStarted: Int { writeCount.withLock { $0 } }
    private let writeCount = Mutex(0)

    func write(fd: Int32, from buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws {
        writeCount.withLock { $0 += 1 }
        await passGate()
        if let code = fault(\.writeErrno, count: \.writes) { throw IOError(operation: "write", errno: code, detail: "injected") }
        try await base.write(fd: fd, from: buffer, range: range, at: offset)
    }

    /// Syncs that reached the engine (failed ones included), since the engine was made.
    var syncsStarted: Int { syncLog.withLock { $0.started } }
    /// Each sync takes at least this long (a slow device), when set.
    func slowSyncs(by delay: Duration?) { syncLog.withLock { $0.delay = delay } }
    private let syncLog = Mutex<(started: Int, delay: Duration?)>((0, nil))

    func sync(fd: Int32, dataOnly: Bool) async throws {
        let delay = syncLog.withLock { log -> Duration? in
            log.started += 1
            return log.delay
        }
        if let delay { try? await Task.sleep(for: delay) }
        if let code = fault(\.syncErrno, count: \.syncs) { throw IOError(operation: "fsync", errno: code, detail: "injected") }
        try await base.sync(fd: fd, dataOnly: dataOnly)
    }

    func shutdown() { base.shutdown() }
}

/// The engines the contract suites run against: both real ones where the kernel allows, and
/// the fault-injecting fake (over psync) with no fault armed.
enum EngineUnderTest: String, CaseIterable, Sendable, CustomStringConvertible {
    case ioUring = "io_uring"
    case psync
    case fake

    static var all: [EngineUnderTest] { IOUringEngine.isAvailable ? allCases : [.psync, .fake] }

    var description: String { rawValue }

    func make(queueDepth: Int) throws -> any IOEngine {
        switch self {
        case .ioUring: try IOEngineKind.ioUring.make(queueDepth: queueDepth)
        case .psync: try IOEngineKind.psync.make(queueDepth: queueDepth)
        case .fake: FaultInjectingEngine(base: try IOEngineKind.psync.make(queueDepth: queueDepth))
        }
    }

    /// What a failed read is called in the engine's errors.
    var readOperation: String { self == .ioUring ? "read" : "pread" }
}
