// SPDX-License-Identifier: MIT
/// @file bits.hpp
/// @brief Bit widths: the compile-time constraint, the run-time check, and the one switch that
/// turns a run-time bit width into a template argument.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace hlwq {

/// Smallest and largest supported code width in bits ("PQ1" … "PQ8").
inline constexpr int min_bits = 1;
/// @copydoc min_bits
inline constexpr int max_bits = 8;

/// A bit width the library implements: 1..8.
template <int Bits>
concept valid_bits = Bits >= min_bits && Bits <= max_bits;

/// Throws std::invalid_argument unless 1 <= bits <= 8.
inline void check_bits(int bits) {
    if (bits < min_bits || bits > max_bits)
        throw std::invalid_argument("hlwq: bits must be in 1..8, got " + std::to_string(bits));
}

/// Calls `f.template operator()<Bits>()` with the run-time `bits` as a compile-time constant;
/// the only place where a run-time bit width becomes a template argument.
/// @throws std::invalid_argument if bits is outside 1..8.
template <class F>
decltype(auto) with_bits(int bits, F&& f) {
    check_bits(bits);
    switch (bits) {
        case 1: return std::forward<F>(f).template operator()<1>();
        case 2: return std::forward<F>(f).template operator()<2>();
        case 3: return std::forward<F>(f).template operator()<3>();
        case 4: return std::forward<F>(f).template operator()<4>();
        case 5: return std::forward<F>(f).template operator()<5>();
        case 6: return std::forward<F>(f).template operator()<6>();
        case 7: return std::forward<F>(f).template operator()<7>();
        default: return std::forward<F>(f).template operator()<8>();
    }
}

/// Calls `f.template operator()<Bits>()` for every width Bits = 1..8, in order.
template <class F>
void for_each_bits(F&& f) {
    [&]<int... I>(std::integer_sequence<int, I...>) {
        (f.template operator()<I + min_bits>(), ...);
    }(std::make_integer_sequence<int, max_bits - min_bits + 1>{});
}

}  // namespace hlwq
