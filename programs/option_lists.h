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

/* "prefill,decode" -> chosen[i] = 1 for each name given; names[] ends with NULL. For the public
 * enums, whose names cinfer.h's tables hold, use parse_enum_list. 0, else -1. */
static inline int parse_name_list(const char *text, const char *const *names, int *chosen) {
    int n_names = 0;
    while (names[n_names]) chosen[n_names++] = 0;
    for (const char *p = text;;) {
        size_t length = strcspn(p, ",");
        int found = 0;
        for (int i = 0; i < n_names && !found; i++)
            if (strlen(names[i]) == length && strncmp(p, names[i], length) == 0)
                chosen[i] = found = 1;
        if (!found) return -1;
        if (p[length] == '\0') return 0;
        p += length + 1;
    }
}

/* A public enum's value of a name, through its table in cinfer.h (aliases included); -1 for a
 * name it does not know. */
typedef int (*enum_of_name)(const char *name);
static inline int dtype_by_name(const char *name) {
    cinfer_dtype value;
    return cinfer_dtype_from_name(name, &value) ? -1 : (int)value;
}
static inline int attention_by_name(const char *name) {
    cinfer_attention value;
    return cinfer_attention_from_name(name, &value) ? -1 : (int)value;
}
static inline int backend_by_name(const char *name) {
    cinfer_backend value;
    return cinfer_backend_from_name(name, &value) ? -1 : (int)value;
}

/* "bf16,f16" -> chosen[v] = 1 for the value v of each name given (dtype_by_name and the like);
 * chosen has n_values entries, indexed by the enum. 0, else -1. */
static inline int parse_enum_list(const char *text, enum_of_name value_of, int n_values,
                                  int *chosen) {
    for (int i = 0; i < n_values; i++) chosen[i] = 0;
    for (const char *p = text;;) {
        const size_t length = strcspn(p, ",");
        char name[32];
        if (length >= sizeof name) return -1;
        memcpy(name, p, length);
        name[length] = '\0';
        const int value = value_of(name);
        if (value < 0 || value >= n_values) return -1;
        chosen[value] = 1;
        if (p[length] == '\0') return 0;
        p += length + 1;
    }
}

#endif
