// CUDA events on the CUDA backend's stream (bench/attention_timer.h): the time the device spent
// between start and stop, launch gaps included, host work between calls excluded.
#include "../kernels/cuda/ops_cuda.h"

extern "C" {
#include "attention_timer.h"
}

struct bench_timer {
    cudaStream_t stream;
    cudaEvent_t start, stop;
    void *flush;
    size_t flush_bytes;
};

extern "C" bench_timer *bench_timer_create(ci_backend *be, size_t flush_bytes) {
    bench_timer *timer = (bench_timer *)calloc(1, sizeof *timer);
    if (!timer) {
        CI_FAIL(CINFER_ERR_MEMORY, "out of memory for a timer");
        return NULL;
    }
    timer->stream = cuda_of(be)->stream;
    CUDA_CHECK(cudaEventCreate(&timer->start));
    CUDA_CHECK(cudaEventCreate(&timer->stop));
    if (flush_bytes > 0) {
        if (cudaMalloc(&timer->flush, flush_bytes) != cudaSuccess) {
            cudaGetLastError();
            CI_FAIL(CINFER_ERR_MEMORY, "no %zu MiB of device memory for the L2 flush buffer",
                    flush_bytes >> 20);
            bench_timer_free(timer);
            return NULL;
        }
        timer->flush_bytes = flush_bytes;
    }
    return timer;
}

extern "C" void bench_timer_free(bench_timer *timer) {
    if (!timer) return;
    CUDA_CHECK(cudaEventDestroy(timer->start));
    CUDA_CHECK(cudaEventDestroy(timer->stop));
    if (timer->flush) CUDA_CHECK(cudaFree(timer->flush));
    free(timer);
}

extern "C" void bench_timer_flush_l2(bench_timer *timer) {
    // a write of several times the L2's size evicts whatever the previous call left there
    if (timer->flush)
        CUDA_CHECK(cudaMemsetAsync(timer->flush, 0x5a, timer->flush_bytes, timer->stream));
}

extern "C" void bench_timer_start(bench_timer *timer) {
    CUDA_CHECK(cudaEventRecord(timer->start, timer->stream));
}

extern "C" double bench_timer_stop_ms(bench_timer *timer) {
    CUDA_CHECK(cudaEventRecord(timer->stop, timer->stream));
    CUDA_CHECK(cudaEventSynchronize(timer->stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, timer->start, timer->stop));
    return (double)ms;
}
