/* The files a model folder may have beside tokenizer.json: tokenizer_config.json (bos and eos
 * tokens, add_bos_token, add_eos_token, chat_template), special_tokens_map.json (bos and eos
 * tokens) and chat_template.jinja. Each is optional; the first that gives a value wins. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "json.h"
#include "read_file.h"

static const size_t CONFIG_JSON_MAX_BYTES = (size_t)64 << 20;

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* bos_token and the like: a string, or an AddedToken object {"content": ...}, or null. */
static cinfer_status config_token(const char *file, const cJSON *root, const char *key,
                                  char **out) {
    const cJSON *v = tok_field(root, key);
    if (!v || cJSON_IsNull(v) || *out) return CINFER_OK;
    if (cJSON_IsObject(v)) v = tok_field(v, "content");
    if (!cJSON_IsString(v))
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: %s must be a string or an object with a \"content\" string", file, key);
    *out = tok_copy_string(v->valuestring, strlen(v->valuestring));
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
            const cJSON *name = tok_field(e, "name"), *tmpl = tok_field(e, "template");
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
                       file, tok_json_type_name(v));
    }
    *out = tok_copy_string(text, strlen(text));
    CI_CHECK_ALLOC(*out, strlen(text) + 1);
    return CINFER_OK;
}

cinfer_status tok_load_side_files(cinfer_tokenizer *t, const char *dir) {
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
        if (st == CINFER_OK)
            st = tok_get_bool(path, root, &at, "add_bos_token", 0, &t->add_bos_token);
        if (st == CINFER_OK)
            st = tok_get_bool(path, root, &at, "add_eos_token", 0, &t->add_eos_token);
        if (st == CINFER_OK)
            st = parse_chat_template(path, tok_field(root, "chat_template"), &t->chat_template);
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
