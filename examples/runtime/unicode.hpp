// SPDX-License-Identifier: MIT
/// @file unicode.hpp
/// UTF-8 and Unicode helpers of the runtime: decoding, categories, White_Space, NFC/NFD.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hlwq::rt::unicode {

/// Index of a general category ("Lu", "Nd", ...; 0 is "Cn", unassigned) of code point `cp`.
int category(char32_t cp) noexcept;

/// Bit mask (bit i = category index i) of the categories named `name`: a two-letter category
/// ("Lu") or a one-letter group ("L"). Returns 0 for an unknown name.
std::uint32_t category_mask(std::string_view name) noexcept;

/// Whether `cp` has the White_Space property (the `\s` of the pre-tokenizer regexes).
bool is_white_space(char32_t cp) noexcept;

/// Whether `cp` is a letter (category L*).
bool is_letter(char32_t cp) noexcept;

/// Whether `cp` is a number (category N*).
bool is_number(char32_t cp) noexcept;

/// Canonical combining class of `cp`.
int combining_class(char32_t cp) noexcept;

/// Decode one UTF-8 sequence of `s` at byte `i`: returns the code point and advances `i`.
/// An invalid or truncated sequence yields U+FFFD and advances by the maximal subpart (at least
/// one byte), as the WHATWG decoder does.
char32_t decode_utf8(std::string_view s, std::size_t& i) noexcept;

/// Append the UTF-8 encoding of `cp` to `out` (surrogates and out-of-range values become U+FFFD).
void append_utf8(std::string& out, char32_t cp);

/// Code points of `s` (invalid sequences become U+FFFD).
std::u32string to_utf32(std::string_view s);

/// UTF-8 of `s`.
std::string to_utf8(std::u32string_view s);

/// Whether `s` is well-formed UTF-8.
bool is_valid_utf8(std::string_view s) noexcept;

/// `s` with each maximal invalid subpart replaced by U+FFFD (WHATWG "replacement" decoding).
std::string sanitize_utf8(std::string_view s);

/// Length of the longest prefix of `s` that ends on a character boundary, holding back a trailing
/// sequence that is incomplete but could still become valid with more bytes (at most 3 bytes).
std::size_t complete_utf8_prefix(std::string_view s) noexcept;

/// Canonical decomposition followed by canonical composition (NFC).
std::string nfc(std::string_view s);

/// Canonical decomposition (NFD).
std::string nfd(std::string_view s);

/// Unicode version of the tables.
const char* version() noexcept;

}  // namespace hlwq::rt::unicode
