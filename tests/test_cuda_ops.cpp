// Each CUDA op against its CPU op (kernels/cpu, the reference), on fresh random inputs every run
// (CINFER_TEST_SEED replays one), over many shapes: odd sizes, GQA ratios, head dims 32-256,
// weights in F32, BF16 and F16. Every output is poisoned (all bits set: NaN for floats, -1 for
// ids) before the op runs, so an element the op never writes fails the comparison.
//
// Without a CUDA device (or in a build without CUDA) every test here is skipped, visibly.
//
// Tolerances are per element, derived beside each test from how the GPU's F32 arithmetic can
// differ from the CPU's double accumulation; ops that only move or widen data must match exactly.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "kernels/device.h"
#include "common/tensor.h"
#include "models/model.h"
}

using cinfer_test::fresh_seed;

namespace {

constexpr double kUlp = 0x1.0p-24; // F32 unit roundoff

// Why there is no GPU to test on, or "" when there is one.
std::string gpu_missing() {
    if (ci_backend_available(CINFER_BACKEND_CUDA) != CINFER_OK) return cinfer_last_error();
    if (ci_cuda_devices(nullptr, 0) == 0) return "no CUDA device found";
    return "";
}

std::mt19937_64 test_rng() {
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string name = std::string(info->test_suite_name()) + "." + info->name();
    return std::mt19937_64(fresh_seed() ^ std::hash<std::string>{}(name));
}

// Host bytes of values in a weight dtype, and the values they actually hold.
struct Encoded {
    std::vector<unsigned char> bytes;
    std::vector<float> values;
};

Encoded encode(const std::vector<float> &values, ci_dtype dtype) {
    Encoded e;
    e.bytes.resize(values.size() * ci_dtype_size(dtype));
    e.values.resize(values.size());
    for (size_t i = 0; i < values.size(); i++) {
        if (dtype == CI_F32) {
            std::memcpy(e.bytes.data() + 4 * i, &values[i], 4);
            e.values[i] = values[i];
        } else {
            const uint16_t h =
                dtype == CI_BF16 ? ci_f32_to_bf16(values[i]) : ci_f32_to_f16(values[i]);
            std::memcpy(e.bytes.data() + 2 * i, &h, 2);
            e.values[i] = dtype == CI_BF16 ? ci_bf16_to_f32(h) : ci_f16_to_f32(h);
        }
    }
    return e;
}

ci_tensor view(void *data, ci_dtype dtype, std::initializer_list<int64_t> shape) {
    ci_tensor t{};
    t.data = data;
    t.dtype = dtype;
    for (int64_t d : shape) t.shape[t.n_dims++] = d;
    return t;
}

// The CPU reference backend and a CUDA backend side by side, and device buffers that are freed
// with the test.
class CudaOps : public ::testing::Test {
  protected:
    void SetUp() override {
        const std::string missing = gpu_missing();
        if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
        ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CPU, 2, &cpu_), CINFER_OK)
            << cinfer_last_error();
        ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CUDA, 0, &gpu_), CINFER_OK)
            << cinfer_last_error();
        rng_ = test_rng();
    }
    void TearDown() override {
        for (void *p : allocations_) gpu_->ops->free(gpu_, p);
        ci_backend_free(gpu_);
        ci_backend_free(cpu_);
    }

    // Both backends reserve what they ask for a model of this shape.
    void reserve(int64_t widest_input, int n_heads, int n_kv_heads, int head_dim, int n_ctx,
                 int n_seqs = 1) {
        ci_config config{};
        config.hidden_size = config.intermediate_size = (int)widest_input;
        config.n_heads = n_heads;
        config.n_kv_heads = n_kv_heads;
        config.head_dim = head_dim;
        for (ci_backend *be : {cpu_, gpu_})
            ASSERT_EQ(ci_backend_reserve(be, be->ops->workspace_bytes(be, &config, n_ctx, n_seqs)),
                      CINFER_OK)
                << cinfer_last_error();
    }

    // A device copy of host bytes, viewed with the host tensor's dtype and shape.
    ci_tensor upload(const ci_tensor &host) {
        const size_t bytes = ci_tensor_nbytes(&host);
        void *p = gpu_->ops->alloc(gpu_, bytes);
        EXPECT_NE(p, nullptr);
        allocations_.push_back(p);
        gpu_->ops->to_device(gpu_, p, host.data, bytes);
        ci_tensor t = host;
        t.data = p;
        return t;
    }
    // A device output with every bit set.
    ci_tensor poisoned(const ci_tensor &host) {
        std::vector<unsigned char> poison(ci_tensor_nbytes(&host), 0xff);
        ci_tensor h = host;
        h.data = poison.data();
        return upload(h);
    }
    template <typename T> std::vector<T> download(const ci_tensor &device) {
        std::vector<T> out(ci_tensor_nbytes(&device) / sizeof(T));
        gpu_->ops->to_host(gpu_, out.data(), device.data, ci_tensor_nbytes(&device));
        return out;
    }

    std::vector<float> randn(size_t n, float scale = 1.0f) {
        return cinfer_test::random_floats(rng_, n, scale);
    }

    ci_backend *cpu_ = nullptr, *gpu_ = nullptr;
    std::vector<void *> allocations_;
    std::mt19937_64 rng_;
};

// Every element within its tolerance; NaN (an unwritten, poisoned element) fails.
::testing::AssertionResult all_close(const std::vector<float> &gpu, const std::vector<float> &cpu,
                                     const std::function<double(size_t)> &tolerance) {
    if (gpu.size() != cpu.size())
        return ::testing::AssertionFailure()
               << "sizes differ: " << gpu.size() << " vs " << cpu.size();
    size_t n_bad = 0, worst = 0;
    double worst_ratio = -1.0;
    for (size_t i = 0; i < cpu.size(); i++) {
        const double error = std::fabs((double)gpu[i] - (double)cpu[i]);
        const double ratio = std::isnan(error) ? INFINITY : error / tolerance(i);
        if (!(error <= tolerance(i))) n_bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    if (n_bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << n_bad << " of " << cpu.size() << " elements out of tolerance; worst at " << worst
           << ": gpu " << gpu[worst] << ", cpu " << cpu[worst] << " ± " << tolerance(worst);
}

// ---- embedding: a gather that widens, so exact -------------------------------------------------

TEST_F(CudaOps, EmbeddingGathersRowsExactly) {
    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16})
        for (auto [vocab, dim, n_tokens] :
             std::vector<std::tuple<int, int, int>>{{5, 7, 1}, {1000, 64, 17}, {313, 300, 64}}) {
            SCOPED_TRACE(std::string(ci_dtype_name(dtype)) + " vocab " + std::to_string(vocab) +
                         " dim " + std::to_string(dim) + " tokens " + std::to_string(n_tokens));
            Encoded table = encode(randn((size_t)vocab * dim), dtype);
            std::vector<int32_t> ids(n_tokens);
            std::uniform_int_distribution<int> pick(0, vocab - 1);
            for (auto &id : ids) id = pick(rng_);
            ids[0] = vocab - 1; // the last row too
            ci_tensor h_table = view(table.bytes.data(), dtype, {vocab, dim});
            ci_tensor h_ids = view(ids.data(), CI_I32, {n_tokens});
            std::vector<float> want(n_tokens * (size_t)dim);
            ci_tensor h_out = view(want.data(), CI_F32, {n_tokens, dim});
            cpu_->ops->embedding(cpu_, &h_out, &h_ids, &h_table);
            ci_tensor d_table = upload(h_table), d_ids = upload(h_ids), d_out = poisoned(h_out);
            gpu_->ops->embedding(gpu_, &d_out, &d_ids, &d_table);
            EXPECT_TRUE(all_close(download<float>(d_out), want, [](size_t) { return 0.0; }));
        }
}

// ---- RMSNorm -----------------------------------------------------------------------------------
// The GPU sums squares in F32 over a tree (error below log2(dim)·u relative), takes 1/sqrt in F32;
// the CPU sums in double. 1e-5 relative to each output covers dim up to 2^16 with margin.

TEST_F(CudaOps, RmsnormMatchesCpu) {
    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16})
        for (int dim : {1, 7, 64, 255, 1000, 4096})
            for (int rows : {1, 3, 17}) {
                SCOPED_TRACE(std::string(ci_dtype_name(dtype)) + " dim " + std::to_string(dim) +
                             " rows " + std::to_string(rows));
                reserve(dim, 1, 1, 2, 1);
                std::vector<float> x = randn((size_t)rows * dim, 3.0f);
                Encoded w = encode(randn(dim), dtype);
                std::vector<float> want(x.size());
                ci_tensor h_x = view(x.data(), CI_F32, {rows, dim});
                ci_tensor h_w = view(w.bytes.data(), dtype, {dim});
                ci_tensor h_out = view(want.data(), CI_F32, {rows, dim});
                cpu_->ops->rmsnorm(cpu_, &h_out, &h_x, &h_w, 1e-6f);
                ci_tensor d_x = upload(h_x), d_w = upload(h_w), d_out = poisoned(h_out);
                gpu_->ops->rmsnorm(gpu_, &d_out, &d_x, &d_w, 1e-6f);
                EXPECT_TRUE(all_close(download<float>(d_out), want,
                                      [&](size_t i) { return 1e-5 * std::fabs(want[i]) + 1e-30; }));
            }
}

// ---- matmul ------------------------------------------------------------------------------------
// Bound per output: the F32 accumulation (at most K·u relative to Σ|x·w|, whatever order cuBLAS
// sums in) plus, with BF16/F16 weights, the rounding of x to that dtype on the way in (at most the
// unit roundoff of that dtype, 2^-8 for bf16 and 2^-11 for fp16, relative to each |x·w| term),
// doubled for margin.

struct MatmulShape {
    int n_tokens, n_in, n_out;
};

// Three projections of one input per call (q, k, v widths: n_out, a few, n_out + 5), with and
// without accumulate, against the CPU op. Row counts 1..8 are where a few-row kernel may take the
// call, more rows go to cuBLAS; K = 65 and K = 1000 are not multiples of a vector width.
TEST_F(CudaOps, MatmulMatchesCpuInEveryWeightDtype) {
    const MatmulShape shapes[] = {{1, 64, 96},    {3, 65, 7},     {8, 4096, 250},  {17, 256, 129},
                                  {64, 1000, 33}, {5, 4096, 250}, {130, 96, 1024}, {1, 14336, 40}};
    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16})
        for (const MatmulShape &s : shapes)
            for (int with_bias : {0, 1})
                for (int accumulate : {0, 1}) {
                    SCOPED_TRACE(std::string(ci_dtype_name(dtype)) + " T " +
                                 std::to_string(s.n_tokens) + " K " + std::to_string(s.n_in) +
                                 " N " + std::to_string(s.n_out) + (with_bias ? " bias" : "") +
                                 (accumulate ? " accumulate" : ""));
                    reserve(s.n_in, 1, 1, 2, s.n_tokens);
                    const int widths[CI_MAX_PROJECTIONS] = {s.n_out, s.n_out % 7 + 1, s.n_out + 5};
                    std::vector<float> x = randn((size_t)s.n_tokens * s.n_in);
                    ci_tensor h_x = view(x.data(), CI_F32, {s.n_tokens, s.n_in});
                    ci_tensor d_x = upload(h_x);
                    std::vector<Encoded> w, b;
                    std::vector<std::vector<float>> held, want;
                    ci_tensor h_w[CI_MAX_PROJECTIONS], h_b[CI_MAX_PROJECTIONS],
                        h_out[CI_MAX_PROJECTIONS];
                    ci_tensor d_w[CI_MAX_PROJECTIONS], d_b[CI_MAX_PROJECTIONS],
                        d_out[CI_MAX_PROJECTIONS];
                    ci_projection h_p[CI_MAX_PROJECTIONS], d_p[CI_MAX_PROJECTIONS];
                    for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                        w.push_back(encode(randn((size_t)widths[i] * s.n_in, 0.05f), dtype));
                        b.push_back(encode(randn(widths[i]), CI_F32));
                        held.push_back(randn((size_t)s.n_tokens * widths[i]));
                    }
                    for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                        want.push_back(held[i]);
                        h_w[i] = view(w[i].bytes.data(), dtype, {widths[i], s.n_in});
                        h_b[i] = view(b[i].bytes.data(), CI_F32, {widths[i]});
                        h_out[i] = view(want[i].data(), CI_F32, {s.n_tokens, widths[i]});
                        d_w[i] = upload(h_w[i]);
                        d_b[i] = upload(h_b[i]);
                        d_out[i] =
                            accumulate
                                ? upload(view(held[i].data(), CI_F32, {s.n_tokens, widths[i]}))
                                : poisoned(h_out[i]);
                        h_p[i] = {&h_out[i], &h_w[i], with_bias ? &h_b[i] : nullptr};
                        d_p[i] = {&d_out[i], &d_w[i], with_bias ? &d_b[i] : nullptr};
                    }
                    cpu_->ops->matmul(cpu_, &h_x, h_p, CI_MAX_PROJECTIONS, accumulate);
                    gpu_->ops->matmul(gpu_, &d_x, d_p, CI_MAX_PROJECTIONS, accumulate);
                    const double input_rounding = dtype == CI_BF16  ? 0x1.0p-8
                                                  : dtype == CI_F16 ? 0x1.0p-11
                                                                    : 0.0;
                    const double relative = 2.0 * (input_rounding + s.n_in * kUlp);
                    for (int i = 0; i < CI_MAX_PROJECTIONS; i++) {
                        const int n_out = widths[i];
                        EXPECT_TRUE(all_close(
                            download<float>(d_out[i]), want[i],
                            [&](size_t e) {
                                const size_t t = e / n_out, n = e % n_out;
                                double magnitude = 0.0;
                                for (int k = 0; k < s.n_in; k++)
                                    magnitude += std::fabs((double)x[t * s.n_in + k] *
                                                           (double)w[i].values[n * s.n_in + k]);
                                return relative * magnitude +
                                       4.0 * kUlp *
                                           (std::fabs(want[i][e]) + std::fabs(held[i][e])) +
                                       1e-30;
                            }))
                            << "projection " << i;
                    }
                }
}

// ---- timing marks --------------------------------------------------------------------------
// Marks around queued work read its device time: positive and finite, longer for more work than
// for none, and NaN for a slot never marked.

TEST_F(CudaOps, MarksTimeQueuedWork) {
    const int n = 4096;
    reserve(n, 1, 1, 2, n);
    std::vector<float> x = randn((size_t)n * n, 0.01f);
    ci_tensor h_x = view(x.data(), CI_F32, {n, n});
    ci_tensor d_x = upload(h_x), d_w = upload(h_x), d_out = poisoned(h_x);
    gpu_->ops->mark(gpu_, 0);
    gpu_->ops->mark(gpu_, 1);
    for (int i = 0; i < 4; i++) ci_matmul(gpu_, &d_out, &d_x, &d_w, nullptr);
    gpu_->ops->mark(gpu_, 2);
    const double nothing = gpu_->ops->seconds_between(gpu_, 0, 1);
    const double work = gpu_->ops->seconds_between(gpu_, 1, 2);
    EXPECT_TRUE(std::isfinite(nothing) && nothing >= 0.0) << nothing;
    EXPECT_TRUE(std::isfinite(work) && work > nothing) << work << " vs " << nothing;
    EXPECT_TRUE(std::isnan(gpu_->ops->seconds_between(gpu_, 0, 1000)));
}

// ---- RoPE --------------------------------------------------------------------------------------
// The frequencies come from models/rope.c for every scaling type; angles are the same F32 products
// on both sides, cos/sin within 2 ulps of each other, and the GPU may fuse the final multiply-add:
// a few ulps of |x1| + |x2| times the attention scaling.

ci_config rope_config(ci_rope_type type, int head_dim) {
    ci_config c{};
    c.head_dim = head_dim;
    c.max_position_embeddings = 2048;
    c.rope.type = type;
    c.rope.theta = type == CI_ROPE_LLAMA3 ? 500000.0 : 10000.0;
    c.rope.factor = 4.0;
    c.rope.low_freq_factor = 1.0;
    c.rope.high_freq_factor = 4.0;
    c.rope.original_max_position_embeddings = 512;
    c.rope.attention_factor = -1.0;
    c.rope.beta_fast = 32.0;
    c.rope.beta_slow = 1.0;
    c.rope.truncate = true;
    return c;
}

TEST_F(CudaOps, RopeMatchesCpuForEveryScalingType) {
    const ci_rope_type types[] = {CI_ROPE_DEFAULT, CI_ROPE_LINEAR, CI_ROPE_DYNAMIC, CI_ROPE_LLAMA3,
                                  CI_ROPE_YARN};
    const std::tuple<int, int> heads[] = {{4, 4}, {8, 2}, {6, 1}};
    for (ci_rope_type type : types)
        for (int head_dim : {32, 64, 80, 128, 256})
            for (auto [n_heads, n_kv_heads] : heads)
                for (auto [n_tokens, pos0] :
                     std::vector<std::tuple<int, int>>{{1, 0}, {7, 3}, {1, 4999}, {20, 3000}}) {
                    SCOPED_TRACE(std::string(ci_rope_type_name(type)) + " D " +
                                 std::to_string(head_dim) + " H " + std::to_string(n_heads) +
                                 " G " + std::to_string(n_kv_heads) + " T " +
                                 std::to_string(n_tokens) + " pos0 " + std::to_string(pos0));
                    const ci_config c = rope_config(type, head_dim);
                    std::vector<float> inv_freq(head_dim / 2);
                    ci_rope_freqs freqs{};
                    ci_rope_frequencies(&c, pos0 + n_tokens, inv_freq.data(),
                                        &freqs.attention_scaling);
                    std::vector<float> q = randn((size_t)n_tokens * n_heads * head_dim);
                    std::vector<float> k = randn((size_t)n_tokens * n_kv_heads * head_dim);
                    std::vector<float> q_in = q, k_in = k;
                    ci_tensor h_q = view(q.data(), CI_F32, {n_tokens, n_heads, head_dim});
                    ci_tensor h_k = view(k.data(), CI_F32, {n_tokens, n_kv_heads, head_dim});
                    ci_tensor d_q = upload(h_q), d_k = upload(h_k);
                    ci_tensor h_freq = view(inv_freq.data(), CI_F32, {head_dim / 2});
                    ci_tensor d_freq = upload(h_freq);
                    freqs.inv_freq = inv_freq.data();
                    cpu_->ops->rope(cpu_, &h_q, &h_k, pos0, &freqs);
                    ci_rope_freqs d_freqs = {(const float *)d_freq.data, freqs.attention_scaling};
                    gpu_->ops->rope(gpu_, &d_q, &d_k, pos0, &d_freqs);
                    const int half = head_dim / 2;
                    auto tolerance_for = [&](const std::vector<float> &in) {
                        return [&, half](size_t i) {
                            const size_t base = i / head_dim * head_dim, j = i % head_dim % half;
                            return 8.0 * kUlp * freqs.attention_scaling *
                                       (std::fabs(in[base + j]) + std::fabs(in[base + j + half])) +
                                   1e-30;
                        };
                    };
                    EXPECT_TRUE(all_close(download<float>(d_q), q, tolerance_for(q_in)));
                    EXPECT_TRUE(all_close(download<float>(d_k), k, tolerance_for(k_in)));
                }
}

// ---- attention ---------------------------------------------------------------------------------
// Every kind (eager, sdpa, flash: prefill and, for one query, flash-decoding) with every cache
// dtype, against the CPU op fed the very values the cache holds (K and V rounded to BF16/F16 on
// the host first, so that the cache's own rounding is no part of the error).
//
// F32 caches: the GPU's scores are F32 dot products over D terms (|q·k| ~ sqrt(D) here, so a score
// can be off by ~sqrt(D)·D·u / sqrt(D) ~ 1e-5 at D = 256), its softmax sums and P·V accumulate in
// F32; the output is a convex combination of values, moved by a score error δ at most about
// δ·max |v|. Bound: 1e-4·max |v|, ten times that estimate, and still far below what one key
// wrongly in or out of the mask moves (p·|v|, p >= 1/n_keys).
// BF16/F16 caches: flash's tensor cores take Q and P rounded to the cache dtype (unit roundoff u =
// 2^-9 for BF16, 2^-12 for F16). Q's rounding moves a score by about u·|q|·|k|·scale ~ u·sqrt(D)
// scaled back by 1/sqrt(D), i.e. ~u, and P's rounding moves the output by ~u·max |v|: together
// ~2u·max |v|; the bound is 8u·max |v| (BF16 3.1e-2, F16 2e-3, provisional until measured on a
// GPU). eager and sdpa widen the cache and keep F32, so the F32 bound holds for them.
// Differential attention's group norm rescales by the RMS of a difference: its bound is relative
// to the output's own scale, (bound / max |v|)·(1 + |y|).

struct AttentionCase {
    int head_dim, n_heads, n_kv_heads, n_tokens, pos0;
};

std::vector<AttentionCase> attention_cases() {
    std::vector<AttentionCase> cases;
    const std::tuple<int, int> heads[] = {{4, 4}, {8, 2}, {8, 1}, {12, 4}, {6, 3}, {16, 2}};
    const std::tuple<int, int> steps[] = {{1, 0}, {1, 37}, {7, 0}, {5, 11}, {33, 100}, {70, 129}};
    for (int head_dim : {12, 16, 32, 64, 80, 128, 256})
        for (auto [h, g] : heads)
            for (auto [t, pos0] : steps) cases.push_back({head_dim, h, g, t, pos0});
    // lengths of a long context: prefill past several tiles, odd sizes, and decode over 4096 keys
    for (AttentionCase c : std::vector<AttentionCase>{{128, 32, 8, 1, 4095},
                                                      {64, 32, 8, 1, 3001},
                                                      {128, 8, 1, 1, 2047},
                                                      {128, 8, 2, 1000, 0},
                                                      {64, 16, 4, 257, 1500},
                                                      {128, 16, 16, 129, 3967}})
        cases.push_back(c);
    return cases;
}

std::string case_name(const AttentionCase &c) {
    return "D" + std::to_string(c.head_dim) + " H" + std::to_string(c.n_heads) + " G" +
           std::to_string(c.n_kv_heads) + " T" + std::to_string(c.n_tokens) + " pos0 " +
           std::to_string(c.pos0);
}

const char *kind_name(cinfer_attention kind) {
    return kind == CINFER_ATTENTION_EAGER  ? "eager"
           : kind == CINFER_ATTENTION_SDPA ? "sdpa"
                                           : "flash";
}

class CudaAttention : public CudaOps,
                      public ::testing::WithParamInterface<std::tuple<cinfer_attention, ci_dtype>> {
  protected:
    // The shape of q/out or a cache: [rows, heads, D], or [B, rows, heads, D] for B lockstep
    // sequences (kernels/backend.h).
    static ci_tensor seqs_view(void *data, ci_dtype dtype, int n_seqs, int64_t rows, int64_t heads,
                               int64_t head_dim) {
        return n_seqs == 1 ? view(data, dtype, {rows, heads, head_dim})
                           : view(data, dtype, {n_seqs, rows, heads, head_dim});
    }

    // Runs standard or differential attention on both backends and compares; with n_seqs > 1,
    // one call over n_seqs sequences, each over its own cache (the CPU op runs them one by one).
    void check(const AttentionCase &c, bool differential, size_t gpu_workspace_rows = 0,
               int n_seqs = 1) {
        const cinfer_attention kind = std::get<0>(GetParam());
        const ci_dtype cache_dtype = std::get<1>(GetParam());
        if (!ci_cuda_attention_supports(kind, c.head_dim, differential, cache_dtype, 0))
            return; // refused at load instead
        SCOPED_TRACE(case_name(c) + (differential ? " differential" : " standard") + " B" +
                     std::to_string(n_seqs));
        const int n_ctx = c.pos0 + c.n_tokens + 3; // rows past the last position stay unused
        gpu_->attention = kind;
        reserve(64, c.n_heads, c.n_kv_heads, c.head_dim, n_ctx, n_seqs);
        if (gpu_workspace_rows) {
            // a fresh backend whose workspace holds this many query rows of eager's scores (the
            // attention scratch per row, kernels/cuda/attention.cu): the op must work in chunks
            ci_backend_free(gpu_);
            ASSERT_EQ(ci_backend_create(CINFER_BACKEND_CUDA, 0, &gpu_), CINFER_OK);
            gpu_->attention = kind;
            const size_t per_row = (size_t)c.n_heads * (n_ctx + 2 * (size_t)c.head_dim) * 4;
            const size_t widened = 2 * (size_t)n_ctx * c.n_kv_heads * c.head_dim * 4;
            ASSERT_EQ(ci_backend_reserve(gpu_, widened + per_row * gpu_workspace_rows), CINFER_OK);
        }
        const size_t q_n = (size_t)n_seqs * c.n_tokens * c.n_heads * c.head_dim;
        const size_t kv_seq = (size_t)n_ctx * c.n_kv_heads * c.head_dim, kv_n = n_seqs * kv_seq;
        std::vector<float> q = randn(q_n), want(q_n);
        // the rows past the last position hold garbage no kind may let through
        std::vector<float> k = randn(kv_n), v = randn(kv_n, 2.0f);
        const size_t used = (size_t)(c.pos0 + c.n_tokens) * c.n_kv_heads * c.head_dim;
        for (int b = 0; b < n_seqs; b++)
            for (size_t i = used; i < kv_seq; i++) k[b * kv_seq + i] = v[b * kv_seq + i] = 3.0e4f;
        Encoded k_cache = encode(k, cache_dtype), v_cache = encode(v, cache_dtype);
        const int G = c.n_kv_heads, H = c.n_heads, D = c.head_dim;
        ci_tensor h_q = seqs_view(q.data(), CI_F32, n_seqs, c.n_tokens, H, D);
        ci_tensor h_k = seqs_view(k_cache.values.data(), CI_F32, n_seqs, n_ctx, G, D);
        ci_tensor h_v = seqs_view(v_cache.values.data(), CI_F32, n_seqs, n_ctx, G, D);
        ci_tensor h_out = seqs_view(want.data(), CI_F32, n_seqs, c.n_tokens, H, D);
        ci_tensor d_q = upload(h_q), d_out = poisoned(h_out);
        ci_tensor d_k = upload(seqs_view(k_cache.bytes.data(), cache_dtype, n_seqs, n_ctx, G, D));
        ci_tensor d_v = upload(seqs_view(v_cache.bytes.data(), cache_dtype, n_seqs, n_ctx, G, D));
        std::uniform_real_distribution<float> unit(0.1f, 0.9f);
        const float lambda = unit(rng_), lambda_init = unit(rng_), eps = 1e-5f;
        if (differential) {
            cpu_->ops->diff_attention(cpu_, &h_out, &h_q, &h_k, &h_v, c.pos0, lambda, lambda_init,
                                      eps);
            gpu_->ops->diff_attention(gpu_, &d_out, &d_q, &d_k, &d_v, c.pos0, lambda, lambda_init,
                                      eps);
        } else {
            cpu_->ops->attention(cpu_, &h_out, &h_q, &h_k, &h_v, c.pos0);
            gpu_->ops->attention(gpu_, &d_out, &d_q, &d_k, &d_v, c.pos0);
        }
        double v_max = 0.0;
        for (int b = 0; b < n_seqs; b++)
            for (size_t i = 0; i < used; i++)
                v_max = std::max(v_max, (double)std::fabs(v[b * kv_seq + i]));
        const bool tensor_cores = kind == CINFER_ATTENTION_FLASH && cache_dtype != CI_F32;
        const double unit_roundoff = cache_dtype == CI_BF16 ? 0x1.0p-9 : 0x1.0p-12;
        const double relative = tensor_cores ? 8.0 * unit_roundoff : 1e-4;
        EXPECT_TRUE(all_close(download<float>(d_out), want, [&](size_t i) {
            return differential ? relative * (1.0 + std::fabs(want[i])) : relative * v_max;
        }));
    }
};

TEST_P(CudaAttention, StandardMatchesCpuOverShapesAndGqaRatios) {
    for (const AttentionCase &c : attention_cases()) check(c, false);
}

TEST_P(CudaAttention, DifferentialMatchesCpuOverShapesAndGqaRatios) {
    for (const AttentionCase &c : attention_cases()) check(c, true);
}

// B sequences in lockstep, each over its own cache, in one call: prefill, and decode (flash runs
// flash-decoding with partials for every sequence in its workspace).
TEST_P(CudaAttention, BatchedSequencesMatchCpuSequenceBySequence) {
    for (int n_seqs : {2, 5})
        for (const AttentionCase &c : std::vector<AttentionCase>{{64, 8, 2, 1, 0},
                                                                 {64, 8, 2, 1, 300},
                                                                 {128, 8, 1, 7, 40},
                                                                 {80, 6, 3, 33, 100},
                                                                 {128, 32, 8, 1, 2047}}) {
            check(c, false, 0, n_seqs);
            check(c, true, 0, n_seqs);
        }
}

// Eager's scores for many query rows do not fit its workspace at once: it works in chunks.
class CudaEagerAttention : public CudaAttention {};

TEST_P(CudaEagerAttention, LongPromptsRunInChunksOfQueryRows) {
    check({64, 8, 2, 33, 5}, false, 3);
    check({64, 8, 2, 33, 5}, true, 3);
    check({128, 4, 4, 10, 0}, false, 1);
}

std::string attention_param_name(const ::testing::TestParamInfo<CudaAttention::ParamType> &info) {
    const ci_dtype dtype = std::get<1>(info.param);
    return std::string(kind_name(std::get<0>(info.param))) + "_" +
           (dtype == CI_F32    ? "f32"
            : dtype == CI_BF16 ? "bf16"
                               : "fp16");
}

INSTANTIATE_TEST_SUITE_P(Kinds, CudaAttention,
                         ::testing::Combine(::testing::Values(CINFER_ATTENTION_EAGER,
                                                              CINFER_ATTENTION_SDPA,
                                                              CINFER_ATTENTION_FLASH),
                                            ::testing::Values(CI_F32, CI_BF16, CI_F16)),
                         attention_param_name);
INSTANTIATE_TEST_SUITE_P(Eager, CudaEagerAttention,
                         ::testing::Combine(::testing::Values(CINFER_ATTENTION_EAGER),
                                            ::testing::Values(CI_F32, CI_BF16, CI_F16)),
                         attention_param_name);

// ---- the ragged step over a paged cache ---------------------------------------------------------
// The paged ops of every kind against the contiguous CPU ops, sequence by sequence (each row's
// result is the contiguous op's for its sequence alone at pos0 = its first row's position), the
// same construction as tests/test_emu_paged.cpp: blocks in shuffled order, every pool row no
// sequence holds NaN, table entries past a sequence's blocks far outside the pool, the output
// poisoned, this step's keys stored by kv_store_paged. A decode-only step is also recorded as a
// CUDA graph and replayed for the next token after its device contents changed (new positions,
// lengths, slots, a new block, new keys and queries), with max_seq_len a bound past every length
// as the engine records it: the ops must take everything but the shapes from device memory.

struct PagedSeq {
    int cached, rows;
};

class CudaPagedAttention
    : public CudaOps,
      public ::testing::WithParamInterface<std::tuple<cinfer_attention, ci_dtype>> {
  protected:
    int H = 8, G = 2, D = 64, bs = 16;
    ci_dtype dtype = CI_F32;
    bool differential = false;
    float lambda = 0.5f, lambda_init = 0.3f, eps = 1e-5f;

    // The step on the host, and its device tensors (allocated once: a replay reads the same ones).
    std::vector<PagedSeq> seqs;
    int S = 0, R = 0, max_blocks = 0, n_blocks = 0, max_seq_len = 0, max_seq_rows = 0;
    std::vector<int> starts, lens, positions, slots, table;
    std::vector<std::vector<float>> k_seq, v_seq; // each sequence's keys as the pool holds them
    std::vector<float> q, k_new, v_new, want;
    std::vector<int> free_blocks;
    ci_tensor d_k_pool{}, d_v_pool{}, d_q{}, d_out{}, d_k_new{}, d_v_new{};
    ci_paged_step step{};

    static constexpr int kPoisonBlock = 1 << 28;

    int slot_of(int s, int p) const { return table[(size_t)s * max_blocks + p / bs] * bs + p % bs; }

    // A new step over `seqs` (fresh keys for every cached position), its pool uploaded.
    void build(int bound_extra) {
        S = (int)seqs.size();
        starts = {0}, lens.clear(), positions.clear(), slots.clear();
        int blocks_used = 0;
        max_seq_len = max_seq_rows = 0;
        for (const PagedSeq &s : seqs) {
            starts.push_back(starts.back() + s.rows);
            lens.push_back(s.cached + s.rows);
            max_seq_len = std::max(max_seq_len, s.cached + s.rows);
            max_seq_rows = std::max(max_seq_rows, s.rows);
            blocks_used += (s.cached + s.rows + bs - 1) / bs;
        }
        R = starts.back();
        max_seq_len += bound_extra;
        max_blocks = (max_seq_len + bs) / bs + 1; // room for a step after this one
        n_blocks = blocks_used + S + 2;
        free_blocks.resize(n_blocks);
        for (int b = 0; b < n_blocks; b++) free_blocks[b] = b;
        std::shuffle(free_blocks.begin(), free_blocks.end(), rng_);
        table.assign((size_t)S * max_blocks, kPoisonBlock);
        const int row = G * D;
        std::vector<float> pool((size_t)n_blocks * bs * row, NAN);
        k_seq.assign(S, {}), v_seq.assign(S, {});
        std::vector<float> pool_v = pool;
        for (int s = 0; s < S; s++) {
            for (int b = 0; b < (lens[s] + bs - 1) / bs; b++) {
                table[(size_t)s * max_blocks + b] = free_blocks.back();
                free_blocks.pop_back();
            }
            k_seq[s] = encode(randn((size_t)lens[s] * row), dtype).values;
            v_seq[s] = encode(randn((size_t)lens[s] * row, 2.0f), dtype).values;
            for (int p = 0; p < seqs[s].cached; p++)
                for (int i = 0; i < row; i++) {
                    pool[(size_t)slot_of(s, p) * row + i] = k_seq[s][(size_t)p * row + i];
                    pool_v[(size_t)slot_of(s, p) * row + i] = v_seq[s][(size_t)p * row + i];
                }
        }
        Encoded k_pool = encode(pool, dtype), v_pool = encode(pool_v, dtype);
        d_k_pool = upload(view(k_pool.bytes.data(), dtype, {n_blocks, bs, G, D}));
        d_v_pool = upload(view(v_pool.bytes.data(), dtype, {n_blocks, bs, G, D}));
        q = randn((size_t)R * H * D);
        std::vector<float> out((size_t)R * H * D);
        d_q = upload(view(q.data(), CI_F32, {R, H, D}));
        d_out = poisoned(view(out.data(), CI_F32, {R, H, D}));
        k_new.assign((size_t)R * row, 0.0f), v_new = k_new;
        d_k_new = upload(view(k_new.data(), CI_F32, {R, G, D}));
        d_v_new = upload(view(v_new.data(), CI_F32, {R, G, D}));
        step = {};
        step.n_rows = R, step.n_seqs = S, step.block_size = bs,
        step.max_blocks_per_seq = max_blocks;
        step.max_seq_len = max_seq_len, step.max_seq_rows = max_seq_rows;
        fill_rows();
        step.positions = upload(view(positions.data(), CI_I32, {R}));
        step.slots = upload(view(slots.data(), CI_I32, {R}));
        step.seq_starts = upload(view(starts.data(), CI_I32, {S + 1}));
        step.seq_lens = upload(view(lens.data(), CI_I32, {S}));
        step.block_tables = upload(view(table.data(), CI_I32, {S, max_blocks}));
        step.host_seq_starts = starts.data(), step.host_seq_lens = lens.data();
        ci_config config{};
        config.hidden_size = config.intermediate_size = 64;
        config.n_heads = H, config.n_kv_heads = G, config.head_dim = D;
        ASSERT_EQ(ci_backend_reserve(
                      gpu_, gpu_->ops->paged_workspace_bytes(gpu_, &config, R, max_seq_len, S)),
                  CINFER_OK);
        ASSERT_EQ(
            ci_backend_reserve(cpu_, cpu_->ops->workspace_bytes(cpu_, &config, max_seq_len + 1, 1)),
            CINFER_OK);
    }

    // positions, slots and this step's new keys (k_new, v_new: what the model would store).
    void fill_rows() {
        const int row = G * D;
        positions.clear(), slots.clear();
        for (int s = 0; s < S; s++)
            for (int r = 0; r < seqs[s].rows; r++) {
                const int p = seqs[s].cached + r, at = starts[s] + r;
                positions.push_back(p);
                slots.push_back(slot_of(s, p));
                std::copy_n(k_seq[s].begin() + (size_t)p * row, row,
                            k_new.begin() + (size_t)at * row);
                std::copy_n(v_seq[s].begin() + (size_t)p * row, row,
                            v_new.begin() + (size_t)at * row);
            }
    }

    // The contiguous CPU op, one sequence at a time.
    void reference() {
        want.assign((size_t)R * H * D, NAN);
        for (int s = 0; s < S; s++) {
            const int rows = seqs[s].rows, len = lens[s];
            const size_t at = (size_t)starts[s] * H * D;
            ci_tensor q_s = view(q.data() + at, CI_F32, {rows, H, D});
            ci_tensor out_s = view(want.data() + at, CI_F32, {rows, H, D});
            ci_tensor k_s = view(k_seq[s].data(), CI_F32, {len, G, D});
            ci_tensor v_s = view(v_seq[s].data(), CI_F32, {len, G, D});
            if (differential)
                cpu_->ops->diff_attention(cpu_, &out_s, &q_s, &k_s, &v_s, len - rows, lambda,
                                          lambda_init, eps);
            else
                cpu_->ops->attention(cpu_, &out_s, &q_s, &k_s, &v_s, len - rows);
        }
    }

    void store_and_attend() {
        gpu_->ops->kv_store_paged(gpu_, &d_k_pool, &d_v_pool, &d_k_new, &d_v_new, &step.slots);
        attend();
    }
    void attend() {
        if (differential)
            gpu_->ops->paged_diff_attention(gpu_, &d_out, &d_q, &d_k_pool, &d_v_pool, &step, lambda,
                                            lambda_init, eps);
        else
            gpu_->ops->paged_attention(gpu_, &d_out, &d_q, &d_k_pool, &d_v_pool, &step);
    }

    void compare() {
        reference();
        double v_max = 0.0;
        for (const auto &v : v_seq)
            for (float x : v) v_max = std::max(v_max, (double)std::fabs(x));
        const cinfer_attention kind = std::get<0>(GetParam());
        // as CudaAttention: flash on tensor cores rounds Q and P to the cache dtype
        const bool tensor_cores = kind == CINFER_ATTENTION_FLASH && dtype != CI_F32 && R != S;
        const double unit_roundoff = dtype == CI_BF16 ? 0x1.0p-9 : 0x1.0p-12;
        const double relative = tensor_cores ? 8.0 * unit_roundoff : 1e-4;
        EXPECT_TRUE(all_close(download<float>(d_out), want, [&](size_t i) {
            return differential ? relative * (1.0 + std::fabs(want[i])) : relative * v_max;
        }));
    }

    void setup(int head_dim, int n_heads, int n_kv_heads, int block_size, bool diff) {
        gpu_->attention = std::get<0>(GetParam());
        dtype = std::get<1>(GetParam());
        D = head_dim, H = n_heads, G = n_kv_heads, bs = block_size, differential = diff;
    }
};

TEST_P(CudaPagedAttention, RaggedStepsMatchTheContiguousCpuOp) {
    for (bool diff : {false, true})
        for (auto [D, H, G, bs] : std::vector<std::tuple<int, int, int, int>>{
                 {64, 4, 4, 16}, {128, 8, 2, 32}, {64, 8, 2, 8}, {128, 32, 8, 16}}) {
            if (!ci_cuda_attention_supports(std::get<0>(GetParam()), D, diff,
                                            std::get<1>(GetParam()), 0))
                continue;
            SCOPED_TRACE("D " + std::to_string(D) + " H " + std::to_string(H) + " G " +
                         std::to_string(G) + " block " + std::to_string(bs) +
                         (diff ? " differential" : ""));
            setup(D, H, G, bs, diff);
            // decode rows beside prompt chunks that start and end inside blocks
            seqs = {{37, 1}, {0, 70}, {13, 6}, {300, 1}, {5, 129}};
            build(0);
            store_and_attend();
            compare();
            // decode-only (flash-decoding for the fused kinds), lengths up to 1500
            seqs = {{1499, 1}, {0, 1}, {15, 1}, {31, 1}, {700, 1}};
            build(0);
            store_and_attend();
            compare();
        }
}

// The engine records a decode step once and replays it: record it with a bound on the lengths,
// replay it, then move every sequence one token on (a new block for the one that fills its last),
// write the new contents into the same device tensors, and replay again.
TEST_P(CudaPagedAttention, RecordedDecodeStepReplaysWithNewContents) {
    for (bool diff : {false, true}) {
        SCOPED_TRACE(diff ? "differential" : "standard");
        setup(128, 8, 2, 16, diff);
        seqs = {{47, 1}, {15, 1}, {200, 1}, {0, 1}};
        build(300);
        // the rehearsal runs the ops; the recording only records them (kernels/backend.h)
        gpu_->ops->kv_store_paged(gpu_, &d_k_pool, &d_v_pool, &d_k_new, &d_v_new, &step.slots);
        int recording = -1, rehearsal = -1;
        gpu_->ops->capture_begin(gpu_, 0);
        attend();
        ASSERT_EQ(gpu_->ops->capture_end(gpu_, &rehearsal), 0);
        gpu_->ops->capture_begin(gpu_, 1);
        attend();
        ASSERT_EQ(gpu_->ops->capture_end(gpu_, &recording), 0);
        ASSERT_GE(recording, 0);
        std::vector<float> nan_out((size_t)R * H * D, NAN); // the replay must write every row
        gpu_->ops->to_device(gpu_, d_out.data, nan_out.data(), ci_tensor_nbytes(&d_out));
        gpu_->ops->replay(gpu_, recording);
        compare();
        for (int round = 0; round < 2; round++) {
            const int row = G * D;
            for (int s = 0; s < S; s++) {
                seqs[s].cached++;
                lens[s]++;
                if ((lens[s] - 1) % bs == 0) { // its last block is full: a new one
                    table[(size_t)s * max_blocks + (lens[s] - 1) / bs] = free_blocks.back();
                    free_blocks.pop_back();
                }
                const std::vector<float> fresh = encode(randn((size_t)row), dtype).values;
                const std::vector<float> fresh_v = encode(randn((size_t)row, 2.0f), dtype).values;
                k_seq[s].insert(k_seq[s].end(), fresh.begin(), fresh.end());
                v_seq[s].insert(v_seq[s].end(), fresh_v.begin(), fresh_v.end());
            }
            fill_rows();
            q = randn(q.size());
            for (auto [dst, src] :
                 std::vector<std::pair<ci_tensor *, void *>>{{&step.positions, positions.data()},
                                                             {&step.slots, slots.data()},
                                                             {&step.seq_lens, lens.data()},
                                                             {&step.block_tables, table.data()},
                                                             {&d_q, q.data()},
                                                             {&d_k_new, k_new.data()},
                                                             {&d_v_new, v_new.data()}})
                gpu_->ops->to_device(gpu_, dst->data, src, ci_tensor_nbytes(dst));
            gpu_->ops->kv_store_paged(gpu_, &d_k_pool, &d_v_pool, &d_k_new, &d_v_new, &step.slots);
            std::vector<float> nan_out((size_t)R * H * D, NAN);
            gpu_->ops->to_device(gpu_, d_out.data, nan_out.data(), ci_tensor_nbytes(&d_out));
            gpu_->ops->replay(gpu_, recording);
            compare();
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Kinds, CudaPagedAttention,
                         ::testing::Combine(::testing::Values(CINFER_ATTENTION_EAGER,
                                                              CINFER_ATTENTION_SDPA,
                                                              CINFER_ATTENTION_FLASH),
                                            ::testing::Values(CI_F32, CI_BF16, CI_F16)),
                         attention_param_name);

// rope_rows against rope_cpu row by row (each at its own position), kv_store_paged exactly.
TEST_F(CudaOps, RopeRowsAndKvStorePagedMatchTheCpuOps) {
    const int H = 8, G = 2, D = 64, bs = 8, n_blocks = 6;
    const std::vector<int> positions = {37, 0, 1, 2, 3, 4093, 13, 14, 15, 16, 1};
    const int R = (int)positions.size();
    const ci_config c = rope_config(CI_ROPE_DEFAULT, D);
    std::vector<float> inv_freq(D / 2);
    ci_rope_freqs freqs{};
    ci_rope_frequencies(&c, 4096, inv_freq.data(), &freqs.attention_scaling);
    freqs.inv_freq = inv_freq.data();
    std::vector<float> q = randn((size_t)R * H * D), k = randn((size_t)R * G * D);
    const std::vector<float> q_in = q;
    ci_tensor d_q = upload(view(q.data(), CI_F32, {R, H, D}));
    ci_tensor d_k = upload(view(k.data(), CI_F32, {R, G, D}));
    ci_tensor d_pos = upload(view((void *)positions.data(), CI_I32, {R}));
    ci_tensor d_freq = upload(view(inv_freq.data(), CI_F32, {D / 2}));
    const ci_rope_freqs d_freqs = {(const float *)d_freq.data, freqs.attention_scaling};
    gpu_->ops->rope_rows(gpu_, &d_q, &d_k, &d_pos, &d_freqs);
    for (int r = 0; r < R; r++) {
        ci_tensor q_r = view(q.data() + (size_t)r * H * D, CI_F32, {1, H, D});
        ci_tensor k_r = view(k.data() + (size_t)r * G * D, CI_F32, {1, G, D});
        cpu_->ops->rope(cpu_, &q_r, &k_r, positions[r], &freqs);
    }
    EXPECT_TRUE(all_close(download<float>(d_q), q, [&](size_t i) {
        const size_t base = i / D * D, j = i % D % (D / 2);
        return 8.0 * kUlp * (std::fabs(q_in[base + j]) + std::fabs(q_in[base + j + D / 2])) + 1e-30;
    }));

    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16}) {
        SCOPED_TRACE("dtype " + std::to_string((int)dtype));
        std::vector<int> slots(n_blocks * bs);
        for (int i = 0; i < n_blocks * bs; i++) slots[i] = i;
        std::shuffle(slots.begin(), slots.end(), rng_);
        slots.resize(R);
        const size_t row = (size_t)G * D, element = ci_dtype_size(dtype);
        Encoded pool = encode(randn((size_t)n_blocks * bs * row), dtype);
        std::vector<float> k_new = randn((size_t)R * row), v_new = randn(k_new.size());
        ci_tensor d_kp = upload(view(pool.bytes.data(), dtype, {n_blocks, bs, G, D}));
        ci_tensor d_vp = upload(view(pool.bytes.data(), dtype, {n_blocks, bs, G, D}));
        ci_tensor d_kn = upload(view(k_new.data(), CI_F32, {R, G, D}));
        ci_tensor d_vn = upload(view(v_new.data(), CI_F32, {R, G, D}));
        ci_tensor d_slots = upload(view(slots.data(), CI_I32, {R}));
        gpu_->ops->kv_store_paged(gpu_, &d_kp, &d_vp, &d_kn, &d_vn, &d_slots);
        // what the pools must hold: their old bytes, row r encoded in place at slots[r]
        for (auto [fresh, device] :
             {std::pair<std::vector<float> *, ci_tensor *>{&k_new, &d_kp}, {&v_new, &d_vp}}) {
            std::vector<unsigned char> expected = pool.bytes;
            const Encoded rows = encode(*fresh, dtype);
            for (int r = 0; r < R; r++)
                std::memcpy(expected.data() + (size_t)slots[r] * row * element,
                            rows.bytes.data() + (size_t)r * row * element, row * element);
            EXPECT_EQ(download<unsigned char>(*device), expected);
        }
    }
}

// ---- the gated activation and the residual add -------------------------------------------------
// F32 expf/erff/tanhf against double: a few ulps of the result, plus, where 1 + tanh or 1 + erf
// cancels (large negative gate), an ulp of 1 times 0.5·|gate|·|up|.

TEST_F(CudaOps, GatedActivationMatchesCpu) {
    for (ci_activation act : {CI_ACT_SILU, CI_ACT_GELU, CI_ACT_GELU_TANH, CI_ACT_RELU})
        for (int n : {1, 33, 4097, 70000}) {
            SCOPED_TRACE("activation " + std::to_string((int)act) + " n " + std::to_string(n));
            std::vector<float> gate = randn(n, 3.0f), up = randn(n), want(n);
            ci_tensor h_g = view(gate.data(), CI_F32, {1, n}),
                      h_u = view(up.data(), CI_F32, {1, n});
            ci_tensor h_out = view(want.data(), CI_F32, {1, n});
            cpu_->ops->gated_activation(cpu_, &h_out, &h_g, &h_u, act);
            ci_tensor d_g = upload(h_g), d_u = upload(h_u), d_out = poisoned(h_out);
            gpu_->ops->gated_activation(gpu_, &d_out, &d_g, &d_u, act);
            EXPECT_TRUE(all_close(download<float>(d_out), want, [&](size_t i) {
                return 8.0 * kUlp * std::fabs(want[i]) +
                       4.0 * kUlp * (1.0 + std::fabs(gate[i])) * std::fabs(up[i]) + 1e-30;
            }));
        }
}

// ---- the KV cache store: rows [pos0, pos0 + T) replaced, every other row untouched -------------
// In a BF16/F16 cache the new rows are K and V rounded to nearest even, bit for bit the host's.

TEST_F(CudaOps, KvStoreWritesExactlyItsRows) {
    for (ci_dtype dtype : {CI_F32, CI_BF16, CI_F16})
        for (auto [n_ctx, n_tokens, pos0] : std::vector<std::tuple<int, int, int>>{
                 {8, 1, 0}, {8, 1, 7}, {50, 17, 20}, {600, 512, 88}}) {
            SCOPED_TRACE("dtype " + std::to_string((int)dtype) + " n_ctx " + std::to_string(n_ctx) +
                         " pos0 " + std::to_string(pos0));
            const int G = 3, D = 40;
            const size_t row = (size_t)G * D;
            Encoded k_cache = encode(randn((size_t)n_ctx * row), dtype),
                    v_cache = encode(randn((size_t)n_ctx * row), dtype);
            std::vector<float> k_new = randn((size_t)n_tokens * row), v_new = randn(k_new.size());
            ci_tensor h_kn = view(k_new.data(), CI_F32, {n_tokens, G, D});
            ci_tensor h_vn = view(v_new.data(), CI_F32, {n_tokens, G, D});
            ci_tensor d_kc = upload(view(k_cache.bytes.data(), dtype, {n_ctx, G, D}));
            ci_tensor d_vc = upload(view(v_cache.bytes.data(), dtype, {n_ctx, G, D}));
            ci_tensor d_kn = upload(h_kn), d_vn = upload(h_vn);
            gpu_->ops->kv_store(gpu_, &d_kc, &d_vc, &d_kn, &d_vn, pos0);
            // what the cache must hold: its old bytes, with the new rows encoded in place
            const size_t element = ci_dtype_size(dtype);
            for (auto [cache, fresh] :
                 {std::pair<Encoded *, std::vector<float> *>{&k_cache, &k_new},
                  {&v_cache, &v_new}}) {
                const Encoded rows = encode(*fresh, dtype);
                std::memcpy(cache->bytes.data() + (size_t)pos0 * row * element, rows.bytes.data(),
                            rows.bytes.size());
            }
            EXPECT_EQ(download<unsigned char>(d_kc), k_cache.bytes);
            EXPECT_EQ(download<unsigned char>(d_vc), v_cache.bytes);
        }
}

// B lockstep sequences: row (b, t) sits at position pos0 + t, and sequence b's rows go to its own
// cache b. The CPU op (sequence by sequence) is the reference: rope within its tolerance above,
// kv_store exactly.
TEST_F(CudaOps, BatchedRopeAndKvStoreTreatEachSequenceAlone) {
    const int B = 3, T = 5, H = 8, G = 2, D = 64, n_ctx = 20, pos0 = 9;
    const ci_config c = rope_config(CI_ROPE_DEFAULT, D);
    std::vector<float> inv_freq(D / 2);
    ci_rope_freqs freqs{};
    ci_rope_frequencies(&c, pos0 + T, inv_freq.data(), &freqs.attention_scaling);
    freqs.inv_freq = inv_freq.data();
    std::vector<float> q = randn((size_t)B * T * H * D), k = randn((size_t)B * T * G * D);
    std::vector<float> v = randn(k.size());
    ci_tensor h_q = view(q.data(), CI_F32, {B, T, H, D}),
              h_k = view(k.data(), CI_F32, {B, T, G, D});
    ci_tensor d_q = upload(h_q), d_k = upload(h_k);
    ci_tensor d_v = upload(view(v.data(), CI_F32, {B, T, G, D}));
    ci_tensor d_freq = upload(view(inv_freq.data(), CI_F32, {D / 2}));
    const ci_rope_freqs d_freqs = {(const float *)d_freq.data, freqs.attention_scaling};
    const std::vector<float> q_in = q;
    cpu_->ops->rope(cpu_, &h_q, &h_k, pos0, &freqs);
    gpu_->ops->rope(gpu_, &d_q, &d_k, pos0, &d_freqs);
    EXPECT_TRUE(all_close(download<float>(d_q), q, [&](size_t i) {
        const size_t base = i / D * D, j = i % D % (D / 2);
        return 8.0 * kUlp * (std::fabs(q_in[base + j]) + std::fabs(q_in[base + j + D / 2])) + 1e-30;
    }));
    // the rotated keys (the GPU's, so that the stores compare bit for bit) into the caches
    std::vector<float> k_rot = download<float>(d_k);
    std::vector<float> k_cache((size_t)B * n_ctx * G * D, 0.0f), v_cache(k_cache.size(), 0.0f);
    ci_tensor h_kc = view(k_cache.data(), CI_F32, {B, n_ctx, G, D});
    ci_tensor h_vc = view(v_cache.data(), CI_F32, {B, n_ctx, G, D});
    ci_tensor d_kc = upload(h_kc), d_vc = upload(h_vc);
    ci_tensor h_kr = view(k_rot.data(), CI_F32, {B, T, G, D}),
              h_v = view(v.data(), CI_F32, {B, T, G, D});
    cpu_->ops->kv_store(cpu_, &h_kc, &h_vc, &h_kr, &h_v, pos0);
    gpu_->ops->kv_store(gpu_, &d_kc, &d_vc, &d_k, &d_v, pos0);
    EXPECT_EQ(download<float>(d_kc), k_cache);
    EXPECT_EQ(download<float>(d_vc), v_cache);
}

// ---- argmax: the host sampler's choice exactly, ties and NaN included --------------------------

TEST_F(CudaOps, ArgmaxPicksWhatTheHostSamplerPicks) {
    for (int vocab : {1, 7, 1000, 32001, 128256})
        for (int variant = 0; variant < 4; variant++) {
            SCOPED_TRACE("vocab " + std::to_string(vocab) + " variant " + std::to_string(variant));
            const int rows = 3;
            std::vector<float> logits = randn((size_t)rows * vocab);
            std::uniform_int_distribution<int> pick(0, vocab - 1);
            for (int r = 0; r < rows; r++) {
                float *row = logits.data() + (size_t)r * vocab;
                const int a = pick(rng_), b = pick(rng_);
                if (variant == 1) row[a] = row[b] = 100.0f;                // a tie: the lower index
                if (variant == 2) row[a] = NAN, row[b] = 50.0f;            // NaN never wins
                if (variant == 3) std::fill(row, row + vocab, (float)NAN); // all NaN: the last
            }
            std::vector<int32_t> want(rows);
            ci_tensor h_logits = view(logits.data(), CI_F32, {rows, vocab});
            ci_tensor h_ids = view(want.data(), CI_I32, {rows});
            cpu_->ops->argmax(cpu_, &h_ids, &h_logits);
            ci_tensor d_logits = upload(h_logits), d_ids = poisoned(h_ids);
            gpu_->ops->argmax(gpu_, &d_ids, &d_logits);
            EXPECT_EQ(download<int32_t>(d_ids), want);
        }
}

// ---- without a GPU: the skip above must be a skip, not a silent pass ---------------------------

TEST(CudaAvailability, SaysWhyWhenThereIsNoGpu) {
    const std::string missing = gpu_missing();
    if (missing.empty()) GTEST_SKIP() << "a GPU is present";
    EXPECT_NE(ci_backend_available(CINFER_BACKEND_CUDA), CINFER_OK);
    EXPECT_FALSE(std::string(cinfer_last_error()).empty());
    ci_backend *be = nullptr;
    EXPECT_NE(ci_backend_create(CINFER_BACKEND_CUDA, 0, &be), CINFER_OK);
    EXPECT_EQ(be, nullptr);
}

} // namespace
