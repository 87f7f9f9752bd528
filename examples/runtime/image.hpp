// SPDX-License-Identifier: MIT
/// @file image.hpp
/// @brief Image files for the vision models: decoded to 8-bit RGB the way transformers'
/// `load_image` does it (PIL: `ImageOps.exif_transpose`, then `convert("RGB")`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace hlwq::rt {

/// An 8-bit RGB image: `pixels` is row-major, RGB interleaved, width · height · 3 bytes.
struct rgb_image {
    std::size_t width = 0;               ///< columns
    std::size_t height = 0;              ///< rows
    std::vector<std::uint8_t> pixels{};  ///< (y · width + x) · 3 + channel
};

/// What load_image refuses, so memory stays bounded whatever the file says.
struct image_limits {
    /// Largest width · height decoded (64 Mi pixels: 192 MiB of RGB).
    std::size_t max_pixels = std::size_t{64} << 20;
    /// Largest file read.
    std::size_t max_file_bytes = std::size_t{256} << 20;
};

/// Decodes a PNG, JPEG, BMP, GIF (first frame) or WebP (lossy or lossless; an animation's first
/// frame) file (also TGA, PSD, PIC, PNM: whatever stb_image reads, except HDR). Grey becomes
/// R = G = B; alpha is dropped, as PIL's `convert("RGB")` does (the colour under it kept, not
/// blended); 16-bit channels keep their high byte. A JPEG's EXIF orientation is applied (PIL's
/// `exif_transpose`). WebP goes through libwebp, as in Pillow.
/// @throws std::runtime_error naming the file for a missing, unreadable, truncated or
///   unsupported file and for an image beyond `limits` (checked before decoding).
rgb_image load_image(const std::filesystem::path& path, const image_limits& limits = {});

/// load_image on bytes already in memory; `name` is used in error messages.
rgb_image decode_image(std::span<const std::uint8_t> bytes, const std::string& name, const image_limits& limits = {});

}  // namespace hlwq::rt
