// SPDX-License-Identifier: MIT
/// @file session.hpp
/// @brief A chat session over a causal_lm: keeps the conversation, renders the chat template,
/// feeds only the tokens the KV cache does not hold yet, samples, streams the text and
/// measures prefill/decode speed.
#pragma once

#include "image.hpp"
#include "jinja.hpp"
#include "model.hpp"
#include "sampler.hpp"
#include "tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hlwq::rt {

/// Special token ids of a model folder that the programs need.
struct special_token_ids {
    std::optional<std::int32_t> bos{};  ///< beginning of sequence (perplexity windows)
    std::optional<std::int32_t> eos{};  ///< end of sequence (appended after perplexity entries)
    /// Generation stops on any of these (sorted, unique): every `eos_token_id` of
    /// generation_config.json and config.json (also its `text_config`), the eos_token of
    /// tokenizer_config.json, the template's end-of-turn token and the known end-of-turn
    /// tokens (`<end_of_turn>`, `<turn|>`, `<|im_end|>`, `<|eot_id|>`, `<|end|>`) the tokenizer
    /// has.
    std::vector<std::int32_t> stop{};
};

/// Reads the special ids of model folder `dir`. Missing files are not errors (the fields stay
/// empty); malformed JSON throws std::runtime_error naming the file. `tok` (may be null)
/// resolves token strings; `tmpl` (may be null) is rendered once with a user and an assistant
/// message to find the special token that closes an assistant turn.
special_token_ids read_special_token_ids(const std::filesystem::path& dir, const tokenizer* tok,
                                         const chat_template* tmpl);

/// Why a turn stopped generating.
enum class stop_reason {
    none,           ///< nothing generated yet
    end_of_turn,    ///< a stop token (EOS or end of turn) was drawn
    max_tokens,     ///< max_new_tokens reached
    context_full,   ///< the model's context is full
};

/// Counters of one turn, or summed over a session.
struct generation_stats {
    std::size_t prompt_tokens = 0;     ///< tokens of the rendered prompt
    std::size_t reused_tokens = 0;     ///< of those, already in the KV cache (not fed again)
    std::size_t prefill_tokens = 0;    ///< prompt tokens fed to the model
    double prefill_seconds = 0;        ///< time of those forward passes
    std::size_t generated_tokens = 0;  ///< tokens drawn (without the stop token)
    std::size_t decode_tokens = 0;     ///< single-token forward passes of generation
    double decode_seconds = 0;         ///< time of drawing and feeding the generated tokens
    stop_reason stop = stop_reason::none;  ///< why the (last) turn ended

    /// Adds the counters of `other` (stop becomes other's).
    generation_stats& operator+=(const generation_stats& other) noexcept;
};

/// Prefill and decode speed and peak memory, as llama.cpp prints them at exit, e.g.
/// "prefill:  120 tokens in 0.050 s (2400.0 tokens/s)\ndecode:   ...\npeak RSS: 93.1 MiB\n".
std::string format_stats(const generation_stats& stats);

/// Peak resident set size of this process in bytes (getrusage ru_maxrss); 0 if unknown.
std::size_t peak_rss_bytes() noexcept;

/// Options of a chat_session.
struct session_options {
    sampler_options sampling{};         ///< how tokens are drawn
    std::size_t max_new_tokens = 512;   ///< per answer; 0 = until a stop token or a full context
    /// No chat template: the conversation is one document, the user's text and the model's
    /// continuations concatenated as they are, tokenized with the tokenizer's special tokens
    /// (e.g. `<bos>`).
    bool raw = false;
    std::string system{};               ///< system message (chat mode; empty = none)
    chat_options template_options{};   ///< passed to the template (add_generation_prompt is forced on)
};

/// A conversation with a model. Each send() renders the whole conversation with the chat
/// template (add_generation_prompt), tokenizes it without adding special tokens (the template
/// writes them, as transformers' apply_chat_template does), keeps the longest prefix the KV
/// cache already holds (truncating the model there when an earlier part re-renders
/// differently), feeds the rest, and generates until a stop token, max_new_tokens or a full
/// context. The stop token is not fed; the next prompt re-renders the turn's end.
///
/// Invariant: model.position() == cached_tokens().size().
class chat_session {
public:
    /// Called with each piece of generated text (never ending inside a UTF-8 character).
    using text_callback = std::function<void(std::string_view)>;

    /// `model` and `tok` must outlive the session. `tmpl` is required unless options.raw.
    /// Throws std::invalid_argument for bad sampler options or a missing template.
    chat_session(causal_lm& model, const tokenizer& tok, std::optional<chat_template> tmpl,
                 std::vector<std::int32_t> stop_ids, session_options options);

    /// One turn: `user_text` from the user, the model's answer streamed to `on_text` (may be
    /// empty). Returns the turn's counters. On an error (template error, prompt longer than the
    /// context, model error) the conversation is left as it was before the call and the
    /// exception propagates.
    ///
    /// `images` go with the message: its content becomes [{"type": "image"} per image,
    /// {"type": "text", "text": user_text}], and each image token the template writes is
    /// replaced by the tokens of the next image of the conversation (causal_lm::queue_image).
    /// @throws std::invalid_argument for images in raw mode; std::runtime_error for images
    ///   and a model without vision, or a template that writes another number of image tokens.
    generation_stats send(std::string_view user_text, const text_callback& on_text = {},
                          std::span<const rgb_image> images = {});

    /// Forget the conversation and empty the KV cache (the system message stays).
    void reset();

    /// The conversation so far (chat mode): the system message, if any, then user/assistant
    /// messages.
    nlohmann::ordered_json messages() const;

    /// The raw-mode document so far (raw mode).
    const std::string& document() const noexcept { return document_; }

    /// The tokens in the model's KV cache.
    std::span<const std::int32_t> cached_tokens() const noexcept { return cache_; }

    /// Counters summed over every turn since construction (reset() keeps them).
    const generation_stats& totals() const noexcept { return totals_; }

    /// The options in use.
    const session_options& options() const noexcept { return options_; }

private:
    /// The prompt's tokens; image tokens expanded to `expansions` (one per image, in order),
    /// whose [start, end) in the result go to `spans`.
    std::vector<std::int32_t> render(const nlohmann::ordered_json& turns, const std::string& document,
                                     const std::vector<std::vector<std::int32_t>>& expansions,
                                     std::vector<std::pair<std::size_t, std::size_t>>& spans) const;
    bool is_stop(std::int32_t id) const noexcept;

    causal_lm* model_ = nullptr;
    const tokenizer* tok_ = nullptr;
    std::optional<chat_template> template_{};
    std::vector<std::int32_t> stop_{};
    session_options options_{};
    sampler sampler_;
    nlohmann::ordered_json turns_ = nlohmann::ordered_json::array();  // user/assistant messages
    std::string document_{};             // raw mode
    std::vector<std::int32_t> cache_{};  // tokens in the model's cache
    std::vector<rgb_image> images_{};    // the conversation's images, in order
    std::vector<std::vector<std::int32_t>> expansions_{};  // their prompt tokens
    std::vector<float> logits_{};
    generation_stats totals_{};
};

}  // namespace hlwq::rt
