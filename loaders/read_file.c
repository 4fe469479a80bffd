#include "read_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/error.h"

cinfer_status ci_read_file(const char *path, size_t max_bytes, char **text, size_t *length) {
    *text = NULL;
    *length = 0;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; the check below then
     * refuses it. Regular files ignore the flag. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return CI_FAIL(CINFER_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        return CI_FAIL(CINFER_ERR_IO, "%s: not a regular file", path);
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int err = errno;
        close(fd);
        return CI_FAIL(CINFER_ERR_IO, "%s: cannot open: %s", path, strerror(err));
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
