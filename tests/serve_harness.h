// The harness of tests/test_serve.cpp: `cinfer serve` started as a process on a free port and
// stopped with SIGTERM (its exit and sanitizer report checked), HTTP through libcurl (a new
// connection per request), server-sent events collected as they arrive, /metrics read by name,
// and raw sockets for the clients libcurl cannot be (half a request, headers never ended).
// Nothing here may hang: every transfer has a time limit, and so has every wait for the server.
#ifndef CINFER_TEST_SERVE_HARNESS_H
#define CINFER_TEST_SERVE_HARNESS_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include <cjson/cJSON.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

extern char **environ;

namespace serve_test {

namespace fs = std::filesystem;
using cinfer_test::contains_all;
using cinfer_test::TempDir;
using Clock = std::chrono::steady_clock;

const std::string kModel = std::string(CINFER_FIXTURE_DIR) + "/../../models/diffllama-tiny";
const std::string kModelName = "diffllama-tiny"; // the folder's name: the served name
constexpr int kContext = 256;                    // the bundled model's max_position_embeddings

// Time limits: generous, for the ASan build on two shared cores; a test that reaches one has
// found a hang.
constexpr double kStartSeconds = 60;  // from spawning to "serving" (the model loads in ~0.2 s)
constexpr double kStopSeconds = 60;   // from SIGTERM to the exit, with the default grace
constexpr long kRequestSeconds = 60;  // one HTTP transfer, a whole stream included
constexpr double kSettleSeconds = 30; // /metrics polled until the engine is idle

inline double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

inline void sleep_seconds(double s) {
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// ---- JSON (cJSON, owned) ---------------------------------------------------------------------

using Json = std::unique_ptr<cJSON, void (*)(cJSON *)>;

inline Json parse_json(const std::string &text) {
    return Json(cJSON_ParseWithLength(text.data(), text.size()), cJSON_Delete);
}

// get(o, "choices", 0, "text"): a member or element on the way down, nullptr once one is missing.
inline const cJSON *get(const cJSON *o) { return o; }
template <typename... Rest> const cJSON *get(const cJSON *o, const char *key, Rest... rest);
template <typename... Rest> const cJSON *get(const cJSON *o, int index, Rest... rest) {
    return get(cJSON_IsArray(o) ? cJSON_GetArrayItem(o, index) : nullptr, rest...);
}
template <typename... Rest> const cJSON *get(const cJSON *o, const char *key, Rest... rest) {
    return get(cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : nullptr, rest...);
}

// A string's value, or a marker that cannot be mistaken for one.
inline std::string str(const cJSON *o) {
    if (cJSON_IsString(o)) return o->valuestring;
    return cJSON_IsNull(o) ? "<null>" : o ? "<not a string>" : "<missing>";
}
inline double num(const cJSON *o) { return cJSON_IsNumber(o) ? o->valuedouble : NAN; }
inline int size(const cJSON *o) {
    return cJSON_IsArray(o) || cJSON_IsObject(o) ? cJSON_GetArraySize(o) : -1;
}

inline std::string print(const cJSON *o) {
    char *text = o ? cJSON_PrintUnformatted(o) : nullptr;
    std::string out = text ? text : "<none>";
    free(text);
    return out;
}

// text as a JSON string literal, quotes included.
inline std::string quote(const std::string &text) {
    Json s(cJSON_CreateString(text.c_str()), cJSON_Delete);
    return print(s.get());
}

inline std::string ids_json(const std::vector<int> &ids) {
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); i++) out += (i ? "," : "") + std::to_string(ids[i]);
    return out + "]";
}

// ---- the server process ----------------------------------------------------------------------

struct Exit {
    int code = -1;      // the exit status, 128 + signal when a signal ended it, -1 when it hung
    double seconds = 0; // from the signal to the exit
    std::string err;    // everything the server wrote on stderr
};

// Passes when the server exited 0 with no sanitizer report on its stderr.
::testing::AssertionResult exited_cleanly(const Exit &e) {
    for (const char *report : {"ERROR: AddressSanitizer", "LeakSanitizer", "runtime error:"})
        if (e.err.find(report) != std::string::npos)
            return ::testing::AssertionFailure() << "sanitizer report in the server's stderr:\n"
                                                 << e.err;
    if (e.code != 0)
        return ::testing::AssertionFailure()
               << (e.code < 0 ? std::string("the server did not exit (killed)")
                              : "the server exited " + std::to_string(e.code))
               << "; its stderr:\n"
               << e.err;
    return ::testing::AssertionSuccess();
}

// `cinfer serve --model DIR --port 0 --threads 1 ARGS...`, started and waited for until it says
// "serving"; its stderr goes to a file the tests read.
class Server {
  public:
    explicit Server(const std::vector<std::string> &args, const std::string &model = kModel) {
        static std::once_flag curl_once;
        std::call_once(curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
        setenv("OMP_WAIT_POLICY", "PASSIVE", 0); // ctest sets it; a direct run may not
        std::vector<std::string> argv = {CINFER_CLI, "serve", "--model",   model,
                                         "--port",   "0",     "--threads", "1"};
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<char *> cargv;
        for (auto &a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        posix_spawn_file_actions_t files;
        posix_spawn_file_actions_init(&files);
        posix_spawn_file_actions_addopen(&files, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&files, 2, err_path().c_str(),
                                         O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int spawned = posix_spawn(&pid_, CINFER_CLI, &files, nullptr, cargv.data(), environ);
        posix_spawn_file_actions_destroy(&files);
        if (spawned != 0) {
            pid_ = -1;
            problem_ = std::string("cannot start ") + CINFER_CLI + ": " + strerror(spawned);
            return;
        }
        // "cinfer: serving 'NAME' on http://HOST:PORT (...)"
        const auto start = Clock::now();
        while (seconds_since(start) < kStartSeconds) {
            const std::string text = err();
            const size_t at = text.find("cinfer: serving '");
            const size_t url = at == std::string::npos ? at : text.find("http://", at);
            const size_t colon = url == std::string::npos ? url : text.find(':', url + 7);
            if (colon != std::string::npos && text.find(' ', colon) != std::string::npos) {
                port_ = std::atoi(text.c_str() + colon + 1);
                return;
            }
            int status;
            if (waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                problem_ = "the server exited before it was ready; its stderr:\n" + text;
                return;
            }
            sleep_seconds(0.02);
        }
        problem_ = "the server did not say \"serving\" within " + std::to_string(kStartSeconds) +
                   " s; its stderr:\n" + err();
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }
    ~Server() {
        if (pid_ > 0) { // a test stopped early: no process is left behind
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }
    Server(const Server &) = delete;
    Server &operator=(const Server &) = delete;

    bool ready() const { return port_ > 0 && pid_ > 0; }
    const std::string &problem() const { return problem_; }
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    std::string url(const std::string &path) const {
        return "http://127.0.0.1:" + std::to_string(port_) + path;
    }
    std::string err() const { return cinfer_test::read_file(err_path()); }

    void signal(int number) const {
        if (pid_ > 0) kill(pid_, number);
    }
    // Waits for the exit (after a signal sent before); SIGKILL past the limit.
    Exit wait(double limit, Clock::time_point since = Clock::now()) {
        Exit e;
        if (pid_ <= 0) {
            e.err = problem_;
            return e;
        }
        int status = 0;
        while (waitpid(pid_, &status, WNOHANG) == 0) {
            if (seconds_since(since) > limit) {
                kill(pid_, SIGKILL);
                waitpid(pid_, &status, 0);
                pid_ = -1;
                e.seconds = seconds_since(since);
                e.err = err();
                return e; // code -1: it hung
            }
            sleep_seconds(0.01);
        }
        pid_ = -1;
        e.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        e.seconds = seconds_since(since);
        e.err = err();
        return e;
    }
    Exit stop(double limit = kStopSeconds) {
        const auto since = Clock::now();
        signal(SIGTERM);
        return wait(limit, since);
    }

  private:
    std::string err_path() const { return dir_.file("stderr"); }
    TempDir dir_;
    pid_t pid_ = -1;
    int port_ = 0;
    std::string problem_;
};

// ---- HTTP (libcurl, a new connection per request) -------------------------------------------

struct Reply {
    CURLcode code = CURLE_OK; // the transfer's; CURLE_OK when an answer came
    std::string error;        // curl's message when it failed
    long status = 0;
    std::map<std::string, std::string> headers; // names in lower case
    std::string body;
    Json json() const { return parse_json(body); }
    std::string header(const std::string &name) const {
        auto it = headers.find(name);
        return it == headers.end() ? "" : it->second;
    }
};

inline size_t collect_body(char *data, size_t size, size_t n, void *reply) {
    static_cast<Reply *>(reply)->body.append(data, size * n);
    return size * n;
}

// One header line of the answer; a new status line (after 100 Continue) starts over.
inline void take_header(Reply &r, const char *data, size_t n) {
    std::string line(data, n);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.rfind("HTTP/", 0) == 0) {
        r.headers.clear();
        return;
    }
    const size_t colon = line.find(':');
    if (colon == std::string::npos) return;
    std::string name = line.substr(0, colon), value = line.substr(colon + 1);
    for (char &c : name) c = (char)std::tolower((unsigned char)c);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    r.headers[name] = value;
}

inline size_t collect_header(char *data, size_t size, size_t n, void *reply) {
    take_header(*static_cast<Reply *>(reply), data, size * n);
    return size * n;
}

struct RequestOptions {
    std::vector<std::string> headers;
    bool chunked = false; // send the body with Transfer-Encoding: chunked
    long timeout = kRequestSeconds;
};

struct Upload {
    const std::string *body;
    size_t at = 0;
};
inline size_t read_upload(char *buffer, size_t size, size_t n, void *upload) {
    auto *u = static_cast<Upload *>(upload);
    const size_t take = std::min(size * n, u->body->size() - u->at);
    memcpy(buffer, u->body->data() + u->at, take);
    u->at += take;
    return take;
}

// The easy handle of one request: method, body, headers and limits (a body of "" is sent as an
// empty one for POST).
struct Transfer {
    CURL *curl = curl_easy_init();
    curl_slist *list = nullptr;
    Upload upload;
    Transfer(const std::string &url, const std::string &method, const std::string *body,
             const RequestOptions &o) {
        upload.body = body;
        curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, o.timeout);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(curl, CURLOPT_FORBID_REUSE, 1L);
        bool has_type = false, has_expect = false;
        for (const auto &h : o.headers) {
            list = curl_slist_append(list, h.c_str());
            has_type |= h.rfind("Content-Type:", 0) == 0;
            has_expect |= h.rfind("Expect:", 0) == 0;
        }
        if (body) {
            if (!has_type) list = curl_slist_append(list, "Content-Type: application/json");
            if (!has_expect) list = curl_slist_append(list, "Expect:"); // no 100-continue wait
            if (o.chunked) {
                list = curl_slist_append(list, "Transfer-Encoding: chunked");
                curl_easy_setopt(curl, CURLOPT_POST, 1L);
                curl_easy_setopt(curl, CURLOPT_READFUNCTION, read_upload);
                curl_easy_setopt(curl, CURLOPT_READDATA, &upload);
            } else {
                curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body->size());
                curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
            }
        }
        if (method != "GET" && method != "POST")
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
        else if (method == "POST" && !body)
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    }
    ~Transfer() {
        curl_easy_cleanup(curl);
        curl_slist_free_all(list);
    }
};

inline Reply request(const std::string &url, const std::string &method, const std::string *body,
                     const RequestOptions &o = {}) {
    Reply r;
    Transfer t(url, method, body, o);
    curl_easy_setopt(t.curl, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(t.curl, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(t.curl, CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(t.curl, CURLOPT_HEADERDATA, &r);
    r.code = curl_easy_perform(t.curl);
    if (r.code != CURLE_OK) r.error = curl_easy_strerror(r.code);
    curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &r.status);
    return r;
}

inline Reply get(const Server &s, const std::string &path, const RequestOptions &o = {}) {
    return request(s.url(path), "GET", nullptr, o);
}
inline Reply post(const Server &s, const std::string &path, const std::string &body,
                  const RequestOptions &o = {}) {
    return request(s.url(path), "POST", &body, o);
}

// What a reply was, for failure messages.
inline std::string describe(const Reply &r) {
    if (r.code != CURLE_OK) return "transfer failed: " + r.error;
    return "HTTP " + std::to_string(r.status) + ": " + r.body.substr(0, 2000);
}

// ---- server-sent events ----------------------------------------------------------------------

// Where a stream has got, for a test that acts on it from another thread.
struct StreamWatch {
    std::atomic<bool> headers{false}; // the status line came: the request was taken
    std::atomic<int> events{0};       // data events parsed so far
    std::atomic<bool> abort{false};   // set by the test: the client goes away now
    std::atomic<bool> done{false};    // [DONE] came
};

struct Stream {
    Reply reply;              // status, headers; body holds every byte received
    std::vector<Json> events; // each data event's JSON, in order
    bool done = false;        // "data: [DONE]" came
    std::string malformed;    // what broke the SSE framing, if anything did
    bool aborted = false;     // the client stopped it (abort_after or watch->abort)
    int abort_after = 0;      // > 0: go away once that many events have come
    StreamWatch *watch = nullptr;

    // Parses every complete event in the body from `parsed` on.
    void parse_events() {
        size_t end;
        while ((end = reply.body.find("\n\n", parsed)) != std::string::npos) {
            const std::string event = reply.body.substr(parsed, end - parsed);
            parsed = end + 2;
            if (event.rfind("data: ", 0) != 0) {
                if (malformed.empty()) malformed = "an event without \"data: \": " + event;
                continue;
            }
            const std::string payload = event.substr(6);
            if (done && malformed.empty()) malformed = "an event after [DONE]: " + event;
            if (payload == "[DONE]") {
                done = true;
                if (watch) watch->done = true;
                continue;
            }
            Json json = parse_json(payload);
            if (!json && malformed.empty()) malformed = "an event that is not JSON: " + payload;
            if (json) events.push_back(std::move(json));
            if (watch) watch->events++;
        }
    }
    size_t parsed = 0;
};

inline size_t stream_body(char *data, size_t size, size_t n, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    s->reply.body.append(data, size * n);
    s->parse_events();
    const bool enough = s->abort_after > 0 && (int)s->events.size() >= s->abort_after;
    if (enough || (s->watch && s->watch->abort)) {
        s->aborted = true;
        return 0; // curl ends the transfer and closes the connection
    }
    return size * n;
}

inline size_t stream_header(char *data, size_t size, size_t n, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    take_header(s->reply, data, size * n);
    if (s->watch && size * n > 5 && memcmp(data, "HTTP/", 5) == 0) s->watch->headers = true;
    return size * n;
}

// Lets the test end a stream that sends nothing (watch->abort) without waiting for data.
inline int stream_progress(void *stream, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto *s = static_cast<Stream *>(stream);
    if (s->watch && s->watch->abort) {
        s->aborted = true;
        return 1;
    }
    return 0;
}

inline Stream post_stream(const Server &s, const std::string &path, const std::string &body,
                          int abort_after = 0, StreamWatch *watch = nullptr) {
    Stream st;
    st.abort_after = abort_after;
    st.watch = watch;
    Transfer t(s.url(path), "POST", &body, {});
    curl_easy_setopt(t.curl, CURLOPT_WRITEFUNCTION, stream_body);
    curl_easy_setopt(t.curl, CURLOPT_WRITEDATA, &st);
    curl_easy_setopt(t.curl, CURLOPT_HEADERFUNCTION, stream_header);
    curl_easy_setopt(t.curl, CURLOPT_HEADERDATA, &st);
    curl_easy_setopt(t.curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(t.curl, CURLOPT_XFERINFOFUNCTION, stream_progress);
    curl_easy_setopt(t.curl, CURLOPT_XFERINFODATA, &st);
    st.reply.code = curl_easy_perform(t.curl);
    if (st.reply.code != CURLE_OK) st.reply.error = curl_easy_strerror(st.reply.code);
    curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &st.reply.status);
    return st;
}

// The first choice of an event (nullptr when it has none: the usage chunk).
const cJSON *choice0(const Json &event) { return get(event.get(), "choices", 0); }

// The text a stream carried: completions' text or chat's delta.content, joined.
inline std::string joined_text(const Stream &st) {
    std::string text;
    for (const auto &e : st.events) {
        const cJSON *c = choice0(e);
        const cJSON *piece = get(c, "text");
        if (!piece) piece = get(c, "delta", "content");
        if (cJSON_IsString(piece)) text += piece->valuestring;
    }
    return text;
}

// The finish_reason of the stream (the last non-null one), "<none>" if none came.
inline std::string stream_finish(const Stream &st) {
    std::string reason = "<none>";
    for (const auto &e : st.events)
        if (cJSON_IsString(get(choice0(e), "finish_reason")))
            reason = get(choice0(e), "finish_reason")->valuestring;
    return reason;
}

// A finished stream as the protocol says: 200, text/event-stream, "data: " events, [DONE] last.
::testing::AssertionResult is_complete_stream(const Stream &st) {
    if (st.reply.code != CURLE_OK || st.reply.status != 200)
        return ::testing::AssertionFailure() << describe(st.reply);
    if (st.reply.header("content-type").rfind("text/event-stream", 0) != 0)
        return ::testing::AssertionFailure() << "Content-Type " << st.reply.header("content-type");
    if (!st.malformed.empty()) return ::testing::AssertionFailure() << st.malformed;
    if (!st.done) return ::testing::AssertionFailure() << "no [DONE]:\n" << st.reply.body;
    if (st.reply.body.size() < 14 ||
        st.reply.body.compare(st.reply.body.size() - 14, 14, "data: [DONE]\n\n") != 0)
        return ::testing::AssertionFailure() << "bytes after [DONE]:\n" << st.reply.body;
    return ::testing::AssertionSuccess();
}

// ---- answers and errors ----------------------------------------------------------------------

// A 200 with a JSON body.
::testing::AssertionResult is_ok_json(const Reply &r) {
    if (r.code != CURLE_OK || r.status != 200) return ::testing::AssertionFailure() << describe(r);
    if (r.header("content-type").rfind("application/json", 0) != 0)
        return ::testing::AssertionFailure() << "Content-Type " << r.header("content-type");
    if (!r.json()) return ::testing::AssertionFailure() << "not JSON: " << r.body;
    return ::testing::AssertionSuccess();
}

// The status, and OpenAI's error object: {"error": {"message", "type", "param", "code"}}, the
// message non-empty, param and code strings or null.
::testing::AssertionResult is_error(const Reply &r, long status) {
    if (r.code != CURLE_OK) return ::testing::AssertionFailure() << describe(r);
    if (r.status != status)
        return ::testing::AssertionFailure() << "expected " << status << ", got " << describe(r);
    if (r.header("content-type").rfind("application/json", 0) != 0)
        return ::testing::AssertionFailure() << "Content-Type " << r.header("content-type");
    Json j = r.json();
    const cJSON *e = get(j.get(), "error");
    if (!cJSON_IsObject(e) || size(j.get()) != 1)
        return ::testing::AssertionFailure() << "no error object: " << r.body;
    if (!cJSON_IsString(get(e, "message")) || !get(e, "message")->valuestring[0] ||
        !cJSON_IsString(get(e, "type")))
        return ::testing::AssertionFailure() << "message or type missing: " << r.body;
    for (const char *f : {"param", "code"})
        if (!cJSON_IsString(get(e, f)) && !cJSON_IsNull(get(e, f)))
            return ::testing::AssertionFailure() << f << " neither a string nor null: " << r.body;
    return ::testing::AssertionSuccess();
}

// error.param, error.code or error.message of an error reply ("<null>" for null).
inline std::string error_field(const Reply &r, const char *field) {
    Json j = r.json();
    return str(get(j.get(), "error", field));
}

// /health answers 200 and a small completion gives text: the server is still serving.
::testing::AssertionResult still_serving(const Server &s) {
    const Reply health = get(s, "/health");
    if (health.code != CURLE_OK || health.status != 200)
        return ::testing::AssertionFailure() << "/health: " << describe(health);
    const Reply r = post(s, "/v1/completions", R"({"prompt": "And", "max_tokens": 2})");
    if (!is_ok_json(r)) return ::testing::AssertionFailure() << "a completion: " << describe(r);
    Json j = r.json();
    if (num(get(j.get(), "usage", "completion_tokens")) != 2)
        return ::testing::AssertionFailure() << "a completion: " << r.body;
    return ::testing::AssertionSuccess();
}

// ---- /metrics --------------------------------------------------------------------------------

// The value of a series in /metrics: the sum of the samples named `name` whose labels include
// every one of `labels` (so that a check need not know the module's other labels); nullopt when
// no sample matches or /metrics does not answer.
inline std::optional<double>
metric(const Server &s, const std::string &name,
       const std::vector<std::pair<std::string, std::string>> &labels = {}) {
    const Reply r = get(s, "/metrics");
    if (r.code != CURLE_OK || r.status != 200) return std::nullopt;
    std::optional<double> total;
    size_t at = 0;
    while (at < r.body.size()) {
        size_t end = r.body.find('\n', at);
        if (end == std::string::npos) end = r.body.size();
        const std::string line = r.body.substr(at, end - at);
        at = end + 1;
        if (line.empty() || line[0] == '#') continue;
        const size_t name_end = line.find_first_of("{ ");
        if (name_end == std::string::npos || line.compare(0, name_end, name) != 0 ||
            name_end != name.size())
            continue;
        std::string label_text;
        size_t value_at = name_end;
        if (line[name_end] == '{') {
            const size_t close = line.find('}', name_end);
            if (close == std::string::npos) continue;
            label_text = line.substr(name_end, close - name_end + 1);
            value_at = close + 1;
        }
        bool all = true;
        for (const auto &[key, value] : labels)
            all = all && label_text.find(key + "=\"" + value + "\"") != std::string::npos;
        if (!all) continue;
        total = total.value_or(0) + std::strtod(line.c_str() + value_at, nullptr);
    }
    return total;
}

// Polls /metrics until nothing runs and no KV block is in use; says what it saw otherwise.
::testing::AssertionResult engine_goes_idle(const Server &s) {
    const auto start = Clock::now();
    std::optional<double> running, usage;
    while (seconds_since(start) < kSettleSeconds) {
        running = metric(s, "cinfer:num_requests_running");
        usage = metric(s, "cinfer:kv_cache_usage_perc");
        if (!running || !usage) // the stub renders no series: no use waiting
            return ::testing::AssertionFailure()
                   << "/metrics has no cinfer:num_requests_running or cinfer:kv_cache_usage_perc "
                      "(the metrics module is not merged?):\n"
                   << get(s, "/metrics").body;
        if (*running == 0 && *usage == 0) return ::testing::AssertionSuccess();
        sleep_seconds(0.02);
    }
    return ::testing::AssertionFailure()
           << "after " << kSettleSeconds << " s: num_requests_running " << *running
           << ", kv_cache_usage_perc " << *usage;
}

// ---- requests --------------------------------------------------------------------------------

// A completions body: prompt (a JSON value: a quoted string or ids), max_tokens, and `extra`
// (more members, "" or starting with a comma); greedy unless extra sets a temperature (a key
// given twice would be read as its first).
inline std::string completion_body(const std::string &prompt_json, int max_tokens,
                                   const std::string &extra = "") {
    const bool sampled = extra.find("\"temperature\"") != std::string::npos;
    return R"({"model": ")" + kModelName + R"(", "prompt": )" + prompt_json +
           R"(, "max_tokens": )" + std::to_string(max_tokens) +
           (sampled ? "" : R"(, "temperature": 0)") + extra + "}";
}

struct Completion {
    std::string text, finish;
    int prompt_tokens = -1, completion_tokens = -1, total_tokens = -1;
};

inline Completion completion_of(const Json &j) {
    Completion c;
    const cJSON *text = get(j.get(), "choices", 0, "text");
    if (!text) text = get(j.get(), "choices", 0, "message", "content");
    c.text = str(text);
    c.finish = str(get(j.get(), "choices", 0, "finish_reason"));
    c.prompt_tokens = (int)num(get(j.get(), "usage", "prompt_tokens"));
    c.completion_tokens = (int)num(get(j.get(), "usage", "completion_tokens"));
    c.total_tokens = (int)num(get(j.get(), "usage", "total_tokens"));
    return c;
}

// The ids /tokenize gives for a body ({"prompt": ...} or {"messages": ...}).
inline std::vector<int> tokenize(const Server &s, const std::string &body) {
    const Reply r = post(s, "/tokenize", body);
    EXPECT_TRUE(is_ok_json(r)) << body;
    Json j = r.json();
    std::vector<int> ids;
    const cJSON *tokens = get(j.get(), "tokens");
    for (int i = 0; i < size(tokens); i++) ids.push_back((int)num(cJSON_GetArrayItem(tokens, i)));
    EXPECT_EQ(num(get(j.get(), "count")), (double)ids.size()) << r.body;
    return ids;
}

// `cinfer run` on the same model: its stdout without the final newline.
inline std::string cinfer_run(const std::vector<std::string> &args) {
    TempDir capture;
    std::string command = "timeout 60 '" + std::string(CINFER_CLI) + "'";
    for (const auto &a : args) {
        std::string quoted = "'";
        for (char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
        command += " " + quoted + "'";
    }
    command += " >'" + capture.file("out") + "' 2>'" + capture.file("err") + "'";
    const int status = std::system(command.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << command << "\n"
        << cinfer_test::read_file(capture.file("err"));
    std::string out = cinfer_test::read_file(capture.file("out"));
    EXPECT_TRUE(!out.empty() && out.back() == '\n') << out;
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

// ---- raw sockets: clients libcurl cannot be (half a request, headers never ended) ------------

struct RawClient {
    int fd = -1;
    explicit RawClient(int port) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons((uint16_t)port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (sockaddr *)&address, sizeof address) != 0) {
            close(fd);
            fd = -1;
        }
    }
    ~RawClient() {
        if (fd >= 0) close(fd);
    }
    bool send_all(const std::string &bytes) {
        size_t at = 0;
        while (fd >= 0 && at < bytes.size()) {
            const ssize_t n = ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
            if (n <= 0) return false;
            at += (size_t)n;
        }
        return fd >= 0;
    }
    // Waits up to `limit` seconds for the server to close the connection; true when it did
    // (whatever it sent first is read and dropped).
    bool closed_by_server(double limit) {
        const auto start = Clock::now();
        while (fd >= 0 && seconds_since(start) < limit) {
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 50) <= 0) continue;
            char buffer[4096];
            const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
            if (n <= 0) return true; // end of stream or a reset
        }
        return false;
    }
};

// ---- fixtures --------------------------------------------------------------------------------

// One server for a whole suite (model loading is cheap, but not free under ASan); TearDown of
// the suite stops it and checks the exit.
template <typename Options> class SharedServer : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { server = new Server(Options::args()); }
    static void TearDownTestSuite() {
        if (server && server->ready()) {
            EXPECT_TRUE(exited_cleanly(server->stop()));
        }
        delete server;
        server = nullptr;
    }
    void SetUp() override {
        ASSERT_TRUE(server && server->ready()) << (server ? server->problem() : "no server");
    }
    static Server *server;
};
template <typename Options> Server *SharedServer<Options>::server = nullptr;

struct ApiOptions {
    static std::vector<std::string> args() { return {"--threads", "2"}; }
};
using ServeApi = SharedServer<ApiOptions>;

} // namespace serve_test

#endif
