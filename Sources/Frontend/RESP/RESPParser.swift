import NIOCore

/// An incremental RESP2 parser. Feed it the connection's receive buffer; it consumes whole values
/// and leaves a partial one in place (its already-parsed prefix is kept in the parser's state, so a
/// frame split at any byte boundary parses identically and nothing is scanned twice except an
/// unterminated header line).
///
/// In `.server` mode it reads requests the way Redis does: an array of bulk strings, or an inline
/// command (a line of space-separated words, as typed into telnet). In `.client` mode it reads any
/// RESP2 value (replies). Every length is checked against `Limits` before anything is reserved, so
/// a header announcing 10 GiB is refused without allocating.
///
/// After it throws, the parser is poisoned: every later call throws the same error.
public struct RESPParser: Sendable {
    public enum Mode: Sendable {
        /// Requests: arrays of bulk strings, or inline commands. Empty arrays and blank lines are skipped.
        case server
        /// Replies: any RESP2 value, arrays nested up to `Limits.maxNestingDepth`.
        case client
    }

    public struct Limits: Sendable, Hashable {
        /// Longest bulk string accepted (Redis's `proto-max-bulk-len`). Default 512 MiB.
        public var maxBulkLength: Int
        /// Most elements in one array. Default 1 Mi.
        public var maxArrayElements: Int
        /// Longest inline command or header line, terminator excluded. Default 64 KiB.
        public var maxInlineLength: Int
        /// Deepest array nesting in `.client` mode. Default 32.
        public var maxNestingDepth: Int
        /// The limits of a connection that has not authenticated where a password is required:
        /// lengths past them are refused with Redis's "unauthenticated" wording (`forUnauthenticated`).
        public var unauthenticated = false

        /// What a connection may send before AUTH: Redis's bounds (10 arguments, 16 KiB a
        /// bulk string), or these limits where they are lower. A client that does not know the
        /// password cannot make the server buffer a large value.
        public var forUnauthenticated: Limits {
            var limits = self
            limits.maxBulkLength = min(maxBulkLength, 16 * 1024)
            limits.maxArrayElements = min(maxArrayElements, 10)
            limits.unauthenticated = true
            return limits
        }

        public init(
            maxBulkLength: Int = 512 * 1024 * 1024,
            maxArrayElements: Int = 1024 * 1024,
            maxInlineLength: Int = 64 * 1024,
            maxNestingDepth: Int = 32
        ) {
            precondition(maxBulkLength >= 0 && maxArrayElements >= 0 && maxInlineLength > 0 && maxNestingDepth > 0)
            self.maxBulkLength = maxBulkLength
            self.maxArrayElements = maxArrayElements
            self.maxInlineLength = maxInlineLength
            self.maxNestingDepth = maxNestingDepth
        }
    }

    public let mode: Mode
    /// May change between values (a connection's limits change when it authenticates), not
    /// while one is being parsed.
    public var limits: Limits

    /// Arrays being filled, outermost first.
    private var open: [(remaining: Int, elements: [RESPValue])] = []
    /// Length of a bulk string whose header has been consumed but whose payload has not.
    private var pendingBulk: Int?
    /// `pendingBulk` is 0 because its payload was diverted, not because it is empty.
    private var diverted = false
    private var failure: RESPProtocolError?

    public init(mode: Mode = .server, limits: Limits = Limits()) {
        self.mode = mode
        self.limits = limits
    }

    /// Bytes the value being parsed still needs at least, when that is known (a bulk payload whose
    /// header was read): the caller may reserve them once instead of growing its buffer repeatedly.
    public func minimumBytesStillNeeded(in buffer: ByteBuffer) -> Int? {
        guard let length = pendingBulk else { return nil }
        return max(0, length - (buffer.readableBytes - 2))
    }

    /// A bulk string of a request whose header has been read and whose payload has not.
    public struct AwaitedBulk: Sendable {
        /// Its announced length.
        public var length: Int
        /// Its position in the request (0 is the command name).
        public var index: Int
        /// The request's elements before it.
        public var earlier: [RESPValue]
    }

    /// In `.server` mode, the bulk string whose payload the parser waits for, if it waits for one
    /// (and has not been told `divertAwaitedBulk`).
    public var awaitedBulk: AwaitedBulk? {
        guard mode == .server, let length = pendingBulk, !diverted, let request = open.first else { return nil }
        return AwaitedBulk(length: length, index: request.elements.count, earlier: request.elements)
    }

    /// The caller takes the awaited bulk's payload out of the byte stream itself (e.g. straight
    /// into storage, as it arrives) and feeds only what follows it: the parser next expects the
    /// payload's CRLF and yields the request with an empty bulk string in the payload's place.
    public mutating func divertAwaitedBulk() {
        precondition(awaitedBulk != nil, "no bulk payload is awaited")
        pendingBulk = 0
        diverted = true
    }

    /// Parses the next complete value from `buffer`, consuming its bytes; `nil` when more input is
    /// needed (whatever was consumed so far is remembered).
    public mutating func next(from buffer: inout ByteBuffer) throws(RESPProtocolError) -> RESPValue? {
        if let failure { throw failure }
        do {
            return try parse(&buffer)
        } catch {
            failure = error
            throw error
        }
    }

    /// In `.server` mode, the next request's arguments (a multibulk request's bulk strings, or
    /// an inline command's words), consuming its bytes; `nil` when more input is needed. A
    /// multibulk request that has arrived whole, with CRLF line ends, is read in one pass
    /// straight into its arguments (`wholeRequest`); everything else, including what that pass
    /// finds wrong, goes through `next(from:)`, which decides as before. The bytes consumed, the
    /// arguments and the errors are the same either way (`RESPParserFuzzTests`).
    public mutating func nextRequest(from buffer: inout ByteBuffer) throws(RESPProtocolError) -> [ByteBuffer]? {
        precondition(mode == .server, "requests are parsed in server mode")
        if failure == nil, open.isEmpty, pendingBulk == nil, let arguments = Self.wholeRequest(in: &buffer, limits: limits) {
            return arguments
        }
        guard case .array(let elements)? = try next(from: &buffer) else { return nil }
        return elements.map { element in
            guard case .bulkString(let argument) = element else { preconditionFailure("server mode yields bulk strings") }
            return argument
        }
    }

    /// A multibulk request at the start of `buffer`, if all of it is there and well formed
    /// within `limits` (else nil, nothing consumed): its payloads as slices of `buffer`, with no
    /// header line sliced and no `RESPValue` per argument, which cost the RESP server more CPU
    /// per small command than the rest of parsing.
    static func wholeRequest(in buffer: inout ByteBuffer, limits: Limits) -> [ByteBuffer]? {
        let base = buffer.readerIndex
        let parsed: (arguments: [ByteBuffer], end: Int)? = buffer.withUnsafeReadableBytes { bytes in
            var at = 0
            // `marker`, a decimal number, CRLF (Redis's own requests are never longer than that),
            // the line no longer than the value parser's limit on it
            func number(after marker: UInt8) -> Int64? {
                guard at < bytes.count, bytes[at] == marker else { return nil }
                let digits = at + 1
                var end = digits
                let limit = min(bytes.count, digits + 20)
                while end < limit, bytes[end] != 13 { end += 1 }
                guard end + 1 < bytes.count, bytes[end] == 13, bytes[end + 1] == 10, end - at <= limits.maxInlineLength,
                    let value = parseInteger(bytes[digits..<end])
                else { return nil }
                at = end + 2
                return value
            }
            guard let count = number(after: UInt8(ascii: "*")), count > 0, count <= limits.maxArrayElements else { return nil }
            var arguments: [ByteBuffer] = []
            arguments.reserveCapacity(Int(min(count, 1024)))
            for _ in 0..<count {
                guard let length = number(after: UInt8(ascii: "$")), length >= 0, length <= limits.maxBulkLength,
                    length <= bytes.count - at - 2   // (here whole; and `at + length` cannot overflow)
                else { return nil }
                let payload = at, end = at + Int(length)
                guard end + 1 < bytes.count, bytes[end] == 13, bytes[end + 1] == 10 else { return nil }
                arguments.append(buffer.getSlice(at: base + payload, length: Int(length))!)
                at = end + 2
            }
            return (arguments, at)
        }
        guard let parsed else { return nil }
        buffer.moveReaderIndex(forwardBy: parsed.end)
        return parsed.arguments
    }

    private mutating func parse(_ buffer: inout ByteBuffer) throws(RESPProtocolError) -> RESPValue? {
        while true {
            if let length = pendingBulk {
                guard buffer.readableBytes - 2 >= length else { return nil }   // (no overflow near Int.max)
                let payload = buffer.readSlice(length: length)!
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw .invalidBulkTerminator }
                pendingBulk = nil
                diverted = false
                if let done = complete(.bulkString(payload)) { return done }
                continue
            }
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
            if mode == .server && open.isEmpty && first != UInt8(ascii: "*") {
                guard let line = try readLine(&buffer, tooLong: .tooBigInline) else { return nil }
                let words = try Self.splitInline(line)
                if words.isEmpty { continue }
                return .array(words.map(RESPValue.bulkString))
            }
            if mode == .server && !open.isEmpty && first != UInt8(ascii: "$") {
                throw .expectedBulk(got: first)
            }
            switch first {
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "$"), UInt8(ascii: "*"): break
            default: throw .unexpectedType(first)
            }
            let tooLong: RESPProtocolError = first == UInt8(ascii: "*") ? .tooBigMultibulkCount : .tooBigBulkCount
            guard var line = try readLine(&buffer, tooLong: tooLong) else { return nil }
            line.moveReaderIndex(forwardBy: 1)
            let value: RESPValue
            switch first {
            case UInt8(ascii: "+"):
                value = .simpleString(line.readString(length: line.readableBytes)!)
            case UInt8(ascii: "-"):
                value = .error(line.readString(length: line.readableBytes)!)
            case UInt8(ascii: ":"):
                guard let number = Self.parseInteger(line) else { throw .invalidInteger }
                value = .integer(number)
            case UInt8(ascii: "$"):
                guard let length = Self.parseInteger(line), length >= -1, length <= limits.maxBulkLength else {
                    throw limits.unauthenticated ? .unauthenticatedBulkLength : .invalidBulkLength
                }
                if length == -1 {
                    guard mode == .client else { throw .invalidBulkLength }
                    value = .null
                } else {
                    pendingBulk = Int(length)
                    continue
                }
            case UInt8(ascii: "*"):
                guard let count = Self.parseInteger(line), count <= limits.maxArrayElements else {
                    throw limits.unauthenticated ? .unauthenticatedMultibulkLength : .invalidMultibulkLength
                }
                if count <= 0 {
                    // Redis skips empty and negative multibulk requests; a client sees `*-1` as nil.
                    if mode == .server { continue }
                    guard count >= -1 else { throw .invalidMultibulkLength }
                    value = count == 0 ? .array([]) : .nullArray
                } else {
                    guard open.count < (mode == .server ? 1 : limits.maxNestingDepth) else { throw .tooDeep }
                    open.append((Int(count), []))
                    // Reserve for what is plausible, not for what the header claims. (In place:
                    // an array reserved first and then appended here was shared, and copied on
                    // its first element.)
                    open[open.count - 1].elements.reserveCapacity(min(Int(count), 1024))
                    continue
                }
            default:
                throw .unexpectedType(first)
            }
            if let done = complete(value) { return done }
        }
    }

    /// Adds a finished value to the innermost open array, closing arrays that became full; returns
    /// the top-level value once there is one.
    private mutating func complete(_ value: RESPValue) -> RESPValue? {
        var value = value
        while !open.isEmpty {
            open[open.count - 1].elements.append(value)
            open[open.count - 1].remaining -= 1
            guard open[open.count - 1].remaining == 0 else { return nil }
            value = .array(open.removeLast().elements)
        }
        return value
    }

    /// Reads one line (terminated by LF, optionally preceded by CR) and returns it without the
    /// terminator; `nil` if no terminator has arrived yet.
    private func readLine(_ buffer: inout ByteBuffer, tooLong: RESPProtocolError) throws(RESPProtocolError) -> ByteBuffer? {
        let limit = limits.maxInlineLength
        let searched = min(buffer.readableBytes, limit + 2)
        let newline = buffer.withUnsafeReadableBytes { bytes in
            UnsafeRawBufferPointer(rebasing: bytes[..<searched]).firstIndex(of: UInt8(ascii: "\n"))
        }
        guard let newline else {
            if buffer.readableBytes > limit + 1 { throw tooLong }
            return nil
        }
        var end = newline
        if end > 0 && buffer.getInteger(at: buffer.readerIndex + end - 1, as: UInt8.self) == 13 { end -= 1 }
        guard end <= limit else { throw tooLong }
        let line = buffer.getSlice(at: buffer.readerIndex, length: end)!
        buffer.moveReaderIndex(forwardBy: newline + 1)
        return line
    }

    /// Strict decimal Int64 as Redis's `string2ll`: optional `-`, digits, no spaces, no `+`.
    static func parseInteger(_ line: ByteBuffer) -> Int64? {
        line.withUnsafeReadableBytes { bytes -> Int64? in
            parseInteger(bytes)
        }
    }

    static func parseInteger<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Int64? {
        guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
        var index = bytes.startIndex
        let negative = bytes[index] == UInt8(ascii: "-")
        if negative { index = bytes.index(after: index) }
        guard index != bytes.endIndex else { return nil }
        if bytes[index] == UInt8(ascii: "0") && bytes.index(after: index) != bytes.endIndex { return nil }
        var magnitude: UInt64 = 0
        while index != bytes.endIndex {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(digit))
            guard !o1 && !o2 else { return nil }
            magnitude = sum
            index = bytes.index(after: index)
        }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { return nil }
            if magnitude == 0 { return nil }  // "-0"
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else { return nil }
        return Int64(magnitude)
    }

    /// Splits an inline command like Redis's `sdssplitargs`: words separated by blanks, `"..."`
    /// with `\n \r \t \b \a \\ \" \xHH` escapes, `'...'` with `\'`. A closing quote must be
    /// followed by a blank or the end.
    static func splitInline(_ line: ByteBuffer) throws(RESPProtocolError) -> [ByteBuffer] {
        let bytes = Array(line.readableBytesView)
        var words: [ByteBuffer] = []
        var i = 0
        func isBlank(_ b: UInt8) -> Bool { b == 32 || b == 9 || b == 10 || b == 13 || b == 11 || b == 12 || b == 0 }
        while true {
            while i < bytes.count && isBlank(bytes[i]) { i += 1 }
            if i == bytes.count { return words }
            var word: [UInt8] = []
            var inDouble = false, inSingle = false, done = false
            while !done {
                if inDouble {
                    guard i < bytes.count else { throw .unbalancedQuotes }
                    let c = bytes[i]
                    if c == UInt8(ascii: "\\") && i + 3 < bytes.count && bytes[i + 1] == UInt8(ascii: "x"),
                        let h = hexValue(bytes[i + 2]), let l = hexValue(bytes[i + 3])
                    {
                        word.append(h << 4 | l)
                        i += 3
                    } else if c == UInt8(ascii: "\\") && i + 1 < bytes.count {
                        i += 1
                        switch bytes[i] {
                        case UInt8(ascii: "n"): word.append(10)
                        case UInt8(ascii: "r"): word.append(13)
                        case UInt8(ascii: "t"): word.append(9)
                        case UInt8(ascii: "b"): word.append(8)
                        case UInt8(ascii: "a"): word.append(7)
                        default: word.append(bytes[i])
                        }
                    } else if c == UInt8(ascii: "\"") {
                        if i + 1 < bytes.count && !isBlank(bytes[i + 1]) { throw .unbalancedQuotes }
                        done = true
                    } else {
                        word.append(c)
                    }
                } else if inSingle {
                    guard i < bytes.count else { throw .unbalancedQuotes }
                    let c = bytes[i]
                    if c == UInt8(ascii: "\\") && i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "'") {
                        i += 1
                        word.append(UInt8(ascii: "'"))
                    } else if c == UInt8(ascii: "'") {
                        if i + 1 < bytes.count && !isBlank(bytes[i + 1]) { throw .unbalancedQuotes }
                        done = true
                    } else {
                        word.append(c)
                    }
                } else {
                    if i == bytes.count { break }
                    let c = bytes[i]
                    if isBlank(c) {
                        done = true
                    } else if c == UInt8(ascii: "\"") {
                        inDouble = true
                    } else if c == UInt8(ascii: "'") {
                        inSingle = true
                    } else {
                        word.append(c)
                    }
                }
                if i < bytes.count { i += 1 }
            }
            words.append(ByteBuffer(bytes: word))
        }
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
