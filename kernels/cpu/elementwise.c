/* The MLP's gated activation, storing new keys and values in the cache, and
 * the argmax of greedy decoding. */
#include <math.h>
#include <string.h>

#include "../../common/error.h"
#include "ops_cpu.h"

/* Each activation as transformers' ACT2FN defines it, evaluated in double. */
static double activate(double x, ci_activation act) {
    switch (act) {
    case CI_ACT_SILU: return x / (1.0 + exp(-x));
    case CI_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case CI_ACT_GELU_TANH: {
        const double sqrt_2_over_pi = 0.7978845608028654;
        return 0.5 * x * (1.0 + tanh(sqrt_2_over_pi * (x + 0.044715 * x * x * x)));
    }
    case CI_ACT_RELU: return x > 0.0 ? x : 0.0;
    }
    CI_ASSERT(!"unknown activation");
}

void gated_activation_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                          const ci_tensor *up, ci_activation act) {
    const int64_t n = ci_tensor_numel(gate);
    CI_ASSERT(ci_tensor_numel(up) == n && ci_tensor_numel(out) == n);
    const float *g = gate->data, *u = up->data;
    float *y = out->data;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) y[i] = (float)activate(g[i], act) * u[i];
}

static void kv_store_one_seq(ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                             const ci_tensor *v_new, int pos0) {
    const int64_t n_tokens = k_new->shape[0];
    CI_ASSERT(k_cache->n_dims == 3 && v_cache->n_dims == 3 && k_new->n_dims == 3);
    CI_ASSERT(ci_tensor_numel(v_new) == ci_tensor_numel(k_new));
    CI_ASSERT(ci_tensor_row_size(k_new) == ci_tensor_row_size(k_cache));
    CI_ASSERT(pos0 >= 0 && pos0 + n_tokens <= k_cache->shape[0]);
    ci_tensor k_rows = ci_tensor_rows(k_cache, pos0, n_tokens);
    ci_tensor v_rows = ci_tensor_rows(v_cache, pos0, n_tokens);
    memcpy(k_rows.data, k_new->data, ci_tensor_nbytes(k_new));
    memcpy(v_rows.data, v_new->data, ci_tensor_nbytes(v_new));
}

/* Sequence b's new rows go to its own cache b. */
void kv_store_cpu(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                  const ci_tensor *v_new, int pos0) {
    (void)be;
    const int64_t n_seqs = ci_tensor_n_seqs(k_new);
    CI_ASSERT(ci_tensor_n_seqs(k_cache) == n_seqs && ci_tensor_n_seqs(v_cache) == n_seqs &&
              ci_tensor_n_seqs(v_new) == n_seqs);
    for (int64_t b = 0; b < n_seqs; b++) {
        ci_tensor k_seq = ci_tensor_seq(k_cache, b), v_seq = ci_tensor_seq(v_cache, b);
        ci_tensor k_rows = ci_tensor_seq(k_new, b), v_rows = ci_tensor_seq(v_new, b);
        kv_store_one_seq(&k_seq, &v_seq, &k_rows, &v_rows, pos0);
    }
}

/* Pool row slots[r] (block · block_size + offset) = row r of k_new and v_new. */
void kv_store_paged_cpu(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                        const ci_tensor *k_new, const ci_tensor *v_new, const ci_tensor *slots) {
    (void)be;
    const int64_t n_rows = ci_tensor_n_rows(k_new), row_floats = ci_tensor_row_size(k_new);
    const int64_t pool_rows = k_pool->shape[0] * k_pool->shape[1];
    CI_ASSERT(k_pool->n_dims == 4 && k_pool->dtype == CI_F32 && v_pool->dtype == CI_F32 &&
              k_new->dtype == CI_F32 && v_new->dtype == CI_F32 && slots->dtype == CI_I32);
    CI_ASSERT(k_pool->shape[2] * k_pool->shape[3] == row_floats &&
              ci_tensor_numel(v_new) == n_rows * row_floats && ci_tensor_numel(slots) >= n_rows &&
              ci_tensor_numel(v_pool) == ci_tensor_numel(k_pool));
    const int32_t *slot = slots->data;
    for (int64_t r = 0; r < n_rows; r++) {
        CI_ASSERT(slot[r] >= 0 && slot[r] < pool_rows);
        memcpy((float *)k_pool->data + (int64_t)slot[r] * row_floats,
               (const float *)k_new->data + r * row_floats, (size_t)row_floats * sizeof(float));
        memcpy((float *)v_pool->data + (int64_t)slot[r] * row_floats,
               (const float *)v_new->data + r * row_floats, (size_t)row_floats * sizeof(float));
    }
}

/* First index of the largest value; NaN never wins unless every value is NaN (then the last),
 * exactly as the host sampler's argmax (engine/sampling.c). */
void argmax_cpu(ci_backend *be, ci_tensor *ids, const ci_tensor *logits) {
    (void)be;
    const int64_t n_rows = ci_tensor_n_rows(logits), n = ci_tensor_row_size(logits);
    CI_ASSERT(ids->dtype == CI_I32 && ci_tensor_numel(ids) >= n_rows && logits->dtype == CI_F32);
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = (const float *)logits->data + r * n;
        int64_t best = 0;
        for (int64_t i = 1; i < n; i++)
            if (row[i] > row[best] || isnan(row[best])) best = i;
        ((int32_t *)ids->data)[r] = (int32_t)best;
    }
}
