// SPDX-License-Identifier: MIT
/// @file float16.hpp
/// @brief 16-bit storage floats: IEEE binary16 (`hlwq::half`) and bfloat16 (`hlwq::bfloat16`).
///
/// These are storage types only (as in checkpoints): convert to float to compute. Conversions
/// round to nearest, ties to even, and keep NaN and infinities, bit-exactly like the hardware
/// instructions (F16C `vcvtps2ph` with rounding mode 0, AVX512-BF16 `vcvtneps2bf16`).
#pragma once

#include <bit>
#include <cstdint>

namespace hlwq {

/// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits. Largest finite value 65504.
struct half {
    std::uint16_t bits = 0;  ///< Raw bit pattern.

    constexpr half() = default;
    /// Rounds `f` to the nearest binary16 (ties to even); overflow gives ±inf.
    constexpr explicit half(float f) noexcept : bits(from_float(f)) {}
    /// The exact float value.
    constexpr explicit operator float() const noexcept { return to_float(bits); }

    /// Builds a half from its raw bits.
    static constexpr half from_bits(std::uint16_t b) noexcept {
        half h;
        h.bits = b;
        return h;
    }
    /// Largest finite binary16 value.
    static constexpr float max_finite = 65504.0f;

    /// Exact binary16 → binary32 conversion.
    static constexpr float to_float(std::uint16_t h) noexcept {
        const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
        const std::uint32_t exp = (h >> 10) & 0x1fu;
        std::uint32_t mant = h & 0x3ffu;
        if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
        if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
        if (mant == 0) return std::bit_cast<float>(sign);
        // Subnormal: value = mant * 2^-24, exact in binary32.
        const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }

    /// binary32 → binary16, round to nearest even.
    static constexpr std::uint16_t from_float(float f) noexcept {
        const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
        const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
        const std::uint32_t ax = x & 0x7fffffffu;
        if (ax >= 0x7f800000u)  // inf or NaN: keep a quiet NaN payload bit
            return sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u);
        if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
        if (ax < 0x38800000u) {
            // Result is subnormal (or zero): value / 2^-24 rounded to nearest even integer.
            if (ax < 0x33000000u) return sign;  // below half of the smallest subnormal
            const std::uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
            const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24
            std::uint32_t r = mant >> shift;
            const std::uint32_t rem = mant & ((1u << shift) - 1u);
            const std::uint32_t halfway = 1u << (shift - 1);
            if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
            return sign | static_cast<std::uint16_t>(r);
        }
        // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
        std::uint32_t r = ax - 0x38000000u;  // exponent bias 127 -> 15
        r += 0x0fffu + ((r >> 13) & 1u);
        return sign | static_cast<std::uint16_t>(r >> 13);
    }
};

/// bfloat16: the upper 16 bits of a binary32.
struct bfloat16 {
    std::uint16_t bits = 0;  ///< Raw bit pattern.

    constexpr bfloat16() = default;
    /// Rounds `f` to the nearest bfloat16 (ties to even); NaN stays NaN.
    constexpr explicit bfloat16(float f) noexcept : bits(from_float(f)) {}
    /// The exact float value.
    constexpr explicit operator float() const noexcept { return to_float(bits); }

    /// Builds a bfloat16 from its raw bits.
    static constexpr bfloat16 from_bits(std::uint16_t b) noexcept {
        bfloat16 h;
        h.bits = b;
        return h;
    }
    /// Exact bfloat16 → binary32 conversion.
    static constexpr float to_float(std::uint16_t b) noexcept {
        return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
    }
    /// binary32 → bfloat16, round to nearest even.
    static constexpr std::uint16_t from_float(float f) noexcept {
        const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
        if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
        return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
};

/// Widens any of the supported element types to float.
constexpr float to_float(float v) noexcept { return v; }
/// @copydoc to_float(float)
constexpr float to_float(half v) noexcept { return static_cast<float>(v); }
/// @copydoc to_float(float)
constexpr float to_float(bfloat16 v) noexcept { return static_cast<float>(v); }

}  // namespace hlwq
