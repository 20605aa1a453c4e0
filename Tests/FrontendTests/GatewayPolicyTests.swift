import Foundation
import Frontend
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

/// Tenants, their policies, the policy headers, and access control replaced at run time.
struct GatewayPolicyTests {
    static let body = ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)

    static func withGateway(
        access: AccessControlBox, listedTags: [String: Set<String>]? = nil,
        _ body: @Sendable (TestClientProtocol, FakeBackend) async throws -> Void
    ) async throws {
        try await GatewayTests.fakeUpstream().test(.live) { upstream in
            let backend = listedTags.map { FakeBackend(upstreamPort: upstream.port!, listed: $0.keys.sorted(), listedTags: $0) }
                ?? FakeBackend(upstreamPort: upstream.port!)
            let gateway = Gateway(
                configuration: GatewayConfiguration(cancelOnDisconnect: false), backend: backend, httpClient: .shared,
                logger: Logger(label: "test"), access: access)
            let app = Application(router: gateway.buildRouter(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await app.test(.live) { client in try await body(client, backend) }
        }
    }

    @Test func policyTagsMatchAndExplain() {
        let policy = SubstratePolicy(require: ["on-prem"], forbid: ["provider"])
        #expect(policy.admits(["on-prem", "sovereign:eu"]))
        // `admits` decides as `violation` does, without the explanation.
        #expect(!policy.admits(["provider", "on-prem"]) && !policy.admits([]) && !policy.admits(["provider"]))
        #expect(SubstratePolicy().admits([]) && SubstratePolicy(forbid: ["provider"]).admits(["on-prem"]))
        #expect(policy.violation(by: ["provider", "on-prem"]) == "carries forbidden tag provider")
        #expect(policy.violation(by: []) == "lacks required tag on-prem")
        #expect(policy.violation(by: ["provider"]) == "carries forbidden tag provider and lacks required tag on-prem")
        let narrowed = policy.narrowed(by: SubstratePolicy(require: ["sovereign:eu"]))
        #expect(narrowed.require == ["on-prem", "sovereign:eu"] && narrowed.forbid == ["provider"])
        #expect(SubstratePolicy.isValidTag("sovereign:eu") && SubstratePolicy.isValidTag("latency:batch"))
        for bad in ["", "On-Prem", "-x", "a b", String(repeating: "a", count: 65), "é"] {
            #expect(!SubstratePolicy.isValidTag(bad), "\(bad) is not a tag")
        }
    }

    @Test func tenantPolicyNarrowedByHeadersReachesTheBackend() async throws {
        let access = AccessControlBox(AccessControl(keys: [
            "eu-key": Tenant(name: "eu", policy: SubstratePolicy(require: ["on-prem"])),
            "plain": Tenant(name: "default"),
        ]))
        try await Self.withGateway(access: access) { client, backend in
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post,
                headers: [.authorization: "Bearer eu-key", HTTPField.Name("x-strata-forbid")!: "provider, Cloud:US"],
                body: Self.body)
            #expect(response.status == .ok)
            #expect(backend.lastHints?.tenant == "eu")
            #expect(backend.lastHints?.policy == SubstratePolicy(require: ["on-prem"], forbid: ["provider", "cloud:us"]))

            // a header can add requirements, never remove the tenant's
            _ = try await client.execute(
                uri: "/v1/chat/completions", method: .post,
                headers: [.authorization: "Bearer eu-key", HTTPField.Name("x-strata-require")!: "sovereign:eu"], body: Self.body)
            #expect(backend.lastHints?.policy == SubstratePolicy(require: ["on-prem", "sovereign:eu"]))

            _ = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer plain"], body: Self.body)
            #expect(backend.lastHints?.tenant == "default" && backend.lastHints?.policy.isEmpty == true)
        }
    }

    /// `/v1/models` lists what the caller may use: the tenant's policy, narrowed by the
    /// request's headers, leaves out the models it forbids, and retrieving one of them is the
    /// 404 of a model that does not exist.
    @Test func modelListFollowsTheCallersPolicy() async throws {
        let access = AccessControlBox(AccessControl(keys: [
            "eu-key": Tenant(name: "eu", policy: SubstratePolicy(require: ["sovereign:eu"])),
            "plain": Tenant(name: "default"),
        ]))
        let tags: [String: Set<String>] = ["local": ["on-prem", "sovereign:eu"], "cloud": ["provider"]]
        try await Self.withGateway(access: access, listedTags: tags) { client, _ in
            func ids(_ headers: HTTPFields) async throws -> [String] {
                let response = try await client.execute(uri: "/v1/models", method: .get, headers: headers)
                #expect(response.status == .ok)
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                return (object?["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String }.sorted() ?? []
            }
            #expect(try await ids([.authorization: "Bearer plain"]) == ["cloud", "local"])
            #expect(try await ids([.authorization: "Bearer eu-key"]) == ["local"])
            #expect(try await ids([.authorization: "Bearer plain", HTTPField.Name("x-strata-forbid")!: "on-prem"]) == ["cloud"])
            #expect(try await ids([.authorization: "Bearer eu-key", HTTPField.Name("x-strata-forbid")!: "on-prem"]) == [])
            let hidden = try await client.execute(uri: "/v1/models/cloud", method: .get, headers: [.authorization: "Bearer eu-key"])
            #expect(hidden.status == .notFound)
            let shown = try await client.execute(uri: "/v1/models/cloud", method: .get, headers: [.authorization: "Bearer plain"])
            #expect(shown.status == .ok)
            let bad = try await client.execute(
                uri: "/v1/models", method: .get,
                headers: [.authorization: "Bearer plain", HTTPField.Name("x-strata-require")!: "on prem!"])
            #expect(bad.status == .badRequest)
            #expect(try GatewayTests.errorCode(bad) == "invalid_header")
            let anonymous = try await client.execute(uri: "/v1/models", method: .get, headers: [:])
            #expect(anonymous.status == .unauthorized)
        }
    }

    @Test func invalidPolicyHeaderIsABadRequestThatAcquiresNothing() async throws {
        try await Self.withGateway(access: AccessControlBox(AccessControl())) { client, backend in
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post,
                headers: [HTTPField.Name("x-strata-require")!: "on prem!"], body: Self.body)
            #expect(response.status == .badRequest)
            #expect(try GatewayTests.errorCode(response) == "invalid_header")
            let message = String(buffer: response.body)
            #expect(message.contains("x-strata-require") && message.contains("prem!"))
            #expect(backend.acquired == 0)
        }
    }

    @Test func accessControlIsReplacedWhileRunning() async throws {
        let access = AccessControlBox(AccessControl(apiKeys: ["old"]))
        try await Self.withGateway(access: access) { client, _ in
            let old = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer old"], body: Self.body)
            #expect(old.status == .ok)
            access.replace(with: AccessControl(apiKeys: ["new"]))
            let stale = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer old"], body: Self.body)
            #expect(stale.status == .unauthorized)
            let fresh = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer new"], body: Self.body)
            #expect(fresh.status == .ok)
            // no keys at all: open, as anonymous
            access.replace(with: AccessControl())
            let open = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body)
            #expect(open.status == .ok)
        }
    }

    @Test func aSpilledRequestSaysWhichModelServedIt() async throws {
        try await Self.withGateway(access: AccessControlBox(AccessControl())) { client, _ in
            let body = ByteBuffer(string: #"{"model":"spilled","messages":[{"role":"user","content":"x"}]}"#)
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: body)
            #expect(response.status == .ok)
            #expect(response.headers[HTTPField.Name("x-strata-served-by")!] == "other")
            let direct = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: Self.body)
            #expect(direct.headers[HTTPField.Name("x-strata-served-by")!] == nil)
        }
    }

    @Test func aPinnedSlotIsAddedToTheBodyAndTheCachedShareReportedBeforeRelease() async throws {
        try await Self.withGateway(access: AccessControlBox(AccessControl())) { client, backend in
            let body = ByteBuffer(string: #"{"model":"pinned","messages":[{"role":"user","content":"x"}]}"#)
            let response = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: body)
            #expect(response.status == .ok)
            let echo = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any]
            let sent = echo?["echo"] as? [String: Any]
            #expect(sent?["id_slot"] as? Int == 1 && sent?["model"] as? String == "pinned")
            // usage.prompt_tokens_details: 2 of 3 cached, then the release
            #expect(backend.reportedCache == [[3, 2], [-1]])

            let stream = ByteBuffer(string: #"{"model":"pinned","stream":true,"messages":[{"role":"user","content":"x"}]}"#)
            let streamed = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: stream)
            #expect(streamed.status == .ok)
            // llama-server's timings in the last chunk: 5 cached + 3 computed in 250.5 ms
            try await Task.sleep(for: .milliseconds(50))
            #expect(backend.reportedCache.suffix(2) == [[8, 5, 251], [-1]])
        }
    }
}

/// Cross-origin access for browser apps: only for the origins the config allows.
struct CORSTests {
    @Test(arguments: [
        ("http://localhost:*", "http://localhost:3000", true),
        ("http://localhost:*", "http://localhost", false),
        ("http://localhost*", "http://localhost", true),
        ("http://localhost:*", "http://evil.example/http://localhost:1", false),
        ("https://app.example", "https://app.example", true),
        ("https://app.example", "https://app.example.evil", false),
        ("*", "null", true),
        ("app://*", "app://strata", true),
    ])
    func originsMatchTheirPatterns(pattern: String, origin: String, allowed: Bool) {
        #expect(CORSOrigins([pattern]).allows(origin) == allowed)
    }

    @Test(arguments: [false, true])
    func anAllowedOriginGetsItsPreflightAndHeadersOthersDoNot(immediate: Bool) async throws {
        // (Connections kept after a non-streamed answer, so the test client's one serves them all.)
        let configuration = GatewayConfiguration(cancelOnDisconnect: false, corsOrigins: CORSOrigins(["http://localhost:*"]))
        try await GatewayTests.withGateway(configuration, immediate: immediate) { client, _ in
            let preflight = try await client.execute(uri: "/v1/chat/completions", method: .options, headers: [
                .origin: "http://localhost:5173", .accessControlRequestMethod: "POST",
                .accessControlRequestHeaders: "authorization, content-type",
            ])
            #expect(preflight.status == .noContent)
            #expect(preflight.headers[.accessControlAllowOrigin] == "http://localhost:5173")
            #expect(preflight.headers[.accessControlAllowHeaders] == "authorization, content-type")
            #expect(preflight.headers[.accessControlAllowMethods]?.contains("POST") == true)
            let body = ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            let allowed = try await client.execute(uri: "/v1/chat/completions", method: .post,
                                                   headers: [.origin: "http://localhost:5173", .contentType: "application/json"], body: body)
            #expect(allowed.status == .ok && allowed.headers[.accessControlAllowOrigin] == "http://localhost:5173")
            #expect(allowed.headers[.accessControlExposeHeaders] == "x-strata-served-by, Retry-After",
                    "a page may read which model served it and when to retry")
            let error = try await client.execute(uri: "/v1/nothing", method: .get, headers: [.origin: "http://localhost:5173"])
            #expect(error.status == .notFound && error.headers[.accessControlAllowOrigin] == "http://localhost:5173",
                    "error answers carry it too")
            // another origin: what would change something is refused (a browser sends a text/plain
            // POST without a preflight; the page could not read the answer, but it would run)
            for contentType in ["application/json", "text/plain"] {
                let other = try await client.execute(uri: "/v1/chat/completions", method: .post,
                                                     headers: [.origin: "https://evil.example", .contentType: contentType], body: body)
                #expect(other.status == .forbidden && other.headers[.accessControlAllowOrigin] == nil)
                #expect(try GatewayTests.errorCode(other) == "origin_not_allowed")
            }
            let look = try await client.execute(uri: "/v1/models", method: .get, headers: [.origin: "https://evil.example"])
            #expect(look.status == .ok && look.headers[.accessControlAllowOrigin] == nil, "a GET changes nothing (and is not readable)")
            let refused = try await client.execute(uri: "/v1/chat/completions", method: .options, headers: [
                .origin: "https://evil.example", .accessControlRequestMethod: "POST",
            ])
            #expect(refused.headers[.accessControlAllowOrigin] == nil)
        }
        // None by default: no web page drives the models; clients that send no Origin (SDKs,
        // curl) are not concerned.
        try await GatewayTests.withGateway(immediate: immediate) { client, _ in
            let preflight = try await client.execute(uri: "/v1/chat/completions", method: .options, headers: [
                .origin: "http://localhost:5173", .accessControlRequestMethod: "POST",
            ])
            #expect(preflight.headers[.accessControlAllowOrigin] == nil)
            let body = ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
            let page = try await client.execute(uri: "/v1/chat/completions", method: .post,
                                                headers: [.origin: "http://localhost:5173", .contentType: "text/plain"], body: body)
            #expect(page.status == .forbidden)
            let admin = try await client.execute(uri: "/admin/reload", method: .post, headers: [.origin: "null"])
            #expect(admin.status == .forbidden)
            let sdk = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [.contentType: "application/json"], body: body)
            #expect(sdk.status == .ok)
        }
    }
}
