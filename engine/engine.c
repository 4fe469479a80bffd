/* The continuous-batching engine (docs/SERVING.md): requests come and go at every step; each step
 * runs one ragged forward pass over a paged KV cache.
 *
 * Each step, on the engine thread:
 *   1. the inbox: submitted requests join the waiting queue in arrival order; aborts end theirs;
 *   2. scheduling, within max_batched_tokens rows: the running sequences first, in the order they
 *      were admitted (a decode row each, or the next chunk of a prompt still being computed), then
 *      waiting requests in arrival order while fewer than max_seqs run; a request admitted from
 *      the queue first takes the longest run of its full blocks that the prefix cache holds. When
 *      the pool cannot give a running sequence a block, the most recently admitted one is
 *      preempted: its blocks are released and it goes back to the front of the queue, its tokens
 *      kept, to be computed again (vLLM's recompute preemption). No request joins in a step that
 *      preempted;
 *   3. the forward pass over every scheduled row (models/llama.c with a ci_paged_step);
 *   4. lm_head over the rows that end what their sequence knows (a decode row, or the last chunk
 *      of a prompt), a token sampled for each by the request's own sampler, finished requests
 *      leave, and blocks that became full are committed to the prefix cache.
 *
 * Blocks are shared only when full and never written after (a request's writes start past its
 * cached blocks), so sharing needs no copy-on-write. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../common/error.h"
#include "../kernels/device.h"
#include "engine.h"
#include "kv_blocks.h"
#include "session.h"
#include "tp_ranks.h"

enum {
    DEFAULT_BLOCK_SIZE = 16,
    DEFAULT_MAX_BATCHED_TOKENS = 2048,
    DEFAULT_MAX_SEQS = 256,
    LOGIT_ROWS = 16, /* lm_head runs over this many sampled rows at a time */
};
static const double DEFAULT_GPU_MEMORY_UTILIZATION = 0.90;
static const int64_t DEFAULT_CPU_KV_BYTES = (int64_t)4 << 30;

typedef struct request {
    uint64_t id;
    int32_t *tokens; /* the prompt, then what was generated: [capacity] */
    int n_prompt, n_tokens, capacity;
    int n_computed;         /* tokens whose keys and values are in its blocks */
    int *blocks;            /* block table [max_blocks] */
    uint64_t *block_hashes; /* [max_blocks]: of the committed leading blocks */
    int n_blocks, n_committed, max_blocks;
    cinfer_request_params params;
    int32_t *stop_tokens;
    cinfer_sampler *sampler;
    int n_cached_prompt; /* prompt tokens the prefix cache supplied at its first admission */
    int admitted_once;
    double submitted_at;   /* ci_now_seconds() at cinfer_engine_add_request */
    double queued_seconds; /* from submission to its first admission; -1 until then */
} request;

/* The rows of one step that belong to one request. */
typedef struct scheduled {
    request *req;
    int n_rows;
} scheduled;

struct cinfer_engine {
    cinfer_model *model;
    ci_backend *be;
    int block_size, max_batched_tokens, max_seqs, max_model_len, max_blocks_per_seq;
    int prefix_caching;
    ci_block_pool *pool;
    /* per layer [n_blocks + 1, block_size, G, D]: the last block is never handed out; the padding
     * rows of a recorded decode step write there */
    ci_tensor *k_pool, *v_pool;
    int padding_block;
    /* decode-only steps recorded once per padded batch size 1, 2, 4, ... (CUDA graphs) */
    int record_decode;
    ci_recorded_step decode_steps[16];
    int64_t kv_bytes;

    /* device buffers for one step of up to R = max_batched_tokens rows, S = max_seqs sequences */
    ci_tensor tokens, positions, slots; /* I32 [R] */
    ci_tensor seq_starts, seq_lens;     /* I32 [S + 1], [S] */
    ci_tensor block_tables;             /* I32 [S, max_blocks_per_seq] */
    ci_tensor sample_rows;              /* I32 [S]: rows whose logits are wanted */
    ci_tensor sampled_normed;           /* [S, E]: those rows of the final norm */
    ci_tensor logits;                   /* [LOGIT_ROWS, V] */
    ci_tensor argmax_ids;               /* I32 [LOGIT_ROWS] */
    ci_activations act;
    float *inv_freq;
    ci_rope_freqs rope;
    /* their host mirrors */
    int32_t *h_tokens, *h_positions, *h_slots, *h_seq_starts, *h_seq_lens, *h_block_tables;
    int32_t *h_sample_rows, *h_argmax_ids;
    float *h_logits;

    /* owned by the engine thread */
    request **running; /* [max_seqs], in the order they were admitted */
    int n_running;
    request **waiting; /* arrival order; preempted requests go back to the front */
    int n_waiting, cap_waiting;
    scheduled *batch; /* [max_seqs] */
    int n_batch;
    request **sampled_req; /* [max_seqs] */
    cinfer_request_output *outputs;
    int n_outputs, cap_outputs;

    /* shared with the submitting threads, under lock */
    pthread_mutex_t lock;
    pthread_cond_t work;
    request **inbox;
    int n_inbox, cap_inbox;
    uint64_t *aborts;
    int n_aborts, cap_aborts;
    uint64_t *draining_aborts; /* the engine thread's: last step's list, reused */
    int cap_draining_aborts;
    uint64_t *live_ids; /* requests submitted and not finished, ascending */
    int n_live, cap_live;
    uint64_t next_id;
    cinfer_engine_stats stats; /* as of the end of the last step, and requests submitted since */

    /* counters the engine thread keeps, published into stats at the end of each step */
    cinfer_engine_stats counts;

    /* Tensor parallelism (model->followers set): this engine is mirrored on every follower rank
     * under tp_id (engine/tp_ranks.h). A follower's engine only executes: it holds its rank's
     * device buffers and KV block pools (the same block ids as this engine's, blocks of its local
     * KV heads) and runs each step from the message this engine sends (step_message); the
     * scheduler, block tables, sampling and the prefix cache are this engine's alone. */
    uint32_t tp_id;
    int mirrored;
    ci_tp_message step_message; /* reused: it keeps its capacity */
    int32_t *h_prompt_logit_rows; /* [max_seqs]: rows of each scheduled sequence wanting logits */
};

/* ---- small containers -------------------------------------------------------------------------
 */

/* Makes room for one more element in a growable array; 0 when memory ran out. */
static int grow(void **items, int *cap, int n, size_t size) {
    if (n < *cap) return 1;
    const int new_cap = *cap ? 2 * *cap : 16;
    void *grown = realloc(*items, (size_t)new_cap * size);
    if (!grown) return 0;
    *items = grown;
    *cap = new_cap;
    return 1;
}

static int find_live(const cinfer_engine *e, uint64_t id) {
    int lo = 0, hi = e->n_live - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (e->live_ids[mid] == id) return mid;
        if (e->live_ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* ---- requests ---------------------------------------------------------------------------------
 */

static void request_free(request *r) {
    if (!r) return;
    free(r->tokens);
    free(r->blocks);
    free(r->block_hashes);
    free(r->stop_tokens);
    cinfer_sampler_free(r->sampler);
    free(r);
}

static int blocks_for(int n_positions, int block_size) {
    return (n_positions + block_size - 1) / block_size;
}

/* Gives r blocks for positions [0, n_positions); 0 when the pool ran out (what it got, it keeps).
 */
static int ensure_blocks(cinfer_engine *e, request *r, int n_positions) {
    const int need = blocks_for(n_positions, e->block_size);
    while (r->n_blocks < need) {
        const int block = ci_block_alloc(e->pool);
        if (block < 0) return 0;
        r->blocks[r->n_blocks++] = block;
    }
    return 1;
}

static void release_blocks(cinfer_engine *e, request *r) {
    for (int i = 0; i < r->n_blocks; i++) ci_block_release(e->pool, r->blocks[i]);
    r->n_blocks = 0;
    r->n_committed = 0;
    r->n_computed = 0;
}

/* The longest run of r's leading full blocks the prefix cache holds, taken as r's own. At least
 * one token is always left to compute: its logits give the next token. */
static void take_cached_prefix(cinfer_engine *e, request *r) {
    if (!e->prefix_caching || r->params.prompt_logits) return;
    const int max_hits = (r->n_tokens - 1) / e->block_size;
    uint64_t parent = 0;
    for (int i = 0; i < max_hits; i++) {
        uint64_t hash;
        const int block =
            ci_block_lookup(e->pool, parent, r->tokens + (size_t)i * (size_t)e->block_size, &hash);
        if (block < 0) break;
        r->blocks[r->n_blocks++] = block;
        r->block_hashes[i] = hash;
        r->n_committed = i + 1;
        parent = hash;
    }
    r->n_computed = r->n_committed * e->block_size;
}

/* Full blocks whose every position is computed join the prefix cache. */
static void commit_full_blocks(cinfer_engine *e, request *r) {
    if (!e->prefix_caching) return;
    const int n_full = r->n_computed / e->block_size;
    for (int i = r->n_committed; i < n_full; i++) {
        const uint64_t parent = i > 0 ? r->block_hashes[i - 1] : 0;
        ci_block_commit(e->pool, r->blocks[i], parent,
                        r->tokens + (size_t)i * (size_t)e->block_size, &r->block_hashes[i]);
    }
    if (n_full > r->n_committed) r->n_committed = n_full;
}

/* ---- outputs ----------------------------------------------------------------------------------
 */

static cinfer_request_output *new_output(cinfer_engine *e, const request *r) {
    if (!grow((void **)&e->outputs, &e->cap_outputs, e->n_outputs, sizeof *e->outputs)) return NULL;
    cinfer_request_output *out = &e->outputs[e->n_outputs++];
    memset(out, 0, sizeof *out);
    out->request_id = r->id;
    out->token = -1;
    out->logprob = NAN;
    out->n_prompt = r->n_prompt;
    out->n_generated = r->n_tokens - r->n_prompt;
    out->n_cached_prompt = r->n_cached_prompt;
    out->queued_seconds = r->queued_seconds;
    return out;
}

/* r leaves the engine: its blocks go back to the pool, its id is no longer live. */
static void retire(cinfer_engine *e, request *r, cinfer_finish_reason reason) {
    release_blocks(e, r);
    pthread_mutex_lock(&e->lock);
    const int at = find_live(e, r->id);
    if (at >= 0) {
        memmove(&e->live_ids[at], &e->live_ids[at + 1],
                (size_t)(e->n_live - at - 1) * sizeof *e->live_ids);
        e->n_live--;
    }
    pthread_mutex_unlock(&e->lock);
    e->counts.n_finished++;
    if (reason == CINFER_FINISH_ABORT) e->counts.n_aborted++;
    request_free(r);
}

static void remove_running(cinfer_engine *e, int i) {
    memmove(&e->running[i], &e->running[i + 1],
            (size_t)(e->n_running - i - 1) * sizeof *e->running);
    e->n_running--;
}

static void remove_waiting(cinfer_engine *e, int i) {
    memmove(&e->waiting[i], &e->waiting[i + 1],
            (size_t)(e->n_waiting - i - 1) * sizeof *e->waiting);
    e->n_waiting--;
}

/* ---- the inbox --------------------------------------------------------------------------------
 */

static void finish_with_output(cinfer_engine *e, request *r, cinfer_finish_reason reason) {
    cinfer_request_output *out = new_output(e, r);
    if (out) out->finish_reason = reason;
    retire(e, r, reason);
}

static void abort_request(cinfer_engine *e, uint64_t id) {
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i]->id == id) {
            request *r = e->running[i];
            remove_running(e, i);
            finish_with_output(e, r, CINFER_FINISH_ABORT);
            return;
        }
    for (int i = 0; i < e->n_waiting; i++)
        if (e->waiting[i]->id == id) {
            request *r = e->waiting[i];
            remove_waiting(e, i);
            finish_with_output(e, r, CINFER_FINISH_ABORT);
            return;
        }
}

static cinfer_status drain_inbox(cinfer_engine *e) {
    pthread_mutex_lock(&e->lock);
    int ok = 1, moved = 0;
    for (; moved < e->n_inbox && ok; moved++) {
        /* room for every running sequence too, so that preempting one never needs memory */
        ok = grow((void **)&e->waiting, &e->cap_waiting, e->n_waiting + e->n_running,
                  sizeof *e->waiting);
        if (!ok) break;
        e->waiting[e->n_waiting++] = e->inbox[moved];
    }
    /* what could not be moved stays in the inbox for the next step: no request is lost */
    if (moved > 0 && moved < e->n_inbox)
        memmove(e->inbox, e->inbox + moved, (size_t)(e->n_inbox - moved) * sizeof *e->inbox);
    e->n_inbox -= moved;
    /* the aborts change hands with the engine thread's spare list: no copy, no allocation */
    uint64_t *aborts = e->aborts;
    const int n_aborts = e->n_aborts, cap_aborts = e->cap_aborts;
    e->aborts = e->draining_aborts;
    e->cap_aborts = e->cap_draining_aborts;
    e->n_aborts = 0;
    pthread_mutex_unlock(&e->lock);
    e->draining_aborts = aborts;
    e->cap_draining_aborts = cap_aborts;
    for (int i = 0; i < n_aborts; i++) abort_request(e, aborts[i]);
    if (!ok) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory queueing requests");
    /* max_new_tokens = 0 asks for nothing past the prompt */
    for (int i = 0; i < e->n_waiting;) {
        request *r = e->waiting[i];
        if (r->params.max_new_tokens == 0) {
            remove_waiting(e, i);
            finish_with_output(e, r, CINFER_FINISH_LENGTH);
        } else {
            i++;
        }
    }
    return CINFER_OK;
}

/* ---- scheduling -------------------------------------------------------------------------------
 */

static void preempt(cinfer_engine *e, int running_index) {
    request *r = e->running[running_index];
    remove_running(e, running_index);
    release_blocks(e, r);
    /* back to the front of the queue (drain_inbox keeps room for every running sequence) */
    memmove(&e->waiting[1], &e->waiting[0], (size_t)e->n_waiting * sizeof *e->waiting);
    e->waiting[0] = r;
    e->n_waiting++;
    e->counts.n_preemptions++;
}

static void schedule(cinfer_engine *e) {
    int budget = e->max_batched_tokens, preempted = 0;
    e->n_batch = 0;
    for (int i = 0; i < e->n_running && budget > 0; i++) {
        request *r = e->running[i];
        const int n = r->n_tokens - r->n_computed < budget ? r->n_tokens - r->n_computed : budget;
        while (!ensure_blocks(e, r, r->n_computed + n)) {
            preempt(e, e->n_running - 1);
            preempted = 1;
            if (i >= e->n_running) break; /* r itself was the most recent */
        }
        if (i >= e->n_running) break;
        e->batch[e->n_batch++] = (scheduled){r, n};
        budget -= n;
    }
    while (!preempted && budget > 0 && e->n_waiting > 0 && e->n_running < e->max_seqs) {
        request *r = e->waiting[0];
        if (r->n_blocks == 0) take_cached_prefix(e, r);
        const int n = r->n_tokens - r->n_computed < budget ? r->n_tokens - r->n_computed : budget;
        if (!ensure_blocks(e, r, r->n_computed + n)) {
            release_blocks(e, r); /* it waits with nothing held */
            break;
        }
        if (!r->admitted_once) {
            r->n_cached_prompt = r->n_computed < r->n_prompt ? r->n_computed : r->n_prompt;
            e->counts.prompt_tokens_queried += (uint64_t)r->n_prompt;
            e->counts.prompt_tokens_hit += (uint64_t)r->n_cached_prompt;
            r->admitted_once = 1;
            r->queued_seconds = ci_now_seconds() - r->submitted_at;
        }
        remove_waiting(e, 0);
        e->running[e->n_running++] = r;
        e->batch[e->n_batch++] = (scheduled){r, n};
        budget -= n;
    }
}

/* ---- one step's inputs and forward pass -------------------------------------------------------
 */

/* A step where every sequence has one row can be recorded: padded to a power of two of
 * sequences (at most max_seqs), its shapes are those of every other such step of that size.
 * Returns the padded size, or 0 when the step runs eagerly. */
static int recorded_size(const cinfer_engine *e) {
    if (!e->record_decode) return 0;
    for (int s = 0; s < e->n_batch; s++)
        if (e->batch[s].n_rows != 1) return 0;
    int padded = 1;
    while (padded < e->n_batch) padded *= 2;
    if (padded > e->max_seqs) padded = e->max_seqs;
    return padded <= e->max_batched_tokens ? padded : 0;
}

static int log2_of(int n) {
    int log = 0;
    while ((1 << log) < n) log++;
    return log;
}

typedef struct forward_call {
    cinfer_engine *engine;
    const ci_forward_step *step;
    cinfer_status status;
} forward_call;

static void run_forward(void *user, int unused_pos0) {
    (void)unused_pos0;
    forward_call *call = user;
    call->status =
        ci_model_forward(call->engine->be, call->engine->model, call->step, &call->engine->act);
}

/* The shape of one step's host arrays (build_batch), which every rank executes. */
typedef struct batch_shape {
    int32_t R, S;      /* rows and sequences, padding included */
    int32_t padded;    /* a recorded decode step's padded size; 0: eager */
    int32_t n_sampled; /* rows whose logits are wanted */
    int32_t max_seq_len, max_seq_rows;
    int32_t n_batch; /* scheduled sequences (S less the padding) */
    int32_t unused;
} batch_shape;

/* One step as a rank executes it: rank 0's host arrays, or the same read from its message. */
typedef struct step_inputs {
    batch_shape shape;
    const int32_t *tokens, *positions, *slots; /* [R] */
    const int32_t *seq_starts;                 /* [S + 1] */
    const int32_t *seq_lens;                   /* [S] */
    const int32_t *block_tables;               /* [S, max_blocks_per_seq] */
    const int32_t *sample_rows;                /* [n_sampled] */
    const int32_t *prompt_logit_rows;          /* [n_batch] */
} step_inputs;

static step_inputs leader_inputs(const cinfer_engine *e, const batch_shape *shape) {
    return (step_inputs){*shape,           e->h_tokens,     e->h_positions,
                         e->h_slots,       e->h_seq_starts, e->h_seq_lens,
                         e->h_block_tables, e->h_sample_rows, e->h_prompt_logit_rows};
}

/* Lays the scheduled rows out on the host as a ci_paged_step's arrays (the step's one source,
 * for every rank), with the rows whose logits are wanted (their requests in e->sampled_req). */
static void build_batch(cinfer_engine *e, batch_shape *shape) {
    const int bs = e->block_size, M = e->max_blocks_per_seq;
    int row = 0, n_sampled = 0, max_seq_len = 0, max_seq_rows = 0;
    for (int s = 0; s < e->n_batch; s++) {
        request *r = e->batch[s].req;
        const int n = e->batch[s].n_rows;
        e->h_seq_starts[s] = row;
        for (int j = 0; j < n; j++, row++) {
            const int pos = r->n_computed + j;
            e->h_tokens[row] = r->tokens[pos];
            e->h_positions[row] = pos;
            e->h_slots[row] = r->blocks[pos / bs] * bs + pos % bs;
        }
        e->h_seq_lens[s] = r->n_computed + n;
        memcpy(e->h_block_tables + (size_t)s * (size_t)M, r->blocks,
               (size_t)r->n_blocks * sizeof *r->blocks);
        if (e->h_seq_lens[s] > max_seq_len) max_seq_len = e->h_seq_lens[s];
        if (n > max_seq_rows) max_seq_rows = n;
        /* rows past the prompt (a preempted sequence recomputed) have no prompt logits */
        const int prompt_rows_left = r->n_prompt - r->n_computed;
        e->h_prompt_logit_rows[s] = !r->params.prompt_logits || prompt_rows_left <= 0 ? 0
                                    : n < prompt_rows_left                           ? n
                                                                     : prompt_rows_left;
        if (r->n_computed + n == r->n_tokens) {
            e->h_sample_rows[n_sampled] = row - 1;
            e->sampled_req[n_sampled++] = r;
        }
    }
    /* a recorded step's padding: one-row sequences at position 0 of the padding block, whose
     * outputs nobody reads; the kernels size their grids for max_model_len keys, as every replay
     * of the recording must */
    const int padded = recorded_size(e);
    int S = e->n_batch;
    for (; S < padded; S++, row++) {
        e->h_seq_starts[S] = row;
        e->h_tokens[row] = 0;
        e->h_positions[row] = 0;
        e->h_slots[row] = e->padding_block * bs;
        e->h_seq_lens[S] = 1;
        e->h_block_tables[(size_t)S * (size_t)M] = e->padding_block;
    }
    if (padded) max_seq_len = e->max_model_len;
    e->h_seq_starts[S] = row;
    *shape = (batch_shape){row, S, padded, n_sampled, max_seq_len, max_seq_rows, e->n_batch, 0};
}

/* Uploads the step (laid out by rank 0), runs the model, and gathers the sampled rows of the
 * final norm. */
static cinfer_status execute_batch(cinfer_engine *e, const step_inputs *in) {
    ci_backend *be = e->be;
    const batch_shape *shape = &in->shape;
    const int bs = e->block_size, M = e->max_blocks_per_seq;
    const int R = shape->R, S = shape->S, padded = shape->padded, n_sampled = shape->n_sampled;
    be->ops->to_device(be, e->tokens.data, in->tokens, (size_t)R * sizeof(int32_t));
    be->ops->to_device(be, e->positions.data, in->positions, (size_t)R * sizeof(int32_t));
    be->ops->to_device(be, e->slots.data, in->slots, (size_t)R * sizeof(int32_t));
    be->ops->to_device(be, e->seq_starts.data, in->seq_starts, (size_t)(S + 1) * sizeof(int32_t));
    be->ops->to_device(be, e->seq_lens.data, in->seq_lens, (size_t)S * sizeof(int32_t));
    be->ops->to_device(be, e->block_tables.data, in->block_tables,
                       (size_t)S * (size_t)M * sizeof(int32_t));
    be->ops->to_device(be, e->sample_rows.data, in->sample_rows,
                       (size_t)n_sampled * sizeof(int32_t));

    const ci_paged_step paged = {
        .n_rows = R,
        .n_seqs = S,
        .block_size = bs,
        .max_blocks_per_seq = M,
        .max_seq_len = shape->max_seq_len,
        .max_seq_rows = shape->max_seq_rows,
        .positions = ci_tensor_rows(&e->positions, 0, R),
        .slots = ci_tensor_rows(&e->slots, 0, R),
        .seq_starts = ci_tensor_rows(&e->seq_starts, 0, S + 1),
        .seq_lens = ci_tensor_rows(&e->seq_lens, 0, S),
        .block_tables = ci_tensor_rows(&e->block_tables, 0, S),
        .host_seq_starts = in->seq_starts,
        .host_seq_lens = in->seq_lens,
    };
    const ci_tensor tokens = ci_tensor_rows(&e->tokens, 0, R);
    const ci_forward_step step = {
        .tokens = &tokens,
        .paged = &paged,
        .rope = &e->rope,
        .k_cache = e->k_pool,
        .v_cache = e->v_pool,
    };
    forward_call call = {e, &step, CINFER_OK};
    if (padded)
        ci_backend_run_step(be, &e->decode_steps[log2_of(padded)], 1, 0, run_forward, &call);
    else
        run_forward(&call, 0);
    CI_TRY(call.status);
    if (n_sampled > 0) {
        /* the sampled rows of the final norm, gathered: an embedding lookup in [R, E] */
        const ci_tensor normed = ci_tensor_rows(&e->act.x_norm, 0, R);
        const ci_tensor rows = ci_tensor_rows(&e->sample_rows, 0, n_sampled);
        ci_tensor gathered = ci_tensor_rows(&e->sampled_normed, 0, n_sampled);
        ci_embedding(be, &gathered, &rows, &normed);
    }
    return CINFER_OK;
}

/* lm_head over the rows of requests that asked for their prompt's logits, LOGIT_ROWS at a time,
 * to their buffers (a sequence's rows of one step are consecutive rows of the final norm). A
 * follower rank (to_requests 0) computes the same blocks (the all-gather needs every rank) and
 * keeps none. */
static cinfer_status prompt_logits_to_host(cinfer_engine *e, const step_inputs *in,
                                           int to_requests) {
    ci_backend *be = e->be;
    const size_t V = (size_t)e->model->config->vocab_size;
    for (int s = 0; s < in->shape.n_batch; s++) {
        const int n = in->prompt_logit_rows[s];
        for (int i = 0; i < n; i += LOGIT_ROWS) {
            const int rows = n - i < LOGIT_ROWS ? n - i : LOGIT_ROWS;
            const ci_tensor normed = ci_tensor_rows(&e->act.x_norm, in->seq_starts[s] + i, rows);
            ci_tensor logits = ci_tensor_rows(&e->logits, 0, rows);
            CI_TRY(ci_model_logits(be, e->model, &logits, &normed));
            if (!to_requests) continue;
            const request *r = e->batch[s].req;
            const int first_pos = r->n_computed; /* before this step's rows are counted in */
            be->ops->to_host(be, r->params.prompt_logits + (size_t)(first_pos + i) * V, logits.data,
                             (size_t)rows * V * sizeof(float));
        }
    }
    return CINFER_OK;
}

/* ---- sampling and finishing -------------------------------------------------------------------
 */

static int wants_host_logits(const request *r) {
    return r->params.sampling.temperature > 0.0f || r->params.logprobs;
}

/* Log-softmax of the row at token, and the top n alternatives, in double. */
static void fill_logprobs(const float *logits, int V, int32_t token, int n_top,
                          cinfer_request_output *out) {
    double max_logit = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > max_logit) max_logit = logits[i];
    double total = 0.0;
    for (int i = 0; i < V; i++) total += exp((double)logits[i] - max_logit);
    const double log_total = max_logit + log(total);
    out->logprob = (float)((double)logits[token] - log_total);
    /* the n_top largest by insertion into a short sorted list (ties: lower id first) */
    int32_t *ids = out->top_tokens;
    int n = 0;
    for (int i = 0; i < V && n_top > 0; i++) {
        if (isnan(logits[i])) continue;
        if (n == n_top && !(logits[i] > logits[ids[n - 1]])) continue;
        int at = n < n_top ? n++ : n - 1;
        while (at > 0 && logits[i] > logits[ids[at - 1]]) {
            ids[at] = ids[at - 1];
            at--;
        }
        ids[at] = i;
    }
    out->n_top = n;
    for (int i = 0; i < n; i++) out->top_logprobs[i] = (float)((double)logits[ids[i]] - log_total);
}

static int is_stop_token(const cinfer_engine *e, const request *r, int32_t token) {
    const ci_config *c = e->model->config;
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == token) return 1;
    for (int i = 0; i < r->params.n_stop_tokens; i++)
        if (r->stop_tokens[i] == token) return 1;
    return 0;
}

/* lm_head over the sampled rows, LOGIT_ROWS at a time; a block whose rows are all greedy without
 * logprobs takes the argmax on the device and only ids come back. */
static cinfer_status sample_tokens(cinfer_engine *e, int n_sampled) {
    ci_backend *be = e->be;
    const int V = e->model->config->vocab_size;
    for (int r0 = 0; r0 < n_sampled; r0 += LOGIT_ROWS) {
        const int rows = n_sampled - r0 < LOGIT_ROWS ? n_sampled - r0 : LOGIT_ROWS;
        int host = 0;
        for (int i = 0; i < rows; i++) host |= wants_host_logits(e->sampled_req[r0 + i]);
        const ci_tensor normed = ci_tensor_rows(&e->sampled_normed, r0, rows);
        ci_tensor logits = ci_tensor_rows(&e->logits, 0, rows);
        CI_TRY(ci_model_logits(be, e->model, &logits, &normed));
        if (host) {
            be->ops->to_host(be, e->h_logits, logits.data,
                             (size_t)rows * (size_t)V * sizeof(float));
        } else {
            ci_tensor ids = ci_tensor_rows(&e->argmax_ids, 0, rows);
            ci_argmax(be, &ids, &logits);
            be->ops->to_host(be, e->h_argmax_ids, ids.data, (size_t)rows * sizeof(int32_t));
        }
        for (int i = 0; i < rows; i++) {
            request *r = e->sampled_req[r0 + i];
            const float *row = e->h_logits + (size_t)i * (size_t)V;
            const int32_t token =
                host ? cinfer_sampler_sample(r->sampler, row) : e->h_argmax_ids[i];
            r->tokens[r->n_tokens++] = token; /* the one token not yet in the cache */
            e->counts.generated_tokens++;
            cinfer_request_output *out = new_output(e, r);
            if (!out) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for outputs");
            out->token = token;
            if (r->params.logprobs) fill_logprobs(row, V, token, r->params.top_logprobs, out);
            if (!r->params.ignore_eos && is_stop_token(e, r, token))
                out->finish_reason = CINFER_FINISH_STOP;
            else if (r->n_tokens - r->n_prompt >= r->params.max_new_tokens)
                out->finish_reason = CINFER_FINISH_LENGTH;
        }
    }
    return CINFER_OK;
}

/* ---- follower ranks ----------------------------------------------------------------------------
 * Rank 0 (this engine) schedules and lays out the step; it sends the step's shape and host arrays
 * to every follower (tp_ranks.h), whose engine executes it while rank 0 does here, with the same
 * calls in the same order: the forward pass, the prompt logits' blocks, the sampled rows' blocks
 * (their logits, which only rank 0 samples from). A rank that fails aborts the group so that
 * nobody waits for it (the group, and so the engine, is unusable after). */

static void put_step(ci_tp_message *m, const cinfer_engine *e, const step_inputs *in) {
    const batch_shape *shape = &in->shape;
    const size_t i32 = sizeof(int32_t);
    ci_tp_message_put(m, shape, sizeof *shape);
    ci_tp_message_put(m, in->tokens, (size_t)shape->R * i32);
    ci_tp_message_put(m, in->positions, (size_t)shape->R * i32);
    ci_tp_message_put(m, in->slots, (size_t)shape->R * i32);
    ci_tp_message_put(m, in->seq_starts, (size_t)(shape->S + 1) * i32);
    ci_tp_message_put(m, in->seq_lens, (size_t)shape->S * i32);
    ci_tp_message_put(m, in->block_tables, (size_t)shape->S * (size_t)e->max_blocks_per_seq * i32);
    ci_tp_message_put(m, in->sample_rows, (size_t)shape->n_sampled * i32);
    ci_tp_message_put(m, in->prompt_logit_rows, (size_t)shape->n_batch * i32);
}

/* A step message read back, its sizes checked against what this engine's buffers hold (the
 * followers' engines have rank 0's options). */
static cinfer_status take_step(const cinfer_engine *e, ci_tp_reader *r, step_inputs *in) {
    const batch_shape *shape = ci_tp_take(r, sizeof *shape);
    if (!shape) return CI_FAIL(CINFER_ERR_COMM, "an engine step's message is truncated");
    if (shape->R < 0 || shape->R > e->max_batched_tokens || shape->S < 0 ||
        shape->S > e->max_seqs || shape->n_batch < 0 || shape->n_batch > shape->S ||
        shape->n_sampled < 0 || shape->n_sampled > e->max_seqs)
        return CI_FAIL(CINFER_ERR_COMM,
                       "an engine step of %d rows, %d sequences (%d scheduled), %d sampled: more "
                       "than this rank's engine holds (%d rows, %d sequences)",
                       shape->R, shape->S, shape->n_batch, shape->n_sampled, e->max_batched_tokens,
                       e->max_seqs);
    const size_t i32 = sizeof(int32_t);
    in->shape = *shape;
    in->tokens = ci_tp_take(r, (size_t)shape->R * i32);
    in->positions = ci_tp_take(r, (size_t)shape->R * i32);
    in->slots = ci_tp_take(r, (size_t)shape->R * i32);
    in->seq_starts = ci_tp_take(r, (size_t)(shape->S + 1) * i32);
    in->seq_lens = ci_tp_take(r, (size_t)shape->S * i32);
    in->block_tables = ci_tp_take(r, (size_t)shape->S * (size_t)e->max_blocks_per_seq * i32);
    in->sample_rows = ci_tp_take(r, (size_t)shape->n_sampled * i32);
    in->prompt_logit_rows = ci_tp_take(r, (size_t)shape->n_batch * i32);
    if (r->failed) return CI_FAIL(CINFER_ERR_COMM, "an engine step's message is truncated");
    return CINFER_OK;
}

/* lm_head over the sampled rows, in sample_tokens' blocks, on a follower: its part of the
 * all-gather, the logits kept by nobody. */
static cinfer_status follower_sampled_logits(cinfer_engine *e, int n_sampled) {
    for (int r0 = 0; r0 < n_sampled; r0 += LOGIT_ROWS) {
        const int rows = n_sampled - r0 < LOGIT_ROWS ? n_sampled - r0 : LOGIT_ROWS;
        const ci_tensor normed = ci_tensor_rows(&e->sampled_normed, r0, rows);
        ci_tensor logits = ci_tensor_rows(&e->logits, 0, rows);
        CI_TRY(ci_model_logits(e->be, e->model, &logits, &normed));
    }
    return CINFER_OK;
}

cinfer_status ci_engine_follow_step(cinfer_engine *e, ci_tp_reader *r) {
    step_inputs in;
    CI_TRY(take_step(e, r, &in));
    CI_TRY(execute_batch(e, &in));
    CI_TRY(prompt_logits_to_host(e, &in, 0));
    return follower_sampled_logits(e, in.shape.n_sampled);
}

int64_t ci_engine_kv_bytes(const cinfer_engine *e) { return e->kv_bytes; }

/* Rank 0's part of a step (every rank's without tensor parallelism): the forward pass and the
 * logits, then the requests' bookkeeping and sampling. */
static cinfer_status run_step(cinfer_engine *e, const step_inputs *in) {
    CI_TRY(execute_batch(e, in));
    CI_TRY(prompt_logits_to_host(e, in, 1));
    for (int s = 0; s < e->n_batch; s++) {
        request *r = e->batch[s].req;
        /* a decode row extends what was generated; every other row computes a prompt (or
         * recomputes a preempted sequence) */
        const int decode = e->batch[s].n_rows == 1 && r->n_computed >= r->n_prompt;
        if (!decode) e->counts.prompt_tokens_computed += (uint64_t)e->batch[s].n_rows;
        r->n_computed += e->batch[s].n_rows; /* the rows are in the cache now */
    }
    return sample_tokens(e, in->shape.n_sampled);
}

static cinfer_status run_step_on_ranks(cinfer_engine *e, const batch_shape *shape) {
    const step_inputs in = leader_inputs(e, shape);
    ci_tp_ranks *followers = e->model->followers;
    if (!followers) return run_step(e, &in);
    ci_tp_message_start(&e->step_message, CI_TP_ENGINE_STEP, e->tp_id);
    put_step(&e->step_message, e, &in);
    CI_TRY(ci_tp_ranks_begin(followers, &e->step_message));
    return ci_tp_ranks_end(followers, run_step(e, &in), NULL);
}

/* Requests whose last output finished them leave the running set. */
static void retire_finished(cinfer_engine *e, int first_output) {
    for (int o = first_output; o < e->n_outputs; o++) {
        if (e->outputs[o].finish_reason == CINFER_FINISH_NONE) continue;
        for (int i = 0; i < e->n_running; i++)
            if (e->running[i]->id == e->outputs[o].request_id) {
                request *r = e->running[i];
                remove_running(e, i);
                retire(e, r, e->outputs[o].finish_reason);
                break;
            }
    }
}

static void publish_stats(cinfer_engine *e) {
    e->counts.n_running = e->n_running;
    e->counts.n_blocks_used = ci_block_pool_n_used(e->pool);
    e->counts.n_blocks_cached = ci_block_pool_n_cached(e->pool);
    pthread_mutex_lock(&e->lock);
    e->stats = e->counts;
    e->stats.n_waiting = e->n_waiting + e->n_inbox;
    pthread_mutex_unlock(&e->lock);
}

cinfer_status cinfer_engine_step(cinfer_engine *e, const cinfer_request_output **outputs,
                                 int *n_outputs) {
    ci_error_clear();
    e->n_outputs = 0;
    *outputs = NULL;
    *n_outputs = 0;
    CI_TRY(drain_inbox(e));
    schedule(e);
    const int used = ci_block_pool_n_used(e->pool); /* the step's blocks, before any is freed */
    if (used > e->counts.n_blocks_used_peak) e->counts.n_blocks_used_peak = used;
    cinfer_status status = CINFER_OK;
    if (e->n_batch > 0) {
        const int first_token_output = e->n_outputs;
        batch_shape shape;
        build_batch(e, &shape);
        status = run_step_on_ranks(e, &shape);
        for (int s = 0; s < e->n_batch; s++) commit_full_blocks(e, e->batch[s].req);
        retire_finished(e, first_token_output);
        e->counts.n_steps++;
    }
    publish_stats(e);
    *outputs = e->outputs;
    *n_outputs = e->n_outputs;
    return status;
}

/* ---- creation ---------------------------------------------------------------------------------
 */

static ci_tensor tensor_of(ci_dtype dtype, int n_dims, int64_t d0, int64_t d1, int64_t d2,
                           int64_t d3) {
    return (ci_tensor){NULL, dtype, n_dims, {d0, d1, d2, d3}};
}

/* Every device buffer of a step, as (tensor, shape): one list serves allocation, freeing and the
 * memory estimate. */
enum { N_STEP_BUFFERS = 18 };
typedef struct step_buffer {
    ci_tensor *tensor;
    ci_tensor shape;
} step_buffer;

static void step_buffers(cinfer_engine *e, const ci_config *c, int R, int S, int M,
                         step_buffer list[N_STEP_BUFFERS]) {
    const int64_t E = c->hidden_size, I = c->intermediate_size, H = c->n_heads;
    const int64_t G = c->n_kv_heads, D = c->head_dim, V = c->vocab_size;
    const step_buffer buffers[N_STEP_BUFFERS] = {
        {&e->tokens, tensor_of(CI_I32, 1, R, 0, 0, 0)},
        {&e->positions, tensor_of(CI_I32, 1, R, 0, 0, 0)},
        {&e->slots, tensor_of(CI_I32, 1, R, 0, 0, 0)},
        {&e->seq_starts, tensor_of(CI_I32, 1, S + 1, 0, 0, 0)},
        {&e->seq_lens, tensor_of(CI_I32, 1, S, 0, 0, 0)},
        {&e->block_tables, tensor_of(CI_I32, 2, S, M, 0, 0)},
        {&e->sample_rows, tensor_of(CI_I32, 1, S, 0, 0, 0)},
        {&e->sampled_normed, tensor_of(CI_F32, 2, S, E, 0, 0)},
        {&e->logits, tensor_of(CI_F32, 2, LOGIT_ROWS, V, 0, 0)},
        {&e->argmax_ids, tensor_of(CI_I32, 1, LOGIT_ROWS, 0, 0, 0)},
        {&e->act.x, tensor_of(CI_F32, 2, R, E, 0, 0)},
        {&e->act.x_norm, tensor_of(CI_F32, 2, R, E, 0, 0)},
        {&e->act.q, tensor_of(CI_F32, 3, R, H, D, 0)},
        {&e->act.k_new, tensor_of(CI_F32, 3, R, G, D, 0)},
        {&e->act.v_new, tensor_of(CI_F32, 3, R, G, D, 0)},
        {&e->act.attn, tensor_of(CI_F32, 3, R, H, D, 0)},
        {&e->act.gate, tensor_of(CI_F32, 2, R, I, 0, 0)},
        {&e->act.up, tensor_of(CI_F32, 2, R, I, 0, 0)},
    };
    memcpy(list, buffers, sizeof buffers);
}

/* The options with every default taken and every limit checked. */
static cinfer_status resolve_options(const cinfer_model *model, const cinfer_engine_options *in,
                                     cinfer_engine_options *out) {
    const ci_config *c = model->config;
    *out = in ? *in : (cinfer_engine_options){0};
    if (out->block_size == 0) out->block_size = DEFAULT_BLOCK_SIZE;
    if (out->max_batched_tokens == 0) out->max_batched_tokens = DEFAULT_MAX_BATCHED_TOKENS;
    if (out->max_seqs == 0) out->max_seqs = DEFAULT_MAX_SEQS;
    if (out->max_model_len == 0) out->max_model_len = c->max_position_embeddings;
    if (out->gpu_memory_utilization == 0.0)
        out->gpu_memory_utilization = DEFAULT_GPU_MEMORY_UTILIZATION;
    if (out->block_size < 1 || out->block_size > 1024)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "block_size = %d: expected 1 to 1024 positions",
                       out->block_size);
    if (out->max_seqs < 1 || out->max_seqs > CINFER_MAX_SEQS)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "max_seqs = %d: expected 1 to %d", out->max_seqs,
                       CINFER_MAX_SEQS);
    if (out->max_batched_tokens < 1 || out->max_batched_tokens > 65536)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "max_batched_tokens = %d: expected 1 to 65536",
                       out->max_batched_tokens);
    /* dynamic RoPE changes its frequencies past max_position_embeddings, with each sequence's
     * length: within it, one set of frequencies serves every sequence of a step */
    if (out->max_model_len < 1 ||
        (c->rope.type == CI_ROPE_DYNAMIC && out->max_model_len > c->max_position_embeddings))
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "max_model_len = %d: expected 1 to max_position_embeddings = %d "
                       "(config.json)%s",
                       out->max_model_len, c->max_position_embeddings,
                       c->rope.type == CI_ROPE_DYNAMIC
                           ? ", which dynamic RoPE scaling cannot pass in a batch"
                           : "");
    if (!(out->gpu_memory_utilization > 0.0 && out->gpu_memory_utilization <= 1.0))
        return CI_FAIL(CINFER_ERR_ARGUMENT, "gpu_memory_utilization = %g: expected (0, 1]",
                       out->gpu_memory_utilization);
    if (out->n_kv_blocks < 0 || out->kv_cache_bytes < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "n_kv_blocks and kv_cache_bytes must be >= 0");
    return CINFER_OK;
}

static int64_t step_buffer_bytes(cinfer_engine *shape_only, const ci_config *c,
                                 const cinfer_engine_options *o) {
    step_buffer list[N_STEP_BUFFERS];
    const int M = blocks_for(o->max_model_len, o->block_size);
    step_buffers(shape_only, c, o->max_batched_tokens, o->max_seqs, M, list);
    int64_t total = 0;
    for (int i = 0; i < N_STEP_BUFFERS; i++) total += (int64_t)ci_tensor_nbytes(&list[i].shape);
    return total;
}

/* How many blocks the pool gets (docs/SERVING.md: sizing the pool). */
static cinfer_status pool_blocks(const cinfer_model *model, const cinfer_engine_options *o,
                                 int64_t workspace_bytes, int64_t *n_blocks) {
    const ci_config *c = model->config;
    const int64_t block_bytes = model->info.kv_bytes_per_token * o->block_size;
    int64_t bytes;
    if (o->n_kv_blocks > 0) {
        *n_blocks = o->n_kv_blocks;
        return CINFER_OK;
    } else if (o->kv_cache_bytes > 0) {
        bytes = o->kv_cache_bytes;
    } else if (model->options.backend == CINFER_BACKEND_CUDA) {
        size_t free_bytes = 0, total_bytes = 0;
        CI_TRY(ci_cuda_memory(model->options.device, &free_bytes, &total_bytes));
        cinfer_engine shape_only = {0};
        const int64_t in_use = (int64_t)total_bytes - (int64_t)free_bytes;
        bytes = (int64_t)(o->gpu_memory_utilization * (double)total_bytes) - in_use -
                step_buffer_bytes(&shape_only, c, o) - workspace_bytes - block_bytes /* padding */;
        if (bytes < block_bytes)
            return CI_FAIL(CINFER_ERR_MEMORY,
                           "CUDA device %d: no room for a KV cache: %.2f GiB of %.2f GiB are in "
                           "use, gpu_memory_utilization = %.2f, the engine's buffers take "
                           "%.2f GiB",
                           model->options.device, (double)in_use / (1 << 30),
                           (double)total_bytes / (1 << 30), o->gpu_memory_utilization,
                           (double)(step_buffer_bytes(&shape_only, c, o) + workspace_bytes) /
                               (1 << 30));
    } else {
        const int64_t all_full =
            (int64_t)o->max_seqs * blocks_for(o->max_model_len, o->block_size) * block_bytes;
        bytes = all_full < DEFAULT_CPU_KV_BYTES ? all_full : DEFAULT_CPU_KV_BYTES;
    }
    *n_blocks = bytes / block_bytes;
    if (*n_blocks < 1)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "a KV cache of %lld bytes holds no block (one block of %d positions takes "
                       "%lld bytes)",
                       (long long)bytes, o->block_size, (long long)block_bytes);
    if (*n_blocks > 1 << 30) *n_blocks = 1 << 30;
    return CINFER_OK;
}

cinfer_status cinfer_engine_kv_capacity(const cinfer_model *model,
                                        const cinfer_engine_options *options, int64_t *kv_bytes,
                                        int64_t *kv_tokens) {
    ci_error_clear();
    cinfer_engine_options o;
    CI_TRY(resolve_options(model, options, &o));
    int64_t n_blocks = 0, workspace = 0;
    ci_backend *be = NULL;
    if (ci_backend_create_for(&model->options, &be) == CINFER_OK && be->ops->paged_workspace_bytes)
        workspace = (int64_t)be->ops->paged_workspace_bytes(be, model->config, o.max_batched_tokens,
                                                            o.max_model_len, o.max_seqs);
    ci_error_clear();
    ci_backend_free(be);
    CI_TRY(pool_blocks(model, &o, workspace, &n_blocks));
    *kv_tokens = n_blocks * o.block_size;
    *kv_bytes = *kv_tokens * model->info.kv_bytes_per_token;
    return CINFER_OK;
}

static cinfer_status allocate(cinfer_engine *e, int64_t n_blocks) {
    const ci_config *c = e->model->config;
    ci_backend *be = e->be;
    const int R = e->max_batched_tokens, S = e->max_seqs, M = e->max_blocks_per_seq;
    step_buffer list[N_STEP_BUFFERS];
    step_buffers(e, c, R, S, M, list);
    for (int i = 0; i < N_STEP_BUFFERS; i++) {
        *list[i].tensor = list[i].shape;
        list[i].tensor->data = be->ops->alloc(be, ci_tensor_nbytes(&list[i].shape));
        if (!list[i].tensor->data)
            return CI_FAIL(CINFER_ERR_MEMORY, "out of memory: %zu bytes for the engine's buffers",
                           ci_tensor_nbytes(&list[i].shape));
    }
    e->k_pool = calloc((size_t)c->n_layers, sizeof *e->k_pool);
    e->v_pool = calloc((size_t)c->n_layers, sizeof *e->v_pool);
    if (!e->k_pool || !e->v_pool) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    const ci_dtype kv_dtype = ci_kv_cache_dtype(&e->model->options);
    for (int l = 0; l < c->n_layers; l++) {
        ci_tensor *pools[2] = {&e->k_pool[l], &e->v_pool[l]};
        for (int i = 0; i < 2; i++) {
            *pools[i] =
                tensor_of(kv_dtype, 4, n_blocks + 1, e->block_size, c->n_kv_heads, c->head_dim);
            pools[i]->data = be->ops->alloc(be, ci_tensor_nbytes(pools[i]));
            if (!pools[i]->data)
                return CI_FAIL(CINFER_ERR_MEMORY,
                               "out of memory: %zu bytes for layer %d's KV blocks (%lld blocks)",
                               ci_tensor_nbytes(pools[i]), l, (long long)n_blocks);
            e->kv_bytes += (int64_t)ci_tensor_nbytes(pools[i]);
        }
    }
    const int D = c->head_dim, V = c->vocab_size;
    e->inv_freq = be->ops->alloc(be, (size_t)D / 2 * sizeof(float));
    float *host_inv_freq = malloc((size_t)D / 2 * sizeof(float));
    e->h_tokens = malloc((size_t)R * sizeof(int32_t));
    e->h_positions = malloc((size_t)R * sizeof(int32_t));
    e->h_slots = malloc((size_t)R * sizeof(int32_t));
    e->h_seq_starts = malloc((size_t)(S + 1) * sizeof(int32_t));
    e->h_seq_lens = malloc((size_t)S * sizeof(int32_t));
    e->h_block_tables = calloc((size_t)S * (size_t)M, sizeof(int32_t));
    e->h_sample_rows = malloc((size_t)S * sizeof(int32_t));
    e->h_prompt_logit_rows = calloc((size_t)S, sizeof(int32_t));
    e->h_argmax_ids = malloc(LOGIT_ROWS * sizeof(int32_t));
    e->h_logits = malloc((size_t)LOGIT_ROWS * (size_t)V * sizeof(float));
    e->running = calloc((size_t)S, sizeof *e->running);
    e->batch = calloc((size_t)S, sizeof *e->batch);
    e->sampled_req = calloc((size_t)S, sizeof *e->sampled_req);
    if (!e->inv_freq || !host_inv_freq || !e->h_tokens || !e->h_positions || !e->h_slots ||
        !e->h_seq_starts || !e->h_seq_lens || !e->h_block_tables || !e->h_sample_rows ||
        !e->h_prompt_logit_rows ||
        !e->h_argmax_ids || !e->h_logits || !e->running || !e->batch || !e->sampled_req) {
        free(host_inv_freq);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for the engine's buffers");
    }
    /* one set of frequencies for every step: only dynamic scaling's depend on the length, and
     * not within max_position_embeddings, which max_model_len then stays within */
    ci_rope_frequencies(c, e->max_model_len, host_inv_freq, &e->rope.attention_scaling);
    be->ops->to_device(be, e->inv_freq, host_inv_freq, (size_t)D / 2 * sizeof(float));
    free(host_inv_freq);
    e->rope.inv_freq = e->inv_freq;
    size_t workspace = be->ops->workspace_bytes(be, c, e->max_model_len, 1);
    const size_t paged = be->ops->paged_workspace_bytes(be, c, R, e->max_model_len, S);
    if (paged > workspace) workspace = paged;
    CI_TRY(ci_backend_reserve(be, workspace));
    if (n_blocks > 1 << 30) return CI_FAIL(CINFER_ERR_ARGUMENT, "too many KV blocks");
    e->padding_block = (int)n_blocks;
    return ci_block_pool_create((int)n_blocks, e->block_size, &e->pool);
}

void cinfer_engine_free(cinfer_engine *e) {
    if (!e) return;
    if (e->mirrored) ci_tp_ranks_free_object(e->model->followers, CI_TP_ENGINE_FREE, e->tp_id);
    ci_tp_message_free(&e->step_message);
    free(e->h_prompt_logit_rows);
    for (int i = 0; i < e->n_running; i++) request_free(e->running[i]);
    for (int i = 0; i < e->n_waiting; i++) request_free(e->waiting[i]);
    for (int i = 0; i < e->n_inbox; i++) request_free(e->inbox[i]);
    if (e->be) {
        const ci_config *c = e->model->config;
        step_buffer list[N_STEP_BUFFERS];
        step_buffers(e, c, e->max_batched_tokens, e->max_seqs, e->max_blocks_per_seq, list);
        for (int i = 0; i < N_STEP_BUFFERS; i++)
            if (list[i].tensor->data) e->be->ops->free(e->be, list[i].tensor->data);
        for (int l = 0; l < c->n_layers; l++) {
            if (e->k_pool && e->k_pool[l].data) e->be->ops->free(e->be, e->k_pool[l].data);
            if (e->v_pool && e->v_pool[l].data) e->be->ops->free(e->be, e->v_pool[l].data);
        }
        if (e->inv_freq) e->be->ops->free(e->be, e->inv_freq);
        ci_backend_free(e->be);
    }
    ci_block_pool_free(e->pool);
    free(e->k_pool);
    free(e->v_pool);
    free(e->h_tokens);
    free(e->h_positions);
    free(e->h_slots);
    free(e->h_seq_starts);
    free(e->h_seq_lens);
    free(e->h_block_tables);
    free(e->h_sample_rows);
    free(e->h_argmax_ids);
    free(e->h_logits);
    free(e->running);
    free(e->waiting);
    free(e->batch);
    free(e->sampled_req);
    free(e->outputs);
    free(e->inbox);
    free(e->aborts);
    free(e->draining_aborts);
    free(e->live_ids);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->work);
    free(e);
}

/* The engines of ranks 1 .. tp-1: the options this one resolved, with its number of blocks (the
 * block ids are this engine's), each block sized for the rank's own KV heads. */
static cinfer_status create_on_followers(cinfer_engine *e, const cinfer_engine_options *o,
                                         int64_t n_blocks) {
    ci_tp_ranks *followers = e->model->followers;
    cinfer_engine_options follower = *o;
    follower.n_kv_blocks = (int)n_blocks;
    follower.kv_cache_bytes = 0;
    e->tp_id = ci_tp_ranks_new_id(followers);
    e->mirrored = 1; /* freed on the followers too, whichever of them made one */
    ci_tp_message m = {0};
    ci_tp_message_start(&m, CI_TP_ENGINE_CREATE, e->tp_id);
    ci_tp_message_put(&m, &follower, sizeof follower);
    int64_t follower_kv_bytes = 0;
    const cinfer_status status = ci_tp_ranks_call(followers, &m, &follower_kv_bytes);
    ci_tp_message_free(&m);
    e->kv_bytes += follower_kv_bytes;
    return status;
}

cinfer_status cinfer_engine_create(cinfer_model *model, const cinfer_engine_options *options,
                                   cinfer_engine **out) {
    *out = NULL;
    ci_error_clear();
    cinfer_engine_options o;
    CI_TRY(resolve_options(model, options, &o));
    cinfer_engine *e = calloc(1, sizeof *e);
    CI_CHECK_ALLOC(e, sizeof *e);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->work, NULL);
    e->model = model;
    e->block_size = o.block_size;
    e->max_batched_tokens = o.max_batched_tokens;
    e->max_seqs = o.max_seqs;
    e->max_model_len = o.max_model_len;
    e->max_blocks_per_seq = blocks_for(o.max_model_len, o.block_size);
    e->prefix_caching = !o.disable_prefix_caching;
    e->next_id = 1;
    _Static_assert(sizeof e->decode_steps / sizeof e->decode_steps[0] > 10,
                   "a recording per power of two up to CINFER_MAX_SEQS = 512");
    cinfer_status status = ci_backend_create_for(&model->options, &e->be);
    if (status == CINFER_OK && !e->be->ops->paged_attention)
        status = CI_FAIL(CINFER_ERR_UNSUPPORTED,
                         "the %s backend does not run paged attention yet (the engine needs it)",
                         e->be->ops->name);
    if (status == CINFER_OK)
        e->record_decode = !o.disable_cuda_graphs && e->be->ops->capture_begin != NULL;
    int64_t n_blocks = 0;
    if (status == CINFER_OK)
        status = pool_blocks(
            model, &o,
            (int64_t)e->be->ops->paged_workspace_bytes(e->be, model->config, o.max_batched_tokens,
                                                       o.max_model_len, o.max_seqs),
            &n_blocks);
    if (status == CINFER_OK) status = allocate(e, n_blocks);
    if (status == CINFER_OK && model->followers) status = create_on_followers(e, &o, n_blocks);
    if (status != CINFER_OK) {
        char message[1024];
        snprintf(message, sizeof message, "%s", cinfer_last_error());
        cinfer_engine_free(e);
        return CI_FAIL(status, "%s", message);
    }
    e->counts.block_size = e->block_size;
    e->counts.n_blocks = ci_block_pool_n_blocks(e->pool);
    e->counts.kv_capacity_tokens = (int64_t)e->counts.n_blocks * e->block_size;
    e->counts.kv_bytes = e->kv_bytes;
    e->stats = e->counts;
    *out = e;
    return CINFER_OK;
}

void ci_engine_pad_decode_steps(cinfer_engine *e, int pad) { e->record_decode = pad; }

/* ---- the calls any thread may make ------------------------------------------------------------
 */

static cinfer_status check_request(const cinfer_engine *e, const int32_t *prompt, int n_prompt,
                                   const cinfer_request_params *p) {
    const ci_config *c = e->model->config;
    if (!p) return CI_FAIL(CINFER_ERR_ARGUMENT, "request parameters are NULL");
    if (n_prompt <= 0 || !prompt)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "the prompt is empty (n_prompt = %d)", n_prompt);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size)
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "token id %d at position %d is outside the vocabulary (vocab_size = "
                           "%d in config.json)",
                           prompt[i], i, c->vocab_size);
    if (p->max_new_tokens < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "max_new_tokens must be >= 0, got %d",
                       p->max_new_tokens);
    if (p->n_stop_tokens < 0 || (p->n_stop_tokens > 0 && !p->stop_tokens))
        return CI_FAIL(CINFER_ERR_ARGUMENT, "stop_tokens is NULL but n_stop_tokens is %d",
                       p->n_stop_tokens);
    if (p->top_logprobs < 0 || p->top_logprobs > CINFER_MAX_TOP_LOGPROBS)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "top_logprobs = %d: expected 0 to %d", p->top_logprobs,
                       CINFER_MAX_TOP_LOGPROBS);
    const int64_t total = (int64_t)n_prompt + p->max_new_tokens;
    if (total > e->max_model_len)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "the prompt (%d tokens) plus max_new_tokens (%d) is %lld tokens, past "
                       "max_model_len = %d",
                       n_prompt, p->max_new_tokens, (long long)total, e->max_model_len);
    const int64_t capacity = (int64_t)ci_block_pool_n_blocks(e->pool) * e->block_size;
    if (blocks_for((int)total, e->block_size) > ci_block_pool_n_blocks(e->pool))
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "the prompt (%d tokens) plus max_new_tokens (%d) is %lld tokens, more than "
                       "the KV cache holds (%lld tokens in %d blocks of %d)",
                       n_prompt, p->max_new_tokens, (long long)total, (long long)capacity,
                       ci_block_pool_n_blocks(e->pool), e->block_size);
    return CINFER_OK;
}

cinfer_status cinfer_engine_add_request(cinfer_engine *e, const int32_t *prompt, int n_prompt,
                                        const cinfer_request_params *params, uint64_t *id) {
    ci_error_clear();
    CI_TRY(check_request(e, prompt, n_prompt, params));
    request *r = calloc(1, sizeof *r);
    CI_CHECK_ALLOC(r, sizeof *r);
    r->params = *params;
    r->submitted_at = ci_now_seconds();
    r->queued_seconds = -1.0;
    r->n_prompt = r->n_tokens = n_prompt;
    r->capacity = n_prompt + params->max_new_tokens;
    r->max_blocks = blocks_for(r->capacity, e->block_size);
    r->tokens = malloc((size_t)r->capacity * sizeof *r->tokens);
    r->blocks = malloc((size_t)r->max_blocks * sizeof *r->blocks);
    r->block_hashes = malloc((size_t)r->max_blocks * sizeof *r->block_hashes);
    r->stop_tokens = malloc((size_t)(params->n_stop_tokens + 1) * sizeof *r->stop_tokens);
    if (!r->tokens || !r->blocks || !r->block_hashes || !r->stop_tokens) {
        const int capacity = r->capacity;
        request_free(r);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for a request of %d tokens", capacity);
    }
    memcpy(r->tokens, prompt, (size_t)n_prompt * sizeof *prompt);
    if (params->n_stop_tokens > 0)
        memcpy(r->stop_tokens, params->stop_tokens,
               (size_t)params->n_stop_tokens * sizeof *r->stop_tokens);
    r->params.stop_tokens = r->stop_tokens;
    cinfer_status status =
        cinfer_sampler_create(&params->sampling, e->model->config->vocab_size, &r->sampler);
    if (status != CINFER_OK) {
        request_free(r);
        return status;
    }
    pthread_mutex_lock(&e->lock);
    int ok = grow((void **)&e->inbox, &e->cap_inbox, e->n_inbox, sizeof *e->inbox) &&
             grow((void **)&e->live_ids, &e->cap_live, e->n_live, sizeof *e->live_ids);
    /* read under the lock: once it is released the engine thread may finish r (an abort from
     * another thread) and free it */
    const uint64_t new_id = e->next_id;
    if (ok) {
        r->id = e->next_id++;
        e->inbox[e->n_inbox++] = r;
        e->live_ids[e->n_live++] = r->id; /* ids ascend: the list stays sorted */
        e->stats.n_waiting++;
        pthread_cond_broadcast(&e->work);
    }
    pthread_mutex_unlock(&e->lock);
    if (!ok) {
        request_free(r);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory queueing a request");
    }
    if (id) *id = new_id;
    return CINFER_OK;
}

int cinfer_engine_abort(cinfer_engine *e, uint64_t id) {
    pthread_mutex_lock(&e->lock);
    int known = find_live(e, id) >= 0;
    if (known) known = grow((void **)&e->aborts, &e->cap_aborts, e->n_aborts, sizeof *e->aborts);
    if (known) {
        e->aborts[e->n_aborts++] = id;
        pthread_cond_broadcast(&e->work);
    }
    pthread_mutex_unlock(&e->lock);
    return known;
}

/* A request submitted and not finished, or an abort to carry out. Under e->lock. */
static int work_pending(const cinfer_engine *e) { return e->n_live > 0 || e->n_aborts > 0; }

int cinfer_engine_has_work(cinfer_engine *e) {
    pthread_mutex_lock(&e->lock);
    const int work = work_pending(e);
    pthread_mutex_unlock(&e->lock);
    return work;
}

int cinfer_engine_wait(cinfer_engine *e, double timeout_seconds) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    const double whole = floor(timeout_seconds);
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((timeout_seconds - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->lock);
    while (!work_pending(e))
        if (pthread_cond_timedwait(&e->work, &e->lock, &deadline) != 0) break;
    const int work = work_pending(e);
    pthread_mutex_unlock(&e->lock);
    return work;
}

void cinfer_engine_get_stats(cinfer_engine *e, cinfer_engine_stats *out) {
    pthread_mutex_lock(&e->lock);
    *out = e->stats;
    pthread_mutex_unlock(&e->lock);
}
