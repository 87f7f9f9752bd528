// SPDX-License-Identifier: MIT
// Antialiased resize, bit-exact with PyTorch's CPU uint8 kernel (aten/src/ATen/native/cpu/
// UpSampleKernel.cpp: _compute_weights_aa, compute_index_ranges_int16_weights; and
// UpSampleKernelAVXAntialias.h: ImagingResampleHorizontal / ImagingResampleVertical).
#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::rt {

namespace {

/// The taps of one axis: output i reads `size[i]` inputs from `first[i]` with the int16
/// weights w[i · stride ...], in fixed point with `precision` fractional bits.
struct axis_taps {
    std::vector<std::size_t> first, size;
    std::vector<std::int16_t> w;
    std::size_t stride = 0;
    unsigned precision = 0;
};

double filter_value(resample_filter f, double x) {
    x = std::abs(x);
    if (f == resample_filter::bilinear) return x < 1.0 ? 1.0 - x : 0.0;
    constexpr double a = -0.5;  // Pillow's (and torch's antialiased) cubic
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

axis_taps make_taps(std::size_t in, std::size_t out, resample_filter f) {
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    const double half = f == resample_filter::bicubic ? 2.0 : 1.0;  // interp_size / 2
    const double support = scale >= 1.0 ? half * scale : half;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    axis_taps t;
    t.stride = static_cast<std::size_t>(std::ceil(support)) * 2 + 1;
    t.first.resize(out);
    t.size.resize(out);
    std::vector<double> w(out * t.stride, 0.0);
    double wmax = 0.0;
    const auto in_i = static_cast<std::int64_t>(in);
    for (std::size_t i = 0; i < out; ++i) {
        const double center = scale * (static_cast<double>(i) + 0.5);
        // static_cast truncates toward zero as the C++ of the kernel does.
        const std::int64_t lo = std::max<std::int64_t>(static_cast<std::int64_t>(center - support + 0.5), 0);
        const std::int64_t hi = std::min<std::int64_t>(static_cast<std::int64_t>(center + support + 0.5), in_i);
        const std::size_t n = static_cast<std::size_t>(std::max<std::int64_t>(hi - lo, 0));
        t.first[i] = static_cast<std::size_t>(lo);
        t.size[i] = std::min(n, t.stride);
        double total = 0.0;
        double* wi = w.data() + i * t.stride;
        for (std::size_t j = 0; j < t.size[i]; ++j) {
            wi[j] = filter_value(f, (static_cast<double>(j) + static_cast<double>(lo) - center + 0.5) * invscale);
            total += wi[j];
        }
        if (total != 0.0)
            for (std::size_t j = 0; j < t.size[i]; ++j) {
                wi[j] /= total;
                wmax = std::max(wmax, wi[j]);
            }
    }
    unsigned p = 0;
    for (; p < 22; ++p)
        if (static_cast<int>(0.5 + wmax * static_cast<double>(1 << (p + 1))) >= (1 << 15)) break;
    t.precision = p;
    t.w.resize(w.size());
    for (std::size_t j = 0; j < w.size(); ++j) {
        const double v = w[j] * static_cast<double>(1 << p);
        t.w[j] = static_cast<std::int16_t>(v < 0 ? std::trunc(v - 0.5) : std::trunc(v + 0.5));
    }
    return t;
}

std::uint8_t clamp_shift(std::int32_t acc, unsigned precision) {
    return static_cast<std::uint8_t>(std::clamp(acc >> precision, 0, 255));  // arithmetic shift: floor
}

}  // namespace

rgb_image resize_antialiased(const rgb_image& image, std::size_t width, std::size_t height, resample_filter filter) {
    if (image.width == 0 || image.height == 0 || width == 0 || height == 0)
        throw std::invalid_argument("resize_antialiased: cannot resize " + std::to_string(image.width) + "x" +
                                    std::to_string(image.height) + " to " + std::to_string(width) + "x" +
                                    std::to_string(height));
    if (image.pixels.size() != image.width * image.height * 3)
        throw std::invalid_argument("resize_antialiased: the pixel buffer holds " + std::to_string(image.pixels.size()) +
                                    " bytes, not width · height · 3");
    rgb_image cur = image;
    if (width != cur.width) {  // horizontal pass
        const axis_taps t = make_taps(cur.width, width, filter);
        rgb_image next{width, cur.height, std::vector<std::uint8_t>(width * cur.height * 3)};
        for (std::size_t y = 0; y < cur.height; ++y) {
            const std::uint8_t* row = cur.pixels.data() + y * cur.width * 3;
            for (std::size_t x = 0; x < width; ++x) {
                const std::int16_t* w = t.w.data() + x * t.stride;
                for (std::size_t c = 0; c < 3; ++c) {
                    std::int32_t acc = std::int32_t{1} << (t.precision - 1);
                    for (std::size_t j = 0; j < t.size[x]; ++j) acc += w[j] * row[(t.first[x] + j) * 3 + c];
                    next.pixels[(y * width + x) * 3 + c] = clamp_shift(acc, t.precision);
                }
            }
        }
        cur = std::move(next);
    }
    if (height != cur.height) {  // vertical pass
        const axis_taps t = make_taps(cur.height, height, filter);
        rgb_image next{cur.width, height, std::vector<std::uint8_t>(cur.width * height * 3)};
        const std::size_t row = cur.width * 3;
        for (std::size_t y = 0; y < height; ++y) {
            const std::int16_t* w = t.w.data() + y * t.stride;
            for (std::size_t k = 0; k < row; ++k) {
                std::int32_t acc = std::int32_t{1} << (t.precision - 1);
                for (std::size_t j = 0; j < t.size[y]; ++j) acc += w[j] * cur.pixels[(t.first[y] + j) * row + k];
                next.pixels[y * row + k] = clamp_shift(acc, t.precision);
            }
        }
        cur = std::move(next);
    }
    return cur;
}

}  // namespace hlwq::rt
