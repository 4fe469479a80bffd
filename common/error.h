/* Error reporting: one thread-local message per thread, set where the problem is found.
 *
 * Every function that can fail returns a cinfer_status and, before returning an error, sets the
 * message with CI_FAIL(status, fmt, ...). The message is for users: it names the file, the field
 * and what was expected. The source location is kept beside it for bug reports. */
#ifndef CINFER_ERROR_H
#define CINFER_ERROR_H

#include "../include/cinfer.h"

#if defined(__GNUC__)
#define CI_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define CI_PRINTF(fmt_index, first_arg)
#endif

/* Sets this thread's error message and returns status, so that `return CI_FAIL(...)` reads well. */
cinfer_status ci_fail_at(const char *file, int line, cinfer_status status, const char *fmt, ...)
    CI_PRINTF(4, 5);
#define CI_FAIL(status, ...) ci_fail_at(__FILE__, __LINE__, (status), __VA_ARGS__)

/* Prefixes the current message with more context ("model.safetensors: " + message). */
void ci_error_prefix(const char *fmt, ...) CI_PRINTF(1, 2);
void ci_error_clear(void);

/* Propagates a failing status from a call whose message is already set. */
#define CI_TRY(expr)                                                                               \
    do {                                                                                           \
        cinfer_status ci_try_status_ = (expr);                                                     \
        if (ci_try_status_ != CINFER_OK) return ci_try_status_;                                    \
    } while (0)

/* For allocations: a NULL result becomes CINFER_ERR_MEMORY with the size that failed. */
#define CI_CHECK_ALLOC(ptr, bytes)                                                                 \
    do {                                                                                           \
        if ((ptr) == NULL)                                                                         \
            return CI_FAIL(CINFER_ERR_MEMORY, "out of memory allocating %zu bytes for %s",         \
                           (size_t)(bytes), #ptr);                                                 \
    } while (0)

/* An internal invariant that no input can break: print where and abort. Not for bad input. */
#define CI_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) ci_assert_fail(__FILE__, __LINE__, #cond);                                    \
    } while (0)
/* [[noreturn]] when the CUDA sources (C++) include this header */
#ifdef __cplusplus
[[noreturn]]
#else
_Noreturn
#endif
void ci_assert_fail(const char *file, int line, const char *condition);

#endif
