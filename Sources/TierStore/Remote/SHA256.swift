/// Streaming SHA-256 (libcrypto underneath). Noncopyable: a copy would share one running context.
public struct SHA256Digest: ~Copyable {
    private let context = LibCrypto.SHA256Context()

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) { context.update(bytes) }

    public mutating func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { context.update($0) } }

    /// Lowercase hex, as `sha256sum` prints it.
    public consuming func finalize() -> String { Self.hexString(context.finish()) }

    public static func hex(of bytes: UnsafeRawBufferPointer) -> String {
        var digest = SHA256Digest()
        digest.update(bytes)
        return digest.finalize()
    }

    public static func hex(of bytes: [UInt8]) -> String { bytes.withUnsafeBytes { hex(of: $0) } }

    public static func hex(of text: String) -> String { hex(of: Array(text.utf8)) }

    static func bytes(of data: [UInt8]) -> [UInt8] {
        let context = LibCrypto.SHA256Context()
        data.withUnsafeBytes { context.update($0) }
        return context.finish()
    }

    static func hexString(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

enum HMACSHA256 {
    static func mac(key: [UInt8], _ data: [UInt8]) -> [UInt8] { LibCrypto.hmacSHA256(key: key, data: data) }
    static func mac(key: [UInt8], _ text: String) -> [UInt8] { mac(key: key, Array(text.utf8)) }
}
