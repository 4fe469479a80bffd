// Every fixture against transformers: the expected outputs in tests/fixtures/<name>/ were written
// by scripts/make_fixtures.py from transformers' own LlamaForCausalLM / DiffLlamaForCausalLM
// (eager attention, float32; for bf16/fp16 checkpoints, the same rounded weights upcast to f32).
//
// Tolerance: 1e-3 max-abs on logits and hidden states, the bar that model ports into
// transformers are held to. The CPU reference computes in f32 with double accumulation, so the
// differences seen are ~1e-6..1e-5; each test prints what it measured.
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "loaders/safetensors.h"
}

using namespace cinfer_test;

namespace {

constexpr double kTolerance = 1e-3;

// expected.safetensors, read with the engine's own reader.
struct Expected {
    st_file *file = nullptr;
    int n_prompts = 0;
    int n_greedy = 0;

    explicit Expected(const std::string &dir) {
        std::string path = dir + "/expected.safetensors";
        if (st_open(path.c_str(), &file) != CINFER_OK)
            ADD_FAILURE() << cinfer_last_error();
        else {
            n_prompts = std::atoi(metadata("n_prompts"));
            n_greedy = std::atoi(metadata("n_greedy"));
        }
    }
    ~Expected() { st_close(file); }
    const char *metadata(const char *key) const {
        const char *value = st_metadata(file, key);
        return value ? value : "";
    }
    const st_tensor *tensor(const std::string &name) const {
        const st_tensor *t = st_find(file, name.c_str());
        if (!t) ADD_FAILURE() << "expected.safetensors has no tensor " << name;
        return t;
    }
    std::vector<int32_t> ids(const std::string &name) const {
        const st_tensor *t = tensor(name);
        std::vector<int32_t> out;
        if (!t || t->dtype != CI_I64) return out;
        const int64_t *values = static_cast<const int64_t *>(t->data);
        for (int64_t i = 0; i < st_tensor_numel(t); i++) out.push_back((int32_t)values[i]);
        return out;
    }
    const float *floats(const std::string &name, int64_t expected_numel) const {
        const st_tensor *t = tensor(name);
        if (!t) return nullptr;
        EXPECT_EQ(t->dtype, CI_F32) << name;
        EXPECT_EQ(st_tensor_numel(t), expected_numel) << name;
        return static_cast<const float *>(t->data);
    }
};

std::string prompt_key(int i, const char *what) {
    return "prompt" + std::to_string(i) + "." + what;
}

double max_abs_diff(const float *a, const float *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d;  // NaN propagates as a failure
    }
    return worst;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        dir_ = fixture_dir(GetParam());
        ASSERT_EQ(cinfer_model_load(dir_.c_str(), nullptr, &model_), CINFER_OK)
            << cinfer_last_error();
        info_ = cinfer_model_get_info(model_);
        expected_ = std::make_unique<Expected>(dir_);
        ASSERT_GE(expected_->n_prompts, 3);
    }
    void TearDown() override { cinfer_model_free(model_); }

    // A context long enough for the prompt and its greedy continuation, even past
    // max_position_embeddings (the dynamic-rope fixture goes there on purpose).
    cinfer_session *new_session(size_t n_prompt) {
        cinfer_session *session = nullptr;
        int n_ctx = std::max<int>(info_->max_position_embeddings,
                                  (int)n_prompt + expected_->n_greedy);
        EXPECT_EQ(cinfer_session_create(model_, n_ctx, &session), CINFER_OK)
            << cinfer_last_error();
        return session;
    }

    std::string dir_;
    cinfer_model *model_ = nullptr;
    const cinfer_model_info *info_ = nullptr;
    std::unique_ptr<Expected> expected_;
};

TEST_P(FixtureTest, LogitsMatchTransformers) {
    for (int p = 0; p < expected_->n_prompts; p++) {
        std::vector<int32_t> ids = expected_->ids(prompt_key(p, "input_ids"));
        ASSERT_FALSE(ids.empty());
        const size_t V = (size_t)info_->vocab_size;
        const float *want = expected_->floats(prompt_key(p, "logits"), (int64_t)(ids.size() * V));
        ASSERT_NE(want, nullptr);
        cinfer_session *session = new_session(ids.size());
        ASSERT_NE(session, nullptr);
        std::vector<float> got(ids.size() * V, NAN);
        ASSERT_EQ(cinfer_session_forward(session, ids.data(), (int)ids.size(), CINFER_LOGITS_ALL,
                                         got.data()),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        double diff = max_abs_diff(got.data(), want, got.size());
        std::printf("[cinfer] %-24s prompt %d (%2zu tokens): max |logit - transformers| = %.2e\n",
                    GetParam().c_str(), p, ids.size(), diff);
        EXPECT_LE(diff, kTolerance) << "logits of prompt " << p << " differ from transformers";
    }
}

// The residual stream after the embedding, after every decoder layer, and after the final norm,
// against forward hooks on transformers' modules.
struct HiddenCapture {
    std::map<int, std::vector<float>> stages;
    static void observe(void *user, int stage, const float *hidden, int n_tokens, int dim) {
        auto *self = static_cast<HiddenCapture *>(user);
        auto &rows = self->stages[stage];
        rows.insert(rows.end(), hidden, hidden + (size_t)n_tokens * dim);
    }
};

TEST_P(FixtureTest, HiddenStatesMatchTransformersLayerByLayer) {
    const int n_stages = info_->n_layers + 2;
    const size_t E = (size_t)info_->hidden_size;
    for (int p = 0; p < expected_->n_prompts; p++) {
        std::vector<int32_t> ids = expected_->ids(prompt_key(p, "input_ids"));
        const float *want =
            expected_->floats(prompt_key(p, "hidden"), (int64_t)(n_stages * ids.size() * E));
        ASSERT_NE(want, nullptr);
        cinfer_session *session = new_session(ids.size());
        ASSERT_NE(session, nullptr);
        HiddenCapture capture;
        cinfer_session_observe(session, HiddenCapture::observe, &capture);
        ASSERT_EQ(cinfer_session_forward(session, ids.data(), (int)ids.size(), CINFER_LOGITS_NONE,
                                         nullptr),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        ASSERT_EQ((int)capture.stages.size(), n_stages);
        for (int stage = 0; stage < n_stages; stage++) {
            const auto &got = capture.stages[stage];
            ASSERT_EQ(got.size(), ids.size() * E);
            double diff = max_abs_diff(got.data(), want + (size_t)stage * ids.size() * E, got.size());
            const char *what = stage == 0 ? "embedding" : stage == n_stages - 1 ? "final norm" : "layer";
            EXPECT_LE(diff, kTolerance) << "prompt " << p << ", " << what << " (stage " << stage
                                        << ") differs from transformers by " << diff;
        }
    }
}

TEST_P(FixtureTest, GreedyTokensMatchTransformers) {
    for (int p = 0; p < expected_->n_prompts; p++) {
        std::vector<int32_t> ids = expected_->ids(prompt_key(p, "input_ids"));
        std::vector<int32_t> want = expected_->ids(prompt_key(p, "greedy"));
        ASSERT_EQ((int)want.size(), expected_->n_greedy);
        cinfer_session *session = new_session(ids.size());
        ASSERT_NE(session, nullptr);
        std::vector<int32_t> got;
        cinfer_generate_params params = {};
        params.max_new_tokens = (int)want.size();
        params.ignore_eos = 1;  // transformers' loop did not stop at eos either
        auto collect = [](void *user, int32_t token) {
            static_cast<std::vector<int32_t> *>(user)->push_back(token);
            return 0;
        };
        cinfer_generate_stats stats;
        ASSERT_EQ(cinfer_generate(session, ids.data(), (int)ids.size(), &params, collect, &got,
                                  nullptr, &stats),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        EXPECT_EQ(got, want) << "greedy continuation of prompt " << p;
    }
}

std::string readable_name(const ::testing::TestParamInfo<std::string> &info) { return info.param; }

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(fixture_names()),
                         readable_name);

// Without this, an empty or misplaced fixture folder would make the suite above vanish silently.
TEST(Fixtures, EveryRequiredFixtureIsPresent) {
    std::vector<std::string> names = fixture_names();
    const char *required[] = {"llama_mha",          "llama_gqa_llama3",      "llama_gelutanh_linear",
                              "llama_gelu_dynamic", "llama_yarn",            "llama_bf16_sharded",
                              "diffllama_mha",      "diffllama_gqa2_llama3", "diffllama_gqa4",
                              "diffllama_gqa8",     "diffllama_fp16"};
    for (const char *name : required)
        EXPECT_NE(std::find(names.begin(), names.end(), name), names.end())
            << "tests/fixtures/" << name << " is missing: run scripts/make_fixtures.py";
}

TEST(Fixtures, RecordTheTransformersVersionTheyCameFrom) {
    for (const std::string &name : fixture_names()) {
        Expected expected(fixture_dir(name));
        EXPECT_STRNE(expected.metadata("transformers_version"), "") << name;
        EXPECT_STRNE(expected.metadata("torch_version"), "") << name;
    }
}

}  // namespace
