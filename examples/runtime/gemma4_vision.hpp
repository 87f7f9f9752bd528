// SPDX-License-Identifier: MIT
/// @file gemma4_vision.hpp
/// @brief The Gemma 4 vision tower (transformers 5.17 `Gemma4VisionModel`) and the multimodal
/// embedder into the text model (`Gemma4MultimodalEmbedder`, `model.embed_vision`): image
/// patches in, one text-model embedding per soft token out. See gemma4_vision.cpp.
#pragma once

#include "gemma4_image.hpp"
#include "linear.hpp"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace hlwq::rt {

/// `vision_config` of a Gemma4ForConditionalGeneration config.json (Gemma4VisionConfig).
struct gemma4_vision_config {
    std::size_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
    std::size_t patch_size = 16, pooling_kernel = 3, position_embedding_size = 10240;
    float eps = 1e-6f;
    double rope_theta = 100.0;
    bool gelu_tanh = true;          ///< hidden_activation gelu_pytorch_tanh (else silu)
    bool clipped_linears = false;   ///< use_clipped_linears: clamp inputs and outputs of each linear
    bool standardize = false;       ///< (h − std_bias) · std_scale after pooling
    std::size_t text_hidden = 0;    ///< the text model's hidden size (embed_vision's output)
};

/// The vision tower and embed_vision of one checkpoint (weights read in place; dense, or HLWQ
/// codes for the linear layers of a quantized folder).
class gemma4_vision {
public:
    /// Opens the vision tower of the model folder `dir`; null when config.json has no
    /// vision_config (a text-only model).
    /// @throws std::runtime_error naming the file and key or tensor for a malformed or
    ///   unsupported config or a missing or misshapen tensor.
    static std::unique_ptr<gemma4_vision> open(const std::filesystem::path& dir, const linear_options& options);

    virtual ~gemma4_vision() = default;
    /// The tower's configuration.
    virtual const gemma4_vision_config& config() const = 0;
    /// The encoder's last hidden state, [patches][hidden] (Gemma4VisionEncoder, before pooling).
    virtual std::vector<float> encode(const gemma4_pixels& pixels) const = 0;
    /// The tower's output, [soft_tokens][hidden]: encode(), then the k × k average by
    /// position, · √hidden, and the standardization (Gemma4VisionModel.forward).
    virtual std::vector<float> soft_tokens(const gemma4_pixels& pixels) const = 0;
    /// embed_vision: RMSNorm without scale, then the projection to the text model's hidden
    /// size; [n][text_hidden] from [n][hidden].
    virtual std::vector<float> embed(const std::vector<float>& soft_tokens) const = 0;
    /// Bytes of the tower's weights.
    virtual std::size_t weight_bytes() const = 0;
    /// One line: layers, hidden size, weight formats.
    virtual std::string description() const = 0;
};

}  // namespace hlwq::rt
