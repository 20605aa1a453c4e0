#ifndef STRATA_URING_H
#define STRATA_URING_H

/* An opaque face over liburing. liburing.h is included only in the .c file: imported into a
   Swift module it conflicts with Glibc's definitions and breaks clean builds. Every function
   returns 0 or a count on success and -errno on failure. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct strata_ring strata_ring;

/* Creates a ring with `entries` submission slots (a power of two is used). */
int strata_ring_create(unsigned entries, strata_ring **out);
void strata_ring_destroy(strata_ring *ring);

/* Registers `count` buffers for the *_fixed operations; index i names bases[i]/lengths[i]. */
int strata_ring_register_buffers(strata_ring *ring, void *const *bases, const size_t *lengths, unsigned count);

/* Free submission slots right now. */
unsigned strata_ring_sq_space(strata_ring *ring);

/* Queue one operation (not yet submitted). -EBUSY when no submission slot is free. */
int strata_ring_prep_read(strata_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, uint64_t user_data);
int strata_ring_prep_write(strata_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, uint64_t user_data);
int strata_ring_prep_read_fixed(strata_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data);
int strata_ring_prep_write_fixed(strata_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data);
int strata_ring_prep_fsync(strata_ring *ring, int fd, int data_only, uint64_t user_data);

/* Submits what is queued and waits until at least `wait_for` completions are ready.
   Returns the number submitted, or -errno (-EINTR included: the caller decides to retry). */
int strata_ring_submit_and_wait(strata_ring *ring, unsigned wait_for);

/* Takes up to `max` ready completions: their user data and results (bytes or -errno). */
unsigned strata_ring_reap(strata_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

/* The O_DIRECT open flag, which Swift's Glibc module does not export (it needs _GNU_SOURCE). */
int strata_o_direct_flag(void);

/* An eventfd (EFD_CLOEXEC) for waking the ring's thread; fd or -errno. */
int strata_eventfd_create(void);

/* 0 when this kernel and sandbox allow io_uring, else -errno (ENOSYS, EPERM…). */
int strata_ring_probe(void);

#ifdef __cplusplus
}
#endif
#endif
