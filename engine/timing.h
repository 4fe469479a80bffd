/* The public calls that must not run while a profile times a session's ops (engine/timing.c):
 * those that may record a decode step as a graph, whose ops cannot be timed one by one. */
#ifndef CINFER_TIMING_H
#define CINFER_TIMING_H

#include "../include/cinfer.h"

/* CINFER_OK when no profile runs on session; else CINFER_ERR_ARGUMENT, naming `call`. */
cinfer_status ci_check_not_profiling(const cinfer_session *session, const char *call);

#endif
