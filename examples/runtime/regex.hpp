// SPDX-License-Identifier: MIT
/// @file regex.hpp
/// A small backtracking regular-expression engine on code points, for the `Split` pre-tokenizer
/// patterns of `tokenizer.json` files (GPT-2, Llama 3, Qwen2/3 style).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hlwq::rt {

/// A compiled regular expression with the syntax the Hugging Face pre-tokenizers use (Oniguruma
/// flavour): literals, `.`, classes `[...]` / `[^...]` with ranges, `\s \S \d \D \w \W`,
/// `\p{L}`/`\P{N}`/`\p{Lu}` (general categories), `\r \n \t \f \v \xHH \x{H..} \uHHHH`, groups
/// `(...)` `(?:...)` `(?i:...)`, alternation, greedy and lazy `? * + {n} {n,} {n,m}`, and
/// lookahead `(?=...)` `(?!...)`. `\s` is the Unicode White_Space property, `\d` the category Nd,
/// `\w` letters, marks, Nd and Pc. Case-insensitive matching folds ASCII letters only.
///
/// Matching is leftmost-first backtracking with a step budget, so that a pathological pattern
/// from an untrusted file ends in an error instead of a hang.
class regex {
public:
    /// Compile `pattern` (UTF-8). Throws std::invalid_argument naming the offset of an error or
    /// of an unsupported construct.
    explicit regex(std::string_view pattern);

    /// The leftmost match in `text` that starts at or after code point `from`:
    /// [begin, end) in code points, or nothing. Throws std::runtime_error when the step budget of
    /// one attempt is exhausted.
    std::optional<std::pair<std::size_t, std::size_t>> search(std::u32string_view text,
                                                              std::size_t from = 0) const;

    /// All non-overlapping matches, left to right (an empty match advances by one code point).
    std::vector<std::pair<std::size_t, std::size_t>> find_all(std::u32string_view text) const;

    /// One instruction of the compiled program (public for the implementation; not an API).
    struct instruction {
        std::uint8_t op = 0;      ///< opcode
        bool flag = false;        ///< case-insensitive (char) / negated (assertion)
        std::uint32_t arg = 0;    ///< code point, class index or sub-program index
        std::uint32_t x = 0;      ///< first branch / jump target
        std::uint32_t y = 0;      ///< second branch
    };
    /// One item of a character class (public for the implementation; not an API).
    struct class_item {
        std::uint8_t kind = 0;    ///< range, category mask, white space, ...
        bool negated = false;     ///< \P{..}, \S, \D, \W inside a class
        char32_t lo = 0;          ///< range start
        char32_t hi = 0;          ///< range end
        std::uint32_t mask = 0;   ///< category bits
    };
    /// A character class (public for the implementation; not an API).
    struct char_class {
        std::vector<class_item> items{};  ///< union of these
        bool negated = false;             ///< [^...]
        bool icase = false;               ///< match ASCII letters in either case
    };

private:
    bool run(std::size_t prog, std::u32string_view text, std::size_t pos, std::size_t& end,
             std::size_t& budget) const;
    bool class_matches(const char_class& c, char32_t cp) const;

    std::vector<std::vector<instruction>> programs_{};  // [0] main, others lookaheads
    std::vector<char_class> classes_{};
};

}  // namespace hlwq::rt
