// SPDX-License-Identifier: MIT
/// @file qwen35.hpp
/// @brief The Qwen3.5 text decoder, dense and MoE (transformers 5.17 `Qwen3_5ForCausalLM` /
/// `Qwen3_5MoeForCausalLM`, or the language model of `Qwen3_5ForConditionalGeneration` /
/// `Qwen3_5MoeForConditionalGeneration`), on hlwq: original (bf16/f16/f32) or HLWQ weights,
/// with the vision tower of a multimodal folder (qwen35_vision.hpp) for image input.
///
/// Layers mix Gated DeltaNet linear attention (conv1d + gated delta rule, gated_delta.hpp)
/// and gated full attention (q/k norms, partial RoPE, GQA, sigmoid output gate) per
/// `layer_types`; RMSNorms scale by (1 + w). The cache is hybrid: full-attention layers keep
/// keys and values in a hlwq::kv_cache (fp16, or HLWQ codes with model_options::kv_bits
/// 2..4), linear-attention layers keep their conv1d inputs and delta-rule state. Prefill runs
/// in chunks of model_options::prefill_chunk tokens (matmul; the delta rule in its chunked
/// form), single tokens run matvec and the recurrent form.
///
/// Images (transformers' Qwen3_5Model.forward + get_rope_index): queue_image() (model.hpp) or
/// add_image() encodes an image and queues its embeddings; the next image-pad tokens fed to
/// forward() (the prompt holds `<|vision_start|>`, N × `<|image_pad|>`, `<|vision_end|>`:
/// image_placeholder(N); the chat template writes the start and end, queue_image returns the
/// N pads) take them in order instead of the pad's embedding, with M-RoPE positions
/// (start, start + row, start + column) where start is the position the first pad would have
/// had; the text after the image continues at start + max(rows, columns), and so does
/// generation. An image-pad token with no image queued is an ordinary token (as transformers
/// without pixel values).
///
/// truncate(n) works only for n == position() (nothing to drop) and n == 0 (reset): the
/// recurrent states of the linear-attention layers hold the whole past in a fixed-size summary
/// and cannot be rolled back to an earlier position, so any other n throws
/// std::invalid_argument (a caller re-using a prompt prefix must reset and feed it again).
/// reset() also drops queued images; truncate(0) keeps those not yet fed.
#pragma once

#include "image.hpp"
#include "model.hpp"
#include "qwen35_image.hpp"
#include "qwen35_vision.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace hlwq::rt {

/// A Qwen3.5 model: the causal_lm interface (with its image part: has_vision() when the
/// folder has config.json vision_config and model.visual.* tensors, image_token_id() =
/// config.json's image_token_id, queue_image(), pending_image_tokens()) plus the steps of
/// image input for tests and tools (see qwen35.hpp).
class qwen35_model : public causal_lm {
public:
    /// The ids that stand for an image of `tokens` embeddings: vision start, `tokens` image
    /// pads, vision end (what the processor expands `<|image_pad|>` to).
    /// @throws std::runtime_error without a vision tower.
    virtual std::vector<std::int32_t> image_placeholder(std::size_t tokens) const = 0;
    /// The image processor's settings (preprocessor_config.json, read once).
    /// @throws std::runtime_error without a vision tower, or as qwen35_image_config::load, or
    ///   when its patch sizes differ from vision_config's.
    virtual const qwen35_image_config& image_config() const = 0;
    /// The vision tower's output for preprocessed pixels (nothing is queued).
    /// @throws std::runtime_error without a vision tower; std::invalid_argument for pixels of
    ///   another patch size.
    virtual qwen35_vision_output encode_image(const qwen35_pixels& pixels) const = 0;
    /// Encodes the image and queues its embeddings for the next image-pad tokens; returns how
    /// many pad tokens it fills (t · h · w / merge²).
    /// @throws as encode_image.
    virtual std::size_t add_image(const qwen35_pixels& pixels) = 0;
};

/// Opens a Qwen3.5 model folder (config.json + safetensors; original or HLWQ), a
/// `model_loader`. config.json model_type `qwen3_5_text` / `qwen3_5_moe_text`, or the
/// multimodal `qwen3_5` / `qwen3_5_moe` whose `text_config` is used (weights under
/// `model.language_model.`) and whose vision tower (`model.visual.`) is loaded when present.
/// model_options::kv_bits: 0 = fp16 KV cache, 2..4 = HLWQ codes, 32 = fp32 (exact; for parity
/// checks).
/// @throws std::runtime_error naming the file and the config key or tensor for a missing or
///   malformed config.json, an unsupported config value (another model_type, hidden_act, a
///   rope_type other than "default", attention_bias, an unknown layer type), or a missing
///   tensor or one of the wrong shape or type.
std::unique_ptr<causal_lm> load_qwen35(const std::filesystem::path& dir, const model_options& options);

/// load_qwen35 with the image interface.
/// @throws as load_qwen35.
std::unique_ptr<qwen35_model> open_qwen35(const std::filesystem::path& dir, const model_options& options);

}  // namespace hlwq::rt
