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

    @Test(.enabled(if: canMount, "mounting a capped tmpfs needs root"), arguments: IOEngineContractTests.kinds)
    func fullDiskIsAClearErrorAndLosesNothingAlreadyStored(kind: IOEngineKind) async throws {
        let mountPoint = SegmentLogTests.directory()
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        try #require(Self.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", mountPoint]) == 0, "mount tmpfs")
        defer { _ = Self.run(["umount", "-l", mountPoint]) }

        let engine = try kind.make(queueDepth: 8)
        defer { engine.shutdown() }
        let config = SegmentLog.Configuration(directory: mountPoint + "/log", segmentBytes: 1 << 20, budgetBytes: 1 << 30)
        let log = try await SegmentLog.open(config, engine: engine)
        var stored: [Int] = []
        var failure: (any Error)?
        for i in 0..<200 {   // 200 × 64 KiB is far more than 6 MiB
            do {
                try await log.put(BlockKey(bytes: [UInt8(i)]), IOEngineContractTests.pattern(60_000, seed: UInt64(i)), durable: true)
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
        // everything acknowledged before the wall reads back, and still does after a restart
        for i in stored {
            #expect(try await log.get(BlockKey(bytes: [UInt8(i)])) == IOEngineContractTests.pattern(60_000, seed: UInt64(i)))
        }
        await log.close()
        let reopened = try await SegmentLog.open(config, engine: engine)
        for i in stored {
            #expect(try await reopened.get(BlockKey(bytes: [UInt8(i)])) == IOEngineContractTests.pattern(60_000, seed: UInt64(i)))
        }
        await reopened.close()
    }
}
