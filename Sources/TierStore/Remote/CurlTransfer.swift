import CStrataCurl
import Glibc

// The only Swift file that sees CStrataCurl (libcurl and libcrypto): every call into C funnels
// through the types here, and the rest of the remote tier works with plain Swift values.

/// SHA-256 and HMAC-SHA256 from libcrypto.
enum LibCrypto {
    /// An EVP digest context; one owner, freed with it.
    final class SHA256Context {
        private let raw: UnsafeMutableRawPointer
        private var finished = false

        init() {
            guard let raw = strata_sha256_new() else { fatalError("libcrypto could not allocate a SHA-256 context") }
            self.raw = raw
        }

        deinit { strata_sha256_free(raw) }

        func update(_ bytes: UnsafeRawBufferPointer) {
            precondition(!finished, "SHA-256 context updated after it was finished")
            guard let base = bytes.baseAddress, bytes.count > 0 else { return }
            strata_sha256_update(raw, base.assumingMemoryBound(to: UInt8.self), Int64(bytes.count))
        }

        func finish() -> [UInt8] {
            precondition(!finished, "SHA-256 context finished twice")
            finished = true
            var digest = [UInt8](repeating: 0, count: 32)
            digest.withUnsafeMutableBufferPointer { strata_sha256_final(raw, $0.baseAddress) }
            return digest
        }
    }

    static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                digest.withUnsafeMutableBufferPointer { out in
                    strata_hmac_sha256(k.baseAddress, Int64(k.count), d.baseAddress, Int64(d.count), out.baseAddress)
                }
            }
        }
        return digest
    }
}

/// A cancellation flag shared between the task that may cancel and the thread running curl,
/// which polls it from curl's progress callback. The C side is a single atomic int.
final class AbortFlag: @unchecked Sendable {
    private let raw: UnsafeMutableRawPointer

    init() {
        guard let raw = strata_flag_new() else { fatalError("could not allocate an abort flag") }
        self.raw = raw
    }

    deinit { strata_flag_free(raw) }

    func raise() { strata_flag_raise(raw) }
    var isRaised: Bool { strata_flag_is_raised(raw) != 0 }
    fileprivate var pointer: UnsafeMutableRawPointer { raw }
}

/// One HTTP exchange to carry out.
struct HTTPRequest: Sendable {
    var method: String
    var url: String
    /// "Name: value" lines.
    var headers: [String]
    var followRedirects = false
    /// For messages: the URL without credentials or query signatures.
    var displayURL: String
}

/// What one exchange produced. A plain value, so the retry decisions can be tested without curl.
struct HTTPResponse: Sendable, Equatable {
    enum Transport: Sendable, Equatable {
        case done, aborted, timedOut, sinkRefused, connect, failed, sourceFailed
    }

    var transport: Transport
    var status: Int = 0
    var contentLength: Int64?
    var etag: String?
    var contentRange: String?
    var lastModified: String?
    var retryAfter: String?
    var errorText: String = ""
    /// Error answers (non-2xx) and small collected bodies (S3 XML), capped.
    var body: [UInt8] = []
    /// Bytes placed into the destination buffer.
    var written: Int = 0
    /// The answer held more bytes than the destination could take.
    var overflowed = false
}

/// Where response bytes go during one exchange.
final class ResponseSink {
    private let destination: UnsafeMutableRawBufferPointer?
    /// For a range request answered with the whole object (200): bytes to drop first.
    private var skip: UInt64
    private let rangeRequested: Bool
    private let collectLimit: Int
    /// Also handed every piece as it lands (absolute offset, bytes), on the transfer thread while
    /// the bytes are still in cache; a throw stops the transfer.
    private let tee: RemoteClient.Tee?
    private let teeStart: UInt64
    private(set) var written = 0
    /// Bytes of `destination` handed to the tee so far.
    private(set) var teed = 0
    private(set) var overflowed = false
    private(set) var body: [UInt8] = []

    /// Collects the body (capped at `limit` bytes; more is an overflow).
    init(collectLimit: Int) {
        destination = nil
        skip = 0
        rangeRequested = false
        self.collectLimit = collectLimit
        tee = nil
        teeStart = 0
    }

    /// Fills `destination`; `rangeStart` is the absolute offset asked for with Range.
    init(destination: UnsafeMutableRawBufferPointer, rangeStart: UInt64, tee: RemoteClient.Tee? = nil) {
        self.destination = destination
        skip = rangeStart
        rangeRequested = true
        collectLimit = 16 << 10
        self.tee = tee
        teeStart = rangeStart
    }

    /// True when the sink stopped the answer on purpose: a 200 carrying the whole object after it
    /// had everything it asked for.
    var completedEarly: Bool { rangeRequested && destination != nil && written == destination!.count }

    func accept(status: Int, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard (200..<300).contains(status), let destination else {
            // Error bodies only feed messages: keep the start, drop the rest.
            let room = max(0, collectLimit - body.count)
            body.append(contentsOf: bytes.prefix(room))
            if destination == nil && bytes.count > room && (200..<300).contains(status) {
                overflowed = true
                return 0
            }
            return bytes.count
        }
        var input = bytes[...]
        if status == 200 && rangeRequested && skip > 0 {
            let dropped = Int(min(skip, UInt64(input.count)))
            skip -= UInt64(dropped)
            input = input.dropFirst(dropped)
        }
        let room = destination.count - written
        let taking = min(room, input.count)
        if taking > 0 {
            let piece = UnsafeMutableRawBufferPointer(rebasing: destination[written..<(written + taking)])
            piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: input.prefix(taking)))
            written += taking
            // The tee gets spans of at least 1 MiB (one write each), and the last one when full;
            // what is left after a broken attempt is flushed by the reader.
            if let tee, written - teed >= 1 << 20 || written == destination.count {
                let span = UnsafeRawBufferPointer(rebasing: destination[teed..<written])
                guard tee.take(at: teeStart + UInt64(teed), span) else { return 0 }   // its error is kept
                teed = written
            }
        }
        if taking < input.count {
            overflowed = status != 200 || !rangeRequested
            return 0  // stops the transfer: either done (whole-object 200) or the server misbehaved
        }
        return bytes.count
    }
}

/// Supplies request body bytes during one exchange.
final class UploadSource {
    enum Origin {
        case memory(UnsafeRawBufferPointer)
        case file(descriptor: Int32, offset: UInt64)
    }

    private let origin: Origin
    let length: Int64
    private var sent: Int64 = 0
    private(set) var failure: String?

    init(_ origin: Origin, length: Int64) {
        self.origin = origin
        self.length = length
    }

    func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int64 {
        let want = Int(min(Int64(buffer.count), length - sent))
        guard want > 0 else { return 0 }
        switch origin {
        case .memory(let bytes):
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[Int(sent)..<(Int(sent) + want)]))
            sent += Int64(want)
            return Int64(want)
        case .file(let descriptor, let offset):
            switch FileIO.pread(descriptor, into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<want]),
                                at: offset + UInt64(sent)) {
            case .success(let count) where count > 0:
                sent += Int64(count)
                return Int64(count)
            case .success:
                failure = "the file ended \(length - sent) bytes early"
                return -1
            case .failure(let error):
                failure = "read failed: \(FileIO.describe(error.code))"
                return -1
            }
        }
    }
}

/// One reusable curl easy handle. Owned by one transfer thread; reusing it keeps connections alive.
final class CurlEasy {
    private let raw: UnsafeMutableRawPointer

    init() {
        guard let raw = strata_curl_new() else { fatalError("libcurl could not create an easy handle") }
        self.raw = raw
    }

    deinit { strata_curl_free(raw) }

    private static func withOptionalCString<T>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
        guard let text else { return body(nil) }
        return text.withCString { body($0) }
    }

    /// Blocks until the exchange ends. Runs on a transfer thread, never on the cooperative pool.
    func perform(_ request: HTTPRequest, sink: ResponseSink, source: UploadSource?, abort: AbortFlag,
                 connectTimeout: Duration, stallTimeout: Duration, caFile: String? = nil) -> HTTPResponse {
        let write: strata_curl_write_fn = { context, status, data, length in
            let sink = Unmanaged<ResponseSink>.fromOpaque(context!).takeUnretainedValue()
            return Int64(sink.accept(status: Int(status), UnsafeRawBufferPointer(start: data, count: Int(length))))
        }
        let read: strata_curl_read_fn = { context, buffer, capacity in
            let source = Unmanaged<UploadSource>.fromOpaque(context!).takeUnretainedValue()
            return source.fill(UnsafeMutableRawBufferPointer(start: buffer, count: Int(capacity)))
        }
        let cHeaders = request.headers.map { strdup($0) }
        defer { cHeaders.forEach { free($0) } }
        let code = cHeaders.withUnsafeBufferPointer { headers in
            headers.withMemoryRebound(to: UnsafePointer<CChar>?.self) { headers in
                withExtendedLifetime((sink, source)) {
                    Self.withOptionalCString(caFile) { caFile in
                        strata_curl_perform(
                            raw, request.method, request.url, headers.baseAddress, Int32(headers.count),
                            source?.length ?? -1, source == nil ? nil : read,
                            source.map { Unmanaged.passUnretained($0).toOpaque() },
                            write, Unmanaged.passUnretained(sink).toOpaque(),
                            Int64(connectTimeout.milliseconds), Int64(max(1, stallTimeout.milliseconds / 1000)),
                            request.followRedirects ? 1 : 0, abort.pointer, caFile)
                    }
                }
            }
        }
        let transport: HTTPResponse.Transport = switch Int(code) {
        case Int(STRATA_CURL_DONE): .done
        case Int(STRATA_CURL_ABORTED): .aborted
        case Int(STRATA_CURL_TIMED_OUT): .timedOut
        case Int(STRATA_CURL_SINK_REFUSED): .sinkRefused
        case Int(STRATA_CURL_CONNECT): .connect
        case Int(STRATA_CURL_SOURCE_FAILED): .sourceFailed
        default: .failed
        }
        func text(_ pointer: UnsafePointer<CChar>?) -> String? { pointer.map { String(cString: $0) } }
        let length = strata_curl_content_length(raw)
        var errorText = text(strata_curl_error_text(raw)) ?? ""
        if transport == .sourceFailed, let failure = source?.failure { errorText = failure }
        return HTTPResponse(
            transport: transport, status: Int(strata_curl_status(raw)),
            contentLength: length >= 0 ? length : nil,
            etag: text(strata_curl_etag(raw)), contentRange: text(strata_curl_content_range(raw)),
            lastModified: text(strata_curl_last_modified(raw)), retryAfter: text(strata_curl_retry_after(raw)),
            errorText: errorText, body: sink.body, written: sink.written, overflowed: sink.overflowed)
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
