/// How block and object I/O is issued, apart from where data lives. Callers own the buffers
/// (`IOBuffer`); the engine holds a reference to the buffer while an operation on it is in
/// flight, so memory can never be freed under the kernel. Every engine bounds the operations
/// in flight; callers beyond the bound wait their turn.
public protocol IOEngine: Sendable {
    var name: String { get }
    /// Reads up to `range.count` bytes at `offset` into `buffer[range]`; fewer only at end of file.
    func read(fd: Int32, into buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws -> Int
    /// Writes all of `buffer[range]` at `offset` (short writes are continued internally).
    func write(fd: Int32, from buffer: IOBuffer, range: Range<Int>, at offset: UInt64) async throws
    /// Flushes the file's data (and metadata unless `dataOnly`) to stable storage.
    func sync(fd: Int32, dataOnly: Bool) async throws
    /// Stops the engine's threads; calls after this fail.
    func shutdown()
}

public enum IOEngineKind: String, Sendable, CaseIterable {
    case auto
    case ioUring = "io_uring"
    case psync

    /// Builds the engine; `auto` picks io_uring when the kernel and sandbox allow it.
    public func make(queueDepth: Int = 64) throws -> any IOEngine {
        switch self {
        case .ioUring:
            return try IOUringEngine(queueDepth: queueDepth)
        case .psync:
            return PsyncEngine(threads: min(queueDepth, 16))
        case .auto:
            if IOUringEngine.isAvailable, let engine = try? IOUringEngine(queueDepth: queueDepth) { return engine }
            return PsyncEngine(threads: min(queueDepth, 16))
        }
    }
}

extension IOEngine {
    public func read(fd: Int32, into buffer: IOBuffer, at offset: UInt64) async throws -> Int {
        try await read(fd: fd, into: buffer, range: 0..<buffer.count, at: offset)
    }

    public func write(fd: Int32, from buffer: IOBuffer, at offset: UInt64) async throws {
        try await write(fd: fd, from: buffer, range: 0..<buffer.count, at: offset)
    }

    /// Reads exactly `range.count` bytes unless end of file comes first; returns how many.
    public func readFully(fd: Int32, into buffer: IOBuffer, range: Range<Int>? = nil, at offset: UInt64) async throws -> Int {
        let range = range ?? 0..<buffer.count
        var done = 0
        while done < range.count {
            let n = try await read(
                fd: fd, into: buffer, range: range.lowerBound + done..<range.upperBound, at: offset + UInt64(done))
            if n == 0 { break }
            done += n
        }
        return done
    }
}
