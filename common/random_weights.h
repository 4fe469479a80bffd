/* The value of every element of a random-weight model (cinfer_model_load_random), defined once
 * for the host draw (models/weights.c) and the device draw (kernels/cuda/random_fill.cuh).
 *
 * C and CUDA must produce the same bits, so the draw uses integer arithmetic and float operations
 * that are exact or rounded once by IEEE rules on both (an integer of at most 24 bits to float, a
 * multiplication by a power of two, one multiplication rounded to nearest even), and nothing
 * whose result depends on a library (no logf/cosf) or on FMA contraction (no a·b + c). */
#ifndef CINFER_RANDOM_WEIGHTS_H
#define CINFER_RANDOM_WEIGHTS_H

#include <stdint.h>

#include "splitmix.h"

/* How one tensor is drawn. A tensor's elements are independent of each other: element i depends
 * only on the stream key (from the seed and the tensor's name) and i, so any thread, on either
 * side, can draw any element. */
typedef struct ci_random_draw {
    uint64_t key;     /* the tensor's stream: ci_random_stream_key(seed, hash of its name) */
    float half_width; /* uniform on [-half_width, half_width); 0 draws `constant` everywhere */
    float constant;   /* norm weights 1, biases 0 */
} ci_random_draw;

/* FNV-1a of a tensor's name: a different stream per tensor. */
static inline uint64_t ci_random_name_hash(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        h = (h ^ *c) * 0x100000001b3ull;
    return h;
}

CI_HOST_DEVICE static inline uint64_t ci_random_stream_key(uint64_t seed, uint64_t name_hash) {
    uint64_t state = seed ^ name_hash;
    return ci_splitmix64(&state);
}

/* Element i of the tensor. The top 24 bits k of element i's splitmix64 output give
 * u = k·2⁻²⁴ in [0, 1); 2u − 1 = (2k − 2²⁴)·2⁻²⁴ is formed in integers and converted exactly
 * (|2k − 2²⁴| ≤ 2²⁴), so the only rounding is the final product with half_width. */
CI_HOST_DEVICE static inline float ci_random_value(const ci_random_draw *draw, uint64_t i) {
    if (draw->half_width == 0.0f) return draw->constant;
    uint64_t state = draw->key + i; /* element i's own stream */
    const int32_t k = (int32_t)(ci_splitmix64(&state) >> 40);
    const float centered = (float)(2 * k - (1 << 24)) * 0x1p-24f; /* 2u − 1 in [-1, 1) */
    return draw->half_width * centered;
}

#endif
