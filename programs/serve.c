/* cinfer serve: an OpenAI-compatible HTTP server on the continuous-batching engine
 * (programs/serve.h lists its parts; docs/SERVING.md, "The HTTP server", what it answers).
 *
 *   cinfer serve --model DIR [--port 8000] [--host 127.0.0.1] [--api-key KEY]
 *                [--backend cpu|cuda] [--dtype D] [--attn A] [--device N] [--threads N] [--tp N]
 *                [--max-seqs N] [--max-batched-tokens N] [--max-model-len N] [--max-queued N] ...
 *
 * The daemon answers before the model is loaded (/health says 503 until then), so that a
 * supervisor sees the process alive while a large checkpoint loads. SIGINT or SIGTERM stop the
 * accepting, give the requests in flight --shutdown-grace seconds, abort the rest, and exit 0. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "commands.h"
#include "program.h"
#include "serve.h"

static int serve_main(int argc, char **argv);
const program_command serve_command = {
    "serve", serve_main,
    "  serve --model DIR [--port 8000]    serve the OpenAI API (completions, chat) over HTTP\n",
    "serve options:\n"
    "  --host H             the address to listen on (default 127.0.0.1; 0.0.0.0 for every one)\n"
    "  --port P             the port (default 8000; 0 picks a free one, printed)\n"
    "  --served-model-name NAME  the model's name in the API (default: the folder's name)\n"
    "  --api-key KEY        ask every /v1 request for \"Authorization: Bearer KEY\" (default:\n"
    "                       $CINFER_API_KEY; none when unset)\n"
    "  --max-seqs N         requests running at once (default 256)\n"
    "  --max-batched-tokens N  tokens per engine step (default 2048)\n"
    "  --max-model-len N    prompt plus answer of one request (default max_position_embeddings)\n"
    "  --block-size N       positions per KV block (default 16)\n"
    "  --kv-cache-bytes N   the KV pool's size (default: see docs/SERVING.md)\n"
    "  --gpu-memory-utilization F  cuda: the share of the GPU the pool may fill (default 0.9)\n"
    "  --no-prefix-caching  do not share the KV blocks of prompts that begin alike\n"
    "  --no-cuda-graphs     cuda: run decode steps without recording them\n"
    "  --max-queued N       requests waiting beyond the running ones before 503 (default 1024)\n"
    "  --max-body-bytes N   413 for a larger request body (default 16777216)\n"
    "  --http-threads N     threads reading and writing HTTP (default 4)\n"
    "  --timeout S          seconds a connection may sit idle (default 60)\n"
    "  --max-connections N  open connections at once (default 1024)\n"
    "  --shutdown-grace S   seconds requests in flight get after SIGINT/SIGTERM (default 30)\n"
    "  --threads N, --backend, --dtype, --attn, --device, --tp   as for run\n"};

/* The folder's last component: "models/diffllama-tiny/" serves "diffllama-tiny". */
static const char *folder_name(const char *dir, char *buf, size_t size) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t start = n;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(buf, size, "%.*s", (int)(n - start), dir + start);
    return buf;
}

static int parse_options(int argc, char **argv, serve_options *o) {
    *o = (serve_options){
        .host = "127.0.0.1",
        .port = 8000,
        .api_key = getenv("CINFER_API_KEY"),
        .max_queued = 1024,
        .max_body_bytes = 16u << 20,
        .http_threads = 4,
        .connection_timeout = 60,
        .max_connections = 1024,
        .shutdown_grace = 30.0,
    };
    if (o->api_key && !o->api_key[0]) o->api_key = NULL;
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--no-prefix-caching") == 0) {
            o->engine.disable_prefix_caching = 1;
            continue;
        }
        if (strcmp(flag, "--no-cuda-graphs") == 0) {
            o->engine.disable_cuda_graphs = 1;
            continue;
        }
        if (i + 1 >= argc) return usage_error("option '%s' needs a value", flag);
        const char *value = argv[++i];
        int launch_status;
        if (value && parse_tp_launch_option(flag, value, &launch_status)) {
            if (launch_status) return launch_status;
            continue;
        }
        long n;
        double x;
        /* integer options: where each goes and its range */
        const struct {
            const char *flag;
            int *field;
            long minimum, maximum;
        } ints[] = {
            {"--port", &o->port, 0, 65535},
            {"--threads", &o->load.n_threads, 1, 4096},
            {"--max-seqs", &o->engine.max_seqs, 1, CINFER_MAX_SEQS},
            {"--max-batched-tokens", &o->engine.max_batched_tokens, 1, INT_MAX},
            {"--max-model-len", &o->engine.max_model_len, 2, INT_MAX},
            {"--block-size", &o->engine.block_size, 1, 4096},
            {"--max-queued", &o->max_queued, 0, 1 << 20},
            {"--http-threads", &o->http_threads, 1, 256},
            {"--timeout", &o->connection_timeout, 1, 86400},
            {"--max-connections", &o->max_connections, 1, 1 << 20},
        };
        int done = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !done; k++) {
            if (strcmp(flag, ints[k].flag) != 0) continue;
            if (parse_long(value, ints[k].minimum, ints[k].maximum, &n) != 0) {
                char message[160];
                snprintf(message, sizeof message, "%s needs an integer in [%ld, %ld], got '%%s'",
                         flag, ints[k].minimum, ints[k].maximum);
                return usage_error(message, value);
            }
            *ints[k].field = (int)n;
            done = 1;
        }
        if (done) continue;
        if (strcmp(flag, "--model") == 0) {
            o->model_dir = value;
        } else if (strcmp(flag, "--host") == 0) {
            o->host = value;
        } else if (strcmp(flag, "--served-model-name") == 0) {
            if (!value[0]) return usage_error("%s", "--served-model-name must not be empty");
            o->served_name = value;
        } else if (strcmp(flag, "--api-key") == 0) {
            o->api_key = value[0] ? value : NULL;
        } else if (strcmp(flag, "--kv-cache-bytes") == 0) {
            if (parse_bytes(value, &o->engine.kv_cache_bytes) != 0)
                return usage_error("--kv-cache-bytes needs bytes (\"4294967296\", \"4G\", "
                                   "\"512M\"), got '%s'",
                                   value);
        } else if (strcmp(flag, "--max-body-bytes") == 0) {
            if (parse_double(value, 1024, 1 << 30, &x) != 0 || x != floor(x))
                return usage_error("--max-body-bytes needs an integer in [1024, 2^30], got '%s'",
                                   value);
            o->max_body_bytes = (size_t)x;
        } else if (strcmp(flag, "--gpu-memory-utilization") == 0) {
            if (parse_double(value, 1e-3, 1.0, &o->engine.gpu_memory_utilization) != 0)
                return usage_error("--gpu-memory-utilization needs a number in (0, 1], got '%s'",
                                   value);
        } else if (strcmp(flag, "--shutdown-grace") == 0) {
            if (parse_double(value, 0, 86400, &o->shutdown_grace) != 0)
                return usage_error("--shutdown-grace needs seconds in [0, 86400], got '%s'", value);
        } else if (strcmp(flag, "--backend") == 0 || strcmp(flag, "--dtype") == 0 ||
                   strcmp(flag, "--attn") == 0 || strcmp(flag, "--device") == 0 ||
                   strcmp(flag, "--tp") == 0) {
            const int bad = parse_load_option(flag, value, &o->load);
            if (bad) return bad;
        } else {
            return usage_error("unknown option '%s'", flag);
        }
    }
    if (!o->model_dir) return usage_error("%s", "--model DIR is required");
    if (o->engine.max_seqs == 0) o->engine.max_seqs = 256; /* the engine's default, for 503s */
    return 0;
}

/* ---- signals ---------------------------------------------------------------------------------
 */

static volatile sig_atomic_t stop_signal;
static void on_signal(int signal_number) { stop_signal = signal_number; }

/* Blocks until SIGINT or SIGTERM. */
static void wait_for_signal(serve_server *s) {
    (void)s; /* a dead engine keeps the server up, answering 503, until it is told to stop */
    while (!stop_signal) {
        struct timespec tick = {0, 50 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
}

/* ---- loading ---------------------------------------------------------------------------------
 */

static int load(serve_server *s) {
    const serve_options *o = &s->options;
    if (cinfer_tokenizer_load(o->model_dir, &s->tokenizer) != CINFER_OK) return fail();
    if (program_load_model(o->model_dir, &o->load, &s->model) != CINFER_OK) return fail();
    const cinfer_model_info *info = cinfer_model_get_info(s->model);
    s->vocab_size = info->vocab_size;
    if (cinfer_tokenizer_vocab_size(s->tokenizer) > s->vocab_size) {
        fprintf(stderr,
                "cinfer: error: %s/tokenizer.json has %d tokens, more than vocab_size = %d in "
                "config.json\n",
                o->model_dir, cinfer_tokenizer_vocab_size(s->tokenizer), s->vocab_size);
        return EXIT_ERROR;
    }
    int n_eos = 0;
    if (cinfer_generation_eos_tokens(o->model_dir, s->stop_tokens, CINFER_MAX_EOS_TOKENS, &n_eos) !=
        CINFER_OK)
        return fail();
    s->n_stop_tokens = n_eos;
    const int32_t tokenizer_eos = cinfer_tokenizer_eos_id(s->tokenizer);
    if (tokenizer_eos >= 0) s->stop_tokens[s->n_stop_tokens++] = tokenizer_eos;
    if (cinfer_engine_create(s->model, &o->engine, &s->engine) != CINFER_OK) return fail();
    s->max_model_len =
        o->engine.max_model_len ? o->engine.max_model_len : info->max_position_embeddings;
    s->metrics = serve_metrics_create(s->model_name, s->max_model_len);
    if (!s->metrics) {
        fprintf(stderr, "cinfer: error: out of memory for the metrics\n");
        return EXIT_ERROR;
    }
    s->started = (long long)time(NULL);
    return 0;
}

static void print_ready(const serve_server *s, int port) {
    cinfer_engine_stats stats;
    cinfer_engine_get_stats(s->engine, &stats);
    char kv[32];
    format_bytes((double)stats.kv_bytes, kv, sizeof kv);
    fprintf(stderr,
            "cinfer: serving '%s' on http://%s:%d (%s; KV pool %lld tokens, %s; at most %d "
            "running, %d queued)\n",
            s->model_name, s->options.host, port, cinfer_model_weights_source(s->model),
            (long long)stats.kv_capacity_tokens, kv, s->options.engine.max_seqs,
            s->options.max_queued);
}

/* ---- shutdown --------------------------------------------------------------------------------
 */

/* Waits until no job is left or the deadline passes; 1 when none is left. */
static int wait_for_jobs(serve_server *s, double deadline) {
    pthread_mutex_lock(&s->registry_lock);
    while (s->n_live_jobs > 0 && ci_now_seconds() < deadline) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->registry_changed, &s->registry_lock, &until);
    }
    const int none = s->n_live_jobs == 0;
    pthread_mutex_unlock(&s->registry_lock);
    return none;
}

static void shut_down(serve_server *s, int engine_started) {
    if (atomic_load(&s->state) == SERVE_RUNNING) atomic_store(&s->state, SERVE_DRAINING);
    serve_http_quiesce(s);
    if (engine_started) {
        if (!wait_for_jobs(s, ci_now_seconds() + s->options.shutdown_grace)) {
            fprintf(stderr, "cinfer: the grace period is over: aborting the requests left\n");
            serve_abort_all(s);
            /* aborted jobs end at the engine's next step; their clients read the end or go */
            wait_for_jobs(s, ci_now_seconds() + 5.0);
        }
        atomic_store(&s->engine_stop, 1);
        pthread_join(s->engine_thread, NULL);
    }
    serve_http_stop(s);
}

static int serve_main(int argc, char **argv) {
    serve_server s = {0};
    const int usage = parse_options(argc, argv, &s.options);
    if (usage) return usage;
    char name[256];
    s.model_name = s.options.served_name ? s.options.served_name
                                         : folder_name(s.options.model_dir, name, sizeof name);
    pthread_mutex_init(&s.registry_lock, NULL);
    pthread_cond_init(&s.registry_changed, NULL);
    atomic_store(&s.state, SERVE_LOADING);
    atomic_store(&s.next_seed, (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32));

    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a death */

    int status = EXIT_ERROR, port = 0, engine_started = 0;
    /* a tensor-parallel worker serves nothing: it loads its rank and follows rank 0 */
    if (program_is_tp_worker()) return load(&s);
    if (serve_http_start(&s, &port) != 0) goto done;
    fprintf(stderr, "cinfer: listening on http://%s:%d, loading %s\n", s.options.host, port,
            s.options.model_dir);
    status = load(&s);
    if (status != 0) goto done;
    if (pthread_create(&s.engine_thread, NULL, serve_engine_loop, &s) != 0) {
        fprintf(stderr, "cinfer: error: cannot start the engine thread\n");
        status = EXIT_ERROR;
        goto done;
    }
    engine_started = 1;
    atomic_store(&s.state, SERVE_RUNNING);
    print_ready(&s, port);
    wait_for_signal(&s);
    status = atomic_load(&s.state) == SERVE_DEAD ? EXIT_ERROR : 0;
    if (stop_signal)
        fprintf(stderr, "cinfer: %s: finishing the requests in flight (at most %g s)\n",
                stop_signal == SIGINT ? "SIGINT" : "SIGTERM", s.options.shutdown_grace);
done:
    shut_down(&s, engine_started);
    free(s.jobs);
    cinfer_engine_free(s.engine);
    cinfer_model_free(s.model);
    cinfer_tokenizer_free(s.tokenizer);
    serve_metrics_free(s.metrics);
    pthread_cond_destroy(&s.registry_changed);
    pthread_mutex_destroy(&s.registry_lock);
    if (status == 0) fprintf(stderr, "cinfer: stopped\n");
    return status;
}
