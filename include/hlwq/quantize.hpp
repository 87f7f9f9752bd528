// SPDX-License-Identifier: MIT
/// @file quantize.hpp
/// @brief Quantize a weight matrix to HLWQ ("PQ1".."PQ8") and dequantize it back.
///
/// ## What is stored
/// Each row of a rows × cols matrix is cut into blocks of `block` columns (default 128; the
/// last block of a row is zero-padded when cols is not a multiple of it). For a block w:
///
/// 1. norm = ||w||_2, accumulated in double, stored as fp16 (round to nearest even);
/// 2. y = H w / norm, H the *unnormalized* Sylvester Hadamard matrix. That is the
///    orthonormal rotation of the unit vector w / norm, scaled by sqrt(block), so its entries
///    are close to N(0,1) (optionally w is first multiplied by a seeded sign diagonal D);
/// 3. code_i = the nearest codebook centroid of y_i (Lloyd-Max of N(0,1) by default);
/// 4. the block's codes are packed with packer<bits> into block·bits/8 bytes.
///
/// Dequantization inverts it: ŵ = D · H c / block · norm16, with c the centroids of the
/// codes and norm16 the stored fp16 norm. An all-zero block stores norm 0 and comes back as
/// zeros. A block whose norm exceeds the fp16 range (65504) is an error.
///
/// Size: rows · blocks_per_row · (block·bits/8 + 2) bytes, i.e. bits + 16/block bits per weight.
#pragma once

#include "codebook.hpp"
#include "detail/parallel.hpp"
#include "float16.hpp"
#include "packer.hpp"
#include "rotation.hpp"

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace hlwq {

/// Element types a weight matrix may hold.
template <class T>
concept weight_type = std::same_as<T, float> || std::same_as<T, half> || std::same_as<T, bfloat16>;

/// Knobs of quantize().
struct quantize_options {
    /// Columns per block: a power of two in 16..1024.
    std::size_t block = 128;
    /// Worker threads over rows; 0 = one per hardware thread.
    unsigned threads = 0;
    /// Seed of the random sign diagonal D (rotation H·D). Empty = plain H, the published
    /// format; a seed makes a different format that needs the same seed to decode.
    std::optional<std::uint64_t> sign_seed = std::nullopt;
};

/// A read-only view of a quantized matrix whose codes and norms live elsewhere: in a
/// quantized_matrix, or in a memory-mapped checkpoint (see io/hlwq_format.hpp). Everything
/// that only reads a quantized matrix (dequantize, matvec, matmul) takes this view.
struct quantized_view {
    std::size_t rows = 0;   ///< rows of the original matrix
    std::size_t cols = 0;   ///< columns of the original matrix
    int bits = 0;           ///< code width, 1..8
    std::size_t block = 0;  ///< columns per block
    std::optional<std::uint64_t> sign_seed = std::nullopt;  ///< seed of D, if the rotation is H·D
    std::span<const float> centroids;      ///< the 2^bits centroids codes index
    std::span<const std::uint8_t> codes;   ///< rows × blocks_per_row() blocks of block_bytes() bytes
    std::span<const half> norms;           ///< rows × blocks_per_row() block L2 norms

    /// Blocks per row, ceil(cols / block).
    std::size_t blocks_per_row() const noexcept { return block ? (cols + block - 1) / block : 0; }
    /// Packed bytes of one block: block · bits / 8.
    std::size_t block_bytes() const noexcept { return block * static_cast<std::size_t>(bits) / 8; }
    /// Bytes of codes and norms together.
    std::size_t storage_bytes() const noexcept { return codes.size() + norms.size() * sizeof(half); }
    /// Stored bits per original weight, norms included (bits + 16/block when cols fills blocks).
    double bits_per_weight() const noexcept {
        return rows * cols != 0 ? 8.0 * static_cast<double>(storage_bytes()) / static_cast<double>(rows * cols)
                                : 0.0;
    }
    /// Packed codes of block b of row r.
    std::span<const std::uint8_t> block_codes(std::size_t r, std::size_t b) const noexcept {
        return codes.subspan((r * blocks_per_row() + b) * block_bytes(), block_bytes());
    }
    /// Stored norm of block b of row r.
    float block_norm(std::size_t r, std::size_t b) const noexcept {
        return static_cast<float>(norms[r * blocks_per_row() + b]);
    }
};

/// A quantized matrix that owns its packed codes, fp16 block norms and codebook. It converts
/// to a quantized_view, which is what the functions reading it take.
struct quantized_matrix {
    std::size_t rows = 0;   ///< rows of the original matrix
    std::size_t cols = 0;   ///< columns of the original matrix
    int bits = 0;           ///< code width, 1..8
    std::size_t block = 0;  ///< columns per block
    std::optional<std::uint64_t> sign_seed = std::nullopt;  ///< seed of D, if the rotation is H·D
    std::vector<float> centroids;     ///< the 2^bits centroids codes index
    std::vector<std::uint8_t> codes;  ///< rows × blocks_per_row() blocks of block_bytes() bytes
    std::vector<half> norms;          ///< rows × blocks_per_row() block L2 norms

    /// A view of this matrix (valid while it lives and is not resized).
    quantized_view view() const noexcept { return {rows, cols, bits, block, sign_seed, centroids, codes, norms}; }
    /// Implicit: a quantized_matrix can be passed wherever a quantized_view is read.
    operator quantized_view() const noexcept { return view(); }  // NOLINT(google-explicit-constructor)

    /// Blocks per row, ceil(cols / block).
    std::size_t blocks_per_row() const noexcept { return view().blocks_per_row(); }
    /// Packed bytes of one block: block · bits / 8.
    std::size_t block_bytes() const noexcept { return view().block_bytes(); }
    /// Bytes of codes and norms together.
    std::size_t storage_bytes() const noexcept { return view().storage_bytes(); }
    /// Stored bits per original weight, norms included.
    double bits_per_weight() const noexcept { return view().bits_per_weight(); }
    /// Packed codes of block b of row r.
    std::span<const std::uint8_t> block_codes(std::size_t r, std::size_t b) const noexcept {
        return view().block_codes(r, b);
    }
    /// Stored norm of block b of row r.
    float block_norm(std::size_t r, std::size_t b) const noexcept { return view().block_norm(r, b); }
};

namespace detail {

inline std::size_t checked_size(std::size_t rows, std::size_t cols, std::size_t given, const char* fn) {
    if (cols != 0 && rows > std::numeric_limits<std::size_t>::max() / cols)
        throw std::invalid_argument(std::string(fn) + ": shape " + std::to_string(rows) + " x " +
                                    std::to_string(cols) + " overflows");
    if (rows * cols != given)
        throw std::invalid_argument(std::string(fn) + ": shape " + std::to_string(rows) + " x " +
                                    std::to_string(cols) + " needs " + std::to_string(rows * cols) +
                                    " values, the buffer has " + std::to_string(given));
    return rows * cols;
}

/// Rows per thread below which more threads do not pay (about 64k weights each).
inline std::size_t rows_per_thread(std::size_t cols) {
    return std::max<std::size_t>(1, (std::size_t{1} << 16) / std::max<std::size_t>(cols, 1));
}

/// Encodes one block of `block` values y (padded, signs applied; overwritten) whose L2 norm
/// is `norm`: the codes of H y / norm under `boundaries`, packed into packed[0..block·Bits/8).
/// `codes` is scratch for `block` codes. Weight blocks and KV-cache vectors both go through it.
template <int Bits, class Backend>
void encode_block(float* y, std::size_t block, double norm, const float* boundaries, std::uint8_t* codes,
                  std::uint8_t* packed) {
    using K = kernels<Backend>;
    K::fwht(y, block);
    const float inv = norm > 0 ? static_cast<float>(1.0 / norm) : 0.0f;
    K::template encode<Bits>(y, block, inv, boundaries, codes);
    K::template pack<Bits>(codes, block, packed);
}

template <int Bits, class Backend, weight_type T>
void quantize_rows(const T* w, std::size_t cols, std::size_t r0, std::size_t r1,
                   const codebook_view& cb, const sign_diagonal* signs, quantized_matrix& q) {
    const std::size_t block = q.block, nb = q.blocks_per_row(), bytes = q.block_bytes();
    std::vector<float> y(block);
    std::vector<std::uint8_t> codes(block);
    for (std::size_t r = r0; r < r1; ++r) {
        for (std::size_t b = 0; b < nb; ++b) {
            const std::size_t c0 = b * block, n = std::min(block, cols - c0);
            const T* src = w + r * cols + c0;
            double sum_sq = 0;
            for (std::size_t i = 0; i < n; ++i) {
                const float v = to_float(src[i]);
                if (!std::isfinite(v))
                    throw std::invalid_argument("hlwq::quantize: weight at row " + std::to_string(r) +
                                                ", column " + std::to_string(c0 + i) + " is " +
                                                (std::isnan(v) ? "NaN" : "infinite"));
                y[i] = v;
                sum_sq += static_cast<double>(v) * v;
            }
            std::fill(y.begin() + static_cast<std::ptrdiff_t>(n), y.end(), 0.0f);
            const double norm = std::sqrt(sum_sq);
            const half norm16(static_cast<float>(norm));
            if (!std::isfinite(static_cast<float>(norm16)))
                throw std::invalid_argument("hlwq::quantize: block " + std::to_string(b) + " of row " +
                                            std::to_string(r) + " has L2 norm " + std::to_string(norm) +
                                            ", beyond the fp16 range of the stored norm");
            q.norms[r * nb + b] = norm16;
            if (signs) signs->apply(y);
            encode_block<Bits, Backend>(y.data(), block, norm, cb.boundaries.data(), codes.data(),
                                        q.codes.data() + (r * nb + b) * bytes);
        }
    }
}

template <int Bits, class Backend>
void dequantize_rows(const quantized_view& q, std::size_t r0, std::size_t r1, float* out) {
    using K = kernels<Backend>;
    const std::size_t block = q.block, nb = q.blocks_per_row(), cols = q.cols;
    std::optional<sign_diagonal> signs;
    if (q.sign_seed) signs.emplace(*q.sign_seed, block);
    std::vector<float> y(block);
    std::vector<std::uint8_t> codes(block);
    const float inv_block = 1.0f / static_cast<float>(block);  // exact: block is a power of two
    for (std::size_t r = r0; r < r1; ++r) {
        for (std::size_t b = 0; b < nb; ++b) {
            K::template unpack<Bits>(q.block_codes(r, b).data(), block, codes.data());
            K::template decode<Bits>(codes.data(), block, q.centroids.data(), q.block_norm(r, b) * inv_block, y.data());
            K::fwht(y.data(), block);
            if (signs) signs->apply(y);
            const std::size_t c0 = b * block, n = std::min(block, cols - c0);
            std::copy_n(y.begin(), n, out + (r - r0) * cols + c0);
        }
    }
}

}  // namespace detail

/// Quantizes the row-major rows × cols matrix `w` (float, fp16 or bf16) with the codebook
/// `cb` (any hlwq::codebook: `lloyd_max<B>`, fitted_codebook, codebook_view).
/// @throws std::invalid_argument if w.size() != rows·cols, the block size is not a power of
///   two in 16..1024, the codebook is malformed, a weight is NaN/inf (naming row and column)
///   or a block norm overflows fp16.
template <std::ranges::contiguous_range R, codebook C, class Backend = default_backend>
    requires weight_type<std::remove_cv_t<std::ranges::range_value_t<R>>>
quantized_matrix quantize(const R& w, std::size_t rows, std::size_t cols, const C& cb,
                          const quantize_options& options = {}, Backend = {}) {
    using T = std::remove_cv_t<std::ranges::range_value_t<R>>;
    const codebook_view view = view_of(cb);
    check_codebook(view);
    check_rotation_size(options.block, "block size");
    detail::checked_size(rows, cols, std::ranges::size(w), "hlwq::quantize");
    quantized_matrix q;
    q.rows = rows;
    q.cols = cols;
    q.bits = view.bits;
    q.block = options.block;
    q.sign_seed = options.sign_seed;
    q.centroids.assign(view.centroids.begin(), view.centroids.end());
    q.codes.resize(rows * q.blocks_per_row() * q.block_bytes());
    q.norms.resize(rows * q.blocks_per_row());
    std::optional<sign_diagonal> signs;
    if (options.sign_seed) signs.emplace(*options.sign_seed, options.block);
    const T* data = std::ranges::data(w);
    with_bits(view.bits, [&]<int B>() {
        detail::parallel_for(rows, detail::thread_count(options.threads, rows, detail::rows_per_thread(cols)),
                             [&](std::size_t r0, std::size_t r1) {
                                 detail::quantize_rows<B, Backend>(data, cols, r0, r1, view,
                                                                   signs ? &*signs : nullptr, q);
                             });
    });
    return q;
}

/// Quantizes `w` with the Lloyd-Max codebook of `bits` bits (1..8, "PQ<bits>").
/// @throws std::invalid_argument for bits outside 1..8, and as the codebook overload.
template <std::ranges::contiguous_range R, class Backend = default_backend>
    requires weight_type<std::remove_cv_t<std::ranges::range_value_t<R>>>
quantized_matrix quantize(const R& w, std::size_t rows, std::size_t cols, int bits,
                          const quantize_options& options = {}, Backend backend = {}) {
    return quantize(w, rows, cols, lloyd_max_view(bits), options, backend);
}

/// Quantizes `w` with the Lloyd-Max codebook of `Bits` bits, a compile-time width.
template <int Bits, std::ranges::contiguous_range R, class Backend = default_backend>
    requires valid_bits<Bits> && weight_type<std::remove_cv_t<std::ranges::range_value_t<R>>>
quantized_matrix quantize(const R& w, std::size_t rows, std::size_t cols,
                          const quantize_options& options = {}, Backend backend = {}) {
    return quantize(w, rows, cols, lloyd_max<Bits>{}, options, backend);
}

/// Checks that q is self-consistent (sizes of codes, norms and centroids agree with its
/// shape, bits and block).
/// @throws std::invalid_argument naming the first inconsistency.
inline void check_quantized(const quantized_view& q) {
    check_bits(q.bits);
    check_rotation_size(q.block, "block size");
    if (q.centroids.size() != (std::size_t{1} << q.bits))
        throw std::invalid_argument("hlwq: quantized matrix has " + std::to_string(q.centroids.size()) +
                                    " centroids for " + std::to_string(q.bits) + " bits");
    if (q.cols != 0 && q.rows > std::numeric_limits<std::size_t>::max() / q.cols)
        throw std::invalid_argument("hlwq: quantized matrix shape overflows");
    const std::size_t blocks = q.rows * q.blocks_per_row();
    if (q.norms.size() != blocks || q.codes.size() != blocks * q.block_bytes())
        throw std::invalid_argument("hlwq: quantized matrix of " + std::to_string(q.rows) + " x " +
                                    std::to_string(q.cols) + " needs " + std::to_string(blocks) +
                                    " norms and " + std::to_string(blocks * q.block_bytes()) +
                                    " code bytes, has " + std::to_string(q.norms.size()) + " and " +
                                    std::to_string(q.codes.size()));
}

/// Dequantizes q into the row-major rows × cols buffer `out`.
/// @throws std::invalid_argument if out.size() != rows·cols or q is inconsistent.
template <class Backend = default_backend>
void dequantize(const quantized_view& q, std::span<float> out, unsigned threads = 0, Backend = {}) {
    check_quantized(q);
    detail::checked_size(q.rows, q.cols, out.size(), "hlwq::dequantize");
    with_bits(q.bits, [&]<int B>() {
        detail::parallel_for(q.rows, detail::thread_count(threads, q.rows, detail::rows_per_thread(q.cols)),
                             [&](std::size_t r0, std::size_t r1) {
                                 detail::dequantize_rows<B, Backend>(q, r0, r1, out.data() + r0 * q.cols);
                             });
    });
}

/// Dequantizes rows [first, first + out.size() / cols) of q into `out` (one thread), the
/// building block of on-the-fly dequantizing matmuls.
/// @throws std::invalid_argument if out.size() is not a multiple of cols or the rows overrun q.
template <class Backend = default_backend>
void dequantize_rows(const quantized_view& q, std::size_t first, std::span<float> out, Backend = {}) {
    check_quantized(q);
    if (q.cols == 0 || out.size() % q.cols != 0 || first + out.size() / q.cols > q.rows)
        throw std::invalid_argument("hlwq::dequantize_rows: " + std::to_string(out.size()) +
                                    " values are not whole rows inside the " + std::to_string(q.rows) +
                                    " x " + std::to_string(q.cols) + " matrix from row " +
                                    std::to_string(first));
    with_bits(q.bits, [&]<int B>() {
        detail::dequantize_rows<B, Backend>(q, first, first + out.size() / q.cols, out.data());
    });
}

/// Dequantizes q into a new rows × cols vector.
template <class Backend = default_backend>
std::vector<float> dequantize(const quantized_view& q, unsigned threads = 0, Backend backend = {}) {
    std::vector<float> out(q.rows * q.cols);
    dequantize(q, std::span<float>(out), threads, backend);
    return out;
}

}  // namespace hlwq
