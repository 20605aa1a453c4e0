/// Budgets, places and policies of the storage tiers, as read from the config's `tiers` section.
/// The tiers themselves (host arena, NVMe segments) are built on this configuration; what can
/// change at run time is its `policy`.
public struct TierConfiguration: Sendable, Equatable {
    public struct Host: Sendable, Equatable {
        /// RAM-backed directory for files runtimes open by path (staged weights).
        public var directory: String
        /// The block arena's budget, mapped and pre-faulted at start: also the most it can grow to.
        public var budgetBytes: UInt64
        public var admission: BlockStore.Admission
        /// What leaves RAM: demoted to NVMe, or dropped.
        public var eviction: BlockStore.EvictionPolicy
        /// `.lz4` keeps blocks compressed in RAM when it pays (gets then copy instead of lend).
        public var codec: BlockHeader.Codec
        /// RAM for staged weight files in `directory`, those of running models included; 0 turns
        /// staging into RAM off (runtimes then open the source file, or a copy on disk).
        public var weightsBudgetBytes: UInt64

        public init(directory: String, budgetBytes: UInt64, admission: BlockStore.Admission = .always,
                    eviction: BlockStore.EvictionPolicy = .demote, codec: BlockHeader.Codec = .none,
                    weightsBudgetBytes: UInt64 = 4 << 30) {
            self.codec = codec
            self.weightsBudgetBytes = weightsBudgetBytes
            self.directory = directory
            self.budgetBytes = budgetBytes
            self.admission = admission
            self.eviction = eviction
        }
    }

    public struct NVMe: Sendable, Equatable {
        /// Segment files and the catalog; nil means `<state_dir>/nvme`.
        public var directory: String?
        public var budgetBytes: UInt64
        public var admission: BlockStore.Admission
        public var codec: BlockHeader.Codec
        public var segmentBytes: Int
        /// Staged weights (objects) up to this many bytes are not reclaimed to make room for KV
        /// blocks; nil: half the budget (`SegmentLog.Configuration.objectReserveBytes`).
        public var weightsReserveBytes: UInt64?

        public init(directory: String? = nil, budgetBytes: UInt64, admission: BlockStore.Admission = .always,
                    codec: BlockHeader.Codec = .none, segmentBytes: Int = 256 << 20, weightsReserveBytes: UInt64? = nil) {
            self.weightsReserveBytes = weightsReserveBytes
            self.directory = directory
            self.budgetBytes = budgetBytes
            self.admission = admission
            self.codec = codec
            self.segmentBytes = segmentBytes
        }
    }

    public var host: Host
    public var nvme: NVMe
    /// How weights are fetched from HTTP and S3 sources.
    public var remote: RemoteSettings
    /// How NVMe I/O is issued; `auto` takes io_uring where the kernel allows it.
    public var engine: IOEngineKind
    public var queueDepth: Int

    public init(
        host: Host = Self.defaultHost, nvme: NVMe = Self.defaultNVMe, remote: RemoteSettings = RemoteSettings(),
        engine: IOEngineKind = .auto, queueDepth: Int = 32
    ) {
        self.host = host
        self.nvme = nvme
        self.remote = remote
        self.engine = engine
        self.queueDepth = queueDepth
    }

    public static let defaultHost = Host(directory: "/dev/shm/strata", budgetBytes: 1 << 30)
    public static let defaultNVMe = NVMe(budgetBytes: 64 << 30)

    /// The part that can change while the store runs.
    public var policy: BlockStore.Policy {
        BlockStore.Policy(
            hostBudgetBytes: Int(clamping: host.budgetBytes), nvmeBudgetBytes: nvme.budgetBytes,
            hostAdmission: host.admission, nvmeAdmission: nvme.admission, nvmeCodec: nvme.codec, eviction: host.eviction,
            hostCodec: host.codec, nvmeWeightsReserveBytes: nvme.weightsReserveBytes)
    }
}

extension BlockHeader.Codec: CaseIterable, CustomStringConvertible {
    public static let allCases: [BlockHeader.Codec] = [.none, .lz4]
    public var description: String { self == .none ? "none" : "lz4" }
}
