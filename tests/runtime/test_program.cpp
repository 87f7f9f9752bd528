// SPDX-License-Identifier: MIT
// run_chat_program (examples/runtime/program.hpp) with a fake model loader: option parsing and
// exit statuses, the --ids modes, perplexity windows, one-shot and interactive chat.
#include "fake_model.hpp"
#include "program.hpp"
#include "tokenizer.hpp"

#include <hlwq/io/safetensors.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using hlwq::test::fake_lm;

namespace {

const fs::path test_dir = HLWQ_RUNTIME_TEST_DIR;

// What the fake loader builds, and what it was asked for.
struct fake_setup {
    std::function<std::int32_t(std::span<const std::int32_t>)> next{};
    hlwq::rt::model_options last_options{};
    int loads = 0;
};
fake_setup setup;

std::unique_ptr<hlwq::rt::causal_lm> fake_loader(const fs::path& dir, const hlwq::rt::model_options& o) {
    if (!fs::exists(dir / "config.json")) throw std::runtime_error((dir / "config.json").string() + ": cannot open");
    setup.last_options = o;
    ++setup.loads;
    auto m = std::make_unique<fake_lm>();
    m->next = setup.next;
    if (o.max_context) m->context = o.max_context;
    return m;
}

struct result {
    int rc = -1;
    std::string out{}, err{};
};

result run(std::vector<std::string> args, const std::string& input = {}) {
    std::istringstream in(input);
    std::ostringstream out, err;
    result r;
    r.rc = hlwq::rt::run_chat_program(args, "test_chat", fake_loader, in, out, err);
    r.out = out.str();
    r.err = err.str();
    return r;
}

// A temporary model folder: config.json, and the tiny tokenizer and chat template if asked.
struct model_dir {
    fs::path path;
    explicit model_dir(bool tokenizer_files, const std::string& config = R"({"eos_token_id": 1, "bos_token_id": 2})") {
        static int n = 0;
        path = fs::temp_directory_path() / ("hlwq_program_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
        fs::create_directories(path);
        std::ofstream(path / "config.json") << config;
        if (tokenizer_files) {
            fs::copy_file(test_dir / "gemma4_tiny" / "tokenizer.json", path / "tokenizer.json");
            fs::copy_file(test_dir / "templates" / "gemma4_tiny.jinja", path / "chat_template.jinja");
            std::ofstream(path / "tokenizer_config.json") << R"({"bos_token": "<bos>", "eos_token": "<eos>"})";
        }
    }
    ~model_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string str() const { return path.string(); }
};

std::int32_t default_next(std::int32_t last) { return static_cast<std::int32_t>((last * 31 + 7) % 8192); }

}  // namespace

TEST_CASE("program: --help and usage errors (exit status 2)") {
    auto r = run({"--help"});
    CHECK(r.rc == 0);
    CHECK(r.out.rfind("usage: test_chat --model DIR", 0) == 0);
    for (const char* flag : {"--prompt", "--system", "--raw", "--max-new-tokens", "--kv-bits", "--threads", "--exact",
                             "--temperature", "--greedy-sampling", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                             "--repeat-last-n", "--seed", "--ids", "--logits-out", "--greedy", "--perplexity", "--ctx",
                             "--max-windows", "--first-window", "/reset", "/exit", "/help"})
        CHECK_MESSAGE(r.out.find(flag) != std::string::npos, flag);

    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{}, "no model folder given"},
        {{"--model", "x", "--frobnicate"}, "unknown option '--frobnicate'"},
        {{"--model", "x", "stray"}, "unexpected argument 'stray'"},
        {{"--model"}, "--model needs a value"},
        {{"--model", "x", "--kv-bits", "5"}, "--kv-bits: 5 is not 0, 2, 3, 4 or 32"},
        {{"--model", "x", "--kv-bits", "4x"}, "--kv-bits: '4x' is not a number"},
        {{"--model", "x", "--top-p", "1.5"}, "top-p must be in (0, 1]"},
        {{"--model", "x", "--min-p", "-1"}, "min-p must be in [0, 1]"},
        {{"--model", "x", "--temperature", "-1"}, "--temperature must be >= 0"},
        {{"--model", "x", "--temperature", "nan"}, "not a finite number"},
        {{"--model", "x", "--repeat-penalty", "0"}, "repeat penalty must be > 0"},
        {{"--model", "x", "--max-new-tokens", "-3"}, "'-3' is not a number"},
        {{"--model", "x", "--ids", "1,2"}, "--ids needs --logits-out FILE and/or --greedy N"},
        {{"--model", "x", "--greedy", "3"}, "--logits-out and --greedy need --ids"},
        {{"--model", "x", "--ids", "1,x", "--greedy", "3"}, "not a comma-separated list of token ids"},
        {{"--model", "x", "--ids", "1,-2", "--greedy", "3"}, "not a comma-separated list of token ids"},
        {{"--model", "x", "--ids", ",", "--greedy", "3"}, "--ids: no token ids given"},
        {{"--model", "x", "--ids", "1", "--greedy", "3", "--perplexity", "f"}, "choose one"},
        {{"--model", "x", "--ids", "1", "--greedy", "3", "--prompt", "hi"}, "are for chat"},
        {{"--model", "x", "--max-windows", "3"}, "--max-windows needs --perplexity"},
        {{"--model", "x", "--first-window", "3"}, "--first-window needs --perplexity"},
        {{"--model", "x", "--ctx", "1"}, "--ctx must be at least 2"},
        {{"--model", "x", "--raw", "--system", "s"}, "--system needs the chat template"},
    };
    for (const auto& c : cases) {
        const std::vector<std::string>& args = c.first;
        const std::string& msg = c.second;
        r = run(args);
        const std::string last = args.empty() ? std::string() : args.back();
        INFO("last argument: " << last << "\nstderr: " << r.err);
        CHECK(r.rc == 2);
        CHECK(r.err.find(msg) != std::string::npos);
        CHECK(r.err.find("(test_chat --help for usage)") != std::string::npos);
        CHECK(r.out.empty());
    }
    CHECK(setup.loads == 0);
}

TEST_CASE("program: errors (exit status 1) name what is wrong") {
    auto r = run({"--model", "/no/such/folder", "--prompt", "hi"});
    CHECK(r.rc == 1);
    CHECK(r.err == "error: /no/such/folder: no such model folder\n");

    const model_dir bare(false);
    r = run({"--model", bare.str(), "--prompt", "hi"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("error: " + (bare.path / "tokenizer.json").string() + ": not found") != std::string::npos);

    const model_dir no_config(false);
    fs::remove(no_config.path / "config.json");
    r = run({"--model", no_config.str(), "--ids", "1,2", "--greedy", "2"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("config.json: cannot open") != std::string::npos);

    r = run({"--model", bare.str(), "--ids", "1,9000", "--greedy", "2"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("error: --ids: token id 9000 is outside the vocabulary (8192 tokens)") != std::string::npos);

    r = run({"--model", bare.str(), "--ids", "1,2", "--logits-out", (bare.path / "no_dir" / "x.safetensors").string()});
    CHECK(r.rc == 1);
    CHECK(r.err.find("error: ") != std::string::npos);

    const model_dir bad_template(true);
    std::ofstream(bad_template.path / "chat_template.jinja") << "{{ raise_exception('no chatting') }}";
    r = run({"--model", bad_template.str(), "--prompt", "hi", "--greedy-sampling"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("no chatting") != std::string::npos);
}

TEST_CASE("program: --ids --greedy and --logits-out need no tokenizer") {
    setup.next = nullptr;
    const model_dir bare(false);
    auto r = run({"--model", bare.str(), "--ids", "2,17,23", "--greedy", "5", "--kv-bits", "3", "--threads", "2",
                  "--exact", "--prefill-chunk", "7"});
    REQUIRE(r.rc == 0);
    std::string want;
    std::int32_t last = 23;
    for (int k = 0; k < 5; ++k) {
        last = default_next(last);
        if (k) want += ',';
        want += std::to_string(last);
    }
    CHECK(r.out == want + "\n");
    CHECK(setup.last_options.kv_bits == 3);
    CHECK(setup.last_options.threads == 2);
    CHECK(!setup.last_options.int8_activations);
    CHECK(setup.last_options.prefill_chunk == 7);

    const fs::path file = bare.path / "logits.safetensors";
    r = run({"--model", bare.str(), "--ids", "2, 17,23", "--logits-out", file.string()});
    REQUIRE(r.rc == 0);
    CHECK(r.out.empty());
    CHECK(r.err.find("logits [3, 8192]") != std::string::npos);
    const auto f = hlwq::io::safetensors_file::open(file);
    const auto v = f.view("logits");
    REQUIRE(std::vector<std::int64_t>(v.shape.begin(), v.shape.end()) == std::vector<std::int64_t>{3, 8192});
    const auto logits = v.as<float>();
    const std::int32_t ids[] = {2, 17, 23};
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t j = 0; j < 8192; ++j)
            REQUIRE(logits[i * 8192 + j] == (static_cast<std::int32_t>(j) == default_next(ids[i]) ? 20.0f : 0.0f));
}

TEST_CASE("program: --perplexity follows the gemma4-gcide-tiny method") {
    setup.next = nullptr;
    const model_dir dir(true);
    const std::string text = "First entry, with words.\n\n  Second entry\n spans lines.  \n\nThird one\n\n\nFourth";
    std::ofstream(dir.path / "eval.txt") << text;
    const auto tok = hlwq::rt::tokenizer::from_file(dir.path / "tokenizer.json");
    // Entries split on "\n\n" and stripped: the third split piece is "Third one", the fourth "\nFourth".
    std::vector<std::int32_t> tokens;
    for (const char* e : {"First entry, with words.", "Second entry\n spans lines.", "Third one", "Fourth"}) {
        const auto ids = tok.encode(e, false);
        tokens.insert(tokens.end(), ids.begin(), ids.end());
        tokens.push_back(1);
    }
    const std::size_t ctx = 6, window = ctx - 1, windows = tokens.size() / window;
    REQUIRE(windows >= 3);
    // The fake predicts the right token at every third text position (so a window cut off by one
    // would miss them) and 300 elsewhere. Each window starts with <bos> alone in the cache.
    const auto predicted = [&](std::size_t idx) { return idx % 3 == 0 ? tokens[idx] : 300; };
    std::size_t window_no = 0;
    setup.next = [&](std::span<const std::int32_t> ctx_ids) {
        if (ctx_ids.size() == 1) ++window_no;
        return predicted((window_no - 1) * window + ctx_ids.size() - 1);
    };
    const auto expected = [&](std::size_t n_windows) {
        const double base = std::log(std::exp(20.0) + 8191.0);
        double sum = 0;
        for (std::size_t w = 0; w < n_windows; ++w)
            for (std::size_t i = 0; i < window; ++i) {
                const std::size_t idx = w * window + i;  // the target of position i is tokens[idx]
                sum += base - (predicted(idx) == tokens[idx] ? 20.0 : 0.0);
            }
        return std::exp(sum / static_cast<double>(n_windows * window));
    };
    auto r = run({"--model", dir.str(), "--perplexity", (dir.path / "eval.txt").string(), "--ctx", "6",
                  "--prefill-chunk", "4"});
    REQUIRE(r.rc == 0);
    const auto printed = [](const std::string& out) {
        REQUIRE(out.rfind("perplexity: ", 0) == 0);
        return std::strtod(out.c_str() + 12, nullptr);
    };
    INFO(r.out << r.err);
    CHECK(printed(r.out) == doctest::Approx(expected(windows)).epsilon(1e-6));
    char want[64];
    std::snprintf(want, sizeof want, "(%zu tokens, %zu windows of 6)", windows * window, windows);
    CHECK(r.out.find(want) != std::string::npos);
    CHECK(setup.last_options.max_context == 6);
    CHECK(r.err.find("[1]") != std::string::npos);

    window_no = 0;
    r = run({"--model", dir.str(), "--perplexity", (dir.path / "eval.txt").string(), "--ctx", "6", "--max-windows", "2"});
    REQUIRE(r.rc == 0);
    CHECK(printed(r.out) == doctest::Approx(expected(2)).epsilon(1e-6));
    CHECK(r.out.find("(10 tokens, 2 windows of 6)") != std::string::npos);

    // --first-window 1: the windows after the first, each still alone in the cache; recombined
    // with window 0 by token counts (log ppl = mean NLL), they give the whole file's perplexity.
    window_no = 1;
    r = run({"--model", dir.str(), "--perplexity", (dir.path / "eval.txt").string(), "--ctx", "6", "--first-window", "1"});
    REQUIRE(r.rc == 0);
    const double rest = printed(r.out), first = expected(1);
    const double whole = std::exp((std::log(first) + std::log(rest) * static_cast<double>(windows - 1)) /
                                  static_cast<double>(windows));
    CHECK(whole == doctest::Approx(expected(windows)).epsilon(1e-6));
    CHECK(rest != doctest::Approx(expected(windows - 1)).epsilon(1e-6));  // really windows 1.., not 0..
    CHECK(r.err.find("from window 1") != std::string::npos);
    r = run({"--model", dir.str(), "--perplexity", (dir.path / "eval.txt").string(), "--ctx", "6", "--first-window",
             std::to_string(windows)});
    CHECK(r.rc == 1);
    CHECK(r.err.find("--first-window " + std::to_string(windows) + " but only") != std::string::npos);

    setup.next = nullptr;
    r = run({"--model", dir.str(), "--perplexity", (dir.path / "eval.txt").string(), "--ctx", "500"});
    CHECK(r.rc == 1);
    CHECK(r.err.find("fewer than one window of 499") != std::string::npos);
    r = run({"--model", dir.str(), "--perplexity", (dir.path / "missing.txt").string()});
    CHECK(r.rc == 1);
    CHECK(r.err.find("missing.txt: cannot open") != std::string::npos);
    const model_dir no_eos(true, "{}");
    std::ofstream(no_eos.path / "tokenizer_config.json") << "{}";
    r = run({"--model", no_eos.str(), "--perplexity", (dir.path / "eval.txt").string()});
    CHECK(r.rc == 1);
    CHECK(r.err.find("no eos_token_id") != std::string::npos);
}

namespace {

// The fake answers each turn with the tokens of `reply` (after the generation prompt's header),
// then <end_of_turn>.
void script(const hlwq::rt::tokenizer& tok, const std::string& reply) {
    const auto header = tok.encode("<start_of_turn>model\n", false);
    auto ids = tok.encode("<start_of_turn>model\n" + reply, false);
    ids.erase(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(header.size()));
    const std::int32_t eot = *tok.token_to_id("<end_of_turn>");
    setup.next = [header, ids, eot](std::span<const std::int32_t> ctx) -> std::int32_t {
        const auto it = std::find_end(ctx.begin(), ctx.end(), header.begin(), header.end());
        if (it == ctx.end()) return 300;
        const auto k = static_cast<std::size_t>(ctx.end() - (it + static_cast<std::ptrdiff_t>(header.size())));
        return k < ids.size() ? ids[k] : eot;
    };
}

}  // namespace

TEST_CASE("program: --prompt answers once; interactive chat with commands") {
    const model_dir dir(true);
    const auto tok = hlwq::rt::tokenizer::from_file(dir.path / "tokenizer.json");
    script(tok, "A small animal.");

    auto r = run({"--model", dir.str(), "--prompt", "What is a cat?", "--seed", "3"});
    REQUIRE(r.rc == 0);
    CHECK(r.out == "A small animal.\n");
    CHECK(r.err.find("test_chat: seed 3") != std::string::npos);
    CHECK(r.err.find("fake_lm (vocab 8192)") != std::string::npos);
    CHECK(r.err.find("prefill: ") != std::string::npos);
    CHECK(r.err.find("decode: ") != std::string::npos);
    CHECK(r.err.find("peak RSS: ") != std::string::npos);

    r = run({"--model", dir.str(), "--greedy-sampling"},
            "Hello\n/bogus\n\n/help\nSecond\\\nline\n/reset\nThird\n/exit\nnot read\n");
    REQUIRE(r.rc == 0);
    CHECK(r.out == "A small animal.\nA small animal.\nA small animal.\n");
    CHECK(r.err.find("unknown command '/bogus'") != std::string::npos);
    CHECK(r.err.find("(conversation cleared)") != std::string::npos);
    CHECK(r.err.find("commands: /reset") != std::string::npos);
    CHECK(r.err.find("seed") == std::string::npos);  // greedy: no seed

    // End of input ends the chat too; a turn's error does not end it.
    r = run({"--model", dir.str(), "--greedy-sampling", "--ctx", "30"},
            "Hi\nThis message is much too long to fit in a context of thirty tokens, surely it is\nOk\n");
    CHECK(r.rc == 0);
    CHECK(r.err.find("error: the conversation is") != std::string::npos);
    CHECK(r.out.find("A small animal.") != std::string::npos);

    // --max-new-tokens and --system.
    r = run({"--model", dir.str(), "--prompt", "Hi", "--greedy-sampling", "-n", "2", "--system", "Be brief."});
    REQUIRE(r.rc == 0);
    CHECK(r.out.size() < std::string("A small animal.\n").size());
}

TEST_CASE("program: --raw continues the text") {
    const model_dir dir(true);
    const auto tok = hlwq::rt::tokenizer::from_file(dir.path / "tokenizer.json");
    const std::int32_t and_id = *tok.token_to_id("\xE2\x96\x81" "and");
    setup.next = [and_id](std::span<const std::int32_t>) { return and_id; };
    fs::remove(dir.path / "chat_template.jinja");  // raw mode needs no template
    const auto r = run({"--model", dir.str(), "--raw", "--prompt", "Salt", "-n", "3", "--temperature", "0"});
    REQUIRE(r.rc == 0);
    CHECK(r.out == " and and and\n");
    // Without --raw the missing template is an error.
    const auto r2 = run({"--model", dir.str(), "--prompt", "Salt"});
    CHECK(r2.rc == 1);
    CHECK(r2.err.find("tokenizer_config.json") != std::string::npos);
}
