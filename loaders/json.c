#include "json.h"

#include "../common/error.h"

static int is_json_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

cinfer_status ci_json_parse(const char *name, const char *text, size_t length, cJSON **out) {
    *out = NULL;
    const char *end = NULL;
    /* the end pointer comes from this parse, not from cJSON's global error pointer, which
     * other threads may be writing */
    cJSON *root = cJSON_ParseWithLengthOpts(text, length, &end, 0);
    size_t offset = end && end >= text && end <= text + length ? (size_t)(end - text) : 0;
    if (!root)
        return CI_FAIL(CINFER_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", name, offset);
    while (offset < length && is_json_space(text[offset])) offset++;
    if (offset < length) {
        cJSON_Delete(root);
        return CI_FAIL(CINFER_ERR_FORMAT,
                       "%s: not valid JSON (unexpected text after the top-level value at byte %zu)",
                       name, offset);
    }
    *out = root;
    return CINFER_OK;
}
