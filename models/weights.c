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
 * model, and a tensor-parallel rank can draw its part of a tensor alone (on the CPU; the device
 * draws whole tensors).
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

/* ---- tensor parallelism: the part of a tensor a rank binds (models/shard.h) -------------------
 *
 * Up to two blocks of rows (a column-parallel layer: q/k/v, gate/up; DiffLlama's two halves of its
 * heads) and a range of columns (a row-parallel layer: o_proj, down_proj), of a tensor stored
 * [rows, cols] row-major. A block of whole rows is one contiguous byte range of the file, bound in
 * place like a whole tensor; anything else (a range of columns: one strided piece per row; two
 * blocks) is copied into memory the model owns. A rank reads its slices and nothing else. */
typedef struct row_block {
    int64_t first, count;
} row_block;

typedef struct slice {
    int n_blocks;
    row_block rows[2];
    int64_t col_first, col_count; /* col_count < 0: every column */
} slice;

static const slice whole_tensor = {1, {{0, -1}, {0, 0}}, 0, -1};

/* The rows of `ranges` of heads, D rows each; neighbouring blocks join into one. */
static slice head_rows(const ci_head_range *ranges, int n_ranges, int64_t D) {
    slice s = {0, {{0, 0}, {0, 0}}, 0, -1};
    for (int i = 0; i < n_ranges; i++) {
        const row_block block = {ranges[i].first * D, ranges[i].count * D};
        row_block *last = s.n_blocks ? &s.rows[s.n_blocks - 1] : NULL;
        if (last && last->first + last->count == block.first)
            last->count += block.count;
        else
            s.rows[s.n_blocks++] = block;
    }
    return s;
}

static slice row_range(int64_t first, int64_t count) {
    return (slice){1, {{first, count}, {0, 0}}, 0, -1};
}

static slice column_range(int64_t first, int64_t count) {
    return (slice){1, {{0, -1}, {0, 0}}, first, count};
}

/* The rows and columns of a tensor of shape `shape` that `part` selects, resolved: every block's
 * count (count < 0: every row), the first column and the number of columns (cols: the tensor's). */
typedef struct slice_extent {
    int n_blocks;
    row_block rows[2];
    int64_t n_rows, cols, col_first, col_count;
} slice_extent;

static slice_extent slice_extent_of(const slice *part, int n_dims, const int64_t *shape) {
    slice_extent e = {
        part->n_blocks, {{0, 0}, {0, 0}}, 0, n_dims == 2 ? shape[1] : 1, part->col_first, 0};
    e.col_count = part->col_count < 0 ? e.cols : part->col_count;
    for (int i = 0; i < part->n_blocks; i++) {
        e.rows[i] = part->rows[i];
        if (e.rows[i].count < 0) e.rows[i].count = shape[0];
        CI_ASSERT(e.rows[i].first >= 0 && e.rows[i].first + e.rows[i].count <= shape[0]);
        e.n_rows += e.rows[i].count;
    }
    CI_ASSERT(e.col_first >= 0 && e.col_first + e.col_count <= e.cols);
    return e;
}

/* A random tensor, or a rank's part of one: the part holds, at each of its elements, the value the
 * whole tensor holds there (element (r, c) of the whole is draw index r·cols + c), so a sharded
 * random model is the unsharded one split, as a sharded checkpoint is. */
static cinfer_status bind_random_weight(cinfer_model *m, const char *name, int n_dims,
                                        const int64_t *shape, bool read_on_host, const slice *part,
                                        ci_tensor *out) {
    const slice_extent e = slice_extent_of(part, n_dims, shape);
    /* in the dtype the config says the files hold, vectors too, as published checkpoints do */
    *out = (ci_tensor){
        NULL, config_dtype(m->config), n_dims, {e.n_rows, n_dims == 2 ? e.col_count : 0}};
    const int64_t n = ci_tensor_numel(out);
    const size_t bytes = ci_tensor_nbytes(out);
    const ci_random_draw draw = ci_random_draw_of(m->checkpoint->seed, name);
    /* what the files would have held, the whole tensor (a rank's info describes the whole model):
     * counted here, as no checkpoint index lists these; bytes_read is the part, as for a file */
    m->info.n_params += shape[0] * e.cols;
    m->info.weight_bytes += shape[0] * e.cols * (int64_t)ci_dtype_size(out->dtype);
    m->bytes_read += (int64_t)bytes;

    if (m->device_draws && !read_on_host) {
        /* the upload draws element i at index i: whole tensors only (refused at load) */
        CI_ASSERT(e.n_blocks == 1 && e.n_rows == shape[0] && e.col_count == e.cols);
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
        /* the part's row i / col_count is row r of the whole: block by block, in order */
        int64_t row = i / e.col_count, r = row;
        for (int b = 0; b < e.n_blocks; b++) {
            if (row < e.rows[b].count) {
                r = e.rows[b].first + row;
                break;
            }
            row -= e.rows[b].count;
        }
        const int64_t index = r * e.cols + e.col_first + i % e.col_count;
        const float value = ci_random_value(&draw, (uint64_t)index);
        switch (out->dtype) {
        case CI_BF16: ((uint16_t *)data)[i] = ci_f32_to_bf16(value); break;
        case CI_F16: ((uint16_t *)data)[i] = ci_f32_to_f16(value); break;
        default: ((float *)data)[i] = value; break;
        }
    }
    return CINFER_OK;
}

/* Binds part of file tensor t, whose shape (the config's, already checked) is shape. */
static cinfer_status bind_slice(cinfer_model *m, const st_tensor *t, int n_dims,
                                const int64_t *shape, const slice *part, const char *name,
                                ci_tensor *out) {
    const size_t item = ci_dtype_size(t->dtype);
    const slice_extent e = slice_extent_of(part, n_dims, shape);
    const int64_t cols = e.cols, col_first = e.col_first, col_count = e.col_count;
    const row_block *blocks = e.rows;
    *out = (ci_tensor){NULL, t->dtype, n_dims, {e.n_rows, n_dims == 2 ? col_count : 0}};
    const size_t bytes = ci_tensor_nbytes(out);
    m->bytes_read += (int64_t)bytes;

    const char *file_data = t->data;
    if (part->n_blocks == 1 && col_count == cols) {
        /* whole rows: one contiguous range of the file, bound in place */
        out->data = (void *)(file_data + (size_t)blocks[0].first * (size_t)cols * item);
        /* Writers pad the header so that data is aligned; a file that does not gets its
         * misaligned tensors copied once, so that kernels can load whole elements. */
        if ((uintptr_t)out->data % item != 0) {
            void *copy = malloc(bytes ? bytes : 1);
            CI_TRY(keep_allocation(m, copy, bytes, "a copy of misaligned tensor", name));
            memcpy(copy, out->data, bytes);
            out->data = copy;
        }
        return CINFER_OK;
    }
    /* columns of each row, or two blocks of rows: copied, row by row, into the rank's memory */
    char *copy = malloc(bytes ? bytes : 1);
    CI_TRY(keep_allocation(m, copy, bytes, "this rank's slice of tensor", name));
    char *to = copy;
    const size_t piece = (size_t)col_count * item;
    for (int i = 0; i < part->n_blocks; i++)
        for (int64_t r = blocks[i].first; r < blocks[i].first + blocks[i].count; r++) {
            memcpy(to, file_data + ((size_t)r * (size_t)cols + (size_t)col_first) * item, piece);
            to += piece;
        }
    out->data = copy;
    return CINFER_OK;
}

/* Binds one tensor, or the part of it that `part` says (NULL: whole). read_on_host: the model
 * reads its values on the host while binding (the DiffLlama lambdas), so a random one is drawn on
 * the host whatever the backend. shape is the whole tensor's, as config.json implies it. */
static cinfer_status bind_weight(cinfer_model *m, const char *name, int n_dims,
                                 const int64_t *shape, const char *meaning, const char *required_by,
                                 bool read_on_host, const slice *part, ci_tensor *out) {
    const ci_checkpoint *ck = m->checkpoint;
    if (ck->synthetic)
        return bind_random_weight(m, name, n_dims, shape, read_on_host, part ? part : &whole_tensor,
                                  out);
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
    return bind_slice(m, t, n_dims, shape, part ? part : &whole_tensor, name, out);
}

cinfer_status ci_bind_weight(cinfer_model *m, const char *name, int n_dims, const int64_t *shape,
                             const char *meaning, const char *required_by, ci_tensor *out) {
    return bind_weight(m, name, n_dims, shape, meaning, required_by, true, NULL, out);
}

/* The Llama layout below: every tensor the backend computes with, and only those, so on CUDA
 * each one is a device tensor (read_on_host false). */

static cinfer_status bind_vector(cinfer_model *m, const char *name, int64_t size,
                                 const char *meaning, ci_tensor *out) {
    return bind_weight(m, name, 1, &size, meaning, NULL, false, NULL, out);
}

/* part: what this rank holds of it (NULL: whole) */
static cinfer_status bind_matrix(cinfer_model *m, const char *name, int64_t rows, int64_t cols,
                                 const char *meaning, const slice *part, ci_tensor *out) {
    const int64_t shape[2] = {rows, cols};
    return bind_weight(m, name, 2, shape, meaning, NULL, false, part, out);
}

/* The bias of a linear layer exists exactly when the config flag (e.g. "attention_bias = true")
 * says so; part: this rank's rows of it. The size of the absent bias is the rank's. */
static cinfer_status bind_bias(cinfer_model *m, bool present, const char *flag, const char *name,
                               int64_t size, const char *meaning, const slice *part,
                               ci_tensor *out) {
    *out = (ci_tensor){NULL, CI_F32, 1, {size}};
    return present ? bind_weight(m, name, 1, &size, meaning, flag, false, part, out) : CINFER_OK;
}

/* Shapes are checked against the checkpoint's config (the whole tensors); what is bound is this
 * rank's part (models/shard.h): the rows of its heads in q/k/v and of its MLP width in gate/up, the
 * matching columns of o_proj and down_proj. Their biases are added once, by rank 0: the other
 * ranks bind none. With tp = 1 every part is the whole tensor, bound in place. */
static cinfer_status bind_layer(cinfer_model *m, int l) {
    const ci_config *c = &m->checkpoint->config;
    const ci_shard_plan *plan = &m->shard;
    ci_layer *w = &m->layers[l];
    const int64_t E = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    const int64_t HD = (int64_t)c->n_heads * D, GD = (int64_t)c->n_kv_heads * D;
    const bool ab = c->attention_bias, mb = c->mlp_bias, sums_bias = plan->rank == 0;
    const slice q_rows = head_rows(plan->q, plan->n_q_ranges, D);
    const slice kv_rows = head_rows(plan->kv, plan->n_kv_ranges, D);
    const slice o_columns = column_range(plan->o_first, plan->o_count);
    const slice mlp_rows = row_range(plan->mlp_first, plan->mlp_count);
    const slice down_columns = column_range(plan->mlp_first, plan->mlp_count);
    char name[160];
#define NAME(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
    CI_TRY(bind_vector(m, NAME("input_layernorm.weight"), E, "[hidden_size]", &w->input_layernorm));
    CI_TRY(bind_matrix(m, NAME("self_attn.q_proj.weight"), HD, E,
                       "[num_attention_heads*head_dim, hidden_size]", &q_rows, &w->q_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.k_proj.weight"), GD, E,
                       "[num_key_value_heads*head_dim, hidden_size]", &kv_rows, &w->k_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.v_proj.weight"), GD, E,
                       "[num_key_value_heads*head_dim, hidden_size]", &kv_rows, &w->v_proj));
    CI_TRY(bind_matrix(m, NAME("self_attn.o_proj.weight"), E, HD,
                       "[hidden_size, num_attention_heads*head_dim]", &o_columns, &w->o_proj));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.q_proj.bias"), HD,
                     "[num_attention_heads*head_dim]", &q_rows, &w->q_bias));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.k_proj.bias"), GD,
                     "[num_key_value_heads*head_dim]", &kv_rows, &w->k_bias));
    CI_TRY(bind_bias(m, ab, "attention_bias = true", NAME("self_attn.v_proj.bias"), GD,
                     "[num_key_value_heads*head_dim]", &kv_rows, &w->v_bias));
    CI_TRY(bind_bias(m, ab && sums_bias, "attention_bias = true", NAME("self_attn.o_proj.bias"), E,
                     "[hidden_size]", NULL, &w->o_bias));
    CI_TRY(bind_vector(m, NAME("post_attention_layernorm.weight"), E, "[hidden_size]",
                       &w->post_attention_layernorm));
    CI_TRY(bind_matrix(m, NAME("mlp.gate_proj.weight"), I, E, "[intermediate_size, hidden_size]",
                       &mlp_rows, &w->gate_proj));
    CI_TRY(bind_matrix(m, NAME("mlp.up_proj.weight"), I, E, "[intermediate_size, hidden_size]",
                       &mlp_rows, &w->up_proj));
    CI_TRY(bind_matrix(m, NAME("mlp.down_proj.weight"), E, I, "[hidden_size, intermediate_size]",
                       &down_columns, &w->down_proj));
    CI_TRY(bind_bias(m, mb, "mlp_bias = true", NAME("mlp.gate_proj.bias"), I, "[intermediate_size]",
                     &mlp_rows, &w->gate_bias));
    CI_TRY(bind_bias(m, mb, "mlp_bias = true", NAME("mlp.up_proj.bias"), I, "[intermediate_size]",
                     &mlp_rows, &w->up_bias));
    CI_TRY(bind_bias(m, mb && sums_bias, "mlp_bias = true", NAME("mlp.down_proj.bias"), E,
                     "[hidden_size]", NULL, &w->down_bias));
#undef NAME
    if (m->arch->bind_layer_extras) CI_TRY(m->arch->bind_layer_extras(m, l));
    return CINFER_OK;
}

/* lm_head tied to the embedding: this rank's vocabulary rows of it (all of them when whole). */
static ci_tensor tied_lm_head(const cinfer_model *m) {
    return ci_tensor_rows(&m->embed_tokens, m->shard.vocab_first, m->shard.vocab_count);
}

/* The embedding is replicated: every rank holds all of it (docs/TENSOR_PARALLEL.md says why);
 * lm_head is split by vocabulary rows. */
cinfer_status ci_bind_model_weights(cinfer_model *m) {
    const ci_config *c = &m->checkpoint->config;
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
    CI_TRY(bind_matrix(m, "model.embed_tokens.weight", V, E, "[vocab_size, hidden_size]", NULL,
                       &m->embed_tokens));
    CI_TRY(bind_vector(m, "model.norm.weight", E, "[hidden_size]", &m->norm));
    const int64_t lm_head_shape[2] = {V, E};
    const slice vocab_rows = row_range(m->shard.vocab_first, m->shard.vocab_count);
    if (c->tie_word_embeddings)
        m->lm_head = tied_lm_head(m);
    else
        CI_TRY(bind_weight(m, "lm_head.weight", 2, lm_head_shape, "[vocab_size, hidden_size]",
                           "tie_word_embeddings = false (true would reuse "
                           "model.embed_tokens.weight)",
                           false, &vocab_rows, &m->lm_head));
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
    if (c->tie_word_embeddings) m->lm_head = tied_lm_head(m);
    if (status == CINFER_OK) {
        /* the tensors point into device memory now: the host copies (misaligned tensors, a
         * tensor-parallel rank's strided slices, about 6 GB per rank of Llama-3-70B at tp = 8) are
         * read by nobody */
        for (int i = 0; i < m->n_aligned_copies; i++) free(m->aligned_copies[i]);
        m->n_aligned_copies = 0;
    }
    return status;
}

void ci_free_device_weights(cinfer_model *m) {
    ci_cuda_free_weights(m->device_weights);
    m->device_weights = NULL;
    m->device_weight_bytes = 0;
}
