// SPDX-License-Identifier: MIT
// Tokenizer tests: token ids equal to the JavaScript reference (make_reference.mjs) on every line
// of corpus.txt and on multi-line documents, for Gemma 3 (SentencePiece-style BPE, byte fallback)
// and Qwen3 (byte-level BPE, regex pre-tokenizer); decode and streaming decode; the Gemma 4 tiny
// model's tokenizer against its transformers reference; Unicode, regex and error handling.
#include "reference.hpp"
#include "regex.hpp"
#include "tokenizer.hpp"
#include "unicode.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <fstream>
#include <sstream>

using hlwq::rt::stream_decoder;
using hlwq::rt::tokenizer;
using hlwq::rt::tokenizer_error;
using json = nlohmann::ordered_json;
namespace test = hlwq::rt::test;

namespace {

std::string ids_str(const std::vector<std::int32_t>& v) {
    std::string s;
    for (const auto id : v) s += std::to_string(id) + " ";
    return s;
}

std::string escaped(const std::string& s) { return json(s).dump(); }

const tokenizer& load(const std::string& name) {
    static std::map<std::string, std::unique_ptr<tokenizer>> cache;
    auto& slot = cache[name];
    if (!slot) slot = std::make_unique<tokenizer>(tokenizer::from_file(test::reference_dir() / name / "tokenizer.json"));
    return *slot;
}

void check_against_reference(const std::string& name) {
    const json ref = test::read_json(test::reference_dir() / name / "encode.json");
    const tokenizer& tok = load(name);
    const auto& cases = ref.at("cases");
    const std::vector<std::string> corpus = test::corpus_lines();

    std::size_t lines = 0, docs = 0, bad_ids = 0, bad_plain = 0, bad_decode = 0, bad_stream = 0, roundtrips = 0;
    std::size_t tokens = 0;
    double seconds = 0;
    for (const auto& c : cases) {
        const std::string text = c.at("text").get<std::string>();
        if (c.at("kind") == "line") {
            REQUIRE_MESSAGE(lines < corpus.size(), "reference has more lines than corpus.txt: " << test::rerun_hint());
            REQUIRE_MESSAGE(corpus[lines] == text, "reference is stale (corpus.txt line " << lines + 1
                                                                                       << " differs): " << test::rerun_hint());
            ++lines;
        } else {
            ++docs;
        }
        const auto want = c.at("ids").get<std::vector<std::int32_t>>();
        const auto want_plain = c.at("ids_plain").get<std::vector<std::int32_t>>();
        const auto t0 = std::chrono::steady_clock::now();
        const auto got = tok.encode(text, true);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokens += got.size();
        const auto got_plain = tok.encode(text, false);
        if (got != want && ++bad_ids <= 10)
            MESSAGE(name << ": ids differ for " << escaped(text) << "\n  want " << ids_str(want) << "\n  got  " << ids_str(got));
        if (got_plain != want_plain) ++bad_plain;

        // decode: equal to the reference's decode, and to the text where the reference round-trips.
        const std::string decoded = tok.decode(want_plain);
        const std::string want_decoded = c.at("decoded").get<std::string>();
        if (want_decoded == text) {
            ++roundtrips;
            if (decoded != text && ++bad_decode <= 10)
                MESSAGE(name << ": decode(encode(x)) != x for " << escaped(text) << ": " << escaped(decoded));
        } else if (decoded != want_decoded && ++bad_decode <= 10) {
            MESSAGE(name << ": decode differs for " << escaped(text) << ": want " << escaped(want_decoded) << " got "
                         << escaped(decoded));
        }

        // Streaming decode: same text, never half a character.
        stream_decoder sd(tok);
        std::string streamed;
        bool split_char = false;
        for (const auto id : want_plain) {
            const std::string piece = sd.push(id);
            if (!hlwq::rt::unicode::is_valid_utf8(piece)) split_char = true;
            streamed += piece;
        }
        streamed += sd.finish();
        if ((streamed != decoded || split_char) && ++bad_stream <= 10)
            MESSAGE(name << ": streaming decode differs for " << escaped(text) << ": " << escaped(streamed));
    }
    CHECK(lines == corpus.size());
    CHECK(lines >= 2000);
    CHECK(docs >= 10);
    CHECK(bad_ids == 0);
    CHECK(bad_plain == 0);
    CHECK(bad_decode == 0);
    CHECK(bad_stream == 0);
    MESSAGE(name << ": " << lines << " corpus lines + " << docs << " documents equal to the reference; " << roundtrips
                 << " round-trip exactly; encode " << tokens << " tokens in " << seconds << " s ("
                 << static_cast<double>(tokens) / seconds / 1e6 << " M tokens/s, warm cache on the second pass)");
}

}  // namespace

TEST_CASE("reference data is present and current") {
    REQUIRE_MESSAGE(std::filesystem::exists(test::reference_dir() / "complete.json"),
                    "tokenizer reference data is missing: " << test::rerun_hint());
}

TEST_CASE("gemma3 tokenizer equals the reference on the corpus") { check_against_reference("gemma3"); }

TEST_CASE("qwen3 tokenizer equals the reference on the corpus") { check_against_reference("qwen3"); }

TEST_CASE("encode throughput (cold cache, both tokenizers)") {
    const std::vector<std::string> corpus = test::corpus_lines();
    for (const std::string name : {"gemma3", "qwen3"}) {
        const tokenizer& tok = load(name);
        tok.clear_cache();
        std::size_t tokens = 0, bytes = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (const auto& l : corpus) {
            tokens += tok.encode(l, false).size();
            bytes += l.size();
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        MESSAGE(name << ": encoded " << corpus.size() << " lines, " << bytes << " bytes, " << tokens << " tokens in "
                     << s * 1e3 << " ms: " << static_cast<double>(tokens) / s / 1e6 << " M tokens/s");
        CHECK(tokens > 0);
    }
}

TEST_CASE("special tokens: BOS from the post-processor, skip_special_tokens") {
    const tokenizer& g = load("gemma3");
    const auto bos = g.token_to_id("<bos>");
    REQUIRE(bos.has_value());
    const auto ids = g.encode("<start_of_turn>user\nHi<end_of_turn>", true);
    REQUIRE(ids.size() > 3);
    CHECK(ids[0] == *bos);
    CHECK(g.is_special(ids[1]));
    CHECK(g.decode(ids, true) == "user\nHi");
    CHECK(g.decode(ids, false) == "<bos><start_of_turn>user\nHi<end_of_turn>");
    const tokenizer& q = load("qwen3");
    const auto qi = q.encode("<|im_start|>user\nhi<|im_end|>", true);
    CHECK(qi.front() == *q.token_to_id("<|im_start|>"));  // no BOS for Qwen
    CHECK(q.decode(qi, true) == "user\nhi");
}

TEST_CASE("streaming decode holds incomplete UTF-8") {
    const tokenizer& g = load("gemma3");
    const std::int32_t e4 = *g.token_to_id("<0xE4>"), b8 = *g.token_to_id("<0xB8>"), ad = *g.token_to_id("<0xAD>");
    stream_decoder sd(g);
    CHECK(sd.push(*g.token_to_id("▁a")) == " a");
    CHECK(sd.push(e4).empty());
    CHECK(sd.push(b8).empty());
    CHECK(sd.push(ad) == "中");
    CHECK(sd.finish().empty());
    // A sequence that can never complete becomes U+FFFD, as in decode().
    const std::vector<std::int32_t> broken{e4, b8, *g.token_to_id("a")};
    CHECK(g.decode(broken) == "\xEF\xBF\xBD" "a");
    stream_decoder s2(g);
    std::string out;
    for (const auto id : broken) out += s2.push(id);
    out += s2.finish();
    CHECK(out == g.decode(broken));
    stream_decoder s3(g);
    CHECK(s3.push(e4).empty());
    CHECK(s3.finish() == "\xEF\xBF\xBD");

    const tokenizer& q = load("qwen3");
    const auto ids = q.encode("😀中", false);  // byte-level pieces that split characters
    stream_decoder sq(q);
    std::string streamed;
    for (const auto id : ids) {
        const std::string piece = sq.push(id);
        CHECK(hlwq::rt::unicode::is_valid_utf8(piece));
        streamed += piece;
    }
    CHECK(streamed + sq.finish() == "😀中");
}

TEST_CASE("gemma4-gcide-tiny tokenizer (Metaspace, Strip decoder) equals its transformers reference") {
    const auto dir = test::source_dir() / "gemma4_tiny";
    const tokenizer tok = tokenizer::from_file(dir / "tokenizer.json");
    const json ref = test::read_json(dir / "generations.json");
    std::size_t n = 0;
    for (const auto& g : ref.at("generations")) {
        const std::string prompt = g.at("prompt").get<std::string>();
        CHECK_MESSAGE(tok.encode(prompt, true) == g.at("prompt_ids").get<std::vector<std::int32_t>>(), escaped(prompt));
        const auto greedy = g.at("greedy_ids").get<std::vector<std::int32_t>>();
        CHECK(tok.decode(greedy, true) == g.at("greedy_text").get<std::string>());
        ++n;
    }
    CHECK(n == 6);
}

TEST_CASE("unicode: NFC/NFD") {
    using namespace hlwq::rt::unicode;
    CHECK(nfc("cafe\xCC\x81") == "caf\xC3\xA9");
    CHECK(nfd("caf\xC3\xA9") == "cafe\xCC\x81");
    CHECK(nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8") == "\xEA\xB0\x81");  // jamo -> 각
    CHECK(nfc("\xE2\x84\xAB") == "\xC3\x85");                               // angstrom sign -> Å
    CHECK(nfc("a\xCC\xA3\xCC\x87") == nfc("a\xCC\x87\xCC\xA3"));            // canonical order
    CHECK(nfc("plain ascii") == "plain ascii");
    CHECK(is_letter(U'é'));
    CHECK(is_number(U'٣'));
    CHECK(is_white_space(0x3000));
    CHECK_FALSE(is_white_space(0x200B));
    CHECK(complete_utf8_prefix("ab\xE4\xB8") == 2);
    CHECK(complete_utf8_prefix("ab\xE4\xB8\xAD") == 5);
    CHECK(complete_utf8_prefix("ab\xFF") == 3);
    CHECK(sanitize_utf8("a\xFF\xE4\xB8z") == "a\xEF\xBF\xBD\xEF\xBF\xBDz");
}

TEST_CASE("regex engine") {
    const hlwq::rt::regex qwen(
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
    auto parts = [&](const std::string& s) {
        const std::u32string t = hlwq::rt::unicode::to_utf32(s);
        std::vector<std::string> out;
        for (const auto& [b, e] : qwen.find_all(t)) out.push_back(hlwq::rt::unicode::to_utf8(t.substr(b, e - b)));
        return out;
    };
    CHECK(parts("Hello world's 123") == std::vector<std::string>{"Hello", " world", "'s", " ", "1", "2", "3"});
    CHECK(parts("I'M  ok\n\n x") == std::vector<std::string>{"I", "'M", " ", " ok", "\n\n", " x"});
    CHECK(parts("a  \t b") == std::vector<std::string>{"a", "  \t", " b"});
    const hlwq::rt::regex counted(R"(\p{N}{1,3})");
    CHECK(counted.find_all(U"12345").size() == 2);
    const hlwq::rt::regex lazy("a+?");
    CHECK(lazy.search(U"aaa")->second == 1);
    CHECK_THROWS_WITH_AS(hlwq::rt::regex("(abc"), doctest::Contains("missing ')'"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::rt::regex("*a"), doctest::Contains("nothing to repeat"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::rt::regex(R"(\p{Foo})"), doctest::Contains("unsupported property"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hlwq::rt::regex("(?<=a)b"), doctest::Contains("unsupported group"), std::invalid_argument);
    // A pathological pattern ends in an error, not a hang.
    const hlwq::rt::regex evil("(a*)*b");
    CHECK_THROWS_AS((void)evil.search(std::u32string(40, U'a')), std::runtime_error);
}

TEST_CASE("malformed tokenizer.json: clear errors") {
    auto err = [](const std::string& text) {
        try {
            (void)tokenizer::from_json(text);
        } catch (const tokenizer_error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    CHECK(err("{").find("not valid JSON") != std::string::npos);
    CHECK(err("[]").find("not an object") != std::string::npos);
    CHECK(err("{}").find("has no \"model\"") != std::string::npos);
    CHECK(err(R"J({"model":{"type":"Unigram","vocab":[]}})J").find("only BPE") != std::string::npos);
    CHECK(err(R"J({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})J").find("merges[0]") != std::string::npos);
    CHECK(err(R"J({"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}})J").find("out of range") != std::string::npos);
    CHECK(err(R"J({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"normalizer":{"type":"Precompiled"}})J")
              .find("normalizer type \"Precompiled\" is not supported") != std::string::npos);
    const std::string lookbehind =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\","
        "\"pattern\":{\"Regex\":\"(?<=x)\"},\"behavior\":\"Isolated\"}}";
    CHECK(err(lookbehind).find("pre_tokenizer.pattern") != std::string::npos);
    CHECK(err(R"J({"model":{"type":"BPE","vocab":{"a":0},"merges":[],"unk_token":"<unk>"}})J").find("unk_token") != std::string::npos);
    CHECK_THROWS_AS((void)tokenizer::from_file("/nonexistent/tokenizer.json"), tokenizer_error);

    // A minimal valid file: unknown characters without unk_token are an error, not a crash.
    const tokenizer tiny = tokenizer::from_json(R"J({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]}})J");
    CHECK(tiny.encode("abab") == std::vector<std::int32_t>{2, 2});
    CHECK_THROWS_AS((void)tiny.encode("abc"), tokenizer_error);
    CHECK_THROWS_AS((void)tiny.decode(std::vector<std::int32_t>{7}), tokenizer_error);
    CHECK(tiny.decode(std::vector<std::int32_t>{2, 0}) == "ab a");  // no decoder: tokens joined with spaces
}
