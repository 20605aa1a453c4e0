// NVML reached through dlopen, so Strata runs (and builds) on machines without the NVIDIA driver.
// The few types used are declared here from NVML's documented ABI; nvml.h is not needed.
#include "strata_nvml.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_NOT_SUPPORTED = 3 };

typedef nvmlReturn_t (*init_fn)(void);
typedef nvmlReturn_t (*shutdown_fn)(void);
typedef nvmlReturn_t (*count_fn)(unsigned int *);
typedef nvmlReturn_t (*handle_fn)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*name_fn)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*memory_fn)(nvmlDevice_t, nvmlMemory_t *);
typedef const char *(*error_string_fn)(nvmlReturn_t);

static void describe(char *error, int length, const char *what, nvmlReturn_t code, error_string_fn text) {
    snprintf(error, (size_t)length, "%s failed: NVML error %d (%s)", what, code, text ? text(code) : "unknown");
}

int strata_nvml_discover(const char *library, strata_gpu_info *out, int capacity, char *error, int error_length) {
    void *lib = dlopen(library ? library : "libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(error, (size_t)error_length, "%s", why ? why : "dlopen failed");
        return -1;
    }
    init_fn init = (init_fn)dlsym(lib, "nvmlInit_v2");
    shutdown_fn shutdown = (shutdown_fn)dlsym(lib, "nvmlShutdown");
    count_fn count = (count_fn)dlsym(lib, "nvmlDeviceGetCount_v2");
    handle_fn handle = (handle_fn)dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    name_fn name = (name_fn)dlsym(lib, "nvmlDeviceGetName");
    name_fn uuid = (name_fn)dlsym(lib, "nvmlDeviceGetUUID");
    memory_fn memory = (memory_fn)dlsym(lib, "nvmlDeviceGetMemoryInfo");
    error_string_fn text = (error_string_fn)dlsym(lib, "nvmlErrorString");
    if (!init || !shutdown || !count || !handle || !name || !uuid || !memory) {
        snprintf(error, (size_t)error_length, "the NVML library lacks a function Strata needs");
        dlclose(lib);
        return -2;
    }
    nvmlReturn_t rc = init();
    if (rc != NVML_SUCCESS) {
        describe(error, error_length, "nvmlInit", rc, text);
        dlclose(lib);
        return -3;
    }
    unsigned int n = 0;
    rc = count(&n);
    int result = 0;
    if (rc != NVML_SUCCESS) {
        describe(error, error_length, "nvmlDeviceGetCount", rc, text);
        result = -3;
    }
    for (unsigned int i = 0; result >= 0 && i < n && (int)i < capacity; i++) {
        nvmlDevice_t device;
        strata_gpu_info *info = &out[i];
        memset(info, 0, sizeof *info);
        if ((rc = handle(i, &device)) != NVML_SUCCESS) {
            describe(error, error_length, "nvmlDeviceGetHandleByIndex", rc, text);
            result = -3;
            break;
        }
        if (name(device, info->name, sizeof info->name) != NVML_SUCCESS) snprintf(info->name, sizeof info->name, "GPU %u", i);
        if (uuid(device, info->uuid, sizeof info->uuid) != NVML_SUCCESS) info->uuid[0] = 0;
        nvmlMemory_t mem;
        rc = memory(device, &mem);
        if (rc == NVML_SUCCESS) {
            info->total_bytes = mem.total;
            info->free_bytes = mem.free;
            info->memory_supported = 1;
        } else if (rc == NVML_ERROR_NOT_SUPPORTED) {
            info->memory_supported = 0;   // unified memory: the GPU uses system RAM
        } else {
            describe(error, error_length, "nvmlDeviceGetMemoryInfo", rc, text);
            result = -3;
            break;
        }
        result = (int)i + 1;
    }
    shutdown();
    dlclose(lib);
    return result;
}
