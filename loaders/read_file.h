#ifndef CINFER_READ_FILE_H
#define CINFER_READ_FILE_H

#include <stddef.h>

#include "../include/cinfer.h"

/* Reads a whole small file (JSON) into a NUL-terminated buffer the caller frees. Files larger
 * than max_bytes are refused with a message: they are not what the caller expects. */
cinfer_status ci_read_file(const char *path, size_t max_bytes, char **text, size_t *length);

#endif
