// The sampler (engine/sampling.c, public API in cinfer.h): greedy is torch.argmax, a seed fixes
// the tokens, and sampled tokens follow exactly the distribution transformers' logits warpers
// (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, in generate()'s order) define.
//
// The expected distributions are computed here, in double, from
// transformers/generation/logits_process.py; the draws are checked against them with a
// chi-square goodness-of-fit test.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "test_util.h"

using cinfer_test::fresh_seed;

namespace {

struct Sampler {
    cinfer_sampler *sampler = nullptr;
    Sampler(const cinfer_sampling &params, int vocab_size) {
        EXPECT_EQ(cinfer_sampler_create(&params, vocab_size, &sampler), CINFER_OK)
            << cinfer_last_error();
    }
    ~Sampler() { cinfer_sampler_free(sampler); }
    Sampler(const Sampler &) = delete;
    Sampler &operator=(const Sampler &) = delete;
    int32_t sample(const std::vector<float> &logits) {
        return cinfer_sampler_sample(sampler, logits.data());
    }
};

cinfer_sampling sampling(float temperature, int top_k, float top_p, uint64_t seed) {
    cinfer_sampling p{};
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.seed = seed;
    return p;
}

// ---- greedy ---------------------------------------------------------------------------------

// torch.argmax: the first of equal maxima.
TEST(Greedy, PicksTheFirstLargestLogit) {
    std::mt19937_64 rng(fresh_seed());
    for (int trial = 0; trial < 200; trial++) {
        const int V = std::uniform_int_distribution<int>(2, 3000)(rng);
        std::vector<float> logits = cinfer_test::random_floats(rng, (size_t)V, 3.0f);
        std::uniform_int_distribution<int> position(0, V - 1);
        int first = position(rng), second = position(rng);
        if (first > second) std::swap(first, second);
        const float top = *std::max_element(logits.begin(), logits.end()) + 0.5f;
        logits[first] = logits[second] = top; // a tie (or one maximum when first == second)
        Sampler greedy(sampling(0.0f, 0, 1.0f, rng()), V);
        ASSERT_EQ(greedy.sample(logits), first) << "V=" << V << " maxima at " << first << ", "
                                                << second;
    }
}

TEST(Greedy, NaNNeverWins) {
    Sampler greedy(sampling(0.0f, 0, 1.0f, 1), 6);
    EXPECT_EQ(greedy.sample({NAN, 1.0f, 3.0f, NAN, 3.0f, 2.0f}), 2);
    EXPECT_EQ(greedy.sample({-5.0f, NAN, NAN, NAN, NAN, -7.0f}), 0);
    EXPECT_EQ(greedy.sample({NAN, NAN, NAN, NAN, NAN, -INFINITY}), 5);
    EXPECT_EQ(greedy.sample({1.0f, 2.0f, NAN, 0.0f, INFINITY, NAN}), 4);
}

// Temperature 0 is greedy whatever top-k, top-p and the seed say, and draws no random numbers.
TEST(Greedy, IgnoresFiltersAndSeed) {
    std::mt19937_64 rng(fresh_seed());
    const std::vector<float> logits = cinfer_test::random_floats(rng, 500);
    const int argmax = (int)(std::max_element(logits.begin(), logits.end()) - logits.begin());
    Sampler greedy(sampling(0.0f, 5, 0.3f, rng()), (int)logits.size());
    for (int i = 0; i < 100; i++) ASSERT_EQ(greedy.sample(logits), argmax);
}

// ---- reproducibility ------------------------------------------------------------------------

std::vector<int32_t> draws(Sampler &sampler, const std::vector<float> &logits, int n) {
    std::vector<int32_t> tokens;
    for (int i = 0; i < n; i++) tokens.push_back(sampler.sample(logits));
    return tokens;
}

// Two samplers with one seed give one sequence, even drawn interleaved (no shared state);
// the next seed gives another. With ~50 plausible tokens per draw, two different seeds agreeing on
// 1000 draws by chance is out of the question.
TEST(Seed, SameSeedSameTokensOtherSeedOtherTokens) {
    std::mt19937_64 rng(fresh_seed());
    const std::vector<float> logits = cinfer_test::random_floats(rng, 50);
    const uint64_t seed = rng();
    const cinfer_sampling params = sampling(1.0f, 40, 0.95f, seed);
    Sampler a(params, 50), b(params, 50);
    std::vector<int32_t> from_a, from_b;
    for (int i = 0; i < 1000; i++) {
        from_a.push_back(a.sample(logits));
        from_b.push_back(b.sample(logits));
    }
    EXPECT_EQ(from_a, from_b) << "seed " << seed;
    EXPECT_GE(std::set<int32_t>(from_a.begin(), from_a.end()).size(), 10u) << "not sampling";

    Sampler other(sampling(1.0f, 40, 0.95f, seed + 1), 50);
    EXPECT_NE(draws(other, logits, 1000), from_a) << "seeds " << seed << " and " << seed + 1;
}

// ---- the expected distribution --------------------------------------------------------------

// transformers' warpers in generate()'s order, then softmax; probability 0 for filtered tokens.
std::vector<double> warped_distribution(const std::vector<float> &logits, float temperature,
                                        int top_k, float top_p) {
    const size_t V = logits.size();
    // TemperatureLogitsWarper: scores / temperature, in F32 like the scores tensor.
    std::vector<float> scores(V);
    for (size_t i = 0; i < V; i++) scores[i] = logits[i] / temperature;
    std::vector<bool> kept(V, true);
    // TopKLogitsWarper: remove scores < the k-th largest, so ties with it stay.
    if (top_k > 0) {
        std::vector<float> sorted = scores;
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        const float kth = sorted[std::min((size_t)top_k, V) - 1];
        for (size_t i = 0; i < V; i++) kept[i] = kept[i] && !(scores[i] < kth);
    }
    auto softmax = [&] {
        double max_score = -INFINITY, total = 0.0;
        for (size_t i = 0; i < V; i++)
            if (kept[i]) max_score = std::max(max_score, (double)scores[i]);
        std::vector<double> p(V, 0.0);
        for (size_t i = 0; i < V; i++)
            if (kept[i]) total += (p[i] = std::exp((double)scores[i] - max_score));
        for (double &x : p) x /= total;
        return p;
    };
    // TopPLogitsWarper: sort ascending, remove where cumsum(softmax) <= 1 - top_p, but never the
    // last (most likely) one.
    if (top_p > 0.0f && top_p < 1.0f) {
        const std::vector<double> p = softmax();
        std::vector<size_t> ascending(V);
        std::iota(ascending.begin(), ascending.end(), 0);
        std::stable_sort(ascending.begin(), ascending.end(),
                         [&](size_t a, size_t b) { return p[a] < p[b]; });
        double cumulative = 0.0;
        for (size_t r = 0; r + 1 < V; r++) {
            cumulative += p[ascending[r]];
            if (cumulative <= 1.0 - (double)top_p) kept[ascending[r]] = false;
        }
    }
    return softmax();
}

// ---- chi-square -----------------------------------------------------------------------------

// Q(a, x) = Γ(a, x) / Γ(a), the regularized upper incomplete gamma function: by its series for
// x < a + 1, else by its continued fraction (Lentz's method), as in Numerical Recipes §6.2.
double upper_incomplete_gamma(double a, double x) {
    if (x <= 0.0) return 1.0;
    const double log_prefactor = -x + a * std::log(x) - std::lgamma(a);
    if (x < a + 1.0) {
        double term = 1.0 / a, sum = term;
        for (int n = 1; n < 10000 && std::fabs(term) > 1e-17 * std::fabs(sum); n++)
            sum += (term *= x / (a + n));
        return 1.0 - sum * std::exp(log_prefactor);
    }
    const double tiny = 1e-300;
    double b = x + 1.0 - a, c = 1.0 / tiny, d = 1.0 / b, h = d;
    for (int i = 1; i < 10000; i++) {
        const double an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if (std::fabs(d) < tiny) d = tiny;
        c = b + an / c;
        if (std::fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        h *= d * c;
        if (std::fabs(d * c - 1.0) < 1e-16) break;
    }
    return std::exp(log_prefactor) * h;
}

double chi_square_p_value(double statistic, int degrees_of_freedom) {
    return upper_incomplete_gamma(degrees_of_freedom / 2.0, statistic / 2.0);
}

// Against the printed tables (critical values at 5%, 1% and 0.1%) and torch.special.gammaincc
// in both branches, near the 1e-6 threshold included.
TEST(ChiSquare, PValuesMatchTables) {
    EXPECT_NEAR(chi_square_p_value(3.841459, 1), 0.05, 1e-6);
    EXPECT_NEAR(chi_square_p_value(11.070498, 5), 0.05, 1e-6);
    EXPECT_NEAR(chi_square_p_value(23.209251, 10), 0.01, 1e-7);
    EXPECT_NEAR(chi_square_p_value(59.703059, 30), 0.001, 1e-8);
    EXPECT_NEAR(chi_square_p_value(1.0, 23), 0.9999999999984062, 1e-13);
    EXPECT_NEAR(chi_square_p_value(70.0, 23), 1.2161335569899849e-06, 1e-12);
}

// ---- sampling in distribution ---------------------------------------------------------------

// Fixed logits: 24 tokens, not sorted by id (so ranks and ids differ), three tied at 1.4.
const std::vector<float> kLogits = {0.3f,  2.1f, -1.2f, 1.4f, 0.9f,  -0.5f, 2.6f,  1.4f,
                                    -2.0f, 0.1f, 1.9f,  1.4f, -0.8f, 0.6f,  3.0f,  -1.5f,
                                    1.1f,  0.0f, -0.2f, 2.3f, -2.5f, 0.4f,  1.7f,  -1.0f};

// Fixed so that the statistical tests are deterministic, and printed with any failure.
constexpr uint64_t kStatisticsSeed = 20240611;
constexpr int kDraws = 200000;
// The p-value below which a test fails. A correct sampler fails with probability 1e-6 per seed;
// with the seed fixed it passes or fails for good.
constexpr double kMinPValue = 1e-6;

struct DistributionCase {
    std::string name;
    float temperature;
    int top_k;
    float top_p;
};

std::string case_name(const ::testing::TestParamInfo<DistributionCase> &info) {
    return info.param.name;
}
void PrintTo(const DistributionCase &c, std::ostream *os) {
    *os << "temperature " << c.temperature << ", top_k " << c.top_k << ", top_p " << c.top_p;
}

class SamplingDistribution : public ::testing::TestWithParam<DistributionCase> {};

// Draws kDraws tokens and checks, against the exact distribution:
//   - a token the warpers remove never appears;
//   - the counts of the kept tokens pass a chi-square goodness-of-fit test at p ≥ 1e-6.
//
// Why a wrong sampler fails: every filtering case is checked below to be sharp. Each kept token
// has probability ≥ 0.5% (≥ 1000 expected draws), and the most likely removed token would have
// ≥ 0.5% if it were kept. So an off-by-one in top-k or top-p (the boundary compared with <
// instead of <=, the tie at the k-th value dropped, the most likely token not kept) either lets a
// removed token appear (~1000 times, where 0 are allowed) or removes a kept one (0 draws where
// ≥ 1000 are expected: a chi-square above 1000, while the 1e-6 critical value for ≤ 23 degrees of
// freedom is about 70). With 200k draws, a probability off by 10% of itself on a token of 5% adds
// ~100 to the chi-square, so a temperature applied wrongly (or after top-p: see
// FiltersOrderMatters) or a softmax over the wrong set fails too.
TEST_P(SamplingDistribution, MatchesTransformersWarpers) {
    const DistributionCase &c = GetParam();
    SCOPED_TRACE("seed " + std::to_string(kStatisticsSeed) + ", " + std::to_string(kDraws) +
                 " draws");
    const std::vector<double> expected =
        warped_distribution(kLogits, c.temperature, c.top_k, c.top_p);
    const size_t V = kLogits.size();

    // The case is sharp (see above), and every expected count is large enough for the
    // chi-square approximation. A removed token's probability without the filters is a lower
    // bound of what it would have if a wrong rule kept it.
    const std::vector<double> unfiltered = warped_distribution(kLogits, c.temperature, 0, 1.0f);
    double least_likely_kept = 1.0, most_likely_removed = 0.0;
    for (size_t i = 0; i < V; i++) {
        if (expected[i] > 0.0) least_likely_kept = std::min(least_likely_kept, expected[i]);
        else most_likely_removed = std::max(most_likely_removed, unfiltered[i]);
    }
    ASSERT_GE(least_likely_kept * kDraws, 10.0);
    if (most_likely_removed > 0.0) {
        ASSERT_GE(least_likely_kept, 0.005);
        ASSERT_GE(most_likely_removed, 0.005);
    }

    std::vector<int> counts(V, 0);
    Sampler sampler(sampling(c.temperature, c.top_k, c.top_p, kStatisticsSeed), (int)V);
    for (int n = 0; n < kDraws; n++) {
        const int32_t token = sampler.sample(kLogits);
        ASSERT_TRUE(token >= 0 && token < (int32_t)V) << token;
        counts[token]++;
    }

    double chi_square = 0.0;
    int n_kept = 0;
    for (size_t i = 0; i < V; i++) {
        if (expected[i] == 0.0) {
            EXPECT_EQ(counts[i], 0) << "token " << i << " (logit " << kLogits[i]
                                    << ") is filtered out but was drawn";
            continue;
        }
        const double e = expected[i] * kDraws;
        chi_square += (counts[i] - e) * (counts[i] - e) / e;
        n_kept++;
    }
    if (n_kept == 1) return; // every draw was that token: nothing left to test
    const double p_value = chi_square_p_value(chi_square, n_kept - 1);
    EXPECT_GE(p_value, kMinPValue) << "chi-square " << chi_square << " with " << n_kept - 1
                                   << " degrees of freedom";
}

INSTANTIATE_TEST_SUITE_P(
    Warpers, SamplingDistribution,
    ::testing::Values(
        // (a) temperature only
        DistributionCase{"temperature_0_7", 0.7f, 0, 1.0f},
        DistributionCase{"temperature_1_5", 1.5f, 0, 1.0f},
        DistributionCase{"temperature_1", 1.0f, 0, 1.0f},
        // (b) top-k: the 7th best logit (1.4) is shared by three tokens, so 9 stay
        DistributionCase{"top_k_7_tied_at_kth", 1.0f, 7, 1.0f},
        DistributionCase{"top_k_1", 0.8f, 1, 1.0f},
        DistributionCase{"top_k_above_vocab", 1.0f, 30, 1.0f},
        // (c) top-p
        DistributionCase{"top_p_0_9", 1.0f, 0, 0.9f},
        DistributionCase{"top_p_0_5_temperature_0_8", 0.8f, 0, 0.5f},
        DistributionCase{"top_p_tiny_keeps_the_most_likely", 1.0f, 0, 0.01f},
        // (d) top-k, then top-p over what top-k kept
        DistributionCase{"top_k_8_then_top_p_0_8_temperature_1_2", 1.2f, 8, 0.8f}),
    case_name);

// The designed cases separate the right rules from plausible wrong ones, so that the tests above
// would see the difference: top-p after top-k (not before), on the scaled logits (not the raw
// ones), and top-k keeping ties; and the cumulative sums stay ≥ 0.5% away from 1 − top_p, so
// that F32 rounding (transformers' cumsum) cannot move the boundary.
TEST(SamplingDistribution, FiltersOrderMatters) {
    auto kept = [](const std::vector<double> &p) {
        return (int)std::count_if(p.begin(), p.end(), [](double x) { return x > 0.0; });
    };
    EXPECT_EQ(kept(warped_distribution(kLogits, 1.0f, 7, 1.0f)), 9);
    EXPECT_EQ(kept(warped_distribution(kLogits, 1.2f, 8, 0.8f)), 6);
    // top-p over all 24 tokens keeps 10, so top-k after it would keep 8 or more, not 6
    EXPECT_EQ(kept(warped_distribution(kLogits, 1.2f, 0, 0.8f)), 10);
    EXPECT_EQ(kept(warped_distribution(kLogits, 0.8f, 0, 0.5f)), 3);
    EXPECT_EQ(kept(warped_distribution(kLogits, 1.0f, 0, 0.5f)), 4); // unscaled: 4, not 3
    EXPECT_EQ(kept(warped_distribution(kLogits, 1.0f, 0, 0.01f)), 1);

    const struct {
        float temperature;
        int top_k;
        float top_p;
    } top_p_cases[] = {{1.0f, 0, 0.9f}, {0.8f, 0, 0.5f}, {1.2f, 8, 0.8f}};
    for (const auto &c : top_p_cases) {
        std::vector<double> p = warped_distribution(kLogits, c.temperature, c.top_k, 1.0f);
        std::sort(p.begin(), p.end());
        double cumulative = 0.0;
        for (double x : p)
            EXPECT_GT(std::fabs((cumulative += x) - (1.0 - (double)c.top_p)), 0.005)
                << "top_p " << c.top_p;
    }
}

// Masked tokens (-inf) and NaN logits are never drawn.
TEST(SamplingDistribution, NeverDrawsMaskedOrNaNTokens) {
    std::vector<float> logits = kLogits;
    logits[14] = -INFINITY; // the most likely token
    logits[6] = NAN;        // the second
    Sampler sampler(sampling(1.5f, 0, 1.0f, kStatisticsSeed), (int)logits.size());
    for (int n = 0; n < 20000; n++) {
        const int32_t token = sampler.sample(logits);
        ASSERT_NE(token, 14);
        ASSERT_NE(token, 6);
    }
}

// top_p = 0 and top_p ≥ 1 turn top-p off, and top_k ≥ vocab turns top-k off (cinfer.h): the
// same seed then gives exactly the draws of the unfiltered sampler.
TEST(SamplingDistribution, OffValuesTurnFiltersOff) {
    Sampler plain(sampling(1.0f, 0, 1.0f, kStatisticsSeed), (int)kLogits.size());
    const std::vector<int32_t> reference = draws(plain, kLogits, 2000);
    for (const cinfer_sampling &off :
         {sampling(1.0f, 0, 0.0f, kStatisticsSeed), sampling(1.0f, 0, 1.5f, kStatisticsSeed),
          sampling(1.0f, (int)kLogits.size(), 1.0f, kStatisticsSeed)}) {
        Sampler s(off, (int)kLogits.size());
        EXPECT_EQ(draws(s, kLogits, 2000), reference)
            << "top_k " << off.top_k << ", top_p " << off.top_p;
    }
}

// ---- invalid parameters ---------------------------------------------------------------------

TEST(SamplerCreate, RejectsInvalidParameters) {
    const struct {
        cinfer_sampling params;
        int vocab_size;
        const char *field; // the message must name it
    } bad[] = {
        {sampling(-0.5f, 0, 1.0f, 0), 10, "temperature"},
        {sampling(-INFINITY, 0, 1.0f, 0), 10, "temperature"},
        {sampling(INFINITY, 0, 1.0f, 0), 10, "temperature"},
        {sampling(NAN, 0, 1.0f, 0), 10, "temperature"},
        {sampling(1.0f, 0, NAN, 0), 10, "top_p"},
        {sampling(1.0f, 0, -0.1f, 0), 10, "top_p"},
        {sampling(1.0f, 0, -INFINITY, 0), 10, "top_p"},
        {sampling(1.0f, -1, 1.0f, 0), 10, "top_k"},
        {sampling(1.0f, 0, 1.0f, 0), 0, "vocab_size"},
        {sampling(1.0f, 0, 1.0f, 0), -5, "vocab_size"},
    };
    for (const auto &b : bad) {
        SCOPED_TRACE(std::string(b.field) + ": temperature " +
                     std::to_string(b.params.temperature) + ", top_k " +
                     std::to_string(b.params.top_k) + ", top_p " + std::to_string(b.params.top_p) +
                     ", vocab " + std::to_string(b.vocab_size));
        static int not_a_sampler;
        cinfer_sampler *sampler = reinterpret_cast<cinfer_sampler *>(&not_a_sampler);
        EXPECT_EQ(cinfer_sampler_create(&b.params, b.vocab_size, &sampler), CINFER_ERR_ARGUMENT);
        EXPECT_EQ(sampler, nullptr);
        EXPECT_NE(std::string(cinfer_last_error()).find(b.field), std::string::npos)
            << cinfer_last_error();
    }
}

TEST(SamplerCreate, AcceptsBoundaryParameters) {
    for (const cinfer_sampling &ok : {sampling(0.0f, 0, 0.0f, 0), sampling(1e-3f, 1, 1.0f, 0),
                                      sampling(100.0f, 1000, 1e-6f, ~0ull)}) {
        cinfer_sampler *sampler = nullptr;
        EXPECT_EQ(cinfer_sampler_create(&ok, 1, &sampler), CINFER_OK) << cinfer_last_error();
        if (sampler) {
            const float logit = 0.5f;
            EXPECT_EQ(cinfer_sampler_sample(sampler, &logit), 0);
        }
        cinfer_sampler_free(sampler);
    }
}

} // namespace
