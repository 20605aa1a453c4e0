import Foundation
import Testing
@testable import TierStore

/// SigV4 against AWS's published S3 examples ("Examples: Signature Calculations in AWS Signature
/// Version 4" and the header-based-auth page): same keys, same date, same expected signatures.
struct RemoteSigningTests {
    static let signer = SigV4Signer(accessKeyID: "AKIAIOSFODNN7EXAMPLE",
                                    secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                    sessionToken: nil, region: "us-east-1")
    static let date = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z

    @Test func getObjectWithRange() {
        let signed = Self.signer.sign(method: "GET", path: "/test.txt", query: [],
                                      headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9")],
                                      payloadHash: SigV4Signer.emptyPayloadHash, date: Self.date)
        #expect(signed.canonicalRequest == """
            GET
            /test.txt

            host:examplebucket.s3.amazonaws.com
            range:bytes=0-9
            x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            x-amz-date:20130524T000000Z

            host;range;x-amz-content-sha256;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        #expect(signed.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(signed.headers.first?.1 == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func putObject() {
        let payload = SHA256Digest.hex(of: "Welcome to Amazon S3.")
        #expect(payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let signed = Self.signer.sign(
            method: "PUT", path: "/test$file.text", query: [],
            headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                      ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
            payloadHash: payload, date: Self.date)
        #expect(signed.canonicalRequest.hasPrefix("PUT\n/test%24file.text\n\n"))
        #expect(signed.signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    @Test func listObjectsWithQuery() {
        let signed = Self.signer.sign(method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")],
                                      headers: [("Host", "examplebucket.s3.amazonaws.com")],
                                      payloadHash: SigV4Signer.emptyPayloadHash, date: Self.date)
        #expect(signed.signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test func sessionTokenIsSigned() {
        var signer = Self.signer
        signer.sessionToken = "TOKEN"
        let signed = signer.sign(method: "HEAD", path: "/k", query: [], headers: [("Host", "h")],
                                 payloadHash: SigV4Signer.emptyPayloadHash, date: Self.date)
        #expect(signed.canonicalRequest.contains("x-amz-security-token:TOKEN\n"))
        #expect(signed.headers.contains { $0.0 == "x-amz-security-token" && $0.1 == "TOKEN" })
    }

    @Test func uriEncodingFollowsAWSRules() {
        #expect(SigV4Signer.uriEncode("a/b c+d~e_f.g-h", keepSlash: true) == "a/b%20c%2Bd~e_f.g-h")
        #expect(SigV4Signer.uriEncode("a/b", keepSlash: false) == "a%2Fb")
        #expect(SigV4Signer.uriEncode("ключ", keepSlash: true) == "%D0%BA%D0%BB%D1%8E%D1%87")
        #expect(SigV4Signer.canonicalQuery([("uploads", "")]) == "uploads=")
        #expect(SigV4Signer.canonicalQuery([("uploadId", "a/b="), ("partNumber", "2")]) == "partNumber=2&uploadId=a%2Fb%3D")
        #expect(SigV4Signer.trimHeaderValue("  a   b  ") == "a b")
    }

    @Test func sha256KnownVectors() {
        #expect(SHA256Digest.hex(of: "") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Digest.hex(of: "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // Streaming in pieces gives the same digest as one call.
        var digest = SHA256Digest()
        digest.update(Array("a".utf8))
        digest.update(Array("bc".utf8))
        #expect(digest.finalize() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func hmacRFC4231TestCase2() {
        let mac = HMACSHA256.mac(key: Array("Jefe".utf8), "what do ya want for nothing?")
        #expect(SHA256Digest.hexString(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }
}
