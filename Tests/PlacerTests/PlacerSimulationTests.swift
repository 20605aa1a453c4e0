import StrataTestSupport
import Testing
@testable import Placer

/// Seeded random runs of the Placer against a simulated supervisor, checking invariants at
/// every step (see `PlacerSimulation`). A failing seed reproduces exactly.
struct PlacerSimulationTests {
    static let mib: UInt64 = 1 << 20

    typealias SplitMix64 = StrataTestSupport.SplitMix64

    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func invariantsHoldUnderRandomEvents(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        let mib = Self.mib
        // m0…m5 may be configured; m5 only comes with a reconfiguration; m6 never exists.
        var pool: [ModelSpec] = []
        for i in 0..<6 {
            let ttl: Duration? = i == 0 ? nil : Duration.seconds(Int64(5 + i))
            let memory = UInt64(100 + 50 * i) * mib
            // Some weights do not fit the host budget at all; most stage through it.
            let weights = UInt64(50 + rng.below(500)) * mib
            pool.append(ModelSpec(name: "m\(i)", device: i < 3 ? "gpu" : "cpu", memoryBytes: memory,
                                  ttl: ttl, pinned: i == 4, maxQueued: 8, weightBytes: weights,
                                  startSeconds: Double(rng.below(5)), stagesWeights: rng.below(5) != 0,
                                  memoryDeclared: rng.below(3) != 0))
        }
        func configuration(_ names: [String], gpuMiB: UInt64, cpuMiB: UInt64, hostMiB: UInt64) -> PlacerConfiguration {
            let models = pool.filter { names.contains($0.name) }.map { spec in
                var spec = spec
                spec.priority = rng.below(3)
                spec.minResidency = .milliseconds(Int64(rng.below(4) * 1000))
                return spec
            }
            return PlacerConfiguration(
                devices: [DeviceSpec(name: "gpu", memoryBytes: gpuMiB * mib), DeviceSpec(name: "cpu", memoryBytes: cpuMiB * mib)],
                models: models, loadTimeout: .seconds(10), queueTimeout: .seconds(15),
                restartBackoffInitial: .milliseconds(500), restartBackoffMax: .seconds(4),
                hostWeightsBudget: hostMiB * mib, stageTimeout: .seconds(8))
        }
        let initial = configuration(["m0", "m1", "m2", "m3", "m4"], gpuMiB: 400, cpuMiB: 700, hostMiB: 500)
        let sim = PlacerSimulation(seed: seed, rng: rng, configuration: initial, pool: pool)

        for _ in 0..<3000 {
            sim.now += .milliseconds(Int64(sim.rng.below(400)))
            let roll = sim.rng.below(120)
            var event: PlacerEvent = .tick
            if roll < 35 {
                sim.request("m\(sim.rng.below(7))")
                continue
            } else if roll < 60, let id = sim.inFlight.keys.sorted().dropFirst(sim.rng.below(max(1, sim.inFlight.count))).first {
                sim.inFlight[id] = nil
                event = .finished(id)
            } else if roll < 72, let m = sim.starting.sorted().first {
                sim.starting.remove(m)
                event = .runtimeReady(model: m)
            } else if roll < 82, let m = sim.stopping.sorted().first {
                sim.stopping.remove(m); sim.running.remove(m)
                event = .runtimeExited(model: m, detail: "stopped")
            } else if roll < 84, let m = sim.running.sorted().first, !sim.stopping.contains(m) {
                sim.running.remove(m); sim.starting.remove(m)
                event = .runtimeExited(model: m, detail: "crash")
            } else if roll < 87, let id = sim.waiting.keys.sorted().first {
                sim.waiting[id] = nil
                sim.admittedOrRejected += 1
                event = .cancel(id)
            } else if roll < 89 {
                event = .unload(model: "m\(sim.rng.below(pool.count))")
            } else if roll < 91 {
                event = .load(model: "m\(sim.rng.below(pool.count))")
            } else if roll < 97, let m = sim.stagingCopies.subtracting(sim.hungStages).sorted().first {
                sim.stagingCopies.remove(m)
                if sim.rng.below(5) == 0 {
                    event = .stageFailed(model: m, detail: "fetch failed")
                } else {
                    sim.residentCopies.insert(m)
                    event = .staged(model: m)
                }
            } else if roll < 100 {
                let m = "m\(sim.rng.below(pool.count))"
                if sim.residentCopies.contains(m) {
                    sim.residentCopies.remove(m)     // the copy was lost
                    event = .weightsAt(model: m, tier: sim.rng.below(2) == 0 ? .nvme : .remote)
                } else if sim.stagingCopies.contains(m) {
                    event = .weightsAt(model: m, tier: .nvme)
                } else {
                    sim.residentCopies.insert(m)     // a copy found by a scan: kept or released
                    event = .weightsAt(model: m, tier: .host)
                }
            } else if roll < 102 {
                event = .stageRequest(model: "m\(sim.rng.below(pool.count))")
            } else if roll < 104, let m = sim.placer.modelSnapshots.first(where: {
                if case .staging = $0.phase { true } else { false }
            })?.name {
                event = .unload(model: m)
            } else if roll < 112 {
                // Measured footprints, half to twice the configured size; the Placer ignores those
                // of runtimes not (or no longer) ready.
                if !sim.running.isEmpty {
                    let m = sim.running.sorted()[sim.rng.below(sim.running.count)]
                    let bytes = sim.specs[m]!.memoryBytes / 100 * UInt64(50 + sim.rng.below(151))
                    event = .footprintMeasured(model: m, bytes: bytes)
                }
            } else if roll < 114 {
                let names = pool.map(\.name).filter { _ in sim.rng.below(8) != 0 }
                let restart = Set(sim.running.sorted().filter { names.contains($0) && sim.rng.below(3) == 0 })
                let new = configuration(names, gpuMiB: UInt64(300 + sim.rng.below(200)),
                                        cpuMiB: UInt64(500 + sim.rng.below(300)), hostMiB: UInt64(300 + sim.rng.below(400)))
                sim.reconfigure(new, restart: restart)
                continue
            }
            sim.send(event)
        }

        // Quiesce: the supervisor completes everything, clients finish; every waiter resolves.
        for _ in 0..<200 {
            sim.now += .milliseconds(500)
            for m in sim.stagingCopies.subtracting(sim.hungStages).sorted() {
                sim.stagingCopies.remove(m); sim.residentCopies.insert(m)
                sim.send(.staged(model: m))
            }
            for m in sim.starting.sorted() { sim.starting.remove(m); sim.send(.runtimeReady(model: m)) }
            for m in sim.stopping.sorted() {
                sim.stopping.remove(m); sim.running.remove(m)
                sim.send(.runtimeExited(model: m, detail: "stopped"))
            }
            for id in sim.inFlight.keys.sorted() { sim.inFlight[id] = nil; sim.send(.finished(id)) }
            sim.send(.tick)
        }
        #expect(sim.waiting.isEmpty, "seed \(seed): requests never answered: \(sim.waiting.keys.sorted())")
        #expect(sim.admittedOrRejected == Int(sim.nextID) - 1, "seed \(seed): every request answered exactly once")
        #expect(sim.placer.requestModel.isEmpty, "seed \(seed): the Placer still tracks requests")
        #expect(!sim.placer.models.values.contains { $0.removed }, "seed \(seed): a removed model was never forgotten")
        for state in sim.placer.models.values {
            #expect(state.inFlight.isEmpty && state.waiters.isEmpty)
        }
        print("seed \(seed): \(sim.stagesSeen) stages, \(sim.stagedStarts) starts from host, \(sim.skippedStarts) skipped,",
              "\(sim.releases) releases, \(sim.abandoned) timed out, \(sim.reconfigurations) reconfigurations,",
              "\(sim.overBudgetSteps) over-budget steps, \(sim.overBudgetStops) over-budget stops,",
              "\(sim.evictions) eviction marks")
    }
}
