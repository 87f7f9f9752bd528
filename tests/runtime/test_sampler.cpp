// SPDX-License-Identifier: MIT
// Sampler (examples/runtime/sampler.hpp): exact expectations for each filter, the order of
// operations, seeding, and a chi-square check of the drawn frequencies.
#include "sampler.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

using hlwq::rt::sampler;
using hlwq::rt::sampler_options;

namespace {

// Logits whose softmax is exactly proportional to `weights` (up to float rounding).
std::vector<float> logits_of(const std::vector<double>& weights) {
    std::vector<float> l;
    for (double w : weights) l.push_back(static_cast<float>(std::log(w)));
    return l;
}

sampler_options plain() {  // temperature 1, no filters
    sampler_options o;
    o.temperature = 1.0f;
    o.top_k = 0;
    o.top_p = 1.0f;
    o.min_p = 0.0f;
    return o;
}

std::vector<std::int32_t> ids_of(const std::vector<std::pair<std::int32_t, double>>& c) {
    std::vector<std::int32_t> ids;
    for (const auto& [id, p] : c) ids.push_back(id);
    return ids;
}

std::vector<float> random_logits(std::mt19937_64& rng, std::size_t n, float scale = 3.0f) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> l(n);
    for (float& v : l) v = normal(rng);
    return l;
}

}  // namespace

TEST_CASE("sampler: greedy is the argmax, lowest id on ties, whatever the filters") {
    sampler_options o;
    o.temperature = 0.0f;
    sampler s(o);
    CHECK(s.sample(std::vector<float>{0.1f, 2.0f, -1.0f, 2.0f}) == 1);
    CHECK(s.sample(std::vector<float>{-std::numeric_limits<float>::infinity(), -3.0f}) == 1);
    CHECK(s.sample(std::vector<float>{5.0f}) == 0);
    const auto c = s.candidates(std::vector<float>{0.0f, 1.0f, 7.0f});
    REQUIRE(c.size() == 1);
    CHECK(c[0].first == 2);
    CHECK(c[0].second == 1.0);
    o.temperature = -1.0f;  // any temperature <= 0 is greedy
    CHECK(sampler(o).sample(std::vector<float>{0.0f, 3.0f, 1.0f}) == 1);
}

TEST_CASE("sampler: top-k 1 equals greedy") {
    std::mt19937_64 rng(11);
    sampler_options g;
    g.temperature = 0.0f;
    sampler greedy(g);
    sampler_options o = plain();
    o.top_k = 1;
    o.temperature = 1.7f;
    sampler topk(o);
    for (int row = 0; row < 200; ++row) {
        auto l = random_logits(rng, 97);
        if (row % 10 == 0) l[5] = l[40] = *std::max_element(l.begin(), l.end()) + 1.0f;  // tie
        CHECK(topk.sample(l) == greedy.sample(l));
    }
}

TEST_CASE("sampler: top-k keeps exactly the k largest, ties by the lower id") {
    sampler_options o = plain();
    o.top_k = 3;
    sampler s(o);
    const std::vector<float> l = {0.0f, 4.0f, 1.0f, 4.0f, 3.0f, 4.0f, -2.0f};
    const auto c = s.candidates(l);
    CHECK(ids_of(c) == std::vector<std::int32_t>{1, 3, 5});
    for (const auto& [id, p] : c) CHECK(p == doctest::Approx(1.0 / 3.0));
    o.top_k = 100;  // more than the vocabulary: all
    CHECK(sampler(o).candidates(l).size() == l.size());
}

TEST_CASE("sampler: top-p keeps exactly the smallest set whose probability reaches p") {
    sampler_options o = plain();
    const auto l = logits_of({0.0625, 0.5, 0.125, 0.25, 0.0625});  // sorted: 1, 3, 2, 0|4
    const auto keep = [&](float p) {
        o.top_p = p;
        return ids_of(sampler(o).candidates(l));
    };
    CHECK(keep(0.4f) == std::vector<std::int32_t>{1});
    CHECK(keep(0.4999f) == std::vector<std::int32_t>{1});
    CHECK(keep(0.5001f) == std::vector<std::int32_t>{1, 3});
    CHECK(keep(0.7499f) == std::vector<std::int32_t>{1, 3});
    CHECK(keep(0.7501f) == std::vector<std::int32_t>{1, 3, 2});
    CHECK(keep(0.8751f) == std::vector<std::int32_t>{1, 3, 2, 0});
    CHECK(keep(1.0f).size() == 5);
    // The probabilities of the survivors are renormalized.
    o.top_p = 0.7f;
    const auto c = sampler(o).candidates(l);
    CHECK(c[0].second == doctest::Approx(2.0 / 3.0));
    CHECK(c[1].second == doctest::Approx(1.0 / 3.0));

    // Random rows against a direct computation in double.
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> unif(0.01, 0.999);
    for (int row = 0; row < 200; ++row) {
        const auto r = random_logits(rng, 50);
        o.top_p = static_cast<float>(unif(rng));
        const double p = o.top_p;  // the float value the sampler uses
        std::vector<double> pr(r.size());
        const double m = *std::max_element(r.begin(), r.end());
        double z = 0;
        for (std::size_t i = 0; i < r.size(); ++i) z += pr[i] = std::exp(static_cast<double>(r[i]) - m);
        for (double& v : pr) v /= z;
        std::vector<double> sorted = pr;
        std::sort(sorted.rbegin(), sorted.rend());
        std::size_t want = 0;
        double cum = 0;
        bool near_edge = false;
        while (want < sorted.size()) {
            cum += sorted[want++];
            if (std::abs(cum - p) < 1e-9) near_edge = true;
            if (cum >= p) break;
        }
        if (near_edge) continue;
        const auto got = sampler(o).candidates(r);
        CHECK(got.size() == want);
        for (std::size_t i = 0; i + 1 < got.size(); ++i)
            CHECK(pr[static_cast<std::size_t>(got[i].first)] >= pr[static_cast<std::size_t>(got[i + 1].first)]);
    }
}

TEST_CASE("sampler: min-p keeps the tokens at least min_p times as likely as the best") {
    sampler_options o = plain();
    const auto l = logits_of({0.09, 1.0, 0.5, 0.01, 0.1});  // ratios to the best
    const auto keep = [&](float mp) {
        o.min_p = mp;
        return ids_of(sampler(o).candidates(l));
    };
    CHECK(keep(0.0f).size() == 5);
    CHECK(keep(0.095f) == std::vector<std::int32_t>{1, 2, 4});
    CHECK(keep(0.085f) == std::vector<std::int32_t>{1, 2, 4, 0});
    CHECK(keep(0.6f) == std::vector<std::int32_t>{1});
    CHECK(keep(1.0f) == std::vector<std::int32_t>{1});
    CHECK(keep(0.005f).size() == 5);
}

TEST_CASE("sampler: repetition penalty divides positive and multiplies negative logits once per token") {
    std::vector<float> l = {2.0f, -2.0f, 0.5f, -0.5f, 3.0f, 0.0f};
    const std::vector<std::int32_t> hist = {0, 1, 0, 3, 0, 5, 99, -4};  // 99, -4: not in the vocabulary
    sampler::apply_repetition_penalty(l, hist, 2.0f, -1);
    CHECK(l == std::vector<float>{1.0f, -4.0f, 0.5f, -1.0f, 3.0f, 0.0f});

    // Only the last N tokens count.
    l = {2.0f, -2.0f, 0.5f, -0.5f, 3.0f, 0.0f};
    sampler::apply_repetition_penalty(l, std::vector<std::int32_t>{0, 1, 2, 3}, 4.0f, 2);
    CHECK(l == std::vector<float>{2.0f, -2.0f, 0.125f, -2.0f, 3.0f, 0.0f});
    // 0 = off, penalty 1 = off.
    l = {2.0f, -2.0f};
    sampler::apply_repetition_penalty(l, std::vector<std::int32_t>{0, 1}, 4.0f, 0);
    sampler::apply_repetition_penalty(l, std::vector<std::int32_t>{0, 1}, 1.0f, -1);
    CHECK(l == std::vector<float>{2.0f, -2.0f});

    // It changes the greedy choice: 3.0 / 2 < 2.0.
    sampler_options o;
    o.temperature = 0.0f;
    o.repeat_penalty = 2.0f;
    o.repeat_last_n = 64;
    CHECK(sampler(o).sample(std::vector<float>{2.0f, 3.0f}, std::vector<std::int32_t>{1}) == 0);
    CHECK(sampler(o).sample(std::vector<float>{2.0f, 3.0f}, std::vector<std::int32_t>{0}) == 1);
}

TEST_CASE("sampler: the order is penalty, temperature, top-k, top-p, min-p") {
    // Full distribution 0.4, 0.2, 0.2, 0.2. After top-k 2: 2/3, 1/3, so top-p 0.55 keeps one
    // token; on the full distribution it keeps two.
    sampler_options o = plain();
    o.top_k = 2;
    o.top_p = 0.55f;
    const auto l = logits_of({0.4, 0.2, 0.2, 0.2});
    CHECK(ids_of(sampler(o).candidates(l)) == std::vector<std::int32_t>{0});
    o.top_k = 0;
    CHECK(ids_of(sampler(o).candidates(l)) == std::vector<std::int32_t>{0, 1});

    // Temperature before top-p: T = 0.5 squares the ratios (0.16 : 0.04 x 3, p0 = 0.571 < 0.6:
    // two tokens); T = 0.25 raises them to the 4th power (p0 = 0.842: one token).
    o.top_p = 0.6f;
    o.temperature = 0.25f;
    CHECK(ids_of(sampler(o).candidates(l)) == std::vector<std::int32_t>{0});
    o.temperature = 0.5f;
    CHECK(ids_of(sampler(o).candidates(l)) == std::vector<std::int32_t>{0, 1});

    // Penalty before temperature: with penalty 2 on token 0, log(0.4)/... is negative, so it is
    // multiplied by 2 first, then divided by T.
    sampler_options p = plain();
    p.repeat_penalty = 2.0f;
    p.temperature = 2.0f;
    const std::vector<float> lp = {-1.0f, -1.5f};
    const auto c = sampler(p).candidates(lp, std::vector<std::int32_t>{0});  // -> -1, -0.75
    REQUIRE(c.size() == 2);
    CHECK(c[0].first == 1);
    CHECK(c[0].second == doctest::Approx(1.0 / (1.0 + std::exp(-0.25))));
}

TEST_CASE("sampler: the same seed gives the same tokens") {
    std::mt19937_64 rng(3);
    const auto l = random_logits(rng, 300, 1.0f);
    sampler_options o;  // llama.cpp's defaults
    o.seed = 1234;
    sampler a(o), b(o);
    std::vector<std::int32_t> ta, tb;
    for (int i = 0; i < 500; ++i) {
        ta.push_back(a.sample(l, ta));
        tb.push_back(b.sample(l, tb));
    }
    CHECK(ta == tb);
    a.reseed(1234);
    std::vector<std::int32_t> tc;
    for (int i = 0; i < 500; ++i) tc.push_back(a.sample(l, tc));
    CHECK(tc == ta);
    o.seed = 1235;
    sampler d(o);
    std::vector<std::int32_t> td;
    for (int i = 0; i < 500; ++i) td.push_back(d.sample(l, td));
    CHECK(td != ta);
    // Every drawn token is in the candidate set.
    const auto cs = ids_of(sampler(o).candidates(l));
    for (std::int32_t t : ta) CHECK(std::find(cs.begin(), cs.end(), t) != cs.end());
}

TEST_CASE("sampler: drawn frequencies follow the probabilities (chi-square, fixed seed)") {
    // 6 tokens, with top-k 5 dropping the least likely; the 5 survivors renormalized.
    const std::vector<double> w = {0.30, 0.05, 0.25, 0.15, 0.20, 0.05};
    sampler_options o = plain();
    o.top_k = 5;  // drops id 5 (ties with id 1 broken by the lower id)
    o.seed = 42;
    sampler s(o);
    const auto l = logits_of(w);
    const int n = 200000;
    std::map<std::int32_t, int> count;
    for (int i = 0; i < n; ++i) ++count[s.sample(l)];
    CHECK(count.count(5) == 0);
    const double kept = 0.95;
    double chi2 = 0;
    for (std::int32_t id = 0; id < 5; ++id) {
        const double expected = n * w[static_cast<std::size_t>(id)] / kept;
        const double d = count[id] - expected;
        chi2 += d * d / expected;
    }
    // 4 degrees of freedom. The 99.9% quantile by the Wilson-Hilferty approximation:
    // k (1 - 2/(9k) + z sqrt(2/(9k)))^3 with z = 3.0902 (the normal 99.9% point) = 18.7
    // (the exact quantile is 18.47).
    const double k = 4, z = 3.0902;
    const double a = 2.0 / (9.0 * k);
    const double bound = k * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
    CHECK(bound == doctest::Approx(18.72).epsilon(0.01));
    INFO("chi2 = " << chi2);
    CHECK(chi2 < bound);
    // And it is not suspiciously perfect either (the 0.1% quantile is ~0.21).
    CHECK(chi2 > 0.05);
}

TEST_CASE("sampler: errors") {
    sampler s(plain());
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(s.sample(std::vector<float>{0.0f, nan}), std::runtime_error);
    CHECK_THROWS_AS(s.sample(std::vector<float>{-inf, -inf}), std::runtime_error);
    CHECK_THROWS_AS(s.sample(std::vector<float>{}), std::invalid_argument);
    sampler_options g;
    g.temperature = 0.0f;
    CHECK_THROWS_AS(sampler(g).sample(std::vector<float>{-inf, -inf}), std::runtime_error);
    // +inf logits: only they can be drawn.
    for (int i = 0; i < 20; ++i) {
        const auto t = s.sample(std::vector<float>{1.0f, inf, 2.0f, inf});
        CHECK((t == 1 || t == 3));
    }
    sampler_options o;
    o.top_p = 0.0f;
    CHECK_THROWS_AS(sampler{o}, std::invalid_argument);
    o = {};
    o.top_p = 1.5f;
    CHECK(!hlwq::rt::validate(o).empty());
    o = {};
    o.min_p = -0.1f;
    CHECK(!hlwq::rt::validate(o).empty());
    o = {};
    o.repeat_penalty = 0.0f;
    CHECK(!hlwq::rt::validate(o).empty());
    o = {};
    o.repeat_last_n = -2;
    CHECK(!hlwq::rt::validate(o).empty());
    o = {};
    o.temperature = nan;
    CHECK(!hlwq::rt::validate(o).empty());
    CHECK(hlwq::rt::validate(sampler_options{}).empty());
}
