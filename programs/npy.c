#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"

/* numpy aligns the data to 64 bytes: magic (6) + version (2) + header length (2) + header. */
enum { NPY_ALIGNMENT = 64, NPY_PREAMBLE = 10 };

cinfer_status ci_write_npy_f32(const char *path, const float *data, int64_t rows, int64_t cols) {
    char header[256];
    int len = snprintf(header, sizeof header,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                       (long long)rows, (long long)cols);
    int padded = ((NPY_PREAMBLE + len + 1 + NPY_ALIGNMENT - 1) / NPY_ALIGNMENT) * NPY_ALIGNMENT -
                 NPY_PREAMBLE;
    memset(header + len, ' ', (size_t)(padded - len - 1));
    header[padded - 1] = '\n';

    size_t tmp_size = strlen(path) + 32;
    char *tmp = malloc(tmp_size);
    CI_CHECK_ALLOC(tmp, tmp_size);
    snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        cinfer_status status =
            CI_FAIL(CINFER_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return status;
    }
    const unsigned char preamble[NPY_PREAMBLE] = {0x93,
                                                  'N',
                                                  'U',
                                                  'M',
                                                  'P',
                                                  'Y',
                                                  1,
                                                  0,
                                                  (unsigned char)(padded & 0xff),
                                                  (unsigned char)(padded >> 8)};
    size_t n = (size_t)rows * (size_t)cols;
    int ok = fwrite(preamble, 1, sizeof preamble, f) == sizeof preamble &&
             fwrite(header, 1, (size_t)padded, f) == (size_t)padded &&
             fwrite(data, sizeof *data, n, f) == n;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    if (ok && rename(tmp, path) != 0) {
        err = errno;
        ok = 0;
    }
    cinfer_status status = CINFER_OK;
    if (!ok) {
        unlink(tmp);
        status = CI_FAIL(CINFER_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    free(tmp);
    return status;
}
