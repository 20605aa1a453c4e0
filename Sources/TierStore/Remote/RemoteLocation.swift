/// Where a remote object lives. Parsed once from configuration text; the parsing error names the
/// text and the forms that are accepted.
public enum RemoteLocation: Sendable, Equatable, CustomStringConvertible {
    case file(path: String)
    case http(url: String)
    case s3(bucket: String, key: String)

    static let expected = "expected file:///abs/path, /abs/path, http(s)://host/path or s3://bucket/key"

    public init(parsing text: String) throws(RemoteError) {
        func bad(_ why: String) -> RemoteError {
            RemoteError(.badLocation, url: text, "bad remote location \"\(text)\": \(why); \(Self.expected)")
        }
        let trimmed = text.trimmingWhitespace
        guard !trimmed.isEmpty else { throw bad("it is empty") }
        let lower = trimmed.lowercased()
        if lower.hasPrefix("file://") {
            let path = String(trimmed.dropFirst("file://".count))
            guard path.hasPrefix("/") else { throw bad("a file URL needs an absolute path (three slashes)") }
            self = .file(path: path)
        } else if trimmed.hasPrefix("/") {
            self = .file(path: trimmed)
        } else if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            let rest = trimmed.drop(while: { $0 != ":" }).dropFirst(3)
            let host = rest.prefix(while: { $0 != "/" && $0 != "?" && $0 != "#" })
            guard !host.isEmpty else { throw bad("the URL has no host") }
            guard !trimmed.contains(" ") else { throw bad("spaces must be percent-encoded") }
            self = .http(url: trimmed)
        } else if lower.hasPrefix("s3://") {
            let rest = trimmed.dropFirst("s3://".count)
            let bucket = String(rest.prefix(while: { $0 != "/" }))
            let key = String(rest.dropFirst(bucket.count + 1))
            guard !bucket.isEmpty else { throw bad("the bucket is missing") }
            guard bucket.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") })
            else { throw bad("\"\(bucket)\" is not a bucket name") }
            guard !key.isEmpty else { throw bad("the key is missing (s3://bucket/key)") }
            self = .s3(bucket: bucket, key: key)
        } else {
            throw bad("unknown scheme")
        }
    }

    public var description: String {
        switch self {
        case .file(let path): "file://\(path)"
        case .http(let url): Self.redacted(url)
        case .s3(let bucket, let key): "s3://\(bucket)/\(key)"
        }
    }

    /// A URL fit for messages and identities: user info and the query (presigned signatures,
    /// tokens) are dropped.
    static func redacted(_ url: String) -> String {
        var text = Substring(url)
        if let query = text.firstIndex(where: { $0 == "?" || $0 == "#" }) { text = text[..<query] }
        if let scheme = text.range(of: "://") {
            let authorityEnd = text[scheme.upperBound...].firstIndex(of: "/") ?? text.endIndex
            if let at = text[scheme.upperBound..<authorityEnd].lastIndex(of: "@") {
                text = text[..<scheme.upperBound] + text[text.index(after: at)...]
            }
        }
        return String(text)
    }
}

extension String {
    var trimmingWhitespace: String {
        String(drop(while: { $0.isWhitespace }).reversed().drop(while: { $0.isWhitespace }).reversed())
    }
}
