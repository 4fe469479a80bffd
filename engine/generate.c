/* Generation: feed the prompt, then sample one token at a time through the KV cache until
 * max_new_tokens, an eos token, the end of the context, or the caller says stop. */
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/error.h"
#include "session.h"
#include "timing.h"

static int ends_generation(const ci_config *c, const cinfer_generate_params *params,
                           int32_t token) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == token) return 1;
    for (int i = 0; i < params->n_stop_tokens; i++)
        if (params->stop_tokens[i] == token) return 1;
    return 0;
}

cinfer_status cinfer_generate(cinfer_session *s, const int32_t *prompt, int n_prompt,
                              const cinfer_generate_params *params, cinfer_token_callback on_token,
                              void *user, float *prompt_logits, cinfer_generate_stats *stats) {
    ci_error_clear();
    CI_TRY(ci_check_not_profiling(s, "cinfer_generate"));
    const ci_config *c = s->model->config;
    cinfer_generate_stats local = {0};
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (s->n_seqs != 1)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "cinfer_generate decodes one sequence; this session holds %d (drive a "
                       "batched session with cinfer_session_forward_batch)",
                       s->n_seqs);
    if (n_prompt <= 0) return CI_FAIL(CINFER_ERR_ARGUMENT, "the prompt is empty");
    if (params->n_stop_tokens < 0 || (params->n_stop_tokens > 0 && !params->stop_tokens))
        return CI_FAIL(CINFER_ERR_ARGUMENT, "stop_tokens is NULL but n_stop_tokens is %d",
                       params->n_stop_tokens);
    if (params->max_new_tokens < 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "max_new_tokens must be >= 0, got %d",
                       params->max_new_tokens);
    if (n_prompt > s->n_ctx - s->n_past)
        return CI_FAIL(CINFER_ERR_CONTEXT_FULL,
                       "the prompt has %d tokens but the context holds %d (%d already used)",
                       n_prompt, s->n_ctx, s->n_past);
    cinfer_sampler *sampler;
    CI_TRY(cinfer_sampler_create(&params->sampling, c->vocab_size, &sampler));
    const size_t V = (size_t)c->vocab_size;
    float *logits = malloc(V * sizeof *logits);
    if (!logits) {
        cinfer_sampler_free(sampler);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    }

    stats->n_prompt = n_prompt;
    double t0 = ci_now_seconds();
    cinfer_status status;
    if (prompt_logits) {
        status = cinfer_session_forward(s, prompt, n_prompt, CINFER_LOGITS_ALL, prompt_logits);
        if (status == CINFER_OK)
            memcpy(logits, prompt_logits + (size_t)(n_prompt - 1) * V, V * sizeof *logits);
    } else {
        status = cinfer_session_forward(s, prompt, n_prompt, CINFER_LOGITS_LAST, logits);
    }
    stats->prefill_seconds = ci_now_seconds() - t0;
    stats->stop_reason = CINFER_STOP_MAX_TOKENS;

    /* On a GPU, greedy decoding keeps the logits on the device (ci_session_greedy_step); the CPU
     * reference keeps its own path, with the logits on the host. */
    const int greedy_on_device =
        params->sampling.temperature <= 0.0f && s->model->options.backend != CINFER_BACKEND_CPU;
    int32_t picked = -1; /* the token the device picked in the last step, if it did */
    double t_decode = ci_now_seconds();
    for (int i = 0; status == CINFER_OK && i < params->max_new_tokens; i++) {
        const int32_t token = picked >= 0 ? picked : cinfer_sampler_sample(sampler, logits);
        stats->n_generated++;
        if (i == 0) t_decode = ci_now_seconds();
        if (on_token && on_token(user, token) != 0) {
            stats->stop_reason = CINFER_STOP_CALLBACK;
            break;
        }
        if (!params->ignore_eos && ends_generation(c, params, token)) {
            stats->stop_reason = CINFER_STOP_EOS;
            break;
        }
        if (i + 1 == params->max_new_tokens) break; /* its logits would go unused */
        if (s->n_past == s->n_ctx) {
            stats->stop_reason = CINFER_STOP_CONTEXT;
            break;
        }
        if (greedy_on_device) {
            /* the next token is picked on the device; its id is all that comes back */
            status = ci_session_greedy_step(s, &token, &picked);
        } else {
            status = cinfer_session_forward(s, &token, 1, CINFER_LOGITS_LAST, logits);
        }
    }
    stats->decode_seconds = stats->n_generated > 1 ? ci_now_seconds() - t_decode : 0.0;
    free(logits);
    cinfer_sampler_free(sampler);
    return status;
}
