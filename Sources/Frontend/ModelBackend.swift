import Foundation
import Synchronization

/// What the gateway needs from whoever manages models: a list, and a lease on an upstream that
/// can serve a model right now. The daemon implements it over the Placer and the supervisor;
/// tests implement it with fakes.
public protocol ModelBackend: Sendable {
    /// The configured models a request under `policy` could be served by (the model itself or
    /// one of its fallbacks is allowed), with their status (stopped, loading, ready, failed;
    /// unavailable while no replica is healthy). A model the policy leaves nothing of is not
    /// listed: every request for it would be refused.
    func listModels(policy: SubstratePolicy) async -> [ModelListing]
    /// Waits until `model` can serve (loading or swapping it in if needed), then hands out an
    /// upstream. Throws `GatewayError` (404 unknown model, 503 not ready in time, 502 failed).
    /// Cancelling the calling task withdraws the request. `hints` carry what routing across
    /// replicas may use: the prompt's block chain, a session key, replicas a retry must avoid.
    func acquire(model: String, hints: RequestHints) async throws -> UpstreamLease
    /// The lease `acquire` would hand out at once, without suspending, or nil when it would
    /// wait, refuse, or spill over (then the gateway calls `acquire`). Lets the gateway relay a
    /// request on its connection's event loop. The default: nil, always.
    func acquireImmediately(model: String, hints: RequestHints) -> UpstreamLease?
    /// Whether `acquireImmediately` can hand out a lease for any model now. When it cannot (only
    /// managed runtimes are configured, or shutdown is under way), the event loop does not
    /// collect and parse requests for it: they go to the general path as they arrive, parsed
    /// once. The default: true.
    var admitsAnyImmediately: Bool { get }
    /// Whether `model` is routed across replicas by its prompt: only then does the gateway
    /// hash the prompt into `RequestHints`, keeping that work off every other request.
    func routesByPrompt(model: String) -> Bool
    /// Admin: detailed state of models and runtimes, as a JSON-encodable value.
    func adminStatus() async -> AdminStatus
    func load(model: String) async throws
    func unload(model: String) async throws
    /// Admin: starts (or joins) staging `model`'s weights to `destination` (host, nvme, disk);
    /// returns the staging's status as JSON.
    func stage(model: String, destination: String) async throws -> Data
    /// Admin: running and recent stagings, `{"staging": [...]}`.
    func stagingStatus() async throws -> Data
    /// Admin: cancels the running staging of `model`.
    func cancelStaging(model: String) async throws
    /// Admin: recent placement decisions, `{"placements": [...]}`.
    func placementLog() async throws -> Data
}

extension ModelBackend {
    public func routesByPrompt(model: String) -> Bool { false }
    public func acquireImmediately(model: String, hints: RequestHints) -> UpstreamLease? { nil }
    public var admitsAnyImmediately: Bool { true }

    public func stage(model: String, destination: String) async throws -> Data { throw Self.noStaging }
    public func stagingStatus() async throws -> Data { throw Self.noStaging }
    public func cancelStaging(model: String) async throws { throw Self.noStaging }
    public func placementLog() async throws -> Data { Data(#"{"placements":[],"admissions":0}"#.utf8) }

    private static var noStaging: GatewayError {
        GatewayError(status: .notFound, type: "invalid_request_error", code: "no_tiers", message: "This daemon stages no weights")
    }
}

/// What a request tells the router beyond its model.
public struct RequestHints: Sendable, Equatable {
    public var prompt: PromptChain
    /// Sticky-routing key (a session header, or the request's `user` field).
    public var session: String?
    /// Replicas already tried for this request (a retry goes elsewhere).
    public var excluding: Set<String>
    /// Where the request may run (its tenant's policy narrowed by its headers).
    public var policy: SubstratePolicy
    /// The tenant the request's API key belongs to.
    public var tenant: String

    public init(prompt: PromptChain = PromptChain(blocks: [], bytes: 0), session: String? = nil, excluding: Set<String> = [],
                policy: SubstratePolicy = SubstratePolicy(), tenant: String = "anonymous") {
        self.prompt = prompt
        self.session = session
        self.excluding = excluding
        self.policy = policy
        self.tenant = tenant
    }
}

/// How a lease ended: its upstream served the request; served it after the replicas named had
/// answered it with a server error (another could serve it, so those errors were theirs, not
/// the request's: they count against them); failed before sending any answer (a refused or
/// reset connection, a timeout before headers), which counts against it; or the request was
/// given up, which counts neither way; or the upstream's server error went to the client, no
/// other replica being left to try (it may be the request's own doing: the same request errs
/// everywhere), which counts neither way either, and lets back replicas held out after an
/// ejection whose probes pass (one of them may serve what the ones let in cannot). A refused
/// connection (`unreachable`) says the server is not there at all: an upstream replica is taken
/// out at once, as by a failed health probe, until a probe passes.
public enum LeaseOutcome: Sendable, Equatable {
    case completed
    case servedAfterServerErrors(on: [String])
    case upstreamFailed
    case unreachable
    case abandoned
    case serverErrorUnretried

    /// The upstream served the request (whatever others did first).
    public var served: Bool {
        switch self {
        case .completed, .servedAfterServerErrors: true
        case .upstreamFailed, .unreachable, .abandoned, .serverErrorUnretried: false
        }
    }

    /// A served request's outcome, given the replicas that answered it with a server error first.
    public static func served(after serverErrors: [String]) -> LeaseOutcome {
        serverErrors.isEmpty ? .completed : .servedAfterServerErrors(on: serverErrors)
    }
}

/// A substrate's price per million tokens, in whatever currency the config uses.
public struct TokenPrice: Sendable, Equatable {
    public var inputPerMillion: Double
    public var outputPerMillion: Double

    public init(inputPerMillion: Double, outputPerMillion: Double) {
        self.inputPerMillion = inputPerMillion
        self.outputPerMillion = outputPerMillion
    }

    public func cost(promptTokens: Int64, completionTokens: Int64) -> Double {
        (Double(promptTokens) * inputPerMillion + Double(completionTokens) * outputPerMillion) / 1_000_000
    }
}

public struct ModelListing: Sendable, Equatable {
    public var id: String
    public var status: String
    public var ownedBy: String

    public init(id: String, status: String, ownedBy: String = "strata") {
        self.id = id
        self.status = status
        self.ownedBy = ownedBy
    }

    /// As OpenAI's model object, with Strata's `status` beside its fields.
    var object: [String: Any] {
        ["id": id, "object": "model", "created": 0, "owned_by": ownedBy, "status": status]
    }
}

/// What an upstream's answer said of its prompt: its tokens, how many of them it found cached,
/// and (llama-server's `timings.prompt_ms`) how long computing the others took.
public struct PromptReport: Sendable, Equatable {
    public var tokens: Int
    public var cached: Int
    public var computeSeconds: Double?

    public init(tokens: Int, cached: Int, computeSeconds: Double? = nil) {
        self.tokens = tokens
        self.cached = cached
        self.computeSeconds = computeSeconds
    }

    /// The share of the prompt found cached.
    public var cachedFraction: Double { Double(cached) / Double(max(tokens, 1)) }
}

/// The right to send one request to one upstream. `release()` must follow when the request is
/// over (response complete, error, or client gone); it runs at most once, and at the latest
/// when the lease is dropped.
public final class UpstreamLease: Sendable {
    /// Base that endpoint suffixes (`/chat/completions`) are appended to, e.g. `http://127.0.0.1:41235/v1`.
    public let baseURL: String
    /// Extra headers for the upstream (an `Authorization` for a provider API).
    public let headers: [(String, String)]
    /// Model name to put in the body instead of the client's, if the upstream calls it otherwise.
    public let upstreamModel: String?
    /// Which replica or runtime instance serves this lease, for logs and metrics.
    public let upstreamLabel: String
    /// Another replica could take the request if this one fails before answering.
    public let hasAlternatives: Bool
    /// Chosen among upstream replicas that are health-checked: after the last one up refused
    /// the connection (and was taken out for it), routing again finds one that came up, or
    /// answers that every replica is down.
    public let routedAmongReplicas: Bool
    /// The model that serves the request when it is not the one asked for (a fallback after a
    /// spillover); the gateway says so in the `x-strata-served-by` response header.
    public let servedModel: String?
    /// What the serving substrate charges, for the spend metric.
    public let price: TokenPrice?
    /// llama-server slot the request must run in (`id_slot` is added to the body), so the KV
    /// cache restored there is used and what the slot holds is known.
    public let pinnedSlot: Int?
    /// Told what share of the prompt the upstream found cached, and how long computing the rest
    /// took, when its answer says so; the router corrects its index with it. Before `release`.
    public let cacheReport: (@Sendable (PromptReport) -> Void)?
    /// For a runtime Strata runs: after the request failed before any answer, waits briefly to
    /// learn whether the runtime's process died (a crash, a kill). True when it did: the
    /// request may then be sent once more, to the runtime started in its place. Nil where there
    /// is no such process (an upstream Strata does not run).
    public let runtimeDied: (@Sendable () async -> Bool)?
    /// (A `Mutex` in the lease itself, not a box beside it: one allocation less per request.)
    private let onRelease: Mutex<(@Sendable (LeaseOutcome) -> Void)?>

    public init(
        baseURL: String, headers: [(String, String)] = [], upstreamModel: String? = nil, upstreamLabel: String = "",
        hasAlternatives: Bool = false, routedAmongReplicas: Bool = false, servedModel: String? = nil, price: TokenPrice? = nil,
        pinnedSlot: Int? = nil, cacheReport: (@Sendable (PromptReport) -> Void)? = nil,
        runtimeDied: (@Sendable () async -> Bool)? = nil, onOutcome: @escaping @Sendable (LeaseOutcome) -> Void
    ) {
        self.routedAmongReplicas = routedAmongReplicas
        self.cacheReport = cacheReport
        self.runtimeDied = runtimeDied
        self.pinnedSlot = pinnedSlot
        self.servedModel = servedModel
        self.price = price
        self.baseURL = baseURL
        self.headers = headers
        self.upstreamModel = upstreamModel
        self.upstreamLabel = upstreamLabel.isEmpty ? baseURL : upstreamLabel
        self.hasAlternatives = hasAlternatives
        self.onRelease = Mutex(onOutcome)
    }

    public convenience init(
        baseURL: String, headers: [(String, String)] = [], upstreamModel: String? = nil, upstreamLabel: String = "",
        onRelease: @escaping @Sendable () -> Void
    ) {
        self.init(baseURL: baseURL, headers: headers, upstreamModel: upstreamModel, upstreamLabel: upstreamLabel,
                  onOutcome: { _ in onRelease() })
    }

    /// The same lease, saying which model serves it and at what price. Takes over the release.
    public func serving(model: String?, price: TokenPrice?) -> UpstreamLease {
        let action = onRelease.withLock { action in
            defer { action = nil }
            return action
        }
        return UpstreamLease(
            baseURL: baseURL, headers: headers, upstreamModel: upstreamModel, upstreamLabel: upstreamLabel,
            hasAlternatives: hasAlternatives, routedAmongReplicas: routedAmongReplicas, servedModel: model, price: price,
            pinnedSlot: pinnedSlot, cacheReport: cacheReport, runtimeDied: runtimeDied, onOutcome: { action?($0) })
    }

    public func release(_ outcome: LeaseOutcome = .completed) {
        let action = onRelease.withLock { action in
            defer { action = nil }
            return action
        }
        action?(outcome)
    }

    deinit { release() }
}

public struct AdminStatus: Sendable, Codable, Equatable {
    public struct Model: Sendable, Codable, Equatable {
        public var name: String
        public var status: String
        public var phase: String
        public var runtime: String?
        public var device: String?
        public var memory_bytes: UInt64?
        public var in_flight: Int
        public var waiting: Int
        public var loads: Int
        public var pid: Int32?
        public var upstream: String?
        public var last_error: String?
        /// For models with replicas: each one's routing state.
        public var replicas: [Replica]?
        /// The runtime's memory as last measured (NVML or RSS); `memory_bytes` is what the
        /// Placer accounts (the measurement for models whose memory was estimated).
        public var measured_bytes: UInt64?
        public var priority: Int?

        public init(name: String, status: String, phase: String, runtime: String?, device: String?, memory_bytes: UInt64?,
                    in_flight: Int, waiting: Int, loads: Int, pid: Int32?, upstream: String?, last_error: String?,
                    replicas: [Replica]? = nil) {
            self.name = name; self.status = status; self.phase = phase; self.runtime = runtime; self.device = device
            self.memory_bytes = memory_bytes; self.in_flight = in_flight; self.waiting = waiting; self.loads = loads
            self.pid = pid; self.upstream = upstream; self.last_error = last_error; self.replicas = replicas
        }
    }
    public struct Replica: Sendable, Codable, Equatable {
        public var url: String
        public var healthy: Bool
        public var in_flight: Int
        /// Prompt blocks of work queued on it (uncached blocks of the requests in flight).
        public var queued_blocks: Int
        public var index_blocks: Int
        public var consecutive_failures: Int
        /// False for a managed replica whose process is not running (stopped, crashed, loading):
        /// a start stands before any request there, so the router sends it work only when the
        /// running ones are full.
        public var running: Bool
        public init(url: String, healthy: Bool, in_flight: Int, queued_blocks: Int, index_blocks: Int, consecutive_failures: Int,
                    running: Bool = true) {
            self.url = url; self.healthy = healthy; self.in_flight = in_flight; self.queued_blocks = queued_blocks
            self.index_blocks = index_blocks; self.consecutive_failures = consecutive_failures; self.running = running
        }
    }
    public struct Device: Sendable, Codable, Equatable {
        public var name: String
        public var budget_bytes: UInt64
        public var used_bytes: UInt64
        public init(name: String, budget_bytes: UInt64, used_bytes: UInt64) {
            self.name = name; self.budget_bytes = budget_bytes; self.used_bytes = used_bytes
        }
    }
    public struct Runtime: Sendable, Codable, Equatable {
        public var name: String
        public var kind: String
        /// Models whose process of this runtime exists now (starting, serving or stopping).
        public var running: [String]
        public init(name: String, kind: String, running: [String]) {
            self.name = name; self.kind = kind; self.running = running
        }
    }
    public var models: [Model]
    public var devices: [Device]
    public var runtimes: [Runtime]

    public init(models: [Model], devices: [Device], runtimes: [Runtime] = []) {
        self.models = models
        self.devices = devices
        self.runtimes = runtimes
    }
}
