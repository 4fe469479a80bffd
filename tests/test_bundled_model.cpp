// The model that ships in the repository (models/diffllama-tiny, trained by scripts/train_tiny.py)
// against transformers: tests/fixtures/bundled_model/expected.json holds, for a few prompts, the
// ids the saved tokenizer gives them, the logits of the last prompt position and the 64 tokens of
// transformers' greedy generate() (the bf16 checkpoint reloaded in float32, eos ignored).
//
// Tolerance: 1e-3 max-abs on logits, as for the other fixtures (tests/test_fixtures.cpp). Greedy
// ids must be equal: expected.json records the smallest margin between the two best logits along
// each greedy path, and the script keeps it far above that tolerance.
#include <cjson/cJSON.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;

const std::string kModelDir = std::string(CINFER_FIXTURE_DIR) + "/../../models/diffllama-tiny";
const std::string kExpected = std::string(CINFER_FIXTURE_DIR) + "/bundled_model/expected.json";
constexpr double kTolerance = 1e-3;
// What "small enough to commit" means for the bundled model's folder.
constexpr uintmax_t kMaxFolderBytes = 20u * 1000u * 1000u;

struct Prompt {
    std::string text, greedy_text;
    std::vector<int32_t> input_ids, greedy_ids;
    std::vector<float> last_logits;
    double min_greedy_gap = 0.0;
};

std::vector<int32_t> int_array(const cJSON *array) {
    std::vector<int32_t> out;
    const cJSON *item;
    cJSON_ArrayForEach(item, array) out.push_back((int32_t)item->valuedouble);
    return out;
}

// expected.json, parsed once; a missing or malformed file fails every test that uses it.
struct Expected {
    std::vector<Prompt> prompts;
    int n_new_tokens = 0;
    std::string error;

    Expected() {
        cJSON *root = cJSON_Parse(cinfer_test::read_file(kExpected).c_str());
        if (!root) {
            error = kExpected + ": missing or not JSON";
            return;
        }
        n_new_tokens = cJSON_GetObjectItemCaseSensitive(root, "n_new_tokens")
                           ? cJSON_GetObjectItemCaseSensitive(root, "n_new_tokens")->valueint
                           : 0;
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(root, "prompts")) {
            Prompt p;
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(item, "text");
            p.text = cJSON_IsString(text) ? text->valuestring : "";
            const cJSON *greedy_text = cJSON_GetObjectItemCaseSensitive(item, "greedy_text");
            p.greedy_text = cJSON_IsString(greedy_text) ? greedy_text->valuestring : "";
            p.input_ids = int_array(cJSON_GetObjectItemCaseSensitive(item, "input_ids"));
            p.greedy_ids = int_array(cJSON_GetObjectItemCaseSensitive(item, "greedy_ids"));
            const cJSON *value;
            cJSON_ArrayForEach(value, cJSON_GetObjectItemCaseSensitive(item, "last_logits"))
                p.last_logits.push_back((float)value->valuedouble);
            const cJSON *gap = cJSON_GetObjectItemCaseSensitive(item, "min_greedy_gap");
            p.min_greedy_gap = cJSON_IsNumber(gap) ? gap->valuedouble : 0.0;
            prompts.push_back(std::move(p));
        }
        cJSON_Delete(root);
        if (prompts.empty()) error = kExpected + ": field 'prompts' is missing or empty";
    }
};

const Expected &expected() {
    static const Expected loaded;
    return loaded;
}

class BundledModel : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(expected().error.empty()) << expected().error;
        ASSERT_EQ(cinfer_model_load(kModelDir.c_str(), nullptr, &model_), CINFER_OK)
            << cinfer_last_error();
        info_ = cinfer_model_get_info(model_);
    }
    void TearDown() override { cinfer_model_free(model_); }

    cinfer_model *model_ = nullptr;
    const cinfer_model_info *info_ = nullptr;
};

TEST_F(BundledModel, IsTheSmallDiffLlamaTheFixtureDescribes) {
    EXPECT_STREQ(info_->architecture, "DiffLlamaForCausalLM");
    EXPECT_LT(info_->n_kv_heads, info_->n_heads) << "the bundled model is meant to use GQA";
    for (const Prompt &p : expected().prompts) {
        ASSERT_FALSE(p.input_ids.empty()) << p.text;
        EXPECT_EQ(p.input_ids[0], info_->bos_token_id)
            << "'" << p.text << "': the tokenizer should put <|begin_of_text|> first";
        EXPECT_EQ((int)p.last_logits.size(), info_->vocab_size) << p.text;
        EXPECT_EQ((int)p.greedy_ids.size(), expected().n_new_tokens) << p.text;
    }
    uintmax_t bytes = 0;
    for (const auto &entry : fs::directory_iterator(kModelDir)) bytes += entry.file_size();
    EXPECT_LT(bytes, kMaxFolderBytes) << kModelDir << " is too big to commit";
    EXPECT_TRUE(fs::exists(kModelDir + "/tokenizer.json"));
}

TEST_F(BundledModel, LastPromptLogitsMatchTransformers) {
    for (const Prompt &p : expected().prompts) {
        cinfer_session *session = nullptr;
        ASSERT_EQ(cinfer_session_create(model_, 0, &session), CINFER_OK) << cinfer_last_error();
        std::vector<float> got((size_t)info_->vocab_size, NAN);
        ASSERT_EQ(cinfer_session_forward(session, p.input_ids.data(), (int)p.input_ids.size(),
                                         CINFER_LOGITS_LAST, got.data()),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        ASSERT_EQ(got.size(), p.last_logits.size());
        double worst = 0.0;
        for (size_t i = 0; i < got.size(); i++) {
            double d = std::fabs((double)got[i] - (double)p.last_logits[i]);
            if (!(d <= worst)) worst = d; // NaN propagates as a failure
        }
        std::printf("[cinfer] '%s' (%zu tokens): max |logit - transformers| = %.2e\n",
                    p.text.c_str(), p.input_ids.size(), worst);
        EXPECT_LE(worst, kTolerance) << "'" << p.text << "'";
    }
}

TEST_F(BundledModel, GreedyTokensMatchTransformers) {
    for (const Prompt &p : expected().prompts) {
        cinfer_session *session = nullptr;
        ASSERT_EQ(cinfer_session_create(model_, 0, &session), CINFER_OK) << cinfer_last_error();
        cinfer_generate_params params = {};
        params.max_new_tokens = (int)p.greedy_ids.size();
        params.ignore_eos = 1; // transformers' generate() was told not to stop at eos either
        std::vector<int32_t> got;
        auto collect = [](void *user, int32_t token) {
            static_cast<std::vector<int32_t> *>(user)->push_back(token);
            return 0;
        };
        cinfer_generate_stats stats;
        ASSERT_EQ(cinfer_generate(session, p.input_ids.data(), (int)p.input_ids.size(), &params,
                                  collect, &got, nullptr, &stats),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_free(session);
        std::printf("[cinfer] '%s': %zu greedy tokens, smallest top-2 logit margin %.3f\n",
                    p.text.c_str(), got.size(), p.min_greedy_gap);
        EXPECT_EQ(got, p.greedy_ids) << "greedy continuation of '" << p.text << "'";
    }
}

// The path a user takes: `cinfer run` prints the same ids on stdout.
TEST_F(BundledModel, CliPrintsTransformersGreedyTokens) {
    const Prompt &p = expected().prompts.front();
    std::string tokens;
    for (int32_t id : p.input_ids) tokens += (tokens.empty() ? "" : " ") + std::to_string(id);
    cinfer_test::TempDir tmp;
    const std::string command = std::string("timeout 120 '") + CINFER_CLI + "' run --model '" +
                                kModelDir + "' --tokens '" + tokens + "' --max-new-tokens " +
                                std::to_string(p.greedy_ids.size()) + " --ignore-eos >'" +
                                tmp.file("out") + "' 2>'" + tmp.file("err") + "'";
    ASSERT_EQ(std::system(command.c_str()), 0) << cinfer_test::read_file(tmp.file("err"));
    std::istringstream out(cinfer_test::read_file(tmp.file("out")));
    std::vector<int32_t> got;
    for (int32_t id; out >> id;) got.push_back(id);
    EXPECT_EQ(got, p.greedy_ids) << "cinfer run on '" << p.text << "'";
}

// Text in, text out: cinfer's tokenizer gives transformers' prompt ids, and `cinfer run --prompt`
// streams the text transformers decodes from its greedy ids.
TEST_F(BundledModel, TextPromptStreamsTransformersGreedyText) {
    cinfer_tokenizer *tok = nullptr;
    ASSERT_EQ(cinfer_tokenizer_load(kModelDir.c_str(), &tok), CINFER_OK) << cinfer_last_error();
    for (const Prompt &p : expected().prompts) {
        int32_t *ids = nullptr;
        int n_ids = 0;
        ASSERT_EQ(cinfer_tokenize(tok, p.text.data(), p.text.size(), 1, &ids, &n_ids), CINFER_OK);
        EXPECT_EQ(std::vector<int32_t>(ids, ids + n_ids), p.input_ids) << p.text;
        free(ids);
        char *decoded = nullptr;
        ASSERT_EQ(cinfer_decode(tok, p.greedy_ids.data(), (int)p.greedy_ids.size(), 0, &decoded),
                  CINFER_OK);
        EXPECT_EQ(std::string(decoded), p.greedy_text);
        free(decoded);

        cinfer_test::TempDir tmp;
        const std::string command =
            std::string("timeout 120 '") + CINFER_CLI + "' run --model '" + kModelDir +
            "' --prompt '" + p.text + "' --max-new-tokens " +
            std::to_string(p.greedy_ids.size()) + " --ignore-eos >'" + tmp.file("out") + "' 2>'" +
            tmp.file("err") + "'";
        ASSERT_EQ(std::system(command.c_str()), 0) << cinfer_test::read_file(tmp.file("err"));
        EXPECT_EQ(cinfer_test::read_file(tmp.file("out")), p.greedy_text + "\n") << p.text;
    }
    cinfer_tokenizer_free(tok);
}

} // namespace
