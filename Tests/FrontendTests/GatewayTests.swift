import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing
@testable import Frontend

/// The gateway against a fake upstream (a small Hummingbird server standing in for a runtime)
/// and a fake backend. The real runtime is exercised by the integration suite.
struct GatewayTests {
    /// Fake upstream: echoes the request body as JSON, or streams SSE events; `/v1/completions`
    /// breaks its stream after one event.
    static func fakeUpstream() -> Application<RouterResponder<BasicRequestContext>> {
        let router = Router()
        router.post("/v1/chat/completions") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] ?? [:]
            if json["stream"] as? Bool == true {
                return Response(
                    status: .ok, headers: [.contentType: "text/event-stream"],
                    body: ResponseBody { writer in
                        for i in 0..<3 {
                            try await writer.write(ByteBuffer(string: "data: {\"i\":\(i)}\n\n"))
                            try await Task.sleep(for: .milliseconds(20))
                        }
                        // llama-server's last chunk carries its timings
                        try await writer.write(ByteBuffer(string: "data: {\"timings\":{\"cache_n\":5,\"prompt_n\":3,\"prompt_ms\":250.5}}\n\n"))
                        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                        try await writer.finish(nil)
                    })
            }
            if let wait = json["sleep_ms"] as? Int { try await Task.sleep(for: .milliseconds(wait)) }
            var echo = ByteBuffer(string: "{\"echo\":")
            echo.writeImmutableBuffer(body)
            // `echo_times`: the body that many times more (a large answer from a small request)
            for _ in 0..<(json["echo_times"] as? Int ?? 0) {
                echo.writeString(",\"again\":")
                echo.writeImmutableBuffer(body)
            }
            echo.writeString(",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":2}}}")
            return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: echo))
        }
        router.post("/v1/completions") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/event-stream"],
                body: ResponseBody { writer in
                    try await writer.write(ByteBuffer(string: "data: {\"i\":0}\n\n"))
                    throw CancellationError()   // the runtime dies mid-stream
                })
        }
        return Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }

    /// The gateway as the daemon runs it (event-loop relay included). `immediate`: the fake
    /// backend admits model `m` at once, so requests take the event-loop relay; otherwise it
    /// never does and every request goes the general way.
    static func withGateway(
        _ configuration: GatewayConfiguration = GatewayConfiguration(), immediate: Bool = false, rawPort: Int = 0,
        listed: [String] = ["m"], _ body: @Sendable (TestClientProtocol, FakeBackend) async throws -> Void
    ) async throws {
        try await fakeUpstream().test(.live) { upstream in
            let backend = FakeBackend(upstreamPort: upstream.port!, immediate: immediate, rawPort: rawPort, listed: listed)
            let gateway = Gateway(
                configuration: configuration, backend: backend, httpClient: .shared, logger: Logger(label: "test"))
            try await app(gateway).test(.live) { client in try await body(client, backend) }
        }
    }

    static func app(_ gateway: Gateway) -> some ApplicationProtocol {
        Application(
            router: gateway.buildRouter(),
            server: gateway.httpServer(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }

    static func errorCode(_ response: TestResponse) throws -> String? {
        try error(response)?["code"] as? String
    }

    /// The OpenAI-shaped error object of an answer.
    static func error(_ response: TestResponse) throws -> [String: Any]? {
        let json = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any]
        let error = json?["error"] as? [String: Any]
        #expect(error?["message"] as? String != nil, "OpenAI-shaped error has a message")
        #expect(error?["type"] as? String != nil, "OpenAI-shaped error has a type")
        return error
    }

    @Test(arguments: [false, true])
    func bodyIsForwardedByteForByteAndLeaseReleased(immediate: Bool) async throws {
        try await Self.withGateway(immediate: immediate) { client, backend in
            // unknown fields and tool definitions must pass through untouched, key order included
            let sent = #"{"zeta":1,"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"x_custom":{"a":[1,2]}}"#
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.contentType: "application/json"],
                body: ByteBuffer(string: sent))
            #expect(response.status == .ok)
            let text = String(buffer: response.body)
            #expect(text.hasPrefix("{\"echo\":" + sent + ","))
            #expect(backend.acquired == 1)
            #expect(backend.released == 1)
        }
    }

    @Test(arguments: [false, true])
    func sseStreamIsRelayedChunkByChunk(immediate: Bool) async throws {
        try await Self.withGateway(immediate: immediate) { client, backend in
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/chat/completions")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            #expect(response.status == .ok)
            #expect(response.headers.first(name: "content-type") == "text/event-stream")
            var chunks: [String] = []
            for try await chunk in response.body { chunks.append(String(buffer: chunk)) }
            // Upstream pauses 20 ms between events, so a relay that buffers would deliver one chunk.
            #expect(chunks.count >= 3, "got \(chunks)")
            #expect(chunks.joined() == "data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: {\"i\":2}\n\n"
                + "data: {\"timings\":{\"cache_n\":5,\"prompt_n\":3,\"prompt_ms\":250.5}}\n\ndata: [DONE]\n\n")
            try await Task.sleep(for: .milliseconds(50))
            #expect(backend.released == 1)
        }
    }

    @Test(arguments: [false, true])
    func streamBrokenByRuntimeEndsWithSSEErrorEvent(immediate: Bool) async throws {
        try await Self.withGateway(immediate: immediate) { client, backend in
            let response = try await client.execute(
                uri: "/v1/completions", method: .post, headers: [:],
                body: ByteBuffer(string: #"{"model":"m","stream":true,"prompt":"x"}"#))
            let text = String(buffer: response.body)
            #expect(text.hasPrefix("data: {\"i\":0}\n\n"))
            #expect(text.contains("\"code\":\"runtime_failed\""), "got \(text)")
            #expect(backend.released == 1)
        }
    }

    @Test(arguments: [
        ("not json", "invalid_json", nil),
        ("[1,2]", "invalid_json", nil),
        ("", "invalid_json", nil),
        (#"{"messages":[{"role":"user","content":"x"}]}"#, "missing_field", "model"),
        (#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#, "invalid_field", "model"),
        (#"{"model":"m"}"#, "missing_field", "messages"),
        (#"{"model":"m","messages":[]}"#, "invalid_field", "messages"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "invalid_field", "stream"),
        (#"{"model":"m","messages":[{"role":"user","content":"x"}],"user":5}"#, "invalid_field", "user"),
    ] as [(String, String, String?)])
    func badRequestsGet400WithReason(body: String, code: String, param: String?) async throws {
        try await Self.withGateway(immediate: true) { client, backend in
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [:], body: ByteBuffer(string: body))
            #expect(response.status == .badRequest)
            #expect(try Self.errorCode(response) == code)
            // the field at fault, as OpenAI names it (clients read `param`)
            let error = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: [String: Any]]
            #expect(error?["error"]?["param"] as? String == param)
            #expect(!String(buffer: response.body).contains("Domain"), "the reason, not Foundation's error dump")
            #expect(backend.acquired == 0, "a bad request must not reach a model")
        }
    }

    @Test(arguments: [("crashes-once", 200, 2), ("crashes-always", 502, 2), ("refuses", 502, 1)])
    func aRequestIsSentOnceMoreOnlyWhenItsRuntimeDiedBeforeAnswering(model: String, status: Int, leases: Int) async throws {
        // (The shared HTTP client retries a refused connection until the request's deadline, so
        // the first attempt takes all of it; 3 s leaves the resend time on a loaded machine,
        // where 1 s ran out in full-suite runs.)
        try await Self.withGateway(GatewayConfiguration(upstreamTimeout: .seconds(3))) { client, backend in
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [:],
                body: ByteBuffer(string: #"{"model":"\#(model)","messages":[{"role":"user","content":"x"}]}"#))
            #expect(response.status.code == status)
            if status == 200 { #expect(String(buffer: response.body).hasPrefix(#"{"echo":"#)) }
            else { #expect(try Self.errorCode(response) == "runtime_failed") }
            #expect(backend.acquired == leases, "at most one resend, and none to a runtime still running")
            #expect(backend.outcomes(model).count == leases)
        }
    }

    @Test func socketErrorsReadAsTheSystemSaysThem() {
        #expect(describe(IOError(errnoCode: ECONNREFUSED, reason: "connection reset (error set)")) == "Connection refused (errno 111)")
        #expect(describe(GatewayError.badRequest("no", code: "x")).contains("no"))
    }

    @Test func unknownModel404AndNotReady503WithRetryAfter() async throws {
        // several requests on one test-client connection: keep it alive
        try await Self.withGateway(GatewayConfiguration(cancelOnDisconnect: false)) { client, _ in
            let missing = try await client.execute(
                uri: "/v1/embeddings", method: .post, headers: [:], body: ByteBuffer(string: #"{"model":"nope","input":"x"}"#))
            #expect(missing.status == .notFound)
            #expect(try Self.errorCode(missing) == "model_not_found")

            let busy = try await client.execute(
                uri: "/v1/completions", method: .post, headers: [:], body: ByteBuffer(string: #"{"model":"busy","prompt":"x"}"#))
            #expect(busy.status == .serviceUnavailable)
            #expect(busy.headers[.retryAfter] == "7")

            let route = try await client.execute(uri: "/v1/nothing", method: .get, headers: [:])
            #expect(route.status == .notFound)
            #expect(try Self.errorCode(route) == "not_found")

            // a known path with the wrong method: 405 naming the one to use
            for (uri, method, allowed) in [
                ("/v1/chat/completions", HTTPRequest.Method.get, "POST"), ("/v1/models", .post, "GET"), ("/v1/models/m", .post, "GET"),
                ("/admin/reload", .get, "POST"), ("/admin/models/m/unload", .get, "POST"),
                ("/v1/completions", .delete, "POST"), ("/v1/embeddings", .put, "POST"), ("/v1/responses", .patch, "POST"),
                ("/v1/models", .delete, "GET"), ("/health", .post, "GET"), ("/ready", .put, "GET"), ("/metrics", .post, "GET"),
            ] {
                let wrong = try await client.execute(uri: uri, method: method, headers: [:])
                #expect(wrong.status == .methodNotAllowed)
                #expect(wrong.headers[.allow] == allowed)
                #expect(try Self.errorCode(wrong) == "method_not_allowed")
                #expect(String(buffer: wrong.body).contains("takes \(allowed), not \(method.rawValue)"))
            }
            // an admin path taking two methods names both (it was a 404, as if nothing were there)
            let tiers = try await client.execute(uri: "/admin/tiers", method: .post, headers: [:])
            #expect(tiers.status == .methodNotAllowed && tiers.headers[.allow] == "GET, PUT")
            #expect(String(buffer: tiers.body).contains("takes GET or PUT, not POST"))
            let staging = try await client.execute(uri: "/admin/staging", method: .delete, headers: [:])
            #expect(staging.status == .methodNotAllowed && staging.headers[.allow] == "GET")
            // OPTIONS on a known path: the methods it takes (it was a 404, as if nothing were there)
            for (uri, allowed) in [("/v1/chat/completions", "POST, OPTIONS"), ("/v1/models", "GET, OPTIONS"), ("/health", "GET, OPTIONS"),
                                   ("/admin/models", "GET, OPTIONS"), ("/admin/models/m/load", "POST, OPTIONS"),
                                   ("/admin/tiers", "GET, PUT, OPTIONS"), ("/admin/staging/m", "DELETE, OPTIONS")] {
                let options = try await client.execute(uri: uri, method: .options, headers: [:])
                #expect(options.status == .noContent)
                #expect(options.headers[.allow] == allowed)
            }
        }
    }

    /// Batch-get answers are built whole in memory: those under way share a bound, and each
    /// gives its share back when its hold goes, however its answer ends.
    @Test func batchAnswersUnderWayShareABound() {
        let total = NIOLockedValueBox(0)
        var holds = (0..<4).compactMap { _ in Gateway.BatchHold(Gateway.maxBatchBytes, in: total) }
        #expect(holds.count == 4 && total.withLockedValue { $0 } == Gateway.maxBatchBytesInFlight)
        #expect(Gateway.BatchHold(1, in: total) == nil, "nothing more fits beside them")
        holds.removeLast()
        #expect(Gateway.BatchHold(Gateway.maxBatchBytes, in: total) != nil, "a share given back is free again")
        holds.removeAll()
        #expect(total.withLockedValue { $0 } == 0)
    }

    @Test(arguments: ["plain", #"quotes " and \ backslash, / slash"#, "lines\nand\ttabs\u{7}bell", "é日😀", ""])
    func errorBodiesAreOpenAIShapedJSONWhateverTheMessageHolds(message: String) throws {
        let error = GatewayError(status: .badRequest, type: "invalid_request_error", code: "c\"1", message: message)
        let (headers, body) = error.encoded
        #expect(headers[.contentType] == "application/json")
        let json = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]
        let object = try #require(json?["error"] as? [String: Any])
        #expect(object["message"] as? String == message)
        #expect(object["code"] as? String == "c\"1")
        #expect(object["type"] as? String == "invalid_request_error")
        #expect(object["param"] is NSNull)
        #expect(object.count == 4 && json?.count == 1)
        let event = String(buffer: error.sseEvent)
        #expect(event.hasPrefix("data: {") && event.hasSuffix("}\n\n"))
        #expect(event.dropFirst(6).dropLast(2) == String(buffer: body))
    }

    @Test func aBatchOfBlocksIsJSONWithBase64ValuesInTheOrderAsked() throws {
        let keys = ["plain", #"q"u\o/te"#, "é日😀", "missing", ""]
        let values: [ByteBuffer?] = [ByteBuffer(string: "abc"), ByteBuffer(bytes: [0, 255, 10]), ByteBuffer(), nil, ByteBuffer(string: "x")]
        let answer = Gateway.batchAnswer(keys: keys, values: values)
        let json = try JSONSerialization.jsonObject(with: Data(buffer: answer)) as? [String: Any]
        let blocks = try #require(json?["blocks"] as? [[String: Any]])
        #expect(blocks.map { $0["key"] as? String } == keys)
        for (block, value) in zip(blocks, values) {
            if let value {
                #expect(Data(base64Encoded: block["value_base64"] as? String ?? "-") == Data(buffer: value))
            } else {
                #expect(block["value_base64"] is NSNull)
            }
        }
        let empty = try JSONSerialization.jsonObject(with: Data(buffer: Gateway.batchAnswer(keys: [], values: []))) as? [String: Any]
        #expect((empty?["blocks"] as? [Any])?.isEmpty == true)
    }

    @Test func oneModelIsRetrievedByItsIdAndAnUnknownOneIs404() async throws {
        try await Self.withGateway(listed: ["m", "org/big-model"]) { client, _ in
            for id in ["m", "org/big-model"] {
                let response = try await client.execute(uri: "/v1/models/\(id)", method: .get, headers: [:])
                #expect(response.status == .ok)
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                #expect(object?["id"] as? String == id)
                #expect(object?["object"] as? String == "model")
                #expect(object?["status"] as? String == "ready")
            }
            for id in ["nope", "org", "m/extra"] {
                let missing = try await client.execute(uri: "/v1/models/\(id)", method: .get, headers: [:])
                #expect(missing.status == .notFound)
                let error = try Self.error(missing)
                #expect(error?["code"] as? String == "model_not_found")
                #expect((error?["message"] as? String)?.contains("'\(id)' does not exist") == true)
            }
        }
        try await Self.withGateway(GatewayConfiguration(apiKeys: ["k1"])) { client, _ in
            let response = try await client.execute(uri: "/v1/models/m", method: .get, headers: [:])
            #expect(response.status == .unauthorized)
        }
    }

    @Test(arguments: [false, true])
    func oversizedBodyGets413(immediate: Bool) async throws {
        try await Self.withGateway(GatewayConfiguration(maxBodyBytes: 1024), immediate: immediate) { client, backend in
            let big = #"{"model":"m","messages":[{"role":"user","content":""# + String(repeating: "x", count: 4096) + #""}]}"#
            let response = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [:], body: ByteBuffer(string: big))
            #expect(response.status == .contentTooLarge)
            #expect(try Self.errorCode(response) == "request_too_large")
            #expect(backend.acquired == 0)
        }
    }

    @Test(arguments: [false, true])
    func apiKeysAndAdminKeyAreEnforced(immediate: Bool) async throws {
        let configuration = GatewayConfiguration(apiKeys: ["k1"], adminKey: "adm", cancelOnDisconnect: false)
        try await Self.withGateway(configuration, immediate: immediate) { client, _ in
            let body = ByteBuffer(string: #"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
            let none = try await client.execute(uri: "/v1/chat/completions", method: .post, headers: [:], body: body)
            #expect(none.status == .unauthorized)
            #expect(try Self.errorCode(none) == "invalid_api_key")
            let wrong = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer k2"], body: body)
            #expect(wrong.status == .unauthorized)
            let right = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "Bearer k1"], body: body)
            #expect(right.status == .ok)
            // the scheme in any case, spaces and tabs around the token
            let spaced = try await client.execute(
                uri: "/v1/chat/completions", method: .post, headers: [.authorization: "bearer  \tk1\t "], body: body)
            #expect(spaced.status == .ok)
            let models = try await client.execute(uri: "/v1/models", method: .get, headers: [:])
            #expect(models.status == .unauthorized)

            // the API key is not an admin key
            let admin = try await client.execute(uri: "/admin/models", method: .get, headers: [.authorization: "Bearer k1"])
            #expect(admin.status == .unauthorized)
            let adminOK = try await client.execute(uri: "/admin/models", method: .get, headers: [.authorization: "Bearer adm"])
            #expect(adminOK.status == .ok)
            // health needs no key
            let health = try await client.execute(uri: "/health", method: .get, headers: [:])
            #expect(health.status == .ok)
            // HEAD as the GET, without a body; and it asks for the key where the GET does
            let head = try await client.execute(uri: "/health", method: .head, headers: [:])
            #expect(head.status == .ok && head.body.readableBytes == 0)
            let headModels = try await client.execute(uri: "/v1/models", method: .head, headers: [:])
            #expect(headModels.status == .unauthorized)
        }
    }

    @Test func adminIsClosedWithoutKeyUnlessOpenedForLoopback() async throws {
        try await Self.withGateway(GatewayConfiguration(adminOpenWithoutKey: false)) { client, _ in
            let response = try await client.execute(uri: "/admin/models", method: .get, headers: [:])
            #expect(response.status == .forbidden)
        }
        try await Self.withGateway(GatewayConfiguration(adminOpenWithoutKey: true)) { client, _ in
            let response = try await client.execute(uri: "/admin/models", method: .get, headers: [:])
            #expect(response.status == .ok)
        }
    }
}
