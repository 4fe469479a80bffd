/* safetensors reader: maps the file read-only and validates its header completely before any
 * tensor is used, so that a malformed file is an error message, never a wild read.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON, then the data buffer. Each JSON
 * entry is {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]} with offsets relative
 * to the data buffer; an optional "__metadata__" maps strings to strings. */
#ifndef CINFER_SAFETENSORS_H
#define CINFER_SAFETENSORS_H

#include <stdint.h>

#include "../include/cinfer.h"
#include "../common/tensor.h"

/* Header lengths above this are rejected before anything is allocated (as the reference reader
 * does): a corrupt length must not make us parse gigabytes. */
#define ST_MAX_HEADER_BYTES 100000000ull
/* Tensors in safetensors may have any rank; nothing we load has more than this. */
enum { ST_MAX_DIMS = 8 };

typedef struct st_file st_file;

typedef struct st_tensor {
    const char *name;
    ci_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* byte range in the data buffer, end exclusive */
    const void *data;    /* points into the mapping */
    const st_file *file; /* the file that holds it, for messages */
} st_tensor;

struct st_file {
    char *path;    /* as given to st_open, for messages */
    void *mapping; /* whole file, read-only; NULL for an in-memory buffer */
    size_t mapping_size;
    const uint8_t *data; /* start of the data buffer */
    uint64_t data_size;
    st_tensor *tensors; /* sorted by name */
    int n_tensors;
    char **metadata; /* key, value, key, value, ... */
    int n_metadata;
};

/* Opens and validates path. On error *out is NULL and the message names the file. */
cinfer_status st_open(const char *path, st_file **out);
/* Validates a file already in memory (the bytes must outlive the result); name is for messages. */
cinfer_status st_parse(const char *name, const uint8_t *bytes, size_t size, st_file **out);
void st_close(st_file *file);

/* NULL when the file has no tensor of that name. */
const st_tensor *st_find(const st_file *file, const char *name);
/* NULL when the __metadata__ has no such key. */
const char *st_metadata(const st_file *file, const char *key);

int64_t st_tensor_numel(const st_tensor *tensor);

#endif
