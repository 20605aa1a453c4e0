import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// First on every client connection, before NIO's HTTP/1 decoder: plain HTTP/1.1 requests (a
/// method NIO knows, an origin-form path, `Content-Length` or no body, none of
/// `Transfer-Encoding`, `Upgrade`, `Expect`, `Connection: close`, no folded or control-character
/// header) are parsed
/// here from the socket's bytes and handed on as `HTTPRequestPart`s right after the codec, as
/// if it had made them. The codec's work for such a request (llhttp, an `HTTPRequestHead`, its
/// conversion to `HTTPRequest` through Foundation's `URLComponents`) was about a fifth of the
/// CPU of a relayed request. The first request that is not plain, and everything after it on
/// that connection, goes through the codec untouched, so whatever it did for odd requests and
/// errors it still does.
final class RequestFrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// Largest body taken here (`Gateway.relayBodyLimit`);
    /// a larger one goes through the codec, which streams it.
    private let bodyLimit: Int
    /// Where parsed parts go in: the context of the HTTP/1-to-HTTPTypes codec (they reach the
    /// handler after it).
    private var codec: ChannelHandlerContext?
    /// Bytes of a request not yet whole.
    private var pending: ByteBuffer?
    /// A request whose head has been parsed, waiting for the rest of its body.
    private var awaiting: (head: HTTPRequest, headBytes: Int, bodyBytes: Int)?
    /// The connection's requests go through the codec from now on.
    private(set) var passingThrough = false
    /// Counts the requests taken here that are still unanswered.
    private var idle: ClientIdleHandler?
    /// Takes a whole request directly when it can (`offer`), without three parts through the pipeline.
    private var relay: EventLoopRelayHandler?
    /// Bytes wait here for the requests taken here to be answered.
    var isHolding: Bool { held != nil }
    /// Bytes for the codec, waiting for the requests taken here to be answered, and the events
    /// that came after them.
    private var held: ByteBuffer?
    private var heldEvents: [Any] = []

    /// No handler sits between this one and the socket (only tests put some there, to watch the
    /// bytes): answers may then go to the socket directly (`DirectSocketWrite`), which handlers
    /// there would not see. Whatever adds a handler there (TLS, were it ever offered, would sit
    /// there) must make this false.
    let nextToSocket: Bool

    static let maxHeadBytes = 16 << 10
    /// A read went on past this handler since the last read-complete passed on. Only then do
    /// the handlers after it (NIO's codec, Hummingbird's async channel) have a read to complete:
    /// a request relayed here (`offer`) goes no further, and neither does its read-complete,
    /// which would otherwise walk the whole pipeline once per request.
    private var readsPassedOn = false
    /// How far the pending bytes have been searched for the end of a head.
    private var scannedHead = 0

    init(bodyLimit: Int, nextToSocket: Bool = true) {
        self.bodyLimit = bodyLimit
        self.nextToSocket = nextToSocket
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if passingThrough {
            if held != nil {
                var more = unwrapInboundIn(data)
                held!.writeBuffer(&more)
            } else {
                readsPassedOn = true
                context.fireChannelRead(data)
            }
            return
        }
        var buffer = unwrapInboundIn(data)
        if var kept = pending {
            kept.writeBuffer(&buffer)
            buffer = kept
            pending = nil
        }
        if codec == nil {
            codec = try? context.pipeline.syncOperations.context(handlerType: HTTP1ToHTTPServerCodec.self)
            idle = try? context.pipeline.syncOperations.handler(type: ClientIdleHandler.self)
            relay = try? context.pipeline.syncOperations.handler(type: EventLoopRelayHandler.self)
            if codec == nil || idle == nil {
                codec = nil
                passOn(buffer, context: context)
                return
            }
        }
        while buffer.readableBytes > 0 {
            if awaiting == nil {
                // Parsed only once the head's end has come: a head that arrives a byte at a
                // time is scanned once, not once per read.
                guard let headEnd = HTTP1Wire.endOfHead(buffer, from: scannedHead) else {
                    if buffer.readableBytes > Self.maxHeadBytes {
                        passOn(buffer, context: context)
                    } else {
                        scannedHead = max(0, buffer.readableBytes - 3)
                        pending = buffer
                    }
                    return
                }
                scannedHead = 0
                switch HTTP1RequestHead.parse(buffer.getSlice(at: buffer.readerIndex, length: headEnd)!, bodyLimit: bodyLimit) {
                case .incomplete:
                    passOn(buffer, context: context)   // (a head that ends where the parser did not expect)
                    return
                case .notPlain:
                    passOn(buffer, context: context)
                    return
                case .plain(let head, let headBytes, let bodyBytes):
                    awaiting = (head, headBytes, bodyBytes)
                }
            }
            let (head, headBytes, bodyBytes) = awaiting!
            guard buffer.readableBytes >= headBytes + bodyBytes else {
                pending = buffer
                // The body is arriving (if slowly): not idle, as it would not be through the codec.
                idle?.bytesArrived()
                return
            }
            awaiting = nil
            buffer.moveReaderIndex(forwardBy: headBytes)
            let body = buffer.readSlice(length: bodyBytes)!
            guard let codec else { return }
            if let relay, relay.offer(head, body: body) { continue }
            readsPassedOn = true
            codec.fireChannelRead(NIOAny(HTTPRequestPart.head(head)))
            if bodyBytes > 0 { codec.fireChannelRead(NIOAny(HTTPRequestPart.body(body))) }
            codec.fireChannelRead(NIOAny(HTTPRequestPart.end(nil)))
        }
    }

    /// From here on the connection's bytes go through the codec, starting at a request's first
    /// byte. Only once every request taken here has been answered: NIO's encoder pairs each
    /// answer with the method its decoder recorded for the request, and would pair an answer to a
    /// request taken here with one decoded after it (a HEAD's would lose its body). Until then
    /// the bytes wait here and the socket is not read.
    private func passOn(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        passingThrough = true
        codec = nil
        if let idle, idle.unanswered > 0 {
            held = buffer
            context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
            idle.whenAllAnswered = { [weak self] in
                guard let self, let held = self.held else { return }
                self.held = nil
                self.idle = nil
                context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
                if held.readableBytes > 0 { context.fireChannelRead(self.wrapInboundOut(held)) }
                context.fireChannelReadComplete()
                let events = self.heldEvents
                self.heldEvents = []
                for event in events { context.fireUserInboundEventTriggered(event) }
            }
            return
        }
        idle = nil
        readsPassedOn = true
        if buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer)) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        let relayHandedOn = relay?.handedOnSinceLastAsked() ?? false
        guard readsPassedOn || relayHandedOn || (passingThrough && held == nil) else { return }
        readsPassedOn = false
        context.fireChannelReadComplete()
    }

    /// A request cut short by the end of input: the codec gets its bytes, and says what it
    /// says of such a request today.
    private func handOverPending(context: ChannelHandlerContext) {
        guard !passingThrough else { return }
        let rest = pending
        pending = nil
        awaiting = nil
        scannedHead = 0
        passOn(rest ?? ByteBuffer(), context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if pending != nil { handOverPending(context: context) }
        if held != nil {
            heldEvents.append(event)   // after the bytes ahead of it (a half-close after requests)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if pending != nil { handOverPending(context: context) }
        forget()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        forget()
    }

    private func forget() {
        codec = nil
        relay = nil
        idle?.whenAllAnswered = nil
        idle = nil
        held = nil
        heldEvents = []
    }
}

/// A request head parsed from bytes, when it is plain enough to skip NIO's codec.
enum HTTP1RequestHead {
    case incomplete
    case notPlain
    case plain(HTTPRequest, headBytes: Int, bodyBytes: Int)

    static func parse(_ buffer: ByteBuffer, bodyLimit: Int) -> HTTP1RequestHead {
        buffer.withUnsafeReadableBytes { raw in parse(raw, bodyLimit: bodyLimit) }
    }

    static func parse(_ raw: UnsafeRawBufferPointer, bodyLimit: Int) -> HTTP1RequestHead {
        // The request line: METHOD SP /path SP HTTP/1.1 CRLF
        var i = 0
        while i < raw.count, raw[i] != UInt8(ascii: " ") {
            guard raw[i] >= UInt8(ascii: "A") && raw[i] <= UInt8(ascii: "Z") else { return .notPlain }
            i += 1
        }
        guard i < raw.count else { return raw.count > 16 ? .notPlain : .incomplete }
        guard let method = method(UnsafeRawBufferPointer(rebasing: raw[0..<i])) else { return .notPlain }
        i += 1
        let pathStart = i
        guard i < raw.count else { return .incomplete }
        guard raw[i] == UInt8(ascii: "/") else { return .notPlain }
        while i < raw.count, raw[i] != UInt8(ascii: " ") {
            guard raw[i] > 0x20 && raw[i] < 0x7F else { return .notPlain }
            i += 1
        }
        let pathEnd = i
        guard raw.count >= i + 11 else { return .incomplete }
        let version = " HTTP/1.1\r\n".utf8
        for (offset, byte) in version.enumerated() where raw[i + offset] != byte { return .notPlain }
        i += version.count
        var authority: String?
        var fields = HTTPFields()
        var contentLength: Int?
        while true {
            guard i + 1 < raw.count else { return .incomplete }
            if raw[i] == UInt8(ascii: "\r") {
                guard raw[i + 1] == UInt8(ascii: "\n") else { return .notPlain }
                i += 2
                break
            }
            // name: token, then a colon
            let nameStart = i
            while i < raw.count, raw[i] != UInt8(ascii: ":") {
                guard HTTP1Wire.isToken(raw[i]) else { return .notPlain }   // includes a folded line's space
                i += 1
            }
            guard i < raw.count else { return .incomplete }
            let nameEnd = i
            guard nameEnd > nameStart else { return .notPlain }
            i += 1
            while i < raw.count, raw[i] == UInt8(ascii: " ") || raw[i] == UInt8(ascii: "\t") { i += 1 }
            let valueStart = i
            while i < raw.count, raw[i] != UInt8(ascii: "\r") {
                let byte = raw[i]
                guard byte >= 0x20 && byte != 0x7F || byte == 0x09 else { return .notPlain }
                i += 1
            }
            guard i + 1 < raw.count else { return .incomplete }
            guard raw[i + 1] == UInt8(ascii: "\n") else { return .notPlain }
            var valueEnd = i
            while valueEnd > valueStart, raw[valueEnd - 1] == UInt8(ascii: " ") || raw[valueEnd - 1] == UInt8(ascii: "\t") { valueEnd -= 1 }
            i += 2
            let name = UnsafeRawBufferPointer(rebasing: raw[nameStart..<nameEnd])
            let value = UnsafeRawBufferPointer(rebasing: raw[valueStart..<valueEnd])
            switch name.count {
            case 4 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.host):
                if authority == nil {
                    authority = String(decoding: value, as: UTF8.self)
                    continue   // the first Host is the authority, not a field (as NIO's conversion)
                }
            case 14 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.contentLength):
                guard contentLength == nil, let length = HTTP1Wire.decimal(value) else { return .notPlain }
                contentLength = length
            case 17 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.transferEncoding):
                return .notPlain
            case 7 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.upgrade):
                return .notPlain
            case 6 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.expect):
                return .notPlain
            case 10 where HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.connection):
                // NIO's decoder reads nothing after a request that closes the connection.
                var close = false
                HTTP1Wire.forEachToken(value) { token in
                    if HTTP1Wire.equalsLowercased(token, HTTP1Wire.Lowercase.closeToken) { close = true }
                }
                if close { return .notPlain }
            default:
                break
            }
            guard let fieldName = HTTPField.Name(String(decoding: name, as: UTF8.self)) else { return .notPlain }
            fields.append(HTTPField(name: fieldName, value: String(decoding: value, as: UTF8.self)))
        }
        let bodyBytes = contentLength ?? 0
        guard bodyBytes <= bodyLimit else { return .notPlain }
        let path = String(decoding: UnsafeRawBufferPointer(rebasing: raw[pathStart..<pathEnd]), as: UTF8.self)
        let request = HTTPRequest(method: method, scheme: "http", authority: authority, path: path, headerFields: fields)
        return .plain(request, headBytes: i, bodyBytes: bodyBytes)
    }

    /// The methods taken here (the ones an OpenAI client or the admin API uses); others go
    /// through the codec. Not HEAD (nor CONNECT): NIO's encoder leaves out the body of their
    /// answers by the methods its decoder recorded, which it does not record for requests
    /// parsed here.
    private static func method(_ bytes: UnsafeRawBufferPointer) -> HTTPRequest.Method? {
        switch bytes.count {
        case 3:
            if bytes.elementsEqual("GET".utf8) { return .get }
            if bytes.elementsEqual("PUT".utf8) { return .put }
        case 4:
            if bytes.elementsEqual("POST".utf8) { return .post }
        case 6:
            if bytes.elementsEqual("DELETE".utf8) { return .delete }
        default:
            break
        }
        return nil
    }
}

/// Hummingbird's HTTP/1 server with `RequestFrontHandler` first on each connection.
struct FrontedHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel
    /// `RequestFrontHandler`'s body limit; nil: no front (the event-loop relay is off).
    let bodyLimit: Int?
    /// Handlers before the front (tests that watch the bytes).
    var socketSide: @Sendable () -> [any ChannelHandler & Sendable] = { [] }

    var responder: HTTPChannelHandler.Responder { inner.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        do {
            let outside = socketSide()
            for handler in outside { try channel.pipeline.syncOperations.addHandler(handler) }
            if let bodyLimit {
                try channel.pipeline.syncOperations.addHandler(RequestFrontHandler(bodyLimit: bodyLimit, nextToSocket: outside.isEmpty))
            }
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            // Where the request's version is still known (`ClosingRequestHandler`).
            let conversion = try channel.pipeline.syncOperations.handler(type: HTTP1ToHTTPServerCodec.self)
            try channel.pipeline.syncOperations.addHandler(ClosingRequestHandler(), position: .before(conversion))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}
