import Foundation
import Metrics
import NIOConcurrencyHelpers
import NIOCore

/// Gateway metrics through swift-metrics; the executable picks the backend (Prometheus).
/// Names carry the `strata_` prefix; durations are recorded in nanoseconds and exported in seconds.
struct GatewayMetrics: Sendable {
    private struct Key: Hashable {
        var model: String
        var endpoint: Endpoint
    }
    private let cache = NIOLockedValueBox<[Key: ModelMetrics]>([:])
    /// More (model, endpoint) pairs than this are not kept (models are configured, so a fleet
    /// reaches it only by misuse); their handles are made per request.
    static let cachedPairs = 1024

    /// The handles of one model's requests to one endpoint, made once.
    func handles(model: String, endpoint: Endpoint) -> ModelMetrics {
        let key = Key(model: model, endpoint: endpoint)
        if let cached = cache.withLockedValue({ $0[key] }) { return cached }
        let made = ModelMetrics(model: model, endpoint: endpoint)
        return cache.withLockedValue { cache in
            if let cached = cache[key] { return cached }
            if cache.count < Self.cachedPairs { cache[key] = made }
            return made
        }
    }

    /// A request answered with an error before any upstream saw it. A model no one configured is
    /// counted as "-": a label per name a client makes up would grow the metrics without bound.
    func rejected(model: String, endpoint: Endpoint, code: String) {
        let model = model.isEmpty || code == GatewayError.modelNotFound("").code ? "-" : model
        Counter(label: "strata_requests_total", dimensions: [("model", model), ("endpoint", endpoint.label), ("outcome", code)])
            .increment()
        Counter(label: "strata_request_errors_total", dimensions: [("model", model), ("endpoint", endpoint.label), ("code", code)])
            .increment()
    }

    /// A request withdrawn because its client left before any answer began (no error of Strata's).
    func departed(model: String, endpoint: Endpoint) {
        Counter(label: "strata_requests_total",
                dimensions: [("model", model.isEmpty ? "-" : model), ("endpoint", endpoint.label), ("outcome", "client_disconnected")])
            .increment()
    }

    /// A request whose upstream failed before answering, sent again to another replica.
    func retried(model: String, endpoint: Endpoint) {
        Counter(label: "strata_request_retries_total", dimensions: [("model", model), ("endpoint", endpoint.label)]).increment()
    }
}

/// Metric handles of one model's requests to one endpoint. swift-metrics looks a handle up in
/// the backend's registry (labels formatted, a lock taken) each time one is made; these are
/// made once and kept by `GatewayMetrics`.
final class ModelMetrics: Sendable {
    let queueWait: Metrics.Timer
    let timeToFirstToken: Metrics.Timer
    let duration: Metrics.Timer
    let completed: Counter
    let promptTokens: Counter
    let completionTokens: Counter

    init(model: String, endpoint: Endpoint) {
        queueWait = Metrics.Timer(label: "strata_queue_wait_seconds", dimensions: [("model", model)])
        timeToFirstToken = Metrics.Timer(label: "strata_time_to_first_token_seconds", dimensions: [("model", model)])
        duration = Metrics.Timer(label: "strata_request_duration_seconds", dimensions: [("model", model), ("endpoint", endpoint.label)])
        completed = Counter(label: "strata_requests_total",
                            dimensions: [("model", model), ("endpoint", endpoint.label), ("outcome", "ok")])
        promptTokens = Counter(label: "strata_tokens_total", dimensions: [("model", model), ("kind", "prompt")])
        completionTokens = Counter(label: "strata_tokens_total", dimensions: [("model", model), ("kind", "completion")])
    }
}

/// What an answer says of its tokens: OpenAI's `usage` (and its cached share), llama-server's
/// `timings` (prompt tokens taken from the cache, and computed).
struct AnswerFigures {
    /// A `usage` member that is not null.
    var hasUsage = false
    var promptTokens: Int?
    var completionTokens: Int?
    var cachedTokens: Int?
    var cacheN: Int?
    var promptN: Int?
    /// llama-server's `timings.prompt_ms`: how long computing the `prompt_n` tokens took.
    var promptMs: Double?

    /// The figures of one JSON object's text; nil when the text is not one.
    static func read(_ bytes: UnsafeRawBufferPointer) -> AnswerFigures? {
        let text = JSONText(bytes)
        var members: [(key: JSONText.Span, value: JSONText.Span)]?
        guard text.validate(members: &members) != nil else {
            // Text the single pass leaves to Foundation.
            guard let json = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else { return nil }
            return AnswerFigures(json)
        }
        // The top-level members come from the validating pass: the answer's text (`choices`)
        // is not scanned again to find them.
        guard let members else { return nil }   // not an object
        var figures = AnswerFigures()
        if let usage = text.member("usage", in: members), text.kind(usage) != .null {
            figures.hasUsage = true
            if text.kind(usage) == .object {
                figures.promptTokens = text.member("prompt_tokens", of: usage).flatMap(text.integer)
                figures.completionTokens = text.member("completion_tokens", of: usage).flatMap(text.integer)
                if let details = text.member("prompt_tokens_details", of: usage), text.kind(details) == .object {
                    figures.cachedTokens = text.member("cached_tokens", of: details).flatMap(text.integer)
                }
            }
        }
        if let timings = text.member("timings", in: members), text.kind(timings) == .object {
            figures.cacheN = text.member("cache_n", of: timings).flatMap(text.integer)
            figures.promptN = text.member("prompt_n", of: timings).flatMap(text.integer)
            figures.promptMs = text.member("prompt_ms", of: timings).flatMap(text.double)
        }
        return figures
    }

    init() {}

    init(_ json: [String: Any]) {
        func integer(_ value: Any?) -> Int? { (value as? NSNumber)?.intValue }
        if let usage = json["usage"], !(usage is NSNull) {
            hasUsage = true
            if let usage = usage as? [String: Any] {
                promptTokens = integer(usage["prompt_tokens"])
                completionTokens = integer(usage["completion_tokens"])
                cachedTokens = integer((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"])
            }
        }
        if let timings = json["timings"] as? [String: Any] {
            cacheN = integer(timings["cache_n"])
            promptN = integer(timings["prompt_n"])
            promptMs = (timings["prompt_ms"] as? NSNumber)?.doubleValue
        }
    }
}

/// Follows one admitted request to its end and records it exactly once.
final class RequestObserver: Sendable {
    private struct State {
        var firstChunkAt: ContinuousClock.Instant?
        var finished = false
        /// The stream's last `tailBytes` bytes: the usage object comes in the last event.
        var tail: [UInt8] = []
    }
    let model: String
    let endpoint: Endpoint
    let handles: ModelMetrics
    let started: ContinuousClock.Instant
    let statusCode: Int
    /// For the spend metric: who asked, and what the serving substrate charges.
    let tenant: String
    let price: TokenPrice?
    /// Where the share of the prompt the upstream found cached goes (the lease's router).
    let cacheReport: (@Sendable (PromptReport) -> Void)?
    private let state = NIOLockedValueBox(State())
    static let tailBytes = 8192

    init(metrics: GatewayMetrics, model: String, endpoint: Endpoint, started: ContinuousClock.Instant,
         admitted: ContinuousClock.Instant, statusCode: Int, tenant: String = "anonymous", price: TokenPrice? = nil,
         cacheReport: (@Sendable (PromptReport) -> Void)? = nil) {
        self.cacheReport = cacheReport
        self.tenant = tenant
        self.price = price
        self.model = model
        self.endpoint = endpoint
        self.started = started
        self.statusCode = statusCode
        handles = metrics.handles(model: model, endpoint: endpoint)
        handles.queueWait.record(duration: admitted - started)
    }

    /// A chunk of an SSE stream went to the client.
    func streamed(_ chunk: ByteBuffer) {
        let first = state.withLockedValue { state -> Bool in
            // Bytes, not a String: `suffix` on a String walks 8,192 characters, about 20 µs a chunk.
            chunk.withUnsafeReadableBytes { state.tail.append(contentsOf: $0) }
            if state.tail.count > Self.tailBytes { state.tail.removeFirst(state.tail.count - Self.tailBytes) }
            guard state.firstChunkAt == nil else { return false }
            state.firstChunkAt = .now
            return true
        }
        if first {
            handles.timeToFirstToken.record(duration: ContinuousClock.now - started)
        }
    }

    func completed(_ body: ByteBuffer) {
        if let figures = body.withUnsafeReadableBytes({ AnswerFigures.read($0) }) {
            recordUsage(figures)
            reportCache(figures)
        }
        finish(outcome: statusCode < 400 ? "ok" : "upstream_\(statusCode)")
    }

    var isFinished: Bool { state.withLockedValue { $0.finished } }

    func finish(outcome: String) {
        let tailBytes: [UInt8]? = state.withLockedValue { state in
            guard !state.finished else { return nil }
            state.finished = true
            return state.tail
        }
        guard let tailBytes else { return }
        if !tailBytes.isEmpty {
            let tail = String(decoding: tailBytes, as: UTF8.self)
            var usageFound = false, cacheFound = cacheReport == nil
            for line in tail.split(separator: "\n").reversed() where line.hasPrefix("data: {") {
                guard !usageFound && line.contains("\"usage\"") || !cacheFound && line.contains("\"timings\""),
                    let figures = Array(line.dropFirst(6).utf8).withUnsafeBytes({ AnswerFigures.read($0) })
                else { continue }
                if !usageFound, figures.hasUsage {
                    recordUsage(figures)
                    usageFound = true
                }
                if !cacheFound { cacheFound = reportCache(figures) }
                if usageFound && cacheFound { break }
            }
        }
        let finalOutcome = outcome == "ok" && statusCode >= 400 ? "upstream_\(statusCode)" : outcome
        if finalOutcome == "ok" {
            handles.completed.increment()
        } else {
            Counter(label: "strata_requests_total",
                    dimensions: [("model", model), ("endpoint", endpoint.label), ("outcome", finalOutcome)]).increment()
        }
        // a client that leaves is not a server error
        if !["ok", "cancelled", "client_disconnected"].contains(finalOutcome) {
            Counter(label: "strata_request_errors_total",
                    dimensions: [("model", model), ("endpoint", endpoint.label), ("code", finalOutcome)]).increment()
        }
        handles.duration.record(duration: ContinuousClock.now - started)
    }

    /// The prompt tokens and those the upstream found cached: llama-server's `timings`
    /// (`cache_n` + `prompt_n`), else OpenAI's `usage.prompt_tokens_details.cached_tokens`.
    @discardableResult
    private func reportCache(_ figures: AnswerFigures) -> Bool {
        guard let cacheReport else { return false }
        if let cached = figures.cacheN, let computed = figures.promptN, cached + computed > 0 {
            cacheReport(PromptReport(tokens: cached + computed, cached: cached,
                                     computeSeconds: figures.promptMs.flatMap { $0 >= 0 ? $0 / 1000 : nil }))
            return true
        }
        if let prompt = figures.promptTokens, let cached = figures.cachedTokens, prompt > 0 {
            cacheReport(PromptReport(tokens: prompt, cached: cached))
            return true
        }
        return false
    }

    private func recordUsage(_ figures: AnswerFigures) {
        let prompt = Int64(figures.promptTokens ?? 0), completion = Int64(figures.completionTokens ?? 0)
        if prompt > 0 { handles.promptTokens.increment(by: prompt) }
        if completion > 0 { handles.completionTokens.increment(by: completion) }
        if let price {
            let cost = price.cost(promptTokens: prompt, completionTokens: completion)
            if cost > 0 {
                FloatingPointCounter(label: "strata_spend_total", dimensions: [("model", model), ("tenant", tenant)])
                    .increment(by: cost)
            }
        }
    }
}
