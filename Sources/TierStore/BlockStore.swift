/// The block store over its tiers: host RAM first, the NVMe log below it.
///
/// - A cache put lands in the host tier only; when the host tier evicts it, it is demoted to the
///   NVMe log (policy `.demote`) or dropped (`.drop`). Demotions go through a bounded queue to a
///   single writer; when the queue is full the demotion is dropped and counted, never waited on.
/// - A durable put is written to the NVMe log and its catalog before it returns, and also kept
///   in the host tier for fast reads.
/// - A get is served from the host tier in place when it is there, else read (verified) from the
///   NVMe log and promoted into the host tier.
public final class BlockStore: Sendable {
    public enum EvictionPolicy: String, Sendable { case demote, drop }

    public struct Stats: Sendable, Equatable {
        public var host: HostTier.Stats
        public var nvme: SegmentLog.Stats
        public var demotionsDropped: Int
    }

    public enum Read: Sendable {
        /// In the host tier, borrowed in place until released.
        case host(HostBlockView)
        /// Read from NVMe (and promoted into the host tier for the next get).
        case nvme([UInt8])

        public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            switch self {
            case .host(let view): return try body(view.bytes)
            case .nvme(let bytes): return try bytes.withUnsafeBytes(body)
            }
        }
    }

    public let host: HostTier
    public let nvme: SegmentLog
    private let demotions: AsyncStream<(BlockKey, [UInt8], UInt64)>.Continuation
    /// The generation of each key's newest put; a demotion carries the generation it evicted
    /// and is skipped if a newer put came since.
    private let generations = Generations()
    private let dropped = Counter()
    private let writer: Task<Void, Never>

    public init(hostBudgetBytes: Int, nvme: SegmentLog, policy: EvictionPolicy = .demote, demotionQueue: Int = 64) throws {
        let (stream, continuation) = AsyncStream<(BlockKey, [UInt8], UInt64)>.makeStream(
            bufferingPolicy: .bufferingOldest(demotionQueue))
        let dropped = self.dropped
        let generations = self.generations
        self.demotions = continuation
        self.nvme = nvme
        var demote: (@Sendable (BlockKey, [UInt8], UInt64) -> Void)?
        if policy == .demote {
            demote = { key, bytes, generation in
                if case .dropped = continuation.yield((key, bytes, generation)) { dropped.add() }
            }
        }
        self.host = try HostTier(budgetBytes: hostBudgetBytes, demote: demote)
        writer = Task {
            for await (key, bytes, generation) in stream {
                // Checked on the log's executor right before the write gets its sequence
                // number, so a newer put of the key always ends up on top.
                try? await nvme.put(key, bytes, durable: false) { generations.current(key) != generation }
            }
        }
    }

    public func put(_ key: BlockKey, _ bytes: [UInt8], durable: Bool) async throws {
        let generation = generations.bump(key)
        if durable { try await nvme.put(key, bytes, durable: true) }
        _ = bytes.withUnsafeBytes { host.put(key, $0, tag: generation) }
    }

    public func get(_ key: BlockKey) async throws -> Read? {
        if let view = host.borrow(key) { return .host(view) }
        guard let bytes = try await nvme.get(key) else { return nil }
        _ = bytes.withUnsafeBytes { host.put(key, $0, tag: generations.current(key)) }
        return .nvme(bytes)
    }

    public func stats() async -> Stats {
        Stats(host: host.stats, nvme: await nvme.stats, demotionsDropped: dropped.value)
    }

    /// Publishes both tiers' figures (see `TierMetrics`).
    public func report(to metrics: TierMetrics) async {
        metrics.report(host: host.stats)
        metrics.report(nvme: await nvme.stats, budgetBytes: nvme.configuration.budgetBytes)
    }

    /// Stops taking demotions and waits until the queued ones are written.
    public func close() async {
        demotions.finish()
        await writer.value
    }

    final class Generations: Sendable {
        private let state = Mutex<(next: UInt64, byKey: [BlockKey: UInt64])>((1, [:]))
        func bump(_ key: BlockKey) -> UInt64 {
            state.withLock { state in
                defer { state.next += 1 }
                state.byKey[key] = state.next
                return state.next
            }
        }
        func current(_ key: BlockKey) -> UInt64 { state.withLock { $0.byKey[key] ?? 0 } }
    }

    final class Counter: Sendable {
        private let count = Mutex(0)
        func add() { count.withLock { $0 += 1 } }
        var value: Int { count.withLock { $0 } }
    }
}

import Synchronization
