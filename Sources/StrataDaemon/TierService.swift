import Foundation
import Frontend
import Logging
import ServiceLifecycle
import Synchronization
import TierStore

/// Runs the storage tiers: opens the NVMe log (recovering its blocks) and the host arena at
/// start, in the background so the gateway is up at once; publishes per-tier metrics every
/// few seconds; takes run-time policy changes from `/admin/tiers`; closes the log cleanly on
/// shutdown (queued demotions written, catalog committed).
final class TierService: Service, TierBackend {
    enum Phase {
        case opening
        case open(BlockStore, ObjectStore, WeightStager)
        case failed(String)
        case closed
    }

    let configuration: TierConfiguration
    let directory: String
    let logger: Logger
    let reportInterval: Duration
    /// Where copies of weights that do not go to host RAM are written as files (for runtimes).
    let diskWeightsDirectory: String
    private let phase = Mutex(Phase.opening)
    /// Resumed once the tiers are open or have failed to.
    private let openWaiters = Mutex<[CheckedContinuation<Void, Never>]>([])
    /// Serializes policy changes, so two admin calls never interleave their read-modify-write.
    private let changes = AsyncSemaphore(permits: 1)

    init(configuration: TierConfiguration, stateDirectory: String, logger: Logger, reportInterval: Duration = .seconds(5)) {
        self.configuration = configuration
        self.directory = configuration.nvme.directory ?? stateDirectory + "/nvme"
        self.diskWeightsDirectory = stateDirectory + "/weights"
        self.logger = logger
        self.reportInterval = reportInterval
    }

    func run() async throws {
        let engine: any IOEngine
        let store: BlockStore
        let stager: WeightStager
        do {
            let started = ContinuousClock.now
            engine = try configuration.engine.make(queueDepth: configuration.queueDepth)
            let log = try await SegmentLog.open(
                .init(directory: directory, segmentBytes: configuration.nvme.segmentBytes,
                      budgetBytes: configuration.nvme.budgetBytes, codec: configuration.nvme.codec,
                      objectReserveBytes: configuration.nvme.weightsReserveBytes),
                engine: engine)
            store = try await BlockStore(policy: configuration.policy, nvme: log, logger: logger)
            let objects = try await ObjectStore.open(log: log, queueDepth: min(configuration.queueDepth, 16))
            stager = WeightStager(
                objects: objects, remote: RemoteClient(settings: configuration.remote),
                host: try StagedFiles(directory: configuration.host.directory),
                disk: try StagedFiles(directory: diskWeightsDirectory), logger: logger)
            phase.withLock { $0 = .open(store, objects, stager) }
            resumeOpenWaiters()
            let nvme = await log.stats
            logger.info("tiers open in \(ContinuousClock.now - started): host \(ConfigUnits.formatBytes(UInt64(store.host.capacity))) arena (\(engine.name)), nvme \(directory) with \(nvme.blocks) block(s), \(ConfigUnits.formatBytes(nvme.usedBytes)) recovered, \(objects.list().count) object(s)")
        } catch {
            phase.withLock { $0 = .failed("\(error)") }
            resumeOpenWaiters()
            logger.error("tiers could not open (\(directory)): \(error); the gateway runs without them")
            try? await gracefulShutdown()
            return
        }
        let metrics = TierMetrics()
        await cancelWhenGracefulShutdown {
            var lowered = 0
            while !Task.isCancelled {
                await store.report(to: metrics)
                let (budget, nvme) = await (store.nvme.configuration.budgetBytes, store.nvme.stats)
                if nvme.budgetLowered > lowered {
                    lowered = nvme.budgetLowered
                    self.logger.warning("the filesystem of \(self.directory) cannot hold tiers.nvme.budget \(ConfigUnits.formatBytes(self.configuration.nvme.budgetBytes)) (it is smaller, or other files share it): the NVMe tier keeps at most \(ConfigUnits.formatBytes(budget)) for now, oldest blocks first to go")
                }
                try? await Task.sleep(for: self.reportInterval)
            }
        }
        phase.withLock { $0 = .closed }
        // NVMe copies still being written behind RAM copies stop (nothing half-written is
        // committed) before the log they write into closes.
        await stager.stopWritesBehind()
        await store.close()
        await store.nvme.close()
        engine.shutdown()
        logger.info("tiers closed")
    }

    private func resumeOpenWaiters() {
        for waiter in openWaiters.withLock({ waiters in defer { waiters.removeAll() }; return waiters }) { waiter.resume() }
    }

    /// The weight stager, once the tiers are open (waits while they open); throws when they
    /// failed to open or are closed.
    func stager() async throws -> WeightStager {
        await withCheckedContinuation { continuation in
            let opening = phase.withLock { phase -> Bool in
                if case .opening = phase { return true }
                return false
            }
            if opening {
                openWaiters.withLock { $0.append(continuation) }
                // The phase may have changed between the check and the append.
                if case .opening = phase.withLock({ $0 }) { return }
                resumeOpenWaiters()
            } else {
                continuation.resume()
            }
        }
        return try openStore().2
    }

    /// The object store (weights, saved KV slots), once the tiers are open (waits while they open).
    func objectStore() async throws -> ObjectStore {
        _ = try await stager()
        return try openStore().1
    }

    /// The block store, once the tiers are open (waits while they open).
    func blockStore() async throws -> BlockStore {
        _ = try await stager()
        return try openStore().0
    }

    private func openStore() throws -> (BlockStore, ObjectStore, WeightStager) {
        switch phase.withLock({ $0 }) {
        case .open(let store, let objects, let stager): return (store, objects, stager)
        case .opening:
            throw GatewayError.unavailable("The storage tiers are still opening", code: "tiers_opening", retryAfterSeconds: 1)
        case .failed(let why):
            throw GatewayError(status: .serviceUnavailable, type: "server_error", code: "tiers_failed",
                               message: "The storage tiers failed to open: \(why)")
        case .closed:
            throw GatewayError.unavailable("The storage tiers are closed (shutting down)", code: "tiers_closed", retryAfterSeconds: 1)
        }
    }

    // MARK: TierBackend

    func tierStatus() async throws -> Data {
        let (store, objects, _) = try openStore()
        return try Self.encode(await TierStatus(store: store, objects: objects, directory: directory))
    }

    func updateTiers(_ body: Data) async throws -> Data {
        let (store, objects, _) = try openStore()
        await changes.acquire()
        defer { changes.release() }
        let policy = try TierPolicyChange.apply(body, to: store.policy, segmentBytes: await store.nvme.configuration.segmentBytes)
        do {
            try await store.apply(policy)
        } catch let error as BlockStore.PolicyError {
            throw GatewayError.badRequest("\(error)", code: "invalid_tiers")
        }
        logger.notice("tier policy changed: host \(ConfigUnits.formatBytes(UInt64(policy.hostBudgetBytes))) \(policy.hostAdmission.rawValue)/\(policy.eviction.rawValue), nvme \(ConfigUnits.formatBytes(policy.nvmeBudgetBytes)) \(policy.nvmeAdmission.rawValue)/\(policy.nvmeCodec)")
        return try Self.encode(await TierStatus(store: store, objects: objects, directory: directory))
    }

    static func encode(_ status: TierStatus) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(status)
    }
}

/// What `/admin/tiers` shows.
struct TierStatus: Codable {
    struct Host: Codable {
        var budget_bytes: Int, capacity_bytes: Int, used_bytes: Int, blocks: Int
        var hits: Int, misses: Int, evictions: Int, demotions: Int
        var admission: String, eviction: String, codec: String
    }
    struct NVMe: Codable {
        var dir: String, budget_bytes: UInt64, used_bytes: UInt64, blocks: Int
        /// What the tier keeps at most now: `budget_bytes`, or less where its filesystem cannot
        /// hold that (`SegmentLog.fitBudgetToFilesystem`).
        var effective_budget_bytes: UInt64
        /// Bytes of staged weights' segments, and how many of them blocks cannot push out now.
        var weights_bytes: UInt64, weights_reserve_bytes: UInt64
        var hits: Int, misses: Int, checksum_failures: Int, reclaimed_segments: Int
        var bytes_read: UInt64, bytes_written: UInt64, queue_depth: Int
        var admission: String, codec: String
    }
    struct Object: Codable { var name: String, size: UInt64, chunk_size: Int, source: String }

    var host: Host
    var nvme: NVMe
    var demotions_dropped: Int, demotion_failures: Int, blocks_lost: Int
    var last_error: String?
    var objects: [Object]

    init(store: BlockStore, objects: ObjectStore, directory: String) async {
        let stats = await store.stats()
        let policy = store.policy
        host = Host(budget_bytes: stats.host.budgetBytes, capacity_bytes: store.host.capacity, used_bytes: stats.host.usedBytes,
                    blocks: stats.host.blocks, hits: stats.host.hits, misses: stats.host.misses,
                    evictions: stats.host.evictions, demotions: stats.host.demotions,
                    admission: policy.hostAdmission.rawValue, eviction: policy.eviction.rawValue,
                    codec: policy.hostCodec.description)
        let log = await store.nvme.configuration
        nvme = NVMe(dir: directory, budget_bytes: policy.nvmeBudgetBytes, used_bytes: stats.nvme.usedBytes,
                    blocks: stats.nvme.blocks, effective_budget_bytes: log.budgetBytes,
                    weights_bytes: stats.nvme.objectBytes, weights_reserve_bytes: log.objectReserveInForce,
                    hits: stats.nvme.hits, misses: stats.nvme.misses,
                    checksum_failures: stats.nvme.checksumFailures, reclaimed_segments: stats.nvme.reclaimedSegments,
                    bytes_read: stats.nvme.bytesRead, bytes_written: stats.nvme.bytesWritten, queue_depth: stats.nvme.inFlight,
                    admission: policy.nvmeAdmission.rawValue, codec: policy.nvmeCodec.description)
        demotions_dropped = stats.demotionsDropped
        demotion_failures = stats.demotionFailures
        blocks_lost = stats.blocksLost
        last_error = stats.lastError
        self.objects = objects.list().map { Object(name: $0.name, size: $0.size, chunk_size: $0.chunkSize, source: $0.source) }
    }
}

/// A run-time policy change from JSON: `{"host": {"budget", "admission", "eviction", "codec"},
/// "nvme": {"budget", "admission", "codec", "weights_reserve"}}`, every field optional. Sizes take the config's
/// units ("512MiB") or a byte count. Every error names the key, the value and what was expected.
enum TierPolicyChange {
    /// `segmentBytes`: the NVMe log's segment size; a budget must hold two segments (one being
    /// written, one to reclaim into), as the config file requires.
    static func apply(_ body: Data, to current: BlockStore.Policy, segmentBytes: Int) throws -> BlockStore.Policy {
        guard let object = try? JSONSerialization.jsonObject(with: body), let top = object as? [String: Any] else {
            throw GatewayError.badRequest("expected a JSON object like {\"host\": {\"budget\": \"512MiB\"}}", code: "invalid_tiers")
        }
        var policy = current
        try refuseUnknown(top, at: "tiers", allowed: ["host", "nvme"])
        if let host = try section(top, "host") {
            try refuseUnknown(host, at: "tiers.host", allowed: ["budget", "admission", "eviction", "codec"])
            if let v = host["codec"] { policy.hostCodec = try choice(v, at: "tiers.host.codec") }
            if let v = host["budget"] { policy.hostBudgetBytes = Int(clamping: try size(v, at: "tiers.host.budget")) }
            if let v = host["admission"] { policy.hostAdmission = try choice(v, at: "tiers.host.admission") }
            if let v = host["eviction"] { policy.eviction = try choice(v, at: "tiers.host.eviction") }
        }
        if let nvme = try section(top, "nvme") {
            try refuseUnknown(nvme, at: "tiers.nvme", allowed: ["budget", "admission", "codec", "weights_reserve"])
            if let v = nvme["budget"] {
                policy.nvmeBudgetBytes = try size(v, at: "tiers.nvme.budget")
                let least = 2 * UInt64(segmentBytes)
                guard policy.nvmeBudgetBytes >= least else {
                    throw fail("tiers.nvme.budget", v,
                               "at least \(ConfigUnits.formatBytes(least)) (two segments of the log's segment_size \(ConfigUnits.formatBytes(UInt64(segmentBytes))))")
                }
            }
            if let v = nvme["admission"] { policy.nvmeAdmission = try choice(v, at: "tiers.nvme.admission") }
            if let v = nvme["codec"] { policy.nvmeCodec = try choice(v, at: "tiers.nvme.codec") }
            if let v = nvme["weights_reserve"] {
                let reserve = try size(v, at: "tiers.nvme.weights_reserve")
                guard reserve <= policy.nvmeBudgetBytes else {
                    throw fail("tiers.nvme.weights_reserve", v,
                               "at most tiers.nvme.budget (\(ConfigUnits.formatBytes(policy.nvmeBudgetBytes)))")
                }
                policy.nvmeWeightsReserveBytes = reserve
            }
        }
        return policy
    }

    private static func fail(_ key: String, _ value: Any, _ expected: String) -> GatewayError {
        GatewayError.badRequest("\(key): '\(value)' is not valid: expected \(expected)", code: "invalid_tiers")
    }

    private static func refuseUnknown(_ map: [String: Any], at key: String, allowed: Set<String>) throws {
        if let unknown = map.keys.sorted().first(where: { !allowed.contains($0) }) {
            if restartOnly.contains("\(key).\(unknown)") {
                throw GatewayError.badRequest(
                    "\(key).\(unknown): takes effect only when Strata starts; set it in the config file and restart "
                        + "(changeable here: \(allowed.sorted().joined(separator: ", ")))", code: "invalid_tiers")
            }
            throw GatewayError.badRequest(
                "\(key).\(unknown): unknown key (expected \(allowed.sorted().joined(separator: ", ")))", code: "invalid_tiers")
        }
    }

    /// Config keys of the tiers that a running store cannot change.
    private static let restartOnly: Set<String> = [
        "tiers.engine", "tiers.queue_depth", "tiers.remote", "tiers.host.dir", "tiers.host.weights_budget", "tiers.nvme.dir",
        "tiers.nvme.segment_size",
    ]

    private static func section(_ top: [String: Any], _ name: String) throws -> [String: Any]? {
        guard let value = top[name] else { return nil }
        guard let map = value as? [String: Any] else { throw fail("tiers.\(name)", value, "an object") }
        return map
    }

    private static func size(_ value: Any, at key: String) throws -> UInt64 {
        if let text = value as? String, case .success(let bytes) = ConfigUnits.parseSize(text), bytes > 0 { return bytes }
        if let number = value as? NSNumber, number.int64Value > 0, Double(number.int64Value) == number.doubleValue {
            return UInt64(number.int64Value)
        }
        throw fail(key, value, "a size above zero such as \"512MiB\" or a byte count")
    }

    private static func choice<T: CaseIterable & CustomStringConvertible>(_ value: Any, at key: String) throws -> T {
        guard let text = value as? String, let match = T.named(text) else { throw fail(key, value, "one of \(T.names)") }
        return match
    }
}

extension BlockStore.Admission: CustomStringConvertible {
    public var description: String { rawValue }
}

extension BlockStore.EvictionPolicy: CustomStringConvertible {
    public var description: String { rawValue }
}

extension IOEngineKind: CustomStringConvertible {
    public var description: String { rawValue }
}

/// The spellings of a setting's values, shared by the config file and `PUT /admin/tiers`, so
/// the two accept the same words and list the same ones in their errors.
extension CaseIterable where Self: CustomStringConvertible {
    static func named(_ name: String) -> Self? { allCases.first { $0.description == name } }
    static var names: String { allCases.map(\.description).joined(separator: ", ") }
}
