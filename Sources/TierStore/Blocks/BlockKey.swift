import CStrataHash

/// The name of a block: a 128-bit XXH3 hash with an explicit seed, never a process-random one,
/// so every process and host computes the same key. A KV block's key chains its parent's key,
/// so a key names the whole prefix up to and including its chunk, and the namespace (model,
/// layout, tenant salt) is hashed in first, so tenants never share blocks unless they share a
/// salt on purpose.
public struct BlockKey: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    /// Fixed for format version 1; changing it renames every stored block.
    public static let seed: UInt64 = 0x5354_5241_5441_0001   // "STRATA" v1

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The key of arbitrary bytes (an object name, a blob).
    public init<Bytes: Collection>(bytes: Bytes) where Bytes.Element == UInt8 {
        let (low, high) = Self.hash128(Array(bytes))
        self.init(high: high, low: low)
    }

    /// The key of the bytes in `bytes` (the same as `init(bytes:)` of a copy of them).
    public init(hashing bytes: UnsafeRawBufferPointer) {
        var low: UInt64 = 0
        var high: UInt64 = 0
        strata_xxh3_128(bytes.baseAddress, bytes.count, Self.seed, &low, &high)
        self.init(high: high, low: low)
    }

    public var description: String {
        String(high, radix: 16).leftPadded(to: 16) + String(low, radix: 16).leftPadded(to: 16)
    }

    /// Parses the 32-hex-digit form of `description`.
    public init?(hex: some StringProtocol) {
        guard hex.count == 32, let high = UInt64(hex.prefix(16), radix: 16), let low = UInt64(hex.suffix(16), radix: 16)
        else { return nil }
        self.init(high: high, low: low)
    }

    static func hash128(_ bytes: [UInt8]) -> (low: UInt64, high: UInt64) {
        var low: UInt64 = 0
        var high: UInt64 = 0
        bytes.withUnsafeBytes { strata_xxh3_128($0.baseAddress, $0.count, seed, &low, &high) }
        return (low, high)
    }

    static func hash64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        strata_xxh3_64(bytes.baseAddress, bytes.count, seed)
    }
}

/// What a block belongs to. Two namespaces that differ in anything produce disjoint keys.
public struct BlockNamespace: Hashable, Sendable {
    public var model: String
    /// The KV layout (dtype, block size in tokens, heads…) as the runtime names it.
    public var layout: String
    /// Per-tenant salt; tenants who should share blocks are configured with the same salt.
    public var tenantSalt: String

    public init(model: String, layout: String, tenantSalt: String) {
        self.model = model
        self.layout = layout
        self.tenantSalt = tenantSalt
    }

    /// The root of every chain in this namespace.
    public var rootKey: BlockKey {
        var bytes: [UInt8] = Array("strata-ns-v1".utf8)
        for field in [model, layout, tenantSalt] {
            let utf8 = Array(field.utf8)
            bytes += withUnsafeBytes(of: UInt32(utf8.count).littleEndian, Array.init) + utf8
        }
        return BlockKey(bytes: bytes)
    }

    /// Keys for consecutive chunks of a token chain: key[i] covers chunks 0...i.
    public func chainKeys(tokens: [Int32], chunkTokens: Int) -> [BlockKey] {
        precondition(chunkTokens > 0)
        var keys: [BlockKey] = []
        var parent = rootKey
        var start = 0
        while start + chunkTokens <= tokens.count {
            var bytes = withUnsafeBytes(of: parent.high.littleEndian, Array.init) + withUnsafeBytes(of: parent.low.littleEndian, Array.init)
            for token in tokens[start..<start + chunkTokens] {
                bytes += withUnsafeBytes(of: token.littleEndian, Array.init)
            }
            parent = BlockKey(bytes: bytes)
            keys.append(parent)
            start += chunkTokens
        }
        return keys
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
