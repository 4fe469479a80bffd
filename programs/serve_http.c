/* The HTTP side of `cinfer serve` (programs/serve.h) on libmicrohttpd: its thread pool reads
 * requests with epoll, a connection waiting for tokens is suspended (no thread blocks on it), and
 * the engine thread resumes it when text comes. The answers take the shapes OpenAI's API and vLLM
 * give them; docs/SERVING.md lists the routes.
 *
 * Per request, libmicrohttpd calls `handle` first with the headers (route, key and declared
 * length are checked then), then with each piece of the body, then once with none: the request
 * is parsed and answered, or submitted. A buffered answer suspends the connection until the job
 * has finished; a stream is a response whose reader formats server-sent events as text comes. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "serve.h"

/* ---- routes ----------------------------------------------------------------------------------
 */

typedef enum route_kind {
    ROUTE_COMPLETIONS,
    ROUTE_CHAT,
    ROUTE_MODELS,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_VERSION
} route_kind;

typedef struct route {
    const char *path;
    const char *method;
    route_kind kind;
    int needs_key; /* as vLLM: the API and the tokenizer; /health and /metrics stay open to
                      probes and scrapers */
} route;

static const route routes[] = {
    {"/v1/completions", "POST", ROUTE_COMPLETIONS, 1},
    {"/v1/chat/completions", "POST", ROUTE_CHAT, 1},
    {"/v1/models", "GET", ROUTE_MODELS, 1},
    {"/health", "GET", ROUTE_HEALTH, 0},
    {"/metrics", "GET", ROUTE_METRICS, 0},
    {"/tokenize", "POST", ROUTE_TOKENIZE, 1},
    {"/detokenize", "POST", ROUTE_DETOKENIZE, 1},
    {"/version", "GET", ROUTE_VERSION, 0},
};

/* What libmicrohttpd keeps for one request between calls (its con_cls). */
typedef struct request_context {
    const route *route;
    char *body;
    size_t n_body, cap_body;
    int too_large; /* the body passed the limit: the rest is read and dropped, then 413 */
    serve_job *job;
} request_context;

/* ---- answers ---------------------------------------------------------------------------------
 */

/* Queues text (malloc'd, taken; NULL: out of memory, 500) with a status and content type. */
static enum MHD_Result send_text(struct MHD_Connection *c, int status, char *text,
                                 const char *content_type, const char *retry_after) {
    if (!text) {
        static char oom[] = "{\"error\": {\"message\": \"out of memory\", \"type\": "
                            "\"server_error\", \"param\": null, \"code\": null}}";
        text = NULL;
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "application/json");
        const enum MHD_Result queued = MHD_queue_response(c, 500, r);
        MHD_destroy_response(r);
        return queued;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", content_type);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    const enum MHD_Result queued = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return queued;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, cJSON *json) {
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    return send_text(c, status, text, "application/json", NULL);
}

static enum MHD_Result send_error(serve_server *s, struct MHD_Connection *c,
                                  const serve_error *given) {
    serve_error copy = *given, *err = &copy;
    /* the server's own trouble (busy, loading, failed) is not the request's fault: OpenAI's
     * type for it */
    if (err->status >= 500 && strcmp(err->type, "invalid_request_error") == 0)
        err->type = "server_error";
    serve_metrics *metrics = s->metrics;
    if (metrics) serve_metrics_request_refused(metrics, err->status);
    /* 503 says when to come back: the queue moves within seconds */
    return send_text(c, err->status, serve_error_json(err), "application/json",
                     err->status == 503 ? "1" : NULL);
}

/* ---- JSON pieces -----------------------------------------------------------------------------
 */

/* cJSON's Add* return NULL when out of memory; every piece is checked through this. */
typedef struct json_build {
    int failed;
} json_build;

static cJSON *checked(json_build *b, cJSON *item) {
    if (!item) b->failed = 1;
    return item;
}

/* Text as a JSON string: valid UTF-8, its NUL bytes as U+FFFD (cJSON strings end at a NUL). */
static cJSON *json_string_n(json_build *b, const char *text, size_t n) {
    char *copy = serve_utf8_lossy(text, n);
    cJSON *item = copy ? cJSON_CreateString(copy) : NULL;
    free(copy);
    return checked(b, item);
}

static void add(json_build *b, cJSON *object, const char *name, cJSON *item) {
    if (!object || !item || !cJSON_AddItemToObject(object, name, item)) {
        cJSON_Delete(item);
        b->failed = 1;
    }
}

static void append(json_build *b, cJSON *array, cJSON *item) {
    if (!array || !item || !cJSON_AddItemToArray(array, item)) {
        cJSON_Delete(item);
        b->failed = 1;
    }
}

/* A token alone as valid UTF-8 (a piece of a character becomes U+FFFD, as vLLM shows it), and its
 * raw bytes (chat logprobs' "bytes"). */
static char *token_text(const serve_server *s, int32_t id, char **raw, size_t *n_raw) {
    char *bytes = NULL;
    size_t n = 0;
    if (cinfer_tokenizer_token_bytes(s->tokenizer, id, &bytes, &n) != CINFER_OK) {
        bytes = calloc(1, 1);
        n = 0;
    }
    if (!bytes) return NULL;
    char *text = serve_utf8_lossy(bytes, n);
    if (raw) {
        *raw = bytes;
        *n_raw = n;
    } else {
        free(bytes);
    }
    return text;
}

static cJSON *head(json_build *b, const serve_server *s, const serve_job *job, const char *object) {
    cJSON *o = checked(b, cJSON_CreateObject());
    add(b, o, "id", checked(b, cJSON_CreateString(job->id)));
    add(b, o, "object", checked(b, cJSON_CreateString(object)));
    add(b, o, "created", checked(b, cJSON_CreateNumber((double)job->created)));
    add(b, o, "model", checked(b, cJSON_CreateString(s->model_name)));
    return o;
}

static cJSON *usage(json_build *b, const serve_job *job) {
    cJSON *u = checked(b, cJSON_CreateObject());
    add(b, u, "prompt_tokens", checked(b, cJSON_CreateNumber(job->n_prompt)));
    add(b, u, "completion_tokens", checked(b, cJSON_CreateNumber(job->n_generated)));
    add(b, u, "total_tokens", checked(b, cJSON_CreateNumber(job->n_prompt + job->n_generated)));
    cJSON *details = checked(b, cJSON_CreateObject());
    add(b, details, "cached_tokens", checked(b, cJSON_CreateNumber(job->n_cached)));
    add(b, u, "prompt_tokens_details", details);
    return u;
}

/* One alternative of chat's logprobs: {"token", "logprob", "bytes"}. */
static cJSON *chat_token(json_build *b, const serve_server *s, int32_t id, float logprob) {
    char *raw = NULL;
    size_t n_raw = 0;
    char *text = token_text(s, id, &raw, &n_raw);
    cJSON *t = checked(b, cJSON_CreateObject());
    add(b, t, "token", text ? checked(b, cJSON_CreateString(text)) : checked(b, NULL));
    add(b, t, "logprob", checked(b, cJSON_CreateNumber(logprob)));
    cJSON *bytes = checked(b, cJSON_CreateArray());
    for (size_t i = 0; raw && i < n_raw; i++)
        append(b, bytes, checked(b, cJSON_CreateNumber((unsigned char)raw[i])));
    add(b, t, "bytes", bytes);
    free(text);
    free(raw);
    return t;
}

/* logprobs of tokens [from, to): chat's {"content": [...]} or completions' parallel lists. */
static cJSON *logprobs(json_build *b, const serve_server *s, const serve_job *job, int from,
                       int to) {
    if (!job->logprobs) return checked(b, cJSON_CreateNull());
    cJSON *lp = checked(b, cJSON_CreateObject());
    if (job->kind == SERVE_CHAT) {
        cJSON *content = checked(b, cJSON_CreateArray());
        for (int i = from; i < to; i++) {
            const serve_token *t = &job->tokens[i];
            cJSON *entry = chat_token(b, s, t->id, t->logprob);
            cJSON *top = checked(b, cJSON_CreateArray());
            for (int k = 0; k < t->n_top; k++)
                append(b, top, chat_token(b, s, t->top_ids[k], t->top_logprobs[k]));
            add(b, entry, "top_logprobs", top);
            append(b, content, entry);
        }
        add(b, lp, "content", content);
        return lp;
    }
    cJSON *tokens = checked(b, cJSON_CreateArray()), *values = checked(b, cJSON_CreateArray());
    cJSON *tops = checked(b, cJSON_CreateArray()), *offsets = checked(b, cJSON_CreateArray());
    for (int i = from; i < to; i++) {
        const serve_token *t = &job->tokens[i];
        char *text = token_text(s, t->id, NULL, NULL);
        append(b, tokens, text ? checked(b, cJSON_CreateString(text)) : checked(b, NULL));
        free(text);
        append(b, values, checked(b, cJSON_CreateNumber(t->logprob)));
        append(b, offsets, checked(b, cJSON_CreateNumber((double)t->text_offset)));
        cJSON *top = checked(b, cJSON_CreateObject());
        for (int k = 0; k < t->n_top; k++) {
            char *alt = token_text(s, t->top_ids[k], NULL, NULL);
            if (alt && !cJSON_GetObjectItemCaseSensitive(top, alt))
                add(b, top, alt, checked(b, cJSON_CreateNumber(t->top_logprobs[k])));
            else if (!alt)
                b->failed = 1;
            free(alt);
        }
        append(b, tops, top);
    }
    add(b, lp, "tokens", tokens);
    add(b, lp, "token_logprobs", values);
    add(b, lp, "top_logprobs", tops);
    add(b, lp, "text_offset", offsets);
    return lp;
}

/* One choice: its text (chat: as a message or a delta), logprobs and finish_reason (NULL: null). */
static cJSON *choice(json_build *b, const serve_server *s, const serve_job *job, const char *text,
                     size_t n_text, int from, int to, const char *finish_reason, int delta,
                     int with_role) {
    cJSON *c = checked(b, cJSON_CreateObject());
    add(b, c, "index", checked(b, cJSON_CreateNumber(0)));
    if (job->kind == SERVE_CHAT) {
        cJSON *message = checked(b, cJSON_CreateObject());
        if (with_role) add(b, message, "role", checked(b, cJSON_CreateString("assistant")));
        if (!delta || text) add(b, message, "content", json_string_n(b, text ? text : "", n_text));
        add(b, c, delta ? "delta" : "message", message);
    } else {
        add(b, c, "text", json_string_n(b, text ? text : "", n_text));
    }
    add(b, c, "logprobs",
        from < to ? logprobs(b, s, job, from, to) : checked(b, cJSON_CreateNull()));
    add(b, c, "finish_reason",
        finish_reason ? checked(b, cJSON_CreateString(finish_reason))
                      : checked(b, cJSON_CreateNull()));
    return c;
}

/* The whole answer of a finished job (under its lock): a JSON text, or NULL when out of memory. */
static char *answer_json(const serve_server *s, const serve_job *job) {
    json_build b = {0};
    cJSON *o = head(&b, s, job, job->kind == SERVE_CHAT ? "chat.completion" : "text_completion");
    cJSON *choices = checked(&b, cJSON_CreateArray());
    cJSON *c =
        choice(&b, s, job, job->text, job->n_text, 0, job->n_tokens, job->finish_reason, 0, 1);
    if (job->logprobs && job->n_tokens == 0) add(&b, c, "logprobs", logprobs(&b, s, job, 0, 0));
    append(&b, choices, c);
    add(&b, o, "choices", choices);
    add(&b, o, "usage", usage(&b, job));
    char *text = b.failed ? NULL : cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* ---- the stream ------------------------------------------------------------------------------
 */

/* Appends "data: <json>\n\n" to the job's pending bytes; 0 when out of memory. */
static int add_event(serve_job *job, const char *json) {
    const size_t n = strlen(json), need = job->n_out + n + 8;
    char *grown = realloc(job->out, need);
    if (!grown) return 0;
    job->out = grown;
    memcpy(job->out + job->n_out, "data: ", 6);
    memcpy(job->out + job->n_out + 6, json, n);
    memcpy(job->out + job->n_out + 6 + n, "\n\n", 2);
    job->n_out += n + 8;
    return 1;
}

static int add_event_json(serve_job *job, cJSON *json, json_build *b) {
    char *text = b->failed || !json ? NULL : cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    const int ok = text && add_event(job, text);
    free(text);
    return ok;
}

/* The events for what came since the last call (under the job's lock). 0 when out of memory. */
static int format_events(const serve_server *s, serve_job *job) {
    const char *object = job->kind == SERVE_CHAT ? "chat.completion.chunk" : "text_completion";
    if (job->kind == SERVE_CHAT && !job->role_sent) { /* OpenAI's first chunk: the role alone */
        json_build b = {0};
        cJSON *o = head(&b, s, job, object);
        cJSON *choices = checked(&b, cJSON_CreateArray());
        append(&b, choices, choice(&b, s, job, "", 0, 0, 0, NULL, 1, 1));
        add(&b, o, "choices", choices);
        if (!add_event_json(job, o, &b)) return 0;
        job->role_sent = 1;
    }
    const int new_text = job->n_text > job->text_sent,
              new_tokens = job->n_tokens > job->tokens_sent;
    if (new_text || new_tokens) {
        json_build b = {0};
        cJSON *o = head(&b, s, job, object);
        cJSON *choices = checked(&b, cJSON_CreateArray());
        append(&b, choices,
               choice(&b, s, job, job->text + job->text_sent, job->n_text - job->text_sent,
                      job->tokens_sent, job->n_tokens, NULL, 1, 0));
        add(&b, o, "choices", choices);
        if (!add_event_json(job, o, &b)) return 0;
        job->text_sent = job->n_text;
        job->tokens_sent = job->n_tokens;
    }
    if (!job->finished || job->final_sent) return 1;
    if (strcmp(job->finish_reason, "error") == 0) {
        serve_error err;
        serve_error_set(&err, 500, NULL, NULL, "%s", job->error_message);
        err.type = "server_error";
        char *text = serve_error_json(&err);
        const int ok = text && add_event(job, text);
        free(text);
        if (!ok) return 0;
    } else {
        json_build b = {0};
        cJSON *o = head(&b, s, job, object);
        cJSON *choices = checked(&b, cJSON_CreateArray());
        append(&b, choices,
               choice(&b, s, job, job->kind == SERVE_CHAT ? NULL : "", 0, 0, 0, job->finish_reason,
                      1, 0));
        add(&b, o, "choices", choices);
        if (!add_event_json(job, o, &b)) return 0;
        if (job->include_usage) { /* OpenAI's last chunk: no choices, the usage */
            json_build u = {0};
            cJSON *last = head(&u, s, job, object);
            add(&u, last, "choices", checked(&u, cJSON_CreateArray()));
            add(&u, last, "usage", usage(&u, job));
            if (!add_event_json(job, last, &u)) return 0;
        }
    }
    if (!add_event(job, "[DONE]")) return 0;
    job->final_sent = 1;
    return 1;
}

/* libmicrohttpd's reader of a stream: pending bytes, else new events, else suspend. */
static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    serve_job *job = cls;
    for (;;) {
        if (job->out_sent < job->n_out) {
            size_t n = job->n_out - job->out_sent;
            if (n > max) n = max;
            memcpy(buf, job->out + job->out_sent, n);
            job->out_sent += n;
            if (job->out_sent == job->n_out) job->out_sent = job->n_out = 0;
            return (ssize_t)n;
        }
        if (job->final_sent) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&job->lock);
        const int pending = job->n_text > job->text_sent || job->n_tokens > job->tokens_sent ||
                            job->finished || (job->kind == SERVE_CHAT && !job->role_sent);
        if (pending) {
            const int ok = format_events(job->server, job);
            pthread_mutex_unlock(&job->lock);
            if (!ok) return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        const int waiting = serve_job_wait_locked(job);
        pthread_mutex_unlock(&job->lock);
        if (!waiting) return MHD_CONTENT_READER_END_WITH_ERROR; /* the client is gone */
        return 0;
    }
}

static void free_stream(void *cls) { serve_job_release(cls); }

/* ---- the generation routes -------------------------------------------------------------------
 */

/* The prompt's ids: text through the tokenizer, a conversation through the chat template, ids
 * checked against the vocabulary. 0, else -1 with err set. */
static int prompt_ids(const serve_server *s, const serve_request *req, int32_t **ids, int *n,
                      serve_error *err) {
    *ids = NULL;
    *n = 0;
    const char *param = req->messages ? "messages" : "prompt";
    if (req->prompt_tokens && req->kind != SERVE_DETOKENIZE) {
        for (int i = 0; i < req->n_prompt_tokens; i++)
            if (req->prompt_tokens[i] >= s->vocab_size) {
                serve_error_set(err, 400, "prompt", NULL,
                                "prompt token %d (at %d) is outside the vocabulary of %d tokens",
                                req->prompt_tokens[i], i, s->vocab_size);
                return -1;
            }
        *ids = malloc((size_t)req->n_prompt_tokens * sizeof **ids);
        if (!*ids) {
            serve_error_set(err, 500, NULL, NULL, "out of memory for the prompt");
            return -1;
        }
        memcpy(*ids, req->prompt_tokens, (size_t)req->n_prompt_tokens * sizeof **ids);
        *n = req->n_prompt_tokens;
        return 0;
    }
    char *chat = NULL;
    int add_special = req->kind == SERVE_TOKENIZE ? req->add_special_tokens : 1;
    if (req->messages) {
        /* OpenAI's "developer" turn is what templates call the system turn */
        cinfer_chat_message *turns = malloc((size_t)req->n_messages * sizeof *turns);
        if (!turns) {
            serve_error_set(err, 500, NULL, NULL, "out of memory for the messages");
            return -1;
        }
        for (int i = 0; i < req->n_messages; i++) {
            turns[i] = req->messages[i];
            if (strcmp(turns[i].role, "developer") == 0) turns[i].role = "system";
        }
        const int generation_prompt = req->kind == SERVE_TOKENIZE ? req->add_generation_prompt : 1;
        const cinfer_status status =
            cinfer_chat_apply(s->tokenizer, turns, req->n_messages, generation_prompt, &chat);
        free(turns);
        if (status != CINFER_OK) {
            serve_error_set(
                err, 400, "messages", status == CINFER_ERR_UNSUPPORTED ? "unsupported_value" : NULL,
                "the chat template cannot format these messages: %s", cinfer_last_error());
            return -1;
        }
        if (req->kind != SERVE_TOKENIZE) add_special = 0; /* the template writes its own BOS */
    }
    const char *text = chat ? chat : req->prompt;
    const cinfer_status status =
        cinfer_tokenize(s->tokenizer, text, strlen(text), add_special, ids, n);
    free(chat);
    if (status != CINFER_OK) {
        serve_error_set(err, 400, param, NULL, "%s", cinfer_last_error());
        return -1;
    }
    return 0;
}

static enum MHD_Result finish_buffered(serve_server *s, struct MHD_Connection *c, serve_job *job);

static enum MHD_Result generate(serve_server *s, struct MHD_Connection *c, request_context *ctx,
                                serve_kind kind) {
    serve_request req;
    serve_error err;
    if (serve_request_parse(kind, ctx->body, ctx->n_body, &req, &err) != 0)
        return send_error(s, c, &err);
    int32_t *ids = NULL;
    int n_ids = 0, refused = 0;
    const char *param = kind == SERVE_CHAT ? "messages" : "prompt";
    if (req.model && strcmp(req.model, s->model_name) != 0) {
        serve_error_set(&err, 404, "model", "model_not_found",
                        "the model '%s' does not exist: this server serves '%s'", req.model,
                        s->model_name);
        refused = 1;
    } else if (req.prompt && req.prompt[0] == '\0') {
        /* "" is refused whatever the tokenizer adds: answered from a lone BOS on one model and
         * refused (no tokens) on another, the same request would mean two things */
        serve_error_set(&err, 400, "prompt", NULL, "the prompt is empty (no text)");
        refused = 1;
    } else if (prompt_ids(s, &req, &ids, &n_ids, &err) != 0) {
        refused = 1;
    } else if (n_ids == 0) {
        serve_error_set(&err, 400, param, NULL, "the prompt is empty (no tokens)");
        refused = 1;
    } else if (n_ids >= s->max_model_len) {
        serve_error_set(&err, 400, param, NULL,
                        "this model's maximum context length is %d tokens; the prompt has %d, "
                        "which leaves no room for an answer",
                        s->max_model_len, n_ids);
        refused = 1;
    } else if (req.max_tokens < 0) { /* chat without max_tokens: the rest of the context */
        req.max_tokens = s->max_model_len - n_ids;
    } else if ((long long)n_ids + req.max_tokens > s->max_model_len) {
        serve_error_set(&err, 400, kind == SERVE_CHAT ? "max_completion_tokens" : "max_tokens",
                        NULL,
                        "this model's maximum context length is %d tokens; the prompt has %d and "
                        "max_tokens asks for %d more (at most %d)",
                        s->max_model_len, n_ids, req.max_tokens, s->max_model_len - n_ids);
        refused = 1;
    }
    serve_job *job = NULL;
    if (!refused && serve_job_submit(s, &req, ids, n_ids, &job, &err) != 0) refused = 1;
    free(ids);
    serve_request_free(&req);
    if (refused) return send_error(s, c, &err);
    ctx->job = job; /* the caller's reference: the connection's */

    pthread_mutex_lock(&job->lock);
    job->connection = c;
    if (job->stream) {
        job->refs++; /* the response's: its reader may run after this request's context */
        pthread_mutex_unlock(&job->lock);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                   read_stream, job, free_stream);
        if (!r) {
            serve_job_release(job);
            return MHD_NO; /* the connection closes; its completion aborts the request */
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        const enum MHD_Result queued = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return queued;
    }
    if (!job->finished) {
        serve_job_wait_locked(job); /* handle is called again once the job has finished */
        pthread_mutex_unlock(&job->lock);
        return MHD_YES;
    }
    pthread_mutex_unlock(&job->lock);
    return finish_buffered(s, c, job); /* it finished before it could wait */
}

/* A buffered answer once its job has finished. */
static enum MHD_Result finish_buffered(serve_server *s, struct MHD_Connection *c, serve_job *job) {
    pthread_mutex_lock(&job->lock);
    if (!job->finished) { /* resumed early (cannot happen: the engine wakes it at the end) */
        serve_job_wait_locked(job);
        pthread_mutex_unlock(&job->lock);
        return MHD_YES;
    }
    if (strcmp(job->finish_reason, "error") == 0) {
        serve_error err;
        serve_error_set(&err, 500, NULL, NULL, "%s", job->error_message);
        err.type = "server_error";
        pthread_mutex_unlock(&job->lock);
        return send_error(s, c, &err);
    }
    char *text = answer_json(s, job);
    pthread_mutex_unlock(&job->lock);
    return send_text(c, 200, text, "application/json", NULL);
}

/* ---- the other routes ------------------------------------------------------------------------
 */

static enum MHD_Result models(serve_server *s, struct MHD_Connection *c) {
    json_build b = {0};
    cJSON *o = checked(&b, cJSON_CreateObject());
    add(&b, o, "object", checked(&b, cJSON_CreateString("list")));
    cJSON *data = checked(&b, cJSON_CreateArray());
    cJSON *m = checked(&b, cJSON_CreateObject());
    add(&b, m, "id", checked(&b, cJSON_CreateString(s->model_name)));
    add(&b, m, "object", checked(&b, cJSON_CreateString("model")));
    add(&b, m, "created", checked(&b, cJSON_CreateNumber((double)s->started)));
    add(&b, m, "owned_by", checked(&b, cJSON_CreateString("cinfer")));
    add(&b, m, "root", checked(&b, cJSON_CreateString(s->options.model_dir)));
    add(&b, m, "parent", checked(&b, cJSON_CreateNull()));
    add(&b, m, "max_model_len", checked(&b, cJSON_CreateNumber(s->max_model_len)));
    append(&b, data, m);
    add(&b, o, "data", data);
    if (b.failed) {
        cJSON_Delete(o);
        o = NULL;
    }
    return send_json(c, 200, o);
}

static enum MHD_Result tokenizer_route(serve_server *s, struct MHD_Connection *c,
                                       request_context *ctx, serve_kind kind) {
    serve_request req;
    serve_error err;
    if (serve_request_parse(kind, ctx->body, ctx->n_body, &req, &err) != 0)
        return send_error(s, c, &err);
    json_build b = {0};
    cJSON *o = NULL;
    if (req.model && strcmp(req.model, s->model_name) != 0) {
        serve_error_set(&err, 404, "model", "model_not_found",
                        "the model '%s' does not exist: this server serves '%s'", req.model,
                        s->model_name);
    } else if (kind == SERVE_DETOKENIZE) {
        char *text = NULL;
        for (int i = 0; i < req.n_prompt_tokens && !err.status; i++)
            if (req.prompt_tokens[i] >= s->vocab_size)
                serve_error_set(&err, 400, "tokens", NULL,
                                "token %d (at %d) is outside the vocabulary of %d tokens",
                                req.prompt_tokens[i], i, s->vocab_size);
        if (!err.status && cinfer_decode(s->tokenizer, req.prompt_tokens, req.n_prompt_tokens, 0,
                                         &text) != CINFER_OK)
            serve_error_set(&err, 400, "tokens", NULL, "%s", cinfer_last_error());
        if (!err.status) {
            o = checked(&b, cJSON_CreateObject());
            add(&b, o, "prompt", json_string_n(&b, text, strlen(text)));
        }
        free(text);
    } else {
        int32_t *ids = NULL;
        int n = 0;
        if (prompt_ids(s, &req, &ids, &n, &err) == 0) {
            o = checked(&b, cJSON_CreateObject());
            add(&b, o, "count", checked(&b, cJSON_CreateNumber(n)));
            add(&b, o, "max_model_len", checked(&b, cJSON_CreateNumber(s->max_model_len)));
            cJSON *tokens = checked(&b, cJSON_CreateArray());
            for (int i = 0; i < n; i++) append(&b, tokens, checked(&b, cJSON_CreateNumber(ids[i])));
            add(&b, o, "tokens", tokens);
            add(&b, o, "token_strs", checked(&b, cJSON_CreateNull()));
        }
        free(ids);
    }
    serve_request_free(&req);
    if (err.status) {
        cJSON_Delete(o);
        return send_error(s, c, &err);
    }
    if (b.failed) {
        cJSON_Delete(o);
        o = NULL;
    }
    return send_json(c, 200, o);
}

static enum MHD_Result metrics(serve_server *s, struct MHD_Connection *c) {
    cinfer_engine_stats stats = {0};
    if (s->engine) cinfer_engine_get_stats(s->engine, &stats);
    return send_text(c, 200, serve_metrics_render(s->metrics, &stats), SERVE_METRICS_CONTENT_TYPE,
                     NULL);
}

/* 405 names the method the route takes (RFC 9110: Allow). */
static enum MHD_Result send_not_allowed(serve_server *s, struct MHD_Connection *c, const char *url,
                                        const serve_error *err) {
    serve_metrics *metrics = s->metrics;
    if (metrics) serve_metrics_request_refused(metrics, err->status);
    const char *allowed = "GET";
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].path) == 0) allowed = routes[i].method;
    char *text = serve_error_json(err);
    if (!text) return send_text(c, 500, NULL, NULL, NULL);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Allow", allowed);
    const enum MHD_Result queued = MHD_queue_response(c, 405, r);
    MHD_destroy_response(r);
    return queued;
}

/* ---- the request handler ---------------------------------------------------------------------
 */

/* Bearer token, compared in constant time (the key's length aside). */
static int key_ok(const serve_server *s, struct MHD_Connection *c) {
    const char *key = s->options.api_key;
    if (!key) return 1;
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!given || strncmp(given, "Bearer ", 7) != 0) return 0;
    given += 7;
    const size_t n = strlen(key);
    if (strlen(given) != n) return 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(given[i] ^ key[i]);
    return diff == 0;
}

/* The first call for a request: its route, its key and its declared length. 0 when it may go
 * on, else the refusal in err. */
static const route *check_headers(serve_server *s, struct MHD_Connection *c, const char *url,
                                  const char *method, serve_error *err) {
    const route *found = NULL;
    const char *allowed = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].path) != 0) continue;
        allowed = routes[i].method;
        if (strcmp(method, routes[i].method) == 0) found = &routes[i];
    }
    if (!allowed) {
        serve_error_set(err, 404, NULL, NULL, "no route %s %s", method, url);
        return NULL;
    }
    if (!found) {
        serve_error_set(err, 405, NULL, NULL, "%s takes %s, not %s", url, allowed, method);
        return NULL;
    }
    if (found->needs_key && !key_ok(s, c)) {
        serve_error_set(err, 401, NULL, "invalid_api_key",
                        "a missing or wrong API key: send \"Authorization: Bearer KEY\"");
        return NULL;
    }
    const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (length && strtoull(length, NULL, 10) > s->options.max_body_bytes) {
        serve_error_set(err, 413, NULL, NULL,
                        "the body has %s bytes, more than this server takes (%zu, "
                        "--max-body-bytes)",
                        length, s->options.max_body_bytes);
        return NULL;
    }
    return found;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls) {
    (void)version;
    serve_server *s = cls;
    request_context *ctx = *con_cls;
    if (!ctx) {
        ctx = calloc(1, sizeof *ctx);
        if (!ctx) return MHD_NO;
        *con_cls = ctx;
        serve_error err = {0};
        ctx->route = check_headers(s, c, url, method, &err);
        if (!ctx->route)
            return err.status == 405 ? send_not_allowed(s, c, url, &err) : send_error(s, c, &err);
        return MHD_YES; /* the body comes in the next calls */
    }
    if (*upload_size > 0) { /* a piece of the body */
        const size_t n = *upload_size;
        *upload_size = 0;
        if (ctx->too_large || ctx->n_body + n > s->options.max_body_bytes) {
            ctx->too_large = 1; /* read and dropped: answered 413 at the end */
            return MHD_YES;
        }
        if (ctx->n_body + n + 1 > ctx->cap_body) {
            size_t cap = ctx->cap_body ? ctx->cap_body * 2 : 4096;
            while (cap < ctx->n_body + n + 1) cap *= 2;
            char *grown = realloc(ctx->body, cap);
            if (!grown) return MHD_NO;
            ctx->body = grown;
            ctx->cap_body = cap;
        }
        memcpy(ctx->body + ctx->n_body, upload, n);
        ctx->n_body += n;
        return MHD_YES;
    }
    if (ctx->job) return finish_buffered(s, c, ctx->job); /* resumed: the answer is ready */

    serve_error err = {0};
    if (ctx->too_large) {
        serve_error_set(&err, 413, NULL, NULL,
                        "the body is larger than this server takes (%zu bytes, --max-body-bytes)",
                        s->options.max_body_bytes);
        return send_error(s, c, &err);
    }
    const serve_state state = (serve_state)atomic_load(&s->state);
    const route_kind kind = ctx->route->kind;
    if (kind == ROUTE_METRICS && s->metrics) return metrics(s, c);
    if (kind == ROUTE_VERSION) {
        char *text = strdup("{\"version\": \"" CINFER_VERSION "\"}");
        return send_text(c, 200, text, "application/json", NULL);
    }
    if (state != SERVE_RUNNING) {
        serve_error_set(&err, 503, NULL, NULL, "%s",
                        state == SERVE_LOADING    ? "the model is still loading"
                        : state == SERVE_DRAINING ? "the server is shutting down"
                                                  : "the engine has stopped after an error");
        return send_error(s, c, &err);
    }
    if (ctx->body == NULL) ctx->body = calloc(1, 1); /* an empty body: the parsers say so */
    if (!ctx->body) return MHD_NO;
    switch (kind) {
    case ROUTE_HEALTH: return send_text(c, 200, strdup(""), "text/plain", NULL);
    case ROUTE_MODELS: return models(s, c);
    case ROUTE_COMPLETIONS: return generate(s, c, ctx, SERVE_COMPLETION);
    case ROUTE_CHAT: return generate(s, c, ctx, SERVE_CHAT);
    case ROUTE_TOKENIZE: return tokenizer_route(s, c, ctx, SERVE_TOKENIZE);
    case ROUTE_DETOKENIZE: return tokenizer_route(s, c, ctx, SERVE_DETOKENIZE);
    default: return MHD_NO;
    }
}

/* libmicrohttpd is done with a request: answered, failed, or the client went away. */
static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c, (void)why;
    request_context *ctx = *con_cls;
    if (!ctx) return;
    if (ctx->job) {
        serve_job_abandon(ctx->job); /* a request still running is aborted */
        serve_job_release(ctx->job);
    }
    free(ctx->body);
    free(ctx);
    *con_cls = NULL;
}

/* ---- the daemon ------------------------------------------------------------------------------
 */

int serve_http_start(serve_server *s, int *port) {
    const serve_options *o = &s->options;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", o->port);
    struct addrinfo *address = NULL;
    const int looked_up = getaddrinfo(o->host, port_text, &hints, &address);
    if (looked_up != 0) {
        fprintf(stderr, "cinfer: error: --host %s: %s\n", o->host, gai_strerror(looked_up));
        return -1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (address->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, handle, s, MHD_OPTION_SOCK_ADDR, address->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)o->http_threads, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)o->connection_timeout, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
        MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
        MHD_OPTION_END);
    freeaddrinfo(address);
    if (!s->daemon) {
        fprintf(stderr, "cinfer: error: cannot listen on %s port %d (in use, or not allowed)\n",
                o->host, o->port);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : o->port;
    return 0;
}

void serve_http_quiesce(serve_server *s) {
    if (!s->daemon) return;
    const MHD_socket listener = MHD_quiesce_daemon(s->daemon);
    if (listener != MHD_INVALID_SOCKET) close(listener);
}

void serve_http_stop(serve_server *s) {
    if (s->daemon) MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
