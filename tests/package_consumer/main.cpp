// SPDX-License-Identifier: MIT
// Smoke test for an installed hlwq: quantize a 4x256 matrix to 4 bits and back.
#include <hlwq/quantize.hpp>

#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>

int main() {
    constexpr std::size_t rows = 4, cols = 256;

    // Deterministic, platform-independent pseudo-normal values (sum of 4 uniforms, 32-bit LCG).
    std::uint32_t state = 12345u;
    auto uniform = [&state] {
        state = state * 1664525u + 1013904223u;
        return static_cast<float>(state >> 8) / 16777216.0f;  // [0, 1)
    };
    std::vector<float> w(rows * cols);
    for (float& x : w) x = (uniform() + uniform() + uniform() + uniform() - 2.0f) * 0.05f;

    auto q = hlwq::quantize(std::span<const float>(w), rows, cols, 4);
    std::vector<float> back = hlwq::dequantize(q);

    if (back.size() != w.size()) {
        std::fprintf(stderr, "size mismatch: %zu != %zu\n", back.size(), w.size());
        return 1;
    }
    double err = 0.0, ref = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double d = static_cast<double>(w[i]) - static_cast<double>(back[i]);
        err += d * d;
        ref += static_cast<double>(w[i]) * static_cast<double>(w[i]);
    }
    const double rel = err / ref;
    std::printf("hlwq package consumer: relative squared error %.5f\n", rel);
    return rel < 0.02 ? 0 : 1;
}
