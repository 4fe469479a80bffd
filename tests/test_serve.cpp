// `cinfer serve` driven over HTTP as a client would drive it (libcurl), on the bundled model
// (models/diffllama-tiny) on the CPU: every route streamed and not, answers equal to `cinfer run`
// and to each other, chat through each template family, 64 clients at once, bad input answered
// with the right status and OpenAI error object, and shutdown. Each suite starts the real binary
// (CINFER_CLI) on a free port and stops it with SIGTERM, asserting exit 0 and no sanitizer
// report: under CINFER_SANITIZE that is the server's leak check.
//
// The harness (the server process, HTTP, SSE, /metrics, raw sockets) is tests/serve_harness.h.
#include "serve_harness.h"

namespace {

using namespace serve_test;

// ---- every route -----------------------------------------------------------------------------

const std::string kPrompt = "And the LORD spake unto Moses, saying,";

TEST_F(ServeApi, CompletionIsWhatCinferRunPrints) {
    for (int n : {1, 24}) {
        const Reply r = post(*server, "/v1/completions", completion_body(quote(kPrompt), n));
        ASSERT_TRUE(is_ok_json(r));
        const Completion c = completion_of(r.json());
        EXPECT_EQ(c.text, cinfer_run({"run", "--model", kModel, "--prompt", kPrompt,
                                      "--max-new-tokens", std::to_string(n), "--threads", "2"}));
        EXPECT_EQ(c.finish, "length");
        EXPECT_EQ(c.completion_tokens, n);
    }
}

// A seeded sample is what `cinfer run` draws with the same seed; and a sample that draws the eos
// token ends there, as run does: finish_reason "stop", the eos token counted and in the logprobs
// but not in the text.
TEST_F(ServeApi, SampledCompletionIsWhatCinferRunPrintsAndEndsAtEos) {
    const std::string prompt = "Praise ye the LORD."; // eos comes next with probability ~0.1
    constexpr int kTokens = 8;
    int eos_seed = -1;
    for (int seed = 1; seed <= 64 && eos_seed < 0; seed++) {
        const std::string body = completion_body(quote(prompt), kTokens,
                                                 R"(, "temperature": 1, "logprobs": 0, "seed": )" +
                                                     std::to_string(seed));
        const Reply r = post(*server, "/v1/completions", body);
        ASSERT_TRUE(is_ok_json(r));
        Json j = r.json();
        const Completion c = completion_of(j);
        const cJSON *tokens = get(j.get(), "choices", 0, "logprobs", "tokens");
        EXPECT_EQ(size(tokens), c.completion_tokens) << r.body;
        if (c.finish == "length") {
            EXPECT_EQ(c.completion_tokens, kTokens);
            if (seed <= 3) { // a few are enough: the draws are the same or they are not
                EXPECT_EQ(c.text,
                          cinfer_run({"run", "--model", kModel, "--prompt", prompt,
                                      "--max-new-tokens", std::to_string(kTokens), "--temperature",
                                      "1", "--seed", std::to_string(seed), "--threads", "2"}));
            }
            continue;
        }
        ASSERT_EQ(c.finish, "stop") << r.body;
        eos_seed = seed;
        EXPECT_LT(c.completion_tokens, kTokens);
        EXPECT_EQ(str(cJSON_GetArrayItem(tokens, size(tokens) - 1)), "<|end_of_text|>") << r.body;
        EXPECT_EQ(c.text.find("<|end_of_text|>"), std::string::npos) << c.text;
        EXPECT_EQ(c.text, cinfer_run({"run", "--model", kModel, "--prompt", prompt,
                                      "--max-new-tokens", std::to_string(kTokens), "--temperature",
                                      "1", "--seed", std::to_string(seed), "--threads", "2"}));
        const Stream st =
            post_stream(*server, "/v1/completions",
                        completion_body(quote(prompt), kTokens,
                                        R"(, "temperature": 1, "stream": true, "seed": )" +
                                            std::to_string(seed)));
        ASSERT_TRUE(is_complete_stream(st));
        EXPECT_EQ(joined_text(st), c.text);
        EXPECT_EQ(stream_finish(st), "stop");
    }
    EXPECT_GE(eos_seed, 1) << "no seed in 1..64 drew the eos token within " << kTokens << " tokens";
}

TEST_F(ServeApi, CompletionHasOpenAIShapeAndUsage) {
    const std::vector<int> ids = tokenize(*server, R"({"prompt": )" + quote(kPrompt) + "}");
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 0); // the post-processor's BOS: <|begin_of_text|>
    const Reply r = post(*server, "/v1/completions", completion_body(quote(kPrompt), 10));
    ASSERT_TRUE(is_ok_json(r));
    Json j = r.json();
    EXPECT_EQ(str(get(j.get(), "object")), "text_completion");
    EXPECT_EQ(str(get(j.get(), "model")), kModelName);
    EXPECT_EQ(str(get(j.get(), "id")).rfind("cmpl-", 0), 0u) << r.body;
    EXPECT_TRUE(cJSON_IsNumber(get(j.get(), "created"))) << r.body;
    EXPECT_EQ(size(get(j.get(), "choices")), 1);
    EXPECT_EQ(num(get(j.get(), "choices", 0, "index")), 0);
    EXPECT_TRUE(cJSON_IsNull(get(j.get(), "choices", 0, "logprobs"))) << r.body;
    const Completion c = completion_of(j);
    EXPECT_EQ(c.prompt_tokens, (int)ids.size());
    EXPECT_EQ(c.completion_tokens, 10);
    EXPECT_EQ(c.total_tokens, c.prompt_tokens + c.completion_tokens);

    // the same prompt given as its ids: the same answer
    const Reply by_ids = post(*server, "/v1/completions", completion_body(ids_json(ids), 10));
    ASSERT_TRUE(is_ok_json(by_ids));
    EXPECT_EQ(completion_of(by_ids.json()).text, c.text);
    EXPECT_EQ(completion_of(by_ids.json()).prompt_tokens, (int)ids.size());
}

TEST_F(ServeApi, StreamedCompletionJoinsToTheBufferedOne) {
    // greedy, then a seeded sample: the seed fixes the draws, streamed or not
    for (const std::string &sampling :
         {std::string(""), std::string(R"(, "temperature": 0.9, "top_p": 0.95, "seed": 1234)")}) {
        const std::string body = completion_body(quote(kPrompt), 20, sampling);
        const Reply r = post(*server, "/v1/completions", body);
        ASSERT_TRUE(is_ok_json(r));
        const Completion c = completion_of(r.json());
        std::string streamed_body = body;
        streamed_body.insert(streamed_body.size() - 1,
                             R"(, "stream": true, "stream_options": {"include_usage": true})");
        const Stream st = post_stream(*server, "/v1/completions", streamed_body);
        ASSERT_TRUE(is_complete_stream(st));
        EXPECT_EQ(joined_text(st), c.text) << sampling;
        EXPECT_EQ(stream_finish(st), "length");
        ASSERT_GE(st.events.size(), 2u);
        for (const auto &e : st.events) {
            EXPECT_EQ(str(get(e.get(), "object")), "text_completion") << print(e.get());
            EXPECT_EQ(str(get(e.get(), "id")), str(get(st.events[0].get(), "id")));
        }
        // the finish_reason comes once, on the last chunk with a choice; the usage chunk is last
        // and has no choices
        const Json &last = st.events.back();
        EXPECT_EQ(size(get(last.get(), "choices")), 0) << print(last.get());
        EXPECT_EQ(num(get(last.get(), "usage", "prompt_tokens")), c.prompt_tokens);
        EXPECT_EQ(num(get(last.get(), "usage", "completion_tokens")), 20);
        EXPECT_EQ(num(get(last.get(), "usage", "total_tokens")), c.prompt_tokens + 20);
        for (size_t i = 0; i + 2 < st.events.size(); i++)
            EXPECT_TRUE(cJSON_IsNull(get(choice0(st.events[i]), "finish_reason")))
                << print(st.events[i].get());
        EXPECT_FALSE(cJSON_IsNull(get(choice0(st.events[st.events.size() - 2]), "finish_reason")));
    }
    // without include_usage no chunk carries usage
    const Stream plain = post_stream(*server, "/v1/completions",
                                     completion_body(quote(kPrompt), 4, R"(, "stream": true)"));
    ASSERT_TRUE(is_complete_stream(plain));
    for (const auto &e : plain.events) EXPECT_EQ(get(e.get(), "usage"), nullptr) << print(e.get());
}

TEST_F(ServeApi, CompletionLogprobs) {
    constexpr int kTop = 3, kTokens = 12;
    for (bool streamed : {false, true}) {
        SCOPED_TRACE(streamed ? "streamed" : "buffered");
        const std::string body = completion_body(
            quote(kPrompt), kTokens,
            std::string(R"(, "logprobs": 3)") +
                (streamed ? R"(, "stream": true, "stream_options": {"include_usage": true})" : ""));
        // the logprobs of every chunk (or of the one answer), in order
        std::vector<Json> answers;
        std::string text;
        int completion_tokens = -1;
        if (streamed) {
            Stream st = post_stream(*server, "/v1/completions", body);
            ASSERT_TRUE(is_complete_stream(st));
            text = joined_text(st);
            completion_tokens = (int)num(get(st.events.back().get(), "usage", "completion_tokens"));
            answers = std::move(st.events);
        } else {
            const Reply r = post(*server, "/v1/completions", body);
            ASSERT_TRUE(is_ok_json(r));
            text = completion_of(r.json()).text;
            completion_tokens = completion_of(r.json()).completion_tokens;
            answers.push_back(r.json());
        }
        std::string tokens_text;
        int n_tokens = 0;
        for (const auto &a : answers) {
            const cJSON *lp = get(choice0(a), "logprobs");
            if (!cJSON_IsObject(lp)) continue; // the usage chunk, the finish chunk
            const cJSON *tokens = get(lp, "tokens"), *values = get(lp, "token_logprobs"),
                        *tops = get(lp, "top_logprobs"), *offsets = get(lp, "text_offset");
            ASSERT_EQ(size(values), size(tokens)) << print(lp);
            ASSERT_EQ(size(tops), size(tokens)) << print(lp);
            ASSERT_EQ(size(offsets), size(tokens)) << print(lp);
            for (int i = 0; i < size(tokens); i++, n_tokens++) {
                const double chosen = num(cJSON_GetArrayItem(values, i));
                EXPECT_LE(chosen, 0.0);
                const cJSON *top = cJSON_GetArrayItem(tops, i);
                ASSERT_EQ(size(top), kTop) << print(top);
                // sorted, most likely first; greedy chose the most likely
                for (int k = 1; k < kTop; k++)
                    EXPECT_GE(num(cJSON_GetArrayItem(top, k - 1)), num(cJSON_GetArrayItem(top, k)))
                        << print(top);
                EXPECT_EQ(std::string(top->child->string), str(cJSON_GetArrayItem(tokens, i)));
                EXPECT_EQ(num(top->child), chosen);
                // text_offset: where the token's text begins in the whole answer
                EXPECT_EQ(num(cJSON_GetArrayItem(offsets, i)), (double)tokens_text.size());
                tokens_text += str(cJSON_GetArrayItem(tokens, i));
            }
        }
        EXPECT_EQ(n_tokens, kTokens);
        EXPECT_EQ(completion_tokens, kTokens);
        EXPECT_EQ(tokens_text, text); // ASCII text: each token's text is whole
    }
    // logprobs=0: the chosen token's alone
    const Reply r =
        post(*server, "/v1/completions", completion_body(quote(kPrompt), 3, R"(, "logprobs": 0)"));
    ASSERT_TRUE(is_ok_json(r));
    Json j = r.json();
    EXPECT_EQ(size(get(j.get(), "choices", 0, "logprobs", "token_logprobs")), 3) << r.body;
}

TEST_F(ServeApi, StopStringsCutTheGreedyText) {
    // the unstopped text and its token boundaries
    constexpr int kTokens = 40;
    const Reply full_reply = post(*server, "/v1/completions",
                                  completion_body(quote(kPrompt), kTokens, R"(, "logprobs": 0)"));
    ASSERT_TRUE(is_ok_json(full_reply));
    Json full_json = full_reply.json();
    const std::string full = completion_of(full_json).text;
    std::vector<size_t> starts; // where each token's text begins
    const cJSON *offsets = get(full_json.get(), "choices", 0, "logprobs", "text_offset");
    for (int i = 0; i < size(offsets); i++)
        starts.push_back((size_t)num(cJSON_GetArrayItem(offsets, i)));
    ASSERT_EQ(starts.size(), (size_t)kTokens);
    starts.push_back(full.size());

    // stop strings taken from the text: a word at a token start, one ending inside a token,
    // one spanning two tokens (from inside the 5th to inside the 6th), and the text's tail
    std::vector<std::string> stops;
    stops.push_back(full.substr(starts[8], starts[9] - starts[8]));
    for (int k = 4; k + 1 < kTokens; k++) // a token of 2+ bytes followed by one of 2+ bytes
        if (starts[k + 1] - starts[k] >= 2 && starts[k + 2] - starts[k + 1] >= 2) {
            stops.push_back(full.substr(starts[k] + 1, starts[k + 1] - starts[k]));
            stops.push_back(full.substr(starts[k + 1] - 1, 2));
            break;
        }
    ASSERT_EQ(stops.size(), 3u) << full;
    stops.push_back(full.substr(full.size() - 3));
    for (const std::string &stop : stops) {
        SCOPED_TRACE("stop " + quote(stop));
        const size_t first = full.find(stop);
        ASSERT_NE(first, std::string::npos);
        const std::string expected = full.substr(0, first);
        const std::string body =
            completion_body(quote(kPrompt), kTokens, R"(, "stop": [)" + quote(stop) + "]");
        const Reply r = post(*server, "/v1/completions", body);
        ASSERT_TRUE(is_ok_json(r));
        const Completion c = completion_of(r.json());
        EXPECT_EQ(c.text, expected);
        EXPECT_EQ(c.text.find(stop), std::string::npos);
        EXPECT_EQ(c.finish, "stop");
        EXPECT_LE(c.completion_tokens, kTokens);
        EXPECT_EQ(c.total_tokens, c.prompt_tokens + c.completion_tokens);
        std::string streamed = body;
        streamed.insert(streamed.size() - 1, R"(, "stream": true)");
        const Stream st = post_stream(*server, "/v1/completions", streamed);
        ASSERT_TRUE(is_complete_stream(st));
        EXPECT_EQ(joined_text(st), expected);
        EXPECT_EQ(stream_finish(st), "stop");
    }
    // several: the earliest occurrence wins; one that never occurs changes nothing
    const std::string late = full.substr(starts[30], 4), early = full.substr(starts[3] + 1, 3);
    const Reply both =
        post(*server, "/v1/completions",
             completion_body(quote(kPrompt), kTokens,
                             R"(, "stop": [)" + quote(late) + "," + quote(early) + "]"));
    ASSERT_TRUE(is_ok_json(both));
    EXPECT_EQ(completion_of(both.json()).text,
              full.substr(0, std::min(full.find(late), full.find(early))));
    const Reply never = post(*server, "/v1/completions",
                             completion_body(quote(kPrompt), kTokens, R"(, "stop": "#never#")"));
    ASSERT_TRUE(is_ok_json(never));
    EXPECT_EQ(completion_of(never.json()).text, full);
    EXPECT_EQ(completion_of(never.json()).finish, "length");
}

TEST_F(ServeApi, ModelsHealthVersionMetrics) {
    const Reply models = get(*server, "/v1/models");
    ASSERT_TRUE(is_ok_json(models));
    Json m = models.json();
    EXPECT_EQ(str(get(m.get(), "object")), "list");
    ASSERT_EQ(size(get(m.get(), "data")), 1) << models.body;
    EXPECT_EQ(str(get(m.get(), "data", 0, "id")), kModelName);
    EXPECT_EQ(str(get(m.get(), "data", 0, "object")), "model");
    EXPECT_EQ(num(get(m.get(), "data", 0, "max_model_len")), kContext);

    const Reply health = get(*server, "/health");
    EXPECT_EQ(health.status, 200) << describe(health);

    const Reply version = get(*server, "/version");
    ASSERT_TRUE(is_ok_json(version));
    const std::string v = str(get(version.json().get(), "version"));
    EXPECT_TRUE(!v.empty() && std::isdigit((unsigned char)v[0])) << version.body;

    const Reply metrics = get(*server, "/metrics");
    EXPECT_EQ(metrics.status, 200) << describe(metrics);
    EXPECT_EQ(metrics.header("content-type").rfind("text/plain", 0), 0u);
}

TEST_F(ServeApi, TokenizeThenDetokenizeRoundTrips) {
    const std::string text =
        "Once upon a time, caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x99\x82 "
        "and\ttabs\nand lines";
    const std::vector<int> plain =
        tokenize(*server, R"({"prompt": )" + quote(text) + R"(, "add_special_tokens": false})");
    const std::vector<int> special = tokenize(*server, R"({"prompt": )" + quote(text) + "}");
    ASSERT_EQ(special.size(), plain.size() + 1);
    EXPECT_EQ(special[0], 0); // BOS first, then the same ids
    EXPECT_TRUE(std::equal(plain.begin(), plain.end(), special.begin() + 1));
    const Reply back = post(*server, "/detokenize", R"({"tokens": )" + ids_json(plain) + "}");
    ASSERT_TRUE(is_ok_json(back));
    EXPECT_EQ(str(get(back.json().get(), "prompt")), text);
    const Reply empty = post(*server, "/detokenize", R"({"tokens": []})");
    ASSERT_TRUE(is_ok_json(empty));
    EXPECT_EQ(str(get(empty.json().get(), "prompt")), "");
}

// The counters of the Prometheus module (fail until serve_metrics.c is the real one).
TEST_F(ServeApi, MetricsCountRequestsAndTokens) {
    const std::vector<std::pair<std::string, std::string>> length = {{"finished_reason", "length"},
                                                                     {"model_name", kModelName}};
    const auto prompt_before = metric(*server, "cinfer:prompt_tokens_total");
    const auto generated_before = metric(*server, "cinfer:generation_tokens_total");
    const auto length_before = metric(*server, "cinfer:request_success_total", length);
    const Reply r = post(*server, "/v1/completions", completion_body(quote(kPrompt), 5));
    ASSERT_TRUE(is_ok_json(r));
    const Completion c = completion_of(r.json());
    const auto prompt_after = metric(*server, "cinfer:prompt_tokens_total");
    const auto generated_after = metric(*server, "cinfer:generation_tokens_total");
    const auto length_after = metric(*server, "cinfer:request_success_total", length);
    ASSERT_TRUE(prompt_after && generated_after && length_after)
        << "series missing from /metrics:\n"
        << get(*server, "/metrics").body;
    EXPECT_EQ(*prompt_after - prompt_before.value_or(0), c.prompt_tokens);
    EXPECT_EQ(*generated_after - generated_before.value_or(0), 5);
    EXPECT_EQ(*length_after - length_before.value_or(0), 1);
    EXPECT_TRUE(engine_goes_idle(*server));
}

// ---- chat through each template family -------------------------------------------------------

// A model folder beside the bundled one: its weights and tokenizer linked, tokenizer_config.json
// written with a family's chat template (from tests/fixtures/chat/cases.json) and the model's own
// special tokens; and the messages of that family's longest case that renders.
struct ChatModel {
    TempDir dir;
    std::string messages; // JSON
    explicit ChatModel(const std::string &family) {
        for (const char *name :
             {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"})
            fs::create_symlink(fs::absolute(fs::path(kModel) / name), dir.path / name);
        Json cases = parse_json(
            cinfer_test::read_file(std::string(CINFER_FIXTURE_DIR) + "/chat/cases.json"));
        const cJSON *chosen = nullptr;
        const cJSON *list = get(cases.get(), "cases");
        for (int i = 0; i < size(list); i++) {
            const cJSON *c = cJSON_GetArrayItem(list, i);
            if (str(get(c, "family")) != family || get(c, "error") ||
                !cJSON_IsTrue(get(c, "add_generation_prompt")))
                continue;
            if (!chosen || size(get(c, "messages")) > size(get(chosen, "messages"))) chosen = c;
        }
        EXPECT_NE(chosen, nullptr) << "no case of family " << family;
        if (!chosen) return;
        messages = print(get(chosen, "messages"));
        Json config(cJSON_CreateObject(), cJSON_Delete);
        cJSON_AddStringToObject(config.get(), "chat_template",
                                str(get(chosen, "template")).c_str());
        cJSON_AddStringToObject(config.get(), "bos_token", "<|begin_of_text|>");
        cJSON_AddStringToObject(config.get(), "eos_token", "<|end_of_text|>");
        cinfer_test::write_file(dir.file("tokenizer_config.json"), print(config.get()));
    }
};

class ServeChat : public ::testing::TestWithParam<std::string> {};

TEST_P(ServeChat, AnswerIsTheCompletionOfTheTemplatedPrompt) {
    const std::string family = GetParam(), name = "tiny-" + family;
    ChatModel model(family);
    ASSERT_FALSE(model.messages.empty());
    Server server({"--served-model-name", name}, model.dir.path.string());
    ASSERT_TRUE(server.ready()) << server.problem();

    const std::vector<int> ids = tokenize(server, R"({"messages": )" + model.messages + "}");
    ASSERT_FALSE(ids.empty());
    const int n = std::min(16, kContext - (int)ids.size());
    ASSERT_GT(n, 0);
    const std::string model_field = R"({"model": )" + quote(name) + ", ";
    const Reply by_ids =
        post(server, "/v1/completions",
             model_field + R"("prompt": )" + ids_json(ids) + R"(, "max_tokens": )" +
                 std::to_string(n) + R"(, "temperature": 0})");
    ASSERT_TRUE(is_ok_json(by_ids));
    const Completion expected = completion_of(by_ids.json());

    const std::string chat_body = model_field + R"("messages": )" + model.messages +
                                  R"(, "max_tokens": )" + std::to_string(n) +
                                  R"(, "temperature": 0)";
    const Reply chat = post(server, "/v1/chat/completions", chat_body + "}");
    ASSERT_TRUE(is_ok_json(chat));
    Json j = chat.json();
    EXPECT_EQ(str(get(j.get(), "object")), "chat.completion");
    EXPECT_EQ(str(get(j.get(), "model")), name);
    EXPECT_EQ(str(get(j.get(), "id")).rfind("chatcmpl-", 0), 0u) << chat.body;
    EXPECT_EQ(str(get(j.get(), "choices", 0, "message", "role")), "assistant");
    const Completion c = completion_of(j);
    EXPECT_EQ(c.text, expected.text);
    EXPECT_EQ(c.finish, expected.finish);
    EXPECT_EQ(c.prompt_tokens, (int)ids.size());
    EXPECT_EQ(c.completion_tokens, expected.completion_tokens);
    EXPECT_EQ(c.total_tokens, c.prompt_tokens + c.completion_tokens);

    // streamed, with logprobs: the role first, then the same text, token by token
    constexpr int kTop = 2;
    const Stream st = post_stream(server, "/v1/chat/completions",
                                  chat_body + R"(, "stream": true, "logprobs": true,
                                  "top_logprobs": 2, "stream_options": {"include_usage": true}})");
    ASSERT_TRUE(is_complete_stream(st));
    ASSERT_GE(st.events.size(), 3u);
    EXPECT_EQ(str(get(choice0(st.events[0]), "delta", "role")), "assistant")
        << print(st.events[0].get());
    for (const auto &e : st.events) EXPECT_EQ(str(get(e.get(), "object")), "chat.completion.chunk");
    EXPECT_EQ(joined_text(st), c.text);
    EXPECT_EQ(stream_finish(st), c.finish);
    EXPECT_EQ(num(get(st.events.back().get(), "usage", "completion_tokens")), c.completion_tokens);
    EXPECT_EQ(num(get(st.events.back().get(), "usage", "prompt_tokens")), c.prompt_tokens);
    int n_tokens = 0;
    for (const auto &e : st.events) {
        const cJSON *content = get(choice0(e), "logprobs", "content");
        for (int i = 0; i < size(content); i++, n_tokens++) {
            const cJSON *t = cJSON_GetArrayItem(content, i), *top = get(t, "top_logprobs");
            EXPECT_LE(num(get(t, "logprob")), 0.0);
            ASSERT_EQ(size(top), kTop) << print(t);
            EXPECT_GE(num(get(top, 0, "logprob")), num(get(top, 1, "logprob"))) << print(t);
            EXPECT_EQ(str(get(top, 0, "token")), str(get(t, "token"))) << print(t); // greedy
            EXPECT_EQ(num(get(top, 0, "logprob")), num(get(t, "logprob")));
            EXPECT_TRUE(cJSON_IsArray(get(t, "bytes"))) << print(t);
        }
    }
    EXPECT_EQ(n_tokens, c.completion_tokens);
    EXPECT_TRUE(exited_cleanly(server.stop()));
}

INSTANTIATE_TEST_SUITE_P(Families, ServeChat,
                         ::testing::Values("llama3", "llama2", "mistral", "chatml", "zephyr"),
                         [](const auto &info) { return info.param; });

// A model without a chat template: chat is refused, not guessed.
TEST_F(ServeApi, ChatWithoutATemplateIsRefused) {
    const Reply r = post(*server, "/v1/chat/completions",
                         R"({"messages": [{"role": "user", "content": "hi"}]})");
    ASSERT_TRUE(is_error(r, 400));
    EXPECT_EQ(error_field(r, "param"), "messages");
    EXPECT_TRUE(contains_all(error_field(r, "message"), {"chat_template"}));
}

// ---- under load ------------------------------------------------------------------------------

struct LoadOptions {
    static std::vector<std::string> args() { return {"--threads", "2"}; }
};
using ServeLoad = SharedServer<LoadOptions>;

// 64 clients streaming at once, 500 requests over 16 greedy ones: each answer is the one the
// request gets alone. Every 5th client goes away after its first chunk; afterwards nothing runs,
// no KV block is held, and the aborts are counted.
TEST_F(ServeLoad, SixtyFourClientsGetTheirSoloAnswers) {
    constexpr int kDistinct = 16, kRequests = 500, kClients = 64, kTokens = 8;
    const char *words[kDistinct] = {"And",   "The",    "Then",  "But",  "For", "Behold",
                                    "Thus",  "Now",    "In",    "When", "O",   "Blessed",
                                    "Moses", "Israel", "David", "Jesus"};
    std::vector<std::string> bodies, long_bodies;
    std::vector<Completion> solo;
    for (const char *w : words) {
        bodies.push_back(completion_body(quote(w), kTokens, R"(, "stream": true)"));
        // a disconnecting client asks for more than it waits for: its request is surely still
        // running when it goes away
        long_bodies.push_back(
            completion_body(quote(w), 200, R"(, "ignore_eos": true, "stream": true)"));
        const Reply r = post(*server, "/v1/completions", completion_body(quote(w), kTokens));
        ASSERT_TRUE(is_ok_json(r));
        solo.push_back(completion_of(r.json()));
    }
    const std::vector<std::pair<std::string, std::string>> abort_label = {
        {"finished_reason", "abort"}};
    const auto aborts_before = metric(*server, "cinfer:request_success_total", abort_label);

    struct Outcome {
        bool disconnect = false;
        std::string text, finish, problem;
    };
    std::vector<Outcome> outcomes(kRequests);
    std::atomic<int> next{0};
    const auto start = Clock::now();
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; c++)
        clients.emplace_back([&] {
            for (int i; (i = next++) < kRequests;) {
                Outcome &o = outcomes[i];
                o.disconnect = i % 5 == 4;
                const std::string &body = (o.disconnect ? long_bodies : bodies)[i % kDistinct];
                const Stream st =
                    post_stream(*server, "/v1/completions", body, o.disconnect ? 1 : 0);
                if (o.disconnect) {
                    if (!st.aborted || st.events.empty())
                        o.problem =
                            "the stream ended before its first chunk: " + describe(st.reply);
                    continue;
                }
                const auto complete = is_complete_stream(st);
                if (!complete) o.problem = complete.message();
                o.text = joined_text(st);
                o.finish = stream_finish(st);
            }
        });
    for (auto &t : clients) t.join();
    const double elapsed = seconds_since(start);
    std::fprintf(stderr, "[cinfer] %d requests from %d clients in %.2f s\n", kRequests, kClients,
                 elapsed);

    int n_disconnects = 0, n_wrong = 0;
    for (const Outcome &o : outcomes) n_disconnects += o.disconnect;
    for (int i = 0; i < kRequests && n_wrong <= 10; i++) { // 10 are enough to see what is wrong
        const Outcome &o = outcomes[i];
        if (!o.problem.empty()) {
            ADD_FAILURE() << "request " << i << ": " << o.problem;
            n_wrong++;
        } else if (!o.disconnect &&
                   (o.text != solo[i % kDistinct].text || o.finish != solo[i % kDistinct].finish)) {
            ADD_FAILURE() << "request " << i << " (" << words[i % kDistinct]
                          << "): " << quote(o.text) << " " << o.finish << ", alone "
                          << quote(solo[i % kDistinct].text) << " " << solo[i % kDistinct].finish;
            n_wrong++;
        }
    }
    EXPECT_EQ(n_disconnects, kRequests / 5);
    EXPECT_TRUE(still_serving(*server));
    EXPECT_TRUE(engine_goes_idle(*server));
    const auto aborts_after = metric(*server, "cinfer:request_success_total", abort_label);
    ASSERT_TRUE(aborts_after) << "no cinfer:request_success_total{finished_reason=\"abort\"}:\n"
                              << get(*server, "/metrics").body;
    EXPECT_EQ(*aborts_after - aborts_before.value_or(0), n_disconnects);
}

// ---- bad input -------------------------------------------------------------------------------

struct BadInputOptions {
    static std::vector<std::string> args() { return {"--timeout", "2"}; }
};
using ServeBadInput = SharedServer<BadInputOptions>;

// A completions body with one member changed: a 400 naming `param`.
void expect_refused(const Server &s, const std::string &body, const std::string &param,
                    std::initializer_list<std::string> message_parts = {}) {
    SCOPED_TRACE(body.substr(0, 200));
    const Reply r = post(s, "/v1/completions", body);
    ASSERT_TRUE(is_error(r, 400));
    EXPECT_EQ(error_field(r, "type"), "invalid_request_error");
    EXPECT_EQ(error_field(r, "param"), param);
    EXPECT_TRUE(contains_all(error_field(r, "message"), message_parts));
}

TEST_F(ServeBadInput, MalformedJson) {
    for (const std::string &body :
         {std::string(R"({"prompt": "a",)"), std::string("not json"),
          std::string(R"({"prompt": "a"} x)"), std::string(""), std::string(R"([1, 2])"),
          std::string(R"("a")"), std::string("{\"prompt\": \"a\0\"}", 16)})
        expect_refused(*server, body, "<null>");
    for (const char *path : {"/v1/chat/completions", "/tokenize", "/detokenize"}) {
        const Reply r = post(*server, path, R"({"messages": [)");
        EXPECT_TRUE(is_error(r, 400)) << path;
        EXPECT_EQ(error_field(r, "param"), "<null>") << path;
    }
    EXPECT_TRUE(still_serving(*server));
}

TEST_F(ServeBadInput, WrongTypes) {
    const std::string p = R"({"prompt": "a", )";
    expect_refused(*server, R"({"prompt": 5})", "prompt");
    expect_refused(*server, R"({"prompt": {"text": "a"}})", "prompt");
    expect_refused(*server, p + R"("max_tokens": "8"})", "max_tokens");
    expect_refused(*server, p + R"("max_tokens": 2.5})", "max_tokens");
    expect_refused(*server, p + R"("temperature": "NaN"})", "temperature");
    expect_refused(*server, p + R"("temperature": "0.5"})", "temperature");
    expect_refused(*server, p + R"("stream": "yes"})", "stream");
    expect_refused(*server, p + R"("stop": 5})", "stop");
    expect_refused(*server, p + R"("stop": ["a", 5]})", "stop");
    expect_refused(*server, p + R"("logprobs": "x"})", "logprobs");
    expect_refused(*server, p + R"("seed": "x"})", "seed");
    expect_refused(*server, p + R"("model": 7})", "model");
    const Reply chat = post(*server, "/v1/chat/completions", R"({"messages": "hi"})");
    ASSERT_TRUE(is_error(chat, 400));
    EXPECT_EQ(error_field(chat, "param"), "messages");
    EXPECT_TRUE(still_serving(*server));
}

TEST_F(ServeBadInput, OutOfRangeValues) {
    const std::string p = R"({"prompt": "a", )"; // 2 tokens: BOS and "a"
    expect_refused(*server, p + R"("temperature": -0.5})", "temperature", {"[0, 2]"});
    expect_refused(*server, p + R"("temperature": 2.5})", "temperature", {"[0, 2]"});
    expect_refused(*server, p + R"("top_p": 0})", "top_p", {"(0, 1]"});
    expect_refused(*server, p + R"("top_p": 1.5})", "top_p", {"(0, 1]"});
    expect_refused(*server, p + R"("max_tokens": 0})", "max_tokens");
    expect_refused(*server, p + R"("max_tokens": -3})", "max_tokens");
    // past the context: the message names the context and what is left of it
    expect_refused(*server, p + R"("max_tokens": 255})", "max_tokens", {"256", "at most 254"});
    // huge: past any context, and past what an int holds
    expect_refused(*server, p + R"("max_tokens": 1073741824})", "max_tokens", {"256"});
    expect_refused(*server, p + R"("max_tokens": 1e12})", "max_tokens");
    expect_refused(*server, p + R"("max_tokens": 1e400})", "max_tokens"); // past a double
    // a prompt that fills the context leaves no room
    std::vector<int> ids(kContext, 5);
    expect_refused(*server, R"({"prompt": )" + ids_json(ids) + "}", "prompt", {"256"});
    // at the limit exactly: answered (250 prompt ids and 6 new tokens fill the context)
    const std::vector<int> long_prompt(kContext - 6, 5);
    expect_refused(*server, completion_body(ids_json(long_prompt), 7), "max_tokens",
                   {"256", "at most 6"});
    const Reply at_limit =
        post(*server, "/v1/completions",
             completion_body(ids_json(long_prompt), 6, R"(, "ignore_eos": true)"));
    ASSERT_TRUE(is_ok_json(at_limit));
    EXPECT_EQ(completion_of(at_limit.json()).total_tokens, kContext);
    EXPECT_TRUE(still_serving(*server));
}

TEST_F(ServeBadInput, UnknownRouteModelAndMethod) {
    for (const std::string path : {"/v2/completions", "/", "/v1/completion", "/v1/models/x"}) {
        const Reply r = get(*server, path);
        EXPECT_TRUE(is_error(r, 404)) << path;
    }
    EXPECT_TRUE(is_error(post(*server, "/v1/nothing", "{}"), 404));

    for (const std::string path : {"/v1/completions", "/tokenize"}) {
        const Reply r = post(*server, path, R"({"prompt": "a", "model": "gpt-4"})");
        ASSERT_TRUE(is_error(r, 404)) << path;
        EXPECT_EQ(error_field(r, "code"), "model_not_found");
        EXPECT_EQ(error_field(r, "param"), "model");
        EXPECT_TRUE(contains_all(error_field(r, "message"), {"gpt-4", kModelName}));
    }

    struct Wrong {
        std::string method, path, allow;
    };
    for (const Wrong &w :
         {Wrong{"GET", "/v1/completions", "POST"}, Wrong{"GET", "/v1/chat/completions", "POST"},
          Wrong{"POST", "/health", "GET"}, Wrong{"DELETE", "/v1/models", "GET"},
          Wrong{"PUT", "/tokenize", "POST"}}) {
        const std::string body = "{}";
        const Reply r = request(server->url(w.path), w.method, w.method == "GET" ? nullptr : &body);
        EXPECT_TRUE(is_error(r, 405)) << w.method << " " << w.path;
        EXPECT_EQ(r.header("allow"), w.allow) << w.method << " " << w.path;
    }
    EXPECT_TRUE(still_serving(*server));
}

TEST_F(ServeBadInput, TextThatIsNotUtf8) {
    expect_refused(*server, "{\"prompt\": \"caf\xff\"}", "prompt", {"UTF-8"});
    expect_refused(*server, "{\"prompt\": \"\xc3\"}", "prompt", {"UTF-8"}); // cut short
    expect_refused(*server, "{\"prompt\": \"a\", \"stop\": \"\xfe\"}", "stop", {"UTF-8"});
    const Reply chat = post(*server, "/v1/chat/completions",
                            "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}");
    ASSERT_TRUE(is_error(chat, 400));
    EXPECT_TRUE(contains_all(error_field(chat, "message"), {"UTF-8"}));
    const Reply tok = post(*server, "/tokenize", "{\"prompt\": \"\xff\xff\"}");
    EXPECT_TRUE(is_error(tok, 400));
    EXPECT_TRUE(still_serving(*server));
}

TEST_F(ServeBadInput, TooManyStopsDeepNestingEmptyPromptOutsideVocabulary) {
    std::string stops = "[";
    for (int i = 0; i < 10000; i++) stops += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
    expect_refused(*server, R"({"prompt": "a", "stop": )" + stops + "]}", "stop", {"64"});

    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    expect_refused(*server, R"({"prompt": "a", "x": )" + deep + "}", "<null>", {"nested"});
    expect_refused(*server, std::string(5000, '{'), "<null>");

    expect_refused(*server, R"({"prompt": ""})", "prompt", {"empty"});
    expect_refused(*server, R"({"prompt": []})", "prompt", {"empty"});

    expect_refused(*server, R"({"prompt": [1, 2, 4096]})", "prompt", {"4096"});
    expect_refused(*server, R"({"prompt": [2147483647]})", "prompt", {"2147483647"});
    expect_refused(*server, R"({"prompt": [-1]})", "prompt");
    const Reply detok = post(*server, "/detokenize", R"({"tokens": [5, 4096]})");
    ASSERT_TRUE(is_error(detok, 400));
    EXPECT_EQ(error_field(detok, "param"), "tokens");
    EXPECT_TRUE(still_serving(*server));
}

// A client that sends half a body and closes: the server lets the request go and serves on.
TEST_F(ServeBadInput, TruncatedBody) {
    for (int i = 0; i < 4; i++) {
        RawClient raw(server->port());
        ASSERT_GE(raw.fd, 0);
        ASSERT_TRUE(raw.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                                 "{\"prompt\": \"And"));
    } // closed here
    EXPECT_TRUE(still_serving(*server));
}

// Clients that stall, in their headers or in their body, hold connections; the others are
// answered meanwhile, and --timeout 2 closes the idle ones.
TEST_F(ServeBadInput, ClientsThatNeverFinishTheirRequest) {
    std::vector<std::unique_ptr<RawClient>> slow;
    for (int i = 0; i < 16; i++) { // more than the HTTP threads (4)
        slow.push_back(std::make_unique<RawClient>(server->port()));
        ASSERT_TRUE(slow.back()->send_all(
            i % 2 ? "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-"
                  : "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                    "{\"prompt\": \"And"));
    }
    const auto start = Clock::now();
    for (int i = 0; i < 3; i++) EXPECT_TRUE(still_serving(*server));
    const double served_in = seconds_since(start);
    EXPECT_LT(served_in, 10.0);
    for (auto &c : slow) EXPECT_TRUE(c->closed_by_server(15)) << "an idle connection stayed open";
    EXPECT_TRUE(still_serving(*server));
}

// ---- options: body size, API key, queue --------------------------------------------------------

TEST(ServeOptions, BodyOverTheLimitIs413) {
    Server server({"--max-body-bytes", "4096"});
    ASSERT_TRUE(server.ready()) << server.problem();
    const std::string big = R"({"prompt": ")" + std::string(8000, 'a') + R"("})";
    // told by Content-Length (the client waits for 100 Continue, which does not come)
    const Reply declared =
        post(server, "/v1/completions", big, {{"Expect: 100-continue"}, false, kRequestSeconds});
    ASSERT_TRUE(is_error(declared, 413));
    EXPECT_TRUE(contains_all(error_field(declared, "message"), {"4096"}));
    // chunked: no length up front, refused once the body passes the limit
    const Reply chunked = post(server, "/v1/completions", big, {{}, true, kRequestSeconds});
    ASSERT_TRUE(is_error(chunked, 413));
    EXPECT_TRUE(contains_all(error_field(chunked, "message"), {"4096"}));
    // a body of the limit exactly is taken, chunked or not
    std::string at_limit = R"({"prompt": "And", "max_tokens": 2})";
    at_limit.insert(at_limit.size() - 1, std::string(4096 - at_limit.size(), ' '));
    ASSERT_EQ(at_limit.size(), 4096u);
    EXPECT_TRUE(is_ok_json(post(server, "/v1/completions", at_limit)));
    EXPECT_TRUE(is_ok_json(post(server, "/v1/completions", at_limit, {{}, true, kRequestSeconds})));
    EXPECT_TRUE(still_serving(server));
    EXPECT_TRUE(exited_cleanly(server.stop()));
}

TEST(ServeOptions, ApiKey) {
    Server server({"--api-key", "sesame"});
    ASSERT_TRUE(server.ready()) << server.problem();
    const std::string body = R"({"prompt": "And", "max_tokens": 2})";
    for (const std::vector<std::string> &headers : {std::vector<std::string>{},
                                                    {"Authorization: Bearer wrong"},
                                                    {"Authorization: Bearer sesame2"},
                                                    {"Authorization: sesame"},
                                                    {"Authorization: Basic c2VzYW1l"}}) {
        const Reply r = post(server, "/v1/completions", body, {headers, false, kRequestSeconds});
        ASSERT_TRUE(is_error(r, 401)) << (headers.empty() ? "no key" : headers[0]);
        EXPECT_EQ(error_field(r, "code"), "invalid_api_key");
        EXPECT_TRUE(is_error(get(server, "/v1/models", {headers, false, kRequestSeconds}), 401));
        EXPECT_TRUE(is_error(
            post(server, "/tokenize", R"({"prompt": "a"})", {headers, false, kRequestSeconds}),
            401));
    }
    const RequestOptions key{{"Authorization: Bearer sesame"}, false, kRequestSeconds};
    EXPECT_TRUE(is_ok_json(post(server, "/v1/completions", body, key)));
    EXPECT_TRUE(is_ok_json(get(server, "/v1/models", key)));
    // probes and scrapers need no key
    EXPECT_EQ(get(server, "/health").status, 200);
    EXPECT_EQ(get(server, "/metrics").status, 200);
    EXPECT_EQ(get(server, "/version").status, 200);
    EXPECT_TRUE(exited_cleanly(server.stop()));
}

// A slow request that runs, one that waits, and the next is turned away with Retry-After.
TEST(ServeOptions, FullQueueIs503WithRetryAfter) {
    Server server({"--max-seqs", "1", "--max-queued", "1"});
    ASSERT_TRUE(server.ready()) << server.problem();
    const std::string slow =
        completion_body(quote("And"), 250, R"(, "ignore_eos": true, "stream": true)");
    StreamWatch running, queued;
    Stream running_stream, queued_stream;
    std::thread a(
        [&] { running_stream = post_stream(server, "/v1/completions", slow, 0, &running); });
    const auto start = Clock::now();
    while (running.events == 0 && seconds_since(start) < kRequestSeconds) sleep_seconds(0.002);
    std::thread b(
        [&] { queued_stream = post_stream(server, "/v1/completions", slow, 0, &queued); });
    while (!queued.headers && seconds_since(start) < kRequestSeconds) sleep_seconds(0.002);
    // both are in flight now: the first runs (its chunks came), the second was taken (its
    // headers came) and waits
    const Reply refused = post(server, "/v1/completions", R"({"prompt": "And", "max_tokens": 2})");
    const bool both_still_running = !running.done && !queued.done;
    running.abort = queued.abort = true;
    a.join();
    b.join();
    ASSERT_TRUE(both_still_running) << "a request of 250 tokens ended before the check";
    ASSERT_TRUE(is_error(refused, 503));
    EXPECT_FALSE(refused.header("retry-after").empty());
    EXPECT_TRUE(contains_all(error_field(refused, "message"), {"--max-queued"}));
    EXPECT_TRUE(still_serving(server)); // the two went away: room again
    EXPECT_TRUE(exited_cleanly(server.stop()));
}

// A client that goes away before its buffered (not streamed) answer is ready: its request is
// aborted, as a stream's is, and does not hold the engine until it ends. One at a time
// (--max-seqs 1): four such requests, left after a third of the time one takes alone, would
// keep a short request behind them for seconds if they ran on.
TEST(ServeOptions, BufferedRequestIsAbortedWhenItsClientGoesAway) {
    Server server({"--max-seqs", "1"});
    ASSERT_TRUE(server.ready()) << server.problem();
    const std::string body = completion_body(quote("And"), 250, R"(, "ignore_eos": true)");
    auto start = Clock::now();
    ASSERT_TRUE(is_ok_json(post(server, "/v1/completions", body)));
    const double alone = seconds_since(start);
    std::vector<std::thread> clients;
    std::vector<Reply> left(4);
    const long leave_ms = std::max(50L, (long)(alone * 1000 / 3));
    for (auto &reply : left)
        clients.emplace_back([&] {
            Transfer t(server.url("/v1/completions"), "POST", &body, {});
            curl_easy_setopt(t.curl, CURLOPT_TIMEOUT_MS, leave_ms);
            curl_easy_setopt(t.curl, CURLOPT_WRITEFUNCTION, collect_body);
            curl_easy_setopt(t.curl, CURLOPT_WRITEDATA, &reply);
            reply.code = curl_easy_perform(t.curl);
        });
    for (auto &c : clients) c.join();
    for (const Reply &r : left) ASSERT_EQ(r.code, CURLE_OPERATION_TIMEDOUT) << r.body;
    start = Clock::now();
    EXPECT_TRUE(
        is_ok_json(post(server, "/v1/completions", R"({"prompt": "And", "max_tokens": 2})")));
    const double behind = seconds_since(start);
    EXPECT_LT(behind, alone / 2) << "a short request waited " << behind
                                 << " s behind requests whose clients had gone (one alone takes "
                                 << alone << " s): they ran on";
    EXPECT_TRUE(exited_cleanly(server.stop()));
}

// ---- graceful shutdown -----------------------------------------------------------------------

// SIGTERM while a stream runs: it completes within the grace period, then the server exits 0;
// new connections are not taken meanwhile.
TEST(ServeShutdown, StreamInFlightCompletes) {
    Server server({"--shutdown-grace", "30"});
    ASSERT_TRUE(server.ready()) << server.problem();
    constexpr int kTokens = 200;
    StreamWatch watch;
    Stream st;
    std::thread client([&] {
        st = post_stream(server, "/v1/completions",
                         completion_body(quote(kPrompt), kTokens,
                                         R"(, "ignore_eos": true, "stream": true,
                                         "stream_options": {"include_usage": true})"),
                         0, &watch);
    });
    const auto start = Clock::now();
    while (watch.events == 0 && seconds_since(start) < kRequestSeconds) sleep_seconds(0.002);
    const auto signalled = Clock::now();
    server.signal(SIGTERM);
    sleep_seconds(0.2);
    const Reply late = get(server, "/health", {{}, false, 5});
    const bool stream_was_running = !watch.done;
    const Exit e = server.wait(kStopSeconds, signalled);
    client.join();
    EXPECT_TRUE(exited_cleanly(e));
    EXPECT_LT(e.seconds, 30.0);
    EXPECT_TRUE(stream_was_running) << "the stream ended before SIGTERM came";
    ASSERT_TRUE(is_complete_stream(st));
    EXPECT_EQ(stream_finish(st), "length");
    EXPECT_EQ(num(get(st.events.back().get(), "usage", "completion_tokens")), kTokens);
    // while draining: no connection, or 503
    EXPECT_TRUE(late.code != CURLE_OK || late.status == 503) << describe(late);
}

// With --shutdown-grace 0.5, requests that would run for seconds are aborted: each client gets
// an end (finish_reason "abort" and [DONE], or a closed connection, never a hang), and the
// server exits 0 soon after the grace period.
TEST(ServeShutdown, GracePeriodAbortsLongRequests) {
    Server server({"--shutdown-grace", "0.5", "--max-seqs", "1"});
    ASSERT_TRUE(server.ready()) << server.problem();
    // one at a time (--max-seqs 1): four of 250 tokens take seconds, far past the grace
    constexpr int kStreams = 4;
    const std::string body =
        completion_body(quote("And"), 250, R"(, "ignore_eos": true, "stream": true)");
    std::vector<StreamWatch> watches(kStreams);
    std::vector<Stream> streams(kStreams);
    std::vector<std::thread> clients;
    for (int i = 0; i < kStreams; i++)
        clients.emplace_back(
            [&, i] { streams[i] = post_stream(server, "/v1/completions", body, 0, &watches[i]); });
    Reply buffered;
    std::thread buffered_client([&] {
        buffered = post(server, "/v1/completions",
                        completion_body(quote("And"), 250, R"(, "ignore_eos": true)"));
    });
    const auto start = Clock::now();
    auto all_taken = [&] {
        for (auto &w : watches)
            if (!w.headers) return false;
        return watches[0].events > 0 || watches[1].events > 0 || watches[2].events > 0 ||
               watches[3].events > 0;
    };
    while (!all_taken() && seconds_since(start) < kRequestSeconds) sleep_seconds(0.002);
    sleep_seconds(0.1); // the buffered one is in too
    const auto signalled = Clock::now();
    server.signal(SIGTERM);
    const Exit e = server.wait(kStopSeconds, signalled);
    for (auto &c : clients) c.join();
    buffered_client.join();
    EXPECT_TRUE(exited_cleanly(e));
    EXPECT_LT(e.seconds, 0.5 + 5.0 + 2.0) << "the grace, the 5 s the aborts get, and slack";
    int aborted = 0;
    for (const Stream &st : streams) {
        if (st.done) {
            EXPECT_TRUE(is_complete_stream(st));
            const std::string finish = stream_finish(st);
            EXPECT_TRUE(finish == "abort" || finish == "length") << finish;
            aborted += finish == "abort";
        } else {
            aborted++; // the connection closed: the client knows it got no whole answer
        }
    }
    // one at a time: within 0.5 s at most one request (a stream or the buffered one, whichever
    // the engine took first) can finish its 250 tokens; the rest are aborted
    int finished = kStreams - aborted;
    if (buffered.code == CURLE_OK && buffered.status == 200) {
        const std::string finish = completion_of(buffered.json()).finish;
        EXPECT_TRUE(finish == "abort" || finish == "length") << buffered.body;
        finished += finish == "length";
    }
    EXPECT_LE(finished, 1) << "at most one of them could finish within 0.5 s";
}

} // namespace
