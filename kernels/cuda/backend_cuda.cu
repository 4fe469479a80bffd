// The CUDA backend: device memory, the stream and cuBLAS handle every op uses, the recorded decode
// step (a CUDA graph), and the op table. See kernels/backend.h for the decisions it makes.
#include <string.h>

#include "ops_cuda.h"

extern "C" {
#include "../device.h"
}

// cuBLAS's own scratch, handed to it so that it never allocates while a graph records; 32 MiB is
// what NVIDIA's documentation recommends for Hopper.
static const size_t CUBLAS_WORKSPACE_BYTES = 32u << 20;

extern "C" cinfer_status ci_cuda_available(int device) {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess) {
        cudaGetLastError(); // the "no driver" error is sticky until read
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "no usable CUDA device: %s (%s)",
                       cudaGetErrorString(error), cudaGetErrorName(error));
    }
    if (count == 0) return CI_FAIL(CINFER_ERR_UNSUPPORTED, "no CUDA device found");
    if (device < 0 || device >= count)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "CUDA device %d does not exist (%d found: 0..%d)",
                       device, count, count - 1);
    return CINFER_OK;
}

extern "C" cinfer_status ci_cuda_memory(int device, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    CI_TRY(ci_cuda_available(device));
    cudaError_t error = cudaSetDevice(device);
    if (error == cudaSuccess) error = cudaMemGetInfo(free_bytes, total_bytes);
    if (error != cudaSuccess) {
        cudaGetLastError();
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "CUDA device %d: cannot read its free memory: %s",
                       device, cudaGetErrorString(error));
    }
    return CINFER_OK;
}

// ---- memory ------------------------------------------------------------------------------------

// Zero-filled: the KV cache rows past the current position must hold finite values, because a
// recorded decode step's P·V spans the whole cache (with zero weights there; 0·NaN would be NaN).
static void *cuda_alloc(ci_backend *be, size_t bytes) {
    cuda_backend *cu = cuda_of(be);
    void *memory = NULL;
    CUDA_CHECK(cudaSetDevice(cu->device));
    if (cudaMalloc(&memory, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); // an allocation failure is reported by the caller, not sticky
        return NULL;
    }
    CUDA_CHECK(cudaMemsetAsync(memory, 0, bytes, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    return memory;
}

static void cuda_free(ci_backend *be, void *memory) {
    CUDA_CHECK(cudaSetDevice(cuda_of(be)->device));
    CUDA_CHECK(cudaFree(memory));
}

// Both copies wait for the stream: the host may reuse its buffer, or read the result, at once.
static void cuda_to_device(ci_backend *be, void *device_dst, const void *host_src, size_t bytes) {
    cuda_backend *cu = cuda_of(be);
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
}

static void cuda_to_host(ci_backend *be, void *host_dst, const void *device_src, size_t bytes) {
    cuda_backend *cu = cuda_of(be);
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, cu->stream));
    CUDA_CHECK(cudaStreamSynchronize(cu->stream));
}

// The ops share the workspace from its start (they run one after another on one stream): the
// largest of matmul's rounded input and what the backend's attention kind needs.
static int64_t widest_matmul_input(const ci_config *c) {
    int64_t widest_input = c->hidden_size;
    if (c->intermediate_size > widest_input) widest_input = c->intermediate_size;
    if ((int64_t)c->n_heads * c->head_dim > widest_input)
        widest_input = (int64_t)c->n_heads * c->head_dim;
    return widest_input;
}

static size_t cuda_workspace_bytes(const ci_backend *be, const ci_config *c, int n_ctx,
                                   int n_seqs) {
    const size_t matmul =
        matmul_cuda_scratch_bytes(ci_rows_per_pass(n_ctx, n_seqs), widest_matmul_input(c));
    const size_t attention = attention_cuda_workspace_bytes(be->attention, c, n_ctx, n_seqs,
                                                            ci_tokens_per_pass(n_ctx, n_seqs));
    return matmul > attention ? matmul : attention;
}

// A ragged step's ops share the workspace as a lockstep pass's do: matmul's rounded input for
// every row of the step (the engine's steps run up to max_batched_tokens rows, past a lockstep
// pass's CI_MAX_BATCH), or what the paged attention needs.
static size_t cuda_paged_workspace_bytes(const ci_backend *be, const ci_config *c, int max_rows,
                                         int max_seq_len, int max_seqs) {
    const size_t matmul = matmul_cuda_scratch_bytes(max_rows, widest_matmul_input(c));
    const size_t attention = paged_workspace_bytes_cuda(be, c, max_rows, max_seq_len, max_seqs);
    return matmul > attention ? matmul : attention;
}

// ---- the recorded decode step ------------------------------------------------------------------

static void drop_graphs(cuda_backend *cu) {
    for (int i = 0; i < cu->n_graphs; i++) CUDA_CHECK(cudaGraphExecDestroy(cu->graphs[i]));
    free(cu->graphs);
    cu->graphs = NULL;
    cu->n_graphs = 0;
}

static void cuda_capture_begin(ci_backend *be, int record) {
    cuda_backend *cu = cuda_of(be);
    cu->capturing = 1;
    cu->recording = record;
    if (!record) return;
    // thread-local: a call that is illegal during capture fails here, not in another thread
    CUDA_CHECK(cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
}

// A backend keeps several recordings (the engine records one decode step per padded batch size),
// each instantiated once and named by its index.
static int cuda_capture_end(ci_backend *be, int *id) {
    cuda_backend *cu = cuda_of(be);
    const int recording = cu->recording;
    cu->capturing = cu->recording = 0;
    if (!recording) return 0;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t error = cudaStreamEndCapture(cu->stream, &graph);
    if (error == cudaSuccess) error = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) CUDA_CHECK(cudaGraphDestroy(graph)); // the instantiated graph stands alone
    cudaGraphExec_t *grown = NULL;
    if (error == cudaSuccess) {
        grown = (cudaGraphExec_t *)realloc(cu->graphs, (size_t)(cu->n_graphs + 1) * sizeof *grown);
        if (!grown) error = cudaErrorMemoryAllocation;
    }
    if (error != cudaSuccess) {
        fprintf(stderr,
                "cinfer: recording a decode step as a CUDA graph failed (%s); that step runs "
                "without it\n",
                cudaGetErrorString(error));
        cudaGetLastError();
        if (exec) CUDA_CHECK(cudaGraphExecDestroy(exec));
        return -1;
    }
    cu->graphs = grown;
    cu->graphs[cu->n_graphs] = exec;
    *id = cu->n_graphs++;
    return 0;
}

static void cuda_replay(ci_backend *be, int id) {
    cuda_backend *cu = cuda_of(be);
    CI_ASSERT(id >= 0 && id < cu->n_graphs);
    CUDA_CHECK(cudaGraphLaunch(cu->graphs[id], cu->stream));
}

// Queued on the stream before the replay that reads it. host_position is rewritten only after
// the caller has waited for the step's result, so the copy never sees a later value.
static void cuda_set_position(ci_backend *be, int pos0) {
    cuda_backend *cu = cuda_of(be);
    *cu->host_position = pos0;
    CUDA_CHECK(cudaMemcpyAsync(cu->position, cu->host_position, sizeof(int), cudaMemcpyHostToDevice,
                               cu->stream));
}

static void cuda_release(ci_backend *be) {
    cuda_backend *cu = cuda_of(be);
    CUDA_CHECK(cudaSetDevice(cu->device));
    if (cu->stream) CUDA_CHECK(cudaStreamSynchronize(cu->stream));
    drop_graphs(cu);
    for (int i = 0; i < cu->n_marks; i++) CUDA_CHECK(cudaEventDestroy(cu->marks[i]));
    free(cu->marks);
    if (cu->cublas) CUBLAS_CHECK(cublasDestroy(cu->cublas));
    if (cu->cublas_workspace) CUDA_CHECK(cudaFree(cu->cublas_workspace));
    if (cu->position) CUDA_CHECK(cudaFree(cu->position));
    if (cu->host_position) CUDA_CHECK(cudaFreeHost(cu->host_position));
    if (cu->stream) CUDA_CHECK(cudaStreamDestroy(cu->stream));
}

static void cuda_synchronize(ci_backend *be) {
    CUDA_CHECK(cudaStreamSynchronize(cuda_of(be)->stream));
}

// ---- timing marks: CUDA events on the stream ---------------------------------------------------

static void cuda_mark(ci_backend *be, int slot) {
    cuda_backend *cu = cuda_of(be);
    CI_ASSERT(slot >= 0 && !cu->recording);
    if (slot >= cu->n_marks) {
        const int n = slot + 1 > 2 * cu->n_marks ? slot + 1 : 2 * cu->n_marks;
        cudaEvent_t *grown = (cudaEvent_t *)realloc(cu->marks, (size_t)n * sizeof *grown);
        if (!grown) return; // the slot reads NaN
        cu->marks = grown;
        for (int i = cu->n_marks; i < n; i++, cu->n_marks++)
            if (cudaEventCreate(&cu->marks[i]) != cudaSuccess) {
                cudaGetLastError();
                return;
            }
    }
    CUDA_CHECK(cudaEventRecord(cu->marks[slot], cu->stream));
}

static double cuda_seconds_between(ci_backend *be, int from, int to) {
    cuda_backend *cu = cuda_of(be);
    if (from < 0 || to < 0 || from >= cu->n_marks || to >= cu->n_marks) return NAN;
    CUDA_CHECK(cudaEventSynchronize(cu->marks[to]));
    float ms = 0.0f;
    // an event never recorded reads as an error, not a time
    if (cudaEventElapsedTime(&ms, cu->marks[from], cu->marks[to]) != cudaSuccess) {
        cudaGetLastError();
        return NAN;
    }
    return 1e-3 * (double)ms;
}

static const ci_backend_ops cuda_ops = {
    /* name */ "cuda",
    /* alloc */ cuda_alloc,
    /* free */ cuda_free,
    /* to_device */ cuda_to_device,
    /* to_host */ cuda_to_host,
    /* workspace_bytes */ cuda_workspace_bytes,
    /* embedding */ embedding_cuda,
    /* rmsnorm */ rmsnorm_cuda,
    /* matmul */ matmul_cuda,
    /* rope */ rope_cuda,
    /* attention */ attention_cuda,
    /* diff_attention */ diff_attention_cuda,
    /* gated_activation */ gated_activation_cuda,
    /* kv_store */ kv_store_cuda,
    /* rope_rows */ rope_rows_cuda,
    /* kv_store_paged */ kv_store_paged_cuda,
    /* paged_attention */ paged_attention_cuda,
    /* paged_diff_attention */ paged_diff_attention_cuda,
    /* paged_workspace_bytes */ cuda_paged_workspace_bytes,
    /* argmax */ argmax_cuda,
    /* capture_begin */ cuda_capture_begin,
    /* capture_end */ cuda_capture_end,
    /* replay */ cuda_replay,
    /* set_position */ cuda_set_position,
    /* release */ cuda_release,
    /* synchronize */ cuda_synchronize,
    /* mark */ cuda_mark,
    /* seconds_between */ cuda_seconds_between,
};

// Setup calls can fail for reasons outside the program (a device in exclusive mode, memory taken):
// they return an error with the call's name rather than abort.
#define SETUP(call, what)                                                                          \
    do {                                                                                           \
        cudaError_t setup_error_ = (call);                                                         \
        if (setup_error_ != cudaSuccess) {                                                         \
            cudaGetLastError();                                                                    \
            status = CI_FAIL(CINFER_ERR_UNSUPPORTED, "CUDA device %d: %s failed: %s", device,      \
                             what, cudaGetErrorString(setup_error_));                              \
            goto failed;                                                                           \
        }                                                                                          \
    } while (0)

extern "C" cinfer_status ci_cuda_backend_create(int device, ci_backend **out) {
    *out = NULL;
    CI_TRY(ci_cuda_available(device));
    cuda_backend *cu = (cuda_backend *)calloc(1, sizeof *cu);
    CI_CHECK_ALLOC(cu, sizeof *cu);
    cinfer_status status = CINFER_OK;
    cu->base.ops = &cuda_ops;
    cu->base.n_threads = 1;
    cu->device = device;
    SETUP(cudaSetDevice(device), "cudaSetDevice");
    SETUP(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    SETUP(cudaMalloc(&cu->cublas_workspace, CUBLAS_WORKSPACE_BYTES), "allocating cuBLAS workspace");
    SETUP(cudaMalloc((void **)&cu->position, sizeof(int)), "cudaMalloc");
    SETUP(cudaMallocHost((void **)&cu->host_position, sizeof(int)), "cudaMallocHost");
    if (cublasCreate(&cu->cublas) != CUBLAS_STATUS_SUCCESS) {
        cu->cublas = NULL;
        status = CI_FAIL(CINFER_ERR_UNSUPPORTED, "CUDA device %d: cublasCreate failed", device);
        goto failed;
    }
    // setting the stream resets the workspace to cuBLAS's pool, so the workspace comes second
    CUBLAS_CHECK(cublasSetStream(cu->cublas, cu->stream));
    CUBLAS_CHECK(cublasSetWorkspace(cu->cublas, cu->cublas_workspace, CUBLAS_WORKSPACE_BYTES));
    // Default math: no TF32 unless asked for (the GEMMs ask for CUBLAS_COMPUTE_32F, and Sgemm
    // stays F32), so that F32 runs are held to the CPU's 1e-3.
    CUBLAS_CHECK(cublasSetMathMode(cu->cublas, CUBLAS_DEFAULT_MATH));
    *out = &cu->base;
    return CINFER_OK;
failed:
    cuda_release(&cu->base);
    free(cu);
    return status;
}
