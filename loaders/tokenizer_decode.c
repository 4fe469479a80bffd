/* Decoding: the decoder steps (ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace) run as a
 * stream (cinfer_detokenizer), cinfer_decode on top of it, and one token's bytes for display
 * (cinfer_tokenizer_token_bytes). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "utf8.h"

static const char REPLACEMENT_CHARACTER[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* The decoder runs as a chain of steps that each take token strings and pass on the same token
 * strings tokenizers' decode_chain would, only later when a step must wait (ByteFallback waits for
 * the end of a run of byte tokens, ByteLevel for the rest of a character). After Fuse or ByteLevel
 * the tokens are one string, seen in chunks. */
typedef struct dec_state {
    buf pending;    /* ByteFallback: the run of bytes; ByteLevel: an unfinished character */
    buf scratch;    /* the token this step passes on */
    long n_tokens;  /* tokens seen (Metaspace: the first one is special) */
    int start_left; /* Strip on a fused stream: characters still to strip at its start */
    long held;      /* Strip on a fused stream: content characters held at its end */
} dec_state;

struct cinfer_detokenizer {
    const cinfer_tokenizer *tok;
    int skip_special;
    dec_state *state; /* [n_dec] */
    long n_joined;    /* tokens that reached the output (without a decoder they join with " ") */
    buf out;          /* what this call returns */
};

static cinfer_status dec_push(cinfer_detokenizer *d, int k, const char *s, size_t n);

static void dec_reset(cinfer_detokenizer *d) {
    for (int k = 0; k < d->tok->n_dec; k++) {
        dec_state *st = &d->state[k];
        st->pending.len = 0;
        st->n_tokens = 0;
        st->start_left = d->tok->dec[k].strip_start;
        st->held = 0;
    }
    d->n_joined = 0;
}

/* tokenizers' ByteFallback flush: a valid run is one string, an invalid one a U+FFFD per byte. */
static cinfer_status flush_byte_run(cinfer_detokenizer *d, int k) {
    buf *run = &d->state[k].pending;
    if (run->len == 0) return CINFER_OK;
    size_t n = run->len;
    run->len = 0; /* the bytes stay in place until this returns */
    if (utf8_valid_prefix(run->data, n) == n) return dec_push(d, k + 1, run->data, n);
    for (size_t i = 0; i < n; i++) CI_TRY(dec_push(d, k + 1, REPLACEMENT_CHARACTER, 3));
    return CINFER_OK;
}

/* The complete characters at the front of pending, lossily, as Rust's from_utf8_lossy writes
 * them; an unfinished character stays unless at_end. */
static cinfer_status lossy_utf8(buf *pending, buf *out, int at_end) {
    out->len = 0;
    size_t i = 0, n = pending->len;
    while (i < n) {
        int len = utf8_char((const unsigned char *)pending->data + i, n - i, NULL);
        if (len > 0) {
            CI_TRY(tok_buf_append(out, pending->data + i, (size_t)len));
            i += (size_t)len;
        } else if (len < 0) {
            CI_TRY(tok_buf_append(out, REPLACEMENT_CHARACTER, 3));
            i += (size_t)-len;
        } else if (at_end) {
            CI_TRY(tok_buf_append(out, REPLACEMENT_CHARACTER, 3));
            i = n;
        } else {
            break;
        }
    }
    if (i < n) memmove(pending->data, pending->data + i, n - i);
    pending->len = n - i;
    return CINFER_OK;
}

static int is_byte_token(const char *s, size_t n, unsigned char *byte) {
    /* tokenizers: six bytes "<0x..>" whose middle two u8::from_str_radix(16) accepts */
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return 0;
    int value = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (v < 0 && !(i == 3 && c == '+')) return 0; /* from_str_radix takes a leading '+' */
        value = v < 0 ? 0 : value * 16 + v;
    }
    *byte = (unsigned char)value;
    return 1;
}

static cinfer_status dec_push(cinfer_detokenizer *d, int k, const char *s, size_t n) {
    const cinfer_tokenizer *t = d->tok;
    if (k == t->n_dec) {
        if (!t->has_decoder && d->n_joined > 0) CI_TRY(tok_buf_append(&d->out, " ", 1));
        d->n_joined++;
        return tok_buf_append(&d->out, s, n);
    }
    const dec_step *step = &t->dec[k];
    dec_state *st = &d->state[k];
    buf *o = &st->scratch;
    st->n_tokens++;
    switch (step->kind) {
    case DEC_FUSE: return dec_push(d, k + 1, s, n);
    case DEC_BYTE_FALLBACK: {
        unsigned char byte;
        if (is_byte_token(s, n, &byte)) return tok_buf_append(&st->pending, (const char *)&byte, 1);
        CI_TRY(flush_byte_run(d, k));
        return dec_push(d, k + 1, s, n);
    }
    case DEC_BYTE_LEVEL: {
        /* a token's characters back to bytes; one that has a character outside the table
         * (an added token with a space) stays as it is */
        size_t mark = st->pending.len;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int len = utf8_char((const unsigned char *)s + i, n - i, &cp);
            if (len <= 0 || cp >= 324 || t->bytes.byte_of[cp] < 0) {
                st->pending.len = mark;
                CI_TRY(tok_buf_append(&st->pending, s, n));
                break;
            }
            char byte = (char)t->bytes.byte_of[cp];
            CI_TRY(tok_buf_append(&st->pending, &byte, 1));
            i += (size_t)len;
        }
        CI_TRY(lossy_utf8(&st->pending, o, 0));
        return o->len ? dec_push(d, k + 1, o->data, o->len) : CINFER_OK;
    }
    case DEC_REPLACE:
        CI_TRY(tok_replace_all(t->name, step->pattern, s, n, step->text, step->text_len, o));
        return dec_push(d, k + 1, o->data, o->len);
    case DEC_METASPACE: {
        o->len = 0;
        int first = st->n_tokens == 1 && step->prepend != PREPEND_NEVER;
        for (size_t i = 0; i < n;) {
            if (n - i >= step->character_len &&
                memcmp(s + i, step->character, step->character_len) == 0) {
                /* tokenizers drops every replacement of the first token, not only a leading one */
                if (!first) CI_TRY(tok_buf_append(o, " ", 1));
                i += step->character_len;
            } else {
                CI_TRY(tok_buf_append(o, s + i, 1));
                i++;
            }
        }
        return dec_push(d, k + 1, o->data, o->len);
    }
    case DEC_STRIP: {
        const char *c = step->character;
        size_t cl = step->character_len, i = 0, end = n;
        if (!step->fused_input) {
            for (int m = 0; m < step->strip_start && end - i >= cl && memcmp(s + i, c, cl) == 0;
                 m++)
                i += cl;
            for (int m = 0;
                 m < step->strip_stop && end - i >= cl && memcmp(s + end - cl, c, cl) == 0; m++)
                end -= cl;
            return dec_push(d, k + 1, s + i, end - i);
        }
        /* one string in chunks: its start is the start of the stream, its end is at finish */
        while (st->start_left > 0 && i < n) {
            if (n - i >= cl && memcmp(s + i, c, cl) == 0) {
                i += cl;
                st->start_left--;
            } else {
                st->start_left = 0;
            }
        }
        if (step->strip_stop == 0) return i < n ? dec_push(d, k + 1, s + i, n - i) : CINFER_OK;
        long trailing = 0;
        while (end - i >= cl && memcmp(s + end - cl, c, cl) == 0) end -= cl, trailing++;
        if (end > i) {
            for (; st->held > 0; st->held--) CI_TRY(dec_push(d, k + 1, c, cl));
            CI_TRY(dec_push(d, k + 1, s + i, end - i));
        }
        st->held += trailing;
        return CINFER_OK;
    }
    }
    return CINFER_OK;
}

/* Flushes what step k holds into step k+1, then the steps after it. */
static cinfer_status dec_finish(cinfer_detokenizer *d, int k) {
    const cinfer_tokenizer *t = d->tok;
    if (k == t->n_dec) return CINFER_OK;
    const dec_step *step = &t->dec[k];
    dec_state *st = &d->state[k];
    if (step->kind == DEC_BYTE_FALLBACK) CI_TRY(flush_byte_run(d, k));
    if (step->kind == DEC_BYTE_LEVEL) {
        CI_TRY(lossy_utf8(&st->pending, &st->scratch, 1));
        if (st->scratch.len) CI_TRY(dec_push(d, k + 1, st->scratch.data, st->scratch.len));
    }
    if (step->kind == DEC_STRIP && step->fused_input)
        for (; st->held > step->strip_stop; st->held--)
            CI_TRY(dec_push(d, k + 1, step->character, step->character_len));
    return dec_finish(d, k + 1);
}

cinfer_status cinfer_detokenizer_create(const cinfer_tokenizer *tok, int skip_special,
                                        cinfer_detokenizer **out) {
    *out = NULL;
    cinfer_detokenizer *d = calloc(1, sizeof *d);
    CI_CHECK_ALLOC(d, sizeof *d);
    d->state = calloc((size_t)tok->n_dec + 1, sizeof *d->state);
    if (!d->state) {
        free(d);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory creating a detokenizer");
    }
    d->tok = tok;
    d->skip_special = skip_special;
    dec_reset(d);
    *out = d;
    return CINFER_OK;
}

cinfer_status cinfer_detokenize(cinfer_detokenizer *d, int32_t id, const char **text,
                                size_t *n_bytes) {
    const cinfer_tokenizer *t = d->tok;
    d->out.len = 0;
    *text = "";
    *n_bytes = 0;
    if (id < 0 || id >= t->vocab_size)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "token id %d is outside the vocabulary [0, %d)", id,
                       t->vocab_size);
    if (!t->pieces[id] || (d->skip_special && t->special[id])) return CINFER_OK;
    CI_TRY(dec_push(d, 0, t->pieces[id], t->piece_len[id]));
    if (d->out.data) *text = d->out.data;
    *n_bytes = d->out.len;
    return CINFER_OK;
}

void cinfer_detokenizer_finish(cinfer_detokenizer *d, const char **text, size_t *n_bytes) {
    d->out.len = 0;
    if (dec_finish(d, 0) != CINFER_OK) d->out.len = 0; /* only out of memory: nothing to give */
    *text = d->out.data ? d->out.data : "";
    *n_bytes = d->out.len;
    dec_reset(d);
}

void cinfer_detokenizer_free(cinfer_detokenizer *d) {
    if (!d) return;
    for (int k = 0; k < d->tok->n_dec; k++) {
        tok_buf_free(&d->state[k].pending);
        tok_buf_free(&d->state[k].scratch);
    }
    free(d->state);
    tok_buf_free(&d->out);
    free(d);
}

cinfer_status cinfer_decode(const cinfer_tokenizer *tok, const int32_t *ids, int n_ids,
                            int skip_special, char **text) {
    *text = NULL;
    cinfer_detokenizer *d;
    CI_TRY(cinfer_detokenizer_create(tok, skip_special, &d));
    buf all = {0};
    cinfer_status st = tok_buf_reserve(&all, 16);
    for (int i = 0; i < n_ids && st == CINFER_OK; i++) {
        const char *piece;
        size_t n;
        st = cinfer_detokenize(d, ids[i], &piece, &n);
        if (st == CINFER_OK) st = tok_buf_append(&all, piece, n);
    }
    if (st == CINFER_OK) {
        d->out.len = 0;
        st = dec_finish(d, 0);
        if (st == CINFER_OK) st = tok_buf_append(&all, d->out.data ? d->out.data : "", d->out.len);
    }
    cinfer_detokenizer_free(d);
    if (st != CINFER_OK) {
        tok_buf_free(&all);
        return st;
    }
    *text = all.data;
    return CINFER_OK;
}

cinfer_status cinfer_tokenizer_token_bytes(const cinfer_tokenizer *tok, int32_t id, char **bytes,
                                           size_t *n_bytes) {
    *bytes = NULL;
    *n_bytes = 0;
    if (id < 0 || id >= tok->vocab_size || !tok->pieces[id])
        return CI_FAIL(CINFER_ERR_ARGUMENT, "token id %d is not in the vocabulary", id);
    buf cur = {0}, next = {0};
    cinfer_status st = tok_buf_append(&cur, tok->pieces[id], tok->piece_len[id]);
    for (int k = 0; k < tok->n_dec && st == CINFER_OK; k++) {
        const dec_step *step = &tok->dec[k];
        unsigned char byte;
        next.len = 0;
        if (step->kind == DEC_BYTE_FALLBACK && is_byte_token(cur.data, cur.len, &byte)) {
            st = tok_buf_append(&next, (const char *)&byte, 1);
        } else if (step->kind == DEC_REPLACE) {
            st = tok_replace_all(tok->name, step->pattern, cur.data, cur.len, step->text,
                                 step->text_len, &next);
        } else if (step->kind == DEC_METASPACE) {
            for (size_t i = 0; i < cur.len && st == CINFER_OK;) {
                int hit = cur.len - i >= step->character_len &&
                          memcmp(cur.data + i, step->character, step->character_len) == 0;
                st = tok_buf_append(&next, hit ? " " : cur.data + i, 1);
                i += hit ? step->character_len : 1;
            }
        } else if (step->kind == DEC_BYTE_LEVEL) {
            for (size_t i = 0; i < cur.len && st == CINFER_OK;) {
                uint32_t cp;
                int len = utf8_char((const unsigned char *)cur.data + i, cur.len - i, &cp);
                if (len <= 0 || cp >= 324 || tok->bytes.byte_of[cp] < 0) {
                    next.len = 0;
                    st = tok_buf_append(&next, cur.data, cur.len);
                    break;
                }
                char b = (char)tok->bytes.byte_of[cp];
                st = tok_buf_append(&next, &b, 1);
                i += (size_t)len;
            }
        } else {
            continue; /* Fuse, Strip: about the whole text, not one token */
        }
        buf swap = cur;
        cur = next;
        next = swap;
    }
    tok_buf_free(&next);
    if (st != CINFER_OK) {
        tok_buf_free(&cur);
        return st;
    }
    *bytes = cur.data;
    *n_bytes = cur.len;
    return CINFER_OK;
}
