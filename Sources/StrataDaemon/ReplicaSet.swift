import AsyncHTTPClient
import Foundation
import Frontend
import Logging
import Metrics
import NIOCore
import NIOConcurrencyHelpers
import Placer
import Synchronization

/// The replicas of one model, routed by the Placer's `PrefixRouter`: each request goes where its
/// prompt's prefix likely is, weighed against the work already queued there. Replicas are
/// either upstream URLs Strata does not start, or runtime processes it does (`replicas: N`,
/// Placer models `name#i`, started on demand like any managed model). Load is counted at
/// dispatch and released exactly once when the lease ends (answer complete, error, cancel).
/// Upstream replicas are health-checked actively; failures before an answer eject a replica
/// passively after `eject_after` in a row; a replica that comes back (health passes again, or
/// a new process starts) is taken to have restarted and starts with an empty index.
actor ReplicaSet {
    let model: String
    /// Upstream base URLs, or the Placer names of managed replicas.
    let replicas: [String]
    let managed: Bool
    let policy: RoutingPolicy
    let settings: RoutingSettings
    let logger: Logger
    /// KV save and restore across managed llama-server replicas (`kv_restore`); nil: off.
    let slots: SlotCache?
    /// The router and what goes with each decision, under a lock held only for the decision
    /// itself: a request to an upstream set is routed and its lease released without a hop to
    /// this actor (`acquireImmediately`, the gateway's event-loop path).
    private struct Routing {
        var router: PrefixRouter
        var nextRequest: RequestID = 1
        var decisionCounters: [DecisionKey: Counter] = [:]
        /// The set that replaced this one (`handOver`): requests still in flight here end there too.
        var successor: ReplicaSet?
        /// When each replica was last ejected for its requests' failures (not its probe's).
        var ejectedAt: [String: ContinuousClock.Instant] = [:]
        /// Upstream replicas whose last health probe passed.
        var probePassing: Set<String> = []
    }

    /// How long a replica ejected for failing requests stays out though its health probe passes
    /// (a server whose /health answers while its requests fail), unless no other replica is up:
    /// 15 health intervals (30 s by default).
    nonisolated var ejectionCooldown: Duration { settings.healthInterval * 15 }
    private struct DecisionKey: Hashable {
        var replica: String
        var reason: RouteReason
    }
    private let routing: NIOLockedValueBox<Routing>
    /// Metric handles made once: a lookup in the metrics registry per request and replica
    /// would cost more than the routing decision itself.
    private let gauges: [String: (inFlight: Gauge, indexBlocks: Gauge, healthy: Gauge)]
    private let matchedFraction: Recorder
    /// Each upstream replica's base URL for its leases (`<url>/v1`), made once.
    private let baseURLs: [String: String]
    /// Health as last probed, to log changes and forget indexes of restarted replicas.
    private var probedHealthy: [String: Bool] = [:]
    /// Set by the health checks; lets a request that finds every replica down probe them at once.
    private var checkingHealth = false
    private var lastProbe: ContinuousClock.Instant?

    /// `running`: managed replicas whose process is ready now (the others must start first).
    /// `recoverSlots`: index what is saved (false for a cache taken over from the set this replaces).
    init(model: String, replicas: [String], managed: Bool, policy: RoutingPolicy, settings: RoutingSettings, logger: Logger,
         slots: SlotCache? = nil, recoverSlots: Bool = true, running: Set<String> = []) {
        self.slots = slots
        // The set is being installed: index what earlier daemons or sets saved (a cache built
        // and discarded by a reload never does, so it cannot trim objects this one uses).
        if let slots, recoverSlots { Task { await slots.recover() } }
        self.model = model
        self.replicas = replicas
        self.managed = managed
        self.policy = policy
        self.settings = settings
        self.logger = logger
        gauges = Dictionary(uniqueKeysWithValues: replicas.map { id in
            let dimensions = [("model", model), ("replica", id)]
            return (id, (Gauge(label: "strata_replica_in_flight", dimensions: dimensions),
                         Gauge(label: "strata_replica_index_blocks", dimensions: dimensions),
                         Gauge(label: "strata_replica_healthy", dimensions: dimensions)))
        })
        matchedFraction = Recorder(label: "strata_route_matched_fraction", dimensions: [("model", model)], aggregate: true)
        baseURLs = Dictionary(replicas.map { ($0, $0 + "/v1") }, uniquingKeysWith: { first, _ in first })
        routing = NIOLockedValueBox(Routing(router: PrefixRouter(configuration: PrefixRouterConfiguration(
            replicas: replicas.map { ReplicaSpec(id: $0, maxConcurrency: settings.maxConcurrency) }, policy: policy,
            maxBlocksPerReplica: settings.indexBlocks, hotSpotQueueBound: settings.hotSpotQueue,
            loadBoundFactor: settings.loadBound, ejectAfterFailures: settings.ejectAfter,
            requestCostBlocks: settings.requestCostBlocks))))
        if managed {
            routing.withLockedValue { routing in
                for replica in replicas where !running.contains(replica) { routing.router.setStarting(replica, true) }
            }
        }
    }

    /// Routes a request to an upstream replica without waiting, or nil where `acquire` is needed:
    /// managed replicas (their supervisor admits the request) or no replica that can take it
    /// now (`acquire` probes, and says why with the right error).
    nonisolated func acquireImmediately(hints: RequestHints, price: TokenPrice? = nil) -> UpstreamLease? {
        guard !managed, let (id, replica, hasAlternatives, _) = try? route(hints, countingRefusals: false) else { return nil }
        return upstreamLease(id, replica: replica, hasAlternatives: hasAlternatives, price: price)
    }

    /// The lease on an upstream replica (not a managed one) the router chose for request `id`.
    private nonisolated func upstreamLease(_ id: RequestID, replica: String, hasAlternatives: Bool,
                                           price: TokenPrice? = nil) -> UpstreamLease {
        let record = UpstreamLeaseRecord(id: id, replica: replica, set: self)
        // (Each closure captures the record alone, which then serves as its context: no
        // allocation for either. This runs for every request the event loop relays.)
        return UpstreamLease(
            baseURL: baseURLs[replica] ?? replica + "/v1", upstreamLabel: replica, hasAlternatives: hasAlternatives,
            routedAmongReplicas: true, price: price, cacheReport: { said in record.report.withLock { $0 = said } }
        ) { outcome in record.finish(outcome) }
    }

    /// One upstream request's lease: what the replica said of its prompt, kept for the release.
    private final class UpstreamLeaseRecord: Sendable {
        let id: RequestID
        let replica: String
        /// (Held: a set a reload replaced lives until its last request ends, which it hands on.)
        let set: ReplicaSet
        let report = Mutex<PromptReport?>(nil)

        init(id: RequestID, replica: String, set: ReplicaSet) {
            self.id = id
            self.replica = replica
            self.set = set
        }

        func finish(_ outcome: LeaseOutcome) {
            set.finish(id, replica: replica, outcome: outcome, cachedFraction: report.withLock { $0?.cachedFraction })
        }
    }

    /// What the replica says of the prompt (the lease's `cacheReport`), kept for the release (`finish`).
    private static func promptReport() -> (NIOLockedValueBox<PromptReport?>, @Sendable (PromptReport) -> Void) {
        let box = NIOLockedValueBox<PromptReport?>(nil)
        return (box, { report in box.withLockedValue { $0 = report } })
    }

    /// Chooses a replica and hands out a lease on it. For managed replicas, `start` gets the
    /// lease from the supervisor (starting the process if it is not running); one whose runtime
    /// fails to start is counted against and the request goes to another.
    func acquire(
        hints: RequestHints, start: (@Sendable (String) async throws -> UpstreamLease)? = nil
    ) async throws -> UpstreamLease {
        var hints = hints
        var probed = false
        /// Already routed and dispatched (`startOrRoom` or a wait that ran out moved the request).
        var pending: Routed?
        var movedAfterWait = false
        while true {
            let id: RequestID, replica: String, hasAlternatives: Bool, restoreBlocks: Int
            do {
                if let routed = pending {
                    (id, replica, hasAlternatives, restoreBlocks) = routed
                    pending = nil
                } else {
                    // (A refusal for want of a healthy replica, followed by the probe below, is
                    // counted once: by the route after it.)
                    (id, replica, hasAlternatives, restoreBlocks) = try route(hints, probeFollows: !probed && !managed && checkingHealth)
                }
            } catch RouteFailure.noHealthyReplica(let error) {
                // Every replica looked down at the last probe; one may have come up since (a
                // fleet starting beside Strata). Probe now, once, rather than wait a whole interval.
                guard !probed, !managed, checkingHealth else { throw error }
                probed = true
                await probeAll()
                continue
            }
            guard managed, let start else { return upstreamLease(id, replica: replica, hasAlternatives: hasAlternatives) }
            let (report, cacheReport) = Self.promptReport()
            let inner: UpstreamLease
            do {
                switch try await startOrRoom(replica, hasAlternatives: hasAlternatives, hints: hints, start: start) {
                case .started(let lease):
                    inner = lease
                case .moved(let routed):
                    // A running replica got room while this one was still to start: the request
                    // was dispatched there (under the same lock that found the room, so one freed
                    // place goes to one waiting request).
                    finish(id, replica: replica, outcome: .abandoned)
                    hints.excluding.insert(replica)
                    pending = routed
                    continue
                }
            } catch let error as GatewayError where error.status == .badGateway {
                finish(id, replica: replica, outcome: .upstreamFailed)   // its runtime failed
                guard hasAlternatives else { throw error }
                logger.warning("replica \(replica) of \(model) failed to serve (\(error.message)); trying another")
                hints.excluding.insert(replica)
                continue
            } catch {
                finish(id, replica: replica, outcome: .abandoned)       // not ready in time, cancelled: not its fault
                throw error
            }
            // Pinned to a slot Strata chose, so what each slot holds is known; a stored prefix
            // the router counted on is restored into it first.
            let chain = hints.prompt.blocks
            // (For a slot running a request that shares the prefix, up to 1.5 times what
            // computing the shared part takes on this replica, and then for its save; 2 s where
            // that rate is not known yet: `SlotCache.tryClaimSlot`.)
            let (claim, waitRanOut) = await slots?.waitingClaim(on: replica, for: chain, patience: .seconds(2)) ?? (nil, false)
            // A wait for a slot computing this prefix that ran out (2 s before the replica's
            // prefill rate is learned, on a fleet just started) would leave the request computing
            // the prefix beside the one it waited for, slowing both: where another running
            // replica has room and nothing stored would spare the computing, it goes there
            // instead, once.
            if waitRanOut, !movedAfterWait, hasAlternatives, slots?.restorable(chain) ?? 0 == 0 {
                if let routed = routedElsewhere(hints, besides: replica) {
                    if let claim { slots?.giveBack(claim, on: replica) }
                    inner.release(.abandoned)
                    finish(id, replica: replica, outcome: .abandoned)
                    Counter(label: "strata_slot_waits_moved_total", dimensions: [("model", model)]).increment()
                    logger.debug("a wait for a slot computing the same prefix on \(replica) ran out; computing it on \(routed.1) instead")
                    hints.excluding.insert(replica)
                    pending = routed
                    movedAfterWait = true
                    continue
                }
            }
            // (Unless the slot it got already holds as much: a slot's cache is not replaced by less.)
            // Also where the route expected the prefix cached there but the slot it got lacks it
            // (the holder's slot stayed busy past the wait) and the store holds it: restoring it
            // beats computing it again.
            if let slots, let claim {
                let shared = slots.sharedBlocks(chain, on: replica, slot: claim.slot)
                let stored = restoreBlocks > 0 ? restoreBlocks : slots.restorable(chain)
                if restoreBlocks > 0 ? shared < stored : stored - shared >= slots.minBlocks {
                    _ = await slots.restore(chain, replica: replica, baseURL: inner.baseURL, slot: claim.slot)
                }
            }
            let unpinned = claim == nil ? slots?.unpinnedStarted(on: replica) : nil
            return UpstreamLease(
                baseURL: inner.baseURL, upstreamLabel: replica, hasAlternatives: hasAlternatives, pinnedSlot: claim?.slot,
                cacheReport: cacheReport, runtimeDied: inner.runtimeDied
            ) { [self, slots] outcome in
                inner.release(outcome)
                let said = report.withLockedValue { $0 }
                if let slots, let said { slots.learnPrefill(on: replica, report: said, blocks: chain.count) }
                if let slots, let claim {
                    // Saved only after an answer that said what it found cached: the slot then
                    // holds this prompt (a lease dropped unused also ends "completed").
                    slots.finished(chain, replica: replica, baseURL: inner.baseURL, claim: claim,
                                   completed: outcome.served && said != nil)
                }
                if let slots, let unpinned { slots.unpinnedFinished(on: replica, generation: unpinned) }
                self.finish(id, replica: replica, outcome: outcome, cachedFraction: said?.cachedFraction)
            }
        }
    }

    /// A routed and dispatched request: its id, its replica, whether another could take it, and
    /// the stored blocks to restore there.
    typealias Routed = (RequestID, String, Bool, Int)

    enum StartOrRoom: Sendable {
        case started(UpstreamLease)
        case moved(Routed)
    }

    /// The lease from `start(replica)`; or, where `replica` must start first (its process is
    /// stopped, crashed or loading: chosen because every running replica was at the load bound)
    /// and a running replica gets room before the start ends (a request there finished), the
    /// request routed again among the others and dispatched there: it goes there rather than
    /// wait out a start that may take long, or not come at all for want of memory, while another
    /// replica could serve it. (The start goes on for whoever else waits for it.) The room is
    /// found and taken under one lock, so requests waiting together do not all leave for one
    /// freed place (the others found it gone, and got 503).
    private func startOrRoom(
        _ replica: String, hasAlternatives: Bool, hints: RequestHints,
        start: @escaping @Sendable (String) async throws -> UpstreamLease
    ) async throws -> StartOrRoom {
        let mustStart = routing.withLockedValue { $0.router.snapshot(of: replica)?.starting ?? false }
        guard mustStart, hasAlternatives else { return .started(try await start(replica)) }
        return try await withThrowingTaskGroup(of: StartOrRoom.self) { group in
            group.addTask { .started(try await start(replica)) }
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(50))
                    if let routed = self.routedElsewhere(hints, besides: replica) { return .moved(routed) }
                }
            }
            let first = try await group.next()!
            group.cancelAll()
            if case .moved = first {
                // Admitted just as the room was taken: the start is done, but the request is
                // dispatched elsewhere already; the admission goes back.
                while let next = try? await group.next() {
                    if case .started(let lease) = next { lease.release(.abandoned) }
                }
            }
            return first
        }
    }

    /// The request routed and dispatched among the replicas other than `replica`, where a running
    /// one has room for it now (nil otherwise: it stays with `replica`).
    private nonisolated func routedElsewhere(_ hints: RequestHints, besides replica: String) -> Routed? {
        var elsewhere = hints
        elsewhere.excluding.insert(replica)
        return try? route(elsewhere, countingRefusals: false, ifRoomBesides: replica)
    }

    /// Chooses and dispatches: the request's id, its replica, and whether another could take it.
    /// `ifRoomBesides`: only if a running replica other than that one has room for the request
    /// now (`PrefixRouter.runningReplicaHasRoom`), checked under the same lock as the dispatch;
    /// otherwise `NoRoom`.
    private nonisolated func route(_ hints: RequestHints, countingRefusals: Bool = true, probeFollows: Bool = false,
                                   ifRoomBesides waiting: String? = nil) throws -> Routed
    {
        let restorable = slots?.restorable(hints.prompt.blocks) ?? 0
        // Pinned replicas: what their slots hold is known, and replaces the router's guess.
        let (held, computing) = slots?.holdings(hints.prompt.blocks, on: replicas) ?? ([:], [:])
        let routed = routing.withLockedValue { routing -> Result<(RequestID, RouteDecision, Counter, Bool), RouteRefusal>? in
            if let waiting, !routing.router.runningReplicaHasRoom(besides: waiting, excluding: hints.excluding) { return nil }
            if managed { readmitEjectedReplicas(&routing) }
            let decision: RouteDecision
            switch routing.router.choose(hints.prompt.blocks, session: hints.session, excluding: hints.excluding,
                                         restorable: restorable, held: held, computing: computing) {
            case .success(let chosen): decision = chosen
            case .failure(let refusal): return .failure(refusal)
            }
            let id = routing.nextRequest
            routing.nextRequest += 1
            routing.router.dispatch(id, to: decision, promptBlocks: hints.prompt.blocks, held: held[decision.replica],
                                    advancesTurn: hints.excluding.isEmpty)
            let counterKey = DecisionKey(replica: decision.replica, reason: decision.reason)
            let counter: Counter
            if let known = routing.decisionCounters[counterKey] {
                counter = known
            } else {
                counter = Counter(
                    label: "strata_route_decisions_total",
                    dimensions: [("model", model), ("replica", decision.replica), ("reason", decision.reason.rawValue)])
                routing.decisionCounters[counterKey] = counter
            }
            let hasAlternatives = routing.router.hasHealthyReplica(besides: decision.replica, excluding: hints.excluding)
            publishLoad(decision.replica, of: routing.router)
            return .success((id, decision, counter, hasAlternatives))
        }
        guard let routed else { throw NoRoom() }
        switch routed {
        case .success(let (id, decision, counter, hasAlternatives)):
            counter.increment()
            matchedFraction.record(decision.matchedFraction)
            return (id, decision.replica, hasAlternatives, decision.restoreBlocks)
        case .failure(let refusal):
            if countingRefusals && !(probeFollows && refusal == .noHealthyReplica) {
                Counter(label: "strata_route_refusals_total", dimensions: [("model", model), ("reason", "\(refusal)")]).increment()
            }
            let error = GatewayError.unavailable(
                "No replica of '\(model)' can take the request: \(Self.explain(refusal))", code: "no_replica",
                // (Saturated: a request ending frees a place any moment; down: the next probe says.)
                retryAfterSeconds: refusal == .allSaturated ? 1 : max(1, Int(settings.healthInterval.components.seconds)))
            if case .noHealthyReplica = refusal { throw RouteFailure.noHealthyReplica(error) }
            throw error
        }
    }

    private nonisolated func finish(_ id: RequestID, replica: String, outcome: LeaseOutcome, cachedFraction: Double? = nil) {
        var refused = false
        let (dropped, ejected, successor) = routing.withLockedValue { routing -> (Int, [String], ReplicaSet?) in
            let dropped = cachedFraction.map { routing.router.reportCached(id, fraction: $0) } ?? 0
            routing.router.finish(id)
            if let successor = routing.successor {
                // A replica the successor lacks (removed, draining): its load is published here.
                if successor.gauges[replica] == nil { publishLoad(replica, of: routing.router) }
                return (dropped, [], successor)
            }
            var ejected: [String] = []
            switch outcome {
            case .completed: routing.router.reportSuccess(replica)
            case .servedAfterServerErrors(let others):
                routing.router.reportSuccess(replica)
                // (Not against a managed replica: only its process's exit re-admits one, and a
                // live one answering errors is its supervisor's to judge.)
                if !managed {
                    for other in others where routing.router.reportFailure(other) {
                        ejected.append(other)
                        publishLoad(other, of: routing.router)
                    }
                }
            case .abandoned: break
            case .serverErrorUnretried:
                // Every replica let in erred: those held out after an ejection whose probes pass
                // come back now, rather than at the end of their hold.
                for (held, _) in routing.ejectedAt where routing.probePassing.contains(held) {
                    routing.ejectedAt[held] = nil
                    routing.router.markHealthy(held)
                    publishLoad(held, of: routing.router)
                }
            case .upstreamFailed: if routing.router.reportFailure(replica) { ejected.append(replica) }
            case .unreachable:
                if managed {
                    // (Its process exiting is its supervisor's to see.)
                    if routing.router.reportFailure(replica) { ejected.append(replica) }
                } else if routing.router.snapshot(of: replica)?.healthy == true {
                    // Nothing listens there: out now, as by a failed probe, until one passes.
                    routing.probePassing.remove(replica)
                    routing.router.markUnhealthy(replica)
                    refused = true
                }
            }
            for replica in ejected { routing.ejectedAt[replica] = .now }
            publishLoad(replica, of: routing.router)
            return (dropped, ejected, nil)
        }
        // Replaced by a reload: the set now routing takes the request's end (its load and what
        // it says of the replica).
        if let successor { successor.finish(id, replica: replica, outcome: outcome) }
        if dropped > 0 {
            Counter(label: "strata_route_index_corrections_total", dimensions: [("model", model), ("replica", replica)])
                .increment()
            logger.debug("replica \(replica) of \(model) had evicted what its index expected; \(dropped) older block(s) forgotten")
        }
        for replica in ejected { logger.warning("replica \(replica) of \(model) ejected after \(settings.ejectAfter) failures in a row") }
        if refused {
            logger.warning("replica \(replica) of \(model) refused the connection; out until its health check passes")
            Task { await self.refusedConnection(replica) }
        }
    }

    /// Taken for down by a refused connection: the next passing probe says it is back, and
    /// (restarted) its prefix index starts empty.
    private func refusedConnection(_ replica: String) {
        probedHealthy[replica] = false
    }

    /// Hands this set's book over to `next`, which replaces it (a reload): the load of requests
    /// in flight on replicas both have, health, and indexes (`PrefixRouter.takeOver`); those
    /// requests end in both. Replicas `next` lacks leave the metrics.
    /// `draining`: removed replicas whose runtime still runs, finishing its requests: they stay
    /// in the metrics, their load published by this set, until their process exits
    /// (`ModelController.exited` takes them out).
    nonisolated func handOver(to next: ReplicaSet, draining: Set<String> = []) {
        routing.withLockedValue { old in
            next.routing.withLockedValue { new in
                new.router.takeOver(from: old.router)
                new.nextRequest = max(new.nextRequest, old.nextRequest)
            }
            old.successor = next
        }
        retire(gauges.filter { next.gauges[$0.key] == nil && !draining.contains($0.key) })
        next.publishLoad()
    }

    /// The model is gone (a reload removed it, or made it a single runtime): its replicas
    /// leave the metrics, but for those still `draining` (as in `handOver`).
    nonisolated func retire(draining: Set<String> = []) { retire(gauges.filter { !draining.contains($0.key) }) }

    /// A removed replica's series, once its process has exited.
    static func retireMetrics(model: String, replica: String) {
        let dimensions = [("model", model), ("replica", replica)]
        for label in ["strata_replica_in_flight", "strata_replica_index_blocks", "strata_replica_healthy"] {
            Gauge(label: label, dimensions: dimensions).destroy()
        }
    }

    private nonisolated func retire(_ gauges: [String: (inFlight: Gauge, indexBlocks: Gauge, healthy: Gauge)]) {
        for gauge in gauges.values {
            gauge.inFlight.destroy()
            gauge.indexBlocks.destroy()
            gauge.healthy.destroy()
        }
    }

    /// Publishes the load of one replica (nil: all of them).
    private nonisolated func publishLoad(_ only: String? = nil) {
        // Recorded under the lock: two event loops publishing the same replica's load must not
        // leave the older figure as the last one written.
        routing.withLockedValue { routing in
            for id in only.map({ [$0] }) ?? replicas { publishLoad(id, of: routing.router) }
        }
    }

    /// Publishes one replica's load as `router` (the locked one) has it.
    private nonisolated func publishLoad(_ id: String, of router: PrefixRouter) {
        guard let snapshot = router.snapshot(of: id), let gauge = gauges[id] else { return }
        gauge.inFlight.record(snapshot.inFlight)
        gauge.indexBlocks.record(snapshot.indexedBlocks)
        gauge.healthy.record(snapshot.healthy ? 1 : 0)
    }

    nonisolated var snapshots: [ReplicaSnapshot] { routing.withLockedValue { $0.router.replicaSnapshots } }

    /// Managed replicas have no health probe to let them back after an ejection (failing to
    /// start, or to answer): one is let back once `ejectionCooldown` has passed, and all of them
    /// when none is left in, so that a request starts one again (the supervisor's restart
    /// backoff paces the tries) rather than every request getting "every replica is down" for good.
    private nonisolated func readmitEjectedReplicas(_ routing: inout Routing) {
        guard !routing.ejectedAt.isEmpty else { return }
        let now = ContinuousClock.now
        let noneIn = !replicas.contains { routing.router.snapshot(of: $0)?.healthy == true }
        for (replica, at) in routing.ejectedAt where noneIn || now - at >= ejectionCooldown {
            routing.ejectedAt[replica] = nil
            routing.router.markHealthy(replica)
        }
    }

    /// A managed replica's process is gone (stopped, evicted or crashed): its prefixes went with
    /// it. It stays eligible, behind the running replicas (a start stands before any work
    /// there): the supervisor starts a new process on the next request routed to it.
    func processExited(_ replica: String) {
        slots?.replicaRestarted(replica)
        routing.withLockedValue {
            $0.router.replicaRestarted(replica)
            $0.router.markHealthy(replica)
            $0.router.setStarting(replica, true)
        }
        publishLoad(replica)
    }

    /// A managed replica's process is ready: it serves without a start (and, ejected after
    /// failing to start, is let back: a process that came up serves).
    func processReady(_ replica: String) {
        routing.withLockedValue {
            $0.router.setStarting(replica, false)
            $0.ejectedAt[replica] = nil
            $0.router.markHealthy(replica)
        }
        publishLoad(replica)
    }

    /// A managed replica's runtime stopped answering its health check (`ModelController.watchLiveness`):
    /// no new requests go there until it answers again, or exits.
    func processUnresponsive(_ replica: String) {
        routing.withLockedValue { $0.router.markUnhealthy(replica) }
        publishLoad(replica)
    }

    /// It answers again: it serves again (unless ejected for failing requests, which their own
    /// cooldown ends).
    func processResponsive(_ replica: String) {
        routing.withLockedValue { routing in
            if routing.ejectedAt[replica] == nil { routing.router.markHealthy(replica) }
        }
        publishLoad(replica)
    }

    enum RouteFailure: Error { case noHealthyReplica(GatewayError) }
    /// No running replica has room yet (`route(_:ifRoomBesides:)`).
    struct NoRoom: Error {}

    /// Probes every upstream replica's `/health` each `health_interval` until cancelled (the
    /// supervisor watches managed replicas itself).
    func runHealthChecks() async {
        guard !managed else { return }
        checkingHealth = true
        while !Task.isCancelled {
            await probeAll()
            try? await Task.sleep(for: settings.healthInterval)
        }
    }

    /// One `/health` probe of every replica, at once (at most every 100 ms).
    /// Uses `HTTPClient.probes`, not the request client (see there).
    private func probeAll() async {
        if let lastProbe, ContinuousClock.now - lastProbe < .milliseconds(100) { return }
        lastProbe = ContinuousClock.now
        await withTaskGroup(of: (String, String?).self) { group in
            for url in replicas {
                group.addTask { (url, await HTTPClient.probeHealth(url + "/health")) }
            }
            for await (url, failure) in group { record(probe: url, failure: failure) }
        }
    }

    /// A probe's result: nil when the replica answered 200, else what went wrong.
    private func record(probe url: String, failure: String?) {
        let healthy = failure == nil
        let before = probedHealthy[url]
        probedHealthy[url] = healthy
        if healthy {
            if before == false {
                // It was down and is back: a restarted server holds none of its old prefixes.
                routing.withLockedValue { $0.router.replicaRestarted(url) }
                logger.notice("replica \(url) of \(model) is healthy again; its prefix index starts empty")
            }
            let stillOut = routing.withLockedValue { routing -> Bool in
                routing.probePassing.insert(url)
                if let at = routing.ejectedAt[url], ContinuousClock.now - at < ejectionCooldown,
                    routing.router.hasHealthyReplica(besides: url, excluding: [])
                {
                    return true
                }
                routing.ejectedAt[url] = nil
                // (Only one that is out is let back, with a clean count: a probe passing does not
                // end a run of failing requests, else a replica whose /health answers while its
                // requests fail is never ejected unless they all fall within one interval.)
                if routing.router.snapshot(of: url)?.healthy == false { routing.router.markHealthy(url) }
                return false
            }
            if stillOut, before != true {
                logger.notice("replica \(url) of \(model) passes its health check but stays out for \(ejectionCooldown) after failing requests")
            }
        } else {
            if before != false { logger.warning("replica \(url) of \(model) failed its health check (\(failure ?? ""))") }
            routing.withLockedValue {
                $0.probePassing.remove(url)
                $0.router.markUnhealthy(url)
            }
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

enum HealthProbe {
    /// How long a health probe (`HTTPClient.probeHealth`) waits for its answer.
    static let timeout: Duration = .seconds(2)
}

extension HTTPClient {
    /// For health probes: a refused connection is an answer (down), not something to retry with
    /// backoff until the timeout, as the request client does. Lives as long as the process.
    static let probes: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(1))
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// One GET of a health endpoint (`probes`): nil when it answered 200, else what went wrong.
    static func probeHealth(_ url: String) async -> String? {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        let response: HTTPClientResponse
        do {
            response = try await probes.execute(request, timeout: TimeAmount(HealthProbe.timeout))
        } catch {
            return "GET \(url): \(describe(error))"
        }
        _ = try? await response.body.collect(upTo: 1 << 16)
        return response.status == .ok ? nil : "GET \(url) answered \(response.status.code)"
    }
}
