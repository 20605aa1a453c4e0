/// Input that is not valid RESP, or exceeds a configured limit. The connection that sent it is
/// answered `-ERR <message>` and closed; other connections are unaffected.
public struct RESPProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Redis's wording, e.g. `Protocol error: invalid bulk length`; clients match on it.
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }

    static let invalidMultibulkLength = RESPProtocolError("Protocol error: invalid multibulk length")
    static let invalidBulkLength = RESPProtocolError("Protocol error: invalid bulk length")
    static let unauthenticatedMultibulkLength = RESPProtocolError("Protocol error: unauthenticated multibulk length")
    static let unauthenticatedBulkLength = RESPProtocolError("Protocol error: unauthenticated bulk length")
    static let invalidBulkTerminator = RESPProtocolError("Protocol error: bulk string not terminated by CRLF")
    static let tooBigInline = RESPProtocolError("Protocol error: too big inline request")
    static let tooBigMultibulkCount = RESPProtocolError("Protocol error: too big mbulk count string")
    static let tooBigBulkCount = RESPProtocolError("Protocol error: too big bulk count string")
    static let unbalancedQuotes = RESPProtocolError("Protocol error: unbalanced quotes in request")
    static let invalidInteger = RESPProtocolError("Protocol error: invalid integer")
    static let tooDeep = RESPProtocolError("Protocol error: arrays nested too deeply")

    /// An HTTP request's first line or Host header read as a command: a web page posting to this
    /// port (a browser's "simple" POST needs no permission, and its body's lines would run as
    /// commands). Redis closes such connections too ("Possible SECURITY ATTACK detected").
    static let looksLikeHTTP = RESPProtocolError("Protocol error: this is a Redis-protocol port, not HTTP (connection closed)")

    static func expectedBulk(got byte: UInt8) -> RESPProtocolError {
        RESPProtocolError("Protocol error: expected '$', got '\(Character(Unicode.Scalar(byte)))'")
    }

    static func unexpectedType(_ byte: UInt8) -> RESPProtocolError {
        RESPProtocolError("Protocol error: unexpected type byte 0x\(String(byte, radix: 16))")
    }
}
