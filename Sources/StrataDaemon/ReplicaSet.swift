import AsyncHTTPClient
import Foundation
import Frontend
import Logging
import Metrics
import Placer

/// The replicas of one model that Strata does not start (`upstreams`), routed by the Placer's
/// `PrefixRouter`: each request goes where its prompt's prefix likely is, weighed against the
/// work already queued there. Load is counted at dispatch and released exactly once when the
/// lease ends (answer complete, error, cancel). Replicas are health-checked actively; failures
/// before an answer eject a replica passively after `eject_after` in a row; a replica whose
/// health comes back is taken to have restarted and starts with an empty index.
actor ReplicaSet {
    let model: String
    let urls: [String]
    let settings: RoutingSettings
    let logger: Logger
    private var router: PrefixRouter
    private var nextRequest: RequestID = 1
    /// Health as last probed, to log changes and forget indexes of restarted replicas.
    private var probedHealthy: [String: Bool] = [:]

    init(model: String, urls: [String], policy: RoutingPolicy, settings: RoutingSettings, logger: Logger) {
        self.model = model
        self.urls = urls
        self.settings = settings
        self.logger = logger
        router = PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: urls.map { ReplicaSpec(id: $0, maxConcurrency: settings.maxConcurrency) }, policy: policy,
            maxBlocksPerReplica: settings.indexBlocks, hotSpotQueueBound: settings.hotSpotQueue,
            loadBoundFactor: settings.loadBound, ejectAfterFailures: settings.ejectAfter))
    }

    func acquire(hints: RequestHints) throws -> UpstreamLease {
        let decision: RouteDecision
        switch router.choose(hints.prompt.blocks, session: hints.session, excluding: hints.excluding) {
        case .success(let chosen):
            decision = chosen
        case .failure(let refusal):
            Counter(label: "strata_route_refusals_total", dimensions: [("model", model), ("reason", "\(refusal)")]).increment()
            throw GatewayError.unavailable(
                "No replica of '\(model)' can take the request: \(Self.explain(refusal))", code: "no_replica",
                retryAfterSeconds: max(1, Int(settings.healthInterval.components.seconds)))
        }
        let id = nextRequest
        nextRequest += 1
        router.dispatch(id, to: decision, promptBlocks: hints.prompt.blocks)
        Counter(label: "strata_route_decisions_total",
                dimensions: [("model", model), ("replica", decision.replica), ("reason", "\(decision.reason)")]).increment()
        Recorder(label: "strata_route_matched_fraction", dimensions: [("model", model)], aggregate: true)
            .record(decision.matchedFraction)
        publishLoad()
        let others = router.replicaSnapshots.filter { $0.healthy && $0.id != decision.replica && !hints.excluding.contains($0.id) }
        let replica = decision.replica
        return UpstreamLease(
            baseURL: replica + "/v1", upstreamLabel: replica, hasAlternatives: !others.isEmpty
        ) { [weak self] outcome in
            guard let self else { return }
            Task { await self.finish(id, replica: replica, outcome: outcome) }
        }
    }

    private func finish(_ id: RequestID, replica: String, outcome: LeaseOutcome) {
        router.finish(id)
        switch outcome {
        case .completed:
            router.reportSuccess(replica)
        case .upstreamFailed:
            if router.reportFailure(replica) {
                logger.warning("replica \(replica) of \(model) ejected after \(settings.ejectAfter) failures in a row")
            }
        }
        publishLoad()
    }

    private func publishLoad() {
        for snapshot in router.replicaSnapshots {
            let dimensions = [("model", model), ("replica", snapshot.id)]
            Gauge(label: "strata_replica_in_flight", dimensions: dimensions).record(snapshot.inFlight)
            Gauge(label: "strata_replica_index_blocks", dimensions: dimensions).record(snapshot.indexedBlocks)
            Gauge(label: "strata_replica_healthy", dimensions: dimensions).record(snapshot.healthy ? 1 : 0)
        }
    }

    var snapshots: [ReplicaSnapshot] { router.replicaSnapshots }

    /// Probes every replica's `/health` each `health_interval` until cancelled.
    func runHealthChecks(httpClient: HTTPClient) async {
        while !Task.isCancelled {
            await withTaskGroup(of: (String, Bool).self) { group in
                for url in urls {
                    group.addTask {
                        var request = HTTPClientRequest(url: url + "/health")
                        request.method = .GET
                        guard let response = try? await httpClient.execute(request, timeout: .seconds(2)) else { return (url, false) }
                        _ = try? await response.body.collect(upTo: 1 << 16)
                        return (url, response.status == .ok)
                    }
                }
                for await (url, healthy) in group { record(probe: url, healthy: healthy) }
            }
            try? await Task.sleep(for: settings.healthInterval)
        }
    }

    private func record(probe url: String, healthy: Bool) {
        let before = probedHealthy[url]
        probedHealthy[url] = healthy
        if healthy {
            if before == false {
                // It was down and is back: a restarted server holds none of its old prefixes.
                router.replicaRestarted(url)
                logger.notice("replica \(url) of \(model) is healthy again; its prefix index starts empty")
            }
            router.markHealthy(url)
        } else {
            if before != false { logger.warning("replica \(url) of \(model) failed its health check") }
            router.markUnhealthy(url)
        }
        publishLoad()
    }

    static func explain(_ refusal: RouteRefusal) -> String {
        switch refusal {
        case .noHealthyReplica: "every replica is down (failed health checks or ejected after errors)"
        case .allExcluded: "every healthy replica already failed this request"
        case .allSaturated: "every replica is at its concurrency limit (routing.max_concurrency)"
        }
    }
}
