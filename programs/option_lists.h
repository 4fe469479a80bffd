/* Option values as cinfer bench, bench_attention and bench_matmul take them: comma-separated
 * lists ("-p 64,512", "--attn eager,flash"), single numbers, and the output format; one parser
 * each, shared by the three programs. */
#ifndef CINFER_BENCH_OPTION_LISTS_H
#define CINFER_BENCH_OPTION_LISTS_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

/* "bf16,fp16" -> chosen[i] = 1 for each name given; names[] ends with NULL (and, where chosen is
 * indexed by an enum, follows its order). 0, else -1. */
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

#endif
