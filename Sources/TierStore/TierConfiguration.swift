/// Budgets and places of the storage tiers, as read from the config's `tiers` section.
/// The tiers themselves (host arena, NVMe segments, remote) are built on this configuration.
public struct TierConfiguration: Sendable, Equatable {
    public struct Tier: Sendable, Equatable {
        /// Directory that holds this tier's files (for the host tier, a RAM-backed directory).
        public var directory: String
        public var budgetBytes: UInt64

        public init(directory: String, budgetBytes: UInt64) {
            self.directory = directory
            self.budgetBytes = budgetBytes
        }
    }

    public var host: Tier
    public var nvme: Tier

    public init(host: Tier, nvme: Tier) {
        self.host = host
        self.nvme = nvme
    }

    public static let defaultHost = Tier(directory: "/dev/shm/strata", budgetBytes: 8 << 30)
    public static let defaultNVMe = Tier(directory: "./var/strata/nvme", budgetBytes: 64 << 30)
}
