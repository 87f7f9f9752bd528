// SPDX-License-Identifier: MIT
// dense_gemm.hpp through Eigen (Map of strided row-major blocks, noalias products).
#include "dense_gemm.hpp"

#include <Eigen/Core>

namespace hlwq::rt {
namespace {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_block = Eigen::Map<const matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using block = Eigen::Map<matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

Eigen::Index idx(std::size_t v) { return static_cast<Eigen::Index>(v); }

}  // namespace

void gemm_xwt(const float* x, std::size_t ldx, const float* w, std::size_t ldw, float* y, std::size_t ldy,
              std::size_t n, std::size_t m, std::size_t k) {
    if (n == 0 || m == 0) return;
    const const_block X(x, idx(n), idx(k), Eigen::OuterStride<>(idx(ldx)));
    const const_block W(w, idx(m), idx(k), Eigen::OuterStride<>(idx(ldw)));
    block Y(y, idx(n), idx(m), Eigen::OuterStride<>(idx(ldy)));
    Y.noalias() = X * W.transpose();
}

void gemm_xw(const float* x, std::size_t ldx, const float* w, std::size_t ldw, float* y, std::size_t ldy,
             std::size_t n, std::size_t m, std::size_t k) {
    if (n == 0 || m == 0) return;
    const const_block X(x, idx(n), idx(k), Eigen::OuterStride<>(idx(ldx)));
    const const_block W(w, idx(k), idx(m), Eigen::OuterStride<>(idx(ldw)));
    block Y(y, idx(n), idx(m), Eigen::OuterStride<>(idx(ldy)));
    Y.noalias() = X * W;
}

void softmax_rows(float* x, std::size_t ld, std::size_t rows, std::size_t n) {
    // Through an aligned buffer: on an unaligned row Eigen would peel the first elements off to
    // scalar code (std::exp, another order of the sum) by the row's address, so the result
    // would depend on where the allocator put it.
    thread_local Eigen::ArrayXf e;
    for (std::size_t r = 0; r < rows; ++r) {
        Eigen::Map<Eigen::ArrayXf> row(x + r * ld, idx(n));
        e = (row - row.maxCoeff()).exp();
        row = e * (1.0f / e.sum());
    }
}

}  // namespace hlwq::rt
