/// What went wrong talking to the remote tier. One struct for the module's remote half: a code to
/// branch on, the URL (never with credentials or signatures) and a sentence a person can act on.
public struct RemoteError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case badLocation, notFound, forbidden, timeout, changed, httpStatus(Int), transport
        case lengthMismatch, checksumMismatch, cancelled, unsupported
    }

    public var code: Code
    public var url: String
    public var message: String

    public init(_ code: Code, url: String, _ message: String) {
        self.code = code
        self.url = url
        self.message = message
    }

    public var description: String { message }
}

extension RemoteError {
    /// The error for an HTTP answer that is final (not retried), worded from the status.
    static func forStatus(_ status: Int, method: String, url: String, detail: String) -> RemoteError {
        let tail = detail.isEmpty ? "" : " (\(detail))"
        switch status {
        case 404:
            // (S3 answers a HEAD without a body, so which of the two is missing is not said.)
            let what = url.hasPrefix("s3://") && detail.isEmpty ? "the bucket or the object does not exist" : "the object does not exist"
            return RemoteError(.notFound, url: url, "\(method) \(url): 404 Not Found: \(what)\(tail)")
        case 401, 403:
            return RemoteError(.forbidden, url: url,
                               "\(method) \(url): \(status) Forbidden: check the credentials and the bucket policy\(tail)")
        case 412:
            return RemoteError(.changed, url: url,
                               "\(method) \(url): 412 Precondition Failed: the object changed since it was looked up\(tail)")
        case 416:
            return RemoteError(.changed, url: url,
                               "\(method) \(url): 416 Range Not Satisfiable: the object is shorter than when it was looked up\(tail)")
        default:
            return RemoteError(.httpStatus(status), url: url, "\(method) \(url): HTTP \(status)\(tail)")
        }
    }
}
