/// Decides which managed models run, which wait and which are stopped. Pure: it does no I/O and
/// reads no clock; the driver passes each event with the current time (a monotonic duration
/// since any fixed origin) and carries out the returned actions in order.
///
/// Invariants, checked by the simulation tests:
/// - per device, the accounted memory of models that may hold it never exceeds the budget, except
///   after a measured footprint or a reconfiguration, and then only while no model on the device
///   is ready, idle and unpinned, and no start is made there;
/// - a model with requests in flight is never stopped by a decision of the Placer;
/// - at most one runtime per model exists at a time (start only from stopped or failed);
/// - every request is eventually admitted or rejected (the queue timeout bounds the wait);
/// - host-copy bytes (resident and staging) never exceed `hostWeightsBudget`, except after a
///   reconfiguration shrank it, and then only while every copy left may not be released;
/// - the resident host copy of a model that holds device memory (starting, ready, draining,
///   stopping) or of a pinned model is never released;
/// - `.start` of a model that stages weights and whose copy fits the budget comes only after its
///   `.staged`, or when the budget was held by copies that may not be released (staging skipped);
/// - `.stage` is not issued again while a staging of the same model is under way.
///
/// Weights: a model that stages weights has its weight file copied into host RAM before its
/// runtime starts, and the copy stays after a stop while the budget allows, so the next start
/// reads from RAM. Copies and device memory are given up in order of expected reload cost; see
/// `expectedLoss`.
///
/// Decisions: eviction respects priorities and minimum residencies (`Placer+Eviction.swift`);
/// measured footprints correct estimates (`PlacerEvent.footprintMeasured`); a new configuration
/// is taken without a restart of the daemon (`reconfigure`).
public struct Placer: Sendable {
    public internal(set) var configuration: PlacerConfiguration
    var models: [String: ModelState] = [:]
    /// Which model each admitted or waiting request belongs to.
    var requestModel: [RequestID: String] = [:]
    /// Host copies replaced or dropped while runtimes still map them (`retireCopy`), by copy
    /// key: their bytes stay in RAM, and counted, until the last of those runtimes is gone.
    var retiredCopies: [String: (bytes: UInt64, holders: Set<String>)] = [:]

    public init(configuration: PlacerConfiguration) {
        Self.validate(configuration)
        self.configuration = configuration
        for spec in configuration.models {
            models[spec.name] = ModelState(spec: spec)
        }
    }

    static func validate(_ configuration: PlacerConfiguration) {
        for spec in configuration.models {
            precondition(
                configuration.devices.contains { $0.name == spec.device },
                "model \(spec.name) names unknown device \(spec.device)")
        }
        for tier in WeightTier.allCases {
            precondition(configuration.tierBandwidth[tier] > 0, "tier bandwidth of \(tier) must be positive")
        }
    }

    public mutating func handle(_ event: PlacerEvent, now: Duration) -> [PlacerAction] {
        var actions: [PlacerAction] = []
        switch event {
        case .request(let id, let name):
            // Answered at once where possible, but the reconcile below runs for every event, so
            // that other waiters' deadlines are kept to whatever event comes.
            guard var state = models[name], !state.removed else {
                actions.append(.reject(id, model: name, .unknownModel))
                break
            }
            if case .ready = state.phase {
                state.inFlight.insert(id)
                state.lastUsed = now
                models[name] = state
                requestModel[id] = name
                actions.append(.admit(id, model: name))
                break
            }
            if case .failed(let retryAt, let detail) = state.phase, retryAt > now, state.failedToStart {
                // Its last start failed and it is backing off: this request would wait for a
                // start that likely fails the same way, and evict others for it.
                actions.append(.reject(id, model: name, .runtimeFailed(detail: detail)))
                break
            }
            // (Requests only: an operator's load waiting there takes no client's place.)
            if state.waiters.count(where: { $0.id != nil }) >= state.spec.maxQueued {
                actions.append(.reject(id, model: name, .queueFull(limit: state.spec.maxQueued)))
                break
            }
            state.waiters.append(Waiter(id: id, arrived: now, deadline: now + configuration.queueTimeout))
            models[name] = state
            requestModel[id] = name

        case .cancel(let id):
            if let name = requestModel[id], var state = models[name],
                let index = state.waiters.firstIndex(where: { $0.id == id })
            {
                state.waiters.remove(at: index)
                models[name] = state
                requestModel[id] = nil
            }

        case .finished(let id):
            if let name = requestModel.removeValue(forKey: id) {
                models[name]?.inFlight.remove(id)
                models[name]?.orphaned.remove(id)
                models[name]?.lastUsed = now
            }

        case .runtimeReady(let name):
            guard var state = models[name], case .starting = state.phase else { break }
            state.phase = .ready
            state.consecutiveFailures = 0
            state.loads += 1
            state.lastUsed = now
            state.readySince = now
            // The runtime reads only local files: a healthy one means the NVMe store has a copy.
            state.weights = min(state.weights, .nvme)
            models[name] = state

        case .runtimeExited(let name, let detail):
            releaseRetiredCopies(heldBy: name)
            guard var state = models[name] else { break }
            switch state.phase {
            case .stopping(let reason):
                if reason == .loadTimeout {
                    state.phase = failure(&state, now: now, detail: detail)
                    state.failedToStart = true
                } else {
                    state.phase = .stopped
                }
                state.operatorDrain = false
                state.configDrain = false
            case .starting, .ready, .draining:
                // Died on its own: waiting requests learn why now rather than at their deadline.
                if case .starting = state.phase { state.failedToStart = true } else { state.failedToStart = false }
                state.phase = failure(&state, now: now, detail: detail)
                state.operatorDrain = false
                state.configDrain = false
                state.orphaned.formUnion(state.inFlight)
                state.inFlight.removeAll()
                for waiter in state.waiters {
                    if let id = waiter.id {
                        actions.append(.reject(id, model: name, .runtimeFailed(detail: detail)))
                        requestModel[id] = nil
                    }
                }
                state.waiters.removeAll()
            case .stopped, .failed, .staging:
                // No process of ours is running: a late report of one already handled.
                break
            }
            models[name] = state

        case .load(let name):
            guard var state = models[name], !state.removed else { break }
            switch state.phase {
            case .ready, .starting, .staging: break
            default:
                if !state.waiters.contains(where: { $0.id == nil }) {
                    state.waiters.append(Waiter(id: nil, arrived: now, deadline: now + configuration.queueTimeout))
                }
            }
            state.operatorDrain = false
            models[name] = state

        case .unload(let name):
            guard var state = models[name], !state.removed else { break }
            state.waiters.removeAll { $0.id == nil }
            switch state.phase {
            case .ready, .draining:
                state.phase = .draining(reason: .operatorRequest)
                state.operatorDrain = true
            case .starting:
                state.phase = .stopping(reason: .operatorRequest)
                actions.append(.stop(model: name, reason: .operatorRequest))
            case .failed:
                state.phase = .stopped
            case .staging:
                // No process exists yet. The staging goes on; its copy is kept when it completes.
                state.phase = .stopped
            case .stopped, .stopping:
                break
            }
            models[name] = state

        case .weightsAt(let name, let tier):
            if models[name] == nil && tier == .host {
                // A copy of a model no longer (or never) configured: nothing will use it.
                actions.append(.releaseWeights(model: name))
            }
            noteWeights(of: name, at: tier, now: now, into: &actions)

        case .staged(let name):
            if models[name] == nil {
                // A staging abandoned when its model was removed and forgotten.
                actions.append(.releaseWeights(model: name))
            }
            completeStaging(of: name, now: now, into: &actions)

        case .stageFailed(let name, let detail):
            failStaging(of: name, detail: detail, now: now, release: false, into: &actions)

        case .stageRequest(let name):
            stageOnRequest(name, now: now, into: &actions)

        case .weightsReplaced(let name):
            retireCopy(of: name)
            restartRuntime(of: name, reason: .newWeights, into: &actions)

        case .footprintMeasured(let name, let bytes):
            noteFootprint(of: name, bytes: bytes)

        case .weightsSized(let name, let bytes):
            // (A copy now larger than its estimate may put the budget over: `relieveHostBudget`.)
            if bytes > 0 { models[name]?.spec.weightBytes = bytes }

        case .tick:
            break
        }
        actions += reconcile(now: now)
        assertHostBudget()
        return actions
    }

    func failure(_ state: inout ModelState, now: Duration, detail: String) -> ModelPhase {
        state.consecutiveFailures += 1
        var backoff = configuration.restartBackoffInitial
        for _ in 1..<state.consecutiveFailures where backoff < configuration.restartBackoffMax {
            backoff = backoff * 2
        }
        return .failed(retryAt: now + min(backoff, configuration.restartBackoffMax), detail: detail)
    }
}
