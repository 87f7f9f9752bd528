// SPDX-License-Identifier: MIT
// The Qwen3.5 vision tower; see qwen35_vision.hpp. Follows transformers 5.17
// models/qwen3_5/modeling_qwen3_5.py (Qwen3_5VisionModel.forward and its modules) and
// vision_utils.py (get_vision_interpolation_indices_and_weights, get_vision_position_ids).
#include "qwen35_vision.hpp"

#include <hlwq/detail/parallel.hpp>
#include <hlwq/float16.hpp>
#include <hlwq/kv_cache.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace hlwq::rt {

namespace {

using json = nlohmann::json;

qwen35_vision_config read_vision_config(const io::checkpoint& ck) {
    const std::string file = (ck.path() / "config.json").string() + " (vision_config)";
    const auto it = ck.config().find("vision_config");
    if (it == ck.config().end() || !it->is_object())
        throw std::runtime_error((ck.path() / "config.json").string() + ": 'vision_config' is missing (no vision tower)");
    const json& j = *it;
    const auto fail = [&](const std::string& key, const std::string& what) {
        return std::runtime_error(file + ": '" + key + "' " + what);
    };
    const auto size = [&](const std::string& key, std::size_t def) {
        const auto v = j.find(key);
        if (v == j.end() || v->is_null()) return def;
        if (!v->is_number_integer() || v->get<std::int64_t>() <= 0)
            throw fail(key, "must be a positive integer, got " + v->dump());
        return static_cast<std::size_t>(v->get<std::int64_t>());
    };
    // Defaults: Qwen3_5VisionConfig's.
    qwen35_vision_config c;
    c.depth = size("depth", 27);
    c.hidden = size("hidden_size", 1152);
    c.intermediate = size("intermediate_size", 4304);
    c.heads = size("num_heads", 16);
    c.in_channels = size("in_channels", 3);
    c.patch = size("patch_size", 16);
    c.temporal_patch = size("temporal_patch_size", 2);
    c.merge = size("spatial_merge_size", 2);
    c.out_hidden = size("out_hidden_size", 3584);
    const std::size_t positions = size("num_position_embeddings", 2304);
    c.grid_side = static_cast<std::size_t>(std::sqrt(static_cast<double>(positions)));  // int(N ** 0.5)
    if (c.grid_side * c.grid_side != positions)
        throw fail("num_position_embeddings", "is not a square (" + std::to_string(positions) + ")");
    if (c.hidden % c.heads || c.head_dim() % 4)
        throw fail("num_heads", "must divide hidden_size into heads of a multiple of 4 dimensions (2-D RoPE)");
    const auto act = j.find("hidden_act");
    if (act != j.end() && !act->is_null()) {
        if (!act->is_string()) throw fail("hidden_act", "must be a string");
        c.act = act->get<std::string>();
    }
    if (c.act != "gelu_pytorch_tanh" && c.act != "gelu_new" && c.act != "gelu")
        throw fail("hidden_act", "\"" + c.act + "\" is not supported (gelu_pytorch_tanh, gelu_new, gelu)");
    const auto rp = j.find("rope_parameters");
    if (rp != j.end() && rp->is_object()) {
        const std::string type = rp->value("rope_type", std::string("axial"));
        if (type != "axial" && type != "default") throw fail("rope_parameters", "rope_type \"" + type + "\" is not supported");
        const auto th = rp->find("rope_theta");
        if (th != rp->end() && !th->is_null()) {
            if (!th->is_number() || !(th->get<double>() > 0)) throw fail("rope_parameters", "rope_theta must be positive");
            c.rope_theta = th->get<double>();
        }
    }
    return c;
}

inline float gelu_tanh(float x) noexcept {
    constexpr float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
inline float gelu_erf(float x) noexcept { return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)); }

/// torch.nn.LayerNorm over n values: (x − mean) / sqrt(var + eps) · w + b.
void layer_norm(const float* x, std::size_t n, const float* w, const float* b, float eps, float* y) noexcept {
    double mean = 0.0, var = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean += x[i];
    mean /= static_cast<double>(n);
    for (std::size_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float inv = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(n) + eps));
    const auto m = static_cast<float>(mean);
    for (std::size_t i = 0; i < n; ++i) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

/// One axis of the bilinear, align_corners resampling of the position table: the two taps
/// and weights for target index `index` of `size` (float32, as torch computes them).
void axis_taps(std::size_t index, std::size_t size, std::size_t side, std::size_t tap[2], float weight[2]) noexcept {
    const float src = static_cast<float>(index) * static_cast<float>(side - 1) /
                      static_cast<float>(std::max<std::size_t>(size, 2) - 1);
    const float fl = std::floor(src);
    for (int o = 0; o < 2; ++o) {
        const auto raw = static_cast<std::int64_t>(fl) + o;
        tap[o] = static_cast<std::size_t>(std::clamp<std::int64_t>(raw, 0, static_cast<std::int64_t>(side) - 1));
        weight[o] = std::max(1.0f - std::abs(src - fl - static_cast<float>(o)), 0.0f);
    }
}

}  // namespace

qwen35_vision::qwen35_vision(const io::checkpoint& ck, const std::string& prefix, const linear_options& options)
    : cfg_(read_vision_config(ck)), lo_(options) {
    const std::size_t H = cfg_.hidden, I = cfg_.intermediate, M = H * cfg_.merge * cfg_.merge;
    const auto floats = [&](const std::string& name, std::size_t n) {
        weight_bytes_ += n * sizeof(float);
        return read_floats(ck, prefix + name, n).values;
    };
    const auto lin = [&](const std::string& name, std::size_t rows, std::size_t cols) {
        linear l = linear::load(ck, prefix + name, rows, cols);  // HLWQ too (hlwq-quantize --include-vision)
        weight_bytes_ += l.bytes();
        return l;
    };
    patch_w_ = floats("patch_embed.proj.weight", H * cfg_.patch_dim());
    patch_b_ = floats("patch_embed.proj.bias", H);
    pos_embed_ = floats("pos_embed.weight", cfg_.grid_side * cfg_.grid_side * H);
    for (std::size_t i = 0; i < cfg_.depth; ++i) {
        const std::string p = "blocks." + std::to_string(i) + ".";
        block B;
        B.ln1_w = floats(p + "norm1.weight", H);
        B.ln1_b = floats(p + "norm1.bias", H);
        B.ln2_w = floats(p + "norm2.weight", H);
        B.ln2_b = floats(p + "norm2.bias", H);
        B.qkv = lin(p + "attn.qkv.weight", 3 * H, H);
        B.qkv_b = floats(p + "attn.qkv.bias", 3 * H);
        B.proj = lin(p + "attn.proj.weight", H, H);
        B.proj_b = floats(p + "attn.proj.bias", H);
        B.fc1 = lin(p + "mlp.linear_fc1.weight", I, H);
        B.fc1_b = floats(p + "mlp.linear_fc1.bias", I);
        B.fc2 = lin(p + "mlp.linear_fc2.weight", H, I);
        B.fc2_b = floats(p + "mlp.linear_fc2.bias", H);
        blocks_.push_back(std::move(B));
    }
    merge_ln_w_ = floats("merger.norm.weight", H);
    merge_ln_b_ = floats("merger.norm.bias", H);
    merge_fc1_ = lin("merger.linear_fc1.weight", M, M);
    merge_fc1_b_ = floats("merger.linear_fc1.bias", M);
    merge_fc2_ = lin("merger.linear_fc2.weight", cfg_.out_hidden, M);
    merge_fc2_b_ = floats("merger.linear_fc2.bias", cfg_.out_hidden);
    // Axial RoPE: head_dim / 4 frequencies over spatial_dim = head_dim / 2 (fp32, as torch).
    const std::size_t spatial = cfg_.head_dim() / 2;
    for (std::size_t i = 0; i < spatial; i += 2)
        inv_freq_.push_back(1.0f / std::pow(static_cast<float>(cfg_.rope_theta),
                                            static_cast<float>(i) / static_cast<float>(spatial)));
}

void qwen35_vision::add_bias(float* y, std::size_t n, const std::vector<float>& b) const noexcept {
    for (std::size_t t = 0; t < n; ++t)
        for (std::size_t i = 0; i < b.size(); ++i) y[t * b.size() + i] += b[i];
}

qwen35_vision_output qwen35_vision::forward(std::span<const float> pixels, std::size_t t, std::size_t h,
                                            std::size_t w) const {
    const std::size_t H = cfg_.hidden, I = cfg_.intermediate, m = cfg_.merge, pd = cfg_.patch_dim(),
                      hd = cfg_.head_dim(), n = t * h * w;
    if (n == 0 || h % m || w % m)
        throw std::invalid_argument("qwen35_vision: grid " + std::to_string(t) + "x" + std::to_string(h) + "x" +
                                    std::to_string(w) + " is empty or not a multiple of the merge size " +
                                    std::to_string(m));
    if (pixels.size() != n * pd)
        throw std::invalid_argument("qwen35_vision: " + std::to_string(pixels.size()) + " pixel values for " +
                                    std::to_string(n) + " patches of " + std::to_string(pd));
    // Patch embedding: the Conv3d with stride = kernel is one product per patch.
    std::vector<float> x(n * H);
    const unsigned threads = detail::thread_count(lo_.threads, n, 16);
    detail::parallel_for(n, threads, [&](std::size_t p0, std::size_t p1) {
        for (std::size_t p = p0; p < p1; ++p)
            for (std::size_t o = 0; o < H; ++o)
                x[p * H + o] = detail::kv_dot(patch_w_.data() + o * pd, pixels.data() + p * pd, pd) + patch_b_[o];
    });
    // Row and column of each patch in the processor's merge-block order (every frame alike),
    // the learned positions resampled to them, and the 2-D RoPE angles.
    const std::size_t side = cfg_.grid_side, nf = inv_freq_.size();
    std::vector<float> cos(n * hd), sin(n * hd);
    for (std::size_t p = 0; p < n; ++p) {
        const std::size_t within = p % (h * w), bw = w / m;
        const std::size_t row = within / (m * m * bw) * m + within / m % m;
        const std::size_t col = within / (m * m) % bw * m + within % m;
        std::size_t rt[2], ct[2];
        float rw[2], cw[2];
        axis_taps(row, h, side, rt, rw);
        axis_taps(col, w, side, ct, cw);
        std::vector<float> pos(H, 0.0f);
        for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) {
                const float wt = rw[a] * cw[b];
                const float* e = pos_embed_.data() + (rt[a] * side + ct[b]) * H;
                for (std::size_t i = 0; i < H; ++i) pos[i] += e[i] * wt;
            }
        for (std::size_t i = 0; i < H; ++i) x[p * H + i] += pos[i];
        // cos/sin layout: [row · f, column · f] twice (rotate_half over the whole head).
        for (std::size_t k = 0; k < nf; ++k) {
            const float ar = static_cast<float>(row) * inv_freq_[k], ac = static_cast<float>(col) * inv_freq_[k];
            for (std::size_t rep = 0; rep < 2; ++rep) {
                cos[p * hd + rep * hd / 2 + k] = std::cos(ar);
                sin[p * hd + rep * hd / 2 + k] = std::sin(ar);
                cos[p * hd + rep * hd / 2 + nf + k] = std::cos(ac);
                sin[p * hd + rep * hd / 2 + nf + k] = std::sin(ac);
            }
        }
    }
    std::vector<float> a(n * H), y(n * H), f(n * I);
    for (const block& B : blocks_) {
        for (std::size_t p = 0; p < n; ++p)
            layer_norm(x.data() + p * H, H, B.ln1_w.data(), B.ln1_b.data(), 1e-6f, a.data() + p * H);
        attention(B, a.data(), n, h * w, cos.data(), sin.data(), y.data());
        for (std::size_t i = 0; i < n * H; ++i) x[i] += y[i];
        for (std::size_t p = 0; p < n; ++p)
            layer_norm(x.data() + p * H, H, B.ln2_w.data(), B.ln2_b.data(), 1e-6f, a.data() + p * H);
        B.fc1.forward(a.data(), n, f.data(), lo_);
        add_bias(f.data(), n, B.fc1_b);
        for (float& v : f) v = cfg_.act == "gelu" ? gelu_erf(v) : gelu_tanh(v);
        B.fc2.forward(f.data(), n, y.data(), lo_);
        add_bias(y.data(), n, B.fc2_b);
        for (std::size_t i = 0; i < n * H; ++i) x[i] += y[i];
    }
    // Merger: LayerNorm per patch, merge² consecutive patches as one vector, MLP with GELU (erf).
    qwen35_vision_output out;
    out.hidden = x;
    for (std::size_t p = 0; p < n; ++p)
        layer_norm(x.data() + p * H, H, merge_ln_w_.data(), merge_ln_b_.data(), 1e-6f, a.data() + p * H);
    const std::size_t tokens = n / (m * m), M = H * m * m;
    std::vector<float> g(tokens * M);
    merge_fc1_.forward(a.data(), tokens, g.data(), lo_);
    add_bias(g.data(), tokens, merge_fc1_b_);
    for (float& v : g) v = gelu_erf(v);
    out.merged.resize(tokens * cfg_.out_hidden);
    merge_fc2_.forward(g.data(), tokens, out.merged.data(), lo_);
    add_bias(out.merged.data(), tokens, merge_fc2_b_);
    return out;
}

void qwen35_vision::attention(const block& B, const float* h, std::size_t n, std::size_t frame, const float* cos,
                              const float* sin, float* out) const {
    const std::size_t H = cfg_.hidden, nh = cfg_.heads, hd = cfg_.head_dim(), half = hd / 2;
    std::vector<float> qkv(n * 3 * H);
    B.qkv.forward(h, n, qkv.data(), lo_);
    add_bias(qkv.data(), n, B.qkv_b);
    // q, k, v laid out [3][heads][head_dim] per patch; RoPE on q and k (fp32).
    for (std::size_t p = 0; p < n; ++p)
        for (std::size_t s = 0; s < 2; ++s)
            for (std::size_t j = 0; j < nh; ++j) {
                float* v = qkv.data() + p * 3 * H + s * H + j * hd;
                const float* c = cos + p * hd;
                const float* sn = sin + p * hd;
                for (std::size_t i = 0; i < half; ++i) {
                    const float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c[i] - x2 * sn[i];
                    v[i + half] = x2 * c[i + half] + x1 * sn[i + half];
                }
            }
    // Bidirectional attention within each frame (cu_seqlens: one segment per frame).
    std::vector<float> o(n * H);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const unsigned threads = detail::thread_count(lo_.threads, n * nh, 8);
    detail::parallel_for(n * nh, threads, [&](std::size_t r0, std::size_t r1) {
        std::vector<float> s(frame);
        for (std::size_t r = r0; r < r1; ++r) {
            const std::size_t p = r / nh, j = r % nh, f0 = p / frame * frame;
            const float* q = qkv.data() + p * 3 * H + j * hd;
            float mx = -INFINITY;
            for (std::size_t k = 0; k < frame; ++k) {
                s[k] = detail::kv_dot(q, qkv.data() + (f0 + k) * 3 * H + H + j * hd, hd) * scale;
                mx = std::max(mx, s[k]);
            }
            float sum = 0.0f;
            for (std::size_t k = 0; k < frame; ++k) sum += s[k] = std::exp(s[k] - mx);
            float* dst = o.data() + p * H + j * hd;
            std::fill(dst, dst + hd, 0.0f);
            for (std::size_t k = 0; k < frame; ++k) {
                const float* v = qkv.data() + (f0 + k) * 3 * H + 2 * H + j * hd;
                const float wgt = s[k] / sum;
                for (std::size_t i = 0; i < hd; ++i) dst[i] += wgt * v[i];
            }
        }
    });
    B.proj.forward(o.data(), n, out, lo_);
    add_bias(out, n, B.proj_b);
}

}  // namespace hlwq::rt
