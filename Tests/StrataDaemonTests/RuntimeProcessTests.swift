import Foundation
@testable import StrataDaemon
import Testing

/// A runtime's log is appended to across its runs; what a failure reports comes from its own run.
struct RuntimeProcessTests {
    @Test func theLogTailOfAFailureIsThisRunsOnly() async throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("runtime-log-\(getpid()).log").path
        defer { unlink(log) }
        try "error: from the run before\nstill the run before\n".write(toFile: log, atomically: true, encoding: .utf8)
        let process = try RuntimeProcess.spawn(argv: ["sh", "-c", "echo this run failed >&2; exit 3"], environment: [:],
                                               port: 0, logPath: log)
        #expect(await process.waitForExit() == "exited with code 3")
        let tail = process.logTail()
        #expect(tail == "this run failed", "got \(tail)")
    }
}
