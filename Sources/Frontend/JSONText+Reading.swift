import Foundation

/// Reading spans of text that `validate()` accepted. Nothing here checks the text again: each
/// reader assumes the span is a whole, valid value, as validation left it.
extension JSONText {
    enum Kind: Equatable {
        case object, array, string, number, bool, null
    }

    func kind(_ span: Span) -> Kind {
        switch bytes[span.start] {
        case UInt8(ascii: "{"): .object
        case UInt8(ascii: "["): .array
        case UInt8(ascii: "\""): .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): .bool
        case UInt8(ascii: "n"): .null
        default: .number
        }
    }

    /// The end of the (validated) value that starts at `i`.
    func end(ofValueAt i: Int) -> Int {
        var i = i
        switch bytes[i] {
        case UInt8(ascii: "\""):
            skipString(&i)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            while true {
                let byte = bytes[i]
                if byte == UInt8(ascii: "\"") {
                    skipString(&i)
                    continue
                }
                if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                    depth += 1
                } else if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                    depth -= 1
                    if depth == 0 { return i + 1 }
                }
                i += 1
            }
        default:
            while i < bytes.count {
                switch bytes[i] {
                case UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x0A, 0x0D, 0x09: return i
                default: i += 1
                }
            }
        }
        return i
    }

    private func skipString(_ i: inout Int) {
        i += 1
        while true {
            while i + 8 <= bytes.count, !Self.hasQuoteOrBackslash(bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                i += 8
            }
            let byte = bytes[i]
            if byte == UInt8(ascii: "\"") {
                i += 1
                return
            }
            i += byte == UInt8(ascii: "\\") ? 2 : 1
        }
    }

    /// Each member of a validated object, in order, until `body` returns false.
    func forEachMember(of object: Span, _ body: (_ key: Span, _ value: Span) -> Bool) {
        forEachMember(ofObjectAt: object.start, body)
    }

    /// Each member of the validated object that starts at `start`; returns the object's end
    /// when every member was read (so that reading an object is one pass), else nil.
    @discardableResult
    func forEachMember(ofObjectAt start: Int, _ body: (_ key: Span, _ value: Span) -> Bool) -> Int? {
        var i = start + 1
        while true {
            skipWhitespace(&i)
            guard bytes[i] == UInt8(ascii: "\"") else { return i + 1 }   // "}": empty object
            let keyStart = i
            skipString(&i)
            let key = Span(start: keyStart, end: i)
            skipWhitespace(&i)
            i += 1   // ":"
            skipWhitespace(&i)
            let value = Span(start: i, end: end(ofValueAt: i))
            guard body(key, value) else { return nil }
            i = value.end
            skipWhitespace(&i)
            guard bytes[i] == UInt8(ascii: ",") else { return i + 1 }   // "}"
            i += 1
        }
    }

    /// Each element of a validated array, in order.
    func forEachElement(of array: Span, _ body: (Span) -> Void) {
        forEachElementStart(of: array) { start in
            let end = end(ofValueAt: start)
            body(Span(start: start, end: end))
            return end
        }
    }

    /// Each element's start; `body` reads the element and returns its end.
    func forEachElementStart(of array: Span, _ body: (Int) -> Int) {
        var i = array.start + 1
        skipWhitespace(&i)
        guard bytes[i] != UInt8(ascii: "]") else { return }
        while true {
            i = body(i)
            skipWhitespace(&i)
            guard bytes[i] == UInt8(ascii: ",") else { return }
            i += 1
            skipWhitespace(&i)
        }
    }

    /// The value of the last member named `name` (as Foundation's dictionaries keep the last).
    func member(_ name: String, of object: Span) -> Span? {
        var found: Span?
        forEachMember(of: object) { key, value in
            if keyEquals(key, name) { found = value }
            return true
        }
        return found
    }

    /// The value of the last of `members` named `name` (members as `validate(members:)` records them).
    func member(_ name: String, in members: [(key: Span, value: Span)]) -> Span? {
        members.last { keyEquals($0.key, name) }?.value
    }

    /// Whether a string span (quotes included) holds exactly `text`.
    func keyEquals(_ key: Span, _ text: String) -> Bool {
        var text = text
        return text.withUTF8 { utf8 in
            let raw = Span(start: key.start + 1, end: key.end - 1)
            if raw.end - raw.start == utf8.count, memcmp(bytes.baseAddress! + raw.start, utf8.baseAddress!, utf8.count) == 0 {
                return true
            }
            // Only an escaped spelling can still match.
            guard hasEscape(key) else { return false }
            var decoded: [UInt8] = []
            appendString(key, to: &decoded)
            return decoded.elementsEqual(utf8)
        }
    }

    private func hasEscape(_ string: Span) -> Bool {
        backslash(from: string.start + 1, to: string.end - 1) < string.end - 1
    }

    /// The offset of the first backslash in `bytes[from..<to]`, or `to` (`memchr`: prompts are
    /// long strings with few escapes, and a byte-by-byte scan of them was a percent of a relayed
    /// request's CPU).
    private func backslash(from: Int, to: Int) -> Int {
        guard from < to, let base = bytes.baseAddress,
            let found = memchr(base + from, Int32(UInt8(ascii: "\\")), to - from)
        else { return to }
        return UnsafeRawPointer(found) - base
    }

    /// A string value, unescaped.
    func string(_ span: Span) -> String {
        if !hasEscape(span) {
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[span.start + 1..<span.end - 1]), as: UTF8.self)
        }
        var decoded: [UInt8] = []
        appendString(span, to: &decoded)
        return String(decoding: decoded, as: UTF8.self)
    }

    /// Appends a string value's UTF-8, unescaped.
    func appendString(_ span: Span, to out: inout [UInt8]) {
        var i = span.start + 1
        let end = span.end - 1
        while i < end {
            let run = backslash(from: i, to: end)
            if run > i { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<run])) }
            i = run
            guard i < end else { return }
            let escaped = bytes[i + 1]
            i += 2
            switch escaped {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = UInt32(hex4(at: i)!)
                i += 4
                if scalar & 0xFC00 == 0xD800 {   // validated: a low surrogate follows
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (UInt32(hex4(at: i + 2)!) - 0xDC00)
                    i += 6
                }
                out.append(contentsOf: UTF8.encode(Unicode.Scalar(scalar)!)!)
            default: out.append(escaped)   // " \ /
            }
        }
    }

    /// A number value as an integer, as `NSNumber.intValue` reads it (a fraction truncated);
    /// nil for anything but a number, or one out of range.
    func integer(_ span: Span) -> Int? {
        guard kind(span) == .number else { return nil }
        let text = UnsafeRawBufferPointer(rebasing: bytes[span.start..<span.end])
        var value = 0
        var negative = false
        var simple = true
        for (k, byte) in text.enumerated() {
            if k == 0 && byte == UInt8(ascii: "-") {
                negative = true
                continue
            }
            guard byte &- UInt8(ascii: "0") < 10 else {
                simple = false
                break
            }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            guard !overflow1 && !overflow2 else { return nil }
            value = sum
        }
        if simple { return negative ? -value : value }
        guard let double = double(span), double > Double(Int.min), double < Double(Int.max) else { return nil }
        return Int(double)
    }

    /// A number value as a `Double`; nil for anything but a finite number.
    func double(_ span: Span) -> Double? {
        guard kind(span) == .number else { return nil }
        let text = UnsafeRawBufferPointer(rebasing: bytes[span.start..<span.end])
        guard let value = Double(String(decoding: text, as: UTF8.self)), value.isFinite else { return nil }
        return value
    }

    /// The literal `true` or `false`; nil for anything else.
    func bool(_ span: Span) -> Bool? {
        guard kind(span) == .bool else { return nil }
        return bytes[span.start] == UInt8(ascii: "t")
    }
}

/// Appends `text` as a JSON string literal, quotes included.
func appendJSONString(_ text: String, to out: inout [UInt8]) {
    appendJSONString(utf8: text.utf8, to: &out)
}

/// Appends UTF-8 text as a JSON string literal, quotes included, escaping only `"`, `\` and
/// control characters.
func appendJSONString(utf8: some Sequence<UInt8>, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for byte in utf8 {
        switch byte {
        case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
        case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
        case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
        case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
        case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
        case ..<0x20:
            let hex = Array("0123456789abcdef".utf8)
            out += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
        default: out.append(byte)
        }
    }
    out.append(UInt8(ascii: "\""))
}
