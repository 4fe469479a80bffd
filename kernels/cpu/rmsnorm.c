/* out = weight ⊙ (x / sqrt(mean(x²) + eps)), row by row, as transformers' LlamaRMSNorm: the
 * normalization in F32 (here its mean square in double), then the product with the weight. */
#include <math.h>

#include "../../common/error.h"
#include "ops_cpu.h"

void rmsnorm_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                 float eps) {
    const int64_t n_rows = ci_tensor_n_rows(x), dim = ci_tensor_row_size(x);
    CI_ASSERT(ci_tensor_numel(weight) == dim && ci_tensor_numel(out) == n_rows * dim);
    CI_ASSERT(x->dtype == CI_F32 && out->dtype == CI_F32);
    /* the weight widened once, into the front of the workspace (no other op is using it) */
    CI_ASSERT(be->workspace_bytes >= (size_t)dim * sizeof(float));
    float *w = be->workspace;
    ci_row_to_f32(weight, 0, w);
#pragma omp parallel for num_threads(be->n_threads) schedule(static) if (n_rows > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = (const float *)x->data + r * dim;
        float *yr = (float *)out->data + r * dim;
        double sum_squares = 0.0;
#pragma omp simd reduction(+ : sum_squares)
        for (int64_t i = 0; i < dim; i++) sum_squares += (double)xr[i] * (double)xr[i];
        const float inv_rms = (float)(1.0 / sqrt(sum_squares / (double)dim + (double)eps));
        for (int64_t i = 0; i < dim; i++) yr[i] = w[i] * (xr[i] * inv_rms);
    }
}
