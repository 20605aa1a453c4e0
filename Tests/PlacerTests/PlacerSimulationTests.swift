import Testing
@testable import Placer

/// Seeded random runs of the Placer against a simulated supervisor, checking invariants at
/// every step. A failing seed reproduces exactly.
struct PlacerSimulationTests {
    struct SplitMix64 {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func invariantsHoldUnderRandomEvents(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        let mib: UInt64 = 1 << 20
        let hostBudget = 500 * mib
        var models: [ModelSpec] = []
        for i in 0..<5 {
            let ttl: Duration? = i == 0 ? nil : Duration.seconds(Int64(5 + i))
            let memory = UInt64(100 + 50 * i) * mib
            // Some weights do not fit the host budget at all; most stage through it.
            let weights = UInt64(50 + rng.below(500)) * mib
            models.append(ModelSpec(name: "m\(i)", device: i < 3 ? "gpu" : "cpu", memoryBytes: memory,
                                    ttl: ttl, pinned: i == 4, maxQueued: 8, weightBytes: weights,
                                    startSeconds: Double(rng.below(5)), stagesWeights: rng.below(5) != 0))
        }
        let specs = Dictionary(uniqueKeysWithValues: models.map { ($0.name, $0) })
        let devices = [DeviceSpec(name: "gpu", memoryBytes: 400 * mib), DeviceSpec(name: "cpu", memoryBytes: 700 * mib)]
        var placer = Placer(configuration: PlacerConfiguration(
            devices: devices, models: models, loadTimeout: .seconds(10), queueTimeout: .seconds(15),
            restartBackoffInitial: .milliseconds(500), restartBackoffMax: .seconds(4),
            hostWeightsBudget: hostBudget, stageTimeout: .seconds(8)))

        var now = Duration.zero
        var nextID: RequestID = 1
        var running: Set<String> = []        // processes the simulated supervisor has
        var starting: Set<String> = []
        var stopping: Set<String> = []
        var inFlight: [RequestID: String] = [:]
        var waiting: [RequestID: String] = [:]
        var admittedOrRejected = 0
        // Host copies the simulated executor has: being staged (some never answer) or complete.
        var stagingCopies: Set<String> = []
        var hungStages: Set<String> = []
        var residentCopies: Set<String> = []
        var stagesSeen = 0, stagedStarts = 0, skippedStarts = 0, releases = 0, abandoned = 0

        func holdsDevice(_ phase: ModelPhase?) -> Bool {
            switch phase {
            case .starting, .ready, .draining, .stopping: true
            default: false
            }
        }

        func apply(_ actions: [PlacerAction], before: [String: ModelSnapshot]) {
            for (index, action) in actions.enumerated() {
                switch action {
                case .start(let m):
                    #expect(!running.contains(m), "seed \(seed): second runtime for \(m)")
                    running.insert(m); starting.insert(m)
                    let spec = specs[m]!
                    if spec.stagesWeights && spec.weightBytes <= hostBudget {
                        if residentCopies.contains(m) {
                            stagedStarts += 1
                        } else {
                            // Skipped staging: copies that may not be released held the budget.
                            // Those only grow for the rest of a decision, so the end state shows it.
                            let held = placer.modelSnapshots.filter { other in
                                guard other.name != m else { return false }
                                switch other.hostCopy {
                                case .staging: return true
                                case .resident: return other.pinned || holdsDevice(other.phase)
                                case .absent: return false
                                }
                            }.reduce(UInt64(0)) { $0 + specs[$1.name]!.weightBytes }
                            #expect(held + spec.weightBytes > hostBudget,
                                    "seed \(seed): \(m) started without its staged copy though room could be made")
                            skippedStarts += 1
                        }
                    }
                case .stop(let m, _):
                    #expect(placer.snapshot(of: m)?.inFlight == 0, "seed \(seed): stop of busy \(m) reason \(action)")
                    starting.remove(m); stopping.insert(m)
                case .admit(let id, let m):
                    #expect(waiting.removeValue(forKey: id) == m, "seed \(seed): admitted \(id) twice or for the wrong model")
                    inFlight[id] = m
                    admittedOrRejected += 1
                case .reject(let id, _, _):
                    waiting.removeValue(forKey: id)
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
                        #expect(!specs[m]!.pinned, "seed \(seed): released the host copy of pinned \(m)")
                        #expect(restarted || !holdsDevice(placer.snapshot(of: m)?.phase),
                                "seed \(seed): released the host copy of \(m) while it holds device memory")
                    }
                    if case .staging = before[m]?.hostCopy { abandoned += 1 }
                    stagingCopies.remove(m); hungStages.remove(m); residentCopies.remove(m)
                    releases += 1
                }
            }
            for device in placer.deviceSnapshots {
                let within = device.usedBytes <= device.budgetBytes
                #expect(within, "seed \(seed): \(device.name) over budget")
            }
            let executorBytes = stagingCopies.union(residentCopies).reduce(UInt64(0)) { $0 + specs[$1]!.weightBytes }
            #expect(placer.hostWeightsUsedBytes <= hostBudget, "seed \(seed): host-weights budget exceeded")
            #expect(executorBytes <= hostBudget, "seed \(seed): executor holds more weights than the budget")
            for snapshot in placer.modelSnapshots {
                let agrees = switch snapshot.hostCopy {
                case .absent: !stagingCopies.contains(snapshot.name) && !residentCopies.contains(snapshot.name)
                case .staging: stagingCopies.contains(snapshot.name)
                case .resident: residentCopies.contains(snapshot.name)
                }
                #expect(agrees, "seed \(seed): Placer and executor disagree on the host copy of \(snapshot.name)")
                if case .staging = snapshot.phase {
                    #expect(stagingCopies.contains(snapshot.name), "seed \(seed): \(snapshot.name) staging with no copy under way")
                }
            }
        }

        func send(_ event: PlacerEvent) {
            let before = Dictionary(uniqueKeysWithValues: placer.modelSnapshots.map { ($0.name, $0) })
            apply(placer.handle(event, now: now), before: before)
        }

        for _ in 0..<3000 {
            now += .milliseconds(Int64(rng.below(400)))
            let roll = rng.below(120)
            var event: PlacerEvent = .tick
            if roll < 35 {
                let id = nextID; nextID += 1
                let model = "m\(rng.below(models.count + 1))"    // m5 is unknown
                waiting[id] = model
                event = .request(id, model: model)
            } else if roll < 60, let id = inFlight.keys.sorted().dropFirst(rng.below(max(1, inFlight.count))).first {
                inFlight[id] = nil
                event = .finished(id)
            } else if roll < 72, let m = starting.sorted().first {
                starting.remove(m)
                event = .runtimeReady(model: m)
            } else if roll < 82, let m = stopping.sorted().first {
                stopping.remove(m); running.remove(m)
                event = .runtimeExited(model: m, detail: "stopped")
            } else if roll < 84, let m = running.sorted().first, !stopping.contains(m) {
                running.remove(m); starting.remove(m)
                event = .runtimeExited(model: m, detail: "crash")
            } else if roll < 88, let id = waiting.keys.sorted().first {
                waiting[id] = nil
                admittedOrRejected += 1
                event = .cancel(id)
            } else if roll < 90 {
                event = .unload(model: "m\(rng.below(models.count))")
            } else if roll < 92 {
                event = .load(model: "m\(rng.below(models.count))")
            } else if roll < 100, let m = stagingCopies.subtracting(hungStages).sorted().first {
                stagingCopies.remove(m)
                if rng.below(5) == 0 {
                    event = .stageFailed(model: m, detail: "fetch failed")
                } else {
                    residentCopies.insert(m)
                    event = .staged(model: m)
                }
            } else if roll < 104 {
                let m = "m\(rng.below(models.count))"
                if residentCopies.contains(m) {
                    residentCopies.remove(m)     // the copy was lost
                    event = .weightsAt(model: m, tier: rng.below(2) == 0 ? .nvme : .remote)
                } else if stagingCopies.contains(m) {
                    event = .weightsAt(model: m, tier: .nvme)
                } else {
                    residentCopies.insert(m)     // a copy found by a scan: kept or released
                    event = .weightsAt(model: m, tier: .host)
                }
            } else if roll < 107 {
                event = .stageRequest(model: "m\(rng.below(models.count))")
            } else if roll < 110, let m = placer.modelSnapshots.first(where: {
                if case .staging = $0.phase { true } else { false }
            })?.name {
                event = .unload(model: m)
            }
            send(event)
        }

        // Quiesce: the supervisor completes everything, clients finish; every waiter resolves.
        for _ in 0..<200 {
            now += .milliseconds(500)
            for m in stagingCopies.subtracting(hungStages).sorted() {
                stagingCopies.remove(m); residentCopies.insert(m)
                send(.staged(model: m))
            }
            for m in starting.sorted() { starting.remove(m); send(.runtimeReady(model: m)) }
            for m in stopping.sorted() {
                stopping.remove(m); running.remove(m)
                send(.runtimeExited(model: m, detail: "stopped"))
            }
            for id in inFlight.keys.sorted() { inFlight[id] = nil; send(.finished(id)) }
            send(.tick)
        }
        #expect(waiting.isEmpty, "seed \(seed): requests never answered: \(waiting)")
        #expect(admittedOrRejected == Int(nextID) - 1, "seed \(seed): every request answered exactly once")
        for snapshot in placer.modelSnapshots {
            #expect(snapshot.inFlight == 0 && snapshot.waiting == 0)
        }
        print("seed \(seed): \(stagesSeen) stages, \(stagedStarts) starts from host, \(skippedStarts) skipped, \(releases) releases, \(abandoned) timed out")
    }
}
