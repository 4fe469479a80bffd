/* Op timing by wrapping a backend's op table: each wrapper waits for the device, times the real
 * op to completion and charges it to its class. */

#include "clock.h"
#include "error.h"
#include "profile.h"

static struct {
    const ci_backend_ops *real; /* the backend's own table while a profile runs */
    ci_op_profile *profile;
} active;

static void synchronize(ci_backend *be) {
    if (active.real->synchronize) active.real->synchronize(be);
}

/* Runs `call` (a statement using active.real) between two waits and charges its time. */
#define TIMED(be, op_class, call)                                                                  \
    do {                                                                                           \
        synchronize(be);                                                                           \
        double start_ = ci_now_seconds();                                                          \
        call;                                                                                      \
        synchronize(be);                                                                           \
        active.profile->seconds[op_class] += ci_now_seconds() - start_;                            \
        active.profile->calls[op_class]++;                                                         \
    } while (0)

static void embedding_timed(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                            const ci_tensor *table) {
    TIMED(be, CI_OP_OTHER, active.real->embedding(be, out, tokens, table));
}
static void rmsnorm_timed(ci_backend *be, ci_tensor *out, const ci_tensor *x,
                          const ci_tensor *weight, float eps) {
    TIMED(be, CI_OP_NORM, active.real->rmsnorm(be, out, x, weight, eps));
}
static void matmul_timed(ci_backend *be, const ci_tensor *x, const ci_projection *projections,
                         int n, int accumulate) {
    TIMED(be, CI_OP_MATMUL, active.real->matmul(be, x, projections, n, accumulate));
}
static void rope_timed(ci_backend *be, ci_tensor *q, ci_tensor *k, int pos0,
                       const ci_rope_freqs *freqs) {
    TIMED(be, CI_OP_OTHER, active.real->rope(be, q, k, pos0, freqs));
}
static void attention_timed(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                            const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0) {
    TIMED(be, CI_OP_ATTENTION, active.real->attention(be, out, q, k_cache, v_cache, pos0));
}
static void diff_attention_timed(ci_backend *be, ci_tensor *out, const ci_tensor *q,
                                 const ci_tensor *k_cache, const ci_tensor *v_cache, int pos0,
                                 float lambda, float lambda_init, float eps) {
    TIMED(
        be, CI_OP_ATTENTION,
        active.real->diff_attention(be, out, q, k_cache, v_cache, pos0, lambda, lambda_init, eps));
}
static void gated_activation_timed(ci_backend *be, ci_tensor *out, const ci_tensor *gate,
                                   const ci_tensor *up, ci_activation act) {
    TIMED(be, CI_OP_OTHER, active.real->gated_activation(be, out, gate, up, act));
}
static void kv_store_timed(ci_backend *be, ci_tensor *k_cache, ci_tensor *v_cache,
                           const ci_tensor *k_new, const ci_tensor *v_new, int pos0) {
    TIMED(be, CI_OP_OTHER, active.real->kv_store(be, k_cache, v_cache, k_new, v_new, pos0));
}
static void argmax_timed(ci_backend *be, ci_tensor *ids, const ci_tensor *logits) {
    TIMED(be, CI_OP_OTHER, active.real->argmax(be, ids, logits));
}

const char *ci_op_class_name(ci_op_class op_class) {
    static const char *const names[CI_OP_CLASS_COUNT] = {"attention", "matmul", "norm", "other"};
    return op_class < CI_OP_CLASS_COUNT ? names[op_class] : "?";
}

void ci_profile_start(ci_backend *be, ci_op_profile *profile) {
    CI_ASSERT(active.real == NULL); /* one profile at a time */
    static ci_backend_ops timed;
    *profile = (ci_op_profile){{0}, {0}};
    active.real = be->ops;
    active.profile = profile;
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
    active.real = NULL;
    active.profile = NULL;
}
