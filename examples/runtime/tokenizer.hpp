// SPDX-License-Identifier: MIT
/// @file tokenizer.hpp
/// Hugging Face `tokenizer.json` BPE tokenizers: the SentencePiece-style variant with byte
/// fallback (Gemma) and the byte-level variant with a pre-tokenizer regex (GPT-2, Llama 3, Qwen).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hlwq::rt {

/// Thrown for an unreadable, malformed or unsupported `tokenizer.json`, and for token ids that
/// are not in the vocabulary. The message names the part of the file at fault.
class tokenizer_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// One entry of `added_tokens` in `tokenizer.json`.
struct added_token {
    std::string content{};     ///< the text of the token
    std::int32_t id = -1;      ///< its id
    bool single_word = false;  ///< only match when not inside a word
    bool lstrip = false;       ///< also consume the whitespace on its left
    bool rstrip = false;       ///< also consume the whitespace on its right
    bool normalized = false;   ///< matched on the normalized text rather than the input
    bool special = false;      ///< a special token (skipped by decode(..., true))
};

/// A `tokenizer.json` tokenizer with a BPE model, as the Hugging Face `tokenizers` library runs
/// it: added tokens are split out first (leftmost-longest, honouring `single_word`, `lstrip`,
/// `rstrip`, `normalized`), then the normalizer, the pre-tokenizer, the BPE model (merges by rank,
/// `byte_fallback`, `fuse_unk`, `ignore_merges`) and, with `add_special_tokens`, the
/// post-processor.
///
/// Supported components (anything else is refused by the constructor with a tokenizer_error):
/// normalizers `NFC`, `NFD`, `Replace`, `Prepend`, `Strip`, `Lowercase`, `Sequence`;
/// pre-tokenizers `Split` (string or regex, every behaviour, `invert`), `ByteLevel`, `Metaspace`,
/// `Digits`, `Whitespace`, `WhitespaceSplit`, `Sequence`; post-processors `TemplateProcessing`,
/// `ByteLevel`, `BertProcessing`, `RobertaProcessing`, `Sequence`; decoders `ByteLevel`,
/// `ByteFallback`, `Fuse`, `Replace`, `Strip`, `Metaspace`, `Sequence`.
///
/// encode() and decode() are const and may be called from several threads at once (the word
/// cache is locked).
class tokenizer {
public:
    /// Load `path` (a tokenizer.json file). Throws tokenizer_error naming the file.
    static tokenizer from_file(const std::filesystem::path& path);

    /// Parse the text of a tokenizer.json. Throws tokenizer_error.
    static tokenizer from_json(std::string_view json_text);

    tokenizer(tokenizer&&) noexcept;             ///< move
    tokenizer& operator=(tokenizer&&) noexcept;  ///< move assignment
    ~tokenizer();                                ///< destructor

    /// Token ids of `text` (UTF-8; invalid bytes are read as U+FFFD). With `add_special_tokens`
    /// the post-processor adds what the file says (e.g. `<bos>` for Gemma, nothing for Qwen).
    std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = true) const;

    /// Text of `ids` through the decoder; with `skip_special_tokens` the special added tokens are
    /// left out. Invalid UTF-8 (e.g. half a character's byte tokens) becomes U+FFFD, one per
    /// maximal invalid subpart. Throws tokenizer_error for an id outside the vocabulary.
    std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;

    /// Like decode(), but the bytes as the decoder produced them (possibly invalid UTF-8).
    std::string decode_bytes(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;

    /// One past the largest token id (model vocabulary and added tokens).
    std::size_t vocab_size() const noexcept;

    /// The id of token `token` (vocabulary or added token), if there is one.
    std::optional<std::int32_t> token_to_id(std::string_view token) const;

    /// The token string of `id` (as stored in the vocabulary, e.g. "▁the" or "Ġthe").
    /// Throws tokenizer_error for an id outside the vocabulary.
    const std::string& id_to_token(std::int32_t id) const;

    /// Whether `id` is a special added token.
    bool is_special(std::int32_t id) const noexcept;

    /// The added tokens of the file.
    const std::vector<added_token>& added_tokens() const noexcept;

    /// Clear the per-word cache of the BPE model.
    void clear_cache() const;

private:
    struct impl;
    explicit tokenizer(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

/// Incremental decoding for streaming output: push() token ids one at a time and print what it
/// returns. The concatenation of all push() results and finish() equals
/// `tokenizer.decode(all ids)`, and no returned piece ends inside a UTF-8 character: bytes of an
/// incomplete character are held until it completes (or become U+FFFD when it cannot).
class stream_decoder {
public:
    /// Decode with `tok` (which must outlive this object).
    explicit stream_decoder(const tokenizer& tok, bool skip_special_tokens = false);

    /// Add one token id; returns the newly completed text (possibly empty).
    std::string push(std::int32_t id);

    /// The rest: bytes still held (an incomplete character) as U+FFFD. Resets the decoder.
    std::string finish();

private:
    const tokenizer* tok_ = nullptr;
    bool skip_special_ = false;
    std::vector<std::int32_t> window_{};  // tokens whose decoded bytes are still needed
    std::size_t done_ = 0;                // bytes of decode(window_) already returned
};

}  // namespace hlwq::rt
