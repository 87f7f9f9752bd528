// SPDX-License-Identifier: MIT
/// @file qwen35.hpp
/// @brief The Qwen3.5 text decoder, dense and MoE (transformers 5.17 `Qwen3_5ForCausalLM` /
/// `Qwen3_5MoeForCausalLM`, or the language model of `Qwen3_5ForConditionalGeneration` /
/// `Qwen3_5MoeForConditionalGeneration`), on hlwq: original (bf16/f16/f32) or HLWQ weights.
///
/// Layers mix Gated DeltaNet linear attention (conv1d + gated delta rule, gated_delta.hpp)
/// and gated full attention (q/k norms, partial RoPE, GQA, sigmoid output gate) per
/// `layer_types`; RMSNorms scale by (1 + w). The cache is hybrid: full-attention layers keep
/// keys and values in a hlwq::kv_cache (fp16, or HLWQ codes with model_options::kv_bits
/// 2..4), linear-attention layers keep their conv1d inputs and delta-rule state. Prefill runs
/// in chunks of model_options::prefill_chunk tokens (matmul; the delta rule in its chunked
/// form), single tokens run matvec and the recurrent form.
///
/// truncate(n) works only for n == position() (nothing to drop) and n == 0 (reset): the
/// recurrent states of the linear-attention layers hold the whole past in a fixed-size summary
/// and cannot be rolled back to an earlier position, so any other n throws
/// std::invalid_argument (a caller re-using a prompt prefix must reset and feed it again).
#pragma once

#include "model.hpp"

#include <filesystem>
#include <memory>

namespace hlwq::rt {

/// Opens a Qwen3.5 model folder (config.json + safetensors; original or HLWQ), a
/// `model_loader`. config.json model_type `qwen3_5_text` / `qwen3_5_moe_text`, or the
/// multimodal `qwen3_5` / `qwen3_5_moe` whose `text_config` is used (weights under
/// `model.language_model.`; the vision tower is ignored). model_options::kv_bits: 0 = fp16
/// KV cache, 2..4 = HLWQ codes, 32 = fp32 (exact; for parity checks).
/// @throws std::runtime_error naming the file and the config key or tensor for a missing or
///   malformed config.json, an unsupported config value (another model_type, hidden_act, a
///   rope_type other than "default", attention_bias, an unknown layer type), or a missing
///   tensor or one of the wrong shape or type.
std::unique_ptr<causal_lm> load_qwen35(const std::filesystem::path& dir, const model_options& options);

}  // namespace hlwq::rt
