// SPDX-License-Identifier: MIT
/// @file backend/scalar/kernels.hpp
/// @brief The scalar reference kernels: one element at a time, the definition every other
/// backend reproduces bit for bit.
#pragma once

#include "../../codebook.hpp"
#include "../../float16.hpp"
#include "../../packer.hpp"
#include "../backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace hlwq {

/// Scalar reference kernels (see backend::scalar).
template <>
struct kernels<backend::scalar> {
    /// Unnormalized in-place Walsh-Hadamard transform of x[0..n), n a power of two:
    /// butterflies (a, b) -> (a + b, a - b) at strides 1, 2, 4, ..., n/2, in that order.
    /// The stage order fixes the rounding, so other backends keep it.
    static void fwht(float* x, std::size_t n) noexcept {
        for (std::size_t h = 1; h < n; h *= 2)
            for (std::size_t i = 0; i < n; i += 2 * h)
                for (std::size_t j = i; j < i + h; ++j) {
                    const float a = x[j], b = x[j + h];
                    x[j] = a + b;
                    x[j + h] = a - b;
                }
    }

    /// codes[i] = code of (y[i] * scale) under the ascending 2^Bits - 1 `boundaries`
    /// (the number of boundaries below it; see encode_value).
    template <int Bits>
    static void encode(const float* y, std::size_t n, float scale, const float* boundaries,
                       std::uint8_t* codes) noexcept {
        const std::span<const float> b(boundaries, (std::size_t{1} << Bits) - 1);
        for (std::size_t i = 0; i < n; ++i) codes[i] = encode_value(b, y[i] * scale);
    }

    /// out[i] = centroids[codes[i]] * scale, for codes of Bits bits.
    template <int Bits>
    static void decode(const std::uint8_t* codes, std::size_t n, const float* centroids,
                       float scale, float* out) noexcept {
        for (std::size_t i = 0; i < n; ++i) out[i] = centroids[codes[i]] * scale;
    }

    /// out[i] = centroids[code i] for n codes packed by packer<Bits> (unpack, then decode).
    template <int Bits>
    static void decode_packed(const std::uint8_t* packed, std::size_t n, const float* centroids, float* out) {
        std::vector<std::uint8_t> codes(n);
        unpack<Bits>(packed, n, codes.data());
        decode<Bits>(codes.data(), n, centroids, 1.0f, out);
    }

    /// Packs n codes (one per byte, each < 2^Bits) with packer<Bits> into packed_bytes(n) bytes.
    template <int Bits>
    static void pack(const std::uint8_t* codes, std::size_t n, std::uint8_t* packed) {
        packer<Bits>::pack({codes, n}, {packed, packer<Bits>::packed_bytes(n)});
    }

    /// Σ a[i] b[i], summed in order.
    static float dot(const float* a, const float* b, std::size_t n) noexcept {
        float s = 0.0f;
        for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
        return s;
    }

    /// y[i·ldy + r] = dot(a[r·len ..], x[i·len ..]) for r < rows, i < n.
    static void dot_tile(const float* a, std::size_t rows, const float* x, std::size_t n, std::size_t len, float* y,
                         std::size_t ldy) noexcept {
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t r = 0; r < rows; ++r) y[i * ldy + r] = dot(a + r * len, x + i * len, len);
    }

    /// The order dot_row<Bits> reads activations in: the natural one.
    template <int Bits>
    static void order_activations(float*, std::size_t) noexcept {}

    /// Σ_b (norms[b] / block) · Σ_i centroids[code_bi] · x[b·block + i]: one row of a
    /// quantized matrix (`blocks` blocks of `block` packed codes) against rotated activations.
    template <int Bits>
    static float dot_row(const std::uint8_t* codes, const half* norms, std::size_t blocks, std::size_t block,
                         const float* centroids, const float* x) {
        std::vector<std::uint8_t> unpacked(block);
        const float inv_block = 1.0f / static_cast<float>(block);
        float row = 0.0f;
        for (std::size_t b = 0; b < blocks; ++b, codes += packer<Bits>::packed_bytes(block), x += block) {
            unpack<Bits>(codes, block, unpacked.data());
            float s = 0.0f;
            for (std::size_t i = 0; i < block; ++i) s += centroids[unpacked[i]] * x[i];
            row += static_cast<float>(norms[b]) * inv_block * s;
        }
        return row;
    }

    /// One block of n activations rounded to int8 with one scale: q[i] = round(x[i] · inv),
    /// inv = 127 / max|x| (0 for a block of zeros), to nearest even (nearbyint in the default
    /// rounding mode). |x · inv| <= max|x| · fl(127 / max|x|) < 127.5, so every q[i] lies in
    /// -127..127 without a clamp. Returns max|x|, and Σ q[i] in sum.
    static float quantize_int8(const float* x, std::size_t n, std::int8_t* q, std::int32_t& sum) noexcept {
        float largest = 0.0f;
        for (std::size_t i = 0; i < n; ++i) largest = std::max(largest, std::abs(x[i]));
        const float inv = largest > 0.0f ? 127.0f / largest : 0.0f;
        std::int32_t s = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const auto v = static_cast<std::int32_t>(std::nearbyint(x[i] * inv));
            q[i] = static_cast<std::int8_t>(v);
            s += v;
        }
        sum = s;
        return largest;
    }

    /// The order dot_row_int8<Bits> reads int8 activations in: the natural one.
    template <int Bits>
    static void order_activations_int8(std::int8_t*, std::size_t) noexcept {}

    /// One row against int8 activations: Σ_b (norms[b] · xscale[b]) · I_b, with
    /// I_b = Σ_i table[code_bi] · xq[b·block + i] summed exactly in integers (table holds the
    /// integer centroids, see int_table_max; xsum[b] = Σ_i xq[b·block + i] is for kernels that
    /// bias the table to unsigned bytes and is not needed here).
    template <int Bits>
    static float dot_row_int8(const std::uint8_t* codes, const half* norms, std::size_t blocks, std::size_t block,
                              const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* /*xsum*/) {
        std::vector<std::uint8_t> unpacked(block);
        float row = 0.0f;
        for (std::size_t b = 0; b < blocks; ++b, codes += packer<Bits>::packed_bytes(block), xq += block) {
            unpack<Bits>(codes, block, unpacked.data());
            std::int32_t s = 0;
            for (std::size_t i = 0; i < block; ++i) s += std::int32_t{table[unpacked[i]]} * xq[i];
            row += (static_cast<float>(norms[b]) * xscale[b]) * static_cast<float>(s);
        }
        return row;
    }

    /// dot_row_int8 of `rows` rows (codes and norms consecutive) against `n` tokens (xq, xscale,
    /// xsum consecutive per token), into y[i·ldy + r].
    template <int Bits>
    static void dot_rows_int8(const std::uint8_t* codes, const half* norms, std::size_t rows, std::size_t blocks,
                              std::size_t block, const std::int16_t* table, const std::int8_t* xq, const float* xscale,
                              const std::int32_t* xsum, std::size_t n, float* y, std::size_t ldy) {
        const std::size_t row_bytes = blocks * packer<Bits>::packed_bytes(block), len = blocks * block;
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t i = 0; i < n; ++i)
                y[i * ldy + r] = dot_row_int8<Bits>(codes + r * row_bytes, norms + r * blocks, blocks, block, table,
                                                    xq + i * len, xscale + i * blocks, xsum + i * blocks);
    }

    /// Unpacks n codes packed by packer<Bits> (packed_bytes(n) bytes) to one per byte.
    template <int Bits>
    static void unpack(const std::uint8_t* packed, std::size_t n, std::uint8_t* codes) {
        packer<Bits>::unpack({packed, packer<Bits>::packed_bytes(n)}, {codes, n});
    }
};

}  // namespace hlwq
