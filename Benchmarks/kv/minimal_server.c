/*
 * The least work a Redis-protocol server can do per command, to measure what a redis-benchmark
 * cell allows any server. One thread, level-triggered epoll. Every GET is answered with as many
 * bytes as the last SET's value had (VALUE_BYTES before any SET), the whole reply ("$N\r\n",
 * the bytes, "\r\n") prepared once per length and never changed, so replies are written straight
 * from it (one writev per batch; what a socket does not take waits as a pointer into it, not a
 * copy). A SET's value is read and dropped as it arrives (its +OK once the last byte is in), PING
 * is answered, anything else gets an empty array. Sockets get TCP_NODELAY, nothing else.
 * For a reply the socket takes in one write (64 KiB on loopback here) that is the least any
 * server can do: where Strata, redis-server and this server measure the same in such a cell, the
 * cell measures the client (`kv_settings.py --minimal`). It is no bound for larger replies, where
 * how a reply is paced out matters more than the work (Strata beats it at 1 and 4 MiB GETs).
 *
 *     cc -O2 -o minimal_server minimal_server.c && ./minimal_server PORT VALUE_BYTES [SECONDS]
 *
 * Listens on 127.0.0.1 only; exits after SECONDS (default 3600) whatever happens.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_VALUE (512L << 20)      /* a longer bulk string is refused (the connection closed) */
#define MAX_LENGTHS 64              /* distinct GET reply lengths kept */
#define READ_BYTES (256 << 10)      /* room for one read */
#define MAX_INPUT (4 << 20)         /* unparsed input held (values are dropped as they come) */
#define BATCH 1024                  /* iovecs per writev (IOV_MAX) */

struct conn {
    int fd;
    char *in;                       /* input; unparsed from in_off to in_len */
    size_t in_off, in_len, in_cap;
    size_t skip;                    /* bytes of a SET's value (and CRLF) still to come and drop */
    struct iovec *out;              /* replies the socket has not taken: out[out_head..out_len) */
    size_t out_head, out_len, out_cap;
};

/* The GET reply for each length seen, immutable once made (replies in flight point into them). */
static struct { size_t length; char *reply; size_t reply_len; } lengths[MAX_LENGTHS];
static int length_count, current = -1;

static int use_length(size_t length) {
    for (int i = 0; i < length_count; i++) {
        if (lengths[i].length == length) { current = i; return 0; }
    }
    if (length_count == MAX_LENGTHS) return -1;
    char header[32];
    int header_len = snprintf(header, sizeof header, "$%zu\r\n", length);
    char *reply = malloc((size_t)header_len + length + 2);
    if (!reply) return -1;
    memcpy(reply, header, (size_t)header_len);
    memset(reply + header_len, 'x', length);
    memcpy(reply + header_len + length, "\r\n", 2);
    lengths[length_count].length = length;
    lengths[length_count].reply = reply;
    lengths[length_count].reply_len = (size_t)header_len + length + 2;
    current = length_count++;
    return 0;
}

/* One RESP array command at `p` (`len` bytes): its byte length; 0 if incomplete; -1 if
 * malformed. Fills `name`/`name_len` (first argument) and `args`; for a command whose last
 * argument's bytes are still coming, `partial_at` (where they start) and `partial_len`. */
struct command { const char *name; size_t name_len; long args; size_t third_len; size_t partial_at, partial_len; };

static long parse_command(const char *p, size_t len, struct command *cmd) {
    const char *end = p + len, *at = p, *eol;
    char *stop;
    memset(cmd, 0, sizeof *cmd);
    if (len < 1) return 0;
    if (*at != '*') return -1;
    if (!(eol = memchr(at, '\n', (size_t)(end - at)))) return len > 32 ? -1 : 0;
    long count = strtol(at + 1, &stop, 10);
    if (stop != eol - 1 || count < 1 || count > 1024 * 1024) return -1;
    cmd->args = count;
    at = eol + 1;
    for (long i = 0; i < count; i++) {
        if (at >= end) return 0;
        if (*at != '$') return -1;
        if (!(eol = memchr(at, '\n', (size_t)(end - at)))) return end - at > 32 ? -1 : 0;
        long n = strtol(at + 1, &stop, 10);
        if (stop != eol - 1 || n < 0 || n > MAX_VALUE) return -1;
        at = eol + 1;
        if (i == 0 && (size_t)(end - at) >= (size_t)n) { cmd->name = at; cmd->name_len = (size_t)n; }
        if (i == 2) cmd->third_len = (size_t)n;
        if ((size_t)(end - at) < (size_t)n + 2) {
            if (i == count - 1) { cmd->partial_at = (size_t)(at - p); cmd->partial_len = (size_t)n; }
            return 0;
        }
        at += n + 2;
    }
    return at - p;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static int queue(struct conn *c, const struct iovec *v, size_t n) {
    if (c->out_head > 0 && c->out_head == c->out_len) c->out_head = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 64;
        while (cap < c->out_len + n) cap *= 2;
        struct iovec *out = realloc(c->out, cap * sizeof *out);
        if (!out) return -1;
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, v, n * sizeof *v);
    c->out_len += n;
    return 0;
}

/* Writes what waits, as far as the socket takes it; EPOLLOUT while some is left. */
static int flush(int ep, struct conn *c) {
    while (c->out_head < c->out_len) {
        size_t n = c->out_len - c->out_head;
        ssize_t w = writev(c->fd, c->out + c->out_head, (int)(n > BATCH ? BATCH : n));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return -1;
        if (w < 0) w = 0;
        size_t taken = (size_t)w;
        while (c->out_head < c->out_len && taken >= c->out[c->out_head].iov_len) taken -= c->out[c->out_head++].iov_len;
        if (c->out_head < c->out_len) {
            c->out[c->out_head].iov_base = (char *)c->out[c->out_head].iov_base + taken;
            c->out[c->out_head].iov_len -= taken;
            if (w == 0 || taken > 0 || n <= BATCH) break;   /* the socket is full */
        }
    }
    int waiting = c->out_head < c->out_len;
    struct epoll_event e = { .events = EPOLLIN | (waiting ? EPOLLOUT : 0), .data.ptr = c };
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0 ? -1 : 0;
}

/* Reads once what the socket has (more comes back through epoll) and answers every command it
 * completes, all in one flush. */
static int serve(int ep, struct conn *c) {
    if (c->in_cap - c->in_len < READ_BYTES) {
        if (c->in_off > 0) {        /* the unparsed rest (a partial command) to the front */
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_cap - c->in_len < READ_BYTES) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 2 * READ_BYTES;
            if (cap > MAX_INPUT + 2 * READ_BYTES) return -1;
            char *in = realloc(c->in, cap);
            if (!in) return -1;
            c->in = in;
            c->in_cap = cap;
        }
    }
    ssize_t r;
    do { r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len); } while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN) return 0;
    if (r <= 0) return -1;
    c->in_len += (size_t)r;

    static const struct iovec ok = { "+OK\r\n", 5 }, pong = { "+PONG\r\n", 7 }, empty = { "*0\r\n", 4 };
    struct iovec v[BATCH];
    size_t n = 0, at = c->in_off;
    for (;;) {
        if (n + 1 > BATCH) {
            if (queue(c, v, n) < 0) return -1;
            n = 0;
        }
        if (c->skip > 0) {          /* a SET's value: dropped as it comes */
            size_t take = c->in_len - at < c->skip ? c->in_len - at : c->skip;
            at += take;
            c->skip -= take;
            if (c->skip > 0) break;
            v[n++] = ok;
            continue;
        }
        struct command cmd;
        long used = parse_command(c->in + at, c->in_len - at, &cmd);
        if (used < 0) return -1;
        int set = cmd.name && cmd.name_len == 3 && !strncasecmp(cmd.name, "SET", 3);
        if (used == 0) {
            if (set && cmd.args == 3 && cmd.partial_len > 0) {
                if (use_length(cmd.partial_len) < 0) return -1;
                at += cmd.partial_at;
                c->skip = cmd.partial_len + 2;
                continue;
            }
            if (c->in_len - at > MAX_INPUT) return -1;
            break;
        }
        at += (size_t)used;
        if (cmd.name_len == 3 && !strncasecmp(cmd.name, "GET", 3) && current >= 0) {
            v[n++] = (struct iovec){ lengths[current].reply, lengths[current].reply_len };
        } else if (set) {
            if (use_length(cmd.third_len) < 0) return -1;
            v[n++] = ok;
        } else if (cmd.name_len == 4 && !strncasecmp(cmd.name, "PING", 4)) {
            v[n++] = pong;
        } else {
            v[n++] = empty;
        }
    }
    c->in_off = at;
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    if (n == 0) return 0;
    return queue(c, v, n) < 0 ? -1 : flush(ep, c);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT VALUE_BYTES [SECONDS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long size = atol(argv[2]);
    int seconds = argc > 3 ? atoi(argv[3]) : 3600;
    if (port <= 0 || port > 65535 || size < 0 || size > MAX_VALUE || seconds <= 0) {
        fprintf(stderr, "%s: bad arguments (port 1-65535, value 0-512MiB, seconds > 0)\n", argv[0]);
        return 2;
    }
    alarm((unsigned)seconds);
    if (use_length((size_t)size) < 0) return 1;

    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 512) < 0) {
        perror("minimal_server: bind");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &e);
    struct epoll_event events[256];
    for (;;) {
        int ready = epoll_wait(ep, events, 256, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) { perror("minimal_server: epoll_wait"); return 1; }
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) { close(fd); continue; }
                    c->fd = fd;
                    struct epoll_event ce = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            if ((events[i].events & EPOLLOUT) && flush(ep, c) < 0) { drop(ep, c); continue; }
            if ((events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && serve(ep, c) < 0) drop(ep, c);
        }
    }
}
