import AsyncHTTPClient
import Foundation
import Frontend
import NIOCore

/// One request from a command-line client (`strata status`, `strata stage`) to a running
/// daemon's admin API: the body on an expected status, else an error with the daemon's message.
enum AdminHTTP {
    static func call(_ base: String, _ method: String, _ path: String, adminKey: String?, body: Data?, expect: Set<UInt>,
                     timeout: TimeAmount = .seconds(10)) async throws -> Data
    {
        // `--url localhost:8080` means http://: a URL without a scheme is not refused for it.
        let base = base.contains("://") ? base : "http://" + base
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method)
        if let adminKey { request.headers.add(name: "Authorization", value: "Bearer \(adminKey)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: timeout)
        } catch {
            if isCancellation(error) { throw CancellationError() }
            let hint = (error as? IOError)?.errnoCode == ECONNREFUSED
                ? " (is `strata serve` running, with this `listen` address?)" : ""
            throw Failure(message: "cannot reach Strata at \(base): \(describe(error))\(hint)")
        }
        let data: Data
        do {
            data = Data((try await response.body.collect(upTo: 16 << 20)).readableBytesView)
        } catch where isCancellation(error) {
            throw CancellationError()
        }
        guard expect.contains(response.status.code) else {
            let message = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])
                .flatMap { $0["error"] as? [String: Any] }.flatMap { $0["message"] as? String }
            // Where the admin key goes: the daemon's answer says what it wants, not where this client reads it from.
            let hint = response.status.code == 401 || response.status.code == 403
                ? (adminKey == nil ? " (set STRATA_ADMIN_KEY to the daemon's admin key)" : " (check STRATA_ADMIN_KEY)") : ""
            throw Failure(message: "\(method) \(path): \(response.status.code) \(message ?? String(decoding: data, as: UTF8.self))\(hint)")
        }
        return data
    }

    /// A cancelled caller (Ctrl-C in `strata stage`), whatever the client threw: not an
    /// unreachable daemon or a broken answer.
    private static func isCancellation(_ error: any Error) -> Bool {
        error is CancellationError || Task.isCancelled
    }

    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}
