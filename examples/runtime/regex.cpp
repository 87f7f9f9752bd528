// SPDX-License-Identifier: MIT
#include "regex.hpp"

#include "unicode.hpp"

#include <limits>
#include <memory>
#include <stdexcept>

namespace hlwq::rt {
namespace {

enum op : std::uint8_t { op_char, op_class, op_any, op_split, op_jmp, op_assert, op_match };
enum item_kind : std::uint8_t { k_range, k_category, k_space, k_digit, k_word };

constexpr std::uint32_t unbounded = std::numeric_limits<std::uint32_t>::max();
constexpr std::size_t max_program = 200000;
constexpr std::size_t step_budget = 50'000'000;

struct node {
    enum kind_t { chr, cls, any, cat, alt, rep, look, empty } kind = empty;
    char32_t c = 0;
    bool icase = false;
    std::uint32_t cls_index = 0;
    std::vector<std::unique_ptr<node>> kids{};
    std::uint32_t min = 0, max = 0;
    bool greedy = true;
    bool negated = false;
};
using node_ptr = std::unique_ptr<node>;

char32_t fold(char32_t c) noexcept { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

class parser {
public:
    parser(std::u32string p, std::vector<regex::char_class>& classes) : p_(std::move(p)), classes_(classes) {}

    node_ptr parse() {
        node_ptr n = alternation(false);
        if (i_ != p_.size()) fail("unmatched ')'");
        return n;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw std::invalid_argument("regex: " + what + " at offset " + std::to_string(i_) + " of the pattern");
    }
    bool eof() const { return i_ >= p_.size(); }
    char32_t peek() const { return p_[i_]; }

    node_ptr alternation(bool icase) {
        auto first = concatenation(icase);
        if (eof() || peek() != '|') return first;
        auto a = std::make_unique<node>();
        a->kind = node::alt;
        a->kids.push_back(std::move(first));
        while (!eof() && peek() == '|') {
            ++i_;
            a->kids.push_back(concatenation(icase));
        }
        return a;
    }

    node_ptr concatenation(bool icase) {
        auto c = std::make_unique<node>();
        c->kind = node::cat;
        while (!eof() && peek() != '|' && peek() != ')') c->kids.push_back(repetition(icase));
        return c;
    }

    std::uint32_t number() {
        if (eof() || peek() < '0' || peek() > '9') fail("expected a number in {}");
        std::uint64_t v = 0;
        while (!eof() && peek() >= '0' && peek() <= '9') {
            v = v * 10 + (peek() - '0');
            if (v > 1000) fail("repeat count above 1000");
            ++i_;
        }
        return static_cast<std::uint32_t>(v);
    }

    node_ptr repetition(bool icase) {
        auto a = atom(icase);
        for (;;) {
            if (eof()) return a;
            std::uint32_t lo = 0, hi = 0;
            const char32_t q = peek();
            if (q == '*') { lo = 0; hi = unbounded; ++i_; }
            else if (q == '+') { lo = 1; hi = unbounded; ++i_; }
            else if (q == '?') { lo = 0; hi = 1; ++i_; }
            else if (q == '{') {
                const std::size_t save = i_;
                ++i_;
                if (eof() || peek() < '0' || peek() > '9') {  // a literal '{'
                    i_ = save;
                    return a;
                }
                lo = number();
                hi = lo;
                if (!eof() && peek() == ',') {
                    ++i_;
                    hi = (!eof() && peek() == '}') ? unbounded : number();
                }
                if (eof() || peek() != '}') fail("expected '}'");
                ++i_;
                if (hi < lo) fail("{n,m} with m < n");
            } else {
                return a;
            }
            auto r = std::make_unique<node>();
            r->kind = node::rep;
            r->min = lo;
            r->max = hi;
            if (!eof() && peek() == '?') { r->greedy = false; ++i_; }
            else if (!eof() && peek() == '+') fail("possessive quantifiers are not supported");
            r->kids.push_back(std::move(a));
            a = std::move(r);
        }
    }

    node_ptr make_char(char32_t c, bool icase) {
        auto n = std::make_unique<node>();
        n->kind = node::chr;
        n->icase = icase && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
        n->c = n->icase ? fold(c) : c;
        return n;
    }

    node_ptr make_class(regex::char_class cl) {
        auto n = std::make_unique<node>();
        n->kind = node::cls;
        n->cls_index = static_cast<std::uint32_t>(classes_.size());
        classes_.push_back(std::move(cl));
        return n;
    }

    std::uint32_t hex(std::size_t digits) {
        std::uint32_t v = 0;
        for (std::size_t k = 0; k < digits; ++k) {
            if (eof()) fail("truncated hex escape");
            const char32_t h = peek();
            int d = -1;
            if (h >= '0' && h <= '9') d = static_cast<int>(h - '0');
            else if (h >= 'a' && h <= 'f') d = static_cast<int>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') d = static_cast<int>(h - 'A' + 10);
            if (d < 0) fail("bad hex digit");
            v = v * 16 + static_cast<std::uint32_t>(d);
            if (v > 0x10FFFF) fail("code point above U+10FFFF");
            ++i_;
        }
        return v;
    }

    // Parses an escape after '\'. Either a single code point (returns true, sets c) or a class
    // item (returns false, sets item).
    bool escape(char32_t& c, regex::class_item& item) {
        if (eof()) fail("trailing backslash");
        const char32_t e = p_[i_++];
        switch (e) {
            case 'r': c = '\r'; return true;
            case 'n': c = '\n'; return true;
            case 't': c = '\t'; return true;
            case 'f': c = '\f'; return true;
            case 'v': c = '\v'; return true;
            case 'a': c = '\a'; return true;
            case 'e': c = 0x1B; return true;
            case '0': c = 0; return true;
            case 'x':
                if (!eof() && peek() == '{') {
                    ++i_;
                    std::uint32_t v = 0;
                    std::size_t n = 0;
                    while (!eof() && peek() != '}') {
                        v = v * 16 + hex(1);
                        if (++n > 6) fail("bad \\x{...}");
                    }
                    if (eof() || n == 0) fail("bad \\x{...}");
                    ++i_;
                    c = v;
                } else {
                    c = hex(2);
                }
                return true;
            case 'u': c = hex(4); return true;
            case 's': case 'S': item.kind = k_space; item.negated = e == 'S'; return false;
            case 'd': case 'D': item.kind = k_digit; item.negated = e == 'D'; return false;
            case 'w': case 'W': item.kind = k_word; item.negated = e == 'W'; return false;
            case 'p': case 'P': {
                std::string name;
                if (!eof() && peek() == '{') {
                    ++i_;
                    while (!eof() && peek() != '}') {
                        if (peek() > 0x7F || name.size() > 32) fail("bad \\p{...}");
                        name.push_back(static_cast<char>(peek()));
                        ++i_;
                    }
                    if (eof()) fail("unterminated \\p{...}");
                    ++i_;
                } else if (!eof() && peek() < 0x80) {
                    name.push_back(static_cast<char>(p_[i_++]));
                }
                bool neg = e == 'P';
                if (!name.empty() && name[0] == '^') {
                    neg = !neg;
                    name.erase(0, 1);
                }
                const std::uint32_t mask = unicode::category_mask(name);
                if (mask == 0) fail("unsupported property \\p{" + name + "}");
                item.kind = k_category;
                item.mask = mask;
                item.negated = neg;
                return false;
            }
            default:
                if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
                    fail("unsupported escape");
                c = e;  // escaped punctuation
                return true;
        }
    }

    node_ptr atom(bool icase) {
        const char32_t c = p_[i_];
        switch (c) {
            case '(': return group(icase);
            case '[': return char_class(icase);
            case '.': {
                ++i_;
                auto n = std::make_unique<node>();
                n->kind = node::any;
                return n;
            }
            case '\\': {
                ++i_;
                char32_t ch = 0;
                regex::class_item item;
                if (escape(ch, item)) return make_char(ch, icase);
                regex::char_class cl;
                cl.items.push_back(item);
                return make_class(std::move(cl));
            }
            case '*': case '+': case '?': fail("nothing to repeat");
            case '^': case '$': fail("anchors are not supported");
            default:
                ++i_;
                return make_char(c, icase);
        }
    }

    node_ptr group(bool icase) {
        ++i_;  // '('
        node_ptr inner;
        if (!eof() && peek() == '?') {
            ++i_;
            if (eof()) fail("unterminated group");
            const char32_t k = p_[i_];
            if (k == ':') {
                ++i_;
                inner = alternation(icase);
            } else if (k == '=' || k == '!') {
                ++i_;
                auto l = std::make_unique<node>();
                l->kind = node::look;
                l->negated = k == '!';
                l->kids.push_back(alternation(icase));
                inner = std::move(l);
            } else if (k == 'i' || k == '-') {
                bool on = true;
                if (k == '-') {
                    on = false;
                    ++i_;
                    if (eof() || peek() != 'i') fail("unsupported inline flag");
                }
                ++i_;
                if (eof() || peek() != ':') fail("only (?i:...) and (?-i:...) inline flags are supported");
                ++i_;
                inner = alternation(on);
            } else {
                fail("unsupported group syntax (?" + std::string(1, static_cast<char>(k < 0x80 ? k : '?')) + ")");
            }
        } else {
            inner = alternation(icase);
        }
        if (eof() || peek() != ')') fail("missing ')'");
        ++i_;
        return inner;
    }

    node_ptr char_class(bool icase) {
        ++i_;  // '['
        regex::char_class cl;
        cl.icase = icase;
        if (!eof() && peek() == '^') {
            cl.negated = true;
            ++i_;
        }
        bool first = true;
        for (;;) {
            if (eof()) fail("unterminated character class");
            char32_t c = peek();
            if (c == ']' && !first) {
                ++i_;
                break;
            }
            first = false;
            if (c == '[') fail("nested character classes are not supported");
            regex::class_item item;
            bool single = true;
            ++i_;
            if (c == '\\') single = escape(c, item);
            if (!single) {
                cl.items.push_back(item);
                continue;
            }
            char32_t hi = c;
            if (i_ + 1 < p_.size() && peek() == '-' && p_[i_ + 1] != ']') {
                ++i_;
                hi = p_[i_++];
                if (hi == '\\') {
                    regex::class_item dummy;
                    if (!escape(hi, dummy)) fail("a class escape cannot end a range");
                }
                if (hi < c) fail("range out of order");
            }
            item.kind = k_range;
            item.lo = c;
            item.hi = hi;
            cl.items.push_back(item);
        }
        return make_class(std::move(cl));
    }

    std::u32string p_;
    std::size_t i_ = 0;
    std::vector<regex::char_class>& classes_;
};

class compiler {
public:
    explicit compiler(std::vector<std::vector<regex::instruction>>& progs) : progs_(progs) {}

    void program(const node& n) {
        const std::size_t idx = progs_.size();
        progs_.emplace_back();
        emit_node(idx, n);
        emit(idx, {op_match});
    }

private:
    std::uint32_t emit(std::size_t p, regex::instruction in) {
        auto& v = progs_[p];
        if (v.size() >= max_program) throw std::invalid_argument("regex: pattern too large");
        v.push_back(in);
        return static_cast<std::uint32_t>(v.size() - 1);
    }
    std::uint32_t here(std::size_t p) const { return static_cast<std::uint32_t>(progs_[p].size()); }

    void emit_node(std::size_t p, const node& n) {
        switch (n.kind) {
            case node::empty: break;
            case node::chr: emit(p, {op_char, n.icase, static_cast<std::uint32_t>(n.c)}); break;
            case node::cls: emit(p, {op_class, false, n.cls_index}); break;
            case node::any: emit(p, {op_any}); break;
            case node::cat:
                for (const auto& k : n.kids) emit_node(p, *k);
                break;
            case node::alt: {
                std::vector<std::uint32_t> jumps;
                for (std::size_t k = 0; k < n.kids.size(); ++k) {
                    if (k + 1 < n.kids.size()) {
                        const std::uint32_t split = emit(p, {op_split});
                        progs_[p][split].x = here(p);
                        emit_node(p, *n.kids[k]);
                        jumps.push_back(emit(p, {op_jmp}));
                        progs_[p][split].y = here(p);
                    } else {
                        emit_node(p, *n.kids[k]);
                    }
                }
                for (const std::uint32_t j : jumps) progs_[p][j].x = here(p);
                break;
            }
            case node::rep: {
                const node& e = *n.kids[0];
                for (std::uint32_t k = 0; k < n.min; ++k) emit_node(p, e);
                if (n.max == unbounded) {
                    const std::uint32_t split = emit(p, {op_split});
                    const std::uint32_t body = here(p);
                    emit_node(p, e);
                    emit(p, {op_jmp, false, 0, split});
                    set_split(p, split, body, here(p), n.greedy);
                } else {
                    std::vector<std::uint32_t> splits;
                    for (std::uint32_t k = n.min; k < n.max; ++k) {
                        splits.push_back(emit(p, {op_split}));
                        progs_[p][splits.back()].x = here(p);
                        emit_node(p, e);
                    }
                    for (const std::uint32_t s : splits) set_split(p, s, progs_[p][s].x, here(p), n.greedy);
                }
                break;
            }
            case node::look: {
                const auto sub = static_cast<std::uint32_t>(progs_.size());
                program(*n.kids[0]);
                emit(p, {op_assert, n.negated, sub});
                break;
            }
        }
    }

    void set_split(std::size_t p, std::uint32_t at, std::uint32_t body, std::uint32_t after, bool greedy) {
        progs_[p][at].x = greedy ? body : after;
        progs_[p][at].y = greedy ? after : body;
    }

    std::vector<std::vector<regex::instruction>>& progs_;
};

}  // namespace

regex::regex(std::string_view pattern) {
    if (!unicode::is_valid_utf8(pattern)) throw std::invalid_argument("regex: the pattern is not valid UTF-8");
    parser ps(unicode::to_utf32(pattern), classes_);
    const node_ptr root = ps.parse();
    compiler(programs_).program(*root);
}

bool regex::class_matches(const char_class& c, char32_t cp) const {
    bool in = false;
    for (const class_item& it : c.items) {
        bool m = false;
        switch (it.kind) {
            case k_range:
                m = (cp >= it.lo && cp <= it.hi);
                if (!m && c.icase && cp < 0x80) {
                    const char32_t other = (cp >= 'a' && cp <= 'z') ? cp - 32 : fold(cp);
                    m = other >= it.lo && other <= it.hi;
                }
                break;
            case k_category: m = ((it.mask >> unicode::category(cp)) & 1u) != 0; break;
            case k_space: m = unicode::is_white_space(cp); break;
            case k_digit: m = unicode::category(cp) == 9; break;  // Nd
            case k_word: {
                const int cat = unicode::category(cp);
                m = (cat >= 1 && cat <= 9) || cat == 12;  // L*, M*, Nd, Pc
                break;
            }
            default: break;
        }
        if (m != it.negated) {
            in = true;
            break;
        }
    }
    return in != c.negated;
}

bool regex::run(std::size_t prog, std::u32string_view text, std::size_t pos, std::size_t& end,
                std::size_t& budget) const {
    const auto& code = programs_[prog];
    std::vector<std::pair<std::uint32_t, std::size_t>> stack;
    stack.emplace_back(0, pos);
    while (!stack.empty()) {
        auto [pc, at] = stack.back();
        stack.pop_back();
        for (;;) {
            if (budget-- == 0)
                throw std::runtime_error("regex: step budget exhausted (pathological pattern or input)");
            const instruction& in = code[pc];
            bool ok = true;
            switch (in.op) {
                case op_char:
                    ok = at < text.size() && (in.flag ? fold(text[at]) : text[at]) == in.arg;
                    if (ok) { ++at; ++pc; }
                    break;
                case op_class:
                    ok = at < text.size() && class_matches(classes_[in.arg], text[at]);
                    if (ok) { ++at; ++pc; }
                    break;
                case op_any:
                    ok = at < text.size() && text[at] != '\n';
                    if (ok) { ++at; ++pc; }
                    break;
                case op_split:
                    stack.emplace_back(in.y, at);
                    pc = in.x;
                    break;
                case op_jmp: pc = in.x; break;
                case op_assert: {
                    std::size_t e = 0;
                    ok = run(in.arg, text, at, e, budget) != in.flag;
                    if (ok) ++pc;
                    break;
                }
                case op_match: end = at; return true;
                default: ok = false; break;
            }
            if (!ok) break;
        }
    }
    return false;
}

std::optional<std::pair<std::size_t, std::size_t>> regex::search(std::u32string_view text, std::size_t from) const {
    for (std::size_t start = from; start <= text.size(); ++start) {
        std::size_t budget = step_budget, end = 0;
        if (run(0, text, start, end, budget)) return std::pair{start, end};
    }
    return std::nullopt;
}

std::vector<std::pair<std::size_t, std::size_t>> regex::find_all(std::u32string_view text) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t from = 0;
    while (from <= text.size()) {
        const auto m = search(text, from);
        if (!m) break;
        out.push_back(*m);
        from = m->second > m->first ? m->second : m->second + 1;
    }
    return out;
}

}  // namespace hlwq::rt
