import Foundation
import Placer
import TierStore
import Yams

/// Reads the config file once into typed, validated structs.
public enum ConfigLoader {
    /// `gpus`: what NVML found (default: asks it now); it shapes the default `devices`.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment,
        gpus: GPUDiscovery.Outcome? = nil
    ) throws -> StrataConfiguration {
        let text = try contents(of: path)
        // A file caught empty (an editor or a copy part way through writing it) would otherwise
        // be every default: on a reload, no models at all.
        let settings = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") && $0 != "---" }
        guard !settings.isEmpty else {
            throw ConfigError(key: "", line: nil, message: "\(path) holds no settings (empty, or only comments): "
                + "it is not taken as every default; write at least one key (for no models, `models: []`)")
        }
        return try parse(yaml: text, environment: environment, gpus: gpus ?? GPUDiscovery.discover())
    }

    /// Only the `listen` address of the config at `path` (the default where it has none), for
    /// the commands that talk to a running daemon: they need no tenant's keys, no runtime, no
    /// model to be valid here.
    public static func listenAddress(path: String, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> ListenAddress
    {
        let text = try contents(of: path)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw yamlProblem(error, in: text)
        }
        guard case .mapping(let top)? = root, let node = top["listen"] else { return ListenAddress(host: "127.0.0.1", port: 8080) }
        return try listenAddress(ConfigReader(environment: environment), node)
    }

    /// The config file's text, or why it cannot be read.
    static func contents(of path: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(key: "", line: nil, message: "cannot read the file: " + unreadable(path))
        }
    }

    /// Why `path` cannot be read, in words (Foundation's are "The operation could not be completed").
    static func unreadable(_ path: String) -> String {
        var isDirectory: ObjCBool = false
        let relative = path.hasPrefix("/") ? "" : " (relative to the working directory \(FileManager.default.currentDirectoryPath))"
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) { return "no such file" + relative }
        if isDirectory.boolValue { return "it is a directory" }
        if !FileManager.default.isReadableFile(atPath: path) { return "permission denied" }
        return "it is not UTF-8 text"
    }

    public static func parse(
        yaml: String, environment: [String: String], gpus: GPUDiscovery.Outcome = .noDriver("not asked")
    ) throws -> StrataConfiguration {
        let root: Node
        do {
            root = try Yams.compose(yaml: yaml) ?? .mapping([:])
        } catch let error as YamlError {
            throw yamlProblem(error, in: yaml)
        } catch {
            throw ConfigError(key: "", line: nil, message: "not valid YAML: \(error)")
        }
        if case .scalar(let scalar) = root, scalar.string.isEmpty {
            return try parse(root: .mapping([:]), environment: environment, gpus: gpus)
        }
        return try parse(root: root, environment: environment, gpus: gpus)
    }

    /// A YAML syntax error on one line, at the place it names (Yams's own text spans several
    /// lines, and for a repeated key quotes the whole file and points at the key's first use).
    static func yamlProblem(_ error: YamlError, in yaml: String) -> ConfigError {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let during = context.map { " (\($0.text) at line \($0.mark.line), column \($0.mark.column))" } ?? ""
            return ConfigError(key: "", line: mark.line, message: "not valid YAML at column \(mark.column): \(problem)\(during)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let key = duplicates.first ?? ""
            let lines = yaml.split(separator: "\n", omittingEmptySubsequences: false)
            // The next use of the key at the same indentation is the repeat (a mapping's keys
            // are contiguous); a flow mapping repeats it on the same line.
            let first = context.mark.line
            let indent = String(repeating: " ", count: max(0, context.mark.column - 1))
            let again = lines.indices.dropFirst(first).first { index in
                let line = lines[index]
                return line.hasPrefix(indent + key + ":") || line.hasPrefix(indent + "\"\(key)\":") || line.hasPrefix(indent + "'\(key)':")
            }.map { $0 + 1 }
            let others = duplicates.count > 1 ? " (and \(duplicates.dropFirst().map { "'\($0)'" }.joined(separator: ", ")))" : ""
            return ConfigError(
                key: "", line: again ?? first,
                message: "key '\(key)'\(others) appears more than once in one mapping (first at line \(first)); each key may appear once")
        default:
            return ConfigError(key: "", line: nil, message: "not valid YAML: \(error)")
        }
    }

    static func parse(root: Node, environment: [String: String], gpus: GPUDiscovery.Outcome) throws -> StrataConfiguration {
        let reader = ConfigReader(environment: environment)
        let top = try reader.mapping(
            root, at: "",
            allowed: ["listen", "log_level", "state_dir", "auth", "gateway", "supervisor", "tiers", "routing", "kv",
                      "devices", "runtimes", "models", "tenants"], extensions: true)

        var config = StrataConfiguration(
            listen: ListenAddress(host: "127.0.0.1", port: 8080),
            logLevel: "info",
            stateDirectory: "./var/strata",
            auth: AuthConfiguration(apiKeys: [], adminKey: nil),
            gateway: GatewayLimits(maxBodyBytes: 32 << 20, upstreamTimeout: .seconds(600), cancelOnDisconnect: true),
            supervisor: SupervisorSettings(
                loadTimeout: .seconds(120), queueTimeout: .seconds(120), stopTimeout: .seconds(10), maxQueued: 256,
                restartBackoff: .seconds(1), restartBackoffMax: .seconds(30), healthInterval: .milliseconds(25)),
            tiers: TierConfiguration(),
            routing: RoutingSettings(),
            devices: [],
            runtimes: [:],
            models: [])

        // Each section is checked even when one before it failed, so that a file's problems are
        // named together; a section that reads another (models: devices and runtimes; tenants:
        // auth) is skipped when that one failed, as its errors would only echo the first.
        // Within a section, keys nothing else depends on are each checked too (`reader.each`),
        // and unknown keys are noted while the known ones are read.
        var problems: [ConfigError] = []
        func check(_ section: () throws -> Void) -> Bool {
            let noted = reader.noted.problems.count
            do {
                try section()
                return reader.noted.problems.count == noted
            } catch let error as ConfigError {
                problems += error.all
            } catch {
                problems.append(ConfigError(key: "", line: nil, message: "\(error)"))
            }
            return false
        }
        _ = check { if let node = top["listen"] { config.listen = try listenAddress(reader, node) } }
        _ = check {
            guard let node = top["log_level"] else { return }
            let level = try reader.string(node, at: "log_level")
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            guard levels.contains(level) else {
                throw reader.fail("log_level", node, "'\(level)' is not a log level (expected one of: \(levels.joined(separator: ", ")))")
            }
            config.logLevel = level
        }
        _ = check { if let node = top["state_dir"] { config.stateDirectory = try reader.path(node, at: "state_dir") } }
        let authRead = check { config.auth = try auth(reader, top["auth"]) }
        _ = check { if let node = top["gateway"] { config.gateway = try gateway(reader, node, defaults: config.gateway) } }
        _ = check { if let node = top["supervisor"] { config.supervisor = try supervisor(reader, node, defaults: config.supervisor) } }
        _ = check { if let node = top["tiers"] { config.tiers = try tiers(reader, node) } }
        _ = check {
            guard let node = top["kv"] else { return }
            config.kv = try kv(reader, node)
            // A value is stored in parts of 4 MiB, each a record of the NVMe log with its header.
            let part = TierKVBackend.defaultPartBytes + 4096
            if config.kv.resp != nil, config.tiers.nvme.budgetBytes > 0, config.tiers.nvme.segmentBytes < part {
                let node = (top["tiers"].flatMap { $0.mapping?["nvme"] }?.mapping?["segment_size"]) ?? node
                throw reader.fail("tiers.nvme.segment_size", node,
                    "\(ConfigUnits.formatBytes(UInt64(config.tiers.nvme.segmentBytes))) cannot hold a part of a KV value "
                        + "(4MiB and a record header); expected at least 5MiB with kv on (a larger tiers.nvme.budget gives larger segments)")
            }
        }
        _ = check { if let node = top["routing"] { config.routing = try routing(reader, node) } }
        var devicesListed = false
        _ = check {
            config.devices = try devices(reader, top["devices"], gpus: gpus.gpus)
            devicesListed = true
        }
        config.gpuDiscovery = gpus
        config.hasModelsSection = top["models"] != nil
        // (A runtime with a problem is noted and stands in as a placeholder: the models are
        // still checked unless the section as a whole could not be read.)
        var runtimesListed = false
        _ = check {
            config.runtimes = try runtimes(reader, top["runtimes"], environment: environment)
            runtimesListed = true
        }
        if devicesListed && runtimesListed { _ = check { config.models = try models(reader, top["models"], config: config) } }
        if authRead { _ = check { config.tenants = try tenants(reader, top["tenants"], auth: config.auth) } }
        problems += reader.noted.problems
        // In file order (a problem with no line, such as a missing key at the top, first).
        let ordered = problems.enumerated().sorted { ($0.element.line ?? 0, $0.offset) < ($1.element.line ?? 0, $1.offset) }
        if let error = ConfigError(all: ordered.map(\.element)) { throw error }
        return config
    }

    static func gateway(_ reader: ConfigReader, _ node: Node, defaults: GatewayLimits) throws -> GatewayLimits {
        var gateway = defaults
        let map = try reader.mapping(node, at: "gateway", allowed: ["max_body", "upstream_timeout", "cancel_on_disconnect", "event_loop_relay", "idle_timeout", "drain_timeout", "cors_origins"])
        reader.each {
            if let value = map["max_body"] {
                let bytes = try reader.size(value, at: "gateway.max_body")
                guard bytes >= 1024, bytes <= 1 << 32 else {
                    throw reader.fail("gateway.max_body", value, "must be between 1KiB and 4GiB")
                }
                gateway.maxBodyBytes = Int(bytes)
            }
        }
        reader.each { if let v = map["cancel_on_disconnect"] { gateway.cancelOnDisconnect = try reader.bool(v, at: "gateway.cancel_on_disconnect") } }
        reader.each { if let v = map["event_loop_relay"] { gateway.relayOnEventLoop = try reader.bool(v, at: "gateway.event_loop_relay") } }
        reader.each { if let v = map["upstream_timeout"] { gateway.upstreamTimeout = try reader.duration(v, at: "gateway.upstream_timeout") } }
        reader.each {
            if let v = map["cors_origins"] {
                let origins = try reader.strings(v, at: "gateway.cors_origins")
                for (i, origin) in origins.enumerated() where origin != "*" && !origin.contains("://") {
                    throw reader.fail("gateway.cors_origins[\(i)]", v,
                        "'\(origin)' is not an origin (expected scheme://host[:port], * for any run of characters, or * alone)")
                }
                gateway.corsOrigins = origins
            }
        }
        reader.each { if let v = map["drain_timeout"] { gateway.drainTimeout = try reader.duration(v, at: "gateway.drain_timeout") } }
        reader.each {
            if let value = map["idle_timeout"] {
                let timeout = try reader.duration(value, at: "gateway.idle_timeout")
                guard timeout >= .seconds(1) else {
                    throw reader.fail("gateway.idle_timeout", value, "'\(try reader.string(value, at: "gateway.idle_timeout"))' must be at least 1s")
                }
                gateway.idleTimeout = timeout
            }
        }
        return gateway
    }

    static func listenAddress(_ reader: ConfigReader, _ node: Node, at key: String = "listen") throws -> ListenAddress {
        let text = try reader.string(node, at: key)
        let expected = "expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080"
        var host: Substring
        let portText: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { throw reader.fail(key, node, "'\(text)': \(expected)") }
            portText = after.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            throw reader.fail(key, node, "'\(text)': \(expected)")
        }
        if host.isEmpty { host = "127.0.0.1" }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw reader.fail(key, node, "'\(text)': port must be 1...65535 (\(expected))")
        }
        return ListenAddress(host: String(host), port: port)
    }

    static func auth(_ reader: ConfigReader, _ node: Node?) throws -> AuthConfiguration {
        var keysEnv = "STRATA_API_KEYS"
        var adminEnv = "STRATA_ADMIN_KEY"
        if let node {
            let map = try reader.mapping(node, at: "auth", allowed: ["api_keys_env", "admin_key_env"])
            reader.each { if let value = map["api_keys_env"] { keysEnv = try reader.string(value, at: "auth.api_keys_env") } }
            reader.each { if let value = map["admin_key_env"] { adminEnv = try reader.string(value, at: "auth.admin_key_env") } }
        }
        let keys = (reader.environment[keysEnv] ?? "")
            .split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" })
            .map(String.init)
        let admin = reader.environment[adminEnv].flatMap { $0.isEmpty ? nil : $0 }
        return AuthConfiguration(apiKeys: Set(keys), adminKey: admin)
    }

    static func supervisor(_ reader: ConfigReader, _ node: Node, defaults: SupervisorSettings) throws
        -> SupervisorSettings
    {
        var settings = defaults
        let map = try reader.mapping(
            node, at: "supervisor",
            allowed: ["load_timeout", "queue_timeout", "stop_timeout", "max_queued", "restart_backoff",
                      "restart_backoff_max", "health_interval", "liveness_interval", "hang_timeout"])
        reader.each { if let v = map["load_timeout"] { settings.loadTimeout = try reader.duration(v, at: "supervisor.load_timeout") } }
        reader.each { if let v = map["queue_timeout"] { settings.queueTimeout = try reader.duration(v, at: "supervisor.queue_timeout") } }
        reader.each { if let v = map["stop_timeout"] { settings.stopTimeout = try reader.duration(v, at: "supervisor.stop_timeout") } }
        reader.each { if let v = map["max_queued"] { settings.maxQueued = try reader.integer(v, at: "supervisor.max_queued", range: 1...100_000) } }
        reader.each { if let v = map["restart_backoff"] { settings.restartBackoff = try reader.duration(v, at: "supervisor.restart_backoff") } }
        reader.each {
            if let v = map["restart_backoff_max"] {
                settings.restartBackoffMax = try reader.duration(v, at: "supervisor.restart_backoff_max")
            }
        }
        reader.each { if let v = map["health_interval"] { settings.healthInterval = try reader.duration(v, at: "supervisor.health_interval") } }
        reader.each {
            if let v = map["liveness_interval"] { settings.livenessInterval = try reader.duration(v, at: "supervisor.liveness_interval", orZero: true) }
        }
        reader.each { if let v = map["hang_timeout"] { settings.hangTimeout = try reader.duration(v, at: "supervisor.hang_timeout", orZero: true) } }
        if settings.hangTimeout > .zero, settings.livenessInterval == .zero {
            throw reader.fail("supervisor.hang_timeout", map["hang_timeout"] ?? map["liveness_interval"],
                              "needs liveness_interval above 0s (nothing would notice the hang); set hang_timeout: 0s too")
        }
        // Two probes must fail (each waits up to its 2 s timeout) before the silence can count:
        // a runtime is taken out of routing before it is killed, never killed for one miss.
        let least = settings.livenessInterval * 2 + HealthProbe.timeout * 2
        if settings.hangTimeout > .zero, settings.hangTimeout < least {
            throw reader.fail("supervisor.hang_timeout", map["hang_timeout"] ?? map["liveness_interval"],
                              "must be at least twice liveness_interval plus two probes' 2s timeouts (\(least)), or 0s for never")
        }
        guard settings.restartBackoffMax >= settings.restartBackoff else {
            throw reader.fail("supervisor.restart_backoff_max", map["restart_backoff_max"], "must be at least restart_backoff")
        }
        return settings
    }

    static func tiers(_ reader: ConfigReader, _ node: Node) throws -> TierConfiguration {
        let map = try reader.mapping(node, at: "tiers", allowed: ["host", "nvme", "remote", "engine", "queue_depth"])
        var tiers = TierConfiguration()
        func choice<T: CaseIterable & CustomStringConvertible>(_ node: Node?, at key: String) throws -> T? {
            guard let node else { return nil }
            let text = try reader.string(node, at: key)
            guard let value = T.named(text) else { throw reader.fail(key, node, "'\(text)' is not one of \(T.names)") }
            return value
        }
        if let node = map["host"] {
            let fields = try reader.mapping(
                node, at: "tiers.host", allowed: ["dir", "budget", "admission", "eviction", "codec", "weights_budget"])
            reader.each { if let v = fields["weights_budget"] { tiers.host.weightsBudgetBytes = try reader.size(v, at: "tiers.host.weights_budget") } }
            reader.each { tiers.host.codec = try choice(fields["codec"], at: "tiers.host.codec") ?? tiers.host.codec }
            reader.each { if let v = fields["dir"] { tiers.host.directory = try reader.path(v, at: "tiers.host.dir") } }
            reader.each { if let v = fields["budget"] { tiers.host.budgetBytes = try reader.size(v, at: "tiers.host.budget") } }
            reader.each { tiers.host.admission = try choice(fields["admission"], at: "tiers.host.admission") ?? tiers.host.admission }
            reader.each { tiers.host.eviction = try choice(fields["eviction"], at: "tiers.host.eviction") ?? tiers.host.eviction }
            guard tiers.host.budgetBytes > 0 else { throw reader.fail("tiers.host.budget", fields["budget"], "must be more than zero") }
        }
        if let node = map["nvme"] {
            let fields = try reader.mapping(
                node, at: "tiers.nvme", allowed: ["dir", "budget", "admission", "codec", "segment_size", "weights_reserve"])
            reader.each { if let v = fields["dir"] { tiers.nvme.directory = try reader.path(v, at: "tiers.nvme.dir") } }
            reader.each { if let v = fields["budget"] { tiers.nvme.budgetBytes = try reader.size(v, at: "tiers.nvme.budget") } }
            reader.each { tiers.nvme.admission = try choice(fields["admission"], at: "tiers.nvme.admission") ?? tiers.nvme.admission }
            reader.each { tiers.nvme.codec = try choice(fields["codec"], at: "tiers.nvme.codec") ?? tiers.nvme.codec }
            reader.each {
                if let v = fields["segment_size"] {
                    let size = try reader.size(v, at: "tiers.nvme.segment_size")
                    guard size >= 1 << 20, size <= 4 << 30, size % 4096 == 0 else {
                        throw reader.fail("tiers.nvme.segment_size", v, "expected a multiple of 4KiB from 1MiB to 4GiB")
                    }
                    tiers.nvme.segmentBytes = Int(size)
                    // Reclaim frees whole segments: a log of one segment would reclaim the one
                    // being written.
                    guard tiers.nvme.budgetBytes >= 2 * size else {
                        throw reader.fail("tiers.nvme.segment_size", v,
                            "\(ConfigUnits.formatBytes(size)) leaves fewer than 2 segments in tiers.nvme.budget (\(ConfigUnits.formatBytes(tiers.nvme.budgetBytes))); expected at most half the budget")
                    }
                } else {
                    // Default 256 MiB, smaller for small budgets (at least 4 segments, whole MiB).
                    let quarter = tiers.nvme.budgetBytes / 4 / (1 << 20) * (1 << 20)
                    tiers.nvme.segmentBytes = Int(max(1 << 20, min(UInt64(256 << 20), quarter)))
                }
            }
            guard tiers.nvme.budgetBytes >= 2 << 20 else {
                throw reader.fail("tiers.nvme.budget", fields["budget"], "must be at least 2MiB (two segments of 1MiB)")
            }
            reader.each {
                if let v = fields["weights_reserve"] {
                    let size = try reader.size(v, at: "tiers.nvme.weights_reserve")
                    guard size <= tiers.nvme.budgetBytes else {
                        throw reader.fail("tiers.nvme.weights_reserve", v,
                            "expected at most tiers.nvme.budget (\(ConfigUnits.formatBytes(tiers.nvme.budgetBytes)))")
                    }
                    tiers.nvme.weightsReserveBytes = size
                }
            }
        }
        reader.each { if let node = map["remote"] { tiers.remote = try remote(reader, node) } }
        reader.each { tiers.engine = try choice(map["engine"], at: "tiers.engine") ?? tiers.engine }
        reader.each { if let v = map["queue_depth"] { tiers.queueDepth = try reader.integer(v, at: "tiers.queue_depth", range: 1...1024) } }
        return tiers
    }

    static func routing(_ reader: ConfigReader, _ node: Node) throws -> RoutingSettings {
        let map = try reader.mapping(node, at: "routing", allowed: [
            "policy", "block_bytes", "index_blocks", "hot_spot_queue", "load_bound", "eject_after", "health_interval",
            "max_concurrency", "session_header", "request_cost_blocks",
        ])
        var settings = RoutingSettings()
        reader.each { if let v = map["policy"] { settings.policy = try routingPolicy(reader, v, at: "routing.policy") } }
        reader.each { if let v = map["block_bytes"] { settings.blockBytes = try reader.integer(v, at: "routing.block_bytes", range: 16...65536) } }
        reader.each {
            if let v = map["index_blocks"] {
                settings.indexBlocks = try reader.integer(v, at: "routing.index_blocks", range: 1...(1 << 24))
            }
        }
        reader.each { if let v = map["hot_spot_queue"] { settings.hotSpotQueue = try reader.integer(v, at: "routing.hot_spot_queue", range: 1...100_000) } }
        reader.each {
            if let v = map["load_bound"] {
                let text = try reader.string(v, at: "routing.load_bound")
                guard let factor = Double(text), factor >= 1, factor <= 100 else {
                    throw reader.fail("routing.load_bound", v, "'\(text)' is not a factor from 1 to 100 (such as 1.25)")
                }
                settings.loadBound = factor
            }
        }
        reader.each {
            if let v = map["request_cost_blocks"] {
                settings.requestCostBlocks = try reader.integer(v, at: "routing.request_cost_blocks", range: 0...100_000)
            }
        }
        reader.each { if let v = map["eject_after"] { settings.ejectAfter = try reader.integer(v, at: "routing.eject_after", range: 1...1000) } }
        reader.each { if let v = map["health_interval"] { settings.healthInterval = try reader.duration(v, at: "routing.health_interval") } }
        reader.each {
            if let v = map["max_concurrency"] {
                settings.maxConcurrency = try reader.integer(v, at: "routing.max_concurrency", range: 1...1_000_000)
            }
        }
        reader.each {
            if let v = map["session_header"] {
                let name = try reader.string(v, at: "routing.session_header")
                // An HTTP field name is a token (RFC 9110 §5.1): a name that is not one would
                // never match a request's header, and session affinity by header would be off.
                let token = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
                guard !name.isEmpty, name.allSatisfy({ token.contains($0) }) else {
                    throw reader.fail("routing.session_header", v, "'\(name)' is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)")
                }
                settings.sessionHeader = name
            }
        }
        return settings
    }

    static func routingPolicy(_ reader: ConfigReader, _ node: Node, at key: String) throws -> RoutingPolicy {
        let text = try reader.string(node, at: key)
        guard let policy = RoutingSettings.policy(named: text) else {
            throw reader.fail(key, node, "'\(text)' is not a routing policy (expected prefix-affinity, round-robin or least-loaded)")
        }
        return policy
    }

    static func devices(_ reader: ConfigReader, _ node: Node?, gpus: [DiscoveredGPU]) throws -> [DeviceConfiguration] {
        guard let node else { return defaultDevices(gpus: gpus, physicalMemory: ProcessInfo.processInfo.physicalMemory) }
        var devices: [DeviceConfiguration] = []
        for (index, item) in try reader.sequence(node, at: "devices").enumerated() {
            let key = "devices[\(index)]"
            let map = try reader.mapping(item, at: key, allowed: ["name", "kind", "memory"])
            guard let nameNode = map["name"] else { throw reader.fail(key, item, "missing key 'name'") }
            let name = try reader.string(nameNode, at: "\(key).name")
            guard !devices.contains(where: { $0.name == name }) else {
                reader.each { throw reader.fail("\(key).name", nameNode, "device '\(name)' is defined twice") }
                continue
            }
            // Its kind and memory each checked, so a file's problems are all told at once (a
            // device with one stands in with no limit, so its models' own are still checked;
            // a file with any problem is refused whole).
            var kind = DeviceConfiguration.Kind.cpu
            reader.each {
                if let v = map["kind"] {
                    let text = try reader.string(v, at: "\(key).kind")
                    guard let parsed = DeviceConfiguration.Kind(rawValue: text) else {
                        throw reader.fail("\(key).kind", v, "'\(text)' is not a device kind (expected cpu, gpu or unified)")
                    }
                    kind = parsed
                }
            }
            var memory = UInt64.max
            reader.each {
                guard let memoryNode = map["memory"] else { throw reader.fail(key, item, "missing key 'memory'") }
                let bytes = try reader.size(memoryNode, at: "\(key).memory")
                guard bytes > 0 else { throw reader.fail("\(key).memory", memoryNode, "must be more than zero") }
                memory = bytes
            }
            devices.append(DeviceConfiguration(name: name, kind: kind, memoryBytes: memory))
        }
        guard !devices.isEmpty else { throw reader.fail("devices", node, "expected at least one device") }
        return devices
    }

    /// Without a `devices` section: host RAM as a `cpu` device with 80% of the machine's memory,
    /// and each GPU NVML found as `gpu<i>` with 90% of its memory (the rest for the CUDA context
    /// and fragmentation). A unified-memory GPU (NVML reports no memory of its own) shares system
    /// RAM: then there is one pool, `unified`, instead of `cpu`, so the two are never counted twice.
    static func defaultDevices(gpus: [DiscoveredGPU], physicalMemory: UInt64) -> [DeviceConfiguration] {
        let ram = physicalMemory / 10 * 8
        var devices: [DeviceConfiguration] = []
        if gpus.contains(where: \.isUnified) {
            devices.append(DeviceConfiguration(name: "unified", kind: .unified, memoryBytes: ram))
        } else {
            devices.append(DeviceConfiguration(name: "cpu", kind: .cpu, memoryBytes: ram))
        }
        for gpu in gpus {
            guard let total = gpu.totalBytes else { continue }
            devices.append(DeviceConfiguration(name: "gpu\(gpu.index)", kind: .gpu, memoryBytes: total / 10 * 9))
        }
        return devices
    }

    /// `kv`: the RESP service on the tiers. Off unless `resp` is set; loopback unless told; a
    /// password (by environment variable) is required beyond loopback.
    static func kv(_ reader: ConfigReader, _ node: Node) throws -> KVConfiguration {
        let map = try reader.mapping(node, at: "kv", allowed: ["resp", "durability", "password_env", "threads", "send_buffer", "notsent_lowat", "reply_buffer", "reply_buffer_total"])
        var kv = KVConfiguration()
        reader.each { if let v = map["resp"] { kv.resp = try listenAddress(reader, v, at: "kv.resp") } }
        reader.each {
            if let v = map["durability"] {
                let text = try reader.string(v, at: "kv.durability")
                switch text {
                case "cache": kv.durability = .cache
                case "durable": kv.durability = .durable
                default: throw reader.fail("kv.durability", v, "'\(text)' is not valid (expected cache or durable)")
                }
            }
        }
        reader.each {
            if let v = map["password_env"] {
                let name = try reader.string(v, at: "kv.password_env")
                guard let password = reader.environment[name], !password.isEmpty else {
                    throw reader.fail("kv.password_env", v, "environment variable \(name) is not set")
                }
                kv.password = password
            }
        }
        reader.each { if let v = map["threads"] { kv.threads = try reader.integer(v, at: "kv.threads", range: 1...256) } }
        // Socket options: 0 leaves the kernel's default, else a size in the range.
        func socketSize(_ key: String, _ range: ClosedRange<UInt64>, zero: String) throws -> UInt64? {
            guard let v = map[key] else { return nil }
            let bytes = try reader.size(v, at: "kv.\(key)")
            guard bytes == 0 || range.contains(bytes) else {
                throw reader.fail("kv.\(key)", v, "\(bytes) bytes is out of range (expected 0 \(zero), or \(range.lowerBound >> 10)KiB to \(range.upperBound >> 20)MiB)")
            }
            return bytes
        }
        reader.each { kv.sendBuffer = try socketSize("send_buffer", 4096...(64 << 20), zero: "for the kernel's autotuning") }
        reader.each { kv.notSentLowWater = try socketSize("notsent_lowat", 1024...(64 << 20), zero: "to leave it unset") }
        reader.each {
            if let v = map["reply_buffer"] {
                kv.replyBuffer = try reader.size(v, at: "kv.reply_buffer", range: 1 << 20...(64 << 30), expected: "1MiB to 64GiB")
            }
        }
        reader.each {
            if let v = map["reply_buffer_total"] {
                kv.replyBufferTotal = try reader.size(v, at: "kv.reply_buffer_total", range: 1 << 20...(1 << 40), expected: "1MiB to 1TiB")
            }
        }
        if let resp = kv.resp, !resp.isLoopback, kv.password == nil {
            throw reader.fail("kv.resp", map["resp"], "'\(resp)' is beyond loopback: set kv.password_env so clients must AUTH")
        }
        return kv
    }
}
