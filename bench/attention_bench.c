/* bench_attention: the attention ops alone, per kind (eager, sdpa, flash), on one GPU.
 *
 *   build/bench_attention [--attn eager,sdpa,flash] [--head-dim 64,128] [--seq 512,...,16384]
 *                         [--heads 32] [--kv-heads 8] [--dtype bf16] [--mode prefill,decode]
 *                         [--variant standard,diff] [-r 5] [--output md|csv|json]
 *   build/bench_attention --check-memory --seq 4096 --head-dim 128     (see "memory" below)
 *
 * What a row is. Random q [T, H, D] (F32, as the model hands it over after RoPE) and K/V caches
 * [S, G, D] in --dtype, S = seq, all in device memory; one call of be->ops->attention (standard)
 * or be->ops->diff_attention (differential) with be->attention set to the row's kind:
 *   prefill  T = S queries at pos0 = 0: the whole causal triangle;
 *   decode   T = 1 query at pos0 = S − 1: one new token over a cache of S.
 * One warm-up call, then -r repetitions, each `--calls` calls (default 1 for prefill, 20 for
 * decode, whose calls last microseconds) between two CUDA events on the backend's stream; a row
 * shows the mean ± sd of the milliseconds per call. The output is copied back once and checked for
 * non-finite values. A row whose workspace cannot be had (eager's score chunks at long contexts,
 * if device memory is short) is printed as skipped, with the reason, rather than failing the run;
 * so is a row whose kind does not run its head dim, variant and dtype on this device (asked of
 * ci_cuda_attention_supports, the check the engine makes when it loads a model).
 *
 * FLOPs (causal; a multiply-add counts as 2). The queries of a call see
 *   n_visible = Σ_t (pos0 + t + 1) = T·pos0 + T(T+1)/2        keys in all (prefill: S(S+1)/2)
 *   standard:      per query head, Q·Kᵀ over D and P·V over D   → 2·D + 2·D per visible key
 *                  FLOPs = 4 · H · D · n_visible
 *   differential:  both maps' Q·Kᵀ over D (H heads in all), and each map's P·Vcat over 2·D
 *                  FLOPs = (2·D + 2·2·D) · H · n_visible = 6 · H · D · n_visible
 * (the epilogue's O(T·H·D) is left out). The masked upper triangle is not counted: a kernel that
 * computes it anyway gets no credit for it. scripts/bench_attention.py uses the same formulas.
 *
 * Decode K/V bandwidth: the least a call must read is every cache row of every KV head once,
 *   kv_bytes = 2 · S · G · D · sizeof(dtype),   the same for the differential variant (its pairs
 * together read every KV head's K and V: Vcat_p spans V_kv(p) and V_kv(p+P)); GB/s = kv_bytes per
 * call time. With the L2 warm (the default), caches smaller than the L2 (50 MiB on H100/H200:
 * S ≤ 6144 at G = 8, D = 128, bf16) are served from it: --flush-l2 overwrites 256 MiB on the
 * stream before every repetition, outside the events.
 *
 * K/V bytes one head pair reads, differential attention (issue 4, part 6). S keys, D head dim,
 * b bytes per cache element, per pass over the keys (decode: the call; prefill: one query tile,
 * the same factor S/Br·½ multiplies all three); the pair's two query heads p and p+P read KV heads
 * kv(p) ≠ kv(p+P) (H = 32, G = 8: p/4 and p/4 + 4):
 *   cinfer flash, one pass per pair: both K tiles and the Vcat tile, each streamed once and
 *     used by both maps:                              K 2·S·D·b + V 2·S·D·b = 4·S·D·b
 *   transformers 5.x (DiffLlamaAttention, every _attn_implementation: sdpa and flash_attention_2
 *     alike): two attention calls over all H heads, call i with V_i, one D-wide half of Vcat
 *     (V's KV heads split in two, each half repeated back to G heads); in each call each query
 *     head reads K_kv(h) and its V half:                 2 calls · 2 heads · 2·S·D·b = 8·S·D·b
 *   transformers 4.x sdpa path (DiffLlamaSdpaAttention): one SDPA call with K repeated to H heads
 *     and Vcat (2·D wide) repeated to H heads; each query head reads its K and the whole Vcat
 *                                                        2 heads · (S·D + 2·S·D)·b = 6·S·D·b
 *   D = 128, S = 4096, bf16 (b = 2): 4 MiB (cinfer) vs 8 MiB (two calls, 2×) vs 6 MiB (4.x's
 *   one call, 1.5×) per pair and pass. Both transformers paths also write copies once per
 *   forward, which the per-pass figures leave out: 5.x the two repeated V halves, 2·G·S·D·b =
 *   16 MiB at G = 8 (K and V are not repeated per query head: its sdpa dispatch passes
 *   enable_gqa=True when there is no mask, flash-attn takes GQA natively); 4.x repeat_kv's K and V
 *   as [H, S, D] and Vcat repeated as [H, S, 2·D], 4·H·S·D·b = 128 MiB at H = 32 (and its V wider
 *   than Q keeps SDPA off its flash kernel). Under GQA a kernel that runs query heads
 *   independently re-reads each KV head g = H/G times from global memory (the L2 may absorb it);
 *   that factor is the same on every side of the comparison above.
 *
 * Memory (--check-memory): "no score matrix in global memory", shown as far as a benchmark can.
 * For every kind and shape asked for, a child process (this program, re-run with a hidden
 * --probe-workspace) makes one backend with the workspace the kind asks for (workspace_bytes) and
 * runs the call there for a reference, then a second backend whose workspace is a real allocation
 * of HALF of one [H, S] F32 score row (H·S·2 bytes), reads cudaMemGetInfo, runs the same call,
 * reads it again, and compares the two outputs. Eager must fail (its scores need at least one row
 * per chunk: it asserts and the child dies with its message); sdpa and flash must run and give the
 * same output, with no change in free device memory. What this proves: the op neither needs the
 * backend's workspace for scores, nor keeps any allocation it made. What it does not prove: that a
 * kernel never writes an O(S²) buffer it got elsewhere (a __device__ array sized at compile time,
 * or memory allocated and freed inside the call, which cudaMemGetInfo before and after cannot
 * see), nor that it stays inside the small buffer (cudaMalloc rounds up to its 2 MiB granule, so a
 * write past the end need not fault). For those, run the check under
 * `compute-sanitizer --tool memcheck` (bounds of every allocation, exact) and count DRAM writes:
 *   ncu --metrics dram__bytes_write.sum build/bench_attention --attn flash --seq 4096 -r 1 ...
 * which for sdpa/flash prefill should be about the output, T·H·D·4 bytes (64 MiB at S = 4096,
 * H = 32, D = 128), against at least H·S(S+1)/2·4 bytes (1 GiB) of scores for eager; and
 * `cuobjdump -res-usage` (or nvcc -Xptxas -v) shows whether a kernel has static global memory.
 *
 * Without a CUDA device the program says "no CUDA device" and exits 0: it is not a test. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../kernels/backend.h"
#include "../common/clock.h"
#include "../kernels/device.h"
#include "../common/error.h"
#include "../common/splitmix.h"
#include "attention_timer.h"
#include "../programs/option_lists.h"

enum { EXIT_ERROR = 1, EXIT_USAGE = 2 };
/* The most rows the lists allow: head dims × seqs × dtypes × variants × modes × kinds. */
enum { MAX_ROWS = MAX_LIST * MAX_LIST * 3 * 2 * 2 * 3 };

/* Differential attention's scalars: any finite values time the same; these are layer 0's
 * lambda_init (docs/MODEL_MATH.md) and a lambda of the size trained checkpoints have. */
static const float DIFF_LAMBDA = 0.5f, DIFF_LAMBDA_INIT = 0.2f, DIFF_EPS = 1e-5f;
/* Calls per timed repetition when --calls is not given. */
enum { PREFILL_CALLS = 1, DECODE_CALLS = 20 };
/* Several times the L2 (50 MiB on H100/H200), so that overwriting it evicts everything. */
static const size_t L2_FLUSH_BYTES = (size_t)256 << 20;
/* Two outputs of the same call agree to this (they are O(1): softmax weights of values in
 * [−1, 1], or an RMS-normalized difference); split-K reductions may add in another order. */
static const double SAME_OUTPUT_TOLERANCE = 1e-3;

static const char *usage_text =
    "usage: bench_attention [options]\n"
    "\n"
    "  --attn eager,sdpa,flash   attention kinds to measure (default all three)\n"
    "  --head-dim N,N,...        head dims (default 64,128)\n"
    "  --seq N,N,...             context lengths S (default 512,1024,2048,4096,8192,16384)\n"
    "  --heads H                 query heads (default 32)\n"
    "  --kv-heads G              KV heads, GQA (default 8)\n"
    "  --dtype f32,bf16,fp16     KV cache dtype(s) (default bf16); q and out are F32\n"
    "  --mode prefill,decode     prefill: T = S queries at pos0 0; decode: T = 1 at pos0 S-1\n"
    "                            (default prefill)\n"
    "  --variant standard,diff   standard and/or differential attention (default both)\n"
    "  -r, --repetitions N       timed repetitions after one warm-up (default 5)\n"
    "  --calls N                 calls per repetition (default 1 prefill, 20 decode)\n"
    "  --flush-l2                overwrite 256 MiB before every repetition (cold L2)\n"
    "  --output md|csv|json      table format on stdout (default md)\n"
    "  --device N                the GPU (default 0)\n"
    "  --seed S                  seed of the random q, K, V (default 1)\n"
    "  --backend cuda|cpu        cpu: the CPU reference op (f32 caches only), timed by the\n"
    "                            wall clock: for checking this program without a GPU\n"

    "  --check-memory            instead of timing: run every kind with a workspace below one\n"
    "                            [H, S] score row (see the comment at the top of\n"
    "                            bench/attention_bench.c for what that shows)\n";

/* The attention kinds measured, by position: kind k is CINFER_ATTENTION_EAGER + k (auto picks one
 * of them when a model loads; it is no kind of its own). Kinds and cache dtypes are named as
 * cinfer.h's tables name them. */
enum { N_KINDS = CINFER_ATTENTION_COUNT - CINFER_ATTENTION_EAGER };
static const char *kind_name(int kind) {
    return cinfer_attention_name((cinfer_attention)(CINFER_ATTENTION_EAGER + kind));
}
static const char *dtype_name(int dtype) { return cinfer_dtype_name((cinfer_dtype)dtype); }
static ci_dtype cache_dtype(int dtype) { return ci_dtype_of_run((cinfer_dtype)dtype); }
static const char *const mode_names[] = {"prefill", "decode", NULL};
static const char *const variant_names[] = {"standard", "diff", NULL};

typedef struct options {
    int use_attention[N_KINDS], use_dtype[CINFER_DTYPE_COUNT], use_mode[2], use_variant[2];
    int_list head_dims, seqs;
    int heads, kv_heads;
    int repetitions, calls; /* calls 0: by mode */
    int flush_l2, check_memory;
    int cpu; /* --backend cpu: the reference op, to check this program where there is no GPU */
    long long probe_workspace; /* > 0: this process is a --check-memory child */
    output_format output;
    int device;
    uint64_t seed;
} options;

/* One measured (or skipped) configuration. */
typedef struct row {
    int kind;   /* cinfer_attention = CINFER_ATTENTION_EAGER + kind */
    int dtype;  /* a cinfer_dtype: the caches' */
    int decode; /* mode */
    int differential;
    int head_dim, seq, heads, kv_heads;
    int n_tokens, pos0;
    double flops, kv_bytes;
    int repetitions, calls;
    double *ms; /* [repetitions], per call */
    double mean_ms, std_ms;
    size_t workspace_bytes;
    int non_finite;    /* outputs that were NaN or inf */
    char skipped[352]; /* "" when measured */
} row;

static int usage(const char *fmt, const char *arg) {
    fprintf(stderr, "bench_attention: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage_text);
    return EXIT_USAGE;
}

static int parse_options(int argc, char **argv, options *o) {
    *o = (options){.use_attention = {1, 1, 1},
                   .use_dtype = {0, 1, 0},
                   .use_mode = {1, 0},
                   .use_variant = {1, 1},
                   .head_dims = {2, {64, 128}},
                   .seqs = {6, {512, 1024, 2048, 4096, 8192, 16384}},
                   .heads = 32,
                   .kv_heads = 8,
                   .repetitions = 5,
                   .output = OUTPUT_MD,
                   .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(usage_text, stdout);
            return -1;
        }
        if (strcmp(flag, "--flush-l2") == 0) {
            o->flush_l2 = 1;
            continue;
        }
        if (strcmp(flag, "--check-memory") == 0) {
            o->check_memory = 1;
            continue;
        }
        if (i + 1 >= argc) return usage("option '%s' needs a value", flag);
        const char *value = argv[++i];
        if (strcmp(flag, "--attn") == 0) {
            int chosen[CINFER_ATTENTION_COUNT];
            if (parse_enum_list(value, attention_by_name, CINFER_ATTENTION_COUNT, chosen) ||
                chosen[CINFER_ATTENTION_AUTO])
                return usage("--attn needs eager, sdpa and/or flash separated by commas, got '%s'",
                             value);
            for (int kind = 0; kind < N_KINDS; kind++)
                o->use_attention[kind] = chosen[CINFER_ATTENTION_EAGER + kind];
        } else if (strcmp(flag, "--dtype") == 0) {
            if (parse_enum_list(value, dtype_by_name, CINFER_DTYPE_COUNT, o->use_dtype))
                return usage("--dtype needs f32, bf16 and/or fp16 separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--mode") == 0) {
            if (parse_name_list(value, mode_names, o->use_mode))
                return usage("--mode needs prefill and/or decode separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--variant") == 0) {
            if (parse_name_list(value, variant_names, o->use_variant))
                return usage("--variant needs standard and/or diff separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--head-dim") == 0) {
            if (parse_int_list(value, 1, 1024, &o->head_dims))
                return usage("--head-dim needs integers in [1, 1024] separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--seq") == 0) {
            if (parse_int_list(value, 1, 1 << 20, &o->seqs))
                return usage("--seq needs integers in [1, 1048576] separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--heads") == 0) {
            if (parse_int(value, 1, 4096, &o->heads))
                return usage("--heads needs one integer in [1, 4096], got '%s'", value);
        } else if (strcmp(flag, "--kv-heads") == 0) {
            if (parse_int(value, 1, 4096, &o->kv_heads))
                return usage("--kv-heads needs one integer in [1, 4096], got '%s'", value);
        } else if (strcmp(flag, "-r") == 0 || strcmp(flag, "--repetitions") == 0) {
            if (parse_int(value, 1, 1000, &o->repetitions))
                return usage("-r needs one integer in [1, 1000], got '%s'", value);
        } else if (strcmp(flag, "--calls") == 0) {
            if (parse_int(value, 1, 100000, &o->calls))
                return usage("--calls needs one integer in [1, 100000], got '%s'", value);
        } else if (strcmp(flag, "--device") == 0) {
            if (parse_int(value, 0, 1023, &o->device))
                return usage("--device needs one GPU index >= 0, got '%s'", value);
        } else if (strcmp(flag, "--seed") == 0) {
            int seed;
            if (parse_int(value, 0, 2147483647, &seed))
                return usage("--seed needs one non-negative integer, got '%s'", value);
            o->seed = (uint64_t)seed;
        } else if (strcmp(flag, "--output") == 0 || strcmp(flag, "-o") == 0) {
            if (parse_output_format(value, &o->output))
                return usage("--output needs md, csv or json, got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0) {
            cinfer_backend backend;
            if (cinfer_backend_from_name(value, &backend) != 0)
                return usage("--backend needs cuda or cpu, got '%s'", value);
            o->cpu = backend == CINFER_BACKEND_CPU;
        } else if (strcmp(flag, "--probe-workspace") == 0) { /* internal: --check-memory's child */
            char *end;
            errno = 0;
            o->probe_workspace = strtoll(value, &end, 10);
            if (errno || *end || o->probe_workspace <= 0)
                return usage("--probe-workspace needs a byte count > 0, got '%s'", value);
        } else {
            return usage("unknown option '%s'", flag);
        }
    }
    if (o->cpu && (o->use_dtype[CINFER_DTYPE_BF16] || o->use_dtype[CINFER_DTYPE_F16]))
        return usage("%s", "--backend cpu: the CPU reference takes f32 caches only (--dtype f32)");
    if (o->cpu) /* one attention op there: one row per shape, named "reference" */
        o->use_attention[0] = 1, o->use_attention[1] = o->use_attention[2] = 0;
    if (o->heads % o->kv_heads != 0) {
        fprintf(stderr, "bench_attention: --heads %d is not a multiple of --kv-heads %d\n",
                o->heads, o->kv_heads);
        return EXIT_USAGE;
    }
    if (o->use_variant[1] && o->heads % 2 != 0) {
        fprintf(stderr, "bench_attention: differential attention pairs heads: --heads %d is odd\n",
                o->heads);
        return EXIT_USAGE;
    }
    return 0;
}

static int list_max(const int_list *list) {
    int best = list->values[0];
    for (int i = 1; i < list->n; i++)
        if (list->values[i] > best) best = list->values[i];
    return best;
}

/* What one row computes and reads (formulas at the top of this file). */
static void fill_costs(row *r) {
    const double T = r->n_tokens, visible = T * r->pos0 + T * (T + 1) / 2;
    const double per_head = r->differential ? 6.0 : 4.0;
    r->flops = per_head * r->heads * r->head_dim * visible;
    r->kv_bytes =
        2.0 * r->seq * r->kv_heads * r->head_dim * (double)ci_dtype_size(cache_dtype(r->dtype));
}

/* A config of the attention's shape: workspace_bytes reads the head counts and widths. No linear
 * layer runs here; intermediate_size = hidden_size keeps matmul's share from inflating it. */
static ci_config attention_config(const row *r) {
    ci_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "%s",
             r->differential ? "DiffLlamaForCausalLM" : "LlamaForCausalLM");
    c.vocab_size = 1;
    c.n_layers = 1;
    c.n_heads = r->heads;
    c.n_kv_heads = r->kv_heads;
    c.head_dim = r->head_dim;
    c.hidden_size = r->heads * r->head_dim;
    c.intermediate_size = c.hidden_size;
    c.max_position_embeddings = r->seq;
    c.rms_norm_eps = DIFF_EPS;
    return c;
}

/* ---- device buffers: q, out and the caches at the longest shape; rows take views of them ------
 */

typedef struct buffers {
    void *q, *out, *k, *v; /* device */
    float *out_host;       /* for the finite check */
    int max_tokens, max_seq, head_dim;
    ci_dtype dtype;
} buffers;

/* Uniform in [−1, 1), converted to the buffer's dtype, uploaded in pieces of a few MiB so that the
 * host never holds a whole 268 MiB q. */
static cinfer_status upload_random(ci_backend *be, void *device, ci_dtype dtype, int64_t n,
                                   uint64_t seed) {
    enum { PIECE = 1 << 20 };
    const size_t element = ci_dtype_size(dtype);
    unsigned char *piece = malloc((size_t)PIECE * element);
    if (!piece) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for an upload buffer");
    uint64_t state = seed;
    for (int64_t i0 = 0; i0 < n; i0 += PIECE) {
        const int64_t count = n - i0 < PIECE ? n - i0 : PIECE;
        for (int64_t i = 0; i < count; i++) {
            const float x = (float)((double)(ci_splitmix64(&state) >> 11) * 0x1.0p-52 - 1.0);
            if (dtype == CI_F32)
                ((float *)piece)[i] = x;
            else if (dtype == CI_BF16)
                ((uint16_t *)piece)[i] = ci_f32_to_bf16(x);
            else
                ((uint16_t *)piece)[i] = ci_f32_to_f16(x);
        }
        be->ops->to_device(be, (unsigned char *)device + (size_t)i0 * element, piece,
                           (size_t)count * element);
    }
    free(piece);
    return CINFER_OK;
}

static void buffers_free(ci_backend *be, buffers *b) {
    void *device[] = {b->q, b->out, b->k, b->v};
    for (int i = 0; i < 4; i++)
        if (device[i]) be->ops->free(be, device[i]);
    free(b->out_host);
    memset(b, 0, sizeof *b);
}

static cinfer_status buffers_make(ci_backend *be, buffers *b, int max_tokens, int max_seq,
                                  int heads, int kv_heads, int head_dim, ci_dtype dtype,
                                  uint64_t seed) {
    memset(b, 0, sizeof *b);
    b->max_tokens = max_tokens;
    b->max_seq = max_seq;
    b->head_dim = head_dim;
    b->dtype = dtype;
    const int64_t n_q = (int64_t)max_tokens * heads * head_dim;
    const int64_t n_cache = (int64_t)max_seq * kv_heads * head_dim;
    const size_t q_bytes = (size_t)n_q * sizeof(float);
    const size_t cache_bytes = (size_t)n_cache * ci_dtype_size(dtype);
    b->q = be->ops->alloc(be, q_bytes);
    b->out = be->ops->alloc(be, q_bytes);
    b->k = be->ops->alloc(be, cache_bytes);
    b->v = be->ops->alloc(be, cache_bytes);
    b->out_host = malloc(q_bytes);
    if (!b->q || !b->out || !b->k || !b->v || !b->out_host) {
        buffers_free(be, b);
        return CI_FAIL(CINFER_ERR_MEMORY,
                       "no room for q and out (%zu MiB each) and the caches (%zu MiB each)",
                       q_bytes >> 20, cache_bytes >> 20);
    }
    CI_TRY(upload_random(be, b->q, CI_F32, n_q, seed));
    CI_TRY(upload_random(be, b->k, dtype, n_cache, seed + 1));
    CI_TRY(upload_random(be, b->v, dtype, n_cache, seed + 2));
    return CINFER_OK;
}

/* One call of the row's op on views of the buffers (n_ctx = S: no rows past the sequence). */
static void call_attention(ci_backend *be, const row *r, const buffers *b, void *out) {
    ci_tensor q = {b->q, CI_F32, 3, {r->n_tokens, r->heads, r->head_dim, 0}};
    ci_tensor o = {out, CI_F32, 3, {r->n_tokens, r->heads, r->head_dim, 0}};
    ci_tensor k = {b->k, b->dtype, 3, {r->seq, r->kv_heads, r->head_dim, 0}};
    ci_tensor v = {b->v, b->dtype, 3, {r->seq, r->kv_heads, r->head_dim, 0}};
    if (r->differential)
        ci_diff_attention(be, &o, &q, &k, &v, r->pos0, DIFF_LAMBDA, DIFF_LAMBDA_INIT, DIFF_EPS);
    else
        ci_attention(be, &o, &q, &k, &v, r->pos0);
}

/* Grows be's workspace to what the row's kind asks for; "" or why the row cannot run. */
static void reserve_for(ci_backend *be, row *r, const options *o) {
    const ci_config config = attention_config(r);
    r->workspace_bytes = be->ops->workspace_bytes(be, &config, r->seq, 1);
    if (r->workspace_bytes <= be->workspace_bytes) return;
    size_t free_bytes = SIZE_MAX, total_bytes = 0;
    if (!o->cpu) ci_cuda_memory(o->device, &free_bytes, &total_bytes);
    /* reserve allocates the new workspace before it frees the old one */
    if (r->workspace_bytes > free_bytes || ci_backend_reserve(be, r->workspace_bytes) != CINFER_OK)
        snprintf(r->skipped, sizeof r->skipped,
                 "skipped: its workspace (%.0f MiB) does not fit in free device memory (%.0f MiB)",
                 (double)r->workspace_bytes / (1 << 20), (double)free_bytes / (1 << 20));
}

static void summarize(row *r) {
    double sum = 0, sum_sq = 0;
    for (int i = 0; i < r->repetitions; i++) sum += r->ms[i];
    r->mean_ms = sum / r->repetitions;
    for (int i = 0; i < r->repetitions; i++)
        sum_sq += (r->ms[i] - r->mean_ms) * (r->ms[i] - r->mean_ms);
    r->std_ms = r->repetitions > 1 ? sqrt(sum_sq / (r->repetitions - 1)) : 0.0;
}

/* Waits for the ops issued so far (the CPU's have finished when they return). */
static void synchronize(ci_backend *be) {
    if (be->ops->synchronize) be->ops->synchronize(be);
}

static void measure(ci_backend *be, bench_timer *timer, const options *o, const buffers *b,
                    row *r) {
    be->attention = (cinfer_attention)(CINFER_ATTENTION_EAGER + r->kind);
    reserve_for(be, r, o);
    if (r->skipped[0]) return;
    call_attention(be, r, b, b->out); /* warm-up: module loading, cuBLAS's choices */
    synchronize(be);
    for (int rep = 0; rep < r->repetitions; rep++) {
        if (timer) { /* a GPU: device time between two events */
            if (o->flush_l2) bench_timer_flush_l2(timer);
            bench_timer_start(timer);
            for (int c = 0; c < r->calls; c++) call_attention(be, r, b, b->out);
            r->ms[rep] = bench_timer_stop_ms(timer) / r->calls;
        } else { /* the CPU reference: its ops return finished */
            const double start = ci_now_seconds();
            for (int c = 0; c < r->calls; c++) call_attention(be, r, b, b->out);
            r->ms[rep] = (ci_now_seconds() - start) * 1e3 / r->calls;
        }
    }
    summarize(r);
    const int64_t n_out = (int64_t)r->n_tokens * r->heads * r->head_dim;
    be->ops->to_host(be, b->out_host, b->out, (size_t)n_out * sizeof(float));
    for (int64_t i = 0; i < n_out; i++) r->non_finite += !isfinite(b->out_host[i]);
}

/* ---- output ------------------------------------------------------------------------------------
 */

static double tflops(const row *r) { return r->flops / (r->mean_ms * 1e-3) / 1e12; }
static double kv_gbs(const row *r) { return r->kv_bytes / (r->mean_ms * 1e-3) / 1e9; }

static void print_csv_field(const char *text) {
    putchar('"');
    for (const char *c = text; *c; c++) {
        if (*c == '"') putchar('"');
        putchar(*c);
    }
    putchar('"');
}

/* The CPU has one attention op, its reference, whatever kind a row was planned with. */
static const char *row_kind_name(const options *o, const row *r) {
    return o->cpu ? "reference" : kind_name(r->kind);
}

static void print_rows(const options *o, const row *rows, int n_rows, const char *device_name) {
    if (o->output == OUTPUT_MD) {
        printf("| variant | mode | dtype | D | seq | H/G | attn | ms | TFLOP/s | K/V GB/s |\n");
        printf("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n");
        for (int i = 0; i < n_rows; i++) {
            const row *r = &rows[i];
            printf("| %s | %s | %s | %d | %d | %d/%d | %s | ", variant_names[r->differential],
                   mode_names[r->decode], dtype_name(r->dtype), r->head_dim, r->seq, r->heads,
                   r->kv_heads, row_kind_name(o, r));
            if (r->skipped[0]) {
                printf("%s | | |\n", r->skipped);
                continue;
            }
            printf("%.4f ± %.4f%s | %.3g | ", r->mean_ms, r->std_ms,
                   r->non_finite ? " (NON-FINITE OUTPUT)" : "", tflops(r));
            if (r->decode)
                printf("%.0f |\n", kv_gbs(r));
            else
                printf("— |\n");
        }
        printf("\n%s. %s: mean ± sd over %d "
               "repetitions after one warm-up, each of --calls calls (prefill %d, decode %d "
               "unless given), L2 %s. TFLOP/s: causal FLOPs (standard 4·H·D·n_visible, "
               "differential 6·H·D·n_visible; bench/attention_bench.c). K/V GB/s: "
               "2·S·G·D·sizeof(dtype) per decode call.\n",
               device_name,
               o->cpu ? "Wall-clock time of the CPU op"
                      : "Device time by CUDA events on the "
                        "backend's stream",
               o->repetitions, o->calls ? o->calls : PREFILL_CALLS,
               o->calls ? o->calls : DECODE_CALLS,
               o->flush_l2 ? "flushed before each repetition" : "warm");
    } else if (o->output == OUTPUT_CSV) {
        printf("device,attn,variant,mode,dtype,head_dim,seq,heads,kv_heads,n_tokens,pos0,"
               "repetitions,calls,mean_ms,std_ms,ms,flops,tflops,kv_bytes,kv_gbs,"
               "workspace_bytes,non_finite,skipped\n");
        for (int i = 0; i < n_rows; i++) {
            const row *r = &rows[i];
            print_csv_field(device_name);
            printf(",%s,%s,%s,%s,%d,%d,%d,%d,%d,%d,%d,%d,", row_kind_name(o, r),
                   variant_names[r->differential], mode_names[r->decode], dtype_name(r->dtype),
                   r->head_dim, r->seq, r->heads, r->kv_heads, r->n_tokens, r->pos0, r->repetitions,
                   r->calls);
            const int ran = !r->skipped[0];
            printf("%.6g,%.6g,\"", ran ? r->mean_ms : 0.0, ran ? r->std_ms : 0.0);
            for (int k = 0; ran && k < r->repetitions; k++)
                printf("%s%.6g", k ? ";" : "", r->ms[k]);
            printf("\",%.6g,%.6g,%.6g,%.6g,%zu,%d,", r->flops, ran ? tflops(r) : 0.0, r->kv_bytes,
                   ran && r->decode ? kv_gbs(r) : 0.0, r->workspace_bytes, r->non_finite);
            print_csv_field(r->skipped);
            printf("\n");
        }
    } else {
        cJSON *array = cJSON_CreateArray();
        for (int i = 0; array && i < n_rows; i++) {
            const row *r = &rows[i];
            const int ran = !r->skipped[0];
            cJSON *item = cJSON_CreateObject();
            cJSON_AddItemToArray(array, item);
            cJSON_AddStringToObject(item, "device", device_name);
            cJSON_AddStringToObject(item, "attn", row_kind_name(o, r));
            cJSON_AddStringToObject(item, "variant", variant_names[r->differential]);
            cJSON_AddStringToObject(item, "mode", mode_names[r->decode]);
            cJSON_AddStringToObject(item, "dtype", dtype_name(r->dtype));
            cJSON_AddNumberToObject(item, "head_dim", r->head_dim);
            cJSON_AddNumberToObject(item, "seq", r->seq);
            cJSON_AddNumberToObject(item, "heads", r->heads);
            cJSON_AddNumberToObject(item, "kv_heads", r->kv_heads);
            cJSON_AddNumberToObject(item, "n_tokens", r->n_tokens);
            cJSON_AddNumberToObject(item, "pos0", r->pos0);
            cJSON_AddNumberToObject(item, "repetitions", r->repetitions);
            cJSON_AddNumberToObject(item, "calls", r->calls);
            cJSON_AddNumberToObject(item, "flops", r->flops);
            cJSON_AddNumberToObject(item, "kv_bytes", r->kv_bytes);
            cJSON_AddNumberToObject(item, "workspace_bytes", (double)r->workspace_bytes);
            cJSON_AddBoolToObject(item, "flush_l2", o->flush_l2);
            if (ran) {
                cJSON_AddNumberToObject(item, "mean_ms", r->mean_ms);
                cJSON_AddNumberToObject(item, "std_ms", r->std_ms);
                cJSON_AddItemToObject(item, "ms", cJSON_CreateDoubleArray(r->ms, r->repetitions));
                cJSON_AddNumberToObject(item, "tflops", tflops(r));
                if (r->decode) cJSON_AddNumberToObject(item, "kv_gbs", kv_gbs(r));
                cJSON_AddNumberToObject(item, "non_finite", r->non_finite);
            } else {
                cJSON_AddStringToObject(item, "skipped", r->skipped);
            }
        }
        char *json = array ? cJSON_Print(array) : NULL;
        if (json)
            printf("%s\n", json);
        else
            fprintf(stderr, "bench_attention: error: out of memory printing JSON\n");
        cJSON_free(json);
        cJSON_Delete(array);
    }
    fflush(stdout);
}

/* ---- the rows the options ask for ---------------------------------------------------------------
 * Ordered so that one set of buffers (per head dim and dtype) serves every row that follows it. */

static int count_chosen(const int *chosen, int n) {
    int count = 0;
    for (int i = 0; i < n; i++) count += chosen[i];
    return count;
}

static int count_rows(const options *o) {
    return o->head_dims.n * o->seqs.n * count_chosen(o->use_dtype, CINFER_DTYPE_COUNT) *
           count_chosen(o->use_variant, 2) * count_chosen(o->use_mode, 2) *
           count_chosen(o->use_attention, N_KINDS);
}

static int plan_rows(const options *o, row *rows) {
    int n = 0;
    for (int d = 0; d < o->head_dims.n; d++)
        for (int dt = 0; dt < CINFER_DTYPE_COUNT; dt++)
            for (int variant = 0; variant < 2; variant++)
                for (int mode = 0; mode < 2; mode++)
                    for (int s = 0; s < o->seqs.n; s++)
                        for (int kind = 0; kind < N_KINDS; kind++) {
                            if (!o->use_dtype[dt] || !o->use_variant[variant] ||
                                !o->use_mode[mode] || !o->use_attention[kind])
                                continue;
                            row *r = &rows[n++];
                            memset(r, 0, sizeof *r);
                            r->kind = kind;
                            r->dtype = dt;
                            r->decode = mode;
                            r->differential = variant;
                            r->head_dim = o->head_dims.values[d];
                            r->seq = o->seqs.values[s];
                            r->heads = o->heads;
                            r->kv_heads = o->kv_heads;
                            r->n_tokens = mode ? 1 : r->seq;
                            r->pos0 = mode ? r->seq - 1 : 0;
                            r->repetitions = o->repetitions;
                            r->calls = o->calls ? o->calls : mode ? DECODE_CALLS : PREFILL_CALLS;
                            fill_costs(r);
                        }
    return n;
}

static void device_label(int device, char *name, size_t size) {
    cinfer_device_info devices[16];
    const int n = ci_cuda_devices(devices, 16);
    if (device < n && device < 16)
        snprintf(name, size, "%s (device %d)", devices[device].name, device);
    else
        snprintf(name, size, "CUDA device %d", device);
}

/* 1 when the row's kind runs its shape here; else the row says why it is skipped. */
static int kind_runs(const options *o, row *r) {
    const cinfer_attention kind = (cinfer_attention)(CINFER_ATTENTION_EAGER + r->kind);
    if (o->cpu || ci_cuda_attention_supports(kind, r->head_dim, r->differential,
                                             cache_dtype(r->dtype), o->device))
        return 1;
    snprintf(r->skipped, sizeof r->skipped,
             "skipped: %s does not run head_dim %d (%s, %s cache) on this device",
             kind_name(r->kind), r->head_dim, variant_names[r->differential], dtype_name(r->dtype));
    return 0;
}

static cinfer_load_options backend_options(const options *o) {
    const cinfer_load_options load = {.backend = o->cpu ? CINFER_BACKEND_CPU : CINFER_BACKEND_CUDA,
                                      .device = o->device};
    return load;
}

static int run_benchmark(const options *o) {
    row *rows = calloc(MAX_ROWS, sizeof *rows);
    double *ms = calloc((size_t)MAX_ROWS * (size_t)o->repetitions, sizeof *ms);
    ci_backend *be = NULL;
    bench_timer *timer = NULL;
    buffers b = {0};
    int status = EXIT_ERROR;
    if (!rows || !ms) {
        fprintf(stderr, "bench_attention: error: out of memory\n");
        goto done;
    }
    const int n_rows = plan_rows(o, rows);
    for (int i = 0; i < n_rows; i++) rows[i].ms = ms + (size_t)i * (size_t)o->repetitions;
    const cinfer_load_options load = backend_options(o);
    if (ci_backend_create_for(&load, &be) != CINFER_OK) goto fail;
    if (!o->cpu) {
        timer = bench_timer_create(be, o->flush_l2 ? L2_FLUSH_BYTES : 0);
        if (!timer) goto fail;
    }
    const int max_seq = list_max(&o->seqs);
    const int max_tokens = o->use_mode[0] ? max_seq : 1;
    for (int i = 0; i < n_rows; i++) {
        row *r = &rows[i];
        const ci_dtype dtype = cache_dtype(r->dtype);
        if (!b.q || b.head_dim != r->head_dim || b.dtype != dtype) {
            buffers_free(be, &b);
            if (buffers_make(be, &b, max_tokens, max_seq, o->heads, o->kv_heads, r->head_dim, dtype,
                             o->seed) != CINFER_OK)
                goto fail;
        }
        fprintf(stderr, "bench_attention: %s %s %s D=%d S=%d %s\n", variant_names[r->differential],
                mode_names[r->decode], dtype_name(r->dtype), r->head_dim, r->seq,
                kind_name(r->kind));
        if (kind_runs(o, r)) measure(be, timer, o, &b, r);
    }
    char device_name[320];
    if (o->cpu)
        snprintf(device_name, sizeof device_name,
                 "CPU reference op, %d threads, wall clock (not a GPU figure)", be->n_threads);
    else
        device_label(o->device, device_name, sizeof device_name);
    print_rows(o, rows, n_rows, device_name);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "bench_attention: error: %s\n", cinfer_last_error());
done:
    if (be) buffers_free(be, &b);
    bench_timer_free(timer);
    ci_backend_free(be);
    free(ms);
    free(rows);
    return status;
}

/* ---- --check-memory ----------------------------------------------------------------------------
 */

/* The child: one row, run first with the workspace its kind asks for (the reference), then on a
 * second backend whose workspace is only `small_bytes`, free device memory read around that call.
 * Prints one "probe:" line; if the op refuses (CI_ASSERT), the process dies with its message. */
static int run_probe(const options *o) {
    row planned[1]; /* count_rows is checked first */
    if (count_rows(o) != 1 || plan_rows(o, planned) != 1) {
        fprintf(stderr, "bench_attention: --probe-workspace takes exactly one shape and kind\n");
        return EXIT_USAGE;
    }
    row r = planned[0];
    const cinfer_load_options load = backend_options(o);
    ci_backend *full = NULL, *small = NULL;
    buffers b = {0};
    void *out_small = NULL;
    float *host_small = NULL;
    if (ci_backend_create_for(&load, &full) != CINFER_OK) goto fail;
    full->attention = (cinfer_attention)(CINFER_ATTENTION_EAGER + r.kind);
    reserve_for(full, &r, o);
    if (r.skipped[0]) {
        printf("probe: reference not run: %s\n", r.skipped);
        goto done;
    }
    if (buffers_make(full, &b, r.n_tokens, r.seq, r.heads, r.kv_heads, r.head_dim,
                     cache_dtype(r.dtype), o->seed) != CINFER_OK)
        goto fail;
    const int64_t n_out = (int64_t)r.n_tokens * r.heads * r.head_dim;
    const size_t out_bytes = (size_t)n_out * sizeof(float);
    call_attention(full, &r, &b, b.out);
    full->ops->to_host(full, b.out_host, b.out, out_bytes);

    if (ci_backend_create_for(&load, &small) != CINFER_OK) goto fail;
    small->attention = full->attention;
    if (ci_backend_reserve(small, (size_t)o->probe_workspace) != CINFER_OK) goto fail;
    out_small = small->ops->alloc(small, out_bytes);
    host_small = malloc(out_bytes);
    if (!out_small || !host_small) {
        fprintf(stderr, "bench_attention: error: out of memory for a second output\n");
        goto done;
    }
    size_t free_before = 0, free_after = 0, total = 0;
    if (!o->cpu) ci_cuda_memory(o->device, &free_before, &total);
    call_attention(small, &r, &b, out_small);
    synchronize(small);
    if (!o->cpu) ci_cuda_memory(o->device, &free_after, &total);
    small->ops->to_host(small, host_small, out_small, out_bytes);
    double max_diff = 0, max_ref = 0;
    int non_finite = 0;
    for (int64_t i = 0; i < n_out; i++) {
        non_finite += !isfinite(host_small[i]) || !isfinite(b.out_host[i]);
        const double diff = fabs((double)host_small[i] - b.out_host[i]);
        if (diff > max_diff || diff != diff) max_diff = diff;
        if (fabs(b.out_host[i]) > max_ref) max_ref = fabs(b.out_host[i]);
    }
    printf("probe: ran workspace_asked=%zu max_abs_diff=%.3g max_abs_out=%.3g non_finite=%d "
           "free_delta=%lld\n",
           r.workspace_bytes, max_diff, max_ref, non_finite,
           (long long)free_after - (long long)free_before);
    goto done;
fail:
    fprintf(stderr, "bench_attention: error: %s\n", cinfer_last_error());
done:
    if (small && out_small) small->ops->free(small, out_small);
    free(host_small);
    if (full) buffers_free(full, &b);
    ci_backend_free(small);
    ci_backend_free(full);
    return 0;
}

/* What one child said: whether the op ran (on the small workspace, when one was given) and agreed
 * with the reference. */
typedef struct probe_result {
    int ran, agrees, non_finite;
    size_t workspace_asked;
    double max_diff;
    long long free_delta;
    char said[256]; /* the child's own words when it did not run: its last line */
} probe_result;

/* Runs this program on one row in a child process, the --check-memory probe with a workspace of
 * small_bytes: an op that cannot do with that little aborts, and that must not end the check. */
static void run_child(const options *o, const row *r, size_t small_bytes, probe_result *p) {
    memset(p, 0, sizeof *p);
    char self[4096];
    const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0) {
        snprintf(p->said, sizeof p->said, "cannot find this program (/proc/self/exe)");
        return;
    }
    self[length] = '\0';
    char command[8192];
    snprintf(
        command, sizeof command,
        "exec '%s' --probe-workspace %zu --backend %s --attn %s --variant %s --mode %s --dtype %s "
        "--head-dim %d --seq %d --heads %d --kv-heads %d --device %d --seed %llu 2>&1",
        self, small_bytes, cinfer_backend_name(o->cpu ? CINFER_BACKEND_CPU : CINFER_BACKEND_CUDA),
        kind_name(r->kind), variant_names[r->differential], mode_names[r->decode],
        dtype_name(r->dtype), r->head_dim, r->seq, r->heads, r->kv_heads, o->device,
        (unsigned long long)o->seed);
    FILE *child = popen(command, "r"); /* exec: its status is the child's own, signals included */
    if (!child) {
        snprintf(p->said, sizeof p->said, "cannot start the child: %s", strerror(errno));
        return;
    }
    char line[1024], last[1024] = "";
    while (fgets(line, sizeof line, child)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "probe: ran ", 11) == 0) {
            double max_out = 0;
            int non_finite = 0;
            p->ran = sscanf(line,
                            "probe: ran workspace_asked=%zu max_abs_diff=%lf max_abs_out=%lf "
                            "non_finite=%d free_delta=%lld",
                            &p->workspace_asked, &p->max_diff, &max_out, &non_finite,
                            &p->free_delta) == 5;
            p->non_finite = non_finite;
            p->agrees = p->ran && non_finite == 0 && p->max_diff <= SAME_OUTPUT_TOLERANCE;
        } else if (line[0]) {
            snprintf(last, sizeof last, "%s", line);
        }
    }
    const int wait_status = pclose(child);
    if (!p->ran) {
        if (WIFSIGNALED(wait_status))
            snprintf(p->said, sizeof p->said, "died (signal %d): %s", WTERMSIG(wait_status), last);
        else
            snprintf(p->said, sizeof p->said, "%s", last[0] ? last : "no result");
    }
}

static int run_memory_check(const options *o) {
    row *rows = calloc(MAX_ROWS, sizeof *rows);
    if (!rows) return EXIT_ERROR;
    const int n_rows = plan_rows(o, rows);
    int unexpected = 0;
    printf("| variant | mode | dtype | D | seq | attn | workspace asked | given (½ score row) | "
           "result | max abs diff | free memory change | as expected |\n");
    printf("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | --- |\n");
    for (int i = 0; i < n_rows; i++) {
        const row *r = &rows[i];
        /* half of one query's scores over all heads: H·S F32 values */
        const size_t small_bytes = (size_t)r->heads * (size_t)r->seq * sizeof(float) / 2;
        probe_result p;
        run_child(o, r, small_bytes, &p);
        /* eager keeps scores in the workspace and must refuse; sdpa and flash must not need it */
        const int needs_scores = r->kind == 0;
        const int expected = needs_scores ? !p.ran : p.agrees && p.free_delta == 0;
        unexpected += !expected;
        printf("| %s | %s | %s | %d | %d | %s | ", variant_names[r->differential],
               mode_names[r->decode], dtype_name(r->dtype), r->head_dim, r->seq,
               kind_name(r->kind));
        if (p.ran)
            printf("%zu | %zu | ran%s | %.3g | %lld B | %s |\n", p.workspace_asked, small_bytes,
                   p.agrees ? ", same output" : ", OUTPUT DIFFERS", p.max_diff, p.free_delta,
                   expected ? "yes" : "NO");
        else
            printf("— | %zu | refused: %s | | | %s |\n", small_bytes, p.said,
                   expected ? "yes" : "NO");
        fflush(stdout);
    }
    printf("\nEach row ran in a child process: the call with the workspace its kind asks for (the "
           "reference), then on a backend whose workspace is a real allocation of half of one "
           "[H, S] F32 score row, with cudaMemGetInfo read around it. Expected: eager refuses; "
           "sdpa and flash run, give the reference's output (|diff| <= %g) and leave free memory "
           "unchanged. This shows they need no workspace for scores and keep no allocation; it "
           "does not see memory allocated and freed inside the call, static __device__ buffers, or "
           "writes past the small buffer within cudaMalloc's granule: run it under "
           "compute-sanitizer --tool memcheck, and count DRAM writes with ncu "
           "(dram__bytes_write.sum about T·H·D·4 for sdpa/flash prefill, against H·S(S+1)/2·4 of "
           "scores for eager).\n",
           SAME_OUTPUT_TOLERANCE);
    free(rows);
    return unexpected ? EXIT_ERROR : 0;
}

int main(int argc, char **argv) {
    options o;
    const int parsed = parse_options(argc, argv, &o);
    if (parsed) return parsed < 0 ? 0 : parsed; /* -1: help was asked for and printed */
    if (!o.cpu && ci_cuda_available(o.device) != CINFER_OK) {
        printf("bench_attention: no CUDA device: %s; nothing measured\n", cinfer_last_error());
        return 0;
    }
    if (o.probe_workspace > 0) return run_probe(&o);
    if (o.check_memory) return run_memory_check(&o);
    return run_benchmark(&o);
}
