/// Human-readable summary printed by `strata config check`.
public enum ConfigSummary {
    public static func render(_ config: StrataConfiguration) -> String {
        var lines = ["config ok: listen \(config.listen), state_dir \(config.stateDirectory)"]
        lines.append("auth: \(config.auth.apiKeys.isEmpty ? "no API keys (open)" : "\(config.auth.apiKeys.count) API key(s)"), "
            + "admin \(config.auth.adminKey == nil ? (config.listen.isLoopback ? "open on loopback" : "closed") : "key set")")
        for device in config.devices {
            lines.append("device \(device.name) (\(device.kind.rawValue)): \(ConfigUnits.formatBytes(device.memoryBytes))")
        }
        for name in config.runtimes.keys.sorted() {
            lines.append("runtime \(name): \(config.runtimes[name]!.kindName)")
        }
        for model in config.models {
            switch model.serving {
            case .managed(let runtime, _, _):
                let ttl = model.ttl.map { "ttl \(Int($0.seconds))s" } ?? "no ttl"
                let flags = (model.pinned ? ", pinned" : "") + (model.preload ? ", preloaded" : "")
                let staging = model.stage ? "staged into RAM before start" : "opened in place"
                lines.append("model \(model.name): \(runtime) on \(model.device), \(ConfigUnits.formatBytes(model.memoryBytes))"
                    + "\(model.memoryDeclared ? "" : " (estimated)"), \(ttl)\(flags), weights \(model.source) (\(staging))")
            case .upstream(let runtime, let upstreamModel):
                lines.append("model \(model.name): upstream \(runtime)\(upstreamModel.map { " as \($0)" } ?? "")")
            case .replicas(let urls):
                lines.append("model \(model.name): \(urls.count) replica(s) \(urls.joined(separator: ", "))")
            }
        }
        return lines.joined(separator: "\n")
    }
}
