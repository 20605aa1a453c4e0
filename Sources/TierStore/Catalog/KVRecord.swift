/// A key's record to remove, if it still names `version` (`removeKVRecords`).
public struct KVRecordVersion: Sendable, Equatable {
    public var namespace: String
    public var key: [UInt8]
    public var version: UInt64

    public init(namespace: String, key: [UInt8], version: UInt64) {
        self.namespace = namespace
        self.key = key
        self.version = version
    }

    var keyHex: String { KVRecord(namespace: namespace, key: key, version: version, size: 0, expiresAt: nil, sequence: 0).keyHex }
}

/// One key of the KV service as the catalog keeps it (durability `durable`): which version of
/// the value's blocks is current, its size (so its parts can be found), its expiry and its
/// insertion order (SCAN cursors).
public struct KVRecord: Sendable, Equatable {
    public var namespace: String
    public var key: [UInt8]
    public var version: UInt64
    public var size: Int
    /// Unix milliseconds; nil: never expires.
    public var expiresAt: Int64?
    public var sequence: UInt64

    public init(namespace: String, key: [UInt8], version: UInt64, size: Int, expiresAt: Int64?, sequence: UInt64) {
        self.namespace = namespace
        self.key = key
        self.version = version
        self.size = size
        self.expiresAt = expiresAt
        self.sequence = sequence
    }

    /// Keys are bytes; the catalog stores them as lowercase hex text. (Written out by hand:
    /// `String(format:)` per byte was a tenth of a durable SET's CPU, on the catalog's queue.)
    var keyHex: String {
        let digits: StaticString = "0123456789abcdef"
        return String(unsafeUninitializedCapacity: key.count * 2) { out in
            digits.withUTF8Buffer { digits in
                for (index, byte) in key.enumerated() {
                    out[2 * index] = digits[Int(byte >> 4)]
                    out[2 * index + 1] = digits[Int(byte & 0x0F)]
                }
            }
            return key.count * 2
        }
    }

    static func bytes(hex: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.utf8.count / 2)
        var index = hex.startIndex
        while index < hex.endIndex, let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) {
            bytes.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return bytes
    }
}

extension SegmentLog {
    /// The KV service's durable key directory, as last committed.
    public nonisolated func loadKVRecords() throws -> [KVRecord] { try catalog.loadKV() }

    /// Writes (or replaces) keys' records, in order, and commits them together before returning;
    /// `committed` runs once they are, in the order of the commits (`Catalog.putKV`).
    public nonisolated func putKVRecords(
        _ records: [KVRecord], committed: @escaping @Sendable () -> Void = {}
    ) async throws {
        try await catalog.putKV(records, committed: committed)
    }

    /// Removes each key's record if it still names the version given (all in one commit, done
    /// before returning): a newer write's record, committed meanwhile, stays.
    public nonisolated func removeKVRecords(_ records: [KVRecordVersion]) async throws {
        try await catalog.removeKV(records)
    }

    /// Sets the expiry (Unix ms; nil: none) of the key's record if it still names the version
    /// given, never creating one (committed before returning); then `committed`, in the order of
    /// the commits.
    public nonisolated func setKVExpiry(
        _ record: KVRecordVersion, expiresAt: Int64?, committed: @escaping @Sendable () -> Void = {}
    ) async throws {
        try await catalog.setKVExpiry(record, expiresAt: expiresAt, committed: committed)
    }

    /// Removes every record of a namespace (committed before returning); `committed` runs once
    /// that is, in the order of the commits (`Catalog.putKV`).
    public nonisolated func removeKVNamespace(_ namespace: String, committed: @escaping @Sendable () -> Void = {}) async throws {
        try await catalog.removeKVNamespace(namespace, committed: committed)
    }
}
