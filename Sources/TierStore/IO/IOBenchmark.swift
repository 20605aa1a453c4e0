import Foundation
import Glibc

/// Measures an I/O engine on one file the way fio does: `queueDepth` reads or writes of
/// `blockSize` in flight at once, sequential or random, with O_DIRECT by default. Buffers are
/// allocated and touched before the clock starts.
public struct IOBenchmark: Sendable {
    public enum Pattern: String, Sendable, CaseIterable {
        case seqRead = "seq-read"
        case randRead = "rand-read"
        case seqWrite = "seq-write"
    }

    public struct Result: Sendable, Codable {
        public var engine: String
        public var pattern: String
        public var block_size: Int
        public var queue_depth: Int
        public var bytes: UInt64
        public var seconds: Double
        public var bytes_per_second: Double
        public var iops: Double
        public var p50_us: Double
        public var p99_us: Double
        /// For benchmarks measured against a baseline in the same run (host-get: memcpy).
        public var baseline_p50_us: Double? = nil
        public var baseline_bytes_per_second: Double? = nil

        /// Figures of `latencies` (microseconds, one per operation of `blockSize` bytes) taken in `seconds`.
        static func measured(engine: String, pattern: String, blockSize: Int, queueDepth: Int, latencies: [Double],
                             seconds: Double) -> Result {
            let sorted = latencies.sorted()
            func percentile(_ p: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(p / 100 * Double(sorted.count - 1)))]
            }
            let bytes = UInt64(sorted.count) * UInt64(blockSize)
            return Result(
                engine: engine, pattern: pattern, block_size: blockSize, queue_depth: queueDepth, bytes: bytes,
                seconds: seconds, bytes_per_second: Double(bytes) / seconds, iops: Double(sorted.count) / seconds,
                p50_us: percentile(50), p99_us: percentile(99))
        }
    }

    public var path: String
    public var fileSize: UInt64
    public var blockSize: Int
    public var queueDepth: Int
    public var pattern: Pattern
    public var direct: Bool

    public init(path: String, fileSize: UInt64, blockSize: Int, queueDepth: Int, pattern: Pattern, direct: Bool = true) {
        self.path = path
        self.fileSize = fileSize
        self.blockSize = blockSize
        self.queueDepth = queueDepth
        self.pattern = pattern
        self.direct = direct
    }

    /// Creates or extends the file to `fileSize` with non-zero data, so reads hit real blocks.
    public func prepare(engine: any IOEngine) async throws {
        var info = stat()
        if stat(path, &info) == 0 && UInt64(info.st_size) >= fileSize { return }
        let fd = open(path, O_WRONLY | O_CREAT, 0o644)
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        let chunk = IOBuffer(count: 4 << 20)
        for i in stride(from: 0, to: chunk.count, by: 8) {
            chunk.pointer.storeBytes(of: UInt64(i) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: i, as: UInt64.self)
        }
        var offset: UInt64 = 0
        while offset < fileSize {
            let length = Int(min(UInt64(chunk.count), fileSize - offset))
            try await engine.write(fd: fd, from: chunk, range: 0..<length, at: offset)
            offset += UInt64(length)
        }
        try await engine.sync(fd: fd, dataOnly: false)
    }

    public func run(engine: any IOEngine) async throws -> Result {
        precondition(blockSize > 0 && fileSize >= UInt64(blockSize) && queueDepth > 0)
        let writing = pattern == .seqWrite
        // (A write run creates its file, as fio does.)
        let flags = (writing ? O_WRONLY | O_CREAT : O_RDONLY) | (direct ? O_DIRECT : 0)
        let fd = open(path, flags, 0o644)
        guard fd >= 0 else { throw IOError(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        let blockSize = self.blockSize
        let blocks = Int(fileSize / UInt64(blockSize))
        let buffers = (0..<queueDepth).map { _ in IOBuffer(count: blockSize) }
        let next = Counter()
        let random = pattern == .randRead
        let started = ContinuousClock.now
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for worker in 0..<queueDepth {
                let buffer = buffers[worker]
                group.addTask {
                    var seed = UInt64(worker + 1) &* 0x2545_F491_4F6C_DD1D
                    var samples: [Double] = []
                    while let index = next.take(below: blocks) {
                        var block = index
                        if random {
                            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
                            block = Int(seed % UInt64(blocks))
                        }
                        let offset = UInt64(block) * UInt64(blockSize)
                        let t0 = ContinuousClock.now
                        if writing {
                            try await engine.write(fd: fd, from: buffer, at: offset)
                        } else {
                            let n = try await engine.read(fd: fd, into: buffer, at: offset)
                            guard n == blockSize else { throw IOError(operation: "read", errno: EIO, detail: "short read \(n)") }
                        }
                        samples.append((ContinuousClock.now - t0).microseconds)
                    }
                    return samples
                }
            }
            var all: [Double] = []
            for try await samples in group { all += samples }
            return all
        }
        if writing { try await engine.sync(fd: fd, dataOnly: true) }
        return Result.measured(
            engine: engine.name, pattern: pattern.rawValue, blockSize: blockSize, queueDepth: queueDepth,
            latencies: latencies, seconds: (ContinuousClock.now - started).microseconds / 1e6)
    }

    /// Hands out block indexes 0..<n once each across workers.
    /// Latency samples collected from concurrent tasks.
    final class Samples: @unchecked Sendable {
        private var samples: [Double] = []
        private let lock = NSLock()
        func add(_ value: Double) {
            lock.lock()
            samples.append(value)
            lock.unlock()
        }
        var values: [Double] {
            lock.lock()
            defer { lock.unlock() }
            return samples
        }
    }

    final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = NSLock()
        func take(below limit: Int) -> Int? {
            lock.lock()
            defer { lock.unlock() }
            guard value < limit else { return nil }
            value += 1
            return value - 1
        }
    }
}

extension Duration {
    var microseconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) * 1e6 + Double(attoseconds) / 1e12
    }
}
