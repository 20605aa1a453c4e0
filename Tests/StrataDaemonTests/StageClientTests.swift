import Foundation
import Glibc
import Testing
import TierStore
@testable import StrataDaemon

/// `strata stage`'s client against a fake admin API (a named fake: the integration test in
/// test_staging.py runs the real daemon). Ctrl-C may land while any of the client's requests is
/// in flight; every such moment must end as a cancellation that also cancels the daemon's staging,
/// never as "cannot reach Strata".
struct StageClientTests {
    // No deadline of its own for the request to arrive: in the parallel suite this test has
    // waited close to a minute for a thread, and a wall-clock deadline expires during such a wait
    // whether or not the client is at fault. The time limit bounds a hang instead.
    @Test(.timeLimit(.minutes(3)), arguments: [FakeAdminServer.Hang.start, .poll, .pollBody])
    func cancellingWhileARequestIsInFlightCancelsTheStaging(hang: FakeAdminServer.Hang) async throws {
        let server = try FakeAdminServer(hang: hang)
        defer { server.stop() }
        let ended = ReadyFlag()   // set once the client's task has ended
        let task = Task {
            defer { ended.set(true) }
            return try await StageClient.run(baseURL: server.url, adminKey: nil, model: "m", destination: .host) { _, _ in }
        }
        // Cancel only once the request that never gets an answer has reached the server.
        while !server.hanging, !ended.value { try await Task.sleep(for: .milliseconds(10)) }
        #expect(server.hanging, "the client ended before sending the request that hangs")
        task.cancel()
        let outcome = await task.result
        switch outcome {
        case .success(let status): Issue.record("a cancelled staging returned \(status.state)")
        case .failure(let error): #expect(error is CancellationError, "cancelled, it threw \(error)")
        }
        #expect(server.requests.contains("DELETE /admin/staging/m"), "requests: \(server.requests)")
    }

    @Test func anUnreachableDaemonIsStillReportedAsSuch() async throws {
        let port = try FakeAdminServer.unusedPort()
        await #expect {
            _ = try await StageClient.run(baseURL: "http://127.0.0.1:\(port)", adminKey: nil, model: "m", destination: .host) { _, _ in }
        } throws: { error in
            String(describing: error).contains("cannot reach Strata at http://127.0.0.1:\(port)")
        }
    }
}

/// A fake of the daemon's admin API, on loopback: the start (POST) answers 202 with a running
/// staging, the poll (GET /admin/staging) answers one running staging, the cancel (DELETE)
/// answers 200; the request named by `hang` is read and never answered (or, `pollBody`, answered
/// with half its body). Records every request line ("METHOD /path").
final class FakeAdminServer: @unchecked Sendable {
    enum Hang: Sendable, CustomStringConvertible {
        /// The start is never answered; the poll is never answered; the poll's answer stops
        /// halfway through its body.
        case start, poll, pollBody
        var description: String { self == .start ? "start" : self == .poll ? "poll" : "poll's body" }
    }

    let url: String
    private let listener: Int32
    private let hang: Hang
    private let lock = NSLock()
    private var recorded: [String] = []
    private var held: [Int32] = []
    private var stopped = false

    var requests: [String] { lock.withLock { recorded } }
    var hanging: Bool { lock.withLock { !held.isEmpty } }

    init(hang: Hang) throws {
        self.hang = hang
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        listener = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            let code = POSIXErrorCode(rawValue: errno) ?? .EIO
            close(fd)
            throw POSIXError(code)
        }
        url = "http://127.0.0.1:\(UInt16(bigEndian: address.sin_port))"
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    static func unusedPort() throws -> Int {
        let server = try FakeAdminServer(hang: .start)
        server.stop()
        return Int(server.url.split(separator: ":").last!)!
    }

    func stop() {
        let fds = lock.withLock {
            stopped = true
            return held
        }
        // The accept loop closes the listener when accept fails: closed here, its number could be
        // reused by another test's socket before the loop's next accept.
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in fds { close(fd) }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                close(listener)
                return
            }
            if lock.withLock({ stopped }) {
                close(fd)
                continue
            }
            Thread.detachNewThread { [self] in serve(fd) }
        }
    }

    private func serve(_ fd: Int32) {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            guard let end = Self.headEnd(pending) else {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { close(fd); return }
                pending += buffer[0..<n]
                continue
            }
            let head = String(decoding: pending[0..<end], as: UTF8.self)
            let words = head.split(separator: "\r\n").first?.split(separator: " ") ?? []
            let line = words.count >= 2 ? "\(words[0]) \(words[1])" : head
            let length = head.split(separator: "\r\n").compactMap { field -> Int? in
                let parts = field.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                return Int(parts[1].trimmingCharacters(in: .whitespaces))
            }.first ?? 0
            while pending.count < end + 4 + length {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { close(fd); return }
                pending += buffer[0..<n]
            }
            pending.removeFirst(end + 4 + length)
            let hangsHere = (hang == .start && line.hasPrefix("POST "))
                || (hang != .start && line == "GET /admin/staging")
            if hangsHere && hang == .pollBody {
                let half = Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"staging\":[".utf8)
                if write(fd, half, half.count) != half.count { close(fd); return }
            }
            lock.withLock {
                recorded.append(line)
                if hangsHere { held.append(fd) }
            }
            if hangsHere { return }  // read, never (wholly) answered; closed by stop()
            let body: String
            let status: String
            if line.hasPrefix("DELETE ") {
                status = "200 OK"
                body = Self.running.replacingOccurrences(of: "\"running\"", with: "\"cancelled\"")
            } else if line.hasPrefix("POST ") {
                status = "202 Accepted"
                body = Self.running
            } else {
                status = "200 OK"
                body = "{\"staging\":[\(Self.running)]}"
            }
            let response = Array("HTTP/1.1 \(status)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
            if write(fd, response, response.count) != response.count { close(fd); return }
        }
    }

    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }

    private static let running = """
        {"name":"m","source":"http://origin/m.gguf","destination":"host","state":"running","bytes_done":0,\
        "bytes_total":1048576,"bytes_per_second":0,"elapsed_seconds":0.1}
        """
}
