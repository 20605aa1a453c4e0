import CoreMetrics
import Synchronization

/// Publishes per-tier figures through swift-metrics (the executable picks the backend):
/// gauges for bytes used, budget and blocks; counters for hits, misses, evictions, demotions,
/// bytes read and written, checksum failures. Tiers keep cumulative stats; each `report` adds
/// what changed since the last one, so counters stay monotonic however often it runs.
public final class TierMetrics: Sendable {
    private let factory: any MetricsFactory
    private let published = Mutex<[String: Int]>([:])

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
    }

    public func report(host: HostTier.Stats) {
        gauges(tier: "host", used: host.usedBytes, budget: host.budgetBytes, blocks: host.blocks)
        counters(tier: "host", [
            ("strata_tier_hits_total", host.hits), ("strata_tier_misses_total", host.misses),
            ("strata_tier_evictions_total", host.evictions), ("strata_tier_demotions_total", host.demotions),
        ])
    }

    public func report(nvme: SegmentLog.Stats, budgetBytes: UInt64) {
        gauges(tier: "nvme", used: Int(nvme.usedBytes), budget: Int(min(budgetBytes, UInt64(Int.max))), blocks: nvme.blocks)
        counters(tier: "nvme", [
            ("strata_tier_hits_total", nvme.hits), ("strata_tier_misses_total", nvme.misses),
            ("strata_tier_evictions_total", nvme.reclaimedSegments),
            ("strata_tier_checksum_failures_total", nvme.checksumFailures),
            ("strata_tier_read_bytes_total", Int(nvme.bytesRead)), ("strata_tier_written_bytes_total", Int(nvme.bytesWritten)),
        ])
        Gauge(label: "strata_tier_queue_depth", dimensions: [("tier", "nvme")], factory: factory).record(nvme.inFlight)
    }

    /// What happens between the tiers: demotions dropped (queue full) or failed, admissions
    /// refused by second-hit policies, blocks lost to a failed demotion with no RAM left.
    public func report(store: BlockStore.Stats) {
        counters(tier: "host", [
            ("strata_tier_demotions_dropped_total", store.demotionsDropped),
            ("strata_tier_demotion_failures_total", store.demotionFailures),
            ("strata_tier_blocks_lost_total", store.blocksLost),
            ("strata_tier_admissions_refused_total", store.hostAdmissionsRefused),
        ])
        counters(tier: "nvme", [("strata_tier_admissions_refused_total", store.nvmeAdmissionsRefused)])
    }

    private func gauges(tier: String, used: Int, budget: Int, blocks: Int) {
        for (label, value) in [("strata_tier_used_bytes", used), ("strata_tier_budget_bytes", budget), ("strata_tier_blocks", blocks)] {
            Gauge(label: label, dimensions: [("tier", tier)], factory: factory).record(value)
        }
    }

    private func counters(tier: String, _ values: [(String, Int)]) {
        let deltas = published.withLock { published in
            values.map { label, value -> (String, Int) in
                let key = "\(label)|\(tier)"
                let delta = max(0, value - published[key, default: 0])
                published[key] = value
                return (label, delta)
            }
        }
        for (label, delta) in deltas where delta > 0 {
            Counter(label: label, dimensions: [("tier", tier)], factory: factory).increment(by: delta)
        }
    }
}
