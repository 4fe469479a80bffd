/* The socket communicator: tensor-parallel ranks as separate processes, joined over TCP
 * (kernels/comm.h; the connections come from engine/tp_link.h). Host memory only: the CPU
 * reference path across processes. GPUs use NCCL.
 *
 * The ranks form a star around rank 0. Every collective is one frame from each follower to rank 0
 * and one answer from rank 0 to each follower:
 *
 *   all_reduce_sum      followers send x; rank 0 sums in rank order, ((x0 + x1) + x2) + ..., in
 *                       F32 (the thread communicator's order, so the same bits) and answers the
 * sum. all_gather_columns  followers send their part; rank 0 lays out every part in out and answers
 *                       out.
 *   broadcast           the root sends its bytes (a follower root sends them to rank 0 first); rank
 *                       0 answers them to every other rank, and an empty answer to the root.
 *   barrier             followers send a header; rank 0 answers once every one has.
 *
 * Why a star and not a ring: the sum is taken in one place in one order, so every rank holds the
 * same bits, run after run and equal to the thread communicator's; the traffic through rank 0
 * grows with the ranks, which the CPU reference path can afford (NCCL does the GPU collectives).
 *
 * Every frame starts with a header (collective, sequence number, sizes, root, sender). Rank 0
 * compares each follower's header with its own call, as comm_cpu.c's rendezvous does, and aborts
 * the group with both descriptions when they differ. Failure, never a hang:
 *   - rank 0 waits on every follower at once (poll), so a follower that dies (EOF) or aborts is
 *     seen at once, whichever follower rank 0 was reading;
 *   - every wait has the group's deadline; rank 0 names the ranks that never arrived;
 *   - an abort is a frame: a follower sends it to rank 0, which relays it to every follower; rank
 *     0's goes to every follower. A rank blocked in a receive reads it as the next frame; a
 *     follower blocked in a send (rank 0 stopped reading it) stops as soon as rank 0 has something
 *     to say, which can only be an abort;
 *   - abort from another thread of this rank wakes this rank's own waits through a pipe;
 *   - once aborted, every collective fails at once with the first reason. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2 */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../common/clock.h"
#include "../../common/error.h"
#include "../../common/socket.h"
#include "../comm.h"
#include "comm_staging.h"

typedef enum frame_kind {
    FRAME_ALL_REDUCE = 1,
    FRAME_ALL_GATHER_COLUMNS,
    FRAME_BROADCAST,
    FRAME_BARRIER,
    FRAME_ABORT /* payload: the reason */
} frame_kind;

/* "CISC" in memory on a little-endian host: a stream that is not ours fails this at once. */
#define FRAME_MAGIC 0x43534943u

/* Native byte order: the ranks of a group run one build on one kind of host. */
typedef struct frame {
    uint32_t magic, kind;
    uint64_t seq;        /* collectives the sender called before this one */
    int64_t rows, count; /* elements in rows (bytes for a broadcast) */
    int32_t root, rank;  /* the broadcast's root; who sends */
    uint64_t payload_bytes;
} frame;

enum { REASON_CAPACITY = 1024 };

/* How long an abort frame may take to leave: it is best effort (the peer may be dead or not
 * reading), and an abort must not itself wait for the group's timeout. */
#define ABORT_FRAME_SECONDS 2.0
/* A follower waits this many times the timeout for rank 0's answer: rank 0's own timeout passes
 * first, and its abort names the rank that never arrived, which says more than "rank 0 never
 * answered". */
#define FOLLOWER_PATIENCE 1.5

typedef struct socket_comm {
    ci_comm base; /* first: the table's functions take it */
    double timeout_seconds;
    int *fds; /* [size]: rank 0: fds[r], its connection to follower r; a follower: fds[0] */
    unsigned char *broken;  /* [size]: a frame was cut short there: nothing more goes on it */
    unsigned char *pending; /* [size]: rank 0, in a collective: followers not heard from yet */
    struct pollfd *polls; /* [size]: rank 0's poll set: the pending followers, then the wake pipe */
    int *polled;          /* [size]: the follower of each entry */
    staging *in;          /* [size]: rank 0: each follower's contribution */
    staging part;         /* gather_buffer */
    unsigned long long seq;
    int wake[2];             /* a pipe: abort writes to it, every wait polls it */
    pthread_mutex_t state;   /* aborted, reason */
    pthread_mutex_t writing; /* one whole frame at a time on the connections */
    int aborted;
    char reason[REASON_CAPACITY];
} socket_comm;

static socket_comm *socket_of(ci_comm *comm) { return (socket_comm *)comm; }

/* Worded as comm_cpu.c's, so that a message reads the same whichever communicator ran. */
static const char *describe(const frame *f, char *buf, size_t size) {
    switch (f->kind) {
    case FRAME_ALL_REDUCE:
        snprintf(buf, size, "all_reduce_sum #%llu of %lld floats", (unsigned long long)f->seq,
                 (long long)f->count);
        break;
    case FRAME_ALL_GATHER_COLUMNS:
        snprintf(buf, size, "all_gather_columns #%llu of [%lld, %lld] floats",
                 (unsigned long long)f->seq, (long long)f->rows,
                 (long long)(f->rows ? f->count / f->rows : 0));
        break;
    case FRAME_BROADCAST:
        snprintf(buf, size, "broadcast #%llu of %lld bytes from rank %d",
                 (unsigned long long)f->seq, (long long)f->count, f->root);
        break;
    case FRAME_BARRIER: snprintf(buf, size, "barrier #%llu", (unsigned long long)f->seq); break;
    default: snprintf(buf, size, "a frame of unknown kind %u", f->kind); break;
    }
    return buf;
}

static int same_call(const frame *a, const frame *b) {
    return a->kind == b->kind && a->seq == b->seq && a->rows == b->rows && a->count == b->count &&
           a->root == b->root;
}

/* The bytes follower r sends with its frame of collective f. */
static size_t payload_from(const frame *f, int r) {
    switch (f->kind) {
    case FRAME_ALL_REDUCE:
    case FRAME_ALL_GATHER_COLUMNS: return (size_t)f->count * sizeof(float);
    case FRAME_BROADCAST: return r == f->root ? (size_t)f->count : 0;
    default: return 0;
    }
}

/* Sends f and its payload whole, to rank `peer`'s connection. The writing lock keeps an abort
 * frame from another thread out of the middle of it. A frame cut short leaves the stream out of
 * step: nothing more goes there, and the peer, which would wait for the rest, reads EOF at once
 * instead (shutdown). */
static ci_socket_result send_frame(socket_comm *c, int peer, const frame *f, const void *payload,
                                   double deadline, int wake_fd, int watch_in) {
    pthread_mutex_lock(&c->writing);
    ci_socket_result r = CI_SOCKET_CLOSED;
    if (!c->broken[peer]) {
        size_t header = 0, body = 0;
        r = ci_socket_send_until(c->fds[peer], f, sizeof *f, deadline, wake_fd, watch_in, &header);
        if (r == CI_SOCKET_DONE && f->payload_bytes)
            r = ci_socket_send_until(c->fds[peer], payload, f->payload_bytes, deadline, wake_fd,
                                     watch_in, &body);
        if (r == CI_SOCKET_CLOSED || r == CI_SOCKET_FAILED) c->broken[peer] = 1;
        if (r != CI_SOCKET_DONE && header + body > 0 && !c->broken[peer]) {
            shutdown(c->fds[peer], SHUT_WR);
            c->broken[peer] = 1;
        }
    }
    pthread_mutex_unlock(&c->writing);
    return r;
}

/* Best effort: the peers fail at once instead of at their timeout. */
static void send_abort(socket_comm *c, const char *reason) {
    const frame f = {.magic = FRAME_MAGIC,
                     .kind = FRAME_ABORT,
                     .rank = c->base.rank,
                     .payload_bytes = strlen(reason)};
    const double deadline = ci_socket_deadline(ABORT_FRAME_SECONDS);
    for (int r = c->base.rank == 0 ? 1 : 0; r < (c->base.rank == 0 ? c->base.size : 1); r++)
        send_frame(c, r, &f, reason, deadline, -1, 0);
}

/* The first reason wins; this rank's waits wake; with tell, the peers hear it (a follower tells
 * rank 0, which relays it; rank 0 tells every follower). */
static void abort_group(socket_comm *c, int tell, const char *fmt, ...) CI_PRINTF(3, 4);
static void abort_group(socket_comm *c, int tell, const char *fmt, ...) {
    char reason[REASON_CAPACITY];
    pthread_mutex_lock(&c->state);
    const int first = !c->aborted;
    if (first) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(c->reason, sizeof c->reason, fmt, args);
        va_end(args);
        c->aborted = 1;
        memcpy(reason, c->reason, sizeof reason);
        const char byte = 1;
        while (write(c->wake[1], &byte, 1) < 0 && errno == EINTR) {
        }
    }
    pthread_mutex_unlock(&c->state);
    if (first && tell) send_abort(c, reason);
}

/* This rank's error from the group's reason. */
static cinfer_status failed(socket_comm *c) {
    pthread_mutex_lock(&c->state);
    cinfer_status status =
        CI_FAIL(CINFER_ERR_COMM, "tensor-parallel group of %d ranks (rank %d): %s", c->base.size,
                c->base.rank, c->reason);
    pthread_mutex_unlock(&c->state);
    return status;
}

static int is_aborted(socket_comm *c) {
    pthread_mutex_lock(&c->state);
    const int aborted = c->aborted;
    pthread_mutex_unlock(&c->state);
    return aborted;
}

/* An I/O with rank `peer` that did not finish while this rank was in collective f: the group is
 * aborted with what happened (unless it already was: woken). */
static cinfer_status lost(socket_comm *c, int peer, ci_socket_result r, const frame *f) {
    char what[160];
    const int me = c->base.rank;
    describe(f, what, sizeof what);
    switch (r) {
    case CI_SOCKET_CLOSED:
        /* nobody to tell when rank 0 is the one gone; rank 0 tells the others */
        abort_group(c, me == 0,
                    "tensor-parallel rank %d closed its connection while rank %d waits in %s", peer,
                    me, what);
        break;
    case CI_SOCKET_TIMED_OUT:
        if (me == 0)
            abort_group(c, 1, "rank 0 waited %.1f s (the group's timeout) in %s for rank %d",
                        c->timeout_seconds, what, peer);
        else
            abort_group(c, 1,
                        "rank %d waited %.1f s or more in %s for rank 0, which never answered", me,
                        c->timeout_seconds, what);
        break;
    case CI_SOCKET_FAILED:
        abort_group(c, 1, "rank %d in %s: the connection to rank %d failed: %s", me, what, peer,
                    strerror(errno));
        break;
    default: break; /* woken: aborted already */
    }
    return failed(c);
}

/* After a header of kind FRAME_ABORT from peer: its reason becomes the group's; rank 0 relays it.
 */
static cinfer_status take_abort(socket_comm *c, int peer, const frame *h, double deadline) {
    char reason[REASON_CAPACITY];
    if (h->payload_bytes >= sizeof reason) {
        abort_group(c, 1, "tensor-parallel rank %d sent an abort of %llu bytes; at most %zu", peer,
                    (unsigned long long)h->payload_bytes, sizeof reason - 1);
        return failed(c);
    }
    /* not woken by our own abort: this is the reason we want to hear */
    if (ci_socket_recv_until(c->fds[peer], reason, h->payload_bytes, deadline, -1) !=
        CI_SOCKET_DONE)
        snprintf(reason, sizeof reason,
                 "tensor-parallel rank %d aborted the group (its reason was cut off)", peer);
    else
        reason[h->payload_bytes] = '\0';
    abort_group(c, c->base.rank == 0, "%s", reason);
    return failed(c);
}

static cinfer_status not_a_frame(socket_comm *c, int peer, const frame *want) {
    char what[160];
    abort_group(c, 1,
                "tensor-parallel rank %d sent something that is not a frame of this "
                "communicator while rank %d waits in %s",
                peer, c->base.rank, describe(want, what, sizeof what));
    return failed(c);
}

/* Rank 0: the frame of collective `want` from follower r, its payload into dest. */
static cinfer_status hear(socket_comm *c, int r, const frame *want, void *dest, double deadline) {
    frame h;
    ci_socket_result got = ci_socket_recv_until(c->fds[r], &h, sizeof h, deadline, c->wake[0]);
    if (got != CI_SOCKET_DONE) return lost(c, r, got, want);
    if (h.magic != FRAME_MAGIC) return not_a_frame(c, r, want);
    if (h.kind == FRAME_ABORT) return take_abort(c, r, &h, deadline);
    if (!same_call(&h, want)) {
        char mine[160], theirs[160];
        abort_group(c, 1, "the ranks called different collectives: rank 0 %s; rank %d %s",
                    describe(want, mine, sizeof mine), r, describe(&h, theirs, sizeof theirs));
        return failed(c);
    }
    if (h.payload_bytes != payload_from(want, r)) return not_a_frame(c, r, want);
    got = ci_socket_recv_until(c->fds[r], dest, h.payload_bytes, deadline, c->wake[0]);
    return got == CI_SOCKET_DONE ? CINFER_OK : lost(c, r, got, want);
}

/* "2, 5": the followers rank 0 still waits for */
static const char *pending_list(const socket_comm *c, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int r = 1; r < c->base.size && used < size; r++)
        if (c->pending[r])
            used += (size_t)snprintf(buf + used, size - used, "%s%d", used ? ", " : "", r);
    return buf;
}

/* Rank 0: every follower's frame of collective `want`, follower r's payload into dest[r]. It
 * waits on all of them at once: whichever dies or aborts is seen at once. */
static cinfer_status hear_all(socket_comm *c, const frame *want, void *const *dest) {
    const int size = c->base.size;
    const double deadline = ci_socket_deadline(c->timeout_seconds);
    int n_pending = size - 1;
    memset(c->pending, 1, (size_t)size);
    struct pollfd *p = c->polls;
    while (n_pending > 0) {
        int n = 0;
        for (int r = 1; r < size; r++)
            if (c->pending[r]) c->polled[n] = r, p[n++] = (struct pollfd){c->fds[r], POLLIN, 0};
        p[n++] = (struct pollfd){c->wake[0], POLLIN, 0};
        const int ready = poll(p, (nfds_t)n, ci_socket_poll_ms(deadline));
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return lost(c, 0, CI_SOCKET_FAILED, want);
        if (p[n - 1].revents || is_aborted(c)) return failed(c);
        if (ready == 0 && ci_now_seconds() >= deadline) {
            char what[160], ranks[256];
            abort_group(c, 1,
                        "rank 0 waited %.1f s (the group's timeout) in %s for rank(s) %s, which "
                        "never arrived",
                        c->timeout_seconds, describe(want, what, sizeof what),
                        pending_list(c, ranks, sizeof ranks));
            return failed(c);
        }
        for (int i = 0; i < n - 1; i++) {
            if (!p[i].revents) continue;
            const int r = c->polled[i];
            CI_TRY(hear(c, r, want, dest[r], deadline));
            c->pending[r] = 0;
            n_pending--;
        }
    }
    return CINFER_OK;
}

/* Rank 0: the answer to collective `want` to every follower, without payload to `skip`. */
static cinfer_status answer_all(socket_comm *c, const frame *want, const void *payload,
                                size_t bytes, int skip) {
    const double deadline = ci_socket_deadline(c->timeout_seconds);
    for (int r = 1; r < c->base.size; r++) {
        frame f = *want;
        f.rank = 0;
        f.payload_bytes = r == skip ? 0 : bytes;
        const ci_socket_result sent = send_frame(c, r, &f, payload, deadline, c->wake[0], 0);
        if (sent != CI_SOCKET_DONE) return lost(c, r, sent, want);
    }
    return CINFER_OK;
}

/* A follower: sends its frame (and payload) to rank 0, then takes the answer's payload into
 * answer, which must be answer_bytes. */
static cinfer_status ask(socket_comm *c, const frame *mine, const void *payload, void *answer,
                         size_t answer_bytes) {
    const double deadline = ci_socket_deadline(c->timeout_seconds);
    const ci_socket_result sent = send_frame(c, 0, mine, payload, deadline, c->wake[0], 1);
    /* readable: rank 0 stopped reading us to say something, an abort (read below) */
    if (sent != CI_SOCKET_DONE && sent != CI_SOCKET_READABLE) return lost(c, 0, sent, mine);
    const double patience = ci_socket_deadline(FOLLOWER_PATIENCE * c->timeout_seconds);
    frame h;
    ci_socket_result got = ci_socket_recv_until(c->fds[0], &h, sizeof h, patience, c->wake[0]);
    if (got != CI_SOCKET_DONE) return lost(c, 0, got, mine);
    if (h.magic != FRAME_MAGIC) return not_a_frame(c, 0, mine);
    if (h.kind == FRAME_ABORT) return take_abort(c, 0, &h, patience);
    if (!same_call(&h, mine) || h.payload_bytes != answer_bytes) return not_a_frame(c, 0, mine);
    got = ci_socket_recv_until(c->fds[0], answer, answer_bytes, patience, c->wake[0]);
    return got == CI_SOCKET_DONE ? CINFER_OK : lost(c, 0, got, mine);
}

/* Starts a collective: refused at once when aborted, or when the memory is not the host's. */
static cinfer_status begin(socket_comm *c, const ci_backend *be, frame *f) {
    f->magic = FRAME_MAGIC;
    f->seq = c->seq++;
    f->rank = c->base.rank;
    f->payload_bytes = payload_from(f, c->base.rank);
    if (is_aborted(c)) return failed(c);
    if (be && strcmp(be->ops->name, "cpu") != 0) {
        char what[160];
        abort_group(c, 1,
                    "rank %d called %s on a '%s' backend: the socket communicator moves host "
                    "memory only (GPU ranks use the NCCL communicator)",
                    c->base.rank, describe(f, what, sizeof what), be->ops->name);
        failed(c);
        return CINFER_ERR_UNSUPPORTED;
    }
    return CINFER_OK;
}

/* Rank 0: room for every follower's contribution of `bytes`. */
static cinfer_status stage(socket_comm *c, const frame *f, size_t bytes, void **dest) {
    const int size = c->base.size;
    int ok = 1;
    dest[0] = NULL;
    for (int r = 1; r < size; r++) {
        ok = ok && staging_grow(&c->in[r], bytes ? bytes : 1);
        dest[r] = c->in[r].data;
    }
    if (ok) return CINFER_OK;
    char what[160];
    abort_group(c, 1, "out of memory: %zu bytes of staging per rank for %s", bytes,
                describe(f, what, sizeof what));
    failed(c);
    return CINFER_ERR_MEMORY;
}

static cinfer_status socket_all_reduce_sum(ci_comm *comm, ci_backend *be, ci_tensor *x) {
    socket_comm *c = socket_of(comm);
    CI_ASSERT(x->dtype == CI_F32);
    const int64_t n = ci_tensor_numel(x);
    const size_t bytes = (size_t)n * sizeof(float);
    frame f = {.kind = FRAME_ALL_REDUCE, .rows = 1, .count = n};
    CI_TRY(begin(c, be, &f));
    if (comm->rank != 0) return ask(c, &f, x->data, x->data, bytes);

    void *dest[comm->size > 0 ? comm->size : 1];
    CI_TRY(stage(c, &f, bytes, dest));
    CI_TRY(hear_all(c, &f, dest));
    /* ((x0 + x1) + x2) + ...: each element as comm_cpu.c sums it */
    float *sum = x->data;
    for (int r = 1; r < comm->size; r++) {
        const float *term = dest[r];
        for (int64_t i = 0; i < n; i++) sum[i] += term[i];
    }
    return answer_all(c, &f, sum, bytes, -1);
}

static cinfer_status socket_all_gather_columns(ci_comm *comm, ci_backend *be, ci_tensor *out,
                                               const ci_tensor *part) {
    socket_comm *c = socket_of(comm);
    CI_ASSERT(out->dtype == CI_F32 && part->dtype == CI_F32);
    const int64_t rows = ci_tensor_n_rows(part), n = ci_tensor_row_size(part);
    CI_ASSERT(ci_tensor_n_rows(out) == rows && ci_tensor_row_size(out) == n * comm->size);
    const size_t row_bytes = (size_t)n * sizeof(float),
                 out_bytes = row_bytes * (size_t)rows * (size_t)comm->size;
    frame f = {.kind = FRAME_ALL_GATHER_COLUMNS, .rows = rows, .count = rows * n};
    CI_TRY(begin(c, be, &f));
    if (comm->rank != 0) return ask(c, &f, part->data, out->data, out_bytes);

    void *dest[comm->size > 0 ? comm->size : 1];
    CI_TRY(stage(c, &f, row_bytes * (size_t)rows, dest));
    CI_TRY(hear_all(c, &f, dest));
    dest[0] = part->data;
    for (int r = 0; r < comm->size && n > 0; r++)
        for (int64_t t = 0; t < rows; t++)
            memcpy((float *)out->data + (t * comm->size + r) * n, (const float *)dest[r] + t * n,
                   row_bytes);
    return answer_all(c, &f, out->data, out_bytes, -1);
}

static cinfer_status socket_broadcast(ci_comm *comm, ci_backend *be, void *data, size_t bytes,
                                      int root) {
    socket_comm *c = socket_of(comm);
    CI_ASSERT(root >= 0 && root < comm->size);
    frame f = {.kind = FRAME_BROADCAST, .rows = 1, .count = (int64_t)bytes, .root = root};
    CI_TRY(begin(c, be, &f));
    if (comm->rank != 0) return ask(c, &f, data, data, comm->rank == root ? 0 : bytes);

    /* the root's bytes land in rank 0's buffer directly; nobody else sends any */
    void *dest[comm->size > 0 ? comm->size : 1];
    CI_TRY(stage(c, &f, 0, dest));
    dest[root] = data;
    CI_TRY(hear_all(c, &f, dest));
    return answer_all(c, &f, data, bytes, root);
}

static cinfer_status socket_barrier(ci_comm *comm, ci_backend *be) {
    socket_comm *c = socket_of(comm);
    frame f = {.kind = FRAME_BARRIER};
    CI_TRY(begin(c, be, &f));
    if (comm->rank != 0) return ask(c, &f, NULL, NULL, 0);
    void *dest[comm->size > 0 ? comm->size : 1];
    CI_TRY(stage(c, &f, 0, dest));
    CI_TRY(hear_all(c, &f, dest));
    return answer_all(c, &f, NULL, 0, -1);
}

/* The collectives finish before they return: this only reports an abort, including one a peer
 * sent while this rank was between collectives: an abort frame already waiting on a connection is
 * taken (peeked at first, so that a follower's next collective frame, or an EOF, stays for the
 * next collective to read). */
static cinfer_status socket_synchronize(ci_comm *comm, ci_backend *be, double timeout_seconds) {
    (void)be;
    (void)timeout_seconds;
    socket_comm *c = socket_of(comm);
    for (int r = 0; r < comm->size && !is_aborted(c); r++) {
        frame h;
        if (c->broken[r] || recv(c->fds[r], &h, sizeof h, MSG_PEEK | MSG_DONTWAIT) != sizeof h ||
            h.magic != FRAME_MAGIC || h.kind != FRAME_ABORT)
            continue;
        const double deadline = ci_socket_deadline(ABORT_FRAME_SECONDS);
        if (ci_socket_recv_until(c->fds[r], &h, sizeof h, deadline, -1) == CI_SOCKET_DONE)
            return take_abort(c, r, &h, deadline);
    }
    return is_aborted(c) ? failed(c) : CINFER_OK;
}

static void *socket_gather_buffer(ci_comm *comm, size_t bytes) {
    staging *part = &socket_of(comm)->part;
    return staging_grow(part, bytes ? bytes : 1) ? part->data : NULL;
}

static void socket_abort(ci_comm *comm, const char *reason) {
    abort_group(socket_of(comm), 1, "rank %d aborted the group: %s", comm->rank, reason);
}

/* The per-rank arrays and c itself (NULL and partly made ones too). */
static void free_arrays(socket_comm *c) {
    if (!c) return;
    free(c->fds);
    free(c->broken);
    free(c->pending);
    free(c->polls);
    free(c->polled);
    free(c->in);
    free(c);
}

/* Closing the connections is what tells the peers this rank is gone (they read EOF). */
static void socket_destroy(ci_comm *comm) {
    socket_comm *c = socket_of(comm);
    for (int r = 0; r < comm->size; r++)
        if (c->fds[r] >= 0) close(c->fds[r]);
    for (int r = 0; r < comm->size; r++) free(c->in[r].data);
    free(c->part.data);
    close(c->wake[0]);
    close(c->wake[1]);
    pthread_mutex_destroy(&c->state);
    pthread_mutex_destroy(&c->writing);
    free_arrays(c);
}

static const ci_comm_ops socket_comm_ops = {
    .name = "socket",
    .all_reduce_sum = socket_all_reduce_sum,
    .all_gather_columns = socket_all_gather_columns,
    .broadcast = socket_broadcast,
    .barrier = socket_barrier,
    .synchronize = socket_synchronize,
    .gather_buffer = socket_gather_buffer,
    .abort = socket_abort,
    .destroy = socket_destroy,
};

/* The fds this rank owns: rank 0 fds[1..size-1], a follower fds[0]. */
static void close_owned(int rank, int size, const int *fds) {
    for (int r = rank == 0 ? 1 : 0; fds && r < (rank == 0 ? size : 1); r++)
        if (fds[r] >= 0) close(fds[r]);
}

cinfer_status ci_comm_socket_create(int rank, int size, const int *fds, double timeout_seconds,
                                    ci_comm **out) {
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size) {
        close_owned(rank >= 0 ? rank : 0, size, fds);
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "rank %d of %d ranks: expected 0 <= rank < size and size >= 1", rank, size);
    }
    for (int r = rank == 0 ? 1 : 0; r < (rank == 0 ? size : 1); r++)
        if (!fds || fds[r] < 0) {
            close_owned(rank, size, fds);
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "rank %d of %d ranks: no connection to rank %d (fds[%d] = %d)", rank,
                           size, rank == 0 ? r : 0, r, fds ? fds[r] : -1);
        }
    socket_comm *c = calloc(1, sizeof *c);
    const int ok = c && (c->fds = malloc((size_t)size * sizeof *c->fds)) &&
                   (c->broken = calloc((size_t)size, 1)) &&
                   (c->pending = calloc((size_t)size, 1)) &&
                   (c->in = calloc((size_t)size, sizeof *c->in)) &&
                   (c->polls = calloc((size_t)size, sizeof *c->polls)) &&
                   (c->polled = calloc((size_t)size, sizeof *c->polled)) &&
                   pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) == 0;
    if (!ok) {
        free_arrays(c);
        close_owned(rank, size, fds);
        return CI_FAIL(CINFER_ERR_MEMORY, "cannot create the socket communicator of rank %d of %d",
                       rank, size);
    }
    for (int r = 0; r < size; r++) {
        const int owned = rank == 0 ? r > 0 : r == 0;
        c->fds[r] = owned ? fds[r] : -1;
        c->broken[r] = !owned;
    }
    pthread_mutex_init(&c->state, NULL);
    pthread_mutex_init(&c->writing, NULL);
    c->base = (ci_comm){&socket_comm_ops, rank, size};
    c->timeout_seconds = timeout_seconds > 0 ? timeout_seconds : CI_COMM_DEFAULT_TIMEOUT_SECONDS;
    *out = &c->base;
    return CINFER_OK;
}
