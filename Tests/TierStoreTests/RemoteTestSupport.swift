import Foundation
import Glibc
import Testing
@testable import TierStore

/// A real nginx on a free loopback port serving a fresh temp dir, for the remote tier's
/// integration tests. `/` serves and accepts PUT/DELETE (WebDAV module); `/slow/` is rate
/// limited so a transfer lasts long enough to be cancelled.
final class NginxServer {
    let root: String
    /// The server's own folder (config, logs, `www`), removed when it stops.
    private let base: String
    let port: Int
    private let process: Process

    static let binary = "/usr/sbin/nginx"

    init() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw SetupError("nginx is not installed at \(Self.binary): run scripts/setup.sh")
        }
        base = FileManager.default.temporaryDirectory.appendingPathComponent("strata-nginx-\(UUID().uuidString)").path
        root = base + "/www"
        let temp = base + "/tmp"
        for dir in [root, temp, root + "/slow"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        port = try Self.freePort()
        let config = """
        daemon off;
        master_process off;
        pid \(base)/nginx.pid;
        error_log \(base)/error.log warn;
        events { worker_connections 256; }
        http {
            access_log off;
            client_body_temp_path \(temp)/body;
            proxy_temp_path \(temp)/proxy;
            fastcgi_temp_path \(temp)/fastcgi;
            uwsgi_temp_path \(temp)/uwsgi;
            scgi_temp_path \(temp)/scgi;
            server {
                listen 127.0.0.1:\(port);
                root \(root);
                location / {
                    dav_methods PUT DELETE;
                    create_full_put_path on;
                    client_max_body_size 0;
                }
                location /slow/ { limit_rate 64k; }
            }
        }
        """
        try config.write(toFile: base + "/nginx.conf", atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["-e", base + "/error.log", "-p", base, "-c", base + "/nginx.conf"]
        try process.run()
        // Ready when it accepts connections (bounded: 5 s).
        for _ in 0..<500 {
            if Self.canConnect(port: port) { return }
            if !process.isRunning { break }
            usleep(10_000)
        }
        let log = (try? String(contentsOfFile: base + "/error.log", encoding: .utf8)) ?? ""
        stop()
        throw SetupError("nginx did not start on port \(port): \(log)")
    }

    func stop() {
        // SIGKILL: a test server has nothing to flush, and nginx started from a test runner's
        // thread may inherit a signal mask that blocks SIGTERM.
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: base)
    }

    deinit { stop() }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)/\(path)" }

    func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: root + "/" + path))
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw SetupError("no free loopback port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}

struct SetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var out = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        for shift in stride(from: 0, to: 64, by: 8) where index < count {
            out[index] = UInt8(truncatingIfNeeded: z >> UInt64(shift))
            index += 1
        }
    }
    return out
}

func remoteError(_ error: any Error) -> RemoteError? { error as? RemoteError }

func tempPath(_ name: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("strata-remote-\(UUID().uuidString)-\(name)").path
}
