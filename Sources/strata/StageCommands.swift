import ArgumentParser
import Foundation
import Glibc
import StrataDaemon
import TierStore

/// `strata stage MODEL`: stage a model's weights in a running daemon, with progress.
struct Stage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stage a model's weights into host RAM (or NVMe, or a disk file) in a running daemon, showing progress.")

    @Argument(help: "Model name, as in the config.")
    var model: String
    @Option(name: .shortAndLong, help: "Config file, to find the daemon's address.")
    var config: String = Strata.defaultConfig
    @Option(help: "Daemon URL (overrides the config's listen address).")
    var url: String?
    @Option(help: "host (RAM-backed directory and NVMe), nvme (NVMe only) or disk (a file on disk and NVMe).")
    var to: String = "host"
    @Flag(help: "Print the final status as one JSON object.")
    var json = false

    func run() async throws {
        guard let destination = StageDestination(rawValue: to) else {
            throw ValidationError("--to '\(to)': expected host, nvme or disk")
        }
        let base = try url ?? DaemonAddress.base(config: config)
        let interactive = isatty(STDERR_FILENO) == 1
        let lastLine = LastLine()
        // Ctrl-C (or a SIGTERM, or the terminal closing: SIGHUP) cancels the staging in the
        // daemon, then exits; a download nobody waits for would otherwise go on there.
        let stops = [SIGINT, SIGTERM, SIGHUP]
        for number in stops { signal(number, SIG_IGN) }
        let task = Task {
            try await StageClient.run(
                baseURL: base, adminKey: ProcessInfo.processInfo.environment["STRATA_ADMIN_KEY"], model: model,
                destination: destination
            ) { status, final in
                let line = StageClient.render(status)
                if interactive {
                    FileHandle.standardError.write(Data("\r\u{1B}[K\(line)\(final ? "\n" : "")".utf8))
                } else if final || lastLine.due() {
                    FileHandle.standardError.write(Data("\(line)\n".utf8))
                }
            }
        }
        let caught = LastSignal()
        let sources = stops.map { number in
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler {
                caught.set(number)
                task.cancel()
            }
            source.resume()
            return source
        }
        defer { sources.forEach { $0.cancel() } }
        do {
            let status = try await task.value
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(status), as: UTF8.self))
            }
            if status.state != .done { throw ExitCode(1) }
        } catch is CancellationError {
            FileHandle.standardError.write(Data("\nstrata: staging of \(model) cancelled\n".utf8))
            throw ExitCode(128 + (caught.get() ?? SIGINT))
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("strata: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The signal that stopped the command.
    final class LastSignal: @unchecked Sendable {
        private var number: Int32?
        private let lock = NSLock()
        func set(_ value: Int32) { lock.withLock { number = value } }
        func get() -> Int32? { lock.withLock { number } }
    }

    /// Without a terminal, a progress line every two seconds is enough.
    final class LastLine: @unchecked Sendable {
        private var last = ContinuousClock.now - .seconds(10)
        private let lock = NSLock()
        func due() -> Bool {
            lock.lock()
            defer { lock.unlock() }
            guard ContinuousClock.now - last >= .seconds(2) else { return false }
            last = .now
            return true
        }
    }
}

enum DaemonAddress {
    /// The daemon's URL from the config's listen address; with no config file where the
    /// default one would be, the default address (what `serve` listens on with no `listen`).
    static func base(config: String) throws -> String {
        if config == Strata.defaultConfig, !FileManager.default.fileExists(atPath: config) { return "http://127.0.0.1:8080" }
        let listen = try readingConfig(config) { try ConfigLoader.listenAddress(path: config) }
        let host = listen.host == "0.0.0.0" ? "127.0.0.1" : listen.host
        return "http://\(host.contains(":") ? "[\(host)]" : host):\(listen.port)"
    }
}

/// `strata bench stage`: one staging timed, in a store of its own.
struct StageBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stage",
        abstract: "Time one staging of a source (file://, http(s)://, s3://) into host RAM through the stager, in a store of its own.")

    @Option(help: "The weights: file:///path, a path, http(s)://… or s3://bucket/key.")
    var source: String
    @Option(help: "Directory of the bench's own NVMe store (created if missing; reused).")
    var dir: String
    @Option(name: .customLong("host-dir"), help: "RAM-backed directory the copy is written to.")
    var hostDir: String = "/dev/shm/strata-bench"
    @Option(help: "remote (no copy anywhere first) or nvme (the NVMe copy exists, the host copy does not).")
    var from: String = "remote"
    @Option(help: "host, disk or nvme.")
    var to: String = "host"
    @Option(help: "Concurrent range GETs for http(s) and s3 sources.")
    var parallelism: Int = 8
    @Option(name: .customLong("chunk-size"), help: "Range and chunk size.")
    var chunkSize: String = "8MiB"
    @Option(name: .customLong("queue-depth"), help: "NVMe operations in flight.")
    var queueDepth: Int = 16
    @Option(help: "Expected SHA-256 (hex); the staging fails if the bytes differ.")
    var sha256: String?
    @Option(name: .customLong("s3-endpoint"), help: "S3 endpoint for s3:// sources (else AWS_ENDPOINT_URL / AWS).")
    var s3Endpoint: String?
    @Flag(help: "Print one JSON object as the last line.")
    var json = false

    func run() async throws {
        guard let origin = StageOrigin(rawValue: from), origin != .host else {
            throw ValidationError("--from '\(from)': expected remote or nvme")
        }
        guard let destination = StageDestination(rawValue: to) else { throw ValidationError("--to '\(to)': expected host, disk or nvme") }
        if let sha256, sha256.count != 64 || !sha256.allSatisfy(\.isHexDigit) {
            throw ValidationError("--sha256 '\(sha256)': expected a SHA-256 (64 hex digits)")
        }
        let chunk = try BenchOptions.bytes(chunkSize, "chunk-size")
        guard chunk % 4096 == 0, (64 << 10...64 << 20).contains(chunk) else {
            throw ValidationError("--chunk-size must be a multiple of 4KiB from 64KiB to 64MiB")
        }
        var remote = RemoteSettings(parallelism: parallelism, chunkBytes: Int(chunk))
        remote.s3.endpoint = s3Endpoint
        try remote.validate()
        let engine = try IOEngineKind.auto.make(queueDepth: queueDepth)
        defer { engine.shutdown() }
        let benchmark = StageBenchmark(
            source: source, directory: dir, hostDirectory: hostDir, from: origin, destination: destination, remote: remote,
            queueDepth: queueDepth, sha256: sha256)
        let result = try await benchmark.run(engine: engine)
        print(String(format: "staged %@ from %@ to %@: %.1f MiB in %.3f s (%.0f MiB/s)", result.source, result.from, result.to,
                     Double(result.bytes) / 1_048_576, result.seconds, result.mib_per_s))
        if let nvme = result.nvme_seconds, let rate = result.nvme_mib_per_s {
            print(String(format: "NVMe copy written behind it, committed %.3f s after the start (%.0f MiB/s)", nvme, rate))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        }
    }
}

/// `strata bench cold-start`: time to ready and to first token from each tier, against the
/// runtime loading the same file by itself.
struct ColdStartBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cold-start",
        abstract: "Time a model's start from the remote source, NVMe (page cache dropped), host RAM and already loaded, against the runtime alone.")

    @Option(name: .shortAndLong, help: "Config file (YAML) that defines the model.")
    var config: String = Strata.defaultConfig
    @Option(help: "Model name, as in the config.")
    var model: String
    @Option(help: "Rounds; each runs every state, Strata and baseline alternating.")
    var runs: Int = 3
    @Flag(help: "Print one JSON object as the last line.")
    var json = false
    @Option(help: "Write a chart of the medians to this SVG file.")
    var plot: String?

    func run() async throws {
        let configuration = try readingConfig(config) { try ConfigLoader.load(path: config) }
        if let plot, !plot.hasSuffix(".svg") { throw ValidationError("--plot '\(plot)': the chart is SVG; name a .svg file") }
        let benchmark = try ColdStartBenchmark(
            config: configuration, modelName: model, runs: runs, logger: .init(label: "strata.bench")
        ) { line in FileHandle.standardError.write(Data("\(line)\n".utf8)) }
        let report = ColdStartReport(model: model, rows: try await benchmark.run())
        print(report.table())
        if let plot {
            try report.svg().write(toFile: plot, atomically: true, encoding: .utf8)
            print("chart: \(plot)")
        }
        if json { print(try report.json()) }
    }
}
