// The GPU's ceilings (programs/ceilings.h): a device-to-device copy for bandwidth, a cuBLAS GEMM
// for FLOP/s, each timed with CUDA events on its own stream, best of five after a warm-up.
#include "../common/cuda_check.h"

extern "C" {
#include "../common/error.h"
#include "ceilings.h"
}

static float best_milliseconds(cudaStream_t stream, void (*work)(void *), void *arg) {
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    work(arg); // warm-up: first-use costs (cuBLAS's heuristics, clocks ramping up)
    float best = 0;
    for (int repeat = 0; repeat < 5; repeat++) {
        CUDA_CHECK(cudaEventRecord(start, stream));
        work(arg);
        CUDA_CHECK(cudaEventRecord(stop, stream));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        if (repeat == 0 || ms < best) best = ms;
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    return best;
}

struct copy_job {
    void *dst, *src;
    size_t bytes;
    cudaStream_t stream;
};
static void run_copy(void *arg) {
    copy_job *job = (copy_job *)arg;
    CUDA_CHECK(
        cudaMemcpyAsync(job->dst, job->src, job->bytes, cudaMemcpyDeviceToDevice, job->stream));
}

struct gemm_job {
    cublasHandle_t handle;
    cudaDataType_t type;
    int n;
    void *a, *b, *c;
};
static void run_gemm(void *arg) {
    gemm_job *job = (gemm_job *)arg;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(job->handle, CUBLAS_OP_T, CUBLAS_OP_N, job->n, job->n, job->n, &one,
                              job->a, job->type, job->n, job->b, job->type, job->n, &zero, job->c,
                              CUDA_R_32F, job->n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

extern "C" cinfer_status bench_cuda_ceilings(int device, cinfer_dtype dtype, bench_ceilings *out) {
    *out = bench_ceilings{0.0, 0.0,
                          "GPU: 1 GiB device-to-device copy (read + write), 8192^3 "
                          "cuBLAS GEMM in the run dtype; best of 5, CUDA events"};
    if (cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "ceilings: CUDA device %d is not usable", device);
    }
    const size_t copy_bytes = (size_t)1 << 30;
    const int n = 8192;
    const size_t element = dtype == CINFER_DTYPE_F32 ? 4 : 2;
    const size_t operand_bytes = (size_t)n * n * element, result_bytes = (size_t)n * n * 4;
    void *x = NULL, *y = NULL, *a = NULL, *b = NULL, *c = NULL;
    cudaStream_t stream;
    cublasHandle_t handle;
    CUDA_CHECK(cudaStreamCreate(&stream));
    CUBLAS_CHECK(cublasCreate(&handle));
    CUBLAS_CHECK(cublasSetStream(handle, stream));
    CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH)); // no TF32 for f32
    cinfer_status status = CINFER_OK;
    if (cudaMalloc(&x, copy_bytes) != cudaSuccess || cudaMalloc(&y, copy_bytes) != cudaSuccess ||
        cudaMalloc(&a, operand_bytes) != cudaSuccess ||
        cudaMalloc(&b, operand_bytes) != cudaSuccess ||
        cudaMalloc(&c, result_bytes) != cudaSuccess) {
        cudaGetLastError();
        status = CI_FAIL(CINFER_ERR_MEMORY, "ceilings: %zu MiB of device memory not free",
                         (2 * copy_bytes + 2 * operand_bytes + result_bytes) >> 20);
    } else {
        // small values, so that the GEMM runs on ordinary numbers rather than zeros
        CUDA_CHECK(cudaMemsetAsync(a, 0x3c, operand_bytes, stream));
        CUDA_CHECK(cudaMemsetAsync(b, 0x3c, operand_bytes, stream));
        CUDA_CHECK(cudaMemsetAsync(x, 1, copy_bytes, stream));
        copy_job copy = {y, x, copy_bytes, stream};
        float copy_ms = best_milliseconds(stream, run_copy, &copy);
        out->bytes_per_s = 2.0 * (double)copy_bytes / (copy_ms * 1e-3);
        cudaDataType_t type = dtype == CINFER_DTYPE_BF16  ? CUDA_R_16BF
                              : dtype == CINFER_DTYPE_F16 ? CUDA_R_16F
                                                          : CUDA_R_32F;
        gemm_job gemm = {handle, type, n, a, b, c};
        float gemm_ms = best_milliseconds(stream, run_gemm, &gemm);
        out->flops = 2.0 * (double)n * n * n / (gemm_ms * 1e-3);
    }
    for (void *p : {x, y, a, b, c})
        if (p) CUDA_CHECK(cudaFree(p));
    CUBLAS_CHECK(cublasDestroy(handle));
    CUDA_CHECK(cudaStreamDestroy(stream));
    return status;
}
