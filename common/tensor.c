#include "tensor.h"

#include <math.h>
#include <stdio.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[CI_DTYPE_COUNT] = {
    [CI_F32] = {"F32", 4}, [CI_F16] = {"F16", 2},   [CI_BF16] = {"BF16", 2}, [CI_F64] = {"F64", 8},
    [CI_I64] = {"I64", 8}, [CI_I32] = {"I32", 4},   [CI_I16] = {"I16", 2},   [CI_I8] = {"I8", 1},
    [CI_U8] = {"U8", 1},   [CI_BOOL] = {"BOOL", 1},
};

size_t ci_dtype_size(ci_dtype dtype) { return dtype_table[dtype].size; }
const char *ci_dtype_name(ci_dtype dtype) { return dtype_table[dtype].name; }

int ci_dtype_from_name(const char *name, ci_dtype *dtype) {
    for (int i = 0; i < CI_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *dtype = (ci_dtype)i;
            return 0;
        }
    }
    return -1;
}

float ci_f16_to_f32(uint16_t bits) {
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1fu;
    uint32_t mantissa = bits & 0x3ffu;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24, exact in f32 */
        float magnitude = ldexpf((float)mantissa, -24);
        return sign ? -magnitude : magnitude;
    }
    uint32_t out = exponent == 0x1fu ? sign | 0x7f800000u | (mantissa << 13) /* inf, NaN */
                                     : sign | ((exponent + 112u) << 23) | (mantissa << 13);
    float value;
    memcpy(&value, &out, sizeof value);
    return value;
}

uint16_t ci_f32_to_f16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    float magnitude = fabsf(value);
    if (isnan(value)) return (uint16_t)(sign | 0x7e00u);
    if (magnitude >= 65520.0f) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (magnitude < 6.103515625e-05f) {
        /* subnormal half: units of 2^-24, rounded to nearest even by rintf */
        return (uint16_t)(sign | (uint16_t)rintf(magnitude * 16777216.0f));
    }
    uint32_t exponent = ((bits >> 23) & 0xffu) - 112u;
    uint32_t mantissa = bits & 0x7fffffu;
    uint32_t half = (exponent << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++; /* carries into the exponent */
    return (uint16_t)(sign | half);
}

int64_t ci_tensor_numel(const ci_tensor *tensor) {
    int64_t n = 1;
    for (int i = 0; i < tensor->n_dims; i++) n *= tensor->shape[i];
    return n;
}

size_t ci_tensor_nbytes(const ci_tensor *tensor) {
    return (size_t)ci_tensor_numel(tensor) * ci_dtype_size(tensor->dtype);
}

ci_tensor ci_tensor_rows(const ci_tensor *tensor, int64_t row0, int64_t n_rows) {
    ci_tensor view = *tensor;
    size_t row_bytes = (size_t)ci_tensor_row_size(tensor) * ci_dtype_size(tensor->dtype);
    view.data = (char *)tensor->data + (size_t)row0 * row_bytes;
    view.shape[0] = n_rows;
    return view;
}

ci_tensor ci_tensor_seq(const ci_tensor *tensor, int64_t b) {
    if (tensor->n_dims != 4) return *tensor;
    ci_tensor view = {
        NULL, tensor->dtype, 3, {tensor->shape[1], tensor->shape[2], tensor->shape[3], 0}};
    view.data = (char *)tensor->data + (size_t)b * ci_tensor_nbytes(&view);
    return view;
}

ci_tensor ci_tensor_split_seqs(const ci_tensor *tensor, int64_t n_seqs) {
    ci_tensor view = *tensor;
    if (tensor->n_dims != 3) return view; /* only [rows, heads, D] tensors are split */
    view.n_dims = 4;
    view.shape[0] = n_seqs;
    view.shape[1] = tensor->shape[0] / n_seqs;
    view.shape[2] = tensor->shape[1];
    view.shape[3] = tensor->shape[2];
    return view;
}

const char *ci_shape_string(const int64_t *shape, int n_dims, char *buf, size_t buf_size) {
    size_t used = 0;
    used += (size_t)snprintf(buf, buf_size, "[");
    for (int i = 0; i < n_dims && used < buf_size; i++)
        used += (size_t)snprintf(buf + used, buf_size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < buf_size) snprintf(buf + used, buf_size - used, "]");
    return buf;
}

float ci_tensor_get_f32(const ci_tensor *tensor, int64_t i) {
    switch (tensor->dtype) {
    case CI_F32: return ((const float *)tensor->data)[i];
    case CI_BF16: return ci_bf16_to_f32(((const uint16_t *)tensor->data)[i]);
    case CI_F16: return ci_f16_to_f32(((const uint16_t *)tensor->data)[i]);
    default: return NAN; /* weights are checked to be F32, BF16 or F16 when bound */
    }
}
