/* The CPU's read ceiling (programs/ceilings.h); the GPU's is in ceilings_cuda.cu. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/error.h"
#include "ceilings.h"

cinfer_status bench_cpu_ceilings(int n_threads, bench_ceilings *out) {
    const size_t n = ((size_t)1 << 30) / sizeof(float);
    float *buffer = malloc(n * sizeof *buffer);
    CI_CHECK_ALLOC(buffer, n * sizeof *buffer);
    const int threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    /* first touch from the threads that will read it, so pages sit where they are read */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) buffer[i] = (float)(i & 7);
    double best = 0, sink = 0;
    for (int repeat = 0; repeat < 3; repeat++) {
        double start = ci_now_seconds();
        float sum = 0;
        /* simd lets the sum be split over vector lanes: one chain of adds would be bound by
         * their latency, not by memory */
#pragma omp parallel for simd num_threads(threads) schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += buffer[i];
        double rate = (double)(n * sizeof *buffer) / (ci_now_seconds() - start);
        if (rate > best) best = rate;
        sink += sum;
    }
    free(buffer);
    *out = (bench_ceilings){best, 0.0, "CPU: best of 3 parallel reads of 1 GiB"};
    return sink > 0 ? CINFER_OK : CI_FAIL(CINFER_ERR_ARGUMENT, "read ceiling: nothing was read");
}

#ifndef CINFER_HAVE_CUDA
cinfer_status bench_cuda_ceilings(int device, cinfer_dtype dtype, bench_ceilings *out) {
    (void)device;
    (void)dtype;
    memset(out, 0, sizeof *out);
    return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                   "this build has no CUDA (configured with CINFER_CUDA=OFF "
                   "or without nvcc)");
}
#endif
