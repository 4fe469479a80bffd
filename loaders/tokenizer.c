/* The tokenizer object of cinfer.h: cinfer_tokenizer_load (tokenizer.json, then the files beside
 * it), cinfer_tokenizer_free, and the vocabulary queries. How the tokenizer works, and which file
 * does what, is told in tokenizer_internal.h. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "read_file.h"

static const size_t TOKENIZER_JSON_MAX_BYTES = (size_t)1 << 30;

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
    if (st == CINFER_OK) st = tok_load_side_files(*out, dir);
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

/* ---- vocabulary queries ---------------------------------------------------------------------- */

int cinfer_tokenizer_vocab_size(const cinfer_tokenizer *tok) { return tok->vocab_size; }

const char *cinfer_tokenizer_piece(const cinfer_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->vocab_size ? tok->pieces[id] : NULL;
}

int32_t cinfer_tokenizer_find(const cinfer_tokenizer *tok, const char *piece) {
    size_t n = strlen(piece);
    int32_t id = tok_str_table_get(&tok->added_vocab, piece, n);
    return id >= 0 ? id : tok_str_table_get(&tok->model_vocab, piece, n);
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
