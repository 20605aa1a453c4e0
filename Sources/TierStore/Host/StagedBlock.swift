import Synchronization

/// A block being received straight into the host arena: `append` copies each piece as it
/// arrives (a value read off a socket, with no buffer in between), `BlockStore.publishStaged`
/// makes the complete slot a block. Until then nothing reads or evicts the slot; dropped or
/// `discard`ed unpublished, it goes back to the arena.
// @unchecked: the slot's bytes are touched only under `state`'s lock while it is held.
public final class StagedBlock: @unchecked Sendable {
    public let length: Int
    private let host: HostTier
    private let reservation: HostTier.Reservation
    private struct State {
        var filled = 0
        /// The slot is still ours: neither published nor given back.
        var held = true
    }
    private let state = Mutex(State())

    init(host: HostTier, reservation: HostTier.Reservation) {
        self.host = host
        self.reservation = reservation
        self.length = reservation.length
    }

    deinit { discard() }

    /// Bytes received so far.
    public var filled: Int { state.withLock { $0.filled } }

    public var isComplete: Bool { state.withLock { $0.held && $0.filled == length } }

    /// Copies as much of `bytes` as still fits after what came before; returns how many bytes
    /// it took (0 once complete, published or discarded).
    @discardableResult
    public func append(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard let source = bytes.baseAddress else { return 0 }
        return receive { room in
            let count = min(bytes.count, room.count)
            room.baseAddress!.copyMemory(from: source, byteCount: count)
            return count
        }
    }

    /// Lets `fill` write into the room after the bytes received so far, under the block's lock
    /// (so the slot cannot be given back meanwhile); `fill` returns how many bytes it wrote, or
    /// 0 or less for none. Returns that, or 0 without calling `fill` when there is no room.
    @discardableResult
    public func receive(_ fill: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        state.withLock { state -> Int in
            guard state.held, state.filled < length else { return 0 }
            let room = UnsafeMutableRawBufferPointer(rebasing: host.bytes(of: reservation)[state.filled..<length])
            let written = fill(room)
            if written > 0 { state.filled += min(written, room.count) }
            return written
        }
    }

    /// Runs `body` on the bytes received so far (e.g. to copy them out when the block cannot
    /// be published after all); nil once published or discarded.
    public func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T? {
        try state.withLock { state -> T? in
            guard state.held else { return nil }
            return try body(UnsafeRawBufferPointer(rebasing: host.bytes(of: reservation)[..<state.filled]))
        }
    }

    /// Publishes the complete slot as `key`; false, with the slot still held, if it is not
    /// complete or the host budget no longer covers it.
    func publish(as key: BlockKey, tag: UInt64) -> Bool {
        state.withLock { state -> Bool in
            guard state.held, state.filled == length else { return false }
            guard host.publish(reservation, key, tag: tag) == .published else { return false }
            state.held = false
            return true
        }
    }

    /// Gives the slot back unpublished (idempotent; also done at deinit).
    public func discard() {
        let held = state.withLock { state -> Bool in
            defer { state.held = false }
            return state.held
        }
        if held { host.cancel(reservation) }
    }
}
