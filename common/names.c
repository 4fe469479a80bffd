/* The one table of names for each public enum: run dtypes (with the aliases people type),
 * attention kinds and backends. Every program, message and bench row spells them from here, so
 * that `cinfer run`, `cinfer bench` and `cinfer compare` accept the same words. */
#include <string.h>

#include "../include/cinfer.h"

typedef struct name_entry {
    const char *name; /* the first entry of a value is its canonical spelling */
    int value;
} name_entry;

static const name_entry dtype_names[] = {
    {"f32", CINFER_DTYPE_F32},   {"fp32", CINFER_DTYPE_F32},      {"float32", CINFER_DTYPE_F32},
    {"bf16", CINFER_DTYPE_BF16}, {"bfloat16", CINFER_DTYPE_BF16}, {"fp16", CINFER_DTYPE_F16},
    {"f16", CINFER_DTYPE_F16},   {"float16", CINFER_DTYPE_F16},   {"half", CINFER_DTYPE_F16},
};
static const name_entry attention_names[] = {
    {"auto", CINFER_ATTENTION_AUTO},
    {"eager", CINFER_ATTENTION_EAGER},
    {"sdpa", CINFER_ATTENTION_SDPA},
    {"flash", CINFER_ATTENTION_FLASH},
};
static const name_entry backend_names[] = {
    {"cpu", CINFER_BACKEND_CPU},
    {"cuda", CINFER_BACKEND_CUDA},
};

#define COUNT(table) (sizeof table / sizeof table[0])

static const char *name_of(const name_entry *table, size_t n, int value) {
    for (size_t i = 0; i < n; i++)
        if (table[i].value == value) return table[i].name;
    return "unknown";
}

static int value_of(const name_entry *table, size_t n, const char *name, int *value) {
    for (size_t i = 0; name && i < n; i++)
        if (strcmp(table[i].name, name) == 0) {
            *value = table[i].value;
            return 0;
        }
    return -1;
}

const char *cinfer_dtype_name(cinfer_dtype dtype) {
    return name_of(dtype_names, COUNT(dtype_names), (int)dtype);
}
int cinfer_dtype_from_name(const char *name, cinfer_dtype *out) {
    int value;
    if (value_of(dtype_names, COUNT(dtype_names), name, &value)) return -1;
    *out = (cinfer_dtype)value;
    return 0;
}

const char *cinfer_attention_name(cinfer_attention kind) {
    return name_of(attention_names, COUNT(attention_names), (int)kind);
}
int cinfer_attention_from_name(const char *name, cinfer_attention *out) {
    int value;
    if (value_of(attention_names, COUNT(attention_names), name, &value)) return -1;
    *out = (cinfer_attention)value;
    return 0;
}

const char *cinfer_backend_name(cinfer_backend backend) {
    return name_of(backend_names, COUNT(backend_names), (int)backend);
}
int cinfer_backend_from_name(const char *name, cinfer_backend *out) {
    int value;
    if (value_of(backend_names, COUNT(backend_names), name, &value)) return -1;
    *out = (cinfer_backend)value;
    return 0;
}
