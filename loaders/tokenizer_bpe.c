/* The BPE model on one pre-token (tokenizers' BPE): characters to ids (unknown ones by byte
 * fallback or unk_token), the merges applied lowest rank first from a heap, and a cache of the
 * words one text has already encoded. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "utf8.h"

enum {
    CACHE_MAX_WORD = 64, /* longer pre-tokens are rare and not worth caching */
    CACHE_MAX_ENTRIES = 1 << 16,
};

/* BPE's working word: a linked list of symbols over an array, merged in place. */
struct symbol {
    int32_t id, prev, next;
    uint32_t len; /* bytes of the word it covers; 0 once merged into its left neighbour */
};

struct merge_candidate {
    int32_t rank, pos, merged;
};

struct cache_entry {
    uint32_t first, count; /* into encoder.cache_ids */
};

static int candidate_before(const merge_candidate *a, const merge_candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static cinfer_status heap_push(encoder *e, merge_candidate c) {
    merge_candidate *heap = tok_grow(e->heap, &e->cap_heap, e->n_heap, sizeof *heap, 64);
    if (!heap) return CINFER_ERR_MEMORY;
    e->heap = heap;
    size_t i = e->n_heap++;
    while (i > 0 && candidate_before(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
    return CINFER_OK;
}

static merge_candidate heap_pop(encoder *e) {
    merge_candidate top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_before(&e->heap[child + 1], &e->heap[child])) child++;
        if (!candidate_before(&e->heap[child], &last)) break;
        e->heap[i] = e->heap[child];
        i = child;
    }
    if (n) e->heap[i] = last;
    return top;
}

static cinfer_status push_pair_candidate(encoder *e, int32_t pos) {
    const symbol *s = e->symbols;
    const merge_slot *m = tok_merge_table_get(&e->tok->merges, s[pos].id, s[s[pos].next].id);
    if (m) CI_TRY(heap_push(e, (merge_candidate){m->rank, pos, m->merged}));
    return CINFER_OK;
}

/* tokenizers' BPE::merge_word + Word::merge_all: characters to ids (unknown ones by byte
 * fallback or unk), then the lowest-ranked pair merged first, leftmost on ties. */
static cinfer_status bpe_merge_word(encoder *e, const char *w, size_t n, size_t *n_symbols) {
    const cinfer_tokenizer *t = e->tok;
    if (n > e->cap_symbols) {
        free(e->symbols);
        e->symbols = malloc(n * sizeof *e->symbols);
        e->cap_symbols = e->symbols ? n : 0;
        CI_CHECK_ALLOC(e->symbols, n * sizeof *e->symbols);
    }
    symbol *sym = e->symbols;
    size_t count = 0;
    int32_t unk_len = 0; /* bytes of a pending unk symbol, 0 if none */
#define ADD_SYMBOL(token, bytes)                                                                   \
    (sym[count] = (symbol){(token), (int32_t)count - 1, (int32_t)count + 1, (uint32_t)(bytes)},    \
     count++)
    for (size_t i = 0; i < n;) {
        int len = utf8_char((const unsigned char *)w + i, n - i, NULL);
        if (len <= 0) len = 1; /* not reached: the text is valid UTF-8 */
        int32_t id = tok_str_table_get(&t->model_vocab, w + i, (size_t)len);
        if (id >= 0) {
            if (unk_len) ADD_SYMBOL(t->unk_id, unk_len), unk_len = 0;
            ADD_SYMBOL(id, len);
        } else {
            int all_bytes = t->byte_fallback;
            for (int k = 0; k < len && all_bytes; k++)
                all_bytes = t->byte_ids[(unsigned char)w[i + k]] >= 0;
            if (all_bytes) {
                /* as tokenizers: a pending unk waits until the next known character */
                for (int k = 0; k < len; k++) ADD_SYMBOL(t->byte_ids[(unsigned char)w[i + k]], 1);
            } else if (t->unk_id == -2) {
                return CI_FAIL(CINFER_ERR_FORMAT,
                               "%s: model.unk_token '%s' is not in model.vocab, and the text "
                               "has a character ('%.*s') that needs it",
                               t->name, t->unk_token, len, w + i);
            } else if (t->unk_id >= 0) {
                if (unk_len && t->fuse_unk)
                    unk_len += len;
                else {
                    if (unk_len) ADD_SYMBOL(t->unk_id, unk_len);
                    unk_len = len;
                }
            } /* no unk_token: tokenizers drops the character */
        }
        i += (size_t)len;
    }
    if (unk_len) ADD_SYMBOL(t->unk_id, unk_len);
#undef ADD_SYMBOL
    if (count == 0) {
        *n_symbols = 0;
        return CINFER_OK;
    }
    sym[count - 1].next = -1;

    e->n_heap = 0;
    for (size_t i = 0; i + 1 < count; i++) CI_TRY(push_pair_candidate(e, (int32_t)i));
    while (e->n_heap > 0) {
        merge_candidate top = heap_pop(e);
        symbol *left = &sym[top.pos];
        if (left->len == 0 || left->next < 0) continue;
        symbol *right = &sym[left->next];
        const merge_slot *m = tok_merge_table_get(&t->merges, left->id, right->id);
        if (!m || m->merged != top.merged) continue; /* this pair changed since it was queued */
        left->id = top.merged;
        left->len += right->len;
        right->len = 0;
        left->next = right->next;
        if (left->next >= 0) sym[left->next].prev = top.pos;
        if (left->prev >= 0) CI_TRY(push_pair_candidate(e, left->prev));
        if (left->next >= 0) CI_TRY(push_pair_candidate(e, top.pos));
    }
    *n_symbols = count;
    return CINFER_OK;
}

enum { WORD_BLOCK_BYTES = 64 * 1024 };

/* Room for one more entry: the table doubles (and is rebuilt) when half full. */
static cinfer_status cache_grow(encoder *e) {
    if (e->n_cache < e->cap_cache) return CINFER_OK;
    size_t cap = e->cap_cache ? 2 * e->cap_cache : 1024;
    cache_entry *grown = realloc(e->cache_entries, cap * sizeof *grown);
    CI_CHECK_ALLOC(grown, cap * sizeof *grown);
    e->cache_entries = grown;
    e->cap_cache = cap;
    str_table bigger;
    CI_TRY(tok_str_table_init(&bigger, cap));
    for (size_t i = 0; i < e->cache.capacity; i++)
        if (e->cache.slots[i].key)
            tok_str_table_put(&bigger, e->cache.slots[i].key, e->cache.slots[i].len,
                              e->cache.slots[i].value);
    free(e->cache.slots);
    e->cache = bigger;
    return CINFER_OK;
}

static cinfer_status cache_put(encoder *e, const char *w, size_t n, const int32_t *ids,
                               size_t n_ids) {
    if (n > CACHE_MAX_WORD || e->n_cache >= CACHE_MAX_ENTRIES) return CINFER_OK;
    CI_TRY(cache_grow(e));
    if (e->n_word_blocks == 0 || e->block_used + n > WORD_BLOCK_BYTES) {
        char **blocks = realloc(e->word_blocks, (e->n_word_blocks + 1) * sizeof *blocks);
        CI_CHECK_ALLOC(blocks, (e->n_word_blocks + 1) * sizeof *blocks);
        e->word_blocks = blocks;
        blocks[e->n_word_blocks] = malloc(WORD_BLOCK_BYTES);
        CI_CHECK_ALLOC(blocks[e->n_word_blocks], WORD_BLOCK_BYTES);
        e->n_word_blocks++;
        e->block_used = 0;
    }
    if (e->n_cache_ids + n_ids > e->cap_cache_ids) {
        size_t cap = e->cap_cache_ids ? 2 * e->cap_cache_ids : 4096;
        while (cap < e->n_cache_ids + n_ids) cap *= 2;
        int32_t *grown = realloc(e->cache_ids, cap * sizeof *grown);
        CI_CHECK_ALLOC(grown, cap * sizeof *grown);
        e->cache_ids = grown;
        e->cap_cache_ids = cap;
    }
    char *key = e->word_blocks[e->n_word_blocks - 1] + e->block_used;
    memcpy(key, w, n);
    e->block_used += n;
    if (n_ids) memcpy(e->cache_ids + e->n_cache_ids, ids, n_ids * sizeof *ids);
    e->cache_entries[e->n_cache] = (cache_entry){(uint32_t)e->n_cache_ids, (uint32_t)n_ids};
    e->n_cache_ids += n_ids;
    tok_str_table_put(&e->cache, key, n, (int32_t)e->n_cache++);
    return CINFER_OK;
}

/* tokenizers' BPE::tokenize for one pre-token. */
cinfer_status tok_bpe_encode(encoder *e, const char *w, size_t n) {
    const cinfer_tokenizer *t = e->tok;
    if (n == 0) return CINFER_OK;
    if (t->ignore_merges) { /* Llama 3: a pre-token that is itself in the vocabulary is one */
        int32_t id = tok_str_table_get(&t->model_vocab, w, n);
        if (id >= 0) return tok_push_id(e, id);
    }
    int32_t cached = n <= CACHE_MAX_WORD ? tok_str_table_get(&e->cache, w, n) : -1;
    if (cached >= 0) {
        const cache_entry *c = &e->cache_entries[cached];
        for (uint32_t k = 0; k < c->count; k++) CI_TRY(tok_push_id(e, e->cache_ids[c->first + k]));
        return CINFER_OK;
    }
    size_t count;
    CI_TRY(bpe_merge_word(e, w, n, &count));
    size_t first = e->n_ids;
    for (int32_t i = count ? 0 : -1; i >= 0; i = e->symbols[i].next)
        CI_TRY(tok_push_id(e, e->symbols[i].id));
    /* a word of characters no token has, with no unk_token, gives no ids (and e->ids may be NULL)
     */
    return cache_put(e, w, n, e->n_ids > first ? e->ids + first : NULL, e->n_ids - first);
}
