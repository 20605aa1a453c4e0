@testable import StrataDaemon
import Synchronization
import Testing

/// Which durable writes of a key may run at once (`KeyWriteLocks`): plain SETs together, a write
/// that reads the key first (SET NX/XX/KEEPTTL, EXPIRE) alone, waiting writes let in in order.
struct KeyWriteLocksTests {
    /// The order in which writes were let in.
    final class Log: Sendable {
        private let names = Mutex<[String]>([])
        func append(_ name: String) { names.withLock { $0.append(name) } }
        var entries: [String] { names.withLock { $0 } }
    }

    let locks = KeyWriteLocks()
    let key = KeyWriteLocks.Key(namespace: "", name: Array("k".utf8))

    /// Waits (without sleeping on a guess) until the key's holders and waiters are as given.
    func until(_ shared: Int, alone: Bool, waiting: Int, of key: KeyWriteLocks.Key? = nil) async throws {
        let key = key ?? self.key
        for _ in 0..<20_000 {
            if let state = locks.state(of: key), state.shared == shared, state.alone == alone, state.waiting == waiting { return }
            if locks.state(of: key) == nil, shared == 0, !alone, waiting == 0 { return }
            await Task.yield()
            try await Task.sleep(for: .microseconds(100))
        }
        Issue.record("the key never reached \(shared) shared, alone \(alone), \(waiting) waiting: \(String(describing: locks.state(of: key)))")
    }

    /// A write that holds `mode` of the key until `release` is resumed; `entered` once it holds it.
    func hold(_ mode: KeyWriteLocks.Mode, _ keys: [KeyWriteLocks.Key]? = nil, log: Log, as name: String)
        -> (task: Task<Void, Never>, release: AsyncStream<Void>.Continuation) {
        let (stream, release) = AsyncStream<Void>.makeStream()
        let task = Task { [locks, key] in
            await locks.withLocks(keys ?? [key], mode) {
                log.append(name)
                for await _ in stream { break }
            }
        }
        return (task, release)
    }

    func finish(_ write: (task: Task<Void, Never>, release: AsyncStream<Void>.Continuation)) async {
        write.release.yield()
        await write.task.value
    }

    @Test func plainSetsOfAKeyRunTogether() async throws {
        let log = Log()
        let writes = (0..<3).map { hold(.shared, log: log, as: "set\($0)") }
        try await until(3, alone: false, waiting: 0)
        #expect(Set(log.entries) == ["set0", "set1", "set2"])
        for write in writes { await finish(write) }
        #expect(locks.state(of: key) == nil)
    }

    @Test func aWriteThatReadsTheKeyWaitsForPlainSetsUnderWayAndHoldsBackLaterOnes() async throws {
        let log = Log()
        let first = hold(.shared, log: log, as: "set1")
        try await until(1, alone: false, waiting: 0)
        let nx = hold(.alone, log: log, as: "nx")
        try await until(1, alone: false, waiting: 1)
        let later = hold(.shared, log: log, as: "set2")   // came after the NX: waits behind it
        try await until(1, alone: false, waiting: 2)
        #expect(log.entries == ["set1"])
        await finish(first)
        try await until(0, alone: true, waiting: 1)
        #expect(log.entries == ["set1", "nx"])
        await finish(nx)
        try await until(1, alone: false, waiting: 0)
        #expect(log.entries == ["set1", "nx", "set2"])
        await finish(later)
        #expect(locks.state(of: key) == nil)
    }

    @Test func writesThatReadTheKeyGoOneAtATimeInTheOrderTheyCame() async throws {
        let log = Log()
        let a = hold(.alone, log: log, as: "a")
        try await until(0, alone: true, waiting: 0)
        let b = hold(.alone, log: log, as: "b")
        try await until(0, alone: true, waiting: 1)
        let c = hold(.shared, log: log, as: "c")
        try await until(0, alone: true, waiting: 2)
        let d = hold(.shared, log: log, as: "d")
        try await until(0, alone: true, waiting: 3)
        await finish(a)
        try await until(0, alone: true, waiting: 2)
        #expect(log.entries == ["a", "b"])
        await finish(b)
        try await until(2, alone: false, waiting: 0)   // both plain SETs, let in together
        #expect(log.entries.prefix(2) == ["a", "b"] && Set(log.entries.dropFirst(2)) == ["c", "d"])
        for write in [c, d] { await finish(write) }
        #expect(locks.state(of: key) == nil)
    }

    @Test func otherKeysAndOtherNamespacesAreNotHeldBack() async throws {
        let log = Log()
        let other = KeyWriteLocks.Key(namespace: "tenant", name: Array("k".utf8))
        let a = hold(.alone, log: log, as: "a")
        try await until(0, alone: true, waiting: 0)
        let b = hold(.alone, [other], log: log, as: "b")
        try await until(0, alone: true, waiting: 0, of: other)
        #expect(Set(log.entries) == ["a", "b"])
        for write in [a, b] { await finish(write) }
    }

    @Test func anMSETWaitsForEachOfItsKeysAndHoldsThemAll() async throws {
        let log = Log()
        let second = KeyWriteLocks.Key(namespace: "", name: Array("j".utf8))
        let nx = hold(.alone, [second], log: log, as: "nx")
        try await until(0, alone: true, waiting: 0, of: second)
        let mset = hold(.shared, [key, second, key], log: log, as: "mset")   // "j" < "k": takes j first
        try await until(0, alone: true, waiting: 1, of: second)
        #expect(locks.state(of: key) == nil)
        await finish(nx)
        try await until(1, alone: false, waiting: 0)
        try await until(1, alone: false, waiting: 0, of: second)
        #expect(log.entries == ["nx", "mset"])
        await finish(mset)
        #expect(locks.state(of: key) == nil && locks.state(of: second) == nil)
    }
}
