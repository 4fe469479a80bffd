/* Device timing of a session's work, through the public API (cinfer.h): marks on the session's
 * queue, the op-class profile (kernels/profile.c), and the greedy decode step whose argmax runs on
 * the device, which decode benchmarks time. */
#include <math.h>

#include "../common/error.h"
#include "../kernels/profile.h"
#include "session.h"
#include "timing.h"

_Static_assert(CINFER_MAX_SEQS == CI_MAX_BATCH, "cinfer.h's sequence limit is the backends' rows");

/* kernels/profile.c times one backend at a time: the session it runs on, and what it adds up. */
static struct {
    const cinfer_session *session;
    cinfer_profile profile;
} active;

cinfer_status ci_check_not_profiling(const cinfer_session *session, const char *call) {
    if (!active.session || active.session != session) return CINFER_OK;
    return CI_FAIL(CINFER_ERR_ARGUMENT,
                   "%s: a profile runs on this session (cinfer_session_profile_start): "
                   "stop it first",
                   call);
}

cinfer_status cinfer_session_decode_greedy(cinfer_session *session, const int32_t *tokens,
                                           int32_t *next) {
    CI_TRY(ci_check_not_profiling(session, "cinfer_session_decode_greedy"));
    return ci_session_greedy_step(session, tokens, next);
}

cinfer_status cinfer_session_mark(cinfer_session *session, int slot) {
    ci_error_clear();
    if (slot < 0 || slot >= CINFER_MAX_MARKS)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "timing mark %d: slots are 0 to %d", slot,
                       CINFER_MAX_MARKS - 1);
    CI_TRY(ci_check_not_profiling(session, "cinfer_session_mark"));
    session->be->ops->mark(session->be, slot);
    return CINFER_OK;
}

double cinfer_session_seconds_between(cinfer_session *session, int from, int to) {
    if (from < 0 || from >= CINFER_MAX_MARKS || to < 0 || to >= CINFER_MAX_MARKS) return NAN;
    return session->be->ops->seconds_between(session->be, from, to);
}

cinfer_status cinfer_session_profile_start(cinfer_session *session) {
    ci_error_clear();
    if (active.session)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "cinfer_session_profile_start: a profile already runs%s (one at a time)",
                       active.session == session ? " on this session" : "");
    active.session = session;
    ci_profile_start(session->be, &active.profile);
    return CINFER_OK;
}

cinfer_status cinfer_session_profile_stop(cinfer_session *session, cinfer_profile *profile) {
    ci_error_clear();
    if (!session || active.session != session)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "cinfer_session_profile_stop: no profile runs on this session");
    ci_profile_stop(session->be);
    active.session = NULL;
    *profile = active.profile;
    return CINFER_OK;
}
