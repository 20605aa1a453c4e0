import CStrataNVML
import Foundation

/// A GPU found through NVML at run time.
public struct DiscoveredGPU: Sendable, Equatable {
    public var index: Int
    public var name: String
    public var uuid: String
    /// Device memory; nil on unified-memory machines (GB10, DGX Spark), where NVML cannot report
    /// it because the GPU works out of system RAM.
    public var totalBytes: UInt64?

    public init(index: Int, name: String, uuid: String, totalBytes: UInt64?) {
        self.index = index
        self.name = name
        self.uuid = uuid
        self.totalBytes = totalBytes
    }

    public var isUnified: Bool { totalBytes == nil }
}

/// Finds GPUs through NVML, loaded with dlopen so Strata needs no NVIDIA driver to run.
public enum GPUDiscovery {
    public enum Outcome: Sendable, Equatable {
        case found([DiscoveredGPU])
        /// No NVML here (no NVIDIA driver): no GPU devices.
        case noDriver(String)
        /// NVML is here but failed; treated as no GPU devices, with the reason logged.
        case failed(String)

        public var gpus: [DiscoveredGPU] {
            if case .found(let gpus) = self { return gpus }
            return []
        }

        /// One line for the log.
        public var summary: String {
            switch self {
            case .found(let gpus) where gpus.isEmpty: "NVML found no GPU"
            case .found(let gpus):
                "NVML found " + gpus.map { gpu in
                    "\(gpu.name) (\(gpu.totalBytes.map { ConfigUnits.formatBytes($0) } ?? "unified memory"))"
                }.joined(separator: ", ")
            case .noDriver(let why): "no GPU devices: NVML is not available (\(why))"
            case .failed(let why): "no GPU devices: NVML failed (\(why))"
            }
        }
    }

    /// `library` overrides the NVML library to load (tests use a fake one).
    public static func discover(library: String? = nil) -> Outcome {
        var infos = [strata_gpu_info](repeating: strata_gpu_info(), count: 64)
        var error = [CChar](repeating: 0, count: 512)
        let count = infos.withUnsafeMutableBufferPointer { out in
            error.withUnsafeMutableBufferPointer { text in
                strata_nvml_discover(library, out.baseAddress, Int32(out.count), text.baseAddress, Int32(text.count))
            }
        }
        let message = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch count {
        case -1: return .noDriver(message)
        case ..<0: return .failed(message)
        default:
            return .found((0..<Int(count)).map { index in
                var info = infos[index]
                let name = withUnsafeBytes(of: &info.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                let uuid = withUnsafeBytes(of: &info.uuid) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                return DiscoveredGPU(index: index, name: name, uuid: uuid,
                                     totalBytes: info.memory_supported != 0 ? info.total_bytes : nil)
            })
        }
    }
}

/// The GPU memory NVML attributes to a runtime's processes on one GPU.
public struct GPUProcessMemory: Sendable, Equatable {
    /// NVML's device index, as in `DiscoveredGPU.index`.
    public var gpuIndex: Int
    public var usedBytes: UInt64
    /// How many of the processes NVML lists on this GPU.
    public var processes: Int
    /// How many of those NVML could not give a figure for (their memory is not in `usedBytes`).
    public var unknown: Int

    public init(gpuIndex: Int, usedBytes: UInt64, processes: Int, unknown: Int = 0) {
        self.gpuIndex = gpuIndex
        self.usedBytes = usedBytes
        self.processes = processes
        self.unknown = unknown
    }
}

extension GPUDiscovery {
    public enum ProcessMemoryOutcome: Sendable, Equatable {
        /// One entry per GPU, those the processes do not use included (0 bytes, 0 processes).
        case measured([GPUProcessMemory])
        /// No NVML here, or one without a running-processes query: measure the RSS instead.
        case notAvailable(String)
        case failed(String)

        /// The bytes on every GPU together; nil unless measured.
        public var totalBytes: UInt64? {
            guard case .measured(let gpus) = self else { return nil }
            return gpus.reduce(0) { $0 + $1.usedBytes }
        }
    }

    /// The GPU memory held by `pids` (a runtime and its children), per GPU, from NVML's list of
    /// compute processes. NVML reports host pids: inside a container with its own pid namespace
    /// the runtime is not found (0 processes) and the RSS is the measurement to use.
    /// NVML is loaded and initialized for each call, so this is for occasional measurements (once
    /// after a load), not for a hot loop.
    public static func processMemory(pids: [Int32], library: String? = nil) -> ProcessMemoryOutcome {
        var infos = [strata_gpu_process_memory](repeating: strata_gpu_process_memory(), count: 64)
        var error = [CChar](repeating: 0, count: 512)
        let wanted = pids.map { UInt32(bitPattern: $0) }
        let count = wanted.withUnsafeBufferPointer { pidBuffer in
            infos.withUnsafeMutableBufferPointer { out in
                error.withUnsafeMutableBufferPointer { text in
                    strata_nvml_process_memory(library, pidBuffer.baseAddress, Int32(pidBuffer.count), out.baseAddress,
                                               Int32(out.count), text.baseAddress, Int32(text.count))
                }
            }
        }
        let message = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        switch count {
        case -1, -2: return .notAvailable(message)
        case ..<0: return .failed(message)
        default:
            return .measured((0..<Int(count)).map { index in
                GPUProcessMemory(gpuIndex: index, usedBytes: infos[index].used_bytes,
                                 processes: Int(infos[index].processes), unknown: Int(infos[index].unknown))
            })
        }
    }
}
