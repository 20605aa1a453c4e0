/// S3 access. Every field left nil is taken from the standard AWS environment variables when the
/// client is built (`resolved(environment:)`), so a config file may name only what differs.
public struct S3Settings: Sendable, Equatable {
    /// nil → AWS_REGION, AWS_DEFAULT_REGION, else "us-east-1".
    public var region: String?
    /// e.g. "http://127.0.0.1:9000"; nil → AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else
    /// https://s3.<region>.amazonaws.com.
    public var endpoint: String?
    /// nil → AWS_ACCESS_KEY_ID; no key at all → unsigned (anonymous) requests.
    public var accessKeyID: String?
    /// nil → AWS_SECRET_ACCESS_KEY.
    public var secretAccessKey: String?
    /// nil → AWS_SESSION_TOKEN.
    public var sessionToken: String?
    /// Forces path-style URLs (endpoint/bucket/key). Without it, path style is still used for any
    /// endpoint other than AWS's own (S3-compatible servers, moto, MinIO rarely resolve
    /// bucket.host names) and for bucket names with dots (they break TLS wildcard certificates);
    /// virtual-hosted style (bucket.s3.<region>.amazonaws.com/key) is used only for AWS itself.
    public var pathStyle: Bool

    public init(region: String? = nil, endpoint: String? = nil, accessKeyID: String? = nil,
                secretAccessKey: String? = nil, sessionToken: String? = nil, pathStyle: Bool = false) {
        self.region = region
        self.endpoint = endpoint
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.pathStyle = pathStyle
    }

    /// Every field decided; what the client actually uses.
    struct Resolved: Sendable, Equatable {
        var region: String
        /// scheme://host[:port] with no trailing slash.
        var endpoint: String
        var isAWSEndpoint: Bool
        var credentials: Credentials?
        var pathStyle: Bool
    }

    struct Credentials: Sendable, Equatable {
        var accessKeyID: String
        var secretAccessKey: String
        var sessionToken: String?
    }

    func resolved(environment: [String: String]) -> Resolved {
        func env(_ names: String...) -> String? {
            names.lazy.compactMap { environment[$0] }.first { !$0.isEmpty }
        }
        let region = self.region ?? env("AWS_REGION", "AWS_DEFAULT_REGION") ?? "us-east-1"
        let custom = self.endpoint ?? env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        var endpoint = custom ?? "https://s3.\(region).amazonaws.com"
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        var credentials: Credentials?
        if let key = accessKeyID ?? env("AWS_ACCESS_KEY_ID") {
            credentials = Credentials(accessKeyID: key,
                                      secretAccessKey: secretAccessKey ?? env("AWS_SECRET_ACCESS_KEY") ?? "",
                                      sessionToken: sessionToken ?? env("AWS_SESSION_TOKEN"))
        }
        return Resolved(region: region, endpoint: endpoint, isAWSEndpoint: custom == nil, credentials: credentials,
                        pathStyle: pathStyle || custom != nil)
    }
}

/// How the remote tier moves bytes. Built once from configuration and passed down.
public struct RemoteSettings: Sendable, Equatable {
    /// Concurrent range GETs / part uploads, and the number of transfer threads.
    public var parallelism: Int = 8
    /// Range size for whole-object downloads.
    public var chunkBytes: Int = 8 << 20
    /// Further attempts per range after the first. An attempt that moved bytes starts the count
    /// again: it proved the path works, and the resumed attempt asks only for what is missing.
    public var retries: Int = 5
    public var backoffInitial: Duration = .milliseconds(100)
    public var backoffMax: Duration = .seconds(5)
    public var connectTimeout: Duration = .seconds(10)
    /// An attempt moving less than 1 byte/s for this long is abandoned (and retried).
    public var stallTimeout: Duration = .seconds(30)
    /// Uploads this large or larger use S3 multipart; http always uses one streamed PUT.
    public var multipartThreshold: Int = 64 << 20
    public var partBytes: Int = 16 << 20
    public var s3 = S3Settings()
    /// PEM file of the certificate authorities https origins are checked against (a private CA);
    /// nil: the system's bundle. Certificates are always verified.
    public var caFile: String?

    public init(parallelism: Int = 8, chunkBytes: Int = 8 << 20, retries: Int = 5,
                backoffInitial: Duration = .milliseconds(100), backoffMax: Duration = .seconds(5),
                connectTimeout: Duration = .seconds(10), stallTimeout: Duration = .seconds(30),
                multipartThreshold: Int = 64 << 20, partBytes: Int = 16 << 20, s3: S3Settings = S3Settings()) {
        self.parallelism = parallelism
        self.chunkBytes = chunkBytes
        self.retries = retries
        self.backoffInitial = backoffInitial
        self.backoffMax = backoffMax
        self.connectTimeout = connectTimeout
        self.stallTimeout = stallTimeout
        self.multipartThreshold = multipartThreshold
        self.partBytes = partBytes
        self.s3 = s3
    }

    /// Checks the numbers; the message names the field, the value and what was expected.
    public func validate() throws(RemoteError) {
        func bad(_ field: String, _ value: Any, _ expected: String) -> RemoteError {
            RemoteError(.unsupported, url: "", "remote settings: \(field) = \(value): expected \(expected)")
        }
        guard (1...256).contains(parallelism) else { throw bad("parallelism", parallelism, "1...256") }
        guard chunkBytes >= 4096 else { throw bad("chunkBytes", chunkBytes, "at least 4096") }
        guard (0...100).contains(retries) else { throw bad("retries", retries, "0...100") }
        // S3's own limits: parts of 5 MiB..5 GiB (the last may be smaller), at most 10,000 parts.
        guard partBytes >= 5 << 20 && partBytes <= 5 << 30 else { throw bad("partBytes", partBytes, "5 MiB...5 GiB") }
        guard multipartThreshold >= 1 else { throw bad("multipartThreshold", multipartThreshold, "at least 1") }
        guard connectTimeout > .zero, stallTimeout >= .seconds(1) else {
            throw bad("connectTimeout/stallTimeout", "\(connectTimeout)/\(stallTimeout)", "> 0 and >= 1 s")
        }
    }
}
