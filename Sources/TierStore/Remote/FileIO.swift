import Glibc

/// The remote tier's few file syscalls (file: locations, download targets, upload sources), in one
/// place: EINTR is retried here and errno becomes a value.
enum FileIO {
    /// An errno value as an Error.
    struct Errno: Error, Equatable { var code: Int32 }
    /// A failure worded for a message (short reads carry no errno).
    struct Failure: Error, Equatable { var message: String }

    static func describe(_ code: Int32) -> String { String(cString: strerror(code)) + " (errno \(code))" }

    static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) -> Result<Int32, Errno> {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return .success(fd) }
            if errno != EINTR { return .failure(Errno(code: errno)) }
        }
    }

    /// One pread; a short count is possible (the caller loops). 0 means end of file.
    static func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Result<Int, Errno> {
        while true {
            let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return .success(n) }
            if errno != EINTR { return .failure(Errno(code: errno)) }
        }
    }

    /// Reads exactly `buffer.count` bytes or reports why not.
    static func preadFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Result<Void, Failure> {
        var done = 0
        while done < buffer.count {
            switch pread(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: offset + UInt64(done)) {
            case .success(0): return .failure(Failure(message: "the file ended at \(offset + UInt64(done)), \(buffer.count - done) bytes early"))
            case .success(let n): done += n
            case .failure(let error): return .failure(Failure(message: describe(error.code)))
            }
        }
        return .success(())
    }

    static func pwriteFully(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) -> Result<Void, Failure> {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + UInt64(done)))
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else {
                return .failure(Failure(message: n < 0 ? describe(errno) : "wrote nothing"))
            }
        }
        return .success(())
    }

    struct Status { var size: UInt64; var modified: String }

    static func status(_ path: String) -> Result<Status, Errno> {
        var info = Glibc.stat()
        guard stat(path, &info) == 0 else { return .failure(Errno(code: errno)) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { return .failure(Errno(code: EISDIR)) }
        return .success(Status(size: UInt64(info.st_size),
                               modified: "\(info.st_mtim.tv_sec).\(String(info.st_mtim.tv_nsec))"))
    }

    static func fstatSize(_ fd: Int32) -> Result<UInt64, Errno> {
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0 else { return .failure(Errno(code: errno)) }
        return .success(UInt64(info.st_size))
    }

    static func close(_ fd: Int32) { _ = Glibc.close(fd) }
}
