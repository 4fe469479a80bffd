/* A backend runs the model graph's ops on one kind of device.
 *
 * models/ calls ops by name through this table (ci_matmul(be, ...)); kernels/cpu implements them
 * for the CPU reference path and kernels/cuda for NVIDIA GPUs, with the same op names. The graph
 * is written once.
 *
 * Conventions shared by every op:
 *   - activations are row-major tensors whose first dimension counts tokens;
 *   - weights are [out_features, in_features] as Hugging Face stores them, in F32, BF16 or F16;
 *   - shapes and dtypes were validated when the model was loaded, so ops only assert them.
 *
 * The CUDA backend (kernels/cuda), decisions that hold for all of it:
 *   - Memory: every tensor an op sees is in device memory: weights were uploaded when the model
 *     was loaded (kernels/cuda/weights_cuda.cu: raw checkpoint bytes through a bounded pinned
 *     staging buffer, converted on the device), and a session allocates its activations and KV
 *     cache once through `alloc` (cudaMalloc, zero-filled). No op allocates.
 *   - Dtypes: matrices (the linear layers, the embedding table, lm_head) are stored in the run
 *     dtype (cinfer_load_options.dtype); vectors (norm weights, biases) in F32. Activations and
 *     the residual stream are F32 in every mode: matmul rounds its input to the weight's dtype
 *     on the way in and accumulates and writes in F32. The KV cache holds the run dtype
 *     (ci_kv_cache_dtype); attention accumulates in F32.
 *   - Streams: each backend owns one stream and one cuBLAS handle; every launch goes to that
 *     stream and is checked (CUDA_CHECK / CUBLAS_CHECK with file and line). to_host and
 *     to_device synchronize with the stream, so the host sees finished results.
 *   - Positions: ops take pos0 from the host. Inside a recorded decode step (ci_backend_run_step)
 *     the CUDA kernels read it instead from device memory that set_position writes before each
 *     replay, so that one graph serves every step. The fused kernels (sdpa, flash) read the
 *     length there too and touch only the keys it covers; eager's cuBLAS GEMMs cannot, so they
 *     span the whole cache, masked past the position: a recorded eager step costs O(n_ctx).
 *   - RoPE: the frequency table (every scaling type) is computed on the host (models/rope.c) and
 *     uploaded when it changes; the kernel takes cos/sin of position · inv_freq with the precise
 *     cosf/sinf, rather than reading a [n_ctx, D/2] table, which keeps dynamic scaling (whose
 *     frequencies change with the length) as simple as the rest.
 *   - Fused: the residual add into the matmul (accumulate), and the projections of one input
 *     into one op (kernels/backend.h: matmul). Not fused: the RMSNorm after the residual add.
 *   - Greedy decoding after the prompt: argmax runs on the device and only token ids cross PCIe
 *     (the prompt's last row of logits still comes to the host for the first token; sampling with
 *     a temperature takes every step's logits to the host sampler). */
#ifndef CINFER_BACKEND_H
#define CINFER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../common/model_config.h"
#include "../include/cinfer.h"
#include "../common/tensor.h"

typedef struct ci_backend ci_backend;

/* Rows (tokens, over all sequences) per forward pass: longer prompts run in several passes
 * (bounds activation memory). */
enum { CI_MAX_BATCH = 512 };

/* Tokens of each of n_seqs lockstep sequences one forward pass takes: a pass holds
 * n_seqs · ci_tokens_per_pass rows, never more than CI_MAX_BATCH (n_seqs <= CI_MAX_BATCH). */
static inline int ci_tokens_per_pass(int n_ctx, int n_seqs) {
    const int fit = CI_MAX_BATCH / n_seqs;
    return n_ctx < fit ? n_ctx : fit;
}
static inline int ci_rows_per_pass(int n_ctx, int n_seqs) {
    return n_seqs * ci_tokens_per_pass(n_ctx, n_seqs);
}

/* RoPE frequencies for one forward call: inv_freq has head_dim/2 entries, and cos/sin are
 * multiplied by attention_scaling (1 except for yarn). */
typedef struct ci_rope_freqs {
    const float *inv_freq;
    float attention_scaling;
} ci_rope_freqs;

/* One output of the matmul op: out = x·Wᵀ (+ bias), x shared by the projections of one call. */
typedef struct ci_projection {
    ci_tensor *out;
    const ci_tensor *weight;
    const ci_tensor *bias; /* NULL, or a tensor without data, for none */
} ci_projection;
enum { CI_MAX_PROJECTIONS = 3 };

/* One ragged step over a paged KV cache (the continuous-batching engine, engine/engine.c): rows
 * from S sequences, each at its own positions. Sequence s contributes rows
 * [seq_starts[s], seq_starts[s+1]), consecutive tokens ending at position seq_lens[s] − 1: a
 * decode row, or a chunk of its prompt after the positions already in its cache. Its keys and
 * values live in fixed-size blocks of a pool shared by every sequence, pool [n_blocks, block_size,
 * G, D] per layer; position p of sequence s is row p mod block_size of block
 * block_tables[s][p / block_size]. The tensors are on the backend's device; the host copies give
 * the ops their loop bounds and launch shapes without a round trip. */
typedef struct ci_paged_step {
    int n_rows, n_seqs;      /* R, S */
    int block_size;          /* positions per block */
    int max_blocks_per_seq;  /* columns of block_tables */
    int max_seq_len;         /* the largest seq_lens[s] of the step (bounds scratch) */
    int max_seq_rows;        /* the most rows any one sequence has in the step */
    ci_tensor positions;     /* I32 [R]: the position of each row in its sequence */
    ci_tensor slots;         /* I32 [R]: where row r's K and V go, block · block_size + offset */
    ci_tensor seq_starts;    /* I32 [S + 1] */
    ci_tensor seq_lens;      /* I32 [S]: keys sequence s has once this step is stored */
    ci_tensor block_tables;  /* I32 [S, max_blocks_per_seq]; unused entries are never read */
    const int32_t *host_seq_starts, *host_seq_lens; /* [S + 1], [S] */
} ci_paged_step;

typedef struct ci_backend_ops {
    const char *name;

    /* memory the backend computes on */
    void *(*alloc)(ci_backend *be, size_t bytes);
    void (*free)(ci_backend *be, void *memory);
    void (*to_device)(ci_backend *be, void *device_dst, const void *host_src, size_t bytes);
    void (*to_host)(ci_backend *be, void *host_dst, const void *device_src, size_t bytes);
    /* scratch the ops below need for a model of this config running n_seqs sequences with n_ctx
     * tokens of context each, ci_rows_per_pass(n_ctx, n_seqs) rows at a time */
    size_t (*workspace_bytes)(const ci_backend *be, const ci_config *config, int n_ctx, int n_seqs);

    /* out[t] = table[tokens[t]]                         tokens I32 [T], table [V, E] -> [T, E] */
    void (*embedding)(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                      const ci_tensor *table);
    /* out = weight ⊙ x / sqrt(mean(x²) + eps), per row          x [T, E], weight [E] -> [T, E] */
    void (*rmsnorm)(ci_backend *be, ci_tensor *out, const ci_tensor *x, const ci_tensor *weight,
                    float eps);
    /* For each of the n (1 .. CI_MAX_PROJECTIONS) projections of one input x [T, K]:
     *   out = x·Wᵀ (+ bias), or with accumulate, out += x·Wᵀ (+ bias)     W [N, K] -> out [T, N]
     * Accumulate is the residual add folded into the product (x = x + o_proj(attn)); the bias joins
     * the product first, as torch's x + linear(h). Projections of one input share the work on it:
     * the CUDA backend rounds x to the weights' dtype once, and for a few rows reads every weight
     * in one launch (q, k and v of a decode step are one kernel, not three plus conversions). */
    void (*matmul)(ci_backend *be, const ci_tensor *x, const ci_projection *projections, int n,
                   int accumulate);
    /* The position-aware ops below (rope, attention, diff_attention, kv_store) run B sequences in
     * lockstep: q [B, T, H, D], k and v [B, T, G, D], caches [B, n_ctx, G, D], sequence b's new
     * tokens over its own cache b, every sequence at the same positions pos0 .. pos0 + T − 1. A
     * 3-D tensor ([T, H, D], [n_ctx, G, D]) is the one-sequence case, B = 1. */

    /* Rotates q [T, H, D] and k [T, G, D] in place; token t sits at position pos0 + t. */
    void (*rope)(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0, const ci_rope_freqs *freqs);
    /* Causal GQA attention of the T new queries over cache rows [0, pos0 + T):
     * q [T, H, D], k_cache and v_cache [n_ctx, G, D] -> out [T, H, D]. */
    void (*attention)(ci_backend *be, ci_tensor *out, const ci_tensor *q, const ci_tensor *k_cache,
                      const ci_tensor *v_cache, int pos0);
    /* Differential attention (docs/MODEL_MATH.md): for pair p, (A1·Vcat − lambda·A2·Vcat), RMS
     * group norm over 2D with eps, times (1 − lambda_init), into out[t, 2pD:(2p+2)D]. Shapes as
     * above. */
    void (*diff_attention)(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                           const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                           float lambda, float lambda_init, float eps);
    /* out = act(gate) ⊙ up                                      all [T, I]; out may alias gate */
    void (*gated_activation)(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                             const ci_tensor *up, ci_activation act);
    /* cache rows [pos0, pos0 + T) = k_new, v_new
     *                                      k_new, v_new [T, G, D], caches [n_ctx, G, D] */
    void (*kv_store)(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache, const ci_tensor *k_new,
                     const ci_tensor *v_new, int pos0);

    /* ---- the same over a ragged step and a paged cache (ci_paged_step above) ----
     * Row r of sequence s at position p attends keys [0, p] of sequence s: those already in its
     * blocks and those of its own earlier rows of this step (stored first by kv_store_paged), so
     * a chunk of a prompt is causal within itself and sees everything before it. Each row's
     * result equals the contiguous op's for that sequence alone (query at pos0 = p over a cache
     * holding the sequence's positions [0, p]). */

    /* Rotates q [R, H, D] and k [R, G, D] in place; row r sits at position positions[r]. */
    void (*rope_rows)(ci_backend *be, ci_tensor *q, ci_tensor *k, const ci_tensor *positions,
                      const ci_rope_freqs *freqs);
    /* pool row slots[r] = k_new[r], v_new[r]       k_new, v_new [R, G, D], pools [N, bs, G, D] */
    void (*kv_store_paged)(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                           const ci_tensor *k_new, const ci_tensor *v_new, const ci_tensor *slots);
    /* q [R, H, D] over each row's sequence's blocks -> out [R, H, D] */
    void (*paged_attention)(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                            const ci_tensor *k_pool, const ci_tensor *v_pool,
                            const ci_paged_step *step);
    void (*paged_diff_attention)(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                 const ci_tensor *k_pool, const ci_tensor *v_pool,
                                 const ci_paged_step *step, float lambda, float lambda_init,
                                 float eps);
    /* scratch the paged ops need for steps of up to max_rows rows whose sequences hold up to
     * max_seq_len keys, from up to max_seqs sequences */
    size_t (*paged_workspace_bytes)(const ci_backend *be, const ci_config *config, int max_rows,
                                    int max_seq_len, int max_seqs);

    /* ids[r] = first index of the largest logit of row r, NaN never winning (as the host sampler)
     *                                                            logits [R, V] -> ids I32 [R] */
    void (*argmax)(ci_backend *be, ci_tensor *ids, const ci_tensor *logits);

    /* Optional (NULL on the CPU), driven only by ci_backend_run_step below: a decode step recorded
     * once and replayed. Between capture_begin
     * and capture_end the ops read their position from what set_position last wrote and their
     * attention spans the whole cache; with record = 1 they are recorded, not run (replay runs
     * the recording), with record = 0 they run: a rehearsal that does the one-time work (kernel
     * loading, cuBLAS's choices) that must not happen while recording. capture_end returns
     * non-zero when the recording failed, and the caller then runs its ops eagerly; else a
     * recording's id (in *id), which replay takes. A backend keeps every recording until it is
     * freed. */
    void (*capture_begin)(ci_backend *be, int record);
    int (*capture_end)(ci_backend *be, int *id);
    void (*replay)(ci_backend *be, int id);
    void (*set_position)(ci_backend *be, int pos0);
    /* Optional: called by ci_backend_free before the struct is freed (streams, handles, graphs). */
    void (*release)(ci_backend *be);
    /* Optional (NULL where ops finish before they return, as on the CPU): waits until every op
     * issued so far has finished. */
    void (*synchronize)(ci_backend *be);
    /* Device time, without making the host wait between ops (cinfer bench: its rows and
     * --profile). mark records in slot `slot` the moment the device reaches it in its queue,
     * when every op issued before has finished; seconds_between waits for mark `to` and returns
     * the device time from mark `from` to it (CUDA events). Slots count from 0 and grow on
     * demand; a slot that could not be had reads NaN. Not inside a recording. The CPU's ops
     * finish before they return, so its marks read the host clock. */
    void (*mark)(ci_backend *be, int slot);
    double (*seconds_between)(ci_backend *be, int from, int to);
} ci_backend_ops;

/* An execution context on one device. Each session owns one, so that sessions never share
 * scratch memory (or, on a GPU, streams). */
struct ci_backend {
    const ci_backend_ops *ops;
    cinfer_attention attention; /* the kind the attention ops run (CUDA; never AUTO once loaded) */
    int n_threads;
    void *workspace; /* scratch the ops may use; sized by ci_backend_reserve */
    size_t workspace_bytes;
};

/* The dtype of the KV cache: F32 on the CPU reference path; the run dtype on CUDA, where the fused
 * attention kernels read BF16/F16 K and V straight into the tensor cores and decode reads half the
 * bytes. */
ci_dtype ci_kv_cache_dtype(const cinfer_load_options *options);

/* CINFER_OK when this build can run `kind`; else the message says why. */
cinfer_status ci_backend_available(cinfer_backend kind);
cinfer_status ci_backend_create(cinfer_backend kind, int n_threads, ci_backend **out);
/* The same from load options (the CUDA device index, the attention kind among them; a backend made
 * without a model, as tests and benches do, runs eager attention when the options say auto). */
cinfer_status ci_backend_create_for(const cinfer_load_options *options, ci_backend **out);
void ci_backend_free(ci_backend *be);
/* Makes sure the workspace holds bytes, once, before the hot path runs. */
cinfer_status ci_backend_reserve(ci_backend *be, size_t bytes);

/* A step recorded once and replayed after (a CUDA graph of a decode step), for one caller. */
typedef struct ci_recorded_step {
    int state; /* 0 not recorded yet, 1 recorded, -1 recording failed: the step runs eagerly */
    int id;    /* the backend's name for the recording, once recorded */
} ci_recorded_step;

/* Runs step(user, pos0). Where the backend records (CUDA) and `record` allows it, the first call
 * rehearses the step and records it, and every later call replays the recording with pos0
 * written where the recorded ops read their position; elsewhere the ops run one by one. So the
 * step must depend on nothing that changes between calls but pos0 and what it reads from device
 * memory (buffer addresses and shapes fixed, tokens and RoPE frequencies uploaded before). */
void ci_backend_run_step(ci_backend *be, ci_recorded_step *recorded, int record, int pos0,
                         void (*step)(void *user, int pos0), void *user);

/* The model graph calls ops through these, so that it reads like the math. */
static inline void ci_embedding(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                                const ci_tensor *table) {
    be->ops->embedding(be, out, tokens, table);
}
static inline void ci_rmsnorm(ci_backend *be, ci_tensor *out, const ci_tensor *x,
                              const ci_tensor *weight, float eps) {
    be->ops->rmsnorm(be, out, x, weight, eps);
}
/* out = x·Wᵀ (+ bias) */
static inline void ci_matmul(ci_backend *be, ci_tensor *out, const ci_tensor *x,
                             const ci_tensor *weight, const ci_tensor *bias) {
    const ci_projection projection = {out, weight, bias};
    be->ops->matmul(be, x, &projection, 1, 0);
}
/* out += x·Wᵀ (+ bias): the residual add */
static inline void ci_matmul_add(ci_backend *be, ci_tensor *out, const ci_tensor *x,
                                 const ci_tensor *weight, const ci_tensor *bias) {
    const ci_projection projection = {out, weight, bias};
    be->ops->matmul(be, x, &projection, 1, 1);
}
/* Several projections of one input (q, k, v; gate, up) in one op */
static inline void ci_project(ci_backend *be, const ci_tensor *x, const ci_projection *projections,
                              int n) {
    be->ops->matmul(be, x, projections, n, 0);
}
static inline void ci_rope(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0,
                           const ci_rope_freqs *freqs) {
    be->ops->rope(be, q, k, pos0, freqs);
}
static inline void ci_attention(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    be->ops->attention(be, out, q, k_cache, v_cache, pos0);
}
static inline void ci_diff_attention(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                     const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                                     float lambda, float lambda_init, float eps) {
    be->ops->diff_attention(be, out, q, k_cache, v_cache, pos0, lambda, lambda_init, eps);
}
static inline void ci_gated_activation(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                                       const ci_tensor *up, ci_activation act) {
    be->ops->gated_activation(be, out, gate, up, act);
}
static inline void ci_kv_store(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache,
                               const ci_tensor *k_new, const ci_tensor *v_new, int pos0) {
    be->ops->kv_store(be, k_cache, v_cache, k_new, v_new, pos0);
}
static inline void ci_rope_rows(ci_backend *be, ci_tensor *q, ci_tensor *k,
                                const ci_tensor *positions, const ci_rope_freqs *freqs) {
    be->ops->rope_rows(be, q, k, positions, freqs);
}
static inline void ci_kv_store_paged(ci_backend *be, ci_tensor *k_pool, ci_tensor *v_pool,
                                     const ci_tensor *k_new, const ci_tensor *v_new,
                                     const ci_tensor *slots) {
    be->ops->kv_store_paged(be, k_pool, v_pool, k_new, v_new, slots);
}
static inline void ci_paged_attention(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                      const ci_tensor *k_pool, const ci_tensor *v_pool,
                                      const ci_paged_step *step) {
    be->ops->paged_attention(be, out, q, k_pool, v_pool, step);
}
static inline void ci_paged_diff_attention(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                           const ci_tensor *k_pool, const ci_tensor *v_pool,
                                           const ci_paged_step *step, float lambda,
                                           float lambda_init, float eps) {
    be->ops->paged_diff_attention(be, out, q, k_pool, v_pool, step, lambda, lambda_init, eps);
}
static inline void ci_argmax(ci_backend *be, ci_tensor *ids, const ci_tensor *logits) {
    be->ops->argmax(be, ids, logits);
}

#endif
