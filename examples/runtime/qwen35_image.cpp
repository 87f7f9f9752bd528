// SPDX-License-Identifier: MIT
// Qwen3.5 image preprocessing; see qwen35_image.hpp. Follows transformers 5.17
// models/qwen2_vl/image_processing_qwen2_vl.py (smart_resize, resize, patchify) and
// image_processing_backends.py (TorchvisionBackend: fused rescale + normalize).
#include "qwen35_image.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <stdexcept>
#include <string>

namespace hlwq::rt {

namespace {

using json = nlohmann::json;

struct reader {
    const json& j;
    std::string where;

    std::runtime_error fail(const std::string& key, const std::string& what) const {
        return std::runtime_error(where + ": '" + key + "' " + what);
    }
    const json* find(const json& o, const std::string& key) const {
        const auto it = o.find(key);
        return it == o.end() || it->is_null() ? nullptr : &*it;
    }
    void size(const json& o, const std::string& key, std::size_t& out) const {
        const json* v = find(o, key);
        if (!v) return;
        if (!v->is_number_integer() || v->get<std::int64_t>() <= 0)
            throw fail(key, "must be a positive integer, got " + v->dump());
        out = static_cast<std::size_t>(v->get<std::int64_t>());
    }
    void boolean(const std::string& key, bool& out) const {
        const json* v = find(j, key);
        if (!v) return;
        if (!v->is_boolean()) throw fail(key, "must be true or false, got " + v->dump());
        out = v->get<bool>();
    }
    void triple(const std::string& key, std::array<float, 3>& out) const {
        const json* v = find(j, key);
        if (!v) return;
        if (v->is_number()) {
            out.fill(v->get<float>());
            return;
        }
        if (!v->is_array() || v->size() != 3) throw fail(key, "must be a number or a list of 3 numbers, got " + v->dump());
        for (std::size_t i = 0; i < 3; ++i) {
            if (!(*v)[i].is_number()) throw fail(key, "must hold numbers, got " + v->dump());
            out[i] = (*v)[i].get<float>();  // torch.tensor(list) is float32
        }
    }
};

}  // namespace

qwen35_image_config qwen35_image_config::load(const std::filesystem::path& dir) {
    std::filesystem::path file = dir / "preprocessor_config.json";
    bool nested = false;
    if (!std::filesystem::exists(file) && std::filesystem::exists(dir / "processor_config.json")) {
        file = dir / "processor_config.json";
        nested = true;
    }
    std::ifstream in(file);
    if (!in)
        throw std::runtime_error(file.string() + ": not found (a Qwen3.5 model with images needs the image "
                                                 "processor's preprocessor_config.json)");
    json root;
    try {
        root = json::parse(in);
    } catch (const json::exception& e) {
        throw std::runtime_error(file.string() + ": not valid JSON (" + e.what() + ")");
    }
    const json* j = &root;
    if (nested) {
        const auto it = root.find("image_processor");
        if (it == root.end() || !it->is_object()) throw std::runtime_error(file.string() + ": 'image_processor' is missing");
        j = &*it;
    }
    if (!j->is_object()) throw std::runtime_error(file.string() + ": not a JSON object");
    const reader r{*j, file.string()};
    qwen35_image_config c;
    r.size(*j, "patch_size", c.patch_size);
    r.size(*j, "temporal_patch_size", c.temporal_patch_size);
    r.size(*j, "merge_size", c.merge_size);
    if (const json* s = r.find(*j, "size")) {
        if (!s->is_object()) throw r.fail("size", "must be an object, got " + s->dump());
        r.size(*s, "shortest_edge", c.min_pixels);
        r.size(*s, "longest_edge", c.max_pixels);
    }
    // Qwen2VLImageProcessor.__init__: min_pixels / max_pixels override size.
    r.size(*j, "min_pixels", c.min_pixels);
    r.size(*j, "max_pixels", c.max_pixels);
    r.boolean("do_resize", c.do_resize);
    r.boolean("do_rescale", c.do_rescale);
    r.boolean("do_normalize", c.do_normalize);
    if (const json* v = r.find(*j, "rescale_factor")) {
        if (!v->is_number() || !(v->get<double>() > 0)) throw r.fail("rescale_factor", "must be a positive number");
        c.rescale_factor = v->get<double>();
    }
    if (const json* v = r.find(*j, "resample")) {
        if (!v->is_number_integer() || (v->get<int>() != 2 && v->get<int>() != 3))
            throw r.fail("resample", "is " + v->dump() + "; only 2 (bilinear) and 3 (bicubic) are supported");
        c.resample = v->get<int>() == 2 ? resample_filter::bilinear : resample_filter::bicubic;
    }
    r.triple("image_mean", c.image_mean);
    r.triple("image_std", c.image_std);
    for (float s : c.image_std)
        if (!(s != 0.0f)) throw r.fail("image_std", "holds a zero");
    if (c.min_pixels > c.max_pixels) throw r.fail("size", "has shortest_edge (min pixels) above longest_edge (max pixels)");
    return c;
}

std::pair<std::size_t, std::size_t> qwen35_smart_resize(std::size_t height, std::size_t width, std::size_t factor,
                                                        std::size_t min_pixels, std::size_t max_pixels) {
    if (height == 0 || width == 0 || factor == 0)
        throw std::invalid_argument("qwen35_smart_resize: zero height, width or factor");
    const double h = static_cast<double>(height), w = static_cast<double>(width), f = static_cast<double>(factor);
    if (std::max(h, w) / std::min(h, w) > 200)
        throw std::invalid_argument("image of " + std::to_string(width) + "x" + std::to_string(height) +
                                    ": the aspect ratio must be at most 200");
    // Python's round() rounds half to even, as nearbyint does in the default rounding mode.
    double hb = std::nearbyint(h / f) * f, wb = std::nearbyint(w / f) * f;
    if (hb * wb > static_cast<double>(max_pixels)) {
        const double beta = std::sqrt(h * w / static_cast<double>(max_pixels));
        hb = std::max(f, std::floor(h / beta / f) * f);
        wb = std::max(f, std::floor(w / beta / f) * f);
    } else if (hb * wb < static_cast<double>(min_pixels)) {
        const double beta = std::sqrt(static_cast<double>(min_pixels) / (h * w));
        hb = std::ceil(h * beta / f) * f;
        wb = std::ceil(w * beta / f) * f;
    }
    // round() can give 0 for a side shorter than factor / 2 (transformers then fails later).
    if (hb < f || wb < f)
        throw std::invalid_argument("image of " + std::to_string(width) + "x" + std::to_string(height) +
                                    " is too small for patches of " + std::to_string(factor) + " pixels");
    return {static_cast<std::size_t>(hb), static_cast<std::size_t>(wb)};
}

qwen35_pixels qwen35_preprocess(const rgb_image& image, const qwen35_image_config& c) {
    if (image.width == 0 || image.height == 0 || image.pixels.size() != image.width * image.height * 3)
        throw std::invalid_argument("qwen35_preprocess: empty image or a pixel buffer of the wrong size");
    const std::size_t p = c.patch_size, m = c.merge_size, T = c.temporal_patch_size, factor = p * m;
    rgb_image resized;
    const rgb_image* img = &image;
    if (c.do_resize) {
        const auto [h, w] = qwen35_smart_resize(image.height, image.width, factor, c.min_pixels, c.max_pixels);
        if (h != image.height || w != image.width) {
            resized = resize_antialiased(image, w, h, c.resample);
            img = &resized;
        }
    } else if (image.height % factor || image.width % factor) {
        throw std::invalid_argument("image of " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                    " is not a multiple of " + std::to_string(factor) +
                                    " pixels and the processor does not resize (do_resize false)");
    }
    // Fused rescale + normalize (TorchvisionBackend): mean and std divided by rescale_factor
    // in fp32, then (x − mean) / std in fp32.
    std::array<float, 3> mean{}, stdev{};
    const float inv = static_cast<float>(1.0 / c.rescale_factor);
    for (std::size_t ch = 0; ch < 3; ++ch) {
        mean[ch] = c.do_rescale ? c.image_mean[ch] * inv : c.image_mean[ch];
        stdev[ch] = c.do_rescale ? c.image_std[ch] * inv : c.image_std[ch];
    }
    const float scale = static_cast<float>(c.rescale_factor);
    const auto value = [&](std::uint8_t v, std::size_t ch) {
        const float x = v;
        if (c.do_normalize) return (x - mean[ch]) / stdev[ch];
        return c.do_rescale ? x * scale : x;
    };
    qwen35_pixels out;
    out.grid_t = 1;
    out.grid_h = img->height / p;
    out.grid_w = img->width / p;
    out.patch_dim = 3 * T * p * p;
    out.values.resize(out.patches() * out.patch_dim);
    float* dst = out.values.data();
    for (std::size_t bh = 0; bh < out.grid_h / m; ++bh)
        for (std::size_t bw = 0; bw < out.grid_w / m; ++bw)
            for (std::size_t mh = 0; mh < m; ++mh)
                for (std::size_t mw = 0; mw < m; ++mw) {
                    const std::size_t y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
                    for (std::size_t ch = 0; ch < 3; ++ch)
                        for (std::size_t t = 0; t < T; ++t)  // the frame repeated (temporal patch)
                            for (std::size_t y = 0; y < p; ++y)
                                for (std::size_t x = 0; x < p; ++x)
                                    *dst++ = value(img->pixels[((y0 + y) * img->width + x0 + x) * 3 + ch], ch);
                }
    return out;
}

}  // namespace hlwq::rt
