// SPDX-License-Identifier: MIT
/// @file backend/cuda/cuda.cuh
/// @brief The whole CUDA backend: device buffers, the device quantized matrix, quantize,
/// dequantize and matvec on the GPU (`hlwq::cuda::`), and the `backend::cuda` tag overloads
/// of hlwq::matvec and hlwq::dequantize on host data. Compile with nvcc (C++20). Each part
/// has its own header; including only the ones used compiles only their kernels.
#pragma once

#include "dequantize.cuh"
#include "device_buffer.hpp"
#include "matvec.cuh"
#include "quantize.cuh"
#include "quantized_matrix.hpp"
