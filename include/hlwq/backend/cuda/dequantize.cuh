// SPDX-License-Identifier: MIT
/// @file backend/cuda/dequantize.cuh
/// @brief Dequantization on the GPU (`hlwq::cuda::dequantize`, to fp32 or bf16), bit-identical
/// to the CPU's, and the `backend::cuda` overload of hlwq::dequantize on host data.
/// Asynchronous on the given stream. Compile with nvcc.
#pragma once

#include "../../quantize.hpp"
#include "checks.hpp"
#include "device_buffer.hpp"
#include "kernels.cuh"
#include "quantized_matrix.hpp"

#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <concepts>

#include <cuda_bf16.h>

namespace hlwq::cuda {

/// out (q.rows × q.cols, row-major, device) = dequantize(q), as float or __nv_bfloat16 (the
/// float result rounded to nearest even).
template <class Out>
    requires std::same_as<Out, float> || std::same_as<Out, __nv_bfloat16>
void dequantize(const quantized_matrix& q, Out* out, cudaStream_t stream = nullptr) {
    detail::check_int_shape("hlwq::cuda::dequantize", q.rows, q.cols);
    with_bits(q.bits, [&]<int B>() { kernels<backend::cuda>::dequantize<B>(q, out, stream); });
}

/// dequantize into a device buffer, with its size checked.
/// @throws std::invalid_argument if out has not q.rows · q.cols values.
template <class Out>
    requires std::same_as<Out, float> || std::same_as<Out, __nv_bfloat16>
void dequantize(const quantized_matrix& q, device_buffer<Out>& out, cudaStream_t stream = nullptr) {
    detail::check_count("hlwq::cuda::dequantize", "out", out.size(), q.rows * q.cols);
    dequantize(q, out.data(), stream);
}

}  // namespace hlwq::cuda

namespace hlwq {

/// dequantize with the CUDA backend on host data (`threads` is ignored).
/// @throws std::invalid_argument for a wrong size or an unsupported block; std::runtime_error on a CUDA error.
inline void dequantize(const quantized_view& q, std::span<float> out, unsigned /*threads*/, backend::cuda) {
    cuda::check_supported(q);
    detail::checked_size(q.rows, q.cols, out.size(), "hlwq::dequantize");
    const auto dq = cuda::quantized_matrix::upload(q);
    cuda::device_buffer<float> dout(out.size());
    cuda::dequantize(dq, dout);
    dout.download(out);
}

}  // namespace hlwq
