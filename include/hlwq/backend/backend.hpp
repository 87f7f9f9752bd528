// SPDX-License-Identifier: MIT
/// @file backend.hpp
/// @brief Backend tag types: which implementation of the kernels a call runs.
///
/// Like xsimd's architecture tags, a backend is an empty type passed by value; the public
/// functions take it as their last argument, defaulting to `hlwq::default_backend`.
/// Each backend specializes `hlwq::kernels<Backend>` in its own folder under `backend/`.
#pragma once

#include <xsimd/xsimd.hpp>

namespace hlwq {

/// Backend tags.
namespace backend {

/// Plain C++ reference kernels: one element at a time, the definition the others must match
/// bit for bit (same codes, same rotated values).
struct scalar {
    /// Human-readable backend name.
    static constexpr const char* name() noexcept { return "scalar"; }
};

/// SIMD CPU kernels on xsimd, for one instruction set `Arch` (an xsimd architecture tag such
/// as `xsimd::avx2` or `xsimd::avx512bw`). The default is the best one the compiler targets.
template <class Arch = xsimd::default_arch>
struct cpu {
    /// The xsimd architecture the kernels are compiled for.
    using arch = Arch;
    /// Human-readable backend name, e.g. "cpu/avx512bw".
    static constexpr const char* name() noexcept { return Arch::name(); }
};

/// CUDA kernels (`include/hlwq/backend/cuda`, built only with HLWQ_ENABLE_CUDA).
struct cuda {
    /// Human-readable backend name.
    static constexpr const char* name() noexcept { return "cuda"; }
};

}  // namespace backend

/// Largest magnitude of the integer centroid table of the int8-activation product
/// (activation_precision::int8): int8 for codebooks up to 5 bits, whose centroids are far
/// apart compared with the int8 step, int16 for 6..8 bits, which int8 would blur.
template <int Bits>
inline constexpr int int_table_max = Bits <= 5 ? 127 : 32767;

/// The backend public functions use when none is given.
using default_backend = backend::cpu<>;

/// Kernel set of a backend: specialized in `backend/<name>/kernels.hpp`. The primary template
/// is left undefined so that a backend without kernels fails at compile time.
template <class Backend>
struct kernels;

}  // namespace hlwq
