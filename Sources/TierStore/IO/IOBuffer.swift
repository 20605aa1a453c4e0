import CStrataURing
import Glibc

/// `open` flag for direct I/O (bypassing the page cache); needs buffers, offsets and lengths
/// aligned to the device's logical block size.
public let O_DIRECT: Int32 = strata_o_direct_flag()

/// Caller-owned memory for I/O: aligned for O_DIRECT (4 KiB by default) and touched once at
/// allocation, because first-touch page faults are very slow on these VMs; reuse, don't
/// reallocate. It stays valid while the owner holds it, across any number of awaits.
public final class IOBuffer: @unchecked Sendable {
    public let count: Int
    public let alignment: Int
    public let pointer: UnsafeMutableRawPointer

    /// From this size on, the memory is its own mapping, populated by the kernel in one go:
    /// about twice as fast as faulting it in page by page with a memset.
    static let mappedFrom = 1 << 20
    private let mapped: Bool

    public init(count: Int, alignment: Int = 4096) {
        precondition(count >= 0 && alignment > 0 && alignment & (alignment - 1) == 0)
        self.count = count
        self.alignment = alignment
        if count >= Self.mappedFrom && alignment <= 4096,
            let region = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
            region != MAP_FAILED
        {
            pointer = region
            mapped = true
            return
        }
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, alignment, max(count, 1))
        precondition(rc == 0 && raw != nil, "posix_memalign(\(count)) failed: \(rc)")
        pointer = raw!
        mapped = false
        memset(pointer, 0, count)   // pre-fault every page now, not on the hot path
    }

    deinit {
        if mapped { munmap(pointer, count) } else { free(pointer) }
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count) }
    public var readOnly: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }

    public subscript(range: Range<Int>) -> UnsafeMutableRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count)
        return UnsafeMutableRawBufferPointer(rebasing: bytes[range])
    }
}
