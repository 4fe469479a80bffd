#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ERROR_MESSAGE_CAPACITY = 2048 };

static _Thread_local char error_message[ERROR_MESSAGE_CAPACITY];
static _Thread_local char error_location[256];

cinfer_status ci_fail_at(const char *file, int line, cinfer_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, args);
    va_end(args);
    snprintf(error_location, sizeof error_location, "%s:%d", file, line);
    return status;
}

void ci_error_prefix(const char *fmt, ...) {
    char prefix[ERROR_MESSAGE_CAPACITY];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    char joined[ERROR_MESSAGE_CAPACITY];
    /* a message too long for the buffer is cut, not lost */
    if (snprintf(joined, sizeof joined, "%s%s", prefix, error_message) >= 0)
        memcpy(error_message, joined, sizeof error_message);
}

void ci_error_clear(void) {
    error_message[0] = '\0';
    error_location[0] = '\0';
}

const char *cinfer_last_error(void) { return error_message; }
const char *cinfer_last_error_location(void) { return error_location; }

void ci_assert_fail(const char *file, int line, const char *condition) {
    fprintf(stderr, "cinfer: internal error at %s:%d: assertion '%s' failed\n", file, line,
            condition);
    abort();
}
