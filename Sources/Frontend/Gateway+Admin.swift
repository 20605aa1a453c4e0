import Foundation
import Hummingbird
import NIOCore

extension Gateway {
    func addAdminRoutes(to router: Router<GatewayRequestContext>) {
        router.get("/admin/models") { request, _ in
            try authorizeAdmin(request)
            let status = await backend.adminStatus()
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: try encoder.encode(status))))
        }
        router.post("/admin/models/:name/load") { request, context in
            try authorizeAdmin(request)
            let name = try Self.modelName(context)
            try await backend.load(model: name)
            return jsonResponse(["model": name, "action": "load", "accepted": true], status: .accepted)
        }
        addTierRoutes(to: router)
        addStagingRoutes(to: router)
        router.post("/admin/models/:name/unload") { request, context in
            try authorizeAdmin(request)
            let name = try Self.modelName(context)
            try await backend.unload(model: name)
            return jsonResponse(["model": name, "action": "unload", "accepted": true], status: .accepted)
        }
        // Another method on an admin path is told which it takes (405), not that nothing is
        // there; OPTIONS lists them.
        let admin: [(String, [HTTPRequest.Method])] = [
            ("/admin/models", [.get]), ("/admin/models/:name/load", [.post]), ("/admin/models/:name/unload", [.post]),
            ("/admin/models/:name/stage", [.post]), ("/admin/reload", [.post]), ("/admin/tiers", [.get, .put]),
            ("/admin/placements", [.get]), ("/admin/staging", [.get]), ("/admin/staging/:name", [.delete]),
        ]
        for (path, methods) in admin { Self.refuseOtherMethods(RouterPath(path), allowed: methods, on: router) }
    }

    func addTierRoutes(to router: Router<GatewayRequestContext>) {
        router.get("/admin/tiers") { request, _ in
            try authorizeAdmin(request)
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: try await tierBackend().tierStatus())))
        }
        router.put("/admin/tiers") { request, _ in
            try authorizeAdmin(request)
            let body = try await request.body.collect(upTo: 64 << 10)
            let status = try await tierBackend().updateTiers(Data(body.readableBytesView))
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: status)))
        }
    }

    func addStagingRoutes(to router: Router<GatewayRequestContext>) {
        router.post("/admin/models/:name/stage") { request, context in
            try authorizeAdmin(request)
            let name = try Self.modelName(context)
            let body = try await request.body.collect(upTo: 64 << 10)
            var destination = "host"
            if body.readableBytes > 0 {
                guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
                    throw GatewayError.badRequest("expected a JSON object like {\"to\": \"host\"}", code: "invalid_stage")
                }
                if let unknown = object.keys.sorted().first(where: { $0 != "to" }) {
                    throw GatewayError.badRequest("\(unknown): unknown key (expected to)", code: "invalid_stage")
                }
                if let to = object["to"] {
                    guard let text = to as? String else {
                        throw GatewayError.badRequest("to: '\(to)' is not valid: expected host, nvme or disk", code: "invalid_stage")
                    }
                    destination = text
                }
            }
            let status = try await backend.stage(model: name, destination: destination)
            // 200 when there was nothing to do or it is already done (the weights were there), else 202.
            let done = (try? JSONSerialization.jsonObject(with: status) as? [String: Any])?["state"] as? String == "done"
            return Response(status: done ? .ok : .accepted, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: status)))
        }
        router.get("/admin/placements") { request, _ in
            try authorizeAdmin(request)
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: try await backend.placementLog())))
        }
        router.post("/admin/reload") { request, _ in
            try authorizeAdmin(request)
            guard let reload else {
                throw GatewayError(status: .notFound, type: "invalid_request_error", code: "no_reload",
                                   message: "This server cannot reload its configuration")
            }
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: try await reload())))
        }
        router.get("/admin/staging") { request, _ in
            try authorizeAdmin(request)
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: try await backend.stagingStatus())))
        }
        router.delete("/admin/staging/:name") { request, context in
            try authorizeAdmin(request)
            let name = try Self.modelName(context)
            try await backend.cancelStaging(model: name)
            return jsonResponse(["model": name, "action": "cancel", "accepted": true], status: .ok)
        }
    }

    /// The `:name` of an admin route, percent-decoded: a replica's name `model#i` can only be
    /// sent as `model%23i` (a `#` would end the path).
    static func modelName(_ context: GatewayRequestContext) throws -> String {
        let raw = try context.parameters.require("name")
        return raw.removingPercentEncoding ?? raw
    }

    private func tierBackend() throws -> any TierBackend {
        guard let tiers else {
            throw GatewayError(status: .notFound, type: "invalid_request_error", code: "no_tiers",
                               message: "This daemon runs no storage tiers")
        }
        return tiers
    }

    func authorizeAdmin(_ request: Request) throws {
        guard let adminKey = configuration.adminKey else {
            guard configuration.adminOpenWithoutKey else {
                throw GatewayError(status: .forbidden, type: "invalid_request_error", code: "admin_disabled",
                                   message: "Admin endpoints are closed: set STRATA_ADMIN_KEY (auth.admin_key_env) to use them")
            }
            return
        }
        guard let token = bearerToken(request), token == adminKey else {
            throw GatewayError.unauthorized("Admin endpoints need Authorization: Bearer <admin key>")
        }
    }
}
