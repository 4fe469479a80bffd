// The CPU ops of a ragged step over a paged KV cache against the contiguous ops, which the
// fixtures tie to transformers: each row of a paged step must equal its sequence run alone, bit
// for bit. Blocks sit in shuffled order in the pool and every block no sequence owns holds NaN,
// so a read outside a sequence's blocks or past its length cannot go unnoticed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "test_util.h"

extern "C" {
#include "kernels/backend.h"
#include "kernels/cpu/ops_cpu.h"
}

using namespace cinfer_test;

namespace {

struct Shape {
    int H, G, D;
};

struct Backend {
    ci_backend *be = nullptr;
    Backend() { EXPECT_EQ(ci_cpu_backend_create(2, &be), CINFER_OK); }
    ~Backend() { ci_backend_free(be); }
};

ci_tensor tensor(void *data, ci_dtype dtype, std::vector<int64_t> shape) {
    ci_tensor t{};
    t.data = data;
    t.dtype = dtype;
    t.n_dims = (int)shape.size();
    for (size_t i = 0; i < shape.size(); i++) t.shape[i] = shape[i];
    return t;
}

// A ragged step: sequence s has seq_len[s] keys and its last rows[s] positions are new rows.
struct Step {
    std::vector<int> seq_len, rows;
};

void check_step(const Shape &shape, int block_size, const Step &plan, bool differential,
                std::mt19937_64 &rng) {
    const int H = shape.H, G = shape.G, D = shape.D, S = (int)plan.seq_len.size();
    const size_t row_floats = (size_t)G * D;
    // blocks: each sequence's, plus spares, in shuffled order
    std::vector<int> need(S);
    int n_blocks = 3, max_blocks = 0, max_len = 0;
    for (int s = 0; s < S; s++) {
        need[s] = (plan.seq_len[s] + block_size - 1) / block_size;
        n_blocks += need[s];
        max_blocks = std::max(max_blocks, need[s]);
        max_len = std::max(max_len, plan.seq_len[s]);
    }
    std::vector<int> order(n_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int32_t> tables((size_t)S * max_blocks, 0);
    for (int s = 0, next = 0; s < S; s++)
        for (int b = 0; b < need[s]; b++) tables[(size_t)s * max_blocks + b] = order[next++];

    std::vector<float> k_pool((size_t)n_blocks * block_size * row_floats, NAN);
    std::vector<float> v_pool(k_pool.size(), NAN);
    // every sequence's keys and values, positions [0, seq_len): the earlier ones already in the
    // pool, the new rows stored by kv_store_paged
    std::vector<std::vector<float>> keys(S), values(S);
    std::vector<int32_t> positions, slots, seq_starts{0}, seq_lens;
    std::vector<float> k_new, v_new;
    for (int s = 0; s < S; s++) {
        keys[s] = random_floats(rng, (size_t)plan.seq_len[s] * row_floats);
        values[s] = random_floats(rng, (size_t)plan.seq_len[s] * row_floats);
        const int first_new = plan.seq_len[s] - plan.rows[s];
        for (int p = 0; p < plan.seq_len[s]; p++) {
            const int slot =
                tables[(size_t)s * max_blocks + p / block_size] * block_size + p % block_size;
            const float *k = keys[s].data() + (size_t)p * row_floats;
            const float *v = values[s].data() + (size_t)p * row_floats;
            if (p < first_new) {
                std::copy(k, k + row_floats, k_pool.begin() + (size_t)slot * row_floats);
                std::copy(v, v + row_floats, v_pool.begin() + (size_t)slot * row_floats);
            } else {
                positions.push_back(p);
                slots.push_back(slot);
                k_new.insert(k_new.end(), k, k + row_floats);
                v_new.insert(v_new.end(), v, v + row_floats);
            }
        }
        seq_starts.push_back((int32_t)positions.size());
        seq_lens.push_back(plan.seq_len[s]);
    }
    const int R = (int)positions.size();
    std::vector<float> q = random_floats(rng, (size_t)R * H * D);
    std::vector<float> out((size_t)R * H * D, NAN);

    Backend cpu;
    ci_backend *be = cpu.be;
    ci_config config{};
    config.hidden_size = H * D;
    config.intermediate_size = H * D;
    config.n_heads = H;
    config.head_dim = D;
    ASSERT_EQ(ci_backend_reserve(be, be->ops->paged_workspace_bytes(be, &config, R, max_len, S)),
              CINFER_OK);
    ci_tensor kp = tensor(k_pool.data(), CI_F32, {n_blocks, block_size, G, D});
    ci_tensor vp = tensor(v_pool.data(), CI_F32, {n_blocks, block_size, G, D});
    ci_tensor kn = tensor(k_new.data(), CI_F32, {R, G, D});
    ci_tensor vn = tensor(v_new.data(), CI_F32, {R, G, D});
    ci_tensor slot_t = tensor(slots.data(), CI_I32, {R});
    be->ops->kv_store_paged(be, &kp, &vp, &kn, &vn, &slot_t);

    ci_paged_step step{};
    step.n_rows = R;
    step.n_seqs = S;
    step.block_size = block_size;
    step.max_blocks_per_seq = max_blocks;
    step.max_seq_len = max_len;
    step.max_seq_rows = *std::max_element(plan.rows.begin(), plan.rows.end());
    step.positions = tensor(positions.data(), CI_I32, {R});
    step.slots = slot_t;
    step.seq_starts = tensor(seq_starts.data(), CI_I32, {S + 1});
    step.seq_lens = tensor(seq_lens.data(), CI_I32, {S});
    step.block_tables = tensor(tables.data(), CI_I32, {S, max_blocks});
    step.host_seq_starts = seq_starts.data();
    step.host_seq_lens = seq_lens.data();
    ci_tensor q_t = tensor(q.data(), CI_F32, {R, H, D});
    ci_tensor out_t = tensor(out.data(), CI_F32, {R, H, D});
    const float lambda = 0.3f, lambda_init = 0.2f, eps = 1e-5f;
    if (differential)
        be->ops->paged_diff_attention(be, &out_t, &q_t, &kp, &vp, &step, lambda, lambda_init, eps);
    else
        be->ops->paged_attention(be, &out_t, &q_t, &kp, &vp, &step);

    // each sequence alone through the contiguous op
    for (int s = 0; s < S; s++) {
        const int n = plan.rows[s], len = plan.seq_len[s], r0 = seq_starts[s];
        ci_tensor kc = tensor(keys[s].data(), CI_F32, {len, G, D});
        ci_tensor vc = tensor(values[s].data(), CI_F32, {len, G, D});
        std::vector<float> q_s(q.begin() + (size_t)r0 * H * D,
                               q.begin() + (size_t)(r0 + n) * H * D);
        std::vector<float> expected((size_t)n * H * D, NAN);
        ci_tensor qs = tensor(q_s.data(), CI_F32, {n, H, D});
        ci_tensor es = tensor(expected.data(), CI_F32, {n, H, D});
        if (differential)
            be->ops->diff_attention(be, &es, &qs, &kc, &vc, len - n, lambda, lambda_init, eps);
        else
            be->ops->attention(be, &es, &qs, &kc, &vc, len - n);
        for (size_t i = 0; i < expected.size(); i++)
            ASSERT_EQ(out[(size_t)r0 * H * D + i], expected[i])
                << "sequence " << s << " of " << S << ", element " << i << ", H=" << H << " G=" << G
                << " D=" << D << " block_size=" << block_size
                << (differential ? " differential" : "");
    }
}

TEST(PagedOps, AttentionEqualsEachSequenceAlone) {
    std::mt19937_64 rng(fresh_seed());
    const std::vector<Shape> shapes = {{4, 4, 16}, {8, 2, 32}, {8, 1, 64}, {6, 3, 128}, {4, 2, 8}};
    // decode rows, prompt chunks after cached positions, whole prompts, chunks ending mid-block
    const std::vector<Step> plans = {
        {{1}, {1}},
        {{17, 5, 33}, {1, 5, 1}},
        {{40, 16, 9, 24}, {7, 1, 9, 16}},
        {{64, 3}, {13, 2}},
    };
    for (const Shape &shape : shapes)
        for (int block_size : {4, 16, 5})
            for (const Step &plan : plans)
                for (bool differential : {false, true}) {
                    if (differential && shape.H % 2) continue;
                    check_step(shape, block_size, plan, differential, rng);
                    if (HasFatalFailure()) return;
                }
}

// rope_rows at each row's own position = rope of a one-token sequence at that position.
TEST(PagedOps, RopeRowsEqualsRopeAtEachPosition) {
    std::mt19937_64 rng(fresh_seed());
    Backend cpu;
    const int H = 4, G = 2, D = 32, R = 9;
    std::vector<float> inv_freq(D / 2);
    for (int i = 0; i < D / 2; i++) inv_freq[i] = std::pow(10000.0f, -2.0f * (float)i / (float)D);
    const ci_rope_freqs freqs = {inv_freq.data(), 1.0f};
    std::vector<int32_t> positions = {0, 5, 6, 7, 300, 1, 2, 40000, 17};
    std::vector<float> q = random_floats(rng, (size_t)R * H * D),
                       k = random_floats(rng, (size_t)R * G * D);
    std::vector<float> q_rows = q, k_rows = k;
    ci_tensor qt = tensor(q_rows.data(), CI_F32, {R, H, D}),
              kt = tensor(k_rows.data(), CI_F32, {R, G, D});
    ci_tensor pt = tensor(positions.data(), CI_I32, {R});
    cpu.be->ops->rope_rows(cpu.be, &qt, &kt, &pt, &freqs);
    for (int r = 0; r < R; r++) {
        std::vector<float> q1(q.begin() + (size_t)r * H * D, q.begin() + (size_t)(r + 1) * H * D);
        std::vector<float> k1(k.begin() + (size_t)r * G * D, k.begin() + (size_t)(r + 1) * G * D);
        ci_tensor q1t = tensor(q1.data(), CI_F32, {1, H, D}),
                  k1t = tensor(k1.data(), CI_F32, {1, G, D});
        cpu.be->ops->rope(cpu.be, &q1t, &k1t, positions[r], &freqs);
        EXPECT_EQ(0, std::memcmp(q1.data(), q_rows.data() + (size_t)r * H * D, q1.size() * 4)) << r;
        EXPECT_EQ(0, std::memcmp(k1.data(), k_rows.data() + (size_t)r * G * D, k1.size() * 4)) << r;
    }
}

} // namespace
