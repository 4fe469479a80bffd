// Helpers shared by the test suites.
#pragma once

#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

extern "C" {
#include "cinfer.h"
}

namespace cinfer_test {

// A seed drawn fresh for every run (so that repeated runs explore new inputs), printed so that a
// failure can be replayed with CINFER_TEST_SEED=<seed>.
inline uint64_t fresh_seed() {
    static uint64_t seed = [] {
        const char *fixed = std::getenv("CINFER_TEST_SEED");
        uint64_t s = fixed ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
        std::fprintf(stderr, "[cinfer] random seed %llu (replay with CINFER_TEST_SEED)\n",
                     (unsigned long long)s);
        return s;
    }();
    return seed;
}

inline std::vector<float> random_floats(std::mt19937_64 &rng, size_t n, float scale = 1.0f) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> v(n);
    for (auto &x : v) x = normal(rng);
    return v;
}

// A fresh directory under the system temp dir, removed with the object.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        static std::mt19937_64 names(std::random_device{}());
        path = std::filesystem::temp_directory_path() / ("cinfer-test-" + std::to_string(names()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    std::string file(const std::string &name) const { return (path / name).string(); }
};

inline void write_file(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), (std::streamsize)bytes.size());
}

inline std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// What `cinfer args...` did: its exit status (128 + the signal when it died of one), stdout,
// stderr.
struct CliResult {
    int exit_code;
    std::string out, err;
};

inline std::string shell_quote(const std::string &arg) {
    std::string quoted = "'";
    for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

// Runs the cinfer binary (CINFER_CLI) with args under a time limit, so that a hang fails rather
// than blocks, capturing stdout and stderr.
inline CliResult run_cli(const std::vector<std::string> &args, int timeout_seconds = 60) {
    TempDir capture;
    std::string command =
        "timeout " + std::to_string(timeout_seconds) + " " + shell_quote(CINFER_CLI);
    for (const auto &arg : args) command += " " + shell_quote(arg);
    command += " >" + shell_quote(capture.file("out")) + " 2>" + shell_quote(capture.file("err"));
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
            read_file(capture.file("out")), read_file(capture.file("err"))};
}

// The committed fixtures made by scripts/make_fixtures.py, sorted by name.
inline std::vector<std::string> fixture_names() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto &entry : std::filesystem::directory_iterator(CINFER_FIXTURE_DIR, ec))
        if (std::filesystem::exists(entry.path() / "expected.safetensors"))
            names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

inline std::string fixture_dir(const std::string &name) {
    return std::string(CINFER_FIXTURE_DIR) + "/" + name;
}

} // namespace cinfer_test

// ---- helpers for the bad-input suites (safetensors, checkpoint, cli) ----------------------------

#include <initializer_list>
#include <map>

namespace cinfer_test {

// Passes when text contains every one of parts; on failure shows the whole text, so that a test
// of an error message reads as the list of things the message must name.
inline ::testing::AssertionResult contains_all(const std::string &text,
                                               std::initializer_list<std::string> parts) {
    for (const auto &part : parts)
        if (text.find(part) == std::string::npos)
            return ::testing::AssertionFailure()
                   << "expected \"" << part << "\" in the message:\n  " << text;
    return ::testing::AssertionSuccess();
}

// A safetensors file from its parts: 8-byte little-endian header length, header, data buffer.
// The header is taken as given, so that tests can write malformed ones.
inline std::string safetensors_bytes(const std::string &header, const std::string &data) {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; i++) out[i] = (char)((n >> (8 * i)) & 0xff);
    return out + header + data;
}

// Writes well-formed safetensors files: tensors laid out back to back in the order added, the
// header padded with spaces to a multiple of 8 bytes as the reference writer does.
class SafetensorsBuilder {
  public:
    SafetensorsBuilder &add(const std::string &name, const std::string &dtype,
                            const std::vector<int64_t> &shape, const std::string &bytes) {
        tensors_.push_back({name, dtype, shape, bytes});
        return *this;
    }
    SafetensorsBuilder &metadata(const std::string &key, const std::string &value) {
        metadata_[key] = value;
        return *this;
    }
    std::string header() const {
        std::string json = "{";
        if (!metadata_.empty()) {
            json += "\"__metadata__\":{";
            for (auto it = metadata_.begin(); it != metadata_.end(); ++it)
                json += (it == metadata_.begin() ? "\"" : ",\"") + it->first + "\":\"" +
                        it->second + "\"";
            json += "}";
        }
        uint64_t offset = 0;
        for (const auto &t : tensors_) {
            if (json.size() > 1) json += ",";
            json += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
            for (size_t i = 0; i < t.shape.size(); i++)
                json += (i ? "," : "") + std::to_string(t.shape[i]);
            json += "],\"data_offsets\":[" + std::to_string(offset) + "," +
                    std::to_string(offset + t.bytes.size()) + "]}";
            offset += t.bytes.size();
        }
        json += "}";
        json.resize((json.size() + 7) / 8 * 8, ' ');
        return json;
    }
    std::string data() const {
        std::string out;
        for (const auto &t : tensors_) out += t.bytes;
        return out;
    }
    std::string bytes() const { return safetensors_bytes(header(), data()); }
    void write(const std::string &path) const { write_file(path, bytes()); }

  private:
    struct Tensor {
        std::string name, dtype;
        std::vector<int64_t> shape;
        std::string bytes;
    };
    std::vector<Tensor> tensors_;
    std::map<std::string, std::string> metadata_;
};

// The raw bytes of a vector of numbers (little-endian, as every machine we build for is).
template <typename T> std::string bytes_of(const std::vector<T> &values) {
    return std::string(reinterpret_cast<const char *>(values.data()), values.size() * sizeof(T));
}

} // namespace cinfer_test
