// The parts of the public API (cinfer.h) the programs stand on beyond loading and generating: the
// one name table per enum, what a loaded model says about its config and tensors, timing marks
// and the op-class profile, generation_config.json's eos tokens. Each against what the files say
// or what a plain run does, on the CPU reference backend.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using cinfer_test::fixture_dir;

// ---- names ------------------------------------------------------------------------------------

TEST(Names, EveryValueRoundTripsThroughItsName) {
    for (int d = 0; d < CINFER_DTYPE_COUNT; d++) {
        cinfer_dtype back = (cinfer_dtype)-1;
        ASSERT_EQ(cinfer_dtype_from_name(cinfer_dtype_name((cinfer_dtype)d), &back), 0);
        EXPECT_EQ(back, (cinfer_dtype)d);
    }
    for (int a = 0; a < CINFER_ATTENTION_COUNT; a++) {
        cinfer_attention back = (cinfer_attention)-1;
        ASSERT_EQ(cinfer_attention_from_name(cinfer_attention_name((cinfer_attention)a), &back), 0);
        EXPECT_EQ(back, (cinfer_attention)a);
    }
    for (int b = 0; b < CINFER_BACKEND_COUNT; b++) {
        cinfer_backend back = (cinfer_backend)-1;
        ASSERT_EQ(cinfer_backend_from_name(cinfer_backend_name((cinfer_backend)b), &back), 0);
        EXPECT_EQ(back, (cinfer_backend)b);
    }
}

TEST(Names, CanonicalSpellingsAndTheAliasesPeopleType) {
    EXPECT_STREQ(cinfer_dtype_name(CINFER_DTYPE_F32), "f32");
    EXPECT_STREQ(cinfer_dtype_name(CINFER_DTYPE_BF16), "bf16");
    EXPECT_STREQ(cinfer_dtype_name(CINFER_DTYPE_F16), "fp16");
    EXPECT_STREQ(cinfer_attention_name(CINFER_ATTENTION_FLASH), "flash");
    EXPECT_STREQ(cinfer_backend_name(CINFER_BACKEND_CUDA), "cuda");
    const struct {
        const char *name;
        cinfer_dtype dtype;
    } aliases[] = {{"fp32", CINFER_DTYPE_F32},      {"float32", CINFER_DTYPE_F32},
                   {"bfloat16", CINFER_DTYPE_BF16}, {"f16", CINFER_DTYPE_F16},
                   {"float16", CINFER_DTYPE_F16},   {"half", CINFER_DTYPE_F16}};
    for (const auto &alias : aliases) {
        cinfer_dtype got = CINFER_DTYPE_F32;
        ASSERT_EQ(cinfer_dtype_from_name(alias.name, &got), 0) << alias.name;
        EXPECT_EQ(got, alias.dtype) << alias.name;
    }
}

TEST(Names, UnknownNamesAndValuesAreRefused) {
    cinfer_dtype dtype = CINFER_DTYPE_BF16;
    EXPECT_EQ(cinfer_dtype_from_name("int8", &dtype), -1);
    EXPECT_EQ(cinfer_dtype_from_name("BF16", &dtype), -1); // names are lower case, as typed
    EXPECT_EQ(cinfer_dtype_from_name(nullptr, &dtype), -1);
    EXPECT_EQ(dtype, CINFER_DTYPE_BF16) << "a refused name leaves the output alone";
    cinfer_attention kind;
    EXPECT_EQ(cinfer_attention_from_name("flash2", &kind), -1);
    cinfer_backend backend;
    EXPECT_EQ(cinfer_backend_from_name("rocm", &backend), -1);
    EXPECT_STREQ(cinfer_dtype_name((cinfer_dtype)CINFER_DTYPE_COUNT), "unknown");
    EXPECT_STREQ(cinfer_attention_name((cinfer_attention)-1), "unknown");
}

// ---- a loaded model's config and tensors --------------------------------------------------------

class LoadedModel : public ::testing::Test {
  protected:
    void load(const std::string &fixture) {
        ASSERT_EQ(cinfer_model_load(fixture_dir(fixture).c_str(), nullptr, &model_), CINFER_OK)
            << cinfer_last_error();
    }
    void TearDown() override { cinfer_model_free(model_); }
    cinfer_model *model_ = nullptr;
};

// llama_gqa_llama3 (scripts/make_fixtures.py): biases on, tied embeddings, llama3 RoPE, written in
// transformers' 4.x layout.
TEST_F(LoadedModel, ConfigSaysWhatTheFixtureWasMadeWith) {
    load("llama_gqa_llama3");
    cinfer_model_config c;
    cinfer_model_get_config(model_, &c);
    EXPECT_STREQ(c.hidden_act, "silu");
    EXPECT_STREQ(c.rope_type, "llama3");
    EXPECT_GT(c.rope_factor, 1.0);
    EXPECT_GT(c.rope_original_max_position_embeddings, 0);
    EXPECT_EQ(c.attention_bias, 1);
    EXPECT_EQ(c.mlp_bias, 1);
    EXPECT_EQ(c.tie_word_embeddings, 1);
    EXPECT_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_STREQ(c.torch_dtype, "float32");
}

TEST_F(LoadedModel, DiffLlamaTakesItsOwnDefaults) {
    load("diffllama_mha");
    cinfer_model_config c;
    cinfer_model_get_config(model_, &c);
    EXPECT_EQ(c.mlp_bias, 0);
    EXPECT_STREQ(cinfer_model_get_info(model_)->architecture, "DiffLlamaForCausalLM");
}

TEST_F(LoadedModel, ListsEveryTensorOnceInNameOrderWithItsShapeAndBytes) {
    load("llama_mha");
    const cinfer_model_info *info = cinfer_model_get_info(model_);
    EXPECT_STREQ(cinfer_model_weights_source(model_), "model.safetensors");
    const int n = cinfer_model_n_tensors(model_);
    // embedding, final norm, lm_head, and 9 tensors a layer (2 norms, 7 matrices)
    ASSERT_EQ(n, 3 + 9 * info->n_layers);
    int64_t bytes = 0;
    std::string previous;
    for (int i = 0; i < n; i++) {
        cinfer_tensor_info t;
        ASSERT_EQ(cinfer_model_tensor(model_, i, &t), CINFER_OK);
        EXPECT_LT(previous, t.name);
        previous = t.name;
        EXPECT_STREQ(t.dtype, "F32");
        EXPECT_STREQ(t.file, "model.safetensors");
        EXPECT_EQ(t.used, 1) << t.name;
        int64_t elements = 1;
        for (int d = 0; d < t.n_dims; d++) elements *= t.shape[d];
        EXPECT_EQ(t.bytes, 4 * elements) << t.name;
        if (previous == "model.embed_tokens.weight") {
            ASSERT_EQ(t.n_dims, 2);
            EXPECT_EQ(t.shape[0], info->vocab_size);
            EXPECT_EQ(t.shape[1], info->hidden_size);
        }
        bytes += t.bytes;
    }
    EXPECT_EQ(bytes, info->weight_bytes);
    cinfer_tensor_info t;
    EXPECT_EQ(cinfer_model_tensor(model_, n, &t), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(cinfer_model_tensor(model_, -1, &t), CINFER_ERR_ARGUMENT);
}

TEST(GenerationEos, ReadsGenerationConfigAndIsEmptyWithout) {
    int32_t ids[CINFER_MAX_EOS_TOKENS];
    int n = -1;
    ASSERT_EQ(cinfer_generation_eos_tokens(fixture_dir("llama_mha").c_str(), ids,
                                           CINFER_MAX_EOS_TOKENS, &n),
              CINFER_OK)
        << cinfer_last_error();
    ASSERT_EQ(n, 1); // save_pretrained wrote the config's eos_token_id there
    EXPECT_EQ(ids[0], 2);
    const std::string empty = testing::TempDir() + "/cinfer_no_generation_config";
    std::filesystem::create_directories(empty);
    ASSERT_EQ(cinfer_generation_eos_tokens(empty.c_str(), ids, CINFER_MAX_EOS_TOKENS, &n),
              CINFER_OK);
    EXPECT_EQ(n, 0);
}

// ---- timing marks and the profile
// ----------------------------------------------------------------

class ProfiledSession : public LoadedModel {
  protected:
    void SetUp() override {
        load("llama_mha");
        ASSERT_EQ(cinfer_session_create(model_, 64, &session_), CINFER_OK) << cinfer_last_error();
    }
    void TearDown() override {
        cinfer_session_free(session_);
        LoadedModel::TearDown();
    }
    cinfer_session *session_ = nullptr;
    const std::vector<int32_t> prompt_ = {1, 15, 7, 42, 9};
};

TEST_F(ProfiledSession, MarksTimeTheWorkBetweenThem) {
    std::vector<float> logits(cinfer_model_get_info(model_)->vocab_size);
    ASSERT_EQ(cinfer_session_mark(session_, 3), CINFER_OK);
    ASSERT_EQ(cinfer_session_forward(session_, prompt_.data(), (int)prompt_.size(),
                                     CINFER_LOGITS_LAST, logits.data()),
              CINFER_OK);
    ASSERT_EQ(cinfer_session_mark(session_, 4), CINFER_OK);
    const double seconds = cinfer_session_seconds_between(session_, 3, 4);
    EXPECT_TRUE(std::isfinite(seconds));
    EXPECT_GT(seconds, 0.0);
    EXPECT_TRUE(std::isnan(cinfer_session_seconds_between(session_, 3, 200))) << "never marked";
    EXPECT_TRUE(std::isnan(cinfer_session_seconds_between(session_, 3, CINFER_MAX_MARKS)));
    EXPECT_EQ(cinfer_session_mark(session_, CINFER_MAX_MARKS), CINFER_ERR_ARGUMENT);
    EXPECT_EQ(cinfer_session_mark(session_, -1), CINFER_ERR_ARGUMENT);
}

TEST_F(ProfiledSession, ProfileCountsEveryOpClassOfAPassAndChangesNoResult) {
    const int V = cinfer_model_get_info(model_)->vocab_size,
              L = cinfer_model_get_info(model_)->n_layers;
    std::vector<float> plain(V), profiled(V);
    ASSERT_EQ(cinfer_session_forward(session_, prompt_.data(), (int)prompt_.size(),
                                     CINFER_LOGITS_LAST, plain.data()),
              CINFER_OK);
    cinfer_session_reset(session_);

    ASSERT_EQ(cinfer_session_profile_start(session_), CINFER_OK) << cinfer_last_error();
    EXPECT_EQ(cinfer_session_profile_start(session_), CINFER_ERR_ARGUMENT) << "one at a time";
    ASSERT_EQ(cinfer_session_forward(session_, prompt_.data(), (int)prompt_.size(),
                                     CINFER_LOGITS_LAST, profiled.data()),
              CINFER_OK);
    // a recorded step cannot be timed op by op, and the marks are the profile's
    int32_t token = 3, next = -1;
    EXPECT_EQ(cinfer_session_decode_greedy(session_, &token, &next), CINFER_ERR_ARGUMENT);
    EXPECT_NE(std::string(cinfer_last_error()).find("profile"), std::string::npos);
    EXPECT_EQ(cinfer_session_mark(session_, 0), CINFER_ERR_ARGUMENT);
    cinfer_profile profile;
    ASSERT_EQ(cinfer_session_profile_stop(session_, &profile), CINFER_OK);
    EXPECT_EQ(cinfer_session_profile_stop(session_, &profile), CINFER_ERR_ARGUMENT);

    EXPECT_EQ(plain, profiled) << "a profiled pass computes the same logits, bit for bit";
    // per layer: q/k/v as one op, o_proj, gate/up as one op, down_proj; then lm_head
    EXPECT_EQ(profile.calls[CINFER_OP_MATMUL], 4 * L + 1);
    EXPECT_EQ(profile.calls[CINFER_OP_NORM], 2 * L + 1);
    EXPECT_EQ(profile.calls[CINFER_OP_ATTENTION], L);
    EXPECT_GT(profile.calls[CINFER_OP_OTHER], 0);
    EXPECT_EQ(profile.dropped, 0);
    for (int c = 0; c < CINFER_OP_CLASS_COUNT; c++) {
        EXPECT_GE(profile.seconds[c], 0.0) << cinfer_op_class_name((cinfer_op_class)c);
        EXPECT_TRUE(std::isfinite(profile.seconds[c]));
    }
    EXPECT_STREQ(cinfer_op_class_name(CINFER_OP_MATMUL), "matmul");

    // after the profile, the greedy step runs again
    ASSERT_EQ(cinfer_session_decode_greedy(session_, &token, &next), CINFER_OK)
        << cinfer_last_error();
    EXPECT_GE(next, 0);
    EXPECT_LT(next, V);
}

} // namespace
