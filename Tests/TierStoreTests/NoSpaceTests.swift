import Foundation
import Glibc
import Testing
@testable import TierStore

/// ENOSPC on a small capped file system: a tmpfs of a few MiB mounted for the test (tmpfs does
/// O_DIRECT on Linux 6.6+). Needs root to mount; CI and the dev machines run as root.
struct NoSpaceTests {
    static func run(_ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }

    static var canMount: Bool { getuid() == 0 }

    /// A log with a 1 GiB budget on a 6 MiB tmpfs mounted for the test's body (unmounted after
    /// it), opened with `kind`'s engine; the body gets the log, its configuration and the engine.
    static func withLogOnSmallFilesystem(
        _ kind: IOEngineKind, segmentBytes: Int, reserveBytes: UInt64 = 16 << 20,
        _ body: (SegmentLog, SegmentLog.Configuration, any IOEngine) async throws -> Void
    ) async throws {
        let mountPoint = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        try #require(Self.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", mountPoint]) == 0, "mount tmpfs")
        defer { _ = Self.run(["umount", "-l", mountPoint]) }
        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        var config = SegmentLog.Configuration(directory: mountPoint + "/log", segmentBytes: segmentBytes, budgetBytes: 1 << 30)
        config.filesystemReserveBytes = reserveBytes
        try await body(try await SegmentLog.open(config, engine: engine), config, engine)
    }

    static func value(_ i: Int) -> [UInt8] { IOEngineContractTests.pattern(60_000, seed: UInt64(i)) }

    /// A budget (1 GiB) far above what the filesystem (6 MiB) holds: the log comes down to what
    /// it can hold, the oldest blocks going first as at the budget, instead of filling the
    /// filesystem and then failing every put (deletes free nothing in a log). What is kept
    /// reads back identical, also after a restart.
    @Test(.enabled(if: canMount, "mounting a capped tmpfs needs root"), arguments: IOEngineContractTests.kinds)
    func aFilesystemSmallerThanTheBudgetKeepsTheNewestInsteadOfFilling(kind: IOEngineKind) async throws {
        try await Self.withLogOnSmallFilesystem(kind, segmentBytes: 1 << 20, reserveBytes: 1 << 20) { log, config, engine in
            for i in 0..<200 {   // 200 × 64 KiB is far more than 6 MiB
                try await log.put(BlockKey(bytes: [UInt8(i)]), Self.value(i), durable: true)
            }
            #expect(await log.stats.budgetLowered > 0)
            #expect(await log.configuration.budgetBytes < 6 << 20)
            var kept: [Int] = []
            for i in 0..<200 {
                guard let got = try await log.get(BlockKey(bytes: [UInt8(i)])) else { continue }
                #expect(got == Self.value(i), "block \(i)")
                kept.append(i)
            }
            #expect(kept.count > 10 && kept.last == 199, "the newest are kept: \(kept)")
            #expect(kept == Array(kept.first!...199), "the oldest went first")
            await log.close()
            // (Reopened, it fits itself again: the new segment it writes next needs room too, so
            // more of the oldest may go; what stays is never different.)
            let reopened = try await SegmentLog.open(config, engine: engine)
            for i in kept {
                if let got = try await reopened.get(BlockKey(bytes: [UInt8(i)])) { #expect(got == Self.value(i), "block \(i)") }
            }
            #expect(try await reopened.get(BlockKey(bytes: [199])) == Self.value(199))
            #expect(await reopened.stats.checksumFailures == 0)
            await reopened.close()
        }
    }

    /// Another file takes half the filesystem, then goes: the budget in force follows the room,
    /// down and then up again (never above the budget asked for).
    @Test(.enabled(if: canMount, "mounting a capped tmpfs needs root"))
    func theBudgetInForceFollowsTheRoomOtherFilesLeave() async throws {
        try await Self.withLogOnSmallFilesystem(.psync, segmentBytes: 1 << 20, reserveBytes: 1 << 20) { log, config, _ in
            let other = config.directory + "/../other"
            #expect(FileManager.default.createFile(atPath: other, contents: Data(repeating: 1, count: 3 << 20)))
            try await log.put(BlockKey(bytes: [0]), Self.value(0), durable: true)   // a first segment
            await log.setBudget(1 << 30)   // asked again: fitted to the room there is now
            let squeezed = await log.configuration.budgetBytes
            #expect(squeezed < 2 << 20, "6 MiB less 3 taken, a segment and the reserve: \(squeezed)")
            try FileManager.default.removeItem(atPath: other)
            for i in 1..<40 { try await log.put(BlockKey(bytes: [UInt8(i)]), Self.value(i), durable: true) }
            let relieved = await log.configuration.budgetBytes
            #expect(relieved > squeezed + (2 << 20) && relieved < 6 << 20, "\(squeezed) -> \(relieved)")
            for i in 0..<40 {
                if let got = try await log.get(BlockKey(bytes: [UInt8(i)])) { #expect(got == Self.value(i)) }
            }
        }
    }

    /// A filesystem too small for a second segment: nothing older can make room, so a full disk
    /// is a clear error, and everything acknowledged before it reads back, also after a restart.
    @Test(.enabled(if: canMount, "mounting a capped tmpfs needs root"), arguments: IOEngineContractTests.kinds)
    func fullDiskIsAClearErrorAndLosesNothingAlreadyStored(kind: IOEngineKind) async throws {
        try await Self.withLogOnSmallFilesystem(kind, segmentBytes: 8 << 20) { log, config, engine in
            var stored: [Int] = []
            var failure: (any Error)?
            for i in 0..<200 {
                do {
                    try await log.put(BlockKey(bytes: [UInt8(i)]), Self.value(i), durable: true)
                    stored.append(i)
                } catch {
                    failure = error
                    break
                }
            }
            let noSpace = (failure as? IOError)?.isNoSpace == true
                || (failure as? SQLiteDatabase.Error)?.code == 13   // SQLITE_FULL, when the catalog hits the wall first
            #expect(noSpace, "a full disk is reported as such: \(String(describing: failure))")
            #expect(stored.count > 10 && stored.count < 200)
            for i in stored { #expect(try await log.get(BlockKey(bytes: [UInt8(i)])) == Self.value(i)) }
            await log.close()
            let reopened = try await SegmentLog.open(config, engine: engine)
            for i in stored { #expect(try await reopened.get(BlockKey(bytes: [UInt8(i)])) == Self.value(i)) }
            await reopened.close()
        }
    }
}
