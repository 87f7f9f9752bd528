// The CUDA matvec against the CPU matvec on the same packed matrices, the tag overloads on
// host data, and the rejection of bad input.
#include <hlwq/backend/cuda/cuda.cuh>
#include <hlwq/matmul.hpp>

#include <doctest/doctest.h>

#include "../test_data.hpp"
#include "cuda_test_util.hpp"

#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <vector>

using hlwq_test::gaussian;
using hlwq_test::error_over_mass;
using hlwq_test::shape;

namespace {

/// hlwq::cuda::matvec of a host matrix and activation, back on the host.
std::vector<float> gpu_matvec(const hlwq::quantized_matrix& q, const std::vector<float>& x) {
    const auto dq = hlwq::cuda::quantized_matrix::upload(q);
    const hlwq::cuda::device_buffer<float> dx{std::span<const float>(x)};
    hlwq::cuda::device_buffer<float> dy(q.rows);
    hlwq::cuda::matvec(dq, dx, dy);
    std::vector<float> y(q.rows);
    dy.download(y);
    return y;
}

}  // namespace

// Both sides compute the same fp32 products (rotation additions, table lookups, scale) and
// differ only in the order of a length-cols sum, so they agree within about
// sqrt(cols) · 2^-24 of the row's mass (Σ |terms|): ≈ 4e-6 at cols = 5376, hence 1e-5. Measured
// against the mass, not against y, since a single row can cancel to a small y.
TEST_CASE("cuda matvec equals the CPU matvec on the same codes, every width") {
    for (const shape s : {shape{37, 128}, shape{129, 384}, shape{1, 1024}, shape{301, 2176}, shape{67, 5376},
                          shape{9, 300}, shape{1000, 256}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(s.cols + s.rows));
        const auto x = gaussian(s.cols, 7);
        for (int bits = 1; bits <= 8; ++bits) {
            CAPTURE(bits);
            const auto q = hlwq::quantize(w, s.rows, s.cols, bits);
            std::vector<float> cpu(s.rows);
            hlwq::matvec(q, x, cpu);
            const auto gpu = gpu_matvec(q, x);
            CHECK(error_over_mass(gpu, cpu, hlwq_test::row_mass(q, x)) <= 1e-5);
        }
    }
}

TEST_CASE("cuda matvec: 33 column slices spread over the 8 warps of a CTA, the sign diagonal, zero blocks") {
    const std::size_t rows = 45, cols = 128 * 264;  // 1056 groups = 33 slices of 32
    auto w = gaussian(rows * cols, 11);
    for (std::size_t c = 0; c < 256; ++c) w[3 * cols + c] = 0.0f;  // two zero blocks in row 3
    const auto x = gaussian(cols, 12);
    for (int bits : {4, 5}) {
        CAPTURE(bits);
        const auto q = hlwq::quantize(w, rows, cols, bits, {.sign_seed = 1234});
        std::vector<float> cpu(rows);
        hlwq::matvec(q, x, cpu);
        CHECK(error_over_mass(gpu_matvec(q, x), cpu, hlwq_test::row_mass(q, x)) <= 1e-5);
    }
}

TEST_CASE("cuda: unsupported blocks and wrong sizes are rejected") {
    const auto w = gaussian(4 * 256, 1);
    const auto q64 = hlwq::quantize(w, 4, 256, 4, {.block = 64});
    CHECK_THROWS_WITH_AS(hlwq::cuda::quantized_matrix::upload(q64), doctest::Contains("blocks of 128"),
                         std::invalid_argument);
    auto broken = hlwq::quantize(w, 4, 256, 4);
    broken.norms.pop_back();
    CHECK_THROWS_AS(hlwq::cuda::quantized_matrix::upload(broken), std::invalid_argument);

    const auto dq = hlwq::cuda::quantized_matrix::upload(hlwq::quantize(w, 4, 256, 4));
    hlwq::cuda::device_buffer<float> x(255), y(4), x_ok(256), y_long(5), out(4 * 255);
    CHECK_THROWS_WITH_AS(hlwq::cuda::matvec(dq, x, y), doctest::Contains("x has 255 values, needs 256"),
                         std::invalid_argument);
    CHECK_THROWS_AS(hlwq::cuda::matvec(dq, x_ok, y_long), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::cuda::dequantize(dq, out), std::invalid_argument);
    std::vector<float> too_many(300);
    CHECK_THROWS_AS(x_ok.upload(too_many), std::invalid_argument);
}

TEST_CASE("the backend::cuda tag overloads take host data like the CPU backends") {
    const std::size_t rows = 19, cols = 640;
    const auto q = hlwq::quantize(gaussian(rows * cols, 2), rows, cols, 5);
    const auto x = gaussian(cols, 3);
    std::vector<float> cpu(rows), gpu(rows);
    hlwq::matvec(q, x, cpu);
    hlwq::matvec(q, x, gpu, 0, hlwq::backend::cuda{});
    CHECK(error_over_mass(gpu, cpu, hlwq_test::row_mass(q, x)) <= 1e-5);
    std::vector<float> w(rows * cols);
    hlwq::dequantize(q, w, 0, hlwq::backend::cuda{});
    CHECK(w == hlwq::dequantize(q));
    std::vector<float> short_x(cols - 1);
    CHECK_THROWS_WITH_AS(hlwq::matvec(q, short_x, gpu, 0, hlwq::backend::cuda{}), doctest::Contains("hlwq::matvec"),
                         std::invalid_argument);
}
