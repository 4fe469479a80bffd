// config.json: both transformers layouts, the defaults transformers applies, every rope type, and
// every malformed or inconsistent config refused with a message that names the field.
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

extern "C" {
#include "../models/architecture.h"
}

namespace {

using cinfer_test::contains_all;

// A config.json as an ordered list of top-level fields, each value written as raw JSON, so that a
// test can start from a valid config and change exactly one thing.
class ConfigJson {
  public:
    ConfigJson(std::initializer_list<std::pair<std::string, std::string>> fields)
        : fields_(fields) {}
    ConfigJson &set(const std::string &key, const std::string &raw_value) {
        for (auto &field : fields_)
            if (field.first == key) {
                field.second = raw_value;
                return *this;
            }
        fields_.emplace_back(key, raw_value);
        return *this;
    }
    ConfigJson &erase(const std::string &key) {
        for (auto it = fields_.begin(); it != fields_.end(); ++it)
            if (it->first == key) {
                fields_.erase(it);
                break;
            }
        return *this;
    }
    std::string str() const {
        std::string json = "{";
        for (size_t i = 0; i < fields_.size(); i++)
            json += (i ? ", \"" : "\"") + fields_[i].first + "\": " + fields_[i].second;
        return json + "}";
    }

  private:
    std::vector<std::pair<std::string, std::string>> fields_;
};

// The fields without a default; everything else is left to transformers' defaults.
ConfigJson minimal_llama() {
    return {{"architectures", "[\"LlamaForCausalLM\"]"},
            {"vocab_size", "128"},
            {"hidden_size", "64"},
            {"intermediate_size", "96"},
            {"num_hidden_layers", "2"},
            {"num_attention_heads", "4"}};
}

ConfigJson minimal_diffllama() {
    return minimal_llama().set("architectures", "[\"DiffLlamaForCausalLM\"]");
}

struct Parsed {
    cinfer_status status;
    ci_config config;
    std::string message;
};

// Parses from a heap block of exactly the JSON's length, with no terminating NUL, so that
// AddressSanitizer catches a parser that reads past the length it was given.
Parsed parse(const std::string &json) {
    std::unique_ptr<char[]> exact(new char[json.size()]);
    std::copy(json.begin(), json.end(), exact.get());
    Parsed p;
    p.status = config_parse("config.json", exact.get(), json.size(), &p.config);
    p.message = p.status == CINFER_OK ? "" : cinfer_last_error();
    return p;
}
Parsed parse(const ConfigJson &json) { return parse(json.str()); }

// Parses a config that must be valid and returns it.
ci_config parse_ok(const ConfigJson &json) {
    Parsed p = parse(json);
    EXPECT_EQ(p.status, CINFER_OK) << p.message << "\n  in " << json.str();
    return p.config;
}

// A refused config: the status, and a message that starts with the file name and names parts.
::testing::AssertionResult rejects(const ConfigJson &json, cinfer_status want,
                                   std::initializer_list<std::string> parts) {
    Parsed p = parse(json);
    if (p.status != want)
        return ::testing::AssertionFailure()
               << "status " << p.status << ", expected " << want << "; message: " << p.message
               << "\n  in " << json.str();
    if (p.message.rfind("config.json: ", 0) != 0)
        return ::testing::AssertionFailure()
               << "message does not start with the file: " << p.message;
    return contains_all(p.message, parts);
}

// ---- layouts and defaults -----------------------------------------------------------------------

TEST(Config, AppliesTransformersDefaultsToAMinimalLlamaConfig) {
    const ci_config c = parse_ok(minimal_llama());
    EXPECT_STREQ(c.architecture, "LlamaForCausalLM");
    EXPECT_EQ(c.vocab_size, 128);
    EXPECT_EQ(c.hidden_size, 64);
    EXPECT_EQ(c.intermediate_size, 96);
    EXPECT_EQ(c.n_layers, 2);
    EXPECT_EQ(c.n_heads, 4);
    EXPECT_EQ(c.n_kv_heads, 4);  // num_key_value_heads = num_attention_heads
    EXPECT_EQ(c.head_dim, 16);   // hidden_size // num_attention_heads
    EXPECT_EQ(c.max_position_embeddings, 2048);
    EXPECT_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_EQ(c.hidden_act, CI_ACT_SILU);
    EXPECT_STREQ(c.hidden_act_name, "silu");
    EXPECT_EQ(c.rope.type, CI_ROPE_DEFAULT);
    EXPECT_EQ(c.rope.theta, 10000.0);
    EXPECT_FALSE(c.attention_bias);
    EXPECT_FALSE(c.mlp_bias);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_STREQ(c.torch_dtype, "");
    EXPECT_EQ(c.bos_token_id, 1);
    ASSERT_EQ(c.n_eos, 1);
    EXPECT_EQ(c.eos_token_ids[0], 2);
}

TEST(Config, DiffLlamaDefaultsToItsOwnRmsNormEpsAndHasNoMlpBias) {
    const ci_config c = parse_ok(minimal_diffllama().set("mlp_bias", "true"));
    EXPECT_STREQ(c.architecture, "DiffLlamaForCausalLM");
    EXPECT_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_FALSE(c.mlp_bias);  // DiffLlamaMLP has no biases whatever the config says
}

TEST(Config, FallsBackToModelTypeWithoutArchitectures) {
    EXPECT_STREQ(
        parse_ok(minimal_llama().erase("architectures").set("model_type", "\"llama\"")).architecture,
        "LlamaForCausalLM");
    EXPECT_STREQ(
        parse_ok(minimal_llama().set("architectures", "[]").set("model_type", "\"diffllama\""))
            .architecture,
        "DiffLlamaForCausalLM");
}

TEST(Config, ReadsExplicitFieldsOverDefaults) {
    const ci_config c = parse_ok(minimal_llama()
                                     .set("num_key_value_heads", "2")
                                     .set("head_dim", "32")
                                     .set("max_position_embeddings", "4096")
                                     .set("rms_norm_eps", "1e-05")
                                     .set("attention_bias", "true")
                                     .set("mlp_bias", "true")
                                     .set("tie_word_embeddings", "true")
                                     .set("torch_dtype", "\"bfloat16\""));
    EXPECT_EQ(c.n_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 32);  // may differ from hidden_size / num_attention_heads
    EXPECT_EQ(c.max_position_embeddings, 4096);
    EXPECT_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_TRUE(c.attention_bias);
    EXPECT_TRUE(c.mlp_bias);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_STREQ(c.torch_dtype, "bfloat16");
    // transformers 5 writes "dtype" instead of "torch_dtype".
    EXPECT_STREQ(parse_ok(minimal_llama().set("dtype", "\"float16\"")).torch_dtype, "float16");
}

TEST(Config, ReadsEosAsListIntegerOrAbsentAndBosAsNull) {
    ci_config c = parse_ok(minimal_llama().set("eos_token_id", "[2, 5, 127]"));
    ASSERT_EQ(c.n_eos, 3);
    EXPECT_EQ(c.eos_token_ids[0], 2);
    EXPECT_EQ(c.eos_token_ids[1], 5);
    EXPECT_EQ(c.eos_token_ids[2], 127);

    c = parse_ok(minimal_llama().set("eos_token_id", "7"));
    ASSERT_EQ(c.n_eos, 1);
    EXPECT_EQ(c.eos_token_ids[0], 7);

    EXPECT_EQ(parse_ok(minimal_llama().set("eos_token_id", "null")).n_eos, 0);

    EXPECT_EQ(parse_ok(minimal_llama().set("bos_token_id", "null")).bos_token_id, -1);
    EXPECT_EQ(parse_ok(minimal_llama().set("bos_token_id", "0")).bos_token_id, 0);
}

TEST(Config, ReadsTransformers4RopeThetaAndRopeScalingWithType) {
    const ci_config c =
        parse_ok(minimal_llama()
                     .set("rope_theta", "500000.0")
                     .set("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_LINEAR);
    EXPECT_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.factor, 2.0);
}

TEST(Config, ReadsTransformers4RopeScalingWithRopeType) {
    const ci_config c =
        parse_ok(minimal_llama()
                     .set("rope_theta", "20000")
                     .set("rope_scaling", "{\"rope_type\": \"dynamic\", \"factor\": 4.0}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_DYNAMIC);
    EXPECT_EQ(c.rope.theta, 20000.0);
    EXPECT_EQ(c.rope.factor, 4.0);
}

TEST(Config, ReadsTransformers5RopeParameters) {
    ci_config c = parse_ok(minimal_llama().set(
        "rope_parameters", "{\"rope_theta\": 1000000.0, \"rope_type\": \"default\"}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_DEFAULT);
    EXPECT_EQ(c.rope.theta, 1000000.0);

    c = parse_ok(minimal_llama().set("rope_parameters",
                                     "{\"rope_theta\": 30000.0, \"rope_type\": \"linear\", "
                                     "\"factor\": 3.0}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_LINEAR);
    EXPECT_EQ(c.rope.theta, 30000.0);
    EXPECT_EQ(c.rope.factor, 3.0);
}

TEST(Config, NullRopeScalingMeansDefaultRope) {
    const ci_config c =
        parse_ok(minimal_llama().set("rope_theta", "40000").set("rope_scaling", "null"));
    EXPECT_EQ(c.rope.type, CI_ROPE_DEFAULT);
    EXPECT_EQ(c.rope.theta, 40000.0);
}

TEST(Config, RopeScalingTakesPrecedenceOverRopeParameters) {
    // As in transformers 5, which turns a legacy rope_scaling into rope_parameters.
    const ci_config c =
        parse_ok(minimal_llama()
                     .set("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2.0}")
                     .set("rope_parameters", "{\"rope_type\": \"dynamic\", \"factor\": 8.0}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_LINEAR);
    EXPECT_EQ(c.rope.factor, 2.0);
}

// ---- rope types ---------------------------------------------------------------------------------

TEST(Config, ReadsLlama3RopeFields) {
    const ci_config c = parse_ok(minimal_llama().set(
        "rope_parameters",
        "{\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0, "
        "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 8192}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_LLAMA3);
    EXPECT_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.factor, 8.0);
    EXPECT_EQ(c.rope.low_freq_factor, 1.0);
    EXPECT_EQ(c.rope.high_freq_factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
}

TEST(Config, ReadsYarnRopeFieldsWithTransformersDefaults) {
    const ci_config c = parse_ok(
        minimal_llama()
            .set("max_position_embeddings", "64")
            .set(
                "rope_scaling",
                "{\"type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 16}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_YARN);
    EXPECT_EQ(c.rope.factor, 4.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 16);
    EXPECT_EQ(c.rope.beta_fast, 32.0);
    EXPECT_EQ(c.rope.beta_slow, 1.0);
    EXPECT_TRUE(c.rope.truncate);
    EXPECT_LT(c.rope.attention_factor, 0.0);  // derived from factor and mscale
    EXPECT_EQ(c.rope.mscale, 0.0);
    EXPECT_EQ(c.rope.mscale_all_dim, 0.0);
}

TEST(Config, ReadsYarnRopeFieldsGivenExplicitly) {
    const ci_config c = parse_ok(minimal_llama().set(
        "rope_parameters",
        "{\"rope_type\": \"yarn\", \"factor\": 2.0, \"original_max_position_embeddings\": 1024, "
        "\"beta_fast\": 16.0, \"beta_slow\": 2.0, \"truncate\": false, "
        "\"attention_factor\": 0.5, \"mscale\": 0.7, \"mscale_all_dim\": 0.9}"));
    EXPECT_EQ(c.rope.type, CI_ROPE_YARN);
    EXPECT_EQ(c.rope.factor, 2.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 1024);
    EXPECT_EQ(c.rope.beta_fast, 16.0);
    EXPECT_EQ(c.rope.beta_slow, 2.0);
    EXPECT_FALSE(c.rope.truncate);
    EXPECT_EQ(c.rope.attention_factor, 0.5);
    EXPECT_EQ(c.rope.mscale, 0.7);
    EXPECT_EQ(c.rope.mscale_all_dim, 0.9);
}

TEST(Config, YarnTakesOriginalMaxPositionsFromTheTopLevel) {
    const ci_config c = parse_ok(minimal_llama()
                                     .set("max_position_embeddings", "128")
                                     .set("original_max_position_embeddings", "32")
                                     .set("rope_scaling", "{\"type\": \"yarn\", \"factor\": 4.0}"));
    EXPECT_EQ(c.rope.original_max_position_embeddings, 32);
    EXPECT_EQ(c.rope.factor, 4.0);
}

TEST(Config, NamesEveryRopeType) {
    EXPECT_STREQ(ci_rope_type_name(CI_ROPE_DEFAULT), "default");
    EXPECT_STREQ(ci_rope_type_name(CI_ROPE_LINEAR), "linear");
    EXPECT_STREQ(ci_rope_type_name(CI_ROPE_DYNAMIC), "dynamic");
    EXPECT_STREQ(ci_rope_type_name(CI_ROPE_LLAMA3), "llama3");
    EXPECT_STREQ(ci_rope_type_name(CI_ROPE_YARN), "yarn");
}

TEST(Config, ReadsEveryHiddenActName) {
    const std::pair<const char *, ci_activation> names[] = {{"silu", CI_ACT_SILU},
                                                            {"swish", CI_ACT_SILU},
                                                            {"gelu", CI_ACT_GELU},
                                                            {"gelu_new", CI_ACT_GELU_TANH},
                                                            {"gelu_pytorch_tanh", CI_ACT_GELU_TANH},
                                                            {"gelu_fast", CI_ACT_GELU_TANH},
                                                            {"relu", CI_ACT_RELU}};
    for (const auto &[name, act] : names) {
        const ci_config c =
            parse_ok(minimal_llama().set("hidden_act", std::string("\"") + name + "\""));
        EXPECT_EQ(c.hidden_act, act) << name;
        EXPECT_STREQ(c.hidden_act_name, name);
    }
}

// ---- what the model is --------------------------------------------------------------------------

TEST(Config, RejectsUnknownArchitecture) {
    EXPECT_TRUE(rejects(
        minimal_llama().set("architectures", "[\"MistralForCausalLM\"]"), CINFER_ERR_UNSUPPORTED,
        {"architectures[0]", "'MistralForCausalLM'", "LlamaForCausalLM", "DiffLlamaForCausalLM"}));
    EXPECT_TRUE(rejects(minimal_llama().erase("architectures").set("model_type", "\"mistral\""),
                        CINFER_ERR_UNSUPPORTED, {"model_type", "'mistral'", "llama"}));
}

TEST(Config, RejectsConfigThatDoesNotSayWhatTheModelIs) {
    EXPECT_TRUE(rejects(minimal_llama().erase("architectures"), CINFER_ERR_CONFIG,
                        {"'architectures'", "'model_type'"}));
    EXPECT_TRUE(rejects(minimal_llama().set("architectures", "[7]"), CINFER_ERR_CONFIG,
                        {"'architectures'", "strings"}));
}

// ---- sizes --------------------------------------------------------------------------------------

const char *const kRequiredFields[] = {"vocab_size", "hidden_size", "intermediate_size",
                                       "num_hidden_layers", "num_attention_heads"};

TEST(Config, RejectsMissingRequiredField) {
    for (const char *field : kRequiredFields)
        EXPECT_TRUE(rejects(minimal_llama().erase(field), CINFER_ERR_CONFIG,
                            {std::string("required field '") + field + "' is missing"}));
    // null is as good as absent
    EXPECT_TRUE(rejects(minimal_llama().set("vocab_size", "null"), CINFER_ERR_CONFIG,
                        {"required field 'vocab_size' is missing"}));
}

TEST(Config, RejectsZeroOrNegativeSizes) {
    std::vector<std::string> fields(std::begin(kRequiredFields), std::end(kRequiredFields));
    for (const char *optional : {"num_key_value_heads", "head_dim", "max_position_embeddings"})
        fields.push_back(optional);
    for (const auto &field : fields)
        for (const char *value : {"0", "-4"})
            EXPECT_TRUE(
                rejects(minimal_llama().set(field, value), CINFER_ERR_CONFIG,
                        {"field '" + field + "'", "integer >= 1", std::string("got ") + value}));
}

TEST(Config, RejectsWrongTypesForIntegers) {
    for (const char *value : {"\"64\"", "64.5", "true", "[64]", "{}", "1e10"})
        EXPECT_TRUE(rejects(minimal_llama().set("hidden_size", value), CINFER_ERR_CONFIG,
                            {"field 'hidden_size' must be an integer", "got"}))
            << value;
}

TEST(Config, RejectsWrongTypesForFloatsAndBooleans) {
    EXPECT_TRUE(rejects(minimal_llama().set("rms_norm_eps", "\"1e-6\""), CINFER_ERR_CONFIG,
                        {"field 'rms_norm_eps' must be a finite number"}));
    EXPECT_TRUE(rejects(minimal_llama().set("rope_theta", "[10000]"), CINFER_ERR_CONFIG,
                        {"field 'rope_theta' must be a finite number"}));
    EXPECT_TRUE(rejects(minimal_llama().set("tie_word_embeddings", "1"), CINFER_ERR_CONFIG,
                        {"field 'tie_word_embeddings' must be true or false"}));
    EXPECT_TRUE(rejects(minimal_llama().set("attention_bias", "\"false\""), CINFER_ERR_CONFIG,
                        {"field 'attention_bias' must be true or false"}));
}

TEST(Config, RejectsNonPositiveRmsNormEps) {
    for (const char *value : {"0", "-1e-6"})
        EXPECT_TRUE(rejects(minimal_llama().set("rms_norm_eps", value), CINFER_ERR_CONFIG,
                            {"rms_norm_eps must be positive"}));
}

// ---- consistency --------------------------------------------------------------------------------

TEST(Config, RejectsKvHeadsThatDoNotDivideHeads) {
    EXPECT_TRUE(rejects(minimal_llama().set("num_key_value_heads", "3"), CINFER_ERR_CONFIG,
                        {"num_key_value_heads = 3", "does not divide", "num_attention_heads = 4"}));
    EXPECT_TRUE(rejects(minimal_llama().set("num_key_value_heads", "8"), CINFER_ERR_CONFIG,
                        {"num_key_value_heads = 8", "num_attention_heads = 4"}));
}

TEST(Config, RejectsOddHeadCountForDiffLlama) {
    const ConfigJson three_heads = minimal_diffllama()
                                       .set("hidden_size", "48")
                                       .set("num_attention_heads", "3")
                                       .set("num_key_value_heads", "1");
    EXPECT_TRUE(rejects(three_heads, CINFER_ERR_CONFIG,
                        {"DiffLlamaForCausalLM", "even num_attention_heads", "got 3"}));
    // The same shape is a valid Llama: only the differential pairs need an even count.
    ConfigJson as_llama = three_heads;
    EXPECT_EQ(parse_ok(as_llama.set("architectures", "[\"LlamaForCausalLM\"]")).n_heads, 3);
}

TEST(Config, RejectsOddHeadDim) {
    EXPECT_TRUE(rejects(minimal_llama().set("head_dim", "15"), CINFER_ERR_CONFIG,
                        {"head_dim = 15", "must be even"}));
    // derived: 60 / 4 = 15
    EXPECT_TRUE(rejects(minimal_llama().set("hidden_size", "60"), CINFER_ERR_CONFIG,
                        {"head_dim = 15", "must be even"}));
}

TEST(Config, RejectsHiddenSizeTooSmallForTheHeads) {
    EXPECT_TRUE(rejects(minimal_llama().set("hidden_size", "2"), CINFER_ERR_CONFIG,
                        {"hidden_size = 2", "num_attention_heads = 4", "head_dim"}));
}

TEST(Config, RejectsHeadsTimesHeadDimTooLargeForAnInt) {
    EXPECT_TRUE(
        rejects(minimal_llama().set("num_attention_heads", "65536").set("head_dim", "65536"),
                CINFER_ERR_CONFIG, {"num_attention_heads * head_dim", "too large"}));
}

// ---- rope ---------------------------------------------------------------------------------------

TEST(Config, RejectsUnsupportedRopeType) {
    EXPECT_TRUE(rejects(
        minimal_llama().set("rope_scaling", "{\"rope_type\": \"longrope\", \"factor\": 2.0}"),
        CINFER_ERR_UNSUPPORTED, {"rope_scaling.rope_type", "'longrope'", "not supported", "yarn"}));
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters", "{\"rope_type\": \"su\"}"),
                        CINFER_ERR_UNSUPPORTED, {"rope_parameters.rope_type", "'su'"}));
    EXPECT_TRUE(rejects(minimal_llama().set("rope_scaling", "{\"type\": 3}"), CINFER_ERR_CONFIG,
                        {"rope_scaling.rope_type must be a string"}));
}

TEST(Config, RejectsRopeScalingThatIsNotAnObject) {
    EXPECT_TRUE(rejects(minimal_llama().set("rope_scaling", "\"linear\""), CINFER_ERR_CONFIG,
                        {"'rope_scaling' must be an object or null"}));
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters", "[1]"), CINFER_ERR_CONFIG,
                        {"'rope_parameters' must be an object or null"}));
}

TEST(Config, RejectsPartialRotaryFactorOtherThanOne) {
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters",
                                            "{\"rope_type\": \"default\", "
                                            "\"partial_rotary_factor\": 0.5}"),
                        CINFER_ERR_UNSUPPORTED,
                        {"rope_parameters.partial_rotary_factor = 0.5", "expected 1.0"}));
    // transformers 4.x reads it from the top level, with or without rope_scaling.
    EXPECT_TRUE(rejects(minimal_llama().set("partial_rotary_factor", "0.5"), CINFER_ERR_UNSUPPORTED,
                        {"partial_rotary_factor = 0.5", "expected 1.0"}));
    EXPECT_TRUE(rejects(minimal_llama()
                            .set("partial_rotary_factor", "0.25")
                            .set("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}"),
                        CINFER_ERR_UNSUPPORTED, {"partial_rotary_factor = 0.25"}));
    EXPECT_EQ(parse_ok(minimal_llama().set("partial_rotary_factor", "1.0")).rope.type,
              CI_ROPE_DEFAULT);
}

TEST(Config, RejectsRopeScalingWithoutItsRequiredFactor) {
    for (const char *type : {"linear", "dynamic", "llama3"})
        EXPECT_TRUE(rejects(
            minimal_llama().set("rope_scaling", std::string("{\"rope_type\": \"") + type + "\"}"),
            CINFER_ERR_CONFIG, {"required field 'rope_scaling.factor' is missing"}))
            << type;
    EXPECT_TRUE(rejects(minimal_llama().set("rope_scaling",
                                            "{\"rope_type\": \"llama3\", \"factor\": 8.0, "
                                            "\"high_freq_factor\": 4.0}"),
                        CINFER_ERR_CONFIG, {"required field 'rope_scaling.low_freq_factor' is missing"}));
}

TEST(Config, RejectsNonPositiveRopeFactor) {
    EXPECT_TRUE(
        rejects(minimal_llama().set("rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 0}"),
                CINFER_ERR_CONFIG, {"rope_scaling.factor must be positive"}));
}

TEST(Config, RejectsLlama3HighFreqFactorNotAboveLowFreqFactor) {
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters",
                                            "{\"rope_type\": \"llama3\", \"factor\": 8.0, "
                                            "\"low_freq_factor\": 4.0, \"high_freq_factor\": 4.0}"),
                        CINFER_ERR_CONFIG,
                        {"rope_parameters.high_freq_factor (4)", "low_freq_factor (4)"}));
}

TEST(Config, RejectsRopeThetaNotAboveOne) {
    EXPECT_TRUE(rejects(minimal_llama().set("rope_theta", "1.0"), CINFER_ERR_CONFIG,
                        {"rope_theta must be greater than 1"}));
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters", "{\"rope_theta\": -5}"),
                        CINFER_ERR_CONFIG, {"rope_theta must be greater than 1"}));
}

// ---- activation and special tokens --------------------------------------------------------------

TEST(Config, RejectsUnknownHiddenAct) {
    EXPECT_TRUE(rejects(minimal_llama().set("hidden_act", "\"swiglu\""), CINFER_ERR_UNSUPPORTED,
                        {"hidden_act = 'swiglu'", "not supported", "silu"}));
    EXPECT_TRUE(rejects(minimal_llama().set("hidden_act", "1"), CINFER_ERR_CONFIG,
                        {"field 'hidden_act' must be a string"}));
}

TEST(Config, RejectsEosIdOutsideTheVocabulary) {
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", "128"), CINFER_ERR_CONFIG,
                        {"eos_token_id 128", "outside the vocabulary", "vocab_size = 128"}));
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", "[2, 500]"), CINFER_ERR_CONFIG,
                        {"eos_token_id 500", "vocab_size = 128"}));
}

TEST(Config, RejectsMalformedEosIds) {
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", "-1"), CINFER_ERR_CONFIG,
                        {"field 'eos_token_id' must be an integer >= 0"}));
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", "\"2\""), CINFER_ERR_CONFIG,
                        {"field 'eos_token_id'"}));
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", "[2, 2.5]"), CINFER_ERR_CONFIG,
                        {"field 'eos_token_id' must hold non-negative integers"}));
    std::string many = "[0";
    for (int i = 1; i <= CI_MAX_EOS_TOKENS; i++) many += "," + std::to_string(i);
    EXPECT_TRUE(rejects(minimal_llama().set("eos_token_id", many + "]"), CINFER_ERR_CONFIG,
                        {"'eos_token_id' lists more than " + std::to_string(CI_MAX_EOS_TOKENS)}));
}

TEST(Config, RejectsNegativeBosId) {
    EXPECT_TRUE(rejects(minimal_llama().set("bos_token_id", "-3"), CINFER_ERR_CONFIG,
                        {"field 'bos_token_id'", "got -3"}));
}

// ---- the file as JSON ---------------------------------------------------------------------------

TEST(Config, RejectsInvalidJson) {
    for (const std::string &text :
         {std::string("{\"vocab_size\": 128,"), std::string(""), std::string("{'vocab_size': 128}"),
          std::string("{} {}"), minimal_llama().str() + " trailing"}) {
        Parsed p = parse(text);
        EXPECT_EQ(p.status, CINFER_ERR_FORMAT) << text;
        EXPECT_TRUE(contains_all(p.message, {"config.json: ", "not valid JSON", "byte"})) << text;
    }
    // Whitespace after the object is fine.
    EXPECT_EQ(parse(minimal_llama().str() + " \n\t\r\n").status, CINFER_OK);
}

TEST(Config, RejectsJsonThatIsNotAnObject) {
    for (const char *text : {"[1, 2]", "\"LlamaForCausalLM\"", "42", "null"}) {
        Parsed p = parse(std::string(text));
        EXPECT_EQ(p.status, CINFER_ERR_FORMAT) << text;
        EXPECT_TRUE(contains_all(p.message, {"config.json: ", "must be a JSON object"})) << text;
    }
}

// ---- the fixtures, through the file entry point -------------------------------------------------

TEST(Config, LoadsEveryFixtureConfig) {
    const auto names = cinfer_test::fixture_names();
    ASSERT_FALSE(names.empty());
    for (const auto &name : names) {
        ci_config c;
        const std::string path = cinfer_test::fixture_dir(name) + "/config.json";
        EXPECT_EQ(config_load(path.c_str(), &c), CINFER_OK) << cinfer_last_error();
    }
}

TEST(Config, LoadNamesThePathOfAMissingFile) {
    cinfer_test::TempDir dir;
    ci_config c;
    const std::string path = dir.file("config.json");
    EXPECT_EQ(config_load(path.c_str(), &c), CINFER_ERR_IO);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {path, "cannot open"}));
}

}  // namespace

TEST(Config, NamesNestedRopeFieldsWithTheirObject) {
    EXPECT_TRUE(rejects(minimal_llama().set("rope_parameters",
                                            "{\"rope_type\": \"linear\", \"factor\": \"2\"}"),
                        CINFER_ERR_CONFIG, {"'rope_parameters.factor'", "finite number"}));
}

TEST(Config, RejectsDynamicRopeOnTwoDimensionalHeads) {
    EXPECT_TRUE(rejects(minimal_llama()
                            .set("head_dim", "2")
                            .set("rope_scaling", "{\"rope_type\": \"dynamic\", \"factor\": 2.0}"),
                        CINFER_ERR_CONFIG, {"head_dim >= 4"}));
}
