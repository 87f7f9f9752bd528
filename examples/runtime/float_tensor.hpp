// SPDX-License-Identifier: MIT
/// @file float_tensor.hpp
/// @brief A small checkpoint parameter (a norm, a bias, a scale, a position table) read into
/// fp32 for the models to keep: F32 copied, F16 / BF16 widened (exact), an HLWQ parameter
/// dequantized (so that hlwq-quantize may quantize a table the model reads whole, e.g. a
/// vision position embedding under --include-vision with an 'embed' rule). Large matrices
/// stay in place instead (linear.hpp). Every error names the tensor and its file.
#pragma once

#include <hlwq/float16.hpp>
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/quantize.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::rt {

/// "[2, 3]": a shape, for messages.
inline std::string shape_string(std::span<const std::int64_t> s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

/// A parameter as fp32 (read_floats(), read_vector()).
struct float_tensor {
    std::vector<float> values{};   ///< the elements, row-major
    std::size_t stored_bytes = 0;  ///< what the checkpoint stores for it (dense elements, or codes and norms)
};

/// The file of `ck` that stores tensor `stored` (its folder if none does), for messages.
inline std::string file_of(const io::checkpoint& ck, const std::string& stored) {
    for (const io::safetensors_file& f : ck.tensors().shards())
        if (f.contains(stored)) return f.path().string();
    return ck.path().string();
}

/// read_floats() and, with `vector`, read_vector().
inline float_tensor read_float_tensor(const io::checkpoint& ck, const std::string& name, std::size_t count,
                                      bool vector) {
    const auto fail = [&](const std::string& file, const std::string& what) {
        return std::runtime_error(file + ": tensor '" + name + "' " + what);
    };
    if (!ck.contains(name)) throw fail(ck.path().string(), "is missing");
    const bool quantized = ck.is_quantized(name);
    const std::string file = file_of(ck, quantized ? io::codes_name(name) : name);
    const std::vector<std::int64_t> shape = ck.shape(name);
    std::size_t numel = 1;
    for (std::int64_t d : shape) numel *= static_cast<std::size_t>(d);
    if (vector && (shape.size() != 1 || numel != count))
        throw fail(file, "has shape " + shape_string(shape) + ", expected [" + std::to_string(count) + "]");
    if (numel != count)
        throw fail(file, "has " + std::to_string(numel) + " elements (shape " + shape_string(shape) + "), expected " +
                             std::to_string(count));
    float_tensor t;
    t.values.resize(count);
    if (quantized) {
        const std::size_t experts = ck.experts(name);
        std::size_t at = 0;
        for (std::size_t e = 0; e < std::max<std::size_t>(experts, 1); ++e) {
            const quantized_view q = experts ? ck.quantized(name, e) : ck.quantized(name);
            hlwq::dequantize(q, std::span<float>(t.values).subspan(at, q.rows * q.cols));
            at += q.rows * q.cols;
            t.stored_bytes += q.storage_bytes();
        }
        return t;
    }
    const io::tensor_view v = ck.dense(name);
    t.stored_bytes = v.data.size();
    if (v.type == io::dtype::f32) {
        std::memcpy(t.values.data(), v.data.data(), count * sizeof(float));  // the mapping may be unaligned
    } else if (v.type == io::dtype::f16 || v.type == io::dtype::bf16) {
        for (std::size_t i = 0; i < count; ++i) {
            std::uint16_t b;
            std::memcpy(&b, v.data.data() + 2 * i, 2);
            t.values[i] = v.type == io::dtype::f16 ? half::to_float(b) : bfloat16::to_float(b);
        }
    } else {
        throw fail(file, "has dtype " + std::string(io::dtype_name(v.type)) + ", not F32, F16 or BF16 (or HLWQ codes)");
    }
    return t;
}

/// Parameter `name` of `ck` as `count` fp32 values, whatever its shape.
/// @throws std::runtime_error naming the tensor and its file if it is missing, holds another
///   number of elements, or is dense of a type other than F32/F16/BF16.
inline float_tensor read_floats(const io::checkpoint& ck, const std::string& name, std::size_t count) {
    return read_float_tensor(ck, name, count, false);
}

/// The vector parameter `name` of `ck`, shape [size], as fp32.
/// @throws std::runtime_error as read_floats(), or if the shape is not [size].
inline float_tensor read_vector(const io::checkpoint& ck, const std::string& name, std::size_t size) {
    return read_float_tensor(ck, name, size, true);
}

}  // namespace hlwq::rt
