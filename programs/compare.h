/* How close a GPU run must come to the CPU reference, per run dtype. One table, used by
 * `cinfer compare` (programs/compare.c) and by tests/test_cuda_model.cpp.
 *
 * f32: the project's bar, 1e-3 max-abs on logits and hidden states (what the CPU path is held to
 *   against transformers), scaled by the reference's largest magnitude when that exceeds 1 (real
 *   checkpoints carry hidden values in the thousands, where 1e-3 is below an F32 ulp). Top-1 must
 *   agree everywhere.
 * bf16 / fp16 are PROVISIONAL: derived from first principles, not yet measured on a GPU (this was
 *   written without one). Each GEMM rounds its input activations (and, when the checkpoint is
 *   wider, its weights) once to the run dtype, unit roundoff u = 2^-8 (bf16) or 2^-11 (fp16); with
 *   products of random sign the relative error of one GEMM output is about u·sqrt(2/3). The seven
 *   GEMMs of a layer feed a residual stream, so errors add across layers (root-sum-square): for
 *   the fixtures' 2-3 layers, about sqrt(21)·0.8·u ≈ 3.7·u, doubled for what softmax and the norms
 *   amplify: ≈ 3e-2 (bf16), 4e-3 (fp16). The bounds leave about 1.5-2.5x above that. Top-1
 *   agreement is loose: random-weight fixtures have many near-ties among their logits.
 * Measure these on a GPU (scripts/gpu_check.sh prints every figure) and tighten them. */
#ifndef CINFER_COMPARE_H
#define CINFER_COMPARE_H

#include "cinfer.h"

typedef struct ci_tolerance {
    double max_abs; /* times max(1, max |reference|); 0 = not checked */
    double rel_l2;  /* ||gpu − cpu|| / ||cpu||; 0 = not checked */
    double top1;    /* smallest fraction of positions whose argmax agrees */
} ci_tolerance;

static inline ci_tolerance ci_tolerance_for(cinfer_dtype dtype) {
    const ci_tolerance f32 = {1e-3, 0.0, 1.0};
    const ci_tolerance bf16 = {0.0, 5e-2, 0.75};
    const ci_tolerance f16 = {0.0, 1e-2, 0.9};
    return dtype == CINFER_DTYPE_BF16 ? bf16 : dtype == CINFER_DTYPE_F16 ? f16 : f32;
}

#endif
