// The ops of a ragged step over a paged KV cache (kernels/backend.h: ci_paged_step): rope_rows,
// kv_store_paged, paged_attention and paged_diff_attention, and the scratch they need. The
// kernels are in attention_paged.cuh (and the PAGED variants of sdpa, flash and flash-decoding);
// here the launchers check shapes as the CPU ops do and pick what runs:
//   eager        each sequence's keys gathered into contiguous F32 rows in the workspace, then
//                the contiguous op's cuBLAS machinery (attention.cu) on them, one sequence at a
//                time;
//   sdpa, flash  the fused kernel of the kind, reading the blocks in place, every sequence in one
//                launch; a decode-only step goes to flash-decoding instead (paged_kernel_for).
//
// Decode-only steps (n_rows = n_seqs: one row each) are what the engine records in a CUDA graph,
// so their path reads nothing from step->host_seq_starts / host_seq_lens: lengths, positions,
// starts and tables come from the device tensors, and max_seq_len (the engine passes its
// max_model_len when recording) only bounds the grid, the chunking and eager's span. Steps with
// prompt chunks run eagerly, and eager attention takes their exact spans from the host copies.
#include <math.h>

#include "attention_paged.cuh"
#include "ops_cuda.h"

// ---- rope_rows, kv_store_paged ------------------------------------------------------------------

void rope_rows_cuda(ci_backend *be, ci_tensor *q, ci_tensor *k, const ci_tensor *positions,
                    const ci_rope_freqs *freqs) {
    const int64_t n_rows = q->shape[0], head_dim = q->shape[2];
    CI_ASSERT(q->n_dims == 3 && k->n_dims == 3 && k->shape[0] == n_rows &&
              k->shape[2] == head_dim && head_dim % 2 == 0);
    CI_ASSERT(positions->dtype == CI_I32 && ci_tensor_numel(positions) >= n_rows);
    CI_ASSERT(q->dtype == CI_F32 && k->dtype == CI_F32);
    rope_rows_launch((float *)q->data, (float *)k->data, n_rows, (int)q->shape[1], (int)k->shape[1],
                     (int)head_dim, (const int32_t *)positions->data, freqs->inv_freq,
                     freqs->attention_scaling, cuda_of(be)->stream);
}

// k_new, v_new [R, G, D]; pools [n_blocks, block_size, G, D]; slots I32 [R].
void kv_store_paged_cuda(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                         const ci_tensor *k_new, const ci_tensor *v_new, const ci_tensor *slots) {
    cudaStream_t stream = cuda_of(be)->stream;
    const int64_t n_rows = k_new->shape[0], row_size = ci_tensor_row_size(k_new);
    CI_ASSERT(k_new->n_dims == 3 && k_pool->n_dims == 4 && v_pool->n_dims == 4);
    CI_ASSERT(k_pool->shape[2] * k_pool->shape[3] == row_size &&
              ci_tensor_numel(v_pool) == ci_tensor_numel(k_pool));
    CI_ASSERT(ci_tensor_numel(v_new) == ci_tensor_numel(k_new) && k_new->dtype == CI_F32 &&
              v_new->dtype == CI_F32 && k_pool->dtype == v_pool->dtype);
    CI_ASSERT(slots->dtype == CI_I32 && ci_tensor_numel(slots) >= n_rows);
    const float *k = (const float *)k_new->data, *v = (const float *)v_new->data;
    const int32_t *at = (const int32_t *)slots->data;
    switch (k_pool->dtype) {
    case CI_BF16:
        kv_store_paged_launch((__nv_bfloat16 *)k_pool->data, (__nv_bfloat16 *)v_pool->data, k, v,
                              n_rows, row_size, at, stream);
        break;
    case CI_F16:
        kv_store_paged_launch((__half *)k_pool->data, (__half *)v_pool->data, k, v, n_rows,
                              row_size, at, stream);
        break;
    default:
        kv_store_paged_launch((float *)k_pool->data, (float *)v_pool->data, k, v, n_rows, row_size,
                              at, stream);
        break;
    }
}

// ---- attention ----------------------------------------------------------------------------------

// The step's shapes asserted (the engine built them) and its device tensors as kernel params.
static attention_params paged_params(cuda_backend *cu, ci_tensor *out, const ci_tensor *q,
                                     const ci_tensor *k_pool, const ci_tensor *v_pool,
                                     const ci_paged_step *st) {
    CI_ASSERT(q->n_dims == 3 && q->dtype == CI_F32 && out->dtype == CI_F32 &&
              ci_tensor_numel(out) == ci_tensor_numel(q) && q->shape[0] == st->n_rows);
    CI_ASSERT(k_pool->n_dims == 4 && v_pool->n_dims == 4 && k_pool->dtype == v_pool->dtype &&
              ci_tensor_numel(k_pool) == ci_tensor_numel(v_pool));
    CI_ASSERT(k_pool->shape[1] == st->block_size && k_pool->shape[3] == q->shape[2] &&
              q->shape[1] % k_pool->shape[2] == 0);
    CI_ASSERT(st->n_seqs >= 1 && st->max_seq_rows >= 1 && st->max_seq_len >= st->max_seq_rows &&
              st->max_seq_len <= st->max_blocks_per_seq * st->block_size);
    CI_ASSERT(st->seq_starts.dtype == CI_I32 && st->seq_lens.dtype == CI_I32 &&
              st->block_tables.dtype == CI_I32 && st->positions.dtype == CI_I32);
    attention_params p = {};
    p.q = (const float *)q->data;
    p.k_cache = k_pool->data;
    p.v_cache = v_pool->data;
    p.out = (float *)out->data;
    p.n_seqs = st->n_seqs;
    p.n_tokens = st->max_seq_rows; // a bound: each sequence's own count is on the device
    p.n_heads = (int)q->shape[1];
    p.n_kv_heads = (int)k_pool->shape[2];
    p.head_dim = (int)q->shape[2];
    p.n_ctx = st->max_blocks_per_seq * st->block_size;
    p.scale = (float)(1.0 / sqrt((double)p.head_dim));
    p.workspace = (float *)cu->base.workspace;
    p.workspace_bytes = cu->base.workspace_bytes;
    p.seq_starts = (const int *)st->seq_starts.data;
    p.seq_lens = (const int *)st->seq_lens.data;
    p.block_tables = (const int *)st->block_tables.data;
    p.block_size = st->block_size;
    p.max_blocks_per_seq = st->max_blocks_per_seq;
    return p;
}

template <typename T>
static void paged_gather(const attention_params &p, float *k, float *v, int seq, int span,
                         cudaStream_t stream) {
    paged_gather_launch<T>(k, v, p, seq, span, stream);
}

// Eager, one sequence at a time through the same workspace: [K | V] gathered in F32 for the
// longest span of the step, then eager's scores. A decode-only step takes each sequence's
// position from the device (row s is sequence s's one query) and spans max_seq_len keys, masked
// past the length; a step with chunks takes its exact rows and spans from the host copies.
static void paged_eager(cuda_backend *cu, const attention_params &p, const ci_paged_step *st,
                        ci_dtype cache_dtype, const differential_terms *diff) {
    const int H = p.n_heads, G = p.n_kv_heads, D = p.head_dim, span_max = st->max_seq_len;
    const int decode_only = st->n_rows == st->n_seqs;
    const size_t gathered = attention_cuda_widened_cache_bytes(G, D, span_max);
    CI_ASSERT(cu->base.workspace_bytes > gathered);
    float *k = (float *)cu->base.workspace;
    float *v = k + (size_t)span_max * G * D;
    float *scratch = (float *)((char *)cu->base.workspace + gathered);
    const size_t scratch_bytes = cu->base.workspace_bytes - gathered;
    const int32_t *positions = (const int32_t *)st->positions.data;
    for (int s = 0; s < st->n_seqs; s++) {
        int first_row, rows, span, host_pos0 = 0;
        position_arg pos0 = {};
        if (decode_only) {
            first_row = s;
            rows = 1;
            span = span_max;
            pos0.device = positions + s;
        } else {
            first_row = st->host_seq_starts[s];
            rows = st->host_seq_starts[s + 1] - first_row;
            span = st->host_seq_lens[s];
            host_pos0 = pos0.host = span - rows;
            CI_ASSERT(rows >= 0 && host_pos0 >= 0 && span <= span_max);
            if (rows == 0) continue;
        }
        switch (cache_dtype) {
        case CI_BF16: paged_gather<__nv_bfloat16>(p, k, v, s, span, cu->stream); break;
        case CI_F16: paged_gather<__half>(p, k, v, s, span, cu->stream); break;
        default: paged_gather<float>(p, k, v, s, span, cu->stream); break;
        }
        const int64_t row0 = (int64_t)first_row * H * D;
        attention_cuda_eager_rows(cu, p.out + row0, p.q + row0, k, v, rows, H, G, D, span, pos0,
                                  host_pos0, decode_only, scratch, scratch_bytes, diff);
    }
}

static void run_paged(cuda_backend *cu, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_pool,
                      const ci_tensor *v_pool, const ci_paged_step *st,
                      const differential_terms *diff) {
    if (st->n_rows == 0) return;
    attention_params p = paged_params(cu, out, q, k_pool, v_pool, st);
    if (diff) {
        CI_ASSERT(p.n_heads % 2 == 0);
        p.differential = 1;
        p.lambda = diff->lambda;
        p.lambda_init = diff->lambda_init;
        p.eps = diff->eps;
    }
    const cinfer_attention kind = cu->base.attention;
    if (kind == CINFER_ATTENTION_EAGER) {
        paged_eager(cu, p, st, k_pool->dtype, diff);
        return;
    }
    const paged_kernel kernel =
        paged_kernel_for(kind == CINFER_ATTENTION_FLASH, st->n_rows == st->n_seqs);
    int refused;
    switch (k_pool->dtype) {
    case CI_BF16:
        refused = attention_paged_launch<__nv_bfloat16>(kernel, p, st->max_seq_len, cu->stream);
        break;
    case CI_F16:
        refused = attention_paged_launch<__half>(kernel, p, st->max_seq_len, cu->stream);
        break;
    default: refused = attention_paged_launch<float>(kernel, p, st->max_seq_len, cu->stream); break;
    }
    // the load checked head_dim (ci_cuda_attention_supports): a refusal here is a bug
    CI_ASSERT(!refused);
}

void paged_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                          const ci_tensor *k_pool, const ci_tensor *v_pool,
                          const ci_paged_step *step) {
    run_paged(cuda_of(be), out, q, k_pool, v_pool, step, NULL);
}

void paged_diff_attention_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                               const ci_tensor *k_pool, const ci_tensor *v_pool,
                               const ci_paged_step *step, float lambda, float lambda_init,
                               float eps) {
    const differential_terms diff = {lambda, lambda_init, eps};
    run_paged(cuda_of(be), out, q, k_pool, v_pool, step, &diff);
}

// Eager: the gathered [K | V] of the longest sequence and its scores for up to max_rows queries
// (as the contiguous op's eager workspace for one sequence of max_seq_len). The fused kinds:
// flash-decoding's partial results for a decode-only step (sdpa and flash need none).
size_t paged_workspace_bytes_cuda(const ci_backend *be, const ci_config *c, int max_rows,
                                  int max_seq_len, int max_seqs) {
    if (be->attention == CINFER_ATTENTION_EAGER)
        return attention_cuda_workspace_bytes(CINFER_ATTENTION_EAGER, c, max_seq_len, 1, max_rows);
    return attention_paged_decode_workspace_bytes(c->n_heads, c->head_dim, max_seq_len, max_seqs);
}
