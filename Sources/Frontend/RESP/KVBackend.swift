import NIOCore

/// Milliseconds since the Unix epoch on the backend's clock. Expiry deadlines are absolute so
/// that a command's meaning does not depend on when the backend gets round to it.
public struct KVTimestamp: Sendable, Hashable, Comparable {
    public var unixMilliseconds: Int64

    public init(unixMilliseconds: Int64) {
        self.unixMilliseconds = unixMilliseconds
    }

    public static func < (lhs: KVTimestamp, rhs: KVTimestamp) -> Bool {
        lhs.unixMilliseconds < rhs.unixMilliseconds
    }
}

/// When a SET may write.
public enum KVSetCondition: Sendable, Hashable {
    /// Always.
    case always
    /// Only if the key does not exist (`NX`).
    case ifAbsent
    /// Only if the key exists (`XX`).
    case ifPresent
}

/// What a SET does to the key's expiry.
public enum KVExpiry: Sendable, Hashable {
    /// The key never expires; a previous expiry is cleared (plain `SET`).
    case never
    /// The key's current expiry, or none for a new key, is kept (`KEEPTTL`).
    case keep
    /// The key expires at this instant (`EX`, `PX`, `EXAT`, `PXAT`).
    case at(KVTimestamp)
}

/// The result of a TTL query.
public enum KVTimeToLive: Sendable, Hashable {
    /// No such key (Redis: -2).
    case missing
    /// The key exists and never expires (Redis: -1).
    case persistent
    /// The key expires after this many milliseconds (>= 0).
    case milliseconds(Int64)
}

/// Key counts of one namespace, for DBSIZE and INFO's keyspace section.
public struct KVKeyCount: Sendable, Hashable {
    public var keys: Int
    /// Keys with an expiry set.
    public var expiring: Int

    public init(keys: Int, expiring: Int) {
        self.keys = keys
        self.expiring = expiring
    }
}

/// One step of a SCAN.
public struct KVScanPage: Sendable, Hashable {
    /// Where the next call continues; 0 when the scan is complete.
    public var cursor: UInt64
    public var keys: [ByteBuffer]

    public init(cursor: UInt64, keys: [ByteBuffer]) {
        self.cursor = cursor
        self.keys = keys
    }
}

/// A backend failure the RESP layer reports to the client instead of a reply.
public struct KVBackendError: Error, Sendable, Hashable {
    public enum Code: Sendable, Hashable {
        /// The store cannot take more data now; the client sees Redis's `-OOM ...`.
        case outOfSpace
        /// The value or key is larger than the backend accepts.
        case tooLarge
        /// The store is not ready or a tier failed; the client may retry.
        case unavailable
    }

    public var code: Code
    /// Shown to the client after the error prefix; one line.
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// The key-value store behind the RESP server: Strata's storage tiers, or a fake in tests.
///
/// Every method takes the connection's tenant `namespace`; keys in different namespaces never
/// see each other. Keys and values are byte strings passed as `ByteBuffer`s whose readable bytes
/// are the key or value. They are usually slices of a connection's receive buffer: keeping one
/// keeps that storage alive, so a backend that retains a key, or a small value, in memory should
/// copy it (`ByteBuffer(buffer.readableBytesView)`); a large value can be kept as is, since it
/// spans most of its storage anyway. Values returned are written to the socket without copying.
///
/// A key whose expiry deadline is at or before `now()` does not exist, for every method.
/// Methods throw `KVBackendError` for failures the client should see (mapped to `-ERR`/`-OOM`);
/// any other thrown error is reported as `-ERR internal error`. "No such key" is never an error.
public protocol KVBackend: Sendable {
    /// The backend's clock. The command handler turns relative expiries (`EX 10`) into absolute
    /// deadlines with it, and TTL answers are measured against it.
    func now() -> KVTimestamp

    /// The value of `key`, or nil if it does not exist.
    func get(namespace: String, key: ByteBuffer) async throws -> ByteBuffer?

    /// The value of `key` as the pieces it is stored in, in order (one for most values), or nil
    /// if it does not exist: what GET writes, so that a large value is never copied into one
    /// buffer of its own size (past 32 MiB glibc maps such a buffer fresh from the kernel, a page
    /// fault per 4 KiB, each time).
    func getPieces(namespace: String, key: ByteBuffer) async throws -> [ByteBuffer]?

    /// The values of `keys`, in order, nil for each missing key (the HTTP API's batch get). One
    /// answer per key, duplicates included.
    func get(namespace: String, keys: [ByteBuffer]) async throws -> [ByteBuffer?]

    /// `get(keys:)` with each value as `getPieces` gives it (MGET).
    func getPieces(namespace: String, keys: [ByteBuffer]) async throws -> [[ByteBuffer]?]

    /// The length of the value of `key`, or nil if it does not exist (HTTP HEAD, STRLEN).
    func length(namespace: String, key: ByteBuffer) async throws -> Int?

    /// Stores `value` under `key` if `condition` holds, applying `expiry`; returns whether it wrote.
    /// Check and write are atomic with respect to other calls on the same key.
    func set(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool

    /// `set` of the value `pieces` make joined in order (a large value received in pieces,
    /// `KVStagedValue.pieces()`), so that it is never copied into one buffer of its own size.
    func set(
        namespace: String, key: ByteBuffer, pieces: [ByteBuffer], condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool

    /// Stores every pair unconditionally, clearing their expiries (MSET). When a key appears twice
    /// the later value wins. Other clients never see only some of the pairs written.
    func set(namespace: String, pairs: [(key: ByteBuffer, value: ByteBuffer)]) async throws

    /// `set(pairs:)` of values given as pieces (a run of SETs whose values were received in pieces).
    func set(namespace: String, piecePairs: [(key: ByteBuffer, pieces: [ByteBuffer])]) async throws

    /// Removes `keys`; returns how many existed (a key listed twice counts once).
    func delete(namespace: String, keys: [ByteBuffer]) async throws -> Int

    /// How many of `keys` exist, counting a key each time it is listed (EXISTS k k -> 2).
    func exists(namespace: String, keys: [ByteBuffer]) async throws -> Int

    /// The remaining time to live of `key`.
    func timeToLive(namespace: String, key: ByteBuffer) async throws -> KVTimeToLive

    /// Sets `key` to expire at `deadline`, or removes its expiry when `deadline` is nil (PERSIST).
    /// A deadline at or before `now()` deletes the key. Returns false if the key does not exist
    /// (or, for nil, has no expiry to remove), true otherwise.
    func expire(namespace: String, key: ByteBuffer, at deadline: KVTimestamp?) async throws -> Bool

    /// Number of keys in `namespace`, and how many of them have an expiry.
    func keyCount(namespace: String) async throws -> KVKeyCount

    /// Removes every key of `namespace`. Other namespaces are untouched.
    func flush(namespace: String) async throws

    /// One step of iterating `namespace`'s keys. `cursor` is 0 to start, else a value this method
    /// returned before; it is opaque to the caller. Returns about `count` keys (a hint: fewer or
    /// more is fine, even none while the returned cursor is not 0) that match the glob `match`
    /// (Redis syntax, see `RESPGlob`; nil matches everything), and the cursor to continue from, 0
    /// when done. Guarantee, as Redis: a key present for the whole scan is returned at least once;
    /// a key added or removed meanwhile may or may not be. An unknown cursor may restart or end the
    /// scan but must not fail.
    func scan(namespace: String, cursor: UInt64, match: ByteBuffer?, count: Int) async throws -> KVScanPage

    /// Sections for INFO, e.g. `("memory", [("used_memory", "123")])`. Section names are lower
    /// case; the handler adds `server`, `clients`, `stats` and `keyspace` itself and appends the
    /// backend's fields when it returns a section of the same name.
    func info() async -> [(section: String, fields: [(String, String)])]

    /// GET without waiting, on the connection's own thread, when the backend can answer at once
    /// (the value in RAM, or certainly absent); `.wait` sends the command down the `async` path.
    /// Whatever it answers must be what `get` would have answered at that instant.
    func getImmediately(namespace: String, key: ByteBuffer) throws -> KVImmediate<ByteBuffer?>

    /// `getImmediately` without a copy: a value found is handed to `body` where it lies, kept in
    /// place until `body` returns (the connection writes it to the socket from there), and
    /// `.done(true)`; `.done(false)` for a key certainly absent, `.wait` as for `getImmediately`.
    /// For a value under `RESPEncoder.zeroCopyThreshold` (which the connection copies into its
    /// replies), `body` may run under the backend's lock: it must be short and must not call into
    /// the backend. The default copies it out with `getImmediately`. (Not generic: called once per GET through
    /// the protocol, a generic result type would be instantiated at run time on every call.)
    func withValueImmediately(
        namespace: String, key: ByteBuffer, _ body: (UnsafeRawBufferPointer) -> Void
    ) throws -> KVImmediate<Bool>

    /// MGET without waiting, when every value is in RAM whole and they come to `maxBytes` at most
    /// (they are copied on the connection's thread); else `.wait`, decided where it can be before
    /// anything is copied. Same answer as `get(namespace:keys:)`.
    func getImmediately(namespace: String, keys: [ByteBuffer], maxBytes: Int) throws -> KVImmediate<[ByteBuffer?]>

    /// EXISTS without waiting, when every key can be judged on the spot (none has just expired,
    /// which only the `async` path removes); else `.wait`. Same answer as `exists`. LMCache's
    /// redis connector asks EXISTS for each chunk of a prompt before it reads any.
    func existsImmediately(namespace: String, keys: [ByteBuffer]) -> KVImmediate<Int>

    /// SET without waiting (a value that fits in RAM with nothing to wait for), else `.wait`
    /// with nothing changed. Same contract as `set`.
    func setImmediately(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool>

    /// Room for a SET value of `length` bytes that is still arriving, to be written in place as
    /// it comes and stored by `setImmediately(namespace:key:staged:...)`; nil (the default) when
    /// the backend takes such a value as an ordinary buffer. Asked only for large values.
    func stageValue(length: Int) -> (any KVStagedValue)?

    /// `setImmediately` with a complete value from this backend's `stageValue`. `.wait` leaves
    /// the staged value as it was: the caller then passes `materialize()` to `set`.
    func setImmediately(
        namespace: String, key: ByteBuffer, staged: any KVStagedValue, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool>
}

/// A SET's value received straight into the backend's storage as it comes off the socket,
/// instead of into the connection's buffer and then copied (see `KVBackend.stageValue`). The
/// connection appends the payload's bytes in order until `isComplete`, then runs the SET with it.
public protocol KVStagedValue: AnyObject, Sendable {
    /// The value's length, as the request announced it.
    var length: Int { get }
    /// Copies as much of `bytes` as still fits after what came before; returns how many it took.
    func append(_ bytes: UnsafeRawBufferPointer) -> Int
    /// Lets `fill` write into the room after what came before (a socket read straight into the
    /// storage). `fill` returns how many bytes it wrote there, or 0 or less for none; `receive`
    /// returns the same, and 0 without calling it when there is no room (complete, stored or
    /// discarded).
    func receive(_ fill: (UnsafeMutableRawBufferPointer) -> Int) -> Int
    /// All `length` bytes have come.
    var isComplete: Bool { get }
    /// A copy of the bytes as an ordinary buffer, for a path that cannot take the staged value;
    /// nil once it was stored or discarded.
    func materialize() -> ByteBuffer?
    /// The bytes as buffers that joined in order make the value, for `KVBackend.set(pieces:)`:
    /// the value's own buffers where it was received into some (shared, not copied), else
    /// `materialize()`'s one; nil once it was stored or discarded.
    func pieces() -> [ByteBuffer]?
    /// Gives its storage back unless it was stored (idempotent; done at deinit at the latest).
    func discard()
}

/// The answer of a backend's non-waiting fast path.
public enum KVImmediate<Value> {
    /// Answered: the same result the `async` method would have given.
    case done(Value)
    /// Needs to wait (storage below RAM, backpressure, durability): use the `async` method.
    case wait
}

extension KVImmediate: Sendable where Value: Sendable {}

extension KVStagedValue {
    public func pieces() -> [ByteBuffer]? { materialize().map { [$0] } }
}

extension Array where Element == ByteBuffer {
    /// The buffers' bytes in order, in one buffer (the one itself when there is one).
    public func joined() -> ByteBuffer {
        guard count != 1 else { return self[0] }
        var value = ByteBuffer()
        value.reserveCapacity(reduce(0) { $0 + $1.readableBytes })
        for piece in self { value.writeImmutableBuffer(piece) }
        return value
    }
}

extension KVBackend {
    /// Default: the pieces joined.
    public func set(
        namespace: String, key: ByteBuffer, pieces: [ByteBuffer], condition: KVSetCondition, expiry: KVExpiry
    ) async throws -> Bool {
        try await set(namespace: namespace, key: key, value: pieces.joined(), condition: condition, expiry: expiry)
    }

    /// Default: each value's pieces joined.
    public func set(namespace: String, piecePairs: [(key: ByteBuffer, pieces: [ByteBuffer])]) async throws {
        try await set(namespace: namespace, pairs: piecePairs.map { ($0.key, $0.pieces.joined()) })
    }

    /// Default: the value in one piece.
    public func getPieces(namespace: String, key: ByteBuffer) async throws -> [ByteBuffer]? {
        try await get(namespace: namespace, key: key).map { [$0] }
    }

    /// Default: each key's `getPieces` in turn.
    public func getPieces(namespace: String, keys: [ByteBuffer]) async throws -> [[ByteBuffer]?] {
        var values: [[ByteBuffer]?] = []
        values.reserveCapacity(keys.count)
        for key in keys {
            values.append(try await getPieces(namespace: namespace, key: key))
        }
        return values
    }

    /// Default: the value's length, read whole.
    public func length(namespace: String, key: ByteBuffer) async throws -> Int? {
        try await get(namespace: namespace, key: key)?.readableBytes
    }

    /// Default: no fast path.
    public func getImmediately(namespace: String, key: ByteBuffer) throws -> KVImmediate<ByteBuffer?> { .wait }

    public func withValueImmediately(
        namespace: String, key: ByteBuffer, _ body: (UnsafeRawBufferPointer) -> Void
    ) throws -> KVImmediate<Bool> {
        switch try getImmediately(namespace: namespace, key: key) {
        case .wait: return .wait
        case .done(nil): return .done(false)
        case .done(let value?):
            value.withUnsafeReadableBytes(body)
            return .done(true)
        }
    }

    public func setImmediately(
        namespace: String, key: ByteBuffer, value: ByteBuffer, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> { .wait }

    public func existsImmediately(namespace: String, keys: [ByteBuffer]) -> KVImmediate<Int> { .wait }

    public func getImmediately(namespace: String, keys: [ByteBuffer], maxBytes: Int) throws -> KVImmediate<[ByteBuffer?]> {
        .wait
    }

    public func stageValue(length: Int) -> (any KVStagedValue)? { nil }

    public func setImmediately(
        namespace: String, key: ByteBuffer, staged: any KVStagedValue, condition: KVSetCondition, expiry: KVExpiry
    ) throws -> KVImmediate<Bool> { .wait }

    /// Default MGET: one `get` per key. Backends with a batched read path should override it.
    public func get(namespace: String, keys: [ByteBuffer]) async throws -> [ByteBuffer?] {
        var values: [ByteBuffer?] = []
        values.reserveCapacity(keys.count)
        for key in keys {
            values.append(try await get(namespace: namespace, key: key))
        }
        return values
    }
}
