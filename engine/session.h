/* A session: one sequence being decoded, with its KV cache and activation buffers. */
#ifndef CINFER_SESSION_H
#define CINFER_SESSION_H

#include "../models/model.h"
#include "backend.h"

struct cinfer_session {
    cinfer_model *model;
    ci_backend *be;
    int n_ctx;     /* positions the KV cache holds */
    int n_past;    /* positions already in it */
    int max_batch; /* tokens per forward pass; longer inputs are split */

    ci_tensor *k_cache, *v_cache; /* per layer [n_ctx, G, D]: K after RoPE, V as projected */

    /* activations for up to max_batch tokens, all on the backend's device */
    ci_tensor tokens; /* I32 [B] */
    ci_tensor x;      /* [B, E] the residual stream */
    ci_tensor x_norm; /* [B, E] its normalized copy that feeds attention and the MLP */
    ci_tensor q;      /* [B, H, D] */
    ci_tensor k_new;  /* [B, G, D] keys of the new tokens, rotated, then stored in the cache */
    ci_tensor v_new;  /* [B, G, D] their values */
    ci_tensor attn;   /* [B, H, D] attention output, input of o_proj */
    ci_tensor proj;   /* [B, E] output of o_proj and of down_proj */
    ci_tensor gate;   /* [B, I] */
    ci_tensor up;     /* [B, I] */
    ci_tensor logits; /* [logit_rows, V]: logits go to the host this many rows at a time */
    int logit_rows;
    ci_tensor sampled; /* I32 [1]: the token greedy decoding picked on the device */
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

/* The decoder forward pass over n_tokens tokens already in session->tokens, at positions
 * pos0.. (models/llama.c). Rows [logits_row0, logits_row0 + n_logits) of the logits are
 * written to logits_host, row-major [n_logits, V]; with logits_host NULL (and n_logits at most
 * logit_rows) they stay on the device in session->logits. */
void ci_decoder_forward(cinfer_session *session, int n_tokens, int pos0, int logits_row0,
                        int n_logits, float *logits_host);

/* One greedy decoding step: runs `token` at position n_past and puts the argmax of its logits in
 * *next. The argmax runs on the backend's device, so only the two token ids cross PCIe; on a
 * backend that can capture (CUDA), the step is recorded as a graph the first time and replayed
 * after, unless an observer is set (it needs the hidden states on the host). */
cinfer_status ci_session_greedy_step(cinfer_session *session, int32_t token, int32_t *next);

#endif
