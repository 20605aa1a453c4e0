import Foundation
import Glibc

/// Weight files materialized in a directory the runtime opens by path: a RAM-backed one
/// (/dev/shm, so llama.cpp maps the pages with no copy) or a disk one. Each model has its own
/// subdirectory holding the file under its source's base name and an `identity` file naming
/// the source version it came from. A copy is built in a hidden temporary directory and
/// renamed into place only when whole (and verified), so a copy that exists is complete and
/// a crash mid-stage leaves only a temporary directory, removed at the next open.
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

    /// The path of `name`'s complete copy if it came from `identity` (any version when nil).
    public func path(of name: String, identity: String? = nil) -> String? {
        let home = home(of: name)
        guard let stored = try? String(contentsOfFile: "\(home)/identity", encoding: .utf8) else { return nil }
        if let identity, stored != identity { return nil }
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: home)) ?? []).filter { $0 != "identity" }
        guard files.count == 1 else { return nil }
        return "\(home)/\(files[0])"
    }

    /// Bytes held by `name`'s copy, if any.
    public func size(of name: String) -> UInt64? {
        guard let path = path(of: name) else { return nil }
        return (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value
    }

    /// Removes `name`'s copy. A runtime that still maps it keeps its pages until it exits.
    public func remove(_ name: String) {
        try? FileManager.default.removeItem(atPath: home(of: name))
    }

    /// Starts a copy of `size` bytes: a file `fileName` in a temporary directory, allocated
    /// whole (fallocate: fresh pages of a RAM-backed file are much faster to allocate that way
    /// than to fault in one by one) and mapped for writing.
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

/// One copy being written: chunks land at their offsets in any order; `commit` publishes it,
/// `abandon` (or dropping it uncommitted) removes it.
public final class StagedFileWriter: @unchecked Sendable {
    public let name: String
    public let size: UInt64
    let temporary: String
    let fileName: String
    let files: StagedFiles
    private let base: UnsafeMutableRawPointer?
    private var finished = false

    init(name: String, temporary: String, fileName: String, size: UInt64, files: StagedFiles) throws {
        self.name = name
        self.temporary = temporary
        self.fileName = fileName
        self.size = size
        self.files = files
        let path = "\(temporary)/\(fileName)"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IOError(operation: "create \(path)", errno: errno) }
        defer { close(fd) }
        guard size > 0 else {
            base = nil
            return
        }
        let allocated = posix_fallocate(fd, 0, off_t(size))
        if allocated != 0 {
            // Some file systems cannot preallocate; ENOSPC is real and must stop us here.
            guard allocated != ENOSPC, ftruncate(fd, off_t(size)) == 0 else {
                throw IOError(operation: "allocate \(size) bytes for \(path)", errno: allocated == ENOSPC ? ENOSPC : errno)
            }
        }
        let mapped = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapped, mapped != MAP_FAILED else { throw IOError(operation: "mmap \(path)", errno: errno) }
        base = mapped
    }

    deinit { abandon() }

    /// The whole file as writable memory (empty for a zero-byte file).
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: base == nil ? 0 : Int(size))
    }

    /// Copies `chunk` to `offset`. Safe from several tasks at once for disjoint ranges.
    public func write(_ chunk: UnsafeRawBufferPointer, at offset: UInt64) {
        precondition(offset + UInt64(chunk.count) <= size, "chunk past the end of \(name)")
        guard let base, let from = chunk.baseAddress else { return }
        (base + Int(offset)).copyMemory(from: from, byteCount: chunk.count)
    }

    /// Publishes the copy as `name`'s, from source version `identity`, replacing an older one.
    /// Returns the file's final path.
    public func commit(identity: String) throws -> String {
        precondition(!finished)
        unmap()
        try identity.write(toFile: "\(temporary)/identity", atomically: false, encoding: .utf8)
        let home = files.home(of: name)
        let old = files.temporaryName()
        if rename(home, old) != 0 && errno != ENOENT { throw IOError(operation: "rename \(home)", errno: errno) }
        guard rename(temporary, home) == 0 else { throw IOError(operation: "rename \(temporary) to \(home)", errno: errno) }
        try? FileManager.default.removeItem(atPath: old)
        finished = true
        return "\(home)/\(fileName)"
    }

    /// Drops the unfinished copy.
    public func abandon() {
        guard !finished else { return }
        finished = true
        unmap()
        try? FileManager.default.removeItem(atPath: temporary)
    }

    private var unmapped = false
    private func unmap() {
        guard !unmapped else { return }
        unmapped = true
        if let base { munmap(base, Int(size)) }
    }
}
