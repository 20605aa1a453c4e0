import Testing
@testable import TierStore

struct BlockFormatTests {
    @Test func keysAreStableAcrossProcessesAndHosts() {
        // A fixed vector: if this changes, every stored block changes its name.
        let key = BlockKey(bytes: Array("hello".utf8))
        #expect(key.description == "7d358c695002b63825a6720a370bfe21")
        #expect(key == BlockKey(bytes: Array("hello".utf8)))
        #expect(key.description.count == 32)
        #expect(BlockKey(hex: key.description) == key)
        #expect(key.description == "\(BlockKey(bytes: Array("hello".utf8)))")
        #expect(key != BlockKey(bytes: Array("hellp".utf8)))
    }

    @Test func tenantsModelsAndLayoutsNeverShareKeys() {
        let tokens: [Int32] = Array(0..<64)
        let a = BlockNamespace(model: "m", layout: "f16/16", tenantSalt: "alice").chainKeys(tokens: tokens, chunkTokens: 16)
        let b = BlockNamespace(model: "m", layout: "f16/16", tenantSalt: "bob").chainKeys(tokens: tokens, chunkTokens: 16)
        let c = BlockNamespace(model: "m2", layout: "f16/16", tenantSalt: "alice").chainKeys(tokens: tokens, chunkTokens: 16)
        let d = BlockNamespace(model: "m", layout: "q8/16", tenantSalt: "alice").chainKeys(tokens: tokens, chunkTokens: 16)
        #expect(a.count == 4)
        #expect(Set(a).isDisjoint(with: b) && Set(a).isDisjoint(with: c) && Set(a).isDisjoint(with: d))
        // same salt: shared on purpose
        #expect(a == BlockNamespace(model: "m", layout: "f16/16", tenantSalt: "alice").chainKeys(tokens: tokens, chunkTokens: 16))
        // field boundaries are part of the hash: ("ab","c") is not ("a","bc")
        #expect(BlockNamespace(model: "ab", layout: "c", tenantSalt: "").rootKey
                != BlockNamespace(model: "a", layout: "bc", tenantSalt: "").rootKey)
    }

    @Test func chainKeysNameWholePrefixes() {
        let ns = BlockNamespace(model: "m", layout: "l", tenantSalt: "t")
        let base: [Int32] = Array(0..<48)
        var changed = base
        changed[5] = 999   // differs in the first chunk only
        let k1 = ns.chainKeys(tokens: base, chunkTokens: 16)
        let k2 = ns.chainKeys(tokens: changed, chunkTokens: 16)
        #expect(k1.count == 3 && k2.count == 3)
        #expect(k1[0] != k2[0] && k1[1] != k2[1] && k1[2] != k2[2], "a change early renames every later block")
        #expect(ns.chainKeys(tokens: Array(base.prefix(40)), chunkTokens: 16) == Array(k1.prefix(2)), "partial chunk not keyed")
    }

    @Test func headerRoundTripsAndRejectsDamage() throws {
        let header = BlockHeader(key: BlockKey(high: 1, low: 2), payloadLength: 100, storedLength: 100, codec: .none,
                                 sequence: 7, payloadChecksum: 0xDEAD_BEEF)
        let buffer = IOBuffer(count: 64)
        header.encode(into: buffer.bytes)
        #expect(try BlockHeader.decode(buffer.readOnly).get() == header)
        #expect(header.recordLength == 4096)
        #expect(BlockHeader.recordLength(storedLength: 4096 - 64) == 4096)
        #expect(BlockHeader.recordLength(storedLength: 4096 - 63) == 8192)

        for offset in [0, 5, 9, 25, 33, 41, 50, 60] {
            let damaged = IOBuffer(count: 64)
            header.encode(into: damaged.bytes)
            damaged.bytes[offset] ^= 0x40
            guard case .failure = BlockHeader.decode(damaged.readOnly) else {
                Issue.record("a flipped bit at \(offset) went unnoticed")
                continue
            }
        }
        #expect(BlockHeader.decode(UnsafeRawBufferPointer(rebasing: buffer.readOnly[0..<10])) == .failure(.tooShort))
    }
}
