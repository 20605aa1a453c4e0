// NVML reached through dlopen, so Strata runs (and builds) on machines without the NVIDIA driver.
// The few types used are declared here from NVML's documented ABI; nvml.h is not needed.
#include "strata_nvml.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_INSUFFICIENT_SIZE = 7 };
#define NVML_VALUE_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL

typedef nvmlReturn_t (*init_fn)(void);
typedef nvmlReturn_t (*shutdown_fn)(void);
typedef nvmlReturn_t (*count_fn)(unsigned int *);
typedef nvmlReturn_t (*handle_fn)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*name_fn)(nvmlDevice_t, char *, unsigned int);
typedef nvmlReturn_t (*memory_fn)(nvmlDevice_t, nvmlMemory_t *);
typedef const char *(*error_string_fn)(nvmlReturn_t);
typedef nvmlReturn_t (*processes_fn)(nvmlDevice_t, unsigned int *, void *);

static void describe(char *error, int length, const char *what, nvmlReturn_t code, error_string_fn text) {
    snprintf(error, (size_t)length, "%s failed: NVML error %d (%s)", what, code, text ? text(code) : "unknown");
}

/// What both queries need: the library, its init/shutdown, the device list and error texts.
typedef struct {
    void *lib;
    init_fn init;
    shutdown_fn shutdown;
    count_fn count;
    handle_fn handle;
    error_string_fn text;
    unsigned int devices;
} nvml_session;

/// dlopen of NVML (default libnvidia-ml.so.1) and the functions every query uses. -1 with the
/// reason in `error` when there is no library; then the caller looks up its own functions in
/// `s->lib` and calls `session_start`.
static int session_open(const char *library, nvml_session *s, char *error, int error_length) {
    memset(s, 0, sizeof *s);
    s->lib = dlopen(library ? library : "libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!s->lib) {
        const char *why = dlerror();
        snprintf(error, (size_t)error_length, "%s", why ? why : "dlopen failed");
        return -1;
    }
    s->init = (init_fn)dlsym(s->lib, "nvmlInit_v2");
    s->shutdown = (shutdown_fn)dlsym(s->lib, "nvmlShutdown");
    s->count = (count_fn)dlsym(s->lib, "nvmlDeviceGetCount_v2");
    s->handle = (handle_fn)dlsym(s->lib, "nvmlDeviceGetHandleByIndex_v2");
    s->text = (error_string_fn)dlsym(s->lib, "nvmlErrorString");
    return 0;
}

/// Checks the functions (`own` false: the caller's are missing, named by `missing`), initializes
/// NVML and counts the devices. 0 when ready; else -2 (a function missing) or -3 (NVML failed),
/// the reason in `error`, and the library already closed.
static int session_start(nvml_session *s, int own, const char *missing, char *error, int error_length) {
    if (!s->init || !s->shutdown || !s->count || !s->handle || !own) {
        snprintf(error, (size_t)error_length, "the NVML library lacks %s", own ? "a function Strata needs" : missing);
        dlclose(s->lib);
        return -2;
    }
    nvmlReturn_t rc = s->init();
    if (rc != NVML_SUCCESS) {
        describe(error, error_length, "nvmlInit", rc, s->text);
        dlclose(s->lib);
        return -3;
    }
    if ((rc = s->count(&s->devices)) != NVML_SUCCESS) {
        describe(error, error_length, "nvmlDeviceGetCount", rc, s->text);
        s->shutdown();
        dlclose(s->lib);
        return -3;
    }
    return 0;
}

static void session_end(nvml_session *s) {
    s->shutdown();
    dlclose(s->lib);
}

int strata_nvml_discover(const char *library, strata_gpu_info *out, int capacity, char *error, int error_length) {
    nvml_session session;
    if (session_open(library, &session, error, error_length) != 0) return -1;
    name_fn name = (name_fn)dlsym(session.lib, "nvmlDeviceGetName");
    name_fn uuid = (name_fn)dlsym(session.lib, "nvmlDeviceGetUUID");
    memory_fn memory = (memory_fn)dlsym(session.lib, "nvmlDeviceGetMemoryInfo");
    int started = session_start(&session, name && uuid && memory, "a function Strata needs", error, error_length);
    if (started != 0) return started;
    error_string_fn text = session.text;
    nvmlReturn_t rc;
    int result = 0;
    for (unsigned int i = 0; result >= 0 && i < session.devices && (int)i < capacity; i++) {
        nvmlDevice_t device;
        strata_gpu_info *info = &out[i];
        memset(info, 0, sizeof *info);
        if ((rc = session.handle(i, &device)) != NVML_SUCCESS) {
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
    session_end(&session);
    return result;
}

// nvmlDeviceGetComputeRunningProcesses fills an array of process records whose first fields are
// always `unsigned int pid; unsigned long long usedGpuMemory;` (offsets 0 and 8), but whose size
// has changed: 16 bytes (v1), 24 (v2: + GPU and compute instance ids) and, for _v3 on some R53x
// drivers only, 32 (+ usedGpuCcProtectedMemory) without a version bump. So for _v3 the stride is
// read from how far the driver wrote into a buffer filled with a marker byte.
enum { RECORD_MAX = 32, MARKER = 0xA5, PROCESSES_MAX = 4096 };

static int probed_stride(const unsigned char *buffer, unsigned int n) {
    size_t written = (size_t)n * RECORD_MAX;
    while (written > 0 && buffer[written - 1] == MARKER) written--;
    if (written <= (size_t)n * 16) return 16;
    if (written <= (size_t)n * 24) return 24;
    return 32;
}

int strata_nvml_process_memory(const char *library, const unsigned int *pids, int pid_count,
                               strata_gpu_process_memory *out, int capacity, char *error, int error_length) {
    nvml_session session;
    if (session_open(library, &session, error, error_length) != 0) return -1;
    void *lib = session.lib;
    processes_fn processes = (processes_fn)dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v3");
    int fixed_stride = 0;   // 0: probe
    if (!processes && (processes = (processes_fn)dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v2"))) fixed_stride = 24;
    if (!processes && (processes = (processes_fn)dlsym(lib, "nvmlDeviceGetComputeRunningProcesses"))) fixed_stride = 16;
    int started = session_start(&session, processes != NULL, "nvmlDeviceGetComputeRunningProcesses", error, error_length);
    if (started != 0) return started;
    error_string_fn text = session.text;
    nvmlReturn_t rc;
    int result = 0;
    unsigned int room = 64;
    unsigned char *buffer = malloc((size_t)room * RECORD_MAX);
    if (!buffer) {
        snprintf(error, (size_t)error_length, "out of memory");
        result = -3;
    }
    for (unsigned int i = 0; result >= 0 && i < session.devices && (int)i < capacity; i++) {
        nvmlDevice_t device;
        strata_gpu_process_memory *info = &out[i];
        memset(info, 0, sizeof *info);
        if ((rc = session.handle(i, &device)) != NVML_SUCCESS) {
            describe(error, error_length, "nvmlDeviceGetHandleByIndex", rc, text);
            result = -3;
            break;
        }
        unsigned int found = 0;
        // Processes may start between the calls: retry a few times with the size NVML asks for.
        for (int attempt = 0; attempt < 4; attempt++) {
            memset(buffer, MARKER, (size_t)room * RECORD_MAX);
            found = room;
            rc = processes(device, &found, buffer);
            if (rc != NVML_ERROR_INSUFFICIENT_SIZE) break;
            unsigned int want = found > room ? found + 8 : room * 2;
            unsigned char *bigger = want <= PROCESSES_MAX ? realloc(buffer, (size_t)want * RECORD_MAX) : NULL;
            if (!bigger) break;
            buffer = bigger;
            room = want;
        }
        if (rc == NVML_ERROR_NOT_SUPPORTED) {
            result = (int)i + 1;    // this GPU cannot say: nothing attributed on it
            continue;
        }
        if (rc != NVML_SUCCESS) {
            describe(error, error_length, "nvmlDeviceGetComputeRunningProcesses", rc, text);
            result = -3;
            break;
        }
        if (found > room) found = room;
        int stride = fixed_stride ? fixed_stride : probed_stride(buffer, found);
        for (unsigned int r = 0; r < found; r++) {
            unsigned int pid;
            unsigned long long used;
            memcpy(&pid, buffer + (size_t)r * stride, sizeof pid);
            memcpy(&used, buffer + (size_t)r * stride + 8, sizeof used);
            for (int p = 0; p < pid_count; p++) {
                if (pids[p] != pid) continue;
                info->processes++;
                if (used == NVML_VALUE_NOT_AVAILABLE) info->unknown++;
                else info->used_bytes += used;
                break;
            }
        }
        result = (int)i + 1;
    }
    free(buffer);
    session_end(&session);
    return result;
}
