// The CUDA backend's ops, with the same names as the CPU reference's (kernels/cpu/ops_cpu.h), and
// the backend state they share. Included by the .cu files only. See kernels/backend.h for what
// each op computes and for the decisions the CUDA backend makes (dtypes, memory, positions).
#ifndef CINFER_OPS_CUDA_H
#define CINFER_OPS_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "../../common/cuda_check.h"
#include "kernel_api.cuh"

extern "C" {
#include "../backend.h"
#include "../../common/error.h"
#include "../../common/random_weights.h"
}

// One CUDA backend: a device, a stream every op is queued on, a cuBLAS handle bound to it, and
// the recorded decode step.
struct cuda_backend {
    ci_backend base; // first: ci_backend_free frees the whole struct through it
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_workspace; // given to cuBLAS so that it never allocates while a graph records
    int *position;          // device: pos0 of a recorded step, written by set_position
    int *host_position;     // pinned staging for it
    int capturing;          // between capture_begin and capture_end: positions on the device
    int recording;          // ... and the stream is being recorded into a graph
    // every recorded step, named by its index (ci_recorded_step.id); freed with the backend
    cudaGraphExec_t *graphs;
    int n_graphs;
    cudaEvent_t *marks; // the timing marks (kernels/backend.h: mark), created on demand
    int n_marks;
};

static inline cuda_backend *cuda_of(ci_backend *be) { return (cuda_backend *)be; }

// Where a kernel finds pos0 (position_arg, kernel_api.cuh): by value in eager calls, from device
// memory in a recorded step.
static inline position_arg position_for(const cuda_backend *cu, int pos0) {
    position_arg p = {cu->capturing ? cu->position : nullptr, pos0};
    return p;
}

// Keys the attention GEMMs span for queries ending at pos0 + n_tokens: exactly those when run
// eagerly, the whole cache when recorded (the softmax masks what lies past the position).
static inline int attention_key_span(const cuda_backend *cu, int pos0, int n_tokens, int n_ctx) {
    return cu->capturing ? n_ctx : pos0 + n_tokens;
}

// ---- device helpers ----------------------------------------------------------------------------
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Element i of a weight (F32, BF16 or F16) as F32: widening is exact.
__device__ __forceinline__ float load_f32(const void *data, ci_dtype dtype, int64_t i) {
    switch (dtype) {
    case CI_BF16: return __bfloat162float(((const __nv_bfloat16 *)data)[i]);
    case CI_F16: return __half2float(((const __half *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

// Threads per block of the row kernels (norms, softmax, argmax): a multiple of the warp.
enum { ROW_THREADS = 256, WARP = 32 };

// Sum and max over a block of ROW_THREADS threads; every thread gets the result. `shared` holds
// ROW_THREADS / WARP floats; the call ends with a barrier, so it can be called again at once.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
__device__ __forceinline__ float block_sum(float v, float *shared) {
    v = warp_sum(v);
    if (threadIdx.x % WARP == 0) shared[threadIdx.x / WARP] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < ROW_THREADS / WARP; w++) total += shared[w];
    __syncthreads();
    return total;
}
__device__ __forceinline__ float block_max(float v, float *shared) {
    v = warp_max(v);
    if (threadIdx.x % WARP == 0) shared[threadIdx.x / WARP] = v;
    __syncthreads();
    float best = -INFINITY;
    for (int w = 0; w < ROW_THREADS / WARP; w++) best = fmaxf(best, shared[w]);
    __syncthreads();
    return best;
}

static inline unsigned blocks_for(int64_t n, int threads) {
    return (unsigned)((n + threads - 1) / threads);
}

// ---- ops (same names as the CPU's) --------------------------------------------------------------
void embedding_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                    const ci_tensor *table);
void rmsnorm_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                  float eps);
void matmul_cuda(ci_backend *be, const ci_tensor *x, const ci_projection *projections, int n,
                 int accumulate);
void rope_cuda(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0, const ci_rope_freqs *freqs);
void attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                    const ci_tensor *v_cache, int pos0);
void diff_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                         const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0, float lambda,
                         float lambda_init, float eps);
void gated_activation_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                           const ci_tensor *up, ci_activation act);
void kv_store_cuda(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                   const ci_tensor *v_new, int pos0);
void argmax_cuda(ci_backend *be, ci_tensor *ids, const ci_tensor *logits);
// the ragged step over a paged cache (attention_paged.cu)
void rope_rows_cuda(ci_backend *be, ci_tensor *q, ci_tensor *k, const ci_tensor *positions,
                    const ci_rope_freqs *freqs);
void kv_store_paged_cuda(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                         const ci_tensor *k_new, const ci_tensor *v_new, const ci_tensor *slots);
void paged_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                          const ci_tensor *k_pool, const ci_tensor *v_pool,
                          const ci_paged_step *step);
void paged_diff_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                               const ci_tensor *k_pool, const ci_tensor *v_pool,
                               const ci_paged_step *step, float lambda, float lambda_init,
                               float eps);
size_t paged_workspace_bytes_cuda(const ci_backend *be, const ci_config *config, int max_rows,
                                  int max_seq_len, int max_seqs);

// ---- helpers the ops share ---------------------------------------------------------------------
// out[t, n] += bias[n]; out is F32 [T, N], bias [N] in F32, BF16 or F16
void bias_add_cuda(cuda_backend *cu, float *out, const ci_tensor *bias, int64_t n_rows,
                   int64_t n_cols);
// dst[i] = src[i] converted (round to nearest even), F32/BF16/F16 either side
void convert_cuda(cudaStream_t stream, void *dst, ci_dtype dst_dtype, const void *src,
                  ci_dtype src_dtype, int64_t n);

// Scratch: the ops run one after another on one stream, so each uses the workspace from its
// start and the backend reserves the largest need.
size_t matmul_cuda_scratch_bytes(int64_t n_rows, int64_t widest_input);
size_t attention_cuda_scratch_bytes(int n_heads, int head_dim, int n_ctx, int n_query_rows);
// What the attention kind needs for a model of config c with n_ctx of context for each of n_seqs
// sequences, at most max_rows new queries of each sequence per call.
size_t attention_cuda_workspace_bytes(cinfer_attention kind, const ci_config *c, int n_ctx,
                                      int n_seqs, int max_rows);
size_t attention_cuda_widened_cache_bytes(int n_kv_heads, int head_dim, int n_ctx);

// What differential attention adds (docs/MODEL_MATH.md); NULL for standard attention.
typedef struct differential_terms {
    float lambda, lambda_init, eps;
} differential_terms;

// Eager attention (attention.cu) of n_tokens queries of one sequence, q and out [n_tokens, H, D],
// over F32 caches k, v [n_ctx, G, D], query t at position pos0 + t: the scores go through
// `scratch` in chunks of query rows that fit scratch_bytes. The GEMMs span the keys each chunk
// sees (host_pos0 + t0 + rows), or all n_ctx when full_span (a position only the device knows).
void attention_cuda_eager_rows(cuda_backend *cu, float *out, const float *q, const float *k,
                               const float *v, int n_tokens, int n_heads, int n_kv_heads,
                               int head_dim, int n_ctx, position_arg pos0, int host_pos0,
                               int full_span, float *scratch, size_t scratch_bytes,
                               const differential_terms *diff);

#endif
