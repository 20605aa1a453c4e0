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

#endif
