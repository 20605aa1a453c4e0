extension Placer {
    /// Host RAM held by weight copies, resident or being staged: once per copy (the replicas of
    /// a model share one, `copyKey`).
    public var hostWeightsUsedBytes: UInt64 {
        var counted = Set<String>()
        let current = models.values.reduce(0) { used, state in
            state.hostCopy.holdsHostBytes && counted.insert(Self.copyKey(state.spec)).inserted ? used + state.spec.weightBytes : used
        }
        return retiredCopies.values.reduce(current) { $0 + $1.bytes }
    }

    /// The copy `name`'s runtime runs on is replaced or dropped (a new version staged, a reload
    /// that changed the source): while the runtime lives, it keeps the old file's pages mapped,
    /// so its bytes stay counted (a sibling restarting at once staged the new copy beside it,
    /// past the budget, while the draining replica still held the old one).
    mutating func retireCopy(of name: String) {
        guard let state = models[name], state.hostCopy == .resident, state.phase.holdsMemory else { return }
        retiredCopies[Self.copyKey(state.spec), default: (state.spec.weightBytes, [])].holders.insert(name)
    }

    /// `name`'s runtime is gone: a retired copy it was the last to map is gone from RAM too.
    mutating func releaseRetiredCopies(heldBy name: String) {
        for (key, copy) in retiredCopies where copy.holders.contains(name) {
            var holders = copy.holders
            holders.remove(name)
            retiredCopies[key] = holders.isEmpty ? nil : (copy.bytes, holders)
        }
    }

    /// Which host copy of weights a model uses: its own, or its model's for a replica (the
    /// replicas of a model run from one copy in RAM; each counts on it while it holds it).
    static func copyKey(_ spec: ModelSpec) -> String { spec.replicaOf ?? spec.name }

    /// Host RAM a copy for `name` would add: nothing when another replica holds theirs already.
    func hostBytesToAdd(for name: String) -> UInt64 {
        guard let spec = models[name]?.spec else { return 0 }
        let key = Self.copyKey(spec)
        let shared = models.values.contains { $0.spec.name != name && $0.hostCopy.holdsHostBytes && Self.copyKey($0.spec) == key }
        return shared ? 0 : spec.weightBytes
    }

    /// Whether another replica of `name`'s model holds their copy, complete, in RAM.
    func siblingHoldsResidentCopy(of name: String) -> Bool {
        guard let spec = models[name]?.spec else { return false }
        let key = Self.copyKey(spec)
        return models.values.contains { $0.spec.name != name && $0.hostCopy == .resident && Self.copyKey($0.spec) == key }
    }

    /// Copies that may be released to make room, lowest expected loss first, each with every
    /// model holding it (a shared copy frees its bytes only when all of them let go, and may go
    /// only if all of them may: `isReleasable`). `sparing`: a copy kept whatever its loss.
    func releasableCopies(sparing key: String?, now: Duration) -> [(holders: [String], bytes: UInt64)] {
        let holders = Dictionary(grouping: models.values.filter(\.hostCopy.holdsHostBytes)) { Self.copyKey($0.spec) }
        return holders.filter { $0.key != key && $0.value.allSatisfy(Self.isReleasable) }
            .map { key, states in
                (key: key, holders: states.map(\.spec.name).sorted(), bytes: states[0].spec.weightBytes,
                 loss: states.map { expectedLoss($0, leftIn: .nvme, now: now) }.max() ?? 0,
                 lastUsed: states.map(\.lastUsed).max() ?? .zero)
            }
            .sorted { ($0.loss, $0.lastUsed, $0.key) < ($1.loss, $1.lastUsed, $1.key) }
            .map { (holders: $0.holders, bytes: $0.bytes) }
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
            case .absent where siblingHoldsResidentCopy(of: name):
                // Another replica's copy is in RAM: this one starts from it, nothing to stage.
                models[name]?.hostCopy = .resident
                models[name]?.weights = .host
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
        guard let spec = models[name]?.spec else { return false }
        let need = hostBytesToAdd(for: name)
        let budget = configuration.hostWeightsBudget
        var used = hostWeightsUsedBytes
        if Self.fits(need, used: used, budget: budget) { return true }
        let candidates = releasableCopies(sparing: Self.copyKey(spec), now: now)
        let releasable = candidates.reduce(UInt64(0)) { $0 + $1.bytes }
        guard Self.fits(need, used: used - releasable, budget: budget) else { return false }
        for candidate in candidates where !Self.fits(need, used: used, budget: budget) {
            for holder in candidate.holders { releaseHostCopy(of: holder, into: &actions) }
            used -= candidate.bytes
        }
        return true
    }

    /// Drops the host copy of `name`, or abandons its staging. A copy another replica still
    /// holds stays in RAM: this one only stops counting on it (no `.releaseWeights`).
    mutating func releaseHostCopy(of name: String, into actions: inout [PlacerAction]) {
        guard var state = models[name] else { return }
        let shared = state.hostCopy == .resident && siblingHoldsResidentCopy(of: name)
        if state.hostCopy == .resident {
            precondition(
                !state.phase.holdsMemory && (!state.spec.pinned || state.removed), "released the host copy of \(name) in use")
            state.weights = .nvme
        }
        state.hostCopy = .absent
        models[name] = state
        if !shared { actions.append(.releaseWeights(model: name)) }
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
                && Self.fits(hostBytesToAdd(for: name), used: hostWeightsUsedBytes, budget: configuration.hostWeightsBudget)
            {
                state.hostCopy = .resident
                state.weights = .host
            } else {
                state.weights = .nvme
                actions.append(.releaseWeights(model: name))
            }
        case (_, .resident):
            // The copy was lost (or dropped by a reload: a runtime running on it keeps it counted).
            retireCopy(of: name)
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
        for candidate in releasableCopies(sparing: nil, now: now) where used > budget {
            for holder in candidate.holders { releaseHostCopy(of: holder, into: &actions) }
            used -= candidate.bytes
        }
    }

    /// The host-weights budget holds, or every copy beyond it is one that may not be released.
    func assertHostBudget() {
        assert(
            hostWeightsUsedBytes <= configuration.hostWeightsBudget || releasableCopies(sparing: nil, now: .zero).isEmpty,
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
