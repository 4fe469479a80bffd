/* The CPU communicator: tensor-parallel ranks as threads of one process (kernels/comm.h).
 *
 * Every collective is one or two rendezvous of the group's ranks under one mutex:
 *
 *   all_reduce_sum      each rank copies x into its staging buffer; rendezvous; rank r sums its
 *                       range of elements [r·n/size, (r+1)·n/size) over the ranks in rank order,
 *                       ((x0 + x1) + x2) + ..., into the group's result buffer; rendezvous; each
 *                       rank copies the result into x. Every element is summed once, by one rank,
 *                       in one order: the same bits on every rank and in every run.
 *   all_gather_columns  each rank copies its part into its staging buffer; rendezvous; each rank
 *                       copies every part into its columns of out.
 *   broadcast           the root copies into its staging buffer; rendezvous; the others copy out.
 *
 * No rank reads or writes another rank's memory, only the group's staging, so a rank that gives
 * up may free its buffers at once. The staging comes in two sets used by alternate collectives:
 * a rank refills a set only two collectives later, after every rank has passed the rendezvous of
 * the collective in between, so no rank can still be reading it. That is why all_gather and
 * broadcast need no second rendezvous.
 *
 * A rendezvous checks that every rank arrived at the same point (collective, its count, sizes,
 * root); waits on a condition variable (ranks may outnumber cores: nobody spins), at most the
 * group's timeout; and gives up at once when the group is aborted. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/error.h"
#include "../comm.h"
#include "comm_staging.h"

typedef enum collective {
    COLLECTIVE_ALL_REDUCE,
    COLLECTIVE_ALL_GATHER_COLUMNS,
    COLLECTIVE_BROADCAST,
    COLLECTIVE_BARRIER
} collective;

/* Where a rank stands when it arrives at a rendezvous: every rank of the group says the same. */
typedef struct arrival {
    collective op;
    unsigned long long seq; /* collectives the rank called before this one */
    int phase;              /* 1, or 2 for the all-reduce's second rendezvous */
    int64_t rows, count;    /* elements (bytes for a broadcast) in rows */
    int root;
} arrival;

enum { REASON_CAPACITY = 1024 };

struct ci_comm_group {
    int size;
    double timeout_seconds;
    pthread_mutex_t mutex;
    pthread_cond_t changed;        /* a rendezvous completed, or the group was aborted or left */
    unsigned long long generation; /* rendezvous completed so far */
    int n_arrived;
    arrival *arrivals;      /* [size]: this rendezvous's */
    unsigned char *present; /* [size]: arrived at this rendezvous */
    unsigned char *joined;  /* [size]: its communicator exists */
    unsigned char *left;    /* [size]: its communicator was destroyed */
    int aborted;
    char reason[REASON_CAPACITY];
    staging *in;    /* [2][size]: each rank's contribution, by set (the collective's seq parity) */
    staging out[2]; /* the all-reduce's result, by set */
};

typedef struct cpu_comm {
    ci_comm base; /* first: the table's functions take it */
    ci_comm_group *group;
    unsigned long long seq;
    staging part; /* gather_buffer */
} cpu_comm;

static cpu_comm *cpu_of(ci_comm *comm) { return (cpu_comm *)comm; }

static const char *describe(const arrival *a, char *buf, size_t size) {
    switch (a->op) {
    case COLLECTIVE_ALL_REDUCE:
        snprintf(buf, size, "all_reduce_sum #%llu (step %d) of %lld floats", a->seq, a->phase,
                 (long long)a->count);
        break;
    case COLLECTIVE_ALL_GATHER_COLUMNS:
        snprintf(buf, size, "all_gather_columns #%llu of [%lld, %lld] floats", a->seq,
                 (long long)a->rows, (long long)(a->rows ? a->count / a->rows : 0));
        break;
    case COLLECTIVE_BROADCAST:
        snprintf(buf, size, "broadcast #%llu of %lld bytes from rank %d", a->seq,
                 (long long)a->count, a->root);
        break;
    case COLLECTIVE_BARRIER: snprintf(buf, size, "barrier #%llu", a->seq); break;
    }
    return buf;
}

static int same_point(const arrival *a, const arrival *b) {
    return a->op == b->op && a->seq == b->seq && a->phase == b->phase && a->rows == b->rows &&
           a->count == b->count && a->root == b->root;
}

/* Under the mutex: the first reason wins; everyone waiting wakes. */
static void abort_locked(ci_comm_group *g, const char *fmt, ...) CI_PRINTF(2, 3);
static void abort_locked(ci_comm_group *g, const char *fmt, ...) {
    if (!g->aborted) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(g->reason, sizeof g->reason, fmt, args);
        va_end(args);
        g->aborted = 1;
    }
    pthread_cond_broadcast(&g->changed);
}

/* Under the mutex, for a failing rank: its own error message from the group's reason. */
static cinfer_status failed_locked(const ci_comm_group *g, int rank) {
    return CI_FAIL(CINFER_ERR_COMM, "tensor-parallel group of %d ranks (rank %d): %s", g->size,
                   rank, g->reason);
}

/* "2, 5" into buf: the ranks for which flags[r] == want */
static const char *rank_list(const ci_comm_group *g, const unsigned char *flags, int want,
                             char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int r = 0; r < g->size && used < size; r++)
        if (flags[r] == want)
            used += (size_t)snprintf(buf + used, size - used, "%s%d", used ? ", " : "", r);
    return buf;
}

/* The completing rank checks that everyone arrived at the same point, then prepares the set's
 * result buffer for those who need it. */
static void complete_locked(ci_comm_group *g, size_t result_bytes, int set) {
    for (int r = 1; r < g->size; r++) {
        if (same_point(&g->arrivals[r], &g->arrivals[0])) continue;
        char message[REASON_CAPACITY], what[160];
        size_t used =
            (size_t)snprintf(message, sizeof message, "the ranks called different collectives:");
        for (int q = 0; q < g->size && used < sizeof message; q++)
            used += (size_t)snprintf(message + used, sizeof message - used, "%s rank %d %s",
                                     q ? ";" : "", q, describe(&g->arrivals[q], what, sizeof what));
        abort_locked(g, "%s", message);
        return;
    }
    if (!staging_grow(&g->out[set], result_bytes))
        abort_locked(g, "out of memory: %zu bytes of staging for %s", result_bytes,
                     describe(&g->arrivals[0], (char[160]){0}, 160));
}

static struct timespec deadline_after(double seconds) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    const double whole = (double)(time_t)seconds;
    t.tv_sec += (time_t)seconds;
    t.tv_nsec += (long)((seconds - whole) * 1e9);
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec += 1;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* Waits until every rank of the group has arrived at point `a`. result_bytes: what the set's
 * result buffer must hold after it (the all-reduce's first rendezvous). */
static cinfer_status rendezvous(cpu_comm *c, const arrival *a, size_t result_bytes) {
    ci_comm_group *g = c->group;
    const int rank = c->base.rank, set = (int)(a->seq & 1);
    char what[160];
    pthread_mutex_lock(&g->mutex);
    if (g->aborted) {
        cinfer_status status = failed_locked(g, rank);
        pthread_mutex_unlock(&g->mutex);
        return status;
    }
    g->arrivals[rank] = *a;
    g->present[rank] = 1;
    const unsigned long long generation = g->generation;
    if (++g->n_arrived == g->size) {
        complete_locked(g, result_bytes, set);
        memset(g->present, 0, (size_t)g->size);
        g->n_arrived = 0;
        g->generation++;
        pthread_cond_broadcast(&g->changed);
    } else {
        const struct timespec deadline = deadline_after(g->timeout_seconds);
        while (g->generation == generation && !g->aborted) {
            char ranks[256];
            if (rank_list(g, g->left, 1, ranks, sizeof ranks)[0]) {
                abort_locked(g, "rank %d waits in %s, but rank(s) %s left the group", rank,
                             describe(a, what, sizeof what), ranks);
                break;
            }
            if (pthread_cond_timedwait(&g->changed, &g->mutex, &deadline) == ETIMEDOUT &&
                g->generation == generation && !g->aborted)
                abort_locked(g,
                             "rank %d waited %.1f s (the group's timeout) in %s for rank(s) %s, "
                             "which never arrived",
                             rank, g->timeout_seconds, describe(a, what, sizeof what),
                             rank_list(g, g->present, 0, ranks, sizeof ranks));
        }
    }
    cinfer_status status = g->aborted ? failed_locked(g, rank) : CINFER_OK;
    pthread_mutex_unlock(&g->mutex);
    return status;
}

/* This rank's staging buffer of the collective's set, at least bytes. */
static cinfer_status staging_for(cpu_comm *c, const arrival *a, size_t bytes, void **out) {
    ci_comm_group *g = c->group;
    staging *mine = &g->in[(size_t)(a->seq & 1) * (size_t)g->size + (size_t)c->base.rank];
    if (staging_grow(mine, bytes)) {
        *out = mine->data;
        return CINFER_OK;
    }
    char what[160], reason[REASON_CAPACITY];
    snprintf(reason, sizeof reason, "out of memory: %zu bytes of staging for %s", bytes,
             describe(a, what, sizeof what));
    ci_comm_abort(&c->base, reason);
    return CI_FAIL(CINFER_ERR_MEMORY, "rank %d: %s", c->base.rank, reason);
}

static const void *staged(const cpu_comm *c, const arrival *a, int rank) {
    return c->group->in[(size_t)(a->seq & 1) * (size_t)c->group->size + (size_t)rank].data;
}

static cinfer_status cpu_all_reduce_sum(ci_comm *comm, ci_backend *be, ci_tensor *x) {
    (void)be;
    cpu_comm *c = cpu_of(comm);
    CI_ASSERT(x->dtype == CI_F32);
    const int64_t n = ci_tensor_numel(x);
    const size_t bytes = (size_t)n * sizeof(float);
    arrival a = {COLLECTIVE_ALL_REDUCE, c->seq++, 1, 1, n, 0};
    void *mine = NULL;
    CI_TRY(staging_for(c, &a, bytes, &mine));
    if (bytes) memcpy(mine, x->data, bytes);
    CI_TRY(rendezvous(c, &a, bytes));

    /* this rank's range of elements, summed over the ranks in rank order */
    const int size = comm->size, rank = comm->rank;
    const int64_t lo = n * rank / size, hi = n * (rank + 1) / size;
    float *sum = c->group->out[a.seq & 1].data;
    const float *first = staged(c, &a, 0);
    for (int64_t i = lo; i < hi; i++) sum[i] = first[i];
    for (int r = 1; r < size; r++) {
        const float *term = staged(c, &a, r);
        for (int64_t i = lo; i < hi; i++) sum[i] += term[i];
    }
    a.phase = 2;
    CI_TRY(rendezvous(c, &a, 0));
    if (bytes) memcpy(x->data, sum, bytes);
    return CINFER_OK;
}

static cinfer_status cpu_all_gather_columns(ci_comm *comm, ci_backend *be, ci_tensor *out,
                                            const ci_tensor *part) {
    (void)be;
    cpu_comm *c = cpu_of(comm);
    CI_ASSERT(out->dtype == CI_F32 && part->dtype == CI_F32);
    const int64_t rows = ci_tensor_n_rows(part), n = ci_tensor_row_size(part);
    CI_ASSERT(ci_tensor_n_rows(out) == rows && ci_tensor_row_size(out) == n * comm->size);
    const size_t row_bytes = (size_t)n * sizeof(float);
    const arrival a = {COLLECTIVE_ALL_GATHER_COLUMNS, c->seq++, 1, rows, rows * n, 0};
    void *mine = NULL;
    CI_TRY(staging_for(c, &a, (size_t)rows * row_bytes, &mine));
    if (rows * n > 0) memcpy(mine, part->data, (size_t)rows * row_bytes);
    CI_TRY(rendezvous(c, &a, 0));
    for (int r = 0; r < comm->size && n > 0; r++) {
        const float *from = staged(c, &a, r);
        for (int64_t t = 0; t < rows; t++)
            memcpy((float *)out->data + (t * comm->size + r) * n, from + t * n, row_bytes);
    }
    return CINFER_OK;
}

static cinfer_status cpu_broadcast(ci_comm *comm, ci_backend *be, void *data, size_t bytes,
                                   int root) {
    (void)be;
    cpu_comm *c = cpu_of(comm);
    CI_ASSERT(root >= 0 && root < comm->size);
    const arrival a = {COLLECTIVE_BROADCAST, c->seq++, 1, 1, (int64_t)bytes, root};
    if (comm->rank == root) {
        void *mine = NULL;
        CI_TRY(staging_for(c, &a, bytes, &mine));
        if (bytes) memcpy(mine, data, bytes);
    }
    CI_TRY(rendezvous(c, &a, 0));
    if (comm->rank != root && bytes) memcpy(data, staged(c, &a, root), bytes);
    return CINFER_OK;
}

static cinfer_status cpu_barrier(ci_comm *comm, ci_backend *be) {
    (void)be;
    cpu_comm *c = cpu_of(comm);
    const arrival a = {COLLECTIVE_BARRIER, c->seq++, 1, 0, 0, 0};
    return rendezvous(c, &a, 0);
}

static cinfer_status cpu_synchronize(ci_comm *comm, ci_backend *be, double timeout_seconds) {
    (void)be;
    (void)timeout_seconds;
    ci_comm_group *g = cpu_of(comm)->group;
    pthread_mutex_lock(&g->mutex);
    cinfer_status status = g->aborted ? failed_locked(g, comm->rank) : CINFER_OK;
    pthread_mutex_unlock(&g->mutex);
    return status;
}

static void *cpu_gather_buffer(ci_comm *comm, size_t bytes) {
    staging *part = &cpu_of(comm)->part;
    return staging_grow(part, bytes ? bytes : 1) ? part->data : NULL;
}

static void cpu_abort(ci_comm *comm, const char *reason) {
    ci_comm_group *g = cpu_of(comm)->group;
    pthread_mutex_lock(&g->mutex);
    abort_locked(g, "rank %d aborted the group: %s", comm->rank, reason);
    pthread_mutex_unlock(&g->mutex);
}

/* A rank that leaves while others still wait for it makes them fail at once, not at the timeout. */
static void cpu_destroy(ci_comm *comm) {
    cpu_comm *c = cpu_of(comm);
    ci_comm_group *g = c->group;
    pthread_mutex_lock(&g->mutex);
    g->left[comm->rank] = 1;
    pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->mutex);
    free(c->part.data);
    free(c);
}

static const ci_comm_ops cpu_comm_ops = {
    .name = "cpu",
    .all_reduce_sum = cpu_all_reduce_sum,
    .all_gather_columns = cpu_all_gather_columns,
    .broadcast = cpu_broadcast,
    .barrier = cpu_barrier,
    .synchronize = cpu_synchronize,
    .gather_buffer = cpu_gather_buffer,
    .abort = cpu_abort,
    .destroy = cpu_destroy,
};

cinfer_status ci_comm_group_create(int size, double timeout_seconds, ci_comm_group **out) {
    *out = NULL;
    if (size < 1)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "a tensor-parallel group needs at least 1 rank, got %d",
                       size);
    ci_comm_group *g = calloc(1, sizeof *g);
    CI_CHECK_ALLOC(g, sizeof *g);
    g->size = size;
    g->timeout_seconds = timeout_seconds > 0 ? timeout_seconds : CI_COMM_DEFAULT_TIMEOUT_SECONDS;
    g->arrivals = calloc((size_t)size, sizeof *g->arrivals);
    g->present = calloc((size_t)size, 1);
    g->joined = calloc((size_t)size, 1);
    g->left = calloc((size_t)size, 1);
    g->in = calloc(2 * (size_t)size, sizeof *g->in);
    pthread_condattr_t attr;
    int ok = g->arrivals && g->present && g->joined && g->left && g->in;
    /* deadlines on the monotonic clock: a change of the wall clock neither fires nor delays them */
    ok = ok && pthread_condattr_init(&attr) == 0;
    if (ok) {
        ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&g->changed, &attr) == 0;
        pthread_condattr_destroy(&attr);
    }
    if (ok && pthread_mutex_init(&g->mutex, NULL) != 0) {
        pthread_cond_destroy(&g->changed);
        ok = 0;
    }
    if (!ok) {
        free(g->arrivals);
        free(g->present);
        free(g->joined);
        free(g->left);
        free(g->in);
        free(g);
        return CI_FAIL(CINFER_ERR_MEMORY, "cannot create a tensor-parallel group of %d ranks",
                       size);
    }
    *out = g;
    return CINFER_OK;
}

void ci_comm_group_free(ci_comm_group *g) {
    if (!g) return;
    for (int i = 0; i < 2 * g->size; i++) free(g->in[i].data);
    free(g->out[0].data);
    free(g->out[1].data);
    pthread_mutex_destroy(&g->mutex);
    pthread_cond_destroy(&g->changed);
    free(g->arrivals);
    free(g->present);
    free(g->joined);
    free(g->left);
    free(g->in);
    free(g);
}

cinfer_status ci_comm_cpu_create(ci_comm_group *g, int rank, ci_comm **out) {
    *out = NULL;
    if (rank < 0 || rank >= g->size)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "rank %d is outside the tensor-parallel group of %d",
                       rank, g->size);
    cpu_comm *c = calloc(1, sizeof *c);
    CI_CHECK_ALLOC(c, sizeof *c);
    pthread_mutex_lock(&g->mutex);
    const int taken = g->joined[rank];
    g->joined[rank] = 1;
    pthread_mutex_unlock(&g->mutex);
    if (taken) {
        free(c);
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "rank %d of the tensor-parallel group of %d already has a communicator",
                       rank, g->size);
    }
    c->base = (ci_comm){&cpu_comm_ops, rank, g->size};
    c->group = g;
    *out = &c->base;
    return CINFER_OK;
}
