@testable import StrataDaemon
import Testing
import TierStore

/// The block keys of the RESP service's values are derived from (namespace, key, version, part).
/// A `durable` store finds its values after a restart, or after an upgrade, only if the derivation
/// stays the same: these are fixed vectors.
struct KVBlockKeyTests {
    @Test func aValuesBlockKeysAreFixedByItsNamespaceKeyVersionAndPart() {
        #expect(TierKVBackend.blockKey("", Array("k".utf8), version: 1, part: 0).description == "926d4579e7ceecb493f4e61f3309d230")
        #expect(TierKVBackend.blockKey("tenant-a", Array("user:1042".utf8), version: 0x1234_5678_9abc, part: 3).description == "9c3fb54cc9ab76cdfc27e8e89f0d91f1")
        let empty = TierKVBackend.blockKey("", [], version: 0, part: 0)
        #expect(empty.description == "7ecaa479ccec449e47ff19f5e5a98002")
        // Every field counts, and where one ends and the next begins does too.
        let keys = [
            TierKVBackend.blockKey("a", Array("bc".utf8), version: 1, part: 0),
            TierKVBackend.blockKey("ab", Array("c".utf8), version: 1, part: 0),
            TierKVBackend.blockKey("a", Array("bc".utf8), version: 2, part: 0),
            TierKVBackend.blockKey("a", Array("bc".utf8), version: 1, part: 1),
        ]
        #expect(Set(keys).count == keys.count)
    }
}
