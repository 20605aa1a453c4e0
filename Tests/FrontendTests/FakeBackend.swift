import Frontend
import NIOConcurrencyHelpers

/// A fake model backend for gateway unit tests: one model `m` served by a fake upstream, and
/// `raw` on a test's own upstream (`rawPort`). With `immediate`, `acquireImmediately` admits
/// them (and `retry`: first on a closed port, then on the fake upstream). `raw-then-m`: first
/// on `rawPort`, then (once it failed there) on the fake upstream, by either path.
final class FakeBackend: ModelBackend, Sendable {
    let upstreamPort: Int
    let immediate: Bool
    let rawPort: Int
    /// The models `listModels` lists (all ready), each with its substrate's tags: a policy that
    /// does not admit a model's tags leaves it out. (The daemon also counts fallbacks.)
    let listed: [String]
    let listedTags: [String: Set<String>]
    private let counters = NIOLockedValueBox((acquired: 0, released: 0, releasedAt: ContinuousClock.Instant?.none))
    private let leaseOutcomes = NIOLockedValueBox<[String: [LeaseOutcome]]>([:])

    /// How each lease of a model ended, in order.
    func outcomes(_ model: String) -> [LeaseOutcome] { leaseOutcomes.withLockedValue { $0[model] ?? [] } }
    private let hints = NIOLockedValueBox<RequestHints?>(nil)
    private let immediateAttempts = NIOLockedValueBox(0)
    /// Calls of `acquireImmediately`: requests the event loop collected and parsed.
    var attemptedImmediately: Int { immediateAttempts.withLockedValue { $0 } }
    private let cacheReports = NIOLockedValueBox<[[Int]]>([])

    /// (prompt tokens, cached tokens) the gateway reported on leases, in order.
    var reportedCache: [[Int]] { cacheReports.withLockedValue { $0 } }

    /// What the last `acquire` was told (policy, tenant, prompt chain).
    var lastHints: RequestHints? { hints.withLockedValue { $0 } }

    init(upstreamPort: Int, immediate: Bool = false, rawPort: Int = 0, listed: [String] = ["m"],
         listedTags: [String: Set<String>] = [:])
    {
        self.listed = listed
        self.listedTags = listedTags
        self.upstreamPort = upstreamPort
        self.immediate = immediate
        self.rawPort = rawPort
    }

    var admitsAnyImmediately: Bool { immediate }

    func acquireImmediately(model: String, hints: RequestHints) -> UpstreamLease? {
        immediateAttempts.withLockedValue { $0 += 1 }
        guard immediate else { return nil }
        self.hints.withLockedValue { $0 = hints }
        let record: @Sendable (LeaseOutcome) -> Void = { [leaseOutcomes] outcome in
            leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) }
        }
        switch model {
        case "m":
            counters.withLockedValue { $0.acquired += 1 }
            return UpstreamLease(baseURL: "http://127.0.0.1:\(upstreamPort)/v1") { [counters] in
                counters.withLockedValue { $0.released += 1; $0.releasedAt = .now }
            }
        case "raw":
            return UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", onOutcome: record)
        case "retry" where !hints.excluding.contains("dead"):
            // port 1 on loopback: nothing listens, the connection is refused
            return UpstreamLease(baseURL: "http://127.0.0.1:1/v1", upstreamLabel: "dead", hasAlternatives: true, onOutcome: record)
        case "retry":
            return UpstreamLease(baseURL: "http://127.0.0.1:\(upstreamPort)/v1", upstreamLabel: "live", onOutcome: record)
        case "raw-then-m":
            return rawThenM(hints, record)
        case "raw-then-raw":
            return rawThenRaw(hints, record)
        case "two-broken":
            return twoBroken(hints, record)
        default:
            return nil
        }
    }

    private func rawThenM(_ hints: RequestHints, _ record: @escaping @Sendable (LeaseOutcome) -> Void) -> UpstreamLease {
        hints.excluding.contains("raw")
            ? UpstreamLease(baseURL: "http://127.0.0.1:\(upstreamPort)/v1", upstreamLabel: "m", onOutcome: record)
            : UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", upstreamLabel: "raw", hasAlternatives: true, onOutcome: record)
    }

    /// `raw` twice, as two replicas: first labelled "raw", then (once it failed there) "raw2".
    private func rawThenRaw(_ hints: RequestHints, _ record: @escaping @Sendable (LeaseOutcome) -> Void) -> UpstreamLease {
        hints.excluding.contains("raw")
            ? UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", upstreamLabel: "raw2", onOutcome: record)
            : UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", upstreamLabel: "raw", hasAlternatives: true, onOutcome: record)
    }

    /// `raw` as two replicas ("raw", then "raw2"), then (both failed) the fake upstream as "m".
    private func twoBroken(_ hints: RequestHints, _ record: @escaping @Sendable (LeaseOutcome) -> Void) -> UpstreamLease {
        if !hints.excluding.contains("raw") {
            return UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", upstreamLabel: "raw", hasAlternatives: true, onOutcome: record)
        }
        if !hints.excluding.contains("raw2") {
            return UpstreamLease(baseURL: "http://127.0.0.1:\(rawPort)/v1", upstreamLabel: "raw2", hasAlternatives: true, onOutcome: record)
        }
        return UpstreamLease(baseURL: "http://127.0.0.1:\(upstreamPort)/v1", upstreamLabel: "m", onOutcome: record)
    }

    var acquired: Int { counters.withLockedValue { $0.acquired } }
    var released: Int { counters.withLockedValue { $0.released } }
    /// When the last lease was released (taken by whoever released it, not by the test's task).
    var releasedAt: ContinuousClock.Instant? { counters.withLockedValue { $0.releasedAt } }

    func listModels(policy: SubstratePolicy) async -> [ModelListing] {
        listed.filter { policy.admits(listedTags[$0] ?? []) }.map { ModelListing(id: $0, status: "ready") }
    }

    func acquire(model: String, hints: RequestHints) async throws -> UpstreamLease {
        self.hints.withLockedValue { $0 = hints }
        switch model {
        case "pinned":
            // a llama-server slot pin; the cached share is reported before the release
            return UpstreamLease(
                baseURL: "http://127.0.0.1:\(upstreamPort)/v1", pinnedSlot: 1,
                cacheReport: { [cacheReports] report in
                    // (and the compute time in whole milliseconds, when given)
                    let ms = report.computeSeconds.map { [Int(($0 * 1000).rounded())] } ?? []
                    cacheReports.withLockedValue { $0.append([report.tokens, report.cached] + ms) }
                },
                onOutcome: { [cacheReports] _ in cacheReports.withLockedValue { $0.append([-1]) } })
        case "spilled":
            // served by another model, as after a spillover, at a price
            return UpstreamLease(
                baseURL: "http://127.0.0.1:\(upstreamPort)/v1", servedModel: "other",
                price: TokenPrice(inputPerMillion: 1, outputPerMillion: 2), onOutcome: { _ in })
        case "m":
            counters.withLockedValue { $0.acquired += 1 }
            return UpstreamLease(baseURL: "http://127.0.0.1:\(upstreamPort)/v1") { [counters] in
                counters.withLockedValue { $0.released += 1; $0.releasedAt = .now }
            }
        case "raw":
            return UpstreamLease(
                baseURL: "http://127.0.0.1:\(rawPort)/v1",
                onOutcome: { [leaseOutcomes] outcome in leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) } })
        case "raw-then-m":
            return rawThenM(hints) { [leaseOutcomes] outcome in leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) } }
        case "raw-then-raw":
            return rawThenRaw(hints) { [leaseOutcomes] outcome in leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) } }
        case "two-broken":
            return twoBroken(hints) { [leaseOutcomes] outcome in leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) } }
        case "busy":
            throw GatewayError.unavailable("not ready", code: "model_not_ready", retryAfterSeconds: 7)
        case "crashes-once", "crashes-always", "refuses":
            // A managed runtime whose process dies under the request (nothing listens on port
            // 1) and is started again in its place, once or every time; or one that refuses the
            // request while it keeps running.
            let n = counters.withLockedValue { counters in
                counters.acquired += 1
                return counters.acquired
            }
            let up = model == "crashes-once" && n > 1
            return UpstreamLease(
                baseURL: up ? "http://127.0.0.1:\(upstreamPort)/v1" : "http://127.0.0.1:1/v1",
                runtimeDied: { model != "refuses" },
                onOutcome: { [leaseOutcomes] outcome in leaseOutcomes.withLockedValue { $0[model, default: []].append(outcome) } })
        default:
            throw GatewayError.modelNotFound(model)
        }
    }

    func adminStatus() async -> AdminStatus { AdminStatus(models: [], devices: []) }
    func load(model: String) async throws {}
    func unload(model: String) async throws {}
}
