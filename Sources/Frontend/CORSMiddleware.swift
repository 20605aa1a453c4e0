import HTTPTypes
import Hummingbird

/// Cross-origin access for browser apps, for the origins a config allows (`gateway.cors_origins`;
/// none by default, so a web page the user visits cannot drive the local models). An allowed
/// origin's preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered 204 with the
/// methods and the headers it asks for; its other requests' answers, errors included, name it in
/// `Access-Control-Allow-Origin`, and expose the headers a page needs to read (which replica or
/// model served it, when to retry). A request from any other origin that would change something
/// (not GET, HEAD or OPTIONS) is refused with 403: a browser sends a "simple" POST (text/plain,
/// a form) without asking first, and although the page cannot read the answer, the generation,
/// the unload or the reload would happen. Requests with an `Origin` take the general path
/// (`Gateway.immediateEndpoint`), where this runs.
struct CORSMiddleware<Context: RequestContext>: RouterMiddleware {
    let origins: CORSOrigins

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard let origin = request.headers[.origin] else { return try await next(request, context) }
        guard origins.allows(origin) else {
            if [.get, .head, .options].contains(request.method) { return try await next(request, context) }
            // (Answered here: this runs outside `ErrorMiddleware`.)
            return GatewayError(
                status: .forbidden, type: "invalid_request_error", code: "origin_not_allowed",
                message: "Requests from web pages at \(origin) may not use this server: "
                    + "add the origin to gateway.cors_origins to allow it").response()
        }
        if request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            var headers: HTTPFields = [
                .accessControlAllowOrigin: origin, .vary: "Origin",
                .accessControlAllowMethods: "GET, POST, PUT, DELETE, HEAD, OPTIONS", .accessControlMaxAge: "600",
            ]
            if let asked = request.headers[.accessControlRequestHeaders] { headers[.accessControlAllowHeaders] = asked }
            return Response(status: .noContent, headers: headers)
        }
        var response = try await next(request, context)
        response.headers[.accessControlAllowOrigin] = origin
        response.headers[.accessControlExposeHeaders] = Self.exposed
        response.headers[.vary] = "Origin"
        return response
    }

    /// Response headers beyond the CORS-safelisted ones that a page's script may read.
    static var exposed: String { "\(Gateway.servedByName), Retry-After" }
}

/// The origins allowed cross-origin access: exact (`http://localhost:3000`), with `*` standing
/// for any run of characters (`http://localhost:*`), or `*` alone for any origin.
public struct CORSOrigins: Sendable, Equatable {
    public var patterns: [String]

    public init(_ patterns: [String] = []) { self.patterns = patterns }

    public var isEmpty: Bool { patterns.isEmpty }

    public func allows(_ origin: String) -> Bool {
        patterns.contains { Self.matches(Array($0.utf8), Array(origin.utf8)) }
    }

    /// Glob matching with `*` only (any run, empty included).
    static func matches(_ pattern: [UInt8], _ text: [UInt8]) -> Bool {
        var p = 0, t = 0, star = -1, resume = 0
        while t < text.count {
            if p < pattern.count, pattern[p] == UInt8(ascii: "*") {
                star = p
                resume = t
                p += 1
            } else if p < pattern.count, pattern[p] == text[t] {
                p += 1
                t += 1
            } else if star >= 0 {
                p = star + 1
                resume += 1
                t = resume
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pattern.count
    }
}
