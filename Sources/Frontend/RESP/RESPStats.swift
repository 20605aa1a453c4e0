import Synchronization

/// Counters for INFO's `clients`, `stats` and `server` sections, shared by a server's connections.
public final class RESPStats: Sendable {
    private let connectionsReceived = Atomic<Int>(0)
    private let connected = Atomic<Int>(0)
    private let commands = Atomic<Int>(0)
    private let protocolErrors = Atomic<Int>(0)
    private let staged = Atomic<Int>(0)
    private let directBytes = Atomic<Int>(0)
    private let sentDirectly = Atomic<Int>(0)
    private let sendBufferRaises = Atomic<Int>(0)
    private let port = Atomic<Int>(0)
    private let queuedReplies = Atomic<Int>(0)
    private let nextClientID = Atomic<Int64>(0)
    /// Uptime is measured from here.
    public let started = ContinuousClock.now

    public init() {}

    public var totalConnectionsReceived: Int { connectionsReceived.load(ordering: .relaxed) }
    public var connectedClients: Int { connected.load(ordering: .relaxed) }
    public var totalCommandsProcessed: Int { commands.load(ordering: .relaxed) }
    public var totalProtocolErrors: Int { protocolErrors.load(ordering: .relaxed) }
    /// SET values received straight into the backend's storage (`KVBackend.stageValue`).
    public var totalStagedValues: Int { staged.load(ordering: .relaxed) }
    /// Bytes of staged values read from the socket straight into the backend's storage.
    public var totalBytesReceivedDirectly: Int { directBytes.load(ordering: .relaxed) }
    /// GET replies written to the socket straight from the backend's storage (not copied).
    public var totalRepliesSentDirectly: Int { sentDirectly.load(ordering: .relaxed) }
    /// Times a connection's send buffer was raised to hold a large reply whole.
    public var totalSendBufferRaises: Int { sendBufferRaises.load(ordering: .relaxed) }
    public var tcpPort: Int { port.load(ordering: .relaxed) }
    /// Bytes of replies handed to connections' channels and not yet written to their sockets,
    /// all connections together (bounded by `maxTotalQueuedReplyBytes`).
    public var queuedReplyBytes: Int { queuedReplies.load(ordering: .relaxed) }

    /// Counts a new connection and returns its client ID (1, 2, ...).
    func connectionOpened() -> Int64 {
        connectionsReceived.add(1, ordering: .relaxed)
        connected.add(1, ordering: .relaxed)
        return nextClientID.add(1, ordering: .relaxed).newValue
    }

    func connectionClosed() { connected.subtract(1, ordering: .relaxed) }
    func commandProcessed() { commands.add(1, ordering: .relaxed) }
    func commandsProcessed(_ count: Int) { commands.add(count, ordering: .relaxed) }
    func valueStaged() { staged.add(1, ordering: .relaxed) }
    func receivedDirectly(bytes: Int) { directBytes.add(bytes, ordering: .relaxed) }
    func replySentDirectly() { sentDirectly.add(1, ordering: .relaxed) }
    func sendBufferRaised() { sendBufferRaises.add(1, ordering: .relaxed) }
    func repliesQueued(bytes: Int) { queuedReplies.add(bytes, ordering: .relaxed) }
    func repliesWritten(bytes: Int) { queuedReplies.subtract(bytes, ordering: .relaxed) }
    func protocolErrorSeen() { protocolErrors.add(1, ordering: .relaxed) }
    func bound(port value: Int) { port.store(value, ordering: .relaxed) }
}
