/* What a program may show about a model and its surroundings, through the public API (cinfer.h):
 * config.json's settings, the checkpoint's tensors, the CUDA devices, generation_config.json's
 * eos tokens. Read-only getters over the loaders' and kernels' own
 * structures, so that programs need none of their headers. */
#include <string.h>

#include "../common/error.h"
#include "../kernels/device.h"
#include "../loaders/checkpoint.h"
#include "../loaders/config.h"
#include "../models/model.h"

_Static_assert(CINFER_MAX_EOS_TOKENS == CI_MAX_EOS_TOKENS,
               "cinfer.h's eos token limit is the config reader's");

void cinfer_model_get_config(const cinfer_model *model, cinfer_model_config *out) {
    const ci_config *c = model->config;
    const ci_rope_config *rope = &c->rope;
    const int has_original = rope->type == CI_ROPE_LLAMA3 || rope->type == CI_ROPE_YARN;
    *out = (cinfer_model_config){
        .hidden_act = c->hidden_act_name,
        .rms_norm_eps = c->rms_norm_eps,
        .rope_type = ci_rope_type_name(rope->type),
        .rope_theta = rope->theta,
        .rope_factor = rope->type == CI_ROPE_DEFAULT ? 1.0 : rope->factor,
        .rope_original_max_position_embeddings =
            has_original ? rope->original_max_position_embeddings : 0,
        .attention_bias = c->attention_bias,
        .mlp_bias = c->mlp_bias,
        .tie_word_embeddings = c->tie_word_embeddings,
        .torch_dtype = c->torch_dtype,
    };
}

const char *cinfer_model_weights_source(const cinfer_model *model) {
    return model->checkpoint->weights_description;
}

int cinfer_model_n_tensors(const cinfer_model *model) { return model->checkpoint->n_index; }

cinfer_status cinfer_model_tensor(const cinfer_model *model, int i, cinfer_tensor_info *out) {
    const ci_checkpoint *ck = model->checkpoint;
    if (i < 0 || i >= ck->n_index)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "tensor %d: the checkpoint holds tensors 0 to %d", i,
                       ck->n_index - 1);
    const st_tensor *t = ck->index[i];
    *out = (cinfer_tensor_info){
        .name = t->name,
        .dtype = ci_dtype_name(t->dtype),
        .n_dims = t->n_dims,
        .shape = t->shape,
        .file = ci_base_name(t->file->path),
        .bytes = (int64_t)(t->end - t->begin),
        .used = model->bound[i],
    };
    return CINFER_OK;
}

/* Bytes of the rank's part of checkpoint tensor t (models/weights.c binds it so): rows of its
 * heads in q/k/v, of its MLP width in gate/up, of its vocabulary in lm_head; the matching columns
 * of o_proj and down_proj; their biases on rank 0; everything else whole. */
static int64_t shard_bytes(const st_tensor *t, const ci_config *whole, const ci_shard_plan *p) {
    const int64_t bytes = (int64_t)(t->end - t->begin);
    const int64_t rows = t->n_dims > 0 ? t->shape[0] : 1;
    const char *name = t->name;
    /* the layer's tensor: what follows "model.layers.N." */
    const char *layer = strncmp(name, "model.layers.", 13) == 0 ? strchr(name + 13, '.') : NULL;
    const char *part = layer ? layer + 1 : name;
    if (strcmp(name, "lm_head.weight") == 0) return bytes / rows * p->vocab_count;
    if (!layer) return bytes;
    if (strncmp(part, "self_attn.q_proj.", 17) == 0)
        return bytes / rows * ((int64_t)p->local.n_heads * whole->head_dim);
    if (strncmp(part, "self_attn.k_proj.", 17) == 0 || strncmp(part, "self_attn.v_proj.", 17) == 0)
        return bytes / rows * ((int64_t)p->local.n_kv_heads * whole->head_dim);
    if (strcmp(part, "self_attn.o_proj.weight") == 0) return bytes / t->shape[1] * p->o_count;
    if (strcmp(part, "mlp.down_proj.weight") == 0) return bytes / t->shape[1] * p->mlp_count;
    if (strncmp(part, "mlp.gate_proj.", 14) == 0 || strncmp(part, "mlp.up_proj.", 12) == 0)
        return bytes / rows * p->mlp_count;
    if (strcmp(part, "self_attn.o_proj.bias") == 0 || strcmp(part, "mlp.down_proj.bias") == 0)
        return p->rank == 0 ? bytes : 0; /* added once, by rank 0 */
    return bytes;                        /* norms, DiffLlama's lambdas: replicated */
}

cinfer_status cinfer_model_shard_memory(const cinfer_model *model, int tp, int rank,
                                        cinfer_shard_memory *out) {
    ci_error_clear();
    const ci_checkpoint *ck = model->checkpoint;
    const ci_config *whole = &ck->config;
    if (ck->synthetic)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: random weights have no tensor index to count a rank's share of",
                       ck->config_path);
    ci_shard_plan plan;
    if (ci_shard_plan_make(whole, model->arch->differential, rank, tp, &plan) != CINFER_OK) {
        ci_error_prefix("%s: ", ck->config_path);
        return CINFER_ERR_ARGUMENT;
    }
    int64_t weight_bytes = 0;
    for (int i = 0; i < ck->n_index; i++)
        if (model->bound[i]) weight_bytes += shard_bytes(ck->index[i], whole, &plan);
    /* K and V, every layer, in the cache dtype, as fill_info counts the whole model's */
    const ci_tensor kv_row = {NULL,
                              ci_kv_cache_dtype(&model->options),
                              1,
                              {(int64_t)plan.local.n_kv_heads * whole->head_dim}};
    *out = (cinfer_shard_memory){
        .n_heads = plan.local.n_heads,
        .n_kv_heads = plan.local.n_kv_heads,
        .intermediate_size = plan.local.intermediate_size,
        .kv_replicated = plan.kv_replicated,
        .weight_bytes = weight_bytes,
        .kv_bytes_per_token = 2 * (int64_t)whole->n_layers * (int64_t)ci_tensor_nbytes(&kv_row),
    };
    return CINFER_OK;
}

int cinfer_cuda_compiled(void) { return ci_cuda_compiled(); }

int cinfer_cuda_devices(cinfer_device_info *out, int max) {
    if (max > CINFER_MAX_DEVICES) max = CINFER_MAX_DEVICES;
    return ci_cuda_devices(out, out && max > 0 ? max : 0);
}

cinfer_status cinfer_generation_eos_tokens(const char *dir, int32_t *ids, int max, int *n) {
    ci_error_clear();
    *n = 0;
    int found[CI_MAX_EOS_TOKENS], n_found;
    CI_TRY(config_load_generation_eos(dir, found, &n_found));
    if (n_found > max)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "%s/generation_config.json lists %d eos token%s; there is room for %d", dir,
                       n_found, n_found == 1 ? "" : "s", max);
    for (int i = 0; i < n_found; i++) ids[i] = found[i];
    *n = n_found;
    return CINFER_OK;
}
