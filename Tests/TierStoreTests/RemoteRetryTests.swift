import Testing
@testable import TierStore

/// The retry/resume decisions as tables: synthetic answers in, verdicts out. No network.
struct RemoteRetryTests {
    static let object = RemoteObject(location: .http(url: "http://h/m"), size: 1000, etag: "\"abc\"", lastModified: nil)
    static let asked: Range<UInt64> = 100..<300

    func judge(_ response: HTTPResponse) -> AttemptVerdict {
        RetryPlan.judgeRangeAttempt(response, asked: Self.asked, object: Self.object, url: "http://h/m")
    }

    @Test func resumesFromTheLastByteReceived() {
        #expect(RetryPlan.remaining(of: 100..<300, received: 0) == 100..<300)
        #expect(RetryPlan.remaining(of: 100..<300, received: 150) == 250..<300)
        #expect(RetryPlan.remaining(of: 100..<300, received: 200).isEmpty)
    }

    @Test func completeAnswersFinish() {
        #expect(judge(HTTPResponse(transport: .done, status: 206, etag: "\"abc\"", contentRange: "bytes 100-299/1000",
                                   written: 200)) == .complete)
        // A server that ignored Range: whole object (right size), offset skipped by the sink.
        #expect(judge(HTTPResponse(transport: .sinkRefused, status: 200, contentLength: 1000, written: 200)) == .complete)
    }

    @Test func transientFailuresAreRetried() {
        let reset = judge(HTTPResponse(transport: .failed, status: 206, errorText: "Recv failure: Connection reset by peer",
                                       written: 37))
        guard case .retry(_, nil, false) = reset else { Issue.record("\(reset)"); return }
        guard case .retry(_, _, true) = judge(HTTPResponse(transport: .timedOut, errorText: "stalled")) else {
            Issue.record("a stall is retried as a timeout"); return
        }
        for status in [408, 429, 500, 502, 503, 504] {
            guard case .retry = judge(HTTPResponse(transport: .done, status: status)) else {
                Issue.record("\(status) is retried"); continue
            }
        }
        guard case .retry(_, .some(.seconds(7)), _) = judge(HTTPResponse(transport: .done, status: 503, retryAfter: "7"))
        else { Issue.record("Retry-After honoured"); return }
        // Short but clean: resume for the rest.
        guard case .retry(let reason, _, _) = judge(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 100-299/1000", written: 50))
        else { Issue.record("short answer resumes"); return }
        #expect(reason == "the answer ended after 50 of the 200 bytes asked for", "\(reason)")
    }

    @Test func finalAnswersFailAtOnce() {
        func code(_ response: HTTPResponse) -> RemoteError.Code? {
            if case .fail(let error) = judge(response) { return error.code }
            return nil
        }
        #expect(code(HTTPResponse(transport: .done, status: 404)) == .notFound)
        #expect(code(HTTPResponse(transport: .done, status: 403)) == .forbidden)
        #expect(code(HTTPResponse(transport: .done, status: 412)) == .changed)
        #expect(code(HTTPResponse(transport: .done, status: 416)) == .changed)
        #expect(code(HTTPResponse(transport: .done, status: 400)) == .httpStatus(400))
        #expect(code(HTTPResponse(transport: .aborted)) == .cancelled)
        #expect(code(HTTPResponse(transport: .done, status: 206, etag: "\"other\"", written: 200)) == .changed)
        #expect(code(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 100-299/999", written: 200)) == .changed)
        #expect(code(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 0-199/1000", written: 200)) == .lengthMismatch)
        #expect(code(HTTPResponse(transport: .sinkRefused, status: 206, written: 200, overflowed: true)) == .lengthMismatch)
        #expect(code(HTTPResponse(transport: .done, status: 200, contentLength: 5000, written: 200)) == .changed)
    }

    @Test func withoutAnETagTheModificationTimeNamesTheVersion() {
        let dated = RemoteObject(location: .http(url: "http://h/m"), size: 1000, etag: nil, lastModified: "Sat, 05 Dec 2026 17:00:00 GMT")
        func judge(_ response: HTTPResponse) -> AttemptVerdict {
            RetryPlan.judgeRangeAttempt(response, asked: Self.asked, object: dated, url: "http://h/m")
        }
        #expect(judge(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 100-299/1000",
                                   lastModified: "Sat, 05 Dec 2026 17:00:00 GMT", written: 200)) == .complete)
        // the same size, replaced in between: not mixed in
        guard case .fail(let error) = judge(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 100-299/1000",
                                                        lastModified: "Sat, 05 Dec 2026 17:00:07 GMT", written: 200))
        else { Issue.record("a new Last-Modified is a changed object"); return }
        #expect(error.code == .changed)
        #expect(error.message.contains("Last-Modified Sat, 05 Dec 2026 17:00:07 GMT, expected Sat, 05 Dec 2026 17:00:00 GMT"))
        // an answer that names no version is judged by its size, as before
        #expect(judge(HTTPResponse(transport: .done, status: 206, contentRange: "bytes 100-299/1000", written: 200)) == .complete)
    }

    @Test func s3ErrorDocumentsNameTheirCode() {
        let body = Array("<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>".utf8)
        guard case .fail(let error) = judge(HTTPResponse(transport: .done, status: 404, body: body)) else {
            Issue.record("404 fails"); return
        }
        #expect(error.message == "GET http://h/m: 404 Not Found: the object does not exist "
            + "(NoSuchKey: The specified key does not exist.)")
    }

    @Test func backoffGrowsIsCappedAndHonoursRetryAfter() {
        let initial = Duration.milliseconds(100), maximum = Duration.seconds(5)
        func delay(_ failures: Int, _ unit: Double, _ retryAfter: Duration? = nil) -> Duration {
            RetryPlan.delay(failures: failures, initial: initial, maximum: maximum, unit: unit, retryAfter: retryAfter)
        }
        #expect(delay(1, 1) == .milliseconds(100))
        #expect(delay(1, 0) == .milliseconds(50))
        #expect(delay(3, 1) == .milliseconds(400))
        #expect(delay(30, 1) == .seconds(5))
        #expect(delay(1, 1, .seconds(3)) == .seconds(3))
        #expect(delay(1, 1, .seconds(3600)) == .seconds(60), "a hostile Retry-After is bounded")
        #expect(RetryPlan.parseRetryAfter(" 12 ") == .seconds(12))
        #expect(RetryPlan.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT") == nil)
    }

    @Test func sinkSkipsToTheOffsetWhenRangeIsIgnored() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 1)
        defer { buffer.deallocate() }
        let sink = ResponseSink(destination: buffer, rangeStart: 3)
        let whole: [UInt8] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        let taken = whole.withUnsafeBytes { sink.accept(status: 200, UnsafeRawBufferPointer(rebasing: $0[0..<5])) }
        #expect(taken == 5)
        let stopped = whole.withUnsafeBytes { sink.accept(status: 200, UnsafeRawBufferPointer(rebasing: $0[5...])) }
        #expect(stopped == 0 && sink.completedEarly && !sink.overflowed)
        #expect(Array(buffer) == [3, 4, 5, 6])

        // A 206 with more than asked is a protocol error, not "done".
        let strict = ResponseSink(destination: buffer, rangeStart: 3)
        _ = whole.withUnsafeBytes { strict.accept(status: 206, $0) }
        #expect(strict.overflowed)
        // Error bodies never reach the destination.
        let errors = ResponseSink(destination: buffer, rangeStart: 0)
        _ = whole.withUnsafeBytes { errors.accept(status: 503, $0) }
        #expect(errors.written == 0 && errors.body == whole)
    }

    /// Giving up says how many attempts failed in a row and, for a ranged read whose run starts
    /// again after progress, how many requests it made in all (an origin that kept sending part
    /// of the rest was reported as 3 failed attempts after some twenty requests).
    @Test func givingUpSaysTheFailuresInARowAndTheRequestsInAll() async {
        let client = RemoteClient(settings: RemoteSettings(retries: 2), environment: [:])
        do {
            try await client.backoff(failures: 3, requests: 23, retryAfter: nil, reason: "the answer ended", code: .transport, what: "GET u")
            Issue.record("gave up")
        } catch {
            #expect("\(error)".contains("GET u: gave up after 3 failed attempts in a row that brought no bytes (23 requests in all); last: the answer ended"),
                    "\(error)")
        }
        do {
            try await client.backoff(failures: 3, retryAfter: nil, reason: "HTTP 503", code: .httpStatus(503), what: "HEAD u")
            Issue.record("gave up")
        } catch {
            #expect("\(error)".contains("HEAD u: gave up after 3 failed attempts; last: HTTP 503"), "\(error)")
        }
    }
}
