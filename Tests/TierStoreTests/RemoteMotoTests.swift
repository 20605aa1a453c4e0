import Foundation
import Glibc
import Testing
@testable import TierStore

/// The remote tier's S3 half against a real moto S3 server (started per test on a free loopback
/// port). A missing moto fails these tests with the fix to apply; it does not skip them.
struct RemoteMotoTests {
    static let bucket = "strata-test"

    /// Credentials go through `RemoteSettings.s3` and the environment passed to the client is
    /// empty, so no AWS_* variable of the machine running the tests can change what is sent.
    /// Multipart at 6 MiB in 5 MiB parts (S3's smallest) keeps the multipart test small.
    static func client(_ server: MotoServer, accessKey: String = "testing", secret: String = "testing") -> RemoteClient {
        let s3 = S3Settings(region: "us-east-1", endpoint: server.endpoint, accessKeyID: accessKey, secretAccessKey: secret)
        let settings = RemoteSettings(parallelism: 4, chunkBytes: 1 << 20, retries: 2,
                                      backoffInitial: .milliseconds(10), backoffMax: .milliseconds(50),
                                      multipartThreshold: 6 << 20, partBytes: 5 << 20, s3: s3)
        return RemoteClient(settings: settings, environment: [:])
    }

    /// CreateBucket is a signed PUT of nothing on /bucket/: exactly what an empty upload to the
    /// key "" sends (the parser refuses such a location, the enum does not).
    static func createBucket(_ client: RemoteClient) async throws {
        try await client.upload(bytes: UnsafeRawBufferPointer(start: nil, count: 0), to: .s3(bucket: bucket, key: ""))
    }

    static func put(_ client: RemoteClient, _ data: [UInt8], key: String) async throws {
        let owned = OwnedBytes(data)
        try await client.upload(bytes: owned.buffer, to: .s3(bucket: bucket, key: key))
    }

    @Test func singlePutStatDownloadAndRangeRead() async throws {
        let server = try MotoServer()
        defer { server.stop() }
        let client = Self.client(server)
        try await Self.createBucket(client)
        // A space and a '+' must be percent-encoded the same way in the URL and the signature.
        let location = try RemoteLocation(parsing: "s3://\(Self.bucket)/dir/a b+c.bin")
        let data = randomBytes(3 << 20 + 77, seed: 11)
        let owned = OwnedBytes(data)
        try await client.upload(bytes: owned.buffer, to: location)

        let object = try await client.stat(location)
        #expect(object.size == UInt64(data.count))
        let etag = try #require(object.etag)
        #expect(etag.hasPrefix("\"") && etag.hasSuffix("\"") && !etag.contains("-"), "single PUT ETag: \(etag)")

        // 1 MiB chunks: four ranged GETs in parallel, reassembled in order.
        let target = tempPath("moto.bin")
        defer { unlink(target) }
        let downloaded = try await client.download(location, to: target, sha256: SHA256Digest.hex(of: data))
        #expect(downloaded.etag == etag)
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(data))

        let range: Range<UInt64> = 1_000_000..<1_500_123
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: range.count, alignment: 16)
        defer { buffer.deallocate() }
        try await client.read(object, range: range, into: buffer)
        #expect(Array(buffer) == Array(data[Int(range.lowerBound)..<Int(range.upperBound)]))
    }

    @Test func multipartUploadIsByteIdentical() async throws {
        let server = try MotoServer()
        defer { server.stop() }
        let client = Self.client(server)
        try await Self.createBucket(client)
        // Above the 6 MiB threshold: parts of 5, 5 and 2 MiB + 123 bytes.
        let data = randomBytes(12 << 20 + 123, seed: 12)
        let source = tempPath("multipart.bin")
        defer { unlink(source) }
        try Data(data).write(to: URL(fileURLWithPath: source))
        let location = RemoteLocation.s3(bucket: Self.bucket, key: "models/multi part.gguf")
        try await client.upload(file: source, to: location)

        let object = try await client.stat(location)
        #expect(object.size == UInt64(data.count))
        // S3 marks a multipart object's ETag with its part count; a single PUT has none.
        #expect(object.etag?.hasSuffix("-3\"") == true, "ETag \(object.etag ?? "nil") is not of a 3-part upload")

        let target = tempPath("multipart-copy.bin")
        defer { unlink(target) }
        _ = try await client.download(location, to: target, sha256: SHA256Digest.hex(of: data))
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(data))
    }

    @Test func missingAndDeletedObjectsAreNotFound() async throws {
        let server = try MotoServer()
        defer { server.stop() }
        let client = Self.client(server)
        try await Self.createBucket(client)
        let missing = RemoteLocation.s3(bucket: Self.bucket, key: "no/such-key.bin")
        await expectError(.notFound, naming: "no/such-key.bin") { _ = try await client.stat(missing) }
        // named as configured (s3://bucket/key), and a bucket that is not there is not ruled out
        await expectError(.notFound, naming: "HEAD s3://\(Self.bucket)/no/such-key.bin (http://") { _ = try await client.stat(missing) }
        await expectError(.notFound, naming: "the bucket or the object does not exist") {
            _ = try await client.stat(.s3(bucket: "no-such-bucket", key: "k.bin"))
        }

        let location = RemoteLocation.s3(bucket: Self.bucket, key: "gone.bin")
        try await Self.put(client, randomBytes(4096, seed: 13), key: "gone.bin")
        #expect(try await client.stat(location).size == 4096)
        try await client.delete(location)
        await expectError(.notFound, naming: "gone.bin") { _ = try await client.stat(location) }
        try await client.delete(location)  // already gone: still fine
    }

    @Test func changedObjectIsDetectedNotMixed() async throws {
        let server = try MotoServer()
        defer { server.stop() }
        let client = Self.client(server)
        try await Self.createBucket(client)
        let location = RemoteLocation.s3(bucket: Self.bucket, key: "c.bin")
        try await Self.put(client, randomBytes(64 << 10, seed: 14), key: "c.bin")
        let object = try await client.stat(location)
        // Same size, other bytes: only the ETag (sent as If-Match) can tell the versions apart.
        try await Self.put(client, randomBytes(64 << 10, seed: 15), key: "c.bin")
        #expect(try await client.stat(location).etag != object.etag)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 16)
        defer { buffer.deallocate() }
        await expectError(.changed, naming: "412") { try await client.read(object, range: 0..<1024, into: buffer) }
    }

    /// moto checks signatures only after its first INITIAL_NO_AUTH_ACTION_COUNT actions, and only
    /// for the keys of IAM users it knows; so the three unchecked actions create a user, its key
    /// and an allow-all S3 policy, and every request after them is verified.
    @Test func wrongSecretIsForbidden() async throws {
        let server = try MotoServer(environment: ["INITIAL_NO_AUTH_ACTION_COUNT": "3"])
        defer { server.stop() }
        let setup = Self.client(server)
        _ = try await server.iam(setup, "CreateUser", [("UserName", "strata")])
        let created = try await server.iam(setup, "CreateAccessKey", [("UserName", "strata")])
        let policy = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#
        _ = try await server.iam(setup, "PutUserPolicy",
                                 [("UserName", "strata"), ("PolicyName", "s3"), ("PolicyDocument", policy)])
        let accessKey = try #require(S3XML.value(of: "AccessKeyId", in: created))
        let secret = try #require(S3XML.value(of: "SecretAccessKey", in: created))

        // The right secret passes moto's check of our signature (an odd key included)...
        let client = Self.client(server, accessKey: accessKey, secret: secret)
        try await Self.createBucket(client)
        try await Self.put(client, randomBytes(1000, seed: 16), key: "signed a+b.bin")
        let location = RemoteLocation.s3(bucket: Self.bucket, key: "signed a+b.bin")
        #expect(try await client.stat(location).size == 1000)

        // ...and a wrong one is refused (HEAD answers have no body, so only the PUT says why).
        let wrong = Self.client(server, accessKey: accessKey, secret: secret + "x")
        await expectError(.forbidden, naming: "signed a+b.bin") { _ = try await wrong.stat(location) }
        await expectError(.forbidden, naming: "SignatureDoesNotMatch") {
            try await Self.put(wrong, randomBytes(10, seed: 17), key: "signed a+b.bin")
        }
    }
}

/// Runs `body`, which must throw a RemoteError with `code` whose message contains `text`.
func expectError(_ code: RemoteError.Code, naming text: String, sourceLocation: SourceLocation = #_sourceLocation,
                 _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code), but it succeeded", sourceLocation: sourceLocation)
    } catch {
        guard let error = remoteError(error) else {
            Issue.record("expected a RemoteError \(code), got \(error)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        #expect(error.message.contains(text), "\"\(error.message)\" does not name \(text)", sourceLocation: sourceLocation)
    }
}

/// moto's S3 server from the venv scripts/setup.sh builds, on a free loopback port.
final class MotoServer {
    let port: Int
    private let process: Process
    private let log: String

    var endpoint: String { "http://127.0.0.1:\(port)" }

    static var binary: String {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["STRATA_CACHE"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory() + "/.cache/strata"
        return cache + "/venv/bin/moto_server"
    }

    init(environment: [String: String] = [:]) throws {
        let binary = Self.binary
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw SetupError("moto is not installed at \(binary): run scripts/setup.sh")
        }
        port = try NginxServer.freePort()
        log = tempPath("moto.log")
        guard FileManager.default.createFile(atPath: log, contents: nil),
              let output = FileHandle(forWritingAtPath: log) else { throw SetupError("cannot create \(log)") }
        defer { try? output.close() }
        process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-H", "127.0.0.1", "-p", "\(port)"]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // Ready when it accepts connections. Importing moto takes seconds on a busy machine:
        // bounded at 60 s.
        for _ in 0..<6000 {
            if NginxServer.canConnect(port: port) { return }
            if !process.isRunning { break }
            usleep(10_000)
        }
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        stop()
        throw SetupError("moto_server did not start on port \(port): \(text)")
    }

    /// SIGKILL (a test server has nothing to flush), then reaped.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        unlink(log)
    }

    deinit { stop() }

    /// One IAM Query API call (form POST, signed for service "iam" so moto routes it to IAM),
    /// sent through `client`'s transfer threads; returns the XML answer.
    func iam(_ client: RemoteClient, _ action: String, _ parameters: [(String, String)]) async throws -> [UInt8] {
        let form = ([("Action", action), ("Version", "2010-05-08")] + parameters)
            .map { "\($0.0)=\(SigV4Signer.uriEncode($0.1, keepSlash: false))" }.joined(separator: "&")
        let body = Array(form.utf8)
        var headers = [("Host", "127.0.0.1:\(port)"), ("Content-Type", "application/x-www-form-urlencoded")]
        headers += SigV4Signer(accessKeyID: "testing", secretAccessKey: "testing", region: "us-east-1", service: "iam")
            .sign(method: "POST", path: "/", query: [], headers: headers, payloadHash: SHA256Digest.hex(of: body), date: Date())
            .headers
        let request = HTTPRequest(method: "POST", url: endpoint + "/", headers: headers.map { "\($0.0): \($0.1)" },
                                  displayURL: endpoint + "/")
        let response = await client.transfer(request, sink: { ResponseSink(collectLimit: 1 << 16) },
                                             upload: UploadBody.owned(body).slice(offset: 0, length: UInt64(body.count)))
        guard response.transport == .done, response.status == 200 else {
            let answer = String(decoding: response.body, as: UTF8.self)
            throw SetupError("IAM \(action): \(response.transport) HTTP \(response.status): \(answer)")
        }
        return response.body
    }
}
