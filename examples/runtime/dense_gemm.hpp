// SPDX-License-Identifier: MIT
/// @file dense_gemm.hpp
/// @brief fp32 matrix products for many tokens at once (the vision tower's patches, attention
/// over them) through Eigen's cache-blocked GEMM, and the softmax of score rows;
/// single-threaded: callers split the work (parallel_for). Row-major operands with row strides ("ld"), so that blocks of larger
/// matrices (a head's columns, a block of rows) are used in place. Compiled in dense_gemm.cpp,
/// so that Eigen's headers stay out of the runtime's other files.
#pragma once

#include <cstddef>

namespace hlwq::rt {

/// y = x · wᵀ: y[i][j] = Σ_l x[i][l] · w[j][l] for i < n, j < m, l < k (x is n × k, w is m × k).
void gemm_xwt(const float* x, std::size_t ldx, const float* w, std::size_t ldw, float* y, std::size_t ldy,
              std::size_t n, std::size_t m, std::size_t k);

/// y = x · w: y[i][j] = Σ_l x[i][l] · w[l][j] for i < n, j < m, l < k (x is n × k, w is k × m).
void gemm_xw(const float* x, std::size_t ldx, const float* w, std::size_t ldw, float* y, std::size_t ldy,
             std::size_t n, std::size_t m, std::size_t k);

/// Each of `rows` rows of n values (row stride ld) replaced by its softmax: exp(x − max) / Σ,
/// with Eigen's vectorized exp (within a few ulps of std::exp) and an fp32 sum.
void softmax_rows(float* x, std::size_t ld, std::size_t rows, std::size_t n);

}  // namespace hlwq::rt
