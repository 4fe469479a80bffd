/* out = x·Wᵀ (+ bias): the linear layers, where nearly all of the time goes.
 *
 * W is [N, K] row-major as checkpoints store it, so each output feature is a dot product of two
 * contiguous rows. Threads split the output features into blocks of MATMUL_BLOCK_ROWS; a block's
 * weight rows are widened to F32 once into the thread's scratch and reused by every token, and
 * each token's input row stays in L1 while the block's rows pass over it. Dot products sum in
 * double: over K = 8192 or more terms an F32 sum loses digits that the reference must keep. */
#include <omp.h>

#include "../../engine/error.h"
#include "ops_cpu.h"

enum { MATMUL_BLOCK_ROWS = 16 };

size_t matmul_cpu_scratch_bytes(int64_t n_inputs) {
    return (size_t)MATMUL_BLOCK_ROWS * (size_t)n_inputs * sizeof(float);
}

static double dot_f32(const float *a, const float *b, int64_t n) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += (double)a[i] * (double)b[i];
    return sum;
}

void matmul_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                const ci_tensor *bias) {
    const int64_t n_tokens = ci_tensor_n_rows(x), n_in = ci_tensor_row_size(x);
    const int64_t n_out = weight->shape[0];
    CI_ASSERT(weight->n_dims == 2 && weight->shape[1] == n_in);
    CI_ASSERT(ci_tensor_n_rows(out) == n_tokens && ci_tensor_row_size(out) == n_out);
    CI_ASSERT(x->dtype == CI_F32 && out->dtype == CI_F32);
    CI_ASSERT(!bias || !bias->data || ci_tensor_numel(bias) == n_out);
    CI_ASSERT(be->workspace_bytes >= (size_t)be->n_threads * matmul_cpu_scratch_bytes(n_in));

    const float *xs = x->data;
    float *ys = out->data;
    const int64_t n_blocks = (n_out + MATMUL_BLOCK_ROWS - 1) / MATMUL_BLOCK_ROWS;
#pragma omp parallel num_threads(be->n_threads)
    {
        float *rows = (float *)be->workspace +
                      (size_t)omp_get_thread_num() * MATMUL_BLOCK_ROWS * (size_t)n_in;
        float bias_block[MATMUL_BLOCK_ROWS];
#pragma omp for schedule(static)
        for (int64_t block = 0; block < n_blocks; block++) {
            const int64_t n0 = block * MATMUL_BLOCK_ROWS;
            const int64_t n1 = n0 + MATMUL_BLOCK_ROWS < n_out ? n0 + MATMUL_BLOCK_ROWS : n_out;
            for (int64_t n = n0; n < n1; n++) {
                if (weight->dtype != CI_F32) ci_row_to_f32(weight, n, rows + (n - n0) * n_in);
                bias_block[n - n0] = bias && bias->data ? ci_tensor_get_f32(bias, n) : 0.0f;
            }
            for (int64_t t = 0; t < n_tokens; t++) {
                const float *x_row = xs + t * n_in;
                for (int64_t n = n0; n < n1; n++) {
                    const float *w_row = weight->dtype == CI_F32
                                             ? (const float *)weight->data + n * n_in
                                             : rows + (n - n0) * n_in;
                    /* torch adds the bias to the F32 product: one rounding, then the add */
                    ys[t * n_out + n] = (float)dot_f32(x_row, w_row, n_in) + bias_block[n - n0];
                }
            }
        }
    }
}
