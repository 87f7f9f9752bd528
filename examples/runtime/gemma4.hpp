// SPDX-License-Identifier: MIT
/// @file gemma4.hpp
/// @brief The Gemma 4 text decoder (transformers 5.17 `Gemma4ForCausalLM`, or the language
/// model of `Gemma4ForConditionalGeneration`) on hlwq: original (bf16/f16/f32) or HLWQ
/// weights, fp16 or HLWQ KV cache. See gemma4.cpp for what it computes.
#pragma once

#include "model.hpp"

#include <filesystem>
#include <memory>

namespace hlwq::rt {

/// Opens a Gemma 4 model folder (config.json + safetensors; original or HLWQ): a
/// `model_loader`. Text-only: a multimodal folder's vision/audio towers are ignored.
/// @throws std::runtime_error naming the file and the config key or tensor for a missing or
///   malformed config.json, an unsupported config value (e.g. use_bidirectional_attention
///   "all", attention_bias, an unknown rope_type or activation), or a missing tensor or one
///   of the wrong shape or type.
std::unique_ptr<causal_lm> load_gemma4(const std::filesystem::path& dir, const model_options& options);

}  // namespace hlwq::rt
