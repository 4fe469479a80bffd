/* Op timing by wrapping a backend's op table: each wrapper puts a timing mark on the device's
 * queue before and after the real op (kernels/backend.h: mark), and the marks are read when the
 * profile stops, so the host never waits between ops. */
#include <stdlib.h>

#include "../common/error.h"
#include "profile.h"

static struct {
    const ci_backend_ops *real; /* the backend's own table while a profile runs */
    cinfer_profile *profile;
    cinfer_op_class *classes; /* the class of op i, timed between marks 2i and 2i + 1 */
    int n_ops, capacity;
} active;

/* Runs `call` (a statement using active.real) between two marks and notes its class. */
#define TIMED(be, op_class, call)                                                                  \
    do {                                                                                           \
        const int op_ = next_op(op_class);                                                         \
        if (op_ >= 0) active.real->mark(be, 2 * op_);                                              \
        call;                                                                                      \
        if (op_ >= 0) active.real->mark(be, 2 * op_ + 1);                                          \
    } while (0)

/* The index of a new op of class c, or -1 when there is no memory to note it (it goes untimed,
 * and the profile counts it as dropped). */
static int next_op(cinfer_op_class c) {
    if (active.n_ops == active.capacity) {
        const int n = active.capacity ? 2 * active.capacity : 256;
        cinfer_op_class *grown = realloc(active.classes, (size_t)n * sizeof *grown);
        if (!grown) {
            active.profile->dropped++;
            return -1;
        }
        active.classes = grown;
        active.capacity = n;
    }
    active.classes[active.n_ops] = c;
    return active.n_ops++;
}

static void embedding_timed(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                            const ci_tensor *table) {
    TIMED(be, CINFER_OP_OTHER, active.real->embedding(be, out, tokens, table));
}
static void rmsnorm_timed(ci_backend *be, ci_tensor *out, const ci_tensor *x,
                          const ci_tensor *weight, float eps) {
    TIMED(be, CINFER_OP_NORM, active.real->rmsnorm(be, out, x, weight, eps));
}
static void matmul_timed(ci_backend *be, const ci_tensor *x, const ci_projection *projections,
                         int n, int accumulate) {
    TIMED(be, CINFER_OP_MATMUL, active.real->matmul(be, x, projections, n, accumulate));
}
static void rope_timed(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0,
                       const ci_rope_freqs *freqs) {
    TIMED(be, CINFER_OP_OTHER, active.real->rope(be, q, k, pos0, freqs));
}
static void attention_timed(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                            const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    TIMED(be, CINFER_OP_ATTENTION, active.real->attention(be, out, q, k_cache, v_cache, pos0));
}
static void diff_attention_timed(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                 const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                                 float lambda, float lambda_init, float eps) {
    TIMED(
        be, CINFER_OP_ATTENTION,
        active.real->diff_attention(be, out, q, k_cache, v_cache, pos0, lambda, lambda_init, eps));
}
static void gated_activation_timed(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                                   const ci_tensor *up, ci_activation act) {
    TIMED(be, CINFER_OP_OTHER, active.real->gated_activation(be, out, gate, up, act));
}
static void kv_store_timed(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache,
                           const ci_tensor *k_new, const ci_tensor *v_new, int pos0) {
    TIMED(be, CINFER_OP_OTHER, active.real->kv_store(be, k_cache, v_cache, k_new, v_new, pos0));
}
static void argmax_timed(ci_backend *be, ci_tensor *ids, const ci_tensor *logits) {
    TIMED(be, CINFER_OP_OTHER, active.real->argmax(be, ids, logits));
}

void ci_profile_start(ci_backend *be, cinfer_profile *profile) {
    CI_ASSERT(active.real == NULL); /* one profile at a time */
    static ci_backend_ops timed;
    *profile = (cinfer_profile){{0}, {0}, 0};
    active.real = be->ops;
    active.profile = profile;
    active.n_ops = 0;
    timed = *be->ops; /* memory, capture and the rest pass through untimed */
    timed.embedding = embedding_timed;
    timed.rmsnorm = rmsnorm_timed;
    timed.matmul = matmul_timed;
    timed.rope = rope_timed;
    timed.attention = attention_timed;
    timed.diff_attention = diff_attention_timed;
    timed.gated_activation = gated_activation_timed;
    timed.kv_store = kv_store_timed;
    timed.argmax = argmax_timed;
    be->ops = &timed;
}

void ci_profile_stop(ci_backend *be) {
    CI_ASSERT(active.real != NULL);
    be->ops = active.real;
    for (int i = 0; i < active.n_ops; i++) {
        active.profile->seconds[active.classes[i]] +=
            be->ops->seconds_between(be, 2 * i, 2 * i + 1);
        active.profile->calls[active.classes[i]]++;
    }
    free(active.classes);
    active.classes = NULL;
    active.capacity = active.n_ops = 0;
    active.real = NULL;
    active.profile = NULL;
}
