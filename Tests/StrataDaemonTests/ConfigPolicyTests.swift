import Foundation
import Frontend
import Placer
import Testing
@testable import StrataDaemon

/// The placement-policy keys: runtime tags, price and latency class; model tags, fallbacks,
/// spill_after, priority and min_residency; tenants.
struct ConfigPolicyTests {
    static let base = """
        runtimes:
          llama: { kind: llama-server, binary: /bin/true, tags: [on-prem, sovereign:eu], latency_class: interactive }
          cloud: { kind: upstream, url: "http://127.0.0.1:9/v1", tags: [provider], cost: { input: 0.15, output: 0.6 } }
        """

    static func parse(_ models: String, tenants: String = "", env: [String: String] = ConfigLoaderTests.env) throws
        -> StrataConfiguration
    {
        try ConfigLoader.parse(yaml: base + "\n" + models + "\n" + tenants, environment: env)
    }

    static func expectError(_ models: String, tenants: String = "", key: String, _ fragments: String...,
                            env: [String: String] = ConfigLoaderTests.env, sourceLocation: SourceLocation = #_sourceLocation) {
        ConfigLoaderTests.expectError(base + "\n" + models + "\n" + tenants, key: key, fragments: fragments, env: env,
                                      sourceLocation: sourceLocation)
    }

    static let models = """
        models:
          - { name: local, source: "${MODEL}", runtime: llama, priority: 5, min_residency: 30s, fallbacks: [mini], spill_after: 2s, tags: [gpu-free] }
          - { name: mini, runtime: cloud, upstream_model: gpt-4o-mini }
          - { name: shared, upstreams: ["http://127.0.0.1:9"], tags: [on-prem] }
        """

    @Test func substratesModelsAndTenantsParse() throws {
        let config = try Self.parse(Self.models, tenants: """
            tenants:
              - { name: acme, api_keys_env: ACME_KEYS, require: [on-prem], forbid: [provider] }
              - { name: open, api_keys_env: OPEN_KEYS }
            """, env: ConfigLoaderTests.env.merging(["ACME_KEYS": "a1, a2", "OPEN_KEYS": "o1"]) { $1 })
        let local = try #require(config.models.first { $0.name == "local" })
        #expect(local.priority == 5 && local.minResidency == .seconds(30))
        #expect(local.fallbacks == ["mini"] && local.spillAfter == .seconds(2))
        #expect(config.substrateTags(of: local) == ["on-prem", "sovereign:eu", "gpu-free", "latency:interactive"])
        let mini = try #require(config.models.first { $0.name == "mini" })
        #expect(config.substrateTags(of: mini) == ["provider", "latency:standard"])
        #expect(config.price(of: mini) == TokenPrice(inputPerMillion: 0.15, outputPerMillion: 0.6))
        #expect(config.price(of: local) == nil)
        let shared = try #require(config.models.first { $0.name == "shared" })
        #expect(config.substrateTags(of: shared) == ["on-prem", "latency:standard"])

        let access = config.accessControl
        #expect(access.keys["a1"] == Tenant(name: "acme", policy: SubstratePolicy(require: ["on-prem"], forbid: ["provider"])))
        #expect(access.keys["a2"]?.name == "acme" && access.keys["o1"] == Tenant(name: "open"))
        #expect(config.requiresAPIKeys)

        // priority and residency reach the Placer
        let spec = try #require(config.placerConfiguration.models.first { $0.name == "local" })
        #expect(spec.priority == 5 && spec.minResidency == .seconds(30))
    }

    @Test func noKeysAnywhereMeansOpenAccessButATenantNeedsKeys() throws {
        let config = try Self.parse(Self.models)
        #expect(!config.requiresAPIKeys)
        #expect(config.accessControl.keys.isEmpty)
        Self.expectError(Self.models, tenants: "tenants: [{ name: t, api_keys_env: UNSET_VARIABLE }]",
                         key: "tenants[0].api_keys_env", "UNSET_VARIABLE holds no API keys")
    }

    @Test func badPolicyKeysAreRefusedWithKeyAndReason() {
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, fallbacks: [nope] }]
            """, key: "models[0] (a).fallbacks", "unknown model 'nope'")
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, fallbacks: [a] }]
            """, key: "models[0] (a).fallbacks", "the model itself")
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, spill_after: 1s }]
            """, key: "models[0] (a).spill_after", "only with 'fallbacks'")
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, priority: 1000 }]
            """, key: "models[0] (a).priority", "-100...100")
        Self.expectError("""
            models: [{ name: m, runtime: cloud, priority: 1 }]
            """, key: "models[0] (m).priority", "only for models whose runtime Strata starts")
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, tags: [On Prem] }]
            """, key: "models[0] (a).tags[0]", "'On Prem' is not a tag")
        Self.expectError("", tenants: "tenants: [{ name: t, api_keys_env: K, require: [x], forbid: [x] }]",
                         key: "tenants[0]", "both required and forbidden", env: ConfigLoaderTests.env.merging(["K": "k"]) { $1 })
        Self.expectError("", tenants: "tenants: [{ name: t }]", key: "tenants[0]", "missing key 'api_keys_env'")
        Self.expectError("", tenants: "tenants: [{ name: t, api_keys_env: A }, { name: u, api_keys_env: B }]",
                         key: "tenants[1].api_keys_env", "belongs to one tenant",
                         env: ConfigLoaderTests.env.merging(["A": "k", "B": "k"]) { $1 })
        Self.expectError("", tenants: "tenants: [{ name: t, api_keys_env: A }, { name: t, api_keys_env: B }]",
                         key: "tenants[1].name", "defined twice", env: ConfigLoaderTests.env.merging(["A": "a"]) { $1 })
    }

    @Test func kvRestoreIsForLlamaServerReplicas() throws {
        let config = try Self.parse("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, replicas: 2, kv_restore: true }]
            """)
        #expect(config.models[0].kvRestore)
        #expect(SlotCache.parallelSlots(in: ["-c", "2048", "-np", "3"]) == 3)
        #expect(SlotCache.parallelSlots(in: ["--parallel=4"]) == 4)
        #expect(SlotCache.parallelSlots(in: ["-c", "2048"]) == nil)
        Self.expectError("""
            models: [{ name: a, source: "${MODEL}", runtime: llama, kv_restore: true }]
            """, key: "models[0] (a).kv_restore", "replicas above 1")
        Self.expectError("""
            models: [{ name: m, runtime: cloud, kv_restore: true }]
            """, key: "models[0] (m).kv_restore", "llama-server runtime")
    }

    @Test func badRuntimePolicyKeysAreRefused() {
        for (yaml, key, fragment) in [
            ("latency_class: fast", "runtimes.x.latency_class", "interactive, standard, batch"),
            ("cost: { input: -1 }", "runtimes.x.cost.input", "a number ≥ 0"),
            ("cost: { per_call: 1 }", "runtimes.x.cost.per_call", "unknown key 'per_call'"),
            ("tags: provider", "runtimes.x.tags", "expected a list"),
        ] {
            do {
                _ = try ConfigLoader.parse(yaml: """
                    runtimes:
                      x:
                        kind: upstream
                        url: "http://127.0.0.1:9/v1"
                        \(yaml)
                    """, environment: ConfigLoaderTests.env)
                Issue.record("expected an error for \(yaml)")
            } catch let error as ConfigError {
                #expect(error.key == key, "\(error)")
                #expect(error.description.contains(fragment), "\(error)")
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
    }
}
