// SPDX-License-Identifier: MIT
// The Gemma 4 vision tower as transformers 5.17 computes it (models/gemma4/modeling_gemma4.py:
// Gemma4VisionModel, Gemma4VisionPatchEmbedder, Gemma4VisionEncoder(+Layer, Attention, MLP),
// Gemma4VisionPooler, Gemma4MultimodalEmbedder), in fp32. Reads top to bottom like the forward:
//
//   x = input_proj(2 · (pixels − 0.5)) + table[0][pos_x] + table[1][pos_y]      (patch embedder)
//   for each layer:
//     a = input_layernorm(x)
//     q = RoPE₂(q_norm(q_proj a));  k = RoPE₂(k_norm(k_proj a));  v = v_norm(v_proj a)
//     x = x + post_attention_layernorm(o_proj softmax(q kᵀ · 1) v)      (all patches see all)
//     x = x + post_feedforward_layernorm(down(act(gate m) · up m)),  m = pre_feedforward_layernorm(x)
//   s = mean over each k × k block of patches (by position) · √hidden                   (pooler)
//   s = (s − std_bias) · std_scale                                            (if standardize)
//   e = embedding_projection(RMSNorm_noscale(s))                                 (embed_vision)
//
// RoPE₂ (axial): the first half of each head rotates with the patch's x, the second half with
// its y, each half as rotate_half RoPE with inv_freq = θ^(−2i / (head_dim/2)). Linear layers
// are "clippable": with use_clipped_linears their inputs and outputs are clamped to stored
// bounds. The processor's padding patches are never built (gemma4_image.hpp), so attention
// runs over the real patches only, as the padding mask makes transformers do.
#include "gemma4_vision.hpp"
#include "dense_gemm.hpp"

#include <hlwq/detail/parallel.hpp>
#include <hlwq/io/hlwq_format.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace hlwq::rt {
namespace {

using json = nlohmann::json;

gemma4_vision_config parse_vision_config(const json& root, const std::string& file) {
    const json& v = root["vision_config"];
    const std::string where = file + " (vision_config)";
    const auto fail = [&](const std::string& what) { return std::runtime_error(where + ": " + what); };
    const auto count = [&](const char* key, std::optional<std::size_t> def = std::nullopt) -> std::size_t {
        const auto it = v.find(key);
        if (it == v.end() || it->is_null()) {
            if (def) return *def;
            throw fail(std::string("key '") + key + "' is missing");
        }
        if (!it->is_number_integer() || it->get<std::int64_t>() <= 0)
            throw fail(std::string("key '") + key + "' must be a positive integer, got " + it->dump());
        return static_cast<std::size_t>(it->get<std::int64_t>());
    };
    const auto flag = [&](const char* key, bool def) {
        const auto it = v.find(key);
        if (it == v.end() || it->is_null()) return def;
        if (!it->is_boolean()) throw fail(std::string("key '") + key + "' must be true or false");
        return it->get<bool>();
    };
    gemma4_vision_config c;
    c.hidden = count("hidden_size", 768);
    c.intermediate = count("intermediate_size", 3072);
    c.layers = count("num_hidden_layers", 16);
    c.heads = count("num_attention_heads", 12);
    c.kv_heads = count("num_key_value_heads", c.heads);
    c.head_dim = count("head_dim", c.hidden / c.heads);
    c.patch_size = count("patch_size", 16);
    c.pooling_kernel = count("pooling_kernel_size", 3);
    c.position_embedding_size = count("position_embedding_size", 10240);
    c.clipped_linears = flag("use_clipped_linears", false);
    c.standardize = flag("standardize", false);
    if (c.heads % c.kv_heads) throw fail("num_attention_heads is not a multiple of num_key_value_heads");
    if (c.head_dim % 4) throw fail("head_dim must be a multiple of 4 (two axes of rotate-half RoPE)");
    if (const auto it = v.find("rms_norm_eps"); it != v.end() && !it->is_null()) {
        if (!it->is_number() || !(it->get<double>() > 0)) throw fail("key 'rms_norm_eps' must be positive");
        c.eps = it->get<float>();
    }
    if (const auto it = v.find("hidden_activation"); it != v.end() && !it->is_null()) {
        const std::string act = it->is_string() ? it->get<std::string>() : it->dump();
        if (act == "gelu_pytorch_tanh" || act == "gelu_python_tanh") c.gelu_tanh = true;
        else if (act == "silu" || act == "swish") c.gelu_tanh = false;
        else throw fail("key 'hidden_activation' = \"" + act + "\" is not supported (gelu_pytorch_tanh, silu)");
    }
    if (const auto it = v.find("rope_parameters"); it != v.end() && it->is_object()) {
        const std::string type = it->value("rope_type", std::string("axial"));
        if (type != "axial") throw fail("rope_parameters.rope_type \"" + type + "\" is not supported (axial)");
        if (const auto t = it->find("rope_theta"); t != it->end() && t->is_number()) c.rope_theta = t->get<double>();
    }
    if (v.contains("output_proj_dims") && !v["output_proj_dims"].is_null())
        throw fail("key 'output_proj_dims' is not supported");
    const json& text = root["text_config"];
    if (!text.is_object() || !text.contains("hidden_size") || !text["hidden_size"].is_number_integer())
        throw std::runtime_error(file + ": text_config.hidden_size is missing");
    c.text_hidden = text["hidden_size"].get<std::size_t>();
    return c;
}

/// Gemma4RMSNorm over n vectors of d (in place): x · (mean(x²) + eps)^-½ · w (w may be null).
void rms_norm(float* x, std::size_t n, std::size_t d, const float* w, float eps) {
    for (std::size_t t = 0; t < n; ++t) {
        float* v = x + t * d;
        double ss = 0;
        for (std::size_t i = 0; i < d; ++i) ss += static_cast<double>(v[i]) * v[i];
        const float ms = static_cast<float>(ss / static_cast<double>(d)) + eps;
        const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ms)));
        for (std::size_t i = 0; i < d; ++i) v[i] = w ? v[i] * inv * w[i] : v[i] * inv;
    }
}

float gelu_tanh(float x) {
    constexpr float k = 0.7978845608028654f;  // √(2/π)
    return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}

class vision_model final : public gemma4_vision {
public:
    vision_model(const std::filesystem::path& dir, gemma4_vision_config cfg, const linear_options& o)
        : ck_(io::checkpoint::open(dir)), cfg_(std::move(cfg)), lin_(o) {
        load_weights();
        // Axial RoPE: inv_freq over spatial_dim = head_dim / 2, in fp32 as torch computes it.
        const std::size_t spatial = cfg_.head_dim / 2;
        for (std::size_t i = 0; i < spatial / 2; ++i) {
            const float e = static_cast<float>(2 * i) / static_cast<float>(spatial);
            inv_freq_.push_back(1.0f / std::pow(static_cast<float>(cfg_.rope_theta), e));
        }
    }

    const gemma4_vision_config& config() const override { return cfg_; }
    std::size_t weight_bytes() const override { return weight_bytes_; }

    std::string description() const override {
        std::ostringstream s;
        s << "gemma4 vision: " << cfg_.layers << " layers, hidden " << cfg_.hidden << ", " << cfg_.heads
          << " heads of " << cfg_.head_dim << ", patch " << cfg_.patch_size << ", pooling " << cfg_.pooling_kernel
          << ", weights ";
        std::string f;
        for (const auto& x : formats_) f += (f.empty() ? "" : "+") + x;
        s << f;
        return s.str();
    }

    std::vector<float> encode(const gemma4_pixels& px) const override {
        check(px);
        const std::size_t n = px.patches(), H = cfg_.hidden;
        // --- patch embedder ---
        std::vector<float> in(px.values.size());
        for (std::size_t i = 0; i < in.size(); ++i) in[i] = 2.0f * (px.values[i] - 0.5f);
        std::vector<float> h(n * H);
        patch_proj_.forward_gemm(in.data(), n, h.data(), lin_);
        const std::size_t P = cfg_.position_embedding_size;
        for (std::size_t t = 0; t < n; ++t) {
            const auto [x, y] = px.positions[t];
            const float* ex = pos_table_.data() + static_cast<std::size_t>(x) * H;
            const float* ey = pos_table_.data() + (P + static_cast<std::size_t>(y)) * H;
            for (std::size_t i = 0; i < H; ++i) h[t * H + i] += ex[i] + ey[i];
        }
        // --- RoPE angles per patch: [n][head_dim/4] for x, then for y ---
        const std::size_t quarter = inv_freq_.size();
        std::vector<float> cos(n * 2 * quarter), sin(n * 2 * quarter);
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t axis = 0; axis < 2; ++axis)
                for (std::size_t i = 0; i < quarter; ++i) {
                    const float a = static_cast<float>(px.positions[t][axis]) * inv_freq_[i];
                    cos[(t * 2 + axis) * quarter + i] = std::cos(a);
                    sin[(t * 2 + axis) * quarter + i] = std::sin(a);
                }
        // --- encoder layers ---
        for (const auto& w : layers_) encoder_layer(w, h, n, cos, sin);
        return h;
    }

    std::vector<float> soft_tokens(const gemma4_pixels& px) const override {
        const std::vector<float> h = encode(px);
        const std::size_t H = cfg_.hidden, k = cfg_.pooling_kernel;
        // Pooler (_avg_pool_by_positions): patch (x, y) goes to kernel x/k + (grid_w/k) · (y/k);
        // each kernel is the mean of its k² patches (one_hot / k² @ h in fp32), then · √hidden.
        const std::size_t kw = px.grid_w / k, kh = px.grid_h / k;
        std::vector<float> s(kw * kh * H, 0.0f);
        const float inv_k2 = 1.0f / static_cast<float>(k * k);
        for (std::size_t t = 0; t < px.patches(); ++t) {
            const auto [x, y] = px.positions[t];
            const std::size_t kern = static_cast<std::size_t>(x) / k + kw * (static_cast<std::size_t>(y) / k);
            for (std::size_t i = 0; i < H; ++i) s[kern * H + i] += h[t * H + i] * inv_k2;
        }
        const float root = static_cast<float>(std::sqrt(static_cast<double>(H)));
        for (std::size_t t = 0; t < kw * kh; ++t)
            for (std::size_t i = 0; i < H; ++i) {
                float& v = s[t * H + i];
                v *= root;
                if (cfg_.standardize) v = (v - std_bias_[i]) * std_scale_[i];
            }
        return s;
    }

    std::vector<float> embed(const std::vector<float>& soft) const override {
        const std::size_t H = cfg_.hidden, n = soft.size() / H;
        if (soft.size() != n * H) throw std::invalid_argument("gemma4_vision::embed: not a whole number of soft tokens");
        std::vector<float> x = soft, out(n * cfg_.text_hidden);
        rms_norm(x.data(), n, H, nullptr, cfg_.eps);
        embed_proj_.forward_gemm(x.data(), n, out.data(), lin_);
        return out;
    }

private:
    /// A Gemma4ClippableLinear: the layer and, with use_clipped_linears, its clamp bounds.
    struct clip_linear {
        linear w{};
        float in_min = -INFINITY, in_max = INFINITY, out_min = -INFINITY, out_max = INFINITY;
    };
    struct layer_weights {
        std::vector<float> input_norm, post_attn_norm, pre_ff_norm, post_ff_norm, q_norm, k_norm;
        clip_linear q, k, v, o, gate, up, down;
    };

    void check(const gemma4_pixels& px) const {
        const std::size_t p = cfg_.patch_size, k = cfg_.pooling_kernel;
        if (px.patch_dim != 3 * p * p || px.values.size() != px.patches() * px.patch_dim ||
            px.positions.size() != px.patches() || px.patches() == 0)
            throw std::invalid_argument("gemma4_vision: pixels of " + std::to_string(px.patches()) + " patches of " +
                                        std::to_string(px.patch_dim) + " values do not fit patches of " +
                                        std::to_string(3 * p * p));
        if (px.grid_w % k || px.grid_h % k)
            throw std::invalid_argument("gemma4_vision: a grid of " + std::to_string(px.grid_w) + " x " +
                                        std::to_string(px.grid_h) + " patches is not a multiple of the pooling kernel " +
                                        std::to_string(k));
        for (const auto& [x, y] : px.positions)
            if (x < 0 || y < 0 || static_cast<std::size_t>(x) >= std::min(px.grid_w, cfg_.position_embedding_size) ||
                static_cast<std::size_t>(y) >= std::min(px.grid_h, cfg_.position_embedding_size))
                throw std::invalid_argument("gemma4_vision: patch position (" + std::to_string(x) + ", " +
                                            std::to_string(y) + ") is outside the grid or the position table of " +
                                            std::to_string(cfg_.position_embedding_size));
    }

    void apply(const clip_linear& l, const float* x, std::size_t n, float* y, std::vector<float>& scratch) const {
        if (cfg_.clipped_linears) {
            scratch.assign(x, x + n * l.w.cols());
            for (float& v : scratch) v = std::clamp(v, l.in_min, l.in_max);
            x = scratch.data();
        }
        l.w.forward_gemm(x, n, y, lin_);
        if (cfg_.clipped_linears)
            for (std::size_t i = 0; i < n * l.w.rows(); ++i) y[i] = std::clamp(y[i], l.out_min, l.out_max);
    }

    /// Rotate-half RoPE of n_heads vectors of d at x: the first d/2 with the x angles, the
    /// second d/2 with the y angles (pairs (i, i + d/4) in each half).
    static void rope2(float* x, std::size_t n_heads, std::size_t d, const float* cos, const float* sin) {
        const std::size_t half = d / 2, quarter = d / 4;
        for (std::size_t h = 0; h < n_heads; ++h)
            for (std::size_t axis = 0; axis < 2; ++axis) {
                float* v = x + h * d + axis * half;
                const float* c = cos + axis * quarter;
                const float* s = sin + axis * quarter;
                for (std::size_t i = 0; i < quarter; ++i) {
                    const float a = v[i], b = v[i + quarter];
                    v[i] = a * c[i] - b * s[i];
                    v[i + quarter] = b * c[i] + a * s[i];
                }
            }
    }

    void encoder_layer(const layer_weights& w, std::vector<float>& h, std::size_t n, const std::vector<float>& cos,
                       const std::vector<float>& sin) const {
        const std::size_t H = cfg_.hidden, d = cfg_.head_dim, nq = cfg_.heads, nkv = cfg_.kv_heads;
        const std::size_t quarter = d / 4;
        std::vector<float> x(h), scratch, q(n * nq * d), k(n * nkv * d), v(n * nkv * d), att(n * nq * d);
        // --- self-attention (Gemma4VisionAttention, scaling 1, bidirectional) ---
        rms_norm(x.data(), n, H, w.input_norm.data(), cfg_.eps);
        apply(w.q, x.data(), n, q.data(), scratch);
        apply(w.k, x.data(), n, k.data(), scratch);
        apply(w.v, x.data(), n, v.data(), scratch);
        rms_norm(q.data(), n * nq, d, w.q_norm.data(), cfg_.eps);
        rms_norm(k.data(), n * nkv, d, w.k_norm.data(), cfg_.eps);
        rms_norm(v.data(), n * nkv, d, nullptr, cfg_.eps);
        for (std::size_t t = 0; t < n; ++t) {
            rope2(q.data() + t * nq * d, nq, d, cos.data() + t * 2 * quarter, sin.data() + t * 2 * quarter);
            rope2(k.data() + t * nkv * d, nkv, d, cos.data() + t * 2 * quarter, sin.data() + t * 2 * quarter);
        }
        const std::size_t group = nq / nkv;
        // Per (head, block of queries): the scores Q Kᵀ and the output P V as GEMMs on the
        // strided q/k/v blocks in place (dense_gemm.hpp), the softmax of each score row between
        // them (all patches see all). A block's scores (qb × n) stay in cache.
        constexpr std::size_t qb = 64;
        const std::size_t qblocks = (n + qb - 1) / qb, items = nq * qblocks;
        detail::parallel_for(items, detail::thread_count(lin_.threads, items, 1), [&](std::size_t i0, std::size_t i1) {
            std::vector<float> score(std::min(qb, n) * n);
            for (std::size_t it = i0; it < i1; ++it) {
                const std::size_t hq = it / qblocks, t0 = it % qblocks * qb, m = std::min(qb, n - t0), hk = hq / group;
                gemm_xwt(q.data() + (t0 * nq + hq) * d, nq * d, k.data() + hk * d, nkv * d, score.data(), n, m, n, d);
                softmax_rows(score.data(), n, m, n);
                gemm_xw(score.data(), n, v.data() + hk * d, nkv * d, att.data() + (t0 * nq + hq) * d, nq * d, m, d, n);
            }
        });
        apply(w.o, att.data(), n, x.data(), scratch);
        rms_norm(x.data(), n, H, w.post_attn_norm.data(), cfg_.eps);
        for (std::size_t i = 0; i < n * H; ++i) h[i] += x[i];

        // --- MLP (Gemma4VisionMLP) ---
        std::copy(h.begin(), h.end(), x.begin());
        rms_norm(x.data(), n, H, w.pre_ff_norm.data(), cfg_.eps);
        const std::size_t I = cfg_.intermediate;
        std::vector<float> g(n * I), u(n * I);
        apply(w.gate, x.data(), n, g.data(), scratch);
        apply(w.up, x.data(), n, u.data(), scratch);
        for (std::size_t i = 0; i < n * I; ++i) {
            const float a = g[i];
            g[i] = (cfg_.gelu_tanh ? gelu_tanh(a) : a / (1.0f + std::exp(-a))) * u[i];
        }
        apply(w.down, g.data(), n, x.data(), scratch);
        rms_norm(x.data(), n, H, w.post_ff_norm.data(), cfg_.eps);
        for (std::size_t i = 0; i < n * H; ++i) h[i] += x[i];
    }

    // ---- loading ----------------------------------------------------------------------------

    /// A tensor of `size` elements (any shape) as fp32 (float_tensor.hpp).
    std::vector<float> dense(const std::string& n, std::size_t size) {
        float_tensor t = read_floats(ck_, n, size);
        weight_bytes_ += t.stored_bytes;
        return std::move(t.values);
    }

    linear lin(const std::string& n, std::size_t rows, std::size_t cols) {
        linear l = linear::load(ck_, n, rows, cols);
        weight_bytes_ += l.bytes();
        formats_.insert(l.format());
        return l;
    }

    clip_linear clip(const std::string& n, std::size_t rows, std::size_t cols) {
        clip_linear c{lin(n + ".linear.weight", rows, cols)};
        if (cfg_.clipped_linears) {
            c.in_min = dense(n + ".input_min", 1)[0];
            c.in_max = dense(n + ".input_max", 1)[0];
            c.out_min = dense(n + ".output_min", 1)[0];
            c.out_max = dense(n + ".output_max", 1)[0];
        }
        return c;
    }

    void load_weights() {
        const std::string p = "model.vision_tower.";
        const std::size_t H = cfg_.hidden, d = cfg_.head_dim, I = cfg_.intermediate;
        patch_proj_ = lin(p + "patch_embedder.input_proj.weight", H, 3 * cfg_.patch_size * cfg_.patch_size);
        pos_table_ = dense(p + "patch_embedder.position_embedding_table", 2 * cfg_.position_embedding_size * H);
        layers_.resize(cfg_.layers);
        for (std::size_t i = 0; i < cfg_.layers; ++i) {
            layer_weights& w = layers_[i];
            const std::string l = p + "encoder.layers." + std::to_string(i) + ".";
            w.input_norm = dense(l + "input_layernorm.weight", H);
            w.post_attn_norm = dense(l + "post_attention_layernorm.weight", H);
            w.pre_ff_norm = dense(l + "pre_feedforward_layernorm.weight", H);
            w.post_ff_norm = dense(l + "post_feedforward_layernorm.weight", H);
            w.q = clip(l + "self_attn.q_proj", cfg_.heads * d, H);
            w.k = clip(l + "self_attn.k_proj", cfg_.kv_heads * d, H);
            w.v = clip(l + "self_attn.v_proj", cfg_.kv_heads * d, H);
            w.o = clip(l + "self_attn.o_proj", H, cfg_.heads * d);
            w.q_norm = dense(l + "self_attn.q_norm.weight", d);
            w.k_norm = dense(l + "self_attn.k_norm.weight", d);
            w.gate = clip(l + "mlp.gate_proj", I, H);
            w.up = clip(l + "mlp.up_proj", I, H);
            w.down = clip(l + "mlp.down_proj", H, I);
        }
        if (cfg_.standardize) {
            std_bias_ = dense(p + "std_bias", H);
            std_scale_ = dense(p + "std_scale", H);
        }
        embed_proj_ = lin("model.embed_vision.embedding_projection.weight", cfg_.text_hidden, H);
    }

    io::checkpoint ck_;
    gemma4_vision_config cfg_;
    linear_options lin_;
    std::size_t weight_bytes_ = 0;
    std::set<std::string> formats_{};
    linear patch_proj_{}, embed_proj_{};
    std::vector<float> pos_table_{}, std_bias_{}, std_scale_{}, inv_freq_{};
    std::vector<layer_weights> layers_{};
};

}  // namespace

std::unique_ptr<gemma4_vision> gemma4_vision::open(const std::filesystem::path& dir, const linear_options& options) {
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
    if (!root.is_object() || !root.contains("vision_config") || !root["vision_config"].is_object()) return nullptr;
    return std::make_unique<vision_model>(dir, parse_vision_config(root, file.string()), options);
}

}  // namespace hlwq::rt
