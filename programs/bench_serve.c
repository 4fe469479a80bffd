/* `cinfer bench --num-prompts N` (or `--dataset FILE.jsonl`): an offline serving test of the
 * continuous-batching engine, as vLLM's `vllm bench throughput` measures throughput and the
 * latency side of `vllm bench serve`.
 *
 * A workload is a list of requests, each a prompt, an output length and an arrival time:
 *   - drawn (--num-prompts, --input-len, --output-len, --range-ratio): lengths uniform in
 *     [len·(1 − r), len·(1 + r)] as vLLM's random dataset draws them;
 *   - or read from a JSONL file, one {"prompt_len": N, "output_len": M} or
 *     {"prompt_tokens": [ids...], "output_len": M} per line.
 * Prompt ids that are not given are drawn as bench draws its prompts (splitmix64 from --seed,
 * request-major: request i's ids follow request i − 1's); lengths and arrival gaps come from
 * streams of their own, so changing --request-rate changes no prompt. Arrivals: all at once
 * (--request-rate inf), else a Poisson process (exponential gaps of mean 1/rate, the first at 0).
 * Every request is greedy with ignore_eos, so it produces exactly its output length.
 *
 * One run per --max-seqs value, each on a fresh engine over the one loaded model. The main thread
 * drives the engine: it submits the requests whose arrival time has come, runs a step, stamps the
 * outputs with the host clock (common/clock.h) when the step returns, and idles in
 * cinfer_engine_wait until the next arrival when the engine has nothing to do. One short request
 * runs first to warm up (page faults, lazily started threads); the engine's counters are taken
 * as differences across the timed run.
 *
 * Figures, as vLLM defines them:
 *   TTFT   first token's time − the request's arrival time (a request that arrives during a step
 *          waits for it, as it would wait for a server's step);
 *   TPOT   (last token's time − first token's time) / (output tokens − 1), per request with more
 *          than one output token;
 *   rates  requests, output tokens and prompt + output tokens over the run's duration, from the
 *          first arrival to the last token.
 *   peak KV blocks  the most blocks held by requests at once while a step ran
 *          (cinfer_engine_stats.n_blocks_used_peak; each row runs on a fresh engine).
 * Percentiles interpolate linearly between the sorted values (numpy's default). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/clock.h"
#include "../common/splitmix.h"
#include "bench_dataset.h"
#include "bench_serve.h"
#include "cinfer.h"
#include "option_lists.h"
#include "program.h"

/* vLLM's `bench throughput` defaults for its random dataset. */
enum { DEFAULT_INPUT_LEN = 1024, DEFAULT_OUTPUT_LEN = 128, DEFAULT_MAX_SEQS = 256 };
/* cinfer_engine_options' default, for the rows: the engine does not report it back */
enum { ENGINE_MAX_BATCHED_TOKENS = 2048 };
/* the warm-up request: long enough to run a prompt chunk and a decode step, short enough that it
 * costs nothing beside the run and holds one KV block (the row's peak counts from creation) */
enum { WARM_UP_PROMPT = 8, WARM_UP_OUTPUT = 2 };
/* --num-prompts at most: past this the per-request records alone would take gigabytes */
enum { MAX_REQUESTS = 1 << 24 };

const char *const bench_serve_usage_text =
    "serving test: many requests through the continuous-batching engine, as vLLM's\n"
    "`bench throughput` and `bench serve` measure it (one row per --max-seqs value):\n"
    "  cinfer bench --model DIR --num-prompts N [--input-len 1024] [--output-len 128] [options]\n"
    "  cinfer bench --model DIR --dataset FILE.jsonl [options]\n"
    "\n"
    "  --num-prompts N          requests (with --dataset: its first N lines; default all)\n"
    "  --input-len N            prompt tokens of a drawn request (default 1024)\n"
    "  --output-len N           tokens each drawn request generates (default 128)\n"
    "  --range-ratio R          draw lengths uniformly in [len*(1-R), len*(1+R)], 0 <= R < 1\n"
    "                           (default 0: every request the same)\n"
    "  --dataset FILE.jsonl     one request per line: {\"prompt_len\": N, \"output_len\": M} or\n"
    "                           {\"prompt_tokens\": [ids...], \"output_len\": M}\n"
    "  --request-rate R|inf     requests per second, Poisson arrivals; inf (default): all at\n"
    "                           once\n"
    "  --max-seqs N,N,...       requests in flight at most (the engine's max_seqs), 1 to 512;\n"
    "                           a run per value (default 256); 1 is one request at a time\n"
    "  --max-batched-tokens N   tokens per engine step over all requests (default 2048)\n"
    "  --block-size N           positions per KV block (default 16)\n"
    "  --max-model-len N        prompt + output of one request at most (default\n"
    "                           max_position_embeddings)\n"
    "  --kv-cache-bytes N[KMG]  size of the KV pool (default: cuda, --gpu-memory-utilization;\n"
    "                           cpu, min(4 GiB, max-seqs requests of max-model-len))\n"
    "  --gpu-memory-utilization F  cuda: share of the device's memory to fill (default 0.90)\n"
    "  --no-prefix-caching      prompts share no KV blocks\n"
    "  --seed S                 seed of the prompt ids, lengths and arrivals (default 1)\n"
    "  -t, --threads N          CPU threads (default: OpenMP's)\n"
    "  --backend cpu|cuda, --dtype D, --attn A, --device N, --tp N, --random-weights, --config FILE,\n"
    "  --output md|csv|json     as for the lockstep tests\n"
    "  Rows: requests/s, output and total tokens/s, TTFT and TPOT p50/p90/p99 (ms), the peak\n"
    "  KV blocks in use (while a step ran) of the pool's, the prefix cache's hit rate over prompt\n"
    "  tokens, preemptions, the pool's capacity in tokens. To compare with the lockstep tests,\n"
    "  run --max-seqs 1,8,32 --input-len P --output-len N --request-rate inf beside\n"
    "  -p P -n N -b 1,8,32 (tg rows: B sequences decoding in lockstep, no scheduler).\n";

typedef struct serve_options {
    const char *model_dir, *config_path, *dataset;
    int random_weights;
    int num_prompts; /* 0: with --dataset, every line */
    int input_len, output_len;
    double range_ratio;
    double request_rate; /* INFINITY: all at once */
    int_list max_seqs;
    cinfer_engine_options engine; /* max_seqs set per run */
    cinfer_load_options load;
    output_format output;
    uint64_t seed;
} serve_options;

typedef struct serve_request {
    int n_prompt, n_output;
    int32_t *prompt; /* into the workload's given or drawn ids */
    double arrival;  /* seconds after the run starts */
    int line;        /* of the dataset; 0 for a drawn request */
} serve_request;

typedef struct serve_workload {
    serve_request *requests;
    int n;
    int32_t *given; /* prompt_tokens of dataset lines, concatenated */
    int32_t *ids;   /* every prompt, request after request */
    int64_t n_prompt_tokens, n_output_tokens;
} serve_workload;

/* What one run measured. */
typedef struct serve_row {
    int max_seqs;
    int n_requests;
    int64_t prompt_tokens, output_tokens;
    double seconds;
    double requests_per_s, output_tokens_per_s, total_tokens_per_s;
    double ttft[4], tpot[4]; /* seconds: p50, p90, p99, mean; NAN when no request has one */
    int peak_blocks_used, n_blocks, block_size;
    int64_t kv_capacity_tokens, kv_bytes;
    uint64_t prompt_tokens_queried, prompt_tokens_hit, preemptions, steps;
} serve_row;

/* Per request of a run: what the outputs said and when. */
typedef struct request_timing {
    uint64_t id;
    double first, last;
    int n_output;
    int done;
} request_timing;

static int serve_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "cinfer bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", bench_serve_usage_text);
    return EXIT_USAGE;
}

/* ---- options ----------------------------------------------------------------------------------
 */

static const char *const serving_only_options[] = {
    "--num-prompts",      "--dataset",       "--input-len",      "--output-len",
    "--range-ratio",      "--request-rate",  "--max-seqs",       "--max-batched-tokens",
    "--block-size",       "--max-model-len", "--kv-cache-bytes", "--gpu-memory-utilization",
    "--no-prefix-caching"};

int bench_serve_wanted(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        for (size_t k = 0; k < sizeof serving_only_options / sizeof *serving_only_options; k++)
            if (strcmp(argv[i], serving_only_options[k]) == 0) return 1;
    return 0;
}

/* -1 when --help was printed, 0 to run, else the exit status. */
static int parse_serve_options(int argc, char **argv, serve_options *o) {
    *o = (serve_options){.input_len = DEFAULT_INPUT_LEN,
                         .output_len = DEFAULT_OUTPUT_LEN,
                         .request_rate = INFINITY,
                         .max_seqs = {1, {DEFAULT_MAX_SEQS}},
                         .output = OUTPUT_MD,
                         .seed = 1};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(bench_serve_usage_text, stdout);
            return -1;
        }
        if (strcmp(flag, "--random-weights") == 0) {
            o->random_weights = 1;
            continue;
        }
        if (strcmp(flag, "--no-prefix-caching") == 0) {
            o->engine.disable_prefix_caching = 1;
            continue;
        }
        if (i + 1 >= argc) return serve_usage("option '%s' needs a value", flag);
        const char *value = argv[++i];
        int launch_status;
        if (value && parse_tp_launch_option(flag, value, &launch_status)) {
            if (launch_status) return launch_status;
            continue;
        }
        int n;
        if (strcmp(flag, "--model") == 0 || strcmp(flag, "-m") == 0) {
            o->model_dir = value;
        } else if (strcmp(flag, "--config") == 0) {
            o->config_path = value;
        } else if (strcmp(flag, "--dataset") == 0) {
            o->dataset = value;
        } else if (strcmp(flag, "--num-prompts") == 0) {
            if (parse_int(value, 1, MAX_REQUESTS, &o->num_prompts))
                return serve_usage("--num-prompts needs one integer >= 1, got '%s'", value);
        } else if (strcmp(flag, "--input-len") == 0) {
            if (parse_int(value, 1, 1 << 24, &o->input_len))
                return serve_usage("--input-len needs one integer >= 1, got '%s'", value);
        } else if (strcmp(flag, "--output-len") == 0) {
            if (parse_int(value, 1, 1 << 24, &o->output_len))
                return serve_usage("--output-len needs one integer >= 1, got '%s'", value);
        } else if (strcmp(flag, "--range-ratio") == 0) {
            if (parse_double(value, 0.0, 0.999999, &o->range_ratio))
                return serve_usage("--range-ratio needs a number in [0, 1), got '%s'", value);
        } else if (strcmp(flag, "--request-rate") == 0) {
            if (strcmp(value, "inf") == 0)
                o->request_rate = INFINITY;
            else if (parse_double(value, 1e-9, 1e12, &o->request_rate))
                return serve_usage("--request-rate needs requests per second > 0, or inf, got '%s'",
                                   value);
        } else if (strcmp(flag, "--max-seqs") == 0) {
            if (parse_int_list(value, 1, CINFER_MAX_SEQS, &o->max_seqs))
                return serve_usage("--max-seqs needs integers in [1, 512] separated by commas, "
                                   "got '%s'",
                                   value);
        } else if (strcmp(flag, "--max-batched-tokens") == 0) {
            if (parse_int(value, 1, 65536, &o->engine.max_batched_tokens))
                return serve_usage("--max-batched-tokens needs one integer in [1, 65536], got '%s'",
                                   value);
        } else if (strcmp(flag, "--block-size") == 0) {
            if (parse_int(value, 1, 1024, &o->engine.block_size))
                return serve_usage("--block-size needs one integer in [1, 1024], got '%s'", value);
        } else if (strcmp(flag, "--max-model-len") == 0) {
            if (parse_int(value, 1, 1 << 30, &o->engine.max_model_len))
                return serve_usage("--max-model-len needs one integer >= 1, got '%s'", value);
        } else if (strcmp(flag, "--kv-cache-bytes") == 0) {
            if (parse_bytes(value, &o->engine.kv_cache_bytes))
                return serve_usage("--kv-cache-bytes needs bytes >= 1, optionally with K, M, G "
                                   "or T (powers of 1024), got '%s'",
                                   value);
        } else if (strcmp(flag, "--gpu-memory-utilization") == 0) {
            if (parse_double(value, 1e-6, 1.0, &o->engine.gpu_memory_utilization))
                return serve_usage("--gpu-memory-utilization needs a number in (0, 1], got '%s'",
                                   value);
        } else if (strcmp(flag, "--seed") == 0) {
            if (parse_int(value, 0, 2147483647, &n))
                return serve_usage("--seed needs one non-negative integer, got '%s'", value);
            o->seed = (uint64_t)n;
        } else if (strcmp(flag, "-t") == 0 || strcmp(flag, "--threads") == 0) {
            if (parse_int(value, 1, 4096, &o->load.n_threads))
                return serve_usage("-t needs one integer in [1, 4096] (one run's threads), "
                                   "got '%s'",
                                   value);
        } else if (strcmp(flag, "--output") == 0 || strcmp(flag, "-o") == 0) {
            if (parse_output_format(value, &o->output))
                return serve_usage("--output needs md, csv or json, got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0) {
            if (cinfer_backend_from_name(value, &o->load.backend))
                return serve_usage("--backend needs cpu or cuda (one), got '%s'", value);
        } else if (strcmp(flag, "--dtype") == 0) {
            if (cinfer_dtype_from_name(value, &o->load.dtype))
                return serve_usage("--dtype needs f32, bf16 or fp16 (one), got '%s'", value);
        } else if (strcmp(flag, "--attn") == 0) {
            if (cinfer_attention_from_name(value, &o->load.attention))
                return serve_usage("--attn needs auto, eager, sdpa or flash (one), got '%s'",
                                   value);
        } else if (strcmp(flag, "--device") == 0) {
            if (parse_int(value, 0, 1023, &o->load.device))
                return serve_usage("--device needs one GPU index >= 0, got '%s'", value);
        } else if (strcmp(flag, "--tp") == 0) {
            if (parse_int(value, 1, 256, &o->load.tensor_parallel))
                return serve_usage("--tp needs one number of tensor-parallel ranks in [1, 256], "
                                   "got '%s'",
                                   value);
        } else {
            return serve_usage("unknown option '%s' for the serving test", flag);
        }
    }
    if (!o->model_dir == !o->config_path)
        return serve_usage("%s", "give one of --model DIR or --config config.json");
    if (o->config_path && !o->random_weights)
        return serve_usage("%s", "--config measures a shape: add --random-weights");
    if (!o->dataset && o->num_prompts == 0)
        return serve_usage("%s", "give --num-prompts N (drawn requests) or --dataset FILE.jsonl");
    return 0;
}

/* ---- the workload -----------------------------------------------------------------------------
 */

static char *read_whole_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    size_t n = 0, capacity = 0;
    for (;;) {
        if (n + 4096 + 1 > capacity) {
            capacity = 2 * capacity + 8192;
            char *grown = realloc(text, capacity);
            if (!grown) break;
            text = grown;
        }
        const size_t got = fread(text + n, 1, capacity - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    const int failed = ferror(f) || !text;
    fclose(f);
    if (failed) {
        free(text);
        return NULL;
    }
    text[n] = '\0';
    *size = n;
    return text;
}

/* The requests of a JSONL file (programs/bench_dataset.c checks every line). 0, else the exit
 * status once the reason is printed. */
static int read_dataset(const serve_options *o, serve_workload *w) {
    size_t size = 0;
    char *text = read_whole_file(o->dataset, &size);
    if (!text) {
        fprintf(stderr, "cinfer bench: error: --dataset %s: cannot read the file: %s\n", o->dataset,
                strerror(errno));
        return EXIT_ERROR;
    }
    bench_dataset d;
    char err[512];
    const int failed =
        bench_dataset_parse(o->dataset, text, size, o->num_prompts, &d, err, sizeof err);
    free(text);
    if (failed) {
        fprintf(stderr, "cinfer bench: error: %s\n", err);
        return EXIT_ERROR;
    }
    int status = EXIT_ERROR;
    if (o->num_prompts > d.n) {
        fprintf(stderr, "cinfer bench: error: %s holds %d requests; --num-prompts asks for %d\n",
                o->dataset, d.n, o->num_prompts);
        goto done;
    }
    w->requests = calloc((size_t)d.n, sizeof *w->requests);
    if (!w->requests) {
        fprintf(stderr, "cinfer bench: error: out of memory reading %s\n", o->dataset);
        goto done;
    }
    w->n = d.n;
    w->given = d.given, d.given = NULL; /* the workload's now; it stays put from here on */
    for (int i = 0; i < d.n; i++) {
        const bench_dataset_request *q = &d.requests[i];
        w->requests[i] = (serve_request){.n_prompt = q->n_prompt,
                                         .n_output = q->n_output,
                                         .prompt = q->given_at >= 0 ? w->given + q->given_at : NULL,
                                         .line = q->line};
    }
    status = 0;
done:
    bench_dataset_free(&d);
    return status;
}

/* A uniform double in [0, 1). */
static double uniform(uint64_t *state) { return (double)(ci_splitmix64(state) >> 11) * 0x1p-53; }

/* vLLM's random dataset: an integer uniform in [len·(1 − r), len·(1 + r)], at least 1. */
static void length_range(int len, double ratio, int *lo, int *hi) {
    *lo = (int)floor(len * (1.0 - ratio));
    *hi = (int)ceil(len * (1.0 + ratio));
    if (*lo < 1) *lo = 1;
    if (*hi < *lo) *hi = *lo;
}

static int draw_length(uint64_t *state, int len, double ratio) {
    int lo, hi;
    length_range(len, ratio, &lo, &hi);
    return lo + (int)(ci_splitmix64(state) % (uint64_t)(hi - lo + 1));
}

/* Requests drawn from the options, or read from the dataset, checked against the model: lengths
 * within max_model_len, given ids within the vocabulary; then the drawn ids and the arrivals. 0,
 * else the exit status once the reason is printed. */
static int build_workload(const serve_options *o, const cinfer_model_info *info, int max_model_len,
                          serve_workload *w) {
    uint64_t lengths = o->seed ^ 0x4c454e47ull; /* "LENG": a stream of its own */
    if (!o->dataset) {
        int in_lo, in_hi, out_lo, out_hi;
        length_range(o->input_len, o->range_ratio, &in_lo, &in_hi);
        length_range(o->output_len, o->range_ratio, &out_lo, &out_hi);
        if ((int64_t)in_hi + out_hi > max_model_len) {
            fprintf(stderr,
                    "cinfer bench: error: --input-len %d and --output-len %d (range ratio %g: up "
                    "to %d + %d) make requests of up to %lld tokens, past max_model_len = %d "
                    "(--max-model-len, else config.json's max_position_embeddings)\n",
                    o->input_len, o->output_len, o->range_ratio, in_hi, out_hi,
                    (long long)in_hi + out_hi, max_model_len);
            return EXIT_USAGE;
        }
        w->n = o->num_prompts;
        w->requests = calloc((size_t)w->n, sizeof *w->requests);
        if (!w->requests) {
            fprintf(stderr, "cinfer bench: error: out of memory for %d requests\n", w->n);
            return EXIT_ERROR;
        }
        for (int i = 0; i < w->n; i++) {
            w->requests[i].n_prompt = draw_length(&lengths, o->input_len, o->range_ratio);
            w->requests[i].n_output = draw_length(&lengths, o->output_len, o->range_ratio);
        }
    }
    int64_t n_drawn = 0;
    for (int i = 0; i < w->n; i++) {
        const serve_request *r = &w->requests[i];
        if ((int64_t)r->n_prompt + r->n_output > max_model_len) {
            fprintf(stderr,
                    "cinfer bench: error: %s:%d: the prompt (%d tokens) plus \"output_len\" (%d) "
                    "is %lld tokens, past max_model_len = %d (--max-model-len, else "
                    "config.json's max_position_embeddings)\n",
                    o->dataset, r->line, r->n_prompt, r->n_output,
                    (long long)r->n_prompt + r->n_output, max_model_len);
            return EXIT_ERROR;
        }
        for (int k = 0; r->prompt && k < r->n_prompt; k++)
            if (r->prompt[k] >= info->vocab_size) {
                fprintf(stderr,
                        "cinfer bench: error: %s:%d: field \"prompt_tokens\": element %d is %d, "
                        "outside the vocabulary (vocab_size = %d in config.json)\n",
                        o->dataset, r->line, k, r->prompt[k], info->vocab_size);
                return EXIT_ERROR;
            }
        if (!r->prompt) n_drawn += r->n_prompt;
        w->n_prompt_tokens += r->n_prompt;
        w->n_output_tokens += r->n_output;
    }
    w->ids = malloc((size_t)(n_drawn > 0 ? n_drawn : 1) * sizeof *w->ids);
    if (!w->ids) {
        fprintf(stderr, "cinfer bench: error: out of memory for %lld prompt ids\n",
                (long long)n_drawn);
        return EXIT_ERROR;
    }
    uint64_t ids = o->seed; /* bench's stream: request i's ids follow request i − 1's */
    uint64_t arrivals = o->seed ^ 0x41525256ull; /* "ARRV" */
    int32_t *next = w->ids;
    double t = 0.0;
    for (int i = 0; i < w->n; i++) {
        serve_request *r = &w->requests[i];
        if (!r->prompt) {
            r->prompt = next;
            for (int k = 0; k < r->n_prompt; k++)
                next[k] = (int32_t)(ci_splitmix64(&ids) % (uint64_t)info->vocab_size);
            next += r->n_prompt;
        }
        /* exponential gaps of mean 1/rate; log1p(−u) with u in [0, 1) stays finite */
        if (i > 0 && isfinite(o->request_rate)) t += -log1p(-uniform(&arrivals)) / o->request_rate;
        r->arrival = t;
    }
    return 0;
}

static void free_workload(serve_workload *w) {
    free(w->requests);
    free(w->given);
    free(w->ids);
}

/* ---- a run ------------------------------------------------------------------------------------
 */

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50, p90, p99 (linear between the sorted values, as numpy's percentile) and the mean of
 * values[n] (sorted in place); NAN when n is 0. */
static void percentiles(double *values, int n, double out[4]) {
    static const double ps[3] = {50.0, 90.0, 99.0};
    if (n == 0) {
        for (int i = 0; i < 4; i++) out[i] = NAN;
        return;
    }
    qsort(values, (size_t)n, sizeof *values, by_value);
    for (int i = 0; i < 3; i++) {
        const double at = ps[i] / 100.0 * (n - 1);
        const int lo = (int)floor(at);
        const int hi = lo + 1 < n ? lo + 1 : lo;
        out[i] = values[lo] + (values[hi] - values[lo]) * (at - lo);
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += values[i];
    out[3] = sum / n;
}

/* The request an output belongs to: ids ascend in submission order. */
static int find_request(const request_timing *t, int n, uint64_t id) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (t[mid].id == id) return mid;
        if (t[mid].id < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* One short request, run to its end before the clock starts. */
static cinfer_status warm_up(cinfer_engine *engine, const serve_options *o, int vocab_size,
                             int max_model_len) {
    int32_t prompt[WARM_UP_PROMPT];
    cinfer_engine_stats stats;
    cinfer_engine_get_stats(engine, &stats);
    if (stats.kv_capacity_tokens < max_model_len) max_model_len = (int)stats.kv_capacity_tokens;
    int n_prompt = max_model_len - WARM_UP_OUTPUT;
    if (n_prompt > WARM_UP_PROMPT) n_prompt = WARM_UP_PROMPT;
    if (n_prompt < 1) n_prompt = 1;
    uint64_t state = o->seed ^ 0x5741524dull; /* "WARM" */
    for (int k = 0; k < n_prompt; k++)
        prompt[k] = (int32_t)(ci_splitmix64(&state) % (uint64_t)vocab_size);
    cinfer_request_params params = {.max_new_tokens = max_model_len - n_prompt, .ignore_eos = 1};
    if (params.max_new_tokens > WARM_UP_OUTPUT) params.max_new_tokens = WARM_UP_OUTPUT;
    cinfer_status status = cinfer_engine_add_request(engine, prompt, n_prompt, &params, NULL);
    while (status == CINFER_OK && cinfer_engine_has_work(engine)) {
        const cinfer_request_output *outputs;
        int n_outputs;
        status = cinfer_engine_step(engine, &outputs, &n_outputs);
    }
    return status;
}

/* Submits every request at its arrival time and steps until all are done. 0, else the exit
 * status once the reason is printed. */
static int serve_run(cinfer_engine *engine, const serve_workload *w, const serve_options *o,
                     request_timing *timing, double *scratch, serve_row *row) {
    cinfer_engine_stats before, stats;
    cinfer_engine_get_stats(engine, &before);
    memset(timing, 0, (size_t)w->n * sizeof *timing);
    int next = 0, n_done = 0;
    double last = 0.0;
    const double start = ci_now_seconds();
    while (n_done < w->n) {
        double now = ci_now_seconds() - start;
        for (; next < w->n && w->requests[next].arrival <= now; next++) {
            const serve_request *r = &w->requests[next];
            const cinfer_request_params params = {.max_new_tokens = r->n_output, .ignore_eos = 1};
            if (cinfer_engine_add_request(engine, r->prompt, r->n_prompt, &params,
                                          &timing[next].id) != CINFER_OK) {
                if (r->line)
                    fprintf(stderr, "cinfer bench: error: %s:%d: %s\n", o->dataset, r->line,
                            cinfer_last_error());
                else
                    fprintf(stderr, "cinfer bench: error: request %d: %s\n", next,
                            cinfer_last_error());
                return EXIT_ERROR;
            }
        }
        if (!cinfer_engine_has_work(engine)) {
            if (next == w->n) {
                fprintf(stderr,
                        "cinfer bench: error: the engine has no work left but %d of %d "
                        "requests did not finish\n",
                        w->n - n_done, w->n);
                return EXIT_ERROR;
            }
            /* nothing else submits: this sleeps until the next arrival */
            cinfer_engine_wait(engine, w->requests[next].arrival - now);
            continue;
        }
        const cinfer_request_output *outputs;
        int n_outputs;
        if (cinfer_engine_step(engine, &outputs, &n_outputs) != CINFER_OK) {
            fprintf(stderr, "cinfer bench: error: %s\n", cinfer_last_error());
            return EXIT_ERROR;
        }
        now = ci_now_seconds() - start;
        for (int k = 0; k < n_outputs; k++) {
            const int i = find_request(timing, next, outputs[k].request_id);
            if (i < 0) continue;
            request_timing *t = &timing[i];
            if (outputs[k].token >= 0) {
                if (t->n_output == 0) t->first = now;
                t->last = now;
                t->n_output++;
            }
            if (outputs[k].finish_reason != CINFER_FINISH_NONE && !t->done) {
                t->done = 1;
                n_done++;
                last = now;
            }
        }
    }
    cinfer_engine_get_stats(engine, &stats);
    row->peak_blocks_used = stats.n_blocks_used_peak;

    row->n_requests = w->n;
    row->prompt_tokens = w->n_prompt_tokens;
    row->seconds = last;
    int n_tpot = 0;
    for (int i = 0; i < w->n; i++) {
        /* ignore_eos: a request that stopped short would make every figure a lie */
        if (timing[i].n_output != w->requests[i].n_output) {
            fprintf(stderr,
                    "cinfer bench: error: request %d generated %d tokens, expected its output "
                    "length %d\n",
                    i, timing[i].n_output, w->requests[i].n_output);
            return EXIT_ERROR;
        }
        row->output_tokens += timing[i].n_output;
        scratch[i] = timing[i].first - w->requests[i].arrival;
    }
    percentiles(scratch, w->n, row->ttft);
    for (int i = 0; i < w->n; i++)
        if (timing[i].n_output > 1)
            scratch[n_tpot++] = (timing[i].last - timing[i].first) / (timing[i].n_output - 1);
    percentiles(scratch, n_tpot, row->tpot);
    row->requests_per_s = w->n / last;
    row->output_tokens_per_s = (double)row->output_tokens / last;
    row->total_tokens_per_s = (double)(row->output_tokens + row->prompt_tokens) / last;
    row->n_blocks = stats.n_blocks;
    row->block_size = stats.block_size;
    row->kv_capacity_tokens = stats.kv_capacity_tokens;
    row->kv_bytes = stats.kv_bytes;
    row->prompt_tokens_queried = stats.prompt_tokens_queried - before.prompt_tokens_queried;
    row->prompt_tokens_hit = stats.prompt_tokens_hit - before.prompt_tokens_hit;
    row->preemptions = stats.n_preemptions - before.n_preemptions;
    row->steps = stats.n_steps - before.n_steps;
    return 0;
}

/* ---- output -----------------------------------------------------------------------------------
 */

static double hit_rate(const serve_row *r) {
    return r->prompt_tokens_queried
               ? (double)r->prompt_tokens_hit / (double)r->prompt_tokens_queried
               : 0.0;
}

/* "12.3 / 45.6 / 78.9" in ms, "-" where there is none. */
static void format_ms3(const double s[4], char *buf, size_t size) {
    if (isnan(s[0]))
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.2f / %.2f / %.2f", 1e3 * s[0], 1e3 * s[1], 1e3 * s[2]);
}

static void csv_ms(double seconds) {
    if (isnan(seconds))
        printf(",");
    else
        printf(",%.6g", 1e3 * seconds);
}

static void json_ms(cJSON *item, const char *key, double seconds) {
    if (isnan(seconds))
        cJSON_AddNullToObject(item, key);
    else
        cJSON_AddNumberToObject(item, key, 1e3 * seconds);
}

static void print_serve_rows(const serve_options *o, const cinfer_model_info *info,
                             const serve_row *rows, int n_rows) {
    char model[512];
    bench_model_label(o->config_path ? o->config_path : o->model_dir, o->random_weights, model,
                      sizeof model);
    char backend[32]; /* "cpu tp 2" with --tp */
    if (o->load.tensor_parallel > 1)
        snprintf(backend, sizeof backend, "%s tp %d", cinfer_backend_name(o->load.backend),
                 o->load.tensor_parallel);
    else
        snprintf(backend, sizeof backend, "%s", cinfer_backend_name(o->load.backend));
    const char *dtype = o->load.backend == CINFER_BACKEND_CPU ? cinfer_dtype_name(CINFER_DTYPE_F32)
                                                              : cinfer_dtype_name(o->load.dtype);
    static const char *const ms_keys[2][4] = {
        {"ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "ttft_mean_ms"},
        {"tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "tpot_mean_ms"}};
    if (o->output == OUTPUT_MD) {
        printf("| model | backend | dtype | attn | requests | in flight | req/s | out tok/s "
               "| total tok/s | TTFT ms p50/p90/p99 | TPOT ms p50/p90/p99 | peak KV blocks "
               "| prefix hits | preempt | KV pool tokens |\n");
        printf("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
               "| ---: | ---: | ---: |\n");
        for (int i = 0; i < n_rows; i++) {
            const serve_row *r = &rows[i];
            char ttft[64], tpot[64];
            format_ms3(r->ttft, ttft, sizeof ttft);
            format_ms3(r->tpot, tpot, sizeof tpot);
            printf("| %s | %s | %s | %s | %d | %d | %.2f | %.2f | %.2f | %s | %s | %d / %d "
                   "| %.1f%% | %llu | %lld |\n",
                   model, backend, dtype, info->attention, r->n_requests, r->max_seqs,
                   r->requests_per_s, r->output_tokens_per_s, r->total_tokens_per_s, ttft, tpot,
                   r->peak_blocks_used, r->n_blocks, 100.0 * hit_rate(r),
                   (unsigned long long)r->preemptions, (long long)r->kv_capacity_tokens);
        }
    } else if (o->output == OUTPUT_CSV) {
        printf("model,arch,backend,dtype,attn,n_threads,dataset,requests,max_seqs,"
               "max_batched_tokens,block_size,request_rate,prompt_tokens,output_tokens,seconds,"
               "requests_per_s,output_tokens_per_s,total_tokens_per_s");
        for (int m = 0; m < 2; m++)
            for (int k = 0; k < 4; k++) printf(",%s", ms_keys[m][k]);
        printf(",peak_kv_blocks,kv_blocks,kv_capacity_tokens,kv_bytes,prompt_tokens_queried,"
               "prompt_tokens_hit,prefix_hit_rate,preemptions,steps\n");
        for (int i = 0; i < n_rows; i++) {
            const serve_row *r = &rows[i];
            print_csv_field(model);
            printf(",%s,%s,%s,%s,%d,", info->architecture, backend, dtype, info->attention,
                   o->load.n_threads);
            print_csv_field(o->dataset ? o->dataset : "");
            printf(",%d,%d,%d,%d,", r->n_requests, r->max_seqs,
                   o->engine.max_batched_tokens ? o->engine.max_batched_tokens
                                                : ENGINE_MAX_BATCHED_TOKENS,
                   r->block_size);
            if (isfinite(o->request_rate))
                printf("%.6g", o->request_rate);
            else
                printf("inf");
            printf(",%lld,%lld,%.6g,%.6g,%.6g,%.6g", (long long)r->prompt_tokens,
                   (long long)r->output_tokens, r->seconds, r->requests_per_s,
                   r->output_tokens_per_s, r->total_tokens_per_s);
            for (int k = 0; k < 4; k++) csv_ms(r->ttft[k]);
            for (int k = 0; k < 4; k++) csv_ms(r->tpot[k]);
            printf(",%d,%d,%lld,%lld,%llu,%llu,%.6g,%llu,%llu\n", r->peak_blocks_used, r->n_blocks,
                   (long long)r->kv_capacity_tokens, (long long)r->kv_bytes,
                   (unsigned long long)r->prompt_tokens_queried,
                   (unsigned long long)r->prompt_tokens_hit, hit_rate(r),
                   (unsigned long long)r->preemptions, (unsigned long long)r->steps);
        }
    } else {
        cJSON *array = cJSON_CreateArray();
        for (int i = 0; array && i < n_rows; i++) {
            const serve_row *r = &rows[i];
            cJSON *item = cJSON_CreateObject();
            cJSON_AddItemToArray(array, item);
            cJSON_AddStringToObject(item, "model", model);
            cJSON_AddStringToObject(item, "arch", info->architecture);
            cJSON_AddStringToObject(item, "backend", backend);
            cJSON_AddStringToObject(item, "dtype", dtype);
            cJSON_AddStringToObject(item, "attn", info->attention);
            cJSON_AddNumberToObject(item, "n_threads", o->load.n_threads);
            cJSON_AddNumberToObject(item, "tensor_parallel", info->tensor_parallel);
            if (o->dataset)
                cJSON_AddStringToObject(item, "dataset", o->dataset);
            else
                cJSON_AddNullToObject(item, "dataset");
            cJSON_AddNumberToObject(item, "requests", r->n_requests);
            cJSON_AddNumberToObject(item, "max_seqs", r->max_seqs);
            cJSON_AddNumberToObject(item, "max_batched_tokens",
                                    o->engine.max_batched_tokens ? o->engine.max_batched_tokens
                                                                 : ENGINE_MAX_BATCHED_TOKENS);
            cJSON_AddNumberToObject(item, "block_size", r->block_size);
            if (isfinite(o->request_rate))
                cJSON_AddNumberToObject(item, "request_rate", o->request_rate);
            else
                cJSON_AddStringToObject(item, "request_rate", "inf");
            cJSON_AddNumberToObject(item, "prompt_tokens", (double)r->prompt_tokens);
            cJSON_AddNumberToObject(item, "output_tokens", (double)r->output_tokens);
            cJSON_AddNumberToObject(item, "seconds", r->seconds);
            cJSON_AddNumberToObject(item, "requests_per_s", r->requests_per_s);
            cJSON_AddNumberToObject(item, "output_tokens_per_s", r->output_tokens_per_s);
            cJSON_AddNumberToObject(item, "total_tokens_per_s", r->total_tokens_per_s);
            for (int k = 0; k < 4; k++) json_ms(item, ms_keys[0][k], r->ttft[k]);
            for (int k = 0; k < 4; k++) json_ms(item, ms_keys[1][k], r->tpot[k]);
            cJSON_AddNumberToObject(item, "peak_kv_blocks", r->peak_blocks_used);
            cJSON_AddNumberToObject(item, "kv_blocks", r->n_blocks);
            cJSON_AddNumberToObject(item, "kv_capacity_tokens", (double)r->kv_capacity_tokens);
            cJSON_AddNumberToObject(item, "kv_bytes", (double)r->kv_bytes);
            cJSON_AddNumberToObject(item, "prompt_tokens_queried",
                                    (double)r->prompt_tokens_queried);
            cJSON_AddNumberToObject(item, "prompt_tokens_hit", (double)r->prompt_tokens_hit);
            cJSON_AddNumberToObject(item, "prefix_hit_rate", hit_rate(r));
            cJSON_AddNumberToObject(item, "preemptions", (double)r->preemptions);
            cJSON_AddNumberToObject(item, "steps", (double)r->steps);
        }
        print_json_rows(array);
    }
    fflush(stdout);
}

/* ---- the command ------------------------------------------------------------------------------
 */

int bench_serve_main(int argc, char **argv) {
    serve_options o;
    int status = parse_serve_options(argc, argv, &o);
    if (status) return status < 0 ? 0 : status; /* -1: help was asked for and printed */
    serve_workload w = {0};
    if (o.dataset && (status = read_dataset(&o, &w)) != 0) {
        free_workload(&w);
        return status;
    }

    status = EXIT_ERROR;
    cinfer_model *model = NULL;
    cinfer_engine *engine = NULL;
    serve_row *rows = calloc((size_t)o.max_seqs.n, sizeof *rows);
    request_timing *timing = NULL;
    double *scratch = NULL;
    cinfer_status loaded;
    if (o.random_weights) {
        char path[4096];
        if (o.config_path)
            snprintf(path, sizeof path, "%s", o.config_path);
        else
            snprintf(path, sizeof path, "%s/config.json", o.model_dir);
        loaded = cinfer_model_load_random(path, &o.load, o.seed, &model);
    } else {
        loaded = program_load_model(o.model_dir, &o.load, &model);
    }
    if (loaded != CINFER_OK) goto fail;
    const cinfer_model_info *info = cinfer_model_get_info(model);
    const int max_model_len =
        o.engine.max_model_len ? o.engine.max_model_len : info->max_position_embeddings;
    if (max_model_len > info->max_position_embeddings) {
        fprintf(stderr,
                "cinfer bench: error: --max-model-len %d is past max_position_embeddings = %d "
                "(config.json)\n",
                max_model_len, info->max_position_embeddings);
        status = EXIT_USAGE;
        goto done;
    }
    if ((status = build_workload(&o, info, max_model_len, &w)) != 0) goto done;
    status = EXIT_ERROR;
    timing = calloc((size_t)w.n, sizeof *timing);
    scratch = calloc((size_t)w.n, sizeof *scratch);
    if (!rows || !timing || !scratch) {
        fprintf(stderr, "cinfer bench: error: out of memory for %d requests\n", w.n);
        goto done;
    }

    for (int m = 0; m < o.max_seqs.n; m++) {
        cinfer_engine_options options = o.engine;
        options.max_seqs = o.max_seqs.values[m];
        if (cinfer_engine_create(model, &options, &engine) != CINFER_OK) goto fail;
        if (warm_up(engine, &o, info->vocab_size, max_model_len) != CINFER_OK) goto fail;
        rows[m].max_seqs = options.max_seqs;
        if ((status = serve_run(engine, &w, &o, timing, scratch, &rows[m])) != 0) goto done;
        status = EXIT_ERROR;
        cinfer_engine_free(engine);
        engine = NULL;
    }
    print_serve_rows(&o, info, rows, o.max_seqs.n);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "cinfer bench: error: %s\n", cinfer_last_error());
done:
    cinfer_engine_free(engine);
    cinfer_model_free(model);
    free_workload(&w);
    free(timing);
    free(scratch);
    free(rows);
    return status;
}
