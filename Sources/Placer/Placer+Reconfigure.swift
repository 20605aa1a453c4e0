extension Placer {
    /// Takes a new configuration without restarting the daemon, and returns the actions it
    /// calls for, like `handle`. `restart` names the models whose runtime command changed (the
    /// driver decides that; the Placer does not know commands).
    ///
    /// - A model in both configurations keeps its book (phase, requests in flight and waiting,
    ///   weights and host copy, loads, measured footprint) under its new spec. Its accounted
    ///   memory, priority, residency, ttl and pin take effect at once, for the runtime already
    ///   running too.
    /// - A model in `restart`, or whose device changed, drains like an operator unload and
    ///   stops (a starting one stops at once); its waiters stay and start it again, with the new
    ///   spec, once it is stopped. A failed one forgets its failures and may start at once. A
    ///   staging goes on: no runtime exists yet, and the start that follows uses the new spec.
    ///   A `.load` does not cancel this drain (an operator unload still may change its reason).
    ///   The measured footprint is kept as the best guess until the new runtime reports its own.
    /// - A model gone from the configuration answers new requests `.unknownModel`; its waiters
    ///   are rejected so too; requests in flight finish (their `finished` is accepted, even after
    ///   it is forgotten); then it stops (a starting one at once) and is forgotten, its host copy
    ///   released. Until it stops, its memory counts on its device. Brought back before then, it
    ///   is treated as restarted.
    /// - A new model starts `.stopped`.
    /// - Devices, budgets and every other field are replaced. A device left over budget is
    ///   brought back under it (`relieveOverBudget`: idle models stop, busy ones drain); a
    ///   smaller host-weights budget releases the copies that may go (`relieveHostBudget`).
    ///
    /// - Timeouts apply from now on to what is under way (a starting runtime meets the new load
    ///   timeout), except that a waiting request keeps the deadline it was given on arrival.
    ///   Names in `restart` that are not in the new configuration are ignored (removal wins).
    ///   A removed model on a device that is gone too is not shown in `deviceSnapshots`.
    /// - A restart keeps the host copy: if the weight file itself changed, the driver reports
    ///   the copy gone (`.weightsAt`) and removes it, as for any lost copy.
    ///
    /// A device change is a restart because the old runtime's memory is on the old device; until
    /// it stops it is accounted on the new one, which errs on the safe side there.
    public mutating func reconfigure(
        _ new: PlacerConfiguration, restart: Set<String>, now: Duration
    ) -> [PlacerAction] {
        Self.validate(new)
        var actions: [PlacerAction] = []
        var specs: [String: ModelSpec] = [:]
        for spec in new.models where specs[spec.name] == nil { specs[spec.name] = spec }
        configuration = new
        for name in models.keys.sorted() {
            guard var state = models[name] else { continue }
            if let spec = specs[name] {
                let moved = spec.device != state.spec.device
                let wasRemoved = state.removed
                state.spec = spec
                state.removed = false
                models[name] = state
                if restart.contains(name) || moved || wasRemoved {
                    restartRuntime(of: name, into: &actions)
                }
            } else if !state.removed {
                remove(name, into: &actions)
            }
        }
        for spec in new.models where models[spec.name] == nil {
            models[spec.name] = ModelState(spec: spec)
        }
        actions += reconcile(now: now)
        assertHostBudget()
        return actions
    }

    /// Stops the runtime of `name` once its requests are done (at once while it starts); the
    /// requests that come meanwhile wait for the next start.
    mutating func restartRuntime(of name: String, reason: StopReason = .restarted, into actions: inout [PlacerAction]) {
        guard var state = models[name] else { return }
        switch state.phase {
        case .ready, .draining:
            state.phase = .draining(reason: reason)
            state.configDrain = true
        case .starting:
            state.phase = .stopping(reason: reason)
            actions.append(.stop(model: name, reason: reason))
        case .failed:
            state.phase = .stopped
            state.consecutiveFailures = 0
        case .stopped, .stopping, .staging:
            break
        }
        models[name] = state
    }

    private mutating func remove(_ name: String, into actions: inout [PlacerAction]) {
        rejectAll(of: name, .unknownModel, into: &actions)
        guard var state = models[name] else { return }
        state.removed = true
        state.waiters.removeAll()
        switch state.phase {
        case .ready, .draining:
            state.phase = .draining(reason: .removed)
            state.configDrain = true
        case .starting:
            state.phase = .stopping(reason: .removed)
            actions.append(.stop(model: name, reason: .removed))
        case .staging, .failed:
            state.phase = .stopped
        case .stopped, .stopping:
            break
        }
        models[name] = state
        // A staging under way is abandoned; a copy no runtime uses goes now, one in use once
        // the model is forgotten.
        if case .staging = state.hostCopy {
            releaseHostCopy(of: name, into: &actions)
        }
    }

    /// Forgets removed models whose runtime is gone, releasing what is left of their host copy.
    mutating func forgetRemoved(into actions: inout [PlacerAction]) {
        for name in models.keys.sorted() {
            guard let state = models[name], state.removed, !state.phase.holdsMemory else { continue }
            if state.hostCopy != .absent {
                releaseHostCopy(of: name, into: &actions)
            }
            models[name] = nil
        }
    }
}
