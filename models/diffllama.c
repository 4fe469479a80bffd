/* DiffLlamaForCausalLM: Llama (models/llama.c) with differential attention, as transformers'
 * modeling_diffllama.py computes it (Differential Transformer, arXiv 2410.05258;
 * docs/MODEL_MATH.md, section 4).
 *
 * The H query heads form P = H/2 pairs (p, p + P): heads split in halves, not interleaved.
 * Each pair has two softmax maps over the same keys positions and one value matrix
 * Vcat_p = [V_kv(p) ‖ V_kv(p+P)] of width 2·D:
 *
 *   A1_p = softmax(Q_p     K_kv(p)ᵀ   / sqrt(D) + M)
 *   A2_p = softmax(Q_{p+P} K_kv(p+P)ᵀ / sqrt(D) + M)
 *   O_p  = A1_p·Vcat_p − lambda · A2_p·Vcat_p
 *   Y_p  = (1 − lambda_init) · O_p / sqrt(mean(O_p²) + rms_norm_eps)
 *
 * (an RMS group norm over the pair's 2D outputs, with no weight)
 *
 * Y_p fills columns [2pD, 2(p+1)D) of o_proj's input. One lambda per layer, for all heads:
 *
 *   lambda_init = 0.8 − 0.6·exp(−0.3·layer)
 *   lambda      = exp(λq1·λk1) − exp(λq2·λk2) + lambda_init
 *
 * transformers 5.x refuses an odd num_key_value_heads (it splits V by KV heads); the formula
 * above is what its 4.x eager path computed for any G, and is what runs here. */
#include <math.h>
#include <stdio.h>

#include "../common/error.h"
#include "model.h"

static cinfer_status bind_lambdas(cinfer_model *m, int layer) {
    const int64_t head_dim = m->config->head_dim;
    const char *suffixes[4] = {"q1", "k1", "q2", "k2"};
    ci_tensor lambdas[4];
    for (int i = 0; i < 4; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.lambda_%s", layer, suffixes[i]);
        CI_TRY(ci_bind_weight(m, name, 1, &head_dim, "[head_dim]", NULL, &lambdas[i]));
    }
    /* transformers sums in F32 (torch.sum(..., dtype=float32)); the dot products here are summed in
     * double and rounded once, then the exponentials run in F32 as there. */
    double dot1 = 0.0, dot2 = 0.0;
    for (int64_t d = 0; d < head_dim; d++) {
        dot1 += (double)(ci_tensor_get_f32(&lambdas[0], d) * ci_tensor_get_f32(&lambdas[1], d));
        dot2 += (double)(ci_tensor_get_f32(&lambdas[2], d) * ci_tensor_get_f32(&lambdas[3], d));
    }
    ci_layer *w = &m->layers[layer];
    w->lambda_init = (float)(0.8 - 0.6 * exp(-0.3 * layer));
    w->lambda = expf((float)dot1) - expf((float)dot2) + w->lambda_init;
    return CINFER_OK;
}

static void diffllama_attention(ci_backend *be, const cinfer_model *m, int layer, ci_tensor *out,
                                const ci_tensor *q, const ci_tensor *k_cache,
                                const ci_tensor *v_cache, const ci_forward_step *step) {
    const ci_layer *w = &m->layers[layer];
    const float eps = (float)m->config->rms_norm_eps;
    if (step->paged)
        ci_paged_diff_attention(be, out, q, k_cache, v_cache, step->paged, w->lambda,
                                w->lambda_init, eps);
    else
        ci_diff_attention(be, out, q, k_cache, v_cache, step->pos0, w->lambda, w->lambda_init,
                          eps);
}

/* DiffLlamaConfig's rules: its heads form pairs, and DiffLlamaMLP has no biases whatever
 * mlp_bias says. */
static cinfer_status check_config(const char *path, ci_config *c) {
    if (c->n_heads % 2 != 0)
        return CI_FAIL(CINFER_ERR_CONFIG,
                       "%s: DiffLlamaForCausalLM needs an even num_attention_heads (its heads "
                       "form pairs of two halves), got %d",
                       path, c->n_heads);
    c->mlp_bias = false;
    return CINFER_OK;
}

const ci_architecture ci_diffllama_architecture = {
    .class_name = "DiffLlamaForCausalLM",
    .model_type = "diffllama",
    .rms_norm_eps = 1e-5, /* DiffLlamaConfig's default, not LlamaConfig's 1e-6 */
    .check_config = check_config,
    .bind_layer_extras = bind_lambdas,
    .differential = 1,
    .attention = diffllama_attention,
};
