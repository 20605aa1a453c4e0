import Foundation
import Glibc
import Testing
@testable import TierStore

/// The remote tier against a real nginx (started per test on a free loopback port). A missing
/// nginx fails these tests with the fix to apply; it does not skip them.
struct RemoteNginxTests {
    static let settings = RemoteSettings(parallelism: 4, chunkBytes: 4 << 20, retries: 2,
                                         backoffInitial: .milliseconds(10), backoffMax: .milliseconds(50))

    @Test func statAndRangeRead() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        let data = randomBytes(1 << 20, seed: 1)
        try server.write(data, to: "m.bin")
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let location = try RemoteLocation(parsing: server.url("m.bin"))
        let object = try await client.stat(location)
        #expect(object.size == UInt64(data.count))
        #expect(object.etag?.hasPrefix("\"") == true)
        #expect(object.identity.contains(server.url("m.bin")) && object.identity.contains("size=1048576"))

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4000, alignment: 16)
        defer { buffer.deallocate() }
        try await client.read(object, range: 1000..<5000, into: buffer)
        #expect(Array(buffer) == Array(data[1000..<5000]))
    }

    @Test func wholeParallelDownloadIsByteIdentical() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        let data = randomBytes(40 << 20, seed: 2)
        try server.write(data, to: "big.bin")
        let expected = SHA256Digest.hex(of: data)
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let target = tempPath("big.bin")
        defer { unlink(target) }
        let seen = ProgressLog()
        let object = try await client.download(.http(url: server.url("big.bin")), to: target, sha256: expected,
                                               progress: { seen.record($0) })
        #expect(object.size == UInt64(data.count))
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(data))
        #expect(seen.last == UInt64(data.count) && seen.count == 10)
        #expect(!FileManager.default.fileExists(atPath: target + ".part"))

        // A wrong digest names both and leaves nothing behind.
        let other = tempPath("other.bin")
        do {
            _ = try await client.download(.http(url: server.url("big.bin")), to: other, sha256: String(repeating: "0", count: 64))
            Issue.record("a wrong checksum was accepted")
        } catch {
            let error = try #require(remoteError(error))
            #expect(error.code == .checksumMismatch)
            #expect(error.message.contains(expected) && error.message.contains(String(repeating: "0", count: 64)))
        }
        #expect(!FileManager.default.fileExists(atPath: other) && !FileManager.default.fileExists(atPath: other + ".part"))
    }

    @Test func missingObjectIsNotFoundWithAClearMessage() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        let client = RemoteClient(settings: Self.settings, environment: [:])
        do {
            _ = try await client.stat(.http(url: server.url("nope.gguf")))
            Issue.record("stat of a missing object succeeded")
        } catch {
            let error = try #require(remoteError(error))
            #expect(error.code == .notFound)
            #expect(error.message == "HEAD \(server.url("nope.gguf")): 404 Not Found: the object does not exist")
        }
    }

    @Test func changedObjectIsDetectedNotMixed() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        try server.write(randomBytes(64 << 10, seed: 3), to: "c.bin")
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let object = try await client.stat(.http(url: server.url("c.bin")))
        // Rewritten between the stat and the read: a new size and mtime, so a new ETag.
        try server.write(randomBytes(65 << 10, seed: 4), to: "c.bin")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 16)
        defer { buffer.deallocate() }
        do {
            try await client.read(object, range: 0..<1024, into: buffer)
            Issue.record("a read of a changed object succeeded")
        } catch {
            let error = try #require(remoteError(error))
            #expect(error.code == .changed, "\(error)")
            #expect(error.message.contains("412"))
        }
    }

    @Test func cancellationAbortsATransferPromptly() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        // 8 MiB at 64 KiB/s would take two minutes.
        try server.write(randomBytes(8 << 20, seed: 5), to: "slow/s.bin")
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let object = try await client.stat(.http(url: server.url("slow/s.bin")))
        let buffer = ChunkBuffer(count: Int(object.size))
        let started = ContinuousClock.now
        let task = Task {
            try await client.read(object, range: 0..<object.size, into: buffer.bytes)
        }
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        do {
            try await task.value
            Issue.record("a cancelled read finished")
        } catch {
            #expect(remoteError(error)?.code == .cancelled, "\(error)")
        }
        // The whole transfer takes about two minutes; a cancelled one ends long before. The bound
        // is loose on purpose: the suite runs in parallel on 2 cores (CPU-heavy suites beside it
        // delay task wakeups by seconds), and timings must not make tests flaky.
        #expect(ContinuousClock.now - started < .seconds(60), "cancellation did not stop the transfer")
    }

    @Test func uploadAndDeleteOverWebDAV() async throws {
        let server = try NginxServer()
        defer { server.stop() }
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let data = randomBytes(3 << 20, seed: 6)
        let location = RemoteLocation.http(url: server.url("up/dir/a.bin"))
        let owned = OwnedBytes(data)
        try await client.upload(bytes: owned.buffer, to: location)
        #expect(try Data(contentsOf: URL(fileURLWithPath: server.root + "/up/dir/a.bin")) == Data(data))

        // From a file, streamed.
        let source = tempPath("src.bin")
        defer { unlink(source) }
        let other = randomBytes(5 << 20, seed: 7)
        try Data(other).write(to: URL(fileURLWithPath: source))
        try await client.upload(file: source, to: .http(url: server.url("up/b.bin")))
        #expect(try Data(contentsOf: URL(fileURLWithPath: server.root + "/up/b.bin")) == Data(other))
        #expect(try await client.stat(.http(url: server.url("up/b.bin"))).size == UInt64(other.count))

        try await client.delete(location)
        #expect(!FileManager.default.fileExists(atPath: server.root + "/up/dir/a.bin"))
        try await client.delete(location)  // already gone: still fine
    }

    @Test func fileLocationsUsePread() async throws {
        let client = RemoteClient(settings: Self.settings, environment: [:])
        let path = tempPath("f.bin")
        defer { unlink(path) }
        let data = randomBytes(9 << 20 + 123, seed: 8)
        let owned = OwnedBytes(data)
        try await client.upload(bytes: owned.buffer, to: .file(path: path))
        let object = try await client.stat(.file(path: path))
        #expect(object.size == UInt64(data.count) && object.etag == nil && object.identity.contains("mtime="))
        let copy = tempPath("copy.bin")
        defer { unlink(copy) }
        _ = try await client.download(.file(path: path), to: copy, sha256: SHA256Digest.hex(of: data))
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(data))
        do {
            _ = try await client.stat(.file(path: path + ".missing"))
            Issue.record("stat of a missing file succeeded")
        } catch {
            #expect(remoteError(error)?.code == .notFound)
        }
    }
}

/// Progress callbacks arrive from the download loop; the test reads them afterwards.
final class ProgressLog: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var values: [UInt64] = []

    func record(_ value: UInt64) { lock.withLock { values.append(value) } }
    var last: UInt64? { lock.withLock { values.last } }
    var count: Int { lock.withLock { values.count } }
}
