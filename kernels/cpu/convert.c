/* Widening F16/BF16 weights to F32, a row at a time. */
#include <pthread.h>

#include "../../common/error.h"
#include "ops_cpu.h"

/* Every half-precision value widened once: a 256 KB table turns conversion into a lookup. */
static float f16_table[1 << 16];
static pthread_once_t f16_table_once = PTHREAD_ONCE_INIT;

static void build_f16_table(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) f16_table[i] = ci_f16_to_f32((uint16_t)i);
}

void ci_row_to_f32(const ci_tensor *tensor, int64_t row, float *dst) {
    int64_t n = ci_tensor_row_size(tensor);
    if (tensor->n_dims == 1) {
        n = tensor->shape[0];
        CI_ASSERT(row == 0);
    }
    switch (tensor->dtype) {
    case CI_F32: {
        const float *src = (const float *)tensor->data + row * n;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i];
        break;
    }
    case CI_BF16: {
        const uint16_t *src = (const uint16_t *)tensor->data + row * n;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dst[i] = ci_bf16_to_f32(src[i]);
        break;
    }
    case CI_F16: {
        pthread_once(&f16_table_once, build_f16_table);
        const uint16_t *src = (const uint16_t *)tensor->data + row * n;
        for (int64_t i = 0; i < n; i++) dst[i] = f16_table[src[i]];
        break;
    }
    default: CI_ASSERT(!"weights must be F32, BF16 or F16");
    }
}
