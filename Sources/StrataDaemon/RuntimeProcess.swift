import CStrataProcess
import Foundation
import Glibc

/// One runtime process: spawned as its own process group with a parent-death signal, output
/// appended to a log file. Signals go to the whole group.
struct RuntimeProcess: Sendable {
    let pid: pid_t
    let port: Int
    let logPath: String
    /// Where this process's part of the (appended) log begins, after its banner.
    var logStart: UInt64 = 0

    struct SpawnError: Error, CustomStringConvertible {
        var description: String
    }

    static func spawn(argv: [String], environment: [String: String], port: Int, logPath: String) throws -> RuntimeProcess {
        guard let program = argv.first, let path = resolveExecutable(program) else {
            throw SpawnError(description: "cannot find executable '\(argv.first ?? "")' (not a file, or not on PATH)")
        }
        let directory = (logPath as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else {
            throw SpawnError(description: "cannot open log file \(logPath): \(String(cString: strerror(errno)))")
        }
        defer { close(logFD) }
        let banner = "\n--- strata: starting \(argv.joined(separator: " ")) at \(Date()) ---\n"
        _ = banner.withCString { write(logFD, $0, strlen($0)) }
        let logStart = UInt64(max(0, lseek(logFD, 0, SEEK_END)))

        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        let pid = strata_spawn(path, cArgv, cEnv, logFD)
        guard pid > 0 else {
            throw SpawnError(description: "cannot start \(path): \(String(cString: strerror(-pid)))")
        }
        return RuntimeProcess(pid: pid, port: port, logPath: logPath, logStart: logStart)
    }

    func signalGroup(_ signal: Int32) {
        _ = strata_kill_group(pid, signal)
    }

    /// Waits on a dedicated thread (waitpid blocks) and returns a description of how it ended.
    func waitForExit() async -> String {
        let pid = self.pid
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                var status: Int32 = 0
                let result = strata_wait(pid, &status)
                guard result == 0 else {
                    continuation.resume(returning: "wait failed: \(String(cString: strerror(-result)))")
                    return
                }
                var signaled: Int32 = 0
                let value = strata_wait_decode(status, &signaled)
                continuation.resume(returning: signaled != 0 ? "killed by signal \(value)" : "exited with code \(value)")
            }
            thread.name = "strata-wait-\(pid)"
            thread.start()
        }
    }

    /// The last lines of the runtime's log, to put beside an error, after the last two earlier
    /// lines that say what went wrong: a runtime's last words are often generic ("failed to load
    /// model", "exiting") and the cause came before them (llama.cpp: "invalid magic characters
    /// 'hell', expected 'GGUF'", "failed to open GGUF file … (No such file or directory)").
    func logTail(lines: Int = 3) -> String {
        guard let handle = FileHandle(forReadingAtPath: logPath) else { return "" }
        defer { try? handle.close() }
        // This process's lines only: the log holds the runs before it too.
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: max(logStart, size > 16384 ? size - 16384 : 0))
        let data = (try? handle.readToEnd()) ?? Data()
        let all = String(decoding: data, as: UTF8.self).split(separator: "\n")
        let last = all.suffix(lines)
        let earlier = all.dropLast(lines)
        func mentioning(_ words: [String]) -> [Substring] {
            earlier.filter { line in
                let lower = line.lowercased()
                return words.contains { lower.contains($0) }
            }
        }
        // Lines that name a cause first; lines that only say something failed where none does.
        // (Once each: llama.cpp says some twice, the lines differing only in their timestamps.)
        var seen: Set<String> = []
        let specific = mentioning(Self.causeWords)
        let causes = (specific.isEmpty ? mentioning(["error", "failed"]) : specific).reversed()
            .filter { seen.insert(String($0.filter { !$0.isNumber })).inserted }.prefix(2).reversed()
        return (causes + (causes.isEmpty ? [] : ["…"]) + last).joined(separator: " | ")
    }

    static let causeWords = ["invalid", "no such file", "not within", "unsupported", "unknown", "cannot", "unable",
                             "out of memory", "permission denied", "not found"]

    static func resolveExecutable(_ program: String) -> String? {
        if program.contains("/") {
            return FileManager.default.isExecutableFile(atPath: program) ? program : nil
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(program)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Whether something accepts TCP connections on the loopback port. A connect to loopback
    /// completes or is refused at once, so this does not block.
    static func portAccepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = loopback(port: port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// A free TCP port on loopback, from the kernel's ephemeral range.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SpawnError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw SpawnError(description: "bind: \(String(cString: strerror(errno)))") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw SpawnError(description: "getsockname: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
