/* The request bodies of `cinfer serve` (programs/serve_request.c): the JSON of
 * `POST /v1/completions` and `POST /v1/chat/completions`, as OpenAI, vLLM and llama-server accept
 * them, checked and turned into what the engine needs. Parsing prints nothing and never exits: a
 * refusal is an OpenAI error object (status, message, param, type, code) for the server to send,
 * so tests/fuzz/fuzz_serve_request.c can take the parser alone.
 *
 * Fields neither used nor refused are ignored, as vLLM ignores them ("user", "name", ...). Fields
 * that would change the answer and that cinfer does not implement are refused unless they hold
 * their neutral value (n and best_of 1, echo false, presence/frequency penalties 0, ...), so a
 * client never gets an answer computed without what it asked for. */
#ifndef CINFER_SERVE_REQUEST_H
#define CINFER_SERVE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "../include/cinfer.h"

/* Limits, each with its reason. */
enum {
    /* OpenAI takes 4 stop strings, vLLM any number; 64 is past any real client, and matching
     * each one on every streamed token costs the server time */
    SERVE_MAX_STOP = 64,
    SERVE_MAX_STOP_BYTES = 1024, /* of each stop string: held-back text is at most this long */
    /* nesting of the body: a request is 4 deep (messages[].content[].text) and a tool's JSON
     * schema a few more; far below cJSON's own limit (1000), checked before cJSON recurses */
    SERVE_MAX_DEPTH = 64,
    SERVE_MAX_TOKENS = 1 << 30, /* max_tokens at most: past any context, inside an int */
    SERVE_MAX_TOP_K = 1 << 30,  /* past any vocabulary (a larger top_k is off anyway) */
    SERVE_MAX_MESSAGE = 512,    /* bytes of an error message, its NUL included */
    SERVE_MAX_PARAM = 96        /* bytes of an error's param ("messages[12].content[3].text") */
};
/* seed at most in magnitude: cJSON holds numbers as doubles, exact up to 2^53 */
#define SERVE_MAX_SEED 9007199254740992.0

typedef enum serve_kind {
    SERVE_COMPLETION = 0, /* POST /v1/completions */
    SERVE_CHAT = 1,       /* POST /v1/chat/completions */
    SERVE_TOKENIZE = 2,   /* POST /tokenize: prompt (text) or messages, add_special_tokens and
                             add_generation_prompt; nothing else is read */
    SERVE_DETOKENIZE = 3  /* POST /detokenize: tokens into prompt_tokens (may be empty) */
} serve_kind;

typedef struct serve_request {
    serve_kind kind;
    char *model; /* as given (valid UTF-8), NULL when absent: 404 is the server's to decide */

    /* completions: exactly one of prompt (text) and prompt_tokens is set */
    char *prompt;           /* valid UTF-8, may be "" */
    int32_t *prompt_tokens; /* ids >= 0 (the vocabulary is the server's to check) */
    int n_prompt_tokens;    /* >= 1 when prompt_tokens is set */
    /* chat: the conversation, for cinfer_chat_apply; each role is one of system, user,
     * assistant, tool, developer, and each content valid UTF-8 ("" for an assistant's null);
     * content given as parts is their texts joined by "\n", as vLLM joins them */
    cinfer_chat_message *messages;
    int n_messages; /* >= 1 for chat */

    int max_tokens; /* [1, SERVE_MAX_TOKENS]; completions: 16 when absent; chat: -1 when absent
                       (the server caps by the context); chat takes max_completion_tokens first */
    cinfer_sampling sampling; /* temperature [0, 2] (1), top_p (0, 1] (1), top_k [0,
                                 SERVE_MAX_TOP_K] (-1 and 0: off), seed as given */
    int has_seed;             /* 0: the server picks one */
    char **stop;              /* n_stop strings, each valid UTF-8 of 1 to SERVE_MAX_STOP_BYTES
                                 bytes (empty ones are dropped: they could never be waited for) */
    int n_stop;               /* [0, SERVE_MAX_STOP] */
    int stream;
    int include_usage; /* stream_options.include_usage (only with stream) */
    int logprobs;      /* 0 or 1: each token's log-probability */
    int top_logprobs;  /* [0, CINFER_MAX_TOP_LOGPROBS] alternatives; 0 unless logprobs */
    int ignore_eos;
    int add_special_tokens, add_generation_prompt; /* tokenize's */
} serve_request;

/* OpenAI's error object. status 0: no error. */
typedef struct serve_error {
    int status;                      /* HTTP status: 400 for every refusal of the parser */
    char message[SERVE_MAX_MESSAGE]; /* names the field and the limit; valid UTF-8 */
    char param[SERVE_MAX_PARAM];     /* the field; "" renders as null */
    const char *type;                /* "invalid_request_error" (a static string) */
    const char *code;                /* NULL renders as null; "unsupported_value" when the
                                        value is well formed but cinfer does not implement it */
} serve_error;

/* The body (size bytes, no terminating NUL needed) of a request of this kind into req. 0, else
 * -1 with err set (400 and a message; 500 only when out of memory) and req freed, its kind
 * kept; err->status is 0 on success. */
int serve_request_parse(serve_kind kind, const char *body, size_t size, serve_request *req,
                        serve_error *err);

/* Frees everything the request holds and zeroes it; safe on a zeroed or freed request. */
void serve_request_free(serve_request *req);

/* Fills err (status, message, param, code), for the server's own refusals (404, 413, ...);
 * type is "invalid_request_error". param and code may be NULL. */
void serve_error_set(serve_error *err, int status, const char *param, const char *code,
                     const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Any bytes as valid UTF-8 for a JSON string: malloc'd and NUL-terminated, each byte that starts
 * no well-formed sequence and each NUL byte replaced by U+FFFD (a token alone may be part of a
 * character; cJSON's strings end at a NUL). NULL when out of memory. */
char *serve_utf8_lossy(const char *bytes, size_t n);

/* {"error": {"message": ..., "type": ..., "param": ..., "code": ...}} as malloc'd text (release
 * with free()), NULL when out of memory. */
char *serve_error_json(const serve_error *err);

#endif
