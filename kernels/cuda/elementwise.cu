// The ops that are not GEMMs or attention: embedding gather, RMSNorm, RoPE, the gated MLP
// activation, storing keys and values in the cache, argmax, and the dtype
// conversions and bias add that matmul and the weight upload use.
//
// Each op is a kernel, then its launcher; launchers check shapes the way the CPU ops do
// (CI_ASSERT), queue on the backend's stream and check the launch. The arithmetic follows the CPU
// reference (kernels/cpu) in F32; where the CPU sums in double, the GPU sums in F32 with a tree,
// which over the few thousand terms of a row is within a few F32 ulps (the tests bound it).
#include <math.h>

#include "ops_cuda.h"

enum { ELEMENT_THREADS = 256 };

// ---- embedding: out[t] = table[tokens[t]] ------------------------------------------------------

__global__ void embedding_kernel(float *out, const int32_t *ids, const void *table,
                                 ci_dtype table_dtype, int64_t n_tokens, int64_t dim) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tokens * dim) return;
    const int64_t t = i / dim, e = i % dim;
    out[i] = load_f32(table, table_dtype, (int64_t)ids[t] * dim + e);
}

void embedding_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                    const ci_tensor *table) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_tokens = ci_tensor_numel(tokens), dim = table->shape[1];
    CI_ASSERT(tokens->dtype == CI_I32 && out->dtype == CI_F32 && table->n_dims == 2);
    CI_ASSERT(ci_tensor_n_rows(out) == n_tokens && ci_tensor_row_size(out) == dim);
    // token ids were checked against the vocabulary by the session, on the host
    embedding_kernel<<<blocks_for(n_tokens * dim, ELEMENT_THREADS), ELEMENT_THREADS, 0,
                       cu->stream>>>((float *)out->data, (const int32_t *)tokens->data, table->data,
                                     table->dtype, n_tokens, dim);
    CUDA_CHECK_LAUNCH();
}

// ---- RMSNorm: out = weight ⊙ x / sqrt(mean(x²) + eps), one block per row -----------------------

__global__ void rmsnorm_kernel(float *out, const float *x, const void *weight, ci_dtype w_dtype,
                               int64_t dim, float eps) {
    __shared__ float shared[ROW_THREADS / WARP];
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *yr = out + (int64_t)blockIdx.x * dim;
    float sum_squares = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum_squares += xr[i] * xr[i];
    sum_squares = block_sum(sum_squares, shared);
    // as the CPU: the inverse RMS rounded to F32 once, then weight * (x * inv_rms)
    const float inv_rms = 1.0f / sqrtf(sum_squares / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = load_f32(weight, w_dtype, i) * (xr[i] * inv_rms);
}

void rmsnorm_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                  float eps) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_rows = ci_tensor_n_rows(x), dim = ci_tensor_row_size(x);
    CI_ASSERT(ci_tensor_numel(weight) == dim && ci_tensor_numel(out) == n_rows * dim);
    CI_ASSERT(x->dtype == CI_F32 && out->dtype == CI_F32);
    rmsnorm_kernel<<<(unsigned)n_rows, ROW_THREADS, 0, cu->stream>>>(
        (float *)out->data, (const float *)x->data, weight->data, weight->dtype, dim, eps);
    CUDA_CHECK_LAUNCH();
}

// ---- RoPE, rotate-half: v' = v·cos + rotate_half(v)·sin, angle = position · inv_freq[i] --------
// One thread per (row, head, i < D/2) over the H query heads and then the G key heads. Row r of
// the B·T rows is token t = r mod T of sequence r / T (lockstep sequences share positions), at
// position pos0 + t. cos and sin are computed from the frequency table (models/rope.c computed it
// once on the host for every scaling type) with the precise cosf/sinf, not fast-math intrinsics:
// angles reach thousands of radians and the reference rounds them as F32 too.

__global__ void rope_kernel(float *q, float *k, int64_t n_rows, int64_t tokens_per_seq,
                            int n_heads, int n_kv_heads, int head_dim, position_arg pos0,
                            const float *inv_freq, float attention_scaling) {
    const int half = head_dim / 2, heads = n_heads + n_kv_heads;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_rows * heads * half) return;
    const int i = (int)(idx % half);
    const int head = (int)((idx / half) % heads);
    const int64_t r = idx / ((int64_t)half * heads);
    float *v = head < n_heads ? q + (r * n_heads + head) * head_dim
                              : k + (r * n_kv_heads + (head - n_heads)) * head_dim;
    const float position = (float)(position_value(pos0) + r % tokens_per_seq);
    const float angle = position * inv_freq[i];
    const float c = cosf(angle) * attention_scaling, s = sinf(angle) * attention_scaling;
    const float x1 = v[i], x2 = v[i + half];
    v[i] = x1 * c + (-x2) * s;
    v[i + half] = x2 * c + x1 * s;
}

// q [T, H, D] or [B, T, H, D]; k likewise with G heads (kernels/backend.h).
void rope_cuda(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0, const ci_rope_freqs *freqs) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_seqs = ci_tensor_n_seqs(q);
    const ci_tensor q0 = ci_tensor_seq(q, 0), k0 = ci_tensor_seq(k, 0);
    const int64_t n_tokens = q0.shape[0], head_dim = q0.shape[2];
    CI_ASSERT(q0.n_dims == 3 && k0.n_dims == 3 && ci_tensor_n_seqs(k) == n_seqs &&
              k0.shape[0] == n_tokens && k0.shape[2] == head_dim && head_dim % 2 == 0);
    const int64_t n_rows = n_seqs * n_tokens;
    const int64_t n = n_rows * (q0.shape[1] + k0.shape[1]) * (head_dim / 2);
    if (n == 0) return;
    rope_kernel<<<blocks_for(n, ELEMENT_THREADS), ELEMENT_THREADS, 0, cu->stream>>>(
        (float *)q->data, (float *)k->data, n_rows, n_tokens, (int)q0.shape[1], (int)k0.shape[1],
        (int)head_dim, position_for(cu, pos0), freqs->inv_freq, freqs->attention_scaling);
    CUDA_CHECK_LAUNCH();
}

// ---- the gated MLP activation: out = act(gate) ⊙ up ---------------------------------------------

__device__ __forceinline__ float activate(float x, ci_activation act) {
    switch (act) {
    case CI_ACT_SILU: return x / (1.0f + expf(-x));
    case CI_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case CI_ACT_GELU_TANH: {
        const float sqrt_2_over_pi = 0.7978845608028654f;
        return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
    }
    case CI_ACT_RELU: return x > 0.0f ? x : 0.0f;
    }
    return NAN;
}

__global__ void gated_activation_kernel(float *out, const float *gate, const float *up, int64_t n,
                                        ci_activation act) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = activate(gate[i], act) * up[i];
}

void gated_activation_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                           const ci_tensor *up, ci_activation act) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n = ci_tensor_numel(gate);
    CI_ASSERT(ci_tensor_numel(up) == n && ci_tensor_numel(out) == n);
    if (n == 0) return;
    gated_activation_kernel<<<blocks_for(n, ELEMENT_THREADS), ELEMENT_THREADS, 0, cu->stream>>>(
        (float *)out->data, (const float *)gate->data, (const float *)up->data, n, act);
    CUDA_CHECK_LAUNCH();
}

// ---- cache rows [pos0, pos0 + T) = the new keys and values -------------------------------------
// The row comes from position_arg, so that a recorded decode step writes where the current position
// says, not where it said when it was recorded. Element i of the new rows [B, T, G·D] belongs to
// sequence b = i / (T·G·D) and goes to its cache b ([B, n_ctx, G·D]).

// The cache holds the run dtype (kernels/backend.h: ci_kv_cache_dtype): K and V are rounded to it
// once, here, as transformers' bf16 cache does.
template <typename T>
__global__ void kv_store_kernel(T *k_cache, T *v_cache, const float *k_new, const float *v_new,
                                int64_t n, int64_t row_size, int64_t tokens_per_seq, int64_t n_ctx,
                                position_arg pos0) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t per_seq = tokens_per_seq * row_size;
    const int64_t b = i / per_seq, within = i % per_seq;
    const int64_t offset = (b * n_ctx + position_value(pos0)) * row_size + within;
    k_cache[offset] = ci_from_float<T>(k_new[i]);
    v_cache[offset] = ci_from_float<T>(v_new[i]);
}

// The shape of one store: n elements of new rows, row_size = G·D.
struct kv_store_shape {
    int64_t n, row_size, tokens_per_seq, n_ctx;
};

template <typename T>
static void kv_store_as(cuda_backend *cu, ci_tensor *k_cache, ci_tensor *v_cache,
                        const ci_tensor *k_new, const ci_tensor *v_new, const kv_store_shape &s,
                        int pos0) {
    kv_store_kernel<T><<<blocks_for(s.n, ELEMENT_THREADS), ELEMENT_THREADS, 0, cu->stream>>>(
        (T *)k_cache->data, (T *)v_cache->data, (const float *)k_new->data,
        (const float *)v_new->data, s.n, s.row_size, s.tokens_per_seq, s.n_ctx,
        position_for(cu, pos0));
    CUDA_CHECK_LAUNCH();
}

// k_new, v_new [T, G, D] or [B, T, G, D]; caches [n_ctx, G, D] or [B, n_ctx, G, D].
void kv_store_cuda(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                   const ci_tensor *v_new, int pos0) {
    cuda_backend *cu = cuda_of(be);
    const ci_tensor k_seq = ci_tensor_seq(k_new, 0), cache_seq = ci_tensor_seq(k_cache, 0);
    const int64_t n_seqs = ci_tensor_n_seqs(k_new);
    const kv_store_shape shape = {ci_tensor_numel(k_new), ci_tensor_row_size(&cache_seq),
                                  k_seq.shape[0], cache_seq.shape[0]};
    CI_ASSERT(cache_seq.n_dims == 3 && k_seq.n_dims == 3 && ci_tensor_n_seqs(k_cache) == n_seqs &&
              ci_tensor_n_seqs(v_cache) == n_seqs && ci_tensor_n_seqs(v_new) == n_seqs);
    CI_ASSERT(ci_tensor_numel(v_new) == shape.n &&
              ci_tensor_row_size(&k_seq) == shape.row_size);
    CI_ASSERT(pos0 >= 0 && pos0 + shape.tokens_per_seq <= shape.n_ctx);
    CI_ASSERT(k_cache->dtype == v_cache->dtype && k_new->dtype == CI_F32);
    if (shape.n == 0) return;
    switch (k_cache->dtype) {
    case CI_BF16: kv_store_as<__nv_bfloat16>(cu, k_cache, v_cache, k_new, v_new, shape, pos0); break;
    case CI_F16: kv_store_as<__half>(cu, k_cache, v_cache, k_new, v_new, shape, pos0); break;
    default: kv_store_as<float>(cu, k_cache, v_cache, k_new, v_new, shape, pos0); break;
    }
}

// ---- argmax: the first index of the largest logit, NaN never winning ---------------------------
// The same choice as the host sampler (engine/sampling.c): among non-NaN values the largest, ties
// to the lowest index; when every value is NaN, the last index. `better` is that order, and it is
// associative, so a tree over the row gives what the host's left-to-right scan gives.

__device__ __forceinline__ bool better(float value, int index, float best_value, int best_index) {
    if (isnan(value)) return isnan(best_value) && index > best_index;
    if (isnan(best_value)) return true;
    return value > best_value || (value == best_value && index < best_index);
}

__global__ void argmax_kernel(int32_t *ids, const float *logits, int64_t n) {
    __shared__ float values[ROW_THREADS];
    __shared__ int indices[ROW_THREADS];
    const float *row = logits + (int64_t)blockIdx.x * n;
    float best = NAN;
    int best_index = -1;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        if (best_index < 0 || better(row[i], (int)i, best, best_index))
            best = row[i], best_index = (int)i;
    values[threadIdx.x] = best;
    indices[threadIdx.x] = best_index;
    __syncthreads();
    for (int stride = ROW_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const float v = values[threadIdx.x + stride];
            const int j = indices[threadIdx.x + stride];
            if (j >= 0 && (indices[threadIdx.x] < 0 ||
                           better(v, j, values[threadIdx.x], indices[threadIdx.x]))) {
                values[threadIdx.x] = v;
                indices[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = indices[0];
}

void argmax_cuda(ci_backend *be, ci_tensor *ids, const ci_tensor *logits) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_rows = ci_tensor_n_rows(logits), n = ci_tensor_row_size(logits);
    CI_ASSERT(ids->dtype == CI_I32 && ci_tensor_numel(ids) >= n_rows && logits->dtype == CI_F32);
    CI_ASSERT(n > 0 && n <= INT32_MAX);
    argmax_kernel<<<(unsigned)n_rows, ROW_THREADS, 0, cu->stream>>>((int32_t *)ids->data,
                                                                    (const float *)logits->data, n);
    CUDA_CHECK_LAUNCH();
}

// ---- helpers for matmul and the weight upload --------------------------------------------------

__global__ void bias_add_kernel(float *out, const void *bias, ci_dtype bias_dtype, int64_t n_rows,
                                int64_t n_cols) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_rows * n_cols) out[i] += load_f32(bias, bias_dtype, i % n_cols);
}

void bias_add_cuda(cuda_backend *cu, float *out, const ci_tensor *bias, int64_t n_rows,
                   int64_t n_cols) {
    if (n_rows * n_cols == 0) return;
    bias_add_kernel<<<blocks_for(n_rows * n_cols, ELEMENT_THREADS), ELEMENT_THREADS, 0,
                      cu->stream>>>(out, bias->data, bias->dtype, n_rows, n_cols);
    CUDA_CHECK_LAUNCH();
}

__device__ __forceinline__ void store_as(void *dst, ci_dtype dtype, int64_t i, float value) {
    switch (dtype) {
    case CI_BF16: ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(value); break;
    case CI_F16: ((__half *)dst)[i] = __float2half_rn(value); break;
    default: ((float *)dst)[i] = value; break;
    }
}

__global__ void convert_kernel(void *dst, ci_dtype dst_dtype, const void *src, ci_dtype src_dtype,
                               int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) store_as(dst, dst_dtype, i, load_f32(src, src_dtype, i));
}

void convert_cuda(cudaStream_t stream, void *dst, ci_dtype dst_dtype, const void *src,
                  ci_dtype src_dtype, int64_t n) {
    if (n == 0) return;
    convert_kernel<<<blocks_for(n, ELEMENT_THREADS), ELEMENT_THREADS, 0, stream>>>(
        dst, dst_dtype, src, src_dtype, n);
    CUDA_CHECK_LAUNCH();
}
