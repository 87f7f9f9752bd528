// SPDX-License-Identifier: MIT
/// @file linear.hpp
/// @brief A linear layer (y = W x, no bias) over a checkpoint parameter that is either dense
/// (F32/F16/BF16, read in place from the mapped file) or HLWQ-quantized (a quantized_view, run
/// by hlwq::matvec / hlwq::matmul on the codes; a row lookup, as embeddings need, dequantizes
/// that one row).
///
/// Dense weights stay as stored (zero copy): bf16/f16 rows are widened to fp32 piece by piece
/// (exact conversions) in a small stack buffer right before their dot products. Converting the
/// whole model to fp32 at load would double the memory of a bf16 model and the bytes a decode
/// step reads, which is what bounds decode speed; the widening itself costs a shift (bf16) or
/// one F16C instruction (f16) per element. Products are computed in fp32 (forward_gemm: through
/// Eigen's GEMM for an image's many patches).
#pragma once

#include "dense_gemm.hpp"
#include "float_tensor.hpp"

#include <hlwq/detail/parallel.hpp>
#include <hlwq/float16.hpp>
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/kv_cache.hpp>
#include <hlwq/matmul.hpp>
#include <hlwq/quantize.hpp>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::rt {

/// How linear layers run.
struct linear_options {
    /// Worker threads over output rows; 0 = one per hardware thread.
    unsigned threads = 0;
    /// Quantized layers use int8 activations (see hlwq::activation_precision).
    bool int8_activations = true;
};

/// One weight matrix [rows, cols] of a linear layer, dense or quantized (see linear.hpp).
class linear {
public:
    /// An empty layer (0 × 0).
    linear() = default;

    /// The 2-D parameter `name` of `ck`, which must have the shape [rows, cols].
    /// @throws std::runtime_error naming the tensor if it is missing, has another shape, or is
    ///   dense of a type other than F32/F16/BF16.
    static linear load(const io::checkpoint& ck, const std::string& name, std::size_t rows, std::size_t cols) {
        return load_impl(ck, name, std::nullopt, 0, rows, cols);
    }

    /// Expert `expert` of the 3-D parameter `name` [experts, rows, cols] of `ck`.
    /// @throws std::runtime_error as load().
    static linear load_expert(const io::checkpoint& ck, const std::string& name, std::size_t expert,
                              std::size_t experts, std::size_t rows, std::size_t cols) {
        return load_impl(ck, name, expert, experts, rows, cols);
    }

    /// Output features.
    std::size_t rows() const noexcept { return rows_; }
    /// Input features.
    std::size_t cols() const noexcept { return cols_; }
    /// Whether the weights are HLWQ codes.
    bool quantized() const noexcept { return q_.has_value(); }
    /// Code width of a quantized layer, 0 for a dense one.
    int bits() const noexcept { return q_ ? q_->bits : 0; }
    /// Bytes of the weights (codes and norms, or the dense elements).
    std::size_t bytes() const noexcept { return q_ ? q_->storage_bytes() : rows_ * cols_ * elem_; }
    /// "bf16", "f16", "f32" or "PQ<bits>".
    std::string format() const {
        if (q_) return "PQ" + std::to_string(q_->bits);
        return type_ == io::dtype::bf16 ? "bf16" : type_ == io::dtype::f16 ? "f16" : "f32";
    }

    /// y[i] = W x[i] for n tokens: x is n × cols, y is n × rows (row-major). One token runs
    /// the matvec path, more the matmul path.
    void forward(const float* x, std::size_t n, float* y, const linear_options& o) const {
        if (n == 0) return;
        // Workers come from parallel_for's persistent pool, so a split costs a hand-off of a
        // few microseconds, not a thread start: each worker gets at least ~64k weights times
        // tokens (hlwq's rows_per_thread): ~10 µs of work, several hand-offs' worth. (On
        // gemma4-gcide-tiny, 2 threads, decode speed did not move measurably between 16k and
        // 256k on a loaded machine.)
        const std::size_t min_rows = detail::rows_per_thread(cols_ * n);
        const unsigned threads = detail::thread_count(o.threads, rows_, min_rows);
        if (q_) {
            const product_options po{.threads = threads,
                                     .activations = o.int8_activations ? activation_precision::int8
                                                                       : activation_precision::f32};
            if (n == 1) hlwq::matvec(*q_, std::span<const float>(x, cols_), std::span<float>(y, rows_), po);
            else hlwq::matmul(*q_, std::span<const float>(x, n * cols_), n, std::span<float>(y, n * rows_), po);
            return;
        }
        const std::size_t tiles = (rows_ + tile - 1) / tile;
        detail::parallel_for(tiles, threads, [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) dense_tile(t * tile, std::min(rows_, (t + 1) * tile), x, n, y);
        });
    }

    /// forward() for many tokens at once (an image's patches) through Eigen's cache-blocked GEMM
    /// on blocks of rows widened to fp32 once (dense_gemm.hpp): forward()'s tiles would stream
    /// every token's x again for each 4 rows. Quantized layers and fewer than 16 tokens run
    /// forward(). The sums run in another order than forward()'s, so a token's result would
    /// depend on how many tokens share the call: the text models keep forward(), whose
    /// arithmetic per token is the same in any chunk (test_gemma4 checks it to 1e-5).
    void forward_gemm(const float* x, std::size_t n, float* y, const linear_options& o) const {
        if (q_ || n < gemm_tokens) {
            forward(x, n, y, o);
            return;
        }
        // Fixed blocks of rows, so the sums do not depend on the thread count either.
        const std::size_t blocks = (rows_ + gemm_rows - 1) / gemm_rows;
        const unsigned threads = detail::thread_count(o.threads, rows_, detail::rows_per_thread(cols_ * n));
        detail::parallel_for(blocks, std::min<std::size_t>(threads, blocks), [&](std::size_t b0, std::size_t b1) {
            std::vector<float> w(std::min(rows_, gemm_rows) * cols_);
            for (std::size_t b = b0; b < b1; ++b) {
                const std::size_t r0 = b * gemm_rows, m = std::min(gemm_rows, rows_ - r0);
                for (std::size_t j = 0; j < m; ++j)
                    for (std::size_t c = 0; c < cols_; c += piece) widen(r0 + j, c, std::min(piece, cols_ - c), w.data() + j * cols_ + c);
                gemm_xwt(x, cols_, w.data(), cols_, y + r0, rows_, n, m, cols_);
            }
        });
    }

    /// Row r of W as fp32 (an embedding lookup): widened from a dense layer (exact), or
    /// dequantized from the codes of a quantized one (the same values hlwq::dequantize gives),
    /// so quantized embeddings never expand beyond the rows a chunk looks up.
    /// @throws std::out_of_range if r >= rows().
    void row(std::size_t r, float* out) const {
        if (r >= rows_)
            throw std::out_of_range("hlwq::rt::linear::row: row " + std::to_string(r) + " of " + std::to_string(rows_));
        if (q_) {
            hlwq::dequantize_rows(*q_, r, std::span<float>(out, cols_));
            return;
        }
        for (std::size_t c = 0; c < cols_; c += piece) widen(r, c, std::min(piece, cols_ - c), out + c);
    }

private:
    static constexpr std::size_t tile = detail::kv_block;  // rows whose pieces are dotted together
    static constexpr std::size_t piece = 512;              // columns widened at a time
    static constexpr std::size_t gemm_tokens = 16;         // forward_gemm's GEMM from this many tokens on
    static constexpr std::size_t gemm_rows = 64;           // rows per GEMM block (a unit of work)

    static linear load_impl(const io::checkpoint& ck, const std::string& name, std::optional<std::size_t> expert,
                            std::size_t experts, std::size_t rows, std::size_t cols) {
        const auto fail = [&](const std::string& what) {
            return std::runtime_error(ck.path().string() + ": tensor '" + name + "' " + what);
        };
        if (!ck.contains(name)) throw fail("is missing");
        std::vector<std::int64_t> want;
        if (expert) want.push_back(static_cast<std::int64_t>(experts));
        want.push_back(static_cast<std::int64_t>(rows));
        want.push_back(static_cast<std::int64_t>(cols));
        const auto shape = ck.shape(name);
        if (shape != want) throw fail("has shape " + shape_string(shape) + ", expected " + shape_string(want));
        linear l;
        l.rows_ = rows;
        l.cols_ = cols;
        if (ck.is_quantized(name)) {
            l.q_ = expert ? ck.quantized(name, *expert) : ck.quantized(name);
            if (l.q_->rows != rows || l.q_->cols != cols) throw fail("has a quantized view of another shape");
            return l;
        }
        const io::tensor_view v = ck.dense(name);
        if (v.type != io::dtype::f32 && v.type != io::dtype::f16 && v.type != io::dtype::bf16)
            throw fail("has a dtype other than F32, F16 or BF16");
        l.type_ = v.type;
        l.elem_ = io::dtype_size(v.type);
        const std::size_t bytes = rows * cols * l.elem_;
        l.data_ = v.data.data() + (expert ? *expert * bytes : 0);
        return l;
    }

    /// out[0..len) = W[r][c .. c+len) as fp32 (exact).
    void widen(std::size_t r, std::size_t c, std::size_t len, float* out) const noexcept {
        const std::byte* src = data_ + (r * cols_ + c) * elem_;
        if (type_ == io::dtype::f32) {
            std::memcpy(out, src, len * sizeof(float));
            return;
        }
        std::uint16_t raw[piece];
        std::memcpy(raw, src, len * 2);
        if (type_ == io::dtype::bf16) {
            for (std::size_t i = 0; i < len; ++i) {
                const std::uint32_t b = static_cast<std::uint32_t>(raw[i]) << 16;
                std::memcpy(out + i, &b, 4);
            }
            return;
        }
        std::size_t i = 0;
#if defined(__F16C__)
        for (; i + 8 <= len; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(raw + i))));
#endif
        for (; i < len; ++i) out[i] = half::to_float(raw[i]);
    }

    /// Rows [r0, r1) (at most `tile`) of y for n tokens: each piece of the rows is widened
    /// once and dotted with every token.
    void dense_tile(std::size_t r0, std::size_t r1, const float* x, std::size_t n, float* y) const noexcept {
        const std::size_t m = r1 - r0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t r = r0; r < r1; ++r) y[i * rows_ + r] = 0.0f;
        alignas(64) float w[tile * piece];
        for (std::size_t c = 0; c < cols_; c += piece) {
            const std::size_t len = std::min(piece, cols_ - c);
            // The tile is contiguous in w as m vectors of len floats.
            for (std::size_t j = 0; j < m; ++j) widen(r0 + j, c, len, w + j * len);
            for (std::size_t i = 0; i < n; ++i) {
                const float* xi = x + i * cols_ + c;
                float* yi = y + i * rows_ + r0;
                if (m == tile) {
                    float d[tile];
                    detail::kv_dot4(xi, w, len, d);
                    for (std::size_t j = 0; j < tile; ++j) yi[j] += d[j];
                } else {
                    for (std::size_t j = 0; j < m; ++j) yi[j] += detail::kv_dot(xi, w + j * len, len);
                }
            }
        }
    }

    std::size_t rows_ = 0, cols_ = 0;
    std::optional<quantized_view> q_ = std::nullopt;
    io::dtype type_ = io::dtype::f32;
    std::size_t elem_ = 4;
    const std::byte* data_ = nullptr;
};

}  // namespace hlwq::rt
