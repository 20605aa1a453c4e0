/// Settings of the RESP (Redis protocol) server. Every queue a connection holds is bounded here.
public struct RESPServerConfiguration: Sendable, Hashable {
    /// Address to listen on. Default loopback: the cache carries no TLS.
    public var host: String
    /// TCP port; 0 picks a free one (see `RESPServer.start()`). Default 6379.
    public var port: Int
    /// Request parsing limits (bulk length, array size, inline length).
    public var parserLimits: RESPParser.Limits
    /// A connection stops reading while it has this many parsed commands waiting. Default 1024.
    public var maxPendingCommands: Int
    /// ...or while its waiting commands hold this many bytes. Default 64 MiB. A single request may
    /// still be as large as `parserLimits.maxBulkLength` allows.
    public var maxPendingBytes: Int
    /// Most commands run back to back before their replies are flushed. Default 128.
    public var maxBatchCommands: Int
    /// Replies a connection keeps answering into while its client does not take them (the
    /// channel is not writable), as Redis does without a bound for ordinary clients: a client
    /// that writes a whole pipeline before it reads (redis-py, Jedis, hiredis) needs its replies
    /// buffered until it is done writing. Past this, no further command of the connection runs
    /// until the client reads. Default 256 MiB.
    public var maxQueuedReplyBytes: Int
    /// The same for all connections together: past this many bytes of replies waiting for their
    /// clients, no connection answers beyond writability until some are taken (each connection
    /// is bounded, their sum across many such clients otherwise not). Default 1 GiB.
    public var maxTotalQueuedReplyBytes: Int
    /// Connections beyond this are answered `-ERR max number of clients reached` and closed. Default 10000.
    public var maxConnections: Int
    /// A SET value at least this long is received straight into the backend's storage when the
    /// backend offers it (`KVBackend.stageValue`), not buffered first. Default 32 KiB (Redis's
    /// `PROTO_MBULK_BIG_ARG`, past which it too reads a value into its final buffer).
    public var minStagedValueBytes: Int
    /// SO_SNDBUF of each connection (the kernel doubles it for its own accounting and caps it
    /// at `net.core.wmem_max`); nil: the kernel's autotuning, which lets a socket take
    /// megabytes. Default 128 KiB (the daemon keeps it for loopback only): a connection
    /// then has at most a few hundred KiB of replies in flight, so a client reading pipelined
    /// large values finds them still in cache, as with Redis, which writes 64 KiB per client
    /// per turn (measured in docs/BENCHMARKS.md: with autotuning, redis-benchmark spent twice
    /// the kernel time receiving the same 64 KiB GET replies). A connection raises its own to the
    /// size of a larger value it sends, so that one GET reply goes out in one write.
    public var sendBufferBytes: Int?
    public static let defaultSendBufferBytes = 128 * 1024
    /// TCP_NOTSENT_LOWAT of each connection: the most bytes of replies its socket holds that
    /// TCP has not sent yet (the kernel's default has no limit); nil: not set. Default 64 KiB.
    /// A large GET reply goes into the socket only as fast as the client's receive window opens,
    /// the rest waiting in the connection: each part is sent by the server's own write, at once.
    /// Without it the socket takes the whole reply (its send buffer raised to fit), and the
    /// part the window holds back is sent later from within the client's reads, as they
    /// acknowledge what came before, on the client's CPU: redis-benchmark, which reads a 4 MiB
    /// reply 16 KiB at a time, spent 3.2 ms of CPU per reply against 1.8 ms with 64 KiB
    /// (docs/BENCHMARKS.md, session 37). Redis bounds it its own way, writing at most 64 KiB
    /// per client per turn of its event loop.
    public var notSentLowWaterBytes: Int?
    public static let defaultNotSentLowWaterBytes = 64 * 1024
    /// Credentials; empty means no AUTH and every connection uses `defaultNamespace`.
    public var users: [RESPUser]
    /// Tenant namespace of connections when `users` is empty. Default `default`.
    public var defaultNamespace: String

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        parserLimits: RESPParser.Limits = RESPParser.Limits(),
        maxPendingCommands: Int = 1024,
        maxPendingBytes: Int = 64 * 1024 * 1024,
        maxBatchCommands: Int = 128,
        maxQueuedReplyBytes: Int = 256 * 1024 * 1024,
        maxTotalQueuedReplyBytes: Int = 1 << 30,
        maxConnections: Int = 10_000,
        minStagedValueBytes: Int = 32 * 1024,
        sendBufferBytes: Int? = defaultSendBufferBytes,
        notSentLowWaterBytes: Int? = defaultNotSentLowWaterBytes,
        users: [RESPUser] = [],
        defaultNamespace: String = "default"
    ) {
        precondition((0...65535).contains(port), "port \(port) is not in 0...65535")
        precondition(maxPendingCommands > 0 && maxPendingBytes > 0 && maxBatchCommands > 0 && maxConnections > 0 && maxQueuedReplyBytes >= 0
            && maxTotalQueuedReplyBytes >= 0)
        precondition(minStagedValueBytes >= 0)
        precondition(sendBufferBytes.map { $0 > 0 } ?? true, "sendBufferBytes must be positive (nil: the kernel's default)")
        precondition(notSentLowWaterBytes.map { $0 > 0 && $0 <= Int(Int32.max) } ?? true,
                     "notSentLowWaterBytes must be positive and fit 32 bits (nil: not set)")
        self.host = host
        self.port = port
        self.parserLimits = parserLimits
        self.maxPendingCommands = maxPendingCommands
        self.maxPendingBytes = maxPendingBytes
        self.maxBatchCommands = maxBatchCommands
        self.maxQueuedReplyBytes = maxQueuedReplyBytes
        self.maxTotalQueuedReplyBytes = maxTotalQueuedReplyBytes
        self.maxConnections = maxConnections
        self.minStagedValueBytes = minStagedValueBytes
        self.sendBufferBytes = sendBufferBytes
        self.notSentLowWaterBytes = notSentLowWaterBytes
        self.users = users
        self.defaultNamespace = defaultNamespace
    }
}
