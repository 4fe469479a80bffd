/* The JSONL dataset of `cinfer bench --dataset FILE.jsonl`: lines into requests, each line and
 * field checked, a refusal written into the caller's buffer (programs/bench_dataset.h). */
#include "bench_dataset.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/error.h"

/* A refusal into err; returns -1. */
static int fail(char *err, size_t size, const char *format, ...) CI_PRINTF(3, 4);
static int fail(char *err, size_t size, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, size, format, args);
    va_end(args);
    return -1;
}

/* A JSON number that is an integer in [minimum, maximum]; 0, else -1. */
static int json_int(const cJSON *item, int minimum, int maximum, int *out) {
    if (!cJSON_IsNumber(item)) return -1;
    const double v = item->valuedouble;
    if (!(v >= minimum && v <= maximum) || v != floor(v)) return -1;
    *out = (int)v;
    return 0;
}

/* What a field held, as JSON, cut to fit buf: for messages. */
static const char *json_text(const cJSON *item, char *buf, size_t size) {
    char *text = cJSON_PrintUnformatted(item);
    snprintf(buf, size, "%s", text ? text : "?");
    if (text && strlen(text) >= size && size > 4) strcpy(buf + size - 4, "...");
    cJSON_free(text);
    return buf;
}

/* Room in d for one more request and n more prompt ids; 0, else -1. */
typedef struct capacities {
    int requests;
    int64_t given;
} capacities;

static int reserve(bench_dataset *d, capacities *cap, int64_t n_ids) {
    if (d->n == cap->requests) {
        const int capacity = 2 * cap->requests + 64;
        bench_dataset_request *grown = realloc(d->requests, (size_t)capacity * sizeof *grown);
        if (!grown) return -1;
        d->requests = grown, cap->requests = capacity;
    }
    if (d->n_given + n_ids > cap->given) {
        const int64_t capacity = 2 * cap->given + n_ids + 1024;
        int32_t *grown = realloc(d->given, (size_t)capacity * sizeof *grown);
        if (!grown) return -1;
        d->given = grown, cap->given = capacity;
    }
    return 0;
}

/* One line (NUL-terminated) of path into a request appended to d; 0, else -1 with the reason. */
static int parse_line(const char *path, int line_no, const char *line, bench_dataset *d,
                      capacities *cap, char *err, size_t err_size) {
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithOpts(line, &end, 1);
    char got[48];
    if (!json) {
        const char *at = cJSON_GetErrorPtr();
        const long column = at && at >= line ? (long)(at - line) + 1 : 1;
        return fail(err, err_size,
                    "%s:%d:%ld: not JSON: expected one object per line, e.g. "
                    "{\"prompt_len\": 128, \"output_len\": 64}",
                    path, line_no, column);
    }
    int status = -1;
    bench_dataset_request r = {.line = line_no, .given_at = -1};
    if (!cJSON_IsObject(json)) {
        fail(err, err_size, "%s:%d: expected a JSON object, got %s", path, line_no,
             cJSON_IsArray(json) ? "an array" : "a value that is not an object");
        goto done;
    }
    const cJSON *prompt_len = NULL, *prompt_tokens = NULL, *output_len = NULL;
    for (const cJSON *item = json->child; item; item = item->next) {
        const cJSON **slot = strcmp(item->string, "prompt_len") == 0      ? &prompt_len
                             : strcmp(item->string, "prompt_tokens") == 0 ? &prompt_tokens
                             : strcmp(item->string, "output_len") == 0    ? &output_len
                                                                          : NULL;
        if (!slot) {
            fail(err, err_size,
                 "%s:%d: unknown field \"%s\": expected prompt_len or prompt_tokens, and "
                 "output_len",
                 path, line_no, item->string);
            goto done;
        }
        if (*slot) {
            fail(err, err_size, "%s:%d: field \"%s\" given twice", path, line_no, item->string);
            goto done;
        }
        *slot = item;
    }
    if (!prompt_len == !prompt_tokens) {
        fail(err, err_size,
             "%s:%d: expected one of \"prompt_len\" (an integer >= 1) or \"prompt_tokens\" (a "
             "list of token ids), %s",
             path, line_no, prompt_len ? "got both" : "got neither");
        goto done;
    }
    if (!output_len) {
        fail(err, err_size,
             "%s:%d: field \"output_len\" is missing: expected the number of tokens to "
             "generate, an integer >= 1",
             path, line_no);
        goto done;
    }
    if (json_int(output_len, 1, BENCH_DATASET_MAX_LEN, &r.n_output)) {
        fail(err, err_size, "%s:%d: field \"output_len\": expected an integer >= 1, got %s", path,
             line_no, json_text(output_len, got, sizeof got));
        goto done;
    }
    int n = 0;
    if (prompt_len) {
        if (json_int(prompt_len, 1, BENCH_DATASET_MAX_LEN, &r.n_prompt)) {
            fail(err, err_size, "%s:%d: field \"prompt_len\": expected an integer >= 1, got %s",
                 path, line_no, json_text(prompt_len, got, sizeof got));
            goto done;
        }
    } else {
        n = cJSON_GetArraySize(prompt_tokens);
        if (!cJSON_IsArray(prompt_tokens) || n == 0) {
            fail(err, err_size,
                 "%s:%d: field \"prompt_tokens\": expected a non-empty list of token ids", path,
                 line_no);
            goto done;
        }
        r.n_prompt = n;
        r.given_at = d->n_given; /* a pointer once every line is read: given may move */
    }
    if (reserve(d, cap, n)) {
        fail(err, err_size, "out of memory reading %s", path);
        goto done;
    }
    int k = 0;
    for (const cJSON *id = prompt_tokens ? prompt_tokens->child : NULL; id; id = id->next, k++) {
        int value;
        if (json_int(id, 0, 2147483647, &value)) {
            fail(err, err_size,
                 "%s:%d: field \"prompt_tokens\": element %d is not a token id (an integer >= "
                 "0): %s",
                 path, line_no, k, json_text(id, got, sizeof got));
            goto done;
        }
        d->given[d->n_given + k] = value;
    }
    d->n_given += n;
    d->requests[d->n++] = r;
    status = 0;
done:
    cJSON_Delete(json);
    return status;
}

int bench_dataset_parse(const char *path, const char *text, size_t size, int max_requests,
                        bench_dataset *d, char *err, size_t err_size) {
    *d = (bench_dataset){0};
    if (err_size > 0) err[0] = '\0';
    capacities cap = {0};
    char *line = NULL; /* each line copied, NUL-terminated, for cJSON */
    size_t line_capacity = 0;
    int status = -1, line_no = 0;
    for (const char *start = text; start < text + size;) {
        const char *end = memchr(start, '\n', (size_t)(text + size - start));
        if (!end) end = text + size;
        const size_t length = (size_t)(end - start);
        line_no++;
        if (memchr(start, '\0', length)) {
            fail(err, err_size, "%s:%d: a NUL byte inside the line", path, line_no);
            goto done;
        }
        const char *p = start;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
        if (p < end) {
            if (max_requests > 0 && d->n == max_requests) break;
            if (length + 1 > line_capacity) {
                char *grown = realloc(line, length + 1);
                if (!grown) {
                    fail(err, err_size, "out of memory reading %s", path);
                    goto done;
                }
                line = grown, line_capacity = length + 1;
            }
            memcpy(line, start, length);
            line[length] = '\0';
            if (parse_line(path, line_no, line, d, &cap, err, err_size)) goto done;
        }
        start = end + 1;
    }
    if (d->n == 0) {
        fail(err, err_size, "%s: no requests: expected one JSON object per line", path);
        goto done;
    }
    status = 0;
done:
    free(line);
    if (status) bench_dataset_free(d);
    return status;
}

void bench_dataset_free(bench_dataset *d) {
    free(d->requests);
    free(d->given);
    *d = (bench_dataset){0};
}
