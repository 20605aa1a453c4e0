/// Where the fastest whole copy of a model's weights is, fastest first: host RAM (a RAM-backed
/// directory the runtime maps with no copy), the NVMe store, or only the remote source.
public enum WeightTier: Sendable, Comparable, CaseIterable {
    case host, nvme, remote
}

/// The state of a model's weights in host RAM.
public enum HostCopy: Sendable, Equatable {
    case absent
    /// `.stage` was issued at `since`; its bytes count against the host-weights budget already,
    /// so the copy always fits once it completes.
    case staging(since: Duration)
    case resident

    /// Whether the copy counts against the host-weights budget.
    var holdsHostBytes: Bool {
        switch self {
        case .absent: false
        case .staging, .resident: true
        }
    }
}

/// Read throughput of each tier, in bytes per second, used to estimate how long a model takes
/// to load again from where its weights will be.
public struct TierBandwidth: Sendable, Equatable {
    public var host: Double
    public var nvme: Double
    public var remote: Double

    public init(host: Double = 4e9, nvme: Double = 1.5e9, remote: Double = 2e8) {
        self.host = host
        self.nvme = nvme
        self.remote = remote
    }

    public subscript(tier: WeightTier) -> Double {
        switch tier {
        case .host: host
        case .nvme: nvme
        case .remote: remote
        }
    }
}
