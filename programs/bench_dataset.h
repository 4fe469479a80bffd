/* The JSONL dataset of `cinfer bench --dataset FILE.jsonl` (programs/bench_dataset.c): one
 * request per line, {"prompt_len": N, "output_len": M} or {"prompt_tokens": [ids...],
 * "output_len": M}; blank lines are skipped. Parsing prints nothing and never exits: a refusal
 * is a message for the caller to print, so tests/fuzz/fuzz_bench_dataset.c can take it alone. */
#ifndef CINFER_BENCH_DATASET_H
#define CINFER_BENCH_DATASET_H

#include <stddef.h>
#include <stdint.h>

/* prompt_len and output_len at most: far past any model's context, and well inside an int */
enum { BENCH_DATASET_MAX_LEN = 1 << 30 };

typedef struct bench_dataset_request {
    int n_prompt, n_output; /* each in [1, BENCH_DATASET_MAX_LEN] */
    int64_t given_at;       /* prompt_tokens: where they start in the dataset's given; else -1 */
    int line;               /* of the file, from 1 */
} bench_dataset_request;

typedef struct bench_dataset {
    bench_dataset_request *requests; /* in the order of their lines */
    int n;
    int32_t *given; /* prompt_tokens of every line that gave them, concatenated; each >= 0 */
    int64_t n_given;
} bench_dataset;

/* The requests of a JSONL text of size bytes (no terminating NUL needed; path is for messages),
 * every line checked, up to max_requests of them (0: all). 0, else -1 with the reason in err
 * (naming path, the line and the field, and what was expected) and d freed. */
int bench_dataset_parse(const char *path, const char *text, size_t size, int max_requests,
                        bench_dataset *d, char *err, size_t err_size);

void bench_dataset_free(bench_dataset *d);

#endif
