/* Reading tokenizer.json (tokenizer_parse): the BPE model (vocab, merges, unk_token, byte
 * fallback), the added tokens and the matchers that find them in a text, and the id -> string
 * table. The pipeline sections are read by tokenizer_load_pipeline.c. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "json.h"
#include "utf8.h"

static cinfer_status set_piece(cinfer_tokenizer *t, int32_t id, const char *piece, size_t len) {
    char *copy = tok_copy_string(piece, len);
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
                       cJSON_IsNumber(v) ? "a number out of range" : tok_json_type_name(v));
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
                       tok_json_type_name(m));
    *a = cJSON_GetArrayItem(m, 0)->valuestring;
    *b = cJSON_GetArrayItem(m, 1)->valuestring;
    *a_len = strlen(*a), *b_len = strlen(*b);
    return CINFER_OK;
}

static cinfer_status parse_merges(cinfer_tokenizer *t, const cJSON *merges) {
    if (!cJSON_IsArray(merges))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.merges must be an array, got %s", t->name,
                       tok_json_type_name(merges));
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
            ia = tok_str_table_get(&t->model_vocab, a, a_len);
            ib = tok_str_table_get(&t->model_vocab, b, b_len);
            joined.len = 0;
            st = tok_buf_append(&joined, a, a_len);
            if (st == CINFER_OK) st = tok_buf_append(&joined, b, b_len);
        }
        if (st == CINFER_OK) merged = tok_str_table_get(&t->model_vocab, joined.data, joined.len);
        if (st == CINFER_OK && (ia < 0 || ib < 0 || merged < 0))
            st = CI_FAIL(CINFER_ERR_FORMAT, "%s: model.merges[%d]: '%s' is not in model.vocab",
                         t->name, rank,
                         ia < 0   ? a
                         : ib < 0 ? b
                                  : joined.data);
        if (st != CINFER_OK) {
            tok_buf_free(&joined);
            return st;
        }
        /* a pair listed twice keeps its later rank, as tokenizers' map does */
        merge_slot *s = tok_merge_table_slot(&t->merges, tok_pair_key(ia, ib));
        *s = (merge_slot){tok_pair_key(ia, ib), rank, merged};
    }
    tok_buf_free(&joined);
    return CINFER_OK;
}

static cinfer_status parse_model(cinfer_tokenizer *t, const cJSON *model, int *max_id) {
    json_path at = {"model"};
    if (!cJSON_IsObject(model))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model must be an object, got %s", t->name,
                       tok_json_type_name(model));
    const char *type;
    CI_TRY(tok_get_string(t->name, model, &at, "type", 0, &type));
    if (type && strcmp(type, "BPE") != 0) return tok_unsupported_type(t->name, &at, type, "BPE");
    const cJSON *dropout = tok_field(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: model.dropout must be null (BPE dropout is for training)", t->name);
    const char *prefix, *suffix, *unk;
    CI_TRY(tok_get_string(t->name, model, &at, "continuing_subword_prefix", 0, &prefix));
    CI_TRY(tok_get_string(t->name, model, &at, "end_of_word_suffix", 0, &suffix));
    if ((prefix && prefix[0]) || (suffix && suffix[0]))
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "%s: model.%s '%s' is not supported (only null or \"\")", t->name,
                       prefix && prefix[0] ? "continuing_subword_prefix" : "end_of_word_suffix",
                       prefix && prefix[0] ? prefix : suffix);
    CI_TRY(tok_get_string(t->name, model, &at, "unk_token", 0, &unk));
    CI_TRY(tok_get_bool(t->name, model, &at, "fuse_unk", 0, &t->fuse_unk));
    CI_TRY(tok_get_bool(t->name, model, &at, "byte_fallback", 0, &t->byte_fallback));
    CI_TRY(tok_get_bool(t->name, model, &at, "ignore_merges", 0, &t->ignore_merges));

    const cJSON *vocab = tok_field(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.vocab must be an object, got %s", t->name,
                       tok_json_type_name(vocab));
    CI_TRY(tok_str_table_init(&t->model_vocab, (size_t)cJSON_GetArraySize(vocab)));
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
        int fresh = tok_str_table_put(&t->model_vocab, key, len, id);
        key += len + 1;
        if (!fresh)
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: model.vocab lists '%s' twice", t->name,
                           e->string);
        if (id > *max_id) *max_id = id;
    }
    if (unk) {
        t->unk_token = tok_copy_string(unk, strlen(unk));
        CI_CHECK_ALLOC(t->unk_token, strlen(unk) + 1);
        t->unk_id = tok_str_table_get(&t->model_vocab, unk, strlen(unk));
        if (t->unk_id < 0) t->unk_id = -2; /* an error only if a text needs it, as in tokenizers */
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tok_str_table_get(&t->model_vocab, name, 6);
    }
    return parse_merges(t, tok_field(model, "merges"));
}

static cinfer_status parse_added_tokens(cinfer_tokenizer *t, const cJSON *list, int *max_id) {
    if (!list || cJSON_IsNull(list)) return CINFER_OK;
    if (!cJSON_IsArray(list))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: added_tokens must be an array, got %s", t->name,
                       tok_json_type_name(list));
    int n = cJSON_GetArraySize(list);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    CI_CHECK_ALLOC(t->added, ((size_t)n + 1) * sizeof *t->added);
    CI_TRY(tok_str_table_init(&t->added_vocab, (size_t)n));
    json_path lp = {"added_tokens"};
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        json_path ip = tok_path_index(&lp, i);
        added_token *a = &t->added[t->n_added];
        const char *content;
        if (!cJSON_IsObject(e))
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be an object, got %s", t->name, ip.text,
                           tok_json_type_name(e));
        CI_TRY(tok_get_string(t->name, e, &ip, "content", 1, &content));
        json_path idp = tok_path_child(&ip, "id");
        CI_TRY(check_id(t->name, tok_field(e, "id"), idp.text, &a->id));
        CI_TRY(tok_get_bool(t->name, e, &ip, "special", 0, &a->special));
        CI_TRY(tok_get_bool(t->name, e, &ip, "lstrip", 0, &a->lstrip));
        CI_TRY(tok_get_bool(t->name, e, &ip, "rstrip", 0, &a->rstrip));
        CI_TRY(tok_get_bool(t->name, e, &ip, "single_word", 0, &a->single_word));
        CI_TRY(tok_get_bool(t->name, e, &ip, "normalized", !a->special, &a->normalized));
        a->len = strlen(content);
        if (a->len == 0)
            return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s.content must not be empty", t->name, ip.text);
        a->content = tok_copy_string(content, a->len);
        CI_CHECK_ALLOC(a->content, a->len + 1);
        t->n_added++;
        if (!tok_str_table_put(&t->added_vocab, a->content, a->len, a->id))
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
                cinfer_status st = tok_normalize(t, a->content, a->len, &norm, &tmp);
                if (st != CINFER_OK) {
                    tok_buf_free(&norm), tok_buf_free(&tmp);
                    return st;
                }
                char *copy = tok_copy_string(norm.data, norm.len);
                if (!copy) {
                    tok_buf_free(&norm), tok_buf_free(&tmp);
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
    tok_buf_free(&norm), tok_buf_free(&tmp);
    return CINFER_OK;
}

static cinfer_status parse_tokenizer_json(cinfer_tokenizer *t, const cJSON *root) {
    if (!cJSON_IsObject(root))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: the top level must be an object, got %s", t->name,
                       tok_json_type_name(root));
    int max_id = -1;
    CI_TRY(parse_model(t, tok_field(root, "model"), &max_id));
    CI_TRY(parse_added_tokens(t, tok_field(root, "added_tokens"), &max_id));
    json_path np = {"normalizer"}, pp = {"pre_tokenizer"}, op = {"post_processor"},
              dp = {"decoder"};
    CI_TRY(tok_parse_normalizer(t, tok_field(root, "normalizer"), &np));
    CI_TRY(tok_parse_pre_tokenizer(t, tok_field(root, "pre_tokenizer"), &pp));
    CI_TRY(tok_parse_post_processor(t, tok_field(root, "post_processor"), &op));
    CI_TRY(tok_parse_decoder(t, tok_field(root, "decoder"), &dp));

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
            t->word_char = tok_compile_fixed("[\\p{Alphabetic}\\p{N}]");
            CI_CHECK_ALLOC(t->word_char, 32);
        }
    return build_matchers(t); /* last: it normalizes the contents of normalized added tokens */
}

/* GPT-2's byte <-> character table of ByteLevel (see byte_table). */
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

cinfer_status tokenizer_parse(const char *name, const char *text, size_t length,
                              cinfer_tokenizer **out) {
    *out = NULL;
    cinfer_tokenizer *t = calloc(1, sizeof *t);
    CI_CHECK_ALLOC(t, sizeof *t);
    byte_table_init(&t->bytes);
    t->unk_id = -1;
    t->name = tok_copy_string(name, strlen(name));
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
