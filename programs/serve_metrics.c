/* The Prometheus `/metrics` endpoint of `cinfer serve` (programs/serve_metrics.h): counters and
 * histograms behind one mutex, and the exposition text written from a copy of them.
 *
 * One mutex for everything: an update is a few additions, far shorter than the HTTP work around
 * it, and one lock makes a scrape a consistent picture (a request's tokens, its reason and its
 * histograms appear together). Buckets are kept per bucket and summed into cumulative counts
 * only when the text is written. */
#include "serve_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

/* 1, 2, 5, ... up to INT_MAX is 29 bounds; the fixed lists below are at most 22. */
enum { MAX_BOUNDS = 32 };
/* A duration past this (31 years) is a broken clock, not a request; capping it keeps every sum
 * finite however many requests come. */
#define MAX_SECONDS 1e9

/* vLLM's bucket bounds (vllm/v1/metrics/loggers.py), so that quantiles compare bucket for
 * bucket with a vLLM server's. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                     20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
/* inter_token_latency_seconds shares time_per_output_token_seconds' list */
static const double inter_token_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                            0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                            7.5,  10.0,  20.0, 40.0,  80.0};
/* request_latency_buckets: end to end and queue time */
static const double request_bounds[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                        5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

#define COUNT_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* The histograms, in the order they are written. */
enum { H_TTFT, H_INTER_TOKEN, H_E2E, H_QUEUE, H_PROMPT, H_GENERATION, N_HISTOGRAMS };

typedef struct histogram_spec {
    const char *name, *help;
    double bounds[MAX_BOUNDS]; /* increasing; +Inf is implicit */
    int n_bounds;
} histogram_spec;

typedef struct histogram {
    uint64_t in_bucket[MAX_BOUNDS + 1]; /* observations <= bounds[i] and > bounds[i-1]; the last
                                           one is past every bound (only +Inf holds it) */
    uint64_t count;
    double sum;
} histogram;

/* The finished_reason label values, all written even at 0 so that rate() sees each from the
 * start; "error" last, the one an unknown reason falls into. */
static const char *const reasons[] = {"stop", "length", "abort", "error"};
enum { N_REASONS = 4, REASON_ERROR = 3 };

enum { MIN_STATUS = 100, MAX_STATUS = 599 }; /* RFC 9110's status codes are three digits, 1xx-5xx */

/* Everything the HTTP threads change: copied whole under the lock for a scrape. */
typedef struct tallies {
    uint64_t success[N_REASONS];
    uint64_t prompt_tokens, generation_tokens;
    histogram histograms[N_HISTOGRAMS];
    uint64_t http_errors[MAX_STATUS - MIN_STATUS + 1];
} tallies;

struct serve_metrics {
    pthread_mutex_t lock;
    char *model_label; /* the model name escaped for a label value */
    histogram_spec specs[N_HISTOGRAMS];
    tallies now; /* under lock */
};

/* ---- the text being written ------------------------------------------------------------------ */

typedef struct text {
    char *buf;
    size_t len, cap;
    int out_of_memory; /* once set, nothing more is written and render returns NULL */
} text;

static void put(text *t, const char *format, ...) CI_PRINTF(2, 3);
static void put(text *t, const char *format, ...) {
    if (t->out_of_memory) return;
    for (;;) {
        va_list args;
        va_start(args, format);
        const int n = vsnprintf(t->buf + t->len, t->cap - t->len, format, args);
        va_end(args);
        if (n < 0) { /* only an encoding error, which our formats cannot make */
            t->out_of_memory = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2;
        while (cap - t->len <= (size_t)n) cap *= 2;
        char *buf = realloc(t->buf, cap);
        if (!buf) {
            t->out_of_memory = 1;
            return;
        }
        t->buf = buf;
        t->cap = cap;
    }
}

/* v as the fewest digits that read back as the same double ("0.1", not 0.10000000000000001), so
 * that le labels match other servers' and sums read back exactly; whole numbers below 1e17 in
 * full ("2560", not %g's "2.56e+03"). In the C locale, which cinfer never changes: a decimal
 * comma would not parse. Non-finite values cannot reach here (observations are capped), but
 * would be written in Prometheus' spelling, not C's. */
static void format_number(char out[32], double v) {
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(out, 32, "%.*g", digits, v);
        if (strtod(out, NULL) == v) break;
    }
    /* %g writes an exponent once it is >= the digits asked for: ask for one digit per place */
    const char *e = strchr(out, 'e');
    const int exponent = e ? atoi(e + 1) : -1;
    if (exponent >= 0 && exponent < 17) snprintf(out, 32, "%.*g", exponent + 1, v);
}

/* `# HELP` and `# TYPE`: name is the family's (a counter's with its _total, as 0.0.4 has it). */
static void family(text *t, const char *name, const char *type, const char *help) {
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u64(text *t, const serve_metrics *m, const char *name, uint64_t v) {
    put(t, "%s{model_name=\"%s\"} %llu\n", name, m->model_label, (unsigned long long)v);
}

static void sample_double(text *t, const serve_metrics *m, const char *name, double v) {
    char number[32];
    format_number(number, v);
    put(t, "%s{model_name=\"%s\"} %s\n", name, m->model_label, number);
}

static void write_histogram(text *t, const serve_metrics *m, const histogram_spec *spec,
                            const histogram *h) {
    family(t, spec->name, "histogram", spec->help);
    uint64_t cumulative = 0;
    for (int i = 0; i <= spec->n_bounds; i++) {
        cumulative += h->in_bucket[i];
        char le[32];
        if (i < spec->n_bounds)
            format_number(le, spec->bounds[i]);
        else
            strcpy(le, "+Inf");
        put(t, "%s_bucket{model_name=\"%s\",le=\"%s\"} %llu\n", spec->name, m->model_label, le,
            (unsigned long long)cumulative);
    }
    char sum[32];
    format_number(sum, h->sum);
    put(t, "%s_sum{model_name=\"%s\"} %s\n", spec->name, m->model_label, sum);
    put(t, "%s_count{model_name=\"%s\"} %llu\n", spec->name, m->model_label,
        (unsigned long long)h->count);
}

/* ---- create and observe ---------------------------------------------------------------------- */

/* name as a label value: the format escapes backslash, double quote and newline, nothing else.
 * NULL when out of memory. */
static char *escape_label(const char *name) {
    size_t n = 1;
    for (const char *c = name; *c; c++) n += (*c == '\\' || *c == '"' || *c == '\n') ? 2 : 1;
    char *out = malloc(n), *o = out;
    if (!out) return NULL;
    for (const char *c = name; *c; c++) {
        if (*c == '\\' || *c == '"' || *c == '\n') *o++ = '\\';
        *o++ = *c == '\n' ? 'n' : *c;
    }
    *o = '\0';
    return out;
}

static void set_spec(histogram_spec *spec, const char *name, const char *help, const double *bounds,
                     int n_bounds) {
    spec->name = name;
    spec->help = help;
    spec->n_bounds = n_bounds;
    memcpy(spec->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
}

/* vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... while <= max (none when max < 1). */
static int one_two_five(double bounds[MAX_BOUNDS], int max) {
    static const int mantissas[] = {1, 2, 5};
    int n = 0;
    for (long long power = 1;; power *= 10)
        for (int k = 0; k < 3; k++) {
            const long long v = mantissas[k] * power;
            if (v > max || n == MAX_BOUNDS) return n;
            bounds[n++] = (double)v;
        }
}

serve_metrics *serve_metrics_create(const char *model_name, int max_model_len) {
    serve_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->model_label = escape_label(model_name ? model_name : "");
    if (!m->model_label || pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m->model_label);
        free(m);
        return NULL;
    }
    histogram_spec *s = m->specs;
    set_spec(&s[H_TTFT], "cinfer:time_to_first_token_seconds",
             "Time from a request's arrival to its first generated token, in seconds.", ttft_bounds,
             COUNT_OF(ttft_bounds));
    set_spec(&s[H_INTER_TOKEN], "cinfer:inter_token_latency_seconds",
             "Time between two streamed tokens of one request, in seconds.", inter_token_bounds,
             COUNT_OF(inter_token_bounds));
    set_spec(&s[H_E2E], "cinfer:e2e_request_latency_seconds",
             "Time from a request's arrival to its end, in seconds.", request_bounds,
             COUNT_OF(request_bounds));
    set_spec(&s[H_QUEUE], "cinfer:request_queue_time_seconds",
             "Time a request waited before the engine first scheduled it, in seconds.",
             request_bounds, COUNT_OF(request_bounds));
    double token_bounds[MAX_BOUNDS];
    const int n_token_bounds = one_two_five(token_bounds, max_model_len);
    set_spec(&s[H_PROMPT], "cinfer:request_prompt_tokens",
             "Prompt tokens of each finished request.", token_bounds, n_token_bounds);
    set_spec(&s[H_GENERATION], "cinfer:request_generation_tokens",
             "Generated tokens of each finished request.", token_bounds, n_token_bounds);
    return m;
}

void serve_metrics_free(serve_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m->model_label);
    free(m);
}

/* A duration as it is counted: not a number >= 0 (NaN included) is 0, past MAX_SECONDS is that. */
static double duration(double seconds) {
    if (seconds > MAX_SECONDS) return MAX_SECONDS;
    return seconds >= 0 ? seconds : 0;
}

/* Under the lock. Prometheus' buckets are "less than or equal": v == bound is in bound's. */
static void observe(histogram *h, const histogram_spec *spec, double v) {
    int i = 0;
    while (i < spec->n_bounds && v > spec->bounds[i]) i++;
    h->in_bucket[i]++;
    h->count++;
    h->sum += v;
}

static int reason_index(const char *reason) {
    for (int i = 0; reason && i < N_REASONS; i++)
        if (strcmp(reason, reasons[i]) == 0) return i;
    return REASON_ERROR; /* a caller's slip still counts the request, where it is seen */
}

void serve_metrics_request_finished(serve_metrics *m, const char *finish_reason,
                                    int n_prompt_tokens, int n_generation_tokens,
                                    double queue_seconds, double ttft_seconds, double e2e_seconds) {
    const int reason = reason_index(finish_reason);
    const int n_prompt = n_prompt_tokens > 0 ? n_prompt_tokens : 0;
    const int n_generation = n_generation_tokens > 0 ? n_generation_tokens : 0;
    pthread_mutex_lock(&m->lock);
    tallies *t = &m->now;
    t->success[reason]++;
    t->prompt_tokens += (uint64_t)n_prompt;
    t->generation_tokens += (uint64_t)n_generation;
    observe(&t->histograms[H_PROMPT], &m->specs[H_PROMPT], n_prompt);
    observe(&t->histograms[H_GENERATION], &m->specs[H_GENERATION], n_generation);
    observe(&t->histograms[H_QUEUE], &m->specs[H_QUEUE], duration(queue_seconds));
    observe(&t->histograms[H_E2E], &m->specs[H_E2E], duration(e2e_seconds));
    if (ttft_seconds >= 0) /* NaN is "no token" too: there is no time to count */
        observe(&t->histograms[H_TTFT], &m->specs[H_TTFT], duration(ttft_seconds));
    pthread_mutex_unlock(&m->lock);
}

void serve_metrics_inter_token(serve_metrics *m, double seconds) {
    const double v = duration(seconds);
    pthread_mutex_lock(&m->lock);
    observe(&m->now.histograms[H_INTER_TOKEN], &m->specs[H_INTER_TOKEN], v);
    pthread_mutex_unlock(&m->lock);
}

void serve_metrics_request_refused(serve_metrics *m, int http_status) {
    if (http_status < MIN_STATUS || http_status > MAX_STATUS) return;
    pthread_mutex_lock(&m->lock);
    m->now.http_errors[http_status - MIN_STATUS]++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- the exposition -------------------------------------------------------------------------- */

static void write_engine(text *t, const serve_metrics *m, const cinfer_engine_stats *stats) {
    family(t, "cinfer:num_requests_running", "gauge", "Requests in the engine's running batch.");
    sample_u64(t, m, "cinfer:num_requests_running",
               (uint64_t)(stats->n_running > 0 ? stats->n_running : 0));
    family(t, "cinfer:num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
    sample_u64(t, m, "cinfer:num_requests_waiting",
               (uint64_t)(stats->n_waiting > 0 ? stats->n_waiting : 0));
    /* blocks held by sequences; cached free blocks are free, as vLLM counts them */
    family(t, "cinfer:kv_cache_usage_perc", "gauge",
           "Fraction of KV-cache blocks in use (1 means all).");
    sample_double(t, m, "cinfer:kv_cache_usage_perc",
                  stats->n_blocks > 0 && stats->n_blocks_used > 0
                      ? (double)stats->n_blocks_used / stats->n_blocks
                      : 0.0);
    family(t, "cinfer:prefix_cache_queries_total", "counter",
           "Prompt tokens looked up in the prefix cache.");
    sample_u64(t, m, "cinfer:prefix_cache_queries_total", stats->prompt_tokens_queried);
    family(t, "cinfer:prefix_cache_hits_total", "counter", "Prompt tokens the prefix cache held.");
    sample_u64(t, m, "cinfer:prefix_cache_hits_total", stats->prompt_tokens_hit);
    family(t, "cinfer:num_preemptions_total", "counter",
           "Requests preempted by the engine to free KV-cache blocks.");
    sample_u64(t, m, "cinfer:num_preemptions_total", stats->n_preemptions);
}

char *serve_metrics_render(serve_metrics *m, const cinfer_engine_stats *stats) {
    /* the copy is on the heap: HTTP threads may run on small stacks, and it is ~6 KiB */
    tallies *now = malloc(sizeof *now);
    text t = {.buf = malloc(16384), .cap = 16384};
    if (!now || !t.buf) {
        free(now);
        free(t.buf);
        return NULL;
    }
    pthread_mutex_lock(&m->lock);
    *now = m->now;
    pthread_mutex_unlock(&m->lock);

    if (stats) write_engine(&t, m, stats);
    family(&t, "cinfer:request_success_total", "counter",
           "Finished requests, by why they finished.");
    for (int i = 0; i < N_REASONS; i++)
        put(&t, "cinfer:request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %llu\n",
            m->model_label, reasons[i], (unsigned long long)now->success[i]);
    family(&t, "cinfer:prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
    sample_u64(&t, m, "cinfer:prompt_tokens_total", now->prompt_tokens);
    family(&t, "cinfer:generation_tokens_total", "counter",
           "Generated tokens of finished requests.");
    sample_u64(&t, m, "cinfer:generation_tokens_total", now->generation_tokens);
    for (int h = 0; h < N_HISTOGRAMS; h++)
        write_histogram(&t, m, &m->specs[h], &now->histograms[h]);
    family(&t, "cinfer:http_errors_total", "counter", "Error responses sent, by HTTP status.");
    for (int s = MIN_STATUS; s <= MAX_STATUS; s++) /* a status appears once it has been sent */
        if (now->http_errors[s - MIN_STATUS])
            put(&t, "cinfer:http_errors_total{model_name=\"%s\",status=\"%d\"} %llu\n",
                m->model_label, s, (unsigned long long)now->http_errors[s - MIN_STATUS]);
    free(now);
    if (t.out_of_memory) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
