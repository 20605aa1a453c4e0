import AsyncHTTPClient
import Foundation
import Frontend
import Glibc
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Placer

/// Carries out the Placer's decisions: spawns and stops runtime processes, checks their health,
/// and admits or rejects waiting requests. All Placer events pass through this actor, so the
/// Placer sees them in one order.
public actor ModelController {
    struct Instance {
        var id: UInt64
        var process: RuntimeProcess
        var startedAt: ContinuousClock.Instant
        var healthTask: Task<Void, Never>?
        var killTask: Task<Void, Never>?
        /// Why it was killed as hung (`watchLiveness`), for the error its exit reports.
        var hungKilled: String?
        /// The weights file it was started on, as it was then (`FileIdentity`).
        var weights: FileIdentity?
    }

    /// A file as it is now: a path, and the inode behind it (replaced: another inode, or none).
    struct FileIdentity: Equatable {
        var path: String
        var device: UInt64
        var inode: UInt64

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            self.path = path
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
        }
    }

    /// Replaced by a config reload (`reconfigure(to:)`).
    var config: StrataConfiguration
    let httpClient: HTTPClient
    let logger: Logger
    let clock = ContinuousClock()
    let origin: ContinuousClock.Instant
    var placer: Placer
    var waiting: [RequestID: CheckedContinuation<Admission, any Error>] = [:]

    /// Where an admitted request goes: the runtime instance and its base URL.
    struct Admission {
        var instanceID: UInt64
        var baseURL: String
    }
    var instances: [String: Instance] = [:]
    /// Starts decided but not yet spawned (finding the weights' file), by instance id.
    var pendingStarts: [String: UInt64] = [:]
    /// Recent placement decisions, for `/admin/placements`.
    var placements = PlacementLog()
    var warnedTiersUnavailable = false
    var lastError: [String: String] = [:]
    /// Sizes of weights the config cannot give (http and s3 sources), by model name, as staged.
    var learnedWeightBytes: [String: UInt64] = [:]
    var nextRequestID: RequestID = 1
    var nextInstanceID: UInt64 = 1
    /// Models routed across replicas (upstreams, or `replicas` above 1), each with its router.
    var replicaSets: [String: ReplicaSet]
    /// What `routesByPrompt` and `acquireImmediately` read without a hop to this actor; made
    /// anew whenever the config, the replica sets or shutdown change (`publishImmediateRoutes`).
    nonisolated let immediateRoutes: ImmediateRoutesBox
    /// Health checks of upstream replica sets, by model.
    var healthChecks: [String: Task<Void, Never>] = [:]
    /// Set while `runTicks` runs: replica sets added by a reload start their checks at once.
    var healthChecksRunning = false
    var shuttingDown = false
    /// The storage tiers, for staging weights (nil: runtimes open their source files).
    let tiers: TierService?
    /// Stagings into host RAM the Placer asked for, by Placer model name.
    var stagingTasks: [String: (id: UInt64, task: Task<Void, Never>)] = [:]

    init(config: StrataConfiguration, httpClient: HTTPClient, logger: Logger, tiers: TierService? = nil) {
        self.config = config
        self.tiers = tiers
        self.httpClient = httpClient
        self.logger = logger
        self.origin = clock.now
        self.placer = Placer(configuration: config.placerConfiguration)
        var sets: [String: ReplicaSet] = [:]
        for model in config.models {
            let policy = model.routing ?? config.routing.policy
            switch model.serving {
            case .replicas(let urls):
                sets[model.name] = ReplicaSet(model: model.name, replicas: urls, managed: false, policy: policy,
                                              settings: config.routing, logger: logger)
            case .managed where model.replicaCount > 1:
                sets[model.name] = ReplicaSet(model: model.name, replicas: model.placerNames, managed: true, policy: policy,
                                              settings: config.routing, logger: logger,
                                              slots: Self.slotCache(for: model, config: config, tiers: tiers, httpClient: httpClient,
                                                                    logger: logger))
            default:
                continue
            }
        }
        self.replicaSets = sets
        self.immediateRoutes = ImmediateRoutesBox(ImmediateRoutes(config: config, replicaSets: sets, shuttingDown: false))
    }

    func publishImmediateRoutes() {
        let routes = ImmediateRoutes(config: config, replicaSets: replicaSets, shuttingDown: shuttingDown)
        immediateRoutes.publish(routes)
    }

    var now: Duration { clock.now - origin }

    /// The KV save/restore of a model with `kv_restore` (nil without it, or without tiers).
    static func slotCache(for model: ModelConfiguration, config: StrataConfiguration, tiers: TierService?,
                          httpClient: HTTPClient, logger: Logger) -> SlotCache? {
        guard model.kvRestore, let tiers, case .managed(let runtimeName, _, let args) = model.serving,
            let runtime = config.runtimes[runtimeName]
        else { return nil }
        let arguments = runtime.arguments + args
        // The llama-server build too (its path, size and change time): a saved slot is restored
        // only into the build that wrote it, whose KV layout it has.
        var build: [String] = []
        if case .llamaServer(let binary, _) = runtime.kind {
            var info = stat()
            build = [binary] + (stat(binary, &info) == 0 ? ["\(info.st_size)", "\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"] : [])
        }
        return SlotCache(
            model: model.name,
            fingerprint: SlotCache.fingerprint(source: model.source, weightBytes: model.weightBytes, arguments: build + arguments),
            slotsPerReplica: SlotCache.parallelSlots(in: arguments) ?? SlotCache.defaultSlots,
            directory: config.stateDirectory + "/slots", tiers: tiers, httpClient: httpClient, logger: logger)
    }

    /// Feeds one event to the Placer and carries out what it decides.
    func send(_ event: PlacerEvent) {
        let devicesBefore = placer.deviceSnapshots
        let hostBefore = placer.hostWeightsUsedBytes
        let actions = placer.handle(event, now: now)
        if !actions.isEmpty {
            placements.record(
                event: event, actions: actions, devicesBefore: devicesBefore, devicesAfter: placer.deviceSnapshots,
                hostBefore: hostBefore, hostAfter: placer.hostWeightsUsedBytes,
                hostBudget: placer.configuration.hostWeightsBudget, snapshot: { self.placer.snapshot(of: $0) })
        }
        for action in actions { perform(action) }
    }

    /// Admin: the Placer's recent decisions (`GET /admin/placements`).
    public func placementLog() async throws -> Data {
        struct Body: Encodable {
            var placements: [PlacementLog.Entry]
            var admissions: Int
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(Body(placements: placements.entries, admissions: placements.admissions))
    }

    func perform(_ action: PlacerAction) {
        switch action {
        case .start(let model):
            start(model)
        case .stop(let model, let reason):
            stop(model, reason: reason)
        case .admit(let id, let model):
            guard let continuation = waiting.removeValue(forKey: id) else {
                // The client left between decision and admission: give the slot back.
                send(.finished(id))
                return
            }
            guard let instance = instances[model] else {
                continuation.resume(throwing: GatewayError.badGateway("runtime for '\(model)' vanished"))
                send(.finished(id))
                return
            }
            continuation.resume(returning: Admission(instanceID: instance.id, baseURL: "http://127.0.0.1:\(instance.process.port)/v1"))
        case .reject(let id, let model, let rejection):
            waiting.removeValue(forKey: id)?.resume(throwing: Self.gatewayError(rejection, model: model))
        case .stage(let model):
            beginStaging(model)
        case .releaseWeights(let model):
            releaseWeights(model)
        }
    }

    // MARK: Requests

    func acquireManaged(model: String) async throws -> UpstreamLease {
        let id = nextRequestID
        nextRequestID += 1
        let admission: Admission = try await withTaskCancellationHandler {
            // Runs on this actor without suspending, so a cancellation handler's hop to the
            // actor always finds the waiter registered (or already answered).
            try await withCheckedThrowingContinuation { continuation in
                waiting[id] = continuation
                send(.request(id, model: model))
            }
        } onCancel: {
            Task { await self.cancelWaiting(id) }
        }
        return UpstreamLease(
            baseURL: admission.baseURL, upstreamLabel: "\(model)@\(admission.baseURL)",
            runtimeDied: { [weak self] in await self?.runtimeDied(model, instanceID: admission.instanceID) ?? false }
        ) { [weak self] _ in
            guard let self else { return }
            Task { await self.send(.finished(id)) }
        }
    }

    /// Whether the runtime instance `instanceID` of `model` is gone, or goes within `within`:
    /// a request to it failed before any answer, and its process exiting is noticed (and the
    /// instance forgotten) a moment after the connection breaks. A runtime that is still
    /// running after that refused the request itself; sending it again would not help.
    func runtimeDied(_ model: String, instanceID: UInt64, within: Duration = .seconds(1)) async -> Bool {
        let deadline = ContinuousClock.now + within
        while instances[model]?.id == instanceID {
            // (A client that left cancels the wait: the sleep below would no longer sleep.)
            guard ContinuousClock.now < deadline, !Task.isCancelled else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    private func cancelWaiting(_ id: RequestID) {
        guard let continuation = waiting.removeValue(forKey: id) else { return }   // already admitted or rejected
        continuation.resume(throwing: CancellationError())
        send(.cancel(id))
    }

    static func gatewayError(_ rejection: Rejection, model: String) -> GatewayError {
        // A replica (`name#i`) is named with the model the client asked for.
        let base = ModelConfiguration.modelName(ofPlacerName: model)
        let shown = base == model ? "'\(model)'" : "'\(base)' (its replica '\(model)')"
        switch rejection {
        case .unknownModel:
            return .modelNotFound(base)
        case .queueFull(let limit):
            return .unavailable(
                "Too many requests are waiting for \(shown) (limit \(limit), supervisor.max_queued)",
                code: "queue_full", retryAfterSeconds: 1)
        case .timedOut(let waited, let retryAfter, let reason):
            return .unavailable(
                "\(shown) did not become ready within \(String(format: "%.1f", waited.seconds))s (supervisor.queue_timeout)"
                    + (reason.map { ": \($0)" } ?? ""),
                code: "model_not_ready", retryAfterSeconds: max(1, Int(retryAfter.seconds.rounded(.up))))
        case .doesNotFit(let need, let device, let budget, let pinned):
            return .unavailable(
                "\(shown) needs \(ConfigUnits.formatBytes(need)) on device '\(device)', whose budget is "
                    + "\(ConfigUnits.formatBytes(budget)) with \(ConfigUnits.formatBytes(pinned)) held by pinned models",
                code: "insufficient_memory", retryAfterSeconds: 30)
        case .runtimeFailed(let detail):
            return .badGateway("The runtime for \(shown) failed: \(detail)")
        }
    }

    // MARK: Runtime processes

    private func start(_ model: String) {
        // Memory freed by a stop during shutdown must not start anything new.
        guard !shuttingDown else {
            send(.runtimeExited(model: model, detail: "Strata is shutting down"))
            return
        }
        guard let modelConfig = config.model(placerName: model),
            case .managed(let runtimeName, let localPath, let modelArgs) = modelConfig.serving,
            let runtime = config.runtimes[runtimeName]
        else {
            send(.runtimeExited(model: model, detail: "no managed runtime configured"))
            return
        }
        let id = nextInstanceID
        nextInstanceID += 1
        pendingStarts[model] = id
        // Finding the weights' file may wait on the tiers opening, or on a copy to disk.
        Task {
            let path: Result<String, any Error>
            if let found = await self.weightsPath(for: modelConfig, localPath: localPath) {
                path = .success(found)
            } else {
                do { path = .success(try await self.stageToDisk(modelConfig)) } catch { path = .failure(error) }
            }
            self.spawn(model, id: id, runtime: runtime, modelPath: path, modelArgs: modelArgs)
        }
    }

    private func spawn(
        _ model: String, id: UInt64, runtime: RuntimeConfiguration, modelPath: Result<String, any Error>, modelArgs: [String]
    ) {
        // Stopped (unloaded, shut down) while the path was being found: nothing to start.
        guard pendingStarts.removeValue(forKey: model) == id else { return }
        guard !shuttingDown else {
            send(.runtimeExited(model: model, detail: "Strata is shutting down"))
            return
        }
        let process: RuntimeProcess
        do {
            let modelPath = try modelPath.get()
            let port = try RuntimeProcess.freePort()
            var extraArgs = modelArgs
            if let base = config.model(placerName: model), let slots = replicaSets[base.name]?.slots {
                // KV save and restore: a directory for the slot files, and a known slot count.
                let directory = slots.slotDirectory(of: model)
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                extraArgs += ["--slot-save-path", directory]
                if SlotCache.parallelSlots(in: runtime.arguments + modelArgs) == nil {
                    extraArgs += ["--parallel", String(SlotCache.defaultSlots)]
                }
            }
            // A replica (`name#i`) serves under its model's name: llama-server answers with its
            // --alias as the response's `model`, and a runtime that checks the name (vLLM's
            // --served-model-name ${MODEL_NAME}) sees the one clients send.
            let served = config.model(placerName: model)?.name ?? model
            let argv = Self.commandLine(runtime: runtime, model: served, modelPath: modelPath, modelArgs: extraArgs, port: port)
            var environment = ProcessInfo.processInfo.environment
            environment.merge(runtime.environment) { $1 }
            let logPath = "\(config.stateDirectory)/logs/\(model).log"
            process = try RuntimeProcess.spawn(argv: argv, environment: environment, port: port, logPath: logPath)
            logger.info("starting runtime", metadata: [
                "model": "\(model)", "pid": "\(process.pid)", "port": "\(port)", "log": "\(logPath)"])
        } catch {
            lastError[model] = "\(error)"
            logger.error("cannot start runtime", metadata: ["model": "\(model)", "error": "\(error)"])
            Counter(label: "strata_loads_total", dimensions: [("model", model), ("result", "failed")]).increment()
            send(.runtimeExited(model: model, detail: "\(error)"))
            return
        }
        var instance = Instance(id: id, process: process, startedAt: clock.now)
        if case .success(let path) = modelPath { instance.weights = FileIdentity(path: path) }
        instance.healthTask = Task { [healthURL = "http://127.0.0.1:\(process.port)\(runtime.healthPath)"] in
            await self.pollHealth(model: model, instanceID: id, port: process.port, url: healthURL)
        }
        instances[model] = instance
        Task {
            let how = await process.waitForExit()
            self.exited(model: model, instanceID: id, how: how)
        }
    }

    static func commandLine(runtime: RuntimeConfiguration, model: String, modelPath: String, modelArgs: [String], port: Int)
        -> [String]
    {
        let argv: [String]
        switch runtime.kind {
        case .llamaServer(let binary, let args):
            argv = [binary, "--model", modelPath, "--host", "127.0.0.1", "--port", "${PORT}", "--alias", model] + args + modelArgs
        case .command(let template):
            argv = template + modelArgs
        case .upstream:
            argv = []
        }
        return argv.map {
            $0.replacingOccurrences(of: "${PORT}", with: String(port))
                .replacingOccurrences(of: "${HOST}", with: "127.0.0.1")
                .replacingOccurrences(of: "${MODEL_PATH}", with: modelPath)
                .replacingOccurrences(of: "${MODEL_NAME}", with: model)
        }
    }

    private func pollHealth(model: String, instanceID: UInt64, port: Int, url: String) async {
        // Wait for the port with plain connects first: the HTTP client's pool backs off after
        // refused connections (100 ms and growing), which would delay noticing readiness.
        while !Task.isCancelled && !RuntimeProcess.portAccepts(port) {
            try? await Task.sleep(for: config.supervisor.healthInterval)
        }
        while !Task.isCancelled {
            var request = HTTPClientRequest(url: url)
            request.method = .GET
            if let response = try? await httpClient.execute(request, timeout: .seconds(2)) {
                _ = try? await response.body.collect(upTo: 1 << 20)
                if response.status == .ok {
                    healthy(model: model, instanceID: instanceID)
                    await watchLiveness(model: model, instanceID: instanceID, url: url)
                    return
                }
            }
            try? await Task.sleep(for: config.supervisor.healthInterval)
        }
    }

    /// A ready runtime keeps answering its health check (`supervisor.liveness_interval`); one
    /// that stops (hung, stopped with SIGSTOP, wedged in a driver) held its requests until
    /// `upstream_timeout` and, as a replica, kept getting new ones. Two failed probes in a row
    /// take a replica out of routing until it answers again; `supervisor.hang_timeout` without an
    /// answer kills it (its requests fail at once instead of waiting; it restarts when needed, as
    /// after a crash). Ends when the instance stops (`stop` cancels the task) or exits.
    private func watchLiveness(model: String, instanceID: UInt64, url: String) async {
        var failures = 0
        var failingSince: ContinuousClock.Instant?
        while !Task.isCancelled {
            let settings = config.supervisor
            guard settings.livenessInterval > .zero else { return }
            try? await Task.sleep(for: settings.livenessInterval)
            guard !Task.isCancelled, instances[model]?.id == instanceID else { return }
            let probed = ContinuousClock.now
            let failure = await HTTPClient.probeHealth(url)
            guard !Task.isCancelled, let instance = instances[model], instance.id == instanceID else { return }
            guard let failure else {
                if failures >= 2 {
                    logger.notice("runtime answers its health check again", metadata: ["model": "\(model)"])
                    if let replicas = replicaSet(of: model) { await replicas.processResponsive(model) }
                }
                failures = 0
                failingSince = nil
                continue
            }
            failures += 1
            let since = failingSince ?? probed
            failingSince = since
            if failures == 2 {
                logger.warning("runtime does not answer its health check (\(failure))", metadata: ["model": "\(model)"])
                if let replicas = replicaSet(of: model) { await replicas.processUnresponsive(model) }
            }
            let silent = ContinuousClock.now - since
            if settings.hangTimeout > .zero, failures >= 2, silent >= settings.hangTimeout {
                let why = "did not answer its health check for \(Int(silent.seconds))s (supervisor.hang_timeout): killed as hung"
                logger.error("runtime hung; killing it", metadata: ["model": "\(model)", "pid": "\(instance.process.pid)"])
                instances[model]?.hungKilled = why
                Counter(label: "strata_runtime_hangs_total", dimensions: [("model", model)]).increment()
                instance.process.signalGroup(SIGKILL)
                return
            }
        }
    }

    /// The replica set `model` (a Placer name) is a replica of, if it is one.
    private func replicaSet(of model: String) -> ReplicaSet? {
        guard let base = config.model(placerName: model), base.replicaCount > 1 else { return nil }
        return replicaSets[base.name]
    }

    private func healthy(model: String, instanceID: UInt64) {
        guard let instance = instances[model], instance.id == instanceID else { return }
        let seconds = (clock.now - instance.startedAt).seconds
        logger.info("runtime ready", metadata: ["model": "\(model)", "load_seconds": "\(String(format: "%.2f", seconds))"])
        Counter(label: "strata_loads_total", dimensions: [("model", model), ("result", "ok")]).increment()
        Metrics.Timer(label: "strata_load_duration_seconds", dimensions: [("model", model)])
            .record(duration: clock.now - instance.startedAt)
        lastError[model] = nil
        send(.runtimeReady(model: model))
        if let base = config.model(placerName: model), base.replicaCount > 1, let replicas = replicaSets[base.name] {
            Task { await replicas.processReady(model) }
        }
        measureFootprints(only: model)
    }

    private func exited(model: String, instanceID: UInt64, how: String) {
        guard let instance = instances[model], instance.id == instanceID else { return }
        instance.healthTask?.cancel()
        instance.killTask?.cancel()
        instances[model] = nil
        if let base = config.model(placerName: model), base.replicaCount > 1, let replicas = replicaSets[base.name] {
            // Its cache went with the process: the next one starts with none of these prefixes.
            Task { await replicas.processExited(model) }
        } else if model.contains("#"), let slots = replicaSets[ModelConfiguration.modelName(ofPlacerName: model)]?.slots {
            // A replica a reload removed (its set kept the slots' book for the others): should
            // the count grow again, a new process under this name holds none of it.
            slots.replicaRestarted(model)
        }
        if config.model(placerName: model) == nil {
            // Removed from the configuration (a model, or a replica of one): its gauges go too.
            Gauge(label: "strata_model_memory_measured_bytes", dimensions: [("model", model)]).destroy()
            let base = ModelConfiguration.modelName(ofPlacerName: model)
            if base != model {
                Gauge(label: "strata_prefill_seconds_per_block", dimensions: [("model", base), ("replica", model)]).destroy()
                ReplicaSet.retireMetrics(model: base, replica: model)
            }
        }
        let phase = placer.snapshot(of: model)?.phase
        var detail = how
        var expected = shuttingDown
        if case .stopping = phase { expected = true }
        if expected {
            logger.info("runtime stopped", metadata: ["model": "\(model)", "how": "\(how)"])
        } else {
            let tail = instance.process.logTail()
            detail = (instance.hungKilled.map { "\($0) (\(how))" } ?? "\(how)")
                + (tail.isEmpty ? "" : "; log \(instance.process.logPath): \(tail)")
            lastError[model] = detail
            logger.error("runtime died", metadata: ["model": "\(model)", "how": "\(how)", "log": "\(instance.process.logPath)"])
            if case .starting = phase {
                Counter(label: "strata_loads_total", dimensions: [("model", model), ("result", "failed")]).increment()
            } else {
                Counter(label: "strata_runtime_crashes_total", dimensions: [("model", model)]).increment()
            }
        }
        send(.runtimeExited(model: model, detail: detail))
        if !expected, config.model(placerName: model)?.preload == true {
            // Loaded at start, so kept loaded: started again once the restart backoff has passed,
            // not on the next request (which would wait for the start).
            logger.info("restarting a preloaded runtime after the backoff", metadata: ["model": "\(model)"])
            send(.load(model: model))
        }
    }

    private func stop(_ model: String, reason: StopReason) {
        if pendingStarts.removeValue(forKey: model) != nil {
            send(.runtimeExited(model: model, detail: "stopped before its runtime started (\(reason))"))
            return
        }
        guard var instance = instances[model] else {
            send(.runtimeExited(model: model, detail: "not running"))
            return
        }
        logger.info("stopping runtime", metadata: ["model": "\(model)", "reason": "\(reason)"])
        if reason == .loadTimeout {
            lastError[model] = "did not become healthy within \(config.supervisor.loadTimeout.seconds)s; log \(instance.process.logPath): \(instance.process.logTail())"
        }
        Counter(label: "strata_unloads_total", dimensions: [("model", model), ("reason", reason.metricLabel)]).increment()
        instance.healthTask?.cancel()
        instance.process.signalGroup(SIGTERM)
        let grace = config.supervisor.stopTimeout
        let process = instance.process
        instance.killTask = Task {
            try? await Task.sleep(for: grace)
            if !Task.isCancelled { process.signalGroup(SIGKILL) }
        }
        instances[model] = instance
    }

    // MARK: Lifecycle

    /// Drives deadlines and TTLs until cancelled.
    func runTicks() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reportResidencyThenPreload() }
            healthChecksRunning = true
            startHealthChecks()
            var ticks = 0
            while !Task.isCancelled && !shuttingDown {
                try? await Task.sleep(for: .milliseconds(200))
                send(.tick)
                ticks += 1
                // Every 10 s: runtimes grow (KV pages touched, buffers), and peaks count.
                if ticks % 50 == 0 { measureFootprints() }
            }
            healthChecksRunning = false
            for task in healthChecks.values { task.cancel() }
            healthChecks.removeAll()
            group.cancelAll()
        }
    }

    /// Stops every runtime: SIGTERM, then SIGKILL after the stop timeout; returns when all are gone.
    func shutdown() async {
        shuttingDown = true
        publishImmediateRoutes()
        let waiters = waiting
        waiting.removeAll()
        for (id, continuation) in waiters {
            continuation.resume(throwing: GatewayError.unavailable("Strata is shutting down", code: "shutting_down", retryAfterSeconds: 5))
            send(.cancel(id))
        }
        for name in instances.keys.sorted() {
            logger.info("stopping runtime for shutdown", metadata: ["model": "\(name)"])
            instances[name]?.healthTask?.cancel()
            instances[name]?.process.signalGroup(SIGTERM)
        }
        let deadline = clock.now + config.supervisor.stopTimeout
        while !instances.isEmpty && clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for instance in instances.values { instance.process.signalGroup(SIGKILL) }
        while !instances.isEmpty {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

extension StopReason {
    var metricLabel: String {
        switch self {
        case .idle: "idle"
        case .evicted: "evicted"
        case .operatorRequest: "operator"
        case .loadTimeout: "load_timeout"
        case .overBudget: "over_budget"
        case .removed: "removed"
        case .restarted: "restarted"
        case .newWeights: "new_weights"
        }
    }
}

extension Duration {
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }
}
