/* The CPU backend: host memory and the reference ops. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/clock.h"
#include "../../common/error.h"
#include "ops_cpu.h"

typedef struct cpu_backend {
    ci_backend base; /* first: ci_backend_free frees the whole struct through it */
    double *marks;   /* host clock readings, NaN where unset */
    int n_marks;
} cpu_backend;

/* 64-byte alignment: a cache line, and what AVX-512 loads like. */
enum { CPU_ALIGNMENT = 64 };

static void *cpu_alloc(ci_backend *be, size_t bytes) {
    (void)be;
    size_t rounded = (bytes + CPU_ALIGNMENT - 1) / CPU_ALIGNMENT * CPU_ALIGNMENT;
    return aligned_alloc(CPU_ALIGNMENT, rounded ? rounded : CPU_ALIGNMENT);
}

static void cpu_free(ci_backend *be, void *memory) {
    (void)be;
    free(memory);
}

static void cpu_copy(ci_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}

/* Each thread gets its own slice: attention keeps a row of scores per query, matmul a block of
 * widened weight rows. */
/* Sequences of a batch run one after another through the same per-thread slices, so n_seqs adds
 * nothing. */
static size_t cpu_workspace_bytes(const ci_backend *be, const ci_config *c, int n_ctx, int n_seqs) {
    (void)n_seqs;
    int64_t widest_input = c->hidden_size;
    if (c->intermediate_size > widest_input) widest_input = c->intermediate_size;
    if ((int64_t)c->n_heads * c->head_dim > widest_input)
        widest_input = (int64_t)c->n_heads * c->head_dim;
    size_t attention = attention_cpu_scratch_bytes(n_ctx, c->head_dim);
    size_t matmul = matmul_cpu_scratch_bytes(widest_input);
    return (size_t)be->n_threads * (attention > matmul ? attention : matmul);
}

/* The paged ops' per-thread scratch is the contiguous ops' at max_seq_len keys. */
static size_t cpu_paged_workspace_bytes(const ci_backend *be, const ci_config *c, int max_rows,
                                        int max_seq_len, int max_seqs) {
    (void)max_rows;
    return cpu_workspace_bytes(be, c, max_seq_len, max_seqs);
}

static void cpu_mark(ci_backend *be, int slot) {
    cpu_backend *cpu = (cpu_backend *)be;
    CI_ASSERT(slot >= 0);
    if (slot >= cpu->n_marks) {
        const int n = slot + 1 > 2 * cpu->n_marks ? slot + 1 : 2 * cpu->n_marks;
        double *grown = realloc(cpu->marks, (size_t)n * sizeof *grown);
        if (!grown) return; /* the slot reads NaN */
        for (int i = cpu->n_marks; i < n; i++) grown[i] = NAN;
        cpu->marks = grown;
        cpu->n_marks = n;
    }
    cpu->marks[slot] = ci_now_seconds();
}

static double cpu_seconds_between(ci_backend *be, int from, int to) {
    const cpu_backend *cpu = (const cpu_backend *)be;
    if (from < 0 || to < 0 || from >= cpu->n_marks || to >= cpu->n_marks) return NAN;
    return cpu->marks[to] - cpu->marks[from];
}

static void cpu_release(ci_backend *be) { free(((cpu_backend *)be)->marks); }

static const ci_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .workspace_bytes = cpu_workspace_bytes,
    .embedding = embedding_cpu,
    .rmsnorm = rmsnorm_cpu,
    .matmul = matmul_cpu,
    .rope = rope_cpu,
    .attention = attention_cpu,
    .diff_attention = diff_attention_cpu,
    .gated_activation = gated_activation_cpu,
    .kv_store = kv_store_cpu,
    .rope_rows = rope_rows_cpu,
    .kv_store_paged = kv_store_paged_cpu,
    .paged_attention = paged_attention_cpu,
    .paged_diff_attention = paged_diff_attention_cpu,
    .paged_workspace_bytes = cpu_paged_workspace_bytes,
    .argmax = argmax_cpu,
    .release = cpu_release,
    .mark = cpu_mark,
    .seconds_between = cpu_seconds_between,
};

cinfer_status ci_cpu_backend_create(int n_threads, ci_backend **out) {
    cpu_backend *cpu = calloc(1, sizeof *cpu);
    CI_CHECK_ALLOC(cpu, sizeof *cpu);
    cpu->base.ops = &cpu_ops;
    cpu->base.n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    *out = &cpu->base;
    return CINFER_OK;
}
