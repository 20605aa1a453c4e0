import Foundation
import Yams

/// Walks a YAML tree with the key path at hand, so every error names the key, the value and
/// what was expected. Expands `${VAR}` / `${VAR:-default}` from the environment (names in
/// `placeholders` are left for the supervisor) and a leading `~` in paths.
struct ConfigReader {
    var environment: [String: String]
    var placeholders: Set<String> = ["PORT", "HOST", "MODEL_PATH", "MODEL_NAME"]
    /// Problems noted while reading goes on (`note`, `each`, unknown keys), so that a file's
    /// problems are named together; the loader adds them to those its sections threw.
    let noted = Noted()

    final class Noted {
        var problems: [ConfigError] = []
    }

    func fail(_ key: String, _ node: Node?, _ message: String) -> ConfigError {
        ConfigError(key: key, line: node?.mark.map { $0.line }, message: message)
    }

    func note(_ problem: ConfigError) { noted.problems += problem.all }

    /// Runs the check of one key, noting its problem (and going on) instead of throwing it:
    /// for keys nothing after them depends on. False if it failed.
    @discardableResult
    func each(_ check: () throws -> Void) -> Bool {
        do {
            try check()
            return true
        } catch let problem as ConfigError {
            note(problem)
        } catch {
            note(ConfigError(key: "", line: nil, message: "\(error)"))
        }
        return false
    }

    /// A mapping's keys that are in `allowed`. An unknown or repeated key is noted, not thrown:
    /// the known keys are still read, so a typo does not hide the file's other problems.
    /// `extensions`: keys starting `x-` are let through unread (a place for YAML anchors, as in
    /// Compose files). A merge key (`<<: *defaults`, or a list of such) brings in the keys of
    /// the mappings it names that this one does not set (YAML 1.1's merge, as PyYAML and Compose
    /// read it).
    func mapping(_ node: Node, at key: String, allowed: [String], extensions: Bool = false) throws -> [String: Node] {
        guard case .mapping(let mapping) = node else {
            throw fail(key, node, "expected a mapping with keys \(allowed.joined(separator: ", ")), found \(describe(node))")
        }
        var result: [String: Node] = [:]
        var merged: [(Node, Node)] = []
        for (keyNode, value) in mapping where keyNode.string == "<<" {
            guard let pairs = Self.mergedPairs(value) else {
                note(fail(key.isEmpty ? "<<" : "\(key).<<", keyNode,
                          "a merge key takes a mapping or a list of mappings (an alias such as *defaults), found \(describe(value))"))
                continue
            }
            merged += pairs
        }
        let own = mapping.filter { $0.key.string != "<<" }
        let ownNames = Set(own.compactMap { $0.key.string })
        var seenMerged: Set<String> = []
        let pairs = Array(own) + merged.filter { name, _ in
            guard let text = name.string, !ownNames.contains(text), !seenMerged.contains(text) else { return false }
            seenMerged.insert(text)
            return true
        }
        for (keyNode, value) in pairs {
            let name = keyNode.string ?? ""
            let path = key.isEmpty ? name : "\(key).\(name)"
            if extensions && name.hasPrefix("x-") { continue }
            guard allowed.contains(name) else {
                note(fail(path, keyNode, "unknown key '\(name)' (expected one of: \(allowed.joined(separator: ", ")))"))
                continue
            }
            guard result[name] == nil else {
                note(fail(path, keyNode, "key appears twice"))
                continue
            }
            result[name] = value
        }
        return result
    }

    /// The pairs a merge key's value brings, in precedence order: each mapping's own keys, then
    /// those of its own merge key; of a list, the first mapping's before the next's. Nil when
    /// it is neither a mapping nor a list of mappings.
    static func mergedPairs(_ value: Node, depth: Int = 0) -> [(Node, Node)]? {
        guard depth < 16 else { return nil }
        let sources: [Node]
        switch value {
        case .mapping: sources = [value]
        case .sequence(let list): sources = Array(list)
        default: return nil
        }
        var pairs: [(Node, Node)] = []
        for source in sources {
            guard case .mapping(let mapping) = source else { return nil }
            pairs += mapping.filter { $0.key.string != "<<" }.map { ($0.key, $0.value) }
            for (keyNode, nested) in mapping where keyNode.string == "<<" {
                guard let deeper = mergedPairs(nested, depth: depth + 1) else { return nil }
                pairs += deeper
            }
        }
        return pairs
    }

    func sequence(_ node: Node, at key: String) throws -> [Node] {
        guard case .sequence(let sequence) = node else {
            throw fail(key, node, "expected a list, found \(describe(node))")
        }
        return Array(sequence)
    }

    func string(_ node: Node, at key: String) throws -> String {
        guard case .scalar(let scalar) = node else {
            throw fail(key, node, "expected a string, found \(describe(node))")
        }
        return try expand(scalar.string, at: key, node: node)
    }

    func strings(_ node: Node, at key: String) throws -> [String] {
        try sequence(node, at: key).enumerated().map { try string($1, at: "\(key)[\($0)]") }
    }

    func path(_ node: Node, at key: String) throws -> String {
        let value = try string(node, at: key)
        guard !value.isEmpty else { throw fail(key, node, "expected a path, found an empty string") }
        return expandTilde(value)
    }

    func expandTilde(_ value: String) -> String {
        guard value == "~" || value.hasPrefix("~/") else { return value }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + value.dropFirst()
    }

    func bool(_ node: Node, at key: String) throws -> Bool {
        switch try string(node, at: key).lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        case let other: throw fail(key, node, "'\(other)' is not a boolean (expected true or false)")
        }
    }

    func integer(_ node: Node, at key: String, range: ClosedRange<Int>) throws -> Int {
        let text = try string(node, at: key)
        guard let value = Int(text), range.contains(value) else {
            throw fail(key, node, "'\(text)' is not an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    func size(_ node: Node, at key: String) throws -> UInt64 {
        let text = try string(node, at: key)
        switch ConfigUnits.parseSize(text) {
        case .success(let bytes) where bytes > 0 && text.trimmingCharacters(in: .whitespaces).allSatisfy({ $0.isNumber || $0 == "." }):
            // A bare number would be bytes, which a memory or a budget never is meant to be.
            throw fail(key, node, "'\(text)' has no unit: write a size such as 400MiB or 8GiB (or \(text)B for bytes)")
        case .success(let bytes): return bytes
        case .failure(let why): throw fail(key, node, "'\(text)' is not a size: \(why)")
        }
    }

    /// A size within `range`; `expected` names the range in the error ("1MiB to 64GiB").
    func size(_ node: Node, at key: String, range: ClosedRange<UInt64>, expected: String) throws -> UInt64 {
        let bytes = try size(node, at: key)
        guard range.contains(bytes) else { throw fail(key, node, "\(bytes) bytes is out of range (expected \(expected))") }
        return bytes
    }

    /// `orZero`: 0 is allowed too (it means off, for the key's description to say).
    func duration(_ node: Node, at key: String, orZero: Bool = false) throws -> Duration {
        let text = try string(node, at: key)
        switch ConfigUnits.parseDuration(text) {
        case .success(let duration) where duration > .zero || (orZero && duration == .zero): return duration
        case .success: throw fail(key, node, "'\(text)' must be longer than zero")
        case .failure(let why): throw fail(key, node, "'\(text)' is not a duration: \(why)")
        }
    }

    /// Replaces `${NAME}` and `${NAME:-default}` with environment values.
    func expand(_ text: String, at key: String, node: Node?) throws -> String {
        guard text.contains("${") else { return text }
        var output = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${") {
            output += rest[..<start.lowerBound]
            guard let end = rest[start.upperBound...].firstIndex(of: "}") else {
                throw fail(key, node, "'\(text)' has an unclosed ${")
            }
            let body = rest[start.upperBound..<end]
            let name: Substring
            let fallback: Substring?
            if let sep = body.range(of: ":-") {
                name = body[..<sep.lowerBound]
                fallback = body[sep.upperBound...]
            } else {
                name = body
                fallback = nil
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw fail(key, node, "'${\(body)}' is not a valid variable reference (expected ${NAME} or ${NAME:-default})")
            }
            if placeholders.contains(String(name)) && fallback == nil {
                output += "${\(name)}"
            } else if let value = environment[String(name)], !value.isEmpty {
                output += value
            } else if let fallback {
                output += fallback
            } else {
                throw fail(key, node, "environment variable \(name) is not set (write ${\(name):-default} for a default)")
            }
            rest = rest[rest.index(after: end)...]
        }
        return output + rest
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): "'\(scalar.string)'"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }
}
