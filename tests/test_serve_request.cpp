// cinfer serve's request bodies (programs/serve_request.c): every field of OpenAI's completions
// and chat completions as vLLM and llama-server take them, their defaults, and every refusal with
// its status, param and code; the error object's JSON.
#include <gtest/gtest.h>

#include <cjson/cJSON.h>

#include <memory>
#include <string>

extern "C" {
#include "programs/serve_request.h"
}

namespace {

// One parse, its request freed at the end of the scope.
struct Parsed {
    serve_request req;
    serve_error err;
    int rc;
    Parsed(serve_kind kind, const std::string &body) {
        rc = serve_request_parse(kind, body.data(), body.size(), &req, &err);
    }
    ~Parsed() { serve_request_free(&req); }
    Parsed(const Parsed &) = delete;
    Parsed &operator=(const Parsed &) = delete;
};

Parsed *completion(const std::string &fields) {
    return new Parsed(SERVE_COMPLETION,
                      "{\"prompt\": \"Hi\"" + (fields.empty() ? "" : ", " + fields) + "}");
}

Parsed *chat(const std::string &fields) {
    return new Parsed(SERVE_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]" +
                                      (fields.empty() ? "" : ", " + fields) + "}");
}

// The body is refused with 400, naming param (empty: null), with code (nullptr: null), and the
// message holds `says`.
void expect_refused(const Parsed &p, const char *param, const char *code = nullptr,
                    const char *says = "") {
    EXPECT_EQ(p.rc, -1);
    EXPECT_EQ(p.err.status, 400) << p.err.message;
    EXPECT_STREQ(p.err.param, param) << p.err.message;
    if (code)
        EXPECT_STREQ(p.err.code, code) << p.err.message;
    else
        EXPECT_EQ(p.err.code, nullptr) << p.err.message;
    EXPECT_STREQ(p.err.type, "invalid_request_error");
    EXPECT_NE(p.err.message[0], '\0');
    EXPECT_NE(std::string(p.err.message).find(says), std::string::npos) << p.err.message;
    // refused: nothing held
    EXPECT_EQ(p.req.model, nullptr);
    EXPECT_EQ(p.req.prompt, nullptr);
    EXPECT_EQ(p.req.prompt_tokens, nullptr);
    EXPECT_EQ(p.req.messages, nullptr);
    EXPECT_EQ(p.req.stop, nullptr);
}

#define COMPLETION_REFUSED(fields, ...)                                                            \
    do {                                                                                           \
        std::unique_ptr<Parsed> p_(completion(fields));                                            \
        SCOPED_TRACE(fields);                                                                      \
        expect_refused(*p_, __VA_ARGS__);                                                          \
    } while (0)
#define CHAT_REFUSED(fields, ...)                                                                  \
    do {                                                                                           \
        std::unique_ptr<Parsed> p_(chat(fields));                                                  \
        SCOPED_TRACE(fields);                                                                      \
        expect_refused(*p_, __VA_ARGS__);                                                          \
    } while (0)
#define BODY_REFUSED(kind, body, ...)                                                              \
    do {                                                                                           \
        Parsed p_(kind, body);                                                                     \
        SCOPED_TRACE(body);                                                                        \
        expect_refused(p_, __VA_ARGS__);                                                           \
    } while (0)

TEST(ServeRequest, CompletionDefaults) {
    std::unique_ptr<Parsed> p(completion(""));
    ASSERT_EQ(p->rc, 0) << p->err.message;
    EXPECT_EQ(p->err.status, 0);
    EXPECT_EQ(p->req.kind, SERVE_COMPLETION);
    EXPECT_EQ(p->req.model, nullptr);
    EXPECT_STREQ(p->req.prompt, "Hi");
    EXPECT_EQ(p->req.prompt_tokens, nullptr);
    EXPECT_EQ(p->req.max_tokens, 16); // OpenAI's default for completions
    EXPECT_EQ(p->req.sampling.temperature, 1.0f);
    EXPECT_EQ(p->req.sampling.top_p, 1.0f);
    EXPECT_EQ(p->req.sampling.top_k, 0);
    EXPECT_EQ(p->req.has_seed, 0);
    EXPECT_EQ(p->req.n_stop, 0);
    EXPECT_EQ(p->req.stream, 0);
    EXPECT_EQ(p->req.include_usage, 0);
    EXPECT_EQ(p->req.logprobs, 0);
    EXPECT_EQ(p->req.top_logprobs, 0);
    EXPECT_EQ(p->req.ignore_eos, 0);
}

TEST(ServeRequest, ChatDefaults) {
    std::unique_ptr<Parsed> p(chat(""));
    ASSERT_EQ(p->rc, 0) << p->err.message;
    EXPECT_EQ(p->req.kind, SERVE_CHAT);
    ASSERT_EQ(p->req.n_messages, 1);
    EXPECT_STREQ(p->req.messages[0].role, "user");
    EXPECT_STREQ(p->req.messages[0].content, "Hi");
    EXPECT_EQ(p->req.prompt, nullptr);
    EXPECT_EQ(p->req.max_tokens, -1); // none: the server caps by the context
    EXPECT_EQ(p->req.sampling.temperature, 1.0f);
    EXPECT_EQ(p->req.sampling.top_p, 1.0f);
    EXPECT_EQ(p->req.logprobs, 0);
}

TEST(ServeRequest, CompletionEveryField) {
    std::unique_ptr<Parsed> p(completion(
        "\"model\": \"diffllama-tiny\", \"max_tokens\": 32, \"temperature\": 0.5, \"top_p\": 0.25, "
        "\"top_k\": 40, \"seed\": 1234, \"stop\": [\"\\n\\n\", \"The end\"], \"stream\": true, "
        "\"stream_options\": {\"include_usage\": true}, \"logprobs\": 5, \"ignore_eos\": true, "
        "\"n\": 1, \"echo\": false, \"user\": \"someone\", \"presence_penalty\": 0, "
        "\"frequency_penalty\": 0.0, \"best_of\": 1, \"suffix\": null, \"logit_bias\": {}, "
        "\"some_future_field\": {\"x\": [1, 2]}"));
    ASSERT_EQ(p->rc, 0) << p->err.message;
    const serve_request &r = p->req;
    EXPECT_STREQ(r.model, "diffllama-tiny");
    EXPECT_EQ(r.max_tokens, 32);
    EXPECT_EQ(r.sampling.temperature, 0.5f);
    EXPECT_EQ(r.sampling.top_p, 0.25f);
    EXPECT_EQ(r.sampling.top_k, 40);
    EXPECT_EQ(r.has_seed, 1);
    EXPECT_EQ(r.sampling.seed, 1234u);
    ASSERT_EQ(r.n_stop, 2);
    EXPECT_STREQ(r.stop[0], "\n\n");
    EXPECT_STREQ(r.stop[1], "The end");
    EXPECT_EQ(r.stream, 1);
    EXPECT_EQ(r.include_usage, 1);
    EXPECT_EQ(r.logprobs, 1);
    EXPECT_EQ(r.top_logprobs, 5);
    EXPECT_EQ(r.ignore_eos, 1);
}

TEST(ServeRequest, CompletionPromptForms) {
    {
        Parsed p(SERVE_COMPLETION, "{\"prompt\": [1, 2, 3.0, 0]}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_EQ(p.req.prompt, nullptr);
        ASSERT_EQ(p.req.n_prompt_tokens, 4);
        EXPECT_EQ(p.req.prompt_tokens[0], 1);
        EXPECT_EQ(p.req.prompt_tokens[2], 3);
        EXPECT_EQ(p.req.prompt_tokens[3], 0);
    }
    { // a batch of one, as vLLM takes it
        Parsed p(SERVE_COMPLETION, "{\"prompt\": [\"caf\\u00e9\"]}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_STREQ(p.req.prompt, "caf\xc3\xa9");
    }
    {
        Parsed p(SERVE_COMPLETION, "{\"prompt\": [[7, 8]]}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        ASSERT_EQ(p.req.n_prompt_tokens, 2);
        EXPECT_EQ(p.req.prompt_tokens[1], 8);
    }
    { // an empty text is the server's to judge once tokenized (a BOS may make it one token)
        Parsed p(SERVE_COMPLETION, "{\"prompt\": \"\"}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_STREQ(p.req.prompt, "");
    }
    { // the largest id a token can have
        Parsed p(SERVE_COMPLETION, "{\"prompt\": [2147483647]}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_EQ(p.req.prompt_tokens[0], 2147483647);
    }
}

TEST(ServeRequest, CompletionPromptRefusals) {
    BODY_REFUSED(SERVE_COMPLETION, "{}", "prompt", nullptr, "prompt is required");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": null}", "prompt", nullptr, "required");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": 5}", "prompt", nullptr, "got a number");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": {\"a\": 1}}", "prompt", nullptr, "an object");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": []}", "prompt", nullptr, "empty");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [[]]}", "prompt", nullptr, "empty");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [1, -2]}", "prompt", nullptr, "element 1 is -2");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [1, 2.5]}", "prompt", nullptr, "element 1");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [1, \"a\"]}", "prompt", nullptr, "element 1");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [2147483648]}", "prompt", nullptr,
                 "[0, 2147483647]");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [\"a\", \"b\"]}", "prompt", "unsupported_value",
                 "lists of 2 prompts");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": [[1], [2]]}", "prompt", "unsupported_value",
                 "lists of 2 prompts");
    // not UTF-8: a lone continuation byte, an overlong '/', a surrogate, past U+10FFFF, cut short
    for (const char *bad : {"\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\xe2\x82"}) {
        BODY_REFUSED(SERVE_COMPLETION, std::string("{\"prompt\": \"") + bad + "\"}", "prompt",
                     nullptr, "valid UTF-8");
    }
}

TEST(ServeRequest, ChatMessages) {
    Parsed p(SERVE_CHAT,
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
             "{\"role\": \"developer\", \"content\": \"dev\"}, "
             "{\"role\": \"user\", \"name\": \"ann\", \"content\": [{\"type\": \"text\", \"text\": "
             "\"one\"}, {\"type\": \"text\", \"text\": \"two\"}]}, "
             "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": []}, "
             "{\"role\": \"tool\", \"content\": \"42\", \"tool_call_id\": \"c1\"}, "
             "{\"role\": \"user\", \"content\": []}]}");
    ASSERT_EQ(p.rc, 0) << p.err.message;
    ASSERT_EQ(p.req.n_messages, 6);
    const char *roles[] = {"system", "developer", "user", "assistant", "tool", "user"};
    const char *contents[] = {"Be brief.", "dev", "one\ntwo", "", "42", ""};
    for (int i = 0; i < 6; i++) {
        EXPECT_STREQ(p.req.messages[i].role, roles[i]) << i;
        EXPECT_STREQ(p.req.messages[i].content, contents[i]) << i;
    }
}

TEST(ServeRequest, ChatRefusals) {
    BODY_REFUSED(SERVE_CHAT, "{}", "messages", nullptr, "messages is required");
    BODY_REFUSED(SERVE_CHAT, "{\"prompt\": \"Hi\"}", "messages", nullptr, "required");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": []}", "messages", nullptr, "must not be empty");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": \"Hi\"}", "messages", nullptr, "a list");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [\"Hi\"]}", "messages[0]", nullptr, "an object");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"content\": \"Hi\"}]}", "messages[0].role", nullptr,
                 "one of system, user, assistant, tool, developer");
    BODY_REFUSED(SERVE_CHAT,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"wizard\", "
                 "\"content\": \"b\"}]}",
                 "messages[1].role", nullptr, "got \"wizard\"");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": \"User\", \"content\": \"a\"}]}",
                 "messages[0].role", nullptr, "got \"User\"");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": 1, \"content\": \"a\"}]}",
                 "messages[0].role", nullptr, "got 1");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content",
                 nullptr, "required for a user message");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": null}]}",
                 "messages[0].content", nullptr, "required");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
                 "messages[0].content", nullptr, "got a number");
    BODY_REFUSED(SERVE_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [\"a\"]}]}",
                 "messages[0].content[0]", nullptr, "must be an object");
    BODY_REFUSED(SERVE_CHAT,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                 "\"image_url\": {\"url\": \"http://x\"}}]}]}",
                 "messages[0].content[0]", "unsupported_value", "text only, got \"image_url\"");
    BODY_REFUSED(SERVE_CHAT,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
                 "messages[0].content[0]", nullptr, "text must be a string");
    BODY_REFUSED(SERVE_CHAT,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"ok\"}, {\"role\": \"user\", "
                 "\"content\": \"\xff\"}]}",
                 "messages[1].content", nullptr, "valid UTF-8");
    BODY_REFUSED(SERVE_CHAT,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", "
                 "\"text\": \"\xc3\"}]}]}",
                 "messages[0].content[0]", nullptr, "valid UTF-8");
}

TEST(ServeRequest, MaxTokens) {
    {
        std::unique_ptr<Parsed> p(completion("\"max_tokens\": 1"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.max_tokens, 1);
    }
    {
        std::unique_ptr<Parsed> p(completion("\"max_tokens\": 1073741824"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.max_tokens, SERVE_MAX_TOKENS);
    }
    {
        std::unique_ptr<Parsed> p(completion("\"max_tokens\": null"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.max_tokens, 16);
    }
    { // chat: max_completion_tokens wins over the older max_tokens, as in vLLM
        std::unique_ptr<Parsed> p(chat("\"max_tokens\": 5, \"max_completion_tokens\": 7"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.max_tokens, 7);
    }
    {
        std::unique_ptr<Parsed> p(chat("\"max_tokens\": 5"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.max_tokens, 5);
    }
    COMPLETION_REFUSED("\"max_tokens\": 0", "max_tokens", nullptr,
                       "max_tokens must be an integer in [1, 1073741824], got 0");
    COMPLETION_REFUSED("\"max_tokens\": -5", "max_tokens", nullptr, "got -5");
    COMPLETION_REFUSED("\"max_tokens\": 2.5", "max_tokens", nullptr, "got 2.5");
    COMPLETION_REFUSED("\"max_tokens\": \"16\"", "max_tokens", nullptr, "got \"16\"");
    COMPLETION_REFUSED("\"max_tokens\": 1e12", "max_tokens", nullptr, "[1, 1073741824]");
    CHAT_REFUSED("\"max_completion_tokens\": 0", "max_completion_tokens", nullptr, "got 0");
    CHAT_REFUSED("\"max_tokens\": true", "max_tokens", nullptr, "got true");
}

TEST(ServeRequest, Sampling) {
    {
        std::unique_ptr<Parsed> p(completion("\"temperature\": 0, \"top_p\": 1, \"top_k\": -1"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.sampling.temperature, 0.0f); // greedy
        EXPECT_EQ(p->req.sampling.top_p, 1.0f);
        EXPECT_EQ(p->req.sampling.top_k, 0); // -1: off, as vLLM writes it
    }
    {
        std::unique_ptr<Parsed> p(completion("\"temperature\": 2, \"top_p\": 1e-9, \"top_k\": 0"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.sampling.temperature, 2.0f);
        EXPECT_GT(p->req.sampling.top_p, 0.0f);
        EXPECT_EQ(p->req.sampling.top_k, 0);
    }
    {
        std::unique_ptr<Parsed> p(
            completion("\"temperature\": null, \"top_p\": null, \"seed\": -1"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.sampling.temperature, 1.0f);
        EXPECT_EQ(p->req.has_seed, 1);
        EXPECT_EQ(p->req.sampling.seed, UINT64_MAX); // as int64 -1
    }
    {
        std::unique_ptr<Parsed> p(completion("\"seed\": 9007199254740992"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.sampling.seed, 9007199254740992ull);
    }
    COMPLETION_REFUSED("\"temperature\": -1", "temperature", nullptr,
                       "temperature must be a number in [0, 2], got -1");
    COMPLETION_REFUSED("\"temperature\": 2.5", "temperature", nullptr, "got 2.5");
    COMPLETION_REFUSED("\"temperature\": 1e999", "temperature", nullptr, "got inf");
    COMPLETION_REFUSED("\"temperature\": \"hot\"", "temperature", nullptr, "got \"hot\"");
    COMPLETION_REFUSED("\"temperature\": NaN", "", nullptr, "not valid JSON"); // not JSON
    COMPLETION_REFUSED("\"top_p\": 0", "top_p", nullptr, "top_p must be a number in (0, 1], got 0");
    COMPLETION_REFUSED("\"top_p\": 1.5", "top_p", nullptr, "got 1.5");
    COMPLETION_REFUSED("\"top_p\": -0.5", "top_p", nullptr, "got -0.5");
    COMPLETION_REFUSED("\"top_k\": -2", "top_k", nullptr, "[-1, 1073741824], got -2");
    COMPLETION_REFUSED("\"top_k\": 1.5", "top_k", nullptr, "got 1.5");
    COMPLETION_REFUSED("\"seed\": 1.5", "seed", nullptr, "seed must be an integer");
    COMPLETION_REFUSED("\"seed\": 1e300", "seed", nullptr, "2^53");
    COMPLETION_REFUSED("\"seed\": \"7\"", "seed", nullptr, "got \"7\"");
}

TEST(ServeRequest, Penalties) {
    {
        std::unique_ptr<Parsed> p(chat("\"presence_penalty\": 0, \"frequency_penalty\": null, "
                                       "\"repetition_penalty\": 1, \"min_p\": 0"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
    }
    COMPLETION_REFUSED("\"presence_penalty\": 0.5", "presence_penalty", "unsupported_value",
                       "not supported");
    CHAT_REFUSED("\"frequency_penalty\": -1", "frequency_penalty", "unsupported_value",
                 "not supported");
    CHAT_REFUSED("\"frequency_penalty\": \"0\"", "frequency_penalty", nullptr, "a number");
    COMPLETION_REFUSED("\"repetition_penalty\": 1.1", "repetition_penalty", "unsupported_value");
    COMPLETION_REFUSED("\"min_p\": 0.1", "min_p", "unsupported_value");
    COMPLETION_REFUSED("\"logit_bias\": {\"50256\": -100}", "logit_bias", "unsupported_value");
}

TEST(ServeRequest, Stop) {
    {
        std::unique_ptr<Parsed> p(completion("\"stop\": \"END\""));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        ASSERT_EQ(p->req.n_stop, 1);
        EXPECT_STREQ(p->req.stop[0], "END");
    }
    for (const char *none :
         {"\"stop\": null", "\"stop\": []", "\"stop\": \"\"", "\"stop\": [\"\"]"}) {
        std::unique_ptr<Parsed> p(completion(none));
        ASSERT_EQ(p->rc, 0) << none << ": " << p->err.message;
        EXPECT_EQ(p->req.n_stop, 0) << none;
    }
    std::string many = "\"stop\": [", longest(SERVE_MAX_STOP_BYTES, 'x');
    for (int i = 0; i < SERVE_MAX_STOP; i++) many += (i ? ", \"" : "\"") + longest + "\"";
    {
        std::unique_ptr<Parsed> p(completion(many + "]"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.n_stop, SERVE_MAX_STOP);
        EXPECT_EQ(std::string(p->req.stop[SERVE_MAX_STOP - 1]), longest);
    }
    COMPLETION_REFUSED(many + ", \"y\"]", "stop", nullptr, "at most 64 strings, got 65");
    std::string ten_thousand = "\"stop\": [";
    for (int i = 0; i < 10000; i++) ten_thousand += i ? ", \"s\"" : "\"s\"";
    COMPLETION_REFUSED(ten_thousand + "]", "stop", nullptr, "got 10000");
    COMPLETION_REFUSED("\"stop\": [\"" + longest + "x\"]", "stop", nullptr,
                       "at most 1024 bytes, element 0 has 1025");
    COMPLETION_REFUSED("\"stop\": 5", "stop", nullptr, "a string or a list of strings");
    COMPLETION_REFUSED("\"stop\": [\"a\", 5]", "stop", nullptr, "element 1 is a number");
    COMPLETION_REFUSED("\"stop\": [\"\xfe\"]", "stop", nullptr, "valid UTF-8");
}

TEST(ServeRequest, StreamAndFlags) {
    {
        std::unique_ptr<Parsed> p(chat("\"stream\": true, \"stream_options\": {\"include_usage\": "
                                       "false, \"continuous_usage_stats\": true}"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.stream, 1);
        EXPECT_EQ(p->req.include_usage, 0);
    }
    {
        std::unique_ptr<Parsed> p(chat("\"stream\": false, \"stream_options\": null, "
                                       "\"ignore_eos\": false, \"user\": \"u\""));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.stream, 0);
    }
    CHAT_REFUSED("\"stream\": 1", "stream", nullptr, "stream must be a boolean, got a number");
    CHAT_REFUSED("\"stream\": \"true\"", "stream", nullptr, "a string");
    CHAT_REFUSED("\"stream_options\": {\"include_usage\": true}", "stream_options", nullptr,
                 "only allowed when stream is true");
    CHAT_REFUSED("\"stream\": true, \"stream_options\": true", "stream_options", nullptr,
                 "an object");
    CHAT_REFUSED("\"stream\": true, \"stream_options\": {\"include_usage\": 1}",
                 "stream_options.include_usage", nullptr, "a boolean");
    COMPLETION_REFUSED("\"ignore_eos\": \"yes\"", "ignore_eos", nullptr, "a boolean");
}

TEST(ServeRequest, Logprobs) {
    { // completions: an integer, 0 the sampled token alone
        std::unique_ptr<Parsed> p(completion("\"logprobs\": 0"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.logprobs, 1);
        EXPECT_EQ(p->req.top_logprobs, 0);
    }
    {
        std::unique_ptr<Parsed> p(completion("\"logprobs\": 20"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.top_logprobs, CINFER_MAX_TOP_LOGPROBS);
    }
    {
        std::unique_ptr<Parsed> p(completion("\"logprobs\": null"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.logprobs, 0);
    }
    COMPLETION_REFUSED("\"logprobs\": 21", "logprobs", nullptr, "[0, 20], got 21");
    COMPLETION_REFUSED("\"logprobs\": -1", "logprobs", nullptr, "got -1");
    COMPLETION_REFUSED("\"logprobs\": true", "logprobs", nullptr, "got true");
    { // chat: a boolean, and top_logprobs beside it
        std::unique_ptr<Parsed> p(chat("\"logprobs\": true, \"top_logprobs\": 3"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.logprobs, 1);
        EXPECT_EQ(p->req.top_logprobs, 3);
    }
    {
        std::unique_ptr<Parsed> p(chat("\"logprobs\": true"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.logprobs, 1);
        EXPECT_EQ(p->req.top_logprobs, 0);
    }
    {
        std::unique_ptr<Parsed> p(chat("\"logprobs\": false, \"top_logprobs\": 0"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.logprobs, 0);
    }
    CHAT_REFUSED("\"logprobs\": 5", "logprobs", nullptr, "a boolean");
    CHAT_REFUSED("\"logprobs\": true, \"top_logprobs\": 21", "top_logprobs", nullptr,
                 "[0, 20], got 21");
    CHAT_REFUSED("\"top_logprobs\": 2", "top_logprobs", nullptr, "needs logprobs");
}

TEST(ServeRequest, UnsupportedChoices) {
    {
        std::unique_ptr<Parsed> p(completion("\"n\": 1, \"best_of\": null, \"echo\": false, "
                                             "\"suffix\": \"\""));
        ASSERT_EQ(p->rc, 0) << p->err.message;
    }
    COMPLETION_REFUSED("\"n\": 2", "n", "unsupported_value", "n must be 1");
    CHAT_REFUSED("\"n\": 3", "n", "unsupported_value", "got 3");
    COMPLETION_REFUSED("\"n\": 0", "n", nullptr, "got 0");
    COMPLETION_REFUSED("\"n\": \"1\"", "n", nullptr, "an integer");
    COMPLETION_REFUSED("\"best_of\": 2", "best_of", "unsupported_value", "best_of must be 1");
    COMPLETION_REFUSED("\"echo\": true", "echo", "unsupported_value", "echo is not supported");
    COMPLETION_REFUSED("\"echo\": 1", "echo", nullptr, "a boolean");
    COMPLETION_REFUSED("\"suffix\": \"end\"", "suffix", "unsupported_value");
}

TEST(ServeRequest, Model) {
    {
        std::unique_ptr<Parsed> p(chat("\"model\": \"no-such-model\""));
        ASSERT_EQ(p->rc, 0) << p->err.message; // 404 is the server's: it knows its models
        EXPECT_STREQ(p->req.model, "no-such-model");
    }
    CHAT_REFUSED("\"model\": 7", "model", nullptr, "model must be a string");
    CHAT_REFUSED("\"model\": \"\xc3\x28\"", "model", nullptr, "valid UTF-8");
}

TEST(ServeRequest, Keys) {
    { // case-sensitive; of a repeated key the last counts, as in Python's json
        std::unique_ptr<Parsed> p(
            completion("\"Temperature\": 9, \"max_tokens\": 3, \"max_tokens\": 4"));
        ASSERT_EQ(p->rc, 0) << p->err.message;
        EXPECT_EQ(p->req.sampling.temperature, 1.0f);
        EXPECT_EQ(p->req.max_tokens, 4);
    }
}

TEST(ServeRequest, MalformedBodies) {
    BODY_REFUSED(SERVE_COMPLETION, "", "", nullptr, "not valid JSON");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": \"Hi\"", "", nullptr, "not valid JSON");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": \"Hi\"} x", "", nullptr, "text after the value");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": 'Hi'}", "", nullptr, "not valid JSON");
    BODY_REFUSED(SERVE_COMPLETION, "[1, 2]", "", nullptr, "must be a JSON object, got an array");
    BODY_REFUSED(SERVE_CHAT, "\"Hi\"", "", nullptr, "got a string");
    BODY_REFUSED(SERVE_COMPLETION,
                 std::string("{\"prompt\": \"a\0b\"}", sizeof "{\"prompt\": \"a\0b\"}" - 1), "",
                 nullptr, "NUL byte");
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": \"a\\u0000b\"}", "", nullptr, "\\u0000");
    // an escaped backslash before u0000 is text, not an escape
    {
        Parsed p(SERVE_COMPLETION, "{\"prompt\": \"a\\\\u0000b\"}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_STREQ(p.req.prompt, "a\\u0000b");
    }
    // a lone surrogate escape is not JSON that names a character
    BODY_REFUSED(SERVE_COMPLETION, "{\"prompt\": \"\\udc00\"}", "", nullptr, "not valid JSON");
}

TEST(ServeRequest, DeepNesting) {
    // within the limit: an ignored field SERVE_MAX_DEPTH - 1 levels deep inside the body
    std::string ok = "{\"prompt\": \"Hi\", \"x\": " + std::string(SERVE_MAX_DEPTH - 1, '[') +
                     std::string(SERVE_MAX_DEPTH - 1, ']') + "}";
    {
        Parsed p(SERVE_COMPLETION, ok);
        EXPECT_EQ(p.rc, 0) << p.err.message;
    }
    std::string deep = "{\"prompt\": \"Hi\", \"x\": " + std::string(SERVE_MAX_DEPTH, '[') +
                       std::string(SERVE_MAX_DEPTH, ']') + "}";
    BODY_REFUSED(SERVE_COMPLETION, deep, "", nullptr, "nested too deeply");
    // a million levels, unterminated, and brackets inside strings count as text
    BODY_REFUSED(SERVE_CHAT, std::string(1000000, '['), "", nullptr, "nested too deeply");
    BODY_REFUSED(SERVE_CHAT, std::string(1000000, '{'), "", nullptr, "nested too deeply");
    {
        Parsed p(SERVE_COMPLETION, "{\"prompt\": \"" + std::string(10000, '[') + "\\\"\"}");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_EQ(std::string(p.req.prompt), std::string(10000, '[') + "\"");
    }
}

// The error object as OpenAI writes it, parsed back.
TEST(ServeRequest, ErrorJson) {
    std::unique_ptr<Parsed> p(completion("\"temperature\": -1"));
    ASSERT_EQ(p->rc, -1);
    char *text = serve_error_json(&p->err);
    ASSERT_NE(text, nullptr);
    cJSON *root = cJSON_Parse(text);
    ASSERT_NE(root, nullptr) << text;
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(root, "error");
    ASSERT_TRUE(cJSON_IsObject(error)) << text;
    EXPECT_STREQ(cJSON_GetObjectItemCaseSensitive(error, "message")->valuestring,
                 "temperature must be a number in [0, 2], got -1");
    EXPECT_STREQ(cJSON_GetObjectItemCaseSensitive(error, "type")->valuestring,
                 "invalid_request_error");
    EXPECT_STREQ(cJSON_GetObjectItemCaseSensitive(error, "param")->valuestring, "temperature");
    EXPECT_TRUE(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(error, "code"))) << text;
    cJSON_Delete(root);
    free(text);

    // the server's own: a code, no param, quotes and control characters escaped, a message cut
    // inside a character made valid UTF-8
    serve_error err;
    serve_error_set(&err, 404, nullptr, "model_not_found", "The model `%s` does not exist.",
                    "a\"b\n");
    EXPECT_EQ(err.status, 404);
    text = serve_error_json(&err);
    ASSERT_NE(text, nullptr);
    EXPECT_STREQ(text, "{\"error\":{\"message\":\"The model `a\\\"b\\n` does not exist.\","
                       "\"type\":\"invalid_request_error\",\"param\":null,"
                       "\"code\":\"model_not_found\"}}");
    free(text);
    std::string long_text(SERVE_MAX_MESSAGE - 2, 'x');
    serve_error_set(&err, 400, "p", nullptr, "%s\xc3\xa9\xc3\xa9", long_text.c_str());
    EXPECT_EQ(std::string(err.message), long_text + "?"); // the cut é's first byte
}

// vLLM's /tokenize and /detokenize bodies.
TEST(ServeRequest, Tokenize) {
    {
        Parsed p(SERVE_TOKENIZE, R"({"prompt": "Hi there", "model": "m"})");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_STREQ(p.req.prompt, "Hi there");
        EXPECT_STREQ(p.req.model, "m");
        EXPECT_EQ(p.req.add_special_tokens, 1); // plain text gets the tokenizer's specials
        EXPECT_EQ(p.req.add_generation_prompt, 1);
    }
    {
        Parsed p(SERVE_TOKENIZE, R"({"messages": [{"role": "user", "content": "Hi"}],
                                     "add_generation_prompt": false})");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        ASSERT_EQ(p.req.n_messages, 1);
        EXPECT_STREQ(p.req.messages[0].content, "Hi");
        EXPECT_EQ(p.req.add_special_tokens, 0); // the template writes its own
        EXPECT_EQ(p.req.add_generation_prompt, 0);
    }
    BODY_REFUSED(SERVE_TOKENIZE, "{}", "prompt", nullptr, "one of prompt");
    BODY_REFUSED(SERVE_TOKENIZE, R"({"prompt": "a", "messages": []})", "prompt", nullptr,
                 "one of prompt");
    BODY_REFUSED(SERVE_TOKENIZE, R"({"prompt": [1, 2]})", "prompt", nullptr, "a string");
    BODY_REFUSED(SERVE_TOKENIZE, R"({"prompt": "a", "add_special_tokens": 1})",
                 "add_special_tokens");
    BODY_REFUSED(SERVE_TOKENIZE, R"({"messages": [{"role": "robot", "content": "a"}]})",
                 "messages[0].role");
}

TEST(ServeRequest, Detokenize) {
    {
        Parsed p(SERVE_DETOKENIZE, R"({"tokens": [0, 15, 4095]})");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        ASSERT_EQ(p.req.n_prompt_tokens, 3);
        EXPECT_EQ(p.req.prompt_tokens[2], 4095);
    }
    {
        Parsed p(SERVE_DETOKENIZE, R"({"tokens": []})");
        ASSERT_EQ(p.rc, 0) << p.err.message;
        EXPECT_EQ(p.req.n_prompt_tokens, 0);
    }
    BODY_REFUSED(SERVE_DETOKENIZE, "{}", "tokens", nullptr, "required");
    BODY_REFUSED(SERVE_DETOKENIZE, R"({"tokens": "1 2"})", "tokens", nullptr, "list");
    BODY_REFUSED(SERVE_DETOKENIZE, R"({"tokens": [1, -2]})", "tokens", nullptr, "element 1");
    BODY_REFUSED(SERVE_DETOKENIZE, R"({"tokens": [1.5]})", "tokens", nullptr, "element 0");
}

// Bytes to JSON-safe text: valid UTF-8 kept, each bad byte and each NUL one U+FFFD.
TEST(ServeRequest, Utf8Lossy) {
    auto lossy = [](const std::string &bytes) {
        char *text = serve_utf8_lossy(bytes.data(), bytes.size());
        std::string out = text ? text : "(null)";
        free(text);
        return out;
    };
    const std::string fffd = "\xEF\xBF\xBD";
    EXPECT_EQ(lossy(""), "");
    EXPECT_EQ(lossy("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
              "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    EXPECT_EQ(lossy("\xE2"), fffd);            // a token that is part of a character
    EXPECT_EQ(lossy("\xE2\x82"), fffd + fffd); // byte by byte
    EXPECT_EQ(lossy(std::string("a\0b", 3)), "a" + fffd + "b"); // NUL would end cJSON's string
    EXPECT_EQ(lossy("\xC0\xAF"), fffd + fffd);                  // overlong
    EXPECT_EQ(lossy("\xED\xA0\x80"), fffd + fffd + fffd);       // a surrogate
    EXPECT_EQ(lossy("\xFFok"), fffd + "ok");
}

TEST(ServeRequest, FreeTwice) {
    std::unique_ptr<Parsed> p(chat("\"stop\": [\"a\"], \"model\": \"m\""));
    ASSERT_EQ(p->rc, 0);
    serve_request_free(&p->req);
    EXPECT_EQ(p->req.messages, nullptr);
    EXPECT_EQ(p->req.kind, SERVE_CHAT);
    // and the destructor frees it again: nothing left to free
}

} // namespace
