#define _GNU_SOURCE
#include <malloc.h>
#include "strata_process.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* One spawn request at a time travels to the spawner thread. */
struct spawn_job {
    const char *path;
    char *const *argv;
    char *const *envp;
    int log_fd;
    pid_t result;
    int done;
};

static pthread_mutex_t job_mutex = PTHREAD_MUTEX_INITIALIZER;   /* serializes callers */
static pthread_mutex_t slot_mutex = PTHREAD_MUTEX_INITIALIZER;  /* guards `slot` */
static pthread_cond_t slot_cond = PTHREAD_COND_INITIALIZER;
static struct spawn_job *slot = NULL;
static pthread_once_t spawner_once = PTHREAD_ONCE_INIT;

static pid_t spawn_here(const struct spawn_job *job) {
    /* A pipe with O_CLOEXEC tells the parent whether exec succeeded: it closes on exec, or
       carries the child's errno if exec failed. */
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(report[0]);
        close(report[1]);
        return -e;
    }
    if (pid == 0) {
        /* Child: only async-signal-safe calls until exec. */
        close(report[0]);
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* parent died before prctl took effect */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) { dup2(devnull, 0); if (devnull > 2) close(devnull); }
        if (job->log_fd >= 0) { dup2(job->log_fd, 1); dup2(job->log_fd, 2); }
        /* Nothing else of the daemon's reaches the runtime: mark every other descriptor
           close-on-exec (the report pipe already is). close_range needs Linux 5.11; older
           kernels get a loop over the soft limit. */
        if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) != 0) {
            long max = sysconf(_SC_OPEN_MAX);
            if (max < 0 || max > 1048576) max = 1048576;
            for (int fd = 3; fd < max; fd++) if (fd != report[1]) close(fd);
        }
        execve(job->path, job->argv, job->envp);
        int e = errno;
        ssize_t unused = write(report[1], &e, sizeof e);
        (void)unused;
        _exit(127);
    }
    close(report[1]);
    int child_errno = 0;
    ssize_t n;
    do { n = read(report[0], &child_errno, sizeof child_errno); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof child_errno) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -child_errno;
    }
    return pid;
}

static void *spawner_main(void *unused) {
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&slot_mutex);
        while (slot == NULL || slot->done) pthread_cond_wait(&slot_cond, &slot_mutex);
        struct spawn_job *job = slot;
        pthread_mutex_unlock(&slot_mutex);

        pid_t result = spawn_here(job);

        pthread_mutex_lock(&slot_mutex);
        job->result = result;
        job->done = 1;
        pthread_cond_broadcast(&slot_cond);
        pthread_mutex_unlock(&slot_mutex);
    }
    return NULL;
}

static void start_spawner(void) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&thread, &attr, spawner_main, NULL);
    pthread_attr_destroy(&attr);
}

pid_t strata_spawn(const char *path, char *const argv[], char *const envp[], int log_fd) {
    pthread_once(&spawner_once, start_spawner);
    struct spawn_job job = {path, argv, envp, log_fd, 0, 0};
    pthread_mutex_lock(&job_mutex);
    pthread_mutex_lock(&slot_mutex);
    slot = &job;
    pthread_cond_broadcast(&slot_cond);
    while (!job.done) pthread_cond_wait(&slot_cond, &slot_mutex);
    slot = NULL;
    pthread_mutex_unlock(&slot_mutex);
    pthread_mutex_unlock(&job_mutex);
    return job.result;
}

int strata_kill_group(pid_t pid, int signal) {
    if (pid <= 0) return -EINVAL;
    /* Only the group: once the leader is reaped its pid may belong to someone else. */
    return kill(-pid, signal) == 0 ? 0 : -errno;
}

int strata_wait(pid_t pid, int *status_out) {
    for (;;) {
        if (waitpid(pid, status_out, 0) >= 0) return 0;
        if (errno != EINTR) return -errno;
    }
}

int strata_wait_decode(int status, int *signaled) {
    if (WIFEXITED(status)) { *signaled = 0; return WEXITSTATUS(status); }
    if (WIFSIGNALED(status)) { *signaled = 1; return WTERMSIG(status); }
    *signaled = 0;
    return -1;
}

int strata_malloc_tune(size_t mmap_threshold, size_t trim_threshold) {
    int a = mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    int b = mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
    return a == 1 && b == 1;
}

size_t strata_malloc_free_bytes(void) {
    struct mallinfo2 info = mallinfo2();
    return info.fordblks;
}

int strata_malloc_trim(void) {
    return malloc_trim(0);
}
