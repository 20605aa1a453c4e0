extension Placer {
    /// Host RAM held by weight copies, resident or being staged.
    public var hostWeightsUsedBytes: UInt64 {
        models.values.reduce(0) { $0 + ($1.hostCopy.holdsHostBytes ? $1.spec.weightBytes : 0) }
    }

    /// Expected cost of giving up what `state` has now (its device memory, or its host copy):
    /// the seconds it takes to bring it back, weighted by how likely it is to be wanted soon.
    ///
    ///     expectedLoss = reloadSeconds / (idleSeconds + 1)
    ///     reloadSeconds = weightBytes / bandwidth(tier the weights are left in) + startSeconds
    ///
    /// Requests come in bursts, so a model's chance of being wanted again within a given time
    /// falls roughly as 1/idle: a model used a second ago is far more likely to be needed next
    /// than one idle for an hour. Multiplying by the reload time makes a large model read from
    /// the network dearer to lose than a small one read from RAM. The +1 keeps a model used
    /// this instant finite and stops sub-second idle times from dominating. With no sizes
    /// configured (weightBytes 0, startSeconds 1) the order is plain least-recently-used.
    func expectedLoss(_ state: ModelState, leftIn tier: WeightTier, now: Duration) -> Double {
        let idle = now > state.lastUsed ? Self.seconds(now - state.lastUsed) : 0
        return reloadSeconds(state, from: tier) / (idle + 1)
    }

    /// Seconds to bring `state` up with its weights in `tier`: reading them, then starting.
    func reloadSeconds(_ state: ModelState, from tier: WeightTier) -> Double {
        Double(state.spec.weightBytes) / configuration.tierBandwidth[tier] + state.spec.startSeconds
    }

    /// Where the weights of `state` are once its runtime is gone: host RAM if its copy stays.
    func tierAfterStop(_ state: ModelState) -> WeightTier {
        state.hostCopy == .resident ? .host : state.weights
    }

    /// Whether a start of `spec` goes through host RAM.
    func stagesBeforeStart(_ spec: ModelSpec) -> Bool {
        spec.stagesWeights && configuration.hostWeightsBudget > 0 && spec.weightBytes <= configuration.hostWeightsBudget
    }

    /// Called once the device has room for `name`: stages its weights first when it should and
    /// can, otherwise starts the runtime.
    mutating func beginStart(_ name: String, now: Duration, into actions: inout [PlacerAction]) {
        guard let state = models[name] else { return }
        if stagesBeforeStart(state.spec) {
            switch state.hostCopy {
            case .resident:
                break
            case .staging:
                // Already under way (an operator's stage request, or a start unloaded midway).
                models[name]?.phase = .staging(since: now)
                return
            case .absent:
                if makeHostRoom(for: name, now: now, into: &actions) {
                    models[name]?.hostCopy = .staging(since: now)
                    models[name]?.phase = .staging(since: now)
                    actions.append(.stage(model: name))
                    return
                }
                // The budget is held by copies that may not go (running, staging or pinned
                // models): start from the slower tier now rather than wait for one of them.
            }
        }
        models[name]?.phase = .starting(since: now)
        actions.append(.start(model: name))
    }

    /// Releases host copies of models that hold no device memory, lowest expected loss first,
    /// until `name`'s weights fit the host-weights budget. Releases nothing and returns false
    /// when even releasing all of them would not be enough.
    mutating func makeHostRoom(for name: String, now: Duration, into actions: inout [PlacerAction]) -> Bool {
        guard let need = models[name]?.spec.weightBytes else { return false }
        let budget = configuration.hostWeightsBudget
        var used = hostWeightsUsedBytes
        if Self.fits(need, used: used, budget: budget) { return true }
        let candidates = models.values
            .filter { $0.spec.name != name && Self.isReleasable($0) }
            .map { (state: $0, loss: expectedLoss($0, leftIn: .nvme, now: now)) }
            .sorted { ($0.loss, $0.state.lastUsed, $0.state.spec.name) < ($1.loss, $1.state.lastUsed, $1.state.spec.name) }
        let releasable = candidates.reduce(UInt64(0)) { $0 + $1.state.spec.weightBytes }
        guard Self.fits(need, used: used - releasable, budget: budget) else { return false }
        for candidate in candidates where !Self.fits(need, used: used, budget: budget) {
            releaseHostCopy(of: candidate.state.spec.name, into: &actions)
            used -= candidate.state.spec.weightBytes
        }
        return true
    }

    /// Drops the host copy of `name`, or abandons its staging.
    mutating func releaseHostCopy(of name: String, into actions: inout [PlacerAction]) {
        guard var state = models[name] else { return }
        if state.hostCopy == .resident {
            precondition(
                !state.phase.holdsMemory && (!state.spec.pinned || state.removed), "released the host copy of \(name) in use")
            state.weights = .nvme
        }
        state.hostCopy = .absent
        models[name] = state
        actions.append(.releaseWeights(model: name))
    }

    mutating func completeStaging(of name: String, now: Duration, into actions: inout [PlacerAction]) {
        guard var state = models[name] else { return }
        switch state.hostCopy {
        case .resident:
            return
        case .absent:
            // A staging the Placer already gave up on (timed out): make sure nothing is left.
            actions.append(.releaseWeights(model: name))
            return
        case .staging:
            // Its bytes were reserved when `.stage` was issued, so the copy always fits.
            state.hostCopy = .resident
            state.weights = .host
            if case .staging = state.phase {
                state.phase = .starting(since: now)
                actions.append(.start(model: name))
            }
            models[name] = state
        }
    }

    /// Ends a staging that failed or ran past `stageTimeout`; a model waiting on it fails like a
    /// failed start (backoff, waiters rejected).
    mutating func failStaging(
        of name: String, detail: String, now: Duration, release: Bool, into actions: inout [PlacerAction]
    ) {
        guard var state = models[name], case .staging = state.hostCopy else { return }
        state.hostCopy = .absent
        if release { actions.append(.releaseWeights(model: name)) }
        if case .staging = state.phase {
            state.phase = failure(&state, now: now, detail: detail)
            state.operatorDrain = false
            for waiter in state.waiters {
                if let id = waiter.id {
                    actions.append(.reject(id, model: name, .runtimeFailed(detail: detail)))
                    requestModel[id] = nil
                }
            }
            state.waiters.removeAll()
        }
        models[name] = state
    }

    mutating func expireStaging(now: Duration, into actions: inout [PlacerAction]) {
        for name in models.keys.sorted() {
            guard case .staging(let since) = models[name]?.hostCopy, now - since >= configuration.stageTimeout else {
                continue
            }
            failStaging(
                of: name, detail: "weights not staged within \(configuration.stageTimeout)", now: now, release: true,
                into: &actions)
        }
    }

    mutating func noteWeights(of name: String, at tier: WeightTier, now: Duration, into actions: inout [PlacerAction]) {
        guard var state = models[name] else { return }
        switch (tier, state.hostCopy) {
        case (.host, .resident):
            return
        case (.host, .staging):
            completeStaging(of: name, now: now, into: &actions)
            return
        case (.host, .absent):
            // A copy nobody asked for (found at startup): keep it only if it is accounted for.
            if !state.removed && stagesBeforeStart(state.spec)
                && Self.fits(state.spec.weightBytes, used: hostWeightsUsedBytes, budget: configuration.hostWeightsBudget)
            {
                state.hostCopy = .resident
                state.weights = .host
            } else {
                state.weights = .nvme
                actions.append(.releaseWeights(model: name))
            }
        case (_, .resident):
            // The copy was lost.
            state.hostCopy = .absent
            state.weights = tier
        case (_, .staging), (_, .absent):
            // A staging under way goes on; it reports on its own.
            state.weights = tier
        }
        models[name] = state
    }

    mutating func stageOnRequest(_ name: String, now: Duration, into actions: inout [PlacerAction]) {
        guard let state = models[name], !state.removed, stagesBeforeStart(state.spec), state.hostCopy == .absent else {
            return
        }
        guard makeHostRoom(for: name, now: now, into: &actions) else { return }
        models[name]?.hostCopy = .staging(since: now)
        // The operator expects it to be used soon: do not make it the first copy to go.
        models[name]?.lastUsed = max(state.lastUsed, now)
        actions.append(.stage(model: name))
    }

    /// Whether the copy of `state` may be released to make room: resident, its model holding no
    /// device memory and not pinned.
    static func isReleasable(_ state: ModelState) -> Bool {
        state.hostCopy == .resident && !state.spec.pinned && !state.phase.holdsMemory
    }

    /// After a reconfiguration shrank `hostWeightsBudget` below what the copies hold: releases
    /// the copies that may go (lowest expected loss first) until the budget holds again. Copies
    /// in use (their model holds device memory, or is pinned) and stagings under way stay; they
    /// are released here as soon as they may be, and no new staging starts meanwhile (`fits`
    /// fails while the budget is exceeded).
    mutating func relieveHostBudget(now: Duration, into actions: inout [PlacerAction]) {
        let budget = configuration.hostWeightsBudget
        var used = hostWeightsUsedBytes
        guard used > budget else { return }
        let candidates = models.values.filter(Self.isReleasable)
            .map { (state: $0, loss: expectedLoss($0, leftIn: .nvme, now: now)) }
            .sorted { ($0.loss, $0.state.lastUsed, $0.state.spec.name) < ($1.loss, $1.state.lastUsed, $1.state.spec.name) }
        for candidate in candidates where used > budget {
            releaseHostCopy(of: candidate.state.spec.name, into: &actions)
            used -= candidate.state.spec.weightBytes
        }
    }

    /// The host-weights budget holds, or every copy beyond it is one that may not be released.
    func assertHostBudget() {
        assert(
            hostWeightsUsedBytes <= configuration.hostWeightsBudget || !models.values.contains(where: Self.isReleasable),
            "host-weights budget exceeded")
    }

    static func fits(_ need: UInt64, used: UInt64, budget: UInt64) -> Bool {
        need <= budget && used <= budget - need
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
