// The cinfer binary, run as a user would: what `run` and `inspect` print and write, and for every
// kind of bad input an exit status (2 for misuse, 1 otherwise), a message that names the file or
// field, no crash or hang, and no file (not even a temporary one) left where --dump-logits points.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cinfer_test::contains_all;
using cinfer_test::fixture_dir;
using cinfer_test::TempDir;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
// `timeout` exits with this when it had to stop the command: a hang.
constexpr int kTimedOut = 124;

using cinfer_test::CliResult;
using cinfer_test::run_cli;
using cinfer_test::shell_quote;

// A failure the way the CLI must fail: the expected status and no sign of a crash, a hang or a
// sanitizer report (which would exit 1 too, and so pass for an ordinary error).
::testing::AssertionResult exits_with(const CliResult &r, int want) {
    if (r.exit_code == kTimedOut) return ::testing::AssertionFailure() << "the command hung";
    if (r.err.find("Sanitizer") != std::string::npos ||
        r.err.find("runtime error:") != std::string::npos)
        return ::testing::AssertionFailure() << "sanitizer report:\n" << r.err;
    if (r.exit_code != want)
        return ::testing::AssertionFailure()
               << "exit status " << r.exit_code << ", expected " << want << "\nstdout: " << r.out
               << "\nstderr: " << r.err;
    return ::testing::AssertionSuccess();
}

// The whitespace-separated words of text.
std::vector<std::string> words(const std::string &text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string word; in >> word;) out.push_back(word);
    return out;
}

// "12 -3 7\n": integers separated by single spaces, on one line.
bool is_one_line_of_ids(const std::string &text) {
    if (text.empty() || text.back() != '\n') return false;
    const std::string line = text.substr(0, text.size() - 1);
    std::string rebuilt;
    for (const auto &word : words(line)) {
        size_t used = 0;
        try {
            std::stol(word, &used);
        } catch (const std::exception &) {
            return false;
        }
        if (used != word.size()) return false;
        rebuilt += (rebuilt.empty() ? "" : " ") + word;
    }
    return rebuilt == line;
}

std::vector<int32_t> parse_ids(const std::string &line) {
    std::vector<int32_t> ids;
    std::istringstream in(line);
    for (int32_t id; in >> id;) ids.push_back(id);
    return ids;
}

std::vector<std::string> files_in(const std::string &dir) {
    std::vector<std::string> names;
    for (const auto &entry : fs::directory_iterator(dir))
        names.push_back(entry.path().filename().string());
    return names;
}

const std::string kModel = fixture_dir("llama_mha");
const char *const kPrompt = "1 15 7 42";

// The model of kModel through the API, for outputs the CLI must reproduce.
struct ApiModel {
    cinfer_model *model = nullptr;
    ApiModel() {
        EXPECT_EQ(cinfer_model_load(kModel.c_str(), nullptr, &model), CINFER_OK)
            << cinfer_last_error();
    }
    ~ApiModel() { cinfer_model_free(model); }
    int vocab() const { return cinfer_model_get_info(model)->vocab_size; }
};

// ---- run ----------------------------------------------------------------------------------------

TEST(Cli, RunPrintsGreedyTokensOnOneLineAsTheApiGeneratesThem) {
    const int n_new = 6;
    const CliResult r = run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens",
                                 std::to_string(n_new), "--ignore-eos"});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_TRUE(is_one_line_of_ids(r.out)) << r.out;

    ApiModel api;
    cinfer_session *session = nullptr;
    ASSERT_EQ(cinfer_session_create(api.model, 0, &session), CINFER_OK);
    const std::vector<int32_t> prompt = parse_ids(kPrompt);
    cinfer_generate_params params = {};
    params.max_new_tokens = n_new;
    params.ignore_eos = 1;
    std::vector<int32_t> expected;
    auto collect = [](void *user, int32_t token) {
        static_cast<std::vector<int32_t> *>(user)->push_back(token);
        return 0;
    };
    ASSERT_EQ(cinfer_generate(session, prompt.data(), (int)prompt.size(), &params, collect,
                              &expected, nullptr, nullptr),
              CINFER_OK)
        << cinfer_last_error();
    cinfer_session_free(session);
    ASSERT_EQ((int)expected.size(), n_new);
    EXPECT_EQ(parse_ids(r.out), expected);
}

TEST(Cli, RunWithMaxNewTokensZeroPrintsAnEmptyLine) {
    const CliResult r =
        run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens", "0"});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_EQ(r.out, "\n");
}

// The .npy header as numpy writes version 1.0: magic, version, little-endian header length, a
// Python dict literal padded with spaces and a newline so that the data starts at a multiple of 64.
::testing::AssertionResult read_npy_f32(const std::string &path, std::vector<int64_t> &shape,
                                        std::vector<float> &data) {
    const std::string bytes = cinfer_test::read_file(path);
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
        return ::testing::AssertionFailure() << path << ": no .npy magic";
    if (bytes[6] != 1 || bytes[7] != 0)
        return ::testing::AssertionFailure() << path << ": not format version 1.0";
    const size_t header_len = (uint8_t)bytes[8] | (size_t)(uint8_t)bytes[9] << 8;
    if (bytes.size() < 10 + header_len || (10 + header_len) % 64 != 0)
        return ::testing::AssertionFailure()
               << path << ": header of " << header_len << " bytes does not end at a multiple of 64";
    const std::string header = bytes.substr(10, header_len);
    const std::string start = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    long long rows = -1, cols = -1;
    std::sscanf(header.c_str() + std::min(start.size(), header.size()), "%lld, %lld", &rows, &cols);
    const std::string dict = start + std::to_string(rows) + ", " + std::to_string(cols) + "), }";
    if (header.compare(0, dict.size(), dict) != 0 || header.back() != '\n' ||
        header.find_first_not_of(' ', dict.size()) != header.size() - 1)
        return ::testing::AssertionFailure() << path << ": unexpected header: " << header;
    shape = {rows, cols};
    const size_t n = (size_t)(shape[0] * shape[1]);
    if (bytes.size() != 10 + header_len + n * sizeof(float))
        return ::testing::AssertionFailure()
               << path << ": " << bytes.size() - 10 - header_len << " data bytes for shape ("
               << shape[0] << ", " << shape[1] << ")";
    data.resize(n);
    std::memcpy(data.data(), bytes.data() + 10 + header_len, n * sizeof(float));
    return ::testing::AssertionSuccess();
}

TEST(Cli, DumpLogitsWritesNpyOfThePromptLogitsTheApiComputes) {
    TempDir out;
    const std::string npy = out.file("logits.npy");
    const CliResult r = run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens",
                                 "2", "--dump-logits", npy});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_EQ(files_in(out.path.string()), std::vector<std::string>{"logits.npy"});

    std::vector<int64_t> shape;
    std::vector<float> logits;
    ASSERT_TRUE(read_npy_f32(npy, shape, logits));
    const std::vector<int32_t> prompt = parse_ids(kPrompt);
    ApiModel api;
    ASSERT_EQ(shape, (std::vector<int64_t>{(int64_t)prompt.size(), api.vocab()}));

    cinfer_session *session = nullptr;
    ASSERT_EQ(cinfer_session_create(api.model, 0, &session), CINFER_OK);
    std::vector<float> expected(prompt.size() * (size_t)api.vocab());
    ASSERT_EQ(cinfer_session_forward(session, prompt.data(), (int)prompt.size(), CINFER_LOGITS_ALL,
                                     expected.data()),
              CINFER_OK)
        << cinfer_last_error();
    cinfer_session_free(session);
    // The same code on the same machine: the same floats, bit for bit.
    EXPECT_EQ(logits, expected);
}

TEST(Cli, SamplingWithTheSameSeedGivesTheSameTokens) {
    auto sample = [](const char *seed) {
        return run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens", "16",
                        "--ignore-eos", "--temperature", "1.0", "--top-k", "50", "--top-p", "0.95",
                        "--seed", seed});
    };
    const CliResult first = sample("1234"), again = sample("1234"), other = sample("99");
    ASSERT_TRUE(exits_with(first, 0));
    ASSERT_TRUE(exits_with(again, 0));
    ASSERT_TRUE(exits_with(other, 0));
    EXPECT_EQ(parse_ids(first.out).size(), 16u);
    EXPECT_EQ(first.out, again.out);
    EXPECT_TRUE(contains_all(first.err, {"seed 1234"}));
    // 16 draws from a near-uniform distribution over 128 tokens: a different seed that gives the
    // same sequence would mean the seed is ignored.
    EXPECT_NE(first.out, other.out);
}

// ---- inspect ------------------------------------------------------------------------------------

TEST(Cli, InspectPrintsArchitectureAndEveryTensor) {
    const std::string dir = fixture_dir("llama_bf16_sharded");
    const CliResult r = run_cli({"inspect", "--model", dir});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_TRUE(contains_all(r.out, {"LlamaForCausalLM", "model.safetensors.index.json", "BF16"}));
    cJSON *index =
        cJSON_Parse(cinfer_test::read_file(dir + "/model.safetensors.index.json").c_str());
    ASSERT_NE(index, nullptr);
    int n = 0;
    for (const cJSON *e = cJSON_GetObjectItem(index, "weight_map")->child; e; e = e->next, n++) {
        // each tensor on its own line: name, dtype, shape, and the shard that holds it
        const size_t at = r.out.find(std::string("\n  ") + e->string + " ");
        ASSERT_NE(at, std::string::npos) << e->string << " is not listed";
        const std::string line = r.out.substr(at + 1, r.out.find('\n', at + 1) - at - 1);
        const auto fields = words(line);
        ASSERT_GE(fields.size(), 4u) << line;
        EXPECT_EQ(fields[1], "BF16") << line;
        EXPECT_NE(std::find(fields.begin(), fields.end(), e->valuestring), fields.end()) << line;
    }
    cJSON_Delete(index);
    EXPECT_GT(n, 0);
}

TEST(Cli, InspectNamesTheDiffLlamaArchitecture) {
    const CliResult r = run_cli({"inspect", "--model", fixture_dir("diffllama_fp16")});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_TRUE(
        contains_all(r.out, {"DiffLlamaForCausalLM", "model.layers.0.self_attn.lambda_q1", "F16"}));
}

// ---- bad input ----------------------------------------------------------------------------------

// Runs `run` with the given arguments plus --dump-logits into a fresh folder, checks the exit
// status and that the message names every one of parts, and that the folder is still empty.
::testing::AssertionResult run_fails(std::vector<std::string> args, int want,
                                     std::initializer_list<std::string> parts) {
    TempDir out;
    args.insert(args.begin(), "run");
    args.push_back("--dump-logits");
    args.push_back(out.file("logits.npy"));
    const CliResult r = run_cli(args);
    auto status = exits_with(r, want);
    if (!status) return status;
    auto message = contains_all(r.err, parts);
    if (!message) return message;
    const auto left = files_in(out.path.string());
    if (!left.empty())
        return ::testing::AssertionFailure() << "left a file behind: " << left.front();
    return ::testing::AssertionSuccess();
}

TEST(Cli, RejectsNonexistentModelFolder) {
    TempDir temp;
    const std::string dir = temp.file("no-such-model");
    EXPECT_TRUE(run_fails({"--model", dir, "--tokens", kPrompt}, kExitError,
                          {"cinfer: error:", dir, "no such directory"}));
    const CliResult r = run_cli({"inspect", "--model", dir});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {dir, "no such directory"}));
}

TEST(Cli, RejectsBrokenCheckpoint) {
    TempDir temp;
    const std::string dir = temp.file("model");
    fs::create_directory(dir);
    fs::copy_file(kModel + "/config.json", dir + "/config.json");
    std::string weights = cinfer_test::read_file(kModel + "/model.safetensors");
    weights.resize(weights.size() / 2);
    cinfer_test::write_file(dir + "/model.safetensors", weights);
    EXPECT_TRUE(run_fails({"--model", dir, "--tokens", kPrompt}, kExitError,
                          {dir + "/model.safetensors", "truncated"}));
    const CliResult r = run_cli({"inspect", "--model", dir});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {dir + "/model.safetensors"}));
}

TEST(Cli, RejectsFifoInPlaceOfWeightsWithoutHanging) {
    TempDir temp;
    const std::string dir = temp.file("model");
    fs::create_directory(dir);
    fs::copy_file(kModel + "/config.json", dir + "/config.json");
    ASSERT_EQ(mkfifo((dir + "/model.safetensors").c_str(), 0600), 0);
    EXPECT_TRUE(run_fails({"--model", dir, "--tokens", kPrompt}, kExitError,
                          {dir + "/model.safetensors", "not a regular file"}));
}

TEST(Cli, RejectsTokenIdsOutsideTheVocabulary) {
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", "1 2 128"}, kExitError,
                          {"token id 128", "position 2", "outside the vocabulary",
                           "vocab_size = 128", "config.json"}));
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", "-1 2"}, kExitError,
                          {"token id -1", "position 0", "outside the vocabulary"}));
}

TEST(Cli, RejectsTokensThatAreNotIntegers) {
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", "1 x 3"}, kExitUsage,
                          {"--tokens", "'x'", "token 1", "not an integer"}));
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", "1 2.5"}, kExitUsage,
                          {"--tokens", "'2.5'", "not an integer"}));
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", "4294967296"}, kExitUsage,
                          {"--tokens", "'4294967296'", "not an integer"}));
}

TEST(Cli, RejectsEmptyPrompt) {
    for (const char *tokens : {"", " , \t"})
        EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", tokens}, kExitUsage,
                              {"--tokens", "the prompt is empty"}))
            << "'" << tokens << "'";
}

std::string prompt_of(int n) {
    std::string text;
    for (int i = 0; i < n; i++) text += (i ? " " : "") + std::to_string(i % 100);
    return text;
}

TEST(Cli, RejectsPromptLongerThanMaxPositionEmbeddings) {
    ApiModel api;
    const int max_pos = cinfer_model_get_info(api.model)->max_position_embeddings;
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", prompt_of(max_pos + 1)}, kExitError,
                          {std::to_string(max_pos + 1) + " tokens",
                           "max_position_embeddings = " + std::to_string(max_pos), "config.json",
                           "--ctx-size"}));
}

TEST(Cli, RejectsPromptLongerThanCtxSize) {
    EXPECT_TRUE(run_fails({"--model", kModel, "--tokens", prompt_of(9), "--ctx-size", "8"},
                          kExitError, {"9 tokens", "--ctx-size is 8"}));
}

TEST(Cli, RunsPastMaxPositionEmbeddingsWhenCtxSizeAllowsIt) {
    ApiModel api;
    const int max_pos = cinfer_model_get_info(api.model)->max_position_embeddings;
    const CliResult r =
        run_cli({"run", "--model", kModel, "--tokens", prompt_of(max_pos + 1), "--ctx-size",
                 std::to_string(max_pos + 3), "--max-new-tokens", "2", "--ignore-eos"});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_EQ(parse_ids(r.out).size(), 2u);
}

TEST(Cli, RejectsBadOptionValuesAsMisuse) {
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"--top-p", "0"}, "--top-p"},
        {{"--top-p", "1.5"}, "--top-p"},
        {{"--temperature", "-1"}, "--temperature"},
        {{"--temperature", "nan"}, "--temperature"},
        {{"--temperature", "hot"}, "--temperature"},
        {{"--max-new-tokens", "-1"}, "--max-new-tokens"},
        {{"--ctx-size", "0"}, "--ctx-size"},
        {{"--threads", "0"}, "--threads"},
        {{"--top-k", "-2"}, "--top-k"},
        {{"--seed", "-5"}, "--seed"},
        {{"--backend", "tpu"}, "--backend"},
        {{"--frobnicate", "1"}, "unknown option '--frobnicate'"},
    };
    for (const auto &[extra, named] : cases) {
        std::vector<std::string> args = {"--model", kModel, "--tokens", kPrompt};
        args.insert(args.end(), extra.begin(), extra.end());
        EXPECT_TRUE(run_fails(args, kExitUsage, {named, "usage:"})) << extra[0] << " " << extra[1];
    }
}

TEST(Cli, RejectsMissingArgumentsAsMisuse) {
    EXPECT_TRUE(exits_with(run_cli({}), kExitUsage));
    CliResult r = run_cli({"generate"});
    EXPECT_TRUE(exits_with(r, kExitUsage));
    EXPECT_TRUE(contains_all(r.err, {"unknown command 'generate'"}));
    r = run_cli({"run", "--tokens", kPrompt});
    EXPECT_TRUE(exits_with(r, kExitUsage));
    EXPECT_TRUE(contains_all(r.err, {"--model DIR is required"}));
    r = run_cli({"run", "--model", kModel});
    EXPECT_TRUE(exits_with(r, kExitUsage));
    EXPECT_TRUE(contains_all(r.err, {"--tokens"}));
    r = run_cli({"run", "--model", kModel, "--tokens"});
    EXPECT_TRUE(exits_with(r, kExitUsage));
    EXPECT_TRUE(contains_all(r.err, {"'--tokens' needs a value"}));
    r = run_cli({"inspect", "--model", kModel, "--tokens", kPrompt});
    EXPECT_TRUE(exits_with(r, kExitUsage));
    EXPECT_TRUE(contains_all(r.err, {"unknown option '--tokens'"}));
}

// ---- --dump-logits where it cannot be written ---------------------------------------------------

TEST(Cli, DumpLogitsIntoNonexistentFolderFailsWithoutLeavingFiles) {
    TempDir out;
    const std::string npy = out.file("no/such/folder/logits.npy");
    const CliResult r = run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens",
                                 "1", "--dump-logits", npy});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {npy, "cannot create", "No such file"}));
    EXPECT_TRUE(files_in(out.path.string()).empty());
}

TEST(Cli, DumpLogitsOntoAFolderFailsWithoutLeavingFiles) {
    TempDir out;
    const std::string target = out.file("taken");
    fs::create_directory(target);
    const CliResult r = run_cli({"run", "--model", kModel, "--tokens", kPrompt, "--max-new-tokens",
                                 "1", "--dump-logits", target});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {target, "write failed"}));
    EXPECT_EQ(files_in(out.path.string()), std::vector<std::string>{"taken"});
    EXPECT_TRUE(files_in(target).empty());
}

} // namespace

// ---- cinfer bench ----------------------------------------------------------------------------

namespace {

// The rows `bench` prints for -p 16 -n 4 -d 0,8: every pp, then every tg, per depth.
const std::vector<std::string> kBenchTests = {"pp16", "tg4", "pp16 @ d8", "tg4 @ d8"};

std::vector<std::string> bench_args(const std::string &format) {
    return {"bench", "--model", fixture_dir("llama_gqa_llama3"),
            "-p",    "16",      "-n",
            "4",     "-d",      "0,8",
            "-r",    "2",       "--no-ceilings",
            "-t",    "1",       "--output",
            format};
}

TEST(CliBench, JsonHoldsTheAskedForRowsWithConsistentFigures) {
    const CliResult r = run_cli(bench_args("json"));
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << "stdout is not JSON:\n" << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), (int)kBenchTests.size());
    for (int i = 0; i < cJSON_GetArraySize(rows); i++) {
        const cJSON *row = cJSON_GetArrayItem(rows, i);
        SCOPED_TRACE(kBenchTests[i]);
        EXPECT_STREQ(cJSON_GetObjectItem(row, "test")->valuestring, kBenchTests[i].c_str());
        EXPECT_STREQ(cJSON_GetObjectItem(row, "backend")->valuestring, "cpu");
        EXPECT_STREQ(cJSON_GetObjectItem(row, "arch")->valuestring, "LlamaForCausalLM");
        EXPECT_EQ(cJSON_GetObjectItem(row, "n_threads")->valueint, 1);
        EXPECT_EQ(cJSON_GetObjectItem(row, "n_depth")->valueint, i < 2 ? 0 : 8);
        const int tokens = i % 2 == 0 ? 16 : 4;
        const cJSON *seconds = cJSON_GetObjectItem(row, "seconds");
        ASSERT_EQ(cJSON_GetArraySize(seconds), 2);
        double mean = 0;
        for (int k = 0; k < 2; k++) {
            const double s = cJSON_GetArrayItem(seconds, k)->valuedouble;
            EXPECT_GT(s, 0.0);
            mean += tokens / s / 2;
        }
        EXPECT_NEAR(cJSON_GetObjectItem(row, "mean_tps")->valuedouble, mean, 1e-3 * mean);
        EXPECT_GE(cJSON_GetObjectItem(row, "std_tps")->valuedouble, 0.0);
    }
    cJSON_Delete(rows);
}

TEST(CliBench, CsvAndMarkdownHoldTheSameRows) {
    const CliResult csv = run_cli(bench_args("csv"));
    ASSERT_TRUE(exits_with(csv, 0));
    std::vector<std::string> lines;
    std::istringstream in(csv.out);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    ASSERT_EQ(lines.size(), kBenchTests.size() + 1);
    EXPECT_EQ(lines[0].rfind("model,arch,weight_bytes,n_params,backend,dtype,", 0), 0u);
    for (size_t i = 0; i < kBenchTests.size(); i++)
        EXPECT_NE(lines[i + 1].find(",cpu,f32,reference,1,1," + kBenchTests[i] + ","),
                  std::string::npos)
            << lines[i + 1];

    const CliResult md = run_cli(bench_args("md"));
    ASSERT_TRUE(exits_with(md, 0));
    std::istringstream table(md.out);
    std::vector<std::string> rows;
    for (std::string line; std::getline(table, line);) rows.push_back(line);
    ASSERT_EQ(rows.size(), kBenchTests.size() + 2) << md.out;
    for (size_t i = 0; i < kBenchTests.size(); i++) {
        EXPECT_NE(rows[i + 2].find("| " + kBenchTests[i] + " |"), std::string::npos) << rows[i + 2];
        EXPECT_NE(rows[i + 2].find(" ± "), std::string::npos);
    }
}

// -b 1,2: rows per batch size (each test for batch 1, then for batch 2); throughput counts the
// tokens of every sequence.
TEST(CliBench, BatchSizesGiveRowsPerBatchInEveryFormat) {
    auto args = [](const std::string &format) {
        return std::vector<std::string>{"bench", "--model", fixture_dir("diffllama_gqa4"),
                                        "-p",    "8",       "-n",
                                        "3",     "-b",      "1,2",
                                        "-r",    "2",       "--no-ceilings",
                                        "-t",    "1",       "--output",
                                        format};
    };
    const std::vector<std::pair<int, std::string>> want = {
        {1, "pp8"}, {1, "tg3"}, {2, "pp8"}, {2, "tg3"}};

    const CliResult json = run_cli(args("json"));
    ASSERT_TRUE(exits_with(json, 0)) << json.err;
    cJSON *rows = cJSON_Parse(json.out.c_str());
    ASSERT_NE(rows, nullptr) << "stdout is not JSON:\n" << json.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), (int)want.size());
    for (int i = 0; i < cJSON_GetArraySize(rows); i++) {
        const cJSON *row = cJSON_GetArrayItem(rows, i);
        const int batch = want[i].first;
        SCOPED_TRACE(want[i].second + " batch " + std::to_string(batch));
        EXPECT_EQ(cJSON_GetObjectItem(row, "batch")->valueint, batch);
        EXPECT_STREQ(cJSON_GetObjectItem(row, "test")->valuestring, want[i].second.c_str());
        const int tokens = batch * (i % 2 == 0 ? 8 : 3);
        const cJSON *seconds = cJSON_GetObjectItem(row, "seconds");
        ASSERT_EQ(cJSON_GetArraySize(seconds), 2);
        double mean = 0;
        for (int k = 0; k < 2; k++)
            mean += tokens / cJSON_GetArrayItem(seconds, k)->valuedouble / 2;
        EXPECT_NEAR(cJSON_GetObjectItem(row, "mean_tps")->valuedouble, mean, 1e-3 * mean);
    }
    cJSON_Delete(rows);

    const CliResult csv = run_cli(args("csv"));
    ASSERT_TRUE(exits_with(csv, 0)) << csv.err;
    std::vector<std::string> lines;
    std::istringstream in(csv.out);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    ASSERT_EQ(lines.size(), want.size() + 1) << csv.out;
    for (size_t i = 0; i < want.size(); i++)
        EXPECT_NE(lines[i + 1].find(",cpu,f32,reference,1," + std::to_string(want[i].first) + "," +
                                    want[i].second + ","),
                  std::string::npos)
            << lines[i + 1];

    const CliResult md = run_cli(args("md"));
    ASSERT_TRUE(exits_with(md, 0)) << md.err;
    std::istringstream table(md.out);
    std::vector<std::string> md_rows;
    for (std::string line; std::getline(table, line);) md_rows.push_back(line);
    ASSERT_EQ(md_rows.size(), want.size() + 2) << md.out;
    for (size_t i = 0; i < want.size(); i++)
        EXPECT_NE(md_rows[i + 2].find("| " + std::to_string(want[i].first) + " | " +
                                      want[i].second + " |"),
                  std::string::npos)
            << md_rows[i + 2];
}

TEST(CliBench, RejectsBadOptionsAndBadModels) {
    const std::string model = fixture_dir("llama_mha");
    for (const std::vector<std::string> &args : std::vector<std::vector<std::string>>{
             {"bench", "--model", model, "--output", "xml"},
             {"bench", "--model", model, "-p", "16,abc"},
             {"bench", "--model", model, "-p", "0", "-n", "0"},
             {"bench", "--model", model, "-b", "0"},
             {"bench", "--model", model, "-b", "1,513"},
             {"bench", "--model", model, "-r", "0"},
             {"bench", "--model", model, "--backend", "tpu"},
             {"bench", "--model", model, "--dtype", "bf16,int4"},
             {"bench", "--model", model, "--attn", "fast"},
             {"bench", "-p", "16"},
             {"bench", "--model", model, "-n"},
         }) {
        const CliResult r = run_cli(args);
        EXPECT_TRUE(exits_with(r, kExitUsage)) << args.back();
        EXPECT_EQ(r.out, "");
    }
    TempDir empty;
    const CliResult r = run_cli({"bench", "--model", empty.path.string(), "-p", "4", "-n", "0"});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {"config.json"}));
    EXPECT_EQ(r.out, "");
}

// Every command reads dtype, attention and backend names from cinfer.h's one table, so bench
// takes what run takes, aliases included. --dtype picks the CUDA rows; the CPU row computes in
// f32 whatever it says, which keeps this a quick run on any machine.
TEST(CliBench, TakesTheNamesRunTakes) {
    const std::string model = fixture_dir("llama_mha");
    const CliResult r =
        run_cli({"bench", "--model", model, "--dtype", "f16,bfloat16", "--backend", "cpu", "-p",
                 "4", "-n", "0", "-r", "1", "--no-ceilings", "--output", "csv"});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_TRUE(contains_all(r.out, {",cpu,f32,reference,", ",pp4,"}));
}

} // namespace

// ---- cinfer run with text: --prompt, --chat, streaming, stop tokens ---------------------------

namespace {

// A byte-level tokenizer whose 128 tokens are the ASCII bytes, id = byte, with no merges: it
// fits the fixtures' 128-token vocabulary, so that a text run can be checked against an id run
// of the same model token for token.
std::string ascii_bytelevel_tokenizer() {
    std::string vocab;
    for (int byte = 0; byte < 128; byte++) {
        // GPT-2's byte-to-character map: printable bytes stand for themselves, the rest for
        // U+0100 + their rank among the non-printable ones (0x00-0x20, then 0x7f).
        int code = byte >= 0x21 && byte <= 0x7e ? byte : 0x100 + (byte <= 0x20 ? byte : 0x21);
        char piece[16];
        if (code == '"' || code == '\\')
            snprintf(piece, sizeof piece, "\\%c", code);
        else if (code < 0x80)
            snprintf(piece, sizeof piece, "%c", code);
        else
            snprintf(piece, sizeof piece, "\\u%04x", code);
        vocab += std::string(byte ? ", " : "") + "\"" + piece + "\": " + std::to_string(byte);
    }
    return R"({"version": "1.0", "added_tokens": [], "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                        "use_regex": true},
      "post_processor": null,
      "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                  "use_regex": true},
      "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {)" +
           vocab + R"(}, "merges": []}})";
}

// The fixture llama_mha with that tokenizer beside it (and whatever extra files a test adds).
struct TextModel {
    TempDir dir;
    TextModel(const std::string &tokenizer_config = "{}") {
        for (const char *name : {"config.json", "model.safetensors"})
            fs::copy_file(fs::path(fixture_dir("llama_mha")) / name, dir.path / name);
        cinfer_test::write_file(dir.file("tokenizer.json"), ascii_bytelevel_tokenizer());
        cinfer_test::write_file(dir.file("tokenizer_config.json"), tokenizer_config);
    }
    std::string path() const { return dir.path.string(); }
};

std::string ids_text(const std::string &text) {
    std::string ids;
    for (unsigned char c : text) ids += (ids.empty() ? "" : " ") + std::to_string(c);
    return ids;
}

// What the id run generated, as the text those ids stand for.
std::string text_of_ids(const std::string &ids_line) {
    std::string text;
    for (const std::string &id : words(ids_line)) text += (char)std::stoi(id);
    return text;
}

TEST(CliText, PromptStreamsTheTextOfTheSameTokensAnIdRunGenerates) {
    TextModel model;
    const std::string prompt = "Hello, world";
    const CliResult ids = run_cli({"run", "--model", model.path(), "--tokens", ids_text(prompt),
                                   "--max-new-tokens", "12", "--ignore-eos"});
    ASSERT_TRUE(exits_with(ids, 0));
    const CliResult text = run_cli({"run", "--model", model.path(), "--prompt", prompt,
                                    "--max-new-tokens", "12", "--ignore-eos"});
    ASSERT_TRUE(exits_with(text, 0));
    ASSERT_EQ(words(ids.out).size(), 12u);
    EXPECT_EQ(text.out, text_of_ids(ids.out) + "\n");
    EXPECT_TRUE(contains_all(text.err, {"prompt: 12 tokens", "generated 12 tokens"}));

    // sampled runs agree too: the same seed draws the same tokens from the same logits
    const CliResult sampled_ids =
        run_cli({"run", "--model", model.path(), "--tokens", ids_text(prompt), "--temperature",
                 "1.5", "--seed", "11", "--max-new-tokens", "12", "--ignore-eos"});
    const CliResult sampled_text =
        run_cli({"run", "--model", model.path(), "--prompt", prompt, "--temperature", "1.5",
                 "--seed", "11", "--max-new-tokens", "12", "--ignore-eos"});
    ASSERT_TRUE(exits_with(sampled_text, 0));
    EXPECT_EQ(sampled_text.out, text_of_ids(sampled_ids.out) + "\n");
}

TEST(CliText, ChatFormatsTheTurnWithTheTemplate) {
    const std::string chatml =
        R"({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"})";
    TextModel model(chatml);
    const std::string rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                 "Hi<|im_end|>\n<|im_start|>assistant\n";
    const CliResult ids = run_cli({"run", "--model", model.path(), "--tokens", ids_text(rendered),
                                   "--max-new-tokens", "6", "--ignore-eos", "--ctx-size", "128"});
    ASSERT_TRUE(exits_with(ids, 0));
    const CliResult chat =
        run_cli({"run", "--model", model.path(), "--chat", "Hi", "--system", "Be brief.",
                 "--max-new-tokens", "6", "--ignore-eos", "--ctx-size", "128"});
    ASSERT_TRUE(exits_with(chat, 0));
    EXPECT_EQ(chat.out, text_of_ids(ids.out) + "\n");
    EXPECT_TRUE(contains_all(chat.err, {"prompt: " + std::to_string(rendered.size()) + " tokens"}));
}

TEST(CliText, StopsAtGenerationConfigEosTokens) {
    TextModel model;
    const std::string prompt = "abc";
    const CliResult ids = run_cli({"run", "--model", model.path(), "--tokens", ids_text(prompt),
                                   "--max-new-tokens", "10", "--ignore-eos"});
    ASSERT_TRUE(exits_with(ids, 0));
    const std::vector<std::string> generated = words(ids.out);
    ASSERT_EQ(generated.size(), 10u);
    // the first position of the token that comes third decides where the text run stops
    size_t stop_at = 0;
    while (generated[stop_at] != generated[2]) stop_at++;
    cinfer_test::write_file(model.dir.file("generation_config.json"),
                            "{\"eos_token_id\": [9999, " + generated[2] + "]}");
    const CliResult text =
        run_cli({"run", "--model", model.path(), "--prompt", prompt, "--max-new-tokens", "10"});
    ASSERT_TRUE(exits_with(text, 0));
    std::string expected;
    for (size_t i = 0; i < stop_at; i++) expected += (char)std::stoi(generated[i]);
    EXPECT_EQ(text.out, expected + "\n");
    EXPECT_TRUE(contains_all(text.err, {"stop: eos token"}));
    // --ignore-eos ignores these stops too
    const CliResult ignoring = run_cli({"run", "--model", model.path(), "--prompt", prompt,
                                        "--max-new-tokens", "10", "--ignore-eos"});
    EXPECT_EQ(ignoring.out, text_of_ids(ids.out) + "\n");
}

TEST(CliText, RejectsWhatItCannotRun) {
    TextModel model;
    // one prompt source, and --system only with --chat: misuse
    for (const std::vector<std::string> &args : std::vector<std::vector<std::string>>{
             {"run", "--model", model.path(), "--prompt", "a", "--tokens", "1 2"},
             {"run", "--model", model.path(), "--prompt", "a", "--chat", "b"},
             {"run", "--model", model.path(), "--prompt", "a", "--system", "b"},
             {"run", "--model", model.path()},
         }) {
        const CliResult r = run_cli(args);
        EXPECT_TRUE(exits_with(r, kExitUsage)) << args[3];
        EXPECT_EQ(r.out, "");
    }
    // no chat template: said, not guessed
    CliResult r = run_cli({"run", "--model", model.path(), "--chat", "hi"});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {"chat_template", "plain text"}));
    EXPECT_EQ(r.out, "");
    // a checkpoint without tokenizer.json
    r = run_cli({"run", "--model", fixture_dir("llama_mha"), "--prompt", "hi"});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {"tokenizer.json"}));
    // a broken generation_config.json names the file and the field
    for (const char *bad : {"\"x\"", "1e30", "[3, -1]", "[2.5]", "{}"}) {
        cinfer_test::write_file(model.dir.file("generation_config.json"),
                                std::string("{\"eos_token_id\": ") + bad + "}");
        r = run_cli({"run", "--model", model.path(), "--prompt", "hi", "--max-new-tokens", "2"});
        EXPECT_TRUE(exits_with(r, kExitError)) << bad;
        EXPECT_TRUE(contains_all(r.err, {"generation_config.json", "eos_token_id"})) << bad;
    }
    // text the tokenizer turns into ids the model does not have
    r = run_cli({"run", "--model", model.path(), "--prompt", "caf\xc3\xa9"});
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_EQ(r.out, "");
}

} // namespace

namespace {

TEST(CliBench, MeasuresRandomWeightsOfAShape) {
    const std::string config = fixture_dir("diffllama_gqa2_llama3") + "/config.json";
    const CliResult r = run_cli({"bench", "--config", config, "--random-weights", "--no-ceilings",
                                 "-p", "8", "-n", "2", "-r", "1", "--output", "csv"});
    ASSERT_TRUE(exits_with(r, 0));
    EXPECT_TRUE(contains_all(r.out, {"(random)\",DiffLlamaForCausalLM,", ",pp8,", ",tg2,"}));
    const CliResult missing = run_cli({"bench", "--config", config, "-p", "8"});
    EXPECT_TRUE(exits_with(missing, kExitUsage));
    EXPECT_TRUE(contains_all(missing.err, {"--random-weights"}));
}

} // namespace

namespace {

// --profile splits one step of each test among the op classes: every class ran, and together
// they fit inside the step they were timed in.
TEST(CliBench, ProfileSplitsAStepAmongTheOpClasses) {
    const CliResult r =
        run_cli({"bench", "--model", fixture_dir("diffllama_gqa4"), "-p", "16", "-n", "2", "-r",
                 "1", "--profile", "--no-ceilings", "--output", "json"});
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *profile = cJSON_GetObjectItem(cJSON_GetArrayItem(rows, i), "profile");
        ASSERT_NE(profile, nullptr);
        const double step = cJSON_GetObjectItem(profile, "step_ms")->valuedouble;
        double sum = 0;
        for (const char *op_class : {"attention_ms", "matmul_ms", "norm_ms", "other_ms"}) {
            const double ms = cJSON_GetObjectItem(profile, op_class)->valuedouble;
            EXPECT_GT(ms, 0.0) << op_class;
            sum += ms;
        }
        EXPECT_LE(sum, step * 1.0001 + 1e-6);
    }
    cJSON_Delete(rows);
    const CliResult md = run_cli({"bench", "--model", fixture_dir("diffllama_gqa4"), "-p", "16",
                                  "-n", "0", "-r", "1", "--profile", "--no-ceilings"});
    ASSERT_TRUE(exits_with(md, 0));
    EXPECT_TRUE(
        contains_all(md.out, {"| step ms | attention | matmul | norm | other |", "| pp16 |"}));
}

} // namespace

namespace {

// Each row against the hardware: decode's bytes per token are about the weights (plus a little
// KV cache), prefill's FLOPs per token about twice the parameters, and the CPU's read ceiling
// was measured in the run.
TEST(CliBench, RowsStandAgainstCeilingsMeasuredInTheRun) {
    const CliResult r = run_cli({"bench", "--model", fixture_dir("llama_mha"), "-p", "16", "-n",
                                 "4", "-r", "2", "--output", "json"});
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), 2);
    auto number = [](const cJSON *row, const char *key) {
        return cJSON_GetObjectItem(row, key)->valuedouble;
    };
    const cJSON *pp = cJSON_GetArrayItem(rows, 0), *tg = cJSON_GetArrayItem(rows, 1);
    const double params = number(pp, "n_params"), bytes = number(tg, "weight_bytes");
    const double flops_per_token = number(pp, "achieved_flops") / number(pp, "mean_tps");
    EXPECT_GT(flops_per_token, 2.0 * params * 0.3);
    EXPECT_LT(flops_per_token, 2.0 * params);
    const double bytes_per_token = number(tg, "achieved_bytes_per_s") / number(tg, "mean_tps");
    EXPECT_GT(bytes_per_token, 0.5 * bytes);
    EXPECT_LT(bytes_per_token, 1.5 * bytes);
    EXPECT_GT(number(tg, "ceiling_bytes_per_s"), 1e8);
    EXPECT_EQ(number(tg, "ceiling_flops"), 0.0) << "the CPU has no GEMM ceiling to measure";
    cJSON_Delete(rows);
}

} // namespace

// ---- cinfer bench: the serving test (programs/bench_serve.c) ----------------------------------

namespace {

double number(const cJSON *row, const char *key) {
    const cJSON *item = cJSON_GetObjectItem(row, key);
    EXPECT_TRUE(cJSON_IsNumber(item)) << key;
    return cJSON_IsNumber(item) ? item->valuedouble : 0.0;
}

// What every row of the serving test must hold, whatever the workload: the rates are the counts
// over the duration, the percentiles ordered, the hit rate a ratio of its counts, the pool's
// figures consistent.
void expect_consistent_serving_row(const cJSON *row) {
    const double seconds = number(row, "seconds");
    const double requests = number(row, "requests"), prompt = number(row, "prompt_tokens"),
                 output = number(row, "output_tokens");
    ASSERT_GT(seconds, 0.0);
    EXPECT_NEAR(number(row, "requests_per_s"), requests / seconds, 1e-6 * requests / seconds);
    EXPECT_NEAR(number(row, "output_tokens_per_s"), output / seconds, 1e-6 * output / seconds);
    EXPECT_NEAR(number(row, "total_tokens_per_s"), (prompt + output) / seconds,
                1e-6 * (prompt + output) / seconds);
    for (const char *metric : {"ttft", "tpot"}) {
        SCOPED_TRACE(metric);
        const std::string m = metric;
        const double p50 = number(row, (m + "_p50_ms").c_str()),
                     p90 = number(row, (m + "_p90_ms").c_str()),
                     p99 = number(row, (m + "_p99_ms").c_str());
        EXPECT_GT(p50, 0.0);
        EXPECT_LE(p50, p90);
        EXPECT_LE(p90, p99);
        EXPECT_LE(p99, 1e3 * seconds);
    }
    const double queried = number(row, "prompt_tokens_queried"),
                 hit = number(row, "prompt_tokens_hit");
    const double rate = number(row, "prefix_hit_rate");
    EXPECT_GE(rate, 0.0);
    EXPECT_LE(rate, 1.0);
    EXPECT_LE(hit, queried);
    if (queried > 0) {
        EXPECT_NEAR(rate, hit / queried, 1e-9);
    }
    EXPECT_GT(number(row, "peak_kv_blocks"), 0.0);
    EXPECT_LE(number(row, "peak_kv_blocks"), number(row, "kv_blocks"));
    EXPECT_EQ(number(row, "kv_capacity_tokens"),
              number(row, "kv_blocks") * number(row, "block_size"));
    EXPECT_GE(number(row, "preemptions"), 0.0);
    EXPECT_GT(number(row, "steps"), 0.0);
}

std::vector<std::string> serve_args(std::vector<std::string> extra) {
    std::vector<std::string> args = {"bench", "--model", fixture_dir("llama_mha"), "-t", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// 12 requests of 12 + 6 tokens, a row per in-flight cap: every request produces exactly its
// output length (ignore_eos), and the same workload runs under every cap.
TEST(CliBenchServe, JsonHasARowPerMaxSeqsWithConsistentFigures) {
    const CliResult r =
        run_cli(serve_args({"--num-prompts", "12", "--input-len", "12", "--output-len", "6",
                            "--max-seqs", "1,4,16", "--output", "json"}));
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << "stdout is not JSON:\n" << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), 3);
    const int caps[3] = {1, 4, 16};
    for (int i = 0; i < 3; i++) {
        const cJSON *row = cJSON_GetArrayItem(rows, i);
        SCOPED_TRACE("max_seqs " + std::to_string(caps[i]));
        EXPECT_EQ(number(row, "max_seqs"), caps[i]);
        EXPECT_EQ(number(row, "requests"), 12);
        EXPECT_EQ(number(row, "prompt_tokens"), 12 * 12);
        EXPECT_EQ(number(row, "output_tokens"), 12 * 6);
        EXPECT_STREQ(cJSON_GetObjectItem(row, "request_rate")->valuestring, "inf");
        EXPECT_STREQ(cJSON_GetObjectItem(row, "backend")->valuestring, "cpu");
        EXPECT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(row, "dataset")));
        // one request at a time holds one request's blocks: 18 tokens in blocks of 16
        if (caps[i] == 1) {
            EXPECT_EQ(number(row, "peak_kv_blocks"), 2);
        }
        expect_consistent_serving_row(row);
    }
    cJSON_Delete(rows);
}

// Drawn lengths and Poisson arrivals: the same seed gives the same workload (token counts) under
// every cap, and the lengths stay within the range.
TEST(CliBenchServe, DrawsLengthsInTheRangeAndArrivalsAtTheRate) {
    const CliResult r = run_cli(serve_args(
        {"--num-prompts", "12", "--input-len", "10", "--output-len", "8", "--range-ratio", "0.5",
         "--request-rate", "2000", "--max-seqs", "2,8", "--seed", "7", "--output", "json"}));
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *row = cJSON_GetArrayItem(rows, i);
        EXPECT_EQ(number(row, "request_rate"), 2000);
        EXPECT_GE(number(row, "prompt_tokens"), 12 * 5);
        EXPECT_LE(number(row, "prompt_tokens"), 12 * 15);
        EXPECT_GE(number(row, "output_tokens"), 12 * 4);
        EXPECT_LE(number(row, "output_tokens"), 12 * 12);
        EXPECT_EQ(number(row, "prompt_tokens"),
                  number(cJSON_GetArrayItem(rows, 0), "prompt_tokens"));
        EXPECT_EQ(number(row, "output_tokens"),
                  number(cJSON_GetArrayItem(rows, 0), "output_tokens"));
        expect_consistent_serving_row(row);
    }
    cJSON_Delete(rows);
}

TEST(CliBenchServe, CsvAndMarkdownHoldARowPerMaxSeqs) {
    const auto args = [](const std::string &format) {
        return serve_args({"--num-prompts", "6", "--input-len", "8", "--output-len", "3",
                           "--max-seqs", "1,3", "--output", format});
    };
    const CliResult csv = run_cli(args("csv"));
    ASSERT_TRUE(exits_with(csv, 0));
    std::vector<std::string> lines;
    std::istringstream in(csv.out);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    ASSERT_EQ(lines.size(), 3u) << csv.out;
    EXPECT_TRUE(contains_all(lines[0],
                             {"requests,max_seqs,", "requests_per_s", "output_tokens_per_s",
                              "total_tokens_per_s", "ttft_p50_ms", "tpot_p99_ms", "peak_kv_blocks",
                              "prefix_hit_rate", "preemptions", "kv_capacity_tokens"}));
    const size_t columns = std::count(lines[0].begin(), lines[0].end(), ',');
    for (int i = 1; i <= 2; i++) {
        EXPECT_EQ((size_t)std::count(lines[i].begin(), lines[i].end(), ','), columns) << lines[i];
        EXPECT_NE(lines[i].find(",6," + std::to_string(i == 1 ? 1 : 3) + ","), std::string::npos)
            << lines[i];
    }

    const CliResult md = run_cli(args("md"));
    ASSERT_TRUE(exits_with(md, 0));
    std::istringstream table(md.out);
    std::vector<std::string> rows;
    for (std::string line; std::getline(table, line);) rows.push_back(line);
    ASSERT_EQ(rows.size(), 4u) << md.out;
    EXPECT_TRUE(contains_all(rows[0], {"req/s", "TTFT", "TPOT", "in flight", "KV pool tokens"}));
    EXPECT_NE(rows[2].find("| 6 | 1 |"), std::string::npos) << rows[2];
    EXPECT_NE(rows[3].find("| 6 | 3 |"), std::string::npos) << rows[3];
}

// A JSONL dataset: given prompts and drawn ones, blank lines skipped; two prompts that share
// their first 32 tokens, run one after the other, share two KV blocks of 16.
TEST(CliBenchServe, RunsAJsonlDataset) {
    TempDir dir;
    std::string shared;
    for (int i = 0; i < 32; i++) shared += std::to_string(1 + i % 100) + ", ";
    const std::string path = dir.file("requests.jsonl");
    cinfer_test::write_file(path, "{\"prompt_tokens\": [" + shared +
                                      "5, 6], \"output_len\": 4}\n"
                                      "{\"prompt_tokens\": [" +
                                      shared +
                                      "7], \"output_len\": 3}\n"
                                      "\n"
                                      "{\"prompt_len\": 10, \"output_len\": 5}\n"
                                      "{\"output_len\": 2, \"prompt_len\": 20}\n");
    const CliResult r = run_cli(serve_args(
        {"--dataset", path, "--max-seqs", "1", "--block-size", "16", "--output", "json"}));
    ASSERT_TRUE(exits_with(r, 0));
    cJSON *rows = cJSON_Parse(r.out.c_str());
    ASSERT_NE(rows, nullptr) << r.out;
    ASSERT_EQ(cJSON_GetArraySize(rows), 1);
    const cJSON *row = cJSON_GetArrayItem(rows, 0);
    EXPECT_STREQ(cJSON_GetObjectItem(row, "dataset")->valuestring, path.c_str());
    EXPECT_EQ(number(row, "requests"), 4);
    EXPECT_EQ(number(row, "prompt_tokens"), 34 + 33 + 10 + 20);
    EXPECT_EQ(number(row, "output_tokens"), 4 + 3 + 5 + 2);
    EXPECT_EQ(number(row, "prompt_tokens_hit"), 32);
    expect_consistent_serving_row(row);
    cJSON_Delete(rows);

    // --num-prompts takes the first lines
    const CliResult first =
        run_cli(serve_args({"--dataset", path, "--num-prompts", "3", "--output", "json"}));
    ASSERT_TRUE(exits_with(first, 0));
    rows = cJSON_Parse(first.out.c_str());
    ASSERT_NE(rows, nullptr) << first.out;
    EXPECT_EQ(number(cJSON_GetArrayItem(rows, 0), "output_tokens"), 4 + 3 + 5);
    cJSON_Delete(rows);
}

// Every bad line: exit 1, nothing on stdout, a message naming the file, the line and the field.
TEST(CliBenchServe, RejectsMalformedDatasetsNamingLineAndField) {
    TempDir dir;
    const std::string path = dir.file("bad.jsonl");
    const std::string good = "{\"prompt_len\": 4, \"output_len\": 2}\n";
    const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
        {"{\"prompt_len\": 4, \"output_len\": 2", {":2:", "not JSON"}},
        {"[4, 2]", {":2:", "expected a JSON object"}},
        {"{\"prompt_len\": -3, \"output_len\": 2}", {":2:", "prompt_len", "-3"}},
        {"{\"prompt_len\": 2.5, \"output_len\": 2}", {":2:", "prompt_len", "integer"}},
        {"{\"prompt_len\": 4, \"output_len\": 0}", {":2:", "output_len", ">= 1"}},
        {"{\"prompt_len\": 4}", {":2:", "output_len", "missing"}},
        {"{\"output_len\": 4}", {":2:", "prompt_len", "prompt_tokens", "neither"}},
        {"{\"prompt_len\": 4, \"prompt_tokens\": [1], \"output_len\": 2}", {":2:", "both"}},
        {"{\"prompt_len\": 4, \"output_len\": 2, \"max_tokens\": 9}", {":2:", "max_tokens"}},
        {"{\"prompt_tokens\": [], \"output_len\": 2}", {":2:", "prompt_tokens", "non-empty"}},
        {"{\"prompt_tokens\": [1, \"a\"], \"output_len\": 2}",
         {":2:", "prompt_tokens", "element 1"}},
        {"{\"prompt_tokens\": [1, 128], \"output_len\": 2}", {":2:", "element 1", "vocab_size"}},
        {"{\"prompt_len\": 60, \"output_len\": 10}", {":2:", "70 tokens", "max_model_len = 64"}},
    };
    for (const auto &[line, parts] : cases) {
        SCOPED_TRACE(line);
        cinfer_test::write_file(path, good + line + "\n");
        const CliResult r = run_cli(serve_args({"--dataset", path}));
        EXPECT_TRUE(exits_with(r, kExitError));
        EXPECT_EQ(r.out, "");
        EXPECT_TRUE(contains_all(r.err, {path}));
        for (const auto &part : parts) EXPECT_TRUE(contains_all(r.err, {part}));
    }
    cinfer_test::write_file(path, "\n\n");
    CliResult r = run_cli(serve_args({"--dataset", path}));
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {path, "no requests"}));
    cinfer_test::write_file(path, good);
    r = run_cli(serve_args({"--dataset", path, "--num-prompts", "2"}));
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {path, "holds 1 requests", "--num-prompts"}));
    r = run_cli(serve_args({"--dataset", dir.file("missing.jsonl")}));
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {"missing.jsonl", "No such file"}));
}

TEST(CliBenchServe, RejectsBadOptionsAsMisuse) {
    for (const std::vector<std::string> &extra : std::vector<std::vector<std::string>>{
             {"--num-prompts", "0"},
             {"--num-prompts", "-4"},
             {"--num-prompts", "4", "--input-len", "-1"},
             {"--num-prompts", "4", "--output-len", "0"},
             {"--num-prompts", "4", "--range-ratio", "1"},
             {"--num-prompts", "4", "--request-rate", "0"},
             {"--num-prompts", "4", "--request-rate", "fast"},
             {"--num-prompts", "4", "--max-seqs", "0,8"},
             {"--num-prompts", "4", "--max-seqs", "1,513"},
             {"--num-prompts", "4", "--kv-cache-bytes", "4X"},
             {"--num-prompts", "4", "--gpu-memory-utilization", "1.5"},
             {"--num-prompts", "4", "--block-size", "0"},
             {"--num-prompts", "4", "-p", "16"},
             {"--num-prompts", "4", "--input-len", "60", "--output-len", "8"},
             {"--num-prompts", "4", "--input-len", "8", "--max-model-len", "65"},
             {"--max-seqs", "4"},
             {"--num-prompts"},
         }) {
        const CliResult r = run_cli(serve_args(extra));
        EXPECT_TRUE(exits_with(r, kExitUsage)) << extra.back();
        EXPECT_EQ(r.out, "");
        EXPECT_NE(r.err.find("cinfer bench:"), std::string::npos) << r.err;
    }
    // a pool too small for one request: the engine's refusal, passed through
    const CliResult r = run_cli(serve_args({"--num-prompts", "2", "--input-len", "40",
                                            "--output-len", "4", "--kv-cache-bytes", "16K"}));
    EXPECT_TRUE(exits_with(r, kExitError));
    EXPECT_TRUE(contains_all(r.err, {"request 0", "44 tokens", "KV cache holds"}));
    EXPECT_EQ(r.out, "");
}

// inspect states the serving engine's pool with default options, as the API sizes it.
TEST(Cli, InspectReportsTheServingEnginesKvPool) {
    const CliResult r = run_cli({"inspect", "--model", kModel});
    ASSERT_TRUE(exits_with(r, 0));
    ApiModel api;
    int64_t bytes = 0, tokens = 0;
    ASSERT_EQ(cinfer_engine_kv_capacity(api.model, nullptr, &bytes, &tokens), CINFER_OK)
        << cinfer_last_error();
    const size_t at = r.out.find("\n  KV pool ");
    ASSERT_NE(at, std::string::npos) << r.out;
    const std::string line = r.out.substr(at + 1, r.out.find('\n', at + 1) - at - 1);
    EXPECT_TRUE(contains_all(line, {std::to_string(tokens) + " tokens in ", "default options"}));
}

} // namespace
