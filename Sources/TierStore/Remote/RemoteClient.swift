import Foundation

/// Reads (and writes) objects in the remote tier: local files, plain HTTP(S) servers and S3.
/// Blocking transfers run on the client's own threads (`settings.parallelism` of them); the
/// async methods only wait for them.
public final class RemoteClient: Sendable {
    public let settings: RemoteSettings
    let s3: S3Settings.Resolved
    let pool: TransferPool

    public convenience init(settings: RemoteSettings) {
        self.init(settings: settings, environment: ProcessInfo.processInfo.environment)
    }

    /// `environment` supplies the AWS_* defaults; tests pass their own.
    init(settings: RemoteSettings, environment: [String: String]) {
        self.settings = settings
        s3 = settings.s3.resolved(environment: environment)
        pool = TransferPool(threads: max(1, settings.parallelism))
    }

    deinit { pool.stop() }

    // MARK: stat

    /// Size and version (HEAD; for s3 a signed HEAD; for file: stat). 404 → .notFound, 403 → .forbidden.
    public func stat(_ location: RemoteLocation) async throws -> RemoteObject {
        if case .file(let path) = location {
            switch FileIO.status(path) {
            case .success(let status):
                return RemoteObject(location: location, size: status.size, etag: nil, lastModified: status.modified)
            case .failure(let error):
                let code = error.code
                let kind: RemoteError.Code = code == ENOENT ? .notFound : code == EACCES ? .forbidden : .transport
                throw RemoteError(kind, url: location.description, "stat \(path): \(FileIO.describe(code))")
            }
        }
        let response: HTTPResponse
        do {
            response = try await exchange(location: location, method: "HEAD")
        } catch let error as RemoteError where Self.headRefused(error, location) {
            // Some origins answer GET only: a URL presigned for GET (S3's, behind a release
            // download's redirect) refuses HEAD with 403, others with 405. The first byte tells
            // the size (Content-Range) and version as well.
            guard let first = try? await exchange(location: location, method: "GET", headers: [("Range", "bytes=0-0")], collectLimit: 1),
                first.status == 206, let total = RetryPlan.parseContentRange(first.contentRange)?.total
            else { throw error }
            return RemoteObject(location: location, size: total, etag: first.etag, lastModified: first.lastModified)
        }
        guard let length = response.contentLength else {
            throw RemoteError(.unsupported, url: location.description,
                              "HEAD \(location): the server sent no Content-Length, so the size is unknown")
        }
        return RemoteObject(location: location, size: UInt64(length), etag: response.etag,
                            lastModified: response.lastModified)
    }

    /// Whether a HEAD's error may be an origin that serves GET only (http locations; S3 answers HEAD).
    static func headRefused(_ error: RemoteError, _ location: RemoteLocation) -> Bool {
        guard case .http = location else { return false }
        return error.code == .forbidden || error.code == .httpStatus(405) || error.code == .httpStatus(501)
    }

    // MARK: delete

    /// Deleting what is already gone succeeds: the outcome wanted is "not there".
    public func delete(_ location: RemoteLocation) async throws {
        if case .file(let path) = location {
            guard unlink(path) == 0 || errno == ENOENT else {
                throw RemoteError(.transport, url: location.description, "unlink \(path): \(FileIO.describe(errno))")
            }
            return
        }
        do {
            _ = try await exchange(location: location, method: "DELETE")
        } catch let error as RemoteError where error.code == .notFound {
            return
        }
    }

    // MARK: requests

    /// Builds the request for `location` (signed for s3 with credentials; signed anew on every
    /// attempt so a long backoff never sends a stale date).
    func makeRequest(_ location: RemoteLocation, method: String, query: [(String, String)] = [],
                     headers: [(String, String)] = [], payloadHash: String = SigV4Signer.emptyPayloadHash,
                     date: Date = Date()) throws -> HTTPRequest {
        switch location {
        case .file:
            throw RemoteError(.unsupported, url: location.description, "\(method) \(location): not an HTTP location")
        case .http(let url):
            return HTTPRequest(method: method, url: url, headers: headers.map { "\($0.0): \($0.1)" },
                               followRedirects: method == "GET" || method == "HEAD",
                               displayURL: RemoteLocation.redacted(url))
        case .s3(let bucket, let key):
            let endpoint = try S3Endpoint(s3.endpoint)
            let virtual = !s3.pathStyle && s3.isAWSEndpoint && !bucket.contains(".")
            let host = virtual ? "\(bucket).\(endpoint.authority)" : endpoint.authority
            let path = endpoint.basePath + (virtual ? "/\(key)" : "/\(bucket)/\(key)")
            let queryText = SigV4Signer.canonicalQuery(query)
            let url = "\(endpoint.scheme)://\(host)\(SigV4Signer.uriEncode(path, keepSlash: true))"
                + (queryText.isEmpty ? "" : "?\(queryText)")
            var all = headers
            all.append(("Host", host))
            if let credentials = s3.credentials {
                let signer = SigV4Signer(accessKeyID: credentials.accessKeyID,
                                         secretAccessKey: credentials.secretAccessKey,
                                         sessionToken: credentials.sessionToken, region: s3.region)
                all += signer.sign(method: method, path: path, query: query, headers: all,
                                   payloadHash: payloadHash, date: date).headers
            }
            return HTTPRequest(method: method, url: url, headers: all.map { "\($0.0): \($0.1)" },
                               displayURL: "s3://\(bucket)/\(key) (\(endpoint.scheme)://\(host)\(path))")
        }
    }

    /// One exchange on a transfer thread; task cancellation raises the abort flag.
    func transfer(_ request: HTTPRequest, sink: @escaping @Sendable () -> ResponseSink,
                  upload: UploadBody.Slice? = nil) async -> HTTPResponse {
        let flag = AbortFlag()
        let connect = settings.connectTimeout, stall = settings.stallTimeout, caFile = settings.caFile
        return await withTaskCancellationHandler {
            await pool.run { easy in
                let source = upload.map { UploadSource($0.origin, length: Int64($0.length)) }
                return easy.perform(request, sink: sink(), source: source, abort: flag,
                                    connectTimeout: connect, stallTimeout: stall, caFile: caFile)
            }
        } onCancel: {
            flag.raise()
        }
    }

    /// A whole (non-ranged) exchange with retries on transport errors, 408, 429 and 5xx. Returns
    /// the 2xx answer; throws the final error otherwise.
    func exchange(location: RemoteLocation, method: String, query: [(String, String)] = [],
                  headers: [(String, String)] = [], payloadHash: String = SigV4Signer.emptyPayloadHash,
                  upload: UploadBody.Slice? = nil, collectLimit: Int = 1 << 20) async throws -> HTTPResponse {
        var failures = 0
        while true {
            let request = try makeRequest(location, method: method, query: query, headers: headers,
                                          payloadHash: payloadHash)
            let response = await transfer(request, sink: { ResponseSink(collectLimit: collectLimit) }, upload: upload)
            switch RetryPlan.judgeExchange(response, method: method, url: request.displayURL) {
            case .complete:
                return response
            case .fail(let error):
                throw error
            case .retry(let reason, let retryAfter, let timedOut):
                failures += 1
                try await backoff(failures: failures, retryAfter: retryAfter, reason: reason,
                                  code: Self.finalCode(response, timedOut: timedOut),
                                  what: "\(method) \(request.displayURL)")
            }
        }
    }

    /// The error code when retries run out after this answer.
    static func finalCode(_ response: HTTPResponse, timedOut: Bool) -> RemoteError.Code {
        if timedOut { return .timeout }
        if response.transport == .done, response.status >= 300 { return .httpStatus(response.status) }
        return .transport
    }

    /// Sleeps before the next attempt, or throws when the retries are used up.
    /// `requests`: of a ranged read whose failures in a row start again after progress, all the
    /// requests it made (said when more than the failures in a row).
    func backoff(failures: Int, requests: Int? = nil, retryAfter: Duration?, reason: String, code: RemoteError.Code,
                 what: String) async throws {
        guard failures <= settings.retries else {
            let detail = requests.map { $0 > failures ? " in a row that brought no bytes (\($0) requests in all)" : "" } ?? ""
            throw RemoteError(code, url: what, "\(what): gave up after \(failures) failed attempts\(detail); last: \(reason)")
        }
        let pause = RetryPlan.delay(failures: failures, initial: settings.backoffInitial, maximum: settings.backoffMax,
                                    unit: Double.random(in: 0..<1), retryAfter: retryAfter)
        do {
            try await Task.sleep(for: pause)
        } catch {
            throw RemoteError(.cancelled, url: what, "\(what): cancelled while waiting to retry")
        }
    }
}

/// An S3 endpoint split into the parts a request needs.
struct S3Endpoint {
    var scheme: String
    var authority: String
    var basePath: String

    init(_ text: String) throws(RemoteError) {
        guard let separator = text.range(of: "://") else {
            throw RemoteError(.badLocation, url: text,
                              "bad S3 endpoint \"\(text)\": expected http(s)://host[:port], e.g. http://127.0.0.1:9000")
        }
        scheme = text[..<separator.lowerBound].lowercased()
        let rest = text[separator.upperBound...]
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        authority = String(rest[..<slash])
        basePath = String(rest[slash...])
        while basePath.hasSuffix("/") { basePath.removeLast() }
        guard scheme == "http" || scheme == "https", !authority.isEmpty else {
            throw RemoteError(.badLocation, url: text,
                              "bad S3 endpoint \"\(text)\": expected http(s)://host[:port], e.g. http://127.0.0.1:9000")
        }
    }
}
