import AsyncHTTPClient
import Foundation
import Glibc
import Logging
import NIOCore
import TierStore

/// `strata bench cold-start`: how long a model takes to become servable from each starting
/// state, against the runtime loading the same file by itself from the same place.
///
/// States, in the order a model falls through the tiers:
/// - `remote`: the weights only at the source. Strata stages source → NVMe + host RAM, then
///   starts the runtime on the RAM copy. Baseline: the runtime on the source file with its pages
///   dropped from the page cache (for a `file://` source; none for http/s3: a runtime cannot
///   open a URL).
/// - `nvme`: the NVMe copy only (host copy dropped). Strata stages NVMe → RAM with O_DIRECT
///   reads, then starts. Baseline: the runtime on the source file, page cache dropped.
/// - `host`: the RAM copy exists. Strata starts on it. Baseline: the runtime on the source file
///   with its pages in the page cache (the best a runtime gets by itself).
/// - `loaded`: the runtime is up; only the request is timed. No baseline.
/// Every state runs Strata and its baseline one after the other, alternating which goes first,
/// for `runs` rounds; figures are medians. The bench keeps its own store under
/// `state_dir/bench-cold-start` and its own RAM directory, so a running daemon is not disturbed.
public struct ColdStartBenchmark: Sendable {
    public enum State: String, Sendable, CaseIterable, Codable {
        case remote, nvme, host, loaded
    }

    public struct Sample: Sendable, Codable, Equatable {
        public var ready: Double
        public var ttft: Double
    }

    public struct Row: Sendable, Codable, Equatable {
        public var state: State
        public var strata: [Sample]
        public var baseline: [Sample]
    }

    public let config: StrataConfiguration
    public let model: ModelConfiguration
    public let runtime: RuntimeConfiguration
    public let localPath: String
    public let runs: Int
    public let logger: Logger
    public let progress: @Sendable (String) -> Void

    public init(
        config: StrataConfiguration, modelName: String, runs: Int, logger: Logger,
        progress: @escaping @Sendable (String) -> Void
    ) throws {
        guard let model = config.models.first(where: { $0.name == modelName }) else {
            throw BenchError("no model '\(modelName)' in the config (defined: \(config.models.map(\.name).joined(separator: ", ")))")
        }
        guard case .managed(let runtimeName, let localPath, _) = model.serving, let runtime = config.runtimes[runtimeName] else {
            throw BenchError("'\(modelName)' is not a model Strata starts (it needs a runtime and a source)")
        }
        guard runs >= 1 else { throw BenchError("--runs must be at least 1") }
        self.config = config
        self.model = model
        self.runtime = runtime
        self.localPath = localPath
        self.runs = runs
        self.logger = logger
        self.progress = progress
    }

    public func run() async throws -> [Row] {
        let root = config.stateDirectory + "/bench-cold-start"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let engine = try config.tiers.engine.make(queueDepth: config.tiers.queueDepth)
        defer { engine.shutdown() }
        let log = try await SegmentLog.open(
            .init(directory: root + "/nvme", segmentBytes: config.tiers.nvme.segmentBytes, budgetBytes: UInt64.max / 2),
            engine: engine)
        let objects = try await ObjectStore.open(log: log, queueDepth: min(config.tiers.queueDepth, 16))
        let host = try StagedFiles(directory: config.tiers.host.directory + "-bench")
        let stager = WeightStager(
            objects: objects, remote: RemoteClient(settings: config.tiers.remote), host: host,
            disk: try StagedFiles(directory: root + "/weights"), logger: logger)
        defer { host.remove(model.name) }
        let probe = RuntimeProbe(config: config, model: model, runtime: runtime, client: HTTPClient.shared)

        var rows = State.allCases.map { Row(state: $0, strata: [], baseline: []) }
        let request = StageRequest(name: model.name, source: model.source, sha256: model.sha256, destination: .host)
        for round in 0..<runs {
            for (index, state) in State.allCases.enumerated() {
                let baselineFirst = (round + index) % 2 == 1
                for side in baselineFirst ? [true, false] : [false, true] {
                    if side {
                        guard let sample = try await baseline(state, probe: probe) else { continue }
                        rows[index].baseline.append(sample)
                        progress(String(format: "round %d %@ baseline: ready %.2fs, ttft %.3fs", round + 1, state.rawValue, sample.ready, sample.ttft))
                    } else {
                        let sample = try await strata(state, probe: probe, stager: stager, objects: objects, request: request)
                        rows[index].strata.append(sample)
                        progress(String(format: "round %d %@ strata: ready %.2fs, ttft %.3fs", round + 1, state.rawValue, sample.ready, sample.ttft))
                    }
                }
            }
        }
        await log.close()
        return rows
    }

    private func strata(
        _ state: State, probe: RuntimeProbe, stager: WeightStager, objects: ObjectStore, request: StageRequest
    ) async throws -> Sample {
        // Set the starting state up, untimed.
        switch state {
        case .remote:
            // An NVMe copy still being written behind the last RAM copy would commit after the
            // removal and make this state a warm one: let it finish first.
            _ = try? await stager.nvmeCopyWritten(model.name)
            await stager.releaseHost(model.name)
            try await objects.remove(model.name)
        case .nvme:
            _ = try await stager.stage(StageRequest(name: model.name, source: model.source, sha256: model.sha256, destination: .nvme))
            await stager.releaseHost(model.name)
        case .host, .loaded:
            _ = try await stager.stage(request)
        }
        if state == .loaded {
            let path = try await stager.stage(request).path!
            let running = try await probe.start(path: path)
            defer { running.stop() }
            return Sample(ready: 0, ttft: try await probe.timeToFirstToken(running))
        }
        let started = ContinuousClock.now
        let staged = try await stager.stage(request)
        guard let path = staged.path else { throw BenchError("staging gave no file") }
        let running = try await probe.start(path: path)
        defer { running.stop() }
        let ready = (ContinuousClock.now - started).seconds
        return Sample(ready: ready, ttft: try await probe.timeToFirstToken(running))
    }

    /// The runtime by itself on the source file; nil where there is no such baseline.
    private func baseline(_ state: State, probe: RuntimeProbe) async throws -> Sample? {
        guard state != .loaded, !localPath.isEmpty else { return nil }
        switch state {
        case .remote, .nvme: try PageCache.drop(localPath)
        case .host: try PageCache.warm(localPath)
        case .loaded: break
        }
        let started = ContinuousClock.now
        let running = try await probe.start(path: localPath)
        defer { running.stop() }
        let ready = (ContinuousClock.now - started).seconds
        return Sample(ready: ready, ttft: try await probe.timeToFirstToken(running))
    }

    public struct BenchError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }
}

/// The page cache's copy of one file: dropped (its clean pages evicted) or warmed (read once).
enum PageCache {
    static func drop(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        fdatasync(fd)
        let rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        guard rc == 0 else { throw IOError(operation: "posix_fadvise(DONTNEED) \(path)", errno: rc) }
    }

    static func warm(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while buffer.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
    }
}

/// Starts a runtime on a weights file and times it: ready (health answers) and the first token.
struct RuntimeProbe: Sendable {
    let config: StrataConfiguration
    let model: ModelConfiguration
    let runtime: RuntimeConfiguration
    let client: HTTPClient

    struct Running: Sendable {
        let process: RuntimeProcess
        func stop() {
            process.signalGroup(SIGKILL)
            var status: Int32 = 0
            waitpid(process.pid, &status, 0)
        }
    }

    func start(path: String) async throws -> Running {
        guard case .managed(_, _, let modelArgs) = model.serving else { throw ColdStartBenchmark.BenchError("not managed") }
        let port = try RuntimeProcess.freePort()
        let argv = ModelController.commandLine(runtime: runtime, model: model.name, modelPath: path, modelArgs: modelArgs, port: port)
        var environment = ProcessInfo.processInfo.environment
        environment.merge(runtime.environment) { $1 }
        let process = try RuntimeProcess.spawn(
            argv: argv, environment: environment, port: port, logPath: config.stateDirectory + "/bench-cold-start/\(model.name).log")
        let running = Running(process: process)
        let deadline = ContinuousClock.now + config.supervisor.loadTimeout
        while ContinuousClock.now < deadline {
            if RuntimeProcess.portAccepts(port) {
                var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(runtime.healthPath)")
                request.method = .GET
                if let response = try? await client.execute(request, timeout: .seconds(2)) {
                    _ = try? await response.body.collect(upTo: 1 << 20)
                    if response.status == .ok { return running }
                }
            }
            if kill(process.pid, 0) != 0 {
                throw ColdStartBenchmark.BenchError("the runtime exited while loading; log: \(process.logTail())")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        running.stop()
        throw ColdStartBenchmark.BenchError("the runtime was not ready within \(config.supervisor.loadTimeout); log: \(process.logTail())")
    }

    /// A fixed chat request, streamed; the time until its first chunk of content.
    func timeToFirstToken(_ running: Running) async throws -> Double {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(running.process.port)/v1/chat/completions")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        let body: [String: Any] = [
            "model": model.name, "stream": true, "max_tokens": 8, "temperature": 0,
            "messages": [["role": "user", "content": "Name the capital of France in one word."]],
        ]
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        let started = ContinuousClock.now
        let response = try await client.execute(request, timeout: .seconds(120))
        guard response.status == .ok else { throw ColdStartBenchmark.BenchError("the runtime answered \(response.status.code)") }
        var pending = ""
        for try await chunk in response.body {
            pending += String(buffer: chunk)
            while let newline = pending.firstIndex(of: "\n") {
                let line = pending[..<newline]
                pending = String(pending[pending.index(after: newline)...])
                if Self.carriesContent(line) { return (ContinuousClock.now - started).seconds }
            }
        }
        throw ColdStartBenchmark.BenchError("the runtime's answer ended without any content")
    }

    /// Whether an SSE line is a chunk with generated text (not the role-only first delta).
    static func carriesContent(_ line: Substring) -> Bool {
        guard line.hasPrefix("data: "), let json = line.dropFirst(6).data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any],
            let choice = (object["choices"] as? [[String: Any]])?.first,
            let delta = choice["delta"] as? [String: Any], let content = delta["content"] as? String
        else { return false }
        return !content.isEmpty
    }
}
