/* libFuzzer target for the tokenizer.json reader and the tokenizer it builds. Whatever the bytes,
 * tokenizer_parse must either refuse them with a message that names the file, or return a
 * tokenizer that encodes a few fixed texts into ids inside its vocabulary and decodes them (whole
 * and streamed: the same text) without crashing, leaking or hanging.
 *
 *   (built as fuzz_safetensors.c says)
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_tokenizer -max_total_time=60 \
 *       -dict=tests/fuzz/tokenizer.dict /tmp/corpus tests/fuzz/corpus/tokenizer */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../loaders/tokenizer.h"

static const char file_name[] = "fuzz/tokenizer.json";

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

static const char *const texts[] = {"",
                                    "Hello world",
                                    "  a  b\n\n\tc ",
                                    "<s>x</s><|endoftext|>",
                                    "\xc3\xa9\xe6\x9d\xb1 \xf0\x9f\x98\x80",
                                    "12345 it's"};

static void check_round_trip(const cinfer_tokenizer *tok, const char *text) {
    int32_t *ids = NULL;
    int n = 0;
    cinfer_status st = cinfer_tokenize(tok, text, strlen(text), 1, &ids, &n);
    if (st != CINFER_OK) { /* e.g. an unk_token missing from the vocabulary, a regex limit */
        REQUIRE(ids == NULL && strncmp(cinfer_last_error(), file_name, sizeof file_name - 1) == 0);
        return;
    }
    int vocab = cinfer_tokenizer_vocab_size(tok);
    for (int i = 0; i < n; i++) REQUIRE(ids[i] >= 0 && ids[i] < vocab);
    for (int skip = 0; skip < 2; skip++) {
        char *whole = NULL;
        REQUIRE(cinfer_decode(tok, ids, n, skip, &whole) == CINFER_OK);
        cinfer_detokenizer *d;
        REQUIRE(cinfer_detokenizer_create(tok, skip, &d) == CINFER_OK);
        size_t at = 0, len = strlen(whole);
        for (int i = 0; i < n; i++) {
            const char *piece;
            size_t k;
            REQUIRE(cinfer_detokenize(d, ids[i], &piece, &k) == CINFER_OK);
            /* the stream says the same as the whole, up to a NUL the whole one stops at */
            for (size_t j = 0; j < k && at < len; j++, at++) REQUIRE(piece[j] == whole[at]);
        }
        const char *rest;
        size_t k;
        cinfer_detokenizer_finish(d, &rest, &k);
        for (size_t j = 0; j < k && at < len; j++, at++) REQUIRE(rest[j] == whole[at]);
        REQUIRE(at == len);
        cinfer_detokenizer_free(d);
        free(whole);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cinfer_tokenizer *tok = NULL;
    cinfer_status status = tokenizer_parse(file_name, (const char *)data, size, &tok);
    if (status != CINFER_OK) {
        REQUIRE(tok == NULL);
        if (status != CINFER_ERR_MEMORY)
            REQUIRE(strncmp(cinfer_last_error(), file_name, sizeof file_name - 1) == 0);
        return 0;
    }
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) check_round_trip(tok, texts[i]);
    cinfer_tokenizer_free(tok);
    return 0;
}
