// The device-side vocabulary of cinfer's own kernels (attention_*.cuh, matmul_gemv.cuh, ...), kept
// small so that the same kernel source compiles two ways:
//   - under nvcc, for the GPU, where everything below is CUDA's own;
//   - under a host C++ compiler with tests/cuda_emu/cuda_emu.h included first (it defines
//     CINFER_CUDA_EMULATION), which runs the kernels on the CPU, each CUDA thread a fiber, so that
//     CI checks their logic (indexing, masking, online softmax, fragment layouts, split reductions)
//     against the CPU reference op on machines without a GPU. It proves nothing about speed, the
//     memory model or races the barriers do not order.
//
// What a kernel may use, besides this header and tensor_core.cuh:
//   __global__ __device__ __host__ __forceinline__ __restrict__ __launch_bounds__(n)
//   __shared__ on function-local arrays of plain types (no initializers)
//   threadIdx blockIdx blockDim gridDim (.x .y .z); blocks are one-dimensional in threads, a
//     multiple of 32
//   __syncthreads(); __shfl_xor_sync, __shfl_sync, __shfl_down_sync on float, int and unsigned
//     with the full mask 0xffffffff, called by all 32 lanes of the warp
//   __nv_bfloat16 and __half as storage, through ci_to_float / ci_from_float below
//   expf exp2f logf fmaxf fminf sqrtf rsqrtf fabsf INFINITY
//   CI_DYNAMIC_SHARED(type, name): the block's dynamic shared memory as `type *name`
//   ci_load_16(uint32_t dst[4], src), ci_load_16_stream(uint32_t dst[4], src): 16 bytes of global
//     memory that no thread writes during the kernel (a non-coherent load), src 16-byte aligned
//     (the emulator aborts otherwise, as the GPU faults); _stream for data read once (weights),
//     which it keeps out of L1 so that what is reused (a GEMV's input rows) stays there
// And host-side launch code may use:
//   cudaStream_t, CI_LAUNCH(kernel, grid, block, shared_bytes, stream, args...),
//   ci_allow_dynamic_shared(kernel, bytes) before launching with more than 48 KiB.
#ifndef CINFER_KERNEL_API_CUH
#define CINFER_KERNEL_API_CUH

#include <stdint.h>
#include <string.h>

#if !defined(CINFER_CUDA_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../common/cuda_check.h"

#define CI_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                                  \
    do {                                                                                           \
        (kernel)<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__);                      \
        CUDA_CHECK_LAUNCH();                                                                       \
    } while (0)

#define CI_DYNAMIC_SHARED(type, name)                                                              \
    extern __shared__ __align__(16) unsigned char ci_dynamic_shared_[];                            \
    type *name = reinterpret_cast<type *>(ci_dynamic_shared_)

template <typename Kernel> static inline void ci_allow_dynamic_shared(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)bytes));
}

// 16-byte loads of read-only global memory (ld.global.nc): one instruction per lane, 512 bytes per
// warp. The streaming variant asks L1 not to allocate (L1::no_allocate, sm_70+): data read once
// would otherwise evict what other warps of the SM read again.
__device__ __forceinline__ void ci_load_16(uint32_t dst[4], const void *src) {
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(dst[0]), "=r"(dst[1]), "=r"(dst[2]), "=r"(dst[3])
        : "l"(src));
}
__device__ __forceinline__ void ci_load_16_stream(uint32_t dst[4], const void *src) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(dst[0]), "=r"(dst[1]), "=r"(dst[2]), "=r"(dst[3])
        : "l"(src));
}
#endif

// ---- storage dtypes: F32, BF16, F16 in memory; F32 in registers ---------------------------------
__device__ __host__ __forceinline__ float ci_to_float(float x) { return x; }
__device__ __host__ __forceinline__ float ci_to_float(__nv_bfloat16 x) {
    return __bfloat162float(x);
}
__device__ __host__ __forceinline__ float ci_to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __host__ __forceinline__ T ci_from_float(float x);
template <> __device__ __host__ __forceinline__ float ci_from_float<float>(float x) { return x; }
template <> __device__ __host__ __forceinline__ __nv_bfloat16 ci_from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x); // round to nearest even
}
template <> __device__ __host__ __forceinline__ __half ci_from_float<__half>(float x) {
    return __float2half(x); // round to nearest even
}

// Where a kernel finds the position of a call's first new query: by value in eager calls; in a
// recorded decode step (a CUDA graph), in device memory rewritten before each replay, because a
// value passed at record time would be frozen into the graph.
struct position_arg {
    const int *device;
    int host;
};
__device__ __host__ __forceinline__ int position_value(position_arg p) {
    return p.device ? *p.device : p.host;
}

#endif
