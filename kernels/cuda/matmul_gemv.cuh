// GEMV for decode: the linear layers of a step that carries few rows (1..8 tokens), in one launch
// for up to three projections of the same input (q/k/v, or gate/up), with no conversion kernel
// before it. For every segment s, row t < n_rows and output n < n_out_s:
//
//   out_s[t, n] = (accumulate ? out_s[t, n] : 0) + (Σ_k round_w(x[t, k]) · W_s[n, k] + bias_s[n])
//
// round_w rounds the F32 input to the weight dtype (to nearest even; the identity for F32 weights),
// as the cuBLAS path does (kernels/cuda/matmul.cu): both compute the same products and differ only
// in the order and rounding of the F32 sum. The bias is added to the F32 product, then the old
// output (torch's order for `x + linear(h)`).
//
// ---- Why this shape of kernel ------------------------------------------------------------------
// At batch 1 a decode step reads every weight once and does 2 FLOPs per weight element per row:
// it is bound by memory bandwidth (H100 3.35 TB/s, H200 4.8 TB/s over 132 SMs: about 13-18 bytes
// per SM per clock at 1.98 GHz), never by arithmetic. What the kernel must get right:
//
// 1. Bytes in flight. Little's law: 4.8 TB/s × ~0.7 µs of loaded DRAM latency ≈ 3.4 MB in flight,
//    ~25 KiB per SM. Every lane issues GEMV_LOADS = 8 loads of 16 bytes (ld.global.nc.v4) before
//    it uses any: 128 bytes per lane, 32 KiB per block of 256 threads; at 2 blocks per SM (the
//    register budget __launch_bounds__ asks for) 64 KiB per SM, twice Little's figure. Weights are
//    loaded with L1::no_allocate, since they are read once and would evict x from L1.
//
// 2. x traffic. Weights are read once, but x[t, k] is needed by every output row. The warps of a
//    block split K, not rows, so a block reads x once from L1/L2 for all of its R rows: x bytes
//    (F32) / weight bytes = T·4 / (R·sizeof(W)). BF16/F16: R = 8·tiles rows per block, so the
//    ratio is T / (4·tiles): 0.25 at T = 1 with 8 rows, 0.5 at T = 8 with 32 rows. x (T·n_in·4
//    bytes: 16 KiB at T = 1, n_in 4096; 128 KiB at T = 8) is read by every block on an SM and
//    stays in L1 once the weights do not evict it (point 1), as long as the driver's carveout
//    leaves L1 the room (the kernel asks for 2-8 KiB of shared memory: an assumption to check);
//    at n_in 14336, T = 8 (458 KiB) it comes from L2, which is why tiles grow with T.
//
// 3. No conversion, no per-element FMA for BF16/F16: the tensor cores do the products. One
//    mma.sync m16n8k16 takes x as A (16 rows: t = 0..7, rows 8..15 zero; x rounded to the weight
//    dtype in registers, cvt.rn) and 8 weight rows as B (K×N with N = output rows), in F32. A
//    lane's B fragment is 4 elements of one weight row; since the dot product may visit k in any
//    order, as long as A and B use the same order, lane (group g, quad q) loads 8 consecutive
//    elements (16 bytes) of row g at k0 + 8q and feeds two mma with them, elements 0-3 and 4-7;
//    its A fragment is x[t = g][k0 + 8q ..] rounded, the same k's. A warp covers 32 k of 8 rows
//    per 16-byte load (4 lanes read 64 contiguous bytes of a row); no shuffle, no reduction inside
//    the warp: the C fragment holds out[t = g][row 2q, 2q + 1] finished over the warp's k's. Per
//    16 bytes of weights a lane issues 1 load and 2 mma, plus per 32-k chunk 2 loads and 4-8
//    conversions of x shared by the block's tiles, where SIMT at T = 8 would issue 64 FMA and 8
//    conversions: issue slots and the FMA pipe never limit the bandwidth.
//    F32 weights (the checking dtype; no F32 tensor-core op keeps F32 products exact) run a SIMT
//    kernel templated on T: a lane reads 4 consecutive weights of each of 8 rows per 128-k chunk
//    (a warp: 512 contiguous bytes per row), keeps T × 8 accumulators in registers, each x load
//    serving the 8 rows; the lanes' sums meet in a butterfly of shuffles at the end.
//
// 4. Filling 132 SMs. Blocks cover 8·tiles rows of one segment (a block finds its segment from
//    the segments' block counts) and all of K, split over GEMV_WARPS = 8 warps that each take every
//    8th chunk (so the block reads a contiguous stretch of each row at a time); their partial sums
//    meet in shared memory, and one thread per output adds them, the bias, the old output. Rows
//    per block are the knob: 8 rows give 128 blocks for n_out = 1024 (k_proj alone) and 16032
//    for lm_head. gemv_default_tiles takes the most tiles x traffic asks for (T ≤ 2: 1, T ≤ 4: 2,
//    else 4) but fewer while the grid would have fewer than GEMV_TARGET_BLOCKS blocks; e.g. at
//    T = 8, Llama-3-8B: qkv 4 tiles (192 blocks), o and down 2 (256), gate+up and lm_head 4.
//    The case to watch on a GPU: down at T > 4, where the grid rule leaves 2 tiles and x (458 KiB,
//    past L1) comes from L2 at as many bytes as the weights.
//
// Shapes it takes (gemv_supports): 1..8 rows, n_in a multiple of 8 (a lane's 16-byte vector never
// straddles the end of a row), x and the weights 16-byte aligned, sizes in int, outputs that
// overlap no input nor each other. Anything else goes to cuBLAS; there is no slow general path.
//
// Unmeasured: no GPU was at hand when this was written. The figures above are reasoning;
// bench_matmul (bench/matmul_bench.cu) measures them (--tiles sweeps the rows per block).
// `nvcc -arch=sm_90 --resource-usage` (CUDA 13.0), no stack frame and no spills in any of them:
//   mma kernel, BF16 or F16:  tiles 1: 72 registers, 2 KiB shared; tiles 2: 94, 4 KiB;
//                             tiles 4: 96, 8 KiB. 2 blocks of 256 fit an SM at 94-96, 3 at 72.
//   F32 kernel:               T = 1: 64 registers, T = 2: 80, T = 3..8: 125-128 (the cap that
//                             __launch_bounds__(256, 2) sets), 2 KiB shared.
#ifndef CINFER_MATMUL_GEMV_CUH
#define CINFER_MATMUL_GEMV_CUH

#include <stdio.h>
#include <stdlib.h>

#include "tensor_core.cuh"

extern "C" {
#include "../../common/tensor.h"
}

// ---- the call -----------------------------------------------------------------------------------

enum { GEMV_MAX_ROWS = 8, GEMV_MAX_SEGMENTS = 3 };

struct gemv_segment {
    const void *weight;  // [n_out, n_in] row-major, dtype = gemv_params.weight_dtype
    const void *bias;    // [n_out] or NULL
    ci_dtype bias_dtype; // CI_F32, CI_BF16 or CI_F16 when bias is not NULL
    float *out;          // [n_rows, n_out] row-major F32
    int64_t n_out;
};

struct gemv_params {
    const float *x; // [n_rows, n_in] F32
    int64_t n_rows, n_in;
    ci_dtype weight_dtype; // CI_F32, CI_BF16 or CI_F16
    int accumulate;
    int n_segments;
    gemv_segment segments[GEMV_MAX_SEGMENTS];
};

// ---- sizes --------------------------------------------------------------------------------------

constexpr int GEMV_WARPS = 8; // a block: 8 warps splitting K
constexpr int GEMV_THREADS = GEMV_WARPS * 32;
constexpr int GEMV_LOADS = 8;           // 16-byte weight loads per lane before any is used
constexpr int GEMV_TILE_ROWS = 8;       // output rows per mma (its N); tiles of them per block
constexpr int GEMV_MAX_TILES = 4;       // 32 rows per block at most
constexpr int GEMV_F32_ROWS = 8;        // output rows per block of the F32 kernel
constexpr int GEMV_TARGET_BLOCKS = 132; // H100/H200 SMs: fewer tiles rather than idle SMs
constexpr int GEMV_MMA_K = 32;          // k per 16-byte weight vector of a warp (16-bit weights)
constexpr int GEMV_F32_K = 128;         // k per 16-byte weight vector of a warp (F32 weights)

static inline bool gemv_dtype_ok(ci_dtype dtype) {
    return dtype == CI_F32 || dtype == CI_BF16 || dtype == CI_F16;
}

// Output rows per block for a weight dtype and a tile count (1, 2, 4; F32 has one layout).
static inline int gemv_rows_per_block(ci_dtype weight_dtype, int tiles) {
    return weight_dtype == CI_F32 ? GEMV_F32_ROWS : GEMV_TILE_ROWS * tiles;
}

static inline int64_t gemv_block_count(const gemv_params &p, int rows_per_block) {
    int64_t blocks = 0;
    for (int s = 0; s < p.n_segments; s++)
        blocks += (p.segments[s].n_out + rows_per_block - 1) / rows_per_block;
    return blocks;
}

static inline bool gemv_overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    const uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

// Whether the kernel takes this call (else the caller uses cuBLAS): n_rows in 1..GEMV_MAX_ROWS;
// n_in a positive multiple of 8; x and every weight 16-byte aligned (16-byte loads, and rows of
// n_in % 8 == 0 elements keep every row aligned); 1..3 segments of 1..INT32_MAX rows, n_in at most
// INT32_MAX; dtypes F32/BF16/F16; and no output overlapping x, a weight, a bias or another output
// (inputs are read with non-coherent loads, and blocks write outputs in no particular order).
static inline bool gemv_supports(const gemv_params &p) {
    if (p.n_rows < 1 || p.n_rows > GEMV_MAX_ROWS) return false;
    if (p.n_in < 8 || p.n_in % 8 != 0 || p.n_in > INT32_MAX) return false;
    if (!gemv_dtype_ok(p.weight_dtype)) return false;
    if (p.n_segments < 1 || p.n_segments > GEMV_MAX_SEGMENTS) return false;
    if (!p.x || (uintptr_t)p.x % 16 != 0) return false;
    const size_t x_bytes = (size_t)p.n_rows * (size_t)p.n_in * sizeof(float);
    const size_t element = ci_dtype_size(p.weight_dtype);
    for (int s = 0; s < p.n_segments; s++) {
        const gemv_segment &seg = p.segments[s];
        if (!seg.weight || (uintptr_t)seg.weight % 16 != 0 || !seg.out) return false;
        if (seg.n_out < 1 || seg.n_out > INT32_MAX) return false;
        if (seg.bias && !gemv_dtype_ok(seg.bias_dtype)) return false;
        const size_t out_bytes = (size_t)p.n_rows * (size_t)seg.n_out * sizeof(float);
        if (gemv_overlap(seg.out, out_bytes, p.x, x_bytes)) return false;
        for (int u = 0; u < p.n_segments; u++) {
            const gemv_segment &other = p.segments[u];
            if (gemv_overlap(seg.out, out_bytes, other.weight,
                             (size_t)other.n_out * (size_t)p.n_in * element))
                return false;
            if (other.bias && gemv_overlap(seg.out, out_bytes, other.bias,
                                           (size_t)other.n_out * ci_dtype_size(other.bias_dtype)))
                return false;
            if (u != s && gemv_overlap(seg.out, out_bytes, other.out,
                                       (size_t)p.n_rows * (size_t)other.n_out * sizeof(float)))
                return false;
        }
    }
    return gemv_block_count(p, GEMV_TILE_ROWS) <= INT32_MAX; // grid.x, at 8 rows per block
}

// ---- device helpers -----------------------------------------------------------------------------

// The segment block `block` works on, and its first row there.
__device__ __forceinline__ int gemv_segment_of(const gemv_params &p, int rows_per_block,
                                               int64_t block, int64_t *row0) {
    int s = 0;
    for (; s < p.n_segments - 1; s++) {
        const int64_t blocks = (p.segments[s].n_out + rows_per_block - 1) / rows_per_block;
        if (block < blocks) break;
        block -= blocks;
    }
    *row0 = block * rows_per_block;
    return s;
}

__device__ __forceinline__ float gemv_bias(const gemv_segment &seg, int64_t row) {
    switch (seg.bias_dtype) {
    case CI_BF16: return ci_to_float(static_cast<const __nv_bfloat16 *>(seg.bias)[row]);
    case CI_F16: return ci_to_float(static_cast<const __half *>(seg.bias)[row]);
    default: return static_cast<const float *>(seg.bias)[row];
    }
}

// The 16 bytes at src as 4 floats (src 16-byte aligned).
__device__ __forceinline__ void gemv_load_floats(float dst[4], const float *src) {
    uint32_t raw[4];
    ci_load_16(raw, src);
    memcpy(dst, raw, 16);
}

// After the warps' partial sums [GEMV_WARPS][GEMV_MAX_ROWS][ROWS] are in shared memory (and a
// barrier): one thread per output, consecutive threads along a row of out, in a fixed order.
template <int ROWS>
__device__ __forceinline__ void gemv_epilogue(const gemv_params &p, const gemv_segment &seg,
                                              int64_t row0,
                                              const float (*partial)[GEMV_MAX_ROWS][ROWS]) {
    const int n_rows = (int)p.n_rows;
    for (int i = threadIdx.x; i < n_rows * ROWS; i += GEMV_THREADS) {
        const int t = i / ROWS, r = i % ROWS;
        const int64_t row = row0 + r;
        if (row >= seg.n_out) continue;
        float product = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) product += partial[w][t][r];
        if (seg.bias) product += gemv_bias(seg, row);
        float *out = seg.out + t * seg.n_out + row;
        *out = p.accumulate ? *out + product : product;
    }
}

// ---- kernel 1: BF16/F16 weights on the tensor cores ---------------------------------------------

// W: __nv_bfloat16 or __half. TILES: 8-row tiles per block. Grid: Σ_s ceil(n_out_s / (8·TILES))
// blocks of GEMV_THREADS.
template <typename W, int TILES>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_mma_kernel(const gemv_params p) {
    constexpr int ROWS = GEMV_TILE_ROWS * TILES;
    constexpr int UNROLL = GEMV_LOADS / TILES; // chunks of 32 k per lane per iteration
    int64_t row0;
    const gemv_segment &seg = p.segments[gemv_segment_of(p, ROWS, blockIdx.x, &row0)];
    const int n_in = (int)p.n_in, n_chunks = (n_in + GEMV_MMA_K - 1) / GEMV_MMA_K;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int group = lane / 4, quad = lane % 4;

    // This lane reads row row0 + 8i + group of each tile i, and x row t = group, at k0 + 8·quad of
    // every chunk k0 it visits. Rows past n_out and t past n_rows read nothing (zeros).
    const W *w_row[TILES];
    bool row_live[TILES];
#pragma unroll
    for (int i = 0; i < TILES; i++) {
        const int64_t row = row0 + GEMV_TILE_ROWS * i + group;
        row_live[i] = row < seg.n_out;
        w_row[i] = static_cast<const W *>(seg.weight) + (row_live[i] ? row : 0) * n_in;
    }
    const bool x_live = group < p.n_rows;
    const float *x_row = p.x + (x_live ? group : 0) * (int64_t)n_in;

    // [tile][which half of the 16 bytes][C fragment]: the halves chain separately (shorter
    // dependency chains); c[0], c[1] are out[t = group][8i + 2·quad + 0, 1]; c[2], c[3] belong to
    // A's rows 8..15, which are zero.
    float acc[TILES][2][4];
#pragma unroll
    for (int i = 0; i < TILES; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][h][c] = 0.0f;

    for (int first = warp; first < n_chunks; first += GEMV_WARPS * UNROLL) {
        // All the weight loads of the iteration first (GEMV_LOADS per lane), then the math.
        uint32_t w[UNROLL][TILES][4];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int k = (first + u * GEMV_WARPS) * GEMV_MMA_K + 8 * quad;
#pragma unroll
            for (int i = 0; i < TILES; i++) {
                if (k < n_in && row_live[i])
                    ci_load_16_stream(w[u][i], w_row[i] + k);
                else
                    w[u][i][0] = w[u][i][1] = w[u][i][2] = w[u][i][3] = 0u;
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int chunk = first + u * GEMV_WARPS;
            if (chunk >= n_chunks) break; // the same for the whole warp: the mma stay converged
            const int k = chunk * GEMV_MMA_K + 8 * quad;
            float xv[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            if (k < n_in && x_live) {
                gemv_load_floats(xv, x_row + k);
                gemv_load_floats(xv + 4, x_row + k + 4);
            }
            // Elements 0-3 of the lane's 16 bytes are logical k {2q, 2q+1, 2q+8, 2q+9} of the
            // first mma, elements 4-7 the same of the second; A follows the same order.
            const uint32_t a_lo[4] = {ci_pack2<W>(xv[0], xv[1]), 0u, ci_pack2<W>(xv[2], xv[3]), 0u};
            const uint32_t a_hi[4] = {ci_pack2<W>(xv[4], xv[5]), 0u, ci_pack2<W>(xv[6], xv[7]), 0u};
#pragma unroll
            for (int i = 0; i < TILES; i++) {
                const uint32_t b_lo[2] = {w[u][i][0], w[u][i][1]};
                const uint32_t b_hi[2] = {w[u][i][2], w[u][i][3]};
                ci_mma_16816<W>(acc[i][0], a_lo, b_lo);
                ci_mma_16816<W>(acc[i][1], a_hi, b_hi);
            }
        }
    }

    __shared__ float partial[GEMV_WARPS][GEMV_MAX_ROWS][ROWS];
    if (x_live) {
#pragma unroll
        for (int i = 0; i < TILES; i++)
#pragma unroll
            for (int c = 0; c < 2; c++)
                partial[warp][group][GEMV_TILE_ROWS * i + 2 * quad + c] =
                    acc[i][0][c] + acc[i][1][c];
    }
    __syncthreads();
    gemv_epilogue<ROWS>(p, seg, row0, partial);
}

// ---- kernel 2: F32 weights, SIMT ----------------------------------------------------------------

__device__ __forceinline__ float gemv_warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

// T: rows of x (1..8). Grid: Σ_s ceil(n_out_s / 8) blocks of GEMV_THREADS.
template <int T>
__global__ void __launch_bounds__(GEMV_THREADS, 2) gemv_f32_kernel(const gemv_params p) {
    constexpr int ROWS = GEMV_F32_ROWS;
    int64_t row0;
    const gemv_segment &seg = p.segments[gemv_segment_of(p, ROWS, blockIdx.x, &row0)];
    const int n_in = (int)p.n_in, n_chunks = (n_in + GEMV_F32_K - 1) / GEMV_F32_K;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

    const float *w_row[ROWS];
    bool row_live[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        row_live[r] = row0 + r < seg.n_out;
        w_row[r] = static_cast<const float *>(seg.weight) + (row_live[r] ? row0 + r : 0) * n_in;
    }
    float acc[T][ROWS];
#pragma unroll
    for (int t = 0; t < T; t++)
#pragma unroll
        for (int r = 0; r < ROWS; r++) acc[t][r] = 0.0f;

    for (int chunk = warp; chunk < n_chunks; chunk += GEMV_WARPS) {
        const int k = chunk * GEMV_F32_K + 4 * lane;
        const bool live = k < n_in;
        float w[ROWS][4];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            uint32_t raw[4] = {0u, 0u, 0u, 0u};
            if (live && row_live[r]) ci_load_16_stream(raw, w_row[r] + k);
            memcpy(w[r], raw, 16);
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
            float xv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (live) gemv_load_floats(xv, p.x + t * (int64_t)n_in + k);
#pragma unroll
            for (int r = 0; r < ROWS; r++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[t][r] += xv[e] * w[r][e];
        }
    }

    __shared__ float partial[GEMV_WARPS][GEMV_MAX_ROWS][ROWS];
#pragma unroll
    for (int t = 0; t < T; t++)
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const float sum = gemv_warp_sum(acc[t][r]);
            if (lane == 0) partial[warp][t][r] = sum;
        }
    __syncthreads();
    gemv_epilogue<ROWS>(p, seg, row0, partial);
}

// ---- launchers ----------------------------------------------------------------------------------

// Tiles per block (BF16/F16; F32 ignores it): the fewest that keep x traffic at most half the
// weight traffic (T·4 bytes of x per 8·tiles·2 bytes of weights), fewer while the grid would leave
// SMs without a block.
static inline int gemv_default_tiles(const gemv_params &p) {
    int tiles = p.n_rows <= 2 ? 1 : p.n_rows <= 4 ? 2 : GEMV_MAX_TILES;
    while (tiles > 1 && gemv_block_count(p, GEMV_TILE_ROWS * tiles) < GEMV_TARGET_BLOCKS)
        tiles /= 2;
    return tiles;
}

template <typename W>
static inline void gemv_launch_mma(cudaStream_t stream, const gemv_params &p, int tiles) {
    const dim3 grid((unsigned)gemv_block_count(p, GEMV_TILE_ROWS * tiles));
    if (tiles == 1) {
        auto kernel = gemv_mma_kernel<W, 1>;
        CI_LAUNCH(kernel, grid, dim3(GEMV_THREADS), 0, stream, p);
    } else if (tiles == 2) {
        auto kernel = gemv_mma_kernel<W, 2>;
        CI_LAUNCH(kernel, grid, dim3(GEMV_THREADS), 0, stream, p);
    } else {
        auto kernel = gemv_mma_kernel<W, 4>;
        CI_LAUNCH(kernel, grid, dim3(GEMV_THREADS), 0, stream, p);
    }
}

template <int T> static inline void gemv_launch_f32(cudaStream_t stream, const gemv_params &p) {
    auto kernel = gemv_f32_kernel<T>;
    CI_LAUNCH(kernel, dim3((unsigned)gemv_block_count(p, GEMV_F32_ROWS)), dim3(GEMV_THREADS), 0,
              stream, p);
}

// Queues the call on `stream` with `tiles` 8-row tiles per block (1, 2 or 4; ignored for F32
// weights): for tests and bench_matmul's sweep. No allocation, no synchronization. The call must
// be one gemv_supports takes (a caller's bug otherwise: it aborts with the reason).
static inline void gemv_launch_tiles(cudaStream_t stream, const gemv_params &p, int tiles) {
    if (!gemv_supports(p) || (tiles != 1 && tiles != 2 && tiles != 4)) {
        fprintf(stderr,
                "cinfer: %s:%d: gemv_launch: a call gemv_supports refuses (n_rows %lld, n_in %lld, "
                "%d segments) or tiles %d not 1, 2, 4\n",
                __FILE__, __LINE__, (long long)p.n_rows, (long long)p.n_in, p.n_segments, tiles);
        abort();
    }
    if (p.weight_dtype == CI_BF16) return gemv_launch_mma<__nv_bfloat16>(stream, p, tiles);
    if (p.weight_dtype == CI_F16) return gemv_launch_mma<__half>(stream, p, tiles);
    switch (p.n_rows) {
    case 1: return gemv_launch_f32<1>(stream, p);
    case 2: return gemv_launch_f32<2>(stream, p);
    case 3: return gemv_launch_f32<3>(stream, p);
    case 4: return gemv_launch_f32<4>(stream, p);
    case 5: return gemv_launch_f32<5>(stream, p);
    case 6: return gemv_launch_f32<6>(stream, p);
    case 7: return gemv_launch_f32<7>(stream, p);
    default: return gemv_launch_f32<8>(stream, p);
    }
}

// Queues the call on `stream`, rows per block by gemv_default_tiles.
static inline void gemv_launch(cudaStream_t stream, const gemv_params &p) {
    gemv_launch_tiles(stream, p, gemv_supports(p) ? gemv_default_tiles(p) : 1);
}

#endif
