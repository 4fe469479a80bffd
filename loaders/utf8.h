/* UTF-8 for the tokenizer: one character decoded strictly (or how many bytes a lossy decoder
 * replaces), the valid prefix of a text, a code point encoded, Rust's char::is_whitespace, and the
 * start of the character before an offset.
 *
 * static inline: the encoder and the decoder call these once per character, and the build does
 * not inline across files. */
#ifndef CINFER_UTF8_H
#define CINFER_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the UTF-8 character at s[0, n): > 0 for a valid character; -k when the first k bytes
 * can never start one (k is what a lossy decoder replaces by one U+FFFD, as Rust's
 * from_utf8_lossy does); 0 when s is a valid but unfinished start of one. */
static inline int utf8_char(const unsigned char *s, size_t n, uint32_t *codepoint) {
    unsigned char c = s[0];
    if (c < 0x80) {
        if (codepoint) *codepoint = c;
        return 1;
    }
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    uint32_t cp = c & (0x3F >> need);
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned char b = s[i];
        if (b < lo || b > hi) return -i;
        lo = 0x80, hi = 0xBF;
        cp = (cp << 6) | (b & 0x3F);
    }
    if (codepoint) *codepoint = cp;
    return need + 1;
}

/* Offset of the first byte that is not part of valid UTF-8, or n. */
static inline size_t utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int len = utf8_char((const unsigned char *)s + i, n - i, NULL);
        if (len <= 0) return i;
        i += (size_t)len;
    }
    return n;
}

/* Writes the UTF-8 of code point cp to out (4 bytes at most); returns its length. */
static inline size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Rust's char::is_whitespace: the White_Space property. */
static inline int utf8_is_whitespace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Start of the UTF-8 character that ends at s[end) (s is valid UTF-8). */
static inline size_t utf8_previous(const char *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

#endif
