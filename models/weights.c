/* Binding checkpoint tensors to the model: the Llama layout that both architectures share, each
 * tensor checked against the shape config.json implies before anything runs. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/splitmix.h"
#include "../engine/error.h"
#include "model.h"

static int is_weight_dtype(ci_dtype dtype) {
    return dtype == CI_F32 || dtype == CI_BF16 || dtype == CI_F16;
}

/* ---- random weights (a synthetic checkpoint: a config without files) --------------------------
 *
 * Drawn as transformers initializes a fresh model: norm weights 1, biases 0, every other tensor
 * uniform with the standard deviation transformers uses (initializer_range 0.02; DiffLlama's
 * lambdas lambda_std_dev 0.1). Each value depends only on the seed, the tensor's name and its
 * index, so a model drawn twice, or by another backend, is the same model. */

static uint64_t name_hash(const char *name) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        h = (h ^ *c) * 0x100000001b3ull;
    return h;
}

static int ends_with(const char *text, const char *suffix) {
    size_t n = strlen(text), k = strlen(suffix);
    return n >= k && strcmp(text + n - k, suffix) == 0;
}

static ci_dtype config_dtype(const ci_config *c) {
    if (strcmp(c->torch_dtype, "bfloat16") == 0) return CI_BF16;
    if (strcmp(c->torch_dtype, "float16") == 0) return CI_F16;
    return CI_F32;
}

static cinfer_status bind_random_weight(cinfer_model *m, const char *name, int n_dims,
                                        const int64_t *shape, ci_tensor *out) {
    const ci_config *c = m->config;
    /* in the dtype the config says the files hold, vectors too, as published checkpoints do */
    *out = (ci_tensor){NULL, config_dtype(c), n_dims, {0}};
    for (int i = 0; i < n_dims; i++) out->shape[i] = shape[i];
    const int64_t n = ci_tensor_numel(out);
    const size_t bytes = ci_tensor_nbytes(out);
    void *data = malloc(bytes ? bytes : 1);
    void **grown = realloc(m->aligned_copies, (size_t)(m->n_aligned_copies + 1) * sizeof *grown);
    if (!data || !grown) {
        free(data);
        if (grown) m->aligned_copies = grown;
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory: %zu bytes of random weights for '%s'",
                       bytes, name);
    }
    m->aligned_copies = grown;
    m->aligned_copies[m->n_aligned_copies++] = data;
    out->data = data;

    const int is_norm = ends_with(name, "norm.weight"), is_bias = ends_with(name, ".bias");
    const float std = strstr(name, "lambda_") ? 0.1f : 0.02f;
    const float half_width = std * 1.7320508f; /* uniform on [-a, a] has std a/sqrt(3) */
    uint64_t seed_of_name = m->checkpoint->seed ^ name_hash(name);
    const uint64_t key = ci_splitmix64(&seed_of_name);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        uint64_t state = key + (uint64_t)i; /* element i's own stream: any thread can draw it */
        float u = (float)(ci_splitmix64(&state) >> 40) * 0x1p-24f;
        float value = is_norm ? 1.0f : is_bias ? 0.0f : half_width * (2.0f * u - 1.0f);
        switch (out->dtype) {
        case CI_BF16: ((uint16_t *)data)[i] = ci_f32_to_bf16(value); break;
        case CI_F16: ((uint16_t *)data)[i] = ci_f32_to_f16(value); break;
        default: ((float *)data)[i] = value; break;
        }
    }
    /* what the files would have held: counted here, as no checkpoint index lists these */
    m->info.n_params += n;
    m->info.weight_bytes += (int64_t)bytes;
    return CINFER_OK;
}

cinfer_status ci_bind_weight(cinfer_model *m, const char *name, int n_dims, const int64_t *shape,
                             const char *meaning, const char *required_by, ci_tensor *out) {
    const ci_checkpoint *ck = m->checkpoint;
    if (ck->synthetic) return bind_random_weight(m, name, n_dims, shape, out);
    const st_tensor *t = checkpoint_find(ck, name);
    if (!t && required_by)
        return CI_FAIL(CINFER_ERR_WEIGHTS, "%s: tensor '%s' is missing from %s, but %s has %s",
                       ck->dir, name, ck->weights_description, ci_base_name(ck->config_path),
                       required_by);
    if (!t)
        return CI_FAIL(CINFER_ERR_WEIGHTS, "%s: tensor '%s' is missing from %s (%s, %s)", ck->dir,
                       name, ck->weights_description, ci_base_name(ck->config_path),
                       m->config->architecture);
    const char *file = ci_base_name(t->file->path);
    if (!is_weight_dtype(t->dtype))
        return CI_FAIL(CINFER_ERR_WEIGHTS,
                       "%s: tensor '%s' has dtype %s; weights must be F32, BF16 or F16", file, name,
                       ci_dtype_name(t->dtype));
    int same = t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[160], want[160];
        return CI_FAIL(CINFER_ERR_WEIGHTS, "%s: tensor '%s' has shape %s; %s says %s = %s", file,
                       name, ci_shape_string(t->shape, t->n_dims, got, sizeof got),
                       ci_base_name(ck->config_path), meaning,
                       ci_shape_string(shape, n_dims, want, sizeof want));
    }
    m->bound[checkpoint_index_of(ck, t)] = true;
    *out = (ci_tensor){(void *)t->data, t->dtype, n_dims, {0}};
    for (int i = 0; i < n_dims; i++) out->shape[i] = shape[i];

    /* Writers pad the header so that data is aligned; a file that does not gets its misaligned
     * tensors copied once, so that kernels can load whole elements. */
    if ((uintptr_t)t->data % ci_dtype_size(t->dtype) != 0) {
        size_t bytes = ci_tensor_nbytes(out);
        void *copy = malloc(bytes ? bytes : 1);
        void **grown =
            realloc(m->aligned_copies, (size_t)(m->n_aligned_copies + 1) * sizeof *grown);
        if (!copy || !grown) {
            free(copy);
            if (grown) m->aligned_copies = grown;
            return CI_FAIL(CINFER_ERR_MEMORY, "out of memory copying misaligned tensor '%s'", name);
        }
        memcpy(copy, t->data, bytes);
        m->aligned_copies = grown;
        m->aligned_copies[m->n_aligned_copies++] = copy;
        out->data = copy;
    }
    return CINFER_OK;
}

static cinfer_status bind_vector(cinfer_model *m, const char *name, int64_t size,
                                 const char *meaning, ci_tensor *out) {
    return ci_bind_weight(m, name, 1, &size, meaning, NULL, out);
}

static cinfer_status bind_matrix(cinfer_model *m, const char *name, int64_t rows, int64_t cols,
                                 const char *meaning, ci_tensor *out) {
    const int64_t shape[2] = {rows, cols};
    return ci_bind_weight(m, name, 2, shape, meaning, NULL, out);
}

/* The bias of a linear layer exists exactly when the config flag (e.g. "attention_bias = true")
 * says so. */
static cinfer_status bind_bias(cinfer_model *m, bool present, const char *flag, const char *name,
                               int64_t size, const char *meaning, ci_tensor *out) {
    *out = (ci_tensor){NULL, CI_F32, 1, {size}};
    return present ? ci_bind_weight(m, name, 1, &size, meaning, flag, out) : CINFER_OK;
}

static cinfer_status bind_layer(cinfer_model *m, int l) {
    const ci_config *c = m->config;
    ci_layer *w = &m->layers[l];
    const int64_t E = c->hidden_size, I = c->intermediate_size;
    const int64_t HD = (int64_t)c->n_heads * c->head_dim, GD = (int64_t)c->n_kv_heads * c->head_dim;
    const bool ab = c->attention_bias, mb = c->mlp_bias;
    char name[160];
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
    CI_TRY(bind_vector(m, NAME("input_layernorm.weight"), E, "[hidden_size]", &w->input_layernorm));
    CI_TRY(bind_matrix(m, NAME("self_attn.q_proj.weight"), HD, E,
                       "[num_attention_heads*head_dim, hidden_size]", &w->q_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.k_proj.weight"), GD, E,
                       "[num_key_value_heads*head_dim, hidden_size]", &w->k_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.v_proj.weight"), GD, E,
                       "[num_key_value_heads*head_dim, hidden_size]", &w->v_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.o_proj.weight"), E, HD,
                       "[hidden_size, num_attention_heads*head_dim]", &w->o_proj));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.q_proj.bias"), HD,
                     "[num_attention_heads*head_dim]", &w->q_bias));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.k_proj.bias"), GD,
                     "[num_key_value_heads*head_dim]", &w->k_bias));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.v_proj.bias"), GD,
                     "[num_key_value_heads*head_dim]", &w->v_bias));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.o_proj.bias"), E,
                     "[hidden_size]", &w->o_bias));
    CI_TRY(bind_vector(m, NAME("post_attention_layernorm.weight"), E, "[hidden_size]",
                       &w->post_attention_layernorm));
    CI_TRY(bind_matrix(m, NAME("mlp.gate_proj.weight"), I, E, "[intermediate_size, hidden_size]",
                       &w->gate_proj));
    CI_TRY(bind_matrix(m, NAME("mlp.up_proj.weight"), I, E, "[intermediate_size, hidden_size]",
                       &w->up_proj));
    CI_TRY(bind_matrix(m, NAME("mlp.down_proj.weight"), E, I, "[hidden_size, intermediate_size]",
                       &w->down_proj));
    CI_TRY(bind_bias(m, mb, "mlp_bias = true", NAME("mlp.gate_proj.bias"), I, "[intermediate_size]",
                     &w->gate_bias));
    CI_TRY(bind_bias(m, mb, "mlp_bias = true", NAME("mlp.up_proj.bias"), I, "[intermediate_size]",
                     &w->up_bias));
    CI_TRY(bind_bias(m, mb, "mlp_bias = true", NAME("mlp.down_proj.bias"), E, "[hidden_size]",
                     &w->down_bias));
#undef NAME
    if (m->arch->bind_layer_extras) CI_TRY(m->arch->bind_layer_extras(m, l));
    return CINFER_OK;
}

cinfer_status ci_bind_model_weights(cinfer_model *m) {
    const ci_config *c = m->config;
    const int64_t V = c->vocab_size, E = c->hidden_size;
    m->bound = calloc((size_t)m->checkpoint->n_index + 1, sizeof *m->bound);
    CI_CHECK_ALLOC(m->bound, (size_t)m->checkpoint->n_index);
    CI_TRY(bind_matrix(m, "model.embed_tokens.weight", V, E, "[vocab_size, hidden_size]",
                       &m->embed_tokens));
    CI_TRY(bind_vector(m, "model.norm.weight", E, "[hidden_size]", &m->norm));
    const int64_t lm_head_shape[2] = {V, E};
    if (c->tie_word_embeddings)
        m->lm_head = m->embed_tokens;
    else
        CI_TRY(ci_bind_weight(m, "lm_head.weight", 2, lm_head_shape, "[vocab_size, hidden_size]",
                              "tie_word_embeddings = false (true would reuse "
                              "model.embed_tokens.weight)",
                              &m->lm_head));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    CI_CHECK_ALLOC(m->layers, (size_t)c->n_layers * sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) CI_TRY(bind_layer(m, l));
    return CINFER_OK;
}
