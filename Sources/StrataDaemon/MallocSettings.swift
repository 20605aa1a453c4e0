import CStrataProcess

/// The daemon moves values of megabytes through fresh buffers (RESP values, block reads, staging
/// chunks). glibc hands allocations above its mmap threshold (from 128 KiB) straight to `mmap`
/// and gives freed heap tops back to the kernel, so each such buffer is faulted in anew, at a
/// few hundred MB/s on these VMs. Keeping buffers of up to 32 MiB on the heap and trimming only
/// past 512 MiB free lets them be reused (measured with redis-benchmark, docs/BENCHMARKS.md).
/// Applied once at start, before threads allocate.
public enum MallocSettings {
    @discardableResult
    public static func apply() -> Bool {
        strata_malloc_tune(32 << 20, 512 << 20) == 1
    }
}
