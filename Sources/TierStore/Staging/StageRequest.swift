/// Where staged weights should end up.
public enum StageDestination: String, Sendable, Equatable, Codable, CaseIterable {
    /// A file in the RAM-backed directory (and the object on NVMe).
    case host
    /// A file in the disk directory (and the object on NVMe): for weights that do not fit the
    /// host budget but must be a file a runtime can open.
    case disk
    /// Only the object on NVMe.
    case nvme
}

/// The tier a staging read its bytes from: what made it fast or slow.
public enum StageOrigin: String, Sendable, Equatable, Codable {
    /// Nothing to move: the destination already held the current version.
    case host
    /// The NVMe copy.
    case nvme
    /// The source itself (HTTP, S3, or the local file named by a file:// source).
    case remote
}

public struct StageRequest: Sendable, Equatable {
    /// The object's name: the model's.
    public var name: String
    /// `file:///path`, a plain absolute path, `http(s)://…` or `s3://bucket/key`.
    public var source: String
    /// Lowercase hex SHA-256 the bytes must have; checked before anything is published.
    public var sha256: String?
    public var destination: StageDestination

    public init(name: String, source: String, sha256: String? = nil, destination: StageDestination = .host) {
        self.name = name
        self.source = source
        self.sha256 = sha256?.lowercased()
        self.destination = destination
    }
}

public struct StageResult: Sendable, Equatable {
    /// The file a runtime opens (nil for `.nvme`).
    public var path: String?
    public var origin: StageOrigin
    public var bytes: UInt64
    public var seconds: Double
    /// The source version the bytes came from.
    public var identity: String
}

/// A staging as `/admin/staging` and `strata stage` show it.
public struct StageStatus: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable { case running, done, failed, cancelled }
    public var name: String
    public var source: String
    public var destination: StageDestination
    public var origin: StageOrigin?
    public var state: State
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var bytesPerSecond: Double
    public var secondsLeft: Double?
    public var elapsedSeconds: Double
    public var path: String?
    public var error: String?
    /// The NVMe copy of a staging from HTTP or S3, written behind the RAM (or disk) copy after
    /// the staging was reported done; nil where there is none to write (NVMe-only stagings, local
    /// sources, which are written through in the same pass, and copies already on NVMe).
    public var nvmeCopy: NVMeCopy?

    public enum NVMeCopy: String, Sendable, Codable {
        /// Being written from the RAM copy; not in the object store yet.
        case writing
        /// Whole and committed to the object store.
        case committed
        /// Failed (logged, counted in `strata_stage_write_behind_total{result="failed"}`); the RAM
        /// copy still serves and nothing of the NVMe copy was kept.
        case failed
        /// Stopped (a cancel or a shutdown); nothing of it was kept.
        case cancelled
    }

    enum CodingKeys: String, CodingKey {
        case name, source, destination, origin, state, path, error
        case nvmeCopy = "nvme_copy"
        case bytesDone = "bytes_done", bytesTotal = "bytes_total", bytesPerSecond = "bytes_per_second"
        case secondsLeft = "seconds_left", elapsedSeconds = "elapsed_seconds"
    }
}

/// Why a staging failed, beyond the tiers' own errors.
public struct StageError: Error, Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var message: String
    /// The weights are not the ones the config names (SHA-256 differs): never start from them.
    public var isChecksumMismatch = false

    public init(name: String, message: String, isChecksumMismatch: Bool = false) {
        self.name = name
        self.message = message
        self.isChecksumMismatch = isChecksumMismatch
    }

    public var description: String { "staging '\(name)': \(message)" }
}
