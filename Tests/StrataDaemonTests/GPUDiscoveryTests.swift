import Foundation
import Testing
@testable import StrataDaemon

/// GPU discovery through NVML, loaded with dlopen: against fake NVML libraries compiled here
/// (this machine has no NVIDIA driver), and the default devices it leads to.
final class GPUDiscoveryTests {
    /// The folders `fakeNVML` made for this test, removed when it ends.
    private var folders: [String] = []

    deinit {
        for folder in folders { try? FileManager.default.removeItem(atPath: folder) }
    }

    /// Builds a fake libnvidia-ml with two GPUs (80 GiB and 24 GiB) from `flags`:
    /// -DUNIFIED (memory info not supported), -DINIT_FAILS, -DMISSING (no nvmlDeviceGetUUID).
    /// Its compute processes: on GPU 0, pids 100 (5 GiB), 4242 (1 GiB) and 101; on GPU 1, 4242
    /// (3 GiB), 4243 (memory not available) and 68 others, more than one first call takes.
    /// They come from nvmlDeviceGetComputeRunningProcesses_v3 in records of -DSTRIDE=24 bytes
    /// (the default; 32 as some R53x drivers write, or 16), or from the original function with
    /// -DPROCS_V1 (16-byte records); -DNO_PROCS leaves the function out.
    func fakeNVML(_ flags: [String] = []) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fake-nvml-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        folders.append(dir)
        let source = """
            #include <string.h>
            typedef struct { unsigned long long total, free, used; } mem_t;
            int nvmlInit_v2(void) {
            #ifdef INIT_FAILS
                return 9;
            #else
                return 0;
            #endif
            }
            int nvmlShutdown(void) { return 0; }
            int nvmlDeviceGetCount_v2(unsigned int *n) { *n = 2; return 0; }
            int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { *h = (void *)(unsigned long)(i + 1); return 0; }
            int nvmlDeviceGetName(void *h, char *b, unsigned int n) { strncpy(b, h == (void *)1 ? "Fake H100" : "Fake L4", n); return 0; }
            #ifndef MISSING
            int nvmlDeviceGetUUID(void *h, char *b, unsigned int n) { strncpy(b, h == (void *)1 ? "GPU-0" : "GPU-1", n); return 0; }
            #endif
            int nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
            #ifdef UNIFIED
                return 3;
            #else
                m->total = h == (void *)1 ? 80ULL << 30 : 24ULL << 30; m->free = m->total; m->used = 0; return 0;
            #endif
            }
            const char *nvmlErrorString(int code) { return "fake error"; }
            #ifndef NO_PROCS
            #ifdef PROCS_V1
            #define STRIDE 16
            #define PROCS nvmlDeviceGetComputeRunningProcesses
            #else
            #define PROCS nvmlDeviceGetComputeRunningProcesses_v3
            #endif
            #ifndef STRIDE
            #define STRIDE 24
            #endif
            static void put(unsigned char *records, unsigned int i, unsigned int pid, unsigned long long used) {
                unsigned char *r = records + i * STRIDE;
                unsigned int none = 0xFFFFFFFFu;   /* no MIG: gpuInstanceId, computeInstanceId */
                memset(r, 0, STRIDE);
                memcpy(r, &pid, 4);
                memcpy(r + 8, &used, 8);
                if (STRIDE >= 24) { memcpy(r + 16, &none, 4); memcpy(r + 20, &none, 4); }
            }
            int PROCS(void *h, unsigned int *count, void *infos) {
                unsigned int n = h == (void *)1 ? 3 : 70;
                if (*count < n) { *count = n; return 7; }
                *count = n;
                if (h == (void *)1) {
                    put(infos, 0, 100, 5ULL << 30); put(infos, 1, 4242, 1ULL << 30); put(infos, 2, 101, 1ULL << 20);
                } else {
                    put(infos, 0, 4242, 3ULL << 30); put(infos, 1, 4243, ~0ULL);
                    for (unsigned int i = 2; i < n; i++) put(infos, i, 5000 + i, 1ULL << 20);
                }
                return 0;
            }
            #endif
            """
        try source.write(toFile: dir + "/fake.c", atomically: false, encoding: .utf8)
        let cc = Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/cc")
        cc.arguments = ["-shared", "-fPIC", "-o", dir + "/libnvidia-ml.so.1", dir + "/fake.c"] + flags
        try cc.run()
        cc.waitUntilExit()
        guard cc.terminationStatus == 0 else { throw CocoaError(.executableLoad) }
        return dir + "/libnvidia-ml.so.1"
    }

    @Test func findsDiscreteGPUsAndTheyBecomeDevicesBesideTheCPU() throws {
        let outcome = GPUDiscovery.discover(library: try fakeNVML())
        #expect(outcome == .found([
            DiscoveredGPU(index: 0, name: "Fake H100", uuid: "GPU-0", totalBytes: 80 << 30),
            DiscoveredGPU(index: 1, name: "Fake L4", uuid: "GPU-1", totalBytes: 24 << 30),
        ]))
        #expect(outcome.summary.contains("Fake H100 (80GiB)"), "\(outcome.summary)")
        let devices = ConfigLoader.defaultDevices(gpus: outcome.gpus, physicalMemory: 100 << 30)
        #expect(devices.map(\.name) == ["cpu", "gpu0", "gpu1"])
        #expect(devices.map(\.kind) == [.cpu, .gpu, .gpu])
        #expect(devices.map(\.memoryBytes) == [80 << 30, 72 << 30, (24 << 30) / 10 * 9])

        // through the config: the default devices come from discovery; a devices section wins
        let found = try ConfigLoader.parse(yaml: "", environment: [:], gpus: outcome)
        #expect(found.devices.map(\.name) == ["cpu", "gpu0", "gpu1"])
        let declared = try ConfigLoader.parse(yaml: "devices: [ { name: big, kind: gpu, memory: 40GiB } ]", environment: [:], gpus: outcome)
        #expect(declared.devices.map(\.name) == ["big"])
    }

    @Test func aUnifiedMemoryGPUSharesOnePoolWithTheCPU() throws {
        let outcome = GPUDiscovery.discover(library: try fakeNVML(["-DUNIFIED"]))
        #expect(outcome.gpus.count == 2 && outcome.gpus.allSatisfy(\.isUnified))
        #expect(outcome.summary.contains("unified memory"))
        let devices = ConfigLoader.defaultDevices(gpus: outcome.gpus, physicalMemory: 128 << 30)
        #expect(devices.map(\.name) == ["unified"] && devices[0].kind == .unified)
        #expect(devices[0].memoryBytes == (128 << 30) / 10 * 8, "one pool: RAM is not counted twice")
    }

    @Test func noDriverAndBrokenDriversMeanNoGPUDevicesWithTheReason() throws {
        let missing = GPUDiscovery.discover(library: "/nonexistent/libnvidia-ml.so.1")
        guard case .noDriver(let why) = missing else { Issue.record("\(missing)"); return }
        #expect(why.contains("/nonexistent/libnvidia-ml.so.1"))
        #expect(missing.gpus.isEmpty && missing.summary.hasPrefix("no GPU devices: NVML is not available"))

        let failing = GPUDiscovery.discover(library: try fakeNVML(["-DINIT_FAILS"]))
        #expect(failing == .failed("nvmlInit failed: NVML error 9 (fake error)"))
        let incomplete = GPUDiscovery.discover(library: try fakeNVML(["-DMISSING"]))
        guard case .failed(let reason) = incomplete else { Issue.record("\(incomplete)"); return }
        #expect(reason.contains("lacks a function"))
        #expect(ConfigLoader.defaultDevices(gpus: failing.gpus, physicalMemory: 10 << 30).map(\.name) == ["cpu"])

        // the real library, whatever this machine has: never a crash, always a line to log
        #expect(!GPUDiscovery.discover().summary.isEmpty)
    }

    @Test(arguments: [[], ["-DSTRIDE=32"], ["-DSTRIDE=16"], ["-DPROCS_V1"]])
    func measuresTheMemoryOfGivenProcessesOnEachGPU(flags: [String]) throws {
        let library = try fakeNVML(flags)
        #expect(GPUDiscovery.processMemory(pids: [4242], library: library) == .measured([
            GPUProcessMemory(gpuIndex: 0, usedBytes: 1 << 30, processes: 1),
            GPUProcessMemory(gpuIndex: 1, usedBytes: 3 << 30, processes: 1),
        ]))
        let withChild = GPUDiscovery.processMemory(pids: [4242, 4243, 101], library: library)
        #expect(withChild == .measured([
            GPUProcessMemory(gpuIndex: 0, usedBytes: (1 << 30) + (1 << 20), processes: 2),
            GPUProcessMemory(gpuIndex: 1, usedBytes: 3 << 30, processes: 2, unknown: 1),
        ]))
        #expect(withChild.totalBytes == (4 << 30) + (1 << 20))
        #expect(GPUDiscovery.processMemory(pids: [5069], library: library).totalBytes == 1 << 20, "the 70th process on GPU 1")
        #expect(GPUDiscovery.processMemory(pids: [9], library: library) == .measured([
            GPUProcessMemory(gpuIndex: 0, usedBytes: 0, processes: 0), GPUProcessMemory(gpuIndex: 1, usedBytes: 0, processes: 0),
        ]))
    }

    @Test func processMemoryIsNotAvailableWithoutNVMLOrItsQuery() throws {
        let missing = GPUDiscovery.processMemory(pids: [1], library: "/nonexistent/libnvidia-ml.so.1")
        guard case .notAvailable(let why) = missing else { Issue.record("\(missing)"); return }
        #expect(why.contains("/nonexistent/libnvidia-ml.so.1") && missing.totalBytes == nil)
        let old = GPUDiscovery.processMemory(pids: [1], library: try fakeNVML(["-DNO_PROCS"]))
        #expect(old == .notAvailable("the NVML library lacks nvmlDeviceGetComputeRunningProcesses"))
        let failing = GPUDiscovery.processMemory(pids: [1], library: try fakeNVML(["-DINIT_FAILS"]))
        #expect(failing == .failed("nvmlInit failed: NVML error 9 (fake error)"))
        // the real library, whatever this machine has: never a crash
        _ = GPUDiscovery.processMemory(pids: [getpid()])
    }
}
