// Flash-decoding: attention of ONE new query per sequence over a long KV cache, split across the
// keys so that a single sequence fills the GPU (issue 4, part 4).
//
// With one query, attention is a matrix-vector product: every cache row is read once and used for
// a handful of FLOPs, so the kernel is bound by memory bandwidth, and one block per (sequence,
// head) would leave most SMs idle. So the keys [0, pos0(b)] split into chunks, one block each:
//
//   1. split  (attention_decode_split_kernel), grid (head unit, chunk, sequence): a block takes one
//      chunk of keys of one KV head and every query head that reads it (the GQA group, up to 8 at
//      once), so each K/V row crosses the memory bus once for the whole group. It writes, per
//      query head, the chunk's running max m, sum l = Σ exp(s − m) and unnormalized output
//      o = Σ exp(s − m)·v to the workspace. For differential attention the unit is head pair
//      p = (p, p + P): each head reads its own K rows, and the V rows of both halves (V_kv(p),
//      V_kv(p+P)) serve both heads, so o is 2·D wide (A·Vcat_p).
//   2. reduce (attention_decode_reduce_kernel), grid (head or pair, sequence): combines the chunks
//      with the log-sum-exp rescaling, O = Σ_c exp(m_c − M)·o_c / Σ_c exp(m_c − M)·l_c, and for
//      differential attention runs the epilogue (1 − λ_init)·(O1 − λ·O2) / sqrt(mean(O²) + eps).
//
// Inside a split block, a key row of D elements is read as D / E vectors of E elements (16 bytes
// when D allows it, else one element); `lanes_per_key` lanes share a row, so a warp reads several
// keys per load instruction, and each thread keeps DECODE_LOAD_BYTES of loads in flight. The chunk
// goes through in tiles (all the keys the block's threads load at once): scores into shared
// memory, the tile's max and sum (online softmax across tiles, in base 2), then P·V into each
// thread's registers; at the end the threads' partial outputs are summed over the block.
//
// Lengths: the query of sequence b sits at pos0(b) and sees keys [0, pos0(b)]. The grid is sized
// on the host (for n_ctx when the call is recorded, since only the device knows the length), and
// each block derives its chunk's keys from the length on the device: the chunk length is
// max(min_chunk_keys, ceil(n_keys / n_chunks)), so that a recorded graph replayed at any length
// still spreads the keys over all the chunks. Chunks wholly past the length write m = −inf, l = 0
// and return; the reduce skips them (l = 0) without reading their o, so nothing from rows past the
// length, nor stale workspace contents, reaches the output.
#ifndef CINFER_ATTENTION_DECODE_CUH
#define CINFER_ATTENTION_DECODE_CUH

#include <stdio.h>
#include <stdlib.h>

#include <type_traits>

#include "attention_kernels.cuh"

// ---- sizes --------------------------------------------------------------------------------------

constexpr int DECODE_HEAD_DIM_MAX = 256; // every head_dim 1..256; registers are sized for 256
constexpr int DECODE_THREADS = 128;      // split block: 4 warps
constexpr int DECODE_WARPS = DECODE_THREADS / 32;
constexpr int DECODE_LOAD_BYTES = 64; // cache bytes each thread loads before it uses any: with
                                      // >= 16 warps per SM that is 32 KiB in flight per SM, about
                                      // what DRAM latency x bandwidth asks of an H100/H200 SM
constexpr int DECODE_MAX_GROUP = 8;   // query heads one split block serves (larger groups split)
constexpr int DECODE_TARGET_BLOCKS = 528; // H100/H200: 132 SMs × 4 blocks, to hide DRAM latency
constexpr int DECODE_MIN_CHUNK_KEYS = 64; // shorter chunks cost more in partial outputs (m, l and
                                          // D floats per head, written and read back) than they
                                          // gain in parallelism

// The number of chunks a call over `span` keys splits into: enough for DECODE_TARGET_BLOCKS
// blocks over all sequences when a block serves DECODE_MAX_GROUP query heads (smaller groups and
// differential attention give more blocks), but no chunk shorter than DECODE_MIN_CHUNK_KEYS.
// A pure function of the shapes, so that the workspace can be sized once for n_ctx.
inline int attention_decode_chunk_count(int n_seqs, int n_heads, int span) {
    const long long head_units = (long long)n_seqs * n_heads;
    const long long wanted =
        (DECODE_TARGET_BLOCKS * (long long)DECODE_MAX_GROUP + head_units - 1) / head_units;
    const long long most = (span + DECODE_MIN_CHUNK_KEYS - 1) / DECODE_MIN_CHUNK_KEYS;
    const long long chunks = wanted < most ? wanted : most;
    return chunks < 1 ? 1 : (int)chunks;
}

inline int attention_decode_supports(int head_dim) {
    return head_dim >= 1 && head_dim <= DECODE_HEAD_DIM_MAX;
}

// Workspace layout for n_chunks chunks and partial outputs out_width wide (D, or 2·D when
// differential): stats [n_seqs, H, n_chunks, 2] = (m, l), then o [n_seqs, H, n_chunks, out_width].
inline size_t attention_decode_partials_bytes(int n_seqs, int n_heads, int n_chunks,
                                              int out_width) {
    return (size_t)n_seqs * n_heads * n_chunks * (2 + (size_t)out_width) * sizeof(float);
}

// Scratch for any decode call of these shapes covering at most n_ctx keys, standard or
// differential (the chunk count grows with the span, so n_ctx bounds it).
inline size_t attention_decode_workspace_bytes(int n_seqs, int n_heads, int head_dim, int n_ctx) {
    return attention_decode_partials_bytes(
        n_seqs, n_heads, attention_decode_chunk_count(n_seqs, n_heads, n_ctx), 2 * head_dim);
}

// ---- device helpers -----------------------------------------------------------------------------

// Scores are kept in base 2 (exp2f is one instruction): s·log2(e) with the max taken likewise.
constexpr float DECODE_LOG2E = 1.4426950408889634f;

struct alignas(16) decode_bytes16 {
    uint32_t word[4];
};

// dst = the E elements at src, in one 16-byte load when they fill 16 bytes; zeros when !live
// (cache rows past the length hold arbitrary values, even NaN: they are never read).
template <typename T, int E>
__device__ __forceinline__ void decode_load(T (&dst)[E], const T *src, bool live) {
    if constexpr (E * sizeof(T) == 16) {
        decode_bytes16 raw = {{0u, 0u, 0u, 0u}};
        if (live) raw = *reinterpret_cast<const decode_bytes16 *>(src);
        memcpy(dst, &raw, 16);
    } else {
#pragma unroll
        for (int e = 0; e < E; e++) dst[e] = live ? src[e] : ci_from_float<T>(0.0f);
    }
}

__device__ __forceinline__ float decode_warp_max(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, offset));
    return x;
}
__device__ __forceinline__ float decode_warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffff, x, offset);
    return x;
}

// Keys [*begin, *end) of chunk `chunk` for a query that sees n_keys keys (empty past the length).
__device__ __forceinline__ void decode_chunk_keys(int n_keys, int chunk, int n_chunks,
                                                  int min_chunk_keys, int *begin, int *end) {
    int chunk_keys = (n_keys + n_chunks - 1) / n_chunks;
    if (chunk_keys < min_chunk_keys) chunk_keys = min_chunk_keys;
    const long long b = (long long)chunk * chunk_keys, e = b + chunk_keys;
    *begin = b < n_keys ? (int)b : n_keys;
    *end = e < n_keys ? (int)e : n_keys;
}

// ---- kernel 1: one chunk of keys of one KV head (or head pair) --------------------------------

// Shared memory of a split block (floats): the running max, sum and last rescale of each head,
// then one area used first for a tile's scores [HEADS][tile_keys] and at the end for the warps'
// partial outputs [DECODE_WARPS][HEADS][out_width].
inline size_t decode_split_shared_bytes(int heads, int tile_keys, int out_width) {
    const size_t scores = (size_t)heads * tile_keys,
                 partials = (size_t)DECODE_WARPS * heads * out_width;
    return (3 * (size_t)heads + (scores > partials ? scores : partials)) * sizeof(float);
}

// Keys each thread of a split block loads at once (per tile): DECODE_LOAD_BYTES of K rows, halved
// when the accumulators already take 64 registers, so that a GQA group of 8 stays unspilled.
template <typename T, int E, int VPT, int HEADS, bool DIFF>
__device__ __host__ constexpr int decode_unroll() {
    constexpr int key_bytes = (DIFF ? 2 : 1) * VPT * E * (int)sizeof(T);
    constexpr int by_bytes = DECODE_LOAD_BYTES / key_bytes < 1 ? 1 : DECODE_LOAD_BYTES / key_bytes;
    constexpr int accumulators = HEADS * (DIFF ? 2 : 1) * VPT * E;
    return accumulators >= 64 && by_bytes > 1 ? by_bytes / 2 : by_bytes;
}

// T: cache dtype. E: elements per load. VPT: vectors (loads) per lane of one row, so that
// lanes_per_key · VPT · E ≥ head_dim. HEADS: query heads of the block (GQA group slice, or the
// pair when DIFF). Grid: x = head unit (KV head × group slice, or pair), y = chunk, z = sequence;
// the head unit varies fastest so that blocks that share K/V rows (slices of one group, pairs with
// a common KV head) run side by side and find them in L2.
template <typename T, int E, int VPT, int HEADS, bool DIFF, bool PAGED>
__global__ void __launch_bounds__(DECODE_THREADS)
    attention_decode_split_kernel(const attention_params p, int n_chunks, int min_chunk_keys,
                                  int lanes_per_key, int group_slices) {
    constexpr int K_ROWS = DIFF ? 2 : 1; // K rows per key: one per head when differential
    constexpr int V_ROWS = DIFF ? 2 : 1; // V rows per key: Vcat_p = [V_kv(p) ‖ V_kv(p+P)]
    constexpr int UNROLL = decode_unroll<T, E, VPT, HEADS, DIFF>();
    const int D = p.head_dim, H = p.n_heads, G = p.n_kv_heads, group = H / G;
    const int n_vectors = D / E, out_width = V_ROWS * D;
    const int unit = blockIdx.x, chunk = blockIdx.y, seq = blockIdx.z;

    // Which query heads this block serves (head_of(i), i < HEADS), which K row head i reads and
    // which V rows all of them read: the pair (p, p + P) when differential, else heads
    // first_head .. of KV head `kv` (the group's last slice may hold fewer than HEADS).
    const int kv = DIFF ? 0 : unit / group_slices;
    const int first_head = DIFF ? unit : kv * group + (unit % group_slices) * HEADS;
    auto head_of = [&](int i) { return DIFF ? first_head + i * (H / 2) : first_head + i; };
    auto head_live = [&](int i) { return DIFF || first_head + i < (kv + 1) * group; };
    auto kv_of_row = [&](int r) { return DIFF ? head_of(r) / group : kv; };

    // The clamp keeps a bad recorded position inside the cache instead of reading past it (as
    // sdpa and flash do); a valid one is at most n_ctx − 1.
    const int query_row = attention_seq_first_row(p, seq); // its one query
    int n_keys = attention_seq_pos0(p, seq) + 1;
    if (n_keys > p.n_ctx) n_keys = p.n_ctx;
    int key_begin, key_end;
    decode_chunk_keys(n_keys, chunk, n_chunks, min_chunk_keys, &key_begin, &key_end);

    float *stats = p.workspace; // [n_seqs, H, n_chunks, 2]
    float *partial_out = p.workspace + (size_t)p.n_seqs * H * n_chunks * 2;
    auto partial_index = [&](int h) { return ((size_t)seq * H + h) * n_chunks + chunk; };

    if (key_begin >= key_end) { // past this sequence's length: the whole block returns together
        if (threadIdx.x < HEADS && head_live(threadIdx.x)) {
            float *ml = stats + 2 * partial_index(head_of(threadIdx.x));
            ml[0] = -INFINITY, ml[1] = 0.0f;
        }
        return;
    }

    CI_DYNAMIC_SHARED(float, shared);
    float *run_max = shared, *run_sum = shared + HEADS, *rescale = shared + 2 * HEADS;
    float *scores = shared + 3 * HEADS; // [HEADS][tile_keys], then [WARPS][HEADS][out_width]
    if (threadIdx.x < HEADS) run_max[threadIdx.x] = -INFINITY, run_sum[threadIdx.x] = 0.0f;

    // This thread's part of a row: vectors sub, sub + lanes_per_key, ... of key slot `slot`.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int sub = threadIdx.x % lanes_per_key, slot = threadIdx.x / lanes_per_key;
    const int n_slots = DECODE_THREADS / lanes_per_key, tile_keys = n_slots * UNROLL;
    bool vector_live[VPT];
#pragma unroll
    for (int j = 0; j < VPT; j++) vector_live[j] = sub + j * lanes_per_key < n_vectors;

    // The queries' pieces, pre-scaled so that a dot product is the score in base 2.
    float q[HEADS][VPT][E];
    const float q_scale = p.scale * DECODE_LOG2E;
#pragma unroll
    for (int i = 0; i < HEADS; i++) {
        const float *q_row = p.q + ((size_t)query_row * H + head_of(i)) * D;
#pragma unroll
        for (int j = 0; j < VPT; j++)
#pragma unroll
            for (int e = 0; e < E; e++)
                q[i][j][e] = head_live(i) && vector_live[j]
                                 ? q_row[(sub + j * lanes_per_key) * E + e] * q_scale
                                 : 0.0f;
    }

    float acc[HEADS][V_ROWS][VPT][E];
#pragma unroll
    for (int i = 0; i < HEADS; i++)
#pragma unroll
        for (int r = 0; r < V_ROWS; r++)
#pragma unroll
            for (int j = 0; j < VPT; j++)
#pragma unroll
                for (int e = 0; e < E; e++) acc[i][r][j][e] = 0.0f;

    const T *k_cache = static_cast<const T *>(p.k_cache);
    const T *v_cache = static_cast<const T *>(p.v_cache);
    // Element offset of (cache row, kv head, vector j of this lane) in a cache [rows, G, D]; the
    // row of a key is attention_cache_row's (contiguous [n_seqs, n_ctx] or paged).
    auto cache_offset = [&](int64_t row, int kv, int j) {
        return ((size_t)row * G + kv) * D + (size_t)(sub + j * lanes_per_key) * E;
    };
    // This thread's pieces of the tile's keys from one cache (K or V), rows [ROWS] of each key
    // (row r of kv head kv_of_row(r)), every load issued before any is used; past key_end or the
    // row's end, zeros (and a paged key past the end never looks up its block).
    auto load_tile = [&](auto &dst, const T *cache, int tile) {
        constexpr int ROWS = sizeof(dst[0]) / sizeof(dst[0][0]);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int key = tile + u * n_slots + slot;
            const bool key_live = key < key_end;
            const int64_t row = key_live ? attention_cache_row<PAGED>(p, seq, key) : 0;
#pragma unroll
            for (int r = 0; r < ROWS; r++)
#pragma unroll
                for (int j = 0; j < VPT; j++)
                    decode_load<T, E>(dst[u][r][j], cache + cache_offset(row, kv_of_row(r), j),
                                      key_live && vector_live[j]);
        }
    };

    for (int tile = key_begin; tile < key_end; tile += tile_keys) {
        // 1. Scores of the tile's keys: all loads first, then the dot products, each summed over
        //    the lanes that share a row (a butterfly, so that every lane holds it).
        T k[UNROLL][K_ROWS][VPT][E];
        load_tile(k, k_cache, tile);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const bool key_live = tile + u * n_slots + slot < key_end;
#pragma unroll
            for (int i = 0; i < HEADS; i++) {
                const int r = DIFF ? i : 0;
                float dot = 0.0f;
#pragma unroll
                for (int j = 0; j < VPT; j++)
#pragma unroll
                    for (int e = 0; e < E; e++) dot += q[i][j][e] * ci_to_float(k[u][r][j][e]);
                for (int offset = lanes_per_key / 2; offset > 0; offset >>= 1)
                    dot += __shfl_xor_sync(0xffffffff, dot, offset);
                if (sub == 0)
                    scores[i * tile_keys + u * n_slots + slot] = key_live ? dot : -INFINITY;
            }
        }
        __syncthreads();

        // 2. Online softmax across tiles, one warp per head: the new max, the tile's weights
        //    p = 2^(s − max) in place of the scores, the running sum rescaled. The tile holds at
        //    least one live key, so the new max is finite and no (−inf) − (−inf) arises.
        for (int i = warp; i < HEADS; i += DECODE_WARPS) {
            float *tile_scores = scores + i * tile_keys;
            float tile_max = -INFINITY;
            for (int t = lane; t < tile_keys; t += 32) tile_max = fmaxf(tile_max, tile_scores[t]);
            const float old_max = run_max[i];
            const float new_max = fmaxf(old_max, decode_warp_max(tile_max));
            float tile_sum = 0.0f;
            for (int t = lane; t < tile_keys; t += 32) {
                const float weight = exp2f(tile_scores[t] - new_max); // 0 for masked keys
                tile_scores[t] = weight;
                tile_sum += weight;
            }
            tile_sum = decode_warp_sum(tile_sum);
            if (lane == 0) {
                rescale[i] = exp2f(old_max - new_max); // 0 on the first tile (old max −inf)
                run_sum[i] = run_sum[i] * rescale[i] + tile_sum;
                run_max[i] = new_max;
            }
        }
        __syncthreads();

        // 3. P·V into the registers: rescale to the new max, then add this thread's keys.
        T v[UNROLL][V_ROWS][VPT][E];
        load_tile(v, v_cache, tile);
#pragma unroll
        for (int i = 0; i < HEADS; i++) {
            const float scale = rescale[i];
#pragma unroll
            for (int r = 0; r < V_ROWS; r++)
#pragma unroll
                for (int j = 0; j < VPT; j++)
#pragma unroll
                    for (int e = 0; e < E; e++) acc[i][r][j][e] *= scale;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
#pragma unroll
            for (int i = 0; i < HEADS; i++) {
                const float weight = scores[i * tile_keys + u * n_slots + slot];
#pragma unroll
                for (int r = 0; r < V_ROWS; r++)
#pragma unroll
                    for (int j = 0; j < VPT; j++)
#pragma unroll
                        for (int e = 0; e < E; e++)
                            acc[i][r][j][e] += weight * ci_to_float(v[u][r][j][e]);
            }
        }
        __syncthreads(); // the next tile overwrites the scores
    }

    // Sum the key slots' outputs: first the slots of a warp (lanes that differ in the bits above
    // lanes_per_key), then the warps through shared memory.
#pragma unroll
    for (int i = 0; i < HEADS; i++)
#pragma unroll
        for (int r = 0; r < V_ROWS; r++)
#pragma unroll
            for (int j = 0; j < VPT; j++)
#pragma unroll
                for (int e = 0; e < E; e++)
                    for (int offset = lanes_per_key; offset < 32; offset <<= 1)
                        acc[i][r][j][e] += __shfl_xor_sync(0xffffffff, acc[i][r][j][e], offset);
    float *warp_out = scores; // [DECODE_WARPS][HEADS][out_width]; the tiles are done
    if (lane < lanes_per_key) {
#pragma unroll
        for (int i = 0; i < HEADS; i++)
#pragma unroll
            for (int r = 0; r < V_ROWS; r++)
#pragma unroll
                for (int j = 0; j < VPT; j++)
                    if (vector_live[j])
#pragma unroll
                        for (int e = 0; e < E; e++)
                            warp_out[(warp * HEADS + i) * out_width + r * D +
                                     (sub + j * lanes_per_key) * E + e] = acc[i][r][j][e];
    }
    __syncthreads();
    for (int index = threadIdx.x; index < HEADS * out_width; index += DECODE_THREADS) {
        const int i = index / out_width, column = index % out_width;
        if (!head_live(i)) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < DECODE_WARPS; w++)
            sum += warp_out[(w * HEADS + i) * out_width + column];
        partial_out[partial_index(head_of(i)) * out_width + column] = sum;
    }
    if (threadIdx.x < HEADS && head_live(threadIdx.x)) {
        float *ml = stats + 2 * partial_index(head_of(threadIdx.x));
        ml[0] = run_max[threadIdx.x], ml[1] = run_sum[threadIdx.x];
    }
}

// ---- kernel 2: combine the chunks ---------------------------------------------------------------

// Column `column` of query head h's output over all chunks: Σ 2^(m_c − M)·o_c / Σ 2^(m_c − M)·l_c
// with M the largest m_c, over the chunks that saw keys (l_c > 0; the others' o_c is never read).
__device__ __forceinline__ float decode_combine(const attention_params &p, int n_chunks,
                                                int out_width, int seq, int h, int column) {
    const size_t first = ((size_t)seq * p.n_heads + h) * n_chunks;
    const float *ml = p.workspace + 2 * first;
    const float *o =
        p.workspace + (size_t)p.n_seqs * p.n_heads * n_chunks * 2 + first * out_width + column;
    float max_score = -INFINITY;
    for (int c = 0; c < n_chunks; c++)
        if (ml[2 * c + 1] > 0.0f) max_score = fmaxf(max_score, ml[2 * c]);
    float sum = 0.0f, out = 0.0f;
    for (int c = 0; c < n_chunks; c++) {
        if (!(ml[2 * c + 1] > 0.0f)) continue;
        const float weight = exp2f(ml[2 * c] - max_score);
        sum += weight * ml[2 * c + 1];
        out += weight * o[(size_t)c * out_width];
    }
    return sum > 0.0f ? out / sum : 0.0f; // sum > 0 always: key 0 is in chunk 0
}

// Grid (head, sequence), or (pair, sequence) when DIFF; one thread per output column (D, or 2·D
// when DIFF), blockDim a multiple of 32.
template <bool DIFF>
__global__ void attention_decode_reduce_kernel(const attention_params p, int n_chunks) {
    const int D = p.head_dim, H = p.n_heads, seq = blockIdx.y, column = threadIdx.x;
    const size_t out_row = (size_t)attention_seq_first_row(p, seq); // the sequence's one query
    if constexpr (!DIFF) {
        const int h = blockIdx.x;
        if (column < D)
            p.out[(out_row * H + h) * D + column] = decode_combine(p, n_chunks, D, seq, h, column);
    } else {
        // Y_p = (1 − λ_init)·O_p / sqrt(mean over 2D of O_p² + eps), O_p = O1 − λ·O2 (each over
        // Vcat_p), into columns [2pD, 2(p+1)D) of the output row.
        const int pair = blockIdx.x, width = 2 * D;
        float o = 0.0f;
        if (column < width) {
            const float o1 = decode_combine(p, n_chunks, width, seq, pair, column);
            const float o2 = decode_combine(p, n_chunks, width, seq, pair + H / 2, column);
            o = o1 - p.lambda * o2;
        }
        __shared__ float warp_squares[DECODE_HEAD_DIM_MAX * 2 / 32];
        const float squares = decode_warp_sum(o * o);
        if (threadIdx.x % 32 == 0) warp_squares[threadIdx.x / 32] = squares;
        __syncthreads();
        float sum_squares = 0.0f;
        for (int w = 0; w < (int)(blockDim.x / 32); w++) sum_squares += warp_squares[w];
        const float norm = (1.0f - p.lambda_init) * rsqrtf(sum_squares / (float)width + p.eps);
        if (column < width) p.out[out_row * H * D + (size_t)pair * width + column] = o * norm;
    }
}

// ---- launchers ----------------------------------------------------------------------------------

template <typename T, int E, int VPT, int HEADS, bool DIFF, bool PAGED>
int attention_decode_launch_split(const attention_params &p, cudaStream_t stream, int n_chunks,
                                  int min_chunk_keys, int n_units, int group_slices) {
    const int n_vectors = p.head_dim / E;
    const int lanes_needed = (n_vectors + VPT - 1) / VPT;
    int lanes_per_key = 1;
    while (lanes_per_key < lanes_needed) lanes_per_key *= 2; // ≤ 32 as VPT covers D ≤ 256
    const int tile_keys = DECODE_THREADS / lanes_per_key * decode_unroll<T, E, VPT, HEADS, DIFF>();
    const size_t shared_bytes =
        decode_split_shared_bytes(HEADS, tile_keys, (DIFF ? 2 : 1) * p.head_dim);
    auto kernel = attention_decode_split_kernel<T, E, VPT, HEADS, DIFF, PAGED>;
    ci_allow_dynamic_shared(kernel, shared_bytes);
    CI_LAUNCH(kernel, dim3(n_units, n_chunks, p.n_seqs), dim3(DECODE_THREADS), shared_bytes, stream,
              p, n_chunks, min_chunk_keys, lanes_per_key, group_slices);
    return 0;
}

// The block's head unit: the pair when differential, else up to DECODE_MAX_GROUP heads of one
// GQA group (the smallest power of two that holds the group, so that g = 1, 2, 4 waste nothing).
template <typename T, int E, int VPT, bool PAGED>
int attention_decode_launch_heads(const attention_params &p, cudaStream_t stream, int n_chunks,
                                  int min_chunk_keys) {
    if (p.differential)
        return attention_decode_launch_split<T, E, VPT, 2, true, PAGED>(
            p, stream, n_chunks, min_chunk_keys, p.n_heads / 2, 1);
    const int group = p.n_heads / p.n_kv_heads;
    auto launch = [&](auto heads_constant) {
        constexpr int HEADS = decltype(heads_constant)::value;
        const int slices = (group + HEADS - 1) / HEADS;
        return attention_decode_launch_split<T, E, VPT, HEADS, false, PAGED>(
            p, stream, n_chunks, min_chunk_keys, p.n_kv_heads * slices, slices);
    };
    if (group == 1) return launch(std::integral_constant<int, 1>());
    if (group == 2) return launch(std::integral_constant<int, 2>());
    if (group <= 4) return launch(std::integral_constant<int, 4>());
    return launch(std::integral_constant<int, DECODE_MAX_GROUP>());
}

// Both kernels, with the chunking chosen by the caller (tests use small chunks to get many of them
// on short caches): n_chunks chunks of at least min_chunk_keys keys. The workspace must hold
// attention_decode_partials_bytes(n_seqs, n_heads, n_chunks, D or 2·D). PAGED: a ragged step over
// a paged pool (attention_params) whose every sequence has one row.
template <typename T, bool PAGED = false>
int attention_decode_launch_chunked(const attention_params &p, cudaStream_t stream, int n_chunks,
                                    int min_chunk_keys) {
    if (p.n_tokens != 1 || !attention_decode_supports(p.head_dim) || p.n_kv_heads < 1 ||
        p.n_heads % p.n_kv_heads != 0 || (p.differential && p.n_heads % 2 != 0) || n_chunks < 1 ||
        min_chunk_keys < 1 || n_chunks > 65535 || p.n_seqs < 1 || p.n_seqs > 65535)
        return 1; // n_chunks and n_seqs are grid y and z: at most 65535
    const int out_width = (p.differential ? 2 : 1) * p.head_dim;
    const size_t needed = attention_decode_partials_bytes(p.n_seqs, p.n_heads, n_chunks, out_width);
    if (p.workspace == nullptr || p.workspace_bytes < needed) {
        fprintf(
            stderr,
            "cinfer: %s:%d: attention decode needs %zu workspace bytes for %d chunks, has %zu\n",
            __FILE__, __LINE__, needed, n_chunks, p.workspace_bytes);
        abort(); // a caller's sizing bug (attention_decode_workspace_bytes), not a user's input
    }
    // 16-byte loads when a row is a whole number of them (and the caches are aligned, as
    // allocations are); otherwise one element per load, for odd head dims.
    constexpr int E16 = 16 / sizeof(T);
    const bool aligned = (uintptr_t)p.k_cache % 16 == 0 && (uintptr_t)p.v_cache % 16 == 0;
    if (p.head_dim % E16 == 0 && aligned)
        attention_decode_launch_heads<T, E16, DECODE_HEAD_DIM_MAX / E16 / 32, PAGED>(
            p, stream, n_chunks, min_chunk_keys);
    else
        attention_decode_launch_heads<T, 1, DECODE_HEAD_DIM_MAX / 32, PAGED>(p, stream, n_chunks,
                                                                             min_chunk_keys);

    const int reduce_threads = (out_width + 31) / 32 * 32;
    if (p.differential)
        CI_LAUNCH(attention_decode_reduce_kernel<true>, dim3(p.n_heads / 2, p.n_seqs),
                  dim3(reduce_threads), 0, stream, p, n_chunks);
    else
        CI_LAUNCH(attention_decode_reduce_kernel<false>, dim3(p.n_heads, p.n_seqs),
                  dim3(reduce_threads), 0, stream, p, n_chunks);
    return 0;
}

// Runs the split kernel, then the reduce kernel, on `stream`. n_tokens must be 1 (returns 1
// otherwise, and for a head_dim over DECODE_HEAD_DIM_MAX). `span`: the most keys any sequence
// may see, which sizes the chunking (a ragged step passes the bound it was given on the host,
// since its lengths are only on the device); 0 derives it from the positions as below.
template <typename T, bool PAGED = false>
int attention_decode_launch(const attention_params &p, cudaStream_t stream, int span = 0) {
    const bool recorded = p.pos0.device != nullptr || p.seq_pos0 != nullptr;
    if (span <= 0) span = recorded ? p.n_ctx : p.pos0.host + 1;
    const int n_chunks = attention_decode_chunk_count(p.n_seqs, p.n_heads, span);
    return attention_decode_launch_chunked<T, PAGED>(p, stream, n_chunks, DECODE_MIN_CHUNK_KEYS);
}

#endif
