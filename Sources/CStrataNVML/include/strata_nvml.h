#ifndef STRATA_NVML_H
#define STRATA_NVML_H

#include <stdint.h>

/// One GPU as NVML reports it. `memory_supported` is 0 where NVML cannot report device memory
/// (unified-memory machines such as GB10/DGX Spark, where the GPU shares system RAM).
typedef struct {
    char name[96];
    char uuid[96];
    uint64_t total_bytes;
    uint64_t free_bytes;
    int memory_supported;
} strata_gpu_info;

/// Loads NVML at run time (dlopen of `library`, or "libnvidia-ml.so.1" when NULL), lists up to
/// `capacity` GPUs into `out` and unloads it. Returns the number of GPUs (0 or more), or:
///   -1 the library could not be loaded (no NVIDIA driver here),
///   -2 it lacks a function Strata needs,
///   -3 an NVML call failed (its code and text in `error`).
/// `error` (at least 256 bytes) receives a description whenever the result is negative.
int strata_nvml_discover(const char *library, strata_gpu_info *out, int capacity, char *error, int error_length);

/// GPU memory that NVML attributes to a set of processes on one GPU.
typedef struct {
    /// Summed over the matching processes whose usage NVML reports.
    uint64_t used_bytes;
    /// Matching process entries found on this GPU.
    int processes;
    /// Matching entries whose usage NVML could not report (no permission, some vGPU/MIG setups).
    int unknown;
} strata_gpu_process_memory;

/// Loads NVML as `strata_nvml_discover` does and, for each of up to `capacity` GPUs, sums the
/// memory its compute processes whose pid is one of `pids` (`pid_count` of them) hold, through
/// nvmlDeviceGetComputeRunningProcesses (_v3, else _v2, else the original). The pids are as NVML
/// sees them: host pids, which differ from ours inside a container with its own pid namespace.
/// Returns the number of GPUs (out[i] filled for each), or -1 / -2 / -3 as `strata_nvml_discover`
/// (-2 also when the driver has no running-processes query at all).
int strata_nvml_process_memory(const char *library, const unsigned int *pids, int pid_count,
                               strata_gpu_process_memory *out, int capacity, char *error, int error_length);

#endif
