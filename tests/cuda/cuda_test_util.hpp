// Helpers of the CUDA backend's tests.
#pragma once

#include <hlwq/matmul.hpp>
#include <hlwq/packer.hpp>
#include <hlwq/quantize.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hlwq_test {

/// Per row, Σ |centroid(code_i) · xr_i| · norm_b / B over the row's blocks, with xr the
/// rotated activation: the size of the terms a matvec adds up. Summing them in fp32 in any
/// order is within about sqrt(cols) · 2^-24 of it (random rounding), so two matvecs that
/// differ only in the order of the sum agree to that; a wrong code, scale or block does not.
inline std::vector<double> row_mass(const hlwq::quantized_matrix& q, const std::vector<float>& x) {
    const std::size_t nb = q.blocks_per_row(), B = q.block;
    std::vector<float> xr(nb * B);
    hlwq::detail::rotate_activations<hlwq::backend::scalar>(q, x.data(), 1, xr.data());
    std::vector<double> mass(q.rows);
    std::vector<std::uint8_t> codes(B);
    for (std::size_t r = 0; r < q.rows; ++r)
        for (std::size_t b = 0; b < nb; ++b) {
            hlwq::unpack_codes(q.bits, q.block_codes(r, b), codes);
            double s = 0;
            for (std::size_t i = 0; i < B; ++i) s += std::abs(double(q.centroids[codes[i]]) * xr[b * B + i]);
            mass[r] += s * q.block_norm(r, b) / double(B);
        }
    return mass;
}

/// ‖a − b‖ / ‖mass‖ (norm-wise over the rows): how far two products of q are apart, relative
/// to the size of the terms they sum.
inline double error_over_mass(const std::vector<float>& a, const std::vector<float>& b,
                              const std::vector<double>& mass) {
    double err = 0, ref = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        ref += mass[i] * mass[i];
    }
    return ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
}

/// A matrix shape.
struct shape {
    std::size_t rows, cols;
};

}  // namespace hlwq_test
