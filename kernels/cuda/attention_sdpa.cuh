// sdpa: fused causal attention, standard and differential, in one SIMT kernel (no tensor cores).
// defines: attention_sdpa_launch<T>, attention_sdpa_supports
//
// One block per (sequence, KV head group, query tile). Its rows are the query tile's tokens times
// the query heads (differential: head pairs) that read the same KV head(s), so that every K and V
// row a block loads serves all of them (GQA decode reads each KV row once per block, not g times).
// A warp takes `units` rows at a time and walks the keys [0, last visible key] once for all of
// them, reading K and V straight from global memory (the rows repeat across warps and blocks, so
// they come from L1/L2). Each lane holds `elems` entries of the head dimension of every query and
// accumulator; a key's dot product is a shuffle reduction over the `lanes_per_key` lanes that
// share it, and the `key_groups` = 32 / lanes_per_key groups of a warp take interleaved keys, each
// with its own online-softmax state (running max m, running sum l, rescaled accumulator), merged
// by shuffles at the end. When a block has rows for fewer than SDPA_MAX_WARPS warps (decode:
// g query heads of one token), the spare warps split the keys of the same rows, and their final
// states meet in shared memory, where one warp folds them together (one __syncthreads).
//
// The math is docs/MODEL_MATH.md's and kernels/cpu/attention.c's, in F32:
//   standard      O_h = softmax(Q_h K_kv(h)ᵀ / sqrt(D) + M) V_kv(h)
//   differential  Y_p = (1 − lambda_init) · RMSNorm_2D(A1_p·Vcat_p − lambda · A2_p·Vcat_p, eps),
//                 Vcat_p = [V_kv(p) ‖ V_kv(p+P)]: both heads of pair p keep their own softmax
//                 state and both weight the same 2·D-wide values; the epilogue runs in registers.
// Scores carry log2(e) folded into the scale so that the exponentials are exp2f.
//
// State per block: registers, plus split_states in shared memory (per key split after the first:
// m, l and the accumulators of one warp's rows: 7.5 to 15 KiB by variant). No score or probability
// is ever stored anywhere: a step's C scores per row live in registers and are gone after the step.
// Global writes, the only ones: out[seq, t, h, 0:D] (standard) or out[seq, t, 2pD : 2(p+1)D]
// (differential), each element once, by the lanes of key group 0 of key split 0.
// Global reads: q (each row once), the position (pos0.device or seq_pos0[seq]), and the K/V rows
// [0, min(pos0(b) + t, n_ctx − 1)] of the row's KV head(s), never a row past the sequence's
// current length; so a recorded call (position in device memory) needs no host-side length: the
// key loop ends where the position read on the device says. PAGED (a ragged step over a paged
// pool): the same, with each key's row looked up in the block table, and each sequence's query rows
// and length read from seq_starts and seq_lens; query tiles past a shorter sequence's rows idle.
//
// Traffic per call (bytes, s = sizeof(T), K+V of NH = 1 or 2 KV heads per row set):
//   q: n_seqs·n_tokens·H·D·4 read once; out: the same, written once.
//   K/V, unique (what DRAM must deliver at least): n_seqs·G·(pos0 + n_tokens)·2·D·s.
//   K/V, requested from L1/L2: Σ over row sets (U rows: one warp, or its key splits, which read
//   disjoint keys) of keys·NH·2·D·s, keys = the row set's last visible key + 1. There are
//   ⌈T·g'/U⌉ row sets per (sequence, KV head group) and query tile, g' = rows sharing the KV
//   head(s): g (standard), gcd(g, P) pairs (differential).
//     decode (T = 1):   n_seqs·G·⌈g/U⌉·(pos0 + 1)·2·D·s, the unique bytes when g ≤ U
//     prefill (T ≫ U):  ≈ n_seqs·(H/U)·T·(pos0 + T/2)·2·D·s standard, n_seqs·(P/U)·T·(pos0 + T/2)·
//                       4·D·s differential; the warps of a block walk the same keys at about the
//                       same time, so most of their requests hit L1 (unmeasured).
#ifndef CINFER_ATTENTION_SDPA_CUH
#define CINFER_ATTENTION_SDPA_CUH

#include "attention_kernels.cuh"

// Warps per block at most: enough rows in flight per block to share K/V rows in L1 without
// starving the grid of blocks for short calls.
#define SDPA_MAX_WARPS 4
#define SDPA_LOG2E 1.4426950408889634f

// How a head_dim of at most D_MAX maps onto a warp, and how much work a warp keeps in registers.
template <int D_MAX, bool DIFF> struct sdpa_config {
    // Head-dimension entries per lane: 4 keeps a lane's share small for D_MAX ≤ 128 (whole warps
    // on a key at 128, 2 and 4 keys side by side at 64 and 32); 256 needs 8 to fit in one warp.
    static constexpr int elems = D_MAX >= 256 ? 8 : 4;
    static constexpr int lanes_per_key = D_MAX / elems;
    static constexpr int key_groups = 32 / lanes_per_key;
    // Query heads per row (differential: the pair) and KV heads a row reads (differential: the
    // pair's two, for both the scores and Vcat).
    static constexpr int heads = DIFF ? 2 : 1;
    // Rows a warp carries at once (each K/V load serves all of them) and keys each key group
    // loads per step (independent loads in flight); sized so that q, the accumulators and the
    // step's K/V stay in registers (ptxas, nvcc 13, sm_80 and sm_90: 96 to 139 registers, most
    // variants settling at 128 with 0 to 16 bytes of spill; none measured on a GPU).
    static constexpr int units = (DIFF ? 2 : 4) / (D_MAX >= 256 ? 2 : 1);
    static constexpr int keys_per_step = (DIFF ? 2 : 4) / (D_MAX >= 256 ? 2 : 1);
    static_assert(lanes_per_key * elems == D_MAX && lanes_per_key <= 32, "D_MAX must fit a warp");
};

// Sum over the `width` lanes that share a key (aligned groups of consecutive lanes); every lane
// of the group gets the same bits, because each butterfly step adds the same two values.
template <int width> __device__ __forceinline__ float sdpa_group_sum(float x) {
#pragma unroll
    for (int offset = 1; offset < width; offset *= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// Two online-softmax states with maxima m_a and m_b, brought to their common maximum m: the state
// of both is (l_a·scale_a + l_b·scale_b, acc_a·scale_a + acc_b·scale_b). While neither has seen a
// visible key both maxima are −inf; measuring from 0 then keeps the scales 0 instead of NaN.
__device__ __forceinline__ void sdpa_merge_scales(float m_a, float m_b, float &m, float &scale_a,
                                                  float &scale_b) {
    m = fmaxf(m_a, m_b);
    const float m_ref = m == -INFINITY ? 0.0f : m;
    scale_a = exp2f(m_a - m_ref);
    scale_b = exp2f(m_b - m_ref);
}

// row_warps: warps that take distinct rows; the block's other warps split the keys of the same
// rows (key_splits = warps / row_warps, > 1 only when the block has rows for fewer than
// SDPA_MAX_WARPS warps, as in decode) and merge their states through shared memory at the end.
template <typename T, int D_MAX, bool DIFF, bool PAGED>
__global__ void __launch_bounds__(SDPA_MAX_WARPS * 32)
    attention_sdpa_kernel(const attention_params p, int query_tile, int heads_per_block,
                          int row_warps) {
    using cfg = sdpa_config<D_MAX, DIFF>;
    constexpr int E = cfg::elems, L = cfg::lanes_per_key, KG = cfg::key_groups;
    constexpr int NH = cfg::heads, U = cfg::units, C = cfg::keys_per_step;

    const int D = p.head_dim, H = p.n_heads, G = p.n_kv_heads, group = H / G;
    const int n_pairs = H / 2; // differential: head p pairs with p + n_pairs
    const int seq = blockIdx.z;
    const int first_head = blockIdx.y * heads_per_block; // standard: a head; differential: a pair
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int key_group = lane / L, lane_in_key = lane % L;
    const int key_splits = blockDim.x / 32 / row_warps;
    const int row_warp = warp % row_warps, key_split = warp / row_warps;

    // Key splits 1.. hand their states to split 0 here, at [(key_split − 1)·row_warps + row_warp],
    // each lane its own (the butterfly left every lane of a warp with the whole state).
    constexpr int STATE_FLOATS = U * NH * (2 + NH * E);
    __shared__ float split_states[SDPA_MAX_WARPS - 1][STATE_FLOATS][32];

    // The KV heads every row of this block reads: the host groups rows so that they agree.
    int kv_head[NH];
    kv_head[0] = first_head / group;
    if constexpr (DIFF) kv_head[NH - 1] = (first_head + n_pairs) / group;

    const int pos0 = attention_seq_pos0(p, seq);
    const int first_row_of_seq = attention_seq_first_row(p, seq),
              n_rows = attention_seq_rows(p, seq);
    const size_t cache_row = (size_t)G * D; // elements from one position to the next
    const T *__restrict__ k_all = (const T *)p.k_cache;
    const T *__restrict__ v_all = (const T *)p.v_cache;
    const float *__restrict__ q_all = p.q;
    float *__restrict__ out_all = p.out;
    const float q_scale = p.scale * SDPA_LOG2E;

    const int block_rows = query_tile * heads_per_block;
    const int first_token = blockIdx.x * query_tile;

    // Warps take U rows at a time. With key_splits = 1 there is no barrier, so a warp that runs
    // out of rows just stops; with key_splits > 1 the host gave every warp exactly one row set,
    // so that all threads reach the one __syncthreads below.
    for (int first_row = row_warp * U; first_row < block_rows; first_row += row_warps * U) {
        int token[U], head[U], last_key[U]; // last_key −1: padding, sees nothing, writes nothing
        int warp_keys = 0;                  // keys any row of this warp sees (warp-uniform)
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int row = first_row + u;
            token[u] = first_token + row / heads_per_block;
            head[u] = first_head + row % heads_per_block;
            const bool real = row < block_rows && token[u] < n_rows;
            // Causal: query t sees [0, pos0 + t]; the clamp keeps a bad recorded position inside
            // the cache instead of reading past it.
            const int causal_last = pos0 + token[u] < p.n_ctx ? pos0 + token[u] : p.n_ctx - 1;
            last_key[u] = real ? causal_last : -1;
            if (last_key[u] + 1 > warp_keys) warp_keys = last_key[u] + 1;
        }

        // This lane's entries d = e·L + lane_in_key of each query, pre-scaled; 0 past head_dim.
        float q[U][NH][E];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < NH; i++) {
                const size_t q_row =
                    ((size_t)first_row_of_seq + token[u]) * H + head[u] + i * n_pairs;
#pragma unroll
                for (int e = 0; e < E; e++) {
                    const int d = e * L + lane_in_key;
                    q[u][i][e] =
                        (last_key[u] >= 0 && d < D) ? q_all[q_row * D + d] * q_scale : 0.0f;
                }
            }

        // Online softmax state per (row, head) and key group; acc[u][i][j]: head i's weights on
        // value half j (differential: Vcat's halves; standard: the one V).
        float m[U][NH], l[U][NH], acc[U][NH][NH][E];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < NH; i++) {
                m[u][i] = -INFINITY;
                l[u][i] = 0.0f;
#pragma unroll
                for (int j = 0; j < NH; j++)
#pragma unroll
                    for (int e = 0; e < E; e++) acc[u][i][j][e] = 0.0f;
            }

        for (int base = key_split * KG * C; base < warp_keys; base += key_splits * KG * C) {
            // Load C keys per key group, interleaved so that the groups read adjacent rows. Rows
            // past warp_keys are never read (they may lie past the sequence or the cache).
            float k[C][NH][E], v[C][NH][E];
            int key[C];
#pragma unroll
            for (int c = 0; c < C; c++) {
                key[c] = base + c * KG + key_group;
                const bool live = key[c] < warp_keys;
                // a paged key's block is looked up only for live keys: the table's entries past
                // the sequence's length are never read
                const size_t key_row =
                    live ? (size_t)attention_cache_row<PAGED>(p, seq, key[c]) * cache_row : 0;
#pragma unroll
                for (int i = 0; i < NH; i++) {
                    const size_t row = key_row + (size_t)kv_head[i] * D;
#pragma unroll
                    for (int e = 0; e < E; e++) {
                        const int d = e * L + lane_in_key;
                        const bool in = live && d < D;
                        k[c][i][e] = in ? ci_to_float(k_all[row + d]) : 0.0f;
                        v[c][i][e] = in ? ci_to_float(v_all[row + d]) : 0.0f;
                    }
                }
            }

#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int i = 0; i < NH; i++) {
                    // Scores (log2 units) of this step's keys; keys the row must not see are −inf
                    // and so get probability exactly 0.
                    float score[C], step_max = -INFINITY;
#pragma unroll
                    for (int c = 0; c < C; c++) {
                        float dot = 0.0f;
#pragma unroll
                        for (int e = 0; e < E; e++) dot += q[u][i][e] * k[c][i][e];
                        dot = sdpa_group_sum<L>(dot);
                        score[c] = key[c] <= last_key[u] ? dot : -INFINITY;
                        step_max = fmaxf(step_max, score[c]);
                    }
                    // FlashAttention's recurrence: rescale what came before to the new max. While
                    // this key group has seen no visible key, m_new is −inf; measuring from 0
                    // instead keeps every exponent −inf (→ 0) rather than NaN.
                    const float m_new = fmaxf(m[u][i], step_max);
                    const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
                    const float rescale = exp2f(m[u][i] - m_ref);
                    float prob[C], prob_sum = 0.0f;
#pragma unroll
                    for (int c = 0; c < C; c++) {
                        prob[c] = exp2f(score[c] - m_ref);
                        prob_sum += prob[c];
                    }
                    m[u][i] = m_new;
                    l[u][i] = l[u][i] * rescale + prob_sum;
#pragma unroll
                    for (int j = 0; j < NH; j++)
#pragma unroll
                        for (int e = 0; e < E; e++) {
                            float a = acc[u][i][j][e] * rescale;
#pragma unroll
                            for (int c = 0; c < C; c++) a += prob[c] * v[c][j][e];
                            acc[u][i][j][e] = a;
                        }
                }
        }

        // Merge the key groups' states (same recurrence, pairwise by butterfly: afterwards every
        // group holds the whole row's state, bit for bit, since each step combines the same two).
#pragma unroll
        for (int offset = L; offset < 32; offset *= 2)
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int i = 0; i < NH; i++) {
                    const float m_other = __shfl_xor_sync(0xffffffffu, m[u][i], offset);
                    const float l_other = __shfl_xor_sync(0xffffffffu, l[u][i], offset);
                    float mine, theirs;
                    sdpa_merge_scales(m[u][i], m_other, m[u][i], mine, theirs);
                    l[u][i] = l[u][i] * mine + l_other * theirs;
#pragma unroll
                    for (int j = 0; j < NH; j++)
#pragma unroll
                        for (int e = 0; e < E; e++) {
                            const float a_other =
                                __shfl_xor_sync(0xffffffffu, acc[u][i][j][e], offset);
                            acc[u][i][j][e] = acc[u][i][j][e] * mine + a_other * theirs;
                        }
                }

        // Merge the key splits: splits 1.. store their states, split 0 folds them into its own.
        if (key_splits > 1) {
            if (key_split > 0) {
                float(*state)[32] = split_states[(key_split - 1) * row_warps + row_warp];
                int at = 0;
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int i = 0; i < NH; i++) {
                        state[at++][lane] = m[u][i];
                        state[at++][lane] = l[u][i];
#pragma unroll
                        for (int j = 0; j < NH; j++)
#pragma unroll
                            for (int e = 0; e < E; e++) state[at++][lane] = acc[u][i][j][e];
                    }
            }
            __syncthreads();
            if (key_split > 0) continue; // its rows are written by split 0; no further iteration
            for (int split = 1; split < key_splits; split++) {
                const float(*state)[32] = split_states[(split - 1) * row_warps + row_warp];
                int at = 0;
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int i = 0; i < NH; i++) {
                        const float m_other = state[at++][lane], l_other = state[at++][lane];
                        float mine, theirs;
                        sdpa_merge_scales(m[u][i], m_other, m[u][i], mine, theirs);
                        l[u][i] = l[u][i] * mine + l_other * theirs;
#pragma unroll
                        for (int j = 0; j < NH; j++)
#pragma unroll
                            for (int e = 0; e < E; e++)
                                acc[u][i][j][e] =
                                    acc[u][i][j][e] * mine + state[at++][lane] * theirs;
                    }
            }
        }

        // Epilogue: normalize by l (never 0 for a real row, which sees at least its own
        // key; the guard keeps padding rows finite) and write each row once.
#pragma unroll
        for (int u = 0; u < U; u++) {
            float inv_l[NH];
#pragma unroll
            for (int i = 0; i < NH; i++) inv_l[i] = l[u][i] > 0.0f ? 1.0f / l[u][i] : 0.0f;
            const size_t out_token = ((size_t)first_row_of_seq + token[u]) * H * D;
            if constexpr (!DIFF) {
                float *y = out_all + out_token + (size_t)head[u] * D;
#pragma unroll
                for (int e = 0; e < E; e++) {
                    const int d = e * L + lane_in_key;
                    if (key_group == 0 && last_key[u] >= 0 && d < D)
                        y[d] = acc[u][0][0][e] * inv_l[0];
                }
            } else {
                // O = A1·Vcat − lambda·A2·Vcat over 2D entries, then the weightless RMS norm.
                float o[NH][E], sum_squares = 0.0f;
#pragma unroll
                for (int j = 0; j < NH; j++)
#pragma unroll
                    for (int e = 0; e < E; e++) {
                        o[j][e] = acc[u][0][j][e] * inv_l[0] -
                                  p.lambda * (acc[u][NH - 1][j][e] * inv_l[NH - 1]);
                        sum_squares += o[j][e] * o[j][e]; // 0 past head_dim
                    }
                sum_squares = sdpa_group_sum<L>(sum_squares);
                const float norm =
                    (1.0f - p.lambda_init) / sqrtf(sum_squares / (float)(2 * D) + p.eps);
                float *y = out_all + out_token + (size_t)head[u] * 2 * D;
#pragma unroll
                for (int j = 0; j < NH; j++)
#pragma unroll
                    for (int e = 0; e < E; e++) {
                        const int d = e * L + lane_in_key;
                        if (key_group == 0 && last_key[u] >= 0 && d < D)
                            y[j * D + d] = o[j][e] * norm;
                    }
            }
        }
    }
}

// ---- launcher
// ------------------------------------------------------------------------------------

static inline int sdpa_gcd(int a, int b) {
    while (b) {
        const int r = a % b;
        a = b;
        b = r;
    }
    return a;
}

template <typename T, int D_MAX, bool DIFF, bool PAGED>
static int attention_sdpa_launch_for(const attention_params &p, cudaStream_t stream) {
    using cfg = sdpa_config<D_MAX, DIFF>;
    const int group = p.n_heads / p.n_kv_heads;
    // Rows of a block must read the same KV head(s). Standard: the g query heads of one KV head.
    // Differential: pairs p whose heads p and p + P both stay within one KV head each, i.e.
    // aligned runs of gcd(g, P) pairs (g when G is even).
    const int heads_per_block = DIFF ? sdpa_gcd(group, p.n_heads / 2) : group;
    const int head_blocks = (DIFF ? p.n_heads / 2 : p.n_heads) / heads_per_block;
    // Enough tokens per block to give each warp a full set of rows, when the heads alone do not.
    const int rows_wanted = SDPA_MAX_WARPS * cfg::units;
    int query_tile = (rows_wanted + heads_per_block - 1) / heads_per_block;
    if (query_tile > p.n_tokens) query_tile = p.n_tokens;
    const int row_sets = (query_tile * heads_per_block + cfg::units - 1) / cfg::units;
    // Rows for every warp: one row set per warp at a time. Too few (decode): the spare warps split
    // the keys of the same rows, so that a long cache is not walked by a single warp.
    const int row_warps = row_sets < SDPA_MAX_WARPS ? row_sets : SDPA_MAX_WARPS;
    const int key_splits = SDPA_MAX_WARPS / row_warps;
    const int warps = row_warps * key_splits;
    const dim3 grid((unsigned)((p.n_tokens + query_tile - 1) / query_tile), (unsigned)head_blocks,
                    (unsigned)p.n_seqs);
    CI_LAUNCH((attention_sdpa_kernel<T, D_MAX, DIFF, PAGED>), grid, warps * 32, 0, stream, p,
              query_tile, heads_per_block, row_warps);
    return 0;
}

inline int attention_sdpa_supports(int head_dim) { return head_dim >= 1 && head_dim <= 256; }

// Queues the call on `stream`; returns 0, or 1 for shapes this kernel does not run (head_dim
// outside 1..256, H not a multiple of G, an odd H for differential attention, grid limits).
// PAGED: a ragged step over a paged pool (attention_params: seq_starts, block_tables); n_tokens
// is then the most rows any sequence has, and query tiles past a sequence's rows do nothing.
template <typename T, bool PAGED = false>
int attention_sdpa_launch(const attention_params &p, cudaStream_t stream) {
    if (!attention_sdpa_supports(p.head_dim)) return 1;
    if (p.n_heads < 1 || p.n_kv_heads < 1 || p.n_heads % p.n_kv_heads != 0) return 1;
    if (p.differential && p.n_heads % 2 != 0) return 1;
    if (p.n_seqs < 1 || p.n_seqs > 65535 || p.n_tokens < 1 || p.n_heads > 65535) return 1;
    const int d = p.head_dim;
    if (p.differential) {
        if (d <= 32) return attention_sdpa_launch_for<T, 32, true, PAGED>(p, stream);
        if (d <= 64) return attention_sdpa_launch_for<T, 64, true, PAGED>(p, stream);
        if (d <= 128) return attention_sdpa_launch_for<T, 128, true, PAGED>(p, stream);
        return attention_sdpa_launch_for<T, 256, true, PAGED>(p, stream);
    }
    if (d <= 32) return attention_sdpa_launch_for<T, 32, false, PAGED>(p, stream);
    if (d <= 64) return attention_sdpa_launch_for<T, 64, false, PAGED>(p, stream);
    if (d <= 128) return attention_sdpa_launch_for<T, 128, false, PAGED>(p, stream);
    return attention_sdpa_launch_for<T, 256, false, PAGED>(p, stream);
}

#endif
