import Foundation
import Glibc
import Logging
import MetricsTestKit
import Synchronization
import Testing
@testable import TierStore

/// Staging from HTTP (a real nginx) writes the RAM copy first and the NVMe copy behind it: the
/// staging is done before the NVMe copy exists, a staging that needs the NVMe copy waits for it
/// (one transfer, one ingest), a failed NVMe write leaves the RAM copy serving and is counted,
/// and a cancelled one keeps nothing. The store's writes are held at a gate (FaultInjectingEngine)
/// to catch the write-behind in the middle.
struct WeightStagerWriteBehindTests {
    // NginxServer is a plain class (a process handle); the tests only stop it, once, at the end.
    struct Fixture: @unchecked Sendable {
        let dir: String
        let server: NginxServer
        let engine: FaultInjectingEngine
        let log: SegmentLog
        let objects: ObjectStore
        let stager: WeightStager
        let host: StagedFiles
        let metrics: TestMetrics
        let bytes: [UInt8]
        let url: String

        static let chunk = 1 << 20

        static func make(size: Int = 5 * chunk + 4321, seed: UInt64 = 21) async throws -> Fixture {
            let dir = SegmentLogTests.directory()
            let server = try NginxServer()
            let bytes = IOEngineContractTests.pattern(size, seed: seed)
            try server.write(bytes, to: "model.gguf")
            let engine = FaultInjectingEngine(base: try IOEngineKind.auto.make(queueDepth: 16))
            let log = try await SegmentLog.open(.init(directory: dir + "/nvme", segmentBytes: 16 << 20), engine: engine)
            let objects = try await ObjectStore.open(log: log, queueDepth: 4)
            let host = try StagedFiles(directory: WeightStagerTests.Fixture.hostDirectory())
            let metrics = TestMetrics()
            let stager = WeightStager(
                objects: objects, remote: RemoteClient(settings: RemoteSettings(parallelism: 3, chunkBytes: chunk)), host: host,
                disk: try StagedFiles(directory: dir + "/weights"), logger: Logger(label: "test"), metrics: metrics)
            return Fixture(dir: dir, server: server, engine: engine, log: log, objects: objects, stager: stager, host: host,
                           metrics: metrics, bytes: bytes, url: server.url("model.gguf"))
        }

        /// Runs `body` on a fresh fixture and closes it after, also when `body` throws (a
        /// deferred Task would leave nginx running when the test process exits first).
        static func with(_ body: (Fixture) async throws -> Void) async throws {
            let f = try await make()
            do {
                try await body(f)
            } catch {
                await f.close()
                throw error
            }
            await f.close()
        }

        func close() async {
            engine.release()
            await stager.stopWritesBehind()
            await log.close()
            engine.base.shutdown()
            server.stop()
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: host.directory)
        }

        func contents(_ path: String?) -> [UInt8]? {
            path.flatMap { FileManager.default.contents(atPath: $0) }.map([UInt8].init)
        }

        func outcomes(_ result: String) -> Int64 {
            (try? metrics.expectCounter("strata_stage_write_behind_total", [("result", result)]).totalValue) ?? 0
        }

        /// Waits (bounded) until the write-behind has writes queued at the gate.
        func waitForHeldWrites() async throws {
            for _ in 0..<500 where engine.writesHeld == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(engine.writesHeld > 0, "the NVMe copy should be writing")
        }
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        var digest = SHA256Digest()
        bytes.withUnsafeBytes { digest.update($0) }
        return digest.finalize()
    }

    @Test func theStagingIsDoneWithTheRAMCopyAndAnNVMeStagingWaitsForTheCopyBehindIt() async throws {
        try await Fixture.with { f in
            let request = StageRequest(name: "m", source: f.url, sha256: Self.sha256(f.bytes))
            f.engine.hold()
            let staged = try await f.stager.stage(request)
            #expect(staged.origin == .remote && f.contents(staged.path) == f.bytes, "the RAM copy is whole and verified")
            try await f.waitForHeldWrites()
            #expect(f.objects.info("m") == nil, "the NVMe copy is not visible before it is whole")
            #expect(await f.stager.statuses().first?.nvmeCopy == .writing)
            #expect(await f.stager.residency(of: "m", source: f.url) == .host)

            // An NVMe-only staging of the same model waits for that write rather than transferring again.
            let answered = Mutex(false)
            let nvme = Task {
                defer { answered.withLock { $0 = true } }
                return try await f.stager.stage(StageRequest(name: "m", source: f.url, destination: .nvme))
            }
            try await Task.sleep(for: .milliseconds(200))
            #expect(answered.withLock { $0 } == false, "answered before the NVMe copy was committed")
            f.engine.release()
            let fromNVMeStaging = try await nvme.value
            #expect(fromNVMeStaging.origin == .host && fromNVMeStaging.seconds == 0, "nothing left to move: \(fromNVMeStaging)")
            #expect(f.objects.info("m")?.source == staged.identity)
            #expect(try await f.stager.nvmeCopyWritten("m") == .committed)
            let blocks = await f.log.stats.blocks
            #expect(blocks == 6, "one ingest of 6 chunks, not two")
            #expect(await f.stager.statuses().first { $0.name == "m" }?.state == .done)
            #expect(f.outcomes("committed") == 1)

            // The NVMe copy is the same bytes: without the RAM copy, the next staging reads it.
            await f.stager.releaseHost("m")
            let again = try await f.stager.stage(request)
            #expect(again.origin == .nvme && f.contents(again.path) == f.bytes)
            #expect(await f.stager.statuses().first?.nvmeCopy == nil, "a copy from NVMe writes nothing behind")
        }
    }

    @Test func aFailedNVMeCopyLeavesTheRAMCopyServingAndIsCounted() async throws {
        try await Fixture.with { f in
            f.engine.arm(.init(writeErrno: EIO, after: 2))
            let staged = try await f.stager.stage(StageRequest(name: "m", source: f.url))
            #expect(try await f.stager.nvmeCopyWritten("m") == .failed)
            #expect(f.contents(staged.path) == f.bytes && f.host.path(of: "m") == staged.path, "the RAM copy still serves")
            let blocksAfterFailure = await f.log.stats.blocks
            #expect(f.objects.info("m") == nil && blocksAfterFailure == 0, "nothing of the NVMe copy was kept")
            #expect(await f.stager.statuses().first?.nvmeCopy == .failed)
            #expect(f.outcomes("failed") == 1 && f.outcomes("committed") == 0)

            // With the disk healthy again an NVMe staging fetches and commits it.
            f.engine.disarm()
            let nvme = try await f.stager.stage(StageRequest(name: "m", source: f.url, destination: .nvme))
            #expect(nvme.origin == .remote && f.objects.info("m")?.source == staged.identity)
        }
    }

    @Test func aReleasedRAMCopyStillFeedsItsNVMeCopyAndACancelledOneKeepsNothing() async throws {
        try await Fixture.with { f in
            let request = StageRequest(name: "m", source: f.url)

            // Released mid-write: the copy's file is gone from the directory, the write goes on from its descriptor.
            f.engine.hold()
            _ = try await f.stager.stage(request)
            try await f.waitForHeldWrites()
            await f.stager.releaseHost("m")
            #expect(f.host.path(of: "m") == nil)
            f.engine.release()
            #expect(try await f.stager.nvmeCopyWritten("m") == .committed)
            let fromNVMe = try await f.stager.stage(request)
            #expect(fromNVMe.origin == .nvme && f.contents(fromNVMe.path) == f.bytes)

            // Cancelled mid-write (an admin cancel, or a shutdown): no object, no chunks.
            await f.stager.releaseHost("m")
            try await f.objects.remove("m")
            f.engine.hold()
            let staged = try await f.stager.stage(request)
            try await f.waitForHeldWrites()
            await f.stager.cancel("m")
            f.engine.release()
            #expect(try await f.stager.nvmeCopyWritten("m") == .cancelled)
            let blocksAfterCancel = await f.log.stats.blocks
            #expect(f.objects.info("m") == nil && blocksAfterCancel == 0)
            #expect(f.contents(staged.path) == f.bytes, "the RAM copy is untouched")
            #expect(await f.stager.statuses().first?.nvmeCopy == .cancelled)

            // stopWritesBehind (before the log closes) ends every write the same way.
            await f.stager.releaseHost("m")
            f.engine.hold()
            _ = try await f.stager.stage(request)
            try await f.waitForHeldWrites()
            let stopping = Task { await f.stager.stopWritesBehind() }
            try await Task.sleep(for: .milliseconds(50))
            f.engine.release()
            await stopping.value
            let blocksAfterStop = await f.log.stats.blocks
            #expect(f.objects.info("m") == nil && blocksAfterStop == 0)
            #expect(f.outcomes("cancelled") == 2)

            // A staging that finishes after the stop (shutdown under way) keeps its RAM copy and
            // starts no NVMe copy into the log that is about to close.
            await f.stager.releaseHost("m")
            let late = try await f.stager.stage(request)
            #expect(f.contents(late.path) == f.bytes)
            #expect(try await f.stager.nvmeCopyWritten("m") == .cancelled)
            let blocksAfterLate = await f.log.stats.blocks
            #expect(f.objects.info("m") == nil && blocksAfterLate == 0)
        }
    }

    @Test func aWrongChecksumOverHTTPPublishesNothingAndWritesNothingBehind() async throws {
        try await Fixture.with { f in
            await #expect(throws: StageError.self) {
                _ = try await f.stager.stage(StageRequest(name: "m", source: f.url, sha256: String(repeating: "0", count: 64)))
            }
            #expect(try await f.stager.nvmeCopyWritten("m") == nil)
            let blocks = await f.log.stats.blocks
            #expect(f.host.path(of: "m") == nil && f.objects.info("m") == nil && blocks == 0)
            let hidden = try FileManager.default.contentsOfDirectory(atPath: f.host.directory)
            #expect(hidden.isEmpty, "no temporary copy is left behind: \(hidden)")
        }
    }
}
