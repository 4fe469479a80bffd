/* What the cinfer commands share (programs/program.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "program.h"

extern char **environ;

static void (*usage_printer)(FILE *out);

void program_set_usage(void (*print_usage)(FILE *out)) { usage_printer = print_usage; }

int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "cinfer: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n");
    if (usage_printer) usage_printer(stderr);
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

/* Strict: the whole of text is a number in [minimum, maximum] (NaN is in no range). */
int parse_double(const char *text, double minimum, double maximum, double *out) {
    char *end;
    errno = 0;
    const double v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !(v >= minimum && v <= maximum)) return -1;
    *out = v;
    return 0;
}

/* "4294967296", "4G", "512M", "64K": powers of 1024. */
int parse_bytes(const char *text, int64_t *out) {
    char *end;
    const double v = strtod(text, &end);
    double scale = 1.0;
    if (*end && !end[1]) {
        const char *units = "KMGT";
        const char *unit = strchr(units, *end == 'k' || *end == 'm' || *end == 'g' || *end == 't'
                                             ? *end - 'a' + 'A'
                                             : *end);
        if (!unit || !*unit) return -1;
        scale = pow(1024.0, (double)(unit - units + 1));
        end++;
    }
    if (end == text || *end != '\0' || !(v * scale >= 1.0 && v * scale < 9.2e18)) return -1;
    *out = (int64_t)(v * scale);
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

/* "1 15 7 42" -> ids; each must be an integer (the vocabulary check comes with the model).
 * A malformed list is misuse. */
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

int parse_load_option(const char *flag, const char *value, cinfer_load_options *o) {
    if (strcmp(flag, "--backend") == 0) {
        if (cinfer_backend_from_name(value, &o->backend) != 0)
            return usage_error("--backend needs cpu or cuda, got '%s'", value);
    } else if (strcmp(flag, "--dtype") == 0) {
        if (cinfer_dtype_from_name(value, &o->dtype) != 0)
            return usage_error("--dtype needs f32, bf16 or fp16, got '%s'", value);
    } else if (strcmp(flag, "--attn") == 0) {
        if (cinfer_attention_from_name(value, &o->attention) != 0)
            return usage_error("--attn needs auto, eager, sdpa or flash, got '%s'", value);
    } else if (strcmp(flag, "--device") == 0) {
        long device;
        if (parse_long(value, 0, 1023, &device) != 0)
            return usage_error("--device needs a GPU index >= 0, got '%s'", value);
        o->device = (int)device;
    } else if (strcmp(flag, "--tp") == 0) {
        long tp;
        if (parse_long(value, 1, 256, &tp) != 0)
            return usage_error("--tp needs a number of tensor-parallel ranks in [1, 256], got '%s'",
                               value);
        o->tensor_parallel = (int)tp;
    }
    return 0;
}

void bench_model_label(const char *path, int random_weights, char *buf, size_t size) {
    snprintf(buf, size, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
    if (random_weights && n + 10 < size) strcat(buf, " (random)");
}

void print_csv_field(const char *text) {
    putchar('"');
    for (const char *c = text; *c; c++) {
        if (*c == '"') putchar('"');
        putchar(*c);
    }
    putchar('"');
}

void print_json_rows(cJSON *array) {
    char *json = array ? cJSON_Print(array) : NULL;
    if (json)
        printf("%s\n", json);
    else
        fprintf(stderr, "cinfer bench: error: out of memory printing JSON\n");
    cJSON_free(json);
    cJSON_Delete(array);
}

/* ---- tensor-parallel ranks as processes ------------------------------------------------------
 * A worker is this program started again with the same arguments and, in its environment, which
 * rank it is and where rank 0 listens: the command parses its options as rank 0 did and reaches
 * program_load_model, which runs the worker instead of a load. So every command that loads a
 * model takes --tp with processes without code of its own, and a worker adopts rank 0's kinds
 * (cinfer_tp_worker_run). torchrun's environment variables play the same part in PyTorch. */

const char tp_launch_usage[] =
    "  --tp-ranks R         threads (the CPU's default) or processes (CUDA's: one per GPU,\n"
    "                       started by this command, GPUs --device, --device + 1, ...)\n"
    "  --tp-address H:P     where rank 0 listens for the other ranks (default 127.0.0.1, any\n"
    "                       free port; several nodes: an address they all reach)\n"
    "  --nnodes N           nodes the ranks span (default 1): --tp / N ranks on each\n"
    "  --node-rank K        this node (0: rank 0's, which serves; K > 0 runs ranks only)\n";

static struct {
    int processes; /* --tp-ranks processes */
    const char *address;
    int nnodes, node_rank;
    int argc;
    char **argv;
    pid_t *children;
    int n_children;
} launch = {0, NULL, 1, 0, 0, NULL, NULL, 0};

void program_set_argv(int argc, char **argv) {
    launch.argc = argc;
    launch.argv = argv;
}

int parse_tp_launch_option(const char *flag, const char *value, int *status) {
    long n = 0;
    *status = 0;
    if (strcmp(flag, "--tp-ranks") == 0) {
        if (strcmp(value, "threads") != 0 && strcmp(value, "processes") != 0)
            *status = usage_error("--tp-ranks needs threads or processes, got '%s'", value);
        launch.processes = strcmp(value, "processes") == 0;
    } else if (strcmp(flag, "--tp-address") == 0) {
        if (!strchr(value, ':'))
            *status = usage_error("--tp-address needs HOST:PORT, got '%s'", value);
        launch.address = value;
    } else if (strcmp(flag, "--nnodes") == 0) {
        if (parse_long(value, 1, 256, &n) != 0)
            *status = usage_error("--nnodes needs a number of nodes in [1, 256], got '%s'", value);
        launch.nnodes = (int)n;
    } else if (strcmp(flag, "--node-rank") == 0) {
        if (parse_long(value, 0, 255, &n) != 0)
            *status = usage_error("--node-rank needs a node index in [0, 255], got '%s'", value);
        launch.node_rank = (int)n;
    } else {
        return 0;
    }
    return 1;
}

int program_is_tp_worker(void) { return getenv("CINFER_TP_RANK") != NULL || launch.node_rank > 0; }

/* Children left when rank 0 exits are told to go: they end on their own once its connection
 * closes; this is for one stuck in a load. */
static void reap_children(void) {
    for (int i = 0; i < launch.n_children; i++) {
        int status;
        for (int tries = 0; tries < 100 && waitpid(launch.children[i], &status, WNOHANG) == 0;
             tries++) {
            struct timespec tick = {0, 100 * 1000 * 1000};
            nanosleep(&tick, NULL);
        }
        if (kill(launch.children[i], 0) == 0) {
            kill(launch.children[i], SIGKILL);
            waitpid(launch.children[i], &status, 0);
        }
    }
    launch.n_children = 0;
}

/* Starts rank `rank` as a copy of this process, its GPU `device`, its stdout closed (what the
 * command prints is rank 0's to print). */
static int start_worker(int rank, int device, const char *address) {
    char rank_text[16], device_text[16];
    snprintf(rank_text, sizeof rank_text, "%d", rank);
    snprintf(device_text, sizeof device_text, "%d", device);
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    setenv("CINFER_TP_RANK", rank_text, 1);
    setenv("CINFER_TP_ADDRESS", address, 1);
    setenv("CINFER_TP_DEVICE", device_text, 1);
    char parent[16];
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    setenv("CINFER_TP_PARENT", parent, 1);
    pid_t pid;
    const int failed = posix_spawn(&pid, "/proc/self/exe", &files, NULL, launch.argv, environ);
    unsetenv("CINFER_TP_RANK");
    unsetenv("CINFER_TP_ADDRESS");
    unsetenv("CINFER_TP_DEVICE");
    unsetenv("CINFER_TP_PARENT");
    posix_spawn_file_actions_destroy(&files);
    if (failed) {
        fprintf(stderr, "cinfer: error: cannot start tensor-parallel rank %d: %s\n", rank,
                strerror(failed));
        return -1;
    }
    pid_t *grown = realloc(launch.children, (size_t)(launch.n_children + 1) * sizeof *grown);
    if (!grown) return -1;
    launch.children = grown;
    launch.children[launch.n_children++] = pid;
    if (launch.n_children == 1) atexit(reap_children);
    return 0;
}

/* This node's ranks [first, first + per_node), GPUs from options->device on; with
 * NCCL_MULTI_RANK_GPU_ENABLE=1 (NCCL >= 2.30: several ranks on one GPU) all on that one. */
typedef struct node_plan {
    int first, per_node;
    int base_device, one_gpu;
    int failed;
} node_plan;

static int device_of(const node_plan *plan, int rank) {
    return plan->one_gpu ? plan->base_device : plan->base_device + (rank - plan->first);
}

/* The load's tp_listening: rank 0 listens, so its node's workers may start. */
static void start_node_workers(const char *address, void *user) {
    node_plan *plan = user;
    for (int r = plan->first + 1; r < plan->first + plan->per_node && !plan->failed; r++)
        if (start_worker(r, device_of(plan, r), address) != 0) plan->failed = 1;
}

static int worker_exit(const char *dir, const cinfer_load_options *options, int rank) {
    /* Ctrl-C reaches the terminal's whole process group: rank 0 drains its requests and then
     * tells the workers to stop, so they must not die first */
    signal(SIGINT, SIG_IGN);
    /* a worker this process's parent started ends with it, even before it has joined (a join
     * retries while rank 0 is not listening yet, and would wait out its timeout) */
    const char *parent = getenv("CINFER_TP_PARENT");
    if (parent) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != (pid_t)atoi(parent)) {
            fprintf(stderr, "cinfer: error: tensor-parallel rank %d: the process that started it "
                            "has ended\n", rank);
            exit(EXIT_ERROR);
        }
    }
    const cinfer_status status = cinfer_tp_worker_run(dir, options, rank);
    if (status != CINFER_OK) {
        fprintf(stderr, "cinfer: error: tensor-parallel rank %d: %s\n", rank, cinfer_last_error());
        exit(EXIT_ERROR);
    }
    exit(0);
}

cinfer_status program_load_model(const char *dir, const cinfer_load_options *options,
                                 cinfer_model **out) {
    cinfer_load_options o = *options;
    const int tp = o.tensor_parallel;
    const int processes = tp > 1 && (launch.processes || launch.nnodes > 1 ||
                                      launch.node_rank > 0 || o.backend == CINFER_BACKEND_CUDA ||
                                      getenv("CINFER_TP_RANK"));
    if (tp <= 1 && (launch.nnodes > 1 || launch.node_rank > 0)) {
        fprintf(stderr, "cinfer: error: --nnodes and --node-rank split tensor-parallel ranks: they "
                        "need --tp N (N >= 2)\n");
        exit(EXIT_USAGE);
    }
    if (!processes) return cinfer_model_load(dir, &o, out);
    const char *rank_text = getenv("CINFER_TP_RANK");
    if (rank_text) { /* started by start_worker: the same command line, this rank */
        o.tp_address = getenv("CINFER_TP_ADDRESS");
        const char *device = getenv("CINFER_TP_DEVICE");
        if (device) o.device = atoi(device);
        worker_exit(dir, &o, atoi(rank_text));
    }
    if (tp % launch.nnodes != 0 || launch.node_rank >= launch.nnodes) {
        fprintf(stderr,
                "cinfer: error: --tp %d over --nnodes %d (--node-rank %d): each node must run "
                "the same number of ranks, and the node's index be below --nnodes\n",
                tp, launch.nnodes, launch.node_rank);
        exit(EXIT_USAGE);
    }
    if (launch.nnodes > 1 && !launch.address) {
        fprintf(stderr, "cinfer: error: --nnodes %d needs --tp-address HOST:PORT of node 0, which "
                        "every node reaches\n", launch.nnodes);
        exit(EXIT_USAGE);
    }
    const char *multi_rank = getenv("NCCL_MULTI_RANK_GPU_ENABLE");
    node_plan plan = {launch.node_rank * (tp / launch.nnodes), tp / launch.nnodes, o.device,
                      o.backend == CINFER_BACKEND_CUDA && multi_rank && strcmp(multi_rank, "1") == 0,
                      0};
    if (o.backend != CINFER_BACKEND_CUDA && o.n_threads == 0) {
        /* the node's cores shared among its ranks, as threads share them */
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        o.n_threads = cores / plan.per_node > 0 ? (int)(cores / plan.per_node) : 1;
    }
    o.tp_address = launch.address ? launch.address : "127.0.0.1:0";
    if (launch.node_rank > 0) { /* a node of workers: its first rank is this process */
        start_node_workers(o.tp_address, &plan);
        o.device = device_of(&plan, plan.first);
        worker_exit(dir, &o, plan.first);
    }
    o.tp_listening = start_node_workers;
    o.tp_listening_user = &plan;
    const cinfer_status status = cinfer_model_load(dir, &o, out);
    if (status != CINFER_OK) {
        for (int i = 0; i < launch.n_children; i++) kill(launch.children[i], SIGTERM);
        reap_children();
    }
    return status;
}
