import Testing
@testable import Placer

/// Decisions as tables: an event at a time, and the exact actions expected.
struct PlacerTableTests {
    static let mib: UInt64 = 1 << 20

    static func placer(budgetMiB: UInt64 = 500, models: [ModelSpec]? = nil) -> Placer {
        Placer(configuration: PlacerConfiguration(
            devices: [DeviceSpec(name: "cpu", memoryBytes: budgetMiB * mib)],
            models: models ?? [
                ModelSpec(name: "a", device: "cpu", memoryBytes: 400 * mib, ttl: .seconds(60)),
                ModelSpec(name: "b", device: "cpu", memoryBytes: 400 * mib, ttl: .seconds(60)),
            ],
            loadTimeout: .seconds(30), queueTimeout: .seconds(20),
            restartBackoffInitial: .seconds(1), restartBackoffMax: .seconds(8)))
    }

    /// Runs `steps` and checks each step's actions.
    static func run(_ placer: inout Placer, _ steps: [(Duration, PlacerEvent, [PlacerAction])],
                    sourceLocation: SourceLocation = #_sourceLocation) {
        for (index, (time, event, expected)) in steps.enumerated() {
            let actions = placer.handle(event, now: time)
            #expect(actions == expected, "step \(index): \(event)", sourceLocation: sourceLocation)
        }
    }

    @Test func firstRequestStartsRuntimeAndIsAdmittedWhenReady() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .request(2, model: "a"), []),
            (.seconds(2), .runtimeReady(model: "a"), [.admit(1, model: "a"), .admit(2, model: "a")]),
            (.seconds(3), .request(3, model: "a"), [.admit(3, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.inFlight == 3)
        #expect(p.snapshot(of: "a")?.phase.publicStatus == "ready")
    }

    @Test func unknownModelIsRejected() {
        var p = Self.placer()
        Self.run(&p, [(.zero, .request(1, model: "zzz"), [.reject(1, model: "zzz", .unknownModel)])])
    }

    @Test func swapEvictsIdleModelAndStartsAfterItExits() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            (.seconds(3), .request(2, model: "b"), [.stop(model: "a", reason: .evicted(forModel: "b"))]),
            // memory counts as used until the process is really gone
            (.seconds(4), .tick, []),
            (.seconds(5), .runtimeExited(model: "a", detail: "exited with code 0"), [.start(model: "b")]),
            (.seconds(6), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
    }

    @Test func busyModelIsDrainedNotKilled() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            // b needs a's memory but a has request 1 in flight: a drains, no stop yet
            (.seconds(2), .request(2, model: "b"), []),
            // new requests for a draining model wait, so b cannot starve
            (.seconds(3), .request(3, model: "a"), []),
            (.seconds(4), .finished(1), [.stop(model: "a", reason: .evicted(forModel: "b"))]),
            (.seconds(5), .runtimeExited(model: "a", detail: ""), [.start(model: "b")]),
            (.seconds(6), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            // a's waiter now needs b's memory; b is busy with 2, so b drains in turn
            (.seconds(7), .finished(2), [.stop(model: "b", reason: .evicted(forModel: "a"))]),
            (.seconds(8), .runtimeExited(model: "b", detail: ""), [.start(model: "a")]),
            (.seconds(9), .runtimeReady(model: "a"), [.admit(3, model: "a")]),
        ])
    }

    @Test func drainIsUndoneWhenRivalGivesUp() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .request(2, model: "b"), []),
            (.seconds(3), .request(3, model: "a"), []),
            (.seconds(4), .cancel(2), [.admit(3, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.phase == .ready)
    }

    @Test func pinnedModelIsNeverEvictedAndTooBigModelGetsClearRejection() {
        var p = Self.placer(models: [
            ModelSpec(name: "a", device: "cpu", memoryBytes: 400 * Self.mib, pinned: true),
            ModelSpec(name: "b", device: "cpu", memoryBytes: 400 * Self.mib),
        ])
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            (.seconds(3), .request(2, model: "b"),
             [.reject(2, model: "b", .doesNotFit(needBytes: 400 * Self.mib, device: "cpu", budgetBytes: 500 * Self.mib,
                                                  pinnedBytes: 400 * Self.mib))]),
        ])
    }

    @Test func leastRecentlyUsedIdleModelIsTheVictim() {
        var p = Self.placer(budgetMiB: 800, models: ["a", "b", "c"].map {
            ModelSpec(name: $0, device: "cpu", memoryBytes: 400 * Self.mib)
        })
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(2), .finished(2), []),   // b idle since 2
            (.seconds(3), .finished(1), []),   // a idle since 3
            (.seconds(4), .request(3, model: "c"), [.stop(model: "b", reason: .evicted(forModel: "c"))]),
        ])
    }

    @Test func idleModelUnloadsAfterTTLButNotWhileBusy() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(100), .tick, []),                 // busy: no unload however long
            (.seconds(101), .finished(1), []),
            (.seconds(160), .tick, []),                 // 59 s idle
            (.seconds(161), .tick, [.stop(model: "a", reason: .idle)]),
            (.seconds(162), .runtimeExited(model: "a", detail: ""), []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
    }

    @Test func crashRejectsWaitersAndRestartWaitsForBackoff() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeExited(model: "a", detail: "exited with code 1"),
             [.reject(1, model: "a", .runtimeFailed(detail: "exited with code 1"))]),
            // backoff 1 s after a start that failed: a request at 1.5 s is told so at once (it
            // would wait for a start likely to fail the same way); one after 2 s starts it again
            (.milliseconds(1500), .request(2, model: "a"), [.reject(2, model: "a", .runtimeFailed(detail: "exited with code 1"))]),
            (.milliseconds(2500), .request(3, model: "a"), [.start(model: "a")]),
            (.seconds(3), .runtimeExited(model: "a", detail: "exited with code 1"),
             [.reject(3, model: "a", .runtimeFailed(detail: "exited with code 1"))]),
        ])
        // second failure in a row: backoff doubled to 2 s
        #expect(p.snapshot(of: "a")?.phase == .failed(retryAt: .seconds(5), detail: "exited with code 1"))
        #expect(p.snapshot(of: "a")?.phase.publicStatus == "failed")
    }

    @Test func aRequestAfterACrashOfARunningModelWaitsForItsRestart() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            (.seconds(3), .runtimeExited(model: "a", detail: "killed by signal 9"), []),
            // it served before it died: a request in the backoff waits for the restart
            (.milliseconds(3500), .request(2, model: "a"), []),
            (.seconds(4), .tick, [.start(model: "a")]),
            (.seconds(5), .runtimeReady(model: "a"), [.admit(2, model: "a")]),
        ])
    }

    @Test func crashWhileServingKeepsInFlightAccountingAndRecovers() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .runtimeExited(model: "a", detail: "killed by signal 9"), []),
            (.seconds(2), .finished(1), []),
            (.seconds(4), .request(2, model: "a"), [.start(model: "a")]),
            (.seconds(5), .runtimeReady(model: "a"), [.admit(2, model: "a")]),
        ])
        #expect(p.snapshot(of: "a")?.consecutiveFailures == 0)
        #expect(p.snapshot(of: "a")?.inFlight == 1)
        #expect(p.requestModel.count == 1, "request 1 was forgotten once finished")
    }

    @Test func loadTimeoutStopsRuntimeAndWaitersTimeOut() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(20), .tick, [.reject(1, model: "a", .timedOut(
                waited: .seconds(20), retryAfter: .seconds(5),
                reason: "its runtime has been starting for 20s (supervisor.load_timeout applies)"))]),
            (.seconds(30), .tick, [.stop(model: "a", reason: .loadTimeout)]),
            (.seconds(31), .runtimeReady(model: "a"), []),   // too late: ignored
            (.seconds(32), .runtimeExited(model: "a", detail: "killed by signal 15"), []),
        ])
        if case .failed = p.snapshot(of: "a")?.phase {} else { Issue.record("expected failed after load timeout") }
    }

    @Test func queueIsBounded() {
        var p = Self.placer(models: [ModelSpec(name: "a", device: "cpu", memoryBytes: 1, maxQueued: 2)])
        Self.run(&p, [
            (.zero, .load(model: "a"), [.start(model: "a")]),   // an operator's load takes no client's place
            (.zero, .request(1, model: "a"), []),
            (.zero, .request(2, model: "a"), []),
            (.zero, .request(3, model: "a"), [.reject(3, model: "a", .queueFull(limit: 2))]),
        ])
    }

    @Test func operatorUnloadDrainsThenStopsAndLoadStartsWithoutRequest() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .load(model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), []),
            (.seconds(2), .request(1, model: "a"), [.admit(1, model: "a")]),
            (.seconds(3), .unload(model: "a"), []),
            (.seconds(4), .finished(1), [.stop(model: "a", reason: .operatorRequest)]),
            (.seconds(5), .runtimeExited(model: "a", detail: ""), []),
        ])
        #expect(p.snapshot(of: "a")?.phase == .stopped)
    }

    @Test func cancelledWaiterIsForgottenAndFinishedIsIdempotent() {
        var p = Self.placer()
        Self.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .cancel(1), []),
            (.seconds(2), .runtimeReady(model: "a"), []),
            (.seconds(3), .finished(1), []),
            (.seconds(3), .finished(1), []),
        ])
        #expect(p.snapshot(of: "a")?.inFlight == 0)
        #expect(p.snapshot(of: "a")?.waiting == 0)
    }
}
