// bench_matmul: the decode GEMV (kernels/cuda/matmul_gemv.cuh) against cuBLAS and a copy, on the
// linear layers of one model shape, at a few rows per call (tokens of a decode step).
//
//   build/bench_matmul [--config FILE] [-T 1,2,4,8] [--dtype bf16,fp16] [--proj qkv,o,gate_up,
//                      down,lm_head] [--tiles auto,1,2,4] [-r 5] [--calls 20] [--output md|json]
//
// The shape: Llama-3-8B (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, head_dim 128,
// vocab 128256) unless --config names a config.json (bench/shapes/*.json), read by the engine's
// own loader. Its projections, each one row of the table per T, dtype and tile choice:
//   qkv      x [T, hidden] by q, k and v: ours one launch of 3 segments, cuBLAS 3 calls
//   o        x [T, heads·head_dim] by o_proj
//   gate_up  x [T, hidden] by gate and up: ours one launch of 2 segments, cuBLAS 2 calls
//   down     x [T, intermediate] by down_proj
//   lm_head  x [T, hidden] by the vocabulary
// What is timed, on one stream, as a CUDA graph of --calls calls (as a decode step is replayed),
// between two CUDA events; one warm-up replay, then -r replays; a row shows mean ± sd of the µs
// per call:
//   ours     gemv_launch (or gemv_launch_tiles with --tiles N): x F32 in, out F32, no bias;
//   cuBLAS   what kernels/cuda/matmul.cu does today, per projection: x rounded to the weight dtype
//            by the engine's convert_cuda, then cublasGemmEx (F32 compute, default math, its
//            workspace set as the backend sets it);
//   copy     cudaMemcpyAsync device to device of the projection's weight bytes: the ceiling.
// Weights are drawn on the device, and as many copies of them are cycled through as make 256 MiB
// or more (5 times the 50 MiB L2 of an H100/H200), so that every call reads its weights from DRAM
// as a decode step does; x stays in L2, as it would.
//
// Figures: bytes = weights + x (T·n_in·4) + out (T·n_out·4); ours GB/s = bytes / ours time;
// the copy ceiling = 2 · weight bytes / copy time (it reads and writes them: the bandwidthTest
// convention, and the ceiling cinfer bench's decode rows use); % of copy = ours GB/s / ceiling.
// ours/cuBLAS = ours time / cuBLAS time (below 1: ours is faster). max diff: after timing, ours
// and cuBLAS run once more on the same inputs and max |ours − cuBLAS| / max |cuBLAS| is shown;
// both multiply the same rounded values and differ only in the order of the F32 sums, so a value
// over MAX_RELATIVE_DIFF marks the row MISMATCH and the program exits 1.
//
// Without a CUDA device it prints why and exits 77 (the usual "skipped" code), having measured
// nothing.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "../kernels/cuda/matmul_gemv.cuh"
#include "../kernels/cuda/ops_cuda.h"

extern "C" {
#include "../kernels/device.h"
#include "../models/architecture.h"
}

#include "../programs/option_lists.h"

enum { EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_SKIP = 77 };

static const size_t ROTATE_BYTES = (size_t)256 << 20; // cycled weights: 5 × the L2
static const size_t CUBLAS_WORKSPACE = (size_t)32 << 20;
static const double MAX_RELATIVE_DIFF = 1e-3; // F32 sums in two orders; see the top of the file
static const float WEIGHT_SCALE = 0.05f;      // weights uniform in ±0.05, x in ±1

static const char *const proj_names[] = {"qkv", "o", "gate_up", "down", "lm_head", NULL};
// weight dtypes by position, a cinfer_dtype each, named as cinfer.h's table names them
static const char *dtype_name(int dtype) { return cinfer_dtype_name((cinfer_dtype)dtype); }
enum { N_PROJ = 5 };

static const char *usage_text =
    "usage: bench_matmul [options]\n"
    "\n"
    "  --config FILE          a config.json for the shape (default Llama-3-8B; bench/shapes/)\n"
    "  -T N,N,...             rows per call, 1..8 (default 1,2,4,8)\n"
    "  --dtype f32,bf16,fp16  weight dtypes (default bf16,fp16)\n"
    "  --proj NAME,...        qkv, o, gate_up, down, lm_head (default all)\n"
    "  --tiles auto,1,2,4     rows per block of the GEMV: the launcher's choice, or 8·N\n"
    "                         (16-bit weights; default auto)\n"
    "  -r, --repetitions N    timed graph replays after one warm-up (default 5)\n"
    "  --calls N              calls per replay (default 20)\n"
    "  --output md|json       table format on stdout (default md)\n"
    "  --device N             the GPU (default 0)\n"
    "  --seed S               seed of the random weights and x (default 1)\n";

struct shape {
    int hidden, intermediate, heads, kv_heads, head_dim, vocab;
    char name[256];
};

struct options {
    shape model;
    int_list rows;
    int use_dtype[CINFER_DTYPE_COUNT], use_proj[N_PROJ];
    int_list tiles; // 0 = auto
    int repetitions, calls, json, device;
    uint64_t seed;
};

// One projection: n_in and its segments' n_out.
struct projection {
    const char *name;
    int n_in, n_segments;
    int n_out[GEMV_MAX_SEGMENTS];
};

struct row {
    projection proj;
    int T, dtype, tiles; // tiles: what ran (auto resolved), 0 for F32
    int auto_tiles;
    double ours_us, ours_sd, cublas_us, cublas_sd, copy_us, copy_sd;
    double bytes, weight_bytes, max_diff;
};

static int usage(const char *fmt, const char *arg) {
    fprintf(stderr, "bench_matmul: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage_text);
    return EXIT_USAGE;
}

static int parse_options(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->model = {4096, 14336, 32, 8, 128, 128256, "Llama-3-8B"};
    o->rows = {4, {1, 2, 4, 8}};
    o->use_dtype[CINFER_DTYPE_BF16] = o->use_dtype[CINFER_DTYPE_F16] = 1;
    for (int i = 0; i < N_PROJ; i++) o->use_proj[i] = 1;
    o->tiles = {1, {0}};
    o->repetitions = 5;
    o->calls = 20;
    o->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            fputs(usage_text, stdout);
            return -1;
        }
        if (i + 1 >= argc) return usage("option '%s' needs a value", flag);
        const char *value = argv[++i];
        if (strcmp(flag, "--config") == 0) {
            ci_config c;
            if (config_load(value, &c) != CINFER_OK) {
                fprintf(stderr, "bench_matmul: %s\n", cinfer_last_error());
                return EXIT_USAGE;
            }
            o->model = {c.hidden_size, c.intermediate_size, c.n_heads, c.n_kv_heads,
                        c.head_dim,    c.vocab_size,        ""};
            snprintf(o->model.name, sizeof o->model.name, "%s", value);
        } else if (strcmp(flag, "-T") == 0) {
            if (parse_int_list(value, 1, GEMV_MAX_ROWS, &o->rows))
                return usage("-T needs integers in [1, 8] separated by commas, got '%s'", value);
        } else if (strcmp(flag, "--dtype") == 0) {
            if (parse_enum_list(value, dtype_by_name, CINFER_DTYPE_COUNT, o->use_dtype))
                return usage("--dtype needs f32, bf16 and/or fp16 separated by commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--proj") == 0) {
            if (parse_name_list(value, proj_names, o->use_proj))
                return usage("--proj needs qkv, o, gate_up, down and/or lm_head separated by "
                             "commas, got '%s'",
                             value);
        } else if (strcmp(flag, "--tiles") == 0) {
            o->tiles.n = 0;
            for (const char *p = value;;) {
                const size_t length = strcspn(p, ",");
                int tiles = -1;
                if (length == 4 && strncmp(p, "auto", 4) == 0) tiles = 0;
                if (length == 1 && (*p == '1' || *p == '2' || *p == '4')) tiles = *p - '0';
                if (tiles < 0 || o->tiles.n == MAX_LIST)
                    return usage("--tiles needs auto, 1, 2 and/or 4 separated by commas, got '%s'",
                                 value);
                o->tiles.values[o->tiles.n++] = tiles;
                if (p[length] == '\0') break;
                p += length + 1;
            }
        } else if (strcmp(flag, "-r") == 0 || strcmp(flag, "--repetitions") == 0) {
            if (parse_int(value, 1, 1000, &o->repetitions))
                return usage("-r needs one integer in [1, 1000], got '%s'", value);
        } else if (strcmp(flag, "--calls") == 0) {
            if (parse_int(value, 1, 1000, &o->calls))
                return usage("--calls needs one integer in [1, 1000], got '%s'", value);
        } else if (strcmp(flag, "--device") == 0) {
            if (parse_int(value, 0, 1023, &o->device))
                return usage("--device needs one GPU index >= 0, got '%s'", value);
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

static projection make_projection(const shape &m, int which) {
    const int q = m.heads * m.head_dim, kv = m.kv_heads * m.head_dim;
    switch (which) {
    case 0: return {"qkv", m.hidden, 3, {q, kv, kv}};
    case 1: return {"o", q, 1, {m.hidden}};
    case 2: return {"gate_up", m.hidden, 2, {m.intermediate, m.intermediate}};
    case 3: return {"down", m.intermediate, 1, {m.hidden}};
    default: return {"lm_head", m.hidden, 1, {m.vocab}};
    }
}

static int64_t total_out(const projection &p) {
    int64_t n = 0;
    for (int s = 0; s < p.n_segments; s++) n += p.n_out[s];
    return n;
}

// ---- device data --------------------------------------------------------------------------------

// Element i: uniform in [−scale, scale), from a hash of (seed, i), in the buffer's dtype.
__global__ void fill_uniform(void *dst, ci_dtype dtype, int64_t n, uint64_t seed, float scale) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const float v = ((float)(z >> 40) * 0x1p-24f * 2.0f - 1.0f) * scale;
        if (dtype == CI_BF16)
            static_cast<__nv_bfloat16 *>(dst)[i] = __float2bfloat16_rn(v);
        else if (dtype == CI_F16)
            static_cast<__half *>(dst)[i] = __float2half_rn(v);
        else
            static_cast<float *>(dst)[i] = v;
    }
}

static void fill(cudaStream_t stream, void *dst, ci_dtype dtype, int64_t n, uint64_t seed,
                 float scale) {
    fill_uniform<<<4096, 256, 0, stream>>>(dst, dtype, n, seed, scale);
    CUDA_CHECK_LAUNCH();
}

// Everything one projection in one dtype needs, for every T up to 8.
struct buffers {
    std::vector<void *> weights; // copies, each the segments back to back (16-byte aligned)
    size_t segment_offset[GEMV_MAX_SEGMENTS], weight_bytes;
    float *x, *out_ours, *out_cublas;
    void *x_rounded, *copy_dst;
};

static void buffers_free(buffers *b) {
    for (void *w : b->weights) CUDA_CHECK(cudaFree(w));
    b->weights.clear();
    void *others[] = {b->x, b->out_ours, b->out_cublas, b->x_rounded, b->copy_dst};
    for (void *p : others)
        if (p) CUDA_CHECK(cudaFree(p));
    b->x = b->out_ours = b->out_cublas = nullptr;
    b->x_rounded = b->copy_dst = nullptr;
}

static bool device_alloc(void **p, size_t bytes) {
    if (cudaMalloc(p, bytes) == cudaSuccess) return true;
    cudaGetLastError();
    *p = nullptr;
    return false;
}

static bool buffers_make(cudaStream_t stream, const projection &proj, ci_dtype dtype, uint64_t seed,
                         buffers *b) {
    memset(b->segment_offset, 0, sizeof b->segment_offset);
    b->x = b->out_ours = b->out_cublas = nullptr;
    b->x_rounded = b->copy_dst = nullptr;
    const size_t element = ci_dtype_size(dtype);
    size_t bytes = 0;
    for (int s = 0; s < proj.n_segments; s++) {
        b->segment_offset[s] = bytes;
        bytes += ((size_t)proj.n_out[s] * proj.n_in * element + 255) / 256 * 256;
    }
    b->weight_bytes = bytes;
    const size_t copies = (ROTATE_BYTES + bytes - 1) / bytes;
    const size_t out_bytes = (size_t)GEMV_MAX_ROWS * total_out(proj) * sizeof(float);
    bool ok = true;
    for (size_t c = 0; c < copies && ok; c++) {
        void *w;
        ok = device_alloc(&w, bytes);
        if (ok) b->weights.push_back(w);
    }
    ok = ok && device_alloc((void **)&b->x, (size_t)GEMV_MAX_ROWS * proj.n_in * sizeof(float)) &&
         device_alloc(&b->x_rounded, (size_t)GEMV_MAX_ROWS * proj.n_in * 2) &&
         device_alloc((void **)&b->out_ours, out_bytes) &&
         device_alloc((void **)&b->out_cublas, out_bytes) && device_alloc(&b->copy_dst, bytes);
    if (!ok) {
        fprintf(stderr, "bench_matmul: no room for %s in %s: %zu copies of %.0f MiB of weights\n",
                proj.name, ci_dtype_name(dtype), copies, bytes / 1048576.0);
        buffers_free(b);
        return false;
    }
    for (size_t c = 0; c < b->weights.size(); c++)
        fill(stream, b->weights[c], dtype, (int64_t)(bytes / element), seed + 17 * c, WEIGHT_SCALE);
    fill(stream, b->x, CI_F32, (int64_t)GEMV_MAX_ROWS * proj.n_in, seed ^ 0x5eed, 1.0f);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return true;
}

static gemv_params params_for(const projection &proj, const buffers &b, ci_dtype dtype, int T,
                              size_t copy) {
    gemv_params p{};
    p.x = b.x;
    p.n_rows = T;
    p.n_in = proj.n_in;
    p.weight_dtype = dtype;
    p.n_segments = proj.n_segments;
    int64_t out_offset = 0;
    for (int s = 0; s < proj.n_segments; s++) {
        p.segments[s].weight = (const unsigned char *)b.weights[copy] + b.segment_offset[s];
        p.segments[s].out = b.out_ours + out_offset;
        p.segments[s].n_out = proj.n_out[s];
        out_offset += (int64_t)T * proj.n_out[s];
    }
    return p;
}

static cudaDataType_t cuda_type(ci_dtype dtype) {
    return dtype == CI_BF16 ? CUDA_R_16BF : dtype == CI_F16 ? CUDA_R_16F : CUDA_R_32F;
}

// What matmul_cuda does for each segment: x rounded to the weight dtype, then one GEMM.
static void cublas_call(cublasHandle_t handle, cudaStream_t stream, const gemv_params &p,
                        const buffers &b, float *out_base) {
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t type = cuda_type(p.weight_dtype);
    int64_t out_offset = 0;
    for (int s = 0; s < p.n_segments; s++) {
        const void *input = p.x;
        if (p.weight_dtype != CI_F32) {
            convert_cuda(stream, b.x_rounded, p.weight_dtype, p.x, CI_F32, p.n_rows * p.n_in);
            input = b.x_rounded;
        }
        const int n_out = (int)p.segments[s].n_out;
        CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n_out, (int)p.n_rows,
                                  (int)p.n_in, &one, p.segments[s].weight, type, (int)p.n_in, input,
                                  type, (int)p.n_in, &zero, out_base + out_offset, CUDA_R_32F,
                                  n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        out_offset += p.n_rows * n_out;
    }
}

// ---- timing -------------------------------------------------------------------------------------

enum work_kind { WORK_OURS, WORK_CUBLAS, WORK_COPY };

struct timing_context {
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaEvent_t start, stop;
    const options *o;
};

// Records `calls` calls of one kind as a graph (weight copies cycled), replays it once to warm up
// and -r times between events; mean and sd of the µs per call.
static void time_work(const timing_context &ctx, work_kind kind, const projection &proj,
                      const buffers &b, ci_dtype dtype, int T, int tiles, double *mean,
                      double *sd) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal));
    for (int c = 0; c < ctx.o->calls; c++) {
        const size_t copy = (size_t)c % b.weights.size();
        const gemv_params p = params_for(proj, b, dtype, T, copy);
        if (kind == WORK_OURS)
            gemv_launch_tiles(ctx.stream, p, tiles ? tiles : 1);
        else if (kind == WORK_CUBLAS)
            cublas_call(ctx.cublas, ctx.stream, p, b, b.out_cublas);
        else
            CUDA_CHECK(cudaMemcpyAsync(b.copy_dst, b.weights[copy], b.weight_bytes,
                                       cudaMemcpyDeviceToDevice, ctx.stream));
    }
    CUDA_CHECK(cudaStreamEndCapture(ctx.stream, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    std::vector<double> us(ctx.o->repetitions);
    double sum = 0;
    for (int r = 0; r < ctx.o->repetitions; r++) {
        CUDA_CHECK(cudaEventRecord(ctx.start, ctx.stream));
        CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
        CUDA_CHECK(cudaEventRecord(ctx.stop, ctx.stream));
        CUDA_CHECK(cudaEventSynchronize(ctx.stop));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, ctx.start, ctx.stop));
        us[r] = ms * 1e3 / ctx.o->calls;
        sum += us[r];
    }
    *mean = sum / ctx.o->repetitions;
    double sq = 0;
    for (double u : us) sq += (u - *mean) * (u - *mean);
    *sd = ctx.o->repetitions > 1 ? sqrt(sq / (ctx.o->repetitions - 1)) : 0.0;
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
}

// max |ours − cuBLAS| / max |cuBLAS| over the T rows of every segment, on weight copy 0.
static double compare_outputs(const timing_context &ctx, const projection &proj, const buffers &b,
                              ci_dtype dtype, int T, int tiles) {
    const gemv_params p = params_for(proj, b, dtype, T, 0);
    const size_t n = (size_t)T * total_out(proj);
    CUDA_CHECK(cudaMemsetAsync(b.out_ours, 0xff, n * sizeof(float), ctx.stream)); // NaN
    gemv_launch_tiles(ctx.stream, p, tiles ? tiles : 1);
    cublas_call(ctx.cublas, ctx.stream, p, b, b.out_cublas);
    std::vector<float> ours(n), theirs(n);
    CUDA_CHECK(cudaMemcpyAsync(ours.data(), b.out_ours, n * sizeof(float), cudaMemcpyDeviceToHost,
                               ctx.stream));
    CUDA_CHECK(cudaMemcpyAsync(theirs.data(), b.out_cublas, n * sizeof(float),
                               cudaMemcpyDeviceToHost, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)ours[i] - theirs[i]);
        if (!(d <= max_diff)) max_diff = d; // NaN sticks
        max_ref = fmax(max_ref, fabs((double)theirs[i]));
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

// ---- output -------------------------------------------------------------------------------------

static double ours_gbs(const row &r) { return r.bytes / (r.ours_us * 1e-6) / 1e9; }
static double ceiling_gbs(const row &r) { return 2.0 * r.weight_bytes / (r.copy_us * 1e-6) / 1e9; }
static bool mismatch(const row &r) { return !(r.max_diff <= MAX_RELATIVE_DIFF); }

static void shape_text(const projection &p, char *text, size_t size) {
    int used = snprintf(text, size, "%d → ", p.n_in);
    for (int s = 0; s < p.n_segments && used < (int)size; s++)
        used += snprintf(text + used, size - used, "%s%d", s ? "+" : "", p.n_out[s]);
}

static void print_rows(const options &o, const std::vector<row> &rows, const char *device) {
    char dims[96];
    if (!o.json) {
        printf("| proj | n_in → n_out | T | dtype | tiles | ours µs | cuBLAS µs | ours GB/s | "
               "%% of copy | ours/cuBLAS | max diff |\n");
        printf("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for (const row &r : rows) {
            shape_text(r.proj, dims, sizeof dims);
            printf("| %s | %s | %d | %s | %s%d | %.2f ± %.2f | %.2f ± %.2f | %.0f | %.1f%% | "
                   "%.2f | %.1e%s |\n",
                   r.proj.name, dims, r.T, dtype_name(r.dtype), r.tiles == r.auto_tiles ? "" : "*",
                   r.tiles, r.ours_us, r.ours_sd, r.cublas_us, r.cublas_sd, ours_gbs(r),
                   100.0 * ours_gbs(r) / ceiling_gbs(r), r.ours_us / r.cublas_us, r.max_diff,
                   mismatch(r) ? " MISMATCH" : "");
        }
        printf("\n%s; shape %s. µs per call: mean ± sd over %d replays of a CUDA graph of %d "
               "calls, after one warm-up, weights cycled through >= 256 MiB of copies (read from "
               "DRAM). ours: gemv_launch, tiles = 8-row tiles per block (0: F32's one layout; * "
               "forced by --tiles, else the launcher's choice). cuBLAS: convert_cuda + "
               "cublasGemmEx per projection, as kernels/cuda/matmul.cu. GB/s: weights + x + out "
               "bytes per call; %% of copy: against 2 × weight bytes per device-to-device copy "
               "of the weights. max diff: max |ours − cuBLAS| / max |cuBLAS| (MISMATCH over "
               "%g).\n",
               device, o.model.name, o.repetitions, o.calls, MAX_RELATIVE_DIFF);
        return;
    }
    printf("[\n");
    for (size_t i = 0; i < rows.size(); i++) {
        const row &r = rows[i];
        printf("  {\"device\": \"%s\", \"shape\": \"%s\", \"proj\": \"%s\", \"n_in\": %d, "
               "\"n_out\": [",
               device, o.model.name, r.proj.name, r.proj.n_in);
        for (int s = 0; s < r.proj.n_segments; s++) printf("%s%d", s ? ", " : "", r.proj.n_out[s]);
        printf("], \"T\": %d, \"dtype\": \"%s\", \"tiles\": %d, \"tiles_forced\": %s, "
               "\"ours_us\": %.4f, \"ours_sd_us\": %.4f, \"cublas_us\": %.4f, "
               "\"cublas_sd_us\": %.4f, \"copy_us\": %.4f, \"copy_sd_us\": %.4f, "
               "\"bytes\": %.0f, \"weight_bytes\": %.0f, \"ours_gbs\": %.2f, "
               "\"copy_ceiling_gbs\": %.2f, \"percent_of_copy\": %.2f, \"ours_over_cublas\": "
               "%.4f, \"max_relative_diff\": %.3g, \"mismatch\": %s}%s\n",
               r.T, dtype_name(r.dtype), r.tiles, r.tiles == r.auto_tiles ? "false" : "true",
               r.ours_us, r.ours_sd, r.cublas_us, r.cublas_sd, r.copy_us, r.copy_sd, r.bytes,
               r.weight_bytes, ours_gbs(r), ceiling_gbs(r), 100.0 * ours_gbs(r) / ceiling_gbs(r),
               r.ours_us / r.cublas_us, isfinite(r.max_diff) ? r.max_diff : -1.0,
               mismatch(r) ? "true" : "false", i + 1 < rows.size() ? "," : "");
    }
    printf("]\n");
}

int main(int argc, char **argv) {
    options o;
    const int parsed = parse_options(argc, argv, &o);
    if (parsed) return parsed < 0 ? 0 : parsed;
    if (ci_cuda_available(o.device) != CINFER_OK) {
        fprintf(stderr, "bench_matmul: no CUDA device: %s; nothing measured\n",
                cinfer_last_error());
        return EXIT_SKIP;
    }
    CUDA_CHECK(cudaSetDevice(o.device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
    char device[300];
    snprintf(device, sizeof device, "%s (device %d, %d SMs)", prop.name, o.device,
             prop.multiProcessorCount);

    timing_context ctx;
    ctx.o = &o;
    CUDA_CHECK(cudaStreamCreate(&ctx.stream));
    CUDA_CHECK(cudaEventCreate(&ctx.start));
    CUDA_CHECK(cudaEventCreate(&ctx.stop));
    void *cublas_workspace;
    CUDA_CHECK(cudaMalloc(&cublas_workspace, CUBLAS_WORKSPACE));
    CUBLAS_CHECK(cublasCreate(&ctx.cublas));
    CUBLAS_CHECK(cublasSetStream(ctx.cublas, ctx.stream));
    CUBLAS_CHECK(cublasSetWorkspace(ctx.cublas, cublas_workspace, CUBLAS_WORKSPACE));
    CUBLAS_CHECK(cublasSetMathMode(ctx.cublas, CUBLAS_DEFAULT_MATH)); // no TF32 for F32

    std::vector<row> rows;
    int status = 0;
    for (int which = 0; which < N_PROJ; which++) {
        if (!o.use_proj[which]) continue;
        const projection proj = make_projection(o.model, which);
        for (int dt = 0; dt < CINFER_DTYPE_COUNT; dt++) {
            if (!o.use_dtype[dt]) continue;
            const ci_dtype dtype = ci_dtype_of_run((cinfer_dtype)dt);
            buffers b;
            if (!buffers_make(ctx.stream, proj, dtype, o.seed + 1000 * which, &b)) {
                status = EXIT_ERROR;
                continue;
            }
            for (int ti = 0; ti < o.rows.n; ti++) {
                const int T = o.rows.values[ti];
                const gemv_params p = params_for(proj, b, dtype, T, 0);
                if (!gemv_supports(p)) {
                    fprintf(stderr, "bench_matmul: %s: the GEMV does not take n_in %d\n", proj.name,
                            proj.n_in);
                    status = EXIT_ERROR;
                    continue;
                }
                for (int k = 0; k < o.tiles.n; k++) {
                    if (dtype == CI_F32 && k > 0) break; // one layout
                    row r;
                    memset(&r, 0, sizeof r);
                    r.proj = proj;
                    r.T = T;
                    r.dtype = dt;
                    r.auto_tiles = dtype == CI_F32 ? 0 : gemv_default_tiles(p);
                    r.tiles = dtype == CI_F32     ? 0
                              : o.tiles.values[k] ? o.tiles.values[k]
                                                  : r.auto_tiles;
                    r.weight_bytes = 0;
                    for (int s = 0; s < proj.n_segments; s++)
                        r.weight_bytes += (double)proj.n_out[s] * proj.n_in * ci_dtype_size(dtype);
                    r.bytes = r.weight_bytes + (double)T * proj.n_in * 4 +
                              (double)T * total_out(proj) * 4;
                    fprintf(stderr, "bench_matmul: %s %s T=%d tiles=%d\n", proj.name,
                            dtype_name(dt), T, r.tiles);
                    time_work(ctx, WORK_OURS, proj, b, dtype, T, r.tiles, &r.ours_us, &r.ours_sd);
                    time_work(ctx, WORK_CUBLAS, proj, b, dtype, T, 0, &r.cublas_us, &r.cublas_sd);
                    time_work(ctx, WORK_COPY, proj, b, dtype, T, 0, &r.copy_us, &r.copy_sd);
                    r.max_diff = compare_outputs(ctx, proj, b, dtype, T, r.tiles);
                    if (mismatch(r)) status = EXIT_ERROR;
                    rows.push_back(r);
                }
            }
            buffers_free(&b);
        }
    }
    print_rows(o, rows, device);
    CUBLAS_CHECK(cublasDestroy(ctx.cublas));
    CUDA_CHECK(cudaFree(cublas_workspace));
    CUDA_CHECK(cudaEventDestroy(ctx.start));
    CUDA_CHECK(cudaEventDestroy(ctx.stop));
    CUDA_CHECK(cudaStreamDestroy(ctx.stream));
    return status;
}
