#include <hlwq/codebook.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

double pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2 * std::numbers::pi); }
double cdf(double x) { return 0.5 * std::erfc(-x / std::numbers::sqrt2); }

// Conditional mean and mass of N(0,1) on the cells that `boundaries` cut, in double.
struct cells {
    std::vector<double> mean, mass, second;
};
cells gaussian_cells(std::span<const float> boundaries) {
    cells c;
    const std::size_t levels = boundaries.size() + 1;
    for (std::size_t k = 0; k < levels; ++k) {
        const double a = k == 0 ? -INFINITY : boundaries[k - 1];
        const double b = k + 1 == levels ? INFINITY : boundaries[k];
        const double pa = std::isinf(a) ? 0 : pdf(a), pb = std::isinf(b) ? 0 : pdf(b);
        const double p = cdf(b) - cdf(a);
        const double m = (pa - pb) / p;
        // E[X^2 | cell] p = p + a φ(a) - b φ(b)
        const double s = p + (std::isinf(a) ? 0 : a * pa) - (std::isinf(b) ? 0 : b * pb);
        c.mean.push_back(m);
        c.mass.push_back(p);
        c.second.push_back(s);
    }
    return c;
}

template <int B>
void check_lloyd_max_table() {
    using LM = hlwq::lloyd_max<B>;
    CAPTURE(B);
    const auto cell = gaussian_cells(LM::boundaries);
    double mse = 0;
    for (std::size_t k = 0; k < LM::levels; ++k) {
        // Centroid condition: each centroid is the mean of its cell. The float tables are
        // rounded to 2^-24 relative (< 3e-7 at |c| < 4.7), and a cell mean moves by at
        // most ~1 per unit of boundary shift, so 1e-6 holds with margin.
        CHECK(std::abs(LM::centroids[k] - cell.mean[k]) < 1e-6);
        // Symmetry.
        CHECK(LM::centroids[k] == -LM::centroids[LM::levels - 1 - k]);
        mse += cell.second[k] - 2 * LM::centroids[k] * cell.mean[k] * cell.mass[k] +
               double(LM::centroids[k]) * LM::centroids[k] * cell.mass[k];
    }
    for (std::size_t k = 0; k + 1 < LM::levels; ++k) {
        // Boundaries are the midpoints (correctly rounded from the exact ones: within 1 ulp
        // of the float midpoint).
        const double mid = 0.5 * (double(LM::centroids[k]) + LM::centroids[k + 1]);
        CHECK(std::abs(LM::boundaries[k] - mid) <= std::abs(mid) * 0x1p-23 + 1e-30);
        CHECK(LM::centroids[k] < LM::boundaries[k]);
        CHECK(LM::boundaries[k] < LM::centroids[k + 1]);
    }
    // The stored MSE is the distortion of these tables on N(0,1).
    CHECK(std::abs(mse - LM::mse) <= 1e-5 * LM::mse);
}

}  // namespace

TEST_CASE("lloyd_max: usable at compile time") {
    static_assert(hlwq::lloyd_max<1>::centroids[1] > 0.79f);
    static_assert(hlwq::lloyd_max<8>::levels == 256);
    static_assert(hlwq::lloyd_max<3>::encode(0.1f) == 4);
    static_assert(hlwq::lloyd_max<3>::encode(-10.0f) == 0);
    static_assert(hlwq::lloyd_max<3>::encode(10.0f) == 7);
    static_assert(hlwq::codebook<hlwq::lloyd_max<4>>);
    static_assert(hlwq::codebook<hlwq::fitted_codebook>);
    static_assert(hlwq::codebook<hlwq::codebook_view>);
}

TEST_CASE("lloyd_max: published values") {
    using doctest::Approx;
    CHECK(hlwq::lloyd_max<1>::centroids[1] == Approx(std::sqrt(2 / std::numbers::pi)).epsilon(1e-6));
    // Max (1960) quotes these to 4 decimals, except ±1.344 and ±2.152 (3 decimals): equal
    // up to half a unit of the last quoted digit.
    const double two[] = {-1.5104, -0.4528, 0.4528, 1.5104};
    const double three[] = {-2.152, -1.344, -0.7560, -0.2451, 0.2451, 0.7560, 1.344, 2.152};
    const double three_half_unit[] = {5e-4, 5e-4, 5e-5, 5e-5, 5e-5, 5e-5, 5e-4, 5e-4};
    for (int k = 0; k < 4; ++k) CHECK(std::abs(hlwq::lloyd_max<2>::centroids[k] - two[k]) < 5e-5);
    for (int k = 0; k < 8; ++k)
        CHECK(std::abs(hlwq::lloyd_max<3>::centroids[k] - three[k]) < three_half_unit[k]);
    // MSE as quoted: equal up to half a unit of the last quoted digit.
    const double mse[] = {0.36338, 0.11748, 0.034548, 0.0095010, 0.0025047, 0.00064424, 0.00016348};
    const double half_unit[] = {5e-6, 5e-6, 5e-7, 5e-8, 5e-8, 5e-9, 5e-9};
    for (int b = 1; b <= 7; ++b) {
        CAPTURE(b);
        CHECK(std::abs(hlwq::lloyd_max_mse(b) - mse[b - 1]) <= half_unit[b - 1]);
    }
}

TEST_CASE("lloyd_max: tables satisfy the optimality conditions, 1..8 bits") {
    check_lloyd_max_table<1>();
    check_lloyd_max_table<2>();
    check_lloyd_max_table<3>();
    check_lloyd_max_table<4>();
    check_lloyd_max_table<5>();
    check_lloyd_max_table<6>();
    check_lloyd_max_table<7>();
    check_lloyd_max_table<8>();
}

TEST_CASE("encode picks the nearest centroid") {
    std::mt19937 rng(7);
    std::normal_distribution<float> n(0, 2);
    for (int bits = 1; bits <= 8; ++bits) {
        const auto cb = hlwq::lloyd_max_view(bits);
        for (int i = 0; i < 2000; ++i) {
            const float y = n(rng);
            const auto k = hlwq::encode_value(cb.boundaries, y);
            for (float c : cb.centroids) REQUIRE(std::abs(y - cb.centroids[k]) <= std::abs(y - c));
        }
    }
}

TEST_CASE("run-time views and errors") {
    CHECK(hlwq::lloyd_max_view(4).centroids.size() == 16);
    CHECK(hlwq::lloyd_max_view(4).boundaries.size() == 15);
    CHECK_THROWS_AS(hlwq::lloyd_max_view(0), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::lloyd_max_view(9), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::lloyd_max_mse(-1), doctest::Contains("1..8"), std::invalid_argument);
}

TEST_CASE("fit_codebook: recovers Lloyd-Max on Gaussian samples") {
    std::mt19937 rng(1);
    std::normal_distribution<float> n;
    std::vector<float> x(400000);
    for (auto& v : x) v = n(rng);
    const auto fit = hlwq::fit_codebook(x, 3);
    CHECK(fit.bits == 3);
    REQUIRE(fit.centroids.size() == 8);
    REQUIRE(fit.boundaries.size() == 7);
    // Sampling error of a cell mean with >= 2% of 4e5 samples: sd <= 1/sqrt(8000) ≈ 0.011.
    for (int k = 0; k < 8; ++k) CHECK(std::abs(fit.centroids[k] - hlwq::lloyd_max<3>::centroids[k]) < 0.05);
    // Fitted to the samples, it cannot do worse on them than the Gaussian-optimal table
    // (Lloyd only lowers the distortion from the quantile start); allow the sampling error.
    CHECK(fit.mse < hlwq::lloyd_max<3>::mse * 1.02);
    CHECK(fit.mse > hlwq::lloyd_max<3>::mse * 0.95);
    hlwq::check_codebook(hlwq::view_of(fit));
}

TEST_CASE("fit_codebook: uniform data gives the uniform quantizer") {
    std::vector<float> x;
    for (int i = 0; i < 100000; ++i) x.push_back((static_cast<float>(i) + 0.5f) / 100000.0f);
    const auto fit = hlwq::fit_codebook(x, 2);
    for (int k = 0; k < 4; ++k) CHECK(fit.centroids[k] == doctest::Approx((2 * k + 1) / 8.0).epsilon(1e-3));
    CHECK(fit.mse == doctest::Approx(1.0 / (12 * 16)).epsilon(1e-2));
}

TEST_CASE("fit_codebook: fewer distinct samples than levels") {
    std::vector<float> x(100, 1.0f);
    const auto fit = hlwq::fit_codebook(x, 4);
    CHECK(fit.mse == 0.0);
    CHECK(fit.decode(fit.encode(1.0f)) == 1.0f);
    hlwq::check_codebook(hlwq::view_of(fit));
}

TEST_CASE("fit_codebook and check_codebook: bad input") {
    std::vector<float> x{1, 2, 3};
    CHECK_THROWS_AS(hlwq::fit_codebook(x, 0), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::fit_codebook(x, 9), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::fit_codebook({}, 2), std::invalid_argument);
    x[1] = NAN;
    CHECK_THROWS_WITH_AS(hlwq::fit_codebook(x, 2), doctest::Contains("sample 1"), std::invalid_argument);
    const float c[] = {1, 0}, b[] = {0.5f};
    CHECK_THROWS_AS(hlwq::check_codebook({1, c, b}), std::invalid_argument);  // not ascending
    const float c3[] = {0, 1, 2};
    CHECK_THROWS_AS(hlwq::check_codebook({1, c3, b}), std::invalid_argument);  // wrong size
}
