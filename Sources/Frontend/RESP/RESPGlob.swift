/// Redis's glob matching (`stringmatchlen`), for SCAN MATCH. Backends implementing `scan` use it
/// so that patterns mean the same everywhere: `*` any run, `?` one byte, `[abc]`, `[^a]`, `[a-z]`,
/// and `\x` for a literal `x`. Byte-wise, case-sensitive.
public enum RESPGlob {
    public static func matches<P: Collection<UInt8>, S: Collection<UInt8>>(pattern: P, _ string: S) -> Bool {
        let p = Array(pattern), s = Array(string)
        var budget = 1_000_000  // pathological patterns ("a*a*a*...b") stop being matched, like Redis
        return match(p[...], s[...], budget: &budget)
    }

    private static func match(_ pattern: ArraySlice<UInt8>, _ string: ArraySlice<UInt8>, budget: inout Int) -> Bool {
        var p = pattern.startIndex, s = string.startIndex
        budget -= 1
        if budget < 0 { return false }
        while p < pattern.endIndex {
            switch pattern[p] {
            case UInt8(ascii: "*"):
                while p + 1 < pattern.endIndex && pattern[p + 1] == UInt8(ascii: "*") { p += 1 }
                if p + 1 == pattern.endIndex { return true }
                var start = s
                while start <= string.endIndex {
                    if match(pattern[(p + 1)...], string[start...], budget: &budget) { return true }
                    if budget < 0 { return false }
                    start += 1
                }
                return false
            case UInt8(ascii: "?"):
                guard s < string.endIndex else { return false }
                s += 1
            case UInt8(ascii: "["):
                guard s < string.endIndex else { return false }
                p += 1
                let negate = p < pattern.endIndex && pattern[p] == UInt8(ascii: "^")
                if negate { p += 1 }
                var matched = false
                while p < pattern.endIndex && pattern[p] != UInt8(ascii: "]") {
                    if pattern[p] == UInt8(ascii: "\\") && p + 1 < pattern.endIndex {
                        p += 1
                        if pattern[p] == string[s] { matched = true }
                    } else if p + 2 < pattern.endIndex && pattern[p + 1] == UInt8(ascii: "-") {
                        var lo = pattern[p], hi = pattern[p + 2]
                        if lo > hi { swap(&lo, &hi) }
                        if string[s] >= lo && string[s] <= hi { matched = true }
                        p += 2
                    } else if pattern[p] == string[s] {
                        matched = true
                    }
                    p += 1
                }
                // An unterminated class ends at the pattern's end, as in Redis.
                if negate { matched.toggle() }
                guard matched else { return false }
                s += 1
            case UInt8(ascii: "\\") where p + 1 < pattern.endIndex:
                p += 1
                guard s < string.endIndex, pattern[p] == string[s] else { return false }
                s += 1
            default:
                guard s < string.endIndex, pattern[p] == string[s] else { return false }
                s += 1
            }
            p += 1
        }
        return s == string.endIndex
    }
}
