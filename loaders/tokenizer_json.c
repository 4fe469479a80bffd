/* Reading members of tokenizer.json and its side files: typed readers whose messages name the
 * file and the JSON path of the member ("pre_tokenizer.pretokenizers[1].behavior"). */
#include "tokenizer_internal.h"

#include <stdio.h>

#include "../common/error.h"

json_path tok_path_child(const json_path *parent, const char *key) {
    json_path p;
    snprintf(p.text, sizeof p.text, "%.190s%s%.60s", parent->text, parent->text[0] ? "." : "",
             key); /* cut, not overflowed, if a path were ever that deep */
    return p;
}

json_path tok_path_index(const json_path *parent, int index) {
    json_path p;
    snprintf(p.text, sizeof p.text, "%.200s[%d]", parent->text, index);
    return p;
}

const char *tok_json_type_name(const cJSON *v) {
    if (!v) return "missing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

const cJSON *tok_field(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* A string field; absent or null gives NULL when allowed (required = 0). */
cinfer_status tok_get_string(const char *file, const cJSON *obj, const json_path *at,
                             const char *key, int required, const char **out) {
    const cJSON *v = tok_field(obj, key);
    if ((!v || cJSON_IsNull(v)) && !required) {
        *out = NULL;
        return CINFER_OK;
    }
    if (!cJSON_IsString(v))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be a string, got %s", file,
                       tok_path_child(at, key).text, tok_json_type_name(v));
    *out = v->valuestring;
    return CINFER_OK;
}

cinfer_status tok_get_bool(const char *file, const cJSON *obj, const json_path *at, const char *key,
                           int fallback, int *out) {
    const cJSON *v = tok_field(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = fallback;
        return CINFER_OK;
    }
    if (!cJSON_IsBool(v))
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: %s must be true or false, got %s", file,
                       tok_path_child(at, key).text, tok_json_type_name(v));
    *out = cJSON_IsTrue(v);
    return CINFER_OK;
}

cinfer_status tok_unsupported_type(const char *file, const json_path *at, const char *type,
                                   const char *supported) {
    return CI_FAIL(CINFER_ERR_UNSUPPORTED, "%s: %s.type '%s' is not supported (supported: %s)",
                   file, at->text, type, supported);
}
