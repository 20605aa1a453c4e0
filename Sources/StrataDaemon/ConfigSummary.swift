import Foundation
import TierStore

/// Human-readable summary printed by `strata config check`.
public enum ConfigSummary {
    /// A source as messages show it: a URL without user info or query (credentials, signatures).
    static func shown(_ source: String) -> String {
        guard source.contains("://"), let location = try? RemoteLocation(parsing: source) else { return source }
        return location.description
    }

    public static func render(_ config: StrataConfiguration) -> String {
        var lines = ["config ok: listen \(config.listen), state_dir \(config.stateDirectory)"]
        lines.append("auth: \(config.auth.apiKeys.isEmpty ? "no API keys" : "\(config.auth.apiKeys.count) API key(s)")"
            + "\(config.requiresAPIKeys ? "" : " (open)"), "
            + "admin \(config.auth.adminKey == nil ? (config.listen.isLoopback ? "open on loopback" : "closed") : "key set")")
        for tenant in config.tenants {
            lines.append("tenant \(tenant.name): \(tenant.apiKeys.count) key(s) from \(tenant.apiKeysVariable), \(tenant.policy)")
        }
        for device in config.devices {
            lines.append("device \(device.name) (\(device.kind.rawValue)): \(ConfigUnits.formatBytes(device.memoryBytes))")
        }
        for name in config.runtimes.keys.sorted() {
            let substrate = config.runtimes[name]!.substrate
            let tags = substrate.tags.isEmpty ? "" : ", tags \(substrate.tags.sorted().joined(separator: " "))"
            let price = substrate.price.map { ", \($0.inputPerMillion)/\($0.outputPerMillion) per 1M tokens in/out" } ?? ""
            lines.append("runtime \(name): \(config.runtimes[name]!.kindName), \(substrate.latencyClass)\(tags)\(price)")
        }
        for model in config.models {
            switch model.serving {
            case .managed(let runtime, _, _):
                let ttl = model.ttl.map { "ttl \(Int($0.seconds))s" } ?? "no ttl"
                let flags = (model.pinned ? ", pinned" : "") + (model.preload ? ", preloaded" : "")
                let staging = model.stage ? "staged into RAM before start" : "opened in place"
                let rank = (model.priority != 0 ? ", priority \(model.priority)" : "")
                    + (model.minResidency > .zero ? ", stays at least \(Int(model.minResidency.seconds))s" : "")
                let replicas = model.replicaCount > 1
                    ? "\(model.replicaCount) replicas (\(model.placerNames.joined(separator: ", "))), each " : ""
                lines.append("model \(model.name): \(replicas)\(runtime) on \(model.device), \(ConfigUnits.formatBytes(model.memoryBytes))"
                    + "\(model.memoryEstimate.map { " (estimated: \($0))" } ?? "")"
                    + ", \(ttl)\(flags)\(rank), weights \(Self.shown(model.source)) (\(staging))")
            case .upstream(let runtime, let upstreamModel):
                lines.append("model \(model.name): upstream \(runtime)\(upstreamModel.map { " as \($0)" } ?? "")")
            case .replicas(let urls):
                lines.append("model \(model.name): \(urls.count) replica(s) \(urls.joined(separator: ", "))")
            }
        }
        for model in config.models where !model.fallbacks.isEmpty {
            let wait = model.spillAfter.map { " after \(Int(($0.seconds * 1000).rounded())) ms" } ?? " when it cannot serve"
            lines.append("  \(model.name) spills to \(model.fallbacks.joined(separator: ", "))\(wait) or when a policy forbids it"
                + " (tags \(config.substrateTags(of: model).sorted().joined(separator: " ")))")
        }
        lines += (missingExecutables(config) + weightsNotGGUF(config)).map { "warning: \($0)" }
        return lines.joined(separator: "\n")
    }

    /// Models on llama-server whose local weights file does not begin as a GGUF file does (a
    /// text or HTML file under a .gguf name, an empty one): not refused, since the file may be
    /// replaced before the model starts, but llama-server cannot load it as it is.
    public static func weightsNotGGUF(_ config: StrataConfiguration) -> [String] {
        config.models.compactMap { model in
            guard case .managed(let runtime, let path, _) = model.serving, !path.isEmpty,
                case .llamaServer = config.runtimes[runtime]?.kind,
                let handle = FileHandle(forReadingAtPath: path)
            else { return nil }
            defer { try? handle.close() }
            let head = (try? handle.read(upToCount: 4)) ?? Data()
            guard head != Data("GGUF".utf8) else { return nil }
            let shown = head.isEmpty ? "is empty" : "begins with \(head.map { String(format: "%02x", $0) }.joined(separator: " "))"
            return "models \(model.name): \(path) \(shown), not 'GGUF' (47 47 55 46): llama-server will not load it"
        }
    }

    /// Runtimes whose program is not there (yet): not an error, since it may be installed
    /// before a model needs it, but every start of a model on one fails until it is.
    public static func missingExecutables(_ config: StrataConfiguration) -> [String] {
        config.runtimes.keys.sorted().compactMap { name in
            guard let program = config.runtimes[name]!.executable, RuntimeProcess.resolveExecutable(program) == nil else {
                return nil
            }
            let models = config.models.filter {
                if case .managed(let runtime, _, _) = $0.serving { return runtime == name }
                return false
            }.map(\.name)
            return "runtimes.\(name): cannot find executable '\(program)' (not a file, or not on PATH); "
                + (models.isEmpty ? "no model uses it" : "\(models.joined(separator: ", ")) will fail to start until it is installed")
        }
    }
}
