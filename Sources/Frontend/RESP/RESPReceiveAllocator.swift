import NIOCore

/// Whether a connection is receiving a staged value straight from its socket, or may be about
/// to. Shared by the connection's handler, which sets it, and its receive allocator, which reads
/// it; both run on the connection's event loop only.
final class DirectReceiveSwitch: @unchecked Sendable {
    var on = false
    /// The connection's last command was a SET whose value was staged, and nothing of the next
    /// one has been read: it is likely another, whose value should go straight to its storage
    /// too, so NIO's next read stops after the next command's start.
    var atLargeSetBoundary = false
}

/// The receive buffers of a RESP connection. Normally NIO's adaptive sizes, up to `maximum`.
/// While the handler reads a large SET value straight from the socket into its storage
/// (`DirectReceiveSwitch.on`), NIO reads into a small fresh buffer: its read then only tells
/// the handler that bytes have come, and the handler reads the rest of the value itself, so the
/// bulk of it is copied once (kernel to storage), not twice (kernel to NIO's buffer to storage).
/// And after such a SET (`atLargeSetBoundary`), NIO's next read is small, so that a next large
/// value, arriving whole with its command, is not read into NIO's buffer before it is known to
/// be one: the handler stages it from its first bytes.
struct RESPReceiveAllocator: RecvByteBufferAllocator {
    /// NIO's read while receiving directly: enough for the value's next bytes to be noticed.
    static let signalBytes = 256
    /// NIO's read after a staged SET: a command's header and a little of its value.
    static let boundaryBytes = 4096

    private var adaptive: AdaptiveRecvByteBufferAllocator
    private let direct: DirectReceiveSwitch

    init(minimum: Int, initial: Int, maximum: Int, direct: DirectReceiveSwitch) {
        adaptive = AdaptiveRecvByteBufferAllocator(minimum: minimum, initial: initial, maximum: maximum)
        self.direct = direct
    }

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        if direct.on { return allocator.buffer(capacity: Self.signalBytes) }
        if direct.atLargeSetBoundary { return allocator.buffer(capacity: Self.boundaryBytes) }
        return adaptive.buffer(allocator: allocator)
    }

    private var small: Bool { direct.on || direct.atLargeSetBoundary }

    /// Nil while reading small: NIO's pool would otherwise hand out a kept buffer of up to
    /// `maximum` bytes and read that much into it.
    func nextBufferSize() -> Int? {
        small ? nil : adaptive.nextBufferSize()
    }

    /// Always true, so that NIO's pool, asked without a size (while reading small), makes a new
    /// small buffer with `buffer(allocator:)` instead of reusing its kept large one. Small reads
    /// do not teach the adaptive sizes.
    mutating func record(actualReadBytes: Int) -> Bool {
        if !small { _ = adaptive.record(actualReadBytes: actualReadBytes) }
        return true
    }
}
