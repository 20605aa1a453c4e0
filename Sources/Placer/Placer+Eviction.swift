/// Who gives up device memory, and when.
///
/// Making room for a model X may evict a ready, unpinned model V only if
/// - V's priority is not above X's,
/// - V became ready at least `V.minResidency` ago, and
/// - V is not another replica of the model X is a replica of.
/// Allowed victims go lowest priority first, idle before busy, then lowest `expectedLoss`
/// (then least recently used, then name, for a total order). An idle victim is stopped at once; a
/// busy one drains (new requests wait) and stops when its last request finishes.
///
/// X is rejected with `.doesNotFit` only when pinned models alone leave no room for it. When
/// the allowed victims are not enough and some model is held back by priority or residency, none
/// is evicted: X waits (its queue timeout applies) and each later event (a `.tick` once a
/// residency has passed) weighs the victims again, so nothing is stopped for a start that
/// cannot happen yet, and the victims are chosen in one go once it can.
extension Placer {
    /// Budget of `device`; every configured model's device is configured (see `validate`).
    func budget(of device: String) -> UInt64 {
        configuration.devices.first { $0.name == device }?.memoryBytes ?? 0
    }

    /// Accounted memory of the models on `device` that may hold it.
    func usedBytes(on device: String) -> UInt64 {
        models.values.filter { $0.spec.device == device && $0.phase.holdsMemory }.reduce(0) { $0 + $1.memoryBytes }
    }

    /// Whether `victim` may be evicted to make room for `state`.
    func mayEvict(_ victim: ModelState, for state: ModelState, now: Duration) -> Bool {
        victim.spec.priority <= state.spec.priority && now - victim.readySince >= victim.spec.minResidency
            && !Self.siblings(victim.spec, state.spec)
    }

    /// Replicas of one model (`ModelSpec.replicaOf`).
    static func siblings(_ a: ModelSpec, _ b: ModelSpec) -> Bool {
        a.replicaOf != nil && a.replicaOf == b.replicaOf
    }

    /// `models` in the order they give up memory: lower priority, idle before busy, lower
    /// expected loss. `busy` says which count as busy.
    func evictionOrder(_ models: [ModelState], now: Duration, busy: (ModelState) -> Bool) -> [ModelState] {
        models
            .map { (state: $0, priority: $0.spec.priority, busy: busy($0) ? 1 : 0,
                    loss: expectedLoss($0, leftIn: tierAfterStop($0), now: now)) }
            .sorted {
                ($0.priority, $0.busy, $0.loss, $0.state.lastUsed, $0.state.spec.name)
                    < ($1.priority, $1.busy, $1.loss, $1.state.lastUsed, $1.state.spec.name)
            }
            .map(\.state)
    }

    /// Starts `state`'s runtime (or stages its weights first) if its device has room; otherwise
    /// picks victims (see above) and lets the next reconcile start it once their memory is back.
    mutating func makeRoomOrStart(
        _ state: ModelState, now: Duration, wasDraining: Set<String>, into actions: inout [PlacerAction]
    ) {
        let spec = state.spec
        let need = state.memoryBytes
        let budget = budget(of: spec.device)
        let onDevice = models.values.filter { $0.spec.device == spec.device && $0.spec.name != spec.name }
        let used = onDevice.filter { $0.phase.holdsMemory }.reduce(UInt64(0)) { $0 + $1.memoryBytes }

        if used + need <= budget {
            beginStart(spec.name, now: now, into: &actions)
            return
        }

        let pinnedBytes = onDevice.filter { $0.spec.pinned && $0.phase.holdsMemory }
            .reduce(UInt64(0)) { $0 + $1.memoryBytes }
        if pinnedBytes + need > budget {
            rejectAll(of: spec.name, .doesNotFit(
                needBytes: need, device: spec.device, budgetBytes: budget, pinnedBytes: pinnedBytes),
                into: &actions)
            return
        }

        var freeing = onDevice.filter { model in
            switch model.phase {
            case .stopping, .draining: true
            default: false
            }
        }.reduce(UInt64(0)) { $0 + $1.memoryBytes }
        // A ready model with waiters is about to serve them, unless they are held because it was
        // already draining for someone.
        let evictable = onDevice.filter {
            $0.phase == .ready && !$0.spec.pinned && ($0.waiters.isEmpty || wasDraining.contains($0.spec.name))
        }
        let allowed = evictable.filter { mayEvict($0, for: state, now: now) }
        let allowedBytes = allowed.reduce(UInt64(0)) { $0 + $1.memoryBytes }
        if allowed.count < evictable.count && used - freeing - allowedBytes + need > budget {
            return
        }
        for victim in evictionOrder(allowed, now: now, busy: { !$0.inFlight.isEmpty })
        where used - freeing + need > budget {
            retire(victim.spec.name, reason: .evicted(forModel: spec.name), into: &actions)
            freeing += victim.memoryBytes
        }
        // Whatever is still missing is held by models starting up; wait for them.
    }

    /// What keeps `state` from being ready, in words, for a request that waited too long for it
    /// (nil when nothing does: it is about to start). A model waiting for room names each model
    /// on its device that holds room it may not take yet, and why.
    func waitReason(_ state: ModelState, now: Duration) -> String? {
        func seconds(_ d: Duration) -> String { "\(Int((Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18).rounded(.up)))s" }
        switch state.phase {
        case .ready:
            return nil
        case .starting(let since):
            return "its runtime has been starting for \(seconds(now - since)) (supervisor.load_timeout applies)"
        case .staging(let since):
            return "its weights have been staging into host RAM for \(seconds(now - since))"
        case .draining, .stopping:
            return "it is being stopped, and starts again once it has"
        case .failed(let retryAt, let detail):
            return "its runtime failed (\(detail)); the next start is in \(seconds(max(.zero, retryAt - now)))"
        case .stopped:
            break
        }
        let spec = state.spec
        let onDevice = models.values.filter { $0.spec.device == spec.device && $0.spec.name != spec.name && $0.phase.holdsMemory }
        let used = onDevice.reduce(UInt64(0)) { $0 + $1.memoryBytes }
        guard used + state.memoryBytes > budget(of: spec.device) else { return nil }
        let holders = onDevice.sorted { $0.spec.name < $1.spec.name }.compactMap { other -> String? in
            // (Another model's replica is named with its model, which is what clients know.)
            let name = other.spec.replicaOf.map { Self.siblings(other.spec, spec) ? "'\(other.spec.name)'" : "'\(other.spec.name)' (a replica of '\($0)')" }
                ?? "'\(other.spec.name)'"
            switch other.phase {
            case .starting, .staging: return "\(name) is starting"
            case .draining: return "\(name) is finishing its requests before it stops"
            case .stopping: return "\(name) is stopping"
            default: break
            }
            if other.spec.pinned { return "\(name) is pinned" }
            if Self.siblings(other.spec, spec) { return "\(name) is another replica of '\(spec.replicaOf ?? "")'" }
            if other.spec.priority > spec.priority {
                return "\(name) has a higher priority (\(other.spec.priority) > \(spec.priority))"
            }
            let resident = now - other.readySince
            if resident < other.spec.minResidency {
                return "\(name) stays loaded another \(seconds(other.spec.minResidency - resident)) (min_residency)"
            }
            if !other.waiters.isEmpty { return "\(name) has requests waiting for it" }
            return nil
        }
        guard !holders.isEmpty else { return nil }
        return "device '\(spec.device)' has no room for it while " + holders.joined(separator: ", ")
    }

    /// Brings each device whose accounted memory exceeds its budget back under it: idle,
    /// unpinned ready models stop at once (lowest priority, then lowest expected loss first);
    /// if that is not enough, busy ones drain in the same order and stop when their requests are
    /// done. Priority and minimum residency do not protect here: the budget is the device's real
    /// limit, and no model is asking for the room. Models starting, staging or pinned are left;
    /// until they go, the device stays over budget and nothing new starts there.
    mutating func relieveOverBudget(now: Duration, into actions: inout [PlacerAction]) {
        for device in configuration.devices {
            let used = usedBytes(on: device.name)
            guard used > device.memoryBytes else { continue }
            let onDevice = models.values.filter { $0.spec.device == device.name }
            var freeing = onDevice.filter { model in
                switch model.phase {
                case .stopping, .draining: true
                default: false
                }
            }.reduce(UInt64(0)) { $0 + $1.memoryBytes }
            // Ready models with waiters are about to serve them: they count as busy.
            let busy = { (model: ModelState) in !model.inFlight.isEmpty || !model.waiters.isEmpty }
            let ready = onDevice.filter { $0.phase == .ready && !$0.spec.pinned }
            let order = evictionOrder(ready.filter { !busy($0) }, now: now, busy: busy)
                + evictionOrder(ready.filter(busy), now: now, busy: busy)
            for victim in order where used - freeing > device.memoryBytes {
                retire(victim.spec.name, reason: .overBudget, into: &actions)
                freeing += victim.memoryBytes
            }
        }
    }

    /// Stops `name` now if it has nothing in flight, or drains it: new requests wait, and the
    /// stop comes when its last request finishes.
    mutating func retire(_ name: String, reason: StopReason, into actions: inout [PlacerAction]) {
        guard let state = models[name] else { return }
        if state.inFlight.isEmpty {
            models[name]?.phase = .stopping(reason: reason)
            actions.append(.stop(model: name, reason: reason))
        } else {
            models[name]?.phase = .draining(reason: reason)
        }
    }
}
