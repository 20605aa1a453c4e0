import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import StrataDaemon

@main
struct Strata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "One OpenAI-compatible endpoint for the models on this machine.",
        subcommands: [Serve.self, Config.self, Status.self])
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground.")

    @Option(name: .shortAndLong, help: "Config file (YAML).")
    var config: String = "config/strata.yaml"

    func run() async throws {
        let configuration: StrataConfiguration
        do {
            configuration = try ConfigLoader.load(path: config)
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("strata: \(config): \(error)\n".utf8))
            throw ExitCode(2)
        }
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
        MetricsSystem.bootstrap(factory)
        let logger = Logger(label: "strata")
        try await Daemon.run(config: configuration, logger: logger, renderMetrics: { registry.emitToString() })
    }
}

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with config files.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config file and print what it sets up.")

        @Argument(help: "Config file (YAML).")
        var file: String

        func run() throws {
            do {
                let config = try ConfigLoader.load(path: file)
                print(ConfigSummary.render(config))
            } catch let error as ConfigError {
                FileHandle.standardError.write(Data("strata: \(file): \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the models of a running daemon and their state.")

    @Option(name: .shortAndLong, help: "Config file, to find the daemon's address.")
    var config: String = "config/strata.yaml"

    @Option(help: "Daemon URL (overrides the config's listen address).")
    var url: String?

    @Flag(help: "Print the raw JSON.")
    var json = false

    func run() async throws {
        let base: String
        if let url {
            base = url
        } else {
            let configuration = try ConfigLoader.load(path: config)
            let host = configuration.listen.host == "0.0.0.0" ? "127.0.0.1" : configuration.listen.host
            base = "http://\(host.contains(":") ? "[\(host)]" : host):\(configuration.listen.port)"
        }
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
