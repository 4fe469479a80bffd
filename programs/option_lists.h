/* Option values as cinfer bench, bench_attention and bench_matmul take them: comma-separated
 * lists ("-p 64,512", "--attn eager,flash"), single numbers, and the output format; one parser
 * each, shared by the three programs. */
#ifndef CINFER_BENCH_OPTION_LISTS_H
#define CINFER_BENCH_OPTION_LISTS_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cinfer.h"

enum { MAX_LIST = 16 };

typedef struct int_list {
    int n;
    int values[MAX_LIST];
} int_list;

/* "512,4096" -> {512, 4096}; every value in [minimum, maximum]. 0, else -1. */
static inline int parse_int_list(const char *text, int minimum, int maximum, int_list *out) {
    out->n = 0;
    const char *p = text;
    while (1) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < minimum || v > maximum || out->n == MAX_LIST) return -1;
        out->values[out->n++] = (int)v;
        if (*end == '\0') return 0;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

/* One integer in [minimum, maximum]. 0, else -1. */
static inline int parse_int(const char *text, int minimum, int maximum, int *out) {
    int_list list;
    if (parse_int_list(text, minimum, maximum, &list) || list.n != 1) return -1;
    *out = list.values[0];
    return 0;
}

typedef enum output_format { OUTPUT_MD, OUTPUT_CSV, OUTPUT_JSON } output_format;

/* "md", "csv" or "json". 0, else -1. */
static inline int parse_output_format(const char *text, output_format *out) {
    static const char *const names[] = {"md", "csv", "json"};
    for (int i = 0; i < 3; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = (output_format)i;
            return 0;
        }
    return -1;
}

/* The value of a name in a table: its position in a NULL-terminated names[] (parse_name_list), or
 * a public enum's value through cinfer.h's name tables (the *_by_name below, table unused); -1
 * for a name the table does not know. */
typedef int (*value_of_name)(const void *table, const char *name);

/* "bf16,f16" -> chosen[v] = 1 for the value v of each name given; chosen has n_values entries.
 * 0, else -1. */
static inline int parse_value_list(const char *text, value_of_name value_of, const void *table,
                                   int n_values, int *chosen) {
    for (int i = 0; i < n_values; i++) chosen[i] = 0;
    for (const char *p = text;;) {
        const size_t length = strcspn(p, ",");
        char name[32];
        if (length >= sizeof name) return -1;
        memcpy(name, p, length);
        name[length] = '\0';
        const int value = value_of(table, name);
        if (value < 0 || value >= n_values) return -1;
        chosen[value] = 1;
        if (p[length] == '\0') return 0;
        p += length + 1;
    }
}

static inline int index_of_name(const void *table, const char *name) {
    const char *const *names = (const char *const *)table;
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}
/* "prefill,decode" -> chosen[i] = 1 for each name given; names[] ends with NULL. For the public
 * enums, whose names cinfer.h's tables hold, use parse_enum_list. 0, else -1. */
static inline int parse_name_list(const char *text, const char *const *names, int *chosen) {
    int n_names = 0;
    while (names[n_names]) n_names++;
    return parse_value_list(text, index_of_name, names, n_names, chosen);
}

static inline int dtype_by_name(const void *table, const char *name) {
    cinfer_dtype value;
    (void)table;
    return cinfer_dtype_from_name(name, &value) ? -1 : (int)value;
}
static inline int attention_by_name(const void *table, const char *name) {
    cinfer_attention value;
    (void)table;
    return cinfer_attention_from_name(name, &value) ? -1 : (int)value;
}
static inline int backend_by_name(const void *table, const char *name) {
    cinfer_backend value;
    (void)table;
    return cinfer_backend_from_name(name, &value) ? -1 : (int)value;
}
/* The same for a public enum of n_values values (dtype_by_name and the like), chosen indexed by
 * the enum. */
static inline int parse_enum_list(const char *text, value_of_name value_of, int n_values,
                                  int *chosen) {
    return parse_value_list(text, value_of, NULL, n_values, chosen);
}

#endif
