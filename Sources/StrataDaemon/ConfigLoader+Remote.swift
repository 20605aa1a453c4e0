import Foundation
import TierStore
import Yams

extension ConfigLoader {
    /// `tiers.remote`: how weights come from HTTP and S3 sources. S3 credentials are named by
    /// environment variable (never written in the file); unset ones fall back to the standard
    /// AWS variables when the client is built.
    static func remote(_ reader: ConfigReader, _ node: Node) throws -> RemoteSettings {
        let map = try reader.mapping(node, at: "tiers.remote", allowed: [
            "parallelism", "chunk_size", "retries", "connect_timeout", "stall_timeout", "multipart_threshold", "part_size", "s3",
            "ca_file",
        ])
        var settings = RemoteSettings()
        if let v = map["parallelism"] { settings.parallelism = try reader.integer(v, at: "tiers.remote.parallelism", range: 1...64) }
        if let v = map["chunk_size"] {
            let size = try reader.size(v, at: "tiers.remote.chunk_size")
            guard size >= 64 << 10, size <= 64 << 20, size % 4096 == 0 else {
                throw reader.fail("tiers.remote.chunk_size", v, "expected a multiple of 4KiB from 64KiB to 64MiB")
            }
            settings.chunkBytes = Int(size)
        }
        if let v = map["retries"] { settings.retries = try reader.integer(v, at: "tiers.remote.retries", range: 0...100) }
        if let v = map["connect_timeout"] { settings.connectTimeout = try reader.duration(v, at: "tiers.remote.connect_timeout") }
        if let v = map["stall_timeout"] {
            settings.stallTimeout = try reader.duration(v, at: "tiers.remote.stall_timeout")
            guard settings.stallTimeout >= .seconds(1) else { throw reader.fail("tiers.remote.stall_timeout", v, "expected at least 1s") }
        }
        if let v = map["multipart_threshold"] {
            settings.multipartThreshold = Int(clamping: try reader.size(v, at: "tiers.remote.multipart_threshold"))
        }
        if let v = map["part_size"] {
            let size = try reader.size(v, at: "tiers.remote.part_size")
            guard size >= 5 << 20, size <= 5 << 30 else {
                throw reader.fail("tiers.remote.part_size", v, "expected 5MiB to 5GiB (S3's limits for a part)")
            }
            settings.partBytes = Int(size)
        }
        if let v = map["ca_file"] {
            let path = try reader.path(v, at: "tiers.remote.ca_file")
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw reader.fail("tiers.remote.ca_file", v, "'\(path)' is not a readable file (a PEM bundle of certificate authorities)")
            }
            settings.caFile = path
        }
        if let node = map["s3"] {
            let s3 = try reader.mapping(node, at: "tiers.remote.s3", allowed: [
                "region", "endpoint", "path_style", "access_key_env", "secret_key_env", "session_token_env",
            ])
            if let v = s3["region"] { settings.s3.region = try reader.string(v, at: "tiers.remote.s3.region") }
            if let v = s3["endpoint"] {
                let endpoint = try reader.string(v, at: "tiers.remote.s3.endpoint")
                guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
                    throw reader.fail("tiers.remote.s3.endpoint", v, "'\(endpoint)' is not an http(s) URL")
                }
                settings.s3.endpoint = endpoint
            }
            if let v = s3["path_style"] { settings.s3.pathStyle = try reader.bool(v, at: "tiers.remote.s3.path_style") }
            func secret(_ key: String) throws -> String? {
                guard let v = s3[key] else { return nil }
                let name = try reader.string(v, at: "tiers.remote.s3.\(key)")
                guard let value = reader.environment[name], !value.isEmpty else {
                    throw reader.fail("tiers.remote.s3.\(key)", v, "environment variable \(name) is not set")
                }
                return value
            }
            settings.s3.accessKeyID = try secret("access_key_env")
            settings.s3.secretAccessKey = try secret("secret_key_env")
            settings.s3.sessionToken = try secret("session_token_env")
        }
        return settings
    }
}
