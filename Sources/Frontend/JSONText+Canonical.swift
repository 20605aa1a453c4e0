import Foundation

/// A canonical byte form of validated JSON values, for hashing what a prompt holds beyond its
/// text (tools, structured content parts): equal values give equal bytes however the client
/// spelled them, and the same bytes whether they come from the client's text or from
/// Foundation's objects written back. Whitespace goes; strings are written with the fewest
/// escapes (`"`, `\` and control characters only); numbers as the `Double` they denote
/// (integers within 2^53 without a fraction: `1.0`, `1e0` and `1` are one number); object
/// members are ordered by their keys so written (of a key given twice, the last counts, as
/// for Foundation).
///
/// Foundation's `.sortedKeys` gave the same guarantee at about 200 µs per tool definition on
/// these machines (it orders keys by a locale-aware comparison); this is one pass over text the
/// gateway has already validated.
extension JSONText {
    func appendCanonical(_ value: Span, to out: inout [UInt8]) {
        _ = appendCanonical(at: value.start, to: &out)
    }

    /// Appends the canonical form of the validated value that starts at `i`; returns its end.
    private func appendCanonical(at i: Int, to out: inout [UInt8]) -> Int {
        var i = i
        switch bytes[i] {
        case UInt8(ascii: "{"):
            return appendCanonicalObject(at: i, to: &out)
        case UInt8(ascii: "["):
            out.append(UInt8(ascii: "["))
            i += 1
            skipWhitespace(&i)
            var first = true
            while bytes[i] != UInt8(ascii: "]") {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                i = appendCanonical(at: i, to: &out)
                skipWhitespace(&i)
                if bytes[i] == UInt8(ascii: ",") {
                    i += 1
                    skipWhitespace(&i)
                }
            }
            out.append(UInt8(ascii: "]"))
            return i + 1
        case UInt8(ascii: "\""):
            return appendCanonicalString(at: i, to: &out)
        case UInt8(ascii: "t"), UInt8(ascii: "n"):
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<i + 4]))
            return i + 4
        case UInt8(ascii: "f"):
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<i + 5]))
            return i + 5
        default:
            let end = end(ofValueAt: i)
            appendCanonicalNumber(Span(start: i, end: end), to: &out)
            return end
        }
    }

    /// Members are written once, in the order given, then put in key order with their commas.
    private func appendCanonicalObject(at start: Int, to out: inout [UInt8]) -> Int {
        var i = start + 1
        skipWhitespace(&i)
        let base = out.count
        // Ranges in `out`: the key's canonical literal, and the whole `"key":value`.
        var members: [(key: Range<Int>, member: Range<Int>)] = []
        while bytes[i] != UInt8(ascii: "}") {
            let memberStart = out.count
            i = appendCanonicalString(at: i, to: &out)
            let keyEnd = out.count
            skipWhitespace(&i)
            i += 1   // ":"
            skipWhitespace(&i)
            out.append(UInt8(ascii: ":"))
            i = appendCanonical(at: i, to: &out)
            members.append((memberStart..<keyEnd, memberStart..<out.count))
            skipWhitespace(&i)
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                skipWhitespace(&i)
            }
        }
        let written = Array(out[base...])
        out.removeSubrange(base...)
        written.withUnsafeBytes { written in
            func key(_ index: Int) -> UnsafeRawBufferPointer {
                UnsafeRawBufferPointer(rebasing: written[(members[index].key.lowerBound - base)..<(members[index].key.upperBound - base)])
            }
            func compare(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
                let common = memcmp(a.baseAddress!, b.baseAddress!, min(a.count, b.count))
                return common != 0 ? Int(common) : a.count - b.count
            }
            // Equal keys by position (Swift's sort is not stable), so that the last one is kept.
            let order = members.indices.sorted { a, b in
                let order = compare(key(a), key(b))
                return order == 0 ? a < b : order < 0
            }
            out.append(UInt8(ascii: "{"))
            var first = true
            for (n, index) in order.enumerated() {
                if n + 1 < order.count, compare(key(order[n + 1]), key(index)) == 0 { continue }
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                let member = members[index].member
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: written[(member.lowerBound - base)..<(member.upperBound - base)]))
            }
            out.append(UInt8(ascii: "}"))
        }
        return i + 1
    }

    private func appendCanonicalString(at start: Int, to out: inout [UInt8]) -> Int {
        var i = start + 1
        while true {
            while i + 8 <= bytes.count, !Self.hasQuoteOrBackslash(bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                i += 8
            }
            if bytes[i] == UInt8(ascii: "\"") {
                // Valid text without an escape holds no quote, backslash or control byte: it
                // is already in canonical form.
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start...i]))
                return i + 1
            }
            if bytes[i] == UInt8(ascii: "\\") { break }
            i += 1
        }
        let end = end(ofValueAt: start)
        var decoded: [UInt8] = []
        appendString(Span(start: start, end: end), to: &decoded)
        appendJSONString(utf8: decoded, to: &out)
        return end
    }

    private func appendCanonicalNumber(_ number: Span, to out: inout [UInt8]) {
        let text = UnsafeRawBufferPointer(rebasing: bytes[number.start..<number.end])
        let digits = text.first == UInt8(ascii: "-") ? text.dropFirst() : text[...]
        if digits.count <= 15, digits.allSatisfy({ $0 &- UInt8(ascii: "0") < 10 }) {
            // An integer below 10^15 is written as it is (JSON allows no leading zero), but for -0.
            if digits.count == 1, digits.first == UInt8(ascii: "0") {
                out.append(UInt8(ascii: "0"))
            } else {
                out.append(contentsOf: text)
            }
            return
        }
        let value = double(number) ?? 0   // validated: always finite
        if value == value.rounded(), abs(value) < 0x1p53 {
            out.append(contentsOf: String(Int64(value)).utf8)
        } else {
            out.append(contentsOf: value.description.utf8)
        }
    }
}
