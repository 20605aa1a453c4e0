import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A Redis-protocol TCP server over a `KVBackend` (RESP2, and RESP3 for a connection that says
/// `HELLO 3`): enough of Redis for redis-cli, redis-benchmark, redis-py and LMCache's redis
/// connector (see `RESPCommandHandler`).
///
///     let server = RESPServer(configuration: .init(port: 6380), backend: store, logger: logger)
///     try await server.run()   // until the task is cancelled or `shutdown()` is called
public final class RESPServer: Sendable {
    public let configuration: RESPServerConfiguration
    public let handler: RESPCommandHandler
    private let logger: Logger
    private let group: any EventLoopGroup
    private let state = Mutex(State())

    private struct State {
        var listener: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        var shutDown = false
    }

    public init(
        configuration: RESPServerConfiguration,
        backend: any KVBackend,
        logger: Logger,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.handler = RESPCommandHandler(
            backend: backend, users: configuration.users, defaultNamespace: configuration.defaultNamespace)
        self.logger = logger
        self.group = eventLoopGroup
    }

    /// The port the listener is bound to, once `start()` has returned.
    public var boundPort: Int? {
        state.withLock { $0.listener?.localAddress?.port }
    }

    /// Binds the listener (once; later calls return the same port) and starts accepting.
    /// Returns the bound port, which is the actual one when the configured port is 0.
    @discardableResult
    public func start() async throws -> Int {
        if let port = boundPort { return port }
        let configuration = self.configuration
        let handler = self.handler
        let logger = self.logger
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(
                ChannelOptions.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024)
            )
            .childChannelInitializer { [weak self] channel in
                self?.track(channel)
                return channel.eventLoop.makeCompletedFuture {
                    // Reads grow up to 256 KiB. A SET value of at least `minStagedValueBytes` that
                    // a read cuts is staged, and its rest read straight into its storage: one copy
                    // per byte. A larger read lets whole 1 MiB values arrive within one buffer,
                    // to be copied from there (two copies; measured slower for pipelined 1 MiB
                    // SETs, 0.83x Redis with 4 MiB reads against 1.21x with 256 KiB).
                    let direct = DirectReceiveSwitch()
                    try channel.syncOptions?.setOption(
                        ChannelOptions.recvAllocator,
                        value: RESPReceiveAllocator(minimum: 1024, initial: 16 * 1024, maximum: 256 << 10, direct: direct))
                    try channel.pipeline.syncOperations.addHandler(
                        RESPConnectionHandler(handler: handler, configuration: configuration, logger: logger, direct: direct))
                }
            }
        if let bytes = configuration.sendBufferBytes {
            bootstrap = bootstrap.childChannelOption(ChannelOptions.socketOption(.so_sndbuf), value: bytes)
        }
        if let bytes = configuration.notSentLowWaterBytes {
            bootstrap = bootstrap.childChannelOption(ChannelOptions.tcpOption(.tcpNotSentLowWater), value: SocketOptionValue(bytes))
        }
        let listener = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        let port = listener.localAddress?.port ?? configuration.port
        let winner: (any Channel)? = state.withLock { state in
            if state.shutDown { return nil }
            if let existing = state.listener { return existing }
            state.listener = listener
            return listener
        }
        guard winner === listener else {
            try? await listener.close()
            if let winner, let port = winner.localAddress?.port { return port }
            throw CancellationError()
        }
        handler.stats.bound(port: port)
        logger.info("RESP server listening", metadata: ["host": "\(configuration.host)", "port": "\(port)"])
        return port
    }

    /// Serves until the calling task is cancelled or `shutdown()` is called; then closes the
    /// listener and every connection. Binds first if `start()` was not called.
    public func run() async throws {
        try await start()
        guard let listener = state.withLock({ $0.listener }) else { return }
        try await withTaskCancellationHandler {
            try await listener.closeFuture.get()
        } onCancel: {
            listener.close(promise: nil)
        }
        await shutdown()
    }

    /// Closes the listener and all connections; in-flight commands finish but their replies are dropped.
    public func shutdown() async {
        let (listener, connections) = state.withLock { state in
            state.shutDown = true
            return (state.listener, Array(state.connections.values))
        }
        try? await listener?.close()
        for connection in connections {
            try? await connection.close()
        }
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let refused = state.withLock { state in
            if state.shutDown { return true }
            state.connections[id] = channel
            return false
        }
        if refused {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            _ = self?.state.withLock { $0.connections.removeValue(forKey: id) }
        }
    }
}

extension NIOBSDSocket.Option {
    /// TCP_NOTSENT_LOWAT (`linux/tcp.h`; NIO names no constant for it).
    static let tcpNotSentLowWater = NIOBSDSocket.Option(rawValue: 25)
}
