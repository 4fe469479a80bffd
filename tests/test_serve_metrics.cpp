// The /metrics text of cinfer serve (programs/serve_metrics.c), read back by a small parser of
// Prometheus' exposition format 0.0.4: every line is a comment or a sample, every family is typed,
// histograms are cumulative and agree with a reference count of the same observations, counters
// are exact under eight threads, and the model name is escaped as the format says.
#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

extern "C" {
#include "programs/serve_metrics.h"
}

namespace {

struct Sample {
    std::string name;
    std::map<std::string, std::string> labels; // values unescaped
    double value = 0;
};

// What the parser read: the samples in order, each family's TYPE, and every line it refused.
struct Exposition {
    std::vector<Sample> samples;
    std::map<std::string, std::string> types;
    std::vector<std::string> errors;

    // The samples of name whose labels include these.
    std::vector<Sample> find(const std::string &name,
                             const std::map<std::string, std::string> &labels = {}) const {
        std::vector<Sample> found;
        for (const Sample &s : samples) {
            if (s.name != name) continue;
            bool match = true;
            for (const auto &[key, value] : labels) {
                auto it = s.labels.find(key);
                match = match && it != s.labels.end() && it->second == value;
            }
            if (match) found.push_back(s);
        }
        return found;
    }
    // The value of the one sample that matches; NaN (and a failure) unless exactly one does.
    double value(const std::string &name,
                 const std::map<std::string, std::string> &labels = {}) const {
        std::vector<Sample> found = find(name, labels);
        EXPECT_EQ(found.size(), 1u) << name;
        return found.size() == 1 ? found[0].value : NAN;
    }
};

const std::regex metric_name("[a-zA-Z_:][a-zA-Z0-9_:]*");
const std::regex label_name("[a-zA-Z_][a-zA-Z0-9_]*");
// a finite number as Go's ParseFloat reads it, without the spellings of NaN and infinity: no
// sample of ours is ever anything else
const std::regex finite_number("[-+]?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?");

// The family a sample belongs to: itself, or the histogram its _bucket/_sum/_count is part of.
std::string family_of(const std::string &name, const std::map<std::string, std::string> &types) {
    if (types.count(name)) return name;
    for (const char *suffix : {"_bucket", "_sum", "_count"}) {
        const std::string s = suffix;
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
            const std::string base = name.substr(0, name.size() - s.size());
            auto it = types.find(base);
            if (it != types.end() && it->second == "histogram") return base;
        }
    }
    return "";
}

// {a="x",b="y\"z"} from text[at] on; returns the position after '}', or npos on a syntax error.
size_t parse_labels(const std::string &line, size_t at, std::map<std::string, std::string> &out) {
    at++; // '{'
    while (at < line.size() && line[at] != '}') {
        const size_t eq = line.find('=', at);
        if (eq == std::string::npos) return std::string::npos;
        const std::string key = line.substr(at, eq - at);
        if (!std::regex_match(key, label_name) || out.count(key) || eq + 1 >= line.size() ||
            line[eq + 1] != '"')
            return std::string::npos;
        std::string value;
        size_t i = eq + 2;
        for (; i < line.size() && line[i] != '"'; i++) {
            if (line[i] != '\\') {
                value += line[i];
                continue;
            }
            if (++i >= line.size()) return std::string::npos;
            if (line[i] == 'n')
                value += '\n';
            else if (line[i] == '\\' || line[i] == '"')
                value += line[i];
            else
                return std::string::npos; // the format has no other escapes
        }
        if (i >= line.size()) return std::string::npos;
        out[key] = value;
        at = i + 1;
        if (at < line.size() && line[at] == ',') at++;
    }
    return at < line.size() ? at + 1 : std::string::npos;
}

Exposition parse(const std::string &text) {
    Exposition e;
    if (!text.empty() && text.back() != '\n') e.errors.push_back("no newline at the end");
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(start, end - start);
        start = end + 1;
        std::smatch m;
        static const std::regex help("# HELP ([^ ]+) [^\\n]+");
        static const std::regex type("# TYPE ([^ ]+) (counter|gauge|histogram)");
        if (std::regex_match(line, m, help)) {
            if (!std::regex_match(m[1].str(), metric_name)) e.errors.push_back(line);
            continue;
        }
        if (std::regex_match(line, m, type)) {
            const std::string name = m[1];
            if (e.types.count(name) || !std::regex_match(name, metric_name) ||
                (m[2] == "counter" && name.size() < 6) ||
                (m[2] == "counter" && name.compare(name.size() - 6, 6, "_total") != 0))
                e.errors.push_back(line);
            e.types[name] = m[2];
            continue;
        }
        Sample s;
        const size_t name_end = line.find_first_of("{ ");
        s.name = line.substr(0, name_end);
        size_t at = name_end;
        if (at != std::string::npos && line[at] == '{') at = parse_labels(line, at, s.labels);
        const std::string value = at == std::string::npos || at >= line.size() || line[at] != ' '
                                      ? ""
                                      : line.substr(at + 1);
        if (!std::regex_match(s.name, metric_name) || !std::regex_match(value, finite_number) ||
            family_of(s.name, e.types).empty()) {
            e.errors.push_back(line);
            continue;
        }
        s.value = std::strtod(value.c_str(), nullptr);
        e.samples.push_back(s);
    }
    return e;
}

// Renders m and parses it, failing on any line the parser refused or any sample whose model_name
// is not model.
Exposition render(serve_metrics *m, const cinfer_engine_stats *stats,
                  const std::string &model = "m", std::string *raw = nullptr) {
    std::unique_ptr<char, decltype(&free)> text(serve_metrics_render(m, stats), free);
    EXPECT_NE(text, nullptr);
    if (!text) return {};
    if (raw) *raw = text.get();
    Exposition e = parse(text.get());
    for (const std::string &line : e.errors) ADD_FAILURE() << "not exposition format: " << line;
    for (const Sample &s : e.samples) EXPECT_EQ(s.labels.at("model_name"), model) << s.name;
    return e;
}

struct Metrics {
    serve_metrics *m;
    explicit Metrics(const char *model = "m", int max_model_len = 4096)
        : m(serve_metrics_create(model, max_model_len)) {
        EXPECT_NE(m, nullptr);
    }
    ~Metrics() { serve_metrics_free(m); }
};

// The histogram family against the observations made, in their order: buckets cumulative with
// increasing bounds ending at +Inf, each bucket the number of observations <= its bound, +Inf ==
// _count, and _sum the sum of the observations (exact: the same additions in the same order).
void expect_histogram(const Exposition &e, const std::string &family,
                      const std::vector<double> &observed) {
    SCOPED_TRACE(family);
    EXPECT_EQ(e.types.at(family), "histogram");
    const std::vector<Sample> buckets = e.find(family + "_bucket");
    ASSERT_FALSE(buckets.empty());
    ASSERT_EQ(buckets.back().labels.at("le"), "+Inf");
    double previous_bound = -INFINITY, previous_count = 0, sum = 0;
    for (double v : observed) sum += v;
    for (const Sample &b : buckets) {
        const std::string le = b.labels.at("le");
        const double bound = le == "+Inf" ? INFINITY : std::stod(le);
        EXPECT_GT(bound, previous_bound) << le;
        EXPECT_GE(b.value, previous_count) << le;
        size_t expected = 0;
        for (double v : observed) expected += v <= bound;
        EXPECT_EQ(b.value, (double)expected) << "le=" << le;
        previous_bound = bound;
        previous_count = b.value;
    }
    EXPECT_EQ(buckets.back().value, e.value(family + "_count"));
    EXPECT_EQ(e.value(family + "_count"), (double)observed.size());
    EXPECT_EQ(e.value(family + "_sum"), sum);
}

std::vector<double> bounds_of(const Exposition &e, const std::string &family) {
    std::vector<double> bounds;
    for (const Sample &b : e.find(family + "_bucket"))
        if (b.labels.at("le") != "+Inf") bounds.push_back(std::stod(b.labels.at("le")));
    return bounds;
}

const char *const reasons[] = {"stop", "length", "abort", "error"};

TEST(ServeMetrics, EmptyHasEveryFamilyAndEveryReasonAtZero) {
    Metrics metrics;
    const Exposition e = render(metrics.m, nullptr);
    for (const char *reason : reasons)
        EXPECT_EQ(e.value("cinfer:request_success_total", {{"finished_reason", reason}}), 0.0);
    EXPECT_EQ(e.value("cinfer:prompt_tokens_total"), 0.0);
    EXPECT_EQ(e.value("cinfer:generation_tokens_total"), 0.0);
    for (const char *h :
         {"cinfer:time_to_first_token_seconds", "cinfer:inter_token_latency_seconds",
          "cinfer:e2e_request_latency_seconds", "cinfer:request_queue_time_seconds",
          "cinfer:request_prompt_tokens", "cinfer:request_generation_tokens"})
        expect_histogram(e, h, {});
    EXPECT_EQ(e.types.at("cinfer:http_errors_total"), "counter");
    EXPECT_TRUE(e.find("cinfer:http_errors_total").empty());     // a status appears once sent
    EXPECT_EQ(e.types.count("cinfer:num_requests_running"), 0u); // no engine: no engine series
}

// vLLM's lists (vllm/v1/metrics/loggers.py), so that le labels match a vLLM server's.
TEST(ServeMetrics, BucketsAreVllms) {
    Metrics metrics("m", 4096);
    const Exposition e = render(metrics.m, nullptr);
    EXPECT_EQ(bounds_of(e, "cinfer:time_to_first_token_seconds"),
              (std::vector<double>{0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                   0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                   20.0,  40.0,  80.0, 160.0, 640.0, 2560.0}));
    EXPECT_EQ(bounds_of(e, "cinfer:inter_token_latency_seconds"),
              (std::vector<double>{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                   1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}));
    // written as Python's and Go's clients write them, give or take a ".0": no exponents
    std::vector<std::string> le_text;
    for (const Sample &b : e.find("cinfer:time_to_first_token_seconds_bucket"))
        le_text.push_back(b.labels.at("le"));
    EXPECT_EQ(le_text, (std::vector<std::string>{"0.001", "0.005", "0.01", "0.02", "0.04", "0.06",
                                                 "0.08",  "0.1",   "0.25", "0.5",  "0.75", "1",
                                                 "2.5",   "5",     "7.5",  "10",   "20",   "40",
                                                 "80",    "160",   "640",  "2560", "+Inf"}));
    const std::vector<double> request{0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                      5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                      60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
    EXPECT_EQ(bounds_of(e, "cinfer:e2e_request_latency_seconds"), request);
    EXPECT_EQ(bounds_of(e, "cinfer:request_queue_time_seconds"), request);
    const std::vector<double> tokens{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000};
    EXPECT_EQ(bounds_of(e, "cinfer:request_prompt_tokens"), tokens);
    EXPECT_EQ(bounds_of(e, "cinfer:request_generation_tokens"), tokens);

    Metrics widest("m", 2147483647); // 1-2-5 up to INT_MAX ends at 2e9
    EXPECT_EQ(bounds_of(render(widest.m, nullptr), "cinfer:request_prompt_tokens").back(), 2e9);
    Metrics none("m", 0); // below 1: only +Inf
    EXPECT_TRUE(bounds_of(render(none.m, nullptr), "cinfer:request_prompt_tokens").empty());
}

// Random observations, some exactly on a bound (which belongs to that bound's bucket).
TEST(ServeMetrics, HistogramsMatchAReferenceCount) {
    std::mt19937_64 rng(cinfer_test::fresh_seed());
    std::lognormal_distribution<double> seconds(-2.0, 2.5); // ~1 ms to ~100 s and past
    std::uniform_int_distribution<int> tokens(0, 5000), coin(0, 9);
    const double on_bounds[] = {0.001, 0.1, 0.3, 1.0, 2560.0, 7680.0};
    Metrics metrics;
    std::vector<double> ttft, inter, e2e, queue, prompt, generation;
    std::vector<int> n_per_reason(4);
    for (int i = 0; i < 500; i++) {
        auto draw = [&] { return coin(rng) == 0 ? on_bounds[rng() % 6] : seconds(rng); };
        const int reason = (int)(rng() % 4), n_prompt = tokens(rng), n_gen = tokens(rng);
        const double q = draw(), t = coin(rng) == 0 ? -1.0 : draw(), total = draw();
        serve_metrics_request_finished(metrics.m, reasons[reason], n_prompt, n_gen, q, t, total);
        n_per_reason[reason]++;
        prompt.push_back(n_prompt);
        generation.push_back(n_gen);
        queue.push_back(q);
        e2e.push_back(total);
        if (t >= 0) ttft.push_back(t);
        for (int k = coin(rng); k > 0; k--) {
            inter.push_back(draw());
            serve_metrics_inter_token(metrics.m, inter.back());
        }
    }
    const Exposition e = render(metrics.m, nullptr);
    expect_histogram(e, "cinfer:time_to_first_token_seconds", ttft);
    expect_histogram(e, "cinfer:inter_token_latency_seconds", inter);
    expect_histogram(e, "cinfer:e2e_request_latency_seconds", e2e);
    expect_histogram(e, "cinfer:request_queue_time_seconds", queue);
    expect_histogram(e, "cinfer:request_prompt_tokens", prompt);
    expect_histogram(e, "cinfer:request_generation_tokens", generation);
    for (int r = 0; r < 4; r++)
        EXPECT_EQ(e.value("cinfer:request_success_total", {{"finished_reason", reasons[r]}}),
                  n_per_reason[r])
            << reasons[r];
    double prompt_total = 0, generation_total = 0;
    for (double v : prompt) prompt_total += v;
    for (double v : generation) generation_total += v;
    EXPECT_EQ(e.value("cinfer:prompt_tokens_total"), prompt_total);
    EXPECT_EQ(e.value("cinfer:generation_tokens_total"), generation_total);
}

TEST(ServeMetrics, HttpErrorsByStatus) {
    Metrics metrics;
    for (int status : {400, 400, 404, 413, 500, 503, 400})
        serve_metrics_request_refused(metrics.m, status);
    for (int status : {0, 99, 600, -1})
        serve_metrics_request_refused(metrics.m, status); // no status
    const Exposition e = render(metrics.m, nullptr);
    EXPECT_EQ(e.find("cinfer:http_errors_total").size(), 5u);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "400"}}), 3.0);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "404"}}), 1.0);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "413"}}), 1.0);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "500"}}), 1.0);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "503"}}), 1.0);
}

TEST(ServeMetrics, ModelNameIsEscaped) {
    const std::string name = "org/\"quoted\" back\\slash\nnewline";
    Metrics metrics(name.c_str());
    std::string raw;
    const Exposition e = render(metrics.m, nullptr, name, &raw); // every sample reads back name
    EXPECT_FALSE(e.samples.empty());
    EXPECT_NE(raw.find("model_name=\"org/\\\"quoted\\\" back\\\\slash\\nnewline\""),
              std::string::npos);

    Metrics unnamed(nullptr); // NULL is ""
    render(unnamed.m, nullptr, "");
}

TEST(ServeMetrics, EngineSeriesComeFromItsStats) {
    Metrics metrics;
    cinfer_engine_stats stats{};
    stats.n_running = 7;
    stats.n_waiting = 3;
    stats.n_blocks = 8;
    stats.n_blocks_used = 2;
    stats.n_blocks_cached = 5; // free for a new request: not usage
    stats.prompt_tokens_queried = 12345678901ull;
    stats.prompt_tokens_hit = 4096;
    stats.n_preemptions = 9;
    Exposition e = render(metrics.m, &stats);
    EXPECT_EQ(e.types.at("cinfer:num_requests_running"), "gauge");
    EXPECT_EQ(e.types.at("cinfer:kv_cache_usage_perc"), "gauge");
    EXPECT_EQ(e.types.at("cinfer:prefix_cache_hits_total"), "counter");
    EXPECT_EQ(e.value("cinfer:num_requests_running"), 7.0);
    EXPECT_EQ(e.value("cinfer:num_requests_waiting"), 3.0);
    EXPECT_EQ(e.value("cinfer:kv_cache_usage_perc"), 0.25);
    EXPECT_EQ(e.value("cinfer:prefix_cache_queries_total"), 12345678901.0);
    EXPECT_EQ(e.value("cinfer:prefix_cache_hits_total"), 4096.0);
    EXPECT_EQ(e.value("cinfer:num_preemptions_total"), 9.0);

    stats.n_blocks_used = 1;
    stats.n_blocks = 3; // a third: the shortest text that reads back as the same double
    EXPECT_EQ(render(metrics.m, &stats).value("cinfer:kv_cache_usage_perc"), 1.0 / 3.0);
    stats.n_blocks = 0; // no pool yet: nothing in use, not a division by zero
    EXPECT_EQ(render(metrics.m, &stats).value("cinfer:kv_cache_usage_perc"), 0.0);
}

// What a caller should never pass still counts the request and never writes "nan" or "inf".
TEST(ServeMetrics, BadInputsAreCountedAndTheTextStaysParsable) {
    Metrics metrics;
    serve_metrics_request_finished(metrics.m, "bogus", -5, -1, NAN, NAN, -3.0);
    serve_metrics_request_finished(metrics.m, nullptr, 1, 1, INFINITY, 1e300, -INFINITY);
    serve_metrics_inter_token(metrics.m, NAN);
    serve_metrics_inter_token(metrics.m, INFINITY);
    serve_metrics_inter_token(metrics.m, -1.0);
    std::string raw;
    const Exposition e = render(metrics.m, nullptr, "m", &raw);
    EXPECT_EQ(e.value("cinfer:request_success_total", {{"finished_reason", "error"}}), 2.0);
    EXPECT_EQ(e.value("cinfer:prompt_tokens_total"), 1.0);
    // NaN ttft is no token; NaN and negative durations count as 0, infinite ones as 1e9 s
    expect_histogram(e, "cinfer:time_to_first_token_seconds", {1e9});
    expect_histogram(e, "cinfer:request_queue_time_seconds", {0.0, 1e9});
    expect_histogram(e, "cinfer:e2e_request_latency_seconds", {0.0, 0.0});
    expect_histogram(e, "cinfer:inter_token_latency_seconds", {0.0, 1e9, 0.0});
    expect_histogram(e, "cinfer:request_prompt_tokens", {0.0, 1.0});
    // lower-cased, without the words that may hold them: "cinfer" and le="+Inf"
    EXPECT_NE(raw.find("cinfer:time_to_first_token_seconds_sum{model_name=\"m\"} 1000000000\n"),
              std::string::npos);
    std::string lower = std::regex_replace(raw, std::regex("cinfer|le=\"\\+Inf\""), "");
    for (char &c : lower) c = (char)std::tolower((unsigned char)c);
    EXPECT_EQ(lower.find("nan"), std::string::npos);
    EXPECT_EQ(lower.find("inf"), std::string::npos);
}

// Eight threads observe at once while a ninth renders: every render is a consistent picture
// (cumulative buckets, +Inf == _count) and the totals at the end are exact. Durations are
// multiples of 1/1024, so their sums are exact in any order.
TEST(ServeMetrics, EightThreadsLoseNoUpdate) {
    constexpr int threads = 8, per_thread = 50000;
    Metrics metrics;
    std::atomic<bool> go{false}, done{false}; // go: all threads start together, to contend
    std::thread scraper([&] {
        while (!done.load()) {
            const Exposition e = render(metrics.m, nullptr);
            EXPECT_EQ(e.value("cinfer:e2e_request_latency_seconds_bucket", {{"le", "+Inf"}}),
                      e.value("cinfer:e2e_request_latency_seconds_count"));
        }
    });
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; t++)
        workers.emplace_back([&, t] {
            while (!go.load()) std::this_thread::yield();
            for (int i = 0; i < per_thread; i++) {
                const double s = (double)((t * per_thread + i) % 4096) / 1024.0;
                serve_metrics_request_finished(metrics.m, reasons[i % 4], 3, 5, s, s, s);
                serve_metrics_inter_token(metrics.m, s);
                serve_metrics_request_refused(metrics.m, 429);
            }
        });
    go = true;
    for (std::thread &w : workers) w.join();
    done = true;
    scraper.join();

    double expected_sum = 0;
    for (int k = 0; k < threads * per_thread; k++) expected_sum += (double)(k % 4096) / 1024.0;
    const double n = threads * per_thread;
    const Exposition e = render(metrics.m, nullptr);
    for (const char *reason : reasons)
        EXPECT_EQ(e.value("cinfer:request_success_total", {{"finished_reason", reason}}), n / 4);
    EXPECT_EQ(e.value("cinfer:prompt_tokens_total"), 3 * n);
    EXPECT_EQ(e.value("cinfer:generation_tokens_total"), 5 * n);
    EXPECT_EQ(e.value("cinfer:http_errors_total", {{"status", "429"}}), n);
    for (const char *h :
         {"cinfer:time_to_first_token_seconds", "cinfer:inter_token_latency_seconds",
          "cinfer:e2e_request_latency_seconds", "cinfer:request_queue_time_seconds"}) {
        EXPECT_EQ(e.value(std::string(h) + "_count"), n) << h;
        EXPECT_EQ(e.value(std::string(h) + "_sum"), expected_sum) << h;
    }
    EXPECT_EQ(e.value("cinfer:request_prompt_tokens_sum"), 3 * n);
}

} // namespace
