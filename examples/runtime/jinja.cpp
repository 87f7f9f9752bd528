// SPDX-License-Identifier: MIT
#include "jinja.hpp"

#include "unicode.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <unordered_map>
#include <vector>

namespace hlwq::rt {

template_error::template_error(const std::string& message, std::size_t line, std::size_t column, bool raised)
    : std::runtime_error(line ? "chat template:" + std::to_string(line) + ":" + std::to_string(column) + ": " + message
                              : "chat template: " + message),
      message_(message),
      line_(line),
      column_(column),
      raised_(raised) {}

namespace {

using ojson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------
struct value;
using array_t = std::vector<value>;
using object_t = std::vector<std::pair<std::string, value>>;  // insertion order, like Python dicts
struct call_args;
using function_t = std::function<value(call_args&)>;

struct value {
    enum kind_t { undefined, none, boolean, integer, floating, string, array, object, callable } kind = undefined;
    bool b = false;
    std::int64_t i = 0;
    double f = 0;
    std::string s{};
    std::shared_ptr<array_t> a{};
    std::shared_ptr<object_t> o{};
    std::shared_ptr<function_t> fn{};
    bool is_namespace = false;

    static value make_bool(bool v) { value x; x.kind = boolean; x.b = v; return x; }
    static value make_int(std::int64_t v) { value x; x.kind = integer; x.i = v; return x; }
    static value make_float(double v) { value x; x.kind = floating; x.f = v; return x; }
    static value make_string(std::string v) { value x; x.kind = string; x.s = std::move(v); return x; }
    static value make_none() { value x; x.kind = none; return x; }
    static value make_array(array_t v = {}) { value x; x.kind = array; x.a = std::make_shared<array_t>(std::move(v)); return x; }
    static value make_object(object_t v = {}) { value x; x.kind = object; x.o = std::make_shared<object_t>(std::move(v)); return x; }
    static value make_function(function_t f) { value x; x.kind = callable; x.fn = std::make_shared<function_t>(std::move(f)); return x; }

    bool is_number() const { return kind == integer || kind == floating; }
    double number() const { return kind == integer ? static_cast<double>(i) : f; }
    const value* find(std::string_view key) const {
        if (kind != object) return nullptr;
        for (const auto& [k, v] : *o)
            if (k == key) return &v;
        return nullptr;
    }
    void set(const std::string& key, value v) {
        for (auto& [k, old] : *o)
            if (k == key) {
                old = std::move(v);
                return;
            }
        o->emplace_back(key, std::move(v));
    }
};

struct call_args {
    std::vector<value> pos{};
    std::vector<std::pair<std::string, value>> kw{};
    std::size_t line = 0, col = 0;

    [[noreturn]] void fail(const std::string& m) const { throw template_error(m, line, col); }
    const value* get(std::size_t index, std::string_view name) const {
        if (index < pos.size()) return &pos[index];
        for (const auto& [k, v] : kw)
            if (k == name) return &v;
        return nullptr;
    }
};

value from_json(const ojson& j) {
    switch (j.type()) {
        case ojson::value_t::null: return value::make_none();
        case ojson::value_t::boolean: return value::make_bool(j.get<bool>());
        case ojson::value_t::number_integer: return value::make_int(j.get<std::int64_t>());
        case ojson::value_t::number_unsigned: return value::make_int(static_cast<std::int64_t>(j.get<std::uint64_t>()));
        case ojson::value_t::number_float: return value::make_float(j.get<double>());
        case ojson::value_t::string: return value::make_string(j.get<std::string>());
        case ojson::value_t::array: {
            array_t a;
            for (const auto& e : j) a.push_back(from_json(e));
            return value::make_array(std::move(a));
        }
        case ojson::value_t::object: {
            object_t o;
            for (auto it = j.begin(); it != j.end(); ++it) o.emplace_back(it.key(), from_json(it.value()));
            return value::make_object(std::move(o));
        }
        default: return value{};
    }
}

bool truthy(const value& v) {
    switch (v.kind) {
        case value::undefined: case value::none: return false;
        case value::boolean: return v.b;
        case value::integer: return v.i != 0;
        case value::floating: return v.f != 0;
        case value::string: return !v.s.empty();
        case value::array: return !v.a->empty();
        case value::object: return !v.o->empty();
        case value::callable: return true;
    }
    return false;
}

std::string format_float(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    char buf[40];
    for (int prec = 1; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) break;
    }
    std::string s = buf;
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
}

std::string repr(const value& v);

std::string to_string(const value& v) {
    switch (v.kind) {
        case value::undefined: return "";
        case value::none: return "None";
        case value::boolean: return v.b ? "True" : "False";
        case value::integer: return std::to_string(v.i);
        case value::floating: return format_float(v.f);
        case value::string: return v.s;
        default: return repr(v);
    }
}

std::string repr(const value& v) {
    switch (v.kind) {
        case value::string: {
            std::string out = "'";
            for (const char c : v.s) {
                if (c == '\'') out += "\\'";
                else if (c == '\\') out += "\\\\";
                else if (c == '\n') out += "\\n";
                else out.push_back(c);
            }
            return out + "'";
        }
        case value::array: {
            std::string out = "[";
            for (std::size_t k = 0; k < v.a->size(); ++k) out += (k ? ", " : "") + repr((*v.a)[k]);
            return out + "]";
        }
        case value::object: {
            std::string out = "{";
            bool first = true;
            for (const auto& [k, e] : *v.o) {
                out += (first ? "'" : ", '") + k + "': " + repr(e);
                first = false;
            }
            return out + "}";
        }
        case value::callable: return "<function>";
        default: return to_string(v);
    }
}

void to_json(const value& v, std::string& out, int indent, int depth, std::size_t line, std::size_t col) {
    auto newline = [&](int d) {
        out.push_back('\n');
        out.append(static_cast<std::size_t>(indent * d), ' ');
    };
    switch (v.kind) {
        case value::undefined: case value::none: out += "null"; break;
        case value::boolean: out += v.b ? "true" : "false"; break;
        case value::integer: out += std::to_string(v.i); break;
        case value::floating: out += ojson(v.f).dump(); break;
        case value::string: out += ojson(v.s).dump(-1, ' ', false, ojson::error_handler_t::replace); break;
        case value::array:
            if (v.a->empty()) { out += "[]"; break; }
            out.push_back('[');
            for (std::size_t k = 0; k < v.a->size(); ++k) {
                if (k) out += indent >= 0 ? "," : ", ";
                if (indent >= 0) newline(depth + 1);
                to_json((*v.a)[k], out, indent, depth + 1, line, col);
            }
            if (indent >= 0) newline(depth);
            out.push_back(']');
            break;
        case value::object: {
            if (v.o->empty()) { out += "{}"; break; }
            out.push_back('{');
            bool first = true;
            for (const auto& [k, e] : *v.o) {
                if (!first) out += indent >= 0 ? "," : ", ";
                first = false;
                if (indent >= 0) newline(depth + 1);
                out += ojson(k).dump(-1, ' ', false, ojson::error_handler_t::replace) + ": ";
                to_json(e, out, indent, depth + 1, line, col);
            }
            if (indent >= 0) newline(depth);
            out.push_back('}');
            break;
        }
        case value::callable: throw template_error("tojson: a function cannot be serialized", line, col);
    }
}

bool equal(const value& x, const value& y) {
    if (x.is_number() && y.is_number()) return x.number() == y.number();
    if (x.kind == value::boolean && y.kind == value::boolean) return x.b == y.b;
    if (x.kind != y.kind) return false;
    switch (x.kind) {
        case value::undefined: case value::none: return true;
        case value::string: return x.s == y.s;
        case value::array:
            if (x.a->size() != y.a->size()) return false;
            for (std::size_t k = 0; k < x.a->size(); ++k)
                if (!equal((*x.a)[k], (*y.a)[k])) return false;
            return true;
        case value::object:
            if (x.o->size() != y.o->size()) return false;
            for (const auto& [k, e] : *x.o) {
                const value* o = y.find(k);
                if (!o || !equal(e, *o)) return false;
            }
            return true;
        default: return x.fn == y.fn;
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------
struct token {
    enum kind_t { text, expr_open, stmt_open, close, name, number, str, op, end } kind = end;
    std::string s{};
    std::size_t line = 0, col = 0;
};

class lexer {
public:
    explicit lexer(std::string_view src) : src_(src) {}

    std::vector<token> run() {
        std::vector<token> out;
        std::size_t i = 0;
        bool strip_next = false;  // '-' on the previous closing tag
        bool trim_next = false;   // trim_blocks after a block/comment tag
        while (i < src_.size()) {
            std::size_t open = find_open(i);
            std::string text(src_.substr(i, (open == npos ? src_.size() : open) - i));
            const std::size_t text_at = i;
            if (strip_next) {
                std::size_t k = 0;
                while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
                text.erase(0, k);
            } else if (trim_next) {
                if (!text.empty() && text[0] == '\n') text.erase(0, 1);
                else if (text.size() >= 2 && text[0] == '\r' && text[1] == '\n') text.erase(0, 2);
            }
            strip_next = trim_next = false;
            if (open != npos) {
                const char kind = src_[open + 1];
                const bool minus = open + 2 < src_.size() && src_[open + 2] == '-';
                const bool plus = open + 2 < src_.size() && src_[open + 2] == '+';
                if (minus) {
                    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
                } else if (kind != '{' && !plus) {
                    // lstrip_blocks: drop spaces/tabs between the line start and the tag.
                    std::size_t k = text.size();
                    while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
                    if (k == 0 ? (text_at == 0 || src_[text_at - 1] == '\n') : text[k - 1] == '\n')
                        text.erase(k);
                }
            }
            if (!text.empty()) {
                auto [l, c] = position(text_at);
                out.push_back({token::text, std::move(text), l, c});
            }
            if (open == npos) break;
            const char kind = src_[open + 1];
            std::size_t p = open + 2;
            if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
            if (kind == '#') {
                const std::size_t close = src_.find("#}", p);
                if (close == npos) fail("unterminated comment", open);
                strip_next = close > 0 && src_[close - 1] == '-';
                trim_next = !strip_next;
                i = close + 2;
                continue;
            }
            if (kind == '%' && is_raw(p)) {
                i = lex_raw(p, out, strip_next, trim_next);
                continue;
            }
            {
                auto [l, c] = position(open);
                out.push_back({kind == '{' ? token::expr_open : token::stmt_open, {}, l, c});
            }
            const std::string_view closer = kind == '{' ? "}}" : "%}";
            i = lex_inside(p, closer, out);
            // i points at the closer (possibly preceded by '-')
            bool minus_close = false;
            if (src_[i] == '-') {
                minus_close = true;
                ++i;
            }
            auto [l, c] = position(i);
            out.push_back({token::close, {}, l, c});
            i += 2;
            strip_next = minus_close;
            trim_next = !minus_close && kind == '%';
        }
        auto [l, c] = position(src_.size());
        out.push_back({token::end, {}, l, c});
        return out;
    }

private:
    static constexpr std::size_t npos = std::string_view::npos;

    [[noreturn]] void fail(const std::string& m, std::size_t at) const {
        auto [l, c] = position(at);
        throw template_error(m, l, c);
    }

    // 1-based line and column (in code points) of byte offset `at`; incremental, since the lexer
    // asks for increasing offsets.
    std::pair<std::size_t, std::size_t> position(std::size_t at) const {
        at = std::min(at, src_.size());
        if (at < pos_at_) {
            pos_at_ = 0;
            pos_line_ = 1;
            pos_col_ = 1;
        }
        for (; pos_at_ < at; ++pos_at_) {
            const auto c = static_cast<unsigned char>(src_[pos_at_]);
            if (c == '\n') {
                ++pos_line_;
                pos_col_ = 1;
            } else if ((c & 0xC0) != 0x80) {
                ++pos_col_;
            }
        }
        return {pos_line_, pos_col_};
    }

    std::size_t find_open(std::size_t from) const {
        for (std::size_t k = src_.find('{', from); k != npos; k = src_.find('{', k + 1))
            if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
        return npos;
    }

    bool is_raw(std::size_t p) const {
        while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
        return src_.compare(p, 3, "raw") == 0 && (p + 3 >= src_.size() || !std::isalnum(static_cast<unsigned char>(src_[p + 3])));
    }

    std::size_t lex_raw(std::size_t p, std::vector<token>& out, bool& strip_next, bool& trim_next) {
        const std::size_t close = src_.find("%}", p);
        if (close == npos) fail("unterminated raw tag", p);
        std::size_t body = close + 2;
        std::size_t k = body;
        for (;;) {
            k = src_.find("{%", k);
            if (k == npos) fail("missing {% endraw %}", p);
            std::size_t q = k + 2;
            if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
            while (q < src_.size() && std::isspace(static_cast<unsigned char>(src_[q]))) ++q;
            if (src_.compare(q, 6, "endraw") == 0) break;
            k += 2;
        }
        std::string text(src_.substr(body, k - body));
        if (src_[close - 1] == '-') {
            std::size_t s = 0;
            while (s < text.size() && std::isspace(static_cast<unsigned char>(text[s]))) ++s;
            text.erase(0, s);
        }
        if (src_[k + 2] == '-')
            while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
        auto [l, c] = position(body);
        if (!text.empty()) out.push_back({token::text, std::move(text), l, c});
        const std::size_t end_close = src_.find("%}", k);
        if (end_close == npos) fail("unterminated endraw tag", k);
        strip_next = src_[end_close - 1] == '-';
        trim_next = !strip_next;
        return end_close + 2;
    }

    std::size_t lex_inside(std::size_t p, std::string_view closer, std::vector<token>& out) {
        for (;;) {
            while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
            if (p >= src_.size()) fail("unterminated tag (missing '" + std::string(closer) + "')", p);
            if (src_.compare(p, 2, closer) == 0) return p;
            if (src_[p] == '-' && src_.compare(p + 1, 2, closer) == 0) return p;
            auto [l, c] = position(p);
            const char ch = src_[p];
            if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
                std::size_t q = p;
                while (q < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
                out.push_back({token::name, std::string(src_.substr(p, q - p)), l, c});
                p = q;
            } else if (std::isdigit(static_cast<unsigned char>(ch))) {
                std::size_t q = p;
                while (q < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
                if (q + 1 < src_.size() && src_[q] == '.' && std::isdigit(static_cast<unsigned char>(src_[q + 1]))) {
                    ++q;
                    while (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) ++q;
                }
                if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
                    std::size_t r = q + 1;
                    if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
                    if (r < src_.size() && std::isdigit(static_cast<unsigned char>(src_[r]))) {
                        q = r;
                        while (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) ++q;
                    }
                }
                std::string num(src_.substr(p, q - p));
                num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
                out.push_back({token::number, std::move(num), l, c});
                p = q;
            } else if (ch == '\'' || ch == '"') {
                std::string s;
                std::size_t q = p + 1;
                for (;;) {
                    if (q >= src_.size()) fail("unterminated string literal", p);
                    const char d = src_[q];
                    if (d == ch) break;
                    if (d == '\\' && q + 1 < src_.size()) {
                        const char e = src_[++q];
                        switch (e) {
                            case 'n': s.push_back('\n'); break;
                            case 't': s.push_back('\t'); break;
                            case 'r': s.push_back('\r'); break;
                            case '\\': s.push_back('\\'); break;
                            case '\'': s.push_back('\''); break;
                            case '"': s.push_back('"'); break;
                            case '0': s.push_back('\0'); break;
                            case 'u': case 'x': {
                                const std::size_t n = e == 'u' ? 4 : 2;
                                if (q + n >= src_.size()) fail("bad escape in string literal", q);
                                const std::string hex(src_.substr(q + 1, n));
                                char* endp = nullptr;
                                const unsigned long cp = std::strtoul(hex.c_str(), &endp, 16);
                                if (endp != hex.c_str() + n) fail("bad escape in string literal", q);
                                unicode::append_utf8(s, static_cast<char32_t>(cp));
                                q += n;
                                break;
                            }
                            default: s.push_back('\\'); s.push_back(e); break;
                        }
                        ++q;
                        continue;
                    }
                    s.push_back(d);
                    ++q;
                }
                out.push_back({token::str, std::move(s), l, c});
                p = q + 1;
            } else {
                static const char* ops[] = {"**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", ":",
                                            ".", "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
                bool found = false;
                for (const char* o : ops) {
                    const std::size_t n = std::char_traits<char>::length(o);
                    if (src_.compare(p, n, o) == 0) {
                        out.push_back({token::op, o, l, c});
                        p += n;
                        found = true;
                        break;
                    }
                }
                if (!found) fail(std::string("unexpected character '") + ch + "'", p);
            }
        }
    }

    std::string_view src_;
    mutable std::size_t pos_at_ = 0, pos_line_ = 1, pos_col_ = 1;
};

// ---------------------------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------------------------
struct expr;
using expr_ptr = std::unique_ptr<expr>;
struct expr {
    enum kind_t { literal, name, list, dict, tuple, attr, item, slice, call, filter, test, unary, binary, and_, or_, not_,
                  ternary } kind = literal;
    value lit{};
    std::string s{};  // name / attribute / operator / filter or test name
    std::vector<expr_ptr> kids{};
    std::vector<std::pair<std::string, expr_ptr>> kwargs{};
    bool negated = false;
    std::size_t line = 0, col = 0;
};

struct node;
using body_t = std::vector<std::unique_ptr<node>>;
struct node {
    enum kind_t { text, output, if_, for_, set, set_block, macro, break_, continue_, block } kind = text;
    std::string s{};
    expr_ptr e{};
    std::vector<std::pair<expr_ptr, body_t>> branches{};  // if/elif
    body_t body{};
    body_t else_body{};
    std::vector<std::string> targets{};  // for loop variables / set target (name [, attr])
    expr_ptr filter{};                   // for ... if filter
    std::vector<std::pair<std::string, expr_ptr>> params{};  // macro parameters with defaults
    std::size_t line = 0, col = 0;
};

class parser {
public:
    explicit parser(std::vector<token> t) : t_(std::move(t)) {}

    body_t parse_template() {
        body_t b = parse_body({});
        if (peek().kind != token::end) fail("unexpected tag", peek());
        return b;
    }

private:
    [[noreturn]] void fail(const std::string& m, const token& at) const { throw template_error(m, at.line, at.col); }
    const token& peek(std::size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
    const token& next() { return t_[std::min(p_++, t_.size() - 1)]; }
    bool is_op(const char* o, std::size_t k = 0) const { return peek(k).kind == token::op && peek(k).s == o; }
    bool is_name(const char* n, std::size_t k = 0) const { return peek(k).kind == token::name && peek(k).s == n; }
    void expect_op(const char* o) {
        if (!is_op(o)) fail(std::string("expected '") + o + "'" + got(), peek());
        ++p_;
    }
    void expect_close() {
        if (peek().kind != token::close) fail("expected end of tag" + got(), peek());
        ++p_;
    }
    std::string got() const {
        const token& t = peek();
        switch (t.kind) {
            case token::close: return ", found end of tag";
            case token::end: return ", found end of template";
            case token::text: return ", found text";
            default: return ", found '" + t.s + "'";
        }
    }
    std::string expect_name() {
        if (peek().kind != token::name) fail("expected a name" + got(), peek());
        return next().s;
    }

    // Parses nodes until a {% tag %} whose keyword is in `stop` (not consumed).
    body_t parse_body(const std::vector<std::string>& stop) {
        body_t out;
        for (;;) {
            const token& t = peek();
            if (t.kind == token::end) {
                if (!stop.empty()) fail("missing {% " + stop.back() + " %}", t);
                return out;
            }
            if (t.kind == token::text) {
                auto n = std::make_unique<node>();
                n->kind = node::text;
                n->s = next().s;
                out.push_back(std::move(n));
                continue;
            }
            if (t.kind == token::expr_open) {
                ++p_;
                auto n = std::make_unique<node>();
                n->kind = node::output;
                n->line = t.line;
                n->col = t.col;
                n->e = parse_expr();
                expect_close();
                out.push_back(std::move(n));
                continue;
            }
            if (t.kind != token::stmt_open) fail("unexpected token", t);
            const token& kw = peek(1);
            if (kw.kind != token::name) fail("expected a statement keyword", kw);
            if (std::find(stop.begin(), stop.end(), kw.s) != stop.end()) return out;
            p_ += 2;
            out.push_back(parse_statement(kw));
        }
    }

    std::unique_ptr<node> parse_statement(const token& kw) {
        auto n = std::make_unique<node>();
        n->line = kw.line;
        n->col = kw.col;
        const std::string& k = kw.s;
        if (k == "if") {
            n->kind = node::if_;
            expr_ptr cond = parse_expr();
            expect_close();
            for (;;) {
                body_t b = parse_body({"elif", "else", "endif"});
                n->branches.emplace_back(std::move(cond), std::move(b));
                const std::string which = peek(1).s;
                p_ += 2;
                if (which == "elif") {
                    cond = parse_expr();
                    expect_close();
                    continue;
                }
                if (which == "else") {
                    expect_close();
                    n->else_body = parse_body({"endif"});
                    p_ += 2;
                }
                expect_close();
                break;
            }
        } else if (k == "for") {
            n->kind = node::for_;
            n->targets.push_back(expect_name());
            while (is_op(",")) {
                ++p_;
                n->targets.push_back(expect_name());
            }
            if (!is_name("in")) fail("expected 'in'" + got(), peek());
            ++p_;
            n->e = parse_ternary(false);
            if (is_name("if")) {
                ++p_;
                n->filter = parse_ternary(false);
            }
            if (is_name("recursive")) fail("recursive loops are not supported", peek());
            expect_close();
            n->body = parse_body({"else", "endfor"});
            if (peek(1).s == "else") {
                p_ += 2;
                expect_close();
                n->else_body = parse_body({"endfor"});
            }
            p_ += 2;
            expect_close();
        } else if (k == "set") {
            n->targets.push_back(expect_name());
            if (is_op(".")) {
                ++p_;
                n->targets.push_back(expect_name());
            }
            if (is_op("=")) {
                ++p_;
                n->kind = node::set;
                n->e = parse_expr();
                expect_close();
            } else {
                if (n->targets.size() != 1) fail("expected '='", peek());
                n->kind = node::set_block;
                expect_close();
                n->body = parse_body({"endset"});
                p_ += 2;
                expect_close();
            }
        } else if (k == "macro") {
            n->kind = node::macro;
            n->s = expect_name();
            expect_op("(");
            while (!is_op(")")) {
                std::string pname = expect_name();
                expr_ptr def;
                if (is_op("=")) {
                    ++p_;
                    def = parse_expr();
                }
                n->params.emplace_back(std::move(pname), std::move(def));
                if (!is_op(")")) expect_op(",");
            }
            ++p_;
            expect_close();
            n->body = parse_body({"endmacro"});
            p_ += 2;
            expect_close();
        } else if (k == "break" || k == "continue") {
            n->kind = k == "break" ? node::break_ : node::continue_;
            expect_close();
        } else if (k == "generation" || k == "filter_") {
            n->kind = node::block;
            expect_close();
            n->body = parse_body({"endgeneration"});
            p_ += 2;
            expect_close();
        } else {
            fail("unknown or unexpected statement '" + k + "'", kw);
        }
        return n;
    }

    expr_ptr make(expr::kind_t k, const token& at) {
        auto e = std::make_unique<expr>();
        e->kind = k;
        e->line = at.line;
        e->col = at.col;
        return e;
    }

    expr_ptr parse_expr() {
        // A bare tuple `a, b` is allowed at the top level of {{ }} and set.
        const token& at = peek();
        expr_ptr first = parse_ternary(true);
        if (!is_op(",")) return first;
        auto t = make(expr::tuple, at);
        t->kids.push_back(std::move(first));
        while (is_op(",")) {
            ++p_;
            if (peek().kind == token::close) break;
            t->kids.push_back(parse_ternary(true));
        }
        return t;
    }

    expr_ptr parse_ternary(bool allow_if) {
        expr_ptr a = parse_or();
        while (allow_if && is_name("if")) {
            const token& at = next();
            expr_ptr cond = parse_or();
            auto t = make(expr::ternary, at);
            t->kids.push_back(std::move(cond));
            t->kids.push_back(std::move(a));
            if (is_name("else")) {
                ++p_;
                t->kids.push_back(parse_ternary(true));
            }
            a = std::move(t);
        }
        return a;
    }

    expr_ptr parse_or() {
        expr_ptr a = parse_and();
        while (is_name("or")) {
            auto e = make(expr::or_, next());
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_and());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_and() {
        expr_ptr a = parse_not();
        while (is_name("and")) {
            auto e = make(expr::and_, next());
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_not());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_not() {
        if (is_name("not")) {
            auto e = make(expr::not_, next());
            e->kids.push_back(parse_not());
            return e;
        }
        return parse_compare();
    }

    expr_ptr parse_compare() {
        expr_ptr a = parse_math1();
        for (;;) {
            std::string op;
            const token& at = peek();
            if (peek().kind == token::op && (at.s == "==" || at.s == "!=" || at.s == "<" || at.s == ">" || at.s == "<=" || at.s == ">=")) {
                op = at.s;
                ++p_;
            } else if (is_name("in")) {
                op = "in";
                ++p_;
            } else if (is_name("not") && is_name("in", 1)) {
                op = "not in";
                p_ += 2;
            } else {
                return a;
            }
            auto e = make(expr::binary, at);
            e->s = op;
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_math1());
            a = std::move(e);
        }
    }

    expr_ptr parse_math1() {
        expr_ptr a = parse_concat();
        while (is_op("+") || is_op("-")) {
            auto e = make(expr::binary, peek());
            e->s = next().s;
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_concat());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_concat() {
        expr_ptr a = parse_math2();
        while (is_op("~")) {
            auto e = make(expr::binary, next());
            e->s.assign(1, '~');
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_math2());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_math2() {
        expr_ptr a = parse_pow();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            auto e = make(expr::binary, peek());
            e->s = next().s;
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_pow());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_pow() {
        expr_ptr a = parse_unary();
        while (is_op("**")) {
            auto e = make(expr::binary, next());
            e->s.assign(2, '*');
            e->kids.push_back(std::move(a));
            e->kids.push_back(parse_unary());
            a = std::move(e);
        }
        return a;
    }

    expr_ptr parse_unary() {
        if (is_op("-") || is_op("+")) {
            auto e = make(expr::unary, peek());
            e->s = next().s;
            e->kids.push_back(parse_unary());
            return e;
        }
        return parse_filters(parse_postfix(parse_primary()));
    }

    void parse_call_args(expr& e) {
        // after '('
        while (!is_op(")")) {
            if (peek().kind == token::name && is_op("=", 1)) {
                std::string k = next().s;
                ++p_;
                e.kwargs.emplace_back(std::move(k), parse_ternary(true));
            } else {
                e.kids.push_back(parse_ternary(true));
            }
            if (!is_op(")")) expect_op(",");
        }
        ++p_;
    }

    expr_ptr parse_postfix(expr_ptr a) {
        for (;;) {
            if (is_op(".")) {
                const token& at = next();
                auto e = make(expr::attr, at);
                if (peek().kind == token::number) e->s = next().s;
                else e->s = expect_name();
                e->kids.push_back(std::move(a));
                a = std::move(e);
            } else if (is_op("[")) {
                const token& at = next();
                expr_ptr parts[3];
                bool is_slice = false;
                int k = 0;
                while (!is_op("]")) {
                    if (is_op(":")) {
                        is_slice = true;
                        if (++k > 2) fail("too many ':' in slice", peek());
                        ++p_;
                        continue;
                    }
                    if (parts[k]) fail("expected ']'" + got(), peek());
                    parts[k] = parse_ternary(true);
                }
                ++p_;
                if (is_slice) {
                    auto e = make(expr::slice, at);
                    e->kids.push_back(std::move(a));
                    for (auto& q : parts) e->kids.push_back(std::move(q));
                    a = std::move(e);
                } else {
                    if (!parts[0]) fail("empty subscript", at);
                    auto e = make(expr::item, at);
                    e->kids.push_back(std::move(a));
                    e->kids.push_back(std::move(parts[0]));
                    a = std::move(e);
                }
            } else if (is_op("(")) {
                const token& at = next();
                auto e = make(expr::call, at);
                e->kids.push_back(std::move(a));
                parse_call_args(*e);
                a = std::move(e);
            } else {
                return a;
            }
        }
    }

    expr_ptr parse_filters(expr_ptr a) {
        for (;;) {
            if (is_op("|")) {
                const token& at = next();
                auto e = make(expr::filter, at);
                e->s = expect_name();
                e->kids.push_back(std::move(a));
                if (is_op("(")) {
                    ++p_;
                    parse_call_args(*e);
                }
                a = std::move(e);
            } else if (is_name("is")) {
                const token& at = next();
                auto e = make(expr::test, at);
                if (is_name("not")) {
                    e->negated = true;
                    ++p_;
                }
                e->s = expect_name();
                e->kids.push_back(std::move(a));
                if (is_op("(")) {
                    ++p_;
                    parse_call_args(*e);
                } else if (peek().kind == token::str || peek().kind == token::number ||
                           (peek().kind == token::name && !is_name("and") && !is_name("or") && !is_name("else") &&
                            !is_name("if") && !is_name("is") && !is_name("in") && !is_name("not"))) {
                    e->kids.push_back(parse_postfix(parse_primary()));
                }
                a = std::move(e);
            } else {
                return a;
            }
        }
    }

    expr_ptr parse_primary() {
        const token& t = peek();
        switch (t.kind) {
            case token::str: {
                auto e = make(expr::literal, next());
                std::string s = t.s;
                while (peek().kind == token::str) s += next().s;  // adjacent literals concatenate
                e->lit = value::make_string(std::move(s));
                return e;
            }
            case token::number: {
                auto e = make(expr::literal, next());
                if (t.s.find_first_of(".eE") != std::string::npos) e->lit = value::make_float(std::strtod(t.s.c_str(), nullptr));
                else {
                    errno = 0;
                    const long long v = std::strtoll(t.s.c_str(), nullptr, 10);
                    if (errno == ERANGE) fail("integer literal out of range", t);
                    e->lit = value::make_int(v);
                }
                return e;
            }
            case token::name: {
                auto e = make(expr::literal, next());
                if (t.s == "true" || t.s == "True") e->lit = value::make_bool(true);
                else if (t.s == "false" || t.s == "False") e->lit = value::make_bool(false);
                else if (t.s == "none" || t.s == "None") e->lit = value::make_none();
                else {
                    e->kind = expr::name;
                    e->s = t.s;
                }
                return e;
            }
            case token::op:
                if (t.s == "(") {
                    ++p_;
                    if (is_op(")")) {
                        ++p_;
                        return make(expr::tuple, t);
                    }
                    expr_ptr inner = parse_ternary(true);
                    if (is_op(",")) {
                        auto tup = make(expr::tuple, t);
                        tup->kids.push_back(std::move(inner));
                        while (is_op(",")) {
                            ++p_;
                            if (is_op(")")) break;
                            tup->kids.push_back(parse_ternary(true));
                        }
                        inner = std::move(tup);
                    }
                    expect_op(")");
                    return inner;
                }
                if (t.s == "[") {
                    auto e = make(expr::list, next());
                    while (!is_op("]")) {
                        e->kids.push_back(parse_ternary(true));
                        if (!is_op("]")) expect_op(",");
                    }
                    ++p_;
                    return e;
                }
                if (t.s == "{") {
                    auto e = make(expr::dict, next());
                    while (!is_op("}")) {
                        e->kids.push_back(parse_ternary(true));
                        expect_op(":");
                        e->kids.push_back(parse_ternary(true));
                        if (!is_op("}")) expect_op(",");
                    }
                    ++p_;
                    return e;
                }
                break;
            default: break;
        }
        fail("expected an expression" + got(), t);
    }

    std::vector<token> t_;
    std::size_t p_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------
enum class flow { normal, break_, continue_ };

constexpr std::size_t max_depth = 200;
constexpr std::size_t max_output = std::size_t{256} << 20;

class renderer {
public:
    explicit renderer(const ojson& context) {
        scopes_.emplace_back();
        auto& g = scopes_.front();
        install_globals(g);
        if (!context.is_object()) throw template_error("the render context must be a JSON object", 0, 0);
        for (auto it = context.begin(); it != context.end(); ++it) g[it.key()] = from_json(it.value());
    }

    void render(const body_t& body, std::string& out) {
        const flow f = exec(body, out);
        if (f != flow::normal) throw template_error("'break' or 'continue' outside a loop", 0, 0);
    }

private:
    using scope = std::unordered_map<std::string, value>;

    [[noreturn]] static void fail(const std::string& m, const expr& e) { throw template_error(m, e.line, e.col); }
    [[noreturn]] static void fail(const std::string& m, const node& n) { throw template_error(m, n.line, n.col); }

    value lookup(const std::string& name) const {
        for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
            const auto f = it->find(name);
            if (f != it->end()) return f->second;
        }
        return value{};
    }

    void install_globals(scope& g) {
        g["raise_exception"] = value::make_function([](call_args& a) -> value {
            const value* m = a.get(0, "message");
            throw template_error(m ? to_string(*m) : std::string("raise_exception() called"), a.line, a.col, true);
        });
        g["strftime_now"] = value::make_function([](call_args& a) -> value {
            const value* f = a.get(0, "format");
            if (!f || f->kind != value::string) a.fail("strftime_now() needs a format string");
            const std::time_t now = std::time(nullptr);
            std::tm tm{};
            localtime_r(&now, &tm);
            char buf[256];
            const std::size_t n = std::strftime(buf, sizeof buf, f->s.c_str(), &tm);
            return value::make_string(std::string(buf, n));
        });
        g["namespace"] = value::make_function([](call_args& a) -> value {
            value ns = value::make_object();
            ns.is_namespace = true;
            for (const value& p : a.pos) {
                if (p.kind != value::object) a.fail("namespace() takes keyword arguments or dicts");
                for (const auto& [k, v] : *p.o) ns.set(k, v);
            }
            for (auto& [k, v] : a.kw) ns.set(k, v);
            return ns;
        });
        g["dict"] = value::make_function([](call_args& a) -> value {
            value d = value::make_object();
            for (auto& [k, v] : a.kw) d.set(k, v);
            return d;
        });
        g["range"] = value::make_function([](call_args& a) -> value {
            std::int64_t start = 0, stop = 0, step = 1;
            for (const value& v : a.pos)
                if (v.kind != value::integer) a.fail("range() takes integers");
            if (a.pos.size() == 1) stop = a.pos[0].i;
            else if (a.pos.size() >= 2) {
                start = a.pos[0].i;
                stop = a.pos[1].i;
                if (a.pos.size() == 3) step = a.pos[2].i;
            } else {
                a.fail("range() takes 1 to 3 arguments");
            }
            if (step == 0) a.fail("range() step must not be zero");
            array_t out;
            for (std::int64_t v = start; step > 0 ? v < stop : v > stop; v += step) {
                if (out.size() >= 10'000'000) a.fail("range() too long");
                out.push_back(value::make_int(v));
            }
            return value::make_array(std::move(out));
        });
    }

    flow exec(const body_t& body, std::string& out) {
        for (const auto& n : body) {
            const flow f = exec(*n, out);
            if (f != flow::normal) return f;
            if (out.size() > max_output) fail("output larger than 256 MiB", *n);
        }
        return flow::normal;
    }

    void assign(const std::string& name, value v) { scopes_.back()[name] = std::move(v); }

    flow exec(const node& n, std::string& out) {
        switch (n.kind) {
            case node::text: out += n.s; return flow::normal;
            case node::output: out += to_string(eval(*n.e)); return flow::normal;
            case node::if_:
                for (const auto& [cond, body] : n.branches)
                    if (truthy(eval(*cond))) return exec(body, out);
                return exec(n.else_body, out);
            case node::for_: return exec_for(n, out);
            case node::set: {
                value v = eval(*n.e);
                if (n.targets.size() == 2) {
                    value target = lookup(n.targets[0]);
                    if (target.kind != value::object || !target.is_namespace)
                        fail("'" + n.targets[0] + "' is not a namespace; only namespace attributes can be set", n);
                    target.set(n.targets[1], std::move(v));
                } else {
                    assign(n.targets[0], std::move(v));
                }
                return flow::normal;
            }
            case node::set_block: {
                std::string captured;
                if (exec(n.body, captured) != flow::normal) fail("'break'/'continue' inside set block", n);
                assign(n.targets[0], value::make_string(std::move(captured)));
                return flow::normal;
            }
            case node::macro: {
                const node* def = &n;
                assign(n.s, value::make_function([this, def](call_args& a) -> value { return call_macro(*def, a); }));
                return flow::normal;
            }
            case node::break_: return flow::break_;
            case node::continue_: return flow::continue_;
            case node::block: return exec(n.body, out);
        }
        return flow::normal;
    }

    value call_macro(const node& def, call_args& a) {
        if (++depth_ > max_depth) fail("macro recursion too deep", def);
        if (a.pos.size() > def.params.size()) a.fail("macro '" + def.s + "' takes " + std::to_string(def.params.size()) + " arguments");
        scope s;
        for (std::size_t k = 0; k < def.params.size(); ++k) {
            const value* v = a.get(k, def.params[k].first);
            if (v) s[def.params[k].first] = *v;
            else if (def.params[k].second) s[def.params[k].first] = eval(*def.params[k].second);
            else s[def.params[k].first] = value{};
        }
        // Macros see the globals and their arguments (not the caller's locals).
        std::vector<scope> saved(scopes_.begin() + 1, scopes_.end());
        scopes_.resize(1);
        scopes_.push_back(std::move(s));
        std::string out;
        try {
            if (exec(def.body, out) != flow::normal) fail("'break'/'continue' outside a loop in macro", def);
        } catch (...) {
            scopes_.resize(1);
            scopes_.insert(scopes_.end(), saved.begin(), saved.end());
            --depth_;
            throw;
        }
        scopes_.resize(1);
        scopes_.insert(scopes_.end(), saved.begin(), saved.end());
        --depth_;
        return value::make_string(std::move(out));
    }

    array_t iterate(const value& v, const expr& at) {
        switch (v.kind) {
            case value::array: return *v.a;
            case value::object: {
                array_t keys;
                for (const auto& [k, e] : *v.o) keys.push_back(value::make_string(k));
                return keys;
            }
            case value::string: {
                array_t chars;
                for (std::size_t i = 0; i < v.s.size();) {
                    const std::size_t b = i;
                    (void)unicode::decode_utf8(v.s, i);
                    chars.push_back(value::make_string(v.s.substr(b, i - b)));
                }
                return chars;
            }
            case value::undefined: case value::none: return {};
            default: fail("cannot iterate over " + repr(v), at);
        }
    }

    void bind_targets(const node& n, scope& s, const value& item) {
        if (n.targets.size() == 1) {
            s[n.targets[0]] = item;
            return;
        }
        if (item.kind != value::array || item.a->size() != n.targets.size())
            fail("cannot unpack " + repr(item) + " into " + std::to_string(n.targets.size()) + " variables", n);
        for (std::size_t k = 0; k < n.targets.size(); ++k) s[n.targets[k]] = (*item.a)[k];
    }

    flow exec_for(const node& n, std::string& out) {
        array_t items = iterate(eval(*n.e), *n.e);
        if (n.filter) {
            array_t kept;
            for (const value& it : items) {
                scopes_.emplace_back();
                bind_targets(n, scopes_.back(), it);
                const bool keep = truthy(eval(*n.filter));
                scopes_.pop_back();
                if (keep) kept.push_back(it);
            }
            items = std::move(kept);
        }
        if (items.empty()) return exec(n.else_body, out);
        if (++depth_ > max_depth) fail("loops nested too deep", n);
        const auto len = static_cast<std::int64_t>(items.size());
        for (std::int64_t k = 0; k < len; ++k) {
            scope s;
            bind_targets(n, s, items[static_cast<std::size_t>(k)]);
            value loop = value::make_object();
            loop.set("index0", value::make_int(k));
            loop.set("index", value::make_int(k + 1));
            loop.set("revindex0", value::make_int(len - k - 1));
            loop.set("revindex", value::make_int(len - k));
            loop.set("first", value::make_bool(k == 0));
            loop.set("last", value::make_bool(k == len - 1));
            loop.set("length", value::make_int(len));
            loop.set("previtem", k > 0 ? items[static_cast<std::size_t>(k - 1)] : value{});
            loop.set("nextitem", k + 1 < len ? items[static_cast<std::size_t>(k + 1)] : value{});
            s["loop"] = std::move(loop);
            scopes_.push_back(std::move(s));
            flow f = flow::normal;
            try {
                f = exec(n.body, out);
            } catch (...) {
                scopes_.pop_back();
                --depth_;
                throw;
            }
            scopes_.pop_back();
            if (f == flow::break_) break;
        }
        --depth_;
        return flow::normal;
    }

    // --- expressions ---------------------------------------------------------------------
    call_args eval_args(const expr& e, std::size_t first) {
        call_args a;
        a.line = e.line;
        a.col = e.col;
        for (std::size_t k = first; k < e.kids.size(); ++k) a.pos.push_back(eval(*e.kids[k]));
        for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v));
        return a;
    }

    static std::int64_t norm_index(std::int64_t i, std::size_t n) { return i < 0 ? i + static_cast<std::int64_t>(n) : i; }

    value get_item(const value& obj, const value& key, const expr& at) {
        if (obj.kind == value::array || obj.kind == value::string) {
            if (key.kind != value::integer) {
                if (key.kind == value::string && obj.kind == value::string) return get_attr(obj, key.s, at);
                fail("index must be an integer, not " + repr(key), at);
            }
            if (obj.kind == value::array) {
                const std::int64_t i = norm_index(key.i, obj.a->size());
                if (i < 0 || i >= static_cast<std::int64_t>(obj.a->size())) return value{};
                return (*obj.a)[static_cast<std::size_t>(i)];
            }
            const std::u32string s = unicode::to_utf32(obj.s);
            const std::int64_t i = norm_index(key.i, s.size());
            if (i < 0 || i >= static_cast<std::int64_t>(s.size())) return value{};
            return value::make_string(unicode::to_utf8(s.substr(static_cast<std::size_t>(i), 1)));
        }
        if (obj.kind == value::object) {
            if (key.kind == value::string) {
                if (const value* v = obj.find(key.s)) return *v;
                return value{};
            }
            if (key.kind == value::integer)
                if (const value* v = obj.find(std::to_string(key.i))) return *v;
            return value{};
        }
        if (obj.kind == value::undefined) return value{};
        fail("cannot subscript " + repr(obj), at);
    }

    value get_attr(const value& obj, const std::string& name, const expr& at) {
        if (obj.kind == value::object) {
            if (const value* v = obj.find(name)) return *v;
            if (!obj.is_namespace) {
                if (value m = dict_method(obj, name); m.kind != value::undefined) return m;
            }
            return value{};
        }
        if (obj.kind == value::string) return string_method(obj, name, at);
        if (obj.kind == value::array) {
            if (name == "append") {
                auto arr = obj.a;
                return value::make_function([arr](call_args& a) -> value {
                    if (a.pos.size() != 1) a.fail("append() takes one argument");
                    arr->push_back(a.pos[0]);
                    return value::make_none();
                });
            }
            return value{};
        }
        return value{};
    }

    static value dict_method(const value& obj, const std::string& name) {
        auto o = obj.o;
        if (name == "items")
            return value::make_function([o](call_args&) -> value {
                array_t out;
                for (const auto& [k, v] : *o) out.push_back(value::make_array({value::make_string(k), v}));
                return value::make_array(std::move(out));
            });
        if (name == "keys")
            return value::make_function([o](call_args&) -> value {
                array_t out;
                for (const auto& [k, v] : *o) out.push_back(value::make_string(k));
                return value::make_array(std::move(out));
            });
        if (name == "values")
            return value::make_function([o](call_args&) -> value {
                array_t out;
                for (const auto& [k, v] : *o) out.push_back(v);
                return value::make_array(std::move(out));
            });
        if (name == "get")
            return value::make_function([o](call_args& a) -> value {
                const value* k = a.get(0, "key");
                if (!k || k->kind != value::string) a.fail("get() needs a string key");
                for (const auto& [kk, v] : *o)
                    if (kk == k->s) return v;
                const value* d = a.get(1, "default");
                return d ? *d : value::make_none();
            });
        return value{};
    }

    static bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

    static std::string strip(const std::string& s, const value* chars, bool left, bool right) {
        std::size_t b = 0, e = s.size();
        auto drop = [&](char c) {
            if (!chars || chars->kind == value::none || chars->kind == value::undefined) return is_py_space(c);
            return chars->s.find(c) != std::string::npos;
        };
        if (left)
            while (b < e && drop(s[b])) ++b;
        if (right)
            while (e > b && drop(s[e - 1])) --e;
        return s.substr(b, e - b);
    }

    static array_t split(const std::string& s, const value* sep, std::int64_t maxsplit) {
        array_t out;
        if (!sep || sep->kind == value::none || sep->kind == value::undefined) {
            std::size_t i = 0;
            while (i < s.size()) {
                while (i < s.size() && is_py_space(s[i])) ++i;
                if (i >= s.size()) break;
                if (maxsplit >= 0 && static_cast<std::int64_t>(out.size()) == maxsplit) {
                    std::string rest = s.substr(i);
                    while (!rest.empty() && is_py_space(rest.back())) rest.pop_back();
                    out.push_back(value::make_string(rest));
                    return out;
                }
                std::size_t j = i;
                while (j < s.size() && !is_py_space(s[j])) ++j;
                out.push_back(value::make_string(s.substr(i, j - i)));
                i = j;
            }
            return out;
        }
        std::size_t prev = 0, at = 0;
        while ((maxsplit < 0 || static_cast<std::int64_t>(out.size()) < maxsplit) &&
               (at = s.find(sep->s, prev)) != std::string::npos) {
            out.push_back(value::make_string(s.substr(prev, at - prev)));
            prev = at + sep->s.size();
        }
        out.push_back(value::make_string(s.substr(prev)));
        return out;
    }

    static std::string replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count) {
        if (from.empty()) return s;
        std::string out;
        std::size_t prev = 0, at = 0;
        std::int64_t n = 0;
        while ((count < 0 || n < count) && (at = s.find(from, prev)) != std::string::npos) {
            out.append(s, prev, at - prev);
            out += to;
            prev = at + from.size();
            ++n;
        }
        out.append(s, prev);
        return out;
    }

    static std::string upper(std::string s) {
        for (char& c : s)
            if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
        return s;
    }
    static std::string lower(std::string s) {
        for (char& c : s)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
        return s;
    }
    static std::string title(std::string s, bool only_first) {
        bool start = true;
        for (char& c : s) {
            const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            if (alpha) {
                c = start ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                          : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                start = false;
            } else if (!only_first) {
                start = true;
            }
        }
        return s;
    }

    value string_method(const value& obj, const std::string& name, const expr& at) {
        const std::string s = obj.s;
        auto str_arg = [](call_args& a, std::size_t i, const char* what) -> const value& {
            const value* v = a.get(i, what);
            if (!v || v->kind != value::string) a.fail(std::string("expected a string argument '") + what + "'");
            return *v;
        };
        if (name == "startswith" || name == "endswith") {
            const bool starts = name == "startswith";
            return value::make_function([s, starts, str_arg](call_args& a) -> value {
                const value* p = a.get(0, "prefix");
                if (!p) a.fail("startswith/endswith need an argument");
                std::vector<std::string> options;
                if (p->kind == value::array) {
                    for (const value& e : *p->a) options.push_back(e.s);
                } else {
                    options.push_back(str_arg(a, 0, "prefix").s);
                }
                for (const std::string& o : options) {
                    if (o.size() > s.size()) continue;
                    if (starts ? s.compare(0, o.size(), o) == 0 : s.compare(s.size() - o.size(), o.size(), o) == 0)
                        return value::make_bool(true);
                }
                return value::make_bool(false);
            });
        }
        if (name == "strip" || name == "lstrip" || name == "rstrip") {
            const bool l = name != "rstrip", r = name != "lstrip";
            return value::make_function([s, l, r](call_args& a) -> value { return value::make_string(strip(s, a.get(0, "chars"), l, r)); });
        }
        if (name == "split")
            return value::make_function([s](call_args& a) -> value {
                const value* m = a.get(1, "maxsplit");
                return value::make_array(split(s, a.get(0, "sep"), m && m->kind == value::integer ? m->i : -1));
            });
        if (name == "upper") return value::make_function([s](call_args&) { return value::make_string(upper(s)); });
        if (name == "lower") return value::make_function([s](call_args&) { return value::make_string(lower(s)); });
        if (name == "title") return value::make_function([s](call_args&) { return value::make_string(title(s, false)); });
        if (name == "capitalize")
            return value::make_function([s](call_args&) { return value::make_string(title(lower(s), true)); });
        if (name == "replace")
            return value::make_function([s, str_arg](call_args& a) -> value {
                const value* c = a.get(2, "count");
                return value::make_string(replace(s, str_arg(a, 0, "old").s, str_arg(a, 1, "new").s,
                                                  c && c->kind == value::integer ? c->i : -1));
            });
        if (name == "join")
            return value::make_function([s](call_args& a) -> value {
                const value* v = a.get(0, "iterable");
                if (!v || v->kind != value::array) a.fail("join() needs a list");
                std::string out;
                for (std::size_t k = 0; k < v->a->size(); ++k) out += (k ? s : "") + to_string((*v->a)[k]);
                return value::make_string(out);
            });
        if (name == "format")
            return value::make_function([s](call_args& a) -> value {
                std::string out;
                std::size_t next = 0;
                for (std::size_t k = 0; k < s.size(); ++k) {
                    if (s[k] == '{' && k + 1 < s.size() && s[k + 1] == '}') {
                        if (next >= a.pos.size()) a.fail("format(): not enough arguments");
                        out += to_string(a.pos[next++]);
                        ++k;
                    } else {
                        out.push_back(s[k]);
                    }
                }
                return value::make_string(out);
            });
        (void)at;
        return value{};
    }

    value eval(const expr& e) {
        switch (e.kind) {
            case expr::literal: return e.lit;
            case expr::name: return lookup(e.s);
            case expr::list: case expr::tuple: {
                array_t a;
                for (const auto& k : e.kids) a.push_back(eval(*k));
                return value::make_array(std::move(a));
            }
            case expr::dict: {
                value d = value::make_object();
                for (std::size_t k = 0; k + 1 < e.kids.size(); k += 2) {
                    const value key = eval(*e.kids[k]);
                    if (key.kind != value::string) fail("dict keys must be strings", *e.kids[k]);
                    d.set(key.s, eval(*e.kids[k + 1]));
                }
                return d;
            }
            case expr::attr: return get_attr(eval(*e.kids[0]), e.s, e);
            case expr::item: return get_item(eval(*e.kids[0]), eval(*e.kids[1]), e);
            case expr::slice: return eval_slice(e);
            case expr::call: {
                const value f = eval(*e.kids[0]);
                if (f.kind != value::callable) fail("'" + describe(*e.kids[0]) + "' is not callable", e);
                call_args a = eval_args(e, 1);
                if (++depth_ > max_depth) fail("calls nested too deep", e);
                value r;
                try {
                    r = (*f.fn)(a);
                } catch (...) {
                    --depth_;
                    throw;
                }
                --depth_;
                return r;
            }
            case expr::filter: {
                call_args a = eval_args(e, 1);
                return apply_filter(e.s, eval(*e.kids[0]), a, e);
            }
            case expr::test: {
                call_args a = eval_args(e, 1);
                return value::make_bool(apply_test(e.s, eval(*e.kids[0]), a, e) != e.negated);
            }
            case expr::unary: {
                const value v = eval(*e.kids[0]);
                if (!v.is_number()) fail("unary " + e.s + " needs a number", e);
                if (e.s == "+") return v;
                return v.kind == value::integer ? value::make_int(-v.i) : value::make_float(-v.f);
            }
            case expr::not_: return value::make_bool(!truthy(eval(*e.kids[0])));
            case expr::and_: {
                value l = eval(*e.kids[0]);
                return truthy(l) ? eval(*e.kids[1]) : l;
            }
            case expr::or_: {
                value l = eval(*e.kids[0]);
                return truthy(l) ? l : eval(*e.kids[1]);
            }
            case expr::ternary: {
                if (truthy(eval(*e.kids[0]))) return eval(*e.kids[1]);
                return e.kids.size() > 2 ? eval(*e.kids[2]) : value{};
            }
            case expr::binary: return binary(e);
        }
        return value{};
    }

    static std::string describe(const expr& e) {
        if (e.kind == expr::name || e.kind == expr::attr) return e.s;
        return "expression";
    }

    value eval_slice(const expr& e) {
        const value obj = eval(*e.kids[0]);
        std::int64_t parts[3] = {0, 0, 1};
        bool given[3] = {false, false, false};
        for (int k = 0; k < 3; ++k) {
            if (!e.kids[static_cast<std::size_t>(k) + 1]) continue;
            const value v = eval(*e.kids[static_cast<std::size_t>(k) + 1]);
            if (v.kind == value::none) continue;
            if (v.kind != value::integer) fail("slice indices must be integers", e);
            parts[k] = v.i;
            given[k] = true;
        }
        const std::int64_t step = parts[2];
        if (step == 0) fail("slice step cannot be zero", e);
        auto pick = [&](std::size_t n, auto&& emit) {
            const auto len = static_cast<std::int64_t>(n);
            auto clamp = [&](std::int64_t i, bool lower_bound) {
                if (i < 0) i += len;
                if (step > 0) return std::clamp<std::int64_t>(i, 0, len);
                return std::clamp<std::int64_t>(i, lower_bound ? -1 : -1, len - 1);
            };
            std::int64_t start = given[0] ? clamp(parts[0], false) : (step > 0 ? 0 : len - 1);
            std::int64_t stop = given[1] ? clamp(parts[1], true) : (step > 0 ? len : -1);
            for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step) emit(static_cast<std::size_t>(i));
        };
        if (obj.kind == value::array) {
            array_t out;
            pick(obj.a->size(), [&](std::size_t i) { out.push_back((*obj.a)[i]); });
            return value::make_array(std::move(out));
        }
        if (obj.kind == value::string) {
            const std::u32string s = unicode::to_utf32(obj.s);
            std::u32string out;
            pick(s.size(), [&](std::size_t i) { out.push_back(s[i]); });
            return value::make_string(unicode::to_utf8(out));
        }
        if (obj.kind == value::undefined) return value{};
        fail("cannot slice " + repr(obj), e);
    }

    bool contains(const value& hay, const value& needle, const expr& e) {
        switch (hay.kind) {
            case value::string:
                if (needle.kind != value::string) fail("'in <string>' needs a string on the left", e);
                return hay.s.find(needle.s) != std::string::npos;
            case value::array:
                for (const value& v : *hay.a)
                    if (equal(v, needle)) return true;
                return false;
            case value::object: return needle.kind == value::string && hay.find(needle.s) != nullptr;
            case value::undefined: case value::none: return false;
            default: fail("'in' needs a string, list or dict on the right, not " + repr(hay), e);
        }
    }

    int compare(const value& x, const value& y, const expr& e) {
        if (x.is_number() && y.is_number()) return x.number() < y.number() ? -1 : (x.number() > y.number() ? 1 : 0);
        if (x.kind == value::string && y.kind == value::string) return x.s.compare(y.s) < 0 ? -1 : (x.s == y.s ? 0 : 1);
        fail("cannot compare " + repr(x) + " and " + repr(y), e);
    }

    value binary(const expr& e) {
        const std::string& op = e.s;
        const value x = eval(*e.kids[0]);
        const value y = eval(*e.kids[1]);
        if (op == "==") return value::make_bool(equal(x, y));
        if (op == "!=") return value::make_bool(!equal(x, y));
        if (op == "<") return value::make_bool(compare(x, y, e) < 0);
        if (op == ">") return value::make_bool(compare(x, y, e) > 0);
        if (op == "<=") return value::make_bool(compare(x, y, e) <= 0);
        if (op == ">=") return value::make_bool(compare(x, y, e) >= 0);
        if (op == "in") return value::make_bool(contains(y, x, e));
        if (op == "not in") return value::make_bool(!contains(y, x, e));
        if (op == "~") return value::make_string(to_string(x) + to_string(y));
        if (op == "+") {
            if (x.kind == value::string && y.kind == value::string) return value::make_string(x.s + y.s);
            if (x.kind == value::array && y.kind == value::array) {
                array_t a = *x.a;
                a.insert(a.end(), y.a->begin(), y.a->end());
                return value::make_array(std::move(a));
            }
        }
        if (op == "*" && ((x.kind == value::string && y.kind == value::integer) || (x.kind == value::integer && y.kind == value::string))) {
            const std::string& s = x.kind == value::string ? x.s : y.s;
            const std::int64_t n = x.kind == value::integer ? x.i : y.i;
            if (n > 0 && static_cast<double>(s.size()) * static_cast<double>(n) > static_cast<double>(max_output))
                fail("string repetition too large", e);
            std::string out;
            for (std::int64_t k = 0; k < n; ++k) out += s;
            return value::make_string(out);
        }
        if (!x.is_number() || !y.is_number())
            fail("unsupported operand types for " + op + ": " + repr(x) + " and " + repr(y), e);
        const bool ints = x.kind == value::integer && y.kind == value::integer;
        if (op == "+") return ints ? value::make_int(x.i + y.i) : value::make_float(x.number() + y.number());
        if (op == "-") return ints ? value::make_int(x.i - y.i) : value::make_float(x.number() - y.number());
        if (op == "*") return ints ? value::make_int(x.i * y.i) : value::make_float(x.number() * y.number());
        if (op == "/") {
            if (y.number() == 0) fail("division by zero", e);
            return value::make_float(x.number() / y.number());
        }
        if (op == "//" || op == "%") {
            if (y.number() == 0) fail("division by zero", e);
            if (ints) {
                std::int64_t q = x.i / y.i, r = x.i % y.i;
                if (r != 0 && ((r < 0) != (y.i < 0))) {
                    --q;
                    r += y.i;
                }
                return value::make_int(op == "//" ? q : r);
            }
            const double q = std::floor(x.number() / y.number());
            return value::make_float(op == "//" ? q : x.number() - q * y.number());
        }
        if (op == "**") {
            if (ints && y.i >= 0) {
                std::int64_t r = 1;
                for (std::int64_t k = 0; k < y.i && k < 64; ++k) r *= x.i;
                return value::make_int(r);
            }
            return value::make_float(std::pow(x.number(), y.number()));
        }
        fail("unknown operator " + op, e);
    }

    value attribute_of(const value& v, const std::string& path, const expr& e) {
        value cur = v;
        std::size_t start = 0;
        while (start <= path.size()) {
            const std::size_t dot = path.find('.', start);
            const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
            cur = get_item(cur, value::make_string(part), e);
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        return cur;
    }

    value apply_filter(const std::string& name, const value& v, call_args& a, const expr& e) {
        auto need = [&](value::kind_t k, const char* what) {
            if (v.kind != k) fail("filter '" + name + "' needs " + what + ", got " + repr(v), e);
        };
        if (name == "trim") {
            need(value::string, "a string");
            return value::make_string(strip(v.s, a.get(0, "chars"), true, true));
        }
        if (name == "length" || name == "count") {
            switch (v.kind) {
                case value::string: return value::make_int(static_cast<std::int64_t>(unicode::to_utf32(v.s).size()));
                case value::array: return value::make_int(static_cast<std::int64_t>(v.a->size()));
                case value::object: return value::make_int(static_cast<std::int64_t>(v.o->size()));
                case value::undefined: return value::make_int(0);
                default: fail("filter 'length' needs a string, list or dict, got " + repr(v), e);
            }
        }
        if (name == "tojson") {
            const value* ind = a.get(0, "indent");
            int indent = -1;
            if (ind && ind->kind == value::integer) indent = static_cast<int>(std::clamp<std::int64_t>(ind->i, 0, 32));
            std::string out;
            to_json(v, out, indent, 0, e.line, e.col);
            return value::make_string(out);
        }
        if (name == "safe") return v;
        if (name == "string") return value::make_string(to_string(v));
        if (name == "upper") return value::make_string(upper(to_string(v)));
        if (name == "lower") return value::make_string(lower(to_string(v)));
        if (name == "capitalize") return value::make_string(title(lower(to_string(v)), true));
        if (name == "title") return value::make_string(title(to_string(v), false));
        if (name == "replace") {
            const value* from = a.get(0, "old");
            const value* to = a.get(1, "new");
            const value* c = a.get(2, "count");
            if (!from || !to) fail("filter 'replace' needs two arguments", e);
            return value::make_string(replace(to_string(v), to_string(*from), to_string(*to), c && c->kind == value::integer ? c->i : -1));
        }
        if (name == "join") {
            const value* sep = a.get(0, "d");
            const value* attr = a.get(1, "attribute");
            std::string out;
            const array_t items = iterate(v, e);
            for (std::size_t k = 0; k < items.size(); ++k) {
                if (k && sep) out += to_string(*sep);
                out += to_string(attr ? attribute_of(items[k], to_string(*attr), e) : items[k]);
            }
            return value::make_string(out);
        }
        if (name == "first" || name == "last") {
            const array_t items = iterate(v, e);
            if (items.empty()) return value{};
            return name == "first" ? items.front() : items.back();
        }
        if (name == "default" || name == "d") {
            const value* def = a.get(0, "default_value");
            const value* boolean = a.get(1, "boolean");
            const bool use = v.kind == value::undefined || (boolean && truthy(*boolean) && !truthy(v));
            return use ? (def ? *def : value::make_string("")) : v;
        }
        if (name == "list") return value::make_array(iterate(v, e));
        if (name == "items") {
            if (v.kind == value::undefined) return value::make_array();
            need(value::object, "a dict");
            array_t out;
            for (const auto& [k, x] : *v.o) out.push_back(value::make_array({value::make_string(k), x}));
            return value::make_array(std::move(out));
        }
        if (name == "keys" || name == "values") {
            need(value::object, "a dict");
            array_t out;
            for (const auto& [k, x] : *v.o) out.push_back(name == "keys" ? value::make_string(k) : x);
            return value::make_array(std::move(out));
        }
        if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
            const bool by_attr = name == "selectattr" || name == "rejectattr";
            const bool keep_match = name == "selectattr" || name == "select";
            array_t out;
            std::size_t argi = 0;
            std::string attr;
            if (by_attr) {
                if (a.pos.empty() || a.pos[0].kind != value::string) fail("filter '" + name + "' needs an attribute name", e);
                attr = a.pos[0].s;
                argi = 1;
            }
            std::string test_name;
            if (a.pos.size() > argi) test_name = to_string(a.pos[argi]);
            call_args targs;
            targs.line = e.line;
            targs.col = e.col;
            for (std::size_t k = argi + 1; k < a.pos.size(); ++k) targs.pos.push_back(a.pos[k]);
            for (const value& item : iterate(v, e)) {
                const value x = by_attr ? attribute_of(item, attr, e) : item;
                const bool match = test_name.empty() ? truthy(x) : apply_test(test_name, x, targs, e);
                if (match == keep_match) out.push_back(item);
            }
            return value::make_array(std::move(out));
        }
        if (name == "map") {
            array_t out;
            const value* attr = nullptr;
            for (const auto& [k, x] : a.kw)
                if (k == "attribute") attr = &x;
            const value* def = nullptr;
            for (const auto& [k, x] : a.kw)
                if (k == "default") def = &x;
            for (const value& item : iterate(v, e)) {
                if (attr) {
                    value x = attribute_of(item, to_string(*attr), e);
                    if (x.kind == value::undefined && def) x = *def;
                    out.push_back(std::move(x));
                } else {
                    if (a.pos.empty() || a.pos[0].kind != value::string) fail("filter 'map' needs a filter name or attribute=", e);
                    call_args rest;
                    rest.line = e.line;
                    rest.col = e.col;
                    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
                    out.push_back(apply_filter(a.pos[0].s, item, rest, e));
                }
            }
            return value::make_array(std::move(out));
        }
        if (name == "unique") {
            array_t out;
            for (const value& item : iterate(v, e))
                if (std::none_of(out.begin(), out.end(), [&](const value& o) { return equal(o, item); })) out.push_back(item);
            return value::make_array(std::move(out));
        }
        if (name == "reverse") {
            if (v.kind == value::string) {
                std::u32string s = unicode::to_utf32(v.s);
                std::reverse(s.begin(), s.end());
                return value::make_string(unicode::to_utf8(s));
            }
            array_t items = iterate(v, e);
            std::reverse(items.begin(), items.end());
            return value::make_array(std::move(items));
        }
        if (name == "sort") {
            array_t items = iterate(v, e);
            const value* attr = a.get(2, "attribute");
            const value* rev = a.get(0, "reverse");
            std::stable_sort(items.begin(), items.end(), [&](const value& x, const value& y) {
                const value xx = attr ? attribute_of(x, to_string(*attr), e) : x;
                const value yy = attr ? attribute_of(y, to_string(*attr), e) : y;
                return compare(xx, yy, e) < 0;
            });
            if (rev && truthy(*rev)) std::reverse(items.begin(), items.end());
            return value::make_array(std::move(items));
        }
        if (name == "int") {
            if (v.kind == value::integer) return v;
            if (v.kind == value::floating) return value::make_int(static_cast<std::int64_t>(v.f));
            if (v.kind == value::string) return value::make_int(std::strtoll(v.s.c_str(), nullptr, 10));
            if (v.kind == value::boolean) return value::make_int(v.b ? 1 : 0);
            return value::make_int(0);
        }
        if (name == "float") {
            if (v.is_number()) return value::make_float(v.number());
            if (v.kind == value::string) return value::make_float(std::strtod(v.s.c_str(), nullptr));
            return value::make_float(0);
        }
        if (name == "abs") {
            if (v.kind == value::integer) return value::make_int(v.i < 0 ? -v.i : v.i);
            if (v.kind == value::floating) return value::make_float(std::fabs(v.f));
            fail("filter 'abs' needs a number", e);
        }
        if (name == "round") {
            if (!v.is_number()) fail("filter 'round' needs a number", e);
            const value* prec = a.get(0, "precision");
            const double p = std::pow(10.0, prec && prec->kind == value::integer ? static_cast<double>(prec->i) : 0.0);
            return value::make_float(std::round(v.number() * p) / p);
        }
        if (name == "indent") {
            const value* w = a.get(0, "width");
            const value* first = a.get(1, "first");
            const std::string pad(static_cast<std::size_t>(w && w->kind == value::integer ? std::clamp<std::int64_t>(w->i, 0, 100) : 4), ' ');
            const std::string s = to_string(v);
            std::string out = first && truthy(*first) ? pad : "";
            for (std::size_t k = 0; k < s.size(); ++k) {
                out.push_back(s[k]);
                if (s[k] == '\n' && k + 1 < s.size() && s[k + 1] != '\n') out += pad;
            }
            return value::make_string(out);
        }
        if (name == "wordcount") return value::make_int(static_cast<std::int64_t>(split(to_string(v), nullptr, -1).size()));
        fail("unknown filter '" + name + "'", e);
    }

    bool apply_test(const std::string& name, const value& v, call_args& a, const expr& e) {
        auto arg = [&]() -> const value& {
            if (a.pos.empty()) fail("test '" + name + "' needs an argument", e);
            return a.pos[0];
        };
        if (name == "defined") return v.kind != value::undefined;
        if (name == "undefined") return v.kind == value::undefined;
        if (name == "none") return v.kind == value::none;
        if (name == "string") return v.kind == value::string;
        if (name == "number") return v.is_number();
        if (name == "integer") return v.kind == value::integer;
        if (name == "float") return v.kind == value::floating;
        if (name == "boolean") return v.kind == value::boolean;
        if (name == "true") return v.kind == value::boolean && v.b;
        if (name == "false") return v.kind == value::boolean && !v.b;
        if (name == "mapping") return v.kind == value::object;
        if (name == "iterable") return v.kind == value::array || v.kind == value::object || v.kind == value::string;
        if (name == "sequence") return v.kind == value::array || v.kind == value::string || v.kind == value::object;
        if (name == "callable") return v.kind == value::callable;
        if (name == "odd" || name == "even") {
            if (v.kind != value::integer) fail("test '" + name + "' needs an integer", e);
            return (v.i % 2 != 0) == (name == "odd");
        }
        if (name == "divisibleby") {
            const value& d = arg();
            if (v.kind != value::integer || d.kind != value::integer || d.i == 0) fail("test 'divisibleby' needs integers", e);
            return v.i % d.i == 0;
        }
        if (name == "eq" || name == "equalto" || name == "==") return equal(v, arg());
        if (name == "ne" || name == "!=") return !equal(v, arg());
        if (name == "in") return contains(arg(), v, e);
        if (name == "lower") return v.kind == value::string && lower(v.s) == v.s;
        if (name == "upper") return v.kind == value::string && upper(v.s) == v.s;
        fail("unknown test '" + name + "'", e);
    }

    std::vector<scope> scopes_{};
    std::size_t depth_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
struct jinja_template::impl {
    body_t body{};
};

jinja_template::jinja_template(std::string_view source) : impl_(std::make_unique<impl>()) {
    if (!unicode::is_valid_utf8(source)) throw template_error("the template is not valid UTF-8", 0, 0);
    parser p(lexer(source).run());
    impl_->body = p.parse_template();
}
jinja_template::jinja_template(jinja_template&&) noexcept = default;
jinja_template& jinja_template::operator=(jinja_template&&) noexcept = default;
jinja_template::~jinja_template() = default;

std::string jinja_template::render(const nlohmann::ordered_json& context) const {
    renderer r(context);
    std::string out;
    r.render(impl_->body, out);
    return out;
}

chat_template::chat_template(std::string_view source, nlohmann::ordered_json special_tokens)
    : template_(source), special_tokens_(std::move(special_tokens)) {
    if (!special_tokens_.is_object()) special_tokens_ = nlohmann::ordered_json::object();
}

chat_template chat_template::from_model_dir(const std::filesystem::path& dir) {
    auto read = [](const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        if (!in) throw std::runtime_error(p.string() + ": cannot open");
        std::ostringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    ojson config = ojson::object();
    const auto config_path = dir / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
        try {
            config = ojson::parse(read(config_path));
        } catch (const ojson::exception& e) {
            throw std::runtime_error(config_path.string() + ": not valid JSON: " + e.what());
        }
        if (!config.is_object()) throw std::runtime_error(config_path.string() + ": not a JSON object");
    }
    std::string source;
    const auto jinja_path = dir / "chat_template.jinja";
    if (std::filesystem::exists(jinja_path)) {
        source = read(jinja_path);
    } else if (config.contains("chat_template")) {
        const ojson& t = config["chat_template"];
        if (t.is_string()) {
            source = t.get<std::string>();
        } else if (t.is_array()) {
            for (const auto& item : t)
                if (item.is_object() && item.value("name", "") == "default" && item.contains("template") && item["template"].is_string())
                    source = item["template"].get<std::string>();
            if (source.empty()) throw std::runtime_error(config_path.string() + ": chat_template has no \"default\" entry");
        } else {
            throw std::runtime_error(config_path.string() + ": chat_template is neither a string nor a list");
        }
    } else {
        throw std::runtime_error(dir.string() + ": no chat template (neither chat_template.jinja nor chat_template in "
                                                "tokenizer_config.json)");
    }
    ojson specials = ojson::object();
    for (const char* k : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
        if (!config.contains(k)) continue;
        const ojson& v = config[k];
        if (v.is_string() && !v.get<std::string>().empty()) specials[k] = v;
        else if (v.is_object() && v.contains("content") && v["content"].is_string()) specials[k] = v["content"];
    }
    return chat_template(source, std::move(specials));
}

std::string chat_template::apply(const nlohmann::ordered_json& messages, const chat_options& options) const {
    ojson ctx = ojson::object();
    ctx["messages"] = messages;
    ctx["add_generation_prompt"] = options.add_generation_prompt;
    if (!options.tools.is_null()) ctx["tools"] = options.tools;
    if (options.enable_thinking) ctx["enable_thinking"] = *options.enable_thinking;
    for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) ctx[it.key()] = it.value();
    if (options.extra.is_object())
        for (auto it = options.extra.begin(); it != options.extra.end(); ++it) ctx[it.key()] = it.value();
    return template_.render(ctx);
}

}  // namespace hlwq::rt
