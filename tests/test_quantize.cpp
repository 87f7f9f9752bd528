#include <hlwq/quantize.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using hlwq_test::gaussian;

// Student-t with 4 degrees of freedom, and every 512th column an outlier column ×20.
std::vector<float> heavy_tailed(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 rng(seed);
    std::student_t_distribution<float> t(4);
    std::vector<float> x(rows * cols);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) x[r * cols + c] = t(rng) * (c % 512 == 0 ? 20.0f : 1.0f);
    return x;
}

double nmse(const std::vector<float>& w, const std::vector<float>& back) {
    double err = 0, ref = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        err += (double(w[i]) - back[i]) * (double(w[i]) - back[i]);
        ref += double(w[i]) * w[i];
    }
    return err / ref;
}

template <int B>
void check_backends_agree(const std::vector<float>& w, std::size_t rows, std::size_t cols) {
    CAPTURE(B);
    const auto simd = hlwq::quantize<B>(w, rows, cols, {.threads = 2});
    const auto ref = hlwq::quantize<B>(w, rows, cols, {.threads = 1}, hlwq::backend::scalar{});
    CHECK(simd.codes == ref.codes);
    CHECK(std::memcmp(simd.norms.data(), ref.norms.data(), simd.norms.size() * 2) == 0);
    // Every instruction set this build can run, not only the default one.
#if XSIMD_WITH_SSE2
    const auto sse = hlwq::quantize<B>(w, rows, cols, {}, hlwq::backend::cpu<xsimd::sse2>{});
    CHECK(sse.codes == ref.codes);
    CHECK(hlwq::dequantize(sse, 1, hlwq::backend::cpu<xsimd::sse2>{}) == hlwq::dequantize(ref, 1, hlwq::backend::scalar{}));
#endif
#if XSIMD_WITH_AVX2
    const auto avx2 = hlwq::quantize<B>(w, rows, cols, {}, hlwq::backend::cpu<xsimd::avx2>{});
    CHECK(avx2.codes == ref.codes);
    CHECK(hlwq::dequantize(avx2, 1, hlwq::backend::cpu<xsimd::avx2>{}) == hlwq::dequantize(ref, 1, hlwq::backend::scalar{}));
#endif
    // Dequantization: same rounding order in both backends, so the outputs agree exactly.
    CHECK(hlwq::dequantize(simd) == hlwq::dequantize(ref, 1, hlwq::backend::scalar{}));
}

}  // namespace

TEST_CASE("NMSE on 1e6 Gaussian weights is the Lloyd-Max MSE, PQ1..PQ8") {
    const std::size_t rows = 1000, cols = 1024;  // 1.024e6 weights, 8000 blocks
    const auto w = gaussian(rows * cols, 2026);
    for (int bits = 1; bits <= 8; ++bits) {
        CAPTURE(bits);
        const auto q = hlwq::quantize(w, rows, cols, bits);
        const double e = nmse(w, hlwq::dequantize(q));
        const double limit = hlwq::lloyd_max_mse(bits);
        MESSAGE("PQ" << bits << ": NMSE " << e << ", Lloyd-Max " << limit << ", ratio " << e / limit);
        const double tol = bits == 8 ? 0.10 : 0.03;
        CHECK(std::abs(e / limit - 1) <= tol);
    }
}

TEST_CASE("heavy-tailed weights: Student-t(4) with outlier columns") {
    const std::size_t rows = 256, cols = 4096;
    const auto w = heavy_tailed(rows, cols, 11);
    const double e5 = nmse(w, hlwq::dequantize(hlwq::quantize(w, rows, cols, 5)));
    const double e4 = nmse(w, hlwq::dequantize(hlwq::quantize(w, rows, cols, 4)));
    MESSAGE("heavy-tailed NMSE: PQ5 " << e5 << ", PQ4 " << e4);
    CHECK(e5 <= 2.5e-3);
    CHECK(e4 <= 9.5e-3);
}

TEST_CASE("SIMD and scalar backends produce identical codes, norms and outputs") {
    for (std::size_t cols : {128u, 200u, 1024u, 33u}) {
        CAPTURE(cols);
        const std::size_t rows = 9;
        auto w = gaussian(rows * cols, static_cast<unsigned>(cols));
        for (std::size_t c = 0; c < cols; ++c) w[c] = 0.0f;  // an all-zero row too
        check_backends_agree<1>(w, rows, cols);
        check_backends_agree<2>(w, rows, cols);
        check_backends_agree<3>(w, rows, cols);
        check_backends_agree<4>(w, rows, cols);
        check_backends_agree<5>(w, rows, cols);
        check_backends_agree<6>(w, rows, cols);
        check_backends_agree<7>(w, rows, cols);
        check_backends_agree<8>(w, rows, cols);
    }
}

TEST_CASE("run-time and compile-time bit widths give the same result; threads do not matter") {
    const auto w = gaussian(64 * 512, 5);
    const auto a = hlwq::quantize(w, 64, 512, 3, {.threads = 1});
    const auto b = hlwq::quantize<3>(w, 64, 512, {.threads = 4});
    CHECK(a.codes == b.codes);
    CHECK(hlwq::dequantize(a, 1) == hlwq::dequantize(b, 3));
}

TEST_CASE("fp16 and bf16 weights quantize like their float values") {
    const auto w = gaussian(16 * 256, 8);
    std::vector<hlwq::half> h;
    std::vector<hlwq::bfloat16> bf;
    std::vector<float> wh, wb;
    for (float v : w) {
        h.emplace_back(v);
        bf.emplace_back(v);
        wh.push_back(static_cast<float>(h.back()));
        wb.push_back(static_cast<float>(bf.back()));
    }
    CHECK(hlwq::quantize(h, 16, 256, 4).codes == hlwq::quantize(wh, 16, 256, 4).codes);
    CHECK(hlwq::quantize(bf, 16, 256, 4).codes == hlwq::quantize(wb, 16, 256, 4).codes);
}

TEST_CASE("stored format: sizes, norms, bits per weight") {
    const std::size_t rows = 8, cols = 512;
    const auto w = gaussian(rows * cols, 4);
    const auto q = hlwq::quantize(w, rows, cols, 4);
    CHECK(q.blocks_per_row() == 4);
    CHECK(q.block_bytes() == 64);
    CHECK(q.codes.size() == rows * 4 * 64);
    CHECK(q.norms.size() == rows * 4);
    CHECK(q.bits_per_weight() == doctest::Approx(4 + 16.0 / 128));
    // The stored norm is the block's L2 norm rounded to fp16.
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t b = 0; b < 4; ++b) {
            double s = 0;
            for (std::size_t c = 0; c < 128; ++c) s += double(w[r * cols + b * 128 + c]) * w[r * cols + b * 128 + c];
            CHECK(q.norms[r * 4 + b].bits == hlwq::half(static_cast<float>(std::sqrt(s))).bits);
        }
    // The codes of a block are the packed nearest centroids of H w / ||w||.
    std::vector<float> y(w.begin(), w.begin() + 128);
    hlwq::kernels<hlwq::backend::scalar>::fwht(y.data(), 128);
    double s = 0;
    for (std::size_t c = 0; c < 128; ++c) s += double(w[c]) * w[c];
    std::vector<std::uint8_t> codes(128);
    hlwq::packer<4>::unpack(q.block_codes(0, 0), std::span<std::uint8_t>(codes));
    for (std::size_t i = 0; i < 128; ++i)
        CHECK(codes[i] == hlwq::lloyd_max<4>::encode(y[i] * static_cast<float>(1.0 / std::sqrt(s))));
}

TEST_CASE("all-zero blocks: norm 0, dequantize to zeros") {
    std::vector<float> w(4 * 256, 0.0f);
    for (std::size_t c = 128; c < 256; ++c) w[c] = 1.0f;  // row 0: one zero block, one not
    const auto q = hlwq::quantize(w, 4, 256, 2);
    CHECK(q.block_norm(0, 0) == 0.0f);
    CHECK(q.norms[1].bits == hlwq::half(std::sqrt(128.0f)).bits);
    const auto back = hlwq::dequantize(q);
    for (std::size_t i = 0; i < back.size(); ++i)
        if (i < 128 || i >= 256) REQUIRE(back[i] == 0.0f);
}

TEST_CASE("columns that are not a multiple of the block: zero-padded last block") {
    const std::size_t rows = 5, cols = 300;  // blocks of 128, 128, 44 (+84 zeros)
    const auto w = gaussian(rows * cols, 6);
    const auto q = hlwq::quantize(w, rows, cols, 6);
    CHECK(q.blocks_per_row() == 3);
    CHECK(q.codes.size() == rows * 3 * 96);
    // The padded block's norm is the norm of its 44 real values.
    double s = 0;
    for (std::size_t c = 256; c < 300; ++c) s += double(w[c]) * w[c];
    CHECK(q.norms[2].bits == hlwq::half(static_cast<float>(std::sqrt(s))).bits);
    const auto back = hlwq::dequantize(q);
    REQUIRE(back.size() == rows * cols);
    // The padding spreads the error over 128 coordinates while only 44 are real, so the
    // error of real columns stays at or below the Gaussian limit (with sampling slack).
    CHECK(nmse(w, back) < hlwq::lloyd_max_mse(6) * 1.2);
    // Cols smaller than one block.
    const auto w2 = gaussian(3 * 20, 7);
    const auto back2 = hlwq::dequantize(hlwq::quantize(w2, 3, 20, 8));
    CHECK(nmse(w2, back2) < hlwq::lloyd_max_mse(8) * 1.5);
}

TEST_CASE("every block size 16..1024 works") {
    const auto w = gaussian(64 * 1024, 12);
    for (std::size_t block = 16; block <= 1024; block *= 2) {
        CAPTURE(block);
        const auto q = hlwq::quantize(w, 64, 1024, 4, {.block = block});
        CHECK(q.block == block);
        CHECK(q.bits_per_weight() == doctest::Approx(4 + 16.0 / double(block)));
        // 65536 samples: sampling sd of the NMSE ~ 1%; smaller blocks are slightly better
        // (their coordinates are less Gaussian-tailed), none worse than the limit + 5%.
        CHECK(nmse(w, hlwq::dequantize(q)) < hlwq::lloyd_max_mse(4) * 1.05);
    }
}

TEST_CASE("generic codebooks: a fitted codebook and a view") {
    const auto w = heavy_tailed(32, 1024, 3);
    // Fit the codebook to the rotated, normalized coordinates the quantizer actually sees.
    std::vector<float> y;
    for (std::size_t r = 0; r < 32; ++r)
        for (std::size_t b = 0; b < 8; ++b) {
            std::vector<float> blk(w.begin() + r * 1024 + b * 128, w.begin() + r * 1024 + b * 128 + 128);
            double s = 0;
            for (float v : blk) s += double(v) * v;
            hlwq::kernels<hlwq::backend::scalar>::fwht(blk.data(), 128);
            for (float v : blk) y.push_back(v * static_cast<float>(1 / std::sqrt(s)));
        }
    const auto fit = hlwq::fit_codebook(y, 3);
    const auto qf = hlwq::quantize(w, 32, 1024, fit);
    const auto ql = hlwq::quantize(w, 32, 1024, hlwq::lloyd_max<3>{});
    CHECK(qf.centroids == fit.centroids);
    // Fitted to these coordinates, it is at least as good as the Gaussian table.
    CHECK(nmse(w, hlwq::dequantize(qf)) <= nmse(w, hlwq::dequantize(ql)) * 1.001);
    CHECK(hlwq::quantize(w, 32, 1024, hlwq::lloyd_max_view(3)).codes == ql.codes);
}

TEST_CASE("random sign diagonal (H·D): a different format that round-trips with its seed") {
    const auto w = gaussian(16 * 256, 9);
    const auto plain = hlwq::quantize(w, 16, 256, 4);
    auto signed_q = hlwq::quantize(w, 16, 256, 4, {.sign_seed = 1234});
    CHECK(signed_q.sign_seed == 1234u);
    CHECK(signed_q.codes != plain.codes);
    const double e = nmse(w, hlwq::dequantize(signed_q));
    CHECK(e < hlwq::lloyd_max_mse(4) * 1.1);
    signed_q.sign_seed = 999;  // decoding with the wrong D gives garbage, as documented
    CHECK(nmse(w, hlwq::dequantize(signed_q)) > 0.5);
}

TEST_CASE("dequantize_rows: a slice of dequantize") {
    const auto w = gaussian(10 * 200, 10);
    const auto q = hlwq::quantize(w, 10, 200, 5);
    const auto all = hlwq::dequantize(q);
    std::vector<float> part(3 * 200);
    hlwq::dequantize_rows(q, 4, part);
    CHECK(std::equal(part.begin(), part.end(), all.begin() + 4 * 200));
    std::vector<float> bad(3 * 200 + 1);
    CHECK_THROWS_AS(hlwq::dequantize_rows(q, 4, bad), std::invalid_argument);
    std::vector<float> overrun(7 * 200);
    CHECK_THROWS_AS(hlwq::dequantize_rows(q, 4, overrun), std::invalid_argument);
}

// An embedding lookup dequantizes one row at a time (examples/runtime/linear.hpp): each row
// must be bit-identical to that row of the whole matrix, at every width, with a padded last
// block (200 = 128 + 72 columns) and with the signed rotation.
TEST_CASE("dequantize_rows: one row at a time equals dequantize, every width, padded, signed") {
    const auto w = gaussian(6 * 200, 11);
    for (int bits = 1; bits <= 8; ++bits) {
        for (const bool sign : {false, true}) {
            CAPTURE(bits);
            CAPTURE(sign);
            const auto q = hlwq::quantize(w, 6, 200, bits, {.sign_seed = sign ? std::optional<std::uint64_t>(7) : std::nullopt});
            const auto all = hlwq::dequantize(q);
            std::vector<float> row(200);
            for (std::size_t r : {5, 0, 3}) {
                hlwq::dequantize_rows(q, r, row);
                CHECK(std::equal(row.begin(), row.end(), all.begin() + static_cast<std::ptrdiff_t>(r * 200)));
            }
        }
    }
    std::vector<float> row(200);
    const auto q = hlwq::quantize(w, 6, 200, 4);
    CHECK_THROWS_WITH_AS(hlwq::dequantize_rows(q, 6, row), doctest::Contains("from row 6"), std::invalid_argument);
}

TEST_CASE("bad input is rejected with std::invalid_argument naming the problem") {
    auto w = gaussian(4 * 256, 1);
    using doctest::Contains;
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 0), Contains("bits must be in 1..8, got 0"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 9), Contains("got 9"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 255, 4), Contains("needs 1020 values, the buffer has 1024"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 4, {.block = 100}), Contains("block size must be a power of two"),
                         std::invalid_argument);
    CHECK_THROWS_AS(hlwq::quantize(w, 4, 256, 4, {.block = 8}), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::quantize(w, 4, 256, 4, {.block = 2048}), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::quantize(w, std::size_t{1} << 40, std::size_t{1} << 40, 4), std::invalid_argument);

    w[3 * 256 + 17] = NAN;
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 4), Contains("row 3, column 17 is NaN"), std::invalid_argument);
    w[3 * 256 + 17] = 0;
    w[1 * 256 + 200] = -INFINITY;
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 4), Contains("row 1, column 200 is infinite"),
                         std::invalid_argument);
    // The lowest bad row is reported whatever the thread schedule.
    w[3 * 256 + 5] = NAN;
    CHECK_THROWS_WITH_AS(hlwq::quantize(w, 4, 256, 4, {.threads = 4}), Contains("row 1"), std::invalid_argument);

    std::vector<float> big(128, 6000.0f);  // norm 67882 > 65504
    CHECK_THROWS_WITH_AS(hlwq::quantize(big, 1, 128, 4), Contains("beyond the fp16 range"), std::invalid_argument);

    // Dequantizing into the wrong buffer or from an inconsistent matrix.
    auto q = hlwq::quantize(gaussian(256, 2), 2, 128, 4);
    std::vector<float> out(255);
    CHECK_THROWS_WITH_AS(hlwq::dequantize(q, std::span<float>(out)), Contains("needs 256 values"),
                         std::invalid_argument);
    q.codes.pop_back();
    CHECK_THROWS_AS(hlwq::dequantize(q), std::invalid_argument);
}

TEST_CASE("empty matrices") {
    std::vector<float> none;
    const auto q = hlwq::quantize(none, 0, 128, 4);
    CHECK(q.codes.empty());
    CHECK(hlwq::dequantize(q).empty());
    CHECK(hlwq::quantize(none, 5, 0, 4).norms.empty());
}
