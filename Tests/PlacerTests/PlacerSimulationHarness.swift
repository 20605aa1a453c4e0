import Testing
@testable import Placer

/// A Placer driven by a simulated supervisor and weight executor, checking after every step:
/// - device budget: `usedBytes <= budgetBytes`, or, only once a footprint or a reconfiguration
///   has been seen, either the memory not already on its way out (models neither stopping nor
///   draining) fits the budget, or no unpinned model on the device is `.ready` (what is left is
///   busy and draining, pinned, starting or staging); and no new device reservation (a `.start`
///   or `.stage` that takes a model from no memory to staging/starting) on a device that ends the
///   step over budget;
/// - no `.stop` of a model with requests in flight; one runtime per model; an eviction victim
///   (stopped or draining for another model) is never of higher priority than that model, and
///   has been ready for at least its minimum residency;
/// - every request answered exactly once, and no request still waiting at or past its deadline
///   (arrival + queue timeout) after any step;
/// - host weights within budget, or no copy left that may be released and no `.stage` issued;
///   Placer and executor agree on every copy.
final class PlacerSimulation {
    let seed: UInt64
    var rng: PlacerSimulationTests.SplitMix64
    var placer: Placer
    /// Every spec ever configured, by name (sizes do not change between configurations).
    var specs: [String: ModelSpec]
    var now = Duration.zero
    var nextID: RequestID = 1
    var running: Set<String> = []        // processes the simulated supervisor has
    var starting: Set<String> = []
    var stopping: Set<String> = []
    var inFlight: [RequestID: String] = [:]
    var waiting: [RequestID: (model: String, since: Duration)] = [:]
    var admittedOrRejected = 0
    // Host copies the simulated executor has: being staged (some never answer) or complete.
    var stagingCopies: Set<String> = []
    var hungStages: Set<String> = []
    var residentCopies: Set<String> = []
    /// Copies lost while their runtime still maps them (`Placer.retireCopy`).
    var retired: Set<String> = []
    var sawCorrection = false
    var stagesSeen = 0, stagedStarts = 0, skippedStarts = 0, releases = 0, abandoned = 0
    var overBudgetSteps = 0, overBudgetStops = 0, reconfigurations = 0, evictions = 0

    init(seed: UInt64, rng: PlacerSimulationTests.SplitMix64, configuration: PlacerConfiguration, pool: [ModelSpec]) {
        self.seed = seed
        self.rng = rng
        self.placer = Placer(configuration: configuration)
        self.specs = Dictionary(uniqueKeysWithValues: pool.map { ($0.name, $0) })
    }

    var hostBudget: UInt64 { placer.configuration.hostWeightsBudget }

    func send(_ event: PlacerEvent) {
        if case .footprintMeasured = event { sawCorrection = true }
        // A copy lost while its runtime runs stays in RAM (mapped) until that runtime is gone.
        switch event {
        case .weightsAt(let m, let tier) where tier != .host:
            if let state = placer.models[m], state.hostCopy == .resident, state.phase.holdsMemory { retired.insert(m) }
        case .runtimeExited(let m, _):
            retired.remove(m)
        default:
            break
        }
        let before = placer.models
        apply(placer.handle(event, now: now), before: before)
    }

    func reconfigure(_ configuration: PlacerConfiguration, restart: Set<String>) {
        sawCorrection = true
        reconfigurations += 1
        let before = placer.models
        apply(placer.reconfigure(configuration, restart: restart, now: now), before: before)
    }

    func request(_ model: String) {
        let id = nextID
        nextID += 1
        waiting[id] = (model, now)
        send(.request(id, model: model))
    }

    private func holdsDevice(_ phase: ModelPhase?) -> Bool {
        switch phase {
        case .starting, .ready, .draining, .stopping: true
        default: false
        }
    }

    private func apply(_ actions: [PlacerAction], before: [String: ModelState]) {
        for (index, action) in actions.enumerated() {
            switch action {
            case .start(let m):
                #expect(!running.contains(m), "seed \(seed): second runtime for \(m)")
                running.insert(m); starting.insert(m)
                let spec = placer.models[m]!.spec
                if spec.stagesWeights && spec.weightBytes <= hostBudget {
                    if residentCopies.contains(m) {
                        stagedStarts += 1
                    } else {
                        // Skipped staging: copies that may not be released held the budget.
                        // Those only grow for the rest of a decision, so the end state shows it.
                        let held = placer.models.values.filter { other in
                            guard other.spec.name != m else { return false }
                            switch other.hostCopy {
                            case .staging: return true
                            case .resident: return other.spec.pinned || holdsDevice(other.phase)
                            case .absent: return false
                            }
                        }.reduce(UInt64(0)) { $0 + $1.spec.weightBytes } + retired.reduce(UInt64(0)) { $0 + specs[$1]!.weightBytes }
                        #expect(held + spec.weightBytes > hostBudget,
                                "seed \(seed): \(m) started without its staged copy though room could be made")
                        skippedStarts += 1
                    }
                }
            case .stop(let m, let reason):
                #expect(placer.snapshot(of: m)?.inFlight == 0, "seed \(seed): stop of busy \(m) reason \(action)")
                if reason == .overBudget { overBudgetStops += 1 }
                starting.remove(m); stopping.insert(m)
            case .admit(let id, let m):
                #expect(waiting.removeValue(forKey: id)?.model == m, "seed \(seed): admitted \(id) twice or for the wrong model")
                inFlight[id] = m
                admittedOrRejected += 1
            case .reject(let id, _, let rejection):
                let entry = waiting.removeValue(forKey: id)
                #expect(entry != nil, "seed \(seed): rejected \(id) that was not waiting")
                if case .timedOut(let waited, _, _) = rejection, let entry {
                    #expect(waited == now - entry.since, "seed \(seed): \(id) timed out at the wrong time")
                }
                admittedOrRejected += 1
            case .stage(let m):
                #expect(!stagingCopies.contains(m) && !residentCopies.contains(m),
                        "seed \(seed): stage of \(m) while its copy is staging or resident")
                stagingCopies.insert(m)
                if rng.below(10) == 0 { hungStages.insert(m) }
                stagesSeen += 1
            case .releaseWeights(let m):
                if before[m]?.hostCopy == .resident {
                    let restarted = actions[index...].contains { $0 == .start(model: m) || $0 == .stage(model: m) }
                    let stillPinned = placer.models[m].map { $0.spec.pinned && !$0.removed } ?? false
                    #expect(!stillPinned, "seed \(seed): released the host copy of pinned \(m)")
                    #expect(restarted || !holdsDevice(placer.snapshot(of: m)?.phase),
                            "seed \(seed): released the host copy of \(m) while it holds device memory")
                }
                if case .staging = before[m]?.hostCopy { abandoned += 1 }
                stagingCopies.remove(m); hungStages.remove(m); residentCopies.remove(m)
                releases += 1
            }
        }
        checkInvariants(actions, before: before)
    }

    private func checkInvariants(_ actions: [PlacerAction], before: [String: ModelState]) {
        // Victims of an eviction: never of higher priority than the model they make room for,
        // never before their minimum residency.
        for (name, state) in placer.models {
            var rival: String?
            if case .draining(.evicted(let other)) = state.phase { rival = other }
            if case .stopping(.evicted(let other)) = state.phase, before[name]?.phase != state.phase { rival = other }
            guard let rival, let winner = placer.models[rival] else { continue }
            evictions += 1
            #expect(state.spec.priority <= winner.spec.priority, "seed \(seed): \(name) evicted for less important \(rival)")
            #expect(now - state.readySince >= state.spec.minResidency, "seed \(seed): \(name) evicted before its residency")
        }
        for device in placer.deviceSnapshots where device.usedBytes > device.budgetBytes {
            overBudgetSteps += 1
            let onDevice = placer.models.values.filter { $0.spec.device == device.name }
            let committed = onDevice.filter { state in
                switch state.phase {
                case .staging, .starting, .ready: true
                default: false
                }
            }.reduce(UInt64(0)) { $0 + $1.memoryBytes }
            let idleLeft = onDevice.contains { $0.phase == .ready && !$0.spec.pinned }
            #expect(sawCorrection, "seed \(seed): \(device.name) over budget with no footprint or reconfiguration")
            #expect(committed <= device.budgetBytes || !idleLeft,
                    "seed \(seed): \(device.name) over budget while a ready unpinned model stays")
            for action in actions {
                guard case .start(let m) = action, let state = placer.models[m], state.spec.device == device.name
                else { continue }
                #expect(before[m]?.phase.holdsMemory == true, "seed \(seed): \(m) started on \(device.name) over budget")
            }
            for action in actions {
                guard case .stage(let m) = action, let state = placer.models[m], state.spec.device == device.name,
                    case .staging = state.phase else { continue }
                #expect(before[m]?.phase.holdsMemory == true, "seed \(seed): \(m) reserved \(device.name) over budget")
            }
        }
        let timeout = placer.configuration.queueTimeout
        for (id, entry) in waiting {
            #expect(placer.requestModel[id] == entry.model, "seed \(seed): request \(id) waits unknown to the Placer")
            #expect(now - entry.since < timeout, "seed \(seed): request \(id) still waiting past its deadline")
        }
        let releasable = placer.models.values.contains(where: Placer.isReleasable)
        if placer.hostWeightsUsedBytes > hostBudget {
            #expect(!releasable, "seed \(seed): host-weights budget exceeded with a copy that may go")
            #expect(!actions.contains { if case .stage = $0 { true } else { false } },
                    "seed \(seed): staged while the host-weights budget is exceeded")
        }
        let executorBytes = stagingCopies.union(residentCopies).reduce(UInt64(0)) { $0 + specs[$1]!.weightBytes }
            + retired.reduce(UInt64(0)) { $0 + specs[$1]!.weightBytes }
        #expect(executorBytes == placer.hostWeightsUsedBytes, "seed \(seed): executor and Placer count different bytes")
        for name in specs.keys.sorted() {
            let state = placer.models[name]
            let agrees = switch state?.hostCopy ?? .absent {
            case .absent: !stagingCopies.contains(name) && !residentCopies.contains(name)
            case .staging: stagingCopies.contains(name)
            case .resident: residentCopies.contains(name)
            }
            #expect(agrees, "seed \(seed): Placer and executor disagree on the host copy of \(name)")
            if case .staging = state?.phase {
                #expect(stagingCopies.contains(name), "seed \(seed): \(name) staging with no copy under way")
            }
        }
    }
}
