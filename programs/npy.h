#ifndef CINFER_NPY_H
#define CINFER_NPY_H

#include <stdint.h>

#include "cinfer.h"

/* Writes a float32 array of shape [rows, cols] as a NumPy .npy file (format 1.0). The file is
 * written under a temporary name and renamed into place, so a failure never leaves a partial
 * file at path. */
cinfer_status ci_write_npy_f32(const char *path, const float *data, int64_t rows, int64_t cols);

#endif
