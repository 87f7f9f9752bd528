// SPDX-License-Identifier: MIT
/// @file codebook.hpp
/// @brief Scalar codebooks: Lloyd-Max centroids of the standard Gaussian (`hlwq::lloyd_max`)
/// and codebooks fitted to data (`hlwq::fitted_codebook`), behind one interface.
///
/// A codebook maps a real value y to a code k in [0, 2^bits) and back to the centroid c[k].
/// Codes are ordered like the centroids, and encoding is defined exactly as
/// `k = number of boundaries b_i with b_i < y` (boundaries are the midpoints of neighbouring
/// centroids, so this is the nearest centroid, ties going to the lower one). Every backend
/// implements that same rule, so all of them produce identical codes.
#pragma once

#include "bits.hpp"
#include "detail/lloyd_max_tables.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq {

/// What the quantizer needs of a codebook: its width, its ascending centroids (2^bits of
/// them) and the 2^bits - 1 decision boundaries between them.
template <class C>
concept codebook = requires(const C& c) {
    { c.bits } -> std::convertible_to<int>;
    std::span<const float>(c.centroids);
    std::span<const float>(c.boundaries);
};

/// Code of `y` under ascending `boundaries` (2^bits - 1 of them): the number of boundaries
/// below y. Branch-free binary search; the reference rule all backends reproduce.
constexpr std::uint8_t encode_value(std::span<const float> boundaries, float y) noexcept {
    std::size_t k = 0;
    for (std::size_t step = (boundaries.size() + 1) / 2; step > 0; step /= 2)
        k += step * static_cast<std::size_t>(y > boundaries[k + step - 1]);  // no branch to mispredict
    return static_cast<std::uint8_t>(k);
}

/// The Lloyd-Max quantizer of N(0,1) with 2^Bits levels (the MSE-optimal scalar quantizer of
/// a standard Gaussian). Tables are exact to float precision and usable at compile time:
/// `static_assert(hlwq::lloyd_max<1>::centroids[1] > 0.79f);`. Bits outside 1..8 do not compile.
template <int Bits>
    requires valid_bits<Bits>
struct lloyd_max {
    /// Code width.
    static constexpr int bits = Bits;
    /// Number of centroids, 2^Bits.
    static constexpr std::size_t levels = std::size_t{1} << Bits;
    /// Centroids, ascending, symmetric around 0.
    static constexpr std::array<float, levels> centroids = detail::lloyd_max_table<Bits>::centroids;
    /// Decision boundaries: midpoints of neighbouring centroids.
    static constexpr std::array<float, levels - 1> boundaries =
        detail::lloyd_max_table<Bits>::boundaries;
    /// Mean squared error E[(X - q(X))^2] for X ~ N(0,1): the distortion the quantizer reaches
    /// on Gaussian data, and the limit an HLWQ weight NMSE is compared to.
    static constexpr double mse = detail::lloyd_max_table<Bits>::mse;

    /// Nearest-centroid code of y.
    static constexpr std::uint8_t encode(float y) noexcept { return encode_value(boundaries, y); }
    /// Centroid of code k (k < levels).
    static constexpr float decode(std::uint8_t k) noexcept { return centroids[k]; }
};

/// A non-owning view of any codebook, for run-time bit widths.
struct codebook_view {
    int bits = 0;                      ///< code width
    std::span<const float> centroids;  ///< 2^bits ascending centroids
    std::span<const float> boundaries; ///< 2^bits - 1 ascending boundaries
};

/// View of any codebook.
template <codebook C>
codebook_view view_of(const C& c) noexcept {
    return {static_cast<int>(c.bits), std::span<const float>(c.centroids),
            std::span<const float>(c.boundaries)};
}

/// The Lloyd-Max codebook for a run-time bit width.
/// @throws std::invalid_argument for bits outside 1..8.
inline codebook_view lloyd_max_view(int bits) {
    return with_bits(bits, []<int B>() { return view_of(lloyd_max<B>{}); });
}

/// Lloyd-Max MSE on N(0,1) for a run-time bit width.
/// @throws std::invalid_argument for bits outside 1..8.
inline double lloyd_max_mse(int bits) {
    return with_bits(bits, []<int B>() { return lloyd_max<B>::mse; });
}

/// A codebook fitted to samples by the 1-D Lloyd algorithm (k-means): same interface as
/// lloyd_max, with its tables held at run time.
struct fitted_codebook {
    int bits = 0;                   ///< code width
    std::vector<float> centroids;   ///< 2^bits ascending centroids
    std::vector<float> boundaries;  ///< 2^bits - 1 midpoints
    double mse = 0;                 ///< mean squared error on the samples it was fitted to
    int iterations = 0;             ///< Lloyd iterations run

    /// Nearest-centroid code of y.
    std::uint8_t encode(float y) const noexcept { return encode_value(boundaries, y); }
    /// Centroid of code k.
    float decode(std::uint8_t k) const noexcept { return centroids[k]; }
};

/// Checks that `c` is a usable codebook: 1..8 bits, the right table sizes, finite values,
/// centroids ascending and boundaries ascending.
/// @throws std::invalid_argument naming what is wrong.
inline void check_codebook(const codebook_view& c) {
    check_bits(c.bits);
    const std::size_t levels = std::size_t{1} << c.bits;
    if (c.centroids.size() != levels || c.boundaries.size() != levels - 1)
        throw std::invalid_argument("hlwq: a " + std::to_string(c.bits) + "-bit codebook needs " +
                                    std::to_string(levels) + " centroids and " +
                                    std::to_string(levels - 1) + " boundaries, got " +
                                    std::to_string(c.centroids.size()) + " and " +
                                    std::to_string(c.boundaries.size()));
    auto finite = [](float v) { return std::isfinite(v); };
    if (!std::all_of(c.centroids.begin(), c.centroids.end(), finite) ||
        !std::all_of(c.boundaries.begin(), c.boundaries.end(), finite))
        throw std::invalid_argument("hlwq: codebook holds a NaN or infinite value");
    if (!std::is_sorted(c.centroids.begin(), c.centroids.end()) ||
        !std::is_sorted(c.boundaries.begin(), c.boundaries.end()))
        throw std::invalid_argument("hlwq: codebook centroids and boundaries must be ascending");
}

/// Fits a 2^bits-level codebook to `samples` with the 1-D Lloyd algorithm, starting from
/// the sample quantiles; stops when no centroid moves by more than `tolerance` or after
/// `max_iterations`. A cell that gets empty keeps its centroid.
/// Cost: one sort, then O(2^bits · log n) per iteration (prefix sums over the sorted samples).
/// @throws std::invalid_argument for bits outside 1..8, no samples, or a NaN/inf sample.
inline fitted_codebook fit_codebook(std::span<const float> samples, int bits,
                                    int max_iterations = 1000, double tolerance = 1e-7) {
    check_bits(bits);
    if (samples.empty()) throw std::invalid_argument("hlwq::fit_codebook: no samples");
    std::vector<double> x(samples.begin(), samples.end());
    for (std::size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i]))
            throw std::invalid_argument("hlwq::fit_codebook: sample " + std::to_string(i) +
                                        " is NaN or infinite");
    std::sort(x.begin(), x.end());
    const std::size_t n = x.size();
    std::vector<double> sum(n + 1, 0.0), sum_sq(n + 1, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
        sum[i + 1] = sum[i] + x[i];
        sum_sq[i + 1] = sum_sq[i] + x[i] * x[i];
    }
    const std::size_t levels = std::size_t{1} << bits;
    std::vector<double> c(levels), b(levels - 1);
    for (std::size_t k = 0; k < levels; ++k) c[k] = x[std::min(n - 1, (2 * k + 1) * n / (2 * levels))];

    // First sample index of each cell: samples with x <= b[k-1] go to cells < k (encode rule).
    auto cell_starts = [&] {
        std::vector<std::size_t> start(levels + 1);
        start[0] = 0;
        start[levels] = n;
        for (std::size_t k = 1; k < levels; ++k)
            start[k] = static_cast<std::size_t>(std::upper_bound(x.begin(), x.end(), b[k - 1]) - x.begin());
        return start;
    };
    fitted_codebook out;
    out.bits = bits;
    for (out.iterations = 0; out.iterations < max_iterations;) {
        for (std::size_t k = 0; k + 1 < levels; ++k) b[k] = 0.5 * (c[k] + c[k + 1]);
        const auto start = cell_starts();
        double moved = 0;
        for (std::size_t k = 0; k < levels; ++k) {
            const std::size_t cnt = start[k + 1] - start[k];
            if (cnt == 0) continue;
            const double mean = (sum[start[k + 1]] - sum[start[k]]) / static_cast<double>(cnt);
            moved = std::max(moved, std::abs(mean - c[k]));
            c[k] = mean;
        }
        ++out.iterations;
        if (moved <= tolerance) break;
    }
    for (std::size_t k = 0; k + 1 < levels; ++k) b[k] = 0.5 * (c[k] + c[k + 1]);
    out.centroids.assign(c.begin(), c.end());
    out.boundaries.assign(b.begin(), b.end());
    // Distortion with the float tables, as the quantizer will use them: per cell,
    // sum (x - c)^2 = S2 - 2 c S1 + c^2 n.
    std::vector<double> bf(out.boundaries.begin(), out.boundaries.end());
    std::swap(b, bf);
    const auto start = cell_starts();
    double err = 0;
    for (std::size_t k = 0; k < levels; ++k) {
        const double ck = out.centroids[k];
        const double s1 = sum[start[k + 1]] - sum[start[k]];
        const double s2 = sum_sq[start[k + 1]] - sum_sq[start[k]];
        err += s2 - 2 * ck * s1 + ck * ck * static_cast<double>(start[k + 1] - start[k]);
    }
    out.mse = std::max(0.0, err) / static_cast<double>(n);
    return out;
}

}  // namespace hlwq
