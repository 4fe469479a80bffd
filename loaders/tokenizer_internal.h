/* The tokenizer's insides, shared by the loaders/tokenizer*.c files and by nothing else: the
 * layout of cinfer_tokenizer and of the encoder's scratch, and the functions the files call
 * across each other. Others use tokenizer.h and include/cinfer.h.
 *
 * Hugging Face tokenizers in C: tokenizer.json read with cJSON, BPE encoding with the pipeline of
 * the `tokenizers` library (added tokens -> normalizer -> pre-tokenizer -> model ->
 * post-processor), and decoding that can stream.
 *
 * Every step names the part of tokenizers it reproduces; where tokenizers has a quirk
 * (Metaspace's decoder drops every "▁" of the first token, ByteFallback writes one U+FFFD per
 * byte of an invalid run, a rejected single_word match still ends the search there), the quirk is
 * kept, because the test is equality with tokenizers' ids and text.
 *
 * Encoding keeps no state in the tokenizer: each cinfer_tokenize call has its own scratch
 * (encoder), so a loaded tokenizer can be shared by threads.
 *
 * The files:
 *   tokenizer.c                the object: cinfer_tokenizer_load and _free, vocabulary queries
 *   tokenizer_load.c           tokenizer.json: the model (vocab, merges), added tokens
 *   tokenizer_load_pipeline.c  tokenizer.json: normalizer, pre_tokenizer, post_processor, decoder
 *   tokenizer_side_files.c     tokenizer_config.json, special_tokens_map.json, chat_template.jinja
 *   tokenizer_json.c           typed JSON field readers whose messages name the field's path
 *   tokenizer_encode.c         cinfer_tokenize: added tokens, the pipeline, the post-processor
 *   tokenizer_pretokenize.c    the normalizer and the pre-tokenizers (PCRE2)
 *   tokenizer_bpe.c            the BPE model on one pre-token
 *   tokenizer_decode.c         the decoders, streaming (cinfer_detokenizer), and cinfer_decode
 *   tokenizer_containers.h     a growable buffer and two hash tables (static inline)
 *   utf8.h                     UTF-8 decoding, validation and encoding (static inline) */
#ifndef CINFER_TOKENIZER_INTERNAL_H
#define CINFER_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "tokenizer_containers.h"

enum {
    MAX_TOKEN_ID = (1 << 24) - 1, /* 16.7 M: far above any real vocabulary, bounds the tables */
    MAX_PRE_STEPS = 8,            /* pre-tokenizers in a Sequence, nested ones included */
    MAX_STEPS = 16,               /* normalizers, decoders, post-processors in a Sequence */
};

/* ---- the tokenizer --------------------------------------------------------------------------- */

/* ByteLevel maps every byte to a printable character: bytes that are printable in Latin-1 stand
 * for themselves, the other 68 take the code points from 256 up, in byte order. */
typedef struct byte_table {
    char utf8[256][2];
    unsigned char len[256];
    int16_t byte_of[324]; /* code point -> byte, -1 if no byte maps there */
} byte_table;

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

/* ---- reading tokenizer.json and the files beside it ------------------------------------------ */

/* A JSON path for messages: "pre_tokenizer.pretokenizers[1]". */
typedef struct json_path {
    char text[256];
} json_path;

/* The path of parent's member `key`: "parent.key". */
json_path tok_path_child(const json_path *parent, const char *key);
/* The path of parent's item `index`: "parent[index]". */
json_path tok_path_index(const json_path *parent, int index);
/* What v is, for messages: "a string", "an object", "missing", ... */
const char *tok_json_type_name(const cJSON *v);
/* obj's member `key` (case-sensitive), or NULL. */
const cJSON *tok_field(const cJSON *obj, const char *key);
/* A string member; absent or null gives NULL when allowed (required = 0). */
cinfer_status tok_get_string(const char *file, const cJSON *obj, const json_path *at,
                             const char *key, int required, const char **out);
/* A boolean member; absent or null gives fallback. */
cinfer_status tok_get_bool(const char *file, const cJSON *obj, const json_path *at, const char *key,
                           int fallback, int *out);
/* The error for a "type" that is not supported, with the list of those that are. */
cinfer_status tok_unsupported_type(const char *file, const json_path *at, const char *type,
                                   const char *supported);

/* A fixed pattern compiled with UTF and Unicode properties (JIT when it can); NULL on failure. */
pcre2_code *tok_compile_fixed(const char *pattern);
/* tokenizer.json's "normalizer" (null: none) into t->norm. */
cinfer_status tok_parse_normalizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at);
/* tokenizer.json's "pre_tokenizer" (null: none) into t->pre. */
cinfer_status tok_parse_pre_tokenizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at);
/* tokenizer.json's "post_processor" (null: none) into t->post. */
cinfer_status tok_parse_post_processor(cinfer_tokenizer *t, const cJSON *v, const json_path *at);
/* tokenizer.json's "decoder" (null: none) into t->dec. */
cinfer_status tok_parse_decoder(cinfer_tokenizer *t, const cJSON *v, const json_path *at);
/* dir's tokenizer_config.json, special_tokens_map.json and chat_template.jinja, where present. */
cinfer_status tok_load_side_files(cinfer_tokenizer *t, const char *dir);

/* ---- encoding (tokenizer_encode.c, tokenizer_pretokenize.c, tokenizer_bpe.c) ----------------- */

typedef struct segment {
    size_t start, end;
    int32_t token; /* an added token's id, or -1 for text */
    int is_match;  /* pre-tokenizer splits: whether the pattern matched here */
} segment;

typedef struct seg_list {
    segment *items;
    size_t n, cap;
} seg_list;

/* BPE's working word and the rest of its scratch (defined in tokenizer_bpe.c). */
typedef struct symbol symbol;
typedef struct merge_candidate merge_candidate;
typedef struct cache_entry cache_entry;

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

/* Appends the segment [start, end) to l. */
cinfer_status tok_seg_push(seg_list *l, size_t start, size_t end, int32_t token, int is_match);
/* Appends one id to what the encoder has made. */
cinfer_status tok_push_id(encoder *e, int32_t id);
/* The normalizer on s[0, n), into out (tmp: scratch). */
cinfer_status tok_normalize(const cinfer_tokenizer *t, const char *s, size_t n, buf *out, buf *tmp);
/* Every match of re in s[0, n) replaced by `with`, literally, into out (name: for messages). */
cinfer_status tok_replace_all(const char *name, const pcre2_code *re, const char *s, size_t n,
                              const char *with, size_t with_len, buf *out);
/* Pre-tokenizer step `step` on one piece of text, then the model on each pre-token it makes. */
cinfer_status tok_pre_tokenize(encoder *e, int step, const char *s, size_t n, int at_origin);
/* The BPE model on one pre-token: its ids appended to e->ids. */
cinfer_status tok_bpe_encode(encoder *e, const char *w, size_t n);

#endif
