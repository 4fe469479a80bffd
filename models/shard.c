/* The tensor-parallel plan of one rank (models/shard.h): its heads, KV heads, MLP rows and
 * vocabulary rows, or the reason a tp cannot split the model, with the numbers. */
#include <string.h>

#include "../common/error.h"
#include "shard.h"

/* Head j of the ranges laid end to end; -1 past their end. */
static int head_in(const ci_head_range *ranges, int n_ranges, int j) {
    for (int i = 0; i < n_ranges; i++) {
        if (j < ranges[i].count) return ranges[i].first + j;
        j -= ranges[i].count;
    }
    return -1;
}

int ci_shard_q_head(const ci_shard_plan *plan, int j) {
    return head_in(plan->q, plan->n_q_ranges, j);
}
int ci_shard_kv_head(const ci_shard_plan *plan, int j) {
    return head_in(plan->kv, plan->n_kv_ranges, j);
}

static int count_heads(const ci_head_range *ranges, int n_ranges) {
    int n = 0;
    for (int i = 0; i < n_ranges; i++) n += ranges[i].count;
    return n;
}

/* The KV heads the rank's query heads read, ascending, and whether the local layout serves them:
 * local query head j must read local KV head j / (local H / local G), as the attention ops assume.
 * Query heads are ascending within each range and KV heads ascend with them, so each range of
 * query heads reads one range of KV heads, and the two ranges of DiffLlama merge when they meet. */
static int place_kv_heads(const ci_config *c, ci_shard_plan *p) {
    p->n_kv_ranges = 0;
    for (int i = 0; i < p->n_q_ranges; i++) {
        const int first = ci_kv_head_of(c, p->q[i].first);
        const int last = ci_kv_head_of(c, p->q[i].first + p->q[i].count - 1);
        ci_head_range *previous = p->n_kv_ranges ? &p->kv[p->n_kv_ranges - 1] : NULL;
        if (previous && first <= previous->first + previous->count) {
            const int end = last + 1 > previous->first + previous->count
                                ? last + 1
                                : previous->first + previous->count;
            previous->count = end - previous->first;
        } else {
            p->kv[p->n_kv_ranges++] = (ci_head_range){first, last - first + 1};
        }
    }
    const int n_q = count_heads(p->q, p->n_q_ranges), n_kv = count_heads(p->kv, p->n_kv_ranges);
    if (n_q % n_kv != 0) return 0;
    for (int j = 0; j < n_q; j++)
        if (ci_kv_head_of(c, ci_shard_q_head(p, j)) != ci_shard_kv_head(p, j / (n_q / n_kv)))
            return 0;
    return 1;
}

/* Rank `rank`'s query heads (tp divides the heads, or DiffLlama's pairs), the o_proj columns their
 * outputs feed, and the KV heads they read; 0 when no local layout serves those reads. */
static int place_heads(const ci_config *c, int paired_heads, int rank, int tp, ci_shard_plan *p) {
    const int H = c->n_heads, D = c->head_dim, local_heads = H / tp;
    if (paired_heads) {
        const int P = H / 2, pairs = P / tp, p0 = rank * pairs;
        p->n_q_ranges = 2;
        p->q[0] = (ci_head_range){p0, pairs};
        p->q[1] = (ci_head_range){P + p0, pairs};
        p->o_first = (int64_t)2 * p0 * D; /* pair p's output is columns [2pD, 2(p+1)D) */
    } else {
        p->n_q_ranges = 1;
        p->q[0] = (ci_head_range){rank * local_heads, local_heads};
        p->o_first = (int64_t)rank * local_heads * D;
    }
    p->o_count = (int64_t)local_heads * D;
    return place_kv_heads(c, p);
}

/* Every rank's heads are served by a local layout, and every rank holds as many KV heads: the same
 * shapes (caches, activations, memory) on every rank. That is, as vLLM has it, tp divides the KV
 * heads or is a multiple of them; for DiffLlama with an even G, the same of G/2 (each half of the
 * heads reads its own half of the KV heads). */
static int kv_heads_split_evenly(const ci_config *c, int paired_heads, int tp) {
    int local_kv_heads = -1;
    for (int r = 0; r < tp; r++) {
        ci_shard_plan p;
        if (!place_heads(c, paired_heads, r, tp, &p)) return 0;
        const int n = count_heads(p.kv, p.n_kv_ranges);
        if (local_kv_heads >= 0 && n != local_kv_heads) return 0;
        local_kv_heads = n;
    }
    return 1;
}

cinfer_status ci_shard_plan_make(const ci_config *c, int paired_heads, int rank, int tp,
                                 ci_shard_plan *out) {
    memset(out, 0, sizeof *out);
    if (tp < 1)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "tensor parallelism: tp = %d; it must be at least 1",
                       tp);
    if (rank < 0 || rank >= tp)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tensor parallelism: rank %d is outside 0 .. %d (tp = %d)", rank, tp - 1,
                       tp);
    const int H = c->n_heads, G = c->n_kv_heads, group = H / G;
    out->rank = rank;
    out->tp = tp;

    /* whole heads, or whole pairs of DiffLlama's heads */
    if (paired_heads && (H / 2) % tp != 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tp = %d does not divide the %d head pairs of %s (num_attention_heads = "
                       "%d): a rank holds whole pairs (p, p + %d)",
                       tp, H / 2, c->architecture, H, H / 2);
    if (!paired_heads && H % tp != 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tp = %d does not divide num_attention_heads = %d: a rank holds whole "
                       "heads",
                       tp, H);

    /* the KV heads they read */
    if (!kv_heads_split_evenly(c, paired_heads, tp)) {
        if (paired_heads)
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "tp = %d cannot give every rank as many whole KV heads for its pairs: "
                           "%d pairs per rank, num_attention_heads = %d, num_key_value_heads = %d "
                           "(%d query heads per KV head); %s",
                           tp, H / 2 / tp, H, G, group,
                           G % 2 == 0 ? "tp must divide num_key_value_heads / 2 or be a multiple "
                                        "of it"
                                      : "with an odd num_key_value_heads, the ranks' heads read "
                                        "their KV heads unevenly");
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tp = %d cannot divide num_key_value_heads = %d among the ranks: %d query "
                       "heads per rank, num_attention_heads = %d (%d query heads per KV head); tp "
                       "must divide num_key_value_heads or be a multiple of it",
                       tp, G, H / tp, H, group);
    }
    place_heads(c, paired_heads, rank, tp, out);
    const int local_kv_heads = count_heads(out->kv, out->n_kv_ranges);
    out->kv_replicated = local_kv_heads * tp > G;

    /* the MLP width and the vocabulary */
    if (c->intermediate_size % tp != 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tp = %d does not divide intermediate_size = %d (gate/up_proj are split by "
                       "rows, down_proj by columns)",
                       tp, c->intermediate_size);
    if (c->vocab_size % tp != 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "tp = %d does not divide vocab_size = %d (lm_head is split by vocabulary "
                       "rows)",
                       tp, c->vocab_size);
    out->mlp_count = c->intermediate_size / tp;
    out->mlp_first = (int64_t)rank * out->mlp_count;
    out->vocab_count = c->vocab_size / tp;
    out->vocab_first = (int64_t)rank * out->vocab_count;

    out->local = *c;
    out->local.n_heads = H / tp;
    out->local.n_kv_heads = local_kv_heads;
    out->local.intermediate_size = (int)out->mlp_count;
    return CINFER_OK;
}
