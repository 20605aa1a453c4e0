import Foundation
import NIOPosix
import Testing
@testable import Frontend

#if canImport(Glibc)
import Glibc
#endif

/// Client connections that sit idle are closed after `clientIdleTimeout`; one waiting for its
/// answer is not idle, on the event-loop relay or the general path.
struct ClientIdleTests {
    static let idle = GatewayConfiguration(cancelOnDisconnect: false, clientIdleTimeout: .milliseconds(300))

    /// Connects, sends `send`, reads until the server closes (or 10 s): what came and when it closed.
    static func untilClosed(port: Int, send: String) async throws -> (received: String, seconds: Double) {
        try await NIOThreadPool.singleton.runIfActive {
            let fd = try RawClient.connect(port: port)
            defer { close(fd) }
            let started = ContinuousClock.now
            let bytes = Array(send.utf8)
            if !bytes.isEmpty { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) } }
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n == 0 { break }   // closed by the server
                guard n > 0 else { throw POSIXError(.ETIMEDOUT) }   // still open after 10 s
                received += buffer[0..<n]
            }
            let elapsed = ContinuousClock.now - started
            return (String(decoding: received, as: UTF8.self), Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        }
    }

    static func request(_ body: String) -> String {
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    @Test func aConnectionThatSendsNothingOrStopsMidRequestIsClosed() async throws {
        try await GatewayTests.withGateway(Self.idle, immediate: true) { client, _ in
            let silent = try await Self.untilClosed(port: client.port!, send: "")
            #expect(silent.received.isEmpty && silent.seconds >= 0.25, "closed after \(silent.seconds) s")
            let halfHead = try await Self.untilClosed(port: client.port!, send: "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            #expect(halfHead.received.isEmpty && halfHead.seconds >= 0.25)
            let body = String(buffer: EventLoopRelayTests.body("m"))
            let halfBody = try await Self.untilClosed(port: client.port!, send: String(Self.request(body).dropLast(5)))
            #expect(halfBody.received.isEmpty && halfBody.seconds >= 0.25)
        }
    }

    /// A body that keeps arriving, if slowly, is not idle, however long the whole takes (the
    /// front collects a plain request whole before anything after it sees a part).
    @Test(arguments: [true, false])
    func aBodyArrivingSlowlyOverLongerThanTheTimeoutIsAnswered(immediate: Bool) async throws {
        // (a timeout of 1 s, pieces 0.4 s apart: slack for a loaded machine)
        let configuration = GatewayConfiguration(cancelOnDisconnect: false, clientIdleTimeout: .seconds(1))
        try await GatewayTests.withGateway(configuration, immediate: immediate) { client, backend in
            let port = client.port!
            let wire = Self.request(String(buffer: EventLoopRelayTests.body("m", extra: #","n":7"#)))
            let head = String(wire[..<wire.range(of: "\r\n\r\n")!.upperBound])
            let body = Array(wire[wire.range(of: "\r\n\r\n")!.upperBound...])
            let answers = try await NIOThreadPool.singleton.runIfActive {
                let fd = try RawClient.connect(port: port)
                defer { close(fd) }
                try RawClient.sendAll(fd, head)
                // 2.4 s in all, at 0.4 s a piece: more than twice the timeout
                let pieces = 6, size = (body.count + pieces - 1) / pieces
                for start in stride(from: 0, to: body.count, by: size) {
                    usleep(400_000)
                    try RawClient.sendAll(fd, String(body[start..<min(start + size, body.count)]))
                }
                return try RawClient.read(fd, responses: 1)
            }
            #expect(answers.map(\.status) == [200])
            #expect(answers.first?.body.contains(#""n":7"#) == true)
            #expect(backend.released == 1)
        }
    }

    /// `immediate`: relayed on the event loop; otherwise through the general path.
    @Test(arguments: [true, false])
    func anAnswerLongerThanTheTimeoutIsWaitedForThenTheIdleConnectionCloses(immediate: Bool) async throws {
        try await GatewayTests.withGateway(Self.idle, immediate: immediate) { client, backend in
            let body = String(buffer: EventLoopRelayTests.body("m", extra: #","sleep_ms":1000"#))
            let answer = try await Self.untilClosed(port: client.port!, send: Self.request(body))
            #expect(answer.received.hasPrefix("HTTP/1.1 200"), "\(answer.received)")
            #expect(answer.received.contains(#""sleep_ms":1000"#), "the whole answer came")
            #expect(answer.seconds >= 1.2, "closed \(answer.seconds) s after the request: after its answer, once idle")
            #expect(backend.released == 1)
        }
    }
}
