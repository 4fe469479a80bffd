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
 * Attention(Q, K, V)_h = softmax(Q_h K_{h/g}ᵀ / sqrt(D) + causal mask) V_{h/g}, g = H/G.
 * (docs/MODEL_MATH.md, section 2.) The descriptor at the bottom is what makes this Llama.
 *
 * Tensor parallelism (models/shard.h, docs/TENSOR_PARALLEL.md): a rank's model holds its heads and
 * its slice of the MLP, with a config of its own, so the code below runs unchanged on it except at
 * the three points that cross ranks: the two residual adds (add_partial_products), the logits. */
#include "../common/error.h"
#include "model.h"

static void observe(const ci_forward_step *step, int stage, const ci_tensor *hidden) {
    if (step->hook.observe) step->hook.observe(step->hook.user, stage, hidden);
}

/* What the position-aware ops see: lockstep, the same memory as [B, T, heads, D]; ragged, the
 * rows as they are (the step says where each one sits). */
static ci_tensor seq_view(const ci_forward_step *step, const ci_tensor *rows) {
    return step->paged ? *rows : ci_tensor_split_seqs(rows, step->n_seqs);
}

/* x = x + in·Wᵀ + bias, the residual add after o_proj and down_proj. On a tensor-parallel rank W
 * holds only the input columns that the rank's heads (or MLP slice) feed, so in·Wᵀ is one term of
 * the sum over ranks: rank 0 adds its term, the bias and the residual into x, the other ranks write
 * their term alone (they hold no bias), and the all-reduce sums x over the ranks in rank order,
 * x + (t0 + bias) + t1 + ..., leaving the same x on every rank. */
static cinfer_status add_partial_products(ci_backend *be, const cinfer_model *m, ci_tensor *x,
                                          const ci_tensor *in, const ci_tensor *w,
                                          const ci_tensor *bias) {
    if (!m->comm) {
        ci_matmul_add(be, x, in, w, bias);
        return CINFER_OK;
    }
    if (m->comm->rank == 0)
        ci_matmul_add(be, x, in, w, bias);
    else
        ci_matmul(be, x, in, w, NULL);
    return ci_all_reduce_sum(m->comm, be, x);
}

cinfer_status ci_model_forward(ci_backend *be, const cinfer_model *m, const ci_forward_step *step,
                               ci_activations *act) {
    const ci_config *c = m->config;
    const float eps = (float)c->rms_norm_eps;
    const int rows = ci_forward_rows(step);

    ci_tensor x = ci_tensor_rows(&act->x, 0, rows);
    ci_tensor n = ci_tensor_rows(&act->x_norm, 0, rows);
    ci_tensor q = ci_tensor_rows(&act->q, 0, rows);
    ci_tensor k = ci_tensor_rows(&act->k_new, 0, rows);
    ci_tensor v = ci_tensor_rows(&act->v_new, 0, rows);
    ci_tensor attn = ci_tensor_rows(&act->attn, 0, rows);
    ci_tensor gate = ci_tensor_rows(&act->gate, 0, rows);
    ci_tensor up = ci_tensor_rows(&act->up, 0, rows);
    ci_tensor q_seqs = seq_view(step, &q), k_seqs = seq_view(step, &k);
    ci_tensor v_seqs = seq_view(step, &v), attn_seqs = seq_view(step, &attn);

    /* x = embed_tokens[tokens]. Every tensor-parallel rank holds the whole table (replicated: the
     * lookup reads T rows, so a full table costs memory, not time, and x is then the same on every
     * rank without a collective; docs/TENSOR_PARALLEL.md, "The embedding") */
    ci_embedding(be, &x, step->tokens, &m->embed_tokens);
    observe(step, 0, &x);

    for (int l = 0; l < c->n_layers; l++) {
        const ci_layer *w = &m->layers[l];
        ci_tensor *k_cache = &step->k_cache[l], *v_cache = &step->v_cache[l];

        /* x = x + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))), n = RMSNorm(x) */
        ci_rmsnorm(be, &n, &x, &w->input_layernorm, eps);
        const ci_projection qkv[] = {{&q, &w->q_proj, &w->q_bias},
                                     {&k, &w->k_proj, &w->k_bias},
                                     {&v, &w->v_proj, &w->v_bias}};
        ci_project(be, &n, qkv, 3);
        /* the new keys and values join each sequence's cache at their positions */
        if (step->paged) {
            ci_rope_rows(be, &q_seqs, &k_seqs, &step->paged->positions, step->rope);
            ci_kv_store_paged(be, k_cache, v_cache, &k_seqs, &v_seqs, &step->paged->slots);
        } else {
            ci_rope(be, &q_seqs, &k_seqs, step->pos0, step->rope);
            ci_kv_store(be, k_cache, v_cache, &k_seqs, &v_seqs, step->pos0);
        }
        m->arch->attention(be, m, l, &attn_seqs, &q_seqs, k_cache, v_cache, step);
        CI_TRY(add_partial_products(be, m, &x, &attn, &w->o_proj, &w->o_bias));

        /* x = x + down_proj(act(gate_proj(n)) ⊙ up_proj(n)), n = RMSNorm(x) */
        ci_rmsnorm(be, &n, &x, &w->post_attention_layernorm, eps);
        const ci_projection gate_up[] = {{&gate, &w->gate_proj, &w->gate_bias},
                                         {&up, &w->up_proj, &w->up_bias}};
        ci_project(be, &n, gate_up, 2);
        ci_gated_activation(be, &gate, &gate, &up, c->hidden_act);
        CI_TRY(add_partial_products(be, m, &x, &gate, &w->down_proj, &w->down_bias));
        observe(step, 1 + l, &x);
    }

    /* n = RMSNorm(x; norm): what ci_model_logits takes, for whichever rows the caller wants */
    ci_rmsnorm(be, &n, &x, &m->norm, eps);
    observe(step, c->n_layers + 1, &n);
    return CINFER_OK;
}

/* logits = lm_head(n). A tensor-parallel rank holds lm_head's vocabulary rows
 * [vocab_first, vocab_first + V/tp): its product is its columns of the logits, which the
 * all-gather puts beside every other rank's. */
cinfer_status ci_model_logits(ci_backend *be, const cinfer_model *m, ci_tensor *logits,
                              const ci_tensor *normed) {
    if (!m->comm) {
        ci_matmul(be, logits, normed, &m->lm_head, NULL);
        return CINFER_OK;
    }
    const int64_t rows = ci_tensor_n_rows(normed), columns = m->shard.vocab_count;
    ci_tensor part = {NULL, CI_F32, 2, {rows, columns}};
    part.data = ci_comm_gather_buffer(m->comm, ci_tensor_nbytes(&part));
    if (!part.data) {
        /* the other ranks must not wait in the all-gather for a rank that will not come */
        ci_comm_abort(m->comm, "out of memory for its part of the logits");
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory: %zu bytes for rank %d's logits",
                       ci_tensor_nbytes(&part), m->comm->rank);
    }
    ci_matmul(be, &part, normed, &m->lm_head, NULL);
    return ci_all_gather_columns(m->comm, be, logits, &part);
}

static void llama_attention(ci_backend *be, const cinfer_model *m, int layer, ci_tensor *out,
                            const ci_tensor *q, const ci_tensor *k_cache, const ci_tensor *v_cache,
                            const ci_forward_step *step) {
    (void)m;
    (void)layer;
    if (step->paged)
        ci_paged_attention(be, out, q, k_cache, v_cache, step->paged);
    else
        ci_attention(be, out, q, k_cache, v_cache, step->pos0);
}

/* LlamaConfig's defaults; nothing beyond the checks every Llama-family config passes. */
const ci_architecture ci_llama_architecture = {
    .class_name = "LlamaForCausalLM",
    .model_type = "llama",
    .rms_norm_eps = 1e-6,
    .check_config = NULL,
    .bind_layer_extras = NULL,
    .differential = 0,
    .attention = llama_attention,
};
