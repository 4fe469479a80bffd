/* Element types and tensor views.
 *
 * A ci_tensor is a view: it never owns its data. Weights point into the memory-mapped checkpoint
 * (or, for other backends, into device memory); activations point into buffers a session owns. */
#ifndef CINFER_TENSOR_H
#define CINFER_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/cinfer.h"

/* The element types safetensors files hold. Weights must be F32, BF16 or F16; the integer types
 * appear in test fixtures (token ids). */
typedef enum ci_dtype {
    CI_F32,
    CI_F16,
    CI_BF16,
    CI_F64,
    CI_I64,
    CI_I32,
    CI_I16,
    CI_I8,
    CI_U8,
    CI_BOOL,
    CI_DTYPE_COUNT
} ci_dtype;

size_t ci_dtype_size(ci_dtype dtype);
/* The element type of a public run dtype (cinfer_load_options.dtype). */
static inline ci_dtype ci_dtype_of_run(cinfer_dtype dtype) {
    return dtype == CINFER_DTYPE_BF16 ? CI_BF16 : dtype == CINFER_DTYPE_F16 ? CI_F16 : CI_F32;
}
/* The safetensors spelling: "F32", "BF16", ... */
const char *ci_dtype_name(ci_dtype dtype);
/* Returns 0 and sets *dtype when name is a safetensors dtype this build reads, else -1. */
int ci_dtype_from_name(const char *name, ci_dtype *dtype);

/* bf16 is the top half of an f32: widening is exact. */
static inline float ci_bf16_to_f32(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Round to nearest even, as torch's .to(torch.bfloat16) does; NaN stays NaN. */
static inline uint16_t ci_f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* IEEE half precision to f32, exact for every input (normals, subnormals, inf, NaN). */
float ci_f16_to_f32(uint16_t bits);
/* Round to nearest even. */
uint16_t ci_f32_to_f16(float value);

enum { CI_MAX_DIMS = 4 };

typedef struct ci_tensor {
    void *data; /* NULL for an absent optional tensor (a bias the config turns off) */
    ci_dtype dtype;
    int n_dims;
    int64_t shape[CI_MAX_DIMS]; /* row-major, shape[n_dims-1] varies fastest */
} ci_tensor;

int64_t ci_tensor_numel(const ci_tensor *tensor);
size_t ci_tensor_nbytes(const ci_tensor *tensor);
/* Rows [row0, row0+n_rows) of a tensor whose first dimension counts rows. */
ci_tensor ci_tensor_rows(const ci_tensor *tensor, int64_t row0, int64_t n_rows);
/* Element i (flat index) of an F32, BF16 or F16 tensor in host memory. */
float ci_tensor_get_f32(const ci_tensor *tensor, int64_t i);
/* Writes "[2, 3, 4]" into buf. */
const char *ci_shape_string(const int64_t *shape, int n_dims, char *buf, size_t buf_size);

static inline ci_tensor ci_tensor_1d(void *data, ci_dtype dtype, int64_t n) {
    ci_tensor t = {data, dtype, 1, {n, 0, 0, 0}};
    return t;
}
/* Number of elements in one row (product of all but the first dimension). */
static inline int64_t ci_tensor_row_size(const ci_tensor *t) {
    int64_t n = 1;
    for (int i = 1; i < t->n_dims; i++) n *= t->shape[i];
    return n;
}
/* Number of rows: the first dimension, or 1 for a vector. */
static inline int64_t ci_tensor_n_rows(const ci_tensor *t) {
    return t->n_dims > 1 ? t->shape[0] : 1;
}

/* Batched sequences (kernels/backend.h): the position-aware ops take q, k, v [B, T, heads, D] and
 * caches [B, n_ctx, G, D]; a 3-D tensor is one sequence. */
static inline int64_t ci_tensor_n_seqs(const ci_tensor *t) {
    return t->n_dims == 4 ? t->shape[0] : 1;
}
/* Sequence b of such a tensor as a 3-D view (a 3-D tensor is its own sequence 0). */
ci_tensor ci_tensor_seq(const ci_tensor *tensor, int64_t b);
/* A [B·T, ...] view of rows (3-D) as [B, T, ...] (4-D): the same memory, sequence-major. */
ci_tensor ci_tensor_split_seqs(const ci_tensor *tensor, int64_t n_seqs);

#endif
