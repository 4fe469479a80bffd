// The paged-KV-cache kernels of a ragged step (kernels/cuda/attention_paged.cuh and the PAGED
// variants of sdpa, flash and flash-decoding), run on the CPU by the CUDA emulator, against the
// contiguous CPU reference ops: attention_cpu / diff_attention_cpu over a contiguous cache built
// from the same keys, one sequence at a time at pos0 = its first row's position; rope_cpu and
// kv_store_cpu for rope_rows and kv_store_paged.
//
// Every step poisons what a kernel must never let through: the pool's blocks are handed out in
// shuffled order and every row no sequence holds is NaN (unused blocks, and the tail of each
// sequence's last block); block-table entries past a sequence's blocks hold an index far outside
// the pool; the output and the workspace start as NaN. This step's own keys reach the pool
// through kv_store_paged, as in the engine. Steps mix decode rows with prompt chunks that start
// and end at different offsets inside a block; "recorded" steps pass the host bounds a CUDA graph
// would be recorded with (max_seq_len past every length), so the kernels must take the real
// lengths from the device tensors.
//
// Eager attention is cuBLAS (no emulator): its paged part, the gather into contiguous F32 rows,
// is checked exactly here, and the GEMMs are the contiguous op's (tests/test_cuda_ops.cpp).
#include "tests/cuda_emu/cuda_emu.h" // first: the kernel header compiles against the emulator

#include "kernels/cuda/attention_paged.cuh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "kernels/cpu/ops_cpu.h"
}

namespace {

struct SeqSpec {
    int cached; // keys already in the pool before this step
    int rows;   // this step's rows: positions cached .. cached + rows − 1
};

struct PagedCase {
    const char *name;
    int block_size, n_heads, n_kv_heads, head_dim;
    bool differential;
    std::vector<SeqSpec> seqs;
    int bound_extra; // max_seq_len passed = the longest length + this (a recorded step's bound)
};

// Chunk boundaries land at offsets 0, 3, 5, 13, ... of a block; decode rows sit at the first,
// last and middle row of a block; lengths from 1 to 230 keys (several flash tiles, decode chunks
// wholly past a short sequence's length), a 70-row chunk (several flash query blocks), GQA 1, 2,
// 4, 8, head dims 32, 64, 80, 128 and 256 (sdpa and decode only), differential alike.
const PagedCase kCases[] = {
    {"mixed_g1_d64_bs16", 16, 4, 4, 64, false, {{37, 1}, {0, 21}, {13, 6}, {15, 1}}, 0},
    {"mixed_g2_d128_bs32", 32, 4, 2, 128, false, {{28, 7}, {66, 1}, {0, 3}}, 0},
    {"mixed_g4_d64_bs8", 8, 8, 2, 64, false, {{0, 13}, {11, 1}, {29, 4}, {5, 19}}, 0},
    {"mixed_g2_d32_bs16", 16, 4, 2, 32, false, {{48, 1}, {3, 30}}, 0},
    {"decode_g4_d128_bs16", 16, 8, 2, 128, false, {{70, 1}, {0, 1}, {15, 1}, {31, 1}}, 0},
    {"decode_recorded_g1_d64_bs8", 8, 2, 2, 64, false, {{7, 1}, {109, 1}, {40, 1}}, 37},
    {"decode_recorded_g2_d32_bs32", 32, 4, 2, 32, false, {{63, 1}, {12, 1}}, 90},
    {"diff_mixed_g2_d64_bs16", 16, 4, 2, 64, true, {{17, 5}, {0, 9}, {30, 1}}, 0},
    {"diff_mixed_g4_d128_bs8", 8, 8, 2, 128, true, {{6, 3}, {22, 1}, {0, 17}}, 0},
    {"diff_decode_recorded_g1_d128_bs32", 32, 4, 4, 128, true, {{45, 1}, {3, 1}, {96, 1}}, 21},
    {"diff_decode_g2_d32_bs8", 8, 4, 2, 32, true, {{0, 1}, {77, 1}}, 0},
    {"mixed_long_g8_d80_bs16", 16, 8, 1, 80, false, {{9, 70}, {160, 1}, {33, 2}}, 0},
    {"decode_long_g2_d256_bs16", 16, 4, 2, 256, false, {{229, 1}, {5, 1}, {130, 1}}, 40},
    {"diff_mixed_long_g2_d256_bs32", 32, 4, 2, 256, true, {{100, 1}, {41, 35}}, 0},
};

enum class CacheType { f32, bf16, f16 };

// As the contiguous emu tests (test_emu_sdpa.cpp, test_emu_decode.cpp): the reference is fed the
// very values the kernels read (K and V rounded to the cache dtype, widened exactly), so sdpa and
// decode, F32 inside, need only 1e-4. Flash on tensor cores (BF16/F16 caches) also rounds Q to
// the cache dtype (its reference gets Q rounded alike) and P on its way into P·V: each output
// moves by at most u·Σ_s A_s·|V_s| ≤ u·max|V| (u: 2^-8 BF16, 2^-11 F16; |V| ≲ 5 for these
// normal draws), the bound test_emu_flash.cpp computes per element; here its worst case.
// Differential outputs are divided by the RMS of O1 − λ·O2 (≳ 0.1 here), so ten times more.
double tolerance_for(paged_kernel kernel, bool diff, CacheType cache) {
    const bool rounded_p = kernel == PAGED_FLASH && cache != CacheType::f32;
    const double base = rounded_p ? (cache == CacheType::bf16 ? 2e-2 : 3e-3) : 1e-4;
    return diff ? base * 10 : base;
}

const char *cache_name(CacheType t) {
    return t == CacheType::f32 ? "f32" : t == CacheType::bf16 ? "bf16" : "f16";
}

const char *kernel_name(paged_kernel k) {
    return k == PAGED_SDPA ? "sdpa" : k == PAGED_FLASH ? "flash" : "decode";
}

ci_tensor f32_tensor(float *data, std::initializer_list<int64_t> shape) {
    ci_tensor t{};
    t.data = data;
    t.dtype = CI_F32;
    for (int64_t d : shape) t.shape[t.n_dims++] = d;
    return t;
}

// Every element within tolerance; on failure how many are not, and the worst. NaN fails.
::testing::AssertionResult all_close(const float *actual, const std::vector<float> &expected,
                                     double tolerance, double *worst_error = nullptr) {
    size_t n_bad = 0, worst = 0;
    double worst_seen = -1.0;
    for (size_t i = 0; i < expected.size(); i++) {
        const double error = std::fabs((double)actual[i] - (double)expected[i]);
        const double ranked = std::isnan(error) ? INFINITY : error;
        if (!(error <= tolerance)) n_bad++;
        if (ranked > worst_seen) worst_seen = ranked, worst = i;
    }
    if (worst_error) *worst_error = worst_seen;
    if (n_bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << n_bad << " of " << expected.size() << " elements off by more than " << tolerance
           << "; worst at flat index " << worst << ": got " << actual[worst] << ", expected "
           << expected[worst];
}

// One ragged step: the pool, its tables and the reference, built on the host.
template <typename T> struct Step {
    int S = 0, R = 0, H = 0, G = 0, D = 0, bs = 0, n_blocks = 0, max_blocks = 0;
    int max_seq_len = 0, max_seq_rows = 0;
    std::vector<int> seq_starts, seq_lens, positions, slots, block_tables;
    std::vector<T> k_pool, v_pool;
    std::vector<std::vector<float>> k_seq, v_seq; // each sequence's keys [len, G, D], widened
    std::vector<float> q;
};

constexpr int kSpareBlocks = 3;
constexpr int kPoisonBlock = 1 << 28; // a table entry no kernel may follow

template <typename T> Step<T> make_step(std::mt19937_64 &rng, const PagedCase &c) {
    Step<T> st;
    st.S = (int)c.seqs.size(), st.H = c.n_heads, st.G = c.n_kv_heads, st.D = c.head_dim;
    st.bs = c.block_size;
    const int row = st.G * st.D;
    int longest = 0, blocks_used = 0;
    st.seq_starts.push_back(0);
    for (const SeqSpec &s : c.seqs) {
        const int len = s.cached + s.rows;
        st.seq_starts.push_back(st.seq_starts.back() + s.rows);
        st.seq_lens.push_back(len);
        for (int r = 0; r < s.rows; r++) st.positions.push_back(s.cached + r);
        longest = std::max(longest, len);
        st.max_seq_rows = std::max(st.max_seq_rows, s.rows);
        blocks_used += (len + st.bs - 1) / st.bs;
    }
    st.R = st.seq_starts.back();
    st.max_seq_len = longest + c.bound_extra;
    st.max_blocks = (st.max_seq_len + st.bs - 1) / st.bs + 1; // a spare column, never read
    st.n_blocks = blocks_used + kSpareBlocks;

    // Blocks in shuffled order; the table's unused entries point far outside the pool.
    std::vector<int> order(st.n_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    st.block_tables.assign((size_t)st.S * st.max_blocks, kPoisonBlock);
    int next = 0;
    for (int s = 0; s < st.S; s++)
        for (int b = 0; b < (st.seq_lens[s] + st.bs - 1) / st.bs; b++)
            st.block_tables[(size_t)s * st.max_blocks + b] = order[next++];

    // Every pool row NaN, then each sequence's cached keys (rounded to T as kv_store would);
    // this step's keys go in through kv_store_paged_launch (run_case).
    const size_t pool_numel = (size_t)st.n_blocks * st.bs * row;
    st.k_pool.assign(pool_numel, ci_from_float<T>(NAN));
    st.v_pool.assign(pool_numel, ci_from_float<T>(NAN));
    for (int s = 0; s < st.S; s++) {
        const int len = st.seq_lens[s];
        const std::vector<float> k = cinfer_test::random_floats(rng, (size_t)len * row);
        const std::vector<float> v = cinfer_test::random_floats(rng, (size_t)len * row);
        st.k_seq.emplace_back(k.size()), st.v_seq.emplace_back(v.size());
        for (int p = 0; p < len; p++) {
            const size_t slot =
                (size_t)st.block_tables[(size_t)s * st.max_blocks + p / st.bs] * st.bs + p % st.bs;
            const bool in_step = p >= c.seqs[s].cached;
            if (in_step) st.slots.push_back((int)slot);
            for (int i = 0; i < row; i++) {
                const size_t from = (size_t)p * row + i;
                st.k_seq[s][from] = ci_to_float(ci_from_float<T>(k[from]));
                st.v_seq[s][from] = ci_to_float(ci_from_float<T>(v[from]));
                if (!in_step) {
                    st.k_pool[slot * row + i] = ci_from_float<T>(k[from]);
                    st.v_pool[slot * row + i] = ci_from_float<T>(v[from]);
                }
            }
        }
    }
    st.q = cinfer_test::random_floats(rng, (size_t)st.R * st.H * st.D, 1.5f);
    return st;
}

struct Diff {
    float lambda, lambda_init, eps;
};

// The contiguous CPU op, one sequence at a time at pos0 = its first row's position.
template <typename T>
std::vector<float> reference(const Step<T> &st, const PagedCase &c, const Diff &diff,
                             bool round_q) {
    const int H = st.H, G = st.G, D = st.D;
    ci_backend *be = nullptr;
    EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
    EXPECT_EQ(ci_backend_reserve(be, attention_cpu_scratch_bytes(st.max_seq_len, D)), CINFER_OK);
    std::vector<float> out((size_t)st.R * H * D, NAN);
    std::vector<float> q = st.q;
    if (round_q)
        for (float &x : q) x = ci_to_float(ci_from_float<T>(x));
    for (int s = 0; s < st.S; s++) {
        const int rows = c.seqs[s].rows, len = st.seq_lens[s];
        const size_t at = (size_t)st.seq_starts[s] * H * D;
        std::vector<float> k = st.k_seq[s], v = st.v_seq[s];
        ci_tensor q_s = f32_tensor(q.data() + at, {rows, H, D});
        ci_tensor out_s = f32_tensor(out.data() + at, {rows, H, D});
        ci_tensor k_s = f32_tensor(k.data(), {len, G, D}), v_s = f32_tensor(v.data(), {len, G, D});
        if (c.differential)
            diff_attention_cpu(be, &out_s, &q_s, &k_s, &v_s, len - rows, diff.lambda,
                               diff.lambda_init, diff.eps);
        else
            attention_cpu(be, &out_s, &q_s, &k_s, &v_s, len - rows);
    }
    ci_backend_free(be);
    return out;
}

// The output with guards on both sides, NaN inside: an element never written fails.
constexpr size_t kGuard = 64;
constexpr float kGuardValue = 12345.0f;

template <typename T> void run_case(const PagedCase &c, CacheType cache) {
    auto rng = std::mt19937_64(cinfer_test::fresh_seed() ^ std::hash<std::string>{}(c.name) ^
                               (uint64_t)cache);
    Step<T> st = make_step<T>(rng, c);
    const int H = st.H, G = st.G, D = st.D, row = G * D;

    // This step's keys into the pool through kv_store_paged, from F32 rows as the model has them.
    {
        std::vector<float> k_new((size_t)st.R * row), v_new((size_t)st.R * row);
        for (int s = 0; s < st.S; s++)
            for (int r = 0; r < c.seqs[s].rows; r++) {
                const size_t from = (size_t)(c.seqs[s].cached + r) * row;
                const size_t to = (size_t)(st.seq_starts[s] + r) * row;
                std::copy_n(st.k_seq[s].begin() + from, row, k_new.begin() + to);
                std::copy_n(st.v_seq[s].begin() + from, row, v_new.begin() + to);
            }
        kv_store_paged_launch<T>(st.k_pool.data(), st.v_pool.data(), k_new.data(), v_new.data(),
                                 st.R, row, st.slots.data(), nullptr);
    }

    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    const int layer = (int)(uniform(rng) * 8);
    Diff diff;
    diff.lambda_init = 0.8f - 0.6f * std::exp(-0.3f * (float)layer);
    diff.lambda = diff.lambda_init + 0.2f * (uniform(rng) - 0.5f);
    diff.eps = 1e-5f;
    const std::vector<float> expected = reference(st, c, diff, false);
    // flash's tensor cores take Q in the cache dtype
    const std::vector<float> expected_q_rounded =
        sizeof(T) == 2 ? reference(st, c, diff, true) : expected;

    attention_params p{};
    p.q = st.q.data();
    p.k_cache = st.k_pool.data();
    p.v_cache = st.v_pool.data();
    p.n_seqs = st.S;
    p.n_tokens = st.max_seq_rows;
    p.n_heads = H;
    p.n_kv_heads = G;
    p.head_dim = D;
    p.n_ctx = st.max_blocks * st.bs;
    p.pos0.host = -1; // a ragged step's positions come from seq_lens: this must not be read
    p.scale = 1.0f / std::sqrt((float)D);
    p.differential = c.differential;
    p.lambda = diff.lambda, p.lambda_init = diff.lambda_init, p.eps = diff.eps;
    p.seq_starts = st.seq_starts.data();
    p.seq_lens = st.seq_lens.data();
    p.block_tables = st.block_tables.data();
    p.block_size = st.bs;
    p.max_blocks_per_seq = st.max_blocks;

    const bool decode_only = st.R == st.S;
    std::vector<paged_kernel> kernels = {PAGED_SDPA};
    if (attention_flash_supports(D)) kernels.push_back(PAGED_FLASH); // else refused at load
    if (decode_only) kernels.push_back(PAGED_DECODE);
    // the op's own choice for a decode-only step is flash-decoding, whatever the fused kind
    EXPECT_EQ(paged_kernel_for(0, decode_only), decode_only ? PAGED_DECODE : PAGED_SDPA);
    EXPECT_EQ(paged_kernel_for(1, decode_only), decode_only ? PAGED_DECODE : PAGED_FLASH);

    for (paged_kernel kernel : kernels) {
        SCOPED_TRACE(kernel_name(kernel));
        std::vector<float> out_buffer(kGuard + expected.size() + kGuard, kGuardValue);
        float *out = out_buffer.data() + kGuard;
        std::fill(out, out + expected.size(), NAN);
        std::vector<float> workspace(
            attention_paged_decode_workspace_bytes(H, D, st.max_seq_len, st.S) / sizeof(float),
            NAN);
        p.out = out;
        p.workspace = workspace.data();
        p.workspace_bytes = workspace.size() * sizeof(float);
        ASSERT_EQ(attention_paged_launch<T>(kernel, p, st.max_seq_len, nullptr), 0);
        double worst = 0.0;
        EXPECT_TRUE(all_close(out, kernel == PAGED_FLASH ? expected_q_rounded : expected,
                              tolerance_for(kernel, c.differential, cache), &worst));
        for (size_t i = 0; i < kGuard; i++) {
            EXPECT_EQ(out_buffer[i], kGuardValue) << "write before the output at " << i;
            EXPECT_EQ(out_buffer[out_buffer.size() - 1 - i], kGuardValue) << "write past it";
        }
        std::printf("[paged] %s %s %s: max error %.3g\n", c.name, cache_name(cache),
                    kernel_name(kernel), worst);
    }

    // Eager's gather, as the op runs it: a decode-only step spans max_seq_len (the bound) and
    // must zero what lies past each length; a step with chunks spans each length exactly.
    for (int s = 0; s < st.S; s++) {
        SCOPED_TRACE("eager gather, sequence " + std::to_string(s));
        const int len = st.seq_lens[s], span = decode_only ? st.max_seq_len : len;
        std::vector<float> k((size_t)span * row, NAN), v((size_t)span * row, NAN);
        paged_gather_launch<T>(k.data(), v.data(), p, s, span, nullptr);
        std::vector<float> k_expected((size_t)span * row, 0.0f), v_expected(k_expected);
        std::copy(st.k_seq[s].begin(), st.k_seq[s].end(), k_expected.begin());
        std::copy(st.v_seq[s].begin(), st.v_seq[s].end(), v_expected.begin());
        EXPECT_TRUE(all_close(k.data(), k_expected, 0.0));
        EXPECT_TRUE(all_close(v.data(), v_expected, 0.0));
    }
}

class EmuPaged : public ::testing::TestWithParam<std::tuple<PagedCase, CacheType>> {};

TEST_P(EmuPaged, MatchesContiguousCpuReference) {
    const auto &[c, cache] = GetParam();
    switch (cache) {
    case CacheType::f32: run_case<float>(c, cache); break;
    case CacheType::bf16: run_case<__nv_bfloat16>(c, cache); break;
    case CacheType::f16: run_case<__half>(c, cache); break;
    }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<PagedCase, CacheType>> &info) {
    return std::string(std::get<0>(info.param).name) + "_" + cache_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Cases, EmuPaged,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::Values(CacheType::f32, CacheType::bf16,
                                                              CacheType::f16)),
                         case_name);

// rope_rows: row r rotated as rope_cpu rotates a one-token call at pos0 = positions[r].
TEST(EmuPagedRope, EachRowAtItsOwnPosition) {
    auto rng = std::mt19937_64(cinfer_test::fresh_seed() ^ 0x706f73);
    const int H = 4, G = 2, D = 64;
    const std::vector<int> positions = {37, 0, 1, 2, 3, 4, 5, 4093, 13, 14, 15, 16, 1};
    const int R = (int)positions.size();
    std::vector<float> inv_freq(D / 2);
    for (int i = 0; i < D / 2; i++) inv_freq[i] = std::pow(10000.0f, -2.0f * i / D);
    const ci_rope_freqs freqs = {inv_freq.data(), 1.25f};
    const std::vector<float> q_in = cinfer_test::random_floats(rng, (size_t)R * H * D);
    const std::vector<float> k_in = cinfer_test::random_floats(rng, (size_t)R * G * D);

    std::vector<float> q = q_in, k = k_in;
    rope_rows_launch(q.data(), k.data(), R, H, G, D, positions.data(), inv_freq.data(),
                     freqs.attention_scaling, nullptr);

    ci_backend *be = nullptr;
    ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
    std::vector<float> q_expected = q_in, k_expected = k_in;
    for (int r = 0; r < R; r++) {
        ci_tensor q_r = f32_tensor(q_expected.data() + (size_t)r * H * D, {1, H, D});
        ci_tensor k_r = f32_tensor(k_expected.data() + (size_t)r * G * D, {1, G, D});
        rope_cpu(be, &q_r, &k_r, positions[r], &freqs);
    }
    ci_backend_free(be);
    // the same F32 operations in the same order (cosf/sinf of the same angle): a few ulps at most
    // for a host compiler that fuses differently
    EXPECT_TRUE(all_close(q.data(), q_expected, 1e-5));
    EXPECT_TRUE(all_close(k.data(), k_expected, 1e-5));
}

// kv_store_paged: row r lands in pool row slots[r], rounded to the pool's dtype as kv_store_cpu
// stores it (F32) and kv_store_cuda rounds it; every other pool row is untouched.
template <typename T> void check_kv_store_paged() {
    auto rng = std::mt19937_64(cinfer_test::fresh_seed() ^ 0x6b76 ^ sizeof(T));
    const int G = 2, D = 32, row = G * D, bs = 8, n_blocks = 5, R = 11;
    std::vector<int> slots(n_blocks * bs);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(R);
    const std::vector<float> k_new = cinfer_test::random_floats(rng, (size_t)R * row);
    const std::vector<float> v_new = cinfer_test::random_floats(rng, (size_t)R * row);
    std::vector<T> k_pool((size_t)n_blocks * bs * row, ci_from_float<T>(NAN)), v_pool(k_pool);
    kv_store_paged_launch<T>(k_pool.data(), v_pool.data(), k_new.data(), v_new.data(), R, row,
                             slots.data(), nullptr);

    ci_backend *be = nullptr;
    ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
    std::vector<float> k_cache((size_t)R * row, NAN), v_cache(k_cache);
    std::vector<float> k_in = k_new, v_in = v_new;
    ci_tensor kc = f32_tensor(k_cache.data(), {R, G, D}),
              vc = f32_tensor(v_cache.data(), {R, G, D});
    ci_tensor kn = f32_tensor(k_in.data(), {R, G, D}), vn = f32_tensor(v_in.data(), {R, G, D});
    kv_store_cpu(be, &kc, &vc, &kn, &vn, 0);
    ci_backend_free(be);

    std::vector<int> owner(n_blocks * bs, -1);
    for (int r = 0; r < R; r++) owner[slots[r]] = r;
    size_t n_bad = 0;
    for (int slot = 0; slot < n_blocks * bs; slot++)
        for (int i = 0; i < row; i++) {
            const float k = ci_to_float(k_pool[(size_t)slot * row + i]);
            const float v = ci_to_float(v_pool[(size_t)slot * row + i]);
            if (owner[slot] < 0) {
                n_bad += !std::isnan(k) + !std::isnan(v);
                continue;
            }
            const size_t at = (size_t)owner[slot] * row + i;
            n_bad += k != ci_to_float(ci_from_float<T>(k_cache[at]));
            n_bad += v != ci_to_float(ci_from_float<T>(v_cache[at]));
        }
    EXPECT_EQ(n_bad, 0u);
}

TEST(EmuPagedKvStore, RowsLandInTheirSlots) {
    check_kv_store_paged<float>();
    check_kv_store_paged<__nv_bfloat16>();
    check_kv_store_paged<__half>();
}

} // namespace
