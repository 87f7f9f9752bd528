// SPDX-License-Identifier: MIT
/// @file backend/cuda/matvec.cuh
/// @brief y = Ŵ x for one token on the GPU (`hlwq::cuda::matvec`), and the `backend::cuda`
/// overload of hlwq::matvec on host data. Asynchronous on the given stream; the result is the
/// CPU matvec's within fp32 rounding (another summation order). Compile with nvcc.
#pragma once

#include "../../quantize.hpp"
#include "checks.hpp"
#include "device_buffer.hpp"
#include "kernels.cuh"
#include "quantized_matrix.hpp"

#include <cuda_runtime.h>

#include <cstddef>
#include <span>

namespace hlwq::cuda {

/// y[0..q.rows) = Ŵ x[0..q.cols) on the device (x, y device pointers), fp32 activations.
/// @throws std::runtime_error on a CUDA launch error.
inline void matvec(const quantized_matrix& q, const float* x, float* y, cudaStream_t stream = nullptr) {
    detail::check_int_shape("hlwq::cuda::matvec", q.rows, q.cols);
    with_bits(q.bits, [&]<int B>() { kernels<backend::cuda>::matvec<B>(q, x, y, stream); });
}

/// matvec on device buffers, with their sizes checked.
/// @throws std::invalid_argument if x has not q.cols values or y not q.rows.
inline void matvec(const quantized_matrix& q, const device_buffer<float>& x, device_buffer<float>& y,
                   cudaStream_t stream = nullptr) {
    detail::check_count("hlwq::cuda::matvec", "x", x.size(), q.cols);
    detail::check_count("hlwq::cuda::matvec", "y", y.size(), q.rows);
    matvec(q, x.data(), y.data(), stream);
}

}  // namespace hlwq::cuda

namespace hlwq {

/// matvec with the CUDA backend on host data: uploads q and x, runs cuda::matvec, downloads y
/// (`threads` is ignored). For repeated products keep a cuda::quantized_matrix instead.
/// @throws std::invalid_argument for wrong sizes or an unsupported block; std::runtime_error on a CUDA error.
inline void matvec(const quantized_view& q, std::span<const float> x, std::span<float> y, unsigned /*threads*/,
                   backend::cuda) {
    cuda::check_supported(q);
    detail::checked_size(1, q.cols, x.size(), "hlwq::matvec");
    detail::checked_size(1, q.rows, y.size(), "hlwq::matvec");
    const auto dq = cuda::quantized_matrix::upload(q);
    const cuda::device_buffer<float> dx(x);
    cuda::device_buffer<float> dy(y.size());
    cuda::matvec(dq, dx, dy);
    dy.download(y);
}

}  // namespace hlwq
