/* Tokenizer throughput: encode and decode a text file with a tokenizer folder, best of N runs.
 *
 *   build/bench_tokenizer DIR TEXT_FILE [runs]
 *
 * Prints one JSON line: bytes, tokens, encode and decode seconds (best run) and MB/s, and the
 * ids' checksum so that a caller can compare them with another tokenizer's. One thread; the
 * tokenizer is loaded once, outside the timing. bench/tokenizer_vs_tokenizers.py runs this and
 * the `tokenizers` library on the same text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/clock.h"
#include "cinfer.h"

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        char *grown = realloc(buf, 2 * cap);
        if (!grown) free(buf);
        buf = grown;
        cap *= 2;
    }
    fclose(f);
    *n = len;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR TEXT_FILE [runs]\n", argv[0]);
        return 2;
    }
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    if (runs < 1) runs = 1;
    size_t n_text;
    char *text = read_all(argv[2], &n_text);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    cinfer_tokenizer *tok;
    if (cinfer_tokenizer_load(argv[1], &tok) != CINFER_OK) {
        fprintf(stderr, "%s\n", cinfer_last_error());
        return 1;
    }
    double best_encode = 1e30, best_decode = 1e30;
    int32_t *ids = NULL;
    int n_ids = 0;
    for (int r = 0; r < runs; r++) {
        free(ids);
        double t0 = ci_now_seconds();
        if (cinfer_tokenize(tok, text, n_text, 0, &ids, &n_ids) != CINFER_OK) {
            fprintf(stderr, "%s\n", cinfer_last_error());
            return 1;
        }
        double t1 = ci_now_seconds();
        char *decoded;
        if (cinfer_decode(tok, ids, n_ids, 0, &decoded) != CINFER_OK) {
            fprintf(stderr, "%s\n", cinfer_last_error());
            return 1;
        }
        double t2 = ci_now_seconds();
        free(decoded);
        if (t1 - t0 < best_encode) best_encode = t1 - t0;
        if (t2 - t1 < best_decode) best_decode = t2 - t1;
    }
    uint64_t checksum = 1469598103934665603ull; /* FNV-1a over the ids, as the script computes */
    for (int i = 0; i < n_ids; i++) checksum = (checksum ^ (uint32_t)ids[i]) * 1099511628211ull;
    printf("{\"bytes\": %zu, \"tokens\": %d, \"encode_s\": %.6f, \"decode_s\": %.6f, "
           "\"encode_MBps\": %.3f, \"decode_MBps\": %.3f, \"checksum\": \"%016llx\"}\n",
           n_text, n_ids, best_encode, best_decode, n_text / best_encode / 1e6,
           n_text / best_decode / 1e6, (unsigned long long)checksum);
    free(ids);
    free(text);
    cinfer_tokenizer_free(tok);
    return 0;
}
