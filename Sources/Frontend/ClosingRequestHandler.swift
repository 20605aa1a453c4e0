import HTTPTypes
import NIOCore
import NIOHTTP1

/// Between NIO's HTTP/1 codec and the conversion to HTTP types (which forgets a request's
/// version and answers everything as HTTP/1.1): the requests after which the connection ends.
/// - An HTTP/1.0 request gets an HTTP/1.0 answer. Its head is given `Connection: close`
///   (HTTP/1.0's default; keep-alive is not offered), so that Hummingbird closes the connection
///   after the answer, the event-loop relay leaves it to the general path, and its answer is
///   framed by NIO's encoder: by its length, or, for a stream, by the end of the connection,
///   never chunked (which an HTTP/1.0 client cannot read; RFC 9112 §6.1). Interim (1xx) answers
///   are not sent to it.
/// - An HTTP/1.1 request whose `Connection` names `close` among other options has it written as
///   `close` alone, which is what Hummingbird looks for to end the connection.
/// Either answer says `Connection: close` (RFC 9112 §9.6).
///
/// And a request NIO's parser refuses (`HTTPParserError`), which Hummingbird answers with a bare
/// 400 and no body before it closes the connection, gets an OpenAI-shaped error saying what was
/// wrong: 431 for headers over the parser's limit, 400 `malformed_request` otherwise.
final class ClosingRequestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Ending {
        case keepsConnection
        case closes
        case closesHTTP10
    }

    /// How each request read and not yet answered (its answer's head not yet written) ends, in order.
    private var endings: [Ending] = []
    /// What the parser refused; Hummingbird's 400 for it is the next answer without a body.
    private var refused: HTTPParserError?

    /// The answer to a request the parser refused, with the limit that `headerOverflow` means.
    static func refusal(_ error: HTTPParserError, headerLimit: Int = 80 << 10, maxHeaderFields: Int = 1000) -> GatewayError {
        switch error {
        case .headerOverflow:
            // (NIO counts the request line's URL with the header fields, and caps their number too.)
            GatewayError(status: .init(code: 431, reasonPhrase: "Request Header Fields Too Large"), type: "invalid_request_error",
                         code: "headers_too_large",
                         message: "The request's header fields and URL are over the limit of \(headerLimit >> 10) KiB "
                             + "(or over \(maxHeaderFields) fields)")
        default:
            GatewayError.badRequest("Malformed HTTP/1.1 request: \(error.debugDescription)", code: "malformed_request")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if refused == nil, let error = error as? HTTPParserError { refused = error }
        context.fireErrorCaught(error)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        let older = head.version.major < 1 || (head.version.major == 1 && head.version.minor == 0)
        let asksClose = head.headers[canonicalForm: "connection"].contains { $0.lowercased() == "close" }
        let ending: Ending = older ? .closesHTTP10 : asksClose ? .closes : .keepsConnection
        endings.append(ending)
        guard ending != .keepsConnection else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .head(var head) = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        if let refused, endings.isEmpty, head.status == .badRequest, head.headers["content-length"] == ["0"] {
            // The parser's refusal: an answer to no request read (every request read has its
            // entry in `endings` until its answer's head is written; a bodiless 400 relayed from
            // a runtime is one of those), the last on the connection. Hummingbird's `.end` follows.
            self.refused = nil
            let error = Self.refusal(refused)
            let (fields, body) = error.encoded
            head.status = HTTPResponseStatus(statusCode: Int(error.status.code), reasonPhrase: error.status.reasonPhrase)
            for field in fields { head.headers.replaceOrAdd(name: field.name.canonicalName, value: field.value) }
            head.headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.write(wrapOutboundOut(.head(head)), promise: promise)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            return
        }
        let interim = head.status.code < 200 && head.status.code != 101
        let ending = interim ? endings.first : (endings.isEmpty ? nil : endings.removeFirst())
        switch ending {
        case .keepsConnection?, nil:
            context.write(data, promise: promise)
            return
        case .closesHTTP10? where interim:
            promise?.succeed(())   // not for an HTTP/1.0 client
            return
        case .closesHTTP10?:
            head.version = .http1_0
            head.headers.remove(name: "transfer-encoding")
        case .closes?:
            break
        }
        if !interim { head.headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
