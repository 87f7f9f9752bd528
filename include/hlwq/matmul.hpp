// SPDX-License-Identifier: MIT
/// @file matmul.hpp
/// @brief Products with a quantized matrix that never expand it: `matvec` (one token,
/// decode) and `matmul` (a batch of tokens, prefill).
///
/// The block rotation is orthogonal, so for a row block with codes c and norm n,
/// ŵ·x = (n / B) · c[codes] · (H x). The activation is rotated once per block (shared by all
/// rows); then each row costs a table lookup and a dot product on its codes. A random sign
/// diagonal D, if the matrix has one, is folded into the rotation of x (H D x).
///
/// Two precisions (product_options::activations):
/// - `f32` (default): fp32 activations; equal to dequantize-then-multiply within fp32
///   rounding.
/// - `int8`: the llama.cpp way. Each block of the rotated activation is quantized to int8
///   with its own scale max|x|/127, and the codebook to integers (int8 up to 5 bits, int16
///   beyond, see int_table_max); each block's dot product is then exact integer arithmetic
///   (AVX-512 VNNI) scaled once. The activation rounding adds a relative error of about
///   1/(127·√3) per element; the table rounding is far below the codebook's own distortion.
#pragma once

#include "backend/kernels.hpp"
#include "detail/parallel.hpp"
#include "quantize.hpp"
#include "rotation.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq {

/// Arithmetic of the activations in matvec/matmul (see matmul.hpp).
enum class activation_precision {
    f32,   ///< fp32 activations: the exact product, within fp32 rounding
    int8,  ///< activations rounded to int8 per block, integer dot products (faster)
};

/// Knobs of matvec() and matmul().
struct product_options {
    /// Worker threads over rows; 0 = one per hardware thread.
    unsigned threads = 0;
    /// fp32 (exact) or int8 activations.
    activation_precision activations = activation_precision::f32;
};

namespace detail {

/// The codebook as integers for the int8 product, with step = max|centroid| / int_table_max<Bits>:
/// values[k] = round(centroid_k / step). Rounding to nearest commutes with negation, so a
/// symmetric codebook gives a symmetric table, values[L-1-k] = -values[k], which the decode
/// kernels look up by halves (see kernels::mirrored): AVX-512 VNNI at 8 bits, AVX2 at 6..8.
struct int_table {
    std::array<std::int16_t, 256> values{};  ///< integer centroids
    float step = 0.0f;                       ///< value of one integer unit
};

template <int Bits>
int_table make_int_table(std::span<const float> centroids) {
    int_table t;
    float largest = 0.0f;
    for (float c : centroids) largest = std::max(largest, std::abs(c));
    t.step = largest > 0.0f ? largest / static_cast<float>(int_table_max<Bits>) : 1.0f;
    constexpr float top = int_table_max<Bits>;
    for (std::size_t k = 0; k < centroids.size(); ++k)
        t.values[k] = static_cast<std::int16_t>(std::clamp(std::nearbyint(centroids[k] / t.step), -top, top));
    return t;
}

/// Rotated activations quantized block by block: q = round(x · 127 / max|x_b|); `scale`
/// folds in the integer step of the table and the 1/B of the rotation, so a row's result is
/// Σ_b norm_b · scale_b · (table · q)_b. `sum` holds Σ q per block.
struct int8_activations {
    std::vector<std::int8_t> q;      ///< tokens × blocks × block values
    std::vector<float> scale;        ///< per token and block
    std::vector<std::int32_t> sum;   ///< per token and block
};

/// quantize_activations into given arrays: q (count · block), scale and sum (count each);
/// each block rounded by kernels<Backend>::quantize_int8.
template <class Backend = default_backend>
void quantize_activations_to(const float* xr, std::size_t count, std::size_t block, float step, std::int8_t* q,
                             float* scale, std::int32_t* sums) {
    for (std::size_t b = 0; b < count; ++b) {
        const float largest = kernels<Backend>::quantize_int8(xr + b * block, block, q + b * block, sums[b]);
        scale[b] = largest / 127.0f * step / static_cast<float>(block);
    }
}

template <class Backend = default_backend>
int8_activations quantize_activations(const float* xr, std::size_t count, std::size_t block, float step) {
    int8_activations a;
    a.q.resize(count * block);
    a.scale.resize(count);
    a.sum.resize(count);
    quantize_activations_to<Backend>(xr, count, block, step, a.q.data(), a.scale.data(), a.sum.data());
    return a;
}

/// Rows [r0, r1) of Y = X Ŵᵀ with int8 activations; each row equals its matvec bit for bit.
/// The kernel decodes a few rows' codes once for all tokens.
template <int Bits, class Backend>
void product_rows_int8(const quantized_view& q, const int_table& table, const int8_activations& a, std::size_t n,
                       float* y, std::size_t r0, std::size_t r1) {
    const std::size_t nb = q.blocks_per_row();
    kernels<Backend>::template dot_rows_int8<Bits>(q.codes.data() + r0 * nb * q.block_bytes(), q.norms.data() + r0 * nb,
                                                   r1 - r0, nb, q.block, table.values.data(), a.q.data(), a.scale.data(),
                                                   a.sum.data(), n, y + r0, q.rows);
}

/// Rotates each of `n` activation rows x[i][0..cols) block by block: xr[i][b][0..B) =
/// H (D) x_b, zero-padding the last block. xr has n · blocks_per_row · block floats.
template <class Backend>
void rotate_activations(const quantized_view& q, const float* x, std::size_t n, float* xr) {
    const std::size_t block = q.block, nb = q.blocks_per_row(), cols = q.cols;
    std::optional<sign_diagonal> signs;
    if (q.sign_seed) signs.emplace(*q.sign_seed, block);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t b = 0; b < nb; ++b) {
            float* dst = xr + (i * nb + b) * block;
            const std::size_t c0 = b * block, len = std::min(block, cols - c0);
            std::copy_n(x + i * cols + c0, len, dst);
            std::fill(dst + len, dst + block, 0.0f);
            if (signs) signs->apply({dst, block});
            kernels<Backend>::fwht(dst, block);
        }
}

/// Rows [r0, r1) of Y = X Ŵᵀ from the rotated activations xr of `n` tokens:
/// y[i · rows + r] = Σ_b (norm_rb / B) · c[codes_rb] · xr[i][b].
template <int Bits, class Backend>
void product_rows(const quantized_view& q, const float* xr, std::size_t n, float* y, std::size_t r0,
                  std::size_t r1) {
    using K = kernels<Backend>;
    const std::size_t block = q.block, nb = q.blocks_per_row();
    const float inv_block = 1.0f / static_cast<float>(block);
    if (n == 1) {  // decode: straight from the packed codes, one row at a time
        for (std::size_t r = r0; r < r1; ++r)
            y[r] = K::template dot_row<Bits>(q.codes.data() + r * nb * q.block_bytes(), q.norms.data() + r * nb, nb,
                                             block, q.centroids.data(), xr);
        return;
    }
    // prefill: decode a tile of rows (scale folded in) once, use it for every token
    constexpr std::size_t tile = 4;
    const std::size_t len = nb * block;
    std::vector<std::uint8_t> codes(block);
    std::vector<float> decoded(tile * len);
    for (std::size_t r = r0; r < r1; r += tile) {
        const std::size_t rows = std::min(tile, r1 - r);
        for (std::size_t t = 0; t < rows; ++t)
            for (std::size_t b = 0; b < nb; ++b) {
                K::template unpack<Bits>(q.block_codes(r + t, b).data(), block, codes.data());
                K::template decode<Bits>(codes.data(), block, q.centroids.data(), q.block_norm(r + t, b) * inv_block,
                                         decoded.data() + t * len + b * block);
            }
        K::dot_tile(decoded.data(), rows, xr, n, len, y + r, q.rows);
    }
}

template <class Backend>
void product(const quantized_view& q, std::span<const float> x, std::size_t n, std::span<float> y,
             const product_options& options, const char* fn) {
    check_quantized(q);
    checked_size(n, q.cols, x.size(), fn);
    checked_size(n, q.rows, y.size(), fn);
    const std::size_t nb = q.blocks_per_row(), len = nb * q.block;
    std::vector<float> xr(n * len);
    const unsigned threads = options.threads;
    // Preparing the activations (rotation, rounding) is O(n · cols): split over tokens too when
    // a batch has enough of them (at least ~16k values a thread).
    const unsigned prep_threads = thread_count(threads, n, std::max<std::size_t>(1, (std::size_t{1} << 14) / len));
    auto rotate = [&](std::size_t i0, std::size_t i1) {
        rotate_activations<Backend>(q, x.data() + i0 * q.cols, i1 - i0, xr.data() + i0 * len);
    };
    if (options.activations == activation_precision::int8) {
        with_bits(q.bits, [&]<int B>() {
            const int_table table = make_int_table<B>(q.centroids);
            int8_activations a;
            a.q.resize(n * len);
            a.scale.resize(n * nb);
            a.sum.resize(n * nb);
            parallel_for(n, prep_threads, [&](std::size_t i0, std::size_t i1) {
                rotate(i0, i1);
                quantize_activations_to<Backend>(xr.data() + i0 * len, (i1 - i0) * nb, q.block, table.step, a.q.data() + i0 * len,
                                        a.scale.data() + i0 * nb, a.sum.data() + i0 * nb);
                for (std::size_t b = i0 * nb; b < i1 * nb; ++b)
                    kernels<Backend>::template order_activations_int8<B>(a.q.data() + b * q.block, q.block);
            });
            parallel_for(q.rows, thread_count(threads, q.rows, rows_per_thread(q.cols)),
                         [&](std::size_t r0, std::size_t r1) {
                             product_rows_int8<B, Backend>(q, table, a, n, y.data(), r0, r1);
                         });
        });
        return;
    }
    parallel_for(n, prep_threads, rotate);
    with_bits(q.bits, [&]<int B>() {
        if (n == 1)  // the one-token path reads x in the order its kernel wants
            for (std::size_t b = 0; b < nb; ++b)
                kernels<Backend>::template order_activations<B>(xr.data() + b * q.block, q.block);
        parallel_for(q.rows, thread_count(threads, q.rows, rows_per_thread(q.cols)),
                     [&](std::size_t r0, std::size_t r1) { product_rows<B, Backend>(q, xr.data(), n, y.data(), r0, r1); });
    });
}

}  // namespace detail

/// y = Ŵ x, with Ŵ = dequantize(q) (rows × cols), x of cols values, y of rows values;
/// computed on the codes, without expanding Ŵ. `options` picks the threads (workers over
/// rows, 0 = all hardware threads) and the activation precision (fp32 exact, or int8).
/// @throws std::invalid_argument if x or y has the wrong size, or q is inconsistent.
template <class Backend = default_backend>
void matvec(const quantized_view& q, std::span<const float> x, std::span<float> y, const product_options& options,
            Backend = {}) {
    detail::product<Backend>(q, x, 1, y, options, "hlwq::matvec");
}

/// matvec with fp32 activations on `threads` workers (0 = all hardware threads).
template <class Backend = default_backend>
void matvec(const quantized_view& q, std::span<const float> x, std::span<float> y, unsigned threads = 0,
            Backend backend = {}) {
    matvec(q, x, y, product_options{.threads = threads}, backend);
}

/// Y = X Ŵᵀ for a batch of `n` tokens: X is n × cols (row-major, one token per row), Y is
/// n × rows: each Y row is matvec of the X row, the layout of a linear layer. With fp32
/// activations each block of Ŵ is decoded once into a small buffer and used for all n tokens;
/// with int8 activations each row's codes are read once from memory for all n tokens.
/// @throws std::invalid_argument if X or Y has the wrong size, or q is inconsistent.
template <class Backend = default_backend>
void matmul(const quantized_view& q, std::span<const float> x, std::size_t n, std::span<float> y,
            const product_options& options, Backend = {}) {
    detail::product<Backend>(q, x, n, y, options, "hlwq::matmul");
}

/// matmul with fp32 activations on `threads` workers (0 = all hardware threads).
template <class Backend = default_backend>
void matmul(const quantized_view& q, std::span<const float> x, std::size_t n, std::span<float> y,
            unsigned threads = 0, Backend backend = {}) {
    matmul(q, x, n, y, product_options{.threads = threads}, backend);
}

}  // namespace hlwq
