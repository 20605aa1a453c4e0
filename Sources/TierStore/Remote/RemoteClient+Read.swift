import Glibc

/// A caller's buffer handed to a transfer thread; the caller waits until the thread is done with it.
struct BorrowedBuffer: @unchecked Sendable {
    var bytes: UnsafeMutableRawBufferPointer
}

extension RemoteClient {
    /// Reads `range` of `object` into `destination` (count == range.count), exactly, with retries.
    ///
    /// Connection resets, stalls, timeouts, 408, 429 and 5xx are retried with exponential backoff
    /// and jitter (Retry-After honoured), each new attempt asking only for the bytes still missing.
    /// 401/403/404 fail at once. Every attempt carries If-Match with the object's ETag (without
    /// one, If-Unmodified-Since with its Last-Modified), so a changed object gives `.changed` (412,
    /// or a version in the answer other than the one looked up) and never a mix of versions; with
    /// neither, a changed size (Content-Range total) is caught. A server that ignores Range and answers 200 with the whole
    /// object is tolerated: the bytes before the offset are skipped and the transfer is stopped
    /// once the range is filled (wasteful for late ranges, but correct). Task cancellation aborts
    /// the transfer within curl's progress-callback period and throws `.cancelled`.
    ///
    /// `tee`, when given, also receives every byte as it lands (absolute offset, bytes; each byte
    /// once, in order within the range), on the transfer thread: a second destination filled
    /// while the bytes are still in cache. If it throws, the read stops with that error.
    public func read(
        _ object: RemoteObject, range: Range<UInt64>, into destination: UnsafeMutableRawBufferPointer,
        tee: (@Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void)? = nil
    ) async throws {
        precondition(destination.count == range.count, "destination holds \(destination.count) bytes for a range of \(range.count)")
        guard range.upperBound <= object.size else {
            throw RemoteError(.lengthMismatch, url: object.location.description,
                              "read \(object.location) bytes \(range.lowerBound)..<\(range.upperBound): "
                                  + "beyond the end of the object (\(object.size) bytes)")
        }
        guard !range.isEmpty else { return }
        let buffer = BorrowedBuffer(bytes: destination)
        let teeing = tee.map { Tee(start: range.lowerBound, $0) }
        if case .file(let path) = object.location {
            try await readFile(path, object: object, range: range, into: buffer, tee: teeing)
        } else {
            try await readHTTP(object, range: range, into: buffer, tee: teeing)
        }
        if let error = teeing?.failure { throw error }
    }

    /// A second destination for a read, and the first error it threw.
    final class Tee: @unchecked Sendable {
        private let body: @Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void
        private(set) var failure: (any Error)?
        /// The absolute offset up to which bytes were handed over.
        private(set) var handed: UInt64

        init(start: UInt64, _ body: @escaping @Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void) {
            self.body = body
            handed = start
        }

        /// False once the tee failed; the read then stops. Called from one transfer at a time.
        func take(at offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
            guard failure == nil else { return false }
            precondition(offset == handed, "tee spans must follow each other")
            do {
                try body(offset, bytes)
                handed = offset + UInt64(bytes.count)
                return true
            } catch {
                failure = error
                return false
            }
        }
    }

    private func readHTTP(_ object: RemoteObject, range: Range<UInt64>, into buffer: BorrowedBuffer, tee: Tee?) async throws {
        var received: UInt64 = 0
        var failures = 0, requests = 0
        var headers: [(String, String)] = []
        if let etag = object.etag {
            headers.append(("If-Match", etag))
        } else if let lastModified = object.lastModified {
            headers.append(("If-Unmodified-Since", lastModified))
        }
        while true {
            let asked = RetryPlan.remaining(of: range, received: received)
            let request = try makeRequest(object.location, method: "GET",
                                          headers: headers + [("Range", "bytes=\(asked.lowerBound)-\(asked.upperBound - 1)")])
            let rest = BorrowedBuffer(bytes: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[Int(received)...]))
            let response = await transfer(request, sink: { ResponseSink(destination: rest.bytes, rangeStart: asked.lowerBound, tee: tee) })
            requests += 1
            let verdict = RetryPlan.judgeRangeAttempt(response, asked: asked, object: object, url: request.displayURL)
            received += UInt64(response.written)
            // The tee has every byte up to the last whole span; give it the rest of this attempt.
            if let tee {
                let unteed = Int(received) - Int(tee.handed - range.lowerBound)
                if unteed > 0, tee.failure == nil {
                    let start = Int(tee.handed - range.lowerBound)
                    _ = tee.take(at: tee.handed, UnsafeRawBufferPointer(rebasing: buffer.bytes[start..<Int(received)]))
                }
                if let failure = tee.failure { throw failure }
            }
            switch verdict {
            case .complete:
                assert(received == UInt64(range.count))
                return
            case .fail(let error):
                throw error
            case .retry(let reason, let retryAfter, let timedOut):
                // Progress proves the path works: the count of failures in a row starts again.
                failures = response.written > 0 ? 1 : failures + 1
                if Task.isCancelled {
                    throw RemoteError(.cancelled, url: request.displayURL, "GET \(request.displayURL): cancelled")
                }
                try await backoff(failures: failures, requests: requests, retryAfter: retryAfter, reason: reason,
                                  code: Self.finalCode(response, timedOut: timedOut),
                                  what: "GET \(request.displayURL) bytes \(range.lowerBound)-\(range.upperBound - 1)")
            }
        }
    }

    /// file: locations are read with pread on a transfer thread (a slow or network file system
    /// must not block the cooperative pool either). A file whose size or mtime moved is `.changed`.
    private func readFile(_ path: String, object: RemoteObject, range: Range<UInt64>, into buffer: BorrowedBuffer, tee: Tee?)
        async throws
    {
        let url = object.location.description
        let result: Result<Void, RemoteError> = await pool.run { _ in
            let fd: Int32
            switch FileIO.open(path, flags: O_RDONLY) {
            case .success(let opened): fd = opened
            case .failure(let error):
                let code = error.code
                return .failure(RemoteError(code == ENOENT ? .notFound : code == EACCES ? .forbidden : .transport,
                                            url: url, "open \(path): \(FileIO.describe(code))"))
            }
            defer { FileIO.close(fd) }
            if case .success(let now) = FileIO.status(path), now.size != object.size || now.modified != object.lastModified {
                return .failure(RemoteError(.changed, url: url,
                                            "read \(path): the file changed since it was looked up (size \(now.size), was \(object.size))"))
            }
            switch FileIO.preadFully(fd, into: buffer.bytes, at: range.lowerBound) {
            case .success:
                _ = tee?.take(at: range.lowerBound, UnsafeRawBufferPointer(buffer.bytes))
                return .success(())
            case .failure(let why): return .failure(RemoteError(.lengthMismatch, url: url, "read \(path): \(why.message)"))
            }
        }
        try result.get()
        if Task.isCancelled { throw RemoteError(.cancelled, url: url, "read \(path): cancelled") }
    }
}
