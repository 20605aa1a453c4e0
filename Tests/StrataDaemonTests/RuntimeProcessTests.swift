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

    /// The cause, which a runtime logs before its generic last words, is in the tail too.
    @Test func theLogTailOfAFailureNamesItsCause() async throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("runtime-cause-\(getpid()).log").path
        defer { unlink(log) }
        let script = """
            echo 'llama_model_load_from_file_impl: failed to load model' >&2
            echo '0.00.006.001 E gguf_init_from_file_impl: invalid magic characters: hell, expected GGUF' >&2
            echo '0.00.006.096 E gguf_init_from_file_impl: invalid magic characters: hell, expected GGUF' >&2
            echo 'llama_model_load: error loading model: llama_model_loader: failed to load model from bad.gguf' >&2
            for i in 1 2 3 4 5 6; do echo "loading part $i" >&2; done
            echo 'llama_model_load: error loading model: failed to load model' >&2
            echo 'srv load_model: cleaning up before exit' >&2
            echo 'main: exiting due to model loading error' >&2
            exit 1
            """
        let process = try RuntimeProcess.spawn(argv: ["sh", "-c", script], environment: [:], port: 0, logPath: log)
        #expect(await process.waitForExit() == "exited with code 1")
        let tail = process.logTail()
        #expect(tail == "0.00.006.096 E gguf_init_from_file_impl: invalid magic characters: hell, expected GGUF | … | llama_model_load: error loading model: failed to load model | srv load_model: cleaning up before exit | main: exiting due to model loading error", "got \(tail)")
    }
}
