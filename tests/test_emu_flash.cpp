// The flash attention kernels (kernels/cuda/attention_flash.cuh) run on the CPU emulator, through
// their real launcher, against the CPU reference ops attention_cpu and diff_attention_cpu fed the
// same inputs as the kernel sees them (Q, K and V already rounded to the cache dtype).
//
// Every call fills the cache rows past each sequence's length with NaN (a CUDA graph launches the
// kernels over the whole cache, whose tail holds anything), the output with NaN (so an element
// never written fails), and a NaN-poisoned guard after the output must come back untouched (rows
// past n_tokens in the last query block must never be written).
#include "tests/cuda_emu/cuda_emu.h"

#include "kernels/cuda/attention_flash.cuh"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "common/tensor.h"
#include "kernels/cpu/ops_cpu.h"
}

namespace {

using cinfer_test::fresh_seed;

// One call: shapes, each sequence's first position, and how the kernel learns it.
enum class Positions {
    host,        // p.pos0.host, every sequence alike (an eager call)
    device,      // p.pos0.device, every sequence alike (a recorded call)
    per_sequence // p.seq_pos0[b] (device memory), each sequence its own
};

struct FlashCase {
    const char *name;
    int n_seqs, n_tokens, n_heads, n_kv_heads, head_dim;
    std::vector<int> pos0; // per sequence (all equal unless per_sequence)
    Positions positions;
    bool differential;
};

enum class Dtype { f32, bf16, f16 };

const char *dtype_name(Dtype d) {
    return d == Dtype::f32 ? "f32" : d == Dtype::bf16 ? "bf16" : "f16";
}

// The unit roundoff of the dtype P is rounded to before P·V (F32 is never rounded: the SIMT kernel
// multiplies in F32).
double unit_roundoff(Dtype d) {
    return d == Dtype::bf16 ? std::ldexp(1.0, -8) : d == Dtype::f16 ? std::ldexp(1.0, -11) : 0.0;
}

// Host copies of what the kernel reads, rounded to T, and their F32 values for the reference.
template <typename T> struct Inputs {
    std::vector<float> q;         // [n_seqs, n_tokens, H, D], as given to the kernel (unrounded)
    std::vector<float> q_rounded; // the same rounded to T: what the kernel computes with
    std::vector<T> k, v;          // [n_seqs, n_ctx, G, D]
    std::vector<float> k_f32, v_f32;
};

template <typename T> float round_to(float x) { return ci_to_float(ci_from_float<T>(x)); }

template <typename T> Inputs<T> make_inputs(std::mt19937_64 &rng, const FlashCase &c, int n_ctx) {
    Inputs<T> in;
    const int64_t H = c.n_heads, G = c.n_kv_heads, D = c.head_dim;
    in.q = cinfer_test::random_floats(rng, (size_t)(c.n_seqs * c.n_tokens * H * D));
    in.q_rounded.resize(in.q.size());
    for (size_t i = 0; i < in.q.size(); i++) in.q_rounded[i] = round_to<T>(in.q[i]);
    const size_t cache_size = (size_t)(c.n_seqs * n_ctx * G * D);
    for (auto *cache : {&in.k_f32, &in.v_f32}) {
        *cache = cinfer_test::random_floats(rng, cache_size);
        for (int b = 0; b < c.n_seqs; b++) {
            const int64_t length = c.pos0[b] + c.n_tokens;
            for (int64_t i = length * G * D; i < n_ctx * G * D; i++)
                (*cache)[(size_t)(b * n_ctx * G * D + i)] = NAN; // past the sequence's length
        }
        for (float &x : *cache) x = round_to<T>(x);
    }
    in.k.resize(cache_size);
    in.v.resize(cache_size);
    for (size_t i = 0; i < cache_size; i++) {
        in.k[i] = ci_from_float<T>(in.k_f32[i]);
        in.v[i] = ci_from_float<T>(in.v_f32[i]);
    }
    return in;
}

ci_tensor f32_view(float *data, std::initializer_list<int64_t> shape) {
    ci_tensor t{};
    t.data = data;
    t.dtype = CI_F32;
    for (int64_t d : shape) t.shape[t.n_dims++] = d;
    return t;
}

// The softmax weights of one (sequence, query, head) in double, for the error bounds, and in
// max_abs_score the largest scale·Σ_d |q_d·k_d| (what bounds the F32 dot products' error).
std::vector<double> softmax_row(const float *q, const float *k_head, int64_t k_stride, int D,
                                int n_keys, double *max_abs_score) {
    std::vector<double> a((size_t)n_keys);
    double max_score = -INFINITY, sum = 0.0;
    *max_abs_score = 0.0;
    for (int s = 0; s < n_keys; s++) {
        double dot = 0.0, abs_dot = 0.0;
        for (int d = 0; d < D; d++) {
            dot += (double)q[d] * k_head[s * k_stride + d];
            abs_dot += std::fabs((double)q[d] * k_head[s * k_stride + d]);
        }
        a[(size_t)s] = dot / std::sqrt((double)D);
        max_score = std::max(max_score, a[(size_t)s]);
        *max_abs_score = std::max(*max_abs_score, abs_dot / std::sqrt((double)D));
    }
    for (double &x : a) sum += (x = std::exp(x - max_score));
    for (double &x : a) x /= sum;
    return a;
}

struct Param {
    FlashCase c;
    Dtype dtype;
};

// What gtest prints for a parameter (ctest's names carry it too).
void PrintTo(const Param &param, std::ostream *os) {
    *os << param.c.name << " " << dtype_name(param.dtype);
}

class Flash : public ::testing::TestWithParam<Param> {};

template <typename T> void run_case(const FlashCase &c, Dtype dtype) {
    std::mt19937_64 rng(fresh_seed() ^ std::hash<std::string>{}(c.name) ^ (uint64_t)dtype);
    const int H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, group = H / G;
    int n_ctx = 0; // a few rows beyond the longest sequence, NaN like every row past a length
    for (int b = 0; b < c.n_seqs; b++) n_ctx = std::max(n_ctx, c.pos0[b] + c.n_tokens + 3);
    const Inputs<T> in = make_inputs<T>(rng, c, n_ctx);

    // the kernel's call; the output followed by a guard, all NaN
    const size_t out_size = (size_t)c.n_seqs * c.n_tokens * H * D, guard = 4096;
    std::vector<float> out(out_size + guard, NAN);
    const int shared_pos0 = c.pos0[0];
    attention_params p{};
    p.q = in.q.data();
    p.k_cache = in.k.data();
    p.v_cache = in.v.data();
    p.out = out.data();
    p.n_seqs = c.n_seqs;
    p.n_tokens = c.n_tokens;
    p.n_heads = H;
    p.n_kv_heads = G;
    p.head_dim = D;
    p.n_ctx = n_ctx;
    p.pos0.host = c.positions == Positions::host ? shared_pos0 : -1000; // must not be read
    p.pos0.device = c.positions == Positions::device ? &shared_pos0 : nullptr;
    p.seq_pos0 = c.positions == Positions::per_sequence ? c.pos0.data() : nullptr;
    p.scale = 1.0f / std::sqrt((float)D);
    p.differential = c.differential;
    std::uniform_real_distribution<float> lambda_dist(0.1f, 0.9f);
    p.lambda = lambda_dist(rng);
    p.lambda_init = (float)(0.8 - 0.6 * std::exp(-0.3 * (int)(rng() % 32)));
    p.eps = 1e-5f;
    ASSERT_EQ(attention_flash_launch<T>(p, nullptr), 0);
    for (size_t i = out_size; i < out.size(); i++)
        ASSERT_TRUE(std::isnan(out[i])) << "written past the output at " << i - out_size;

    ci_backend *be = nullptr;
    ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK);
    ASSERT_EQ(ci_backend_reserve(be, attention_cpu_scratch_bytes(n_ctx, D)), CINFER_OK);
    std::vector<float> expected(out_size);
    std::vector<double> tolerance(out_size);
    const double u = unit_roundoff(dtype);
    const int64_t row = (int64_t)H * D, cache_row = (int64_t)G * D;
    for (int b = 0; b < c.n_seqs; b++) {
        const float *q = in.q_rounded.data() + (size_t)b * c.n_tokens * row;
        const float *k = in.k_f32.data() + (size_t)b * n_ctx * cache_row;
        const float *v = in.v_f32.data() + (size_t)b * n_ctx * cache_row;
        ci_tensor q_view = f32_view(const_cast<float *>(q), {c.n_tokens, H, D});
        ci_tensor k_view = f32_view(const_cast<float *>(k), {n_ctx, G, D});
        ci_tensor v_view = f32_view(const_cast<float *>(v), {n_ctx, G, D});
        float *y = expected.data() + (size_t)b * c.n_tokens * row;
        ci_tensor out_view = f32_view(y, {c.n_tokens, H, D});
        if (c.differential)
            diff_attention_cpu(be, &out_view, &q_view, &k_view, &v_view, c.pos0[b], p.lambda,
                               p.lambda_init, p.eps);
        else
            attention_cpu(be, &out_view, &q_view, &k_view, &v_view, c.pos0[b]);

        // Error bounds. The kernel's only rounding beyond F32 arithmetic is P's, to T, before
        // P·V (Q, K, V arrive rounded to both sides; the mma multiplies T exactly and adds in
        // F32): round(p_s) = p_s·(1 + δ_s), |δ_s| ≤ u, so |ΔO_d| ≤ u·Σ_s A_s·|V_s,d|, the
        // output's magnitude M_d before cancellation. F16 adds absolute errors up to 2^-25 for
        // probabilities below its normal range (p < 2^-14 of the running max; l ≥ 1), so
        // n_keys·2^-25·max|V| on top. F32 arithmetic: a score's dot product errs by at most
        // D·2^-24·scale·Σ|q·k| (γ_D), which moves each A_s by at most twice that relatively;
        // exp2f, the rescaling across tiles and the final division add 16·2^-24.
        // Differential: Y = c·O/r with r = sqrt(mean O² + eps); |Δr| ≤ rms(ΔO) ≤ rms(ΔM), so
        // |ΔY_j| ≤ c/r·(|ΔO_j| + |O_j|·rms(ΔO)/r).
        const double f32_ulp = std::ldexp(1.0, -24);
        for (int t = 0; t < c.n_tokens; t++) {
            const int n_keys = c.pos0[b] + t + 1;
            // m ← the bound on |ΔO| of head h's output over the values of KV head kv_values;
            // o ← that output itself, in double
            auto bound = [&](int h, int kv_values, std::vector<double> &m, std::vector<double> &o) {
                double max_abs_score;
                const auto a = softmax_row(q + t * row + h * D, k + (h / group) * D, cache_row, D,
                                           n_keys, &max_abs_score);
                const double relative = u + 2 * D * f32_ulp * max_abs_score + 16 * f32_ulp;
                double max_v = 0.0;
                for (int d = 0; d < D; d++) {
                    double magnitude = 0.0, value = 0.0;
                    for (int s = 0; s < n_keys; s++) {
                        const double x = v[s * cache_row + kv_values * D + d];
                        value += a[(size_t)s] * x;
                        magnitude += a[(size_t)s] * std::fabs(x);
                        max_v = std::max(max_v, std::fabs(x));
                    }
                    m[(size_t)d] = magnitude;
                    o[(size_t)d] = value;
                }
                const double subnormal = dtype == Dtype::f16 ? n_keys * std::ldexp(max_v, -25) : 0;
                for (double &x : m) x = relative * x + subnormal;
            };
            std::vector<double> m((size_t)D), m2((size_t)D), o1((size_t)D), o2((size_t)D);
            if (!c.differential) {
                for (int h = 0; h < H; h++) {
                    bound(h, h / group, m, o1);
                    for (int d = 0; d < D; d++)
                        tolerance[(size_t)((b * c.n_tokens + t) * row + h * D + d)] = m[(size_t)d];
                }
                continue;
            }
            for (int pair = 0; pair < H / 2; pair++) {
                std::vector<double> delta_o(2 * (size_t)D), o(2 * (size_t)D);
                for (int half = 0; half < 2; half++) {
                    const int kv_values = (pair + half * H / 2) / group;
                    bound(pair, kv_values, m, o1);          // A1 · V half
                    bound(pair + H / 2, kv_values, m2, o2); // A2 · V half
                    for (int d = 0; d < D; d++) {
                        delta_o[(size_t)(half * D + d)] = m[(size_t)d] + p.lambda * m2[(size_t)d];
                        o[(size_t)(half * D + d)] = o1[(size_t)d] - p.lambda * o2[(size_t)d];
                    }
                }
                double mean_o2 = 0.0, mean_dm2 = 0.0;
                for (int j = 0; j < 2 * D; j++) {
                    mean_o2 += o[(size_t)j] * o[(size_t)j] / (2 * D);
                    mean_dm2 += delta_o[(size_t)j] * delta_o[(size_t)j] / (2 * D);
                }
                const double cn = 1.0 - p.lambda_init, r = std::sqrt(mean_o2 + p.eps);
                for (int j = 0; j < 2 * D; j++)
                    tolerance[(size_t)((b * c.n_tokens + t) * row + pair * 2 * D + j)] =
                        cn / r *
                        (delta_o[(size_t)j] + std::fabs(o[(size_t)j]) * std::sqrt(mean_dm2) / r);
            }
        }
    }
    ci_backend_free(be);

    size_t n_bad = 0, worst = 0;
    double worst_ratio = -1.0, max_error = 0.0;
    for (size_t i = 0; i < out_size; i++) {
        const double error = std::fabs((double)out[i] - expected[i]);
        const double ratio = std::isnan(error) ? INFINITY : error / tolerance[i];
        if (!(error <= tolerance[i])) n_bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
        if (!std::isnan(error)) max_error = std::max(max_error, error);
    }
    std::printf("[flash] %s %s: max |error| %.3g, worst error/bound %.3g\n", c.name,
                dtype_name(dtype), max_error, worst_ratio);
    // F32 against the reference fed identical inputs: within 1e-4 absolute, besides the bound
    if (dtype == Dtype::f32) {
        EXPECT_LE(max_error, 1e-4);
    }
    EXPECT_EQ(n_bad, 0u) << "worst at flat index " << worst << ": got " << out[worst]
                         << ", expected " << expected[worst] << " ± " << tolerance[worst];
}

TEST_P(Flash, MatchesCpuReference) {
    const Param &param = GetParam();
    switch (param.dtype) {
    case Dtype::f32: run_case<float>(param.c, param.dtype); break;
    case Dtype::bf16: run_case<__nv_bfloat16>(param.c, param.dtype); break;
    case Dtype::f16: run_case<__half>(param.c, param.dtype); break;
    }
}

// Small enough for the emulator (every CUDA thread a fiber on one core), covering: head dims
// 4, 8, 12, 16, 32, 40, 64, 128 (every D_PAD, padded and exact, 16-byte copies and plain ones);
// GQA ratios 1, 2, 4, 8; one query and many, lengths off the tile sizes, two query blocks, cache
// offsets; several sequences with their own positions; the recorded (device position) modes.
const FlashCase kCases[] = {
    {"d16_h4g4_decode", 1, 1, 4, 4, 16, {37}, Positions::host, false},
    {"d32_h8g4_two_blocks_seq_pos0", 2, 70, 8, 4, 32, {0, 13}, Positions::per_sequence, false},
    {"d64_h8g2_offset", 1, 5, 8, 2, 64, {130}, Positions::host, false},
    {"d128_h8g1_device_pos0", 1, 17, 8, 1, 128, {50}, Positions::device, false},
    {"d40_h2g1_padded", 2, 9, 2, 1, 40, {66, 66}, Positions::device, false},
    {"d12_h4g2", 1, 11, 4, 2, 12, {20}, Positions::host, false},
    {"d8_h4g1", 3, 3, 4, 1, 8, {5, 0, 61}, Positions::per_sequence, false},
    {"d4_h2g1", 1, 7, 2, 1, 4, {70}, Positions::host, false},
    {"diff_d16_h4g2", 1, 13, 4, 2, 16, {40}, Positions::host, true},
    {"diff_d32_h4g1_shared_kv", 2, 6, 4, 1, 32, {3, 70}, Positions::per_sequence, true},
    {"diff_d64_h8g4", 1, 66, 8, 4, 64, {0}, Positions::device, true},
    {"diff_d128_h4g2", 1, 9, 4, 2, 128, {70}, Positions::host, true},
    {"diff_d12_h4g4", 1, 1, 4, 4, 12, {30}, Positions::host, true},
};

std::vector<Param> all_params() {
    std::vector<Param> params;
    for (const FlashCase &c : kCases)
        for (Dtype d : {Dtype::bf16, Dtype::f16, Dtype::f32}) params.push_back({c, d});
    return params;
}

INSTANTIATE_TEST_SUITE_P(Cases, Flash, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param> &info) {
                             return std::string(info.param.c.name) + "_" +
                                    dtype_name(info.param.dtype);
                         });

// Shapes the kernels were not built for, and grids a GPU cannot launch (y = heads or pairs,
// z = sequences, at most 65535 each), are refused before anything is launched: on a GPU such a
// launch fails with cudaErrorInvalidConfiguration and CUDA_CHECK_LAUNCH aborts.
TEST(FlashLimits, RefusesWhatItDoesNotRun) {
    EXPECT_TRUE(attention_flash_supports(1) && attention_flash_supports(128));
    EXPECT_FALSE(attention_flash_supports(0) || attention_flash_supports(129));
    attention_params p{};
    p.n_seqs = 1, p.n_tokens = 2, p.n_heads = 4, p.n_kv_heads = 2, p.head_dim = 129, p.n_ctx = 8;
    EXPECT_NE(attention_flash_launch<float>(p, nullptr), 0);
    p.head_dim = 64, p.n_kv_heads = 3; // H not a multiple of G
    EXPECT_NE(attention_flash_launch<__nv_bfloat16>(p, nullptr), 0);
    p.n_heads = 3, p.n_kv_heads = 1, p.differential = 1; // pairs need an even H
    EXPECT_NE(attention_flash_launch<__half>(p, nullptr), 0);
    // nothing is read or written before the refusal, so no buffers
    p.n_heads = 4, p.n_kv_heads = 2, p.differential = 0, p.n_seqs = 65536;
    EXPECT_NE(attention_flash_launch<__nv_bfloat16>(p, nullptr), 0);
    EXPECT_NE(attention_flash_launch<float>(p, nullptr), 0);
    p.n_seqs = 1, p.n_heads = 65536, p.n_kv_heads = 1;
    EXPECT_NE(attention_flash_launch<__half>(p, nullptr), 0);
    p.differential = 1; // 32768 pairs fit grid y, but the sequences do not fit z
    p.n_seqs = 65536;
    EXPECT_NE(attention_flash_launch<float>(p, nullptr), 0);
}

} // namespace
