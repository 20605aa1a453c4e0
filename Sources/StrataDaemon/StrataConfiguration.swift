import Frontend
import Placer
import TierStore

/// The whole configuration, read once from the YAML file by `ConfigLoader` and validated.
/// Defaults are documented in config/strata.example.yaml.
public struct StrataConfiguration: Sendable {
    public var listen: ListenAddress
    public var logLevel: String
    /// Where runtime logs and other daemon state are written.
    public var stateDirectory: String
    public var auth: AuthConfiguration
    public var gateway: GatewayLimits
    public var supervisor: SupervisorSettings
    public var tiers: TierConfiguration
    public var routing: RoutingSettings
    public var devices: [DeviceConfiguration]
    /// The RESP service on the storage tiers (`kv` section); off unless `resp` is set.
    public var kv = KVConfiguration()
    /// What NVML found when the config was read (logged once at start).
    public var gpuDiscovery: GPUDiscovery.Outcome = .noDriver("not asked")
    /// The file has a `models` section (possibly empty): a reload of one without it is refused.
    public var hasModelsSection = false
    public var runtimes: [String: RuntimeConfiguration]
    public var models: [ModelConfiguration]
    /// API-key holders with placement policies (`tenants` section).
    public var tenants: [TenantConfiguration] = []
}

public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public var isLoopback: Bool {
        host == "127.0.0.1" || host == "::1" || host == "localhost" || host.hasPrefix("127.")
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct AuthConfiguration: Sendable {
    /// Keys accepted as `Authorization: Bearer KEY`; empty means no key is needed.
    public var apiKeys: Set<String>
    /// Key for `/admin`; nil means admin endpoints are open on loopback and closed elsewhere.
    public var adminKey: String?
}

public struct GatewayLimits: Sendable, Equatable {
    public var maxBodyBytes: Int
    /// Longest the gateway waits for a runtime's response headers once a request is sent, and
    /// the longest silence within an answer.
    public var upstreamTimeout: Duration
    public var cancelOnDisconnect: Bool
    /// Relay requests that can be admitted at once on the client connection's event loop.
    public var relayOnEventLoop = true
    /// A client connection with no request under way (or whose request stopped arriving) is
    /// closed after this long.
    public var idleTimeout: Duration = .seconds(75)
    /// On a stop, how long requests under way may take to finish before they are cut.
    public var drainTimeout: Duration = .seconds(30)
    /// Origins browsers may call from (`CORSOrigins` patterns); none by default.
    public var corsOrigins: [String] = []
}

public struct SupervisorSettings: Sendable {
    public var loadTimeout: Duration
    public var queueTimeout: Duration
    public var stopTimeout: Duration
    public var maxQueued: Int
    public var restartBackoff: Duration
    public var restartBackoffMax: Duration
    public var healthInterval: Duration
    /// How often a ready runtime's health endpoint is probed (0: never, once it is ready).
    public var livenessInterval: Duration = .seconds(2)
    /// How long a ready runtime may go without answering its health check before it is killed
    /// (it restarts when needed, as after a crash); 0: never killed for it.
    public var hangTimeout: Duration = .seconds(30)
}

public struct DeviceConfiguration: Sendable, Equatable {
    public enum Kind: String, Sendable { case cpu, gpu, unified }
    public var name: String
    public var kind: Kind
    public var memoryBytes: UInt64
}

public struct RuntimeConfiguration: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// llama.cpp's llama-server; Strata adds --model, --host, --port and --alias.
        case llamaServer(binary: String, args: [String])
        /// Any command line with ${PORT}, ${HOST}, ${MODEL_PATH}, ${MODEL_NAME} placeholders;
        /// also used for `vllm` and `sglang`, which come with a default command.
        case command(argv: [String])
        /// An OpenAI-compatible server Strata does not start (a provider API, a remote host).
        case upstream(url: String, apiKey: String?)
    }

    public var name: String
    public var kindName: String
    public var kind: Kind
    public var healthPath: String
    public var environment: [String: String]
    /// Tags, price and latency class, for placement policy.
    public var substrate = SubstrateSettings()

    public var isManaged: Bool {
        if case .upstream = kind { return false }
        return true
    }

    /// The program Strata starts for this runtime (nil for an upstream).
    public var executable: String? {
        switch kind {
        case .llamaServer(let binary, _): binary
        case .command(let argv): argv.first
        case .upstream: nil
        }
    }

    /// The arguments every model on this runtime gets (for footprint estimates).
    public var arguments: [String] {
        switch kind {
        case .llamaServer(_, let args): args
        case .command(let argv): argv
        case .upstream: []
        }
    }
}

public struct ModelConfiguration: Sendable, Equatable {
    public enum Serving: Sendable, Equatable {
        /// Strata starts `runtime` with the weights at `modelPath` (a local source file; empty
        /// for an http(s) or s3 source, which is always staged first), or at their staged copy.
        case managed(runtime: String, modelPath: String, args: [String])
        /// Served by an upstream runtime (provider API), optionally under another model name.
        case upstream(runtime: String, upstreamModel: String?)
        /// Replicas Strata does not start.
        case replicas([String])
    }

    public var name: String
    public var serving: Serving
    public var device: String
    public var memoryBytes: UInt64
    public var memoryDeclared: Bool
    /// How an undeclared `memoryBytes` was estimated (weights + KV + buffers), for logs.
    public var memoryEstimate: String? = nil
    public var ttl: Duration?
    public var pinned: Bool
    /// For replicas: how requests are spread (the `routing` section's policy when nil).
    public var routing: RoutingPolicy? = nil
    /// Runtime processes Strata starts for this model (managed models); requests are routed
    /// across them like upstream replicas. Each is its own Placer model, `name#i`.
    public var replicaCount = 1
    /// Where the weights come from, as written (expanded): file:///path, a path, http(s)://, s3://.
    public var source = ""
    /// SHA-256 the weights must have (lowercase hex); checked when they are fetched.
    public var sha256: String? = nil
    /// Whether the weights are staged into host RAM (and NVMe) before the runtime starts.
    public var stage = true
    /// Load at start, not on the first request.
    public var preload = false
    /// Size of the weight file when known when the config is read (local sources).
    public var weightBytes: UInt64 = 0
    /// Tags added to the runtime's (the only tags of a model with `upstreams`).
    public var tags: Set<String> = []
    /// Models that serve a request this one cannot (not allowed by the request's policy, no
    /// room, failed, or not ready within `spillAfter`), tried in order; their own fallbacks
    /// are not followed.
    public var fallbacks: [String] = []
    /// Longest a request waits for this model before it spills to `fallbacks`; nil: it spills
    /// only when this model cannot serve at all.
    public var spillAfter: Duration?
    /// Eviction never picks a model of higher priority to make room for one of lower.
    public var priority = 0
    /// A model is not evicted for another until it has been ready this long.
    public var minResidency: Duration = .zero
    /// Save llama-server slots' KV caches into the store and restore them into other replicas
    /// (managed llama-server models with replicas above 1).
    public var kvRestore = false

    /// Whether the weights live somewhere a runtime cannot open by path.
    public var isRemoteSource: Bool { source.hasPrefix("http://") || source.hasPrefix("https://") || source.hasPrefix("s3://") }

    /// The Placer's names for this model's processes.
    public var placerNames: [String] {
        replicaCount > 1 ? (0..<replicaCount).map { "\(name)#\($0)" } : [name]
    }

    /// The model name a Placer name is of: `name` for `name#i`, else the name itself (model
    /// names hold no '#'). Also for a replica a reload removed, which no configured model lists.
    public static func modelName(ofPlacerName placerName: String) -> String {
        String(placerName.prefix { $0 != "#" })
    }
}

/// How requests for a model with several replicas are spread across them (`routing` section).
public struct RoutingSettings: Sendable, Equatable {
    public var policy: RoutingPolicy = .prefixAffinity
    /// Bytes of canonical prompt per block (about a quarter as many tokens).
    public var blockBytes = 256
    /// Blocks remembered per replica (LRU).
    public var indexBlocks = 65_536
    /// In-flight requests at which a replica holding a prefix counts as a hot spot.
    public var hotSpotQueue = 16
    /// Cold prefixes go to no replica loaded above this factor of the average.
    public var loadBound = 1.25
    /// Consecutive failures that eject a replica until its health check passes again.
    public var ejectAfter = 3
    /// Blocks of work each request in flight costs its replica beyond its prefill (decode, a
    /// slot): how soon a busy replica's cached prefix is also computed on an idle one.
    public var requestCostBlocks = 8
    public var healthInterval: Duration = .seconds(2)
    /// Requests at most in flight per replica; nil for no limit.
    public var maxConcurrency: Int?
    public var sessionHeader = "x-session-id"

    public init() {}

    /// Config spellings of the policies.
    public static let policyNames: [(String, RoutingPolicy)] = [
        ("prefix-affinity", .prefixAffinity), ("round-robin", .roundRobin), ("least-loaded", .leastLoaded),
    ]

    public static func policy(named name: String) -> RoutingPolicy? { policyNames.first { $0.0 == name }?.1 }
}

extension StrataConfiguration {
    /// The model a Placer name belongs to (`name`, or `name#i` for one of its replicas).
    public func model(placerName: String) -> ModelConfiguration? {
        if let model = models.first(where: { $0.name == placerName }) { return model }
        let base = ModelConfiguration.modelName(ofPlacerName: placerName)
        guard base != placerName else { return nil }
        return models.first { $0.name == base && $0.placerNames.contains(placerName) }
    }

    /// Each model's weights source, by model name (what its staged copies must be of).
    var weightSources: [String: String] {
        Dictionary(models.map { ($0.name, $0.source) }, uniquingKeysWith: { first, _ in first })
    }

    /// The Placer's view: devices and the models whose runtimes Strata manages. (An http or s3
    /// source's size, once known, replaces the estimate: `ModelController.placerConfiguration`.)
    public var placerConfiguration: PlacerConfiguration {
        PlacerConfiguration(
            devices: devices.map { DeviceSpec(name: $0.name, memoryBytes: $0.memoryBytes) },
            models: models.flatMap { model -> [ModelSpec] in
                guard case .managed = model.serving else { return [] }
                // Remote sources have no size until fetched: the declared memory stands in.
                let weightBytes = model.weightBytes > 0 ? model.weightBytes : model.memoryBytes * 4 / 5
                return model.placerNames.map {
                    ModelSpec(name: $0, device: model.device, memoryBytes: model.memoryBytes,
                              ttl: model.ttl, pinned: model.pinned, maxQueued: supervisor.maxQueued,
                              weightBytes: weightBytes, stagesWeights: model.stage, priority: model.priority,
                              minResidency: model.minResidency, memoryDeclared: model.memoryDeclared,
                              replicaOf: model.replicaCount > 1 ? model.name : nil)
                }
            },
            loadTimeout: supervisor.loadTimeout,
            queueTimeout: supervisor.queueTimeout,
            restartBackoffInitial: supervisor.restartBackoff,
            restartBackoffMax: supervisor.restartBackoffMax,
            hostWeightsBudget: tiers.host.weightsBudgetBytes)
    }
}

/// The `kv` section: the Redis-protocol service over the storage tiers.
public struct KVConfiguration: Sendable, Equatable {
    public enum Durability: String, Sendable { case cache, durable }
    /// Where the RESP server listens; nil: no RESP server.
    public var resp: ListenAddress?
    /// `cache`: a write is acknowledged once in host RAM (the keys do not survive a restart);
    /// `durable`: once on NVMe with its catalog entry committed.
    public var durability: Durability = .cache
    /// The password clients must AUTH with (required beyond loopback).
    public var password: String?
    /// Event-loop threads of the RESP server's own; nil: `defaultThreads(cores:)`.
    public var threads: Int?

    /// One loop per four cores, at least one: Redis serves on one thread, and the clients of a
    /// KV store (a runtime's KV connector, the gateway) share the machine's cores with it. On two
    /// cores under redis-benchmark, two loops (the daemon's shared ones, the default until
    /// session 36) cost the client 3 % more CPU per unpipelined 64 KiB GET and the pipelined
    /// GETs a fifth of their rate against one loop (docs/BENCHMARKS.md).
    public static func defaultThreads(cores: Int) -> Int { max(1, cores / 4) }
    /// SO_SNDBUF of each RESP connection in bytes; 0: the kernel's autotuning; nil: 128 KiB
    /// on loopback, autotuning beyond it (a fixed buffer caps each connection at about twice
    /// its size per round trip, which a remote client would feel). A connection raises it to hold
    /// the largest value it sends.
    public var sendBuffer: UInt64?
    /// TCP_NOTSENT_LOWAT of each RESP connection in bytes (the most replies its socket holds
    /// unsent; `RESPServerConfiguration.notSentLowWaterBytes`); 0: not set; nil: 64 KiB.
    public var notSentLowWater: UInt64?
    /// Replies a connection buffers for a client that writes a whole pipeline before reading
    /// (`RESPServerConfiguration.maxQueuedReplyBytes`); past it, a client that still takes none
    /// for 10 s has its connection closed.
    public var replyBuffer: UInt64 = 256 << 20
    /// The same for all connections together (`maxTotalQueuedReplyBytes`): past it, no
    /// connection answers beyond what its client takes until replies are taken.
    public var replyBufferTotal: UInt64 = 1 << 30

    /// What the RESP server sets as SO_SNDBUF (nil: nothing, the kernel autotunes).
    public var sendBufferBytes: Int? {
        if let sendBuffer { return sendBuffer == 0 ? nil : Int(sendBuffer) }
        return resp?.isLoopback == false ? nil : RESPServerConfiguration.defaultSendBufferBytes
    }

    /// What the RESP server sets as TCP_NOTSENT_LOWAT (nil: nothing).
    public var notSentLowWaterBytes: Int? {
        guard let notSentLowWater else { return RESPServerConfiguration.defaultNotSentLowWaterBytes }
        return notSentLowWater == 0 ? nil : Int(notSentLowWater)
    }
}
