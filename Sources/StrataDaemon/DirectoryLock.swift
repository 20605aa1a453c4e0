import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One daemon per directory: an exclusive `flock` on `<directory>/.strata.lock`, held while the
/// lock lives. Two daemons on one store would each append blocks and catalog entries the other
/// does not know of, and each would reclaim segments and staged files the other still uses. The
/// kernel drops the lock when the process ends, however it ends, so a crash never leaves a stale
/// one; the descriptor is close-on-exec, so runtimes the daemon starts do not hold it after it.
public final class DirectoryLock: Sendable {
    static let fileName = ".strata.lock"

    let directory: String
    private let descriptor: Int32

    public struct InUse: Error, Equatable, CustomStringConvertible {
        public var directory: String
        /// The pid the holder wrote, when it could be read.
        public var holder: String?

        public var description: String {
            "\(directory) is in use by another strata process" + (holder.map { " (pid \($0))" } ?? "")
                + "; each daemon needs a state_dir, tiers.host.dir and tiers.nvme.dir of its own"
        }
    }

    /// The directory cannot be made, or its lock file opened (`role`: the config key naming it).
    public struct CannotLock: Error, Equatable, CustomStringConvertible {
        public var role: String
        public var path: String
        public var errno: Int32
        public var description: String { "cannot use \(role) \(path): \(String(cString: strerror(errno)))" }
    }

    /// Takes the lock (creating the directory and its parents if needed); throws `InUse` at once
    /// if another process holds it, `CannotLock` where the directory cannot be made or written.
    init(directory: String, role: String = "directory") throws {
        let directory = URL(fileURLWithPath: directory).standardizedFileURL.path
        var made = ""
        for component in directory.split(separator: "/", omittingEmptySubsequences: true) {
            made += "/" + component
            if mkdir(made, 0o755) != 0 && errno != EEXIST { throw CannotLock(role: role, path: made, errno: errno) }
        }
        let path = directory + "/" + Self.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CannotLock(role: role, path: path, errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            close(fd)
            if failure == EWOULDBLOCK { throw InUse(directory: directory, holder: holder?.isEmpty == false ? holder : nil) }
            throw CannotLock(role: role, path: path, errno: failure)
        }
        // Who holds it, for the message another daemon gives.
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.directory = directory
        descriptor = fd
    }

    deinit { close(descriptor) }
}

