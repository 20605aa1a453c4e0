import AsyncHTTPClient
import Foundation
import Frontend
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import StrataDaemon

/// What the gateway's event loop may admit without waiting: upstream models, never managed
/// runtimes (the Placer admits those), and nothing once shutdown has begun.
struct ImmediateRoutesTests {
    static let runtimes = """
        runtimes:
          llama: { kind: llama-server, binary: /bin/true }
          remote: { kind: upstream, url: "http://127.0.0.1:9/v1" }

        """

    /// `models` may name `${WEIGHTS}`: a small file standing in for a GGUF (ConfigLoaderTests' one
    /// fixed file, so that runs leave no file each behind).
    static func controller(_ models: String) throws -> ModelController {
        let config = try ConfigLoader.parse(
            yaml: runtimes + "models:\n" + models, environment: ["WEIGHTS": ConfigLoaderTests.modelFile])
        return ModelController(config: config, httpClient: .shared, logger: Logger(label: "test"))
    }

    @Test func onlyManagedModelsMeansTheEventLoopAdmitsNothing() async throws {
        let managed = try Self.controller("  - { name: local, source: \"file://${WEIGHTS}\", runtime: llama, memory: 100MiB }\n")
        #expect(!managed.admitsAnyImmediately)
        #expect(managed.acquireImmediately(model: "local", hints: RequestHints()) == nil)
    }

    @Test func anUpstreamModelIsAdmittedAtOnceUntilShutdown() async throws {
        let mixed = try Self.controller("""
              - { name: local, source: "file://${WEIGHTS}", runtime: llama, memory: 100MiB }
              - { name: far, runtime: remote }

            """)
        #expect(mixed.admitsAnyImmediately)
        let lease = try #require(mixed.acquireImmediately(model: "far", hints: RequestHints()))
        #expect(lease.baseURL == "http://127.0.0.1:9/v1")
        lease.release()
        await mixed.shutdown()
        #expect(!mixed.admitsAnyImmediately)
        #expect(mixed.acquireImmediately(model: "far", hints: RequestHints()) == nil)
    }

    @Test func eachThreadsCopyIsReplacedWhenNewRoutesArePublished() async throws {
        // Each thread keeps its own copy of the routes: one made before a publish must not
        // outlive it, on the thread that published or any other.
        let controller = try Self.controller("  - { name: far, runtime: remote }\n")
        let box = controller.immediateRoutes
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        func onEachLoop(_ read: @escaping @Sendable () -> Bool) async throws -> [Bool] {
            var seen: [Bool] = []
            for loop in loops.makeIterator() { seen.append(try await loop.submit(read).get()) }
            return seen
        }
        #expect(try await onEachLoop { box.current.routes["far"] != nil } == [true, true])
        var routes = box.current
        routes.shuttingDown = true
        box.publish(routes)
        #expect(box.current.shuttingDown)
        #expect(try await onEachLoop { box.current.shuttingDown } == [true, true])
        routes.routes = [:]
        routes.shuttingDown = false
        box.publish(routes)
        #expect(try await onEachLoop { !box.current.shuttingDown && box.current.routes.isEmpty } == [true, true])
        try await loops.shutdownGracefully()
    }
}
