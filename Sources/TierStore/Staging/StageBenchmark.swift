import Foundation

/// `strata bench stage`: one staging of `source` timed end to end, through the same stager the
/// daemon uses, into a store of its own in `directory`. `from: .remote` starts with neither an
/// NVMe nor a host copy: `seconds` is the time until the staging is done (the host copy whole
/// and verified: a runtime may start), and for HTTP and S3 sources `nvme_seconds` the time,
/// from the same start, until the NVMe copy written behind it is committed too (for a local
/// file both are written in one pass). `from: .nvme` first makes sure the NVMe copy exists
/// (untimed), drops the host copy, then times NVMe → host.
public struct StageBenchmark: Sendable {
    public struct Result: Sendable, Codable {
        public var source: String
        public var from: String
        public var to: String
        public var bytes: UInt64
        public var seconds: Double
        public var mib_per_s: Double
        /// Until the NVMe copy written behind the host copy was committed (nil: none was written behind).
        public var nvme_seconds: Double?
        public var nvme_mib_per_s: Double?
    }

    public var source: String
    public var directory: String
    public var hostDirectory: String
    public var from: StageOrigin
    public var destination: StageDestination
    public var remote: RemoteSettings
    public var queueDepth: Int
    public var sha256: String?

    public init(
        source: String, directory: String, hostDirectory: String, from: StageOrigin, destination: StageDestination,
        remote: RemoteSettings, queueDepth: Int, sha256: String?
    ) {
        self.source = source
        self.directory = directory
        self.hostDirectory = hostDirectory
        self.from = from
        self.destination = destination
        self.remote = remote
        self.queueDepth = queueDepth
        self.sha256 = sha256
    }

    public func run(engine: any IOEngine, progress: (@Sendable (StageStatus) -> Void)? = nil) async throws -> Result {
        let log = try await SegmentLog.open(
            .init(directory: directory, segmentBytes: TierConfiguration.defaultNVMe.segmentBytes, budgetBytes: UInt64.max / 2),
            engine: engine)
        let objects = try await ObjectStore.open(log: log, queueDepth: queueDepth)
        let stager = WeightStager(
            objects: objects, remote: RemoteClient(settings: remote), host: try StagedFiles(directory: hostDirectory),
            disk: try StagedFiles(directory: directory + "/weights"), logger: .init(label: "strata.bench"))
        let request = StageRequest(name: "bench", source: source, sha256: sha256, destination: destination)
        await stager.releaseHost("bench")
        stager.disk.remove("bench")
        switch from {
        case .remote:
            try await objects.remove("bench")
        case .nvme:
            _ = try await stager.stage(StageRequest(name: "bench", source: source, sha256: sha256, destination: .nvme))
        case .host:
            _ = try await stager.stage(request)
        }
        let started = ContinuousClock.now
        let result = try await stager.stage(request, progress: progress)
        var nvmeSeconds: Double?
        do {
            if let outcome = try await stager.nvmeCopyWritten("bench") {
                guard outcome == .committed, objects.info("bench")?.source == result.identity else {
                    throw StageError(name: "bench", message: "the NVMe copy written behind ended \(outcome.rawValue)")
                }
                nvmeSeconds = (ContinuousClock.now - started).seconds
            }
        } catch {
            await stager.stopWritesBehind()
            await log.close()
            throw error
        }
        await log.close()
        let mib = Double(result.bytes) / 1_048_576
        return Result(source: source, from: result.origin.rawValue, to: destination.rawValue, bytes: result.bytes,
                      seconds: result.seconds, mib_per_s: mib / max(result.seconds, 1e-9),
                      nvme_seconds: nvmeSeconds, nvme_mib_per_s: nvmeSeconds.map { mib / max($0, 1e-9) })
    }
}
