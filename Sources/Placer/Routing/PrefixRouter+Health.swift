/// Health as the daemon learns it. Passive checks (request outcomes) can only take a replica
/// out; only an explicit `markHealthy`, driven by the daemon's active health checks, puts it
/// back, so a replica that fails every request is not re-admitted by a lucky success.
///
/// Requests in flight on a replica that turns unhealthy or restarts keep their accounting
/// until their `finish`, which the Frontend sends on every exit path.
/// Unknown replica IDs are ignored, as the Placer ignores events for unknown models.
extension PrefixRouter {
    /// Re-admits the replica with a clean failure count.
    public mutating func markHealthy(_ id: String) {
        guard let replica = position[id] else { return }
        replicas[replica].healthy = true
        replicas[replica].consecutiveFailures = 0
    }

    public mutating func markUnhealthy(_ id: String) {
        guard let replica = position[id] else { return }
        replicas[replica].healthy = false
    }

    /// A request failed on the replica for the replica's sake (connection refused, 5xx, reset),
    /// not the client's.
    ///
    /// - Returns: true when this failure ejected it (the `ejectAfterFailures`-th in a row).
    @discardableResult
    public mutating func reportFailure(_ id: String) -> Bool {
        guard let replica = position[id] else { return false }
        replicas[replica].consecutiveFailures += 1
        guard replicas[replica].healthy,
            replicas[replica].consecutiveFailures >= configuration.ejectAfterFailures
        else { return false }
        replicas[replica].healthy = false
        return true
    }

    /// Ends a run of failures; does not re-admit an ejected replica.
    public mutating func reportSuccess(_ id: String) {
        guard let replica = position[id] else { return }
        replicas[replica].consecutiveFailures = 0
    }

    /// Whether the replica's process must start before it can serve (a managed replica stopped,
    /// crashed or loading): prefix affinity adds `startCostBlocks` to its work and places cold
    /// prefixes on running replicas first. Replicas start out running (upstreams).
    public mutating func setStarting(_ id: String, _ starting: Bool) {
        guard let replica = position[id] else { return }
        replicas[replica].starting = starting
    }

    /// The replica's process restarted: its KV cache is empty, so is our guess of it. Health is
    /// left to the health checks, which see it come up.
    public mutating func replicaRestarted(_ id: String) {
        guard let replica = position[id] else { return }
        replicas[replica].index.forget()
    }

    /// Replaces the guess with the chains the replica reports holding, least recently used
    /// first (a slot listing, a KV-event resync).
    public mutating func replaceIndex(of id: String, with chains: [[UInt64]]) {
        guard let replica = position[id] else { return }
        replicas[replica].index.replace(with: chains)
    }

    /// The replica reports having dropped these blocks (KV events).
    public mutating func removeBlocks(_ hashes: [UInt64], from id: String) {
        guard let replica = position[id] else { return }
        for hash in hashes {
            replicas[replica].index.remove(hash)
        }
    }
}
