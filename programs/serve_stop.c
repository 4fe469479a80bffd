/* Stop strings on streamed text (programs/serve_stop.h): an Aho-Corasick automaton over the stop
 * strings, stepped once per byte of the stream, and a buffer of the bytes not yet sent.
 *
 * The automaton's state after each byte is the longest suffix of the text so far that is a
 * prefix of some stop string: exactly what must be held back, since any of those suffixes may
 * still become a stop string. Each state also knows the longest stop string that ends there
 * (found through its failure links when the trie is built), which is the one that begins
 * earliest among those ending at this byte. The state's depth bounds what is held back by
 * SERVE_STOP_MAX_BYTES, so a call costs the bytes it is given plus that, however long the output.
 * Per byte: one step deepens the state by at most one byte and each failure link taken makes it
 * shallower, so failure links taken never outnumber the bytes; a node's children are a list,
 * scanned in at most min(number of stop strings, 256) looks (the root's are a table). */
#include "serve_stop.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

/* One node of the trie: the stop-string prefix spelled by the path from the root. */
typedef struct stop_node {
    int32_t child;       /* first child, -1 if none; children are a list through sibling */
    int32_t sibling;     /* next child of the same parent, -1 if none */
    int32_t fail;        /* the node of the longest proper suffix of this prefix that is a node */
    int32_t depth;       /* bytes in this prefix */
    int32_t match_len;   /* the longest stop string that is a suffix of this prefix; 0 if none */
    int32_t match_index; /* its index as given to create (the lowest among equal strings) */
    uint8_t byte;        /* the byte on the edge from the parent */
} stop_node;

struct serve_stop {
    stop_node *nodes; /* nodes[0] is the root, the empty prefix */
    int32_t n_nodes;
    int32_t
        root_next[256]; /* the root's child for each byte, or 0: its lookups are the most common */
    int32_t state;      /* the node of the longest suffix of the text that is a stop prefix */

    char *buf;       /* the bytes not yet sent: the held-back text, then the newest piece */
    size_t len, cap; /* bytes in buf, and its size */
    size_t returned; /* bytes at the start of buf that the last call returned: dropped next call */

    int matched;     /* a stop string occurs; it begins at buf[match_at] */
    size_t match_at; /* in buf */
    int32_t match_len, match_index;
    int finished; /* nothing more will be returned */
};

/* A refusal into err; returns -1. */
static int fail(char *err, size_t size, const char *format, ...) CI_PRINTF(3, 4);
static int fail(char *err, size_t size, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, size, format, args);
    va_end(args);
    return -1;
}

/* The child of node v on byte c, or -1. */
static int32_t child_of(const serve_stop *s, int32_t v, uint8_t c) {
    if (v == 0) return s->root_next[c] ? s->root_next[c] : -1;
    for (int32_t u = s->nodes[v].child; u >= 0; u = s->nodes[u].sibling)
        if (s->nodes[u].byte == c) return u;
    return -1;
}

/* The automaton's next state from v on byte c. */
static int32_t step(const serve_stop *s, int32_t v, uint8_t c) {
    for (;;) {
        const int32_t u = child_of(s, v, c);
        if (u >= 0) return u;
        if (v == 0) return 0;
        v = s->nodes[v].fail;
    }
}

/* The trie of the stop strings, then failure links and matches in breadth-first order; 0, else
 * -1 (out of memory). */
static int build(serve_stop *s, const char *const *stops, const size_t *lengths, int n,
                 size_t total) {
    s->nodes = malloc((total + 1) * sizeof *s->nodes);
    if (!s->nodes) return -1;
    s->nodes[0] = (stop_node){.child = -1, .sibling = -1};
    s->n_nodes = 1;
    for (int i = 0; i < n; i++) {
        int32_t v = 0;
        for (size_t k = 0; k < lengths[i]; k++) {
            const uint8_t c = (uint8_t)stops[i][k];
            int32_t u = child_of(s, v, c);
            if (u < 0) {
                u = s->n_nodes++;
                s->nodes[u] = (stop_node){.child = -1,
                                          .sibling = s->nodes[v].child,
                                          .depth = s->nodes[v].depth + 1,
                                          .byte = c};
                s->nodes[v].child = u;
                if (v == 0) s->root_next[c] = u;
            }
            v = u;
        }
        if (s->nodes[v].match_len == 0) { /* the first of equal strings keeps its index */
            s->nodes[v].match_len = s->nodes[v].depth;
            s->nodes[v].match_index = i;
        }
    }
    /* breadth first, so a node's failure link is done before its children need it */
    int32_t *queue = malloc((size_t)s->n_nodes * sizeof *queue);
    if (!queue) return -1;
    int32_t head = 0, tail = 0;
    for (int32_t u = s->nodes[0].child; u >= 0; u = s->nodes[u].sibling) queue[tail++] = u;
    while (head < tail) {
        const int32_t v = queue[head++];
        stop_node *node = &s->nodes[v];
        if (node->match_len == 0) { /* not a stop string itself: the longest one among suffixes */
            node->match_len = s->nodes[node->fail].match_len;
            node->match_index = s->nodes[node->fail].match_index;
        }
        for (int32_t u = node->child; u >= 0; u = s->nodes[u].sibling) {
            s->nodes[u].fail = step(s, node->fail, s->nodes[u].byte);
            queue[tail++] = u;
        }
    }
    free(queue);
    return 0;
}

int serve_stop_create(const char *const *stops, const size_t *lengths_or_null, int n,
                      serve_stop **out, char *err, size_t err_size) {
    *out = NULL;
    if (n < 0 || n > SERVE_STOP_MAX_STRINGS)
        return fail(err, err_size, "stop: %d strings, at most %d are allowed", n,
                    SERVE_STOP_MAX_STRINGS);
    size_t lengths[SERVE_STOP_MAX_STRINGS];
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        lengths[i] = lengths_or_null ? lengths_or_null[i] : strlen(stops[i]);
        if (lengths[i] == 0) return fail(err, err_size, "stop[%d]: an empty string", i);
        if (lengths[i] > SERVE_STOP_MAX_BYTES)
            return fail(err, err_size, "stop[%d]: %zu bytes, at most %d are allowed", i, lengths[i],
                        SERVE_STOP_MAX_BYTES);
        total += lengths[i];
    }
    serve_stop *s = calloc(1, sizeof *s);
    if (!s || build(s, stops, lengths, n, total) != 0) {
        serve_stop_free(s);
        return fail(err, err_size, "stop: out of memory for %d strings", n);
    }
    *out = s;
    return 0;
}

/* Where an incomplete UTF-8 character at the end of text[0, end) begins, or end if none. Bytes
 * that can never become a character (a stray continuation, 0xF8..0xFF) are not held: no later
 * byte would make them whole. */
static size_t utf8_whole_end(const char *text, size_t end) {
    for (size_t back = 1; back <= 4 && back <= end; back++) {
        const uint8_t c = (uint8_t)text[end - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        const size_t need = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return c < 0xF8 && need > back ? end - back : end;
    }
    return end;
}

/* Drops what the last call returned, so that buf starts at the first unsent byte. */
static void drop_returned(serve_stop *s) {
    if (s->returned == 0) return;
    memmove(s->buf, s->buf + s->returned, s->len - s->returned);
    s->len -= s->returned;
    if (s->matched) s->match_at -= s->returned; /* a match never begins in sent text */
    s->returned = 0;
}

static void give(serve_stop *s, size_t end, const char **text, size_t *n_text) {
    s->returned = end;
    *text = s->buf ? s->buf : "";
    *n_text = end;
}

int serve_stop_feed(serve_stop *s, const char *piece, size_t n_bytes, const char **text,
                    size_t *n_text) {
    drop_returned(s);
    if (s->finished) {
        give(s, 0, text, n_text);
        return s->matched;
    }
    if (s->len + n_bytes > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n_bytes) cap *= 2;
        char *buf = realloc(s->buf, cap);
        if (!buf) { /* the piece is not taken: s is as before the call */
            give(s, 0, text, n_text);
            return -1;
        }
        s->buf = buf;
        s->cap = cap;
    }
    /* bytes are scanned from buf: a match can begin in the held-back text before this piece */
    if (n_bytes) memcpy(s->buf + s->len, piece, n_bytes);
    const size_t first = s->len;
    s->len += n_bytes;
    for (size_t i = first; i < s->len; i++) {
        s->state = step(s, s->state, (uint8_t)s->buf[i]);
        const stop_node *node = &s->nodes[s->state];
        const size_t end = i + 1;
        if (node->match_len > 0) {
            const size_t at = end - (size_t)node->match_len;
            /* a later end with the same start is a longer string: the first found stays */
            if (!s->matched || at < s->match_at) {
                s->matched = 1;
                s->match_at = at;
                s->match_len = node->match_len;
                s->match_index = node->match_index;
            }
        }
        /* final once no stop string that could still come would begin before this one */
        if (s->matched && end - (size_t)node->depth >= s->match_at) {
            s->finished = 1;
            give(s, s->match_at, text, n_text);
            return 1;
        }
    }
    /* while a match waits, a held-back suffix begins before it, so it is never sent either */
    const size_t held_from = s->len - (size_t)s->nodes[s->state].depth;
    give(s, utf8_whole_end(s->buf, held_from), text, n_text);
    return 0;
}

int serve_stop_finish(serve_stop *s, const char **text, size_t *n_text) {
    drop_returned(s);
    if (s->finished) {
        give(s, 0, text, n_text);
        return s->matched;
    }
    s->finished = 1;
    give(s, s->matched ? s->match_at : s->len, text, n_text);
    return s->matched;
}

int serve_stop_which(const serve_stop *s) {
    return s->matched && s->finished ? s->match_index : -1;
}

void serve_stop_free(serve_stop *s) {
    if (!s) return;
    free(s->nodes);
    free(s->buf);
    free(s);
}
