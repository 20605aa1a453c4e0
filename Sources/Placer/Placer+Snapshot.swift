extension Placer {
    /// What keeps `name` from being ready now, in words (`waitReason`); nil when nothing does.
    public func waitReason(of name: String, now: Duration) -> String? {
        models[name].flatMap { waitReason($0, now: now) }
    }

    public func snapshot(of name: String) -> ModelSnapshot? {
        models[name].map(Self.snapshot)
    }

    /// Models of the current configuration, in its order. A removed model still draining is
    /// left out here but answers `snapshot(of:)` and counts in `deviceSnapshots` until it stops.
    public var modelSnapshots: [ModelSnapshot] {
        configuration.models.compactMap { models[$0.name].map(Self.snapshot) }
    }

    public var deviceSnapshots: [DeviceSnapshot] {
        configuration.devices.map { device in
            DeviceSnapshot(
                name: device.name, budgetBytes: device.memoryBytes,
                usedBytes: usedBytes(on: device.name))
        }
    }

    private static func snapshot(_ state: ModelState) -> ModelSnapshot {
        ModelSnapshot(
            name: state.spec.name, device: state.spec.device, memoryBytes: state.memoryBytes,
            measuredBytes: state.measuredBytes, phase: state.phase, inFlight: state.inFlight.count,
            waiting: state.waiters.filter { $0.id != nil }.count, lastUsed: state.lastUsed,
            consecutiveFailures: state.consecutiveFailures, loads: state.loads, pinned: state.spec.pinned,
            weights: state.weights, hostCopy: state.hostCopy, loadWaiting: state.waiters.contains { $0.id == nil })
    }
}
