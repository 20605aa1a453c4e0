import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Answers `Expect: 100-continue` as soon as the request's head is read, so the client sends
/// its body at once instead of after its own wait (curl waits a second before sending a body
/// over 1 MiB unasked): `100 Continue`, or, when the declared body is over what its route takes
/// (`gateway.max_body` for the OpenAI endpoints, `Gateway.maxBlockBytes` for blocks), the 413
/// at once, or, when the API key of a request to those is missing or unknown, the 401 at once,
/// and the connection ends (RFC 9110 §10.1.1: the client waits for one or the other).
/// Sits after the HTTP/1 codec; a client that expects 100 waits for it before sending anything
/// more, so the interim answer does not land inside another.
final class ExpectContinueHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    private let maxBodyBytes: Int
    /// The refusal of a request's credentials (an API key missing or unknown), nil where they pass.
    private let authorize: @Sendable (HTTPFields) -> GatewayError?
    /// Counts a refusal (the OpenAI endpoint's, nil for another route) as the general path would.
    private let onRefusal: @Sendable (Endpoint?, GatewayError) -> Void
    /// A request refused here: its remaining parts go nowhere.
    private var refused = false

    init(maxBodyBytes: Int, authorize: @escaping @Sendable (HTTPFields) -> GatewayError? = { _ in nil },
         onRefusal: @escaping @Sendable (Endpoint?, GatewayError) -> Void = { _, _ in }) {
        self.maxBodyBytes = maxBodyBytes
        self.authorize = authorize
        self.onRefusal = onRefusal
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        guard case .head(let head) = unwrapInboundIn(data), let expect = head.headerFields[.expect],
            expect.lowercased() == "100-continue"
        else {
            context.fireChannelRead(data)
            return
        }
        let declared = head.headerFields[.contentLength].flatMap { Int($0) }
        if let (endpoint, error) = unauthorized(head) ?? declared.flatMap({ tooLarge(head, declared: $0) }) {
            refused = true
            onRefusal(endpoint, error)
            var (headers, body) = error.encoded
            headers[.contentLength] = String(body.readableBytes)
            headers[.connection] = "close"
            headers[.server] = Gateway.serverName
            context.write(wrapOutboundOut(.head(HTTPResponse(status: error.status, headerFields: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(body)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
            return
        }
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
        context.fireChannelRead(data)
    }

    /// The 401 of a request to the OpenAI endpoints or the blocks whose API key is missing or
    /// unknown: said before the body comes, not after the client has sent it all.
    private func unauthorized(_ head: HTTPRequest) -> (Endpoint?, GatewayError)? {
        guard let path = head.path else { return nil }
        let endpoint = Endpoint(requestPath: path)
        guard endpoint != nil || path.hasPrefix("/v1/blocks/"), let error = authorize(head.headerFields) else { return nil }
        return (endpoint, error)
    }

    /// The 413 of a declared body over what the request's route takes; nil where it fits or the
    /// route is not one of those (its handler decides).
    private func tooLarge(_ head: HTTPRequest, declared: Int) -> (Endpoint?, GatewayError)? {
        guard let path = head.path else { return nil }
        if let endpoint = Endpoint(requestPath: path) {
            return declared > maxBodyBytes ? (endpoint, .requestTooLarge(limit: maxBodyBytes)) : nil
        }
        if path.hasPrefix("/v1/blocks/") {
            return declared > Gateway.maxBlockBytes ? (nil, .blockTooLarge) : nil
        }
        return nil
    }
}
