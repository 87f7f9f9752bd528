// SPDX-License-Identifier: MIT
// Gemma 4 image preprocessing; see gemma4_image.hpp. Follows transformers 5.17
// models/gemma4/image_processing_gemma4.py and image_processing_backends.py (TorchvisionBackend:
// rescale = uint8 · rescale_factor in fp32; fused rescale + normalize).
#include "gemma4_image.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <stdexcept>
#include <string>

namespace hlwq::rt {
namespace {

using json = nlohmann::json;

const json* find(const json& o, const char* key) {
    const auto it = o.find(key);
    return it == o.end() || it->is_null() ? nullptr : &*it;
}

}  // namespace

gemma4_image_config gemma4_image_config::load(const std::filesystem::path& dir) {
    gemma4_image_config c;
    std::filesystem::path file = dir / "preprocessor_config.json";
    bool nested = false;
    if (!std::filesystem::exists(file)) {
        file = dir / "processor_config.json";
        nested = true;
        if (!std::filesystem::exists(file)) return c;  // Gemma4ImageProcessor's defaults
    }
    std::ifstream in(file);
    if (!in) throw std::runtime_error(file.string() + ": cannot open");
    json root;
    try {
        root = json::parse(in);
    } catch (const json::exception& e) {
        throw std::runtime_error(file.string() + ": not valid JSON (" + e.what() + ")");
    }
    const json* j = &root;
    if (nested) {
        j = root.is_object() ? find(root, "image_processor") : nullptr;
        if (!j) return c;
    }
    if (!j->is_object()) throw std::runtime_error(file.string() + ": not a JSON object");
    const std::string where = file.string();
    const auto fail = [&](const char* key, const std::string& what) {
        return std::runtime_error(where + ": '" + key + "' " + what);
    };
    const auto size = [&](const char* key, std::size_t& out) {
        if (const json* v = find(*j, key)) {
            if (!v->is_number_integer() || v->get<std::int64_t>() <= 0) throw fail(key, "must be a positive integer, got " + v->dump());
            out = static_cast<std::size_t>(v->get<std::int64_t>());
        }
    };
    const auto boolean = [&](const char* key, bool& out) {
        if (const json* v = find(*j, key)) {
            if (!v->is_boolean()) throw fail(key, "must be true or false, got " + v->dump());
            out = v->get<bool>();
        }
    };
    const auto triple = [&](const char* key, std::array<float, 3>& out) {
        if (const json* v = find(*j, key)) {
            if (v->is_number()) return out.fill(v->get<float>());
            if (!v->is_array() || v->size() != 3) throw fail(key, "must be a number or a list of 3 numbers, got " + v->dump());
            for (std::size_t i = 0; i < 3; ++i) {
                if (!(*v)[i].is_number()) throw fail(key, "must hold numbers, got " + v->dump());
                out[i] = (*v)[i].get<float>();
            }
        }
    };
    if (const json* t = find(*j, "image_processor_type"); t && t->is_string()) {
        const std::string type = t->get<std::string>();
        if (type.rfind("Gemma4ImageProcessor", 0) != 0)
            throw fail("image_processor_type", "is \"" + type + "\", not a Gemma 4 image processor");
    }
    size("patch_size", c.patch_size);
    size("max_soft_tokens", c.max_soft_tokens);
    size("pooling_kernel_size", c.pooling_kernel_size);
    if (c.max_soft_tokens != 70 && c.max_soft_tokens != 140 && c.max_soft_tokens != 280 && c.max_soft_tokens != 560 &&
        c.max_soft_tokens != 1120)
        throw fail("max_soft_tokens", "is " + std::to_string(c.max_soft_tokens) + ", not one of 70, 140, 280, 560, 1120");
    boolean("do_resize", c.do_resize);
    boolean("do_rescale", c.do_rescale);
    boolean("do_normalize", c.do_normalize);
    if (const json* v = find(*j, "rescale_factor")) {
        if (!v->is_number() || !(v->get<double>() > 0)) throw fail("rescale_factor", "must be a positive number");
        c.rescale_factor = v->get<double>();
    }
    if (const json* v = find(*j, "resample")) {
        if (!v->is_number_integer() || (v->get<int>() != 2 && v->get<int>() != 3))
            throw fail("resample", "is " + v->dump() + "; only 2 (bilinear) and 3 (bicubic) are supported");
        c.resample = v->get<int>() == 2 ? resample_filter::bilinear : resample_filter::bicubic;
    }
    triple("image_mean", c.image_mean);
    triple("image_std", c.image_std);
    for (float s : c.image_std)
        if (!(s != 0.0f)) throw fail("image_std", "holds a zero");
    return c;
}

std::pair<std::size_t, std::size_t> gemma4_aspect_ratio_size(std::size_t height, std::size_t width,
                                                             std::size_t patch_size, std::size_t max_patches,
                                                             std::size_t pooling_kernel_size) {
    if (height == 0 || width == 0 || patch_size == 0 || pooling_kernel_size == 0)
        throw std::invalid_argument("gemma4_aspect_ratio_size: zero height, width, patch or kernel size");
    // Python floats throughout, as get_aspect_ratio_preserving_size.
    const double total_px = static_cast<double>(height) * static_cast<double>(width);
    const double target_px = static_cast<double>(max_patches * patch_size * patch_size);
    const double factor = std::sqrt(target_px / total_px);
    const std::size_t side = pooling_kernel_size * patch_size;
    const double ideal_h = factor * static_cast<double>(height), ideal_w = factor * static_cast<double>(width);
    std::size_t th = static_cast<std::size_t>(std::floor(ideal_h / static_cast<double>(side))) * side;
    std::size_t tw = static_cast<std::size_t>(std::floor(ideal_w / static_cast<double>(side))) * side;
    const std::string what = "image of " + std::to_string(width) + "x" + std::to_string(height);
    if (th == 0 && tw == 0) throw std::invalid_argument(what + " would be resized to 0 x 0");
    const std::size_t max_side = (max_patches / (pooling_kernel_size * pooling_kernel_size)) * side;
    if (th == 0) {  // a very wide image: one row of kernels
        th = side;
        tw = std::min(static_cast<std::size_t>(std::floor(static_cast<double>(width) / static_cast<double>(height))) * side, max_side);
    } else if (tw == 0) {
        tw = side;
        th = std::min(static_cast<std::size_t>(std::floor(static_cast<double>(height) / static_cast<double>(width))) * side, max_side);
    }
    if (static_cast<double>(th * tw) > target_px)
        throw std::invalid_argument(what + ": resizing to " + std::to_string(tw) + "x" + std::to_string(th) + " exceeds " +
                                    std::to_string(max_patches) + " patches");
    return {th, tw};
}

gemma4_pixels gemma4_preprocess(const rgb_image& image, const gemma4_image_config& c) {
    if (image.width == 0 || image.height == 0 || image.pixels.size() != image.width * image.height * 3)
        throw std::invalid_argument("gemma4_preprocess: empty image or a pixel buffer of the wrong size");
    const std::size_t p = c.patch_size, k = c.pooling_kernel_size;
    rgb_image resized;
    const rgb_image* img = &image;
    if (c.do_resize) {
        const auto [h, w] = gemma4_aspect_ratio_size(image.height, image.width, p, c.max_soft_tokens * k * k, k);
        if (h != image.height || w != image.width) {
            resized = resize_antialiased(image, w, h, c.resample);
            img = &resized;
        }
    }
    if (img->height % (p * k) || img->width % (p * k))
        throw std::invalid_argument("image of " + std::to_string(img->width) + "x" + std::to_string(img->height) +
                                    " is not a multiple of " + std::to_string(p * k) +
                                    " pixels (patch x pooling kernel) and the processor does not resize it");
    // Rescale and normalize (TorchvisionBackend.rescale_and_normalize): fused into
    // (x − mean/rescale) / (std/rescale) in fp32 when both are on, else x · rescale.
    std::array<float, 3> mean{}, stdev{};
    const float inv = static_cast<float>(1.0 / c.rescale_factor);
    for (std::size_t ch = 0; ch < 3; ++ch) {
        mean[ch] = c.do_rescale ? c.image_mean[ch] * inv : c.image_mean[ch];
        stdev[ch] = c.do_rescale ? c.image_std[ch] * inv : c.image_std[ch];
    }
    const float scale = static_cast<float>(c.rescale_factor);
    gemma4_pixels out;
    out.grid_h = img->height / p;
    out.grid_w = img->width / p;
    out.patch_dim = 3 * p * p;
    out.soft_tokens = out.patches() / (k * k);
    out.values.resize(out.patches() * out.patch_dim);
    out.positions.resize(out.patches());
    float* dst = out.values.data();
    for (std::size_t gy = 0; gy < out.grid_h; ++gy)
        for (std::size_t gx = 0; gx < out.grid_w; ++gx) {
            out.positions[gy * out.grid_w + gx] = {static_cast<std::int32_t>(gx), static_cast<std::int32_t>(gy)};
            for (std::size_t y = 0; y < p; ++y)
                for (std::size_t x = 0; x < p; ++x)
                    for (std::size_t ch = 0; ch < 3; ++ch) {
                        const float v = img->pixels[((gy * p + y) * img->width + gx * p + x) * 3 + ch];
                        *dst++ = c.do_normalize ? (v - mean[ch]) / stdev[ch] : c.do_rescale ? v * scale : v;
                    }
        }
    return out;
}

}  // namespace hlwq::rt
