import Foundation
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Gateway metrics through swift-metrics; the executable picks the backend (Prometheus).
/// Names carry the `strata_` prefix; durations are recorded in nanoseconds and exported in seconds.
struct GatewayMetrics: Sendable {
    func rejected(model: String, endpoint: Endpoint, code: String) {
        let model = model.isEmpty ? "-" : model
        Counter(label: "strata_requests_total", dimensions: [("model", model), ("endpoint", endpoint.label), ("outcome", code)])
            .increment()
        Counter(label: "strata_request_errors_total", dimensions: [("model", model), ("endpoint", endpoint.label), ("code", code)])
            .increment()
    }

    /// A request whose upstream failed before answering, sent again to another replica.
    func retried(model: String, endpoint: Endpoint) {
        Counter(label: "strata_request_retries_total", dimensions: [("model", model), ("endpoint", endpoint.label)]).increment()
    }
}

/// Follows one admitted request to its end and records it exactly once.
final class RequestObserver: Sendable {
    private struct State {
        var firstChunkAt: ContinuousClock.Instant?
        var finished = false
        var tail = ""
    }
    let model: String
    let endpoint: Endpoint
    let started: ContinuousClock.Instant
    let statusCode: Int
    /// For the spend metric: who asked, and what the serving substrate charges.
    let tenant: String
    let price: TokenPrice?
    /// Where the share of the prompt the upstream found cached goes (the lease's router).
    let cacheReport: (@Sendable (Int, Int) -> Void)?
    private let state = NIOLockedValueBox(State())

    init(metrics: GatewayMetrics, model: String, endpoint: Endpoint, started: ContinuousClock.Instant,
         admitted: ContinuousClock.Instant, statusCode: Int, tenant: String = "anonymous", price: TokenPrice? = nil,
         cacheReport: (@Sendable (Int, Int) -> Void)? = nil) {
        self.cacheReport = cacheReport
        self.tenant = tenant
        self.price = price
        self.model = model
        self.endpoint = endpoint
        self.started = started
        self.statusCode = statusCode
        Metrics.Timer(label: "strata_queue_wait_seconds", dimensions: [("model", model)])
            .record(duration: admitted - started)
    }

    /// A chunk of an SSE stream went to the client.
    func streamed(_ chunk: ByteBuffer) {
        let first = state.withLockedValue { state -> Bool in
            // Keep only the end of the stream: the usage object comes in the last event.
            state.tail = String(String(state.tail + String(buffer: chunk)).suffix(8192))
            guard state.firstChunkAt == nil else { return false }
            state.firstChunkAt = .now
            return true
        }
        if first {
            Metrics.Timer(label: "strata_time_to_first_token_seconds", dimensions: [("model", model)])
                .record(duration: ContinuousClock.now - started)
        }
    }

    func completed(_ body: ByteBuffer) {
        if let json = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] {
            recordUsage(json["usage"])
            reportCache(json)
        }
        finish(outcome: statusCode < 400 ? "ok" : "upstream_\(statusCode)")
    }

    var isFinished: Bool { state.withLockedValue { $0.finished } }

    func finish(outcome: String) {
        let tail: String? = state.withLockedValue { state in
            guard !state.finished else { return nil }
            state.finished = true
            return state.tail
        }
        guard let tail else { return }
        if let tail = Optional(tail), !tail.isEmpty {
            var usageFound = false, cacheFound = cacheReport == nil
            for line in tail.split(separator: "\n").reversed() where line.hasPrefix("data: {") {
                guard !usageFound && line.contains("\"usage\"") || !cacheFound && line.contains("\"timings\""),
                    let json = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
                else { continue }
                if !usageFound, let usage = json["usage"], !(usage is NSNull) {
                    recordUsage(usage)
                    usageFound = true
                }
                if !cacheFound { cacheFound = reportCache(json) }
                if usageFound && cacheFound { break }
            }
        }
        let finalOutcome = outcome == "ok" && statusCode >= 400 ? "upstream_\(statusCode)" : outcome
        Counter(label: "strata_requests_total",
                dimensions: [("model", model), ("endpoint", endpoint.label), ("outcome", finalOutcome)]).increment()
        // a client that leaves is not a server error
        if !["ok", "cancelled", "client_disconnected"].contains(finalOutcome) {
            Counter(label: "strata_request_errors_total",
                    dimensions: [("model", model), ("endpoint", endpoint.label), ("code", finalOutcome)]).increment()
        }
        Metrics.Timer(label: "strata_request_duration_seconds", dimensions: [("model", model), ("endpoint", endpoint.label)])
            .record(duration: ContinuousClock.now - started)
    }

    /// The prompt tokens and those the upstream found cached: llama-server's `timings`
    /// (`cache_n` + `prompt_n`), else OpenAI's `usage.prompt_tokens_details.cached_tokens`.
    @discardableResult
    private func reportCache(_ json: [String: Any]) -> Bool {
        guard let cacheReport else { return false }
        if let timings = json["timings"] as? [String: Any], let cached = (timings["cache_n"] as? NSNumber)?.intValue,
            let computed = (timings["prompt_n"] as? NSNumber)?.intValue, cached + computed > 0
        {
            cacheReport(cached + computed, cached)
            return true
        }
        if let usage = json["usage"] as? [String: Any], let prompt = (usage["prompt_tokens"] as? NSNumber)?.intValue,
            let details = usage["prompt_tokens_details"] as? [String: Any],
            let cached = (details["cached_tokens"] as? NSNumber)?.intValue, prompt > 0
        {
            cacheReport(prompt, cached)
            return true
        }
        return false
    }

    private func recordUsage(_ value: Any?) {
        guard let usage = value as? [String: Any] else { return }
        var counts: [Int64] = []
        for (field, kind) in [("prompt_tokens", "prompt"), ("completion_tokens", "completion")] {
            let count = (usage[field] as? NSNumber)?.int64Value ?? 0
            counts.append(count)
            if count > 0 {
                Counter(label: "strata_tokens_total", dimensions: [("model", model), ("kind", kind)]).increment(by: count)
            }
        }
        if let price {
            let cost = price.cost(promptTokens: counts[0], completionTokens: counts[1])
            if cost > 0 {
                FloatingPointCounter(label: "strata_spend_total", dimensions: [("model", model), ("tenant", tenant)])
                    .increment(by: cost)
            }
        }
    }
}
