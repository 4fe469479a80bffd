/* The tokenizer's small containers: a growable NUL-terminated buffer, string copies, a string ->
 * int32 hash table (the vocabularies, the encoder's word cache), and the merge table (a pair of
 * ids -> its rank and merged id).
 *
 * static inline: the encoder and the decoder call these once per character or byte, and the
 * build does not inline across files. */
#ifndef CINFER_TOKENIZER_CONTAINERS_H
#define CINFER_TOKENIZER_CONTAINERS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

/* A doubling array's storage with room for one more element after n (first_cap elements when it
 * has none yet): items itself, or its grown copy; NULL, with the error set, when memory ran out
 * (items is then still valid and owned by the caller). */
static inline void *tok_grow(void *items, size_t *cap, size_t n, size_t element, size_t first_cap) {
    if (n < *cap) return items;
    const size_t want = *cap ? 2 * *cap : first_cap;
    void *grown = realloc(items, want * element);
    if (!grown) {
        CI_FAIL(CINFER_ERR_MEMORY, "out of memory growing a tokenizer array to %zu bytes",
                want * element);
        return NULL;
    }
    *cap = want;
    return grown;
}

/* Makes room for `extra` more bytes and the NUL after them. */
static inline cinfer_status tok_buf_reserve(buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return CINFER_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    char *grown = realloc(b->data, cap);
    CI_CHECK_ALLOC(grown, cap);
    b->data = grown;
    b->cap = cap;
    return CINFER_OK;
}

/* Appends s[0, n) and keeps the data NUL-terminated. */
static inline cinfer_status tok_buf_append(buf *b, const char *s, size_t n) {
    CI_TRY(tok_buf_reserve(b, n));
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CINFER_OK;
}

/* Frees the data and leaves b empty. */
static inline void tok_buf_free(buf *b) {
    free(b->data);
    *b = (buf){0};
}

/* A malloc'd, NUL-terminated copy of s[0, n); NULL when out of memory. */
static inline char *tok_copy_string(const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

/* String -> int32, open addressing. Keys point into memory the table does not own. */
typedef struct str_slot {
    const char *key; /* NULL: empty */
    uint32_t len, hash;
    int32_t value;
} str_slot;

typedef struct str_table {
    str_slot *slots;
    size_t capacity, count; /* capacity: a power of two, at least twice count */
} str_table;

/* The hash of s[0, n) that the string table keys on. */
static inline uint32_t tok_hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* An empty table with room for `expected` keys. */
static inline cinfer_status tok_str_table_init(str_table *t, size_t expected) {
    size_t capacity = 16;
    while (capacity < 2 * expected + 2) capacity *= 2;
    t->slots = calloc(capacity, sizeof *t->slots);
    CI_CHECK_ALLOC(t->slots, capacity * sizeof *t->slots);
    t->capacity = capacity;
    t->count = 0;
    return CINFER_OK;
}

/* The slot that holds key[0, len), or the empty slot where it would go. */
static inline str_slot *tok_str_table_slot(const str_table *t, const char *key, size_t len,
                                           uint32_t hash) {
    size_t mask = t->capacity - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        str_slot *s = &t->slots[i];
        if (!s->key || (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0))
            return s;
    }
}

/* The value of key[0, len), or -1 if absent (or the table was never made). */
static inline int32_t tok_str_table_get(const str_table *t, const char *key, size_t len) {
    if (!t->slots) return -1;
    const str_slot *s = tok_str_table_slot(t, key, len, tok_hash_bytes(key, len));
    return s->key ? s->value : -1;
}

/* Returns 1 if the key was new. The table must have room (sized by init, or grown by caller). */
static inline int tok_str_table_put(str_table *t, const char *key, size_t len, int32_t value) {
    uint32_t hash = tok_hash_bytes(key, len);
    str_slot *s = tok_str_table_slot(t, key, len, hash);
    int fresh = s->key == NULL;
    *s = (str_slot){key, (uint32_t)len, hash, value};
    t->count += fresh;
    return fresh;
}

/* (left id, right id) -> (rank, merged id). */
typedef struct merge_slot {
    uint64_t key; /* UINT64_MAX: empty (ids are < 2^24, so no pair packs to it) */
    int32_t rank, merged;
} merge_slot;

typedef struct merge_table {
    merge_slot *slots;
    size_t capacity;
} merge_table;

/* The merge table's key for the pair (a, b). */
static inline uint64_t tok_pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

/* The slot that holds key, or the empty slot where it would go. */
static inline merge_slot *tok_merge_table_slot(const merge_table *t, uint64_t key) {
    size_t mask = t->capacity - 1;
    for (size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;; i = (i + 1) & mask)
        if (t->slots[i].key == key || t->slots[i].key == UINT64_MAX) return &t->slots[i];
}

/* The merge of the pair (a, b), or NULL if the pair does not merge. */
static inline const merge_slot *tok_merge_table_get(const merge_table *t, int32_t a, int32_t b) {
    if (!t->slots) return NULL;
    const merge_slot *s = tok_merge_table_slot(t, tok_pair_key(a, b));
    return s->key == UINT64_MAX ? NULL : s;
}

#endif
