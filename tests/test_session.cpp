// Sessions: the KV cache must give exactly what recomputing the whole prefix gives, however the
// tokens are split into calls; generation stops where it should; bad calls leave no trace.
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

extern "C" {
#include "engine/session.h"
}

using namespace cinfer_test;

namespace {

struct Model {
    cinfer_model *model = nullptr;
    const cinfer_model_info *info = nullptr;
    explicit Model(const std::string &dir) {
        EXPECT_EQ(cinfer_model_load(dir.c_str(), nullptr, &model), CINFER_OK)
            << cinfer_last_error();
        if (model) info = cinfer_model_get_info(model);
    }
    ~Model() { cinfer_model_free(model); }
};

struct Session {
    cinfer_session *session = nullptr;
    Session(cinfer_model *model, int n_ctx) {
        EXPECT_EQ(cinfer_session_create(model, n_ctx, &session), CINFER_OK)
            << cinfer_last_error();
    }
    ~Session() { cinfer_session_free(session); }
    operator cinfer_session *() const { return session; }
};

std::vector<int32_t> random_prompt(std::mt19937_64 &rng, int n, int vocab) {
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    std::vector<int32_t> ids(n);
    for (auto &t : ids) t = id(rng);
    return ids;
}

// Logits of every position, the whole prompt in one call.
std::vector<float> logits_in_one_call(cinfer_model *model, const std::vector<int32_t> &ids,
                                      int n_ctx) {
    const size_t V = (size_t)cinfer_model_get_info(model)->vocab_size;
    Session s(model, n_ctx);
    std::vector<float> logits(ids.size() * V, NAN);
    EXPECT_EQ(cinfer_session_forward(s, ids.data(), (int)ids.size(), CINFER_LOGITS_ALL,
                                     logits.data()),
              CINFER_OK)
        << cinfer_last_error();
    return logits;
}

// Logits of every position, feeding the prompt in calls of the given sizes.
std::vector<float> logits_in_pieces(cinfer_model *model, const std::vector<int32_t> &ids,
                                    const std::vector<int> &pieces, int n_ctx) {
    const size_t V = (size_t)cinfer_model_get_info(model)->vocab_size;
    Session s(model, n_ctx);
    std::vector<float> logits(ids.size() * V, NAN);
    size_t done = 0;
    for (int piece : pieces) {
        EXPECT_EQ(cinfer_session_forward(s, ids.data() + done, piece, CINFER_LOGITS_ALL,
                                         logits.data() + done * V),
                  CINFER_OK)
            << cinfer_last_error();
        done += (size_t)piece;
    }
    EXPECT_EQ(done, ids.size());
    EXPECT_EQ(cinfer_session_n_past(s), (int)ids.size());
    return logits;
}

double max_abs_diff(const std::vector<float> &a, const std::vector<float> &b) {
    double worst = a.size() == b.size() ? 0.0 : INFINITY;
    for (size_t i = 0; i < a.size() && i < b.size(); i++) {
        double d = std::fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

class SessionOnFixture : public ::testing::TestWithParam<std::string> {};

// Every row of every op is computed the same way whatever the number of tokens in the call, so
// decoding through the cache agrees with recomputation to the last bit or close to it; 1e-5
// leaves room for nothing but reordering.
constexpr double kSameComputation = 1e-5;

TEST_P(SessionOnFixture, DecodingTokenByTokenMatchesRecomputingThePrefix) {
    Model m(fixture_dir(GetParam()));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    // Dynamic RoPE rescales every position from the call's length once it passes
    // max_position_embeddings (as transformers does), so the two paths legitimately differ
    // there: stay within it.
    const int n = std::min(20, m.info->max_position_embeddings);
    std::vector<int32_t> ids = random_prompt(rng, n, m.info->vocab_size);
    std::vector<float> whole = logits_in_one_call(m.model, ids, n);
    std::vector<float> stepwise = logits_in_pieces(m.model, ids, std::vector<int>(n, 1), n);
    EXPECT_LE(max_abs_diff(whole, stepwise), kSameComputation);
    std::vector<float> uneven = logits_in_pieces(m.model, ids, {7, 1, n - 8}, n);
    EXPECT_LE(max_abs_diff(whole, uneven), kSameComputation);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SessionOnFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto &info) { return info.param; });

// Prompts longer than a session's batch (512 tokens) run in several passes internally.
TEST(Session, LongPromptsSplitIntoPassesMatchTokenByToken) {
    Model m(fixture_dir("diffllama_gqa4"));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    const int n = 1100;  // > 2 passes of 512; past max_position_embeddings, allowed by the API
    std::vector<int32_t> ids = random_prompt(rng, n, m.info->vocab_size);
    std::vector<float> whole = logits_in_one_call(m.model, ids, n);
    std::vector<float> pieces = logits_in_pieces(m.model, ids, {1, 600, 1, 498}, n);
    EXPECT_LE(max_abs_diff(whole, pieces), kSameComputation);
}

TEST(Session, LastLogitsAreTheLastRowOfAllLogits) {
    Model m(fixture_dir("llama_gqa_llama3"));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    std::vector<int32_t> ids = random_prompt(rng, 9, m.info->vocab_size);
    std::vector<float> all = logits_in_one_call(m.model, ids, 16);
    Session s(m.model, 16);
    std::vector<float> last((size_t)m.info->vocab_size, NAN);
    ASSERT_EQ(cinfer_session_forward(s, ids.data(), 9, CINFER_LOGITS_LAST, last.data()), CINFER_OK);
    std::vector<float> last_row(all.end() - m.info->vocab_size, all.end());
    EXPECT_EQ(last, last_row);
}

TEST(Session, ResetStartsOverAtPositionZero) {
    Model m(fixture_dir("diffllama_mha"));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    std::vector<int32_t> a = random_prompt(rng, 6, m.info->vocab_size);
    std::vector<int32_t> b = random_prompt(rng, 6, m.info->vocab_size);
    const size_t V = (size_t)m.info->vocab_size;
    Session s(m.model, 32);
    std::vector<float> first(6 * V), again(6 * V);
    ASSERT_EQ(cinfer_session_forward(s, a.data(), 6, CINFER_LOGITS_ALL, first.data()), CINFER_OK);
    ASSERT_EQ(cinfer_session_forward(s, b.data(), 6, CINFER_LOGITS_NONE, nullptr), CINFER_OK);
    EXPECT_EQ(cinfer_session_n_past(s), 12);
    cinfer_session_reset(s);
    EXPECT_EQ(cinfer_session_n_past(s), 0);
    ASSERT_EQ(cinfer_session_forward(s, a.data(), 6, CINFER_LOGITS_ALL, again.data()), CINFER_OK);
    EXPECT_EQ(first, again);
}

// Sessions own their caches and scratch: two of them on one model, interleaved or on two
// threads, give what each gives alone.
TEST(Session, SessionsOnOneModelDoNotShareState) {
    Model m(fixture_dir("diffllama_gqa2_llama3"));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    std::vector<int32_t> a = random_prompt(rng, 12, m.info->vocab_size);
    std::vector<int32_t> b = random_prompt(rng, 12, m.info->vocab_size);
    std::vector<float> alone_a = logits_in_pieces(m.model, a, std::vector<int>(12, 1), 12);
    std::vector<float> alone_b = logits_in_pieces(m.model, b, std::vector<int>(12, 1), 12);
    std::vector<float> together_a, together_b;
    std::thread ta([&] { together_a = logits_in_pieces(m.model, a, std::vector<int>(12, 1), 12); });
    std::thread tb([&] { together_b = logits_in_pieces(m.model, b, std::vector<int>(12, 1), 12); });
    ta.join();
    tb.join();
    EXPECT_EQ(alone_a, together_a);
    EXPECT_EQ(alone_b, together_b);
}

TEST(Session, RejectsTokensOutsideTheVocabularyWithoutSideEffects) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    Session s(m.model, 16);
    std::vector<float> logits((size_t)m.info->vocab_size);
    for (int32_t bad : {-1, m.info->vocab_size, 1 << 30}) {
        int32_t ids[3] = {1, bad, 3};
        EXPECT_EQ(cinfer_session_forward(s, ids, 3, CINFER_LOGITS_LAST, logits.data()),
                  CINFER_ERR_ARGUMENT);
        EXPECT_NE(std::string(cinfer_last_error()).find("vocab_size"), std::string::npos)
            << cinfer_last_error();
        EXPECT_EQ(cinfer_session_n_past(s), 0);
    }
}

TEST(Session, RejectsInputsThatDoNotFitTheContext) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    Session s(m.model, 8);
    std::vector<int32_t> ids(6, 5);
    ASSERT_EQ(cinfer_session_forward(s, ids.data(), 6, CINFER_LOGITS_NONE, nullptr), CINFER_OK);
    EXPECT_EQ(cinfer_session_forward(s, ids.data(), 3, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_CONTEXT_FULL);
    EXPECT_EQ(cinfer_session_n_past(s), 6);
    EXPECT_EQ(cinfer_session_forward(s, ids.data(), 2, CINFER_LOGITS_NONE, nullptr), CINFER_OK);
    EXPECT_EQ(cinfer_session_forward(s, ids.data(), 0, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_ARGUMENT);
    EXPECT_EQ(cinfer_session_forward(s, ids.data(), 1, CINFER_LOGITS_LAST, nullptr),
              CINFER_ERR_ARGUMENT);
}

// ---- batched sessions: B sequences in lockstep
// ---------------------------------------------------

// A batched session of n_seqs sequences, freed at the end of the scope.
struct BatchSession {
    cinfer_session *session = nullptr;
    BatchSession(cinfer_model *model, int n_ctx, int n_seqs) {
        EXPECT_EQ(cinfer_session_create_batch(model, n_ctx, n_seqs, &session), CINFER_OK)
            << cinfer_last_error();
    }
    ~BatchSession() { cinfer_session_free(session); }
    operator cinfer_session *() const { return session; }
};

// Sequence-major [B, n] from B prompts.
std::vector<int32_t> concat(const std::vector<std::vector<int32_t>> &prompts) {
    std::vector<int32_t> all;
    for (const auto &p : prompts) all.insert(all.end(), p.begin(), p.end());
    return all;
}

// Rows [row0, row0 + n) of a [rows, V] block.
std::vector<float> rows_of(const std::vector<float> &logits, size_t row0, size_t n, size_t V) {
    return std::vector<float>(logits.begin() + (ptrdiff_t)(row0 * V),
                              logits.begin() + (ptrdiff_t)((row0 + n) * V));
}

// Every op of the CPU reference computes a row from that row alone (matmul, norms and attention
// never mix rows or sequences; a sequence's attention reads its own cache with the same loops),
// so batching changes no arithmetic: each sequence's logits are the same bits as alone.
constexpr double kBatchedIsExact = 0.0;

class BatchOnFixture : public ::testing::TestWithParam<std::string> {};

// Prefill (ALL and LAST), then lockstep decode steps, against one session per prompt.
TEST_P(BatchOnFixture, EverySequenceGetsTheLogitsItGetsAlone) {
    Model m(fixture_dir(GetParam()));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    const size_t V = (size_t)m.info->vocab_size;
    const int n_steps = 4;
    const int T = std::min(11, m.info->max_position_embeddings - n_steps);
    const int n_ctx = T + n_steps;
    for (int B : {2, 3, 5}) {
        SCOPED_TRACE("n_seqs = " + std::to_string(B));
        std::vector<std::vector<int32_t>> prompts, steps;
        for (int b = 0; b < B; b++) prompts.push_back(random_prompt(rng, T, (int)V));
        for (int i = 0; i < n_steps; i++) steps.push_back(random_prompt(rng, B, (int)V));
        const std::vector<int32_t> all_prompts = concat(prompts);

        BatchSession batch_all(m.model, n_ctx, B), batch_last(m.model, n_ctx, B);
        ASSERT_EQ(cinfer_session_n_seqs(batch_all), B);
        std::vector<float> all((size_t)B * T * V, NAN), last((size_t)B * V, NAN);
        ASSERT_EQ(cinfer_session_forward_batch(batch_all, all_prompts.data(), T, CINFER_LOGITS_ALL,
                                               all.data()),
                  CINFER_OK)
            << cinfer_last_error();
        ASSERT_EQ(cinfer_session_forward_batch(batch_last, all_prompts.data(), T,
                                               CINFER_LOGITS_LAST, last.data()),
                  CINFER_OK)
            << cinfer_last_error();
        EXPECT_EQ(cinfer_session_n_past(batch_all), T);

        std::vector<float> step_logits((size_t)B * V, NAN);
        std::vector<std::vector<float>> batched_steps;
        for (int i = 0; i < n_steps; i++) {
            ASSERT_EQ(cinfer_session_forward_batch(batch_all, steps[i].data(), 1,
                                                   CINFER_LOGITS_LAST, step_logits.data()),
                      CINFER_OK)
                << cinfer_last_error();
            batched_steps.push_back(step_logits);
        }

        for (int b = 0; b < B; b++) {
            SCOPED_TRACE("sequence " + std::to_string(b));
            Session alone(m.model, n_ctx);
            std::vector<float> want((size_t)T * V, NAN);
            ASSERT_EQ(
                cinfer_session_forward(alone, prompts[b].data(), T, CINFER_LOGITS_ALL, want.data()),
                CINFER_OK);
            EXPECT_LE(max_abs_diff(rows_of(all, (size_t)b * T, T, V), want), kBatchedIsExact);
            EXPECT_LE(max_abs_diff(rows_of(last, b, 1, V), rows_of(want, T - 1, 1, V)),
                      kBatchedIsExact);
            std::vector<float> one(V, NAN);
            for (int i = 0; i < n_steps; i++) {
                ASSERT_EQ(
                    cinfer_session_forward(alone, &steps[i][b], 1, CINFER_LOGITS_LAST, one.data()),
                    CINFER_OK);
                EXPECT_LE(max_abs_diff(rows_of(batched_steps[i], b, 1, V), one), kBatchedIsExact)
                    << "decode step " << i;
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchOnFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto &info) { return info.param; });

// With B sequences a pass takes 512 / B tokens of each: B·T > 512 runs in passes, which must
// give what one sequence at a time gives (it runs its 200 tokens in one pass).
TEST(BatchSession, PromptsLongerThanAPassRunInPassesAndMatch) {
    for (const char *fixture : {"llama_gqa_llama3", "diffllama_gqa4"}) {
        SCOPED_TRACE(fixture);
        Model m(fixture_dir(fixture));
        ASSERT_NE(m.model, nullptr);
        std::mt19937_64 rng(fresh_seed());
        const size_t V = (size_t)m.info->vocab_size;
        const int B = 3, T = 200; // 600 rows: passes of 170 tokens of each sequence, then 30
        std::vector<std::vector<int32_t>> prompts;
        for (int b = 0; b < B; b++) prompts.push_back(random_prompt(rng, T, (int)V));
        const std::vector<int32_t> all_prompts = concat(prompts);
        BatchSession batch(m.model, T + 1, B);
        std::vector<float> all((size_t)B * T * V, NAN), last((size_t)B * V, NAN);
        ASSERT_EQ(cinfer_session_forward_batch(batch, all_prompts.data(), T, CINFER_LOGITS_ALL,
                                               all.data()),
                  CINFER_OK)
            << cinfer_last_error();
        cinfer_session_reset(batch);
        ASSERT_EQ(cinfer_session_forward_batch(batch, all_prompts.data(), T, CINFER_LOGITS_LAST,
                                               last.data()),
                  CINFER_OK)
            << cinfer_last_error();
        for (int b = 0; b < B; b++) {
            std::vector<float> want = logits_in_one_call(m.model, prompts[b], T + 1);
            EXPECT_LE(max_abs_diff(rows_of(all, (size_t)b * T, T, V), want), kBatchedIsExact)
                << "sequence " << b;
            EXPECT_LE(max_abs_diff(rows_of(last, b, 1, V), rows_of(want, T - 1, 1, V)),
                      kBatchedIsExact)
                << "sequence " << b;
        }
    }
}

// The greedy step that generation and `cinfer bench` use: one argmax per sequence.
TEST(BatchSession, GreedyStepPicksEachSequencesArgmax) {
    Model m(fixture_dir("diffllama_gqa2_llama3"));
    ASSERT_NE(m.model, nullptr);
    std::mt19937_64 rng(fresh_seed());
    const int V = m.info->vocab_size, B = 4, T = 5;
    std::vector<std::vector<int32_t>> prompts;
    for (int b = 0; b < B; b++) prompts.push_back(random_prompt(rng, T, V));
    std::vector<int32_t> all_prompts = concat(prompts), step = random_prompt(rng, B, V);
    BatchSession batch(m.model, 8, B);
    ASSERT_EQ(
        cinfer_session_forward_batch(batch, all_prompts.data(), T, CINFER_LOGITS_NONE, nullptr),
        CINFER_OK);
    std::vector<int32_t> next(B, -1);
    ASSERT_EQ(ci_session_greedy_step(batch, step.data(), next.data()), CINFER_OK)
        << cinfer_last_error();
    EXPECT_EQ(cinfer_session_n_past(batch), T + 1);
    for (int b = 0; b < B; b++) {
        Session alone(m.model, 8);
        std::vector<float> logits((size_t)V);
        ASSERT_EQ(cinfer_session_forward(alone, prompts[b].data(), T, CINFER_LOGITS_NONE, nullptr),
                  CINFER_OK);
        ASSERT_EQ(cinfer_session_forward(alone, &step[b], 1, CINFER_LOGITS_LAST, logits.data()),
                  CINFER_OK);
        const int32_t want =
            (int32_t)(std::max_element(logits.begin(), logits.end()) - logits.begin());
        EXPECT_EQ(next[b], want) << "sequence " << b;
    }
}

TEST(BatchSession, RejectsBadInputWithClearErrorsAndNoSideEffects) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    const int V = m.info->vocab_size;
    cinfer_session *none = reinterpret_cast<cinfer_session *>(1);
    for (int n_seqs : {0, -1, 513}) {
        EXPECT_EQ(cinfer_session_create_batch(m.model, 8, n_seqs, &none), CINFER_ERR_ARGUMENT);
        EXPECT_EQ(none, nullptr);
        EXPECT_TRUE(
            contains_all(cinfer_last_error(), {"n_seqs = " + std::to_string(n_seqs), "1 to 512"}));
        EXPECT_EQ(cinfer_session_memory_bytes_batch(m.model, 8, n_seqs), -1);
    }
    BatchSession batch(m.model, 8, 3);
    std::vector<float> logits((size_t)3 * V);
    // an id out of range in the second sequence
    for (int32_t bad : {-1, V}) {
        std::vector<int32_t> ids = {1, 2, bad, 4, 5, 6}; // [3, 2]: bad is sequence 1's first
        EXPECT_EQ(
            cinfer_session_forward_batch(batch, ids.data(), 2, CINFER_LOGITS_LAST, logits.data()),
            CINFER_ERR_ARGUMENT);
        EXPECT_TRUE(contains_all(cinfer_last_error(),
                                 {"token id " + std::to_string(bad), "sequence 1", "vocab_size"}));
        EXPECT_EQ(cinfer_session_n_past(batch), 0);
        int32_t next[3];
        EXPECT_EQ(ci_session_greedy_step(batch, ids.data() + 1, next), CINFER_ERR_ARGUMENT);
        EXPECT_TRUE(contains_all(cinfer_last_error(), {"sequence 1"}));
        EXPECT_EQ(cinfer_session_n_past(batch), 0);
    }
    // beyond the context: 9 tokens of each sequence, then 6 + 3
    std::vector<int32_t> ids(27, 5);
    EXPECT_EQ(cinfer_session_forward_batch(batch, ids.data(), 9, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_CONTEXT_FULL);
    ASSERT_EQ(cinfer_session_forward_batch(batch, ids.data(), 6, CINFER_LOGITS_NONE, nullptr),
              CINFER_OK);
    EXPECT_EQ(cinfer_session_forward_batch(batch, ids.data(), 3, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_CONTEXT_FULL);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"3 tokens", "holds 8", "6 are used"}));
    EXPECT_EQ(cinfer_session_n_past(batch), 6);
    EXPECT_EQ(cinfer_session_forward_batch(batch, ids.data(), 0, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_ARGUMENT);
    EXPECT_EQ(cinfer_session_forward_batch(batch, ids.data(), 1, CINFER_LOGITS_ALL, nullptr),
              CINFER_ERR_ARGUMENT);
    // the one-sequence calls refuse a batched session
    EXPECT_EQ(cinfer_session_forward(batch, ids.data(), 1, CINFER_LOGITS_NONE, nullptr),
              CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"3", "cinfer_session_forward_batch"}));
    cinfer_generate_params params = {};
    params.max_new_tokens = 1;
    EXPECT_EQ(cinfer_generate(batch, ids.data(), 1, &params, nullptr, nullptr, nullptr, nullptr),
              CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"one sequence", "3"}));
    EXPECT_EQ(cinfer_session_n_past(batch), 6);
}

// The estimate counts one KV cache per sequence and the rows a pass holds.
TEST(BatchSession, MemoryEstimateGrowsWithTheSequences) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    const int n_ctx = 64;
    const int64_t one = cinfer_session_memory_bytes_batch(m.model, n_ctx, 1);
    EXPECT_EQ(one, cinfer_session_memory_bytes(m.model, n_ctx));
    const int64_t four = cinfer_session_memory_bytes_batch(m.model, n_ctx, 4);
    EXPECT_GE(four - one, 3 * m.info->kv_bytes_per_token * n_ctx);
}

// ---- generation ----------------------------------------------------------------------------------

struct Generated {
    std::vector<int32_t> tokens;
    cinfer_generate_stats stats = {};
    cinfer_status status = CINFER_OK;
    int stop_after = -1;  // the callback asks to stop after this many tokens
};

Generated generate(cinfer_model *model, const std::vector<int32_t> &prompt, int n_ctx,
                   cinfer_generate_params params, int stop_after = -1) {
    Generated g;
    g.stop_after = stop_after;
    Session s(model, n_ctx);
    auto on_token = [](void *user, int32_t token) {
        auto *out = static_cast<Generated *>(user);
        out->tokens.push_back(token);
        return out->stop_after >= 0 && (int)out->tokens.size() >= out->stop_after ? 1 : 0;
    };
    g.status = cinfer_generate(s, prompt.data(), (int)prompt.size(), &params, on_token, &g,
                               nullptr, &g.stats);
    return g;
}

cinfer_generate_params greedy(int max_new_tokens, bool ignore_eos) {
    cinfer_generate_params p = {};
    p.max_new_tokens = max_new_tokens;
    p.ignore_eos = ignore_eos ? 1 : 0;
    return p;
}

TEST(Generate, StopsAtMaxNewTokens) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    Generated g = generate(m.model, {1, 15, 7}, 64, greedy(9, true));
    ASSERT_EQ(g.status, CINFER_OK) << cinfer_last_error();
    EXPECT_EQ(g.tokens.size(), 9u);
    EXPECT_EQ(g.stats.n_generated, 9);
    EXPECT_EQ(g.stats.n_prompt, 3);
    EXPECT_EQ(g.stats.stop_reason, CINFER_STOP_MAX_TOKENS);
}

TEST(Generate, ZeroNewTokensOnlyRunsThePrompt) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    Generated g = generate(m.model, {1, 15, 7}, 64, greedy(0, true));
    ASSERT_EQ(g.status, CINFER_OK);
    EXPECT_TRUE(g.tokens.empty());
}

TEST(Generate, StopsWhenTheContextIsFull) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    // 3 prompt tokens in a context of 8: five generated tokens fill it, and a sixth can still be
    // sampled from the last logits, but not fed back.
    Generated g = generate(m.model, {1, 15, 7}, 8, greedy(50, true));
    ASSERT_EQ(g.status, CINFER_OK) << cinfer_last_error();
    EXPECT_EQ(g.tokens.size(), 6u);
    EXPECT_EQ(g.stats.stop_reason, CINFER_STOP_CONTEXT);
}

TEST(Generate, StopsWhenTheCallbackAsks) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    Generated g = generate(m.model, {1, 15, 7}, 64, greedy(20, true), 4);
    ASSERT_EQ(g.status, CINFER_OK);
    EXPECT_EQ(g.tokens.size(), 4u);
    EXPECT_EQ(g.stats.stop_reason, CINFER_STOP_CALLBACK);
}

// eos_token_id may be a list: generation stops at whichever comes first, and includes it.
TEST(Generate, StopsAtAnyTokenOfAnEosList) {
    Model reference(fixture_dir("llama_mha"));
    ASSERT_NE(reference.model, nullptr);
    std::vector<int32_t> prompt = {1, 15, 7};
    Generated free_run = generate(reference.model, prompt, 64, greedy(12, true));
    ASSERT_EQ(free_run.tokens.size(), 12u);
    // make the 5th greedy token an eos (listed second), in a copy of the checkpoint
    const int32_t stop_token = free_run.tokens[4];
    auto first = std::find(free_run.tokens.begin(), free_run.tokens.end(), stop_token);
    const size_t expected_length = (size_t)(first - free_run.tokens.begin()) + 1;

    TempDir dir;
    std::filesystem::copy(fixture_dir("llama_mha"), dir.path,
                          std::filesystem::copy_options::recursive);
    std::string config = read_file(dir.file("config.json"));
    const std::string old_eos = "\"eos_token_id\": 2";
    size_t at = config.find(old_eos);
    ASSERT_NE(at, std::string::npos);
    int32_t unused_token = 0;  // an eos that never comes, listed first
    while (std::find(free_run.tokens.begin(), free_run.tokens.end(), unused_token) !=
           free_run.tokens.end())
        unused_token++;
    config.replace(at, old_eos.size(),
                   "\"eos_token_id\": [" + std::to_string(unused_token) + ", " +
                       std::to_string(stop_token) + "]");
    write_file(dir.file("config.json"), config);

    Model m(dir.path.string());
    ASSERT_NE(m.model, nullptr);
    ASSERT_EQ(m.info->n_eos, 2);
    Generated g = generate(m.model, prompt, 64, greedy(12, false));
    ASSERT_EQ(g.status, CINFER_OK);
    EXPECT_EQ(g.stats.stop_reason, CINFER_STOP_EOS);
    ASSERT_EQ(g.tokens.size(), expected_length);
    EXPECT_EQ(g.tokens.back(), stop_token);
    // and with ignore_eos it runs on, as before
    Generated ignoring = generate(m.model, prompt, 64, greedy(12, true));
    EXPECT_EQ(ignoring.tokens, free_run.tokens);
}

TEST(Generate, SamplingIsReproducibleForASeed) {
    Model m(fixture_dir("diffllama_gqa8"));
    ASSERT_NE(m.model, nullptr);
    cinfer_generate_params p = greedy(24, true);
    p.sampling = {1.0f, 20, 0.9f, 1234};
    Generated a = generate(m.model, {3, 4, 5}, 64, p);
    Generated b = generate(m.model, {3, 4, 5}, 64, p);
    ASSERT_EQ(a.status, CINFER_OK);
    EXPECT_EQ(a.tokens, b.tokens);
    p.sampling.seed = 1235;
    Generated c = generate(m.model, {3, 4, 5}, 64, p);
    EXPECT_NE(a.tokens, c.tokens) << "a different seed should give a different sample";
}

TEST(Generate, RejectsAPromptLongerThanTheContext) {
    Model m(fixture_dir("llama_mha"));
    ASSERT_NE(m.model, nullptr);
    std::vector<int32_t> prompt(10, 3);
    Generated g = generate(m.model, prompt, 8, greedy(4, true));
    EXPECT_EQ(g.status, CINFER_ERR_CONTEXT_FULL);
    EXPECT_TRUE(g.tokens.empty());
    EXPECT_NE(std::string(cinfer_last_error()).find("10 tokens"), std::string::npos)
        << cinfer_last_error();
}

}  // namespace
