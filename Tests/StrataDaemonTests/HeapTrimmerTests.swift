import Testing
@testable import StrataDaemon

/// When the daemon gives the allocator's free memory back: only after an interval with no RESP
/// command (their buffers are reused while they run), past the threshold, and once per idle
/// spell unless as much again was freed since.
struct HeapTrimmerTests {
    typealias Trim = HeapTrimmer.Trim
    static let mib = 1 << 20

    @Test(arguments: [
        // free, activity now, activity at the look before, last trim, trimmed?
        (100 * mib, 5, Int?.none, Trim?.none, false),        // the first look: nothing to compare with
        (100 * mib, 6, 5, nil, false),                        // commands ran since the last look
        (100 * mib, 5, 5, nil, true),                         // idle, past the threshold
        (32 * mib, 5, 5, nil, false),                         // idle, at the threshold: kept
        (100 * mib, 5, 5, Trim(activity: 5, freeBytes: 100 * mib), false),   // trimmed in this idle spell
        (140 * mib, 5, 5, Trim(activity: 5, freeBytes: 100 * mib), true),    // as much again freed since (HTTP blocks)
        (100 * mib, 9, 9, Trim(activity: 5, freeBytes: 100 * mib), true),    // a new idle spell
    ])
    func trimsOnlyWhenIdleAndPastTheThreshold(free: Int, activity: Int, before: Int?, last: Trim?, expected: Bool) {
        #expect(HeapTrimmer.shouldTrim(freeBytes: free, threshold: 32 * Self.mib, activity: activity, activityBefore: before, last: last) == expected)
    }
}
