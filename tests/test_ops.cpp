// Each CPU reference op against a plain double-precision version written here, on fresh random
// inputs every run (CINFER_TEST_SEED replays one), over many shapes including odd ones.
//
// The references are naive loops in double that follow docs/MODEL_MATH.md and transformers literally;
// they never call the code under test. The CPU ops accumulate in double and round once to F32
// (kernels/cpu/ops_cpu.h), so most tolerances are a few F32 ulps of the natural magnitude of the
// result; each is derived beside its test.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "common/tensor.h"
#include "models/model.h"
}

using cinfer_test::fresh_seed;

// How gtest, and so ctest's test names, print the enum parameters (ADL finds these in the global
// namespace, where the C enums live).
static const char *activation_name(ci_activation act) {
    switch (act) {
    case CI_ACT_SILU: return "silu";
    case CI_ACT_GELU: return "gelu";
    case CI_ACT_GELU_TANH: return "gelu_tanh";
    case CI_ACT_RELU: return "relu";
    }
    return "unknown";
}
static void PrintTo(ci_activation act, std::ostream *os) { *os << activation_name(act); }
static void PrintTo(ci_dtype dtype, std::ostream *os) { *os << ci_dtype_name(dtype); }

namespace {

constexpr double kUlp = 0x1.0p-24; // unit roundoff of F32: half an ulp at 1

// ---- inputs ---------------------------------------------------------------------------------

// The run's fresh seed mixed with the test's name: each test draws its own inputs, and the whole
// run replays with CINFER_TEST_SEED.
std::mt19937_64 test_rng() {
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string name = std::string(info->test_suite_name()) + "." + info->name();
    return std::mt19937_64(fresh_seed() ^ std::hash<std::string>{}(name));
}

// IEEE half precision, decoded from its fields with ldexp (independent of common/tensor.c).
double f16_value(uint16_t h) {
    const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double magnitude;
    if (exponent == 0)
        magnitude = std::ldexp((double)mantissa, -24); // zero, subnormal
    else if (exponent == 31)
        magnitude = mantissa ? NAN : INFINITY;
    else
        magnitude = std::ldexp((double)(1024 + mantissa), exponent - 25);
    return sign ? -magnitude : magnitude;
}

// bfloat16: 8 exponent bits like F32, 7 mantissa bits.
double bf16_value(uint16_t b) {
    const int sign = b >> 15, exponent = (b >> 7) & 0xff, mantissa = b & 0x7f;
    double magnitude;
    if (exponent == 0)
        magnitude = std::ldexp((double)mantissa, -133);
    else if (exponent == 255)
        magnitude = mantissa ? NAN : INFINITY;
    else
        magnitude = std::ldexp((double)(128 + mantissa), exponent - 134);
    return sign ? -magnitude : magnitude;
}

// A tensor in host memory in any weight dtype, with its values widened by the test's decoders.
struct HostTensor {
    std::vector<unsigned char> bytes;
    std::vector<double> values; // exactly what the stored elements mean
    ci_tensor view{};

    HostTensor(ci_dtype dtype, std::vector<int64_t> shape) {
        view.dtype = dtype;
        view.n_dims = (int)shape.size();
        int64_t n = 1;
        for (size_t i = 0; i < shape.size(); i++) n *= (view.shape[i] = shape[i]);
        bytes.resize((size_t)n * ci_dtype_size(dtype));
        values.resize((size_t)n);
        view.data = bytes.data();
    }
    float *f32() { return reinterpret_cast<float *>(bytes.data()); }
    size_t size() const { return values.size(); }
};

// Random weights: normal F32, or random 16-bit patterns spanning ~10 binades with every mantissa
// bit used (F16 includes subnormals), never zero.
HostTensor random_tensor(std::mt19937_64 &rng, ci_dtype dtype, std::vector<int64_t> shape,
                         float scale = 1.0f) {
    HostTensor t(dtype, std::move(shape));
    std::uniform_int_distribution<int> bit(0, 1);
    std::normal_distribution<float> normal(0.0f, scale);
    for (size_t i = 0; i < t.size(); i++) {
        if (dtype == CI_F32) {
            float v = 0.0f;
            while (v == 0.0f) v = normal(rng);
            t.f32()[i] = v;
            t.values[i] = v;
            continue;
        }
        uint16_t h;
        if (dtype == CI_BF16) {
            const int exponent = std::uniform_int_distribution<int>(127 - 8, 127 + 1)(rng);
            const int mantissa = std::uniform_int_distribution<int>(0, 0x7f)(rng);
            h = (uint16_t)(bit(rng) << 15 | exponent << 7 | mantissa);
        } else {
            const bool subnormal = std::uniform_int_distribution<int>(0, 99)(rng) == 0;
            const int exponent = subnormal ? 0 : std::uniform_int_distribution<int>(7, 16)(rng);
            const int mantissa = std::uniform_int_distribution<int>(subnormal, 0x3ff)(rng);
            h = (uint16_t)(bit(rng) << 15 | exponent << 10 | mantissa);
        }
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
        t.values[i] = dtype == CI_BF16 ? bf16_value(h) : f16_value(h);
    }
    return t;
}

// ---- the backend ----------------------------------------------------------------------------

struct Backend {
    ci_backend *be = nullptr;
    explicit Backend(int n_threads) {
        EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, n_threads, &be), CINFER_OK)
            << cinfer_last_error();
    }
    ~Backend() { ci_backend_free(be); }
    Backend(const Backend &) = delete;
    Backend &operator=(const Backend &) = delete;

    // Reserves the workspace the backend itself asks for a model whose widest linear input is
    // widest_input, with n_ctx tokens of context: the ops assert that it is enough, so the test
    // also checks the backend's own estimate.
    void reserve(int64_t widest_input, int n_ctx, int head_dim) {
        ci_config config{};
        config.hidden_size = config.intermediate_size = (int)widest_input;
        config.n_heads = config.n_kv_heads = 1;
        config.head_dim = head_dim;
        ASSERT_EQ(ci_backend_reserve(be, be->ops->workspace_bytes(be, &config, n_ctx, 1)),
                  CINFER_OK)
            << cinfer_last_error();
    }
    operator ci_backend *() const { return be; }
};

// ---- comparing ------------------------------------------------------------------------------

// Every element within its own tolerance; on failure, how many are not and the worst one.
// NaN fails, so an output element the op never wrote (poisoned with NaN) fails too.
::testing::AssertionResult all_close(const float *actual, const std::vector<double> &expected,
                                     const std::vector<double> &tolerance) {
    size_t n_bad = 0, worst = 0;
    double worst_ratio = -1.0;
    for (size_t i = 0; i < expected.size(); i++) {
        const double error = std::fabs((double)actual[i] - expected[i]);
        const double ratio = std::isnan(error) ? INFINITY : error / tolerance[i];
        if (!(error <= tolerance[i])) n_bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    if (n_bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << n_bad << " of " << expected.size()
           << " elements out of tolerance; worst at flat index " << worst << ": got "
           << actual[worst] << ", expected " << expected[worst] << " ± " << tolerance[worst]
           << " (error " << worst_ratio << "x the tolerance)";
}

std::vector<float> nan_filled(size_t n) { return std::vector<float>(n, NAN); }

// An F32 view of a buffer the test owns (the ops' outputs).
ci_tensor f32_view(std::vector<float> &buffer, std::initializer_list<int64_t> shape) {
    ci_tensor t{};
    t.data = buffer.data();
    t.dtype = CI_F32;
    for (int64_t d : shape) t.shape[t.n_dims++] = d;
    return t;
}

std::string dtype_name(ci_dtype dtype) { return ci_dtype_name(dtype); }

const ci_dtype kWeightDtypes[] = {CI_F32, CI_BF16, CI_F16};

// ---- matmul ---------------------------------------------------------------------------------

struct MatmulParams {
    ci_dtype weight;
    bool has_bias;
    ci_dtype bias;
    int n_threads;
    bool accumulate;
};

std::string matmul_name(const MatmulParams &p) {
    return "W" + dtype_name(p.weight) + "_" +
           (p.has_bias ? "bias" + dtype_name(p.bias) : "nobias") + "_" +
           std::to_string(p.n_threads) + "threads" + (p.accumulate ? "_accumulate" : "");
}
void PrintTo(const MatmulParams &p, std::ostream *os) {
    *os << "W " << dtype_name(p.weight) << ", bias " << (p.has_bias ? dtype_name(p.bias) : "none")
        << ", " << p.n_threads << " threads" << (p.accumulate ? ", accumulate" : "");
}

std::vector<MatmulParams> all_matmul_params() {
    std::vector<MatmulParams> params;
    for (ci_dtype weight : kWeightDtypes)
        for (int n_threads : {1, 2})
            for (bool accumulate : {false, true}) {
                params.push_back({weight, false, CI_F32, n_threads, accumulate});
                for (ci_dtype bias : kWeightDtypes)
                    params.push_back({weight, true, bias, n_threads, accumulate});
            }
    return params;
}

class Matmul : public ::testing::TestWithParam<MatmulParams> {};

// For each projection i of one call: out_i (+)= Σ_k x[t, k]·W_i[n, k] + b_i[n]. The op sums in
// double and rounds the dot product to F32 once, then adds the F32 bias with one more rounding (as
// torch adds the bias to the F32 product): two roundings of values no larger than Σ|x·w| + |b|,
// so 2^-23 of that sum bounds the error, and 2^-22 leaves a factor of two. Summing in F32 would
// err by up to K·2^-24 of it. Accumulating adds what out held with one more rounding, of at most
// 2^-24 of |out| + Σ|x·w| + |b|. Three projections of different widths share each call, so that
// the op's handling of several outputs is checked along with the arithmetic.
TEST_P(Matmul, MatchesDoubleDotProducts) {
    const MatmulParams p = GetParam();
    auto rng = test_rng();
    Backend be(p.n_threads);
    // K and N odd or otherwise not multiples of the kernel's row blocks and vector widths, so
    // that every tail is taken; N = 1000 splits unevenly over threads.
    const std::pair<int64_t, int64_t> kn[] = {{1, 1},     {1, 1000},  {7, 33},    {33, 7},
                                              {257, 257}, {1000, 33}, {33, 1000}, {1000, 257}};
    for (int64_t T : {1, 3, 17, 64}) {
        for (auto [K, N] : kn) {
            SCOPED_TRACE("T=" + std::to_string(T) + " K=" + std::to_string(K) +
                         " N=" + std::to_string(N));
            be.reserve(K, 1, 1);
            HostTensor x = random_tensor(rng, CI_F32, {T, K});
            const int64_t widths[CI_MAX_PROJECTIONS] = {N, N % 7 + 1, N + 5};
            std::vector<HostTensor> w, b, before;
            std::vector<std::vector<float>> out;
            std::vector<ci_tensor> out_views(CI_MAX_PROJECTIONS);
            std::vector<ci_projection> projections(CI_MAX_PROJECTIONS);
            for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                w.push_back(random_tensor(rng, p.weight, {widths[i], K}));
                b.push_back(random_tensor(rng, p.bias, {widths[i]}));
                before.push_back(random_tensor(rng, CI_F32, {T, widths[i]}));
                out.push_back(p.accumulate ? std::vector<float>(before[i].f32(),
                                                                before[i].f32() + T * widths[i])
                                           : nan_filled((size_t)(T * widths[i])));
            }
            for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                out_views[i] = f32_view(out[i], {T, widths[i]});
                projections[i] = {&out_views[i], &w[i].view, p.has_bias ? &b[i].view : nullptr};
            }
            be.be->ops->matmul(be, &x.view, projections.data(), CI_MAX_PROJECTIONS, p.accumulate);

            for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                const int64_t Ni = widths[i];
                std::vector<double> expected((size_t)(T * Ni)), tolerance((size_t)(T * Ni));
                for (int64_t t = 0; t < T; t++) {
                    for (int64_t n = 0; n < Ni; n++) {
                        double sum = 0.0, magnitude = 0.0;
                        for (int64_t k = 0; k < K; k++) {
                            const double term = x.values[t * K + k] * w[i].values[n * K + k];
                            sum += term;
                            magnitude += std::fabs(term);
                        }
                        if (p.has_bias) {
                            sum += b[i].values[n];
                            magnitude += std::fabs(b[i].values[n]);
                        }
                        double bound = 4 * kUlp * magnitude;
                        if (p.accumulate) {
                            const double held = before[i].values[t * Ni + n];
                            sum += held;
                            bound += 2 * kUlp * (std::fabs(held) + magnitude);
                        }
                        expected[t * Ni + n] = sum;
                        tolerance[t * Ni + n] = bound;
                    }
                }
                EXPECT_TRUE(all_close(out[i].data(), expected, tolerance)) << "projection " << i;
            }
        }
    }
}

// The residual add in torch's order: out + (x·Wᵀ + b), the product and bias rounded to F32 first.
// So accumulating must equal, bit for bit, the product alone added to what out held.
class MatmulAccumulate : public ::testing::TestWithParam<MatmulParams> {};

TEST_P(MatmulAccumulate, AddsInTorchsOrder) {
    const MatmulParams p = GetParam();
    auto rng = test_rng();
    Backend be(p.n_threads);
    const int64_t T = 5, K = 300, N = 77;
    be.reserve(K, 1, 1);
    HostTensor x = random_tensor(rng, CI_F32, {T, K}), w = random_tensor(rng, p.weight, {N, K});
    HostTensor b = random_tensor(rng, p.bias, {N}), held = random_tensor(rng, CI_F32, {T, N});
    std::vector<float> product = nan_filled((size_t)(T * N));
    std::vector<float> sum(held.f32(), held.f32() + T * N);
    ci_tensor product_view = f32_view(product, {T, N}), sum_view = f32_view(sum, {T, N});
    const ci_tensor *bias = p.has_bias ? &b.view : nullptr;
    ci_matmul(be, &product_view, &x.view, &w.view, bias);
    ci_matmul_add(be, &sum_view, &x.view, &w.view, bias);
    for (int64_t i = 0; i < T * N; i++)
        ASSERT_EQ(sum[(size_t)i], held.f32()[i] + product[(size_t)i]) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, Matmul, ::testing::ValuesIn(all_matmul_params()),
                         [](const ::testing::TestParamInfo<MatmulParams> &info) {
                             return matmul_name(info.param);
                         });
INSTANTIATE_TEST_SUITE_P(AllDtypes, MatmulAccumulate, ::testing::ValuesIn([] {
                             std::vector<MatmulParams> params;
                             for (const MatmulParams &p : all_matmul_params())
                                 if (p.accumulate) params.push_back(p);
                             return params;
                         }()),
                         [](const ::testing::TestParamInfo<MatmulParams> &info) {
                             return matmul_name(info.param);
                         });

// ---- rmsnorm, embedding ---------------------------------------------------------------------

class PerWeightDtype : public ::testing::TestWithParam<ci_dtype> {};
using Rmsnorm = PerWeightDtype;
using Embedding = PerWeightDtype;

std::string weight_dtype_name(const ::testing::TestParamInfo<ci_dtype> &info) {
    return dtype_name(info.param);
}

// out = w ⊙ x / sqrt(mean(x²) + eps). The op rounds 1/rms, x·(1/rms) and w·(...) to F32: three
// relative roundings of 2^-24, so 4·2^-24 of |out| bounds the error (plus the smallest subnormal,
// for products that underflow). x spans scales where eps dominates (1e-3, mean x² ≈ 1e-6) and
// where it vanishes.
TEST_P(Rmsnorm, MatchesDoubleFormula) {
    const ci_dtype dtype = GetParam();
    auto rng = test_rng();
    Backend be(2);
    const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {3, 7}, {17, 33}, {5, 1000}, {2, 4097}};
    for (auto [T, E] : shapes) {
        for (float eps : {1e-6f, 1e-5f, 1e-2f}) {
            for (float x_scale : {1e-3f, 1.0f, 100.0f}) {
                SCOPED_TRACE("T=" + std::to_string(T) + " E=" + std::to_string(E) +
                             " eps=" + std::to_string(eps) + " x_scale=" + std::to_string(x_scale));
                be.reserve(E, 1, 1);
                HostTensor x = random_tensor(rng, CI_F32, {T, E}, x_scale);
                HostTensor w = random_tensor(rng, dtype, {E});
                std::vector<float> out = nan_filled((size_t)(T * E));
                ci_tensor out_view = f32_view(out, {T, E});
                ci_rmsnorm(be, &out_view, &x.view, &w.view, eps);

                std::vector<double> expected((size_t)(T * E)), tolerance((size_t)(T * E));
                for (int64_t t = 0; t < T; t++) {
                    double sum_squares = 0.0;
                    for (int64_t e = 0; e < E; e++)
                        sum_squares += x.values[t * E + e] * x.values[t * E + e];
                    const double rms = std::sqrt(sum_squares / (double)E + (double)eps);
                    for (int64_t e = 0; e < E; e++) {
                        const double y = w.values[e] * (x.values[t * E + e] / rms);
                        expected[t * E + e] = y;
                        tolerance[t * E + e] = 4 * kUlp * std::fabs(y) + FLT_TRUE_MIN;
                    }
                }
                EXPECT_TRUE(all_close(out.data(), expected, tolerance));
            }
        }
    }
}

// Widening is exact, so the rows must be equal, bit for bit.
TEST_P(Embedding, CopiesRowsExactly) {
    const ci_dtype dtype = GetParam();
    auto rng = test_rng();
    Backend be(1);
    const int64_t V = 37;
    for (int64_t E : {1, 7, 1000}) {
        SCOPED_TRACE("V=37 E=" + std::to_string(E));
        HostTensor table = random_tensor(rng, dtype, {V, E});
        std::vector<int32_t> ids = {0, (int32_t)V - 1}; // both ends of the table
        std::uniform_int_distribution<int32_t> id(0, (int32_t)V - 1);
        while (ids.size() < 50) ids.push_back(id(rng));
        std::shuffle(ids.begin(), ids.end(), rng);
        ci_tensor tokens = ci_tensor_1d(ids.data(), CI_I32, (int64_t)ids.size());
        std::vector<float> out = nan_filled(ids.size() * (size_t)E);
        ci_tensor out_view = f32_view(out, {(int64_t)ids.size(), E});
        ci_embedding(be, &out_view, &tokens, &table.view);

        std::vector<double> expected;
        for (int32_t t : ids)
            for (int64_t e = 0; e < E; e++) expected.push_back(table.values[t * E + e]);
        EXPECT_TRUE(all_close(out.data(), expected, std::vector<double>(expected.size(), 0.0)));
    }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, Rmsnorm, ::testing::ValuesIn(kWeightDtypes), weight_dtype_name);
INSTANTIATE_TEST_SUITE_P(AllDtypes, Embedding, ::testing::ValuesIn(kWeightDtypes),
                         weight_dtype_name);

// ---- gated activation, add ------------------------------------------------------------------

// transformers' activations.py, in double.
double activation_reference(ci_activation act, double x) {
    switch (act) {
    case CI_ACT_SILU: return x / (1.0 + std::exp(-x));                       // nn.SiLU
    case CI_ACT_GELU: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); // GELUActivation
    case CI_ACT_GELU_TANH:                                                   // NewGELUActivation
        return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case CI_ACT_RELU: return x > 0.0 ? x : 0.0;
    }
    return NAN;
}

class GatedActivation : public ::testing::TestWithParam<ci_activation> {};

// out = act(gate) ⊙ up. The op rounds act(gate) to F32 and then the product: two relative
// roundings of 2^-24, so 2^-23 of |out|. Where act(gate) is subnormal in F32 (silu(−100) ≈ 4e-42)
// its rounding is absolute, up to half the smallest subnormal, and the product with up scales it:
// the bound adds the smallest subnormal times (1 + |up|).
// Sizes above 65536 take the threaded path; the op must also work in place (out = gate).
TEST_P(GatedActivation, MatchesActivationsPy) {
    const ci_activation act = GetParam();
    auto rng = test_rng();
    const float extremes[] = {-1000.0f, -100.0f, -20.0f, -1e-3f, 1e-3f, 20.0f, 100.0f, 1000.0f};
    for (int n_threads : {1, 2}) {
        Backend be(n_threads);
        for (int64_t n : {1, 7, 1000, 70001}) {
            for (bool in_place : {false, true}) {
                SCOPED_TRACE("n=" + std::to_string(n) + " threads=" + std::to_string(n_threads) +
                             (in_place ? " in place" : ""));
                HostTensor gate = random_tensor(rng, CI_F32, {n}, 3.0f);
                HostTensor up = random_tensor(rng, CI_F32, {n});
                for (size_t i = 0; i < std::size(extremes) && i < (size_t)n; i++)
                    gate.f32()[i] = (float)(gate.values[i] = extremes[i]);
                std::vector<double> expected((size_t)n), tolerance((size_t)n);
                for (int64_t i = 0; i < n; i++) {
                    expected[i] = activation_reference(act, gate.values[i]) * up.values[i];
                    tolerance[i] = 2 * kUlp * std::fabs(expected[i]) +
                                   FLT_TRUE_MIN * (1.0 + std::fabs(up.values[i]));
                }
                std::vector<float> out = nan_filled((size_t)n);
                ci_tensor out_view = in_place ? gate.view : f32_view(out, {n});
                ci_gated_activation(be, &out_view, &gate.view, &up.view, act);
                EXPECT_TRUE(all_close((float *)out_view.data, expected, tolerance));
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllActivations, GatedActivation,
                         ::testing::Values(CI_ACT_SILU, CI_ACT_GELU, CI_ACT_GELU_TANH, CI_ACT_RELU),
                         [](const ::testing::TestParamInfo<ci_activation> &info) {
                             return std::string(activation_name(info.param));
                         });

// ---- timing marks --------------------------------------------------------------------------
// On the CPU a mark reads the host clock: marks taken in order are ordered, a slot marked again
// takes the new time, and a slot never marked reads NaN.

TEST(Marks, ReadTheHostClockInOrder) {
    Backend be(1);
    be.be->ops->mark(be, 0);
    be.be->ops->mark(be, 5); // slots need not be taken in order
    be.be->ops->mark(be, 1);
    const double a = be.be->ops->seconds_between(be, 0, 5),
                 b = be.be->ops->seconds_between(be, 5, 1);
    EXPECT_TRUE(a >= 0.0 && b >= 0.0) << a << " " << b;
    EXPECT_TRUE(std::isnan(be.be->ops->seconds_between(be, 0, 3))) << "slot 3 was never marked";
    EXPECT_TRUE(std::isnan(be.be->ops->seconds_between(be, 0, 1 << 20))) << "past every slot";
    be.be->ops->mark(be, 0);
    EXPECT_LE(be.be->ops->seconds_between(be, 0, 1), 0.0) << "slot 0 marked again, after slot 1";
}

// ---- rope -----------------------------------------------------------------------------------

class Rope : public ::testing::TestWithParam<int> {};

// q' = q·cos + rotate_half(q)·sin over q [T, H, D] and k [T, G, D] at positions pos0 + t.
//
// transformers computes the angle as an F32 product, pos·inv_freq (the matmul in
// LlamaRotaryEmbedding.forward), and at position 5000 one ulp of that angle is 4.9e-4 rad: a
// phase error far above F32 noise if an implementation formed the angle in double. So the
// reference rounds the angle to F32 exactly as transformers does (the product of an integer below
// 2^24 and an F32 is exact in double, and one rounding to F32 gives the F32 product) and does
// everything after it in double. What remains is F32 arithmetic on values bounded by
// s·(|x1| + |x2|) (s = attention_scaling): cosf/sinf within 1 ulp, the product with s, the two
// products and the sum each within half an ulp, ≤ 5·2^-24 in all; the bound is 16·2^-24·s·(|x1| +
// |x2|) ≈ 1e-6 relative, while a double angle at position ~5000 differs by up to 2.4e-4 rad.
TEST_P(Rope, MatchesRotateHalfWithF32Angles) {
    const int D = GetParam(), half = D / 2;
    auto rng = test_rng();
    Backend be(2);
    struct Shape {
        int64_t T;
        int pos0;
    };
    const Shape shapes[] = {{1, 0}, {1, 4999}, {7, 0}, {17, 2500}, {33, 4967}};
    const std::pair<int64_t, int64_t> heads[] = {{4, 2}, {3, 1}, {1, 1}};
    for (const Shape &s : shapes) {
        for (auto [H, G] : heads) {
            for (double theta : {10000.0, 500000.0}) {
                for (float scaling : {1.0f, 1.2078f, 0.8f}) {
                    SCOPED_TRACE("T=" + std::to_string(s.T) + " pos0=" + std::to_string(s.pos0) +
                                 " H=" + std::to_string(H) + " G=" + std::to_string(G) + " theta=" +
                                 std::to_string(theta) + " scaling=" + std::to_string(scaling));
                    std::vector<float> inv_freq(half);
                    for (int i = 0; i < half; i++)
                        inv_freq[i] = (float)std::pow(theta, -2.0 * i / D);
                    const ci_rope_freqs freqs = {inv_freq.data(), scaling};
                    HostTensor q = random_tensor(rng, CI_F32, {s.T, H, D});
                    HostTensor k = random_tensor(rng, CI_F32, {s.T, G, D});

                    auto rotate = [&](const HostTensor &x, int64_t n_heads,
                                      std::vector<double> &expected,
                                      std::vector<double> &tolerance) {
                        expected.resize(x.size());
                        tolerance.resize(x.size());
                        for (int64_t t = 0; t < s.T; t++) {
                            const double pos = (double)(s.pos0 + t);
                            for (int64_t h = 0; h < n_heads; h++) {
                                const size_t row = (size_t)((t * n_heads + h) * D);
                                for (int i = 0; i < half; i++) {
                                    const double angle = (float)(pos * (double)inv_freq[i]);
                                    const double c = std::cos(angle) * scaling;
                                    const double sn = std::sin(angle) * scaling;
                                    const double x1 = x.values[row + i];
                                    const double x2 = x.values[row + i + half];
                                    expected[row + i] = x1 * c - x2 * sn;
                                    expected[row + i + half] = x2 * c + x1 * sn;
                                    const double bound =
                                        16 * kUlp * scaling * (std::fabs(x1) + std::fabs(x2));
                                    tolerance[row + i] = tolerance[row + i + half] = bound;
                                }
                            }
                        }
                    };
                    std::vector<double> q_expected, q_tolerance, k_expected, k_tolerance;
                    rotate(q, H, q_expected, q_tolerance);
                    rotate(k, G, k_expected, k_tolerance);
                    ci_rope(be, &q.view, &k.view, s.pos0, &freqs);
                    EXPECT_TRUE(all_close(q.f32(), q_expected, q_tolerance)) << "q";
                    EXPECT_TRUE(all_close(k.f32(), k_expected, k_tolerance)) << "k";
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, Rope, ::testing::Values(2, 8, 64, 128, 256),
                         [](const ::testing::TestParamInfo<int> &info) {
                             return "D" + std::to_string(info.param);
                         });

// ---- RoPE frequencies -----------------------------------------------------------------------

// transformers' modeling_rope_utils.py, in double, reading the same ci_rope_config fields.
std::vector<double> reference_inv_freq(const ci_config &c, int seq_len, double *attention_scaling) {
    const ci_rope_config &r = c.rope;
    const int D = c.head_dim, half = D / 2;
    auto base_frequencies = [&](double theta) {
        std::vector<double> inv(half);
        for (int i = 0; i < half; i++) inv[i] = 1.0 / std::pow(theta, 2.0 * i / D);
        return inv;
    };
    *attention_scaling = 1.0;
    std::vector<double> inv = base_frequencies(r.theta);
    switch (r.type) {
    case CI_ROPE_DEFAULT: break;
    case CI_ROPE_LINEAR: // _compute_linear_scaling_rope_parameters
        for (double &f : inv) f /= r.factor;
        break;
    case CI_ROPE_DYNAMIC: { // _compute_dynamic_ntk_parameters
        const double L = std::max(seq_len, c.max_position_embeddings);
        const double base =
            r.theta * std::pow(r.factor * L / c.max_position_embeddings - (r.factor - 1.0),
                               (double)D / (D - 2));
        inv = base_frequencies(base);
        break;
    }
    case CI_ROPE_LLAMA3: { // _compute_llama3_parameters
        const double old_context = r.original_max_position_embeddings;
        const double low_freq_wavelen = old_context / r.low_freq_factor;
        const double high_freq_wavelen = old_context / r.high_freq_factor;
        for (double &f : inv) {
            const double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_freq_wavelen) {
                f /= r.factor;
            } else if (wavelen >= high_freq_wavelen) {
                const double smooth = (old_context / wavelen - r.low_freq_factor) /
                                      (r.high_freq_factor - r.low_freq_factor);
                f = (1.0 - smooth) * f / r.factor + smooth * f;
            }
        }
        break;
    }
    case CI_ROPE_YARN: { // _compute_yarn_parameters
        auto get_mscale = [](double scale, double mscale) {
            return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
        };
        if (r.attention_factor >= 0.0)
            *attention_scaling = r.attention_factor;
        else if (r.mscale != 0.0 && r.mscale_all_dim != 0.0)
            *attention_scaling =
                get_mscale(r.factor, r.mscale) / get_mscale(r.factor, r.mscale_all_dim);
        else
            *attention_scaling = get_mscale(r.factor, 1.0);
        auto correction_dim = [&](double num_rotations) {
            return D * std::log(r.original_max_position_embeddings / (num_rotations * 2 * M_PI)) /
                   (2 * std::log(r.theta));
        };
        double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
        if (r.truncate) low = std::floor(low), high = std::ceil(high);
        low = std::max(low, 0.0);
        high = std::min(high, D - 1.0);
        if (low == high) high += 0.001;
        for (int i = 0; i < half; i++) {
            const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
            const double extrapolation_factor = 1.0 - ramp;
            const double pos_freq = std::pow(r.theta, 2.0 * i / D);
            inv[i] = 1.0 / (r.factor * pos_freq) * (1.0 - extrapolation_factor) +
                     1.0 / pos_freq * extrapolation_factor;
        }
        break;
    }
    }
    return inv;
}

struct RopeFrequencyCase {
    std::string name;
    ci_config config;
    int seq_len;
};
void PrintTo(const RopeFrequencyCase &c, std::ostream *os) { *os << c.name; }

ci_config rope_config(ci_rope_type type, int head_dim, double theta, double factor) {
    ci_config c{};
    c.head_dim = head_dim;
    c.max_position_embeddings = 2048;
    c.rope.type = type;
    c.rope.theta = theta;
    c.rope.factor = factor;
    c.rope.attention_factor = -1.0; // absent
    return c;
}

ci_config llama3_config(int head_dim, double theta, int original_max) {
    ci_config c = rope_config(CI_ROPE_LLAMA3, head_dim, theta, 8.0);
    c.rope.low_freq_factor = 1.0;
    c.rope.high_freq_factor = 4.0;
    c.rope.original_max_position_embeddings = original_max;
    return c;
}

ci_config yarn_config(double factor, bool truncate, double attention_factor, double mscale,
                      double mscale_all_dim) {
    ci_config c = rope_config(CI_ROPE_YARN, 128, 10000.0, factor);
    c.rope.original_max_position_embeddings = 4096;
    c.rope.beta_fast = 32.0;
    c.rope.beta_slow = 1.0;
    c.rope.truncate = truncate;
    c.rope.attention_factor = attention_factor;
    c.rope.mscale = mscale;
    c.rope.mscale_all_dim = mscale_all_dim;
    return c;
}

std::vector<RopeFrequencyCase> rope_frequency_cases() {
    std::vector<RopeFrequencyCase> cases = {
        {"default_D64_theta1e4", rope_config(CI_ROPE_DEFAULT, 64, 10000.0, 1.0), 1},
        {"default_D128_theta5e5", rope_config(CI_ROPE_DEFAULT, 128, 500000.0, 1.0), 1},
        {"default_D6_theta1e4", rope_config(CI_ROPE_DEFAULT, 6, 10000.0, 1.0), 1},
        {"linear_factor4", rope_config(CI_ROPE_LINEAR, 64, 10000.0, 4.0), 1},
        {"dynamic_below_max", rope_config(CI_ROPE_DYNAMIC, 64, 10000.0, 2.0), 1000},
        {"dynamic_at_max", rope_config(CI_ROPE_DYNAMIC, 64, 10000.0, 2.0), 2048},
        {"dynamic_above_max", rope_config(CI_ROPE_DYNAMIC, 64, 10000.0, 2.0), 5000},
        {"dynamic_far_above_max_D128", rope_config(CI_ROPE_DYNAMIC, 128, 500000.0, 4.0), 30000},
        {"llama3_D128", llama3_config(128, 500000.0, 8192), 1},
        {"llama3_D16_short_context", llama3_config(16, 10000.0, 256), 1},
        {"yarn_truncate", yarn_config(4.0, true, -1.0, 0.0, 0.0), 1},
        {"yarn_no_truncate", yarn_config(4.0, false, -1.0, 0.0, 0.0), 1},
        {"yarn_attention_factor", yarn_config(8.0, true, 0.87, 0.0, 0.0), 1},
        {"yarn_mscale", yarn_config(16.0, true, -1.0, 1.0, 0.5), 1},
        {"yarn_mscale_without_all_dim", yarn_config(16.0, false, -1.0, 0.707, 0.0), 1},
        {"yarn_factor_below_1", yarn_config(0.5, true, -1.0, 0.0, 0.0), 1},
    };
    // beta_fast = beta_slow without truncation: low == high (transformers' "singularity" guard),
    // so the ramp is a step
    ci_config equal_betas = yarn_config(4.0, false, -1.0, 0.0, 0.0);
    equal_betas.rope.beta_fast = equal_betas.rope.beta_slow = 8.0;
    cases.push_back({"yarn_equal_betas", equal_betas, 1});
    return cases;
}

class RopeFrequencies : public ::testing::TestWithParam<RopeFrequencyCase> {};

// The engine computes in F32 like transformers; the reference in double. The exponent 2i/D is
// rounded to F32, which moves theta^(2i/D) by up to ln(theta)·2^-24 ≈ 1e-6 relative for the bases
// used here, and the scaled types add a few more F32 roundings: 1e-5 relative leaves a margin of
// several times that, while any wrong formula (a band, an exponent D/(D−1), a floor not taken)
// moves some frequency by far more. attention_scaling is a double rounded once to F32.
TEST_P(RopeFrequencies, MatchModelingRopeUtils) {
    const RopeFrequencyCase &c = GetParam();
    const int half = c.config.head_dim / 2;
    std::vector<float> inv_freq(half + 1, NAN);
    float attention_scaling = NAN;
    ci_rope_frequencies(&c.config, c.seq_len, inv_freq.data(), &attention_scaling);
    double expected_scaling;
    const std::vector<double> expected = reference_inv_freq(c.config, c.seq_len, &expected_scaling);
    std::vector<double> tolerance(half);
    for (int i = 0; i < half; i++) tolerance[i] = 1e-5 * expected[i];
    EXPECT_TRUE(all_close(inv_freq.data(), expected, tolerance));
    EXPECT_TRUE(std::isnan(inv_freq[half])) << "wrote past head_dim/2 frequencies";
    EXPECT_NEAR(attention_scaling, expected_scaling, 2 * kUlp * expected_scaling);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RopeFrequencies, ::testing::ValuesIn(rope_frequency_cases()),
                         [](const ::testing::TestParamInfo<RopeFrequencyCase> &info) {
                             return info.param.name;
                         });

// The cases above are only meaningful if they reach every branch: llama3 must have frequencies
// in all three wavelength bands, yarn in all three parts of its ramp, dynamic must change the
// frequencies above max_position_embeddings and not below.
TEST(RopeFrequencies, CasesCoverEveryBranch) {
    for (const RopeFrequencyCase &c : rope_frequency_cases()) {
        SCOPED_TRACE(c.name);
        const ci_rope_config &r = c.config.rope;
        const int D = c.config.head_dim;
        int below = 0, between = 0, above = 0;
        if (r.type == CI_ROPE_LLAMA3) {
            for (int i = 0; i < D / 2; i++) {
                const double wavelen = 2 * M_PI * std::pow(r.theta, 2.0 * i / D);
                const double L = r.original_max_position_embeddings;
                if (wavelen < L / r.high_freq_factor)
                    below++;
                else if (wavelen > L / r.low_freq_factor)
                    above++;
                else
                    between++;
            }
            EXPECT_TRUE(below && between && above) << below << " " << between << " " << above;
        }
        if (r.type == CI_ROPE_YARN && r.factor > 1.0 && r.beta_fast != r.beta_slow) {
            double scaling;
            const std::vector<double> inv = reference_inv_freq(c.config, 1, &scaling);
            for (int i = 0; i < D / 2; i++) {
                const double base = std::pow(r.theta, -2.0 * i / D);
                if (std::fabs(inv[i] - base) < 1e-12 * base)
                    below++; // kept
                else if (std::fabs(inv[i] - base / r.factor) < 1e-12 * base)
                    above++; // scaled
                else
                    between++;
            }
            EXPECT_TRUE(below && between && above) << below << " " << between << " " << above;
        }
    }
    double scaling;
    ci_config dynamic = rope_config(CI_ROPE_DYNAMIC, 64, 10000.0, 2.0);
    ci_config plain = rope_config(CI_ROPE_DEFAULT, 64, 10000.0, 1.0);
    EXPECT_EQ(reference_inv_freq(dynamic, 1000, &scaling), reference_inv_freq(plain, 1, &scaling));
    EXPECT_NE(reference_inv_freq(dynamic, 5000, &scaling), reference_inv_freq(plain, 1, &scaling));
}

// ---- attention ------------------------------------------------------------------------------

struct AttentionShape {
    int64_t H, G, D;
};

std::string attention_name(const ::testing::TestParamInfo<AttentionShape> &info) {
    const AttentionShape &s = info.param;
    return "H" + std::to_string(s.H) + "_G" + std::to_string(s.G) + "_D" + std::to_string(s.D);
}
void PrintTo(const AttentionShape &s, std::ostream *os) {
    *os << "H=" << s.H << " G=" << s.G << " D=" << s.D;
}

// (T, pos0): decode after a cache, prefill from 0, chunks appended after a cache.
struct AttentionCall {
    int64_t T;
    int pos0;
};
const AttentionCall kAttentionCalls[] = {{1, 0}, {1, 1}, {1, 37}, {5, 0}, {7, 13}, {16, 50}};
// Cache rows past pos0 + T hold NaN: a read of any of them would turn an output into NaN.
constexpr int64_t kUnusedCacheRows = 3;

// Q [T, H, D] and a KV cache [n_ctx, G, D] whose rows at and beyond pos0 + T are NaN.
struct AttentionInputs {
    HostTensor q, k_cache, v_cache;
    AttentionInputs(std::mt19937_64 &rng, const AttentionShape &s, const AttentionCall &call)
        : q(random_tensor(rng, CI_F32, {call.T, s.H, s.D}, 2.0f)),
          k_cache(random_tensor(rng, CI_F32, {call.pos0 + call.T + kUnusedCacheRows, s.G, s.D})),
          v_cache(random_tensor(rng, CI_F32, {call.pos0 + call.T + kUnusedCacheRows, s.G, s.D})) {
        for (size_t i = (size_t)((call.pos0 + call.T) * s.G * s.D); i < k_cache.size(); i++)
            k_cache.f32()[i] = v_cache.f32()[i] = NAN;
    }
    int n_ctx() const { return (int)k_cache.view.shape[0]; }
    // element [s, kv, d] of a cache
    double k(int64_t s, int64_t kv, int64_t d) const { return at(k_cache, s, kv, d); }
    double v(int64_t s, int64_t kv, int64_t d) const { return at(v_cache, s, kv, d); }
    static double at(const HostTensor &cache, int64_t s, int64_t kv, int64_t d) {
        const int64_t G = cache.view.shape[1], D = cache.view.shape[2];
        return cache.values[(size_t)((s * G + kv) * D + d)];
    }
};

// softmax(Q_h K_kvᵀ / sqrt(D) + M) as a full [T, S] matrix, S = pos0 + T, M causal with query t
// at position pos0 + t.
std::vector<std::vector<double>> attention_weights(const AttentionInputs &in, int64_t h, int64_t kv,
                                                   int pos0) {
    const int64_t T = in.q.view.shape[0], H = in.q.view.shape[1], D = in.q.view.shape[2];
    const int64_t S = pos0 + T;
    std::vector<std::vector<double>> A(T, std::vector<double>(S));
    for (int64_t t = 0; t < T; t++) {
        double max_score = -INFINITY;
        for (int64_t s = 0; s < S; s++) {
            double score = -INFINITY;
            if (s <= pos0 + t) {
                score = 0.0;
                for (int64_t d = 0; d < D; d++)
                    score += in.q.values[(size_t)((t * H + h) * D + d)] * in.k(s, kv, d);
                score /= std::sqrt((double)D);
            }
            A[t][s] = score;
            max_score = std::max(max_score, score);
        }
        double sum = 0.0;
        for (double &a : A[t]) sum += (a = std::exp(a - max_score));
        for (double &a : A[t]) a /= sum;
    }
    return A;
}

class Attention : public ::testing::TestWithParam<AttentionShape> {};

// O_h = softmax(Q_h K_kv(h)ᵀ / sqrt(D) + M) V_kv(h), kv(h) = h / (H/G). The op works in double
// and rounds each output once to F32; 4·2^-24 of Σ_s A_s·|V_s| (the output's magnitude before
// any cancellation) bounds that with room for the double arithmetic.
TEST_P(Attention, MatchesFullCausalSoftmax) {
    const AttentionShape shape = GetParam();
    auto rng = test_rng();
    const int64_t H = shape.H, D = shape.D, group = shape.H / shape.G;
    for (int n_threads : {1, 2}) {
        Backend be(n_threads);
        for (const AttentionCall &call : kAttentionCalls) {
            SCOPED_TRACE("T=" + std::to_string(call.T) + " pos0=" + std::to_string(call.pos0) +
                         " threads=" + std::to_string(n_threads));
            AttentionInputs in(rng, shape, call);
            be.reserve(1, in.n_ctx(), (int)D);
            std::vector<float> out = nan_filled((size_t)(call.T * H * D));
            ci_tensor out_view = f32_view(out, {call.T, H, D});
            ci_attention(be, &out_view, &in.q.view, &in.k_cache.view, &in.v_cache.view, call.pos0);

            std::vector<double> expected(out.size()), tolerance(out.size());
            for (int64_t h = 0; h < H; h++) {
                const auto A = attention_weights(in, h, h / group, call.pos0);
                for (int64_t t = 0; t < call.T; t++) {
                    for (int64_t d = 0; d < D; d++) {
                        double o = 0.0, magnitude = 0.0;
                        for (size_t s = 0; s < A[t].size(); s++) {
                            o += A[t][s] * in.v(s, h / group, d);
                            magnitude += A[t][s] * std::fabs(in.v(s, h / group, d));
                        }
                        expected[(t * H + h) * D + d] = o;
                        tolerance[(t * H + h) * D + d] = 4 * kUlp * magnitude;
                    }
                }
            }
            EXPECT_TRUE(all_close(out.data(), expected, tolerance));
        }
    }
}

// GQA ratios 1, 2, 4, 8; head dims 32..256 and small odd-ish ones.
INSTANTIATE_TEST_SUITE_P(Shapes, Attention,
                         ::testing::Values(AttentionShape{4, 4, 32}, AttentionShape{8, 4, 64},
                                           AttentionShape{8, 2, 128}, AttentionShape{8, 1, 256},
                                           AttentionShape{4, 4, 80}, AttentionShape{6, 3, 6},
                                           AttentionShape{4, 1, 10}, AttentionShape{3, 1, 96}),
                         attention_name);

class DiffAttention : public ::testing::TestWithParam<AttentionShape> {};

// docs/MODEL_MATH.md's differential attention, literally: for pair p (P = H/2)
//   Vcat_p = [V_kv(p) ‖ V_kv(p+P)], O_p = A1_p·Vcat_p − λ·A2_p·Vcat_p,
//   Y_p = (1 − λ_init)·O_p / sqrt(mean(O_p²) + eps) into columns [2pD, 2(p+1)D).
// As for attention, the op rounds once to F32 from double. The magnitude of an output element
// before cancellation is (1 − λ_init)·(Σ A1·|Vcat| + λ·Σ A2·|Vcat|) / rms, and 4·2^-24 of it
// bounds the error.
TEST_P(DiffAttention, MatchesModelMath) {
    const AttentionShape shape = GetParam();
    auto rng = test_rng();
    const int64_t H = shape.H, D = shape.D, P = H / 2, group = shape.H / shape.G;
    std::uniform_real_distribution<float> lambda_dist(0.1f, 0.9f);
    std::uniform_int_distribution<int> layer_dist(0, 31);
    for (int n_threads : {1, 2}) {
        Backend be(n_threads);
        for (const AttentionCall &call : kAttentionCalls) {
            const float lambda = lambda_dist(rng);
            const int layer = layer_dist(rng);
            const float lambda_init = (float)(0.8 - 0.6 * std::exp(-0.3 * layer));
            const float eps = layer % 2 ? 1e-5f : 1e-6f;
            SCOPED_TRACE("T=" + std::to_string(call.T) + " pos0=" + std::to_string(call.pos0) +
                         " threads=" + std::to_string(n_threads) +
                         " lambda=" + std::to_string(lambda) + " layer=" + std::to_string(layer));
            AttentionInputs in(rng, shape, call);
            be.reserve(1, in.n_ctx(), (int)D);
            std::vector<float> out = nan_filled((size_t)(call.T * H * D));
            ci_tensor out_view = f32_view(out, {call.T, H, D});
            ci_diff_attention(be, &out_view, &in.q.view, &in.k_cache.view, &in.v_cache.view,
                              call.pos0, lambda, lambda_init, eps);

            std::vector<double> expected(out.size()), tolerance(out.size());
            for (int64_t p = 0; p < P; p++) {
                const int64_t kv1 = p / group, kv2 = (p + P) / group;
                const auto A1 = attention_weights(in, p, kv1, call.pos0);
                const auto A2 = attention_weights(in, p + P, kv2, call.pos0);
                auto vcat = [&](int64_t s, int64_t j) {
                    return j < D ? in.v(s, kv1, j) : in.v(s, kv2, j - D);
                };
                for (int64_t t = 0; t < call.T; t++) {
                    std::vector<double> O(2 * D), magnitude(2 * D);
                    double sum_squares = 0.0;
                    for (int64_t j = 0; j < 2 * D; j++) {
                        double o1 = 0.0, o2 = 0.0;
                        for (size_t s = 0; s < A1[t].size(); s++) {
                            o1 += A1[t][s] * vcat(s, j);
                            o2 += A2[t][s] * vcat(s, j);
                            magnitude[j] += (A1[t][s] + lambda * A2[t][s]) * std::fabs(vcat(s, j));
                        }
                        O[j] = o1 - (double)lambda * o2;
                        sum_squares += O[j] * O[j];
                    }
                    const double rms = std::sqrt(sum_squares / (2.0 * D) + (double)eps);
                    for (int64_t j = 0; j < 2 * D; j++) {
                        const size_t i = (size_t)(t * H * D + p * 2 * D + j);
                        expected[i] = (1.0 - (double)lambda_init) * O[j] / rms;
                        tolerance[i] = 4 * kUlp * (1.0 - (double)lambda_init) * magnitude[j] / rms;
                    }
                }
            }
            EXPECT_TRUE(all_close(out.data(), expected, tolerance));
        }
    }
}

// H even; G any divisor of H, odd G included (HF's eager path is defined for any G).
INSTANTIATE_TEST_SUITE_P(Shapes, DiffAttention,
                         ::testing::Values(AttentionShape{2, 1, 32}, AttentionShape{4, 2, 64},
                                           AttentionShape{4, 4, 128}, AttentionShape{8, 1, 256},
                                           AttentionShape{8, 8, 32}, AttentionShape{6, 3, 16},
                                           AttentionShape{6, 2, 10}, AttentionShape{6, 6, 6},
                                           AttentionShape{8, 2, 48}),
                         attention_name);

// ---- F16 / BF16 conversions -----------------------------------------------------------------

uint32_t f32_bits(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return bits;
}
float f32_from_bits(uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// Round to nearest, ties to even, by search: the two representable neighbours of |v| among the
// ascending positive patterns [0, inf_pattern], and the nearer one (the even pattern on a tie).
// For rounding, inf stands at the value one step past the largest finite number (2^16 for F16,
// 2^128 for BF16), so that exactly half an ulp past it rounds to inf, as IEEE 754 overflows.
template <typename Decode>
uint16_t reference_round(float v, uint16_t inf_pattern, double inf_stand_in, Decode decode) {
    const uint16_t sign = std::signbit(v) ? 0x8000 : 0;
    const double a = std::fabs((double)v);
    auto value = [&](uint16_t p) { return p == inf_pattern ? inf_stand_in : decode(p); };
    if (a >= inf_stand_in) return (uint16_t)(sign | inf_pattern);
    uint16_t lo = 0, hi = inf_pattern; // value(lo) <= a < value(hi)
    while (hi - lo > 1) {
        const uint16_t mid = (uint16_t)((lo + hi) / 2);
        (value(mid) <= a ? lo : hi) = mid;
    }
    const double below = a - value(lo), above = value(hi) - a;
    const uint16_t nearest = below < above ? lo : above < below ? hi : (lo % 2 == 0 ? lo : hi);
    return (uint16_t)(sign | nearest);
}
uint16_t reference_f32_to_f16(float v) { return reference_round(v, 0x7c00, 65536.0, f16_value); }
uint16_t reference_f32_to_bf16(float v) {
    return reference_round(v, 0x7f80, std::ldexp(1.0, 128), bf16_value);
}

// Inputs that probe rounding: every midpoint between neighbouring finite values (ties) and the
// F32 numbers just either side of it, both signs; zeros, the F32 subnormal range, infinities.
template <typename Decode> std::vector<float> rounding_probes(uint16_t inf_pattern, Decode decode) {
    std::vector<float> probes = {0.0f, -0.0f, INFINITY, -INFINITY, FLT_TRUE_MIN, FLT_MIN, FLT_MAX};
    for (uint32_t p = 0; p < inf_pattern; p++) {
        const double next = p + 1 == inf_pattern ? 2 * decode(p) - decode(p - 1) : decode(p + 1);
        const float mid = (float)((decode(p) + next) / 2); // exact: 1 more bit than the format
        const float here = (float)decode(p);
        for (float v : {here, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)}) {
            probes.push_back(v);
            probes.push_back(-v);
        }
    }
    return probes;
}

// Random F32 bit patterns: every exponent, subnormals, infinities (NaNs are skipped by the
// rounding checks and have their own tests).
std::vector<float> random_f32_bit_patterns(std::mt19937_64 &rng, size_t n) {
    std::vector<float> v(n);
    for (float &x : v) x = f32_from_bits((uint32_t)rng());
    return v;
}

template <typename Convert, typename Reference>
void expect_rounds_like(const std::vector<float> &inputs, Convert convert, Reference reference,
                        const char *what) {
    size_t n_bad = 0;
    for (float v : inputs) {
        if (std::isnan(v)) continue;
        const uint16_t got = convert(v), want = reference(v);
        if (got != want && n_bad++ < 5)
            ADD_FAILURE() << what << "(" << std::hexfloat << v << " = 0x" << std::hex << f32_bits(v)
                          << ") gave 0x" << got << ", nearest-even is 0x" << want;
    }
    EXPECT_EQ(n_bad, 0u) << "of " << inputs.size() << " inputs";
}

TEST(F16ToF32, EveryBitPatternWidensExactly) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        const float got = ci_f16_to_f32((uint16_t)h);
        const double want = f16_value((uint16_t)h);
        if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << std::hex << h;
            ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
        } else {
            ASSERT_EQ(f32_bits(got), f32_bits((float)want)) << std::hex << h; // -0 too
            ASSERT_EQ((double)got, want) << std::hex << h;
        }
    }
}

TEST(BF16ToF32, EveryBitPatternWidensExactly) {
    for (uint32_t b = 0; b < 0x10000; b++) {
        const float got = ci_bf16_to_f32((uint16_t)b);
        const double want = bf16_value((uint16_t)b);
        if (std::isnan(want))
            ASSERT_TRUE(std::isnan(got)) << std::hex << b;
        else
            ASSERT_EQ(f32_bits(got), f32_bits((float)want)) << std::hex << b;
    }
}

TEST(F32ToF16, MidpointsAndNeighboursRoundToNearestEven) {
    expect_rounds_like(rounding_probes(0x7c00, f16_value), ci_f32_to_f16, reference_f32_to_f16,
                       "ci_f32_to_f16");
}

// Random F32 bit patterns (mostly far outside the F16 range: overflow to inf, underflow to 0)
// and random values inside it, subnormal F16s included.
TEST(F32ToF16, RandomValuesRoundToNearestEven) {
    auto rng = test_rng();
    std::vector<float> inputs = random_f32_bit_patterns(rng, 200000);
    std::uniform_real_distribution<double> exponent(-26.0, 16.5);
    for (int i = 0; i < 200000; i++)
        inputs.push_back((float)((i % 2 ? -1 : 1) * std::exp2(exponent(rng))));
    expect_rounds_like(inputs, ci_f32_to_f16, reference_f32_to_f16, "ci_f32_to_f16");
}

TEST(F32ToF16, EdgeValues) {
    EXPECT_EQ(ci_f32_to_f16(65504.0f), 0x7bff);                       // largest finite
    EXPECT_EQ(ci_f32_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7bff); // just below the tie
    EXPECT_EQ(ci_f32_to_f16(65520.0f), 0x7c00);                       // tie with "65536": inf
    EXPECT_EQ(ci_f32_to_f16(-1e6f), 0xfc00);
    EXPECT_EQ(ci_f32_to_f16(std::ldexp(1.0f, -24)), 0x0001); // smallest subnormal
    EXPECT_EQ(ci_f32_to_f16(std::ldexp(1.0f, -25)), 0x0000); // tie: to even (zero)
    EXPECT_EQ(ci_f32_to_f16(std::ldexp(3.0f, -25)), 0x0002); // 1.5 units: to even (2)
    EXPECT_EQ(ci_f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
    EXPECT_EQ(ci_f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400); // rounds up into the normals
    EXPECT_EQ(ci_f32_to_f16(-0.0f), 0x8000);
    EXPECT_EQ(ci_f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00); // tie: 1.0 is even
    EXPECT_EQ(ci_f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02); // tie: up to even
}

TEST(F32ToF16, NaNStaysNaN) {
    for (uint32_t bits : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu,
                          0x7f802000u, 0x7fa00000u}) {
        const uint16_t h = ci_f32_to_f16(f32_from_bits(bits));
        EXPECT_TRUE((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0) << std::hex << bits << " -> " << h;
    }
}

TEST(F32ToBF16, MidpointsAndNeighboursRoundToNearestEven) {
    auto rng = test_rng();
    // every BF16 midpoint would be 2^16 patterns × 4; a random quarter of the finite patterns
    // keeps this quick while covering every exponent
    std::vector<float> all = rounding_probes(0x7f80, bf16_value), inputs;
    for (float v : all)
        if (rng() % 4 == 0 || !std::isfinite(v) || std::fabs(v) < FLT_MIN) inputs.push_back(v);
    expect_rounds_like(inputs, ci_f32_to_bf16, reference_f32_to_bf16, "ci_f32_to_bf16");
}

TEST(F32ToBF16, RandomValuesRoundToNearestEven) {
    auto rng = test_rng();
    expect_rounds_like(random_f32_bit_patterns(rng, 400000), ci_f32_to_bf16, reference_f32_to_bf16,
                       "ci_f32_to_bf16");
}

TEST(F32ToBF16, EdgeValues) {
    EXPECT_EQ(ci_f32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(ci_f32_to_bf16(f32_from_bits(0x3f808000u)), 0x3f80); // tie: 0x3f80 is even
    EXPECT_EQ(ci_f32_to_bf16(f32_from_bits(0x3f818000u)), 0x3f82); // tie: up to even
    EXPECT_EQ(ci_f32_to_bf16(f32_from_bits(0x3f808001u)), 0x3f81); // past the tie
    EXPECT_EQ(ci_f32_to_bf16(FLT_MAX), 0x7f80);                    // rounds up to inf
    EXPECT_EQ(ci_f32_to_bf16(f32_from_bits(0x7f7f7fffu)), 0x7f7f); // largest finite
    EXPECT_EQ(ci_f32_to_bf16(-INFINITY), 0xff80);
    EXPECT_EQ(ci_f32_to_bf16(FLT_TRUE_MIN), 0x0000);               // subnormal: rounds to 0
    EXPECT_EQ(ci_f32_to_bf16(f32_from_bits(0x0000c000u)), 0x0001); // subnormal: rounds up
    EXPECT_EQ(ci_f32_to_bf16(-0.0f), 0x8000);
}

TEST(F32ToBF16, NaNStaysNaN) {
    // 0x7f800001: truncating it would give inf
    for (uint32_t bits :
         {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu}) {
        const uint16_t b = ci_f32_to_bf16(f32_from_bits(bits));
        EXPECT_TRUE((b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0) << std::hex << bits << " -> " << b;
    }
}

} // namespace
