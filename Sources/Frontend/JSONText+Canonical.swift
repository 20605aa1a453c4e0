/// A canonical byte form of validated JSON values, for hashing what a prompt holds beyond its
/// text (tools, structured content parts): equal values give equal bytes however the client
/// spelled them, and the same bytes whether they come from the client's text or from
/// Foundation's objects written back. Object members are ordered by their keys' UTF-8 (of a key
/// given twice, the last counts, as for Foundation), whitespace goes, strings are written with
/// the fewest escapes (`"`, `\` and control characters only), numbers as the `Double` they
/// denote (integers within 2^53 without a fraction: `1.0`, `1e0` and `1` are one number).
///
/// Foundation's `.sortedKeys` gave the same guarantee at about 200 µs per tool definition on
/// these machines (it orders keys by a locale-aware comparison); this is one pass over text the
/// gateway has already validated.
extension JSONText {
    func appendCanonical(_ value: Span, to out: inout [UInt8]) {
        switch kind(value) {
        case .object:
            var members: [(key: [UInt8], value: Span)] = []
            forEachMember(of: value) { key, value in
                var decoded: [UInt8] = []
                appendString(key, to: &decoded)
                members.append((decoded, value))
                return true
            }
            // Equal keys by position (Swift's sort is not stable), so that the last one is kept.
            let order = members.indices.sorted { a, b in
                members[a].key == members[b].key ? a < b : members[a].key.lexicographicallyPrecedes(members[b].key)
            }
            out.append(UInt8(ascii: "{"))
            var first = true
            for (n, index) in order.enumerated() {
                if n + 1 < order.count, members[order[n + 1]].key == members[index].key { continue }
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                appendJSONString(utf8: members[index].key, to: &out)
                out.append(UInt8(ascii: ":"))
                appendCanonical(members[index].value, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array:
            out.append(UInt8(ascii: "["))
            var first = true
            forEachElement(of: value) { element in
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                appendCanonical(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .string:
            if hasEscape(value) {
                var decoded: [UInt8] = []
                appendString(value, to: &decoded)
                appendJSONString(utf8: decoded, to: &out)
            } else {
                // Valid text without an escape holds no quote, backslash or control byte: it
                // is already in canonical form.
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[value.start..<value.end]))
            }
        case .number:
            let number = double(value) ?? 0   // validated: always finite
            if number == number.rounded(), abs(number) < 0x1p53 {
                out.append(contentsOf: String(Int64(number)).utf8)
            } else {
                out.append(contentsOf: number.description.utf8)
            }
        case .bool, .null:
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[value.start..<value.end]))
        }
    }
}
