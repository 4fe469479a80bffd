/* Picking the next token from a row of logits, as transformers' logits processors do:
 * temperature, then top-k, then top-p (nucleus), then a draw from what is left. Greedy when the
 * temperature is 0. The random numbers come from xoshiro256** seeded through splitmix64, so a seed
 * gives the same tokens on every machine. */
#include <math.h>
#include <stdlib.h>

#include "../common/splitmix.h"
#include "../common/error.h"

struct cinfer_sampler {
    cinfer_sampling params;
    int vocab_size;
    uint64_t rng[4];
    int32_t *order; /* [V] token ids sorted by logit */
    float *scaled;  /* [V] logits / temperature */
    double *probs;  /* [V] */
};

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro256ss(uint64_t s[4]) {
    const uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(uint64_t s[4]) { return (double)(xoshiro256ss(s) >> 11) * 0x1.0p-53; }

cinfer_status cinfer_sampler_create(const cinfer_sampling *params, int vocab_size,
                                    cinfer_sampler **out) {
    *out = NULL;
    if (vocab_size <= 0) return CI_FAIL(CINFER_ERR_ARGUMENT, "vocab_size must be positive");
    if (!(params->temperature >= 0.0f) || !isfinite(params->temperature))
        return CI_FAIL(CINFER_ERR_ARGUMENT, "temperature must be a finite number >= 0, got %g",
                       (double)params->temperature);
    if (!(params->top_p >= 0.0f))
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "top_p must be >= 0 (0 and values >= 1 turn it off), got %g",
                       (double)params->top_p);
    if (params->top_k < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "top_k must be >= 0 (0 turns it off), got %d",
                       params->top_k);
    cinfer_sampler *s = calloc(1, sizeof *s);
    CI_CHECK_ALLOC(s, sizeof *s);
    s->params = *params;
    s->vocab_size = vocab_size;
    uint64_t seed = params->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = ci_splitmix64(&seed);
    s->order = malloc((size_t)vocab_size * sizeof *s->order);
    s->scaled = malloc((size_t)vocab_size * sizeof *s->scaled);
    s->probs = malloc((size_t)vocab_size * sizeof *s->probs);
    if (!s->order || !s->scaled || !s->probs) {
        cinfer_sampler_free(s);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory creating a sampler");
    }
    *out = s;
    return CINFER_OK;
}

void cinfer_sampler_free(cinfer_sampler *s) {
    if (!s) return;
    free(s->order);
    free(s->scaled);
    free(s->probs);
    free(s);
}

/* First index of the largest logit, as torch.argmax on rows without NaN; unlike torch, which
 * returns the first NaN, a NaN never wins here (docs/MODEL_MATH.md, section 6). */
static int32_t argmax(const float *logits, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best] || isnan(logits[best])) best = i;
    return best;
}

/* qsort has no context argument in C11: the key is per thread, so samplers on different threads
 * do not meet. */
static _Thread_local const float *sort_key;
/* Descending by value, ties by index, so that the order is the same everywhere. */
static int by_value_descending(const void *a, const void *b) {
    const int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_key[i] != sort_key[j]) return sort_key[i] > sort_key[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

int32_t cinfer_sampler_sample(cinfer_sampler *s, const float *logits) {
    const int V = s->vocab_size;
    if (s->params.temperature <= 0.0f) return argmax(logits, V);

    for (int i = 0; i < V; i++) {
        s->scaled[i] = logits[i] / s->params.temperature;
        if (isnan(s->scaled[i])) s->scaled[i] = -INFINITY;
        s->order[i] = i;
    }
    sort_key = s->scaled;
    qsort(s->order, (size_t)V, sizeof *s->order, by_value_descending);

    /* top-k keeps every token that scores at least the k-th best, ties included (as
     * transformers' TopKLogitsWarper). */
    int kept = V;
    if (s->params.top_k > 0 && s->params.top_k < V) {
        const float threshold = s->scaled[s->order[s->params.top_k - 1]];
        kept = s->params.top_k;
        while (kept < V && s->scaled[s->order[kept]] >= threshold) kept++;
    }
    /* softmax over the kept tokens */
    const double max_logit = s->scaled[s->order[0]];
    double total = 0.0;
    for (int r = 0; r < kept; r++) {
        s->probs[r] = exp((double)s->scaled[s->order[r]] - max_logit);
        total += s->probs[r];
    }
    /* top-p: drop the least likely tokens while their combined mass stays within 1 − top_p
     * (TopPLogitsWarper's rule: it sums from the least likely end); the most likely is kept. */
    if (s->params.top_p > 0.0f && s->params.top_p < 1.0f) {
        double tail = 0.0;
        const double budget = (1.0 - (double)s->params.top_p) * total;
        while (kept > 1 && tail + s->probs[kept - 1] <= budget) {
            tail += s->probs[kept - 1];
            kept--;
        }
        total -= tail;
    }
    double u = uniform01(s->rng) * total;
    for (int r = 0; r < kept; r++) {
        u -= s->probs[r];
        if (u < 0.0) return s->order[r];
    }
    return s->order[kept - 1]; /* rounding left a sliver of u */
}
