/// Parsing and printing of byte sizes and durations as written in the config file.
/// Why a size or duration could not be read.
public struct UnitError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

public enum ConfigUnits {
    static let sizeUnits: [(String, Double)] = [
        ("KiB", 1024), ("MiB", 1024 * 1024), ("GiB", 1024 * 1024 * 1024), ("TiB", 1024 * 1024 * 1024 * 1024),
        ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
    ]

    /// "400MiB", "8GiB", "1.5GB", "4096" (bytes). Single-letter units are refused as ambiguous.
    public static func parseSize(_ text: String) -> Result<UInt64, UnitError> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber || $0 == "." }
        let unit = trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces)
        guard let value = Double(digits), value >= 0 else {
            return .failure(UnitError("expected a size such as 400MiB, 8GiB or 1.5GB"))
        }
        let multiplier: Double
        if unit.isEmpty {
            multiplier = 1
        } else if let match = sizeUnits.first(where: { $0.0.lowercased() == unit.lowercased() }) {
            multiplier = match.1
        } else if ["k", "m", "g", "t"].contains(unit.lowercased()) {
            return .failure(UnitError("unit '\(unit)' is ambiguous: write \(unit.uppercased())iB (binary) or \(unit.uppercased())B (decimal)"))
        } else {
            return .failure(UnitError("unknown unit '\(unit)' (expected B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"))
        }
        let bytes = value * multiplier
        guard bytes < 1.8e19 else { return .failure(UnitError("size is too large")) }
        return .success(UInt64(bytes.rounded()))
    }

    /// "500ms", "30s", "15m", "1h", "1h30m".
    public static func parseDuration(_ text: String) -> Result<Duration, UnitError> {
        let expected = "expected a duration such as 500ms, 30s, 15m or 1h"
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        guard !rest.isEmpty else { return .failure(UnitError(expected)) }
        var total = Duration.zero
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isNumber || $0 == "." }
            guard let value = Double(digits) else { return .failure(UnitError(expected)) }
            rest = rest.dropFirst(digits.count)
            let unit = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(unit.count)
            let seconds: Double
            switch unit {
            case "ms": seconds = value / 1000
            case "s": seconds = value
            case "m": seconds = value * 60
            case "h": seconds = value * 3600
            case "d": seconds = value * 86400
            default: return .failure(UnitError(expected))
            }
            total += .milliseconds(Int64((seconds * 1000).rounded()))
        }
        return .success(total)
    }

    public static func formatBytes(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes)B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded))\(units[index])" : "\(rounded)\(units[index])"
    }
}

import Foundation
