extension PrefixRouter {
    /// Request `id` was sent to `decision.replica` with prompt `chain`: the replica now holds
    /// the chain (a hot-spot spill thereby makes it the prefix's second home), and until
    /// `finish` it carries one more request and the blocks it did not hold as queued work.
    ///
    /// The uncached count is taken from the index now (or from `held`, what the caller knows the
    /// replica holds, as in `choose`), not from the decision, so a choice that went stale before
    /// it was sent is still charged what it costs. A prefix the decision restores is not work.
    ///
    /// `advancesTurn`: false for a retry (a request another replica failed), which must not use
    /// up the next request's round-robin turn (the failing replica would be tried first again,
    /// on every request).
    ///
    /// - Returns: false, changing nothing, when `id` is already in flight (finish it first:
    ///   `finish` is the one release path) or the replica is unknown.
    @discardableResult
    public mutating func dispatch(
        _ id: RequestID, to decision: RouteDecision, promptBlocks chain: [UInt64], held: Int? = nil, advancesTurn: Bool = true
    ) -> Bool {
        guard dispatched[id] == nil, let replica = position[decision.replica] else { return false }
        let indexed = replicas[replica].index.matchedBlocks(chain)
        let matched = held.map { min(max($0, 0), chain.count) } ?? indexed
        let work = chain.count - max(matched, min(decision.restoreBlocks, chain.count))
        // Where the expected prefix sat in the eviction order, before recording moves it (for
        // `reportCached`, which corrects the index: what the index expected, not `held`).
        let colder = indexed > 0 ? replicas[replica].index.olderNeighbor(of: chain[indexed - 1]) : nil
        replicas[replica].inFlight += 1
        replicas[replica].queuedWork += work
        replicas[replica].index.record(chain)
        dispatched[id] = Dispatch(
            replica: replica, work: work, expectedFraction: chain.isEmpty ? 0 : Double(indexed) / Double(chain.count),
            colder: colder)
        if advancesTurn { nextTurn = (replica + 1) % replicas.count }
        return true
    }

    /// Request `id` is over, whether it succeeded, failed or was cancelled: releases exactly
    /// what its dispatch added. Finishing an unknown or already finished request does nothing,
    /// so every exit path of the Frontend may call it.
    @discardableResult
    public mutating func finish(_ id: RequestID) -> Bool {
        guard let done = dispatched.removeValue(forKey: id) else { return false }
        replicas[done.replica].inFlight -= 1
        replicas[done.replica].queuedWork -= done.work
        assert(replicas[done.replica].inFlight >= 0 && replicas[done.replica].queuedWork >= 0,
               "replica \(replicas[done.replica].spec.id) released more than it was charged")
        return true
    }

    /// Passive correction: the replica reports what share of request `id`'s prompt it found
    /// cached (llama-server's `cache_n`, OpenAI's `cached_tokens`). When that is well under what
    /// the index expected, the expected prefix had been evicted there, and so (the replica's
    /// cache being about as recency-ordered as the index) had everything recorded before it:
    /// those blocks are dropped from the replica's index. Call before `finish`.
    /// - Returns: blocks dropped (0: the report agreed, or the request is unknown).
    @discardableResult
    public mutating func reportCached(_ id: RequestID, fraction: Double) -> Int {
        guard let sent = dispatched[id], sent.expectedFraction >= 0.25, fraction < sent.expectedFraction / 2 else { return 0 }
        guard let colder = sent.colder else { return 0 }
        return replicas[sent.replica].index.dropOlder(through: colder.hash, ifUntouchedSince: colder.stamp)
    }

    /// Requests dispatched and not yet finished, on all replicas.
    public var inFlightRequests: Int { dispatched.count }

    public func snapshot(of id: String) -> ReplicaSnapshot? {
        position[id].map { snapshot(replicas[$0]) }
    }

    /// In configuration order.
    public var replicaSnapshots: [ReplicaSnapshot] { replicas.map(snapshot) }

    /// Whether a healthy replica other than `id` and those in `excluding` exists: where a request
    /// that fails on `id` before its answer could go instead.
    public func hasHealthyReplica(besides id: String, excluding: Set<String>) -> Bool {
        replicas.contains { $0.healthy && $0.spec.id != id && !excluding.contains($0.spec.id) }
    }

    /// Whether a running replica other than `id` and those in `excluding` could now take a
    /// request dispatched to `id` while `id` must start first: healthy, not saturated, and under
    /// the load bound that request was placed by (it is counted once, on `id`). A request waits
    /// for a start only while every running replica is at that bound, so one that finds room
    /// here goes there instead.
    public func runningReplicaHasRoom(besides id: String, excluding: Set<String>) -> Bool {
        let healthy = replicas.indices.filter { replicas[$0].healthy }
        guard !healthy.isEmpty else { return false }
        let bound = loadBound(healthy: healthy, placing: 0)
        return healthy.contains {
            let replica = replicas[$0]
            return !replica.starting && !replica.saturated && replica.spec.id != id && !excluding.contains(replica.spec.id)
                && replica.inFlight < bound
        }
    }

    private func snapshot(_ state: ReplicaState) -> ReplicaSnapshot {
        ReplicaSnapshot(
            id: state.spec.id, healthy: state.healthy, consecutiveFailures: state.consecutiveFailures,
            inFlight: state.inFlight, queuedWork: state.queuedWork, indexedBlocks: state.index.count,
            maxConcurrency: state.spec.maxConcurrency, starting: state.starting)
    }
}

extension PrefixRouter {
    /// Takes over from `earlier`, the router this one replaces (a reload changed the replica
    /// set or the routing settings), what it knew of each replica both have: requests in
    /// flight there (finished here too, by the same IDs, when they end), health and failure
    /// runs, and the index where its bound is the same. A replica only this one has starts
    /// fresh; one only `earlier` had is dropped with its requests, which end there.
    public mutating func takeOver(from earlier: PrefixRouter) {
        for (id, sent) in earlier.dispatched {
            guard let replica = position[earlier.replicas[sent.replica].spec.id], dispatched[id] == nil else { continue }
            replicas[replica].inFlight += 1
            replicas[replica].queuedWork += sent.work
            // (No cache report is compared for it here: the index it was measured against is not this one's.)
            dispatched[id] = Dispatch(replica: replica, work: sent.work)
        }
        for old in earlier.replicas {
            guard let replica = position[old.spec.id] else { continue }
            replicas[replica].healthy = old.healthy
            replicas[replica].consecutiveFailures = old.consecutiveFailures
            if old.index.capacity == replicas[replica].index.capacity { replicas[replica].index = old.index }
        }
    }
}
