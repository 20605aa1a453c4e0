import HTTPTypes
import NIOCore
import NIOHTTP1

/// HTTP/1.1 on the upstream side of the event-loop relay, written and read as bytes: the request
/// serialized in one buffer, the answer parsed in place. NIO's HTTP client codec turned each
/// exchange into six pipeline messages, a header dictionary and an llhttp pass; the relay needs
/// the status, one header and the body's framing. (The general path still uses
/// AsyncHTTPClient.)
enum HTTP1Wire {
    enum Failure: Error, Equatable, CustomStringConvertible {
        /// The answer is not HTTP/1.x as RFC 9112 frames it (what, and where).
        case malformed(String)
        case headTooLarge(limit: Int)
        /// A request header that cannot be written as given (CR, LF or NUL in it, or a bad name).
        case invalidHeader(String)

        var description: String {
            switch self {
            case .malformed(let what): "malformed HTTP/1 answer: \(what)"
            case .headTooLarge(let limit): "the answer's head is larger than \(limit) bytes"
            case .invalidHeader(let name): "request header '\(name)' has a character HTTP/1 does not allow"
            }
        }
    }

    /// A request as bytes: `POST path HTTP/1.1`, the headers (`extra` replaces a standard header
    /// of the same name, as `HTTPHeaders.replaceOrAdd`), `Content-Length`, the body.
    static func request(method: String = "POST", path: String, standard: [(String, String)], extra: [(String, String)],
                        body: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> ByteBuffer
    {
        var out = allocator.buffer(capacity: 256 + path.utf8.count + body.readableBytes)
        out.writeString(method)
        out.writeInteger(UInt8(ascii: " "))
        try check(path, name: ":path", isName: false)
        out.writeString(path)
        out.writeStaticString(" HTTP/1.1\r\n")
        func write(_ name: String, _ value: String) throws {
            try check(name, name: name, isName: true)
            try check(value, name: name, isName: false)
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
        for (name, value) in standard where !extra.contains(where: { $0.0.utf8.count == name.utf8.count && $0.0.lowercased() == name.lowercased() }) {
            try write(name, value)
        }
        for (name, value) in extra { try write(name, value) }
        out.writeStaticString("Content-Length: ")
        out.writeString(String(body.readableBytes))
        out.writeStaticString("\r\n\r\n")
        var body = body
        out.writeBuffer(&body)
        return out
    }

    /// An answer's head as bytes: the status line, the fields (HTTPTypes has made their values
    /// safe to write), and `Transfer-Encoding: chunked` for a body whose length is not known.
    static func responseHead(_ response: HTTPResponse, chunked: Bool, into out: inout ByteBuffer) {
        statusLine(response.status.code, reason: response.status.reasonPhrase, into: &out)
        out.writeStaticString("\r\n")
        for field in response.headerFields {
            out.writeString(field.name.rawName)
            out.writeStaticString(": ")
            out.writeString(field.value)
            out.writeStaticString("\r\n")
        }
        if chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        out.writeStaticString("\r\n")
    }

    /// A whole answer (head and body) in one buffer. No body for statuses that have none.
    static func response(_ response: HTTPResponse, body: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 256 + body.readableBytes)
        var response = response
        let hasBody = Self.hasBody(status: response.status.code)
        if !hasBody { response.headerFields[.contentLength] = nil }
        responseHead(response, chunked: false, into: &out)
        if hasBody {
            var body = body
            out.writeBuffer(&body)
        }
        return out
    }

    /// `HTTP/1.1 code reason`; a status without a reason phrase (one relayed by its code) gets
    /// the standard one, as NIO's encoder writes it on the general path.
    private static func statusLine(_ code: Int, reason: String, into out: inout ByteBuffer) {
        out.writeStaticString("HTTP/1.1 ")
        out.writeString(String(code))
        out.writeInteger(UInt8(ascii: " "))
        out.writeString(reason.isEmpty ? HTTPResponseStatus(statusCode: code).reasonPhrase : reason)
    }

    /// A relayed answer as bytes, written straight from its parts: the status line, `Content-Type`,
    /// `x-strata-served-by` when given, `Date` when given, `Server`, `Content-Length`, the body.
    /// As HTTPTypes does, a CR, LF or NUL in a value is written as a space.
    /// `response` does the same from an `HTTPResponse`; building its `HTTPFields` for every
    /// answer cost more than writing the bytes. No body for statuses that have none.
    static func answer(status: Int, contentType: String, servedBy: String?, date: String?, server: String,
                       body: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer
    {
        var out = allocator.buffer(capacity: 256 + body.readableBytes)
        statusLine(status, reason: "", into: &out)
        func field(_ name: StaticString, _ value: String) {
            out.writeStaticString("\r\n")
            out.writeStaticString(name)
            out.writeStaticString(": ")
            if canCarry(value) {
                out.writeString(value)
            } else {
                for byte in value.utf8 { out.writeInteger(breaksLine(byte) ? UInt8(ascii: " ") : byte) }
            }
        }
        field("Content-Type", contentType)
        if let servedBy { field(Gateway.servedByName, servedBy) }
        if let date { field("Date", date) }
        field("Server", server)
        let hasBody = Self.hasBody(status: status)
        if hasBody { field("Content-Length", String(body.readableBytes)) }
        out.writeStaticString("\r\n\r\n")
        if hasBody {
            var body = body
            out.writeBuffer(&body)
        }
        return out
    }

    /// One chunk of a chunked body (`size CRLF data CRLF`); the last chunk when `data` is empty.
    static func chunk(_ data: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: data.readableBytes + 12)
        out.writeString(String(data.readableBytes, radix: 16))
        out.writeStaticString("\r\n")
        var data = data
        out.writeBuffer(&data)
        out.writeStaticString("\r\n")
        return out
    }

    /// A header name must be a token; a value (and the path) must not break the message: no CR,
    /// LF or NUL (what NIO's outbound header validation refused before).
    private static func check(_ text: String, name: String, isName: Bool) throws {
        if isName && text.isEmpty { throw Failure.invalidHeader(name) }
        if isName ? !text.utf8.allSatisfy(isToken) : !canCarry(text) { throw Failure.invalidHeader(name) }
    }

    /// Whether HTTP/1 can carry `value` as a field value as it is (no CR, LF or NUL).
    static func canCarry(_ value: String) -> Bool {
        !value.utf8.contains(where: breaksLine)
    }

    /// CR, LF or NUL: a byte no field value (nor the path) may carry.
    private static func breaksLine(_ byte: UInt8) -> Bool {
        byte == 0x0D || byte == 0x0A || byte == 0x00
    }

    /// Whether an answer with `status` has a body (RFC 9110 6.4.1: not 1xx, 204 or 304).
    static func hasBody(status: Int) -> Bool {
        !(100..<200).contains(status) && status != 204 && status != 304
    }

    static func isToken(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}

/// An answer's status line and header fields. The fields stay as the bytes that came (a slice of
/// the head); `first(name:)` looks one up when asked.
struct UpstreamHead {
    var status: Int
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    var keepAlive: Bool
    /// The header lines, each ending in CRLF.
    var fields: ByteBuffer

    /// The first value of header `name` (case-insensitive), without surrounding whitespace.
    func first(name: String) -> String? { first(lowercased: Array(name.lowercased().utf8)) }

    /// The same, for a name given in lower case (the `HTTP1Wire.Lowercase` constants: no array made per call).
    func first(lowercased wanted: [UInt8]) -> String? {
        fields.withUnsafeReadableBytes { raw -> String? in
            var start = 0
            while start < raw.count {
                var end = start
                while end < raw.count && raw[end] != UInt8(ascii: "\n") { end += 1 }
                let line = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                if let (nameRange, valueRange) = HTTP1Wire.split(line), nameRange.count == wanted.count,
                    HTTP1Wire.equalsLowercased(UnsafeRawBufferPointer(rebasing: line[nameRange]), wanted)
                {
                    return String(decoding: UnsafeRawBufferPointer(rebasing: line[valueRange]), as: UTF8.self)
                }
                start = end + 1
            }
            return nil
        }
    }
}

/// Reads HTTP/1.x answers from a connection's bytes, one event at a time: the head (interim 1xx
/// answers skipped), the body as it comes (chunked framing removed), the end. The body's slices
/// share the read's storage (no copy).
struct HTTP1ResponseParser {
    enum Event {
        case head(UpstreamHead)
        case body(ByteBuffer)
        case end
    }

    private enum State {
        case head
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
    }

    static let maxHeadBytes = 64 << 10
    static let maxLineBytes = 8 << 10

    private var state = State.head
    /// Bytes of an unfinished head or line, kept until the rest comes.
    private var pending: ByteBuffer?
    /// The answer in progress ends when its connection closes (no length, not chunked).
    var endsAtClose: Bool {
        if case .untilClose = state { return true }
        return false
    }
    /// The next event from `buffer` (consumed as far as it goes); nil when more bytes are needed.
    mutating func next(_ buffer: inout ByteBuffer) throws -> Event? {
        if pendingEnd {
            pendingEnd = false
            return .end
        }
        while true {
            switch state {
            case .head:
                guard let head = try readHead(&buffer) else { return nil }
                if let event = try begin(head) { return event }
            case .fixed(let remaining):
                guard buffer.readableBytes > 0 else { return nil }
                let take = min(remaining, buffer.readableBytes)
                let slice = buffer.readSlice(length: take)!
                if take == remaining {
                    state = .head
                    pendingEnd = true
                } else {
                    state = .fixed(remaining: remaining - take)
                }
                return .body(slice)
            case .chunkSize:
                guard let line = try readLine(&buffer) else { return nil }
                let size = try Self.chunkSize(line)
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard buffer.readableBytes > 0 else { return nil }
                let take = min(remaining, buffer.readableBytes)
                let slice = buffer.readSlice(length: take)!
                state = take == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - take)
                return .body(slice)
            case .chunkDataEnd:
                guard let line = try readLine(&buffer) else { return nil }
                guard line.readableBytes == 0 else { throw HTTP1Wire.Failure.malformed("no CRLF after a chunk's data") }
                state = .chunkSize
            case .trailers:
                guard let line = try readLine(&buffer) else { return nil }
                if line.readableBytes == 0 {
                    state = .head
                    return .end
                }
            case .untilClose:
                guard buffer.readableBytes > 0 else { return nil }
                return .body(buffer.readSlice(length: buffer.readableBytes)!)
            }
        }
    }

    /// The last body bytes (or a head with no body) were returned: the end is the next event.
    private var pendingEnd = false

    /// What to do at the end of input: the end of an answer that runs to the close, else nil
    /// (the answer, if one was under way, is cut short).
    mutating func inputClosed() -> Event? {
        guard endsAtClose else { return nil }
        state = .head
        return .end
    }

    /// Parses a whole head (status line to the empty line); nil until it has come.
    private mutating func readHead(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        // Look for CRLF CRLF in what is pending plus this read.
        var combined: ByteBuffer
        var searchFrom = 0
        if var kept = pending {
            searchFrom = max(0, kept.readableBytes - 3)
            kept.writeBuffer(&buffer)
            combined = kept
            pending = nil
        } else {
            combined = buffer
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        }
        guard let end = HTTP1Wire.endOfHead(combined, from: searchFrom) else {
            if combined.readableBytes > Self.maxHeadBytes { throw HTTP1Wire.Failure.headTooLarge(limit: Self.maxHeadBytes) }
            if combined.readableBytes > 0 { pending = combined }
            return nil
        }
        guard end <= Self.maxHeadBytes else { throw HTTP1Wire.Failure.headTooLarge(limit: Self.maxHeadBytes) }
        let head = combined.readSlice(length: end)!
        if combined.readableBytes > 0 {
            // What follows the head is the start of the body: put it back in front of this read.
            buffer = combined
        }
        return head
    }

    /// Reads the status line and fields of `head`; returns the head event, or nil for an interim
    /// (1xx) answer, which is skipped.
    private mutating func begin(_ head: ByteBuffer) throws -> Event? {
        var head = head
        let length = head.readableBytes
        // The status line: HTTP/1.x SP 3DIGIT [SP reason] CRLF
        guard let lineEnd = head.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            throw HTTP1Wire.Failure.malformed("no status line")
        }
        let statusLine = head.readSlice(length: lineEnd - head.readerIndex + 1)!
        let (minor, status) = try Self.statusLine(statusLine)
        let fields = head.getSlice(at: head.readerIndex, length: length - statusLine.readableBytes - 2)!
        var contentLength: Int?
        var chunked = false
        var transferEncoded = false
        var close = false
        var keepAliveToken = false
        try fields.withUnsafeReadableBytes { raw in
            var start = 0
            while start < raw.count {
                var end = start
                while end < raw.count && raw[end] != UInt8(ascii: "\n") { end += 1 }
                guard end < raw.count, end > start, raw[end - 1] == UInt8(ascii: "\r") else {
                    throw HTTP1Wire.Failure.malformed("a header line does not end in CRLF")
                }
                let line = UnsafeRawBufferPointer(rebasing: raw[start..<(end - 1)])
                guard let (nameRange, valueRange) = HTTP1Wire.split(line) else {
                    throw HTTP1Wire.Failure.malformed("header line without a valid name and colon")
                }
                let name = UnsafeRawBufferPointer(rebasing: line[nameRange])
                let value = UnsafeRawBufferPointer(rebasing: line[valueRange])
                if name.count == 14, HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.contentLength) {
                    guard let parsed = HTTP1Wire.decimal(value) else {
                        throw HTTP1Wire.Failure.malformed("Content-Length '\(String(decoding: value, as: UTF8.self))'")
                    }
                    if let contentLength, contentLength != parsed {
                        throw HTTP1Wire.Failure.malformed("two different Content-Length values")
                    }
                    contentLength = parsed
                } else if name.count == 17, HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.transferEncoding) {
                    transferEncoded = true
                    chunked = HTTP1Wire.lastToken(value).map { HTTP1Wire.equalsLowercased($0, HTTP1Wire.Lowercase.chunkedToken) } ?? false
                } else if name.count == 10, HTTP1Wire.equalsLowercased(name, HTTP1Wire.Lowercase.connection) {
                    HTTP1Wire.forEachToken(value) { token in
                        if token.count == 5, HTTP1Wire.equalsLowercased(token, HTTP1Wire.Lowercase.closeToken) { close = true }
                        if token.count == 10, HTTP1Wire.equalsLowercased(token, HTTP1Wire.Lowercase.keepAliveToken) { keepAliveToken = true }
                    }
                }
                start = end + 1
            }
        }
        if (100..<200).contains(status) {
            if status == 101 { throw HTTP1Wire.Failure.malformed("101 Switching Protocols, which was not asked for") }
            return nil   // 100 Continue, 103 Early Hints: the answer follows
        }
        var keepAlive = minor == 1 ? !close : keepAliveToken && !close
        if !HTTP1Wire.hasBody(status: status) {   // (1xx returned above)
            state = .head
            pendingEnd = true
        } else if transferEncoded {
            // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and such a connection is not kept.
            if contentLength != nil { keepAlive = false }
            if chunked {
                state = .chunkSize
            } else {
                state = .untilClose
                keepAlive = false
            }
        } else if let contentLength {
            if contentLength == 0 {
                state = .head
                pendingEnd = true
            } else {
                state = .fixed(remaining: contentLength)
            }
        } else {
            state = .untilClose
            keepAlive = false
        }
        return .head(UpstreamHead(status: status, keepAlive: keepAlive, fields: fields))
    }

    /// A line ending in CRLF (without it); nil until it has come.
    private mutating func readLine(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if pending == nil { pending = buffer } else { pending!.writeBuffer(&buffer) }
            buffer.moveReaderIndex(to: buffer.writerIndex)
            if pending!.readableBytes > Self.maxLineBytes { throw HTTP1Wire.Failure.malformed("a chunk line longer than \(Self.maxLineBytes) bytes") }
            if pending!.readableBytes == 0 { pending = nil }
            return nil
        }
        var line = buffer.readSlice(length: newline - buffer.readerIndex + 1)!
        if var kept = pending {
            kept.writeBuffer(&line)
            line = kept
            pending = nil
        }
        guard line.readableBytes >= 2, line.getInteger(at: line.writerIndex - 2, as: UInt8.self) == UInt8(ascii: "\r") else {
            throw HTTP1Wire.Failure.malformed("a chunk line does not end in CRLF")
        }
        line.moveWriterIndex(to: line.writerIndex - 2)
        if line.readableBytes > Self.maxLineBytes { throw HTTP1Wire.Failure.malformed("a chunk line longer than \(Self.maxLineBytes) bytes") }
        return line
    }

    // MARK: pieces

    /// `HTTP/1.x SP 3DIGIT [SP reason] CRLF` → (x, status).
    private static func statusLine(_ line: ByteBuffer) throws -> (Int, Int) {
        // Read in place: this runs for every relayed answer.
        let parsed = line.withUnsafeReadableBytes { bytes -> (Int, Int)? in
            func digit(_ byte: UInt8) -> Int? { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) ? Int(byte - UInt8(ascii: "0")) : nil }
            guard bytes.count >= 14, bytes.starts(with: "HTTP/1.".utf8), let minor = digit(bytes[7]), minor <= 1,
                bytes[8] == UInt8(ascii: " "), let hundreds = digit(bytes[9]), let tens = digit(bytes[10]), let ones = digit(bytes[11]),
                bytes[12] == UInt8(ascii: " ") || bytes[12] == UInt8(ascii: "\r"),
                bytes[bytes.count - 2] == UInt8(ascii: "\r")
            else { return nil }
            return (minor, hundreds * 100 + tens * 10 + ones)
        }
        guard let (minor, status) = parsed else {
            throw HTTP1Wire.Failure.malformed("status line '\(String(decoding: line.readableBytesView.prefix(64), as: UTF8.self).trimmingCRLF)'")
        }
        guard status >= 100 else { throw HTTP1Wire.Failure.malformed("status \(status)") }
        return (minor, status)
    }

    /// A chunk-size line: hex digits, then optional whitespace and `;extensions`.
    private static func chunkSize(_ line: ByteBuffer) throws -> Int {
        var value = 0
        var digits = 0
        for byte in line.readableBytesView {
            let digit: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = Int(byte - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = Int(byte - UInt8(ascii: "A")) + 10
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                guard digits > 0 else { throw HTTP1Wire.Failure.malformed("chunk size line '\(String(buffer: line))'") }
                return value
            default:
                throw HTTP1Wire.Failure.malformed("chunk size line '\(String(buffer: line).prefix(32))'")
            }
            digits += 1
            guard digits <= 15 else { throw HTTP1Wire.Failure.malformed("chunk size too large") }
            value = value * 16 + digit
        }
        guard digits > 0 else { throw HTTP1Wire.Failure.malformed("empty chunk size line") }
        return value
    }

}

/// Byte-level pieces both directions use: the request front (`RequestFrontHandler`) and the
/// answer parser (`HTTP1ResponseParser`).
extension HTTP1Wire {
    /// Header names and tokens, lower-case, for `equalsLowercased`.
    enum Lowercase {
        static let host = Array("host".utf8)
        static let contentLength = Array("content-length".utf8)
        static let transferEncoding = Array("transfer-encoding".utf8)
        static let connection = Array("connection".utf8)
        static let upgrade = Array("upgrade".utf8)
        static let expect = Array("expect".utf8)
        static let chunkedToken = Array("chunked".utf8)
        static let closeToken = Array("close".utf8)
        static let keepAliveToken = Array("keep-alive".utf8)
        static let contentType = Array("content-type".utf8)
    }

    /// The length of the head at the start of `buffer` (through its CRLF CRLF), searching from
    /// `from`; nil if it has not ended yet.
    static func endOfHead(_ buffer: ByteBuffer, from: Int) -> Int? {
        buffer.withUnsafeReadableBytes { raw -> Int? in
            var i = max(0, from)
            while i + 3 < raw.count {
                if raw[i + 3] == UInt8(ascii: "\n"), raw[i] == UInt8(ascii: "\r"), raw[i + 1] == UInt8(ascii: "\n"),
                    raw[i + 2] == UInt8(ascii: "\r")
                {
                    return i + 4
                }
                i += 1
            }
            return nil
        }
    }

    /// A header line's name and value ranges (value without surrounding spaces and tabs); nil
    /// when the name is empty or not a token (which includes a line folded onto the previous one).
    static func split(_ line: UnsafeRawBufferPointer) -> (Range<Int>, Range<Int>)? {
        var colon = 0
        while colon < line.count, line[colon] != UInt8(ascii: ":") {
            guard HTTP1Wire.isToken(line[colon]) else { return nil }
            colon += 1
        }
        guard colon > 0, colon < line.count else { return nil }
        var start = colon + 1
        var end = line.count
        while end > start, line[end - 1] == UInt8(ascii: " ") || line[end - 1] == UInt8(ascii: "\t") || line[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        while start < end, line[start] == UInt8(ascii: " ") || line[start] == UInt8(ascii: "\t") { start += 1 }
        return (0..<colon, start..<end)
    }

    static func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ lowercase: [UInt8]) -> Bool {
        guard bytes.count == lowercase.count else { return false }
        for i in 0..<bytes.count {
            var byte = bytes[i]
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { byte += 32 }
            if byte != lowercase[i] { return false }
        }
        return true
    }

    static func decimal(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    static func forEachToken(_ value: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        while start <= value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            var a = start
            var b = end
            while a < b, value[a] == UInt8(ascii: " ") || value[a] == UInt8(ascii: "\t") { a += 1 }
            while b > a, value[b - 1] == UInt8(ascii: " ") || value[b - 1] == UInt8(ascii: "\t") { b -= 1 }
            if b > a { body(UnsafeRawBufferPointer(rebasing: value[a..<b])) }
            start = end + 1
        }
    }

    static func lastToken(_ value: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        var last: UnsafeRawBufferPointer?
        forEachToken(value) { last = $0 }
        return last
    }
}

extension String {
    fileprivate var trimmingCRLF: String {
        var text = self
        while text.hasSuffix("\r") || text.hasSuffix("\n") { text.removeLast() }
        return text
    }
}
