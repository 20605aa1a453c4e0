import Foundation
import Glibc
import Logging
import Synchronization
import Testing
@testable import TierStore

/// The weight stager on a real store (io_uring log, RAM-backed directory): source → NVMe + host
/// in one pass, NVMe → host, deduplication, cancellation, checksums, a changed source, an
/// unreachable one. (HTTP and S3 sources are exercised against nginx and moto in the
/// integration tests.)
struct WeightStagerTests {
    struct Fixture {
        let dir: String
        let engine: any IOEngine
        let log: SegmentLog
        let objects: ObjectStore
        let stager: WeightStager
        let host: StagedFiles

        static func make(nvmeBudget: UInt64 = 64 << 30) async throws -> Fixture {
            let dir = SegmentLogTests.directory()
            let engine = try IOEngineKind.auto.make(queueDepth: 16)
            let log = try await SegmentLog.open(
                .init(directory: dir + "/nvme", segmentBytes: 16 << 20, budgetBytes: nvmeBudget), engine: engine)
            let objects = try await ObjectStore.open(log: log, queueDepth: 4)
            let host = try StagedFiles(directory: Self.hostDirectory())
            let stager = WeightStager(
                objects: objects, remote: RemoteClient(settings: RemoteSettings()), host: host,
                disk: try StagedFiles(directory: dir + "/weights"), logger: Logger(label: "test"))
            return Fixture(dir: dir, engine: engine, log: log, objects: objects, stager: stager, host: host)
        }

        /// A RAM-backed directory of this test process's own. (Those of test processes that are
        /// gone are removed first: a test's closing task may not run before its process exits.)
        static func hostDirectory() -> String {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? [] where entry.hasPrefix("strata-unit-") {
                let owner = entry.split(separator: "-").dropFirst(2).first.flatMap { pid_t($0) } ?? 0
                if owner > 0, kill(owner, 0) != 0, errno == ESRCH { try? FileManager.default.removeItem(atPath: "/dev/shm/\(entry)") }
            }
            return "/dev/shm/strata-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        }

        func close() async {
            await log.close()
            engine.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: host.directory)
        }

        func source(size: Int, seed: UInt64) throws -> (String, [UInt8]) {
            try ObjectStoreTests.sourceFile(dir, size: size, seed: seed)
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        var digest = SHA256Digest()
        bytes.withUnsafeBytes { digest.update($0) }
        return digest.finalize()
    }

    @Test func stagesFromSourceThenFromNVMeThenFindsTheHostCopy() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 3 * (8 << 20) + 777, seed: 11)
        let request = StageRequest(name: "m", source: "file://\(path)", sha256: Self.sha256(bytes))

        let first = try await f.stager.stage(request)
        #expect(first.origin == .remote && first.bytes == UInt64(bytes.count))
        #expect(first.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        #expect(first.path?.hasPrefix(f.host.directory) == true && first.path?.hasSuffix(".gguf") == true)
        #expect(f.objects.info("m")?.size == UInt64(bytes.count), "written through to NVMe in the same pass")

        // a host copy that exists is used as it is
        let again = try await f.stager.stage(request)
        #expect(again.origin == .host && again.path == first.path)

        // without the host copy, it comes back from NVMe, byte-identical
        await f.stager.releaseHost("m")
        #expect(await f.stager.hostCopy(of: "m", source: request.source) == nil)
        #expect(await f.stager.residency(of: "m", source: request.source) == .nvme)
        let fromNVMe = try await f.stager.stage(request)
        #expect(fromNVMe.origin == .nvme)
        #expect(fromNVMe.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        #expect(await f.stager.residency(of: "m", source: request.source) == .host)
        let statuses = await f.stager.statuses()
        #expect(statuses.map(\.state) == [.done] && statuses.first?.bytesDone == UInt64(bytes.count))
    }

    @Test func aChangedSourceIsFetchedAgainAndAStaleCopyIsNotServed() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, _) = try f.source(size: 1 << 20, seed: 1)
        let request = StageRequest(name: "m", source: path)
        _ = try await f.stager.stage(request)
        // rewrite the source: same path, other bytes and size
        let replacement = IOEngineContractTests.pattern(2 << 20, seed: 99)
        try Data(replacement).write(to: URL(fileURLWithPath: path))
        #expect(await f.stager.hostCopy(of: "m", source: request.source) == nil, "the copy is of the old version")
        #expect(await f.stager.residency(of: "m", source: request.source) == .remote)
        let restaged = try await f.stager.stage(request)
        #expect(restaged.origin == .remote)
        #expect(restaged.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == replacement)
    }

    @Test(arguments: ["rewritten", "truncated", "unsealed"])
    func aCopyChangedSincePublishedIsNotUsed(change: String) async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 1 << 20, seed: 3)
        let request = StageRequest(name: "m", source: path)
        let copy = try #require(try await f.stager.stage(request).path)
        #expect(await f.stager.hostCopy(of: "m", source: path) == copy)
        switch change {
        case "rewritten":   // same size, one byte other (and so a newer modification time)
            usleep(10_000)
            let fd = open(copy, O_WRONLY)
            var byte: UInt8 = ~bytes[1000]
            #expect(pwrite(fd, &byte, 1, 1000) == 1)
            close(fd)
        case "truncated":
            #expect(truncate(copy, off_t(bytes.count / 2)) == 0)
        default:            // the identity file of an older build: no seal line
            let record = (copy as NSString).deletingLastPathComponent + "/identity"
            let text = try String(contentsOfFile: record, encoding: .utf8)
            try String(text[..<text.lastIndex(of: "\n")!]).write(toFile: record, atomically: true, encoding: .utf8)
        }
        #expect(await f.stager.hostCopy(of: "m", source: path) == nil)
        #expect(await f.stager.residency(of: "m", source: path) == .nvme)
        let again = try await f.stager.stage(request)
        #expect(again.origin == .nvme, "staged again, not served as it is")
        let whole = again.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes
        #expect(whole, "the copy staged again holds the source's bytes")
        #expect(await f.stager.hostCopy(of: "m", source: path) == again.path)
    }

    /// The RAM directory may be one a user named by hand that holds other things: only Strata's
    /// own copies are ever removed from it.
    @Test func copiesOfModelsNoLongerConfiguredGoAndNothingElseDoes() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, _) = try f.source(size: 1 << 20, seed: 4)
        _ = try await f.stager.stage(StageRequest(name: "gone", source: path))
        _ = try await f.stager.stage(StageRequest(name: "kept", source: path))
        let (other, _) = try f.source(size: 1 << 20, seed: 6)   // (the same source would share kept's inode)
        let damaged = try await f.stager.stage(StageRequest(name: "damaged", source: other))
        #expect(truncate(damaged.path!, 4096) == 0)
        let foreign = ["notes.txt", "photos/cat.jpg", "my-models/good.gguf", "proj/identity", "proj/main.c", "clash/notes.txt"]
        for file in foreign {
            try FileManager.default.createDirectory(
                atPath: (f.host.directory + "/" + file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            #expect(FileManager.default.createFile(atPath: f.host.directory + "/" + file, contents: Data("mine".utf8)))
        }
        #expect(await f.stager.removeHostCopies(keeping: ["kept": path, "damaged": other]) == [
            "gone": "no configured model has this name",
            "damaged": "damaged: its size or change time is not what was written",
        ])
        #expect(await f.stager.hostCopy(of: "kept", source: path) != nil)
        // a model named like a directory of someone else's is not staged over it
        await #expect(throws: (any Error).self) { _ = try await f.stager.stage(StageRequest(name: "clash", source: path)) }
        for file in foreign { #expect(FileManager.default.contents(atPath: f.host.directory + "/" + file) == Data("mine".utf8), "\(file)") }
    }

    @Test func twoModelsOfTheSameWeightsShareOneCopy() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 1 << 20, seed: 5)
        let first = try await f.stager.stage(StageRequest(name: "a", source: path))
        let second = try await f.stager.stage(StageRequest(name: "b", source: path))
        #expect(second.origin == .host, "linked, not read again")
        var (one, two) = (stat(), stat())
        #expect(stat(first.path!, &one) == 0 && stat(second.path!, &two) == 0 && one.st_ino == two.st_ino)
        // each model's copy goes on its own; the other keeps the bytes
        await f.stager.releaseHost("a")
        #expect(await f.stager.hostCopy(of: "a", source: path) == nil)
        #expect(await f.stager.hostCopy(of: "b", source: path).map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        // a request with a checksum is not given a copy that may not have been verified against one
        let checked = try await f.stager.stage(StageRequest(name: "c", source: path, sha256: Self.sha256(bytes)))
        var three = stat()
        #expect(stat(checked.path!, &three) == 0 && three.st_ino != two.st_ino)
    }

    @Test func aWrongChecksumPublishesNothing() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 2 << 20, seed: 3)
        let wrong = String(repeating: "ab", count: 32)
        await #expect(throws: StageError.self) {
            _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: wrong))
        }
        #expect(f.host.path(of: "m") == nil && f.objects.info("m") == nil)
        #expect(await f.log.stats.blocks == 0, "chunks of a refused object are dropped")
        let hidden = try FileManager.default.contentsOfDirectory(atPath: f.host.directory)
        #expect(hidden.isEmpty, "no temporary copy is left behind: \(hidden)")
        let status = await f.stager.statuses().first
        #expect(status?.state == .failed && status?.error?.contains(Self.sha256(bytes)) == true)
        // NVMe-only staging verifies by reading the chunks back
        await #expect(throws: StageError.self) {
            _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: wrong, destination: .nvme))
        }
        #expect(f.objects.info("m") == nil)
        _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: Self.sha256(bytes), destination: .nvme))
        #expect(f.objects.info("m") != nil && f.host.path(of: "m") == nil)
    }

    /// The config's sha256 changed after a copy was staged under the old one: the copies in
    /// RAM and on NVMe were served as they were (the runtime started on bytes the config no
    /// longer names). Each is checked against the checksum asked for, and the source's bytes
    /// then say it: refused, naming both.
    @Test func aCopyStagedUnderAnotherChecksumIsCheckedNotServed() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 2 * (8 << 20) + 5, seed: 21)
        let right = Self.sha256(bytes), wrong = String(repeating: "22", count: 32)
        _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: right))
        #expect(await f.stager.hostCopy(of: "m", source: path, sha256: right) != nil)
        #expect(await f.stager.hostCopy(of: "m", source: path, sha256: wrong) == nil, "the RAM copy does not have it")
        await #expect(throws: StageError.self) {
            _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: wrong))
        }
        await f.stager.releaseHost("m")
        let refused = await #expect(throws: StageError.self) {
            _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: wrong))
        }
        #expect(refused?.isChecksumMismatch == true && "\(refused!)".contains(right), "\(String(describing: refused))")
        #expect(f.host.path(of: "m") == nil, "nothing published from the NVMe copy")
        // the checksum the bytes have still serves, from NVMe
        let back = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: right))
        #expect(back.origin == .nvme || back.origin == .remote)
        #expect(back.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
    }

    /// The source changed, and the sha256 pins the old bytes: the NVMe copy of them is kept. Once
    /// that copy is damaged, staging failed with the damage every time, never asking the source
    /// (until a restart); now the source is asked, and its bytes decide.
    @Test func aKeptPinnedCopyFoundDamagedLeavesItToTheSource() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 2 * (8 << 20) + 5, seed: 31)
        let request = StageRequest(name: "m", source: path, sha256: Self.sha256(bytes))
        _ = try await f.stager.stage(request)
        await f.stager.releaseHost("m")
        let other = IOEngineContractTests.pattern(bytes.count, seed: 77)
        try Data(other).write(to: URL(fileURLWithPath: path))
        let stored = try #require(f.objects.info("m"))
        await f.log.remove(stored.chunkKey(1))
        let refused = await #expect(throws: StageError.self) { _ = try await f.stager.stage(request) }
        #expect(refused?.isChecksumMismatch == true, "the source's new bytes, not the damage: \(String(describing: refused))")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let back = try await f.stager.stage(request)
        #expect(back.origin == .remote)
        #expect(back.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
    }

    @Test func concurrentRequestsShareOneTransferAndCancellingTheLastCallerStopsIt() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 24 << 20, seed: 5)
        let request = StageRequest(name: "m", source: path)
        async let a = f.stager.stage(request)
        async let b = f.stager.stage(request)
        let (ra, rb) = try await (a, b)
        #expect(ra.path == rb.path && ra.origin == .remote && rb.origin == .remote, "one transfer, both callers answered by it")
        #expect(ra.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)

        // a lone caller that goes away takes the staging with it
        await f.stager.releaseHost("m")
        try await f.objects.remove("m")
        let task = Task { try await f.stager.stage(request) }
        task.cancel()
        let outcome = await task.result
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(f.host.path(of: "m") == nil && f.objects.info("m") == nil)
        let cancelled = await f.stager.statuses().first
        #expect(cancelled?.state == .cancelled && cancelled?.secondsLeft == nil, "no time left to a staging that ended")
    }

    @Test func anUnreachableSourceFallsBackToTheStoredCopy() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 1 << 20, seed: 8)
        _ = try await f.stager.stage(StageRequest(name: "m", source: path))
        await f.stager.releaseHost("m")
        try FileManager.default.removeItem(atPath: path)
        let result = try await f.stager.stage(StageRequest(name: "m", source: path))
        #expect(result.origin == .nvme)
        #expect(result.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        // with no copy anywhere, the error says what is missing
        await #expect(throws: (any Error).self) {
            _ = try await f.stager.stage(StageRequest(name: "other", source: path))
        }
    }

    /// The stored copy stands in for an unreachable source only if it is of that source and, with
    /// a checksum, meets it: a model whose source was changed to another (unreachable) one, or
    /// whose checksum the stored copy does not have, fails with the source's error.
    @Test func anUnreachableSourceIsNotReplacedByACopyOfAnotherOrOfOtherBytes() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 1 << 20, seed: 9)
        _ = try await f.stager.stage(StageRequest(name: "m", source: path))
        for source in ["\(f.dir)/no-such-model.gguf", "http://127.0.0.1:9/other.gguf"] {
            await #expect(throws: (any Error).self, "\(source)") {
                _ = try await f.stager.stage(StageRequest(name: "m", source: source))
            }
        }
        try FileManager.default.removeItem(atPath: path)
        do {
            _ = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: String(repeating: "ab", count: 32)))
            Issue.record("a checksum the stored copy does not meet: expected an error")
        } catch let error as StageError {
            #expect(error.isChecksumMismatch && error.message.contains("cannot be reached") && error.message.contains("SHA-256"), "\(error)")
        }
        // the right checksum: the copy is checked and used
        let checked = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: Self.sha256(bytes)))
        #expect(checked.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
    }

    /// The NVMe copy is listed but no longer whole (a chunk went without the store being told):
    /// staging finds it damaged and fetches the source again instead of failing.
    @Test func aStoredCopyFoundDamagedIsFetchedFromTheSourceAgain() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 2 * (8 << 20) + 99, seed: 12)
        _ = try await f.stager.stage(StageRequest(name: "m", source: path))
        await f.stager.releaseHost("m")
        let stored = try #require(f.objects.info("m"))
        await f.log.remove(stored.chunkKey(1))
        let result = try await f.stager.stage(StageRequest(name: "m", source: path))
        #expect(result.origin == .remote)
        #expect(result.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        #expect(f.objects.info("m").map { $0.version != stored.version } == true, "stored again, whole")
    }

    /// Weights larger than the NVMe tier keeps: the RAM copy, filled in the same pass and
    /// checked, serves; no NVMe copy is listed with its first chunks reclaimed.
    @Test func weightsTooLargeForTheNVMeTierAreStagedInRAMOnly() async throws {
        let f = try await Fixture.make(nvmeBudget: 32 << 20)
        defer { Task { await f.close() } }
        let (path, bytes) = try f.source(size: 5 * (8 << 20) + 99, seed: 13)
        let result = try await f.stager.stage(StageRequest(name: "m", source: path, sha256: Self.sha256(bytes)))
        #expect(result.origin == .remote)
        #expect(result.path.map { FileManager.default.contents(atPath: $0).map([UInt8].init) } == bytes)
        #expect(f.objects.info("m") == nil && f.objects.list().isEmpty)
        let blocks = await f.log.stats.blocks
        #expect(blocks == 0, "nothing of the refused copy stays in the log")
    }

    @Test func badSourcesAreRefusedWithTheReason() async throws {
        let f = try await Fixture.make()
        defer { Task { await f.close() } }
        for source in ["ftp://host/x.gguf", "relative/path.gguf", ""] {
            do {
                _ = try await f.stager.stage(StageRequest(name: "m", source: source))
                Issue.record("\(source) was accepted")
            } catch let error as RemoteError {
                #expect(error.code == .badLocation && "\(error)".contains(source.isEmpty ? "empty" : source), "\(error)")
            }
        }
    }
}
