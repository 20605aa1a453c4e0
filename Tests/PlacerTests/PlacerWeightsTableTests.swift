import Testing
@testable import Placer

/// Host staging of weights and eviction by expected reload cost, as tables of events and the
/// exact actions expected.
struct PlacerWeightsTableTests {
    static let mib: UInt64 = 1 << 20

    static func placer(
        deviceMiB: UInt64 = 10_000, hostMiB: UInt64 = 1000, models: [ModelSpec]
    ) -> Placer {
        Placer(configuration: PlacerConfiguration(
            devices: [DeviceSpec(name: "gpu", memoryBytes: deviceMiB * mib)], models: models,
            loadTimeout: .seconds(30), queueTimeout: .seconds(20),
            restartBackoffInitial: .seconds(1), restartBackoffMax: .seconds(8),
            hostWeightsBudget: hostMiB * mib, stageTimeout: .seconds(10)))
    }

    static func model(
        _ name: String, memoryMiB: UInt64 = 100, weightsMiB: UInt64, startSeconds: Double = 1,
        ttl: Duration? = nil, pinned: Bool = false, stages: Bool = true
    ) -> ModelSpec {
        ModelSpec(name: name, device: "gpu", memoryBytes: memoryMiB * mib, ttl: ttl, pinned: pinned,
                  weightBytes: weightsMiB * mib, startSeconds: startSeconds, stagesWeights: stages)
    }

    /// Replica `i` of model "r" (`r#i`).
    static func replica(_ i: Int, weightsMiB: UInt64) -> ModelSpec {
        var spec = model("r#\(i)", weightsMiB: weightsMiB)
        spec.replicaOf = "r"
        return spec
    }

    @Test func weightsAreStagedThenTheRuntimeStarts() {
        var p = Self.placer(models: [Self.model("a", memoryMiB: 400, weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            (.seconds(1), .request(2, model: "a"), []),
            (.seconds(1), .tick, []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .staging(since: .zero))
        #expect(p.snapshot(of: "a")?.phase.publicStatus == "loading")
        #expect(p.snapshot(of: "a")?.hostCopy == .staging(since: .zero))
        #expect(p.hostWeightsUsedBytes == 300 * Self.mib)
        #expect(p.deviceSnapshots.first?.usedBytes == 400 * Self.mib, "the device reservation holds while staging")
        PlacerTableTests.run(&p, [
            (.seconds(2), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(3), .runtimeReady(model: "a"), [.admit(1, model: "a"), .admit(2, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.weights == .host)
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
    }

    @Test func copiesAreAccountedAtTheirSizeOnceKnownNotTheEstimate() {
        // Two http sources estimated at 240 MiB each (from `memory`): in a 300 MiB budget only one fits.
        var p = Self.placer(hostMiB: 300, models: [Self.model("a", weightsMiB: 240), Self.model("b", weightsMiB: 240)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            // the staging found them to be 94 MiB: that is what the copy holds
            (.seconds(1), .weightsSized(model: "a", bytes: 94 * Self.mib), []),
            (.seconds(1), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(2), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(3), .weightsSized(model: "b", bytes: 94 * Self.mib), []),
            // b's copy fits beside a's: no release
            (.seconds(3), .request(2, model: "b"), [.stage(model: "b")]),
        ])
        #expect(p.hostWeightsUsedBytes == 188 * Self.mib)
        // a copy found larger than its estimate puts the budget over: the copies that may go, go
        var q = Self.placer(hostMiB: 300, models: [Self.model("a", weightsMiB: 100), Self.model("b", weightsMiB: 100)])
        PlacerTableTests.run(&q, [
            (.seconds(0), .weightsAt(model: "a", tier: .host), []),
            (.seconds(0), .weightsAt(model: "b", tier: .host), []),
            (.seconds(1), .weightsSized(model: "b", bytes: 250 * Self.mib), [.releaseWeights(model: "a")]),
        ])
        #expect(q.hostWeightsUsedBytes == 250 * Self.mib)
    }

    @Test func stageFailureRejectsWaitersAndBacksOffAndTimeoutReleases() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            (.seconds(1), .stageFailed(model: "a", detail: "remote returned 404"),
             [.reject(1, model: "a", .runtimeFailed(detail: "remote returned 404"))]),
            // backoff 1 s
            (.milliseconds(1500), .request(2, model: "a"), []),
            (.seconds(2), .tick, [.stage(model: "a")]),
            // stageTimeout 10 s: abandoned, cleaned up, and a failure like any other (backoff 2 s)
            (.seconds(12), .tick,
             [.releaseWeights(model: "a"),
              .reject(2, model: "a", .runtimeFailed(detail: "weights not staged within \(Duration.seconds(10))"))]),
            // a reply to the abandoned staging: make sure it is gone
            (.seconds(13), .staged(model: "a"), [.releaseWeights(model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.phase == .failed(
            retryAt: .seconds(14), detail: "weights not staged within \(Duration.seconds(10))"))
        #expect(p.snapshot(of: "a")?.hostCopy == .absent)
        #expect(p.hostWeightsUsedBytes == 0)
    }

    /// A copy dropped (a reload changed the source) while a replica still runs on it stays
    /// counted until that replica is gone: the file is unlinked but its pages stay mapped. (The
    /// idle sibling restarted on a new copy beside it and another model staged too: 281 MiB of
    /// copies in RAM against a 200 MiB budget.)
    @Test func aCopyDroppedUnderARunningReplicaCountsUntilItStops() {
        var p = Self.placer(hostMiB: 200, models: [Self.replica(0, weightsMiB: 94), Self.replica(1, weightsMiB: 94),
                                                   Self.model("b", weightsMiB: 96)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "r#0"), [.stage(model: "r#0")]),
            (.seconds(1), .staged(model: "r#0"), [.start(model: "r#0")]),
            (.seconds(2), .runtimeReady(model: "r#0"), [.admit(1, model: "r#0")]),
            (.seconds(2), .request(2, model: "r#1"), [.start(model: "r#1")]),
            (.seconds(3), .runtimeReady(model: "r#1"), [.admit(2, model: "r#1")]),
            (.seconds(3), .finished(2), []),
            // the copy is dropped under both runtimes
            (.seconds(4), .weightsAt(model: "r#0", tier: .nvme), []),
            (.seconds(4), .weightsAt(model: "r#1", tier: .nvme), []),
        ])
        #expect(p.hostWeightsUsedBytes == 94 * Self.mib, "still mapped: counted once")
        PlacerTableTests.run(&p, [
            (.seconds(5), .unload(model: "r#1"), [.stop(model: "r#1", reason: .operatorRequest)]),
            (.seconds(6), .runtimeExited(model: "r#1", detail: "stopped"), []),
            // r#0 still maps the old copy: the new one fits beside it, b's does not
            (.seconds(7), .request(3, model: "r#1"), [.stage(model: "r#1")]),
            (.seconds(7), .request(4, model: "b"), [.start(model: "b")]),
        ])
        #expect(p.hostWeightsUsedBytes == 188 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(8), .finished(1), []),
            (.seconds(8), .unload(model: "r#0"), [.stop(model: "r#0", reason: .operatorRequest)]),
            (.seconds(9), .runtimeExited(model: "r#0", detail: "stopped"), []),
        ])
        #expect(p.hostWeightsUsedBytes == 94 * Self.mib, "the old copy gone with its last runtime")
    }

    /// Weights staged anew while the model runs: its requests finish on the old runtime, those
    /// that come meanwhile wait, and it starts again (on the new copy) once it has stopped.
    @Test func aRuntimeOnReplacedWeightsFinishesItsRequestsThenStartsAgain() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            (.seconds(1), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(2), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(3), .weightsReplaced(model: "a"), []),
            (.seconds(4), .request(2, model: "a"), []),
            (.seconds(5), .finished(1), [.stop(model: "a", reason: .newWeights)]),
            // the copy in RAM is the new one: no staging before the start
            (.seconds(6), .runtimeExited(model: "a", detail: "stopped"), [.start(model: "a")]),
            (.seconds(7), .runtimeReady(model: "a"), [.admit(2, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
        // a stopped model has no runtime to restart: nothing happens
        var q = Self.placer(models: [Self.model("b", weightsMiB: 300)])
        PlacerTableTests.run(&q, [(.seconds(0), .weightsReplaced(model: "b"), [])])
        #expect(q.snapshot(of: "b")?.phase == .stopped)
    }

    @Test func hostCopyOutlivesTheRuntimeAndTheNextStartSkipsStaging() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300, ttl: .seconds(60))])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            (.seconds(1), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(2), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(3), .finished(1), []),
            (.seconds(63), .tick, [.stop(model: "a", reason: .idle)]),
            (.seconds(64), .runtimeExited(model: "a", detail: ""), []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
        #expect(p.hostWeightsUsedBytes == 300 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(65), .request(2, model: "a"), [.start(model: "a")]),
            (.seconds(66), .runtimeReady(model: "a"), [.admit(2, model: "a")]),
        ])
    }

    @Test func roomIsMadeByReleasingTheCopyWithTheLowestExpectedLoss() {
        // y is used more recently than x, but x is far dearer to bring back (slow to start),
        // so y's copy goes; p (pinned) and r (running) are never candidates.
        var p = Self.placer(models: [
            Self.model("p", weightsMiB: 300, pinned: true),
            Self.model("r", weightsMiB: 300),
            Self.model("x", weightsMiB: 300, startSeconds: 20),
            Self.model("y", weightsMiB: 100),
            Self.model("n", weightsMiB: 100),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .stageRequest(model: "p"), [.stage(model: "p")]),
            (.seconds(0), .staged(model: "p"), []),
            (.seconds(0), .stageRequest(model: "x"), [.stage(model: "x")]),
            (.seconds(0), .staged(model: "x"), []),
            (.seconds(100), .stageRequest(model: "y"), [.stage(model: "y")]),
            (.seconds(100), .staged(model: "y"), []),
            (.seconds(100), .request(1, model: "r"), [.stage(model: "r")]),
            (.seconds(100), .staged(model: "r"), [.start(model: "r")]),
            (.seconds(101), .runtimeReady(model: "r"), [.admit(1, model: "r")]),
        ])
        #expect(p.hostWeightsUsedBytes == 1000 * Self.mib)
        // x: (300 MiB / 1.5 GB/s + 20 s) / (200 s + 1) ≈ 0.100; y: (100 MiB / 1.5 GB/s + 1 s) / (100 s + 1) ≈ 0.011
        PlacerTableTests.run(&p, [
            (.seconds(200), .request(2, model: "n"), [.releaseWeights(model: "y"), .stage(model: "n")]),
        ])
        #expect(p.snapshot(of: "y")?.hostCopy == .absent)
        #expect(p.snapshot(of: "y")?.weights == .nvme)
        for name in ["p", "r", "x"] { #expect(p.snapshot(of: name)?.hostCopy == .resident) }
        #expect(p.hostWeightsUsedBytes == 1000 * Self.mib)
    }

    @Test func stagingIsSkippedWhenRunningModelsHoldTheHostBudget() {
        var p = Self.placer(hostMiB: 500, models: [
            Self.model("a", weightsMiB: 400),
            Self.model("b", weightsMiB: 300),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.stage(model: "a")]),
            (.seconds(1), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(2), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            // a's copy is in use: b starts from the slower tier rather than wait
            (.seconds(3), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(4), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
        ])
        #expect(p.snapshot(of: "b")?.hostCopy == .absent)
        #expect(p.snapshot(of: "b")?.weights == .nvme)
        #expect(p.hostWeightsUsedBytes == 400 * Self.mib)
    }

    @Test func evictionKeepsABigRecentlyUsedModelOverASmallIdleOne() {
        var p = Self.placer(deviceMiB: 1000, models: [
            Self.model("big", memoryMiB: 500, weightsMiB: 6000, stages: false),
            Self.model("small", memoryMiB: 300, weightsMiB: 100, stages: false),
            Self.model("c", memoryMiB: 400, weightsMiB: 100, stages: false),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "big"), [.start(model: "big")]),
            (.seconds(0), .request(2, model: "small"), [.start(model: "small")]),
            (.seconds(1), .runtimeReady(model: "big"), [.admit(1, model: "big")]),
            (.seconds(1), .runtimeReady(model: "small"), [.admit(2, model: "small")]),
            (.seconds(40), .finished(1), []),   // big idle since 40
            (.seconds(50), .finished(2), []),   // small idle since 50: least-recently-used would pick big
            // big: (6000 MiB / 1.5 GB/s + 1 s) / 21 ≈ 0.25; small: (100 MiB / 1.5 GB/s + 1 s) / 11 ≈ 0.10
            (.seconds(60), .request(3, model: "c"), [.stop(model: "small", reason: .evicted(forModel: "c"))]),
        ])
    }

    @Test func aModelWhoseWeightsAreInRAMStartsBeforeOneFromTheNetworkThatAskedJustBefore() {
        // Room for one model at a time. `far` must come from the network (2000 MiB at 200 MB/s:
        // about 11 s with its start); `near` has its copy in RAM (about 1.1 s).
        var p = Self.placer(deviceMiB: 500, models: [
            Self.model("far", memoryMiB: 400, weightsMiB: 2000),
            Self.model("near", memoryMiB: 400, weightsMiB: 300),
            Self.model("old", memoryMiB: 400, weightsMiB: 100, stages: false),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .weightsAt(model: "near", tier: .host), []),
            (.seconds(0), .request(1, model: "old"), [.start(model: "old")]),
            (.seconds(1), .runtimeReady(model: "old"), [.admit(1, model: "old")]),
            (.seconds(2), .finished(1), []),
            (.seconds(10), .request(2, model: "far"), [.stop(model: "old", reason: .evicted(forModel: "far"))]),
            (.seconds(11), .request(3, model: "near"), []),
            // ready at 11 + 1.1 s beats 10 + 11 s: `near` goes first, `far` keeps waiting
            (.seconds(12), .runtimeExited(model: "old", detail: "stopped"), [.start(model: "near")]),
        ])
        #expect(p.snapshot(of: "far")?.phase == .stopped && p.snapshot(of: "far")?.waiting == 1)

        // but one that has waited longer than the difference goes first: no starvation
        var q = Self.placer(deviceMiB: 500, models: [
            Self.model("far", memoryMiB: 400, weightsMiB: 2000),
            Self.model("near", memoryMiB: 400, weightsMiB: 300),
            Self.model("old", memoryMiB: 400, weightsMiB: 100, stages: false),
        ])
        PlacerTableTests.run(&q, [
            (.seconds(0), .weightsAt(model: "near", tier: .host), []),
            (.seconds(0), .request(1, model: "old"), [.start(model: "old")]),
            (.seconds(0), .request(2, model: "far"), []),
            (.seconds(15), .request(3, model: "near"), []),
            (.seconds(16), .runtimeExited(model: "old", detail: "crashed"),
             [.reject(1, model: "old", .runtimeFailed(detail: "crashed")), .start(model: "far")]),
        ])
    }

    @Test func stageRequestStagesWithoutStarting() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300), Self.model("plain", weightsMiB: 300, stages: false)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .stageRequest(model: "plain"), []),
            (.seconds(0), .stageRequest(model: "a"), [.stage(model: "a")]),
            (.seconds(0), .stageRequest(model: "a"), []),
            (.seconds(1), .staged(model: "a"), []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
        PlacerTableTests.run(&p, [(.seconds(2), .request(1, model: "a"), [.start(model: "a")])])
    }

    @Test func requestDuringRequestedStagingWaitsForItWithoutAnotherStage() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .stageRequest(model: "a"), [.stage(model: "a")]),
            (.seconds(1), .request(1, model: "a"), []),
            (.seconds(2), .staged(model: "a"), [.start(model: "a")]),
            (.seconds(3), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
        ])
    }

    /// The replicas of a model run from one copy in RAM: it counts once against the budget (each
    /// replica counted it, so 3 replicas of 400 MiB took 1,200 MiB of a 1,000 MiB budget and the
    /// third started from the slower tier), and it goes only with all of them.
    @Test func replicasShareOneHostCopy() {
        var p = Self.placer(hostMiB: 1000, models: [Self.replica(0, weightsMiB: 400), Self.replica(1, weightsMiB: 400),
                                                    Self.replica(2, weightsMiB: 400), Self.model("b", weightsMiB: 500),
                                                    Self.model("c", weightsMiB: 500)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "r#0"), [.stage(model: "r#0")]),
            (.seconds(1), .staged(model: "r#0"), [.start(model: "r#0")]),
            // the copy is in RAM: the other replicas start from it, nothing more to stage
            (.seconds(1), .request(2, model: "r#1"), [.start(model: "r#1")]),
            (.seconds(1), .request(3, model: "r#2"), [.start(model: "r#2")]),
        ])
        #expect(p.snapshot(of: "r#1")?.hostCopy == .resident && p.snapshot(of: "r#1")?.weights == .host)
        #expect(p.hostWeightsUsedBytes == 400 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(3), .runtimeReady(model: "r#0"), [.admit(1, model: "r#0")]),
            (.seconds(3), .runtimeReady(model: "r#1"), [.admit(2, model: "r#1")]),
            (.seconds(3), .runtimeReady(model: "r#2"), [.admit(3, model: "r#2")]),
            // b fits beside the one copy
            (.seconds(4), .request(4, model: "b"), [.stage(model: "b")]),
            (.seconds(5), .staged(model: "b"), [.start(model: "b")]),
            (.seconds(6), .runtimeReady(model: "b"), [.admit(4, model: "b")]),
            (.seconds(7), .finished(1), []), (.seconds(7), .finished(2), []), (.seconds(7), .finished(3), []),
            (.seconds(8), .unload(model: "r#0"), [.stop(model: "r#0", reason: .operatorRequest)]),
            (.seconds(8), .unload(model: "r#1"), [.stop(model: "r#1", reason: .operatorRequest)]),
            (.seconds(9), .runtimeExited(model: "r#0", detail: "stopped"), []),
            (.seconds(9), .runtimeExited(model: "r#1", detail: "stopped"), []),
            // r#2 still runs from the copy: c (500 MiB) does not fit, and the copy may not go
            (.seconds(10), .request(5, model: "c"), [.start(model: "c")]),
        ])
        #expect(p.snapshot(of: "r#0")?.hostCopy == .resident && p.snapshot(of: "c")?.hostCopy == .absent)
        PlacerTableTests.run(&p, [
            (.seconds(11), .runtimeReady(model: "c"), [.admit(5, model: "c")]),
            (.seconds(12), .finished(5), []),
            (.seconds(12), .unload(model: "c"), [.stop(model: "c", reason: .operatorRequest)]),
            (.seconds(13), .runtimeExited(model: "c", detail: "stopped"), []),
            (.seconds(14), .unload(model: "r#2"), [.stop(model: "r#2", reason: .operatorRequest)]),
            (.seconds(15), .runtimeExited(model: "r#2", detail: "stopped"), []),
            // now every replica has let go: the copy goes whole (one release, with its last holder)
            (.seconds(16), .request(6, model: "c"), [.releaseWeights(model: "r#2"), .stage(model: "c")]),
        ])
        #expect(["r#0", "r#1", "r#2"].allSatisfy { p.snapshot(of: $0)?.hostCopy == .absent })
        #expect(p.hostWeightsUsedBytes == 1000 * Self.mib)
    }

    @Test func unloadDuringStagingStopsAndTheLateCopyIsKept() {
        var p = Self.placer(models: [Self.model("a", weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .load(model: "a"), [.stage(model: "a")]),
            (.seconds(1), .unload(model: "a"), []),
            (.seconds(2), .staged(model: "a"), []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
        #expect(p.deviceSnapshots.first?.usedBytes == 0)
    }

    @Test func reportedCopiesAreAdoptedWithinTheBudgetAndLostCopiesForgotten() {
        var p = Self.placer(hostMiB: 500, models: [Self.model("a", weightsMiB: 300), Self.model("b", weightsMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .weightsAt(model: "a", tier: .host), []),
            // no room left for b's: released, its NVMe copy stays
            (.seconds(0), .weightsAt(model: "b", tier: .host), [.releaseWeights(model: "b")]),
        ])
        #expect(p.snapshot(of: "a")?.hostCopy == .resident)
        #expect(p.snapshot(of: "b")?.weights == .nvme)
        PlacerTableTests.run(&p, [(.seconds(1), .weightsAt(model: "a", tier: .remote), [])])
        #expect(p.snapshot(of: "a")?.hostCopy == .absent)
        #expect(p.snapshot(of: "a")?.weights == .remote)
        #expect(p.hostWeightsUsedBytes == 0)
    }
}
