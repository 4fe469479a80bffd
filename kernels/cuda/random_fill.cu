// The random-weight fill of weights_cuda.cu, in a file of its own: the kernel is written against
// kernel_api.cuh (so that the CPU emulator runs it too), which ops_cuda.h cannot share a
// translation unit with.
#include "random_fill.cuh"

extern "C" {
#include "../../engine/error.h"
}

void random_fill_cuda(cudaStream_t stream, void *dst, ci_dtype dst_dtype, ci_dtype file_dtype,
                      const ci_random_draw &draw, int64_t n) {
    const int filled = random_fill(dst, dst_dtype, file_dtype, draw, n, stream);
    CI_ASSERT(filled == 0); // weights are F32, BF16 or F16, in the files and on the device
}
