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
        var models: [ModelSpec] = []
        for i in 0..<5 {
            let ttl: Duration? = i == 0 ? nil : Duration.seconds(Int64(5 + i))
            let memory = UInt64(100 + 50 * i) * mib
            models.append(ModelSpec(name: "m\(i)", device: i < 3 ? "gpu" : "cpu", memoryBytes: memory,
                                    ttl: ttl, pinned: i == 4, maxQueued: 8))
        }
        let devices = [DeviceSpec(name: "gpu", memoryBytes: 400 * mib), DeviceSpec(name: "cpu", memoryBytes: 700 * mib)]
        var placer = Placer(configuration: PlacerConfiguration(
            devices: devices, models: models, loadTimeout: .seconds(10), queueTimeout: .seconds(15),
            restartBackoffInitial: .milliseconds(500), restartBackoffMax: .seconds(4)))

        var now = Duration.zero
        var nextID: RequestID = 1
        var running: Set<String> = []        // processes the simulated supervisor has
        var starting: Set<String> = []
        var stopping: Set<String> = []
        var inFlight: [RequestID: String] = [:]
        var waiting: [RequestID: String] = [:]
        var admittedOrRejected = 0

        func apply(_ actions: [PlacerAction]) {
            for action in actions {
                switch action {
                case .start(let m):
                    #expect(!running.contains(m), "seed \(seed): second runtime for \(m)")
                    running.insert(m); starting.insert(m)
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
                }
            }
            for device in placer.deviceSnapshots {
                let within = device.usedBytes <= device.budgetBytes
                #expect(within, "seed \(seed): \(device.name) over budget")
            }
        }

        for _ in 0..<3000 {
            now += .milliseconds(Int64(rng.below(400)))
            let roll = rng.below(100)
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
            }
            apply(placer.handle(event, now: now))
        }

        // Quiesce: the supervisor completes everything, clients finish; every waiter resolves.
        for _ in 0..<200 {
            now += .milliseconds(500)
            for m in starting.sorted() { starting.remove(m); apply(placer.handle(.runtimeReady(model: m), now: now)) }
            for m in stopping.sorted() {
                stopping.remove(m); running.remove(m)
                apply(placer.handle(.runtimeExited(model: m, detail: "stopped"), now: now))
            }
            for id in inFlight.keys.sorted() { inFlight[id] = nil; apply(placer.handle(.finished(id), now: now)) }
            apply(placer.handle(.tick, now: now))
        }
        #expect(waiting.isEmpty, "seed \(seed): requests never answered: \(waiting)")
        #expect(admittedOrRejected == Int(nextID) - 1, "seed \(seed): every request answered exactly once")
        for snapshot in placer.modelSnapshots {
            #expect(snapshot.inFlight == 0 && snapshot.waiting == 0)
        }
    }
}
