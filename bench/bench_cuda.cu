// SPDX-License-Identifier: MIT
// The CUDA matvec on packed HLWQ weights (issue 8) against a device-to-device cudaMemcpy of
// the same bytes (codes + norms + activation), and a read-only streaming kernel over them,
// all timed with CUDA events in the same run. Each timed launch reads a different copy of the
// data, enough copies to be three times the L2 cache, so the bytes come from device memory.
//
//   build/bench/hlwq_bench_cuda --benchmark_min_time=0.2
#include <hlwq/backend/cuda/cuda.cuh>

#include <benchmark/benchmark.h>

#include "ratio.hpp"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using hlwq::cuda::check;
using hlwq::cuda::device_buffer;

constexpr int launches_per_iteration = 50;

struct device_info {
    int sms = 0, l2_bytes = 0;
    std::string name;
};

const device_info& info() {
    static const device_info d = [] {
        device_info i;
        cudaDeviceProp p{};
        check(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
        i.sms = p.multiProcessorCount;
        i.l2_bytes = p.l2CacheSize;
        i.name = p.name;
        return i;
    }();
    return d;
}

// Copies of the data that together are at least three L2 caches (and two copies at least).
std::size_t copies_for(std::size_t bytes) {
    const std::size_t need = 3 * static_cast<std::size_t>(info().l2_bytes);
    return std::max<std::size_t>(2, (need + bytes - 1) / bytes);
}

// Times `launches_per_iteration` calls of launch(k) with CUDA events; the iteration's time is
// one call's share.
template <class F>
void timed(benchmark::State& st, F&& launch) {
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    for (int k = 0; k < 5; ++k) launch(k);  // warm-up
    std::size_t k = 0;
    for (auto _ : st) {
        check(cudaEventRecord(start), "cudaEventRecord");
        for (int i = 0; i < launches_per_iteration; ++i) launch(k++);
        check(cudaEventRecord(stop), "cudaEventRecord");
        check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0;
        check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        st.SetIterationTime(ms * 1e-3 / launches_per_iteration);
    }
    check(cudaEventDestroy(start), "cudaEventDestroy");
    check(cudaEventDestroy(stop), "cudaEventDestroy");
}

// Reads n 16-byte words and keeps the result alive (a write that never happens for real data).
__global__ void stream_read(const uint4* __restrict__ src, std::size_t n, unsigned* sink) {
    unsigned acc = 0;
    for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
         i += std::size_t{gridDim.x} * blockDim.x) {
        const uint4 v = __ldg(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}

struct matrix_set {
    std::vector<hlwq::cuda::quantized_matrix> q;
    device_buffer<float> x, y;
    std::size_t bytes = 0;  // codes + norms + activation of one product
};

// Random codes and unit norms (the kernel's work does not depend on the values).
std::shared_ptr<matrix_set> make_set(std::size_t rows, std::size_t cols, int bits) {
    hlwq::quantized_matrix h;
    h.rows = rows;
    h.cols = cols;
    h.bits = bits;
    h.block = 128;
    const auto cb = hlwq::lloyd_max_view(bits);
    h.centroids.assign(cb.centroids.begin(), cb.centroids.end());
    h.codes.resize(rows * h.blocks_per_row() * h.block_bytes());
    h.norms.assign(rows * h.blocks_per_row(), hlwq::half(1.0f));
    std::mt19937_64 rng(bits);
    for (auto& c : h.codes) c = static_cast<std::uint8_t>(rng());
    auto s = std::make_shared<matrix_set>();
    s->bytes = h.codes.size() + h.norms.size() * sizeof(hlwq::half) + cols * sizeof(float);
    for (std::size_t i = 0, n = copies_for(s->bytes); i < n; ++i) s->q.push_back(hlwq::cuda::quantized_matrix::upload(h));
    std::vector<float> x(cols, 0.5f);
    s->x = device_buffer<float>(std::span<const float>(x));
    s->y = device_buffer<float>(rows);
    return s;
}

void add_shape(std::size_t rows, std::size_t cols, int bits) {
    const std::string group = std::to_string(rows) + "x" + std::to_string(cols) + "/PQ" + std::to_string(bits);
    auto set = std::make_shared<std::shared_ptr<matrix_set>>();  // built on first use
    auto get = [set, rows, cols, bits] {
        if (!*set) *set = make_set(rows, cols, bits);
        return *set;
    };
    hlwq::quantized_matrix probe;
    probe.rows = rows, probe.cols = cols, probe.bits = bits, probe.block = 128;
    const std::size_t bytes = rows * probe.blocks_per_row() * (probe.block_bytes() + 2) + cols * 4;
    hlwq_bench::group_notes()[group] = "bytes = codes + norms + activation; memcpy = cudaMemcpy D2D of them";

    auto reg = [&](const std::string& what, const std::string& baseline, auto fn) {
        hlwq_bench::registry().push_back({group + "/" + what, group, bytes, rows * cols, baseline, ""});
        benchmark::RegisterBenchmark((group + "/" + what).c_str(), fn)->UseManualTime();
    };
    reg("memcpy", "", [bytes](benchmark::State& st) {
        const std::size_t n = copies_for(bytes);
        std::vector<device_buffer<std::uint8_t>> src, dst;
        for (std::size_t i = 0; i < n; ++i) src.emplace_back(bytes), dst.emplace_back(bytes);
        for (auto& b : src) check(cudaMemset(b.data(), 1, bytes), "cudaMemset");
        timed(st, [&](std::size_t k) {
            check(cudaMemcpyAsync(dst[k % n].data(), src[k % n].data(), bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
        });
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    });
    reg("read", group + "/memcpy", [bytes](benchmark::State& st) {
        const std::size_t n = copies_for(bytes), words = bytes / 16;
        std::vector<device_buffer<std::uint8_t>> src;
        for (std::size_t i = 0; i < n; ++i) src.emplace_back(words * 16);
        for (auto& b : src) check(cudaMemset(b.data(), 1, words * 16), "cudaMemset");
        device_buffer<unsigned> sink(1);
        const unsigned grid = static_cast<unsigned>(info().sms) * 8;
        timed(st, [&](std::size_t k) {
            stream_read<<<grid, 256>>>(reinterpret_cast<const uint4*>(src[k % n].data()), words, sink.data());
        });
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    });
    reg("matvec", group + "/memcpy", [get](benchmark::State& st) {
        const auto s = get();
        timed(st, [&](std::size_t k) { hlwq::cuda::matvec(s->q[k % s->q.size()], s->x.data(), s->y.data()); });
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * s->bytes));
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * s->q[0].rows * s->q[0].cols));
    });
    // The same kernel streaming 8 rows at a time instead of 4 (more in flight, some spills).
    reg("matvec_rows8", group + "/memcpy", [get, bits](benchmark::State& st) {
        const auto s = get();
        hlwq::with_bits(bits, [&]<int B>() {
            timed(st, [&](std::size_t k) {
                hlwq::kernels<hlwq::backend::cuda>::matvec<B, 8>(s->q[k % s->q.size()], s->x.data(), s->y.data(), nullptr);
            });
        });
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * s->bytes));
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * s->q[0].rows * s->q[0].cols));
    });
}

}  // namespace

int main(int argc, char** argv) {
    std::printf("device: %s, %d SMs, L2 %d MB; each launch reads its own copy of the data\n", info().name.c_str(),
                info().sms, info().l2_bytes >> 20);
    for (int bits : {4, 5}) {
        add_shape(16384, 5376, bits);
        add_shape(5376, 21504, bits);
    }
    return hlwq_bench::run_main(argc, argv);
}
