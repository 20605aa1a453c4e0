@testable import StrataDaemon
import NIOCore
import Testing

/// A `durable` store receives a large SET's value into buffers of its parts' sizes
/// (`TierKVBackend.BufferedValue`), which become the value's parts on disk: however the bytes
/// arrive, the buffers must be cut exactly where the store cuts values, hold every byte in order,
/// and take nothing past the value's end.
struct KVBufferedValueTests {
    @Test(arguments: [1, 7, 4096, 10_000])
    func bytesArrivingInAnyChunksFillPartSizedBuffersInOrder(chunk: Int) {
        let partBytes = 16 * 1024
        let value = (0..<(2 * partBytes + 5_000)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        let buffered = TierKVBackend.BufferedValue(length: value.count, partBytes: partBytes)
        var offset = 0
        var byReceive = false
        while offset < value.count {
            let end = min(value.count, offset + chunk)
            let piece = value[offset..<end]
            // alternately copied in (what NIO read) and read in place (a socket read)
            let taken = byReceive
                ? buffered.receive { room in
                    let count = min(room.count, piece.count)
                    piece.prefix(count).withUnsafeBytes { room.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
                    return count
                }
                : piece.withUnsafeBytes { buffered.append($0) }
            #expect(taken > 0)
            offset += taken
            byReceive.toggle()
        }
        #expect(buffered.isComplete)
        let pieces = buffered.pieces() ?? []
        #expect(pieces.map(\.readableBytes) == [partBytes, partBytes, 5_000])
        #expect(pieces.flatMap { Array($0.readableBytesView) } == value)
        #expect(buffered.materialize().map { Array($0.readableBytesView) } == value)
        // nothing past the end: a pipelined next command stays with the connection
        #expect([UInt8](repeating: 1, count: 10).withUnsafeBytes { buffered.append($0) } == 0)
        #expect(buffered.receive { $0.count } == 0)
        buffered.discard()
        #expect(buffered.pieces() == nil && buffered.materialize() == nil && !buffered.isComplete)
    }

    @Test func aValueOfWholePartsEndsWithAFullPart() {
        let buffered = TierKVBackend.BufferedValue(length: 8, partBytes: 4)
        #expect([UInt8](1...9).withUnsafeBytes { buffered.append($0) } == 8)
        #expect(buffered.pieces()?.map(\.readableBytes) == [4, 4] && buffered.isComplete)
    }
}
