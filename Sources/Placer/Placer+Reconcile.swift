extension Placer {
    /// Brings every model toward what its waiters need. Runs after every event.
    mutating func reconcile(now: Duration) -> [PlacerAction] {
        var actions: [PlacerAction] = []
        expireStaging(now: now, into: &actions)
        expireDeadlines(now: now, into: &actions)
        forgetRemoved(into: &actions)
        relieveHostBudget(now: now, into: &actions)

        // Eviction marks are re-derived each time, so a victim whose rival stopped waiting
        // goes back to serving instead of draining for nobody.
        var wasDraining: Set<String> = []
        for (name, state) in models where state.drainIsRederived {
            if case .draining = state.phase {
                models[name]?.phase = .ready
                wasDraining.insert(name)
            }
        }
        // A device over budget (a larger measured footprint, a smaller budget) is brought back
        // under it before anything new may start there.
        relieveOverBudget(now: now, into: &actions)

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
            let reason = state.waiters.contains { $0.deadline <= now } ? waitReason(state, now: now) : nil
            state.waiters.removeAll { waiter in
                guard waiter.deadline <= now else { return false }
                if let id = waiter.id {
                    actions.append(
                        .reject(id, model: name, .timedOut(waited: now - waiter.arrived, retryAfter: retryAfter, reason: reason)))
                    requestModel[id] = nil
                }
                return true
            }
            models[name] = state
        }
    }

    mutating func rejectAll(of name: String, _ rejection: Rejection, into actions: inout [PlacerAction]) {
        guard let waiters = models[name]?.waiters else { return }
        for waiter in waiters {
            guard let id = waiter.id else { continue }
            actions.append(.reject(id, model: name, rejection))
            requestModel[id] = nil
        }
        models[name]?.waiters.removeAll()
    }
}
