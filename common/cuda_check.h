/* Error checks for CUDA runtime and cuBLAS calls: one handler each, with the failing statement,
 * file and line. For the CUDA kernels and for any other code that calls CUDA itself (the GPU
 * ceilings of `cinfer bench`). */
#ifndef CINFER_CUDA_CHECK_H
#define CINFER_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

/* For calls whose failure leaves nothing sensible to do (a launch, a copy mid-forward): report
 * where and abort, as llm.c's cudaCheck does. Calls that can fail for reasons a user can fix
 * (allocation, device selection) return their error instead. */
static inline void ci_cuda_check(cudaError_t error, const char *statement, const char *file,
                                 int line) {
    if (error == cudaSuccess) return;
    fprintf(stderr, "cinfer: CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(error),
            cudaGetErrorString(error), statement, file, line);
    abort();
}
#define CUDA_CHECK(call) ci_cuda_check((call), #call, __FILE__, __LINE__)

/* After every kernel launch: a bad configuration shows at the launch that caused it. */
#define CUDA_CHECK_LAUNCH() ci_cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static inline void ci_cublas_check(cublasStatus_t status, const char *statement, const char *file,
                                   int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "cinfer: cuBLAS error %s (%s) in %s at %s:%d\n", cublasGetStatusName(status),
            cublasGetStatusString(status), statement, file, line);
    abort();
}
#define CUBLAS_CHECK(call) ci_cublas_check((call), #call, __FILE__, __LINE__)

#endif
