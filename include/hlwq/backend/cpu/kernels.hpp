// SPDX-License-Identifier: MIT
/// @file backend/cpu/kernels.hpp
/// @brief SIMD CPU kernels on xsimd, one instantiation per instruction set (`backend::cpu<Arch>`).
///
/// Each kernel computes exactly what the scalar reference computes, in the same order of
/// floating-point operations, so results are bit-identical:
/// - the WHT keeps the reference's stage order; butterflies inside one register are written
///   as `fma(x, ±1, partner)`, which rounds once, like `a + b` and `a - b`;
/// - encoding counts boundaries below the value, as encode_value() does.
#pragma once

#include "../../codebook.hpp"
#include "../../packer.hpp"
#include "../backend.hpp"
#include "../scalar/kernels.hpp"

#include <xsimd/xsimd.hpp>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace hlwq {

namespace detail {
/// Swizzle pattern i -> i ^ H (the butterfly partner at stride H inside one register).
template <std::uint32_t H>
struct xor_lane {
    static constexpr std::uint32_t get(std::uint32_t i, std::uint32_t) noexcept { return i ^ H; }
};
}  // namespace detail

/// SIMD kernels for one xsimd architecture (see backend::cpu).
template <class Arch>
struct kernels<backend::cpu<Arch>> {
    /// Float register of this architecture.
    using batch = xsimd::batch<float, Arch>;
    /// Floats per register.
    static constexpr std::size_t width = batch::size;

    /// Unnormalized in-place WHT of a compile-time length N (a power of two): the whole
    /// block is held in registers, the stage order is the scalar reference's.
    template <std::size_t N>
    static void fwht(float* x) noexcept {
        if constexpr (N < width) {
            kernels<backend::scalar>::fwht(x, N);
        } else {
            constexpr std::size_t regs = N / width;
            std::array<batch, regs> r;
            for (std::size_t k = 0; k < regs; ++k) r[k] = batch::load_unaligned(x + k * width);
            in_register_stages<1>(r);
            for (std::size_t h = 1; h < regs; h *= 2)  // stride h * width
                for (std::size_t i = 0; i < regs; i += 2 * h)
                    for (std::size_t j = i; j < i + h; ++j) {
                        const batch a = r[j], b = r[j + h];
                        r[j] = a + b;
                        r[j + h] = a - b;
                    }
            for (std::size_t k = 0; k < regs; ++k) r[k].store_unaligned(x + k * width);
        }
    }

    /// Unnormalized in-place WHT of x[0..n) for a run-time power of two n (16..1024 use the
    /// register kernels, any other power of two the scalar one).
    static void fwht(float* x, std::size_t n) noexcept {
        switch (n) {
            case 16: return fwht<16>(x);
            case 32: return fwht<32>(x);
            case 64: return fwht<64>(x);
            case 128: return fwht<128>(x);
            case 256: return fwht<256>(x);
            case 512: return fwht<512>(x);
            case 1024: return fwht<1024>(x);
            default: return kernels<backend::scalar>::fwht(x, n);
        }
    }

    /// codes[i] = code of (y[i] * scale): counts the boundaries below the value, by compares
    /// against every boundary for up to 4 bits and by a gathered binary search above.
    template <int Bits>
    static void encode(const float* y, std::size_t n, float scale, const float* boundaries,
                       std::uint8_t* codes) noexcept {
        constexpr std::size_t levels = std::size_t{1} << Bits;
        const batch s(scale);
        alignas(64) std::int32_t k_out[width];
        std::size_t i = 0;
        for (; i + width <= n; i += width) {
            const batch v = batch::load_unaligned(y + i) * s;
            batch k(0.0f);  // the count, exact in float (<= 255)
            if constexpr (Bits <= 4) {
                for (std::size_t b = 0; b + 1 < levels; ++b)
                    k += xsimd::select(v > batch(boundaries[b]), batch(1.0f), batch(0.0f));
            } else {
                for (int step = levels / 2; step > 0; step /= 2) {
                    const float fs = static_cast<float>(step);
                    const batch b = batch::gather(boundaries, small_int(k + (fs - 1.0f)));
                    k += xsimd::select(v > b, batch(fs), batch(0.0f));
                }
            }
            small_int(k).store_aligned(k_out);
            for (std::size_t t = 0; t < width; ++t) codes[i + t] = static_cast<std::uint8_t>(k_out[t]);
        }
        kernels<backend::scalar>::encode<Bits>(y + i, n - i, scale, boundaries, codes + i);
    }

    /// out[i] = centroids[codes[i]] * scale (gather).
    static void decode(const std::uint8_t* codes, std::size_t n, const float* centroids,
                       float scale, float* out) noexcept {
        using ibatch = xsimd::batch<std::int32_t, Arch>;
        const batch s(scale);
        alignas(64) std::int32_t idx[width];
        std::size_t i = 0;
        for (; i + width <= n; i += width) {
            for (std::size_t t = 0; t < width; ++t) idx[t] = codes[i + t];
            (batch::gather(centroids, ibatch::load_aligned(idx)) * s).store_unaligned(out + i);
        }
        kernels<backend::scalar>::decode(codes + i, n - i, centroids, scale, out + i);
    }

    /// Unpacks n codes packed by packer<Bits>, a 64-bit word at a time (SWAR): a 4-bit plane
    /// byte holds codes i and i+16, so `& 0x0F` and `>> 4` give 8 consecutive codes each.
    template <int Bits>
    static void unpack(const std::uint8_t* packed, std::size_t n, std::uint8_t* codes) {
        using P = packer<Bits>;
        const std::size_t full = n / P::group;
        const std::uint8_t* src = packed;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((src = unpack_plane<P::planes[I].width, P::planes[I].shift, I == 0>(src, full, codes)),
             ...);
        }(std::make_index_sequence<P::planes.size()>());
        P::unpack({src, P::packed_bytes(n % P::group)}, {codes + full * P::group, n % P::group});
    }

private:
    static_assert(std::endian::native == std::endian::little, "SWAR unpack assumes little endian");

    /// The in-register WHT stages, strides H, 2H, ... < width: lane i pairs with lane i ^ H
    /// and becomes x[i] + x[i^H] (bit H clear) or x[i^H] - x[i] (bit H set).
    template <std::size_t H = 1, std::size_t R>
    static void in_register_stages(std::array<batch, R>& r) noexcept {
        if constexpr (H < width) {
            alignas(64) float sign[width];
            for (std::size_t i = 0; i < width; ++i) sign[i] = (i & H) ? -1.0f : 1.0f;
            const batch sg = batch::load_aligned(sign);
            for (auto& v : r) v = xsimd::fma(v, sg, partner<H>(v));
            in_register_stages<H * 2>(r);
        }
    }

    /// Lanes permuted i -> i ^ H. AVX-512 and AVX use in-lane permutes and 128-bit lane
    /// shuffles with immediates, cheaper than the variable permute of the generic swizzle
    /// (whose AVX-512 form GCC 12.2 also reports falsely as uninitialized, GCC bug 105593).
    template <std::size_t H>
    static batch partner(const batch& v) noexcept {
        [[maybe_unused]] constexpr int swap1 = 0b10110001, swap2 = 0b01001110;  // (1,0,3,2) and (2,3,0,1)
#if XSIMD_WITH_AVX512F
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            // Masked forms with an explicit source: the unmasked ones pass an undefined one.
            if constexpr (H == 1) return _mm512_mask_permute_ps(v, 0xFFFF, v, swap1);
            else if constexpr (H == 2) return _mm512_mask_permute_ps(v, 0xFFFF, v, swap2);
            else if constexpr (H == 4) return _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, swap1);
            else return _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, swap2);
        } else
#endif
#if XSIMD_WITH_AVX
        if constexpr (std::is_base_of_v<xsimd::avx, Arch>) {
            if constexpr (H == 1) return _mm256_permute_ps(v, swap1);
            else if constexpr (H == 2) return _mm256_permute_ps(v, swap2);
            else return _mm256_permute2f128_ps(v, v, 1);
        } else
#endif
        {
            return xsimd::swizzle(
                v, xsimd::make_batch_constant<xsimd::batch<std::uint32_t, Arch>, detail::xor_lane<H>>());
        }
    }

    /// Exact int32 of a float batch holding integers in [0, 2^23): adding 2^23 puts the
    /// integer in the mantissa bits. (Also avoids GCC 12.2's false -Wmaybe-uninitialized on
    /// _mm512_cvttps_epi32, bug 105593.)
    static xsimd::batch<std::int32_t, Arch> small_int(const batch& k) noexcept {
        constexpr float two23 = 8388608.0f;
        using ibatch = xsimd::batch<std::int32_t, Arch>;
        return xsimd::bitwise_cast<ibatch>(k + batch(two23)) -
               ibatch(std::bit_cast<std::int32_t>(two23));
    }

    static std::uint64_t load64(const std::uint8_t* p) noexcept {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        return v;
    }
    /// Writes 8 codes: dst[0..8) = v (First) or dst |= v << Shift.
    template <int Shift, bool First>
    static void put8(std::uint8_t* dst, std::uint64_t v) noexcept {
        if constexpr (!First) v = load64(dst) | (v << Shift);
        std::memcpy(dst, &v, 8);
    }
    /// Unpacks one Width-bit plane of `groups` full groups into codes; returns the next plane.
    template <int Width, int Shift, bool First>
    static const std::uint8_t* unpack_plane(const std::uint8_t* src, std::size_t groups,
                                            std::uint8_t* codes) noexcept {
        constexpr std::uint64_t ones = 0x0101010101010101ull;
        for (std::size_t g = 0; g < groups; ++g) {
            std::uint8_t* c = codes + g * 32;
            if constexpr (Width == 8) {
                for (int q = 0; q < 4; ++q) put8<Shift, First>(c + 8 * q, load64(src + 8 * q));
            } else if constexpr (Width == 4) {
                const std::uint64_t w0 = load64(src), w1 = load64(src + 8);
                put8<Shift, First>(c, w0 & 0x0F * ones);
                put8<Shift, First>(c + 8, w1 & 0x0F * ones);
                put8<Shift, First>(c + 16, (w0 >> 4) & 0x0F * ones);
                put8<Shift, First>(c + 24, (w1 >> 4) & 0x0F * ones);
            } else if constexpr (Width == 2) {
                const std::uint64_t w = load64(src);
                for (int j = 0; j < 4; ++j) put8<Shift, First>(c + 8 * j, (w >> (2 * j)) & 0x03 * ones);
            } else {
                // Spread the 8 bits of one byte over 8 bytes: replicate, keep bit j in byte j,
                // then turn each non-zero byte into 1.
                for (int i = 0; i < 4; ++i) {
                    const std::uint64_t spread = (src[i] * ones) & 0x8040201008040201ull;
                    put8<Shift, First>(c + 8 * i, ((spread + 0x7F * ones) >> 7) & ones);
                }
            }
            src += 32 * Width / 8;
        }
        return src;
    }
};

}  // namespace hlwq
