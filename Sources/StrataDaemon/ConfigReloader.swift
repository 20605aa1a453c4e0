import Foundation
import Frontend
import Logging
import Metrics
import ServiceLifecycle
import UnixSignals

/// Re-reads the config file on SIGHUP and `POST /admin/reload`. A file that does not load is
/// rejected with the reason and the running configuration is kept whole; a valid one is
/// applied to the models, budgets and Placer settings, and to API keys and tenants. Sections
/// that cannot change while running (listen address, tiers, kv, gateway limits…) are named in
/// the answer as needing a restart; the rest of the file still applies.
public actor ConfigReloader {
    let path: String?
    let environment: @Sendable () -> [String: String]
    let controller: ModelController
    let access: AccessControlBox
    let logger: Logger
    private(set) var running: StrataConfiguration
    /// The config the daemon started with: the sections a reload cannot change are still as it has them.
    let started: StrataConfiguration
    private(set) var reloads = 0

    init(path: String?, running: StrataConfiguration, controller: ModelController, access: AccessControlBox, logger: Logger,
         environment: @escaping @Sendable () -> [String: String] = { ProcessInfo.processInfo.environment }) {
        self.path = path
        self.running = running
        self.started = running
        self.controller = controller
        self.access = access
        self.logger = logger
        self.environment = environment
    }

    /// Loads the file again and applies it; the answer (JSON) says what changed. Throws a 400
    /// `invalid_config` naming the key and the reason when the file does not load.
    public func reload(trigger: String) async throws -> ReloadReport {
        guard let path else {
            throw GatewayError.badRequest("Strata was started without a config file; there is nothing to reload", code: "no_config_file")
        }
        let new: StrataConfiguration
        do {
            new = try ConfigLoader.load(path: path, environment: environment(), gpus: running.gpuDiscovery)
        } catch {
            logger.error("config reload rejected; the running configuration is kept", metadata: [
                "trigger": "\(trigger)", "file": "\(path)", "error": "\(error)"])
            Counter(label: "strata_config_reloads_total", dimensions: [("result", "rejected")]).increment()
            throw GatewayError.badRequest("The config in \(path) was rejected and the running one is kept: \(error)",
                                          code: "invalid_config")
        }
        // A file with no `models` section at all (half written, or the wrong file) would remove
        // every model: that takes saying so, `models: []`.
        if !running.models.isEmpty, !new.hasModelsSection {
            logger.error("config reload rejected: no models section; the running configuration is kept", metadata: [
                "trigger": "\(trigger)", "file": "\(path)"])
            Counter(label: "strata_config_reloads_total", dimensions: [("result", "rejected")]).increment()
            throw GatewayError.badRequest(
                "The config in \(path) has no models section, which would remove all \(running.models.count) models; the running "
                    + "one is kept (to remove every model, write `models: []`)", code: "invalid_config")
        }
        var report = await controller.reconfigure(to: new)
        // Against what runs, not the file before: a section edited and then put back needs nothing.
        report.needs_restart = ModelController.sectionsNeedingRestart(old: started, new: new)
        access.replace(with: new.accessControl)
        running = new
        reloads += 1
        Counter(label: "strata_config_reloads_total", dimensions: [("result", "applied")]).increment()
        logger.notice("config reloaded", metadata: [
            "trigger": "\(trigger)", "file": "\(path)", "added": "\(report.added)", "removed": "\(report.removed)",
            "restarted": "\(report.restarted)", "changed": "\(report.changed)",
            "needs_restart": "\(report.needs_restart)", "devices": "\(report.devices)"])
        return report
    }

    /// `reload` as JSON, for the admin endpoint.
    public func reloadJSON(trigger: String) async throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(try await reload(trigger: trigger))
    }
}

/// Reloads the config on every SIGHUP until graceful shutdown.
struct ReloadOnHangUp: Service {
    let reloader: ConfigReloader

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                _ = try? await reloader.reload(trigger: "SIGHUP")
            }
        }
    }
}
