/* The CPU reference ops: the source of truth every other backend is checked against.
 *
 * Activations are F32; weights are read in place in F32, BF16 or F16 and widened row by row, so
 * a bf16 checkpoint is never copied whole. Sums that can lose accuracy (dot products, softmax
 * normalizers, mean squares) accumulate in double. OpenMP splits the work where it pays.
 * See kernels/backend.h for what each op computes. */
#ifndef CINFER_OPS_CPU_H
#define CINFER_OPS_CPU_H

#include "../backend.h"

void embedding_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *tokens, const ci_tensor *table);
void rmsnorm_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                 float eps);
void matmul_cpu(ci_backend *be, const ci_tensor *x, const ci_projection *projections, int n,
                int accumulate);
void rope_cpu(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0, const ci_rope_freqs *freqs);
void attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                   const ci_tensor *v_cache, int pos0);
void diff_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                        const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0, float lambda,
                        float lambda_init, float eps);
void gated_activation_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                          const ci_tensor *up, ci_activation act);
void kv_store_cpu(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                  const ci_tensor *v_new, int pos0);
void rope_rows_cpu(ci_backend *be, ci_tensor *q, ci_tensor *k, const ci_tensor *positions,
                   const ci_rope_freqs *freqs);
void kv_store_paged_cpu(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                        const ci_tensor *k_new, const ci_tensor *v_new, const ci_tensor *slots);
void paged_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                         const ci_tensor *k_pool, const ci_tensor *v_pool,
                         const ci_paged_step *step);
void paged_diff_attention_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                              const ci_tensor *k_pool, const ci_tensor *v_pool,
                              const ci_paged_step *step, float lambda, float lambda_init,
                              float eps);
void argmax_cpu(ci_backend *be, ci_tensor *ids, const ci_tensor *logits);

/* A CPU backend running the reference ops on n_threads threads (0: OpenMP's default). */
cinfer_status ci_cpu_backend_create(int n_threads, ci_backend **out);

/* Widens row `row` of a 2-D (or the whole of a 1-D) F32/BF16/F16 tensor into dst. */
void ci_row_to_f32(const ci_tensor *tensor, int64_t row, float *dst);
/* Scratch bytes per thread the attention ops use for n_ctx keys. */
size_t attention_cpu_scratch_bytes(int n_ctx, int head_dim);
/* Scratch bytes per thread matmul uses for rows of n_inputs weights. */
size_t matmul_cpu_scratch_bytes(int64_t n_inputs);

#endif
