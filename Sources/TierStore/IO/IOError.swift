import Glibc

/// A failed I/O operation: which one, on what, and the errno. Expected outcomes (a short read
/// at end of file) are values, not errors.
public struct IOError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var errno: Int32
    public var detail: String

    public init(operation: String, errno: Int32, detail: String = "") {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let message = String(cString: strerror(errno))
        return "\(operation) failed: \(message) (errno \(errno))\(detail.isEmpty ? "" : ", \(detail)")"
    }

    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}

/// The one place where the result of a read, write or fsync (a CQE's `res` or a syscall's
/// return with its errno) becomes success, retry, an error, or a crash for programmer errors.
enum IOOutcome: Equatable {
    case done(Int)
    case retry
    case failed(IOError)

    static func classify(_ result: Int, errno code: Int32, operation: String) -> IOOutcome {
        if result >= 0 { return .done(result) }
        switch code {
        case EINTR, EAGAIN:
            return .retry
        case EBADF, EFAULT:
            // A closed descriptor or a bad buffer pointer is a bug in Strata, never an I/O condition.
            preconditionFailure("\(operation): \(String(cString: strerror(code))) — programmer error")
        default:
            return .failed(IOError(operation: operation, errno: code))
        }
    }

    /// io_uring reports failures as a negative errno in the result itself.
    static func classifyCompletion(_ res: Int32, operation: String) -> IOOutcome {
        res >= 0 ? .done(Int(res)) : classify(-1, errno: -res, operation: operation)
    }
}

extension IOError {
    /// The detail of a put whose segment the log's budget reclaimed while the record was being
    /// written: the record is gone with it (the log had no room to keep it).
    static let reclaimedDuringWrite = "segment reclaimed under the budget during the write"

    /// This is such a put's error.
    var isReclaimedDuringWrite: Bool { operation == "put" && errno == ENOSPC && detail == Self.reclaimedDuringWrite }
}
