/* cinfer run: generate from a prompt of token ids (--tokens), of text (--prompt) or of one chat
 * turn (--chat), printing ids or streaming the text as it forms. The request runs through the
 * continuous-batching engine, alone (docs/SERVING.md).
 *
 *   cinfer run --model DIR --tokens "1 15 7 42" [--max-new-tokens N] [--temperature T]
 *              [--top-k K] [--top-p P] [--seed S] [--ctx-size N] [--threads N]
 *              [--ignore-eos] [--dump-logits out.npy]
 *              [--backend cpu|cuda] [--dtype f32|bf16|fp16] [--attn auto|eager|sdpa|flash]
 *              [--device N] [--tp N] */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "cinfer.h"
#include "commands.h"
#include "npy.h"
#include "program.h"

static int run_main(int argc, char **argv);
/* what main.c dispatches to and prints in the usage */
const program_command run_command = {
    "run", run_main,
    "  run --model DIR --prompt TEXT      continue a text, streaming the new text\n"
    "  run --model DIR --chat TEXT        answer as the chat template of the checkpoint says\n"
    "  run --model DIR --tokens \"1 15 7\"   generate token ids from a prompt of token ids\n",
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
    "  --tp N               tensor parallelism: the model split across N ranks (default 1; the\n"
    "                       CPU runs them as threads, --threads shared among them)\n"};

/* A float option: parsed as a double in range, then narrowed. */
static int parse_float(const char *text, double minimum, double maximum, float *out) {
    double v;
    if (parse_double(text, minimum, maximum, &v) != 0) return -1;
    *out = (float)v;
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

static int parse_options(int argc, char **argv, options *o) {
    *o = (options){.max_new_tokens = 32, .sampling = {.temperature = 0.0f, .top_p = 1.0f}};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        int is_switch = strcmp(flag, "--ignore-eos") == 0;
        if (!is_switch && i + 1 >= argc) return usage_error("option '%s' needs a value", flag);
        const char *value = is_switch ? NULL : argv[i + 1];
        int launch_status;
        if (value && parse_tp_launch_option(flag, value, &launch_status)) {
            if (launch_status) return launch_status;
            i++;
            continue;
        }
        long number;
        /* the options whose value is taken as it is */
        const struct {
            const char *flag;
            const char **field;
        } text_options[] = {{"--model", &o->model_dir},    {"--tokens", &o->tokens_text},
                            {"--prompt", &o->prompt_text}, {"--chat", &o->chat_text},
                            {"--system", &o->system_text}, {"--dump-logits", &o->dump_logits}};
        const char **text = NULL;
        for (size_t k = 0; k < sizeof text_options / sizeof text_options[0]; k++)
            if (strcmp(flag, text_options[k].flag) == 0) text = text_options[k].field;
        if (text) {
            *text = value;
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
            if (parse_float(value, 0.0, FLT_MAX, &o->sampling.temperature) != 0)
                return usage_error("--temperature needs a number >= 0, got '%s'", value);
        } else if (strcmp(flag, "--top-p") == 0) {
            if (parse_float(value, 0.0, 1.0, &o->sampling.top_p) != 0 ||
                !(o->sampling.top_p > 0.0f))
                return usage_error("--top-p needs a number in (0, 1], got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0 || strcmp(flag, "--dtype") == 0 ||
                   strcmp(flag, "--attn") == 0 || strcmp(flag, "--device") == 0 ||
                   strcmp(flag, "--tp") == 0) {
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

/* What `run` prints as tokens arrive: ids for an id prompt, else text as soon as it forms whole
 * UTF-8 characters. Text runs also end at the tokenizer's and generation_config.json's eos
 * tokens, which chat checkpoints use beside config.json's (Llama 3 Instruct ends turns with
 * <|eot_id|>); those end the text and are not part of it. */
enum { MAX_STOP_TOKENS = 1 + CINFER_MAX_EOS_TOKENS };
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
        if (cinfer_generation_eos_tokens(o->model_dir, printer->stop_tokens, CINFER_MAX_EOS_TOKENS,
                                         &n_generation_eos) != CINFER_OK)
            return fail();
        printer->n_stop_tokens = n_generation_eos;
        const int32_t tokenizer_eos = cinfer_tokenizer_eos_id(*tok);
        if (tokenizer_eos >= 0) printer->stop_tokens[printer->n_stop_tokens++] = tokenizer_eos;
    }
    return 0;
}

/* How a run ended, and how long its parts took. */
typedef struct run_result {
    int n_generated;
    double prefill_seconds; /* from the submission to the first token */
    double decode_seconds;  /* from the first token to the last */
    const char *stop;       /* what ended it, in words */
} run_result;

/* One request through the continuous-batching engine (the same path `serve` and `bench` take),
 * alone: a pool of exactly its context and no prefix cache. New tokens stop at the context's end
 * as the session's did ("context full"). */
static cinfer_status generate(cinfer_model *model, const options *o, const int32_t *prompt,
                              int n_prompt, int n_ctx, token_printer *printer, float *prompt_logits,
                              run_result *result) {
    *result = (run_result){0, 0.0, 0.0, "max new tokens"};
    const int room = n_ctx - n_prompt;
    cinfer_engine_options engine_options = {
        .max_seqs = 1,
        .max_model_len = n_ctx,
        .disable_prefix_caching = 1,
    };
    enum { BLOCK = 16 };
    engine_options.block_size = BLOCK;
    engine_options.n_kv_blocks = (n_ctx + BLOCK - 1) / BLOCK;
    cinfer_engine *engine = NULL;
    const cinfer_status created = cinfer_engine_create(model, &engine_options, &engine);
    if (created != CINFER_OK) return created;
    const cinfer_request_params params = {
        .max_new_tokens = o->max_new_tokens < room ? o->max_new_tokens : room,
        .sampling = o->sampling,
        .ignore_eos = o->ignore_eos,
        .stop_tokens = printer->stop_tokens,
        .n_stop_tokens = printer->n_stop_tokens,
        .prompt_logits = prompt_logits,
    };
    const double start = ci_now_seconds();
    double first = start, last = start;
    uint64_t id = 0;
    cinfer_status status = cinfer_engine_add_request(engine, prompt, n_prompt, &params, &id);
    for (int done = 0; status == CINFER_OK && !done;) {
        const cinfer_request_output *outputs;
        int n_outputs;
        status = cinfer_engine_step(engine, &outputs, &n_outputs);
        for (int i = 0; status == CINFER_OK && i < n_outputs; i++) {
            const cinfer_request_output *out = &outputs[i];
            if (out->token >= 0) {
                last = ci_now_seconds();
                if (result->n_generated++ == 0) first = last;
                if (print_token(printer, out->token) != 0) {
                    cinfer_engine_abort(engine, id); /* its message is set */
                    result->stop = "stopped";
                }
            }
            if (out->finish_reason == CINFER_FINISH_NONE) continue;
            done = 1;
            if (out->finish_reason == CINFER_FINISH_STOP) result->stop = "eos token";
            if (out->finish_reason == CINFER_FINISH_LENGTH && o->max_new_tokens > room)
                result->stop = "context full";
        }
    }
    result->prefill_seconds = (result->n_generated ? first : ci_now_seconds()) - start;
    result->decode_seconds = last - first;
    cinfer_engine_free(engine);
    return status;
}

/* After the text, not before it, so that it never lands inside the output on a terminal. */
static void print_sampling(const cinfer_sampling *sampling) {
    if (sampling->temperature > 0.0f)
        fprintf(stderr, "cinfer: sampled with temperature %g, top-k %d, top-p %g, seed %llu\n",
                (double)sampling->temperature, sampling->top_k, (double)sampling->top_p,
                (unsigned long long)sampling->seed);
}

static int run_main(int argc, char **argv) {
    options o;
    int usage = parse_options(argc, argv, &o);
    if (usage) return usage;
    if (!!o.tokens_text + !!o.prompt_text + !!o.chat_text != 1)
        return usage_error("%s",
                           "run needs one of --tokens \"ID ID ...\", --prompt TEXT or --chat TEXT");
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
    float *prompt_logits = NULL;
    int status = EXIT_ERROR;
    if (program_load_model(o.model_dir, &load, &model) != CINFER_OK) {
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
    if (o.dump_logits) {
        prompt_logits = malloc((size_t)n_prompt * (size_t)info->vocab_size * sizeof(float));
        if (!prompt_logits) {
            fprintf(stderr, "cinfer: error: out of memory for %d x %d logits\n", n_prompt,
                    info->vocab_size);
            goto done;
        }
    }
    run_result result;
    cinfer_status generated =
        generate(model, &o, prompt, n_prompt, n_ctx, &printer, prompt_logits, &result);
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
    fprintf(stderr, "cinfer: prompt: %d tokens in %.3f s (%.2f tokens/s)", n_prompt,
            result.prefill_seconds,
            result.prefill_seconds > 0 ? n_prompt / result.prefill_seconds : 0.0);
    if (result.n_generated > 1)
        fprintf(stderr, "; generated %d tokens, %.2f tokens/s after the first", result.n_generated,
                (result.n_generated - 1) / result.decode_seconds);
    fprintf(stderr, "; stop: %s\n", result.stop);
    print_sampling(&o.sampling);
    status = 0;
done:
    free(prompt_logits);
    free(prompt);
    cinfer_detokenizer_free(printer.detokenizer);
    cinfer_tokenizer_free(tok);
    cinfer_model_free(model);
    return status;
}
