import Testing
@testable import TierStore

struct RemoteLocationTests {
    @Test(arguments: [
        ("file:///models/a.gguf", RemoteLocation.file(path: "/models/a.gguf")),
        ("/models/a.gguf", .file(path: "/models/a.gguf")),
        ("  /x  ", .file(path: "/x")),
        ("http://127.0.0.1:8081/m.gguf", .http(url: "http://127.0.0.1:8081/m.gguf")),
        ("HTTPS://example.com/a?b=c", .http(url: "HTTPS://example.com/a?b=c")),
        ("s3://bucket/key/with/slashes.bin", .s3(bucket: "bucket", key: "key/with/slashes.bin")),
        ("s3://my.bucket-1/k", .s3(bucket: "my.bucket-1", key: "k")),
    ])
    func goodLocationsParse(text: String, expected: RemoteLocation) throws {
        #expect(try RemoteLocation(parsing: text) == expected)
    }

    @Test(arguments: [
        ("", "it is empty"),
        ("relative/path", "unknown scheme"),
        ("file://relative", "absolute path"),
        ("http:///nohost", "no host"),
        ("s3://", "bucket is missing"),
        ("s3://bucket", "key is missing"),
        ("s3://bucket/", "key is missing"),
        ("s3://bad bucket/k", "is not a bucket name"),
        ("ftp://host/x", "unknown scheme"),
    ])
    func badLocationsSayWhatWasExpected(text: String, why: String) {
        do {
            _ = try RemoteLocation(parsing: text)
            Issue.record("\"\(text)\" parsed")
        } catch {
            #expect(error.code == .badLocation)
            #expect(error.message.contains("\"\(text)\""))
            #expect(error.message.contains(why), "\(error.message)")
            #expect(error.message.contains("expected file:///abs/path"))
        }
    }

    @Test func descriptionsHideCredentialsAndSignatures() {
        #expect(RemoteLocation.http(url: "https://user:pw@host/a/b?X-Amz-Signature=abc").description == "https://host/a/b")
        #expect(RemoteLocation.s3(bucket: "b", key: "k/x").description == "s3://b/k/x")
    }

    @Test func s3SettingsComeFromTheEnvironmentWhenUnset() {
        let none = S3Settings().resolved(environment: [:])
        #expect(none.region == "us-east-1")
        #expect(none.endpoint == "https://s3.us-east-1.amazonaws.com")
        #expect(none.credentials == nil, "no key at all: anonymous requests")
        #expect(!none.pathStyle && none.isAWSEndpoint)

        let env = [
            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK",
        ]
        let fromEnv = S3Settings().resolved(environment: env)
        #expect(fromEnv.region == "eu-west-1")
        #expect(fromEnv.endpoint == "http://127.0.0.1:9000")
        #expect(fromEnv.pathStyle, "custom endpoints use path style")
        #expect(fromEnv.credentials == .init(accessKeyID: "AK", secretAccessKey: "SK", sessionToken: "TOK"))

        // AWS_REGION beats AWS_DEFAULT_REGION; the S3-specific endpoint beats the general one.
        let specific = S3Settings().resolved(environment: env.merging([
            "AWS_REGION": "ap-south-1", "AWS_ENDPOINT_URL_S3": "http://s3.local:1"] as [String: String]) { $1 })
        #expect(specific.region == "ap-south-1" && specific.endpoint == "http://s3.local:1")

        // Explicit settings win over the environment.
        let explicit = S3Settings(region: "r", endpoint: "http://e:2", accessKeyID: "A", secretAccessKey: "S")
            .resolved(environment: env)
        #expect(explicit.region == "r" && explicit.endpoint == "http://e:2")
        #expect(explicit.credentials == .init(accessKeyID: "A", secretAccessKey: "S", sessionToken: "TOK"))
        #expect(S3Settings(pathStyle: true).resolved(environment: [:]).pathStyle)
    }

    @Test func remoteSettingsDefaultsAndValidation() throws {
        let settings = RemoteSettings()
        #expect(settings.parallelism == 8 && settings.chunkBytes == 8 << 20 && settings.retries == 5)
        #expect(settings.multipartThreshold == 64 << 20 && settings.partBytes == 16 << 20)
        try settings.validate()
        var bad = settings
        bad.partBytes = 1 << 20
        #expect(throws: RemoteError.self) { try bad.validate() }
        do { try bad.validate() } catch { #expect(error.message.contains("partBytes = 1048576")) }
    }

    @Test func s3RequestsAreSignedForTheEndpointInUse() throws {
        let settings = RemoteSettings(s3: S3Settings(region: "us-east-1", endpoint: "http://127.0.0.1:9000",
                                                     accessKeyID: "AK", secretAccessKey: "SK"))
        let client = RemoteClient(settings: settings, environment: [:])
        let request = try client.makeRequest(.s3(bucket: "b", key: "dir/a b+c.bin"), method: "GET",
                                             headers: [("Range", "bytes=0-9")])
        #expect(request.url == "http://127.0.0.1:9000/b/dir/a%20b%2Bc.bin")
        #expect(request.headers.contains("Host: 127.0.0.1:9000"))
        let auth = try #require(request.headers.first { $0.hasPrefix("Authorization: ") })
        #expect(auth.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"))

        let aws = RemoteClient(settings: RemoteSettings(), environment: [:])
        let anonymous = try aws.makeRequest(.s3(bucket: "models", key: "x.gguf"), method: "HEAD")
        #expect(anonymous.url == "https://models.s3.us-east-1.amazonaws.com/x.gguf")
        #expect(!anonymous.headers.contains { $0.hasPrefix("Authorization") })
    }
}
