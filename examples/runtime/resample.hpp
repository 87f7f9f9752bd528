// SPDX-License-Identifier: MIT
/// @file resample.hpp
/// @brief Antialiased image resizing as the vision processors do it: torchvision's
/// `resize(uint8 tensor, BICUBIC or BILINEAR, antialias=True)`, which on the CPU runs
/// PyTorch's uint8 kernel (`upsample_avx_bilinear_bicubic_uint8`, made to equal Pillow's
/// `Image.resize`). That kernel is reproduced exactly:
///
///   - per axis whose size changes, output i covers the input around center = s · (i + 0.5)
///     (s = in / out), with support 2 · max(s, 1) (bicubic) or max(s, 1) (bilinear); the
///     filter (Keys cubic with a = −0.5 as in Pillow, or the triangle) is stretched by s when
///     downscaling, and the taps are normalized to sum 1 (double precision);
///   - weights become int16 with the largest precision p (≤ 22 bits) that keeps the largest
///     weight below 2^15, and each output is (2^(p−1) + Σ w·x) >> p clamped to 0..255;
///   - the horizontal pass runs first into an 8-bit intermediate image, then the vertical one.
#pragma once

#include "image.hpp"

#include <cstddef>

namespace hlwq::rt {

/// The interpolation filter of resize_antialiased.
enum class resample_filter {
    bilinear,  ///< triangle filter (PIL BILINEAR = 2)
    bicubic,   ///< Keys cubic, a = −0.5 (PIL BICUBIC = 3)
};

/// `image` resized to width × height with the antialiased `filter` (see resample.hpp).
/// An axis that keeps its size is copied unchanged.
/// @throws std::invalid_argument for an empty source or target size, or a pixel buffer that
///   does not hold width · height · 3 bytes.
rgb_image resize_antialiased(const rgb_image& image, std::size_t width, std::size_t height, resample_filter filter);

}  // namespace hlwq::rt
