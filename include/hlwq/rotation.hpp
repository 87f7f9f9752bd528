// SPDX-License-Identifier: MIT
/// @file rotation.hpp
/// @brief The orthonormal fast Walsh-Hadamard transform, blockwise, and the optional seeded
/// random-sign diagonal.
///
/// `fwht(x)` computes H_n x / sqrt(n), with H_n the Sylvester Hadamard matrix
/// (H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]). It is symmetric and orthogonal, so the same
/// call undoes it. n is a power of two in 16..1024: 128 for weight blocks, head_dim 64..512
/// for KV caches.
///
/// `sign_diagonal` is the D of a randomized rotation H·D (entries ±1 drawn from a seed). A
/// checkpoint quantized with it is a *different format*: it dequantizes correctly only with
/// the same seed (quantized_matrix records it).
#pragma once

#include "backend/kernels.hpp"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

/// Hadamard-Lloyd Weight Quantization.
namespace hlwq {

/// Smallest and largest rotation (block) length.
inline constexpr std::size_t min_rotation_size = 16;
/// @copydoc min_rotation_size
inline constexpr std::size_t max_rotation_size = 1024;

/// True if n is a power of two in 16..1024.
constexpr bool is_rotation_size(std::size_t n) noexcept {
    return n >= min_rotation_size && n <= max_rotation_size && (n & (n - 1)) == 0;
}

/// Throws std::invalid_argument (mentioning `what`) unless is_rotation_size(n).
inline void check_rotation_size(std::size_t n, const char* what = "rotation size") {
    if (!is_rotation_size(n))
        throw std::invalid_argument(std::string("hlwq: ") + what +
                                    " must be a power of two in 16..1024, got " + std::to_string(n));
}

/// In-place orthonormal Walsh-Hadamard transform of x (x.size() a power of two in 16..1024).
/// Its own inverse; preserves the L2 norm.
/// @throws std::invalid_argument for any other size.
template <class Backend = default_backend>
void fwht(std::span<float> x, Backend = {}) {
    check_rotation_size(x.size());
    kernels<Backend>::fwht(x.data(), x.size());
    const float s = 1.0f / std::sqrt(static_cast<float>(x.size()));
    for (float& v : x) v *= s;
}

/// fwht() of each consecutive `block` values of x (a long row in blocks).
/// @throws std::invalid_argument unless block is a rotation size dividing x.size().
template <class Backend = default_backend>
void fwht_blocks(std::span<float> x, std::size_t block, Backend backend = {}) {
    check_rotation_size(block, "block size");
    if (x.size() % block != 0)
        throw std::invalid_argument("hlwq::fwht_blocks: length " + std::to_string(x.size()) +
                                    " is not a multiple of the block size " + std::to_string(block));
    for (std::size_t i = 0; i < x.size(); i += block) fwht(x.subspan(i, block), backend);
}

/// A diagonal of random signs D = diag(±1) of length n, drawn from `seed` with splitmix64
/// (sign i is bit i % 64 of the (i / 64)-th output). The same D is used for every block.
class sign_diagonal {
public:
    /// The diagonal of length n for `seed`.
    sign_diagonal(std::uint64_t seed, std::size_t n) : signs_(n) {
        std::uint64_t state = seed, word = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (i % 64 == 0) word = splitmix64(state);
            signs_[i] = (word >> (i % 64)) & 1 ? -1.0f : 1.0f;
        }
    }
    /// x[i] *= D[i] for a block x of the diagonal's length (D is its own inverse).
    void apply(std::span<float> x) const noexcept {
        for (std::size_t i = 0; i < x.size() && i < signs_.size(); ++i) x[i] *= signs_[i];
    }
    /// The ±1 entries.
    std::span<const float> signs() const noexcept { return signs_; }

private:
    static std::uint64_t splitmix64(std::uint64_t& state) noexcept {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    std::vector<float> signs_;
};

}  // namespace hlwq
