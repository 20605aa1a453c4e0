import Testing
@testable import Placer

/// Hot reload: a new configuration taken by a running Placer, as tables of events and the exact
/// actions expected.
struct PlacerReconfigureTableTests {
    static let mib: UInt64 = 1 << 20

    static func configuration(budgetMiB: UInt64 = 500, hostMiB: UInt64 = 0, _ models: [ModelSpec]) -> PlacerConfiguration {
        PlacerConfiguration(
            devices: [DeviceSpec(name: "cpu", memoryBytes: budgetMiB * mib)], models: models,
            loadTimeout: .seconds(30), queueTimeout: .seconds(20),
            restartBackoffInitial: .seconds(1), restartBackoffMax: .seconds(8), hostWeightsBudget: hostMiB * mib)
    }

    static func model(_ name: String, memoryMiB: UInt64 = 400, weightsMiB: UInt64 = 0) -> ModelSpec {
        ModelSpec(name: name, device: "cpu", memoryBytes: memoryMiB * mib, ttl: .seconds(60),
                  weightBytes: weightsMiB * mib, stagesWeights: weightsMiB > 0)
    }

    @Test func removedBusyModelDrainsItsWaitersAreRejectedAndItIsForgotten() {
        var p = Placer(configuration: Self.configuration([Self.model("a"), Self.model("b")]))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .request(2, model: "b"), []),      // a drains for b
            (.seconds(3), .request(3, model: "a"), []),      // waits behind the drain
        ])
        #expect(p.reconfigure(Self.configuration([Self.model("b")]), restart: [], now: .seconds(4))
            == [.reject(3, model: "a", .unknownModel)])
        #expect(p.snapshot(of: "a")?.phase == .draining(reason: .removed))
        #expect(p.modelSnapshots.map(\.name) == ["b"])
        #expect(p.deviceSnapshots.first?.usedBytes == 400 * Self.mib, "a holds its memory until it exits")
        PlacerTableTests.run(&p, [
            (.seconds(5), .request(4, model: "a"), [.reject(4, model: "a", .unknownModel)]),
            (.seconds(5), .load(model: "a"), []),
            (.seconds(6), .finished(1), [.stop(model: "a", reason: .removed)]),
            (.seconds(7), .runtimeExited(model: "a", detail: ""), [.start(model: "b")]),
            (.seconds(8), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
        ])
        #expect(p.snapshot(of: "a") == nil)
    }

    @Test func finishedOfARemovedModelIsAcceptedAfterItIsForgotten() {
        var p = Placer(configuration: Self.configuration([Self.model("a")]))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
        ])
        #expect(p.reconfigure(Self.configuration([]), restart: [], now: .seconds(2)) == [])
        PlacerTableTests.run(&p, [
            (.seconds(3), .runtimeExited(model: "a", detail: "killed by signal 9"), []),
            (.seconds(4), .finished(1), []),
            (.seconds(5), .runtimeExited(model: "a", detail: "late"), []),
        ])
        #expect(p.snapshot(of: "a") == nil)
        #expect(p.requestModel.isEmpty)
    }

    @Test func restartDrainsThenStartsWithTheNewSpecOnTheNextRequest() {
        var p = Placer(configuration: Self.configuration([Self.model("a"), Self.model("b", memoryMiB: 100)]))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(2), .finished(2), []),
        ])
        let new = Self.configuration([Self.model("a", memoryMiB: 300), Self.model("b", memoryMiB: 100)])
        // b is idle: it stops at once; a is busy: it drains
        #expect(p.reconfigure(new, restart: ["a", "b"], now: .seconds(3)) == [.stop(model: "b", reason: .restarted)])
        #expect(p.snapshot(of: "a")?.phase == .draining(reason: .restarted))
        #expect(p.snapshot(of: "a")?.memoryBytes == 300 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(4), .request(3, model: "a"), []),
            (.seconds(4), .load(model: "a"), []),          // does not undo the restart
            (.seconds(5), .finished(1), [.stop(model: "a", reason: .restarted)]),
            (.seconds(6), .runtimeExited(model: "a", detail: ""), [.start(model: "a")]),
            (.seconds(6), .runtimeExited(model: "b", detail: ""), []),   // no request: stays stopped
            (.seconds(7), .runtimeReady(model: "a"), [.admit(3, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.loads == 2)
        #expect(p.snapshot(of: "b")?.phase == .stopped)
    }

    @Test func addedModelStartsStoppedAndKeptModelsKeepTheirState() {
        var p = Placer(configuration: Self.configuration([Self.model("a", memoryMiB: 200)]))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
        ])
        let new = Self.configuration([Self.model("a", memoryMiB: 200), Self.model("c", memoryMiB: 200)])
        #expect(p.reconfigure(new, restart: [], now: .seconds(2)) == [])
        #expect(p.snapshot(of: "a")?.phase == .ready)
        #expect(p.snapshot(of: "a")?.inFlight == 1)
        #expect(p.snapshot(of: "c")?.phase == .stopped)
        PlacerTableTests.run(&p, [
            (.seconds(3), .request(2, model: "c"), [.start(model: "c")]),
            (.seconds(3), .request(3, model: "a"), [.admit(3, model: "a")]),
        ])
    }

    @Test func shrunkDeviceBudgetStopsIdleModelsAndDrainsBusyOnes() {
        var p = Placer(configuration: Self.configuration([Self.model("a", memoryMiB: 200), Self.model("b", memoryMiB: 200)]))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(2), .finished(1), []),
        ])
        let new = Self.configuration(budgetMiB: 150, [Self.model("a", memoryMiB: 200), Self.model("b", memoryMiB: 200)])
        #expect(p.reconfigure(new, restart: [], now: .seconds(3)) == [.stop(model: "a", reason: .overBudget)])
        #expect(p.snapshot(of: "b")?.phase == .draining(reason: .overBudget))
        #expect(p.deviceSnapshots.first?.budgetBytes == 150 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(4), .finished(2), [.stop(model: "b", reason: .overBudget)]),
            (.seconds(5), .runtimeExited(model: "a", detail: ""), []),
            (.seconds(5), .runtimeExited(model: "b", detail: ""), []),
            // now it does not fit at all
            (.seconds(6), .request(3, model: "a"),
             [.reject(3, model: "a", .doesNotFit(needBytes: 200 * Self.mib, device: "cpu", budgetBytes: 150 * Self.mib,
                                                  pinnedBytes: 0))]),
        ])
    }

    @Test func shrunkHostBudgetReleasesIdleCopiesNowAndCopiesInUseOnceStopped() {
        let models = [Self.model("a", memoryMiB: 100, weightsMiB: 300), Self.model("b", memoryMiB: 100, weightsMiB: 300)]
        var p = Placer(configuration: Self.configuration(hostMiB: 1000, models))
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "b"), [.stage(model: "b")]),
            (.seconds(1), .staged(model: "b"), [.start(model: "b")]),
            (.seconds(2), .runtimeReady(model: "b"), [.admit(1, model: "b")]),
            (.seconds(3), .finished(1), []),
            (.seconds(3), .unload(model: "b"), [.stop(model: "b", reason: .operatorRequest)]),
            (.seconds(4), .runtimeExited(model: "b", detail: ""), []),
            (.seconds(5), .request(2, model: "a"), [.stage(model: "a")]),
            (.seconds(6), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(7), .runtimeReady(model: "a"), [.admit(2, model: "a")]),
        ])
        #expect(p.hostWeightsUsedBytes == 600 * Self.mib)
        // b's copy is idle and goes; a's is in use and stays over the budget until a stops
        #expect(p.reconfigure(Self.configuration(hostMiB: 200, models), restart: [], now: .seconds(8))
            == [.releaseWeights(model: "b")])
        #expect(p.hostWeightsUsedBytes == 300 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(9), .finished(2), []),
            (.seconds(9), .unload(model: "a"), [.stop(model: "a", reason: .operatorRequest)]),
            (.seconds(10), .runtimeExited(model: "a", detail: ""), [.releaseWeights(model: "a")]),
        ])
        #expect(p.hostWeightsUsedBytes == 0)
    }
}
