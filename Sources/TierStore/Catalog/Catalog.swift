/// Where the NVMe log records its blocks and objects, so a restart finds them without reading
/// the segments. `BlockCatalog` (SQLite) in production; the tests also run the log's contract
/// on an in-memory fake with the same commit semantics.
///
/// The contract: `record(_, durable: true)` returns once that entry and everything queued
/// before it are committed; non-durable records, removals and segment drops are queued and
/// committed by the next commit (`flush`, a durable record, or the catalog's own batching). A
/// commit applies dropped segments first, then removed keys, then new entries (an entry only
/// replaces one with a lower sequence number). `loadBlocks`, `cataloguedEnds` and `loadObjects`
/// show what was committed.
protocol Catalog: Sendable {
    func loadBlocks() throws -> [BlockCatalog.Entry]
    /// Per segment, the end of its catalogued records: recovery scans only past it.
    func cataloguedEnds() throws -> [Int: UInt64]
    func record(_ entry: BlockCatalog.Entry, durable: Bool) async throws
    func remove(_ key: BlockKey)
    func dropSegment(_ id: Int)
    func flush() async throws
    func loadObjects() throws -> [ObjectInfo]
    /// Writes (or replaces) an object's manifest after what is queued, and commits it.
    func putObject(_ info: ObjectInfo) async throws
    func removeObject(_ name: String) async throws
    func loadKV() throws -> [KVRecord]
    /// Writes (or replaces) the records, in order, in one commit; then, before returning, runs
    /// `committed`. Commits are in the order the calls queued them, and so are their `committed`
    /// closures (one at a time, none run for a commit that failed): a caller that updates its own
    /// copy of the directory there applies two writes of a key in the order the catalog kept them.
    func putKV(_ records: [KVRecord], committed: @escaping @Sendable () -> Void) async throws
    /// Removes each key's record if it still names the version given (a newer write's record
    /// stays), in one commit.
    func removeKV(_ records: [KVRecordVersion]) async throws
    /// Sets the expiry (Unix ms; nil: none) of the key's record if it still names the version
    /// given, and never creates one (a key removed meanwhile stays removed), in one commit; then
    /// `committed`, in commit order with `putKV`'s closures.
    func setKVExpiry(_ record: KVRecordVersion, expiresAt: Int64?, committed: @escaping @Sendable () -> Void) async throws
    /// Removes every record of the namespace in one commit; then `committed`, in commit order
    /// with `putKV`'s closures.
    func removeKVNamespace(_ namespace: String, committed: @escaping @Sendable () -> Void) async throws
}

extension Catalog {
    func putKV(_ records: [KVRecord]) async throws { try await putKV(records, committed: {}) }
    func removeKVNamespace(_ namespace: String) async throws { try await removeKVNamespace(namespace, committed: {}) }
}

extension BlockCatalog: Catalog {}
