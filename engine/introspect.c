/* What a program may show about a model and its surroundings, through the public API (cinfer.h):
 * config.json's settings, the checkpoint's tensors, the CUDA devices, generation_config.json's
 * eos tokens. Read-only getters over the loaders' and kernels' own
 * structures, so that programs need none of their headers. */
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
