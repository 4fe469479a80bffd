/* The request bodies of `cinfer serve`: OpenAI's completions and chat completions JSON into a
 * checked serve_request, or an OpenAI error object naming the field and the limit
 * (programs/serve_request.h). */
#include "serve_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/error.h"

static const char invalid_request[] = "invalid_request_error";
static const char unsupported[] = "unsupported_value";

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

/* The length of the well-formed UTF-8 sequence at s (n bytes left), else 0: no overlong forms,
 * no surrogates, nothing past U+10FFFF (Unicode's table 3-7). */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    const unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0)
        len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC)
        len = 3;
    else if (c == 0xED)
        len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF)
        len = 3;
    else if (c == 0xF0)
        len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4)
        len = 4, hi = 0x8F;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static int utf8_valid(const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    while (n > 0) {
        const size_t len = utf8_sequence(s, n);
        if (!len) return 0;
        s += len, n -= len;
    }
    return 1;
}

/* text made valid UTF-8 in place: each byte that starts no well-formed sequence becomes '?'
 * (a message cut by snprintf may end inside a character; what it quotes may be any bytes). */
static void utf8_sanitize(char *text) {
    unsigned char *s = (unsigned char *)text;
    size_t n = strlen(text);
    while (n > 0) {
        size_t len = utf8_sequence(s, n);
        if (!len) *s = '?', len = 1;
        s += len, n -= len;
    }
}

char *serve_utf8_lossy(const char *bytes, size_t n) {
    char *text = malloc(3 * n + 1), *at = text;
    if (!text) return NULL;
    const unsigned char *s = (const unsigned char *)bytes;
    while (n > 0) {
        const size_t len = utf8_sequence(s, n);
        if (len && s[0] != 0) {
            memcpy(at, s, len);
            at += len;
        } else {
            memcpy(at, "\xEF\xBF\xBD", 3); /* U+FFFD */
            at += 3;
        }
        const size_t step = len ? len : 1;
        s += step, n -= step;
    }
    *at = '\0';
    return text;
}

/* ---- errors --------------------------------------------------------------------------------- */

static void error_vset(serve_error *err, int status, const char *param, const char *code,
                       const char *format, va_list args) {
    err->status = status;
    vsnprintf(err->message, sizeof err->message, format, args);
    utf8_sanitize(err->message);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    utf8_sanitize(err->param);
    err->type = invalid_request;
    err->code = code;
}

void serve_error_set(serve_error *err, int status, const char *param, const char *code,
                     const char *format, ...) {
    va_list args;
    va_start(args, format);
    error_vset(err, status, param, code, format, args);
    va_end(args);
}

/* A 400 naming param; returns -1. */
static int refuse(serve_error *err, const char *param, const char *code, const char *format, ...)
    CI_PRINTF(4, 5);
static int refuse(serve_error *err, const char *param, const char *code, const char *format, ...) {
    va_list args;
    va_start(args, format);
    error_vset(err, 400, param, code, format, args);
    va_end(args);
    return -1;
}

char *serve_error_json(const serve_error *err) {
    cJSON *root = cJSON_CreateObject(), *error = cJSON_CreateObject();
    char *out = NULL;
    if (!root || !error) {
        cJSON_Delete(root);
        cJSON_Delete(error);
        return NULL;
    }
    cJSON_AddItemToObject(root, "error", error);
    const int ok =
        cJSON_AddStringToObject(error, "message", err->message) &&
        cJSON_AddStringToObject(error, "type", err->type ? err->type : invalid_request) &&
        (err->param[0] ? cJSON_AddStringToObject(error, "param", err->param) != NULL
                       : cJSON_AddNullToObject(error, "param") != NULL) &&
        (err->code ? cJSON_AddStringToObject(error, "code", err->code) != NULL
                   : cJSON_AddNullToObject(error, "code") != NULL);
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    if (text) { /* cJSON's allocator may be hooked: the caller frees with free() */
        const size_t n = strlen(text) + 1;
        out = malloc(n);
        if (out) memcpy(out, text, n);
        cJSON_free(text);
    }
    cJSON_Delete(root);
    return out;
}

/* ---- JSON values ---------------------------------------------------------------------------- */

/* What a value held, as JSON, cut to fit buf: for messages (sanitized with them). Numbers as
 * %g, so that 1e999 reads "inf" where cJSON would print null. */
static const char *json_text(const cJSON *item, char *buf, size_t size) {
    if (cJSON_IsNumber(item)) {
        snprintf(buf, size, "%g", item->valuedouble);
        return buf;
    }
    char *text = cJSON_PrintUnformatted(item);
    snprintf(buf, size, "%s", text ? text : "?");
    if (text && strlen(text) >= size && size > 4) strcpy(buf + size - 4, "...");
    cJSON_free(text);
    return buf;
}

/* The name of a value's JSON type, for messages. */
static const char *json_type(const cJSON *item) {
    return cJSON_IsString(item)   ? "a string"
           : cJSON_IsNumber(item) ? "a number"
           : cJSON_IsBool(item)   ? "a boolean"
           : cJSON_IsArray(item)  ? "an array"
           : cJSON_IsObject(item) ? "an object"
                                  : "null";
}

/* The object's field called name, NULL when absent or null (every optional field takes null as
 * absent, as vLLM's do). Keys are case-sensitive; of a repeated key the last counts, as in
 * Python's json. */
static const cJSON *field(const cJSON *object, const char *name) {
    const cJSON *found = NULL;
    for (const cJSON *item = object->child; item; item = item->next)
        if (item->string && strcmp(item->string, name) == 0) found = item;
    return found && !cJSON_IsNull(found) ? found : NULL;
}

/* A JSON number that is an integer (16.0 counts, as pydantic takes it) in [minimum, maximum]. */
static int is_int_in(const cJSON *item, double minimum, double maximum) {
    if (!cJSON_IsNumber(item)) return 0;
    const double v = item->valuedouble;
    return v >= minimum && v <= maximum && v == floor(v);
}

/* An optional integer field in [minimum, maximum] into *out (left as it is when absent). */
static int get_int(const cJSON *object, const char *name, int minimum, int maximum, int *out,
                   serve_error *err) {
    const cJSON *item = field(object, name);
    if (!item) return 0;
    char got[48];
    if (!is_int_in(item, minimum, maximum))
        return refuse(err, name, NULL, "%s must be an integer in [%d, %d], got %s", name, minimum,
                      maximum, json_text(item, got, sizeof got));
    *out = (int)item->valuedouble;
    return 0;
}

/* An optional boolean field into *out (left as it is when absent). */
static int get_bool(const cJSON *object, const char *name, int *out, serve_error *err) {
    const cJSON *item = field(object, name);
    if (!item) return 0;
    if (!cJSON_IsBool(item))
        return refuse(err, name, NULL, "%s must be a boolean, got %s", name, json_type(item));
    *out = cJSON_IsTrue(item);
    return 0;
}

/* An optional number field into *out (left as it is when absent); finite. */
static int get_number(const cJSON *object, const char *name, double *out, serve_error *err) {
    const cJSON *item = field(object, name);
    if (!item) return 0;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        return refuse(err, name, NULL, "%s must be a number, got %s", name, json_type(item));
    *out = item->valuedouble;
    return 0;
}

/* A copy of a JSON string that must be valid UTF-8; NULL with err set otherwise. */
static char *copy_text(const cJSON *item, const char *param, serve_error *err) {
    if (!utf8_valid(item->valuestring)) {
        refuse(err, param, NULL, "%s must be valid UTF-8 text", param);
        return NULL;
    }
    const size_t n = strlen(item->valuestring) + 1;
    char *copy = malloc(n);
    if (!copy) {
        serve_error_set(err, 500, param, NULL, "out of memory copying %s (%zu bytes)", param, n);
        return NULL;
    }
    memcpy(copy, item->valuestring, n);
    return copy;
}

/* ---- checks on the raw body ----------------------------------------------------------------- */

/* The body refused before cJSON reads it: a NUL byte or a \u0000 escape (C strings would cut
 * the text there without a word), or nesting past SERVE_MAX_DEPTH (cJSON recurses once per
 * level). Strings are followed, so brackets and escapes inside them count as text. 0, else -1
 * with err set. */
static int check_body(const char *body, size_t size, serve_error *err) {
    if (memchr(body, '\0', size))
        return refuse(err, NULL, NULL, "the body holds a NUL byte: cinfer takes no NUL in text");
    int depth = 0, in_string = 0;
    for (size_t i = 0; i < size; i++) {
        const char c = body[i];
        if (in_string) {
            if (c == '"')
                in_string = 0;
            else if (c == '\\' && i + 1 < size) {
                if (body[i + 1] == 'u' && i + 5 < size && memcmp(body + i + 2, "0000", 4) == 0)
                    return refuse(err, NULL, NULL,
                                  "the body holds a \\u0000 escape: cinfer takes no NUL in text");
                i++; /* the escaped character */
            }
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > SERVE_MAX_DEPTH)
                return refuse(err, NULL, NULL,
                              "the body is nested too deeply: at most %d levels of [ and {",
                              SERVE_MAX_DEPTH);
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 0;
}

/* ---- the fields ----------------------------------------------------------------------------- */

/* prompt: a string, a list of token ids, or a list of one of either (vLLM's batch of one). */
static int parse_prompt(const cJSON *root, serve_request *req, serve_error *err) {
    const cJSON *prompt = field(root, "prompt");
    if (!prompt)
        return refuse(err, "prompt", NULL, "prompt is required: a string or a list of token ids");
    if (cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) == 1 &&
        (cJSON_IsString(prompt->child) || cJSON_IsArray(prompt->child)))
        prompt = prompt->child;
    if (cJSON_IsString(prompt)) {
        req->prompt = copy_text(prompt, "prompt", err);
        return req->prompt ? 0 : -1;
    }
    if (!cJSON_IsArray(prompt))
        return refuse(err, "prompt", NULL, "prompt must be a string or a list of token ids, got %s",
                      json_type(prompt));
    const int n = cJSON_GetArraySize(prompt);
    if (n == 0) return refuse(err, "prompt", NULL, "prompt must not be an empty list");
    if (cJSON_IsString(prompt->child) || cJSON_IsArray(prompt->child))
        return refuse(err, "prompt", unsupported,
                      "prompt must be one prompt: lists of %d prompts are not supported "
                      "(send one request each)",
                      n);
    req->prompt_tokens = malloc((size_t)n * sizeof *req->prompt_tokens);
    if (!req->prompt_tokens) {
        serve_error_set(err, 500, "prompt", NULL, "out of memory for %d prompt tokens", n);
        return -1;
    }
    int k = 0;
    for (const cJSON *id = prompt->child; id; id = id->next, k++) {
        char got[48];
        if (!is_int_in(id, 0, INT32_MAX))
            return refuse(err, "prompt", NULL,
                          "prompt must be a string or a list of token ids (integers in [0, %d]): "
                          "element %d is %s",
                          INT32_MAX, k, json_text(id, got, sizeof got));
        req->prompt_tokens[k] = (int32_t)id->valuedouble;
    }
    req->n_prompt_tokens = n;
    return 0;
}

/* One message's content: a string, a list of {"type": "text", "text": ...} parts (joined by "\n"),
 * or, for an assistant's turn, null (""). */
static int parse_content(const cJSON *message, const char *role, int index, char **out,
                         serve_error *err) {
    char param[SERVE_MAX_PARAM];
    snprintf(param, sizeof param, "messages[%d].content", index);
    const cJSON *content = field(message, "content");
    if (!content) {
        if (strcmp(role, "assistant") == 0) {
            *out = calloc(1, 1);
            if (*out) return 0;
            serve_error_set(err, 500, param, NULL, "out of memory");
            return -1;
        }
        return refuse(err, param, NULL, "%s is required for a %s message", param, role);
    }
    if (cJSON_IsString(content)) {
        *out = copy_text(content, param, err);
        return *out ? 0 : -1;
    }
    if (!cJSON_IsArray(content))
        return refuse(err, param, NULL, "%s must be a string or a list of text parts, got %s",
                      param, json_type(content));
    /* the joined length first, each part checked */
    size_t total = 0;
    int k = 0;
    for (const cJSON *part = content->child; part; part = part->next, k++) {
        char part_param[SERVE_MAX_PARAM + 16]; /* param, then [k] */
        snprintf(part_param, sizeof part_param, "%s[%d]", param, k);
        if (!cJSON_IsObject(part))
            return refuse(err, part_param, NULL,
                          "%s must be an object {\"type\": \"text\", \"text\": ...}, got %s",
                          part_param, json_type(part));
        const cJSON *type = field(part, "type"), *text = field(part, "text");
        char got[48];
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0)
            return refuse(err, part_param, unsupported,
                          "%s.type must be \"text\": cinfer serves text only, got %s", part_param,
                          type ? json_text(type, got, sizeof got) : "none");
        if (!cJSON_IsString(text))
            return refuse(err, part_param, NULL, "%s.text must be a string, got %s", part_param,
                          text ? json_type(text) : "none");
        if (!utf8_valid(text->valuestring))
            return refuse(err, part_param, NULL, "%s.text must be valid UTF-8 text", part_param);
        total += strlen(text->valuestring) + (k > 0);
    }
    *out = malloc(total + 1);
    if (!*out) {
        serve_error_set(err, 500, param, NULL, "out of memory for %zu bytes of content", total);
        return -1;
    }
    char *at = *out;
    for (const cJSON *part = content->child; part; part = part->next) {
        if (part != content->child) *at++ = '\n';
        const char *text = field(part, "text")->valuestring;
        const size_t n = strlen(text);
        memcpy(at, text, n);
        at += n;
    }
    *at = '\0';
    return 0;
}

static int parse_messages(const cJSON *root, serve_request *req, serve_error *err) {
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
    const cJSON *messages = field(root, "messages");
    if (!messages)
        return refuse(err, "messages", NULL,
                      "messages is required: a list of {\"role\": ..., \"content\": ...}");
    if (!cJSON_IsArray(messages))
        return refuse(err, "messages", NULL, "messages must be a list, got %s",
                      json_type(messages));
    const int n = cJSON_GetArraySize(messages);
    if (n == 0) return refuse(err, "messages", NULL, "messages must not be empty");
    req->messages = calloc((size_t)n, sizeof *req->messages);
    if (!req->messages) {
        serve_error_set(err, 500, "messages", NULL, "out of memory for %d messages", n);
        return -1;
    }
    req->n_messages = n; /* every slot freed from here on, filled or not */
    int i = 0;
    for (const cJSON *message = messages->child; message; message = message->next, i++) {
        char param[SERVE_MAX_PARAM], got[48];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(message))
            return refuse(err, param, NULL, "%s must be an object, got %s", param,
                          json_type(message));
        snprintf(param, sizeof param, "messages[%d].role", i);
        const cJSON *role = field(message, "role");
        const char *known = NULL;
        for (size_t r = 0; cJSON_IsString(role) && r < sizeof roles / sizeof *roles; r++)
            if (strcmp(role->valuestring, roles[r]) == 0) known = roles[r];
        if (!known)
            return refuse(err, param, NULL,
                          "%s must be one of system, user, assistant, tool, developer, got %s",
                          param, role ? json_text(role, got, sizeof got) : "none");
        req->messages[i].role = known; /* static: the free function skips roles */
        char *content = NULL;
        if (parse_content(message, known, i, &content, err)) return -1;
        req->messages[i].content = content;
    }
    return 0;
}

/* stop: a string or a list of strings; null and [] are none, empty strings are dropped. */
static int parse_stop(const cJSON *root, serve_request *req, serve_error *err) {
    const cJSON *stop = field(root, "stop");
    if (!stop) return 0;
    const int n = cJSON_IsString(stop) ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
    if (n < 0)
        return refuse(err, "stop", NULL, "stop must be a string or a list of strings, got %s",
                      json_type(stop));
    if (n > SERVE_MAX_STOP)
        return refuse(err, "stop", NULL, "stop must hold at most %d strings, got %d",
                      SERVE_MAX_STOP, n);
    if (n == 0) return 0;
    req->stop = calloc((size_t)n, sizeof *req->stop);
    if (!req->stop) {
        serve_error_set(err, 500, "stop", NULL, "out of memory for %d stop strings", n);
        return -1;
    }
    int k = 0;
    for (const cJSON *s = cJSON_IsString(stop) ? stop : stop->child; s;
         s = cJSON_IsString(stop) ? NULL : s->next, k++) {
        if (!cJSON_IsString(s))
            return refuse(err, "stop", NULL,
                          "stop must be a string or a list of strings: element %d is %s", k,
                          json_type(s));
        const size_t bytes = strlen(s->valuestring);
        if (bytes > SERVE_MAX_STOP_BYTES)
            return refuse(err, "stop", NULL,
                          "each stop string must be at most %d bytes, element %d has %zu",
                          SERVE_MAX_STOP_BYTES, k, bytes);
        if (bytes == 0) continue;
        char *copy = copy_text(s, "stop", err);
        if (!copy) return -1;
        req->stop[req->n_stop++] = copy;
    }
    return 0;
}

/* A field that cinfer takes only at its neutral value: absent, null, or equal to neutral. */
static int neutral_number(const cJSON *root, const char *name, double neutral, serve_error *err) {
    double v = neutral;
    if (get_number(root, name, &v, err)) return -1;
    if (v != neutral)
        return refuse(err, name, unsupported, "%s is not supported: only %g (its default), got %g",
                      name, neutral, v);
    return 0;
}

static int parse_sampling(const cJSON *root, serve_request *req, serve_error *err) {
    char got[48];
    double temperature = 1.0, top_p = 1.0;
    const cJSON *item = field(root, "temperature");
    if (item && !(cJSON_IsNumber(item) && item->valuedouble >= 0 && item->valuedouble <= 2))
        return refuse(err, "temperature", NULL, "temperature must be a number in [0, 2], got %s",
                      json_text(item, got, sizeof got));
    if (item) temperature = item->valuedouble;
    item = field(root, "top_p");
    if (item && !(cJSON_IsNumber(item) && item->valuedouble > 0 && item->valuedouble <= 1))
        return refuse(err, "top_p", NULL, "top_p must be a number in (0, 1], got %s",
                      json_text(item, got, sizeof got));
    if (item) top_p = item->valuedouble;
    int top_k = 0;
    if (get_int(root, "top_k", -1, SERVE_MAX_TOP_K, &top_k, err)) return -1;
    req->sampling.temperature = (float)temperature;
    req->sampling.top_p = (float)top_p;
    req->sampling.top_k = top_k < 0 ? 0 : top_k; /* -1: off, as vLLM writes it */
    item = field(root, "seed");
    if (item) {
        if (!is_int_in(item, -SERVE_MAX_SEED, SERVE_MAX_SEED))
            return refuse(err, "seed", NULL, "seed must be an integer in [-2^53, 2^53], got %s",
                          json_text(item, got, sizeof got));
        req->sampling.seed = (uint64_t)(int64_t)item->valuedouble;
        req->has_seed = 1;
    }
    if (neutral_number(root, "presence_penalty", 0, err) ||
        neutral_number(root, "frequency_penalty", 0, err) ||
        neutral_number(root, "repetition_penalty", 1, err) || neutral_number(root, "min_p", 0, err))
        return -1;
    const cJSON *bias = field(root, "logit_bias");
    if (bias && !(cJSON_IsObject(bias) && !bias->child))
        return refuse(err, "logit_bias", unsupported,
                      "logit_bias is not supported: only null or {}");
    return 0;
}

static int parse_logprobs(const cJSON *root, serve_request *req, serve_error *err) {
    if (req->kind == SERVE_COMPLETION) { /* logprobs: how many alternatives, 0 the token alone */
        int n = -1;
        if (get_int(root, "logprobs", 0, CINFER_MAX_TOP_LOGPROBS, &n, err)) return -1;
        req->logprobs = n >= 0;
        req->top_logprobs = n > 0 ? n : 0;
        return 0;
    }
    if (get_bool(root, "logprobs", &req->logprobs, err) ||
        get_int(root, "top_logprobs", 0, CINFER_MAX_TOP_LOGPROBS, &req->top_logprobs, err))
        return -1;
    if (req->top_logprobs > 0 && !req->logprobs)
        return refuse(err, "top_logprobs", NULL, "top_logprobs needs logprobs set to true");
    return 0;
}

/* vLLM's /tokenize ({"prompt": text} or {"messages": [...]}, add_special_tokens,
 * add_generation_prompt) and /detokenize ({"tokens": [ids]}). */
static int parse_tokenizer_fields(const cJSON *root, serve_request *req, serve_error *err) {
    if (req->kind == SERVE_DETOKENIZE) {
        const cJSON *tokens = field(root, "tokens");
        if (!tokens) return refuse(err, "tokens", NULL, "tokens is required: a list of token ids");
        if (!cJSON_IsArray(tokens))
            return refuse(err, "tokens", NULL, "tokens must be a list of token ids, got %s",
                          json_type(tokens));
        const int n = cJSON_GetArraySize(tokens);
        req->prompt_tokens = malloc((size_t)(n > 0 ? n : 1) * sizeof *req->prompt_tokens);
        if (!req->prompt_tokens) {
            serve_error_set(err, 500, "tokens", NULL, "out of memory for %d tokens", n);
            return -1;
        }
        int k = 0;
        for (const cJSON *id = tokens->child; id; id = id->next, k++) {
            char got[48];
            if (!is_int_in(id, 0, INT32_MAX))
                return refuse(err, "tokens", NULL,
                              "tokens must be token ids (integers in [0, %d]): element %d is %s",
                              INT32_MAX, k, json_text(id, got, sizeof got));
            req->prompt_tokens[k] = (int32_t)id->valuedouble;
        }
        req->n_prompt_tokens = n;
        return 0;
    }
    const int has_messages = field(root, "messages") != NULL;
    if (has_messages == (field(root, "prompt") != NULL))
        return refuse(err, "prompt", NULL, "tokenize takes one of prompt (a string) and messages");
    if (has_messages) {
        if (parse_messages(root, req, err)) return -1;
    } else {
        const cJSON *prompt = field(root, "prompt");
        if (!cJSON_IsString(prompt))
            return refuse(err, "prompt", NULL, "prompt must be a string, got %s",
                          json_type(prompt));
        if (!(req->prompt = copy_text(prompt, "prompt", err))) return -1;
    }
    /* vLLM's defaults: special tokens for plain text (the template writes its own), and the
     * assistant's header after the messages */
    req->add_special_tokens = !has_messages;
    req->add_generation_prompt = 1;
    return get_bool(root, "add_special_tokens", &req->add_special_tokens, err) ||
                   get_bool(root, "add_generation_prompt", &req->add_generation_prompt, err)
               ? -1
               : 0;
}

static int parse_fields(const cJSON *root, serve_request *req, serve_error *err) {
    const cJSON *model = field(root, "model");
    if (model) {
        if (!cJSON_IsString(model))
            return refuse(err, "model", NULL, "model must be a string, got %s", json_type(model));
        if (!(req->model = copy_text(model, "model", err))) return -1;
    }
    if (req->kind == SERVE_TOKENIZE || req->kind == SERVE_DETOKENIZE)
        return parse_tokenizer_fields(root, req, err);
    if (req->kind == SERVE_COMPLETION ? parse_prompt(root, req, err)
                                      : parse_messages(root, req, err))
        return -1;

    req->max_tokens = req->kind == SERVE_COMPLETION ? 16 : -1; /* OpenAI's defaults */
    if (get_int(root, "max_tokens", 1, SERVE_MAX_TOKENS, &req->max_tokens, err)) return -1;
    if (req->kind == SERVE_CHAT &&
        get_int(root, "max_completion_tokens", 1, SERVE_MAX_TOKENS, &req->max_tokens, err))
        return -1;
    if (parse_sampling(root, req, err) || parse_stop(root, req, err) ||
        parse_logprobs(root, req, err) || get_bool(root, "stream", &req->stream, err) ||
        get_bool(root, "ignore_eos", &req->ignore_eos, err))
        return -1;

    const cJSON *options = field(root, "stream_options");
    if (options) {
        if (!cJSON_IsObject(options))
            return refuse(err, "stream_options", NULL, "stream_options must be an object, got %s",
                          json_type(options));
        if (!req->stream)
            return refuse(err, "stream_options", NULL,
                          "stream_options is only allowed when stream is true");
        const cJSON *usage = field(options, "include_usage");
        if (usage && !cJSON_IsBool(usage))
            return refuse(err, "stream_options.include_usage", NULL,
                          "stream_options.include_usage must be a boolean, got %s",
                          json_type(usage));
        req->include_usage = usage && cJSON_IsTrue(usage);
    }

    /* one choice per request, the prompt never echoed: refused, not ignored */
    int n = 1, best_of = 1, echo = 0;
    if (get_int(root, "n", 1, 1 << 20, &n, err) ||
        get_int(root, "best_of", 1, 1 << 20, &best_of, err) || get_bool(root, "echo", &echo, err))
        return -1;
    if (n != 1)
        return refuse(err, "n", unsupported,
                      "n must be 1: cinfer gives one choice per request, "
                      "got %d (send %d requests)",
                      n, n);
    if (best_of != 1)
        return refuse(err, "best_of", unsupported, "best_of must be 1: not supported, got %d",
                      best_of);
    if (echo) return refuse(err, "echo", unsupported, "echo is not supported: only false");
    const cJSON *suffix = field(root, "suffix");
    if (suffix && !(cJSON_IsString(suffix) && suffix->valuestring[0] == '\0'))
        return refuse(err, "suffix", unsupported, "suffix is not supported: only null or \"\"");
    return 0;
}

/* ---- the request ---------------------------------------------------------------------------- */

int serve_request_parse(serve_kind kind, const char *body, size_t size, serve_request *req,
                        serve_error *err) {
    *req = (serve_request){.kind = kind};
    *err = (serve_error){.type = invalid_request};
    if (check_body(body, size, err)) return -1;
    const char *end = NULL;
    /* the end pointer comes from this parse, not from cJSON's global error pointer, which other
     * threads may be writing (as loaders/json.c) */
    cJSON *root = cJSON_ParseWithLengthOpts(body, size, &end, 0);
    size_t at = end && end >= body && end <= body + size ? (size_t)(end - body) : 0;
    if (!root)
        return refuse(err, NULL, NULL, "the body is not valid JSON (error near byte %zu)", at);
    while (at < size && strchr(" \t\r\n", body[at])) at++;
    int status = -1;
    if (at < size)
        refuse(err, NULL, NULL, "the body is not valid JSON (text after the value at byte %zu)",
               at);
    else if (!cJSON_IsObject(root))
        refuse(err, NULL, NULL, "the body must be a JSON object, got %s", json_type(root));
    else
        status = parse_fields(root, req, err);
    cJSON_Delete(root);
    if (status) serve_request_free(req);
    return status;
}

void serve_request_free(serve_request *req) {
    free(req->model);
    free(req->prompt);
    free(req->prompt_tokens);
    for (int i = 0; req->messages && i < req->n_messages; i++)
        free((char *)req->messages[i].content); /* roles are static strings */
    free(req->messages);
    for (int i = 0; i < req->n_stop; i++) free(req->stop[i]);
    free(req->stop);
    const serve_kind kind = req->kind;
    *req = (serve_request){.kind = kind};
}
