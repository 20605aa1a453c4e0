/// Power-of-two allocation of offsets inside fixed units (a buddy system): blocks from
/// `minBlock` up to `unitSize`, split on allocation and merged with their buddy on free, so
/// mixed sizes share the arena without a compaction pass. Pure bookkeeping; no memory.
struct BuddyAllocator {
    let minBlock: Int
    let unitSize: Int
    let units: Int
    /// Free offsets per order (order 0 = minBlock).
    private var free: [Set<Int>]
    /// Order of each allocated offset.
    private var allocated: [Int: Int] = [:]
    private(set) var allocatedBytes = 0
    /// Units at or past this index take no new allocations (the budget was shrunk below them).
    var usableUnits: Int

    init(minBlock: Int = 4096, unitSize: Int, units: Int) {
        precondition(minBlock > 0 && minBlock & (minBlock - 1) == 0 && unitSize & (unitSize - 1) == 0 && unitSize >= minBlock)
        self.minBlock = minBlock
        self.unitSize = unitSize
        self.units = units
        self.usableUnits = units
        let orders = (unitSize / minBlock).trailingZeroBitCount + 1
        free = Array(repeating: [], count: orders)
        for unit in 0..<units { free[orders - 1].insert(unit * unitSize) }
    }

    var capacity: Int { unitSize * units }

    /// The block size an allocation of `count` bytes takes, or nil if larger than a unit.
    func blockSize(for count: Int) -> Int? {
        guard count <= unitSize else { return nil }
        var size = minBlock
        while size < count { size <<= 1 }
        return size
    }

    mutating func allocate(_ count: Int) -> Int? {
        guard let size = blockSize(for: count) else { return nil }
        let order = (size / minBlock).trailingZeroBitCount
        let limit = usableUnits * unitSize
        var from = order
        var found: Int?
        while from < free.count {
            found = free[from].filter { $0 < limit }.min()
            if found != nil { break }
            from += 1
        }
        guard let offset = found else { return nil }
        free[from].remove(offset)
        while from > order {   // split, keeping the lower half
            from -= 1
            free[from].insert(offset + (minBlock << from))
        }
        allocated[offset] = order
        allocatedBytes += size
        return offset
    }

    mutating func release(_ offset: Int) {
        guard var order = allocated.removeValue(forKey: offset) else {
            preconditionFailure("release of an offset that is not allocated: \(offset)")
        }
        allocatedBytes -= minBlock << order
        var block = offset
        while order < free.count - 1 {
            let buddy = block ^ (minBlock << order)
            guard free[order].remove(buddy) != nil else { break }
            block = min(block, buddy)
            order += 1
        }
        free[order].insert(block)
    }
}
