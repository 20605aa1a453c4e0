import NIOConcurrencyHelpers

/// Where a request may run: tags a substrate (a runtime Strata starts, or an upstream such as a
/// provider API) must carry, and tags it must not. A tenant's policy comes from the config; a
/// request can only narrow it (its headers add requirements and prohibitions, never remove one).
public struct SubstratePolicy: Sendable, Equatable, CustomStringConvertible {
    public var require: Set<String>
    public var forbid: Set<String>

    public init(require: Set<String> = [], forbid: Set<String> = []) {
        self.require = require
        self.forbid = forbid
    }

    public var isEmpty: Bool { require.isEmpty && forbid.isEmpty }

    /// Why a substrate with `tags` is out of bounds, or nil if it may serve.
    public func violation(by tags: Set<String>) -> String? {
        let missing = require.subtracting(tags).sorted()
        let forbidden = forbid.intersection(tags).sorted()
        var reasons: [String] = []
        if !forbidden.isEmpty { reasons.append("carries forbidden tag\(forbidden.count > 1 ? "s" : "") \(forbidden.joined(separator: ", "))") }
        if !missing.isEmpty { reasons.append("lacks required tag\(missing.count > 1 ? "s" : "") \(missing.joined(separator: ", "))") }
        return reasons.isEmpty ? nil : reasons.joined(separator: " and ")
    }

    /// Whether a substrate with `tags` may serve (as `violation(by:) == nil`, without building
    /// the explanation: asked on every routed request).
    public func admits(_ tags: Set<String>) -> Bool {
        isEmpty || (require.isSubset(of: tags) && forbid.isDisjoint(with: tags))
    }

    /// Both policies at once: every requirement and every prohibition of either.
    public func narrowed(by other: SubstratePolicy) -> SubstratePolicy {
        SubstratePolicy(require: require.union(other.require), forbid: forbid.union(other.forbid))
    }

    public var description: String {
        var parts: [String] = []
        if !require.isEmpty { parts.append("requires \(require.sorted().joined(separator: ", "))") }
        if !forbid.isEmpty { parts.append("forbids \(forbid.sorted().joined(separator: ", "))") }
        return parts.isEmpty ? "no constraints" : parts.joined(separator: "; ")
    }

    /// Whether `tag` is spelled as tags must be: 1–64 of a-z, 0-9, and `: . _ -`, starting with
    /// a letter or digit (`on-prem`, `sovereign:eu`, `provider`, `latency:batch`).
    public static func isValidTag(_ tag: some StringProtocol) -> Bool {
        guard (1...64).contains(tag.utf8.count), let first = tag.utf8.first,
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first)
        else { return false }
        return tag.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: ":") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: "-")
        }
    }

    /// Tags from a header value: separated by commas and/or spaces. Nil names the first bad tag.
    static func parseTagList(_ value: String) -> Result<Set<String>, TagError> {
        var tags: Set<String> = []
        for piece in value.split(whereSeparator: { $0 == "," || $0 == " " }) {
            let tag = piece.lowercased()
            guard isValidTag(tag) else { return .failure(TagError(tag: String(piece))) }
            tags.insert(tag)
        }
        return .success(tags)
    }

    struct TagError: Error { var tag: String }
}

/// Who is calling: the tenant an API key belongs to, and what that tenant may run on.
public struct Tenant: Sendable, Equatable {
    public var name: String
    public var policy: SubstratePolicy

    public init(name: String, policy: SubstratePolicy = SubstratePolicy()) {
        self.name = name
        self.policy = policy
    }
}

/// Which API keys are accepted and whose they are. Replaced whole on a config reload.
public struct AccessControl: Sendable, Equatable {
    /// API key → tenant. Empty: no key is needed and every request runs as `anonymous`.
    public var keys: [String: Tenant]
    /// Policy of requests that need no key (when `keys` is empty).
    public var anonymous: Tenant

    public init(keys: [String: Tenant] = [:], anonymous: Tenant = Tenant(name: "anonymous")) {
        self.keys = keys
        self.anonymous = anonymous
    }

    /// Plain API keys with no tenant policy (the `auth.api_keys_env` keys).
    public init(apiKeys: Set<String>) {
        self.init(keys: Dictionary(uniqueKeysWithValues: apiKeys.map { ($0, Tenant(name: "default")) }))
    }
}

/// The gateway's access control, swappable while requests run (config reload).
public final class AccessControlBox: Sendable {
    private let box: NIOLockedValueBox<AccessControl>

    public init(_ access: AccessControl) { box = NIOLockedValueBox(access) }

    public var current: AccessControl { box.withLockedValue { $0 } }

    public func replace(with access: AccessControl) { box.withLockedValue { $0 = access } }
}
