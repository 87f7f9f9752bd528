// SPDX-License-Identifier: MIT
/// @file qwen35_vision.hpp
/// @brief The Qwen3.5 vision tower (transformers 5.17 `Qwen3_5VisionModel`, weights
/// `model.visual.*` of a Qwen3_5ForConditionalGeneration checkpoint), on hlwq::rt::linear
/// (dense bf16/f16/f32 as hlwq-quantize keeps the tower by default, or HLWQ codes for its
/// linear layers with --include-vision; the Conv3d, biases, norms and position table are dense):
///
///   x   = patch_embed(pixels)            Conv3d [C, T, p, p] stride = kernel: one product
///   x  += pos_embed interpolated          the learned √N × √N table resampled bilinearly
///                                         (align_corners) to the patch grid
///   per block: x += proj(attention(qkv(LN1(x))))   2-D RoPE (rows, columns) on q and k,
///                                         bidirectional within each frame
///              x += fc2(act(fc1(LN2(x))))
///   out = fc2(GELU(fc1(LN(x) of merge² consecutive patches, concatenated)))
///
/// Patches arrive in the processor's merge-block order (qwen35_image.hpp), which is what
/// makes merge² consecutive patches one 2 × 2 block.
#pragma once

#include "linear.hpp"

#include <hlwq/io/hlwq_format.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace hlwq::rt {

/// vision_config of a Qwen3.5 config.json.
struct qwen35_vision_config {
    std::size_t depth = 0, hidden = 0, intermediate = 0, heads = 0, in_channels = 3;
    std::size_t patch = 0, temporal_patch = 0, merge = 0, out_hidden = 0, grid_side = 0;
    double rope_theta = 10000.0;
    std::string act = "gelu_pytorch_tanh";

    std::size_t head_dim() const noexcept { return hidden / heads; }
    /// Floats of one flattened patch: in_channels · temporal_patch · patch².
    std::size_t patch_dim() const noexcept { return in_channels * temporal_patch * patch * patch; }
};

/// What the tower computes for one image or video.
struct qwen35_vision_output {
    std::vector<float> hidden;  ///< [patches][hidden]: the last block's output
    std::vector<float> merged;  ///< [patches / merge²][out_hidden]: the merger's (the image embeddings)
};

/// A loaded vision tower. It reads the weights in place: `ck` must outlive it.
class qwen35_vision {
public:
    /// The tower of `ck` (config.json's vision_config; tensors under `prefix`, e.g.
    /// "model.visual.").
    /// @throws std::runtime_error naming config.json and the key, or the tensor, for a missing
    ///   or malformed value, an unsupported hidden_act or rope type, or a tensor of the wrong
    ///   shape or type.
    qwen35_vision(const io::checkpoint& ck, const std::string& prefix, const linear_options& options);

    const qwen35_vision_config& config() const noexcept { return cfg_; }
    /// Bytes of the weights.
    std::size_t weight_bytes() const noexcept { return weight_bytes_; }

    /// Encodes `pixels` ([t · h · w][patch_dim], the processor's pixel_values) of a grid
    /// (t, h, w) of patches.
    /// @throws std::invalid_argument for a pixel count that is not t · h · w · patch_dim or
    ///   h, w not multiples of merge.
    qwen35_vision_output forward(std::span<const float> pixels, std::size_t t, std::size_t h, std::size_t w) const;

private:
    struct block {
        std::vector<float> ln1_w, ln1_b, ln2_w, ln2_b, qkv_b, proj_b, fc1_b, fc2_b;
        linear qkv, proj, fc1, fc2;
    };

    void add_bias(float* y, std::size_t n, const std::vector<float>& b) const noexcept;
    void attention(const block& B, const float* h, std::size_t n, std::size_t frame, const float* cos,
                   const float* sin, float* out) const;

    qwen35_vision_config cfg_{};
    linear_options lo_{};
    std::vector<float> patch_w_{}, patch_b_{};  // Conv3d as a [hidden][patch_dim] matrix
    std::vector<float> pos_embed_{};            // [grid_side²][hidden]
    std::vector<float> inv_freq_{};             // head_dim / 4 frequencies
    std::vector<block> blocks_{};
    std::vector<float> merge_ln_w_{}, merge_ln_b_{}, merge_fc1_b_{}, merge_fc2_b_{};
    linear merge_fc1_{}, merge_fc2_{};
    std::size_t weight_bytes_ = 0;
};

}  // namespace hlwq::rt
