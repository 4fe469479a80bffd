/* splitmix64, for the places that need reproducible pseudo-random numbers: seeding the sampler,
 * random weights, bench's prompt ids. */
#ifndef CINFER_SPLITMIX_H
#define CINFER_SPLITMIX_H

#include <stdint.h>

/* Marks a function that nvcc compiles for the host and the device (the random-weight draw runs on
 * both, common/random_weights.h); plain C, and the CPU emulator of CUDA kernels, see nothing. */
#ifndef CI_HOST_DEVICE
#if defined(__CUDACC__)
#define CI_HOST_DEVICE __host__ __device__
#else
#define CI_HOST_DEVICE
#endif
#endif

/* Advances *state and returns the next output. scripts/bench_hf.py draws the same sequence for
 * its prompt ids. */
CI_HOST_DEVICE static inline uint64_t ci_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif
