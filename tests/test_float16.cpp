#include <hlwq/float16.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

using hlwq::bfloat16;
using hlwq::half;

TEST_CASE("half: known encodings") {
    CHECK(half(1.0f).bits == 0x3C00);
    CHECK(half(-2.0f).bits == 0xC000);
    CHECK(half(65504.0f).bits == 0x7BFF);
    CHECK(half(0.0f).bits == 0x0000);
    CHECK(half(-0.0f).bits == 0x8000);
    CHECK(half(std::ldexp(1.0f, -24)).bits == 0x0001);  // smallest subnormal
    CHECK(half(std::ldexp(1.0f, -14)).bits == 0x0400);  // smallest normal
    CHECK(half(65520.0f).bits == 0x7C00);                // rounds up to infinity
    CHECK(half(65519.0f).bits == 0x7BFF);
    CHECK(half(std::numeric_limits<float>::infinity()).bits == 0x7C00);
    CHECK(std::isnan(static_cast<float>(half(std::numeric_limits<float>::quiet_NaN()))));
    CHECK(half(std::ldexp(1.0f, -26)).bits == 0x0000);  // below half the smallest subnormal
}

TEST_CASE("half: round to nearest even on ties") {
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even mantissa (1.0).
    CHECK(half(1.0f + std::ldexp(1.0f, -11)).bits == 0x3C00);
    // 1 + 3·2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
    CHECK(half(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3C02);
    // Subnormal tie: 1.5 · 2^-24 → 2 · 2^-24 (even).
    CHECK(half(1.5f * std::ldexp(1.0f, -24)).bits == 0x0002);
    CHECK(half(0.5f * std::ldexp(1.0f, -24)).bits == 0x0000);
}

TEST_CASE("half: every finite half survives float and back") {
    for (std::uint32_t b = 0; b < 0x10000; ++b) {
        const half h = half::from_bits(static_cast<std::uint16_t>(b));
        const float f = static_cast<float>(h);
        if (std::isnan(f)) continue;
        REQUIRE(half(f).bits == b);
    }
}

TEST_CASE("half: matches the nearest representable value") {
    // Against a brute-force nearest search over a range of floats.
    for (float f = -70000.0f; f < 70000.0f; f += 12.345f) {
        const float got = static_cast<float>(half(f));
        const float a = std::abs(f);
        if (a >= 65520.0f) {
            CHECK(std::isinf(got));
            continue;
        }
        const int e = std::max(std::ilogb(a), -14);
        const float ulp = std::ldexp(1.0f, e - 10);
        CHECK(std::abs(got - f) <= ulp / 2);
    }
}

TEST_CASE("bfloat16: truncation with round to nearest even") {
    CHECK(bfloat16(1.0f).bits == 0x3F80);
    CHECK(bfloat16(-1.0f).bits == 0xBF80);
    CHECK(bfloat16(std::bit_cast<float>(0x3F808000u)).bits == 0x3F80);  // tie → even
    CHECK(bfloat16(std::bit_cast<float>(0x3F818000u)).bits == 0x3F82);  // tie → even
    CHECK(bfloat16(std::bit_cast<float>(0x3F808001u)).bits == 0x3F81);
    CHECK(std::isnan(static_cast<float>(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
    for (std::uint32_t b = 0; b < 0x10000; ++b) {
        const float f = static_cast<float>(bfloat16::from_bits(static_cast<std::uint16_t>(b)));
        if (!std::isnan(f)) REQUIRE(bfloat16(f).bits == b);
    }
}
