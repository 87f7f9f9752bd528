// SPDX-License-Identifier: MIT
/// @file gemma4.hpp
/// @brief The Gemma 4 text decoder (transformers 5.17 `Gemma4ForCausalLM`, or the language
/// model of `Gemma4ForConditionalGeneration`) on hlwq: original (bf16/f16/f32) or HLWQ
/// weights, fp16 or HLWQ KV cache. See gemma4.cpp for what it computes.
#pragma once

#include "gemma4_image.hpp"
#include "model.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace hlwq::rt {

/// A Gemma 4 model: causal_lm plus image input from preprocessed pixels.
///
/// Images (Gemma4ForConditionalGeneration with a vision_config; gemma4_vision.hpp): the prompt
/// holds <boi>, N x <image>, <eoi> per image; each run of image tokens fed to forward() takes
/// the next queued image's N embeddings (embed_vision's output, not scaled) in place of the
/// token's (a run of another length throws std::invalid_argument); image, video and audio
/// tokens otherwise look up the pad token, also image tokens with no image queued (as
/// transformers without pixel values).
/// With use_bidirectional_attention "vision", an image's tokens also attend to the later
/// tokens of the same image on sliding layers (full layers stay causal): an image goes
/// through the layers in one chunk, so chunks and sliding-window rings are sized for the
/// processor's max_soft_tokens.
class gemma4_lm : public causal_lm {
public:
    /// queue_image for pixels already preprocessed (e.g. a processor's pixel_values).
    /// @throws std::runtime_error without a vision tower; std::invalid_argument for pixels
    ///   that do not fit the tower (patch size, grid, position table).
    virtual std::vector<std::int32_t> queue_pixels(const gemma4_pixels& pixels) = 0;
    /// Queues embeddings computed elsewhere ([tokens][hidden], what embed_vision outputs) as
    /// one image; returns its prompt ids as queue_image does.
    /// @throws std::runtime_error without a vision tower; std::invalid_argument for a size that
    ///   is not a positive multiple of hidden or an image larger than the chunks allow.
    virtual std::vector<std::int32_t> queue_embeddings(std::vector<float> embeddings) = 0;
};

/// Opens a Gemma 4 model folder (config.json + safetensors; original or HLWQ): a
/// `model_loader` (the result is a gemma4_lm). A multimodal folder's vision tower is loaded
/// with it (and its preprocessor_config.json read); an audio tower is ignored.
/// @throws std::runtime_error naming the file and the config key or tensor for a missing or
///   malformed config.json, an unsupported config value (e.g. use_bidirectional_attention
///   "all", attention_bias, an unknown rope_type or activation), or a missing tensor or one
///   of the wrong shape or type.
std::unique_ptr<causal_lm> load_gemma4(const std::filesystem::path& dir, const model_options& options);

}  // namespace hlwq::rt
