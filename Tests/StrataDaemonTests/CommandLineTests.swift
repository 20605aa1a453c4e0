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
}
