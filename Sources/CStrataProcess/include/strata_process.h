#ifndef STRATA_PROCESS_H
#define STRATA_PROCESS_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Starts `path` with `argv` and `envp` (both NULL-terminated) as the leader of a new process
/// group, with stdin from /dev/null and stdout/stderr appended to `log_fd`. The child gets
/// SIGKILL when the daemon dies (PR_SET_PDEATHSIG), also on SIGKILL of the daemon. The fork
/// happens on one long-lived thread, because the parent-death signal fires when the *thread*
/// that forked exits, and pool threads come and go.
/// Returns the pid, or -errno on failure (including an exec failure in the child).
pid_t strata_spawn(const char *path, char *const argv[], char *const envp[], int log_fd);

/// Sends `signal` to the whole process group led by `pid`. Returns 0 or -errno.
int strata_kill_group(pid_t pid, int signal);

/// Waits for `pid` to exit. Returns 0 and fills `status_out` (raw wait status) or -errno.
int strata_wait(pid_t pid, int *status_out);

/// Decodes a raw wait status: exit code if it exited (and *signaled = 0), else the signal.
int strata_wait_decode(int status, int *signaled);

/// Keeps allocations up to `mmap_threshold` bytes on the heap and returns free heap to the
/// kernel only past `trim_threshold` (glibc mallopt). Returns 1 if both settings took.
int strata_malloc_tune(size_t mmap_threshold, size_t trim_threshold);

/// Bytes the allocator holds free, in every arena (glibc mallinfo2: fordblks).
size_t strata_malloc_free_bytes(void);

/// Returns the allocator's free memory to the kernel, in every arena (glibc malloc_trim(0)).
/// Returns 1 if any was released.
int strata_malloc_trim(void);

#ifdef __cplusplus
}
#endif
#endif
