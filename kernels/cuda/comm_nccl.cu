// The NCCL communicator (kernels/comm.h): one rank per GPU, each in its own process or thread,
// NCCL's collectives queued on the rank's backend stream so that they order with its ops without
// the host waiting. Compiled when CMake finds NCCL (CINFER_NCCL); compiled, not yet run on GPUs.
//
// Failure: NCCL's collectives are asynchronous, so a peer that died shows as a collective that
// never finishes. synchronize() polls the stream and NCCL's asynchronous error with a deadline and
// calls ncclCommAbort when it passes, which makes the pending NCCL kernels return; the
// communicator is then unusable (every later call fails), as the CPU communicator's aborted
// group is.
#include <nccl.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "ops_cuda.h"

extern "C" {
#include "../comm.h"
}

static_assert(sizeof(ncclUniqueId) == sizeof(ci_comm_id), "ci_comm_id must hold an ncclUniqueId");

struct nccl_comm {
    ci_comm base; // first: the table's functions take it
    ncclComm_t nccl;
    int device;
    // ncclCommAbort frees the communicator: the watchdog's abort (another thread) and every NCCL
    // call on it take this lock, and a call after the abort is refused rather than made
    pthread_mutex_t lock;
    int aborted;
    void *part; // gather_buffer, part_bytes
    size_t part_bytes;
    void
        *gathered; // all_gather_columns of several rows: [size, R, n] before the columns are placed
    size_t gathered_bytes;
    float *token; // the one float a barrier all-reduces
};

static nccl_comm *nccl_of(ci_comm *comm) { return (nccl_comm *)comm; }

static cinfer_status nccl_failed(const nccl_comm *c, ncclResult_t result, const char *call) {
    return CI_FAIL(CINFER_ERR_COMM,
                   "tensor-parallel rank %d of %d (CUDA device %d): %s failed: %s (%s)",
                   c->base.rank, c->base.size, c->device, call, ncclGetErrorString(result),
                   c->nccl ? ncclGetLastError(c->nccl) : "");
}
// Makes an NCCL call on c's communicator under its lock, refused once it is aborted.
#define NCCL_TRY(c, call)                                                                          \
    do {                                                                                           \
        pthread_mutex_lock(&(c)->lock);                                                            \
        if ((c)->aborted) {                                                                        \
            pthread_mutex_unlock(&(c)->lock);                                                      \
            return refuse_if_aborted(c);                                                           \
        }                                                                                          \
        ncclResult_t nccl_try_result_ = (call);                                                    \
        cinfer_status nccl_try_status_ =                                                           \
            nccl_try_result_ == ncclSuccess ? CINFER_OK                                            \
                                            : nccl_failed((c), nccl_try_result_, #call);           \
        pthread_mutex_unlock(&(c)->lock);                                                          \
        if (nccl_try_status_ != CINFER_OK) return nccl_try_status_;                               \
    } while (0)

static cinfer_status refuse_if_aborted(const nccl_comm *c) {
    if (!__atomic_load_n(&c->aborted, __ATOMIC_ACQUIRE)) return CINFER_OK;
    return CI_FAIL(CINFER_ERR_COMM,
                   "tensor-parallel rank %d of %d (CUDA device %d): the communicator was aborted",
                   c->base.rank, c->base.size, c->device);
}

// Device memory of at least bytes in *buffer (grown: the old one freed); between collectives only.
static cinfer_status grow(nccl_comm *c, void **buffer, size_t *have, size_t bytes,
                          const char *what) {
    if (bytes <= *have) return CINFER_OK;
    CUDA_CHECK(cudaSetDevice(c->device));
    void *grown = nullptr;
    if (cudaMalloc(&grown, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); // clear the error cudaMalloc left, so later checks see their own
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory: %zu bytes of %s on CUDA device %d", bytes,
                       what, c->device);
    }
    if (*buffer) CUDA_CHECK(cudaFree(*buffer));
    *buffer = grown;
    *have = bytes;
    return CINFER_OK;
}

static cinfer_status nccl_all_reduce_sum(ci_comm *comm, ci_backend *be, ci_tensor *x) {
    nccl_comm *c = nccl_of(comm);
    CI_TRY(refuse_if_aborted(c));
    CI_ASSERT(x->dtype == CI_F32);
    NCCL_TRY(c, ncclAllReduce(x->data, x->data, (size_t)ci_tensor_numel(x), ncclFloat32, ncclSum,
                              c->nccl, cuda_of(be)->stream));
    return CINFER_OK;
}

// NCCL gathers rank-major ([size, R, n]); the logits want the ranks' columns side by side
// ([R, size·n]). One row is both layouts at once; several rows are placed by strided copies.
static cinfer_status nccl_all_gather_columns(ci_comm *comm, ci_backend *be, ci_tensor *out,
                                             const ci_tensor *part) {
    nccl_comm *c = nccl_of(comm);
    CI_TRY(refuse_if_aborted(c));
    CI_ASSERT(out->dtype == CI_F32 && part->dtype == CI_F32);
    const int64_t rows = ci_tensor_n_rows(part), n = ci_tensor_row_size(part);
    const int size = comm->size;
    CI_ASSERT(ci_tensor_n_rows(out) == rows && ci_tensor_row_size(out) == n * size);
    cudaStream_t stream = cuda_of(be)->stream;
    if (rows == 1) {
        NCCL_TRY(c, ncclAllGather(part->data, out->data, (size_t)n, ncclFloat32, c->nccl, stream));
        return CINFER_OK;
    }
    const size_t row_bytes = (size_t)n * sizeof(float);
    CI_TRY(grow(c, &c->gathered, &c->gathered_bytes, (size_t)size * (size_t)rows * row_bytes,
                "the all-gather's staging"));
    NCCL_TRY(c, ncclAllGather(part->data, c->gathered, (size_t)(rows * n), ncclFloat32, c->nccl,
                              stream));
    for (int r = 0; r < size; r++)
        CUDA_CHECK(cudaMemcpy2DAsync((float *)out->data + (size_t)r * n, (size_t)size * row_bytes,
                                     (const char *)c->gathered + (size_t)r * rows * row_bytes,
                                     row_bytes, row_bytes, (size_t)rows, cudaMemcpyDeviceToDevice,
                                     stream));
    return CINFER_OK;
}

static cinfer_status nccl_broadcast(ci_comm *comm, ci_backend *be, void *data, size_t bytes,
                                    int root) {
    nccl_comm *c = nccl_of(comm);
    CI_TRY(refuse_if_aborted(c));
    CI_ASSERT(root >= 0 && root < comm->size);
    NCCL_TRY(c, ncclBroadcast(data, data, bytes, ncclUint8, root, c->nccl, cuda_of(be)->stream));
    return CINFER_OK;
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// Once, from whichever thread comes first: a process rank's watchdog (engine/tp_ranks.c) aborts
// from its own thread while this rank's host waits on the stream.
static void abort_comm(nccl_comm *c) {
    pthread_mutex_lock(&c->lock);
    if (!__atomic_exchange_n(&c->aborted, 1, __ATOMIC_ACQ_REL)) (void)ncclCommAbort(c->nccl);
    pthread_mutex_unlock(&c->lock);
}

static cinfer_status nccl_synchronize(ci_comm *comm, ci_backend *be, double timeout_seconds) {
    nccl_comm *c = nccl_of(comm);
    CI_TRY(refuse_if_aborted(c));
    if (timeout_seconds <= 0) timeout_seconds = CI_COMM_DEFAULT_TIMEOUT_SECONDS;
    const double deadline = seconds_now() + timeout_seconds;
    const struct timespec pause = {0, 100 * 1000}; // 100 µs between polls
    for (;;) {
        const cudaError_t done = cudaStreamQuery(cuda_of(be)->stream);
        ncclResult_t async = ncclSuccess;
        pthread_mutex_lock(&c->lock);
        if (c->aborted) { // by the watchdog, while this rank waited
            pthread_mutex_unlock(&c->lock);
            return refuse_if_aborted(c);
        }
        const ncclResult_t queried = ncclCommGetAsyncError(c->nccl, &async);
        if (queried != ncclSuccess) async = queried;
        const cinfer_status failed =
            async != ncclSuccess && async != ncclInProgress
                ? nccl_failed(c, async, "a collective (ncclCommGetAsyncError)")
                : CINFER_OK;
        pthread_mutex_unlock(&c->lock);
        if (failed != CINFER_OK) {
            abort_comm(c);
            return failed;
        }
        if (done == cudaSuccess) return CINFER_OK;
        if (done != cudaErrorNotReady) CUDA_CHECK(done);
        if (seconds_now() > deadline) {
            abort_comm(c);
            return CI_FAIL(CINFER_ERR_COMM,
                           "tensor-parallel rank %d of %d (CUDA device %d): its collectives did "
                           "not finish within %.1f s (a peer failed or hangs); the communicator "
                           "was aborted",
                           comm->rank, comm->size, c->device, timeout_seconds);
        }
        nanosleep(&pause, nullptr);
    }
}

// NCCL has no barrier: an all-reduce of one float that every rank waits for.
static cinfer_status nccl_barrier(ci_comm *comm, ci_backend *be) {
    nccl_comm *c = nccl_of(comm);
    CI_TRY(refuse_if_aborted(c));
    NCCL_TRY(c, ncclAllReduce(c->token, c->token, 1, ncclFloat32, ncclSum, c->nccl,
                              cuda_of(be)->stream));
    return nccl_synchronize(comm, be, 0);
}

static void *nccl_gather_buffer(ci_comm *comm, size_t bytes) {
    nccl_comm *c = nccl_of(comm);
    if (grow(c, &c->part, &c->part_bytes, bytes ? bytes : 1, "the all-gather's part") != CINFER_OK)
        return nullptr;
    return c->part;
}

// NCCL carries no message to the peers: they see their collectives fail, or time out in their
// own synchronize.
static void nccl_abort(ci_comm *comm, const char *reason) {
    (void)reason;
    abort_comm(nccl_of(comm));
}

static void nccl_destroy(ci_comm *comm) {
    nccl_comm *c = nccl_of(comm);
    pthread_mutex_lock(&c->lock); // (whoever could abort has stopped: the lock is for the rules)
    if (!c->aborted && c->nccl) (void)ncclCommDestroy(c->nccl);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    if (c->part) CUDA_CHECK(cudaFree(c->part));
    if (c->gathered) CUDA_CHECK(cudaFree(c->gathered));
    if (c->token) CUDA_CHECK(cudaFree(c->token));
    free(c);
}

static const ci_comm_ops nccl_comm_ops = {
    "nccl",       nccl_all_reduce_sum, nccl_all_gather_columns, nccl_broadcast,
    nccl_barrier, nccl_synchronize,    nccl_gather_buffer,      nccl_abort,
    nccl_destroy,
};

extern "C" int ci_comm_nccl_compiled(void) { return 1; }

extern "C" cinfer_status ci_comm_nccl_unique_id(ci_comm_id *id) {
    ncclUniqueId unique;
    const ncclResult_t result = ncclGetUniqueId(&unique);
    if (result != ncclSuccess)
        return CI_FAIL(CINFER_ERR_COMM, "ncclGetUniqueId failed: %s", ncclGetErrorString(result));
    memcpy(id->bytes, &unique, sizeof unique);
    return CINFER_OK;
}

extern "C" cinfer_status ci_comm_nccl_create(const ci_comm_id *id, int rank, int size, int device,
                                             ci_comm **out) {
    *out = nullptr;
    if (size < 1 || rank < 0 || rank >= size)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "rank %d of a tensor-parallel group of %d: ranks are 0 to size - 1", rank,
                       size);
    const cudaError_t selected = cudaSetDevice(device);
    if (selected != cudaSuccess)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "tensor-parallel rank %d: CUDA device %d: %s", rank,
                       device, cudaGetErrorString(selected));
    nccl_comm *c = (nccl_comm *)calloc(1, sizeof *c);
    CI_CHECK_ALLOC(c, sizeof *c);
    c->base.ops = &nccl_comm_ops;
    c->base.rank = rank;
    c->base.size = size;
    c->device = device;
    pthread_mutex_init(&c->lock, nullptr);
    ncclUniqueId unique;
    memcpy(&unique, id->bytes, sizeof unique);
    const ncclResult_t result = ncclCommInitRank(&c->nccl, size, unique, rank);
    if (result != ncclSuccess) {
        cinfer_status status = nccl_failed(c, result, "ncclCommInitRank");
        pthread_mutex_destroy(&c->lock);
        free(c);
        return status;
    }
    if (cudaMalloc(&c->token, sizeof *c->token) != cudaSuccess) {
        (void)cudaGetLastError();
        nccl_destroy(&c->base);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory on CUDA device %d", device);
    }
    *out = &c->base;
    return CINFER_OK;
}
