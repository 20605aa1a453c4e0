import NIOCore

/// One reply or request value. Bulk payloads are `ByteBuffer` slices: parsing a request and
/// echoing a value back never copies the payload. Written in RESP2 or, for a connection that
/// asked with `HELLO 3`, RESP3 (`RESPEncoder`), where only nulls and maps look different.
public enum RESPValue: Sendable, Hashable {
    /// `+OK\r\n`. The text must not contain CR or LF.
    case simpleString(String)
    /// `-ERR message\r\n`. The text starts with the error code (`ERR`, `NOAUTH`, `WRONGPASS`, ...).
    case error(String)
    /// `:42\r\n`
    case integer(Int64)
    /// `$3\r\nfoo\r\n`
    case bulkString(ByteBuffer)
    /// A bulk string given as its pieces in order (a large stored value, as the store holds it):
    /// on the wire the same as `.bulkString` of the pieces joined. Never parsed.
    case bulkPieces([ByteBuffer])
    /// Redis's "nil" reply: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
    case null
    /// `*2\r\n...`
    case array([RESPValue])
    /// `*-1\r\n` in RESP2, `_\r\n` in RESP3.
    case nullArray
    /// Keys and values, alternating: `%2\r\n` and the four in RESP3; in RESP2 the same four as a
    /// flat array (`*4\r\n...`), as Redis writes a map to a RESP2 client.
    case map([RESPValue])

    /// A bulk string holding the UTF-8 bytes of `string`.
    public static func bulk(_ string: String) -> RESPValue {
        .bulkString(ByteBuffer(string: string))
    }

    /// A bulk string of `pieces` joined: `.bulkString` when there is one.
    public static func bulk(pieces: [ByteBuffer]) -> RESPValue {
        pieces.count == 1 ? .bulkString(pieces[0]) : .bulkPieces(pieces)
    }

    /// The shared `+OK` reply.
    public static let ok = RESPValue.simpleString("OK")
}

/// Writes `RESPValue`s in RESP2 wire form, or in RESP3 (`resp3: true`).
public enum RESPEncoder {
    /// Bulk payloads at least this long are handed to `largeBulk` instead of being copied.
    public static let zeroCopyThreshold = 16 * 1024

    /// Appends `value` to `buffer`, copying every payload.
    public static func encode(_ value: RESPValue, resp3: Bool = false, into buffer: inout ByteBuffer) {
        encode(value, resp3: resp3, into: &buffer) { out, payload in out.writeImmutableBuffer(payload) }
    }

    /// Appends `value` to `buffer`; a bulk payload of `zeroCopyThreshold` bytes or more is passed to
    /// `largeBulk(&buffer, payload)`, which must emit `buffer`'s bytes so far and then the payload
    /// (for a channel: write `buffer`, start a fresh one, write `payload`). The CRLF that ends the
    /// bulk string is appended to `buffer` afterwards.
    public static func encode(
        _ value: RESPValue,
        resp3: Bool = false,
        into buffer: inout ByteBuffer,
        largeBulk: (inout ByteBuffer, ByteBuffer) -> Void
    ) {
        switch value {
        case .simpleString(let text):
            buffer.writeInteger(UInt8(ascii: "+"))
            writeLineSafe(text, into: &buffer)
            buffer.writeRESPCRLF()
        case .error(let text):
            buffer.writeInteger(UInt8(ascii: "-"))
            writeLineSafe(text, into: &buffer)
            buffer.writeRESPCRLF()
        case .integer(let number):
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeString(String(number))
            buffer.writeRESPCRLF()
        case .bulkString(let payload):
            writeBulkHeader(length: payload.readableBytes, into: &buffer)
            writeBulkPayload(payload, into: &buffer, largeBulk: largeBulk)
            buffer.writeRESPCRLF()
        case .bulkPieces(let pieces):
            writeBulkHeader(length: pieces.reduce(0) { $0 + $1.readableBytes }, into: &buffer)
            for piece in pieces {
                writeBulkPayload(piece, into: &buffer, largeBulk: largeBulk)
            }
            buffer.writeRESPCRLF()
        case .null:
            buffer.writeStaticString(resp3 ? "_\r\n" : "$-1\r\n")
        case .array(let elements):
            buffer.writeInteger(UInt8(ascii: "*"))
            buffer.writeString(String(elements.count))
            buffer.writeRESPCRLF()
            for element in elements {
                encode(element, resp3: resp3, into: &buffer, largeBulk: largeBulk)
            }
        case .nullArray:
            buffer.writeStaticString(resp3 ? "_\r\n" : "*-1\r\n")
        case .map(let keysAndValues):
            precondition(keysAndValues.count % 2 == 0, "a map's keys and values alternate")
            buffer.writeInteger(UInt8(ascii: resp3 ? "%" : "*"))
            buffer.writeString(String(resp3 ? keysAndValues.count / 2 : keysAndValues.count))
            buffer.writeRESPCRLF()
            for element in keysAndValues {
                encode(element, resp3: resp3, into: &buffer, largeBulk: largeBulk)
            }
        }
    }

    /// `$<length>\r\n`, a bulk string's header (the connection writes a GET's value after it itself).
    static func writeBulkHeader(length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "$"))
        buffer.writeString(String(length))
        buffer.writeRESPCRLF()
    }

    private static func writeBulkPayload(
        _ payload: ByteBuffer, into buffer: inout ByteBuffer, largeBulk: (inout ByteBuffer, ByteBuffer) -> Void
    ) {
        if payload.readableBytes >= zeroCopyThreshold {
            largeBulk(&buffer, payload)
        } else {
            buffer.writeImmutableBuffer(payload)
        }
    }

    /// Simple strings and errors are one line on the wire; a stray CR or LF would desynchronise the
    /// client, so they become spaces (Redis does the same for error texts).
    private static func writeLineSafe(_ text: String, into buffer: inout ByteBuffer) {
        if text.utf8.contains(where: { $0 == 13 || $0 == 10 }) {
            buffer.writeBytes(text.utf8.map { $0 == 13 || $0 == 10 ? UInt8(ascii: " ") : $0 })
        } else {
            buffer.writeString(text)
        }
    }
}

extension ByteBuffer {
    @inlinable
    mutating func writeRESPCRLF() {
        writeInteger(UInt16(0x0D0A))  // "\r\n", big-endian by default
    }
}
