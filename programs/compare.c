/* cinfer compare: one input through the CPU reference and through a candidate, compared stage by
 * stage (embedding, each decoder layer, final norm, logits) with the candidate's tolerance, and
 * exits 1 when any row is outside it. The candidate is the GPU (the default; the tolerance of its
 * run dtype, programs/compare.h), or, with --backend cpu --tp N, the model split across N
 * tensor-parallel ranks on the CPU, held to the bar of tests/test_tensor_parallel.cpp (1e-5): the
 * reference is always the unsharded CPU model.
 *
 *   cinfer compare --model DIR --tokens "1 15 7 42 9" [--backend cuda|cpu] [--tp N]
 *                  [--dtype f32|bf16|fp16] [--attn auto|eager|sdpa|flash]
 *                  [--device N] [--threads N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinfer.h"
#include "commands.h"
#include "compare.h"
#include "program.h"

static int compare_main(int argc, char **argv);
/* what main.c dispatches to and prints in the usage */
const program_command compare_command = {
    "compare", compare_main,
    "  compare --model DIR --tokens \"1 15 7\"   "
    "the GPU against the CPU reference, layer by layer\n",
    "compare options: --dtype, --attn, --device, --threads as above;\n"
    "  --backend cpu --tp N  the CPU model split across N ranks against the unsharded one\n"};

/* A sharded CPU model sums o_proj's and down_proj's partial products in F32 across ranks where the
 * whole model rounds once: a few F32 roundings apart (docs/TENSOR_PARALLEL.md, "Numerics";
 * measured at most 6.2e-7 of the largest value), held to the 1e-5 of its tests. */
static const ci_tolerance SHARDED_CPU_TOLERANCE = {1e-5, 0.0, 1.0};

/* ---- the residual stream of one run, stage by stage ---------------------------------------- */

typedef struct stage_capture {
    int n_stages;   /* n_layers + 2 */
    float **rows;   /* [n_stages]: every token's hidden state, in order */
    size_t *n_rows; /* floats held per stage */
    int out_of_memory;
} stage_capture;

static void capture_stage(void *user, int stage, const float *hidden, int n_tokens, int dim) {
    stage_capture *c = user;
    if (stage < 0 || stage >= c->n_stages) return;
    const size_t added = (size_t)n_tokens * (size_t)dim;
    float *grown = realloc(c->rows[stage], (c->n_rows[stage] + added) * sizeof *grown);
    if (!grown) {
        c->out_of_memory = 1;
        return;
    }
    memcpy(grown + c->n_rows[stage], hidden, added * sizeof *grown);
    c->rows[stage] = grown;
    c->n_rows[stage] += added;
}

static void capture_free(stage_capture *c) {
    for (int i = 0; c->rows && i < c->n_stages; i++) free(c->rows[i]);
    free(c->rows);
    free(c->n_rows);
}

/* Runs the tokens through a fresh session: logits of every position, every stage captured. */
static cinfer_status run_capture(cinfer_model *model, const int32_t *tokens, int n_tokens,
                                 stage_capture *capture, float *logits) {
    cinfer_session *session;
    cinfer_status status = cinfer_session_create(model, n_tokens, &session);
    if (status != CINFER_OK) return status;
    cinfer_session_observe(session, capture_stage, capture);
    status = cinfer_session_forward(session, tokens, n_tokens, CINFER_LOGITS_ALL, logits);
    cinfer_session_free(session);
    return status;
}

/* ---- one row of the table ------------------------------------------------------------------- */

typedef struct difference {
    double max_abs, rel_l2, reference_max;
} difference;

static difference compare_floats(const float *gpu, const float *cpu, size_t n) {
    difference d = {0.0, 0.0, 0.0};
    double diff_squares = 0.0, ref_squares = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double delta = fabs((double)gpu[i] - (double)cpu[i]);
        if (!(delta <= d.max_abs)) d.max_abs = delta; /* NaN sticks */
        if (fabs((double)cpu[i]) > d.reference_max) d.reference_max = fabs((double)cpu[i]);
        diff_squares += delta * delta;
        ref_squares += (double)cpu[i] * (double)cpu[i];
    }
    d.rel_l2 = ref_squares > 0.0 ? sqrt(diff_squares / ref_squares) : sqrt(diff_squares);
    return d;
}

static int within(const difference *d, const ci_tolerance *tol) {
    if (isnan(d->max_abs) || isnan(d->rel_l2)) return 0;
    const double scale = d->reference_max > 1.0 ? d->reference_max : 1.0;
    if (tol->max_abs > 0.0 && d->max_abs > tol->max_abs * scale) return 0;
    if (tol->rel_l2 > 0.0 && d->rel_l2 > tol->rel_l2) return 0;
    return 1;
}

static int print_row(const char *stage, const difference *d, const ci_tolerance *tol) {
    const int ok = within(d, tol);
    printf("%-16s %12.3e %12.3e   %s\n", stage, d->max_abs, d->rel_l2, ok ? "yes" : "NO");
    return ok;
}

static int argmax_row(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best] || isnan(row[best])) best = i;
    return best;
}

static int compare_main(int argc, char **argv) {
    const char *model_dir = NULL, *tokens_text = NULL;
    cinfer_load_options gpu = {.backend = CINFER_BACKEND_CUDA};
    for (int i = 0; i < argc; i += 2) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        long number;
        if (!value) return usage_error("option '%s' needs a value", flag);
        int launch_status;
        if (value && parse_tp_launch_option(flag, value, &launch_status)) {
            if (launch_status) return launch_status;
            continue;
        }
        if (strcmp(flag, "--model") == 0) {
            model_dir = value;
        } else if (strcmp(flag, "--tokens") == 0) {
            tokens_text = value;
        } else if (strcmp(flag, "--threads") == 0) {
            if (parse_long(value, 1, 4096, &number) != 0)
                return usage_error("--threads needs an integer in [1, 4096], got '%s'", value);
            gpu.n_threads = (int)number;
        } else if (strcmp(flag, "--dtype") == 0 || strcmp(flag, "--attn") == 0 ||
                   strcmp(flag, "--device") == 0 || strcmp(flag, "--backend") == 0 ||
                   strcmp(flag, "--tp") == 0) {
            int bad = parse_load_option(flag, value, &gpu);
            if (bad) return bad;
        } else {
            return usage_error(
                "compare: unknown option '%s' (it runs the CPU reference against cuda, or "
                "against --backend cpu --tp N)",
                flag);
        }
    }
    if (!model_dir) return usage_error("%s", "--model DIR is required");
    const int sharded_cpu = gpu.backend == CINFER_BACKEND_CPU;
    if (sharded_cpu && gpu.tensor_parallel < 2)
        return usage_error("%s", "compare --backend cpu compares a model split across ranks "
                                 "with the unsharded CPU reference: it needs --tp N (N >= 2)");
    if (!tokens_text) return usage_error("%s", "compare needs --tokens \"ID ID ...\"");
    int32_t *tokens;
    int n_tokens;
    int bad_tokens = parse_token_list(tokens_text, &tokens, &n_tokens);
    if (bad_tokens) return bad_tokens;

    const cinfer_load_options cpu = {.backend = CINFER_BACKEND_CPU, .n_threads = gpu.n_threads};
    cinfer_model *cpu_model = NULL, *gpu_model = NULL;
    stage_capture captures[2] = {{0}, {0}};
    float *logits[2] = {NULL, NULL};
    int status = EXIT_ERROR;
    if (cinfer_model_load(model_dir, &cpu, &cpu_model) != CINFER_OK ||
        program_load_model(model_dir, &gpu, &gpu_model) != CINFER_OK) {
        status = fail();
        goto done;
    }
    const cinfer_model_info *info = cinfer_model_get_info(cpu_model);
    const int n_stages = info->n_layers + 2;
    const size_t n_logits = (size_t)n_tokens * (size_t)info->vocab_size;
    cinfer_model *models[2] = {cpu_model, gpu_model};
    for (int r = 0; r < 2; r++) {
        captures[r].n_stages = n_stages;
        captures[r].rows = calloc((size_t)n_stages, sizeof *captures[r].rows);
        captures[r].n_rows = calloc((size_t)n_stages, sizeof *captures[r].n_rows);
        logits[r] = malloc(n_logits * sizeof *logits[r]);
        if (!captures[r].rows || !captures[r].n_rows || !logits[r]) {
            fprintf(stderr, "cinfer: error: out of memory for %d x %d logits\n", n_tokens,
                    info->vocab_size);
            goto done;
        }
        if (run_capture(models[r], tokens, n_tokens, &captures[r], logits[r]) != CINFER_OK) {
            status = fail();
            goto done;
        }
        if (captures[r].out_of_memory) {
            fprintf(stderr, "cinfer: error: out of memory keeping the hidden states\n");
            goto done;
        }
    }

    const ci_tolerance tol = sharded_cpu ? SHARDED_CPU_TOLERANCE : ci_tolerance_for(gpu.dtype);
    if (sharded_cpu)
        printf("compare %s: %d tokens, the CPU model split across %d tensor-parallel ranks "
               "against the unsharded CPU reference (f32)\n",
               model_dir, n_tokens, gpu.tensor_parallel);
    else
        printf("compare %s: %d tokens, cuda %s (%s attention) on device %d%s against the CPU "
               "reference (f32)\n",
               model_dir, n_tokens, cinfer_dtype_name(gpu.dtype),
               cinfer_model_get_info(gpu_model)->attention, gpu.device,
               gpu.tensor_parallel > 1 ? " (tensor parallel)" : "");
    if (tol.max_abs > 0.0)
        printf("tolerance: max |%s - cpu| <= %g x max(1, max |cpu|) per row\n",
               sharded_cpu ? "sharded" : "gpu", tol.max_abs);
    if (tol.rel_l2 > 0.0)
        printf("tolerance: relative L2 difference <= %g per row (provisional bound, see "
               "programs/compare.h)\n",
               tol.rel_l2);
    printf("%-16s %12s %12s   %s\n", "stage", "max |diff|", "rel L2", "within");
    int n_bad = 0;
    for (int stage = 0; stage < n_stages; stage++) {
        char name[32];
        if (stage == 0)
            snprintf(name, sizeof name, "embedding");
        else if (stage == n_stages - 1)
            snprintf(name, sizeof name, "final norm");
        else
            snprintf(name, sizeof name, "layer %d", stage - 1);
        if (captures[0].n_rows[stage] != captures[1].n_rows[stage]) {
            printf("%-16s %12s %12s   NO (cpu %zu values, %s %zu)\n", name, "-", "-",
                   captures[0].n_rows[stage], sharded_cpu ? "sharded" : "gpu",
                   captures[1].n_rows[stage]);
            n_bad++;
            continue;
        }
        difference d = compare_floats(captures[1].rows[stage], captures[0].rows[stage],
                                      captures[0].n_rows[stage]);
        n_bad += !print_row(name, &d, &tol);
    }
    difference d = compare_floats(logits[1], logits[0], n_logits);
    n_bad += !print_row("logits", &d, &tol);

    int agree = 0;
    for (int t = 0; t < n_tokens; t++) {
        const size_t row = (size_t)t * (size_t)info->vocab_size;
        agree += argmax_row(logits[0] + row, info->vocab_size) ==
                 argmax_row(logits[1] + row, info->vocab_size);
    }
    const int top1_ok = (double)agree >= tol.top1 * n_tokens;
    printf("%-16s %d of %d positions (need %.0f%%)   %s\n", "top-1 agreement", agree, n_tokens,
           100.0 * tol.top1, top1_ok ? "yes" : "NO");
    n_bad += !top1_ok;
    if (n_bad) {
        fprintf(stderr, "cinfer: compare: %d row%s outside the %s tolerance\n", n_bad,
                n_bad == 1 ? "" : "s",
                sharded_cpu ? "tensor-parallel" : cinfer_dtype_name(gpu.dtype));
        status = EXIT_ERROR;
    } else {
        status = 0;
    }
done:
    for (int r = 0; r < 2; r++) {
        capture_free(&captures[r]);
        free(logits[r]);
    }
    free(tokens);
    cinfer_model_free(gpu_model);
    cinfer_model_free(cpu_model);
    return status;
}
