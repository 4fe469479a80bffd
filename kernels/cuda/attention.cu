// Causal attention over the KV cache, standard and differential: the op the model calls, which
// runs the backend's attention kind (be->attention):
//   eager  here: scores through batched cuBLAS GEMMs into global memory, the causal mask and
//          softmax in one kernel, then P·V through batched GEMMs, as transformers' eager path;
//          all in F32 (a BF16/F16 cache is widened into the workspace first);
//   sdpa, flash: the fused kernels of attention_sdpa.cuh, attention_flash.cuh and
//          attention_decode.cuh (see attention_kernels.cuh), which read the cache in its dtype.
//
// Query t of the call sits at position pos0 + t and sees keys [0, pos0 + t]. Query rows are taken
// in chunks so that the scores [H, rows, keys] fit the workspace at any context length.
//
// GQA by indexing: query head h reads KV head h / g (g = H / G) in place. With h = kv·g + j, the
// heads of one j over all KV heads sit at constant strides (query: g·D, cache: D), so one
// strided-batched GEMM per j (batch G) covers them; K and V are never copied per head.
//
// Layouts, row-major: q and out [T, H, D]; caches [n_ctx, G, D]; scores [H, rows, S] with S the
// keys spanned; diff-attention's per-head outputs [H, rows, 2D]. In cuBLAS's column-major terms:
//   scores_h (S×rows, ld S)    = K_kvᵀ-as-stored (lda G·D, op T) · Q_h (D×rows, ld H·D)
//   out_h    (D×rows, ld H·D)  = V_kv (D×S, ld G·D, op N)       · P_h (S×rows, ld S)
#include <math.h>

#include "attention_decode.cuh"
#include "attention_flash.cuh"
#include "attention_sdpa.cuh"
#include "ops_cuda.h"

// Eager's scores are computed in chunks of query rows sized to about this much scratch.
static const size_t ATTENTION_SCRATCH_TARGET = 256u << 20;

size_t attention_cuda_scratch_bytes(int n_heads, int head_dim, int n_ctx, int n_query_rows) {
    // per query row: a row of scores for every head, and a 2·D output per head (diff attention)
    const size_t per_row = (size_t)n_heads * ((size_t)n_ctx + 2 * (size_t)head_dim) * sizeof(float);
    return per_row * (size_t)n_query_rows;
}

size_t attention_cuda_widened_cache_bytes(int n_kv_heads, int head_dim, int n_ctx) {
    return 2 * (size_t)n_ctx * (size_t)n_kv_heads * (size_t)head_dim * sizeof(float);
}

typedef struct attention_shape {
    int n_tokens, n_heads, n_kv_heads, head_dim, n_ctx, group;
    const float *k, *v; // the caches in F32: as stored, or widened into the workspace
    float *scratch;     // the workspace past the widened caches
    int rows_per_chunk; // query rows whose scores fit the scratch at once
} attention_shape;

// A BF16/F16 cache becomes F32 rows [0, span) at the start of the workspace (eager's GEMMs run in
// F32 whatever the run dtype; eager is the baseline, not the fast path).
static void widen_caches(cuda_backend *cu, attention_shape *s, const ci_tensor *k_cache,
                         const ci_tensor *v_cache, int span) {
    if (k_cache->dtype == CI_F32) return;
    float *k = (float *)cu->base.workspace;
    float *v = k + (size_t)s->n_ctx * s->n_kv_heads * s->head_dim;
    const int64_t n = (int64_t)span * s->n_kv_heads * s->head_dim;
    convert_cuda(cu->stream, k, CI_F32, k_cache->data, k_cache->dtype, n);
    convert_cuda(cu->stream, v, CI_F32, v_cache->data, v_cache->dtype, n);
    s->k = k;
    s->v = v;
}

// The shapes every kind asserts (the model validated them at load).
static attention_shape check_shapes(const ci_tensor *out, const ci_tensor *q,
                                    const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    attention_shape s = {};
    s.n_tokens = (int)q->shape[0];
    s.n_heads = (int)q->shape[1];
    s.head_dim = (int)q->shape[2];
    s.n_kv_heads = (int)k_cache->shape[1];
    s.n_ctx = (int)k_cache->shape[0];
    CI_ASSERT(q->n_dims == 3 && k_cache->n_dims == 3 && v_cache->n_dims == 3 && out->n_dims == 3);
    CI_ASSERT(k_cache->shape[2] == s.head_dim && v_cache->shape[1] == s.n_kv_heads &&
              v_cache->shape[2] == s.head_dim && v_cache->shape[0] == s.n_ctx);
    CI_ASSERT(s.n_heads % s.n_kv_heads == 0 && pos0 >= 0 && pos0 + s.n_tokens <= s.n_ctx);
    CI_ASSERT(ci_tensor_numel(out) == ci_tensor_numel(q));
    CI_ASSERT(q->dtype == CI_F32 && k_cache->dtype == v_cache->dtype);
    s.group = s.n_heads / s.n_kv_heads;
    return s;
}

// Eager's workspace: the widened caches (when not F32), then scores for rows_per_chunk query rows.
static attention_shape eager_layout(const ci_backend *be, const ci_tensor *out, const ci_tensor *q,
                                    const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    attention_shape s = check_shapes(out, q, k_cache, v_cache, pos0);
    s.k = (const float *)k_cache->data;
    s.v = (const float *)v_cache->data;
    const size_t widened =
        k_cache->dtype == CI_F32
            ? 0
            : attention_cuda_widened_cache_bytes(s.n_kv_heads, s.head_dim, s.n_ctx);
    CI_ASSERT(be->workspace_bytes > widened);
    s.scratch = (float *)((char *)be->workspace + widened);
    const size_t per_row = attention_cuda_scratch_bytes(s.n_heads, s.head_dim, s.n_ctx, 1);
    const size_t fit = (be->workspace_bytes - widened) / per_row;
    CI_ASSERT(fit >= 1); // workspace_bytes reserves at least one query row
    s.rows_per_chunk = fit < (size_t)s.n_tokens ? (int)fit : s.n_tokens;
    return s;
}

// ---- the mask and softmax: one block per (head, query row) -------------------------------------
// Row r = h·rows + t of scores[.., S] is query t0 + t, which sees keys [0, pos0 + t0 + t]. Those
// become softmax probabilities; the rest of the row becomes exactly 0, so that P·V over the whole
// span adds nothing from keys the query must not see (the cache is zero-filled when allocated, so
// the rows past the position hold finite values).

__global__ void masked_softmax_kernel(float *scores, int rows, int n_keys_spanned,
                                      position_arg pos0, int t0) {
    __shared__ float shared[ROW_THREADS / WARP];
    const int t = blockIdx.x % rows;
    float *row = scores + (int64_t)blockIdx.x * n_keys_spanned;
    const int visible = position_value(pos0) + t0 + t + 1;
    float local_max = -INFINITY;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) local_max = fmaxf(local_max, row[s]);
    const float row_max = block_max(local_max, shared);
    float local_sum = 0.0f;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) local_sum += expf(row[s] - row_max);
    const float sum = block_sum(local_sum, shared);
    for (int s = threadIdx.x; s < n_keys_spanned; s += blockDim.x)
        row[s] = s < visible ? expf(row[s] - row_max) / sum : 0.0f;
}

// scores[h, t, :] = Q[t0 + t, h] · K_kv(h)ᵀ / sqrt(D), then masked softmax
static void attention_probabilities(cuda_backend *cu, const attention_shape &s, float *scores,
                                    const float *q, const float *k_cache, position_arg pos0, int t0,
                                    int rows, int span) {
    const float scale = (float)(1.0 / sqrt((double)s.head_dim)), zero = 0.0f;
    const int D = s.head_dim, G = s.n_kv_heads, H = s.n_heads, g = s.group;
    for (int j = 0; j < g; j++)
        CUBLAS_CHECK(cublasSgemmStridedBatched(
            cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, span, rows, D, &scale, k_cache, G * D,
            (long long)D, q + ((int64_t)t0 * H + j) * D, H * D, (long long)g * D, &zero,
            scores + (int64_t)j * rows * span, span, (long long)g * rows * span, G));
    masked_softmax_kernel<<<(unsigned)(H * rows), ROW_THREADS, 0, cu->stream>>>(scores, rows, span,
                                                                                pos0, t0);
    CUDA_CHECK_LAUNCH();
}

// ---- differential attention --------------------------------------------------------------------
// Head pair p = (p, p + P), P = H/2. Both maps weight Vcat_p = [V_kv(p) ‖ V_kv(p+P)]: each head h
// gets its own [rows, 2D] output, O_h = A_h·Vcat_p(h), and the epilogue combines the pair.

// Y_p = (1 − lambda_init) · (O_p − lambda·O_{p+P}) / sqrt(mean over 2D of its squares + eps),
// into out[t0 + t, 2pD : 2(p+1)D]. One block per (query row, pair).
__global__ void diff_epilogue_kernel(float *out, const float *per_head, int rows, int n_pairs,
                                     int head_dim, float lambda, float lambda_init, float eps,
                                     int t0) {
    __shared__ float shared[ROW_THREADS / WARP];
    const int t = blockIdx.x / n_pairs, p = blockIdx.x % n_pairs, width = 2 * head_dim;
    const float *o1 = per_head + ((int64_t)p * rows + t) * width;
    const float *o2 = per_head + ((int64_t)(p + n_pairs) * rows + t) * width;
    float local = 0.0f;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        const float o = o1[j] - lambda * o2[j];
        local += o * o;
    }
    const float sum_squares = block_sum(local, shared);
    const float norm = (1.0f - lambda_init) / sqrtf(sum_squares / (float)width + eps);
    float *y = out + ((int64_t)(t0 + t) * 2 * n_pairs + 2 * p) * head_dim;
    for (int j = threadIdx.x; j < width; j += blockDim.x) y[j] = (o1[j] - lambda * o2[j]) * norm;
}

// Both maps of eager attention over F32 caches already in place (s.k, s.v, s.scratch and
// s.rows_per_chunk set): q and out [n_tokens, H, D] at row strides H·D, query t at position
// pos0 + t. Each chunk's GEMMs span the keys its last query sees (host_pos0 + t0 + rows), or the
// whole cache when full_span (a recorded step, whose position only the device knows; the
// softmax masks past it).
static void eager_run(cuda_backend *cu, const attention_shape &s, float *out, const float *q,
                      position_arg pos0, int host_pos0, int full_span,
                      const differential_terms *diff) {
    const int D = s.head_dim, G = s.n_kv_heads, H = s.n_heads, g = s.group, P = H / 2;
    const float one = 1.0f, zero = 0.0f;
    float *scores = s.scratch;
    // diff attention's per-head outputs follow the largest scores block of a chunk
    float *per_head = scores + (size_t)H * s.rows_per_chunk * s.n_ctx;
    for (int t0 = 0; t0 < s.n_tokens; t0 += s.rows_per_chunk) {
        const int rows = s.n_tokens - t0 < s.rows_per_chunk ? s.n_tokens - t0 : s.rows_per_chunk;
        const int span = full_span ? s.n_ctx : host_pos0 + t0 + rows;
        attention_probabilities(cu, s, scores, q, s.k, pos0, t0, rows, span);
        if (!diff) {
            // out[t0 + t, h] = P_h[t] · V_kv(h)
            for (int j = 0; j < g; j++)
                CUBLAS_CHECK(cublasSgemmStridedBatched(
                    cu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, span, &one, s.v, G * D,
                    (long long)D, scores + (int64_t)j * rows * span, span,
                    (long long)g * rows * span, &zero, out + ((int64_t)t0 * H + j) * D, H * D,
                    (long long)g * D, G));
            continue;
        }
        // O_h[:, half·D : (half+1)·D] = A_h · V_kv(p + half·P), p = h mod P
        for (int h = 0; h < H; h++) {
            const int p = h % P;
            for (int half = 0; half < 2; half++) {
                const int kv = (p + half * P) / s.group;
                CUBLAS_CHECK(cublasSgemm(cu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, span, &one,
                                         s.v + (int64_t)kv * D, G * D,
                                         scores + (int64_t)h * rows * span, span, &zero,
                                         per_head + (int64_t)h * rows * 2 * D + half * D, 2 * D));
            }
        }
        diff_epilogue_kernel<<<(unsigned)(rows * P), ROW_THREADS, 0, cu->stream>>>(
            out, per_head, rows, P, D, diff->lambda, diff->lambda_init, diff->eps, t0);
        CUDA_CHECK_LAUNCH();
    }
}

// One sequence's eager attention over its cache tensors: widened to F32 first when stored in
// BF16/F16.
static void eager_attention(cuda_backend *cu, ci_tensor *out, const ci_tensor *q,
                            const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                            const differential_terms *diff) {
    attention_shape s = eager_layout(&cu->base, out, q, k_cache, v_cache, pos0);
    CI_ASSERT(!diff || s.n_heads % 2 == 0);
    widen_caches(cu, &s, k_cache, v_cache, attention_key_span(cu, pos0, s.n_tokens, s.n_ctx));
    eager_run(cu, s, (float *)out->data, (const float *)q->data, position_for(cu, pos0), pos0,
              cu->capturing, diff);
}

void attention_cuda_eager_rows(cuda_backend *cu, float *out, const float *q, const float *k,
                               const float *v, int n_tokens, int n_heads, int n_kv_heads,
                               int head_dim, int n_ctx, position_arg pos0, int host_pos0,
                               int full_span, float *scratch, size_t scratch_bytes,
                               const differential_terms *diff) {
    CI_ASSERT(n_heads % n_kv_heads == 0 && (!diff || n_heads % 2 == 0));
    attention_shape s = {};
    s.n_tokens = n_tokens;
    s.n_heads = n_heads;
    s.n_kv_heads = n_kv_heads;
    s.head_dim = head_dim;
    s.n_ctx = n_ctx;
    s.group = n_heads / n_kv_heads;
    s.k = k;
    s.v = v;
    s.scratch = scratch;
    const size_t fit = scratch_bytes / attention_cuda_scratch_bytes(n_heads, head_dim, n_ctx, 1);
    CI_ASSERT(fit >= 1); // the paged workspace reserves at least one query row
    s.rows_per_chunk = fit < (size_t)n_tokens ? (int)fit : n_tokens;
    eager_run(cu, s, out, q, pos0, host_pos0, full_span, diff);
}

// ---- the fused kinds --------------------------------------------------------------------------

// Every kind takes q [T, H, D] or [B, T, H, D], caches [n_ctx, G, D] or [B, n_ctx, G, D]
// (kernels/backend.h); returns B after checking that the four agree.
static int checked_n_seqs(const ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                          const ci_tensor *v_cache) {
    const int64_t n_seqs = ci_tensor_n_seqs(q);
    CI_ASSERT(ci_tensor_n_seqs(out) == n_seqs && ci_tensor_n_seqs(k_cache) == n_seqs &&
              ci_tensor_n_seqs(v_cache) == n_seqs);
    return (int)n_seqs;
}

// The fused kernels take the B sequences in one launch (attention_params.n_seqs).
static attention_params fused_params(cuda_backend *cu, ci_tensor *out, const ci_tensor *q,
                                     const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    const int n_seqs = checked_n_seqs(out, q, k_cache, v_cache);
    const ci_tensor out0 = ci_tensor_seq(out, 0), q0 = ci_tensor_seq(q, 0);
    const ci_tensor k0 = ci_tensor_seq(k_cache, 0), v0 = ci_tensor_seq(v_cache, 0);
    const attention_shape s = check_shapes(&out0, &q0, &k0, &v0, pos0);
    attention_params p = {};
    p.q = (const float *)q->data;
    p.k_cache = k_cache->data;
    p.v_cache = v_cache->data;
    p.out = (float *)out->data;
    p.n_seqs = n_seqs;
    p.n_tokens = s.n_tokens;
    p.n_heads = s.n_heads;
    p.n_kv_heads = s.n_kv_heads;
    p.head_dim = s.head_dim;
    p.n_ctx = s.n_ctx;
    p.pos0 = position_for(cu, pos0);
    p.scale = (float)(1.0 / sqrt((double)s.head_dim));
    p.workspace = (float *)cu->base.workspace;
    p.workspace_bytes = cu->base.workspace_bytes;
    return p;
}

template <typename T>
static int fused_launch(cinfer_attention kind, const attention_params &p, cudaStream_t stream) {
    if (kind == CINFER_ATTENTION_SDPA) return attention_sdpa_launch<T>(p, stream);
    // flash: one new query is a decode step, split across the keys so that it fills the GPU
    return p.n_tokens == 1 ? attention_decode_launch<T>(p, stream)
                           : attention_flash_launch<T>(p, stream);
}

static void fused_attention(cuda_backend *cu, const attention_params &p, ci_dtype cache_dtype) {
    const cinfer_attention kind = cu->base.attention;
    int refused;
    switch (cache_dtype) {
    case CI_BF16: refused = fused_launch<__nv_bfloat16>(kind, p, cu->stream); break;
    case CI_F16: refused = fused_launch<__half>(kind, p, cu->stream); break;
    default: refused = fused_launch<float>(kind, p, cu->stream); break;
    }
    // the load checked head_dim (ci_cuda_attention_supports): a refusal here is a bug
    CI_ASSERT(!refused);
}

// ---- the op: the backend's attention kind ------------------------------------------------------

// Both ops, in the backend's kind. Eager runs the sequences of a batch one after another through
// the same workspace: its GEMMs are the baseline, not the fast path, and a sequence's scores
// already fill the scratch. The fused kinds take the batch in one launch.
static void run_attention(cuda_backend *cu, ci_tensor *out, const ci_tensor *q,
                          const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                          const differential_terms *diff) {
    if (cu->base.attention == CINFER_ATTENTION_EAGER) {
        const int n_seqs = checked_n_seqs(out, q, k_cache, v_cache);
        for (int b = 0; b < n_seqs; b++) {
            ci_tensor out_b = ci_tensor_seq(out, b), q_b = ci_tensor_seq(q, b);
            const ci_tensor k_b = ci_tensor_seq(k_cache, b), v_b = ci_tensor_seq(v_cache, b);
            eager_attention(cu, &out_b, &q_b, &k_b, &v_b, pos0, diff);
        }
        return;
    }
    attention_params p = fused_params(cu, out, q, k_cache, v_cache, pos0);
    if (diff) {
        CI_ASSERT(p.n_heads % 2 == 0);
        p.differential = 1;
        p.lambda = diff->lambda;
        p.lambda_init = diff->lambda_init;
        p.eps = diff->eps;
    }
    fused_attention(cu, p, k_cache->dtype);
}

void attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                    const ci_tensor *v_cache, int pos0) {
    run_attention(cuda_of(be), out, q, k_cache, v_cache, pos0, NULL);
}

void diff_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                         const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0, float lambda,
                         float lambda_init, float eps) {
    const differential_terms diff = {lambda, lambda_init, eps};
    run_attention(cuda_of(be), out, q, k_cache, v_cache, pos0, &diff);
}

size_t attention_cuda_workspace_bytes(cinfer_attention kind, const ci_config *c, int n_ctx,
                                      int n_seqs, int max_rows) {
    if (kind == CINFER_ATTENTION_SDPA) return 0;
    if (kind == CINFER_ATTENTION_FLASH) // decode's partial results per sequence and chunk of keys
        return attention_decode_workspace_bytes(n_seqs, c->n_heads, c->head_dim, n_ctx);
    // eager: one sequence at a time, max_rows of its queries
    const size_t per_row = attention_cuda_scratch_bytes(c->n_heads, c->head_dim, n_ctx, 1);
    size_t rows = ATTENTION_SCRATCH_TARGET / per_row;
    if (rows < 1) rows = 1;
    if (rows > (size_t)max_rows) rows = (size_t)max_rows;
    return attention_cuda_widened_cache_bytes(c->n_kv_heads, c->head_dim, n_ctx) + per_row * rows;
}

extern "C" int ci_cuda_attention_supports(cinfer_attention kind, int head_dim, int differential,
                                          ci_dtype cache_dtype, int device) {
    switch (kind) {
    case CINFER_ATTENTION_EAGER: return head_dim > 0;
    case CINFER_ATTENTION_SDPA: return attention_sdpa_supports(head_dim);
    case CINFER_ATTENTION_FLASH: {
        if (!attention_flash_supports(head_dim) || !attention_decode_supports(head_dim)) return 0;
        int optin = 0; // the most dynamic shared memory a block may ask for on this device
        if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess) {
            (void)cudaGetLastError();
            return 1; // no device to ask: the launch itself will say
        }
        return attention_flash_shared_bytes(head_dim, differential,
                                            (int)ci_dtype_size(cache_dtype)) <= (size_t)optin;
    }
    default: return 0;
    }
}
