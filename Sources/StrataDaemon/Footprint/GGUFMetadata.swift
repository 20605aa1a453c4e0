import Foundation

/// What a GGUF file's header says about the memory a model will need: the architecture, the
/// attention shape that sizes the KV cache, and where the tensor data starts.
///
/// Format (little endian, versions 2 and 3): "GGUF", u32 version, u64 tensor count, u64 key/value
/// count, the key/value pairs (key: u64 length + UTF-8; value: u32 type + payload), the tensor
/// infos (name, u32 dimension count, u64 dimensions, u32 type, u64 offset), padding to
/// `general.alignment` (32 by default), then the tensor data.
///
/// The header is read with `pread` in bounded chunks, never mapped: arrays that are not needed
/// (the tokenizer's vocabulary and merges, megabytes in big models) are stepped over without being
/// held in memory, and every count and length is checked against what the file can hold before
/// anything is allocated, so a truncated or hostile file is a thrown `GGUFError`.
public struct GGUFMetadata: Sendable, Equatable {
    public var version: UInt32
    public var tensorCount: UInt64
    /// Every key/value pair: scalars and strings as they are, integer arrays of at most
    /// `GGUFMetadata.keptArrayLimit` elements as `.integers`, other arrays as `.array` (type and count only).
    public var values: [String: GGUFValue]
    /// Where the tensor data starts, and how much of the file it fills (file size − offset). For a
    /// split model (`split.count` > 1) this is this file's share only.
    public var tensorDataOffset: UInt64
    public var tensorDataBytes: UInt64
    public var fileBytes: UInt64

    /// Integer arrays up to this length are kept (per-layer head counts); longer ones are skipped.
    public static let keptArrayLimit = 4096
    /// Strings longer than this are refused (the longest real ones are chat templates, tens of KiB).
    public static let stringLimit = 16 << 20
    /// How far into the file the header may reach by default; the biggest vocabularies need ~10 MiB.
    public static let defaultHeaderLimit: UInt64 = 128 << 20

    /// `general.architecture`, such as "llama" or "qwen2": the prefix of the model's own keys.
    public var architecture: String? { values["general.architecture"]?.string }

    /// The value of `<architecture>.<suffix>`, such as `llama.block_count`.
    public func archValue(_ suffix: String) -> GGUFValue? {
        architecture.flatMap { values["\($0).\(suffix)"] }
    }

    /// Transformer layers.
    public var blockCount: Int? { archValue("block_count")?.maxInteger }
    /// The context length the model was trained with (llama-server's default context).
    public var contextLength: Int? { archValue("context_length")?.maxInteger }
    public var embeddingLength: Int? { archValue("embedding_length")?.maxInteger }
    /// Query heads. Where it is a per-layer array, the first layer's, as llama.cpp takes it to
    /// derive the head size.
    public var headCount: Int? { archValue("attention.head_count")?.firstInteger }
    /// KV heads (fewer than `headCount` with grouped-query attention; equal to it when absent).
    /// Some models give one per layer: the largest.
    public var headCountKV: Int? { (archValue("attention.head_count_kv") ?? archValue("attention.head_count"))?.maxInteger }
    /// Per-layer KV heads when the file gives an array (hybrid models have 0 for recurrent layers).
    public var headCountKVPerLayer: [Int]? {
        if case .integers(let values) = archValue("attention.head_count_kv") { return values.map { Int(clamping: $0) } }
        return nil
    }
    /// Elements per head in K and V: the explicit keys, else embedding_length / head_count.
    public var keyLength: Int? { archValue("attention.key_length")?.maxInteger ?? defaultHeadSize }
    public var valueLength: Int? { archValue("attention.value_length")?.maxInteger ?? defaultHeadSize }
    /// Vocabulary size: `<arch>.vocab_size`, else the length of the tokenizer's token list.
    public var vocabularySize: Int? {
        if let size = archValue("vocab_size")?.maxInteger { return size }
        if case .array(_, let count) = values["tokenizer.ggml.tokens"] { return Int(clamping: count) }
        return nil
    }

    private var defaultHeadSize: Int? {
        guard let embedding = embeddingLength, let heads = headCount, heads > 0 else { return nil }
        return embedding / heads
    }
}

/// The value types GGUF defines, with their codes in the file.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes per value for the fixed-size types; nil for string and array.
    var fixedSize: UInt64? {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        case .string, .array: nil
        }
    }

    var isInteger: Bool {
        switch self {
        case .uint8, .int8, .uint16, .int16, .uint32, .int32, .uint64, .int64: true
        default: false
        }
    }
}

/// One metadata value as kept by `GGUFMetadata`.
public enum GGUFValue: Sendable, Equatable {
    case unsigned(UInt64)
    case signed(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    /// An integer array short enough to keep (per-layer values).
    case integers([Int64])
    /// An array that was stepped over: its element type and length.
    case array(GGUFValueType, UInt64)

    public var string: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The value as a non-negative Int; for an integer array its largest element.
    public var maxInteger: Int? {
        switch self {
        case .unsigned(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .signed(let v): return v >= 0 ? Int(v) : nil
        case .integers(let values): return values.max().flatMap { $0 >= 0 ? Int($0) : nil }
        default: return nil
        }
    }

    /// The value as a non-negative Int; for an integer array its first element.
    public var firstInteger: Int? {
        if case .integers(let values) = self { return values.first.flatMap { $0 >= 0 ? Int($0) : nil } }
        return maxInteger
    }
}

/// Why a GGUF header could not be read.
public struct GGUFError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Not a GGUF file (wrong magic).
        case notGGUF
        /// A GGUF version other than 2 or 3 (version 1, or a big-endian file).
        case unsupportedVersion
        /// The file ends inside the header.
        case truncated
        /// A count, length, type or offset that no valid file has.
        case malformed
        /// The header reaches past the configured limit.
        case tooLarge
        /// The file could not be opened or read.
        case io
    }

    public var code: Code
    public var message: String
    /// Byte offset in the file where the problem was found.
    public var offset: UInt64

    public init(_ code: Code, _ message: String, offset: UInt64) {
        self.code = code
        self.message = message
        self.offset = offset
    }

    public var description: String { "GGUF header: \(message) (at byte \(offset))" }
}

extension GGUFMetadata {
    /// Reads the header of the GGUF file at `path` with `pread`, in chunks of at most 1 MiB,
    /// reaching no further than `headerLimit` bytes into the file.
    public static func read(path: String, headerLimit: UInt64 = defaultHeaderLimit) throws -> GGUFMetadata {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(.io, "cannot open \(path): \(String(cString: strerror(errno)))", offset: 0) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw GGUFError(.io, "cannot stat \(path): \(String(cString: strerror(errno)))", offset: 0) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw GGUFError(.io, "\(path) is not a regular file", offset: 0) }
        var cursor = GGUFCursor(fileBytes: UInt64(info.st_size), headerLimit: headerLimit) { offset, count in
            var bytes = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let n = bytes.withUnsafeMutableBytes { buffer in
                    pread(fd, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                }
                if n < 0, errno == EINTR { continue }
                guard n >= 0 else {
                    throw GGUFError(.io, "cannot read \(path): \(String(cString: strerror(errno)))", offset: offset + UInt64(done))
                }
                if n == 0 { break }   // shorter than fstat said: the cursor reports the truncation
                done += n
            }
            return Array(bytes.prefix(done))
        }
        return try parse(&cursor)
    }

    /// Parses a header held in memory (`bytes` is the whole file, or at least its header).
    public static func parse(_ bytes: [UInt8], headerLimit: UInt64 = defaultHeaderLimit) throws -> GGUFMetadata {
        var cursor = GGUFCursor(fileBytes: UInt64(bytes.count), headerLimit: headerLimit) { offset, count in
            Array(bytes[Int(offset)..<min(bytes.count, Int(offset) + count)])
        }
        return try parse(&cursor)
    }

    static func parse(_ cursor: inout GGUFCursor) throws -> GGUFMetadata {
        guard cursor.fileBytes >= 4, try cursor.take(4).elementsEqual(Array("GGUF".utf8)) else {
            throw GGUFError(.notGGUF, "not a GGUF file (no \"GGUF\" magic)", offset: 0)
        }
        let version = try cursor.u32()
        guard version == 2 || version == 3 else {
            let swapped = version.byteSwapped
            throw GGUFError(.unsupportedVersion, swapped == 2 || swapped == 3
                ? "big-endian GGUF (version \(swapped)) is not supported"
                : "GGUF version \(version) is not supported (expected 2 or 3)", offset: 4)
        }
        let tensorCount = try cursor.u64()
        let pairCount = try cursor.u64()
        // The smallest pair is 13 bytes (key length, type, one-byte value); the smallest tensor info 24.
        try cursor.requireCount(pairCount, each: 13, "key/value pairs")
        var values: [String: GGUFValue] = [:]
        for _ in 0..<pairCount {
            let keyAt = cursor.position
            let key = try cursor.string(limit: 65535, "a key")
            let value = try cursor.value(try cursor.valueType(), depth: 0)
            guard !key.isEmpty else { throw GGUFError(.malformed, "empty key", offset: keyAt) }
            values[key] = value
        }
        try cursor.requireCount(tensorCount, each: 24, "tensor infos")
        for _ in 0..<tensorCount {
            let nameAt = cursor.position
            let name = try cursor.take(try cursor.length(limit: 65535, "a tensor name"))
            let dimensions = try cursor.u32()
            // GGML_MAX_DIMS is 4.
            guard dimensions <= 4 else {
                throw GGUFError(.malformed, "tensor \(String(decoding: name, as: UTF8.self)) has \(dimensions) dimensions (at most 4)", offset: nameAt)
            }
            try cursor.skip(UInt64(dimensions) * 8 + 4 + 8)   // dimensions, ggml type, data offset
        }
        let alignmentAt = cursor.position
        let alignment = values["general.alignment"].map { $0.maxInteger ?? 0 } ?? 32
        guard alignment > 0, alignment <= 1 << 20, alignment % 8 == 0 else {
            throw GGUFError(.malformed, "general.alignment \(alignment) is not a positive multiple of 8", offset: alignmentAt)
        }
        let dataOffset = (cursor.position + UInt64(alignment) - 1) / UInt64(alignment) * UInt64(alignment)
        guard dataOffset <= cursor.fileBytes else {
            throw GGUFError(.truncated, "the file ends before its tensor data (\(cursor.fileBytes) bytes)", offset: cursor.fileBytes)
        }
        return GGUFMetadata(
            version: version, tensorCount: tensorCount, values: values, tensorDataOffset: dataOffset,
            tensorDataBytes: cursor.fileBytes - dataOffset, fileBytes: cursor.fileBytes)
    }
}

/// Sequential reads over a GGUF header, from a window refilled in bounded chunks. Every length is
/// checked against the bytes left before it is read or allocated.
struct GGUFCursor {
    let fileBytes: UInt64
    let headerLimit: UInt64
    /// Reads up to `count` bytes at `offset` (fewer only at the end of the file).
    let fetch: (UInt64, Int) throws -> [UInt8]
    private(set) var position: UInt64 = 0
    private var window: [UInt8] = []
    private var windowStart: UInt64 = 0
    static let chunk = 1 << 20

    init(fileBytes: UInt64, headerLimit: UInt64, fetch: @escaping (UInt64, Int) throws -> [UInt8]) {
        self.fileBytes = fileBytes
        self.headerLimit = headerLimit
        self.fetch = fetch
    }

    /// Throws unless `count` more bytes lie within the file and the header limit.
    func require(_ count: UInt64, _ what: @autoclosure () -> String) throws {
        if count > fileBytes - min(position, fileBytes) {
            throw GGUFError(.truncated, "the file ends inside \(what()) (\(count) bytes needed, \(fileBytes - min(position, fileBytes)) left)", offset: position)
        }
        if count > headerLimit - min(position, headerLimit) {
            throw GGUFError(.tooLarge, "\(what()) reaches past the header limit of \(headerLimit) bytes", offset: position)
        }
    }

    /// Throws unless `count` items of at least `each` bytes could fit in what is left. A count no
    /// header could hold is malformed; one that merely runs past the end is a truncated file.
    func requireCount(_ count: UInt64, each: UInt64, _ what: String) throws {
        let (bytes, overflow) = count.multipliedReportingOverflow(by: each)
        if overflow || (bytes > fileBytes - min(position, fileBytes) && bytes > headerLimit) {
            throw GGUFError(.malformed, "claims \(count) \(what), more than the file's \(fileBytes) bytes can hold", offset: position)
        }
        try require(bytes, "\(count) \(what)")
    }

    mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        try require(UInt64(count), "\(count) bytes")
        let windowEnd = windowStart + UInt64(window.count)
        if position < windowStart || position + UInt64(count) > windowEnd {
            let want = max(count, min(Self.chunk, Int(min(fileBytes, headerLimit) - position)))
            window = try fetch(position, want)
            windowStart = position
            guard window.count >= count else {
                throw GGUFError(.truncated, "the file ends early (it shrank while being read?)", offset: position + UInt64(window.count))
            }
        }
        let start = Int(position - windowStart)
        position += UInt64(count)
        return window[start..<start + count]
    }

    mutating func skip(_ count: UInt64) throws {
        try require(count, "\(count) bytes")
        position += count
    }

    mutating func u32() throws -> UInt32 {
        try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func u64() throws -> UInt64 {
        try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// A string's length prefix, checked against `limit` and the bytes left.
    mutating func length(limit: Int, _ what: String) throws -> Int {
        let at = position
        let count = try u64()
        guard count <= UInt64(limit) else {
            throw GGUFError(.malformed, "\(what) claims \(count) bytes (at most \(limit))", offset: at)
        }
        try require(count, what)
        return Int(count)
    }

    mutating func string(limit: Int, _ what: String) throws -> String {
        String(decoding: try take(try length(limit: limit, what)), as: UTF8.self)
    }

    mutating func valueType() throws -> GGUFValueType {
        let at = position
        let code = try u32()
        guard let type = GGUFValueType(rawValue: code) else {
            throw GGUFError(.malformed, "unknown value type \(code)", offset: at)
        }
        return type
    }

    mutating func value(_ type: GGUFValueType, depth: Int) throws -> GGUFValue {
        switch type {
        case .uint8: return .unsigned(UInt64(try take(1).first!))
        case .int8: return .signed(Int64(Int8(bitPattern: try take(1).first!)))
        case .uint16: return .unsigned(try fixed(2))
        case .int16: return .signed(Int64(Int16(bitPattern: UInt16(try fixed(2)))))
        case .uint32: return .unsigned(UInt64(try u32()))
        case .int32: return .signed(Int64(Int32(bitPattern: try u32())))
        case .uint64: return .unsigned(try u64())
        case .int64: return .signed(Int64(bitPattern: try u64()))
        case .float32: return .float(Double(Float(bitPattern: try u32())))
        case .float64: return .float(Double(bitPattern: try u64()))
        case .bool: return .bool(try take(1).first! != 0)
        case .string: return .string(try string(limit: GGUFMetadata.stringLimit, "a string value"))
        case .array: return try array(depth: depth)
        }
    }

    private mutating func fixed(_ size: Int) throws -> UInt64 {
        try take(size).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// An array: short integer arrays are kept, anything else is stepped over without being held.
    private mutating func array(depth: Int) throws -> GGUFValue {
        let at = position
        let type = try valueType()
        let count = try u64()
        if let size = type.fixedSize {
            try requireCount(count, each: size, "array elements")
            if type.isInteger, count <= UInt64(GGUFMetadata.keptArrayLimit) {
                var integers: [Int64] = []
                integers.reserveCapacity(Int(count))
                for _ in 0..<count {
                    switch try value(type, depth: depth + 1) {
                    case .unsigned(let v): integers.append(Int64(clamping: v))
                    case .signed(let v): integers.append(v)
                    default: break
                    }
                }
                return .integers(integers)
            }
            try skip(count * size)
        } else if type == .string {
            try requireCount(count, each: 8, "array strings")
            for _ in 0..<count { try skip(UInt64(try length(limit: GGUFMetadata.stringLimit, "an array string"))) }
        } else {
            // Arrays of arrays are legal GGUF but unused by real models; allow a little nesting.
            guard depth < 3 else { throw GGUFError(.malformed, "arrays nested too deep", offset: at) }
            try requireCount(count, each: 12, "nested arrays")
            for _ in 0..<count { _ = try array(depth: depth + 1) }
        }
        return .array(type, count)
    }
}
