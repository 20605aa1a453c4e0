// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "strata",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "strata", targets: ["strata"]),
        .library(name: "TierStore", targets: ["TierStore"]),
        .library(name: "Placer", targets: ["Placer"]),
        .library(name: "Frontend", targets: ["Frontend"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.24.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.0"),
    ],
    targets: [
        // C stays at the edge: fork/exec with a parent-death signal, process groups.
        .target(name: "CStrataProcess"),

        // liburing behind an opaque API; liburing.h never reaches a Swift module.
        .target(name: "CStrataURing", linkerSettings: [.linkedLibrary("uring")]),

        // The storage tiers (host RAM, NVMe, remote): so far the I/O engines and the tier configuration.
        // libxxhash (XXH3) behind plain types.
        .target(name: "CStrataHash", linkerSettings: [.linkedLibrary("xxhash")]),

        // liblz4 block compression behind plain types.
        .target(name: "CStrataLZ4", linkerSettings: [.linkedLibrary("lz4")]),

        // libcurl (HTTP range GETs, S3) and libcrypto's SHA-256/HMAC behind plain types; reached
        // only from TierStore/Remote/CurlTransfer.swift and SHA256.swift.
        .target(name: "CStrataCurl", linkerSettings: [.linkedLibrary("curl"), .linkedLibrary("crypto")]),

        // NVML through dlopen (no NVIDIA driver needed to build or run); reached only from
        // StrataDaemon/GPUDiscovery.swift.
        .target(name: "CStrataNVML", linkerSettings: [.linkedLibrary("dl")]),

        // SQLite for the NVMe tier's catalog; reached only from TierStore/Catalog.
        .systemLibrary(name: "CSQLite3", providers: [.apt(["libsqlite3-dev"])]),

        .target(
            name: "TierStore",
            dependencies: [
                "CStrataURing", "CStrataHash", "CSQLite3", "CStrataLZ4", "CStrataCurl",
                .product(name: "Metrics", package: "swift-metrics"), .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // Pure placement decisions: events in, actions out, injected clock. No I/O.
        .target(name: "Placer"),

        // The HTTP face: OpenAI-compatible gateway, admin endpoints, metrics endpoint.
        .target(
            name: "Frontend",
            dependencies: [
                "CStrataHash",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            ]
        ),

        // The wiring: config file → typed structs, the runtime supervisor that carries out the
        // Placer's actions, and the services. Only this target knows all three modules.
        .target(
            name: "StrataDaemon",
            dependencies: [
                "TierStore", "Placer", "Frontend", "CStrataProcess", "CStrataNVML",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .executableTarget(
            name: "strata",
            dependencies: [
                "StrataDaemon", "TierStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        // Shared by the test targets: the seeded generator of the simulations and fuzz tests.
        .target(name: "StrataTestSupport", path: "Tests/Support"),
        .testTarget(name: "PlacerTests", dependencies: ["Placer", "StrataTestSupport"]),
        .testTarget(
            name: "FrontendTests",
            dependencies: [
                "Frontend", "StrataTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ]
        ),
        .testTarget(name: "StrataDaemonTests", dependencies: ["StrataDaemon", "Placer", "TierStore", "StrataTestSupport"]),
        // Test support: writes blocks until killed, for the crash-recovery tests.
        .executableTarget(name: "strata-fault-writer", dependencies: ["TierStore"]),
        .testTarget(
            name: "TierStoreTests",
            dependencies: [
                "TierStore", "strata-fault-writer", .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
    ]
)
