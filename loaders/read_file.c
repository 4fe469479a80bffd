#include "read_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../engine/error.h"

cinfer_status ci_read_file(const char *path, size_t max_bytes, char **text, size_t *length) {
    *text = NULL;
    *length = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return CI_FAIL(CINFER_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fileno(f), &info) != 0 || !S_ISREG(info.st_mode)) {
        fclose(f);
        return CI_FAIL(CINFER_ERR_IO, "%s: not a regular file", path);
    }
    if ((size_t)info.st_size > max_bytes) {
        fclose(f);
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %lld bytes, more than the %zu this file may have",
                       path, (long long)info.st_size, max_bytes);
    }
    size_t size = (size_t)info.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory reading %s", path);
    }
    size_t got = fread(buf, 1, size, f);
    int failed = ferror(f) || got != size;
    fclose(f);
    if (failed) {
        free(buf);
        return CI_FAIL(CINFER_ERR_IO, "%s: read error", path);
    }
    buf[size] = '\0';
    *text = buf;
    *length = size;
    return CINFER_OK;
}
