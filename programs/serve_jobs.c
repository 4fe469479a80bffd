/* Requests in flight for `cinfer serve` (programs/serve.h): submission, the engine thread that
 * turns each step's outputs into text, and the jobs' release.
 *
 * Text is made on the engine thread, not the connection's: a stop string must end the request
 * at the step that completed it (the engine is told at once, and no token past it is ever
 * computed for nothing), and that needs the text. Detokenizing and matching one token costs
 * microseconds against a step's milliseconds; formatting JSON is left to the HTTP threads. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* POLLRDHUP: a peer's close seen without reading its data */
#endif
#include <microhttpd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "../common/clock.h"
#include "serve.h"

/* ---- the registry: jobs by engine id --------------------------------------------------------
 */

/* The index of id in s->jobs, or -1. Under registry_lock. */
static int registry_find(const serve_server *s, uint64_t id) {
    int lo = 0, hi = s->n_jobs - 1;
    while (lo <= hi) {
        const int mid = lo + (hi - lo) / 2;
        if (s->jobs[mid]->engine_id == id) return mid;
        if (s->jobs[mid]->engine_id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static int grow(void **items, int *cap, int need, size_t item_size) {
    if (need <= *cap) return 1;
    int new_cap = *cap ? *cap * 2 : 16;
    while (new_cap < need) new_cap *= 2;
    void *grown = realloc(*items, (size_t)new_cap * item_size);
    if (!grown) return 0;
    *items = grown;
    *cap = new_cap;
    return 1;
}

/* ---- submission --------------------------------------------------------------------------- */

static void job_free(serve_job *job) {
    pthread_mutex_destroy(&job->lock);
    cinfer_detokenizer_free(job->detokenizer);
    serve_stop_free(job->stop);
    free(job->text);
    free(job->tokens);
    free(job->out);
    serve_server *s = job->server;
    free(job);
    pthread_mutex_lock(&s->registry_lock);
    s->n_live_jobs--;
    pthread_cond_broadcast(&s->registry_changed);
    pthread_mutex_unlock(&s->registry_lock);
}

void serve_job_release(serve_job *job) {
    if (!job) return;
    pthread_mutex_lock(&job->lock);
    const int refs = --job->refs;
    pthread_mutex_unlock(&job->lock);
    if (refs == 0) job_free(job);
}

/* A seed for a request that gave none: different for every request, as OpenAI's are. */
static uint64_t fresh_seed(serve_server *s) {
    uint64_t z = atomic_fetch_add(&s->next_seed, 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; /* splitmix64's finalizer */
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int serve_job_submit(serve_server *s, const serve_request *req, const int32_t *prompt, int n_prompt,
                     serve_job **out, serve_error *err) {
    *out = NULL;
    serve_job *job = calloc(1, sizeof *job);
    if (!job) {
        serve_error_set(err, 500, NULL, NULL, "out of memory for a request");
        return -1;
    }
    pthread_mutex_init(&job->lock, NULL);
    job->server = s;
    job->refs = 2;
    job->kind = req->kind;
    job->stream = req->stream;
    job->include_usage = req->include_usage;
    job->logprobs = req->logprobs;
    job->top_logprobs = req->top_logprobs;
    job->n_prompt = n_prompt;
    job->created = (long long)time(NULL);
    job->submitted_at = ci_now_seconds();
    snprintf(job->id, sizeof job->id, "%s-%016llx%08llx",
             req->kind == SERVE_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)fresh_seed(s),
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    char reason[256];
    if (cinfer_detokenizer_create(s->tokenizer, 1, &job->detokenizer) != CINFER_OK ||
        serve_stop_create((const char *const *)req->stop, NULL, req->n_stop, &job->stop, reason,
                          sizeof reason) != 0) {
        /* the parser already kept stop strings within the matcher's limits: only memory is left */
        serve_error_set(err, 500, NULL, NULL, "out of memory for a request");
        pthread_mutex_lock(&s->registry_lock);
        s->n_live_jobs++; /* job_free counts it out */
        pthread_mutex_unlock(&s->registry_lock);
        job_free(job);
        return -1;
    }

    cinfer_request_params params = {
        .max_new_tokens = req->max_tokens,
        .sampling = req->sampling,
        .ignore_eos = req->ignore_eos,
        .stop_tokens = s->stop_tokens,
        .n_stop_tokens = s->n_stop_tokens,
        .logprobs = req->logprobs,
        .top_logprobs = req->top_logprobs,
    };
    if (!req->has_seed) params.sampling.seed = fresh_seed(s);

    /* Registered under the lock that covers the submission: the engine thread may step as soon
     * as the request is in, and must find its job when the first output comes. */
    pthread_mutex_lock(&s->registry_lock);
    int refused = 0;
    const serve_state state = (serve_state)atomic_load(&s->state);
    const int in_flight = s->n_jobs;
    if (state != SERVE_RUNNING) {
        serve_error_set(err, 503, NULL, NULL, "%s",
                        state == SERVE_LOADING    ? "the model is still loading"
                        : state == SERVE_DRAINING ? "the server is shutting down"
                                                  : "the engine has stopped after an error");
        refused = 1;
    } else if (in_flight >= s->options.engine.max_seqs + s->options.max_queued) {
        serve_error_set(err, 503, NULL, NULL,
                        "the server is busy: %d requests in flight, %d running and %d queued at "
                        "most (--max-queued); retry later",
                        in_flight, s->options.engine.max_seqs, s->options.max_queued);
        refused = 1;
    } else if (!grow((void **)&s->jobs, &s->cap_jobs, s->n_jobs + 1, sizeof *s->jobs)) {
        serve_error_set(err, 500, NULL, NULL, "out of memory for a request");
        refused = 1;
    } else if (cinfer_engine_add_request(s->engine, prompt, n_prompt, &params, &job->engine_id) !=
               CINFER_OK) {
        serve_error_set(err, 400, req->max_tokens > 0 ? "max_tokens" : NULL, NULL, "%s",
                        cinfer_last_error());
        refused = 1;
    } else {
        s->jobs[s->n_jobs++] = job; /* ids ascend: the list stays sorted */
    }
    s->n_live_jobs++;
    pthread_mutex_unlock(&s->registry_lock);
    if (refused) {
        job_free(job);
        return -1;
    }
    *out = job;
    return 0;
}

void serve_job_abandon(serve_job *job) {
    pthread_mutex_lock(&job->lock);
    job->connection = NULL;
    job->suspended = 0;
    const int running = !job->finished;
    pthread_mutex_unlock(&job->lock);
    if (running) cinfer_engine_abort(job->server->engine, job->engine_id);
}

int serve_job_wait_locked(serve_job *job) {
    if (!job->connection) return 0;
    job->suspended = 1;
    MHD_suspend_connection(job->connection);
    return 1;
}

/* Under job->lock: the connection to resume so that it goes on with what came, or NULL when it
 * is not waiting. The caller resumes it after unlocking: libmicrohttpd takes locks of its own in
 * MHD_resume_connection, and the engine thread never holds a job's lock while in it. The
 * connection cannot go away in between: a suspended connection is not processed, so its request
 * cannot end before it is resumed. */
static struct MHD_Connection *take_waiting(serve_job *job) {
    if (!job->suspended || !job->connection) return NULL;
    job->suspended = 0;
    return job->connection;
}

static void resume(struct MHD_Connection *connection) {
    if (connection) MHD_resume_connection(connection);
}

void serve_abort_all(serve_server *s) {
    pthread_mutex_lock(&s->registry_lock);
    for (int i = 0; i < s->n_jobs; i++) cinfer_engine_abort(s->engine, s->jobs[i]->engine_id);
    pthread_mutex_unlock(&s->registry_lock);
}

/* ---- the engine thread -------------------------------------------------------------------- */

/* Appends text to the job's (under its lock); 0 when out of memory. */
static int append_text(serve_job *job, const char *text, size_t n) {
    if (n == 0) return 1;
    if (job->n_text + n + 1 > job->cap_text) {
        size_t cap = job->cap_text ? job->cap_text * 2 : 256;
        while (cap < job->n_text + n + 1) cap *= 2;
        char *grown = realloc(job->text, cap);
        if (!grown) return 0;
        job->text = grown;
        job->cap_text = cap;
    }
    memcpy(job->text + job->n_text, text, n);
    job->n_text += n;
    job->text[job->n_text] = '\0';
    return 1;
}

static int is_stop_token(const serve_server *s, int32_t token) {
    for (int i = 0; i < s->n_stop_tokens; i++)
        if (s->stop_tokens[i] == token) return 1;
    return 0;
}

/* Ends the job's text (under its lock): what the detokenizer and the stop matcher held back. */
static void finish_text(serve_job *job, const char *reason) {
    const char *text;
    size_t n;
    cinfer_detokenizer_finish(job->detokenizer, &text, &n);
    const char *sendable;
    size_t n_sendable;
    int matched = serve_stop_feed(job->stop, text, n, &sendable, &n_sendable);
    if (matched >= 0) append_text(job, sendable, n_sendable);
    if (matched != 1) {
        matched = serve_stop_finish(job->stop, &sendable, &n_sendable);
        append_text(job, sendable, n_sendable);
    }
    job->finished = 1;
    job->finish_reason = matched == 1 ? "stop" : reason;
}

static void fail_job(serve_job *job, const char *message) {
    if (job->finished) return;
    job->finished = 1;
    job->finish_reason = "error";
    snprintf(job->error_message, sizeof job->error_message, "%s", message);
}

/* One output of a step for its job (under the job's lock). Returns 1 when a stop string ended
 * the text: the engine is to abort the request. */
static int take_output(serve_server *s, serve_job *job, const cinfer_request_output *out) {
    job->n_cached = out->n_cached_prompt;
    if (out->queued_seconds >= 0) job->queued_seconds = out->queued_seconds;
    if (job->finished) return 0; /* a stop string ended it; the engine's abort is on its way */
    const double now = ci_now_seconds();
    int stopped = 0;
    if (out->token >= 0) {
        if (job->n_generated == 0) {
            job->first_token_at = now;
        } else {
            serve_metrics_inter_token(s->metrics, now - job->last_token_at);
        }
        job->last_token_at = now;
        job->n_generated++;
        if (job->logprobs &&
            grow((void **)&job->tokens, &job->cap_tokens, job->n_tokens + 1, sizeof *job->tokens)) {
            serve_token *t = &job->tokens[job->n_tokens++];
            t->id = out->token;
            t->logprob = out->logprob;
            t->n_top = out->n_top;
            memcpy(t->top_ids, out->top_tokens, sizeof t->top_ids);
            memcpy(t->top_logprobs, out->top_logprobs, sizeof t->top_logprobs);
            t->text_offset = job->n_text;
        }
        /* the token that ends a turn is not text (run.c leaves it out the same way) */
        const int ends_turn =
            out->finish_reason == CINFER_FINISH_STOP && is_stop_token(s, out->token);
        if (!ends_turn) {
            const char *piece, *sendable;
            size_t n_piece, n_sendable;
            if (cinfer_detokenize(job->detokenizer, out->token, &piece, &n_piece) != CINFER_OK) {
                fail_job(job, cinfer_last_error());
                return 1;
            }
            const int matched = serve_stop_feed(job->stop, piece, n_piece, &sendable, &n_sendable);
            if (matched < 0 || !append_text(job, sendable, n_sendable)) {
                fail_job(job, "out of memory for the answer's text");
                return 1;
            }
            if (matched == 1) {
                finish_text(job, "stop");
                stopped = 1;
            }
        }
    }
    if (!job->finished && out->finish_reason != CINFER_FINISH_NONE)
        finish_text(job, out->finish_reason == CINFER_FINISH_STOP     ? "stop"
                         : out->finish_reason == CINFER_FINISH_LENGTH ? "length"
                                                                      : "abort");
    return stopped;
}

static void record_finished(serve_server *s, serve_job *job) {
    const double now = ci_now_seconds();
    serve_metrics_request_finished(
        s->metrics, job->finish_reason, job->n_prompt, job->n_generated,
        job->queued_seconds >= 0 ? job->queued_seconds : 0.0,
        job->n_generated ? job->first_token_at - job->submitted_at : -1.0, now - job->submitted_at);
}

/* The engine failed: every job ends with its message, and the server answers 503 from now on. */
static void fail_all(serve_server *s, const char *message) {
    pthread_mutex_lock(&s->registry_lock);
    atomic_store(&s->state, SERVE_DEAD);
    serve_job **jobs = s->jobs;
    const int n_jobs = s->n_jobs;
    s->jobs = NULL;
    s->n_jobs = s->cap_jobs = 0;
    pthread_cond_broadcast(&s->registry_changed);
    pthread_mutex_unlock(&s->registry_lock);
    /* outside the registry's lock: the last release of a job takes it */
    for (int i = 0; i < n_jobs; i++) {
        serve_job *job = jobs[i];
        pthread_mutex_lock(&job->lock);
        const int was_finished = job->finished;
        fail_job(job, message);
        struct MHD_Connection *waiting = take_waiting(job);
        pthread_mutex_unlock(&job->lock);
        if (!was_finished) record_finished(s, job);
        resume(waiting);
        serve_job_release(job); /* the registry's reference */
    }
    free(jobs);
}

/* Whether the peer of a suspended connection has closed it. libmicrohttpd neither reads nor
 * times out a suspended connection, so a client that leaves while its buffered answer is computed
 * would go unnoticed until the answer is ready; its socket is looked at here instead, without
 * reading anything (a request pipelined behind it stays where it is). */
static int client_gone(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return 0;
    struct pollfd peer = {.fd = info->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&peer, 1, 0) <= 0) return 0;
    if (peer.revents & (POLLRDHUP | POLLHUP | POLLERR)) return 1;
    char byte;
    return (peer.revents & POLLIN) && recv(peer.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Aborts the buffered requests whose clients have gone (streams find out at their next write).
 * The connection of a suspended job stays valid: only this thread resumes it. */
static void abort_abandoned(serve_server *s) {
    pthread_mutex_lock(&s->registry_lock);
    for (int i = 0; i < s->n_jobs; i++) {
        serve_job *job = s->jobs[i];
        if (job->stream) continue;
        pthread_mutex_lock(&job->lock);
        const int gone =
            !job->finished && job->suspended && job->connection && client_gone(job->connection);
        pthread_mutex_unlock(&job->lock);
        if (gone) cinfer_engine_abort(s->engine, job->engine_id);
    }
    pthread_mutex_unlock(&s->registry_lock);
}

void *serve_engine_loop(void *arg) {
    serve_server *s = arg;
    double watched_at = 0.0;
    while (!atomic_load(&s->engine_stop)) {
        if (!cinfer_engine_wait(s->engine, 0.1)) continue;
        const double now = ci_now_seconds();
        if (now - watched_at >= 0.05) { /* a few syscalls per buffered request, 20 times a second */
            abort_abandoned(s);
            watched_at = now;
        }
        const cinfer_request_output *outputs;
        int n_outputs;
        if (cinfer_engine_step(s->engine, &outputs, &n_outputs) != CINFER_OK) {
            char message[256];
            snprintf(message, sizeof message, "the engine failed: %s", cinfer_last_error());
            fprintf(stderr, "cinfer: error: %s\n", message);
            fail_all(s, message);
            break;
        }
        for (int i = 0; i < n_outputs; i++) {
            const cinfer_request_output *out = &outputs[i];
            pthread_mutex_lock(&s->registry_lock);
            const int at = registry_find(s, out->request_id);
            serve_job *job = at >= 0 ? s->jobs[at] : NULL;
            const int last = out->finish_reason != CINFER_FINISH_NONE;
            if (job && last) {
                memmove(&s->jobs[at], &s->jobs[at + 1],
                        (size_t)(s->n_jobs - at - 1) * sizeof *s->jobs);
                s->n_jobs--;
                pthread_cond_broadcast(&s->registry_changed);
            }
            pthread_mutex_unlock(&s->registry_lock);
            if (!job) continue; /* cannot happen: every request is registered as it is added */

            pthread_mutex_lock(&job->lock);
            const int was_finished = job->finished;
            const int stop_now = take_output(s, job, out);
            const int now_finished = job->finished && !was_finished;
            /* a buffered answer waits for the end; a stream takes every piece */
            struct MHD_Connection *waiting =
                job->stream || job->finished ? take_waiting(job) : NULL;
            pthread_mutex_unlock(&job->lock);
            /* counted before the client is woken: a client that reads /metrics right after its
             * answer finds its request there */
            if (now_finished) record_finished(s, job);
            resume(waiting);
            if (stop_now) cinfer_engine_abort(s->engine, job->engine_id);
            if (last) serve_job_release(job); /* the registry's reference */
        }
    }
    return NULL;
}
