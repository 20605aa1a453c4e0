import Foundation
import Frontend
import Yams

/// Placement policy in the config: what each runtime is (tags, price, latency class), where a
/// model may spill over to, its priority, and the tenants whose keys carry policies.
extension ConfigLoader {
    static let latencyClasses = ["interactive", "standard", "batch"]

    /// `tags`, `cost` and `latency_class` of a runtime (`runtimes.NAME`).
    static func substrate(_ reader: ConfigReader, _ map: [String: Node], at key: String) throws -> SubstrateSettings {
        var settings = SubstrateSettings()
        if let node = map["tags"] { settings.tags = try tags(reader, node, at: "\(key).tags") }
        if let node = map["latency_class"] {
            let value = try reader.string(node, at: "\(key).latency_class")
            guard latencyClasses.contains(value) else {
                throw reader.fail("\(key).latency_class", node,
                                  "'\(value)' is not a latency class (expected one of: \(latencyClasses.joined(separator: ", ")))")
            }
            settings.latencyClass = value
        }
        if let node = map["cost"] {
            let cost = try reader.mapping(node, at: "\(key).cost", allowed: ["input", "output"])
            func price(_ field: String) throws -> Double {
                guard let value = cost[field] else { return 0 }
                let text = try reader.string(value, at: "\(key).cost.\(field)")
                guard let number = Double(text), number.isFinite, number >= 0 else {
                    throw reader.fail("\(key).cost.\(field)", value, "'\(text)' is not a price (a number ≥ 0, per million tokens)")
                }
                return number
            }
            settings.price = TokenPrice(inputPerMillion: try price("input"), outputPerMillion: try price("output"))
        }
        return settings
    }

    /// A list of tags, each spelled as `SubstratePolicy.isValidTag` wants.
    static func tags(_ reader: ConfigReader, _ node: Node, at key: String) throws -> Set<String> {
        var result: Set<String> = []
        for (index, tag) in try reader.strings(node, at: key).enumerated() {
            guard SubstratePolicy.isValidTag(tag) else {
                throw reader.fail("\(key)[\(index)]", node,
                                  "'\(tag)' is not a tag (1–64 of a-z, 0-9, ':', '.', '_', '-', starting with a letter or digit, e.g. on-prem, sovereign:eu)")
            }
            result.insert(tag)
        }
        return result
    }

    /// A model's `tags`, `fallbacks`, `spill_after`, `priority` and `min_residency`.
    static func modelPolicy(_ reader: ConfigReader, _ map: [String: Node], at key: String, into model: inout ModelConfiguration,
                            runtimes: [String: RuntimeConfiguration]) throws {
        reader.each { if let node = map["tags"] { model.tags = try tags(reader, node, at: "\(key).tags") } }
        reader.each {
            if let node = map["fallbacks"] {
                model.fallbacks = try reader.strings(node, at: "\(key).fallbacks")
                guard Set(model.fallbacks).count == model.fallbacks.count else {
                    throw reader.fail("\(key).fallbacks", node, "names a model twice")
                }
            }
        }
        reader.each {
            if let node = map["spill_after"] {
                guard !model.fallbacks.isEmpty else {
                    throw reader.fail("\(key).spill_after", node, "only with 'fallbacks' (where a request spills over to)")
                }
                model.spillAfter = try reader.duration(node, at: "\(key).spill_after")
            }
        }
        let managed: Bool = if case .managed = model.serving { true } else { false }
        for field in ["priority", "min_residency"] where map[field] != nil && !managed {
            throw reader.fail("\(key).\(field)", map[field], "only for models whose runtime Strata starts")
        }
        reader.each { if let node = map["priority"] { model.priority = try reader.integer(node, at: "\(key).priority", range: -100...100) } }
        reader.each { if let node = map["min_residency"] { model.minResidency = try reader.duration(node, at: "\(key).min_residency") } }
        reader.each {
            if let node = map["kv_restore"] {
                model.kvRestore = try reader.bool(node, at: "\(key).kv_restore")
                var llama = false
                if case .managed(let runtime, _, _) = model.serving, case .llamaServer = runtimes[runtime]?.kind { llama = true }
                guard !model.kvRestore || (llama && model.replicaCount > 1) else {
                    throw reader.fail("\(key).kv_restore", node, "only for models on a llama-server runtime with replicas above 1")
                }
            }
        }
    }

    /// After every model is read: fallbacks name other models that exist.
    /// `items`: the models' entries as written, for the line of each one's `fallbacks`.
    static func checkFallbacks(_ reader: ConfigReader, _ models: [ModelConfiguration], _ node: Node?, items: [Node]) throws {
        let names = Set(models.map(\.name))
        for (index, model) in models.enumerated() {
            var node = node
            if index < items.count, case .mapping(let entry) = items[index] { node = entry["fallbacks"] ?? items[index] }
            for fallback in model.fallbacks {
                // (Each named: one wrong fallback does not hide another.)
                reader.each {
                    let key = "models[\(index)] (\(model.name)).fallbacks"
                    guard fallback != model.name else { throw reader.fail(key, node, "'\(fallback)' is the model itself") }
                    guard names.contains(fallback) else {
                        throw reader.fail(key, node, "unknown model '\(fallback)' (defined: \(names.sorted().joined(separator: ", ")))")
                    }
                }
            }
        }
    }

    /// `tenants`: a list of `{name, api_keys_env, require, forbid}`. Keys are read from the
    /// variable (separated by commas or spaces); a key may belong to one tenant only.
    static func tenants(_ reader: ConfigReader, _ node: Node?, auth: AuthConfiguration) throws -> [TenantConfiguration] {
        guard let node else { return [] }
        var tenants: [TenantConfiguration] = []
        var owner: [String: String] = Dictionary(uniqueKeysWithValues: auth.apiKeys.map { ($0, "auth.api_keys_env") })
        // Each tenant is checked even when one before it failed, so that a file's problems are
        // named together.
        for (index, item) in try reader.sequence(node, at: "tenants").enumerated() {
            reader.each {
                let key = "tenants[\(index)]"
                let map = try reader.mapping(item, at: key, allowed: ["name", "api_keys_env", "require", "forbid"])
                guard let nameNode = map["name"] else { throw reader.fail(key, item, "missing key 'name'") }
                let name = try reader.string(nameNode, at: "\(key).name")
                guard SubstratePolicy.isValidTag(name) else {
                    throw reader.fail("\(key).name", nameNode, "'\(name)' is not a tenant name (1–64 of a-z, 0-9, ':', '.', '_', '-')")
                }
                // (`default` is the tenant of auth.api_keys_env's keys and of RESP clients: a
                // tenant of that name would share their metrics and their block namespace.)
                guard name != "default" else {
                    throw reader.fail("\(key).name", nameNode,
                                      "'default' is the tenant of the keys in auth.api_keys_env (and of RESP clients): give this one another name")
                }
                guard !tenants.contains(where: { $0.name == name }) else {
                    throw reader.fail("\(key).name", nameNode, "tenant '\(name)' is defined twice")
                }
                guard let envNode = map["api_keys_env"] else {
                    throw reader.fail(key, item, "missing key 'api_keys_env' (the variable holding this tenant's API keys)")
                }
                let envName = try reader.string(envNode, at: "\(key).api_keys_env")
                let keys = Set((reader.environment[envName] ?? "").split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" })
                    .map(String.init))
                // A tenant without keys would leave its policy unenforced (and, alone, the gateway open).
                guard !keys.isEmpty else {
                    throw reader.fail("\(key).api_keys_env", envNode, "\(envName) holds no API keys (set it to the tenant's keys, separated by commas)")
                }
                for apiKey in keys {
                    if let other = owner[apiKey] {
                        throw reader.fail("\(key).api_keys_env", envNode, "a key in \(envName) is also a key of \(other); a key belongs to one tenant")
                    }
                }
                var policy = SubstratePolicy()
                if let v = map["require"] { policy.require = try tags(reader, v, at: "\(key).require") }
                if let v = map["forbid"] { policy.forbid = try tags(reader, v, at: "\(key).forbid") }
                if let both = policy.require.intersection(policy.forbid).first {
                    throw reader.fail(key, item, "tag '\(both)' is both required and forbidden")
                }
                for apiKey in keys { owner[apiKey] = key }
                tenants.append(TenantConfiguration(name: name, apiKeysVariable: envName, apiKeys: keys, policy: policy))
            }
        }
        return tenants
    }
}

/// What a runtime is, for placement policy.
public struct SubstrateSettings: Sendable, Equatable {
    public var tags: Set<String> = []
    /// Price per million tokens; nil: free (or not tracked).
    public var price: TokenPrice?
    /// interactive, standard or batch; also a tag `latency:CLASS` that policies can name.
    public var latencyClass = "standard"
}

public struct TenantConfiguration: Sendable, Equatable {
    public var name: String
    /// The variable the keys came from (for messages; the keys themselves are never printed).
    public var apiKeysVariable: String
    public var apiKeys: Set<String>
    public var policy: SubstratePolicy
}

extension StrataConfiguration {
    /// The tags of the substrate that serves `model`: its runtime's, its own, and
    /// `latency:CLASS`. Models with `upstreams` have only their own (and `latency:standard`).
    public func substrateTags(of model: ModelConfiguration) -> Set<String> {
        let runtime: RuntimeConfiguration? = switch model.serving {
        case .managed(let name, _, _), .upstream(let name, _): runtimes[name]
        case .replicas: nil
        }
        let settings = runtime?.substrate ?? SubstrateSettings()
        return settings.tags.union(model.tags).union(["latency:\(settings.latencyClass)"])
    }

    public func price(of model: ModelConfiguration) -> TokenPrice? {
        switch model.serving {
        case .managed(let name, _, _), .upstream(let name, _): runtimes[name]?.substrate.price
        case .replicas: nil
        }
    }

    /// API keys with their tenants: `auth.api_keys_env` keys as tenant `default` (no policy),
    /// then each tenant's keys. No key anywhere: requests need none and run as `anonymous`.
    public var accessControl: AccessControl {
        var keys: [String: Tenant] = Dictionary(uniqueKeysWithValues: auth.apiKeys.map { ($0, Tenant(name: "default")) })
        for tenant in tenants {
            for key in tenant.apiKeys { keys[key] = Tenant(name: tenant.name, policy: tenant.policy) }
        }
        return AccessControl(keys: keys)
    }

    /// Whether requests must carry an API key.
    public var requiresAPIKeys: Bool { !accessControl.keys.isEmpty }
}
