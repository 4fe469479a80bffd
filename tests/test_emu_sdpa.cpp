// The sdpa attention kernels (kernels/cuda/attention_sdpa.cuh), run on the CPU by the CUDA
// emulator, against the CPU reference ops attention_cpu / diff_attention_cpu.
//
// Every case runs for F32, BF16 and F16 caches. K and V are drawn in F32, rounded once to the
// cache dtype, and the reference is fed those rounded values widened back to F32 (exact for both
// 16-bit types), so kernel and reference see identical inputs and the tolerance only has to cover
// the kernel's F32 arithmetic against the reference's double: no cache dtype adds an error of its
// own here (the rounding of K and V to BF16/F16 happens before either runs, in kv_store).
#include "tests/cuda_emu/cuda_emu.h" // first: the kernel header compiles against the emulator

#include "kernels/cuda/attention_sdpa.cuh"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "kernels/cpu/ops_cpu.h"
}

namespace {

// Where a call finds its sequences' first positions.
enum class Positions {
    value,   // p.pos0.host, one for all sequences (an eager call)
    device,  // p.pos0.device, one for all (a recorded decode step: the host value is stale)
    per_seq, // p.seq_pos0[b] (batched sequences at different positions)
};

struct SdpaCase {
    const char *name;
    int n_seqs, n_tokens, n_heads, n_kv_heads, head_dim;
    std::vector<int> pos0; // per sequence; one entry for Positions::value and ::device
    Positions positions;
    bool differential;
    float q_scale = 1.5f; // larger: peakier softmax, running maxima that jump from step to step
};

// Shapes: odd lengths that are no multiple of any tile, decode (1 token) and chunks after a
// cache, GQA ratios 1/2/4/8, every head_dim the fixtures use (4, 8, 12, 16, 32, 64, 128) plus
// 256 and odd ones, batched sequences at different positions, and the recorded mode.
const SdpaCase kCases[] = {
    {"decode_g1_d64", 1, 1, 4, 4, 64, {37}, Positions::value, false},
    {"prefill_g2_d32", 1, 13, 4, 2, 32, {0}, Positions::value, false},
    {"chunk_g4_d128", 1, 5, 8, 2, 128, {19}, Positions::value, false},
    {"chunk_g8_d16", 1, 3, 8, 1, 16, {9}, Positions::value, false},
    {"prefill_d4", 1, 7, 2, 1, 4, {2}, Positions::value, false},
    {"chunk_d8", 1, 6, 2, 2, 8, {5}, Positions::value, false},
    {"chunk_g3_d12", 1, 4, 3, 1, 12, {11}, Positions::value, false},
    {"chunk_d256", 1, 2, 2, 1, 256, {6}, Positions::value, false},
    {"chunk_d5", 1, 3, 2, 2, 5, {4}, Positions::value, false},
    {"chunk_d80", 1, 3, 4, 2, 80, {8}, Positions::value, false},
    {"seqs3_g2_d32", 3, 2, 4, 2, 32, {0, 7, 23}, Positions::per_seq, false},
    {"recorded_g4_d64", 2, 1, 8, 2, 64, {17}, Positions::device, false},
    {"recorded_seqs3_g8_d128", 3, 1, 8, 1, 128, {3, 0, 29}, Positions::per_seq, false},
    {"diff_chunk_d8", 1, 5, 4, 2, 8, {3}, Positions::value, true},
    {"diff_g2_G3_d12", 1, 4, 6, 3, 12, {6}, Positions::value, true},
    {"diff_g4_G1_d16", 1, 3, 4, 1, 16, {10}, Positions::value, true},
    {"diff_g2_d64", 1, 2, 8, 4, 64, {9}, Positions::value, true},
    {"diff_recorded_d128", 2, 1, 4, 2, 128, {13}, Positions::device, true},
    {"diff_d256", 1, 2, 2, 2, 256, {3}, Positions::value, true},
    {"diff_seqs2_d32", 2, 3, 4, 4, 32, {4, 0}, Positions::per_seq, true},
    // Hundreds of keys: many steps of the online softmax, and large scores that move its maximum.
    {"long_prefill_g4_d64", 1, 37, 8, 2, 64, {150}, Positions::value, false, 6.0f},
    {"long_decode_g1_d128", 2, 1, 4, 4, 128, {300, 701}, Positions::per_seq, false, 6.0f},
    {"diff_long_g2_d32", 1, 21, 4, 2, 32, {230}, Positions::value, true, 6.0f},
};

enum class CacheType { f32, bf16, f16 };

// Unused cache rows past every sequence's length, and guard floats around the output: both hold
// values no correct kernel reads or overwrites.
constexpr int kGarbageRows = 3;
constexpr size_t kGuard = 64;
constexpr float kGuardValue = 12345.0f;

// Standard attention: the output is a convex combination of V rows computed in F32 (each
// probability within a few ulps, up to ~700 terms of |v| ≲ 4). Differential: the RMS norm divides
// by rms(O1 − λ·O2), ≳ 0.1 for these random inputs, and multiplies by (1 − λ_init) < 1, so the
// same errors grow by up to ~10. Measured: at most ~1e-6 for every case and cache dtype, so both
// bounds leave two orders of magnitude for longer sums and other seeds.
constexpr double kTolerance = 1e-4;
constexpr double kDiffTolerance = 2e-4;

int seq_pos0(const SdpaCase &c, int b) {
    return c.positions == Positions::per_seq ? c.pos0[b] : c.pos0[0];
}

template <typename T> void run_case(const SdpaCase &c) {
    auto rng =
        std::mt19937_64(cinfer_test::fresh_seed() ^ std::hash<std::string>{}(c.name) ^ sizeof(T));
    const int S = c.n_seqs, T_ = c.n_tokens, H = c.n_heads, G = c.n_kv_heads, D = c.head_dim;
    int longest = 0;
    for (int b = 0; b < S; b++) longest = std::max(longest, seq_pos0(c, b) + T_);
    const int n_ctx = longest + kGarbageRows;

    // Queries F32; caches rounded to T, with NaN in every row past each sequence's length.
    const std::vector<float> q = cinfer_test::random_floats(rng, (size_t)S * T_ * H * D, c.q_scale);
    const size_t cache_numel = (size_t)S * n_ctx * G * D;
    std::vector<T> k_cache(cache_numel), v_cache(cache_numel);
    std::vector<float> k_rounded(cache_numel), v_rounded(cache_numel);
    const std::vector<float> k_drawn = cinfer_test::random_floats(rng, cache_numel);
    const std::vector<float> v_drawn = cinfer_test::random_floats(rng, cache_numel);
    for (int b = 0; b < S; b++)
        for (int s = 0; s < n_ctx; s++)
            for (int i = 0; i < G * D; i++) {
                const size_t at = ((size_t)b * n_ctx + s) * G * D + i;
                const bool used = s < seq_pos0(c, b) + T_;
                k_cache[at] = ci_from_float<T>(used ? k_drawn[at] : NAN);
                v_cache[at] = ci_from_float<T>(used ? v_drawn[at] : NAN);
                k_rounded[at] = ci_to_float(k_cache[at]);
                v_rounded[at] = ci_to_float(v_cache[at]);
            }

    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    const int layer = (int)(uniform(rng) * 8);
    const float lambda_init = 0.8f - 0.6f * std::exp(-0.3f * (float)layer);
    const float lambda = lambda_init + 0.2f * (uniform(rng) - 0.5f);
    const float eps = 1e-5f;

    // The output with guards on both sides; NaN inside, so an element never written fails.
    std::vector<float> out_buffer(kGuard + (size_t)S * T_ * H * D + kGuard, kGuardValue);
    float *out = out_buffer.data() + kGuard;
    std::fill(out, out + (size_t)S * T_ * H * D, NAN);

    int device_pos0 = c.pos0[0];
    std::vector<int> device_seq_pos0(c.pos0);
    attention_params p{};
    p.q = q.data();
    p.k_cache = k_cache.data();
    p.v_cache = v_cache.data();
    p.out = out;
    p.n_seqs = S;
    p.n_tokens = T_;
    p.n_heads = H;
    p.n_kv_heads = G;
    p.head_dim = D;
    p.n_ctx = n_ctx;
    // A recorded call's host value is whatever it was at record time: make it wrong on purpose.
    p.pos0 = c.positions == Positions::device ? position_arg{&device_pos0, 0}
                                              : position_arg{nullptr, c.pos0[0]};
    p.seq_pos0 = c.positions == Positions::per_seq ? device_seq_pos0.data() : nullptr;
    p.scale = 1.0f / std::sqrt((float)D);
    p.differential = c.differential;
    p.lambda = lambda;
    p.lambda_init = lambda_init;
    p.eps = eps;
    cudaStream_t stream = nullptr;
    ASSERT_EQ(attention_sdpa_launch<T>(p, stream), 0);

    // The reference, one sequence at a time.
    ci_backend *be = nullptr;
    ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
    ASSERT_EQ(ci_backend_reserve(be, attention_cpu_scratch_bytes(n_ctx, D)), CINFER_OK);
    std::vector<float> expected((size_t)S * T_ * H * D);
    for (int b = 0; b < S; b++) {
        const size_t q_at = (size_t)b * T_ * H * D, cache_at = (size_t)b * n_ctx * G * D;
        ci_tensor q_view = {(void *)(q.data() + q_at), CI_F32, 3, {T_, H, D, 0}};
        ci_tensor k_view = {k_rounded.data() + cache_at, CI_F32, 3, {n_ctx, G, D, 0}};
        ci_tensor v_view = {v_rounded.data() + cache_at, CI_F32, 3, {n_ctx, G, D, 0}};
        ci_tensor out_view = {expected.data() + q_at, CI_F32, 3, {T_, H, D, 0}};
        if (c.differential)
            diff_attention_cpu(be, &out_view, &q_view, &k_view, &v_view, seq_pos0(c, b), lambda,
                               lambda_init, eps);
        else
            attention_cpu(be, &out_view, &q_view, &k_view, &v_view, seq_pos0(c, b));
    }
    ci_backend_free(be);

    const double tolerance = c.differential ? kDiffTolerance : kTolerance;
    size_t n_bad = 0, worst = 0;
    double worst_error = -1.0;
    for (size_t i = 0; i < expected.size(); i++) {
        const double error = std::fabs((double)out[i] - (double)expected[i]);
        const double ranked = std::isnan(error) ? INFINITY : error;
        if (!(error <= tolerance)) n_bad++;
        if (ranked > worst_error) worst_error = ranked, worst = i;
    }
    EXPECT_EQ(n_bad, 0u) << "worst at flat index " << worst << ": got " << out[worst]
                         << ", expected " << expected[worst] << " (error " << worst_error << ")";
    for (size_t i = 0; i < kGuard; i++) {
        EXPECT_EQ(out_buffer[i], kGuardValue) << "write before the output at " << i;
        EXPECT_EQ(out_buffer[out_buffer.size() - 1 - i], kGuardValue) << "write past the output";
    }
    std::printf("[sdpa] %s: max error %.3g\n", c.name, worst_error);
}

class EmuSdpa : public ::testing::TestWithParam<std::tuple<SdpaCase, CacheType>> {};

TEST_P(EmuSdpa, MatchesCpuReference) {
    const auto &[c, cache] = GetParam();
    switch (cache) {
    case CacheType::f32: run_case<float>(c); break;
    case CacheType::bf16: run_case<__nv_bfloat16>(c); break;
    case CacheType::f16: run_case<__half>(c); break;
    }
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<SdpaCase, CacheType>> &info) {
    static const char *cache_names[] = {"f32", "bf16", "f16"};
    return std::string(std::get<0>(info.param).name) + "_" +
           cache_names[(int)std::get<1>(info.param)];
}

INSTANTIATE_TEST_SUITE_P(Cases, EmuSdpa,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::Values(CacheType::f32, CacheType::bf16,
                                                              CacheType::f16)),
                         case_name);

// Shapes the kernel was not built for are refused before anything is launched.
TEST(EmuSdpaLimits, RefusesWhatItDoesNotRun) {
    EXPECT_TRUE(attention_sdpa_supports(1) && attention_sdpa_supports(256));
    EXPECT_FALSE(attention_sdpa_supports(0) || attention_sdpa_supports(257));
    attention_params p{};
    p.n_seqs = p.n_tokens = 1;
    p.n_heads = 4;
    p.n_kv_heads = 2;
    p.n_ctx = 8;
    cudaStream_t stream = nullptr;
    p.head_dim = 257;
    EXPECT_NE(attention_sdpa_launch<float>(p, stream), 0);
    p.head_dim = 0;
    EXPECT_NE(attention_sdpa_launch<float>(p, stream), 0);
    p.head_dim = 64;
    p.n_kv_heads = 3; // H not a multiple of G
    EXPECT_NE(attention_sdpa_launch<float>(p, stream), 0);
    p.n_heads = 3;
    p.n_kv_heads = 1;
    p.differential = 1; // differential attention pairs the heads: H must be even
    EXPECT_NE(attention_sdpa_launch<__half>(p, stream), 0);
}

} // namespace
