import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Settings of the HTTP face, built by the executable from the config file.
public struct GatewayConfiguration: Sendable {
    /// Accepted `Authorization: Bearer` keys for `/v1`; empty means no key is needed. Used when
    /// `access` is nil (keys without tenants).
    public var apiKeys: Set<String>
    /// API keys with their tenants' policies; replaces `apiKeys` when set.
    public var access: AccessControl?
    /// Bearer key for `/admin`; nil with `adminOpenWithoutKey` false means admin is closed.
    public var adminKey: String?
    /// Whether `/admin` is open when no admin key is set (the daemon allows it on loopback only).
    public var adminOpenWithoutKey: Bool
    public var maxBodyBytes: Int
    public var upstreamTimeout: Duration
    /// Most bytes of a non-streaming upstream response the gateway will buffer.
    public var maxResponseBytes: Int
    /// Watch the client connection while a request waits or runs, and cancel it when the client
    /// goes away (its connection or its input closed: `ClientDeparture`).
    public var cancelOnDisconnect: Bool
    /// Bytes of canonical prompt per routing block (see `PromptChain`).
    public var routingBlockBytes: Int
    /// Relay requests that can be admitted at once on the client connection's event loop
    /// (`EventLoopRelayHandler`); false sends every request through the general path.
    public var relayOnEventLoop: Bool
    /// Request header whose value keeps a conversation on one replica; the body's `user` field
    /// is used when the header is absent.
    public var sessionHeader: String
    /// An idle kept-alive upstream connection of the event-loop relay is closed after this long
    /// (as AsyncHTTPClient's pool does on the general path), so that connections to an upstream
    /// removed by a reload, or one that went quiet, do not stay open.
    public var upstreamIdleTimeout: Duration
    /// A client connection with no request under way, or whose request stopped arriving, is
    /// closed after this long (`ClientIdleHandler`).
    public var clientIdleTimeout: Duration
    /// Origins allowed cross-origin access from browsers (`CORSMiddleware`); none by default.
    public var corsOrigins: CORSOrigins

    public init(
        apiKeys: Set<String> = [], adminKey: String? = nil, adminOpenWithoutKey: Bool = false,
        maxBodyBytes: Int = 32 << 20, upstreamTimeout: Duration = .seconds(600), maxResponseBytes: Int = 256 << 20,
        cancelOnDisconnect: Bool = true, routingBlockBytes: Int = 256, sessionHeader: String = "x-session-id",
        access: AccessControl? = nil, relayOnEventLoop: Bool = true, upstreamIdleTimeout: Duration = .seconds(60),
        clientIdleTimeout: Duration = .seconds(75), corsOrigins: CORSOrigins = CORSOrigins()
    ) {
        self.corsOrigins = corsOrigins
        self.clientIdleTimeout = clientIdleTimeout
        self.upstreamIdleTimeout = upstreamIdleTimeout
        self.relayOnEventLoop = relayOnEventLoop
        self.access = access
        self.cancelOnDisconnect = cancelOnDisconnect
        self.routingBlockBytes = routingBlockBytes
        self.sessionHeader = sessionHeader
        self.apiKeys = apiKeys
        self.adminKey = adminKey
        self.adminOpenWithoutKey = adminOpenWithoutKey
        self.maxBodyBytes = maxBodyBytes
        self.upstreamTimeout = upstreamTimeout
        self.maxResponseBytes = maxResponseBytes
    }
}

/// The OpenAI-compatible gateway: routes, auth, limits, streaming proxy, metrics.
public struct Gateway: Sendable {
    public let configuration: GatewayConfiguration
    let backend: any ModelBackend
    /// The storage tiers, for `/admin/tiers`; nil when the daemon runs none.
    let tiers: (any TierBackend)?
    /// The block store behind `/v1/blocks` (the RESP service's); nil: no block API.
    let kv: (any KVBackend)?
    let httpClient: HTTPClient
    /// Upstream connections of the event-loop relay, per loop.
    let upstreamPools: UpstreamPools
    /// Set when a stop cuts the requests still under way (`cutForStop`).
    private let stopping: NIOLockedValueBox<Bool>
    /// Value bytes of the batch-get answers being built or sent (`Gateway+Blocks`).
    let batchBytesInFlight = NIOLockedValueBox(0)
    /// API keys and tenants; replaced by a config reload.
    public let access: AccessControlBox
    let logger: Logger
    let metrics: GatewayMetrics
    /// The sticky-routing header (`routing.session_header`), parsed once.
    let sessionField: HTTPField.Name?
    /// Renders `/metrics` (the executable owns the Prometheus registry).
    let renderMetrics: @Sendable () -> String
    /// Re-reads the config (`POST /admin/reload`); answers what changed as JSON. Nil: 404.
    let reload: (@Sendable () async throws -> Data)?
    /// Whether the daemon can take requests (for `/ready`).
    let isReady: @Sendable () -> Bool

    public init(
        configuration: GatewayConfiguration, backend: any ModelBackend, httpClient: HTTPClient, logger: Logger,
        renderMetrics: @escaping @Sendable () -> String = { "" }, isReady: @escaping @Sendable () -> Bool = { true },
        tiers: (any TierBackend)? = nil, kv: (any KVBackend)? = nil, access: AccessControlBox? = nil,
        reload: (@Sendable () async throws -> Data)? = nil
    ) {
        self.reload = reload
        self.configuration = configuration
        self.backend = backend
        self.tiers = tiers
        self.kv = kv
        self.httpClient = httpClient
        self.access = access ?? AccessControlBox(configuration.access ?? AccessControl(apiKeys: configuration.apiKeys))
        self.logger = logger
        self.metrics = GatewayMetrics()
        self.sessionField = HTTPField.Name(configuration.sessionHeader)
        self.upstreamPools = UpstreamPools(idleTimeout: TimeAmount(configuration.upstreamIdleTimeout))
        self.stopping = NIOLockedValueBox(false)
        self.renderMetrics = renderMetrics
        self.isReady = isReady
    }

    public func buildRouter() -> Router<GatewayRequestContext> {
        // HEAD of every GET route (a load balancer's `HEAD /health`), answered as the GET without its body.
        let router = Router(context: GatewayRequestContext.self, options: .autoGenerateHeadEndpoints)
        // Outermost, so that error answers carry the CORS headers too.
        router.add(middleware: CORSMiddleware(origins: configuration.corsOrigins))
        router.add(middleware: ErrorMiddleware())

        router.get("/health") { _, _ in jsonResponse(["status": "ok"]) }
        router.get("/ready") { _, _ in
            guard isReady() else {
                throw GatewayError.unavailable("Strata is starting or stopping", code: "not_ready", retryAfterSeconds: 1)
            }
            return jsonResponse(["status": "ready"])
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: renderMetrics())))
        }

        router.get("/v1/models") { request, _ in
            let models = try await backend.listModels(policy: policy(of: request.headers, tenant: authorize(request)))
            return jsonResponse(["object": "list", "data": models.map(\.object)])
        }
        // One model (OpenAI's "retrieve model"); `**` since names may hold slashes (`org/model`).
        router.get("/v1/models/**") { request, context in
            let policy = try policy(of: request.headers, tenant: authorize(request))
            let path = context.parameters.getCatchAll().joined(separator: "/")
            let id = path.removingPercentEncoding ?? path
            guard let model = await backend.listModels(policy: policy).first(where: { $0.id == id }) else {
                throw GatewayError.modelNotFound(id)
            }
            return jsonResponse(model.object)
        }
        for path in ["/health", "/ready", "/metrics", "/v1/models", "/v1/models/**"] {
            Self.refuseOtherMethods(RouterPath(path), allowed: [.get], on: router)
        }
        for endpoint in Endpoint.allCases {
            router.post(RouterPath(endpoint.path)) { request, context in
                try await proxy(request, context: context, endpoint: endpoint)
            }
            Self.refuseOtherMethods(RouterPath(endpoint.path), allowed: [.post], on: router)
        }
        addAdminRoutes(to: router)
        addBlockRoutes(to: router)
        return router
    }

    /// 405 for every other method of GET, POST, PUT, DELETE and PATCH on `path` ("takes GET,
    /// HEAD, PUT or DELETE, not POST"), and 204 for OPTIONS, each naming the methods it takes in
    /// `Allow`.
    static func refuseOtherMethods(_ path: RouterPath, allowed: [HTTPRequest.Method], on router: Router<GatewayRequestContext>) {
        let names = allowed.map(\.rawValue)
        let listed = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        for method in [HTTPRequest.Method.get, .post, .put, .delete, .patch] where !allowed.contains(method) {
            router.on(path, method: method) { request, _ -> Response in
                throw GatewayError(status: .methodNotAllowed, type: "invalid_request_error", code: "method_not_allowed",
                                   message: "\(request.uri.path) takes \(listed), not \(request.method.rawValue)",
                                   allow: names.joined(separator: ", "))
            }
        }
        answerOptions(path, allow: (names + ["OPTIONS"]).joined(separator: ", "), on: router)
    }

    /// `OPTIONS` on a known path: 204 with the methods it takes in `Allow` (RFC 9110 9.3.7). A
    /// CORS preflight from an allowed origin is answered before it gets here (`CORSMiddleware`).
    static func answerOptions(_ path: RouterPath, allow: String, on router: Router<GatewayRequestContext>) {
        router.on(path, method: .options) { _, _ -> Response in
            Response(status: .noContent, headers: [.allow: allow])
        }
    }

    /// The tenant the request's API key belongs to; throws 401 for a missing or unknown key.
    @discardableResult
    func authorize(_ request: Request) throws -> Tenant { try authorize(headers: request.headers) }

    @discardableResult
    func authorize(headers: HTTPFields) throws -> Tenant {
        let access = access.current
        guard !access.keys.isEmpty else { return access.anonymous }
        guard let key = bearerToken(headers) else {
            throw GatewayError.unauthorized("Missing API key: send Authorization: Bearer YOUR_KEY")
        }
        guard let tenant = access.keys[key] else { throw GatewayError.unauthorized("Invalid API key") }
        return tenant
    }

    /// The tenant's policy narrowed by the request's `x-strata-require` and `x-strata-forbid`
    /// headers (tags separated by commas or spaces).
    func policy(of headers: HTTPFields, tenant: Tenant) throws -> SubstratePolicy {
        var policy = tenant.policy
        for (header, isRequire) in [(Self.requireHeader, true), (Self.forbidHeader, false)] {
            let values = headers[values: header]
            guard !values.isEmpty else { continue }
            switch SubstratePolicy.parseTagList(values.joined(separator: ",")) {
            case .success(let tags):
                policy = policy.narrowed(by: isRequire ? SubstratePolicy(require: tags) : SubstratePolicy(forbid: tags))
            case .failure(let error):
                throw GatewayError.badRequest(
                    "Header \(header.canonicalName) has an invalid tag '\(error.tag)'; expected tags of a-z, 0-9, ':', '.', '_', '-' "
                        + "(e.g. on-prem, sovereign:eu) separated by commas", code: "invalid_header")
            }
        }
        return policy
    }

    static let requireHeader = HTTPField.Name("x-strata-require")!
    static let forbidHeader = HTTPField.Name("x-strata-forbid")!

    func bearerToken(_ request: Request) -> String? { bearerToken(request.headers) }

    func bearerToken(_ headers: HTTPFields) -> String? {
        guard let header = headers[.authorization] else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        // HTTP's optional whitespace (space and tab) around the token; not Foundation's
        // `trimmingCharacters`, which bridges to NSString on every request.
        var token = parts[1]
        while let first = token.first, first == " " || first == "\t" { token.removeFirst() }
        while let last = token.last, last == " " || last == "\t" { token.removeLast() }
        return String(token)
    }
}

extension Gateway {
    /// The `Server` header of every answer.
    public static let serverName = "strata"
}

/// The OpenAI endpoints the gateway relays, and the field each requires beside `model`.
enum Endpoint: String, CaseIterable, Sendable {
    case chatCompletions
    case completions
    case embeddings
    /// OpenAI's Responses API (llama-server serves it too): `input` (a string or a list of
    /// items) and `instructions` in place of `messages`.
    case responses

    var path: String {
        switch self {
        case .chatCompletions: "/v1/chat/completions"
        case .completions: "/v1/completions"
        case .embeddings: "/v1/embeddings"
        case .responses: "/v1/responses"
        }
    }
    /// The endpoint a request's path (its query, if any, aside) names; nil for another path.
    init?(requestPath path: String) {
        let route = path.utf8.firstIndex(of: UInt8(ascii: "?")).map { path[..<$0] } ?? path[...]
        switch route {
        case "/v1/chat/completions": self = .chatCompletions
        case "/v1/completions": self = .completions
        case "/v1/embeddings": self = .embeddings
        case "/v1/responses": self = .responses
        default: return nil
        }
    }

    /// Appended to a lease's base URL, which ends in `/v1`.
    var suffix: String { String(path.dropFirst(3)) }
    var requiredField: String {
        switch self {
        case .chatCompletions: "messages"
        case .completions: "prompt"
        case .embeddings, .responses: "input"
        }
    }
    var label: String {
        switch self {
        case .chatCompletions: "chat"
        case .completions: "completions"
        case .embeddings: "embeddings"
        case .responses: "responses"
        }
    }
}

func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    return Response(
        status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

extension Gateway {
    /// The daemon's drain time is over: requests whose upstream calls fail from now on (the
    /// daemon shuts its HTTP client down next; the event loops' upstream connections in use are
    /// closed here) answer that Strata is stopping, streams with an error event, instead of
    /// blaming the runtime or trying another replica.
    public func cutForStop() {
        stopping.withLockedValue { $0 = true }
        upstreamPools.cutAll()
    }

    var isStopping: Bool { stopping.withLockedValue { $0 } }

    func stoppingError(_ model: String) -> GatewayError {
        .unavailable("Strata is stopping: the request to '\(model)' was cut short", code: "shutting_down", retryAfterSeconds: 5)
    }
}
