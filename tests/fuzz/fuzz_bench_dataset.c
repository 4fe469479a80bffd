/* libFuzzer target for the JSONL dataset of `cinfer bench --dataset` (programs/bench_dataset.c).
 * The bytes are a whole file. Whatever they are, bench_dataset_parse must either refuse them
 * with a message that names the file, or return requests that keep the header's promises:
 * lengths in [1, BENCH_DATASET_MAX_LEN], lines in increasing order and within the file, the
 * prompt_tokens of each request where given_at says and non-negative, every given id owned by
 * exactly one request. A limit of n/2 requests must give the first n/2 of them. Never crash,
 * leak, or read past the length it was given.
 *
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_bench_dataset -max_total_time=60 \
 *       -dict=tests/fuzz/bench_dataset.dict /tmp/corpus tests/fuzz/corpus/bench_dataset
 *
 * (built as fuzz_safetensors.c says) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../programs/bench_dataset.h"

static const char file_name[] = "fuzz/dataset.jsonl";

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

static void check_dataset(const bench_dataset *d, int n_lines) {
    REQUIRE(d->n >= 1 && d->requests);
    REQUIRE(d->n_given >= 0 && (d->n_given == 0 || d->given));
    int64_t next_given = 0;
    for (int i = 0; i < d->n; i++) {
        const bench_dataset_request *r = &d->requests[i];
        REQUIRE(r->n_prompt >= 1 && r->n_prompt <= BENCH_DATASET_MAX_LEN);
        REQUIRE(r->n_output >= 1 && r->n_output <= BENCH_DATASET_MAX_LEN);
        REQUIRE(r->line >= 1 && r->line <= n_lines);
        REQUIRE(i == 0 || r->line > d->requests[i - 1].line);
        if (r->given_at >= 0) { /* prompt_tokens: its count is the prompt's length */
            REQUIRE(r->given_at == next_given);
            next_given += r->n_prompt;
            REQUIRE(next_given <= d->n_given);
            for (int k = 0; k < r->n_prompt; k++) REQUIRE(d->given[r->given_at + k] >= 0);
        } else {
            REQUIRE(r->given_at == -1);
        }
    }
    REQUIRE(next_given == d->n_given);
}

static void check_refusal(const char *err, size_t size) {
    REQUIRE(memchr(err, '\0', size) != NULL);
    REQUIRE(err[0] != '\0');
    REQUIRE(strstr(err, file_name) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int n_lines = 1;
    for (size_t i = 0; i < size; i++) n_lines += data[i] == '\n';
    /* as bench_serve.c's buffer, so truncated messages are what it would print */
    char err[512];
    bench_dataset d;
    if (bench_dataset_parse(file_name, (const char *)data, size, 0, &d, err, sizeof err) != 0) {
        check_refusal(err, sizeof err);
        REQUIRE(d.requests == NULL && d.given == NULL && d.n == 0);
        return 0;
    }
    check_dataset(&d, n_lines);
    /* the first half alone: the same requests, the lines past them never read */
    const int half = d.n / 2;
    if (half >= 1) {
        bench_dataset first;
        REQUIRE(bench_dataset_parse(file_name, (const char *)data, size, half, &first, err,
                                    sizeof err) == 0);
        check_dataset(&first, n_lines);
        REQUIRE(first.n == half);
        REQUIRE(memcmp(first.requests, d.requests, (size_t)half * sizeof *d.requests) == 0);
        if (first.n_given > 0)
            REQUIRE(memcmp(first.given, d.given, (size_t)first.n_given * sizeof *d.given) == 0);
        bench_dataset_free(&first);
    }
    bench_dataset_free(&d);
    return 0;
}
