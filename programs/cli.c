/* The cinfer command line:
 *
 *   cinfer inspect --model DIR
 *   cinfer run --model DIR --tokens "1 15 7 42" [--max-new-tokens N] [--temperature T]
 *              [--top-k K] [--top-p P] [--seed S] [--ctx-size N] [--threads N]
 *              [--ignore-eos] [--dump-logits out.npy]
 *              [--backend cpu|cuda] [--dtype f32|bf16|fp16] [--attn auto|eager|sdpa|flash]
 * [--device N] cinfer compare --model DIR --tokens "1 15 7" [--dtype ...] [--attn ...] [--device N]
 *                                              (engine/cli_compare.c)
 *   cinfer tokenize --model DIR [--text TEXT | < file] [--ids] [--no-special]
 *
 * Errors go to stderr as one line naming what was wrong, with exit status 1 (2 for misuse). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "../loaders/tokenizer.h"
#include "../models/model.h"
#include "cinfer.h"
#include "program.h"
#include "../kernels/device.h"
#include "npy.h"

enum { EXIT_ERROR = 1, EXIT_USAGE = 2 };

static const char *usage_text =
    "usage: cinfer <command> [options]\n"
    "\n"
    "commands:\n"
    "  inspect --model DIR      architecture, parameters, dtypes, tensors, memory needed\n"
    "  run --model DIR --prompt TEXT      continue a text, streaming the new text\n"
    "  run --model DIR --chat TEXT        answer as the chat template of the checkpoint says\n"
    "  run --model DIR --tokens \"1 15 7\"   generate token ids from a prompt of token ids\n"
    "  bench --model DIR [-p 512] [-n 128]   prefill and decode throughput (bench --help)\n"
    "  tokenize --model DIR [--text TEXT]  text (or stdin) to token ids with tokenizer.json\n"
    "  compare --model DIR --tokens \"1 15 7\"   the GPU against the CPU reference, layer by "
    "layer\n"
    "\n"
    "run options:\n"
    "  --system TEXT        with --chat: a system turn before the user's\n"
    "  --max-new-tokens N   tokens to generate (default 32; 0 only runs the prompt)\n"
    "  --temperature T      0 = greedy (default); > 0 samples\n"
    "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
    "  --top-p P            keep the smallest set with probability >= P (default 1 = off)\n"
    "  --seed S             random seed for sampling (default: from the clock, printed)\n"
    "  --ctx-size N         KV cache positions (default: prompt + new tokens, at most\n"
    "                       max_position_embeddings)\n"
    "  --threads N          CPU threads (default: OpenMP's)\n"
    "  --ignore-eos         keep generating after an eos token\n"
    "  --dump-logits PATH   write the logits of every prompt position as float32 .npy\n"
    "                       of shape [prompt tokens, vocab_size]\n"
    "  --backend B          cpu (the reference path, default) or cuda\n"
    "  --dtype D            cuda: f32 (default), bf16 or fp16 for weights and GEMM inputs\n"
    "  --attn A             cuda: auto (default: the fastest that runs the model), eager, sdpa\n"
    "                       or flash\n"
    "  --device N           cuda: the GPU to run on (default 0)\n"
    "\n"
    "compare options: --dtype, --attn, --device, --threads as above\n"
    "\n"
    "tokenize options (only the tokenizer files of DIR are read):\n"
    "  --text TEXT          the text (default: all of stdin)\n"
    "  --ids                print only the ids, space-separated on one line\n"
    "  --no-special         do not add BOS/EOS (the post_processor's special tokens)\n";

int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "cinfer: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage_text);
    return EXIT_USAGE;
}

int fail(void) {
    fprintf(stderr, "cinfer: error: %s\n", cinfer_last_error());
    if (getenv("CINFER_DEBUG"))
        fprintf(stderr, "cinfer: raised at %s\n", cinfer_last_error_location());
    return EXIT_ERROR;
}

/* Strict number parsing: the whole argument must be a number in range. */
int parse_long(const char *text, long minimum, long maximum, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < minimum || v > maximum) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *text, float *out) {
    char *end;
    errno = 0;
    float v = strtof(text, &end);
    if (errno || end == text || *end != '\0' || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

typedef struct options {
    const char *model_dir;
    cinfer_load_options load; /* --backend, --dtype, --attn, --device, --threads */
    const char *tokens_text;
    const char *prompt_text; /* --prompt: plain text, encoded with the checkpoint's tokenizer */
    const char *chat_text;   /* --chat: one user turn, formatted with its chat template */
    const char *system_text; /* --system: a system turn before it */
    const char *dump_logits;
    int max_new_tokens;
    int ctx_size;
    int n_threads;
    int ignore_eos;
    int seed_given;
    cinfer_sampling sampling;
} options;

static int parse_options(int argc, char **argv, int allow_run_options, options *o) {
    *o = (options){.max_new_tokens = 32, .sampling = {.temperature = 0.0f, .top_p = 1.0f}};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        int is_switch = strcmp(flag, "--ignore-eos") == 0;
        if (!is_switch && i + 1 >= argc) return usage_error("option '%s' needs a value", flag);
        const char *value = is_switch ? NULL : argv[i + 1];
        long number;
        if (strcmp(flag, "--model") == 0) {
            o->model_dir = value;
        } else if (!allow_run_options) {
            return usage_error("unknown option '%s'", flag);
        } else if (strcmp(flag, "--tokens") == 0) {
            o->tokens_text = value;
        } else if (strcmp(flag, "--prompt") == 0) {
            o->prompt_text = value;
        } else if (strcmp(flag, "--chat") == 0) {
            o->chat_text = value;
        } else if (strcmp(flag, "--system") == 0) {
            o->system_text = value;
        } else if (strcmp(flag, "--dump-logits") == 0) {
            o->dump_logits = value;
        } else if (strcmp(flag, "--max-new-tokens") == 0) {
            if (parse_long(value, 0, INT_MAX, &number) != 0)
                return usage_error("--max-new-tokens needs an integer >= 0, got '%s'", value);
            o->max_new_tokens = (int)number;
        } else if (strcmp(flag, "--ctx-size") == 0) {
            if (parse_long(value, 1, INT_MAX, &number) != 0)
                return usage_error("--ctx-size needs an integer >= 1, got '%s'", value);
            o->ctx_size = (int)number;
        } else if (strcmp(flag, "--threads") == 0) {
            if (parse_long(value, 1, 4096, &number) != 0)
                return usage_error("--threads needs an integer in [1, 4096], got '%s'", value);
            o->n_threads = (int)number;
        } else if (strcmp(flag, "--top-k") == 0) {
            if (parse_long(value, 0, INT_MAX, &number) != 0)
                return usage_error("--top-k needs an integer >= 0, got '%s'", value);
            o->sampling.top_k = (int)number;
        } else if (strcmp(flag, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long seed = strtoull(value, &end, 10);
            if (errno || end == value || *end != '\0' || value[0] == '-')
                return usage_error("--seed needs a non-negative integer, got '%s'", value);
            o->sampling.seed = seed;
            o->seed_given = 1;
        } else if (strcmp(flag, "--temperature") == 0) {
            if (parse_float(value, &o->sampling.temperature) != 0 || o->sampling.temperature < 0)
                return usage_error("--temperature needs a number >= 0, got '%s'", value);
        } else if (strcmp(flag, "--top-p") == 0) {
            if (parse_float(value, &o->sampling.top_p) != 0 || !(o->sampling.top_p > 0.0f) ||
                o->sampling.top_p > 1.0f)
                return usage_error("--top-p needs a number in (0, 1], got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0 || strcmp(flag, "--dtype") == 0 ||
                   strcmp(flag, "--attn") == 0 || strcmp(flag, "--device") == 0) {
            int bad = parse_load_option(flag, value, &o->load);
            if (bad) return bad;
        } else if (is_switch) {
            o->ignore_eos = 1;
        } else {
            return usage_error("unknown option '%s'", flag);
        }
        if (!is_switch) i++;
    }
    if (!o->model_dir) return usage_error("%s", "--model DIR is required");
    return 0;
}

/* "1 15 7 42" -> ids; each must be an integer (the vocabulary check comes with the model).
 * Returns 0, or the exit status once the reason is printed: a malformed list is misuse. */
int parse_token_list(const char *text, int32_t **ids, int *n_ids) {
    size_t capacity = strlen(text) / 2 + 1;
    int32_t *list = malloc(capacity * sizeof *list);
    int n = 0;
    const char *p = text;
    if (!list) {
        fprintf(stderr, "cinfer: error: out of memory reading --tokens\n");
        return EXIT_ERROR;
    }
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != ',' && *end != '\n')) {
            fprintf(stderr, "cinfer: error: --tokens: '%.*s' at token %d is not an integer id\n",
                    (int)strcspn(p, " \t,\n"), p, n);
            free(list);
            return EXIT_USAGE;
        }
        list[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0) {
        fprintf(stderr, "cinfer: error: --tokens: the prompt is empty\n");
        free(list);
        return EXIT_USAGE;
    }
    *ids = list;
    *n_ids = n;
    return 0;
}

void format_bytes(double bytes, char *buf, size_t size) {
    const char *unit = "B";
    const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
    for (int i = 0; i < 4 && bytes >= 1024.0; i++) {
        bytes /= 1024.0;
        unit = units[i];
    }
    snprintf(buf, size, "%.2f %s", bytes, unit);
}

static void print_bytes(const char *label, double bytes, const char *note) {
    char amount[32];
    format_bytes(bytes, amount, sizeof amount);
    printf("  %-22s %s%s\n", label, amount, note);
}

static int cmd_inspect(int argc, char **argv) {
    options o;
    int usage = parse_options(argc, argv, 0, &o);
    if (usage) return usage;
    cinfer_model *model;
    if (cinfer_model_load(o.model_dir, NULL, &model) != CINFER_OK) return fail();
    const cinfer_model_info *info = cinfer_model_get_info(model);
    const ci_config *c = model->config;
    const ci_checkpoint *ck = model->checkpoint;

    printf("model        %s\n", o.model_dir);
    printf("architecture %s\n", info->architecture);
    int n_unused = 0;
    for (int i = 0; i < ck->n_index; i++) n_unused += !model->bound[i];
    printf("weights      %s, %d tensors", ck->weights_description, ck->n_index);
    if (n_unused)
        printf(" (%d not used by %s with this config: marked below)", n_unused, c->architecture);
    printf("\n");
    printf("config\n");
    printf("  vocab_size %d, hidden_size %d, intermediate_size %d, layers %d\n", c->vocab_size,
           c->hidden_size, c->intermediate_size, c->n_layers);
    printf("  heads %d, kv heads %d (%d per kv head), head_dim %d%s\n", c->n_heads, c->n_kv_heads,
           c->n_heads / c->n_kv_heads, c->head_dim,
           c->head_dim * c->n_heads != c->hidden_size ? " (given, not hidden/heads)" : "");
    printf("  hidden_act %s, rms_norm_eps %g, max_position_embeddings %d\n", c->hidden_act_name,
           c->rms_norm_eps, c->max_position_embeddings);
    printf("  rope %s, theta %g", ci_rope_type_name(c->rope.type), c->rope.theta);
    if (c->rope.type != CI_ROPE_DEFAULT) printf(", factor %g", c->rope.factor);
    if (c->rope.type == CI_ROPE_LLAMA3 || c->rope.type == CI_ROPE_YARN)
        printf(", original_max_position_embeddings %d", c->rope.original_max_position_embeddings);
    printf("\n  attention_bias %s, mlp_bias %s, tie_word_embeddings %s, dtype %s\n",
           c->attention_bias ? "yes" : "no", c->mlp_bias ? "yes" : "no",
           c->tie_word_embeddings ? "yes" : "no", c->torch_dtype[0] ? c->torch_dtype : "-");
    printf("  bos_token_id %d, eos_token_id", c->bos_token_id);
    for (int i = 0; i < c->n_eos; i++) printf("%s%d", i ? ", " : " ", c->eos_token_ids[i]);
    const double n = (double)info->n_params;
    const char *unit = n >= 1e9 ? "B" : n >= 1e6 ? "M" : "K";
    const double scaled = n >= 1e9 ? n / 1e9 : n >= 1e6 ? n / 1e6 : n / 1e3;
    printf("\nparameters   %" PRId64 " (%.2f %s)\n", info->n_params, scaled, unit);

    printf("dtypes\n");
    for (int d = 0; d < CI_DTYPE_COUNT; d++) {
        int64_t count = 0, bytes = 0;
        for (int i = 0; i < ck->n_index; i++) {
            if (ck->index[i]->dtype != (ci_dtype)d) continue;
            count++;
            bytes += (int64_t)(ck->index[i]->end - ck->index[i]->begin);
        }
        if (count)
            printf("  %-5s %6" PRId64 " tensors, %" PRId64 " bytes\n", ci_dtype_name(d), count,
                   bytes);
    }

    printf("memory (CPU reference path)\n");
    print_bytes("weights", (double)info->weight_bytes,
                " (memory-mapped from the files, not copied)");
    print_bytes("KV cache per token", (double)info->kv_bytes_per_token,
                " (F32 K and V, all layers)");
    const int n_ctx = c->max_position_embeddings;
    char note[96];
    snprintf(note, sizeof note, " (KV cache, activations and scratch at %d positions)", n_ctx);
    print_bytes("session", (double)cinfer_session_memory_bytes(model, n_ctx), note);

    ci_device_info devices[16];
    int n_devices = ci_cuda_devices(devices, 16);
    if (!ci_cuda_compiled())
        printf("GPUs         none (built without CUDA)\n");
    else if (n_devices == 0)
        printf("GPUs         none found\n");
    for (int i = 0; i < n_devices && i < 16; i++)
        printf("GPU %-8d %s (sm_%d%d), %.2f GiB free of %.2f GiB\n", i, devices[i].name,
               devices[i].compute_major, devices[i].compute_minor,
               devices[i].free_bytes / 1073741824.0, devices[i].total_bytes / 1073741824.0);

    printf("tensors\n");
    for (int i = 0; i < ck->n_index; i++) {
        const st_tensor *t = ck->index[i];
        char shape[160];
        printf("  %-56s %-5s %-16s %s%s\n", t->name, ci_dtype_name(t->dtype),
               ci_shape_string(t->shape, t->n_dims, shape, sizeof shape),
               ci_base_name(t->file->path), model->bound[i] ? "" : "  (unused)");
    }
    cinfer_model_free(model);
    return 0;
}

/* What `run` prints as tokens arrive: ids for an id prompt, else text as soon as it forms whole
 * UTF-8 characters. Text runs also end at the tokenizer's and generation_config.json's eos
 * tokens, which chat checkpoints use beside config.json's (Llama 3 Instruct ends turns with
 * <|eot_id|>); those end the text and are not part of it. */
enum { MAX_STOP_TOKENS = 1 + CI_MAX_EOS_TOKENS };
typedef struct token_printer {
    int n_printed;
    cinfer_detokenizer *detokenizer; /* NULL: print ids */
    int32_t stop_tokens[MAX_STOP_TOKENS];
    int n_stop_tokens;
    int failed; /* the detokenizer refused a token; its message is set */
} token_printer;

static int print_token(void *user, int32_t token) {
    token_printer *p = user;
    if (!p->detokenizer) {
        printf("%s%d", p->n_printed++ ? " " : "", token);
        fflush(stdout);
        return 0;
    }
    for (int i = 0; i < p->n_stop_tokens; i++)
        if (token == p->stop_tokens[i]) return 0; /* generation ends here; not text */
    const char *text;
    size_t n_bytes;
    if (cinfer_detokenize(p->detokenizer, token, &text, &n_bytes) != CINFER_OK)
        return p->failed = 1;
    fwrite(text, 1, n_bytes, stdout);
    fflush(stdout);
    p->n_printed++;
    return 0;
}

/* --prompt and --chat: the prompt ids from text, and the printer that turns ids back into text. */
static int encode_text_prompt(const options *o, cinfer_tokenizer **tok, token_printer *printer,
                              int32_t **prompt, int *n_prompt) {
    *prompt = NULL;
    if (cinfer_tokenizer_load(o->model_dir, tok) != CINFER_OK) return fail();
    char *chat = NULL;
    if (o->chat_text) {
        cinfer_chat_message turns[2] = {{"system", o->system_text}, {"user", o->chat_text}};
        int n_turns = o->system_text ? 2 : 1;
        if (cinfer_chat_apply(*tok, turns + (2 - n_turns), n_turns, 1, &chat) != CINFER_OK)
            return fail();
    }
    const char *text = chat ? chat : o->prompt_text;
    /* a chat template writes its own BOS; plain text gets what the tokenizer adds */
    cinfer_status status =
        cinfer_tokenize(*tok, text, strlen(text), chat == NULL, prompt, n_prompt);
    free(chat);
    if (status != CINFER_OK) return fail();
    if (*n_prompt == 0) {
        fprintf(stderr, "cinfer: error: the prompt is empty (no tokens)\n");
        return EXIT_ERROR;
    }
    if (cinfer_detokenizer_create(*tok, 1, &printer->detokenizer) != CINFER_OK) return fail();
    if (!o->ignore_eos) {
        int n_generation_eos;
        if (config_load_generation_eos(o->model_dir, printer->stop_tokens, &n_generation_eos) !=
            CINFER_OK)
            return fail();
        printer->n_stop_tokens = n_generation_eos;
        const int32_t tokenizer_eos = cinfer_tokenizer_eos_id(*tok);
        if (tokenizer_eos >= 0) printer->stop_tokens[printer->n_stop_tokens++] = tokenizer_eos;
    }
    return 0;
}

static const char *stop_reason_name(cinfer_stop_reason reason) {
    switch (reason) {
    case CINFER_STOP_MAX_TOKENS: return "max new tokens";
    case CINFER_STOP_EOS: return "eos token";
    case CINFER_STOP_CONTEXT: return "context full";
    case CINFER_STOP_CALLBACK: return "stopped";
    }
    return "?";
}

/* After the text, not before it, so that it never lands inside the output on a terminal. */
static void print_sampling(const cinfer_sampling *sampling) {
    if (sampling->temperature > 0.0f)
        fprintf(stderr, "cinfer: sampled with temperature %g, top-k %d, top-p %g, seed %llu\n",
                (double)sampling->temperature, sampling->top_k, (double)sampling->top_p,
                (unsigned long long)sampling->seed);
}

static int cmd_run(int argc, char **argv) {
    options o;
    int usage = parse_options(argc, argv, 1, &o);
    if (usage) return usage;
    if (!!o.tokens_text + !!o.prompt_text + !!o.chat_text != 1)
        return usage_error("%s", "run needs one of --tokens \"ID ID ...\", --prompt TEXT or "
                                 "--chat TEXT");
    if (o.system_text && !o.chat_text) return usage_error("%s", "--system goes with --chat");
    int32_t *prompt = NULL;
    int n_prompt = 0;
    token_printer printer = {0};
    cinfer_tokenizer *tok = NULL;
    if (o.tokens_text) {
        int bad_tokens = parse_token_list(o.tokens_text, &prompt, &n_prompt);
        if (bad_tokens) return bad_tokens;
    } else {
        int bad_text = encode_text_prompt(&o, &tok, &printer, &prompt, &n_prompt);
        if (bad_text) {
            free(prompt);
            cinfer_detokenizer_free(printer.detokenizer);
            cinfer_tokenizer_free(tok);
            return bad_text;
        }
    }
    if (!o.seed_given) o.sampling.seed = (uint64_t)time(NULL);

    cinfer_load_options load = o.load;
    load.n_threads = o.n_threads;
    cinfer_model *model = NULL;
    cinfer_session *session = NULL;
    float *prompt_logits = NULL;
    int status = EXIT_ERROR;
    if (cinfer_model_load(o.model_dir, &load, &model) != CINFER_OK) {
        status = fail();
        goto done;
    }
    const cinfer_model_info *info = cinfer_model_get_info(model);
    int n_ctx = o.ctx_size;
    if (n_ctx == 0) {
        if (n_prompt > info->max_position_embeddings) {
            fprintf(stderr,
                    "cinfer: error: the prompt has %d tokens, more than max_position_embeddings "
                    "= %d in config.json (pass --ctx-size to run past it)\n",
                    n_prompt, info->max_position_embeddings);
            goto done;
        }
        long wanted = (long)n_prompt + o.max_new_tokens;
        n_ctx =
            wanted < info->max_position_embeddings ? (int)wanted : info->max_position_embeddings;
    }
    if (n_prompt > n_ctx) {
        fprintf(stderr, "cinfer: error: the prompt has %d tokens but --ctx-size is %d\n", n_prompt,
                n_ctx);
        goto done;
    }
    if (cinfer_session_create(model, n_ctx, &session) != CINFER_OK) {
        status = fail();
        goto done;
    }
    if (o.dump_logits) {
        prompt_logits = malloc((size_t)n_prompt * (size_t)info->vocab_size * sizeof(float));
        if (!prompt_logits) {
            fprintf(stderr, "cinfer: error: out of memory for %d x %d logits\n", n_prompt,
                    info->vocab_size);
            goto done;
        }
    }
    cinfer_generate_params params = {o.max_new_tokens, o.sampling, o.ignore_eos,
                                     printer.stop_tokens, printer.n_stop_tokens};
    cinfer_generate_stats stats;
    cinfer_status generated = cinfer_generate(session, prompt, n_prompt, &params, print_token,
                                              &printer, prompt_logits, &stats);
    if (printer.detokenizer && generated == CINFER_OK && !printer.failed) {
        const char *rest;
        size_t n_rest;
        cinfer_detokenizer_finish(printer.detokenizer, &rest, &n_rest);
        fwrite(rest, 1, n_rest, stdout);
    }
    if (generated != CINFER_OK || printer.failed) {
        if (printer.n_printed) printf("\n");
        print_sampling(&o.sampling); /* the seed, to replay what went wrong */
        status = fail();
        goto done;
    }
    printf("\n");
    fflush(stdout);
    if (o.dump_logits &&
        ci_write_npy_f32(o.dump_logits, prompt_logits, n_prompt, info->vocab_size) != CINFER_OK) {
        status = fail();
        goto done;
    }
    fprintf(stderr, "cinfer: prompt: %d tokens in %.3f s (%.2f tokens/s)", stats.n_prompt,
            stats.prefill_seconds,
            stats.prefill_seconds > 0 ? stats.n_prompt / stats.prefill_seconds : 0.0);
    if (stats.n_generated > 1)
        fprintf(stderr, "; generated %d tokens, %.2f tokens/s after the first", stats.n_generated,
                (stats.n_generated - 1) / stats.decode_seconds);
    fprintf(stderr, "; stop: %s\n", stop_reason_name(stats.stop_reason));
    print_sampling(&o.sampling);
    status = 0;
done:
    free(prompt_logits);
    free(prompt);
    cinfer_detokenizer_free(printer.detokenizer);
    cinfer_tokenizer_free(tok);
    cinfer_session_free(session);
    cinfer_model_free(model);
    return status;
}

/* Writes bytes so that every one shows: printable UTF-8 as it is, the rest as escapes. */
static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '\\')
            fputs("\\\\", stdout);
        else if (c == '"')
            fputs("\\\"", stdout);
        else if (c < 0x20 || c == 0x7F)
            printf("\\x%02X", c);
        else if (c < 0x80)
            putchar(c);
        else {
            /* a whole, valid multi-byte character prints as itself; stray bytes as \xNN */
            int need = c >= 0xF0 && c <= 0xF4 ? 3 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xC2 ? 1 : -1;
            int ok = need > 0 && i + (size_t)need < n;
            for (int k = 1; ok && k <= need; k++)
                ok = ((unsigned char)s[i + (size_t)k] & 0xC0) == 0x80;
            if (ok) {
                fwrite(s + i, 1, (size_t)need + 1, stdout);
                i += (size_t)need;
            } else {
                printf("\\x%02X", c);
            }
        }
    }
}

/* All of stdin, for tokenize without --text. */
static int read_stdin(char **text, size_t *n) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, stdin);
        if (len < cap) break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    if (!buf || ferror(stdin)) {
        free(buf);
        fprintf(stderr, "cinfer: error: %s reading stdin\n", buf ? "read error" : "out of memory");
        return EXIT_ERROR;
    }
    *text = buf;
    *n = len;
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    const char *model_dir = NULL, *text_arg = NULL;
    int ids_only = 0, add_special = 1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0) {
            ids_only = 1;
        } else if (strcmp(argv[i], "--no-special") == 0) {
            add_special = 0;
        } else if (strcmp(argv[i], "--model") == 0 || strcmp(argv[i], "--text") == 0) {
            if (i + 1 >= argc) return usage_error("option '%s' needs a value", argv[i]);
            *(argv[i][2] == 'm' ? &model_dir : &text_arg) = argv[i + 1];
            i++;
        } else {
            return usage_error("unknown option '%s' for tokenize", argv[i]);
        }
    }
    if (!model_dir) return usage_error("%s", "--model DIR is required");
    cinfer_tokenizer *tok;
    if (cinfer_tokenizer_load(model_dir, &tok) != CINFER_OK) return fail();
    char *text = NULL;
    size_t n_text = 0;
    if (text_arg) {
        n_text = strlen(text_arg);
    } else {
        int bad = read_stdin(&text, &n_text);
        if (bad) {
            cinfer_tokenizer_free(tok);
            return bad;
        }
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    int status = 0;
    if (cinfer_tokenize(tok, text_arg ? text_arg : text, n_text, add_special, &ids, &n_ids) !=
        CINFER_OK) {
        status = fail();
    } else if (ids_only) {
        for (int i = 0; i < n_ids; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
    } else {
        /* id, the text the token stands for (quoted, escaped), then its vocabulary string */
        for (int i = 0; i < n_ids && status == 0; i++) {
            char *bytes;
            size_t n_bytes;
            if (tokenizer_token_bytes(tok, ids[i], &bytes, &n_bytes) != CINFER_OK) {
                status = fail();
                break;
            }
            const char *piece = cinfer_tokenizer_piece(tok, ids[i]);
            printf("%8d  \"", ids[i]);
            print_escaped(bytes, n_bytes);
            printf("\"  %s", cinfer_tokenizer_is_special(tok, ids[i]) ? "special " : "");
            print_escaped(piece, strlen(piece));
            printf("\n");
            free(bytes);
        }
    }
    free(ids);
    free(text);
    cinfer_tokenizer_free(tok);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "inspect") == 0) return cmd_inspect(argc - 2, argv + 2);
    if (strcmp(argv[1], "run") == 0) return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "bench") == 0) return cinfer_bench_main(argc - 2, argv + 2);
    if (strcmp(argv[1], "tokenize") == 0) return cmd_tokenize(argc - 2, argv + 2);
    if (strcmp(argv[1], "compare") == 0) return cmd_compare(argc - 2, argv + 2);
    return usage_error("unknown command '%s'", argv[1]);
}
