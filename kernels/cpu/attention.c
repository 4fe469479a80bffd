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

/* The keys and values of one sequence as the ops read them: positions in runs of block_rows
 * contiguous rows, run i at row blocks[i] · block_rows of the cache (a paged pool), or one run
 * from row 0 when blocks is NULL (a contiguous cache). Every op below walks runs, so the
 * contiguous and the paged ops are one computation. */
typedef struct seq_cache {
    const float *k, *v;
    int64_t row_floats; /* G·D: floats per position */
    int64_t block_rows; /* positions per run */
    const int32_t *blocks;
} seq_cache;

static int64_t run_start(const seq_cache *c, int64_t first_pos) {
    return c->blocks ? (int64_t)c->blocks[first_pos / c->block_rows] * c->block_rows : first_pos;
}

/* probs[s] = exp(q·k_s·scale − max) for s < n_keys; returns their sum (the softmax normalizer). */
static double softmax_numerators(const float *q, const seq_cache *c, int64_t kv_head,
                                 int64_t head_dim, int64_t n_keys, double scale, double *probs) {
    double max_score = -INFINITY;
    for (int64_t s0 = 0; s0 < n_keys; s0 += c->block_rows) {
        const int64_t run = n_keys - s0 < c->block_rows ? n_keys - s0 : c->block_rows;
        const float *k_run = c->k + run_start(c, s0) * c->row_floats + kv_head * head_dim;
        for (int64_t i = 0; i < run; i++) {
            const float *k = k_run + i * c->row_floats;
            double dot = 0.0;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < head_dim; d++) dot += (double)q[d] * (double)k[d];
            probs[s0 + i] = dot * scale;
            if (probs[s0 + i] > max_score) max_score = probs[s0 + i];
        }
    }
    double sum = 0.0;
    for (int64_t s = 0; s < n_keys; s++) {
        probs[s] = exp(probs[s] - max_score);
        sum += probs[s];
    }
    return sum;
}

/* acc[d] = Σ_s probs[s] · v_s[d] */
static void weighted_values(const double *probs, const seq_cache *c, int64_t kv_head,
                            int64_t head_dim, int64_t n_keys, double *acc) {
    for (int64_t d = 0; d < head_dim; d++) acc[d] = 0.0;
    for (int64_t s0 = 0; s0 < n_keys; s0 += c->block_rows) {
        const int64_t run = n_keys - s0 < c->block_rows ? n_keys - s0 : c->block_rows;
        const float *v_run = c->v + run_start(c, s0) * c->row_floats + kv_head * head_dim;
        for (int64_t i = 0; i < run; i++) {
            const float *v = v_run + i * c->row_floats;
            const double p = probs[s0 + i];
#pragma omp simd
            for (int64_t d = 0; d < head_dim; d++) acc[d] += p * (double)v[d];
        }
    }
}

/* One query head h over n_keys keys: y = softmax(q·Kᵀ/sqrt(D)) V, in double. */
static void attend_head(const float *q_row, const seq_cache *c, int64_t kv_head, int64_t D,
                        int64_t n_keys, double scale, double *probs, double *acc, float *y) {
    const double sum = softmax_numerators(q_row, c, kv_head, D, n_keys, scale, probs);
    weighted_values(probs, c, kv_head, D, n_keys, acc);
    for (int64_t d = 0; d < D; d++) y[d] = (float)(acc[d] / sum);
}

/* Head pair p = (p, p + P), P = H/2, of one query row: both heads' maps weight the same values
 * Vcat_p = [V_kv(p) ‖ V_kv(p+P)]; their difference is normalized over its 2·D entries. q_row holds
 * all H heads; y gets the pair's 2·D outputs. scratch: two probability rows of n_keys, then 4·D. */
static void attend_pair(const float *q_row, const seq_cache *c, int64_t pair, int64_t n_heads,
                        int64_t group, int64_t D, int64_t n_keys, double scale, double *probs1,
                        double *probs2, double *o1, double *o2, float lambda, float lambda_init,
                        float eps, float *y) {
    const int64_t n_pairs = n_heads / 2, h1 = pair, h2 = pair + n_pairs;
    const int64_t kv1 = h1 / group, kv2 = h2 / group;
    const double sum1 = softmax_numerators(q_row + h1 * D, c, kv1, D, n_keys, scale, probs1);
    const double sum2 = softmax_numerators(q_row + h2 * D, c, kv2, D, n_keys, scale, probs2);
    /* A·Vcat = [A·V_kv1 ‖ A·V_kv2] */
    weighted_values(probs1, c, kv1, D, n_keys, o1);
    weighted_values(probs1, c, kv2, D, n_keys, o1 + D);
    weighted_values(probs2, c, kv1, D, n_keys, o2);
    weighted_values(probs2, c, kv2, D, n_keys, o2 + D);
    double sum_squares = 0.0;
    for (int64_t j = 0; j < 2 * D; j++) {
        o1[j] = o1[j] / sum1 - (double)lambda * (o2[j] / sum2);
        sum_squares += o1[j] * o1[j];
    }
    const double norm =
        (1.0 - (double)lambda_init) / sqrt(sum_squares / (double)(2 * D) + (double)eps);
    for (int64_t j = 0; j < 2 * D; j++) y[j] = (float)(o1[j] * norm);
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

static seq_cache contiguous_cache(const ci_tensor *k_cache, const ci_tensor *v_cache,
                                  const attention_shape *s) {
    return (seq_cache){k_cache->data, v_cache->data, s->kv_stride, s->n_ctx, NULL};
}

static void attention_one_seq(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                              const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    const attention_shape s = check_shapes(be, out, q, k_cache, v_cache, pos0);
    const seq_cache cache = contiguous_cache(k_cache, v_cache, &s);
    const double scale = 1.0 / sqrt((double)s.head_dim);
    const float *qs = q->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (worth_parallel(&s, pos0))
    for (int64_t t = 0; t < s.n_tokens; t++) {
        for (int64_t h = 0; h < s.n_heads; h++) {
            double *probs = thread_scratch(be, &s), *acc = probs + 2 * s.n_ctx;
            const int64_t offset = (t * s.n_heads + h) * s.head_dim;
            attend_head(qs + offset, &cache, h / s.group, s.head_dim, pos0 + t + 1, scale, probs,
                        acc, ys + offset);
        }
    }
}

static void diff_attention_one_seq(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                   const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                                   float lambda, float lambda_init, float eps) {
    const attention_shape s = check_shapes(be, out, q, k_cache, v_cache, pos0);
    CI_ASSERT(s.n_heads % 2 == 0);
    const seq_cache cache = contiguous_cache(k_cache, v_cache, &s);
    const int64_t n_pairs = s.n_heads / 2, D = s.head_dim;
    const double scale = 1.0 / sqrt((double)D);
    const float *qs = q->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (worth_parallel(&s, pos0))
    for (int64_t t = 0; t < s.n_tokens; t++) {
        for (int64_t p = 0; p < n_pairs; p++) {
            double *probs1 = thread_scratch(be, &s), *probs2 = probs1 + s.n_ctx;
            double *o1 = probs2 + s.n_ctx, *o2 = o1 + 2 * D; /* each [2D] */
            attend_pair(qs + t * s.n_heads * D, &cache, p, s.n_heads, s.group, D, pos0 + t + 1,
                        scale, probs1, probs2, o1, o2, lambda, lambda_init, eps,
                        ys + t * s.n_heads * D + p * 2 * D);
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

/* ---- a ragged step over a paged pool (kernels/backend.h: ci_paged_step) ----
 * Row r of sequence s at position p is the contiguous op's query at pos0 = p: the same runs of
 * the same sums, so a paged step gives bit-identical rows to running each sequence alone. */

typedef struct paged_shape {
    int64_t n_rows, n_heads, n_kv_heads, head_dim, group, block_size, row_floats;
} paged_shape;

static paged_shape check_paged(const ci_backend *be, const ci_tensor *out, const ci_tensor *q,
                               const ci_tensor *k_pool, const ci_tensor *v_pool,
                               const ci_paged_step *step) {
    paged_shape s = {.n_rows = q->shape[0],
                     .n_heads = q->shape[1],
                     .n_kv_heads = k_pool->shape[2],
                     .head_dim = q->shape[2],
                     .block_size = k_pool->shape[1],
                     .row_floats = k_pool->shape[2] * k_pool->shape[3]};
    CI_ASSERT(q->n_dims == 3 && out->n_dims == 3 && k_pool->n_dims == 4 && v_pool->n_dims == 4);
    CI_ASSERT(k_pool->dtype == CI_F32 && v_pool->dtype == CI_F32 && q->dtype == CI_F32);
    CI_ASSERT(k_pool->shape[3] == s.head_dim && s.block_size == step->block_size);
    for (int i = 0; i < 4; i++) CI_ASSERT(v_pool->shape[i] == k_pool->shape[i]);
    CI_ASSERT(s.n_heads % s.n_kv_heads == 0 && s.n_rows == step->n_rows);
    CI_ASSERT(ci_tensor_numel(out) == ci_tensor_numel(q));
    CI_ASSERT(be->workspace_bytes >=
              (size_t)be->n_threads *
                  attention_cpu_scratch_bytes(step->max_seq_len, (int)s.head_dim));
    s.group = s.n_heads / s.n_kv_heads;
    return s;
}

/* The sequence that row r belongs to: the last s with seq_starts[s] <= r. */
static int64_t seq_of_row(const ci_paged_step *step, int64_t r) {
    int64_t lo = 0, hi = step->n_seqs - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (step->host_seq_starts[mid] <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static seq_cache paged_cache(const ci_tensor *k_pool, const ci_tensor *v_pool, const paged_shape *s,
                             const ci_paged_step *step, int64_t seq) {
    const int32_t *tables = step->block_tables.data;
    return (seq_cache){k_pool->data, v_pool->data, s->row_floats, s->block_size,
                       tables + seq * step->max_blocks_per_seq};
}

static double *paged_scratch(const ci_backend *be, const ci_paged_step *step, int64_t head_dim) {
    const size_t per_thread = attention_cpu_scratch_bytes(step->max_seq_len, (int)head_dim);
    return (double *)((char *)be->workspace + (size_t)omp_get_thread_num() * per_thread);
}

static int paged_worth_parallel(const paged_shape *s, const ci_paged_step *step) {
    return s->n_rows * s->n_heads * step->max_seq_len * s->head_dim >= ATTENTION_PARALLEL_MIN_WORK;
}

void paged_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                         const ci_tensor *k_pool, const ci_tensor *v_pool,
                         const ci_paged_step *step) {
    const paged_shape s = check_paged(be, out, q, k_pool, v_pool, step);
    const double scale = 1.0 / sqrt((double)s.head_dim);
    const int32_t *positions = step->positions.data;
    const float *qs = q->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (paged_worth_parallel(&s, step))
    for (int64_t r = 0; r < s.n_rows; r++) {
        for (int64_t h = 0; h < s.n_heads; h++) {
            const seq_cache cache = paged_cache(k_pool, v_pool, &s, step, seq_of_row(step, r));
            double *probs = paged_scratch(be, step, s.head_dim);
            double *acc = probs + 2 * (int64_t)step->max_seq_len;
            const int64_t offset = (r * s.n_heads + h) * s.head_dim;
            attend_head(qs + offset, &cache, h / s.group, s.head_dim, positions[r] + 1, scale,
                        probs, acc, ys + offset);
        }
    }
}

void paged_diff_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                              const ci_tensor *k_pool, const ci_tensor *v_pool,
                              const ci_paged_step *step, float lambda, float lambda_init,
                              float eps) {
    const paged_shape s = check_paged(be, out, q, k_pool, v_pool, step);
    CI_ASSERT(s.n_heads % 2 == 0);
    const int64_t n_pairs = s.n_heads / 2, D = s.head_dim;
    const double scale = 1.0 / sqrt((double)D);
    const int32_t *positions = step->positions.data;
    const float *qs = q->data;
    float *ys = out->data;
#pragma omp parallel for collapse(2) num_threads(be->n_threads)                                    \
    schedule(dynamic, 1) if (paged_worth_parallel(&s, step))
    for (int64_t r = 0; r < s.n_rows; r++) {
        for (int64_t p = 0; p < n_pairs; p++) {
            const seq_cache cache = paged_cache(k_pool, v_pool, &s, step, seq_of_row(step, r));
            double *probs1 = paged_scratch(be, step, D), *probs2 = probs1 + step->max_seq_len;
            double *o1 = probs2 + step->max_seq_len, *o2 = o1 + 2 * D;
            attend_pair(qs + r * s.n_heads * D, &cache, p, s.n_heads, s.group, D, positions[r] + 1,
                        scale, probs1, probs2, o1, o2, lambda, lambda_init, eps,
                        ys + r * s.n_heads * D + p * 2 * D);
        }
    }
}
