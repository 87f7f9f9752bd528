#include <hlwq/matmul.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
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

namespace {

// The int8 product written out in double from its definition: the integer table, the int8
// activations (both from the library's own rounding functions, checked separately below) and
// the exact integer block sums. Returns {y, mass}, mass = Σ_b |norm_b · scale_b| · Σ_i |t·q|:
// a kernel that sums m float terms in any order is within about m · 2^-24 · mass of y.
struct int8_reference {
    std::vector<double> y, mass;
};

template <int Bits>
int8_reference int8_product_in_double(const hlwq::quantized_matrix& q, const std::vector<float>& x) {
    const std::size_t nb = q.blocks_per_row(), B = q.block;
    std::vector<float> xr(nb * B);
    hlwq::detail::rotate_activations<hlwq::backend::scalar>(q, x.data(), 1, xr.data());
    const auto table = hlwq::detail::make_int_table<Bits>(q.centroids);
    const auto a = hlwq::detail::quantize_activations(xr.data(), nb, B, table.step);
    int8_reference ref{std::vector<double>(q.rows), std::vector<double>(q.rows)};
    std::vector<std::uint8_t> codes(B);
    for (std::size_t r = 0; r < q.rows; ++r)
        for (std::size_t b = 0; b < nb; ++b) {
            hlwq::packer<Bits>::unpack(q.block_codes(r, b), codes);
            long long dot = 0, abs_dot = 0;
            for (std::size_t i = 0; i < B; ++i) {
                const long long p = static_cast<long long>(table.values[codes[i]]) * a.q[b * B + i];
                dot += p;
                abs_dot += p < 0 ? -p : p;
            }
            const double s = double(q.block_norm(r, b)) * a.scale[b];
            ref.y[r] += s * double(dot);
            ref.mass[r] += std::abs(s) * double(abs_dot);
        }
    return ref;
}

template <int Bits, class Backend>
void check_int8_kernel(const hlwq::quantized_matrix& q, const std::vector<float>& x, Backend backend) {
    const auto ref = int8_product_in_double<Bits>(q, x);
    std::vector<float> y(q.rows);
    hlwq::matvec(q, x, y, {.threads = 2, .activations = hlwq::activation_precision::int8}, backend);
    // Float terms summed by any kernel: blocks, 16 SIMD lanes, the per-block scale product.
    const double terms = double(q.blocks_per_row()) + 24;
    for (std::size_t r = 0; r < q.rows; ++r) {
        CAPTURE(r);
        CHECK(std::abs(y[r] - ref.y[r]) <= terms * 0x1p-24 * ref.mass[r] + 1e-30);
    }
}

}  // namespace

TEST_CASE("int8 activations: the integer rounding of the table and the activations") {
    // Four float roundings of values of size |c|: step itself, c / step, step · v, the difference.
    auto float_slack = [](float c) { return 4 * std::abs(c) * 0x1p-24f; };
    const auto c = hlwq::lloyd_max_view(4).centroids;
    const auto t = hlwq::detail::make_int_table<4>(c);
    float largest = 0;
    for (float v : c) largest = std::max(largest, std::abs(v));
    CHECK(t.step == largest / 127);
    for (std::size_t k = 0; k < c.size(); ++k) {
        CHECK(std::abs(t.values[k]) <= 127);
        CHECK(std::abs(c[k] - t.step * t.values[k]) <= 0.5f * t.step + float_slack(c[k]));
    }
    // int16 tables (6..8 bits): nearest, and symmetric for a symmetric codebook, with the
    // negative half first (the mirrored tables the kernels look up by halves)
    auto check_int16_table = [&]<int B>() {
        CAPTURE(B);
        const auto cb = hlwq::lloyd_max_view(B).centroids;
        const auto tb = hlwq::detail::make_int_table<B>(cb);
        const std::size_t levels = cb.size();
        CHECK(tb.values[levels - 1] == 32767);
        for (std::size_t k = 0; k < levels; ++k) {
            CHECK(tb.values[levels - 1 - k] == -tb.values[k]);
            CHECK((k >= levels / 2 || tb.values[k] <= 0));
            CHECK(std::abs(cb[k] - tb.step * tb.values[k]) <= 0.5f * tb.step + float_slack(cb[k]));
        }
    };
    check_int16_table.template operator()<6>();
    check_int16_table.template operator()<7>();
    check_int16_table.template operator()<8>();

    const auto x = gaussian(256, 5);
    const float step = 0.25f;
    const auto a = hlwq::detail::quantize_activations(x.data(), 2, 128, step);
    for (std::size_t b = 0; b < 2; ++b) {
        float m = 0;
        std::int32_t sum = 0;
        for (std::size_t i = 0; i < 128; ++i) m = std::max(m, std::abs(x[b * 128 + i]));
        for (std::size_t i = 0; i < 128; ++i) {
            const float d = m / 127;
            CHECK(std::abs(x[b * 128 + i] - d * a.q[b * 128 + i]) <= 0.5f * d * (1 + 1e-5f));
            sum += a.q[b * 128 + i];
        }
        CHECK(a.sum[b] == sum);
        CHECK(a.scale[b] == doctest::Approx(m / 127 * step / 128).epsilon(1e-6));
    }
    const std::vector<float> zeros(128, 0.0f);
    const auto z = hlwq::detail::quantize_activations(zeros.data(), 1, 128, step);
    CHECK(z.scale[0] == 0.0f);
    CHECK(z.sum[0] == 0);
}

TEST_CASE("int8 activations: the SIMD rounding gives the scalar reference's values") {
    using simd = hlwq::kernels<hlwq::default_backend>;
    using scalar = hlwq::kernels<hlwq::backend::scalar>;
    // Ties: with max|x| = 127 the scale is exactly 1, so x · inv = x and halves round to even.
    const std::vector<float> ties = {127.0f, 2.5f, -3.5f, 0.5f, -0.5f, 1.5f, -126.5f, 0.0f,
                                     -2.5f,  3.5f, 4.5f,  -1.5f, 5.5f, -5.5f, 6.5f,   -127.0f};
    const std::vector<int> even = {127, 2, -4, 0, 0, 2, -126, 0, -2, 4, 4, -2, 6, -6, 6, -127};
    std::vector<std::int8_t> q(ties.size());
    std::int32_t sum = -1;
    CHECK(simd::quantize_int8(ties.data(), ties.size(), q.data(), sum) == 127.0f);
    for (std::size_t i = 0; i < ties.size(); ++i) CHECK(int{q[i]} == even[i]);
    CHECK(sum == std::accumulate(even.begin(), even.end(), 0));
    for (const std::size_t n : {std::size_t{16}, std::size_t{64}, std::size_t{100}, std::size_t{128}, std::size_t{1024}}) {
        CAPTURE(n);
        auto x = gaussian(n, static_cast<unsigned>(n));
        x[n / 3] *= 40.0f;  // one outlier, as real activations have
        std::vector<std::int8_t> a(n), b(n);
        std::int32_t sa = 0, sb = 1;
        CHECK(simd::quantize_int8(x.data(), n, a.data(), sa) == scalar::quantize_int8(x.data(), n, b.data(), sb));
        CHECK(a == b);
        CHECK(sa == sb);
    }
    const std::vector<float> zeros(64, 0.0f);
    std::vector<std::int8_t> z(64, 1);
    CHECK(simd::quantize_int8(zeros.data(), 64, z.data(), sum) == 0.0f);
    CHECK(std::all_of(z.begin(), z.end(), [](std::int8_t v) { return v == 0; }));
    CHECK(sum == 0);
}

TEST_CASE("int8 activations: every kernel computes the exact integer block sums") {
    struct shape {
        std::size_t rows, cols, block;
    };
    for (const shape s : {shape{37, 300, 128}, shape{16, 1024, 128}, shape{9, 64, 64}, shape{5, 100, 32},
                          shape{7, 2048, 256}, shape{3, 33, 16}, shape{4, 1024, 1024}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        CAPTURE(s.block);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(s.cols) + 1);
        const auto x = gaussian(s.cols, 78);
        hlwq::for_each_bits([&]<int B>() {
            CAPTURE(B);
            const auto q = hlwq::quantize<B>(w, s.rows, s.cols, {.block = s.block});
            check_int8_kernel<B>(q, x, hlwq::default_backend{});
            check_int8_kernel<B>(q, x, hlwq::backend::scalar{});
#if XSIMD_WITH_AVX2
            check_int8_kernel<B>(q, x, hlwq::backend::cpu<xsimd::avx2>{});
#endif
            // An asymmetric codebook: the table has no mirror symmetry for kernels to use.
            auto skewed = q;
            for (float& c : skewed.centroids) c = c > 0 ? c * 1.25f : c;
            check_int8_kernel<B>(skewed, x, hlwq::default_backend{});
            // A symmetric codebook in descending order: the negative half holds positive values,
            // which an 8-bit kernel must not take for the magnitudes of a mirrored table.
            auto descending = q;
            std::reverse(descending.centroids.begin(), descending.centroids.end());
            check_int8_kernel<B>(descending, x, hlwq::default_backend{});
        });
    }
}

TEST_CASE("int8 activations: the error against the exact product is within its rounding bound") {
    // Per element, |e·t·d·q - c·x| <= |e·t|·d/2 + |x|·e/2 (d: the activation step of its
    // block, e: the table step), so |y_int8 - y_f32| <= Σ_b norm_b/B · Σ_i that, plus float rounding.
    // Heavy-tailed activations (a ×30 outlier) make d large, as real ones do.
    const std::size_t rows = 64, cols = 1000;
    const auto w = gaussian(rows * cols, 91);
    auto x = gaussian(cols, 92);
    x[17] *= 30;
    hlwq::for_each_bits([&]<int B>() {
        CAPTURE(B);
        const auto q = hlwq::quantize<B>(w, rows, cols);
        const std::size_t nb = q.blocks_per_row(), bs = q.block;
        std::vector<float> xr(nb * bs);
        hlwq::detail::rotate_activations<hlwq::backend::scalar>(q, x.data(), 1, xr.data());
        const auto table = hlwq::detail::make_int_table<B>(q.centroids);
        std::vector<float> exact(rows), fast(rows);
        hlwq::matvec(q, x, exact);
        hlwq::matvec(q, x, fast, {.activations = hlwq::activation_precision::int8});
        std::vector<std::uint8_t> codes(bs);
        double err2 = 0, ref2 = 0;
        for (std::size_t r = 0; r < rows; ++r) {
            double bound = 0, mass = 0;
            for (std::size_t b = 0; b < nb; ++b) {
                hlwq::packer<B>::unpack(q.block_codes(r, b), codes);
                float m = 0;
                for (std::size_t i = 0; i < bs; ++i) m = std::max(m, std::abs(xr[b * bs + i]));
                const double d = m / 127.0, e = table.step, n = q.block_norm(r, b) / double(bs);
                for (std::size_t i = 0; i < bs; ++i) {
                    const double ct = std::abs(e * table.values[codes[i]]), xi = std::abs(xr[b * bs + i]);
                    bound += n * (ct * d / 2 + xi * e / 2);
                    mass += n * (ct + std::abs(q.centroids[codes[i]])) * (xi + d);
                }
            }
            CAPTURE(r);
            CHECK(std::abs(double(fast[r]) - exact[r]) <= bound + (double(nb) + 24) * 0x1p-23 * mass);
            err2 += (double(fast[r]) - exact[r]) * (fast[r] - exact[r]);
            ref2 += double(exact[r]) * exact[r];
        }
        // And it is small: the activation step is max|x_b|/127 (about 1% of |x_b| here).
        CHECK(std::sqrt(err2 / ref2) < 0.05);
    });
}

TEST_CASE("int8 activations: matmul equals one matvec per token, any thread count") {
    const std::size_t rows = 29, cols = 520, n = 5;
    const auto w = gaussian(rows * cols, 93);
    const auto x = gaussian(n * cols, 94);
    for (int bits : {2, 4, 5, 8}) {
        CAPTURE(bits);
        const auto q = hlwq::quantize(w, rows, cols, bits);
        for (unsigned threads : {1u, 2u, 3u}) {
            CAPTURE(threads);
            const hlwq::product_options opt{.threads = threads, .activations = hlwq::activation_precision::int8};
            std::vector<float> y(n * rows), yi(rows);
            hlwq::matmul(q, x, n, y, opt);
            for (std::size_t i = 0; i < n; ++i) {
                hlwq::matvec(q, std::span(x).subspan(i * cols, cols), yi, opt);
                for (std::size_t r = 0; r < rows; ++r) CHECK(y[i * rows + r] == yi[r]);
            }
        }
    }
}

TEST_CASE("int8 activations: the batched kernel equals one matvec per token for every width, shape and tail") {
    // matmul decodes a few rows' codes once and runs them against a register tile of tokens;
    // its integer lanes, scales and lane sums are those of matvec's kernel, so the results are
    // bit-identical (and matvec is checked against exact integer sums above). Shapes: row and
    // token counts that are not multiples of the 4 × 3 tile, partial last blocks, blocks of
    // 64..256 (fused and unpacking kernels) and 32 (the per-row fallback).
    struct shape {
        std::size_t rows, cols, block;
    };
    for (const shape s : {shape{29, 520, 128}, shape{4, 256, 128}, shape{7, 64, 64}, shape{13, 700, 256},
                          shape{6, 100, 32}, shape{1, 128, 128}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        CAPTURE(s.block);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(s.rows + s.cols));
        for (std::size_t n : {2u, 3u, 4u, 5u, 9u}) {
            CAPTURE(n);
            auto x = gaussian(n * s.cols, static_cast<unsigned>(n));
            x[0] *= 30;  // an outlier: one token's first block gets a coarse step
            hlwq::for_each_bits([&]<int B>() {
                CAPTURE(B);
                const auto q = hlwq::quantize<B>(w, s.rows, s.cols, {.block = s.block});
                auto check = [&](auto backend, unsigned threads) {
                    CAPTURE(threads);
                    const hlwq::product_options opt{.threads = threads, .activations = hlwq::activation_precision::int8};
                    std::vector<float> y(n * s.rows), yi(s.rows);
                    hlwq::matmul(q, x, n, y, opt, backend);
                    for (std::size_t i = 0; i < n; ++i) {
                        hlwq::matvec(q, std::span(x).subspan(i * s.cols, s.cols), yi, opt, backend);
                        for (std::size_t r = 0; r < s.rows; ++r) REQUIRE(y[i * s.rows + r] == yi[r]);
                    }
                    // matvec runs a few rows at a time: a row alone gives the same bits.
                    const hlwq::quantized_view all = q;
                    const std::size_t nb = all.blocks_per_row();
                    hlwq::matvec(q, std::span(x).first(s.cols), yi, opt, backend);
                    for (std::size_t r = 0; r < s.rows; ++r) {
                        hlwq::quantized_view one = all;
                        one.rows = 1;
                        one.codes = all.codes.subspan(r * nb * all.block_bytes(), nb * all.block_bytes());
                        one.norms = all.norms.subspan(r * nb, nb);
                        float yr = 0;
                        hlwq::matvec(one, std::span(x).first(s.cols), std::span(&yr, 1), opt, backend);
                        REQUIRE(yr == yi[r]);
                    }
                };
                check(hlwq::default_backend{}, 1);
                check(hlwq::default_backend{}, 3);
                check(hlwq::backend::scalar{}, 2);
#if XSIMD_WITH_AVX2
                check(hlwq::backend::cpu<xsimd::avx2>{}, 2);
#endif
            });
        }
    }
}
