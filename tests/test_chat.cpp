// Chat formatting against transformers' own Jinja rendering of each supported template family
// (tests/fixtures/chat/cases.json, made by scripts/make_chat_fixtures.py).
#include <cjson/cJSON.h>
#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

extern "C" {
#include "loaders/chat.h"
}
#include "tests/test_util.h"

using namespace cinfer_test;

namespace {

struct ChatCase {
    std::string family, chat_template, bos, eos;
    std::vector<std::string> roles, contents;
    bool add_generation_prompt = false;
    bool raises = false;
    std::string expected;
};

std::vector<ChatCase> load_cases() {
    std::string json = read_file(std::string(CINFER_FIXTURE_DIR) + "/chat/cases.json");
    cJSON *root = cJSON_Parse(json.c_str());
    EXPECT_NE(root, nullptr) << "cases.json does not parse";
    std::vector<ChatCase> cases;
    if (!root) return cases;
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItem(root, "cases")) {
        ChatCase c;
        c.family = cJSON_GetObjectItem(item, "family")->valuestring;
        c.chat_template = cJSON_GetObjectItem(item, "template")->valuestring;
        c.bos = cJSON_GetObjectItem(item, "bos_token")->valuestring;
        c.eos = cJSON_GetObjectItem(item, "eos_token")->valuestring;
        c.add_generation_prompt = cJSON_IsTrue(cJSON_GetObjectItem(item, "add_generation_prompt"));
        const cJSON *message;
        cJSON_ArrayForEach(message, cJSON_GetObjectItem(item, "messages")) {
            c.roles.push_back(cJSON_GetObjectItem(message, "role")->valuestring);
            c.contents.push_back(cJSON_GetObjectItem(message, "content")->valuestring);
        }
        const cJSON *expected = cJSON_GetObjectItem(item, "expected");
        c.raises = expected == nullptr;
        if (expected) c.expected = expected->valuestring;
        cases.push_back(c);
    }
    cJSON_Delete(root);
    return cases;
}

cinfer_status render(const std::string &chat_template, const std::vector<std::string> &roles,
                     const std::vector<std::string> &contents, bool add_generation_prompt,
                     std::string *text, const char *bos = "<s>", const char *eos = "</s>") {
    std::vector<cinfer_chat_message> messages;
    for (size_t i = 0; i < roles.size(); i++)
        messages.push_back({roles[i].c_str(), contents[i].c_str()});
    char *out = nullptr;
    cinfer_status status = ci_chat_render(chat_template.c_str(), bos, eos, messages.data(),
                                          (int)messages.size(), add_generation_prompt, &out);
    if (out) *text = out;
    free(out);
    return status;
}

std::string family_of(const std::string &fixture_family) {
    return fixture_family == "llama3.1" ? "llama3" : fixture_family;
}

TEST(Chat, EveryFamilyRendersAsTransformersDoes) {
    std::vector<ChatCase> cases = load_cases();
    ASSERT_GE(cases.size(), 90u);
    int compared = 0;
    for (const ChatCase &c : cases) {
        SCOPED_TRACE(c.family + " with " + std::to_string(c.roles.size()) + " turns, first '" +
                     c.roles[0] + "', generation prompt " +
                     (c.add_generation_prompt ? "on" : "off"));
        std::string text = "(unset)";
        cinfer_status status = render(c.chat_template, c.roles, c.contents, c.add_generation_prompt,
                                      &text, c.bos.c_str(), c.eos.c_str());
        if (c.family == "unsupported") {
            EXPECT_EQ(status, CINFER_ERR_UNSUPPORTED);
            EXPECT_EQ(ci_chat_family(c.chat_template.c_str()), nullptr);
            EXPECT_NE(std::string(cinfer_last_error()).find("not one of the families"),
                      std::string::npos);
        } else if (c.raises) {
            EXPECT_EQ(status, CINFER_ERR_ARGUMENT)
                << "transformers raised, cinfer rendered: " << text;
            EXPECT_NE(std::string(cinfer_last_error()).find("turn"), std::string::npos);
        } else {
            ASSERT_EQ(status, CINFER_OK) << cinfer_last_error();
            EXPECT_EQ(text, c.expected);
            EXPECT_STREQ(ci_chat_family(c.chat_template.c_str()), family_of(c.family).c_str());
            compared++;
        }
    }
    EXPECT_GE(compared, 50);
}

// Llama 3.2 dates its system turn with strftime_now: transformers renders today's date.
TEST(Chat, Llama32DatesTheSystemTurnToday) {
    std::vector<ChatCase> cases = load_cases();
    std::string llama31;
    for (const ChatCase &c : cases)
        if (c.family == "llama3.1") llama31 = c.chat_template;
    ASSERT_FALSE(llama31.empty());
    std::string llama32 = "{%- if strftime_now is defined %}{% endif %}" + llama31;
    char today[32];
    time_t now = time(nullptr);
    struct tm local;
    localtime_r(&now, &local);
    strftime(today, sizeof today, "%d %b %Y", &local);
    std::string text;
    ASSERT_EQ(render(llama32, {"user"}, {"hi"}, true, &text), CINFER_OK) << cinfer_last_error();
    EXPECT_NE(text.find(std::string("Today Date: ") + today + "\n\n"), std::string::npos) << text;
}

TEST(Chat, RefusesWhatItCannotFormat) {
    std::string text;
    std::vector<cinfer_chat_message> one = {{"user", "hi"}};
    char *out = reinterpret_cast<char *>(1);
    EXPECT_EQ(ci_chat_render(nullptr, "<s>", "</s>", one.data(), 1, 1, &out),
              CINFER_ERR_UNSUPPORTED);
    EXPECT_EQ(out, nullptr);
    EXPECT_NE(std::string(cinfer_last_error()).find("no chat_template"), std::string::npos);
    // ChatML that injects its own default system prompt renders differently: refused, not guessed.
    std::string qwen_like = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
                            "are a helpful assistant.<|im_end|>\\n' }}{% endif %}<|im_start|>"
                            "<|im_end|>";
    EXPECT_EQ(render(qwen_like, {"user"}, {"hi"}, true, &text), CINFER_ERR_UNSUPPORTED);
    std::string chatml = "{{'<|im_start|>' + message['role']}}<|im_end|>";
    EXPECT_EQ(render(chatml, {}, {}, true, &text), CINFER_ERR_ARGUMENT);
    std::vector<cinfer_chat_message> no_content = {{"user", nullptr}};
    EXPECT_EQ(ci_chat_render(chatml.c_str(), "<s>", "</s>", no_content.data(), 1, 1, &out),
              CINFER_ERR_ARGUMENT);
}

// Jinja's trim is Python's str.strip(): Unicode spaces go, other characters stay.
TEST(Chat, TrimsPythonWhitespaceOnly) {
    std::string llama3 = "<|start_header_id|><|end_header_id|><|eot_id|>";
    std::string text;
    ASSERT_EQ(render(llama3, {"user"}, {"\xe3\x80\x80\xc2\xa0 \t\n x y \xe2\x80\x83\r\n"}, false,
                     &text, "", ""),
              CINFER_OK);
    EXPECT_EQ(text, "<|start_header_id|>user<|end_header_id|>\n\nx y<|eot_id|>");
    ASSERT_EQ(render(llama3, {"user"},
                     {"\xe2\x80\x8b"
                      "x"
                      "\xef\xbc\xa1"},
                     false, &text, "", ""),
              CINFER_OK); // zero-width space and fullwidth A are not whitespace
    EXPECT_EQ(text,
              "<|start_header_id|>user<|end_header_id|>\n\n\xe2\x80\x8bx\xef\xbc\xa1<|eot_id|>");
    ASSERT_EQ(render(llama3, {"user"}, {" \n "}, false, &text, "", ""), CINFER_OK);
    EXPECT_EQ(text, "<|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>");
}

} // namespace
