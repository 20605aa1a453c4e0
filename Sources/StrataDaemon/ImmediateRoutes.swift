import Frontend

/// The models a request can be handed to without waiting on the controller, as of the last
/// config (re)load: upstreams and sets of upstream replicas, with the tags their policy check
/// needs and their price. Read under a lock by `ModelController.acquireImmediately`.
struct ImmediateRoutes: Sendable {
    enum Target: Sendable {
        case upstream(url: String, headers: [(String, String)], upstreamModel: String?, label: String)
        case replicas(ReplicaSet)
    }
    struct Route: Sendable {
        var target: Target
        var tags: Set<String>
        var price: TokenPrice?
    }
    var routes: [String: Route] = [:]
    /// Every model routed by its prompt (also managed replica sets, which have no route here).
    var replicaSets: [String: ReplicaSet]
    var shuttingDown: Bool

    init(config: StrataConfiguration, replicaSets: [String: ReplicaSet], shuttingDown: Bool) {
        self.replicaSets = replicaSets
        self.shuttingDown = shuttingDown
        for model in config.models {
            let target: Target
            switch model.serving {
            case .upstream(let runtime, let upstreamModel):
                guard let (url, headers) = config.upstream(runtime) else { continue }
                target = .upstream(url: url, headers: headers, upstreamModel: upstreamModel, label: runtime)
            case .replicas:
                guard let set = replicaSets[model.name] else { continue }
                target = .replicas(set)
            case .managed:
                continue
            }
            routes[model.name] = Route(target: target, tags: config.substrateTags(of: model), price: config.price(of: model))
        }
    }
}

extension StrataConfiguration {
    /// The base URL and request headers of an `upstream` runtime; nil for another kind.
    func upstream(_ runtimeName: String) -> (url: String, headers: [(String, String)])? {
        guard let runtime = runtimes[runtimeName], case .upstream(let url, let apiKey) = runtime.kind else { return nil }
        return (url, apiKey.map { [("Authorization", "Bearer \($0)")] } ?? [])
    }
}
