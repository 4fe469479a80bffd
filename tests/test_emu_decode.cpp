// The flash-decoding kernels (kernels/cuda/attention_decode.cuh) run on the CPU emulator against
// the CPU reference ops attention_cpu / diff_attention_cpu, on fresh random inputs.
//
// Every call poisons what the kernels must never let through: cache rows past each sequence's
// length hold NaN, the output and the workspace start as NaN (so a chunk past the length whose
// stale partial output the reduce read, or an output column never written, fails). Chunks are
// forced small (8..16 keys) so that short caches split into many of them, and the launcher's own
// choice (64-key chunks at least) runs too.
#include "tests/cuda_emu/cuda_emu.h"

#include "kernels/cuda/attention_decode.cuh"

#include <cmath>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "common/tensor.h"
#include "kernels/cpu/ops_cpu.h"
}

namespace {

enum class CacheType { F32, BF16, F16 };
const char *cache_type_name(CacheType t) {
    return t == CacheType::F32 ? "F32" : t == CacheType::BF16 ? "BF16" : "F16";
}

struct Shape {
    int H, G, D;
};

// Where the kernels find each sequence's position.
enum class Positions {
    Eager,  // pos0.host, every sequence at the same position
    Device, // pos0.device, as in a recorded graph: the grid is sized for n_ctx
    PerSeq, // seq_pos0[b], each sequence its own (recorded too)
};

struct Call {
    std::vector<int> pos0; // one per sequence; the query sees keys [0, pos0[b]]
    int n_ctx;
    Positions positions;
    int n_chunks;       // 0: the launcher's choice (attention_decode_launch)
    int min_chunk_keys; // with n_chunks > 0
};

std::string call_name(const Call &c) {
    std::string s = "pos0=";
    for (size_t b = 0; b < c.pos0.size(); b++) s += (b ? "," : "") + std::to_string(c.pos0[b]);
    s += " n_ctx=" + std::to_string(c.n_ctx);
    s += c.positions == Positions::Eager    ? " eager"
         : c.positions == Positions::Device ? " device-position"
                                            : " seq_pos0";
    if (c.n_chunks)
        s += " chunks=" + std::to_string(c.n_chunks) + "x>=" + std::to_string(c.min_chunk_keys);
    else
        s += " launcher's chunks";
    return s;
}

// Calls every shape runs: one key, odd lengths that are neither tile nor chunk multiples, cache
// offsets, several sequences at different positions, chunks wholly past the length (recorded
// calls sized for n_ctx = 160 with short sequences), the launcher's chunking (64+ keys per chunk,
// so 150 keys make 3 chunks).
const std::vector<Call> kCalls = {
    {{0}, 8, Positions::Eager, 0, 0},          {{37}, 45, Positions::Eager, 5, 8},
    {{57, 57}, 64, Positions::Eager, 4, 16},   {{150}, 160, Positions::Eager, 0, 0},
    {{99}, 160, Positions::Device, 13, 8},     {{70, 3, 0}, 160, Positions::PerSeq, 11, 16},
    {{129, 66}, 160, Positions::PerSeq, 0, 0},
};

// The caches in the kernel's dtype, and the same values widened to F32 for the reference.
template <typename T> struct Cache {
    std::vector<T> stored;
    std::vector<float> widened;
};

// [n_seqs, n_ctx, G, D]: random rows up to each sequence's position, NaN after it.
template <typename T> Cache<T> make_cache(std::mt19937_64 &rng, const Call &call, int G, int D) {
    const size_t n_seqs = call.pos0.size(), row = (size_t)G * D;
    Cache<T> cache;
    cache.stored.resize(n_seqs * call.n_ctx * row);
    cache.widened.resize(cache.stored.size());
    const std::vector<float> values = cinfer_test::random_floats(rng, cache.stored.size());
    for (size_t b = 0; b < n_seqs; b++)
        for (size_t s = 0; s < (size_t)call.n_ctx; s++)
            for (size_t i = 0; i < row; i++) {
                const size_t at = (b * call.n_ctx + s) * row + i;
                const float x = s <= (size_t)call.pos0[b] ? values[at] : NAN;
                cache.stored[at] = ci_from_float<T>(x);
                cache.widened[at] = ci_to_float(cache.stored[at]); // the exact rounded value
            }
    return cache;
}

ci_tensor f32_tensor(float *data, std::initializer_list<int64_t> shape) {
    ci_tensor t{};
    t.data = data;
    t.dtype = CI_F32;
    for (int64_t d : shape) t.shape[t.n_dims++] = d;
    return t;
}

struct Differential {
    bool on;
    float lambda, lambda_init, eps;
};

// The CPU reference, one sequence at a time (its ops take one sequence).
std::vector<float> reference(const Call &call, const Shape &shape, const std::vector<float> &q,
                             std::vector<float> &k, std::vector<float> &v,
                             const Differential &diff) {
    const int H = shape.H, G = shape.G, D = shape.D, n_seqs = (int)call.pos0.size();
    ci_backend *be = nullptr;
    EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 1, &be), CINFER_OK) << cinfer_last_error();
    EXPECT_EQ(ci_backend_reserve(be, attention_cpu_scratch_bytes(call.n_ctx, D)), CINFER_OK);
    std::vector<float> out((size_t)n_seqs * H * D, NAN);
    std::vector<float> q_copy = q;
    for (int b = 0; b < n_seqs; b++) {
        const size_t cache_at = (size_t)b * call.n_ctx * G * D;
        ci_tensor q_b = f32_tensor(q_copy.data() + (size_t)b * H * D, {1, H, D});
        ci_tensor out_b = f32_tensor(out.data() + (size_t)b * H * D, {1, H, D});
        ci_tensor k_b = f32_tensor(k.data() + cache_at, {call.n_ctx, G, D});
        ci_tensor v_b = f32_tensor(v.data() + cache_at, {call.n_ctx, G, D});
        if (diff.on)
            diff_attention_cpu(be, &out_b, &q_b, &k_b, &v_b, call.pos0[b], diff.lambda,
                               diff.lambda_init, diff.eps);
        else
            attention_cpu(be, &out_b, &q_b, &k_b, &v_b, call.pos0[b]);
    }
    ci_backend_free(be);
    return out;
}

// Every element within tolerance; on failure how many are not, and the worst one. NaN fails.
::testing::AssertionResult all_close(const std::vector<float> &actual,
                                     const std::vector<float> &expected, double tolerance) {
    size_t n_bad = 0, worst = 0;
    double worst_error = -1.0;
    for (size_t i = 0; i < expected.size(); i++) {
        const double error = std::fabs((double)actual[i] - (double)expected[i]);
        const double ranked = std::isnan(error) ? INFINITY : error;
        if (!(error <= tolerance)) n_bad++;
        if (ranked > worst_error) worst_error = ranked, worst = i;
    }
    if (n_bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << n_bad << " of " << expected.size() << " elements off by more than " << tolerance
           << "; worst at flat index " << worst << ": got " << actual[worst] << ", expected "
           << expected[worst];
}

// Why one bound serves every cache dtype: the reference is fed the very values the kernel reads
// (BF16/F16 widen to F32 exactly), and the kernel rounds nothing to 16 bits: scores, weights,
// partial outputs and the reduction are all F32. What remains is F32 arithmetic against the
// reference's double (dot products over D <= 256 terms, sums over <= 160 keys of values ~N(0, 1))
// and, on the GPU, exp2f's couple of ulps: measured at most ~1e-6 for every dtype here, so 1e-4
// leaves a margin of 100. Differential outputs are divided by the RMS of O1 - lambda·O2, which
// amplifies the error of O by 1/RMS (RMS can fall to ~0.01 when lambda is near 1 and the two maps
// agree, as with one key): hence 1e-3 there (measured ~1e-6 too).
constexpr double kTolerance = 1e-4;
constexpr double kDiffTolerance = 1e-3;

template <typename T>
void run_call(std::mt19937_64 &rng, const Shape &shape, const Call &call,
              const Differential &diff) {
    SCOPED_TRACE(call_name(call) + (diff.on
                                        ? " differential lambda=" + std::to_string(diff.lambda) +
                                              " lambda_init=" + std::to_string(diff.lambda_init)
                                        : ""));
    const int H = shape.H, G = shape.G, D = shape.D, n_seqs = (int)call.pos0.size();
    std::vector<float> q = cinfer_test::random_floats(rng, (size_t)n_seqs * H * D);
    Cache<T> k = make_cache<T>(rng, call, G, D), v = make_cache<T>(rng, call, G, D);
    const std::vector<float> expected = reference(call, shape, q, k.widened, v.widened, diff);

    std::vector<float> out(expected.size(), NAN);
    const int n_chunks = call.n_chunks ? call.n_chunks : 1;
    const size_t workspace_bytes = call.n_chunks
                                       ? attention_decode_partials_bytes(n_seqs, H, n_chunks, 2 * D)
                                       : attention_decode_workspace_bytes(n_seqs, H, D, call.n_ctx);
    std::vector<float> workspace(workspace_bytes / sizeof(float), NAN);
    const int device_pos0 = call.pos0[0];

    attention_params p{};
    p.q = q.data();
    p.k_cache = k.stored.data();
    p.v_cache = v.stored.data();
    p.out = out.data();
    p.n_seqs = n_seqs, p.n_tokens = 1, p.n_heads = H, p.n_kv_heads = G, p.head_dim = D;
    p.n_ctx = call.n_ctx;
    p.pos0.host = call.positions == Positions::Eager ? call.pos0[0] : -1; // -1: must not be read
    p.pos0.device = call.positions == Positions::Device ? &device_pos0 : nullptr;
    p.seq_pos0 = call.positions == Positions::PerSeq ? call.pos0.data() : nullptr;
    p.scale = 1.0f / std::sqrt((float)D);
    p.differential = diff.on;
    p.lambda = diff.lambda, p.lambda_init = diff.lambda_init, p.eps = diff.eps;
    p.workspace = workspace.data();
    p.workspace_bytes = workspace_bytes;

    const int status = call.n_chunks ? attention_decode_launch_chunked<T>(p, nullptr, call.n_chunks,
                                                                          call.min_chunk_keys)
                                     : attention_decode_launch<T>(p, nullptr);
    ASSERT_EQ(status, 0);
    EXPECT_TRUE(all_close(out, expected, diff.on ? kDiffTolerance : kTolerance));
}

struct DecodeParams {
    Shape shape;
    CacheType cache;
};

void PrintTo(const DecodeParams &p, std::ostream *os) {
    *os << cache_type_name(p.cache) << " H=" << p.shape.H << " G=" << p.shape.G
        << " D=" << p.shape.D;
}

std::string decode_name(const ::testing::TestParamInfo<DecodeParams> &info) {
    const DecodeParams &p = info.param;
    return std::string(cache_type_name(p.cache)) + "_H" + std::to_string(p.shape.H) + "_G" +
           std::to_string(p.shape.G) + "_D" + std::to_string(p.shape.D);
}

template <typename T> void run_all_calls(const Shape &shape, bool differential) {
    std::mt19937_64 rng(cinfer_test::fresh_seed() ^ ((uint64_t)shape.H << 32) ^
                        ((uint64_t)shape.G << 16) ^ (uint64_t)shape.D ^
                        (differential ? 1u << 30 : 0));
    std::uniform_real_distribution<float> lambda_dist(0.1f, 0.9f);
    std::uniform_int_distribution<int> layer_dist(0, 31);
    for (const Call &call : kCalls) {
        Differential diff{false, 0.0f, 0.0f, 0.0f};
        if (differential) {
            const int layer = layer_dist(rng);
            diff = {true, lambda_dist(rng), (float)(0.8 - 0.6 * std::exp(-0.3 * layer)),
                    layer % 2 ? 1e-5f : 1e-6f};
        }
        run_call<T>(rng, shape, call, diff);
    }
}

void run_all_calls(const DecodeParams &p, bool differential) {
    switch (p.cache) {
    case CacheType::F32: run_all_calls<float>(p.shape, differential); break;
    case CacheType::BF16: run_all_calls<__nv_bfloat16>(p.shape, differential); break;
    case CacheType::F16: run_all_calls<__half>(p.shape, differential); break;
    }
}

class Decode : public ::testing::TestWithParam<DecodeParams> {};
TEST_P(Decode, MatchesAttentionCpu) { run_all_calls(GetParam(), false); }

class DiffDecode : public ::testing::TestWithParam<DecodeParams> {};
TEST_P(DiffDecode, MatchesDiffAttentionCpu) { run_all_calls(GetParam(), true); }

// Every cache dtype with: GQA groups 1, 2, 4, 8 (one block per group), 3 (a partial slice of 4)
// and 16 (two slices of 8); head dims 4, 8, 12, 16, 32 (the fixtures'), 64, 80, 128, 256, and
// 6 and 10, which no 16-byte load divides (the one-element path, as 4 and 12 for BF16/F16).
std::vector<DecodeParams> decode_params(bool differential) {
    const std::vector<Shape> shapes =
        differential ? std::vector<Shape>{{2, 1, 4},   {4, 2, 8},   {4, 4, 12}, {8, 2, 16},
                                          {8, 1, 32},  {16, 2, 64}, {6, 3, 6},  {4, 2, 80},
                                          {2, 2, 128}, {4, 1, 256}, {6, 2, 10}}
                     : std::vector<Shape>{{2, 2, 4},  {4, 2, 8},   {8, 2, 12},  {8, 1, 16},
                                          {4, 4, 32}, {16, 2, 64}, {6, 2, 6},   {16, 1, 10},
                                          {3, 1, 80}, {4, 1, 128}, {2, 1, 256}, {8, 8, 64}};
    std::vector<DecodeParams> params;
    for (CacheType cache : {CacheType::F32, CacheType::BF16, CacheType::F16})
        for (const Shape &shape : shapes) params.push_back({shape, cache});
    return params;
}

INSTANTIATE_TEST_SUITE_P(Shapes, Decode, ::testing::ValuesIn(decode_params(false)), decode_name);
INSTANTIATE_TEST_SUITE_P(Shapes, DiffDecode, ::testing::ValuesIn(decode_params(true)), decode_name);

// Decode is for one new query; more, or a head_dim over 256, is refused (the caller names the
// kind and falls back), with nothing launched.
TEST(DecodeLimits, RefusesWhatItDoesNotRun) {
    std::vector<float> workspace(1 << 16);
    attention_params p{};
    p.n_seqs = 1, p.n_tokens = 2, p.n_heads = 4, p.n_kv_heads = 2, p.head_dim = 64, p.n_ctx = 16;
    p.workspace = workspace.data(), p.workspace_bytes = workspace.size() * sizeof(float);
    EXPECT_NE(attention_decode_launch<float>(p, nullptr), 0);
    p.n_tokens = 1, p.head_dim = 257;
    EXPECT_NE(attention_decode_launch<__nv_bfloat16>(p, nullptr), 0);
    EXPECT_FALSE(attention_decode_supports(257));
    EXPECT_FALSE(attention_decode_supports(0));
    for (int d = 1; d <= 256; d++) EXPECT_TRUE(attention_decode_supports(d)) << d;
}

// The chunk count: at least one chunk, none shorter than 64 keys, and the workspace sized for
// n_ctx covers every shorter span.
TEST(DecodeChunks, CountFollowsShapesAndSpan) {
    for (int n_seqs : {1, 2, 7, 64})
        for (int H : {2, 8, 32, 64})
            for (int span : {1, 63, 64, 65, 1000, 4096, 131072}) {
                const int n = attention_decode_chunk_count(n_seqs, H, span);
                EXPECT_GE(n, 1);
                EXPECT_LE((long long)(n - 1) * DECODE_MIN_CHUNK_KEYS, span) << n_seqs << " " << H;
                for (int shorter : {1, span / 2, span - 1})
                    EXPECT_LE(attention_decode_chunk_count(n_seqs, H, shorter), n);
            }
    // One Llama-3-8B sequence (H = 32, G = 8) at depth 4096: 64 chunks of 64 keys, 512 blocks.
    EXPECT_EQ(attention_decode_chunk_count(1, 32, 4096), 64);
}

// A recorded call sized for n_ctx = 160 over 10 chunks (of at least 8 keys), with sequences of
// 101 and 6 keys: the first spreads over all 10 chunks (11 keys each), the second fills chunk 0
// alone, and its 9 others say so (m = -inf, l = 0) without writing an output, which the reduce
// then never reads (the workspace starts as NaN, and the output is checked).
TEST(DecodeChunks, ChunksPastTheLengthAreEmpty) {
    const int H = 4, G = 2, D = 16, n_ctx = 160, n_chunks = 10;
    const Call call{{100, 5}, n_ctx, Positions::PerSeq, n_chunks, 8};
    std::mt19937_64 rng(cinfer_test::fresh_seed());
    std::vector<float> q = cinfer_test::random_floats(rng, (size_t)2 * H * D);
    Cache<float> k = make_cache<float>(rng, call, G, D), v = make_cache<float>(rng, call, G, D);
    const std::vector<float> expected =
        reference(call, {H, G, D}, q, k.widened, v.widened, {false, 0, 0, 0});
    std::vector<float> out(expected.size(), NAN);
    std::vector<float> workspace(attention_decode_partials_bytes(2, H, n_chunks, D) / 4, NAN);
    attention_params p{};
    p.q = q.data(), p.k_cache = k.stored.data(), p.v_cache = v.stored.data(), p.out = out.data();
    p.n_seqs = 2, p.n_tokens = 1, p.n_heads = H, p.n_kv_heads = G, p.head_dim = D, p.n_ctx = n_ctx;
    p.seq_pos0 = call.pos0.data();
    p.scale = 1.0f / std::sqrt((float)D);
    p.workspace = workspace.data(), p.workspace_bytes = workspace.size() * sizeof(float);
    ASSERT_EQ(attention_decode_launch_chunked<float>(p, nullptr, n_chunks, 8), 0);
    EXPECT_TRUE(all_close(out, expected, kTolerance));
    const float *stats = workspace.data(); // [n_seqs, H, n_chunks, (m, l)]
    for (int h = 0; h < H; h++)
        for (int c = 0; c < n_chunks; c++) {
            const float *seq0 = stats + 2 * ((0 * H + h) * n_chunks + c);
            const float *seq1 = stats + 2 * ((1 * H + h) * n_chunks + c);
            EXPECT_TRUE(std::isfinite(seq0[0]) && seq0[1] >= 1.0f) << "h=" << h << " c=" << c;
            if (c == 0) {
                EXPECT_TRUE(std::isfinite(seq1[0]) && seq1[1] >= 1.0f) << "h=" << h;
            } else {
                EXPECT_EQ(seq1[0], -INFINITY) << "h=" << h << " c=" << c;
                EXPECT_EQ(seq1[1], 0.0f) << "h=" << h << " c=" << c;
            }
        }
}

// A recorded call replayed with a device position at or past n_ctx (a caller's bug) reads no row
// past the cache: like sdpa and flash, it attends to the whole cache, as position n_ctx − 1 would.
// On a GPU the rows past the last sequence's cache are past its allocation (an illegal address
// that kills the context); here the cache has 16 NaN rows past n_ctx that must not be read.
TEST(DecodeChunks, PositionPastTheCacheIsClamped) {
    const int H = 4, G = 2, D = 16, n_ctx = 40, tail = 16;
    // the allocation: n_ctx + tail rows, the rows past n_ctx − 1 NaN
    const Call allocation{{n_ctx - 1}, n_ctx + tail, Positions::Device, 0, 0};
    std::mt19937_64 rng(cinfer_test::fresh_seed());
    std::vector<float> q = cinfer_test::random_floats(rng, (size_t)H * D);
    Cache<__nv_bfloat16> k = make_cache<__nv_bfloat16>(rng, allocation, G, D);
    Cache<__nv_bfloat16> v = make_cache<__nv_bfloat16>(rng, allocation, G, D);
    const std::vector<float> expected =
        reference(allocation, {H, G, D}, q, k.widened, v.widened, {false, 0, 0, 0});
    for (int device_pos0 : {n_ctx, n_ctx + 5, n_ctx + tail + 100})
        for (int n_chunks : {0, 6}) { // the launcher's chunking, and 6 chunks of >= 4 keys
            SCOPED_TRACE("device pos0 " + std::to_string(device_pos0) + " chunks " +
                         std::to_string(n_chunks));
            std::vector<float> out(expected.size(), NAN);
            const size_t workspace_bytes =
                n_chunks ? attention_decode_partials_bytes(1, H, n_chunks, 2 * D)
                         : attention_decode_workspace_bytes(1, H, D, n_ctx);
            std::vector<float> workspace(workspace_bytes / sizeof(float), NAN);
            attention_params p{};
            p.q = q.data(), p.k_cache = k.stored.data(), p.v_cache = v.stored.data();
            p.out = out.data();
            p.n_seqs = 1, p.n_tokens = 1, p.n_heads = H, p.n_kv_heads = G, p.head_dim = D;
            p.n_ctx = n_ctx;
            p.pos0.host = -1, p.pos0.device = &device_pos0;
            p.scale = 1.0f / std::sqrt((float)D);
            p.workspace = workspace.data(), p.workspace_bytes = workspace_bytes;
            ASSERT_EQ(n_chunks ? attention_decode_launch_chunked<__nv_bfloat16>(p, nullptr,
                                                                                n_chunks, 4)
                               : attention_decode_launch<__nv_bfloat16>(p, nullptr),
                      0);
            EXPECT_TRUE(all_close(out, expected, kTolerance));
        }
}

// Bytes one decode step moves per layer for Llama-3-8B (H = 32, G = 8, D = 128, BF16 cache) at
// depth 4096, against the ideal of reading K and V once: printed for the report, and bounded so
// that a change in the chunking that inflates the partials shows here.
TEST(DecodeTraffic, Llama3At4096) {
    const int H = 32, G = 8, D = 128, depth = 4096, group = H / G;
    const double cache_bytes = 2.0 * depth * G * D * 2; // K and V, BF16: each row read once
    const int n_chunks = attention_decode_chunk_count(1, H, depth);
    const int chunk_keys = std::max(DECODE_MIN_CHUNK_KEYS, (depth + n_chunks - 1) / n_chunks);
    const int active = (depth + chunk_keys - 1) / chunk_keys;
    const double partials = (double)H * active * (2 + D) * 4;  // written by split, read by reduce
    const double q_reads = (double)G * active * group * D * 4; // each block reads its heads' q
    const double out_bytes = (double)H * D * 4;
    const double total = cache_bytes + 2 * partials + q_reads + out_bytes;
    std::printf("[decode traffic] Llama-3-8B layer, depth %d: %d chunks of %d keys, %d split "
                "blocks; K+V %.0f bytes (ideal), partials %.0f written + %.0f read, q %.0f "
                "(L2), out %.0f: total %.0f = %.3f x ideal\n",
                depth, n_chunks, chunk_keys, G * n_chunks, cache_bytes, partials, partials, q_reads,
                out_bytes, total, total / cache_bytes);
    EXPECT_LT(total / cache_bytes, 1.25);
}

} // namespace
