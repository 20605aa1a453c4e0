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

    @Test func statusShowsEachReplicasRoutingState() {
        var set = AdminStatus.Model(name: "m", status: "ready", phase: "ready", runtime: nil, device: nil, memory_bytes: nil,
                                    in_flight: 3, waiting: 0, loads: 0, pid: nil, upstream: nil, last_error: nil)
        set.replicas = [
            .init(url: "http://10.0.0.1:8080", healthy: true, in_flight: 3, queued_blocks: 12, index_blocks: 40, consecutive_failures: 0),
            .init(url: "http://10.0.0.2:8080", healthy: false, in_flight: 0, queued_blocks: 0, index_blocks: 0, consecutive_failures: 3),
        ]
        var managed = AdminStatus.Model(name: "n#1", status: "loading", phase: "starting", runtime: "llama", device: "cpu",
                                        memory_bytes: 1 << 30, in_flight: 0, waiting: 1, loads: 0, pid: nil, upstream: nil,
                                        last_error: nil)
        managed.replicas = [.init(url: "n#1", healthy: true, in_flight: 0, queued_blocks: 0, index_blocks: 0,
                                  consecutive_failures: 0, running: false)]
        let lines = StatusClient.render(AdminStatus(models: [set, managed], devices: [])).split(separator: "\n").map(String.init)
        let header = lines.firstIndex { $0.hasPrefix("REPLICA") }
        #expect(header != nil, "\(lines)")
        guard let header else { return }
        let words = lines[(header + 1)...].prefix(3).map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(words[0] == ["http://10.0.0.1:8080", "m", "up", "3", "12", "40", "0"])
        #expect(words[1] == ["http://10.0.0.2:8080", "m", "ejected", "0", "0", "0", "3"])
        #expect(words[2] == ["n#1", "n", "not", "running", "0", "0", "0", "0"])
    }

    /// A refusal for one replica names the model the client asked for, then the replica.
    @Test func aReplicasRefusalNamesTheModelTheClientAskedFor() {
        let late = ModelController.gatewayError(
            .timedOut(waited: .seconds(30), retryAfter: .seconds(5), reason: nil), model: "chat#1")
        #expect(late.message.hasPrefix("'chat' (its replica 'chat#1') did not become ready within 30.0s"), "\(late.message)")
        let plain = ModelController.gatewayError(.queueFull(limit: 4), model: "chat")
        #expect(plain.message.contains("waiting for 'chat' (limit 4"), "\(plain.message)")
        #expect(ModelController.gatewayError(.unknownModel, model: "chat#1").message.contains("'chat'"))
        #expect(!ModelController.gatewayError(.unknownModel, model: "chat#1").message.contains("#"))
    }
}
