// SPDX-License-Identifier: MIT
/// @file model.hpp
/// @brief What a chat program needs from a language model: the interface the Gemma 4 and
/// Qwen3.5 model files implement and the shared program loop (chat, perplexity, --ids modes)
/// drives. A model owns its weights (views into mapped checkpoint files) and its KV cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::rt {

struct rgb_image;  // image.hpp

/// How a model is loaded and run.
struct model_options {
    /// Worker threads for the products and attention; 0 = one per hardware thread.
    unsigned threads = 0;
    /// KV-cache code width: 0 = fp16 cache, 2..4 = HLWQ-compressed cache (hlwq_policy<Bits>),
    /// 32 = fp32 cache (exact, twice fp16's memory: reference runs and parity tests).
    int kv_bits = 0;
    /// Quantized linear layers use int8 activations (fast, llama.cpp's way) instead of
    /// exact fp32 ones. Dense (unquantized) layers always compute in fp32.
    bool int8_activations = true;
    /// Largest number of tokens the cache holds (prompt + generated); 0 = the config's
    /// max_position_embeddings.
    std::size_t max_context = 0;
    /// Tokens per prefill chunk (the matmul batch).
    std::size_t prefill_chunk = 64;
};

/// A decoder-only language model with a KV cache: feed tokens, read next-token logits.
class causal_lm {
public:
    virtual ~causal_lm() = default;

    /// Vocabulary size (the length of one row of logits).
    virtual std::size_t vocab_size() const = 0;
    /// Tokens currently in the cache (the position of the next token).
    virtual std::size_t position() const = 0;
    /// Largest position the cache can hold.
    virtual std::size_t max_context() const = 0;
    /// Empties the cache (a new conversation).
    virtual void reset() = 0;
    /// Drops cached tokens from position `n` on (n <= position()), e.g. to re-use a shared
    /// prompt prefix. Models that cannot (sliding windows already past n) throw.
    virtual void truncate(std::size_t n) = 0;
    /// Appends `ids` at position() (prefilled in chunks) and writes logits: of every new
    /// token (`all_positions`, logits.size() == ids.size() · vocab_size()) or of the last one
    /// only (logits.size() == vocab_size()).
    /// @throws std::invalid_argument for an id outside the vocabulary, a wrong logits size,
    ///   or a context beyond max_context().
    virtual void forward(std::span<const std::int32_t> ids, std::span<float> logits, bool all_positions) = 0;
    /// Bytes of weights held in memory (mapped files count as their size).
    virtual std::size_t weight_bytes() const = 0;
    /// Bytes of the KV cache (and recurrent states) at the current position.
    virtual std::size_t cache_bytes() const = 0;
    /// One line describing the model (architecture, layers, weight format, KV format).
    virtual std::string description() const = 0;

    // ---- images (vision-language models; text-only models keep these defaults) ----------
    //
    // A prompt with images is assembled as transformers' processors do it: the chat template
    // writes one image_token_id() per image (its {"type": "image"} content entries); each of
    // those, in the tokenized prompt, is replaced by the ids queue_image() returns for that
    // image (Gemma 4: <boi>, N x <|image|>, <eoi>; Qwen3.5: N x <|image_pad|>, the template
    // writing the vision start/end itself). forward() then fills the image tokens it is fed,
    // in order, with the queued embeddings instead of the token's own embedding.

    /// Whether the model reads images (its folder has a vision tower, which was loaded).
    virtual bool has_vision() const { return false; }
    /// The id of the image token: what the chat template writes per image and what the soft
    /// tokens are; -1 for a model without vision.
    virtual std::int32_t image_token_id() const { return -1; }
    /// Preprocesses and encodes `image` (the folder's preprocessor_config.json), queues its
    /// embeddings for the next image tokens fed to forward(), and returns the ids that stand
    /// for it in the prompt (see above).
    /// @throws std::runtime_error for a model without vision; std::invalid_argument for an
    ///   image the processor refuses (e.g. too small to hold one patch).
    virtual std::vector<std::int32_t> queue_image(const rgb_image& image) {
        (void)image;
        throw std::runtime_error(description() + ": this model does not read images");
    }
    /// Image tokens queued by queue_image() and not yet fed to forward(). reset() drops them.
    virtual std::size_t pending_image_tokens() const { return 0; }
};

/// Opens the model folder `dir` (original Hugging Face folder or HLWQ folder); implemented
/// once per architecture (gemma4.cpp, qwen35.cpp).
/// @throws std::runtime_error naming the file and what is wrong or unsupported.
using model_loader = std::unique_ptr<causal_lm> (*)(const std::filesystem::path& dir, const model_options& options);

}  // namespace hlwq::rt
