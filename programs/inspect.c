/* cinfer inspect: what a checkpoint is (architecture, config, parameters, dtypes, tensors), the
 * memory it needs on the CPU reference path, and the GPUs this build can use. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "../common/tensor.h"
#include "cinfer.h"
#include "commands.h"
#include "program.h"

static int inspect_main(int argc, char **argv);
/* what main.c dispatches to and prints in the usage */
const program_command inspect_command = {
    "inspect", inspect_main,
    "  inspect --model DIR      architecture, parameters, dtypes, tensors, memory needed\n"
    "          [--tp N]         and each of N tensor-parallel ranks' share of it\n",
    NULL};

static void print_bytes(const char *label, double bytes, const char *note) {
    char amount[32];
    format_bytes(bytes, amount, sizeof amount);
    printf("  %-22s %s%s\n", label, amount, note);
}

static void print_config(const cinfer_model_info *info, const cinfer_model_config *c) {
    printf("config\n");
    printf("  vocab_size %d, hidden_size %d, intermediate_size %d, layers %d\n", info->vocab_size,
           info->hidden_size, info->intermediate_size, info->n_layers);
    printf("  heads %d, kv heads %d (%d per kv head), head_dim %d%s\n", info->n_heads,
           info->n_kv_heads, info->n_heads / info->n_kv_heads, info->head_dim,
           info->head_dim * info->n_heads != info->hidden_size ? " (given, not hidden/heads)" : "");
    printf("  hidden_act %s, rms_norm_eps %g, max_position_embeddings %d\n", c->hidden_act,
           c->rms_norm_eps, info->max_position_embeddings);
    printf("  rope %s, theta %g", c->rope_type, c->rope_theta);
    if (strcmp(c->rope_type, "default") != 0) printf(", factor %g", c->rope_factor);
    if (c->rope_original_max_position_embeddings > 0)
        printf(", original_max_position_embeddings %d", c->rope_original_max_position_embeddings);
    printf("\n  attention_bias %s, mlp_bias %s, tie_word_embeddings %s, dtype %s\n",
           c->attention_bias ? "yes" : "no", c->mlp_bias ? "yes" : "no",
           c->tie_word_embeddings ? "yes" : "no", c->torch_dtype[0] ? c->torch_dtype : "-");
    printf("  bos_token_id %d, eos_token_id", info->bos_token_id);
    for (int i = 0; i < info->n_eos; i++) printf("%s%d", i ? ", " : " ", info->eos_token_ids[i]);
    const double n = (double)info->n_params;
    const char *unit = n >= 1e9 ? "B" : n >= 1e6 ? "M" : "K";
    const double scaled = n >= 1e9 ? n / 1e9 : n >= 1e6 ? n / 1e6 : n / 1e3;
    printf("\nparameters   %" PRId64 " (%.2f %s)\n", info->n_params, scaled, unit);
}

/* Tensors and bytes per dtype the files store, in safetensors' dtype order. */
static void print_dtypes(const cinfer_model *model) {
    printf("dtypes\n");
    for (int d = 0; d < CI_DTYPE_COUNT; d++) {
        const char *name = ci_dtype_name((ci_dtype)d);
        int64_t count = 0, bytes = 0;
        for (int i = 0; i < cinfer_model_n_tensors(model); i++) {
            cinfer_tensor_info t;
            if (cinfer_model_tensor(model, i, &t) != CINFER_OK || strcmp(t.dtype, name) != 0)
                continue;
            count++;
            bytes += t.bytes;
        }
        if (count) printf("  %-5s %6" PRId64 " tensors, %" PRId64 " bytes\n", name, count, bytes);
    }
}

static void print_gpus(void) {
    cinfer_device_info devices[16];
    int n_devices = cinfer_cuda_devices(devices, 16);
    if (!cinfer_cuda_compiled())
        printf("GPUs         none (built without CUDA)\n");
    else if (n_devices == 0)
        printf("GPUs         none found\n");
    for (int i = 0; i < n_devices && i < 16; i++)
        printf("GPU %-8d %s (sm_%d%d), %.2f GiB free of %.2f GiB\n", i, devices[i].name,
               devices[i].compute_major, devices[i].compute_minor,
               devices[i].free_bytes / 1073741824.0, devices[i].total_bytes / 1073741824.0);
}

/* What each of tp ranks would hold (cinfer_model_shard_memory): worked out from the plan, nothing
 * loaded; rank 0 was checked before anything was printed. */
static void print_ranks(const cinfer_model *model, int tp) {
    const cinfer_model_info *info = cinfer_model_get_info(model);
    printf("tensor parallelism (--tp %d: each rank's share, as stored)\n", tp);
    int64_t weights = 0, kv = 0;
    for (int r = 0; r < tp; r++) {
        cinfer_shard_memory m;
        if (cinfer_model_shard_memory(model, tp, r, &m) != CINFER_OK) {
            printf("  rank %d: %s\n", r, cinfer_last_error());
            continue;
        }
        char w[32], k[32];
        format_bytes((double)m.weight_bytes, w, sizeof w);
        format_bytes((double)m.kv_bytes_per_token, k, sizeof k);
        printf("  rank %-3d %d of %d heads, %d of %d KV heads%s, intermediate %d of %d; weights %s "
               "(%.1f%%), KV cache per token %s\n",
               r, m.n_heads, info->n_heads, m.n_kv_heads, info->n_kv_heads,
               m.kv_replicated ? " (replicated)" : "", m.intermediate_size, info->intermediate_size,
               w, 100.0 * (double)m.weight_bytes / (double)info->weight_bytes, k);
        weights += m.weight_bytes;
        kv += m.kv_bytes_per_token;
    }
    print_bytes("all ranks: weights", (double)weights, " (the embedding and norms once per rank)");
    print_bytes("all ranks: KV/token", (double)kv, " (replicated KV heads once per rank)");
}

static int inspect_main(int argc, char **argv) {
    const char *model_dir = NULL;
    cinfer_load_options tp_option = {0};
    for (int i = 0; i < argc; i += 2) {
        if (strcmp(argv[i], "--model") != 0 && strcmp(argv[i], "--tp") != 0)
            return usage_error("unknown option '%s'", argv[i]);
        if (i + 1 >= argc) return usage_error("option '%s' needs a value", argv[i]);
        if (strcmp(argv[i], "--tp") == 0) {
            const int bad = parse_load_option(argv[i], argv[i + 1], &tp_option);
            if (bad) return bad;
        } else {
            model_dir = argv[i + 1];
        }
    }
    if (!model_dir) return usage_error("%s", "--model DIR is required");
    const int tp = tp_option.tensor_parallel;
    cinfer_model *model;
    if (cinfer_model_load(model_dir, NULL, &model) != CINFER_OK) return fail();
    cinfer_shard_memory rank0;
    /* a tp that cannot split the model is refused, with its numbers, before anything is printed */
    if (tp > 1 && cinfer_model_shard_memory(model, tp, 0, &rank0) != CINFER_OK) {
        cinfer_model_free(model);
        return fail();
    }
    const cinfer_model_info *info = cinfer_model_get_info(model);
    cinfer_model_config config;
    cinfer_model_get_config(model, &config);
    const int n_tensors = cinfer_model_n_tensors(model);

    printf("model        %s\n", model_dir);
    printf("architecture %s\n", info->architecture);
    int n_unused = 0;
    for (int i = 0; i < n_tensors; i++) {
        cinfer_tensor_info t;
        n_unused += cinfer_model_tensor(model, i, &t) == CINFER_OK && !t.used;
    }
    printf("weights      %s, %d tensors", cinfer_model_weights_source(model), n_tensors);
    if (n_unused)
        printf(" (%d not used by %s with this config: marked below)", n_unused, info->architecture);
    printf("\n");
    print_config(info, &config);
    print_dtypes(model);

    printf("memory (CPU reference path)\n");
    print_bytes("weights", (double)info->weight_bytes,
                " (memory-mapped from the files, not copied)");
    print_bytes("KV cache per token", (double)info->kv_bytes_per_token,
                " (F32 K and V, all layers)");
    const int n_ctx = info->max_position_embeddings;
    char note[96];
    snprintf(note, sizeof note, " (KV cache, activations and scratch at %d positions)", n_ctx);
    print_bytes("session", (double)cinfer_session_memory_bytes(model, n_ctx), note);
    /* the pool a serving engine with default options would get (cinfer_engine_create) */
    int64_t pool_bytes = 0, pool_tokens = 0;
    if (cinfer_engine_kv_capacity(model, NULL, &pool_bytes, &pool_tokens) == CINFER_OK) {
        char amount[32];
        format_bytes((double)pool_bytes, amount, sizeof amount);
        printf("  %-22s %" PRId64 " tokens in %s (the serving engine's, default options)\n",
               "KV pool", pool_tokens, amount);
    } else {
        printf("  %-22s not sized: %s\n", "KV pool", cinfer_last_error());
    }
    if (tp > 1) print_ranks(model, tp);
    print_gpus();

    printf("tensors\n");
    for (int i = 0; i < n_tensors; i++) {
        cinfer_tensor_info t;
        if (cinfer_model_tensor(model, i, &t) != CINFER_OK) continue;
        char shape[160];
        printf("  %-56s %-5s %-16s %s%s\n", t.name, t.dtype,
               ci_shape_string(t.shape, t.n_dims, shape, sizeof shape), t.file,
               t.used ? "" : "  (unused)");
    }
    cinfer_model_free(model);
    return 0;
}
