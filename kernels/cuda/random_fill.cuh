// Drawing a random model's tensor straight into device memory (cinfer_model_load_random on CUDA).
//
// Each element is what the host draw (models/weights.c) followed by the upload
// (weights_cuda.cu) would have put there: the value of common/random_weights.h, rounded to the
// dtype the config says the files hold, then converted to the dtype the device stores (matrices
// in the run dtype, vectors F32). Both roundings are to nearest even, as on the host, so the bits
// are the same; the double rounding (e.g. bf16 files run in fp16) is kept on purpose.
//
// Written in the vocabulary of kernel_api.cuh, so that tests/test_emu_random.cpp runs this very
// kernel on the CPU under tests/cuda_emu/cuda_emu.h.
#ifndef CINFER_RANDOM_FILL_CUH
#define CINFER_RANDOM_FILL_CUH

#include "kernel_api.cuh"

extern "C" {
#include "../../common/tensor.h"
#include "../../common/random_weights.h"
}

// ---- kernel -------------------------------------------------------------------------------------

// dst[i] = DeviceT(FileT(value i)) for i < n; a grid-stride loop, so any grid covers any size.
template <typename FileT, typename DeviceT>
__global__ void random_fill_kernel(DeviceT *__restrict__ dst, ci_random_draw draw, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float as_stored =
            ci_to_float(ci_from_float<FileT>(ci_random_value(&draw, (uint64_t)i)));
        dst[i] = ci_from_float<DeviceT>(as_stored);
    }
}

// ---- launchers ----------------------------------------------------------------------------------

static const int RANDOM_FILL_THREADS = 256;
// Enough blocks to fill an H200 (132 SMs × 8 resident blocks of 256) several times over; larger
// tensors loop inside the kernel.
static const int64_t RANDOM_FILL_MAX_BLOCKS = 4096;

template <typename FileT, typename DeviceT>
static inline void random_fill_launch(DeviceT *dst, const ci_random_draw &draw, int64_t n,
                                      cudaStream_t stream) {
    if (n <= 0) return;
    const int64_t blocks_needed = (n + RANDOM_FILL_THREADS - 1) / RANDOM_FILL_THREADS;
    const int blocks =
        (int)(blocks_needed < RANDOM_FILL_MAX_BLOCKS ? blocks_needed : RANDOM_FILL_MAX_BLOCKS);
    CI_LAUNCH((random_fill_kernel<FileT, DeviceT>), blocks, RANDOM_FILL_THREADS, 0, stream, dst,
              draw, n);
}

template <typename FileT>
static inline int random_fill_to(void *dst, ci_dtype device_dtype, const ci_random_draw &draw,
                                 int64_t n, cudaStream_t stream) {
    switch (device_dtype) {
    case CI_F32: random_fill_launch<FileT>((float *)dst, draw, n, stream); return 0;
    case CI_BF16: random_fill_launch<FileT>((__nv_bfloat16 *)dst, draw, n, stream); return 0;
    case CI_F16: random_fill_launch<FileT>((__half *)dst, draw, n, stream); return 0;
    default: return -1;
    }
}

// Fills n elements of dst (device_dtype) with the tensor `draw` describes, as stored in
// file_dtype and converted. Returns 0, or -1 for a dtype that is not F32, BF16 or F16.
static inline int random_fill(void *dst, ci_dtype device_dtype, ci_dtype file_dtype,
                              const ci_random_draw &draw, int64_t n, cudaStream_t stream) {
    switch (file_dtype) {
    case CI_F32: return random_fill_to<float>(dst, device_dtype, draw, n, stream);
    case CI_BF16: return random_fill_to<__nv_bfloat16>(dst, device_dtype, draw, n, stream);
    case CI_F16: return random_fill_to<__half>(dst, device_dtype, draw, n, stream);
    default: return -1;
    }
}

#endif
