/* Device time of the CUDA backend's ops for bench/attention_bench.c: CUDA events recorded on the
 * backend's own stream (which C cannot see: it lives in kernels/cuda/ops_cuda.h), and an L2 flush
 * queued on that stream before a timed region. Defined in attention_timer.cu. */
#ifndef CINFER_BENCH_ATTENTION_TIMER_H
#define CINFER_BENCH_ATTENTION_TIMER_H

#include <stddef.h>

#include "../kernels/backend.h"

typedef struct bench_timer bench_timer;

/* Two events on be's stream, and (flush_bytes > 0) a buffer that bench_timer_flush_l2 overwrites.
 * NULL when the events or the buffer cannot be had (the message is in cinfer_last_error()). */
bench_timer *bench_timer_create(ci_backend *be, size_t flush_bytes);
void bench_timer_free(bench_timer *timer);
/* Queues a write of the whole flush buffer, so that the next region starts with a cold L2. */
void bench_timer_flush_l2(bench_timer *timer);
void bench_timer_start(bench_timer *timer);
/* Records the stop event, waits for it and returns the device milliseconds since start. */
double bench_timer_stop_ms(bench_timer *timer);

#endif
