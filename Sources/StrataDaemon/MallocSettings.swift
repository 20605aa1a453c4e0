import CStrataProcess
import Logging
import ServiceLifecycle

/// The daemon moves values of megabytes through fresh buffers (RESP values, block reads, staging
/// chunks). glibc hands allocations above its mmap threshold (from 128 KiB) straight to `mmap`
/// and gives freed heap tops back to the kernel, so each such buffer is faulted in anew, at a
/// few hundred MB/s on these VMs. Keeping buffers of up to 32 MiB on the heap and trimming only
/// past 512 MiB free lets them be reused (measured with redis-benchmark, docs/BENCHMARKS.md).
/// Applied once at start, before threads allocate. What stays free once the work is over is
/// given back by `HeapTrimmer`.
public enum MallocSettings {
    @discardableResult
    public static func apply() -> Bool {
        strata_malloc_tune(32 << 20, 512 << 20) == 1
    }
}

/// Gives the allocator's free memory back to the kernel once the work that freed it is over.
///
/// The trim threshold above applies to the top of each arena only, and every thread that
/// allocates has an arena: after a burst of large values or a long pipeline, free memory held
/// in several arenas, and below their tops, kept the daemon's resident memory gigabytes above
/// the data it holds, for good. Every `interval`, when nothing was done since the last look
/// (`activity` unchanged: RESP commands run) and more than `threshold` is free, the free memory
/// of every arena is returned (`malloc_trim(0)`). While RESP commands run, nothing is trimmed:
/// their buffers are reused, not faulted in again.
struct HeapTrimmer: Service {
    var interval: Duration = .seconds(10)
    var threshold = 32 << 20
    var activity: @Sendable () -> Int
    var logger: Logger

    /// What was seen at the last trim.
    struct Trim: Equatable {
        var activity: Int
        var freeBytes: Int
    }

    /// The decision, apart from the allocator: trim when the daemon was idle over the last
    /// interval and more than `threshold` bytes are free; once per idle spell unless as much
    /// again was freed since (memory returned stays counted as free: `last`).
    static func shouldTrim(freeBytes: Int, threshold: Int, activity: Int, activityBefore: Int?, last: Trim?) -> Bool {
        guard let activityBefore, activity == activityBefore, freeBytes > threshold else { return false }
        guard let last, last.activity == activity else { return true }
        return freeBytes > last.freeBytes + threshold
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var before: Int?
            var last: Trim?
            while (try? await Task.sleep(for: interval)) != nil {
                let now = activity()
                let free = Int(strata_malloc_free_bytes())
                if Self.shouldTrim(freeBytes: free, threshold: threshold, activity: now, activityBefore: before, last: last) {
                    strata_malloc_trim()
                    last = Trim(activity: now, freeBytes: free)
                    logger.debug("returned the allocator's free memory to the kernel", metadata: ["free_bytes": "\(free)"])
                }
                before = now
            }
        }
    }
}
