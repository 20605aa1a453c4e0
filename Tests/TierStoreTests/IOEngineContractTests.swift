import Foundation
import Glibc
import Testing
@testable import TierStore

/// One contract, run unchanged against every engine (the real ones and the fault-injecting
/// fake), on real files in a temp directory.
struct IOEngineContractTests {
    /// The real engines (for tests that hand the kind to another process).
    static let kinds: [IOEngineKind] = IOUringEngine.isAvailable ? [.ioUring, .psync] : [.psync]

    final class TempFile {
        let path: String
        let fd: Int32
        init(flags: Int32 = O_RDWR, size: Int = 0) throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("strata-io-\(UUID().uuidString)").path
            let created = open(path, O_CREAT | O_RDWR, 0o600)
            guard created >= 0 else { throw IOError(operation: "open", errno: errno) }
            if size > 0 { ftruncate(created, off_t(size)) }
            close(created)
            fd = open(path, flags)
            guard fd >= 0 else { throw IOError(operation: "open", errno: errno) }
        }
        deinit {
            close(fd)
            unlink(path)
        }
    }

    static func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    static func buffer(_ bytes: [UInt8]) -> IOBuffer {
        let buffer = IOBuffer(count: bytes.count)
        buffer.bytes.copyBytes(from: bytes)
        return buffer
    }

    @Test(arguments: EngineUnderTest.all)
    func writesThenReadsBackAtOffsets(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let file = try TempFile()
        let data = Self.buffer(Self.pattern(1 << 20, seed: 1))
        try await engine.write(fd: file.fd, from: data, at: 12_345)
        try await engine.sync(fd: file.fd, dataOnly: true)
        let back = IOBuffer(count: data.count)
        let n = try await engine.readFully(fd: file.fd, into: back, at: 12_345)
        #expect(n == data.count)
        #expect(Array(back.readOnly) == Array(data.readOnly))
    }

    @Test(arguments: EngineUnderTest.all)
    func shortReadAtEndOfFileAndZeroPastIt(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 4)
        defer { engine.shutdown() }
        let file = try TempFile()
        let data = Self.pattern(1000, seed: 2)
        try await engine.write(fd: file.fd, from: Self.buffer(data), at: 0)
        let buffer = IOBuffer(count: 4096)
        let tail = try await engine.read(fd: file.fd, into: buffer, at: 900)
        #expect(tail == 100)
        #expect(Array(buffer.readOnly[0..<100]) == Array(data[900..<1000]))
        let past = try await engine.read(fd: file.fd, into: buffer, at: 5000)
        #expect(past == 0)
    }

    @Test(arguments: EngineUnderTest.all)
    func manyConcurrentReadsAllLandInTheirOwnBuffers(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 32)
        defer { engine.shutdown() }
        let blocks = 256, size = 4096
        let file = try TempFile()
        let data = Self.pattern(blocks * size, seed: 3)
        try await engine.write(fd: file.fd, from: Self.buffer(data), at: 0)
        let fd = file.fd
        // more readers than the queue depth: the bound makes the rest wait, nobody fails
        let results = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            for block in (0..<blocks).reversed() {
                group.addTask {
                    let buffer = IOBuffer(count: size)
                    _ = try await engine.readFully(fd: fd, into: buffer, at: UInt64(block * size))
                    return (block, Array(buffer.readOnly))
                }
            }
            var all: [Int: [UInt8]] = [:]
            for try await (block, buffer) in group { all[block] = buffer }
            return all
        }
        #expect(results.count == blocks)
        for block in 0..<blocks {
            #expect(results[block] == Array(data[block * size..<(block + 1) * size]), "block \(block)")
        }
    }

    @Test(arguments: EngineUnderTest.all)
    func directIOWithAlignedBuffers(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let size = 1 << 20
        let file = try TempFile(flags: O_RDWR | O_DIRECT)
        let data = Self.pattern(size, seed: 4)
        let buffer = Self.buffer(data)
        do {
            try await engine.write(fd: file.fd, from: buffer, at: 0)
        } catch let error as IOError where error.errno == EINVAL {
            // the temp directory's file system does not do O_DIRECT (tmpfs): nothing to test here
            return
        }
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        let n = try await engine.readFully(fd: file.fd, into: buffer, at: 0)
        #expect(n == size)
        #expect(Array(buffer.readOnly) == data)
    }

    @Test(arguments: EngineUnderTest.all)
    func failuresAreIOErrorsWithErrno(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 4)
        defer { engine.shutdown() }
        // reading a directory: EISDIR
        let directory = open(FileManager.default.temporaryDirectory.path, O_RDONLY | O_DIRECTORY)
        defer { close(directory) }
        let buffer = IOBuffer(count: 16)
        await #expect(throws: IOError(operation: kind.readOperation, errno: EISDIR)) {
            _ = try await engine.read(fd: directory, into: buffer, at: 0)
        }
        // a full device: ENOSPC, reported as such
        let full = open("/dev/full", O_WRONLY)
        guard full >= 0 else { return }
        defer { close(full) }
        do {
            try await engine.write(fd: full, from: Self.buffer([UInt8](repeating: 1, count: 4096)), at: 0)
            Issue.record("write to /dev/full succeeded")
        } catch let error as IOError {
            #expect(error.isNoSpace, "\(error)")
        }
    }

    @Test(arguments: EngineUnderTest.all)
    func operationsAfterShutdownFail(kind: EngineUnderTest) async throws {
        let engine = try kind.make(queueDepth: 4)
        let file = try TempFile()
        engine.shutdown()
        let buffer = IOBuffer(count: 16)
        await #expect(throws: IOError.self) {
            _ = try await engine.read(fd: file.fd, into: buffer, at: 0)
        }
    }

    @Test func autoPicksIOUringWhereAvailable() throws {
        let engine = try IOEngineKind.auto.make()
        defer { engine.shutdown() }
        #expect(engine.name == (IOUringEngine.isAvailable ? "io_uring" : "psync"))
    }
}
