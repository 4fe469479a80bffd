/* out = x·Wᵀ (+ bias), or out += x·Wᵀ (+ bias): the linear layers, where nearly all of the time
 * goes. Several projections of one input run one after another; each is parallel on its own.
 *
 * W is [N, K] row-major as checkpoints store it, so each output feature is a dot product of two
 * contiguous rows. Threads split the output features into blocks of four; the four dot products of
 * a block run together, so that each x[i] is loaded once for four rows and the four independent
 * sums keep the FMA units busy. BF16 weights are widened in registers as they are read; F16 rows
 * are widened through a table into the thread's scratch first. Sums run in double: over K = 8192
 * or more terms an F32 sum loses digits that the reference must keep. */
#include <omp.h>

#include "../../common/error.h"
#include "ops_cpu.h"

enum { ROWS_PER_BLOCK = 4 };
/* Below this many multiply-adds, waking the other threads costs more than it saves. */
#define MATMUL_PARALLEL_MIN_WORK (1 << 16)

size_t matmul_cpu_scratch_bytes(int64_t n_inputs) {
    return (size_t)ROWS_PER_BLOCK * (size_t)n_inputs * sizeof(float);
}

static void dot4_f32(const float *x, const float *const w[ROWS_PER_BLOCK], int64_t n,
                     double sums[ROWS_PER_BLOCK]) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < n; i++) {
        const double xi = x[i];
        s0 += xi * (double)w0[i];
        s1 += xi * (double)w1[i];
        s2 += xi * (double)w2[i];
        s3 += xi * (double)w3[i];
    }
    sums[0] = s0, sums[1] = s1, sums[2] = s2, sums[3] = s3;
}

static void dot4_bf16(const float *x, const uint16_t *const w[ROWS_PER_BLOCK], int64_t n,
                      double sums[ROWS_PER_BLOCK]) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    const uint16_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < n; i++) {
        const double xi = x[i];
        s0 += xi * (double)ci_bf16_to_f32(w0[i]);
        s1 += xi * (double)ci_bf16_to_f32(w1[i]);
        s2 += xi * (double)ci_bf16_to_f32(w2[i]);
        s3 += xi * (double)ci_bf16_to_f32(w3[i]);
    }
    sums[0] = s0, sums[1] = s1, sums[2] = s2, sums[3] = s3;
}

/* Two tokens at once against the same four rows: each widened weight serves two products, which
 * is what prefill is bound by. Each sum runs over i in the same order as dot4's. */
static void dot2x4_f32(const float *x0, const float *x1, const float *const w[ROWS_PER_BLOCK],
                       int64_t n, double sums0[ROWS_PER_BLOCK], double sums1[ROWS_PER_BLOCK]) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
    for (int64_t i = 0; i < n; i++) {
        const double u = x0[i], v = x1[i];
        const double c0 = w0[i], c1 = w1[i], c2 = w2[i], c3 = w3[i];
        a0 += u * c0, a1 += u * c1, a2 += u * c2, a3 += u * c3;
        b0 += v * c0, b1 += v * c1, b2 += v * c2, b3 += v * c3;
    }
    sums0[0] = a0, sums0[1] = a1, sums0[2] = a2, sums0[3] = a3;
    sums1[0] = b0, sums1[1] = b1, sums1[2] = b2, sums1[3] = b3;
}

static void dot2x4_bf16(const float *x0, const float *x1, const uint16_t *const w[ROWS_PER_BLOCK],
                        int64_t n, double sums0[ROWS_PER_BLOCK], double sums1[ROWS_PER_BLOCK]) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
    const uint16_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
    for (int64_t i = 0; i < n; i++) {
        const double u = x0[i], v = x1[i];
        const double c0 = ci_bf16_to_f32(w0[i]), c1 = ci_bf16_to_f32(w1[i]);
        const double c2 = ci_bf16_to_f32(w2[i]), c3 = ci_bf16_to_f32(w3[i]);
        a0 += u * c0, a1 += u * c1, a2 += u * c2, a3 += u * c3;
        b0 += v * c0, b1 += v * c1, b2 += v * c2, b3 += v * c3;
    }
    sums0[0] = a0, sums0[1] = a1, sums0[2] = a2, sums0[3] = a3;
    sums1[0] = b0, sums1[1] = b1, sums1[2] = b2, sums1[3] = b3;
}

static inline void store(float *y, float value, int accumulate) {
    *y = accumulate ? *y + value : value;
}

static void project(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                    const ci_tensor *bias, int accumulate) {
    const int64_t n_tokens = ci_tensor_n_rows(x), n_in = ci_tensor_row_size(x);
    const int64_t n_out = weight->shape[0];
    CI_ASSERT(weight->n_dims == 2 && weight->shape[1] == n_in);
    CI_ASSERT(ci_tensor_n_rows(out) == n_tokens && ci_tensor_row_size(out) == n_out);
    CI_ASSERT(x->dtype == CI_F32 && out->dtype == CI_F32);
    CI_ASSERT(!bias || !bias->data || ci_tensor_numel(bias) == n_out);
    CI_ASSERT(be->workspace_bytes >= (size_t)be->n_threads * matmul_cpu_scratch_bytes(n_in));

    const float *xs = x->data;
    float *ys = out->data;
    const size_t row_bytes = (size_t)n_in * ci_dtype_size(weight->dtype);
    const int64_t n_blocks = (n_out + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    const int parallel = n_tokens * n_out * n_in >= MATMUL_PARALLEL_MIN_WORK;
#pragma omp parallel num_threads(be->n_threads) if (parallel)
    {
        float *widened =
            (float *)be->workspace + (size_t)omp_get_thread_num() * ROWS_PER_BLOCK * (size_t)n_in;
#pragma omp for schedule(static)
        for (int64_t block = 0; block < n_blocks; block++) {
            const int64_t n0 = block * ROWS_PER_BLOCK;
            const int64_t n_rows = n_out - n0 < ROWS_PER_BLOCK ? n_out - n0 : ROWS_PER_BLOCK;
            /* A short last block repeats its last row; the extra sums are dropped. */
            const void *rows[ROWS_PER_BLOCK];
            float bias_values[ROWS_PER_BLOCK];
            for (int r = 0; r < ROWS_PER_BLOCK; r++) {
                const int64_t n = n0 + (r < n_rows ? r : n_rows - 1);
                rows[r] = (const char *)weight->data + (size_t)n * row_bytes;
                if (weight->dtype == CI_F16) {
                    ci_row_to_f32(weight, n, widened + (size_t)r * n_in);
                    rows[r] = widened + (size_t)r * n_in;
                }
                bias_values[r] = bias && bias->data ? ci_tensor_get_f32(bias, n) : 0.0f;
            }
            int64_t t = 0;
            for (; t + 1 < n_tokens; t += 2) {
                double sums0[ROWS_PER_BLOCK], sums1[ROWS_PER_BLOCK];
                const float *x0 = xs + t * n_in, *x1 = x0 + n_in;
                if (weight->dtype == CI_BF16)
                    dot2x4_bf16(x0, x1, (const uint16_t *const *)rows, n_in, sums0, sums1);
                else
                    dot2x4_f32(x0, x1, (const float *const *)rows, n_in, sums0, sums1);
                /* torch rounds the product to F32, adds the bias, then the residual */
                for (int r = 0; r < n_rows; r++) {
                    store(ys + t * n_out + n0 + r, (float)sums0[r] + bias_values[r], accumulate);
                    store(ys + (t + 1) * n_out + n0 + r, (float)sums1[r] + bias_values[r],
                          accumulate);
                }
            }
            for (; t < n_tokens; t++) {
                double sums[ROWS_PER_BLOCK];
                if (weight->dtype == CI_BF16)
                    dot4_bf16(xs + t * n_in, (const uint16_t *const *)rows, n_in, sums);
                else
                    dot4_f32(xs + t * n_in, (const float *const *)rows, n_in, sums);
                for (int r = 0; r < n_rows; r++)
                    store(ys + t * n_out + n0 + r, (float)sums[r] + bias_values[r], accumulate);
            }
        }
    }
}

void matmul_cpu(ci_backend *be, const ci_tensor *x, const ci_projection *projections, int n,
                int accumulate) {
    CI_ASSERT(n >= 1 && n <= CI_MAX_PROJECTIONS);
    for (int i = 0; i < n; i++)
        project(be, projections[i].out, x, projections[i].weight, projections[i].bias, accumulate);
}
