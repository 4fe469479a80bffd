// The continuous-batching engine on a GPU (skipped without one): in f32 every request served
// among others gives the greedy ids it gives alone on the same backend; in bf16 and fp16 the
// log-probabilities of the tokens it chose stay within compare's tolerances of the CPU
// reference's at the same positions. Every attention kind, standard and differential.
#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

extern "C" {
#include "programs/compare.h"
#include "kernels/backend.h"
#include "kernels/device.h"
}

using namespace cinfer_test;

namespace {

std::string gpu_missing() {
    if (ci_backend_available(CINFER_BACKEND_CUDA) != CINFER_OK) return cinfer_last_error();
    if (ci_cuda_devices(nullptr, 0) == 0) return "no CUDA device found";
    return "";
}

cinfer_model *load(const std::string &dir, cinfer_backend backend, cinfer_dtype dtype,
                   cinfer_attention attention) {
    cinfer_load_options o{};
    o.backend = backend;
    o.dtype = dtype;
    o.attention = attention;
    cinfer_model *m = nullptr;
    EXPECT_EQ(cinfer_model_load(dir.c_str(), &o, &m), CINFER_OK) << cinfer_last_error();
    return m;
}

struct Served {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
};

// n requests with prompts of 1 to 40 tokens (a third sharing an earlier prompt's start), arriving
// over the first steps, greedy, max_new_tokens new tokens each, through an engine with small
// blocks and budget so that steps mix decode rows and prompt chunks.
std::vector<Served> serve(cinfer_model *model, const std::vector<std::vector<int32_t>> &prompts,
                          int max_new_tokens, int n_kv_blocks) {
    cinfer_engine_options o{};
    o.block_size = 16;
    o.max_batched_tokens = 48;
    o.max_seqs = 8;
    o.n_kv_blocks = n_kv_blocks;
    cinfer_engine *engine = nullptr;
    EXPECT_EQ(cinfer_engine_create(model, &o, &engine), CINFER_OK) << cinfer_last_error();
    std::vector<Served> served(prompts.size());
    if (!engine) return served;
    std::map<uint64_t, size_t> index_of;
    size_t finished = 0;
    for (int step = 0; finished < prompts.size() && step < 10000; step++) {
        for (size_t i = step * 3; i < prompts.size() && i < (size_t)step * 3 + 3; i++) {
            cinfer_request_params p{};
            p.max_new_tokens = max_new_tokens;
            p.ignore_eos = 1;
            p.logprobs = 1;
            uint64_t id = 0;
            EXPECT_EQ(cinfer_engine_add_request(engine, prompts[i].data(), (int)prompts[i].size(),
                                                &p, &id),
                      CINFER_OK)
                << cinfer_last_error();
            index_of[id] = i;
        }
        const cinfer_request_output *out = nullptr;
        int n = 0;
        EXPECT_EQ(cinfer_engine_step(engine, &out, &n), CINFER_OK) << cinfer_last_error();
        for (int k = 0; k < n; k++) {
            Served &s = served[index_of.at(out[k].request_id)];
            if (out[k].token >= 0) {
                s.tokens.push_back(out[k].token);
                s.logprobs.push_back(out[k].logprob);
            }
            if (out[k].finish_reason != CINFER_FINISH_NONE) finished++;
        }
    }
    cinfer_engine_stats stats{};
    cinfer_engine_get_stats(engine, &stats);
    EXPECT_EQ(stats.n_blocks_used, 0);
    cinfer_engine_free(engine);
    return served;
}

std::vector<int32_t> solo_greedy(cinfer_model *model, const std::vector<int32_t> &prompt, int n) {
    cinfer_session *s = nullptr;
    EXPECT_EQ(cinfer_session_create(model, (int)prompt.size() + n, &s), CINFER_OK);
    std::vector<int32_t> tokens;
    cinfer_generate_params g{};
    g.max_new_tokens = n;
    g.ignore_eos = 1;
    EXPECT_EQ(cinfer_generate(
                  s, prompt.data(), (int)prompt.size(), &g,
                  [](void *user, int32_t t) {
                      static_cast<std::vector<int32_t> *>(user)->push_back(t);
                      return 0;
                  },
                  &tokens, nullptr, nullptr),
              CINFER_OK);
    cinfer_session_free(s);
    return tokens;
}

// log-softmax at each generated position of prompt + tokens, on the CPU reference
std::vector<float> reference_logprobs(cinfer_model *cpu, const std::vector<int32_t> &prompt,
                                      const std::vector<int32_t> &tokens, int vocab) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), tokens.begin(), tokens.end());
    cinfer_session *s = nullptr;
    EXPECT_EQ(cinfer_session_create(cpu, (int)all.size(), &s), CINFER_OK);
    std::vector<float> logits(all.size() * (size_t)vocab);
    EXPECT_EQ(
        cinfer_session_forward(s, all.data(), (int)all.size(), CINFER_LOGITS_ALL, logits.data()),
        CINFER_OK);
    cinfer_session_free(s);
    std::vector<float> out;
    for (size_t t = 0; t < tokens.size(); t++) {
        const float *row = logits.data() + (prompt.size() - 1 + t) * (size_t)vocab;
        double max_logit = -INFINITY, total = 0.0;
        for (int v = 0; v < vocab; v++) max_logit = std::max(max_logit, (double)row[v]);
        for (int v = 0; v < vocab; v++) total += std::exp((double)row[v] - max_logit);
        out.push_back((float)(row[tokens[t]] - max_logit - std::log(total)));
    }
    return out;
}

class CudaEngine
    : public ::testing::TestWithParam<std::tuple<std::string, cinfer_dtype, cinfer_attention>> {};

TEST_P(CudaEngine, ServedEqualsAlone) {
    const std::string missing = gpu_missing();
    if (!missing.empty()) GTEST_SKIP() << "no GPU to test on: " << missing;
    const auto [name, dtype, attention] = GetParam();
    const std::string dir = fixture_dir(name);
    cinfer_model *gpu = load(dir, CINFER_BACKEND_CUDA, dtype, attention);
    cinfer_model *cpu = load(dir, CINFER_BACKEND_CPU, CINFER_DTYPE_F32, CINFER_ATTENTION_AUTO);
    ASSERT_TRUE(gpu && cpu);
    const int vocab = cinfer_model_get_info(cpu)->vocab_size;
    std::mt19937_64 rng(fresh_seed());
    std::uniform_int_distribution<int> len(1, 40), id(0, vocab - 1);
    std::vector<std::vector<int32_t>> prompts(12);
    for (size_t i = 0; i < prompts.size(); i++) {
        prompts[i].resize((size_t)len(rng));
        for (auto &t : prompts[i]) t = id(rng);
        if (i % 3 == 2)
            std::copy(prompts[i - 1].begin(),
                      prompts[i - 1].begin() + std::min(prompts[i - 1].size(), prompts[i].size()),
                      prompts[i].begin());
    }
    const int n_new = 12;
    // 20 blocks of 16: fewer than 12 requests of up to 52 positions need, so some are preempted
    for (int n_kv_blocks : {0, 20}) {
        const std::vector<Served> served = serve(gpu, prompts, n_new, n_kv_blocks);
        const ci_tolerance tol = ci_tolerance_for(dtype);
        for (size_t i = 0; i < prompts.size(); i++) {
            ASSERT_EQ(served[i].tokens.size(), (size_t)n_new) << "request " << i;
            if (dtype == CINFER_DTYPE_F32) {
                EXPECT_EQ(served[i].tokens, solo_greedy(gpu, prompts[i], n_new)) << "request " << i;
            }
            const std::vector<float> expected =
                reference_logprobs(cpu, prompts[i], served[i].tokens, vocab);
            for (size_t t = 0; t < expected.size(); t++) {
                const double allowed =
                    dtype == CINFER_DTYPE_F32 ? 1e-3 : 4.0 * (tol.rel_l2 > 0 ? tol.rel_l2 : 1e-2);
                EXPECT_NEAR(served[i].logprobs[t], expected[t],
                            allowed * std::max(1.0, std::fabs((double)expected[t])))
                    << "request " << i << ", token " << t;
            }
        }
    }
    cinfer_model_free(gpu);
    cinfer_model_free(cpu);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, CudaEngine,
    ::testing::Combine(::testing::Values("llama_gqa_llama3", "diffllama_gqa2_llama3"),
                       ::testing::Values(CINFER_DTYPE_F32, CINFER_DTYPE_BF16, CINFER_DTYPE_F16),
                       ::testing::Values(CINFER_ATTENTION_EAGER, CINFER_ATTENTION_SDPA,
                                         CINFER_ATTENTION_FLASH)),
    [](const auto &info) {
        const cinfer_dtype d = std::get<1>(info.param);
        const cinfer_attention a = std::get<2>(info.param);
        return std::get<0>(info.param) + "_" +
               (d == CINFER_DTYPE_F32    ? "f32"
                : d == CINFER_DTYPE_BF16 ? "bf16"
                                         : "fp16") +
               "_" +
               (a == CINFER_ATTENTION_EAGER  ? "eager"
                : a == CINFER_ATTENTION_SDPA ? "sdpa"
                                             : "flash");
    });

} // namespace
