extension Placer {
    /// Brings every model toward what its waiters need. Runs after every event.
    mutating func reconcile(now: Duration) -> [PlacerAction] {
        var actions: [PlacerAction] = []
        expireStaging(now: now, into: &actions)
        expireDeadlines(now: now, into: &actions)

        // Eviction marks are re-derived each time, so a victim whose rival stopped waiting
        // goes back to serving instead of draining for nobody.
        var wasDraining: Set<String> = []
        for (name, state) in models where !state.operatorDrain {
            if case .draining = state.phase {
                models[name]?.phase = .ready
                wasDraining.insert(name)
            }
        }

        // Models waiting to start go in order of when they could be ready if started now: first
        // waiter's arrival plus the time to load from where the weights are. One whose weights
        // sit in RAM goes ahead of one a little earlier that must come from the network, and
        // nothing starves: a model that waited longer than the difference goes first.
        let needy = models.values
            .filter { !$0.waiters.isEmpty && needsStart($0, now: now) }
            .map { (state: $0, due: $0.waiters[0].arrived + .seconds(reloadSeconds($0, from: tierAfterStop($0)))) }
            .sorted { ($0.due, $0.state.spec.name) < ($1.due, $1.state.spec.name) }
            .map(\.state)
        for state in needy {
            // Re-read: an earlier iteration may have changed the book.
            guard let current = models[state.spec.name], needsStart(current, now: now) else { continue }
            makeRoomOrStart(current, now: now, wasDraining: wasDraining, into: &actions)
        }

        for name in models.keys.sorted() {
            guard var state = models[name] else { continue }
            switch state.phase {
            case .ready where !state.waiters.isEmpty:
                for waiter in state.waiters {
                    guard let id = waiter.id else { continue }
                    state.inFlight.insert(id)
                    actions.append(.admit(id, model: name))
                }
                state.waiters.removeAll()
                state.lastUsed = now
            case .draining(let reason) where state.inFlight.isEmpty:
                state.phase = .stopping(reason: reason)
                actions.append(.stop(model: name, reason: reason))
            case .ready where state.inFlight.isEmpty:
                if let ttl = state.spec.ttl, now - state.lastUsed >= ttl {
                    state.phase = .stopping(reason: .idle)
                    actions.append(.stop(model: name, reason: .idle))
                }
            default:
                break
            }
            models[name] = state
        }
        return actions
    }

    private func needsStart(_ state: ModelState, now: Duration) -> Bool {
        switch state.phase {
        case .stopped: true
        case .failed(let retryAt, _): retryAt <= now
        default: false
        }
    }

    private mutating func expireDeadlines(now: Duration, into actions: inout [PlacerAction]) {
        for name in models.keys.sorted() {
            guard var state = models[name] else { continue }
            if case .starting(let since) = state.phase, now - since >= configuration.loadTimeout {
                state.phase = .stopping(reason: .loadTimeout)
                actions.append(.stop(model: name, reason: .loadTimeout))
            }
            let retryAfter: Duration
            if case .failed(let retryAt, _) = state.phase, retryAt > now {
                retryAfter = retryAt - now
            } else {
                retryAfter = .seconds(5)
            }
            state.waiters.removeAll { waiter in
                guard waiter.deadline <= now else { return false }
                if let id = waiter.id {
                    actions.append(
                        .reject(id, model: name, .timedOut(waited: now - waiter.arrived, retryAfter: retryAfter)))
                    requestModel[id] = nil
                }
                return true
            }
            models[name] = state
        }
    }

    /// Starts `state`'s runtime (or stages its weights first) if its device has room; otherwise
    /// picks victims (idle before busy, then lowest `expectedLoss`, never pinned) and lets the
    /// next reconcile start it once their memory is back.
    private mutating func makeRoomOrStart(
        _ state: ModelState, now: Duration, wasDraining: Set<String>, into actions: inout [PlacerAction]
    ) {
        let spec = state.spec
        let budget = configuration.devices.first { $0.name == spec.device }!.memoryBytes
        let onDevice = models.values.filter { $0.spec.device == spec.device && $0.spec.name != spec.name }
        let used = onDevice.filter { $0.phase.holdsMemory }.reduce(UInt64(0)) { $0 + $1.spec.memoryBytes }

        if used + spec.memoryBytes <= budget {
            beginStart(spec.name, now: now, into: &actions)
            return
        }

        let pinnedBytes = onDevice.filter { $0.spec.pinned && $0.phase.holdsMemory }
            .reduce(UInt64(0)) { $0 + $1.spec.memoryBytes }
        if pinnedBytes + spec.memoryBytes > budget {
            rejectAll(of: spec.name, .doesNotFit(
                needBytes: spec.memoryBytes, device: spec.device, budgetBytes: budget, pinnedBytes: pinnedBytes),
                into: &actions)
            return
        }

        var freeing = onDevice.filter { model in
            switch model.phase {
            case .stopping, .draining: true
            default: false
            }
        }.reduce(UInt64(0)) { $0 + $1.spec.memoryBytes }
        let candidates = onDevice
            // A ready model with waiters is about to serve them, unless they are held because
            // it was already draining for someone.
            .filter { $0.phase == .ready && !$0.spec.pinned && ($0.waiters.isEmpty || wasDraining.contains($0.spec.name)) }
            .map { (state: $0, busy: $0.inFlight.isEmpty ? 0 : 1, loss: expectedLoss($0, leftIn: tierAfterStop($0), now: now)) }
            .sorted { ($0.busy, $0.loss, $0.state.lastUsed, $0.state.spec.name) < ($1.busy, $1.loss, $1.state.lastUsed, $1.state.spec.name) }
            .map(\.state)
        for victim in candidates where used - freeing + spec.memoryBytes > budget {
            let reason = StopReason.evicted(forModel: spec.name)
            if victim.inFlight.isEmpty {
                models[victim.spec.name]?.phase = .stopping(reason: reason)
                actions.append(.stop(model: victim.spec.name, reason: reason))
            } else {
                models[victim.spec.name]?.phase = .draining(reason: reason)
            }
            freeing += victim.spec.memoryBytes
        }
        // Whatever is still missing is held by models starting up; wait for them.
    }

    private mutating func rejectAll(of name: String, _ rejection: Rejection, into actions: inout [PlacerAction]) {
        guard let waiters = models[name]?.waiters else { return }
        for waiter in waiters {
            guard let id = waiter.id else { continue }
            actions.append(.reject(id, model: name, rejection))
            requestModel[id] = nil
        }
        models[name]?.waiters.removeAll()
    }
}

extension Placer {
    public func snapshot(of name: String) -> ModelSnapshot? {
        models[name].map(Self.snapshot)
    }

    public var modelSnapshots: [ModelSnapshot] {
        configuration.models.compactMap { models[$0.name].map(Self.snapshot) }
    }

    public var deviceSnapshots: [DeviceSnapshot] {
        configuration.devices.map { device in
            DeviceSnapshot(
                name: device.name, budgetBytes: device.memoryBytes,
                usedBytes: models.values.filter { $0.spec.device == device.name && $0.phase.holdsMemory }
                    .reduce(0) { $0 + $1.spec.memoryBytes })
        }
    }

    private static func snapshot(_ state: ModelState) -> ModelSnapshot {
        ModelSnapshot(
            name: state.spec.name, device: state.spec.device, memoryBytes: state.spec.memoryBytes,
            phase: state.phase, inFlight: state.inFlight.count,
            waiting: state.waiters.filter { $0.id != nil }.count, lastUsed: state.lastUsed,
            consecutiveFailures: state.consecutiveFailures, loads: state.loads, pinned: state.spec.pinned,
            weights: state.weights, hostCopy: state.hostCopy)
    }
}
