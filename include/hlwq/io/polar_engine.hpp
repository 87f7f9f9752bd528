// SPDX-License-Identifier: MIT
/// @file polar_engine.hpp
/// @brief Code layouts of the published HLWQ/PolarQuant checkpoints (polarengine-vllm,
/// `polar_engine_v4` / `v5`), turned into a hlwq::quantized_matrix without re-quantizing.
///
/// Those checkpoints store, per quantized weight, `codes` (one of the layouts below, rows of
/// `in_features_padded` codes), `norms` (fp16 [out, n_blocks], the block L2 norms) and
/// `ct_scaled` (fp32, the centroids divided by √block). Their quantizer normalizes each block
/// to unit norm, applies the orthonormal Hadamard matrix, scales by √block and takes the
/// nearest centroid, so its codes and norms mean exactly what quantize.hpp stores; only the
/// packing differs, and the centroids are ct_scaled · √block.
#pragma once

#include "../packer.hpp"
#include "../quantize.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::io {

/// How a PolarQuant checkpoint packs the codes of one row.
enum class polar_layout {
    int8,     ///< one code per byte (int8, read as its bit pattern)
    nibbles,  ///< `packed`, bits <= 4: byte i of a block = code i | code (i + block/2) << 4
    q5_lsb,   ///< `packed_q5`: 8 codes in 5 bytes, least significant bits first
    q5_msb,   ///< the other published 5-bit layout: 8 codes in 5 bytes, most significant bits first
};

/// Bytes one row of `n` codes takes in `layout` (n a multiple of the block for nibbles, of 8
/// for the 5-bit layouts).
inline std::size_t polar_row_bytes(polar_layout layout, std::size_t n) noexcept {
    switch (layout) {
        case polar_layout::int8: return n;
        case polar_layout::nibbles: return n / 2;
        default: return n / 8 * 5;
    }
}

/// Unpacks one row of `codes.size()` codes stored in `layout` into one code per byte.
/// @throws std::invalid_argument if the layout does not fit the bit width, the row length
///   does not divide into the layout's units, the byte count differs, or a code does not fit
///   in `bits`.
inline void polar_unpack_row(polar_layout layout, int bits, std::size_t block, std::span<const std::uint8_t> src,
                             std::span<std::uint8_t> codes) {
    check_bits(bits);
    const std::size_t n = codes.size();
    const auto fail = [&](const std::string& why) {
        throw std::invalid_argument("hlwq::io::polar_unpack_row: " + why);
    };
    if (layout == polar_layout::nibbles && (bits > 4 || block % 2 || n % block))
        fail("the nibble layout needs bits <= 4 and whole blocks, got " + std::to_string(bits) + " bits, " +
             std::to_string(n) + " codes in blocks of " + std::to_string(block));
    if ((layout == polar_layout::q5_lsb || layout == polar_layout::q5_msb) && (bits != 5 || n % 8))
        fail("the 5-bit layouts need bits = 5 and a multiple of 8 codes, got " + std::to_string(bits) + " bits, " +
             std::to_string(n) + " codes");
    if (src.size() != polar_row_bytes(layout, n))
        fail(std::to_string(n) + " codes need " + std::to_string(polar_row_bytes(layout, n)) + " bytes, got " +
             std::to_string(src.size()));
    switch (layout) {
        case polar_layout::int8:
            std::copy(src.begin(), src.end(), codes.begin());
            break;
        case polar_layout::nibbles:
            for (std::size_t b = 0; b < n; b += block)
                for (std::size_t i = 0; i < block / 2; ++i) {
                    codes[b + i] = src[b / 2 + i] & 0x0F;
                    codes[b + i + block / 2] = src[b / 2 + i] >> 4;
                }
            break;
        case polar_layout::q5_lsb:  // a little-endian bit stream: code t in bits [5t, 5t + 5)
            for (std::size_t t = 0; t < n; ++t) {
                const std::size_t bit = 5 * t;
                unsigned v = src[bit / 8];
                if (bit % 8 > 3) v |= static_cast<unsigned>(src[bit / 8 + 1]) << 8;
                codes[t] = static_cast<std::uint8_t>((v >> (bit % 8)) & 31);
            }
            break;
        case polar_layout::q5_msb:  // a big-endian bit stream: code t in bits [5t, 5t + 5) from the top
            for (std::size_t t = 0; t < n; ++t) {
                const std::size_t bit = 5 * t;
                unsigned v = static_cast<unsigned>(src[bit / 8]) << 8;
                if (bit % 8 > 3) v |= src[bit / 8 + 1];
                codes[t] = static_cast<std::uint8_t>((v >> (11 - bit % 8)) & 31);
            }
            break;
    }
    for (std::size_t t = 0; t < n; ++t)
        if (codes[t] >> bits)
            fail("code " + std::to_string(codes[t]) + " at index " + std::to_string(t) + " does not fit in " +
                 std::to_string(bits) + " bits");
}

/// One quantized weight of a PolarQuant checkpoint, as views of its tensors.
struct polar_weight {
    std::size_t out_features = 0;         ///< rows
    std::size_t in_features = 0;          ///< columns of the original weight
    std::size_t in_features_padded = 0;   ///< in_features rounded up to the block
    std::size_t block = 0;                ///< block size
    int bits = 0;                         ///< code width
    polar_layout layout = polar_layout::int8;  ///< how `codes` is packed
    std::span<const std::uint8_t> codes;  ///< out_features rows of polar_row_bytes(layout, in_features_padded)
    std::span<const half> norms;          ///< out_features × in_features_padded / block
    std::span<const float> ct_scaled;     ///< 2^bits centroids / √block
};

/// The same weight as a quantized_matrix (codes repacked with packer<bits>, norms and
/// centroids copied): dequantize() then gives the weights the checkpoint describes.
/// @throws std::invalid_argument naming the first inconsistency of shapes or sizes.
inline quantized_matrix from_polar(const polar_weight& w) {
    const auto fail = [](const std::string& why) { throw std::invalid_argument("hlwq::io::from_polar: " + why); };
    check_bits(w.bits);
    check_rotation_size(w.block, "block size");
    const std::size_t nb = (w.in_features + w.block - 1) / w.block;
    if (w.in_features_padded != nb * w.block)
        fail("in_features_padded " + std::to_string(w.in_features_padded) + " is not in_features " +
             std::to_string(w.in_features) + " rounded up to the block " + std::to_string(w.block));
    const std::size_t row_bytes = polar_row_bytes(w.layout, w.in_features_padded);
    if (w.codes.size() != w.out_features * row_bytes)
        fail("codes hold " + std::to_string(w.codes.size()) + " bytes, " + std::to_string(w.out_features) +
             " rows need " + std::to_string(w.out_features * row_bytes));
    if (w.norms.size() != w.out_features * nb)
        fail("norms hold " + std::to_string(w.norms.size()) + " values, expected " + std::to_string(w.out_features * nb));
    if (w.ct_scaled.size() != (std::size_t{1} << w.bits))
        fail("ct_scaled holds " + std::to_string(w.ct_scaled.size()) + " centroids for " + std::to_string(w.bits) +
             " bits");
    quantized_matrix q;
    q.rows = w.out_features;
    q.cols = w.in_features;
    q.bits = w.bits;
    q.block = w.block;
    const float root = std::sqrt(static_cast<float>(w.block));
    for (float c : w.ct_scaled) q.centroids.push_back(c * root);
    q.norms.assign(w.norms.begin(), w.norms.end());
    q.codes.resize(q.rows * nb * q.block_bytes());
    std::vector<std::uint8_t> row(w.in_features_padded);
    for (std::size_t r = 0; r < q.rows; ++r) {
        polar_unpack_row(w.layout, w.bits, w.block, w.codes.subspan(r * row_bytes, row_bytes), row);
        for (std::size_t b = 0; b < nb; ++b)
            pack_codes(w.bits, std::span<const std::uint8_t>(row).subspan(b * w.block, w.block),
                       std::span(q.codes).subspan((r * nb + b) * q.block_bytes(), q.block_bytes()));
    }
    check_quantized(q);
    return q;
}

}  // namespace hlwq::io
