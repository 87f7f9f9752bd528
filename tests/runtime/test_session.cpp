// SPDX-License-Identifier: MIT
// chat_session (examples/runtime/session.hpp) on a fake model with the gemma4-gcide-tiny
// tokenizer and chat template: KV-cache reuse between turns, truncation when the re-rendered
// prompt diverges, stop tokens, limits, raw mode, streaming that never splits a UTF-8 character.
#include "fake_model.hpp"
#include "session.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

using namespace hlwq::rt;
using hlwq::test::fake_lm;

namespace {

const std::filesystem::path test_dir = HLWQ_RUNTIME_TEST_DIR;

const tokenizer& tiny_tokenizer() {
    static const tokenizer tok = tokenizer::from_file(test_dir / "gemma4_tiny" / "tokenizer.json");
    return tok;
}

chat_template tiny_template() {
    std::ifstream in(test_dir / "templates" / "gemma4_tiny.jinja", std::ios::binary);
    const std::string src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(!src.empty());
    return chat_template(src, {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}});
}

std::int32_t id_of(const char* token) {
    const auto id = tiny_tokenizer().token_to_id(token);
    REQUIRE(id.has_value());
    return *id;
}

std::vector<std::int32_t> encode(std::string_view text) { return tiny_tokenizer().encode(text, false); }

// Greedy, so that the fake model's favoured token is always drawn.
session_options greedy_options() {
    session_options o;
    o.sampling.temperature = 0.0f;
    return o;
}

// A fake model that answers every turn with `reply` (token ids) and then `end`: it counts the
// tokens after the last "<start_of_turn>model\n" header of the context.
void script_reply(fake_lm& m, std::vector<std::int32_t> reply, std::int32_t end) {
    // As it ends the rendered prompt (after an added token, with no "▁" prepended).
    const std::vector<std::int32_t> header = encode("<start_of_turn>model\n");
    m.next = [reply = std::move(reply), header, end](std::span<const std::int32_t> ctx) -> std::int32_t {
        const auto it = std::find_end(ctx.begin(), ctx.end(), header.begin(), header.end());
        if (it == ctx.end()) return 100;
        const auto k = static_cast<std::size_t>(ctx.end() - (it + static_cast<std::ptrdiff_t>(header.size())));
        return k < reply.size() ? reply[k] : end;
    };
}

bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n;
    }
    return true;
}

// The tokens of `answer` as the template renders it after the user message `user` (the tokens
// between the generation prompt and <end_of_turn>).
std::vector<std::int32_t> answer_tokens(const std::string& user, const std::string& answer) {
    using json = nlohmann::ordered_json;
    const auto tmpl = tiny_template();
    const json u = {{"role", "user"}, {"content", user}};
    const auto prompt = encode(tmpl.apply(json::array({u}), {}));
    const auto full = encode(tmpl.apply(json::array({u, {{"role", "assistant"}, {"content", answer}}}),
                                        {.add_generation_prompt = false}));
    REQUIRE(full.size() > prompt.size());
    REQUIRE(std::equal(prompt.begin(), prompt.end(), full.begin()));
    const auto end = std::find(full.begin() + static_cast<std::ptrdiff_t>(prompt.size()), full.end(), id_of("<end_of_turn>"));
    return {full.begin() + static_cast<std::ptrdiff_t>(prompt.size()), end};
}

}  // namespace

TEST_CASE("session: the second turn feeds only the new tokens") {
    fake_lm m;
    const std::int32_t eot = id_of("<end_of_turn>");
    script_reply(m, answer_tokens("What is a cat?", "A small animal."), eot);
    chat_session s(m, tiny_tokenizer(), tiny_template(), {1, eot}, greedy_options());

    std::string out;
    const auto st1 = s.send("What is a cat?", [&](std::string_view t) { out += t; });
    CHECK(out == "A small animal.");
    CHECK(st1.stop == stop_reason::end_of_turn);
    CHECK(st1.reused_tokens == 0);
    const auto prompt1 = encode(tiny_template().apply(
        nlohmann::ordered_json::array({{{"role", "user"}, {"content", "What is a cat?"}}}), {}));
    CHECK(prompt1.front() == id_of("<bos>"));
    CHECK(st1.prompt_tokens == prompt1.size());
    REQUIRE(!m.fed.empty());
    CHECK(m.fed.front() == prompt1);  // one prefill call with the whole prompt
    CHECK(st1.generated_tokens == answer_tokens("What is a cat?", "A small animal.").size());
    // Every answer token but the stop token went through the cache, one at a time.
    CHECK(m.fed.size() == 1 + st1.generated_tokens);
    CHECK(std::vector<std::int32_t>(s.cached_tokens().begin(), s.cached_tokens().end()) == m.tokens);
    const auto msgs = s.messages();
    REQUIRE(msgs.size() == 2);
    CHECK(msgs[1]["role"] == "assistant");
    CHECK(msgs[1]["content"] == "A small animal.");

    const std::size_t cached = m.tokens.size();
    const std::size_t calls = m.fed.size();
    out.clear();
    const auto st2 = s.send("And a dog?", [&](std::string_view t) { out += t; });
    CHECK(out == "A small animal.");
    CHECK(m.truncations.empty());
    CHECK(m.resets == 0);
    CHECK(st2.reused_tokens == cached);
    // What the second prefill fed is exactly the part of the new prompt after the cache.
    const auto& second = m.fed[calls];
    CHECK(second.size() == st2.prompt_tokens - cached);
    CHECK(second.front() == eot);  // the previous answer's end, re-rendered by the template
    std::vector<std::int32_t> joined(s.cached_tokens().begin(), s.cached_tokens().begin() + static_cast<std::ptrdiff_t>(st2.prompt_tokens));
    CHECK(std::equal(second.begin(), second.end(), joined.begin() + static_cast<std::ptrdiff_t>(cached)));
    CHECK(s.totals().prefill_tokens == st1.prefill_tokens + st2.prefill_tokens);
    CHECK(s.totals().generated_tokens == st1.generated_tokens + st2.generated_tokens);
}

TEST_CASE("session: a prompt that re-renders differently truncates the cache to the common prefix") {
    fake_lm m;
    const std::int32_t eot = id_of("<end_of_turn>");
    // Trailing spaces: the template trims the content, so the next render diverges there.
    const auto yes = answer_tokens("Hi", "Yes.");
    auto reply = yes;
    reply.insert(reply.end(), 3, id_of("\xE2\x96\x81"));  // "▁" x 3: three spaces
    script_reply(m, reply, eot);
    chat_session s(m, tiny_tokenizer(), tiny_template(), {eot}, greedy_options());
    s.send("Hi");
    const std::vector<std::int32_t> before = m.tokens;
    const std::size_t calls = m.fed.size();
    const auto st = s.send("Again");
    // The common prefix ends after "Yes." (the spaces are dropped by | trim).
    const std::size_t prompt1 = before.size() - reply.size();
    const std::size_t keep = prompt1 + yes.size();
    REQUIRE(m.truncations.size() == 1);
    CHECK(m.truncations[0] == keep);
    CHECK(st.reused_tokens == keep);
    CHECK(m.fed[calls].size() == st.prompt_tokens - keep);
    CHECK(m.fed[calls].front() == eot);
    CHECK(s.messages()[1]["content"] == "Yes.   ");

    SUBCASE("a model that cannot truncate starts over") {
        m.refuse_truncate = true;
        const std::size_t calls3 = m.fed.size();
        const std::size_t resets = m.resets;
        const auto st3 = s.send("Third");
        CHECK(m.resets == resets + 1);
        CHECK(st3.reused_tokens == 0);
        CHECK(m.fed[calls3].size() == st3.prompt_tokens);
        CHECK(m.fed[calls3].front() == id_of("<bos>"));
    }
}

TEST_CASE("session: stop tokens, max_new_tokens and a full context") {
    const std::int32_t eot = id_of("<end_of_turn>");
    SUBCASE("EOS stops, and is neither printed nor fed") {
        fake_lm m;
        script_reply(m, answer_tokens("Count", "One two"), 1);
        chat_session s(m, tiny_tokenizer(), tiny_template(), {1, eot}, greedy_options());
        std::string out;
        const auto st = s.send("Count", [&](std::string_view t) { out += t; });
        CHECK(out == "One two");
        CHECK(st.stop == stop_reason::end_of_turn);
        CHECK(std::find(m.tokens.begin(), m.tokens.end(), 1) == m.tokens.end());
    }
    SUBCASE("a token that is not a stop token is generated as text") {
        fake_lm m;
        script_reply(m, answer_tokens("Count", "One"), eot);
        chat_session s(m, tiny_tokenizer(), tiny_template(), {1}, [] {
            auto o = greedy_options();
            o.max_new_tokens = 4;
            return o;
        }());
        std::string out;
        const auto st = s.send("Count", [&](std::string_view t) { out += t; });
        CHECK(st.stop == stop_reason::max_tokens);
        CHECK(st.generated_tokens == 4);
        CHECK(out.find("<end_of_turn>") != std::string::npos);
    }
    SUBCASE("max_new_tokens") {
        fake_lm m;  // never a stop token
        auto o = greedy_options();
        o.max_new_tokens = 7;
        chat_session s(m, tiny_tokenizer(), tiny_template(), {1, eot}, o);
        const auto st = s.send("Go");
        CHECK(st.stop == stop_reason::max_tokens);
        CHECK(st.generated_tokens == 7);
        CHECK(st.decode_tokens == 6);  // the last one is not fed
        CHECK(m.tokens.size() == st.prompt_tokens + 6);
    }
    SUBCASE("the context fills up") {
        fake_lm m;
        const std::size_t prompt = encode(tiny_template().apply(
                                              nlohmann::ordered_json::array({{{"role", "user"}, {"content", "Go"}}}), {}))
                                       .size();
        m.context = prompt + 5;
        auto o = greedy_options();
        o.max_new_tokens = 0;  // unlimited
        chat_session s(m, tiny_tokenizer(), tiny_template(), {1, eot}, o);
        const auto st = s.send("Go");
        CHECK(st.stop == stop_reason::context_full);
        CHECK(m.tokens.size() == m.context);
        CHECK(st.generated_tokens == 6);
        // The next turn does not fit: an error, and the conversation is unchanged.
        CHECK_THROWS_WITH_AS(s.send("More"), doctest::Contains("context holds"), std::runtime_error);
        CHECK(s.messages().size() == 2);
        s.reset();
        CHECK(s.messages().empty());
        CHECK(m.tokens.empty());
        CHECK(s.send("Go").stop == stop_reason::context_full);
    }
}

TEST_CASE("session: streaming never splits a UTF-8 character") {
    fake_lm m;
    const std::int32_t eot = id_of("<end_of_turn>");
    const std::string text = "Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80 ok";  // Café 日本語 😀 ok
    const auto reply = answer_tokens("Say it", text);
    REQUIRE(reply.size() > 12);  // byte-fallback tokens: several per character
    script_reply(m, reply, eot);
    chat_session s(m, tiny_tokenizer(), tiny_template(), {eot}, greedy_options());
    std::vector<std::string> pieces;
    s.send("Say it", [&](std::string_view t) { pieces.emplace_back(t); });
    std::string all;
    for (const auto& p : pieces) {
        CHECK(valid_utf8(p));
        CHECK(!p.empty());
        all += p;
    }
    CHECK(all == text);
    CHECK(pieces.size() > 3);
}

TEST_CASE("session: raw mode continues one document, with the tokenizer's <bos>") {
    fake_lm m;
    auto o = greedy_options();
    o.raw = true;
    o.max_new_tokens = 5;
    m.next = [w = id_of("\xE2\x96\x81" "and")](std::span<const std::int32_t>) { return w; };
    chat_session s(m, tiny_tokenizer(), std::nullopt, {1}, o);
    std::string out;
    s.send("The first", [&](std::string_view t) { out += t; });
    CHECK(out == " and and and and and");
    CHECK(m.fed.front() == tiny_tokenizer().encode("The first", true));
    CHECK(m.fed.front().front() == id_of("<bos>"));
    CHECK(s.document() == "The first and and and and and");
    const std::size_t cached = m.tokens.size();
    const auto st = s.send(" then");
    CHECK(st.reused_tokens <= cached);
    CHECK(st.reused_tokens + 2 >= cached);  // at most the last tokens re-tokenize differently
    CHECK(s.document() == "The first and and and and and then and and and and and");
    CHECK_THROWS_AS(chat_session(m, tiny_tokenizer(), std::nullopt, {}, greedy_options()), std::invalid_argument);
}

TEST_CASE("session: sampling with a seed is reproducible, errors leave the conversation as it was") {
    fake_lm m;
    m.next = [](std::span<const std::int32_t> ctx) { return static_cast<std::int32_t>(300 + ctx.size() % 50); };
    session_options o;  // default sampling; the fake's logits make the favoured token ~certain
    o.max_new_tokens = 10;
    o.sampling.seed = 9;
    o.sampling.top_k = 0;
    o.sampling.min_p = 0.0f;
    o.sampling.top_p = 1.0f;
    o.sampling.temperature = 20.0f;  // flat enough to draw other tokens
    std::string a, b;
    {
        chat_session s(m, tiny_tokenizer(), tiny_template(), {}, o);
        s.send("x", [&](std::string_view t) { a += t; });
    }
    {
        chat_session s(m, tiny_tokenizer(), tiny_template(), {}, o);
        s.send("x", [&](std::string_view t) { b += t; });
    }
    CHECK(a == b);
    CHECK(!a.empty());

    chat_session s(m, tiny_tokenizer(), tiny_template(), {}, greedy_options());
    s.send("first");
    // A failing model call: the exception propagates, the conversation is unchanged and the
    // cache starts over.
    m.vocab = 10;  // every prompt id is now outside the vocabulary
    CHECK_THROWS_AS(s.send("second"), std::invalid_argument);
    CHECK(s.messages().size() == 2);
    CHECK(s.cached_tokens().empty());
    m.vocab = 8192;
    CHECK_NOTHROW(s.send("second"));
    CHECK(s.messages().size() == 4);
}

TEST_CASE("session: system message") {
    fake_lm m;
    auto o = greedy_options();
    o.system = "Be brief.";
    o.max_new_tokens = 2;
    chat_session s(m, tiny_tokenizer(), tiny_template(), {}, o);
    s.send("Hi");
    const auto msgs = s.messages();
    REQUIRE(msgs.size() == 3);
    CHECK(msgs[0]["role"] == "system");
    CHECK(tiny_tokenizer().decode(m.fed.front()).find("<start_of_turn>system\nBe brief.<end_of_turn>") != std::string::npos);
    s.reset();
    CHECK(s.messages().size() == 1);
}

TEST_CASE("session: special token ids of a model folder") {
    const auto dir = std::filesystem::temp_directory_path() / ("hlwq_session_ids_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const auto write = [&](const char* name, const std::string& text) { std::ofstream(dir / name) << text; };
    const chat_template tmpl = tiny_template();

    auto ids = read_special_token_ids(dir, &tiny_tokenizer(), &tmpl);  // no files
    CHECK(!ids.bos);
    CHECK(!ids.eos);
    CHECK(ids.stop == std::vector<std::int32_t>{id_of("<end_of_turn>")});  // known name + template

    write("config.json", R"({"bos_token_id": 2, "eos_token_id": [1, 7]})");
    write("generation_config.json", R"({"eos_token_id": 106})");
    write("tokenizer_config.json", R"({"bos_token": "<bos>", "eos_token": {"content": "<pad>"}})");
    ids = read_special_token_ids(dir, &tiny_tokenizer(), &tmpl);
    CHECK(ids.bos == 2);
    CHECK(ids.eos == 1);
    CHECK(ids.stop == std::vector<std::int32_t>{0, 1, 5, 7, 106});

    write("config.json", R"({"text_config": {"eos_token_id": 9}})");
    std::filesystem::remove(dir / "generation_config.json");
    ids = read_special_token_ids(dir, nullptr, nullptr);
    CHECK(ids.eos == 9);
    CHECK(ids.stop == std::vector<std::int32_t>{9});

    write("config.json", "{not json");
    CHECK_THROWS_WITH_AS(read_special_token_ids(dir, nullptr, nullptr), doctest::Contains("config.json: not valid JSON"),
                         std::runtime_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("session: statistics text") {
    generation_stats st;
    st.prefill_tokens = 100;
    st.prefill_seconds = 0.5;
    st.generated_tokens = 30;
    st.decode_seconds = 1.5;
    const std::string text = format_stats(st);
    CHECK(text.find("prefill:  100 tokens in 0.500 s (200.0 tokens/s)") != std::string::npos);
    CHECK(text.find("decode:   30 tokens in 1.500 s (20.0 tokens/s)") != std::string::npos);
    CHECK(text.find("peak RSS: ") != std::string::npos);
    CHECK(peak_rss_bytes() > 1024 * 1024);
}
