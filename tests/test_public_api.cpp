// The parts of the public API (cinfer.h) the programs stand on beyond loading and generating: the
// one name table per enum, what a loaded model says about its config and tensors, timing marks
// and the op-class profile, generation_config.json's eos tokens. Each against what the files say
// or what a plain run does, on the CPU reference backend.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <cjson/cJSON.h>

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
    // every spelling of a run dtype the table takes; the canonical one is what _name gives
    const struct {
        const char *name;
        cinfer_dtype dtype;
        bool canonical;
    } spellings[] = {{"f32", CINFER_DTYPE_F32, true},        {"fp32", CINFER_DTYPE_F32, false},
                     {"float32", CINFER_DTYPE_F32, false},   {"bf16", CINFER_DTYPE_BF16, true},
                     {"bfloat16", CINFER_DTYPE_BF16, false}, {"fp16", CINFER_DTYPE_F16, true},
                     {"f16", CINFER_DTYPE_F16, false},       {"float16", CINFER_DTYPE_F16, false},
                     {"half", CINFER_DTYPE_F16, false}};
    for (const auto &spelling : spellings) {
        cinfer_dtype got = (cinfer_dtype)-1;
        ASSERT_EQ(cinfer_dtype_from_name(spelling.name, &got), 0) << spelling.name;
        EXPECT_EQ(got, spelling.dtype) << spelling.name;
        if (spelling.canonical) {
            EXPECT_STREQ(cinfer_dtype_name(spelling.dtype), spelling.name);
        }
    }
    EXPECT_STREQ(cinfer_attention_name(CINFER_ATTENTION_FLASH), "flash");
    EXPECT_STREQ(cinfer_backend_name(CINFER_BACKEND_CUDA), "cuda");
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
// transformers' 4.x layout. The model's config against the file's own fields, read with cJSON.
TEST_F(LoadedModel, ConfigSaysWhatConfigJsonSays) {
    load("llama_gqa_llama3");
    cinfer_model_config got;
    cinfer_model_get_config(model_, &got);
    const std::string text =
        cinfer_test::read_file(fixture_dir("llama_gqa_llama3") + "/config.json");
    cJSON *file = cJSON_Parse(text.c_str());
    ASSERT_NE(file, nullptr);
    const cJSON *rope = cJSON_GetObjectItem(file, "rope_scaling");
    auto field = [](const cJSON *object, const char *name) {
        const cJSON *item = cJSON_GetObjectItem(object, name);
        EXPECT_NE(item, nullptr) << name;
        return item;
    };
    const struct {
        const char *got, *want;
    } strings[] = {{got.hidden_act, field(file, "hidden_act")->valuestring},
                   {got.rope_type, field(rope, "rope_type")->valuestring},
                   {got.torch_dtype, field(file, "torch_dtype")->valuestring}};
    for (const auto &s : strings) EXPECT_STREQ(s.got, s.want);
    const struct {
        double got, want;
    } numbers[] = {
        {got.rms_norm_eps, field(file, "rms_norm_eps")->valuedouble},
        {got.rope_theta, field(file, "rope_theta")->valuedouble},
        {got.rope_factor, field(rope, "factor")->valuedouble},
        {(double)got.rope_original_max_position_embeddings,
         field(rope, "original_max_position_embeddings")->valuedouble},
        {(double)got.attention_bias, (double)cJSON_IsTrue(field(file, "attention_bias"))},
        {(double)got.mlp_bias, (double)cJSON_IsTrue(field(file, "mlp_bias"))},
        {(double)got.tie_word_embeddings, (double)cJSON_IsTrue(field(file, "tie_word_embeddings"))},
    };
    for (const auto &n : numbers) EXPECT_EQ(n.got, n.want);
    EXPECT_EQ(got.attention_bias + got.mlp_bias + got.tie_word_embeddings, 3) << "all three on";
    cJSON_Delete(file);
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
