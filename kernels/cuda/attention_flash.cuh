// FlashAttention-2-style prefill attention over the KV cache, standard and differential (one pass).
// defines: attention_flash_launch<T>, attention_flash_supports
//
// One block = (query block of BR rows, query head or head pair, sequence). The query block is
// read once into shared memory; K/V tiles of BC keys stream through shared memory in two stages
// (tile j+1 is copied by cp.async while tile j is computed); the softmax is online (a running
// row max and row sum per query row, the accumulator rescaled when the max grows), so neither a
// score matrix nor a second pass exists. Causal: a block's key range ends at the limit of its last
// real query row, so tiles wholly past it are never loaded; tiles that cross some row's limit
// are masked per element. Rows past n_tokens (in the last query block) are computed on zero
// queries and never written.
//
//   T = __nv_bfloat16 / __half: tensor cores (mma.sync m16n8k16, F32 accumulation). 4 warps per
//     query head, 16 query rows each (the mma's M) so BR = 64. Q (F32 after RoPE) is rounded to T
//     when the block loads it; S = Q·Kᵀ from ldmatrix fragments (K's [key][d] rows are B in "col"
//     layout: ldmatrix without .trans); online softmax in F32 on S's accumulator fragments (a row
//     lives in the 4 lanes of a quad: max and sum by __shfl_xor_sync 1, 2); P rounded to T and
//     reused from registers as the A fragment of P·V (S's C layout is A's layout: the FA2 trick);
//     V by ldmatrix .trans. Q is re-read from shared memory by ldmatrix for every tile (FA2's
//     default) rather than held in registers: it costs D/4 ldmatrix per tile and frees 32
//     registers per thread at D = 128, which the differential kernel's 2D-wide accumulator needs.
//   T = float: a SIMT variant with the same blocks, tiles and pipeline: 4 threads per query row
//     (a quad, so the same shuffles), BR = 32; each thread scores every 4th key of a tile, the
//     probabilities go through shared memory, each thread accumulates every 4th output column.
//
// Tiles. BC = 64 keys: S per warp is then 16×64 = 32 F32 registers per thread, the accumulator
// D/2 (64 at D = 128); per block K and V take 2 stages × 64 × (D + 8) × 2 bytes each, 34 KiB at
// D = 128, so Q + K + V = 85 KiB and two blocks fit an SM (sm_80: 164 KiB, sm_90: 228 KiB).
// The differential kernel holds two heads (8 warps) and two V halves: at D = 128 it takes BC = 32
// so that its 102 KiB fit sm_80's 163 KiB per block (BC = 64 would need 170 KiB).
// head_dim is a compile-time D_PAD ∈ {16, 32, 64, 128} with runtime head_dim ≤ D_PAD: Q and K
// columns past head_dim are zero in shared memory (scores stay exact), V's are zero too (no NaN
// from arbitrary bytes), and output columns past head_dim are never written.
//
// Bank conflicts: shared rows are padded by 16 bytes (STRIDE = D_PAD + 8 elements of 2 bytes).
// An ldmatrix phase reads 8 rows of 16 bytes; with a row pitch of 2·D_PAD + 16 bytes the 8 rows
// fall on 8 distinct 16-byte bank groups of the 128-byte bank window for every D_PAD here (pitch
// mod 128 = 48, 80, 16, 16 bytes), so ldmatrix and the cp.async stores are conflict-free.
// Padding rather than an XOR swizzle: one rule, plain indexing, and the cost is 6..33 % more
// shared memory. The F32 tiles pad by 4 floats (16 bytes, keeping cp.async's alignment): the 4
// keys a quad reads at once, and the 8 query rows of a warp, land on distinct banks.
//
// Loads: K and V rows are 16-byte cp.async copies when head_dim · sizeof(T) is a multiple of 16
// and the caches are 16-byte aligned; otherwise (head_dim 4 or 12 in BF16) plain element copies
// into the same stage (the structure stays; the overlap is lost for those toy shapes).
//
// Differential attention, one pass per head pair p = (p, p + P): the block holds both heads'
// query blocks; warps 0..3 compute head p, warps 4..7 head p + P, each against its own K tile
// (K_kv(p), K_kv(p+P): one buffer when they are the same KV head) and both against the V tiles
// of both halves of Vcat_p = [V_kv(p) ‖ V_kv(p+P)] (2·D accumulator columns per warp). Epilogue:
// warps 4..7 leave O2/l2 in shared memory (over the K/V stages, free by then), and warps 0..3
// write (1 − lambda_init) · (O1/l1 − lambda·O2/l2) / sqrt(mean over 2·head_dim + eps) once.
//
// Bytes of K and V read per head pair and query block (S keys, head_dim D, e bytes per element;
// both kernels tile the queries, so both counts repeat per query block alike; L2 hits ignored):
//   this kernel:  K_kv(p) + K_kv(p+P) + V_kv(p) + V_kv(p+P)          = 4·S·D·e
//                 (kv(p) = kv(p+P), e.g. one KV head: K once, V once  = 2·S·D·e)
//   transformers' flash path: two flash calls, one per V half (V1 = V_kv(p), V2 = V_kv(p+P)
//   repeated over both halves of the heads), each call running heads p and p + P, each head
//   reading its K and that call's V half: 2 calls × 2 heads × (S·D·e + S·D·e) = 8·S·D·e,
//   plus materializing each V half twice (value_states.chunk(2, dim=heads).repeat(1, 1, 2, 1)),
//   and writing and re-reading two [T, H, D] outputs for the concat and the group norm.
//   So half the K/V traffic (a quarter with a shared KV head), and the output written once.
//
// ptxas (nvcc 13, -Xptxas -v; registers per thread, spills in bytes; shared memory is dynamic,
// the configs' SHARED_BYTES):        sm_90                      sm_80
//   tensor cores, standard  D 128   171 regs, no spill, 85 KiB  166, none
//                           D 64    128, none, 45 KiB           129, none
//   tensor cores, diff      D 128   255, 16 B spill, 102 KiB    255, 4 B
//                           D 64    172, none, 90 KiB           208, none
//                           D 16    128, 28 B spill, 30 KiB     128, 24 B
//   SIMT F32, standard      D 128   140, none, 87 KiB           128, 12 B
//   SIMT F32, diff          D 128   128, 16 B spill, 103 KiB    178, none
//   (sm_90 SIMT standard D 32: 64 regs, 8 B spill.) The small spills are ptxas's own choice of
// a register cap for occupancy: with __launch_bounds__(THREADS, 1), sm_90's tensor-core diff
// D 16, SIMT D 32 and SIMT diff D 128 spill nothing at 139, 148 and 200 registers, and only the
// tensor-core diff D 128 still spills (16 B). Without a GPU to time either, the default stays.
#ifndef CINFER_ATTENTION_FLASH_CUH
#define CINFER_ATTENTION_FLASH_CUH

#include "attention_kernels.cuh"
#include "tensor_core.cuh"

// Loops over register arrays must unroll, or the arrays go to local memory; the host compiler of
// the emulator has no such pragma (and no registers to lose).
#if defined(CINFER_CUDA_EMULATION)
#define FLASH_UNROLL
#else
#define FLASH_UNROLL _Pragma("unroll")
#endif

__device__ __forceinline__ int flash_imin(int a, int b) { return a < b ? a : b; }

// ---- what one block computes --------------------------------------------------------------------

// The part of a call one block covers, the same for every thread of the block (so the key loop
// and its barriers are uniform).
struct flash_block {
    int seq;       // sequence b
    int first_row; // its query rows: [first_row, first_row + n_rows) of q and out
    int n_rows;    // (attention_seq_first_row, attention_seq_rows)
    int t0;        // first query row of the block (of the sequence's n_rows)
    int pos0;      // position of the sequence's first new query
    int n_keys;    // keys the block's last real query row sees (its causal limit + 1), ≤ n_ctx
    int head[2];   // query heads: [0] the head or p, [1] p + P (differential)
    int kv[2];     // their KV heads, h / (H / G)
    int n_kv;      // distinct KV heads to load: 1, or 2 for a pair reading two KV heads
};

template <bool DIFF, int BR>
__device__ __forceinline__ flash_block flash_block_of(const attention_params &p) {
    flash_block blk;
    blk.seq = blockIdx.z;
    blk.t0 = blockIdx.x * BR;
    blk.first_row = attention_seq_first_row(p, blk.seq);
    blk.n_rows = attention_seq_rows(p, blk.seq);
    blk.pos0 = attention_seq_pos0(p, blk.seq);
    const int last_row = flash_imin(blk.t0 + BR, blk.n_rows); // rows past n_rows see no extra key
    // A ragged step's grid is sized for its longest sequence: a block past this sequence's rows
    // has no keys to see, and returns.
    blk.n_keys = blk.t0 < blk.n_rows ? flash_imin(blk.pos0 + last_row, p.n_ctx) : 0;
    const int group = p.n_heads / p.n_kv_heads;
    blk.head[0] = blockIdx.y;
    blk.head[1] = DIFF ? blockIdx.y + p.n_heads / 2 : blockIdx.y;
    blk.kv[0] = blk.head[0] / group;
    blk.kv[1] = blk.head[1] / group;
    blk.n_kv = blk.kv[1] != blk.kv[0] ? 2 : 1;
    return blk;
}

// Query rows [t0, t0 + BR) of one head, rounded to T, into a [BR][STRIDE] shared tile; columns
// ≥ head_dim and rows past the sequence's are zero.
template <typename T, int BR, int D_PAD, int STRIDE, int THREADS>
__device__ __forceinline__ void flash_load_queries(T *tile, const attention_params &p,
                                                   const flash_block &blk, int head, int tid) {
    const float *q = p.q + ((int64_t)blk.first_row * p.n_heads + head) * p.head_dim;
    const int64_t row_stride = (int64_t)p.n_heads * p.head_dim;
    for (int i = tid; i < BR * D_PAD; i += THREADS) {
        const int r = i / D_PAD, c = i % D_PAD, t = blk.t0 + r;
        const float x = (t < blk.n_rows && c < p.head_dim) ? q[t * row_stride + c] : 0.0f;
        tile[r * STRIDE + c] = ci_from_float<T>(x);
    }
}

// Cache rows [key0, key0 + BC) of one KV head into a [BC][STRIDE] shared tile; rows ≥ n_keys
// (another query's future, or bytes past the sequence's length) and columns ≥ head_dim are zero
// and nothing is read for them (nor, when PAGED, their block-table entries). With vector_loads,
// 16-byte cp.async copies that the caller commits and waits for; otherwise plain copies.
template <typename T, int BC, int D_PAD, int STRIDE, int THREADS, bool PAGED>
__device__ __forceinline__ void flash_load_keys(T *tile, const void *cache,
                                                const attention_params &p, const flash_block &blk,
                                                int kv_head, int key0, int vector_loads, int tid) {
    const int64_t row_stride = (int64_t)p.n_kv_heads * p.head_dim;
    const T *head_column = static_cast<const T *>(cache) + (int64_t)kv_head * p.head_dim;
    if (vector_loads) { // head_dim is a multiple of PER_COPY: a copy is all inside or all outside
        constexpr int PER_COPY = 16 / (int)sizeof(T), COPIES_PER_ROW = D_PAD / PER_COPY;
        for (int i = tid; i < BC * COPIES_PER_ROW; i += THREADS) {
            const int r = i / COPIES_PER_ROW, c = (i % COPIES_PER_ROW) * PER_COPY;
            const int key = key0 + r;
            const bool inside = key < blk.n_keys && c < p.head_dim;
            const T *src =
                inside ? head_column + attention_cache_row<PAGED>(p, blk.seq, key) * row_stride + c
                       : head_column;
            ci_cp_async_16(tile + r * STRIDE + c, src, inside ? 16 : 0);
        }
    } else {
        const T zero = ci_from_float<T>(0.0f);
        for (int i = tid; i < BC * D_PAD; i += THREADS) {
            const int r = i / D_PAD, c = i % D_PAD, key = key0 + r;
            tile[r * STRIDE + c] =
                (key < blk.n_keys && c < p.head_dim)
                    ? head_column[attention_cache_row<PAGED>(p, blk.seq, key) * row_stride + c]
                    : zero;
        }
    }
}

// K and V tiles `tile` of every distinct KV head of the block into one pipeline stage, laid out
// [HEADS][BC][STRIDE] each (the second head's slot unused when both heads share a KV head).
template <typename T, int BC, int D_PAD, int STRIDE, int THREADS, int HEADS, bool PAGED>
__device__ __forceinline__ void flash_load_stage(T *k_stage, T *v_stage, const attention_params &p,
                                                 const flash_block &blk, int tile, int vector_loads,
                                                 int tid) {
    FLASH_UNROLL
    for (int i = 0; i < HEADS; i++) {
        if (i >= blk.n_kv) break; // a pair on one KV head loads it once
        flash_load_keys<T, BC, D_PAD, STRIDE, THREADS, PAGED>(
            k_stage + i * BC * STRIDE, p.k_cache, p, blk, blk.kv[i], tile * BC, vector_loads, tid);
        flash_load_keys<T, BC, D_PAD, STRIDE, THREADS, PAGED>(
            v_stage + i * BC * STRIDE, p.v_cache, p, blk, blk.kv[i], tile * BC, vector_loads, tid);
    }
}

// Start tile j+1's copy (if any), then wait until tile j has landed and every thread sees it.
template <typename T, int BC, int D_PAD, int STRIDE, int THREADS, int HEADS, bool PAGED>
__device__ __forceinline__ void flash_next_tile(T *k_stages, T *v_stages, const attention_params &p,
                                                const flash_block &blk, int j, int n_tiles,
                                                int vector_loads, int tid) {
    constexpr int STAGE = HEADS * BC * STRIDE;
    if (j + 1 < n_tiles) {
        const int next = (j + 1) & 1;
        flash_load_stage<T, BC, D_PAD, STRIDE, THREADS, HEADS, PAGED>(
            k_stages + next * STAGE, v_stages + next * STAGE, p, blk, j + 1, vector_loads, tid);
        ci_cp_async_commit();
        ci_cp_async_wait<1>(); // all but the newest group: tile j is in
    } else {
        ci_cp_async_wait<0>();
    }
    __syncthreads();
}

// Query row `t`'s last visible key: its causal limit, and never past the block's keys (rows past
// n_tokens would otherwise see the zero-filled rows beyond them).
__device__ __forceinline__ int flash_row_limit(const flash_block &blk, int t) {
    return flash_imin(blk.pos0 + t, blk.n_keys - 1);
}

// The running max as the base of exp2: a row that has seen only masked keys keeps max −inf, and
// exp2(−inf − −inf) would be NaN; with base 0 its probabilities are exp2(−inf) = 0 instead.
__device__ __forceinline__ float flash_exp_base(float row_max) {
    return row_max == -INFINITY ? 0.0f : row_max;
}

// ---- tensor cores: T = __nv_bfloat16, __half ----------------------------------------------------

template <int D_PAD, bool DIFF> struct flash_tc_config {
    static constexpr int HEADS = DIFF ? 2 : 1;                  // query heads per block
    static constexpr int WARPS_PER_HEAD = 4;                    // 16 query rows each
    static constexpr int BR = 16 * WARPS_PER_HEAD;              // query rows per block
    static constexpr int BC = (DIFF && D_PAD == 128) ? 32 : 64; // keys per tile (see the top)
    static constexpr int THREADS = 32 * WARPS_PER_HEAD * HEADS;
    static constexpr int STRIDE = D_PAD + 8;      // elements per shared row (16-byte pad)
    static constexpr int O_WIDTH = HEADS * D_PAD; // accumulator columns: D, or Vcat's 2D
    static constexpr int Q_ELEMS = HEADS * BR * STRIDE;
    static constexpr int STAGE_ELEMS = HEADS * BC * STRIDE; // one stage of K (or of V)
    static constexpr int X_STRIDE = 2 * D_PAD + 4;          // floats per row of the O2 exchange
    static constexpr size_t TILE_BYTES = (size_t)(Q_ELEMS + 4 * STAGE_ELEMS) * 2;
    static constexpr size_t EXCHANGE_BYTES =
        (size_t)Q_ELEMS * 2 + (DIFF ? (size_t)BR * X_STRIDE * 4 : 0);
    static constexpr size_t SHARED_BYTES =
        TILE_BYTES > EXCHANGE_BYTES ? TILE_BYTES : EXCHANGE_BYTES;
};

template <typename T, int D_PAD, bool DIFF, bool PAGED>
__global__ void __launch_bounds__(flash_tc_config<D_PAD, DIFF>::THREADS)
    attention_flash_tc_kernel(const attention_params p, int vector_loads) {
    using C = flash_tc_config<D_PAD, DIFF>;
    constexpr int BR = C::BR, BC = C::BC, STRIDE = C::STRIDE, THREADS = C::THREADS;
    CI_DYNAMIC_SHARED(T, shared);
    T *q_tiles = shared;                // [HEADS][BR][STRIDE]
    T *k_stages = q_tiles + C::Q_ELEMS; // [2 stages][HEADS][BC][STRIDE]
    T *v_stages = k_stages + 2 * C::STAGE_ELEMS;

    const flash_block blk = flash_block_of<DIFF, BR>(p);
    if (blk.n_keys <= 0) return; // the whole block alike, before any barrier
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int role = warp / C::WARPS_PER_HEAD; // which head of the block this warp computes
    const int warp_row = (warp % C::WARPS_PER_HEAD) * 16;
    const int lane_row = lane / 4, quad = lane % 4; // C fragment: rows lane_row, lane_row + 8
    const int n_tiles = (blk.n_keys + BC - 1) / BC;

    FLASH_UNROLL
    for (int h = 0; h < C::HEADS; h++)
        flash_load_queries<T, BR, D_PAD, STRIDE, THREADS>(q_tiles + h * BR * STRIDE, p, blk,
                                                          blk.head[h], tid);
    flash_load_stage<T, BC, D_PAD, STRIDE, THREADS, C::HEADS, PAGED>(k_stages, v_stages, p, blk, 0,
                                                                     vector_loads, tid);
    ci_cp_async_commit();

    const T *q_warp = q_tiles + (role * BR + warp_row) * STRIDE;
    const int k_slot = (role == 1 && blk.n_kv == 2) ? 1 : 0; // this warp's K among the stage's
    const int v2_slot = blk.n_kv == 2 ? 1 : 0;               // Vcat's second half
    const float scale_log2 = p.scale * 1.44269504088896341f; // exp(x) = exp2(x · log2 e)
    float o[C::O_WIDTH / 8][4];
    FLASH_UNROLL
    for (int n = 0; n < C::O_WIDTH / 8; n++) {
        FLASH_UNROLL
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    }
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}; // this lane's part

    for (int j = 0; j < n_tiles; j++) {
        flash_next_tile<T, BC, D_PAD, STRIDE, THREADS, C::HEADS, PAGED>(
            k_stages, v_stages, p, blk, j, n_tiles, vector_loads, tid);
        const T *k_tile = k_stages + (j & 1) * C::STAGE_ELEMS + k_slot * BC * STRIDE;
        const T *v_tile = v_stages + (j & 1) * C::STAGE_ELEMS;

        // S = Q·Kᵀ: 16 rows × BC keys, as BC/8 accumulator fragments.
        float s[BC / 8][4];
        FLASH_UNROLL
        for (int n = 0; n < BC / 8; n++) {
            FLASH_UNROLL
            for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
        }
        FLASH_UNROLL
        for (int kk = 0; kk < D_PAD / 16; kk++) {
            uint32_t a[4]; // matrices: rows 0-7 | 8-15 × columns kk·16 + 0-7 | 8-15
            ci_ldmatrix_x4(a, q_warp + (lane % 16) * STRIDE + kk * 16 + (lane / 16) * 8);
            FLASH_UNROLL
            for (int n = 0; n < BC / 16; n++) {
                uint32_t b[4]; // keys n·16 + 0-7 (d lo, d hi), then keys n·16 + 8-15 (d lo, hi)
                ci_ldmatrix_x4(b, k_tile + (n * 16 + (lane / 16) * 8 + lane % 8) * STRIDE +
                                      kk * 16 + ((lane / 8) % 2) * 8);
                ci_mma_16816<T>(s[2 * n], a, b);
                ci_mma_16816<T>(s[2 * n + 1], a, b + 2);
            }
        }

        // Online softmax on the fragments; element e of s[n] is row lane_row + 8·(e / 2),
        // key j·BC + 8n + 2·quad + e % 2.
        const int key0 = j * BC;
        const int t_lane = blk.t0 + warp_row + lane_row;
        const bool crosses_limit = key0 + BC - 1 > blk.pos0 + blk.t0 || key0 + BC > blk.n_keys;
        FLASH_UNROLL
        for (int n = 0; n < BC / 8; n++) {
            FLASH_UNROLL
            for (int e = 0; e < 4; e++) {
                s[n][e] *= scale_log2;
                if (crosses_limit &&
                    key0 + 8 * n + 2 * quad + e % 2 > flash_row_limit(blk, t_lane + 8 * (e / 2)))
                    s[n][e] = -INFINITY;
            }
        }
        FLASH_UNROLL
        for (int r = 0; r < 2; r++) {
            float tile_max = -INFINITY;
            FLASH_UNROLL
            for (int n = 0; n < BC / 8; n++)
                tile_max = fmaxf(tile_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float new_max = fmaxf(row_max[r], tile_max);
            const float base = flash_exp_base(new_max);
            const float correction = exp2f(row_max[r] - base); // 0 on the first tile
            row_max[r] = new_max;
            row_sum[r] *= correction;
            FLASH_UNROLL
            for (int n = 0; n < C::O_WIDTH / 8; n++) {
                o[n][2 * r] *= correction;
                o[n][2 * r + 1] *= correction;
            }
            FLASH_UNROLL
            for (int n = 0; n < BC / 8; n++) {
                s[n][2 * r] = exp2f(s[n][2 * r] - base);
                s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - base);
                row_sum[r] += s[n][2 * r] + s[n][2 * r + 1]; // the quad's parts join at the end
            }
        }

        // O += P·V: P from registers as A fragments (16 keys = two S fragments), V by ldmatrix
        // .trans; for the differential kernel both halves of Vcat, side by side in o.
        FLASH_UNROLL
        for (int kk = 0; kk < BC / 16; kk++) {
            const uint32_t a[4] = {ci_pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                                   ci_pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                   ci_pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   ci_pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            FLASH_UNROLL
            for (int half = 0; half < C::HEADS; half++) {
                const T *v_half = v_tile + (half == 1 ? v2_slot : 0) * BC * STRIDE;
                FLASH_UNROLL
                for (int dn = 0; dn < D_PAD / 16; dn++) {
                    uint32_t b[4]; // keys 0-7 | 8-15 × columns dn·16 + 0-7, then + 8-15
                    ci_ldmatrix_x4_trans(
                        b, v_half + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * STRIDE + dn * 16 +
                               (lane / 16) * 8);
                    ci_mma_16816<T>(o[half * (D_PAD / 8) + 2 * dn], a, b);
                    ci_mma_16816<T>(o[half * (D_PAD / 8) + 2 * dn + 1], a, b + 2);
                }
            }
        }
        __syncthreads(); // every warp is done with this stage before tile j+2 overwrites it
    }

    float inv_sum[2];
    FLASH_UNROLL
    for (int r = 0; r < 2; r++) {
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
        row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
        inv_sum[r] = 1.0f / row_sum[r];
    }
    const int row0 = warp_row + lane_row; // of the block; the lane's rows are row0 and row0 + 8
    const int64_t row_stride = (int64_t)p.n_heads * p.head_dim; // of q and out

    if constexpr (!DIFF) {
        float *out = p.out + ((int64_t)blk.first_row * p.n_heads + blk.head[0]) * p.head_dim;
        FLASH_UNROLL
        for (int r = 0; r < 2; r++) {
            const int t = blk.t0 + row0 + 8 * r;
            if (t >= blk.n_rows) continue;
            FLASH_UNROLL
            for (int n = 0; n < D_PAD / 8; n++) {
                FLASH_UNROLL
                for (int c = 0; c < 2; c++) {
                    const int col = 8 * n + 2 * quad + c;
                    if (col < p.head_dim) out[t * row_stride + col] = o[n][2 * r + c] * inv_sum[r];
                }
            }
        }
    } else {
        // O2/l2 of head p + P to shared memory, over the K/V stages (every warp has left them).
        float *exchange = reinterpret_cast<float *>(k_stages); // [BR][X_STRIDE]
        if (role == 1) {
            FLASH_UNROLL
            for (int r = 0; r < 2; r++) {
                FLASH_UNROLL
                for (int n = 0; n < C::O_WIDTH / 8; n++) {
                    float *x = exchange + (row0 + 8 * r) * C::X_STRIDE + 8 * n + 2 * quad;
                    x[0] = o[n][2 * r] * inv_sum[r];
                    x[1] = o[n][2 * r + 1] * inv_sum[r];
                }
            }
        }
        __syncthreads();
        if (role == 0) {
            // o ← O1/l1 − lambda·O2/l2; columns past head_dim in either half are zero in both
            float sum_squares[2] = {0.0f, 0.0f};
            FLASH_UNROLL
            for (int r = 0; r < 2; r++) {
                FLASH_UNROLL
                for (int n = 0; n < C::O_WIDTH / 8; n++) {
                    const float *o2 = exchange + (row0 + 8 * r) * C::X_STRIDE + 8 * n + 2 * quad;
                    FLASH_UNROLL
                    for (int c = 0; c < 2; c++) {
                        const float x = o[n][2 * r + c] * inv_sum[r] - p.lambda * o2[c];
                        o[n][2 * r + c] = x;
                        sum_squares[r] += x * x;
                    }
                }
                sum_squares[r] += __shfl_xor_sync(0xffffffffu, sum_squares[r], 1);
                sum_squares[r] += __shfl_xor_sync(0xffffffffu, sum_squares[r], 2);
            }
            // the pair's 2·head_dim columns start at column 2·p·head_dim of the [H·D] row
            float *out =
                p.out + (int64_t)blk.first_row * row_stride + (int64_t)blk.head[0] * 2 * p.head_dim;
            FLASH_UNROLL
            for (int r = 0; r < 2; r++) {
                const int t = blk.t0 + row0 + 8 * r;
                if (t >= blk.n_rows) continue;
                const float norm = (1.0f - p.lambda_init) *
                                   rsqrtf(sum_squares[r] / (float)(2 * p.head_dim) + p.eps);
                FLASH_UNROLL
                for (int n = 0; n < C::O_WIDTH / 8; n++) {
                    FLASH_UNROLL
                    for (int c = 0; c < 2; c++) {
                        const int half = n / (D_PAD / 8), col = (8 * n + 2 * quad + c) % D_PAD;
                        if (col < p.head_dim)
                            out[t * row_stride + half * p.head_dim + col] = o[n][2 * r + c] * norm;
                    }
                }
            }
        }
    }
}

// ---- SIMT: T = float
// ------------------------------------------------------------------------------

// Same blocks, tiles and pipeline as the tensor-core kernel, in F32 with FMAs. A query row
// belongs to the 4 threads of a quad (lanes 4i .. 4i+3): for S, thread `part` of the quad scores
// keys part, part + 4, ... of the tile (a warp reads 4 consecutive K rows and 8 Q rows at once,
// distinct banks with the 4-float row pad); the row max and sum go across the quad by shuffles
// as in the tensor-core kernel; the probabilities go through shared memory to the row's 4
// threads, and thread `part` accumulates output columns part, part + 4, ... (a warp reads 4
// consecutive words of one V row: conflict-free). BR = 32 rows (128 threads per head); BC = 32
// keys, 16 for the differential kernel at D = 128 so that its 103 KiB fit sm_80.
template <int D_PAD, bool DIFF> struct flash_simt_config {
    static constexpr int HEADS = DIFF ? 2 : 1;
    static constexpr int BR = 32;
    static constexpr int BC = (DIFF && D_PAD == 128) ? 16 : 32;
    static constexpr int THREADS_PER_HEAD = 4 * BR;
    static constexpr int THREADS = THREADS_PER_HEAD * HEADS;
    static constexpr int STRIDE = D_PAD + 4; // floats per shared row (16-byte pad)
    static constexpr int P_STRIDE = BC + 1;  // probabilities: a warp's 8 rows on distinct banks
    static constexpr int O_WIDTH = HEADS * D_PAD;
    static constexpr int Q_ELEMS = HEADS * BR * STRIDE;
    static constexpr int STAGE_ELEMS = HEADS * BC * STRIDE;
    static constexpr int P_ELEMS = HEADS * BR * P_STRIDE;
    static constexpr int X_STRIDE = 2 * D_PAD + 4;
    static constexpr size_t TILE_BYTES = (size_t)(Q_ELEMS + 4 * STAGE_ELEMS + P_ELEMS) * 4;
    static constexpr size_t EXCHANGE_BYTES =
        (size_t)Q_ELEMS * 4 + (DIFF ? (size_t)BR * X_STRIDE * 4 : 0);
    static constexpr size_t SHARED_BYTES =
        TILE_BYTES > EXCHANGE_BYTES ? TILE_BYTES : EXCHANGE_BYTES;
};

template <int D_PAD, bool DIFF, bool PAGED>
__global__ void __launch_bounds__(flash_simt_config<D_PAD, DIFF>::THREADS)
    attention_flash_simt_kernel(const attention_params p, int vector_loads) {
    using C = flash_simt_config<D_PAD, DIFF>;
    constexpr int BR = C::BR, BC = C::BC, STRIDE = C::STRIDE, THREADS = C::THREADS;
    CI_DYNAMIC_SHARED(float, shared);
    float *q_tiles = shared;                // [HEADS][BR][STRIDE]
    float *k_stages = q_tiles + C::Q_ELEMS; // [2 stages][HEADS][BC][STRIDE]
    float *v_stages = k_stages + 2 * C::STAGE_ELEMS;
    float *probs = v_stages + 2 * C::STAGE_ELEMS; // [HEADS][BR][P_STRIDE]

    const flash_block blk = flash_block_of<DIFF, BR>(p);
    if (blk.n_keys <= 0) return; // the whole block alike, before any barrier
    const int tid = threadIdx.x;
    const int role = tid / C::THREADS_PER_HEAD; // which head of the block this thread computes
    const int row = (tid % C::THREADS_PER_HEAD) / 4, part = tid % 4;
    const int n_tiles = (blk.n_keys + BC - 1) / BC;

    FLASH_UNROLL
    for (int h = 0; h < C::HEADS; h++)
        flash_load_queries<float, BR, D_PAD, STRIDE, THREADS>(q_tiles + h * BR * STRIDE, p, blk,
                                                              blk.head[h], tid);
    flash_load_stage<float, BC, D_PAD, STRIDE, THREADS, C::HEADS, PAGED>(k_stages, v_stages, p, blk,
                                                                         0, vector_loads, tid);
    ci_cp_async_commit();

    const float *q_row = q_tiles + (role * BR + row) * STRIDE;
    float *p_row = probs + (role * BR + row) * C::P_STRIDE;
    const int k_slot = (role == 1 && blk.n_kv == 2) ? 1 : 0;
    const int v2_slot = blk.n_kv == 2 ? 1 : 0;
    const int t = blk.t0 + row, limit = flash_row_limit(blk, t);
    const float scale_log2 = p.scale * 1.44269504088896341f;
    float o[C::O_WIDTH / 4];
    FLASH_UNROLL
    for (int i = 0; i < C::O_WIDTH / 4; i++) o[i] = 0.0f;
    float row_max = -INFINITY, row_sum = 0.0f; // row_sum: this thread's keys only

    for (int j = 0; j < n_tiles; j++) {
        flash_next_tile<float, BC, D_PAD, STRIDE, THREADS, C::HEADS, PAGED>(
            k_stages, v_stages, p, blk, j, n_tiles, vector_loads, tid);
        const float *k_tile = k_stages + (j & 1) * C::STAGE_ELEMS + k_slot * BC * STRIDE;
        const float *v_tile = v_stages + (j & 1) * C::STAGE_ELEMS;

        float s[BC / 4]; // keys part + 4i of the tile
        float tile_max = -INFINITY;
        FLASH_UNROLL
        for (int i = 0; i < BC / 4; i++) {
            const float *k_row = k_tile + (part + 4 * i) * STRIDE;
            float dot = 0.0f;
            FLASH_UNROLL
            for (int d = 0; d < D_PAD; d++) dot += q_row[d] * k_row[d];
            s[i] = j * BC + part + 4 * i > limit ? -INFINITY : dot * scale_log2;
            tile_max = fmaxf(tile_max, s[i]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float new_max = fmaxf(row_max, tile_max);
        const float base = flash_exp_base(new_max);
        const float correction = exp2f(row_max - base);
        row_max = new_max;
        row_sum *= correction;
        FLASH_UNROLL
        for (int i = 0; i < C::O_WIDTH / 4; i++) o[i] *= correction;
        FLASH_UNROLL
        for (int i = 0; i < BC / 4; i++) {
            const float prob = exp2f(s[i] - base);
            row_sum += prob;
            p_row[part + 4 * i] = prob;
        }
        __syncthreads(); // the row's probabilities, from all 4 of its threads

        // O += P·V over Vcat's halves; column part + 4i of the accumulator
        FLASH_UNROLL
        for (int half = 0; half < C::HEADS; half++) {
            const float *v_half = v_tile + (half == 1 ? v2_slot : 0) * BC * STRIDE + part;
            for (int key = 0; key < BC; key++) {
                const float prob = p_row[key];
                FLASH_UNROLL
                for (int i = 0; i < D_PAD / 4; i++)
                    o[half * (D_PAD / 4) + i] += prob * v_half[key * STRIDE + 4 * i];
            }
        }
        __syncthreads(); // every thread is done with this stage and these probabilities
    }

    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
    const float inv_sum = 1.0f / row_sum;
    const int64_t row_stride = (int64_t)p.n_heads * p.head_dim; // of q and out

    if constexpr (!DIFF) {
        float *out = p.out + ((int64_t)blk.first_row * p.n_heads + blk.head[0]) * p.head_dim;
        if (t < blk.n_rows) {
            FLASH_UNROLL
            for (int i = 0; i < D_PAD / 4; i++) {
                const int col = part + 4 * i;
                if (col < p.head_dim) out[t * row_stride + col] = o[i] * inv_sum;
            }
        }
    } else {
        // O2/l2 of head p + P to shared memory over the K/V stages, as in the tensor-core kernel.
        float *exchange = k_stages; // [BR][X_STRIDE]
        if (role == 1) {
            FLASH_UNROLL
            for (int i = 0; i < C::O_WIDTH / 4; i++)
                exchange[row * C::X_STRIDE + part + 4 * i] = o[i] * inv_sum;
        }
        __syncthreads();
        if (role == 0) {
            float sum_squares = 0.0f;
            FLASH_UNROLL
            for (int i = 0; i < C::O_WIDTH / 4; i++) {
                o[i] = o[i] * inv_sum - p.lambda * exchange[row * C::X_STRIDE + part + 4 * i];
                sum_squares += o[i] * o[i];
            }
            sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, 1);
            sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, 2);
            const float norm =
                (1.0f - p.lambda_init) * rsqrtf(sum_squares / (float)(2 * p.head_dim) + p.eps);
            float *out =
                p.out + (int64_t)blk.first_row * row_stride + (int64_t)blk.head[0] * 2 * p.head_dim;
            if (t < blk.n_rows) {
                FLASH_UNROLL
                for (int i = 0; i < C::O_WIDTH / 4; i++) {
                    const int half = i / (D_PAD / 4), col = part + 4 * (i % (D_PAD / 4));
                    if (col < p.head_dim)
                        out[t * row_stride + half * p.head_dim + col] = o[i] * norm;
                }
            }
        }
    }
}

// ---- launch -------------------------------------------------------------------------------------

// Whether K and V rows can move as 16-byte copies: every row of a head starts 16-byte aligned.
template <typename T> static inline int flash_vector_loads(const attention_params &p) {
    const int per_copy = 16 / (int)sizeof(T);
    return p.head_dim % per_copy == 0 && (uintptr_t)p.k_cache % 16 == 0 &&
           (uintptr_t)p.v_cache % 16 == 0;
}

// Grid: (query blocks, heads or head pairs, sequences); every block has work (n_tokens is known
// on the host even in a recorded call: only the positions are not), except in a ragged step,
// whose blocks past a shorter sequence's rows return at once.
template <int BR, bool DIFF> static inline dim3 flash_grid(const attention_params &p) {
    return dim3((unsigned)((p.n_tokens + BR - 1) / BR),
                (unsigned)(DIFF ? p.n_heads / 2 : p.n_heads), (unsigned)p.n_seqs);
}

template <typename T, int D_PAD, bool DIFF, bool PAGED>
static inline int flash_tc_launch(const attention_params &p, cudaStream_t stream) {
    using C = flash_tc_config<D_PAD, DIFF>;
    auto kernel = attention_flash_tc_kernel<T, D_PAD, DIFF, PAGED>;
    ci_allow_dynamic_shared(kernel, C::SHARED_BYTES);
    const dim3 grid = flash_grid<C::BR, DIFF>(p);
    CI_LAUNCH(kernel, grid, C::THREADS, C::SHARED_BYTES, stream, p, flash_vector_loads<T>(p));
    return 0;
}

template <int D_PAD, bool DIFF, bool PAGED>
static inline int flash_simt_launch(const attention_params &p, cudaStream_t stream) {
    using C = flash_simt_config<D_PAD, DIFF>;
    auto kernel = attention_flash_simt_kernel<D_PAD, DIFF, PAGED>;
    ci_allow_dynamic_shared(kernel, C::SHARED_BYTES);
    const dim3 grid = flash_grid<C::BR, DIFF>(p);
    CI_LAUNCH(kernel, grid, C::THREADS, C::SHARED_BYTES, stream, p, flash_vector_loads<float>(p));
    return 0;
}

// BF16/F16 on tensor cores, F32 on the SIMT kernel, in the smallest D_PAD that holds head_dim.
template <typename T, int D_PAD, bool DIFF, bool PAGED>
static inline int flash_launch_kernel(const attention_params &p, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2)
        return flash_tc_launch<T, D_PAD, DIFF, PAGED>(p, stream);
    else
        return flash_simt_launch<D_PAD, DIFF, PAGED>(p, stream);
}

template <typename T, bool DIFF, bool PAGED>
static inline int flash_launch_padded(const attention_params &p, cudaStream_t stream) {
    if (p.head_dim <= 16) return flash_launch_kernel<T, 16, DIFF, PAGED>(p, stream);
    if (p.head_dim <= 32) return flash_launch_kernel<T, 32, DIFF, PAGED>(p, stream);
    if (p.head_dim <= 64) return flash_launch_kernel<T, 64, DIFF, PAGED>(p, stream);
    return flash_launch_kernel<T, 128, DIFF, PAGED>(p, stream);
}

// The head dims the kernels are built for: any head_dim ≤ 128 runs in the next D_PAD up (16, 32,
// 64, 128), for every cache dtype.
inline int attention_flash_supports(int head_dim) { return head_dim >= 1 && head_dim <= 128; }

// Dynamic shared memory a launch for this head_dim asks for (0 when unsupported): the load checks
// it against the device, since parts with 99 KiB per block (sm_86/sm_89) cannot run the largest.
template <bool DIFF> inline size_t flash_shared_bytes_for(int head_dim, int element_bytes) {
    const int d = head_dim;
    if (element_bytes == 2)
        return d <= 16   ? flash_tc_config<16, DIFF>::SHARED_BYTES
               : d <= 32 ? flash_tc_config<32, DIFF>::SHARED_BYTES
               : d <= 64 ? flash_tc_config<64, DIFF>::SHARED_BYTES
                         : flash_tc_config<128, DIFF>::SHARED_BYTES;
    return d <= 16   ? flash_simt_config<16, DIFF>::SHARED_BYTES
           : d <= 32 ? flash_simt_config<32, DIFF>::SHARED_BYTES
           : d <= 64 ? flash_simt_config<64, DIFF>::SHARED_BYTES
                     : flash_simt_config<128, DIFF>::SHARED_BYTES;
}
inline size_t attention_flash_shared_bytes(int head_dim, int differential, int element_bytes) {
    if (!attention_flash_supports(head_dim)) return 0;
    return differential ? flash_shared_bytes_for<true>(head_dim, element_bytes)
                        : flash_shared_bytes_for<false>(head_dim, element_bytes);
}

// Returns 1 for shapes it does not run: head_dim past 128, H not a multiple of G, an odd H for
// differential attention, or a grid past the GPU's limits (heads or pairs are grid y and sequences
// grid z: at most 65535 each). PAGED: a ragged step over a paged pool (attention_params), the grid
// sized for n_tokens = the most rows any sequence has.
template <typename T, bool PAGED = false>
int attention_flash_launch(const attention_params &p, cudaStream_t stream) {
    if (!attention_flash_supports(p.head_dim) || p.n_kv_heads <= 0 ||
        p.n_heads % p.n_kv_heads != 0 || (p.differential && p.n_heads % 2 != 0))
        return 1;
    if (p.n_seqs > 65535 || (p.differential ? p.n_heads / 2 : p.n_heads) > 65535) return 1;
    if (p.n_tokens <= 0 || p.n_seqs <= 0) return 0;
    return p.differential ? flash_launch_padded<T, true, PAGED>(p, stream)
                          : flash_launch_padded<T, false, PAGED>(p, stream);
}

#endif
