/* Rotary position embedding, rotate-half convention (Hugging Face layout):
 *   q' = q·cos + rotate_half(q)·sin,   rotate_half(v) = cat(−v[D/2:], v[:D/2])
 * with angle = position · inv_freq[i] for both halves. The angle, cos and sin are F32 and the
 * arithmetic follows transformers' order, so that positions far into the context round alike. */
#include <math.h>

#include "../../common/error.h"
#include "ops_cpu.h"

static void rotate_heads(float *heads, int64_t n_heads, int64_t head_dim, const float *cos_row,
                         const float *sin_row) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = heads + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            const float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cos_row[i] + (-x2) * sin_row[i];
            v[i + half] = x2 * cos_row[i] + x1 * sin_row[i];
        }
    }
}

/* Rotates the heads of one token at `position`: n_q query heads and n_k key heads. */
static void rope_token(float *q, int64_t n_q, float *k, int64_t n_k, int64_t head_dim,
                       int64_t position, const ci_rope_freqs *freqs) {
    float cos_row[2048], sin_row[2048];
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float angle = (float)position * freqs->inv_freq[i];
        cos_row[i] = cosf(angle) * freqs->attention_scaling;
        sin_row[i] = sinf(angle) * freqs->attention_scaling;
    }
    rotate_heads(q, n_q, head_dim, cos_row, sin_row);
    rotate_heads(k, n_k, head_dim, cos_row, sin_row);
}

static void check_rope_shapes(const ci_tensor *q, const ci_tensor *k) {
    CI_ASSERT(q->n_dims == 3 && k->n_dims == 3 && k->shape[0] == q->shape[0] &&
              k->shape[2] == q->shape[2] && q->shape[2] % 2 == 0 && q->shape[2] <= 4096);
}

static void rope_one_seq(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0,
                         const ci_rope_freqs *freqs) {
    check_rope_shapes(q, k);
    const int64_t n_tokens = q->shape[0], head_dim = q->shape[2];
    const int64_t q_row = q->shape[1] * head_dim, k_row = k->shape[1] * head_dim;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n_tokens > 1)
    for (int64_t t = 0; t < n_tokens; t++)
        rope_token((float *)q->data + t * q_row, q->shape[1], (float *)k->data + t * k_row,
                   k->shape[1], head_dim, pos0 + t, freqs);
}

/* Lockstep sequences share their positions: each is rotated as if it were alone. */
void rope_cpu(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0, const ci_rope_freqs *freqs) {
    const int64_t n_seqs = ci_tensor_n_seqs(q);
    CI_ASSERT(ci_tensor_n_seqs(k) == n_seqs);
    for (int64_t b = 0; b < n_seqs; b++) {
        ci_tensor q_seq = ci_tensor_seq(q, b), k_seq = ci_tensor_seq(k, b);
        rope_one_seq(be, &q_seq, &k_seq, pos0, freqs);
    }
}

/* A ragged step: every row at its own position. */
void rope_rows_cpu(ci_backend *be, ci_tensor *q, ci_tensor *k, const ci_tensor *positions,
                   const ci_rope_freqs *freqs) {
    check_rope_shapes(q, k);
    const int64_t n_rows = q->shape[0], head_dim = q->shape[2];
    CI_ASSERT(positions->dtype == CI_I32 && ci_tensor_numel(positions) >= n_rows);
    const int32_t *pos = positions->data;
    const int64_t q_row = q->shape[1] * head_dim, k_row = k->shape[1] * head_dim;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n_rows > 1)
    for (int64_t r = 0; r < n_rows; r++)
        rope_token((float *)q->data + r * q_row, q->shape[1], (float *)k->data + r * k_row,
                   k->shape[1], head_dim, pos[r], freqs);
}
