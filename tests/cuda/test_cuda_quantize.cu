// The CUDA quantize against the CPU's: the same codes and fp16 norms, and bad input reported.
#include <hlwq/backend/cuda/quantize.cuh>
#include <hlwq/packer.hpp>
#include <hlwq/quantize.hpp>

#include <cmath>

#include <doctest/doctest.h>

#include "../test_data.hpp"
#include "cuda_test_util.hpp"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

using hlwq_test::gaussian;
using hlwq_test::shape;

namespace {

template <class T>
void check_quantize_matches(const std::vector<T>& w, std::size_t rows, std::size_t cols, int bits,
                            const hlwq::quantize_options& o) {
    const auto cpu = hlwq::quantize(w, rows, cols, bits, o);
    const hlwq::cuda::device_buffer<T> dw{std::span<const T>(w)};
    const auto gpu = hlwq::cuda::quantize(dw.data(), rows, cols, bits, o).download();
    REQUIRE(gpu.codes.size() == cpu.codes.size());
    REQUIRE(gpu.norms.size() == cpu.norms.size());
    // Codes compared one by one: the GPU follows the CPU's arithmetic step for step, so even
    // values exactly on a boundary go the same way; the fraction is printed if any differ.
    std::size_t differ = 0;
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t k = 0; k < cpu.blocks_per_row(); ++k) {
            std::vector<std::uint8_t> ca(128), cb(128);
            hlwq::unpack_codes(bits, cpu.block_codes(r, k), ca);
            hlwq::unpack_codes(bits, gpu.block_codes(r, k), cb);
            for (int i = 0; i < 128; ++i) differ += ca[i] != cb[i];
        }
    if (differ) MESSAGE("codes that differ: " << differ << " of " << rows * cpu.blocks_per_row() * 128);
    CHECK(differ == 0);
    CHECK(std::memcmp(gpu.norms.data(), cpu.norms.data(), cpu.norms.size() * sizeof(hlwq::half)) == 0);
    CHECK(gpu.centroids == cpu.centroids);
}

}  // namespace

TEST_CASE("cuda quantize gives the CPU's codes and fp16 norms (float, half, bfloat16 weights)") {
    for (const shape s : {shape{3, 128}, shape{41, 384}, shape{17, 300}, shape{256, 1024}}) {
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        const auto w = gaussian(s.rows * s.cols, static_cast<unsigned>(3 * s.cols));
        std::vector<hlwq::half> wh(w.size());
        std::vector<hlwq::bfloat16> wb(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) wh[i] = hlwq::half(w[i]), wb[i] = hlwq::bfloat16(w[i]);
        for (int bits = 1; bits <= 8; ++bits) {
            CAPTURE(bits);
            check_quantize_matches(w, s.rows, s.cols, bits, {});
            check_quantize_matches(w, s.rows, s.cols, bits, {.sign_seed = 7});
            check_quantize_matches(wh, s.rows, s.cols, bits, {});
            check_quantize_matches(wb, s.rows, s.cols, bits, {});
        }
    }
    // Values on the boundaries: a block of ±1 and 0 rotates to small integers · norm⁻¹, and
    // coarse values make equal products; still the same codes.
    std::vector<float> coarse(8 * 256);
    for (std::size_t i = 0; i < coarse.size(); ++i) coarse[i] = static_cast<float>(static_cast<int>(i * 7 % 5) - 2);
    for (int bits = 1; bits <= 8; ++bits) check_quantize_matches(coarse, 8, 256, bits, {});
}

TEST_CASE("cuda quantize: bad input is reported like the CPU's") {
    auto w = gaussian(6 * 256, 5);
    w[4 * 256 + 17] = std::nanf("");
    w[5 * 256 + 3] = INFINITY;
    const hlwq::cuda::device_buffer<float> dw{std::span<const float>(w)};
    CHECK_THROWS_WITH_AS(hlwq::cuda::quantize(dw.data(), 6, 256, 4),
                         doctest::Contains("row 4, column 17 is NaN or infinite"), std::invalid_argument);
    std::vector<float> big(2 * 256, 1.0f);
    for (std::size_t c = 128; c < 256; ++c) big[256 + c] = 1e4f;  // norm 1e4 · sqrt(128) > 65504
    const hlwq::cuda::device_buffer<float> db{std::span<const float>(big)};
    CHECK_THROWS_WITH_AS(hlwq::cuda::quantize(db.data(), 2, 256, 4), doctest::Contains("block 1 of row 1"),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::cuda::quantize(db.data(), 2, 256, 4, {.block = 64}), doctest::Contains("128"),
                         std::invalid_argument);
    CHECK_THROWS_AS(hlwq::cuda::quantize(db.data(), 2, 256, 9), std::invalid_argument);
}

