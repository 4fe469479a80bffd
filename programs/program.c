/* What the cinfer commands share (programs/program.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "program.h"

static void (*usage_printer)(FILE *out);

void program_set_usage(void (*print_usage)(FILE *out)) { usage_printer = print_usage; }

int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "cinfer: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n");
    if (usage_printer) usage_printer(stderr);
    return EXIT_USAGE;
}

int fail(void) {
    fprintf(stderr, "cinfer: error: %s\n", cinfer_last_error());
    if (getenv("CINFER_DEBUG"))
        fprintf(stderr, "cinfer: raised at %s\n", cinfer_last_error_location());
    return EXIT_ERROR;
}

/* Strict number parsing: the whole argument must be a number in range. */
int parse_long(const char *text, long minimum, long maximum, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < minimum || v > maximum) return -1;
    *out = v;
    return 0;
}

/* Strict: the whole of text is a number in [minimum, maximum] (NaN is in no range). */
int parse_double(const char *text, double minimum, double maximum, double *out) {
    char *end;
    errno = 0;
    const double v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !(v >= minimum && v <= maximum)) return -1;
    *out = v;
    return 0;
}

/* "4294967296", "4G", "512M", "64K": powers of 1024. */
int parse_bytes(const char *text, int64_t *out) {
    char *end;
    const double v = strtod(text, &end);
    double scale = 1.0;
    if (*end && !end[1]) {
        const char *units = "KMGT";
        const char *unit = strchr(units, *end == 'k' || *end == 'm' || *end == 'g' || *end == 't'
                                             ? *end - 'a' + 'A'
                                             : *end);
        if (!unit || !*unit) return -1;
        scale = pow(1024.0, (double)(unit - units + 1));
        end++;
    }
    if (end == text || *end != '\0' || !(v * scale >= 1.0 && v * scale < 9.2e18)) return -1;
    *out = (int64_t)(v * scale);
    return 0;
}

void format_bytes(double bytes, char *buf, size_t size) {
    const char *unit = "B";
    const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
    for (int i = 0; i < 4 && bytes >= 1024.0; i++) {
        bytes /= 1024.0;
        unit = units[i];
    }
    snprintf(buf, size, "%.2f %s", bytes, unit);
}

/* "1 15 7 42" -> ids; each must be an integer (the vocabulary check comes with the model).
 * A malformed list is misuse. */
int parse_token_list(const char *text, int32_t **ids, int *n_ids) {
    size_t capacity = strlen(text) / 2 + 1;
    int32_t *list = malloc(capacity * sizeof *list);
    int n = 0;
    const char *p = text;
    if (!list) {
        fprintf(stderr, "cinfer: error: out of memory reading --tokens\n");
        return EXIT_ERROR;
    }
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != ',' && *end != '\n')) {
            fprintf(stderr, "cinfer: error: --tokens: '%.*s' at token %d is not an integer id\n",
                    (int)strcspn(p, " \t,\n"), p, n);
            free(list);
            return EXIT_USAGE;
        }
        list[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0) {
        fprintf(stderr, "cinfer: error: --tokens: the prompt is empty\n");
        free(list);
        return EXIT_USAGE;
    }
    *ids = list;
    *n_ids = n;
    return 0;
}

int parse_load_option(const char *flag, const char *value, cinfer_load_options *o) {
    if (strcmp(flag, "--backend") == 0) {
        if (cinfer_backend_from_name(value, &o->backend) != 0)
            return usage_error("--backend needs cpu or cuda, got '%s'", value);
    } else if (strcmp(flag, "--dtype") == 0) {
        if (cinfer_dtype_from_name(value, &o->dtype) != 0)
            return usage_error("--dtype needs f32, bf16 or fp16, got '%s'", value);
    } else if (strcmp(flag, "--attn") == 0) {
        if (cinfer_attention_from_name(value, &o->attention) != 0)
            return usage_error("--attn needs auto, eager, sdpa or flash, got '%s'", value);
    } else if (strcmp(flag, "--device") == 0) {
        long device;
        if (parse_long(value, 0, 1023, &device) != 0)
            return usage_error("--device needs a GPU index >= 0, got '%s'", value);
        o->device = (int)device;
    } else if (strcmp(flag, "--tp") == 0) {
        long tp;
        if (parse_long(value, 1, 256, &tp) != 0)
            return usage_error("--tp needs a number of tensor-parallel ranks in [1, 256], got '%s'",
                               value);
        o->tensor_parallel = (int)tp;
    }
    return 0;
}

void bench_model_label(const char *path, int random_weights, char *buf, size_t size) {
    snprintf(buf, size, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
    if (random_weights && n + 10 < size) strcat(buf, " (random)");
}

void print_csv_field(const char *text) {
    putchar('"');
    for (const char *c = text; *c; c++) {
        if (*c == '"') putchar('"');
        putchar(*c);
    }
    putchar('"');
}

void print_json_rows(cJSON *array) {
    char *json = array ? cJSON_Print(array) : NULL;
    if (json)
        printf("%s\n", json);
    else
        fprintf(stderr, "cinfer bench: error: out of memory printing JSON\n");
    cJSON_free(json);
    cJSON_Delete(array);
}
