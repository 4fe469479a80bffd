// The fused attention kernels (issue 4): what a call computes and which kernel runs it.
//
//   sdpa   (attention_sdpa.cuh)   one kernel per (sequence, head or head pair, query block): scores,
//                                 mask, softmax in F32 and P·V; no score matrix in global memory.
//                                 SIMT, any cache dtype.
//   flash  (attention_flash.cuh)  FlashAttention-2 tiling: the query block stays in registers,
//                                 K/V tiles stream through shared memory (cp.async, two stages),
//                                 online softmax, fully masked causal tiles skipped; tensor cores
//                                 (mma.sync m16n8k16) for BF16/F16 caches, a SIMT variant for F32.
//                                 The differential variant is one pass per head pair.
//   decode (attention_decode.cuh) flash-decoding for one new query per sequence: the keys split
//                                 into chunks across blocks, each writing a partial output with
//                                 its running max and sum, then a reduction kernel (which also
//                                 runs the differential epilogue). Flash uses it when n_tokens = 1.
//
// Every kernel reads the sequence's length from position_arg, so that one recorded CUDA graph
// serves every decode step: a recorded call is launched for the whole cache (n_ctx) and blocks or
// tiles past the current length return at once.
//
// Each kernel also runs a ragged step over a paged cache (kernels/backend.h: ci_paged_step;
// attention_paged.cuh picks the kernel): with PAGED = true its key rows are found through the
// block table (attention_cache_row), and the sequences' query rows, lengths and tables come from
// device memory (attention_params: seq_starts, seq_lens, block_tables), so that a recorded decode
// step of the continuous-batching engine replays with each step's own.
#ifndef CINFER_ATTENTION_KERNELS_CUH
#define CINFER_ATTENTION_KERNELS_CUH

#include "kernel_api.cuh"

// One attention call over n_seqs sequences. Sequence b has n_tokens new queries at positions
// pos0(b) .. pos0(b) + n_tokens − 1, where pos0(b) = seq_pos0 ? seq_pos0[b] : position_value(pos0);
// query t sees cache rows [0, pos0(b) + t] (causal, aligned at the end). Query head h reads KV
// head h / (n_heads / n_kv_heads) in place (GQA never copies K or V).
//
// Differential attention (differential = 1; docs/MODEL_MATH.md): head pair p = (p, p + P), P = H / 2,
// both maps weight Vcat_p = [V_kv(p) ‖ V_kv(p+P)] (2·D wide); out[t, 2pD : 2(p+1)D] =
// (1 − lambda_init) · RMSNorm_2D(A_p·Vcat_p − lambda · A_{p+P}·Vcat_p, eps) (no weight).
struct attention_params {
    const float *q;          // [n_seqs, n_tokens, H, D], F32, after RoPE
    const void *k_cache;     // [n_seqs, n_ctx, G, D] in the cache dtype (the kernel's T)
    const void *v_cache;     // same
    float *out;              // [n_seqs, n_tokens, H, D], F32
    int n_seqs, n_tokens, n_heads, n_kv_heads, head_dim, n_ctx;
    position_arg pos0;       // every sequence's first new query position ...
    const int *seq_pos0;     // ... or, when not null, each sequence's own (device memory, [n_seqs])
    float scale;             // softmax scale, 1/sqrt(head_dim)
    int differential;
    float lambda, lambda_init, eps;
    float *workspace;        // decode's partial results; see attention_decode_workspace_bytes
    size_t workspace_bytes;
    // A ragged step over a paged cache (kernels/backend.h: ci_paged_step; attention_paged.cuh)
    // when seq_starts is not null, all in device memory so that a recorded step reads each
    // replay's own: sequence b's queries are rows [seq_starts[b], seq_starts[b + 1]) of q and out
    // (n_tokens is then only the most any sequence has, a bound for the grid), and they end at
    // position seq_lens[b] − 1. The caches are then pools [n_blocks, block_size, G, D]: key i of
    // sequence b is row i mod block_size of block block_tables[b·max_blocks_per_seq +
    // i / block_size], and n_ctx = max_blocks_per_seq · block_size bounds every sequence's keys.
    const int *seq_starts, *seq_lens, *block_tables;
    int block_size, max_blocks_per_seq;
};

// Where a sequence's queries are, and how many (the contiguous layout [n_seqs, n_tokens, H, D],
// or a ragged step's rows).
__device__ __host__ __forceinline__ int attention_seq_first_row(const attention_params &p,
                                                                int seq) {
    return p.seq_starts ? p.seq_starts[seq] : seq * p.n_tokens;
}
__device__ __host__ __forceinline__ int attention_seq_rows(const attention_params &p, int seq) {
    return p.seq_starts ? p.seq_starts[seq + 1] - p.seq_starts[seq] : p.n_tokens;
}

__device__ __host__ __forceinline__ int attention_seq_pos0(const attention_params &p, int seq) {
    if (p.seq_starts) return p.seq_lens[seq] - attention_seq_rows(p, seq);
    return p.seq_pos0 ? p.seq_pos0[seq] : position_value(p.pos0);
}

// The cache row (in units of G·D elements) that holds key `key` of sequence `seq`: the one place
// where the kernels' two layouts differ, so that the contiguous and the paged variant of each
// kernel share its body. A template parameter rather than a test of p.block_tables, because the
// key loops call it per key: the contiguous kernels stay as they were, without the table.
template <bool PAGED>
__device__ __host__ __forceinline__ int64_t attention_cache_row(const attention_params &p, int seq,
                                                                int key) {
    if constexpr (PAGED) {
        const int block = p.block_tables[(int64_t)seq * p.max_blocks_per_seq + key / p.block_size];
        return (int64_t)block * p.block_size + key % p.block_size;
    } else {
        return (int64_t)seq * p.n_ctx + key;
    }
}

// Each kernel file defines, for its kind X (sdpa, flash, decode):
//   template <typename T, bool PAGED = false>
//   int attention_X_launch(const attention_params &p, cudaStream_t stream);
//     templated on the cache dtype T (float, __nv_bfloat16, __half) and on the layout (PAGED: a
//     ragged step over a paged pool, p.seq_starts and p.block_tables set); queued on `stream`, no
//     allocation, no synchronization; returns 0, or non-zero when it cannot run these shapes (a
//     head_dim it was not built for), and the caller then names the reason and the kind;
//   inline int attention_X_supports(int head_dim), so that the load (ci_cuda_attention_supports)
//     can refuse a kind that cannot run a model, and `auto` choose the fastest that can.
// attention_decode.cuh also defines
//   inline size_t attention_decode_workspace_bytes(int n_seqs, int n_heads, int head_dim,
//                                                  int n_ctx);
// the scratch a call may need, with n_ctx the longest span a call may cover.

#endif
