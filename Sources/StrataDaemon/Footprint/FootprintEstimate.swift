/// The memory a model is expected to need before it has been loaded: its weights, the KV cache
/// its runtime will reserve, and an allowance for compute buffers. It is a starting point only:
/// once the runtime is up, the footprint measured from NVML or /proc replaces it.
public struct FootprintEstimate: Sendable, Equatable {
    public enum Basis: Sendable, Equatable {
        /// From the GGUF header and the llama-server arguments.
        case gguf
        /// Not a GGUF file, or one without the attention shape: file size + 25 %.
        case fileSize
    }

    public var weights: UInt64
    public var kvCache: UInt64
    public var overhead: UInt64
    public var total: UInt64
    /// The context the KV cache was sized for (nil for the file-size basis).
    public var contextLength: Int?
    public var basis: Basis
    /// One line for the log, such as "98.4MiB weights + 90MiB KV (llama, 30 layers × 4096 ctx × …)".
    public var explanation: String

    /// Smallest allowance for buffers besides weights and KV: the runtime's own heap, tokenizer and
    /// thread stacks, which do not shrink with the model.
    public static let minimumOverhead: UInt64 = 64 << 20

    /// - Parameters:
    ///   - weightBytes: the weights file's size (for a split model, all its files together).
    ///   - metadata: its GGUF header, nil when it is not GGUF or could not be read.
    ///   - runtimeArgs: the llama-server arguments Strata will pass (`-c`, `-ctk`, `-ctv`).
    public static func estimate(weightBytes: UInt64, metadata: GGUFMetadata?, runtimeArgs: [String]) -> FootprintEstimate {
        guard let metadata else {
            return fileSizeEstimate(weightBytes, why: "not GGUF")
        }
        let args = LlamaServerMemoryArgs(runtimeArgs)
        guard let layers = metadata.blockCount, let kvHeads = metadata.headCountKV,
              let keyLength = metadata.keyLength, let valueLength = metadata.valueLength
        else {
            return fileSizeEstimate(weightBytes, why: "GGUF without attention shape")
        }
        // Bounds far above any real model keep a hostile header from overflowing the arithmetic.
        guard (1...65536).contains(layers), (0...65536).contains(kvHeads),
              (0...65536).contains(keyLength), (0...65536).contains(valueLength),
              metadata.headCountKVPerLayer?.allSatisfy({ (0...65536).contains($0) }) ?? true
        else {
            return fileSizeEstimate(weightBytes, why: "GGUF with an implausible attention shape")
        }
        // llama-server sizes one KV cache of n_ctx cells for all slots (-np splits it, or shares it
        // with --kv-unified): the total does not grow with -np. -c 0 or no -c means the trained context.
        let context = min(args.contextSize.flatMap { $0 > 0 ? $0 : nil } ?? metadata.contextLength ?? 4096, 1 << 32)
        var perLayerHeads = metadata.headCountKVPerLayer ?? []
        if perLayerHeads.count != layers { perLayerHeads = Array(repeating: kvHeads, count: layers) }
        let perToken = perLayerHeads.reduce(UInt64(0)) { sum, heads in
            sum + args.cacheTypeK.rowBytes(heads * keyLength) + args.cacheTypeV.rowBytes(heads * valueLength)
        }
        let (kv, kvOverflow) = perToken.multipliedReportingOverflow(by: UInt64(context))

        // Everything else: llama.cpp's compute buffer (it reserves its graph for one micro-batch
        // with one output row per slot, so it grows with the model's width, not its vocabulary:
        // 17.5 MiB for SmolLM2-135M on CPU), the output buffer, the process's heap and libraries.
        // 5 % of the weights covers that for big models, and 64 MiB is the floor for small ones
        // (llama-server measured 35 MiB above weights + KV for SmolLM2). A CUDA context (some
        // hundreds of MiB per process) is not included: the measurement after load corrects it.
        let overhead = max(minimumOverhead, weightBytes / 20)
        let kvBytes = kvOverflow ? UInt64.max / 4 : kv
        let total = saturatingSum(saturatingSum(weightBytes, kvBytes), overhead)

        let shape = perLayerHeads.allSatisfy { $0 == kvHeads }
            ? "\(layers) layers × \(kvHeads) KV heads × \(keyLength)+\(valueLength)"
            : "\(perLayerHeads.filter { $0 > 0 }.count) of \(layers) layers with up to \(kvHeads) KV heads × \(keyLength)+\(valueLength)"
        let cacheTypes = args.cacheTypeK == args.cacheTypeV ? args.cacheTypeK.name : "\(args.cacheTypeK.name)/\(args.cacheTypeV.name)"
        let explanation = "\(fmt(total)) = \(fmt(weightBytes)) weights + \(fmt(kvBytes)) KV (\(metadata.architecture ?? "?"): "
            + "\(shape) × \(context) ctx\(args.contextSize.map { $0 > 0 ? "" : " (trained)" } ?? " (trained)") × \(cacheTypes)) + \(fmt(overhead)) buffers"
        return FootprintEstimate(
            weights: weightBytes, kvCache: kvBytes, overhead: overhead, total: total, contextLength: context,
            basis: .gguf, explanation: explanation)
    }

    /// The old rule: weights plus a quarter for KV cache and buffers.
    static func fileSizeEstimate(_ weightBytes: UInt64, why: String) -> FootprintEstimate {
        let extra = weightBytes / 4
        return FootprintEstimate(
            weights: weightBytes, kvCache: 0, overhead: extra, total: weightBytes + extra, contextLength: nil,
            basis: .fileSize,
            explanation: "\(fmt(weightBytes + extra)) = \(fmt(weightBytes)) weights + 25 % (\(why))")
    }

    private static func saturatingSum(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    private static func fmt(_ bytes: UInt64) -> String { ConfigUnits.formatBytes(bytes) }
}

/// The llama-server arguments that decide its memory. Later flags win, as in llama.cpp.
public struct LlamaServerMemoryArgs: Sendable, Equatable {
    /// `-c` / `--ctx-size`: nil when absent; 0 means the model's trained context.
    public var contextSize: Int?
    /// `-np` / `--parallel`: parsed for the log only, since the slots share the one KV cache.
    public var parallel: Int?
    public var cacheTypeK: KVCacheType = .f16
    public var cacheTypeV: KVCacheType = .f16

    public init(_ args: [String]) {
        var index = 0
        while index < args.count {
            var flag = args[index]
            var value: String?
            if flag.hasPrefix("-"), let equals = flag.firstIndex(of: "=") {
                value = String(flag[flag.index(after: equals)...])
                flag = String(flag[..<equals])
            }
            let known = ["-c", "--ctx-size", "-np", "--parallel", "-ctk", "--cache-type-k", "-ctv", "--cache-type-v"]
            guard known.contains(flag) else { index += 1; continue }
            if value == nil, index + 1 < args.count {
                value = args[index + 1]
                index += 1
            }
            index += 1
            guard let value else { continue }
            switch flag {
            case "-c", "--ctx-size": contextSize = Int(value).flatMap { $0 >= 0 ? $0 : nil } ?? contextSize
            case "-np", "--parallel": parallel = Int(value) ?? parallel
            case "-ctk", "--cache-type-k": cacheTypeK = KVCacheType(name: value)
            default: cacheTypeV = KVCacheType(name: value)
            }
        }
    }
}

/// A KV cache element type llama-server accepts for `--cache-type-k/-v`, with its storage cost.
public struct KVCacheType: Sendable, Equatable {
    public var name: String
    /// Bytes per block of `blockElements` values (ggml's type traits).
    public var blockBytes: Int
    public var blockElements: Int

    public static let f16 = KVCacheType(name: "f16")

    /// Unknown names are costed as f16, the default and the largest but for f32.
    public init(name: String) {
        let known: [String: (Int, Int)] = [
            "f32": (4, 1), "f16": (2, 1), "bf16": (2, 1),
            "q8_0": (34, 32), "q4_0": (18, 32), "q4_1": (20, 32), "iq4_nl": (18, 32), "q5_0": (22, 32), "q5_1": (24, 32),
        ]
        let lowered = name.lowercased()
        let (bytes, elements) = known[lowered] ?? (2, 1)
        self.name = known[lowered] == nil ? "f16 (\(name)?)" : lowered
        self.blockBytes = bytes
        self.blockElements = elements
    }

    /// Bytes for a row of `elements` values, rounded up to whole blocks.
    public func rowBytes(_ elements: Int) -> UInt64 {
        UInt64((elements + blockElements - 1) / blockElements) * UInt64(blockBytes)
    }
}
