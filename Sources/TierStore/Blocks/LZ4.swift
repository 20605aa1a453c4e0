import CStrataLZ4

/// lz4 block compression (liblz4). Used per block only when it makes the block smaller.
enum LZ4 {
    static func bound(_ length: Int) -> Int { Int(strata_lz4_bound(Int32(length))) }

    /// Compresses into `destination`; the compressed size, or nil if it would not be smaller
    /// than the input (then the block is stored as it is).
    static func compress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> Int? {
        guard source.count > 0 else { return nil }
        let n = Int(strata_lz4_compress(source.baseAddress, Int32(source.count), destination.baseAddress, Int32(destination.count)))
        return n > 0 && n < source.count ? n : nil
    }

    /// Decompresses exactly `expected` bytes, or nil when the input is malformed or another size.
    static func decompress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer, expected: Int) -> Int? {
        guard expected <= destination.count else { return nil }
        let n = Int(strata_lz4_decompress(source.baseAddress, Int32(source.count), destination.baseAddress, Int32(expected)))
        return n == expected ? n : nil
    }

    /// The compressed bytes of `source`, or nil when compression would not make them smaller.
    static func compressed(_ source: UnsafeRawBufferPointer) -> [UInt8]? {
        guard source.count > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: bound(source.count))
        guard let n = out.withUnsafeMutableBytes({ compress(source, into: $0) }) else { return nil }
        out.removeLast(out.count - n)
        return out
    }

    /// The `length` bytes `source` decodes to, or nil when it is malformed.
    static func decompressed(_ source: UnsafeRawBufferPointer, length: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: length)
        guard out.withUnsafeMutableBytes({ decompress(source, into: $0, expected: length) }) != nil else { return nil }
        return out
    }
}
