/* The text steps before the model: the normalizer (Prepend, Replace) on a piece of text, and the
 * pre-tokenizers (Split, ByteLevel, Metaspace) that cut it into the pre-tokens BPE encodes. The
 * patterns run on PCRE2. */
#include "tokenizer_internal.h"

#include <string.h>

#include "../common/error.h"
#include "utf8.h"

/* ---- normalizer ------------------------------------------------------------------------------ */

/* One pass of pcre2_substitute (literal replacement, every match) into out. */
cinfer_status tok_replace_all(const char *name, const pcre2_code *re, const char *s, size_t n,
                              const char *with, size_t with_len, buf *out) {
    PCRE2_SIZE size = n + 16;
    for (int attempt = 0; attempt < 2; attempt++) {
        CI_TRY(tok_buf_reserve(out, size + 1));
        PCRE2_SIZE out_len = out->cap - 1;
        int rc = pcre2_substitute(re, (PCRE2_SPTR)s, n, 0,
                                  PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_LITERAL |
                                      PCRE2_SUBSTITUTE_OVERFLOW_LENGTH | PCRE2_NO_UTF_CHECK,
                                  NULL, NULL, (PCRE2_SPTR)with, with_len, (PCRE2_UCHAR *)out->data,
                                  &out_len);
        if (rc >= 0) {
            out->len = out_len;
            out->data[out_len] = '\0';
            return CINFER_OK;
        }
        if (rc != PCRE2_ERROR_NOMEMORY) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(rc, message, sizeof message);
            return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: a Replace pattern failed: %s", name,
                           (const char *)message);
        }
        size = out_len; /* the length needed */
    }
    return CI_FAIL(CINFER_ERR_MEMORY, "%s: Replace output did not fit", name);
}

/* The normalizer on one piece of text; the result is in out. */
cinfer_status tok_normalize(const cinfer_tokenizer *t, const char *s, size_t n, buf *out,
                            buf *tmp) {
    out->len = 0;
    CI_TRY(tok_buf_append(out, s, n));
    for (int i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        tmp->len = 0;
        if (st->kind == NORM_PREPEND) {
            if (out->len == 0) continue; /* tokenizers prepends nothing to an empty string */
            CI_TRY(tok_buf_append(tmp, st->text, st->text_len));
            CI_TRY(tok_buf_append(tmp, out->data, out->len));
        } else {
            CI_TRY(tok_replace_all(t->name, st->pattern, out->data, out->len, st->text,
                                   st->text_len, tmp));
        }
        buf swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return CINFER_OK;
}

/* ---- pre-tokenizers -------------------------------------------------------------------------- */

/* Every match of re in s[0, n) and the text between, in order (tokenizers' find_matches). */
static cinfer_status regex_segments(encoder *e, const pcre2_code *re, const char *s, size_t n,
                                    seg_list *out) {
    out->n = 0;
    size_t previous = 0, position = 0;
    while (position <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, position, PCRE2_NO_UTF_CHECK, e->match,
                             e->match_context);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(rc, message, sizeof message);
            return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                           "%s: a pre-tokenizer pattern failed on a text of %zu bytes: %s",
                           e->tok->name, n, (const char *)message);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->match);
        size_t start = ov[0], end = ov[1];
        if (start > previous) CI_TRY(tok_seg_push(out, previous, start, -1, 0));
        CI_TRY(tok_seg_push(out, start, end, -1, 1));
        previous = end;
        if (end > start) {
            position = end;
        } else { /* an empty match: look again one character later */
            if (start >= n) break;
            int len = utf8_char((const unsigned char *)s + start, n - start, NULL);
            position = start + (size_t)(len > 0 ? len : 1);
        }
    }
    if (previous < n) CI_TRY(tok_seg_push(out, previous, n, -1, 0));
    return CINFER_OK;
}

/* tokenizers' SplitDelimiterBehavior, applied in place to segments that cover the text. */
static void apply_behavior(seg_list *l, split_behavior behavior, int invert) {
    segment *s = l->items;
    size_t n = l->n, w = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) s[i].is_match = !s[i].is_match;
    int previous_match = 0;
    switch (behavior) {
    case SPLIT_ISOLATED: return;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!s[i].is_match) s[w++] = s[i];
        break;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < n; i++) {
            if (s[i].is_match && !previous_match && w > 0)
                s[w - 1].end = s[i].end;
            else
                s[w++] = s[i];
            previous_match = s[i].is_match;
        }
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            if (s[i].is_match == previous_match && w > 0)
                s[w - 1].end = s[i].end;
            else
                s[w++] = s[i];
            previous_match = s[i].is_match;
        }
        break;
    case SPLIT_MERGED_WITH_NEXT: {
        /* folded from the end, written from the end: slot r is read before it is written */
        size_t top = n;
        for (size_t r = n; r-- > 0;) {
            int match = s[r].is_match;
            if (match && !previous_match && top < n)
                s[top].start = s[r].start;
            else
                s[--top] = s[r];
            previous_match = match;
        }
        if (top < n) memmove(s, s + top, (n - top) * sizeof *s);
        w = n - top;
        break;
    }
    }
    l->n = w;
}

/* Passes each segment of the list (non-empty ones) to the next step. */
static cinfer_status pass_segments(encoder *e, int step, const char *s, const seg_list *l,
                                   int at_origin) {
    for (size_t i = 0; i < l->n; i++) {
        const segment *g = &l->items[i];
        if (g->end > g->start)
            CI_TRY(tok_pre_tokenize(e, step + 1, s + g->start, g->end - g->start,
                                    at_origin && g->start == 0));
    }
    return CINFER_OK;
}

static cinfer_status byte_level_map(const byte_table *bytes, const char *s, size_t n, buf *out) {
    out->len = 0;
    CI_TRY(tok_buf_reserve(out, 2 * n));
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        memcpy(out->data + out->len, bytes->utf8[b], bytes->len[b]);
        out->len += bytes->len[b];
    }
    out->data[out->len] = '\0';
    return CINFER_OK;
}

/* Step `step` of the pre-tokenizer on one piece; past the last step, the model. at_origin: the
 * piece starts at offset 0 of the original text (Metaspace's prepend_scheme "first"). */
cinfer_status tok_pre_tokenize(encoder *e, int step, const char *s, size_t n, int at_origin) {
    const cinfer_tokenizer *t = e->tok;
    if (step == t->n_pre) return tok_bpe_encode(e, s, n);
    if (n == 0) return CINFER_OK;
    const pre_step *p = &t->pre[step];
    seg_list *segs = &e->pre_segments[step];
    buf *a = &e->pre_scratch[step][0], *b = &e->pre_scratch[step][1];
    switch (p->kind) {
    case PRE_SPLIT:
        CI_TRY(regex_segments(e, p->pattern, s, n, segs));
        apply_behavior(segs, p->behavior, p->invert);
        return pass_segments(e, step, s, segs, at_origin);
    case PRE_BYTE_LEVEL: {
        const char *src = s;
        size_t len = n;
        if (p->add_prefix_space && s[0] != ' ') {
            a->len = 0;
            CI_TRY(tok_buf_append(a, " ", 1));
            CI_TRY(tok_buf_append(a, s, n));
            src = a->data, len = a->len;
        }
        if (!p->pattern) {
            CI_TRY(byte_level_map(&t->bytes, src, len, b));
            return tok_pre_tokenize(e, step + 1, b->data, b->len, at_origin);
        }
        CI_TRY(regex_segments(e, p->pattern, src, len, segs));
        for (size_t i = 0; i < segs->n; i++) {
            const segment *g = &segs->items[i];
            if (g->end == g->start) continue;
            CI_TRY(byte_level_map(&t->bytes, src + g->start, g->end - g->start, b));
            CI_TRY(tok_pre_tokenize(e, step + 1, b->data, b->len, at_origin && g->start == 0));
        }
        return CINFER_OK;
    }
    case PRE_METASPACE: {
        a->len = 0;
        int starts_with =
            n >= p->replacement_len && memcmp(s, p->replacement, p->replacement_len) == 0;
        /* a text that starts with a space gets the replacement from the replace below */
        if (s[0] == ' ') starts_with = 1;
        if (!starts_with &&
            (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && at_origin)))
            CI_TRY(tok_buf_append(a, p->replacement, p->replacement_len));
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                CI_TRY(tok_buf_append(a, p->replacement, p->replacement_len));
            else
                CI_TRY(tok_buf_append(a, s + i, 1));
        }
        if (!p->split) return tok_pre_tokenize(e, step + 1, a->data, a->len, at_origin);
        segs->n = 0;
        size_t previous = 0;
        for (size_t i = 0; i + p->replacement_len <= a->len;) {
            if (memcmp(a->data + i, p->replacement, p->replacement_len) == 0) {
                if (i > previous) CI_TRY(tok_seg_push(segs, previous, i, -1, 0));
                CI_TRY(tok_seg_push(segs, i, i + p->replacement_len, -1, 1));
                i += p->replacement_len;
                previous = i;
            } else {
                i++;
            }
        }
        if (previous < a->len) CI_TRY(tok_seg_push(segs, previous, a->len, -1, 0));
        apply_behavior(segs, SPLIT_MERGED_WITH_NEXT, 0);
        return pass_segments(e, step, a->data, segs, at_origin);
    }
    }
    return CINFER_OK;
}
