import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import StrataDaemon
import TierStore

@main
struct Strata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "One OpenAI-compatible endpoint for the models on this machine.",
        version: "strata 0.1.0",
        subcommands: [Serve.self, Config.self, Status.self, Stage.self, Bench.self])

    static func main() async {
        // STRATA_EXECUTOR=nio runs Swift concurrency's jobs on NIO's event loops instead of a
        // pool of their own (fewer thread changes on the gateway's general path). Off by
        // default: it did not change the gateway's measured latency, and one KV benchmark run
        // with it was lower at 64 KiB (within this VM's noise, but no gain to pay for the risk).
        if ProcessInfo.processInfo.environment["STRATA_EXECUTOR"] == "nio" {
            _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        }
        // Parsed, then run here rather than by `main()`: a bad option value that a command finds
        // while it runs (`--to ram`) prints that command's usage, not the root's.
        var command: any ParsableCommand
        do {
            command = try parseAsRoot(nil)
        } catch {
            exit(withError: error)
        }
        do {
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch let error as ValidationError {
            let usage = usageString(for: type(of: command))
            let path = usage.split(separator: " ").prefix { !"<[-".contains($0.first ?? "-") }.joined(separator: " ")
            FileHandle.standardError.write(Data("Error: \(error.message)\nUsage: \(usage)\n  See '\(path) --help' for more information.\n".utf8))
            exit(withError: ExitCode(64))
        } catch {
            exit(withError: error)
        }
    }

    /// The config file every command reads when none is given (the one `make run` serves).
    static let defaultConfig = "config/strata.yaml"
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground.")

    @Option(name: .shortAndLong, help: "Config file (YAML).")
    var config: String = Strata.defaultConfig

    func run() async throws {
        MallocSettings.apply()
        let configuration = try readingConfig(config) { try ConfigLoader.load(path: config) }
        let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
            .seconds(10), .seconds(30), .seconds(60), .seconds(120),
        ]
        // The one value histogram: a fraction (0...1), which the default buckets (5 to 10,000) would put all in the first.
        factory.valueHistogramBuckets["strata_route_matched_fraction"] = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1]
        MetricsSystem.bootstrap(factory)
        let logger = Logger(label: "strata")
        // What stops the daemon at start, as one line: which key of the config, and why.
        func fail(_ error: any Error) -> ExitCode {
            FileHandle.standardError.write(Data("strata: \(config): \(error)\n".utf8))
            return ExitCode(1)
        }
        do {
            try await Daemon.run(config: configuration, configPath: config, logger: logger, renderMetrics: { registry.emitToString() })
        } catch let error as NIOCore.IOError where error.errnoCode == EADDRINUSE {
            // (The RESP server says so itself; this is the HTTP server's.)
            throw fail(AddressInUse(key: "listen", address: "\(configuration.listen)"))
        } catch where error is AddressInUse || error is DirectoryLock.InUse || error is DirectoryLock.CannotLock {
            throw fail(error)
        }
    }
}

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with config files.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config file and print what it sets up.")

        @Argument(help: "Config file (YAML); the default is config/strata.yaml, as for serve.")
        var file: String?

        @Option(name: .shortAndLong, help: "Config file (YAML), as serve takes it; instead of <file>.")
        var config: String?

        mutating func validate() throws {
            if file != nil, config != nil {
                throw ValidationError("Give the config file once: as <file> or as --config, not both.")
            }
        }

        func run() throws {
            let file = file ?? config ?? Strata.defaultConfig
            let config = try readingConfig(file) { try ConfigLoader.load(path: file) }
            print(ConfigSummary.render(config))
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the models of a running daemon and their state.")

    @Option(name: .shortAndLong, help: "Config file, to find the daemon's address.")
    var config: String = Strata.defaultConfig

    @Option(help: "Daemon URL (overrides the config's listen address).")
    var url: String?

    @Flag(help: "Print the raw JSON.")
    var json = false

    func run() async throws {
        let base = try url ?? DaemonAddress.base(config: config)
        do {
            let output = try await StatusClient.fetch(
                baseURL: base, adminKey: ProcessInfo.processInfo.environment["STRATA_ADMIN_KEY"], json: json)
            print(output)
        } catch {
            FileHandle.standardError.write(Data("strata: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure parts of Strata.", subcommands: [IOBench.self, StoreBench.self, StageBench.self, ColdStartBench.self])
}

struct IOBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "io",
        abstract: "Measure an I/O engine on one file, as fio would (same block size and queue depth).")

    @Option(help: "File to read or write; created with data when missing or shorter than --size.")
    var file: String
    @Option(help: "Bytes to cover (KiB/MiB/GiB suffixes).")
    var size: String = "1GiB"
    @Option(name: .customLong("block-size"), help: "Bytes per operation.")
    var blockSize: String = "1MiB"
    @Option(name: .customLong("queue-depth"), help: "Operations in flight at once.")
    var queueDepth: Int = 16
    @Option(help: "seq-read, rand-read or seq-write.")
    var pattern: String = "seq-read"
    @Option(help: "io_uring, psync or auto.")
    var engine: String = "auto"
    @Flag(name: .customLong("buffered"), help: "Go through the page cache instead of O_DIRECT.")
    var buffered = false
    @Flag(help: "Print one JSON object as the last line.")
    var json = false

    func run() async throws {
        guard let pattern = IOBenchmark.Pattern(rawValue: pattern) else {
            throw ValidationError("--pattern '\(pattern)': expected seq-read, rand-read or seq-write")
        }
        let (kind, block, total) = try BenchOptions.validate(
            engine: engine, blockSize: blockSize, size: size, queueDepth: queueDepth, aligned: !buffered)
        let benchmark = IOBenchmark(
            path: file, fileSize: total, blockSize: block, queueDepth: queueDepth, pattern: pattern, direct: !buffered)
        let engine = try kind.make(queueDepth: queueDepth)
        defer { engine.shutdown() }
        if pattern != .seqWrite { try await benchmark.prepare(engine: engine) }
        BenchOptions.report(try await benchmark.run(engine: engine), json: json)
    }
}

struct StoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Measure the store through its own API: block puts, verified random gets, whole-object sequential reads, host-tier gets.")

    @Option(help: "Directory of the block log (created if missing; reused between runs).")
    var dir: String
    @Option(help: "put, rand-get, seq-read (NVMe log; seq-read streams one object of --size in --block-size chunks, imported into --dir on the first run and reused after) or host-get (host tier, against memcpy).")
    var pattern: String = "rand-get"
    @Option(help: "Bytes to put, or to fill and read (KiB/MiB/GiB suffixes).")
    var size: String = "1GiB"
    @Option(name: .customLong("block-size"), help: "Bytes per block.")
    var blockSize: String = "256KiB"
    @Option(name: .customLong("queue-depth"), help: "Operations in flight at once.")
    var queueDepth: Int = 32
    @Option(help: "io_uring, psync or auto.")
    var engine: String = "auto"
    @Flag(help: "Print one JSON object as the last line.")
    var json = false

    func run() async throws {
        guard let pattern = StoreBenchmark.Pattern(rawValue: pattern) else {
            throw ValidationError("--pattern '\(pattern)': expected put, rand-get, seq-read or host-get")
        }
        let (kind, block, total) = try BenchOptions.validate(
            engine: engine, blockSize: blockSize, size: size, queueDepth: queueDepth, aligned: false)
        let engine = try kind.make(queueDepth: queueDepth)
        defer { engine.shutdown() }
        let benchmark = StoreBenchmark(directory: dir, totalBytes: total, blockSize: block, queueDepth: queueDepth, pattern: pattern)
        BenchOptions.report(try await benchmark.run(engine: engine), json: json)
    }
}

/// Checks and output shared by the bench commands.
enum BenchOptions {
    static func bytes(_ text: String, _ name: String) throws -> UInt64 {
        switch ConfigUnits.parseSize(text) {
        case .success(let value) where value > 0: return value
        case .success: throw ValidationError("--\(name) must be more than zero")
        case .failure(let why): throw ValidationError("--\(name) '\(text)': \(why)")
        }
    }

    static func validate(engine: String, blockSize: String, size: String, queueDepth: Int, aligned: Bool) throws
        -> (IOEngineKind, Int, UInt64)
    {
        guard let kind = IOEngineKind(rawValue: engine) else {
            throw ValidationError("--engine '\(engine)': expected io_uring, psync or auto")
        }
        guard (1...4096).contains(queueDepth) else { throw ValidationError("--queue-depth must be 1...4096") }
        let block = try bytes(blockSize, "block-size")
        guard block <= 1 << 30 else { throw ValidationError("--block-size must be at most 1GiB") }
        guard block % 4096 == 0 || !aligned else {
            throw ValidationError("--block-size must be a multiple of 4KiB for O_DIRECT (or pass --buffered)")
        }
        let total = try bytes(size, "size")
        guard total >= block else { throw ValidationError("--size must be at least --block-size") }
        return (kind, Int(block), total)
    }

    static func report(_ result: IOBenchmark.Result, json: Bool) {
        print(String(format: "%@ %@ bs=%@ qd=%d: %.1f MiB/s, %.0f IOPS, p50 %.0f us, p99 %.0f us",
                     result.engine, result.pattern, ConfigUnits.formatBytes(UInt64(result.block_size)), result.queue_depth,
                     result.bytes_per_second / 1048576, result.iops, result.p50_us, result.p99_us))
        if let baseline = result.baseline_p50_us {
            print(String(format: "  baseline (memcpy of the same size): p50 %.1f us", baseline))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: (try? encoder.encode(result)) ?? Data(), as: UTF8.self))
        }
    }
}

/// What `read` makes of the config file `file`; a problem in it is said as every command says it
/// (`strata: FILE: config: …`, each problem on its line) and the command exits 2.
func readingConfig<T>(_ file: String, _ read: () throws -> T) throws -> T {
    do {
        return try read()
    } catch let error as ConfigError {
        FileHandle.standardError.write(Data(error.report(prefix: "strata: \(file)").utf8))
        throw ExitCode(2)
    }
}
