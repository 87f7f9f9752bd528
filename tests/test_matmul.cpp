#include <hlwq/matmul.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <cmath>
#include <stdexcept>
#include <vector>

using hlwq_test::gaussian;

namespace {

// Checks y (n × rows) against Ŵ x computed in double, Ŵ = dequantize(q): norm-wise relative
// error ‖y - ref‖ / ‖ref‖ <= 1e-5. Float rounding of the rotation (log2 B stages), lookup,
// scale and a length-cols sum with SIMD partial sums gives errors near sqrt(cols) · 2^-24
// ≈ 2e-6 at cols = 2048; a wrong code, block, scale or order gives O(1).
void check_product(const hlwq::quantized_matrix& q, const std::vector<float>& x, std::size_t n,
                   const std::vector<float>& y) {
    const auto w = hlwq::dequantize(q);
    double err2 = 0, ref2 = 0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t r = 0; r < q.rows; ++r) {
            double ref = 0;
            for (std::size_t c = 0; c < q.cols; ++c) ref += double(w[r * q.cols + c]) * x[i * q.cols + c];
            const double e = y[i * q.rows + r] - ref;
            err2 += e * e;
            ref2 += ref * ref;
        }
    CHECK(std::sqrt(err2 / ref2) <= 1e-5);
}

}  // namespace

TEST_CASE("matvec equals dequantize-then-dense, every width, odd shapes") {
    struct shape {
        std::size_t rows, cols, block;
    };
    for (const shape s : {shape{37, 300, 128}, shape{16, 1024, 128}, shape{9, 64, 64}, shape{5, 100, 32},
                          shape{7, 2048, 256}, shape{3, 33, 16}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        CAPTURE(s.block);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(s.cols));
        const auto x = gaussian(s.cols, 77);
        for (int bits = 1; bits <= 8; ++bits) {
            CAPTURE(bits);
            const auto q = hlwq::quantize(w, s.rows, s.cols, bits, {.block = s.block});
            std::vector<float> y(s.rows), ys(s.rows);
            hlwq::matvec(q, x, y);
            check_product(q, x, 1, y);
            hlwq::matvec(q, x, ys, 1, hlwq::backend::scalar{});
            check_product(q, x, 1, ys);
#if XSIMD_WITH_AVX2  // the AVX2 kernels too, when this build can run them
            hlwq::matvec(q, x, ys, 1, hlwq::backend::cpu<xsimd::avx2>{});
            check_product(q, x, 1, ys);
#endif
        }
    }
}

TEST_CASE("matmul equals dequantize-then-dense for batches, threads and tails") {
    const std::size_t rows = 23, cols = 520;  // 23 rows: tiles of 4 plus 3; 520 cols: a padded block
    const auto w = gaussian(rows * cols, 3);
    for (int bits : {2, 3, 4, 5, 6, 8}) {
        CAPTURE(bits);
        const auto q = hlwq::quantize(w, rows, cols, bits);
        for (std::size_t n : {1u, 2u, 4u, 5u, 9u}) {
            CAPTURE(n);
            const auto x = gaussian(n * cols, static_cast<unsigned>(n));
            for (unsigned threads : {1u, 2u, 3u}) {
                std::vector<float> y(n * rows);
                hlwq::matmul(q, x, n, y, threads);
                check_product(q, x, n, y);
            }
            std::vector<float> ys(n * rows);
            hlwq::matmul(q, x, n, ys, 1, hlwq::backend::scalar{});
            check_product(q, x, n, ys);
#if XSIMD_WITH_AVX2
            hlwq::matmul(q, x, n, ys, 1, hlwq::backend::cpu<xsimd::avx2>{});
            check_product(q, x, n, ys);
#endif
        }
    }
}

TEST_CASE("products with the random sign diagonal and with zero blocks") {
    const std::size_t rows = 8, cols = 384;
    auto w = gaussian(rows * cols, 4);
    for (std::size_t c = 0; c < 128; ++c) w[2 * cols + c] = 0.0f;  // a zero block in row 2
    const auto q = hlwq::quantize(w, rows, cols, 4, {.sign_seed = 99});
    const auto x = gaussian(3 * cols, 5);
    std::vector<float> y(3 * rows);
    hlwq::matmul(q, x, 3, y);
    check_product(q, x, 3, y);
    std::vector<float> y1(rows);
    hlwq::matvec(q, std::span(x).first(cols), y1);
    check_product(q, std::vector<float>(x.begin(), x.begin() + cols), 1, y1);
}

TEST_CASE("products: bad sizes are rejected") {
    const auto q = hlwq::quantize(gaussian(4 * 256, 1), 4, 256, 4);
    std::vector<float> x(256), y(4);
    CHECK_NOTHROW(hlwq::matvec(q, x, y));
    std::vector<float> short_x(255), long_y(5);
    CHECK_THROWS_WITH_AS(hlwq::matvec(q, short_x, y), doctest::Contains("hlwq::matvec"), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::matvec(q, x, long_y), std::invalid_argument);
    std::vector<float> xb(3 * 256), yb(2 * 4);
    CHECK_THROWS_WITH_AS(hlwq::matmul(q, xb, 3, yb), doctest::Contains("hlwq::matmul"), std::invalid_argument);
    auto broken = q;
    broken.norms.pop_back();
    CHECK_THROWS_AS(hlwq::matvec(broken, x, y), std::invalid_argument);
}
