#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Writing to a channel's socket with one `writev`, past NIO's write path (the pipeline walk, the
/// pending-writes queue, the flush, a promise where one is asked for). For the small writes of a
/// request and its answer that path costs more CPU than the system call itself.
///
/// The caller keeps NIO's order: it writes directly only while nothing waits in the channel that
/// the bytes would overtake, and hands what the socket does not take to the channel to write
/// after them, where it meets NIO's usual fate (EAGAIN: written when the socket drains; an
/// error: the channel reports it and closes). NIO ignores SIGPIPE for the process, so a write to
/// a socket the peer closed fails with EPIPE rather than killing the daemon.
enum DirectSocketWrite {
    /// The channel's socket, looked up once into `cache` (NIO's lookup casts to a generic
    /// protocol type, costly per write); nil where the channel has none, and while it is not
    /// active: a closed socket's number may already name another file. Only on the channel's
    /// event loop, right before the write (NIO cannot close the socket in between).
    static func socket(of channel: any Channel, cache: inout NIOBSDSocket.Handle??) -> NIOBSDSocket.Handle? {
        guard channel.isActive else { return nil }
        if let cached = cache { return cached }
        let found = try? channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { $0 }
        cache = .some(found)
        return found
    }

    /// Whether NIO holds no bytes for the channel (written or not yet flushed): only then may bytes
    /// go to its socket directly. False where the channel cannot tell.
    static func nothingQueued(in channel: any Channel) -> Bool {
        (try? channel.syncOptions?.getOption(.bufferedWritableBytes)) == 0
    }

    /// Writes the pieces, in order, with one `writev` (again when interrupted): how many bytes the
    /// socket took, 0 when it took none or the write failed (the channel finds out which when it
    /// writes the rest).
    static func writev(
        _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        _ third: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0), to socket: NIOBSDSocket.Handle
    ) -> Int {
        withUnsafeTemporaryAllocation(of: iovec.self, capacity: 3) { vectors in
            func vector(_ piece: UnsafeRawBufferPointer) -> iovec {
                iovec(iov_base: UnsafeMutableRawPointer(mutating: piece.baseAddress), iov_len: piece.count)
            }
            (vectors[0], vectors[1], vectors[2]) = (vector(first), vector(second), vector(third))
            while true {
                let count = Glibc.writev(socket, vectors.baseAddress, 3)
                if count < 0, errno == EINTR { continue }
                return max(0, count)
            }
        }
    }

    /// Writes `buffer`'s readable bytes to the socket: nil when it took them all, else what is
    /// left of them (the same storage, nothing copied).
    static func write(_ buffer: ByteBuffer, to socket: NIOBSDSocket.Handle) -> ByteBuffer? {
        var rest = buffer
        let written = rest.withUnsafeReadableBytes { writev($0, to: socket) }
        if written == rest.readableBytes { return nil }
        rest.moveReaderIndex(forwardBy: written)
        return rest
    }
}
