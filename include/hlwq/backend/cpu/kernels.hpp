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
#include "../../float16.hpp"
#include "../../packer.hpp"
#include "../backend.hpp"
#include "../scalar/kernels.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

/// AVX-512 VNNI, VBMI (byte permutes and vpmultishiftqb) and GFNI (bit maps of a byte), the
/// instructions of the int8-activation product (every Intel core with VNNI and VBMI has GFNI,
/// as has Zen 4).
#if defined(__AVX512VNNI__) && defined(__AVX512VBMI__) && defined(__AVX512BW__) && defined(__GFNI__)
#define HLWQ_CPU_HAS_VNNI 1
#else
#define HLWQ_CPU_HAS_VNNI 0
#endif

/// Asks the compiler to unroll the next loop n times. Empty for nvcc's front end, which compiles
/// these host kernels when a CUDA source includes them and rejects the GCC pragma.
#if defined(__CUDACC__)
#define HLWQ_UNROLL(n)
#else
#define HLWQ_UNROLL(n) _Pragma(HLWQ_UNROLL_TEXT(GCC unroll n))
/// Turns the pragma's words into the string that _Pragma takes (HLWQ_UNROLL's helper).
#define HLWQ_UNROLL_TEXT(x) #x
#endif

/// AVX2 with FMA and F16C, the instructions of the AVX2 int8-activation product.
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HLWQ_CPU_HAS_AVX2_INT8 1
#else
#define HLWQ_CPU_HAS_AVX2_INT8 0
#endif

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

    // AVX-512 intrinsics below use their masked forms with an explicit source: GCC 12.2's
    // unmasked ones pass an undefined register that -Wmaybe-uninitialized reports wherever
    // they are inlined (GCC bug 105593).

    /// codes[i] = code of (y[i] * scale). Up to 4 bits: count the boundaries below the value
    /// with one compare per boundary. 5 bits on AVX-512: binary search in the two registers
    /// holding the 31 boundaries. Wider on AVX-512/AVX2: binary search with hardware gathers
    /// (xsimd 8's gather is emulated lane by lane, hence the intrinsics). Otherwise scalar.
    template <int Bits>
    static void encode(const float* y, std::size_t n, float scale, const float* boundaries,
                       std::uint8_t* codes) noexcept {
        constexpr std::size_t levels = std::size_t{1} << Bits;
        std::size_t i = 0;
        if constexpr (Bits <= 4) {
            const batch s(scale);
            alignas(64) std::int32_t k_out[width];
            for (; i + width <= n; i += width) {
                const batch v = batch::load_unaligned(y + i) * s;
                batch k(0.0f);  // the count, exact in float (<= 15)
                for (std::size_t b = 0; b + 1 < levels; ++b)
                    k += xsimd::select(v > batch(boundaries[b]), batch(1.0f), batch(0.0f));
                small_int(k).store_aligned(k_out);
                for (std::size_t t = 0; t < width; ++t) codes[i + t] = static_cast<std::uint8_t>(k_out[t]);
            }
        }
#if XSIMD_WITH_AVX512F
        if constexpr (Bits == 5 && std::is_base_of_v<xsimd::avx512f, Arch>) {
            alignas(64) float table[32] = {};
            std::copy_n(boundaries, levels - 1, table);
            const __m512 t0 = _mm512_load_ps(table), t1 = _mm512_load_ps(table + 16);
            const __m512 s = _mm512_set1_ps(scale);
            for (; i + 16 <= n; i += 16) {
                const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(y + i), s);
                __m512i k = _mm512_setzero_si512();
                for (int step = 16; step > 0; step /= 2) {
                    const __m512 b = _mm512_permutex2var_ps(t0, _mm512_add_epi32(k, _mm512_set1_epi32(step - 1)), t1);
                    k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(v, b, _CMP_GT_OQ), k, _mm512_set1_epi32(step));
                }
                _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_mask_cvtepi32_epi8(_mm_setzero_si128(), 0xFFFF, k));
            }
        }
#endif
#if XSIMD_WITH_AVX512F
        if constexpr (Bits >= 6 && std::is_base_of_v<xsimd::avx512f, Arch>) {
            const __m512 s = _mm512_set1_ps(scale);
            for (; i + 16 <= n; i += 16) {
                const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(y + i), s);
                __m512i k = _mm512_setzero_si512();
                for (int step = levels / 2; step > 0; step /= 2) {
                    const __m512i at = _mm512_add_epi32(k, _mm512_set1_epi32(step - 1));
                    const __m512 b = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, at, boundaries, 4);
                    k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(v, b, _CMP_GT_OQ), k, _mm512_set1_epi32(step));
                }
                _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i),
                                 _mm512_mask_cvtepi32_epi8(_mm_setzero_si128(), 0xFFFF, k));
            }
        }
#endif
#if XSIMD_WITH_AVX2
        if constexpr (Bits >= 5 && std::is_base_of_v<xsimd::avx2, Arch>) {
            const __m256 s = _mm256_set1_ps(scale);
            const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
            alignas(32) std::int32_t k_out[8];
            for (; i + 8 <= n; i += 8) {
                const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(y + i), s);
                __m256i k = _mm256_setzero_si256();
                for (int step = levels / 2; step > 0; step /= 2) {
                    const __m256i at = _mm256_add_epi32(k, _mm256_set1_epi32(step - 1));
                    const __m256 b = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), boundaries, at, all, 4);
                    const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(v, b, _CMP_GT_OQ));
                    k = _mm256_add_epi32(k, _mm256_and_si256(gt, _mm256_set1_epi32(step)));
                }
                _mm256_store_si256(reinterpret_cast<__m256i*>(k_out), k);
                for (int t = 0; t < 8; ++t) codes[i + t] = static_cast<std::uint8_t>(k_out[t]);
            }
        }
#endif
        kernels<backend::scalar>::encode<Bits>(y + i, n - i, scale, boundaries, codes + i);
    }

    /// out[i] = centroids[codes[i]] * scale: a lookup in registers holding the table
    /// (AVX-512 up to 5 bits, AVX2 up to 4), plain loads otherwise.
    template <int Bits>
    static void decode(const std::uint8_t* codes, std::size_t n, const float* centroids,
                       float scale, float* out) noexcept {
        [[maybe_unused]] constexpr std::size_t levels = std::size_t{1} << Bits;
        std::size_t i = 0;
#if XSIMD_WITH_AVX512F
        if constexpr (Bits <= 5 && std::is_base_of_v<xsimd::avx512f, Arch>) {
            alignas(64) float table[32] = {};
            std::copy_n(centroids, levels, table);
            const __m512 t0 = _mm512_load_ps(table), t1 = _mm512_load_ps(table + 16);
            const __m512 s = _mm512_set1_ps(scale);
            for (; i + 16 <= n; i += 16) {
                const __m512i k = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
                _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_permutex2var_ps(t0, k, t1), s));
            }
        }
#endif
#if XSIMD_WITH_AVX2
        if constexpr (Bits <= 4 && std::is_base_of_v<xsimd::avx2, Arch>) {
            alignas(32) float table[16] = {};
            std::copy_n(centroids, levels, table);
            const __m256 t0 = _mm256_load_ps(table), t1 = _mm256_load_ps(table + 8);
            const __m256 s = _mm256_set1_ps(scale);
            for (; i + 8 <= n; i += 8) {
                std::uint64_t eight;
                std::memcpy(&eight, codes + i, 8);
                const __m256i k = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(eight)));
                // Look up in both halves; bit 3, moved to the sign, picks one.
                const __m256 hi_half = _mm256_castsi256_ps(_mm256_slli_epi32(k, 28));
                const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, k),
                                                  _mm256_permutevar8x32_ps(t1, k), hi_half);
                _mm256_storeu_ps(out + i, _mm256_mul_ps(v, s));
            }
        }
#endif
        kernels<backend::scalar>::decode<Bits>(codes + i, n - i, centroids, scale, out + i);
    }

    /// Σ a[i] b[i] with four independent accumulators.
    static float dot(const float* a, const float* b, std::size_t n) noexcept {
        batch acc[4] = {batch(0.0f), batch(0.0f), batch(0.0f), batch(0.0f)};
        std::size_t i = 0;
        for (; i + 4 * width <= n; i += 4 * width)
            for (std::size_t u = 0; u < 4; ++u)
                acc[u] = xsimd::fma(batch::load_unaligned(a + i + u * width), batch::load_unaligned(b + i + u * width), acc[u]);
        for (; i + width <= n; i += width)
            acc[0] = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), acc[0]);
        float s = xsimd::hadd((acc[0] + acc[1]) + (acc[2] + acc[3]));
        for (; i < n; ++i) s += a[i] * b[i];
        return s;
    }

    /// y[i·ldy + r] = Σ_k a[r·len + k] · x[i·len + k] for r < rows, i < n: the dot products
    /// of a few decoded weight rows with a batch of activations. Register-blocked 4 rows ×
    /// 4 tokens (16 accumulators: 8 loads feed 16 multiply-adds); len is a multiple of width.
    static void dot_tile(const float* a, std::size_t rows, const float* x, std::size_t n, std::size_t len, float* y,
                         std::size_t ldy) noexcept {
        std::size_t i = 0;
        if (rows == 4 && len % width == 0) {
            for (; i + 4 <= n; i += 4) {
                batch acc[4][4];
                for (auto& row : acc)
                    for (auto& v : row) v = batch(0.0f);
                const float* xi = x + i * len;
                for (std::size_t k = 0; k < len; k += width) {
                    batch av[4], xv[4];
                    for (std::size_t r = 0; r < 4; ++r) av[r] = batch::load_unaligned(a + r * len + k);
                    for (std::size_t t = 0; t < 4; ++t) xv[t] = batch::load_unaligned(xi + t * len + k);
                    for (std::size_t r = 0; r < 4; ++r)
                        for (std::size_t t = 0; t < 4; ++t) acc[r][t] = xsimd::fma(av[r], xv[t], acc[r][t]);
                }
                for (std::size_t r = 0; r < 4; ++r)
                    for (std::size_t t = 0; t < 4; ++t) y[(i + t) * ldy + r] = xsimd::hadd(acc[r][t]);
            }
        }
        for (; i < n; ++i)
            for (std::size_t r = 0; r < rows; ++r) y[i * ldy + r] = dot(a + r * len, x + i * len, len);
    }

    /// Puts one block of rotated activations in the order dot_row<Bits> reads codes in, on
    /// AVX-512. 2 and 3 bits: each 64 values become 4 slots × 16 lanes, lane l of slot j
    /// holding value 8j + l (l < 8) or 32 + 8j + (l - 8), the codes one shift of 16 bytes of
    /// a 2-bit plane yields. Identity otherwise. (Tried for 4 bits: 128 codes in one register,
    /// nibble k of each lane by shifts instead of zero-extending 16 bytes: 1.6x slower here.)
    template <int Bits>
    static void order_activations(float* x, std::size_t block) noexcept {
#if XSIMD_WITH_AVX512F
        if constexpr ((Bits == 2 || Bits == 3) && std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (block % 64 != 0) return;
            float chunk[64];
            for (std::size_t p = 0; p < block; p += 64) {
                std::copy_n(x + p, 64, chunk);
                for (std::size_t j = 0; j < 4; ++j)
                    for (std::size_t l = 0; l < 16; ++l) x[p + 16 * j + l] = chunk[l < 8 ? 8 * j + l : 24 + 8 * j + l];
            }
        }
#endif
        (void)x;
        (void)block;
    }

    /// Σ_b (norms[b] / block) · Σ_i centroids[code_bi] · x[b·block + i]: one row of a
    /// quantized matrix against rotated activations (`blocks` blocks of `block` packed codes,
    /// block <= 1024). Each block's scale is folded into the centroid table (or the decoded
    /// values), so one vector accumulator runs along the whole row and is reduced once.
    /// AVX-512, 4 and 5 bits: straight from the packed bytes, with the centroid table in
    /// registers — 16 bytes of a 4-bit plane hold codes t and t+16 of a group; a byte
    /// zero-extended to a lane is an index whose low nibble `permutexvar` reads (code t) and
    /// whose high nibble a shift brings down (code t+16); the 1-bit plane of 5 bits is a
    /// lane mask that adds 16. 2 and 3 bits read x in the order of order_activations(); 6 bits
    /// look up 64 centroids in four registers. AVX2, 2 to 4 bits: the same from 8 bytes at a
    /// time with 8-entry permutes. Otherwise: unpack, decode (register lookups where decode
    /// has them) and multiply-add.
    template <int Bits>
    static float dot_row(const std::uint8_t* codes, const half* norms, std::size_t blocks, std::size_t block,
                         const float* centroids, const float* x) noexcept {
        const float inv_block = 1.0f / static_cast<float>(block);
        const std::size_t block_bytes = block * Bits / 8;
#if XSIMD_WITH_AVX512F
        if constexpr ((Bits == 4 || Bits == 5) && std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (block % 32 == 0) {
                alignas(64) float table[32] = {};
                std::copy_n(centroids, std::size_t{1} << Bits, table);
                const __m512 t0 = _mm512_load_ps(table), t1 = _mm512_load_ps(table + 16);
                const __m512i low4 = _mm512_set1_epi32(15), high = _mm512_set1_epi32(16);
                __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
                for (std::size_t b = 0; b < blocks; ++b, codes += block_bytes, x += block) {
                    const __m512 s = _mm512_set1_ps(static_cast<float>(norms[b]) * inv_block);
                    const __m512 s0 = _mm512_mul_ps(t0, s);
                    const std::uint8_t* plane1 = codes + block / 2;  // 5 bits: the 1-bit plane
                    for (std::size_t g = 0; g < block / 32; ++g) {
                        const __m512i bytes = _mm512_maskz_cvtepu8_epi32(
                            0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * g)));
                        __m512 lo, hi;
                        if constexpr (Bits == 4) {
                            lo = _mm512_mask_permutexvar_ps(s0, 0xFFFF, bytes, s0);
                            hi = _mm512_mask_permutexvar_ps(s0, 0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, bytes, 4), s0);
                        } else {
                            const __m512 s1 = _mm512_mul_ps(t1, s);
                            std::uint32_t word;
                            std::memcpy(&word, plane1 + 4 * g, 4);
                            __m512i ilo = _mm512_and_si512(bytes, low4);
                            __m512i ihi = _mm512_maskz_srli_epi32(0xFFFF, bytes, 4);
                            ilo = _mm512_mask_or_epi32(ilo, static_cast<__mmask16>(word), ilo, high);
                            ihi = _mm512_mask_or_epi32(ihi, static_cast<__mmask16>(word >> 16), ihi, high);
                            lo = _mm512_permutex2var_ps(s0, ilo, s1);
                            hi = _mm512_permutex2var_ps(s0, ihi, s1);
                        }
                        acc0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + 32 * g), acc0);
                        acc1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 32 * g + 16), acc1);
                    }
                }
                return xsimd::hadd(batch(_mm512_add_ps(acc0, acc1)));
            }
        }
#endif
#if XSIMD_WITH_AVX512F
        if constexpr ((Bits == 2 || Bits == 3) && std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (block % 64 == 0) {
                // x was put in the order order_activations() gives: lane l of slot j of a pair
                // of groups holds code 8j + l (l < 8) or 32 + 8j + (l - 8).
                alignas(64) float table[16];
                for (int k = 0; k < 16; ++k) table[k] = centroids[k & ((1 << Bits) - 1)];  // 2 bits: the shifted index keeps higher bits
                const __m512 t = _mm512_load_ps(table);
                const __m512i low2 = _mm512_set1_epi32(3), bit2 = _mm512_set1_epi32(4);
                __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
                for (std::size_t b = 0; b < blocks; ++b, codes += block_bytes, x += block) {
                    const __m512 st = _mm512_mul_ps(t, _mm512_set1_ps(static_cast<float>(norms[b]) * inv_block));
                    const std::uint8_t* plane1 = codes + block / 4;  // 3 bits: the 1-bit plane
                    for (std::size_t p = 0; p < block / 64; ++p) {
                        const __m512i bytes = _mm512_maskz_cvtepu8_epi32(
                            0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * p)));
                        [[maybe_unused]] std::uint32_t w0 = 0, w1 = 0;
                        if constexpr (Bits == 3) {
                            std::memcpy(&w0, plane1 + 8 * p, 4);
                            std::memcpy(&w1, plane1 + 8 * p + 4, 4);
                        }
                        for (int j = 0; j < 4; ++j) {
                            __m512i idx = _mm512_maskz_srli_epi32(0xFFFF, bytes, static_cast<unsigned>(2 * j));
                            if constexpr (Bits == 3) {
                                const auto m = static_cast<__mmask16>(((w0 >> (8 * j)) & 0xFF) | (((w1 >> (8 * j)) & 0xFF) << 8));
                                idx = _mm512_mask_or_epi32(_mm512_and_si512(idx, low2), m, _mm512_and_si512(idx, low2), bit2);
                            }
                            const __m512 v = _mm512_mask_permutexvar_ps(st, 0xFFFF, idx, st);
                            if (j % 2 == 0) acc0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 64 * p + 16 * j), acc0);
                            else acc1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 64 * p + 16 * j), acc1);
                        }
                    }
                }
                return xsimd::hadd(batch(_mm512_add_ps(acc0, acc1)));
            }
        }
#endif
#if XSIMD_WITH_AVX512F
        if constexpr (Bits == 6 && std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (block % 32 == 0) {
                // Low nibble from the 4-bit plane as for 4 bits; bits 4-5 from the 2-bit plane,
                // whose byte i holds codes i, i+8, i+16, i+24 at shifts 0, 2, 4, 6: broadcast
                // its 8 bytes to 16 lanes and shift each lane by its slot. The 64 centroids
                // are 4 registers: two 32-entry permutes and a blend on bit 5.
                alignas(64) float table[64];
                std::copy_n(centroids, 64, table);
                const __m512 t0 = _mm512_load_ps(table), t1 = _mm512_load_ps(table + 16),
                             t2 = _mm512_load_ps(table + 32), t3 = _mm512_load_ps(table + 48);
                const __m512i low4 = _mm512_set1_epi32(15), low2 = _mm512_set1_epi32(3), bit5 = _mm512_set1_epi32(32);
                const __m512i shift_lo = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
                const __m512i shift_hi = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
                __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
                for (std::size_t b = 0; b < blocks; ++b, codes += block_bytes, x += block) {
                    const __m512 s = _mm512_set1_ps(static_cast<float>(norms[b]) * inv_block);
                    const __m512 s0 = _mm512_mul_ps(t0, s), s1 = _mm512_mul_ps(t1, s), s2 = _mm512_mul_ps(t2, s),
                                 s3 = _mm512_mul_ps(t3, s);
                    const std::uint8_t* plane2 = codes + block / 2;
                    auto lookup = [&](__m512i idx) {
                        const __mmask16 upper = _mm512_test_epi32_mask(idx, bit5);
                        return _mm512_mask_blend_ps(upper, _mm512_permutex2var_ps(s0, idx, s1),
                                                    _mm512_permutex2var_ps(s2, idx, s3));
                    };
                    for (std::size_t g = 0; g < block / 32; ++g) {
                        const __m512i bytes = _mm512_maskz_cvtepu8_epi32(
                            0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * g)));
                        long long word;
                        std::memcpy(&word, plane2 + 8 * g, 8);
                        const __m512i hi2 = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_set1_epi64x(word));
                        const __m512i up_lo = _mm512_and_si512(_mm512_maskz_srlv_epi32(0xFFFF, hi2, shift_lo), low2);
                        const __m512i up_hi = _mm512_and_si512(_mm512_maskz_srlv_epi32(0xFFFF, hi2, shift_hi), low2);
                        const __m512i ilo = _mm512_or_si512(_mm512_and_si512(bytes, low4), _mm512_maskz_slli_epi32(0xFFFF, up_lo, 4));
                        const __m512i ihi = _mm512_or_si512(_mm512_maskz_srli_epi32(0xFFFF, bytes, 4),
                                                            _mm512_maskz_slli_epi32(0xFFFF, up_hi, 4));
                        acc0 = _mm512_fmadd_ps(lookup(ilo), _mm512_loadu_ps(x + 32 * g), acc0);
                        acc1 = _mm512_fmadd_ps(lookup(ihi), _mm512_loadu_ps(x + 32 * g + 16), acc1);
                    }
                }
                return xsimd::hadd(batch(_mm512_add_ps(acc0, acc1)));
            }
        }
#endif
#if XSIMD_WITH_AVX2
        if constexpr (Bits >= 2 && Bits <= 4 && std::is_base_of_v<xsimd::avx2, Arch>) {
            if (block % 32 == 0) {
                // 8 packed bytes zero-extended to 8 lanes. 2-bit plane: byte i holds codes
                // i, i+8, i+16, i+24, so `>> 2j` gives codes 8j..8j+7 in order; the table
                // repeats the 4 centroids and vpermps reads 3 index bits. 3 bits: byte j of
                // the 1-bit plane, spread to a lane mask, adds 4. 4 bits: bytes i hold codes
                // i and i+16; two 8-entry permutes and a blend on bit 3.
                alignas(32) float table[16];
                for (int k = 0; k < 16; ++k) table[k] = centroids[k & ((1 << Bits) - 1)];
                const __m256 t0 = _mm256_load_ps(table), t1 = _mm256_load_ps(table + 8);
                const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
                __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
                auto bytes8 = [](const std::uint8_t* p) {
                    long long v;
                    std::memcpy(&v, p, 8);
                    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
                };
                auto lookup16 = [](__m256 lo, __m256 hi, __m256i idx, __m256i bit3_in_sign) {
                    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                            _mm256_castsi256_ps(bit3_in_sign));
                };
                for (std::size_t b = 0; b < blocks; ++b, codes += block_bytes, x += block) {
                    const __m256 s = _mm256_set1_ps(static_cast<float>(norms[b]) * inv_block);
                    const __m256 s0 = _mm256_mul_ps(t0, s), s1 = _mm256_mul_ps(t1, s);
                    for (std::size_t g = 0; g < block / 32; ++g) {
                        const float* xg = x + 32 * g;
                        if constexpr (Bits == 4) {
                            for (int h = 0; h < 2; ++h) {  // bytes 8h..8h+7: codes 8h+i and 16+8h+i
                                const __m256i e = bytes8(codes + 16 * g + 8 * h);
                                const __m256 lo = lookup16(s0, s1, e, _mm256_slli_epi32(e, 28));
                                const __m256 hi = lookup16(s0, s1, _mm256_srli_epi32(e, 4), _mm256_slli_epi32(e, 24));
                                acc0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xg + 8 * h), acc0);
                                acc1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xg + 16 + 8 * h), acc1);
                            }
                        } else {
                            const __m256i e = bytes8(codes + 8 * g);
                            [[maybe_unused]] std::uint32_t word = 0;
                            if constexpr (Bits == 3) std::memcpy(&word, codes + block / 4 + 4 * g, 4);
                            for (int j = 0; j < 4; ++j) {
                                __m256i idx = _mm256_srli_epi32(e, 2 * j);
                                if constexpr (Bits == 3) {
                                    const __m256i m = _mm256_cmpeq_epi32(
                                        _mm256_and_si256(_mm256_set1_epi32(static_cast<int>((word >> (8 * j)) & 0xFF)), lane_bit),
                                        lane_bit);
                                    idx = _mm256_or_si256(_mm256_and_si256(idx, _mm256_set1_epi32(3)),
                                                          _mm256_and_si256(m, _mm256_set1_epi32(4)));
                                }
                                const __m256 v = _mm256_permutevar8x32_ps(s0, idx);
                                if (j % 2 == 0) acc0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(xg + 8 * j), acc0);
                                else acc1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(xg + 8 * j), acc1);
                            }
                        }
                    }
                }
                return xsimd::hadd(batch(_mm256_add_ps(acc0, acc1)));
            }
        }
#endif
        alignas(64) std::uint8_t unpacked[1024];
        alignas(64) float values[1024];
        batch acc(0.0f);
        float tail = 0.0f;
        const std::size_t whole = block / width * width;
        for (std::size_t b = 0; b < blocks; ++b, codes += block_bytes, x += block) {
            unpack<Bits>(codes, block, unpacked);
            decode<Bits>(unpacked, block, centroids, static_cast<float>(norms[b]) * inv_block, values);
            for (std::size_t i = 0; i < whole; i += width)
                acc = xsimd::fma(batch::load_aligned(values + i), batch::load_unaligned(x + i), acc);
            for (std::size_t i = whole; i < block; ++i) tail += values[i] * x[i];
        }
        return xsimd::hadd(acc) + tail;
    }

    /// out[i] = centroids[code i] for d <= 1024 codes packed by packer<Bits>. AVX-512, 2..4
    /// bits, d a multiple of 32: straight from the packed planes into registers, the codes'
    /// low bits indexing a 16-entry table with one permute (no unpacked bytes in between).
    /// Otherwise unpack, then decode.
    template <int Bits>
    static void decode_packed(const std::uint8_t* packed, std::size_t d, const float* centroids, float* out) noexcept {
#if XSIMD_WITH_AVX512F
        if constexpr (Bits >= 2 && Bits <= 4 && std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (d % 32 == 0) {
                const std::size_t groups = d / 32;
                constexpr __mmask16 all = 0xFFFF;
                if constexpr (Bits == 4) {
                    // Byte i of a group = c_i | c_{i+16} << 4; the permute reads index bits 0..3.
                    const __m512 t = _mm512_loadu_ps(centroids);
                    for (std::size_t g = 0; g < groups; ++g) {
                        const __m512i b = _mm512_maskz_cvtepu8_epi32(
                            all, _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + 16 * g)));
                        _mm512_storeu_ps(out + 32 * g, _mm512_maskz_permutexvar_ps(all, b, t));
                        _mm512_storeu_ps(out + 32 * g + 16,
                                         _mm512_maskz_permutexvar_ps(all, _mm512_maskz_srli_epi32(all, b, 4), t));
                    }
                } else {
                    // 2-bit plane, byte i = c_i | c_{i+8} << 2 | c_{i+16} << 4 | c_{i+24} << 6: the
                    // group's 8 bytes twice in 16 lanes, shifted by 0/2 (codes 0..15) or 4/6
                    // (16..31). Bits above the code's two stay in the index, so the table repeats
                    // every 4 entries. For 3 bits, the 1-bit plane (a 32-bit lane mask) becomes
                    // index bit 2 (bits 0..1 kept, bit 3 ignored: the table repeats every 8).
                    alignas(64) float table[16];
                    for (int k = 0; k < 16; ++k) table[k] = centroids[k & ((1 << Bits) - 1)];
                    const __m512 t = _mm512_load_ps(table);
                    const __m512i sh0 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
                    const __m512i sh1 = _mm512_add_epi32(sh0, _mm512_set1_epi32(4));
                    [[maybe_unused]] const __m512i three = _mm512_set1_epi32(3), four = _mm512_set1_epi32(4);
                    [[maybe_unused]] const std::uint8_t* plane1 = packed + 8 * groups;
                    for (std::size_t g = 0; g < groups; ++g) {
                        long long eight;
                        std::memcpy(&eight, packed + 8 * g, 8);
                        const __m512i b = _mm512_maskz_cvtepu8_epi32(all, _mm_set1_epi64x(eight));
                        __m512i k0 = _mm512_maskz_srlv_epi32(all, b, sh0);
                        __m512i k1 = _mm512_maskz_srlv_epi32(all, b, sh1);
                        if constexpr (Bits == 3) {
                            std::uint32_t high;
                            std::memcpy(&high, plane1 + 4 * g, 4);
                            // (k & 3) | (4 where the lane's high bit is set): 0xEA is (A & B) | C.
                            k0 = _mm512_ternarylogic_epi32(k0, three, _mm512_maskz_mov_epi32(static_cast<__mmask16>(high), four), 0xEA);
                            k1 = _mm512_ternarylogic_epi32(k1, three, _mm512_maskz_mov_epi32(static_cast<__mmask16>(high >> 16), four), 0xEA);
                        }
                        _mm512_storeu_ps(out + 32 * g, _mm512_maskz_permutexvar_ps(all, k0, t));
                        _mm512_storeu_ps(out + 32 * g + 16, _mm512_maskz_permutexvar_ps(all, k1, t));
                    }
                }
                return;
            }
        }
#endif
        alignas(64) std::uint8_t codes[1024];
        unpack<Bits>(packed, d, codes);
        decode<Bits>(codes, d, centroids, 1.0f, out);
    }

    /// quantize_int8 of the scalar reference, the same values, a register at a time (n a
    /// multiple of the width; else the reference): max|x| in lanes (max is exact in any
    /// order), the rounding by the conversion instruction (the default mode rounds to
    /// nearest even, as nearbyint does).
    static float quantize_int8(const float* x, std::size_t n, std::int8_t* q, std::int32_t& sum) noexcept {
        if (n % width != 0) return kernels<backend::scalar>::quantize_int8(x, n, q, sum);
        batch m(0.0f);
        for (std::size_t i = 0; i < n; i += width)
            m = xsimd::max(xsimd::abs(batch::load_unaligned(x + i)), m);  // (m second: a NaN is passed over, as std::max does)
        alignas(64) float lanes[width];
        m.store_aligned(lanes);
        float largest = 0.0f;
        for (float v : lanes) largest = std::max(largest, v);
        const batch inv(largest > 0.0f ? 127.0f / largest : 0.0f);
        using ints = xsimd::batch<std::int32_t, Arch>;
        ints s(0);
        for (std::size_t i = 0; i < n; i += width) {
            const ints v = xsimd::nearbyint_as_int(batch::load_unaligned(x + i) * inv);
            s += v;
            narrow_to_int8(v, q + i);
        }
        sum = xsimd::hadd(s);
        return largest;
    }

    /// Puts one block of int8 activations in the order dot_row_int8<Bits> reads codes in.
    /// AVX-512 VNNI, 2 to 6 bits and blocks of 128k: each 128 values in the order of
    /// fused_slot_code(). AVX2,
    /// 4 and 5 bits, blocks of 64k up to 1024: each 64 in the order of avx2_slot_code().
    /// Identity otherwise.
    template <int Bits>
    static void order_activations_int8(std::int8_t* x, std::size_t block) noexcept {
#if HLWQ_CPU_HAS_VNNI
        if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch>) {
            if (!fused_int8(Bits) || block % 128 != 0) return;
            // Slot j takes code fused_slot_code(j): two permutes of the chunk's two registers.
            alignas(64) static constexpr auto order = [] {
                std::array<std::uint8_t, 128> o{};
                for (std::size_t j = 0; j < 128; ++j) o[j] = static_cast<std::uint8_t>(fused_slot_code(Bits, j));
                return o;
            }();
            const __m512i first = _mm512_load_si512(order.data()), second = _mm512_load_si512(order.data() + 64);
            for (std::size_t p = 0; p < block; p += 128) {
                const __m512i a = _mm512_loadu_si512(x + p), b = _mm512_loadu_si512(x + p + 64);
                _mm512_storeu_si512(x + p, _mm512_permutex2var_epi8(a, first, b));
                _mm512_storeu_si512(x + p + 64, _mm512_permutex2var_epi8(a, second, b));
            }
        }
#endif
#if HLWQ_CPU_HAS_AVX2_INT8
        if constexpr ((Bits == 4 || Bits == 5) && avx2_int8(Bits)) {  // the fused 4-bit plane's order
            if (block % 64 != 0 || block > 1024) return;
            // avx2_slot_code swaps the chunk's 16-byte quarters 1 and 2: codes 0..15, 32..47, 16..31, 48..63.
            for (std::size_t p = 0; p < block; p += 64) {
                auto* v = reinterpret_cast<__m256i*>(x + p);
                const __m256i a = _mm256_loadu_si256(v), b = _mm256_loadu_si256(v + 1);
                _mm256_storeu_si256(v, _mm256_permute2x128_si256(a, b, 0x20));
                _mm256_storeu_si256(v + 1, _mm256_permute2x128_si256(a, b, 0x31));
            }
        }
#endif
        (void)x;
        (void)block;
    }

    /// One row against int8 activations: Σ_b (norms[b] · xscale[b]) · I_b with
    /// I_b = Σ_i table[code_bi] · xq[b·block + i] (see the scalar reference). The integer sums
    /// are exact; only their conversion to float and the sum over blocks round.
    /// AVX-512 VNNI + VBMI (int8 tables, up to 5 bits): the table, biased by 128 to unsigned
    /// bytes, is looked up with byte shuffles and multiplied into int8 activations with
    /// `vpdpbusd`, 64 products per instruction; the bias comes back out as 128 · xsum[b].
    /// 2..6 bits read the codes straight from the packed planes (blocks of 128k); other
    /// widths (8 bits: its plane is the codes) unpack a block first. 6..8 bits (int16
    /// tables): low and high bytes looked up and multiplied apart (see vnni_table).
    /// AVX2, 2..5 bits: byte shuffles look the table up and `vpmaddubsw` multiplies, with
    /// the activation's sign moved onto the centroid (see dot32); 6..8 bits: the int16
    /// table's two byte planes looked up by trees of byte shuffles, multiplied as words with
    /// `vpmaddwd`. Otherwise the scalar reference.
    template <int Bits>
    static float dot_row_int8(const std::uint8_t* codes, const half* norms, std::size_t blocks, std::size_t block,
                              const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* xsum) {
#if HLWQ_CPU_HAS_VNNI
        if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch>) {
            if (block >= 64) return dot_row_vnni<Bits>(codes, norms, blocks, block, table, xq, xscale, xsum);
        }
#endif
#if HLWQ_CPU_HAS_AVX2_INT8
        if constexpr (avx2_int8(Bits)) {
            if (block % 64 == 0 && block <= 1024) {
                float y;
                const avx2_table<Bits> tab(table);
                with_mirrored<Bits, avx2_table<Bits>::wide>(table, [&]<bool Mirrored>() {
                    dot_rows_avx2_decode<Bits, 1, 0, Mirrored>(codes, 0, 1, norms, blocks, block, tab, xq, xscale, &y);
                });
                return y;
            }
        }
#endif
        return kernels<backend::scalar>::dot_row_int8<Bits>(codes, norms, blocks, block, table, xq, xscale, xsum);
    }

    /// Calls `f.template operator()<G>(r, stride)` over groups of rows that together cover
    /// 0..rows once: G = R rows r, r + stride, ..., r + (R-1)·stride, then the rows left over
    /// one at a time (G = 1). The R rows come from R separate quarters of the range, so each
    /// of the R streams the decode kernels read is one long run of consecutive rows: the
    /// hardware prefetcher follows it as it does a plain streaming read, where R neighbouring
    /// rows (short, interleaved runs in the same pages) left it behind.
    template <std::size_t R, class F>
    static void for_row_groups(std::size_t rows, F&& f) {
        const std::size_t stride = rows / R;
        for (std::size_t r = 0; r < stride; ++r) f.template operator()<R>(r, stride);
        for (std::size_t r = R * stride; r < rows; ++r) f.template operator()<1>(r, std::size_t{1});
    }

    /// dot_row_int8 for `rows` rows (codes and norms consecutive, `blocks` blocks each) against
    /// `n` tokens (xq, xscale, xsum consecutive per token): y[i·ldy + r], bit for bit what
    /// dot_row_int8 gives for each pair. One token (decode) on AVX-512 VNNI and AVX2: a few
    /// rows at a time straight from the codes, sharing the activations' loads. Several tokens
    /// on AVX-512 VNNI: each 4 rows' codes are turned into the operands of vpdpbusd /
    /// vpdpwssd once (not once per token) and a register tile of 4 rows × 3 tokens runs over
    /// them; on AVX2, the decode kernel token by token. Otherwise dot_row_int8 per pair.
    template <int Bits>
    static void dot_rows_int8(const std::uint8_t* codes, const half* norms, std::size_t rows, std::size_t blocks,
                              std::size_t block, const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* xsum, std::size_t n, float* y, std::size_t ldy) {
#if HLWQ_CPU_HAS_VNNI
        if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch>) {
            if (block >= 64 && n == 1) {  // decode: straight from the codes, R rows at a time
                constexpr std::size_t R = 4;
                const vnni_table<Bits> tab(table);
                const std::size_t row_bytes = blocks * (block * Bits / 8);
                auto rows_with = [&]<bool Mirrored>() {
                    for_row_groups<R>(rows, [&]<std::size_t G>(std::size_t r, std::size_t stride) {
                        if (block == 128)
                            dot_rows_vnni_decode<Bits, G, 128, Mirrored>(codes + r * row_bytes, row_bytes, stride,
                                                                         norms + r * blocks, blocks, block, tab, xq, xscale,
                                                                         xsum, y + r);
                        else
                            dot_rows_vnni_decode<Bits, G, 0, Mirrored>(codes + r * row_bytes, row_bytes, stride,
                                                                       norms + r * blocks, blocks, block, tab, xq, xscale, xsum,
                                                                       y + r);
                    });
                };
                with_mirrored<Bits, Bits == 8>(table, rows_with);  // (halves for 8 bits only here)
                return;
            }
            if (block >= 64) return dot_rows_vnni<Bits>(codes, norms, rows, blocks, block, table, xq, xscale, xsum, n, y, ldy);
        }
#endif
#if HLWQ_CPU_HAS_AVX2_INT8
        if constexpr (avx2_int8(Bits)) {
            if (block % 64 == 0 && block <= 1024) {  // R rows at a time, token by token
                constexpr std::size_t R = 4;
                const avx2_table<Bits> tab(table);
                const std::size_t row_bytes = blocks * (block * Bits / 8), len = blocks * block;
                auto tokens_with = [&]<bool Mirrored>() {
                    for (std::size_t i = 0; i < n; ++i) {
                        float* yi = y + i * ldy;  // token i's outputs: rows consecutive floats
                        for_row_groups<R>(rows, [&]<std::size_t G>(std::size_t r, std::size_t stride) {
                            if (block == 128)
                                dot_rows_avx2_decode<Bits, G, 128, Mirrored>(codes + r * row_bytes, row_bytes, stride,
                                                                             norms + r * blocks, blocks, block, tab, xq + i * len,
                                                                             xscale + i * blocks, yi + r);
                            else
                                dot_rows_avx2_decode<Bits, G, 0, Mirrored>(codes + r * row_bytes, row_bytes, stride,
                                                                           norms + r * blocks, blocks, block, tab, xq + i * len,
                                                                           xscale + i * blocks, yi + r);
                        });
                    }
                };
                with_mirrored<Bits, avx2_table<Bits>::wide>(table, tokens_with);
                return;
            }
        }
#endif
        const std::size_t row_bytes = blocks * packer<Bits>::packed_bytes(block), len = blocks * block;
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t i = 0; i < n; ++i)
                y[i * ldy + r] = dot_row_int8<Bits>(codes + r * row_bytes, norms + r * blocks, blocks, block, table,
                                                    xq + i * len, xscale + i * blocks, xsum + i * blocks);
    }

    /// Packs n codes (one per byte, < 2^Bits) in the packer<Bits> layout, a 64-bit word at
    /// a time (the mirror of unpack).
    template <int Bits>
    static void pack(const std::uint8_t* codes, std::size_t n, std::uint8_t* packed) noexcept {
        using P = packer<Bits>;
        const std::size_t full = n / P::group;
        std::uint8_t* dst = packed;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((dst = pack_plane<P::planes[I].width, P::planes[I].shift>(codes, full, dst)), ...);
        }(std::make_index_sequence<P::planes.size()>());
        kernels<backend::scalar>::pack<Bits>(codes + full * P::group, n % P::group, dst);
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

    /// Stores the int32 lanes of v, each in -128..127, as int8 at q.
    static void narrow_to_int8(xsimd::batch<std::int32_t, Arch> v, std::int8_t* q) noexcept {
#if XSIMD_WITH_AVX512F
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(v));
        } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {  // lane i's 4 bytes: values 4i..4i+3
            const __m256i words = _mm256_packs_epi32(v, v), bytes = _mm256_packs_epi16(words, words);
            _mm_storel_epi64(reinterpret_cast<__m128i*>(q),
                             _mm_unpacklo_epi32(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1)));
        } else
#endif
        {
            alignas(64) std::int32_t lanes[width];
            v.store_aligned(lanes);
            for (std::size_t l = 0; l < width; ++l) q[l] = static_cast<std::int8_t>(lanes[l]);
        }
    }

#if HLWQ_CPU_HAS_AVX2_INT8 || HLWQ_CPU_HAS_VNNI
    /// Prefetches the line at p + offset into L1; the address may lie past the end of p's
    /// array (formed as an integer, never as a pointer).
    static void prefetch(const void* p, std::size_t offset) noexcept {
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + offset), _MM_HINT_T0);
    }

    /// Whether an int16 table (6..8 bits, L entries) is mirrored: table[L-1-k] = -table[k],
    /// with the negative half (k < L/2) <= 0, as a symmetric codebook's is (Lloyd-Max). Then
    /// each code's entry is ± a magnitude of the negative half, and the decode kernels look
    /// up half the table, the sign going onto the activation.
    template <int Bits>
    static bool mirrored(const std::int16_t* table) noexcept {
        constexpr std::size_t levels = std::size_t{1} << Bits;
        bool odd = int_table_max<Bits> != 127;
        for (std::size_t k = 0; odd && k < levels / 2; ++k) odd = table[k] <= 0 && table[levels - 1 - k] == -table[k];
        return odd;
    }

    /// f.template operator()<true>() when the kernel looks up halves at this width (Halves)
    /// and the table is mirrored, else f.template operator()<false>(): the one place a
    /// decode kernel's Mirrored parameter is chosen.
    template <int Bits, bool Halves, class F>
    static void with_mirrored(const std::int16_t* table, F&& f) {
        if constexpr (Halves) {
            if (mirrored<Bits>(table)) {
                f.template operator()<true>();
                return;
            }
        }
        f.template operator()<false>();
    }

    /// How far ahead the decode kernels prefetch each of their row streams, in bytes. A stream
    /// reads its rows one after the other, so its codes are contiguous and one distance
    /// serves every width and row length; R streams keep R times this in flight, a few KiB
    /// of L1. It used to be 2 rows, which is 8 KiB a stream at PQ8 and 4096 columns: on the
    /// Xeon, PQ8 took 15–25% longer than with 2 KiB (1 and 4 KiB measured between the two;
    /// docs/benchmarks.md). Without the prefetch, PQ4 lost about a fifth of its speed.
    static constexpr std::size_t prefetch_bytes_ahead = 2048;

    /// Prefetches the block_bytes of codes at c, prefetch_bytes_ahead down each of a decode
    /// kernel's R row streams (stream_bytes apart): far enough to hide the memory latency that
    /// the hardware prefetcher leaves exposed at this compute per byte, near enough that the
    /// lines are still in L1 when read. (Prefetches never fault, past the last row too.)
    template <std::size_t R>
    static void prefetch_streams(const std::uint8_t* c, std::size_t stream_bytes, std::size_t block_bytes) noexcept {
        for (std::size_t j = 0; j < R; ++j)
            for (std::size_t l = 0; l < block_bytes; l += 64) prefetch(c, j * stream_bytes + l + prefetch_bytes_ahead);
    }
#endif

#if HLWQ_CPU_HAS_AVX2_INT8
    /// Widths with an AVX2 int8 kernel (byte tables: byte shuffles look up 16 entries, 5 bits
    /// use two), on AVX2 instruction sets (xsimd's AVX-512 ones do not derive from avx2).
    static constexpr bool avx2_int8(int bits) noexcept {
        return bits >= 2 && bits <= 8 && std::is_base_of_v<xsimd::avx2, Arch>;
    }

    /// Which code of a 64-code chunk slot j (0..63) of the 4-bit AVX2 kernel holds: 32 bytes
    /// of the plane are two groups whose byte i holds codes i (low nibble) and i + 16, so the
    /// low nibbles are codes 0..15 and 32..47, the high ones 16..31 and 48..63.
    static constexpr std::size_t avx2_slot_code(std::size_t j) noexcept {
        const std::size_t nibble = j / 32, k = j % 32;
        return 32 * (k / 16) + 16 * nibble + k % 16;
    }

    /// The integer codebook for the AVX2 kernel. Up to 5 bits: int8 bytes in both 128-bit
    /// lanes (entries 0..15 and 16..31). 6..8 bits (int16 values): their low and high bytes,
    /// 16 entries a register, in both lanes.
    template <int Bits>
    struct avx2_table {
        static constexpr bool wide = int_table_max<Bits> != 127;
        /// wide: byte shuffles of 16 entries each, per byte plane
        static constexpr std::size_t shuffles = wide ? std::size_t{1} << (Bits - 4) : 1;
        __m256i lo, hi;
        /// wide: entries 16i..16i+15, low bytes in low_bytes[i], high bytes in high_bytes[i]
        __m256i low_bytes[shuffles], high_bytes[shuffles];
        /// wide, a mirrored table (see kernels::mirrored): the same of the negative half's
        /// magnitudes, |table[k]| for k < L/2.
        __m256i magnitude_low[wide ? shuffles / 2 : 1], magnitude_high[wide ? shuffles / 2 : 1];

        explicit avx2_table(const std::int16_t* table) noexcept {
            if constexpr (wide) {
                // Entries 16i..16i+15 of f(k) as low and high bytes, in both lanes.
                auto split = [](auto f, std::size_t i, __m256i& low, __m256i& high) {
                    alignas(32) std::uint8_t l[32], h[32];
                    for (std::size_t k = 0; k < 32; ++k) {
                        const auto v = static_cast<std::uint16_t>(f(16 * i + k % 16));
                        l[k] = static_cast<std::uint8_t>(v & 0xFF);
                        h[k] = static_cast<std::uint8_t>(v >> 8);
                    }
                    low = _mm256_load_si256(reinterpret_cast<const __m256i*>(l));
                    high = _mm256_load_si256(reinterpret_cast<const __m256i*>(h));
                };
                for (std::size_t i = 0; i < shuffles; ++i)
                    split([&](std::size_t k) { return table[k]; }, i, low_bytes[i], high_bytes[i]);
                for (std::size_t i = 0; i < shuffles / 2; ++i)
                    split([&](std::size_t k) { return -table[k]; }, i, magnitude_low[i], magnitude_high[i]);
                lo = hi = _mm256_setzero_si256();
            } else {  // (an else, not an early return: nvcc's front end calls the rest unreachable)
                alignas(32) std::int8_t bytes[64];
                for (std::size_t k = 0; k < 32; ++k) {
                    const auto v = static_cast<std::int8_t>(table[k % (std::size_t{1} << Bits)]);
                    bytes[k % 16 + (k / 16) * 32] = v;
                    bytes[k % 16 + (k / 16) * 32 + 16] = v;
                }
                lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes));
                hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes + 32));
            }
        }

        /// 32 codes given as their low 4 bits and a byte mask of bit 4 -> their int8 centroids.
        __m256i lookup_split(__m256i low, __m256i high) const noexcept {
            return _mm256_blendv_epi8(_mm256_shuffle_epi8(lo, low), _mm256_shuffle_epi8(hi, low), high);
        }

        /// wide: 32 byte codes -> one byte of each entry, from the byte plane t (N registers
        /// of 16 entries): each shuffle looks the low 4 bits up, then bits 4, 5, ... (each
        /// shifted to its byte's sign bit) pick between pairs of results, a tree of N - 1 blends.
        template <std::size_t N = shuffles>
        static __m256i lookup_plane(const __m256i* t, __m256i idx) noexcept {
            const __m256i low = _mm256_and_si256(idx, _mm256_set1_epi8(0x0F));
            __m256i level[N];
            for (std::size_t i = 0; i < N; ++i) level[i] = _mm256_shuffle_epi8(t[i], low);
            std::size_t n = N;
            int bit = 4;
            for (; n > 1; n /= 2, ++bit) {
                const __m256i pick = _mm256_slli_epi16(idx, 7 - bit);  // 16-bit shift: only each byte's sign bit counts
                for (std::size_t i = 0; i < n / 2; ++i) level[i] = _mm256_blendv_epi8(level[2 * i], level[2 * i + 1], pick);
            }
            return level[0];
        }

        /// 32 byte codes -> their int8 centroids (5 bits: bit 4, shifted to each byte's sign
        /// bit, picks the upper half of the table).
        __m256i lookup(__m256i idx) const noexcept {
            if constexpr (Bits <= 4) {
                return _mm256_shuffle_epi8(lo, idx);
            } else {
                return _mm256_blendv_epi8(_mm256_shuffle_epi8(lo, idx), _mm256_shuffle_epi8(hi, idx),
                                          _mm256_slli_epi16(idx, 3));
            }
        }
    };

    /// 0xFF in byte k where bit 4 of the code in slot k of a 5-bit register is set, else 0.
    /// h: the 64 codes' 1-bit plane (8 bytes) in every 64-bit lane. The register of low
    /// nibbles (first = 0) holds codes 0..15 and 32..47, that of high nibbles (first = 2)
    /// codes 16..31 and 48..63 (avx2_slot_code): plane bytes first, first + 1 (lane 0) and
    /// first + 4, first + 5 (lane 1), each spread over 8 bytes and tested against its bit.
    static __m256i high_bits(__m256i h, int first) noexcept {
        const auto f = static_cast<char>(first);
        const __m256i spread = _mm256_setr_epi8(f, f, f, f, f, f, f, f, f + 1, f + 1, f + 1, f + 1, f + 1, f + 1, f + 1, f + 1,
                                                f + 4, f + 4, f + 4, f + 4, f + 4, f + 4, f + 4, f + 4, f + 5, f + 5, f + 5, f + 5,
                                                f + 5, f + 5, f + 5, f + 5);
        const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
        return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(h, spread), bit), bit);
    }

    /// lanes + Σ w·x over 32 int8 centroids w and activations x, in 8 int32 lanes. maddubs
    /// multiplies unsigned by signed bytes: |x| by w with x's sign; its pair sums are at most
    /// 2·127·127 < 2^15, so they never saturate and the sums are exact.
    static __m256i dot32(__m256i lanes, __m256i w, __m256i abs_x, __m256i x) noexcept {
        const __m256i pairs = _mm256_maddubs_epi16(abs_x, _mm256_sign_epi8(w, x));
        return _mm256_add_epi32(lanes, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }

    /// dot_row_int8 on AVX2 for R rows `stride` rows apart (codes stride·row_bytes apart,
    /// norms stride·blocks apart) into y[0], y[stride], ...; block a multiple of 64, at most
    /// 1024. 4 and 5 bits straight from the packed planes (activations in avx2_slot_code
    /// order; 5 bits take bit 4 from the 1-bit plane in place, see high_bits), 8 bits read
    /// their plane (one code per byte) in place, other widths unpack a block first.
    /// Each row's float operations do not depend on R (exact integer block sums, one
    /// multiply-add per block into 8 lanes, one pairwise lane sum), so every R gives the same bits.
    /// Block: the block size as a constant, or 0 to take `block_size`. Mirrored: the table is a
    /// mirrored int16 one (6..8 bits, kernels::mirrored), looked up by halves.
    template <int Bits, std::size_t R, std::size_t Block = 0, bool Mirrored = false>
    static void dot_rows_avx2_decode(const std::uint8_t* codes, std::size_t row_bytes, std::size_t stride, const half* norms,
                                     std::size_t blocks,
                                     std::size_t block_size, const avx2_table<Bits>& table_in, const std::int8_t* xq,
                                     const float* xscale, float* y) {
        const std::size_t block = Block ? Block : block_size, block_bytes = block * Bits / 8;
        const avx2_table<Bits> tab = table_in;  // a local copy, kept in registers (as far as they go)
        const __m256i low4 = _mm256_set1_epi8(0x0F);
        __m256 acc[R];
        alignas(32) float scales[R][8];  // norm_b · xscale_b, 8 blocks at a time
HLWQ_UNROLL(4)
        for (std::size_t j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
        for (std::size_t b = 0; b < blocks; ++b, xq += block) {
            if (b % 8 == 0) {
                const std::size_t m = std::min<std::size_t>(8, blocks - b);
                alignas(32) float xs[8] = {};
                std::copy_n(xscale + b, m, xs);
                for (std::size_t j = 0; j < R; ++j) {
                    alignas(16) std::uint16_t h[8] = {};
                    std::memcpy(h, norms + j * stride * blocks + b, m * sizeof(half));
                    _mm256_store_ps(scales[j], _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))),
                                                             _mm256_load_ps(xs)));
                }
            }
            __m256i lanes[R];
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j) lanes[j] = _mm256_setzero_si256();
            const std::uint8_t* c = codes + b * block_bytes;
            prefetch_streams<R>(c, stride * row_bytes, block_bytes);
            if constexpr (Bits == 4 || Bits == 5) {  // the 4-bit plane in place; 5 bits: bit 4 from the 1-bit plane
                for (std::size_t p = 0; p < block; p += 64) {
                    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + p));
                    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + p + 32));
                    const __m256i a0 = _mm256_abs_epi8(x0), a1 = _mm256_abs_epi8(x1);
HLWQ_UNROLL(4)
                    for (std::size_t j = 0; j < R; ++j) {
                        const std::uint8_t* row = c + j * stride * row_bytes;
                        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + p / 2));
                        const __m256i k0 = _mm256_and_si256(v, low4), k1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                        __m256i w0, w1;
                        if constexpr (Bits == 4) {
                            w0 = tab.lookup(k0);
                            w1 = tab.lookup(k1);
                        } else {
                            std::uint64_t bits;  // bit t of 32-bit word g: bit 4 of code 32g + t
                            std::memcpy(&bits, row + block / 2 + p / 8, sizeof bits);
                            const __m256i h = _mm256_set1_epi64x(static_cast<long long>(bits));
                            w0 = tab.lookup_split(k0, high_bits(h, 0));
                            w1 = tab.lookup_split(k1, high_bits(h, 2));
                        }
                        lanes[j] = dot32(lanes[j], w0, a0, x0);
                        lanes[j] = dot32(lanes[j], w1, a1, x1);
                    }
                }
            } else {  // one code per byte: the 8-bit plane in place, other widths unpacked
                alignas(32) std::uint8_t unpacked[Bits == 8 ? 1 : R][1024];
                const std::uint8_t* row_codes[R];
                for (std::size_t j = 0; j < R; ++j) {
                    if constexpr (Bits == 8) {
                        row_codes[j] = c + j * stride * row_bytes;
                    } else {
                        unpack<Bits>(c + j * stride * row_bytes, block, unpacked[j]);
                        row_codes[j] = unpacked[j];
                    }
                }
                if constexpr (avx2_table<Bits>::wide) {
                    // The int16 centroids' low and high bytes looked up apart, interleaved
                    // into words (per 128-bit lane: codes 0..7 by unpacklo, 8..15 by unpackhi)
                    // and multiplied with vpmaddwd by the activations widened in the same
                    // order: exact int32 products.
                    // Mirrored: code k < L/2 is -|table[k]|, code k >= L/2 is +|table[L-1-k]|
                    // (the low Bits-1 index bits flipped): the negative half's magnitudes,
                    // half the shuffles, times x with the code's sign.
                    for (std::size_t p = 0; p < block; p += 32) {
                        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + p));
                        const __m256i zero = _mm256_setzero_si256();
                        if constexpr (Mirrored) {  // x's words per row, with the codes' signs
                            constexpr std::size_t half_shuffles = avx2_table<Bits>::shuffles / 2;
                            const __m256i negated_x = _mm256_sub_epi8(zero, x);
                            const __m256i top = _mm256_set1_epi8(static_cast<char>(1 << (Bits - 1)));
                            const __m256i rest = _mm256_set1_epi8(static_cast<char>((1 << (Bits - 1)) - 1));
HLWQ_UNROLL(4)
                            for (std::size_t j = 0; j < R; ++j) {
                                const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row_codes[j] + p));
                                const __m256i upper = Bits == 8 ? _mm256_cmpgt_epi8(zero, idx)  // the top bit set
                                                                : _mm256_cmpeq_epi8(_mm256_and_si256(idx, top), top);
                                const __m256i half = _mm256_xor_si256(idx, _mm256_and_si256(upper, rest));
                                const __m256i l = tab.template lookup_plane<half_shuffles>(tab.magnitude_low, half),
                                              h = tab.template lookup_plane<half_shuffles>(tab.magnitude_high, half);
                                const __m256i sx = _mm256_blendv_epi8(negated_x, x, upper),
                                              sx_sign = _mm256_cmpgt_epi8(zero, sx);
                                lanes[j] = _mm256_add_epi32(lanes[j], _mm256_madd_epi16(_mm256_unpacklo_epi8(l, h), _mm256_unpacklo_epi8(sx, sx_sign)));
                                lanes[j] = _mm256_add_epi32(lanes[j], _mm256_madd_epi16(_mm256_unpackhi_epi8(l, h), _mm256_unpackhi_epi8(sx, sx_sign)));
                            }
                        } else {  // x widened to words once, for every row
                            const __m256i sign = _mm256_cmpgt_epi8(zero, x);
                            const __m256i x_first = _mm256_unpacklo_epi8(x, sign), x_second = _mm256_unpackhi_epi8(x, sign);
HLWQ_UNROLL(4)
                            for (std::size_t j = 0; j < R; ++j) {
                                const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row_codes[j] + p));
                                const __m256i l = tab.lookup_plane(tab.low_bytes, idx), h = tab.lookup_plane(tab.high_bytes, idx);
                                lanes[j] = _mm256_add_epi32(lanes[j], _mm256_madd_epi16(_mm256_unpacklo_epi8(l, h), x_first));
                                lanes[j] = _mm256_add_epi32(lanes[j], _mm256_madd_epi16(_mm256_unpackhi_epi8(l, h), x_second));
                            }
                        }
                    }
                } else {
                    for (std::size_t p = 0; p < block; p += 32) {
                        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + p));
                        const __m256i a = _mm256_abs_epi8(x);
HLWQ_UNROLL(4)
                        for (std::size_t j = 0; j < R; ++j)
                            lanes[j] = dot32(lanes[j], tab.lookup(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row_codes[j] + p))),
                                             a, x);
                    }
                }
            }
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j)
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes[j]), _mm256_set1_ps(scales[j][b % 8]), acc[j]);
        }
HLWQ_UNROLL(4)
        for (std::size_t j = 0; j < R; ++j) {  // s[i] + s[i+4], then +2, +1
            __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[j]), _mm256_extractf128_ps(acc[j], 1));
            v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            y[j * stride] = _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
        }
    }
#endif

#if HLWQ_CPU_HAS_VNNI
    /// Widths whose int8 kernel reads codes straight from the packed planes, 128 at a time.
    static constexpr bool fused_int8(int bits) noexcept { return bits >= 2 && bits <= 6; }

    /// Which code of a 128-code chunk slot j (0..127) of the fused int8 kernel holds: slots
    /// 0..63 are the first register chunk_codes() gives, 64..127 the second.
    /// 4-bit planes (4, 5, 6 bits): a register holds, per 16-byte lane g, codes 32g + 0..15
    /// (low nibbles) or 32g + 16..31 (high nibbles). 2-bit planes (2, 3 bits): the 32 plane
    /// bytes in both halves of a register, half h shifted by 2s, s = 2·register + h, hold
    /// codes 32g + 8s + i at byte 32h + 8g + i.
    static constexpr std::size_t fused_slot_code(int bits, std::size_t j) noexcept {
        const std::size_t reg = j / 64, k = j % 64;
        if (bits >= 4) return 32 * (k / 16) + 16 * reg + k % 16;
        const std::size_t h = k / 32, m = k % 32;
        return 32 * (m / 8) + m % 8 + 8 * (2 * reg + h);
    }

    /// The two registers of byte codes (order: fused_slot_code) of chunk p (codes 128p ..
    /// 128p + 127) of a block of `block` codes packed at `codes`.
    template <int Bits>
    static void chunk_codes(const std::uint8_t* codes, std::size_t block, std::size_t p, __m512i& r0,
                            __m512i& r1) noexcept {
        constexpr __mmask64 all = ~__mmask64{0};
        constexpr __mmask32 all16 = ~__mmask32{0};
        if constexpr (Bits >= 4) {
            const __m512i low4 = _mm512_set1_epi8(0x0F);
            const __m512i v = _mm512_loadu_si512(codes + 64 * p);
            r0 = _mm512_and_si512(v, low4);
            r1 = _mm512_and_si512(_mm512_maskz_srli_epi16(all16, v, 4), low4);
            if constexpr (Bits == 5) {
                // 1-bit plane: word g bit t = bit 4 of code 32g + t, so its first 64-bit word
                // covers codes 0..63 (lanes 0, 1 of either register), its second 64..127
                // (lanes 2, 3). vpmultishiftqb rotates, per slot, the same 64-bit word of a
                // source that holds the first word in words 0..3 and the second in 4..7 so
                // that the slot's bit lands on bit 4 (no mask register: see dot64_mirrored).
                std::uint64_t q[2];
                std::memcpy(q, codes + block / 2 + 16 * p, sizeof q);
                const __m512i src = _mm512_mask_set1_epi64(_mm512_set1_epi64(static_cast<long long>(q[0])), 0xF0,
                                                           static_cast<long long>(q[1]));
                alignas(64) static constexpr auto rotate = [] {  // slot (g, i) of register h: bit 32g + 16h + i, to bit 4
                    std::array<std::array<std::uint8_t, 64>, 2> a{};
                    for (std::size_t h = 0; h < 2; ++h)
                        for (std::size_t s = 0; s < 64; ++s)
                            a[h][s] = static_cast<std::uint8_t>((32 * (s / 16) + 16 * h + s % 16 + 60) % 64);
                    return a;
                }();
                const __m512i bit4 = _mm512_set1_epi8(0x10);
                // r | (rotated & bit4): r's bit 4 is clear
                r0 = _mm512_ternarylogic_epi32(r0, _mm512_multishift_epi64_epi8(_mm512_load_si512(rotate[0].data()), src), bit4, 0xF8);
                r1 = _mm512_ternarylogic_epi32(r1, _mm512_multishift_epi64_epi8(_mm512_load_si512(rotate[1].data()), src), bit4, 0xF8);
            } else if constexpr (Bits == 6) {
                // 2-bit plane of group g: byte 8g + i holds bits 4..5 of codes 32g + i + 8s at
                // shift 2s. Lane g of d = its 8 bytes twice; shift each to bits 4..5.
                const __m512i src = _mm512_castsi256_si512(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + block / 2 + 32 * p)));
                alignas(64) static constexpr std::array<std::uint8_t, 64> spread = [] {
                    std::array<std::uint8_t, 64> a{};
                    for (std::size_t t = 0; t < 64; ++t) a[t] = static_cast<std::uint8_t>(8 * (t / 16) + t % 8);
                    return a;
                }();
                const __m512i d = _mm512_maskz_permutexvar_epi8(all, _mm512_load_si512(spread.data()), src);
                const __m512i bits45 = _mm512_set1_epi8(0x30);
                // words 0..3 of a lane are bytes t < 8 (s = 0 or 2), words 4..7 bytes t >= 8
                const __m512i left = _mm512_set_epi64(0x0002000200020002, 0x0004000400040004, 0x0002000200020002,
                                                      0x0004000400040004, 0x0002000200020002, 0x0004000400040004,
                                                      0x0002000200020002, 0x0004000400040004);
                const __m512i right = _mm512_set_epi64(0x0002000200020002, 0, 0x0002000200020002, 0,
                                                       0x0002000200020002, 0, 0x0002000200020002, 0);
                r0 = _mm512_or_si512(r0, _mm512_and_si512(_mm512_maskz_sllv_epi16(all16, d, left), bits45));
                r1 = _mm512_or_si512(r1, _mm512_and_si512(_mm512_maskz_srlv_epi16(all16, d, right), bits45));
            }
        } else {
            const __m512i v = _mm512_mask_broadcast_i64x4(
                _mm512_setzero_si512(), 0xFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * p)));
            const __m512i low2 = _mm512_set1_epi8(0x03);
            r0 = _mm512_and_si512(_mm512_maskz_srlv_epi16(all16, v, _mm512_set_epi64(0x0002000200020002, 0x0002000200020002,
                                                                           0x0002000200020002, 0x0002000200020002, 0, 0, 0, 0)),
                                  low2);
            r1 = _mm512_and_si512(_mm512_maskz_srlv_epi16(all16, v, _mm512_set_epi64(0x0006000600060006, 0x0006000600060006,
                                                                                     0x0006000600060006, 0x0006000600060006,
                                                                                     0x0004000400040004, 0x0004000400040004,
                                                                                     0x0004000400040004, 0x0004000400040004)),
                                  low2);
            if constexpr (Bits == 3) {
                // 1-bit plane: byte s of word g holds bit 2 of codes 32g + 8s + i; gather
                // byte s of the four words for s = 0, 1 (register 0) and 2, 3 (register 1).
                const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + block / 4 + 16 * p));
                const __m128i m = _mm_shuffle_epi8(w, _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
                const __m512i bit2 = _mm512_set1_epi8(0x04);
                r0 = _mm512_mask_or_epi32(r0, 0xFFFF, r0,
                                          _mm512_maskz_mov_epi8(_cvtu64_mask64(static_cast<std::uint64_t>(_mm_cvtsi128_si64(m))), bit2));
                r1 = _mm512_mask_or_epi32(r1, 0xFFFF, r1,
                                          _mm512_maskz_mov_epi8(_cvtu64_mask64(static_cast<std::uint64_t>(_mm_extract_epi64(m, 1))), bit2));
            }
        }
        (void)all;
    }

    /// The integer codebook in the registers the VNNI kernels look it up in, and the integer
    /// block sums built on it. Narrow tables (up to 5 bits): biased by 128 to unsigned bytes,
    /// one byte-permute register (vpermb reads 6 index bits, so the table repeats); the bias
    /// comes back out as 128 · xsum in lane 0. Wide tables (6..8 bits, int16 c = 256·h + l):
    /// two byte tables, l and h + 128 (1, 2 or 4 registers each), each multiplied into the
    /// activations with vpdpbusd: Σ c·x = 256 · Σ h·x + Σ l·x, the bias 128 · x subtracted in
    /// the lane it entered, so that every lane holds the exact sum of its own products.
    template <int Bits>
    struct vnni_table {
        static constexpr std::size_t levels = std::size_t{1} << Bits;
        static constexpr bool narrow = int_table_max<Bits> == 127;
        static constexpr std::size_t regs = narrow ? 1 : levels / 64;  // registers per byte table
        __m512i lut;
        __m512i lo[regs], hi[regs];
        /// 8 bits, a mirrored table (see kernels::mirrored): the low and high bytes of the negative
        /// half's magnitudes, |table[k]| for k < 128, for dot64_mirrored.
        __m512i magnitude_lo[2], magnitude_hi[2];

        explicit vnni_table(const std::int16_t* table) noexcept {
            alignas(64) std::uint8_t biased[64];
            alignas(64) std::uint8_t bytes[2][regs * 64] = {};
            for (std::size_t k = 0; k < 64; ++k) biased[k] = static_cast<std::uint8_t>(table[k % levels] + 128);
            if constexpr (!narrow)
                for (std::size_t k = 0; k < levels; ++k) {
                    const auto v = static_cast<std::uint16_t>(table[k]);
                    bytes[0][k] = static_cast<std::uint8_t>(v & 0xFF);
                    bytes[1][k] = static_cast<std::uint8_t>((v >> 8) ^ 0x80);  // h + 128
                }
            lut = _mm512_load_si512(biased);
            for (std::size_t k = 0; k < regs; ++k) {
                lo[k] = _mm512_load_si512(bytes[0] + 64 * k);
                hi[k] = _mm512_load_si512(bytes[1] + 64 * k);
            }
            if constexpr (Bits == 8) {
                alignas(64) std::uint8_t magnitude[2][128];
                for (std::size_t k = 0; k < 128; ++k) {
                    const auto v = static_cast<std::uint16_t>(-table[k]);  // <= 32767 when mirrored
                    magnitude[0][k] = static_cast<std::uint8_t>(v & 0xFF);
                    magnitude[1][k] = static_cast<std::uint8_t>(v >> 8);
                }
                for (std::size_t k = 0; k < 2; ++k) {
                    magnitude_lo[k] = _mm512_load_si512(magnitude[0] + 64 * k);
                    magnitude_hi[k] = _mm512_load_si512(magnitude[1] + 64 * k);
                }
            } else {  // (not looked up; set, so that copies of the table copy no indeterminate values)
                magnitude_lo[0] = magnitude_lo[1] = magnitude_hi[0] = magnitude_hi[1] = _mm512_setzero_si512();
            }
        }

        /// 64 byte codes -> one byte of each entry from a wide table's byte table t. 8 bits:
        /// `upper` marks the codes with bit 7 set; the first permute looks up the others (and
        /// keeps their codes), the second the marked ones, so no blend is needed.
        static __m512i lookup_bytes(const __m512i* t, __m512i idx, __mmask64 upper) noexcept {
            constexpr __mmask64 all = ~__mmask64{0};
            if constexpr (regs == 1) {
                return _mm512_maskz_permutexvar_epi8(all, idx, t[0]);
            } else if constexpr (regs == 2) {
                return _mm512_permutex2var_epi8(t[0], idx, t[1]);
            } else {
                const __m512i low = _mm512_mask2_permutex2var_epi8(t[0], idx, _knot_mask64(upper), t[1]);
                return _mm512_mask2_permutex2var_epi8(t[2], low, upper, t[3]);
            }
        }

        /// 64 byte codes -> the unsigned byte operands of vpdpbusd: the biased centroids
        /// (narrow, in w), or l in w and h + 128 in w_high (wide).
        void operands(__m512i idx, __m512i& w, __m512i& w_high) const noexcept {
            constexpr __mmask64 all = ~__mmask64{0};
            if constexpr (narrow) {
                w = Bits <= 4 ? _mm512_maskz_shuffle_epi8(all, lut, idx) : _mm512_maskz_permutexvar_epi8(all, idx, lut);
                w_high = w;
            } else {
                const __mmask64 upper = regs == 4 ? _mm512_movepi8_mask(idx) : 0;
                w = lookup_bytes(lo, idx, upper);
                w_high = lookup_bytes(hi, idx, upper);
            }
        }

        /// A block's integer sum in the making: int32 lanes (narrow), or the lanes of the
        /// high bytes' and the low bytes' products (wide), put together by total().
        struct sums {
            __m512i high, low;
        };

        /// The sums a block starts from. narrow: −128 · xsum in lane 0. wide: −128 · (the
        /// lane's 4 activations) per 64-value step, from `bias` (see activation_bias).
        static sums start(std::int32_t xsum, __m512i bias) noexcept {
            if constexpr (narrow) return {_mm512_maskz_set1_epi32(1, -128 * xsum), _mm512_setzero_si512()};
            else return {_mm512_sub_epi32(_mm512_setzero_si512(), bias), _mm512_setzero_si512()};
        }

        /// Wide tables: 128 · Σ x per int32 lane over the `steps` 64-value steps of a block of
        /// activations x (what h + 128 adds in each lane). Shared by every row.
        static __m512i activation_bias(const std::int8_t* x, std::size_t steps) noexcept {
            __m512i bias = _mm512_setzero_si512();
            if constexpr (!narrow)
                for (std::size_t p = 0; p < steps; ++p)
                    bias = _mm512_dpbusd_epi32(bias, _mm512_set1_epi8(static_cast<char>(0x80)), _mm512_loadu_si512(x + 64 * p));
            return bias;
        }

        /// s + the products of the centroids of 64 byte codes with 64 activations x (s from start).
        void dot64(sums& s, __m512i idx, __m512i x) const noexcept {
            __m512i w, w_high;
            operands(idx, w, w_high);
            accumulate(s, w, w_high, x);
        }

        /// dot64 for a mirrored 8-bit table (see kernels::mirrored), s starting from zero, x and
        /// negated_x = −x: code k < 128 is −|table[k]| and code k >= 128 is +|table[255 − k]|,
        /// so the magnitudes of the negative half, looked up at k or 255 − k (k ^ 0x7F in the
        /// 7 index bits a two-register permute reads), meet x with the code's sign. They are
        /// unsigned bytes (high <= 127) and |x| <= 127, so no bias; each lane's sum is the
        /// exact sum of its products, as dot64's.
        /// Index and sign are bit maps of the code byte, made without a mask register (on
        /// Sapphire Rapids, vpmovb2m and two masked ops made the step 22% slower than these
        /// three operations): vgf2p8affineqb makes output bit i the parity of the code AND
        /// byte 7 − i of a matrix; `mirror` flips bits 0..6 when bit 7 is set, `sign` copies
        /// bit 7 to every bit (0xFF for k >= 128), which then picks x or −x bit by bit.
        void dot64_mirrored(sums& s, __m512i idx, __m512i x, __m512i negated_x) const noexcept {
            constexpr long long mirror = [] {
                std::uint64_t m = 0;
                for (int i = 0; i < 7; ++i) m |= std::uint64_t{(1u << i) | 0x80u} << (8 * (7 - i));
                return static_cast<long long>(m);
            }();
            constexpr long long sign = static_cast<long long>(0x8080808080808080ull);
            const __m512i half = _mm512_gf2p8affine_epi64_epi8(idx, _mm512_set1_epi64(mirror), 0);
            const __m512i positive = _mm512_gf2p8affine_epi64_epi8(idx, _mm512_set1_epi64(sign), 0);
            const __m512i signed_x = _mm512_ternarylogic_epi32(positive, x, negated_x, 0xCA);  // positive ? x : −x
            s.high = _mm512_dpbusd_epi32(s.high, _mm512_permutex2var_epi8(magnitude_hi[0], half, magnitude_hi[1]), signed_x);
            s.low = _mm512_dpbusd_epi32(s.low, _mm512_permutex2var_epi8(magnitude_lo[0], half, magnitude_lo[1]), signed_x);
        }

        /// s + the products of looked-up operands (see operands()) with 64 activations x.
        static void accumulate(sums& s, __m512i w, __m512i w_high, __m512i x) noexcept {
            if constexpr (narrow) {
                s.high = _mm512_dpbusd_epi32(s.high, w, x);
            } else {
                s.high = _mm512_dpbusd_epi32(s.high, w_high, x);
                s.low = _mm512_dpbusd_epi32(s.low, w, x);
            }
        }

        /// The block's integer sum per lane: exact (|lane| < 2^31 for every table and block).
        static __m512i total(const sums& s) noexcept {
            if constexpr (narrow) return s.high;
            else return _mm512_add_epi32(_mm512_maskz_slli_epi32(0xFFFF, s.high, 8), s.low);  // maskz: GCC 12 warns on the plain form
        }
    };

    /// The pairwise sum of a register's lanes, s[i] + s[i+8], then +4, +2, +1: the one order
    /// every VNNI kernel reduces in (constant shuffles keep the value in registers).
    static float pairwise_sum(__m512 v) noexcept {
        v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0xEE));
        v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x01));
        v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0x0E));
        v = _mm512_add_ps(v, _mm512_maskz_permute_ps(0xFFFF, v, 0x01));
        return _mm512_cvtss_f32(v);
    }

    /// dot_row_int8 on AVX-512 VNNI for R rows `stride` rows apart (codes stride·row_bytes
    /// apart, norms stride·blocks apart) into y[0], y[stride], ...; block >= 64, a power of
    /// two. Straight from the packed codes: the activations' loads and each block's bias are
    /// shared by the R rows, whose R accumulators hide the multiply-add latency. A row's
    /// operations do not depend on R (the integer block sums are exact, their scaling and the
    /// lane sum are the same), so every R gives the same bits.
    /// Block: the block size as a constant (the loops unroll, the scalar bookkeeping goes), or
    /// 0 to take `block_size`.
    /// Mirrored: the table is a mirrored 8-bit one (kernels::mirrored), taken through
    /// dot64_mirrored.
    template <int Bits, std::size_t R, std::size_t Block = 0, bool Mirrored = false>
    static void dot_rows_vnni_decode(const std::uint8_t* codes, std::size_t row_bytes, std::size_t stride, const half* norms,
                                     std::size_t blocks,
                                     std::size_t block_size, const vnni_table<Bits>& table_in, const std::int8_t* xq,
                                     const float* xscale, const std::int32_t* xsum, float* y) {
        static_assert(!Mirrored || Bits == 8, "the VNNI kernel looks up halves for 8 bits only");
        using table = vnni_table<Bits>;
        const std::size_t block = Block ? Block : block_size, block_bytes = block * Bits / 8;
        const table tab = table_in;  // a local copy, kept in registers
        const bool fused = fused_int8(Bits) && block % 128 == 0;  // else: unpack, natural order
        __m512 acc[R];
        // Block scales norm_b · xscale_b, 16 blocks at a time (F16C converts the norms).
        alignas(64) float scales[R][16];
HLWQ_UNROLL(4)
        for (std::size_t j = 0; j < R; ++j) acc[j] = _mm512_setzero_ps();
        for (std::size_t b = 0; b < blocks; ++b, xq += block) {
            if (b % 16 == 0) {
                const auto m = static_cast<__mmask16>(blocks - b >= 16 ? 0xFFFF : (1u << (blocks - b)) - 1);
                const __m512 xs = _mm512_maskz_loadu_ps(m, xscale + b);
                for (std::size_t j = 0; j < R; ++j)
                    _mm512_store_ps(scales[j], _mm512_maskz_mul_ps(m, _mm512_maskz_cvtph_ps(m, _mm256_maskz_loadu_epi16(m, norms + j * stride * blocks + b)), xs));
            }
            const auto init = Mirrored ? typename table::sums{_mm512_setzero_si512(), _mm512_setzero_si512()}
                                       : table::start(xsum[b], table::activation_bias(xq, block / 64));
            typename table::sums lanes[R];
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j) lanes[j] = init;
            const std::uint8_t* c = codes + b * block_bytes;
            prefetch_streams<R>(c, stride * row_bytes, block_bytes);
            if (fused) {
                for (std::size_t p = 0; p < block / 128; ++p) {
                    __m512i r0[R], r1[R];
HLWQ_UNROLL(4)
                    for (std::size_t j = 0; j < R; ++j) chunk_codes<Bits>(c + j * stride * row_bytes, block, p, r0[j], r1[j]);
                    const __m512i x0 = _mm512_loadu_si512(xq + 128 * p);
HLWQ_UNROLL(4)
                    for (std::size_t j = 0; j < R; ++j) tab.dot64(lanes[j], r0[j], x0);
                    const __m512i x1 = _mm512_loadu_si512(xq + 128 * p + 64);
HLWQ_UNROLL(4)
                    for (std::size_t j = 0; j < R; ++j) tab.dot64(lanes[j], r1[j], x1);
                }
            } else if constexpr (Bits == 8) {  // the 8-bit plane is the codes, one per byte
                for (std::size_t p = 0; p < block; p += 64) {
                    const __m512i x = _mm512_loadu_si512(xq + p);
                    if constexpr (Mirrored) {
                        const __m512i negated_x = _mm512_sub_epi8(_mm512_setzero_si512(), x);
HLWQ_UNROLL(4)
                        for (std::size_t j = 0; j < R; ++j)
                            tab.dot64_mirrored(lanes[j], _mm512_loadu_si512(c + j * stride * row_bytes + p), x, negated_x);
                    } else {
HLWQ_UNROLL(4)
                        for (std::size_t j = 0; j < R; ++j) tab.dot64(lanes[j], _mm512_loadu_si512(c + j * stride * row_bytes + p), x);
                    }
                }
            } else {
                alignas(64) std::uint8_t unpacked[R][1024];
                for (std::size_t j = 0; j < R; ++j) unpack<Bits>(c + j * stride * row_bytes, block, unpacked[j]);
                for (std::size_t p = 0; p < block; p += 64) {
                    const __m512i x = _mm512_loadu_si512(xq + p);
                    for (std::size_t j = 0; j < R; ++j) tab.dot64(lanes[j], _mm512_load_si512(unpacked[j] + p), x);
                }
            }
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j)
                acc[j] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, table::total(lanes[j])), _mm512_set1_ps(scales[j][b % 16]),
                                         acc[j]);
        }
HLWQ_UNROLL(4)
        for (std::size_t j = 0; j < R; ++j) y[j * stride] = pairwise_sum(acc[j]);
    }

    /// dot_row_int8 on AVX-512 VNNI (block >= 64, a power of two).
    template <int Bits>
    static float dot_row_vnni(const std::uint8_t* codes, const half* norms, std::size_t blocks, std::size_t block,
                              const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* xsum) {
        float y;
        const vnni_table<Bits> tab(table);
        with_mirrored<Bits, Bits == 8>(table, [&]<bool Mirrored>() {
            dot_rows_vnni_decode<Bits, 1, 0, Mirrored>(codes, 0, 1, norms, blocks, block, tab, xq, xscale, xsum, &y);
        });
        return y;
    }

    /// dot_rows_int8 on AVX-512 VNNI (block >= 64, a power of two). The operands are the bytes
    /// dot_rows_vnni_decode feeds its multiply-adds (vnni_table::operands), in the same order
    /// and lanes, so the integer lanes, their scaling and the final pairwise lane sum are the
    /// same operations: the results are bit-identical.
    template <int Bits>
    static void dot_rows_vnni(const std::uint8_t* codes, const half* norms, std::size_t rows, std::size_t blocks,
                              std::size_t block, const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* xsum, std::size_t n, float* y, std::size_t ldy) {
        using table_t = vnni_table<Bits>;
        constexpr std::size_t R = 4, T = 3;                 // vnni_tile's rows and tokens
        constexpr std::size_t K = table_t::narrow ? 1 : 2;  // operand bytes per code
        const std::size_t block_bytes = block * Bits / 8, len = blocks * block;
        const bool fused = fused_int8(Bits) && block % 128 == 0;
        const table_t tab(table);  // the tables dot_rows_vnni_decode looks up
        // 64 byte codes -> the operands of the 64 activations they meet: w (narrow), or
        // w_high then w (wide)
        auto put64 = [&](__m512i idx, std::uint8_t* dst) {
            __m512i w, w_high;
            tab.operands(idx, w, w_high);
            if constexpr (!table_t::narrow) _mm512_storeu_si512(dst + 64, w_high);
            _mm512_storeu_si512(dst, w);
        };
        std::vector<std::uint8_t> w(R * K * len);
        std::vector<float> wnorm(blocks * R);      // [block][row]
        std::vector<float> scale(blocks * T * R);  // [block][token][row]: norm · activation scale
        alignas(64) std::uint8_t unpacked[1024];
        for (std::size_t r0 = 0; r0 < rows; r0 += R) {
            const std::size_t m = std::min(R, rows - r0);
            for (std::size_t j = 0; j < m; ++j) {
                const std::uint8_t* c = codes + (r0 + j) * blocks * block_bytes;
                for (std::size_t b = 0; b < blocks; ++b, c += block_bytes) {
                    std::uint8_t* dst = w.data() + K * (j * len + b * block);
                    if (fused) {
                        for (std::size_t p = 0; p < block / 128; ++p) {
                            __m512i c0, c1;
                            chunk_codes<Bits>(c, block, p, c0, c1);
                            put64(c0, dst + K * 128 * p);
                            put64(c1, dst + K * (128 * p + 64));
                        }
                    } else {
                        unpack<Bits>(c, block, unpacked);
                        for (std::size_t p = 0; p < block; p += 64) put64(_mm512_load_si512(unpacked + p), dst + K * p);
                    }
                    wnorm[b * R + j] = static_cast<float>(norms[(r0 + j) * blocks + b]);
                }
            }
            for (std::size_t j = m; j < R; ++j)
                for (std::size_t b = 0; b < blocks; ++b) wnorm[b * R + j] = wnorm[b * R + m - 1];
            // Tails: missing rows and tokens repeat the last real one; their sums are dropped.
            const std::uint8_t* wr[R];
            for (std::size_t j = 0; j < R; ++j) wr[j] = w.data() + K * std::min(j, m - 1) * len;
            switch (block / 64) {  // the 64-value steps of a block as a constant, to unroll
            case 1: vnni_tile<table_t, 1>(wr, m, wnorm.data(), scale.data(), xq, xscale, xsum, n, blocks, y + r0, ldy); break;
            case 2: vnni_tile<table_t, 2>(wr, m, wnorm.data(), scale.data(), xq, xscale, xsum, n, blocks, y + r0, ldy); break;
            case 4: vnni_tile<table_t, 4>(wr, m, wnorm.data(), scale.data(), xq, xscale, xsum, n, blocks, y + r0, ldy); break;
            case 8: vnni_tile<table_t, 8>(wr, m, wnorm.data(), scale.data(), xq, xscale, xsum, n, blocks, y + r0, ldy); break;
            default: vnni_tile<table_t, 16>(wr, m, wnorm.data(), scale.data(), xq, xscale, xsum, n, blocks, y + r0, ldy); break;
            }
        }
    }

    /// The register tile of dot_rows_vnni: rows wr[0..4) (operands of a Table, see
    /// vnni_table::operands; m of them real) against every token, 3 at a time; P = block / 64.
    /// Writes y[i·ldy + j] for j < m.
    template <class Table, std::size_t P>
    static void vnni_tile(const std::uint8_t* const* wr, std::size_t m, const float* wnorm, float* scale,
                          const std::int8_t* xq, const float* xscale, const std::int32_t* xsum, std::size_t n,
                          std::size_t blocks, float* y, std::size_t ldy) {
        constexpr std::size_t R = 4, T = 3, block = 64 * P;
        constexpr std::size_t K = Table::narrow ? 1 : 2;  // operand bytes per code
        const std::size_t len = blocks * block;
        for (std::size_t i0 = 0; i0 < n; i0 += T) {
            const std::size_t nt = std::min(T, n - i0);
            const std::int8_t* xt[T];
            const float* st[T];
            const std::int32_t* sum[T];
            for (std::size_t t = 0; t < T; ++t) {
                const std::size_t i = i0 + std::min(t, nt - 1);
                xt[t] = xq + i * len;
                st[t] = xscale + i * blocks;
                sum[t] = xsum + i * blocks;
            }
            // The block scales as dot_rows_vnni_decode forms them (one float product each), laid out
            // for broadcasts straight from memory.
            for (std::size_t b = 0; b < blocks; ++b)
                for (std::size_t t = 0; t < T; ++t)
                    _mm_storeu_ps(scale + (b * T + t) * R, _mm_mul_ps(_mm_loadu_ps(wnorm + b * R), _mm_set1_ps(st[t][b])));
            __m512 acc[R][T];
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j)
HLWQ_UNROLL(4)
                for (std::size_t t = 0; t < T; ++t) acc[j][t] = _mm512_setzero_ps();
            for (std::size_t b = 0; b < blocks; ++b) {
                const std::size_t o = b * block;
HLWQ_UNROLL(4)
                for (std::size_t t = 0; t < T; ++t) {
                    const auto init = Table::start(sum[t][b], Table::activation_bias(xt[t] + o, P));
HLWQ_UNROLL(4)
                    for (std::size_t j = 0; j < R; ++j) {
                        auto lanes = init;
HLWQ_UNROLL(16)
                        for (std::size_t p = o; p < o + block; p += 64) {
                            const std::uint8_t* op = wr[j] + K * p;
                            Table::accumulate(lanes, _mm512_loadu_si512(op), _mm512_loadu_si512(op + 64 * (K - 1)),
                                              _mm512_loadu_si512(xt[t] + p));
                        }
                        acc[j][t] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, Table::total(lanes)),
                                                    _mm512_set1_ps(scale[(b * T + t) * R + j]), acc[j][t]);
                    }
                }
            }
            float res[R][T];
HLWQ_UNROLL(4)
            for (std::size_t j = 0; j < R; ++j)
HLWQ_UNROLL(4)
                for (std::size_t t = 0; t < T; ++t) res[j][t] = pairwise_sum(acc[j][t]);
            for (std::size_t j = 0; j < m; ++j)
                for (std::size_t t = 0; t < nt; ++t) y[(i0 + t) * ldy + j] = res[j][t];
        }
    }
#endif


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
    /// Packs one Width-bit plane (code bits [Shift, Shift + Width)) of `groups` full groups.
    template <int Width, int Shift>
    static std::uint8_t* pack_plane(const std::uint8_t* codes, std::size_t groups, std::uint8_t* dst) noexcept {
        constexpr std::uint64_t ones = 0x0101010101010101ull;
        constexpr std::uint64_t mask = ((1u << Width) - 1) * ones;
        auto bits_of = [](const std::uint8_t* c) { return (load64(c) >> Shift) & mask; };
        for (std::size_t g = 0; g < groups; ++g) {
            const std::uint8_t* c = codes + g * 32;
            std::uint64_t w[4];
            if constexpr (Width == 8) {
                for (int q = 0; q < 4; ++q) w[q] = load64(c + 8 * q);
            } else if constexpr (Width == 4) {
                w[0] = bits_of(c) | bits_of(c + 16) << 4;
                w[1] = bits_of(c + 8) | bits_of(c + 24) << 4;
            } else if constexpr (Width == 2) {
                w[0] = bits_of(c) | bits_of(c + 8) << 2 | bits_of(c + 16) << 4 | bits_of(c + 24) << 6;
            } else {
                // Gather bit 0 of each of 8 bytes into one byte: the multiplier has bits
                // 56 - 7j, moving byte j's bit (bit 8j) to bit 56 + j; the other products
                // land at distinct positions below bit 56 or above bit 63.
                std::uint32_t word = 0;
                for (int i = 0; i < 4; ++i)
                    word |= static_cast<std::uint32_t>((bits_of(c + 8 * i) * 0x0102040810204080ull) >> 56) << (8 * i);
                std::memcpy(dst, &word, 4);
            }
            if constexpr (Width != 1) std::memcpy(dst, w, 32 * Width / 8);
            dst += 32 * Width / 8;
        }
        return dst;
    }
};

}  // namespace hlwq
