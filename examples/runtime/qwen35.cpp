// SPDX-License-Identifier: MIT
// The Qwen3.5 text decoder (dense and MoE) on hlwq; see qwen35.hpp. Follows transformers 5.17
// models/qwen3_5/modeling_qwen3_5.py and models/qwen3_5_moe/modeling_qwen3_5_moe.py:
//
//   x = embed(ids)
//   per layer:  x += mixer(rmsnorm(x))  (Gated DeltaNet or gated attention, per layer_types)
//               x += mlp(rmsnorm(x))    (SwiGLU, or the sparse MoE block with a shared expert)
//   logits = lm_head(rmsnorm(x))
//
// rmsnorm(x) = x / sqrt(mean(x²) + eps) · (1 + w). The rotary embedding covers the first
// head_dim · partial_rotary_factor dimensions (rotate_half layout) with M-RoPE: every token has
// a (t, h, w) position and rotary frequency i takes h where i % 3 == 1 and i < 3·mrope_section[1],
// w where i % 3 == 2 and i < 3·mrope_section[2], t elsewhere (interleaved, as
// Qwen3_5TextRotaryEmbedding.recomposition_frequencies does). Text tokens have t = h = w, i.e.
// plain RoPE. With a vision tower (qwen35_vision.hpp) the image-pad tokens take the image
// embeddings and the positions of get_rope_index (see qwen35.hpp).
#include "qwen35.hpp"

#include "float_tensor.hpp"
#include "gated_delta.hpp"
#include "linear.hpp"
#include "qwen35_vision.hpp"

#include <hlwq/float16.hpp>
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/kv_cache.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace hlwq::rt {

namespace {

using json = nlohmann::json;

using kv_any = std::variant<kv_cache<fp16_policy>, kv_cache<hlwq_policy<2>>, kv_cache<hlwq_policy<3>>,
                            kv_cache<hlwq_policy<4>>, kv_cache<f32_policy>>;

kv_any make_kv(int bits, const kv_cache_config& c) {
    switch (bits) {
        case 0: return kv_any(std::in_place_index<0>, c);
        case 2: return kv_any(std::in_place_index<1>, c);
        case 3: return kv_any(std::in_place_index<2>, c);
        case 4: return kv_any(std::in_place_index<3>, c);
        case 32: return kv_any(std::in_place_index<4>, c);
        default:
            throw std::runtime_error("qwen35: kv_bits " + std::to_string(bits) +
                                     " is not 0 (fp16), 2, 3, 4 (HLWQ) or 32 (fp32)");
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

struct config {
    bool moe = false;
    std::string model_type;
    std::size_t vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
    std::size_t conv_kernel = 0, lk_dim = 0, lv_dim = 0, lk_heads = 0, lv_heads = 0;
    std::vector<bool> full;  // layer i is full attention (else linear attention)
    std::size_t max_positions = 0;
    float eps = 1e-6f;
    bool tie = false;
    double rope_theta = 10000.0;
    std::size_t rotary_dim = 0;
    std::size_t mrope_h = 0, mrope_w = 0;  // mrope_section[1], [2]: frequencies taking h and w
    std::int64_t image_token = -1, vision_start = -1, vision_end = -1;  // multimodal configs only
    std::size_t experts = 0, top_k = 0, moe_intermediate = 0, shared_intermediate = 0;

    std::size_t key_dim() const { return lk_heads * lk_dim; }
    std::size_t value_dim() const { return lv_heads * lv_dim; }
    std::size_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

struct config_reader {
    const json& j;
    std::string where;

    std::runtime_error fail(const std::string& key, const std::string& what) const {
        return std::runtime_error(where + ": '" + key + "' " + what);
    }
    std::size_t size(const std::string& key, std::optional<std::size_t> def = std::nullopt) const {
        const auto it = j.find(key);
        if (it == j.end() || it->is_null()) {
            if (def) return *def;
            throw fail(key, "is missing");
        }
        if (!it->is_number_integer() || it->get<std::int64_t>() <= 0)
            throw fail(key, "must be a positive integer, got " + it->dump());
        return static_cast<std::size_t>(it->get<std::int64_t>());
    }
    double number(const json& o, const std::string& key, double def) const {
        const auto it = o.find(key);
        if (it == o.end() || it->is_null()) return def;
        if (!it->is_number()) throw fail(key, "must be a number, got " + it->dump());
        return it->get<double>();
    }
    bool boolean(const std::string& key, bool def) const {
        const auto it = j.find(key);
        if (it == j.end() || it->is_null()) return def;
        if (!it->is_boolean()) throw fail(key, "must be true or false, got " + it->dump());
        return it->get<bool>();
    }
    std::string string(const std::string& key, const std::string& def) const {
        const auto it = j.find(key);
        if (it == j.end() || it->is_null()) return def;
        if (!it->is_string()) throw fail(key, "must be a string, got " + it->dump());
        return it->get<std::string>();
    }
};

config read_config(const io::checkpoint& ck) {
    const std::string file = (ck.path() / "config.json").string();
    const json& root = ck.config();
    if (root.empty()) throw std::runtime_error(file + ": missing or empty (a Qwen3.5 folder needs config.json)");
    const std::string type = root.value("model_type", std::string());
    const json* text = &root;
    if (type == "qwen3_5" || type == "qwen3_5_moe") {
        const auto it = root.find("text_config");
        if (it == root.end() || !it->is_object()) throw std::runtime_error(file + ": 'text_config' is missing");
        text = &*it;
    } else if (type != "qwen3_5_text" && type != "qwen3_5_moe_text") {
        throw std::runtime_error(file + ": model_type \"" + type +
                                 "\" is not a Qwen3.5 model (qwen3_5_text, qwen3_5_moe_text, qwen3_5, qwen3_5_moe)");
    }
    const config_reader r{*text, file + (text == &root ? "" : " (text_config)")};
    config c;
    c.model_type = type;
    c.moe = type == "qwen3_5_moe" || type == "qwen3_5_moe_text";
    c.vocab = r.size("vocab_size");
    c.hidden = r.size("hidden_size");
    c.layers = r.size("num_hidden_layers");
    c.heads = r.size("num_attention_heads");
    c.kv_heads = r.size("num_key_value_heads");
    c.head_dim = r.size("head_dim", c.hidden / c.heads);
    c.conv_kernel = r.size("linear_conv_kernel_dim", 4);
    c.lk_dim = r.size("linear_key_head_dim", 128);
    c.lv_dim = r.size("linear_value_head_dim", 128);
    c.lk_heads = r.size("linear_num_key_heads", 16);
    c.lv_heads = r.size("linear_num_value_heads", 32);
    c.max_positions = r.size("max_position_embeddings", 32768);
    c.eps = static_cast<float>(r.number(*text, "rms_norm_eps", 1e-6));
    // A multimodal config keeps tie_word_embeddings at its top level.
    c.tie = config_reader{root, file}.boolean("tie_word_embeddings", r.boolean("tie_word_embeddings", false));
    if (c.heads % c.kv_heads) throw r.fail("num_attention_heads", "is not a multiple of num_key_value_heads");
    if (c.lv_heads % c.lk_heads)
        throw r.fail("linear_num_value_heads", "is not a multiple of linear_num_key_heads");
    if (r.string("hidden_act", "silu") != "silu") throw r.fail("hidden_act", "is not \"silu\" (unsupported)");
    if (r.boolean("attention_bias", false)) throw r.fail("attention_bias", "true is not supported");
    if (c.moe) {
        c.experts = r.size("num_experts");
        c.top_k = r.size("num_experts_per_tok");
        c.moe_intermediate = r.size("moe_intermediate_size");
        c.shared_intermediate = r.size("shared_expert_intermediate_size");
        if (c.top_k > c.experts) throw r.fail("num_experts_per_tok", "is larger than num_experts");
    } else {
        c.intermediate = r.size("intermediate_size");
    }
    // Layer types: explicit, or every full_attention_interval-th layer full (transformers).
    const auto lt = text->find("layer_types");
    if (lt != text->end() && !lt->is_null()) {
        if (!lt->is_array() || lt->size() != c.layers)
            throw r.fail("layer_types", "must be a list of num_hidden_layers entries");
        for (const auto& e : *lt) {
            const std::string s = e.is_string() ? e.get<std::string>() : e.dump();
            if (s == "full_attention" || s == "attention") c.full.push_back(true);
            else if (s == "linear_attention") c.full.push_back(false);
            else throw r.fail("layer_types", "has the unsupported layer type " + e.dump());
        }
    } else {
        const std::size_t interval = r.size("full_attention_interval", 4);
        for (std::size_t i = 0; i < c.layers; ++i) c.full.push_back((i + 1) % interval == 0);
    }
    // RoPE: rope_parameters (transformers 5) or the legacy top-level fields.
    const json none = json::object();
    const auto rp_it = text->find("rope_parameters");
    const json& rp = rp_it != text->end() && rp_it->is_object() ? *rp_it : none;
    const std::string rope_type = rp.value("rope_type", rp.value("type", std::string("default")));
    if (rope_type != "default") throw r.fail("rope_parameters", "rope_type \"" + rope_type + "\" is not supported");
    c.rope_theta = r.number(rp, "rope_theta", r.number(*text, "rope_theta", 10000.0));
    const double partial = r.number(rp, "partial_rotary_factor", r.number(*text, "partial_rotary_factor", 0.25));
    c.rotary_dim = static_cast<std::size_t>(static_cast<double>(c.head_dim) * partial);
    if (c.rotary_dim % 2 || c.rotary_dim > c.head_dim || !(c.rope_theta > 0))
        throw r.fail("rope_parameters", "gives a rotary dimension " + std::to_string(c.rotary_dim) +
                                            " that is odd or larger than head_dim, or a non-positive rope_theta");
    // M-RoPE sections (default [11, 11, 10], Qwen3_5TextRotaryEmbedding); always interleaved.
    c.mrope_h = 11;
    c.mrope_w = 10;
    if (const auto ms = rp.find("mrope_section"); ms != rp.end() && !ms->is_null()) {
        if (!ms->is_array() || ms->size() != 3 || !(*ms)[1].is_number_unsigned() || !(*ms)[2].is_number_unsigned())
            throw r.fail("rope_parameters", "mrope_section must be a list of 3 non-negative integers");
        c.mrope_h = (*ms)[1].get<std::size_t>();
        c.mrope_w = (*ms)[2].get<std::size_t>();
    }
    if (text != &root) {
        const config_reader top{root, file};
        const auto id = [&](const char* key, std::int64_t def) {
            const auto it = root.find(key);
            if (it == root.end() || it->is_null()) return def;
            if (!it->is_number_integer() || it->get<std::int64_t>() < 0)
                throw top.fail(key, "must be a non-negative integer, got " + it->dump());
            return it->get<std::int64_t>();
        };
        // Defaults: Qwen3_5Config's.
        c.image_token = id("image_token_id", 248056);
        c.vision_start = id("vision_start_token_id", 248053);
        c.vision_end = id("vision_end_token_id", 248054);
    }
    return c;
}

// ---------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------

/// (1 + w) of a zero-centred RMSNorm weight.
std::vector<float> read_norm(const io::checkpoint& ck, const std::string& name, std::size_t n) {
    std::vector<float> w = read_floats(ck, name, n).values;
    for (float& x : w) x = 1.0f + x;
    return w;
}

struct mlp {
    linear gate, up, down;
};

struct expert {
    linear gate_up;          // fused [2I, H] (transformers' 3-D layout), or
    linear gate, up;         // separate [I, H] (per-expert checkpoints)
    linear down;             // [H, I]
};

struct layer {
    bool full = false;
    std::vector<float> in_norm, post_norm;
    // Gated DeltaNet
    linear qkv, z, b, a, out;
    std::vector<float> conv_w, neg_a, dt_bias, gnorm;  // conv_w [conv_dim][K]; neg_a = −exp(A_log)
    // gated attention
    linear q, k, v, o;
    std::vector<float> q_norm, k_norm;
    // MLP or MoE
    mlp dense;
    linear router, shared_gate;
    std::vector<expert> experts;
    mlp shared;
};

inline float silu(float x) noexcept { return x / (1.0f + std::exp(-x)); }
inline float sigmoid(float x) noexcept { return 1.0f / (1.0f + std::exp(-x)); }
inline float softplus(float x) noexcept { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // torch, threshold 20

/// x[0..n) → x / sqrt(mean(x²) + eps) · w (w holds 1 + weight, or the plain weight).
inline void rms_norm(const float* x, std::size_t n, const float* w, float eps, float* y) noexcept {
    float ss = 0.0f;
    for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (std::size_t i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

class qwen35 final : public qwen35_model {
public:
    qwen35(const std::filesystem::path& dir, const model_options& options)
        : dir_(dir), ck_(io::checkpoint::open(dir)), opt_(options), cfg_(read_config(ck_)) {
        lo_ = linear_options{.threads = opt_.threads, .int8_activations = opt_.int8_activations};
        if (opt_.prefill_chunk == 0) throw std::runtime_error("qwen35: prefill_chunk must be positive");
        max_context_ = opt_.max_context ? opt_.max_context : cfg_.max_positions;
        prefix_ = ck_.contains("model.language_model.embed_tokens.weight") ? "model.language_model." : "model.";
        load_weights();
        if (ck_.config().contains("vision_config") && ck_.contains("model.visual.patch_embed.proj.weight")) {
            vision_.emplace(ck_, "model.visual.", lo_);
            weight_bytes_ += vision_->weight_bytes();
            if (vision_->config().out_hidden != cfg_.hidden)
                throw std::runtime_error((ck_.path() / "config.json").string() +
                                         ": vision_config.out_hidden_size " +
                                         std::to_string(vision_->config().out_hidden) +
                                         " is not the text hidden_size " + std::to_string(cfg_.hidden));
            if (cfg_.image_token < 0 || static_cast<std::size_t>(cfg_.image_token) >= cfg_.vocab)
                throw std::runtime_error((ck_.path() / "config.json").string() + ": image_token_id " +
                                         std::to_string(cfg_.image_token) + " is outside the vocabulary");
        }
        // RoPE inverse frequencies as transformers computes them (fp32).
        for (std::size_t i = 0; i < cfg_.rotary_dim / 2; ++i)
            inv_freq_.push_back(1.0f / std::pow(static_cast<float>(cfg_.rope_theta),
                                                static_cast<float>(2 * i) / static_cast<float>(cfg_.rotary_dim)));
        for (std::size_t i = 0; i < cfg_.layers; ++i) {
            if (cfg_.full[i]) {
                kv_.push_back(make_kv(opt_.kv_bits, kv_cache_config{.n_kv_heads = cfg_.kv_heads,
                                                                    .head_dim = cfg_.head_dim,
                                                                    .capacity = max_context_}));
            } else {
                conv_state_.emplace_back((cfg_.conv_kernel - 1) * cfg_.conv_dim(), 0.0f);
                delta_state_.emplace_back(delta_shape().state_size(), 0.0f);
            }
        }
    }

    std::size_t vocab_size() const override { return cfg_.vocab; }
    std::size_t position() const override { return pos_; }
    std::size_t max_context() const override { return max_context_; }

    void reset() override {
        images_.clear();
        clear_cache();
    }

    void truncate(std::size_t n) override {
        if (n == pos_) return;
        if (n == 0) {
            // Empties the cache but keeps the images queued and not yet fed (a caller that
            // re-feeds a prompt from the start queues its images first); one partly fed has
            // lost its first tokens and is dropped.
            if (!images_.empty() && images_.front().used) images_.pop_front();
            return clear_cache();
        }
        throw std::invalid_argument("qwen35: cannot truncate the cache from position " + std::to_string(pos_) +
                                    " to " + std::to_string(n) +
                                    ": the linear-attention layers keep a recurrent state that cannot be rolled "
                                    "back (only truncate(position()) and truncate(0) are possible)");
    }

    void forward(std::span<const std::int32_t> ids, std::span<float> logits, bool all_positions) override {
        const std::size_t n = ids.size(), V = cfg_.vocab;
        if (n == 0) throw std::invalid_argument("qwen35: forward of no tokens");
        if (logits.size() != (all_positions ? n * V : V))
            throw std::invalid_argument("qwen35: logits hold " + std::to_string(logits.size()) + " floats, expected " +
                                        std::to_string(all_positions ? n * V : V));
        for (std::int32_t id : ids)
            if (id < 0 || static_cast<std::size_t>(id) >= V)
                throw std::invalid_argument("qwen35: token id " + std::to_string(id) + " is outside the vocabulary of " +
                                            std::to_string(V));
        if (n > max_context_ - pos_)
            throw std::invalid_argument("qwen35: " + std::to_string(pos_) + " + " + std::to_string(n) +
                                        " tokens exceed the context of " + std::to_string(max_context_));
        // Positions (t, h, w) and image rows of the new tokens (get_rope_index); images
        // consumed here stay alive in `done` until the chunks have run.
        std::vector<std::array<std::int64_t, 3>> pos(n);
        std::vector<const float*> rows(n, nullptr);
        std::vector<queued_image> done;
        for (std::size_t i = 0; i < n; ++i) {
            const auto index = static_cast<std::int64_t>(pos_ + i);
            if (ids[i] != cfg_.image_token || images_.empty()) {
                pos[i].fill(index + rope_delta_);
                continue;
            }
            queued_image& im = images_.front();
            const std::size_t k = im.used++, area = im.h * im.w;
            if (k == 0) im.start = index + rope_delta_;
            pos[i] = {im.start + static_cast<std::int64_t>(k / area), im.start + static_cast<std::int64_t>(k / im.w % im.h),
                      im.start + static_cast<std::int64_t>(k % im.w)};
            rows[i] = im.embeddings.data() + k * cfg_.hidden;
            if (im.used == im.t * area) {
                // The text after the image continues at start + max(h, w).
                rope_delta_ += static_cast<std::int64_t>(std::max(im.h, im.w)) - static_cast<std::int64_t>(im.used);
                done.push_back(std::move(im));  // a moved vector keeps its buffer: rows stay valid
                images_.pop_front();
            }
        }
        for (std::size_t c0 = 0; c0 < n; c0 += opt_.prefill_chunk) {
            const std::size_t m = std::min(opt_.prefill_chunk, n - c0);
            const bool last = c0 + m == n;
            float* out = all_positions ? logits.data() + c0 * V : last ? logits.data() : nullptr;
            run(ids.data() + c0, pos.data() + c0, rows.data() + c0, m, out, all_positions);
        }
    }

    std::size_t weight_bytes() const override { return weight_bytes_; }

    std::size_t cache_bytes() const override {
        std::size_t bytes = 0;
        for (const auto& c : kv_) bytes += std::visit([&](const auto& kv) { return kv.bytes_per_token(); }, c) * pos_;
        for (const auto& s : conv_state_) bytes += s.size() * sizeof(float);
        for (const auto& s : delta_state_) bytes += s.size() * sizeof(float);
        return bytes;
    }

    std::string description() const override {
        const std::size_t full = static_cast<std::size_t>(std::count(cfg_.full.begin(), cfg_.full.end(), true));
        std::string d = "Qwen3.5" + std::string(cfg_.moe ? " MoE" : "") + " (" + cfg_.model_type + "): " +
                        std::to_string(cfg_.layers) + " layers (" + std::to_string(cfg_.layers - full) +
                        " Gated DeltaNet, " + std::to_string(full) + " full attention), hidden " +
                        std::to_string(cfg_.hidden);
        if (cfg_.moe)
            d += ", " + std::to_string(cfg_.experts) + " experts top-" + std::to_string(cfg_.top_k) + " + shared";
        if (vision_)
            d += ", vision tower " + std::to_string(vision_->config().depth) + " blocks hidden " +
                 std::to_string(vision_->config().hidden);
        d += ", weights " + weight_format_ + ", KV ";
        d += kv_.empty() ? std::string("none") : std::visit([](const auto& kv) {
            return std::string(std::decay_t<decltype(kv)>::policy::name());
        }, kv_.front());
        return d;
    }

    bool has_vision() const override { return vision_.has_value(); }

    std::int32_t image_token_id() const override {
        return vision_ ? static_cast<std::int32_t>(cfg_.image_token) : -1;
    }

    std::vector<std::int32_t> image_placeholder(std::size_t tokens) const override {
        need_vision();
        std::vector<std::int32_t> ids(tokens + 2, static_cast<std::int32_t>(cfg_.image_token));
        ids.front() = static_cast<std::int32_t>(cfg_.vision_start);
        ids.back() = static_cast<std::int32_t>(cfg_.vision_end);
        return ids;
    }

    const qwen35_image_config& image_config() const override {
        need_vision();
        if (!image_config_) {
            image_config_ = qwen35_image_config::load(dir_);
            const qwen35_vision_config& v = vision_->config();
            if (image_config_->patch_size != v.patch || image_config_->temporal_patch_size != v.temporal_patch ||
                image_config_->merge_size != v.merge)
                throw std::runtime_error((dir_ / "preprocessor_config.json").string() +
                                         ": patch_size, temporal_patch_size or merge_size differ from config.json's "
                                         "vision_config");
        }
        return *image_config_;
    }

    qwen35_vision_output encode_image(const qwen35_pixels& pixels) const override {
        need_vision();
        if (pixels.patch_dim != vision_->config().patch_dim())
            throw std::invalid_argument("qwen35: patches of " + std::to_string(pixels.patch_dim) +
                                        " values, the vision tower takes " +
                                        std::to_string(vision_->config().patch_dim()));
        return vision_->forward(pixels.values, pixels.grid_t, pixels.grid_h, pixels.grid_w);
    }

    std::size_t add_image(const qwen35_pixels& pixels) override {
        qwen35_vision_output out = encode_image(pixels);
        const std::size_t m = vision_->config().merge;
        images_.push_back({std::move(out.merged), pixels.grid_t, pixels.grid_h / m, pixels.grid_w / m, 0, 0});
        return pixels.patches() / (m * m);
    }

    std::vector<std::int32_t> queue_image(const rgb_image& image) override {
        if (!vision_)
            throw std::runtime_error(description() + ": this model does not read images (no vision tower in " +
                                     (ck_.path() / "config.json").string() + ")");
        const std::size_t n = add_image(qwen35_preprocess(image, image_config()));
        return std::vector<std::int32_t>(n, static_cast<std::int32_t>(cfg_.image_token));
    }

    std::size_t pending_image_tokens() const override {
        std::size_t n = 0;
        for (const queued_image& im : images_) n += im.t * im.h * im.w - im.used;
        return n;
    }

private:
    void clear_cache() {
        pos_ = 0;
        rope_delta_ = 0;
        for (auto& c : kv_) std::visit([](auto& kv) { kv.clear(); }, c);
        for (auto& s : conv_state_) std::fill(s.begin(), s.end(), 0.0f);
        for (auto& s : delta_state_) std::fill(s.begin(), s.end(), 0.0f);
    }

    void need_vision() const {
        if (!vision_)
            throw std::runtime_error((ck_.path() / "config.json").string() +
                                     ": the model has no vision tower (vision_config and model.visual.* tensors)");
    }

    delta_rule_shape delta_shape() const {
        return {.k_heads = cfg_.lk_heads, .v_heads = cfg_.lv_heads, .k_dim = cfg_.lk_dim, .v_dim = cfg_.lv_dim};
    }

    linear load_linear(const std::string& name, std::size_t rows, std::size_t cols) {
        linear l = linear::load(ck_, name, rows, cols);
        note(l);
        return l;
    }
    void note(const linear& l) {
        weight_bytes_ += l.bytes();
        const std::string f = l.format();
        if (weight_format_.empty()) weight_format_ = f;
        else if (weight_format_.find(f) == std::string::npos) weight_format_ += "+" + f;
    }
    std::vector<float> load_floats(const std::string& name, std::size_t n) {
        weight_bytes_ += n * sizeof(float);
        return read_floats(ck_, name, n).values;
    }
    std::vector<float> load_norm(const std::string& name, std::size_t n) {
        weight_bytes_ += n * sizeof(float);
        return read_norm(ck_, name, n);
    }
    mlp load_mlp(const std::string& p, std::size_t inter) {
        const std::size_t H = cfg_.hidden;
        return {load_linear(p + "gate_proj.weight", inter, H), load_linear(p + "up_proj.weight", inter, H),
                load_linear(p + "down_proj.weight", H, inter)};
    }

    void load_weights() {
        const std::size_t H = cfg_.hidden;
        embed_ = load_linear(prefix_ + "embed_tokens.weight", cfg_.vocab, H);  // dense or HLWQ: row() dequantizes
        final_norm_ = load_norm(prefix_ + "norm.weight", H);
        if (ck_.contains("lm_head.weight")) lm_head_ = load_linear("lm_head.weight", cfg_.vocab, H);
        else if (cfg_.tie) lm_head_ = embed_;
        else
            throw std::runtime_error(ck_.path().string() + ": tensor 'lm_head.weight' is missing "
                                     "(and tie_word_embeddings is false)");
        layers_.resize(cfg_.layers);
        for (std::size_t i = 0; i < cfg_.layers; ++i) {
            layer& L = layers_[i];
            const std::string p = prefix_ + "layers." + std::to_string(i) + ".";
            L.full = cfg_.full[i];
            L.in_norm = load_norm(p + "input_layernorm.weight", H);
            L.post_norm = load_norm(p + "post_attention_layernorm.weight", H);
            if (L.full) {
                const std::string a = p + "self_attn.";
                const std::size_t hd = cfg_.head_dim;
                L.q = load_linear(a + "q_proj.weight", 2 * cfg_.heads * hd, H);
                L.k = load_linear(a + "k_proj.weight", cfg_.kv_heads * hd, H);
                L.v = load_linear(a + "v_proj.weight", cfg_.kv_heads * hd, H);
                L.o = load_linear(a + "o_proj.weight", H, cfg_.heads * hd);
                L.q_norm = load_norm(a + "q_norm.weight", hd);
                L.k_norm = load_norm(a + "k_norm.weight", hd);
            } else {
                const std::string a = p + "linear_attn.";
                L.qkv = load_linear(a + "in_proj_qkv.weight", cfg_.conv_dim(), H);
                L.z = load_linear(a + "in_proj_z.weight", cfg_.value_dim(), H);
                L.b = load_linear(a + "in_proj_b.weight", cfg_.lv_heads, H);
                L.a = load_linear(a + "in_proj_a.weight", cfg_.lv_heads, H);
                L.out = load_linear(a + "out_proj.weight", H, cfg_.value_dim());
                L.conv_w = load_floats(a + "conv1d.weight", cfg_.conv_dim() * cfg_.conv_kernel);
                L.neg_a = load_floats(a + "A_log", cfg_.lv_heads);
                for (float& x : L.neg_a) x = -std::exp(x);
                L.dt_bias = load_floats(a + "dt_bias", cfg_.lv_heads);
                L.gnorm = load_floats(a + "norm.weight", cfg_.lv_dim);
            }
            if (!cfg_.moe) {
                L.dense = load_mlp(p + "mlp.", cfg_.intermediate);
                continue;
            }
            const std::string m = p + "mlp.";
            const std::size_t E = cfg_.experts, I = cfg_.moe_intermediate;
            L.router = load_linear(m + "gate.weight", E, H);
            L.shared = load_mlp(m + "shared_expert.", cfg_.shared_intermediate);
            L.shared_gate = load_linear(m + "shared_expert_gate.weight", 1, H);
            L.experts.resize(E);
            const bool fused = ck_.contains(m + "experts.gate_up_proj");
            for (std::size_t e = 0; e < E; ++e) {
                expert& x = L.experts[e];
                if (fused) {
                    x.gate_up = linear::load_expert(ck_, m + "experts.gate_up_proj", e, E, 2 * I, H);
                    x.down = linear::load_expert(ck_, m + "experts.down_proj", e, E, H, I);
                    note(x.gate_up);
                    note(x.down);
                } else {
                    const std::string ep = m + "experts." + std::to_string(e) + ".";
                    x.gate = load_linear(ep + "gate_proj.weight", I, H);
                    x.up = load_linear(ep + "up_proj.weight", I, H);
                    x.down = load_linear(ep + "down_proj.weight", H, I);
                }
            }
        }
    }

    /// One chunk of m tokens at pos_: updates every layer's cache; writes the logits of all m
    /// tokens (all) or of the last one (out may be null: none).
    /// `pos` holds the (t, h, w) positions of the m tokens; `image_rows[t]`, when set, is the image
    /// embedding that replaces token t's.
    void run(const std::int32_t* ids, const std::array<std::int64_t, 3>* pos, const float* const* image_rows,
             std::size_t m, float* out, bool all) {
        const std::size_t H = cfg_.hidden;
        std::vector<float> x(m * H), h(m * H), y(m * H);
        for (std::size_t t = 0; t < m; ++t) {
            if (image_rows[t]) std::copy_n(image_rows[t], H, x.data() + t * H);
            else embed_.row(static_cast<std::size_t>(ids[t]), x.data() + t * H);
        }
        std::size_t lin = 0, att = 0;
        for (layer& L : layers_) {
            for (std::size_t t = 0; t < m; ++t) rms_norm(x.data() + t * H, H, L.in_norm.data(), cfg_.eps, h.data() + t * H);
            if (L.full) attention(L, kv_[att++], h.data(), pos, m, y.data());
            else delta_net(L, conv_state_[lin], delta_state_[lin], h.data(), m, y.data()), ++lin;
            for (std::size_t i = 0; i < m * H; ++i) x[i] += y[i];
            for (std::size_t t = 0; t < m; ++t)
                rms_norm(x.data() + t * H, H, L.post_norm.data(), cfg_.eps, h.data() + t * H);
            if (cfg_.moe) moe(L, h.data(), m, y.data());
            else swiglu(L.dense, h.data(), m, y.data());
            for (std::size_t i = 0; i < m * H; ++i) x[i] += y[i];
        }
        pos_ += m;
        if (!out) return;
        const std::size_t first = all ? 0 : m - 1, rows = m - first;
        for (std::size_t t = 0; t < rows; ++t)
            rms_norm(x.data() + (first + t) * H, H, final_norm_.data(), cfg_.eps, h.data() + t * H);
        lm_head_.forward(h.data(), rows, out, lo_);
    }

    void delta_net(const layer& L, std::vector<float>& conv_state, std::vector<float>& state, const float* h,
                   std::size_t m, float* y) {
        const std::size_t CD = cfg_.conv_dim(), VD = cfg_.value_dim(), Hv = cfg_.lv_heads, dk = cfg_.lk_dim,
                          dv = cfg_.lv_dim;
        std::vector<float> mixed(m * CD), conv(m * CD), z(m * VD), b(m * Hv), a(m * Hv), g(m * Hv), core(m * VD);
        L.qkv.forward(h, m, mixed.data(), lo_);
        L.z.forward(h, m, z.data(), lo_);
        L.b.forward(h, m, b.data(), lo_);
        L.a.forward(h, m, a.data(), lo_);
        causal_conv1d(mixed.data(), m, CD, L.conv_w.data(), cfg_.conv_kernel, conv_state.data(), conv.data(), true);
        const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
        for (std::size_t t = 0; t < m; ++t) {
            float* row = conv.data() + t * CD;
            for (std::size_t j = 0; j < cfg_.lk_heads; ++j) {
                l2_normalize(row + j * dk, dk, 1e-6f, q_scale);
                l2_normalize(row + cfg_.key_dim() + j * dk, dk, 1e-6f);
            }
            for (std::size_t j = 0; j < Hv; ++j) {
                b[t * Hv + j] = sigmoid(b[t * Hv + j]);
                g[t * Hv + j] = L.neg_a[j] * softplus(a[t * Hv + j] + L.dt_bias[j]);
            }
        }
        const delta_rule_inputs in{.q = conv.data(),
                                   .k = conv.data() + cfg_.key_dim(),
                                   .v = conv.data() + 2 * cfg_.key_dim(),
                                   .stride = CD,
                                   .g = g.data(),
                                   .beta = b.data()};
        if (m == 1) gated_delta_recurrent(delta_shape(), in, m, state.data(), core.data(), opt_.threads);
        else gated_delta_chunked(delta_shape(), in, m, state.data(), core.data(), 64, opt_.threads);
        // Gated RMSNorm per value head: w · x̂ · silu(z).
        for (std::size_t i = 0; i < m * Hv; ++i) {
            float* c = core.data() + i * dv;
            rms_norm(c, dv, L.gnorm.data(), cfg_.eps, c);
            const float* zz = z.data() + i * dv;
            for (std::size_t e = 0; e < dv; ++e) c[e] *= silu(zz[e]);
        }
        L.out.forward(core.data(), m, y, lo_);
    }

    /// M-RoPE on one head vector: frequency i rotates by the t, h or w position (see the top).
    void rope(float* v, const std::array<std::int64_t, 3>& pos) const {
        const std::size_t half_dim = cfg_.rotary_dim / 2;
        for (std::size_t i = 0; i < half_dim; ++i) {
            const std::size_t axis = i % 3 == 1 && i < 3 * cfg_.mrope_h ? 1 : i % 3 == 2 && i < 3 * cfg_.mrope_w ? 2 : 0;
            const float angle = inv_freq_[i] * static_cast<float>(pos[axis]);
            const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
            const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
            const float x1 = v[i], x2 = v[i + half_dim];
            v[i] = x1 * c - x2 * s;
            v[i + half_dim] = x2 * c + x1 * s;
        }
    }

    void attention(const layer& L, kv_any& cache, const float* h, const std::array<std::int64_t, 3>* pos, std::size_t m,
                   float* y) {
        const std::size_t hd = cfg_.head_dim, nq = cfg_.heads, nkv = cfg_.kv_heads;
        std::vector<float> qg(m * 2 * nq * hd), q(m * nq * hd), gate(m * nq * hd), k(m * nkv * hd), v(m * nkv * hd),
            o(m * nq * hd);
        L.q.forward(h, m, qg.data(), lo_);
        L.k.forward(h, m, k.data(), lo_);
        L.v.forward(h, m, v.data(), lo_);
        for (std::size_t t = 0; t < m; ++t) {
            for (std::size_t j = 0; j < nq; ++j) {
                const float* src = qg.data() + (t * nq + j) * 2 * hd;
                float* qq = q.data() + (t * nq + j) * hd;
                rms_norm(src, hd, L.q_norm.data(), cfg_.eps, qq);
                std::copy_n(src + hd, hd, gate.data() + (t * nq + j) * hd);
                rope(qq, pos[t]);
            }
            for (std::size_t j = 0; j < nkv; ++j) {
                float* kk = k.data() + (t * nkv + j) * hd;
                rms_norm(kk, hd, L.k_norm.data(), cfg_.eps, kk);
                rope(kk, pos[t]);
            }
        }
        const attention_params params{.scale = 1.0f / std::sqrt(static_cast<float>(hd)), .threads = opt_.threads};
        std::visit([&](auto& kv) {
            kv.append(k, v, m);
            kv.attention_chunk(q, nq, m, o, params);
        }, cache);
        for (std::size_t i = 0; i < o.size(); ++i) o[i] *= sigmoid(gate[i]);
        L.o.forward(o.data(), m, y, lo_);
    }

    void swiglu(const mlp& p, const float* h, std::size_t m, float* y) const {
        const std::size_t I = p.gate.rows();
        std::vector<float> g(m * I), u(m * I);
        p.gate.forward(h, m, g.data(), lo_);
        p.up.forward(h, m, u.data(), lo_);
        for (std::size_t i = 0; i < m * I; ++i) g[i] = silu(g[i]) * u[i];
        p.down.forward(g.data(), m, y, lo_);
    }

    void moe(const layer& L, const float* h, std::size_t m, float* y) const {
        const std::size_t H = cfg_.hidden, E = cfg_.experts, K = cfg_.top_k, I = cfg_.moe_intermediate;
        std::vector<float> logits(m * E);
        L.router.forward(h, m, logits.data(), lo_);
        // Softmax, top-k (largest first, lower index on ties), renormalized.
        std::vector<std::size_t> chosen(m * K);
        std::vector<float> weight(m * K);
        std::vector<std::size_t> order(E);
        for (std::size_t t = 0; t < m; ++t) {
            float* p = logits.data() + t * E;
            const float mx = *std::max_element(p, p + E);
            float sum = 0.0f;
            for (std::size_t e = 0; e < E; ++e) sum += p[e] = std::exp(p[e] - mx);
            for (std::size_t e = 0; e < E; ++e) p[e] /= sum;
            std::iota(order.begin(), order.end(), std::size_t{0});
            std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(K), order.end(),
                              [&](std::size_t i, std::size_t j) { return p[i] > p[j] || (p[i] == p[j] && i < j); });
            float top = 0.0f;
            for (std::size_t k = 0; k < K; ++k) top += p[order[k]];
            for (std::size_t k = 0; k < K; ++k) {
                chosen[t * K + k] = order[k];
                weight[t * K + k] = p[order[k]] / top;
            }
        }
        std::fill(y, y + m * H, 0.0f);
        std::vector<float> xe, gu, act, ye;
        std::vector<std::pair<std::size_t, float>> hits;  // (token, weight)
        for (std::size_t e = 0; e < E; ++e) {
            hits.clear();
            for (std::size_t t = 0; t < m; ++t)
                for (std::size_t k = 0; k < K; ++k)
                    if (chosen[t * K + k] == e) hits.emplace_back(t, weight[t * K + k]);
            if (hits.empty()) continue;
            const std::size_t n = hits.size();
            xe.resize(n * H);
            for (std::size_t i = 0; i < n; ++i) std::copy_n(h + hits[i].first * H, H, xe.data() + i * H);
            const expert& x = L.experts[e];
            act.resize(n * I);
            if (x.gate_up.rows()) {
                gu.resize(n * 2 * I);
                x.gate_up.forward(xe.data(), n, gu.data(), lo_);
                for (std::size_t i = 0; i < n; ++i)
                    for (std::size_t c = 0; c < I; ++c)
                        act[i * I + c] = silu(gu[i * 2 * I + c]) * gu[i * 2 * I + I + c];
            } else {
                gu.resize(2 * n * I);
                x.gate.forward(xe.data(), n, gu.data(), lo_);
                x.up.forward(xe.data(), n, gu.data() + n * I, lo_);
                for (std::size_t i = 0; i < n * I; ++i) act[i] = silu(gu[i]) * gu[n * I + i];
            }
            ye.resize(n * H);
            x.down.forward(act.data(), n, ye.data(), lo_);
            for (std::size_t i = 0; i < n; ++i) {
                float* dst = y + hits[i].first * H;
                for (std::size_t c = 0; c < H; ++c) dst[c] += ye[i * H + c] * hits[i].second;
            }
        }
        std::vector<float> s(m * H), sg(m);
        swiglu(L.shared, h, m, s.data());
        L.shared_gate.forward(h, m, sg.data(), lo_);
        for (std::size_t t = 0; t < m; ++t) {
            const float f = sigmoid(sg[t]);
            for (std::size_t c = 0; c < H; ++c) y[t * H + c] += f * s[t * H + c];
        }
    }

    /// An encoded image waiting for its image-pad tokens.
    struct queued_image {
        std::vector<float> embeddings;      // [t · h · w][hidden]
        std::size_t t = 0, h = 0, w = 0;    // token grid (patch grid / merge in h and w)
        std::size_t used = 0;               // tokens already fed
        std::int64_t start = 0;             // M-RoPE position of its first token
    };

    std::filesystem::path dir_;
    io::checkpoint ck_;
    model_options opt_{};
    config cfg_{};
    linear_options lo_{};
    std::size_t max_context_ = 0;
    std::string prefix_{};
    linear embed_{}, lm_head_{};
    std::vector<float> final_norm_{};
    std::vector<layer> layers_{};
    std::vector<float> inv_freq_{};
    std::vector<kv_any> kv_{};
    std::vector<std::vector<float>> conv_state_{}, delta_state_{};
    std::size_t pos_ = 0;
    std::int64_t rope_delta_ = 0;  // M-RoPE text position − cache index (negative after images)
    std::optional<qwen35_vision> vision_{};
    mutable std::optional<qwen35_image_config> image_config_{};
    std::deque<queued_image> images_{};
    std::size_t weight_bytes_ = 0;
    std::string weight_format_{};
};

}  // namespace

std::unique_ptr<causal_lm> load_qwen35(const std::filesystem::path& dir, const model_options& options) {
    return open_qwen35(dir, options);
}

std::unique_ptr<qwen35_model> open_qwen35(const std::filesystem::path& dir, const model_options& options) {
    try {
        return std::make_unique<qwen35>(dir, options);
    } catch (const std::runtime_error&) {
        throw;
    } catch (const std::exception& e) {  // std::invalid_argument and the like from the library
        throw std::runtime_error("qwen35: " + dir.string() + ": " + e.what());
    }
}

}  // namespace hlwq::rt
