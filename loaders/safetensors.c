#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/error.h"
#include "json.h"

/* JSON numbers arrive as doubles: integers above 2^53 cannot be represented exactly, and no real
 * file has offsets that large (8 PiB). */
#define ST_MAX_JSON_INTEGER 9007199254740992.0

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* 0 and *out when item is a non-negative integer JSON number, else -1. */
static int json_to_u64(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > ST_MAX_JSON_INTEGER || v != (double)(uint64_t)v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int compare_by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int compare_by_range(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static cinfer_status parse_metadata(st_file *file, const cJSON *meta) {
    if (!cJSON_IsObject(meta))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: '__metadata__' must be an object of strings",
                       file->path);
    int n = cJSON_GetArraySize(meta);
    file->metadata = calloc((size_t)n * 2 + 1, sizeof(char *));
    CI_CHECK_ALLOC(file->metadata, (size_t)n * 2 * sizeof(char *));
    for (const cJSON *item = meta->child; item; item = item->next) {
        if (!cJSON_IsString(item))
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: '__metadata__' entry '%s' must be a string",
                           file->path, item->string);
        char *key = strdup(item->string), *value = strdup(item->valuestring);
        file->metadata[2 * file->n_metadata] = key;
        file->metadata[2 * file->n_metadata + 1] = value;
        file->n_metadata++;
        if (!key || !value) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory reading metadata");
    }
    return CINFER_OK;
}

/* Fills *tensor from one header entry; the data pointer is set later, once all are validated. */
static cinfer_status parse_entry(st_file *file, const cJSON *entry, st_tensor *tensor) {
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: header entry '%s' must be an object", file->path,
                       name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: tensor '%s' has no string field 'dtype'", file->path,
                       name);
    if (ci_dtype_from_name(dtype->valuestring, &tensor->dtype) != 0)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: tensor '%s' has dtype '%s'; expected one of F32, BF16, F16, F64, I64, "
                       "I32, I16, I8, U8, BOOL",
                       file->path, name, dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: tensor '%s' has no array field 'shape'", file->path,
                       name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: tensor '%s' has %d dimensions; at most %d supported",
                       file->path, name, n_dims, ST_MAX_DIMS);
    tensor->n_dims = n_dims;
    uint64_t numel = 1;
    int overflow = 0;
    int d = 0;
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        uint64_t extent;
        if (json_to_u64(dim, &extent) != 0)
            return CI_FAIL(CINFER_ERR_FORMAT,
                           "%s: tensor '%s': shape[%d] must be a non-negative integer", file->path,
                           name, d);
        tensor->shape[d] = (int64_t)extent;
        overflow |= __builtin_mul_overflow(numel, extent, &numel);
    }
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_to_u64(offsets->child, &tensor->begin) != 0 ||
        json_to_u64(offsets->child->next, &tensor->end) != 0)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: tensor '%s': "
                       "'data_offsets' must be two non-negative integers [begin, end]",
                       file->path, name);
    if (tensor->begin > tensor->end)
        return CI_FAIL(
            CINFER_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
            file->path, name, (unsigned long long)tensor->begin, (unsigned long long)tensor->end);
    uint64_t nbytes;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)ci_dtype_size(tensor->dtype), &nbytes);
    char shape_text[160];
    if (overflow || nbytes != tensor->end - tensor->begin)
        return CI_FAIL(
            CINFER_ERR_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but dtype %s "
            "and shape %s need %s%llu",
            file->path, name, (unsigned long long)tensor->begin, (unsigned long long)tensor->end,
            (unsigned long long)(tensor->end - tensor->begin), ci_dtype_name(tensor->dtype),
            ci_shape_string(tensor->shape, n_dims, shape_text, sizeof shape_text),
            overflow ? "more than 2^64: " : "", (unsigned long long)nbytes);
    if (tensor->end > file->data_size)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run past the data buffer of "
                       "%llu bytes (the file is truncated or the offsets are wrong)",
                       file->path, name, (unsigned long long)tensor->begin,
                       (unsigned long long)tensor->end, (unsigned long long)file->data_size);
    tensor->name = strdup(name);
    if (!tensor->name) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory reading tensor names");
    tensor->file = file;
    return CINFER_OK;
}

/* The tensors must tile the data buffer exactly: no overlap (two tensors sharing bytes), no gap,
 * nothing after the last one. Anything else means the header and the data disagree. */
static cinfer_status check_byte_ranges(st_file *file) {
    st_tensor **by_range = malloc(((size_t)file->n_tensors + 1) * sizeof *by_range);
    CI_CHECK_ALLOC(by_range, (size_t)file->n_tensors * sizeof *by_range);
    for (int i = 0; i < file->n_tensors; i++) by_range[i] = &file->tensors[i];
    qsort(by_range, (size_t)file->n_tensors, sizeof *by_range, compare_by_range);
    uint64_t cursor = 0;
    const st_tensor *previous = NULL;
    cinfer_status status = CINFER_OK;
    for (int i = 0; i < file->n_tensors && status == CINFER_OK; i++) {
        const st_tensor *t = by_range[i];
        if (t->begin < cursor)
            status = CI_FAIL(CINFER_ERR_FORMAT,
                             "%s: tensors '%s' and '%s' overlap (bytes [%llu, %llu) and [%llu, "
                             "%llu) of the data buffer)",
                             file->path, previous->name, t->name,
                             (unsigned long long)previous->begin, (unsigned long long)previous->end,
                             (unsigned long long)t->begin, (unsigned long long)t->end);
        else if (t->begin > cursor)
            status = CI_FAIL(CINFER_ERR_FORMAT,
                             "%s: bytes [%llu, %llu) of the data buffer belong to no tensor "
                             "(before tensor '%s')",
                             file->path, (unsigned long long)cursor, (unsigned long long)t->begin,
                             t->name);
        cursor = t->end;
        previous = t;
    }
    if (status == CINFER_OK && cursor != file->data_size)
        status =
            CI_FAIL(CINFER_ERR_FORMAT,
                    "%s: the data buffer has %llu bytes but its tensors end at byte %llu",
                    file->path, (unsigned long long)file->data_size, (unsigned long long)cursor);
    free(by_range);
    return status;
}

static cinfer_status parse_header(st_file *file, const uint8_t *bytes, size_t size) {
    if (size < 8)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: file is %zu bytes, too short for the 8-byte header length", file->path,
                       size);
    uint64_t header_len = read_le64(bytes);
    if (header_len > ST_MAX_HEADER_BYTES)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: header length %llu exceeds the limit of %llu bytes (not a safetensors "
                       "file, or a corrupt one)",
                       file->path, (unsigned long long)header_len, ST_MAX_HEADER_BYTES);
    if (header_len > size - 8)
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%zu bytes in all): "
                       "the file is truncated",
                       file->path, (unsigned long long)header_len, size);
    const char *json = (const char *)bytes + 8;
    if (header_len < 2 || json[0] != '{')
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: header must be a JSON object starting with '{'",
                       file->path);
    file->data = bytes + 8 + header_len;
    file->data_size = size - 8 - header_len;

    /* Writers pad the header with spaces so that the data buffer is aligned; nothing else may
     * follow the object. */
    char what[4200];
    snprintf(what, sizeof what, "%.4096s: header", file->path);
    cJSON *root;
    CI_TRY(ci_json_parse(what, json, (size_t)header_len, &root));
    cinfer_status status = CINFER_OK;
    if (!cJSON_IsObject(root)) {
        status = CI_FAIL(CINFER_ERR_FORMAT, "%s: header must be a JSON object", file->path);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(root);
    file->tensors = calloc((size_t)n_entries + 1, sizeof *file->tensors);
    if (!file->tensors) {
        status = CI_FAIL(CINFER_ERR_MEMORY, "out of memory reading %s", file->path);
        goto done;
    }
    int n_metadata_objects = 0;
    for (const cJSON *entry = root->child; entry && status == CINFER_OK; entry = entry->next) {
        if (strcmp(entry->string, "__metadata__") == 0) {
            if (n_metadata_objects++ > 0)
                status = CI_FAIL(CINFER_ERR_FORMAT, "%s: '__metadata__' appears twice", file->path);
            else
                status = parse_metadata(file, entry);
            continue;
        }
        status = parse_entry(file, entry, &file->tensors[file->n_tensors]);
        if (status == CINFER_OK) file->n_tensors++;
    }
    if (status != CINFER_OK) goto done;
    qsort(file->tensors, (size_t)file->n_tensors, sizeof *file->tensors, compare_by_name);
    for (int i = 1; i < file->n_tensors; i++) {
        if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0) {
            status = CI_FAIL(CINFER_ERR_FORMAT, "%s: tensor '%s' appears twice in the header",
                             file->path, file->tensors[i].name);
            goto done;
        }
    }
    status = check_byte_ranges(file);
    if (status != CINFER_OK) goto done;
    for (int i = 0; i < file->n_tensors; i++)
        file->tensors[i].data = file->data + file->tensors[i].begin;
done:
    cJSON_Delete(root);
    return status;
}

static st_file *file_new(const char *path) {
    st_file *file = calloc(1, sizeof *file);
    if (!file) return NULL;
    file->path = strdup(path);
    if (!file->path) {
        free(file);
        return NULL;
    }
    return file;
}

cinfer_status st_parse(const char *name, const uint8_t *bytes, size_t size, st_file **out) {
    *out = NULL;
    st_file *file = file_new(name);
    CI_CHECK_ALLOC(file, sizeof *file);
    cinfer_status status = parse_header(file, bytes, size);
    if (status != CINFER_OK) {
        st_close(file);
        return status;
    }
    *out = file;
    return CINFER_OK;
}

cinfer_status st_open(const char *path, st_file **out) {
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; the check below then
     * refuses it. Regular files ignore the flag. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return CI_FAIL(CINFER_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        return CI_FAIL(CINFER_ERR_IO, "%s: not a regular file", path);
    }
    st_file *file = file_new(path);
    if (!file) {
        close(fd);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory opening %s", path);
    }
    size_t size = (size_t)info.st_size;
    if (size > 0) {
        /* MAP_PRIVATE + PROT_READ: the pages are the page cache's; nothing is copied until a
         * backend reads them, and several sessions share them. */
        void *mapping = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (mapping == MAP_FAILED) {
            int err = errno;
            close(fd);
            st_close(file);
            return CI_FAIL(CINFER_ERR_IO, "%s: cannot map %zu bytes: %s", path, size,
                           strerror(err));
        }
        file->mapping = mapping;
        file->mapping_size = size;
    }
    close(fd); /* the mapping keeps the file alive */
    static const uint8_t empty[1];
    cinfer_status status =
        parse_header(file, file->mapping ? (const uint8_t *)file->mapping : empty, size);
    if (status != CINFER_OK) {
        st_close(file);
        return status;
    }
    *out = file;
    return CINFER_OK;
}

void st_close(st_file *file) {
    if (!file) return;
    if (file->mapping) munmap(file->mapping, file->mapping_size);
    for (int i = 0; i < file->n_tensors; i++) free((char *)file->tensors[i].name);
    free(file->tensors);
    for (int i = 0; i < 2 * file->n_metadata; i++) free(file->metadata[i]);
    free(file->metadata);
    free(file->path);
    free(file);
}

const st_tensor *st_find(const st_file *file, const char *name) {
    st_tensor key = {.name = name};
    return bsearch(&key, file->tensors, (size_t)file->n_tensors, sizeof key, compare_by_name);
}

const char *st_metadata(const st_file *file, const char *key) {
    for (int i = 0; i < file->n_metadata; i++)
        if (strcmp(file->metadata[2 * i], key) == 0) return file->metadata[2 * i + 1];
    return NULL;
}

int64_t st_tensor_numel(const st_tensor *tensor) {
    int64_t n = 1;
    for (int i = 0; i < tensor->n_dims; i++) n *= tensor->shape[i];
    return n;
}
