/* Tensor parallelism: which part of the model each of tp ranks holds (docs/TENSOR_PARALLEL.md).
 *
 * Megatron-LM's split of a decoder layer, as vLLM runs Llama:
 *   - q/k/v_proj and gate/up_proj are column-parallel: a rank holds a block of their output rows
 *     (whole heads; a slice of the MLP width), so its q, k, v and MLP activations are its own and
 *     attention runs on its heads alone;
 *   - o_proj and down_proj are row-parallel: a rank holds the input columns that its activations
 *     feed, so its product is one term of the full sum; an all-reduce adds the terms, and the
 *     bias is added once (rank 0's term);
 *   - KV heads are divided among the ranks, each rank holding those its query heads read; when tp
 *     exceeds what the KV heads can be divided into, ranks hold copies (replicated);
 *   - lm_head is split by vocabulary rows and the logits gathered;
 *   - the embedding, the norms and DiffLlama's lambdas are replicated (the embedding: see
 *     docs/TENSOR_PARALLEL.md, "The embedding").
 *
 * DiffLlama: attention works on head pairs (p, p + P), P = H/2, so a rank owns whole pairs: pairs
 * [p0, p0 + P') are its query heads [p0, p0 + P') followed by [P + p0, P + p0 + P'): two blocks
 * of q rows, and the KV heads those read, up to two blocks of k/v rows. Its local heads are then
 * a DiffLlama of 2P' heads whose pairs are (p', p' + P'), which is what the attention op computes.
 *
 * The rank's config (`local`) is the checkpoint's with its share of heads, KV heads and MLP width,
 * so the forward code runs unchanged on a rank except at the communication points. */
#ifndef CINFER_SHARD_H
#define CINFER_SHARD_H

#include <stdint.h>

#include "../common/model_config.h"
#include "../include/cinfer.h"

/* Heads [first, first + count) of the checkpoint's numbering. */
typedef struct ci_head_range {
    int first, count;
} ci_head_range;

typedef struct ci_shard_plan {
    int rank, tp;
    /* Query heads the rank owns, in its local order: one range (Llama), or two (DiffLlama: its
     * pairs' first heads, then their second heads). Rows [first·D, (first+count)·D) of q_proj. */
    int n_q_ranges;
    ci_head_range q[2];
    /* KV heads its query heads read, in its local order (ascending), one or two ranges: local
     * query head j reads local KV head j / (local H / local G), as the attention ops assume. */
    int n_kv_ranges;
    ci_head_range kv[2];
    int kv_replicated; /* 1 when some of its KV heads are held by other ranks too */
    /* o_proj's input columns [o_first, o_first + o_count): where the attention op writes its heads'
     * outputs (Llama: head h at h·D; DiffLlama: pair p at 2p·D) */
    int64_t o_first, o_count;
    /* gate/up_proj rows, which are down_proj's input columns */
    int64_t mlp_first, mlp_count;
    /* lm_head rows: the rank's columns of the logits */
    int64_t vocab_first, vocab_count;
    /* the checkpoint's config with n_heads, n_kv_heads and intermediate_size of this rank
     * (vocab_size stays whole: the embedding is replicated and the logits are gathered) */
    ci_config local;
} ci_shard_plan;

/* The plan of rank `rank` of `tp` for a model of this config; paired_heads for DiffLlama's head
 * pairs. tp = 1 is the whole model. A tp that does not divide what it must is refused
 * (CINFER_ERR_ARGUMENT) with the numbers: heads, pairs, KV heads, intermediate size, vocabulary. */
cinfer_status ci_shard_plan_make(const ci_config *config, int paired_heads, int rank, int tp,
                                 ci_shard_plan *out);

/* The checkpoint's KV head that query head h reads: h / (H / G). */
static inline int ci_kv_head_of(const ci_config *config, int h) {
    return h / (config->n_heads / config->n_kv_heads);
}

/* The checkpoint's number of the rank's local query head j (of its local KV head j). */
int ci_shard_q_head(const ci_shard_plan *plan, int j);
int ci_shard_kv_head(const ci_shard_plan *plan, int j);

#endif
