/// The bytes an upload sends: caller memory, an owned buffer (small S3 XML documents) or an open
/// file read with pread, so a large file is streamed and never loaded whole.
enum UploadBody: @unchecked Sendable {  // the memory case is only read, while the caller waits
    case memory(UnsafeRawBufferPointer)
    case owned([UInt8])
    case file(descriptor: Int32, size: UInt64)

    var size: UInt64 {
        switch self {
        case .memory(let bytes): UInt64(bytes.count)
        case .owned(let bytes): UInt64(bytes.count)
        case .file(_, let size): size
        }
    }

    /// A piece of the body (a multipart part, or all of it): what one attempt reads from.
    struct Slice: @unchecked Sendable {
        var origin: UploadSource.Origin
        var length: UInt64
        /// Holds an owned buffer alive while its pointer is in use.
        var keepAlive: AnyObject?
    }

    /// Owned bytes are copied into a box whose lifetime the slice extends.
    func slice(offset: UInt64, length: UInt64) -> Slice {
        precondition(offset + length <= size, "slice beyond the upload body")
        switch self {
        case .memory(let bytes):
            let start = Int(offset)
            return Slice(origin: .memory(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + Int(length))])),
                         length: length)
        case .owned(let bytes):
            let box = OwnedBytes(bytes)
            let start = Int(offset)
            return Slice(origin: .memory(UnsafeRawBufferPointer(rebasing: box.buffer[start..<(start + Int(length))])),
                         length: length, keepAlive: box)
        case .file(let descriptor, _):
            return Slice(origin: .file(descriptor: descriptor, offset: offset), length: length)
        }
    }
}

/// A heap copy with a stable address for the life of the object.
final class OwnedBytes: @unchecked Sendable {  // immutable after init
    let buffer: UnsafeRawBufferPointer

    init(_ bytes: [UInt8]) {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { memory.copyMemory(from: $0) }
        buffer = UnsafeRawBufferPointer(rebasing: memory[..<bytes.count])
    }

    deinit { buffer.baseAddress.map { UnsafeMutableRawPointer(mutating: $0).deallocate() } }
}
