/* `cinfer bench`: throughput tests named as llama-bench names them.
 *
 *   pp<N>  prefill: B prompts of N tokens in one forward call, logits of their last tokens only;
 *          throughput B·N / seconds.
 *   tg<N>  decode: N lockstep steps of one token of each of the B sequences, every one picking
 *          its next tokens on the device; throughput B·N / seconds.
 *   "@ d<D>": the test runs after D tokens already sit in each KV cache (filled, not timed).
 *   batch B (-b): sequences decoded together, each with its own prompt and KV cache, as
 *          llama-batched-bench runs them (-npl); B = 1 is llama-bench's single sequence.
 *
 * Token ids are drawn at random from the vocabulary before the timed region (splitmix64 from
 * --seed, sequence-major: sequence b's n_ctx ids follow sequence b − 1's; scripts/bench_hf.py
 * draws the same); decode feeds those ids instead of sampling, so tokenization and sampling are
 * outside every figure. Each test runs
 * once to warm up (caches, page faults of the mapped weights, lazily started threads), then
 * `repetitions` times on a freshly reset session; rows show mean ± standard deviation. A run is
 * timed on the device, between timing marks before its first op and after its last (CUDA events;
 * on the CPU, whose ops finish as they return, the host clock).
 *
 * With --num-prompts or --dataset (or another option only it takes) bench runs the serving test
 * instead: many requests through the continuous-batching engine (programs/bench_serve.c). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../common/clock.h"
#include "../common/error.h"
#include "../common/splitmix.h"
#include "bench_serve.h"
#include "ceilings.h"
#include "cinfer.h"
#include "commands.h"
#include "option_lists.h"
#include "program.h"

static int bench_main(int argc, char **argv);
/* what main.c dispatches to and prints in the usage */
const program_command bench_command = {
    "bench", bench_main,
    "  bench --model DIR [-p 512] [-n 128]   prefill and decode throughput (bench --help)\n"
    "  bench --model DIR --num-prompts N     serving test: many requests, continuous batching\n",
    NULL};

static const char *bench_usage_text =
    "usage: cinfer bench --model DIR [options]\n"
    "       cinfer bench --config config.json --random-weights [options]\n"
    "\n"
    "  --random-weights         random weights of the config's shape (with --model: its\n"
    "                           config.json); no checkpoint is read\n"
    "  -p, --n-prompt N,N,...   prefill tests pp<N> (default 512)\n"
    "  -n, --n-gen N,N,...      decode tests tg<N> (default 128)\n"
    "  -d, --n-depth N,N,...    KV cache depth before each test (default 0)\n"
    "  -b, --batch-size N,...   sequences decoded together in lockstep, 1 to 512, each with\n"
    "                           its own prompt and KV cache (default 1)\n"
    "  -t, --threads N,N,...    CPU threads (default: OpenMP's)\n"
    "  -r, --repetitions N      timed runs per test after one warm-up (default 5)\n"
    "  --backend cpu,cuda       backend(s) to measure (default cpu)\n"
    "  --dtype f32,bf16,fp16    cuda: run dtype(s) (default bf16); the CPU computes in f32\n"
    "  --attn auto,eager,sdpa,flash  cuda: attention kind(s) (default auto: the fastest that\n"
    "                           runs the model; the row names the kind that ran)\n"
    "  --device N               cuda: the GPU (default 0)\n"
    "  --tp N                   tensor parallelism: the model split across N ranks (default 1;\n"
    "                           the CPU runs them as threads sharing -t); rows say \"cpu tp N\"\n"
    "  --output md|csv|json     table format on stdout (default md)\n"
    "  --seed S                 seed of the random prompt tokens (default 1)\n"
    "  --no-ceilings            skip measuring the read bandwidth and GEMM ceilings that\n"
    "                           the rows are compared with\n"
    "  --profile                also time one step of each test op class by op class\n"
    "                           (attention, matmul, norm, other), waiting for the device\n"
    "                           after every op\n"
    "  Use 0 in -p or -n to skip that kind of test.\n";

typedef struct bench_options {
    const char *model_dir;
    const char *config_path; /* --config: a shape without a checkpoint */
    int random_weights;
    int profile; /* --profile: one step of each test op class by op class */
    int no_ceilings;
    int_list n_prompt, n_gen, n_depth, batch, threads;
    int repetitions;
    int use_backend[CINFER_BACKEND_COUNT];
    int use_dtype[CINFER_DTYPE_COUNT];         /* CUDA rows */
    int use_attention[CINFER_ATTENTION_COUNT]; /* CUDA rows */
    int device;
    int tp; /* --tp: tensor-parallel ranks of every row */
    output_format output;
    uint64_t seed;
} bench_options;

/* One row of the table: a test on one configuration, with every timed repetition. */
typedef struct bench_row {
    const char *backend, *dtype, *attention;
    int n_threads; /* 0: OpenMP's default */
    int n_prompt, n_gen, n_depth, batch;
    int repetitions;
    double *seconds; /* [repetitions] */
    double mean_tps, std_tps;
    /* against the hardware: for tg the bytes a step reads (weights + KV cache) per second, for pp
     * the FLOP/s of its linear layers; beside the ceilings measured in the same run */
    double achieved_bytes_per_s, achieved_flops;
    bench_ceilings ceilings;
    cinfer_profile profile; /* with --profile: one step (the prompt, or one decode step) */
    double profile_step_seconds;
} bench_row;

static int bench_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "cinfer bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", bench_usage_text);
    return EXIT_USAGE;
}

static int parse_bench_options(int argc, char **argv, bench_options *o) {
    *o = (bench_options){.n_prompt = {1, {512}},
                         .n_gen = {1, {128}},
                         .n_depth = {1, {0}},
                         .batch = {1, {1}},
                         .threads = {1, {0}},
                         .repetitions = 5,
                         .use_backend = {1, 0},
                         .use_dtype = {0, 1, 0},
                         .use_attention = {1, 0, 0, 0},
                         .tp = 1,
                         .output = OUTPUT_MD,
                         .seed = 1};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(bench_usage_text, stdout);
            fputs("\n", stdout);
            fputs(bench_serve_usage_text, stdout);
            return -1;
        }
        if (strcmp(flag, "--random-weights") == 0 || strcmp(flag, "--profile") == 0 ||
            strcmp(flag, "--no-ceilings") == 0) {
            *(flag[2] == 'r'   ? &o->random_weights
              : flag[2] == 'p' ? &o->profile
                               : &o->no_ceilings) = 1;
            continue;
        }
        if (i + 1 >= argc) return bench_usage("option '%s' needs a value", flag);
        const char *value = argv[++i];
        int launch_status;
        if (value && parse_tp_launch_option(flag, value, &launch_status)) {
            if (launch_status) return launch_status;
            continue;
        }
#define IS(short_flag, long_flag) (strcmp(flag, short_flag) == 0 || strcmp(flag, long_flag) == 0)
        if (IS("-m", "--model")) {
            o->model_dir = value;
        } else if (strcmp(flag, "--config") == 0) {
            o->config_path = value;
        } else if (IS("-p", "--n-prompt")) {
            if (parse_int_list(value, 0, 1 << 20, &o->n_prompt))
                return bench_usage("-p needs integers >= 0 separated by commas, got '%s'", value);
        } else if (IS("-n", "--n-gen")) {
            if (parse_int_list(value, 0, 1 << 20, &o->n_gen))
                return bench_usage("-n needs integers >= 0 separated by commas, got '%s'", value);
        } else if (IS("-d", "--n-depth")) {
            if (parse_int_list(value, 0, 1 << 22, &o->n_depth))
                return bench_usage("-d needs integers >= 0 separated by commas, got '%s'", value);
        } else if (IS("-b", "--batch-size")) {
            if (parse_int_list(value, 1, CINFER_MAX_SEQS, &o->batch))
                return bench_usage("-b needs integers in [1, 512] separated by commas, got '%s'",
                                   value);
        } else if (IS("-t", "--threads")) {
            if (parse_int_list(value, 1, 4096, &o->threads))
                return bench_usage("-t needs integers in [1, 4096] separated by commas, got '%s'",
                                   value);
        } else if (IS("-r", "--repetitions")) {
            if (parse_int(value, 1, 1000, &o->repetitions))
                return bench_usage("-r needs one integer in [1, 1000], got '%s'", value);
        } else if (strcmp(flag, "--seed") == 0) {
            int seed;
            if (parse_int(value, 0, 2147483647, &seed))
                return bench_usage("--seed needs one non-negative integer, got '%s'", value);
            o->seed = (uint64_t)seed;
        } else if (strcmp(flag, "--output") == 0 || strcmp(flag, "-o") == 0) {
            if (parse_output_format(value, &o->output))
                return bench_usage("--output needs md, csv or json, got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0) {
            if (parse_enum_list(value, backend_by_name, CINFER_BACKEND_COUNT, o->use_backend))
                return bench_usage("--backend needs cpu and/or cuda separated by commas, got '%s'",
                                   value);
        } else if (strcmp(flag, "--dtype") == 0) {
            if (parse_enum_list(value, dtype_by_name, CINFER_DTYPE_COUNT, o->use_dtype))
                return bench_usage(
                    "--dtype needs f32, bf16 and/or fp16 separated by commas, got '%s'", value);
        } else if (strcmp(flag, "--attn") == 0) {
            if (parse_enum_list(value, attention_by_name, CINFER_ATTENTION_COUNT, o->use_attention))
                return bench_usage(
                    "--attn needs auto, eager, sdpa and/or flash separated by commas, got '%s'",
                    value);
        } else if (strcmp(flag, "--device") == 0) {
            if (parse_int(value, 0, 1023, &o->device))
                return bench_usage("--device needs one GPU index >= 0, got '%s'", value);
        } else if (strcmp(flag, "--tp") == 0) {
            if (parse_int(value, 1, 256, &o->tp))
                return bench_usage("--tp needs one number of tensor-parallel ranks in [1, 256], "
                                   "got '%s'",
                                   value);
        } else {
            return bench_usage("unknown option '%s'", flag);
        }
#undef IS
    }
    if (!o->model_dir == !o->config_path)
        return bench_usage("%s", "give one of --model DIR or --config config.json");
    if (o->config_path && !o->random_weights)
        return bench_usage("%s", "--config measures a shape: add --random-weights");
    return 0;
}

/* The drawn ids of every sequence: sequence b's are ids[b · n_ctx ..]. gather_tokens copies
 * tokens [first, first + n) of each into out as [n_seqs, n], what forward_batch takes. */
typedef struct bench_tokens {
    const int32_t *ids;
    int n_ctx, n_seqs;
    int32_t *scratch; /* [n_seqs · n_ctx] */
} bench_tokens;

static const int32_t *gather_tokens(const bench_tokens *t, int first, int n) {
    for (int b = 0; b < t->n_seqs; b++)
        memcpy(t->scratch + (size_t)b * (size_t)n, t->ids + (size_t)b * (size_t)t->n_ctx + first,
               (size_t)n * sizeof *t->ids);
    return t->scratch;
}

/* Fills `depth` tokens of every sequence into a reset session, untimed. */
static cinfer_status fill_depth(cinfer_session *session, const bench_tokens *t, int depth) {
    cinfer_session_reset(session);
    if (depth == 0) return CINFER_OK;
    return cinfer_session_forward_batch(session, gather_tokens(t, 0, depth), depth,
                                        CINFER_LOGITS_NONE, NULL);
}

/* One run of a test on a reset session: fills `depth` tokens untimed, then times the test. */
static cinfer_status run_once(cinfer_session *session, const bench_tokens *t, int depth,
                              int n_prompt, int n_gen, float *logits, double *seconds) {
    CI_TRY(fill_depth(session, t, depth));
    /* ids are gathered outside the timed region: the prompts, and every decode step's ids */
    const int32_t *prompts = n_prompt > 0 ? gather_tokens(t, depth, n_prompt) : NULL;
    const int32_t *steps = n_prompt > 0 ? NULL : gather_tokens(t, depth, n_gen);
    int32_t *step_ids = t->scratch + (size_t)t->n_seqs * (size_t)n_gen,
            *next = step_ids + t->n_seqs;
    const double start = ci_now_seconds();
    CI_TRY(cinfer_session_mark(session, 0));
    if (n_prompt > 0)
        CI_TRY(
            cinfer_session_forward_batch(session, prompts, n_prompt, CINFER_LOGITS_LAST, logits));
    /* decode as generation does (on a GPU: a recorded graph, argmax on the device), feeding the
     * drawn ids rather than the argmax so that every run decodes the same tokens */
    for (int i = 0; i < n_gen; i++) {
        for (int b = 0; b < t->n_seqs; b++) step_ids[b] = steps[(size_t)b * (size_t)n_gen + i];
        CI_TRY(cinfer_session_decode_greedy(session, step_ids, next));
    }
    /* device time from the first op to the last (CUDA events; the host clock on the CPU); the
     * host's if a mark could not be had */
    CI_TRY(cinfer_session_mark(session, 1));
    *seconds = cinfer_session_seconds_between(session, 0, 1);
    if (!isfinite(*seconds)) *seconds = ci_now_seconds() - start;
    return CINFER_OK;
}

/* One step of the test with every op timed: the whole prompts for pp, one token of each sequence
 * for tg (run as a plain forward pass: a recorded graph's ops cannot be timed one by one). */
static cinfer_status profile_once(cinfer_session *session, const bench_tokens *t, bench_row *row,
                                  float *logits) {
    CI_TRY(fill_depth(session, t, row->n_depth));
    const int n_step = row->n_prompt > 0 ? row->n_prompt : 1;
    const int32_t *ids = gather_tokens(t, row->n_depth, n_step);
    CI_TRY(cinfer_session_profile_start(session));
    double start = ci_now_seconds();
    cinfer_status status =
        cinfer_session_forward_batch(session, ids, n_step, CINFER_LOGITS_LAST, logits);
    row->profile_step_seconds = ci_now_seconds() - start;
    CI_TRY(cinfer_session_profile_stop(session, &row->profile));
    if (row->profile.dropped)
        fprintf(stderr, "cinfer bench: --profile: %d ops left untimed (out of memory)\n",
                row->profile.dropped);
    return status;
}

/* What one token of the row's test moves or computes, from the model's shape. A decode step of B
 * sequences reads every weight once (the embedding table only B rows, unless it doubles as
 * lm_head) and each sequence's KV cache up to its position; per token that is the weights / B
 * plus one cache. Prefill's FLOPs are its linear layers' (attention's are left out), with lm_head
 * once per prompt, B prompts: per token the same as for one. */
static void roofline(bench_row *row, const cinfer_model_info *info, const cinfer_model *model,
                     double weight_element_bytes) {
    const double V = info->vocab_size, E = info->hidden_size;
    cinfer_model_config config;
    cinfer_model_get_config(model, &config);
    const int tied = config.tie_word_embeddings;
    const double table = V * E;
    const double linear_params = (double)info->n_params - table * (tied ? 1 : 2);
    if (row->n_gen > 0) {
        double weights = ((double)info->n_params - (tied ? 0 : table)) * weight_element_bytes;
        weights /= row->batch;
        double kv = (double)info->kv_bytes_per_token * (row->n_depth + row->n_gen / 2.0);
        row->achieved_bytes_per_s = (weights + kv) * row->mean_tps;
    } else {
        double flops = 2.0 * linear_params + 2.0 * table / row->n_prompt;
        row->achieved_flops = flops * row->mean_tps;
    }
}

static void summarize(bench_row *row) {
    const int tokens = row->batch * (row->n_prompt > 0 ? row->n_prompt : row->n_gen);
    double sum = 0, sum_sq = 0;
    for (int r = 0; r < row->repetitions; r++) {
        double tps = tokens / row->seconds[r];
        sum += tps;
        sum_sq += tps * tps;
    }
    row->mean_tps = sum / row->repetitions;
    double variance = row->repetitions > 1
                          ? (sum_sq - sum * sum / row->repetitions) / (row->repetitions - 1)
                          : 0.0;
    row->std_tps = variance > 0 ? sqrt(variance) : 0.0;
}

static void test_name(const bench_row *row, char *buf, size_t size) {
    int n = row->n_prompt > 0 ? snprintf(buf, size, "pp%d", row->n_prompt)
                              : snprintf(buf, size, "tg%d", row->n_gen);
    if (row->n_depth > 0 && n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, " @ d%d", row->n_depth);
}

static void human_count(double count, char *buf, size_t size) {
    const char *units[] = {"", "K", "M", "B", "T"};
    int u = 0;
    while (count >= 1000.0 && u < 4) count /= 1000.0, u++;
    snprintf(buf, size, "%.2f%s%s", count, *units[u] ? " " : "", units[u]);
}

/* "23.1 GB/s = 77% of 30.0" for decode, "1.20 TFLOP/s = 61% of 1.97" for prefill. */
static void against_ceiling(const bench_row *r, char *buf, size_t size) {
    if (r->achieved_bytes_per_s > 0) {
        int n = snprintf(buf, size, "%.1f GB/s", r->achieved_bytes_per_s / 1e9);
        if (r->ceilings.bytes_per_s > 0 && n > 0 && (size_t)n < size)
            snprintf(buf + n, size - (size_t)n, " = %.0f%% of %.1f",
                     100.0 * r->achieved_bytes_per_s / r->ceilings.bytes_per_s,
                     r->ceilings.bytes_per_s / 1e9);
    } else {
        int n = snprintf(buf, size, "%.3f TFLOP/s", r->achieved_flops / 1e12);
        if (r->ceilings.flops > 0 && n > 0 && (size_t)n < size)
            snprintf(buf + n, size - (size_t)n, " = %.0f%% of %.1f",
                     100.0 * r->achieved_flops / r->ceilings.flops, r->ceilings.flops / 1e12);
    }
}

static void print_rows(const bench_options *o, const cinfer_model_info *info, const bench_row *rows,
                       int n_rows) {
    char model[512], test[64], size[32], params[32];
    bench_model_label(o->config_path ? o->config_path : o->model_dir, o->random_weights, model,
                      sizeof model);
    format_bytes((double)info->weight_bytes, size, sizeof size);
    human_count((double)info->n_params, params, sizeof params);
    if (o->output == OUTPUT_MD) {
        printf("| model | arch | size | params | backend | dtype | attn | threads | batch | test "
               "| t/s | against the ceiling |\n");
        printf(
            "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
        for (int i = 0; i < n_rows; i++) {
            const bench_row *r = &rows[i];
            test_name(r, test, sizeof test);
            char threads[16];
            if (r->n_threads > 0)
                snprintf(threads, sizeof threads, "%d", r->n_threads);
            else
                snprintf(threads, sizeof threads, "default");
            char against[96];
            against_ceiling(r, against, sizeof against);
            printf("| %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %.2f ± %.2f | %s |\n",
                   model, info->architecture, size, params, r->backend, r->dtype, r->attention,
                   threads, r->batch, test, r->mean_tps, r->std_tps, against);
        }
        const char *how = NULL;
        for (int i = 0; i < n_rows; i++)
            if (rows[i].ceilings.how) how = rows[i].ceilings.how;
        if (how)
            printf("\nCeilings measured in this run: %s. Decode: weights and KV cache read per "
                   "token x t/s; prefill: FLOP/s of the linear layers.\n",
                   how);
        if (o->profile) {
            printf("\nOne step per test, each op timed on the device between two marks, "
                   "the host never waiting between ops (--profile); "
                   "step ms is the host's time for the step:\n\n");
            printf("| backend | dtype | test | step ms | attention | matmul | norm | other |\n");
            printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for (int i = 0; i < n_rows; i++) {
                const bench_row *r = &rows[i];
                test_name(r, test, sizeof test);
                printf("| %s | %s | %s | %.3f |", r->backend, r->dtype, test,
                       1e3 * r->profile_step_seconds);
                for (int c = 0; c < CINFER_OP_CLASS_COUNT; c++)
                    printf(" %.3f ms (%.0f%%) |", 1e3 * r->profile.seconds[c],
                           100.0 * r->profile.seconds[c] / r->profile_step_seconds);
                printf("\n");
            }
        }
    } else if (o->output == OUTPUT_CSV) {
        printf("model,arch,weight_bytes,n_params,backend,dtype,attn,n_threads,batch,test,n_prompt,"
               "n_gen,n_depth,repetitions,mean_tps,std_tps,seconds,achieved_bytes_per_s,"
               "ceiling_bytes_per_s,achieved_flops,ceiling_flops%s\n",
               o->profile ? ",step_ms,attention_ms,matmul_ms,norm_ms,other_ms" : "");
        for (int i = 0; i < n_rows; i++) {
            const bench_row *r = &rows[i];
            test_name(r, test, sizeof test);
            print_csv_field(model);
            printf(",%s,%lld,%lld,%s,%s,%s,%d,%d,%s,%d,%d,%d,%d,%.6g,%.6g,\"", info->architecture,
                   (long long)info->weight_bytes, (long long)info->n_params, r->backend, r->dtype,
                   r->attention, r->n_threads, r->batch, test, r->n_prompt, r->n_gen, r->n_depth,
                   r->repetitions, r->mean_tps, r->std_tps);
            for (int k = 0; k < r->repetitions; k++) printf("%s%.6g", k ? ";" : "", r->seconds[k]);
            printf("\",%.6g,%.6g,%.6g,%.6g", r->achieved_bytes_per_s, r->ceilings.bytes_per_s,
                   r->achieved_flops, r->ceilings.flops);
            if (o->profile) {
                printf(",%.6g", 1e3 * r->profile_step_seconds);
                for (int c = 0; c < CINFER_OP_CLASS_COUNT; c++)
                    printf(",%.6g", 1e3 * r->profile.seconds[c]);
            }
            printf("\n");
        }
    } else {
        cJSON *array = cJSON_CreateArray();
        for (int i = 0; array && i < n_rows; i++) {
            const bench_row *r = &rows[i];
            test_name(r, test, sizeof test);
            cJSON *item = cJSON_CreateObject();
            cJSON_AddItemToArray(array, item);
            cJSON_AddStringToObject(item, "model", model);
            cJSON_AddStringToObject(item, "arch", info->architecture);
            cJSON_AddNumberToObject(item, "weight_bytes", (double)info->weight_bytes);
            cJSON_AddNumberToObject(item, "n_params", (double)info->n_params);
            cJSON_AddStringToObject(item, "backend", r->backend);
            cJSON_AddStringToObject(item, "dtype", r->dtype);
            cJSON_AddStringToObject(item, "attn", r->attention);
            cJSON_AddNumberToObject(item, "n_threads", r->n_threads);
            cJSON_AddNumberToObject(item, "tensor_parallel", info->tensor_parallel);
            cJSON_AddNumberToObject(item, "batch", r->batch);
            cJSON_AddStringToObject(item, "test", test);
            cJSON_AddNumberToObject(item, "n_prompt", r->n_prompt);
            cJSON_AddNumberToObject(item, "n_gen", r->n_gen);
            cJSON_AddNumberToObject(item, "n_depth", r->n_depth);
            cJSON_AddNumberToObject(item, "repetitions", r->repetitions);
            cJSON_AddNumberToObject(item, "mean_tps", r->mean_tps);
            cJSON_AddNumberToObject(item, "std_tps", r->std_tps);
            cJSON_AddItemToObject(item, "seconds",
                                  cJSON_CreateDoubleArray(r->seconds, r->repetitions));
            cJSON_AddNumberToObject(item, "achieved_bytes_per_s", r->achieved_bytes_per_s);
            cJSON_AddNumberToObject(item, "ceiling_bytes_per_s", r->ceilings.bytes_per_s);
            cJSON_AddNumberToObject(item, "achieved_flops", r->achieved_flops);
            cJSON_AddNumberToObject(item, "ceiling_flops", r->ceilings.flops);
            if (o->profile) {
                cJSON *profile = cJSON_AddObjectToObject(item, "profile");
                cJSON_AddNumberToObject(profile, "step_ms", 1e3 * r->profile_step_seconds);
                for (int c = 0; c < CINFER_OP_CLASS_COUNT; c++) {
                    char key[32];
                    snprintf(key, sizeof key, "%s_ms", cinfer_op_class_name((cinfer_op_class)c));
                    cJSON_AddNumberToObject(profile, key, 1e3 * r->profile.seconds[c]);
                }
            }
        }
        print_json_rows(array);
    }
    fflush(stdout);
}

/* The tests the options ask for, in llama-bench's order: every pp, then every tg, per depth. */
static int plan_tests(const bench_options *o, int tests[][2]) {
    int n = 0;
    for (int i = 0; i < o->n_prompt.n; i++)
        if (o->n_prompt.values[i] > 0) tests[n][0] = o->n_prompt.values[i], tests[n++][1] = 0;
    for (int i = 0; i < o->n_gen.n; i++)
        if (o->n_gen.values[i] > 0) tests[n][0] = 0, tests[n++][1] = o->n_gen.values[i];
    return n;
}

/* One way to run the model: a backend with its dtype, attention and threads. The CPU reference
 * computes in f32 from the weights as stored, with its own attention, whatever --dtype and
 * --attn say; they pick the CUDA rows. */
typedef struct run_config {
    cinfer_load_options load;
    const char *backend, *dtype, *attention;
    char backend_label[32]; /* "cpu tp 2": what backend points at with --tp */
} run_config;

/* a CPU row per -t value, a CUDA row per dtype and attention kind */
enum { MAX_CONFIGS = MAX_LIST + CINFER_DTYPE_COUNT * CINFER_ATTENTION_COUNT };

static int plan_configs(const bench_options *o, run_config *configs) {
    int n = 0;
    if (o->use_backend[CINFER_BACKEND_CPU])
        for (int t = 0; t < o->threads.n; t++)
            configs[n++] =
                (run_config){{.backend = CINFER_BACKEND_CPU, .n_threads = o->threads.values[t]},
                             cinfer_backend_name(CINFER_BACKEND_CPU),
                             cinfer_dtype_name(CINFER_DTYPE_F32),
                             "reference",
                             ""};
    if (o->use_backend[CINFER_BACKEND_CUDA])
        for (int d = 0; d < CINFER_DTYPE_COUNT; d++)
            for (int a = 0; a < CINFER_ATTENTION_COUNT; a++)
                if (o->use_dtype[d] && o->use_attention[a])
                    configs[n++] = (run_config){{.backend = CINFER_BACKEND_CUDA,
                                                 .dtype = (cinfer_dtype)d,
                                                 .attention = (cinfer_attention)a,
                                                 .device = o->device},
                                                cinfer_backend_name(CINFER_BACKEND_CUDA),
                                                cinfer_dtype_name((cinfer_dtype)d),
                                                cinfer_attention_name((cinfer_attention)a),
                                                ""};
    for (int c = 0; o->tp > 1 && c < n; c++) {
        configs[c].load.tensor_parallel = o->tp;
        snprintf(configs[c].backend_label, sizeof configs[c].backend_label, "%s tp %d",
                 configs[c].backend, o->tp);
        configs[c].backend = configs[c].backend_label;
    }
    return n;
}

static cinfer_status load_model(const bench_options *o, const cinfer_load_options *load,
                                cinfer_model **model) {
    if (!o->random_weights) return program_load_model(o->model_dir, load, model);
    char path[4096];
    if (o->config_path)
        snprintf(path, sizeof path, "%s", o->config_path);
    else
        snprintf(path, sizeof path, "%s/config.json", o->model_dir);
    return cinfer_model_load_random(path, load, o->seed, model);
}

static int bench_main(int argc, char **argv) {
    if (bench_serve_wanted(argc, argv)) return bench_serve_main(argc, argv);
    bench_options o;
    int usage = parse_bench_options(argc, argv, &o);
    if (usage) return usage < 0 ? 0 : usage; /* -1: help was asked for and printed */

    int tests[2 * MAX_LIST][2];
    const int n_tests = plan_tests(&o, tests);
    if (n_tests == 0) return bench_usage("%s", "nothing to measure: -p and -n are both 0");
    run_config configs[MAX_CONFIGS];
    const int n_configs = plan_configs(&o, configs);
    const int n_rows_max = n_tests * o.n_depth.n * n_configs * o.batch.n;
    bench_row *rows = calloc((size_t)n_rows_max, sizeof *rows);
    double *seconds = calloc((size_t)n_rows_max * (size_t)o.repetitions, sizeof *seconds);
    int n_rows = 0, status = EXIT_ERROR;
    cinfer_model *model = NULL;
    cinfer_session *session = NULL;
    int32_t *tokens = NULL, *token_scratch = NULL;
    float *logits = NULL;
    cinfer_model_info info = {0};
    if (!rows || !seconds) {
        fprintf(stderr, "cinfer bench: error: out of memory\n");
        goto done;
    }

    for (int c = 0; c < n_configs; c++) {
        const run_config *config = &configs[c];
        cinfer_session_free(session);
        cinfer_model_free(model);
        session = NULL;
        if (load_model(&o, &config->load, &model) != CINFER_OK) goto fail;
        info = *cinfer_model_get_info(model);
        const int on_gpu = config->load.backend == CINFER_BACKEND_CUDA;
        /* what a weight costs to read: as stored on the CPU, in the run dtype on a GPU */
        const double weight_element_bytes =
            on_gpu ? (config->load.dtype == CINFER_DTYPE_F32 ? 4.0 : 2.0)
                   : (double)info.weight_bytes / (double)info.n_params;
        bench_ceilings ceilings = {0.0, 0.0, NULL};
        if (!o.no_ceilings) {
            cinfer_status measured =
                on_gpu ? bench_cuda_ceilings(config->load.device, config->load.dtype, &ceilings)
                       : bench_cpu_ceilings(config->load.n_threads, &ceilings);
            if (measured != CINFER_OK)
                fprintf(stderr, "cinfer bench: ceilings not measured: %s\n", cinfer_last_error());
        }

        /* sessions sized for the longest test at the deepest depth */
        int n_ctx = 1, max_batch = 1;
        for (int d = 0; d < o.n_depth.n; d++)
            for (int k = 0; k < n_tests; k++) {
                int need = o.n_depth.values[d] + tests[k][0] + tests[k][1];
                if (need > n_ctx) n_ctx = need;
            }
        for (int b = 0; b < o.batch.n; b++)
            if (o.batch.values[b] > max_batch) max_batch = o.batch.values[b];
        free(tokens);
        free(token_scratch);
        free(logits);
        /* sequence-major: the first B·n_ctx of these ids are what a batch of B reads */
        const size_t n_ids = (size_t)max_batch * (size_t)n_ctx;
        tokens = malloc(n_ids * sizeof *tokens);
        token_scratch = malloc((n_ids + 2 * (size_t)max_batch) * sizeof *token_scratch);
        logits = malloc((size_t)max_batch * (size_t)info.vocab_size * sizeof *logits);
        if (!tokens || !token_scratch || !logits) {
            fprintf(stderr, "cinfer bench: error: out of memory for %d x %d tokens\n", max_batch,
                    n_ctx);
            goto done;
        }
        uint64_t state = o.seed;
        for (size_t i = 0; i < n_ids; i++)
            tokens[i] = (int32_t)(ci_splitmix64(&state) % (uint64_t)info.vocab_size);

        for (int b = 0; b < o.batch.n; b++) {
            const int batch = o.batch.values[b];
            cinfer_session_free(session);
            session = NULL;
            if (cinfer_session_create_batch(model, n_ctx, batch, &session) != CINFER_OK) goto fail;
            const bench_tokens ids = {tokens, n_ctx, batch, token_scratch};
            for (int d = 0; d < o.n_depth.n; d++) {
                for (int k = 0; k < n_tests; k++) {
                    bench_row *row = &rows[n_rows];
                    *row = (bench_row){.backend = config->backend,
                                       .dtype = config->dtype,
                                       .attention = info.attention, /* auto resolved */
                                       .n_threads = config->load.n_threads,
                                       .n_prompt = tests[k][0],
                                       .n_gen = tests[k][1],
                                       .n_depth = o.n_depth.values[d],
                                       .batch = batch,
                                       .repetitions = o.repetitions,
                                       .seconds = seconds + (size_t)n_rows * (size_t)o.repetitions};
                    double warm_up;
                    if (run_once(session, &ids, row->n_depth, row->n_prompt, row->n_gen, logits,
                                 &warm_up) != CINFER_OK)
                        goto fail;
                    for (int r = 0; r < o.repetitions; r++)
                        if (run_once(session, &ids, row->n_depth, row->n_prompt, row->n_gen, logits,
                                     &row->seconds[r]) != CINFER_OK)
                            goto fail;
                    summarize(row);
                    roofline(row, &info, model, weight_element_bytes);
                    row->ceilings = ceilings;
                    if (o.profile && profile_once(session, &ids, row, logits) != CINFER_OK)
                        goto fail;
                    n_rows++;
                }
            }
        }
    }
    print_rows(&o, &info, rows, n_rows);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "cinfer bench: error: %s\n", cinfer_last_error());
done:
    free(tokens);
    free(token_scratch);
    free(logits);
    cinfer_session_free(session);
    cinfer_model_free(model);
    free(seconds);
    free(rows);
    return status;
}
