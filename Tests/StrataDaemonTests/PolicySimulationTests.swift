import AsyncHTTPClient
import Foundation
import Frontend
import Logging
import StrataTestSupport
import Testing
@testable import StrataDaemon

/// Seeded random configurations (substrates with random tags, models with random fallbacks,
/// some whose replicas are down) and random request policies, sent through the daemon's real
/// `acquire`: a request is never served by a substrate its policy forbids, it spills only to
/// its own fallbacks and only past what could not serve it, and it gets a 503 naming the policy
/// exactly when no allowed substrate exists.
struct PolicySimulationTests {
    typealias Generator = SplitMix64

    static let tagPool = ["on-prem", "provider", "sovereign:eu", "gpu", "cheap"]

    static func someTags(_ rng: inout Generator) -> [String] { tagPool.filter { _ in Bool.random(using: &rng) } }

    /// YAML for 5 upstream runtimes, 7 models on them and 2 models whose only replica is down.
    static func randomConfig(_ rng: inout Generator) -> (yaml: String, names: [String]) {
        let live = (0..<7).map { "m\($0)" }, dead = ["d0", "d1"]
        let names = live + dead
        var yaml = "routing: { health_interval: 100ms }\nruntimes:\n"
        for r in 0..<5 {
            yaml += "  r\(r): { kind: upstream, url: \"http://127.0.0.1:9/v1\", tags: \(someTags(&rng)) }\n"
        }
        yaml += "models:\n"
        for name in names {
            let fallbacks = names.filter { $0 != name && Int.random(in: 0..<4, using: &rng) == 0 }.shuffled(using: &rng)
            let placement = name.hasPrefix("d") ? "upstreams: [\"http://127.0.0.1:9\"]" : "runtime: r\(Int.random(in: 0..<5, using: &rng))"
            yaml += "  - { name: \(name), \(placement), tags: \(someTags(&rng)), fallbacks: \(fallbacks) }\n"
        }
        return (yaml, names)
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func requestsNeverCrossAForbiddenBoundary(seed: UInt64) async throws {
        var rng = Generator(state: seed)
        let (yaml, names) = Self.randomConfig(&rng)
        let config = try ConfigLoader.parse(yaml: yaml, environment: [:])
        var logger = Logger(label: "sim")
        logger.logLevel = .error   // every spillover is logged; thousands of them say nothing here
        let controller = ModelController(config: config, httpClient: .shared, logger: logger)
        let clock = Task { await controller.runTicks() }
        defer { clock.cancel() }
        // Wait for the health checks to find the dead replicas down.
        for _ in 0..<100 {
            var down = true
            for set in await controller.replicaSets.values where await set.snapshots.contains(where: \.healthy) { down = false }
            if down { break }
            try await Task.sleep(for: .milliseconds(50))
        }

        let byName = Dictionary(uniqueKeysWithValues: config.models.map { ($0.name, $0) })
        var served = 0, spilled = 0, refused = 0
        for _ in 0..<150 {
            let model = names.randomElement(using: &rng)!
            let policy = SubstratePolicy(require: Set(Self.someTags(&rng).filter { _ in Int.random(in: 0..<3, using: &rng) == 0 }),
                                         forbid: Set(Self.someTags(&rng).filter { _ in Bool.random(using: &rng) }))
            let chain = [model] + byName[model]!.fallbacks
            let allowed = chain.filter { policy.admits(config.substrateTags(of: byName[$0]!)) }
            let expected = allowed.first { !$0.hasPrefix("d") }
            do {
                let lease = try await controller.acquire(model: model, hints: RequestHints(policy: policy, tenant: "sim"))
                let servedBy = lease.servedModel ?? model
                lease.release()
                #expect(policy.admits(config.substrateTags(of: byName[servedBy]!)), "served across a forbidden boundary")
                #expect(servedBy == expected, "\(model) with \(policy) went to \(servedBy), expected \(expected ?? "none")")
                served += 1
                if servedBy != model { spilled += 1 }
            } catch let error as GatewayError {
                #expect(expected == nil, "\(model) with \(policy) refused (\(error)) though \(expected ?? "") could serve")
                // Nothing allowed: the policy's 403; else the last allowed one's own failure (a 503).
                #expect((error.code == "policy_forbidden") == allowed.isEmpty, "\(error.code) for allowed \(allowed)")
                #expect(error.status.code == (allowed.isEmpty ? 403 : 503))
                refused += 1
            }
        }
        // The random mix exercises every path.
        #expect(served > 0 && spilled > 0 && refused > 0, "served \(served), spilled \(spilled), refused \(refused)")
    }
}
