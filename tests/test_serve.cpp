// `cinfer serve` driven over HTTP as a client would drive it (libcurl), on the bundled model
// (models/diffllama-tiny) on the CPU: every route streamed and not, answers equal to `cinfer run`
// and to each other, chat through each template family, 64 clients at once, bad input answered
// with the right status and OpenAI error object, and shutdown. Each suite starts the real binary
// (CINFER_CLI) on a free port and stops it with SIGTERM, asserting exit 0 and no sanitizer
// report: under CINFER_SANITIZE that is the server's leak check.
//
// Nothing here may hang: every transfer has a time limit, and so has every wait for the server.
// The checks that read /metrics (metric() below) need the Prometheus module; the stub that stands
// in for it renders no series, and those checks fail until it is merged.
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

namespace {

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

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

void sleep_seconds(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

// ---- JSON (cJSON, owned) ---------------------------------------------------------------------

using Json = std::unique_ptr<cJSON, void (*)(cJSON *)>;

Json parse_json(const std::string &text) {
    return Json(cJSON_ParseWithLength(text.data(), text.size()), cJSON_Delete);
}

// get(o, "choices", 0, "text"): a member or element on the way down, nullptr once one is missing.
const cJSON *get(const cJSON *o) { return o; }
template <typename... Rest> const cJSON *get(const cJSON *o, const char *key, Rest... rest);
template <typename... Rest> const cJSON *get(const cJSON *o, int index, Rest... rest) {
    return get(cJSON_IsArray(o) ? cJSON_GetArrayItem(o, index) : nullptr, rest...);
}
template <typename... Rest> const cJSON *get(const cJSON *o, const char *key, Rest... rest) {
    return get(cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : nullptr, rest...);
}

// A string's value, or a marker that cannot be mistaken for one.
std::string str(const cJSON *o) {
    if (cJSON_IsString(o)) return o->valuestring;
    return cJSON_IsNull(o) ? "<null>" : o ? "<not a string>" : "<missing>";
}
double num(const cJSON *o) { return cJSON_IsNumber(o) ? o->valuedouble : NAN; }
int size(const cJSON *o) {
    return cJSON_IsArray(o) || cJSON_IsObject(o) ? cJSON_GetArraySize(o) : -1;
}

std::string print(const cJSON *o) {
    char *text = o ? cJSON_PrintUnformatted(o) : nullptr;
    std::string out = text ? text : "<none>";
    free(text);
    return out;
}

// text as a JSON string literal, quotes included.
std::string quote(const std::string &text) {
    Json s(cJSON_CreateString(text.c_str()), cJSON_Delete);
    return print(s.get());
}

std::string ids_json(const std::vector<int> &ids) {
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

size_t collect_body(char *data, size_t size, size_t n, void *reply) {
    static_cast<Reply *>(reply)->body.append(data, size * n);
    return size * n;
}

// One header line of the answer; a new status line (after 100 Continue) starts over.
void take_header(Reply &r, const char *data, size_t n) {
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

size_t collect_header(char *data, size_t size, size_t n, void *reply) {
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
size_t read_upload(char *buffer, size_t size, size_t n, void *upload) {
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

Reply request(const std::string &url, const std::string &method, const std::string *body,
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

Reply get(const Server &s, const std::string &path, const RequestOptions &o = {}) {
    return request(s.url(path), "GET", nullptr, o);
}
Reply post(const Server &s, const std::string &path, const std::string &body,
           const RequestOptions &o = {}) {
    return request(s.url(path), "POST", &body, o);
}

// What a reply was, for failure messages.
std::string describe(const Reply &r) {
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

size_t stream_body(char *data, size_t size, size_t n, void *stream) {
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

size_t stream_header(char *data, size_t size, size_t n, void *stream) {
    auto *s = static_cast<Stream *>(stream);
    take_header(s->reply, data, size * n);
    if (s->watch && size * n > 5 && memcmp(data, "HTTP/", 5) == 0) s->watch->headers = true;
    return size * n;
}

// Lets the test end a stream that sends nothing (watch->abort) without waiting for data.
int stream_progress(void *stream, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto *s = static_cast<Stream *>(stream);
    if (s->watch && s->watch->abort) {
        s->aborted = true;
        return 1;
    }
    return 0;
}

Stream post_stream(const Server &s, const std::string &path, const std::string &body,
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
std::string joined_text(const Stream &st) {
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
std::string stream_finish(const Stream &st) {
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
std::string error_field(const Reply &r, const char *field) {
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
std::optional<double> metric(const Server &s, const std::string &name,
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
std::string completion_body(const std::string &prompt_json, int max_tokens,
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

Completion completion_of(const Json &j) {
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
std::vector<int> tokenize(const Server &s, const std::string &body) {
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
std::string cinfer_run(const std::vector<std::string> &args) {
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
    EXPECT_GE(aborted, kStreams - 1) << "at most one of them could finish within 0.5 s";
    if (buffered.code == CURLE_OK && buffered.status == 200) {
        EXPECT_EQ(completion_of(buffered.json()).finish, "abort") << buffered.body;
    }
}

} // namespace
