import Foundation
import Frontend
import Logging
import Metrics
import Placer

extension ModelController: ModelBackend {
    public func listModels(policy: SubstratePolicy) async -> [ModelListing] {
        config.models.filter { model in
            ([model.name] + model.fallbacks).contains { name in
                config.models.first { $0.name == name }.map { policy.admits(config.substrateTags(of: $0)) } ?? false
            }
        }.map { model in
            switch model.serving {
            case .managed:
                // With replicas, the best of their states: ready if any is.
                ModelListing(id: model.name, status: model.placerNames.map {
                    placer.snapshot(of: $0)?.phase.publicStatus ?? "stopped"
                }.min { Self.statusRank($0) < Self.statusRank($1) } ?? "stopped")
            case .replicas:
                // Health-checked: "unavailable" while every replica is down (failed health
                // checks or ejected after errors), as a request would then be told.
                ModelListing(id: model.name, status: replicaSets[model.name].map { set in
                    set.snapshots.contains(where: \.healthy) ? "ready" : "unavailable"
                } ?? "ready")
            case .upstream:
                ModelListing(id: model.name, status: "ready")
            }
        }
    }

    public nonisolated func routesByPrompt(model: String) -> Bool {
        immediateRoutes.current.replicaSets[model] != nil
    }

    public nonisolated var admitsAnyImmediately: Bool {
        let routes = immediateRoutes.current
        return !routes.shuttingDown && !routes.routes.isEmpty
    }

    /// A lease without waiting where `acquire` would hand out the same at once: the model is an
    /// upstream or a set of upstream replicas, the request's policy allows it, and (for
    /// replicas) one can take the request now. Managed runtimes are admitted by the Placer on
    /// this actor, and everything else (spillover, refusals and their errors) is `acquire`'s.
    public nonisolated func acquireImmediately(model: String, hints: RequestHints) -> UpstreamLease? {
        let routes = immediateRoutes.current
        guard !routes.shuttingDown, let route = routes.routes[model],
            hints.policy.admits(route.tags)
        else { return nil }
        switch route.target {
        case .upstream(let url, let headers, let upstreamModel, let label):
            return UpstreamLease(baseURL: url, headers: headers, upstreamModel: upstreamModel, upstreamLabel: label,
                                 price: route.price) { _ in }
        case .replicas(let set):
            return set.acquireImmediately(hints: hints, price: route.price)
        }
    }

    /// Serves `model`, or one of its fallbacks when the request's policy does not allow it or it
    /// cannot serve (no room, failed, no replica, or not ready within `spill_after`). Every
    /// spillover is counted (`strata_spillover_total{model,to,reason}`) and logged with its
    /// reason; a model the policy forbids is never tried, and when the policy forbids them all
    /// the answer is a 503 naming the tags.
    public func acquire(model: String, hints: RequestHints) async throws -> UpstreamLease {
        guard let modelConfig = config.models.first(where: { $0.name == model }) else {
            throw GatewayError.modelNotFound(model)
        }
        if shuttingDown {
            throw GatewayError.unavailable("Strata is shutting down", code: "shutting_down", retryAfterSeconds: 5)
        }
        let arrived = ContinuousClock.now
        /// A model Strata starts, tried after the first: it waits only what is left of the
        /// request's queue_timeout, counted from its arrival, not a whole one again.
        func acquireInTheRest(_ candidate: ModelConfiguration) async throws -> UpstreamLease {
            guard case .managed = candidate.serving else { return try await acquire(candidate, hints: hints) }
            let queueTimeout = config.supervisor.queueTimeout
            let left = queueTimeout - (ContinuousClock.now - arrived)
            return try await acquire(candidate, hints: hints, within: max(left, .milliseconds(100))) {
                let reason = candidate.placerNames.lazy.compactMap { self.placer.waitReason(of: $0, now: self.now) }.first
                return .unavailable(
                    "'\(candidate.name)' did not become ready within what was left of the request's "
                        + "\(queueTimeout) (supervisor.queue_timeout)" + (reason.map { ": \($0)" } ?? ""),
                    code: "model_not_ready", retryAfterSeconds: 5)
            }
        }
        let chain = [modelConfig] + modelConfig.fallbacks.compactMap { name in config.models.first { $0.name == name } }
        var refusals: [String] = []
        var spillReason: String?
        /// The model's own failure (not its spill_after running out), when it was tried first.
        var primaryFailure: GatewayError?
        // The policy decides first: a substrate it forbids is never tried, so `spill_after`
        // bounds the wait only when another allowed substrate could take the request.
        let allowed = chain.filter { candidate in
            guard let violation = hints.policy.violation(by: config.substrateTags(of: candidate)) else { return true }
            refusals.append("'\(candidate.name)' \(violation)")
            return false
        }
        if allowed.first?.name != model { spillReason = "policy" }
        for (position, candidate) in allowed.enumerated() {
            let isLast = position == allowed.count - 1
            if position > 0, allowed[0].name == model, !canTakeSpill(candidate, from: allowed[0]) {
                // Spilling there would stop the model this request waits for (the same device,
                // no room for both): the two would swap on every request, and neither serve.
                refusals.append("'\(candidate.name)' does not fit device '\(candidate.device)' beside '\(model)' and the pinned models")
                if !allowed[(position + 1)...].contains(where: { canTakeSpill($0, from: allowed[0]) }) {
                    // No fallback can take it: the model's own failure, with why none could
                    // (one that failed is not tried again: it would answer the same); one still
                    // starting (past spill_after) is waited for.
                    if var error = primaryFailure {
                        error.message = "'\(model)' could not serve this request: \(refusals.joined(separator: "; "))"
                        throw error
                    }
                    let lease = try await acquireInTheRest(allowed[0])
                    return lease.serving(model: nil, price: config.price(of: allowed[0]))
                }
                continue
            }
            do {
                let lease: UpstreamLease
                if candidate.name == model, !isLast, let wait = candidate.spillAfter {
                    lease = try await acquire(candidate, hints: hints, within: wait) {
                        .unavailable("'\(candidate.name)' was not ready within spill_after \(wait)", code: "spill_timeout", retryAfterSeconds: 1)
                    }
                } else if position > 0 {
                    lease = try await acquireInTheRest(candidate)
                } else {
                    lease = try await acquire(candidate, hints: hints)
                }
                if candidate.name != model {
                    let reason = spillReason ?? "unavailable"
                    Counter(label: "strata_spillover_total", dimensions: [("model", model), ("to", candidate.name), ("reason", reason)])
                        .increment()
                    logger.notice("request spilled over", metadata: [
                        "model": "\(model)", "to": "\(candidate.name)", "reason": "\(reason)", "tenant": "\(hints.tenant)",
                        "detail": "\(refusals.joined(separator: "; "))",
                    ])
                }
                return lease.serving(model: candidate.name != model ? candidate.name : nil, price: config.price(of: candidate))
            } catch let error as GatewayError where !isLast && [502, 503].contains(error.status.code) {
                refusals.append("'\(candidate.name)': \(error.message)")
                if candidate.name == model && error.code != "spill_timeout" { primaryFailure = error }
                spillReason = spillReason ?? (error.code == "spill_timeout" ? "timeout" : "unavailable")
            } catch var error as GatewayError where candidate.name != model && [502, 503].contains(error.status.code) {
                // The last fallback failed too: the answer names the model asked for and why each
                // candidate could not take it, not only the last one's reason.
                Counter(label: "strata_spillover_total",
                        dimensions: [("model", model), ("to", candidate.name), ("reason", "failed")]).increment()
                error.message = "'\(model)' could not serve this request (\(refusals.joined(separator: "; "))), "
                    + "nor its fallback '\(candidate.name)': \(error.message)"
                throw error
            }
        }
        // (Reached only when the policy forbids every candidate: the last allowed one's failure
        // is thrown above.) Nothing changes by waiting, so a 403 with no Retry-After: a client
        // that retries a 503 would only wait to be told the same.
        Counter(label: "strata_policy_refusals_total", dimensions: [("model", model), ("tenant", hints.tenant)]).increment()
        throw GatewayError(
            status: .forbidden, type: "invalid_request_error", code: "policy_forbidden",
            message: "No substrate this request may use can serve '\(model)' (\(hints.policy)): \(refusals.joined(separator: "; "))")
    }

    /// Whether `fallback` can take a request that spilled from `primary` without stopping it:
    /// it is not a runtime Strata places, it is ready, it is on another device, or it fits
    /// beside what that device holds now (the primary's start included).
    /// Room held by other models is not counted: the Placer evicts idle ones for the fallback as
    /// for any start (it once was, and a fallback that needed an idle model evicted was skipped
    /// though the primary, failed, held nothing: the request got the primary's 502). What
    /// cannot go for it is the primary (it would swap with the fallback on every request) and
    /// the pinned models.
    func canTakeSpill(_ fallback: ModelConfiguration, from primary: ModelConfiguration) -> Bool {
        guard case .managed = fallback.serving, case .managed = primary.serving, fallback.device == primary.device else { return true }
        if fallback.placerNames.contains(where: { placer.snapshot(of: $0)?.phase == .ready }) {
            return true
        }
        guard let device = placer.deviceSnapshots.first(where: { $0.name == fallback.device }) else { return true }
        let snapshots = placer.modelSnapshots.filter { $0.device == device.name }
        // The primary's replicas in their restart backoff hold nothing and want nothing now.
        let primaryBytes = snapshots.filter { primary.placerNames.contains($0.name) && $0.phase.publicStatus != "failed" }.reduce(0) { $0 + $1.memoryBytes }
        let pinnedBytes = snapshots.filter { $0.pinned && $0.phase.holdsMemory && !primary.placerNames.contains($0.name)
            && !fallback.placerNames.contains($0.name) }.reduce(0) { $0 + $1.memoryBytes }
        return primaryBytes + pinnedBytes + fallback.memoryBytes <= device.budgetBytes
    }

    /// `acquire` bounded by `wait`; past it, `timeout()` is thrown (the waiting request is withdrawn).
    private func acquire(_ modelConfig: ModelConfiguration, hints: RequestHints, within wait: Duration,
                         else timeout: () -> GatewayError) async throws -> UpstreamLease
    {
        try await withThrowingTaskGroup(of: UpstreamLease?.self) { group in
            group.addTask { try await self.acquire(modelConfig, hints: hints) }
            group.addTask {
                try await Task.sleep(for: wait)
                return nil
            }
            if let lease = try await group.next() ?? nil {
                group.cancelAll()
                return lease
            }
            // Timed out: withdraw the wait. A lease it still won (the group waits for it anyway)
            // carried no request, so it is released as abandoned: no success counted, nothing
            // learned about the replica's cache.
            group.cancelAll()
            while let late = try? await group.next() { late?.release(.abandoned) }
            throw timeout()
        }
    }

    private func acquire(_ modelConfig: ModelConfiguration, hints: RequestHints) async throws -> UpstreamLease {
        let model = modelConfig.name
        switch modelConfig.serving {
        case .managed where modelConfig.replicaCount > 1:
            guard let replicas = replicaSets[model] else { throw GatewayError.modelNotFound(model) }
            return try await replicas.acquire(hints: hints) { replica in try await self.acquireManaged(model: replica) }
        case .managed:
            return try await acquireManaged(model: model)
        case .upstream(let runtimeName, let upstreamModel):
            guard let (url, headers) = config.upstream(runtimeName) else {
                throw GatewayError.badGateway("runtime '\(runtimeName)' is not an upstream")
            }
            return UpstreamLease(baseURL: url, headers: headers, upstreamModel: upstreamModel, upstreamLabel: runtimeName) {}
        case .replicas:
            guard let replicas = replicaSets[model] else { throw GatewayError.modelNotFound(model) }
            return try await replicas.acquire(hints: hints)
        }
    }

    public func adminStatus() async -> AdminStatus {
        var replicaStates: [String: [AdminStatus.Replica]] = [:]
        for (name, replicas) in replicaSets {
            replicaStates[name] = replicas.snapshots.map {
                AdminStatus.Replica(url: $0.id, healthy: $0.healthy, in_flight: $0.inFlight, queued_blocks: $0.queuedWork,
                                    index_blocks: $0.indexedBlocks, consecutive_failures: $0.consecutiveFailures,
                                    running: !$0.starting)
            }
        }
        let models = config.models.flatMap { model -> [AdminStatus.Model] in
            switch model.serving {
            case .managed(let runtime, _, _):
                // One entry per process: `name`, or `name#i` for each replica.
                return model.placerNames.map { name in
                    let snapshot = placer.snapshot(of: name)
                    let instance = instances[name]
                    var entry = AdminStatus.Model(
                        name: name, status: snapshot?.phase.publicStatus ?? "stopped",
                        phase: snapshot.map { Self.describe($0.phase, now: now) } ?? "stopped", runtime: runtime, device: model.device,
                        memory_bytes: snapshot?.memoryBytes ?? model.memoryBytes, in_flight: snapshot?.inFlight ?? 0, waiting: snapshot?.waiting ?? 0,
                        loads: snapshot?.loads ?? 0, pid: instance.map { $0.process.pid },
                        upstream: instance.map { "http://127.0.0.1:\($0.process.port)" }, last_error: lastError[name],
                        // (Its own routing state, under its Placer name.)
                        replicas: model.replicaCount > 1 ? replicaStates[model.name]?.filter { $0.url == name } : nil)
                    entry.measured_bytes = snapshot?.measuredBytes
                    entry.priority = model.priority
                    return entry
                }
            case .upstream(let runtime, _):
                let url: String? = if case .upstream(let url, _) = config.runtimes[runtime]?.kind { url } else { nil }
                return [AdminStatus.Model(
                    name: model.name, status: "ready", phase: "upstream", runtime: runtime, device: nil, memory_bytes: nil,
                    in_flight: 0, waiting: 0, loads: 0, pid: nil, upstream: url, last_error: nil)]
            case .replicas(let urls):
                let replicas = replicaStates[model.name] ?? []
                return [AdminStatus.Model(
                    name: model.name, status: replicas.contains(where: \.healthy) ? "ready" : "unavailable", phase: "replicas",
                    runtime: nil, device: nil, memory_bytes: nil, in_flight: replicas.reduce(0) { $0 + $1.in_flight },
                    waiting: 0, loads: 0, pid: nil, upstream: urls.joined(separator: ","), last_error: nil, replicas: replicas)]
            }
        }
        // Runtimes of models or replicas a reload removed, still finishing their requests: they
        // hold memory and serve until they stop.
        let configured = Set(config.models.flatMap(\.placerNames))
        let leaving = instances.keys.filter { !configured.contains($0) }.sorted().compactMap { name -> AdminStatus.Model? in
            guard let snapshot = placer.snapshot(of: name), let instance = instances[name] else { return nil }
            return AdminStatus.Model(
                name: name, status: "removed", phase: Self.describe(snapshot.phase, now: now), runtime: nil, device: snapshot.device,
                memory_bytes: snapshot.memoryBytes, in_flight: snapshot.inFlight, waiting: snapshot.waiting, loads: snapshot.loads,
                pid: instance.process.pid, upstream: "http://127.0.0.1:\(instance.process.port)", last_error: lastError[name])
        }
        let devices = placer.deviceSnapshots.map {
            AdminStatus.Device(name: $0.name, budget_bytes: $0.budgetBytes, used_bytes: $0.usedBytes)
        }
        let runtimes = config.runtimes.keys.sorted().map { name in
            AdminStatus.Runtime(
                name: name, kind: config.runtimes[name]!.kindName,
                running: config.models.flatMap { model -> [String] in
                    guard case .managed(let runtime, _, _) = model.serving, runtime == name else { return [] }
                    return model.placerNames.filter { instances[$0] != nil }
                })
        }
        return AdminStatus(models: models + leaving, devices: devices, runtimes: runtimes)
    }

    /// Loads (or unloads) the model, every replica of it, or one replica named `name#i`.
    public func load(model: String) async throws {
        for name in try requireManaged(model) {
            send(.load(model: name))
            // The Placer starts it, or keeps the load waiting (for room that eviction will make,
            // for a priority or residency to allow it, for a backoff), or drops it: a model that
            // cannot fit beside the pinned ones on its device ever. That is said, not accepted.
            // (Waiting shows as the load's own waiter: requests waiting for the model may just
            // have been refused with it.)
            guard let snapshot = placer.snapshot(of: name), !snapshot.phase.holdsMemory, !snapshot.loadWaiting,
                let modelConfig = config.model(placerName: name)
            else { continue }
            if case .failed = snapshot.phase { continue }
            let device = placer.deviceSnapshots.first { $0.name == modelConfig.device }
            throw GatewayError(
                status: .conflict, type: "server_error", code: "insufficient_memory",
                message: "'\(name)' (\(ConfigUnits.formatBytes(snapshot.memoryBytes))) cannot fit on device '\(modelConfig.device)'"
                    + (device.map { " (budget \(ConfigUnits.formatBytes($0.budgetBytes)))" } ?? "") + " beside the pinned models")
        }
    }

    public func unload(model: String) async throws {
        // A runtime a reload removed is on its way out already: it stops once its requests end.
        if config.model(placerName: model) == nil, instances[model] != nil { return }
        for name in try requireManaged(model) { send(.unload(model: name)) }
    }

    /// The Placer names `model` stands for.
    private func requireManaged(_ model: String) throws -> [String] {
        guard let modelConfig = config.model(placerName: model) else {
            if instances[model] != nil {
                throw GatewayError(
                    status: .conflict, type: "invalid_request_error", code: "model_removed",
                    message: "'\(model)' was removed from the config by a reload: it finishes the requests it has and stops")
            }
            throw GatewayError.modelNotFound(model)
        }
        guard case .managed = modelConfig.serving else {
            throw GatewayError.badRequest("'\(model)' is served by an upstream Strata does not start; it cannot be loaded or unloaded",
                                          code: "not_managed")
        }
        return model == modelConfig.name ? modelConfig.placerNames : [model]
    }

    /// Orders public statuses from most to least able to serve.
    static func statusRank(_ status: String) -> Int {
        ["ready", "loading", "stopped", "failed"].firstIndex(of: status) ?? 4
    }

    /// The phase in words (a failure's detail is `last_error`; here, when the next start comes).
    static func describe(_ phase: ModelPhase, now: Duration) -> String {
        switch phase {
        case .stopped: "stopped"
        case .staging: "staging weights"
        case .starting: "starting"
        case .ready: "ready"
        case .draining(let reason): "draining (\(reason))"
        case .stopping(let reason): "stopping (\(reason))"
        case .failed(let retryAt, _) where retryAt > now:
            "failed, no start for another \(Int((retryAt - now).seconds.rounded(.up)))s"
        case .failed: "failed, starts again when needed"
        }
    }
}
