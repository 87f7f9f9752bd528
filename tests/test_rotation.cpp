#include <hlwq/rotation.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using hlwq_test::gaussian;

// Entry (i, j) of the Sylvester Hadamard matrix: (-1)^popcount(i & j).
int sylvester(std::size_t i, std::size_t j) { return std::popcount(i & j) % 2 ? -1 : 1; }

// Rounding bound of the fast transform: log2(n) stages, each adding at most one rounding
// (2^-24 relative) of a partial sum whose magnitude is at most sum |x|; then the 1/sqrt(n)
// scaling adds 2^-24 relative more. Two ulps of slack per stage.
double fwht_tolerance(const std::vector<float>& x) {
    double l1 = 0;
    for (float v : x) l1 += std::abs(v);
    const double n = static_cast<double>(x.size());
    return (std::log2(n) + 1) * 2 * 0x1p-24 * l1 / std::sqrt(n);
}

template <class Backend>
void check_against_dense(std::size_t n) {
    CAPTURE(n);
    const auto x = gaussian(n, static_cast<unsigned>(n));
    auto y = x;
    hlwq::fwht(std::span<float>(y), Backend{});
    const double tol = fwht_tolerance(x);
    for (std::size_t i = 0; i < n; ++i) {
        double ref = 0;
        for (std::size_t j = 0; j < n; ++j) ref += sylvester(i, j) * static_cast<double>(x[j]);
        ref /= std::sqrt(static_cast<double>(n));
        REQUIRE(std::abs(y[i] - ref) <= tol);
    }
}

template <class Backend>
void check_all_sizes_match_scalar() {
    for (std::size_t n = 16; n <= 1024; n *= 2) {
        CAPTURE(n);
        const auto x = gaussian(n, 99);
        auto a = x, b = x;
        hlwq::kernels<hlwq::backend::scalar>::fwht(a.data(), n);
        hlwq::kernels<Backend>::fwht(b.data(), n);
        CHECK(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0);
    }
}

}  // namespace

TEST_CASE("fwht equals the dense Sylvester Hadamard matrix (scaled by 1/sqrt(n))") {
    for (std::size_t n = 16; n <= 256; n *= 2) {
        check_against_dense<hlwq::backend::scalar>(n);
        check_against_dense<hlwq::default_backend>(n);
    }
}

TEST_CASE("fwht is its own inverse and preserves the norm, 16..1024") {
    for (std::size_t n = 16; n <= 1024; n *= 2) {
        CAPTURE(n);
        const auto x = gaussian(n, 3);
        auto y = x;
        hlwq::fwht(std::span<float>(y));
        double nx = 0, ny = 0;
        for (std::size_t i = 0; i < n; ++i) {
            nx += double(x[i]) * x[i];
            ny += double(y[i]) * y[i];
        }
        // Each |y_i| error is below fwht_tolerance; the squared norm moves by at most
        // 2 sqrt(ny) · sqrt(n) · tol.
        const double tol = fwht_tolerance(x);
        CHECK(std::abs(ny - nx) <= 2 * std::sqrt(ny) * std::sqrt(double(n)) * tol);
        hlwq::fwht(std::span<float>(y));
        for (std::size_t i = 0; i < n; ++i) REQUIRE(std::abs(y[i] - x[i]) <= 2 * tol);
    }
}

TEST_CASE("SIMD kernels are bit-identical to the scalar reference") {
    check_all_sizes_match_scalar<hlwq::default_backend>();
    // Every instruction set this build can run, not only the default one.
#if XSIMD_WITH_SSE2
    check_all_sizes_match_scalar<hlwq::backend::cpu<xsimd::sse2>>();
#endif
#if XSIMD_WITH_AVX2
    check_all_sizes_match_scalar<hlwq::backend::cpu<xsimd::avx2>>();
#endif
#if XSIMD_WITH_AVX512BW
    check_all_sizes_match_scalar<hlwq::backend::cpu<xsimd::avx512bw>>();
#endif
}

TEST_CASE("fwht_blocks transforms each block independently") {
    auto x = gaussian(128 * 3, 5);
    auto y = x;
    hlwq::fwht_blocks(std::span<float>(y), 128);
    for (int b = 0; b < 3; ++b) {
        std::vector<float> one(x.begin() + b * 128, x.begin() + (b + 1) * 128);
        hlwq::fwht(std::span<float>(one));
        CHECK(std::memcmp(one.data(), y.data() + b * 128, 128 * sizeof(float)) == 0);
    }
}

TEST_CASE("rotation sizes outside 16..1024 or not powers of two are rejected") {
    for (std::size_t n : {0u, 1u, 8u, 48u, 100u, 2048u}) {
        CAPTURE(n);
        std::vector<float> x(n);
        CHECK_THROWS_WITH_AS(hlwq::fwht(std::span<float>(x)), doctest::Contains("power of two"),
                             std::invalid_argument);
    }
    std::vector<float> x(200);
    CHECK_THROWS_AS(hlwq::fwht_blocks(std::span<float>(x), 128), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::fwht_blocks(std::span<float>(x), 100), std::invalid_argument);
}

TEST_CASE("sign_diagonal: deterministic ±1 from the seed, its own inverse") {
    const hlwq::sign_diagonal a(42, 1024), b(42, 1024), c(43, 1024);
    int plus = 0, differ = 0;
    for (std::size_t i = 0; i < 1024; ++i) {
        REQUIRE(std::abs(a.signs()[i]) == 1.0f);
        CHECK(a.signs()[i] == b.signs()[i]);
        plus += a.signs()[i] > 0;
        differ += a.signs()[i] != c.signs()[i];
    }
    // Fair coin: 512 ± 16 (sd); 6 sd bounds.
    CHECK(plus > 512 - 96);
    CHECK(plus < 512 + 96);
    CHECK(differ > 512 - 96);
    auto x = gaussian(1024, 1), y = x;
    a.apply(y);
    a.apply(y);
    CHECK(x == y);
}
