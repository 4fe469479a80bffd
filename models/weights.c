/* Binding checkpoint tensors to the model: the Llama layout that both architectures share, each
 * tensor checked against the shape config.json implies before anything runs. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "../kernels/device.h"
#include "model.h"
#include "../common/random_weights.h"

static int is_weight_dtype(ci_dtype dtype) {
    return dtype == CI_F32 || dtype == CI_BF16 || dtype == CI_F16;
}

/* ---- random weights (a synthetic checkpoint: a config without files) --------------------------
 *
 * Drawn as transformers initializes a fresh model: norm weights 1, biases 0, every other tensor
 * uniform with the standard deviation transformers uses (initializer_range 0.02; DiffLlama's
 * lambdas lambda_std_dev 0.1). Each value depends only on the seed, the tensor's name and its
 * index (common/random_weights.h), so a model drawn twice, or by another backend, is the same
 * model.
 *
 * On the CPU the values are drawn here, into host memory. On CUDA the tensors the device holds
 * are not drawn here at all: each gets an entry in m->device_draws, and the upload
 * (kernels/cuda/weights_cuda.cu) draws them straight into device memory, bit for bit what
 * rounding the host draw to the device's dtype would give. An 8B model then costs the host no
 * 16 GB, and the device no upload. */

static int ends_with(const char *text, const char *suffix) {
    size_t n = strlen(text), k = strlen(suffix);
    return n >= k && strcmp(text + n - k, suffix) == 0;
}

/* config.json's dtype ("bfloat16"); F32 when absent or not a float dtype cinfer runs */
static ci_dtype config_dtype(const ci_config *c) {
    cinfer_dtype dtype = CINFER_DTYPE_F32;
    if (cinfer_dtype_from_name(c->torch_dtype, &dtype) != 0) dtype = CINFER_DTYPE_F32;
    return ci_dtype_of_run(dtype);
}

ci_random_draw ci_random_draw_of(uint64_t seed, const char *name) {
    const uint64_t key = ci_random_stream_key(seed, ci_random_name_hash(name));
    if (ends_with(name, "norm.weight")) return (ci_random_draw){key, 0.0f, 1.0f};
    if (ends_with(name, ".bias")) return (ci_random_draw){key, 0.0f, 0.0f};
    const float std = strstr(name, "lambda_") ? 0.1f : 0.02f;
    return (ci_random_draw){key, std * 1.7320508f, 0.0f}; /* uniform on [-a, a]: std a/sqrt(3) */
}

/* Keeps memory the model frees with itself (cinfer_model_free). */
static cinfer_status keep_allocation(cinfer_model *m, void *memory, size_t bytes, const char *what,
                                     const char *name) {
    void **grown =
        memory ? realloc(m->aligned_copies, (size_t)(m->n_aligned_copies + 1) * sizeof *grown)
               : NULL;
    if (!grown) {
        free(memory);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory: %zu bytes of %s for '%s'", bytes, what,
                       name);
    }
    m->aligned_copies = grown;
    m->aligned_copies[m->n_aligned_copies++] = memory;
    return CINFER_OK;
}

static cinfer_status bind_random_weight(cinfer_model *m, const char *name, int n_dims,
                                        const int64_t *shape, bool read_on_host, ci_tensor *out) {
    const ci_config *c = m->config;
    /* in the dtype the config says the files hold, vectors too, as published checkpoints do */
    *out = (ci_tensor){NULL, config_dtype(c), n_dims, {0}};
    for (int i = 0; i < n_dims; i++) out->shape[i] = shape[i];
    const int64_t n = ci_tensor_numel(out);
    const size_t bytes = ci_tensor_nbytes(out);
    const ci_random_draw draw = ci_random_draw_of(m->checkpoint->seed, name);
    /* what the files would have held: counted here, as no checkpoint index lists these */
    m->info.n_params += n;
    m->info.weight_bytes += (int64_t)bytes;

    if (m->device_draws && !read_on_host) {
        CI_ASSERT(m->n_device_draws < m->max_device_draws); /* counted in ci_bind_model_weights */
        ci_device_draw *pending = &m->device_draws[m->n_device_draws++];
        *pending = (ci_device_draw){out, draw};
        out->data = pending; /* present, drawn on the device by the upload */
        return CINFER_OK;
    }

    void *data = malloc(bytes ? bytes : 1);
    CI_TRY(keep_allocation(m, data, bytes, "random weights", name));
    out->data = data;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        const float value = ci_random_value(&draw, (uint64_t)i);
        switch (out->dtype) {
        case CI_BF16: ((uint16_t *)data)[i] = ci_f32_to_bf16(value); break;
        case CI_F16: ((uint16_t *)data)[i] = ci_f32_to_f16(value); break;
        default: ((float *)data)[i] = value; break;
        }
    }
    return CINFER_OK;
}

/* Binds one tensor. read_on_host: the model reads its values on the host while binding (the
 * DiffLlama lambdas), so a random one is drawn on the host whatever the backend. */
static cinfer_status bind_weight(cinfer_model *m, const char *name, int n_dims,
                                 const int64_t *shape, const char *meaning, const char *required_by,
                                 bool read_on_host, ci_tensor *out) {
    const ci_checkpoint *ck = m->checkpoint;
    if (ck->synthetic) return bind_random_weight(m, name, n_dims, shape, read_on_host, out);
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
        CI_TRY(keep_allocation(m, copy, bytes, "a copy of misaligned tensor", name));
        memcpy(copy, t->data, bytes);
        out->data = copy;
    }
    return CINFER_OK;
}

cinfer_status ci_bind_weight(cinfer_model *m, const char *name, int n_dims, const int64_t *shape,
                             const char *meaning, const char *required_by, ci_tensor *out) {
    return bind_weight(m, name, n_dims, shape, meaning, required_by, true, out);
}

/* The Llama layout below: every tensor the backend computes with, and only those, so on CUDA
 * each one is a device tensor (read_on_host false). */

static cinfer_status bind_vector(cinfer_model *m, const char *name, int64_t size,
                                 const char *meaning, ci_tensor *out) {
    return bind_weight(m, name, 1, &size, meaning, NULL, false, out);
}

static cinfer_status bind_matrix(cinfer_model *m, const char *name, int64_t rows, int64_t cols,
                                 const char *meaning, ci_tensor *out) {
    const int64_t shape[2] = {rows, cols};
    return bind_weight(m, name, 2, shape, meaning, NULL, false, out);
}

/* The bias of a linear layer exists exactly when the config flag (e.g. "attention_bias = true")
 * says so. */
static cinfer_status bind_bias(cinfer_model *m, bool present, const char *flag, const char *name,
                               int64_t size, const char *meaning, ci_tensor *out) {
    *out = (ci_tensor){NULL, CI_F32, 1, {size}};
    return present ? bind_weight(m, name, 1, &size, meaning, flag, false, out) : CINFER_OK;
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
    if (m->checkpoint->synthetic && m->options.backend == CINFER_BACKEND_CUDA) {
        /* at most: the embedding, the final norm, lm_head, and every tensor of every layer */
        m->max_device_draws = 3 + c->n_layers * CI_LAYER_MAX_TENSORS;
        const size_t bytes = (size_t)m->max_device_draws * sizeof *m->device_draws;
        m->device_draws = malloc(bytes);
        CI_TRY(keep_allocation(m, m->device_draws, bytes, "pending draws", "the model"));
    }
    CI_TRY(bind_matrix(m, "model.embed_tokens.weight", V, E, "[vocab_size, hidden_size]",
                       &m->embed_tokens));
    CI_TRY(bind_vector(m, "model.norm.weight", E, "[hidden_size]", &m->norm));
    const int64_t lm_head_shape[2] = {V, E};
    if (c->tie_word_embeddings)
        m->lm_head = m->embed_tokens;
    else
        CI_TRY(bind_weight(m, "lm_head.weight", 2, lm_head_shape, "[vocab_size, hidden_size]",
                           "tie_word_embeddings = false (true would reuse "
                           "model.embed_tokens.weight)",
                           false, &m->lm_head));
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    CI_CHECK_ALLOC(m->layers, (size_t)c->n_layers * sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) CI_TRY(bind_layer(m, l));
    return CINFER_OK;
}

/* ---- the upload to a GPU ------------------------------------------------------------------- */

static int by_host_address(const void *a, const void *b) {
    const uintptr_t x = (uintptr_t)((const ci_weight_upload *)a)->tensor->data;
    const uintptr_t y = (uintptr_t)((const ci_weight_upload *)b)->tensor->data;
    return x < y ? -1 : x > y;
}

/* The pending draw of a random model's tensor t: where its data points until the upload. */
static const ci_random_draw *pending_draw(const cinfer_model *m, const ci_tensor *t) {
    const ci_device_draw *d = (const ci_device_draw *)t->data;
    CI_ASSERT(m->device_draws && d >= m->device_draws && d < m->device_draws + m->n_device_draws);
    CI_ASSERT(d->tensor == t);
    return &d->draw;
}

cinfer_status ci_upload_weights(cinfer_model *m) {
    const ci_config *c = m->config;
    const int max_tensors = 3 + c->n_layers * CI_LAYER_MAX_TENSORS;
    ci_weight_upload *list = malloc((size_t)max_tensors * sizeof *list);
    CI_CHECK_ALLOC(list, (size_t)max_tensors * sizeof *list);
    /* every tensor the device computes with, once (lm_head is left out when it is the embedding) */
    int n = 0;
    list[n++].tensor = &m->embed_tokens;
    list[n++].tensor = &m->norm;
    if (!c->tie_word_embeddings) list[n++].tensor = &m->lm_head;
    for (int l = 0; l < c->n_layers; l++) {
        ci_layer *w = &m->layers[l];
        ci_tensor *layer[CI_LAYER_MAX_TENSORS] = {&w->input_layernorm, &w->q_proj,
                                                  &w->k_proj,          &w->v_proj,
                                                  &w->q_bias,          &w->k_bias,
                                                  &w->v_bias,          &w->o_proj,
                                                  &w->o_bias,          &w->post_attention_layernorm,
                                                  &w->gate_proj,       &w->up_proj,
                                                  &w->gate_bias,       &w->up_bias,
                                                  &w->down_proj,       &w->down_bias};
        for (int i = 0; i < CI_LAYER_MAX_TENSORS; i++)
            if (layer[i]->data) list[n++].tensor = layer[i];
    }
    const bool drawn = m->device_draws != NULL;
    CI_ASSERT(!drawn || n == m->n_device_draws); /* every device tensor is drawn, none twice */
    for (int i = 0; i < n; i++) list[i].draw = drawn ? pending_draw(m, list[i].tensor) : NULL;
    /* file order: the mapped shards are read front to back, once */
    if (!drawn) qsort(list, (size_t)n, sizeof *list, by_host_address);

    char what[192];
    snprintf(what, sizeof what, "%s of %s in %s",
             drawn ? "random weights of the shape" : "the weights",
             ci_base_name(m->checkpoint->dir), cinfer_dtype_name(m->options.dtype));
    cinfer_status status =
        ci_cuda_upload_weights(m->options.device, ci_dtype_of_run(m->options.dtype), what, list, n,
                               &m->device_weights, &m->device_weight_bytes);
    free(list);
    if (c->tie_word_embeddings) m->lm_head = m->embed_tokens;
    return status;
}

void ci_free_device_weights(cinfer_model *m) {
    ci_cuda_free_weights(m->device_weights);
    m->device_weights = NULL;
    m->device_weight_bytes = 0;
}
