import Frontend

/// What `KVKeyDirectory` needs of what a key names: its place in SCAN order, its size (INFO's
/// `used_memory`) and whether it expires (DBSIZE).
protocol KVDirectoryEntry {
    /// Insertion order: a key keeps it while it exists; SCAN's cursor is the one to continue from.
    var sequence: UInt64 { get }
    var size: Int { get }
    var expiresAt: KVTimestamp? { get }
}

/// The keys of one RESP namespace and what each names, by the key's bytes; and the keys in SCAN
/// order, so that a SCAN call costs its page, not the namespace.
///
/// A dictionary keyed by `[UInt8]` hashes a key by feeding the hasher one byte at a time (and
/// its count); this one hashes the bytes in one call (`Hasher.combine(bytes:)`, the same seeded
/// SipHash, so crafted keys cannot flood one bucket). Under pipelined 4 KiB GETs the per-byte
/// hashing was about 2 % of the RESP server's CPU.
///
/// SCAN order is `order`: each key's (sequence, name), by sequence. A key's sequence is taken
/// before its value is written and the key recorded after, so keys arrive nearly in order: most
/// land at the end, the rest a few places before it. A removed key (or one that came back with
/// another sequence) has its element marked stale where it is (found by binary search, its name
/// dropped) and skipped by `scan`; once stale elements outnumber the live ones, one pass that
/// hashes nothing removes them (so a pass over the elements per as many removals as there are
/// keys). Before, each SCAN call copied and sorted the whole namespace under the backend's lock:
/// a walk over 200,000 keys took 31 s, its cost growing with the square of the keys, and held
/// every other command up meanwhile (docs/BENCHMARKS.md, session 38).
struct KVKeyDirectory<Value: KVDirectoryEntry>: Sequence, ExpressibleByDictionaryLiteral {
    struct Name: Hashable {
        var bytes: [UInt8]

        func hash(into hasher: inout Hasher) {
            bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
        }
    }

    private var entries: [Name: Value] = [:]
    /// Every key's element by sequence; nil names: stale (the key is gone or has another sequence).
    private var order: [(sequence: UInt64, name: Name?)] = []
    /// Elements of `order` whose name is nil.
    private(set) var staleElements = 0
    /// The sizes of all values, and how many keys have an expiry.
    private(set) var totalSize = 0
    private(set) var expiringCount = 0

    /// Stale elements kept before a rebuild is worth it, whatever the live count.
    static var staleAllowance: Int { 1024 }

    init(dictionaryLiteral elements: ([UInt8], Value)...) {
        for (name, value) in elements { self[name] = value }
    }

    subscript(name: [UInt8]) -> Value? {
        get { entries[Name(bytes: name)] }
        _modify {
            // One hash lookup for a key present (the SET path's): the value is changed where it
            // is stored, through its index.
            let key = Name(bytes: name)
            let index = entries.index(forKey: key)
            let before = index.map { entries.values[$0] }
            var value = before
            defer {
                if let index {
                    if let value { entries.values[index] = value } else { entries.remove(at: index) }
                } else if let value {
                    entries[key] = value
                }
                changed(key, from: before, to: value)
            }
            yield &value
        }
    }

    @discardableResult
    mutating func updateValue(_ value: Value, forKey name: [UInt8]) -> Value? {
        let key = Name(bytes: name)
        let before = entries.updateValue(value, forKey: key)
        changed(key, from: before, to: value)
        return before
    }

    var isEmpty: Bool { entries.isEmpty }
    var count: Int { entries.count }
    var values: Dictionary<Name, Value>.Values { entries.values }
    /// Elements in SCAN order, stale ones included (for tests).
    var orderCount: Int { order.count }

    func makeIterator() -> some IteratorProtocol<(key: [UInt8], value: Value)> {
        entries.lazy.map { (key: $0.key.bytes, value: $0.value) }.makeIterator()
    }

    /// Up to `count` keys in SCAN order from the sequence `cursor` on, of those `include` takes,
    /// and the cursor to go on from: 0 when no key it takes is left after them. Every key that
    /// exists from the first call of a walk to its last is returned once, whatever is written or
    /// removed meanwhile (a key keeps its sequence; new ones take larger ones).
    func scan(from cursor: UInt64, count: Int, where include: (Value) -> Bool) -> (keys: [[UInt8]], next: UInt64) {
        var keys: [[UInt8]] = []
        var last: UInt64 = 0
        var index = firstIndex(atLeast: cursor)
        while index < order.count {
            let element = order[index]
            index += 1
            guard let name = element.name, let value = entries[name], value.sequence == element.sequence, include(value)
            else { continue }
            if keys.count >= Swift.max(1, count) { return (keys, last + 1) }
            keys.append(name.bytes)
            last = element.sequence
        }
        return (keys, 0)
    }

    private mutating func changed(_ key: Name, from before: Value?, to after: Value?) {
        totalSize += (after?.size ?? 0) - (before?.size ?? 0)
        expiringCount += (after?.expiresAt == nil ? 0 : 1) - (before?.expiresAt == nil ? 0 : 1)
        guard before?.sequence != after?.sequence else { return }
        if let sequence = before?.sequence { markStale(key, at: sequence) }
        if let sequence = after?.sequence { place(key, at: sequence) }
        if staleElements > Self.staleAllowance, staleElements > order.count - staleElements {
            order.removeAll { $0.name == nil }
            staleElements = 0
        }
    }

    private mutating func markStale(_ key: Name, at sequence: UInt64) {
        var index = firstIndex(atLeast: sequence)
        while index < order.count, order[index].sequence == sequence {
            if order[index].name == key {
                order[index].name = nil
                staleElements += 1
                return
            }
            index += 1
        }
    }

    /// Puts (sequence, key) in `order`, by sequence: at the end but for a key recorded after
    /// others that took their sequence later.
    private mutating func place(_ key: Name, at sequence: UInt64) {
        if let last = order.last, last.sequence >= sequence {
            order.insert((sequence, key), at: firstIndex(atLeast: sequence))
        } else {
            order.append((sequence, key))
        }
    }

    /// The first index of `order` whose sequence is at least `sequence` (`order.count` if none).
    private func firstIndex(atLeast sequence: UInt64) -> Int {
        var low = 0, high = order.count
        while low < high {
            let middle = (low + high) / 2
            if order[middle].sequence < sequence { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

extension KVKeyDirectory: Sendable where Value: Sendable {}
