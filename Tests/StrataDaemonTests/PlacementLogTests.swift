import Placer
import Testing
@testable import StrataDaemon

/// The decision log keeps what explains placement (starts, stops, stagings, rejections) with
/// budgets before and after, counts admissions instead of listing them, and stays bounded.
struct PlacementLogTests {
    static let device = [DeviceSnapshot(name: "gpu", budgetBytes: 1000, usedBytes: 400)]
    static let after = [DeviceSnapshot(name: "gpu", budgetBytes: 1000, usedBytes: 800)]

    @Test func decisionsAreListedAdmissionsCountedAndTheLogIsBounded() {
        var log = PlacementLog(capacity: 3)
        log.record(
            event: .request(1, model: "a"), actions: [.start(model: "a"), .admit(1, model: "a"), .stop(model: "b", reason: .idle)],
            devicesBefore: Self.device, devicesAfter: Self.after, hostBefore: 0, hostAfter: 300, hostBudget: 500,
            snapshot: { _ in nil })
        #expect(log.entries.map(\.action) == ["start", "stop"])
        #expect(log.admissions == 1)
        let stop = log.entries[1]
        #expect(stop.model == "b" && stop.reason == "idle past its ttl" && stop.event == "request 1 for a")
        #expect(stop.devices == [.init(device: "gpu", budget_bytes: 1000, used_before_bytes: 400, used_after_bytes: 800)])
        #expect(stop.host_weights_before_bytes == 0 && stop.host_weights_after_bytes == 300 && stop.host_weights_budget_bytes == 500)

        log.record(
            event: .tick, actions: [.reject(7, model: "c", .queueFull(limit: 4)), .releaseWeights(model: "d")],
            devicesBefore: Self.device, devicesAfter: Self.device, hostBefore: 300, hostAfter: 0, hostBudget: 500,
            snapshot: { _ in nil })
        #expect(log.entries.map(\.action) == ["stop", "reject", "release-weights"], "the oldest goes first past the capacity")
        #expect(log.entries[1].reason.contains("request 7") && log.entries[1].reason.contains("limit 4"))
    }
}
