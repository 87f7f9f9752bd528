// SPDX-License-Identifier: MIT
// Parity of the Gemma 4 text model (examples/runtime/gemma4.cpp) with transformers 5.17:
// the fixtures of tests/fixtures/gemma4 (tiny random models, fp32, made by make_fixtures.py)
// and, when present, the trained model ../shared/models/gemma4-gcide-tiny (bf16).
#include "gemma4.hpp"

#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/io/safetensors.hpp>
#include <hlwq/io/shards.hpp>
#include <hlwq/quantize.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;
using hlwq::rt::causal_lm;
using hlwq::rt::load_gemma4;
using hlwq::rt::model_options;

namespace {

const fs::path fixtures = HLWQ_GEMMA4_FIXTURES;
const char* const variants[] = {"dense", "ple_kv_shared", "k_eq_v", "moe"};

struct reference {
    std::vector<std::int32_t> ids, prompt, greedy;
    std::vector<float> logits;
};

std::vector<std::int32_t> ids_of(const hlwq::io::tensor_view& v) {
    std::vector<std::int64_t> raw(v.numel());
    v.copy_to(std::span<std::int64_t>(raw));
    return {raw.begin(), raw.end()};
}

reference read_reference(const fs::path& file, bool with_generation = true) {
    const auto f = hlwq::io::safetensors_file::open(file);
    reference r;
    r.ids = ids_of(f.view("input_ids"));
    const auto l = f.view("logits");
    r.logits.resize(l.numel());
    l.copy_to(std::span<float>(r.logits));
    if (with_generation) {
        r.prompt = ids_of(f.view("prompt_ids"));
        r.greedy = ids_of(f.view("greedy_ids"));
    }
    return r;
}

model_options opts(int kv_bits = 0, std::size_t chunk = 64, bool int8 = true) {
    return model_options{.threads = 2, .kv_bits = kv_bits, .int8_activations = int8, .max_context = 0, .prefill_chunk = chunk};
}

float max_abs(std::span<const float> a) {
    float m = 0;
    for (float x : a) m = std::max(m, std::abs(x));
    return m;
}

/// max|a - b| / max|b|.
double rel_max(std::span<const float> a, std::span<const float> b) {
    REQUIRE(a.size() == b.size());
    double e = 0;
    for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, static_cast<double>(std::abs(a[i] - b[i])));
    return e / max_abs(b);
}

std::vector<float> full_logits(causal_lm& m, std::span<const std::int32_t> ids) {
    m.reset();
    std::vector<float> out(ids.size() * m.vocab_size());
    m.forward(ids, out, true);
    return out;
}

/// Feeds ids in pieces of `step` tokens (one forward call each), collecting every logit row.
std::vector<float> stepped_logits(causal_lm& m, std::span<const std::int32_t> ids, std::size_t step) {
    m.reset();
    const std::size_t V = m.vocab_size();
    std::vector<float> out(ids.size() * V);
    for (std::size_t t = 0; t < ids.size(); t += step) {
        const std::size_t n = std::min(step, ids.size() - t);
        m.forward(ids.subspan(t, n), std::span<float>(out.data() + t * V, n * V), true);
    }
    return out;
}

std::int32_t argmax(std::span<const float> row) {
    return static_cast<std::int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

/// Greedy decoding as generate() does it: the prompt, then one token at a time through the
/// cache; stops after `count` tokens or at `eos` (included).
std::vector<std::int32_t> greedy(causal_lm& m, std::span<const std::int32_t> prompt, std::size_t count,
                                 std::int32_t eos = -1) {
    m.reset();
    std::vector<float> row(m.vocab_size());
    m.forward(prompt, row, false);
    std::vector<std::int32_t> out;
    while (true) {
        out.push_back(argmax(row));
        if (out.size() == count || out.back() == eos) break;
        m.forward(std::span<const std::int32_t>(&out.back(), 1), row, false);
    }
    return out;
}

std::string ids_str(const std::vector<std::int32_t>& v) {
    std::ostringstream s;
    for (std::size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
    return s.str();
}

/// A fresh temporary folder, removed at the end of the scope.
struct temp_dir {
    fs::path path;
    explicit temp_dir(const std::string& tag) {
        path = fs::temp_directory_path() / ("hlwq_gemma4_" + tag + "_" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

#ifdef HLWQ_QUANTIZE_EXE
/// Runs hlwq-quantize IN OUT <args>; returns OUT.
fs::path quantize(const fs::path& in, const fs::path& out, const std::string& args) {
    const std::string cmd = std::string("\"") + HLWQ_QUANTIZE_EXE + "\" \"" + in.string() + "\" \"" + out.string() +
                            "\" " + args + " --threads 2 --force > \"" + out.string() + ".log\" 2>&1";
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "hlwq-quantize failed: " << cmd);
    return out;
}

/// Runs hlwq-quantize IN OUT --bits N; returns OUT.
fs::path quantize(const fs::path& in, const fs::path& out, int bits) {
    return quantize(in, out, "--bits " + std::to_string(bits));
}
#endif

/// Writes the HLWQ folder `in` as an original folder `out` whose quantized parameters are
/// their dequantized fp32 values: the dense model that the quantized one must compute.
void write_dequantized(const fs::path& in, const fs::path& out) {
    const auto ck = hlwq::io::checkpoint::open(in);
    fs::create_directories(out);
    std::vector<hlwq::io::tensor_spec> specs;
    for (const auto& n : ck.names())
        specs.push_back({n, ck.is_quantized(n) ? hlwq::io::dtype::f32 : ck.dense(n).type, ck.shape(n)});
    hlwq::io::safetensors_writer w(out / "model.safetensors", specs);
    for (const auto& n : ck.names()) {
        if (!ck.is_quantized(n)) {
            w.write(n, ck.dense(n).data);
            continue;
        }
        std::vector<float> all;
        const std::size_t experts = ck.experts(n);
        for (std::size_t e = 0; e < std::max<std::size_t>(1, experts); ++e) {
            const hlwq::quantized_view q = experts ? ck.quantized(n, e) : ck.quantized(n);
            std::vector<float> part(q.rows * q.cols);
            hlwq::dequantize(q, part);
            all.insert(all.end(), part.begin(), part.end());
        }
        w.write(n, std::span<const float>(all));
    }
    w.finish();
    nlohmann::json config = ck.config();
    config.erase("quantization_config");
    std::ofstream(out / "config.json") << config.dump(1);
}

/// Writes the original folder `in` as an HLWQ folder `out` in which only the 2-D tensors whose
/// name contains `what` are quantized, at `bits` with blocks of `block` columns (the per-layer
/// embeddings of ple_kv_shared are 48 columns wide, below the 128 of hlwq-quantize). Returns `out`.
fs::path quantize_only(const fs::path& in, const fs::path& out, const std::string& what, int bits, std::size_t block) {
    const auto ck = hlwq::io::checkpoint::open(in);
    fs::create_directories(out);
    hlwq::io::quantization_config qc;
    qc.bits = bits;
    qc.block_size = block;
    std::vector<hlwq::io::tensor_spec> specs;
    std::vector<std::pair<std::string, hlwq::quantized_matrix>> quantized;
    for (const auto& n : ck.names()) {
        const auto shape = ck.shape(n);
        if (n.find(what) == std::string::npos || shape.size() != 2) {
            specs.push_back({n, ck.dense(n).type, shape});
            continue;
        }
        std::vector<float> w(ck.dense(n).numel());
        ck.dense(n).copy_to(std::span<float>(w));
        quantized.emplace_back(n, hlwq::quantize(w, static_cast<std::size_t>(shape[0]), static_cast<std::size_t>(shape[1]),
                                                 bits, {.block = block}));
        for (auto& sp : hlwq::io::quantized_tensor_specs(n, shape, bits, block)) specs.push_back(std::move(sp));
        qc.tensors[n] = {shape, bits, ""};
    }
    REQUIRE_MESSAGE(!quantized.empty(), in << " has no 2-D tensor named *" << what << "*");
    hlwq::io::safetensors_writer w(out / "model.safetensors", specs);
    for (const auto& n : ck.names())
        if (!qc.tensors.contains(n)) w.write(n, ck.dense(n).data);
    for (const auto& [n, q] : quantized) hlwq::io::write_quantized(w, n, q);
    w.finish();
    std::ofstream(out / "config.json") << hlwq::io::with_quantization_config(ck.config(), qc).dump(1);
    return out;
}

}  // namespace

// Why max|Δ| ≤ 1e-4 · max|logit| holds in fp32 (fp32 KV cache, kv_bits 32): both sides
// compute the same fp32 operations on the same fp32 weights, differing only in summation order
// (dot products of 32..256 terms, softmax sums) and in libm vs. torch rounding of
// exp/tanh/cos/sin: each costs a few ulps (2^-24 ≈ 6e-8) relative to the magnitudes summed.
// RMSNorm after every block keeps activations O(1); these O(1)-weight models amplify a
// perturbation by a few tens over six layers (measured: ~1e-6 of max|logit|), so 1e-4 leaves a
// margin of 100x while any wrong formula (a norm, a RoPE pair, a mask position) moves logits by
// 1e-2 or more.
// The default fp16 cache rounds every key and value to 11 significant bits (2.4e-4 relative),
// which moves the logits by about 3e-4 of max|logit| (printed): parity is checked on the fp32
// cache, and the fp16 cache on the greedy tokens.
TEST_CASE("fixtures: full-sequence logits match transformers") {
    for (const std::string v : variants) {
        CAPTURE(v);
        const auto ref = read_reference(fixtures / v / "reference.safetensors");
        auto m = load_gemma4(fixtures / v, opts(32));
        REQUIRE(m->vocab_size() == 512);
        const auto got = full_logits(*m, ref.ids);
        const double e = rel_max(got, ref.logits);
        auto m16 = load_gemma4(fixtures / v, opts());
        const double e16 = rel_max(full_logits(*m16, ref.ids), ref.logits);
        MESSAGE(v << ": max|dlogit| / max|logit| = " << e << " (fp16 cache: " << e16 << "; max|logit| "
                  << max_abs(ref.logits) << "); " << m->description());
        CHECK(e <= 1e-4);
        CHECK(m->position() == ref.ids.size());
        CHECK(m->cache_bytes() > 0);
        CHECK(m->weight_bytes() > 0);
    }
}

TEST_CASE("fixtures: token by token and chunks of 5 give the full-sequence logits") {
    for (const std::string v : variants) {
        CAPTURE(v);
        const auto ref = read_reference(fixtures / v / "reference.safetensors");
        auto m = load_gemma4(fixtures / v, opts());
        const auto full = full_logits(*m, ref.ids);
        const auto one = stepped_logits(*m, ref.ids, 1);
        // Chunked prefill inside one call (prefill_chunk 5) and five tokens per call.
        auto m5 = load_gemma4(fixtures / v, opts(0, 5));
        const auto chunked = full_logits(*m5, ref.ids);
        const auto calls = stepped_logits(*m5, ref.ids, 5);
        // Same arithmetic per token either way (the dense products and attention compute each
        // row alone); the bound only leaves room for summation-order differences.
        CHECK(rel_max(one, full) <= 1e-5);
        CHECK(rel_max(chunked, full) <= 1e-5);
        CHECK(rel_max(calls, full) <= 1e-5);
        MESSAGE(v << ": token by token " << rel_max(one, full) << ", chunks of 5 " << rel_max(chunked, full));
    }
}

TEST_CASE("fixtures: greedy decoding through the cache equals generate()") {
    for (const std::string v : variants) {
        for (int kv : {0, 32}) {
            CAPTURE(v);
            CAPTURE(kv);
            const auto ref = read_reference(fixtures / v / "reference.safetensors");
            auto m = load_gemma4(fixtures / v, opts(kv));
            const auto got = greedy(*m, ref.prompt, ref.greedy.size());
            CHECK_MESSAGE(got == ref.greedy, "got " << ids_str(got) << " want " << ids_str(ref.greedy));
            CHECK(m->position() == ref.prompt.size() + ref.greedy.size() - 1);
        }
    }
}

// An HLWQ KV cache stores each key/value as codes of its rotated, normalized vector: at 4 bits
// the Lloyd-Max distortion is about 0.0095 of the squared norm, ~10% rms per vector, and the
// fixtures' logits move by 9..18% of max|logit| at 4 bits, 22..35% at 2 (printed, not bounded
// here; the real trained model below bounds it). Checked: chunked prefill and token-by-token decoding read the
// compressed cache identically.
TEST_CASE("fixtures: HLWQ KV cache (kv_bits 2..4) stays close to the fp32 cache") {
    for (const std::string v : variants) {
        CAPTURE(v);
        const auto ref = read_reference(fixtures / v / "reference.safetensors");
        auto base = load_gemma4(fixtures / v, opts(32));
        const auto exact = full_logits(*base, ref.ids);
        std::ostringstream line;
        for (int bits : {4, 3, 2}) {
            auto m = load_gemma4(fixtures / v, opts(bits));
            const auto got = full_logits(*m, ref.ids);
            const double e = rel_max(got, exact);
            line << " PQ" << bits << " " << e;
            // Chunked prefill and decoding agree on a compressed cache too.
            CHECK(rel_max(stepped_logits(*m, ref.ids, 1), got) <= 1e-4);
        }
        MESSAGE(v << ": KV cache max|dlogit|/max|logit| vs fp32 cache:" << line.str());
    }
}

TEST_CASE("truncate: back to a prefix, then the same continuation") {
    const auto ref = read_reference(fixtures / "dense" / "reference.safetensors");
    auto m = load_gemma4(fixtures / "dense", opts(0, 4));
    const auto full = full_logits(*m, ref.ids);
    const std::size_t V = m->vocab_size();
    // Full-attention layers can always go back; the sliding ring (window 8, chunk 4: 11 slots)
    // only while it still holds the 7 positions before the new one.
    m->truncate(36);
    CHECK(m->position() == 36);
    std::vector<float> out(4 * V);
    m->forward(std::span<const std::int32_t>(ref.ids).subspan(36, 4), out, true);
    CHECK(rel_max(out, std::span<const float>(full).subspan(36 * V, 4 * V)) <= 1e-5);
    CHECK_THROWS_WITH_AS(m->truncate(20), doctest::Contains("sliding-window cache"), std::invalid_argument);
    CHECK(m->position() == 40);
    CHECK_THROWS_AS(m->truncate(41), std::invalid_argument);
    m->truncate(0);
    CHECK(m->position() == 0);
}

TEST_CASE("forward: bad input is an std::invalid_argument and leaves the model usable") {
    const auto ref = read_reference(fixtures / "dense" / "reference.safetensors");
    model_options o = opts();
    o.max_context = 16;
    auto m = load_gemma4(fixtures / "dense", o);
    std::vector<float> row(m->vocab_size());
    const std::int32_t bad[] = {5, 512};
    CHECK_THROWS_WITH_AS(m->forward(bad, row, false), doctest::Contains("outside the vocabulary"), std::invalid_argument);
    const std::int32_t neg[] = {-1};
    CHECK_THROWS_AS(m->forward(neg, row, false), std::invalid_argument);
    std::vector<float> small(3);
    CHECK_THROWS_AS(m->forward(std::span<const std::int32_t>(ref.ids).first(2), small, false), std::invalid_argument);
    CHECK_THROWS_AS(m->forward(std::span<const std::int32_t>(ref.ids).first(2), row, true), std::invalid_argument);
    CHECK_THROWS_WITH_AS(m->forward(std::span<const std::int32_t>(ref.ids).first(17), row, false),
                         doctest::Contains("exceed the context"), std::invalid_argument);
    CHECK_THROWS_AS(m->forward({}, row, false), std::invalid_argument);
    CHECK(m->position() == 0);
    CHECK(m->max_context() == 16);
    m->forward(std::span<const std::int32_t>(ref.ids).first(16), row, false);
    CHECK(m->position() == 16);
}

namespace {

/// Writes a copy of fixture `variant` whose config.json is edited by `edit` (the weights are
/// linked, not copied) and returns the error message load_gemma4 throws for it ("" if none).
std::string load_error(const std::string& variant, const std::function<void(nlohmann::json&)>& edit,
                       const std::function<void(const fs::path&)>& weights = {}) {
    temp_dir dir("err");
    std::ifstream in(fixtures / variant / "config.json");
    nlohmann::json j = nlohmann::json::parse(in);
    edit(j);
    std::ofstream(dir.path / "config.json") << j.dump(1);
    if (weights) weights(dir.path);
    else fs::create_symlink(fs::absolute(fixtures / variant / "model.safetensors"), dir.path / "model.safetensors");
    try {
        load_gemma4(dir.path, opts());
    } catch (const std::runtime_error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("config and weights: clear errors") {
    CHECK(load_error("dense", [](nlohmann::json&) {}) == "");
    CHECK_MESSAGE(load_error("dense", [](nlohmann::json& j) { j.erase("hidden_size"); })
                      .find("key 'hidden_size' is missing") != std::string::npos, "");
    CHECK(load_error("dense", [](nlohmann::json& j) { j["num_attention_heads"] = "four"; })
              .find("'num_attention_heads' must be a positive integer") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["use_bidirectional_attention"] = "all"; })
              .find("'use_bidirectional_attention' = \"all\" is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["use_bidirectional_attention"] = "vision"; }) == "");
    CHECK(load_error("dense", [](nlohmann::json& j) { j["hidden_activation"] = "relu"; })
              .find("'hidden_activation' = \"relu\" is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["attention_bias"] = true; })
              .find("'attention_bias' = true is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["rope_parameters"]["full_attention"]["rope_type"] = "yarn"; })
              .find("rope_parameters.full_attention.rope_type' = \"yarn\" is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["layer_types"][0] = "chunked_attention"; })
              .find("'layer_types' entry 0 = \"chunked_attention\" is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["per_layer_config"]["2"]["sliding_window"] = 4; })
              .find("per_layer_config.2.sliding_window' is not supported") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["model_type"] = "llama"; })
              .find("model_type \"llama\" is not a Gemma 4 text model") != std::string::npos);
    CHECK(load_error("moe", [](nlohmann::json& j) { j.erase("num_experts"); })
              .find("key 'num_experts' is missing") != std::string::npos);
    // Wrong shapes: a config that disagrees with the tensors names the tensor.
    CHECK(load_error("dense", [](nlohmann::json& j) { j["intermediate_size"] = 96; })
              .find("tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 128], expected [96, 128]") !=
          std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j["per_layer_config"]["2"]["head_dim"] = 16; })
              .find("layers 2 and 5 of one type have different head_dim") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) {
              j["per_layer_config"]["2"]["head_dim"] = 16;
              j["per_layer_config"]["5"]["head_dim"] = 16;
          }).find("tensor 'model.layers.2.self_attn.q_proj.weight' has shape [256, 128], expected [64, 128]") !=
          std::string::npos);
    // A missing tensor: the untied k_eq_v variant without lm_head, by claiming a PLE the file lacks.
    CHECK(load_error("dense", [](nlohmann::json& j) { j["hidden_size_per_layer_input"] = 8; })
              .find("'model.embed_tokens_per_layer.weight' is missing") != std::string::npos);
    // A multimodal config: the text model under text_config, tensors under model.language_model.
    CHECK(load_error("dense", [](nlohmann::json& j) {
              nlohmann::json text = j;
              j = {{"model_type", "gemma4"}, {"text_config", text}};
          }).find("'model.language_model.embed_tokens.weight' is missing") != std::string::npos);
    CHECK(load_error("dense", [](nlohmann::json& j) { j = {{"model_type", "gemma4"}}; })
              .find("key 'text_config' is missing") != std::string::npos);
    // kv_bits a model cannot use.
    model_options o = opts();
    o.kv_bits = 5;
    CHECK_THROWS_WITH_AS(load_gemma4(fixtures / "dense", o), doctest::Contains("kv_bits 5"), std::runtime_error);
    CHECK_THROWS_AS(load_gemma4(fixtures / "no_such_model", opts()), std::runtime_error);
}

// Quantized embeddings: an embedding lookup dequantizes its row from the codes
// (linear::row -> hlwq::dequantize_rows), which gives the very floats hlwq::dequantize writes
// into the dense folder; every other layer is the same dense tensor in both folders. So the
// hidden states are bit-identical, and so are the logits when the lm_head is not the quantized
// embedding (k_eq_v is untied; quantizing only embed_tokens_per_layer leaves the tied
// lm_head dense). With a tied lm_head the last product alone differs: matvec on the codes
// (fp32 activations) against the dense dot product of the same fp32 weights, a different
// summation order (see the 1e-4 argument above; nothing after it amplifies the difference).
// The quantized model must also differ from the original: PQ4 embeddings move these logits
// by 0.04..0.24 of max|logit| (printed); 1e-3 would be missed only if the codes were not read.
TEST_CASE("fixtures: quantized embeddings (embed_tokens, embed_tokens_per_layer) compute their dequantized model") {
    struct kase {
        std::string variant, what;
        bool exact;
    };
    const kase cases[] = {{"dense", "embed", false},
                          {"k_eq_v", "embed", true},
                          {"moe", "embed", false},
                          {"ple_kv_shared", "embed", false},
                          {"ple_kv_shared", "embed_tokens_per_layer", true}};
    for (const kase& c : cases) {
        CAPTURE(c.variant);
        CAPTURE(c.what);
        const auto ref = read_reference(fixtures / c.variant / "reference.safetensors");
        temp_dir dir("embed_" + c.variant + "_" + std::to_string(c.exact));
        const fs::path q = quantize_only(fixtures / c.variant, dir.path / "q", c.what, 4, 32);
        write_dequantized(q, dir.path / "dequantized");
        auto qm = load_gemma4(q, opts(32, 64, false));
        auto dq = load_gemma4(dir.path / "dequantized", opts(32));
        CHECK(qm->description().find("PQ4") != std::string::npos);
        const auto q_logits = full_logits(*qm, ref.ids), dq_logits = full_logits(*dq, ref.ids);
        const auto q_stepped = stepped_logits(*qm, ref.ids, 1);
        if (c.exact) {
            CHECK(q_logits == dq_logits);
            CHECK(q_stepped == stepped_logits(*dq, ref.ids, 1));
        } else {
            CHECK(rel_max(q_logits, dq_logits) <= 1e-4);
            CHECK(rel_max(q_stepped, dq_logits) <= 1e-4);
        }
        CHECK(greedy(*qm, ref.prompt, ref.greedy.size()) == greedy(*dq, ref.prompt, ref.greedy.size()));
        const double moved = rel_max(q_logits, ref.logits);
        MESSAGE(c.variant << ", PQ4 " << c.what << ": max|dlogit|/max|logit| vs transformers " << moved);
        CHECK(moved > 1e-3);
    }
}

// The model shipped in the repository (models/gemma4-gcide-tiny-hlwq-q4, README's main
// command): its size limits (16,000,000 bytes in all, and no file over the repository's
// 8,000,000: the weights are in shards listed by the index), its recipe (linear layers PQ4,
// token embeddings PQ8, tied lm_head on the embedding codes), and that it computes the dense
// model of its dequantized weights (fp32 activations and cache: every product differs only in
// fp32 summation order, the 1e-4 argument above), prefilled and token by token. The ids are
// arbitrary in-vocabulary tokens.
TEST_CASE("shipped model: under 16,000,000 bytes, no file over 8,000,000, PQ4 + PQ8 embeddings, computes its dequantized model") {
    const fs::path shipped = HLWQ_SHIPPED_MODEL;
    std::uintmax_t total = 0;
    for (const auto& e : fs::recursive_directory_iterator(shipped))
        if (e.is_regular_file()) {
            total += e.file_size();
            CHECK_MESSAGE(e.file_size() < 8'000'000, e.path() << ": " << e.file_size() << " bytes");
        }
    MESSAGE(shipped << ": " << total << " bytes");
    CHECK(total < 16'000'000);
    for (const char* f : {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                          "chat_template.jinja", "generation_config.json", "README.md"})
        CHECK_MESSAGE(fs::is_regular_file(shipped / f), f);
    const auto ck = hlwq::io::checkpoint::open(shipped);
    CHECK(ck.tensors().shards().size() > 1);
    REQUIRE(ck.is_quantized("model.embed_tokens.weight"));
    CHECK(ck.bits("model.embed_tokens.weight") == 8);
    CHECK(ck.bits("model.layers.0.self_attn.q_proj.weight") == 4);
    CHECK(ck.bits("model.layers.7.mlp.down_proj.weight") == 4);
    CHECK(ck.config()["quantization_config"]["recipe"] == "PQ4-E8");

    std::vector<std::int32_t> ids{2};
    std::uint32_t x = 12345;
    while (ids.size() < 96) {
        x = x * 1664525u + 1013904223u;
        ids.push_back(static_cast<std::int32_t>(4 + (x >> 8) % 8188));
    }
    temp_dir dir("shipped");
    write_dequantized(shipped, dir.path / "dequantized");
    auto qm = load_gemma4(shipped, opts(32, 64, false));
    auto dq = load_gemma4(dir.path / "dequantized", opts(32));
    CHECK(qm->description().find("PQ4+PQ8") != std::string::npos);
    const auto dq_logits = full_logits(*dq, ids);
    CHECK(rel_max(full_logits(*qm, ids), dq_logits) <= 1e-4);
    CHECK(rel_max(stepped_logits(*qm, ids, 1), dq_logits) <= 1e-4);
}

#ifdef HLWQ_QUANTIZE_EXE
// Quantized weights on the fixtures. At 8 bits each weight moves by ~0.6% rms (NMSE 4e-5);
// through six O(1)-weight layers the logits move by 1.5..3% of max|logit| (printed: the MoE
// variant more with int8 activations, where a router choice can flip). The fixtures are
// trained (make_fixtures.py), so their greedy path has a margin of at least 38% of max|logit|
// between the two best tokens, ten times that error: the greedy tokens of the PQ8 model must
// equal generate()'s, with fp32 and with int8 activations. Exactly checked
// at every width: the quantized model computes the model its codes define (the logits of the
// HLWQ folder with fp32 activations equal those of a dense folder holding the dequantized
// weights, prefilled or decoded token by token, and so do their greedy tokens). The error
// against transformers per bit width is printed.
TEST_CASE("fixtures: HLWQ weights from hlwq-quantize compute their dequantized model; logit error per bit width") {
    for (const std::string v : variants) {
        CAPTURE(v);
        const auto ref = read_reference(fixtures / v / "reference.safetensors");
        std::ostringstream line;
        std::size_t q8_same = 0;
        for (int bits = 8; bits >= 2; --bits) {
            CAPTURE(bits);
            temp_dir dir(v + "_q" + std::to_string(bits));
            const fs::path q = quantize(fixtures / v, dir.path / "model", bits);
            write_dequantized(q, dir.path / "dequantized");
            auto dq = load_gemma4(dir.path / "dequantized", opts(32));
            auto qm = load_gemma4(q, opts(32, 64, false));
            const auto dq_logits = full_logits(*dq, ref.ids);
            CHECK(rel_max(full_logits(*qm, ref.ids), dq_logits) <= 1e-4);
            CHECK(rel_max(stepped_logits(*qm, ref.ids, 1), dq_logits) <= 1e-4);
            CHECK(greedy(*qm, ref.prompt, ref.greedy.size()) == greedy(*dq, ref.prompt, ref.greedy.size()));
            for (bool int8 : {false, true}) {
                auto m = load_gemma4(q, opts(0, 64, int8));
                const double e = rel_max(full_logits(*m, ref.ids), ref.logits);
                line << " PQ" << bits << (int8 ? "/i8 " : " ") << e;
                if (bits == 8) {
                    const auto got = greedy(*m, ref.prompt, ref.greedy.size());
                    CHECK_MESSAGE(got == ref.greedy, "PQ8" << (int8 ? " int8" : "") << " greedy " << ids_str(got));
                    if (!int8)
                        while (q8_same < got.size() && got[q8_same] == ref.greedy[q8_same]) ++q8_same;
                    CHECK(m->description().find("PQ8") != std::string::npos);
                }
            }
        }
        MESSAGE(v << ": max|dlogit|/max|logit| vs transformers (fp32 / int8 activations):" << line.str()
                  << "; PQ8 greedy tokens equal to generate() for the first " << q8_same << " of "
                  << ref.greedy.size());
    }
}
#endif

#ifdef HLWQ_REAL_MODEL_DIR
namespace {
const fs::path real_model = HLWQ_REAL_MODEL_DIR;

struct generation {
    std::vector<std::int32_t> prompt, greedy;
};

std::vector<generation> real_generations() {
    std::ifstream in(real_model / "reference.json");
    const auto j = nlohmann::json::parse(in);
    std::vector<generation> out;
    for (const auto& g : j["generations"])
        out.push_back({g["prompt_ids"].get<std::vector<std::int32_t>>(), g["greedy_ids"].get<std::vector<std::int32_t>>()});
    return out;
}

void check_real(causal_lm& m, double tol, const std::string& what) {
    const auto ref = read_reference(real_model / "reference.safetensors", false);
    REQUIRE(m.vocab_size() == 8192);
    const auto t0 = std::chrono::steady_clock::now();
    const auto got = full_logits(m, ref.ids);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double e = rel_max(got, ref.logits);
    MESSAGE(what << ": max|dlogit|/max|logit| = " << e << " (max|logit| " << max_abs(ref.logits) << "), prefill "
                 << ref.ids.size() / secs << " tok/s; " << m.description());
    CHECK(e <= tol);
    std::size_t same = 0, total = 0;
    for (const auto& g : real_generations()) {
        const auto out = greedy(m, g.prompt, 32, 1);
        total += g.greedy.size();
        for (std::size_t i = 0; i < std::min(out.size(), g.greedy.size()) && out[i] == g.greedy[i]; ++i) ++same;
        if (tol <= 1e-3) CHECK_MESSAGE(out == g.greedy, "got " << ids_str(out) << " want " << ids_str(g.greedy));
    }
    MESSAGE(what << ": greedy continuations, matching prefix " << same << " of " << total << " tokens");
}
}  // namespace

// bf16 weights widen to fp32 exactly, so against transformers' fp32 forward pass (from the
// same bf16 weights) only the fp32 summation order differs (see the fixture bound above):
// the bound is 1e-4 of max|logit| with the fp32 KV cache. The default fp16 cache adds the
// rounding of keys and values to 11 bits; a trained model does not amplify it as the random
// fixtures do, and the greedy continuations must match with it as well.
TEST_CASE("real model gemma4-gcide-tiny: logits and greedy continuations match transformers") {
    auto m = load_gemma4(real_model, opts(32));
    check_real(*m, 1e-4, "gemma4-gcide-tiny bf16, f32 cache");
    auto m16 = load_gemma4(real_model, opts());
    check_real(*m16, 1e-3, "gemma4-gcide-tiny bf16, fp16 cache");
}

// HLWQ KV cache on a trained model: ~10% rms error per key/value vector at 4 bits; the worst
// logit over 128 positions x 8192 moves by 0.33 of max|logit| (measured PQ4/3/2: 0.33, 0.41,
// 0.67, printed). The bound, 0.5, is 1.5x the PQ4 value: a cache reading wrong slots or heads
// errs by more than max|logit|.
TEST_CASE("real model gemma4-gcide-tiny: HLWQ KV cache (kv_bits 2..4)") {
    const auto ref = read_reference(real_model / "reference.safetensors", false);
    for (int bits : {4, 3, 2}) {
        auto m = load_gemma4(real_model, opts(bits));
        const double e = rel_max(full_logits(*m, ref.ids), ref.logits);
        MESSAGE("gemma4-gcide-tiny bf16, KV PQ" << bits << ": max|dlogit|/max|logit| = " << e);
        if (bits == 4) CHECK(e <= 0.5);
    }
}

#ifdef HLWQ_QUANTIZE_EXE
// Quantization quality on a trained model (regression bounds, about 1.5x the measured
// values: PQ8 ~0.01, PQ4 ~0.16 of max|logit|; a wrong code path gives errors of order 1).
// The greedy agreement is printed; tiny models have near-ties, so it is not asserted.
// The shipped model is exactly what its README's command makes from gemma4-gcide-tiny: every
// shard and the index byte for byte (a change of the quantizer, the writer or the sharding
// shows up here: rebuild the shipped folder), and its
// logits stay within the PQ4 bound below (measured 0.16 of max|logit| with f32 and with int8
// activations, as plain PQ4 with bf16 embeddings; printed).
TEST_CASE("real model gemma4-gcide-tiny: the shipped PQ4-E8 model is hlwq-quantize --recipe PQ4-E8 of it") {
    const fs::path shipped = HLWQ_SHIPPED_MODEL;
    temp_dir dir("real_pq4e8");
    const fs::path q = quantize(real_model, dir.path / "model", "--recipe PQ4-E8 --max-shard-size 7MB");
    const auto slurp = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    };
    const auto weight_files = [](const fs::path& d) {  // the shards and the index
        std::set<std::string> names;
        for (const auto& e : fs::directory_iterator(d)) {
            const std::string n = e.path().filename().string();
            if (n.ends_with(".safetensors") || n == hlwq::io::shard_index_name) names.insert(n);
        }
        return names;
    };
    const std::set<std::string> files = weight_files(shipped);
    CHECK(files.contains(std::string(hlwq::io::shard_index_name)));
    CHECK(weight_files(q) == files);
    for (const std::string& f : files) CHECK_MESSAGE(slurp(q / f) == slurp(shipped / f), f);
    CHECK(nlohmann::json::parse(slurp(q / "config.json")) == nlohmann::json::parse(slurp(shipped / "config.json")));
    for (bool int8 : {false, true}) {
        auto m = load_gemma4(shipped, opts(0, 64, int8));
        check_real(*m, 0.25, std::string("shipped PQ4-E8") + (int8 ? " int8 activations" : " f32 activations"));
    }
}

TEST_CASE("real model gemma4-gcide-tiny: HLWQ Q4 and Q8 conversions") {
    for (int bits : {8, 4}) {
        temp_dir dir("real_q" + std::to_string(bits));
        const fs::path q = quantize(real_model, dir.path / "model", bits);
        for (bool int8 : {false, true}) {
            auto m = load_gemma4(q, opts(0, 64, int8));
            check_real(*m, bits == 8 ? 0.02 : 0.25,
                       "gemma4-gcide-tiny PQ" + std::to_string(bits) + (int8 ? " int8 activations" : " f32 activations"));
        }
    }
}
#endif
#endif
