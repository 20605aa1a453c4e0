import Foundation

/// AWS Signature Version 4, header form, for S3. Pure: the date is passed in, so the published
/// AWS examples are unit tests.
struct SigV4Signer: Sendable {
    var accessKeyID: String
    var secretAccessKey: String
    var sessionToken: String?
    var region: String
    var service = "s3"

    /// SHA-256 of the empty string: the payload hash of GET, HEAD and DELETE.
    static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// Streamed uploads are not hashed in advance; S3 accepts this over TLS and over plain HTTP.
    static let unsignedPayload = "UNSIGNED-PAYLOAD"

    struct Signed: Sendable, Equatable {
        var canonicalRequest: String
        var stringToSign: String
        var signature: String
        /// Authorization, x-amz-date, x-amz-content-sha256 and x-amz-security-token as needed:
        /// add them to the request as they are.
        var headers: [(String, String)]

        static func == (a: Signed, b: Signed) -> Bool {
            a.signature == b.signature && a.canonicalRequest == b.canonicalRequest
        }
    }

    /// `path` is the raw (unencoded) object path starting with "/"; `query` raw pairs; `headers`
    /// must include host. Every given header is signed.
    func sign(method: String, path: String, query: [(String, String)], headers: [(String, String)],
              payloadHash: String, date: Date) -> Signed {
        let (amzDate, day) = Self.timestamps(date)
        var all = headers.map { ($0.0.lowercased(), Self.trimHeaderValue($0.1)) }
        all.append(("x-amz-date", amzDate))
        all.append(("x-amz-content-sha256", payloadHash))
        if let sessionToken { all.append(("x-amz-security-token", sessionToken)) }
        // Sorted by name; repeated names are joined with commas in order (SigV4 rule).
        var merged: [String: [String]] = [:]
        for (name, value) in all { merged[name, default: []].append(value) }
        let names = merged.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let canonicalRequest = [
            method, Self.uriEncode(path, keepSlash: true), Self.canonicalQuery(query),
            canonicalHeaders, signedHeaders, payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, SHA256Digest.hex(of: canonicalRequest)]
            .joined(separator: "\n")
        var key = HMACSHA256.mac(key: Array("AWS4\(secretAccessKey)".utf8), day)
        key = HMACSHA256.mac(key: key, region)
        key = HMACSHA256.mac(key: key, service)
        key = HMACSHA256.mac(key: key, "aws4_request")
        let signature = SHA256Digest.hexString(HMACSHA256.mac(key: key, stringToSign))
        var out: [(String, String)] = [
            ("Authorization", "AWS4-HMAC-SHA256 Credential=\(accessKeyID)/\(scope), "
                + "SignedHeaders=\(signedHeaders), Signature=\(signature)"),
            ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash),
        ]
        if let sessionToken { out.append(("x-amz-security-token", sessionToken)) }
        return Signed(canonicalRequest: canonicalRequest, stringToSign: stringToSign, signature: signature, headers: out)
    }

    /// "20130524T000000Z" and "20130524", in UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : String(v) }
        let year = String(parts.tm_year + 1900)
        let day: String = year + two(parts.tm_mon + 1) + two(parts.tm_mday)
        let time: String = two(parts.tm_hour) + two(parts.tm_min) + two(parts.tm_sec)
        return (day + "T" + time + "Z", day)
    }

    /// AWS's URI encoding: everything but A-Z a-z 0-9 - . _ ~ is %XX (uppercase), per UTF-8 byte;
    /// '/' is kept in paths only.
    static func uriEncode(_ text: String, keepSlash: Bool) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out = [UInt8]()
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(byte)
            case UInt8(ascii: "/") where keepSlash:
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Encoded pairs sorted by name then value; "uploads" with no value becomes "uploads=".
    static func canonicalQuery(_ query: [(String, String)]) -> String {
        let encoded: [(name: String, value: String)] = query.map {
            (uriEncode($0.0, keepSlash: false), uriEncode($0.1, keepSlash: false))
        }
        let sorted = encoded.sorted { a, b in a.name == b.name ? a.value < b.value : a.name < b.name }
        return sorted.map { pair in pair.name + "=" + pair.value }.joined(separator: "&")
    }

    /// Leading/trailing space removed, inner runs of spaces collapsed to one.
    static func trimHeaderValue(_ value: String) -> String {
        value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }
}
