/* The one table of names for each public enum: run dtypes (with the aliases people type),
 * attention kinds, backends and the op classes of a profile. Every program, message and bench
 * row spells them from here, so that `cinfer run`, `cinfer bench` and `cinfer compare` accept the
 * same words. */
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

static const name_entry op_class_names[] = {
    {"attention", CINFER_OP_ATTENTION},
    {"matmul", CINFER_OP_MATMUL},
    {"norm", CINFER_OP_NORM},
    {"other", CINFER_OP_OTHER},
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

#define TABLE(table) table, COUNT(table)

/* each enum's pair: the table's canonical name of a value, and the value of any of its names */
const char *cinfer_dtype_name(cinfer_dtype d) { return name_of(TABLE(dtype_names), (int)d); }
int cinfer_dtype_from_name(const char *name, cinfer_dtype *out) {
    int v;
    return value_of(TABLE(dtype_names), name, &v) ? -1 : (*out = (cinfer_dtype)v, 0);
}
const char *cinfer_attention_name(cinfer_attention a) {
    return name_of(TABLE(attention_names), (int)a);
}
int cinfer_attention_from_name(const char *name, cinfer_attention *out) {
    int v;
    return value_of(TABLE(attention_names), name, &v) ? -1 : (*out = (cinfer_attention)v, 0);
}
const char *cinfer_backend_name(cinfer_backend b) { return name_of(TABLE(backend_names), (int)b); }
int cinfer_backend_from_name(const char *name, cinfer_backend *out) {
    int v;
    return value_of(TABLE(backend_names), name, &v) ? -1 : (*out = (cinfer_backend)v, 0);
}
const char *cinfer_op_class_name(cinfer_op_class c) {
    return name_of(TABLE(op_class_names), (int)c);
}
