// SPDX-License-Identifier: MIT
// chat_session with images (session.hpp, causal_lm's image interface in model.hpp), on a fake
// vision model: the template's image entries, the expansion of its image tokens into each
// image's tokens, images fed once across turns (KV reuse), and clear errors.
#include "fake_model.hpp"
#include "image.hpp"
#include "program.hpp"
#include "session.hpp"

#include <doctest/doctest.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <unistd.h>
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

// Gemma-style turns; an image entry renders as "<unk>" (a special token of the tiny tokenizer,
// standing in for a real template's image token).
constexpr const char* image_template_source =
    "{%- for m in messages -%}<start_of_turn>{{ m['role'] }}\n"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}<unk>{%- else -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<end_of_turn>\n{% endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}";

chat_template image_template() { return chat_template(image_template_source, {}); }

// A template that knows no images: it writes the content as a string.
chat_template text_template() {
    return chat_template("{%- for m in messages -%}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                         "{% endfor -%}{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}",
                         {});
}

constexpr std::int32_t image_token = 3;  // <unk>
constexpr std::int32_t boi = 100, eoi = 101;

/// fake_lm with a "vision tower": an image of width w becomes boi, w image tokens, eoi; its
/// queued tokens are consumed by the image tokens fed, and forward() refuses image tokens with
/// none queued (as the real models do).
class fake_vlm : public fake_lm {
public:
    static inline std::size_t total_fed = 0;  ///< image tokens fed by every instance (program test)
    std::vector<std::size_t> queued{};   ///< widths of the queued images
    std::size_t images_encoded = 0;       ///< queue_image() calls
    std::size_t image_tokens_fed = 0;

    bool has_vision() const override { return true; }
    std::int32_t image_token_id() const override { return image_token; }
    std::vector<std::int32_t> queue_image(const rgb_image& image) override {
        ++images_encoded;
        queued.push_back(image.width);
        std::vector<std::int32_t> ids{boi};
        ids.insert(ids.end(), image.width, image_token);
        ids.push_back(eoi);
        return ids;
    }
    std::size_t pending_image_tokens() const override {
        std::size_t n = 0;
        for (auto w : queued) n += w;
        return n;
    }
    void reset() override {
        fake_lm::reset();
        queued.clear();
    }
    void forward(std::span<const std::int32_t> ids, std::span<float> logits, bool all) override {
        std::size_t n = 0;
        for (auto id : ids) n += id == image_token;
        if (n > pending_image_tokens()) throw std::invalid_argument("fake_vlm: image tokens but no image queued");
        fake_lm::forward(ids, logits, all);
        image_tokens_fed += n;
        total_fed += n;
        while (n) {  // consume whole images in order
            REQUIRE(!queued.empty());
            REQUIRE(queued.front() <= n);
            n -= queued.front();
            queued.erase(queued.begin());
        }
    }
};

session_options greedy(std::size_t max_new = 3) {
    session_options o;
    o.sampling.temperature = 0.0f;
    o.max_new_tokens = max_new;
    return o;
}

rgb_image image_of_width(std::size_t w) { return rgb_image{w, 1, std::vector<std::uint8_t>(w * 3, 128)}; }

std::size_t count(std::span<const std::int32_t> ids, std::int32_t id) {
    return static_cast<std::size_t>(std::count(ids.begin(), ids.end(), id));
}

}  // namespace

TEST_CASE("session: images expand the template's image tokens, are encoded and fed once across turns") {
    fake_vlm m;
    m.next = [](std::span<const std::int32_t>) { return 200; };  // answers 200 200 200 (max_new 3)
    chat_session s(m, tiny_tokenizer(), image_template(), {1}, greedy());
    const std::vector<rgb_image> two{image_of_width(3), image_of_width(5)};
    s.send("compare these", {}, two);
    CHECK(m.images_encoded == 2);
    CHECK(m.pending_image_tokens() == 0);
    CHECK(m.image_tokens_fed == 8);
    // The prompt: boi, 3 x image, eoi, boi, 5 x image, eoi, then the text.
    const auto cached = s.cached_tokens();
    CHECK(count(cached, image_token) == 8);
    const auto first = std::find(cached.begin(), cached.end(), boi);
    REQUIRE(first != cached.end());
    const std::vector<std::int32_t> want{boi, 3, 3, 3, eoi, boi, 3, 3, 3, 3, 3, eoi};
    CHECK(std::equal(want.begin(), want.end(), first));
    const auto msgs = s.messages();
    REQUIRE(msgs[0]["content"].is_array());
    CHECK(msgs[0]["content"].size() == 3);
    CHECK(msgs[0]["content"][0]["type"] == "image");
    CHECK(msgs[0]["content"][2]["text"] == "compare these");

    // A text turn: the images stay in the (reused) cache; nothing is encoded or fed again.
    const std::size_t fed_before = m.fed.size();
    s.send("and now?");
    CHECK(m.images_encoded == 2);
    CHECK(m.image_tokens_fed == 8);
    CHECK(count(m.fed[fed_before], image_token) == 0);
    CHECK(count(s.cached_tokens(), image_token) == 8);

    // A turn with one more image: only it is encoded and fed.
    s.send("and this one", {}, std::vector<rgb_image>{image_of_width(2)});
    CHECK(m.images_encoded == 3);
    CHECK(m.image_tokens_fed == 10);
    CHECK(count(s.cached_tokens(), image_token) == 10);
    CHECK(m.pending_image_tokens() == 0);

    // reset() forgets the images with the conversation.
    s.reset();
    s.send("hi");
    CHECK(count(s.cached_tokens(), image_token) == 0);
}

TEST_CASE("session: image errors leave the conversation and the model's queue as before") {
    fake_vlm m;
    m.next = [](std::span<const std::int32_t>) { return 200; };
    {
        chat_session s(m, tiny_tokenizer(), text_template(), {1}, greedy());
        // The template writes no image token for the image entry (it prints the list).
        bool threw = false;
        try {
            s.send("look", {}, std::vector<rgb_image>{image_of_width(3)});
        } catch (const std::runtime_error& e) {
            threw = true;
            CHECK(std::string(e.what()).find("wrote 0 image token(s) for 1 image(s)") != std::string::npos);
        }
        CHECK(threw);
        CHECK(m.pending_image_tokens() == 0);  // the encoded image is not left queued
        CHECK(s.messages().empty());
    }
    {
        session_options raw = greedy();
        raw.raw = true;
        chat_session s(m, tiny_tokenizer(), std::nullopt, {1}, raw);
        CHECK_THROWS_AS(s.send("x", {}, std::vector<rgb_image>{image_of_width(1)}), std::invalid_argument);
    }
    {
        fake_lm text_only;
        chat_session s(text_only, tiny_tokenizer(), image_template(), {1}, greedy());
        CHECK_THROWS_WITH_AS(s.send("x", {}, std::vector<rgb_image>{image_of_width(1)}),
                             doctest::Contains("does not read images"), std::runtime_error);
    }
}

namespace {
std::unique_ptr<causal_lm> load_fake_vlm(const std::filesystem::path&, const model_options&) {
    auto m = std::make_unique<fake_vlm>();
    m->next = [](std::span<const std::int32_t>) { return 200; };
    return m;
}
}  // namespace

TEST_CASE("chat program: --image with the first line, /image PATH in the interactive chat") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("hlwq_chat_images_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    fs::copy_file(test_dir / "gemma4_tiny" / "tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
    std::ofstream(dir / "chat_template.jinja") << image_template_source;
    const std::vector<std::uint8_t> px(4 * 2 * 3, 90);
    REQUIRE(stbi_write_png((dir / "a.png").c_str(), 4, 2, 3, px.data(), 4 * 3));  // 4 wide: 4 image tokens
    REQUIRE(stbi_write_png((dir / "b.png").c_str(), 2, 2, 3, px.data(), 2 * 3));  // 2 wide
    const auto run = [&](std::vector<std::string> args, const std::string& input, std::string& err) {
        std::istringstream in(input);
        std::ostringstream o, e;
        const int rc = run_chat_program(args, "fake_chat", load_fake_vlm, in, o, e);
        err = e.str();
        return rc;
    };
    std::string err;
    fake_vlm::total_fed = 0;
    // --image goes with the first message; /image with the next; a bad path is reported and
    // the chat goes on.
    const std::string input = "first\n/image " + (dir / "b.png").string() + "\nsecond\n/image " +
                              (dir / "missing.png").string() + "\nthird\n/exit\n";
    CHECK(run({"--model", dir.string(), "--greedy-sampling", "-n", "2", "--image", (dir / "a.png").string()}, input, err) == 0);
    CHECK(fake_vlm::total_fed == 6);  // 4 (a.png) + 2 (b.png), each fed once
    CHECK(err.find("b.png, 2x2, goes with the next message") != std::string::npos);
    CHECK(err.find("missing.png: no such file") != std::string::npos);
    CHECK(err.find("error: ") != std::string::npos);
    // --prompt with two images.
    fake_vlm::total_fed = 0;
    CHECK(run({"--model", dir.string(), "--greedy-sampling", "-n", "1", "--prompt", "hi", "--image",
               (dir / "a.png").string(), "--image", (dir / "b.png").string()}, "", err) == 0);
    CHECK(fake_vlm::total_fed == 6);
    fs::remove_all(dir);
}
