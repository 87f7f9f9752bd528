// SPDX-License-Identifier: MIT
// Qwen3.5 vision against transformers 5.17 on tests/fixtures/qwen35_vision (a tiny random
// Qwen3_5ForConditionalGeneration with a 2-block vision tower, fp32, made by make_fixtures.py):
// the antialiased resize against torchvision's, the preprocessing of image.png against the
// processor's pixel values, the vision tower's output, the logits of a prompt holding the image
// (image embeddings at the pads, M-RoPE positions) fed the reference pixels and end to end from
// the PNG, greedy tokens of generate(), and clear errors.
#include "image.hpp"
#include "qwen35.hpp"
#include "qwen35_image.hpp"
#include "quantized_folder.hpp"
#include "resample.hpp"

#include <hlwq/io/safetensors.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using namespace hlwq::rt;

namespace {

const fs::path fixture = fs::path(HLWQ_FIXTURES_DIR) / "qwen35_vision";

/// reference.safetensors of the fixture.
struct vision_ref {
    hlwq::io::safetensors_file file = hlwq::io::safetensors_file::open(fixture / "reference.safetensors");

    std::vector<float> floats(const char* name) const {
        const auto v = file.view(name);
        std::vector<float> out(v.numel());
        v.copy_to(std::span<float>(out));
        return out;
    }
    std::vector<std::int64_t> ints(const char* name) const {
        const auto v = file.view(name);
        std::vector<std::int64_t> out(v.numel());
        v.copy_to(std::span<std::int64_t>(out));
        return out;
    }
    std::vector<std::int32_t> ids(const char* name) const {
        const auto raw = ints(name);
        return {raw.begin(), raw.end()};
    }
    std::vector<std::uint8_t> bytes(const char* name) const {
        const auto v = file.view(name);
        std::vector<std::uint8_t> out(v.numel());
        v.copy_to(std::span<std::uint8_t>(out));
        return out;
    }
    /// pixel_values + image_grid_thw as the processor returned them.
    qwen35_pixels pixels(const char* values, const char* grid) const {
        qwen35_pixels p;
        const auto g = ints(grid);
        REQUIRE(g.size() == 3);
        p.grid_t = static_cast<std::size_t>(g[0]);
        p.grid_h = static_cast<std::size_t>(g[1]);
        p.grid_w = static_cast<std::size_t>(g[2]);
        p.values = floats(values);
        p.patch_dim = p.values.size() / p.patches();
        return p;
    }
};

model_options exact_options(std::size_t prefill_chunk = 64) {
    model_options o;
    o.threads = 2;
    o.kv_bits = 32;  // fp32 cache: the comparison is fp32 against fp32
    o.int8_activations = false;
    o.prefill_chunk = prefill_chunk;
    return o;
}

/// max|got − want| / max|want|.
double rel_error(std::span<const float> got, std::span<const float> want) {
    REQUIRE(got.size() == want.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
        scale = std::max(scale, static_cast<double>(std::abs(want[i])));
    }
    return diff / scale;
}

/// Max |Δ| of two preprocessed images on [0, 1] (normalization undone: x · std + mean).
double unit_error(const qwen35_pixels& got, const qwen35_pixels& want, const qwen35_image_config& c) {
    REQUIRE(got.values.size() == want.values.size());
    const std::size_t per_channel = got.patch_dim / 3;
    double worst = 0;
    for (std::size_t i = 0; i < got.values.size(); ++i) {
        const std::size_t ch = i % got.patch_dim / per_channel;
        const auto undo = [&](float v) { return static_cast<double>(v) * c.image_std[ch] + c.image_mean[ch]; };
        worst = std::max(worst, std::abs(undo(got.values[i]) - undo(want.values[i])));
    }
    return worst;
}

std::vector<float> all_logits(causal_lm& lm, std::span<const std::int32_t> ids) {
    std::vector<float> logits(ids.size() * lm.vocab_size());
    lm.forward(ids, logits, true);
    return logits;
}

}  // namespace

TEST_CASE("qwen35 vision: smart_resize as transformers (rounding, min/max pixels, errors)") {
    using P = std::pair<std::size_t, std::size_t>;
    CHECK(qwen35_smart_resize(60, 90, 16, 1024, 4096) == P{48, 64});      // above max: floor after scaling
    CHECK(qwen35_smart_resize(60, 90, 16, 16384, 65536) == P{112, 160});  // below min: ceil after scaling
    CHECK(qwen35_smart_resize(60, 90, 16, 1024, 65536) == P{64, 96});     // in range: rounded
    CHECK(qwen35_smart_resize(40, 72, 16, 16, 1 << 20) == P{32, 64});     // 2.5 and 4.5 round to even
    CHECK(qwen35_smart_resize(56, 88, 16, 16, 1 << 20) == P{64, 96});     // 3.5 and 5.5 round to even
    CHECK_THROWS_WITH_AS(qwen35_smart_resize(10, 2010, 16, 16, 1 << 30), doctest::Contains("aspect ratio"),
                         std::invalid_argument);
    CHECK_THROWS_AS(qwen35_smart_resize(0, 10, 16, 16, 1024), std::invalid_argument);
}

TEST_CASE("qwen35 vision: the antialiased resize equals torchvision's uint8 kernel") {
    const vision_ref ref;
    const rgb_image img = load_image(fixture / "image.png");
    REQUIRE(img.width == 90);
    REQUIRE(img.height == 60);
    for (const char* name : {"resized_u8", "resized_u8_up"}) {
        const auto v = ref.file.view(name);
        REQUIRE(v.shape.size() == 3);
        const auto h = static_cast<std::size_t>(v.shape[1]), w = static_cast<std::size_t>(v.shape[2]);
        const std::vector<std::uint8_t> want = ref.bytes(name);  // [3][h][w]
        const rgb_image got = resize_antialiased(img, w, h, resample_filter::bicubic);
        REQUIRE(got.pixels.size() == want.size());
        int worst = 0;
        std::size_t differ = 0;
        for (std::size_t c = 0; c < 3; ++c)
            for (std::size_t i = 0; i < h * w; ++i) {
                const int d = std::abs(int{got.pixels[i * 3 + c]} - int{want[c * h * w + i]});
                worst = std::max(worst, d);
                differ += d != 0;
            }
        MESSAGE(std::string(name) << " " << w << "x" << h << ": max |diff| " << worst << " levels, " << differ << " of "
                     << want.size() << " values differ");
        CHECK(worst == 0);
    }
    // Same size: unchanged; one axis only.
    CHECK(resize_antialiased(img, 90, 60, resample_filter::bicubic).pixels == img.pixels);
    CHECK(resize_antialiased(img, 45, 60, resample_filter::bilinear).height == 60);
    CHECK_THROWS_AS(resize_antialiased(img, 0, 60, resample_filter::bicubic), std::invalid_argument);
}

TEST_CASE("qwen35 vision: preprocessing of image.png matches the processor's pixel values") {
    const vision_ref ref;
    const rgb_image img = load_image(fixture / "image.png");
    qwen35_image_config c = qwen35_image_config::load(fixture);
    CHECK(c.patch_size == 8);
    CHECK(c.min_pixels == 1024);
    CHECK(c.max_pixels == 4096);
    CHECK(c.resample == resample_filter::bicubic);
    for (const bool up : {false, true}) {
        if (up) {
            c.min_pixels = 16384;
            c.max_pixels = 65536;
        }
        const qwen35_pixels want = up ? ref.pixels("pixel_values_up", "image_grid_thw_up")
                                      : ref.pixels("pixel_values", "image_grid_thw");
        const qwen35_pixels got = qwen35_preprocess(img, c);
        CHECK(got.grid_t == want.grid_t);
        CHECK(got.grid_h == want.grid_h);
        CHECK(got.grid_w == want.grid_w);
        CHECK(got.patch_dim == want.patch_dim);
        REQUIRE(got.values.size() == want.values.size());
        const double err = unit_error(got, want, c);
        MESSAGE(std::string(up ? "upscaled" : "downscaled") << " grid " << got.grid_h << "x" << got.grid_w
                                                 << ": max |diff| on [0,1] " << err);
        CHECK(err <= 1e-2);
        // Normalized values: the same rounding as the processor's fp32 arithmetic.
        CHECK(rel_error(got.values, want.values) <= 1e-6);
    }
}

TEST_CASE("qwen35 vision: preprocessor config errors name the file and key") {
    const fs::path dir = fs::temp_directory_path() / ("hlwq_qwen35_image_cfg_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const auto write = [&](const std::string& text) { std::ofstream(dir / "preprocessor_config.json") << text; };
    write(R"({"resample": 1})");
    CHECK_THROWS_WITH_AS(qwen35_image_config::load(dir), doctest::Contains("'resample' is 1"), std::runtime_error);
    write(R"({"patch_size": -3})");
    CHECK_THROWS_WITH_AS(qwen35_image_config::load(dir), doctest::Contains("'patch_size' must be a positive integer"),
                         std::runtime_error);
    write("{not json");
    CHECK_THROWS_WITH_AS(qwen35_image_config::load(dir), doctest::Contains("not valid JSON"), std::runtime_error);
    write(R"({"min_pixels": 100, "max_pixels": 200, "image_mean": [0.5, 0.5, 0.5], "image_std": 0.25})");
    const qwen35_image_config c = qwen35_image_config::load(dir);
    CHECK(c.min_pixels == 100);
    CHECK(c.max_pixels == 200);
    CHECK(c.image_std[2] == 0.25f);
    fs::remove(dir / "preprocessor_config.json");
    CHECK_THROWS_WITH_AS(qwen35_image_config::load(dir), doctest::Contains("preprocessor_config.json: not found"),
                         std::runtime_error);
    fs::remove_all(dir);
}

TEST_CASE("qwen35 vision: the vision tower's output matches transformers") {
    const vision_ref ref;
    const auto model = open_qwen35(fixture, exact_options());
    REQUIRE(model->has_vision());
    const qwen35_vision_output out = model->encode_image(ref.pixels("pixel_values", "image_grid_thw"));
    const double hidden_err = rel_error(out.hidden, ref.floats("vision_hidden"));
    const double merged_err = rel_error(out.merged, ref.floats("image_embeds"));
    MESSAGE("vision blocks: " << hidden_err << ", merger (image embeddings): " << merged_err << " of max|.|");
    CHECK(hidden_err <= 1e-4);
    CHECK(merged_err <= 1e-4);
}

TEST_CASE("qwen35 vision: logits of a prompt holding the image match transformers") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids");
    const std::vector<float> want = ref.floats("logits");
    const qwen35_pixels pixels = ref.pixels("pixel_values", "image_grid_thw");
    // Chunks of 64 (all at once), 7 (the image split across chunks) and 1 (token by token).
    for (const std::size_t chunk : {std::size_t{64}, std::size_t{7}, std::size_t{1}}) {
        const auto model = open_qwen35(fixture, exact_options(chunk));
        const std::size_t tokens = model->add_image(pixels);
        CHECK(tokens == pixels.patches() / 4);
        CHECK(model->pending_image_tokens() == tokens);
        CHECK(std::count(ids.begin(), ids.end(), model->image_token_id()) == static_cast<std::ptrdiff_t>(tokens));
        const std::vector<float> got = all_logits(*model, ids);
        CHECK(model->pending_image_tokens() == 0);
        const double err = rel_error(got, want);
        MESSAGE("prefill chunk " << chunk << ": logits within " << err << " of max|logit|");
        CHECK(err <= 1e-4);
    }
    // The placeholder the processor expands an image to.
    const auto model = open_qwen35(fixture, exact_options());
    const std::vector<std::int32_t> ph = model->image_placeholder(pixels.patches() / 4);
    const auto first = std::find(ids.begin(), ids.end(), ph.front());
    REQUIRE(first != ids.end());
    CHECK(std::vector<std::int32_t>(first, first + static_cast<std::ptrdiff_t>(ph.size())) == ph);
    // Without the image the pads are ordinary tokens: the logits differ.
    const double no_image = rel_error(all_logits(*model, ids), want);
    MESSAGE("without the image: " << no_image);
    CHECK(no_image > 1e-2);
}

TEST_CASE("qwen35 vision: end to end from image.png") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids");
    // Through causal_lm's image interface, as the chat program uses it.
    std::unique_ptr<causal_lm> model = load_qwen35(fixture, exact_options());
    REQUIRE(model->has_vision());
    CHECK(model->image_token_id() == 500);
    const std::vector<std::int32_t> pads = model->queue_image(load_image(fixture / "image.png"));
    CHECK(pads == std::vector<std::int32_t>(12, 500));  // 6 x 8 patches merged 2 x 2
    CHECK(model->pending_image_tokens() == 12);
    CHECK(static_cast<std::size_t>(std::count(ids.begin(), ids.end(), model->image_token_id())) == pads.size());
    const double err = rel_error(all_logits(*model, ids), ref.floats("logits"));
    MESSAGE("end to end from the PNG: logits within " << err << " of max|logit|");
    CHECK(err <= 1e-4);
}

TEST_CASE("qwen35 vision: greedy tokens equal generate()") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids"), want = ref.ids("greedy_ids");
    for (const int kv_bits : {32, 0}) {
        model_options o = exact_options();
        o.kv_bits = kv_bits;
        const auto model = open_qwen35(fixture, o);
        model->add_image(ref.pixels("pixel_values", "image_grid_thw"));
        std::vector<float> logits(model->vocab_size());
        model->forward(ids, logits, false);
        std::vector<std::int32_t> got;
        for (std::size_t i = 0; i < want.size(); ++i) {
            const auto next = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            got.push_back(next);
            model->forward(std::span<const std::int32_t>(&next, 1), logits, false);
        }
        INFO("kv_bits " << kv_bits);
        CHECK(got == want);
        // reset() forgets the image and the position offset: the same run again.
        model->reset();
        model->add_image(ref.pixels("pixel_values", "image_grid_thw"));
        std::vector<float> again(model->vocab_size());
        model->forward(ids, again, false);
        CHECK(static_cast<std::int32_t>(std::max_element(again.begin(), again.end()) - again.begin()) == want[0]);
    }
}

TEST_CASE("qwen35 vision: truncate(0) keeps the queued image, reset() drops it") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids");
    const auto model = open_qwen35(fixture, exact_options());
    model->add_image(ref.pixels("pixel_values", "image_grid_thw"));
    std::vector<float> first(3 * model->vocab_size());
    model->forward(std::span(ids).first(3), first, true);  // text only: the image stays queued
    CHECK(model->pending_image_tokens() == 12);
    model->truncate(0);  // a prompt fed again from the start (chat_session)
    CHECK(model->pending_image_tokens() == 12);
    CHECK(rel_error(all_logits(*model, ids), ref.floats("logits")) <= 1e-4);
    model->add_image(ref.pixels("pixel_values", "image_grid_thw"));
    model->reset();
    CHECK(model->pending_image_tokens() == 0);
}

namespace {

/// The fixture as an HLWQ folder at `out`: every 2-D linear weight of the text model and the
/// vision tower (not the embeddings, the position table, the Conv3d or conv1d) quantized at
/// `bits` in blocks of 32 columns, or, with `dequantized`, those weights replaced by their
/// dequantized fp32 (quantized_folder.hpp).
void write_hlwq(const fs::path& out, int bits, bool dequantized) {
    test::write_quantized_folder(fixture, out, bits, dequantized, [](std::string_view n, const hlwq::io::tensor_view& v) {
        return v.shape.size() == 2 && n.ends_with(".weight") && n.find("embed") == std::string_view::npos;
    });
}

}  // namespace

// The tower's linear layers run through linear.hpp, so HLWQ codes work there too
// (hlwq-quantize --include-vision). The products on the codes equal fp32 products on the
// dequantized weights up to fp32 rounding (≈1e-6 relative per product) times the amplification
// of these O(1)-weight models (see test_qwen35.cpp), hence 1e-4 as for the fp32 parity
// (measured ≤ 6e-6); the error against transformers is the quantization's and is only reported.
TEST_CASE("qwen35 vision: HLWQ weights in the tower and the text model (codes == dequantized fp32)") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids");
    const qwen35_pixels pixels = ref.pixels("pixel_values", "image_grid_thw");
    for (const int bits : {8, 4}) {
        CAPTURE(bits);
        const fs::path base = fs::temp_directory_path() /
                              ("hlwq_qwen35_vision_q" + std::to_string(bits) + "_" + std::to_string(::getpid()));
        fs::remove_all(base);
        write_hlwq(base / "codes", bits, false);
        write_hlwq(base / "dequantized", bits, true);
        const auto q = open_qwen35(base / "codes", exact_options());
        const auto d = open_qwen35(base / "dequantized", exact_options());
        CHECK(q->description().find("PQ" + std::to_string(bits)) != std::string::npos);
        const double tower = rel_error(q->encode_image(pixels).merged, d->encode_image(pixels).merged);
        const double tower_ref = rel_error(q->encode_image(pixels).merged, ref.floats("image_embeds"));
        // End to end from the PNG through queue_image (preprocessor_config.json of the folder).
        const std::size_t pads = q->queue_image(load_image(fixture / "image.png")).size();
        d->add_image(pixels);
        CHECK(pads == 12);
        const std::vector<float> got = all_logits(*q, ids);
        const double logits = rel_error(got, all_logits(*d, ids)), logits_ref = rel_error(got, ref.floats("logits"));
        MESSAGE("PQ" << bits << ": image embeddings codes vs dequantized " << tower << " (vs transformers "
                     << tower_ref << "), logits " << logits << " (vs transformers " << logits_ref << ")");
        CHECK(tower <= 1e-4);
        CHECK(logits <= 1e-4);
        fs::remove_all(base);
    }
}

TEST_CASE("qwen35 vision: errors") {
    const vision_ref ref;
    const auto model = open_qwen35(fixture, exact_options());
    qwen35_pixels bad = ref.pixels("pixel_values", "image_grid_thw");
    bad.patch_dim = 100;
    CHECK_THROWS_WITH_AS(model->encode_image(bad), doctest::Contains("patches of 100 values"), std::invalid_argument);
    qwen35_pixels odd = ref.pixels("pixel_values", "image_grid_thw");
    odd.grid_h = 3;
    odd.grid_w = 16;  // same patch count, rows not a multiple of merge
    CHECK_THROWS_WITH_AS(model->encode_image(odd), doctest::Contains("not a multiple of the merge size"),
                         std::invalid_argument);
    // A text-only folder has no vision tower.
    const auto text = open_qwen35(fs::path(HLWQ_FIXTURES_DIR) / "qwen35" / "dense", exact_options());
    CHECK_FALSE(text->has_vision());
    CHECK(text->image_token_id() == -1);
    CHECK_THROWS_WITH_AS(text->queue_image(load_image(fixture / "image.png")), doctest::Contains("does not read images"),
                         std::runtime_error);
    CHECK_THROWS_WITH_AS(text->image_config(), doctest::Contains("no vision tower"), std::runtime_error);
    // An image the processor refuses (aspect ratio above 200), and a tiny one it upscales.
    const rgb_image thin{300, 1, std::vector<std::uint8_t>(300 * 3, 100)};
    CHECK_THROWS_WITH_AS(model->queue_image(thin), doctest::Contains("aspect ratio"), std::invalid_argument);
    CHECK(model->pending_image_tokens() == 0);
    const rgb_image tiny{4, 4, std::vector<std::uint8_t>(4 * 4 * 3, 100)};
    CHECK(model->queue_image(tiny).size() == 4);  // min_pixels 1024: 32 x 32 = 4 x 4 patches
    model->reset();
    CHECK(model->pending_image_tokens() == 0);
}

#ifdef HLWQ_QWEN35_CHAT_EXE
namespace {

/// Runs qwen35_chat with `args`; returns (exit status, stdout).
std::pair<int, std::string> run_qwen35_chat(const std::vector<std::string>& args) {
    std::string cmd = std::string("'") + HLWQ_QWEN35_CHAT_EXE + "'";
    for (const auto& a : args) cmd += " '" + a + "'";
    cmd += " 2>/dev/null </dev/null";
    std::string out;
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int status = ::pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string join(const std::vector<std::int32_t>& ids) {
    std::string s;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(ids[i]);
    }
    return s;
}

}  // namespace

TEST_CASE("qwen35_chat: --ids --image --logits-out and --greedy equal transformers") {
    const vision_ref ref;
    const std::vector<std::int32_t> ids = ref.ids("input_ids");
    const fs::path out = fs::temp_directory_path() / ("hlwq_qwen35_vision_logits_" + std::to_string(::getpid()) +
                                                      ".safetensors");
    const std::string png = (fixture / "image.png").string();
    const auto [rc, text] = run_qwen35_chat({"--model", fixture.string(), "--ids", join(ids), "--image", png,
                                             "--logits-out", out.string(), "--kv-bits", "32", "--exact", "--threads",
                                             "2"});
    REQUIRE(rc == 0);
    {
        const auto file = hlwq::io::safetensors_file::open(out);
        const auto view = file.view("logits");
        std::vector<float> got(view.numel());
        view.copy_to(std::span<float>(got));
        const double err = rel_error(got, ref.floats("logits"));
        MESSAGE("qwen35_chat --image --logits-out: within " << err << " of max|logit|");
        CHECK(err <= 1e-4);
    }
    fs::remove(out);
    const auto [rc2, greedy] = run_qwen35_chat({"--model", fixture.string(), "--ids", join(ids), "--image", png,
                                                "--greedy", "12", "--kv-bits", "32", "--exact", "--threads", "2"});
    REQUIRE(rc2 == 0);
    CHECK(greedy == join(ref.ids("greedy_ids")) + "\n");
    // A text-only model refuses --image with a clear error (exit status 1).
    const auto [rc3, none] = run_qwen35_chat({"--model", (fs::path(HLWQ_FIXTURES_DIR) / "qwen35" / "dense").string(),
                                              "--ids", "1,2", "--image", png, "--greedy", "1"});
    CHECK(rc3 == 1);
    CHECK(none.empty());
}
#endif
