import Glibc

/// A chunk buffer owned by the download loop and lent to one read at a time.
final class ChunkBuffer: @unchecked Sendable {  // written by one read, then only read
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int) { bytes = .allocate(byteCount: max(count, 1), alignment: 4096) }
    deinit { bytes.deallocate() }
}

extension RemoteClient {
    /// Parallel ranged download of the whole object to a local file: `chunkBytes` ranges,
    /// `parallelism` at once. Memory is bounded: at most `parallelism` chunks exist at a time,
    /// counting those that arrived early and wait for their predecessors; chunks are written and
    /// hashed in order, so the checksum needs no second pass. Writes `path + ".part"` and renames
    /// it over `path` only when whole and verified (`.checksumMismatch` names both digests).
    public func download(_ location: RemoteLocation, to path: String, sha256: String? = nil,
                         progress: (@Sendable (UInt64) -> Void)? = nil) async throws -> RemoteObject {
        let object = try await stat(location)
        let partial = path + ".part"
        let fd: Int32
        switch FileIO.open(partial, flags: O_WRONLY | O_CREAT | O_TRUNC) {
        case .success(let opened): fd = opened
        case .failure(let error):
            throw RemoteError(.transport, url: location.description, "open \(partial): \(FileIO.describe(error.code))")
        }
        var renamed = false
        defer {
            FileIO.close(fd)
            if !renamed { unlink(partial) }
        }
        let chunk = UInt64(max(settings.chunkBytes, 1))
        let count = Int((object.size + chunk - 1) / chunk)
        let window = max(1, settings.parallelism)
        var digest = SHA256Digest()
        var done: UInt64 = 0

        try await withThrowingTaskGroup(of: (Int, ChunkBuffer).self) { group in
            var launched = 0
            var frontier = 0
            var waiting: [Int: ChunkBuffer] = [:]
            func launch() {
                let index = launched
                let range = (UInt64(index) * chunk)..<min(object.size, UInt64(index + 1) * chunk)
                let buffer = ChunkBuffer(count: range.count)
                group.addTask {
                    try await self.read(object, range: range, into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[..<range.count]))
                    return (index, buffer)
                }
                launched += 1
            }
            while launched < count && launched - frontier < window { launch() }
            while let (index, buffer) = try await group.next() {
                waiting[index] = buffer
                while let ready = waiting.removeValue(forKey: frontier) {
                    let offset = UInt64(frontier) * chunk
                    let bytes = UnsafeRawBufferPointer(rebasing: ready.bytes[..<Int(min(chunk, object.size - offset))])
                    if case .failure(let why) = FileIO.pwriteFully(fd, bytes, at: offset) {
                        throw RemoteError(.transport, url: location.description, "write \(partial): \(why.message)")
                    }
                    digest.update(bytes)
                    done += UInt64(bytes.count)
                    frontier += 1
                    progress?(done)
                }
                // Launch only as the in-order frontier moves: early arrivals count against the window.
                while launched < count && launched - frontier < window { launch() }
            }
        }
        precondition(done == object.size, "download finished with \(done) of \(object.size) bytes")
        let got = digest.finalize()
        if let sha256, got != sha256.lowercased() {
            throw RemoteError(.checksumMismatch, url: location.description,
                              "download \(location): SHA-256 is \(got), expected \(sha256.lowercased())")
        }
        guard fsync(fd) == 0 else {
            throw RemoteError(.transport, url: location.description, "fsync \(partial): \(FileIO.describe(errno))")
        }
        guard rename(partial, path) == 0 else {
            throw RemoteError(.transport, url: location.description, "rename \(partial) → \(path): \(FileIO.describe(errno))")
        }
        renamed = true
        return object
    }
}
