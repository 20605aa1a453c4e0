import Foundation
import Frontend
import Placer

/// What a config reload changed, as `POST /admin/reload` answers it.
public struct ReloadReport: Sendable, Codable, Equatable {
    public var added: [String] = []
    public var removed: [String] = []
    /// Models whose runtime command, weights, device or memory changed: drained, stopped, and
    /// started with the new settings on their next request.
    public var restarted: [String] = []
    /// Models whose other settings (ttl, pin, priority, tags, fallbacks, routing, a count of
    /// replicas that stays above one: replicas added or removed, the others left running)
    /// changed in place.
    public var changed: [String] = []
    /// Of the models changed in place, the replicas added (started when preloaded or needed)
    /// and removed (drained: they finish their requests, listed as removed until they stop).
    public var replicas_added: [String] = []
    public var replicas_removed: [String] = []
    /// Sections that take effect only when Strata restarts (listen address, tiers, kv…).
    public var needs_restart: [String] = []
    /// Devices added, removed or with another memory budget (applied at once).
    public var devices: [String] = []
    /// Tenants added, removed, or with other keys or another policy (applied at once).
    public var tenants: [String] = []
}

extension ModelController {
    /// Applies a new, already validated configuration: models added, removed (drained, never
    /// killed with requests in flight), restarted when what their process runs changed, budgets
    /// and everything else the Placer decides by replaced. Replica sets whose replicas or
    /// routing did not change keep their prefix indexes.
    func reconfigure(to new: StrataConfiguration) -> ReloadReport {
        let old = config
        var report = ReloadReport()
        let oldModels = Dictionary(uniqueKeysWithValues: old.models.map { ($0.name, $0) })
        let newNames = Set(new.models.map(\.name))
        var restart: Set<String> = []
        for model in new.models {
            guard let before = oldModels[model.name] else {
                report.added.append(model.name)
                continue
            }
            if Self.processChanged(before, old: old, model, new: new) {
                report.restarted.append(model.name)
                restart.formUnion(model.placerNames)
            } else if before != model || Self.routingChanged(model, old: old, new: new)
                || Self.substrateChanged(model, old: old, new: new)
            {
                report.changed.append(model.name)
                report.replicas_added += model.placerNames.filter { !before.placerNames.contains($0) }
                report.replicas_removed += before.placerNames.filter { !model.placerNames.contains($0) }
            }
        }
        report.removed = old.models.map(\.name).filter { !newNames.contains($0) }
        let oldDevices = Dictionary(old.devices.map { ($0.name, $0.memoryBytes) }, uniquingKeysWith: { first, _ in first })
        let newDevices = Dictionary(new.devices.map { ($0.name, $0.memoryBytes) }, uniquingKeysWith: { first, _ in first })
        report.devices = Set(oldDevices.keys).union(newDevices.keys).filter { oldDevices[$0] != newDevices[$0] }.sorted()
        let oldTenants = Dictionary(old.tenants.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let newTenants = Dictionary(new.tenants.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        report.tenants = Set(oldTenants.keys).union(newTenants.keys).filter { oldTenants[$0] != newTenants[$0] }.sorted()

        config = new
        rebuildReplicaSets(old: old)
        let devicesBefore = placer.deviceSnapshots
        let hostBefore = placer.hostWeightsUsedBytes
        // A learned weight size holds while the model's source does.
        learnedWeightBytes = learnedWeightBytes.filter { name, _ in
            new.models.first { $0.name == name }?.source == oldModels[name]?.source
        }
        let actions = placer.reconfigure(placerConfiguration(new), restart: restart, now: now)
        placements.record(
            event: .tick, actions: actions, devicesBefore: devicesBefore, devicesAfter: placer.deviceSnapshots,
            hostBefore: hostBefore, hostAfter: placer.hostWeightsUsedBytes,
            hostBudget: placer.configuration.hostWeightsBudget, snapshot: { self.placer.snapshot(of: $0) },
            eventDescription: "config reloaded")
        for action in actions { perform(action) }
        // Weights that are not of a model's source any more: a removed model's, or of a source
        // or checksum that changed. (A runtime still draining keeps the pages it maps until it
        // exits.) The Placer forgets those copies, so the next start stages the new weights.
        let newWeights = new.models.filter { model in
            oldModels[model.name].map { $0.source != model.source || $0.sha256 != model.sha256 } ?? false
        }
        let added = new.models.filter { oldModels[$0.name] == nil }
        if let tiers, !report.removed.isEmpty || !newWeights.isEmpty || !added.isEmpty {
            let sources = new.weightSources
            Task {
                guard let stager = try? await tiers.stager() else { return }
                for model in newWeights { await stager.releaseHost(model.name) }
                await self.checkRemoteSources(of: added + newWeights, stager, within: .seconds(5))
                let removed = await stager.removeHostCopies(keeping: sources)
                for (model, why) in removed.sorted(by: { $0.key < $1.key }) {
                    // The file goes; a runtime that maps it keeps those pages until it stops.
                    let mapping = await self.runtimes(of: model)
                    let still = mapping.isEmpty ? "" : "; \(mapping.joined(separator: ", ")) still map them until they stop"
                    self.logger.notice("removed the staged weights of \(model) from host RAM: \(why)\(still)")
                }
                for model in newWeights {
                    let tier = await WeightTier(stager.residency(of: model.name, source: model.source))
                    for name in model.placerNames { self.send(.weightsAt(model: name, tier: tier)) }
                }
            }
        }
        // A preloaded model is loaded now, not on its first request: when added, restarted or
        // newly marked so, and replicas added to it.
        for model in new.models where model.preload {
            let before = oldModels[model.name]
            let all = before == nil || report.restarted.contains(model.name) || before?.preload == false
            let earlier = Set(before?.placerNames ?? [])
            for name in model.placerNames where all || !earlier.contains(name) { send(.load(model: name)) }
        }
        return report
    }

    /// The runtimes running for `model` (itself or its replicas `model#i`), by name.
    func runtimes(of model: String) -> [String] {
        instances.keys.filter { $0 == model || ($0.hasPrefix(model + "#") && Int($0.dropFirst(model.count + 1)) != nil) }.sorted()
    }

    /// Whether the process a model runs as would differ: runtime command, environment or
    /// health path, weights, device, memory or KV save/restore; or one process becomes several
    /// or several one (their names change: `m` against `m#0`…). Another count of several
    /// replicas is no restart: the Placer starts the added ones and drains the removed.
    static func processChanged(_ before: ModelConfiguration, old: StrataConfiguration, _ after: ModelConfiguration,
                               new: StrataConfiguration) -> Bool {
        guard before.serving == after.serving, before.device == after.device, before.memoryBytes == after.memoryBytes,
            before.replicaCount == after.replicaCount || min(before.replicaCount, after.replicaCount) > 1,
            before.source == after.source, before.sha256 == after.sha256,
            before.stage == after.stage, before.kvRestore == after.kvRestore   // adds --slot-save-path, --parallel
        else { return true }
        if case .managed(let runtime, _, _) = after.serving {
            let a = old.runtimes[runtime], b = new.runtimes[runtime]
            return a?.kind != b?.kind || a?.environment != b?.environment || a?.healthPath != b?.healthPath
        }
        return false
    }

    /// Whether what placement policy sees of the runtime a model runs on changed (its tags, its
    /// price, its latency class): applied at once, to tenants' access and to spend.
    static func substrateChanged(_ model: ModelConfiguration, old: StrataConfiguration, new: StrataConfiguration) -> Bool {
        let runtime: String
        switch model.serving {
        case .managed(let name, _, _), .upstream(let name, _): runtime = name
        case .replicas: return false
        }
        return old.runtimes[runtime]?.substrate != new.runtimes[runtime]?.substrate
    }

    /// Whether how a model's replicas are routed changed (its policy, or the `routing` section),
    /// which applies at once: its replica set is built anew (`rebuildReplicaSets`).
    static func routingChanged(_ model: ModelConfiguration, old: StrataConfiguration, new: StrataConfiguration) -> Bool {
        switch model.serving {
        case .replicas: break
        case .managed where model.replicaCount > 1: break
        default: return false
        }
        return (old.models.first { $0.name == model.name }?.routing ?? old.routing.policy) != (model.routing ?? new.routing.policy)
            || old.routing != new.routing
    }

    /// Keeps the replica sets whose replicas and routing are unchanged; builds the others anew.
    private func rebuildReplicaSets(old: StrataConfiguration) {
        var sets: [String: ReplicaSet] = [:]
        for model in config.models {
            let policy = model.routing ?? config.routing.policy
            let replicas: [String], managed: Bool
            switch model.serving {
            case .replicas(let urls): (replicas, managed) = (urls, false)
            case .managed where model.replicaCount > 1: (replicas, managed) = (model.placerNames, true)
            default: continue
            }
            var slots = Self.slotCache(for: model, config: config, tiers: tiers, httpClient: httpClient, logger: logger)
            // Replicas added or removed: the slots of those kept hold what they held, and the
            // claims of requests in flight there stay in the one book.
            var slotsKept = false
            if let kept = replicaSets[model.name]?.slots, kept.fingerprint == slots?.fingerprint {
                (slots, slotsKept) = (kept, true)
            }
            if let existing = replicaSets[model.name], existing.replicas == replicas, existing.managed == managed,
                existing.policy == policy, old.routing == config.routing,
                existing.slots?.fingerprint == slots?.fingerprint
            {
                sets[model.name] = existing
            } else {
                let running = Set(replicas.filter { placer.snapshot(of: $0)?.phase == .ready })
                let set = ReplicaSet(model: model.name, replicas: replicas, managed: managed, policy: policy,
                                     settings: config.routing, logger: logger, slots: slots, recoverSlots: !slotsKept,
                                     running: running)
                replicaSets[model.name]?.handOver(to: set, draining: Set(instances.keys))
                sets[model.name] = set
            }
        }
        for (name, set) in replicaSets where sets[name] == nil { set.retire(draining: Set(instances.keys)) }
        for (name, task) in healthChecks where sets[name] !== replicaSets[name] {
            task.cancel()
            healthChecks[name] = nil
        }
        replicaSets = sets
        publishImmediateRoutes()
        startHealthChecks()
    }

    /// Starts the health checks of replica sets that have none running.
    func startHealthChecks() {
        guard healthChecksRunning else { return }
        for (name, replicas) in replicaSets where healthChecks[name] == nil {
            healthChecks[name] = Task { await replicas.runHealthChecks() }
        }
    }

    /// Top-level sections a reload cannot apply while running.
    static func sectionsNeedingRestart(old: StrataConfiguration, new: StrataConfiguration) -> [String] {
        var sections: [String] = []
        if old.listen != new.listen { sections.append("listen") }
        if old.stateDirectory != new.stateDirectory { sections.append("state_dir") }
        if old.logLevel != new.logLevel { sections.append("log_level") }
        if old.tiers != new.tiers { sections.append("tiers") }
        if old.kv != new.kv { sections.append("kv") }
        if old.gateway != new.gateway { sections.append("gateway") }
        if old.auth.adminKey != new.auth.adminKey { sections.append("auth.admin_key_env") }
        return sections
    }
}
