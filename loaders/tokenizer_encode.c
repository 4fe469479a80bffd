/* Encoding (cinfer_tokenize): the encoder's scratch, the added tokens found in the raw text and
 * then in the normalized text, the text between them through the pre-tokenizer and the model,
 * and the post-processor's special tokens around the result. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "utf8.h"

cinfer_status tok_seg_push(seg_list *l, size_t start, size_t end, int32_t token, int is_match) {
    segment *items = tok_grow(l->items, &l->cap, l->n, sizeof *items, 32);
    if (!items) return CINFER_ERR_MEMORY;
    l->items = items;
    l->items[l->n++] = (segment){start, end, token, is_match};
    return CINFER_OK;
}

cinfer_status tok_push_id(encoder *e, int32_t id) {
    int32_t *ids = tok_grow(e->ids, &e->cap_ids, e->n_ids, sizeof *ids, 256);
    if (!ids) return CINFER_ERR_MEMORY;
    e->ids = ids;
    e->ids[e->n_ids++] = id;
    return CINFER_OK;
}

static void encoder_free(encoder *e) {
    free(e->ids);
    pcre2_match_data_free(e->match);
    pcre2_match_context_free(e->match_context);
    pcre2_jit_stack_free(e->jit_stack);
    for (int i = 0; i < 2; i++) free(e->added_segments[i].items);
    tok_buf_free(&e->normalized);
    tok_buf_free(&e->norm_tmp);
    for (int i = 0; i < MAX_PRE_STEPS; i++) {
        free(e->pre_segments[i].items);
        tok_buf_free(&e->pre_scratch[i][0]);
        tok_buf_free(&e->pre_scratch[i][1]);
    }
    free(e->symbols);
    free(e->heap);
    free(e->cache.slots);
    free(e->cache_entries);
    for (size_t i = 0; i < e->n_word_blocks; i++) free(e->word_blocks[i]);
    free(e->word_blocks);
    free(e->cache_ids);
}

static cinfer_status encoder_init(encoder *e, const cinfer_tokenizer *tok) {
    *e = (encoder){.tok = tok};
    e->match = pcre2_match_data_create(1, NULL);
    e->match_context = pcre2_match_context_create(NULL);
    /* long runs of one character class can need more than the JIT's default 32 KiB */
    e->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    CI_CHECK_ALLOC(e->match, 64);
    CI_CHECK_ALLOC(e->match_context, 64);
    if (e->jit_stack) pcre2_jit_stack_assign(e->match_context, NULL, e->jit_stack);
    return CINFER_OK;
}

/* tokenizers' AddedVocabulary::find_matches: the added tokens in s, with the text between. */
static cinfer_status find_added(const cinfer_tokenizer *t, encoder *e, const matcher *m,
                                const char *s, size_t n, seg_list *out) {
    out->n = 0;
    size_t start_offset = 0, position = 0;
    while (m->n_entries > 0 && position < n) {
        /* the leftmost match, longest there */
        const struct match_entry *hit = NULL;
        size_t at = position;
        for (; at < n && !hit; at++) {
            unsigned char c = (unsigned char)s[at];
            for (int k = m->first[c]; k < m->first[c + 1]; k++)
                if (m->entries[k].len <= n - at &&
                    memcmp(s + at, m->entries[k].text, m->entries[k].len) == 0) {
                    hit = &m->entries[k];
                    break;
                }
        }
        if (!hit) break;
        size_t start = at - 1, stop = start + hit->len;
        position = stop; /* the search goes on after this match even if it is not taken */
        const added_token *a = &t->added[hit->token];
        if (a->single_word) {
            int before_word = 0, after_word = 0;
            if (start > 0) {
                size_t p = utf8_previous(s, start);
                before_word = pcre2_match(t->word_char, (PCRE2_SPTR)s, start, p,
                                          PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, e->match, NULL) >= 0;
            }
            if (stop < n)
                after_word = pcre2_match(t->word_char, (PCRE2_SPTR)s, n, stop,
                                         PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, e->match, NULL) >= 0;
            if (before_word || after_word) continue;
        }
        if (a->lstrip) {
            size_t p = start;
            while (p > 0) {
                size_t q = utf8_previous(s, p);
                uint32_t c = 0; /* always set (valid UTF-8); 0 quiets -Wmaybe-uninitialized */
                utf8_char((const unsigned char *)s + q, p - q, &c);
                if (!utf8_is_whitespace(c)) break;
                p = q;
            }
            start = p > start_offset ? p : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t c;
                int len = utf8_char((const unsigned char *)s + stop, n - stop, &c);
                if (len <= 0 || !utf8_is_whitespace(c)) break;
                stop += (size_t)len;
            }
        }
        if (start_offset < start) CI_TRY(tok_seg_push(out, start_offset, start, -1, 0));
        CI_TRY(tok_seg_push(out, start, stop, a->id, 0));
        start_offset = stop;
    }
    if (start_offset < n) CI_TRY(tok_seg_push(out, start_offset, n, -1, 0));
    return CINFER_OK;
}

static cinfer_status encode_text(encoder *e, const char *text, size_t n) {
    const cinfer_tokenizer *t = e->tok;
    seg_list *raw = &e->added_segments[0], *norm = &e->added_segments[1];
    CI_TRY(find_added(t, e, &t->raw_matcher, text, n, raw));
    for (size_t i = 0; i < raw->n; i++) {
        const segment *g = &raw->items[i];
        if (g->token >= 0) {
            CI_TRY(tok_push_id(e, g->token));
            continue;
        }
        CI_TRY(tok_normalize(t, text + g->start, g->end - g->start, &e->normalized, &e->norm_tmp));
        const char *s = e->normalized.data;
        CI_TRY(find_added(t, e, &t->normalized_matcher, s, e->normalized.len, norm));
        for (size_t k = 0; k < norm->n; k++) {
            const segment *h = &norm->items[k];
            if (h->token >= 0)
                CI_TRY(tok_push_id(e, h->token));
            else if (h->end > h->start)
                CI_TRY(tok_pre_tokenize(e, 0, s + h->start, h->end - h->start,
                                        g->start == 0 && h->start == 0));
        }
    }
    return CINFER_OK;
}

static cinfer_status add_special_tokens(const cinfer_tokenizer *t, encoder *e) {
    if (!t->has_post_processor) {
        /* no post_processor: tokenizer_config.json's add_bos_token / add_eos_token */
        int32_t bos = cinfer_tokenizer_bos_id(t), eos = cinfer_tokenizer_eos_id(t);
        if (t->add_bos_token && bos >= 0) {
            CI_TRY(tok_push_id(e, 0));
            memmove(e->ids + 1, e->ids, (e->n_ids - 1) * sizeof *e->ids);
            e->ids[0] = bos;
        }
        if (t->add_eos_token && eos >= 0) CI_TRY(tok_push_id(e, eos));
        return CINFER_OK;
    }
    for (int p = 0; p < t->n_post; p++) {
        const template_step *tp = &t->post[p];
        size_t n_seq = e->n_ids, total = 0;
        for (int k = 0; k < tp->n_items; k++) total += tp->items[k] < 0 ? n_seq : 1;
        int32_t *out = malloc((total + 1) * sizeof *out);
        CI_CHECK_ALLOC(out, (total + 1) * sizeof *out);
        size_t w = 0;
        for (int k = 0; k < tp->n_items; k++) {
            if (tp->items[k] >= 0) {
                out[w++] = tp->items[k];
            } else {
                if (n_seq) memcpy(out + w, e->ids, n_seq * sizeof *out);
                w += n_seq;
            }
        }
        free(e->ids);
        e->ids = out;
        e->n_ids = w;
        e->cap_ids = total + 1;
    }
    return CINFER_OK;
}

cinfer_status cinfer_tokenize(const cinfer_tokenizer *tok, const char *text, size_t n_bytes,
                              int add_special, int32_t **ids, int *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (n_bytes && !text) return CI_FAIL(CINFER_ERR_ARGUMENT, "cinfer_tokenize: text is NULL");
    if (n_bytes > (size_t)INT32_MAX)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "cinfer_tokenize: %zu bytes of text, more than %d",
                       n_bytes, INT32_MAX);
    size_t valid = utf8_valid_prefix(text, n_bytes);
    if (valid != n_bytes)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "the text to tokenize is not valid UTF-8: byte %zu (0x%02X) cannot be "
                       "there",
                       valid, (unsigned char)text[valid]);
    encoder e;
    cinfer_status st = encoder_init(&e, tok);
    if (st == CINFER_OK) st = encode_text(&e, text, n_bytes);
    if (st == CINFER_OK && add_special) st = add_special_tokens(tok, &e);
    if (st == CINFER_OK && e.n_ids > (size_t)INT32_MAX)
        st = CI_FAIL(CINFER_ERR_ARGUMENT, "the text makes more than %d tokens", INT32_MAX);
    if (st == CINFER_OK && !e.ids) { /* *ids is never NULL */
        st = tok_push_id(&e, 0);
        e.n_ids = 0;
    }
    if (st == CINFER_OK) {
        *ids = e.ids;
        *n_ids = (int)e.n_ids;
        e.ids = NULL;
    }
    encoder_free(&e);
    return st;
}
