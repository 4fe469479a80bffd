// The continuous-batching engine: every request served among others gives exactly the tokens it
// gives alone through cinfer_generate (greedy and seeded samples alike, on the CPU bit for bit),
// however the steps chunk, share, preempt and abort; every block goes back to the pool.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

extern "C" {
#include "engine/engine.h"
}

using namespace cinfer_test;

namespace {

struct Model {
    cinfer_model *model = nullptr;
    int vocab = 0;
    explicit Model(const std::string &dir) {
        EXPECT_EQ(cinfer_model_load(dir.c_str(), nullptr, &model), CINFER_OK)
            << cinfer_last_error();
        if (model) vocab = cinfer_model_get_info(model)->vocab_size;
    }
    ~Model() { cinfer_model_free(model); }
};

struct Engine {
    cinfer_engine *engine = nullptr;
    Engine(cinfer_model *model, const cinfer_engine_options &options) {
        EXPECT_EQ(cinfer_engine_create(model, &options, &engine), CINFER_OK) << cinfer_last_error();
    }
    ~Engine() { cinfer_engine_free(engine); }
    operator cinfer_engine *() const { return engine; }
};

struct Request {
    std::vector<int32_t> prompt;
    std::vector<int32_t> stop;
    cinfer_request_params params{};
    int arrival_step = 0;
    int abort_after_outputs = -1; // abort once it has this many outputs (-1: never)
    int abort_at_step = -1;       // abort at this step whatever it has (-1: never)
};

struct Result {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<std::vector<int32_t>> top_tokens;
    cinfer_finish_reason reason = CINFER_FINISH_NONE;
    int n_finish_outputs = 0;
    int n_cached_prompt = 0;
    double queued_seconds = -2; // the last output's
};

cinfer_request_params params_of(Request &r) {
    cinfer_request_params p = r.params;
    p.stop_tokens = r.stop.empty() ? nullptr : r.stop.data();
    p.n_stop_tokens = (int)r.stop.size();
    return p;
}

// The request run alone, as cinfer generate runs it.
Result solo(cinfer_model *model, Request &r) {
    cinfer_session *s = nullptr;
    const int n_ctx = (int)r.prompt.size() + std::max(r.params.max_new_tokens, 1);
    EXPECT_EQ(cinfer_session_create(model, n_ctx, &s), CINFER_OK) << cinfer_last_error();
    cinfer_generate_params g{};
    g.max_new_tokens = r.params.max_new_tokens;
    g.sampling = r.params.sampling;
    g.ignore_eos = r.params.ignore_eos;
    g.stop_tokens = r.stop.empty() ? nullptr : r.stop.data();
    g.n_stop_tokens = (int)r.stop.size();
    Result result;
    cinfer_generate_stats stats{};
    EXPECT_EQ(cinfer_generate(
                  s, r.prompt.data(), (int)r.prompt.size(), &g,
                  [](void *user, int32_t token) {
                      static_cast<Result *>(user)->tokens.push_back(token);
                      return 0;
                  },
                  &result, nullptr, &stats),
              CINFER_OK)
        << cinfer_last_error();
    result.reason =
        stats.stop_reason == CINFER_STOP_EOS ? CINFER_FINISH_STOP : CINFER_FINISH_LENGTH;
    cinfer_session_free(s);
    return result;
}

// Steps the engine until every request has finished, submitting each at its arrival step.
std::vector<Result> serve(cinfer_engine *engine, std::vector<Request> &requests,
                          int max_steps = 100000) {
    std::vector<Result> results(requests.size());
    std::map<uint64_t, size_t> index_of;
    std::vector<uint64_t> ids(requests.size(), 0);
    size_t n_finished = 0;
    for (int step = 0; n_finished < requests.size() && step < max_steps; step++) {
        for (size_t i = 0; i < requests.size(); i++) {
            if (requests[i].arrival_step != step) continue;
            const cinfer_request_params p = params_of(requests[i]);
            EXPECT_EQ(cinfer_engine_add_request(engine, requests[i].prompt.data(),
                                                (int)requests[i].prompt.size(), &p, &ids[i]),
                      CINFER_OK)
                << cinfer_last_error();
            index_of[ids[i]] = i;
        }
        for (size_t i = 0; i < requests.size(); i++)
            if (ids[i] && requests[i].abort_at_step == step) cinfer_engine_abort(engine, ids[i]);
        const cinfer_request_output *outputs = nullptr;
        int n = 0;
        EXPECT_EQ(cinfer_engine_step(engine, &outputs, &n), CINFER_OK) << cinfer_last_error();
        for (int o = 0; o < n; o++) {
            const auto found = index_of.find(outputs[o].request_id);
            EXPECT_NE(found, index_of.end()) << "an output for an unknown request";
            if (found == index_of.end()) continue;
            Result &res = results[found->second];
            EXPECT_EQ(res.n_finish_outputs, 0) << "an output after the request finished";
            if (outputs[o].token >= 0) {
                res.tokens.push_back(outputs[o].token);
                res.logprobs.push_back(outputs[o].logprob);
                res.top_tokens.emplace_back(outputs[o].top_tokens,
                                            outputs[o].top_tokens + outputs[o].n_top);
            }
            res.n_cached_prompt = outputs[o].n_cached_prompt;
            res.queued_seconds = outputs[o].queued_seconds;
            // a token means the request was admitted: its wait is known
            if (outputs[o].token >= 0) {
                EXPECT_GE(outputs[o].queued_seconds, 0.0);
            }
            EXPECT_EQ(outputs[o].n_generated, (int)res.tokens.size());
            if (outputs[o].finish_reason != CINFER_FINISH_NONE) {
                res.reason = outputs[o].finish_reason;
                res.n_finish_outputs++;
                n_finished++;
            }
            const Request &req = requests[found->second];
            if (req.abort_after_outputs >= 0 && (int)res.tokens.size() == req.abort_after_outputs &&
                res.reason == CINFER_FINISH_NONE)
                cinfer_engine_abort(engine, outputs[o].request_id);
        }
    }
    EXPECT_EQ(n_finished, requests.size()) << "requests still unfinished after the steps ran out";
    // every block back in the pool, nothing left anywhere
    cinfer_engine_stats stats{};
    cinfer_engine_get_stats(engine, &stats);
    EXPECT_EQ(stats.n_blocks_used, 0);
    EXPECT_EQ(stats.n_running, 0);
    EXPECT_EQ(stats.n_waiting, 0);
    EXPECT_FALSE(cinfer_engine_has_work(engine));
    return results;
}

std::vector<int32_t> random_ids(std::mt19937_64 &rng, int n, int vocab) {
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    std::vector<int32_t> ids(n);
    for (auto &t : ids) t = id(rng);
    return ids;
}

// A seeded workload: arrivals over the first steps, prompts of 1 to max_prompt tokens (a third
// start with an earlier prompt's beginning, so that the prefix cache is hit), greedy and sampled.
std::vector<Request> random_workload(std::mt19937_64 &rng, int vocab, int n_requests,
                                     int max_prompt, int max_new) {
    std::vector<Request> requests(n_requests);
    std::uniform_int_distribution<int> prompt_len(1, max_prompt), new_len(0, max_new);
    std::uniform_int_distribution<int> arrival(0, 6), coin(0, 2);
    std::uniform_real_distribution<float> temperature(0.5f, 1.5f);
    for (int i = 0; i < n_requests; i++) {
        Request &r = requests[i];
        r.prompt = random_ids(rng, prompt_len(rng), vocab);
        if (i > 0 && coin(rng) == 0) {
            const auto &earlier =
                requests[std::uniform_int_distribution<int>(0, i - 1)(rng)].prompt;
            const size_t shared = std::min(earlier.size(), r.prompt.size());
            std::copy(earlier.begin(), earlier.begin() + shared, r.prompt.begin());
        }
        r.arrival_step = arrival(rng);
        r.params.max_new_tokens = new_len(rng);
        r.params.ignore_eos = coin(rng) == 0;
        if (coin(rng) != 0) {
            r.params.sampling.temperature = temperature(rng);
            r.params.sampling.top_k = std::vector<int>{0, 5, 40}[coin(rng)];
            r.params.sampling.top_p = std::vector<float>{0.0f, 0.9f, 0.5f}[coin(rng)];
            r.params.sampling.seed = rng();
        }
        if (coin(rng) == 0) r.stop = random_ids(rng, 2, vocab);
    }
    return requests;
}

void expect_same_as_solo(cinfer_model *model, std::vector<Request> &requests,
                         const std::vector<Result> &served, const std::string &what) {
    for (size_t i = 0; i < requests.size(); i++) {
        const Result alone = solo(model, requests[i]);
        EXPECT_EQ(served[i].tokens, alone.tokens)
            << what << ": request " << i << " (prompt " << requests[i].prompt.size()
            << " tokens, max_new_tokens " << requests[i].params.max_new_tokens << ", temperature "
            << requests[i].params.sampling.temperature << ")";
        EXPECT_EQ(served[i].reason, alone.reason) << what << ": request " << i;
        EXPECT_EQ(served[i].n_finish_outputs, 1) << what << ": request " << i;
    }
}

cinfer_engine_options options(int block_size, int max_batched_tokens, int max_seqs = 0,
                              int n_kv_blocks = 0) {
    cinfer_engine_options o{};
    o.block_size = block_size;
    o.max_batched_tokens = max_batched_tokens;
    o.max_seqs = max_seqs;
    o.n_kv_blocks = n_kv_blocks;
    return o;
}

// Engine settings that force the scheduler's every path: roomy, chunked prefill with few
// sequences, a pool so small that sequences are preempted, and no prefix caching.
struct Setting {
    const char *name;
    cinfer_engine_options options;
    bool padded = false; // decode steps padded as CUDA records them
};
std::vector<Setting> settings() {
    cinfer_engine_options no_prefix = options(8, 64);
    no_prefix.disable_prefix_caching = 1;
    return {
        {"roomy", options(16, 2048)},
        {"chunked", options(8, 13, 3)},
        {"tiny-pool", options(4, 32, 8, 18)},
        {"no-prefix-cache", no_prefix},
        {"padded-decode", options(8, 64, 6), true},
    };
}

class EngineFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineFixtures, RandomWorkloadsMatchSoloRuns) {
    Model m(fixture_dir(GetParam()));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed() ^ std::hash<std::string>{}(GetParam()));
    for (const Setting &setting : settings()) {
        std::vector<Request> requests = random_workload(rng, m.vocab, 24, 40, 24);
        Engine engine(m.model, setting.options);
        ASSERT_NE(engine.engine, nullptr);
        if (setting.padded) ci_engine_pad_decode_steps(engine, 1);
        const std::vector<Result> served = serve(engine, requests);
        expect_same_as_solo(m.model, requests, served, setting.name);
        cinfer_engine_stats stats{};
        cinfer_engine_get_stats(engine, &stats);
        if (std::string(setting.name) == "tiny-pool") {
            EXPECT_GT(stats.n_preemptions, 0u);
        }
        if (std::string(setting.name) == "no-prefix-cache") {
            EXPECT_EQ(stats.prompt_tokens_hit, 0u);
        }
        EXPECT_EQ(stats.n_finished, requests.size());
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFixtures,
                         ::testing::Values("llama_gqa_llama3", "diffllama_gqa2_llama3",
                                           "llama_yarn", "diffllama_mha"));

TEST(Engine, BundledModelWorkloadMatchesSoloRuns) {
    Model m(std::string(CINFER_FIXTURE_DIR) + "/../../models/diffllama-tiny");
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> requests = random_workload(rng, m.vocab, 8, 30, 12);
    Engine engine(m.model, options(16, 24, 4, 12));
    const std::vector<Result> served = serve(engine, requests);
    expect_same_as_solo(m.model, requests, served, "bundled model");
}

// One prompt, with max_batched_tokens from 1 up: its chunks end at every offset inside a block.
TEST(Engine, ChunksEndAtEveryOffsetInsideABlock) {
    Model m(fixture_dir("llama_gqa_llama3"));
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> base(1);
    base[0].prompt = random_ids(rng, 29, m.vocab);
    base[0].params.max_new_tokens = 6;
    base[0].params.ignore_eos = 1;
    const Result alone = solo(m.model, base[0]);
    for (int budget = 1; budget <= 10; budget++) {
        std::vector<Request> requests = base;
        Engine engine(m.model, options(8, budget));
        EXPECT_EQ(serve(engine, requests)[0].tokens, alone.tokens)
            << "max_batched_tokens " << budget;
    }
}

// Prompts of exactly k blocks, and a second request repeating each: the cache gives it all but
// the last block (one token is always computed, for its logits).
TEST(Engine, PromptsOfWholeBlocksAndTheirPrefixHits) {
    Model m(fixture_dir("diffllama_gqa2_llama3"));
    std::mt19937_64 rng(fresh_seed());
    for (int k = 1; k <= 3; k++) {
        std::vector<Request> requests(2);
        requests[0].prompt = random_ids(rng, 8 * k, m.vocab);
        requests[1].prompt = requests[0].prompt;
        requests[1].arrival_step = 3 * k + 2; // after the first is computed
        for (auto &r : requests) {
            r.params.max_new_tokens = 4;
            r.params.ignore_eos = 1;
        }
        Engine engine(m.model, options(8, 64));
        const std::vector<Result> served = serve(engine, requests);
        expect_same_as_solo(m.model, requests, served, "whole blocks");
        EXPECT_EQ(served[0].n_cached_prompt, 0);
        EXPECT_EQ(served[1].n_cached_prompt, 8 * (k - 1));
    }
}

// Two prompts share 20 tokens: with blocks of 8 the second is given 2 blocks (16 tokens) and
// computes the rest, the shared prefix ending mid-block.
TEST(Engine, PrefixHitEndingMidBlock) {
    Model m(fixture_dir("llama_gqa_llama3"));
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> requests(2);
    requests[0].prompt = random_ids(rng, 30, m.vocab);
    requests[1].prompt = random_ids(rng, 27, m.vocab);
    std::copy(requests[0].prompt.begin(), requests[0].prompt.begin() + 20,
              requests[1].prompt.begin());
    requests[1].arrival_step = 4;
    for (auto &r : requests) r.params.max_new_tokens = 5;
    Engine engine(m.model, options(8, 64));
    const std::vector<Result> served = serve(engine, requests);
    expect_same_as_solo(m.model, requests, served, "mid-block prefix");
    EXPECT_EQ(served[1].n_cached_prompt, 16);
    cinfer_engine_stats stats{};
    cinfer_engine_get_stats(engine, &stats);
    EXPECT_EQ(stats.prompt_tokens_hit, 16u);
    EXPECT_EQ(stats.prompt_tokens_queried, 57u);
}

TEST(Engine, AbortDuringPrefillAndDuringDecode) {
    Model m(fixture_dir("llama_gqa_llama3"));
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> requests(4);
    for (auto &r : requests) {
        r.prompt = random_ids(rng, 40, m.vocab);
        r.params.max_new_tokens = 10;
        r.params.ignore_eos = 1;
    }
    requests[0].abort_at_step = 1;       // its prompt takes 5 steps of 8 rows
    requests[1].abort_after_outputs = 3; // mid-decode
    requests[3].abort_at_step = 0;       // before it ever ran
    Engine engine(m.model, options(8, 8, 4));
    const std::vector<Result> served = serve(engine, requests);
    EXPECT_EQ(served[0].reason, CINFER_FINISH_ABORT);
    EXPECT_TRUE(served[0].tokens.empty());
    EXPECT_EQ(served[1].reason, CINFER_FINISH_ABORT);
    EXPECT_EQ(served[1].tokens.size(), 3u);
    EXPECT_EQ(served[3].reason, CINFER_FINISH_ABORT);
    EXPECT_EQ(served[3].queued_seconds, -1.0) << "never admitted: no queue time";
    EXPECT_GE(served[0].queued_seconds, 0.0) << "admitted, then aborted in its prefill";
    const Result alone = solo(m.model, requests[2]);
    EXPECT_EQ(served[2].tokens, alone.tokens);
    EXPECT_EQ(served[2].reason, CINFER_FINISH_LENGTH);
    const Result alone1 = solo(m.model, requests[1]);
    EXPECT_TRUE(
        std::equal(served[1].tokens.begin(), served[1].tokens.end(), alone1.tokens.begin()));
    cinfer_engine_stats stats{};
    cinfer_engine_get_stats(engine, &stats);
    EXPECT_EQ(stats.n_aborted, 3u);
    EXPECT_EQ(cinfer_engine_abort(engine, 12345), 0) << "an unknown id";
}

TEST(Engine, RefusesWhatCanNeverFitNamingBothNumbers) {
    Model m(fixture_dir("llama_gqa_llama3"));      // max_position_embeddings 256
    Engine engine(m.model, options(8, 64, 4, 10)); // 80 positions of KV
    std::vector<int32_t> prompt(50, 3);
    cinfer_request_params p{};
    p.max_new_tokens = 40;
    uint64_t id = 0;
    EXPECT_EQ(cinfer_engine_add_request(engine, prompt.data(), 50, &p, &id), CINFER_ERR_ARGUMENT);
    EXPECT_NE(std::string(cinfer_last_error()).find("90 tokens"), std::string::npos)
        << cinfer_last_error();
    EXPECT_NE(std::string(cinfer_last_error()).find("80 tokens"), std::string::npos)
        << cinfer_last_error();
    Engine roomy(m.model, options(8, 64));
    p.max_new_tokens = 207;
    EXPECT_EQ(cinfer_engine_add_request(roomy, prompt.data(), 50, &p, &id), CINFER_ERR_ARGUMENT);
    EXPECT_NE(std::string(cinfer_last_error()).find("257"), std::string::npos);
    EXPECT_NE(std::string(cinfer_last_error()).find("max_model_len = 256"), std::string::npos);
    prompt[7] = m.vocab;
    p.max_new_tokens = 1;
    EXPECT_EQ(cinfer_engine_add_request(roomy, prompt.data(), 50, &p, &id), CINFER_ERR_ARGUMENT);
    EXPECT_NE(std::string(cinfer_last_error()).find("position 7"), std::string::npos);
    EXPECT_EQ(cinfer_engine_add_request(roomy, prompt.data(), 0, &p, &id), CINFER_ERR_ARGUMENT);
    p.top_logprobs = 21;
    prompt[7] = 1;
    EXPECT_EQ(cinfer_engine_add_request(roomy, prompt.data(), 50, &p, &id), CINFER_ERR_ARGUMENT);
    EXPECT_FALSE(cinfer_engine_has_work(roomy)) << "a refused request was queued";
}

TEST(Engine, OneTokenPromptsAndEosFirst) {
    Model m(fixture_dir("llama_gqa_llama3"));
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> requests(6);
    for (auto &r : requests) {
        r.prompt = random_ids(rng, 1, m.vocab);
        r.params.max_new_tokens = 5;
    }
    // the greedy first token of request 0 as its stop token: it ends at its first token
    const Result first = solo(m.model, requests[0]);
    requests[0].stop = {first.tokens[0]};
    requests[1].params.max_new_tokens = 0;
    Engine engine(m.model, options(16, 64));
    const std::vector<Result> served = serve(engine, requests);
    expect_same_as_solo(m.model, requests, served, "one-token prompts");
    EXPECT_EQ(served[0].tokens.size(), 1u);
    EXPECT_EQ(served[0].reason, CINFER_FINISH_STOP);
    EXPECT_TRUE(served[1].tokens.empty());
    EXPECT_EQ(served[1].reason, CINFER_FINISH_LENGTH);
}

// Log-probabilities against a log-softmax of the session's logits at each generated position.
TEST(Engine, LogprobsMatchTheLogits) {
    Model m(fixture_dir("diffllama_gqa2_llama3"));
    std::mt19937_64 rng(fresh_seed());
    std::vector<Request> requests(2);
    for (auto &r : requests) {
        r.prompt = random_ids(rng, 9, m.vocab);
        r.params.max_new_tokens = 6;
        r.params.ignore_eos = 1;
        r.params.logprobs = 1;
        r.params.top_logprobs = 5;
    }
    requests[1].params.sampling.temperature = 1.0f;
    requests[1].params.sampling.seed = 7;
    Engine engine(m.model, options(16, 64));
    const std::vector<Result> served = serve(engine, requests);
    expect_same_as_solo(m.model, requests, served, "logprobs");
    const size_t V = (size_t)m.vocab;
    for (size_t i = 0; i < requests.size(); i++) {
        std::vector<int32_t> all = requests[i].prompt;
        all.insert(all.end(), served[i].tokens.begin(), served[i].tokens.end());
        cinfer_session *s = nullptr;
        ASSERT_EQ(cinfer_session_create(m.model, (int)all.size(), &s), CINFER_OK);
        std::vector<float> logits(all.size() * V);
        ASSERT_EQ(cinfer_session_forward(s, all.data(), (int)all.size(), CINFER_LOGITS_ALL,
                                         logits.data()),
                  CINFER_OK);
        cinfer_session_free(s);
        for (size_t t = 0; t < served[i].tokens.size(); t++) {
            const float *row = logits.data() + (requests[i].prompt.size() - 1 + t) * V;
            double max_logit = -INFINITY, total = 0.0;
            for (size_t v = 0; v < V; v++) max_logit = std::max(max_logit, (double)row[v]);
            for (size_t v = 0; v < V; v++) total += std::exp((double)row[v] - max_logit);
            const double expected = row[served[i].tokens[t]] - max_logit - std::log(total);
            EXPECT_NEAR(served[i].logprobs[t], expected, 1e-5);
            std::vector<int32_t> order(V);
            for (size_t v = 0; v < V; v++) order[v] = (int32_t)v;
            std::stable_sort(order.begin(), order.end(),
                             [&](int32_t a, int32_t b) { return row[a] > row[b]; });
            EXPECT_EQ(served[i].top_tokens[t],
                      std::vector<int32_t>(order.begin(), order.begin() + 5));
        }
    }
}

// A request's prompt logits equal the session's, bit for bit, however its prompt is chunked,
// and even when an identical prompt before it left its blocks in the prefix cache.
TEST(Engine, PromptLogitsEqualTheSessions) {
    Model m(fixture_dir("diffllama_gqa2_llama3"));
    std::mt19937_64 rng(fresh_seed());
    const std::vector<int32_t> prompt = random_ids(rng, 37, m.vocab);
    const size_t V = (size_t)m.vocab;
    std::vector<float> expected(prompt.size() * V);
    cinfer_session *s = nullptr;
    ASSERT_EQ(cinfer_session_create(m.model, (int)prompt.size(), &s), CINFER_OK);
    ASSERT_EQ(cinfer_session_forward(s, prompt.data(), (int)prompt.size(), CINFER_LOGITS_ALL,
                                     expected.data()),
              CINFER_OK);
    cinfer_session_free(s);
    for (int budget : {64, 5, 16}) {
        Engine engine(m.model, options(8, budget));
        std::vector<std::vector<float>> got(2, std::vector<float>(prompt.size() * V, NAN));
        for (int k = 0; k < 2; k++) { // the second finds the first's blocks cached
            cinfer_request_params p{};
            p.max_new_tokens = 2;
            p.prompt_logits = got[k].data();
            uint64_t id = 0;
            ASSERT_EQ(cinfer_engine_add_request(engine, prompt.data(), (int)prompt.size(), &p, &id),
                      CINFER_OK);
            while (cinfer_engine_has_work(engine)) {
                const cinfer_request_output *out = nullptr;
                int n = 0;
                ASSERT_EQ(cinfer_engine_step(engine, &out, &n), CINFER_OK);
            }
            EXPECT_EQ(got[k], expected) << "max_batched_tokens " << budget << ", request " << k;
        }
        cinfer_engine_stats stats{};
        cinfer_engine_get_stats(engine, &stats);
        EXPECT_EQ(stats.prompt_tokens_hit, 0u) << "a prompt that wants its logits reused blocks";
    }
}

// Many threads submit and abort at random moments while the engine thread steps: every request
// finishes exactly once, the ones not aborted with their solo tokens, and the pool ends empty.
TEST(Engine, ConcurrentSubmittersAndAborters) {
    Model m(fixture_dir("llama_gqa_llama3"));
    const uint64_t seed = fresh_seed();
    const int n_threads = 4, per_thread = 12;
    std::vector<Request> requests(n_threads * per_thread);
    {
        std::mt19937_64 rng(seed);
        requests = random_workload(rng, m.vocab, n_threads * per_thread, 30, 16);
    }
    Engine engine(m.model, options(4, 24, 6, 40));
    std::mutex lock;
    std::map<uint64_t, size_t> index_of;
    std::vector<Result> results(requests.size());
    std::atomic<int> submitted{0};
    std::vector<uint64_t> ids(requests.size(), 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; t++)
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(seed + 1 + (uint64_t)t);
            for (int k = 0; k < per_thread; k++) {
                const size_t i = (size_t)(t * per_thread + k);
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
                const cinfer_request_params p = params_of(requests[i]);
                uint64_t id = 0;
                std::lock_guard<std::mutex> guard(lock); // the id is known before any output
                ASSERT_EQ(cinfer_engine_add_request(engine, requests[i].prompt.data(),
                                                    (int)requests[i].prompt.size(), &p, &id),
                          CINFER_OK);
                index_of[id] = i;
                ids[i] = id;
                submitted++;
            }
        });
    std::thread aborter([&] {
        std::mt19937_64 rng(seed + 99);
        for (int k = 0; k < 10; k++) {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 4000));
            uint64_t id = 0;
            {
                std::lock_guard<std::mutex> guard(lock);
                if (!index_of.empty())
                    id = std::next(index_of.begin(), rng() % index_of.size())->first;
            }
            if (id) cinfer_engine_abort(engine, id);
        }
    });
    size_t n_finished = 0;
    while (n_finished < requests.size()) {
        if (!cinfer_engine_wait(engine, 0.01)) continue;
        const cinfer_request_output *outputs = nullptr;
        int n = 0;
        ASSERT_EQ(cinfer_engine_step(engine, &outputs, &n), CINFER_OK) << cinfer_last_error();
        std::lock_guard<std::mutex> guard(lock);
        for (int o = 0; o < n; o++) {
            Result &res = results[index_of.at(outputs[o].request_id)];
            EXPECT_EQ(res.n_finish_outputs, 0);
            if (outputs[o].token >= 0) res.tokens.push_back(outputs[o].token);
            if (outputs[o].finish_reason != CINFER_FINISH_NONE) {
                res.reason = outputs[o].finish_reason;
                res.n_finish_outputs++;
                n_finished++;
            }
        }
    }
    for (auto &t : threads) t.join();
    aborter.join();
    cinfer_engine_stats stats{};
    cinfer_engine_get_stats(engine, &stats);
    EXPECT_EQ(stats.n_blocks_used, 0);
    EXPECT_EQ(stats.n_finished, requests.size());
    EXPECT_FALSE(cinfer_engine_has_work(engine));
    for (size_t i = 0; i < requests.size(); i++) {
        const Result alone = solo(m.model, requests[i]);
        EXPECT_EQ(results[i].n_finish_outputs, 1);
        if (results[i].reason == CINFER_FINISH_ABORT) {
            ASSERT_LE(results[i].tokens.size(), alone.tokens.size());
            EXPECT_TRUE(std::equal(results[i].tokens.begin(), results[i].tokens.end(),
                                   alone.tokens.begin()))
                << "request " << i;
        } else {
            EXPECT_EQ(results[i].tokens, alone.tokens) << "request " << i;
            EXPECT_EQ(results[i].reason, alone.reason) << "request " << i;
        }
    }
}

TEST(Engine, OptionsOutOfRangeAreRefused) {
    Model m(fixture_dir("llama_gqa_llama3"));
    const std::vector<std::pair<cinfer_engine_options, std::string>> bad = {
        {options(0, 64, 600), "max_seqs = 600"},
        {options(-1, 64), "block_size = -1"},
        {options(16, -5), "max_batched_tokens = -5"},
    };
    for (const auto &[o, message] : bad) {
        cinfer_engine *e = nullptr;
        EXPECT_EQ(cinfer_engine_create(m.model, &o, &e), CINFER_ERR_ARGUMENT);
        EXPECT_EQ(e, nullptr);
        EXPECT_NE(std::string(cinfer_last_error()).find(message), std::string::npos)
            << cinfer_last_error();
    }
    // past max_position_embeddings only where the RoPE frequencies do not depend on the length
    Model dynamic(fixture_dir("llama_gelu_dynamic"));
    const int max_pos = cinfer_model_get_info(dynamic.model)->max_position_embeddings;
    cinfer_engine_options too_long{};
    too_long.max_model_len = max_pos + 1;
    cinfer_engine *e = nullptr;
    EXPECT_EQ(cinfer_engine_create(dynamic.model, &too_long, &e), CINFER_ERR_ARGUMENT);
    EXPECT_NE(std::string(cinfer_last_error())
                  .find("max_position_embeddings = " + std::to_string(max_pos)),
              std::string::npos)
        << cinfer_last_error();
    EXPECT_NE(std::string(cinfer_last_error()).find("dynamic"), std::string::npos);
    too_long.max_model_len = 257;
    ASSERT_EQ(cinfer_engine_create(m.model, &too_long, &e), CINFER_OK) << cinfer_last_error();
    cinfer_engine_free(e);
    int64_t bytes = 0, tokens = 0;
    cinfer_engine_options sized = options(16, 64);
    sized.kv_cache_bytes = 1 << 20;
    ASSERT_EQ(cinfer_engine_kv_capacity(m.model, &sized, &bytes, &tokens), CINFER_OK);
    EXPECT_EQ(tokens % 16, 0);
    EXPECT_LE(bytes, 1 << 20);
    EXPECT_EQ(bytes, tokens * cinfer_model_get_info(m.model)->kv_bytes_per_token);
}

} // namespace
