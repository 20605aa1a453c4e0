/// On-disk form of one block: a 64-byte header, then the stored bytes, padded to 4 KiB so
/// O_DIRECT can read and write it. Little-endian throughout.
///
/// | offset | size | field |
/// | --- | --- | --- |
/// | 0 | 4 | magic `STB1` |
/// | 4 | 2 | format version (1) |
/// | 6 | 2 | header length (64) |
/// | 8 | 16 | key: high, low |
/// | 24 | 4 | payload length (before the codec) |
/// | 28 | 4 | stored length (after the codec) |
/// | 32 | 1 | codec: 0 none, 1 lz4 |
/// | 33 | 7 | reserved, zero |
/// | 40 | 8 | sequence number (higher wins on recovery) |
/// | 48 | 8 | XXH3-64 of the stored bytes |
/// | 56 | 8 | XXH3-64 of header bytes 0..<56 |
public struct BlockHeader: Equatable, Sendable {
    public static let magic: UInt32 = 0x3142_5453   // "STB1" read as little-endian
    public static let version: UInt16 = 1
    public static let length = 64
    public static let alignment = 4096

    public enum Codec: UInt8, Sendable { case none = 0, lz4 = 1 }

    public var key: BlockKey
    public var payloadLength: UInt32
    public var storedLength: UInt32
    public var codec: Codec
    public var sequence: UInt64
    public var payloadChecksum: UInt64

    /// Bytes the record takes on disk: header plus stored bytes, rounded up to the alignment.
    public var recordLength: Int { Self.recordLength(storedLength: Int(storedLength)) }

    public static func recordLength(storedLength: Int) -> Int {
        (length + storedLength + alignment - 1) / alignment * alignment
    }

    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.length)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        buffer.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: Self.version.littleEndian, toByteOffset: 4, as: UInt16.self)
        buffer.storeBytes(of: UInt16(Self.length).littleEndian, toByteOffset: 6, as: UInt16.self)
        buffer.storeBytes(of: key.high.littleEndian, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: key.low.littleEndian, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: payloadLength.littleEndian, toByteOffset: 24, as: UInt32.self)
        buffer.storeBytes(of: storedLength.littleEndian, toByteOffset: 28, as: UInt32.self)
        buffer.storeBytes(of: codec.rawValue, toByteOffset: 32, as: UInt8.self)
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 40, as: UInt64.self)
        buffer.storeBytes(of: payloadChecksum.littleEndian, toByteOffset: 48, as: UInt64.self)
        let headerChecksum = BlockKey.hash64(UnsafeRawBufferPointer(rebasing: buffer[0..<56]))
        buffer.storeBytes(of: headerChecksum.littleEndian, toByteOffset: 56, as: UInt64.self)
    }

    public enum DecodeError: Error, Equatable, Sendable {
        case tooShort
        case badMagic
        case unsupportedVersion(UInt16)
        case badHeaderChecksum
        case badLength
        case unknownCodec(UInt8)
    }

    /// Reads and validates a header. Never trusts a field before the header checksum matched.
    public static func decode(_ buffer: UnsafeRawBufferPointer) -> Result<BlockHeader, DecodeError> {
        guard buffer.count >= length else { return .failure(.tooShort) }
        func load<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            T(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        guard load(0, UInt32.self) == magic else { return .failure(.badMagic) }
        let checksum = BlockKey.hash64(UnsafeRawBufferPointer(rebasing: buffer[0..<56]))
        guard load(56, UInt64.self) == checksum else { return .failure(.badHeaderChecksum) }
        let version = load(4, UInt16.self)
        guard version == Self.version else { return .failure(.unsupportedVersion(version)) }
        guard load(6, UInt16.self) == UInt16(length) else { return .failure(.badLength) }
        guard let codec = Codec(rawValue: load(32, UInt8.self)) else { return .failure(.unknownCodec(load(32, UInt8.self))) }
        let header = BlockHeader(
            key: BlockKey(high: load(8, UInt64.self), low: load(16, UInt64.self)),
            payloadLength: load(24, UInt32.self), storedLength: load(28, UInt32.self), codec: codec,
            sequence: load(40, UInt64.self), payloadChecksum: load(48, UInt64.self))
        guard codec != .none || header.payloadLength == header.storedLength else { return .failure(.badLength) }
        guard codec != .lz4 || header.storedLength < header.payloadLength else { return .failure(.badLength) }
        return .success(header)
    }
}
