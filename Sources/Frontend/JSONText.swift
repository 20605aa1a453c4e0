import Foundation

/// Reads JSON text where it lies, building no objects: one strict validating pass (RFC 8259),
/// then spans of the values asked for. The gateway reads a handful of fields from every request
/// (`model`, `stream`, the prompt) and answer (`usage`, `timings`); building Foundation objects
/// for the whole body was most of the gateway's own CPU per relayed request.
///
/// The pass decides only what it can decide exactly as `JSONSerialization` would: text it finds
/// invalid, nested deeper than `maxDepth`, or holding a lone surrogate escape is left to
/// Foundation (the caller falls back), so error messages and edge cases stay Foundation's.
struct JSONText {
    /// A value's bytes, `start..<end`, in the text.
    struct Span: Equatable {
        var start: Int
        var end: Int
    }

    let bytes: UnsafeRawBufferPointer
    static let maxDepth = 128

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    // MARK: validation

    /// The span of the one value the text holds (whitespace around it allowed); nil when the
    /// text is not plain valid JSON this pass decides.
    func validate() -> Span? {
        var members: [(key: Span, value: Span)]? = nil
        return validate(members: &members)
    }

    /// As `validate()`; when the value is an object, also its members in order (the gateway
    /// reads a request's fields from them without a second pass over the text).
    func validate(members: inout [(key: Span, value: Span)]?) -> Span? {
        var i = 0
        skipWhitespace(&i)
        let start = i
        var recorded: [(key: Span, value: Span)] = []
        recorded.reserveCapacity(8)   // (a request's or an answer's fields: one allocation, not one per doubling)
        guard value(&i, depth: 0, members: &recorded) else { return nil }
        let end = i
        skipWhitespace(&i)
        guard i == bytes.count else { return nil }
        if bytes[start] == UInt8(ascii: "{") { members = recorded }
        return Span(start: start, end: end)
    }

    func skipWhitespace(_ i: inout Int) {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x0A, 0x0D, 0x09: i += 1
            default: return
            }
        }
    }

    private func value(_ i: inout Int, depth: Int) -> Bool {
        var unused: [(key: Span, value: Span)] = []
        return value(&i, depth: depth, members: &unused)
    }

    /// A value; the members of the outermost object (depth 0) go to `members`.
    private func value(_ i: inout Int, depth: Int, members: inout [(key: Span, value: Span)]) -> Bool {
        guard i < bytes.count, depth < Self.maxDepth else { return false }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            skipWhitespace(&i)
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                i += 1
                return true
            }
            while true {
                let keyStart = i
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\""), string(&i) else { return false }
                let key = Span(start: keyStart, end: i)
                skipWhitespace(&i)
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return false }
                i += 1
                skipWhitespace(&i)
                let valueStart = i
                guard value(&i, depth: depth + 1) else { return false }
                if depth == 0 { members.append((key, Span(start: valueStart, end: i))) }
                skipWhitespace(&i)
                guard i < bytes.count else { return false }
                if bytes[i] == UInt8(ascii: "}") {
                    i += 1
                    return true
                }
                guard bytes[i] == UInt8(ascii: ",") else { return false }
                i += 1
                skipWhitespace(&i)
            }
        case UInt8(ascii: "["):
            i += 1
            skipWhitespace(&i)
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                i += 1
                return true
            }
            while true {
                guard value(&i, depth: depth + 1) else { return false }
                skipWhitespace(&i)
                guard i < bytes.count else { return false }
                if bytes[i] == UInt8(ascii: "]") {
                    i += 1
                    return true
                }
                guard bytes[i] == UInt8(ascii: ",") else { return false }
                i += 1
                skipWhitespace(&i)
            }
        case UInt8(ascii: "\""):
            return string(&i)
        case UInt8(ascii: "t"):
            return literal(&i, "true")
        case UInt8(ascii: "f"):
            return literal(&i, "false")
        case UInt8(ascii: "n"):
            return literal(&i, "null")
        default:
            return number(&i)
        }
    }

    private func literal(_ i: inout Int, _ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard i + count <= bytes.count else { return false }
        for k in 0..<count where bytes[i + k] != word.utf8Start[k] { return false }
        i += count
        return true
    }

    /// A number. Only those Foundation surely reads as a finite Double are decided here (at most
    /// 200 digits before and after the point, an exponent of at most two digits): Foundation
    /// refuses a number it cannot represent, such as 1E400.
    private func number(_ i: inout Int) -> Bool {
        func digits(_ i: inout Int) -> Int {
            let start = i
            while i < bytes.count, bytes[i] &- UInt8(ascii: "0") < 10 { i += 1 }
            return i - start
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count else { return false }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            let count = digits(&i)
            guard count > 0, count <= 200 else { return false }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            let count = digits(&i)
            guard count > 0, count <= 200 else { return false }
        }
        if i < bytes.count, bytes[i] | 0x20 == UInt8(ascii: "e") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            let count = digits(&i)
            guard count > 0, count <= 2 else { return false }
        }
        return true
    }

    /// A string from its opening quote; leaves `i` after the closing one. Checks escapes and
    /// UTF-8; a lone surrogate escape is not decided here.
    private func string(_ i: inout Int) -> Bool {
        i += 1
        while i < bytes.count {
            // Eight plain bytes at a time: no quote, backslash, control or non-ASCII byte.
            while i + 8 <= bytes.count, !Self.hasSpecialByte(bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                i += 8
            }
            guard i < bytes.count else { return false }
            let byte = bytes[i]
            if byte == UInt8(ascii: "\"") {
                i += 1
                return true
            }
            if byte == UInt8(ascii: "\\") {
                guard i + 1 < bytes.count else { return false }
                switch bytes[i + 1] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    i += 2
                case UInt8(ascii: "u"):
                    guard let unit = hex4(at: i + 2) else { return false }
                    i += 6
                    if unit & 0xFC00 == 0xD800 {
                        guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u"),
                            let low = hex4(at: i + 2), low & 0xFC00 == 0xDC00
                        else { return false }
                        i += 6
                    } else if unit & 0xFC00 == 0xDC00 {
                        return false
                    }
                default:
                    return false
                }
                continue
            }
            if byte < 0x20 { return false }
            if byte < 0x80 {
                i += 1
                continue
            }
            guard let length = utf8Sequence(at: i) else { return false }
            i += length
        }
        return false
    }

    static let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080

    /// Whether a byte of `word` is zero (SWAR; may say so falsely only when one also is).
    @inline(__always)
    static func hasZeroByte(_ word: UInt64) -> Bool {
        (word &- ones) & ~word & highs != 0
    }

    /// A quote, a backslash, a byte below 0x20 or one of 0x80 and above in `word`.
    @inline(__always)
    private static func hasSpecialByte(_ word: UInt64) -> Bool {
        word & highs != 0 || (word &- ones &* 0x20) & ~word & highs != 0
            || hasZeroByte(word ^ (ones &* 0x22)) || hasZeroByte(word ^ (ones &* 0x5C))
    }

    /// A quote or a backslash in `word`.
    @inline(__always)
    static func hasQuoteOrBackslash(_ word: UInt64) -> Bool {
        hasZeroByte(word ^ (ones &* 0x22)) || hasZeroByte(word ^ (ones &* 0x5C))
    }

    func hex4(at i: Int) -> UInt16? {
        guard i + 4 <= bytes.count else { return nil }
        var unit: UInt16 = 0
        for k in 0..<4 {
            let byte = bytes[i + k]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            unit = unit << 4 | UInt16(digit)
        }
        return unit
    }

    /// The length of the well-formed UTF-8 sequence at `i` (a lead byte ≥ 0x80), or nil.
    private func utf8Sequence(at i: Int) -> Int? {
        let lead = bytes[i]
        let length: Int
        var low: UInt8 = 0x80, high: UInt8 = 0xBF   // bounds of the second byte
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; high = 0x9F
        case 0xF0: length = 4; low = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; high = 0x8F
        default: return nil
        }
        guard i + length <= bytes.count, (low...high).contains(bytes[i + 1]) else { return nil }
        for k in 2..<length where bytes[i + k] & 0xC0 != 0x80 { return nil }
        return length
    }
}
