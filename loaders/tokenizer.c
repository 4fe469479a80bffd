/* Hugging Face tokenizers in C: tokenizer.json read with cJSON, BPE encoding with the pipeline of
 * the `tokenizers` library (added tokens -> normalizer -> pre-tokenizer -> model ->
 * post-processor), and decoding that can stream.
 *
 * Every step below names the part of tokenizers it reproduces; where tokenizers has a quirk
 * (Metaspace's decoder drops every "▁" of the first token, ByteFallback writes one U+FFFD per
 * byte of an invalid run, a rejected single_word match still ends the search there), the quirk is
 * kept, because the test is equality with tokenizers' ids and text.
 *
 * Encoding keeps no state in the tokenizer: each cinfer_tokenize call has its own scratch
 * (encoder), so a loaded tokenizer can be shared by threads. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "json.h"
#include "read_file.h"

enum {
    MAX_TOKEN_ID = (1 << 24) - 1, /* 16.7 M: far above any real vocabulary, bounds the tables */
    MAX_PRE_STEPS = 8,            /* pre-tokenizers in a Sequence, nested ones included */
    MAX_STEPS = 16,               /* normalizers, decoders, post-processors in a Sequence */
    CACHE_MAX_WORD = 64,          /* longer pre-tokens are rare and not worth caching */
    CACHE_MAX_ENTRIES = 1 << 16,
};
static const size_t TOKENIZER_JSON_MAX_BYTES = (size_t)1 << 30;
static const size_t CONFIG_JSON_MAX_BYTES = (size_t)64 << 20;

/* The pattern GPT-2's ByteLevel pre-tokenizer splits with when use_regex is true. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char REPLACEMENT_CHARACTER[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* ---- small containers ------------------------------------------------------------------------ */

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static cinfer_status buf_reserve(buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return CINFER_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    char *grown = realloc(b->data, cap);
    CI_CHECK_ALLOC(grown, cap);
    b->data = grown;
    b->cap = cap;
    return CINFER_OK;
}

static cinfer_status buf_append(buf *b, const char *s, size_t n) {
    CI_TRY(buf_reserve(b, n));
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return CINFER_OK;
}

static void buf_free(buf *b) {
    free(b->data);
    *b = (buf){0};
}

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
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

static cinfer_status str_table_init(str_table *t, size_t expected) {
    size_t capacity = 16;
    while (capacity < 2 * expected + 2) capacity *= 2;
    t->slots = calloc(capacity, sizeof *t->slots);
    CI_CHECK_ALLOC(t->slots, capacity * sizeof *t->slots);
    t->capacity = capacity;
    t->count = 0;
    return CINFER_OK;
}

static str_slot *str_table_slot(const str_table *t, const char *key, size_t len, uint32_t hash) {
    size_t mask = t->capacity - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        str_slot *s = &t->slots[i];
        if (!s->key || (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0))
            return s;
    }
}

static int32_t str_table_get(const str_table *t, const char *key, size_t len) {
    if (!t->slots) return -1;
    const str_slot *s = str_table_slot(t, key, len, hash_bytes(key, len));
    return s->key ? s->value : -1;
}

/* Returns 1 if the key was new. The table must have room (sized by init, or grown by caller). */
static int str_table_put(str_table *t, const char *key, size_t len, int32_t value) {
    uint32_t hash = hash_bytes(key, len);
    str_slot *s = str_table_slot(t, key, len, hash);
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

static uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static merge_slot *merge_table_slot(const merge_table *t, uint64_t key) {
    size_t mask = t->capacity - 1;
    for (size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;; i = (i + 1) & mask)
        if (t->slots[i].key == key || t->slots[i].key == UINT64_MAX) return &t->slots[i];
}

static const merge_slot *merge_table_get(const merge_table *t, int32_t a, int32_t b) {
    if (!t->slots) return NULL;
    const merge_slot *s = merge_table_slot(t, pair_key(a, b));
    return s->key == UINT64_MAX ? NULL : s;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

/* Length of the UTF-8 character at s[0, n): > 0 for a valid character; -k when the first k bytes
 * can never start one (k is what a lossy decoder replaces by one U+FFFD, as Rust's
 * from_utf8_lossy does); 0 when s is a valid but unfinished start of one. */
static int utf8_char(const unsigned char *s, size_t n, uint32_t *codepoint) {
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
static size_t utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int len = utf8_char((const unsigned char *)s + i, n - i, NULL);
        if (len <= 0) return i;
        i += (size_t)len;
    }
    return n;
}

static size_t utf8_encode(uint32_t cp, char *out) {
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
static int is_unicode_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Start of the UTF-8 character that ends at s[end) (s is valid UTF-8). */
static size_t utf8_previous(const char *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

/* ---- GPT-2's byte <-> character table ------------------------------------------------------- */

/* ByteLevel maps every byte to a printable character: bytes that are printable in Latin-1 stand
 * for themselves, the other 68 take the code points from 256 up, in byte order. */
typedef struct byte_table {
    char utf8[256][2];
    unsigned char len[256];
    int16_t byte_of[324]; /* code point -> byte, -1 if no byte maps there */
} byte_table;

static void byte_table_init(byte_table *out) {
    byte_table t;
    for (int i = 0; i < 324; i++) t.byte_of[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = printable ? b : next++;
        char enc[4];
        t.len[b] = (unsigned char)utf8_encode((uint32_t)cp, enc);
        memcpy(t.utf8[b], enc, t.len[b]);
        t.byte_of[cp] = (int16_t)b;
    }
    *out = t;
}

/* ---- the tokenizer --------------------------------------------------------------------------- */

typedef struct added_token {
    char *content;
    size_t len;
    char *normalized_content; /* what the normalized matcher looks for (NULL: content) */
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} added_token;

/* Added tokens to look for in one kind of text (raw, or normalized), longest first per first
 * byte, so that the first hit at a position is the leftmost-longest match tokenizers takes. */
typedef struct matcher {
    struct match_entry {
        const char *text; /* the content, normalized for the normalized matcher */
        size_t len;
        int token; /* index into added */
    } * entries;
    int n_entries;
    int first[257]; /* entries starting with byte b: [first[b], first[b+1]) */
} matcher;

typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS
} split_behavior;

typedef enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef enum norm_kind { NORM_PREPEND, NORM_REPLACE } norm_kind;
typedef struct norm_step {
    norm_kind kind;
    pcre2_code *pattern; /* Replace: what to find (a String pattern is compiled as a literal) */
    char *text;          /* Prepend: the prefix; Replace: the replacement */
    size_t text_len;
} norm_step;

typedef enum pre_kind { PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE } pre_kind;
typedef struct pre_step {
    pre_kind kind;
    pcre2_code *pattern; /* Split's pattern; ByteLevel's GPT-2 pattern (NULL: use_regex false) */
    split_behavior behavior;
    int invert;
    int add_prefix_space; /* ByteLevel */
    char replacement[8];  /* Metaspace: the UTF-8 of its replacement character */
    size_t replacement_len;
    prepend_scheme prepend;
    int split;
} pre_step;

typedef enum dec_kind {
    DEC_BYTE_LEVEL,
    DEC_BYTE_FALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_REPLACE,
    DEC_METASPACE
} dec_kind;
typedef struct dec_step {
    dec_kind kind;
    int fused_input; /* an earlier step joined the tokens: this one sees one token in chunks */
    pcre2_code *pattern;
    char *text; /* Replace: the replacement */
    size_t text_len;
    char character[8]; /* Strip: content; Metaspace: replacement (UTF-8) */
    size_t character_len;
    int strip_start, strip_stop;
    prepend_scheme prepend;
} dec_step;

/* A post-processor template for one sequence: ids, with -1 where the sequence goes. */
typedef struct template_step {
    int32_t *items;
    int n_items;
} template_step;

struct cinfer_tokenizer {
    char *name; /* "DIR/tokenizer.json", for messages */
    int vocab_size;
    char **pieces; /* [vocab_size] by id; an added token's content wins over the model's string */
    uint32_t *piece_len;
    unsigned char *special; /* [vocab_size] */
    str_table model_vocab;  /* model.vocab only: what BPE looks pieces up in */
    char *vocab_text;       /* the model_vocab keys, NUL-separated */
    str_table added_vocab;  /* added token contents */
    merge_table merges;

    int32_t unk_id; /* -1: no unk_token; -2: named but not in the vocabulary */
    char *unk_token;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256]; /* <0xNN> tokens for byte_fallback, -1 when absent */
    byte_table bytes;      /* ByteLevel's byte <-> character table */

    added_token *added;
    int n_added;
    matcher raw_matcher, normalized_matcher;
    pcre2_code *word_char; /* for single_word: Rust's char::is_alphanumeric */

    norm_step norm[MAX_STEPS];
    int n_norm;
    pre_step pre[MAX_PRE_STEPS];
    int n_pre;
    template_step post[MAX_STEPS];
    int n_post, has_post_processor;
    dec_step dec[MAX_STEPS];
    int n_dec, has_decoder;

    char *bos_token, *eos_token, *chat_template;
    int add_bos_token, add_eos_token; /* tokenizer_config.json, used without a post_processor */
};

/* ---- reading tokenizer.json ------------------------------------------------------------------ */

/* A JSON path for messages: "pre_tokenizer.pretokenizers[1]". */
typedef struct json_path {
    char text[256];
} json_path;

static json_path path_child(const json_path *parent, const char *key) {
    json_path p;
    snprintf(p.text, sizeof p.text, "%.190s%s%.60s", parent->text, parent->text[0] ? "." : "",
             key); /* cut, not overflowed, if a path were ever that deep */
    return p;
}

static json_path path_index(const json_path *parent, int index) {
    json_path p;
    snprintf(p.text, sizeof p.text, "%.200s[%d]", parent->text, index);
    return p;
}

static const char *json_type_name(const cJSON *v) {
    if (!v) return "missing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

static const cJSON *field(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* A string field; absent or null gives fallback when allowed (required = 0). */
static cinfer_status get_string(const char *file, const cJSON *obj, const json_path *at,
                                const char *key, int required, const char **out) {
    const cJSON *v = field(obj, key);
    if ((!v || cJSON_IsNull(v)) && !required) {
        *out = NULL;
        return CINFER_OK;
    }
    if (!cJSON_IsString(v))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be a string, got %s", file,
                       path_child(at, key).text, json_type_name(v));
    *out = v->valuestring;
    return CINFER_OK;
}

static cinfer_status get_bool(const char *file, const cJSON *obj, const json_path *at,
                              const char *key, int fallback, int *out) {
    const cJSON *v = field(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = fallback;
        return CINFER_OK;
    }
    if (!cJSON_IsBool(v))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be true or false, got %s", file,
                       path_child(at, key).text, json_type_name(v));
    *out = cJSON_IsTrue(v);
    return CINFER_OK;
}

static cinfer_status get_int(const char *file, const cJSON *obj, const json_path *at,
                             const char *key, int minimum, int maximum, int *out) {
    const cJSON *v = field(obj, key);
    /* the range check comes first: casting a double beyond int64's range is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= minimum && v->valuedouble <= maximum) ||
        v->valuedouble != floor(v->valuedouble))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an integer in [%d, %d], got %s", file,
                       path_child(at, key).text, minimum, maximum,
                       cJSON_IsNumber(v) ? "a number out of range" : json_type_name(v));
    *out = (int)v->valuedouble;
    return CINFER_OK;
}

static cinfer_status get_type(const char *file, const cJSON *obj, const json_path *at,
                              const char **type) {
    if (!cJSON_IsObject(obj))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object or null, got %s", file,
                       at->text, json_type_name(obj));
    return get_string(file, obj, at, "type", 1, type);
}

static cinfer_status unsupported_type(const char *file, const json_path *at, const char *type,
                                      const char *supported) {
    return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s.type '%s' is not supported (supported: %s)",
                   file, at->text, type, supported);
}

static char *copy_string(const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

/* Compiles a tokenizers pattern: {"String": "..."} literally or {"Regex": "..."} with Unicode
 * properties (as Oniguruma reads it), JIT-compiled when the machine allows. */
static cinfer_status compile_pattern(const char *file, const cJSON *obj, const json_path *at,
                                     pcre2_code **out) {
    *out = NULL;
    const cJSON *v = field(obj, "pattern");
    json_path p = path_child(at, "pattern");
    const cJSON *literal = cJSON_IsObject(v) ? field(v, "String") : NULL;
    const cJSON *regex = cJSON_IsObject(v) ? field(v, "Regex") : NULL;
    const cJSON *text = literal ? literal : regex;
    if (!cJSON_IsString(text))
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: %s must be {\"String\": \"...\"} or {\"Regex\": \"...\"}, got %s", file,
                       p.text, json_type_name(v));
    size_t n = strlen(text->valuestring);
    if (utf8_valid_prefix(text->valuestring, n) != n)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s is not valid UTF-8", file, p.text);
    uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP); /* LITERAL takes no UCP */
    int error;
    PCRE2_SIZE offset;
    pcre2_code *code =
        pcre2_compile((PCRE2_SPTR)text->valuestring, n, options, &error, &offset, NULL);
    if (!code) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof message);
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: %s: PCRE2 cannot compile '%s' at offset %zu: %s", file, p.text,
                       text->valuestring, (size_t)offset, (const char *)message);
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* without JIT the interpreter runs it */
    *out = code;
    return CINFER_OK;
}

static pcre2_code *compile_fixed(const char *pattern) {
    int error;
    PCRE2_SIZE offset;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, NULL);
    if (code) pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return code;
}

/* A one-character string field (Metaspace replacement, Strip content) as UTF-8. */
static cinfer_status get_character(const char *file, const cJSON *obj, const json_path *at,
                                   const char *key, const char *fallback, char out[8],
                                   size_t *len) {
    const char *s = NULL;
    CI_TRY(get_string(file, obj, at, key, fallback == NULL, &s));
    if (!s) s = fallback;
    size_t n = strlen(s);
    int clen = n ? utf8_char((const unsigned char *)s, n, NULL) : 0;
    if (clen <= 0 || (size_t)clen != n)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be one character, got '%s'", file,
                       path_child(at, key).text, s);
    memcpy(out, s, n);
    *len = n;
    return CINFER_OK;
}

static cinfer_status parse_prepend_scheme(const char *file, const cJSON *obj, const json_path *at,
                                          prepend_scheme *out) {
    const char *scheme;
    CI_TRY(get_string(file, obj, at, "prepend_scheme", 0, &scheme));
    if (!scheme) {
        /* files older than prepend_scheme say add_prefix_space, which meant "always" */
        int add_prefix_space;
        CI_TRY(get_bool(file, obj, at, "add_prefix_space", 1, &add_prefix_space));
        *out = add_prefix_space ? PREPEND_ALWAYS : PREPEND_NEVER;
    } else if (strcmp(scheme, "always") == 0)
        *out = PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0)
        *out = PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0)
        *out = PREPEND_NEVER;
    else
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: %s.prepend_scheme '%s' is not supported (supported: always, first, "
                       "never)",
                       file, at->text, scheme);
    return CINFER_OK;
}

/* Parses one step of a pipeline (a normalizer, pre-tokenizer, decoder or post-processor). */
typedef cinfer_status (*step_parser)(cinfer_tokenizer *t, const cJSON *v, const json_path *at);

/* A "Sequence" step: each item of its array `key`, in order, as a step of the same kind. */
static cinfer_status parse_sequence(cinfer_tokenizer *t, const cJSON *v, const json_path *at,
                                    const char *key, step_parser parse_item) {
    const cJSON *list = field(v, key);
    json_path lp = path_child(at, key);
    if (!cJSON_IsArray(list))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an array, got %s", t->name, lp.text,
                       json_type_name(list));
    int i = 0;
    for (const cJSON *item = list->child; item; item = item->next, i++) {
        json_path ip = path_index(&lp, i);
        CI_TRY(parse_item(t, item, &ip));
    }
    return CINFER_OK;
}

static cinfer_status parse_normalizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "normalizers", parse_normalizer);
    if (t->n_norm >= MAX_STEPS)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d normalizers", t->name,
                       at->text, MAX_STEPS);
    norm_step *s = &t->norm[t->n_norm];
    const char *text;
    if (strcmp(type, "Prepend") == 0) {
        CI_TRY(get_string(t->name, v, at, "prepend", 1, &text));
        s->kind = NORM_PREPEND;
    } else if (strcmp(type, "Replace") == 0) {
        CI_TRY(get_string(t->name, v, at, "content", 1, &text));
        t->n_norm++; /* counted from here, so that free() releases the pattern */
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_norm--;
        s->kind = NORM_REPLACE;
    } else {
        return unsupported_type(t->name, at, type, "Sequence, Prepend, Replace");
    }
    t->n_norm++;
    s->text_len = strlen(text);
    s->text = copy_string(text, s->text_len);
    CI_CHECK_ALLOC(s->text, s->text_len + 1);
    return CINFER_OK;
}

static cinfer_status parse_behavior(const char *file, const cJSON *v, const json_path *at,
                                    split_behavior *out) {
    const char *b;
    CI_TRY(get_string(file, v, at, "behavior", 1, &b));
    static const struct {
        const char *name;
        split_behavior behavior;
    } names[] = {{"Removed", SPLIT_REMOVED},
                 {"Isolated", SPLIT_ISOLATED},
                 {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", SPLIT_CONTIGUOUS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(b, names[i].name) == 0) {
            *out = names[i].behavior;
            return CINFER_OK;
        }
    return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                   "%s: %s.behavior '%s' is not supported (supported: Removed, Isolated, "
                   "MergedWithPrevious, MergedWithNext, Contiguous)",
                   file, at->text, b);
}

static cinfer_status parse_pre_tokenizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "pretokenizers", parse_pre_tokenizer);
    if (t->n_pre >= MAX_PRE_STEPS)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d pre-tokenizers", t->name,
                       at->text, MAX_PRE_STEPS);
    pre_step *s = &t->pre[t->n_pre];
    if (strcmp(type, "Split") == 0) {
        s->kind = PRE_SPLIT;
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_pre++; /* counted now, so that free() releases the pattern on a later error */
        CI_TRY(parse_behavior(t->name, v, at, &s->behavior));
        CI_TRY(get_bool(t->name, v, at, "invert", 0, &s->invert));
    } else if (strcmp(type, "ByteLevel") == 0) {
        s->kind = PRE_BYTE_LEVEL;
        int use_regex;
        CI_TRY(get_bool(t->name, v, at, "add_prefix_space", 1, &s->add_prefix_space));
        CI_TRY(get_bool(t->name, v, at, "use_regex", 1, &use_regex));
        if (use_regex) {
            s->pattern = compile_fixed(GPT2_PATTERN);
            CI_CHECK_ALLOC(s->pattern, sizeof GPT2_PATTERN);
        }
        t->n_pre++;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = PRE_METASPACE;
        CI_TRY(get_character(t->name, v, at, "replacement", NULL, s->replacement,
                             &s->replacement_len));
        CI_TRY(parse_prepend_scheme(t->name, v, at, &s->prepend));
        CI_TRY(get_bool(t->name, v, at, "split", 1, &s->split));
        t->n_pre++;
    } else {
        return unsupported_type(t->name, at, type, "Sequence, Split, ByteLevel, Metaspace");
    }
    return CINFER_OK;
}

static cinfer_status parse_decoder(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    t->has_decoder = 1;
    if (strcmp(type, "Sequence") == 0) return parse_sequence(t, v, at, "decoders", parse_decoder);
    if (t->n_dec >= MAX_STEPS)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d decoders", t->name, at->text,
                       MAX_STEPS);
    dec_step *s = &t->dec[t->n_dec];
    int fused = t->n_dec > 0 &&
                (t->dec[t->n_dec - 1].fused_input || t->dec[t->n_dec - 1].kind == DEC_FUSE ||
                 t->dec[t->n_dec - 1].kind == DEC_BYTE_LEVEL);
    s->fused_input = fused;
    if (strcmp(type, "ByteLevel") == 0) {
        s->kind = DEC_BYTE_LEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        s->kind = DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        s->kind = DEC_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        s->kind = DEC_STRIP;
        CI_TRY(get_character(t->name, v, at, "content", NULL, s->character, &s->character_len));
        CI_TRY(get_int(t->name, v, at, "start", 0, 1 << 20, &s->strip_start));
        CI_TRY(get_int(t->name, v, at, "stop", 0, 1 << 20, &s->strip_stop));
    } else if (strcmp(type, "Replace") == 0) {
        s->kind = DEC_REPLACE;
        const char *content;
        CI_TRY(get_string(t->name, v, at, "content", 1, &content));
        s->text_len = strlen(content);
        s->text = copy_string(content, s->text_len);
        CI_CHECK_ALLOC(s->text, s->text_len + 1);
        t->n_dec++; /* counted from here, so that free() releases what it holds */
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_dec--;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = DEC_METASPACE;
        CI_TRY(get_character(t->name, v, at, "replacement", NULL, s->character, &s->character_len));
        CI_TRY(parse_prepend_scheme(t->name, v, at, &s->prepend));
    } else {
        return unsupported_type(t->name, at, type,
                                "Sequence, ByteLevel, ByteFallback, Fuse, Strip, Replace, "
                                "Metaspace");
    }
    t->n_dec++;
    /* After Fuse or ByteLevel (which joins its output), the tokens are one string, which the
     * stream sees in pieces; only steps that act at its two ends can follow. */
    if (fused && s->kind != DEC_STRIP && s->kind != DEC_FUSE)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: %s.type '%s' after a Fuse or ByteLevel decoder is not supported "
                       "(supported there: Strip, Fuse)",
                       t->name, at->text, type);
    return CINFER_OK;
}

static cinfer_status add_template(cinfer_tokenizer *t, const json_path *at, int32_t *items,
                                  int n_items) {
    if (t->n_post >= MAX_STEPS) {
        free(items);
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d post-processors", t->name,
                       at->text, MAX_STEPS);
    }
    t->post[t->n_post++] = (template_step){items, n_items};
    return CINFER_OK;
}

static cinfer_status token_id_of(const cinfer_tokenizer *t, const cJSON *pair, const json_path *at,
                                 int32_t *id) {
    /* Roberta/Bert processors name a token as ["<s>", 0] */
    const cJSON *num = cJSON_IsArray(pair) ? cJSON_GetArrayItem(pair, 1) : NULL;
    if (cJSON_GetArraySize(pair) != 2 || !cJSON_IsString(cJSON_GetArrayItem(pair, 0)) ||
        !cJSON_IsNumber(num) || num->valuedouble < 0 || num->valuedouble > MAX_TOKEN_ID ||
        num->valuedouble != (double)(int32_t)num->valuedouble)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be [\"token\", id] with an id in [0, %d]",
                       t->name, at->text, MAX_TOKEN_ID);
    *id = (int32_t)num->valuedouble;
    return CINFER_OK;
}

static cinfer_status parse_template(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    json_path sp = path_child(at, "single");
    const cJSON *single = field(v, "single");
    const cJSON *specials = field(v, "special_tokens");
    json_path tp = path_child(at, "special_tokens");
    if (!cJSON_IsArray(single))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an array, got %s", t->name, sp.text,
                       json_type_name(single));
    if (!cJSON_IsObject(specials))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object, got %s", t->name, tp.text,
                       json_type_name(specials));
    int n_items = 0, capacity = 0, i = 0;
    int32_t *items = NULL;
    for (const cJSON *item = single->child; item; item = item->next, i++) {
        json_path ip = path_index(&sp, i);
        const cJSON *seq = field(item, "Sequence"), *special = field(item, "SpecialToken");
        const cJSON *ids = NULL;
        if (seq) {
            const char *name;
            cinfer_status st = get_string(t->name, seq, &ip, "id", 1, &name);
            if (st == CINFER_OK && strcmp(name, "A") != 0)
                st = CI_FAIL(CINFER_ERR_FORMAT,
                             "%s: %s.Sequence.id must be \"A\" in the single template, got '%s'",
                             t->name, ip.text, name);
            if (st != CINFER_OK) {
                free(items);
                return st;
            }
        } else if (special) {
            const char *name;
            cinfer_status st = get_string(t->name, special, &ip, "id", 1, &name);
            const cJSON *entry = st == CINFER_OK ? field(specials, name) : NULL;
            ids = entry ? field(entry, "ids") : NULL;
            if (st == CINFER_OK && !cJSON_IsArray(ids))
                st = CI_FAIL(CINFER_ERR_FORMAT,
                             "%s: %s names special token '%s', which %s does not list with ids",
                             t->name, ip.text, name, tp.text);
            if (st != CINFER_OK) {
                free(items);
                return st;
            }
        } else {
            free(items);
            return CI_FAIL(CINFER_ERR_FORMAT,
                           "%s: %s must be {\"Sequence\": ...} or {\"SpecialToken\": ...}", t->name,
                           ip.text);
        }
        int add = ids ? cJSON_GetArraySize(ids) : 1;
        if (n_items + add > capacity) {
            capacity = 2 * (n_items + add);
            int32_t *grown = realloc(items, (size_t)capacity * sizeof *items);
            if (!grown) {
                free(items);
                return CI_FAIL(CINFER_ERR_MEMORY, "out of memory reading %s", sp.text);
            }
            items = grown;
        }
        if (!ids) {
            items[n_items++] = -1;
            continue;
        }
        for (const cJSON *id = ids->child; id; id = id->next) {
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > MAX_TOKEN_ID ||
                id->valuedouble != (double)(int32_t)id->valuedouble) {
                free(items);
                return CI_FAIL(CINFER_ERR_FORMAT,
                               "%s: %s: the ids of the special token at %s must be integers in "
                               "[0, %d]",
                               t->name, tp.text, ip.text, MAX_TOKEN_ID);
            }
            items[n_items++] = (int32_t)id->valuedouble;
        }
    }
    return add_template(t, at, items, n_items);
}

static cinfer_status parse_post_processor(cinfer_tokenizer *t, const cJSON *v,
                                          const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    t->has_post_processor = 1;
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "processors", parse_post_processor);
    if (strcmp(type, "ByteLevel") == 0) return CINFER_OK; /* offsets only; ids unchanged */
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(t, v, at);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        json_path cp = path_child(at, "cls"), ep = path_child(at, "sep");
        CI_TRY(token_id_of(t, field(v, "cls"), &cp, &cls));
        CI_TRY(token_id_of(t, field(v, "sep"), &ep, &sep));
        int32_t *items = malloc(3 * sizeof *items);
        CI_CHECK_ALLOC(items, 3 * sizeof *items);
        items[0] = cls, items[1] = -1, items[2] = sep;
        return add_template(t, at, items, 3);
    }
    return unsupported_type(t->name, at, type,
                            "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, "
                            "BertProcessing");
}

static cinfer_status set_piece(cinfer_tokenizer *t, int32_t id, const char *piece, size_t len) {
    char *copy = copy_string(piece, len);
    CI_CHECK_ALLOC(copy, len + 1);
    free(t->pieces[id]);
    t->pieces[id] = copy;
    t->piece_len[id] = (uint32_t)len;
    return CINFER_OK;
}

static cinfer_status check_id(const char *file, const cJSON *v, const char *what, int32_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > MAX_TOKEN_ID ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an integer id in [0, %d], got %s", file,
                       what, MAX_TOKEN_ID,
                       cJSON_IsNumber(v) ? "a number out of range" : json_type_name(v));
    *id = (int32_t)v->valuedouble;
    return CINFER_OK;
}

/* The merge pair at merges[i]: "a b" (one space) or ["a", "b"]. */
static cinfer_status merge_pair(const char *file, const cJSON *m, int i, const char **a,
                                size_t *a_len, const char **b, size_t *b_len) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *space = strchr(s, ' ');
        if (!space || strchr(space + 1, ' '))
            return CI_FAIL(CINFER_ERR_FORMAT,
                           "%s: model.merges[%d] '%s' must be two tokens separated by one space",
                           file, i, s);
        *a = s, *a_len = (size_t)(space - s);
        *b = space + 1, *b_len = strlen(space + 1);
        return CINFER_OK;
    }
    if (cJSON_GetArraySize(m) != 2 || !cJSON_IsString(cJSON_GetArrayItem(m, 0)) ||
        !cJSON_IsString(cJSON_GetArrayItem(m, 1)))
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: model.merges[%d] must be \"a b\" or [\"a\", \"b\"], got %s", file, i,
                       json_type_name(m));
    *a = cJSON_GetArrayItem(m, 0)->valuestring;
    *b = cJSON_GetArrayItem(m, 1)->valuestring;
    *a_len = strlen(*a), *b_len = strlen(*b);
    return CINFER_OK;
}

static cinfer_status parse_merges(cinfer_tokenizer *t, const cJSON *merges) {
    if (!cJSON_IsArray(merges))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.merges must be an array, got %s", t->name,
                       json_type_name(merges));
    size_t n = (size_t)cJSON_GetArraySize(merges), capacity = 16;
    while (capacity < 2 * n + 2) capacity *= 2;
    t->merges.slots = malloc(capacity * sizeof *t->merges.slots);
    CI_CHECK_ALLOC(t->merges.slots, capacity * sizeof *t->merges.slots);
    t->merges.capacity = capacity;
    for (size_t i = 0; i < capacity; i++) t->merges.slots[i].key = UINT64_MAX;
    buf joined = {0};
    int rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a = NULL, *b = NULL;
        size_t a_len = 0, b_len = 0;
        cinfer_status st = merge_pair(t->name, m, rank, &a, &a_len, &b, &b_len);
        int32_t ia = -1, ib = -1, merged = -1;
        if (st == CINFER_OK) {
            ia = str_table_get(&t->model_vocab, a, a_len);
            ib = str_table_get(&t->model_vocab, b, b_len);
            joined.len = 0;
            st = buf_append(&joined, a, a_len);
            if (st == CINFER_OK) st = buf_append(&joined, b, b_len);
        }
        if (st == CINFER_OK) merged = str_table_get(&t->model_vocab, joined.data, joined.len);
        if (st == CINFER_OK && (ia < 0 || ib < 0 || merged < 0))
            st = CI_FAIL(CINFER_ERR_FORMAT, "%s: model.merges[%d]: '%s' is not in model.vocab",
                         t->name, rank,
                         ia < 0   ? a
                         : ib < 0 ? b
                                  : joined.data);
        if (st != CINFER_OK) {
            buf_free(&joined);
            return st;
        }
        /* a pair listed twice keeps its later rank, as tokenizers' map does */
        merge_slot *s = merge_table_slot(&t->merges, pair_key(ia, ib));
        *s = (merge_slot){pair_key(ia, ib), rank, merged};
    }
    buf_free(&joined);
    return CINFER_OK;
}

static cinfer_status parse_model(cinfer_tokenizer *t, const cJSON *model, int *max_id) {
    json_path at = {"model"};
    if (!cJSON_IsObject(model))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model must be an object, got %s", t->name,
                       json_type_name(model));
    const char *type;
    CI_TRY(get_string(t->name, model, &at, "type", 0, &type));
    if (type && strcmp(type, "BPE") != 0) return unsupported_type(t->name, &at, type, "BPE");
    const cJSON *dropout = field(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: model.dropout must be null (BPE dropout is for training)", t->name);
    const char *prefix, *suffix, *unk;
    CI_TRY(get_string(t->name, model, &at, "continuing_subword_prefix", 0, &prefix));
    CI_TRY(get_string(t->name, model, &at, "end_of_word_suffix", 0, &suffix));
    if ((prefix && prefix[0]) || (suffix && suffix[0]))
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: model.%s '%s' is not supported (only null or \"\")", t->name,
                       prefix && prefix[0] ? "continuing_subword_prefix" : "end_of_word_suffix",
                       prefix && prefix[0] ? prefix : suffix);
    CI_TRY(get_string(t->name, model, &at, "unk_token", 0, &unk));
    CI_TRY(get_bool(t->name, model, &at, "fuse_unk", 0, &t->fuse_unk));
    CI_TRY(get_bool(t->name, model, &at, "byte_fallback", 0, &t->byte_fallback));
    CI_TRY(get_bool(t->name, model, &at, "ignore_merges", 0, &t->ignore_merges));

    const cJSON *vocab = field(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.vocab must be an object, got %s", t->name,
                       json_type_name(vocab));
    CI_TRY(str_table_init(&t->model_vocab, (size_t)cJSON_GetArraySize(vocab)));
    /* the table's keys live in one block of ours: the JSON is freed after loading */
    size_t text_bytes = 1;
    for (const cJSON *e = vocab->child; e; e = e->next) text_bytes += strlen(e->string) + 1;
    t->vocab_text = malloc(text_bytes);
    CI_CHECK_ALLOC(t->vocab_text, text_bytes);
    char *key = t->vocab_text;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = -1;
        char what[96];
        snprintf(what, sizeof what, "model.vocab['%.60s']", e->string);
        CI_TRY(check_id(t->name, e, what, &id));
        size_t len = strlen(e->string);
        memcpy(key, e->string, len + 1);
        int fresh = str_table_put(&t->model_vocab, key, len, id);
        key += len + 1;
        if (!fresh)
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.vocab lists '%s' twice", t->name,
                           e->string);
        if (id > *max_id) *max_id = id;
    }
    if (unk) {
        t->unk_token = copy_string(unk, strlen(unk));
        CI_CHECK_ALLOC(t->unk_token, strlen(unk) + 1);
        t->unk_id = str_table_get(&t->model_vocab, unk, strlen(unk));
        if (t->unk_id < 0) t->unk_id = -2; /* an error only if a text needs it, as in tokenizers */
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = str_table_get(&t->model_vocab, name, 6);
    }
    return parse_merges(t, field(model, "merges"));
}

static cinfer_status parse_added_tokens(cinfer_tokenizer *t, const cJSON *list, int *max_id) {
    if (!list || cJSON_IsNull(list)) return CINFER_OK;
    if (!cJSON_IsArray(list))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: added_tokens must be an array, got %s", t->name,
                       json_type_name(list));
    int n = cJSON_GetArraySize(list);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    CI_CHECK_ALLOC(t->added, ((size_t)n + 1) * sizeof *t->added);
    CI_TRY(str_table_init(&t->added_vocab, (size_t)n));
    json_path lp = {"added_tokens"};
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        json_path ip = path_index(&lp, i);
        added_token *a = &t->added[t->n_added];
        const char *content;
        if (!cJSON_IsObject(e))
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object, got %s", t->name, ip.text,
                           json_type_name(e));
        CI_TRY(get_string(t->name, e, &ip, "content", 1, &content));
        json_path idp = path_child(&ip, "id");
        CI_TRY(check_id(t->name, field(e, "id"), idp.text, &a->id));
        CI_TRY(get_bool(t->name, e, &ip, "special", 0, &a->special));
        CI_TRY(get_bool(t->name, e, &ip, "lstrip", 0, &a->lstrip));
        CI_TRY(get_bool(t->name, e, &ip, "rstrip", 0, &a->rstrip));
        CI_TRY(get_bool(t->name, e, &ip, "single_word", 0, &a->single_word));
        CI_TRY(get_bool(t->name, e, &ip, "normalized", !a->special, &a->normalized));
        a->len = strlen(content);
        if (a->len == 0)
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s.content must not be empty", t->name, ip.text);
        a->content = copy_string(content, a->len);
        CI_CHECK_ALLOC(a->content, a->len + 1);
        t->n_added++;
        if (!str_table_put(&t->added_vocab, a->content, a->len, a->id))
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s: '%s' is listed twice", t->name, ip.text,
                           content);
        if (a->id > *max_id) *max_id = a->id;
    }
    return CINFER_OK;
}

static int compare_entries(const void *pa, const void *pb) {
    const struct match_entry *a = pa, *b = pb;
    unsigned char fa = (unsigned char)a->text[0], fb = (unsigned char)b->text[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1; /* longest first */
    return a->token - b->token;
}

static cinfer_status normalize(const cinfer_tokenizer *t, const char *s, size_t n, buf *out,
                               buf *tmp);

static cinfer_status build_matchers(cinfer_tokenizer *t) {
    buf norm = {0}, tmp = {0};
    for (int which = 0; which < 2; which++) {
        matcher *m = which ? &t->normalized_matcher : &t->raw_matcher;
        m->entries = calloc((size_t)t->n_added + 1, sizeof *m->entries);
        CI_CHECK_ALLOC(m->entries, ((size_t)t->n_added + 1) * sizeof *m->entries);
        for (int i = 0; i < t->n_added; i++) {
            const added_token *a = &t->added[i];
            if (a->normalized != which) continue;
            const char *text = a->content;
            size_t len = a->len;
            if (which && t->n_norm) {
                /* tokenizers looks for normalized tokens by their normalized content */
                cinfer_status st = normalize(t, a->content, a->len, &norm, &tmp);
                if (st != CINFER_OK) {
                    buf_free(&norm), buf_free(&tmp);
                    return st;
                }
                char *copy = copy_string(norm.data, norm.len);
                if (!copy) {
                    buf_free(&norm), buf_free(&tmp);
                    return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for added tokens");
                }
                t->added[i].normalized_content = copy;
                text = copy, len = norm.len;
            }
            if (len == 0) continue;
            m->entries[m->n_entries++] = (struct match_entry){text, len, i};
        }
        qsort(m->entries, (size_t)m->n_entries, sizeof *m->entries, compare_entries);
        int e = 0;
        for (int b = 0; b <= 256; b++) {
            while (e < m->n_entries && (unsigned char)m->entries[e].text[0] < b) e++;
            m->first[b] = e;
        }
    }
    buf_free(&norm), buf_free(&tmp);
    return CINFER_OK;
}

static cinfer_status parse_tokenizer_json(cinfer_tokenizer *t, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: the top level must be an object, got %s", t->name,
                       json_type_name(root));
    int max_id = -1;
    CI_TRY(parse_model(t, field(root, "model"), &max_id));
    CI_TRY(parse_added_tokens(t, field(root, "added_tokens"), &max_id));
    json_path np = {"normalizer"}, pp = {"pre_tokenizer"}, op = {"post_processor"},
              dp = {"decoder"};
    CI_TRY(parse_normalizer(t, field(root, "normalizer"), &np));
    CI_TRY(parse_pre_tokenizer(t, field(root, "pre_tokenizer"), &pp));
    CI_TRY(parse_post_processor(t, field(root, "post_processor"), &op));
    CI_TRY(parse_decoder(t, field(root, "decoder"), &dp));

    /* ids to strings: the model's, then added tokens over them (tokenizers asks those first) */
    t->vocab_size = max_id + 1;
    size_t n = (size_t)t->vocab_size + 1;
    t->pieces = calloc(n, sizeof *t->pieces);
    t->piece_len = calloc(n, sizeof *t->piece_len);
    t->special = calloc(n, 1);
    CI_CHECK_ALLOC(t->pieces, n * sizeof *t->pieces);
    CI_CHECK_ALLOC(t->piece_len, n * sizeof *t->piece_len);
    CI_CHECK_ALLOC(t->special, n);
    for (size_t i = 0; i < t->model_vocab.capacity; i++) {
        const str_slot *s = &t->model_vocab.slots[i];
        if (!s->key) continue;
        if (t->pieces[s->value])
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.vocab gives id %d to both '%s' and '%s'",
                           t->name, s->value, t->pieces[s->value], s->key);
        CI_TRY(set_piece(t, s->value, s->key, s->len));
    }
    for (int i = 0; i < t->n_added; i++) {
        const added_token *a = &t->added[i];
        CI_TRY(set_piece(t, a->id, a->content, a->len));
        t->special[a->id] = (unsigned char)a->special;
    }
    for (int i = 0; i < t->n_post; i++)
        for (int k = 0; k < t->post[i].n_items; k++)
            if (t->post[i].items[k] >= t->vocab_size ||
                (t->post[i].items[k] >= 0 && !t->pieces[t->post[i].items[k]]))
                return CI_FAIL(CINFER_ERR_FORMAT,
                               "%s: post_processor adds token id %d, which no token has", t->name,
                               t->post[i].items[k]);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].single_word && !t->word_char) {
            t->word_char = compile_fixed("[\\p{Alphabetic}\\p{N}]");
            CI_CHECK_ALLOC(t->word_char, 32);
        }
    return build_matchers(t); /* last: it normalizes the contents of normalized added tokens */
}

cinfer_status tokenizer_parse(const char *name, const char *text, size_t length,
                              cinfer_tokenizer **out) {
    *out = NULL;
    cinfer_tokenizer *t = calloc(1, sizeof *t);
    CI_CHECK_ALLOC(t, sizeof *t);
    byte_table_init(&t->bytes);
    t->unk_id = -1;
    t->name = copy_string(name, strlen(name));
    if (!t->name) {
        free(t);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory loading %s", name);
    }
    cJSON *root;
    cinfer_status st = ci_json_parse(name, text, length, &root);
    if (st == CINFER_OK) {
        st = parse_tokenizer_json(t, root);
        cJSON_Delete(root);
    }
    if (st != CINFER_OK) {
        cinfer_tokenizer_free(t);
        return st;
    }
    *out = t;
    return CINFER_OK;
}

/* ---- tokenizer_config.json, special_tokens_map.json, chat_template.jinja -------------------- */

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* bos_token and the like: a string, or an AddedToken object {"content": ...}, or null. */
static cinfer_status config_token(const char *file, const cJSON *root, const char *key,
                                  char **out) {
    const cJSON *v = field(root, key);
    if (!v || cJSON_IsNull(v) || *out) return CINFER_OK;
    if (cJSON_IsObject(v)) v = field(v, "content");
    if (!cJSON_IsString(v))
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: %s must be a string or an object with a \"content\" string", file, key);
    *out = copy_string(v->valuestring, strlen(v->valuestring));
    CI_CHECK_ALLOC(*out, strlen(v->valuestring) + 1);
    return CINFER_OK;
}

static cinfer_status read_json_file(const char *path, cJSON **root) {
    char *text;
    size_t length;
    CI_TRY(ci_read_file(path, CONFIG_JSON_MAX_BYTES, &text, &length));
    cinfer_status st = ci_json_parse(path, text, length, root);
    free(text);
    if (st == CINFER_OK && !cJSON_IsObject(*root)) {
        cJSON_Delete(*root);
        *root = NULL;
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: the top level must be an object", path);
    }
    return st;
}

static cinfer_status parse_chat_template(const char *file, const cJSON *v, char **out) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *text = NULL;
    if (cJSON_IsString(v)) {
        text = v->valuestring;
    } else if (cJSON_IsArray(v)) {
        /* a list of named templates: {"name": "default", "template": "..."} */
        for (const cJSON *e = v->child; e; e = e->next) {
            const cJSON *name = field(e, "name"), *tmpl = field(e, "template");
            if (!cJSON_IsString(name) || !cJSON_IsString(tmpl))
                return CI_FAIL(CINFER_ERR_FORMAT,
                               "%s: chat_template entries must be {\"name\": string, "
                               "\"template\": string}",
                               file);
            if (strcmp(name->valuestring, "default") == 0) text = tmpl->valuestring;
        }
        if (!text) return CINFER_OK;
    } else {
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: chat_template must be a string or a list, got %s",
                       file, json_type_name(v));
    }
    *out = copy_string(text, strlen(text));
    CI_CHECK_ALLOC(*out, strlen(text) + 1);
    return CINFER_OK;
}

static cinfer_status load_configs(cinfer_tokenizer *t, const char *dir) {
    size_t n = strlen(dir) + 64;
    char *path = malloc(n);
    CI_CHECK_ALLOC(path, n);
    cinfer_status st = CINFER_OK;
    cJSON *root = NULL;
    snprintf(path, n, "%s/tokenizer_config.json", dir);
    if (file_exists(path)) {
        st = read_json_file(path, &root);
        if (st == CINFER_OK) st = config_token(path, root, "bos_token", &t->bos_token);
        if (st == CINFER_OK) st = config_token(path, root, "eos_token", &t->eos_token);
        json_path at = {""};
        if (st == CINFER_OK) st = get_bool(path, root, &at, "add_bos_token", 0, &t->add_bos_token);
        if (st == CINFER_OK) st = get_bool(path, root, &at, "add_eos_token", 0, &t->add_eos_token);
        if (st == CINFER_OK)
            st = parse_chat_template(path, field(root, "chat_template"), &t->chat_template);
        cJSON_Delete(root);
        root = NULL;
    }
    snprintf(path, n, "%s/special_tokens_map.json", dir);
    if (st == CINFER_OK && file_exists(path)) {
        st = read_json_file(path, &root);
        if (st == CINFER_OK) st = config_token(path, root, "bos_token", &t->bos_token);
        if (st == CINFER_OK) st = config_token(path, root, "eos_token", &t->eos_token);
        cJSON_Delete(root);
    }
    snprintf(path, n, "%s/chat_template.jinja", dir);
    if (st == CINFER_OK && !t->chat_template && file_exists(path)) {
        size_t length;
        st = ci_read_file(path, CONFIG_JSON_MAX_BYTES, &t->chat_template, &length);
    }
    free(path);
    return st;
}

cinfer_status cinfer_tokenizer_load(const char *dir, cinfer_tokenizer **out) {
    *out = NULL;
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    CI_CHECK_ALLOC(path, n);
    snprintf(path, n, "%s/tokenizer.json", dir);
    char *text;
    size_t length;
    cinfer_status st = ci_read_file(path, TOKENIZER_JSON_MAX_BYTES, &text, &length);
    if (st == CINFER_OK) {
        st = tokenizer_parse(path, text, length, out);
        free(text);
    }
    free(path);
    if (st == CINFER_OK) st = load_configs(*out, dir);
    if (st != CINFER_OK) {
        cinfer_tokenizer_free(*out);
        *out = NULL;
    }
    return st;
}

void cinfer_tokenizer_free(cinfer_tokenizer *t) {
    if (!t) return;
    if (t->pieces)
        for (int i = 0; i < t->vocab_size; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_len);
    free(t->special);
    free(t->model_vocab.slots);
    free(t->vocab_text);
    free(t->added_vocab.slots);
    free(t->merges.slots);
    free(t->unk_token);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].normalized_content);
    }
    free(t->added);
    free(t->raw_matcher.entries);
    free(t->normalized_matcher.entries);
    pcre2_code_free(t->word_char);
    for (int i = 0; i < t->n_norm; i++) {
        pcre2_code_free(t->norm[i].pattern);
        free(t->norm[i].text);
    }
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].pattern);
    for (int i = 0; i < t->n_post; i++) free(t->post[i].items);
    for (int i = 0; i < t->n_dec; i++) {
        pcre2_code_free(t->dec[i].pattern);
        free(t->dec[i].text);
    }
    free(t->bos_token);
    free(t->eos_token);
    free(t->chat_template);
    free(t->name);
    free(t);
}

/* ---- encoding -------------------------------------------------------------------------------- */

typedef struct segment {
    size_t start, end;
    int32_t token; /* an added token's id, or -1 for text */
    int is_match;  /* pre-tokenizer splits: whether the pattern matched here */
} segment;

typedef struct seg_list {
    segment *items;
    size_t n, cap;
} seg_list;

static cinfer_status seg_push(seg_list *l, size_t start, size_t end, int32_t token, int is_match) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        segment *grown = realloc(l->items, cap * sizeof *grown);
        CI_CHECK_ALLOC(grown, cap * sizeof *grown);
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->n++] = (segment){start, end, token, is_match};
    return CINFER_OK;
}

/* BPE's working word: a linked list of symbols over an array, merged in place. */
typedef struct symbol {
    int32_t id, prev, next;
    uint32_t len; /* bytes of the word it covers; 0 once merged into its left neighbour */
} symbol;

typedef struct merge_candidate {
    int32_t rank, pos, merged;
} merge_candidate;

typedef struct cache_entry {
    uint32_t first, count; /* into encoder.cache_ids */
} cache_entry;

typedef struct encoder {
    const cinfer_tokenizer *tok;
    int32_t *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *match;
    pcre2_match_context *match_context;
    pcre2_jit_stack *jit_stack;
    seg_list added_segments[2]; /* raw text, then normalized pieces */
    buf normalized, norm_tmp;
    seg_list pre_segments[MAX_PRE_STEPS];
    buf pre_scratch[MAX_PRE_STEPS][2];
    symbol *symbols;
    size_t cap_symbols;
    merge_candidate *heap;
    size_t n_heap, cap_heap;
    /* pre-tokens seen before in this text and their ids; the words are kept in blocks that
     * never move, since the table points at them */
    str_table cache;
    cache_entry *cache_entries;
    size_t n_cache, cap_cache;
    char **word_blocks;
    size_t n_word_blocks, block_used;
    int32_t *cache_ids;
    size_t n_cache_ids, cap_cache_ids;
} encoder;

static cinfer_status push_id(encoder *e, int32_t id) {
    if (e->n_ids == e->cap_ids) {
        size_t cap = e->cap_ids ? 2 * e->cap_ids : 256;
        int32_t *grown = realloc(e->ids, cap * sizeof *grown);
        CI_CHECK_ALLOC(grown, cap * sizeof *grown);
        e->ids = grown;
        e->cap_ids = cap;
    }
    e->ids[e->n_ids++] = id;
    return CINFER_OK;
}

static void encoder_free(encoder *e) {
    free(e->ids);
    pcre2_match_data_free(e->match);
    pcre2_match_context_free(e->match_context);
    pcre2_jit_stack_free(e->jit_stack);
    for (int i = 0; i < 2; i++) free(e->added_segments[i].items);
    buf_free(&e->normalized);
    buf_free(&e->norm_tmp);
    for (int i = 0; i < MAX_PRE_STEPS; i++) {
        free(e->pre_segments[i].items);
        buf_free(&e->pre_scratch[i][0]);
        buf_free(&e->pre_scratch[i][1]);
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
        if (start > previous) CI_TRY(seg_push(out, previous, start, -1, 0));
        CI_TRY(seg_push(out, start, end, -1, 1));
        previous = end;
        if (end > start) {
            position = end;
        } else { /* an empty match: look again one character later */
            if (start >= n) break;
            int len = utf8_char((const unsigned char *)s + start, n - start, NULL);
            position = start + (size_t)(len > 0 ? len : 1);
        }
    }
    if (previous < n) CI_TRY(seg_push(out, previous, n, -1, 0));
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
                uint32_t c;
                utf8_char((const unsigned char *)s + q, p - q, &c);
                if (!is_unicode_space(c)) break;
                p = q;
            }
            start = p > start_offset ? p : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t c;
                int len = utf8_char((const unsigned char *)s + stop, n - stop, &c);
                if (len <= 0 || !is_unicode_space(c)) break;
                stop += (size_t)len;
            }
        }
        if (start_offset < start) CI_TRY(seg_push(out, start_offset, start, -1, 0));
        CI_TRY(seg_push(out, start, stop, a->id, 0));
        start_offset = stop;
    }
    if (start_offset < n) CI_TRY(seg_push(out, start_offset, n, -1, 0));
    return CINFER_OK;
}

/* One pass of pcre2_substitute (literal replacement, every match) into out. */
static cinfer_status replace_all(const char *name, const pcre2_code *re, const char *s, size_t n,
                                 const char *with, size_t with_len, buf *out) {
    PCRE2_SIZE size = n + 16;
    for (int attempt = 0; attempt < 2; attempt++) {
        CI_TRY(buf_reserve(out, size + 1));
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
static cinfer_status normalize(const cinfer_tokenizer *t, const char *s, size_t n, buf *out,
                               buf *tmp) {
    out->len = 0;
    CI_TRY(buf_append(out, s, n));
    for (int i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        tmp->len = 0;
        if (st->kind == NORM_PREPEND) {
            if (out->len == 0) continue; /* tokenizers prepends nothing to an empty string */
            CI_TRY(buf_append(tmp, st->text, st->text_len));
            CI_TRY(buf_append(tmp, out->data, out->len));
        } else {
            CI_TRY(replace_all(t->name, st->pattern, out->data, out->len, st->text, st->text_len,
                               tmp));
        }
        buf swap = *out;
        *out = *tmp;
        *tmp = swap;
    }
    return CINFER_OK;
}

/* ---- BPE ------------------------------------------------------------------------------------- */

static int candidate_before(const merge_candidate *a, const merge_candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static cinfer_status heap_push(encoder *e, merge_candidate c) {
    if (e->n_heap == e->cap_heap) {
        size_t cap = e->cap_heap ? 2 * e->cap_heap : 64;
        merge_candidate *grown = realloc(e->heap, cap * sizeof *grown);
        CI_CHECK_ALLOC(grown, cap * sizeof *grown);
        e->heap = grown;
        e->cap_heap = cap;
    }
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
    const merge_slot *m = merge_table_get(&e->tok->merges, s[pos].id, s[s[pos].next].id);
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
        int32_t id = str_table_get(&t->model_vocab, w + i, (size_t)len);
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
        const merge_slot *m = merge_table_get(&t->merges, left->id, right->id);
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
    CI_TRY(str_table_init(&bigger, cap));
    for (size_t i = 0; i < e->cache.capacity; i++)
        if (e->cache.slots[i].key)
            str_table_put(&bigger, e->cache.slots[i].key, e->cache.slots[i].len,
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
    str_table_put(&e->cache, key, n, (int32_t)e->n_cache++);
    return CINFER_OK;
}

/* tokenizers' BPE::tokenize for one pre-token. */
static cinfer_status bpe_encode(encoder *e, const char *w, size_t n) {
    const cinfer_tokenizer *t = e->tok;
    if (n == 0) return CINFER_OK;
    if (t->ignore_merges) { /* Llama 3: a pre-token that is itself in the vocabulary is one */
        int32_t id = str_table_get(&t->model_vocab, w, n);
        if (id >= 0) return push_id(e, id);
    }
    int32_t cached = n <= CACHE_MAX_WORD ? str_table_get(&e->cache, w, n) : -1;
    if (cached >= 0) {
        const cache_entry *c = &e->cache_entries[cached];
        for (uint32_t k = 0; k < c->count; k++) CI_TRY(push_id(e, e->cache_ids[c->first + k]));
        return CINFER_OK;
    }
    size_t count;
    CI_TRY(bpe_merge_word(e, w, n, &count));
    size_t first = e->n_ids;
    for (int32_t i = count ? 0 : -1; i >= 0; i = e->symbols[i].next)
        CI_TRY(push_id(e, e->symbols[i].id));
    /* a word of characters no token has, with no unk_token, gives no ids (and e->ids may be NULL)
     */
    return cache_put(e, w, n, e->n_ids > first ? e->ids + first : NULL, e->n_ids - first);
}

/* ---- pre-tokenizers -------------------------------------------------------------------------- */

static cinfer_status pre_tokenize(encoder *e, int step, const char *s, size_t n, int at_origin);

/* Passes each segment of the list (non-empty ones) to the next step. */
static cinfer_status pass_segments(encoder *e, int step, const char *s, const seg_list *l,
                                   int at_origin) {
    for (size_t i = 0; i < l->n; i++) {
        const segment *g = &l->items[i];
        if (g->end > g->start)
            CI_TRY(pre_tokenize(e, step + 1, s + g->start, g->end - g->start,
                                at_origin && g->start == 0));
    }
    return CINFER_OK;
}

static cinfer_status byte_level_map(const byte_table *bytes, const char *s, size_t n, buf *out) {
    out->len = 0;
    CI_TRY(buf_reserve(out, 2 * n));
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
static cinfer_status pre_tokenize(encoder *e, int step, const char *s, size_t n, int at_origin) {
    const cinfer_tokenizer *t = e->tok;
    if (step == t->n_pre) return bpe_encode(e, s, n);
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
            CI_TRY(buf_append(a, " ", 1));
            CI_TRY(buf_append(a, s, n));
            src = a->data, len = a->len;
        }
        if (!p->pattern) {
            CI_TRY(byte_level_map(&t->bytes, src, len, b));
            return pre_tokenize(e, step + 1, b->data, b->len, at_origin);
        }
        CI_TRY(regex_segments(e, p->pattern, src, len, segs));
        for (size_t i = 0; i < segs->n; i++) {
            const segment *g = &segs->items[i];
            if (g->end == g->start) continue;
            CI_TRY(byte_level_map(&t->bytes, src + g->start, g->end - g->start, b));
            CI_TRY(pre_tokenize(e, step + 1, b->data, b->len, at_origin && g->start == 0));
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
            CI_TRY(buf_append(a, p->replacement, p->replacement_len));
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                CI_TRY(buf_append(a, p->replacement, p->replacement_len));
            else
                CI_TRY(buf_append(a, s + i, 1));
        }
        if (!p->split) return pre_tokenize(e, step + 1, a->data, a->len, at_origin);
        segs->n = 0;
        size_t previous = 0;
        for (size_t i = 0; i + p->replacement_len <= a->len;) {
            if (memcmp(a->data + i, p->replacement, p->replacement_len) == 0) {
                if (i > previous) CI_TRY(seg_push(segs, previous, i, -1, 0));
                CI_TRY(seg_push(segs, i, i + p->replacement_len, -1, 1));
                i += p->replacement_len;
                previous = i;
            } else {
                i++;
            }
        }
        if (previous < a->len) CI_TRY(seg_push(segs, previous, a->len, -1, 0));
        apply_behavior(segs, SPLIT_MERGED_WITH_NEXT, 0);
        return pass_segments(e, step, a->data, segs, at_origin);
    }
    }
    return CINFER_OK;
}

/* ---- encode: added tokens, normalizer, pre-tokenizer, model, post-processor ----------------- */

static cinfer_status encode_text(encoder *e, const char *text, size_t n) {
    const cinfer_tokenizer *t = e->tok;
    seg_list *raw = &e->added_segments[0], *norm = &e->added_segments[1];
    CI_TRY(find_added(t, e, &t->raw_matcher, text, n, raw));
    for (size_t i = 0; i < raw->n; i++) {
        const segment *g = &raw->items[i];
        if (g->token >= 0) {
            CI_TRY(push_id(e, g->token));
            continue;
        }
        CI_TRY(normalize(t, text + g->start, g->end - g->start, &e->normalized, &e->norm_tmp));
        const char *s = e->normalized.data;
        CI_TRY(find_added(t, e, &t->normalized_matcher, s, e->normalized.len, norm));
        for (size_t k = 0; k < norm->n; k++) {
            const segment *h = &norm->items[k];
            if (h->token >= 0)
                CI_TRY(push_id(e, h->token));
            else if (h->end > h->start)
                CI_TRY(pre_tokenize(e, 0, s + h->start, h->end - h->start,
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
            CI_TRY(push_id(e, 0));
            memmove(e->ids + 1, e->ids, (e->n_ids - 1) * sizeof *e->ids);
            e->ids[0] = bos;
        }
        if (t->add_eos_token && eos >= 0) CI_TRY(push_id(e, eos));
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
        st = push_id(&e, 0);
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

/* ---- vocabulary queries ---------------------------------------------------------------------- */

int cinfer_tokenizer_vocab_size(const cinfer_tokenizer *tok) { return tok->vocab_size; }

const char *cinfer_tokenizer_piece(const cinfer_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->vocab_size ? tok->pieces[id] : NULL;
}

int32_t cinfer_tokenizer_find(const cinfer_tokenizer *tok, const char *piece) {
    size_t n = strlen(piece);
    int32_t id = str_table_get(&tok->added_vocab, piece, n);
    return id >= 0 ? id : str_table_get(&tok->model_vocab, piece, n);
}

int cinfer_tokenizer_is_special(const cinfer_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->vocab_size && tok->special[id];
}

const char *cinfer_tokenizer_chat_template(const cinfer_tokenizer *tok) {
    return tok->chat_template;
}
const char *cinfer_tokenizer_bos_token(const cinfer_tokenizer *tok) { return tok->bos_token; }
const char *cinfer_tokenizer_eos_token(const cinfer_tokenizer *tok) { return tok->eos_token; }
int32_t cinfer_tokenizer_bos_id(const cinfer_tokenizer *tok) {
    return tok->bos_token ? cinfer_tokenizer_find(tok, tok->bos_token) : -1;
}
int32_t cinfer_tokenizer_eos_id(const cinfer_tokenizer *tok) {
    return tok->eos_token ? cinfer_tokenizer_find(tok, tok->eos_token) : -1;
}

/* ---- decoding -------------------------------------------------------------------------------- */

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
            CI_TRY(buf_append(out, pending->data + i, (size_t)len));
            i += (size_t)len;
        } else if (len < 0) {
            CI_TRY(buf_append(out, REPLACEMENT_CHARACTER, 3));
            i += (size_t)-len;
        } else if (at_end) {
            CI_TRY(buf_append(out, REPLACEMENT_CHARACTER, 3));
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
        if (!t->has_decoder && d->n_joined > 0) CI_TRY(buf_append(&d->out, " ", 1));
        d->n_joined++;
        return buf_append(&d->out, s, n);
    }
    const dec_step *step = &t->dec[k];
    dec_state *st = &d->state[k];
    buf *o = &st->scratch;
    st->n_tokens++;
    switch (step->kind) {
    case DEC_FUSE: return dec_push(d, k + 1, s, n);
    case DEC_BYTE_FALLBACK: {
        unsigned char byte;
        if (is_byte_token(s, n, &byte)) return buf_append(&st->pending, (const char *)&byte, 1);
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
                CI_TRY(buf_append(&st->pending, s, n));
                break;
            }
            char byte = (char)t->bytes.byte_of[cp];
            CI_TRY(buf_append(&st->pending, &byte, 1));
            i += (size_t)len;
        }
        CI_TRY(lossy_utf8(&st->pending, o, 0));
        return o->len ? dec_push(d, k + 1, o->data, o->len) : CINFER_OK;
    }
    case DEC_REPLACE:
        CI_TRY(replace_all(t->name, step->pattern, s, n, step->text, step->text_len, o));
        return dec_push(d, k + 1, o->data, o->len);
    case DEC_METASPACE: {
        o->len = 0;
        int first = st->n_tokens == 1 && step->prepend != PREPEND_NEVER;
        for (size_t i = 0; i < n;) {
            if (n - i >= step->character_len &&
                memcmp(s + i, step->character, step->character_len) == 0) {
                /* tokenizers drops every replacement of the first token, not only a leading one */
                if (!first) CI_TRY(buf_append(o, " ", 1));
                i += step->character_len;
            } else {
                CI_TRY(buf_append(o, s + i, 1));
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
        buf_free(&d->state[k].pending);
        buf_free(&d->state[k].scratch);
    }
    free(d->state);
    buf_free(&d->out);
    free(d);
}

cinfer_status cinfer_decode(const cinfer_tokenizer *tok, const int32_t *ids, int n_ids,
                            int skip_special, char **text) {
    *text = NULL;
    cinfer_detokenizer *d;
    CI_TRY(cinfer_detokenizer_create(tok, skip_special, &d));
    buf all = {0};
    cinfer_status st = buf_reserve(&all, 16);
    for (int i = 0; i < n_ids && st == CINFER_OK; i++) {
        const char *piece;
        size_t n;
        st = cinfer_detokenize(d, ids[i], &piece, &n);
        if (st == CINFER_OK) st = buf_append(&all, piece, n);
    }
    if (st == CINFER_OK) {
        d->out.len = 0;
        st = dec_finish(d, 0);
        if (st == CINFER_OK) st = buf_append(&all, d->out.data ? d->out.data : "", d->out.len);
    }
    cinfer_detokenizer_free(d);
    if (st != CINFER_OK) {
        buf_free(&all);
        return st;
    }
    *text = all.data;
    return CINFER_OK;
}

cinfer_status tokenizer_token_bytes(const cinfer_tokenizer *tok, int32_t id, char **bytes,
                                    size_t *n_bytes) {
    *bytes = NULL;
    *n_bytes = 0;
    if (id < 0 || id >= tok->vocab_size || !tok->pieces[id])
        return CI_FAIL(CINFER_ERR_ARGUMENT, "token id %d is not in the vocabulary", id);
    buf cur = {0}, next = {0};
    cinfer_status st = buf_append(&cur, tok->pieces[id], tok->piece_len[id]);
    for (int k = 0; k < tok->n_dec && st == CINFER_OK; k++) {
        const dec_step *step = &tok->dec[k];
        unsigned char byte;
        next.len = 0;
        if (step->kind == DEC_BYTE_FALLBACK && is_byte_token(cur.data, cur.len, &byte)) {
            st = buf_append(&next, (const char *)&byte, 1);
        } else if (step->kind == DEC_REPLACE) {
            st = replace_all(tok->name, step->pattern, cur.data, cur.len, step->text,
                             step->text_len, &next);
        } else if (step->kind == DEC_METASPACE) {
            for (size_t i = 0; i < cur.len && st == CINFER_OK;) {
                int hit = cur.len - i >= step->character_len &&
                          memcmp(cur.data + i, step->character, step->character_len) == 0;
                st = buf_append(&next, hit ? " " : cur.data + i, 1);
                i += hit ? step->character_len : 1;
            }
        } else if (step->kind == DEC_BYTE_LEVEL) {
            for (size_t i = 0; i < cur.len && st == CINFER_OK;) {
                uint32_t cp;
                int len = utf8_char((const unsigned char *)cur.data + i, cur.len - i, &cp);
                if (len <= 0 || cp >= 324 || tok->bytes.byte_of[cp] < 0) {
                    next.len = 0;
                    st = buf_append(&next, cur.data, cur.len);
                    break;
                }
                char b = (char)tok->bytes.byte_of[cp];
                st = buf_append(&next, &b, 1);
                i += (size_t)len;
            }
        } else {
            continue; /* Fuse, Strip: about the whole text, not one token */
        }
        buf swap = cur;
        cur = next;
        next = swap;
    }
    buf_free(&next);
    if (st != CINFER_OK) {
        buf_free(&cur);
        return st;
    }
    *bytes = cur.data;
    *n_bytes = cur.len;
    return CINFER_OK;
}
