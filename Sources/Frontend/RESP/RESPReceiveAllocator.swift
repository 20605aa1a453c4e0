import NIOCore

/// Whether a connection is receiving a staged value straight from its socket. Shared by the
/// connection's handler, which sets it, and its receive allocator, which reads it; both run on
/// the connection's event loop only.
final class DirectReceiveSwitch: @unchecked Sendable {
    var on = false
}

/// The receive buffers of a RESP connection. Normally NIO's adaptive sizes, up to `maximum`.
/// While the handler reads a large SET value straight from the socket into its storage
/// (`DirectReceiveSwitch.on`), NIO reads into a small fresh buffer: its read then only tells
/// the handler that bytes have come, and the handler reads the rest of the value itself, so the
/// bulk of it is copied once (kernel to storage), not twice (kernel to NIO's buffer to storage).
struct RESPReceiveAllocator: RecvByteBufferAllocator {
    /// NIO's read while receiving directly: enough for the value's next bytes to be noticed.
    static let signalBytes = 256

    private var adaptive: AdaptiveRecvByteBufferAllocator
    private let direct: DirectReceiveSwitch

    init(minimum: Int, initial: Int, maximum: Int, direct: DirectReceiveSwitch) {
        adaptive = AdaptiveRecvByteBufferAllocator(minimum: minimum, initial: initial, maximum: maximum)
        self.direct = direct
    }

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        direct.on ? allocator.buffer(capacity: Self.signalBytes) : adaptive.buffer(allocator: allocator)
    }

    /// Nil while receiving directly: NIO's pool would otherwise hand out a kept buffer of up to
    /// `maximum` bytes and read that much into it.
    func nextBufferSize() -> Int? {
        direct.on ? nil : adaptive.nextBufferSize()
    }

    /// Always true, so that NIO's pool, asked without a size (while receiving directly), makes a
    /// new small buffer with `buffer(allocator:)` instead of reusing its kept large one.
    mutating func record(actualReadBytes: Int) -> Bool {
        if !direct.on { _ = adaptive.record(actualReadBytes: actualReadBytes) }
        return true
    }
}
