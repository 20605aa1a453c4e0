import Foundation
import Testing
@testable import StrataDaemon

/// Footprints: the GGUF header reader (a real model file, synthetic files, broken and hostile
/// ones), the estimate from it and the llama-server arguments, and the /proc measurement.
struct FootprintTests {
    // MARK: - A real model

    static let smolLM2: String = {
        let cache = ProcessInfo.processInfo.environment["STRATA_CACHE"]
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/strata").path
        return cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    }()

    @Test(.enabled(if: FileManager.default.fileExists(atPath: smolLM2),
                   "SmolLM2-135M-Instruct.Q4_1.gguf is not in ${STRATA_CACHE:-~/.cache/strata}/models"))
    func readsTheSmolLM2Header() throws {
        let metadata = try GGUFMetadata.read(path: Self.smolLM2)
        // As the header says (checked with an independent reader of the format).
        #expect(metadata.version == 3 && metadata.tensorCount == 272)
        #expect(metadata.architecture == "llama")
        #expect(metadata.blockCount == 30)
        #expect(metadata.contextLength == 8192)
        #expect(metadata.embeddingLength == 576)
        #expect(metadata.headCount == 9 && metadata.headCountKV == 3)
        #expect(metadata.keyLength == 64 && metadata.valueLength == 64, "no key_length key: 576 / 9")
        #expect(metadata.vocabularySize == 49152)
        #expect(metadata.values["tokenizer.ggml.tokens"] == .array(.string, 49152))
        #expect(metadata.values["tokenizer.ggml.merges"] == .array(.string, 48900))
        #expect(metadata.values["llama.rope.freq_base"] == .float(100000))
        #expect(metadata.tensorDataOffset == 1_785_664)
        #expect(metadata.tensorDataOffset + metadata.tensorDataBytes == metadata.fileBytes)
        #expect(metadata.tensorDataBytes == 96_576_768)

        let size = metadata.fileBytes
        let at4096 = FootprintEstimate.estimate(weightBytes: size, metadata: metadata, runtimeArgs: ["-c", "4096"])
        // 2 (K, V) × 30 layers × 4096 ctx × 3 heads × 64 × 2 bytes (f16)
        #expect(at4096.kvCache == 2 * 30 * 4096 * 3 * 64 * 2)
        #expect(at4096.kvCache == 90 << 20, "llama-server logs: size = 90.00 MiB (4096 cells, 30 layers)")
        #expect(at4096.overhead == 64 << 20, "the floor: 5 % of 94 MiB is less")
        #expect(at4096.total == size + at4096.kvCache + at4096.overhead)
        #expect(at4096.basis == .gguf && at4096.contextLength == 4096)
        let trained = FootprintEstimate.estimate(weightBytes: size, metadata: metadata, runtimeArgs: [])
        #expect(trained.kvCache == 2 * at4096.kvCache && trained.contextLength == 8192)
    }

    // MARK: - Synthetic files

    @Test(arguments: [UInt32(2), 3])
    func readsSyntheticFilesOfEveryValueType(version: UInt32) throws {
        let file = SyntheticGGUF.standard(version: version)
        let path = try file.write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let metadata = try GGUFMetadata.read(path: path)
        #expect(metadata == (try GGUFMetadata.parse(file.bytes)))
        #expect(metadata.version == version && metadata.tensorCount == 2)
        #expect(metadata.architecture == "testarch")
        #expect(metadata.blockCount == 4 && metadata.contextLength == 2048 && metadata.embeddingLength == 256)
        #expect(metadata.headCount == 8)
        #expect(metadata.headCountKV == 8, "the largest of the per-layer counts")
        #expect(metadata.headCountKVPerLayer == [0, 8, 8, 4])
        #expect(metadata.keyLength == 48 && metadata.valueLength == 32, "explicit lengths win over 256 / 8")
        #expect(metadata.vocabularySize == 3, "the token list's length")
        #expect(metadata.values["u8"] == .unsigned(200) && metadata.values["i8"] == .signed(-5))
        #expect(metadata.values["u16"] == .unsigned(60000) && metadata.values["i16"] == .signed(-30000))
        #expect(metadata.values["i32"] == .signed(-7) && metadata.values["u64"] == .unsigned(UInt64.max))
        #expect(metadata.values["i64"] == .signed(Int64.min) && metadata.values["f32"] == .float(1.5))
        #expect(metadata.values["f64"] == .float(-2.25) && metadata.values["yes"] == .bool(true))
        #expect(metadata.values["empty"] == .string("") && metadata.values["unicode"] == .string("héllo ✓"))
        #expect(metadata.values["floats"] == .array(.float32, 3))
        #expect(metadata.values["nested"] == .array(.array, 2))
        #expect(metadata.values["long"] == .array(.uint8, 5000), "longer than the kept limit: skipped")
        #expect(metadata.tensorDataOffset == UInt64(file.dataOffset) && metadata.tensorDataOffset % 64 == 0)
        #expect(metadata.tensorDataBytes == 1000)
    }

    @Test func everyTruncationThrowsAClearError() throws {
        let file = SyntheticGGUF.standard(version: 3)
        for length in 0..<file.dataOffset {
            let error = #expect(throws: GGUFError.self) { try GGUFMetadata.parse(Array(file.bytes.prefix(length))) }
            #expect(error?.code == (length < 4 ? .notGGUF : .truncated), "\(length): \(error.map(String.init(describing:)) ?? "")")
        }
        // through the file reader as well
        let path = try SyntheticGGUF(bytes: Array(file.bytes.prefix(file.dataOffset / 2)), dataOffset: 0).write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let error = #expect(throws: GGUFError.self) { try GGUFMetadata.read(path: path) }
        #expect(error?.code == .truncated && error?.description.contains("ends inside") == true)
    }

    @Test func corruptAndHostileHeadersThrowWithoutHugeAllocations() throws {
        func code(_ bytes: [UInt8], limit: UInt64 = GGUFMetadata.defaultHeaderLimit) -> GGUFError.Code? {
            do { _ = try GGUFMetadata.parse(bytes, headerLimit: limit); return nil } catch { return (error as? GGUFError)?.code }
        }
        var w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        #expect(code(Array("GGML".utf8) + w.bytes.dropFirst(4)) == .notGGUF)
        #expect(code(SyntheticGGUF.Writer(version: 1, tensors: 0, pairs: 0).bytes) == .unsupportedVersion)
        var bigEndian = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 0).bytes
        bigEndian.replaceSubrange(4..<8, with: [0, 0, 0, 3])
        #expect(throws: GGUFError.self) { try GGUFMetadata.parse(bigEndian) }
        #expect((try? GGUFMetadata.parse(bigEndian)) == nil)
        do { _ = try GGUFMetadata.parse(bigEndian) } catch { #expect("\(error)".contains("big-endian")) }

        // counts no file can hold: refused before any loop or allocation
        #expect(code(SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: .max).bytes) == .malformed)
        #expect(code(SyntheticGGUF.Writer(version: 3, tensors: .max, pairs: 0).bytes) == .malformed)
        w.key("k"); w.u32(GGUFValueType.array.rawValue); w.u32(GGUFValueType.uint64.rawValue); w.u64(1 << 61)
        #expect(code(w.bytes) == .malformed)
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.key("k"); w.u32(GGUFValueType.array.rawValue); w.u32(GGUFValueType.string.rawValue); w.u64(.max / 4)
        #expect(code(w.bytes) == .malformed)
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.key("k"); w.u32(GGUFValueType.string.rawValue); w.u64(.max)
        #expect(code(w.bytes) == .malformed)
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.u64(1 << 40)   // a key claiming a terabyte
        #expect(code(w.bytes + [UInt8](repeating: 0, count: 64)) == .malformed)
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.key("k"); w.u32(99); w.u32(0)
        #expect(code(w.bytes) == .malformed, "unknown value type")
        w = SyntheticGGUF.Writer(version: 3, tensors: 1, pairs: 0)
        w.string("t"); w.u32(5); w.bytes += [UInt8](repeating: 0, count: 64)
        #expect(code(w.bytes) == .malformed, "5 dimensions")
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.key("general.alignment"); w.u32(GGUFValueType.uint32.rawValue); w.u32(0)
        #expect(code(w.bytes) == .malformed, "alignment 0")
        // arrays of arrays of arrays … past the nesting bound
        w = SyntheticGGUF.Writer(version: 3, tensors: 0, pairs: 1)
        w.key("deep")
        w.u32(GGUFValueType.array.rawValue)
        for _ in 0..<6 { w.u32(GGUFValueType.array.rawValue); w.u64(1) }
        w.u32(GGUFValueType.uint8.rawValue); w.u64(1); w.bytes += [1]
        #expect(code(w.bytes) == .malformed)

        // a header that reaches past the limit
        let file = SyntheticGGUF.standard(version: 3)
        #expect(code(file.bytes, limit: 100) == .tooLarge)
        #expect(code(file.bytes, limit: UInt64(file.dataOffset)) == nil)
        #expect(throws: GGUFError.self) { try GGUFMetadata.read(path: "/nonexistent/model.gguf") }
        #expect(throws: GGUFError.self) { try GGUFMetadata.read(path: NSTemporaryDirectory()) }
    }

    /// Seeded random corruption of a valid file: every outcome is a value or a GGUFError.
    @Test func randomCorruptionNeverCrashes() {
        let file = SyntheticGGUF.standard(version: 3)
        var seed: UInt64 = 0x5EED
        func next() -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int(truncatingIfNeeded: seed >> 33)
        }
        var parsed = 0, refused = 0
        for _ in 0..<3000 {
            var bytes = file.bytes
            for _ in 0...(next() % 4) {
                let at = next() % file.dataOffset
                bytes[at] = next() % 3 == 0 ? 0xFF : UInt8(truncatingIfNeeded: next())
            }
            do {
                _ = try GGUFMetadata.parse(bytes)
                parsed += 1
            } catch is GGUFError {
                refused += 1
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        #expect(parsed > 0 && refused > 0)
    }

    // MARK: - The estimate

    /// Llama 3.1 8B's shape: 32 layers, 8 KV heads of 128, 131072 trained context, 128256 tokens.
    static let llama8B = GGUFMetadata(
        version: 3, tensorCount: 291,
        values: [
            "general.architecture": .string("llama"), "llama.block_count": .unsigned(32),
            "llama.context_length": .unsigned(131072), "llama.embedding_length": .unsigned(4096),
            "llama.attention.head_count": .unsigned(32), "llama.attention.head_count_kv": .unsigned(8),
            "llama.vocab_size": .unsigned(128256),
        ],
        tensorDataOffset: 8 << 20, tensorDataBytes: 4_900_000_000, fileBytes: 4_908_388_608)

    @Test func theKVCacheFollowsContextAndCacheTypes() {
        let weights = Self.llama8B.fileBytes
        func kv(_ args: [String]) -> UInt64 {
            FootprintEstimate.estimate(weightBytes: weights, metadata: Self.llama8B, runtimeArgs: args).kvCache
        }
        // llama.cpp logs "KV self size = 512.00 MiB" for this model at -c 4096
        #expect(kv(["-c", "4096"]) == 512 << 20)
        #expect(kv(["--ctx-size", "4096"]) == 512 << 20 && kv(["--ctx-size=4096"]) == 512 << 20)
        #expect(kv([]) == 16 << 30, "no -c: the trained 131072")
        #expect(kv(["-c", "0"]) == 16 << 30 && kv(["-c", "${CTX}"]) == 16 << 30)
        #expect(kv(["-c", "8192", "-c", "4096"]) == 512 << 20, "the last flag wins")
        #expect(kv(["-c", "4096", "-np", "4"]) == 512 << 20, "slots share one cache")
        #expect(kv(["-c", "4096", "-ctk", "q8_0", "-ctv", "q8_0"]) == (512 << 20) / 64 * 34)
        #expect(kv(["-c", "4096", "--cache-type-k", "q4_0"]) == (256 << 20) / 64 * 18 + (256 << 20), "K: 2 bytes → 18/32")
        #expect(kv(["-c", "4096", "-ctk", "f32", "-ctv", "f32"]) == 1 << 30)
        #expect(kv(["-c", "4096", "-ctk", "nonsense"]) == 512 << 20, "unknown types cost as f16")
        // SmolLM2's shape as llama-server ran it with -ctk q8_0 -ctv q4_0: rows of 192 in 6 blocks
        #expect(KVCacheType(name: "q8_0").rowBytes(192) == 6 * 34 && KVCacheType(name: "Q4_0").rowBytes(192) == 6 * 18)
        #expect(KVCacheType(name: "q4_0").rowBytes(33) == 2 * 18, "whole blocks")
        #expect(LlamaServerMemoryArgs(["-np", "4", "--parallel=2", "-c"]).parallel == 2, "a trailing flag without a value is ignored")
        // flags Strata does not read are stepped over, values included
        #expect(kv(["--port", "8080", "-m", "/m.gguf", "-c", "4096", "--jinja"]) == 512 << 20)

        let estimate = FootprintEstimate.estimate(weightBytes: weights, metadata: Self.llama8B, runtimeArgs: ["-c", "4096"])
        #expect(estimate.overhead == weights / 20, "5 % of the weights, above the floor")
        #expect(estimate.total == weights + estimate.kvCache + estimate.overhead)
        #expect(estimate.explanation.contains("32 layers × 8 KV heads × 128+128 × 4096 ctx × f16"), "\(estimate.explanation)")
        #expect(FootprintEstimate.estimate(weightBytes: weights, metadata: Self.llama8B, runtimeArgs: [])
            .explanation.contains("131072 ctx (trained)"))
    }

    @Test func perLayerHeadsCountOnlyAttentionLayers() {
        var hybrid = Self.llama8B
        hybrid.values["llama.attention.head_count_kv"] = .integers([0, 8, 0, 8] + Array(repeating: 0, count: 28))
        let estimate = FootprintEstimate.estimate(weightBytes: 1 << 30, metadata: hybrid, runtimeArgs: ["-c", "4096"])
        #expect(estimate.kvCache == (512 << 20) / 16, "2 of 32 layers hold KV")
        #expect(estimate.explanation.contains("2 of 32 layers"))
    }

    @Test func withoutUsableMetadataTheFileSizeRuleApplies() {
        let plain = FootprintEstimate.estimate(weightBytes: 4000, metadata: nil, runtimeArgs: ["-c", "4096"])
        #expect(plain.total == 5000 && plain.basis == .fileSize && plain.kvCache == 0)
        #expect(plain.explanation.contains("not GGUF"))
        var shapeless = Self.llama8B
        shapeless.values["llama.block_count"] = nil
        #expect(FootprintEstimate.estimate(weightBytes: 4000, metadata: shapeless, runtimeArgs: []).total == 5000)
        var hostile = Self.llama8B
        hostile.values["llama.attention.head_count_kv"] = .unsigned(UInt64.max)
        hostile.values["llama.block_count"] = .unsigned(1 << 40)
        #expect(FootprintEstimate.estimate(weightBytes: 4000, metadata: hostile, runtimeArgs: []).basis == .fileSize)
        var huge = Self.llama8B
        huge.values["llama.context_length"] = .unsigned(UInt64(Int.max))
        let saturated = FootprintEstimate.estimate(weightBytes: 4000, metadata: huge, runtimeArgs: ["-c", "99999999999999999999"])
        #expect(saturated.kvCache == (131072 as UInt64) << 32, "context clamped to 2^32: absurd but finite")
    }

    // MARK: - Measured memory

    static let status = """
        Name:\tllama-server
        Umask:\t0022
        State:\tS (sleeping)
        Pid:\t4242
        VmPeak:\t 2500000 kB
        VmHWM:\t  350000 kB
        VmRSS:\t  300000 kB
        RssAnon:\t  120000 kB
        RssFile:\t  179000 kB
        RssShmem:\t    1000 kB
        Threads:\t17
        """

    @Test func parsesProcStatus() {
        let memory = ProcessMemory.parse(status: Self.status)
        #expect(memory == ProcessMemory(resident: 300000 * 1024, peak: 350000 * 1024, anonymous: 120000 * 1024,
                                        file: 179000 * 1024, shared: 1000 * 1024))
        #expect(memory?.footprint == 300000 * 1024)
        #expect(ProcessMemory.parse(status: "Name:\tkthreadd\nState:\tS (sleeping)\n") == nil, "kernel threads have no VmRSS")
        #expect(ProcessMemory.parse(status: "VmRSS:\t 12 kB\n")?.anonymous == 0, "old kernels lack RssAnon")
        #expect(ProcessMemory.parse(status: "VmRSS:\t 12 kB\nVmHWM:\t 4 kB\n")?.peak == 12 * 1024, "peak is never below resident")
        #expect(ProcessMemory.parse(status: "VmRSS: x kB\nVmRSS:\n") == nil)

        #expect(ProcessMemory.parentPID(stat: "4242 (llama-server) S 17 4242 4242 0 -1") == 17)
        #expect(ProcessMemory.parentPID(stat: "99 (a (b) c) R 5 99") == 5, "names with parentheses and spaces")
        #expect(ProcessMemory.parentPID(stat: "garbage") == nil)
        #expect(ProcessMemory.descendants(of: 1, parents: [2: 1, 3: 2, 4: 1, 5: 9, 6: 6, 7: 8, 8: 7]).sorted() == [2, 3, 4])
    }

    @Test func measuresTheCurrentProcessAndItsChildren() throws {
        let own = try #require(ProcessMemory.read(pid: getpid()))
        #expect(own.resident > 0 && own.peak >= own.resident && own.anonymous > 0)
        #expect(ProcessMemory.read(pid: -1) == nil)

        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        defer {
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        #expect(ProcessMemory.descendants(of: getpid()).contains(child.processIdentifier))
        let tree = try #require(ProcessMemory.readTree(pid: getpid()))
        #expect(tree.resident >= own.resident / 2, "the tree includes this process")
    }
}

/// GGUF files built byte by byte.
struct SyntheticGGUF {
    var bytes: [UInt8]
    var dataOffset: Int

    struct Writer {
        var bytes: [UInt8] = []

        init(version: UInt32, tensors: UInt64, pairs: UInt64) {
            bytes = Array("GGUF".utf8)
            u32(version)
            u64(tensors)
            u64(pairs)
        }

        mutating func u32(_ v: UInt32) { bytes += withUnsafeBytes(of: v.littleEndian, Array.init) }
        mutating func u64(_ v: UInt64) { bytes += withUnsafeBytes(of: v.littleEndian, Array.init) }
        mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
        mutating func key(_ k: String) { string(k) }
        mutating func type(_ t: GGUFValueType) { u32(t.rawValue) }

        /// A key with a scalar of `type` given as its little-endian bytes.
        mutating func scalar(_ k: String, _ t: GGUFValueType, _ raw: [UInt8]) { key(k); type(t); bytes += raw }
        mutating func uint32(_ k: String, _ v: UInt32) { key(k); type(.uint32); u32(v) }
        mutating func text(_ k: String, _ v: String) { key(k); type(.string); string(v) }
        mutating func array(_ k: String, _ t: GGUFValueType, count: UInt64, raw: [UInt8]) {
            key(k); type(.array); type(t); u64(count); bytes += raw
        }
    }

    /// Every value type, integer/float/string/nested arrays, per-layer KV heads, two tensors,
    /// 64-byte alignment and 1000 bytes of tensor data.
    static func standard(version: UInt32) -> SyntheticGGUF {
        var w = Writer(version: version, tensors: 2, pairs: 27)
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        w.text("general.architecture", "testarch")
        w.uint32("general.alignment", 64)
        w.uint32("testarch.block_count", 4)
        w.scalar("testarch.context_length", .uint64, le(UInt64(2048)))
        w.scalar("testarch.embedding_length", .int32, le(Int32(256)))
        w.scalar("testarch.attention.head_count", .uint16, le(UInt16(8)))
        w.array("testarch.attention.head_count_kv", .int32, count: 4, raw: [0, 8, 8, 4].flatMap { le(Int32($0)) })
        w.uint32("testarch.attention.key_length", 48)
        w.uint32("testarch.attention.value_length", 32)
        w.scalar("u8", .uint8, [200])
        w.scalar("i8", .int8, [UInt8(bitPattern: -5)])
        w.scalar("u16", .uint16, le(UInt16(60000)))
        w.scalar("i16", .int16, le(Int16(-30000)))
        w.scalar("i32", .int32, le(Int32(-7)))
        w.scalar("u64", .uint64, le(UInt64.max))
        w.scalar("i64", .int64, le(Int64.min))
        w.scalar("f32", .float32, le(Float(1.5).bitPattern))
        w.scalar("f64", .float64, le(Double(-2.25).bitPattern))
        w.scalar("yes", .bool, [1])
        w.text("empty", "")
        w.text("unicode", "héllo ✓")
        w.array("floats", .float32, count: 3, raw: [1, 2, 3].flatMap { le(Float($0).bitPattern) })
        w.array("long", .uint8, count: 5000, raw: [UInt8](repeating: 7, count: 5000))
        var tokens = Writer(version: 0, tensors: 0, pairs: 0)
        tokens.bytes = []
        for token in ["<s>", "", "hello"] { tokens.string(token) }
        w.array("tokenizer.ggml.tokens", .string, count: 3, raw: tokens.bytes)
        // [[1, 2], ["x"]]
        var nested = Writer(version: 0, tensors: 0, pairs: 0)
        nested.bytes = []
        nested.type(.uint16); nested.u64(2); nested.bytes += le(UInt16(1)) + le(UInt16(2))
        nested.type(.string); nested.u64(1); nested.string("x")
        w.array("nested", .array, count: 2, raw: nested.bytes)
        w.array("empty.array", .int64, count: 0, raw: [])
        w.array("bools", .bool, count: 2, raw: [1, 0])
        // tensors: name, dimensions, each dimension, ggml type, offset
        w.string("token_embd.weight"); w.u32(2); w.u64(16); w.u64(8); w.u32(0); w.u64(0)
        w.string("output_norm.weight"); w.u32(1); w.u64(16); w.u32(0); w.u64(512)
        let dataOffset = (w.bytes.count + 63) / 64 * 64
        w.bytes += [UInt8](repeating: 0, count: dataOffset - w.bytes.count)
        w.bytes += [UInt8](repeating: 0xAB, count: 1000)
        return SyntheticGGUF(bytes: w.bytes, dataOffset: dataOffset)
    }

    /// Writes the bytes to a new temporary file and returns its path.
    func write() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("synthetic-\(UUID().uuidString).gguf").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}
