// SPDX-License-Identifier: MIT
// A model folder with some tensors HLWQ-quantized by hlwq's library (as hlwq-quantize does), or
// with those tensors replaced by their dequantized fp32 values: the dense model that the
// quantized folder must compute. The model tests compare the two.
#pragma once

#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/io/safetensors.hpp>
#include <hlwq/quantize.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hlwq::rt::test {

/// Which tensors of a folder to quantize (by name and dense view).
using tensor_filter = std::function<bool(std::string_view, const hlwq::io::tensor_view&)>;

/// Writes the original folder `in` (config.json + one model.safetensors) as `out`: the tensors
/// that `quantize_it` picks (2-D, or 3-D stacks of experts) quantized at `bits` in blocks of
/// `block` columns, their config entries in config.json's quantization_config; or, with
/// `dequantized`, those tensors as the fp32 values their codes decode to and config.json as
/// it was. (hlwq-quantize keeps matrices under 128 columns, which is most of the tiny test
/// fixtures, hence the library here.) preprocessor_config.json is copied when there is one.
inline void write_quantized_folder(const std::filesystem::path& in, const std::filesystem::path& out, int bits,
                                   bool dequantized, const tensor_filter& quantize_it, std::size_t block = 32) {
    const auto src = hlwq::io::safetensors_file::open(in / "model.safetensors");
    hlwq::io::quantization_config qc;
    qc.bits = bits;
    qc.block_size = block;
    std::vector<hlwq::io::tensor_spec> specs;
    for (std::string_view n : src.names()) {
        const auto v = src.view(n);
        const std::vector<std::int64_t> shape(v.shape.begin(), v.shape.end());
        if (!quantize_it(n, v)) {
            specs.push_back({std::string(n), v.type, shape});
            continue;
        }
        qc.tensors[std::string(n)] = {.shape = shape, .bits = bits};
        if (dequantized) {
            specs.push_back({std::string(n), hlwq::io::dtype::f32, shape});
            continue;
        }
        for (auto& spec : hlwq::io::quantized_tensor_specs(n, shape, bits, block)) specs.push_back(std::move(spec));
    }
    REQUIRE_MESSAGE(!qc.tensors.empty(), in << ": no tensor to quantize");
    std::filesystem::create_directories(out);
    hlwq::io::safetensors_writer w(out / "model.safetensors", specs);
    for (std::string_view n : src.names()) {
        const auto v = src.view(n);
        if (!qc.tensors.count(n)) {
            w.write(n, v.data);
            continue;
        }
        const auto cols = static_cast<std::size_t>(v.shape.back());
        const hlwq::quantized_matrix q =
            hlwq::quantize(v.as<float>(), v.numel() / cols, cols, bits, hlwq::quantize_options{.block = block, .threads = 2});
        if (dequantized) {
            std::vector<float> d(v.numel());
            hlwq::dequantize(q, d, 2);
            w.write(n, std::span<const float>(d));
        } else {
            hlwq::io::write_quantized(w, n, q);
        }
    }
    w.finish();
    const nlohmann::json cfg = nlohmann::json::parse(std::ifstream(in / "config.json"));
    std::ofstream(out / "config.json") << (dequantized ? cfg : hlwq::io::with_quantization_config(cfg, qc)).dump(1);
    if (std::filesystem::exists(in / "preprocessor_config.json"))
        std::filesystem::copy_file(in / "preprocessor_config.json", out / "preprocessor_config.json",
                                   std::filesystem::copy_options::overwrite_existing);
}

}  // namespace hlwq::rt::test
