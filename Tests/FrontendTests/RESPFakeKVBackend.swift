#if canImport(RESP)
import RESP
#else
import Frontend
#endif
import NIOCore
import Synchronization

/// An in-memory `KVBackend` for tests, with a manual clock (`advance(milliseconds:)`).
/// SCAN walks keys in insertion order; the cursor is the next insertion sequence number.
/// GET and SET take the non-waiting fast path except for keys that start with `slow:`, so tests
/// see both paths and their mix in one pipeline.
final class FakeKVBackend: KVBackend {
    private struct Entry {
        var value: ByteBuffer
        var deadline: KVTimestamp?
        var sequence: UInt64
    }

    private struct State {
        var clock: Int64
        var namespaces: [String: [ByteBuffer: Entry]] = [:]
        var nextSequence: UInt64 = 1

        /// The live entry of `key`, dropping it if it has expired.
        mutating func live(_ ns: String, _ key: ByteBuffer) -> Entry? {
            guard let entry = namespaces[ns]?[key] else { return nil }
            if let deadline = entry.deadline, deadline.unixMilliseconds <= clock {
                namespaces[ns]?[key] = nil
                return nil
            }
            return entry
        }

        mutating func purge(_ ns: String) {
            namespaces[ns] = namespaces[ns]?.filter { $0.value.deadline.map { $0.unixMilliseconds > clock } ?? true }
        }
    }

    private let state: Mutex<State>

    init(startMilliseconds: Int64 = 1_700_000_000_000) {
        state = Mutex(State(clock: startMilliseconds))
    }

    func advance(milliseconds: Int64) {
        state.withLock { $0.clock += milliseconds }
    }

    /// Keys stored per namespace (expired ones included until touched), for isolation checks.
    func rawCount(namespace: String) -> Int {
        state.withLock { $0.namespaces[namespace]?.count ?? 0 }
    }

    func now() -> KVTimestamp {
        state.withLock { KVTimestamp(unixMilliseconds: $0.clock) }
    }

    private(set) var immediateAnswers: Int {
        get { immediate.withLock { $0 } }
        set { immediate.withLock { $0 = newValue } }
    }
    private let immediate = Mutex(0)

    private static func isSlow(_ key: ByteBuffer) -> Bool { key.readableBytesView.starts(with: "slow:".utf8) }

    func getImmediately(namespace: String, key: ByteBuffer) throws -> KVImmediate<ByteBuffer?> {
        guard !Self.isSlow(key) else { return .wait }
        immediateAnswers += 1
        return .done(read(namespace, key))
    }

    func getImmediately(namespace: String, keys: [ByteBuffer], maxBytes: Int) throws -> KVImmediate<[ByteBuffer?]> {
        guard !keys.contains(where: Self.isSlow) else { return .wait }
        let values = keys.map { read(namespace, $0) }
        guard values.reduce(0, { $0 + ($1?.readableBytes ?? 0) }) <= maxBytes else { return .wait }
        immediateAnswers += 1
        return .done(values)
    }

    func existsImmediately(namespace: String, keys: [ByteBuffer]) -> KVImmediate<Int> {
        guard !keys.contains(where: Self.isSlow) else { return .wait }
        immediateAnswers += 1
        return .done(state.withLock { state in keys.filter { state.live(namespace, $0) != nil }.count })
    }

    func setImmediately(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> {
        guard !Self.isSlow(key) else { return .wait }
        immediateAnswers += 1
        return .done(write(namespace, key, value, condition, expiry))
    }

    /// Staged SET values (`stageValue`): how many are neither stored nor discarded, and how many
    /// were stored through the staged fast path.
    struct StagingCounts: Equatable { var outstanding = 0, stored = 0 }
    private let staging = Mutex(StagingCounts())
    var stagingCounts: StagingCounts { staging.withLock { $0 } }
    /// Bytes of staged values written by `receive` (read straight from the socket into them),
    /// not copied in by `append`.
    private let received = Atomic<Int>(0)
    var receivedBytes: Int { received.load(ordering: .relaxed) }

    /// A fake staged value: an array filled as bytes come, counted while held, offering room one
    /// part at a time.
    final class FakeStagedValue: KVStagedValue {
        let length: Int
        private let owner: FakeKVBackend
        private let state = Mutex<(bytes: [UInt8], held: Bool)>(([], true))
        init(length: Int, owner: FakeKVBackend) {
            self.length = length
            self.owner = owner
            owner.staging.withLock { $0.outstanding += 1 }
        }
        deinit { discard() }
        var isComplete: Bool { state.withLock { $0.held && $0.bytes.count == length } }
        func append(_ bytes: UnsafeRawBufferPointer) -> Int {
            state.withLock { state in
                guard state.held else { return 0 }
                let count = min(bytes.count, length - state.bytes.count)
                state.bytes += bytes[..<count]
                return count
            }
        }
        /// Room is offered up to the end of the current part, as a store keeping the value in parts
        /// of `partBytes` does (an odd size, so parts and reads do not line up).
        static let partBytes = (1 << 20) + 17
        func receive(_ fill: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
            state.withLock { state in
                guard state.held, state.bytes.count < length else { return 0 }
                let partEnd = min(length, (state.bytes.count / Self.partBytes + 1) * Self.partBytes)
                let room = UnsafeMutableRawBufferPointer.allocate(byteCount: partEnd - state.bytes.count, alignment: 1)
                defer { room.deallocate() }
                let written = fill(room)
                if written > 0 {
                    state.bytes += room[..<min(written, room.count)]
                    owner.received.add(written, ordering: .relaxed)
                }
                return written
            }
        }
        func materialize() -> ByteBuffer? { state.withLock { $0.held ? ByteBuffer(bytes: $0.bytes) : nil } }
        /// The bytes, given up: as a store would take them.
        func take() -> ByteBuffer? {
            let taken = state.withLock { state -> [UInt8]? in
                guard state.held, state.bytes.count == length else { return nil }
                state.held = false
                return state.bytes
            }
            guard let taken else { return nil }
            owner.staging.withLock { $0.outstanding -= 1; $0.stored += 1 }
            return ByteBuffer(bytes: taken)
        }
        func discard() {
            let was = state.withLock { state -> Bool in
                defer { state.held = false }
                return state.held
            }
            if was { owner.staging.withLock { $0.outstanding -= 1 } }
        }
    }

    func stageValue(length: Int) -> (any KVStagedValue)? {
        FakeStagedValue(length: length, owner: self)
    }

    /// Keys starting with `slow:` wait here too, so the handler's fallback (materialize, then
    /// the ordinary `set`) is exercised.
    func setImmediately(
        namespace: String, key: ByteBuffer, staged: any KVStagedValue, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> {
        guard !Self.isSlow(key), let staged = staged as? FakeStagedValue, let value = staged.take() else { return .wait }
        immediateAnswers += 1
        return .done(write(namespace, key, value, condition, expiry))
    }

    func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer? {
        read(namespace, key)
    }

    func set(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        write(namespace, key, value, condition, expiry)
    }

    private func read(_ namespace: String, _ key: ByteBuffer) -> ByteBuffer? {
        state.withLock { $0.live(namespace, key)?.value }
    }

    private func write(
        _ namespace: String, _ key: ByteBuffer, _ value: ByteBuffer, _ condition: KVSetCondition, _ expiry: KVExpiry
    ) -> Bool {
        state.withLock { state in
            let old = state.live(namespace, key)
            switch condition {
            case .always: break
            case .ifAbsent: if old != nil { return false }
            case .ifPresent: if old == nil { return false }
            }
            let deadline: KVTimestamp?
            switch expiry {
            case .never: deadline = nil
            case .keep: deadline = old?.deadline
            case .at(let at): deadline = at
            }
            let sequence = old?.sequence ?? state.nextSequence
            if old == nil { state.nextSequence += 1 }
            // Copy: the key and value are slices of the connection's receive buffer.
            let entry = Entry(value: ByteBuffer(bytes: value.readableBytesView), deadline: deadline, sequence: sequence)
            state.namespaces[namespace, default: [:]][ByteBuffer(bytes: key.readableBytesView)] = entry
            if let deadline, deadline.unixMilliseconds <= state.clock {
                state.namespaces[namespace]?[key] = nil
            }
            return true
        }
    }

    /// The number of pairs of each `set(namespace:pairs:)` call, in order.
    var pairSets: [Int] { pairCalls.withLock { $0 } }
    private let pairCalls = Mutex<[Int]>([])

    /// Writes all pairs or, if a key starts with `full:`, none (out of space).
    func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws {
        pairCalls.withLock { $0.append(pairs.count) }
        if pairs.contains(where: { String(buffer: $0.key).hasPrefix("full:") }) {
            throw KVBackendError(.outOfSpace, "no room for \(pairs.count) values")
        }
        for (key, value) in pairs {
            _ = try await set(namespace: namespace, key: key, value: value, condition: .always, expiry: .never)
        }
    }

    func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        state.withLock { state in
            var removed = 0
            for key in keys where state.live(namespace, key) != nil {
                state.namespaces[namespace]?[key] = nil
                removed += 1
            }
            return removed
        }
    }

    func exists(namespace: String, keys: [ByteBuffer]) async throws -> Int {
        state.withLock { state in keys.filter { state.live(namespace, $0) != nil }.count }
    }

    func timeToLive(namespace: String, key: ByteBuffer) async throws -> KVTimeToLive {
        state.withLock { state in
            guard let entry = state.live(namespace, key) else { return .missing }
            guard let deadline = entry.deadline else { return .persistent }
            return .milliseconds(deadline.unixMilliseconds - state.clock)
        }
    }

    func expire(namespace: String, key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool {
        state.withLock { state in
            guard let entry = state.live(namespace, key) else { return false }
            guard let deadline else {
                if entry.deadline == nil { return false }
                state.namespaces[namespace]?[key]?.deadline = nil
                return true
            }
            if deadline.unixMilliseconds <= state.clock {
                state.namespaces[namespace]?[key] = nil
            } else {
                state.namespaces[namespace]?[key]?.deadline = deadline
            }
            return true
        }
    }

    func keyCount(namespace: String) async throws -> KVKeyCount {
        state.withLock { state in
            state.purge(namespace)
            let entries = state.namespaces[namespace] ?? [:]
            return KVKeyCount(keys: entries.count, expiring: entries.values.filter { $0.deadline != nil }.count)
        }
    }

    func flush(namespace: String) async throws {
        state.withLock { $0.namespaces[namespace] = nil }
    }

    func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage {
        state.withLock { state in
            state.purge(namespace)
            let ordered = (state.namespaces[namespace] ?? [:])
                .filter { $0.value.sequence >= cursor }
                .sorted { $0.value.sequence < $1.value.sequence }
            let page = ordered.prefix(count)
            let next = ordered.count > count ? page.last!.value.sequence + 1 : 0
            let keys = page.map(\.key).filter { key in
                match.map { RESPGlob.matches(pattern: $0.readableBytesView, key.readableBytesView) } ?? true
            }
            return KVScanPage(cursor: next, keys: keys)
        }
    }

    func info() async -> [(section: String, fields: [(String, String)])] {
        [("memory", [("used_memory", "1234")]), ("strata", [("tiers", "fake")])]
    }
}
