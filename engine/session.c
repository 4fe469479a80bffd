/* Sessions: the KV caches and activation buffers of n_seqs lockstep sequences, sized once at
 * creation so that no forward pass allocates, and the checks every input passes before it reaches
 * the model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/device.h"
#include "../common/error.h"
#include "session.h"

/* Logits leave the device this many rows at a time: [rows, vocab] stays a few MB. A batched
 * session takes at least one row per sequence, so that a decode step's logits are one block. */
enum { SESSION_LOGIT_ROWS = 16 };

/* Every buffer a session holds, as (tensor, dtype, shape): one list serves allocation and the
 * memory estimate, so that the two cannot drift apart. KV caches are counted separately. */
typedef struct buffer_spec {
    ci_tensor *tensor;
    ci_dtype dtype;
    int n_dims;
    int64_t d0, d1, d2, d3;
} buffer_spec;

enum { N_ACTIVATION_BUFFERS = 11 };

/* rows: tokens of all sequences in one forward pass. */
static void activation_buffers(cinfer_session *s, const ci_config *c, int rows, int n_seqs,
                               int logit_rows, buffer_spec specs[N_ACTIVATION_BUFFERS]) {
    const int64_t B = rows, E = c->hidden_size, I = c->intermediate_size;
    const int64_t H = c->n_heads, G = c->n_kv_heads, D = c->head_dim;
    const buffer_spec list[N_ACTIVATION_BUFFERS] = {
        {&s->tokens, CI_I32, 1, B, 0, 0, 0},
        {&s->act.x, CI_F32, 2, B, E, 0, 0},
        {&s->act.x_norm, CI_F32, 2, B, E, 0, 0},
        {&s->act.q, CI_F32, 3, B, H, D, 0},
        {&s->act.k_new, CI_F32, 3, B, G, D, 0},
        {&s->act.v_new, CI_F32, 3, B, G, D, 0},
        {&s->act.attn, CI_F32, 3, B, H, D, 0},
        {&s->act.gate, CI_F32, 2, B, I, 0, 0},
        {&s->act.up, CI_F32, 2, B, I, 0, 0},
        {&s->logits, CI_F32, 2, logit_rows, c->vocab_size, 0, 0},
        {&s->sampled, CI_I32, 1, n_seqs, 0, 0, 0},
    };
    memcpy(specs, list, sizeof list);
}

static int logit_rows_for(int n_seqs) {
    return n_seqs > SESSION_LOGIT_ROWS ? n_seqs : SESSION_LOGIT_ROWS;
}

static size_t spec_bytes(const buffer_spec *spec) {
    ci_tensor t = {NULL, spec->dtype, spec->n_dims, {spec->d0, spec->d1, spec->d2, spec->d3}};
    return ci_tensor_nbytes(&t);
}

static cinfer_status alloc_tensor(cinfer_session *s, const buffer_spec *spec) {
    *spec->tensor =
        (ci_tensor){NULL, spec->dtype, spec->n_dims, {spec->d0, spec->d1, spec->d2, spec->d3}};
    size_t bytes = spec_bytes(spec);
    spec->tensor->data = s->be->ops->alloc(s->be, bytes);
    if (!spec->tensor->data)
        return CI_FAIL(CINFER_ERR_MEMORY,
                       "out of memory: %zu bytes for session buffers (n_ctx = %d, n_seqs = %d)",
                       bytes, s->n_ctx, s->n_seqs);
    return CINFER_OK;
}

static void free_tensor(cinfer_session *s, ci_tensor *t) {
    if (t->data) s->be->ops->free(s->be, t->data);
    t->data = NULL;
}

static cinfer_status allocate(cinfer_session *s) {
    const ci_config *c = s->model->config;
    const int D = c->head_dim;
    s->k_cache = calloc((size_t)c->n_layers, sizeof *s->k_cache);
    s->v_cache = calloc((size_t)c->n_layers, sizeof *s->v_cache);
    if (!s->k_cache || !s->v_cache) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    const ci_dtype kv_dtype = ci_kv_cache_dtype(&s->model->options);
    for (int l = 0; l < c->n_layers; l++) {
        const buffer_spec k = {&s->k_cache[l], kv_dtype, 4, s->n_seqs, s->n_ctx, c->n_kv_heads, D};
        const buffer_spec v = {&s->v_cache[l], kv_dtype, 4, s->n_seqs, s->n_ctx, c->n_kv_heads, D};
        CI_TRY(alloc_tensor(s, &k));
        CI_TRY(alloc_tensor(s, &v));
    }
    buffer_spec specs[N_ACTIVATION_BUFFERS];
    s->logit_rows = logit_rows_for(s->n_seqs);
    activation_buffers(s, c, s->n_seqs * s->max_batch, s->n_seqs, s->logit_rows, specs);
    for (int i = 0; i < N_ACTIVATION_BUFFERS; i++) CI_TRY(alloc_tensor(s, &specs[i]));
    s->inv_freq = s->be->ops->alloc(s->be, (size_t)D / 2 * sizeof(float));
    s->host_inv_freq = malloc((size_t)D / 2 * sizeof(float));
    s->host_hidden =
        malloc((size_t)s->n_seqs * (size_t)s->max_batch * (size_t)c->hidden_size * sizeof(float));
    if (!s->inv_freq || !s->host_inv_freq || !s->host_hidden)
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    s->rope.inv_freq = s->inv_freq;
    s->rope_seq_len = -1;
    return ci_backend_reserve(s->be, s->be->ops->workspace_bytes(s->be, c, s->n_ctx, s->n_seqs));
}

/* The session of one model, or of one tensor-parallel rank: its own config's KV heads (as allocate
 * sizes them; a sharded model's info sums every rank's), activations and scratch. */
static int64_t session_bytes(const cinfer_model *model, int n_ctx, int n_seqs,
                             const ci_backend *be) {
    const ci_config *c = model->config;
    cinfer_session shape_only = {0};
    buffer_spec specs[N_ACTIVATION_BUFFERS];
    activation_buffers(&shape_only, c, ci_rows_per_pass(n_ctx, n_seqs), n_seqs,
                       logit_rows_for(n_seqs), specs);
    const buffer_spec kv = {NULL, ci_kv_cache_dtype(&model->options), 4, n_seqs, n_ctx,
                            c->n_kv_heads, c->head_dim};
    int64_t total = 2 * (int64_t)c->n_layers * (int64_t)spec_bytes(&kv); /* K and V */
    for (int i = 0; i < N_ACTIVATION_BUFFERS; i++) total += (int64_t)spec_bytes(&specs[i]);
    if (be) total += (int64_t)be->ops->workspace_bytes(be, c, n_ctx, n_seqs);
    return total;
}

int64_t cinfer_session_memory_bytes_batch(const cinfer_model *model, int n_ctx, int n_seqs) {
    if (n_ctx <= 0) n_ctx = model->config->max_position_embeddings;
    if (n_seqs < 1 || n_seqs > CI_MAX_BATCH) return -1;
    ci_backend *be = NULL;
    if (ci_backend_create_for(&model->options, &be) != CINFER_OK) ci_error_clear();
    /* a sharded model's session is one per rank, each sized by its own config, which the plan
     * makes the same on every rank (models/shard.h: as many heads, KV heads and MLP rows) */
    const int64_t total = (model->tp > 1 ? model->tp : 1) * session_bytes(model, n_ctx, n_seqs, be);
    ci_backend_free(be);
    return total;
}

int64_t cinfer_session_memory_bytes(const cinfer_model *model, int n_ctx) {
    return cinfer_session_memory_bytes_batch(model, n_ctx, 1);
}

/* On a GPU, a session that cannot fit is refused before its first allocation, with both figures.
 */
static cinfer_status check_device_memory(const cinfer_session *s) {
    if (s->model->options.backend != CINFER_BACKEND_CUDA) return CINFER_OK;
    size_t free_bytes = 0, total_bytes = 0;
    CI_TRY(ci_cuda_memory(s->model->options.device, &free_bytes, &total_bytes));
    char what[128];
    snprintf(what, sizeof what,
             "a session with n_ctx = %d, n_seqs = %d (KV caches, activations, scratch)", s->n_ctx,
             s->n_seqs);
    return ci_memory_fits(what, s->model->options.device,
                          session_bytes(s->model, s->n_ctx, s->n_seqs, s->be), (int64_t)free_bytes);
}

/* The followers mirror a session of a sharded model: the same n_ctx and n_seqs, sized by each
 * rank's own config (tp_ranks.h). */
static cinfer_status create_on_followers(cinfer_session *s) {
    s->tp_id = ci_tp_ranks_new_id(s->model->followers);
    ci_tp_message m = {0};
    ci_tp_message_start(&m, CI_TP_SESSION_CREATE, s->tp_id);
    const int32_t shape[2] = {s->n_ctx, s->n_seqs};
    ci_tp_message_put(&m, shape, sizeof shape);
    const cinfer_status status = ci_tp_ranks_call(s->model->followers, &m, NULL);
    ci_tp_message_free(&m);
    return status;
}

cinfer_status cinfer_session_create_batch(cinfer_model *model, int n_ctx, int n_seqs,
                                          cinfer_session **out) {
    *out = NULL;
    ci_error_clear();
    if (n_ctx < 0) return CI_FAIL(CINFER_ERR_ARGUMENT, "context size %d is negative", n_ctx);
    /* a forward pass takes at least one token of every sequence, within CI_MAX_BATCH rows */
    if (n_seqs < 1 || n_seqs > CI_MAX_BATCH)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "n_seqs = %d sequences: a session runs 1 to %d", n_seqs,
                       (int)CI_MAX_BATCH);
    cinfer_session *s = calloc(1, sizeof *s);
    CI_CHECK_ALLOC(s, sizeof *s);
    s->model = model;
    s->n_ctx = n_ctx > 0 ? n_ctx : model->config->max_position_embeddings;
    s->n_seqs = n_seqs;
    s->max_batch = ci_tokens_per_pass(s->n_ctx, n_seqs);
    cinfer_status status = ci_backend_create_for(&model->options, &s->be);
    if (status == CINFER_OK) status = check_device_memory(s);
    if (status == CINFER_OK) status = allocate(s);
    if (status == CINFER_OK && model->followers) {
        status = create_on_followers(s);
        s->mirrored = 1; /* freed on the followers too, whichever of them made one */
    }
    if (status != CINFER_OK) {
        const cinfer_status kept = status;
        char message[1024];
        snprintf(message, sizeof message, "%s", cinfer_last_error());
        cinfer_session_free(s);
        return CI_FAIL(kept, "%s", message);
        return status;
    }
    *out = s;
    return CINFER_OK;
}

cinfer_status cinfer_session_create(cinfer_model *model, int n_ctx, cinfer_session **out) {
    return cinfer_session_create_batch(model, n_ctx, 1, out);
}

void cinfer_session_free(cinfer_session *s) {
    if (!s) return;
    if (s->mirrored) ci_tp_ranks_free_object(s->model->followers, CI_TP_SESSION_FREE, s->tp_id);
    free(s->follower_next);
    if (s->be) {
        const ci_config *c = s->model->config;
        for (int l = 0; s->k_cache && l < c->n_layers; l++) free_tensor(s, &s->k_cache[l]);
        for (int l = 0; s->v_cache && l < c->n_layers; l++) free_tensor(s, &s->v_cache[l]);
        buffer_spec specs[N_ACTIVATION_BUFFERS];
        activation_buffers(s, c, s->n_seqs * s->max_batch, s->n_seqs, s->logit_rows, specs);
        for (int i = 0; i < N_ACTIVATION_BUFFERS; i++) free_tensor(s, specs[i].tensor);
        if (s->inv_freq) s->be->ops->free(s->be, s->inv_freq);
        ci_backend_free(s->be);
    }
    free(s->k_cache);
    free(s->v_cache);
    free(s->host_inv_freq);
    free(s->host_hidden);
    free(s);
}

/* (the followers take n_past from each call's message: nothing to tell them) */
void cinfer_session_reset(cinfer_session *s) { s->n_past = 0; }
int cinfer_session_n_past(const cinfer_session *s) { return s->n_past; }
int cinfer_session_n_ctx(const cinfer_session *s) { return s->n_ctx; }
int cinfer_session_n_seqs(const cinfer_session *s) { return s->n_seqs; }

void cinfer_session_observe(cinfer_session *s, cinfer_hidden_observer observer, void *user) {
    s->observer = observer;
    s->observer_user = user;
}

/* The forward pass's hook: the observer, if any, sees rows of `hidden` on the host. */
static void observe_hidden(void *user, int stage, const ci_tensor *hidden) {
    cinfer_session *s = user;
    const int n_tokens = (int)ci_tensor_n_rows(hidden), dim = (int)ci_tensor_row_size(hidden);
    s->be->ops->to_host(s->be, s->host_hidden, hidden->data, ci_tensor_nbytes(hidden));
    s->observer(s->observer_user, stage, s->host_hidden, n_tokens, dim);
}

/* RoPE frequencies depend on the sequence length only under dynamic scaling: computed for the
 * length at the end of each forward call (models/rope.c says where transformers differs). */
static void update_rope(cinfer_session *s, int seq_len) {
    const ci_config *c = s->model->config;
    const int key = c->rope.type == CI_ROPE_DYNAMIC ? seq_len : 0;
    if (s->rope_seq_len == key) return;
    ci_rope_frequencies(c, seq_len, s->host_inv_freq, &s->rope.attention_scaling);
    s->be->ops->to_device(s->be, s->inv_freq, s->host_inv_freq,
                          (size_t)c->head_dim / 2 * sizeof(float));
    s->rope_seq_len = key;
}

/* Sequence b's tokens [done, done + chunk) into rows [b·chunk, (b+1)·chunk) of session->tokens;
 * tokens are [n_seqs, n_tokens]. When one pass takes them all, the layouts agree: one copy. */
static void upload_tokens(cinfer_session *s, const int32_t *tokens, int n_tokens, int done,
                          int chunk) {
    if (chunk == n_tokens) {
        s->be->ops->to_device(s->be, s->tokens.data, tokens,
                              (size_t)s->n_seqs * (size_t)n_tokens * sizeof *tokens);
        return;
    }
    for (int b = 0; b < s->n_seqs; b++)
        s->be->ops->to_device(s->be, (int32_t *)s->tokens.data + (size_t)b * (size_t)chunk,
                              tokens + (size_t)b * (size_t)n_tokens + done,
                              (size_t)chunk * sizeof *tokens);
}

/* The model's forward pass over the n_tokens tokens of each sequence in session->tokens: a
 * tensor-parallel rank's fails (CINFER_ERR_COMM) when a collective did. */
static cinfer_status run_forward(cinfer_session *s, int n_tokens, int pos0) {
    const ci_tensor tokens = ci_tensor_rows(&s->tokens, 0, (int64_t)s->n_seqs * n_tokens);
    const ci_forward_step step = {
        .tokens = &tokens,
        .n_seqs = s->n_seqs,
        .n_tokens = n_tokens,
        .pos0 = pos0,
        .rope = &s->rope,
        .k_cache = s->k_cache,
        .v_cache = s->v_cache,
        .hook = {s->observer ? observe_hidden : NULL, s},
    };
    return ci_model_forward(s->be, s->model, &step, &s->act);
}

/* lm_head over rows [row0, row0 + n_rows) of each sequence's n_tokens normalized rows, logit_rows
 * at a time, each block to the host as it is done: sequence b's rows go to
 * host + b · host_seq_floats, row-major [n_rows, V]. Rows of one sequence, and of consecutive
 * sequences when a sequence's rows are all of its rows, are contiguous on both sides. */
static cinfer_status logits_to_host(cinfer_session *s, int n_tokens, int row0, int n_rows,
                                    float *host, size_t host_seq_floats) {
    ci_backend *be = s->be;
    const size_t V = (size_t)s->model->config->vocab_size;
    const int whole = row0 == 0 && n_rows == n_tokens; /* all sequences' rows are one run */
    const int n_runs = whole ? 1 : s->n_seqs, run_rows = whole ? s->n_seqs * n_tokens : n_rows;
    for (int b = 0; b < n_runs; b++) {
        const int first = b * n_tokens + row0; /* of the run's rows in the normalized stream */
        for (int r = 0; r < run_rows; r += s->logit_rows) {
            const int rows = run_rows - r < s->logit_rows ? run_rows - r : s->logit_rows;
            const ci_tensor normed = ci_tensor_rows(&s->act.x_norm, first + r, rows);
            ci_tensor logits = ci_tensor_rows(&s->logits, 0, rows);
            CI_TRY(ci_model_logits(be, s->model, &logits, &normed));
            if (s->follower) continue; /* rank 0 holds the same logits and hands them over */
            /* row g of the run is row g mod n_rows of sequence b + g / n_rows */
            for (int i = 0; i < rows;) {
                const int g = r + i, seq = b + g / n_rows, within = g % n_rows;
                const int run = rows - i < n_rows - within ? rows - i : n_rows - within;
                be->ops->to_host(be, host + (size_t)seq * host_seq_floats + (size_t)within * V,
                                 (const float *)logits.data + (size_t)i * V,
                                 (size_t)run * V * sizeof(float));
                i += run;
            }
        }
    }
    return CINFER_OK;
}

/* What every input of a forward call must pass, before any rank starts it. */
static cinfer_status check_forward(const cinfer_session *s, const int32_t *tokens, int n_tokens,
                                   cinfer_logits which, const float *logits) {
    const ci_config *c = s->model->config;
    if (n_tokens <= 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "no tokens to run (n_tokens = %d)", n_tokens);
    if (which != CINFER_LOGITS_NONE && !logits && !s->follower)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "logits were asked for but no buffer was given");
    for (int b = 0; b < s->n_seqs; b++)
        for (int i = 0; i < n_tokens; i++) {
            const int32_t id = tokens[(size_t)b * (size_t)n_tokens + (size_t)i];
            if (id >= 0 && id < c->vocab_size) continue;
            if (s->n_seqs == 1)
                return CI_FAIL(CINFER_ERR_ARGUMENT,
                               "token id %d at position %d is outside the vocabulary (vocab_size "
                               "= %d in config.json)",
                               id, s->n_past + i, c->vocab_size);
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "token id %d of sequence %d at position %d is outside the vocabulary "
                           "(vocab_size = %d in config.json)",
                           id, b, s->n_past + i, c->vocab_size);
        }
    if (n_tokens > s->n_ctx - s->n_past)
        return CI_FAIL(CINFER_ERR_CONTEXT_FULL,
                       "%d tokens do not fit: the context holds %d and %d are used", n_tokens,
                       s->n_ctx, s->n_past);
    return CINFER_OK;
}

/* One rank's forward call (every rank of an unsharded model: the only one). A follower computes
 * the same logits as rank 0 and keeps none (logits NULL). */
static cinfer_status forward_batch(cinfer_session *s, const int32_t *tokens, int n_tokens,
                                   cinfer_logits which, float *logits) {
    const size_t V = (size_t)s->model->config->vocab_size;
    CI_TRY(check_forward(s, tokens, n_tokens, which, logits));
    update_rope(s, s->n_past + n_tokens);
    for (int done = 0; done < n_tokens;) {
        const int chunk = n_tokens - done < s->max_batch ? n_tokens - done : s->max_batch;
        upload_tokens(s, tokens, n_tokens, done, chunk);
        CI_TRY(run_forward(s, chunk, s->n_past));
        /* each sequence's rows [row0, row0 + n_rows) of this chunk, to logits + b · seq_floats */
        if (which == CINFER_LOGITS_ALL)
            CI_TRY(logits_to_host(s, chunk, 0, chunk, logits ? logits + (size_t)done * V : NULL,
                                  (size_t)n_tokens * V));
        else if (which == CINFER_LOGITS_LAST && done + chunk == n_tokens)
            CI_TRY(logits_to_host(s, chunk, chunk - 1, 1, logits, V));
        s->n_past += chunk;
        done += chunk;
    }
    return CINFER_OK;
}

/* ---- tensor-parallel ranks ---------------------------------------------------------------------
 * Rank 0 checks the call's inputs first, so that the ranks start only calls they will all run
 * (a refused input leaves the group usable); then it hands the call to every follower as a message
 * (tp_ranks.h), with its n_past, and runs its own part while they run theirs, the ranks meeting in
 * their collectives. A rank that fails after that aborts the group so that nobody waits for it;
 * the call reports rank 0's error, else the first follower's. */

static void start_message(ci_tp_message *m, const cinfer_session *s, ci_tp_op op) {
    ci_tp_message_start(m, op, s->tp_id);
    const int32_t n_past = s->n_past;
    ci_tp_message_put(m, &n_past, sizeof n_past);
}

static cinfer_status sharded_forward(cinfer_session *s, const int32_t *tokens, int n_tokens,
                                     cinfer_logits which, float *logits) {
    CI_TRY(check_forward(s, tokens, n_tokens, which, logits));
    ci_tp_message m = {0};
    start_message(&m, s, CI_TP_SESSION_FORWARD);
    const int32_t call[2] = {(int32_t)which, n_tokens};
    ci_tp_message_put(&m, call, sizeof call);
    ci_tp_message_put(&m, tokens, (size_t)s->n_seqs * (size_t)n_tokens * sizeof *tokens);
    cinfer_status status = ci_tp_ranks_begin(s->model->followers, &m);
    if (status == CINFER_OK)
        status = ci_tp_ranks_end(s->model->followers,
                                 forward_batch(s, tokens, n_tokens, which, logits), NULL);
    ci_tp_message_free(&m);
    return status;
}

static cinfer_status greedy_step(cinfer_session *s, const int32_t *tokens, int32_t *next);

cinfer_status ci_session_follow(cinfer_session *s, ci_tp_op op, ci_tp_reader *r) {
    const int32_t *n_past = ci_tp_take(r, sizeof *n_past);
    if (!n_past) return CI_FAIL(CINFER_ERR_COMM, "a session call's message is truncated");
    s->n_past = *n_past;
    if (op == CI_TP_SESSION_GREEDY) {
        const int32_t *tokens = ci_tp_take(r, (size_t)s->n_seqs * sizeof *tokens);
        if (!tokens) return CI_FAIL(CINFER_ERR_COMM, "a greedy step's message is truncated");
        return greedy_step(s, tokens, s->follower_next);
    }
    const int32_t *call = ci_tp_take(r, 2 * sizeof *call);
    const int32_t *tokens =
        call && call[1] > 0 ? ci_tp_take(r, (size_t)s->n_seqs * (size_t)call[1] * sizeof *tokens)
                            : NULL;
    if (!tokens) return CI_FAIL(CINFER_ERR_COMM, "a forward call's message is truncated");
    return forward_batch(s, tokens, call[1], (cinfer_logits)call[0], NULL);
}

cinfer_status ci_session_create_follower(cinfer_model *model, int n_ctx, int n_seqs,
                                         cinfer_session **out) {
    CI_TRY(cinfer_session_create_batch(model, n_ctx, n_seqs, out));
    cinfer_session *s = *out;
    s->follower = 1;
    s->follower_next = malloc((size_t)n_seqs * sizeof(int32_t));
    if (!s->follower_next) {
        cinfer_session_free(s);
        *out = NULL;
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    }
    return CINFER_OK;
}

cinfer_status cinfer_session_forward_batch(cinfer_session *s, const int32_t *tokens, int n_tokens,
                                           cinfer_logits which, float *logits) {
    ci_error_clear();
    if (s->model->followers) return sharded_forward(s, tokens, n_tokens, which, logits);
    return forward_batch(s, tokens, n_tokens, which, logits);
}

cinfer_status cinfer_session_forward(cinfer_session *s, const int32_t *tokens, int n_tokens,
                                     cinfer_logits which, float *logits) {
    if (s->n_seqs != 1) {
        ci_error_clear();
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "cinfer_session_forward runs one sequence; this session holds %d: use "
                       "cinfer_session_forward_batch",
                       s->n_seqs);
    }
    return cinfer_session_forward_batch(s, tokens, n_tokens, which, logits);
}

/* The body of a greedy step: the forward pass of one token of each sequence, their logits left on
 * the device (one block: logit_rows >= n_seqs), and their argmax into session->sampled. */
static void forward_and_argmax(void *user, int pos0) {
    cinfer_session *s = user;
    cinfer_status status = run_forward(s, 1, pos0);
    const ci_tensor normed = ci_tensor_rows(&s->act.x_norm, 0, s->n_seqs);
    ci_tensor logits = ci_tensor_rows(&s->logits, 0, s->n_seqs);
    if (status == CINFER_OK) status = ci_model_logits(s->be, s->model, &logits, &normed);
    if (status == CINFER_OK) ci_argmax(s->be, &s->sampled, &logits);
    s->step_status = status;
}

static cinfer_status check_greedy(const cinfer_session *s, const int32_t *tokens) {
    const ci_config *c = s->model->config;
    for (int b = 0; b < s->n_seqs; b++)
        if (tokens[b] < 0 || tokens[b] >= c->vocab_size)
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "token id %d of sequence %d at position %d is outside the vocabulary "
                           "(vocab_size = %d in config.json)",
                           tokens[b], b, s->n_past, c->vocab_size);
    if (s->n_past >= s->n_ctx)
        return CI_FAIL(CINFER_ERR_CONTEXT_FULL,
                       "1 token does not fit: the context holds %d and %d are used", s->n_ctx,
                       s->n_past);
    return CINFER_OK;
}

/* One rank's greedy step (every rank of an unsharded model: the only one). */
static cinfer_status greedy_step(cinfer_session *s, const int32_t *tokens, int32_t *next) {
    CI_TRY(check_greedy(s, tokens));
    ci_backend *be = s->be;
    update_rope(s, s->n_past + 1);
    be->ops->to_device(be, s->tokens.data, tokens, (size_t)s->n_seqs * sizeof *tokens);
    /* Every argument of the step is fixed for the session's life (buffer addresses, shapes, layer
     * constants) or read on the device when it runs: the position, the tokens just copied, the
     * RoPE frequencies (update_rope). An observer needs the hidden states on the host mid-step,
     * so a step it watches is never recorded. */
    s->step_status = CINFER_OK;
    ci_backend_run_step(be, &s->decode_step, !s->observer, s->n_past, forward_and_argmax, s);
    CI_TRY(s->step_status);
    be->ops->to_host(be, next, s->sampled.data, (size_t)s->n_seqs * sizeof *next);
    s->n_past++;
    return CINFER_OK;
}

cinfer_status ci_session_greedy_step(cinfer_session *s, const int32_t *tokens, int32_t *next) {
    ci_error_clear();
    if (!s->model->followers) return greedy_step(s, tokens, next);
    CI_TRY(check_greedy(s, tokens));
    ci_tp_message m = {0};
    start_message(&m, s, CI_TP_SESSION_GREEDY);
    ci_tp_message_put(&m, tokens, (size_t)s->n_seqs * sizeof *tokens);
    cinfer_status status = ci_tp_ranks_begin(s->model->followers, &m);
    if (status == CINFER_OK)
        status = ci_tp_ranks_end(s->model->followers, greedy_step(s, tokens, next), NULL);
    ci_tp_message_free(&m);
    return status;
}
