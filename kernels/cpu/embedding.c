/* out[t] = table[tokens[t]]: the embedding lookup, widened to F32. */
#include "../../common/error.h"
#include "ops_cpu.h"

void embedding_cpu(ci_backend *be, ci_tensor *out, const ci_tensor *tokens,
                   const ci_tensor *table) {
    (void)be;
    const int64_t n_tokens = ci_tensor_numel(tokens), vocab = table->shape[0];
    CI_ASSERT(tokens->dtype == CI_I32 && out->dtype == CI_F32);
    CI_ASSERT(ci_tensor_n_rows(out) == n_tokens && ci_tensor_row_size(out) == table->shape[1]);
    const int32_t *ids = tokens->data;
    for (int64_t t = 0; t < n_tokens; t++) {
        CI_ASSERT(ids[t] >= 0 && ids[t] < vocab); /* checked against the vocab by the session */
        ci_row_to_f32(table, ids[t], (float *)out->data + t * table->shape[1]);
    }
}
