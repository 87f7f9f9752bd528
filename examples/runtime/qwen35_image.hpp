// SPDX-License-Identifier: MIT
/// @file qwen35_image.hpp
/// @brief Qwen3.5's image preprocessing, as transformers 5.17's processor does it
/// (`Qwen2VLImageProcessor`, the torchvision backend that `Qwen2VLImageProcessorFast` in a
/// model's preprocessor_config.json resolves to):
///
///   1. smart_resize: height and width rounded to multiples of factor = patch_size ·
///      merge_size, then scaled (aspect ratio kept) into [min_pixels, max_pixels];
///   2. resize: torchvision's antialiased bicubic on the 8-bit image (resample.hpp);
///   3. rescale and normalize: (x − mean/rescale_factor) / (std/rescale_factor) in fp32;
///   4. patchify: the image is one frame repeated temporal_patch_size times; patches come in
///      merge-block order (block row, block column, row in block, column in block), each
///      flattened as [channel][frame][y][x] (the Conv3d weight's layout), so grid (t, h, w) =
///      (1, height / patch, width / patch) and the vision tower's merger joins every
///      merge² consecutive patches into one token.
#pragma once

#include "image.hpp"
#include "resample.hpp"

#include <array>
#include <cstddef>
#include <filesystem>
#include <utility>
#include <vector>

namespace hlwq::rt {

/// The image-processor settings of a Qwen3.5 model folder (defaults: Qwen2VLImageProcessor's).
struct qwen35_image_config {
    std::size_t patch_size = 14;
    std::size_t temporal_patch_size = 2;
    std::size_t merge_size = 2;
    std::size_t min_pixels = 56 * 56;          ///< size.shortest_edge (or min_pixels)
    std::size_t max_pixels = 28 * 28 * 1280;   ///< size.longest_edge (or max_pixels)
    bool do_resize = true;
    resample_filter resample = resample_filter::bicubic;
    bool do_rescale = true;
    double rescale_factor = 1.0 / 255.0;
    bool do_normalize = true;
    std::array<float, 3> image_mean{0.48145466f, 0.4578275f, 0.40821073f};  ///< OPENAI_CLIP_MEAN
    std::array<float, 3> image_std{0.26862954f, 0.26130258f, 0.27577711f};   ///< OPENAI_CLIP_STD

    /// Reads preprocessor_config.json of `dir` (or the "image_processor" entry of
    /// processor_config.json); keys it does not set keep their defaults.
    /// @throws std::runtime_error naming the file and key for a missing file, a malformed
    ///   value or an unsupported one (resample other than 2 = bilinear or 3 = bicubic).
    static qwen35_image_config load(const std::filesystem::path& dir);
};

/// transformers' smart_resize: (height, width) → the resized (height, width), multiples of
/// `factor` with min_pixels ≤ h · w ≤ max_pixels where rounding allows (Python's round: ties
/// to even).
/// @throws std::invalid_argument for a zero size, a zero factor or an aspect ratio above 200.
std::pair<std::size_t, std::size_t> qwen35_smart_resize(std::size_t height, std::size_t width, std::size_t factor,
                                                        std::size_t min_pixels, std::size_t max_pixels);

/// One preprocessed image: the processor's `pixel_values` and `image_grid_thw`.
struct qwen35_pixels {
    std::size_t grid_t = 0, grid_h = 0, grid_w = 0;  ///< patches along time, height, width
    std::size_t patch_dim = 0;                       ///< channels · temporal_patch_size · patch²
    std::vector<float> values{};                     ///< [grid_t · grid_h · grid_w][patch_dim]

    std::size_t patches() const noexcept { return grid_t * grid_h * grid_w; }
};

/// The processor's pixel values of `image` (see qwen35_image.hpp).
/// @throws std::invalid_argument for an empty image, and as qwen35_smart_resize.
qwen35_pixels qwen35_preprocess(const rgb_image& image, const qwen35_image_config& config);

}  // namespace hlwq::rt
