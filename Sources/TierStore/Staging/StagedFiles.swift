import Foundation
import Glibc
import Synchronization

/// Weight files materialized in a directory the runtime opens by path: a RAM-backed one
/// (/dev/shm, so llama.cpp maps the pages with no copy) or a disk one. Each model has its own
/// subdirectory holding the file under its source's base name and an `identity` file naming
/// the source version it came from. A copy is built in a hidden temporary directory and
/// renamed into place only when whole (and verified), so a copy that exists is complete and
/// a crash mid-stage leaves only a temporary directory, removed at the next open. The identity
/// file also records the copy's size and modification time when it was published (its seal):
/// a copy written to or truncated since (by hand, or by another program) no longer matches and
/// is not used, but fetched again.
public struct StagedFiles: Sendable {
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Leftovers of a staging cut short by a crash; another live process's are left alone.
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasPrefix(".tmp-") {
            let owner = entry.split(separator: "-").dropFirst().first.flatMap { pid_t($0) } ?? 0
            if owner <= 0 || (kill(owner, 0) != 0 && errno == ESRCH) {
                try? FileManager.default.removeItem(atPath: "\(directory)/\(entry)")
            }
        }
    }

    /// A fresh hidden name in the directory, tagged with this process.
    func temporaryName() -> String {
        "\(directory)/.tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    }

    /// The directory of `name`'s copy (model names may hold '/', which a path component cannot).
    func home(of name: String) -> String {
        "\(directory)/\(name.replacingOccurrences(of: "%", with: "%25").replacingOccurrences(of: "/", with: "%2F"))"
    }

    /// The source version `name`'s copy came from, if there is a copy.
    public func identity(of name: String) -> String? {
        record(of: name).map(\.identity)
    }

    /// The path of `name`'s complete copy if it came from `identity` (any version when nil)
    /// and is as it was published.
    public func path(of name: String, identity: String? = nil) -> String? {
        let home = home(of: name)
        guard let record = record(of: name) else { return nil }
        if let identity, record.identity != identity { return nil }
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: home)) ?? []).filter { $0 != "identity" }
        guard files.count == 1, let seal = record.seal, Self.seal(of: "\(home)/\(files[0])") == seal else { return nil }
        return "\(home)/\(files[0])"
    }

    /// `name`'s identity file: the source version, then (on a line of its own) the copy's seal;
    /// nil seal in a file an older build wrote, whose copy is then not used.
    private func record(of name: String) -> (identity: String, seal: String?)? {
        guard let text = try? String(contentsOfFile: "\(home(of: name))/identity", encoding: .utf8) else { return nil }
        guard let cut = text.lastIndex(of: "\n"), text[text.index(after: cut)...].hasPrefix(Self.sealPrefix) else {
            return (text, nil)
        }
        return (String(text[..<cut]), String(text[text.index(after: cut)...]))
    }

    static let sealPrefix = "copy size="

    /// Whether `home` is a copy Strata made: its identity file names a source version as Strata
    /// writes them (`file:/path size=…`, `http(s)://… size=…`, `s3://… size=…`). A directory given
    /// by hand may hold anything, including a file called `identity`: nothing else is ever
    /// removed or replaced.
    func isCopy(_ home: String) -> Bool {
        guard let text = try? String(contentsOfFile: "\(home)/identity", encoding: .utf8),
            let first = text.split(separator: "\n", omittingEmptySubsequences: false).first
        else { return false }
        return ["file:/", "http://", "https://", "s3://"].contains { first.hasPrefix($0) } && first.contains(" size=")
    }

    /// Throws when `home` holds something that is not a copy of Strata's, which publishing a
    /// copy there would replace.
    func requireReplaceable(_ home: String) throws {
        var info = stat()
        guard lstat(home, &info) == 0 else { return }   // (nothing there)
        guard isCopy(home) else {
            throw IOError(operation: "publish \(home)", errno: EEXIST,
                          detail: "it exists and is not a copy Strata made; move it, or give tiers.host.dir a directory of Strata's own")
        }
    }

    /// What the file at `path` is now, as far as a write or truncation would change it.
    static func seal(of path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return "\(sealPrefix)\(info.st_size) mtime=\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }

    /// Writes the identity file of the copy at `copy` into `directory`.
    static func writeRecord(identity: String, copy: String, into directory: String) throws {
        guard let seal = seal(of: copy) else { throw IOError(operation: "stat \(copy)", errno: errno) }
        try "\(identity)\n\(seal)".write(toFile: "\(directory)/identity", atomically: false, encoding: .utf8)
    }

    /// Publishes as `name`'s copy a hard link to another name's copy of source version
    /// `identity` (two models of the same weights): the same pages, nothing read or written.
    /// Returns its path; nil when no other copy is of that version, or the link fails.
    public func link(_ name: String, toCopyOf identity: String) -> String? {
        for other in names() where other != name {
            guard let path = path(of: other, identity: identity) else { continue }
            let fileName = String(path.split(separator: "/").last ?? "")
            let temporary = temporaryName()
            guard (try? FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)) != nil else { continue }
            guard Glibc.link(path, "\(temporary)/\(fileName)") == 0,
                (try? Self.writeRecord(identity: identity, copy: "\(temporary)/\(fileName)", into: temporary)) != nil
            else {
                try? FileManager.default.removeItem(atPath: temporary)
                continue
            }
            let home = home(of: name)
            let old = temporaryName()
            if (try? requireReplaceable(home)) == nil || rename(home, old) != 0 && errno != ENOENT || rename(temporary, home) != 0 {
                try? FileManager.default.removeItem(atPath: temporary)
                return nil
            }
            try? FileManager.default.removeItem(atPath: old)
            return "\(home)/\(fileName)"
        }
        return nil
    }

    /// The names that have a copy in the directory (`isCopy`). Anything else there is not
    /// Strata's (a directory given by hand may hold other things), and is never listed, so
    /// never removed.
    public func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { !$0.hasPrefix(".") && isCopy("\(directory)/\($0)") }
            .map { $0.replacingOccurrences(of: "%2F", with: "/").replacingOccurrences(of: "%25", with: "%") }
    }

    /// Removes `name`'s copy. A runtime that still maps it keeps its pages until it exits.
    public func remove(_ name: String) {
        let home = home(of: name)
        guard isCopy(home) else { return }   // (not a copy of Strata's)
        try? FileManager.default.removeItem(atPath: home)
    }

    /// Starts a copy of `size` bytes: a file `fileName` in a temporary directory, sized (after a
    /// check that the directory has room) and written chunk by chunk with pwrite.
    public func begin(_ name: String, fileName: String, size: UInt64) throws -> StagedFileWriter {
        let temporary = temporaryName()
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        do {
            return try StagedFileWriter(name: name, temporary: temporary, fileName: fileName, size: size, files: self)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }
}

/// One copy being written: chunks land at their offsets in any order (pwrite: a copy straight
/// into the file's pages, no mapping whose every page would fault in); `commit` publishes it,
/// `abandon` (or dropping it uncommitted) removes it.
public final class StagedFileWriter: @unchecked Sendable {
    public let name: String
    public let size: UInt64
    let temporary: String
    let fileName: String
    let files: StagedFiles
    private let fd: Int32
    private let state = Mutex(State.writing)
    private let writing = NSLock()

    enum State { case writing, committed, abandoned }

    init(name: String, temporary: String, fileName: String, size: UInt64, files: StagedFiles) throws {
        self.name = name
        self.temporary = temporary
        self.fileName = fileName
        self.size = size
        self.files = files
        let path = "\(temporary)/\(fileName)"
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOError(operation: "create \(path)", errno: errno) }
        // Sized, not allocated: on tmpfs, writing into holes is faster than fallocate (which
        // zeroes every page first) and then writing. Room is checked up front instead, so a
        // full RAM disk fails here rather than after most of a download.
        var fs = statvfs()
        let free = statvfs(temporary, &fs) == 0 ? UInt64(fs.f_bavail) * UInt64(fs.f_frsize) : UInt64.max
        guard size <= free, ftruncate(fd, off_t(size)) == 0 else {
            let code = size > free ? ENOSPC : errno
            close(fd)
            throw IOError(operation: "make room for \(size) bytes in \(path)", errno: code,
                          detail: size > free ? "\(free) bytes free there" : "")
        }
    }

    deinit { abandon() }

    /// Writes `chunk` at `offset`. Safe from several threads at once for disjoint ranges; they
    /// take turns here, because tmpfs serializes writers on the inode lock anyway and its
    /// waiters spin there, burning the CPU the transfers need.
    public func write(_ chunk: UnsafeRawBufferPointer, at offset: UInt64) throws {
        precondition(offset + UInt64(chunk.count) <= size, "chunk past the end of \(name)")
        guard let base = chunk.baseAddress else { return }
        writing.lock()
        defer { writing.unlock() }
        var done = 0
        while done < chunk.count {
            let n = pwrite(fd, base + done, chunk.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw IOError(operation: "write \(temporary)/\(fileName)", errno: errno)
            }
            done += n
        }
    }

    /// Writes `buffer[range]` at `offset` through `engine` (io_uring punts buffered writes to
    /// its own workers, one at a time per file), so no thread of the cooperative pool blocks.
    public func write(from buffer: IOBuffer, range: Range<Int>, at offset: UInt64, engine: any IOEngine) async throws {
        precondition(offset + UInt64(range.count) <= size, "chunk past the end of \(name)")
        try await engine.write(fd: fd, from: buffer, range: range, at: offset)
    }

    /// A read-only descriptor of the file, which stays valid after `commit` renames it and after
    /// the copy is removed (the caller closes it): for a writer of a second copy from this one.
    public func openForReading() throws -> Int32 {
        let path = "\(temporary)/\(fileName)"
        let fd = state.withLock { $0 == .writing ? open(path, O_RDONLY | O_CLOEXEC) : -2 }
        precondition(fd != -2, "\(name): opened for reading after it was committed or abandoned")
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        return fd
    }

    /// Publishes the copy as `name`'s, from source version `identity`, replacing an older one.
    /// Returns the file's final path.
    public func commit(identity: String) throws -> String {
        try state.withLock { state in
            precondition(state == .writing)
            close(fd)
            state = .committed
            try StagedFiles.writeRecord(identity: identity, copy: "\(temporary)/\(fileName)", into: temporary)
            let home = files.home(of: name)
            let old = files.temporaryName()
            do {
                try files.requireReplaceable(home)
            } catch {
                try? FileManager.default.removeItem(atPath: temporary)
                throw error
            }
            if rename(home, old) != 0 && errno != ENOENT { throw IOError(operation: "rename \(home)", errno: errno) }
            guard rename(temporary, home) == 0 else { throw IOError(operation: "rename \(temporary) to \(home)", errno: errno) }
            try? FileManager.default.removeItem(atPath: old)
        }
        return "\(files.home(of: name))/\(fileName)"
    }

    /// Drops the unfinished copy.
    public func abandon() {
        state.withLock { state in
            guard state == .writing else { return }
            state = .abandoned
            close(fd)
            try? FileManager.default.removeItem(atPath: temporary)
        }
    }
}
