import Synchronization

/// Reuses `IOBuffer`s by size class (powers of two from 4 KiB), because fresh memory faults in
/// slowly on these VMs and a buffer per operation would put that cost on every read. Bounded:
/// at most `perClass` idle buffers are kept per class; the rest are freed.
public final class IOBufferPool: Sendable {
    public let perClass: Int
    private let free: Mutex<[Int: [IOBuffer]]> = Mutex([:])

    public init(perClass: Int = 64) {
        self.perClass = perClass
    }

    /// A buffer of at least `count` bytes (its `count` is the size class).
    public func take(atLeast count: Int) -> IOBuffer {
        let size = Self.sizeClass(count)
        if let buffer = free.withLock({ $0[size]?.popLast() }) { return buffer }
        return IOBuffer(count: size)
    }

    public func give(_ buffer: IOBuffer) {
        let size = buffer.count
        guard size == Self.sizeClass(size) else { return }
        free.withLock { free in
            if free[size, default: []].count < perClass { free[size, default: []].append(buffer) }
        }
    }

    /// Powers of two up to 1 MiB, then whole MiB: a record of an 8 MiB chunk (8 MiB and a
    /// header) takes 9 MiB, not 16.
    static func sizeClass(_ count: Int) -> Int {
        if count > 1 << 20 { return ((count + (1 << 20) - 1) >> 20) << 20 }
        var size = 4096
        while size < count { size <<= 1 }
        return size
    }
}
