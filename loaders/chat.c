/* Chat templates of the Llama-family formats, rendered in C the way transformers' Jinja renderer
 * renders them (trim_blocks, lstrip_blocks). Each family is one function that reads like its
 * template; a template is matched to a family by markers it must and must not contain. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "../common/error.h"

/* Ends the argument list of append(): NULL cannot, because a missing token string is NULL. */
static const char end_of_args[1];
#define END_OF_ARGS end_of_args

/* ---- a growing string ------------------------------------------------------------------------ */

typedef struct text_buffer {
    char *data;
    size_t length, capacity;
    bool out_of_memory;
} text_buffer;

static void append_bytes(text_buffer *b, const char *bytes, size_t n) {
    if (b->out_of_memory) return;
    if (b->length + n + 1 > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 256;
        while (capacity < b->length + n + 1) capacity *= 2;
        char *grown = realloc(b->data, capacity);
        if (!grown) {
            b->out_of_memory = true;
            return;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->length, bytes, n);
    b->length += n;
    b->data[b->length] = '\0';
}

/* Appends each string argument in turn; NULL ends the list (a NULL token string appends nothing,
 * as an undefined Jinja variable renders as ""). */
static void append(text_buffer *b, ...) {
    va_list args;
    va_start(args, b);
    for (const char *s; (s = va_arg(args, const char *)) != END_OF_ARGS;)
        if (s) append_bytes(b, s, strlen(s));
    va_end(args);
}

/* ---- Python's str.strip(), which Jinja's trim filter and the templates' .strip() call ---------
 */

/* Length of the whitespace character at s (0 if none), by Python's str.isspace(). */
static size_t whitespace_length(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2; /* U+0085, U+00A0 */
    if (n < 3) return 0;
    const unsigned code = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
    if ((s[0] & 0xf0) != 0xe0 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
    bool space = code == 0x1680 || (code >= 0x2000 && code <= 0x200a) || code == 0x2028 ||
                 code == 0x2029 || code == 0x202f || code == 0x205f || code == 0x3000;
    return space ? 3 : 0;
}

/* Start of the last whitespace character ending at s + n, or n if none. */
static size_t trailing_whitespace_start(const unsigned char *s, size_t n) {
    for (size_t width = 1; width <= 3 && width <= n; width++)
        if (whitespace_length(s + n - width, width) == width) return n - width;
    return n;
}

static void append_stripped(text_buffer *b, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), skip;
    while (n > 0 && (skip = whitespace_length(s, n)) > 0) s += skip, n -= skip;
    for (size_t start; n > 0 && (start = trailing_whitespace_start(s, n)) < n;) n = start;
    append_bytes(b, (const char *)s, n);
}

/* ---- the families ---------------------------------------------------------------------------- */

typedef struct chat_input {
    const char *chat_template, *bos, *eos;
    const cinfer_chat_message *messages;
    int n_messages;
    bool add_generation_prompt;
} chat_input;

static bool is_role(const cinfer_chat_message *m, const char *role) {
    return strcmp(m->role, role) == 0;
}

/* Llama 2 and Mistral templates raise unless user and assistant turns alternate, user first. */
static cinfer_status check_alternation(const cinfer_chat_message *m, int index) {
    if (is_role(m, "user") != (index % 2 == 0))
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "chat: roles must alternate user/assistant/user/... as this template "
                       "requires; turn %d is '%s'",
                       index + 1, m->role);
    return CINFER_OK;
}

/* Llama 3: every turn is a header and its trimmed content. Llama 3.1 and later always open with
 * a system turn that states a knowledge cutoff and today's date, then the user's system text. */
static cinfer_status render_llama3(const chat_input *in, text_buffer *out) {
    const cinfer_chat_message *m = in->messages;
    int first = 0;
    append(out, in->bos, END_OF_ARGS);
    if (strstr(in->chat_template, "Cutting Knowledge Date")) {
        /* Llama 3.2 dates the prompt with strftime_now when the renderer has it (transformers'
         * does); Llama 3.1 templates carry a fixed date. */
        char today[32] = "26 Jul 2024";
        if (strstr(in->chat_template, "strftime_now")) {
            time_t now = time(NULL);
            struct tm local;
            localtime_r(&now, &local);
            strftime(today, sizeof today, "%d %b %Y", &local);
        }
        append(out, "<|start_header_id|>system<|end_header_id|>\n\n",
               "Cutting Knowledge Date: December 2023\nToday Date: ", today, "\n\n", END_OF_ARGS);
        if (is_role(&m[0], "system")) append_stripped(out, m[first++].content);
        append(out, "<|eot_id|>", END_OF_ARGS);
    }
    for (int i = first; i < in->n_messages; i++) {
        append(out, "<|start_header_id|>", m[i].role, "<|end_header_id|>\n\n", END_OF_ARGS);
        append_stripped(out, m[i].content);
        append(out, "<|eot_id|>", END_OF_ARGS);
    }
    if (in->add_generation_prompt)
        append(out, "<|start_header_id|>assistant<|end_header_id|>\n\n", END_OF_ARGS);
    return CINFER_OK;
}

/* Llama 2: [INST] user [/INST] assistant </s>, with the system text folded into the first user
 * turn between <<SYS>> markers. The template has no generation prompt: [/INST] is one. */
static cinfer_status render_llama2(const chat_input *in, text_buffer *out) {
    const cinfer_chat_message *m = in->messages;
    const bool has_system = is_role(&m[0], "system");
    const cinfer_chat_message *turns = m + has_system;
    for (int i = 0; i < in->n_messages - has_system; i++) {
        CI_TRY(check_alternation(&turns[i], i));
        text_buffer content = {0};
        if (i == 0 && has_system)
            append(&content, "<<SYS>>\n", m[0].content, "\n<</SYS>>\n\n", END_OF_ARGS);
        append(&content, turns[i].content, END_OF_ARGS);
        if (content.out_of_memory) out->out_of_memory = true;
        if (is_role(&turns[i], "user")) {
            append(out, in->bos, "[INST] ", END_OF_ARGS);
            append_stripped(out, content.data ? content.data : "");
            append(out, " [/INST]", END_OF_ARGS);
        } else if (is_role(&turns[i], "assistant")) {
            append(out, " ", END_OF_ARGS);
            append_stripped(out, content.data ? content.data : "");
            append(out, " ", in->eos, END_OF_ARGS);
        }
        free(content.data);
    }
    return CINFER_OK;
}

/* Mistral Instruct v0.1/v0.2: like Llama 2 without a system turn and without stripping. */
static cinfer_status render_mistral(const chat_input *in, text_buffer *out) {
    append(out, in->bos, END_OF_ARGS);
    for (int i = 0; i < in->n_messages; i++) {
        const cinfer_chat_message *m = &in->messages[i];
        CI_TRY(check_alternation(m, i));
        if (is_role(m, "user"))
            append(out, "[INST] ", m->content, " [/INST]", END_OF_ARGS);
        else if (is_role(m, "assistant"))
            append(out, m->content, in->eos, END_OF_ARGS);
        else
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "chat: this template (Mistral Instruct) only has user and assistant "
                           "turns; turn %d is '%s'",
                           i + 1, m->role);
    }
    return CINFER_OK;
}

/* ChatML: <|im_start|>role, newline, content verbatim, <|im_end|>. */
static cinfer_status render_chatml(const chat_input *in, text_buffer *out) {
    for (int i = 0; i < in->n_messages; i++) {
        const cinfer_chat_message *m = &in->messages[i];
        append(out, "<|im_start|>", m->role, "\n", m->content, "<|im_end|>\n", END_OF_ARGS);
    }
    if (in->add_generation_prompt) append(out, "<|im_start|>assistant\n", END_OF_ARGS);
    return CINFER_OK;
}

/* Zephyr (TinyLlama-Chat): <|role|>, newline, content and eos, newline; other roles are skipped. */
static cinfer_status render_zephyr(const chat_input *in, text_buffer *out) {
    for (int i = 0; i < in->n_messages; i++) {
        const cinfer_chat_message *m = &in->messages[i];
        if (is_role(m, "user") || is_role(m, "system") || is_role(m, "assistant"))
            append(out, "<|", m->role, "|>\n", m->content, in->eos, "\n", END_OF_ARGS);
    }
    if (in->add_generation_prompt) append(out, "<|assistant|>\n", END_OF_ARGS);
    return CINFER_OK;
}

typedef struct chat_family {
    const char *name;
    const char *required[3]; /* markers the template must contain (NULL-terminated) */
    const char *excluded[3]; /* markers of variants this renderer would format differently */
    cinfer_status (*render)(const chat_input *in, text_buffer *out);
} chat_family;

/* First match wins. Templates that inject a default system prompt or tool descriptions of their
 * own (Qwen-style ChatML, Mistral v0.3 and later) are excluded rather than approximated. */
static const chat_family chat_families[] = {
    {"llama3", {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}, {NULL}, render_llama3},
    {"llama2", {"[INST]", "<<SYS>>", NULL}, {NULL}, render_llama2},
    {"mistral", {"[INST]", "[/INST]", NULL}, {"system", "[AVAILABLE_TOOLS]", NULL}, render_mistral},
    {"chatml", {"<|im_start|>", "<|im_end|>", NULL}, {"You are", "tools", NULL}, render_chatml},
    {"zephyr", {"<|user|>", "<|assistant|>", NULL}, {NULL}, render_zephyr},
};

static const chat_family *find_family(const char *chat_template) {
    const int n_families = (int)(sizeof chat_families / sizeof chat_families[0]);
    for (int f = 0; f < n_families; f++) {
        const chat_family *family = &chat_families[f];
        bool matches = true;
        for (int i = 0; i < 3 && family->required[i] && matches; i++)
            matches = strstr(chat_template, family->required[i]) != NULL;
        for (int i = 0; i < 3 && family->excluded[i] && matches; i++)
            matches = strstr(chat_template, family->excluded[i]) == NULL;
        if (matches) return family;
    }
    return NULL;
}

const char *ci_chat_family(const char *chat_template) {
    const chat_family *family = chat_template ? find_family(chat_template) : NULL;
    return family ? family->name : NULL;
}

cinfer_status ci_chat_render(const char *chat_template, const char *bos_token,
                             const char *eos_token, const cinfer_chat_message *messages,
                             int n_messages, int add_generation_prompt, char **text) {
    *text = NULL;
    if (!chat_template)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "tokenizer_config.json: the checkpoint has no chat_template (it is not a "
                       "chat model); give the prompt as plain text");
    const chat_family *family = find_family(chat_template);
    if (!family)
        return CI_FAIL(CINFER_ERR_UNSUPPORTED,
                       "tokenizer_config.json: chat_template is not one of the families cinfer "
                       "formats (llama3, llama2, mistral, chatml, zephyr); format the "
                       "conversation yourself and give it as plain text");
    if (n_messages < 1) return CI_FAIL(CINFER_ERR_ARGUMENT, "chat: the conversation is empty");
    for (int i = 0; i < n_messages; i++)
        if (!messages[i].role || !messages[i].content)
            return CI_FAIL(CINFER_ERR_ARGUMENT, "chat: turn %d has no %s", i + 1,
                           messages[i].role ? "content" : "role");

    chat_input in = {chat_template, bos_token,  eos_token,
                     messages,      n_messages, add_generation_prompt != 0};
    text_buffer out = {0};
    cinfer_status status = family->render(&in, &out);
    if (status == CINFER_OK && !out.out_of_memory && !out.data) append_bytes(&out, "", 0);
    if (status == CINFER_OK && out.out_of_memory)
        status = CI_FAIL(CINFER_ERR_MEMORY, "out of memory formatting a chat prompt");
    if (status != CINFER_OK) {
        free(out.data);
        return status;
    }
    *text = out.data;
    return CINFER_OK;
}

cinfer_status cinfer_chat_apply(const cinfer_tokenizer *tok, const cinfer_chat_message *messages,
                                int n_messages, int add_generation_prompt, char **text) {
    *text = NULL;
    if (!tok) return CI_FAIL(CINFER_ERR_ARGUMENT, "chat: no tokenizer given");
    return ci_chat_render(cinfer_tokenizer_chat_template(tok), cinfer_tokenizer_bos_token(tok),
                          cinfer_tokenizer_eos_token(tok), messages, n_messages,
                          add_generation_prompt, text);
}
