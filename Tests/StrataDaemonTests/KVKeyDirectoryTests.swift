import Frontend
@testable import StrataDaemon
import Testing

/// The RESP service's key directory: SCAN order kept beside the keys (a call costs its page),
/// and the totals INFO and DBSIZE read.
struct KVKeyDirectoryTests {
    struct Entry: KVDirectoryEntry {
        var sequence: UInt64
        var size: Int = 1
        var expiresAt: KVTimestamp? = nil
    }

    static func name(_ i: Int) -> [UInt8] { Array("k\(i)".utf8) }

    /// Walks the whole directory `count` keys per call, as redis-cli --scan does.
    static func walk(_ keys: KVKeyDirectory<Entry>, count: Int) -> [[UInt8]] {
        var all: [[UInt8]] = [], cursor: UInt64 = 0
        repeat {
            let page = keys.scan(from: cursor, count: count) { _ in true }
            #expect(page.keys.count <= count)
            all += page.keys
            cursor = page.next
        } while cursor != 0
        return all
    }

    @Test func aWalkReturnsEveryKeyOnceInSequenceOrderWhateverOrderTheyArrivedIn() {
        var keys = KVKeyDirectory<Entry>()
        // Sequences are taken before the write and keys recorded after: nearly in order.
        let arrival = [3, 1, 2, 6, 4, 5, 9, 7, 8, 10]
        for i in arrival { keys[Self.name(i)] = Entry(sequence: UInt64(i)) }
        #expect(Self.walk(keys, count: 3) == (1...10).map(Self.name))
        #expect(Self.walk(keys, count: 100) == (1...10).map(Self.name))
        let last = keys.scan(from: 10, count: 5) { _ in true }
        #expect(last.keys == [Self.name(10)] && last.next == 0)
        #expect(keys.scan(from: 11, count: 5) { _ in true }.keys.isEmpty)
        #expect(keys.scan(from: 0, count: 0) { _ in true }.keys == [Self.name(1)], "COUNT below 1 still makes progress")
    }

    @Test func aWalkSkipsKeysRemovedAndKeysTheFilterRefusesAndEndsWithCursorZero() {
        var keys = KVKeyDirectory<Entry>()
        for i in 1...6 { keys[Self.name(i)] = Entry(sequence: UInt64(i), expiresAt: i == 5 ? KVTimestamp(unixMilliseconds: 1) : nil) }
        keys[Self.name(2)] = nil
        let page = keys.scan(from: 0, count: 3) { $0.expiresAt == nil }
        #expect(page.keys == [Self.name(1), Self.name(3), Self.name(4)])
        #expect(page.next == 5)
        // Only the expired key is left after 4: none the filter takes, so the walk ends here.
        let rest = keys.scan(from: page.next, count: 3) { $0.expiresAt == nil }
        #expect(rest.keys == [Self.name(6)] && rest.next == 0)
        let exact = keys.scan(from: 0, count: 4) { $0.expiresAt == nil }
        #expect(exact.keys.count == 4 && exact.next == 0, "no page of nothing at the end of a walk")
    }

    @Test func aKeyKeepsItsPlaceWhenReplacedAndIsListedOnceWhenItComesBack() {
        var keys = KVKeyDirectory<Entry>()
        for i in 1...4 { keys[Self.name(i)] = Entry(sequence: UInt64(i)) }
        keys[Self.name(2)] = Entry(sequence: 2, size: 10)   // replaced in place (a SET of an existing key)
        keys[Self.name(3)] = nil
        keys[Self.name(3)] = Entry(sequence: 3)   // back with the sequence it took before it was gone
        keys[Self.name(1)] = nil
        keys.updateValue(Entry(sequence: 7), forKey: Self.name(1))   // back as a new key
        #expect(Self.walk(keys, count: 1) == [2, 3, 4, 1].map(Self.name))
        // Stale: key 3's element from before it was gone, key 1's at sequence 1.
        #expect(keys.count == 4 && keys.orderCount == 6 && keys.staleElements == 2)
    }

    @Test func staleElementsAreDroppedOnceTheyOutnumberTheLiveOnes() {
        var keys = KVKeyDirectory<Entry>()
        let total = 3 * KVKeyDirectory<Entry>.staleAllowance
        for i in 0..<total { keys[Self.name(i)] = Entry(sequence: UInt64(i + 1)) }
        // Remove two thirds: the rebuild happens once the stale ones outnumber the live.
        for i in 0..<(2 * total / 3) { keys[Self.name(i)] = nil }
        #expect(keys.staleElements <= KVKeyDirectory<Entry>.staleAllowance || keys.staleElements <= keys.count)
        #expect(keys.orderCount < total, "the rebuild ran")
        #expect(keys.orderCount == keys.count + keys.staleElements)
        #expect(Self.walk(keys, count: 500) == ((2 * total / 3)..<total).map(Self.name))
    }

    @Test func totalsFollowEveryChange() {
        var keys: KVKeyDirectory<Entry> = [Self.name(1): Entry(sequence: 1, size: 100)]
        keys[Self.name(2)] = Entry(sequence: 2, size: 50, expiresAt: KVTimestamp(unixMilliseconds: 5))
        #expect(keys.totalSize == 150 && keys.expiringCount == 1)
        keys[Self.name(2)]?.expiresAt = nil   // PERSIST-like change in place
        keys[Self.name(1)]?.size = 30
        #expect(keys.totalSize == 80 && keys.expiringCount == 0)
        keys[Self.name(1)]?.expiresAt = KVTimestamp(unixMilliseconds: 9)
        keys.updateValue(Entry(sequence: 2, size: 1), forKey: Self.name(2))
        #expect(keys.totalSize == 31 && keys.expiringCount == 1)
        keys[Self.name(1)] = nil
        keys[Self.name(9)] = nil   // (absent: nothing changes)
        #expect(keys.totalSize == 1 && keys.expiringCount == 0 && keys.count == 1)
    }
}
