import Foundation
import Hummingbird
import NIOConcurrencyHelpers
import NIOCore

/// The HTTP block API on the same store as the RESP service: `PUT/GET/HEAD/DELETE
/// /v1/blocks/{key}` and `POST /v1/blocks/batch-get`. Keys are the path segment as sent, its
/// %XX escapes decoded to bytes (a batch's keys are JSON strings, so UTF-8); `?namespace=` picks a namespace (default `default`, the RESP service's).
/// API keys apply as for `/v1`, and a tenant's blocks are its own: a key of a configured tenant
/// works in the namespace named after it (or `tenant/…` below it) and no other, and no other key
/// reaches those.
extension Gateway {
    static let maxBlockBytes = 64 << 20
    /// Value bytes one batch-get answers at most (its answer is about a third more).
    static let maxBatchBytes = 64 << 20
    /// Value bytes all the batch-get answers under way hold at most: each is built whole in
    /// memory, so concurrent ones add up (eight of 64 MiB took the daemon past 1 GiB).
    static let maxBatchBytesInFlight = 256 << 20

    func addBlockRoutes(to router: Router<GatewayRequestContext>) {
        guard kv != nil else { return }
        // A block may be named `batch-get` too: that path's literal route would hide it from the
        // `:key` routes, so they are registered on it as well.
        for path in ["/v1/blocks/:key", "/v1/blocks/\(Self.batchGetName)"] { addBlockRoutes(path, to: router) }
        // Another method on a block is told which ones it takes (405), not that nothing is there.
        Self.refuseOtherMethods(RouterPath("/v1/blocks/:key"), allowed: [.get, .head, .put, .delete], on: router)
        // (`batch-get` is a block's name too, and the batch's POST.)
        Self.answerOptions(RouterPath("/v1/blocks/\(Self.batchGetName)"), allow: "GET, HEAD, PUT, DELETE, POST, OPTIONS", on: router)
        router.post("/v1/blocks/\(Self.batchGetName)") { request, _ in
            let tenant = try authorize(request)
            guard let store = kv else { throw Self.noBlocks }
            let body = try await request.body.collect(upTo: 4 << 20)
            guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
                let keys = object["keys"] as? [String]
            else {
                throw GatewayError.badRequest("expected {\"keys\": [\"k1\", …]}: an object whose keys are a list of strings", code: "invalid_batch")
            }
            guard keys.count <= 1024 else {
                throw GatewayError.badRequest("keys: \(keys.count) of them; a batch takes at most 1024", code: "invalid_batch")
            }
            if let bad = keys.first(where: { !Self.isBlockKey($0) }) {
                throw GatewayError.badRequest("keys: '\(bad.prefix(64))' is not a block key (1 to 4096 bytes)", code: "invalid_key")
            }
            // `?namespace=` as on the other block routes; a "namespace" in the body is read too.
            let query = request.uri.queryParameters.get("namespace")
            let field = object["namespace"]
            guard field == nil || field is String else {
                throw GatewayError.badRequest("namespace: expected a string", code: "invalid_batch")
            }
            if let query, let field = field as? String, field != query {
                throw GatewayError.badRequest("namespace: '\(field)' in the body and '\(query)' in the URL differ", code: "invalid_batch")
            }
            let namespace = try blockNamespace(query ?? field as? String, of: tenant)
            // Bounded before anything is read: the answer is built whole in memory (base64 in
            // JSON, a third more), and 1024 keys of 64 MiB blocks would be 64 GiB.
            var total = 0
            for key in keys {
                total += try await kvCall { try await store.length(namespace: namespace, key: ByteBuffer(string: key)) } ?? 0
                guard total <= Self.maxBatchBytes else {
                    throw GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "batch_too_large",
                                       message: "the blocks asked for hold more than \(Self.maxBatchBytes >> 20) MiB together, the most a batch answers; "
                                           + "get large blocks one at a time (GET /v1/blocks/{key})")
                }
            }
            guard let hold = BatchHold(total, in: batchBytesInFlight) else {
                throw GatewayError.unavailable("batch-gets under way hold \(Self.maxBatchBytesInFlight >> 20) MiB of blocks, the most at once",
                                               code: "batches_busy", retryAfterSeconds: 1)
            }
            let values = try await kvCall { try await store.get(namespace: namespace, keys: keys.map { ByteBuffer(string: $0) }) }
            let answer = Self.batchAnswer(keys: keys, values: values)
            // (The hold lasts while the answer is: until it is written, or dropped unwritten.)
            return Response(status: .ok, headers: [.contentType: "application/json", .contentLength: "\(answer.readableBytes)"],
                            body: ResponseBody { writer in
                                try await writer.write(answer)
                                try await writer.finish(nil)
                                withExtendedLifetime(hold) {}
                            })
        }
    }

    static let batchGetName = "batch-get"

    /// A batch-get's share of `maxBatchBytesInFlight`, given back when the hold goes (its answer
    /// written, or dropped on any path). Nil when it does not fit beside the others (one alone
    /// always fits: it is bounded by `maxBatchBytes`).
    final class BatchHold: Sendable {
        let bytes: Int
        let total: NIOLockedValueBox<Int>

        init?(_ bytes: Int, in total: NIOLockedValueBox<Int>) {
            let admitted = total.withLockedValue { held in
                guard held == 0 || held + bytes <= Gateway.maxBatchBytesInFlight else { return false }
                held += bytes
                return true
            }
            guard admitted else { return nil }
            self.bytes = bytes
            self.total = total
        }

        deinit { total.withLockedValue { $0 -= bytes } }
    }

    private static func isBlockKey(_ key: String) -> Bool { !key.isEmpty && key.utf8.count <= 4096 }

    /// PUT, GET, HEAD and DELETE of one block at `path`.
    private func addBlockRoutes(_ path: String, to router: Router<GatewayRequestContext>) {
        let path = RouterPath(path)
        router.put(path) { request, context in
            let (store, namespace, key) = try blockTarget(request, context, tenant: try authorize(request))
            // Said at once for a body announced too large, not after 64 MiB of it has come in.
            if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > Self.maxBlockBytes {
                throw GatewayError.blockTooLarge
            }
            // Neither a length nor chunks: by HTTP an empty body, most likely a client that
            // forgot the header (it stored an empty value and said so with a 201).
            if request.headers[.contentLength] == nil, request.headers[.transferEncoding] == nil {
                throw GatewayError(status: .lengthRequired, type: "invalid_request_error", code: "length_required",
                                   message: "a block's PUT needs Content-Length (Content-Length: 0 for an empty value) or chunked Transfer-Encoding")
            }
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: Self.maxBlockBytes)
            } catch {
                throw GatewayError.blockTooLarge
            }
            _ = try await kvCall { try await store.set(namespace: namespace, key: key, value: body, condition: .always, expiry: .never) }
            return Response(status: .created, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"stored":true,"bytes":\#(body.readableBytes)}"#)))
        }
        router.get(path) { request, context in
            let (store, namespace, key) = try blockTarget(request, context, tenant: try authorize(request))
            guard let pieces = try await kvCall({ try await store.getPieces(namespace: namespace, key: key) }) else {
                throw Self.noBlock(key)
            }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: ResponseBody(contentsOf: pieces))
        }
        router.head(path) { request, context in
            let (store, namespace, key) = try blockTarget(request, context, tenant: try authorize(request))
            guard let length = try await kvCall({ try await store.length(namespace: namespace, key: key) }) else {
                return Response(status: .notFound)
            }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream", .contentLength: "\(length)"])
        }
        router.delete(path) { request, context in
            let (store, namespace, key) = try blockTarget(request, context, tenant: try authorize(request))
            guard try await kvCall({ try await store.delete(namespace: namespace, keys: [key]) }) > 0 else { throw Self.noBlock(key) }
            return jsonResponse(["deleted": true])
        }
    }

    /// `{"blocks":[{"key":…,"value_base64":…|null},…]}`: values as base64 in JSON, since a batch
    /// is for many small blocks, where this costs little. Written directly: Foundation's
    /// `.sortedKeys` orders keys by a locale-aware comparison, tens of µs per block.
    static func batchAnswer(keys: [String], values: [ByteBuffer?]) -> ByteBuffer {
        var out = Array(#"{"blocks":["#.utf8)
        for (n, (key, value)) in zip(keys, values).enumerated() {
            out += Array((n == 0 ? #"{"key":"# : #",{"key":"#).utf8)
            appendJSONString(key, to: &out)
            out += Array(#","value_base64":"#.utf8)
            if let value {
                out.append(UInt8(ascii: "\""))
                out += Array(Data(value.readableBytesView).base64EncodedString().utf8)
                out.append(UInt8(ascii: "\""))
            } else {
                out += Array("null".utf8)
            }
            out.append(UInt8(ascii: "}"))
        }
        out += Array("]}".utf8)
        return ByteBuffer(bytes: out)
    }

    private func blockTarget(_ request: Request, _ context: GatewayRequestContext, tenant: Tenant) throws -> (any KVBackend, String, ByteBuffer) {
        guard let store = kv else { throw Self.noBlocks }
        let raw = context.parameters.get("key") ?? Self.batchGetName   // (the literal route: see `addBlockRoutes`)
        // Escapes decode to bytes, as RESP keys are bytes: `%FF` is the key of the one byte 0xFF
        // (a key RESP set can be reached), never the text "%FF", which `%25FF` names.
        guard let key = Self.percentDecoded(raw) else {
            throw GatewayError.badRequest("'\(raw.prefix(64))' is not a percent-encoded key (a % must begin %XX, two hex digits)",
                                          code: "invalid_key")
        }
        guard !key.isEmpty, key.count <= 4096 else {
            throw GatewayError.badRequest("block keys are 1 to 4096 bytes", code: "invalid_key")
        }
        let namespace = try blockNamespace(request.uri.queryParameters.get("namespace").map { String($0) }, of: tenant)
        return (store, namespace, ByteBuffer(bytes: key))
    }

    /// `text` with its %XX escapes decoded, as bytes (whether or not they are UTF-8); nil for a
    /// % not followed by two hex digits.
    static func percentDecoded(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        var bytes = text.utf8.makeIterator()
        func hex(_ byte: UInt8?) -> UInt8? {
            switch byte {
            case let b? where b >= 0x30 && b <= 0x39: b - 0x30
            case let b? where b >= 0x41 && b <= 0x46: b - 0x41 + 10
            case let b? where b >= 0x61 && b <= 0x66: b - 0x61 + 10
            default: nil
            }
        }
        while let byte = bytes.next() {
            guard byte == UInt8(ascii: "%") else {
                out.append(byte)
                continue
            }
            guard let high = hex(bytes.next()), let low = hex(bytes.next()) else { return nil }
            out.append(high << 4 | low)
        }
        return out
    }

    /// The namespace a request of `tenant` works in, asked for as `requested`: a configured
    /// tenant's own (its name, or below it as `name/…`); for the other keys (`auth.api_keys`, or
    /// none needed) any namespace but those. 403 for another tenant's.
    func blockNamespace(_ requested: String?, of tenant: Tenant) throws -> String {
        if let requested, requested.isEmpty || requested.utf8.count > 256 {
            throw GatewayError.badRequest(
                "namespace: '\(requested.prefix(64))\(requested.count > 64 ? "…" : "")' is not a namespace: expected 1 to 256 bytes (leave it out for 'default')",
                code: "invalid_namespace", param: "namespace")
        }
        let tenants = Set(access.current.keys.values.map(\.name)).subtracting(["default"])
        let owner = { (namespace: String) in String(namespace.split(separator: "/", maxSplits: 1).first ?? Substring(namespace)) }
        if tenants.contains(tenant.name) {
            guard let requested, requested != tenant.name else { return tenant.name }
            guard owner(requested) == tenant.name else {
                throw GatewayError(status: .forbidden, type: "invalid_request_error", code: "namespace_forbidden",
                                   message: "namespace '\(requested)' is not tenant '\(tenant.name)''s: its keys work in '\(tenant.name)' (or '\(tenant.name)/…')")
            }
            return requested
        }
        let namespace = requested ?? "default"
        guard !tenants.contains(owner(namespace)) else {
            throw GatewayError(status: .forbidden, type: "invalid_request_error", code: "namespace_forbidden",
                               message: "namespace '\(namespace)' belongs to tenant '\(owner(namespace))', not to this API key")
        }
        return namespace
    }

    private func kvCall<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as KVBackendError {
            switch error.code {
            case .outOfSpace:
                throw GatewayError(status: .init(code: 507, reasonPhrase: "Insufficient Storage"), type: "server_error", code: "out_of_space", message: error.message)
            case .tooLarge: throw GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "too_large", message: error.message)
            case .unavailable: throw GatewayError.unavailable(error.message, code: "blocks_unavailable", retryAfterSeconds: 1)
            }
        }
    }

    static func noBlock(_ key: ByteBuffer) -> GatewayError {
        GatewayError(status: .notFound, type: "invalid_request_error", code: "no_such_block",
                     message: "No block '\(String(decoding: key.readableBytesView, as: UTF8.self))'")
    }

    static var noBlocks: GatewayError {
        GatewayError(status: .notFound, type: "invalid_request_error", code: "no_blocks",
                     message: "This daemon serves no blocks (set kv in the config)")
    }
}
