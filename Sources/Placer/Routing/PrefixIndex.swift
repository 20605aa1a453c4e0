/// The prompt blocks one replica probably holds in its KV cache, as chain hashes, bounded to
/// `capacity` entries with least-recently-recorded eviction.
///
/// It is a guess, not the replica's truth: it learns from routing decisions (`record`), is
/// cleared when the replica restarts (`forget`) and corrected from what a replica reports
/// (`replace`, `remove`). A wrong guess costs one recomputed prefix, never wrong output.
///
/// **Holes.** Block i's hash covers blocks 0...i, so a replica can reuse block i only if it
/// holds every earlier block too: `matchedBlocks` counts leading blocks up to the first one
/// missing, never a block behind a hole. Eviction alone never makes a hole: `record` touches a
/// chain deepest block first, so a block is always more recent than the blocks after it in any
/// chain that contains it, and the LRU end drops a chain's tail before its head, as the
/// engines' own prefix caches do. While that holds, the held blocks of any chain are a prefix
/// of it and `matchedBlocks` binary-searches for its end in O(log n) lookups, which matters
/// when several replicas hold prompts of thousands of blocks. `remove` (an engine dropped a
/// block, perhaps a middle one) can make a hole; from then until `forget` or `replace`,
/// `matchedBlocks` scans forward instead, in O(matched + 1) lookups.
///
/// Storage is an intrusive doubly-linked list over an array of nodes plus a hash → slot map,
/// so record, remove and eviction are O(1) and the arrays never grow past `capacity`.
public struct PrefixIndex: Sendable {
    /// Most block hashes held at once.
    public let capacity: Int

    private struct Node {
        var hash: UInt64
        var newer: Int32
        var older: Int32
        /// When it was last recorded (`clock`), so a position remembered earlier can be checked.
        var stamp: UInt64 = 0
    }

    private var clock: UInt64 = 0

    private static let none: Int32 = -1
    private var nodes: [Node] = []
    private var slots: [UInt64: Int32] = [:]
    private var newest = none
    private var oldest = none
    /// Slots freed by `remove`, linked through `older`; reused before the array grows.
    private var free = none
    /// Set by `remove`, cleared by `forget`: the held blocks of a chain may not be a prefix.
    private var mayHaveHoles = false

    public init(capacity: Int) {
        precondition(capacity > 0 && capacity <= Int(Int32.max), "PrefixIndex capacity \(capacity) out of range")
        self.capacity = capacity
    }

    /// Block hashes held now; never more than `capacity`.
    public var count: Int { slots.count }

    public func contains(_ hash: UInt64) -> Bool { slots[hash] != nil }

    /// How many leading blocks of `chain` are held with no hole before them.
    public func matchedBlocks(_ chain: [UInt64]) -> Int {
        // Most replicas hold none of a given prompt: one lookup says so.
        guard let first = chain.first, slots[first] != nil else { return 0 }
        if mayHaveHoles {
            return chain.firstIndex { slots[$0] == nil } ?? chain.count
        }
        // Held blocks are a prefix of the chain: everything below `low` is held, nothing
        // from `high` on is.
        var low = 1
        var high = chain.count
        while low < high {
            let middle = low + (high - low) / 2
            if slots[chain[middle]] != nil { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The replica now holds `chain`: its blocks become the most recent, the first block most
    /// recent of all (see Holes). Only the first `capacity` blocks are kept, since deeper ones
    /// would be evicted by their own prefix.
    public mutating func record(_ chain: [UInt64]) {
        for hash in chain.prefix(capacity).reversed() {
            touch(hash)
        }
    }

    /// The replica dropped `hash` (a KV event). Later blocks of its chains stay indexed but no
    /// longer match past the hole.
    @discardableResult
    public mutating func remove(_ hash: UInt64) -> Bool {
        guard let slot = slots.removeValue(forKey: hash) else { return false }
        mayHaveHoles = true
        unlink(slot)
        nodes[Int(slot)].older = free
        free = slot
        return true
    }

    /// The block recorded just before `hash` (next in eviction order after it), if any, with
    /// the stamp that tells later whether it was recorded again since.
    public func olderNeighbor(of hash: UInt64) -> (hash: UInt64, stamp: UInt64)? {
        guard let slot = slots[hash], nodes[Int(slot)].older != Self.none else { return nil }
        let older = nodes[Int(nodes[Int(slot)].older)]
        return (older.hash, older.stamp)
    }

    /// Drops `hash` and every block recorded before it: the replica was found not to hold a
    /// block, so (its cache being about as recency-ordered as this index) it holds nothing
    /// older either. The same as evicting from the old end, so no hole is made. Returns how
    /// many blocks went; 0 when `hash` is not held.
    ///
    /// With `stamp`, nothing is dropped unless `hash` was not recorded again since that stamp
    /// (another request made it recent: its position no longer says what the replica evicted).
    @discardableResult
    public mutating func dropOlder(through hash: UInt64, ifUntouchedSince stamp: UInt64? = nil) -> Int {
        guard let stop = slots[hash] else { return 0 }
        if let stamp, nodes[Int(stop)].stamp != stamp { return 0 }
        var dropped = 0
        while oldest != Self.none {
            let slot = oldest
            unlink(slot)
            slots[nodes[Int(slot)].hash] = nil
            nodes[Int(slot)].older = free
            free = slot
            dropped += 1
            if slot == stop { break }
        }
        return dropped
    }

    /// Replaces the whole guess with what the replica reports holding, least recently used
    /// chain first.
    public mutating func replace(with chains: [[UInt64]]) {
        forget()
        for chain in chains {
            record(chain)
        }
    }

    /// The replica restarted with an empty cache. Storage is kept: it will fill again.
    public mutating func forget() {
        nodes.removeAll(keepingCapacity: true)
        slots.removeAll(keepingCapacity: true)
        newest = Self.none
        oldest = Self.none
        free = Self.none
        mayHaveHoles = false
    }

    private mutating func touch(_ hash: UInt64) {
        clock += 1
        if let slot = slots[hash] {
            nodes[Int(slot)].stamp = clock
            if slot != newest {
                unlink(slot)
                linkNewest(slot)
            }
            return
        }
        let slot: Int32
        if free != Self.none {
            slot = free
            free = nodes[Int(slot)].older
        } else if nodes.count < capacity {
            slot = Int32(nodes.count)
            nodes.append(Node(hash: hash, newer: Self.none, older: Self.none))
        } else {
            slot = oldest
            unlink(slot)
            slots[nodes[Int(slot)].hash] = nil
        }
        nodes[Int(slot)].hash = hash
        nodes[Int(slot)].stamp = clock
        slots[hash] = slot
        linkNewest(slot)
    }

    private mutating func unlink(_ slot: Int32) {
        let node = nodes[Int(slot)]
        if node.newer != Self.none { nodes[Int(node.newer)].older = node.older } else { newest = node.older }
        if node.older != Self.none { nodes[Int(node.older)].newer = node.newer } else { oldest = node.newer }
    }

    private mutating func linkNewest(_ slot: Int32) {
        nodes[Int(slot)].newer = Self.none
        nodes[Int(slot)].older = newest
        if newest != Self.none { nodes[Int(newest)].newer = slot } else { oldest = slot }
        newest = slot
    }
}

extension PrefixIndex {
    /// Hashes from least to most recently recorded: the eviction order. O(count); for tests.
    var hashesByRecency: [UInt64] {
        var result: [UInt64] = []
        var slot = oldest
        while slot != Self.none {
            result.append(nodes[Int(slot)].hash)
            slot = nodes[Int(slot)].newer
        }
        return result
    }

    /// Node slots allocated, free ones included: the memory the index really holds.
    var allocatedSlots: Int { nodes.count }

    /// Walks the list both ways and the free list; nil when consistent, else what is wrong.
    /// O(capacity); for the simulation tests.
    var inconsistency: String? {
        if nodes.count > capacity { return "\(nodes.count) slots over capacity \(capacity)" }
        var forward = 0
        var previous = Self.none
        var slot = oldest
        while slot != Self.none {
            let node = nodes[Int(slot)]
            if node.older != previous { return "slot \(slot) links back to \(node.older), not \(previous)" }
            if slots[node.hash] != slot { return "slot \(slot) not in the map" }
            forward += 1
            if forward > nodes.count { return "cycle in the list" }
            previous = slot
            slot = node.newer
        }
        if previous != newest { return "list ends at \(previous), newest is \(newest)" }
        if forward != slots.count { return "list holds \(forward), map \(slots.count)" }
        var freeCount = 0
        slot = free
        while slot != Self.none {
            freeCount += 1
            if freeCount > nodes.count { return "cycle in the free list" }
            slot = nodes[Int(slot)].older
        }
        if forward + freeCount != nodes.count { return "\(nodes.count) slots, \(forward) used, \(freeCount) free" }
        return nil
    }
}
