/// A configuration problem: where it is, what was found, what was expected.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var key: String
    public var line: Int?
    public var message: String

    public var description: String {
        let location = line.map { " (line \($0))" } ?? ""
        return key.isEmpty ? "config: \(message)\(location)" : "config: \(key)\(location): \(message)"
    }
}
