import Foundation
import Placer
import Testing
import TierStore
@testable import StrataDaemon

struct ConfigLoaderTests {
    /// A weights file the configs can point at: one fixed path (the same 4,000 zero bytes for every
    /// run), so runs do not leave one file each behind.
    static let modelFile: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("strata-config-test.gguf").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(count: 4000))
        return path
    }()
    static let env = ["HOME": "/home/u", "STRATA_CACHE": "/cache", "MODEL": modelFile]

    static func parse(_ yaml: String, env: [String: String] = env) throws -> StrataConfiguration {
        try ConfigLoader.parse(yaml: yaml, environment: env)
    }

    /// Asserts that `yaml` is refused with an error naming `key` and containing every fragment.
    static func expectError(_ yaml: String, key: String, _ fragments: String..., env: [String: String] = env,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        expectError(yaml, key: key, fragments: fragments, env: env, sourceLocation: sourceLocation)
    }

    static func expectError(_ yaml: String, key: String, fragments: [String], env: [String: String] = env,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try parse(yaml, env: env)
            Issue.record("expected an error at \(key)", sourceLocation: sourceLocation)
        } catch let error as ConfigError {
            #expect(error.key == key, "\(error)", sourceLocation: sourceLocation)
            for fragment in fragments {
                #expect(error.description.contains(fragment), "'\(fragment)' missing from: \(error)", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    /// Shared model settings by YAML anchors and merge keys (as in Compose files): `x-` keys at
    /// the top hold them, `<<` brings them in, the model's own keys win. Both were "unknown key".
    @Test func mergeKeysAndXKeysShareSettingsBetweenModels() throws {
        let config = try Self.parse("""
            x-small: &small { memory: 300MiB, ttl: 5m }
            x-llama: &llama { runtime: llama, <<: *small }
            runtimes:
              llama: { kind: llama-server, binary: /bin/true }
            models:
              - <<: *llama
                name: a
                source: "file://${MODEL}"
              - <<: [*small, { runtime: llama, pin: true }]
                name: b
                ttl: 1m
                source: "file://${MODEL}"
            """)
        let (a, b) = (try #require(config.model(placerName: "a")), try #require(config.model(placerName: "b")))
        #expect(a.ttl == .seconds(300) && a.memoryBytes == 300 << 20)
        #expect(b.ttl == .seconds(60) && b.memoryBytes == 300 << 20 && b.pinned, "its own ttl wins over the merged one")
        let model = "runtimes: { llama: { kind: llama-server, binary: /bin/true } }\nmodels: [ { name: a, source: \"file://${MODEL}\", runtime: llama, "
        Self.expectError(model + "<<: 5 } ]", key: "models[0].<<", "merge key takes a mapping", "'5'")
        Self.expectError("x-notes: hi\n" + model + "x-note: hi } ]", key: "models[0].x-note", "unknown key", "x-note")
    }

    @Test func aRuntimeWhoseProgramIsMissingIsAWarningNamingItAndItsModels() throws {
        let config = try Self.parse("""
            runtimes:
              gone: { kind: llama-server, binary: /nonexistent/llama-server }
              spare: { kind: command, command: ["no-such-server-\(getpid())", "--port", "${PORT}"] }
              shell: { kind: command, command: ["sh", "-c", "exec srv --port ${PORT}"] }
            models:
              - { name: a, source: "file://${MODEL}", runtime: gone }
              - { name: b, source: "file://${MODEL}", runtime: gone }
              - { name: c, source: "file://${MODEL}", runtime: shell }
            """)
        #expect(ConfigSummary.missingExecutables(config) == [
            "runtimes.gone: cannot find executable '/nonexistent/llama-server' (not a file, or not on PATH); "
                + "a, b will fail to start until it is installed",
            "runtimes.spare: cannot find executable 'no-such-server-\(getpid())' (not a file, or not on PATH); no model uses it",
        ])
        let summary = ConfigSummary.render(config)
        #expect(summary.hasPrefix("config ok") && summary.contains("\nwarning: runtimes.gone: cannot find executable"))
        #expect(!summary.contains("runtimes.shell"), "sh is on PATH")
    }

    @Test func theSummaryNamesTheReplicasOfAManagedModel() throws {
        let config = try Self.parse("""
            devices: [ { name: cpu, kind: cpu, memory: 2GiB } ]
            runtimes:
              llama: { kind: llama-server, binary: /bin/true }
            models:
              - { name: m, source: "file://${MODEL}", runtime: llama, memory: 500MiB, replicas: 3 }
              - { name: one, source: "file://${MODEL}", runtime: llama, memory: 500MiB }
            """)
        let lines = ConfigSummary.render(config).split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("model m: 3 replicas (m#0, m#1, m#2), each llama on cpu, 500MiB") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("model one: llama on cpu, 500MiB") }, "\(lines)")
    }

    /// A source's scheme in capitals is the same scheme (RFC 3986); an empty source is named as
    /// such; credentials in a source URL do not reach `config check`'s summary.
    @Test func sourceSchemesAreCaseInsensitiveAndCredentialsStayOutOfTheSummary() throws {
        let config = try Self.parse("""
            models:
              - { name: a, source: "HTTPS://user:secret@example.com/m.gguf?X-Amz-Signature=abc", memory: 1GiB }
              - { name: b, source: "S3://bucket/k.gguf", memory: 1GiB }
              - { name: c, source: "FILE://${MODEL}" }
            """)
        #expect(config.models[0].source == "https://user:secret@example.com/m.gguf?X-Amz-Signature=abc")
        #expect(config.models.allSatisfy { $0.name == "c" || $0.isRemoteSource }, "\(config.models.map(\.source))")
        #expect(config.models[2].source == "file://\(Self.modelFile)")
        let summary = ConfigSummary.render(config)
        #expect(summary.contains("weights https://example.com/m.gguf (") && !summary.contains("secret") && !summary.contains("Signature"),
                "\(summary)")
        Self.expectError("models: [ { name: a, source: \"\", memory: 1GiB } ]", key: "models[0] (a).source", "it is empty", "file:///path")
        Self.expectError("models: [ { name: a, source: \"FTP://x/y\", memory: 1GiB } ]", key: "models[0] (a).source",
                         "ftp:// is not a source Strata reads")
    }

    @Test func weightsThatAreNotGGUFAreAWarningForLlamaServer() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("strata-gguf-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: "\(dir)/text.gguf", contents: Data("hello".utf8)))
        #expect(FileManager.default.createFile(atPath: "\(dir)/empty.gguf", contents: Data()))
        #expect(FileManager.default.createFile(atPath: "\(dir)/real.gguf", contents: Data("GGUF".utf8) + Data(count: 60)))
        let config = try Self.parse("""
            runtimes:
              llama: { kind: llama-server, binary: /bin/true }
              other: { kind: command, command: ["sh", "-c", "exec srv --port ${PORT}"] }
            models:
              - { name: text, source: "\(dir)/text.gguf", runtime: llama, memory: 1MiB }
              - { name: empty, source: "\(dir)/empty.gguf", runtime: llama, memory: 1MiB }
              - { name: real, source: "\(dir)/real.gguf", runtime: llama, memory: 1MiB }
              - { name: mine, source: "\(dir)/text.gguf", runtime: other, memory: 1MiB }
            """)
        #expect(ConfigSummary.weightsNotGGUF(config) == [
            "models text: \(dir)/text.gguf begins with 68 65 6c 6c, not 'GGUF' (47 47 55 46): llama-server will not load it",
            "models empty: \(dir)/empty.gguf is empty, not 'GGUF' (47 47 55 46): llama-server will not load it",
        ])
        #expect(ConfigSummary.render(config).contains("\nwarning: models text: "))
    }

    @Test func caFileMustBeReadable() throws {
        let config = try Self.parse("tiers: { remote: { ca_file: \"${MODEL}\" } }")
        #expect(config.tiers.remote.caFile == Self.modelFile)
        Self.expectError("tiers: { remote: { ca_file: /nonexistent/ca.pem } }", key: "tiers.remote.ca_file",
                         "not a readable file", "PEM")
    }

    @Test func segmentsFitTheNVMeBudgetTwiceAtLeast() throws {
        #expect(try Self.parse("tiers: { nvme: { budget: 64GiB } }").tiers.nvme.segmentBytes == 256 << 20)
        #expect(try Self.parse("tiers: { nvme: { budget: 256MiB } }").tiers.nvme.segmentBytes == 64 << 20)
        #expect(try Self.parse("tiers: { nvme: { budget: 3MiB } }").tiers.nvme.segmentBytes == 1 << 20)
        Self.expectError("tiers: { nvme: { budget: 256MiB, segment_size: 256MiB } }", key: "tiers.nvme.segment_size",
                         "fewer than 2 segments", "at most half the budget")
        Self.expectError("tiers: { nvme: { budget: 1MiB } }", key: "tiers.nvme.budget", "at least 2MiB")
        // with kv on, a segment holds a 4 MiB part of a value and its header
        Self.expectError("tiers: { nvme: { budget: 64MiB, segment_size: 4MiB } }\nkv: { resp: 127.0.0.1:6390 }",
                         key: "tiers.nvme.segment_size", "4MiB cannot hold a part of a KV value", "at least 5MiB")
        Self.expectError("tiers: { nvme: { budget: 16MiB } }\nkv: { resp: 127.0.0.1:6390 }",
                         key: "tiers.nvme.segment_size", "a larger tiers.nvme.budget")
        #expect(try Self.parse("tiers: { nvme: { budget: 64MiB, segment_size: 8MiB } }\nkv: { resp: 127.0.0.1:6390 }").kv.resp != nil)
        #expect(try Self.parse("tiers: { nvme: { budget: 64MiB, segment_size: 4MiB } }").tiers.nvme.segmentBytes == 4 << 20)
        // (a kv section without `resp` turns nothing on)
        #expect(try Self.parse("tiers: { nvme: { budget: 64MiB, segment_size: 4MiB } }\nkv: { durability: durable }").kv.resp == nil)
    }

    @Test func theRESPServerHasOneLoopPerFourCoresUnlessTold() throws {
        #expect([1, 2, 3, 4, 7, 8, 64].map { KVConfiguration.defaultThreads(cores: $0) } == [1, 1, 1, 1, 1, 2, 16])
        #expect(try Self.parse("kv: { resp: 127.0.0.1:6390 }").kv.threads == nil)
        #expect(try Self.parse("kv: { resp: 127.0.0.1:6390, threads: 3 }").kv.threads == 3)
        Self.expectError("kv: { resp: 127.0.0.1:6390, threads: 0 }", key: "kv.threads", "1")
    }

    @Test func unsentRepliesAreBoundedBy64KiBUnlessTold() throws {
        #expect(try Self.parse("kv: { resp: 127.0.0.1:6390 }").kv.notSentLowWaterBytes == 64 << 10)
        #expect(try Self.parse("kv: { resp: 127.0.0.1:6390, notsent_lowat: 256KiB }").kv.notSentLowWaterBytes == 256 << 10)
        #expect(try Self.parse("kv: { resp: 127.0.0.1:6390, notsent_lowat: 0 }").kv.notSentLowWaterBytes == nil)
        Self.expectError("kv: { resp: 127.0.0.1:6390, notsent_lowat: 512B }", key: "kv.notsent_lowat", "512 bytes is out of range", "1KiB to 64MiB")
        Self.expectError("kv: { resp: 127.0.0.1:6390, notsent_lowat: 128MiB }", key: "kv.notsent_lowat", "out of range")
        Self.expectError("kv: { resp: 127.0.0.1:6390, notsent_lowat: some }", key: "kv.notsent_lowat")
    }

    @Test func emptyFileGivesDefaults() throws {
        let config = try Self.parse("")
        #expect(config.listen == ListenAddress(host: "127.0.0.1", port: 8080))
        #expect(config.devices.count == 1 && config.devices[0].name == "cpu")
        #expect(config.runtimes["llama"]?.kind == .llamaServer(binary: "/cache/bin/llama-server", args: []))
        #expect(config.models.isEmpty)
        #expect(config.supervisor.loadTimeout == .seconds(120))
        #expect(config.supervisor.livenessInterval == .seconds(2) && config.supervisor.hangTimeout == .seconds(30))
        #expect(config.gateway.maxBodyBytes == 32 << 20)
        #expect(config.gateway.relayOnEventLoop)
        #expect(config.gateway.idleTimeout == .seconds(75))
        #expect(config.gateway.drainTimeout == .seconds(30))
    }

    @Test func fullConfigParses() throws {
        let config = try Self.parse("""
            listen: "[::1]:9090"
            auth: { api_keys_env: MY_KEYS, admin_key_env: MY_ADMIN }
            gateway: { max_body: 1MiB, upstream_timeout: 30s, event_loop_relay: false, idle_timeout: 2m, drain_timeout: 5s }
            supervisor: { load_timeout: 1m, queue_timeout: 90s, stop_timeout: 5s, max_queued: 8, restart_backoff: 500ms, restart_backoff_max: 1h, liveness_interval: 0s, hang_timeout: 0s }
            routing: { policy: round-robin, block_bytes: 128, index_blocks: 1000, hot_spot_queue: 4, load_bound: 1.5, eject_after: 2, health_interval: 500ms, max_concurrency: 8, session_header: x-conversation }
            tiers:
              host: { dir: ~/shm, budget: 2GiB, admission: second-hit, eviction: drop }
              nvme: { budget: 1TB, codec: lz4, segment_size: 64MiB, weights_reserve: 100GB }
              engine: psync
              queue_depth: 8
            devices: [ { name: cpu, kind: cpu, memory: 1GiB }, { name: gpu0, kind: gpu, memory: 24GiB } ]
            runtimes:
              llama: { kind: llama-server, binary: ~/bin/llama-server, args: ["-c", "2048"] }
              custom: { kind: command, command: ["srv", "--port", "${PORT}", "--m", "${MODEL_PATH}"], health: /ok }
              openai: { kind: upstream, url: "https://api.example.com/v1/", api_key_env: OPENAI_KEY }
            models:
              - { name: a, source: "file://${MODEL}", runtime: llama, memory: 400MiB, ttl: 15m, pin: true }
              - { name: b, source: "${MODEL}", runtime: custom, device: gpu0 }
              - { name: c, runtime: openai, upstream_model: gpt-x }
              - { name: d, upstreams: ["http://127.0.0.1:18301", "http://127.0.0.1:18302/v1/"], routing: least-loaded }
            """, env: Self.env.merging(["MY_KEYS": "k1,k2", "MY_ADMIN": "adm", "OPENAI_KEY": "sk"]) { $1 })
        #expect(config.listen == ListenAddress(host: "::1", port: 9090))
        #expect(config.auth.apiKeys == ["k1", "k2"])
        #expect(config.auth.adminKey == "adm")
        #expect(config.gateway.maxBodyBytes == 1 << 20)
        #expect(!config.gateway.relayOnEventLoop)
        #expect(config.gateway.idleTimeout == .seconds(120))
        #expect(config.gateway.drainTimeout == .seconds(5))
        #expect(config.supervisor.restartBackoff == .milliseconds(500))
        #expect(config.supervisor.livenessInterval == .zero && config.supervisor.hangTimeout == .zero, "0s: off")
        #expect(config.tiers.host.directory == "/home/u/shm")
        #expect(config.tiers.nvme.budgetBytes == 1_000_000_000_000)
        #expect(config.tiers.policy == BlockStore.Policy(
            hostBudgetBytes: 2 << 30, nvmeBudgetBytes: 1_000_000_000_000, hostAdmission: .secondHit, nvmeAdmission: .always,
            nvmeCodec: .lz4, eviction: .drop, nvmeWeightsReserveBytes: 100_000_000_000))
        #expect(config.tiers.nvme.segmentBytes == 64 << 20 && config.tiers.engine == .psync && config.tiers.queueDepth == 8)
        #expect(config.tiers.nvme.directory == nil, "defaults to <state_dir>/nvme")
        #expect(config.tiers.nvme.weightsReserveBytes == 100_000_000_000)
        #expect(config.runtimes["llama"]?.kind == .llamaServer(binary: "/home/u/bin/llama-server", args: ["-c", "2048"]))
        #expect(config.runtimes["custom"]?.kind == .command(argv: ["srv", "--port", "${PORT}", "--m", "${MODEL_PATH}"]))
        #expect(config.runtimes["custom"]?.healthPath == "/ok")
        #expect(config.runtimes["openai"]?.kind == .upstream(url: "https://api.example.com/v1", apiKey: "sk"))
        #expect(config.models[0].serving == .managed(runtime: "llama", modelPath: Self.modelFile, args: []))
        #expect(config.models[0].memoryBytes == 400 << 20 && config.models[0].pinned && config.models[0].ttl == .seconds(900))
        // undeclared memory: file size + 25%
        #expect(config.models[1].memoryBytes == 5000 && !config.models[1].memoryDeclared && config.models[1].device == "gpu0")
        #expect(config.models[2].serving == .upstream(runtime: "openai", upstreamModel: "gpt-x"))
        #expect(config.models[3].serving == .replicas(["http://127.0.0.1:18301", "http://127.0.0.1:18302"]),
                "an OpenAI base URL's /v1 and a trailing / are left out: Strata adds /v1/chat/completions and /health")
        #expect(config.models[3].routing == .leastLoaded && config.models[0].routing == nil)
        var routing = RoutingSettings()
        routing.policy = .roundRobin; routing.blockBytes = 128; routing.indexBlocks = 1000; routing.hotSpotQueue = 4
        routing.loadBound = 1.5; routing.ejectAfter = 2; routing.healthInterval = .milliseconds(500); routing.maxConcurrency = 8
        routing.sessionHeader = "x-conversation"
        #expect(config.routing == routing)
        // Only managed models reach the Placer.
        #expect(config.placerConfiguration.models.map(\.name) == ["a", "b"])
        let replicated = try Self.parse("""
            models: [ { name: r, source: "${MODEL}", memory: 100MiB, replicas: 3, routing: least-loaded } ]
            """)
        #expect(replicated.placerConfiguration.models.map(\.name) == ["r#0", "r#1", "r#2"])
        #expect(replicated.models[0].routing == .leastLoaded)
        #expect(replicated.model(placerName: "r#2")?.name == "r" && replicated.model(placerName: "r#3") == nil)
    }

    @Test func unknownKeysAreErrors() {
        Self.expectError("lisen: 1.2.3.4:80", key: "lisen", "unknown key 'lisen'", "listen")
        Self.expectError("supervisor: { load_timeot: 1s }", key: "supervisor.load_timeot", "unknown key")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", memroy: 1GiB } ]", key: "models[0].memroy", "unknown key 'memroy'")
    }

    @Test func badValuesNameKeyValueAndExpectation() throws {
        Self.expectError("listen: localhost", key: "listen", "'localhost'", "HOST:PORT")
        Self.expectError("listen: 127.0.0.1:99999", key: "listen", "port must be 1...65535")
        Self.expectError("devices: [ { name: cpu, memory: 12 zonks } ]", key: "devices[0].memory", "'12 zonks'", "unknown unit")
        Self.expectError("devices: [ { name: cpu, memory: 12G } ]", key: "devices[0].memory", "ambiguous", "GiB")
        Self.expectError("devices: [ { name: cpu, kind: tpu, memory: 1GiB } ]", key: "devices[0].kind", "'tpu'", "cpu, gpu or unified")
        Self.expectError("supervisor: { queue_timeout: soon }", key: "supervisor.queue_timeout", "'soon'", "30s")
        Self.expectError("supervisor: { max_queued: -3 }", key: "supervisor.max_queued", "'-3'", "integer")
        Self.expectError("supervisor: { liveness_interval: 0s }", key: "supervisor.hang_timeout", "liveness_interval above 0s")
        Self.expectError("supervisor: { liveness_interval: 10s, hang_timeout: 15s }", key: "supervisor.hang_timeout", "twice liveness_interval")
        // (killed after one missed probe: its 2 s timeout alone met the 2 s)
        Self.expectError("supervisor: { liveness_interval: 1s, hang_timeout: 2s }", key: "supervisor.hang_timeout", "two probes' 2s timeouts", "6")
        Self.expectError("supervisor: { hang_timeout: 0 }", key: "supervisor.hang_timeout", "'0'", "30s")
        Self.expectError("log_level: loud", key: "log_level", "'loud'", "debug")
        Self.expectError("gateway: { max_body: 10B }", key: "gateway.max_body", "1KiB")
        Self.expectError("gateway: { event_loop_relay: sometimes }", key: "gateway.event_loop_relay", "'sometimes'")
        Self.expectError("gateway: { idle_timeout: 500ms }", key: "gateway.idle_timeout", "'500ms'", "at least 1s")
        Self.expectError("runtimes: { x: { kind: docker } }", key: "runtimes.x.kind", "'docker'", "llama-server")
        Self.expectError("runtimes: { x: { kind: command, command: [srv] } }", key: "runtimes.x.command", "${PORT}")
        Self.expectError("runtimes: { x: { kind: upstream, url: ftp://h } }", key: "runtimes.x.url", "http(s) URL")
        Self.expectError("runtimes: { x: { kind: llama-server, url: http://h } }", key: "runtimes.x.url", "not used")
        Self.expectError("tiers: { host: { admission: sometimes } }", key: "tiers.host.admission", "'sometimes'", "second-hit")
        Self.expectError("tiers: { nvme: { codec: zstd } }", key: "tiers.nvme.codec", "'zstd'", "none, lz4")
        Self.expectError("tiers: { host: { eviction: keep } }", key: "tiers.host.eviction", "'keep'", "demote, drop")
        Self.expectError("tiers: { nvme: { segment_size: 100KiB } }", key: "tiers.nvme.segment_size", "1MiB to 4GiB")
        Self.expectError("tiers: { nvme: { budget: 8GiB, weights_reserve: 9GiB } }", key: "tiers.nvme.weights_reserve",
                         "at most tiers.nvme.budget", "8GiB")
        Self.expectError("tiers: { nvme: { weights_reserve: lots } }", key: "tiers.nvme.weights_reserve", "'lots'")
        Self.expectError("tiers: { engine: aio }", key: "tiers.engine", "'aio'", "io_uring")
        Self.expectError("tiers: { host: { budget: 0 } }", key: "tiers.host.budget", "more than zero")
        Self.expectError("devices: [ { name: cpu, memory: 0B } ]", key: "devices[0].memory", "more than zero")
        Self.expectError("gateway: { cors_origins: [\"http://localhost:*\", localhost] }", key: "gateway.cors_origins[1]",
                         "'localhost' is not an origin")
        #expect(try Self.parse("gateway: { cors_origins: [\"http://localhost:*\", \"*\"] }").gateway.corsOrigins == ["http://localhost:*", "*"])
        Self.expectError("""
            devices: [ { name: cpu, memory: 400MiB } ]
            models:
              - { name: a, source: \(Self.modelFile), memory: 250MiB, pin: true }
              - { name: b, source: \(Self.modelFile), memory: 250MiB, pin: true }
            """, key: "models", "pinned models on device 'cpu' (a, b) need 500MiB together", "never evicted")
        Self.expectError("models: [ { name: m, source: \(Self.modelFile), memory: 0 } ]", key: "models[0] (m).memory", "more than zero")
        Self.expectError("tiers: { host: { bugdet: 1GiB } }", key: "tiers.host.bugdet", "unknown key")
        Self.expectError("routing: { policy: random }", key: "routing.policy", "'random'", "prefix-affinity, round-robin or least-loaded")
        Self.expectError("routing: { load_bound: 0.5 }", key: "routing.load_bound", "'0.5'", "from 1 to 100")
        Self.expectError("routing: { block_bytes: 4 }", key: "routing.block_bytes", "'4'")
        Self.expectError("routing: { session_header: \"x session id\" }", key: "routing.session_header", "'x session id' is not an HTTP header name")
        Self.expectError("routing: { session_header: \"\" }", key: "routing.session_header", "is not an HTTP header name")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", routing: round-robin } ]", key: "models[0] (a).routing",
                         "only for models with replicas")
        Self.expectError("models: [ { name: a, upstreams: [\"http://h:1\"], routing: sticky } ]", key: "models[0] (a).routing",
                         "'sticky'")
    }

    @Test func modelErrors() throws {
        Self.expectError("models: [ { source: x } ]", key: "models[0]", "missing key 'name'")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", runtime: nope } ]", key: "models[0] (a).runtime",
                         "unknown runtime 'nope'", "llama")
        Self.expectError("models: [ { name: a, source: /no/such/file.gguf } ]", key: "models[0] (a).source", "no such file")
        Self.expectError("models: [ { name: a, source: /tmp } ]", key: "models[0] (a).source", "/tmp is a directory", ".gguf")
        Self.expectError("models: [ { name: a, source: \"ftp://h/k\" } ]", key: "models[0] (a).source", "ftp://", "s3://bucket/key")
        Self.expectError("models: [ { name: a, source: \"s3://b/k\" } ]", key: "models[0] (a).memory", "required for an http(s) or s3 source")
        Self.expectError("models: [ { name: a, source: \"s3://b/k\", memory: 1GiB, stage: false } ]", key: "models[0] (a).stage",
                         "must be true")
        Self.expectError("models: [ { name: a, source: \"s3:///k\", memory: 1GiB } ]", key: "models[0] (a).source", "s3:///k")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", sha256: abc } ]", key: "models[0] (a).sha256", "64 hex digits")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", ttl: 0s } ]", key: "models[0] (a).ttl", "longer than zero")
        Self.expectError("""
            devices: [ { name: cpu, memory: 100MiB } ]
            models: [ { name: a, source: "${MODEL}", memory: 1GiB } ]
            """, key: "models[0] (a).memory", "needs 1GiB", "device 'cpu' has 100MiB")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\" }, { name: a, source: \"${MODEL}\" } ]",
                         key: "models[1].name", "defined twice")
        Self.expectError("models: [ { name: a, upstreams: [\"http://h:1\"], ttl: 1m } ]", key: "models[0] (a).ttl", "not allowed together")
        Self.expectError("models: [ { name: a, upstreams: [] } ]", key: "models[0] (a).upstreams", "at least one")
        for second in ["http://h:1", "http://h:1/", "http://h:1/v1"] {
            Self.expectError("models: [ { name: a, upstreams: [\"http://h:1\", \"\(second)\"] } ]", key: "models[0] (a).upstreams[1]",
                             "'\(second)' is the same replica as upstreams[0]")
        }
        // a scheme in capitals is the same scheme
        Self.expectError("models: [ { name: a, upstreams: [\"http://h:1\", \"HTTP://h:1\"] } ]", key: "models[0] (a).upstreams[1]",
                         "is the same replica as upstreams[0]")
        let capitals = try Self.parse("""
            runtimes: { far: { kind: upstream, url: "HTTPS://api.example.com" } }
            models:
              - { name: a, upstreams: ["HTTP://h:1"] }
              - { name: b, runtime: far }
            """)
        #expect(capitals.models[0].serving == .replicas(["http://h:1"]))
        Self.expectError("models: [ { name: \"a b\", source: x } ]", key: "models[0].name", "no spaces")
        Self.expectError("models: [ { name: \"a#1\", source: x } ]", key: "models[0].name", "#")
        Self.expectError("""
            devices: [ { name: cpu, memory: 1GiB } ]
            models: [ { name: a, source: "${MODEL}", memory: 400MiB, replicas: 3 } ]
            """, key: "models[0] (a).replicas", "3 × 400MiB", "device 'cpu' has 1GiB")
        Self.expectError("models: [ { name: a, source: \"${MODEL}\", replicas: 0 } ]", key: "models[0] (a).replicas", "'0'")
        Self.expectError("models: [ { name: a, upstreams: [\"http://h:1\"], replicas: 2 } ]", key: "models[0] (a).replicas",
                         "each URL is a replica")
    }

    @Test func weightSourcesAndTheRemoteTier() throws {
        let config = try Self.parse("""
            tiers:
              host: { weights_budget: 2GiB }
              remote:
                parallelism: 4
                chunk_size: 4MiB
                retries: 3
                stall_timeout: 5s
                part_size: 8MiB
                s3: { endpoint: "http://127.0.0.1:9000", region: eu-west-1, access_key_env: KEY, secret_key_env: SECRET }
            models:
              - { name: a, source: "https://example.com/m.gguf", memory: 1GiB, sha256: "\(String(repeating: "AB", count: 32))", preload: true }
              - { name: b, source: "${MODEL}", stage: false }
            """, env: Self.env.merging(["KEY": "id", "SECRET": "secret"]) { $1 })
        #expect(config.tiers.host.weightsBudgetBytes == 2 << 30)
        let remote = config.tiers.remote
        #expect(remote.parallelism == 4 && remote.chunkBytes == 4 << 20 && remote.retries == 3)
        #expect(remote.stallTimeout == .seconds(5) && remote.partBytes == 8 << 20)
        #expect(remote.s3.endpoint == "http://127.0.0.1:9000" && remote.s3.region == "eu-west-1")
        #expect(remote.s3.accessKeyID == "id" && remote.s3.secretAccessKey == "secret")
        let a = config.models[0], b = config.models[1]
        #expect(a.isRemoteSource && a.source == "https://example.com/m.gguf" && a.preload && a.stage)
        #expect(a.sha256 == String(repeating: "ab", count: 32))
        #expect(a.serving == .managed(runtime: "llama", modelPath: "", args: []))
        #expect(!b.stage && b.source == "file://\(Self.modelFile)" && b.weightBytes == 4000)
        // the Placer stages only what may be staged, within the host weights budget
        let specs = config.placerConfiguration
        #expect(specs.hostWeightsBudget == 2 << 30)
        #expect(specs.models.map(\.stagesWeights) == [true, false])
        #expect(specs.models[0].weightBytes == (1 << 30) * 4 / 5 && specs.models[1].weightBytes == 4000)

        Self.expectError("tiers: { remote: { chunk_size: 1000B } }", key: "tiers.remote.chunk_size", "multiple of 4KiB")
        Self.expectError("models: [ { name: m, source: \(Self.modelFile), memory: 400 } ]", key: "models[0] (m).memory",
                         "'400' has no unit", "400MiB", "400B")
        Self.expectError("tiers: { remote: { parallelism: 0 } }", key: "tiers.remote.parallelism")
        Self.expectError("tiers: { remote: { part_size: 1MiB } }", key: "tiers.remote.part_size", "5MiB")
        Self.expectError("tiers: { remote: { s3: { endpoint: \"127.0.0.1:9000\" } } }", key: "tiers.remote.s3.endpoint", "not an http(s) URL")
        Self.expectError("tiers: { remote: { s3: { access_key_env: NOT_SET } } }", key: "tiers.remote.s3.access_key_env", "NOT_SET is not set")
        Self.expectError("tiers: { remote: { s3: { bucket: x } } }", key: "tiers.remote.s3.bucket", "unknown key")
    }

    @Test func environmentExpansion() throws {
        Self.expectError("state_dir: ${NOPE}", key: "state_dir", "NOPE is not set")
        Self.expectError("state_dir: ${NOPE", key: "state_dir", "unclosed")
        let config = try Self.parse("state_dir: ${NOPE:-~/state}/x")
        #expect(config.stateDirectory == "/home/u/state/x")
        // runtime placeholders are kept for the supervisor, other variables expand
        let withCommand = try Self.parse("runtimes: { c: { kind: command, command: [\"${STRATA_CACHE}/srv\", \"${PORT}\"] } }")
        #expect(withCommand.runtimes["c"]?.kind == .command(argv: ["/cache/srv", "${PORT}"]))
    }

    @Test func invalidYAMLIsAClearError() {
        #expect(throws: ConfigError.self) { try Self.parse("listen: [unclosed") }
        Self.expectError("- just\n- a list", key: "", "expected a mapping")
    }

    /// A model that names no runtime where it must is told why: which runtimes there are.
    @Test func aModelWithoutARuntimeAmongSeveralIsToldWhichThereAre() {
        Self.expectError("""
            runtimes: { a: { kind: llama-server, binary: /bin/true }, b: { kind: llama-server, binary: /bin/true } }
            models: [ { name: m, source: "${MODEL}", memory: 1GiB } ]
            """, key: "models[0] (m).runtime", "missing key 'runtime' (or 'upstreams'): 2 runtimes are defined (a, b), name one")
    }

    /// A syntax error is one line at the place it names; a repeated key names the repeat's line
    /// (Yams quoted the whole file, over as many lines, and pointed at the key's first use).
    @Test(arguments: [
        ("listen: 127.0.0.1:1\nlog_level: info\nlisten: 127.0.0.1:2\n", 3, "key 'listen' appears more than once in one mapping (first at line 1)"),
        ("models:\n  - name: a\n    ttl: 15m\n    memory: 1GiB\n    ttl: 10m\n  - name: b\n    ttl: 1m\n", 5,
         "key 'ttl' appears more than once in one mapping (first at line 3)"),
        ("devices:\n  - name: cpu\n   kind: cpu\n", 3, "not valid YAML at column"),
        ("models: [ { name: a }\nlisten: x\n", 2, "not valid YAML at column"),
    ])
    func aYAMLSyntaxErrorIsOneLineAtItsPlace(yaml: String, line: Int, fragment: String) {
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.line == line, "\(error)")
            #expect(error.description.contains(fragment), "\(error)")
            #expect(!error.report(prefix: "strata").dropLast().contains("\n"), "one line: \(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func aFileWithSeveralProblemsNamesThemAllInFileOrder() throws {
        let yaml = """
            listen: 127.0.0.1:99999
            tiers: { host: { budget: 12XB } }
            kv: { resp: 127.0.0.1:6380, durability: sometimes }
            gateway: { idle_timeout: 10ms }
            """
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected errors")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key) == ["listen", "tiers.host.budget", "kv.durability", "gateway.idle_timeout"])
            #expect(error.all.map(\.line) == [1, 2, 3, 4])
            #expect(error.key == "listen" && error.others.count == 3)
            #expect(error.report(prefix: "strata: f.yaml").split(separator: "\n").map { String($0.prefix(30)) } == [
                "strata: f.yaml: config: listen", "strata: f.yaml: config: tiers.",
                "strata: f.yaml: config: kv.dur", "strata: f.yaml: config: gatewa",
            ])
            #expect(error.description.contains("12XB") && error.description.contains("sometimes"))
        }
    }

    @Test func severalProblemsInOneSectionOrModelAndUnknownKeysAreNamedTogether() throws {
        // An unknown key no longer hides the rest, and a section's or a model's independent keys
        // are each checked.
        let yaml = """
            bogus_key: 1
            gateway: { max_body: lots, drain_timeout: 5, cancel_on_disconnect: maybe, max_bodyy: 1 }
            supervisor: { max_queued: -3, load_timeout: 0s }
            routing: { policy: random, eject_after: 0 }
            models:
              - { name: a, source: \(Self.modelFile), memory: -5MiB, replicas: 0, ttl: abc, priority: 500, memroy: 1 }
            """
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected errors")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key) == [
                "bogus_key",
                "gateway.max_bodyy", "gateway.max_body", "gateway.cancel_on_disconnect", "gateway.drain_timeout",   // (a line's unknown keys first)
                "supervisor.load_timeout", "supervisor.max_queued",
                "routing.policy", "routing.eject_after",
                "models[0].memroy", "models[0] (a).ttl", "models[0] (a).memory", "models[0] (a).replicas", "models[0] (a).priority",
            ], "\(error)")
        }
        // tenants and fallbacks too: each tenant's problem and each wrong fallback is named
        let policy = """
            auth: { api_keys_env: MY_KEYS }
            tenants:
              - { name: x, api_keys_env: UNSET_VAR }
              - { name: y, api_keys_env: MY_KEYS }
              - { name: default, api_keys_env: OTHER_KEYS }
            models:
              - { name: a, source: \(Self.modelFile), fallbacks: [a, ghost] }
              - name: b
                source: \(Self.modelFile)
                fallbacks: [zzz]
            """
        do {
            _ = try Self.parse(policy, env: Self.env.merging(["MY_KEYS": "k1", "OTHER_KEYS": "k2"]) { $1 })
            Issue.record("expected errors")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key) == [
                "tenants[0].api_keys_env", "tenants[1].api_keys_env", "tenants[2].name",
                "models[0] (a).fallbacks", "models[0] (a).fallbacks", "models[1] (b).fallbacks",
            ], "\(error)")
            #expect(error.all.suffix(3).map(\.line) == [7, 7, 10], "each at its own model's fallbacks")
            #expect(error.all.map(\.message).joined().contains("'default' is the tenant of the keys in auth.api_keys_env"))
        }
        // ...and a file whose only problem is an unknown key is still refused
        #expect(throws: ConfigError.self) { try Self.parse("listen: 127.0.0.1:8080\nlisen: 127.0.0.1:8081") }
    }

    @Test func everyRuntimesProblemIsReportedAndTheModelsOnThemStillChecked() throws {
        let yaml = """
            runtimes:
              a: { kind: command, command: ["sleep", "1000"] }
              b: { kind: command, command: ["sleep", "1000"] }
              c: { kind: nonsense }
              p: { kind: upstream }
            models:
              - { name: m1, runtime: a, source: \(Self.modelFile), memory: -5MiB }
              - { name: m2, runtime: p, upstream_model: x }
            """
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected an error")
        } catch let error as ConfigError {
            // (m2 on the broken upstream runtime p is checked as an upstream model: nothing to say of it.)
            #expect(error.all.map(\.key) == ["runtimes.a.command", "runtimes.b.command", "runtimes.c.kind", "runtimes.p",
                                             "models[0] (m1).memory"], "\(error)")
        }
    }

    @Test func everyDevicesProblemIsReportedAndTheModelsOnThemStillChecked() throws {
        let yaml = """
            devices:
              - { name: cpu, memory: 1GiB }
              - { name: gpu0, kind: tpu, memory: -1GiB }
              - { name: cpu, memory: 2GiB }
            models:
              - { name: m1, device: gpu0, source: \(Self.modelFile), memory: -5MiB }
            """
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key) == ["devices[1].kind", "devices[1].memory", "devices[2].name", "models[0] (m1).memory"],
                    "\(error)")
        }
    }

    @Test func aSectionThatReadsAFailedOneIsSkippedNotEchoed() throws {
        // models name runtimes: with runtimes refused, "unknown runtime" would only echo that.
        let yaml = """
            runtimes: { r: { kind: nope } }
            models: [{ name: m, runtime: r, source: \(Self.modelFile) }]
            """
        do {
            _ = try Self.parse(yaml)
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.key.hasPrefix("runtimes"))
            #expect(error.others.isEmpty, "\(error)")
        }
        // every model's problem, not only the first model's
        do {
            _ = try Self.parse("""
                models:
                  - { name: a, runtime: missing, source: \(Self.modelFile) }
                  - { name: b, source: \(Self.modelFile) }
                  - { name: c, source: \(Self.modelFile), ttl: soon }
                """)
            Issue.record("expected errors")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key) == ["models[0] (a).runtime", "models[2] (c).ttl"], "\(error)")
        }
        // a model's own problem is still found beside a problem elsewhere
        do {
            _ = try Self.parse("listen: nowhere\nmodels: [{ name: m, runtime: missing, source: \(Self.modelFile) }]")
            Issue.record("expected errors")
        } catch let error as ConfigError {
            #expect(error.all.map(\.key).first == "listen")
            #expect(error.all.count == 2 && error.others[0].key.hasPrefix("models[0]"), "\(error)")
        }
    }

    @Test func sizesAndDurations() throws {
        #expect(try ConfigUnits.parseSize("400MiB").get() == 400 << 20)
        #expect(try ConfigUnits.parseSize("1.5GiB").get() == 3 << 29)
        #expect(try ConfigUnits.parseSize("10KB").get() == 10_000)
        #expect(try ConfigUnits.parseSize("512").get() == 512)
        #expect(try ConfigUnits.parseDuration("1h30m").get() == .seconds(5400))
        #expect(try ConfigUnits.parseDuration("250ms").get() == .milliseconds(250))
        #expect((try? ConfigUnits.parseDuration("15").get()) == nil)
        #expect(ConfigUnits.formatBytes(400 << 20) == "400MiB")
        #expect(ConfigUnits.formatBytes(3 << 29) == "1.5GiB")
    }

    /// An empty file (one caught part way through being written) is refused rather than taken as
    /// every default, which on a reload would remove every model.
    @Test(arguments: ["", "\n\n", "# only a comment\n  \n", "---\n"])
    func aFileWithNoSettingsIsRefused(text: String) throws {
        // (One file per case: the cases run at once.)
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("strata-empty-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).yaml").path
        defer { unlink(path) }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try ConfigLoader.load(path: path, environment: Self.env, gpus: .noDriver("test")) }
        do {
            _ = try ConfigLoader.load(path: path, environment: Self.env, gpus: .noDriver("test"))
        } catch {
            #expect("\(error)".contains("holds no settings"), "\(error)")
        }
        try "models: []\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try ConfigLoader.load(path: path, environment: Self.env, gpus: .noDriver("test")).models.isEmpty)
    }

    @Test func shippedConfigsAreValid() throws {
        // The repository's own config files, against a fake cache holding the model file.
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("strata-cache-\(getpid())")
        defer { try? FileManager.default.removeItem(at: cache) }
        try FileManager.default.createDirectory(at: cache.appendingPathComponent("models"), withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(
            atPath: cache.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path, contents: Data(count: 10)))
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for file in ["config/strata.yaml", "config/strata.example.yaml"] {
            let config = try ConfigLoader.load(
                path: root.appendingPathComponent(file).path, environment: ["HOME": "/home/u", "STRATA_CACHE": cache.path])
            #expect(config.models.first?.name == "smollm2", "\(file)")
            #expect(config.listen.isLoopback, "\(file) must bind to loopback")
        }
    }
}
