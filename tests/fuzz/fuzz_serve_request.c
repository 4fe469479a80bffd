/* libFuzzer target for the request bodies of `cinfer serve` (programs/serve_request.c). The
 * first byte picks the endpoint (completions, chat, tokenize or detokenize), the rest is the body. Whatever the bytes,
 * serve_request_parse must either refuse them with a 4xx status, a non-empty message and a
 * zeroed request, or return a request that keeps the header's promises: every value inside its
 * range, every string valid UTF-8 and within its limits, exactly the prompt form of its kind.
 * The error object it renders, refusal or not, must parse back with cJSON to the same message,
 * param and code. Never crash, leak, or read past the length it was given.
 *
 *   mkdir -p /tmp/corpus && ./build-fuzz/fuzz_serve_request -max_total_time=60 \
 *       -dict=tests/fuzz/serve_request.dict /tmp/corpus tests/fuzz/corpus/serve_request
 *
 * (built as fuzz_safetensors.c says) */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../../programs/serve_request.h"

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) abort();                                                                      \
    } while (0)

/* Well-formed UTF-8 (no overlongs, surrogates, or code points past U+10FFFF), written apart
 * from the parser's own check. */
static int utf8_ok(const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        uint32_t cp;
        int len;
        if (*s < 0x80)
            cp = *s, len = 1;
        else if ((*s & 0xE0) == 0xC0)
            cp = *s & 0x1F, len = 2;
        else if ((*s & 0xF0) == 0xE0)
            cp = *s & 0x0F, len = 3;
        else if ((*s & 0xF8) == 0xF0)
            cp = *s & 0x07, len = 4;
        else
            return 0;
        for (int i = 1; i < len; i++) {
            if ((s[i] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i] & 0x3F);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        s += len;
    }
    return 1;
}

static void check_request(const serve_request *r) {
    REQUIRE(!r->model || utf8_ok(r->model));
    if (r->kind == SERVE_DETOKENIZE) {
        REQUIRE(!r->prompt && !r->messages && r->prompt_tokens && r->n_prompt_tokens >= 0);
        for (int i = 0; i < r->n_prompt_tokens; i++) REQUIRE(r->prompt_tokens[i] >= 0);
        return;
    }
    if (r->kind == SERVE_TOKENIZE) {
        REQUIRE(!r->prompt_tokens && !r->prompt != !r->messages);
        if (r->prompt) REQUIRE(utf8_ok(r->prompt));
        for (int i = 0; i < r->n_messages; i++)
            REQUIRE(r->messages[i].content && utf8_ok(r->messages[i].content));
        REQUIRE(r->add_special_tokens == 0 || r->add_special_tokens == 1);
        REQUIRE(r->add_generation_prompt == 0 || r->add_generation_prompt == 1);
        return;
    }
    if (r->kind == SERVE_COMPLETION) {
        REQUIRE(!r->messages && r->n_messages == 0);
        REQUIRE(!r->prompt != !r->prompt_tokens);
        if (r->prompt) REQUIRE(utf8_ok(r->prompt) && r->n_prompt_tokens == 0);
        if (r->prompt_tokens) {
            REQUIRE(r->n_prompt_tokens >= 1);
            for (int i = 0; i < r->n_prompt_tokens; i++) REQUIRE(r->prompt_tokens[i] >= 0);
        }
        REQUIRE(r->max_tokens >= 1 && r->max_tokens <= SERVE_MAX_TOKENS);
    } else {
        REQUIRE(r->kind == SERVE_CHAT);
        REQUIRE(!r->prompt && !r->prompt_tokens && r->n_prompt_tokens == 0);
        REQUIRE(r->messages && r->n_messages >= 1);
        static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
        for (int i = 0; i < r->n_messages; i++) {
            int known = 0;
            for (int k = 0; k < 5; k++) known |= strcmp(r->messages[i].role, roles[k]) == 0;
            REQUIRE(known);
            REQUIRE(r->messages[i].content && utf8_ok(r->messages[i].content));
        }
        REQUIRE(r->max_tokens == -1 || (r->max_tokens >= 1 && r->max_tokens <= SERVE_MAX_TOKENS));
    }
    const cinfer_sampling *s = &r->sampling;
    REQUIRE(s->temperature >= 0 && s->temperature <= 2);
    REQUIRE(s->top_p > 0 && s->top_p <= 1);
    REQUIRE(s->top_k >= 0 && s->top_k <= SERVE_MAX_TOP_K);
    REQUIRE(r->has_seed == 0 || r->has_seed == 1);
    if (!r->has_seed) REQUIRE(s->seed == 0);
    REQUIRE(r->n_stop >= 0 && r->n_stop <= SERVE_MAX_STOP);
    for (int i = 0; i < r->n_stop; i++) {
        const size_t n = strlen(r->stop[i]);
        REQUIRE(n >= 1 && n <= SERVE_MAX_STOP_BYTES && utf8_ok(r->stop[i]));
    }
    REQUIRE(r->stream == 0 || r->stream == 1);
    REQUIRE(r->include_usage == 0 || r->include_usage == 1);
    REQUIRE(!r->include_usage || r->stream);
    REQUIRE(r->logprobs == 0 || r->logprobs == 1);
    REQUIRE(r->top_logprobs >= 0 && r->top_logprobs <= CINFER_MAX_TOP_LOGPROBS);
    REQUIRE(r->logprobs || r->top_logprobs == 0);
    REQUIRE(r->ignore_eos == 0 || r->ignore_eos == 1);
}

/* The error object rendered and read back: the same fields. */
static void check_error_json(const serve_error *err) {
    char *text = serve_error_json(err);
    REQUIRE(text);
    cJSON *root = cJSON_Parse(text);
    REQUIRE(root);
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(root, "error");
    REQUIRE(cJSON_IsObject(error));
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(error, "message");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(error, "type");
    const cJSON *param = cJSON_GetObjectItemCaseSensitive(error, "param");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(error, "code");
    REQUIRE(cJSON_IsString(message) && strcmp(message->valuestring, err->message) == 0);
    REQUIRE(cJSON_IsString(type) && strcmp(type->valuestring, "invalid_request_error") == 0);
    if (err->param[0])
        REQUIRE(cJSON_IsString(param) && strcmp(param->valuestring, err->param) == 0);
    else
        REQUIRE(cJSON_IsNull(param));
    if (err->code)
        REQUIRE(cJSON_IsString(code) && strcmp(code->valuestring, err->code) == 0);
    else
        REQUIRE(cJSON_IsNull(code));
    cJSON_Delete(root);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    static const serve_kind kinds[4] = {SERVE_COMPLETION, SERVE_CHAT, SERVE_TOKENIZE,
                                        SERVE_DETOKENIZE};
    const serve_kind kind = kinds[data[0] & 3];
    /* the body copied to a buffer of exactly its size, so a read past it is caught */
    char *body = malloc(size - 1 ? size - 1 : 1);
    REQUIRE(body);
    memcpy(body, data + 1, size - 1);
    serve_request r;
    serve_error err;
    if (serve_request_parse(kind, body, size - 1, &r, &err) != 0) {
        REQUIRE(err.status >= 400 && err.status < 500);
        REQUIRE(memchr(err.message, '\0', sizeof err.message) && err.message[0] != '\0');
        REQUIRE(memchr(err.param, '\0', sizeof err.param));
        REQUIRE(utf8_ok(err.message) && utf8_ok(err.param));
        REQUIRE(r.kind == kind && !r.model && !r.prompt && !r.prompt_tokens && !r.messages &&
                !r.stop && r.n_stop == 0 && r.n_messages == 0);
        check_error_json(&err);
    } else {
        REQUIRE(err.status == 0 && r.kind == kind);
        check_request(&r);
        /* a refusal the server makes itself, quoting the model, renders as well */
        serve_error_set(&err, 404, "model", "model_not_found", "The model `%s` does not exist.",
                        r.model ? r.model : "");
        check_error_json(&err);
        serve_request_free(&r);
        REQUIRE(!r.model && !r.messages && !r.stop && !r.prompt_tokens);
    }
    free(body);
    return 0;
}
