import AsyncHTTPClient
import Foundation
import Frontend
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

extension Daemon {
    /// The directories a daemon's data lives in, each locked for it (`DirectoryLock`): the
    /// state directory, and the NVMe tier's and the staged weights' when they lie elsewhere
    /// (unless they cannot be made at all: then the tiers do not open, and the gateway runs
    /// without them, as it does for any failure of theirs).
    static func lockDirectories(of config: StrataConfiguration) throws -> [DirectoryLock] {
        func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
        let state = absolute(config.stateDirectory)
        var directories = [(state, "state_dir")]
        for (directory, role) in [(config.tiers.nvme.directory, "tiers.nvme.dir"), (config.tiers.host.directory, "tiers.host.dir")] {
            guard let directory else { continue }
            let path = absolute(directory)
            if path != state && !path.hasPrefix(state + "/") && !directories.contains(where: { $0.0 == path }) {
                directories.append((path, role))
            }
        }
        return try directories.compactMap { directory, role in
            do {
                return try DirectoryLock(directory: directory, role: role)
            } catch is DirectoryLock.CannotLock where role != "state_dir" {
                return nil   // a tier directory that cannot be used: the tiers fail to open and say so, the gateway runs on
            }
        }
    }
}

/// A listening address another process holds, and the key of the config that names it.
public struct AddressInUse: Error, CustomStringConvertible {
    public var key: String
    public var address: String

    public init(key: String, address: String) {
        self.key = key
        self.address = address
    }

    public var description: String { "cannot listen on \(address) (\(key)): the address is in use, by another strata or another program" }
}

/// Wires the modules together and runs them as services: the storage tiers, the model
/// controller, the HTTP server last, so SIGTERM stops taking requests, drains those in flight,
/// stops runtimes, then closes the tiers.
public enum Daemon {
    public static func run(
        config: StrataConfiguration, configPath: String? = nil, logger: Logger,
        renderMetrics: @escaping @Sendable () -> String, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws {
        // Before anything is opened (the directories are made here): a second daemon on the same
        // directories stops here.
        let locks = try lockDirectories(of: config)
        defer { withExtendedLifetime(locks) {} }
        logger.info("\(config.gpuDiscovery.summary); devices: \(config.devices.map { "\($0.name) (\($0.kind.rawValue), \(ConfigUnits.formatBytes($0.memoryBytes)))" }.joined(separator: ", "))")
        for missing in ConfigSummary.missingExecutables(config) + ConfigSummary.weightsNotGGUF(config) { logger.warning("\(missing)") }
        if !config.listen.isLoopback && !config.requiresAPIKeys {
            logger.warning("listening on \(config.listen) without API keys: anyone who can reach it can use it (set STRATA_API_KEYS)")
        }

        var clientConfiguration = HTTPClient.Configuration()
        // `read`: the longest silence from a runtime once a request is sent, also within a
        // streamed answer, whose head comes at once: a runtime that hangs, or a remote one cut off
        // without a reset, ends the stream with an error event instead of holding the client and
        // the replica's load count for ever.
        clientConfiguration.timeout = .init(connect: .seconds(5), read: TimeAmount(config.gateway.upstreamTimeout))
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        // A refused or failed connect is an answer: the request fails at once (502, or the next
        // replica) as on the event-loop relay, instead of the client retrying with backoff until
        // the connect timeout, which held every streamed request to a dead upstream for 5 s.
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        clientConfiguration.decompression = .disabled
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)

        let tiers = TierService(configuration: config.tiers, stateDirectory: config.stateDirectory, logger: logger)
        let controller = ModelController(config: config, httpClient: httpClient, logger: logger, tiers: tiers)
        let ready = ReadyFlag()
        // One directory of keys for both faces of the KV service (RESP and /v1/blocks).
        let kv: TierKVBackend? = config.kv.resp != nil
            ? TierKVBackend(tiers: tiers, durability: config.kv.durability == .durable ? .durable : .cache) : nil
        // Opened with the tiers, not on the first command: the directory loaded, an earlier run's
        // unreachable blocks dropped before anything is asked (INFO counted them until then).
        if let kv { Task { await kv.open() } }
        let access = AccessControlBox(config.accessControl)
        let reloader = ConfigReloader(path: configPath, running: config, controller: controller, access: access, logger: logger)
        let gateway = Gateway(
            configuration: GatewayConfiguration(
                adminKey: config.auth.adminKey,
                adminOpenWithoutKey: config.listen.isLoopback, maxBodyBytes: config.gateway.maxBodyBytes,
                upstreamTimeout: config.gateway.upstreamTimeout, cancelOnDisconnect: config.gateway.cancelOnDisconnect,
                routingBlockBytes: config.routing.blockBytes, sessionHeader: config.routing.sessionHeader,
                relayOnEventLoop: config.gateway.relayOnEventLoop, clientIdleTimeout: config.gateway.idleTimeout,
                corsOrigins: CORSOrigins(config.gateway.corsOrigins)),
            backend: controller, httpClient: httpClient, logger: logger, renderMetrics: renderMetrics,
            isReady: { ready.value }, tiers: tiers, kv: kv, access: access,
            reload: { try await reloader.reloadJSON(trigger: "POST /admin/reload") })

        let app = Application(
            router: gateway.buildRouter(),
            server: gateway.httpServer(),
            configuration: .init(address: .hostname(config.listen.host, port: config.listen.port), serverName: Gateway.serverName),
            onServerRunning: { channel in
                ready.set(true)
                let port = channel.localAddress?.port ?? config.listen.port
                logger.info("strata listening on \(config.listen.host):\(port), \(config.models.count) model(s) configured")
                await onListening(port)
            },
            logger: logger)

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: tiers),
            .init(service: ControllerService(controller: controller, ready: ready)),
            .init(service: ReloadOnHangUp(reloader: reloader)),
        ]
        // The RESP server's own loops (`kv.threads`), shut down after it when the daemon stops.
        var respLoops: MultiThreadedEventLoopGroup?
        var respCommands: @Sendable () -> Int = { 0 }
        if let resp = config.kv.resp, let kv {
            let threads = config.kv.threads ?? KVConfiguration.defaultThreads(cores: System.coreCount)
            let loops = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            respLoops = loops
            let server = RESPServer(
                configuration: RESPServerConfiguration(
                    host: resp.host, port: resp.port,
                    maxQueuedReplyBytes: Int(config.kv.replyBuffer),
                    maxTotalQueuedReplyBytes: Int(config.kv.replyBufferTotal), sendBufferBytes: config.kv.sendBufferBytes,
                    notSentLowWaterBytes: config.kv.notSentLowWaterBytes,
                    users: config.kv.password.map { [RESPUser(password: $0, namespace: "default")] } ?? []),
                backend: kv, logger: logger,
                eventLoopGroup: loops)
            services.append(.init(service: RESPService(server: server, logger: logger, address: resp, threads: threads)))
            respCommands = { server.handler.stats.totalCommandsProcessed }
        }
        services.append(.init(service: HeapTrimmer(activity: respCommands, logger: logger)))
        services.append(.init(service: app))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        let running = Task { try await group.run() }
        let limit = Task {
            await limitDrain(of: running, to: config.gateway.drainTimeout, logger: logger) {
                // Upstream calls fail at once and their clients are told why; then the rest is cancelled.
                gateway.cutForStop()
                try? await httpClient.shutdown()
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        do {
            try await running.value
        } catch is CancellationError where limit.isCancelled == false && running.isCancelled {
            // Cut short by the drain limit (logged there): a stop all the same.
        } catch {
            limit.cancel()
            try? await httpClient.shutdown()
            try? await respLoops?.shutdownGracefully()
            throw error
        }
        limit.cancel()
        try? await httpClient.shutdown()   // already, if the drain limit cut requests short
        try? await respLoops?.shutdownGracefully()
    }

    /// A stop (SIGTERM, SIGINT) lets requests under way finish, but not for ever: after
    /// `timeout`, or at once on a second signal, the services are cancelled, which cuts what is
    /// still running (runtimes are stopped, the tiers closed as after a crash: nothing
    /// acknowledged as durable is lost).
    static func limitDrain(
        of running: Task<Void, any Error>, to timeout: Duration, logger: Logger, beforeCut: @Sendable () async -> Void
    ) async {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        for await _ in signals { break }
        guard !Task.isCancelled else { return }
        logger.notice("stopping: requests under way have up to \(timeout) (gateway.drain_timeout) to finish; signal again to stop at once")
        let again = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { return true }
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        guard !Task.isCancelled else { return }
        logger.warning("stopping now (\(again ? "a second signal" : "gateway.drain_timeout passed")): what still runs is cut")
        await beforeCut()
        running.cancel()
    }
}

/// Runs the controller's clock and, on shutdown, stops every runtime.
struct ControllerService: Service {
    let controller: ModelController
    let ready: ReadyFlag

    func run() async throws {
        await withGracefulShutdownHandler {
            await cancelWhenGracefulShutdown {
                await controller.runTicks()
            }
        } onGracefulShutdown: {
            ready.set(false)
        }
        await controller.shutdown()
    }
}

final class ReadyFlag: Sendable {
    private let box = NIOLockedValueBox(false)
    var value: Bool { box.withLockedValue { $0 } }
    func set(_ value: Bool) { box.withLockedValue { $0 = value } }
}

import NIOConcurrencyHelpers

/// The RESP server as a service: serves until graceful shutdown, then closes its connections.
struct RESPService: Service {
    let server: RESPServer
    let logger: Logger
    let address: ListenAddress
    let threads: Int

    func run() async throws {
        let port: Int
        do {
            port = try await server.start()
        } catch let error as NIOCore.IOError where error.errnoCode == EADDRINUSE {
            throw AddressInUse(key: "kv.resp", address: "\(address.host):\(address.port)")
        }
        logger.info("RESP (Redis protocol) on \(address.host):\(port), \(threads) event-loop thread\(threads == 1 ? "" : "s"), keys in the storage tiers")
        await cancelWhenGracefulShutdown {
            try? await server.run()
        }
        await server.shutdown()
    }
}
