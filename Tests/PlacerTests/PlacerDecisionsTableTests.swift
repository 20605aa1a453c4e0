import Testing
@testable import Placer

/// Priorities, minimum residency and measured footprints, as tables of events and the exact
/// actions expected.
struct PlacerDecisionsTableTests {
    static let mib: UInt64 = 1 << 20

    static func model(
        _ name: String, memoryMiB: UInt64 = 400, priority: Int = 0, minResidency: Duration = .zero,
        declared: Bool = true, pinned: Bool = false
    ) -> ModelSpec {
        ModelSpec(name: name, device: "cpu", memoryBytes: memoryMiB * mib, pinned: pinned, priority: priority,
                  minResidency: minResidency, memoryDeclared: declared)
    }

    @Test func lowerPriorityIsEvictedFirstEvenIfUsedMoreRecently() {
        var p = PlacerTableTests.placer(budgetMiB: 800, models: [
            Self.model("a", priority: 1), Self.model("b", priority: 0), Self.model("c", priority: 1),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(2), .finished(1), []),   // a idle since 2: least recently used
            (.seconds(3), .finished(2), []),   // b idle since 3, but of lower priority
            (.seconds(4), .request(3, model: "c"), [.stop(model: "b", reason: .evicted(forModel: "c"))]),
        ])
    }

    @Test func higherPriorityRequestEvictsALowerOneBusyOrNot() {
        var p = PlacerTableTests.placer(models: [Self.model("a", priority: 0), Self.model("b", priority: 5)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .request(2, model: "b"), []),      // a is busy: it drains
            (.seconds(3), .finished(1), [.stop(model: "a", reason: .evicted(forModel: "b"))]),
            (.seconds(4), .runtimeExited(model: "a", detail: ""), [.start(model: "b")]),
            (.seconds(5), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
        ])
    }

    @Test func lowerPriorityRequestWaitsInsteadOfEvictingAndTimesOut() {
        var p = PlacerTableTests.placer(models: [Self.model("a", priority: 5), Self.model("b", priority: 0)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            // a is idle but more important: b waits, and it is no `.doesNotFit`
            (.seconds(3), .request(2, model: "b"), []),
            (.seconds(10), .tick, []),
            // the answer says what it waited for
            (.seconds(23), .tick, [.reject(2, model: "b", .timedOut(
                waited: .seconds(20), retryAfter: .seconds(5),
                reason: "device 'cpu' has no room for it while 'a' has a higher priority (5 > 0)"))]),
        ])
        #expect(p.snapshot(of: "a")?.phase == .ready)
        #expect(p.snapshot(of: "b")?.phase == .stopped)
    }

    @Test func nothingIsStoppedForAStartThatCannotHappenYet() {
        var p = PlacerTableTests.placer(budgetMiB: 800, models: [
            Self.model("a", priority: 5), Self.model("b"), Self.model("c", memoryMiB: 800),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(2), .finished(1), []),
            (.seconds(2), .finished(2), []),
            // c needs a's memory too, which it may not take: b is not stopped for nothing
            (.seconds(3), .request(3, model: "c"), []),
        ])
        #expect(p.snapshot(of: "b")?.phase == .ready)
        #expect(p.snapshot(of: "c")?.waiting == 1)
    }

    /// Starting one replica of a model never evicts another replica of it (it stopped an idle
    /// sibling, which adds no capacity and throws away its cache): another model gives up its
    /// room, or the start waits and a request that times out is told why.
    @Test func aReplicaIsNeverEvictedToStartItsSibling() {
        func replica(_ i: Int) -> ModelSpec {
            ModelSpec(name: "m#\(i)", device: "cpu", memoryBytes: 400 * Self.mib, replicaOf: "m")
        }
        var p = PlacerTableTests.placer(budgetMiB: 800, models: [replica(0), replica(1), Self.model("c")])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "m#0"), [.start(model: "m#0")]),
            (.seconds(0), .request(2, model: "c"), [.start(model: "c")]),
            (.seconds(1), .runtimeReady(model: "m#0"), [.admit(1, model: "m#0")]),
            (.seconds(1), .runtimeReady(model: "c"), [.admit(2, model: "c")]),
            (.seconds(2), .finished(1), []),                   // m#0 idle, c busy
            (.seconds(3), .request(3, model: "m#1"), []),      // not the idle sibling: c drains
            (.seconds(4), .finished(2), [.stop(model: "c", reason: .evicted(forModel: "m#1"))]),
            (.seconds(5), .runtimeExited(model: "c", detail: ""), [.start(model: "m#1")]),
        ])

        var alone = PlacerTableTests.placer(budgetMiB: 400, models: [replica(0), replica(1)])
        PlacerTableTests.run(&alone, [
            (.seconds(0), .request(1, model: "m#0"), [.start(model: "m#0")]),
            (.seconds(1), .runtimeReady(model: "m#0"), [.admit(1, model: "m#0")]),
            (.seconds(2), .finished(1), []),
            (.seconds(5), .request(2, model: "m#1"), []),
            (.seconds(25), .tick, [.reject(2, model: "m#1", .timedOut(
                waited: .seconds(20), retryAfter: .seconds(5),
                reason: "device 'cpu' has no room for it while 'm#0' is another replica of 'm'"))]),
        ])
        #expect(alone.snapshot(of: "m#0")?.phase == .ready)

        // Another model waiting on a replica hears which model that replica is of.
        var other = PlacerTableTests.placer(budgetMiB: 400, models: [
            ModelSpec(name: "m#0", device: "cpu", memoryBytes: 400 * Self.mib, minResidency: .seconds(60), replicaOf: "m"),
            Self.model("c"),
        ])
        PlacerTableTests.run(&other, [
            (.seconds(0), .request(1, model: "m#0"), [.start(model: "m#0")]),
            (.seconds(1), .runtimeReady(model: "m#0"), [.admit(1, model: "m#0")]),
            (.seconds(2), .finished(1), []),
            (.seconds(5), .request(2, model: "c"), []),
            (.seconds(25), .tick, [.reject(2, model: "c", .timedOut(
                waited: .seconds(20), retryAfter: .seconds(5),
                reason: "device 'cpu' has no room for it while 'm#0' (a replica of 'm') stays loaded another 36s (min_residency)"))]),
        ])
    }

    @Test func minResidencyHoldsThenEvictionHappensOnTick() {
        var p = PlacerTableTests.placer(models: [Self.model("a", minResidency: .seconds(30)), Self.model("b")])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            (.seconds(15), .request(2, model: "b"), []),
            (.seconds(30), .tick, []),                     // ready for 29 s
            (.seconds(31), .tick, [.stop(model: "a", reason: .evicted(forModel: "b"))]),
            (.seconds(32), .runtimeExited(model: "a", detail: ""), [.start(model: "b")]),
            (.seconds(33), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
        ])
    }

    @Test func aRequestThatTimesOutBehindAResidencyIsToldSo() {
        var p = PlacerTableTests.placer(models: [Self.model("a", minResidency: .seconds(60)), Self.model("b")])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .finished(1), []),
            (.seconds(5), .request(2, model: "b"), []),
            (.seconds(25), .tick, [.reject(2, model: "b", .timedOut(
                waited: .seconds(20), retryAfter: .seconds(5),
                reason: "device 'cpu' has no room for it while 'a' stays loaded another 36s (min_residency)"))]),
        ])
    }

    @Test func measuredFootprintReplacesAnEstimateForThisAndLaterStarts() {
        var p = PlacerTableTests.placer(models: [
            Self.model("a", memoryMiB: 100, declared: false), Self.model("b", memoryMiB: 300),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .footprintMeasured(model: "a", bytes: 250 * Self.mib), []),
            (.seconds(2), .footprintMeasured(model: "a", bytes: 200 * Self.mib), []),   // below the peak
            (.seconds(3), .finished(1), []),
        ])
        #expect(p.snapshot(of: "a")?.memoryBytes == 250 * Self.mib)
        #expect(p.snapshot(of: "a")?.measuredBytes == 250 * Self.mib)
        #expect(p.deviceSnapshots.first?.usedBytes == 250 * Self.mib)
        PlacerTableTests.run(&p, [
            // 250 + 300 > 500, where the estimate would have fit
            (.seconds(4), .request(2, model: "b"), [.stop(model: "a", reason: .evicted(forModel: "b"))]),
            (.seconds(5), .runtimeExited(model: "a", detail: ""), [.start(model: "b")]),
            (.seconds(6), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(7), .finished(2), []),
            // the next start of a is accounted at its measured size too
            (.seconds(8), .request(3, model: "a"), [.stop(model: "b", reason: .evicted(forModel: "a"))]),
            (.seconds(9), .runtimeExited(model: "b", detail: ""), [.start(model: "a")]),
            (.seconds(10), .runtimeReady(model: "a"), [.admit(3, model: "a")]),
            // a new runtime's first report replaces the old one's
            (.seconds(11), .footprintMeasured(model: "a", bytes: 150 * Self.mib), []),
            (.seconds(12), .runtimeExited(model: "a", detail: "crash"), []),
            (.seconds(12), .footprintMeasured(model: "a", bytes: 900 * Self.mib), []),   // late: ignored
        ])
        #expect(p.snapshot(of: "a")?.memoryBytes == 150 * Self.mib)
    }

    @Test func measuredFootprintOfADeclaredModelIsOnlyRecorded() {
        var p = PlacerTableTests.placer(models: [Self.model("a", memoryMiB: 100), Self.model("b", memoryMiB: 300)])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(2), .footprintMeasured(model: "a", bytes: 250 * Self.mib), []),
            (.seconds(3), .request(2, model: "b"), [.start(model: "b")]),
        ])
        #expect(p.snapshot(of: "a")?.memoryBytes == 100 * Self.mib)
        #expect(p.snapshot(of: "a")?.measuredBytes == 250 * Self.mib)
        #expect(p.deviceSnapshots.first?.usedBytes == 400 * Self.mib)
    }

    @Test func footprintOverBudgetStopsAnIdleModelButNotABusyOne() {
        var p = PlacerTableTests.placer(models: [
            Self.model("a", memoryMiB: 100, declared: false), Self.model("b", memoryMiB: 200, priority: 9),
            Self.model("c", memoryMiB: 150),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "b"), [.start(model: "b")]),
            (.seconds(0), .request(3, model: "c"), [.start(model: "c")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "b"), [.admit(2, model: "b")]),
            (.seconds(1), .runtimeReady(model: "c"), [.admit(3, model: "c")]),
            (.seconds(2), .finished(2), []),
            // 300 + 200 + 150 > 500: the idle one goes, whatever its priority; busy a and c stay
            (.seconds(3), .footprintMeasured(model: "a", bytes: 300 * Self.mib), [.stop(model: "b", reason: .overBudget)]),
        ])
        #expect(p.snapshot(of: "a")?.phase == .ready)
        #expect(p.snapshot(of: "c")?.phase == .ready)
        #expect(p.deviceSnapshots.first?.usedBytes == 650 * Self.mib, "b holds its memory until it exits")
        PlacerTableTests.run(&p, [(.seconds(4), .runtimeExited(model: "b", detail: ""), [])])
        #expect(p.deviceSnapshots.first?.usedBytes == 450 * Self.mib)
    }

    @Test func footprintOverBudgetWithOnlyBusyModelsDrainsAndStartsNothing() {
        var p = PlacerTableTests.placer(models: [
            Self.model("a", memoryMiB: 100, declared: false), Self.model("c", memoryMiB: 150), Self.model("d", memoryMiB: 50),
        ])
        PlacerTableTests.run(&p, [
            (.seconds(0), .request(1, model: "a"), [.start(model: "a")]),
            (.seconds(0), .request(2, model: "c"), [.start(model: "c")]),
            (.seconds(1), .runtimeReady(model: "a"), [.admit(1, model: "a")]),
            (.seconds(1), .runtimeReady(model: "c"), [.admit(2, model: "c")]),
            (.seconds(2), .footprintMeasured(model: "a", bytes: 450 * Self.mib), []),
        ])
        // 600 > 500 with both busy: a (first in the order) drains, nothing is stopped
        #expect(p.snapshot(of: "a")?.phase == .draining(reason: .overBudget))
        #expect(p.snapshot(of: "c")?.phase == .ready)
        #expect(p.deviceSnapshots.first?.usedBytes == 600 * Self.mib)
        PlacerTableTests.run(&p, [
            (.seconds(3), .request(3, model: "d"), []),             // no start on a device over budget
            (.seconds(4), .finished(1), [.stop(model: "a", reason: .overBudget)]),
            (.seconds(5), .runtimeExited(model: "a", detail: ""), [.start(model: "d")]),
        ])
    }
}
