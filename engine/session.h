/* A session: n_seqs sequences decoded in lockstep (one by default), each with its own KV cache,
 * and the activation buffers they share. The session owns every buffer, hands them to the model's
 * forward pass (models/model.h: ci_model_forward) step by step, and moves logits to the host.
 *
 * Lockstep: every forward pass takes the same number of new tokens T from each sequence, so all
 * sequences always sit at the same position n_past: what llama-batched-bench measures, and what
 * the fused CUDA attention kernels take in one launch (attention_params.n_seqs). */
#ifndef CINFER_SESSION_H
#define CINFER_SESSION_H

#include "../models/model.h"
#include "../kernels/backend.h"
#include "tp_ranks.h"

struct cinfer_session {
    cinfer_model *model;
    ci_backend *be;
    int n_ctx;     /* positions the KV cache holds */
    int n_past;    /* positions already in it (the same for every sequence) */
    int n_seqs;    /* sequences in lockstep */
    int max_batch; /* tokens of each sequence per forward pass; longer inputs are split */

    /* per layer [n_seqs, n_ctx, G, D]: K after RoPE, V as projected */
    ci_tensor *k_cache, *v_cache;

    /* buffers for up to R = n_seqs · max_batch rows, all on the backend's device */
    ci_tensor tokens;   /* I32 [R] */
    ci_activations act; /* the forward pass's working buffers */
    ci_tensor logits;   /* [logit_rows, V]: logits go to the host this many rows at a time */
    int logit_rows;     /* at least n_seqs: a decode step's logits are one block */
    ci_tensor sampled;  /* I32 [n_seqs]: the tokens greedy decoding picked on the device */
    ci_recorded_step decode_step; /* a greedy decode step, recorded where the backend can */
    cinfer_status step_status;    /* of the last greedy step's forward pass and logits */

    float *inv_freq; /* [D/2] on the device, for the current forward call */
    float *host_inv_freq;
    ci_rope_freqs rope;
    int rope_seq_len; /* what inv_freq was computed for (dynamic scaling), -1 before any */

    cinfer_hidden_observer observer;
    void *observer_user;
    float *host_hidden; /* [B, E] staging for the observer */

    /* Tensor parallelism (model->followers set): rank 0's session is mirrored on every follower
     * rank under tp_id (engine/tp_ranks.h), each call handed to them as a message. A follower's
     * own session computes logits (the all-gather needs every rank) but never copies them to the
     * host. */
    uint32_t tp_id;
    int mirrored;           /* rank 0's: the followers hold a copy, freed with this one */
    int follower;           /* a rank > 0's */
    int32_t *follower_next; /* [n_seqs]: a follower's greedy ids, which nobody reads */
};

/* One greedy decoding step of every sequence: runs tokens[b] ([n_seqs]) at position n_past and
 * puts the argmax of sequence b's logits in next[b]. The argmax runs on the backend's device, so
 * only token ids cross PCIe; on a backend that can capture (CUDA), the step is recorded as a
 * graph the first time and replayed after, unless an observer is set (it needs the hidden states
 * on the host). */
cinfer_status ci_session_greedy_step(cinfer_session *session, const int32_t *tokens, int32_t *next);

/* A follower rank's copy of rank 0's session (tp_ranks.h), and the calls it runs. */
cinfer_status ci_session_create_follower(cinfer_model *model, int n_ctx, int n_seqs,
                                         cinfer_session **out);
cinfer_status ci_session_follow(cinfer_session *session, ci_tp_op op, ci_tp_reader *r);

#endif
