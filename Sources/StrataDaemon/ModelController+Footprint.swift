import Foundation
import Logging
import Metrics
import Placer

extension ModelController {
    /// Measures the memory of every serving runtime and tells the Placer: GPU memory through
    /// NVML for models on a GPU device (the process and its children), else the resident set
    /// (RSS) of the process tree. For a model whose memory was estimated, the Placer accounts
    /// the measurement from then on (peaks kept); a declared one is only reported. Runs after
    /// each load and every `footprintInterval` ticks; the /proc and NVML reads run off the actor.
    func measureFootprints(only model: String? = nil) {
        var targets: [(model: String, pid: Int32, gpu: Bool)] = []
        for (name, instance) in instances where model == nil || model == name {
            guard let snapshot = placer.snapshot(of: name) else { continue }
            switch snapshot.phase {
            case .ready, .draining: break
            default: continue
            }
            let kind = config.devices.first { $0.name == snapshot.device }?.kind
            targets.append((name, instance.process.pid, kind == .gpu))
        }
        guard !targets.isEmpty else { return }
        Task.detached {
            var measured: [(model: String, pid: Int32, bytes: UInt64)] = []
            for target in targets {
                var bytes: UInt64?
                if target.gpu {
                    // Only a complete NVML reading counts on a GPU: the RSS says nothing of GPU
                    // memory (offloaded weights leave it), and a runtime NVML cannot see (another
                    // pid namespace) or cannot size keeps its estimate.
                    let pids = [target.pid] + ProcessMemory.descendants(of: target.pid)
                    if case .measured(let gpus) = GPUDiscovery.processMemory(pids: pids),
                        gpus.contains(where: { $0.processes > 0 }), gpus.allSatisfy({ $0.unknown == 0 })
                    {
                        bytes = gpus.reduce(0) { $0 + $1.usedBytes }
                    }
                } else {
                    bytes = ProcessMemory.readTree(pid: target.pid)?.footprint
                }
                if let bytes, bytes > 0 { measured.append((target.model, target.pid, bytes)) }
            }
            await self.footprintsMeasured(measured)
        }
    }

    /// A reading of a process that is no longer the model's runtime (stopped or replaced while
    /// it was read off the actor) is dropped: it would be charged to the next one.
    private func footprintsMeasured(_ measured: [(model: String, pid: Int32, bytes: UInt64)]) {
        for (model, pid, bytes) in measured where instances[model]?.process.pid == pid {
            let before = placer.snapshot(of: model)
            Gauge(label: "strata_model_memory_measured_bytes", dimensions: [("model", model)]).record(Int64(bytes))
            send(.footprintMeasured(model: model, bytes: bytes))
            guard let before, before.measuredBytes == nil, let base = config.model(placerName: model) else { continue }
            // Said once per model: what was assumed, what it holds, and which one counts.
            let assumed = ConfigUnits.formatBytes(before.memoryBytes)
            logger.info("measured footprint", metadata: [
                "model": "\(model)", "measured": "\(ConfigUnits.formatBytes(bytes))",
                base.memoryDeclared ? "declared" : "estimated": "\(assumed)",
                "accounted": "\(base.memoryDeclared ? "declared" : "measured")",
            ])
        }
    }
}
