/// A configuration problem: where it is, what was found, what was expected.
///
/// The loader checks every section of a file even after one fails, so a file with several
/// problems names them all at once, in file order: the first is this error's `key`, `line` and
/// `message`, the ones after it are in `others`.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var key: String
    public var line: Int?
    public var message: String
    /// Further problems found in the same file after this one.
    public var others: [ConfigError] = []

    /// Every problem, this one first, each on its own (no `others`).
    public var all: [ConfigError] {
        var first = self
        first.others = []
        return [first] + others
    }

    /// This problem alone: `config: KEY (line N): MESSAGE`, or `config: line N: MESSAGE` for one
    /// of the file as a whole (its YAML syntax).
    public var headline: String {
        guard !key.isEmpty else { return "config: " + (line.map { "line \($0): " } ?? "") + message }
        return "config: \(key)\(line.map { " (line \($0))" } ?? ""): \(message)"
    }

    public var description: String { all.map(\.headline).joined(separator: "; ") }

    /// One line per problem, each as `PREFIX: config: KEY (line N): MESSAGE`, for a terminal.
    public func report(prefix: String) -> String {
        all.map { "\(prefix): \($0.headline)\n" }.joined()
    }
}

extension ConfigError {
    /// The first of `problems` with the rest as its `others`; nil for none. (In an extension, so
    /// the memberwise initializer stays.)
    init?(all problems: [ConfigError]) {
        guard let first = problems.first else { return nil }
        self = first
        others = Array(problems.dropFirst())
    }
}
