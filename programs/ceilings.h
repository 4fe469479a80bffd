/* What the hardware can do, measured in the same run as the rows it judges: the rate a large
 * read reaches (the ceiling of decode, which reads every weight once per token) and the FLOP/s of
 * a large GEMM (the ceiling of prefill). */
#ifndef CINFER_BENCH_CEILINGS_H
#define CINFER_BENCH_CEILINGS_H

#include "cinfer.h"

typedef struct bench_ceilings {
    double bytes_per_s; /* 0: not measured */
    double flops;       /* 0: not measured */
    const char *how;    /* what was measured, for the table's footnote */
} bench_ceilings;

/* The CPU: a parallel sum over 1 GiB with n_threads (0: OpenMP's default); no GEMM ceiling, as
 * the build has no BLAS to set one. */
cinfer_status bench_cpu_ceilings(int n_threads, bench_ceilings *out);
/* A GPU: a 1 GiB device-to-device copy (read + write bytes counted) and an 8192³ cuBLAS GEMM in
 * the run dtype with f32 accumulation (TF32 off for f32). Fails where CUDA is not built. */
cinfer_status bench_cuda_ceilings(int device, cinfer_dtype dtype, bench_ceilings *out);

#endif
