import Frontend
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization

/// The models a request can be handed to without waiting on the controller, as of the last
/// config (re)load: upstreams and sets of upstream replicas, with the tags their policy check
/// needs and their price. Read through `ImmediateRoutesBox` by `ModelController.acquireImmediately`.
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

/// The immediate routes, read by every request relayed on an event loop (three times) and
/// written only when the config, the replica sets or shutdown change. Each thread keeps its own
/// copy and takes the lock only when the generation has moved: under a burst the two event
/// loops no longer queue on one mutex (a contended `pthread_mutex` sleeps in `futex`, and the
/// loop's other requests wait behind it).
final class ImmediateRoutesBox: Sendable {
    private let routes: NIOLockedValueBox<ImmediateRoutes>
    private let generation = Atomic<Int>(0)
    private let copies = ThreadSpecificVariable<Copy>()

    private final class Copy: @unchecked Sendable {   // read and written by its own thread only
        let generation: Int
        let routes: ImmediateRoutes
        init(generation: Int, routes: ImmediateRoutes) {
            self.generation = generation
            self.routes = routes
        }
    }

    init(_ routes: ImmediateRoutes) {
        self.routes = NIOLockedValueBox(routes)
    }

    func publish(_ new: ImmediateRoutes) {
        routes.withLockedValue { $0 = new }
        generation.add(1, ordering: .releasing)
    }

    /// The routes as last published. (A copy read while a new one is published may already be
    /// the new one; it is read again at the next call, which sees the new generation.)
    var current: ImmediateRoutes {
        let now = generation.load(ordering: .acquiring)
        if let copy = copies.currentValue, copy.generation == now { return copy.routes }
        let latest = routes.withLockedValue { $0 }
        copies.currentValue = Copy(generation: now, routes: latest)
        return latest
    }
}
