// bench_comm: the NCCL all-reduce of tensor parallelism (kernels/cuda/comm_nccl.cu) per message
// size, through cinfer's own communicator, as a decode step sends it: two all-reduces of [T, E] F32
// per layer (docs/TENSOR_PARALLEL.md).
//
//   build/bench_comm [--ranks N] [--sizes 4096,8192,...] [--iters 200] [--warmup 20]
//                    [--timeout 60] [--seed S] [--output md|json]
//
// The ranks are threads of this process, each with its NCCL communicator (ci_comm_nccl_create) and
// CUDA backend (its own stream), rank r on GPU r. With fewer GPUs than ranks and
// NCCL_MULTI_RANK_GPU_ENABLE=1 in the environment, every rank runs on GPU 0: NCCL >= 2.30 allows
// several ranks per GPU (experimental); an older NCCL refuses it, and so does this program, before
// any communicator is made ("cannot run here", exit 77). On one GPU the figures are those of the
// collectives' kernels and their synchronization, not of a link between GPUs.
//
// Per size (F32 values; the default sizes are decode rows of E = 4096 and 8192: one row of
// Llama-3-8B, one of Llama-3-70B, then 8, 64, 512 and 2048 rows of 8192):
//   check   every rank fills its buffer with its own values (nonzero, a seeded draw per rank and
//           element), all-reduces once and compares every element with the sum taken on the host
//           in double: within MAX_ULPS_PER_RANK roundings of F32 per rank, as NCCL sums in its own
//           order (ring or tree). A wrong sum marks the row WRONG and the program exits 1.
//   timing  every rank starts together (a barrier of the threads), then queues --warmup
//           all-reduces and --iters more back to back on its stream, as a decode step queues its
//           collectives; on rank 0's stream a CUDA event before and after each, so that one time
//           is the device time of one all-reduce, including any wait for the other ranks to reach
//           it. Where the hosts queue collectives more slowly than the GPU runs them (small
//           messages: ncclAllReduce costs the host microseconds), that wait is the other host's
//           queuing: a time is then an upper bound of the collective's, as an eager decode step
//           would see it (a CUDA graph would not). The buffers hold zeros while timed (a sum that
//           stays put: repeated in place, the drawn values would grow to infinity).
// Figures, as nccl-tests defines them: algbw = bytes / time, busbw = algbw · 2(n − 1)/n (what each
// rank's link carries in a ring all-reduce), from the median time.
//
// No rank waits forever: a watchdog (the main thread) gives each rank --timeout seconds per step
// (joining the group, one size's all-reduces); past it, or when a rank fails, every rank waiting
// on its stream aborts its own communicator (ci_comm_abort) and stops. A rank stuck where it
// cannot look (ncclCommInitRank) is left behind: the program says so and exits 1.
//
// Without a CUDA device, or with too few for the ranks, it prints why and exits 77 (the usual
// "skipped" code), having measured nothing.
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../kernels/cuda/ops_cuda.h"

extern "C" {
#include "../kernels/comm.h"
#include "../kernels/device.h"
}

#include "../programs/option_lists.h"

enum { EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_SKIP = 77 };

// NCCL sums n values in its own order: each partial sum rounds once, so the result is within
// about (n − 1) F32 roundings of the exact sum's magnitude; 4 per rank leaves room for the tree's
// order and the double reference.
static const double MAX_ULPS_PER_RANK = 4.0;
static const double F32_EPSILON = 5.96e-8; // 2^-24: one rounding of F32
static const int MULTI_RANK_NCCL = 23000;  // NCCL 2.30.0: several ranks on one GPU
static const double GRACE_SECONDS = 20.0;  // after a failure, for the ranks to notice and stop
static const int MAX_FLOATS = 1 << 28;     // 1 GiB per rank

static const char *usage_text =
    "usage: bench_comm [options]\n"
    "\n"
    "  --ranks N            ranks, one thread each, rank r on GPU r (default: the GPUs, at\n"
    "                       least 2); with fewer GPUs, NCCL_MULTI_RANK_GPU_ENABLE=1 puts them\n"
    "                       all on GPU 0 (NCCL >= 2.30)\n"
    "  --sizes N,N,...      floats per all-reduce (default 4096,8192,65536,524288,4194304,\n"
    "                       16777216: decode rows of E = 4096 and 8192)\n"
    "  --iters N            timed all-reduces per size (default 200)\n"
    "  --warmup N           untimed all-reduces before them (default 20)\n"
    "  --timeout S          seconds a rank may take to join or to finish one size (default 60)\n"
    "  --seed S             seed of the checked values (default 1)\n"
    "  --output md|json     table format on stdout (default md)\n";

struct options {
    int ranks; // 0: the GPUs, at least 2
    int_list sizes;
    int iters, warmup, timeout, json;
    uint64_t seed;
};

static int usage(const char *fmt, const char *arg) {
    fprintf(stderr, "bench_comm: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage_text);
    return EXIT_USAGE;
}

static int parse_options(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->sizes = {6, {4096, 8192, 8192 * 8, 8192 * 64, 8192 * 512, 8192 * 2048}};
    o->iters = 200;
    o->warmup = 20;
    o->timeout = 60;
    o->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(usage_text, stdout);
            return -1;
        }
        if (i + 1 >= argc) return usage("option '%s' needs a value", flag);
        const char *value = argv[++i];
        if (strcmp(flag, "--ranks") == 0) {
            if (parse_int(value, 1, 64, &o->ranks))
                return usage("--ranks needs one integer in [1, 64], got '%s'", value);
        } else if (strcmp(flag, "--sizes") == 0) {
            if (parse_int_list(value, 1, MAX_FLOATS, &o->sizes))
                return usage("--sizes needs up to 16 float counts in [1, 2^28] separated by "
                             "commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--iters") == 0) {
            if (parse_int(value, 1, 100000, &o->iters))
                return usage("--iters needs one integer in [1, 100000], got '%s'", value);
        } else if (strcmp(flag, "--warmup") == 0) {
            if (parse_int(value, 0, 100000, &o->warmup))
                return usage("--warmup needs one integer in [0, 100000], got '%s'", value);
        } else if (strcmp(flag, "--timeout") == 0) {
            if (parse_int(value, 1, 3600, &o->timeout))
                return usage("--timeout needs seconds in [1, 3600], got '%s'", value);
        } else if (strcmp(flag, "--seed") == 0) {
            int seed;
            if (parse_int(value, 0, 2147483647, &seed))
                return usage("--seed needs one non-negative integer, got '%s'", value);
            o->seed = (uint64_t)seed;
        } else if (strcmp(flag, "--output") == 0 || strcmp(flag, "-o") == 0) {
            output_format format;
            if (parse_output_format(value, &format) || format == OUTPUT_CSV)
                return usage("--output needs md or json, got '%s'", value);
            o->json = format == OUTPUT_JSON;
        } else {
            return usage("unknown option '%s'", flag);
        }
    }
    return 0;
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// "2.28.9" from ncclGetVersion's code (major·1000 + minor·100 + patch before 2.9, major·10000 +
// minor·100 + patch since).
static std::string nccl_version_text(int code) {
    char text[32];
    if (code >= 10000)
        snprintf(text, sizeof text, "%d.%d.%d", code / 10000, code % 10000 / 100, code % 100);
    else
        snprintf(text, sizeof text, "%d.%d.%d", code / 1000, code % 1000 / 100, code % 100);
    return text;
}

// Element i of rank r's buffer: magnitude in [0.5, 1), either sign, from a hash of (seed, r, i);
// never zero, so that a rank whose part went missing shows in the sum.
static float drawn_value(uint64_t seed, int rank, int64_t i) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) + 0xd1b54a32d192ed03ull * rank;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float magnitude = 0.5f + (float)(z >> 40) * 0x1p-25f;
    return (z & 1) ? -magnitude : magnitude;
}

// ---- the group: what the ranks share with the watchdog ------------------------------------------

// What a rank is doing, for the watchdog's deadline and its message.
enum phase { PHASE_JOINING, PHASE_WORKING, PHASE_DONE };
static const char *const phase_names[] = {"joining the group (ncclCommInitRank)",
                                          "its setup or one size's all-reduces", "nothing"};

struct rank_state {
    std::atomic<int> phase{PHASE_JOINING};
    std::atomic<double> since{0.0}; // when the phase (or its latest size) began
    std::atomic<int> size_index{-1};
};

// One size's results: the timing from rank 0, the check from every rank.
struct size_result {
    int64_t floats;
    std::vector<double> us;        // per timed all-reduce, rank 0's events
    std::vector<double> max_error; // per rank: max |got − want| / tolerance (<= 1 passes)
};

struct group {
    const options *o;
    int n, shared_gpu;
    ci_comm_id id;
    rank_state *ranks;
    std::vector<size_result> results;
    std::atomic<int> arrived{0}; // arrivals at host_barrier, all of them
    std::atomic<int> failed{0};
    std::atomic<double> failed_at{0.0};
    std::mutex error_lock;
    std::string first_error;
};

// The first failure wins the message; every rank sees the flag and stops.
static void group_fail(group *g, const std::string &why) {
    {
        std::lock_guard<std::mutex> hold(g->error_lock);
        if (g->first_error.empty()) g->first_error = why;
    }
    if (!g->failed.exchange(1)) g->failed_at.store(seconds_now());
}

struct rank_context {
    group *g;
    int rank, device;
    ci_comm *comm;
    ci_backend *be;
    int barriers; // host_barrier calls so far
};

static std::string rank_prefix(const rank_context &rc) {
    return "rank " + std::to_string(rc.rank) + " (GPU " + std::to_string(rc.device) + "): ";
}

// Until this rank's stream has finished, watching the group: when another rank failed (or the
// watchdog gave up on one), aborts this rank's communicator, which makes its pending collectives
// return, and fails. Then the communicator's own check of NCCL's asynchronous error.
static bool wait_for_stream(rank_context &rc) {
    const struct timespec pause = {0, 20 * 1000}; // 20 µs between polls
    cudaStream_t stream = cuda_of(rc.be)->stream;
    for (;;) {
        const cudaError_t done = cudaStreamQuery(stream);
        if (done == cudaSuccess) break;
        if (done != cudaErrorNotReady) CUDA_CHECK(done);
        if (rc.g->failed.load()) {
            ci_comm_abort(rc.comm, "another rank failed");
            return false;
        }
        nanosleep(&pause, nullptr);
    }
    if (ci_comm_synchronize(rc.comm, rc.be, (double)rc.g->o->timeout) != CINFER_OK) {
        group_fail(rc.g, rank_prefix(rc) + cinfer_last_error());
        return false;
    }
    return true;
}

// Returns once every rank has called it as often as this one has (*passed: this rank's count), or
// false when the group failed first. Two uses: no rank's setup overlaps another's first collective
// (making a backend may wait for the whole device: cuBLAS, pinned memory; on a shared GPU that
// includes a peer's collective waiting for this rank, forever); and every rank starts queuing a
// size's timed all-reduces at once, not after its own check of the sums on the host.
static bool host_barrier(group *g, int *passed) {
    const struct timespec pause = {0, 100 * 1000};
    const int everyone = ++*passed * g->n;
    g->arrived.fetch_add(1);
    while (g->arrived.load() < everyone) {
        if (g->failed.load()) return false;
        nanosleep(&pause, nullptr);
    }
    return true;
}

static bool all_reduce(rank_context &rc, ci_tensor *x) {
    if (ci_all_reduce_sum(rc.comm, rc.be, x) == CINFER_OK) return true;
    group_fail(rc.g, rank_prefix(rc) + cinfer_last_error());
    return false;
}

// Fills, all-reduces once and compares with the host's sum: max |got − want| / tolerance.
static bool check_size(rank_context &rc, ci_tensor *x, std::vector<float> &host, double *worst) {
    const group *g = rc.g;
    const int64_t n = ci_tensor_numel(x);
    for (int64_t i = 0; i < n; i++) host[(size_t)i] = drawn_value(g->o->seed, rc.rank, i);
    rc.be->ops->to_device(rc.be, x->data, host.data(), (size_t)n * sizeof(float));
    if (!all_reduce(rc, x) || !wait_for_stream(rc)) return false;
    rc.be->ops->to_host(rc.be, host.data(), x->data, (size_t)n * sizeof(float));
    double max_error = 0;
    for (int64_t i = 0; i < n; i++) {
        double want = 0, magnitude = 0;
        for (int r = 0; r < g->n; r++) {
            const double v = drawn_value(g->o->seed, r, i);
            want += v;
            magnitude += fabs(v);
        }
        const double tolerance = MAX_ULPS_PER_RANK * g->n * F32_EPSILON * magnitude;
        const double error = fabs((double)host[(size_t)i] - want) / tolerance;
        if (!(error <= max_error)) max_error = error; // NaN sticks
    }
    *worst = max_error;
    return true;
}

// --warmup then --iters all-reduces back to back, every rank starting together; rank 0 brackets
// each with two events.
static bool time_size(rank_context &rc, ci_tensor *x, cudaEvent_t *events,
                      std::vector<double> *us) {
    const options *o = rc.g->o;
    cudaStream_t stream = cuda_of(rc.be)->stream;
    CUDA_CHECK(cudaMemsetAsync(x->data, 0, ci_tensor_nbytes(x), stream));
    if (!host_barrier(rc.g, &rc.barriers)) return false;
    for (int k = 0; k < o->warmup; k++)
        if (!all_reduce(rc, x)) return false;
    for (int k = 0; k < o->iters; k++) {
        if (rc.rank == 0) CUDA_CHECK(cudaEventRecord(events[2 * k], stream));
        if (!all_reduce(rc, x)) return false;
        if (rc.rank == 0) CUDA_CHECK(cudaEventRecord(events[2 * k + 1], stream));
    }
    if (!wait_for_stream(rc)) return false;
    if (rc.rank != 0) return true;
    us->resize((size_t)o->iters);
    for (int k = 0; k < o->iters; k++) {
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * k], events[2 * k + 1]));
        (*us)[(size_t)k] = 1e3 * ms;
    }
    return true;
}

static void rank_main(group *g, int rank) {
    rank_state &state = g->ranks[rank];
    rank_context rc = {g, rank, g->shared_gpu ? 0 : rank, nullptr, nullptr, 0};
    state.since.store(seconds_now());
    // every rank must join, or ncclCommInitRank waits for it: nothing comes before
    if (ci_comm_nccl_create(&g->id, rank, g->n, rc.device, &rc.comm) != CINFER_OK) {
        group_fail(g, rank_prefix(rc) + cinfer_last_error());
        state.phase.store(PHASE_DONE);
        return;
    }
    state.since.store(seconds_now());
    state.phase.store(PHASE_WORKING);
    cinfer_load_options load{};
    load.backend = CINFER_BACKEND_CUDA;
    load.device = rc.device;
    int64_t most = 0;
    for (const size_result &s : g->results) most = std::max(most, s.floats);
    ci_tensor x = {nullptr, CI_F32, 1, {most}};
    std::vector<cudaEvent_t> events;
    std::vector<float> host;
    if (ci_backend_create_for(&load, &rc.be) != CINFER_OK) {
        group_fail(g, rank_prefix(rc) + cinfer_last_error());
    } else if (!(x.data = rc.be->ops->alloc(rc.be, (size_t)most * sizeof(float)))) {
        group_fail(g, rank_prefix(rc) + "out of memory: " + std::to_string(most * 4) +
                          " bytes for the all-reduce's buffer");
    } else {
        host.resize((size_t)most);
        if (rank == 0) {
            events.resize(2 * (size_t)g->o->iters);
            for (cudaEvent_t &e : events) CUDA_CHECK(cudaEventCreate(&e));
        }
        const bool together = host_barrier(g, &rc.barriers);
        for (size_t s = 0; together && s < g->results.size() && !g->failed.load(); s++) {
            size_result &result = g->results[s];
            state.since.store(seconds_now());
            state.size_index.store((int)s);
            x.shape[0] = result.floats;
            if (!check_size(rc, &x, host, &result.max_error[(size_t)rank]) ||
                !time_size(rc, &x, events.data(), &result.us))
                break;
        }
    }
    // a rank that stops early leaves the others waiting in a collective it never joins
    if (g->failed.load()) ci_comm_abort(rc.comm, "a rank failed");
    for (cudaEvent_t e : events) CUDA_CHECK(cudaEventDestroy(e));
    if (x.data) rc.be->ops->free(rc.be, x.data);
    ci_comm_destroy(rc.comm);
    ci_backend_free(rc.be);
    state.phase.store(PHASE_DONE);
}

// The main thread while the ranks run: a rank past --timeout in one phase fails the group; ranks
// that have not stopped GRACE_SECONDS after a failure are stuck where they cannot see it, and the
// process leaves them (exit 1).
static void watch(group *g) {
    const struct timespec pause = {0, 50 * 1000 * 1000};
    for (;;) {
        int running = 0;
        const double now = seconds_now();
        for (int r = 0; r < g->n; r++) {
            const rank_state &state = g->ranks[r];
            const int phase = state.phase.load();
            if (phase == PHASE_DONE) continue;
            running++;
            if (!g->failed.load() && now - state.since.load() > g->o->timeout) {
                const int s = state.size_index.load();
                group_fail(g, "rank " + std::to_string(r) + ": " + phase_names[phase] +
                                  (s >= 0 ? " of " + std::to_string(g->results[(size_t)s].floats) +
                                                " floats"
                                          : std::string()) +
                                  " did not finish within " + std::to_string(g->o->timeout) +
                                  " s (--timeout)");
            }
        }
        if (!running) return;
        if (g->failed.load() && now - g->failed_at.load() > GRACE_SECONDS) {
            {
                std::lock_guard<std::mutex> hold(g->error_lock);
                fprintf(stderr, "bench_comm: %s\n", g->first_error.c_str());
            }
            for (int r = 0; r < g->n; r++)
                if (g->ranks[r].phase.load() != PHASE_DONE)
                    fprintf(stderr,
                            "bench_comm: rank %d is still %s %.0f s after the failure; "
                            "leaving it\n",
                            r, phase_names[g->ranks[r].phase.load()], GRACE_SECONDS);
            fflush(stdout);
            _exit(EXIT_ERROR);
        }
        nanosleep(&pause, nullptr);
    }
}

// ---- output -------------------------------------------------------------------------------------

static double percentile(std::vector<double> v, double p) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    const size_t k = (size_t)ceil(p * (double)v.size()) - (p > 0 ? 1 : 0);
    return v[std::min(k, v.size() - 1)];
}

static double worst_error(const size_result &s) {
    double worst = 0;
    for (double e : s.max_error)
        if (!(e <= worst)) worst = e;
    return worst;
}
static bool wrong(const size_result &s) { return !(worst_error(s) <= 1.0); }

static void print_results(const group &g, const char *device, const std::string &nccl) {
    const int n = g.n;
    const double bus_factor = 2.0 * (n - 1) / n;
    if (!g.o->json) {
        printf("| floats | bytes | rows of 8192 | median µs | p90 µs | algbw GB/s | busbw GB/s | "
               "check |\n");
        printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for (const size_result &s : g.results) {
            const double bytes = 4.0 * (double)s.floats, median = percentile(s.us, 0.5);
            const double algbw = bytes / (median * 1e-6) / 1e9;
            printf("| %lld | %.0f | %g | %.2f | %.2f | %.2f | %.2f | %s (%.2f of tolerance) |\n",
                   (long long)s.floats, bytes, (double)s.floats / 8192, median,
                   percentile(s.us, 0.9), algbw, algbw * bus_factor, wrong(s) ? "WRONG" : "ok",
                   worst_error(s));
        }
        printf("\n%d ranks (threads) %s; %s; NCCL %s. µs: median and p90 over %d all-reduces in "
               "place of F32, CUDA events on rank 0's stream around each, queued back to back "
               "after %d untimed, every rank starting together (for small messages an upper "
               "bound: the hosts may queue more slowly than the GPU runs). algbw = bytes / median; "
               "busbw = algbw · 2(n − 1)/n "
               "(nccl-tests). check: every rank's sum against the host's, in units of "
               "the tolerance (%g F32 roundings per rank; over 1: WRONG).\n",
               n, g.shared_gpu ? "all on GPU 0 (NCCL_MULTI_RANK_GPU_ENABLE=1)" : "rank r on GPU r",
               device, nccl.c_str(), g.o->iters, g.o->warmup, MAX_ULPS_PER_RANK);
        return;
    }
    printf("[\n");
    for (size_t i = 0; i < g.results.size(); i++) {
        const size_result &s = g.results[i];
        const double bytes = 4.0 * (double)s.floats, median = percentile(s.us, 0.5);
        const double algbw = bytes / (median * 1e-6) / 1e9, worst = worst_error(s);
        printf("  {\"device\": \"%s\", \"nccl\": \"%s\", \"ranks\": %d, \"shared_gpu\": %s, "
               "\"floats\": %lld, \"bytes\": %.0f, \"iters\": %d, \"warmup\": %d, "
               "\"median_us\": %.4f, \"p90_us\": %.4f, \"algbw_gbs\": %.4f, \"busbw_gbs\": %.4f, "
               "\"max_error_of_tolerance\": %.4g, \"wrong\": %s}%s\n",
               device, nccl.c_str(), n, g.shared_gpu ? "true" : "false", (long long)s.floats, bytes,
               g.o->iters, g.o->warmup, median, percentile(s.us, 0.9), algbw, algbw * bus_factor,
               isfinite(worst) ? worst : -1.0, wrong(s) ? "true" : "false",
               i + 1 < g.results.size() ? "," : "");
    }
    printf("]\n");
}

int main(int argc, char **argv) {
    options o;
    const int parsed = parse_options(argc, argv, &o);
    if (parsed) return parsed < 0 ? 0 : parsed;

    int nccl_code = 0;
    const ncclResult_t got_version = ncclGetVersion(&nccl_code);
    if (got_version != ncclSuccess) {
        fprintf(stderr, "bench_comm: ncclGetVersion failed: %s\n", ncclGetErrorString(got_version));
        return EXIT_ERROR;
    }
    const std::string nccl = nccl_version_text(nccl_code) + " (built against " +
                             nccl_version_text(NCCL_VERSION_CODE) + ")";
    fprintf(stderr, "bench_comm: NCCL %s\n", nccl.c_str());
    if (!ci_comm_nccl_compiled()) {
        fprintf(stderr, "bench_comm: this build has no NCCL communicator (CINFER_NCCL)\n");
        return EXIT_ERROR;
    }
    if (ci_cuda_available(0) != CINFER_OK) {
        fprintf(stderr, "bench_comm: no CUDA device: %s; nothing measured\n", cinfer_last_error());
        return EXIT_SKIP;
    }
    const int gpus = ci_cuda_devices(nullptr, 0);
    if (o.ranks == 0) o.ranks = std::max(2, gpus);
    const char *multi = getenv("NCCL_MULTI_RANK_GPU_ENABLE");
    const int shared_gpu = gpus < o.ranks;
    if (shared_gpu && !(multi && strcmp(multi, "1") == 0)) {
        fprintf(stderr,
                "bench_comm: %d ranks, %d GPU(s): NCCL runs one rank per GPU unless "
                "NCCL_MULTI_RANK_GPU_ENABLE=1 (NCCL >= 2.30) puts them all on GPU 0; "
                "cannot run here\n",
                o.ranks, gpus);
        return EXIT_SKIP;
    }
    if (shared_gpu && nccl_code < MULTI_RANK_NCCL) {
        fprintf(stderr,
                "bench_comm: %d ranks on one GPU need NCCL >= 2.30; this is NCCL %s, "
                "whose ncclCommInitRank refuses a GPU twice: cannot run here\n",
                o.ranks, nccl.c_str());
        return EXIT_SKIP;
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    char device[300];
    snprintf(device, sizeof device, "%s × %d (%d SMs each)", prop.name, shared_gpu ? 1 : o.ranks,
             prop.multiProcessorCount);

    group g;
    g.o = &o;
    g.n = o.ranks;
    g.shared_gpu = shared_gpu;
    if (ci_comm_nccl_unique_id(&g.id) != CINFER_OK) {
        fprintf(stderr, "bench_comm: %s\n", cinfer_last_error());
        return EXIT_ERROR;
    }
    std::vector<rank_state> states((size_t)o.ranks);
    for (rank_state &state : states) state.since.store(seconds_now()); // the watchdog's clock
    g.ranks = states.data();
    for (int i = 0; i < o.sizes.n; i++) {
        size_result s;
        s.floats = o.sizes.values[i];
        s.max_error.assign((size_t)o.ranks, NAN);
        g.results.push_back(s);
    }
    fprintf(stderr, "bench_comm: %d ranks %s, %d sizes\n", o.ranks,
            shared_gpu ? "on GPU 0" : "on GPUs 0..n-1", o.sizes.n);
    std::vector<std::thread> threads;
    for (int r = 0; r < o.ranks; r++) threads.emplace_back(rank_main, &g, r);
    watch(&g);
    for (std::thread &t : threads) t.join();

    if (g.failed.load()) {
        fprintf(stderr, "bench_comm: %s\n", g.first_error.c_str());
        return EXIT_ERROR;
    }
    print_results(g, device, nccl);
    int status = 0;
    for (const size_result &s : g.results)
        if (wrong(s)) status = EXIT_ERROR;
    return status;
}
