import Foundation
import Glibc
import Testing
@testable import TierStore

/// The checksum of a staged copy is computed while its chunks land in any order: it must be the
/// digest of the whole file, never of part of it, and never wait forever.
struct PrefixDigestTests {
    static let chunk = 64 << 10

    /// A file of `size` pattern bytes, written chunk by chunk in `order` as `digest` is told.
    static func fill(_ bytes: [UInt8], order: [Int], path: String, hashing digest: (Int32) -> PrefixDigest) throws -> PrefixDigest {
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        let digest = digest(open(path, O_RDONLY | O_CLOEXEC))
        for index in order {
            let range = index * chunk..<min(bytes.count, (index + 1) * chunk)
            let written = bytes[range].withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(range.lowerBound)) }
            #expect(written == range.count)
            digest.completed(index)
        }
        return digest
    }

    static func path() -> String { SegmentLogTests.directory() + "/copy" }

    @Test(arguments: [0, 1, chunk, 5 * chunk, 7 * chunk + 4321])
    func chunksCompletedInAnyOrderGiveTheWholeFilesDigest(size: Int) async throws {
        let bytes = IOEngineContractTests.pattern(size, seed: UInt64(size) + 3)
        let count = (size + Self.chunk - 1) / Self.chunk
        var generator = SystemRandomNumberGenerator()
        let order = Array(0..<count).shuffled(using: &generator)
        let path = Self.path()
        let digest = try Self.fill(bytes, order: order, path: path) {
            PrefixDigest(fd: $0, size: UInt64(size), chunkSize: Self.chunk, what: "copy")
        }
        #expect(try await digest.finish() == SHA256Digest.hex(of: bytes), "order \(order)")
    }

    @Test func aChunkThatNeverCompletedFailsTheDigestInsteadOfWaiting() async throws {
        let bytes = IOEngineContractTests.pattern(5 * Self.chunk, seed: 9)
        let digest = try Self.fill(bytes, order: [0, 1, 3, 4], path: Self.path()) {
            PrefixDigest(fd: $0, size: UInt64(bytes.count), chunkSize: Self.chunk, what: "copy")
        }
        let error = await #expect(throws: PrefixDigest.Incomplete.self) { try await digest.finish() }
        #expect(error?.hashedChunks == 2 && error?.totalChunks == 5)
    }

    @Test func aCancelledDigestAnswersNothing() async throws {
        let bytes = IOEngineContractTests.pattern(3 * Self.chunk, seed: 10)
        let digest = try Self.fill(bytes, order: [0], path: Self.path()) {
            PrefixDigest(fd: $0, size: UInt64(bytes.count), chunkSize: Self.chunk, what: "copy")
        }
        digest.cancel()
        digest.completed(1)
        digest.completed(2)
        await #expect(throws: (any Error).self) { try await digest.finish() }
    }

    @Test func aFileShorterThanItsChunksSayIsAnErrorNamingIt() async throws {
        // The file holds one chunk, the digest is told of two: reading the second finds nothing.
        let bytes = IOEngineContractTests.pattern(Self.chunk, seed: 11)
        let path = Self.path()
        let digest = try Self.fill(bytes, order: [0], path: path) {
            PrefixDigest(fd: $0, size: UInt64(2 * Self.chunk), chunkSize: Self.chunk, what: "the copy of m")
        }
        digest.completed(1)
        let error = await #expect(throws: IOError.self) { try await digest.finish() }
        #expect("\(error.map { "\($0)" } ?? "")".contains("read back the copy of m"))
    }

    @Test func aChunkBeyondTheFileIsAnErrorNotACrash() async throws {
        // The source grew after its size was taken: the import reports more chunks than the digest expects.
        let bytes = IOEngineContractTests.pattern(2 * Self.chunk, seed: 12)
        let digest = try Self.fill(bytes, order: [0, 1], path: Self.path()) {
            PrefixDigest(fd: $0, size: UInt64(Self.chunk), chunkSize: Self.chunk, what: "the copy of m")
        }
        let error = await #expect(throws: IOError.self) { try await digest.finish() }
        #expect("\(error.map { "\($0)" } ?? "")".contains("beyond the 1 chunks"))
    }
}
