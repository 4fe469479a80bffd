/* The MLP's gated activation and the residual add. */
#include <math.h>

#include "../../engine/error.h"
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

void add_cpu(ci_backend *be, ci_tensor *x, const ci_tensor *y) {
    (void)be;
    const int64_t n = ci_tensor_numel(x);
    CI_ASSERT(ci_tensor_numel(y) == n);
    float *a = x->data;
    const float *b = y->data;
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}
