// SPDX-License-Identifier: MIT
// The Gemma 4 text decoder as transformers 5.17 computes it (models/gemma4/modeling_gemma4.py:
// Gemma4TextModel + Gemma4ForCausalLM), in fp32, on a KV cache. The forward pass below reads
// top to bottom like Gemma4TextModel.forward / Gemma4TextDecoderLayer.forward:
//
//   h = embed_tokens(ids) · √hidden
//   [PLE] per_layer_inputs = (RMSNorm(per_layer_model_projection(h) / √hidden)
//                             + embed_tokens_per_layer(ids) · √ple_dim) / √2
//   for each layer:
//     x = input_layernorm(h)
//     q = RoPE(q_norm(q_proj x));  k = RoPE(k_norm(k_proj x));  v = v_norm(v_proj x)
//        (attention_k_eq_v on full layers: v = v_norm(k_proj x), before k_norm; KV-shared
//         layers take k, v from the last earlier non-shared layer of their type)
//     h = h + post_attention_layernorm(o_proj softmax(q kᵀ · 1, causal[, window]) v)
//     m = mlp(pre_feedforward_layernorm(h))                 (double width on KV-shared layers)
//     [MoE] m = post_feedforward_layernorm_1(m)
//             + post_feedforward_layernorm_2(experts(pre_feedforward_layernorm_2(h), router(h)))
//     h = h + post_feedforward_layernorm(m)
//     [PLE] h = h + post_per_layer_input_norm(per_layer_projection(act(per_layer_input_gate h)
//                                                                  · per_layer_inputs[layer]))
//     h = h · layer_scalar
//   logits = softcap(lm_head(norm(h)))                      (lm_head = embed_tokens if tied)
//
// Norms are Gemma 4's RMSNorm: x · (mean(x²) + eps)^-½ · weight (no 1 + weight); v_norm and the
// router norm have no weight. Attention scaling is 1 (q/k norms do the scaling). Sliding layers
// use the "default" RoPE, full layers the "proportional" one (rotating only the first
// partial_rotary_factor of the angle pairs), each with the head_dim of its layer type.
//
// Images (Gemma4Model.forward): h at an image token is its image's embedding from
// gemma4_vision.cpp (not scaled), and image/video/audio tokens look up the pad token for the
// embedding and the PLE; with use_bidirectional_attention "vision" an image's tokens also see
// the later tokens of the same image on sliding layers (create_masks_for_vision_model).
#include "gemma4.hpp"

#include "float_tensor.hpp"
#include "gemma4_image.hpp"
#include "gemma4_vision.hpp"
#include "image.hpp"
#include "linear.hpp"

#include <hlwq/detail/parallel.hpp>
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/kv_cache.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace hlwq::rt {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Configuration (configuration_gemma4.py: Gemma4TextConfig and its __post_init__)
// ---------------------------------------------------------------------------------------------

enum class activation { gelu_tanh, silu };

/// RoPE of one layer type (modeling_rope_utils.py: "default" and "proportional").
struct rope_spec {
    bool proportional = false;
    double theta = 10000.0;
    double partial = 1.0;  // proportional only
    double factor = 1.0;   // proportional only
};

struct layer_spec {
    bool sliding = false;
    std::size_t head_dim = 0;
    std::size_t n_kv = 0;
    bool kv_shared = false;       // takes k, v from layer kv_source
    std::size_t kv_source = 0;    // itself when not shared
    bool k_eq_v = false;          // values = keys' projection (attention_k_eq_v, full layers)
    std::size_t intermediate = 0; // MLP width (double on KV-shared layers with use_double_wide_mlp)
};

struct gemma4_config {
    std::string prefix = "model.";  // "model.language_model." for Gemma4ForConditionalGeneration
    std::size_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0;
    std::size_t sliding_window = 512, max_positions = 131072;
    float eps = 1e-6f;
    activation act = activation::gelu_tanh;
    std::optional<float> final_softcap = std::nullopt;
    bool tied = true;
    std::size_t ple_dim = 0, ple_vocab = 0;
    bool moe = false;
    std::size_t experts = 0, top_k = 0, moe_intermediate = 0;
    rope_spec rope_sliding{}, rope_full{};
    std::vector<layer_spec> layer{};
    // Gemma4ForConditionalGeneration: the multimodal token ids (-1 when absent) and whether an
    // image's tokens attend to each other bidirectionally on sliding layers.
    std::int32_t pad_id = 0, image_id = -1, boi_id = -1, eoi_id = -1, video_id = -1, audio_id = -1;
    bool bidirectional_vision = false;
};

/// Reads keys of one config object; every problem names the file and the key.
class config_reader {
public:
    config_reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

    [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(where_ + ": " + what); }

    bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
    const json& at(const char* key) const {
        if (!has(key)) fail("key '" + std::string(key) + "' is missing");
        return j_[key];
    }
    std::size_t count(const char* key, bool positive = true) const { return to_count(at(key), key, positive); }
    std::size_t count_or(const char* key, std::size_t def, bool positive = true) const {
        return has(key) ? count(key, positive) : def;
    }
    double number_or(const char* key, double def) const {
        if (!has(key)) return def;
        if (!j_[key].is_number()) fail("key '" + std::string(key) + "' is not a number");
        return j_[key].get<double>();
    }
    bool flag_or(const char* key, bool def) const {
        if (!has(key)) return def;
        if (!j_[key].is_boolean()) fail("key '" + std::string(key) + "' is not true/false");
        return j_[key].get<bool>();
    }
    std::optional<std::string> string_opt(const char* key) const {
        if (!has(key)) return std::nullopt;
        if (!j_[key].is_string()) fail("key '" + std::string(key) + "' is not a string");
        return j_[key].get<std::string>();
    }
    std::size_t to_count(const json& v, const std::string& key, bool positive) const {
        if (!v.is_number_integer() || v.get<std::int64_t>() < (positive ? 1 : 0))
            fail("key '" + key + "' must be a " + (positive ? "positive" : "non-negative") + " integer, got " + v.dump());
        return static_cast<std::size_t>(v.get<std::int64_t>());
    }
    const std::string& where() const { return where_; }

private:
    const json& j_;
    std::string where_;
};

rope_spec parse_rope(const config_reader& r, const json& params, const std::string& type) {
    const std::string key = "rope_parameters." + type;
    if (!params.contains(type) || !params[type].is_object()) r.fail("key '" + key + "' is missing");
    const config_reader p(params[type], r.where());
    rope_spec s;
    const auto rt = p.string_opt("rope_type").value_or("default");
    if (rt != "default" && rt != "proportional")
        r.fail("key '" + key + ".rope_type' = \"" + rt + "\" is not supported (only \"default\" and \"proportional\")");
    s.proportional = rt == "proportional";
    if (!p.has("rope_theta")) r.fail("key '" + key + ".rope_theta' is missing");
    s.theta = p.number_or("rope_theta", 0);
    if (s.proportional) {
        s.partial = p.number_or("partial_rotary_factor", 1.0);
        s.factor = p.number_or("factor", 1.0);
    }
    if (!(s.theta > 0) || !(s.partial >= 0 && s.partial <= 1) || !(s.factor > 0))
        r.fail("key '" + key + "' has an invalid rope_theta, partial_rotary_factor or factor");
    return s;
}

gemma4_config parse_config(const json& root, const std::filesystem::path& file) {
    gemma4_config c;
    const config_reader top(root, file.string());
    const json* text = &root;
    std::string where = file.string();
    const std::string model_type = top.string_opt("model_type").value_or("");
    if (model_type == "gemma4") {  // Gemma4ForConditionalGeneration: the language model inside
        if (!root.contains("text_config") || !root["text_config"].is_object()) top.fail("key 'text_config' is missing");
        text = &root["text_config"];
        where += " (text_config)";
        c.prefix = "model.language_model.";
        const auto id = [&](const char* key) -> std::int32_t {
            const auto it = root.find(key);
            if (it == root.end() || it->is_null()) return -1;
            if (!it->is_number_integer() || it->get<std::int64_t>() < 0) top.fail(std::string("key '") + key + "' is not a token id");
            return static_cast<std::int32_t>(it->get<std::int64_t>());
        };
        c.image_id = id("image_token_id");
        c.boi_id = id("boi_token_id");
        c.eoi_id = id("eoi_token_id");
        c.video_id = id("video_token_id");
        c.audio_id = id("audio_token_id");
    } else if (model_type != "gemma4_text") {
        top.fail("model_type \"" + model_type + "\" is not a Gemma 4 text model (gemma4_text or gemma4)");
    }
    const config_reader r(*text, where);

    c.vocab = r.count("vocab_size");
    c.hidden = r.count("hidden_size");
    c.intermediate = r.count("intermediate_size");
    c.layers = r.count("num_hidden_layers");
    c.heads = r.count("num_attention_heads");
    const std::size_t kv_heads = r.count("num_key_value_heads");
    const std::size_t head_dim = r.count("head_dim");
    c.sliding_window = r.count_or("sliding_window", 512);
    c.max_positions = r.count_or("max_position_embeddings", 131072);
    c.eps = static_cast<float>(r.number_or("rms_norm_eps", 1e-6));
    if (!(c.eps > 0)) r.fail("key 'rms_norm_eps' must be positive");

    const std::string act = r.string_opt("hidden_activation").value_or("gelu_pytorch_tanh");
    if (act == "gelu_pytorch_tanh" || act == "gelu_python_tanh") c.act = activation::gelu_tanh;
    else if (act == "silu" || act == "swish") c.act = activation::silu;
    else r.fail("key 'hidden_activation' = \"" + act + "\" is not supported (gelu_pytorch_tanh, silu)");

    if (r.flag_or("attention_bias", false)) r.fail("key 'attention_bias' = true is not supported");
    if (const auto bidi = r.string_opt("use_bidirectional_attention"); bidi && *bidi != "vision")
        r.fail("key 'use_bidirectional_attention' = \"" + *bidi +
               "\" is not supported (text is causal; only null or \"vision\", which affects images only)");
    else c.bidirectional_vision = bidi.has_value();
    if (r.has("pad_token_id")) {
        const json& pad = r.at("pad_token_id");
        if (!pad.is_null()) c.pad_id = static_cast<std::int32_t>(r.count("pad_token_id", false));
    }
    if (r.has("final_logit_softcapping")) {
        const double cap = r.number_or("final_logit_softcapping", 0);
        if (!(cap > 0)) r.fail("key 'final_logit_softcapping' must be positive or null");
        c.final_softcap = static_cast<float>(cap);
    }
    // Tied embeddings: the text config's flag, else the top-level one (default true).
    c.tied = r.has("tie_word_embeddings") ? r.flag_or("tie_word_embeddings", true) : top.flag_or("tie_word_embeddings", true);

    c.ple_dim = r.count_or("hidden_size_per_layer_input", 256, false);
    c.ple_vocab = r.count_or("vocab_size_per_layer_input", 262144);
    if (c.ple_dim && c.ple_vocab < c.vocab)
        r.fail("vocab_size_per_layer_input " + std::to_string(c.ple_vocab) + " below vocab_size " +
               std::to_string(c.vocab) + " is not supported");

    c.moe = r.flag_or("enable_moe_block", false);
    if (c.moe) {
        c.experts = r.count("num_experts");
        c.top_k = r.count("top_k_experts");
        c.moe_intermediate = r.count("moe_intermediate_size");
        if (c.top_k > c.experts) r.fail("key 'top_k_experts' exceeds num_experts");
    }

    // layer_types: default 5 sliding : 1 full; the last layer is always full attention.
    std::vector<bool> sliding(c.layers);
    if (r.has("layer_types")) {
        const json& lt = r.at("layer_types");
        if (!lt.is_array() || lt.size() != c.layers)
            r.fail("key 'layer_types' must be a list of num_hidden_layers (" + std::to_string(c.layers) + ") strings");
        for (std::size_t i = 0; i < c.layers; ++i) {
            const std::string t = lt[i].is_string() ? lt[i].get<std::string>() : lt[i].dump();
            if (t != "sliding_attention" && t != "full_attention")
                r.fail("key 'layer_types' entry " + std::to_string(i) + " = \"" + t +
                       "\" is not supported (sliding_attention, full_attention)");
            sliding[i] = t == "sliding_attention";
        }
    } else {
        for (std::size_t i = 0; i < c.layers; ++i) sliding[i] = (i + 1) % 6 != 0;
    }
    sliding[c.layers - 1] = false;

    // RoPE per layer type.
    json rope = json::object();
    if (r.has("rope_parameters")) {
        rope = r.at("rope_parameters");
        if (!rope.is_object()) r.fail("key 'rope_parameters' is not an object");
    } else {
        rope["sliding_attention"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
        rope["full_attention"] = {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.25}, {"rope_theta", 1e6}};
    }
    if (std::find(sliding.begin(), sliding.end(), true) != sliding.end()) c.rope_sliding = parse_rope(r, rope, "sliding_attention");
    c.rope_full = parse_rope(r, rope, "full_attention");

    // Per-layer head_dim / KV heads: per_layer_config as saved, else __post_init__'s rule
    // (global_head_dim on full layers; num_global_key_value_heads there with attention_k_eq_v).
    const bool k_eq_v = r.flag_or("attention_k_eq_v", false);
    c.layer.resize(c.layers);
    for (std::size_t i = 0; i < c.layers; ++i) {
        c.layer[i].sliding = sliding[i];
        c.layer[i].head_dim = head_dim;
        c.layer[i].n_kv = kv_heads;
        c.layer[i].k_eq_v = k_eq_v && !sliding[i];
    }
    if (r.has("per_layer_config")) {
        const json& plc = r.at("per_layer_config");
        if (!plc.is_object()) r.fail("key 'per_layer_config' is not an object");
        for (const auto& [k, v] : plc.items()) {
            std::size_t i = 0;
            const auto res = std::from_chars(k.data(), k.data() + k.size(), i);
            if (res.ec != std::errc{} || res.ptr != k.data() + k.size() || i >= c.layers || !v.is_object())
                r.fail("key 'per_layer_config." + k + "' is not a layer index below num_hidden_layers with an object");
            for (const auto& [field, value] : v.items()) {
                const std::string key = "per_layer_config." + k + "." + field;
                if (field == "head_dim") c.layer[i].head_dim = r.to_count(value, key, true);
                else if (field == "num_key_value_heads") c.layer[i].n_kv = r.to_count(value, key, true);
                else r.fail("key '" + key + "' is not supported (head_dim, num_key_value_heads)");
            }
        }
    } else {
        const std::size_t global_dim = r.count_or("global_head_dim", 512);
        const std::size_t global_kv = k_eq_v ? r.count_or("num_global_key_value_heads", kv_heads) : kv_heads;
        for (auto& l : c.layer)
            if (!l.sliding) {
                l.head_dim = global_dim;
                l.n_kv = global_kv;
            }
    }
    for (std::size_t i = 0; i < c.layers; ++i) {
        const layer_spec& l = c.layer[i];
        if (c.heads % l.n_kv != 0)
            r.fail("layer " + std::to_string(i) + ": num_attention_heads " + std::to_string(c.heads) +
                   " is not a multiple of its " + std::to_string(l.n_kv) + " KV heads");
        if (l.head_dim % 2 != 0) r.fail("layer " + std::to_string(i) + ": head_dim must be even for RoPE");
        for (std::size_t j = 0; j < i; ++j)
            if (c.layer[j].sliding == l.sliding && c.layer[j].head_dim != l.head_dim)
                r.fail("layers " + std::to_string(j) + " and " + std::to_string(i) +
                       " of one type have different head_dim (RoPE is per layer type): not supported");
    }

    // KV sharing: the last num_kv_shared_layers layers reuse the k, v of the last earlier
    // non-shared layer of their type; their MLP is double width with use_double_wide_mlp.
    const std::size_t shared = r.count_or("num_kv_shared_layers", 0, false);
    if (shared >= c.layers && shared != 0)
        r.fail("key 'num_kv_shared_layers' must be below num_hidden_layers");
    const std::size_t first_shared = c.layers - shared;
    const bool double_wide = r.flag_or("use_double_wide_mlp", false);
    for (std::size_t i = 0; i < c.layers; ++i) {
        layer_spec& l = c.layer[i];
        l.kv_source = i;
        l.intermediate = c.intermediate;
        if (i < first_shared) continue;
        l.kv_shared = true;
        bool found = false;
        for (std::size_t j = first_shared; j-- > 0;)
            if (c.layer[j].sliding == l.sliding) {
                l.kv_source = j;
                found = true;
                break;
            }
        if (!found)
            r.fail("KV-shared layer " + std::to_string(i) + " has no earlier non-shared layer of its type");
        if (c.layer[l.kv_source].n_kv != l.n_kv || c.layer[l.kv_source].head_dim != l.head_dim)
            r.fail("KV-shared layer " + std::to_string(i) + " differs in KV heads or head_dim from layer " +
                   std::to_string(l.kv_source));
        if (double_wide && first_shared > 0) l.intermediate = 2 * c.intermediate;
    }
    return c;
}

// ---------------------------------------------------------------------------------------------
// KV cache behind one interface for all storage policies
// ---------------------------------------------------------------------------------------------

struct kv_store {
    virtual ~kv_store() = default;
    virtual void append(std::span<const float> k, std::span<const float> v, std::size_t n) = 0;
    virtual void attention(std::span<const float> q, std::size_t n_q_heads, std::size_t n, std::span<float> out,
                           const attention_params& p) const = 0;
    virtual bool can_truncate(std::size_t n) const = 0;
    /// The key and value (dequantized) at `position` of kv head `h`.
    virtual void read(std::size_t position, std::size_t h, std::span<float> k, std::span<float> v) const = 0;
    virtual void truncate(std::size_t n) = 0;
    virtual void clear() = 0;
    virtual std::size_t held_bytes() const = 0;
    virtual std::string name() const = 0;
};

template <class Policy>
struct kv_store_of final : kv_store {
    explicit kv_store_of(const kv_cache_config& cfg) : cache(cfg) {}
    void append(std::span<const float> k, std::span<const float> v, std::size_t n) override { cache.append(k, v, n); }
    void attention(std::span<const float> q, std::size_t n_q_heads, std::size_t n, std::span<float> out,
                   const attention_params& p) const override {
        cache.attention_chunk(q, n_q_heads, n, out, p);
    }
    bool can_truncate(std::size_t n) const override {
        if (n > cache.next_position()) return false;
        const std::size_t w = cache.config().sliding_window.value_or(0);
        const std::size_t lowest = w && n + 1 > w ? n + 1 - w : 0;
        return n == 0 || lowest >= cache.first_position();
    }
    void read(std::size_t position, std::size_t h, std::span<float> k, std::span<float> v) const override {
        cache.key(position, h, k);
        cache.value(position, h, v);
    }
    void truncate(std::size_t n) override { cache.truncate(n); }
    void clear() override { cache.clear(); }
    std::size_t held_bytes() const override { return cache.size() * cache.bytes_per_token(); }
    std::string name() const override { return Policy::name(); }
    kv_cache<Policy> cache;
};

std::unique_ptr<kv_store> make_kv_store(int bits, const kv_cache_config& cfg) {
    switch (bits) {
        case 0: return std::make_unique<kv_store_of<fp16_policy>>(cfg);
        case 32: return std::make_unique<kv_store_of<f32_policy>>(cfg);
        case 2: return std::make_unique<kv_store_of<hlwq_policy<2>>>(cfg);
        case 3: return std::make_unique<kv_store_of<hlwq_policy<3>>>(cfg);
        case 4: return std::make_unique<kv_store_of<hlwq_policy<4>>>(cfg);
        default: throw std::runtime_error("gemma4: kv_bits " + std::to_string(bits) + " is not 0 (fp16), 2, 3, 4 or 32 (fp32)");
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise pieces
// ---------------------------------------------------------------------------------------------

/// Gemma4RMSNorm over n vectors of d at x (in place): x · (mean(x²) + eps)^-½ · w (w may be null).
void rms_norm(float* x, std::size_t n, std::size_t d, const float* w, float eps) {
    for (std::size_t t = 0; t < n; ++t) {
        float* v = x + t * d;
        double ss = 0;
        for (std::size_t i = 0; i < d; ++i) ss += static_cast<double>(v[i]) * v[i];
        const float ms = static_cast<float>(ss / static_cast<double>(d)) + eps;
        const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ms)));
        if (w)
            for (std::size_t i = 0; i < d; ++i) v[i] = v[i] * inv * w[i];
        else
            for (std::size_t i = 0; i < d; ++i) v[i] = v[i] * inv;
    }
}

float act_fn(activation a, float x) {
    if (a == activation::silu) return x / (1.0f + std::exp(-x));
    constexpr float k = 0.7978845608028654f;  // √(2/π)
    return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

/// A RoPE table of one layer type: inverse frequencies of the head_dim/2 angle pairs, as
/// modeling_rope_utils computes them in fp32 (zero for the pairs proportional RoPE leaves).
std::vector<float> inv_freq(const rope_spec& s, std::size_t head_dim) {
    const std::size_t half = head_dim / 2;
    std::vector<float> f(half, 0.0f);
    const float base = static_cast<float>(s.theta);
    std::size_t rotated = half;
    if (s.proportional) rotated = static_cast<std::size_t>(std::floor(s.partial * static_cast<double>(head_dim) / 2.0));
    rotated = std::min(rotated, half);
    for (std::size_t i = 0; i < rotated; ++i) {
        const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
        f[i] = 1.0f / static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(e)));
    }
    if (s.proportional)
        for (float& x : f) x /= static_cast<float>(s.factor);
    return f;
}

/// Rotates n_heads vectors of d at x by the angles of one position: pairs (i, i + d/2).
void apply_rope(float* x, std::size_t n_heads, std::size_t d, const float* cos, const float* sin) {
    const std::size_t half = d / 2;
    for (std::size_t h = 0; h < n_heads; ++h) {
        float* v = x + h * d;
        for (std::size_t i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

class gemma4_model final : public gemma4_lm {
public:
    gemma4_model(io::checkpoint ck, gemma4_config cfg, const model_options& o, const std::filesystem::path& dir)
        : ck_(std::move(ck)), cfg_(std::move(cfg)), opt_(o) {
        if (opt_.prefill_chunk == 0) throw std::runtime_error("gemma4: prefill_chunk must be positive");
        max_context_ = opt_.max_context ? opt_.max_context : cfg_.max_positions;
        lin_ = linear_options{.threads = opt_.threads, .int8_activations = opt_.int8_activations};
        max_chunk_ = opt_.prefill_chunk;
        vision_ = gemma4_vision::open(dir, lin_);
        if (vision_) {
            image_cfg_ = gemma4_image_config::load(dir);
            if (cfg_.image_id < 0 || cfg_.boi_id < 0 || cfg_.eoi_id < 0)
                throw std::runtime_error((dir / "config.json").string() +
                                         ": a vision_config needs image_token_id, boi_token_id and eoi_token_id");
            if (vision_->config().text_hidden != cfg_.hidden)
                throw std::runtime_error((dir / "config.json").string() + ": vision embedder output " +
                                         std::to_string(vision_->config().text_hidden) + " != text hidden_size " +
                                         std::to_string(cfg_.hidden));
            if (image_cfg_.patch_size != vision_->config().patch_size ||
                image_cfg_.pooling_kernel_size != vision_->config().pooling_kernel)
                throw std::runtime_error((dir / "preprocessor_config.json").string() +
                                         ": patch_size / pooling_kernel_size differ from config.json's vision_config");
            // An image's tokens attend to each other on sliding layers: they go through the
            // layers as one chunk, so chunks (and the sliding rings) must hold a whole image.
            if (cfg_.bidirectional_vision) max_chunk_ = std::max(max_chunk_, image_cfg_.max_soft_tokens);
        }
        load_weights();
        make_caches();
        make_workspace();
    }

    std::size_t vocab_size() const override { return cfg_.vocab; }
    std::size_t position() const override { return pos_; }
    std::size_t max_context() const override { return max_context_; }

    void reset() override {
        for (auto& c : caches_)
            if (c) c->clear();
        pos_ = 0;
        images_.clear();
    }

    bool has_vision() const override { return vision_ != nullptr; }
    std::int32_t image_token_id() const override { return vision_ ? cfg_.image_id : -1; }
    std::size_t pending_image_tokens() const override {
        std::size_t n = 0;
        for (const auto& im : images_) n += im.tokens;
        return n;
    }

    /// Gemma4Processor: the image becomes <boi>, soft_tokens × <image>, <eoi>; the encoder's
    /// output through embed_vision waits for those image tokens (Gemma4Model.forward).
    std::vector<std::int32_t> queue_image(const rgb_image& image) override {
        if (!vision_) throw std::runtime_error(description() + ": this model has no vision tower");
        return queue_pixels(gemma4_preprocess(image, image_cfg_));
    }

    std::vector<std::int32_t> queue_pixels(const gemma4_pixels& px) override {
        if (!vision_) throw std::runtime_error(description() + ": this model has no vision tower");
        return queue_embeddings(vision_->embed(vision_->soft_tokens(px)));
    }

    std::vector<std::int32_t> queue_embeddings(std::vector<float> emb) override {
        if (!vision_) throw std::runtime_error(description() + ": this model has no vision tower");
        const std::size_t tokens = emb.size() / cfg_.hidden;
        if (tokens == 0 || emb.size() != tokens * cfg_.hidden)
            throw std::invalid_argument("gemma4: " + std::to_string(emb.size()) +
                                        " image embedding values are not a positive multiple of hidden " +
                                        std::to_string(cfg_.hidden));
        if (cfg_.bidirectional_vision && tokens > max_chunk_)
            throw std::invalid_argument("gemma4: an image of " + std::to_string(tokens) +
                                        " soft tokens exceeds the processor's max_soft_tokens " +
                                        std::to_string(max_chunk_));
        images_.push_back({std::move(emb), tokens});
        std::vector<std::int32_t> ids{cfg_.boi_id};
        ids.insert(ids.end(), tokens, cfg_.image_id);
        ids.push_back(cfg_.eoi_id);
        return ids;
    }

    void truncate(std::size_t n) override {
        if (n > pos_)
            throw std::invalid_argument("gemma4: truncate(" + std::to_string(n) + ") is past the position " +
                                        std::to_string(pos_));
        for (std::size_t i = 0; i < caches_.size(); ++i)
            if (caches_[i] && !caches_[i]->can_truncate(n))
                throw std::invalid_argument("gemma4: cannot go back to position " + std::to_string(n) +
                                            ": the sliding-window cache of layer " + std::to_string(i) +
                                            " (window " + std::to_string(cfg_.sliding_window) +
                                            ") no longer holds the tokens a query there needs");
        for (auto& c : caches_)
            if (c) c->truncate(n);
        pos_ = n;
    }

    void forward(std::span<const std::int32_t> ids, std::span<float> logits, bool all_positions) override {
        const std::size_t n = ids.size(), V = cfg_.vocab;
        if (n == 0) throw std::invalid_argument("gemma4: forward needs at least one token");
        for (std::size_t i = 0; i < n; ++i)
            if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= V)
                throw std::invalid_argument("gemma4: token id " + std::to_string(ids[i]) + " (at " + std::to_string(i) +
                                            ") is outside the vocabulary of " + std::to_string(V));
        const std::size_t want = all_positions ? n * V : V;
        if (logits.size() != want)
            throw std::invalid_argument("gemma4: logits has " + std::to_string(logits.size()) + " floats, expected " +
                                        std::to_string(want));
        if (n > max_context_ - pos_)
            throw std::invalid_argument("gemma4: " + std::to_string(pos_) + " + " + std::to_string(n) +
                                        " tokens exceed the context of " + std::to_string(max_context_));
        // Image tokens: each run of them takes the next queued image, whose soft-token count
        // it must match (Gemma4Model.forward's masked_scatter; get_block_sequence_ids_for_mask
        // makes each run one bidirectional block). With no image left in the queue they are
        // ordinary tokens looking up pad, as in transformers without pixel values (e.g. an
        // image token the model generates).
        std::vector<const float*> rows(n, nullptr);
        std::vector<std::pair<std::size_t, std::size_t>> runs;
        std::size_t used = 0;
        for (std::size_t i = 0; vision_ && i < n;) {
            if (ids[i] != cfg_.image_id) {
                ++i;
                continue;
            }
            std::size_t j = i;
            while (j < n && ids[j] == cfg_.image_id) ++j;
            if (used == images_.size()) break;
            const queued_image& im = images_[used++];
            if (j - i != im.tokens)
                throw std::invalid_argument("gemma4: a run of " + std::to_string(j - i) + " image tokens at " +
                                            std::to_string(i) + ", but the queued image has " +
                                            std::to_string(im.tokens) + " soft tokens");
            for (std::size_t t = i; t < j; ++t) rows[t] = im.embeddings.data() + (t - i) * cfg_.hidden;
            runs.emplace_back(i, j);
            i = j;
        }
        const std::size_t start = pos_;
        try {
            for (std::size_t t0 = 0; t0 < n;) {
                std::size_t m = std::min(opt_.prefill_chunk, n - t0);
                blocks_.clear();
                if (cfg_.bidirectional_vision)
                    for (const auto& [a, b] : runs) {
                        if (a < t0 + m && b > t0 + m) m = a > t0 ? a - t0 : b - t0;  // never split an image
                        if (a >= t0 && b <= t0 + m) blocks_.emplace_back(a - t0, b - t0);
                    }
                const bool last = t0 + m == n;
                float* out = all_positions ? logits.data() + t0 * V : (last ? logits.data() : nullptr);
                run_chunk(ids.subspan(t0, m), rows.data() + t0, out, all_positions);
                pos_ += m;
                t0 += m;
            }
            images_.erase(images_.begin(), images_.begin() + static_cast<std::ptrdiff_t>(used));
        } catch (...) {
            // Leave the cache as before the call if the rings still allow it, else empty.
            pos_ = start;
            bool ok = true;
            for (auto& c : caches_)
                if (c && !c->can_truncate(start)) ok = false;
            if (ok) truncate(start);
            else reset();
            throw;
        }
    }

    std::size_t weight_bytes() const override { return weight_bytes_ + (vision_ ? vision_->weight_bytes() : 0); }

    std::size_t cache_bytes() const override {
        std::size_t b = 0;
        for (const auto& c : caches_)
            if (c) b += c->held_bytes();
        return b;
    }

    std::string description() const override {
        std::size_t sliding = 0;
        for (const auto& l : cfg_.layer) sliding += l.sliding;
        std::ostringstream s;
        s << "gemma4: " << cfg_.layers << " layers (" << sliding << " sliding, window " << cfg_.sliding_window << "; "
          << cfg_.layers - sliding << " full), hidden " << cfg_.hidden << ", vocab " << cfg_.vocab;
        if (cfg_.ple_dim) s << ", PLE " << cfg_.ple_dim;
        if (cfg_.moe) s << ", MoE " << cfg_.experts << " experts top-" << cfg_.top_k;
        s << ", weights " << weight_formats() << ", KV " << caches_.front()->name();
        if (vision_) s << "; " << vision_->description();
        return s.str();
    }

private:
    struct layer_weights {
        std::vector<float> input_norm, post_attn_norm, pre_ff_norm, post_ff_norm, q_norm, k_norm;
        linear q, k, v, o, gate, up, down;
        float scalar = 1.0f;
        // PLE
        linear ple_gate, ple_proj;
        std::vector<float> ple_norm;
        // MoE
        linear router;
        std::vector<float> router_scale, expert_scale, post_ff_norm_1, post_ff_norm_2, pre_ff_norm_2;
        std::vector<linear> gate_up, expert_down;
    };

    // ---- loading ----------------------------------------------------------------------------

    std::string name(const std::string& rest) const { return cfg_.prefix + rest; }

    std::vector<float> vec(const std::string& n, std::size_t size) {
        float_tensor t = read_vector(ck_, n, size);
        weight_bytes_ += t.stored_bytes;
        return std::move(t.values);
    }

    linear lin(const std::string& n, std::size_t rows, std::size_t cols) {
        linear l = linear::load(ck_, n, rows, cols);
        weight_bytes_ += l.bytes();
        formats_.insert(l.format());
        return l;
    }

    void load_weights() {
        const std::size_t H = cfg_.hidden, L = cfg_.layers, P = cfg_.ple_dim;
        embed_ = lin(name("embed_tokens.weight"), cfg_.vocab, H);  // dense or HLWQ: row() dequantizes a lookup
        final_norm_ = vec(name("norm.weight"), H);
        if (!cfg_.tied) {
            if (!ck_.contains("lm_head.weight"))
                throw std::runtime_error(ck_.path().string() + ": tensor 'lm_head.weight' is missing (tie_word_embeddings is false)");
            lm_head_ = lin("lm_head.weight", cfg_.vocab, H);
        }
        if (P) {
            ple_embed_ = lin(name("embed_tokens_per_layer.weight"), cfg_.ple_vocab, L * P);
            ple_model_proj_ = lin(name("per_layer_model_projection.weight"), L * P, H);
            ple_proj_norm_ = vec(name("per_layer_projection_norm.weight"), P);
        }
        layers_.resize(L);
        for (std::size_t i = 0; i < L; ++i) {
            const layer_spec& s = cfg_.layer[i];
            layer_weights& w = layers_[i];
            const std::string p = "layers." + std::to_string(i) + ".";
            const std::size_t qd = cfg_.heads * s.head_dim, kvd = s.n_kv * s.head_dim;
            w.input_norm = vec(name(p + "input_layernorm.weight"), H);
            w.post_attn_norm = vec(name(p + "post_attention_layernorm.weight"), H);
            w.pre_ff_norm = vec(name(p + "pre_feedforward_layernorm.weight"), H);
            w.post_ff_norm = vec(name(p + "post_feedforward_layernorm.weight"), H);
            w.q = lin(name(p + "self_attn.q_proj.weight"), qd, H);
            w.q_norm = vec(name(p + "self_attn.q_norm.weight"), s.head_dim);
            w.o = lin(name(p + "self_attn.o_proj.weight"), H, qd);
            if (!s.kv_shared) {
                w.k = lin(name(p + "self_attn.k_proj.weight"), kvd, H);
                if (!s.k_eq_v) w.v = lin(name(p + "self_attn.v_proj.weight"), kvd, H);
                w.k_norm = vec(name(p + "self_attn.k_norm.weight"), s.head_dim);
            }
            w.gate = lin(name(p + "mlp.gate_proj.weight"), s.intermediate, H);
            w.up = lin(name(p + "mlp.up_proj.weight"), s.intermediate, H);
            w.down = lin(name(p + "mlp.down_proj.weight"), H, s.intermediate);
            // layer_scalar is a buffer: transformers initializes it to 1 when a file lacks it.
            if (ck_.contains(name(p + "layer_scalar"))) w.scalar = vec(name(p + "layer_scalar"), 1)[0];
            if (P) {
                w.ple_gate = lin(name(p + "per_layer_input_gate.weight"), P, H);
                w.ple_proj = lin(name(p + "per_layer_projection.weight"), H, P);
                w.ple_norm = vec(name(p + "post_per_layer_input_norm.weight"), H);
            }
            if (cfg_.moe) {
                const std::size_t E = cfg_.experts, I = cfg_.moe_intermediate;
                w.router = lin(name(p + "router.proj.weight"), E, H);
                w.router_scale = vec(name(p + "router.scale"), H);
                w.expert_scale = vec(name(p + "router.per_expert_scale"), E);
                w.post_ff_norm_1 = vec(name(p + "post_feedforward_layernorm_1.weight"), H);
                w.post_ff_norm_2 = vec(name(p + "post_feedforward_layernorm_2.weight"), H);
                w.pre_ff_norm_2 = vec(name(p + "pre_feedforward_layernorm_2.weight"), H);
                for (std::size_t e = 0; e < E; ++e) {
                    w.gate_up.push_back(linear::load_expert(ck_, name(p + "experts.gate_up_proj"), e, E, 2 * I, H));
                    w.expert_down.push_back(linear::load_expert(ck_, name(p + "experts.down_proj"), e, E, H, I));
                    weight_bytes_ += w.gate_up.back().bytes() + w.expert_down.back().bytes();
                    formats_.insert(w.gate_up.back().format());
                    formats_.insert(w.expert_down.back().format());
                }
            }
        }
        // RoPE tables per layer type.
        for (const auto& s : cfg_.layer) {
            auto& f = s.sliding ? inv_freq_sliding_ : inv_freq_full_;
            if (f.empty()) f = inv_freq(s.sliding ? cfg_.rope_sliding : cfg_.rope_full, s.head_dim);
        }
    }

    void make_caches() {
        caches_.resize(cfg_.layers);
        for (std::size_t i = 0; i < cfg_.layers; ++i) {
            const layer_spec& s = cfg_.layer[i];
            if (s.kv_shared) continue;
            kv_cache_config kc{.n_kv_heads = s.n_kv, .head_dim = s.head_dim, .capacity = max_context_};
            if (s.sliding) {
                // A prefill chunk of m queries needs window + m - 1 slots (kv_cache.hpp).
                kc.sliding_window = cfg_.sliding_window;
                kc.capacity = cfg_.sliding_window + max_chunk_ - 1;
            }
            try {
                caches_[i] = make_kv_store(opt_.kv_bits, kc);
            } catch (const std::invalid_argument& e) {
                throw std::runtime_error("gemma4: KV cache of layer " + std::to_string(i) + " (head_dim " +
                                         std::to_string(s.head_dim) + ", kv_bits " + std::to_string(opt_.kv_bits) +
                                         "): " + e.what());
            }
        }
    }

    void make_workspace() {
        const std::size_t C = max_chunk_, H = cfg_.hidden;
        std::size_t qd = 0, kvd = 0, inter = 0;
        for (const auto& s : cfg_.layer) {
            qd = std::max(qd, cfg_.heads * s.head_dim);
            kvd = std::max(kvd, s.n_kv * s.head_dim);
            inter = std::max(inter, s.intermediate);
        }
        if (cfg_.moe) inter = std::max(inter, 2 * cfg_.moe_intermediate);
        h_.resize(C * H);
        x_.resize(C * H);
        m_.resize(C * H);
        m2_.resize(C * H);
        q_.resize(C * qd);
        k_.resize(C * kvd);
        v_.resize(C * kvd);
        att_.resize(C * qd);
        gate_.resize(C * inter);
        up_.resize(C * inter);
        if (cfg_.ple_dim) {
            ple_.resize(C * cfg_.layers * cfg_.ple_dim);
            ple_tok_.resize(cfg_.layers * cfg_.ple_dim);
            ple_g_.resize(C * cfg_.ple_dim);
        }
        if (cfg_.moe) {
            router_.resize(C * cfg_.experts);
            ex_in_.resize(C * H);
            ex_out_.resize(C * H);
            routes_.resize(C * cfg_.top_k);
            token_of_.resize(C);
            expert_order_.resize(cfg_.experts);
        }
        cos_sliding_.resize(C * inv_freq_sliding_.size());
        sin_sliding_.resize(cos_sliding_.size());
        cos_full_.resize(C * inv_freq_full_.size());
        sin_full_.resize(cos_full_.size());
    }

    std::string weight_formats() const {
        std::string s;
        for (const auto& f : formats_) s += (s.empty() ? "" : "+") + f;
        return s.empty() ? "none" : s;
    }

    // ---- the forward pass -------------------------------------------------------------------

    /// cos/sin of the n positions from pos_ for one RoPE table (Gemma4TextRotaryEmbedding:
    /// angle = position · inv_freq in fp32).
    void rope_angles(const std::vector<float>& f, std::size_t n, std::vector<float>& cos, std::vector<float>& sin) const {
        const std::size_t half = f.size();
        for (std::size_t t = 0; t < n; ++t) {
            const float p = static_cast<float>(pos_ + t);
            for (std::size_t i = 0; i < half; ++i) {
                const float a = p * f[i];
                cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(a)));
                sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(a)));
            }
        }
    }

    /// One chunk of n tokens at positions pos_ … pos_ + n - 1; writes logits of every token
    /// (all) or of the last one to out (when out is not null).
    void run_chunk(std::span<const std::int32_t> ids, const float* const* image_rows, float* out, bool all) {
        const std::size_t n = ids.size(), H = cfg_.hidden, L = cfg_.layers, P = cfg_.ple_dim;

        // Scaled word embeddings (Gemma4TextScaledWordEmbedding): E[id] · √hidden. Multimodal
        // tokens look up the pad token (Gemma4Model.forward), and image tokens then take their
        // image's embeddings as they are.
        const float embed_scale = static_cast<float>(std::sqrt(static_cast<double>(H)));
        const auto token = [&](std::size_t t) {
            const std::int32_t id = ids[t];
            const bool mm = cfg_.image_id >= 0 && (id == cfg_.image_id || id == cfg_.video_id || id == cfg_.audio_id);
            return static_cast<std::size_t>(mm ? cfg_.pad_id : id);
        };
        for (std::size_t t = 0; t < n; ++t) {
            if (image_rows[t]) {
                std::copy_n(image_rows[t], H, h_.data() + t * H);
                continue;
            }
            embed_.row(token(t), h_.data() + t * H);
            for (std::size_t i = 0; i < H; ++i) h_[t * H + i] *= embed_scale;
        }

        // Per-layer inputs (get_per_layer_inputs + project_per_layer_inputs).
        if (P) {
            ple_model_proj_.forward(h_.data(), n, ple_.data(), lin_);
            const float proj_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
            const float tok_scale = static_cast<float>(std::sqrt(static_cast<double>(P)));
            const float mix = static_cast<float>(1.0 / std::sqrt(2.0));
            for (std::size_t t = 0; t < n; ++t) {
                float* pr = ple_.data() + t * L * P;
                for (std::size_t i = 0; i < L * P; ++i) pr[i] *= proj_scale;
                rms_norm(pr, L, P, ple_proj_norm_.data(), cfg_.eps);
                ple_embed_.row(token(t), ple_tok_.data());
                for (std::size_t i = 0; i < L * P; ++i) pr[i] = (pr[i] + ple_tok_[i] * tok_scale) * mix;
            }
        }

        if (!inv_freq_sliding_.empty()) rope_angles(inv_freq_sliding_, n, cos_sliding_, sin_sliding_);
        if (!inv_freq_full_.empty()) rope_angles(inv_freq_full_, n, cos_full_, sin_full_);

        for (std::size_t i = 0; i < L; ++i) decoder_layer(i, n);

        // Final norm, lm_head (tied: the embeddings), final logit softcapping.
        const std::size_t first = all ? 0 : n - 1, rows = all ? n : 1;
        if (!out) return;
        rms_norm(h_.data() + first * H, rows, H, final_norm_.data(), cfg_.eps);
        (cfg_.tied ? embed_ : lm_head_).forward(h_.data() + first * H, rows, out, lin_);
        if (cfg_.final_softcap) {
            const float cap = *cfg_.final_softcap;
            for (std::size_t i = 0; i < rows * cfg_.vocab; ++i) out[i] = std::tanh(out[i] / cap) * cap;
        }
    }

    void decoder_layer(std::size_t li, std::size_t n) {
        const layer_spec& s = cfg_.layer[li];
        layer_weights& w = layers_[li];
        const std::size_t H = cfg_.hidden, d = s.head_dim, nq = cfg_.heads, nkv = s.n_kv;

        // --- self-attention (Gemma4TextAttention) ---
        std::copy_n(h_.data(), n * H, x_.data());
        rms_norm(x_.data(), n, H, w.input_norm.data(), cfg_.eps);
        const float* cos = (s.sliding ? cos_sliding_ : cos_full_).data();
        const float* sin = (s.sliding ? sin_sliding_ : sin_full_).data();
        w.q.forward(x_.data(), n, q_.data(), lin_);
        rms_norm(q_.data(), n * nq, d, w.q_norm.data(), cfg_.eps);
        for (std::size_t t = 0; t < n; ++t) apply_rope(q_.data() + t * nq * d, nq, d, cos + t * d / 2, sin + t * d / 2);
        if (!s.kv_shared) {
            w.k.forward(x_.data(), n, k_.data(), lin_);
            if (s.k_eq_v) std::copy_n(k_.data(), n * nkv * d, v_.data());  // values: the keys before k_norm
            else w.v.forward(x_.data(), n, v_.data(), lin_);
            rms_norm(k_.data(), n * nkv, d, w.k_norm.data(), cfg_.eps);
            for (std::size_t t = 0; t < n; ++t)
                apply_rope(k_.data() + t * nkv * d, nkv, d, cos + t * d / 2, sin + t * d / 2);
            rms_norm(v_.data(), n * nkv, d, nullptr, cfg_.eps);  // v_norm: no scale
            caches_[li]->append(std::span<const float>(k_.data(), n * nkv * d),
                                std::span<const float>(v_.data(), n * nkv * d), n);
        }
        // KV-shared layers attend to their source layer's cache (same type, same window).
        caches_[s.kv_source]->attention(std::span<const float>(q_.data(), n * nq * d), nq, n,
                                        std::span<float>(att_.data(), n * nq * d),
                                        attention_params{.scale = 1.0f, .softcap = std::nullopt, .threads = opt_.threads});
        // Sliding layers with use_bidirectional_attention "vision": an image's tokens also see
        // the later tokens of their image (create_masks_for_vision_model); full layers stay causal.
        if (s.sliding)
            for (const auto& [b0, b1] : blocks_) block_attention(s, *caches_[s.kv_source], b0, b1);
        w.o.forward(att_.data(), n, x_.data(), lin_);
        rms_norm(x_.data(), n, H, w.post_attn_norm.data(), cfg_.eps);
        for (std::size_t i = 0; i < n * H; ++i) h_[i] += x_[i];

        // --- feed-forward: MLP (Gemma4TextMLP), and the MoE block beside it ---
        std::copy_n(h_.data(), n * H, x_.data());
        rms_norm(x_.data(), n, H, w.pre_ff_norm.data(), cfg_.eps);
        mlp(w.gate, w.up, w.down, x_.data(), n, s.intermediate, m_.data());
        if (cfg_.moe) {
            rms_norm(m_.data(), n, H, w.post_ff_norm_1.data(), cfg_.eps);
            moe(w, n);  // from h_ (the residual), into m2_
            rms_norm(m2_.data(), n, H, w.post_ff_norm_2.data(), cfg_.eps);
            for (std::size_t i = 0; i < n * H; ++i) m_[i] += m2_[i];
        }
        rms_norm(m_.data(), n, H, w.post_ff_norm.data(), cfg_.eps);
        for (std::size_t i = 0; i < n * H; ++i) h_[i] += m_[i];

        // --- per-layer input (PLE) ---
        if (cfg_.ple_dim) {
            const std::size_t P = cfg_.ple_dim;
            w.ple_gate.forward(h_.data(), n, ple_g_.data(), lin_);
            for (std::size_t t = 0; t < n; ++t) {
                const float* in = ple_.data() + (t * cfg_.layers + li) * P;
                for (std::size_t i = 0; i < P; ++i) ple_g_[t * P + i] = act_fn(cfg_.act, ple_g_[t * P + i]) * in[i];
            }
            w.ple_proj.forward(ple_g_.data(), n, x_.data(), lin_);
            rms_norm(x_.data(), n, H, w.ple_norm.data(), cfg_.eps);
            for (std::size_t i = 0; i < n * H; ++i) h_[i] += x_[i];
        }

        for (std::size_t i = 0; i < n * H; ++i) h_[i] *= w.scalar;
    }

    /// Attention outputs of the chunk's queries b0 … b1 − 1 (one image) on a sliding layer:
    /// keys at positions q − window < p < pos_ + b1 (AND(sliding window, OR(causal, block))),
    /// read back from the cache, where the whole image was just appended.
    void block_attention(const layer_spec& s, const kv_store& cache, std::size_t b0, std::size_t b1) {
        const std::size_t d = s.head_dim, nq = cfg_.heads, nkv = s.n_kv, group = nq / nkv, W = cfg_.sliding_window;
        const std::size_t first = pos_ + b0 + 1 > W ? pos_ + b0 + 1 - W : 0, last = pos_ + b1;
        const std::size_t nk = last - first;
        block_k_.resize(nk * nkv * d);
        block_v_.resize(nk * nkv * d);
        for (std::size_t p = first; p < last; ++p)
            for (std::size_t h = 0; h < nkv; ++h) {
                const std::size_t at = ((p - first) * nkv + h) * d;
                cache.read(p, h, std::span<float>(block_k_.data() + at, d), std::span<float>(block_v_.data() + at, d));
            }
        const std::size_t items = (b1 - b0) * nq;
        detail::parallel_for(items, detail::thread_count(opt_.threads, items, 64), [&](std::size_t i0, std::size_t i1) {
            std::vector<float> score(nk);
            for (std::size_t it = i0; it < i1; ++it) {
                const std::size_t t = b0 + it / nq, hq = it % nq, hk = hq / group;
                const std::size_t abs = pos_ + t, lo = (abs + 1 > W ? abs + 1 - W : 0) - first;
                const float* q = q_.data() + (t * nq + hq) * d;
                float mx = -INFINITY;
                for (std::size_t j = lo; j < nk; ++j) {
                    const float* k = block_k_.data() + (j * nkv + hk) * d;
                    float dot = 0;
                    for (std::size_t i = 0; i < d; ++i) dot += q[i] * k[i];
                    score[j] = dot;
                    mx = std::max(mx, dot);
                }
                double sum = 0;
                for (std::size_t j = lo; j < nk; ++j) sum += (score[j] = std::exp(score[j] - mx));
                const float inv = static_cast<float>(1.0 / sum);
                float* o = att_.data() + (t * nq + hq) * d;
                std::fill_n(o, d, 0.0f);
                for (std::size_t j = lo; j < nk; ++j) {
                    const float pj = score[j] * inv;
                    const float* v = block_v_.data() + (j * nkv + hk) * d;
                    for (std::size_t i = 0; i < d; ++i) o[i] += pj * v[i];
                }
            }
        });
    }

    /// down(act(gate x) · up x) for n tokens of x into out.
    void mlp(const linear& gate, const linear& up, const linear& down, const float* x, std::size_t n,
             std::size_t inter, float* out) {
        gate.forward(x, n, gate_.data(), lin_);
        up.forward(x, n, up_.data(), lin_);
        for (std::size_t i = 0; i < n * inter; ++i) gate_[i] = act_fn(cfg_.act, gate_[i]) * up_[i];
        down.forward(gate_.data(), n, out, lin_);
    }

    /// Gemma4TextRouter + Gemma4TextExperts: m2_ = Σ_k weight_k · expert_k(pre_ff_norm_2(h)).
    void moe(layer_weights& w, std::size_t n) {
        const std::size_t H = cfg_.hidden, E = cfg_.experts, K = cfg_.top_k, I = cfg_.moe_intermediate;
        // Router: RMSNorm without scale, · scale · hidden^-½, projection, softmax, top-k,
        // renormalized, · per_expert_scale.
        std::copy_n(h_.data(), n * H, x_.data());
        rms_norm(x_.data(), n, H, nullptr, cfg_.eps);
        const float root = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t i = 0; i < H; ++i) x_[t * H + i] = x_[t * H + i] * w.router_scale[i] * root;
        w.router.forward(x_.data(), n, router_.data(), lin_);
        for (std::size_t t = 0; t < n; ++t) {
            float* p = router_.data() + t * E;
            const float mx = *std::max_element(p, p + E);
            float sum = 0;
            for (std::size_t e = 0; e < E; ++e) sum += (p[e] = std::exp(p[e] - mx));
            for (std::size_t e = 0; e < E; ++e) p[e] /= sum;
            std::vector<std::size_t>& idx = expert_order_;
            std::iota(idx.begin(), idx.end(), std::size_t{0});
            std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return p[a] > p[b]; });
            float top = 0;
            for (std::size_t k = 0; k < K; ++k) top += p[idx[k]];
            for (std::size_t k = 0; k < K; ++k)
                routes_[t * K + k] = route{idx[k], p[idx[k]] / top * w.expert_scale[idx[k]]};
        }
        // Experts on pre_feedforward_layernorm_2(h), grouped by expert, summed in expert order.
        std::copy_n(h_.data(), n * H, x_.data());
        rms_norm(x_.data(), n, H, w.pre_ff_norm_2.data(), cfg_.eps);
        std::fill_n(m2_.data(), n * H, 0.0f);
        for (std::size_t e = 0; e < E; ++e) {
            std::size_t m = 0;
            for (std::size_t t = 0; t < n; ++t)
                for (std::size_t k = 0; k < K; ++k)
                    if (routes_[t * K + k].expert == e) {
                        std::copy_n(x_.data() + t * H, H, ex_in_.data() + m * H);
                        token_of_[m++] = {t, routes_[t * K + k].weight};
                    }
            if (m == 0) continue;
            w.gate_up[e].forward(ex_in_.data(), m, gate_.data(), lin_);
            for (std::size_t j = 0; j < m; ++j) {
                float* g = gate_.data() + j * 2 * I;
                for (std::size_t i = 0; i < I; ++i) up_[j * I + i] = act_fn(cfg_.act, g[i]) * g[I + i];
            }
            w.expert_down[e].forward(up_.data(), m, ex_out_.data(), lin_);
            for (std::size_t j = 0; j < m; ++j) {
                const auto [t, wt] = token_of_[j];
                for (std::size_t i = 0; i < H; ++i) m2_[t * H + i] += ex_out_[j * H + i] * wt;
            }
        }
    }

    struct route {
        std::size_t expert = 0;
        float weight = 0.0f;
    };
    struct queued_image {
        std::vector<float> embeddings;  // [tokens][hidden]
        std::size_t tokens = 0;
    };

    io::checkpoint ck_;
    gemma4_config cfg_;
    model_options opt_;
    linear_options lin_{};
    std::size_t max_context_ = 0, pos_ = 0, weight_bytes_ = 0;
    std::size_t max_chunk_ = 0;  // largest chunk: prefill_chunk, or a whole image (bidirectional)
    std::set<std::string> formats_{};

    std::unique_ptr<gemma4_vision> vision_{};
    gemma4_image_config image_cfg_{};
    std::deque<queued_image> images_{};
    std::vector<std::pair<std::size_t, std::size_t>> blocks_{};  // the chunk's images (bidirectional)
    std::vector<float> block_k_{}, block_v_{};

    linear embed_{}, lm_head_{}, ple_embed_{}, ple_model_proj_{};
    std::vector<float> final_norm_{}, ple_proj_norm_{};
    std::vector<layer_weights> layers_{};
    std::vector<float> inv_freq_sliding_{}, inv_freq_full_{};
    std::vector<std::unique_ptr<kv_store>> caches_{};  // null for KV-shared layers

    // Workspace for one chunk (allocated once).
    std::vector<float> h_{}, x_{}, m_{}, m2_{}, q_{}, k_{}, v_{}, att_{}, gate_{}, up_{};
    std::vector<float> ple_{}, ple_tok_{}, ple_g_{};
    std::vector<float> router_{}, ex_in_{}, ex_out_{};
    std::vector<route> routes_{};
    std::vector<std::pair<std::size_t, float>> token_of_{};
    std::vector<std::size_t> expert_order_{};
    std::vector<float> cos_sliding_{}, sin_sliding_{}, cos_full_{}, sin_full_{};
};

}  // namespace

std::unique_ptr<causal_lm> load_gemma4(const std::filesystem::path& dir, const model_options& options) {
    const std::filesystem::path file = dir / "config.json";
    json root;
    {
        std::ifstream in(file);
        if (!in) throw std::runtime_error(file.string() + ": cannot open");
        try {
            root = json::parse(in);
        } catch (const json::exception& e) {
            throw std::runtime_error(file.string() + ": not valid JSON: " + e.what());
        }
    }
    if (!root.is_object()) throw std::runtime_error(file.string() + ": not a JSON object");
    gemma4_config cfg = parse_config(root, file);
    io::checkpoint ck = io::checkpoint::open(dir);
    return std::make_unique<gemma4_model>(std::move(ck), std::move(cfg), options, dir);
}

}  // namespace hlwq::rt
