// The kernels of a ragged step over a paged KV cache (kernels/backend.h: ci_paged_step), written
// to kernel_api.cuh so that the emulator runs them (tests/test_emu_paged.cpp).
// defines: rope_rows_launch, kv_store_paged_launch, paged_gather_launch<T>, paged_kernel_for,
//          attention_paged_launch<T>, attention_paged_decode_workspace_bytes
//
// Attention itself is not written again here: sdpa, flash and flash-decoding take a template
// parameter PAGED, and attention_cache_row<PAGED> (attention_kernels.cuh) is the one place where
// a key's row is found, in place in the pool through the block table. attention_paged_launch
// picks which of them runs a step. Eager attention (cuBLAS) cannot follow a block table, so it
// gathers one sequence's keys into contiguous F32 rows first (paged_gather_launch).
//
// Graph safety: every kernel here reads the step's positions, lengths, starts and block tables
// from device memory; the host passes only shapes and bounds (max_seq_rows, max_seq_len), so that
// a recorded decode step replays with each step's own contents.
#ifndef CINFER_ATTENTION_PAGED_CUH
#define CINFER_ATTENTION_PAGED_CUH

#include "attention_decode.cuh"
#include "attention_flash.cuh"
#include "attention_sdpa.cuh"

enum { PAGED_THREADS = 256 }; // the element kernels' blocks

static inline unsigned paged_blocks_for(int64_t n) {
    return (unsigned)((n + PAGED_THREADS - 1) / PAGED_THREADS);
}

// ---- RoPE with a position per row ---------------------------------------------------------------
// As rope_cuda (elementwise.cu), rotate-half, with row r at positions[r] instead of pos0 + t: one
// thread per (row, head, i < D/2) over the H query heads and then the G key heads; cos and sin
// of position · inv_freq[i] by the precise cosf/sinf, times attention_scaling. Static, as its
// launcher: the only kernel here that is not a template, it must not clash between the library
// and an emulator test that includes this header.
static __global__ void rope_rows_kernel(float *q, float *k, int64_t n_rows, int n_heads,
                                        int n_kv_heads, int head_dim, const int32_t *positions,
                                        const float *inv_freq, float attention_scaling) {
    const int half = head_dim / 2, heads = n_heads + n_kv_heads;
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n_rows * heads * half) return;
    const int i = (int)(idx % half);
    const int head = (int)((idx / half) % heads);
    const int64_t r = idx / ((int64_t)half * heads);
    float *v = head < n_heads ? q + (r * n_heads + head) * head_dim
                              : k + (r * n_kv_heads + (head - n_heads)) * head_dim;
    const float angle = (float)positions[r] * inv_freq[i];
    const float c = cosf(angle) * attention_scaling, s = sinf(angle) * attention_scaling;
    const float x1 = v[i], x2 = v[i + half];
    v[i] = x1 * c + (-x2) * s;
    v[i + half] = x2 * c + x1 * s;
}

// q [n_rows, H, D] and k [n_rows, G, D] in place.
static inline void rope_rows_launch(float *q, float *k, int64_t n_rows, int n_heads, int n_kv_heads,
                                    int head_dim, const int32_t *positions, const float *inv_freq,
                                    float attention_scaling, cudaStream_t stream) {
    const int64_t n = n_rows * (n_heads + n_kv_heads) * (head_dim / 2);
    if (n == 0) return;
    CI_LAUNCH(rope_rows_kernel, paged_blocks_for(n), PAGED_THREADS, 0, stream, q, k, n_rows,
              n_heads, n_kv_heads, head_dim, positions, inv_freq, attention_scaling);
}

// ---- pool rows slots[r] = the new keys and values -----------------------------------------------
// Rounded to the pool's dtype once, here, as kv_store_cuda does for a contiguous cache. Element i
// of the new rows [R, G·D] goes to row slots[i / row_size] of the pool [n_blocks·block_size, G·D].
template <typename T>
__global__ void kv_store_paged_kernel(T *k_pool, T *v_pool, const float *k_new, const float *v_new,
                                      int64_t n, int64_t row_size, const int32_t *slots) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t offset = (int64_t)slots[i / row_size] * row_size + i % row_size;
    k_pool[offset] = ci_from_float<T>(k_new[i]);
    v_pool[offset] = ci_from_float<T>(v_new[i]);
}

template <typename T>
inline void kv_store_paged_launch(T *k_pool, T *v_pool, const float *k_new, const float *v_new,
                                  int64_t n_rows, int64_t row_size, const int32_t *slots,
                                  cudaStream_t stream) {
    const int64_t n = n_rows * row_size;
    if (n == 0) return;
    CI_LAUNCH(kv_store_paged_kernel<T>, paged_blocks_for(n), PAGED_THREADS, 0, stream, k_pool,
              v_pool, k_new, v_new, n, row_size, slots);
}

// ---- eager: one sequence's keys gathered into contiguous F32 rows -------------------------------
// k_out, v_out [span, G·D] = keys [0, span) of sequence `seq`, widened to F32 (eager's GEMMs run
// in F32 whatever the cache dtype); rows at or past seq_lens[seq] (read on the device) become 0
// and their blocks are never looked up: a recorded step gathers a span sized for the longest
// sequence the graph may see, and the softmax gives those rows weight exactly 0 (0·0, not 0·NaN).
template <typename T>
__global__ void paged_gather_kernel(float *k_out, float *v_out, const attention_params p, int seq,
                                    int span) {
    const int64_t row_size = (int64_t)p.n_kv_heads * p.head_dim;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= span * row_size) return;
    const int key = (int)(i / row_size);
    if (key >= p.seq_lens[seq]) {
        k_out[i] = v_out[i] = 0.0f;
        return;
    }
    const int64_t at = attention_cache_row<true>(p, seq, key) * row_size + i % row_size;
    k_out[i] = ci_to_float(static_cast<const T *>(p.k_cache)[at]);
    v_out[i] = ci_to_float(static_cast<const T *>(p.v_cache)[at]);
}

// p: the step's params (pools, seq_lens, block_tables as attention_paged_launch takes them).
template <typename T>
inline void paged_gather_launch(float *k_out, float *v_out, const attention_params &p, int seq,
                                int span, cudaStream_t stream) {
    const int64_t n = (int64_t)span * p.n_kv_heads * p.head_dim;
    if (n == 0) return;
    CI_LAUNCH(paged_gather_kernel<T>, paged_blocks_for(n), PAGED_THREADS, 0, stream, k_out, v_out,
              p, seq, span);
}

// ---- the fused kinds ----------------------------------------------------------------------------

enum paged_kernel { PAGED_SDPA, PAGED_FLASH, PAGED_DECODE };

// A decode-only step (one row per sequence: the steps a CUDA graph records) goes to
// flash-decoding, whose split of the keys fills the GPU when a few long sequences would give
// sdpa and flash a block per head; a step with prompt chunks goes to the backend's kind.
inline paged_kernel paged_kernel_for(int flash_kind, int decode_only) {
    return decode_only ? PAGED_DECODE : flash_kind ? PAGED_FLASH : PAGED_SDPA;
}

// Queues the step on `stream`; p holds the ragged, paged fields (attention_kernels.cuh) with
// n_tokens = the most rows any sequence has; max_seq_len bounds every sequence's keys (it sizes
// decode's chunking; the workspace must hold attention_paged_decode_workspace_bytes). Returns 0,
// or non-zero for shapes the kernel does not run.
template <typename T>
int attention_paged_launch(paged_kernel kernel, const attention_params &p, int max_seq_len,
                           cudaStream_t stream) {
    if (!p.seq_starts || !p.seq_lens || !p.block_tables || p.block_size < 1) return 1;
    switch (kernel) {
    case PAGED_SDPA: return attention_sdpa_launch<T, true>(p, stream);
    case PAGED_FLASH: return attention_flash_launch<T, true>(p, stream);
    case PAGED_DECODE: return attention_decode_launch<T, true>(p, stream, max_seq_len);
    }
    return 1;
}

// Decode's partial results for any decode-only step of up to max_seqs sequences of up to
// max_seq_len keys: the chunk count falls as sequences are added but not in proportion, so the
// largest over every count of sequences.
inline size_t attention_paged_decode_workspace_bytes(int n_heads, int head_dim, int max_seq_len,
                                                     int max_seqs) {
    size_t most = 0;
    for (int n = 1; n <= max_seqs; n++) {
        const size_t bytes = attention_decode_workspace_bytes(n, n_heads, head_dim, max_seq_len);
        if (bytes > most) most = bytes;
    }
    return most;
}

#endif
