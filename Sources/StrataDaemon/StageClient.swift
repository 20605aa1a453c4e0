import AsyncHTTPClient
import Foundation
import Frontend
import NIOCore
import TierStore

/// `strata stage MODEL`: asks a running daemon to stage a model's weights and shows the
/// progress until it is done. Interrupting the command cancels the staging (unless another
/// caller, such as a waiting request, still needs it).
public enum StageClient {
    public static func run(
        baseURL: String, adminKey: String?, model: String, destination: StageDestination,
        output: @escaping @Sendable (StageStatus, _ final: Bool) -> Void
    ) async throws -> StageStatus {
        let body = try JSONSerialization.data(withJSONObject: ["to": destination.rawValue])
        let interval: Duration = .milliseconds(250)
        var status: StageStatus
        do {
            // Cancelled while the start is in flight, the daemon may have begun: the DELETE below covers that too.
            status = try decode(try await AdminHTTP.call(
                baseURL, "POST", "/admin/models/\(model)/stage", adminKey: adminKey, body: body, expect: [202, 200]))
            while status.state == .running {
                output(status, false)
                try await Task.sleep(for: interval)
                let listed = try await AdminHTTP.call(baseURL, "GET", "/admin/staging", adminKey: adminKey, body: nil, expect: [200])
                let all = try JSONDecoder().decode(StagingList.self, from: listed).staging
                guard let current = all.first(where: { $0.name == model }) else {
                    throw AdminHTTP.Failure(message: "the daemon no longer lists a staging of '\(model)'")
                }
                status = current
            }
        } catch is CancellationError {
            // This task is cancelled, and so would be any request made from it: ask from a fresh one.
            _ = await Task.detached {
                try? await AdminHTTP.call(baseURL, "DELETE", "/admin/staging/\(model)", adminKey: adminKey, body: nil, expect: [200, 404])
            }.value
            throw CancellationError()
        }
        output(status, true)
        return status
    }

    /// One line a person reads: `smollm2 ← remote  412.0/2048.0 MiB  20%  950 MiB/s  ETA 2s`.
    public static func render(_ status: StageStatus) -> String {
        let done = Double(status.bytesDone) / 1_048_576
        let total = Double(status.bytesTotal) / 1_048_576
        let percent = status.bytesTotal > 0 ? Int(100 * Double(status.bytesDone) / Double(status.bytesTotal)) : 0
        let from = status.origin?.rawValue ?? "…"
        switch status.state {
        case .running:
            let eta = status.secondsLeft.map { String(format: "ETA %.0fs", $0) } ?? "ETA ?"
            return String(format: "%@ ← %@  %.1f/%.1f MiB  %3d%%  %.0f MiB/s  %@", status.name, from, done, total, percent,
                          status.bytesPerSecond / 1_048_576, eta)
        case .done:
            let rate = status.elapsedSeconds > 0 ? total / status.elapsedSeconds : 0
            return String(format: "%@ staged to %@ from %@: %.1f MiB in %.2fs (%.0f MiB/s)%@", status.name,
                          status.destination.rawValue, from, total, status.elapsedSeconds, rate,
                          status.path.map { " → \($0)" } ?? "")
        case .failed, .cancelled:
            return "\(status.name): staging \(status.state.rawValue): \(status.error ?? "no reason given")"
        }
    }

    struct StagingList: Decodable {
        var staging: [StageStatus]
    }

    static func decode(_ data: Data) throws -> StageStatus {
        try JSONDecoder().decode(StageStatus.self, from: data)
    }
}
