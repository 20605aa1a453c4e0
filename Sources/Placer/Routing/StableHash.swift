/// 64-bit hashing for choices that routers on different hosts must make alike without talking.
///
/// Swift's `Hasher` is seeded per process, so it cannot be used for these. The functions here
/// are a contract like an on-disk format: changing any of them moves every cold prefix and every
/// session to a different replica, so a mixed-version fleet would disagree until all upgrade.
/// Prompt blocks arrive already hashed (XXH3 in the Frontend); these only combine such hashes
/// with replica IDs, and hash the session keys, which are short strings.
enum StableHash {
    /// The SplitMix64 finalizer: a bijection that spreads every input bit over the output, so
    /// even a key whose bits are weak (a counter, an FNV hash of a short string) ranks replicas
    /// uniformly.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// FNV-1a over the UTF-8 bytes, then mixed: FNV alone leaves the high bits of short strings
    /// poorly distributed.
    static func string(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
        }
        return mix(hash)
    }

    /// Rendezvous (highest random weight) score of `replica` for `key`: each key ranks all
    /// replicas in its own pseudo-random order, and removing a replica moves only the keys it
    /// ranked first.
    static func rendezvous(key: UInt64, replica: UInt64) -> UInt64 {
        mix(key ^ replica)
    }
}
