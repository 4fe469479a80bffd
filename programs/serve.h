/* The parts of `cinfer serve` and what they share (docs/SERVING.md, "The HTTP server"):
 *
 *   serve.c        the command: options, loading, the engine thread, signals and shutdown
 *   serve_jobs.c   a request in flight (a job): submission, the engine's outputs turned into text
 *                  (detokenized, stop strings cut) on the engine thread, release
 *   serve_http.c   libmicrohttpd: routes, keys, bodies, the OpenAI JSON and the SSE stream
 *   serve_request.c, serve_stop.c, serve_metrics.c   request bodies, stop strings, /metrics
 *
 * Threads: libmicrohttpd's pool reads requests, tokenizes, submits and writes answers; the engine
 * thread alone steps the engine and appends what each step gave to its jobs. A job is shared by
 * the two through its lock and a reference count; a connection waiting for text is suspended, and
 * the engine thread resumes it when there is more. HTTP threads never run the model. */
#ifndef CINFER_SERVE_H
#define CINFER_SERVE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cinfer.h"
#include "serve_metrics.h"
#include "serve_request.h"
#include "serve_stop.h"

struct MHD_Daemon;
struct MHD_Connection;

typedef enum serve_state {
    SERVE_LOADING = 0, /* the daemon answers; the model is not loaded yet: 503 */
    SERVE_RUNNING = 1,
    SERVE_DRAINING = 2, /* SIGINT/SIGTERM: in-flight requests finish, new ones get 503 */
    SERVE_DEAD = 3      /* the engine failed: 503 for everything but /metrics */
} serve_state;

typedef struct serve_options {
    const char *model_dir;
    const char *served_name; /* --served-model-name; default: the folder's last component */
    const char *host;        /* 127.0.0.1 unless --host says otherwise */
    int port;                /* 0: any free port (printed) */
    const char *api_key;     /* --api-key or CINFER_API_KEY; NULL: no key asked */
    cinfer_load_options load;
    cinfer_engine_options engine;
    int max_queued;           /* requests waiting beyond the running ones before 503 */
    size_t max_body_bytes;    /* 413 past it */
    int http_threads;         /* libmicrohttpd's pool */
    int connection_timeout;   /* seconds a connection may sit idle (unfinished headers included) */
    int max_connections;      /* open connections at once */
    double shutdown_grace;    /* seconds in-flight requests get after SIGINT/SIGTERM */
} serve_options;

/* One generated token as the job keeps it for logprobs. */
typedef struct serve_token {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[CINFER_MAX_TOP_LOGPROBS];
    float top_logprobs[CINFER_MAX_TOP_LOGPROBS];
    size_t text_offset; /* where its text begins in the job's text (completions' text_offset) */
} serve_token;

typedef struct serve_server serve_server;

/* A generation request in flight. Fields under "lock" are written by the engine thread and read
 * by the connection's thread; the rest is fixed at submission or owned by one side. */
typedef struct serve_job {
    pthread_mutex_t lock;
    int refs; /* the registry's (until the engine's last output), the connection's, the stream's */
    serve_server *server;
    uint64_t engine_id;
    char id[48]; /* "cmpl-..." or "chatcmpl-..." */
    long long created;
    serve_kind kind;
    int stream, include_usage, logprobs, top_logprobs;
    int n_prompt;
    double submitted_at;

    /* under lock */
    struct MHD_Connection *connection; /* NULL once the client is gone */
    int suspended;                     /* the connection waits for resume_if_waiting */
    char *text;                        /* what may be sent: stop strings cut, whole UTF-8 */
    size_t n_text, cap_text;
    serve_token *tokens; /* with logprobs only */
    int n_tokens, cap_tokens;
    int n_generated;           /* tokens the answer counts (usage's completion_tokens) */
    int n_cached;              /* prompt tokens the prefix cache gave */
    int finished;              /* no more text will come */
    const char *finish_reason; /* "stop", "length", "abort"; "error" with error_message */
    char error_message[256];

    /* the engine thread's only */
    cinfer_detokenizer *detokenizer;
    serve_stop *stop;
    double first_token_at, last_token_at;
    double queued_seconds; /* from submission to admission, as the engine measured it */
    int engine_done; /* the engine gave its last output: the registry let go */

    /* the connection's thread only: how far the stream has got */
    size_t text_sent;
    int tokens_sent;
    int role_sent, final_sent;
    char *out; /* formatted bytes not yet handed to libmicrohttpd */
    size_t n_out, out_sent;
} serve_job;

struct serve_server {
    serve_options options;
    const char *model_name;
    _Atomic int state; /* serve_state */
    cinfer_model *model;
    cinfer_tokenizer *tokenizer;
    cinfer_engine *engine;
    int max_model_len, vocab_size;
    int32_t stop_tokens[1 + CINFER_MAX_EOS_TOKENS]; /* generation_config.json's and the
                                                      tokenizer's eos: they end a turn */
    int n_stop_tokens;
    /* NULL until the model is loaded (its context sizes the token-count buckets): /metrics says
     * 503 until then, and refusals while loading are not counted */
    serve_metrics *_Atomic metrics;
    struct MHD_Daemon *daemon;
    long long started; /* time(NULL) when loaded: /v1/models' created */

    pthread_t engine_thread;
    _Atomic int engine_stop;

    /* the jobs the engine still runs, by engine id (ascending: ids are handed out in order under
     * this lock) */
    pthread_mutex_t registry_lock;
    pthread_cond_t registry_changed;
    serve_job **jobs;
    int n_jobs, cap_jobs;
    int n_live_jobs; /* jobs not yet freed, the registry's or not: shutdown waits for 0 */
    _Atomic uint64_t next_seed, next_id;
};

/* ---- serve_jobs.c ---- */

/* Submits a parsed request with its prompt ids: a job with two references (the registry's and
 * the caller's) in *out. 0; else -1 with err set (400: the engine refused it, with its reason;
 * 503: the queue is full or the engine is not running; 500: out of memory). */
int serve_job_submit(serve_server *s, const serve_request *req, const int32_t *prompt,
                     int n_prompt, serve_job **out, serve_error *err);
/* Drops one reference; the last frees the job. */
void serve_job_release(serve_job *job);
/* The client went away: the engine stops the request at its next step. */
void serve_job_abandon(serve_job *job);
/* Under job->lock, by the connection's thread: suspend until the engine has more (1), or not
 * (0: something came meanwhile). */
int serve_job_wait_locked(serve_job *job);
/* The engine thread's loop (pthread start routine; arg: the server). */
void *serve_engine_loop(void *arg);
/* Aborts every job the engine runs (shutdown after the grace period). */
void serve_abort_all(serve_server *s);

/* ---- serve_http.c ---- */

/* Starts libmicrohttpd on options' host and port; the port it bound in *port. 0, else -1 with
 * the reason printed. */
int serve_http_start(serve_server *s, int *port);
/* Stops accepting new connections (open ones go on). */
void serve_http_quiesce(serve_server *s);
void serve_http_stop(serve_server *s);

#endif
