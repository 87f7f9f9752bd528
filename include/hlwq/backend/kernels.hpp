// SPDX-License-Identifier: MIT
/// @file backend/kernels.hpp
/// @brief All CPU kernel sets (scalar reference and xsimd). CUDA lives in backend/cuda.
#pragma once

#include "cpu/kernels.hpp"
#include "scalar/kernels.hpp"
