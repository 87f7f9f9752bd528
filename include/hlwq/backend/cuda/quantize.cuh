// SPDX-License-Identifier: MIT
/// @file backend/cuda/quantize.cuh
/// @brief Quantization on the GPU (`hlwq::cuda::quantize`): the CPU quantizer's codes and fp16
/// norms from weights in device memory. Waits for its result (to report bad input). Compile
/// with nvcc.
#pragma once

#include "../../codebook.hpp"
#include "../../float16.hpp"
#include "../../quantize.hpp"
#include "checks.hpp"
#include "device_buffer.hpp"
#include "kernels.cuh"
#include "quantized_matrix.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace hlwq::cuda {

namespace detail {

/// The CUDA type of a stored weight type: float, __half or __nv_bfloat16 (same bits as
/// hlwq::half and hlwq::bfloat16, which map onto them).
template <class T>
struct device_weight {
    using type = T;
};
template <>
struct device_weight<half> {
    using type = __half;
};
template <>
struct device_weight<bfloat16> {
    using type = __nv_bfloat16;
};
static_assert(sizeof(half) == sizeof(__half) && sizeof(bfloat16) == sizeof(__nv_bfloat16));

}  // namespace detail

/// Quantizes the rows × cols matrix at device pointer `w` (float, half/__half or
/// bfloat16/__nv_bfloat16) with codebook `cb`, like hlwq::quantize: same codes, same fp16
/// norms. options.block must be 128; options.threads is ignored. Waits for the result.
/// @throws std::invalid_argument for a malformed codebook, another block size, a NaN/inf
///   weight (naming row and column) or a block norm beyond fp16; std::runtime_error on a CUDA error.
template <class T, codebook C>
quantized_matrix quantize(const T* w, std::size_t rows, std::size_t cols, const C& cb, const quantize_options& options = {},
                          cudaStream_t stream = nullptr) {
    using In = typename detail::device_weight<T>::type;
    static_assert(std::is_same_v<In, float> || std::is_same_v<In, __half> || std::is_same_v<In, __nv_bfloat16>,
                  "hlwq::cuda::quantize: weights are float, half or bfloat16");
    const codebook_view view = view_of(cb);
    check_codebook(view);
    if (options.block != supported_block)
        throw std::invalid_argument("hlwq::cuda::quantize: only blocks of " + std::to_string(supported_block) +
                                    " columns are supported, got " + std::to_string(options.block));
    detail::check_int_shape("hlwq::cuda::quantize", rows, cols);
    quantized_matrix q;
    q.rows = rows;
    q.cols = cols;
    q.bits = view.bits;
    q.block = options.block;
    q.sign_seed = options.sign_seed;
    q.centroids = device_buffer<float>(view.centroids);
    q.codes = device_buffer<std::uint8_t>(rows * q.blocks_per_row() * q.block_bytes());
    q.norms = device_buffer<half>(rows * q.blocks_per_row());
    const device_buffer<float> boundaries(view.boundaries);
    const cuda::detail::quantize_status none{~0ull, ~0ull};
    device_buffer<cuda::detail::quantize_status> status(std::span(&none, 1));
    with_bits(view.bits, [&]<int B>() {
        kernels<backend::cuda>::quantize<B>(reinterpret_cast<const In*>(w), boundaries.data(), q, status.data(), stream);
    });
    check(cudaStreamSynchronize(stream), "quantize (cudaStreamSynchronize)");
    cuda::detail::quantize_status result;
    status.download(std::span(&result, 1));
    if (result.bad_weight != ~0ull) {
        const std::size_t r = result.bad_weight / cols, c = result.bad_weight % cols;
        throw std::invalid_argument("hlwq::cuda::quantize: weight at row " + std::to_string(r) + ", column " +
                                    std::to_string(c) + " is NaN or infinite");
    }
    if (result.bad_norm != ~0ull) {
        const std::size_t nb = q.blocks_per_row();
        throw std::invalid_argument("hlwq::cuda::quantize: block " + std::to_string(result.bad_norm % nb) + " of row " +
                                    std::to_string(result.bad_norm / nb) +
                                    " has an L2 norm beyond the fp16 range of the stored norm");
    }
    return q;
}

/// quantize with the Lloyd-Max codebook of `bits` bits (1..8).
template <class T>
quantized_matrix quantize(const T* w, std::size_t rows, std::size_t cols, int bits, const quantize_options& options = {},
                          cudaStream_t stream = nullptr) {
    return quantize(w, rows, cols, lloyd_max_view(bits), options, stream);
}

}  // namespace hlwq::cuda
