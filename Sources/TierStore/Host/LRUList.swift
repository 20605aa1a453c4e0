/// Recency order in O(1) per operation: a doubly linked list threaded through arrays (no
/// allocation per node once warm), with a free list of slots. Handles are slot indices, stable
/// until the element is removed.
struct LRUList<Element> {
    private var elements: [Element?] = []
    private var previous: [Int32] = []
    private var next: [Int32] = []
    private var free: [Int32] = []
    /// Most and least recently used; -1 when empty.
    private var head: Int32 = -1
    private var tail: Int32 = -1
    private(set) var count = 0

    /// Inserts as most recently used; returns its handle.
    mutating func pushFront(_ element: Element) -> Int32 {
        let slot: Int32
        if let reused = free.popLast() {
            slot = reused
            elements[Int(slot)] = element
        } else {
            slot = Int32(elements.count)
            elements.append(element)
            previous.append(-1)
            next.append(-1)
        }
        link(slot)
        count += 1
        return slot
    }

    mutating func moveToFront(_ slot: Int32) {
        guard slot != head else { return }
        unlink(slot)
        link(slot)
    }

    @discardableResult
    mutating func remove(_ slot: Int32) -> Element {
        unlink(slot)
        let element = elements[Int(slot)]!
        elements[Int(slot)] = nil
        free.append(slot)
        count -= 1
        return element
    }

    /// The least recently used element for which `accept` holds, and its handle.
    func leastRecent(where accept: (Element) -> Bool) -> (Int32, Element)? {
        var slot = tail
        while slot >= 0 {
            if let element = elements[Int(slot)], accept(element) { return (slot, element) }
            slot = previous[Int(slot)]
        }
        return nil
    }

    /// Every element, most recently used first.
    func mostRecentFirst() -> [Element] {
        var out: [Element] = []
        out.reserveCapacity(count)
        var slot = head
        while slot >= 0 {
            if let element = elements[Int(slot)] { out.append(element) }
            slot = next[Int(slot)]
        }
        return out
    }

    private mutating func link(_ slot: Int32) {
        previous[Int(slot)] = -1
        next[Int(slot)] = head
        if head >= 0 { previous[Int(head)] = slot }
        head = slot
        if tail < 0 { tail = slot }
    }

    private mutating func unlink(_ slot: Int32) {
        let (before, after) = (previous[Int(slot)], next[Int(slot)])
        if before >= 0 { next[Int(before)] = after } else { head = after }
        if after >= 0 { previous[Int(after)] = before } else { tail = before }
    }
}
