// SPDX-License-Identifier: MIT
/// @file backend/cuda/device_buffer.hpp
/// @brief `hlwq::cuda::device_buffer<T>`: an owning, move-only array in GPU memory, and the
/// one function that turns a CUDA error code into an exception.
///
/// Host code only (the CUDA runtime API): usable from a plain C++ compiler that links
/// CUDA::cudart, as well as from nvcc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

/// The CUDA backend's host-side types and functions (the kernels' tag is hlwq::backend::cuda).
namespace hlwq::cuda {

/// Throws std::runtime_error naming `what` and CUDA's message unless `status` is cudaSuccess.
inline void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string("hlwq::cuda: ") + what + ": " + cudaGetErrorName(status) + " (" +
                                 cudaGetErrorString(status) + ")");
}

/// `count` values of T in device memory (cudaMalloc), freed on destruction. Copies to and from
/// the host are explicit (upload, download) and synchronous.
template <class T>
    requires std::is_trivially_copyable_v<T>
class device_buffer {
public:
    device_buffer() = default;
    /// Allocates `count` uninitialized values.
    /// @throws std::runtime_error if the allocation fails (naming the byte count).
    explicit device_buffer(std::size_t count) : count_(count) {
        if (count == 0) return;
        if (count > std::numeric_limits<std::size_t>::max() / sizeof(T))
            throw std::length_error("hlwq::cuda::device_buffer: " + std::to_string(count) + " values overflow");
        void* p = nullptr;
        check(cudaMalloc(&p, count * sizeof(T)), ("cudaMalloc of " + std::to_string(count * sizeof(T)) + " bytes").c_str());
        data_ = static_cast<T*>(p);
    }
    /// Allocates host.size() values and copies `host` into them.
    explicit device_buffer(std::span<const T> host) : device_buffer(host.size()) { upload(host); }

    /// Takes o's allocation; o is left empty.
    device_buffer(device_buffer&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)) {}
    /// Frees this buffer's allocation and takes o's; o is left empty.
    device_buffer& operator=(device_buffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            count_ = std::exchange(o.count_, 0);
        }
        return *this;
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    ~device_buffer() { release(); }

    /// Device pointer (nullptr when empty).
    T* data() noexcept { return data_; }
    /// @copydoc data()
    const T* data() const noexcept { return data_; }
    /// Number of values.
    std::size_t size() const noexcept { return count_; }
    /// Size in bytes.
    std::size_t bytes() const noexcept { return count_ * sizeof(T); }
    /// True when it holds no values.
    bool empty() const noexcept { return count_ == 0; }

    /// Copies host.size() values from the host to the start of the buffer.
    /// @throws std::invalid_argument if host is larger than the buffer; std::runtime_error on a CUDA error.
    void upload(std::span<const T> host) {
        fits(host.size(), "upload");
        if (!host.empty())
            check(cudaMemcpy(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice), "upload (cudaMemcpy)");
    }
    /// Copies the first host.size() values of the buffer to the host.
    /// @throws std::invalid_argument if host is larger than the buffer; std::runtime_error on a CUDA error.
    void download(std::span<T> host) const {
        fits(host.size(), "download");
        if (!host.empty())
            check(cudaMemcpy(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost), "download (cudaMemcpy)");
    }

private:
    void fits(std::size_t n, const char* what) const {
        if (n > count_)
            throw std::invalid_argument(std::string("hlwq::cuda::device_buffer::") + what + ": " + std::to_string(n) +
                                        " values do not fit in a buffer of " + std::to_string(count_));
    }
    void release() noexcept {
        if (data_) cudaFree(data_);  // an error here (a dead context) cannot be reported from a destructor
        data_ = nullptr;
        count_ = 0;
    }
    T* data_ = nullptr;
    std::size_t count_ = 0;
};

}  // namespace hlwq::cuda
