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

static void rope_one_seq(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0,
                         const ci_rope_freqs *freqs) {
    const int64_t n_tokens = q->shape[0], head_dim = q->shape[2];
    CI_ASSERT(q->n_dims == 3 && k->n_dims == 3 && k->shape[0] == n_tokens &&
              k->shape[2] == head_dim && head_dim % 2 == 0 && head_dim <= 4096);
    const int64_t half = head_dim / 2;
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n_tokens > 1)
    for (int64_t t = 0; t < n_tokens; t++) {
        float cos_row[2048], sin_row[2048];
        const float position = (float)(pos0 + t);
        for (int64_t i = 0; i < half; i++) {
            const float angle = position * freqs->inv_freq[i];
            cos_row[i] = cosf(angle) * freqs->attention_scaling;
            sin_row[i] = sinf(angle) * freqs->attention_scaling;
        }
        rotate_heads((float *)q->data + t * q->shape[1] * head_dim, q->shape[1], head_dim, cos_row,
                     sin_row);
        rotate_heads((float *)k->data + t * k->shape[1] * head_dim, k->shape[1], head_dim, cos_row,
                     sin_row);
    }
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
