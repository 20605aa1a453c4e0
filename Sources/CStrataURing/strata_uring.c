#define _GNU_SOURCE
#include "strata_uring.h"

#include <fcntl.h>

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/uio.h>

struct strata_ring {
    struct io_uring ring;
};

int strata_ring_create(unsigned entries, strata_ring **out) {
    strata_ring *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) {
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void strata_ring_destroy(strata_ring *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

int strata_ring_register_buffers(strata_ring *ring, void *const *bases, const size_t *lengths, unsigned count) {
    struct iovec *iov = calloc(count, sizeof *iov);
    if (!iov) return -ENOMEM;
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = bases[i];
        iov[i].iov_len = lengths[i];
    }
    int rc = io_uring_register_buffers(&ring->ring, iov, count);
    free(iov);
    return rc;
}

unsigned strata_ring_sq_space(strata_ring *ring) { return io_uring_sq_space_left(&ring->ring); }

int strata_ring_prep_read(strata_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buffer, length, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int strata_ring_prep_write(strata_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buffer, length, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int strata_ring_prep_read_fixed(strata_ring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read_fixed(sqe, fd, buffer, length, offset, buffer_index);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int strata_ring_prep_write_fixed(strata_ring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_write_fixed(sqe, fd, buffer, length, offset, buffer_index);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int strata_ring_prep_fsync(strata_ring *ring, int fd, int data_only, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, data_only ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int strata_ring_submit_and_wait(strata_ring *ring, unsigned wait_for) {
    return io_uring_submit_and_wait(&ring->ring, wait_for);
}

unsigned strata_ring_reap(strata_ring *ring, uint64_t *user_data, int32_t *results, unsigned max) {
    unsigned head, count = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
        if (count == max) break;
        user_data[count] = io_uring_cqe_get_data64(cqe);
        results[count] = cqe->res;
        count++;
    }
    io_uring_cq_advance(&ring->ring, count);
    return count;
}

int strata_ring_probe(void) {
    struct io_uring ring;
    int rc = io_uring_queue_init(2, &ring, 0);
    if (rc < 0) return rc;
    io_uring_queue_exit(&ring);
    return 0;
}

int strata_eventfd_create(void) {
    int fd = eventfd(0, EFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}

int strata_o_direct_flag(void) { return O_DIRECT; }
