import Frontend
import Testing
@testable import StrataDaemon

struct CommandLineTests {
    @Test func llamaServerCommandLineFillsPlaceholders() {
        let runtime = RuntimeConfiguration(
            name: "llama", kindName: "llama-server", kind: .llamaServer(binary: "/bin/ls", args: ["-c", "4096"]),
            healthPath: "/health", environment: [:])
        let argv = ModelController.commandLine(runtime: runtime, model: "m", modelPath: "/w.gguf", modelArgs: ["--x"], port: 1234)
        #expect(argv == ["/bin/ls", "--model", "/w.gguf", "--host", "127.0.0.1", "--port", "1234", "--alias", "m", "-c", "4096", "--x"])
    }

    @Test func commandTemplateFillsPlaceholders() {
        let runtime = RuntimeConfiguration(
            name: "c", kindName: "vllm",
            kind: .command(argv: ["vllm", "serve", "${MODEL_PATH}", "--port", "${PORT}", "--host", "${HOST}", "--name=${MODEL_NAME}"]),
            healthPath: "/health", environment: [:])
        let argv = ModelController.commandLine(runtime: runtime, model: "m", modelPath: "/w", modelArgs: [], port: 9)
        #expect(argv == ["vllm", "serve", "/w", "--port", "9", "--host", "127.0.0.1", "--name=m"])
    }

    @Test func statusKeepsAFailuresReasonOutOfTheTable() {
        func model(_ name: String, phase: String, error: String? = nil) -> AdminStatus.Model {
            AdminStatus.Model(name: name, status: phase.hasPrefix("failed") ? "failed" : "ready", phase: phase, runtime: "llama",
                              device: "cpu", memory_bytes: 400 << 20, in_flight: 0, waiting: 0, loads: 1, pid: nil,
                              upstream: nil, last_error: error)
        }
        let reason = "staging failed: HEAD http://127.0.0.1:1/x.gguf: gave up after 6 failed attempts"
        let text = StatusClient.render(AdminStatus(
            models: [model("far", phase: "failed, no start for another 4s", error: reason), model("near", phase: "ready")], devices: []))
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[1].hasPrefix("far ") && lines[1].contains("failed (below)") && !lines[1].contains("staging"))
        #expect(lines[0].count < 90, "columns as wide as their short values: \(lines[0])")
        #expect(lines[3] == "far (failed, no start for another 4s): " + reason)
    }
}
