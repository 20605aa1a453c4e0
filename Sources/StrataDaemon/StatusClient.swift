import AsyncHTTPClient
import Foundation
import Frontend
import NIOCore

/// `strata status`: asks a running daemon for its models and prints a table.
public enum StatusClient {
    public static func fetch(baseURL: String, adminKey: String?, json: Bool) async throws -> String {
        let body = try await AdminHTTP.call(baseURL, "GET", "/admin/models", adminKey: adminKey, body: nil, expect: [200],
                                              timeout: .seconds(5))
        if json { return String(decoding: body, as: UTF8.self) }
        return render(try JSONDecoder().decode(AdminStatus.self, from: body))
    }

    /// The table, then the replicas of models that have them, then the devices, then each
    /// model's last error (a failure's reason runs long, and would make a column as wide as itself).
    static func render(_ status: AdminStatus) -> String {
        var rows = [["MODEL", "STATUS", "PHASE", "IN-FLIGHT", "WAITING", "LOADS", "MEMORY", "UPSTREAM"]]
        var details: [String] = []
        for model in status.models {
            var phase = model.phase
            if let error = model.last_error {
                details.append("\(model.name) (\(phase)): \(error)")
                phase = String(phase.prefix { $0 != "," && $0 != ":" }) + " (below)"
            }
            rows.append([
                model.name, model.status, phase, String(model.in_flight), String(model.waiting), String(model.loads),
                model.memory_bytes.map(ConfigUnits.formatBytes) ?? "-", model.upstream ?? "-",
            ])
        }
        var lines = table(rows)
        // Replicas' routing state: which are up, ejected or not running, and their load.
        var replicaRows = [["REPLICA", "OF", "STATE", "IN-FLIGHT", "QUEUED-BLOCKS", "INDEX-BLOCKS", "FAILURES"]]
        for model in status.models {
            for replica in model.replicas ?? [] {
                let state = !replica.running ? "not running" : replica.healthy ? "up" : "ejected"
                replicaRows.append([
                    replica.url, replica.url == model.name ? ModelConfiguration.modelName(ofPlacerName: model.name) : model.name, state,
                    String(replica.in_flight), String(replica.queued_blocks), String(replica.index_blocks),
                    String(replica.consecutive_failures),
                ])
            }
        }
        if replicaRows.count > 1 { lines += [""] + table(replicaRows) + [""] }
        for device in status.devices {
            lines.append("device \(device.name): \(ConfigUnits.formatBytes(device.used_bytes)) of \(ConfigUnits.formatBytes(device.budget_bytes)) in use")
        }
        return (lines + details).joined(separator: "\n")
    }

    static func table(_ rows: [[String]]) -> [String] {
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
    }
}
