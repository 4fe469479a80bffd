// out = x·Wᵀ (+ bias), or out += x·Wᵀ (+ bias), F32 accumulation in every dtype: up to 8 rows
// through cinfer's GEMV kernel (matmul_gemv.cuh), more through cuBLAS. Both round x to the
// weights' dtype, so they compute the same products and differ only in the order of the sums.
//
// For cuBLAS: W is [N, K] row-major, x [T, K], out [T, N]. cuBLAS is column-major, where the same bytes are
// Wᵀ (K×N), xᵀ (K×T) and outᵀ (N×T); so outᵀ = op(W)·xᵀ with op = transpose:
//   gemm(T, N, m = N, n = T, k = K, A = W, lda = K, B = x, ldb = K, C = out, ldc = N).
// With BF16 or F16 weights x is first rounded to the weight's dtype in the workspace (tensor cores
// take both operands in one dtype); the output stays F32 and the residual stream with it. In F32
// the compute type is CUBLAS_COMPUTE_32F, never the TF32 variant, so that F32 runs match the CPU
// reference within 1e-3.
#include "matmul_gemv.cuh"
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

static void check_projection(const ci_projection *p, int64_t n_tokens, int64_t n_in) {
    const ci_tensor *weight = p->weight;
    const int64_t n_out = weight->shape[0];
    CI_ASSERT(weight->n_dims == 2 && weight->shape[1] == n_in && n_out <= INT32_MAX);
    CI_ASSERT(ci_tensor_n_rows(p->out) == n_tokens && ci_tensor_row_size(p->out) == n_out);
    CI_ASSERT(p->out->dtype == CI_F32);
    CI_ASSERT(!p->bias || !p->bias->data || ci_tensor_numel(p->bias) == n_out);
}

// One projection through cuBLAS, x already in the weight's dtype. With accumulate, beta = 1 adds
// the product to what out holds; a bias then joins after that sum, not before it as in torch's
// x + linear(h): one F32 rounding apart, far inside every tolerance (and Llama checkpoints carry
// no bias on o_proj or down_proj).
static void project_cublas(cuda_backend *cu, const ci_projection *p, const void *input,
                           int64_t n_tokens, int64_t n_in, int accumulate) {
    const ci_tensor *weight = p->weight;
    const int64_t n_out = weight->shape[0];
    if (n_out == 0) return;
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType_t type = cuda_type(weight->dtype);
    CUBLAS_CHECK(cublasGemmEx(cu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n_out, (int)n_tokens,
                              (int)n_in, &one, weight->data, type, (int)n_in, input, type,
                              (int)n_in, &beta, p->out->data, CUDA_R_32F, (int)n_out,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (p->bias && p->bias->data)
        bias_add_cuda(cu, (float *)p->out->data, p->bias, n_tokens, n_out);
}

static_assert((int)CI_MAX_PROJECTIONS <= (int)GEMV_MAX_SEGMENTS, "one GEMV launch per matmul call");

// The call as the few-row kernel (kernels/cuda/matmul_gemv.cuh) takes it.
static gemv_params gemv_call(const ci_tensor *x, const ci_projection *projections, int n,
                             int accumulate) {
    gemv_params g = {};
    g.x = (const float *)x->data;
    g.n_rows = ci_tensor_n_rows(x);
    g.n_in = ci_tensor_row_size(x);
    g.weight_dtype = projections[0].weight->dtype;
    g.accumulate = accumulate;
    g.n_segments = n;
    for (int i = 0; i < n; i++) {
        const ci_projection *p = &projections[i];
        const int has_bias = p->bias && p->bias->data;
        g.segments[i] = {p->weight->data, has_bias ? p->bias->data : nullptr,
                         has_bias ? p->bias->dtype : CI_F32, (float *)p->out->data,
                         p->weight->shape[0]};
    }
    return g;
}

// A few rows (decode: one token per sequence) are bound by reading the weights: one launch of
// the GEMV kernel reads every projection's weights once and rounds x in registers. More rows go
// to cuBLAS, after one kernel that rounds x for all projections (tensor cores take both operands
// in one dtype).
void matmul_cuda(ci_backend *be, const ci_tensor *x, const ci_projection *projections, int n,
                 int accumulate) {
    cuda_backend *cu = cuda_of(be);
    const int64_t n_tokens = ci_tensor_n_rows(x), n_in = ci_tensor_row_size(x);
    CI_ASSERT(n >= 1 && n <= CI_MAX_PROJECTIONS && x->dtype == CI_F32);
    CI_ASSERT(n_tokens <= INT32_MAX && n_in <= INT32_MAX);
    const ci_dtype dtype = projections[0].weight->dtype; // the run dtype: every matrix is in it
    CI_ASSERT(dtype == CI_F32 || dtype == CI_BF16 || dtype == CI_F16);
    for (int i = 0; i < n; i++) {
        CI_ASSERT(projections[i].weight->dtype == dtype);
        check_projection(&projections[i], n_tokens, n_in);
    }
    if (n_tokens == 0) return;

    const gemv_params few_rows = gemv_call(x, projections, n, accumulate);
    if (gemv_supports(few_rows)) {
        gemv_launch(cu->stream, few_rows);
        return;
    }
    const void *input = x->data;
    if (dtype != CI_F32) {
        CI_ASSERT(be->workspace_bytes >= matmul_cuda_scratch_bytes(n_tokens, n_in));
        convert_cuda(cu->stream, be->workspace, dtype, x->data, CI_F32, n_tokens * n_in);
        input = be->workspace;
    }
    for (int i = 0; i < n; i++)
        project_cublas(cu, &projections[i], input, n_tokens, n_in, accumulate);
}
