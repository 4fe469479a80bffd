/* Loading a checkpoint into a cinfer_model: open and validate the folder, pick the architecture,
 * bind and check every weight. Nothing is copied: weights stay in the mapped files. */
#include <stdlib.h>

#include "../models/model.h"
#include "backend.h"
#include "error.h"

static void fill_info(cinfer_model *m) {
    const ci_config *c = m->config;
    cinfer_model_info *info = &m->info;
    info->architecture = c->architecture;
    info->vocab_size = c->vocab_size;
    info->hidden_size = c->hidden_size;
    info->intermediate_size = c->intermediate_size;
    info->n_layers = c->n_layers;
    info->n_heads = c->n_heads;
    info->n_kv_heads = c->n_kv_heads;
    info->head_dim = c->head_dim;
    info->max_position_embeddings = c->max_position_embeddings;
    info->bos_token_id = c->bos_token_id;
    info->n_eos = c->n_eos;
    info->eos_token_ids = c->eos_token_ids;
    /* every tensor of the checkpoint counts, whether bound or not: it is what the files hold */
    for (int i = 0; i < m->checkpoint->n_index; i++) {
        const st_tensor *t = m->checkpoint->index[i];
        info->n_params += st_tensor_numel(t);
        info->weight_bytes += (int64_t)(t->end - t->begin);
    }
    /* K and V in F32, every layer */
    info->kv_bytes_per_token =
        2 * (int64_t)c->n_layers * c->n_kv_heads * c->head_dim * (int64_t)sizeof(float);
}

cinfer_status cinfer_model_load(const char *dir, const cinfer_load_options *options,
                                cinfer_model **out) {
    *out = NULL;
    ci_error_clear();
    if (!dir) return CI_FAIL(CINFER_ERR_ARGUMENT, "no model folder given");
    CI_TRY(ci_backend_available(options ? options->backend : CINFER_BACKEND_CPU));
    cinfer_model *m = calloc(1, sizeof *m);
    CI_CHECK_ALLOC(m, sizeof *m);
    if (options) m->options = *options;
    cinfer_status status = checkpoint_open(dir, &m->checkpoint);
    if (status == CINFER_OK) {
        m->config = &m->checkpoint->config;
        m->arch = m->config->arch == CI_ARCH_DIFFLLAMA ? &ci_diffllama_architecture
                                                       : &ci_llama_architecture;
        status = ci_bind_model_weights(m);
    }
    if (status != CINFER_OK) {
        cinfer_model_free(m);
        return status;
    }
    fill_info(m);
    *out = m;
    return CINFER_OK;
}

void cinfer_model_free(cinfer_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_aligned_copies; i++) free(m->aligned_copies[i]);
    free(m->aligned_copies);
    free(m->bound);
    free(m->layers);
    checkpoint_close(m->checkpoint);
    free(m);
}

const cinfer_model_info *cinfer_model_get_info(const cinfer_model *m) { return &m->info; }
