// What the tensor-parallel suites share: the bar a sharded model is held to, the models they run,
// and the inputs the communicators' tests sum (test_comm, test_comm_socket,
// test_tensor_parallel, test_tensor_parallel_api).
#pragma once

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "common/tensor.h"
}

namespace cinfer_test {

// Max-abs difference over max(1, max |whole|): 1e-5 absolute where values are of order 1 (every
// random fixture), and relative where they are larger, as in the bundled model's deeper layers,
// whose hidden states reach ~100 where one F32 ulp is 7.6e-6 (programs/compare.h scales its bar
// the same way).
constexpr double kTolerance = 1e-5;
inline const std::string kBundledModel =
    std::string(CINFER_FIXTURE_DIR) + "/../../models/diffllama-tiny";

// A fixture by name, or "diffllama_tiny": the bundled model.
inline std::string model_dir(const std::string &name) {
    return name == "diffllama_tiny" ? kBundledModel : fixture_dir(name);
}

// Floats whose sums round differently in another order: magnitudes spread over six decades.
inline std::vector<float> spread_floats(std::mt19937_64 &rng, size_t n) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> decades(-3.0f, 3.0f);
    std::vector<float> v(n);
    for (auto &x : v) x = normal(rng) * std::pow(10.0f, decades(rng));
    return v;
}

inline ci_tensor f32_tensor(float *data, int64_t rows, int64_t cols) {
    return ci_tensor{data, CI_F32, 2, {rows, cols, 0, 0}};
}

} // namespace cinfer_test
