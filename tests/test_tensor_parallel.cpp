// Tensor parallelism on the CPU (docs/TENSOR_PARALLEL.md): the sharding plan (models/shard.h), a
// rank's slices of the checkpoint (models/weights.c) and the sharded forward pass
// (models/llama.c) against the whole model.
//
// The ranks run as threads of this process, each with its own CPU backend (one OpenMP thread:
// ranks × threads must fit the 2 cores CI has), activations and KV cache, sized by its own config,
// driven through the internal API as engine/session.c drives a model, in lockstep: a prompt, then
// greedy decode steps. The bar: logits and the hidden state after every stage within 1e-5 of the
// unsharded run (scaled by the largest value where values exceed 1: see kTolerance), greedy ids
// identical, every rank holding the same bits. The whole model sums o_proj's and down_proj's
// products in one double accumulator and rounds once; the ranks round their partial products to
// F32 and the all-reduce adds them in F32, so the two differ by a few F32 roundings (measured over
// 40 runs: at most 6.2e-7 of the largest value; each case prints its own).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tensor_parallel_test.h"

extern "C" {
#include "common/error.h"
#include "engine/model_shard.h"
#include "kernels/backend.h"
#include "kernels/comm.h"
#include "models/architecture.h"
#include "models/model.h"
#include "models/shard.h"
}

using namespace cinfer_test;

namespace {

// Every committed fixture and the model that ships in the repository.
std::vector<std::string> model_names() {
    std::vector<std::string> names = fixture_names();
    names.push_back("diffllama_tiny");
    return names;
}

struct ModelShape {
    ci_config config{};
    int paired = 0; // DiffLlama's head pairs
};

ModelShape read_shape(const std::string &name) {
    ModelShape shape;
    const std::string path = model_dir(name) + "/config.json";
    const ci_architecture *arch = nullptr;
    if (config_load(path.c_str(), &shape.config) != CINFER_OK ||
        ci_architecture_configure(path.c_str(), &shape.config, &arch) != CINFER_OK) {
        ADD_FAILURE() << cinfer_last_error();
        return shape;
    }
    shape.paired = arch->differential;
    return shape;
}

// ---- the plan ---------------------------------------------------------------------------------

ci_config config_of(int H, int G, int D, int I, int V) {
    ci_config c{};
    std::snprintf(c.architecture, sizeof c.architecture, "%s", "LlamaForCausalLM");
    c.n_heads = H, c.n_kv_heads = G, c.head_dim = D, c.intermediate_size = I, c.vocab_size = V;
    c.hidden_size = 64, c.n_layers = 1;
    return c;
}

// How many KV heads a rank holds whose query heads are q_heads (in local order), worked out head
// by head: the distinct KV heads they read, in order, must be read by consecutive runs of H'/G'
// local heads. -1 when no local layout serves them.
int kv_heads_held(const std::vector<int> &q_heads, int group) {
    std::vector<int> kv;
    for (int h : q_heads)
        if (kv.empty() || kv.back() != h / group) kv.push_back(h / group);
    const int n_q = (int)q_heads.size(), n_kv = (int)kv.size();
    if (std::set<int>(kv.begin(), kv.end()).size() != kv.size() || n_q % n_kv) return -1;
    for (int j = 0; j < n_q; j++)
        if (q_heads[j] / group != kv[j / (n_q / n_kv)]) return -1;
    return n_kv;
}

// DiffLlama, by brute force: every rank's heads (its pairs' first halves, then second halves) are
// served by a local layout, and every rank holds as many KV heads.
bool pairs_split_evenly(int H, int G, int tp) {
    const int P = H / 2;
    std::set<int> held;
    for (int r = 0; r < tp; r++) {
        std::vector<int> heads;
        for (int half = 0; half < 2; half++)
            for (int p = r * (P / tp); p < (r + 1) * (P / tp); p++) heads.push_back(half * P + p);
        held.insert(kv_heads_held(heads, H / G));
    }
    return held.size() == 1 && *held.begin() > 0;
}

// The rule the plan must follow, written from the definition rather than from models/shard.c:
// vLLM's for Llama; for DiffLlama the same on each half of the heads (even G), else brute force.
bool tp_should_split(const ci_config &c, int paired, int tp) {
    const int H = c.n_heads, G = c.n_kv_heads;
    if (c.intermediate_size % tp || c.vocab_size % tp) return false;
    if (!paired) return H % tp == 0 && (G % tp == 0 || tp % G == 0);
    if ((H / 2) % tp) return false;
    if (G % 2 == 0) return (G / 2) % tp == 0 || tp % (G / 2) == 0;
    return pairs_split_evenly(H, G, tp);
}

// What every accepted plan must be, checked over all its ranks.
void check_plans(const ci_config &c, int paired, int tp, const std::vector<ci_shard_plan> &plans) {
    const int H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, P = H / 2;
    SCOPED_TRACE("H " + std::to_string(H) + ", G " + std::to_string(G) + ", tp " +
                 std::to_string(tp) + (paired ? ", paired" : ""));
    std::vector<int> q_owner(H, 0), kv_holders(G, 0), o_owner(H * D, 0);
    std::vector<int> mlp_owner(c.intermediate_size, 0), vocab_owner(c.vocab_size, 0);
    for (const ci_shard_plan &p : plans) {
        const int Hl = p.local.n_heads, Gl = p.local.n_kv_heads;
        ASSERT_EQ(Hl, H / tp);
        ASSERT_GT(Gl, 0);
        ASSERT_EQ(Hl % Gl, 0);
        std::set<int> kv_here;
        for (int j = 0; j < Gl; j++) kv_here.insert(ci_shard_kv_head(&p, j));
        ASSERT_EQ((int)kv_here.size(), Gl) << "a KV head listed twice";
        for (int k : kv_here) kv_holders[k]++;
        for (int j = 0; j < Hl; j++) {
            const int h = ci_shard_q_head(&p, j);
            ASSERT_TRUE(h >= 0 && h < H);
            q_owner[h]++;
            // the head's KV head is the local one the attention op will read
            EXPECT_EQ(ci_kv_head_of(&c, h), ci_shard_kv_head(&p, j / (Hl / Gl)))
                << "rank " << p.rank << ", local head " << j;
        }
        // o_proj's columns are where the attention op writes these heads' outputs
        ASSERT_EQ(p.o_count, (int64_t)Hl * D);
        for (int64_t col = p.o_first; col < p.o_first + p.o_count; col++) o_owner[col]++;
        for (int j = 0; j < Hl; j++) {
            const int h = ci_shard_q_head(&p, j);
            if (!paired) {
                EXPECT_EQ(p.o_first + (int64_t)j * D, (int64_t)h * D);
            } else if (j < Hl / 2) { // local pair j = (j, j + Hl/2) is global pair h
                EXPECT_EQ(ci_shard_q_head(&p, j + Hl / 2), h + P);
                EXPECT_EQ(p.o_first + (int64_t)2 * j * D, (int64_t)2 * h * D);
            }
        }
        EXPECT_EQ(p.mlp_count, c.intermediate_size / tp);
        for (int64_t i = p.mlp_first; i < p.mlp_first + p.mlp_count; i++) mlp_owner[i]++;
        for (int64_t v = p.vocab_first; v < p.vocab_first + p.vocab_count; v++) vocab_owner[v]++;
        EXPECT_EQ(p.local.intermediate_size, c.intermediate_size / tp);
        EXPECT_EQ(p.local.vocab_size, c.vocab_size);
        EXPECT_EQ(p.local.hidden_size, c.hidden_size);
    }
    auto once = [](const std::vector<int> &owners) {
        return std::all_of(owners.begin(), owners.end(), [](int n) { return n == 1; });
    };
    EXPECT_TRUE(once(q_owner)) << "every query head on exactly one rank";
    EXPECT_TRUE(once(o_owner)) << "every o_proj column on exactly one rank";
    EXPECT_TRUE(once(mlp_owner)) << "every MLP row on exactly one rank";
    EXPECT_TRUE(once(vocab_owner)) << "every vocabulary row on exactly one rank";
    const bool shared =
        std::any_of(kv_holders.begin(), kv_holders.end(), [](int n) { return n > 1; });
    EXPECT_TRUE(std::all_of(kv_holders.begin(), kv_holders.end(), [](int n) { return n >= 1; }));
    for (const ci_shard_plan &p : plans) EXPECT_EQ(p.kv_replicated != 0, shared);
}

TEST(ShardPlan, CoversEveryHeadOnceAndServesEveryKVReadOverManyShapes) {
    std::mt19937_64 rng(fresh_seed());
    std::uniform_int_distribution<int> any_heads(1, 48), any_tp(1, 16), any_dim(1, 8);
    int accepted = 0, refused = 0, replicated = 0;
    for (int trial = 0; trial < 4000; trial++) {
        const int paired = trial % 2;
        int H = any_heads(rng);
        if (paired && H % 2) H++;
        std::vector<int> divisors;
        for (int g = 1; g <= H; g++)
            if (H % g == 0) divisors.push_back(g);
        const int G = divisors[rng() % divisors.size()];
        // mostly a tp that divides the heads (or pairs), so that the KV rules are what decides
        std::vector<int> head_divisors;
        for (int t = 1; t <= (paired ? H / 2 : H); t++)
            if ((paired ? H / 2 : H) % t == 0) head_divisors.push_back(t);
        const int tp = rng() % 4 ? head_divisors[rng() % head_divisors.size()] : any_tp(rng);
        // widths and vocabularies that tp divides most of the time
        const int I = (int)(rng() % 4 == 0 ? 8 * tp + 3 : 8 * tp * (1 + rng() % 3));
        const int V = (int)(rng() % 4 == 0 ? 16 * tp + 1 : 16 * tp * (1 + rng() % 2));
        ci_config c = config_of(H, G, any_dim(rng), I, V);
        if (paired) std::snprintf(c.architecture, sizeof c.architecture, "DiffLlamaForCausalLM");
        std::vector<ci_shard_plan> plans(tp);
        cinfer_status status = CINFER_OK;
        for (int r = 0; r < tp && status == CINFER_OK; r++)
            status = ci_shard_plan_make(&c, paired, r, tp, &plans[r]);
        const bool should = tp_should_split(c, paired, tp);
        ASSERT_EQ(status == CINFER_OK, should)
            << "H " << H << ", G " << G << ", I " << I << ", V " << V << ", tp " << tp
            << (paired ? " (paired)" : "") << ": " << cinfer_last_error();
        if (status != CINFER_OK) {
            refused++;
            EXPECT_TRUE(contains_all(cinfer_last_error(), {"tp = " + std::to_string(tp)}));
            continue;
        }
        accepted++;
        replicated += plans[0].kv_replicated;
        check_plans(c, paired, tp, plans);
        if (::testing::Test::HasFatalFailure()) return;
    }
    std::printf("[cinfer] %d shapes split (%d with KV heads replicated), %d refused\n", accepted,
                replicated, refused);
    EXPECT_GT(accepted, 1000);
    EXPECT_GT(replicated, 100);
    EXPECT_GT(refused, 500);
}

// With an even number of KV heads, DiffLlama's rule is the one its message states: the brute force
// and the closed form agree.
TEST(ShardPlan, DiffLlamaWithEvenKVHeadsSplitsExactlyWhenTheMessageSays) {
    for (int H = 2; H <= 64; H += 2)
        for (int G = 2; G <= H; G += 2) {
            if (H % G) continue;
            for (int tp = 1; tp <= 32; tp++) {
                if ((H / 2) % tp) continue; // refused for the pairs first
                const int K = G / 2;
                EXPECT_EQ(pairs_split_evenly(H, G, tp), K % tp == 0 || tp % K == 0)
                    << "H " << H << ", G " << G << ", tp " << tp;
            }
        }
}

TEST(ShardPlan, DiffLlamaRanksOwnWholePairsAndTheKVHeadsTheyRead) {
    // diffllama_gqa2_llama3's shape: 8 heads (4 pairs), 4 KV heads, 2 query heads per KV head
    ci_config c = config_of(8, 4, 16, 96, 128);
    ci_shard_plan p;
    ASSERT_EQ(ci_shard_plan_make(&c, 1, 1, 2, &p), CINFER_OK);
    ASSERT_EQ(p.n_q_ranges, 2); // pairs 2 and 3: heads 2, 3 and 6, 7
    EXPECT_EQ(p.q[0].first, 2);
    EXPECT_EQ(p.q[0].count, 2);
    EXPECT_EQ(p.q[1].first, 6);
    EXPECT_EQ(p.q[1].count, 2);
    ASSERT_EQ(p.n_kv_ranges, 2); // KV heads 1 and 3
    EXPECT_EQ(p.kv[0].first, 1);
    EXPECT_EQ(p.kv[0].count, 1);
    EXPECT_EQ(p.kv[1].first, 3);
    EXPECT_EQ(p.kv[1].count, 1);
    EXPECT_EQ(p.o_first, 2 * 2 * 16); // pair 2's output starts at column 2·2·D
    EXPECT_FALSE(p.kv_replicated);
    // tp 4: one pair each, 1 query head per KV head... each rank reads 2 KV heads of 4
    ASSERT_EQ(ci_shard_plan_make(&c, 1, 3, 4, &p), CINFER_OK);
    EXPECT_EQ(p.q[0].first, 3);
    EXPECT_EQ(p.q[1].first, 7);
    EXPECT_EQ(p.kv[0].first, 1);
    EXPECT_EQ(p.kv[1].first, 3);
    EXPECT_EQ(p.local.n_heads, 2);
    EXPECT_EQ(p.local.n_kv_heads, 2);
    EXPECT_TRUE(p.kv_replicated);
}

TEST(ShardPlan, LlamaReplicatesKVHeadsWhenTpExceedsThem) {
    ci_config c = config_of(8, 2, 12, 96, 128); // llama_gqa_llama3's shape
    for (int r = 0; r < 8; r++) {
        ci_shard_plan p;
        ASSERT_EQ(ci_shard_plan_make(&c, 0, r, 8, &p), CINFER_OK);
        EXPECT_EQ(p.q[0].first, r);
        EXPECT_EQ(p.n_kv_ranges, 1);
        EXPECT_EQ(p.kv[0].first, r / 4); // four query heads per KV head
        EXPECT_EQ(p.local.n_kv_heads, 1);
        EXPECT_TRUE(p.kv_replicated);
    }
}

TEST(ShardPlan, TpsThatDoNotDivideAreRefusedWithTheNumbers) {
    ci_shard_plan p;
    ci_config llama = config_of(4, 2, 16, 96, 128);
    EXPECT_EQ(ci_shard_plan_make(&llama, 0, 0, 8, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"tp = 8", "num_attention_heads = 4", "whole heads"}));
    ci_config diff = config_of(4, 2, 16, 96, 128);
    std::snprintf(diff.architecture, sizeof diff.architecture, "DiffLlamaForCausalLM");
    EXPECT_EQ(ci_shard_plan_make(&diff, 1, 0, 4, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"tp = 4", "2 head pairs", "DiffLlamaForCausalLM",
                                           "num_attention_heads = 4", "whole pairs (p, p + 2)"}));
    ci_config kv = config_of(24, 6, 16, 96, 128);
    EXPECT_EQ(ci_shard_plan_make(&kv, 0, 0, 4, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(),
                             {"tp = 4", "num_key_value_heads = 6", "6 query heads per rank",
                              "num_attention_heads = 24", "4 query heads per KV head"}));
    ci_config diff_kv = config_of(12, 4, 16, 96, 120); // 6 pairs, K = 2, tp 3
    EXPECT_EQ(ci_shard_plan_make(&diff_kv, 1, 0, 3, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(),
                             {"tp = 3", "2 pairs per rank", "num_key_value_heads = 4",
                              "divide num_key_value_heads / 2 or be a multiple of it"}));
    ci_config mlp = config_of(8, 8, 16, 100, 128);
    EXPECT_EQ(ci_shard_plan_make(&mlp, 0, 0, 8, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tp = 8", "intermediate_size = 100"}));
    ci_config vocab = config_of(8, 8, 16, 96, 100);
    EXPECT_EQ(ci_shard_plan_make(&vocab, 0, 0, 8, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"tp = 8", "vocab_size = 100", "vocabulary rows"}));
    EXPECT_EQ(ci_shard_plan_make(&vocab, 0, 0, 0, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"tp = 0"}));
    EXPECT_EQ(ci_shard_plan_make(&vocab, 0, 2, 2, &p), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank 2", "tp = 2"}));
}

// ---- ranks as threads -------------------------------------------------------------------------

// A group of tp CPU communicators; the ranks' threads come and go with run().
struct Group {
    ci_comm_group *group = nullptr;
    std::vector<ci_comm *> comms;
    explicit Group(int tp) {
        EXPECT_EQ(ci_comm_group_create(tp, 120.0, &group), CINFER_OK);
        comms.assign(tp, nullptr);
        for (int r = 0; r < tp; r++) EXPECT_EQ(ci_comm_cpu_create(group, r, &comms[r]), CINFER_OK);
    }
    ~Group() {
        for (ci_comm *comm : comms) ci_comm_destroy(comm);
        ci_comm_group_free(group);
    }
    void run(const std::function<void(int, ci_comm *)> &rank_body) {
        std::vector<std::thread> threads;
        for (int r = 0; r < (int)comms.size(); r++)
            threads.emplace_back([&, r] { rank_body(r, comms[r]); });
        for (auto &thread : threads) thread.join();
    }
};

cinfer_load_options one_thread() {
    cinfer_load_options options{};
    options.backend = CINFER_BACKEND_CPU;
    options.n_threads = 1;
    return options;
}

// Where a model's weights come from: the checkpoint in dir, or the random weights of its
// config.json (cinfer_model_load_random, kRandomSeed), which a rank draws only its part of.
constexpr uint64_t kRandomSeed = 20261206;

struct Source {
    std::string dir;
    bool random = false;
    Source(const std::string &dir_, bool random_ = false) : dir(dir_), random(random_) {}
    std::string config() const { return dir + "/config.json"; }
};

// The whole model, unsharded.
cinfer_status load_whole(const Source &source, cinfer_model **m) {
    return source.random
               ? cinfer_model_load_random(source.config().c_str(), nullptr, kRandomSeed, m)
               : cinfer_model_load(source.dir.c_str(), nullptr, m);
}

// One rank's part of it.
cinfer_status load_rank(const Source &source, ci_comm *comm, cinfer_model **m) {
    const cinfer_load_options options = one_thread();
    return source.random
               ? ci_model_load_random_shard(source.config().c_str(), &options, kRandomSeed, comm, m)
               : ci_model_load_shard(source.dir.c_str(), &options, comm, m);
}

// The slices of every rank of a model, loaded side by side (no collective runs while loading).
struct Shards {
    std::unique_ptr<Group> group;
    std::vector<cinfer_model *> models;
    Shards(const Source &source, int tp) : group(new Group(tp)), models(tp, nullptr) {
        for (int r = 0; r < tp; r++)
            EXPECT_EQ(load_rank(source, group->comms[r], &models[r]), CINFER_OK)
                << cinfer_last_error();
    }
    ~Shards() {
        for (cinfer_model *m : models) cinfer_model_free(m);
    }
};

// The tp values each model is run at: 2 and 4, and 8, wherever the plan accepts them; random:
// its config's random weights rather than its checkpoint.
struct Case {
    std::string model;
    int tp;
    bool random = false;
    Source source() const { return Source(model_dir(model), random); }
};

std::vector<Case> sharded_cases() {
    std::vector<Case> cases;
    for (const std::string &name : model_names()) {
        ModelShape shape = read_shape(name);
        for (int tp : {2, 4, 8}) {
            ci_shard_plan plan;
            if (ci_shard_plan_make(&shape.config, shape.paired, 0, tp, &plan) == CINFER_OK)
                cases.push_back({name, tp});
        }
    }
    return cases;
}

// ---- what a rank reads ------------------------------------------------------------------------

// The checkpoint bytes rank r's slices hold, worked out tensor by tensor from the names: its share
// of the split tensors, all of the replicated ones, and the biases of o_proj and down_proj on rank
// 0 only (the one rank that adds them).
int64_t expected_bytes(const cinfer_model *rank_model, const ci_config &whole) {
    const ci_shard_plan &p = rank_model->shard;
    const ci_checkpoint *ck = rank_model->checkpoint;
    int64_t total = 0;
    for (int i = 0; i < ck->n_index; i++) {
        const st_tensor *t = ck->index[i];
        const std::string name = t->name;
        const int64_t bytes = (int64_t)(t->end - t->begin);
        auto has = [&](const char *part) { return name.find(part) != std::string::npos; };
        if (has("q_proj."))
            total += bytes / whole.n_heads * p.local.n_heads;
        else if (has("k_proj.") || has("v_proj."))
            total += bytes / whole.n_kv_heads * p.local.n_kv_heads;
        else if (has("o_proj.weight") || has("gate_proj.") || has("up_proj.") ||
                 has("down_proj.weight") || has("lm_head.weight"))
            total += bytes / p.tp;
        else if (has("o_proj.bias") || has("down_proj.bias"))
            total += p.rank == 0 ? bytes : 0;
        else
            total += bytes; // the embedding, the norms, DiffLlama's lambdas
    }
    return total;
}

int64_t checkpoint_bytes(const cinfer_model *m) {
    int64_t total = 0;
    for (int i = 0; i < m->checkpoint->n_index; i++)
        total += (int64_t)(m->checkpoint->index[i]->end - m->checkpoint->index[i]->begin);
    return total;
}

class RankSlices : public ::testing::TestWithParam<Case> {};

TEST_P(RankSlices, EachRankReadsItsShareOfTheSplitTensorsAndTheReplicatedOnes) {
    const Case &k = GetParam();
    const std::string dir = model_dir(k.model);
    cinfer_model *whole = nullptr;
    ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &whole), CINFER_OK) << cinfer_last_error();
    const int64_t all = checkpoint_bytes(whole);
    EXPECT_EQ(whole->bytes_read, all) << "the whole model reads every tensor once";
    Shards shards(dir, k.tp);
    int64_t sum = 0;
    for (int r = 0; r < k.tp; r++) {
        const cinfer_model *m = shards.models[r];
        ASSERT_NE(m, nullptr);
        EXPECT_EQ(m->bytes_read, expected_bytes(m, *whole->config)) << "rank " << r;
        EXPECT_LT(m->bytes_read, all) << "rank " << r << " holds the whole checkpoint";
        sum += m->bytes_read;
    }
    std::printf("[cinfer] %-22s tp %d: each rank reads %.1f%% of the checkpoint on average "
                "(%lld bytes of %lld)\n",
                k.model.c_str(), k.tp, 100.0 * (double)sum / k.tp / (double)all,
                (long long)(sum / k.tp), (long long)all);
    cinfer_model_free(whole);
}

// What cinfer_model_shard_memory works out from the plan and the tensor index, without loading a
// rank (`cinfer inspect --tp N`), is what each rank's load then holds.
TEST_P(RankSlices, ShardMemoryIsWhatEachRankLoads) {
    const Case &k = GetParam();
    cinfer_model *whole = nullptr;
    ASSERT_EQ(load_whole(k.source(), &whole), CINFER_OK) << cinfer_last_error();
    Shards shards(k.source(), k.tp);
    for (int r = 0; r < k.tp; r++) {
        const cinfer_model *m = shards.models[r];
        ASSERT_NE(m, nullptr);
        cinfer_shard_memory memory{};
        ASSERT_EQ(cinfer_model_shard_memory(whole, k.tp, r, &memory), CINFER_OK)
            << cinfer_last_error();
        EXPECT_EQ(memory.weight_bytes, m->bytes_read) << "rank " << r;
        EXPECT_EQ(memory.kv_bytes_per_token, m->info.kv_bytes_per_token) << "rank " << r;
        EXPECT_EQ(memory.n_heads, m->config->n_heads);
        EXPECT_EQ(memory.n_kv_heads, m->config->n_kv_heads);
        EXPECT_EQ(memory.intermediate_size, m->config->intermediate_size);
        EXPECT_EQ(memory.kv_replicated, m->shard.kv_replicated);
    }
    cinfer_model_free(whole);
}

// A sharded model's session is one session per rank, each sized by its rank's config: its
// estimate counts every rank's KV cache, activations (the replicated residual stream, the gathered
// logits) and scratch, as each rank's own model counts them.
TEST_P(RankSlices, SessionMemoryCountsEveryRank) {
    const Case &k = GetParam();
    cinfer_load_options options = one_thread();
    options.tensor_parallel = k.tp;
    cinfer_model *sharded = nullptr, *whole = nullptr;
    ASSERT_EQ(cinfer_model_load(model_dir(k.model).c_str(), &options, &sharded), CINFER_OK)
        << cinfer_last_error();
    ASSERT_EQ(load_whole(k.source(), &whole), CINFER_OK);
    Shards shards(k.source(), k.tp);
    for (int n_seqs : {1, 3}) {
        const int n_ctx = 40;
        int64_t ranks = 0;
        for (cinfer_model *m : shards.models)
            ranks += cinfer_session_memory_bytes_batch(m, n_ctx, n_seqs);
        EXPECT_EQ(cinfer_session_memory_bytes_batch(sharded, n_ctx, n_seqs), ranks)
            << n_seqs << " sequences";
        EXPECT_GT(ranks, cinfer_session_memory_bytes_batch(whole, n_ctx, n_seqs))
            << "every rank holds the whole residual stream and the gathered logits";
    }
    cinfer_model_free(whole);
    cinfer_model_free(sharded);
}

TEST(ShardMemory, RefusesWhatCannotBeSplitWithTheNumbers) {
    cinfer_model *m = nullptr;
    ASSERT_EQ(cinfer_model_load(fixture_dir("llama_gqa_llama3").c_str(), nullptr, &m), CINFER_OK);
    cinfer_shard_memory memory{};
    EXPECT_EQ(cinfer_model_shard_memory(m, 3, 0, &memory), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(
        contains_all(cinfer_last_error(), {"config.json", "tp = 3", "num_attention_heads = 8"}));
    EXPECT_EQ(cinfer_model_shard_memory(m, 2, 2, &memory), CINFER_ERR_ARGUMENT);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"rank 2", "tp = 2"}));
    cinfer_model_free(m);
    const Source random(fixture_dir("llama_gqa_llama3"), true);
    ASSERT_EQ(load_whole(random, &m), CINFER_OK);
    EXPECT_EQ(cinfer_model_shard_memory(m, 2, 0, &memory), CINFER_ERR_UNSUPPORTED);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {"random weights"}));
    cinfer_model_free(m);
}

// Element (row, col) of a weight, widened.
float at(const ci_tensor &t, int64_t row, int64_t col) {
    const int64_t cols = t.n_dims == 2 ? t.shape[1] : 1;
    return ci_tensor_get_f32(&t, row * cols + col);
}

// The rank's tensor equals rows `rows` (in order) and columns [col0, col0 + cols) of the whole's.
void expect_slice(const ci_tensor &part, const ci_tensor &whole, const std::vector<int64_t> &rows,
                  int64_t col0, const char *what) {
    if (!whole.data) {
        EXPECT_EQ(part.data, nullptr) << what;
        return;
    }
    ASSERT_NE(part.data, nullptr) << what;
    ASSERT_EQ(part.shape[0], (int64_t)rows.size()) << what;
    const int64_t cols = part.n_dims == 2 ? part.shape[1] : 1;
    for (size_t i = 0; i < rows.size(); i++)
        for (int64_t j = 0; j < cols; j++)
            if (at(part, (int64_t)i, j) != at(whole, rows[i], col0 + j)) {
                ADD_FAILURE() << what << ": element (" << i << ", " << j << ") is not row "
                              << rows[i] << ", column " << col0 + j << " of the whole tensor";
                return;
            }
}

std::vector<int64_t> head_rows(const ci_head_range *ranges, int n, int D) {
    std::vector<int64_t> rows;
    for (int i = 0; i < n; i++)
        for (int64_t r = (int64_t)ranges[i].first * D;
             r < (int64_t)(ranges[i].first + ranges[i].count) * D; r++)
            rows.push_back(r);
    return rows;
}

std::vector<int64_t> row_range(int64_t first, int64_t count) {
    std::vector<int64_t> rows;
    for (int64_t r = first; r < first + count; r++) rows.push_back(r);
    return rows;
}

// A block of whole rows is bound in place: one contiguous range of the model's own mapping of the
// file, from row first_row on.
bool in_place(const cinfer_model *m, const std::string &name, const ci_tensor &part,
              int64_t first_row) {
    const st_tensor *t = checkpoint_find(m->checkpoint, name.c_str());
    if (!t) return false;
    const size_t row_bytes = (size_t)(t->n_dims == 2 ? t->shape[1] : 1) * ci_dtype_size(t->dtype);
    return part.data == (const char *)t->data + (size_t)first_row * row_bytes;
}

// Every tensor of rank r's model is its part of the whole model's, value for value; bound in place
// where it is a block of whole rows of a checkpoint (not for random weights: drawn, not mapped).
void expect_rank_slices(const cinfer_model *whole, const cinfer_model *m, int r, bool in_files) {
    const int D = whole->config->head_dim, E = whole->config->hidden_size;
    const ci_shard_plan &p = m->shard;
    SCOPED_TRACE("rank " + std::to_string(r));
    const std::vector<int64_t> q = head_rows(p.q, p.n_q_ranges, D);
    const std::vector<int64_t> kv = head_rows(p.kv, p.n_kv_ranges, D);
    const std::vector<int64_t> all_rows = row_range(0, E);
    const std::vector<int64_t> mlp = row_range(p.mlp_first, p.mlp_count);
    for (int l = 0; l < whole->config->n_layers; l++) {
        const ci_layer &w = whole->layers[l], &s = m->layers[l];
        expect_slice(s.q_proj, w.q_proj, q, 0, "q_proj");
        expect_slice(s.q_bias, w.q_bias, q, 0, "q_proj.bias");
        expect_slice(s.k_proj, w.k_proj, kv, 0, "k_proj");
        expect_slice(s.v_proj, w.v_proj, kv, 0, "v_proj");
        expect_slice(s.k_bias, w.k_bias, kv, 0, "k_proj.bias");
        expect_slice(s.v_bias, w.v_bias, kv, 0, "v_proj.bias");
        expect_slice(s.o_proj, w.o_proj, all_rows, p.o_first, "o_proj");
        expect_slice(s.gate_proj, w.gate_proj, mlp, 0, "gate_proj");
        expect_slice(s.up_proj, w.up_proj, mlp, 0, "up_proj");
        expect_slice(s.gate_bias, w.gate_bias, mlp, 0, "gate_proj.bias");
        expect_slice(s.up_bias, w.up_bias, mlp, 0, "up_proj.bias");
        expect_slice(s.down_proj, w.down_proj, all_rows, p.mlp_first, "down_proj");
        if (r == 0) expect_slice(s.o_bias, w.o_bias, all_rows, 0, "o_proj.bias");
        if (r == 0) expect_slice(s.down_bias, w.down_bias, all_rows, 0, "down_proj.bias");
        if (r > 0) {
            EXPECT_EQ(s.o_bias.data, nullptr) << "only rank 0 adds the bias";
            EXPECT_EQ(s.down_bias.data, nullptr);
        }
        EXPECT_EQ(s.lambda, w.lambda) << "DiffLlama's lambda is replicated";
        if (!in_files) continue;
        // column-parallel slices of whole rows stay in the mapped file; the rest are copies
        const std::string layer = "model.layers." + std::to_string(l) + ".";
        EXPECT_TRUE(in_place(m, layer + "mlp.gate_proj.weight", s.gate_proj, p.mlp_first));
        EXPECT_EQ(
            in_place(m, layer + "self_attn.q_proj.weight", s.q_proj, (int64_t)p.q[0].first * D),
            p.n_q_ranges == 1);
        EXPECT_FALSE(in_place(m, layer + "self_attn.o_proj.weight", s.o_proj, 0));
    }
    expect_slice(m->lm_head, whole->lm_head, row_range(p.vocab_first, p.vocab_count), 0, "lm_head");
    expect_slice(m->embed_tokens, whole->embed_tokens, row_range(0, whole->config->vocab_size), 0,
                 "embed_tokens (replicated)");
    expect_slice(m->norm, whole->norm, row_range(0, E), 0, "norm (replicated)");
    if (in_files) {
        EXPECT_TRUE(in_place(m, "model.embed_tokens.weight", m->embed_tokens, 0))
            << "the embedding is replicated, in place";
    }
}

TEST_P(RankSlices, EachRankHoldsTheRowsAndColumnsOfItsHeads) {
    const Case &k = GetParam();
    cinfer_model *whole = nullptr;
    ASSERT_EQ(load_whole(k.source(), &whole), CINFER_OK) << cinfer_last_error();
    Shards shards(k.source(), k.tp);
    for (int r = 0; r < k.tp; r++) {
        ASSERT_NE(shards.models[r], nullptr);
        expect_rank_slices(whole, shards.models[r], r, !k.random);
    }
    cinfer_model_free(whole);
}

std::string case_name(const ::testing::TestParamInfo<Case> &info) {
    return info.param.model + "_tp" + std::to_string(info.param.tp) +
           (info.param.random ? "_random" : "");
}

// Random weights of a Llama with GQA (tied, with biases; tp 4 and 8 above its 2 KV heads) and of a
// DiffLlama (two blocks of q rows per rank), at every tp their plans accept.
std::vector<Case> random_cases() {
    std::vector<Case> cases;
    for (const Case &k : sharded_cases())
        if (k.model == "llama_gqa_llama3" || k.model == "diffllama_gqa8")
            cases.push_back({k.model, k.tp, true});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, RankSlices, ::testing::ValuesIn(sharded_cases()), case_name);

// A rank of a random-weight model draws only its part, each element the value the whole random
// model holds there: its slices are the whole model's, bit for bit, as a checkpoint's are.
class RandomSlices : public ::testing::TestWithParam<Case> {};

TEST_P(RandomSlices, EachRankDrawsTheWholeModelsValuesOfItsPart) {
    const Case &k = GetParam();
    cinfer_model *whole = nullptr;
    ASSERT_EQ(load_whole(k.source(), &whole), CINFER_OK) << cinfer_last_error();
    Shards shards(k.source(), k.tp);
    int64_t sum = 0;
    for (int r = 0; r < k.tp; r++) {
        ASSERT_NE(shards.models[r], nullptr);
        expect_rank_slices(whole, shards.models[r], r, false);
        // rank 0, which binds a part of every tensor, counts the whole model's parameters, as
        // fill_info counts a checkpoint's (the others bind no o_proj or down_proj bias)
        if (r == 0) {
            EXPECT_EQ(shards.models[r]->info.n_params, whole->info.n_params);
            EXPECT_EQ(shards.models[r]->info.weight_bytes, whole->info.weight_bytes);
        }
        EXPECT_LT(shards.models[r]->bytes_read, whole->bytes_read) << "rank " << r;
        sum += shards.models[r]->bytes_read;
    }
    EXPECT_GT(sum, whole->bytes_read) << "the replicated embedding and norms, once per rank";
    cinfer_model_free(whole);
}

INSTANTIATE_TEST_SUITE_P(Models, RandomSlices, ::testing::ValuesIn(random_cases()), case_name);

// ---- the forward pass -------------------------------------------------------------------------

// One forward call's outputs: the hidden state after every stage, the logits of every row.
struct Call {
    std::vector<std::vector<float>> hidden; // [stage][T · E]
    std::vector<float> logits;              // [T · V]
};

// A prompt, then greedy decode steps: what each call gave and the ids picked.
struct Trace {
    std::vector<Call> calls;
    std::vector<int32_t> ids;
    cinfer_status status = CINFER_OK;
    std::string error;
};

// The buffers of one sequence for a model, as engine/session.c allocates them from the model's
// config (a rank's own under tensor parallelism), and its forward calls.
class Runner {
  public:
    Runner(const cinfer_model *m, int n_threads, int n_ctx) : m_(m), n_ctx_(n_ctx) {
        const ci_config *c = m->config;
        EXPECT_EQ(ci_backend_create(CINFER_BACKEND_CPU, n_threads, &be_), CINFER_OK);
        const int64_t R = n_ctx, E = c->hidden_size, I = c->intermediate_size;
        const int64_t H = c->n_heads, G = c->n_kv_heads, D = c->head_dim;
        tokens_ = alloc(CI_I32, {R});
        act_.x = alloc(CI_F32, {R, E});
        act_.x_norm = alloc(CI_F32, {R, E});
        act_.q = alloc(CI_F32, {R, H, D});
        act_.k_new = alloc(CI_F32, {R, G, D});
        act_.v_new = alloc(CI_F32, {R, G, D});
        act_.attn = alloc(CI_F32, {R, H, D});
        act_.gate = alloc(CI_F32, {R, I});
        act_.up = alloc(CI_F32, {R, I});
        logits_ = alloc(CI_F32, {R, c->vocab_size});
        for (int l = 0; l < c->n_layers; l++) {
            k_cache_.push_back(alloc(CI_F32, {1, n_ctx, G, D}));
            v_cache_.push_back(alloc(CI_F32, {1, n_ctx, G, D}));
        }
        inv_freq_.resize((size_t)D / 2);
        rope_.inv_freq = inv_freq_.data();
        EXPECT_EQ(ci_backend_reserve(be_, be_->ops->workspace_bytes(be_, c, n_ctx, 1)), CINFER_OK);
    }
    ~Runner() {
        for (void *p : owned_) be_->ops->free(be_, p);
        ci_backend_free(be_);
    }

    // tokens at positions pos0 ..: every stage's hidden state and every row's logits into call
    cinfer_status forward(const std::vector<int32_t> &tokens, int pos0, Call *call) {
        const ci_config *c = m_->config;
        const int T = (int)tokens.size();
        EXPECT_LE(pos0 + T, n_ctx_);
        std::memcpy(tokens_.data, tokens.data(), tokens.size() * sizeof(int32_t));
        ci_rope_frequencies(c, pos0 + T, inv_freq_.data(), &rope_.attention_scaling);
        const ci_tensor rows = ci_tensor_rows(&tokens_, 0, T);
        ci_forward_step step{};
        step.tokens = &rows;
        step.n_seqs = 1, step.n_tokens = T, step.pos0 = pos0;
        step.rope = &rope_;
        step.k_cache = k_cache_.data(), step.v_cache = v_cache_.data();
        call->hidden.assign(c->n_layers + 2, {});
        step.hook = {observe, call};
        CI_TRY(ci_model_forward(be_, m_, &step, &act_));
        const ci_tensor normed = ci_tensor_rows(&act_.x_norm, 0, T);
        ci_tensor logits = ci_tensor_rows(&logits_, 0, T);
        CI_TRY(ci_model_logits(be_, m_, &logits, &normed));
        const float *values = static_cast<const float *>(logits.data);
        call->logits.assign(values, values + (size_t)T * c->vocab_size);
        return CINFER_OK;
    }

  private:
    ci_tensor alloc(ci_dtype dtype, std::initializer_list<int64_t> shape) {
        ci_tensor t{nullptr, dtype, (int)shape.size(), {0, 0, 0, 0}};
        int i = 0;
        for (int64_t d : shape) t.shape[i++] = d;
        t.data = be_->ops->alloc(be_, ci_tensor_nbytes(&t));
        owned_.push_back(t.data);
        return t;
    }
    static void observe(void *user, int stage, const ci_tensor *hidden) {
        const float *values = static_cast<const float *>(hidden->data);
        static_cast<Call *>(user)->hidden[stage].assign(values, values + ci_tensor_numel(hidden));
    }

    const cinfer_model *m_;
    int n_ctx_;
    ci_backend *be_ = nullptr;
    ci_tensor tokens_{}, logits_{};
    ci_activations act_{};
    std::vector<ci_tensor> k_cache_, v_cache_;
    std::vector<float> inv_freq_;
    ci_rope_freqs rope_{};
    std::vector<void *> owned_;
};

int32_t argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

// The prompt in one call, then n_steps greedy decode steps of one token each.
Trace run_greedy(const cinfer_model *m, int n_threads, const std::vector<int32_t> &prompt,
                 int n_steps) {
    Trace trace;
    const int V = m->config->vocab_size;
    Runner runner(m, n_threads, (int)prompt.size() + n_steps);
    std::vector<int32_t> tokens = prompt;
    int pos0 = 0;
    for (int step = 0; step <= n_steps; step++) {
        trace.calls.emplace_back();
        trace.status = runner.forward(tokens, pos0, &trace.calls.back());
        if (trace.status != CINFER_OK) {
            trace.error = cinfer_last_error();
            return trace;
        }
        pos0 += (int)tokens.size();
        const float *last = trace.calls.back().logits.data() + (tokens.size() - 1) * (size_t)V;
        tokens = {argmax(last, V)};
        trace.ids.push_back(tokens[0]);
    }
    return trace;
}

double max_abs_diff(const std::vector<float> &a, const std::vector<float> &b) {
    if (a.size() != b.size()) return INFINITY;
    double worst = 0;
    for (size_t i = 0; i < a.size(); i++) {
        const double d = std::fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d; // NaN fails
    }
    return worst;
}

// max |a - b| / max(1, max |b|), b the whole model's
double scaled_diff(const std::vector<float> &a, const std::vector<float> &b) {
    double scale = 1.0;
    for (float v : b) scale = std::max(scale, (double)std::fabs(v));
    return max_abs_diff(a, b) / scale;
}

std::vector<int32_t> random_prompt(int vocab, int n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    std::vector<int32_t> prompt(n);
    for (auto &t : prompt) t = id(rng);
    return prompt;
}

// Every rank of a tp group runs the prompt and the steps in lockstep, each on its own thread.
std::vector<Trace> run_ranks(const Source &source, int tp, const std::vector<int32_t> &prompt,
                             int n_steps) {
    Group group(tp);
    std::vector<Trace> traces(tp);
    group.run([&](int rank, ci_comm *comm) {
        cinfer_model *m = nullptr;
        if (load_rank(source, comm, &m) != CINFER_OK) {
            traces[rank].status = CINFER_ERR_WEIGHTS;
            traces[rank].error = cinfer_last_error();
            ci_comm_abort(comm, "its model did not load"); // the others must not wait for it
            return;
        }
        traces[rank] = run_greedy(m, 1, prompt, n_steps);
        cinfer_model_free(m);
    });
    return traces;
}

constexpr int kPromptTokens = 11, kDecodeSteps = 4;

class ShardedForward : public ::testing::TestWithParam<Case> {};

TEST_P(ShardedForward, LogitsAndEveryLayerMatchTheWholeModelAndGreedyIdsAreTheSame) {
    const Case &k = GetParam();
    cinfer_model *whole = nullptr;
    ASSERT_EQ(load_whole(k.source(), &whole), CINFER_OK) << cinfer_last_error();
    const std::vector<int32_t> prompt =
        random_prompt(whole->config->vocab_size, kPromptTokens, fresh_seed() + (uint64_t)k.tp);
    const Trace want = run_greedy(whole, 2, prompt, kDecodeSteps);
    ASSERT_EQ(want.status, CINFER_OK) << want.error;
    const std::vector<Trace> got = run_ranks(k.source(), k.tp, prompt, kDecodeSteps);

    double worst_logits = 0, worst_hidden = 0;
    for (int r = 0; r < k.tp; r++) {
        const Trace &rank = got[r];
        ASSERT_EQ(rank.status, CINFER_OK) << "rank " << r << ": " << rank.error;
        EXPECT_EQ(rank.ids, want.ids) << "rank " << r << "'s greedy ids";
        ASSERT_EQ(rank.calls.size(), want.calls.size());
        for (size_t c = 0; c < want.calls.size(); c++) {
            const double logits = scaled_diff(rank.calls[c].logits, want.calls[c].logits);
            EXPECT_LE(logits, kTolerance) << "rank " << r << ", call " << c << ": logits";
            worst_logits = std::max(worst_logits, logits);
            for (size_t s = 0; s < want.calls[c].hidden.size(); s++) {
                const double hidden = scaled_diff(rank.calls[c].hidden[s], want.calls[c].hidden[s]);
                EXPECT_LE(hidden, kTolerance) << "rank " << r << ", call " << c << ", stage " << s;
                worst_hidden = std::max(worst_hidden, hidden);
            }
            // the all-reduce and the all-gather leave the same bits on every rank
            EXPECT_EQ(rank.calls[c].logits, got[0].calls[c].logits) << "rank " << r << " vs 0";
            EXPECT_EQ(rank.calls[c].hidden, got[0].calls[c].hidden) << "rank " << r << " vs 0";
        }
    }
    std::printf(
        "[cinfer] %-22s tp %d%s: max |sharded - whole| / max(1, |whole|): logits %.2e, hidden "
        "%.2e\n",
        k.model.c_str(), k.tp, k.random ? " (random)" : "", worst_logits, worst_hidden);
    cinfer_model_free(whole);
}

INSTANTIATE_TEST_SUITE_P(Models, ShardedForward, ::testing::ValuesIn(sharded_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(RandomWeights, ShardedForward, ::testing::ValuesIn(random_cases()),
                         case_name);

// One rank holding everything runs the same operations as the whole model, plus collectives that
// copy: the same bits.
TEST(ShardedForward, OneRankIsTheWholeModelBitForBit) {
    for (const std::string &name : model_names()) {
        cinfer_model *whole = nullptr;
        ASSERT_EQ(cinfer_model_load(model_dir(name).c_str(), nullptr, &whole), CINFER_OK);
        const std::vector<int32_t> prompt =
            random_prompt(whole->config->vocab_size, kPromptTokens, fresh_seed());
        const Trace want = run_greedy(whole, 1, prompt, kDecodeSteps);
        const std::vector<Trace> got = run_ranks(model_dir(name), 1, prompt, kDecodeSteps);
        ASSERT_EQ(got[0].status, CINFER_OK) << got[0].error;
        EXPECT_EQ(got[0].ids, want.ids) << name;
        for (size_t c = 0; c < want.calls.size(); c++) {
            EXPECT_EQ(got[0].calls[c].logits, want.calls[c].logits) << name << ", call " << c;
            EXPECT_EQ(got[0].calls[c].hidden, want.calls[c].hidden) << name << ", call " << c;
        }
        cinfer_model_free(whole);
    }
}

// The cases above, checked against what the issue asks: tp 2 and 4 for every model, 8 where the
// heads allow; KV heads replicated in both architectures; and the rest refused.
TEST(ShardedForward, EveryModelRunsAtTwoAndFourWhereTheHeadsAllowAndEightWhereTheyDo) {
    std::map<std::string, std::set<int>> tps;
    for (const Case &k : sharded_cases()) tps[k.model].insert(k.tp);
    int replicated_llama = 0, replicated_diff = 0;
    for (const std::string &name : model_names()) {
        ModelShape shape = read_shape(name);
        const int pairs_or_heads = shape.paired ? shape.config.n_heads / 2 : shape.config.n_heads;
        EXPECT_TRUE(tps[name].count(2)) << name;
        EXPECT_EQ(tps[name].count(4) != 0, pairs_or_heads % 4 == 0) << name;
        EXPECT_EQ(tps[name].count(8) != 0, pairs_or_heads % 8 == 0) << name;
        for (int tp : tps[name]) {
            ci_shard_plan plan;
            ASSERT_EQ(ci_shard_plan_make(&shape.config, shape.paired, 0, tp, &plan), CINFER_OK);
            (shape.paired ? replicated_diff : replicated_llama) += plan.kv_replicated;
        }
    }
    EXPECT_TRUE(tps["llama_gqa_llama3"].count(8));
    EXPECT_TRUE(tps["diffllama_gqa8"].count(8));
    EXPECT_GE(replicated_llama, 2) << "Llama with tp above num_key_value_heads";
    EXPECT_GE(replicated_diff, 2) << "DiffLlama with KV heads on several ranks";
}

TEST(ShardedLoad, ATpThatDoesNotDivideTheModelIsRefusedWithTheNumbers) {
    struct Refusal {
        std::string model;
        int tp;
        std::vector<std::string> message;
    };
    const std::vector<Refusal> refusals = {
        {"llama_mha", 8, {"config.json", "tp = 8", "num_attention_heads = 4"}},
        {"diffllama_mha", 4, {"config.json", "tp = 4", "2 head pairs", "num_attention_heads = 4"}},
        {"diffllama_tiny", 3, {"config.json", "tp = 3", "4 head pairs"}},
    };
    for (const Refusal &refusal : refusals) {
        Group group(refusal.tp);
        const cinfer_load_options options = one_thread();
        cinfer_model *m = nullptr;
        EXPECT_EQ(
            ci_model_load_shard(model_dir(refusal.model).c_str(), &options, group.comms[0], &m),
            CINFER_ERR_ARGUMENT)
            << refusal.model;
        EXPECT_EQ(m, nullptr);
        const std::string message = cinfer_last_error();
        for (const std::string &part : refusal.message) EXPECT_TRUE(contains_all(message, {part}));
    }
}

// A rank whose load fails aborts the group, and the ranks already running fail instead of waiting.
TEST(ShardedLoad, ARankThatCannotLoadDoesNotHangTheOthers) {
    const int tp = 2;
    Group group(tp);
    std::vector<Trace> traces(tp);
    group.run([&](int rank, ci_comm *comm) {
        const cinfer_load_options options = one_thread();
        cinfer_model *m = nullptr;
        const std::string dir = rank == 1 ? std::string("/nonexistent") : fixture_dir("llama_mha");
        if (ci_model_load_shard(dir.c_str(), &options, comm, &m) != CINFER_OK) {
            ci_comm_abort(comm, "its checkpoint could not be opened");
            return;
        }
        traces[rank] = run_greedy(m, 1, {1, 2, 3}, 2);
        cinfer_model_free(m);
    });
    EXPECT_EQ(traces[0].status, CINFER_ERR_COMM);
    EXPECT_TRUE(contains_all(traces[0].error,
                             {"rank 1 aborted the group: its checkpoint could not be opened"}));
}

// A rank's model in a plain cinfer_session: the session sizes its buffers from the model's config,
// which is the rank's, so sessions and cinfer_generate run unchanged on every rank, in lockstep.
TEST(ShardedSession, GenerateOnEveryRankGivesTheWholeModelsTokens) {
    for (const Case &k : std::vector<Case>{{"diffllama_tiny", 2}, {"llama_gqa_llama3", 4}}) {
        const std::string dir = model_dir(k.model);
        cinfer_generate_params params = {};
        params.max_new_tokens = 6;
        params.ignore_eos = 1;
        auto collect = [](void *user, int32_t token) {
            static_cast<std::vector<int32_t> *>(user)->push_back(token);
            return 0;
        };
        auto generate = [&](cinfer_model *m, std::vector<int32_t> *ids) {
            cinfer_session *session = nullptr;
            ASSERT_EQ(cinfer_session_create(m, 32, &session), CINFER_OK) << cinfer_last_error();
            const std::vector<int32_t> prompt = {1, 5, 9, 14, 2, 7};
            cinfer_generate_stats stats;
            EXPECT_EQ(cinfer_generate(session, prompt.data(), (int)prompt.size(), &params, collect,
                                      ids, nullptr, &stats),
                      CINFER_OK)
                << cinfer_last_error();
            cinfer_session_free(session);
        };
        cinfer_model *whole = nullptr;
        ASSERT_EQ(cinfer_model_load(dir.c_str(), nullptr, &whole), CINFER_OK);
        std::vector<int32_t> want;
        generate(whole, &want);
        cinfer_model_free(whole);
        std::vector<std::vector<int32_t>> got(k.tp);
        Group group(k.tp);
        group.run([&](int rank, ci_comm *comm) {
            const cinfer_load_options options = one_thread();
            cinfer_model *m = nullptr;
            ASSERT_EQ(ci_model_load_shard(dir.c_str(), &options, comm, &m), CINFER_OK);
            generate(m, &got[rank]);
            cinfer_model_free(m);
        });
        for (int r = 0; r < k.tp; r++)
            EXPECT_EQ(got[r], want) << k.model << " tp " << k.tp << ", rank " << r;
    }
}

} // namespace
