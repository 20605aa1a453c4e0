/// The retry decisions, kept pure so they are tested as tables: given what an attempt produced,
/// is the range complete, worth another attempt (and after how long), or lost for good?
enum AttemptVerdict: Sendable, Equatable {
    case complete
    /// `timedOut` picks the final error's code if the retries run out.
    case retry(reason: String, retryAfter: Duration?, timedOut: Bool)
    case fail(RemoteError)
}

enum RetryPlan {
    /// What the next attempt asks for after `received` bytes of `range` arrived: only the rest,
    /// never bytes already in the buffer.
    static func remaining(of range: Range<UInt64>, received: UInt64) -> Range<UInt64> {
        precondition(received <= UInt64(range.count), "received more than the range holds")
        return (range.lowerBound + received)..<range.upperBound
    }

    /// Exponential backoff with jitter in [50%, 100%] of the step (`unit` in 0..<1 is the random
    /// draw, injected for tests); a server's Retry-After is honoured when longer, up to 60 s.
    static func delay(failures: Int, initial: Duration, maximum: Duration, unit: Double,
                      retryAfter: Duration?) -> Duration {
        let step = min(maximum, initial * (1 << min(max(failures - 1, 0), 30)))
        let jittered = step * (0.5 + 0.5 * min(max(unit, 0), 1))
        guard let retryAfter else { return jittered }
        return max(jittered, min(retryAfter, .seconds(60)))
    }

    /// Retry-After in delta-seconds; the HTTP-date form is not worth a date parser here and falls
    /// back to the backoff.
    static func parseRetryAfter(_ text: String?) -> Duration? {
        guard let text, let seconds = Int(text.trimmingWhitespace), seconds >= 0 else { return nil }
        return .seconds(seconds)
    }

    /// "bytes 0-9/100" → (0, 9, 100); total nil for "*".
    static func parseContentRange(_ text: String?) -> (first: UInt64, last: UInt64, total: UInt64?)? {
        guard let text, text.hasPrefix("bytes ") else { return nil }
        let rest = text.dropFirst(6)
        let parts = rest.split(separator: "/", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        let bounds = parts[0].split(separator: "-", maxSplits: 1)
        guard bounds.count == 2, let first = UInt64(bounds[0]), let last = UInt64(bounds[1]) else { return nil }
        return (first, last, UInt64(parts[1]))
    }

    /// Strong comparison of ETags, ignoring a weak prefix some proxies add.
    static func sameETag(_ a: String, _ b: String) -> Bool {
        func strip(_ s: String) -> Substring { s.hasPrefix("W/") ? s.dropFirst(2) : Substring(s) }
        return strip(a) == strip(b)
    }

    /// Judges one ranged GET attempt that asked for `asked` of `object` and put `response.written`
    /// bytes into the buffer.
    static func judgeRangeAttempt(_ response: HTTPResponse, asked: Range<UInt64>, object: RemoteObject,
                                  method: String = "GET", url: String) -> AttemptVerdict {
        let wanted = asked.count
        let where_ = "\(method) \(url) bytes \(asked.lowerBound)-\(asked.upperBound - 1)"
        switch response.transport {
        case .aborted:
            return .fail(RemoteError(.cancelled, url: url, "\(where_): cancelled"))
        case .timedOut:
            return .retry(reason: "timed out or stalled: \(response.errorText)", retryAfter: nil, timedOut: true)
        case .connect, .failed, .sourceFailed:
            return .retry(reason: response.errorText.isEmpty ? "transport error" : response.errorText,
                          retryAfter: nil, timedOut: false)
        case .sinkRefused, .done:
            break
        }
        let status = response.status
        switch status {
        case 200, 206:
            if let etag = object.etag, let got = response.etag, !sameETag(etag, got) {
                return .fail(RemoteError(.changed, url: url,
                                         "\(where_): the object changed: ETag \(got), expected \(etag)"))
            }
            // Without an ETag, the modification time names the version (a server that ignored
            // If-Unmodified-Since still says which one it sent).
            if object.etag == nil, let was = object.lastModified, let got = response.lastModified, got != was {
                return .fail(RemoteError(.changed, url: url,
                                         "\(where_): the object changed: Last-Modified \(got), expected \(was)"))
            }
            if status == 206, let range = parseContentRange(response.contentRange) {
                if let total = range.total, total != object.size {
                    return .fail(RemoteError(.changed, url: url,
                                             "\(where_): the object changed: it is \(total) bytes, expected \(object.size)"))
                }
                if range.first != asked.lowerBound {
                    return .fail(RemoteError(.lengthMismatch, url: url,
                                             "\(where_): the server sent bytes from \(range.first) instead"))
                }
            }
            // A 200 is the whole object (the server ignored Range): the sink skipped to the offset.
            if status == 200, let length = response.contentLength, UInt64(length) != object.size {
                return .fail(RemoteError(.changed, url: url,
                                         "\(where_): the object changed: it is \(length) bytes, expected \(object.size)"))
            }
            if response.overflowed {
                return .fail(RemoteError(.lengthMismatch, url: url,
                                         "\(where_): the server sent more than the \(wanted) bytes asked for"))
            }
            if response.written == wanted { return .complete }
            // Short but well-formed: the bytes that came are good; ask for the rest.
            return .retry(reason: "the answer ended after \(response.written) of the \(wanted) bytes asked for"
                              + (response.errorText.isEmpty ? "" : " (\(response.errorText))"),
                          retryAfter: nil, timedOut: false)
        case 408, 429, 500...599:
            return .retry(reason: "HTTP \(status)", retryAfter: parseRetryAfter(response.retryAfter), timedOut: false)
        default:
            return .fail(RemoteError.forStatus(status, method: method, url: url, detail: S3XML.errorDetail(response.body)))
        }
    }

    /// Judges any other exchange (HEAD, PUT, POST, DELETE): 2xx is done, others final or retried.
    static func judgeExchange(_ response: HTTPResponse, method: String, url: String) -> AttemptVerdict {
        switch response.transport {
        case .aborted: return .fail(RemoteError(.cancelled, url: url, "\(method) \(url): cancelled"))
        case .timedOut:
            return .retry(reason: "timed out or stalled: \(response.errorText)", retryAfter: nil, timedOut: true)
        case .sourceFailed:
            return .fail(RemoteError(.transport, url: url, "\(method) \(url): the upload source failed: \(response.errorText)"))
        case .connect, .failed, .sinkRefused:
            return .retry(reason: response.errorText.isEmpty ? "transport error" : response.errorText,
                          retryAfter: nil, timedOut: false)
        case .done:
            break
        }
        switch response.status {
        case 200..<300: return .complete
        case 408, 429, 500...599:
            return .retry(reason: "HTTP \(response.status)", retryAfter: parseRetryAfter(response.retryAfter),
                          timedOut: false)
        default:
            return .fail(RemoteError.forStatus(response.status, method: method, url: url,
                                               detail: S3XML.errorDetail(response.body)))
        }
    }
}

/// The little XML S3 answers with: found by tag, no parser needed for these flat documents.
enum S3XML {
    static func value(of tag: String, in body: [UInt8]) -> String? {
        let text = String(decoding: body, as: UTF8.self)
        guard let open = text.range(of: "<\(tag)>"),
              let close = text.range(of: "</\(tag)>", range: open.upperBound..<text.endIndex) else { return nil }
        return String(text[open.upperBound..<close.lowerBound])
    }

    /// "NoSuchKey: The specified key does not exist." from an S3 error document, else "".
    static func errorDetail(_ body: [UInt8]) -> String {
        guard let code = value(of: "Code", in: body) else { return "" }
        if let message = value(of: "Message", in: body) { return "\(code): \(message)" }
        return code
    }

    static func escape(_ text: String) -> String {
        text.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
            .replacingAll("\"", "&quot;")
    }
}

extension String {
    func replacingAll(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
