// SPDX-License-Identifier: MIT
/// @file backend/cuda/quantized_matrix.hpp
/// @brief `hlwq::cuda::quantized_matrix`: a quantized matrix in GPU memory, byte for byte the
/// codes, fp16 norms and centroids of the CPU `hlwq::quantized_matrix` (packer<Bits> planes).
///
/// Host code only; the kernels that read it are in kernels.cuh.
#pragma once

#include "../../quantize.hpp"
#include "device_buffer.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

namespace hlwq::cuda {

/// Columns per block the CUDA kernels take: the published HLWQ block (one warp lane holds one
/// packer group of 32 codes, four lanes one block).
inline constexpr std::size_t supported_block = 128;

/// Throws std::invalid_argument unless the CUDA kernels can read q: consistent (check_quantized)
/// and blocks of supported_block columns.
inline void check_supported(const quantized_view& q) {
    check_quantized(q);
    if (q.block != supported_block)
        throw std::invalid_argument("hlwq::cuda: only blocks of " + std::to_string(supported_block) +
                                    " columns are supported, the matrix has blocks of " + std::to_string(q.block));
}

/// A quantized matrix whose codes, norms and centroids live in device memory.
struct quantized_matrix {
    std::size_t rows = 0;   ///< rows of the original matrix
    std::size_t cols = 0;   ///< columns of the original matrix
    int bits = 0;           ///< code width, 1..8
    std::size_t block = 0;  ///< columns per block (supported_block)
    std::optional<std::uint64_t> sign_seed = std::nullopt;  ///< seed of D, if the rotation is H·D
    device_buffer<float> centroids;     ///< the 2^bits centroids codes index
    device_buffer<std::uint8_t> codes;  ///< rows × blocks_per_row() blocks of block_bytes() bytes
    device_buffer<half> norms;          ///< rows × blocks_per_row() block L2 norms (fp16)

    /// Blocks per row, ceil(cols / block).
    std::size_t blocks_per_row() const noexcept { return block ? (cols + block - 1) / block : 0; }
    /// Packed bytes of one block: block · bits / 8.
    std::size_t block_bytes() const noexcept { return block * static_cast<std::size_t>(bits) / 8; }
    /// Bytes of codes and norms together.
    std::size_t storage_bytes() const noexcept { return codes.bytes() + norms.bytes(); }

    /// Copies a host quantized matrix (or a view of a mapped checkpoint) to the device.
    /// @throws std::invalid_argument if q is inconsistent or its block is not supported_block;
    ///   std::runtime_error on a CUDA error.
    static quantized_matrix upload(const quantized_view& q) {
        check_supported(q);
        quantized_matrix d;
        d.rows = q.rows;
        d.cols = q.cols;
        d.bits = q.bits;
        d.block = q.block;
        d.sign_seed = q.sign_seed;
        d.centroids = device_buffer<float>(q.centroids);
        d.codes = device_buffer<std::uint8_t>(q.codes);
        d.norms = device_buffer<half>(q.norms);
        return d;
    }

    /// Copies the matrix back into a host quantized_matrix.
    /// @throws std::runtime_error on a CUDA error.
    hlwq::quantized_matrix download() const {
        hlwq::quantized_matrix h;
        h.rows = rows;
        h.cols = cols;
        h.bits = bits;
        h.block = block;
        h.sign_seed = sign_seed;
        h.centroids.resize(centroids.size());
        h.codes.resize(codes.size());
        h.norms.resize(norms.size());
        centroids.download(h.centroids);
        codes.download(h.codes);
        norms.download(h.norms);
        return h;
    }
};

}  // namespace hlwq::cuda
