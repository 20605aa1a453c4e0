import Foundation
import Glibc

/// `strata bench store`: the NVMe block log measured through its own API, `queueDepth`
/// operations in flight. `put` appends `size / blockSize` blocks (cache durability); `rand-get`
/// fills the log first if needed, then reads blocks at random into reused buffers, verifying
/// every checksum as a real get does; `seq-read` imports a `size` file as an object with
/// `blockSize` chunks (once; later runs reuse it) and streams the whole object, verified, into
/// a pre-faulted buffer, as a model load does.
public struct StoreBenchmark: Sendable {
    public enum Pattern: String, Sendable, CaseIterable {
        case put
        case randGet = "rand-get"
        case seqRead = "seq-read"
        /// Host-tier gets (borrowed in place) against memcpy of the same size, alternating.
        case hostGet = "host-get"
    }

    public var directory: String
    public var totalBytes: UInt64
    public var blockSize: Int
    public var queueDepth: Int
    public var pattern: Pattern

    public init(directory: String, totalBytes: UInt64, blockSize: Int, queueDepth: Int, pattern: Pattern) {
        self.directory = directory
        self.totalBytes = totalBytes
        self.blockSize = blockSize
        self.queueDepth = queueDepth
        self.pattern = pattern
    }

    static func key(_ i: Int) -> BlockKey { BlockKey(bytes: Array("bench-\(i)".utf8)) }

    /// A log block's key: named by its size too, so a `--dir` reused with another `--block-size`
    /// fills blocks of that size rather than reading the earlier ones into buffers sized for it.
    static func key(_ i: Int, size: Int) -> BlockKey { BlockKey(bytes: Array("bench-\(size)-\(i)".utf8)) }

    public func run(engine: any IOEngine) async throws -> IOBenchmark.Result {
        if pattern == .hostGet { return try runHostGet() }
        if pattern == .seqRead { return try await runSeqRead(engine: engine) }
        let blocks = max(1, Int(totalBytes / UInt64(blockSize)))
        let segmentBytes = max(64 << 20, BlockHeader.recordLength(storedLength: blockSize) * 4)
        let log = try await SegmentLog.open(
            .init(directory: directory, segmentBytes: segmentBytes, budgetBytes: UInt64.max / 2), engine: engine)
        let payload = BenchmarkBytes.bytes(blockSize)
        if pattern == .randGet {
            // fill what is missing, without timing it
            _ = try await Parallel.run(workers: queueDepth, count: blocks) { i in
                if await !log.contains(Self.key(i, size: blockSize)) { try await log.put(Self.key(i, size: blockSize), payload, durable: false) }
            }
        }
        let recordLength = max(BlockHeader.recordLength(storedLength: blockSize), blockSize)
        let pool = IOBufferPool(perClass: queueDepth)
        let started = ContinuousClock.now
        let latencies: [Double] = try await Parallel.run(workers: queueDepth, count: blocks) { i in
            let t0 = ContinuousClock.now
            switch pattern {
            case .put:
                try await log.put(Self.key(i, size: blockSize), payload, durable: false)
            case .hostGet, .seqRead:
                preconditionFailure("handled by runHostGet and runSeqRead")
            case .randGet:
                let buffer = pool.take(atLeast: recordLength)
                defer { pool.give(buffer) }
                var seed = UInt64(i + 1) &* 0x9E37_79B9_7F4A_7C15
                seed ^= seed >> 29
                guard try await log.get(Self.key(Int(seed % UInt64(blocks)), size: blockSize), into: buffer) != nil else {
                    throw IOError(operation: "get", errno: ENOENT, detail: "a filled block was missing or corrupt")
                }
            }
            return (ContinuousClock.now - t0).microseconds
        }
        let seconds = (ContinuousClock.now - started).microseconds / 1e6
        await log.close()
        return IOBenchmark.Result.measured(
            engine: engine.name, pattern: pattern.rawValue, blockSize: blockSize, queueDepth: queueDepth,
            latencies: latencies, seconds: seconds)
    }

    /// One whole-object read, timed; per-chunk latencies from submission to verified copy.
    func runSeqRead(engine: any IOEngine) async throws -> IOBenchmark.Result {
        let segmentBytes = max(256 << 20, BlockHeader.recordLength(storedLength: blockSize) * 4)
        let log = try await SegmentLog.open(
            .init(directory: directory, segmentBytes: segmentBytes, budgetBytes: UInt64.max / 2), engine: engine)
        let store = try await ObjectStore.open(log: log, queueDepth: queueDepth)
        let name = "bench-seq-\(totalBytes)-\(blockSize)"
        if store.info(name) == nil {
            // the source file is written once with O_DIRECT, imported, then removed
            let source = directory + "/source.bin"
            try await IOBenchmark(path: source, fileSize: totalBytes, blockSize: 1 << 20, queueDepth: 4,
                                  pattern: .seqRead, direct: true).prepare(engine: engine)
            try await store.importFile(name, path: source, chunkSize: blockSize)
            unlink(source)
        }
        let destination = IOBuffer(count: Int(totalBytes))
        let latencies = IOBenchmark.Samples()
        let started = ContinuousClock.now
        try await store.read(name, into: destination.bytes, chunkTimes: { latencies.add($0.microseconds) })
        let seconds = (ContinuousClock.now - started).microseconds / 1e6
        await log.close()
        return IOBenchmark.Result.measured(
            engine: engine.name, pattern: pattern.rawValue, blockSize: blockSize, queueDepth: queueDepth,
            latencies: latencies.values, seconds: seconds)
    }

    /// Random gets from a host tier filled with `totalBytes` of blocks (borrow the view, read its
    /// first and last byte, release: what a zero-copy consumer pays before using the bytes),
    /// against a memcpy of the same size from a random block of an equally large pre-faulted
    /// region, in alternating batches. The memcpy figures come back as the baseline fields.
    func runHostGet() throws -> IOBenchmark.Result {
        let blocks = max(1, Int(totalBytes / UInt64(blockSize)))
        let tier = try HostTier(budgetBytes: Int(totalBytes) + HostTier.unitSize)
        let payload = BenchmarkBytes.bytes(blockSize)
        for i in 0..<blocks { _ = payload.withUnsafeBytes { tier.put(Self.key(i), $0) } }
        let region = IOBuffer(count: blocks * blockSize), target = IOBuffer(count: blockSize)
        var gets: [Double] = [], copies: [Double] = []
        var sink: UInt64 = 0
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        let rounds = max(blocks, 2000)
        for batch in 0..<(rounds / 100) {
            for which in (batch % 2 == 0 ? [0, 1] : [1, 0]) {
                for _ in 0..<100 {
                    let t0 = ContinuousClock.now
                    if which == 0 {
                        seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
                        _ = tier.withBlock(Self.key(Int(seed % UInt64(blocks)))) { bytes in
                            sink &+= UInt64(bytes[0]) &+ UInt64(bytes[bytes.count - 1])
                        }
                    } else {
                        seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
                        let from = Int(seed % UInt64(blocks)) * blockSize
                        target.pointer.copyMemory(from: region.pointer + from, byteCount: blockSize)
                        sink &+= UInt64(target.bytes[0]) &+ UInt64(target.bytes[blockSize - 1])
                    }
                    let us = (ContinuousClock.now - t0).microseconds
                    if which == 0 { gets.append(us) } else { copies.append(us) }
                }
            }
        }
        precondition(sink != 1, "keeps the reads from being optimized away")
        var result = IOBenchmark.Result.measured(
            engine: "host", pattern: pattern.rawValue, blockSize: blockSize, queueDepth: 1, latencies: gets,
            seconds: gets.reduce(0, +) / 1e6)
        let copy = IOBenchmark.Result.measured(
            engine: "memcpy", pattern: pattern.rawValue, blockSize: blockSize, queueDepth: 1, latencies: copies,
            seconds: copies.reduce(0, +) / 1e6)
        result.baseline_p50_us = copy.p50_us
        result.baseline_bytes_per_second = Double(blockSize) / (copy.p50_us / 1e6)
        return result
    }
}

/// Deterministic filler bytes for benchmarks.
enum BenchmarkBytes {
    static func bytes(_ count: Int) -> [UInt8] {
        var state: UInt64 = 0x1234_5678
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }
}
