// SPDX-License-Identifier: MIT
/// @file backend/cuda/checks.hpp
/// @brief Argument checks shared by the CUDA backend's public functions (host code).
#pragma once

#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>

namespace hlwq::cuda::detail {

/// Throws std::invalid_argument (naming `fn`) if the shape overflows the kernels' int indices.
inline void check_int_shape(const char* fn, std::size_t rows, std::size_t cols) {
    constexpr auto int_max = static_cast<std::size_t>(std::numeric_limits<int>::max());
    if (rows > int_max || cols > int_max || (cols + 127) / 128 * 4 > int_max)
        throw std::invalid_argument(std::string(fn) + ": shape " + std::to_string(rows) + " x " + std::to_string(cols) +
                                    " is beyond the kernels' int indices");
}

/// Throws std::invalid_argument (naming `fn` and `what`) unless have == need.
inline void check_count(const char* fn, const char* what, std::size_t have, std::size_t need) {
    if (have != need)
        throw std::invalid_argument(std::string(fn) + ": " + what + " has " + std::to_string(have) + " values, needs " +
                                    std::to_string(need));
}

}  // namespace hlwq::cuda::detail
