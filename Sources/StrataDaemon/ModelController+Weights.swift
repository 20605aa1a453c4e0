import Foundation
import Frontend
import Metrics
import NIOConcurrencyHelpers
import Placer
import TierStore

/// Carrying out the Placer's weight decisions: staging into host RAM, releasing host copies,
/// telling the Placer what the store already holds, and the admin's staging calls.
extension ModelController {
    /// Staging statuses as JSON (URLs as written: no escaped slashes).
    static var jsonEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }

    /// Tells the Placer where each model's weights are once the tiers are open, then loads the
    /// models marked `preload` (so a preload stages through host RAM like any other start).
    func reportResidencyThenPreload() async {
        if let tiers, let stager = try? await tiers.stager() {
            // Copies of models this config does not name, or of another source than the one it
            // names, hold RAM that nothing counts or uses.
            let removed = await stager.removeHostCopies(keeping: config.weightSources)
            for (model, why) in removed.sorted(by: { $0.key < $1.key }) {
                logger.notice("removed the staged weights of \(model) from host RAM: \(why)")
            }
            await checkRemoteSources(of: config.models, stager, within: .seconds(5))
            await removeSavedPrefixesOfModelsWithoutKVRestore()
            for model in config.models where model.stage && !model.source.isEmpty {
                if let size = await stager.knownSize(of: model.name, source: model.source) { learnWeightSize(of: model, bytes: size) }
                let origin = await stager.residency(of: model.name, source: model.source)
                let tier = WeightTier(origin)
                for name in model.placerNames { send(.weightsAt(model: name, tier: tier)) }
            }
        }
        for model in config.models where model.preload {
            logger.info("preloading \(model.name)")
            for name in model.placerNames { send(.load(model: name)) }
        }
    }

    /// Asks each http or s3 source of `models` for its version and size (one HEAD each, at once;
    /// asking on every start of a model would put a round trip before each): a copy in RAM of
    /// another version is removed, and the size is what its copies are accounted at
    /// (`learnWeightSize`). Sources that do not answer `within` keep their copies and estimates.
    func checkRemoteSources(of models: [ModelConfiguration], _ stager: WeightStager, within limit: Duration) async {
        let remote = models.filter { $0.stage && $0.isRemoteSource }
        guard !remote.isEmpty else { return }
        await withTaskGroup(of: (ModelConfiguration, UInt64?)?.self) { group in
            for model in remote {
                group.addTask { (model, await stager.checkSource(of: model.name, source: model.source, sha256: model.sha256)) }
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            var left = remote.count
            while left > 0, let answer = await group.next(), let (model, size) = answer {
                left -= 1
                if let size { learnWeightSize(of: model, bytes: size) }
            }
            group.cancelAll()
        }
    }

    /// Removes the KV prefixes saved for models that no longer have `kv_restore` (or are gone):
    /// nothing would restore them, and they would hold NVMe until the log needed the room.
    /// (Those of models that have it are sorted by `SlotCache.recover`.)
    func removeSavedPrefixesOfModelsWithoutKVRestore() async {
        guard let tiers, let objects = try? await tiers.objectStore() else { return }
        let kept = config.models.filter(\.kvRestore).map { "kv/\($0.name)/" }
        let stale = objects.list().map(\.name).filter { name in name.hasPrefix("kv/") && !kept.contains { name.hasPrefix($0) } }
        for name in stale { try? await objects.remove(name) }
        if !stale.isEmpty {
            logger.notice("removed saved KV prefixes of models without kv_restore", metadata: ["objects": "\(stale.count)"])
        }
    }

    /// `.stage`: brings the weights into host RAM, then answers the Placer.
    func beginStaging(_ model: String) {
        guard let modelConfig = config.model(placerName: model), let tiers else {
            send(.stageFailed(model: model, detail: "no storage tiers to stage into"))
            return
        }
        let request = StageRequest(name: modelConfig.name, source: modelConfig.source, sha256: modelConfig.sha256, destination: .host)
        stagingTasks[model]?.task.cancel()
        let id = nextInstanceID
        nextInstanceID += 1
        let local = !modelConfig.isRemoteSource
        let task = Task {
            let outcome: Result<StageResult?, any Error>
            do {
                let stager: WeightStager
                do {
                    stager = try await tiers.stager()
                } catch where local {
                    // No tiers (they failed to open, or are closing): a local file can still be
                    // opened by the runtime itself, as without staging.
                    self.warnTiersUnavailable(error)
                    outcome = .success(nil)
                    self.stagingEnded(model, id: id, outcome)
                    return
                }
                outcome = .success(try await stager.stage(request))
            } catch {
                let wrongWeights = (error as? StageError)?.isChecksumMismatch == true
                let noRoom = (error as? IOError)?.isNoSpace == true
                if (local || noRoom) && !wrongWeights && !(error is CancellationError) && !Task.isCancelled {
                    // The tiers could not take the copy (full, failing disk): the runtime opens
                    // the local file itself, as without staging; for a remote source, with no
                    // room left in the RAM-backed directory (a RAM disk others filled), a copy on
                    // disk (`stageToDisk` at its start). Wrong weights never start.
                    self.logger.warning(local ? "staging \(model) failed; its runtime opens the source file instead"
                                            : "no room to stage \(model) in RAM; its runtime opens a copy on disk instead",
                                        metadata: ["error": "\(error)"])
                    outcome = .success(nil)
                } else {
                    outcome = .failure(error)
                }
            }
            self.stagingEnded(model, id: id, outcome)
        }
        stagingTasks[model] = (id, task)
    }

    private func warnTiersUnavailable(_ error: any Error) {
        guard !warnedTiersUnavailable else { return }
        warnedTiersUnavailable = true
        logger.warning("no weight staging (\(error)): runtimes open their source files directly")
    }

    private func stagingEnded(_ model: String, id: UInt64, _ outcome: Result<StageResult?, any Error>) {
        // A staging released or replaced meanwhile is not reported: the Placer has moved on.
        guard stagingTasks[model]?.id == id else { return }
        stagingTasks[model] = nil
        switch outcome {
        case .success(nil):
            // Nothing staged; the start goes ahead from the source (`weightsPath` finds no copy).
            send(.staged(model: model))
        case .success(let result?):
            if let modelConfig = config.model(placerName: model) { learnWeightSize(of: modelConfig, bytes: result.bytes) }
            if lastError[model]?.hasPrefix("staging ") == true { lastError[model] = nil }   // behind it now
            Counter(label: "strata_stagings_total", dimensions: [("model", model), ("from", result.origin.rawValue)]).increment()
            if result.seconds > 0 {
                Metrics.Timer(label: "strata_staging_duration_seconds", dimensions: [("from", result.origin.rawValue)])
                    .recordSeconds(result.seconds)
            }
            send(.staged(model: model))
            if let modelConfig = config.model(placerName: model) { restartOnReplacedWeights(of: modelConfig) }
        case .failure(let error):
            Counter(label: "strata_stagings_total", dimensions: [("model", model), ("from", "failed")]).increment()
            let cancelled = error is CancellationError || (error as? RemoteError)?.code == .cancelled
            let detail = cancelled ? "staging cancelled: an operator (DELETE /admin/staging) or a reload cancelled the staging of its weights"
                : "staging failed: \(error)"
            lastError[model] = detail
            send(.stageFailed(model: model, detail: detail))
        }
    }

    /// After a staging of `model`'s weights: a runtime of it started on a copy that has been
    /// replaced since (a new version of its source staged while it ran; the old file, deleted,
    /// stays in RAM outside any budget for as long as the runtime holds it, and the model answers
    /// from the old weights) finishes its requests and starts again on the new copy.
    func restartOnReplacedWeights(of model: ModelConfiguration) {
        for name in model.placerNames {
            guard let weights = instances[name]?.weights, FileIdentity(path: weights.path) != weights else { continue }
            logger.notice("the weights \(name) runs on were staged anew from \(model.source): it restarts on them once its requests are done",
                          metadata: ["old": "\(weights.path)"])
            send(.weightsReplaced(model: name))
        }
    }

    /// The size of the weights of a model whose source has none in the config (http, s3): its
    /// host copy is accounted at it from now on instead of the estimate from `memory`.
    func learnWeightSize(of model: ModelConfiguration, bytes: UInt64) {
        guard model.weightBytes == 0, bytes > 0, learnedWeightBytes[model.name] != bytes else { return }
        learnedWeightBytes[model.name] = bytes
        for name in model.placerNames { send(.weightsSized(model: name, bytes: bytes)) }
    }

    /// `new`'s Placer configuration with the weight sizes learned so far (`learnWeightSize`).
    func placerConfiguration(_ new: StrataConfiguration) -> PlacerConfiguration {
        var configuration = new.placerConfiguration
        for index in configuration.models.indices {
            guard let model = new.model(placerName: configuration.models[index].name), model.weightBytes == 0,
                let learned = learnedWeightBytes[model.name]
            else { continue }
            configuration.models[index].weightBytes = learned
        }
        return configuration
    }

    /// `.releaseWeights`: drops the host copy (or abandons its staging). Replicas share one copy:
    /// it goes only when no other replica of the model still counts on it.
    func releaseWeights(_ model: String) {
        stagingTasks.removeValue(forKey: model)?.task.cancel()
        guard let modelConfig = config.model(placerName: model), let tiers else { return }
        let siblings = modelConfig.placerNames.filter { $0 != model }
        let shared = siblings.contains { name in
            guard let snapshot = placer.snapshot(of: name) else { return false }
            return snapshot.hostCopy != .absent || snapshot.phase.holdsMemory
        }
        guard !shared else { return }
        logger.info("releasing the host copy of \(modelConfig.name)'s weights")
        Task {
            if let stager = try? await tiers.stager() { await stager.releaseHost(modelConfig.name) }
        }
    }

    /// The weights file a runtime for `model` opens now: the host copy when it is current,
    /// else the local source file; nil when only a staging can provide one (remote sources).
    func weightsPath(for model: ModelConfiguration, localPath: String) async -> String? {
        if model.stage, let tiers, let stager = try? await tiers.stager() {
            if let path = await stager.hostCopy(of: model.name, source: model.source, sha256: model.sha256) { return path }
            // A copy without the configured checksum (staged under another): not the local file
            // unchecked either, but a staging that checks it (`stageToDisk`), or says it fails.
            if model.sha256 != nil, await stager.hostCopy(of: model.name, source: model.source) != nil { return nil }
        }
        return localPath.isEmpty ? nil : localPath
    }

    /// A file a runtime can open for a remote source without room in host RAM: a copy on disk.
    func stageToDisk(_ model: ModelConfiguration) async throws -> String {
        guard let tiers else { throw GatewayError.badGateway("no storage tiers to stage \(model.source) into") }
        let result = try await tiers.stager().stage(
            StageRequest(name: model.name, source: model.source, sha256: model.sha256, destination: .disk))
        guard let path = result.path else { throw GatewayError.badGateway("staging \(model.name) to disk gave no file") }
        return path
    }

    // MARK: Admin

    public func stage(model: String, destination: String) async throws -> Data {
        guard let modelConfig = config.model(placerName: model) else { throw GatewayError.modelNotFound(model) }
        guard case .managed = modelConfig.serving else {
            throw GatewayError.badRequest("'\(model)' is served by an upstream Strata does not start; it has no weights here to stage",
                                          code: "not_managed")
        }
        guard let tiers else {
            throw GatewayError(status: .notFound, type: "invalid_request_error", code: "no_tiers", message: "This daemon runs no storage tiers")
        }
        guard let to = StageDestination(rawValue: destination) else {
            throw GatewayError.badRequest("to: '\(destination)' is not valid: expected host, nvme or disk", code: "invalid_stage")
        }
        let stager = try await tiers.stager()
        // Statuses of this model's earlier stagings: not this one's answer.
        let earlier = await stager.statuses().filter { $0.name == modelConfig.name && $0.state != .running }
        if to == .host {
            guard modelConfig.stage else {
                throw GatewayError.badRequest("'\(model)' has stage: false in the config", code: "invalid_stage")
            }
            let name = modelConfig.placerNames[0]
            if stagingTasks[name] == nil, placer.snapshot(of: name)?.hostCopy == .resident {
                // Already in RAM (a running model's weights, say): the stager finds the copy and
                // reports it done with nothing moved, or (a source whose version changed) fetches
                // the new one, shown running like any staging; the Placer's accounting is unchanged.
                let request = StageRequest(name: modelConfig.name, source: modelConfig.source, sha256: modelConfig.sha256, destination: .host)
                let finished = NIOLockedValueBox(false)
                Task {
                    if let result = try? await stager.stage(request) {
                        self.learnWeightSize(of: modelConfig, bytes: result.bytes)
                        self.restartOnReplacedWeights(of: modelConfig)
                    }
                    finished.withLockedValue { $0 = true }
                }
                // Found current, it is done at once; a new version's download is answered as
                // running (waiting it out would leave `strata stage` without progress).
                for _ in 0..<50 {
                    let statuses = await stager.statuses().filter { $0.name == modelConfig.name }
                    if let running = statuses.first(where: { $0.state == .running && $0.destination == .host }) {
                        return try Self.jsonEncoder.encode(running)
                    }
                    if finished.withLockedValue({ $0 }), let status = statuses.first(where: { $0.state != .running }) {
                        return try Self.jsonEncoder.encode(status)
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
            } else {
                send(.stageRequest(model: name))
                if stagingTasks[name] == nil && placer.snapshot(of: name)?.hostCopy != .resident {
                    throw GatewayError(
                        status: .conflict, type: "server_error", code: "host_weights_full",
                        message: "'\(model)' does not fit the host weights budget (tiers.host.weights_budget, \(ConfigUnits.formatBytes(config.tiers.host.weightsBudgetBytes))) next to the copies of running or pinned models")
                }
            }
        } else {
            let request = StageRequest(name: modelConfig.name, source: modelConfig.source, sha256: modelConfig.sha256, destination: to)
            Task { _ = try? await stager.stage(request) }
        }
        // Give the staging a moment to register, so the answer shows it running (or done): this
        // destination's, and not an earlier staging's finished record.
        for _ in 0..<50 {
            if let status = await stager.statuses().first(where: {
                $0.name == modelConfig.name && $0.destination == to && ($0.state == .running || !earlier.contains($0))
            }) {
                return try Self.jsonEncoder.encode(status)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw GatewayError.badGateway("the staging of '\(model)' did not start")
    }

    public func stagingStatus() async throws -> Data {
        guard let tiers else { return Data(#"{"staging":[]}"#.utf8) }
        let statuses = await (try tiers.stager()).statuses()
        struct List: Encodable { var staging: [StageStatus] }
        return try Self.jsonEncoder.encode(List(staging: statuses))
    }

    public func cancelStaging(model: String) async throws {
        guard let tiers else { throw GatewayError.modelNotFound(model) }
        let stager = try await tiers.stager()
        guard await stager.statuses().contains(where: { $0.name == model && $0.state == .running }) else {
            throw GatewayError(status: .notFound, type: "invalid_request_error", code: "no_staging",
                               message: "No staging of '\(model)' is running")
        }
        await stager.cancel(model)
    }
}

extension WeightTier {
    /// The Placer's name for the tier a staging would start from.
    init(_ origin: StageOrigin) {
        self = switch origin {
        case .host: .host
        case .nvme: .nvme
        case .remote: .remote
        }
    }
}
