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

#include "../engine/error.h"
#include "../engine/session.h"
#include "model.h"

void ci_decoder_forward(cinfer_session *s, int n_tokens, int pos0, int logits_row0, int n_logits,
                        float *logits_host) {
    const cinfer_model *m = s->model;
    const ci_config *c = m->config;
    ci_backend *be = s->be;
    const float eps = (float)c->rms_norm_eps;
    CI_ASSERT(logits_host || n_logits <= s->logit_rows);

    ci_tensor tokens = ci_tensor_rows(&s->tokens, 0, n_tokens);
    ci_tensor x = ci_tensor_rows(&s->x, 0, n_tokens);
    ci_tensor n = ci_tensor_rows(&s->x_norm, 0, n_tokens);
    ci_tensor q = ci_tensor_rows(&s->q, 0, n_tokens);
    ci_tensor k = ci_tensor_rows(&s->k_new, 0, n_tokens);
    ci_tensor v = ci_tensor_rows(&s->v_new, 0, n_tokens);
    ci_tensor attn = ci_tensor_rows(&s->attn, 0, n_tokens);
    ci_tensor proj = ci_tensor_rows(&s->proj, 0, n_tokens);
    ci_tensor gate = ci_tensor_rows(&s->gate, 0, n_tokens);
    ci_tensor up = ci_tensor_rows(&s->up, 0, n_tokens);

    /* x = embed_tokens[tokens] */
    ci_embedding(be, &x, &tokens, &m->embed_tokens);
    ci_session_observe(s, 0, &x);

    for (int l = 0; l < c->n_layers; l++) {
        const ci_layer *w = &m->layers[l];

        /* x = x + o_proj(Attention(RMSNorm(x))) */
        ci_rmsnorm(be, &n, &x, &w->input_layernorm, eps);
        ci_matmul(be, &q, &n, &w->q_proj, &w->q_bias);
        ci_matmul(be, &k, &n, &w->k_proj, &w->k_bias);
        ci_matmul(be, &v, &n, &w->v_proj, &w->v_bias);
        ci_rope(be, &q, &k, pos0, &s->rope);
        /* the new keys and values join the cache, at rows [pos0, pos0 + T) */
        ci_kv_store(be, &s->k_cache[l], &s->v_cache[l], &k, &v, pos0);
        m->arch->attention(be, m, l, &attn, &q, &s->k_cache[l], &s->v_cache[l], pos0);
        ci_matmul(be, &proj, &attn, &w->o_proj, &w->o_bias);
        ci_add(be, &x, &proj);

        /* x = x + down_proj(act(gate_proj(n)) ⊙ up_proj(n)), n = RMSNorm(x) */
        ci_rmsnorm(be, &n, &x, &w->post_attention_layernorm, eps);
        ci_matmul(be, &gate, &n, &w->gate_proj, &w->gate_bias);
        ci_matmul(be, &up, &n, &w->up_proj, &w->up_bias);
        ci_gated_activation(be, &gate, &gate, &up, c->hidden_act);
        ci_matmul(be, &proj, &gate, &w->down_proj, &w->down_bias);
        ci_add(be, &x, &proj);
        ci_session_observe(s, 1 + l, &x);
    }

    /* logits = lm_head(RMSNorm(x; norm)), only for the rows asked for, a block at a time */
    ci_rmsnorm(be, &n, &x, &m->norm, eps);
    ci_session_observe(s, c->n_layers + 1, &n);
    for (int r = 0; r < n_logits; r += s->logit_rows) {
        const int rows = n_logits - r < s->logit_rows ? n_logits - r : s->logit_rows;
        ci_tensor normed = ci_tensor_rows(&n, logits_row0 + r, rows);
        ci_tensor logits = ci_tensor_rows(&s->logits, 0, rows);
        ci_matmul(be, &logits, &normed, &m->lm_head, NULL);
        if (!logits_host) continue; /* left on the device for the caller (one block at most) */
        be->ops->to_host(be, logits_host + (size_t)r * (size_t)c->vocab_size, logits.data,
                         ci_tensor_nbytes(&logits));
    }
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
