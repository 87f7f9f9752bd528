// SPDX-License-Identifier: MIT
#include "unicode.hpp"

#include "unicode_tables.hpp"

#include <algorithm>
#include <iterator>

namespace hlwq::rt::unicode {
namespace {

namespace tab = detail::unicode;

// Value of the range holding cp, or 0.
template <std::size_t N>
std::uint32_t lookup(const tab::range (&table)[N], char32_t cp) noexcept {
    const auto it = std::upper_bound(std::begin(table), std::end(table), static_cast<std::uint32_t>(cp),
                                     [](std::uint32_t c, const tab::range& r) { return c < r.first; });
    if (it == std::begin(table)) return 0;
    const tab::range& r = *(it - 1);
    return cp <= r.last ? r.value : 0;
}

constexpr char32_t replacement = 0xFFFD;
constexpr char32_t hangul_s = 0xAC00, hangul_l = 0x1100, hangul_v = 0x1161, hangul_t = 0x11A7;
constexpr char32_t hangul_l_count = 19, hangul_v_count = 21, hangul_t_count = 28;
constexpr char32_t hangul_n = hangul_v_count * hangul_t_count;
constexpr char32_t hangul_count = hangul_l_count * hangul_n;

void decompose(char32_t cp, std::u32string& out) {
    if (cp >= hangul_s && cp < hangul_s + hangul_count) {
        const char32_t s = cp - hangul_s;
        out.push_back(hangul_l + s / hangul_n);
        out.push_back(hangul_v + (s % hangul_n) / hangul_t_count);
        if (s % hangul_t_count != 0) out.push_back(hangul_t + s % hangul_t_count);
        return;
    }
    if (cp < 0xC0) {
        out.push_back(cp);
        return;
    }
    const auto it = std::lower_bound(std::begin(tab::decompositions), std::end(tab::decompositions),
                                     static_cast<std::uint32_t>(cp),
                                     [](const tab::decomposition& d, std::uint32_t c) { return d.cp < c; });
    if (it != std::end(tab::decompositions) && it->cp == cp) {
        for (std::size_t k = 0; k < it->length; ++k) out.push_back(tab::decomposition_pool[it->offset + k]);
    } else {
        out.push_back(cp);
    }
}

// Canonical ordering: stable sort of each run of non-starters by combining class.
void reorder(std::u32string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
        if (combining_class(s[i]) == 0) {
            ++i;
            continue;
        }
        std::size_t j = i;
        while (j < s.size() && combining_class(s[j]) != 0) ++j;
        std::stable_sort(s.begin() + static_cast<std::ptrdiff_t>(i), s.begin() + static_cast<std::ptrdiff_t>(j),
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
}

char32_t compose_pair(char32_t a, char32_t b) noexcept {
    if (a >= hangul_l && a < hangul_l + hangul_l_count && b >= hangul_v && b < hangul_v + hangul_v_count)
        return hangul_s + ((a - hangul_l) * hangul_v_count + (b - hangul_v)) * hangul_t_count;
    if (a >= hangul_s && a < hangul_s + hangul_count && (a - hangul_s) % hangul_t_count == 0 && b > hangul_t &&
        b < hangul_t + hangul_t_count)
        return a + (b - hangul_t);
    const auto key = [](const tab::composition& c) { return (std::uint64_t{c.first} << 32) | c.second; };
    const std::uint64_t want = (std::uint64_t{a} << 32) | b;
    const auto it = std::lower_bound(std::begin(tab::compositions), std::end(tab::compositions), want,
                                     [&](const tab::composition& c, std::uint64_t w) { return key(c) < w; });
    if (it != std::end(tab::compositions) && key(*it) == want) return it->composite;
    return 0;
}

void compose(std::u32string& s) {
    if (s.empty()) return;
    std::size_t starter = std::u32string::npos;
    int last_class = -1;
    std::size_t out = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char32_t c = s[i];
        const int cc = combining_class(c);
        bool composed = false;
        if (starter != std::u32string::npos) {
            const bool adjacent = out == starter + 1;
            const bool unblocked = adjacent || (last_class != 0 && last_class < cc);
            if (unblocked) {
                if (const char32_t p = compose_pair(s[starter], c)) {
                    s[starter] = p;
                    composed = true;
                }
            }
        }
        if (composed) continue;
        if (cc == 0) {
            starter = out;
            last_class = 0;
        } else {
            last_class = cc;
        }
        s[out++] = c;
    }
    s.resize(out);
}

std::u32string decompose_all(std::string_view text) {
    std::u32string d;
    d.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) decompose(decode_utf8(text, i), d);
    reorder(d);
    return d;
}

bool below_composition_range(std::string_view s) noexcept {
    // Every character below U+0300 is NFC on its own (NFC_Quick_Check=Yes), and none of them
    // composes with a following character below U+0300.
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto b = static_cast<unsigned char>(s[i]);
        if (b < 0x80) continue;
        if (b >= 0xCC) return false;  // lead bytes of U+0300 and above
    }
    return true;
}

}  // namespace

int category(char32_t cp) noexcept { return static_cast<int>(lookup(tab::categories, cp)); }

std::uint32_t category_mask(std::string_view name) noexcept {
    std::uint32_t mask = 0;
    for (std::size_t i = 0; i < std::size(tab::category_names); ++i) {
        const std::string_view c = tab::category_names[i];
        if (c == name || (name.size() == 1 && c[0] == name[0])) mask |= 1u << i;
    }
    return mask;
}

bool is_white_space(char32_t cp) noexcept { return lookup(tab::white_space, cp) != 0; }

bool is_letter(char32_t cp) noexcept {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    const int c = category(cp);
    return c >= 1 && c <= 5;
}

bool is_number(char32_t cp) noexcept {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    const int c = category(cp);
    return c >= 9 && c <= 11;
}

int combining_class(char32_t cp) noexcept {
    if (cp < 0x300) return 0;
    return static_cast<int>(lookup(tab::combining_classes, cp));
}

char32_t decode_utf8(std::string_view s, std::size_t& i) noexcept {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
        ++i;
        return b0;
    }
    int need = 0;
    char32_t cp = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        ++i;
        return replacement;
    }
    std::size_t j = i + 1;
    for (int k = 0; k < need; ++k, ++j) {
        if (j >= s.size()) {
            i = j;
            return replacement;
        }
        const auto b = static_cast<unsigned char>(s[j]);
        if (b < lo || b > hi) {
            i = j;
            return replacement;
        }
        lo = 0x80;
        hi = 0xBF;
        cp = (cp << 6) | (b & 0x3F);
    }
    i = j;
    return cp;
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = replacement;
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::u32string to_utf32(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) out.push_back(decode_utf8(s, i));
    return out;
}

std::string to_utf8(std::u32string_view s) {
    std::string out;
    out.reserve(s.size());
    for (const char32_t c : s) append_utf8(out, c);
    return out;
}

bool is_valid_utf8(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t at = i;
        const char32_t c = decode_utf8(s, i);
        if (c == replacement && !(i - at == 3 && s.substr(at, 3) == "\xEF\xBF\xBD")) return false;
    }
    return true;
}

std::string sanitize_utf8(std::string_view s) {
    if (is_valid_utf8(s)) return std::string(s);
    std::string out;
    out.reserve(s.size() + 8);
    for (std::size_t i = 0; i < s.size();) append_utf8(out, decode_utf8(s, i));
    return out;
}

std::size_t complete_utf8_prefix(std::string_view s) noexcept {
    // Look at the last (up to) 3 bytes for the start of an unfinished sequence.
    const std::size_t n = s.size();
    for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
        const auto b = static_cast<unsigned char>(s[n - back]);
        if (b < 0x80) return n;       // ASCII: complete
        if (b >= 0xC0) {              // a lead byte `back` bytes from the end
            std::size_t need = 0;
            if (b >= 0xC2 && b <= 0xDF) need = 2;
            else if (b >= 0xE0 && b <= 0xEF) need = 3;
            else if (b >= 0xF0 && b <= 0xF4) need = 4;
            else return n;  // invalid lead byte: nothing to wait for
            if (back >= need) return n;
            // Would the bytes so far be a valid prefix? Decode them; an early error means no.
            std::string_view tail = s.substr(n - back);
            std::size_t i = 0;
            (void)decode_utf8(tail, i);
            return i == back ? n - back : n;  // consumed all: truncated but valid so far
        }
    }
    return n;
}

std::string nfd(std::string_view s) {
    if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
        return std::string(s);
    return to_utf8(decompose_all(s));
}

std::string nfc(std::string_view s) {
    if (below_composition_range(s)) return std::string(s);
    std::u32string d = decompose_all(s);
    compose(d);
    return to_utf8(d);
}

const char* version() noexcept { return tab::version; }

}  // namespace hlwq::rt::unicode
