/* LlamaForCausalLM, as transformers' modeling_llama.py computes it, and the decoder that
 * DiffLlama shares (models/diffllama.c swaps in its attention). With n the normalized stream:
 *
 *   x = embed_tokens[tokens]
 *   for each layer:
 *       n = RMSNorm(x; input_layernorm)
 *       x = x + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n)))
 *       n = RMSNorm(x; post_attention_layernorm)
 *       x = x + down_proj(act(gate_proj(n)) ⊙ up_proj(n))
 *   logits = lm_head(RMSNorm(x; norm))
 *
 * Attention(Q, K, V)_h = softmax(Q_h K_{h/g}ᵀ / sqrt(D) + causal mask) V_{h/g}, g = H/G. */
#include <stdio.h>

#include "../common/error.h"
#include "../engine/session.h"
#include "model.h"

/* lm_head over rows [row0, row0 + n_rows) of the normalized stream, logit_rows at a time. Row g of
 * those is row g mod per_seq of sequence g / per_seq, whose rows go to host + that sequence ·
 * host_seq_floats; with host NULL the logits stay on the device (one block at most). */
static void lm_head_rows(cinfer_session *s, const ci_tensor *normed_all, int row0, int n_rows,
                         int per_seq, float *host, size_t host_seq_floats) {
    ci_backend *be = s->be;
    const size_t V = (size_t)s->model->config->vocab_size;
    CI_ASSERT(host || n_rows <= s->logit_rows);
    for (int r = 0; r < n_rows; r += s->logit_rows) {
        const int rows = n_rows - r < s->logit_rows ? n_rows - r : s->logit_rows;
        ci_tensor normed = ci_tensor_rows(normed_all, row0 + r, rows);
        ci_tensor logits = ci_tensor_rows(&s->logits, 0, rows);
        ci_matmul(be, &logits, &normed, &s->model->lm_head, NULL);
        if (!host) continue;
        /* runs of rows that belong to one sequence are contiguous on the host too */
        for (int i = 0; i < rows;) {
            const int g = r + i, seq = g / per_seq, within = g % per_seq;
            const int run = rows - i < per_seq - within ? rows - i : per_seq - within;
            be->ops->to_host(be, host + (size_t)seq * host_seq_floats + (size_t)within * V,
                             (const float *)logits.data + (size_t)i * V,
                             (size_t)run * V * sizeof(float));
            i += run;
        }
    }
}

void ci_decoder_forward(cinfer_session *s, int n_tokens, int pos0, int logits_row0, int n_logits,
                        float *logits_host, size_t host_seq_floats) {
    const cinfer_model *m = s->model;
    const ci_config *c = m->config;
    ci_backend *be = s->be;
    const float eps = (float)c->rms_norm_eps;
    const int B = s->n_seqs, rows = B * n_tokens; /* row b·T + t: token t of sequence b */

    ci_tensor tokens = ci_tensor_rows(&s->tokens, 0, rows);
    ci_tensor x = ci_tensor_rows(&s->x, 0, rows);
    ci_tensor n = ci_tensor_rows(&s->x_norm, 0, rows);
    ci_tensor q = ci_tensor_rows(&s->q, 0, rows);
    ci_tensor k = ci_tensor_rows(&s->k_new, 0, rows);
    ci_tensor v = ci_tensor_rows(&s->v_new, 0, rows);
    ci_tensor attn = ci_tensor_rows(&s->attn, 0, rows);
    ci_tensor gate = ci_tensor_rows(&s->gate, 0, rows);
    ci_tensor up = ci_tensor_rows(&s->up, 0, rows);
    /* the same memory as [B, T, heads, D], for the ops that see sequences and positions */
    ci_tensor q_seqs = ci_tensor_split_seqs(&q, B), k_seqs = ci_tensor_split_seqs(&k, B);
    ci_tensor v_seqs = ci_tensor_split_seqs(&v, B), attn_seqs = ci_tensor_split_seqs(&attn, B);

    /* x = embed_tokens[tokens] */
    ci_embedding(be, &x, &tokens, &m->embed_tokens);
    ci_session_observe(s, 0, &x);

    for (int l = 0; l < c->n_layers; l++) {
        const ci_layer *w = &m->layers[l];

        /* x = x + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))), n = RMSNorm(x) */
        ci_rmsnorm(be, &n, &x, &w->input_layernorm, eps);
        const ci_projection qkv[] = {{&q, &w->q_proj, &w->q_bias},
                                     {&k, &w->k_proj, &w->k_bias},
                                     {&v, &w->v_proj, &w->v_bias}};
        ci_project(be, &n, qkv, 3);
        ci_rope(be, &q_seqs, &k_seqs, pos0, &s->rope);
        /* the new keys and values join each sequence's cache, at rows [pos0, pos0 + T) */
        ci_kv_store(be, &s->k_cache[l], &s->v_cache[l], &k_seqs, &v_seqs, pos0);
        m->arch->attention(be, m, l, &attn_seqs, &q_seqs, &s->k_cache[l], &s->v_cache[l], pos0);
        ci_matmul_add(be, &x, &attn, &w->o_proj, &w->o_bias);

        /* x = x + down_proj(act(gate_proj(n)) ⊙ up_proj(n)), n = RMSNorm(x) */
        ci_rmsnorm(be, &n, &x, &w->post_attention_layernorm, eps);
        const ci_projection gate_up[] = {{&gate, &w->gate_proj, &w->gate_bias},
                                         {&up, &w->up_proj, &w->up_bias}};
        ci_project(be, &n, gate_up, 2);
        ci_gated_activation(be, &gate, &gate, &up, c->hidden_act);
        ci_matmul_add(be, &x, &gate, &w->down_proj, &w->down_bias);
        ci_session_observe(s, 1 + l, &x);
    }

    /* logits = lm_head(RMSNorm(x; norm)), only for the rows asked for, a block at a time */
    ci_rmsnorm(be, &n, &x, &m->norm, eps);
    ci_session_observe(s, c->n_layers + 1, &n);
    if (n_logits == 0) return;
    CI_ASSERT(logits_host || B == 1 || n_logits == n_tokens);
    if (B == 1 || n_logits == n_tokens) /* the rows asked for are contiguous: one pass */
        lm_head_rows(s, &n, logits_row0, B * n_logits, n_logits, logits_host, host_seq_floats);
    else
        for (int b = 0; b < B; b++)
            lm_head_rows(s, &n, b * n_tokens + logits_row0, n_logits, n_logits,
                         logits_host + (size_t)b * host_seq_floats, host_seq_floats);
}

static void llama_attention(ci_backend *be, const cinfer_model *m, int layer, ci_tensor *out,
                            const ci_tensor *q, const ci_tensor *k_cache, const ci_tensor *v_cache,
                            int pos0) {
    (void)m;
    (void)layer;
    ci_attention(be, out, q, k_cache, v_cache, pos0);
}

const ci_architecture ci_llama_architecture = {
    .name = "LlamaForCausalLM",
    .bind_layer_extras = NULL,
    .attention = llama_attention,
};
