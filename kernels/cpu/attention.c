/* Causal attention over the KV cache, standard and differential, one (token, head) at a time.
 *
 * Query t of this call sits at position pos0 + t and sees keys [0, pos0 + t] (the causal mask,
 * aligned so that the last query sees every key). Query head h reads KV head h / (H / G) in place:
 * GQA never copies K or V. Scores, softmax and the weighted sum of V run in double; the scores of
 * one query row live in per-thread scratch, so no [T, S] matrix is ever formed. */
#include <math.h>
#include <omp.h>

#include "../../common/error.h"
#include "ops_cpu.h"

/* Below this many score terms (query rows × keys × head_dim), one thread does it all. */
#define ATTENTION_PARALLEL_MIN_WORK (1 << 16)

size_t attention_cpu_scratch_bytes(int n_ctx, int head_dim) {
    /* two probability rows (differential attention has two maps) and two 2·D accumulators */
    return (2 * (size_t)n_ctx + 4 * (size_t)head_dim) * sizeof(double);
}

/* probs[s] = exp(q·k_s·scale − max) for s < n_keys; returns their sum (the softmax normalizer). */
static double softmax_numerators(const float *q, const float *k_head, int64_t k_stride,
                                 int64_t head_dim, int64_t n_keys, double scale, double *probs) {
    double max_score = -INFINITY;
    for (int64_t s = 0; s < n_keys; s++) {
        const float *k = k_head + s * k_stride;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < head_dim; d++) dot += (double)q[d] * (double)k[d];
        probs[s] = dot * scale;
        if (probs[s] > max_score) max_score = probs[s];
    }
    double sum = 0.0;
    for (int64_t s = 0; s < n_keys; s++) {
        probs[s] = exp(probs[s] - max_score);
        sum += probs[s];
    }
    return sum;
}

/* acc[d] = Σ_s probs[s] · v_s[d] */
static void weighted_values(const double *probs, const float *v_head, int64_t v_stride,
                            int64_t head_dim, int64_t n_keys, double *acc) {
    for (int64_t d = 0; d < head_dim; d++) acc[d] = 0.0;
    for (int64_t s = 0; s < n_keys; s++) {
        const float *v = v_head + s * v_stride;
        const double p = probs[s];
#pragma omp simd
        for (int64_t d = 0; d < head_dim; d++) acc[d] += p * (double)v[d];
    }
}

typedef struct attention_shape {
    int64_t n_tokens, n_heads, n_kv_heads, head_dim, n_ctx, group; /* group = H / G */
    int64_t kv_stride;                                             /* floats per cache row */
} attention_shape;

static attention_shape check_shapes(const ci_backend *be, const ci_tensor *out, const ci_tensor *q,
                                    const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    attention_shape s = {
        q->shape[0], q->shape[1], k_cache->shape[1], q->shape[2], k_cache->shape[0], 0, 0};
    CI_ASSERT(q->n_dims == 3 && k_cache->n_dims == 3 && v_cache->n_dims == 3 && out->n_dims == 3);
    CI_ASSERT(k_cache->shape[2] == s.head_dim && v_cache->shape[1] == s.n_kv_heads &&
              v_cache->shape[2] == s.head_dim && v_cache->shape[0] == s.n_ctx);
    CI_ASSERT(s.n_heads % s.n_kv_heads == 0 && pos0 >= 0 && pos0 + s.n_tokens <= s.n_ctx);
    CI_ASSERT(ci_tensor_numel(out) == ci_tensor_numel(q));
    CI_ASSERT(be->workspace_bytes >=
              (size_t)be->n_threads * attention_cpu_scratch_bytes((int)s.n_ctx, (int)s.head_dim));
    s.group = s.n_heads / s.n_kv_heads;
    s.kv_stride = s.n_kv_heads * s.head_dim;
    return s;
}

static int worth_parallel(const attention_shape *s, int pos0) {
    return s->n_tokens * s->n_heads * (pos0 + s->n_tokens) * s->head_dim >=
           ATTENTION_PARALLEL_MIN_WORK;
}

static double *thread_scratch(const ci_backend *be, const attention_shape *s) {
    size_t per_thread = attention_cpu_scratch_bytes((int)s->n_ctx, (int)s->head_dim);
    return (double *)((char *)be->workspace + (size_t)omp_get_thread_num() * per_thread);
}

static void attention_one_seq(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                              const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    const attention_shape s = check_shapes(be, out, q, k_cache, v_cache, pos0);
    const double scale = 1.0 / sqrt((double)s.head_dim);
    const float *qs = q->data, *ks = k_cache->data, *vs = v_cache->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (worth_parallel(&s, pos0))
    for (int64_t t = 0; t < s.n_tokens; t++) {
        for (int64_t h = 0; h < s.n_heads; h++) {
            double *probs = thread_scratch(be, &s), *acc = probs + 2 * s.n_ctx;
            const int64_t n_keys = pos0 + t + 1, kv_head = h / s.group;
            const float *q_row = qs + (t * s.n_heads + h) * s.head_dim;
            const double sum = softmax_numerators(q_row, ks + kv_head * s.head_dim, s.kv_stride,
                                                  s.head_dim, n_keys, scale, probs);
            weighted_values(probs, vs + kv_head * s.head_dim, s.kv_stride, s.head_dim, n_keys, acc);
            float *y = ys + (t * s.n_heads + h) * s.head_dim;
            for (int64_t d = 0; d < s.head_dim; d++) y[d] = (float)(acc[d] / sum);
        }
    }
}

/* Head pair p = (p, p + P), P = H/2. Both heads' maps weight the same values
 * Vcat_p = [V_kv(p) ‖ V_kv(p+P)]; their difference is normalized over its 2·D entries. */
static void diff_attention_one_seq(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                   const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                                   float lambda, float lambda_init, float eps) {
    const attention_shape s = check_shapes(be, out, q, k_cache, v_cache, pos0);
    CI_ASSERT(s.n_heads % 2 == 0);
    const int64_t n_pairs = s.n_heads / 2, D = s.head_dim;
    const double scale = 1.0 / sqrt((double)D);
    const float *qs = q->data, *ks = k_cache->data, *vs = v_cache->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (worth_parallel(&s, pos0))
    for (int64_t t = 0; t < s.n_tokens; t++) {
        for (int64_t p = 0; p < n_pairs; p++) {
            double *probs1 = thread_scratch(be, &s), *probs2 = probs1 + s.n_ctx;
            double *o1 = probs2 + s.n_ctx, *o2 = o1 + 2 * D; /* each [2D] */
            const int64_t n_keys = pos0 + t + 1;
            const int64_t h1 = p, h2 = p + n_pairs;
            const int64_t kv1 = h1 / s.group, kv2 = h2 / s.group;
            const double sum1 = softmax_numerators(qs + (t * s.n_heads + h1) * D, ks + kv1 * D,
                                                   s.kv_stride, D, n_keys, scale, probs1);
            const double sum2 = softmax_numerators(qs + (t * s.n_heads + h2) * D, ks + kv2 * D,
                                                   s.kv_stride, D, n_keys, scale, probs2);
            /* A·Vcat = [A·V_kv1 ‖ A·V_kv2] */
            weighted_values(probs1, vs + kv1 * D, s.kv_stride, D, n_keys, o1);
            weighted_values(probs1, vs + kv2 * D, s.kv_stride, D, n_keys, o1 + D);
            weighted_values(probs2, vs + kv1 * D, s.kv_stride, D, n_keys, o2);
            weighted_values(probs2, vs + kv2 * D, s.kv_stride, D, n_keys, o2 + D);
            double sum_squares = 0.0;
            for (int64_t j = 0; j < 2 * D; j++) {
                o1[j] = o1[j] / sum1 - (double)lambda * (o2[j] / sum2);
                sum_squares += o1[j] * o1[j];
            }
            const double norm =
                (1.0 - (double)lambda_init) / sqrt(sum_squares / (double)(2 * D) + (double)eps);
            float *y = ys + t * s.n_heads * D + p * 2 * D;
            for (int64_t j = 0; j < 2 * D; j++) y[j] = (float)(o1[j] * norm);
        }
    }
}

/* ---- lockstep sequences: sequence b's queries over its own cache b, each exactly as alone ---- */

static int64_t checked_n_seqs(const ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                              const ci_tensor *v_cache) {
    const int64_t n_seqs = ci_tensor_n_seqs(q);
    CI_ASSERT(ci_tensor_n_seqs(out) == n_seqs && ci_tensor_n_seqs(k_cache) == n_seqs &&
              ci_tensor_n_seqs(v_cache) == n_seqs);
    return n_seqs;
}

void attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                   const ci_tensor *v_cache, int pos0) {
    const int64_t n_seqs = checked_n_seqs(out, q, k_cache, v_cache);
    for (int64_t b = 0; b < n_seqs; b++) {
        ci_tensor out_b = ci_tensor_seq(out, b), q_b = ci_tensor_seq(q, b);
        ci_tensor k_b = ci_tensor_seq(k_cache, b), v_b = ci_tensor_seq(v_cache, b);
        attention_one_seq(be, &out_b, &q_b, &k_b, &v_b, pos0);
    }
}

void diff_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                        const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0, float lambda,
                        float lambda_init, float eps) {
    const int64_t n_seqs = checked_n_seqs(out, q, k_cache, v_cache);
    for (int64_t b = 0; b < n_seqs; b++) {
        ci_tensor out_b = ci_tensor_seq(out, b), q_b = ci_tensor_seq(q, b);
        ci_tensor k_b = ci_tensor_seq(k_cache, b), v_b = ci_tensor_seq(v_cache, b);
        diff_attention_one_seq(be, &out_b, &q_b, &k_b, &v_b, pos0, lambda, lambda_init, eps);
    }
}
