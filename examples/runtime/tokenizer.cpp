// SPDX-License-Identifier: MIT
#include "tokenizer.hpp"

#include "regex.hpp"
#include "unicode.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <variant>

namespace hlwq::rt {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& what) { throw tokenizer_error("tokenizer.json: " + what); }

// ---------------------------------------------------------------------------------------------
// JSON helpers: typed access with messages that name the field.
// ---------------------------------------------------------------------------------------------
const json& member(const json& obj, const char* key, const std::string& where) {
    if (!obj.is_object()) fail(where + " is not an object");
    const auto it = obj.find(key);
    if (it == obj.end()) fail(where + " has no \"" + key + "\"");
    return *it;
}

std::string get_string(const json& obj, const char* key, const std::string& where) {
    const json& v = member(obj, key, where);
    if (!v.is_string()) fail(where + "." + key + " is not a string");
    return v.get<std::string>();
}

std::string opt_string(const json& obj, const char* key, const std::string& where, std::string def = {}) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_string()) fail(where + "." + key + " is not a string");
    return it->get<std::string>();
}

bool opt_bool(const json& obj, const char* key, const std::string& where, bool def) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_boolean()) fail(where + "." + key + " is not a boolean");
    return it->get<bool>();
}

std::int64_t opt_int(const json& obj, const char* key, const std::string& where, std::int64_t def) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_number_integer()) fail(where + "." + key + " is not an integer");
    return it->get<std::int64_t>();
}

std::int32_t to_id(const json& v, const std::string& where) {
    if (!v.is_number_integer()) fail(where + " is not an integer id");
    const auto id = v.get<std::int64_t>();
    if (id < 0 || id >= (std::int64_t{1} << 30)) fail(where + " = " + std::to_string(id) + " is out of range");
    return static_cast<std::int32_t>(id);
}

// A "pattern" object: {"String": "..."} or {"Regex": "..."}.
struct pattern {
    std::string literal{};
    std::shared_ptr<const regex> re{};  // set for Regex patterns

    std::vector<std::pair<std::size_t, std::size_t>> find_all(std::u32string_view text,
                                                              const std::u32string& lit32) const {
        if (re) return re->find_all(text);
        std::vector<std::pair<std::size_t, std::size_t>> out;
        if (lit32.empty()) return out;
        std::size_t from = 0;
        while (from + lit32.size() <= text.size()) {
            const std::size_t at = text.find(lit32, from);
            if (at == std::u32string_view::npos) break;
            out.emplace_back(at, at + lit32.size());
            from = at + lit32.size();
        }
        return out;
    }
};

pattern parse_pattern(const json& obj, const std::string& where) {
    const json& p = member(obj, "pattern", where);
    pattern out;
    if (p.is_object() && p.contains("String") && p["String"].is_string()) {
        out.literal = p["String"].get<std::string>();
        if (!unicode::is_valid_utf8(out.literal)) fail(where + ".pattern is not valid UTF-8");
    } else if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
        try {
            out.re = std::make_shared<const regex>(p["Regex"].get<std::string>());
        } catch (const std::invalid_argument& e) {
            fail(where + ".pattern: " + e.what());
        }
    } else {
        fail(where + ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode alphabet of the ByteLevel components.
// ---------------------------------------------------------------------------------------------
struct byte_alphabet {
    std::array<std::string, 256> to_char{};        // byte -> UTF-8 of its stand-in character
    std::unordered_map<char32_t, std::uint8_t> to_byte{};

    byte_alphabet() {
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
            unicode::append_utf8(to_char[static_cast<std::size_t>(b)], c);
            to_byte[c] = static_cast<std::uint8_t>(b);
        }
    }
};

const byte_alphabet& alphabet() {
    static const byte_alphabet a;
    return a;
}

// ---------------------------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------------------------
struct norm_nfc {};
struct norm_nfd {};
struct norm_lowercase {};
struct norm_replace {
    pattern pat{};
    std::u32string lit32{};
    std::string content{};
};
struct norm_prepend {
    std::string prepend{};
};
struct norm_strip {
    bool left = false;
    bool right = false;
};
using normalizer_step = std::variant<norm_nfc, norm_nfd, norm_lowercase, norm_replace, norm_prepend, norm_strip>;

void parse_normalizer(const json& n, const std::string& where, std::vector<normalizer_step>& out) {
    if (n.is_null()) return;
    const std::string type = get_string(n, "type", where);
    if (type == "Sequence") {
        const json& list = member(n, "normalizers", where);
        if (!list.is_array()) fail(where + ".normalizers is not an array");
        for (std::size_t i = 0; i < list.size(); ++i)
            parse_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]", out);
    } else if (type == "NFC") {
        out.emplace_back(norm_nfc{});
    } else if (type == "NFD") {
        out.emplace_back(norm_nfd{});
    } else if (type == "Lowercase") {
        out.emplace_back(norm_lowercase{});
    } else if (type == "Replace") {
        norm_replace r{parse_pattern(n, where), {}, get_string(n, "content", where)};
        r.lit32 = unicode::to_utf32(r.pat.literal);
        out.emplace_back(std::move(r));
    } else if (type == "Prepend") {
        out.emplace_back(norm_prepend{get_string(n, "prepend", where)});
    } else if (type == "Strip") {
        out.emplace_back(norm_strip{opt_bool(n, "strip_left", where, false), opt_bool(n, "strip_right", where, false)});
    } else {
        fail(where + ": normalizer type \"" + type + "\" is not supported");
    }
}

std::string replace_all(std::string_view text, const pattern& pat, const std::u32string& lit32,
                        std::string_view content) {
    if (!pat.re && pat.literal.empty()) return std::string(text);
    if (!pat.re && text.find(pat.literal) == std::string_view::npos) return std::string(text);
    const std::u32string t = unicode::to_utf32(text);
    const auto matches = pat.find_all(t, lit32);
    std::string out;
    std::size_t prev = 0;
    for (const auto& [b, e] : matches) {
        out += unicode::to_utf8(std::u32string_view(t).substr(prev, b - prev));
        out += content;
        prev = e;
    }
    out += unicode::to_utf8(std::u32string_view(t).substr(prev));
    return out;
}

std::string lowercase(std::string_view s) {
    // ASCII and the simple one-to-one lowercase of Latin-1/Greek/Cyrillic blocks are what real
    // tokenizer files need; anything beyond ASCII is lowered only where the mapping is +32/+1.
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    return out;
}

std::string normalize(const std::vector<normalizer_step>& steps, std::string text) {
    for (const auto& step : steps) {
        if (std::holds_alternative<norm_nfc>(step)) {
            text = unicode::nfc(text);
        } else if (std::holds_alternative<norm_nfd>(step)) {
            text = unicode::nfd(text);
        } else if (std::holds_alternative<norm_lowercase>(step)) {
            text = lowercase(text);
        } else if (const auto* r = std::get_if<norm_replace>(&step)) {
            text = replace_all(text, r->pat, r->lit32, r->content);
        } else if (const auto* p = std::get_if<norm_prepend>(&step)) {
            if (!text.empty()) text = p->prepend + text;
        } else if (const auto* s = std::get_if<norm_strip>(&step)) {
            std::u32string t = unicode::to_utf32(text);
            std::size_t b = 0, e = t.size();
            if (s->left)
                while (b < e && unicode::is_white_space(t[b])) ++b;
            if (s->right)
                while (e > b && unicode::is_white_space(t[e - 1])) --e;
            text = unicode::to_utf8(std::u32string_view(t).substr(b, e - b));
        }
    }
    return text;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers
// ---------------------------------------------------------------------------------------------
enum class behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct pre_split {
    pattern pat{};
    std::u32string lit32{};
    behavior how = behavior::isolated;
    bool invert = false;
};
struct pre_byte_level {
    bool add_prefix_space = false;
    bool use_regex = true;
};
struct pre_metaspace {
    std::string replacement{};
    enum { always, first, never } prepend = always;
    bool split = true;
};
struct pre_digits {
    bool individual = false;
};
struct pre_whitespace_split {};
using pre_step = std::variant<pre_split, pre_byte_level, pre_metaspace, pre_digits, pre_whitespace_split>;

const regex& gpt2_regex() {
    static const regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
    return re;
}

const regex& whitespace_regex() {
    static const regex re(R"(\w+|[^\w\s]+)");
    return re;
}

behavior parse_behavior(const std::string& b, const std::string& where) {
    if (b == "Removed") return behavior::removed;
    if (b == "Isolated") return behavior::isolated;
    if (b == "MergedWithPrevious") return behavior::merged_with_previous;
    if (b == "MergedWithNext") return behavior::merged_with_next;
    if (b == "Contiguous") return behavior::contiguous;
    fail(where + ".behavior \"" + b + "\" is not a split behaviour");
}

void parse_pre_tokenizer(const json& n, const std::string& where, std::vector<pre_step>& out) {
    if (n.is_null()) return;
    const std::string type = get_string(n, "type", where);
    if (type == "Sequence") {
        const json& list = member(n, "pretokenizers", where);
        if (!list.is_array()) fail(where + ".pretokenizers is not an array");
        for (std::size_t i = 0; i < list.size(); ++i)
            parse_pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]", out);
    } else if (type == "Split") {
        pre_split s{parse_pattern(n, where), {}, parse_behavior(get_string(n, "behavior", where), where),
                    opt_bool(n, "invert", where, false)};
        s.lit32 = unicode::to_utf32(s.pat.literal);
        out.emplace_back(std::move(s));
    } else if (type == "ByteLevel") {
        out.emplace_back(pre_byte_level{opt_bool(n, "add_prefix_space", where, true), opt_bool(n, "use_regex", where, true)});
    } else if (type == "Metaspace") {
        pre_metaspace m;
        m.replacement = opt_string(n, "replacement", where, "\xE2\x96\x81");
        if (unicode::to_utf32(m.replacement).size() != 1) fail(where + ".replacement must be one character");
        const std::string scheme = opt_string(n, "prepend_scheme", where, "");
        if (scheme.empty()) m.prepend = opt_bool(n, "add_prefix_space", where, true) ? pre_metaspace::always : pre_metaspace::never;
        else if (scheme == "always") m.prepend = pre_metaspace::always;
        else if (scheme == "first") m.prepend = pre_metaspace::first;
        else if (scheme == "never") m.prepend = pre_metaspace::never;
        else fail(where + ".prepend_scheme \"" + scheme + "\" is not always/first/never");
        m.split = opt_bool(n, "split", where, true);
        out.emplace_back(std::move(m));
    } else if (type == "Digits") {
        out.emplace_back(pre_digits{opt_bool(n, "individual_digits", where, false)});
    } else if (type == "WhitespaceSplit") {
        out.emplace_back(pre_whitespace_split{});
    } else if (type == "Whitespace") {
        out.emplace_back(pre_split{pattern{{}, std::shared_ptr<const regex>(&whitespace_regex(), [](const regex*) {})},
                                   {}, behavior::removed, true});
    } else {
        fail(where + ": pre-tokenizer type \"" + type + "\" is not supported");
    }
}

// A piece of text during pre-tokenization; `origin` marks the piece that starts at offset 0
// of the input (Metaspace's prepend_scheme "first").
struct piece {
    std::string text{};
    bool origin = false;
};

// Split `p` at the intervals `matches` (code point offsets of `t`) as the tokenizers library's
// NormalizedString::split does, appending the non-empty parts to `out`.
void split_piece(const piece& p, const std::u32string& t, const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                 behavior how, bool invert, std::vector<piece>& out) {
    struct part {
        std::size_t b = 0, e = 0;
        bool is_match = false;
    };
    std::vector<part> parts;
    std::size_t prev = 0;
    for (const auto& [b, e] : matches) {
        if (prev < b) parts.push_back({prev, b, false});
        parts.push_back({b, e, true});
        prev = e;
    }
    if (prev < t.size()) parts.push_back({prev, t.size(), false});
    if (invert)
        for (auto& q : parts) q.is_match = !q.is_match;

    std::vector<part> res;
    switch (how) {
        case behavior::isolated:
            res = parts;
            break;
        case behavior::removed:
            for (const auto& q : parts)
                if (!q.is_match) res.push_back(q);
            break;
        case behavior::merged_with_previous: {
            bool prev_match = false;
            for (const auto& q : parts) {
                if (q.is_match && !prev_match && !res.empty()) res.back().e = q.e;
                else res.push_back({q.b, q.e, false});
                prev_match = q.is_match;
            }
            break;
        }
        case behavior::merged_with_next: {
            bool prev_match = false;
            for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
                if (it->is_match && !prev_match && !res.empty()) res.back().b = it->b;
                else res.push_back({it->b, it->e, false});
                prev_match = it->is_match;
            }
            std::reverse(res.begin(), res.end());
            break;
        }
        case behavior::contiguous: {
            bool prev_match = false;
            bool first = true;
            for (const auto& q : parts) {
                if (!first && q.is_match == prev_match) res.back().e = q.e;
                else res.push_back({q.b, q.e, false});
                prev_match = q.is_match;
                first = false;
            }
            break;
        }
    }
    for (const auto& q : res) {
        if (q.e <= q.b) continue;
        out.push_back({unicode::to_utf8(std::u32string_view(t).substr(q.b, q.e - q.b)), p.origin && q.b == 0});
    }
}

std::vector<std::pair<std::size_t, std::size_t>> predicate_runs(const std::u32string& t, bool (*pred)(char32_t),
                                                                bool individual) {
    std::vector<std::pair<std::size_t, std::size_t>> m;
    for (std::size_t i = 0; i < t.size();) {
        if (!pred(t[i])) {
            ++i;
            continue;
        }
        std::size_t j = i + 1;
        if (!individual)
            while (j < t.size() && pred(t[j])) ++j;
        m.emplace_back(i, j);
        i = j;
    }
    return m;
}

std::string to_byte_level(std::string_view s) {
    const auto& a = alphabet();
    std::string out;
    out.reserve(s.size() * 2);
    for (const char c : s) out += a.to_char[static_cast<unsigned char>(c)];
    return out;
}

void pre_tokenize(const std::vector<pre_step>& steps, std::vector<piece>& pieces) {
    std::vector<piece> next;
    for (const auto& step : steps) {
        next.clear();
        for (const piece& p : pieces) {
            if (const auto* s = std::get_if<pre_split>(&step)) {
                const std::u32string t = unicode::to_utf32(p.text);
                split_piece(p, t, s->pat.find_all(t, s->lit32), s->how, s->invert, next);
            } else if (const auto* b = std::get_if<pre_byte_level>(&step)) {
                std::string text = p.text;
                if (b->add_prefix_space && (text.empty() || text[0] != ' ')) text.insert(text.begin(), ' ');
                if (b->use_regex) {
                    const std::u32string t = unicode::to_utf32(text);
                    std::vector<piece> parts;
                    split_piece({text, p.origin}, t, gpt2_regex().find_all(t), behavior::isolated, false, parts);
                    for (auto& q : parts) next.push_back({to_byte_level(q.text), q.origin});
                } else {
                    next.push_back({to_byte_level(text), p.origin});
                }
            } else if (const auto* m = std::get_if<pre_metaspace>(&step)) {
                std::string text;
                text.reserve(p.text.size() + 8);
                for (const char c : p.text) {
                    if (c == ' ') text += m->replacement;
                    else text.push_back(c);
                }
                const bool starts = text.compare(0, m->replacement.size(), m->replacement) == 0;
                if (!starts && (m->prepend == pre_metaspace::always || (m->prepend == pre_metaspace::first && p.origin)))
                    text = m->replacement + text;
                if (m->split) {
                    const std::u32string t = unicode::to_utf32(text);
                    const std::u32string rep = unicode::to_utf32(m->replacement);
                    std::vector<std::pair<std::size_t, std::size_t>> matches;
                    for (std::size_t i = 0; i < t.size(); ++i)
                        if (t[i] == rep[0]) matches.emplace_back(i, i + 1);
                    split_piece({text, p.origin}, t, matches, behavior::merged_with_next, false, next);
                } else {
                    next.push_back({std::move(text), p.origin});
                }
            } else if (const auto* d = std::get_if<pre_digits>(&step)) {
                const std::u32string t = unicode::to_utf32(p.text);
                split_piece(p, t, predicate_runs(t, unicode::is_number, d->individual), behavior::isolated, false, next);
            } else if (std::holds_alternative<pre_whitespace_split>(step)) {
                const std::u32string t = unicode::to_utf32(p.text);
                split_piece(p, t, predicate_runs(t, unicode::is_white_space, false), behavior::removed, false, next);
            }
        }
        pieces.swap(next);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------
struct dec_byte_level {};
struct dec_byte_fallback {};
struct dec_fuse {};
struct dec_replace {
    pattern pat{};
    std::u32string lit32{};
    std::string content{};
};
struct dec_strip {
    std::string content{};
    std::size_t start = 0;
    std::size_t stop = 0;
};
struct dec_metaspace {
    std::string replacement{};
    bool strip_first = true;
};
using decoder_step = std::variant<dec_byte_level, dec_byte_fallback, dec_fuse, dec_replace, dec_strip, dec_metaspace>;

void parse_decoder(const json& n, const std::string& where, std::vector<decoder_step>& out) {
    if (n.is_null()) return;
    const std::string type = get_string(n, "type", where);
    if (type == "Sequence") {
        const json& list = member(n, "decoders", where);
        if (!list.is_array()) fail(where + ".decoders is not an array");
        for (std::size_t i = 0; i < list.size(); ++i)
            parse_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]", out);
    } else if (type == "ByteLevel") {
        out.emplace_back(dec_byte_level{});
    } else if (type == "ByteFallback") {
        out.emplace_back(dec_byte_fallback{});
    } else if (type == "Fuse") {
        out.emplace_back(dec_fuse{});
    } else if (type == "Replace") {
        dec_replace r{parse_pattern(n, where), {}, get_string(n, "content", where)};
        r.lit32 = unicode::to_utf32(r.pat.literal);
        out.emplace_back(std::move(r));
    } else if (type == "Strip") {
        dec_strip s{get_string(n, "content", where), 0, 0};
        if (unicode::to_utf32(s.content).size() != 1) fail(where + ".content must be one character");
        const auto start = opt_int(n, "start", where, 0), stop = opt_int(n, "stop", where, 0);
        if (start < 0 || stop < 0) fail(where + ": start/stop must not be negative");
        s.start = static_cast<std::size_t>(start);
        s.stop = static_cast<std::size_t>(stop);
        out.emplace_back(std::move(s));
    } else if (type == "Metaspace") {
        dec_metaspace m;
        m.replacement = opt_string(n, "replacement", where, "\xE2\x96\x81");
        const std::string scheme = opt_string(n, "prepend_scheme", where, "");
        if (scheme.empty()) m.strip_first = opt_bool(n, "add_prefix_space", where, true);
        else m.strip_first = scheme != "never";
        out.emplace_back(std::move(m));
    } else {
        fail(where + ": decoder type \"" + type + "\" is not supported");
    }
}

bool byte_token(const std::string& t, std::uint8_t& b) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
    int v = 0;
    for (int k = 3; k < 5; ++k) {
        const char h = t[static_cast<std::size_t>(k)];
        int d = -1;
        if (h >= '0' && h <= '9') d = h - '0';
        else if (h >= 'A' && h <= 'F') d = h - 'A' + 10;
        else if (h >= 'a' && h <= 'f') d = h - 'a' + 10;
        if (d < 0) return false;
        v = v * 16 + d;
    }
    b = static_cast<std::uint8_t>(v);
    return true;
}

// Runs the decoder chain; the result may be invalid UTF-8 (byte tokens are kept as raw bytes).
std::string run_decoders(const std::vector<decoder_step>& steps, std::vector<std::string> tokens, bool have_decoder) {
    if (!have_decoder) {
        std::string out;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
            if (i) out.push_back(' ');
            out += tokens[i];
        }
        return out;
    }
    for (const auto& step : steps) {
        if (std::holds_alternative<dec_byte_level>(step)) {
            const auto& a = alphabet();
            std::string bytes;
            for (const std::string& t : tokens) {
                for (std::size_t i = 0; i < t.size();) {
                    const std::size_t at = i;
                    const char32_t c = unicode::decode_utf8(t, i);
                    const auto it = a.to_byte.find(c);
                    if (it != a.to_byte.end()) bytes.push_back(static_cast<char>(it->second));
                    else bytes.append(t, at, i - at);
                }
            }
            tokens.assign(1, std::move(bytes));
        } else if (std::holds_alternative<dec_byte_fallback>(step)) {
            std::vector<std::string> out;
            std::string bytes;
            bool in_bytes = false;
            for (std::string& t : tokens) {
                std::uint8_t b = 0;
                if (byte_token(t, b)) {
                    bytes.push_back(static_cast<char>(b));
                    in_bytes = true;
                    continue;
                }
                if (in_bytes) {
                    out.push_back(std::move(bytes));
                    bytes.clear();
                    in_bytes = false;
                }
                out.push_back(std::move(t));
            }
            if (in_bytes) out.push_back(std::move(bytes));
            tokens = std::move(out);
        } else if (std::holds_alternative<dec_fuse>(step)) {
            std::string all;
            for (const std::string& t : tokens) all += t;
            tokens.assign(1, std::move(all));
        } else if (const auto* r = std::get_if<dec_replace>(&step)) {
            for (std::string& t : tokens) {
                if (!r->pat.re && !r->pat.literal.empty()) {
                    // Byte-wise literal replacement keeps raw bytes intact.
                    std::string o;
                    std::size_t prev = 0, at = 0;
                    while ((at = t.find(r->pat.literal, prev)) != std::string::npos) {
                        o.append(t, prev, at - prev);
                        o += r->content;
                        prev = at + r->pat.literal.size();
                    }
                    o.append(t, prev);
                    t = std::move(o);
                } else if (r->pat.re) {
                    t = replace_all(unicode::sanitize_utf8(t), r->pat, r->lit32, r->content);
                }
            }
        } else if (const auto* s = std::get_if<dec_strip>(&step)) {
            const std::string& c = s->content;
            for (std::string& t : tokens) {
                std::size_t b = 0, e = t.size();
                for (std::size_t k = 0; k < s->start && t.compare(b, c.size(), c) == 0 && b + c.size() <= e; ++k)
                    b += c.size();
                for (std::size_t k = 0; k < s->stop && e >= b + c.size() && t.compare(e - c.size(), c.size(), c) == 0; ++k)
                    e -= c.size();
                t = t.substr(b, e - b);
            }
        } else if (const auto* m = std::get_if<dec_metaspace>(&step)) {
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                std::string& t = tokens[i];
                std::string o;
                std::size_t prev = 0, at = 0;
                while ((at = t.find(m->replacement, prev)) != std::string::npos) {
                    o.append(t, prev, at - prev);
                    o.push_back(' ');
                    prev = at + m->replacement.size();
                }
                o.append(t, prev);
                if (i == 0 && m->strip_first && !o.empty() && o[0] == ' ') o.erase(0, 1);
                t = std::move(o);
            }
        }
    }
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Post-processor
// ---------------------------------------------------------------------------------------------
struct template_item {
    bool sequence = false;               // the input ($A)
    std::vector<std::int32_t> ids{};     // a special token's ids
};

void parse_post_processor(const json& n, const std::string& where, std::vector<template_item>& out, bool& set) {
    if (n.is_null()) return;
    const std::string type = get_string(n, "type", where);
    if (type == "Sequence") {
        const json& list = member(n, "processors", where);
        if (!list.is_array()) fail(where + ".processors is not an array");
        for (std::size_t i = 0; i < list.size(); ++i)
            parse_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]", out, set);
    } else if (type == "ByteLevel") {
        // Offsets only; the ids are unchanged.
    } else if (type == "TemplateProcessing") {
        if (set) fail(where + ": more than one template post-processor");
        set = true;
        const json& single = member(n, "single", where);
        const json& specials = n.contains("special_tokens") ? n["special_tokens"] : json::object();
        if (!single.is_array()) fail(where + ".single is not an array");
        for (std::size_t i = 0; i < single.size(); ++i) {
            const std::string w = where + ".single[" + std::to_string(i) + "]";
            const json& item = single[i];
            if (item.is_object() && item.contains("Sequence")) {
                out.push_back({true, {}});
            } else if (item.is_object() && item.contains("SpecialToken")) {
                const std::string name = get_string(item["SpecialToken"], "id", w + ".SpecialToken");
                if (!specials.is_object() || !specials.contains(name))
                    fail(w + ": special token \"" + name + "\" is not in special_tokens");
                const json& ids = member(specials[name], "ids", where + ".special_tokens." + name);
                if (!ids.is_array()) fail(where + ".special_tokens." + name + ".ids is not an array");
                template_item t;
                for (const json& id : ids) t.ids.push_back(to_id(id, where + ".special_tokens." + name + ".ids"));
                out.push_back(std::move(t));
            } else {
                fail(w + " is neither Sequence nor SpecialToken");
            }
        }
    } else if (type == "BertProcessing" || type == "RobertaProcessing") {
        if (set) fail(where + ": more than one template post-processor");
        set = true;
        const json& cls = member(n, "cls", where);
        const json& sep = member(n, "sep", where);
        if (!cls.is_array() || cls.size() != 2 || !sep.is_array() || sep.size() != 2)
            fail(where + ": cls and sep must be [token, id]");
        out.push_back({false, {to_id(cls[1], where + ".cls[1]")}});
        out.push_back({true, {}});
        out.push_back({false, {to_id(sep[1], where + ".sep[1]")}});
    } else {
        fail(where + ": post-processor type \"" + type + "\" is not supported");
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing of strings (transparent lookup by string_view).
// ---------------------------------------------------------------------------------------------
struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using vocab_map = std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>>;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------
struct tokenizer::impl {
    // Model (BPE)
    vocab_map vocab{};
    std::vector<std::string> id_to_token{};
    std::vector<std::uint8_t> has_token{};
    struct merge {
        std::int32_t rank = 0;
        std::int32_t id = 0;
    };
    std::unordered_map<std::uint64_t, merge> merges{};
    std::optional<std::int32_t> unk{};
    bool byte_fallback = false;
    bool fuse_unk = false;
    bool ignore_merges = false;
    std::string prefix{};  // continuing_subword_prefix
    std::string suffix{};  // end_of_word_suffix
    std::array<std::int32_t, 256> byte_ids{};  // <0xHH> ids or -1

    // Pipeline
    std::vector<normalizer_step> normalizers{};
    std::vector<pre_step> pre_tokenizers{};
    std::vector<template_item> post{};
    bool has_post = false;
    std::vector<decoder_step> decoders{};
    bool has_decoder = false;

    // Added tokens: a byte trie per matching pass (input text / normalized text).
    std::vector<added_token> added{};
    std::unordered_map<std::int32_t, std::size_t> added_by_id{};
    struct trie {
        std::unordered_map<std::uint64_t, std::uint32_t> edges{};  // (node << 8 | byte) -> node
        std::vector<std::int32_t> token{};                         // node -> index into added, or -1
        trie() : token(1, -1) {}
        void insert(const std::string& s, std::int32_t index) {
            std::uint32_t node = 0;
            for (const char c : s) {
                const std::uint64_t key = (std::uint64_t{node} << 8) | static_cast<unsigned char>(c);
                const auto it = edges.find(key);
                if (it != edges.end()) {
                    node = it->second;
                } else {
                    const auto n = static_cast<std::uint32_t>(token.size());
                    token.push_back(-1);
                    edges.emplace(key, n);
                    node = n;
                }
            }
            token[node] = index;
        }
        bool empty() const { return token.size() == 1; }
    };
    trie raw_trie{};
    trie norm_trie{};
    std::vector<std::uint8_t> special{};

    // Word cache
    mutable std::mutex cache_mutex{};
    mutable std::unordered_map<std::string, std::vector<std::int32_t>, string_hash, std::equal_to<>> cache{};

    void load(const json& root);
    void bpe_word(std::string_view word, std::vector<std::int32_t>& out) const;
    void model_encode(std::string_view word, std::vector<std::int32_t>& out) const;
    void encode_text(std::string_view text, bool at_origin, std::vector<std::int32_t>& out) const;
    struct segment {
        std::size_t begin = 0, end = 0;
        std::int32_t token = -1;  // id of an added token, or -1 for text
    };
    std::vector<segment> split_added(std::string_view text, const trie& t) const;
    std::string token_text(std::int32_t id) const;
};

void tokenizer::impl::load(const json& root) {
    if (!root.is_object()) fail("the top level is not an object");
    const json& model = member(root, "model", "the file");
    const std::string type = opt_string(model, "type", "model", "BPE");
    if (type != "BPE") fail("model type \"" + type + "\" is not supported (only BPE)");
    if (model.contains("dropout") && !model["dropout"].is_null()) {
        if (!model["dropout"].is_number() || model["dropout"].get<double>() != 0.0)
            fail("model.dropout is set; BPE dropout is not supported");
    }
    byte_fallback = opt_bool(model, "byte_fallback", "model", false);
    fuse_unk = opt_bool(model, "fuse_unk", "model", false);
    ignore_merges = opt_bool(model, "ignore_merges", "model", false);
    prefix = opt_string(model, "continuing_subword_prefix", "model");
    suffix = opt_string(model, "end_of_word_suffix", "model");

    const json& v = member(model, "vocab", "model");
    if (!v.is_object()) fail("model.vocab is not an object");
    vocab.reserve(v.size());
    std::int32_t max_id = -1;
    for (auto it = v.begin(); it != v.end(); ++it) {
        const std::int32_t id = to_id(it.value(), "model.vocab[\"" + it.key() + "\"]");
        if (!unicode::is_valid_utf8(it.key())) fail("model.vocab has a token that is not valid UTF-8");
        if (!vocab.emplace(it.key(), id).second) fail("model.vocab has a duplicate token");
        max_id = std::max(max_id, id);
    }

    // Added tokens.
    if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
        const json& list = root["added_tokens"];
        if (!list.is_array()) fail("added_tokens is not an array");
        for (std::size_t i = 0; i < list.size(); ++i) {
            const std::string w = "added_tokens[" + std::to_string(i) + "]";
            added_token a;
            a.content = get_string(list[i], "content", w);
            a.id = to_id(member(list[i], "id", w), w + ".id");
            a.single_word = opt_bool(list[i], "single_word", w, false);
            a.lstrip = opt_bool(list[i], "lstrip", w, false);
            a.rstrip = opt_bool(list[i], "rstrip", w, false);
            a.special = opt_bool(list[i], "special", w, false);
            a.normalized = opt_bool(list[i], "normalized", w, !a.special);
            if (a.content.empty()) fail(w + ".content is empty");
            if (!unicode::is_valid_utf8(a.content)) fail(w + ".content is not valid UTF-8");
            if (added_by_id.count(a.id)) fail(w + ": id " + std::to_string(a.id) + " is used twice");
            max_id = std::max(max_id, a.id);
            added_by_id.emplace(a.id, added.size());
            added.push_back(std::move(a));
        }
    }
    if (max_id < 0) fail("the vocabulary is empty");
    id_to_token.assign(static_cast<std::size_t>(max_id) + 1, {});
    has_token.assign(id_to_token.size(), 0);
    special.assign(id_to_token.size(), 0);
    for (const auto& [tok, id] : vocab) {
        const auto i = static_cast<std::size_t>(id);
        if (has_token[i]) fail("model.vocab: id " + std::to_string(id) + " is used twice");
        id_to_token[i] = tok;
        has_token[i] = 1;
    }
    for (std::size_t k = 0; k < added.size(); ++k) {
        const auto i = static_cast<std::size_t>(added[k].id);
        id_to_token[i] = added[k].content;
        has_token[i] = 1;
        special[i] = added[k].special ? 1 : 0;
        (added[k].normalized ? norm_trie : raw_trie).insert(added[k].content, static_cast<std::int32_t>(k));
    }

    // unk, byte tokens
    const std::string unk_token = opt_string(model, "unk_token", "model");
    if (!unk_token.empty()) {
        const auto it = vocab.find(unk_token);
        if (it == vocab.end()) fail("model.unk_token \"" + unk_token + "\" is not in the vocabulary");
        unk = it->second;
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        const auto it = vocab.find(std::string_view(name));
        byte_ids[static_cast<std::size_t>(b)] = it == vocab.end() ? -1 : it->second;
    }

    // Merges: ["a b", ...] or [["a", "b"], ...].
    const json& m = member(model, "merges", "model");
    if (!m.is_array()) fail("model.merges is not an array");
    merges.reserve(m.size() * 2);
    for (std::size_t i = 0; i < m.size(); ++i) {
        std::string a, b;
        if (m[i].is_string()) {
            const std::string s = m[i].get<std::string>();
            const std::size_t sp = s.find(' ');
            if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                fail("model.merges[" + std::to_string(i) + "] is not \"a b\"");
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (m[i].is_array() && m[i].size() == 2 && m[i][0].is_string() && m[i][1].is_string()) {
            a = m[i][0].get<std::string>();
            b = m[i][1].get<std::string>();
        } else {
            fail("model.merges[" + std::to_string(i) + "] is neither \"a b\" nor [\"a\", \"b\"]");
        }
        const auto ia = vocab.find(a), ib = vocab.find(b);
        if (ia == vocab.end() || ib == vocab.end())
            fail("model.merges[" + std::to_string(i) + "]: a part is not in the vocabulary");
        std::string merged = a + (prefix.empty() || b.compare(0, prefix.size(), prefix) != 0 ? b : b.substr(prefix.size()));
        const auto im = vocab.find(merged);
        if (im == vocab.end()) fail("model.merges[" + std::to_string(i) + "]: the merged token is not in the vocabulary");
        const std::uint64_t key = (std::uint64_t(static_cast<std::uint32_t>(ia->second)) << 32) |
                                  static_cast<std::uint32_t>(ib->second);
        merges.emplace(key, merge{static_cast<std::int32_t>(i), im->second});  // first rank wins
    }

    parse_normalizer(root.value("normalizer", json()), "normalizer", normalizers);
    parse_pre_tokenizer(root.value("pre_tokenizer", json()), "pre_tokenizer", pre_tokenizers);
    parse_post_processor(root.value("post_processor", json()), "post_processor", post, has_post);
    for (const auto& t : post)
        for (const std::int32_t id : t.ids)
            if (static_cast<std::size_t>(id) >= has_token.size() || !has_token[static_cast<std::size_t>(id)])
                fail("post_processor: special token id " + std::to_string(id) + " is not in the vocabulary");
    const json dec = root.value("decoder", json());
    has_decoder = !dec.is_null();
    parse_decoder(dec, "decoder", decoders);
}

// BPE of one word (after pre-tokenization), appending ids to out.
void tokenizer::impl::bpe_word(std::string_view word, std::vector<std::int32_t>& out) const {
    struct symbol {
        std::int32_t id = 0;
        std::int32_t prev = -1;
        std::int32_t next = -1;
        bool alive = true;
    };
    std::vector<symbol> syms;
    syms.reserve(word.size());
    bool last_unk = false;
    std::string piece;
    for (std::size_t i = 0; i < word.size();) {
        const std::size_t at = i;
        (void)unicode::decode_utf8(word, i);
        piece.clear();
        if (at > 0) piece += prefix;
        piece.append(word.substr(at, i - at));
        if (i == word.size()) piece += suffix;
        const auto it = vocab.find(piece);
        auto push = [&](std::int32_t id) {
            syms.push_back({id, static_cast<std::int32_t>(syms.size()) - 1, -1, true});
        };
        if (it != vocab.end()) {
            push(it->second);
            last_unk = false;
            continue;
        }
        if (byte_fallback) {
            bool all = true;
            for (std::size_t k = at; k < i; ++k)
                all = all && byte_ids[static_cast<unsigned char>(word[k])] >= 0;
            if (all) {
                for (std::size_t k = at; k < i; ++k) push(byte_ids[static_cast<unsigned char>(word[k])]);
                last_unk = false;
                continue;
            }
        }
        if (!unk) throw tokenizer_error("tokenizer: a character is not in the vocabulary and there is no unk_token");
        if (!(fuse_unk && last_unk)) push(*unk);
        last_unk = true;
    }
    for (std::size_t k = 0; k + 1 < syms.size(); ++k) syms[k].next = static_cast<std::int32_t>(k + 1);

    struct cand {
        std::int32_t rank = 0;
        std::int32_t pos = 0;
        std::int32_t left = 0;
        std::int32_t right = 0;
        bool operator>(const cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<cand, std::vector<cand>, std::greater<>> queue;
    auto consider = [&](std::int32_t pos) {
        if (pos < 0) return;
        const std::int32_t nx = syms[static_cast<std::size_t>(pos)].next;
        if (nx < 0) return;
        const std::int32_t l = syms[static_cast<std::size_t>(pos)].id, r = syms[static_cast<std::size_t>(nx)].id;
        const auto it = merges.find((std::uint64_t(static_cast<std::uint32_t>(l)) << 32) | static_cast<std::uint32_t>(r));
        if (it != merges.end()) queue.push({it->second.rank, pos, l, r});
    };
    for (std::size_t k = 0; k + 1 < syms.size(); ++k) consider(static_cast<std::int32_t>(k));
    while (!queue.empty()) {
        const cand c = queue.top();
        queue.pop();
        symbol& s = syms[static_cast<std::size_t>(c.pos)];
        if (!s.alive || s.next < 0 || s.id != c.left) continue;
        symbol& n = syms[static_cast<std::size_t>(s.next)];
        if (n.id != c.right) continue;
        const auto it = merges.find((std::uint64_t(static_cast<std::uint32_t>(c.left)) << 32) | static_cast<std::uint32_t>(c.right));
        s.id = it->second.id;
        n.alive = false;
        s.next = n.next;
        if (s.next >= 0) syms[static_cast<std::size_t>(s.next)].prev = c.pos;
        consider(s.prev);
        consider(c.pos);
    }
    for (std::int32_t k = syms.empty() ? -1 : 0; k >= 0; k = syms[static_cast<std::size_t>(k)].next)
        out.push_back(syms[static_cast<std::size_t>(k)].id);
}

void tokenizer::impl::model_encode(std::string_view word, std::vector<std::int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
        const auto it = vocab.find(word);
        if (it != vocab.end()) {
            out.push_back(it->second);
            return;
        }
    }
    constexpr std::size_t max_cached = 256;
    if (word.size() <= max_cached) {
        std::lock_guard lock(cache_mutex);
        const auto it = cache.find(word);
        if (it != cache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    const std::size_t from = out.size();
    bpe_word(word, out);
    if (word.size() <= max_cached) {
        std::lock_guard lock(cache_mutex);
        if (cache.size() >= 200000) cache.clear();
        cache.emplace(std::string(word), std::vector<std::int32_t>(out.begin() + static_cast<std::ptrdiff_t>(from), out.end()));
    }
}

std::vector<tokenizer::impl::segment> tokenizer::impl::split_added(std::string_view text, const trie& t) const {
    std::vector<segment> segs;
    if (t.empty()) {
        segs.push_back({0, text.size(), -1});
        return segs;
    }
    auto char_before = [&](std::size_t pos) -> char32_t {
        if (pos == 0) return 0;
        std::size_t b = pos - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        std::size_t i = b;
        return unicode::decode_utf8(text, i);
    };
    auto char_at = [&](std::size_t pos) -> char32_t {
        if (pos >= text.size()) return 0;
        std::size_t i = pos;
        return unicode::decode_utf8(text, i);
    };
    auto is_word = [](char32_t c) { return c != 0 && (unicode::is_letter(c) || unicode::is_number(c) || c == '_'); };
    std::size_t start_offset = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        // Longest token starting at i.
        std::uint32_t node = 0;
        std::int32_t best = -1;
        std::size_t best_end = 0;
        for (std::size_t j = i; j < text.size(); ++j) {
            const auto it = t.edges.find((std::uint64_t{node} << 8) | static_cast<unsigned char>(text[j]));
            if (it == t.edges.end()) break;
            node = it->second;
            if (t.token[node] >= 0) {
                best = t.token[node];
                best_end = j + 1;
            }
        }
        if (best < 0) {
            ++i;
            continue;
        }
        const added_token& a = added[static_cast<std::size_t>(best)];
        std::size_t start = i, stop = best_end;
        if (a.single_word && (is_word(char_before(start)) || is_word(char_at(stop)))) {
            i = stop;
            continue;
        }
        if (a.lstrip) {
            while (start > start_offset) {
                std::size_t b = start - 1;
                while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
                std::size_t k = b;
                if (!unicode::is_white_space(unicode::decode_utf8(text, k))) break;
                start = b;
            }
        }
        if (a.rstrip) {
            while (stop < text.size()) {
                std::size_t k = stop;
                if (!unicode::is_white_space(unicode::decode_utf8(text, k))) break;
                stop = k;
            }
        }
        if (start_offset < start) segs.push_back({start_offset, start, -1});
        segs.push_back({start, stop, a.id});
        start_offset = stop;
        i = stop;
    }
    if (start_offset < text.size()) segs.push_back({start_offset, text.size(), -1});
    return segs;
}

void tokenizer::impl::encode_text(std::string_view text, bool at_origin, std::vector<std::int32_t>& out) const {
    const std::string normalized = normalize(normalizers, std::string(text));
    if (normalized.empty()) return;
    for (const segment& s : split_added(normalized, norm_trie)) {
        if (s.token >= 0) {
            out.push_back(s.token);
            continue;
        }
        std::vector<piece> pieces{{normalized.substr(s.begin, s.end - s.begin), at_origin && s.begin == 0}};
        pre_tokenize(pre_tokenizers, pieces);
        for (const piece& p : pieces) model_encode(p.text, out);
    }
}

std::string tokenizer::impl::token_text(std::int32_t id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= has_token.size() || !has_token[static_cast<std::size_t>(id)])
        throw tokenizer_error("tokenizer: token id " + std::to_string(id) + " is not in the vocabulary");
    return id_to_token[static_cast<std::size_t>(id)];
}

tokenizer::tokenizer(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
tokenizer::tokenizer(tokenizer&&) noexcept = default;
tokenizer& tokenizer::operator=(tokenizer&&) noexcept = default;
tokenizer::~tokenizer() = default;

tokenizer tokenizer::from_json(std::string_view json_text) {
    json root;
    try {
        root = json::parse(json_text.begin(), json_text.end());
    } catch (const json::exception& e) {
        throw tokenizer_error(std::string("tokenizer.json: not valid JSON: ") + e.what());
    }
    auto p = std::make_unique<impl>();
    try {
        p->load(root);
    } catch (const json::exception& e) {
        throw tokenizer_error(std::string("tokenizer.json: unexpected content: ") + e.what());
    }
    return tokenizer(std::move(p));
}

tokenizer tokenizer::from_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw tokenizer_error(path.string() + ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) throw tokenizer_error(path.string() + ": read error");
    try {
        return from_json(ss.str());
    } catch (const tokenizer_error& e) {
        throw tokenizer_error(path.string() + ": " + e.what());
    }
}

std::vector<std::int32_t> tokenizer::encode(std::string_view input, bool add_special_tokens) const {
    const impl& m = *impl_;
    const std::string text = unicode::sanitize_utf8(input);
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    for (const impl::segment& s : m.split_added(text, m.raw_trie)) {
        if (s.token >= 0) ids.push_back(s.token);
        else m.encode_text(std::string_view(text).substr(s.begin, s.end - s.begin), s.begin == 0, ids);
    }
    if (!add_special_tokens || !m.has_post) return ids;
    std::vector<std::int32_t> out;
    out.reserve(ids.size() + 4);
    for (const template_item& t : m.post) {
        if (t.sequence) out.insert(out.end(), ids.begin(), ids.end());
        else out.insert(out.end(), t.ids.begin(), t.ids.end());
    }
    return out;
}

std::string tokenizer::decode_bytes(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
    const impl& m = *impl_;
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const std::int32_t id : ids) {
        std::string t = m.token_text(id);
        if (skip_special_tokens && m.special[static_cast<std::size_t>(id)]) continue;
        tokens.push_back(std::move(t));
    }
    return run_decoders(m.decoders, std::move(tokens), m.has_decoder);
}

std::string tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
    return unicode::sanitize_utf8(decode_bytes(ids, skip_special_tokens));
}

std::size_t tokenizer::vocab_size() const noexcept { return impl_->id_to_token.size(); }

std::optional<std::int32_t> tokenizer::token_to_id(std::string_view token) const {
    for (const added_token& a : impl_->added)
        if (a.content == token) return a.id;
    const auto it = impl_->vocab.find(token);
    if (it == impl_->vocab.end()) return std::nullopt;
    return it->second;
}

const std::string& tokenizer::id_to_token(std::int32_t id) const {
    (void)impl_->token_text(id);  // validates
    return impl_->id_to_token[static_cast<std::size_t>(id)];
}

bool tokenizer::is_special(std::int32_t id) const noexcept {
    return id >= 0 && static_cast<std::size_t>(id) < impl_->special.size() && impl_->special[static_cast<std::size_t>(id)];
}

const std::vector<added_token>& tokenizer::added_tokens() const noexcept { return impl_->added; }

void tokenizer::clear_cache() const {
    std::lock_guard lock(impl_->cache_mutex);
    impl_->cache.clear();
}

// ---------------------------------------------------------------------------------------------
// Streaming decoder
// ---------------------------------------------------------------------------------------------
stream_decoder::stream_decoder(const tokenizer& tok, bool skip_special_tokens)
    : tok_(&tok), skip_special_(skip_special_tokens) {}

std::string stream_decoder::push(std::int32_t id) {
    (void)tok_->id_to_token(id);  // validates the id before it enters the window
    if (skip_special_ && tok_->is_special(id)) return {};
    window_.push_back(id);
    const std::string all = tok_->decode_bytes(window_, false);
    if (all.size() <= done_) return {};
    const std::string_view pending = std::string_view(all).substr(done_);
    const std::size_t ready = unicode::complete_utf8_prefix(pending);
    std::string out = unicode::sanitize_utf8(pending.substr(0, ready));
    done_ += ready;
    if (ready == pending.size()) {
        // Everything is out: keep only the last token as context (leading-space rules of the
        // decoders look at the previous token).
        const std::int32_t last = window_.back();
        window_.assign(1, last);
        done_ = tok_->decode_bytes(window_, false).size();
    }
    return out;
}

std::string stream_decoder::finish() {
    std::string out;
    if (!window_.empty()) {
        const std::string all = tok_->decode_bytes(window_, false);
        if (all.size() > done_) out = unicode::sanitize_utf8(std::string_view(all).substr(done_));
    }
    window_.clear();
    done_ = 0;
    return out;
}

}  // namespace hlwq::rt
