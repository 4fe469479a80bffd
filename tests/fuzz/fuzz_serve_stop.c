/* libFuzzer target for stop strings on streamed text (programs/serve_stop.c). The bytes are
 *   [flags] ([length] [bytes of a stop string])... [split seed] [text...]
 * flags % 8 stop strings, each length % 9 bytes long (0: an empty one, which must be refused);
 * with flags & 0x80 every stop and text byte becomes 'a', 'b' or 'c', so that stop strings occur
 * and overlap often. The text is fed in pieces of 0 to 7 bytes drawn from the seed. Invariants:
 * what is returned, joined, is the text cut at the earliest stop string (as a plain search of
 * the whole text finds it; at one position the shortest, then the lowest index), and which one
 * is reported; nothing is returned after a match; what is held back never exceeds the longest
 * stop string plus an incomplete character; where the text and the stop strings are UTF-8, no
 * piece returned ends inside a character. Never crash, leak, or read past what it was given.
 *
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_serve_stop -max_total_time=60 \
 *       /tmp/corpus tests/fuzz/corpus/serve_stop
 *
 * (built as fuzz_safetensors.c says) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../programs/serve_stop.h"

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

enum { MAX_STOPS = 7, MAX_STOP_BYTES = 8 };

/* Every byte in a character of 1 to 4 bytes, by the lead bytes' lengths alone. */
static int utf8_whole(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        const uint8_t c = s[i];
        const size_t need = c < 0x80   ? 1
                            : c < 0xC0 ? 0
                            : c < 0xE0 ? 2
                            : c < 0xF0 ? 3
                            : c < 0xF8 ? 4
                                       : 0;
        if (need == 0 || i + need > n) return 0;
        for (size_t k = 1; k < need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need;
    }
    return 1;
}

/* The earliest position where a stop string begins (at one position the shortest, then the
 * lowest index), or n with *index -1. */
static size_t reference(const uint8_t *text, size_t n, const uint8_t stops[][MAX_STOP_BYTES],
                        const size_t *lengths, int n_stops, int *index) {
    for (size_t at = 0; at < n; at++) {
        int best = -1;
        for (int k = 0; k < n_stops; k++)
            if (lengths[k] <= n - at && memcmp(text + at, stops[k], lengths[k]) == 0 &&
                (best < 0 || lengths[k] < lengths[best]))
                best = k;
        if (best >= 0) {
            *index = best;
            return at;
        }
    }
    *index = -1;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int letters = data[0] & 0x80;
    const int n_stops = data[0] % 8;
    size_t at = 1;
    uint8_t stops[MAX_STOPS][MAX_STOP_BYTES];
    size_t lengths[MAX_STOPS];
    const char *pointers[MAX_STOPS];
    size_t longest = 0;
    int any_empty = 0;
    for (int k = 0; k < n_stops; k++) {
        lengths[k] = at < size ? data[at++] % 9 : 0;
        if (lengths[k] > size - at) lengths[k] = size - at;
        for (size_t i = 0; i < lengths[k]; i++)
            stops[k][i] = letters ? (uint8_t)('a' + data[at + i] % 3) : data[at + i];
        at += lengths[k];
        pointers[k] = (const char *)stops[k];
        any_empty |= lengths[k] == 0;
        if (lengths[k] > longest) longest = lengths[k];
    }
    uint32_t rng = at < size ? 0x9E3779B9u ^ data[at++] : 1;
    const size_t n = size - at;
    uint8_t *text = malloc(n ? n : 1);
    REQUIRE(text);
    for (size_t i = 0; i < n; i++)
        text[i] = letters ? (uint8_t)('a' + data[at + i] % 3) : data[at + i];

    serve_stop *s;
    char err[256];
    if (serve_stop_create(pointers, lengths, n_stops, &s, err, sizeof err) != 0) {
        REQUIRE(any_empty && s == NULL);
        REQUIRE(memchr(err, '\0', sizeof err) != NULL && strstr(err, "stop[") == err);
        free(text);
        return 0;
    }
    REQUIRE(!any_empty);

    int index;
    const size_t cut = reference(text, n, stops, lengths, n_stops, &index);
    int utf8 = utf8_whole(text, n);
    for (int k = 0; k < n_stops; k++) utf8 &= utf8_whole(stops[k], lengths[k]);

    size_t fed = 0, sent = 0;
    int stopped = 0;
    const char *out;
    size_t n_out;
    while (fed < n) {
        rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5; /* xorshift32 */
        size_t piece = rng % 8;
        if (piece > n - fed) piece = n - fed;
        const int r = serve_stop_feed(s, (const char *)text + fed, piece, &out, &n_out);
        fed += piece;
        REQUIRE(r == 0 || r == 1);
        if (stopped) {
            REQUIRE(r == 1 && n_out == 0);
            continue;
        }
        REQUIRE(sent + n_out <= cut && memcmp(out, text + sent, n_out) == 0);
        sent += n_out;
        if (r == 1) {
            stopped = 1;
            REQUIRE(sent == cut && index >= 0 && serve_stop_which(s) == index);
            continue;
        }
        REQUIRE(serve_stop_which(s) == -1);
        REQUIRE(fed - sent <= longest + 3); /* a stop prefix, a partial character */
        if (utf8) REQUIRE(sent == n || (text[sent] & 0xC0) != 0x80); /* between characters */
    }
    const int r = serve_stop_finish(s, &out, &n_out);
    if (stopped) REQUIRE(r == 1 && n_out == 0);
    REQUIRE(sent + n_out == cut && memcmp(out, text + sent, n_out) == 0);
    REQUIRE(r == (index >= 0) && serve_stop_which(s) == index);
    REQUIRE(serve_stop_feed(s, "a", 1, &out, &n_out) == r && n_out == 0);
    serve_stop_free(s);
    free(text);
    return 0;
}
