// SPDX-License-Identifier: MIT
/// @file gemma4_image.hpp
/// @brief Gemma 4's image preprocessing, as transformers 5.17's default processor does it
/// (`Gemma4ImageProcessor`, the torchvision backend; models/gemma4/image_processing_gemma4.py):
///
///   1. aspect-ratio-preserving size: scale so that the image holds at most max_patches =
///      max_soft_tokens · pooling_kernel² patches of patch_size², both sides rounded down to
///      multiples of pooling_kernel · patch_size (get_aspect_ratio_preserving_size);
///   2. resize: torchvision's antialiased bicubic on the 8-bit image (resample.hpp), skipped
///      when the size is already right;
///   3. rescale (·1/255) and, if do_normalize, (x − mean) / std, in fp32;
///   4. patchify: patches in row-major order, each flattened as [y][x][channel]; position ids
///      (x, y) of each patch. The processor pads to max_patches with position (−1, −1); the
///      padding changes nothing downstream (masked in the encoder, dropped by the pooler), so
///      it is left out here.
#pragma once

#include "image.hpp"
#include "resample.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

namespace hlwq::rt {

/// The image-processor settings of a Gemma 4 model folder (defaults: Gemma4ImageProcessor's).
struct gemma4_image_config {
    std::size_t patch_size = 16;
    std::size_t max_soft_tokens = 280;  ///< one of 70, 140, 280, 560, 1120
    std::size_t pooling_kernel_size = 3;
    bool do_resize = true;
    resample_filter resample = resample_filter::bicubic;
    bool do_rescale = true;
    double rescale_factor = 1.0 / 255.0;
    bool do_normalize = false;
    std::array<float, 3> image_mean{0.0f, 0.0f, 0.0f};
    std::array<float, 3> image_std{1.0f, 1.0f, 1.0f};

    /// Reads preprocessor_config.json of `dir` (or the "image_processor" entry of
    /// processor_config.json); keys it does not set keep their defaults; no file at all gives
    /// the defaults.
    /// @throws std::runtime_error naming the file and key for a malformed or unsupported value.
    static gemma4_image_config load(const std::filesystem::path& dir);
};

/// get_aspect_ratio_preserving_size: (height, width) → the resized (height, width).
/// @throws std::invalid_argument when both sides round to 0 or the result exceeds the budget
///   (as transformers raises ValueError).
std::pair<std::size_t, std::size_t> gemma4_aspect_ratio_size(std::size_t height, std::size_t width,
                                                             std::size_t patch_size, std::size_t max_patches,
                                                             std::size_t pooling_kernel_size);

/// One preprocessed image: the processor's pixel_values and image_position_ids without the
/// padding rows.
struct gemma4_pixels {
    std::size_t grid_w = 0, grid_h = 0;          ///< patches along width and height
    std::size_t patch_dim = 0;                   ///< 3 · patch_size²
    std::size_t soft_tokens = 0;                 ///< patches / pooling_kernel² (num_soft_tokens_per_image)
    std::vector<float> values{};                 ///< [grid_h · grid_w][patch_dim]
    std::vector<std::array<std::int32_t, 2>> positions{};  ///< (x, y) of each patch

    std::size_t patches() const noexcept { return grid_w * grid_h; }
};

/// The processor's pixel values of `image` (see gemma4_image.hpp).
/// @throws std::invalid_argument for an empty image, and as gemma4_aspect_ratio_size.
gemma4_pixels gemma4_preprocess(const rgb_image& image, const gemma4_image_config& config);

}  // namespace hlwq::rt
