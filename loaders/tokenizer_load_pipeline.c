/* Reading the pipeline sections of tokenizer.json: normalizer, pre_tokenizer, post_processor and
 * decoder, each one step or a Sequence of steps, into the tokenizer's step arrays, with their
 * patterns compiled by PCRE2. */
#include "tokenizer_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "utf8.h"

/* The pattern GPT-2's ByteLevel pre-tokenizer splits with when use_regex is true. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static cinfer_status get_type(const char *file, const cJSON *obj, const json_path *at,
                              const char **type) {
    if (!cJSON_IsObject(obj))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object or null, got %s", file,
                       at->text, tok_json_type_name(obj));
    return tok_get_string(file, obj, at, "type", 1, type);
}

static cinfer_status get_int(const char *file, const cJSON *obj, const json_path *at,
                             const char *key, int minimum, int maximum, int *out) {
    const cJSON *v = tok_field(obj, key);
    /* the range check comes first: casting a double beyond int64's range is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= minimum && v->valuedouble <= maximum) ||
        v->valuedouble != floor(v->valuedouble))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an integer in [%d, %d], got %s", file,
                       tok_path_child(at, key).text, minimum, maximum,
                       cJSON_IsNumber(v) ? "a number out of range" : tok_json_type_name(v));
    *out = (int)v->valuedouble;
    return CINFER_OK;
}

/* Compiles a tokenizers pattern: {"String": "..."} literally or {"Regex": "..."} with Unicode
 * properties (as Oniguruma reads it), JIT-compiled when the machine allows. */
static cinfer_status compile_pattern(const char *file, const cJSON *obj, const json_path *at,
                                     pcre2_code **out) {
    *out = NULL;
    const cJSON *v = tok_field(obj, "pattern");
    json_path p = tok_path_child(at, "pattern");
    const cJSON *literal = cJSON_IsObject(v) ? tok_field(v, "String") : NULL;
    const cJSON *regex = cJSON_IsObject(v) ? tok_field(v, "Regex") : NULL;
    const cJSON *text = literal ? literal : regex;
    if (!cJSON_IsString(text))
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: %s must be {\"String\": \"...\"} or {\"Regex\": \"...\"}, got %s", file,
                       p.text, tok_json_type_name(v));
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

pcre2_code *tok_compile_fixed(const char *pattern) {
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
    CI_TRY(tok_get_string(file, obj, at, key, fallback == NULL, &s));
    if (!s) s = fallback;
    size_t n = strlen(s);
    int clen = n ? utf8_char((const unsigned char *)s, n, NULL) : 0;
    if (clen <= 0 || (size_t)clen != n)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be one character, got '%s'", file,
                       tok_path_child(at, key).text, s);
    memcpy(out, s, n);
    *len = n;
    return CINFER_OK;
}

static cinfer_status parse_prepend_scheme(const char *file, const cJSON *obj, const json_path *at,
                                          prepend_scheme *out) {
    const char *scheme;
    CI_TRY(tok_get_string(file, obj, at, "prepend_scheme", 0, &scheme));
    if (!scheme) {
        /* files older than prepend_scheme say add_prefix_space, which meant "always" */
        int add_prefix_space;
        CI_TRY(tok_get_bool(file, obj, at, "add_prefix_space", 1, &add_prefix_space));
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
    const cJSON *list = tok_field(v, key);
    json_path lp = tok_path_child(at, key);
    if (!cJSON_IsArray(list))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an array, got %s", t->name, lp.text,
                       tok_json_type_name(list));
    int i = 0;
    for (const cJSON *item = list->child; item; item = item->next, i++) {
        json_path ip = tok_path_index(&lp, i);
        CI_TRY(parse_item(t, item, &ip));
    }
    return CINFER_OK;
}

cinfer_status tok_parse_normalizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "normalizers", tok_parse_normalizer);
    if (t->n_norm >= MAX_STEPS)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d normalizers", t->name,
                       at->text, MAX_STEPS);
    norm_step *s = &t->norm[t->n_norm];
    const char *text;
    if (strcmp(type, "Prepend") == 0) {
        CI_TRY(tok_get_string(t->name, v, at, "prepend", 1, &text));
        s->kind = NORM_PREPEND;
    } else if (strcmp(type, "Replace") == 0) {
        CI_TRY(tok_get_string(t->name, v, at, "content", 1, &text));
        t->n_norm++; /* counted from here, so that free() releases the pattern */
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_norm--;
        s->kind = NORM_REPLACE;
    } else {
        return tok_unsupported_type(t->name, at, type, "Sequence, Prepend, Replace");
    }
    t->n_norm++;
    s->text_len = strlen(text);
    s->text = tok_copy_string(text, s->text_len);
    CI_CHECK_ALLOC(s->text, s->text_len + 1);
    return CINFER_OK;
}

static cinfer_status parse_behavior(const char *file, const cJSON *v, const json_path *at,
                                    split_behavior *out) {
    const char *b;
    CI_TRY(tok_get_string(file, v, at, "behavior", 1, &b));
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

cinfer_status tok_parse_pre_tokenizer(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "pretokenizers", tok_parse_pre_tokenizer);
    if (t->n_pre >= MAX_PRE_STEPS)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s: more than %d pre-tokenizers", t->name,
                       at->text, MAX_PRE_STEPS);
    pre_step *s = &t->pre[t->n_pre];
    if (strcmp(type, "Split") == 0) {
        s->kind = PRE_SPLIT;
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_pre++; /* counted now, so that free() releases the pattern on a later error */
        CI_TRY(parse_behavior(t->name, v, at, &s->behavior));
        CI_TRY(tok_get_bool(t->name, v, at, "invert", 0, &s->invert));
    } else if (strcmp(type, "ByteLevel") == 0) {
        s->kind = PRE_BYTE_LEVEL;
        int use_regex;
        CI_TRY(tok_get_bool(t->name, v, at, "add_prefix_space", 1, &s->add_prefix_space));
        CI_TRY(tok_get_bool(t->name, v, at, "use_regex", 1, &use_regex));
        if (use_regex) {
            s->pattern = tok_compile_fixed(GPT2_PATTERN);
            CI_CHECK_ALLOC(s->pattern, sizeof GPT2_PATTERN);
        }
        t->n_pre++;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = PRE_METASPACE;
        CI_TRY(get_character(t->name, v, at, "replacement", NULL, s->replacement,
                             &s->replacement_len));
        CI_TRY(parse_prepend_scheme(t->name, v, at, &s->prepend));
        CI_TRY(tok_get_bool(t->name, v, at, "split", 1, &s->split));
        t->n_pre++;
    } else {
        return tok_unsupported_type(t->name, at, type, "Sequence, Split, ByteLevel, Metaspace");
    }
    return CINFER_OK;
}

cinfer_status tok_parse_decoder(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    t->has_decoder = 1;
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "decoders", tok_parse_decoder);
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
        CI_TRY(tok_get_string(t->name, v, at, "content", 1, &content));
        s->text_len = strlen(content);
        s->text = tok_copy_string(content, s->text_len);
        CI_CHECK_ALLOC(s->text, s->text_len + 1);
        t->n_dec++; /* counted from here, so that free() releases what it holds */
        CI_TRY(compile_pattern(t->name, v, at, &s->pattern));
        t->n_dec--;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = DEC_METASPACE;
        CI_TRY(get_character(t->name, v, at, "replacement", NULL, s->character, &s->character_len));
        CI_TRY(parse_prepend_scheme(t->name, v, at, &s->prepend));
    } else {
        return tok_unsupported_type(t->name, at, type,
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
    json_path sp = tok_path_child(at, "single");
    const cJSON *single = tok_field(v, "single");
    const cJSON *specials = tok_field(v, "special_tokens");
    json_path tp = tok_path_child(at, "special_tokens");
    if (!cJSON_IsArray(single))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an array, got %s", t->name, sp.text,
                       tok_json_type_name(single));
    if (!cJSON_IsObject(specials))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object, got %s", t->name, tp.text,
                       tok_json_type_name(specials));
    int n_items = 0, capacity = 0, i = 0;
    int32_t *items = NULL;
    for (const cJSON *item = single->child; item; item = item->next, i++) {
        json_path ip = tok_path_index(&sp, i);
        const cJSON *seq = tok_field(item, "Sequence"), *special = tok_field(item, "SpecialToken");
        const cJSON *ids = NULL;
        if (seq) {
            const char *name;
            cinfer_status st = tok_get_string(t->name, seq, &ip, "id", 1, &name);
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
            cinfer_status st = tok_get_string(t->name, special, &ip, "id", 1, &name);
            const cJSON *entry = st == CINFER_OK ? tok_field(specials, name) : NULL;
            ids = entry ? tok_field(entry, "ids") : NULL;
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

cinfer_status tok_parse_post_processor(cinfer_tokenizer *t, const cJSON *v, const json_path *at) {
    if (!v || cJSON_IsNull(v)) return CINFER_OK;
    const char *type;
    CI_TRY(get_type(t->name, v, at, &type));
    t->has_post_processor = 1;
    if (strcmp(type, "Sequence") == 0)
        return parse_sequence(t, v, at, "processors", tok_parse_post_processor);
    if (strcmp(type, "ByteLevel") == 0) return CINFER_OK; /* offsets only; ids unchanged */
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(t, v, at);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        json_path cp = tok_path_child(at, "cls"), ep = tok_path_child(at, "sep");
        CI_TRY(token_id_of(t, tok_field(v, "cls"), &cp, &cls));
        CI_TRY(token_id_of(t, tok_field(v, "sep"), &ep, &sep));
        int32_t *items = malloc(3 * sizeof *items);
        CI_CHECK_ALLOC(items, 3 * sizeof *items);
        items[0] = cls, items[1] = -1, items[2] = sep;
        return add_template(t, at, items, 3);
    }
    return tok_unsupported_type(t->name, at, type,
                                "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, "
                                "BertProcessing");
}
