// Whole models on the GPU against the CPU reference, on every committed fixture, in f32, bf16 and
// fp16, with each attention kind (eager, sdpa, flash) (programs/compare.h holds the tolerances and
// their derivation; bf16/fp16 are provisional until measured on a GPU). Prompts are fresh random
// token ids every run (CINFER_TEST_SEED replays them), of lengths that cover one token, a few, and
// more than a warp.
//
// The GPU suites skip, visibly, without a CUDA device. The option checks and the greedy step at
// the bottom run everywhere: they need no GPU.
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

extern "C" {
#include "programs/compare.h"
#include "kernels/device.h"
#include "engine/session.h"
#include "models/model.h"
}

using namespace cinfer_test;

namespace {

std::string gpu_missing() {
    if (ci_backend_available(CINFER_BACKEND_CUDA) != CINFER_OK) return cinfer_last_error();
    if (ci_cuda_devices(nullptr, 0) == 0) return "no CUDA device found";
    return "";
}

struct Difference {
    double max_abs = 0.0, rel_l2 = 0.0, reference_max = 0.0;
};

Difference compare(const std::vector<float> &gpu, const std::vector<float> &cpu) {
    Difference d;
    double diff2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < cpu.size(); i++) {
        const double delta = std::fabs((double)gpu[i] - (double)cpu[i]);
        if (!(delta <= d.max_abs)) d.max_abs = delta;
        d.reference_max = std::max(d.reference_max, (double)std::fabs(cpu[i]));
        diff2 += delta * delta;
        ref2 += (double)cpu[i] * cpu[i];
    }
    d.rel_l2 = std::sqrt(diff2 / std::max(ref2, 1e-300));
    return d;
}

::testing::AssertionResult within(const Difference &d, const ci_tolerance &tol, const char *what) {
    bool ok = !std::isnan(d.max_abs) && !std::isnan(d.rel_l2);
    if (tol.max_abs > 0.0) ok = ok && d.max_abs <= tol.max_abs * std::max(1.0, d.reference_max);
    if (tol.rel_l2 > 0.0) ok = ok && d.rel_l2 <= tol.rel_l2;
    if (ok) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << what << ": max |gpu - cpu| " << d.max_abs << ", relative L2 " << d.rel_l2
           << " (tolerance: max_abs " << tol.max_abs << " x max(1, " << d.reference_max
           << "), rel_l2 " << tol.rel_l2 << ")";
}

int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best] || std::isnan(row[best])) best = i;
    return best;
}

struct Stages {
    std::map<int, std::vector<float>> rows;
    static void observe(void *user, int stage, const float *hidden, int n_tokens, int dim) {
        auto &v = static_cast<Stages *>(user)->rows[stage];
        v.insert(v.end(), hidden, hidden + (size_t)n_tokens * dim);
    }
};

cinfer_model *load(const std::string &dir, cinfer_backend backend, cinfer_dtype dtype,
                   cinfer_attention attention = CINFER_ATTENTION_AUTO) {
    cinfer_load_options o{};
    o.backend = backend;
    o.dtype = dtype;
    o.attention = attention;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load(dir.c_str(), &o, &m), CINFER_OK) << cinfer_last_error();
    return m;
}

const char *attention_name(cinfer_attention a) {
    return a == CINFER_ATTENTION_EAGER ? "eager" : a == CINFER_ATTENTION_SDPA ? "sdpa" : "flash";
}

// A model on the CPU and the same checkpoint on the GPU in one run dtype and attention kind.
// B prompts and the decode steps after them, as the batched session calls take them.
struct BatchPrompts {
    std::vector<std::vector<int32_t>> each;  // sequence b's prompt
    std::vector<int32_t> all;                // every prompt in a row, [B, T]
    std::vector<std::vector<int32_t>> steps; // steps[i][b]: sequence b's id at decode step i
};

class CudaModel
    : public ::testing::TestWithParam<std::tuple<std::string, cinfer_dtype, cinfer_attention>> {
  protected:
    void SetUp() override {
        const std::string missing = gpu_missing();
        if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
        dir_ = fixture_dir(std::get<0>(GetParam()));
        dtype_ = std::get<1>(GetParam());
        tol_ = ci_tolerance_for(dtype_);
        cpu_ = load(dir_, CINFER_BACKEND_CPU, CINFER_DTYPE_F32);
        gpu_ = load(dir_, CINFER_BACKEND_CUDA, dtype_, std::get<2>(GetParam()));
        ASSERT_TRUE(cpu_ && gpu_);
        ASSERT_STREQ(cinfer_model_get_info(gpu_)->attention,
                     attention_name(std::get<2>(GetParam())));
        info_ = cinfer_model_get_info(cpu_);
        const auto *test = ::testing::UnitTest::GetInstance()->current_test_info();
        rng_.seed(fresh_seed() ^ std::hash<std::string>{}(test->name()));
    }
    void TearDown() override {
        cinfer_model_free(gpu_);
        cinfer_model_free(cpu_);
    }

    std::vector<int32_t> random_prompt(int n) {
        std::uniform_int_distribution<int32_t> pick(0, info_->vocab_size - 1);
        std::vector<int32_t> ids(n);
        for (auto &id : ids) id = pick(rng_);
        return ids;
    }

    BatchPrompts random_batch(int B, int T, int n_steps) {
        BatchPrompts prompts;
        for (int b = 0; b < B; b++) {
            prompts.each.push_back(random_prompt(T));
            prompts.all.insert(prompts.all.end(), prompts.each[b].begin(), prompts.each[b].end());
        }
        for (int i = 0; i < n_steps; i++) prompts.steps.push_back(random_prompt(B));
        return prompts;
    }

    // Logits of every position (and, when stages is given, the residual stream), in a session
    // sized for n_ctx.
    std::vector<float> logits(cinfer_model *m, const std::vector<int32_t> &ids, int n_ctx,
                              Stages *stages = nullptr) {
        cinfer_session *s = nullptr;
        EXPECT_EQ(cinfer_session_create(m, n_ctx, &s), CINFER_OK) << cinfer_last_error();
        if (!s) return {};
        if (stages) cinfer_session_observe(s, Stages::observe, stages);
        std::vector<float> out(ids.size() * (size_t)info_->vocab_size, NAN);
        EXPECT_EQ(
            cinfer_session_forward(s, ids.data(), (int)ids.size(), CINFER_LOGITS_ALL, out.data()),
            CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(s);
        return out;
    }

    std::vector<int32_t> greedy(cinfer_model *m, const std::vector<int32_t> &prompt, int n_new,
                                bool observe) {
        cinfer_session *s = nullptr;
        EXPECT_EQ(cinfer_session_create(m, (int)prompt.size() + n_new, &s), CINFER_OK)
            << cinfer_last_error();
        if (!s) return {};
        Stages ignored;
        if (observe) cinfer_session_observe(s, Stages::observe, &ignored); // forces eager steps
        std::vector<int32_t> got;
        cinfer_generate_params params{};
        params.max_new_tokens = n_new;
        params.ignore_eos = 1;
        auto collect = [](void *user, int32_t token) {
            static_cast<std::vector<int32_t> *>(user)->push_back(token);
            return 0;
        };
        EXPECT_EQ(cinfer_generate(s, prompt.data(), (int)prompt.size(), &params, collect, &got,
                                  nullptr, nullptr),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(s);
        return got;
    }

    std::string dir_;
    cinfer_dtype dtype_ = CINFER_DTYPE_F32;
    ci_tolerance tol_{};
    cinfer_model *cpu_ = nullptr, *gpu_ = nullptr;
    const cinfer_model_info *info_ = nullptr;
    std::mt19937_64 rng_;
};

TEST_P(CudaModel, LogitsAgreeWithTheCpuReference) {
    const int V = info_->vocab_size;
    for (int n : {1, 5, 37}) {
        const std::vector<int32_t> ids = random_prompt(n);
        const std::vector<float> want = logits(cpu_, ids, n), got = logits(gpu_, ids, n);
        const Difference d = compare(got, want);
        std::printf("[cinfer] %-24s %-4s %-5s %2d tokens: logits max |gpu - cpu| %.2e, rel L2 "
                    "%.2e\n",
                    std::get<0>(GetParam()).c_str(), cinfer_dtype_name(dtype_),
                    attention_name(std::get<2>(GetParam())), n, d.max_abs, d.rel_l2);
        EXPECT_TRUE(within(d, tol_, "logits")) << n << " tokens";
        int agree = 0;
        for (int t = 0; t < n; t++)
            agree += argmax(&want[(size_t)t * V], V) == argmax(&got[(size_t)t * V], V);
        EXPECT_GE(agree, tol_.top1 * n) << "top-1 agreement " << agree << " of " << n;
    }
}

TEST_P(CudaModel, HiddenStatesAgreeLayerByLayer) {
    const std::vector<int32_t> ids = random_prompt(9);
    Stages want, got;
    logits(cpu_, ids, 9, &want);
    logits(gpu_, ids, 9, &got);
    ASSERT_EQ(want.rows.size(), (size_t)info_->n_layers + 2);
    ASSERT_EQ(got.rows.size(), want.rows.size());
    for (const auto &[stage, rows] : want.rows)
        EXPECT_TRUE(within(compare(got.rows[stage], rows), tol_, "hidden state"))
            << "stage " << stage << " (0 = embedding, " << info_->n_layers + 1 << " = final norm)";
}

// Token by token through the device KV cache against one pass over the prompt, both on the GPU.
TEST_P(CudaModel, DecodingTokenByTokenMatchesOnePass) {
    const int n = 12, V = info_->vocab_size;
    const std::vector<int32_t> ids = random_prompt(n);
    const std::vector<float> whole = logits(gpu_, ids, n);
    cinfer_session *s = nullptr;
    ASSERT_EQ(cinfer_session_create(gpu_, n, &s), CINFER_OK) << cinfer_last_error();
    std::vector<float> steps((size_t)n * V, NAN);
    for (int t = 0; t < n; t++)
        ASSERT_EQ(cinfer_session_forward(s, &ids[t], 1, CINFER_LOGITS_LAST, &steps[(size_t)t * V]),
                  CINFER_OK)
            << cinfer_last_error();
    cinfer_session_free(s);
    // the same arithmetic in another grouping of rows: GEMM shapes differ, so sums may round
    // differently, and in bf16/fp16 such a difference can move a rounding of the next GEMM's
    // input: the dtype's own bound
    EXPECT_TRUE(within(compare(steps, whole), tol_, "logits"));
}

// Greedy decoding on the GPU (argmax on the device, steps replayed from a CUDA graph) picks the
// CPU's tokens in f32, and the same tokens as running each step op by op (the recorded step's
// attention GEMMs span the whole cache, so their sums may round differently: in bf16/fp16 a
// near-tie could legitimately flip, so exact equality is asked in f32 only).
TEST_P(CudaModel, GreedyTokensMatch) {
    const std::vector<int32_t> prompt = random_prompt(5);
    const int n_new = 16;
    const std::vector<int32_t> graph = greedy(gpu_, prompt, n_new, false);
    ASSERT_EQ(graph.size(), (size_t)n_new);
    for (int32_t token : graph) EXPECT_TRUE(token >= 0 && token < info_->vocab_size) << token;
    if (dtype_ != CINFER_DTYPE_F32) return;
    EXPECT_EQ(graph, greedy(gpu_, prompt, n_new, true))
        << "the recorded decode step differs from running it op by op";
    EXPECT_EQ(graph, greedy(cpu_, prompt, n_new, false)) << "greedy tokens differ from the CPU";
}

// Prompts longer than one pass (512 tokens) run in several; the attention of the later passes
// reads keys the earlier ones stored.
TEST_P(CudaModel, LongPromptsInSeveralPassesAgree) {
    const int n = 600, V = info_->vocab_size;
    const std::vector<int32_t> ids = random_prompt(n);
    cinfer_session *cpu = nullptr, *gpu = nullptr;
    ASSERT_EQ(cinfer_session_create(cpu_, n, &cpu), CINFER_OK) << cinfer_last_error();
    ASSERT_EQ(cinfer_session_create(gpu_, n, &gpu), CINFER_OK) << cinfer_last_error();
    std::vector<float> want(V), got(V, NAN);
    ASSERT_EQ(cinfer_session_forward(cpu, ids.data(), n, CINFER_LOGITS_LAST, want.data()),
              CINFER_OK);
    ASSERT_EQ(cinfer_session_forward(gpu, ids.data(), n, CINFER_LOGITS_LAST, got.data()),
              CINFER_OK);
    cinfer_session_free(cpu);
    cinfer_session_free(gpu);
    EXPECT_TRUE(within(compare(got, want), tol_, "logits of position 599"));
}

// ---- batched sessions: B sequences in lockstep on the GPU ---------------------------------------

// Sequence-major [B, n] of B random prompts, and each prompt alone.
// Prefill (ALL), then lockstep decode steps (LAST), batched against one GPU session per sequence.
// The fused kernels take all B sequences in one launch and the GEMMs have B times the rows, so
// sums may group differently: the dtype's own bound, as for token-by-token decoding.
TEST_P(CudaModel, BatchedSequencesMatchEachSequenceAlone) {
    const int V = info_->vocab_size, T = 7, n_steps = 3;
    for (int B : {2, 5}) {
        SCOPED_TRACE("n_seqs = " + std::to_string(B));
        const BatchPrompts prompts = random_batch(B, T, n_steps);
        const auto &steps = prompts.steps;
        cinfer_session *batch = nullptr;
        ASSERT_EQ(cinfer_session_create_batch(gpu_, T + n_steps, B, &batch), CINFER_OK)
            << cinfer_last_error();
        std::vector<float> all((size_t)B * T * V, NAN), step((size_t)B * V, NAN);
        ASSERT_EQ(cinfer_session_forward_batch(batch, prompts.all.data(), T, CINFER_LOGITS_ALL,
                                               all.data()),
                  CINFER_OK)
            << cinfer_last_error();
        std::vector<std::vector<float>> step_logits;
        for (int i = 0; i < n_steps; i++) {
            ASSERT_EQ(cinfer_session_forward_batch(batch, steps[i].data(), 1, CINFER_LOGITS_LAST,
                                                   step.data()),
                      CINFER_OK)
                << cinfer_last_error();
            step_logits.push_back(step);
        }
        cinfer_session_free(batch);
        for (int b = 0; b < B; b++) {
            SCOPED_TRACE("sequence " + std::to_string(b));
            std::vector<int32_t> ids = prompts.each[b];
            for (int i = 0; i < n_steps; i++) ids.push_back(steps[i][b]);
            const std::vector<float> alone = logits(gpu_, ids, T + n_steps);
            const std::vector<float> got_prefill(all.begin() + (ptrdiff_t)b * T * V,
                                                 all.begin() + (ptrdiff_t)(b + 1) * T * V);
            const std::vector<float> want_prefill(alone.begin(), alone.begin() + (ptrdiff_t)T * V);
            EXPECT_TRUE(within(compare(got_prefill, want_prefill), tol_, "prefill logits"));
            for (int i = 0; i < n_steps; i++) {
                const std::vector<float> got(step_logits[i].begin() + (ptrdiff_t)b * V,
                                             step_logits[i].begin() + (ptrdiff_t)(b + 1) * V);
                const std::vector<float> want(alone.begin() + (ptrdiff_t)(T + i) * V,
                                              alone.begin() + (ptrdiff_t)(T + i + 1) * V);
                EXPECT_TRUE(within(compare(got, want), tol_, "decode step logits")) << "step " << i;
            }
        }
    }
}

// The recorded decode step (CUDA graph, positions read on the device) with B > 1: the tokens it
// picks for each sequence are those the same step picks run op by op (an observer forces eager
// steps), and, in f32, those one sequence alone picks.
TEST_P(CudaModel, RecordedBatchedDecodeStepPicksWhatEagerStepsPick) {
    const int B = 3, T = 4, n_steps = 6;
    const BatchPrompts prompts = random_batch(B, T, n_steps);
    const auto &steps = prompts.steps;
    // picked[i][b]: what step i picked for sequence b, feeding the drawn ids
    auto run = [&](cinfer_model *m, bool observe) {
        std::vector<std::vector<int32_t>> picked;
        cinfer_session *s = nullptr;
        EXPECT_EQ(cinfer_session_create_batch(m, T + n_steps, B, &s), CINFER_OK)
            << cinfer_last_error();
        if (!s) return picked;
        Stages ignored;
        if (observe) cinfer_session_observe(s, Stages::observe, &ignored);
        EXPECT_EQ(
            cinfer_session_forward_batch(s, prompts.all.data(), T, CINFER_LOGITS_NONE, nullptr),
            CINFER_OK);
        for (int i = 0; i < n_steps; i++) {
            std::vector<int32_t> next(B, -1);
            EXPECT_EQ(ci_session_greedy_step(s, steps[i].data(), next.data()), CINFER_OK)
                << cinfer_last_error();
            picked.push_back(next);
        }
        EXPECT_EQ(cinfer_session_n_past(s), T + n_steps);
        cinfer_session_free(s);
        return picked;
    };
    const auto graph = run(gpu_, false);
    ASSERT_EQ(graph.size(), (size_t)n_steps);
    for (const auto &step : graph)
        for (int32_t token : step) EXPECT_TRUE(token >= 0 && token < info_->vocab_size) << token;
    if (dtype_ != CINFER_DTYPE_F32) return;
    EXPECT_EQ(graph, run(gpu_, true)) << "the recorded batched step differs from eager steps";
    EXPECT_EQ(graph, run(cpu_, false)) << "batched greedy picks differ from the CPU's";
}

// B·T > 512: the batch runs in passes of 512 / B tokens of each sequence.
TEST_P(CudaModel, BatchedLongPromptsInPassesAgreeWithTheCpu) {
    const int B = 3, T = 200, V = info_->vocab_size;
    BatchPrompts prompts;
    for (int b = 0; b < B; b++) {
        prompts.each.push_back(random_prompt(T));
        prompts.all.insert(prompts.all.end(), prompts.each[b].begin(), prompts.each[b].end());
    }
    cinfer_session *gpu = nullptr;
    ASSERT_EQ(cinfer_session_create_batch(gpu_, T, B, &gpu), CINFER_OK) << cinfer_last_error();
    std::vector<float> got((size_t)B * V, NAN);
    ASSERT_EQ(
        cinfer_session_forward_batch(gpu, prompts.all.data(), T, CINFER_LOGITS_LAST, got.data()),
        CINFER_OK)
        << cinfer_last_error();
    cinfer_session_free(gpu);
    for (int b = 0; b < B; b++) {
        const std::vector<float> alone = logits(cpu_, prompts.each[b], T);
        const std::vector<float> want(alone.end() - V, alone.end());
        const std::vector<float> row(got.begin() + (ptrdiff_t)b * V,
                                     got.begin() + (ptrdiff_t)(b + 1) * V);
        EXPECT_TRUE(within(compare(row, want), tol_, "last logits")) << "sequence " << b;
    }
}

std::string param_name(const ::testing::TestParamInfo<CudaModel::ParamType> &info) {
    return std::get<0>(info.param) + "_" + cinfer_dtype_name(std::get<1>(info.param)) + "_" +
           attention_name(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaModel,
    ::testing::Combine(::testing::ValuesIn(fixture_names()),
                       ::testing::Values(CINFER_DTYPE_F32, CINFER_DTYPE_BF16, CINFER_DTYPE_F16),
                       ::testing::Values(CINFER_ATTENTION_EAGER, CINFER_ATTENTION_SDPA,
                                         CINFER_ATTENTION_FLASH)),
    param_name);

// ---- random weights drawn on the device
// ---------------------------------------------------------- cinfer_model_load_random on CUDA draws
// the weights in device memory (kernels/cuda/random_fill.cuh) instead of drawing them on the host
// and uploading them. The device must hold exactly what the upload of the host draw would have: the
// host's values rounded to the device's dtype.

cinfer_model *load_random(const std::string &config, uint64_t seed, cinfer_backend backend,
                          cinfer_dtype dtype) {
    cinfer_load_options o{};
    o.backend = backend;
    o.dtype = dtype;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load_random(config.c_str(), &o, seed, &m), CINFER_OK)
        << cinfer_last_error();
    return m;
}

ci_dtype element_dtype(cinfer_dtype run) {
    return run == CINFER_DTYPE_BF16 ? CI_BF16 : run == CINFER_DTYPE_F16 ? CI_F16 : CI_F32;
}

// The bits the upload would store for element i of a host tensor, in the device's dtype.
uint32_t device_bits(const ci_tensor &host, int64_t i, ci_dtype device_dtype) {
    const float value = ci_tensor_get_f32(&host, i); // widening the file dtype is exact
    switch (device_dtype) {
    case CI_BF16: return ci_f32_to_bf16(value);
    case CI_F16: return ci_f32_to_f16(value);
    default: {
        uint32_t bits;
        std::memcpy(&bits, &value, sizeof bits);
        return bits;
    }
    }
}

// Fixtures chosen for what they cover: biases, tied embeddings and the DiffLlama lambdas (drawn on
// the host) in f32 files; bf16 and fp16 files, whose rounding comes before the device's.
class CudaRandomWeights : public ::testing::TestWithParam<std::tuple<std::string, cinfer_dtype>> {
  protected:
    void SetUp() override {
        const std::string missing = gpu_missing();
        if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
        config_ = fixture_dir(std::get<0>(GetParam())) + "/config.json";
        dtype_ = std::get<1>(GetParam());
        seed_ = fresh_seed();
        cpu_ = load_random(config_, seed_, CINFER_BACKEND_CPU, CINFER_DTYPE_F32);
        gpu_ = load_random(config_, seed_, CINFER_BACKEND_CUDA, dtype_);
        ASSERT_TRUE(cpu_ && gpu_);
    }
    void TearDown() override {
        cinfer_model_free(gpu_);
        cinfer_model_free(cpu_);
    }
    std::string config_;
    cinfer_dtype dtype_ = CINFER_DTYPE_F32;
    uint64_t seed_ = 0;
    cinfer_model *cpu_ = nullptr, *gpu_ = nullptr;
};

TEST_P(CudaRandomWeights, TheDeviceHoldsTheHostDrawInItsDtype) {
    // drawn on the device: every device tensor was a pending draw, and the host kept no values
    ASSERT_NE(gpu_->device_draws, nullptr);
    EXPECT_EQ(cpu_->device_draws, nullptr);
    struct Pair {
        const char *what;
        const ci_tensor *host, *device;
    };
    std::vector<Pair> pairs = {{"embed_tokens", &cpu_->embed_tokens, &gpu_->embed_tokens},
                               {"norm", &cpu_->norm, &gpu_->norm},
                               {"lm_head", &cpu_->lm_head, &gpu_->lm_head}};
    for (int l = 0; l < gpu_->config->n_layers; l++) {
        const ci_layer &h = cpu_->layers[l], &d = gpu_->layers[l];
        const ci_tensor *host[] = {
            &h.input_layernorm, &h.q_proj,  &h.k_proj,    &h.v_proj,  &h.q_bias,
            &h.k_bias,          &h.v_bias,  &h.o_proj,    &h.o_bias,  &h.post_attention_layernorm,
            &h.gate_proj,       &h.up_proj, &h.gate_bias, &h.up_bias, &h.down_proj,
            &h.down_bias};
        const ci_tensor *device[] = {
            &d.input_layernorm, &d.q_proj,  &d.k_proj,    &d.v_proj,  &d.q_bias,
            &d.k_bias,          &d.v_bias,  &d.o_proj,    &d.o_bias,  &d.post_attention_layernorm,
            &d.gate_proj,       &d.up_proj, &d.gate_bias, &d.up_bias, &d.down_proj,
            &d.down_bias};
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) {
            ASSERT_EQ(host[i]->data == nullptr, device[i]->data == nullptr) << "layer " << l;
            if (host[i]->data) pairs.push_back({"layer tensor", host[i], device[i]});
        }
        EXPECT_EQ(d.lambda, h.lambda) << "layer " << l << ": lambdas are drawn on the host";
    }
    EXPECT_EQ(gpu_->n_device_draws,
              (int)pairs.size() - (gpu_->config->tie_word_embeddings ? 1 : 0));

    cinfer_load_options o{};
    o.backend = CINFER_BACKEND_CUDA;
    ci_backend *be = nullptr;
    ASSERT_EQ(ci_backend_create_for(&o, &be), CINFER_OK) << cinfer_last_error();
    for (const Pair &p : pairs) {
        const int64_t n = ci_tensor_numel(p.host);
        ASSERT_EQ(n, ci_tensor_numel(p.device)) << p.what;
        const ci_dtype want_dtype = p.device->n_dims == 2 ? element_dtype(dtype_) : CI_F32;
        ASSERT_EQ(p.device->dtype, want_dtype)
            << p.what << ": matrices in the run dtype, vectors F32";
        std::vector<unsigned char> bytes(ci_tensor_nbytes(p.device));
        be->ops->to_host(be, bytes.data(), p.device->data, bytes.size());
        int64_t differ = 0, first = -1;
        for (int64_t i = 0; i < n; i++) {
            uint32_t got = 0;
            if (want_dtype == CI_F32)
                std::memcpy(&got, &bytes[(size_t)i * 4], 4);
            else {
                uint16_t half;
                std::memcpy(&half, &bytes[(size_t)i * 2], 2);
                got = half;
            }
            if (got != device_bits(*p.host, i, want_dtype) && differ++ == 0) first = i;
        }
        EXPECT_EQ(differ, 0) << p.what << " [" << p.host->shape[0] << "...]: " << differ << " of "
                             << n << " elements differ from the host draw, first at " << first;
    }
    ci_backend_free(be);
}

// The model the device drew runs: its logits agree with the host-drawn model on the CPU as a
// checkpoint's do (the tolerances of programs/compare.h).
TEST_P(CudaRandomWeights, LogitsAgreeWithTheCpuReference) {
    const cinfer_model_info *info = cinfer_model_get_info(cpu_);
    EXPECT_EQ(cinfer_model_get_info(gpu_)->n_params, info->n_params);
    EXPECT_EQ(cinfer_model_get_info(gpu_)->weight_bytes, info->weight_bytes);
    const ci_tolerance tol = ci_tolerance_for(dtype_);
    std::mt19937_64 rng(seed_);
    std::uniform_int_distribution<int32_t> pick(0, info->vocab_size - 1);
    for (int n : {1, 5, 37}) {
        std::vector<int32_t> ids(n);
        for (auto &id : ids) id = pick(rng);
        std::vector<float> want, got;
        for (auto [m, out] : {std::pair{cpu_, &want}, std::pair{gpu_, &got}}) {
            cinfer_session *s = nullptr;
            ASSERT_EQ(cinfer_session_create(m, n, &s), CINFER_OK) << cinfer_last_error();
            out->assign((size_t)n * info->vocab_size, NAN);
            ASSERT_EQ(cinfer_session_forward(s, ids.data(), n, CINFER_LOGITS_ALL, out->data()),
                      CINFER_OK)
                << cinfer_last_error();
            cinfer_session_free(s);
        }
        const Difference d = compare(got, want);
        std::printf("[cinfer] random %-22s %-4s %2d tokens: logits max |gpu - cpu| %.2e, rel L2 "
                    "%.2e\n",
                    std::get<0>(GetParam()).c_str(), cinfer_dtype_name(dtype_), n, d.max_abs,
                    d.rel_l2);
        EXPECT_TRUE(within(d, tol, "logits")) << n << " tokens";
    }
}

std::string random_param_name(const ::testing::TestParamInfo<CudaRandomWeights::ParamType> &info) {
    return std::get<0>(info.param) + "_" + cinfer_dtype_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaRandomWeights,
    ::testing::Combine(::testing::Values("diffllama_gqa4", "llama_gqa_llama3", "llama_bf16_sharded",
                                         "diffllama_fp16"),
                       ::testing::Values(CINFER_DTYPE_F32, CINFER_DTYPE_BF16, CINFER_DTYPE_F16)),
    random_param_name);

// A checkpoint that cannot fit says so before anything is allocated, with both figures.
TEST(CudaMemory, TheCheckNamesNeededAndFree) {
    EXPECT_EQ(ci_memory_fits("the weights", 0, 100, 100), CINFER_OK);
    EXPECT_EQ(ci_memory_fits("the weights of big in bf16", 1, 3LL << 30, 1LL << 30),
              CINFER_ERR_MEMORY);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"the weights of big in bf16", "3072.0 MiB",
                                                   "1024.0 MiB", "device 1", "free"}));
}

// ---- option checks and the greedy step: no GPU needed ------------------------------------------

// The CPU reference computes attention one way: naming a CUDA kind for it is a mistake to report,
// not to ignore; auto (the zeroed default) is its way.
TEST(LoadOptions, AttentionKindsSelectAmongTheCudaKernels) {
    for (cinfer_attention attention :
         {CINFER_ATTENTION_EAGER, CINFER_ATTENTION_SDPA, CINFER_ATTENTION_FLASH}) {
        cinfer_load_options o{};
        o.attention = attention;
        cinfer_model *m = nullptr;
        EXPECT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m),
                  CINFER_ERR_UNSUPPORTED);
        EXPECT_EQ(m, nullptr);
        EXPECT_TRUE(contains_all(cinfer_last_error(),
                                 {attention_name(attention), "CUDA", "CPU reference", "auto"}))
            << cinfer_last_error();
    }
    cinfer_load_options o{};
    o.attention = (cinfer_attention)7;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"attention 7", "auto, eager, sdpa or flash"}));
    o.attention = CINFER_ATTENTION_AUTO;
    ASSERT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m), CINFER_OK);
    EXPECT_STREQ(cinfer_model_get_info(m)->attention, "reference");
    cinfer_model_free(m);
}

TEST(LoadOptions, TheCpuComputesInF32Only) {
    for (cinfer_dtype dtype : {CINFER_DTYPE_BF16, CINFER_DTYPE_F16}) {
        cinfer_load_options o{};
        o.dtype = dtype;
        cinfer_model *m = nullptr;
        EXPECT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m),
                  CINFER_ERR_UNSUPPORTED);
        EXPECT_TRUE(contains_all(cinfer_last_error(), {"CPU", "f32", "CUDA"}));
    }
}

TEST(LoadOptions, CudaWithoutAGpuSaysWhy) {
    if (gpu_missing().empty()) GTEST_SKIP() << "a GPU is present";
    cinfer_load_options o{};
    o.backend = CINFER_BACKEND_CUDA;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m), CINFER_ERR_UNSUPPORTED);
    EXPECT_EQ(m, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"CUDA"}));
}

TEST(LoadOptions, ANonexistentDeviceIsNamed) {
    const std::string missing = gpu_missing();
    if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
    cinfer_load_options o{};
    o.backend = CINFER_BACKEND_CUDA;
    o.device = 1000;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_mha").c_str(), &o, &m), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"device 1000", "does not exist"}));
}

// The greedy step the GPU decodes with (argmax through the backend, logits left where they are),
// run on the CPU backend: it must pick the tokens cinfer_generate picks.
TEST(GreedyStep, PicksWhatGenerateDoesOnEveryFixture) {
    for (const std::string &name : fixture_names()) {
        SCOPED_TRACE(name);
        cinfer_model *m = load(fixture_dir(name), CINFER_BACKEND_CPU, CINFER_DTYPE_F32);
        ASSERT_NE(m, nullptr);
        const std::vector<int32_t> prompt = {1, 2, 3};
        const int n_new = 6;
        cinfer_session *s = nullptr;
        ASSERT_EQ(cinfer_session_create(m, 16, &s), CINFER_OK);
        std::vector<int32_t> want;
        cinfer_generate_params params{};
        params.max_new_tokens = n_new;
        params.ignore_eos = 1;
        auto collect = [](void *user, int32_t token) {
            static_cast<std::vector<int32_t> *>(user)->push_back(token);
            return 0;
        };
        ASSERT_EQ(cinfer_generate(s, prompt.data(), 3, &params, collect, &want, nullptr, nullptr),
                  CINFER_OK);
        cinfer_session_reset(s);
        std::vector<float> last(cinfer_model_get_info(m)->vocab_size);
        ASSERT_EQ(cinfer_session_forward(s, prompt.data(), 3, CINFER_LOGITS_LAST, last.data()),
                  CINFER_OK);
        std::vector<int32_t> got = {argmax(last.data(), (int)last.size())};
        while ((int)got.size() < n_new) {
            int32_t next = -1;
            ASSERT_EQ(ci_session_greedy_step(s, &got.back(), &next), CINFER_OK)
                << cinfer_last_error();
            got.push_back(next);
        }
        EXPECT_EQ(got, want);
        EXPECT_EQ(cinfer_session_n_past(s), 3 + n_new - 1);
        int32_t ignored, bad = -1;
        EXPECT_EQ(ci_session_greedy_step(s, &bad, &ignored), CINFER_ERR_ARGUMENT);
        cinfer_session_free(s);
        cinfer_model_free(m);
    }
}

// ---- the command line: backend options, compare, --dump-logits on the GPU ----------------------

// cinfer_test::run_cli with a longer limit: a GPU run loads and compiles more
CliResult run_cli(const std::vector<std::string> &args) { return cinfer_test::run_cli(args, 300); }

TEST(CliBackendOptions, UnknownValuesAreMisuse) {
    const std::string model = fixture_dir("llama_mha");
    for (auto [flag, value] : std::vector<std::pair<std::string, std::string>>{
             {"--backend", "tpu"}, {"--dtype", "fp8"}, {"--attn", "magic"}, {"--device", "-1"}}) {
        CliResult r = run_cli({"run", "--model", model, "--tokens", "1 2", flag, value});
        EXPECT_EQ(r.exit_code, 2) << flag << " " << value << ": " << r.err;
        EXPECT_TRUE(contains_all(r.err, {flag})) << r.err;
    }
}

TEST(CliBackendOptions, AnAttentionKindOnTheCpuIsRefusedWithAReason) {
    CliResult r =
        run_cli({"run", "--model", fixture_dir("llama_mha"), "--tokens", "1 2", "--attn", "sdpa"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains_all(r.err, {"sdpa", "CUDA", "CPU reference"}));
    EXPECT_EQ(r.out, "");
    r = run_cli({"run", "--model", fixture_dir("llama_mha"), "--tokens", "1 2", "--attn", "fast"});
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_TRUE(contains_all(r.err, {"--attn", "auto, eager, sdpa or flash", "fast"}));
}

TEST(CliBackendOptions, WithoutAGpuRunAndCompareSayWhy) {
    if (gpu_missing().empty()) GTEST_SKIP() << "a GPU is present";
    const std::string model = fixture_dir("llama_mha");
    // compare always runs the GPU, so it takes no --backend
    for (const std::vector<std::string> &args :
         {std::vector<std::string>{"run", "--model", model, "--tokens", "1 2", "--backend", "cuda"},
          std::vector<std::string>{"compare", "--model", model, "--tokens", "1 2"}}) {
        CliResult r = run_cli(args);
        EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
        EXPECT_TRUE(contains_all(r.err, {"CUDA"})) << args[0] << ": " << r.err;
        EXPECT_EQ(r.out, "") << args[0];
    }
}

TEST(CliOnTheGpu, CompareIsWithinToleranceInEveryDtype) {
    const std::string missing = gpu_missing();
    if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
    for (const char *dtype : {"f32", "bf16", "fp16"}) {
        CliResult r = run_cli({"compare", "--model", fixture_dir("diffllama_gqa2_llama3"),
                               "--dtype", dtype, "--tokens", "1 15 7 42 9 3 27"});
        EXPECT_EQ(r.exit_code, 0) << dtype << "\n" << r.out << r.err;
        EXPECT_TRUE(contains_all(r.out, {"embedding", "layer 0", "final norm", "logits", "top-1"}))
            << r.out;
    }
}

// --dump-logits works with --backend cuda as with the CPU: same shape, values within 1e-3 in f32.
TEST(CliOnTheGpu, DumpLogitsMatchesTheCpu) {
    const std::string missing = gpu_missing();
    if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
    TempDir dir;
    const std::vector<std::string> common = {
        "run",      "--model",   fixture_dir("llama_gqa_llama3"),
        "--tokens", "1 15 7 42", "--max-new-tokens",
        "3"};
    std::vector<std::string> cpu = common, gpu = common;
    cpu.insert(cpu.end(), {"--dump-logits", dir.file("cpu.npy")});
    gpu.insert(gpu.end(), {"--dump-logits", dir.file("gpu.npy"), "--backend", "cuda"});
    CliResult rc = run_cli(cpu), rg = run_cli(gpu);
    ASSERT_EQ(rc.exit_code, 0) << rc.err;
    ASSERT_EQ(rg.exit_code, 0) << rg.err;
    EXPECT_EQ(rc.out, rg.out) << "greedy tokens differ";
    const std::string a = read_file(dir.file("cpu.npy")), b = read_file(dir.file("gpu.npy"));
    ASSERT_EQ(a.size(), b.size());
    const size_t header = a.size() - 4 * 4 * 128; // 4 prompt rows of 128 logits
    ASSERT_EQ(a.substr(0, header), b.substr(0, header));
    std::vector<float> x((a.size() - header) / 4), y(x.size());
    std::memcpy(x.data(), a.data() + header, 4 * x.size());
    std::memcpy(y.data(), b.data() + header, 4 * y.size());
    EXPECT_TRUE(within(compare(y, x), ci_tolerance_for(CINFER_DTYPE_F32), "dumped logits"));
}

} // namespace
