import Foundation
import Placer

/// The Placer's recent decisions, for `GET /admin/placements`: what happened, what was decided,
/// why, and the budgets before and after. Admissions of requests for ready models are counted,
/// not listed (they are most of the traffic and say nothing about placement). Bounded: the
/// oldest entries go first.
struct PlacementLog {
    struct Entry: Codable, Equatable {
        struct Budget: Codable, Equatable {
            var device: String
            var budget_bytes: UInt64
            var used_before_bytes: UInt64
            var used_after_bytes: UInt64
        }
        var time: String
        var event: String
        var action: String
        var model: String
        var reason: String
        var devices: [Budget]
        var host_weights_budget_bytes: UInt64
        var host_weights_before_bytes: UInt64
        var host_weights_after_bytes: UInt64
    }

    let capacity: Int
    private(set) var entries: [Entry] = []
    private(set) var admissions = 0

    init(capacity: Int = 512) {
        self.capacity = capacity
    }

    mutating func record(
        event: PlacerEvent, actions: [PlacerAction], devicesBefore: [DeviceSnapshot], devicesAfter: [DeviceSnapshot],
        hostBefore: UInt64, hostAfter: UInt64, hostBudget: UInt64, snapshot: (String) -> ModelSnapshot?,
        eventDescription: String? = nil
    ) {
        let time = ISO8601DateFormatter().string(from: Date())
        for action in actions {
            guard let (name, model, reason) = Self.describe(action, after: event, snapshot: snapshot) else {
                admissions += 1
                continue
            }
            let budgets = devicesAfter.map { after in
                Entry.Budget(device: after.name, budget_bytes: after.budgetBytes,
                             used_before_bytes: devicesBefore.first { $0.name == after.name }?.usedBytes ?? 0,
                             used_after_bytes: after.usedBytes)
            }
            entries.append(Entry(
                time: time, event: eventDescription ?? Self.describe(event), action: name, model: model, reason: reason, devices: budgets,
                host_weights_budget_bytes: hostBudget, host_weights_before_bytes: hostBefore, host_weights_after_bytes: hostAfter))
        }
        if entries.count > capacity { entries.removeFirst(entries.count - capacity) }
    }

    static func describe(_ event: PlacerEvent) -> String {
        switch event {
        case .request(let id, let model): "request \(id) for \(model)"
        case .cancel(let id): "request \(id) gave up"
        case .finished(let id): "request \(id) finished"
        case .runtimeReady(let model): "\(model) ready"
        case .runtimeExited(let model, let detail): "\(model) exited: \(detail)"
        case .load(let model): "operator: load \(model)"
        case .unload(let model): "operator: unload \(model)"
        case .weightsAt(let model, let tier): "weights of \(model) found in \(tier)"
        case .weightsSized(let model, let bytes): "weights of \(model) are \(ConfigUnits.formatBytes(bytes))"
        case .staged(let model): "weights of \(model) staged"
        case .stageFailed(let model, let detail): "staging \(model) failed: \(detail)"
        case .stageRequest(let model): "operator: stage \(model)"
        case .weightsReplaced(let model): "weights of \(model) staged anew while it runs"
        case .footprintMeasured(let model, let bytes): "\(model) measured at \(ConfigUnits.formatBytes(bytes))"
        case .tick: "clock"
        }
    }

    /// (action, model, reason) for the decisions worth listing; nil for an admission.
    static func describe(_ action: PlacerAction, after event: PlacerEvent, snapshot: (String) -> ModelSnapshot?)
        -> (String, String, String)?
    {
        switch action {
        case .admit:
            return nil
        case .start(let model):
            let weights = snapshot(model).map { "weights in \($0.weights)" } ?? ""
            let waiting = snapshot(model).map { "\($0.waiting) request(s) waiting" } ?? ""
            return ("start", model, [waiting, weights].filter { !$0.isEmpty }.joined(separator: ", "))
        case .stop(let model, let reason):
            return ("stop", model, "\(reason)")
        case .stage(let model):
            let weights = snapshot(model).map { "weights in \($0.weights)" } ?? ""
            return ("stage", model, "bring the weights into host RAM before starting (\(weights))")
        case .releaseWeights(let model):
            return ("release-weights", model, "make room in host RAM (the copy on NVMe stays)")
        case .reject(let id, let model, let rejection):
            return ("reject", model, "request \(id): \(ModelController.gatewayError(rejection, model: model).message)")
        }
    }
}
