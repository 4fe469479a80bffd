/* A session: n_seqs sequences decoded in lockstep (one by default), each with its own KV cache,
 * and the activation buffers they share.
 *
 * Lockstep: every forward pass takes the same number of new tokens T from each sequence, so all
 * sequences always sit at the same position n_past. The B·T rows of a pass are sequence-major
 * (row b·T + t is token t of sequence b): row-wise ops (embedding, norms, matmuls, activations)
 * just see more rows, and the position-aware ops (rope, kv_store, attention) see [B, T, ...]
 * views with caches [B, n_ctx, G, D]. This is what llama-batched-bench measures, and what the
 * fused CUDA attention kernels take in one launch (attention_params.n_seqs). */
#ifndef CINFER_SESSION_H
#define CINFER_SESSION_H

#include "../models/model.h"
#include "../kernels/backend.h"

struct cinfer_session {
    cinfer_model *model;
    ci_backend *be;
    int n_ctx;     /* positions the KV cache holds */
    int n_past;    /* positions already in it (the same for every sequence) */
    int n_seqs;    /* sequences in lockstep */
    int max_batch; /* tokens of each sequence per forward pass; longer inputs are split */

    /* per layer [n_seqs, n_ctx, G, D]: K after RoPE, V as projected */
    ci_tensor *k_cache, *v_cache;

    /* activations for up to B = n_seqs · max_batch rows, all on the backend's device */
    ci_tensor tokens; /* I32 [B] */
    ci_tensor x;      /* [B, E] the residual stream */
    ci_tensor x_norm; /* [B, E] its normalized copy that feeds attention and the MLP */
    ci_tensor q;      /* [B, H, D] */
    ci_tensor k_new;  /* [B, G, D] keys of the new tokens, rotated, then stored in the cache */
    ci_tensor v_new;  /* [B, G, D] their values */
    ci_tensor attn;   /* [B, H, D] attention output, input of o_proj */
    ci_tensor gate;   /* [B, I] */
    ci_tensor up;     /* [B, I] */
    ci_tensor logits; /* [logit_rows, V]: logits go to the host this many rows at a time */
    int logit_rows;   /* at least n_seqs: a decode step's logits are one block */
    ci_tensor sampled; /* I32 [n_seqs]: the tokens greedy decoding picked on the device */
    int decode_graph;  /* 1 once a decode step is captured, -1 when capture failed (run eagerly) */

    float *inv_freq; /* [D/2] on the device, for the current forward call */
    float *host_inv_freq;
    ci_rope_freqs rope;
    int rope_seq_len; /* what inv_freq was computed for (dynamic scaling), -1 before any */

    cinfer_hidden_observer observer;
    void *observer_user;
    float *host_hidden; /* [B, E] staging for the observer */
};

/* Calls the observer, if any, with rows of `hidden` (on the device). */
void ci_session_observe(cinfer_session *session, int stage, const ci_tensor *hidden);

/* The decoder forward pass over n_tokens tokens of each sequence, already in session->tokens
 * (sequence-major, [n_seqs, n_tokens]), at positions pos0.. (models/llama.c). Rows
 * [logits_row0, logits_row0 + n_logits) of each sequence's logits are written to the host,
 * sequence b's row-major [n_logits, V] at logits_host + b · host_seq_floats; with logits_host
 * NULL, the rows of all sequences (n_seqs · n_logits, at most logit_rows, contiguous: n_logits =
 * n_tokens or one sequence) stay on the device in session->logits, sequence-major. */
void ci_decoder_forward(cinfer_session *session, int n_tokens, int pos0, int logits_row0,
                        int n_logits, float *logits_host, size_t host_seq_floats);

/* One greedy decoding step of every sequence: runs tokens[b] ([n_seqs]) at position n_past and
 * puts the argmax of sequence b's logits in next[b]. The argmax runs on the backend's device, so
 * only token ids cross PCIe; on a backend that can capture (CUDA), the step is recorded as a
 * graph the first time and replayed after, unless an observer is set (it needs the hidden states
 * on the host). */
cinfer_status ci_session_greedy_step(cinfer_session *session, const int32_t *tokens, int32_t *next);

#endif
