import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Every error the gateway answers with, OpenAI-shaped: `{"error":{"message","type","code"}}`.
/// The one place where failures become HTTP responses.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var type: String
    public var code: String
    public var message: String
    public var retryAfterSeconds: Int?
    /// The methods a 405's path takes (its `Allow` header).
    public var allow: String?
    /// The request field at fault (OpenAI's `param`), where there is one.
    public var param: String?

    public init(status: HTTPResponse.Status, type: String, code: String, message: String, retryAfterSeconds: Int? = nil,
                allow: String? = nil) {
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
        self.allow = allow
    }

    public var description: String { "\(status.code) \(code): \(message)" }

    public static func badRequest(_ message: String, code: String = "invalid_request", param: String? = nil) -> GatewayError {
        var error = GatewayError(status: .badRequest, type: "invalid_request_error", code: code, message: message)
        error.param = param
        return error
    }
    public static func unauthorized(_ message: String) -> GatewayError {
        GatewayError(status: .unauthorized, type: "invalid_request_error", code: "invalid_api_key", message: message)
    }
    public static func modelNotFound(_ model: String) -> GatewayError {
        GatewayError(status: .notFound, type: "invalid_request_error", code: "model_not_found",
                     message: "The model '\(model)' does not exist. GET /v1/models lists the models this server has.")
    }
    public static func unavailable(_ message: String, code: String, retryAfterSeconds: Int) -> GatewayError {
        GatewayError(status: .serviceUnavailable, type: "server_error", code: code, message: message,
                     retryAfterSeconds: retryAfterSeconds)
    }
    /// A request body over `gateway.max_body`.
    static func requestTooLarge(limit: Int) -> GatewayError {
        GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "request_too_large",
                     message: "Request body is larger than the limit of \(limit) bytes (gateway.max_body)")
    }

    /// A block over what the HTTP block API takes.
    static var blockTooLarge: GatewayError {
        GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "block_too_large",
                     message: "A block is at most \(Gateway.maxBlockBytes >> 20) MiB over HTTP (use the RESP service for larger values)")
    }

    public static func badGateway(_ message: String, code: String = "runtime_failed") -> GatewayError {
        GatewayError(status: .badGateway, type: "server_error", code: code, message: message)
    }

    /// `{"error":{"code","message","param","type"}}`, written directly: Foundation's
    /// `.sortedKeys` took about 100 µs per error answer (it orders keys by a locale-aware
    /// comparison), more than relaying a whole request, and error answers come in floods
    /// (a client with a bad key, a fleet with every replica down).
    var jsonBytes: [UInt8] {
        var out = Array(#"{"error":{"code":"#.utf8)
        appendJSONString(code, to: &out)
        out += Array(#","message":"#.utf8)
        appendJSONString(message, to: &out)
        out += Array(#","param":"#.utf8)
        if let param { appendJSONString(param, to: &out) } else { out += Array("null".utf8) }
        out += Array(#","type":"#.utf8)
        appendJSONString(type, to: &out)
        out += Array("}}".utf8)
        return out
    }

    /// The SSE event that ends a stream which broke after its headers were sent.
    var sseEvent: ByteBuffer {
        var buffer = ByteBuffer(string: "data: ")
        buffer.writeBytes(jsonBytes)
        buffer.writeString("\n\n")
        return buffer
    }

    /// The response's head fields and body.
    var encoded: (HTTPFields, ByteBuffer) {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfterSeconds { headers[.retryAfter] = String(retryAfterSeconds) }
        if let allow { headers[.allow] = allow }
        return (headers, ByteBuffer(bytes: jsonBytes))
    }

    func response() -> Response {
        let (headers, body) = encoded
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: body))
    }
}

/// Turns anything thrown below it into an OpenAI-shaped response.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as GatewayError {
            return error.response()
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                return GatewayError(status: .notFound, type: "invalid_request_error", code: "not_found",
                                    message: "No route for \(request.method) \(request.uri.path)").response()
            case .contentTooLarge:
                return GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "request_too_large",
                                    message: error.body ?? "Request body is too large").response()
            default:
                return GatewayError(status: error.status, type: "invalid_request_error", code: "http_\(error.status.code)",
                                    message: error.body ?? error.status.reasonPhrase).response()
            }
        } catch is NIOTooManyBytesError {
            return GatewayError(status: .contentTooLarge, type: "invalid_request_error", code: "request_too_large",
                                message: "Request body is too large").response()
        } catch let error where !(error is CancellationError) {
            return GatewayError(status: .internalServerError, type: "server_error", code: "internal_error",
                                message: "Internal error: \(describe(error))").response()
        }
    }
}
