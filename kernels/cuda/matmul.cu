// out = x·Wᵀ (+ bias) through cuBLAS, F32 accumulation in every dtype.
//
// W is [N, K] row-major, x [T, K], out [T, N]. cuBLAS is column-major, where the same bytes are
// Wᵀ (K×N), xᵀ (K×T) and outᵀ (N×T); so outᵀ = op(W)·xᵀ with op = transpose:
//   gemm(T, N, m = N, n = T, k = K, A = W, lda = K, B = x, ldb = K, C = out, ldc = N).
// With BF16 or F16 weights x is first rounded to the weight's dtype in the workspace (tensor cores
// take both operands in one dtype); the output stays F32 and the residual stream with it. In F32
// the compute type is CUBLAS_COMPUTE_32F, never the TF32 variant, so that F32 runs match the CPU
// reference within 1e-3.
#include "ops_cuda.h"

size_t matmul_cuda_scratch_bytes(int64_t n_rows, int64_t widest_input) {
    return (size_t)n_rows * (size_t)widest_input * 2; // x rounded to BF16/F16
}

static cudaDataType_t cuda_type(ci_dtype dtype) {
    switch (dtype) {
    case CI_BF16: return CUDA_R_16BF;
    case CI_F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
    }
}

void matmul_cuda(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                 const ci_tensor *bias) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_tokens = ci_tensor_n_rows(x), n_in = ci_tensor_row_size(x);
    const int64_t n_out = weight->shape[0];
    CI_ASSERT(weight->n_dims == 2 && weight->shape[1] == n_in);
    CI_ASSERT(ci_tensor_n_rows(out) == n_tokens && ci_tensor_row_size(out) == n_out);
    CI_ASSERT(x->dtype == CI_F32 && out->dtype == CI_F32);
    CI_ASSERT(weight->dtype == CI_F32 || weight->dtype == CI_BF16 || weight->dtype == CI_F16);
    CI_ASSERT(!bias || !bias->data || ci_tensor_numel(bias) == n_out);
    CI_ASSERT(n_tokens <= INT32_MAX && n_in <= INT32_MAX && n_out <= INT32_MAX);
    if (n_tokens == 0 || n_out == 0) return;

    const void *input = x->data;
    if (weight->dtype != CI_F32) {
        CI_ASSERT(be->workspace_bytes >= matmul_cuda_scratch_bytes(n_tokens, n_in));
        convert_cuda(cu->stream, be->workspace, weight->dtype, x->data, CI_F32, n_tokens * n_in);
        input = be->workspace;
    }
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t type = cuda_type(weight->dtype);
    CUBLAS_CHECK(cublasGemmEx(cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n_out, (int)n_tokens,
                              (int)n_in, &one, weight->data, type, (int)n_in, input, type,
                              (int)n_in, &zero, out->data, CUDA_R_32F, (int)n_out,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    // as torch: the product rounded to F32, then the bias added
    if (bias && bias->data) bias_add_cuda(cu, (float *)out->data, bias, n_tokens, n_out);
}
