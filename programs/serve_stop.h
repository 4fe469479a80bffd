/* Stop strings on streamed text, for `cinfer serve`: fed the text of each token as the
 * detokenizer gives it, says what may be sent to the client now. A suffix of the text that could
 * still begin a stop string is held back, and so is an incomplete UTF-8 character at the end;
 * nothing from the first stop string on is ever returned (OpenAI's answers leave the stop string
 * out). Prints nothing and never exits, so tests/fuzz/fuzz_serve_stop.c can take it alone.
 *
 * What the calls return, joined, is the whole text cut where the earliest occurrence of any stop
 * string begins (the lowest start position; at one position the shortest stop string, then the
 * lowest index), or the whole text if none occurs. Matching is byte for byte (no normalization).
 * A call costs the bytes it is given plus the bytes held back (at most SERVE_STOP_MAX_BYTES + 3),
 * however long the text already sent: an Aho-Corasick automaton, stepped once per new byte. */
#ifndef CINFER_SERVE_STOP_H
#define CINFER_SERVE_STOP_H

#include <stddef.h>

/* OpenAI's API takes up to 4 stop strings; vLLM and llama-server take any number. These bound
 * the automaton at 64 KiB of stop text, whatever a request asks. */
enum {
    SERVE_STOP_MAX_STRINGS = 64, /* stop strings in one request */
    SERVE_STOP_MAX_BYTES = 1024, /* bytes in one stop string */
};

typedef struct serve_stop serve_stop;

/* A matcher for n stop strings (n may be 0: only incomplete UTF-8 is then held back). lengths
 * gives their sizes in bytes, or is NULL for NUL-terminated strings; the strings are copied.
 * 0, else -1 with the reason in err (naming "stop", the index and the limit): more than
 * SERVE_STOP_MAX_STRINGS strings, an empty one, one over SERVE_STOP_MAX_BYTES, out of memory. */
int serve_stop_create(const char *const *stops, const size_t *lengths, int n, serve_stop **out,
                      char *err, size_t err_size);

/* Takes the next n_bytes of generated text (piece may be NULL when n_bytes is 0) and sets *text,
 * *n_text to what may be sent now (possibly nothing); *text stays valid until the next call on s.
 * Returns 1 once a stop string has been matched: the text returned is then the last there is, and
 * every later call returns nothing and 1. Otherwise 0. A match can wait on bytes to come when a
 * longer stop string that would begin earlier is still possible ("abcd" and "bc" on "abc").
 * -1 when there is no memory to hold the piece: nothing is returned or taken. */
int serve_stop_feed(serve_stop *s, const char *piece, size_t n_bytes, const char **text,
                    size_t *n_text);

/* Generation has ended (for a reason of its own, or after a match): sets *text, *n_text to what
 * was held back and may be sent, an incomplete character included. Returns 1 if a stop string
 * ends the text (matched now or before), else 0. Later calls return nothing. */
int serve_stop_finish(serve_stop *s, const char **text, size_t *n_text);

/* The index of the stop string that ended the text (as given to create), or -1 while none has. */
int serve_stop_which(const serve_stop *s);

void serve_stop_free(serve_stop *s);

#endif
