import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Answers `Expect: 100-continue` with `100 Continue` as soon as the request's head is read, so
/// the client sends its body at once instead of after its own wait (curl waits a second before
/// sending a body over 1 MiB unasked). Not when the declared body is over `maxBodyBytes`: that
/// request gets its 413 once the body is read. Sits after the HTTP/1 codec, whose pipelining
/// handler delivers a request's head only when the answers before it are done, so the interim
/// answer never lands inside another.
final class ExpectContinueHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    private let maxBodyBytes: Int

    init(maxBodyBytes: Int) {
        self.maxBodyBytes = maxBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data), let expect = head.headerFields[.expect],
            expect.lowercased() == "100-continue", Self.declaredLength(head).map({ $0 <= maxBodyBytes }) ?? true
        {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
        }
        context.fireChannelRead(data)
    }

    private static func declaredLength(_ head: HTTPRequest) -> Int? {
        head.headerFields[.contentLength].flatMap { Int($0) }
    }
}
