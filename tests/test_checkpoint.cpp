// Checkpoint folders through cinfer_model_load: valid fixtures of each kind load, and a copy of a
// fixture broken in exactly one way is refused with a message naming the file, the tensor and
// the config field involved.
#include <cjson/cJSON.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "../loaders/safetensors.h"
}

namespace {

namespace fs = std::filesystem;
using cinfer_test::contains_all;
using cinfer_test::fixture_dir;
using cinfer_test::TempDir;

// ---- building broken checkpoints ----------------------------------------------------------------

// A copy of a fixture folder (without the reference outputs) inside a TempDir; tests break it.
struct FixtureCopy {
    TempDir temp;
    std::string dir;
    explicit FixtureCopy(const std::string &fixture) : dir(temp.file(fixture)) {
        fs::create_directory(dir);
        for (const auto &entry : fs::directory_iterator(fixture_dir(fixture)))
            if (entry.path().filename() != "expected.safetensors")
                fs::copy_file(entry.path(), fs::path(dir) / entry.path().filename());
    }
    std::string file(const std::string &name) const { return dir + "/" + name; }
};

// One tensor as a safetensors file stores it.
struct StoredTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    std::string bytes;
};

std::vector<StoredTensor> read_tensors(const std::string &path) {
    st_file *file = nullptr;
    EXPECT_EQ(st_open(path.c_str(), &file), CINFER_OK) << cinfer_last_error();
    std::vector<StoredTensor> tensors;
    for (int i = 0; file && i < file->n_tensors; i++) {
        const st_tensor &t = file->tensors[i];
        tensors.push_back({t.name, ci_dtype_name(t.dtype),
                           std::vector<int64_t>(t.shape, t.shape + t.n_dims),
                           std::string(static_cast<const char *>(t.data), t.end - t.begin)});
    }
    st_close(file);
    return tensors;
}

// Loads a safetensors file, lets edit change its tensors, and writes it back in place.
void rewrite_tensors(const std::string &path,
                     const std::function<void(std::vector<StoredTensor> &)> &edit) {
    std::vector<StoredTensor> tensors = read_tensors(path);
    edit(tensors);
    cinfer_test::SafetensorsBuilder builder;
    for (const auto &t : tensors) builder.add(t.name, t.dtype, t.shape, t.bytes);
    builder.write(path);
}

void drop_tensor(const std::string &path, const std::string &name) {
    rewrite_tensors(path, [&](std::vector<StoredTensor> &tensors) {
        const size_t before = tensors.size();
        tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                     [&](const StoredTensor &t) { return t.name == name; }),
                      tensors.end());
        ASSERT_EQ(tensors.size(), before - 1) << name << " is not in " << path;
    });
}

// Sets one field of a JSON file (config.json, the index), reached through keys; raw_value is JSON
// text, or empty to remove the field.
void edit_json(const std::string &path, const std::vector<std::string> &keys,
               const std::string &raw_value) {
    cJSON *root = cJSON_Parse(cinfer_test::read_file(path).c_str());
    ASSERT_NE(root, nullptr) << path;
    cJSON *parent = root;
    for (size_t i = 0; i + 1 < keys.size(); i++)
        parent = cJSON_GetObjectItemCaseSensitive(parent, keys[i].c_str());
    ASSERT_TRUE(cJSON_IsObject(parent)) << path;
    cJSON_DeleteItemFromObjectCaseSensitive(parent, keys.back().c_str());
    if (!raw_value.empty()) {
        cJSON *value = cJSON_Parse(raw_value.c_str());
        ASSERT_NE(value, nullptr) << raw_value;
        cJSON_AddItemToObject(parent, keys.back().c_str(), value);
    }
    char *text = cJSON_Print(root);
    cinfer_test::write_file(path, text);
    cJSON_free(text);
    cJSON_Delete(root);
}

// A value from a fixture's config.json, read independently of the loader under test.
int config_int(const std::string &dir, const char *field) {
    cJSON *root = cJSON_Parse(cinfer_test::read_file(dir + "/config.json").c_str());
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, field);
    const int value = cJSON_IsNumber(item) ? item->valueint : -1;
    cJSON_Delete(root);
    return value;
}

// ---- loading ------------------------------------------------------------------------------------

// Any non-NULL value: cinfer_model_load must overwrite *out, also on failure.
cinfer_model *const kNotYetSet = reinterpret_cast<cinfer_model *>(alignof(void *));

// A refused checkpoint: the status, *out NULL, and a message that contains every one of parts.
::testing::AssertionResult load_fails(const std::string &dir, cinfer_status want,
                                      std::initializer_list<std::string> parts) {
    cinfer_model *model = kNotYetSet;
    const cinfer_status status = cinfer_model_load(dir.c_str(), nullptr, &model);
    const std::string message = cinfer_last_error();
    if (status == CINFER_OK) cinfer_model_free(model);
    if (status != want)
        return ::testing::AssertionFailure()
               << "status " << status << ", expected " << want << "; message: " << message;
    if (model != nullptr)
        return ::testing::AssertionFailure() << "the load failed but left *out set";
    return contains_all(message, parts);
}

// The data bytes of a safetensors file, from its length field alone: the bytes after the header.
uint64_t data_bytes_of(const std::string &path) {
    const std::string bytes = cinfer_test::read_file(path);
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--) header = (header << 8) | (uint8_t)bytes[i];
    return bytes.size() - 8 - header;
}

// Loads a fixture that must load, checks what the model reports against config.json and the files
// themselves, and runs one token through it.
void expect_loads(const std::string &dir, const std::vector<std::string> &weight_files,
                  int bytes_per_element) {
    cinfer_model *model = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &model), CINFER_OK) << cinfer_last_error();
    const cinfer_model_info *info = cinfer_model_get_info(model);
    EXPECT_EQ(info->vocab_size, config_int(dir, "vocab_size"));
    EXPECT_EQ(info->hidden_size, config_int(dir, "hidden_size"));
    EXPECT_EQ(info->intermediate_size, config_int(dir, "intermediate_size"));
    EXPECT_EQ(info->n_layers, config_int(dir, "num_hidden_layers"));
    EXPECT_EQ(info->n_heads, config_int(dir, "num_attention_heads"));
    EXPECT_EQ(info->n_kv_heads, config_int(dir, "num_key_value_heads"));
    EXPECT_EQ(info->head_dim, config_int(dir, "head_dim"));
    EXPECT_EQ(info->max_position_embeddings, config_int(dir, "max_position_embeddings"));
    int64_t data_bytes = 0;
    for (const auto &file : weight_files) data_bytes += (int64_t)data_bytes_of(dir + "/" + file);
    EXPECT_EQ(info->weight_bytes, data_bytes);
    EXPECT_EQ(info->n_params, data_bytes / bytes_per_element);

    cinfer_session *session = nullptr;
    ASSERT_EQ(cinfer_session_create(model, 8, &session), CINFER_OK) << cinfer_last_error();
    const int32_t token = 3;
    std::vector<float> logits(info->vocab_size);
    ASSERT_EQ(cinfer_session_forward(session, &token, 1, CINFER_LOGITS_LAST, logits.data()),
              CINFER_OK)
        << cinfer_last_error();
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
    cinfer_session_free(session);
    cinfer_model_free(model);
}

TEST(Checkpoint, LoadsShardedBf16Checkpoint) {
    const std::string dir = fixture_dir("llama_bf16_sharded");
    cJSON *index =
        cJSON_Parse(cinfer_test::read_file(dir + "/model.safetensors.index.json").c_str());
    std::set<std::string> shards;
    for (const cJSON *e = cJSON_GetObjectItem(index, "weight_map")->child; e; e = e->next)
        shards.insert(e->valuestring);
    const double total_size =
        cJSON_GetObjectItem(cJSON_GetObjectItem(index, "metadata"), "total_size")->valuedouble;
    cJSON_Delete(index);
    ASSERT_GT(shards.size(), 1u);
    expect_loads(dir, {shards.begin(), shards.end()}, 2);

    cinfer_model *model = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &model), CINFER_OK);
    EXPECT_EQ(cinfer_model_get_info(model)->weight_bytes, (int64_t)total_size);
    cinfer_model_free(model);
}

TEST(Checkpoint, LoadsSingleFileFp16Checkpoint) {
    expect_loads(fixture_dir("diffllama_fp16"), {"model.safetensors"}, 2);
}

TEST(Checkpoint, LoadsSingleFileF32Checkpoints) {
    expect_loads(fixture_dir("llama_mha"), {"model.safetensors"}, 4);
    expect_loads(fixture_dir("diffllama_mha"), {"model.safetensors"}, 4);
}

TEST(Checkpoint, LoadsWithoutLmHeadWhenEmbeddingsAreTied) {
    FixtureCopy ck("llama_mha");
    drop_tensor(ck.file("model.safetensors"), "lm_head.weight");
    edit_json(ck.file("config.json"), {"tie_word_embeddings"}, "true");
    cinfer_model *model = nullptr;
    EXPECT_EQ(cinfer_model_load(ck.dir.c_str(), nullptr, &model), CINFER_OK) << cinfer_last_error();
    cinfer_model_free(model);
}

// ---- the folder ---------------------------------------------------------------------------------

TEST(Checkpoint, RejectsNonexistentFolder) {
    TempDir temp;
    const std::string dir = temp.file("no-such-model");
    EXPECT_TRUE(load_fails(dir, CINFER_ERR_IO, {dir, "no such directory"}));
}

TEST(Checkpoint, RejectsFileGivenAsFolder) {
    const std::string file = fixture_dir("llama_mha") + "/config.json";
    EXPECT_TRUE(load_fails(file, CINFER_ERR_IO, {file, "not a checkpoint folder"}));
}

TEST(Checkpoint, RejectsFolderWithoutConfig) {
    FixtureCopy ck("llama_mha");
    fs::remove(ck.file("config.json"));
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO, {ck.file("config.json"), "cannot open"}));
}

TEST(Checkpoint, RejectsFolderWithoutWeights) {
    FixtureCopy ck("llama_mha");
    fs::remove(ck.file("model.safetensors"));
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO,
                           {ck.dir, "no model.safetensors or model.safetensors.index.json"}));
}

TEST(Checkpoint, HintsAtConversionForPytorchBinCheckpoint) {
    FixtureCopy ck("llama_mha");
    fs::remove(ck.file("model.safetensors"));
    cinfer_test::write_file(ck.file("pytorch_model.bin"), "PK");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO,
                           {"no model.safetensors", "pytorch_model.bin is not read",
                            "convert the checkpoint to safetensors"}));
}

TEST(Checkpoint, RejectsUnknownArchitecture) {
    FixtureCopy ck("llama_mha");
    edit_json(ck.file("config.json"), {"architectures"}, "[\"MistralForCausalLM\"]");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_UNSUPPORTED,
                           {ck.file("config.json"), "architectures[0]", "MistralForCausalLM"}));
}

TEST(Checkpoint, RejectsInconsistentConfig) {
    FixtureCopy ck("diffllama_mha");
    edit_json(ck.file("config.json"), {"num_attention_heads"}, "3");
    edit_json(ck.file("config.json"), {"num_key_value_heads"}, "1");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_CONFIG,
                           {ck.file("config.json"), "even num_attention_heads"}));
}

// ---- shards and the index -----------------------------------------------------------------------

const char *const kShard = "model-00003-of-00005.safetensors";

TEST(Checkpoint, RejectsMissingShard) {
    FixtureCopy ck("llama_bf16_sharded");
    fs::remove(ck.file(kShard));
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO,
                           {"model.safetensors.index.json", ck.file(kShard), "No such file"}));
}

TEST(Checkpoint, RejectsShardThatIsADirectory) {
    // Tests may run as root, for whom chmod 000 blocks nothing: a directory cannot be read as a
    // file by anyone.
    FixtureCopy ck("llama_bf16_sharded");
    fs::remove(ck.file(kShard));
    fs::create_directory(ck.file(kShard));
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO, {ck.file(kShard), "not a regular file"}));
}

TEST(Checkpoint, RejectsShardThatIsADanglingSymlink) {
    FixtureCopy ck("llama_bf16_sharded");
    fs::remove(ck.file(kShard));
    fs::create_symlink(ck.file("gone.safetensors"), ck.file(kShard));
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO, {ck.file(kShard), "cannot open"}));
}

TEST(Checkpoint, RejectsSingleFileThatIsADirectory) {
    FixtureCopy ck("llama_mha");
    fs::remove(ck.file("model.safetensors"));
    fs::create_directory(ck.file("model.safetensors"));
    EXPECT_TRUE(
        load_fails(ck.dir, CINFER_ERR_IO, {ck.file("model.safetensors"), "not a regular file"}));
}

TEST(Checkpoint, RejectsFifosWithoutWaitingForAWriter) {
    for (const char *name : {"config.json", "model.safetensors"}) {
        FixtureCopy ck("llama_mha");
        fs::remove(ck.file(name));
        ASSERT_EQ(mkfifo(ck.file(name).c_str(), 0600), 0);
        alarm(10); // waiting for a writer would hang: make that a crash, not a stuck run
        EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_IO, {ck.file(name), "not a regular file"}));
        alarm(0);
    }
}

TEST(Checkpoint, RejectsCorruptShard) {
    FixtureCopy ck("llama_bf16_sharded");
    std::string bytes = cinfer_test::read_file(ck.file(kShard));
    bytes.resize(bytes.size() - 100);
    cinfer_test::write_file(ck.file(kShard), bytes);
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_FORMAT,
                           {ck.file(kShard), "past the data buffer", "truncated"}));
}

TEST(Checkpoint, RejectsIndexMappingTensorToShardWithoutIt) {
    FixtureCopy ck("llama_bf16_sharded");
    const std::string index = ck.file("model.safetensors.index.json");
    edit_json(index, {"weight_map", "model.norm.weight"}, "\"model-00001-of-00005.safetensors\"");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {index, "tensor 'model.norm.weight'",
                            "mapped to model-00001-of-00005.safetensors", "does not contain it"}));
}

TEST(Checkpoint, RejectsShardNamesOutsideTheFolder) {
    for (const char *shard : {"../model-00001-of-00005.safetensors", "/etc/passwd", ""}) {
        FixtureCopy ck("llama_bf16_sharded");
        const std::string index = ck.file("model.safetensors.index.json");
        edit_json(index, {"weight_map", "lm_head.weight"}, std::string("\"") + shard + "\"");
        EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_FORMAT,
                               {index, "weight_map['lm_head.weight']",
                                "must be the name of a file in the checkpoint folder"}))
            << shard;
    }
}

TEST(Checkpoint, RejectsMalformedIndex) {
    FixtureCopy ck("llama_bf16_sharded");
    const std::string index = ck.file("model.safetensors.index.json");
    cinfer_test::write_file(index, "{\"weight_map\": {\"a\": ");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_FORMAT, {index, "not valid JSON"}));
    cinfer_test::write_file(index, "{\"metadata\": {}, \"weight_map\": {}}");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_FORMAT, {index, "'weight_map'", "non-empty object"}));
    cinfer_test::write_file(index, "{\"weight_map\": {\"lm_head.weight\": 5}}");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_FORMAT, {index, "weight_map['lm_head.weight']"}));
}

TEST(Checkpoint, RejectsTensorStoredInTwoShards) {
    FixtureCopy ck("llama_bf16_sharded");
    // model.norm.weight lives in shard 4; put a copy into shard 5 as well.
    const StoredTensor norm = [&] {
        for (const auto &t : read_tensors(ck.file("model-00004-of-00005.safetensors")))
            if (t.name == "model.norm.weight") return t;
        return StoredTensor{};
    }();
    ASSERT_FALSE(norm.name.empty());
    rewrite_tensors(ck.file("model-00005-of-00005.safetensors"),
                    [&](std::vector<StoredTensor> &tensors) { tensors.push_back(norm); });
    EXPECT_TRUE(
        load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                   {"tensor 'model.norm.weight' is in both", "model-00004-of-00005.safetensors",
                    "model-00005-of-00005.safetensors"}));
}

// ---- tensors against the config -----------------------------------------------------------------

TEST(Checkpoint, RejectsMissingLayerTensor) {
    FixtureCopy ck("llama_mha");
    drop_tensor(ck.file("model.safetensors"), "model.layers.1.mlp.up_proj.weight");
    EXPECT_TRUE(load_fails(
        ck.dir, CINFER_ERR_WEIGHTS,
        {ck.dir, "tensor 'model.layers.1.mlp.up_proj.weight' is missing", "model.safetensors"}));
}

TEST(Checkpoint, RejectsMissingTensorOfShardedCheckpoint) {
    FixtureCopy ck("llama_bf16_sharded");
    const std::string index = ck.file("model.safetensors.index.json");
    drop_tensor(ck.file("model-00004-of-00005.safetensors"), "model.norm.weight");
    edit_json(index, {"weight_map", "model.norm.weight"}, "");
    EXPECT_TRUE(load_fails(
        ck.dir, CINFER_ERR_WEIGHTS,
        {"tensor 'model.norm.weight' is missing", "model.safetensors.index.json (5 shards)"}));
}

TEST(Checkpoint, RejectsMissingDiffLlamaLambda) {
    FixtureCopy ck("diffllama_mha");
    drop_tensor(ck.file("model.safetensors"), "model.layers.0.self_attn.lambda_k2");
    EXPECT_TRUE(load_fails(
        ck.dir, CINFER_ERR_WEIGHTS,
        {"tensor 'model.layers.0.self_attn.lambda_k2' is missing", "DiffLlamaForCausalLM"}));
}

TEST(Checkpoint, RejectsMissingLmHeadWhenEmbeddingsAreNotTied) {
    FixtureCopy ck("llama_mha");
    drop_tensor(ck.file("model.safetensors"), "lm_head.weight");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {"tensor 'lm_head.weight' is missing", "model.safetensors",
                            "config.json", "tie_word_embeddings = false"}));
}

TEST(Checkpoint, RejectsShapeNotMatchingHiddenSize) {
    FixtureCopy ck("llama_mha");
    edit_json(ck.file("config.json"), {"hidden_size"}, "96");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {"model.safetensors", "tensor 'model.embed_tokens.weight'",
                            "has shape [128, 64]", "config.json says",
                            "[vocab_size, hidden_size] = [128, 96]"}));
}

TEST(Checkpoint, RejectsShapeNotMatchingKvHeads) {
    FixtureCopy ck("llama_mha"); // 4 heads of 16, 4 kv heads
    edit_json(ck.file("config.json"), {"num_key_value_heads"}, "2");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {"tensor 'model.layers.0.self_attn.k_proj.weight'", "has shape [64, 64]",
                            "[num_key_value_heads*head_dim, hidden_size] = [32, 64]"}));
}

TEST(Checkpoint, RejectsShapeNotMatchingIntermediateSize) {
    FixtureCopy ck("llama_bf16_sharded");
    edit_json(ck.file("config.json"), {"intermediate_size"}, "128");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {"model-0000", "mlp.gate_proj.weight'", "has shape [96, 64]",
                            "[intermediate_size, hidden_size] = [128, 64]"}));
}

TEST(Checkpoint, RejectsMissingBiasWhenConfigHasAttentionBias) {
    FixtureCopy ck("llama_mha");
    edit_json(ck.file("config.json"), {"attention_bias"}, "true");
    EXPECT_TRUE(load_fails(ck.dir, CINFER_ERR_WEIGHTS,
                           {"tensor 'model.layers.0.self_attn.q_proj.bias' is missing",
                            "config.json has attention_bias = true"}));
}

TEST(Checkpoint, RejectsWeightStoredAsI64) {
    FixtureCopy ck("llama_mha");
    rewrite_tensors(ck.file("model.safetensors"), [](std::vector<StoredTensor> &tensors) {
        for (auto &t : tensors)
            if (t.name == "model.norm.weight") {
                t.dtype = "I64";
                t.bytes.assign(t.bytes.size() * 2, '\0'); // same shape, 8 bytes an element
            }
    });
    EXPECT_TRUE(load_fails(
        ck.dir, CINFER_ERR_WEIGHTS,
        {"model.safetensors", "tensor 'model.norm.weight'", "dtype I64", "F32, BF16 or F16"}));
}

} // namespace

// ---- random weights of a config's shape (cinfer_model_load_random) ----------------------------

extern "C" {
#include "../models/model.h"
}

namespace {

std::vector<float> last_logits(cinfer_model *model, const std::vector<int32_t> &prompt) {
    cinfer_session *session = nullptr;
    EXPECT_EQ(cinfer_session_create(model, 0, &session), CINFER_OK) << cinfer_last_error();
    std::vector<float> logits((size_t)cinfer_model_get_info(model)->vocab_size, NAN);
    EXPECT_EQ(cinfer_session_forward(session, prompt.data(), (int)prompt.size(), CINFER_LOGITS_LAST,
                                     logits.data()),
              CINFER_OK)
        << cinfer_last_error();
    cinfer_session_free(session);
    return logits;
}

// Every fixture's config, drawn at random, is a model of exactly the checkpoint's shape: the same
// parameter count and bytes means every tensor was made, none twice, each in the stored dtype.
TEST(RandomWeights, HaveTheShapeOfTheCheckpointTheConfigDescribes) {
    for (const std::string &name : cinfer_test::fixture_names()) {
        SCOPED_TRACE(name);
        cinfer_model *real = nullptr, *random = nullptr;
        ASSERT_EQ(cinfer_model_load(fixture_dir(name).c_str(), nullptr, &real), CINFER_OK);
        ASSERT_EQ(cinfer_model_load_random((fixture_dir(name) + "/config.json").c_str(), nullptr,
                                           cinfer_test::fresh_seed(), &random),
                  CINFER_OK)
            << cinfer_last_error();
        const cinfer_model_info *a = cinfer_model_get_info(real),
                                *b = cinfer_model_get_info(random);
        EXPECT_EQ(a->n_params, b->n_params);
        EXPECT_EQ(a->weight_bytes, b->weight_bytes);
        EXPECT_STREQ(a->architecture, b->architecture);
        std::vector<float> logits = last_logits(random, {1, 2, 3});
        for (float v : logits) ASSERT_TRUE(std::isfinite(v));
        cinfer_model_free(real);
        cinfer_model_free(random);
    }
}

// Drawn as transformers initializes a fresh model, and the same seed draws the same model.
TEST(RandomWeights, AreDrawnLikeAFreshModelAndRepeatWithTheSeed) {
    const std::string config = fixture_dir("diffllama_gqa4") + "/config.json";
    const uint64_t seed = cinfer_test::fresh_seed();
    cinfer_model *a = nullptr, *b = nullptr, *c = nullptr;
    ASSERT_EQ(cinfer_model_load_random(config.c_str(), nullptr, seed, &a), CINFER_OK);
    ASSERT_EQ(cinfer_model_load_random(config.c_str(), nullptr, seed, &b), CINFER_OK);
    ASSERT_EQ(cinfer_model_load_random(config.c_str(), nullptr, seed + 1, &c), CINFER_OK);
    const std::vector<int32_t> prompt = {5, 9, 2, 7};
    EXPECT_EQ(last_logits(a, prompt), last_logits(b, prompt));
    EXPECT_NE(last_logits(a, prompt), last_logits(c, prompt));

    const ci_layer &layer = a->layers[0];
    double sum = 0, sum_sq = 0;
    const int64_t n = ci_tensor_numel(&layer.q_proj);
    for (int64_t i = 0; i < n; i++) {
        double v = ci_tensor_get_f32(&layer.q_proj, i);
        sum += v;
        sum_sq += v * v;
    }
    const double mean = sum / n, std = std::sqrt(sum_sq / n - mean * mean);
    EXPECT_NEAR(std, 0.02, 0.002) << "initializer_range";
    EXPECT_NEAR(mean, 0.0, 0.002);
    for (int64_t i = 0; i < ci_tensor_numel(&layer.input_layernorm); i++)
        ASSERT_EQ(ci_tensor_get_f32(&layer.input_layernorm, i), 1.0f);
    for (int64_t i = 0; i < ci_tensor_numel(&layer.q_bias); i++)
        ASSERT_EQ(ci_tensor_get_f32(&layer.q_bias, i), 0.0f);
    cinfer_model_free(a);
    cinfer_model_free(b);
    cinfer_model_free(c);
}

// The values themselves are pinned: common/random_weights.h must keep drawing what the host drew
// before the device could (splitmix64 of key + i, its top 24 bits as u, half_width·(2u − 1)),
// so that a seed names the same model across versions and backends. On the CPU every tensor is
// drawn on the host, and none is left for a device to draw.
TEST(RandomWeights, TheValuesAreTheDrawTheHeaderDefines) {
    const std::string config = fixture_dir("diffllama_gqa4") + "/config.json"; // f32, biases, tied
    cinfer_model *m = nullptr;
    ASSERT_EQ(cinfer_model_load_random(config.c_str(), nullptr, 12345, &m), CINFER_OK)
        << cinfer_last_error();
    EXPECT_EQ(m->device_draws, nullptr);
    const ci_tensor &q = m->layers[0].q_proj, &embed = m->embed_tokens;
    ASSERT_EQ(q.dtype, CI_F32);
    const float *qv = static_cast<const float *>(q.data),
                *ev = static_cast<const float *>(embed.data);
    const float q_want[] = {-0x1.d582fep-6f, 0x1.b8c018p-8f, 0x1.8bb22ap-6f, -0x1.a428d8p-7f};
    const float embed_want[] = {-0x1.681494p-9f, 0x1.333794p-7f, 0x1.a47108p-6f, 0x1.20740cp-7f};
    for (int i = 0; i < 4; i++) {
        EXPECT_EQ(qv[i], q_want[i]) << "q_proj element " << i;
        EXPECT_EQ(ev[i], embed_want[i]) << "embed_tokens element " << i;
    }
    // every element of every tensor is ci_random_value of the draw its name gives
    struct Named {
        const char *name;
        const ci_tensor *tensor;
    };
    const Named tensors[] = {
        {"model.embed_tokens.weight", &m->embed_tokens},
        {"model.norm.weight", &m->norm},
        {"model.layers.2.self_attn.k_proj.weight", &m->layers[2].k_proj},
        {"model.layers.2.self_attn.k_proj.bias", &m->layers[2].k_bias},
        {"model.layers.1.mlp.down_proj.weight", &m->layers[1].down_proj},
        {"model.layers.1.post_attention_layernorm.weight", &m->layers[1].post_attention_layernorm}};
    for (const Named &t : tensors) {
        const ci_random_draw draw = ci_random_draw_of(12345, t.name);
        for (int64_t i = 0; i < ci_tensor_numel(t.tensor); i++)
            ASSERT_EQ(ci_tensor_get_f32(t.tensor, i), ci_random_value(&draw, (uint64_t)i))
                << t.name << " element " << i;
    }
    cinfer_model_free(m);
}

TEST(RandomWeights, ABadConfigIsNamed) {
    TempDir dir;
    cinfer_model *model = reinterpret_cast<cinfer_model *>(1);
    EXPECT_EQ(cinfer_model_load_random(dir.file("config.json").c_str(), nullptr, 1, &model),
              CINFER_ERR_IO);
    EXPECT_EQ(model, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"config.json"}));
    cinfer_test::write_file(dir.file("config.json"), "{\"architectures\": [\"LlamaForCausalLM\"]}");
    EXPECT_NE(cinfer_model_load_random(dir.file("config.json").c_str(), nullptr, 1, &model),
              CINFER_OK);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"config.json", "vocab_size"}));
}

} // namespace
