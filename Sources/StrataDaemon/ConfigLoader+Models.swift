import Foundation
import Placer
import TierStore
import Yams

extension ConfigLoader {
    static let defaultLlamaServer = "${STRATA_CACHE:-~/.cache/strata}/bin/llama-server"

    static func runtimes(_ reader: ConfigReader, _ node: Node?, environment: [String: String]) throws
        -> [String: RuntimeConfiguration]
    {
        guard let node else {
            let binary = reader.expandTilde(try reader.expand(defaultLlamaServer, at: "runtimes", node: nil))
            return ["llama": RuntimeConfiguration(
                name: "llama", kindName: "llama-server", kind: .llamaServer(binary: binary, args: []),
                healthPath: "/health", environment: [:])]
        }
        guard case .mapping(let mapping) = node else {
            throw reader.fail("runtimes", node, "expected a mapping from runtime name to its settings, found \(reader.describe(node))")
        }
        var result: [String: RuntimeConfiguration] = [:]
        for (nameNode, value) in mapping {
            // Each runtime read on its own, so one with a problem does not hide the others'; one
            // that fails stands in as a placeholder, so the models on it are still checked (a
            // file with any problem is refused whole, so no placeholder ever runs).
            var read: String?
            var declaredKind: String?
            let ok = reader.each {
                let name = try reader.string(nameNode, at: "runtimes")
                read = name
                let key = "runtimes.\(name)"
                let map = try reader.mapping(
                    value, at: key, allowed: ["kind", "binary", "args", "command", "health", "env", "url", "api_key_env", "tags", "cost", "latency_class"])
                guard let kindNode = map["kind"] else {
                    throw reader.fail(key, value, "missing key 'kind' (expected llama-server, vllm, sglang, command or upstream)")
                }
                let kindName = try reader.string(kindNode, at: "\(key).kind")
                declaredKind = kindName
                func reject(_ fields: String...) throws {
                    try rejectFields(fields, reader, map, key, "not used by runtimes of kind \(kindName)")
                }
                let kind: RuntimeConfiguration.Kind
                switch kindName {
                case "llama-server":
                    try reject("command", "url", "api_key_env")
                    let binary = try map["binary"].map { try reader.path($0, at: "\(key).binary") }
                        ?? reader.expandTilde(try reader.expand(defaultLlamaServer, at: key, node: value))
                    let args = try map["args"].map { try reader.strings($0, at: "\(key).args") } ?? []
                    kind = .llamaServer(binary: binary, args: args)
                case "command", "vllm", "sglang":
                    try reject("binary", "url", "api_key_env")
                    var argv: [String]
                    if let commandNode = map["command"] {
                        argv = try reader.strings(commandNode, at: "\(key).command")
                    } else if kindName == "vllm" {
                        argv = ["vllm", "serve", "${MODEL_PATH}", "--host", "${HOST}", "--port", "${PORT}",
                                "--served-model-name", "${MODEL_NAME}"]
                    } else if kindName == "sglang" {
                        argv = ["python3", "-m", "sglang.launch_server", "--model-path", "${MODEL_PATH}", "--host", "${HOST}",
                                "--port", "${PORT}", "--served-model-name", "${MODEL_NAME}"]
                    } else {
                        throw reader.fail(key, value, "missing key 'command' (a list: program and arguments, with ${PORT} and ${MODEL_PATH} placeholders)")
                    }
                    argv += try map["args"].map { try reader.strings($0, at: "\(key).args") } ?? []
                    guard let program = argv.first, !program.isEmpty else {
                        throw reader.fail("\(key).command", map["command"], "expected at least the program to run")
                    }
                    guard argv.contains(where: { $0.contains("${PORT}") }) else {
                        throw reader.fail("\(key).command", map["command"] ?? value, "must pass ${PORT} to the runtime so Strata can reach it")
                    }
                    argv[0] = reader.expandTilde(program)
                    kind = .command(argv: argv)
                case "upstream":
                    try reject("binary", "command", "args")
                    guard let urlNode = map["url"] else { throw reader.fail(key, value, "missing key 'url'") }
                    let url = Self.schemeLowercased(try reader.string(urlNode, at: "\(key).url"))
                    guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil else {
                        throw reader.fail("\(key).url", urlNode, "'\(url)' is not an http(s) URL")
                    }
                    var apiKey: String?
                    if let envNode = map["api_key_env"] {
                        let envName = try reader.string(envNode, at: "\(key).api_key_env")
                        apiKey = environment[envName].flatMap { $0.isEmpty ? nil : $0 }
                    }
                    kind = .upstream(url: url.hasSuffix("/") ? String(url.dropLast()) : url, apiKey: apiKey)
                default:
                    throw reader.fail("\(key).kind", kindNode, "'\(kindName)' is not a runtime kind (expected llama-server, vllm, sglang, command or upstream)")
                }
                var health = "/health"
                if let v = map["health"] {
                    health = try reader.string(v, at: "\(key).health")
                    guard health.hasPrefix("/") else { throw reader.fail("\(key).health", v, "'\(health)' must be a path starting with /") }
                }
                var env: [String: String] = [:]
                if let envNode = map["env"] {
                    guard case .mapping(let pairs) = envNode else {
                        throw reader.fail("\(key).env", envNode, "expected a mapping of variable names to values")
                    }
                    for (k, v) in pairs {
                        let name = try reader.string(k, at: "\(key).env")
                        env[name] = try reader.string(v, at: "\(key).env.\(name)")
                    }
                }
                var runtime = RuntimeConfiguration(name: name, kindName: kindName, kind: kind, healthPath: health, environment: env)
                runtime.substrate = try substrate(reader, map, at: key)
                result[name] = runtime
            }
            if !ok, let read, result[read] == nil {
                // (Of the kind it meant to be, so its models are checked as such, not echo it.)
                let kind: RuntimeConfiguration.Kind = declaredKind == "upstream"
                    ? .upstream(url: "http://invalid", apiKey: nil) : .command(argv: ["/nonexistent"])
                result[read] = RuntimeConfiguration(name: read, kindName: "invalid", kind: kind, healthPath: "/health", environment: [:])
            }
        }
        return result
    }

    static func models(_ reader: ConfigReader, _ node: Node?, config: StrataConfiguration) throws -> [ModelConfiguration] {
        guard let node else { return [] }
        var models: [ModelConfiguration] = []
        // Each model is checked even after one fails, so that all their problems are named at once.
        var problems: [ConfigError] = []
        let items = try reader.sequence(node, at: "models")
        for (index, item) in items.enumerated() {
            do {
                let key = "models[\(index)]"
                let map = try reader.mapping(
                    item, at: key,
                    allowed: ["name", "source", "runtime", "memory", "ttl", "pin", "device", "args", "upstreams", "upstream_model",
                              "routing", "replicas", "sha256", "stage", "preload", "tags", "fallbacks", "spill_after", "priority",
                              "min_residency", "kv_restore"])
                guard let nameNode = map["name"] else { throw reader.fail(key, item, "missing key 'name'") }
                let name = try reader.string(nameNode, at: "\(key).name")
                guard !name.isEmpty, !name.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "#" }) else {
                    throw reader.fail("\(key).name", nameNode, "'\(name)' is not a model name (non-empty, no spaces, slashes or #)")
                }
                guard !models.contains(where: { $0.name == name }) else {
                    throw reader.fail("\(key).name", nameNode, "model '\(name)' is defined twice")
                }
                let key2 = "models[\(index)] (\(name))"
                var device = config.devices[0].name
                if let v = map["device"] {
                    device = try reader.string(v, at: "\(key2).device")
                    guard config.devices.contains(where: { $0.name == device }) else {
                        throw reader.fail("\(key2).device", v, "unknown device '\(device)' (defined: \(config.devices.map(\.name).joined(separator: ", ")))")
                    }
                }
                // Keys nothing below depends on are each checked (`reader.each`): a model's
                // problems are named together.
                var ttl: Duration?
                reader.each {
                    ttl = try map["ttl"].flatMap { node in
                        if (try? reader.string(node, at: "\(key2).ttl")) == "never" { return nil }
                        return try reader.duration(node, at: "\(key2).ttl")
                    }
                }
                var pinned = false
                reader.each { pinned = try map["pin"].map { try reader.bool($0, at: "\(key2).pin") } ?? false }
                var memory: UInt64 = 0
                var declared = false
                var memoryEstimate: String?
                if let v = map["memory"] {
                    // (A memory that cannot be read is not estimated instead: it is noted, and
                    // the model goes on as declared with nothing, so nothing else echoes it.)
                    declared = true
                    reader.each {
                        memory = try reader.size(v, at: "\(key2).memory")
                        guard memory > 0 else { throw reader.fail("\(key2).memory", v, "must be more than zero (or leave it out to have it estimated)") }
                    }
                }

                let serving: ModelConfiguration.Serving
                var routing: RoutingPolicy?
                var weights = WeightSource()
                var replicaCount = 1
                reader.each { replicaCount = try map["replicas"].map { try reader.integer($0, at: "\(key2).replicas", range: 1...64) } ?? 1 }
                if let upstreamsNode = map["upstreams"] {
                    try rejectFields(["replicas"], reader, map, key2, "not used with 'upstreams' (each URL is a replica)")
                    routing = try map["routing"].map { try routingPolicy(reader, $0, at: "\(key2).routing") }
                    try rejectFields(["runtime", "source", "args", "upstream_model", "memory", "ttl", "pin", "sha256", "stage", "preload"], reader, map, key2,
                                     "not allowed together with 'upstreams' (replicas Strata does not start)")
                    let urls = try reader.strings(upstreamsNode, at: "\(key2).upstreams").map(Self.schemeLowercased)
                    guard !urls.isEmpty else { throw reader.fail("\(key2).upstreams", upstreamsNode, "expected at least one URL") }
                    var bases: [String] = []
                    for (i, url) in urls.enumerated() {
                        guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil else {
                            throw reader.fail("\(key2).upstreams[\(i)]", upstreamsNode, "'\(url)' is not an http(s) URL")
                        }
                        let base = Self.replicaBase(url)
                        if let first = bases.firstIndex(of: base) {
                            throw reader.fail("\(key2).upstreams[\(i)]", upstreamsNode,
                                "'\(url)' is the same replica as upstreams[\(first)] ('\(urls[first])'): list each server once")
                        }
                        bases.append(base)
                    }
                    serving = .replicas(bases)
                } else {
                    if replicaCount > 1 {
                        routing = try map["routing"].map { try routingPolicy(reader, $0, at: "\(key2).routing") }
                    } else {
                        try rejectFields(["routing"], reader, map, key2, "only for models with replicas ('upstreams' or 'replicas' above 1)")
                    }
                    let runtimeName = try map["runtime"].map { try reader.string($0, at: "\(key2).runtime") }
                        ?? (config.runtimes.count == 1 ? config.runtimes.keys.first! : "")
                    guard let runtime = config.runtimes[runtimeName] else {
                        throw reader.fail("\(key2).runtime", map["runtime"] ?? item,
                            runtimeName.isEmpty
                                ? "missing key 'runtime' (or 'upstreams'): " + (config.runtimes.isEmpty ? "no runtime is defined"
                                    : "\(config.runtimes.count) runtimes are defined (\(config.runtimes.keys.sorted().joined(separator: ", "))), name one")
                                : "unknown runtime '\(runtimeName)' (defined: \(config.runtimes.keys.sorted().joined(separator: ", ")))")
                    }
                    if runtime.isManaged {
                        try rejectFields(["upstream_model"], reader, map, key2, "only for runtimes of kind upstream")
                        guard let sourceNode = map["source"] else {
                            throw reader.fail(key2, item, "missing key 'source' (the weights: file:///path, a path, http(s)://… or s3://bucket/key)")
                        }
                        weights = try weightSource(reader, sourceNode, map, at: key2)
                        let args = try map["args"].map { try reader.strings($0, at: "\(key2).args") } ?? []
                        if !declared {
                            guard !weights.isRemote else {
                                throw reader.fail("\(key2).memory", item, "required for an http(s) or s3 source (its size is not known before it is fetched)")
                            }
                            // No declared footprint: weights + the KV cache the context length implies
                            // + buffers (from the GGUF header), corrected once the runtime is measured.
                            let estimate = FootprintEstimate.estimate(
                                weightBytes: weights.bytes, metadata: try? GGUFMetadata.read(path: weights.source),
                                runtimeArgs: runtime.arguments + args)
                            memory = estimate.total
                            memoryEstimate = estimate.explanation
                        }
                        let path = weights.isRemote ? "" : weights.source
                        serving = .managed(runtime: runtimeName, modelPath: path, args: args)
                    } else {
                        try rejectFields(["source", "args", "memory", "ttl", "pin", "replicas", "sha256", "stage", "preload"], reader, map, key2,
                                         "not used with an upstream runtime (Strata does not load it)")
                        let upstreamModel = try map["upstream_model"].map { try reader.string($0, at: "\(key2).upstream_model") }
                        serving = .upstream(runtime: runtimeName, upstreamModel: upstreamModel)
                    }
                }
                if case .managed = serving, let budget = config.devices.first(where: { $0.name == device })?.memoryBytes,
                    memory * UInt64(replicaCount) > budget
                {
                    throw reader.fail(replicaCount > 1 ? "\(key2).replicas" : "\(key2).memory", map["memory"] ?? item,
                        "model needs \(replicaCount > 1 ? "\(replicaCount) × " : "")\(ConfigUnits.formatBytes(memory)) but device '\(device)' has \(ConfigUnits.formatBytes(budget))")
                }
                var model = ModelConfiguration(
                    name: name, serving: serving, device: device, memoryBytes: memory, memoryDeclared: declared,
                    ttl: ttl, pinned: pinned, routing: routing, replicaCount: replicaCount)
                model.memoryEstimate = memoryEstimate
                model.source = weights.isRemote ? weights.source : (weights.source.isEmpty ? "" : "file://\(weights.source)")
                model.sha256 = weights.sha256
                model.weightBytes = weights.bytes
                reader.each { model.stage = try map["stage"].map { try reader.bool($0, at: "\(key2).stage") } ?? true }
                reader.each { model.preload = try map["preload"].map { try reader.bool($0, at: "\(key2).preload") } ?? false }
                if model.isRemoteSource && !model.stage {
                    throw reader.fail("\(key2).stage", map["stage"], "must be true for an http(s) or s3 source (a runtime cannot open a URL)")
                }
                try modelPolicy(reader, map, at: key2, into: &model, runtimes: config.runtimes)
                models.append(model)
            } catch let error as ConfigError {
                problems += error.all
            }
        }
        if let error = ConfigError(all: problems) { throw error }
        try checkFallbacks(reader, models, node, items: items)
        try checkPinned(reader, models, devices: config.devices, node)
        return models
    }

    /// Pinned models are never evicted: those of one device must fit it together, or some of
    /// them could never be loaded.
    private static func checkPinned(_ reader: ConfigReader, _ models: [ModelConfiguration], devices: [DeviceConfiguration],
                                    _ node: Node?) throws {
        for device in devices {
            let pinned = models.filter { model in
                guard model.pinned, model.device == device.name, case .managed = model.serving else { return false }
                return true
            }
            let bytes = pinned.reduce(UInt64(0)) { $0 + $1.memoryBytes * UInt64($1.replicaCount) }
            guard bytes > device.memoryBytes else { continue }
            throw reader.fail("models", node,
                "the pinned models on device '\(device.name)' (\(pinned.map(\.name).joined(separator: ", "))) need "
                    + "\(ConfigUnits.formatBytes(bytes)) together, more than its \(ConfigUnits.formatBytes(device.memoryBytes)): "
                    + "pinned models are never evicted, so they must fit at once")
        }
    }

    /// Refuses the first of `fields` that is present, naming it and saying why it does not belong.
    private static func rejectFields(
        _ fields: [String], _ reader: ConfigReader, _ map: [String: Node], _ key: String, _ why: String
    ) throws {
        for field in fields {
            if let node = map[field] { throw reader.fail("\(key).\(field)", node, why) }
        }
    }

    struct WeightSource {
        /// A local path, or the URL as written for remote sources.
        var source = ""
        var isRemote = false
        var bytes: UInt64 = 0
        var sha256: String?
    }

    /// `source` (file:///path, a path, http(s)://…, s3://bucket/key) and `sha256`.
    static func weightSource(_ reader: ConfigReader, _ node: Node, _ map: [String: Node], at key: String) throws -> WeightSource {
        var weights = WeightSource()
        if let v = map["sha256"] {
            let hex = try reader.string(v, at: "\(key).sha256").lowercased()
            guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else {
                throw reader.fail("\(key).sha256", v, "'\(hex)' is not a SHA-256 (64 hex digits)")
            }
            weights.sha256 = hex
        }
        var source = try reader.string(node, at: "\(key).source")
        guard !source.allSatisfy(\.isWhitespace) else {
            throw reader.fail("\(key).source", node, "it is empty: expected file:///path, a path, http(s)://… or s3://bucket/key")
        }
        source = Self.schemeLowercased(source)
        if source.hasPrefix("http://") || source.hasPrefix("https://") || source.hasPrefix("s3://") {
            do {
                _ = try RemoteLocation(parsing: source)
            } catch {
                throw reader.fail("\(key).source", node, "\(error)")
            }
            weights.source = source
            weights.isRemote = true
            return weights
        }
        var path = source
        if source.hasPrefix("file://") {
            path = String(source.dropFirst("file://".count))
        } else if let scheme = source.range(of: "://") {
            let name = source[..<scheme.lowerBound]
            throw reader.fail("\(key).source", node, "'\(source)': \(name):// is not a source Strata reads (expected file:///path, a path, http(s)://… or s3://bucket/key)")
        }
        path = reader.expandTilde(path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw reader.fail("\(key).source", node, "'\(source)': no such file \(path)")
        }
        guard !isDirectory.boolValue else {
            throw reader.fail("\(key).source", node, "'\(source)': \(path) is a directory; expected the weights file (a .gguf)")
        }
        weights.source = path
        weights.bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value ?? 0
        return weights
    }

    /// `url` with its scheme in lower case: a scheme is case-insensitive (RFC 3986), so
    /// HTTP://… is http://… (it was refused as not an http URL).
    static func schemeLowercased(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), !url[..<scheme.lowerBound].isEmpty,
            url[..<scheme.lowerBound].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) })
        else { return url }
        return url[..<scheme.lowerBound].lowercased() + url[scheme.lowerBound...]
    }

    /// A replica's base URL as requests are sent to it (`base/v1/chat/completions`, `base/health`):
    /// without a trailing '/', nor the '/v1' an OpenAI base URL ends in.
    static func replicaBase(_ url: String) -> String {
        var base = url
        while base.hasSuffix("/") { base.removeLast() }
        if base.hasSuffix("/v1") { base.removeLast(3) }
        while base.hasSuffix("/") { base.removeLast() }
        return base
    }
}
