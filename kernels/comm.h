/* The communicator: the collectives that tensor-parallel ranks run between them
 * (docs/TENSOR_PARALLEL.md), beside the backend (backend.h) whose memory and stream they use.
 * models/ calls them by name (ci_all_reduce_sum(comm, be, &x)) as it calls ops.
 *
 * Three implementations, one table:
 *   - cpu/comm_cpu.c: the ranks are threads of one process sharing a ci_comm_group. Every sum is
 *     taken in rank order, ((x0 + x1) + x2) + ..., so a run is reproducible bit for bit and every
 *     rank holds the same bits: the CPU reference path of tensor parallelism, and what the tests
 *     drive.
 *   - cpu/comm_socket.c: the ranks are processes joined over TCP (engine/tp_link.h), star-connected
 *     through rank 0, which sums in rank order: the same bits as comm_cpu.c, host memory only.
 *   - cuda/comm_nccl.cu: one process (or thread) per GPU, NCCL collectives on the backend's stream
 *     (compiled when CMake finds CUDA and NCCL: CINFER_NCCL). NCCL picks its own summation order
 *     (ring or tree), so GPU results are not bitwise those of the CPU communicator.
 *
 * Rules for callers, as NCCL has them: every rank of a group calls the same collectives in the same
 * order with the same sizes; the memory a collective takes is on the backend's device.
 *
 * Failure. A collective returns CINFER_OK or CINFER_ERR_COMM with a message. The CPU communicator
 * never waits forever: a rank that fails outside a collective calls ci_comm_abort, which wakes
 * every rank waiting in the group at once; a rank that waits longer than the group's timeout for
 * the others aborts the group itself, naming the ranks that never arrived; ranks that call
 * different collectives (or the same with different sizes) abort it with both descriptions. An
 * aborted group stays aborted: every later collective fails at once with the first reason. The
 * NCCL communicator's collectives are queued on a stream and return before they run; its
 * `synchronize` waits with a deadline and aborts the communicator (ncclCommAbort) when it passes,
 * which is what makes a hung peer an error rather than a hang there. */
#ifndef CINFER_COMM_H
#define CINFER_COMM_H

#include <stddef.h>

#include "../common/tensor.h"
#include "../include/cinfer.h"
#include "backend.h"

typedef struct ci_comm ci_comm;

typedef struct ci_comm_ops {
    const char *name;
    /* x = Σ_r x_r over the ranks, in place: F32, any shape, the same bits on every rank (CPU:
     * summed in rank order). */
    cinfer_status (*all_reduce_sum)(ci_comm *comm, ci_backend *be, ci_tensor *x);
    /* out [R, size·n] with columns [r·n, (r+1)·n) = part_r [R, n] of rank r, on every rank (F32):
     * each rank's logits of its vocabulary rows, side by side. part may be the gather buffer. */
    cinfer_status (*all_gather_columns)(ci_comm *comm, ci_backend *be, ci_tensor *out,
                                        const ci_tensor *part);
    /* data[0, bytes) = root's, on every rank */
    cinfer_status (*broadcast)(ci_comm *comm, ci_backend *be, void *data, size_t bytes, int root);
    /* returns once every rank has called it */
    cinfer_status (*barrier)(ci_comm *comm, ci_backend *be);
    /* Waits until every collective this rank queued on be has finished, at most timeout_seconds
     * (<= 0: the communicator's default); past it the communicator is aborted and this fails.
     * The CPU's collectives finish before they return: it only reports an abort. */
    cinfer_status (*synchronize)(ci_comm *comm, ci_backend *be, double timeout_seconds);
    /* Memory on the communicator's device for this rank's part of all_gather_columns, at least
     * bytes, owned by the communicator and the same buffer every call until a larger one is asked
     * for (then the old one is freed). Ask once for the largest before a CUDA graph records: a
     * larger request allocates. NULL when out of memory. */
    void *(*gather_buffer)(ci_comm *comm, size_t bytes);
    /* This rank gives up (its load failed, its thread is leaving): every rank waiting in the group
     * returns CINFER_ERR_COMM naming this rank and reason, and so does every later collective. */
    void (*abort)(ci_comm *comm, const char *reason);
    /* Frees this rank's communicator (the group, for the CPU, outlives it). */
    void (*destroy)(ci_comm *comm);
} ci_comm_ops;

/* One rank's end of a group of `size` ranks. */
struct ci_comm {
    const ci_comm_ops *ops;
    int rank, size;
};

/* How long a rank waits in a collective for the others, unless the group says otherwise: the
 * default watchdog of PyTorch's process groups. Long enough for the slowest rank to finish a
 * layer of a CPU prefill; a hung peer still shows, as an error, within minutes. */
#define CI_COMM_DEFAULT_TIMEOUT_SECONDS 600.0

/* ---- the CPU communicator (kernels/cpu/comm_cpu.c) ----------------------------------------------
 * A group of `size` ranks that run as threads of this process. No rank ever reads or writes
 * another rank's memory: contributions go through staging buffers the group owns, so a rank that
 * gives up can free its own buffers at once. */
typedef struct ci_comm_group ci_comm_group;

/* timeout_seconds <= 0: CI_COMM_DEFAULT_TIMEOUT_SECONDS. */
cinfer_status ci_comm_group_create(int size, double timeout_seconds, ci_comm_group **out);
/* After every rank's communicator is destroyed (the rank threads joined). NULL is nothing. */
void ci_comm_group_free(ci_comm_group *group);
/* Rank `rank`'s communicator; each rank of the group exactly once. */
cinfer_status ci_comm_cpu_create(ci_comm_group *group, int rank, ci_comm **out);

/* ---- the socket communicator (kernels/cpu/comm_socket.c) ---------------------------------------
 * Rank `rank` of `size` ranks in separate processes (engine/tp_link.h makes the connections),
 * star-connected through rank 0, which sums in rank order as the CPU communicator does: the same
 * bits. Host memory only: a collective given a backend other than the CPU's (NULL counts as the
 * CPU's) fails with CINFER_ERR_UNSUPPORTED and aborts the group. Rank 0 passes fds[1..size-1] (its
 * connection to each follower; fds[0] unused), a follower passes fds[0] (its connection to rank
 * 0). Takes ownership of those fds, even when it fails (closed by destroy). timeout_seconds <= 0:
 * CI_COMM_DEFAULT_TIMEOUT_SECONDS. */
cinfer_status ci_comm_socket_create(int rank, int size, const int *fds, double timeout_seconds,
                                    ci_comm **out);

/* ---- the NCCL communicator (kernels/cuda/comm_nccl.cu; without NCCL, comm_nccl_none.c) ---- */
enum { CI_COMM_ID_BYTES = 128 }; /* NCCL_UNIQUE_ID_BYTES */
typedef struct ci_comm_id {
    char bytes[CI_COMM_ID_BYTES];
} ci_comm_id;

/* 1 when this build has the NCCL communicator. */
int ci_comm_nccl_compiled(void);
/* Rank 0 makes the group's id and hands it to the others (a file, a pipe, the launcher) before
 * each calls ci_comm_nccl_create. */
cinfer_status ci_comm_nccl_unique_id(ci_comm_id *id);
/* Rank `rank` of `size` on CUDA device `device` (ncclCommInitRank; blocks until every rank has
 * joined). */
cinfer_status ci_comm_nccl_create(const ci_comm_id *id, int rank, int size, int device,
                                  ci_comm **out);

/* The model graph calls the collectives through these. */
static inline cinfer_status ci_all_reduce_sum(ci_comm *comm, ci_backend *be, ci_tensor *x) {
    return comm->ops->all_reduce_sum(comm, be, x);
}
static inline cinfer_status ci_all_gather_columns(ci_comm *comm, ci_backend *be, ci_tensor *out,
                                                  const ci_tensor *part) {
    return comm->ops->all_gather_columns(comm, be, out, part);
}
static inline cinfer_status ci_broadcast(ci_comm *comm, ci_backend *be, void *data, size_t bytes,
                                         int root) {
    return comm->ops->broadcast(comm, be, data, bytes, root);
}
static inline cinfer_status ci_comm_barrier(ci_comm *comm, ci_backend *be) {
    return comm->ops->barrier(comm, be);
}
static inline cinfer_status ci_comm_synchronize(ci_comm *comm, ci_backend *be,
                                                double timeout_seconds) {
    return comm->ops->synchronize(comm, be, timeout_seconds);
}
static inline void *ci_comm_gather_buffer(ci_comm *comm, size_t bytes) {
    return comm->ops->gather_buffer(comm, bytes);
}
static inline void ci_comm_abort(ci_comm *comm, const char *reason) {
    comm->ops->abort(comm, reason);
}
static inline void ci_comm_destroy(ci_comm *comm) {
    if (comm) comm->ops->destroy(comm);
}

#endif
