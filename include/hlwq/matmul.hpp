// SPDX-License-Identifier: MIT
/// @file matmul.hpp
/// @brief Products with a quantized matrix that never expand it: `matvec` (one token,
/// decode) and `matmul` (a batch of tokens, prefill).
///
/// The block rotation is orthogonal, so for a row block with codes c and norm n,
/// ŵ·x = (n / B) · c[codes] · (H x). The activation is rotated once per block (shared by all
/// rows); then each row costs a table lookup and a dot product on its codes. A random sign
/// diagonal D, if the matrix has one, is folded into the rotation of x (H D x).
#pragma once

#include "backend/kernels.hpp"
#include "detail/parallel.hpp"
#include "quantize.hpp"
#include "rotation.hpp"

#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq {

namespace detail {

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
             unsigned threads, const char* fn) {
    check_quantized(q);
    checked_size(n, q.cols, x.size(), fn);
    checked_size(n, q.rows, y.size(), fn);
    std::vector<float> xr(n * q.blocks_per_row() * q.block);
    rotate_activations<Backend>(q, x.data(), n, xr.data());
    with_bits(q.bits, [&]<int B>() {
        if (n == 1)  // the one-token path reads x in the order its kernel wants
            for (std::size_t b = 0; b < q.blocks_per_row(); ++b)
                kernels<Backend>::template order_activations<B>(xr.data() + b * q.block, q.block);
        parallel_for(q.rows, thread_count(threads, q.rows, rows_per_thread(q.cols)),
                     [&](std::size_t r0, std::size_t r1) { product_rows<B, Backend>(q, xr.data(), n, y.data(), r0, r1); });
    });
}

}  // namespace detail

/// y = Ŵ x, with Ŵ = dequantize(q) (rows × cols), x of cols values, y of rows values;
/// computed on the codes, without expanding Ŵ.
/// Threads: workers over rows, 0 = all hardware threads.
/// @throws std::invalid_argument if x or y has the wrong size, or q is inconsistent.
template <class Backend = default_backend>
void matvec(const quantized_view& q, std::span<const float> x, std::span<float> y, unsigned threads = 0,
            Backend = {}) {
    detail::product<Backend>(q, x, 1, y, threads, "hlwq::matvec");
}

/// Y = X Ŵᵀ for a batch of `n` tokens: X is n × cols (row-major, one token per row), Y is
/// n × rows: each Y row is matvec of the X row, the layout of a linear layer. Each block of
/// Ŵ is decoded once into a small buffer and used for all n tokens.
/// @throws std::invalid_argument if X or Y has the wrong size, or q is inconsistent.
template <class Backend = default_backend>
void matmul(const quantized_view& q, std::span<const float> x, std::size_t n, std::span<float> y,
            unsigned threads = 0, Backend = {}) {
    detail::product<Backend>(q, x, n, y, threads, "hlwq::matmul");
}

}  // namespace hlwq
