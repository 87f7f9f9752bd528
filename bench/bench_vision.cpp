// SPDX-License-Identifier: MIT
// Image encode time (issue 7): a synthetic 896 × 896 RGB image through Gemma 4's image
// processor, vision tower and multimodal embedder (what queue_image does before the prompt
// runs), next to the text model's prefill of as many tokens as the image becomes (the
// baseline, same run), on a random-weight Gemma4ForConditionalGeneration folder.
//
//   vision/<size>/text_prefill_<N>   forward over N text tokens (bf16 weights; baseline)
//   vision/<size>/encode_896         preprocess + tower + embed_vision, bf16 tower
//   vision/<size>/encode_896_PQ4     the same with the tower's linear layers at 4 bits, as
//                                    hlwq-quantize --include-vision writes them (the patch
//                                    and output embedders stay bf16: it keeps "embed" names)
//
// N = the image's soft tokens after pooling: with the processor's defaults (max_soft_tokens
// 280, patch 16, pooling 3) 896 × 896 is resized to 768 × 768 = 48 × 48 patches = 256 soft
// tokens. Items are tokens (the image's N soft tokens, or the N prompt tokens).
//
// --vision_size=base (default): the tower of transformers 5.17's Gemma4VisionConfig defaults
// (16 layers, hidden 768, MLP 3072, 12 heads of 64, position table 2 × 10240), on the ~1B text
// model of bench_gemma4 (gemma4_spec.hpp). --vision_size=tiny is the ctest smoke run (same
// image, small tower and text model). Each benchmark runs once (twice for tiny): a full-size
// tower takes tens of seconds per image on a few cores.
#include "gemma4.hpp"
#include "gemma4_image.hpp"
#include "gemma4_spec.hpp"
#include "model_bench.hpp"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using namespace hlwq_bench;

struct vision_size {
    std::string name;
    int layers = 0, hidden = 0, mlp = 0, heads = 0, head_dim = 0, positions = 0;
};

constexpr std::size_t kImageSide = 896;

std::vector<parameter> vision_parameters(const vision_size& v, const gemma4_size& text) {
    const std::string p = "model.vision_tower.";
    const std::int64_t H = v.hidden, q = std::int64_t{v.heads} * v.head_dim;
    std::vector<parameter> out{
        {p + "patch_embedder.input_proj.weight", {H, 3 * 16 * 16}, true, true},
        {p + "patch_embedder.position_embedding_table", {2, v.positions, H}},
        {"model.embed_vision.embedding_projection.weight", {text.hidden, H}, true, true},
    };
    for (int i = 0; i < v.layers; ++i) {
        const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
        for (const char* n : {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                              "post_feedforward_layernorm"})
            out.push_back({l + n + ".weight", {H}});
        out.push_back({l + "self_attn.q_norm.weight", {v.head_dim}});
        out.push_back({l + "self_attn.k_norm.weight", {v.head_dim}});
        out.push_back({l + "self_attn.q_proj.linear.weight", {q, H}, true});
        out.push_back({l + "self_attn.k_proj.linear.weight", {q, H}, true});
        out.push_back({l + "self_attn.v_proj.linear.weight", {q, H}, true});
        out.push_back({l + "self_attn.o_proj.linear.weight", {H, q}, true});
        out.push_back({l + "mlp.gate_proj.linear.weight", {v.mlp, H}, true});
        out.push_back({l + "mlp.up_proj.linear.weight", {v.mlp, H}, true});
        out.push_back({l + "mlp.down_proj.linear.weight", {H, v.mlp}, true});
    }
    return out;
}

model_spec multimodal_spec(const vision_size& v, const gemma4_size& text) {
    // The text model stays bf16 in the PQ4 folder too: only the tower is compared, and
    // quantizing ~1B text weights would only lengthen the run.
    std::vector<parameter> params = gemma4_parameters(text, "model.language_model.");
    for (auto& p : params) p.keep = true;
    for (auto& p : vision_parameters(v, text)) params.push_back(p);
    // Image token ids at the top of the vocabulary, above the text prompt's ids.
    const int image = text.vocab - 1, boi = text.vocab - 2, eoi = text.vocab - 3;
    const nlohmann::json config = {
        {"architectures", {"Gemma4ForConditionalGeneration"}},
        {"model_type", "gemma4"},
        {"text_config", gemma4_config(text)},
        {"vision_config",
         {{"model_type", "gemma4_vision"},
          {"hidden_size", v.hidden},
          {"intermediate_size", v.mlp},
          {"num_hidden_layers", v.layers},
          {"num_attention_heads", v.heads},
          {"num_key_value_heads", v.heads},
          {"head_dim", v.head_dim},
          {"hidden_activation", "gelu_pytorch_tanh"},
          {"rms_norm_eps", 1e-6},
          {"rope_parameters", {{"rope_type", "axial"}, {"rope_theta", 100.0}}},
          {"pooling_kernel_size", 3},
          {"patch_size", 16},
          {"position_embedding_size", v.positions},
          {"use_clipped_linears", false},
          {"standardize", false}}},
        {"image_token_id", image},
        {"boi_token_id", boi},
        {"eoi_token_id", eoi},
        {"tie_word_embeddings", true}};
    model_spec spec{"vision", v.name, config, params, static_cast<std::size_t>(text.vocab)};
    // Gemma4ImageProcessor's defaults, written out as a published folder has them.
    spec.files["preprocessor_config.json"] = {{"image_processor_type", "Gemma4ImageProcessor"},
                                              {"patch_size", 16},
                                              {"max_soft_tokens", 280},
                                              {"pooling_kernel_size", 3},
                                              {"do_resize", true},
                                              {"resample", 3},
                                              {"do_rescale", true},
                                              {"rescale_factor", 1.0 / 255.0},
                                              {"do_normalize", false}};
    return spec;
}

/// A synthetic photo-like image: smooth gradients plus a texture, so that resizing does work.
hlwq::rt::rgb_image synthetic_image(std::size_t side) {
    hlwq::rt::rgb_image im{side, side, std::vector<std::uint8_t>(side * side * 3)};
    for (std::size_t y = 0; y < side; ++y)
        for (std::size_t x = 0; x < side; ++x) {
            std::uint8_t* px = im.pixels.data() + (y * side + x) * 3;
            px[0] = static_cast<std::uint8_t>((x * 255) / side);
            px[1] = static_cast<std::uint8_t>((y * 255) / side);
            px[2] = static_cast<std::uint8_t>((x * 7 + y * 13 + ((x ^ y) & 31)) & 255);
        }
    return im;
}

}  // namespace

int main(int argc, char** argv) {
    // --vision_size=base|tiny (ours), removed before google-benchmark parses the rest.
    const std::string size = take_flag(argc, argv, "vision_size", "base");
    vision_size v;
    gemma4_size text;
    if (size == "base") v = {"base", 16, 768, 3072, 12, 64, 10240}, text = gemma4_1b();
    else if (size == "tiny") v = {"tiny", 2, 64, 128, 2, 32, 64}, text = gemma4_tiny();
    else {
        std::fprintf(stderr, "bench_vision: --vision_size must be base or tiny\n");
        return 2;
    }
    const int iterations = size == "tiny" ? 2 : 1;
    static model_folders folders(multimodal_spec(v, text));
    static const hlwq::rt::rgb_image image = synthetic_image(kImageSide);

    // N from the processor itself, so that the baseline's name says what it was measured at.
    hlwq::rt::gemma4_image_config icfg;
    icfg.max_soft_tokens = 280;
    const std::size_t n = hlwq::rt::gemma4_preprocess(image, icfg).soft_tokens;
    std::printf("vision/%s: %zux%zu image -> %zu soft tokens; text_prefill_%zu is the baseline\n", v.name.c_str(),
                kImageSide, kImageSide, n, n);

    const std::string base = "vision/" + v.name + "/";
    const std::string prefill = base + "text_prefill_" + std::to_string(n);
    const std::string side = std::to_string(kImageSide);
    group_notes()["vision"] = "x memcpy column = time / " + prefill + "; items = tokens (N = " + std::to_string(n) + ")";
    speedup_note() = "bf16 tower's encode time / its time";

    add({prefill, "vision", 0, n, "", ""},
        [n](benchmark::State& st) {
            auto model = hlwq::rt::load_gemma4(folders.get(0), {});
            // ids below the image tokens: a text prompt of N tokens
            const auto ids = prompt_ids(folders.spec().vocab - 3, n);
            std::vector<float> logits(model->vocab_size());
            for (auto _ : st) {
                model->reset();
                model->forward(ids, logits, false);
                benchmark::DoNotOptimize(logits.data());
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * n));
        })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(iterations);
    for (int bits : {0, 4}) {
        const std::string name = base + "encode_" + side + (bits ? "_PQ" + std::to_string(bits) : "");
        add({name, "vision", 0, n, prefill, bits ? base + "encode_" + side : ""},
            [bits](benchmark::State& st) {
                auto model = hlwq::rt::load_gemma4(folders.get(bits), {});
                std::size_t tokens = 0;
                for (auto _ : st) {
                    model->reset();
                    const auto ids = model->queue_image(image);  // preprocess + tower + embed_vision
                    tokens = model->pending_image_tokens();
                    benchmark::DoNotOptimize(ids.data());
                }
                st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * tokens));
                st.counters["soft_tokens"] = static_cast<double>(tokens);
            })
            ->Unit(benchmark::kMillisecond)
            ->Iterations(iterations);
    }
    return run_main(argc, argv);
}
