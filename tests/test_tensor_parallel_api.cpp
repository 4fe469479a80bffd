// Tensor parallelism through the public API (docs/TENSOR_PARALLEL.md): a model loaded with
// tensor_parallel = tp runs its ranks behind one cinfer_model, session and engine, as threads of
// this process or as worker processes (tests/tp_worker.c) joined over TCP. The
// bar is the foundations' (tests/test_tensor_parallel.cpp): greedy ids identical to the unsharded
// model's, logits within 1e-5 of them (scaled by the largest value where values exceed 1), on a
// Llama fixture, a DiffLlama fixture and the bundled model; through cinfer_generate, a batched
// session and the engine's paged path with several requests at once; and `cinfer run --tp`.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "tensor_parallel_test.h"

extern "C" {
#include "cinfer.h"
}

using namespace cinfer_test;

namespace {

// max |a - b| / max(1, max |b|)
double scaled_difference(const std::vector<float> &a, const std::vector<float> &b) {
    double diff = 0.0, scale = 1.0;
    for (size_t i = 0; i < a.size(); i++) {
        diff = std::max(diff, (double)std::fabs(a[i] - b[i]));
        scale = std::max(scale, (double)std::fabs(b[i]));
    }
    return diff / scale;
}

extern "C" char **environ;

enum class Ranks { Threads, Processes };

// Worker processes for a model whose ranks are processes: started (tests/tp_worker.c) once rank 0
// listens, as the cinfer program's launcher starts them; each must exit 0 once rank 0 is freed.
struct Workers {
    std::string dir;
    int tp = 0;
    double timeout = 0.0;
    int start = 1; // the first rank started (a test may leave some out)
    std::vector<pid_t> pids;

    static void on_listening(const char *address, void *user) {
        Workers *w = static_cast<Workers *>(user);
        for (int rank = w->start; rank < w->tp; rank++) {
            const std::string rank_text = std::to_string(rank), tp_text = std::to_string(w->tp),
                              timeout_text = std::to_string(w->timeout);
            const char *argv[] = {CINFER_TP_WORKER, w->dir.c_str(),   rank_text.c_str(),
                                  tp_text.c_str(),  address,          timeout_text.c_str(),
                                  nullptr};
            pid_t pid = 0;
            if (posix_spawn(&pid, CINFER_TP_WORKER, nullptr, nullptr, const_cast<char **>(argv),
                            environ) == 0)
                w->pids.push_back(pid);
        }
    }
    // Exit statuses of every worker, waited for (they end once rank 0 tells them or goes).
    std::vector<int> wait_all() {
        std::vector<int> codes;
        for (pid_t pid : pids) {
            int status = 0;
            waitpid(pid, &status, 0);
            codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
        pids.clear();
        return codes;
    }
};

cinfer_load_options load_options(int tp, Ranks ranks, Workers *workers) {
    cinfer_load_options options{};
    options.backend = CINFER_BACKEND_CPU;
    options.n_threads = tp > 1 ? tp : 1; // one OpenMP thread per rank
    options.tensor_parallel = tp;
    if (ranks == Ranks::Processes && tp > 1) {
        options.tp_address = "127.0.0.1:0";
        options.tp_timeout_seconds = workers->timeout;
        options.tp_listening = Workers::on_listening;
        options.tp_listening_user = workers;
    }
    return options;
}

// The seed of random-weight cases: any, as long as the sharded and the whole model share it.
constexpr uint64_t kRandomSeed = 20261206;

struct Model {
    cinfer_model *model = nullptr;
    Workers workers;
    // random: the random weights of the model's config.json (cinfer_model_load_random), which each
    // rank draws only its part of (ranks as threads)
    Model(const std::string &name, int tp, Ranks ranks = Ranks::Threads, bool random = false) {
        workers.dir = model_dir(name);
        workers.tp = tp;
        const cinfer_load_options options = load_options(tp, ranks, &workers);
        const std::string config = workers.dir + "/config.json";
        EXPECT_EQ(random ? cinfer_model_load_random(config.c_str(), &options, kRandomSeed, &model)
                         : cinfer_model_load(workers.dir.c_str(), &options, &model),
                  CINFER_OK)
            << cinfer_last_error();
    }
    ~Model() {
        cinfer_model_free(model);
        for (int code : workers.wait_all()) EXPECT_EQ(code, 0) << "a worker process failed";
    }
};

// A TCP port nobody listens on now (the kernel's pick for port 0), for a command's --tp-address.
int free_tcp_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    int port = 0;
    if (bind(fd, (sockaddr *)&address, sizeof address) == 0 &&
        getsockname(fd, (sockaddr *)&address, &length) == 0)
        port = ntohs(address.sin_port);
    close(fd);
    return port;
}

std::vector<int32_t> prompt_of(int vocab, int n, int salt) {
    std::vector<int32_t> ids;
    for (int i = 0; i < n; i++) ids.push_back((int32_t)((i * 37 + salt * 11 + 3) % vocab));
    return ids;
}

struct Generated {
    std::vector<int32_t> ids;
    std::vector<float> prompt_logits;
};

int collect(void *user, int32_t token) {
    static_cast<std::vector<int32_t> *>(user)->push_back(token);
    return 0;
}

Generated generate(cinfer_model *model, const std::vector<int32_t> &prompt, int n_new) {
    Generated out;
    const int V = cinfer_model_get_info(model)->vocab_size;
    out.prompt_logits.resize(prompt.size() * (size_t)V);
    cinfer_session *session = nullptr;
    EXPECT_EQ(cinfer_session_create(model, 64, &session), CINFER_OK) << cinfer_last_error();
    if (!session) return out;
    cinfer_generate_params params{};
    params.max_new_tokens = n_new;
    params.ignore_eos = 1;
    cinfer_generate_stats stats{};
    EXPECT_EQ(cinfer_generate(session, prompt.data(), (int)prompt.size(), &params, collect,
                              &out.ids, out.prompt_logits.data(), &stats),
              CINFER_OK)
        << cinfer_last_error();
    cinfer_session_free(session);
    return out;
}

struct TpCase {
    std::string model;
    int tp;
    bool random = false; // the config's random weights rather than the checkpoint
    Ranks ranks = Ranks::Threads;
};

std::string case_name(const ::testing::TestParamInfo<TpCase> &info) {
    return info.param.model + "_tp" + std::to_string(info.param.tp) +
           (info.param.random ? "_random" : "") +
           (info.param.ranks == Ranks::Processes ? "_processes" : "");
}

class PublicApi : public ::testing::TestWithParam<TpCase> {};

TEST_P(PublicApi, ModelInfoDescribesTheWholeModel) {
    const TpCase &k = GetParam();
    Model whole(k.model, 1, Ranks::Threads, k.random), sharded(k.model, k.tp, k.ranks, k.random);
    ASSERT_TRUE(whole.model && sharded.model);
    const cinfer_model_info *w = cinfer_model_get_info(whole.model);
    const cinfer_model_info *s = cinfer_model_get_info(sharded.model);
    EXPECT_EQ(w->tensor_parallel, 1);
    EXPECT_EQ(s->tensor_parallel, k.tp);
    EXPECT_EQ(s->n_heads, w->n_heads);
    EXPECT_EQ(s->n_kv_heads, w->n_kv_heads);
    EXPECT_EQ(s->intermediate_size, w->intermediate_size);
    EXPECT_EQ(s->vocab_size, w->vocab_size);
    EXPECT_EQ(s->n_params, w->n_params);
    // every rank caches its own KV heads: replicated ones count once per rank that holds them
    EXPECT_GE(s->kv_bytes_per_token, w->kv_bytes_per_token);
}

TEST_P(PublicApi, GenerateGivesTheWholeModelsIdsAndLogits) {
    const TpCase &k = GetParam();
    Model whole(k.model, 1, Ranks::Threads, k.random), sharded(k.model, k.tp, k.ranks, k.random);
    ASSERT_TRUE(whole.model && sharded.model);
    const int V = cinfer_model_get_info(whole.model)->vocab_size;
    const std::vector<int32_t> prompt = prompt_of(V, 11, 1);
    const Generated a = generate(whole.model, prompt, 10);
    const Generated b = generate(sharded.model, prompt, 10);
    EXPECT_EQ(a.ids, b.ids);
    const double diff = scaled_difference(b.prompt_logits, a.prompt_logits);
    EXPECT_LE(diff, kTolerance);
    std::printf("%s tp %d%s: prompt logits within %.2g of the whole model's\n", k.model.c_str(),
                k.tp, k.random ? " (random)" : "", diff);
    // a second generation on a fresh session of the same model: the ranks' threads and groups
    // serve more than one session
    EXPECT_EQ(generate(sharded.model, prompt, 10).ids, a.ids);
}

// Sessions of one sharded model on two threads at once: their steps take turns (the ranks share
// one communicator group), and each gives the whole model's ids.
TEST_P(PublicApi, SessionsOnTwoThreadsTakeTurns) {
    const TpCase &k = GetParam();
    Model whole(k.model, 1, Ranks::Threads, k.random), sharded(k.model, k.tp, k.ranks, k.random);
    ASSERT_TRUE(whole.model && sharded.model);
    const int V = cinfer_model_get_info(whole.model)->vocab_size;
    const std::vector<int32_t> first = prompt_of(V, 7, 4), second = prompt_of(V, 9, 6);
    Generated a, b;
    std::thread other([&] { b = generate(sharded.model, second, 6); });
    a = generate(sharded.model, first, 6);
    other.join();
    EXPECT_EQ(a.ids, generate(whole.model, first, 6).ids);
    EXPECT_EQ(b.ids, generate(whole.model, second, 6).ids);
}

// Two sequences in lockstep, in chunks (the session splits what does not fit one pass), every
// position's logits.
TEST_P(PublicApi, BatchedSessionGivesTheWholeModelsLogits) {
    const TpCase &k = GetParam();
    Model whole(k.model, 1, Ranks::Threads, k.random), sharded(k.model, k.tp, k.ranks, k.random);
    ASSERT_TRUE(whole.model && sharded.model);
    const int V = cinfer_model_get_info(whole.model)->vocab_size, n_seqs = 2, n = 9;
    std::vector<int32_t> tokens = prompt_of(V, n, 2), second = prompt_of(V, n, 5);
    tokens.insert(tokens.end(), second.begin(), second.end());
    std::vector<float> logits[2];
    for (int which = 0; which < 2; which++) {
        cinfer_session *session = nullptr;
        ASSERT_EQ(
            cinfer_session_create_batch(which ? sharded.model : whole.model, 32, n_seqs, &session),
            CINFER_OK)
            << cinfer_last_error();
        logits[which].resize((size_t)n_seqs * n * V);
        EXPECT_EQ(cinfer_session_forward_batch(session, tokens.data(), n, CINFER_LOGITS_ALL,
                                               logits[which].data()),
                  CINFER_OK)
            << cinfer_last_error();
        // a refused input leaves the ranks usable: the next call runs
        const int32_t bad[2] = {V, 0};
        EXPECT_EQ(cinfer_session_forward_batch(session, bad, 1, CINFER_LOGITS_NONE, nullptr),
                  CINFER_ERR_ARGUMENT);
        int32_t next[2] = {-1, -1};
        const int32_t step[2] = {tokens[n - 1], tokens[2 * n - 1]};
        EXPECT_EQ(cinfer_session_decode_greedy(session, step, next), CINFER_OK)
            << cinfer_last_error();
        logits[which].push_back((float)next[0]);
        logits[which].push_back((float)next[1]);
        cinfer_session_free(session);
    }
    EXPECT_LE(scaled_difference(logits[1], logits[0]), kTolerance);
    EXPECT_EQ(logits[1].back(), logits[0].back());
}

struct Served {
    std::vector<std::vector<int32_t>> ids;
    std::vector<std::vector<float>> logprobs;
    std::vector<float> prompt_logits;
};

// Three requests at once through the engine's paged path, in small blocks and chunks: one asks
// for its prompt's logits, one for logprobs; they share a prefix (the prefix cache).
Served serve(cinfer_model *model) {
    Served out;
    const int V = cinfer_model_get_info(model)->vocab_size;
    cinfer_engine_options options{};
    options.block_size = 4;
    options.max_batched_tokens = 8;
    options.max_seqs = 4;
    options.max_model_len = 48;
    cinfer_engine *engine = nullptr;
    EXPECT_EQ(cinfer_engine_create(model, &options, &engine), CINFER_OK) << cinfer_last_error();
    if (!engine) return out;
    std::vector<std::vector<int32_t>> prompts = {prompt_of(V, 13, 1), prompt_of(V, 13, 1),
                                                 prompt_of(V, 6, 3)};
    prompts[1].push_back(5);
    out.prompt_logits.resize(prompts[0].size() * (size_t)V);
    std::vector<uint64_t> ids;
    for (size_t i = 0; i < prompts.size(); i++) {
        cinfer_request_params params{};
        params.max_new_tokens = 9;
        params.ignore_eos = 1;
        if (i == 0) params.prompt_logits = out.prompt_logits.data();
        if (i == 2) params.logprobs = 1, params.top_logprobs = 2;
        uint64_t id = 0;
        EXPECT_EQ(cinfer_engine_add_request(engine, prompts[i].data(), (int)prompts[i].size(),
                                            &params, &id),
                  CINFER_OK)
            << cinfer_last_error();
        ids.push_back(id);
    }
    out.ids.resize(prompts.size());
    out.logprobs.resize(prompts.size());
    while (cinfer_engine_has_work(engine)) {
        const cinfer_request_output *outputs = nullptr;
        int n = 0;
        if (cinfer_engine_step(engine, &outputs, &n) != CINFER_OK) {
            ADD_FAILURE() << cinfer_last_error();
            break;
        }
        for (int o = 0; o < n; o++) {
            const size_t i = std::find(ids.begin(), ids.end(), outputs[o].request_id) - ids.begin();
            if (outputs[o].token < 0) continue;
            out.ids[i].push_back(outputs[o].token);
            if (i == 2) {
                out.logprobs[i].push_back(outputs[o].logprob);
                for (int t = 0; t < outputs[o].n_top; t++)
                    out.logprobs[i].push_back(outputs[o].top_logprobs[t]);
            }
        }
    }
    cinfer_engine_free(engine);
    return out;
}

TEST_P(PublicApi, EngineServesTheWholeModelsTokens) {
    const TpCase &k = GetParam();
    Model whole(k.model, 1, Ranks::Threads, k.random), sharded(k.model, k.tp, k.ranks, k.random);
    ASSERT_TRUE(whole.model && sharded.model);
    const Served a = serve(whole.model), b = serve(sharded.model);
    ASSERT_EQ(a.ids.size(), 3u);
    EXPECT_EQ(a.ids, b.ids);
    for (const auto &ids : a.ids) EXPECT_EQ(ids.size(), 9u);
    EXPECT_LE(scaled_difference(b.prompt_logits, a.prompt_logits), kTolerance);
    ASSERT_EQ(a.logprobs[2].size(), b.logprobs[2].size());
    // log-softmax of logits within 1e-5: within a few times that
    EXPECT_LE(scaled_difference(b.logprobs[2], a.logprobs[2]), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, PublicApi,
                         ::testing::Values(TpCase{"llama_gqa_llama3", 2},
                                           TpCase{"llama_gqa_llama3", 4},
                                           TpCase{"diffllama_gqa8", 2}, TpCase{"diffllama_gqa8", 4},
                                           TpCase{"diffllama_tiny", 2},
                                           TpCase{"diffllama_tiny", 4},
                                           TpCase{"llama_gqa_llama3", 2, false, Ranks::Processes},
                                           TpCase{"diffllama_gqa8", 4, false, Ranks::Processes},
                                           TpCase{"diffllama_tiny", 2, false, Ranks::Processes}),
                         case_name);

// Random weights, sharded as a checkpoint is: a Llama with GQA (tp 4 above its 2 KV heads) and a
// DiffLlama.
INSTANTIATE_TEST_SUITE_P(RandomWeights, PublicApi,
                         ::testing::Values(TpCase{"llama_gqa_llama3", 2, true},
                                           TpCase{"llama_gqa_llama3", 4, true},
                                           TpCase{"diffllama_gqa8", 2, true},
                                           TpCase{"diffllama_gqa8", 4, true}),
                         case_name);

// ---- ranks as processes -----------------------------------------------------------------------

// Rank 0's socket communicator sums in rank order, as the threads' does: the same bits.
TEST(TensorParallelProcesses, GiveTheThreadsBitsExactly) {
    for (const std::string name : {"llama_gqa_llama3", "diffllama_gqa8"}) {
        Model threads(name, 4), processes(name, 4, Ranks::Processes);
        ASSERT_TRUE(threads.model && processes.model);
        const int V = cinfer_model_get_info(threads.model)->vocab_size;
        const std::vector<int32_t> prompt = prompt_of(V, 12, 7);
        const Generated a = generate(threads.model, prompt, 8), b = generate(processes.model, prompt, 8);
        EXPECT_EQ(a.ids, b.ids) << name;
        EXPECT_EQ(a.prompt_logits, b.prompt_logits) << name;
        EXPECT_EQ(cinfer_model_get_info(processes.model)->kv_bytes_per_token,
                  cinfer_model_get_info(threads.model)->kv_bytes_per_token);
        EXPECT_EQ(cinfer_model_get_info(processes.model)->tensor_parallel, 4);
    }
}

// A worker that dies: the next call fails at once, naming a rank, instead of waiting; so does
// every call after it; freeing the model does not hang.
TEST(TensorParallelProcesses, AKilledWorkerFailsTheNextCallQuickly) {
    Model model("llama_gqa_llama3", 4, Ranks::Processes);
    ASSERT_TRUE(model.model);
    ASSERT_EQ(model.workers.pids.size(), 3u);
    const int V = cinfer_model_get_info(model.model)->vocab_size;
    const std::vector<int32_t> prompt = prompt_of(V, 6, 2);
    cinfer_session *session = nullptr;
    ASSERT_EQ(cinfer_session_create(model.model, 32, &session), CINFER_OK) << cinfer_last_error();
    std::vector<float> logits(V);
    ASSERT_EQ(cinfer_session_forward(session, prompt.data(), 6, CINFER_LOGITS_LAST, logits.data()),
              CINFER_OK)
        << cinfer_last_error();
    kill(model.workers.pids[1], SIGKILL); // rank 2
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(cinfer_session_forward(session, prompt.data(), 1, CINFER_LOGITS_LAST, logits.data()),
              CINFER_ERR_COMM);
    const std::string message = cinfer_last_error();
    EXPECT_NE(message.find("rank"), std::string::npos) << message;
    EXPECT_EQ(cinfer_session_forward(session, prompt.data(), 1, CINFER_LOGITS_LAST, logits.data()),
              CINFER_ERR_COMM);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 30.0) << message;
    std::printf("a killed rank 2 failed the call in %.2f s: %s\n", seconds, message.c_str());
    cinfer_session_free(session);
    cinfer_model_free(model.model);
    model.model = nullptr;
    const std::vector<int> codes = model.workers.wait_all();
    ASSERT_EQ(codes.size(), 3u);
    EXPECT_EQ(codes[1], 128 + SIGKILL);
    EXPECT_NE(codes[0], 0); // the others saw their group fail
}

// Workers that never come: the load fails within the timeout, naming who did not join.
TEST(TensorParallelProcesses, AWorkerThatNeverJoinsFailsTheLoad) {
    Workers workers;
    workers.dir = fixture_dir("llama_gqa_llama3");
    workers.tp = 4;
    workers.timeout = 1.5;
    workers.start = 3; // ranks 1 and 2 are never started
    const cinfer_load_options options = load_options(4, Ranks::Processes, &workers);
    cinfer_model *model = nullptr;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(cinfer_model_load(workers.dir.c_str(), &options, &model), CINFER_ERR_COMM);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(model, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank(s) 1, 2", "never joined"}))
        << cinfer_last_error();
    EXPECT_LT(seconds, 10.0);
    for (int code : workers.wait_all()) EXPECT_NE(code, 0); // rank 3 lost its rank 0
}

// A worker's own refusal reaches rank 0 (here rank 0's checks pass first, so a worker that
// fails its load is made one: its checkpoint folder does not exist).
TEST(TensorParallelProcesses, AWorkersLoadErrorIsRank0s) {
    Workers workers;
    workers.dir = fixture_dir("llama_gqa_llama3") + "/no-such-folder";
    workers.tp = 2;
    const cinfer_load_options options = load_options(2, Ranks::Processes, &workers);
    cinfer_model *model = nullptr;
    EXPECT_NE(cinfer_model_load(fixture_dir("llama_gqa_llama3").c_str(), &options, &model),
              CINFER_OK);
    EXPECT_EQ(model, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tensor-parallel rank 1", "no-such-folder"}))
        << cinfer_last_error();
    for (int code : workers.wait_all()) EXPECT_EQ(code, 1);
}

TEST(TensorParallelProcesses, WorkerRefusesBadArguments) {
    cinfer_load_options options{};
    options.tensor_parallel = 2;
    EXPECT_EQ(cinfer_tp_worker_run(fixture_dir("llama_gqa_llama3").c_str(), &options, 1),
              CINFER_ERR_ARGUMENT); // no address
    options.tp_address = "127.0.0.1:1";
    EXPECT_EQ(cinfer_tp_worker_run(fixture_dir("llama_gqa_llama3").c_str(), &options, 2),
              CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank 2", "1 .. 1"}));
}

TEST(TensorParallelLoad, RefusalsNameTheNumbers) {
    cinfer_load_options options{};
    options.backend = CINFER_BACKEND_CPU;
    options.tensor_parallel = 3;
    cinfer_model *model = nullptr;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_gqa_llama3").c_str(), &options, &model),
              CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tp = 3", "num_attention_heads = 8"}));
    EXPECT_EQ(model, nullptr);
    options.tensor_parallel = -1;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_gqa_llama3").c_str(), &options, &model),
              CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tensor_parallel = -1"}));
    // random weights are split as a checkpoint is, and refused with the same numbers
    const std::string config = fixture_dir("llama_gqa_llama3") + "/config.json";
    options.tensor_parallel = 3;
    EXPECT_EQ(cinfer_model_load_random(config.c_str(), &options, 1, &model), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"config.json", "tp = 3", "num_attention_heads = 8"}));
    EXPECT_EQ(model, nullptr);
    // refused before any device is asked for, so the same with or without a GPU
    options.tensor_parallel = 2;
    options.backend = CINFER_BACKEND_CUDA;
    EXPECT_EQ(cinfer_model_load(fixture_dir("llama_gqa_llama3").c_str(), &options, &model),
              CINFER_ERR_UNSUPPORTED);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tensor_parallel = 2", "one process per GPU",
                                                   "tp_address"}));
    EXPECT_EQ(cinfer_model_load_random(config.c_str(), &options, 1, &model),
              CINFER_ERR_UNSUPPORTED);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tensor_parallel = 2", "one process per GPU"}));
}

// ---- the command line -------------------------------------------------------------------------

TEST(TensorParallelCli, RunPrintsTheSameIds) {
    for (const std::string name : {"llama_gqa_llama3", "diffllama_tiny"}) {
        const std::vector<std::string> args = {
            "run", "--model",      model_dir(name), "--tokens", "1 5 9 20 33 7", "--max-new-tokens",
            "12",  "--ignore-eos", "--threads",     "2"};
        const CliResult whole = run_cli(args);
        ASSERT_EQ(whole.exit_code, 0) << whole.err;
        for (const std::string tp : {"2", "4"}) {
            std::vector<std::string> sharded = args;
            sharded.insert(sharded.end(), {"--tp", tp});
            const CliResult r = run_cli(sharded);
            EXPECT_EQ(r.exit_code, 0) << r.err;
            EXPECT_EQ(r.out, whole.out) << name << " --tp " << tp;
        }
    }
}

// The launcher: --tp-ranks processes starts the workers as copies of the command; --nnodes and
// --node-rank split the ranks over "nodes" (two commands here, on one machine, as on two).
TEST(TensorParallelCli, ProcessRanksPrintTheSameIds) {
    const std::vector<std::string> args = {"run", "--model", kBundledModel, "--tokens",
                                           "1 5 9 20 33 7", "--max-new-tokens", "12",
                                           "--ignore-eos", "--threads", "2"};
    const CliResult whole = run_cli(args);
    ASSERT_EQ(whole.exit_code, 0) << whole.err;
    std::vector<std::string> processes = args;
    processes.insert(processes.end(), {"--tp", "4", "--tp-ranks", "processes"});
    const CliResult r = run_cli(processes);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, whole.out);

    // two nodes of 2 ranks: node 1 runs ranks 2 and 3 and prints nothing
    const std::string address = "127.0.0.1:" + std::to_string(free_tcp_port());
    std::vector<std::string> node0 = args, node1 = args;
    node0.insert(node0.end(), {"--tp", "4", "--nnodes", "2", "--node-rank", "0", "--tp-address",
                               address});
    node1.insert(node1.end(), {"--tp", "4", "--nnodes", "2", "--node-rank", "1", "--tp-address",
                               address});
    CliResult second;
    std::thread other([&] { second = run_cli(node1); });
    const CliResult first = run_cli(node0);
    other.join();
    EXPECT_EQ(first.exit_code, 0) << first.err;
    EXPECT_EQ(first.out, whole.out);
    EXPECT_EQ(second.exit_code, 0) << second.err;
    EXPECT_EQ(second.out, "");
}

// The state letter of a process in /proc ('Z': a zombie, ended), or 0 when it is gone.
char process_state(pid_t pid) {
    FILE *f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return 0;
    char state = 0;
    if (std::fscanf(f, "%*d (%*[^)]) %c", &state) != 1) state = 0;
    std::fclose(f);
    return state;
}

// The children of pid, from /proc/PID/task/PID/children.
std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> children;
    const std::string path =
        "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children";
    FILE *f = std::fopen(path.c_str(), "r");
    if (!f) return children;
    int child;
    while (std::fscanf(f, "%d", &child) == 1) children.push_back(child);
    std::fclose(f);
    return children;
}

// Rank 0 killed while its worker computes: the worker sees the connection close (in its
// collective on the CPU; through its watchdog, which aborts the communicator, where NCCL's
// collectives would wait on the GPU) and ends by itself with an error.
TEST(TensorParallelCli, WorkersEndWhenRank0Dies) {
    const std::string cli = CINFER_CLI, dir = kBundledModel;
    const char *argv[] = {cli.c_str(), "run", "--model", dir.c_str(), "--tokens", "1 5 9",
                          "--max-new-tokens", "19990", "--ignore-eos", "--ctx-size",
                          "20000", "--tp", "2", "--tp-ranks", "processes", "--threads", "2",
                          nullptr};
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t rank0 = 0;
    ASSERT_EQ(posix_spawn(&rank0, cli.c_str(), &files, nullptr, const_cast<char **>(argv),
                          environ),
              0);
    posix_spawn_file_actions_destroy(&files);
    std::vector<pid_t> workers;
    for (int i = 0; i < 200 && workers.empty(); i++) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        workers = children_of(rank0);
    }
    ASSERT_EQ(workers.size(), 1u);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500)); // loaded, generating
    kill(rank0, SIGKILL);
    int status = 0;
    waitpid(rank0, &status, 0);
    const auto start = std::chrono::steady_clock::now();
    char state = process_state(workers[0]);
    while (state != 0 && state != 'Z' &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        state = process_state(workers[0]);
    }
    EXPECT_TRUE(state == 0 || state == 'Z') << "the worker still runs 20 s after rank 0 died";
    if (state != 0 && state != 'Z') kill(workers[0], SIGKILL);
}

TEST(TensorParallelCli, LaunchRefusals) {
    const std::vector<std::string> args = {"run", "--model", fixture_dir("llama_gqa_llama3"),
                                           "--tokens", "1 2 3", "--tp", "4"};
    std::vector<std::string> uneven = args;
    uneven.insert(uneven.end(), {"--nnodes", "3", "--tp-address", "127.0.0.1:1"});
    const CliResult r = run_cli(uneven);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_TRUE(contains_all(r.err, {"--tp 4", "--nnodes 3"}));
    std::vector<std::string> no_address = args;
    no_address.insert(no_address.end(), {"--nnodes", "2"});
    const CliResult a = run_cli(no_address);
    EXPECT_EQ(a.exit_code, 2) << a.err;
    EXPECT_TRUE(contains_all(a.err, {"--tp-address"}));
    std::vector<std::string> bad = args;
    bad.insert(bad.end(), {"--tp-ranks", "fibers"});
    const CliResult b = run_cli(bad);
    EXPECT_EQ(b.exit_code, 2) << b.err;
    EXPECT_TRUE(contains_all(b.err, {"--tp-ranks", "fibers"}));
    const CliResult lone = run_cli({"run", "--model", fixture_dir("llama_gqa_llama3"), "--tokens",
                                    "1 2 3", "--node-rank", "1", "--nnodes", "2"});
    EXPECT_EQ(lone.exit_code, 2) << lone.err;
    EXPECT_TRUE(contains_all(lone.err, {"--node-rank", "--tp N"}));
    // a rank 0 whose own refusal (tp = 3 does not divide 8 heads) ends its workers too
    std::vector<std::string> refused = {"run", "--model", fixture_dir("llama_gqa_llama3"),
                                        "--tokens", "1 2 3", "--tp", "3", "--tp-ranks",
                                        "processes"};
    const CliResult c = run_cli(refused);
    EXPECT_EQ(c.exit_code, 1) << c.err;
    EXPECT_TRUE(contains_all(c.err, {"tp = 3", "num_attention_heads = 8"}));
}

TEST(TensorParallelCli, CompareHoldsTheShardedCpuModelToTheReference) {
    const CliResult r = run_cli({"compare", "--model", kBundledModel, "--tokens", "1 5 9 20 33 7",
                                 "--backend", "cpu", "--tp", "2", "--threads", "2"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_TRUE(contains_all(
        r.out, {"2 tensor-parallel ranks", "layer 5", "final norm", "logits", "6 of 6 positions"}));
    EXPECT_EQ(r.out.find("NO"), std::string::npos) << r.out;
    const CliResult alone =
        run_cli({"compare", "--model", kBundledModel, "--tokens", "1 5", "--backend", "cpu"});
    EXPECT_EQ(alone.exit_code, 2);
    EXPECT_TRUE(contains_all(alone.err, {"--tp N"}));
}

TEST(TensorParallelCli, BenchRowsSayTheRanks) {
    const CliResult r =
        run_cli({"bench", "--model", fixture_dir("llama_gqa_llama3"), "-p", "8", "-n", "4", "-r",
                 "1", "-t", "2", "--tp", "2", "--no-ceilings", "--output", "json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(contains_all(r.out, {"\"cpu tp 2\"", "\"tensor_parallel\":\t2"}));
    const CliResult serving = run_cli({"bench", "--model", fixture_dir("llama_gqa_llama3"),
                                       "--num-prompts", "4", "--input-len", "8", "--output-len",
                                       "4", "--max-seqs", "2", "-t", "2", "--tp", "4"});
    EXPECT_EQ(serving.exit_code, 0) << serving.err;
    EXPECT_TRUE(contains_all(serving.out, {"| cpu tp 4 |"}));
}

// A shape without a checkpoint (what benchmarks a 70B at tp 8): random weights, each rank drawing
// its part, in the lockstep rows and the serving benchmark.
TEST(TensorParallelCli, BenchRunsRandomWeightsOfAConfig) {
    const std::string config = fixture_dir("diffllama_gqa8") + "/config.json";
    const CliResult r =
        run_cli({"bench", "--config", config, "--random-weights", "-p", "8", "-n", "4", "-r", "1",
                 "-t", "2", "--tp", "2", "--no-ceilings", "--output", "json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(contains_all(r.out, {"\"cpu tp 2\"", "\"tensor_parallel\":\t2", "(random)"}));
    const CliResult serving = run_cli({"bench", "--config", config, "--random-weights",
                                       "--num-prompts", "4", "--input-len", "8", "--output-len",
                                       "4", "--max-seqs", "2", "-t", "2", "--tp", "4"});
    EXPECT_EQ(serving.exit_code, 0) << serving.err;
    EXPECT_TRUE(contains_all(serving.out, {"| cpu tp 4 |"}));
    const CliResult refused = run_cli({"bench", "--config", config, "--random-weights", "-p", "8",
                                       "-n", "2", "-r", "1", "--tp", "3", "--no-ceilings"});
    EXPECT_EQ(refused.exit_code, 1) << refused.err;
    EXPECT_TRUE(contains_all(refused.err, {"tp = 3", "8 head pairs"}));
}

// inspect --tp N: each rank's heads, weights and KV bytes per token, worked out without loading the
// ranks; a tp that cannot split the model is refused with the numbers before anything is printed.
TEST(TensorParallelCli, InspectShowsEachRanksShare) {
    const std::string dir = fixture_dir("llama_gqa_llama3");
    const CliResult r = run_cli({"inspect", "--model", dir, "--tp", "4"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    cinfer_model *model = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &model), CINFER_OK);
    for (int rank = 0; rank < 4; rank++) {
        cinfer_shard_memory memory{};
        ASSERT_EQ(cinfer_model_shard_memory(model, 4, rank, &memory), CINFER_OK);
        const size_t at = r.out.find("\n  rank " + std::to_string(rank) + " ");
        ASSERT_NE(at, std::string::npos) << r.out;
        const std::string line = r.out.substr(at + 1, r.out.find('\n', at + 1) - at - 1);
        // 192 B per token: 2 layers, K and V, 1 KV head of 16 in F32
        EXPECT_TRUE(contains_all(line, {"2 of 8 heads", "1 of 2 KV heads (replicated)",
                                        "intermediate 24 of 96", "KV cache per token 192.00 B"}));
        EXPECT_EQ(memory.kv_bytes_per_token, 192);
    }
    cinfer_model_free(model);
    const CliResult refused = run_cli({"inspect", "--model", dir, "--tp", "3"});
    EXPECT_EQ(refused.exit_code, 1);
    EXPECT_TRUE(contains_all(refused.err, {"config.json", "tp = 3", "num_attention_heads = 8"}));
    EXPECT_EQ(refused.out, "");
    const CliResult usage = run_cli({"inspect", "--model", dir, "--tp", "0"});
    EXPECT_EQ(usage.exit_code, 2);
    EXPECT_TRUE(contains_all(usage.err, {"--tp", "'0'"}));
    // without --tp, no rank lines
    const CliResult plain = run_cli({"inspect", "--model", dir});
    EXPECT_EQ(plain.out.find("tensor parallelism"), std::string::npos);
}

TEST(TensorParallelCli, RefusalsExitWithTheNumbers) {
    const CliResult r = run_cli(
        {"run", "--model", fixture_dir("llama_gqa_llama3"), "--tokens", "1 2 3", "--tp", "3"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_TRUE(contains_all(r.err, {"tp = 3", "num_attention_heads = 8"}));
    EXPECT_EQ(r.out, "");
    const CliResult usage =
        run_cli({"run", "--model", fixture_dir("llama_gqa_llama3"), "--tokens", "1", "--tp", "0"});
    EXPECT_EQ(usage.exit_code, 2) << usage.err;
    EXPECT_TRUE(contains_all(usage.err, {"--tp", "'0'"}));
}

} // namespace
