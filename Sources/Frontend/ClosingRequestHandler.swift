import NIOCore
import NIOHTTP1

/// Between NIO's HTTP/1 codec and the conversion to HTTP types (which forgets a request's
/// version and answers everything as HTTP/1.1): an HTTP/1.0 request gets an HTTP/1.0 answer.
/// Its head is given `Connection: close` (HTTP/1.0's default; keep-alive is not offered), so
/// that Hummingbird closes the connection after the answer, the event-loop relay leaves it to
/// the general path, and its answer is framed by NIO's encoder: by its length, or, for a
/// stream, by the end of the connection, never chunked (which an HTTP/1.0 client cannot read;
/// RFC 9112 §6.1). Interim (1xx) answers are not sent to it.
final class HTTP10Handler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Of each request read and not yet answered (its answer's head not yet written), in order:
    /// whether it is HTTP/1.0 or older.
    private var olderVersion: [Bool] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        let older = head.version.major < 1 || (head.version.major == 1 && head.version.minor == 0)
        olderVersion.append(older)
        guard older else {
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
        let interim = head.status.code < 200 && head.status.code != 101
        let older = interim ? olderVersion.first : (olderVersion.isEmpty ? nil : olderVersion.removeFirst())
        guard older == true else {
            context.write(data, promise: promise)
            return
        }
        if interim {
            promise?.succeed(())   // not for an HTTP/1.0 client
            return
        }
        head.version = .http1_0
        head.headers.remove(name: "transfer-encoding")
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
