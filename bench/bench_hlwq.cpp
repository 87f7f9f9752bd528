// SPDX-License-Identifier: MIT
// hlwq micro-benchmarks (Google Benchmark).
//
// Groups, each with a memcpy baseline of the bytes it touches, measured in the same run and
// registered right before the group (a --benchmark_filter on the group name keeps it):
//
//   quantize/...    1024 x 4096 float matrix -> PQ<bits>, one thread. bytes = float input.
//   dequantize/...  PQ<bits> -> 1024 x 4096 floats, one thread.       bytes = float output.
//   wht/...         WHT of a 4 MiB float buffer in blocks of n:       bytes = the buffer.
//                     wht/raw/n:<n>    kernels<B>::fwht(ptr, n), the unnormalized kernel;
//                     wht/blocks/n:<n> hlwq::fwht_blocks (checked, orthonormal).
//   unpack/...      2^20 codes of PQ<bits> -> one byte per code.      bytes = codes PRODUCED
//                     (1 MiB); the packed bytes read are the packed_bytes_per_second counter.
//
// "cpu" is hlwq::default_backend (xsimd, best instruction set the compiler targets); "scalar"
// is hlwq::backend::scalar (for unpack: hlwq::packer<B>::unpack, the reference).
//
// After the usual output a RATIO table is printed (to stdout with the console format, to
// stderr with --benchmark_format=json/csv so that stdout stays machine-readable): each
// benchmark's time per iteration over its group's memcpy baseline, and the speedup of the
// cpu backend over the scalar one. With --benchmark_repetitions the best repetition is used.
//
// Quick run: hlwq_bench --benchmark_min_time=0.05   (google-benchmark 1.7: seconds, a number)
#include <hlwq/quantize.hpp>
#include <hlwq/rotation.hpp>

#include <benchmark/benchmark.h>

#include "ratio.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using cpu = hlwq::default_backend;
using scalar = hlwq::backend::scalar;

constexpr std::size_t kRows = 1024, kCols = 4096, kWeights = kRows * kCols;
constexpr std::size_t kWhtFloats = std::size_t{1} << 20;  // 4 MiB
constexpr std::size_t kCodes = std::size_t{1} << 20;      // 1 MiB of unpacked codes
constexpr std::array<int, 5> kQuantBits{2, 3, 4, 5, 8};
constexpr std::array<std::size_t, 4> kWhtSizes{64, 128, 256, 1024};

// ---------------------------------------------------------------------------------------
// Inputs, built once and shared.
// ---------------------------------------------------------------------------------------
const std::vector<float>& gaussian_matrix() {
    static const std::vector<float> w = [] {
        std::vector<float> v(kWeights);
        std::mt19937_64 rng(42);
        std::normal_distribution<float> dist(0.0f, 1.0f);
        for (float& x : v) x = dist(rng);
        return v;
    }();
    return w;
}

const std::vector<float>& uniform_buffer() {
    static const std::vector<float> v = [] {
        std::vector<float> u(kWhtFloats);
        std::mt19937_64 rng(7);
        std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
        for (float& x : u) x = dist(rng);
        return u;
    }();
    return v;
}

const hlwq::quantized_matrix& quantized(int bits) {
    static std::array<std::optional<hlwq::quantized_matrix>, hlwq::max_bits + 1> cache;
    auto& q = cache[static_cast<std::size_t>(bits)];
    if (!q) q = hlwq::quantize(gaussian_matrix(), kRows, kCols, bits, hlwq::quantize_options{.threads = 0});
    return *q;
}

template <int B>
const std::vector<std::uint8_t>& packed_codes() {
    static const std::vector<std::uint8_t> p = [] {
        std::vector<std::uint8_t> codes(kCodes);
        std::mt19937 rng(B);
        for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << B) - 1u));
        std::vector<std::uint8_t> out(hlwq::packer<B>::packed_bytes(kCodes));
        hlwq::packer<B>::pack(codes, out);
        return out;
    }();
    return p;
}

using hlwq_bench::add;
using hlwq_bench::add_memcpy;

template <class Backend>
constexpr const char* tag() {
    return std::is_same_v<Backend, scalar> ? "scalar" : "cpu";
}

// ---------------------------------------------------------------------------------------
// quantize / dequantize
// ---------------------------------------------------------------------------------------
template <class Backend>
void add_quantize(int bits) {
    const std::string base = "quantize/PQ" + std::to_string(bits) + "/";
    add({base + tag<Backend>(), "quantize", kWeights * sizeof(float), kWeights, "quantize/memcpy",
         std::is_same_v<Backend, cpu> ? base + "scalar" : ""},
        [bits](benchmark::State& st) {
            const auto& w = gaussian_matrix();
            const hlwq::quantize_options opts{.threads = 1};
            for (auto _ : st) {
                auto q = hlwq::quantize(w, kRows, kCols, bits, opts, Backend{});
                benchmark::DoNotOptimize(q.codes.data());
                benchmark::ClobberMemory();
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kWeights));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kWeights * sizeof(float)));
        })
        ->Unit(benchmark::kMillisecond);
}

template <class Backend>
void add_dequantize(int bits) {
    const std::string base = "dequantize/PQ" + std::to_string(bits) + "/";
    add({base + tag<Backend>(), "dequantize", kWeights * sizeof(float), kWeights, "dequantize/memcpy",
         std::is_same_v<Backend, cpu> ? base + "scalar" : ""},
        [bits](benchmark::State& st) {
            const auto& q = quantized(bits);
            std::vector<float> out(kWeights);
            for (auto _ : st) {
                hlwq::dequantize(q, std::span<float>(out), 1, Backend{});
                benchmark::DoNotOptimize(out.data());
                benchmark::ClobberMemory();
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kWeights));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kWeights * sizeof(float)));
        })
        ->Unit(benchmark::kMillisecond);
}

// ---------------------------------------------------------------------------------------
// WHT
// ---------------------------------------------------------------------------------------
template <class Backend>
void add_wht_raw(std::size_t n) {
    const std::string base = "wht/raw/n:" + std::to_string(n) + "/";
    add({base + tag<Backend>(), "wht", kWhtFloats * sizeof(float), kWhtFloats, "wht/memcpy",
         std::is_same_v<Backend, cpu> ? base + "scalar" : ""},
        [n](benchmark::State& st) {
            const auto& src = uniform_buffer();
            std::vector<float> x(src);
            std::size_t passes = 0;
            for (auto _ : st) {
                // The unnormalized transform grows values by sqrt(n) per pass: start again
                // from the input every 8 passes (n^4 <= 2^40, far from float overflow).
                if (++passes % 8 == 0) {
                    st.PauseTiming();
                    std::copy(src.begin(), src.end(), x.begin());
                    st.ResumeTiming();
                }
                for (std::size_t i = 0; i < x.size(); i += n) hlwq::kernels<Backend>::fwht(x.data() + i, n);
                benchmark::DoNotOptimize(x.data());
                benchmark::ClobberMemory();
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kWhtFloats));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kWhtFloats * sizeof(float)));
        })
        ->Unit(benchmark::kMicrosecond);
}

template <class Backend>
void add_wht_blocks(std::size_t n) {
    const std::string base = "wht/blocks/n:" + std::to_string(n) + "/";
    add({base + tag<Backend>(), "wht", kWhtFloats * sizeof(float), kWhtFloats, "wht/memcpy",
         std::is_same_v<Backend, cpu> ? base + "scalar" : ""},
        [n](benchmark::State& st) {
            std::vector<float> x(uniform_buffer());  // orthonormal: values stay bounded
            for (auto _ : st) {
                hlwq::fwht_blocks(std::span<float>(x), n, Backend{});
                benchmark::DoNotOptimize(x.data());
                benchmark::ClobberMemory();
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kWhtFloats));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kWhtFloats * sizeof(float)));
        })
        ->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------
// unpack
// ---------------------------------------------------------------------------------------
template <int B, bool Simd>
void add_unpack() {
    const std::string base = "unpack/PQ" + std::to_string(B) + "/";
    add({base + (Simd ? "cpu" : "scalar"), "unpack", kCodes, kCodes, "unpack/memcpy", Simd ? base + "scalar" : ""},
        [](benchmark::State& st) {
            const auto& packed = packed_codes<B>();
            std::vector<std::uint8_t> codes(kCodes);
            for (auto _ : st) {
                if constexpr (Simd)
                    hlwq::kernels<cpu>::unpack<B>(packed.data(), kCodes, codes.data());
                else
                    hlwq::packer<B>::unpack(packed, codes);
                benchmark::DoNotOptimize(codes.data());
                benchmark::ClobberMemory();
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kCodes));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kCodes));  // codes out
            st.counters["packed_bytes_per_second"] = benchmark::Counter(
                static_cast<double>(st.iterations() * packed.size()), benchmark::Counter::kIsRate,
                benchmark::Counter::kIs1024);
        })
        ->Unit(benchmark::kMicrosecond);
}

void register_all() {
    add_memcpy("quantize", kWeights * sizeof(float));
    for (int b : kQuantBits) {
        add_quantize<cpu>(b);
        add_quantize<scalar>(b);
    }
    add_memcpy("dequantize", kWeights * sizeof(float));
    for (int b : kQuantBits) {
        add_dequantize<cpu>(b);
        add_dequantize<scalar>(b);
    }
    add_memcpy("wht", kWhtFloats * sizeof(float));
    for (std::size_t n : kWhtSizes) {
        add_wht_raw<cpu>(n);
        add_wht_raw<scalar>(n);
    }
    for (std::size_t n : kWhtSizes) {
        add_wht_blocks<cpu>(n);
        add_wht_blocks<scalar>(n);
    }
    add_memcpy("unpack", kCodes);
    [&]<int... I>(std::integer_sequence<int, I...>) {
        ((add_unpack<I + 1, true>(), add_unpack<I + 1, false>()), ...);
    }(std::make_integer_sequence<int, 8>());
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::AddCustomContext("hlwq_default_backend", cpu::name());
    benchmark::AddCustomContext("hlwq_matrix", std::to_string(kRows) + "x" + std::to_string(kCols) + " float");
    hlwq_bench::group_notes() = {
        {"quantize", "bytes = float input, items = weights; threads = 1"},
        {"dequantize", "bytes = float output, items = weights; threads = 1"},
        {"wht", "bytes = the 4 MiB buffer, transformed in place; items = floats"},
        {"unpack", "bytes = codes PRODUCED (1 byte each); items = codes"},
    };
    hlwq_bench::speedup_note() = std::string("scalar time / cpu time; cpu = ") + cpu::name();
    register_all();
    return hlwq_bench::run_main(argc, argv);
}
