// The decode GEMV (kernels/cuda/matmul_gemv.cuh) runs on the CPU emulator, through its real
// launcher, against a double-precision reference computed here from the input as the kernel must
// see it: x rounded to the weight dtype (common/tensor.h's host conversions, not the emulator's),
// the weights and biases widened exactly.
//
// Every call draws fresh inputs (normal, never all zeros), pre-fills every output with random
// values (with accumulate off they must be overwritten, with it on added to), and surrounds each
// output with guards that must come back bit for bit: 16 floats before and after the [n_rows,
// n_out] block, and rows n_rows .. GEMV_MAX_ROWS − 1 between them (a kernel writing for rows of x
// it does not have, or past a segment's last output, fails). x and the weights are allocated to
// their exact size, so that the sanitizer build catches a read past a row or past the last row.
#include "tests/cuda_emu/cuda_emu.h"

#include "kernels/cuda/matmul_gemv.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "common/tensor.h"
}

namespace {

using cinfer_test::fresh_seed;

// A 16-byte aligned array of exactly n elements (the sanitizer sees its end).
template <typename T> struct Aligned {
    struct Free {
        void operator()(T *p) const { ::operator delete(p, std::align_val_t(16)); }
    };
    std::unique_ptr<T, Free> data;
    size_t n = 0;
    explicit Aligned(size_t count)
        : data(static_cast<T *>(::operator new(count * sizeof(T), std::align_val_t(16)))),
          n(count) {}
    T &operator[](size_t i) { return data.get()[i]; }
    T *get() { return data.get(); }
};

const char *dtype_label(ci_dtype d) { return d == CI_F32 ? "F32" : d == CI_BF16 ? "BF16" : "F16"; }

// value rounded to `dtype` (nearest even) and widened back: what the kernel multiplies.
float round_to(ci_dtype dtype, float value) {
    if (dtype == CI_BF16) return ci_bf16_to_f32(ci_f32_to_bf16(value));
    if (dtype == CI_F16) return ci_f16_to_f32(ci_f32_to_f16(value));
    return value;
}

// Storage of `dtype`: 4 or 2 bytes per element, holding round_to(dtype, value).
struct Stored {
    ci_dtype dtype;
    Aligned<unsigned char> bytes;
    std::vector<float> widened; // the stored values as floats, exactly
    Stored(ci_dtype d, const std::vector<float> &values)
        : dtype(d), bytes(values.size() * ci_dtype_size(d)), widened(values.size()) {
        for (size_t i = 0; i < values.size(); i++) {
            widened[i] = round_to(d, values[i]);
            if (d == CI_F32) {
                std::memcpy(bytes.get() + 4 * i, &widened[i], 4);
            } else {
                const uint16_t bits =
                    d == CI_BF16 ? ci_f32_to_bf16(values[i]) : ci_f32_to_f16(values[i]);
                std::memcpy(bytes.get() + 2 * i, &bits, 2);
            }
        }
    }
};

constexpr int kNoBias = -1;
constexpr size_t kGuard = 16; // floats before and after each output block

struct SegmentCase {
    int n_out;
    int bias; // kNoBias or a ci_dtype
};

struct Call {
    int n_in;
    std::vector<SegmentCase> segments;
    bool accumulate;
    int tiles; // 0: gemv_launch's choice; else gemv_launch_tiles
};

std::string call_name(const Call &c) {
    std::string s = "n_in=" + std::to_string(c.n_in) + " n_out=";
    for (size_t i = 0; i < c.segments.size(); i++) {
        s += (i ? "," : "") + std::to_string(c.segments[i].n_out);
        if (c.segments[i].bias != kNoBias)
            s += std::string("+bias") + dtype_label((ci_dtype)c.segments[i].bias);
    }
    s += c.accumulate ? " accumulate" : " overwrite";
    s += c.tiles ? " tiles=" + std::to_string(c.tiles) : " launcher's tiles";
    return s;
}

// Why this bound: every product round_w(x)·w is exact in F32 for BF16/F16 weights (8+8 or 11+11
// significant bits; the tensor-core emulation multiplies exactly too) and is rounded once at most
// for F32 weights; each term then passes through at most n_in + GEMV_WARPS + 3 rounded F32
// additions (the k sums, the two halves of a vector or the warp's lanes, the block's warps, the
// bias, the old output), in whatever order. So |computed − exact| ≤ γ_m · S with m = n_in +
// GEMV_WARPS + 4 (one more for the product's own rounding), γ_m = m·u / (1 − m·u), u = 2^-24,
// and S = Σ_k |round_w(x)·w| + |bias| + |old output|: the classic worst case for any summation
// order (Higham, Accuracy and Stability of Numerical Algorithms, §4). A missing or doubled term,
// a wrong row, bias or segment is off by far more; so is an input rounded the wrong way at the
// small n_in here (at n_in = 8 the bound is 1.2e-6·S, where truncating x to BF16 moves each term
// by up to 2^-8 of itself). Measured: at most ~0.1 of the bound (printed per test).
double error_bound(int n_in, double magnitude) {
    const double u = 0x1p-24, m = n_in + GEMV_WARPS + 4;
    return m * u / (1.0 - m * u) * magnitude;
}

struct Outcome {
    size_t n_bad = 0, n_guards_changed = 0;
    double worst_ratio = 0; // |error| / bound, worst over the outputs
    std::string first_bad;
};

// Returns the worst |error| / bound over the call's outputs.
double run_call(std::mt19937_64 &rng, ci_dtype weight_dtype, int T, const Call &call) {
    SCOPED_TRACE(std::string(dtype_label(weight_dtype)) + " T=" + std::to_string(T) + " " +
                 call_name(call));
    const int n_in = call.n_in, n_segments = (int)call.segments.size();

    Aligned<float> x((size_t)T * n_in);
    const std::vector<float> x_values = cinfer_test::random_floats(rng, x.n);
    std::memcpy(x.get(), x_values.data(), x.n * sizeof(float));

    std::vector<std::unique_ptr<Stored>> weights, biases;
    std::vector<std::vector<float>> outs; // guard, GEMV_MAX_ROWS × n_out, guard
    gemv_params p{};
    p.x = x.get();
    p.n_rows = T;
    p.n_in = n_in;
    p.weight_dtype = weight_dtype;
    p.accumulate = call.accumulate;
    p.n_segments = n_segments;
    for (int s = 0; s < n_segments; s++) {
        const SegmentCase &c = call.segments[s];
        weights.push_back(std::make_unique<Stored>(
            weight_dtype, cinfer_test::random_floats(rng, (size_t)c.n_out * n_in)));
        biases.push_back(c.bias == kNoBias
                             ? nullptr
                             : std::make_unique<Stored>((ci_dtype)c.bias,
                                                        cinfer_test::random_floats(rng, c.n_out)));
        outs.push_back(
            cinfer_test::random_floats(rng, 2 * kGuard + (size_t)GEMV_MAX_ROWS * c.n_out));
        gemv_segment &seg = p.segments[s];
        seg.weight = weights[s]->bytes.get();
        seg.bias = biases[s] ? biases[s]->bytes.get() : nullptr;
        seg.bias_dtype = biases[s] ? (ci_dtype)c.bias : CI_F32;
        seg.out = outs[s].data() + kGuard;
        seg.n_out = c.n_out;
    }
    const std::vector<std::vector<float>> before = outs;
    EXPECT_TRUE(gemv_supports(p));
    if (!gemv_supports(p)) return INFINITY;
    if (call.tiles)
        gemv_launch_tiles(nullptr, p, call.tiles);
    else
        gemv_launch(nullptr, p);

    std::vector<double> xr((size_t)T * n_in); // x as the kernel must multiply it
    for (size_t i = 0; i < xr.size(); i++) xr[i] = round_to(weight_dtype, x_values[i]);
    Outcome o;
    for (int s = 0; s < n_segments; s++) {
        const int n_out = call.segments[s].n_out;
        const std::vector<float> &w = weights[s]->widened;
        const float *old = before[s].data() + kGuard, *got = outs[s].data() + kGuard;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < n_out; n++) {
                double product = 0, magnitude = 0;
                for (int k = 0; k < n_in; k++) {
                    const double term = xr[(size_t)t * n_in + k] * w[(size_t)n * n_in + k];
                    product += term;
                    magnitude += std::fabs(term);
                }
                double expected = product;
                if (biases[s]) {
                    expected += biases[s]->widened[n];
                    magnitude += std::fabs(biases[s]->widened[n]);
                }
                const size_t at = (size_t)t * n_out + n;
                if (call.accumulate) {
                    expected += old[at];
                    magnitude += std::fabs(old[at]);
                }
                const double error = std::fabs((double)got[at] - expected);
                const double bound = error_bound(n_in, magnitude);
                const double ratio = std::isnan(error) ? INFINITY : error / bound;
                if (ratio > o.worst_ratio) o.worst_ratio = ratio;
                if (!(error <= bound) && o.n_bad++ == 0)
                    o.first_bad = "segment " + std::to_string(s) + " out[" + std::to_string(t) +
                                  ", " + std::to_string(n) + "] = " + std::to_string(got[at]) +
                                  ", expected " + std::to_string(expected) + " (bound " +
                                  std::to_string(bound) + ")";
            }
        // guards: before, rows T.. of the 8-row block, after; compared as bits
        auto changed = [&](size_t i) {
            return std::memcmp(&outs[s][i], &before[s][i], sizeof(float)) != 0;
        };
        const size_t block_end = kGuard + (size_t)GEMV_MAX_ROWS * n_out;
        for (size_t i = 0; i < outs[s].size(); i++) {
            const bool written = i >= kGuard && i < kGuard + (size_t)T * n_out;
            if (!written && changed(i) && o.n_guards_changed++ == 0)
                o.first_bad += " guard of segment " + std::to_string(s) + " changed at " +
                               (i < kGuard      ? "before the output"
                                : i < block_end ? "row " + std::to_string((i - kGuard) / n_out)
                                                : "after the output");
        }
    }
    EXPECT_EQ(o.n_bad, 0u) << o.first_bad;
    EXPECT_EQ(o.n_guards_changed, 0u) << o.first_bad;
    EXPECT_LE(o.worst_ratio, 1.0);
    return o.worst_ratio;
}

// The calls every (dtype, T) runs. Segment sizes that are multiples of nothing (1, 7, 33, 17),
// partial last blocks at 8, 16 and 32 rows per block; n_in from one partial 32-k chunk (8) to many
// (1000, 2048), powers of two or not; every bias dtype and none, mixed within a call; accumulate on
// and off; 1, 2 and 3 segments. With 16-bit weights each runs at 1, 2 and 4 tiles per block (F32
// has one layout), and once more as the launcher chooses.
std::vector<Call> calls_for(ci_dtype dtype, int T) {
    const std::vector<Call> shapes = {
        {136, {{33, CI_F32}}, false, 0},
        {24, {{7, CI_BF16}, {1, kNoBias}}, true, 0},
        {8, {{40, CI_F16}, {1, CI_F32}, {17, kNoBias}}, true, 0},
        {1000, {{64, kNoBias}, {9, CI_BF16}, {100, CI_F16}}, false, 0},
        {256, {{48, CI_F32}, {24, kNoBias}}, true, 0},
        {2048, {{35, CI_BF16}}, true, 0},
    };
    std::vector<Call> calls;
    for (const Call &shape : shapes) {
        if (shape.n_in == 2048 && T != 1 && T != 8) continue; // large: the ends of T only
        calls.push_back(shape);
        if (dtype == CI_F32) continue;
        for (int tiles : {1, 2, 4}) {
            calls.push_back(shape);
            calls.back().tiles = tiles;
        }
    }
    return calls;
}

struct GemvParams {
    ci_dtype dtype;
    int T;
};

std::string gemv_name(const ::testing::TestParamInfo<GemvParams> &info) {
    return std::string(dtype_label(info.param.dtype)) + "_T" + std::to_string(info.param.T);
}

class Gemv : public ::testing::TestWithParam<GemvParams> {};

TEST_P(Gemv, MatchesDoubleReference) {
    const GemvParams &param = GetParam();
    std::mt19937_64 rng(fresh_seed() ^ ((uint64_t)param.dtype << 40) ^ (uint64_t)param.T);
    double worst = 0;
    for (const Call &call : calls_for(param.dtype, param.T))
        worst = std::max(worst, run_call(rng, param.dtype, param.T, call));
    std::printf("[gemv] %s T=%d: worst error %.3g of the bound\n", dtype_label(param.dtype),
                param.T, worst);
}

std::vector<GemvParams> gemv_params_list() {
    std::vector<GemvParams> list;
    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16})
        for (int T = 1; T <= GEMV_MAX_ROWS; T++) list.push_back({dtype, T});
    return list;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Gemv, ::testing::ValuesIn(gemv_params_list()), gemv_name);

// ---- what gemv_supports refuses -----------------------------------------------------------------

struct ValidCall {
    Aligned<float> x{(size_t)8 * 64};
    Aligned<uint16_t> w{(size_t)16 * 64}, w2{(size_t)8 * 64};
    std::vector<float> out = std::vector<float>(8 * 16 + 4), out2 = std::vector<float>(8 * 8);
    gemv_params p{};
    ValidCall() {
        p.x = x.get();
        p.n_rows = 4;
        p.n_in = 64;
        p.weight_dtype = CI_BF16;
        p.n_segments = 2;
        p.segments[0] = {w.get(), nullptr, CI_F32, out.data(), 16};
        p.segments[1] = {w2.get(), nullptr, CI_F32, out2.data(), 8};
    }
};

TEST(GemvSupports, TakesWhatItRunsAndRefusesTheRest) {
    ValidCall v;
    EXPECT_TRUE(gemv_supports(v.p));
    auto refused = [&](const char *why, auto change) {
        ValidCall c;
        change(c.p, c);
        EXPECT_FALSE(gemv_supports(c.p)) << why;
    };
    refused("T = 0", [](gemv_params &p, ValidCall &) { p.n_rows = 0; });
    refused("T = 9", [](gemv_params &p, ValidCall &) { p.n_rows = 9; });
    refused("n_in = 60", [](gemv_params &p, ValidCall &) { p.n_in = 60; });
    refused("n_in = 12", [](gemv_params &p, ValidCall &) { p.n_in = 12; });
    refused("n_in = 0", [](gemv_params &p, ValidCall &) { p.n_in = 0; });
    refused("n_in over INT32_MAX", [](gemv_params &p, ValidCall &) { p.n_in = (int64_t)1 << 31; });
    refused("no segments", [](gemv_params &p, ValidCall &) { p.n_segments = 0; });
    refused("4 segments", [](gemv_params &p, ValidCall &) { p.n_segments = 4; });
    refused("an I32 weight", [](gemv_params &p, ValidCall &) { p.weight_dtype = CI_I32; });
    refused("an I8 bias", [](gemv_params &p, ValidCall &c) {
        p.segments[1].bias = c.w.get(), p.segments[1].bias_dtype = CI_I8;
    });
    refused("x not 16-byte aligned", [](gemv_params &p, ValidCall &) { p.x += 2; });
    refused("a weight not 16-byte aligned",
            [](gemv_params &p, ValidCall &c) { p.segments[1].weight = c.w2.get() + 4; });
    refused("no x", [](gemv_params &p, ValidCall &) { p.x = nullptr; });
    refused("no out", [](gemv_params &p, ValidCall &) { p.segments[0].out = nullptr; });
    refused("n_out = 0", [](gemv_params &p, ValidCall &) { p.segments[1].n_out = 0; });
    refused("n_out over INT32_MAX",
            [](gemv_params &p, ValidCall &) { p.segments[0].n_out = (int64_t)1 << 31; });
    refused("out over x", [](gemv_params &p, ValidCall &c) { p.segments[0].out = c.x.get(); });
    refused("out over a weight of another segment",
            [](gemv_params &p, ValidCall &c) { p.segments[1].out = (float *)c.w.get(); });
    refused("out over a bias", [](gemv_params &p, ValidCall &c) {
        p.segments[0].bias = c.out2.data() + 3, p.segments[0].bias_dtype = CI_F32;
    });
    refused("two outputs overlapping",
            [](gemv_params &p, ValidCall &c) { p.segments[1].out = c.out.data() + 4; });
    // the same call with F16/F32 weights, 1 and 8 rows, one segment, biases: taken
    for (ci_dtype dtype : {CI_F32, CI_F16})
        for (int T : {1, 8}) {
            ValidCall c;
            c.p.weight_dtype = dtype;
            c.p.n_rows = T;
            c.p.n_in = 8;
            c.p.n_segments = 1;
            c.p.segments[0].bias = c.x.get(), c.p.segments[0].bias_dtype = CI_F16;
            EXPECT_TRUE(gemv_supports(c.p)) << dtype_label(dtype) << " T=" << T;
        }
}

TEST(GemvLaunchDeathTest, RefusedCallsAbortWithTheReason) {
    ValidCall c;
    c.p.n_in = 60;
    EXPECT_DEATH(gemv_launch(nullptr, c.p), "gemv_supports refuses \\(n_rows 4, n_in 60");
    ValidCall d;
    EXPECT_DEATH(gemv_launch_tiles(nullptr, d.p, 3), "tiles 3 not 1, 2, 4");
}

// The launcher's rows per block for Llama-3-8B's decode projections (gemv_default_tiles, and the
// figures the header's comment quotes): x traffic asks for more rows as T grows, a grid that
// would leave SMs idle for fewer. No launch: the pointers are never read.
TEST(GemvTiles, DefaultsForLlama3_8B) {
    struct Projection {
        const char *name;
        int n_in;
        std::vector<int64_t> n_outs;
        int tiles_at[9]; // index T
    };
    const Projection projections[] = {
        {"qkv", 4096, {4096, 1024, 1024}, {0, 1, 1, 2, 2, 4, 4, 4, 4}},
        {"o", 4096, {4096}, {0, 1, 1, 2, 2, 2, 2, 2, 2}},
        {"gate+up", 4096, {14336, 14336}, {0, 1, 1, 2, 2, 4, 4, 4, 4}},
        {"down", 14336, {4096}, {0, 1, 1, 2, 2, 2, 2, 2, 2}},
        {"lm_head", 4096, {128256}, {0, 1, 1, 2, 2, 4, 4, 4, 4}},
        {"k alone", 4096, {1024}, {0, 1, 1, 1, 1, 1, 1, 1, 1}},
    };
    for (const Projection &proj : projections)
        for (int T = 1; T <= GEMV_MAX_ROWS; T++) {
            gemv_params p{};
            p.n_rows = T;
            p.n_in = proj.n_in;
            p.weight_dtype = CI_BF16;
            p.n_segments = (int)proj.n_outs.size();
            for (int s = 0; s < p.n_segments; s++) p.segments[s].n_out = proj.n_outs[s];
            EXPECT_EQ(gemv_default_tiles(p), proj.tiles_at[T]) << proj.name << " T=" << T;
            EXPECT_GE(gemv_block_count(p, GEMV_TILE_ROWS * gemv_default_tiles(p)),
                      proj.n_outs.size() == 1 && proj.n_outs[0] == 1024 ? 128 : GEMV_TARGET_BLOCKS)
                << proj.name << " T=" << T;
        }
}

} // namespace
