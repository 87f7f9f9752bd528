// SPDX-License-Identifier: MIT
// Products on packed HLWQ weights, each beside its baselines from the same run:
//
//   matvec/...   16384 x 4096, one token, 2 threads. bytes = what the product reads (codes +
//                norms for HLWQ, the matrix for dense); items = weights.
//                  matvec/stream      a read of the PQ4 matrix's bytes (summing 64-bit words):
//                                     the bandwidth bound, the x-baseline column
//                  matvec/dense_f32, matvec/dense_bf16   dense matvec, same threads
//                  matvec/PQ<b>       hlwq::matvec, fp32 activations (exact);
//                                     "speedup" = dense_f32 time / its time
//                  matvec/PQ<b>/int8  hlwq::matvec with int8 activations (llama.cpp's way)
//   matvec_cached/PQ<b>/int8   256 x 4096 (in L2), one thread: arithmetic throughput alone
//   matmul/...   4096 x 4096 times a batch of 8, 32, 128 tokens, one thread; items = flops
//                (2 · rows · cols · batch); matmul/dense_f32/<n> is Eigen's product;
//                matmul/PQ<b>/int8/<n> uses int8 activations.
//   prefill/...  a small model's layer shapes (1536 x 384, 384 x 1536, 8192 x 384) times 32 or
//                512 tokens, one thread: PQ4 (fp32 and int8 activations) against Eigen fp32.
//   decode/...   the same shapes at one token.
#include <hlwq/matmul.hpp>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include "ratio.hpp"

#include <bit>
#include <map>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using hlwq_bench::add;

constexpr std::size_t kRows = 16384, kCols = 4096;
constexpr unsigned kThreads = 2;
constexpr std::size_t kMmRows = 4096, kMmCols = 4096;

std::vector<float> gaussian(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

const std::vector<float>& weights() {
    static const std::vector<float> w = gaussian(kRows * kCols, 1);
    return w;
}

// Bytes an HLWQ matrix of kRows x kCols occupies (codes + fp16 norms, blocks of 128), known
// without quantizing it.
constexpr std::size_t stored_bytes(int bits) {
    return kRows * (kCols / 128) * (128 * static_cast<std::size_t>(bits) / 8 + 2);
}

const hlwq::quantized_matrix& quantized(int bits) {
    static std::map<int, hlwq::quantized_matrix> cache;
    auto it = cache.find(bits);
    if (it == cache.end()) it = cache.emplace(bits, hlwq::quantize(weights(), kRows, kCols, bits)).first;
    return it->second;
}

// Bandwidth bound: read `bytes` bytes on kThreads threads.
void add_stream(std::size_t bytes) {
    add({"matvec/stream", "matvec", bytes, 0, "", ""}, [bytes](benchmark::State& st) {
        std::vector<std::uint64_t> buf(bytes / 8, 1);
        std::vector<std::uint64_t> part(kThreads);
        for (auto _ : st) {
            hlwq::detail::parallel_for(buf.size(), kThreads, [&](std::size_t a, std::size_t b) {
                std::uint64_t s = 0;
                for (std::size_t i = a; i < b; ++i) s += buf[i];
                part[a * kThreads / buf.size()] = s;
            });
            benchmark::DoNotOptimize(part.data());
        }
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    });
}

float dot_bf16(const std::uint16_t* w, const float* x, std::size_t n) {
    float s = 0;
#if XSIMD_WITH_AVX512F
    __m512 acc = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i h = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
        acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, h, 16)), _mm512_loadu_ps(x + i), acc);
    }
    s = xsimd::hadd(xsimd::batch<float, xsimd::avx512bw>(acc));
    for (; i < n; ++i) s += std::bit_cast<float>(std::uint32_t{w[i]} << 16) * x[i];
#else
    for (std::size_t i = 0; i < n; ++i) s += std::bit_cast<float>(std::uint32_t{w[i]} << 16) * x[i];
#endif
    return s;
}

void add_dense_matvec() {
    add({"matvec/dense_f32", "matvec", kRows * kCols * 4, kRows * kCols, "matvec/stream", ""}, [](benchmark::State& st) {
        const auto& w = weights();
        const auto x = gaussian(kCols, 2);
        std::vector<float> y(kRows);
        for (auto _ : st) {
            hlwq::detail::parallel_for(kRows, kThreads, [&](std::size_t a, std::size_t b) {
                for (std::size_t r = a; r < b; ++r)
                    y[r] = hlwq::kernels<hlwq::default_backend>::dot(w.data() + r * kCols, x.data(), kCols);
            });
            benchmark::DoNotOptimize(y.data());
        }
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kRows * kCols));
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kRows * kCols * 4));
    });
    add({"matvec/dense_bf16", "matvec", kRows * kCols * 2, kRows * kCols, "matvec/stream", "matvec/dense_f32"},
        [](benchmark::State& st) {
            std::vector<std::uint16_t> w;
            for (float v : weights()) w.push_back(hlwq::bfloat16(v).bits);
            const auto x = gaussian(kCols, 2);
            std::vector<float> y(kRows);
            for (auto _ : st) {
                hlwq::detail::parallel_for(kRows, kThreads, [&](std::size_t a, std::size_t b) {
                    for (std::size_t r = a; r < b; ++r) y[r] = dot_bf16(w.data() + r * kCols, x.data(), kCols);
                });
                benchmark::DoNotOptimize(y.data());
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kRows * kCols));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * kRows * kCols * 2));
        });
}

void add_matvec(int bits, hlwq::activation_precision precision) {
    const std::size_t bytes = stored_bytes(bits);
    const bool int8 = precision == hlwq::activation_precision::int8;
    add({"matvec/PQ" + std::to_string(bits) + (int8 ? "/int8" : ""), "matvec", bytes, kRows * kCols, "matvec/stream",
         "matvec/dense_f32"},
        [bits, bytes, precision](benchmark::State& st) {
            const auto& q = quantized(bits);
            if (q.storage_bytes() != bytes) st.SkipWithError("stored_bytes() disagrees with the matrix");
            const auto x = gaussian(kCols, 2);
            std::vector<float> y(kRows);
            for (auto _ : st) {
                hlwq::matvec(q, x, y, {.threads = kThreads, .activations = precision});
                benchmark::DoNotOptimize(y.data());
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kRows * kCols));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
        });
}

// The decode kernels' arithmetic throughput: a matrix small enough to stay in L2 (at most
// 1 MB of codes), one thread, so that memory plays no part.
void add_matvec_cached(int bits) {
    constexpr std::size_t rows = 256;
    add({"matvec_cached/PQ" + std::to_string(bits) + "/int8", "matvec_cached", 0, rows * kCols, "", ""},
        [bits](benchmark::State& st) {
            static std::map<int, hlwq::quantized_matrix> cache;  // quantized once, not per repetition
            auto it = cache.find(bits);
            if (it == cache.end())
                it = cache.emplace(bits, hlwq::quantize(std::span(weights()).first(rows * kCols), rows, kCols, bits)).first;
            const auto& q = it->second;
            const auto x = gaussian(kCols, 2);
            std::vector<float> y(rows);
            for (auto _ : st) {
                hlwq::matvec(q, x, y, {.threads = 1, .activations = hlwq::activation_precision::int8});
                benchmark::DoNotOptimize(y.data());
            }
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * rows * kCols));
        });
}

const hlwq::quantized_matrix& mm_quantized(int bits) {
    static std::map<int, hlwq::quantized_matrix> cache;
    auto it = cache.find(bits);
    if (it == cache.end())
        it = cache.emplace(bits, hlwq::quantize(std::span(weights()).first(kMmRows * kMmCols), kMmRows, kMmCols, bits)).first;
    return it->second;
}

void add_matmul(std::size_t n) {
    const std::size_t flops = 2 * kMmRows * kMmCols * n;
    const std::string dense = "matmul/dense_f32/" + std::to_string(n);
    add({dense, "matmul", 0, flops, "", ""}, [n](benchmark::State& st) {
        using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        const Eigen::Map<const M> w(weights().data(), kMmRows, kMmCols);
        const auto xv = gaussian(n * kMmCols, 3);
        const Eigen::Map<const M> x(xv.data(), static_cast<Eigen::Index>(n), kMmCols);
        M y(static_cast<Eigen::Index>(n), kMmRows);
        for (auto _ : st) {
            y.noalias() = x * w.transpose();
            benchmark::DoNotOptimize(y.data());
        }
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * 2 * kMmRows * kMmCols * n));
    });
    for (const auto& variant : {std::pair{2, hlwq::activation_precision::f32}, std::pair{4, hlwq::activation_precision::f32},
                                std::pair{8, hlwq::activation_precision::f32}, std::pair{4, hlwq::activation_precision::int8}}) {
        // named copies: clang 14 cannot capture structured bindings
        const int bits = variant.first;
        const hlwq::activation_precision precision = variant.second;
        const bool int8 = precision == hlwq::activation_precision::int8;
        add({"matmul/PQ" + std::to_string(bits) + (int8 ? "/int8/" : "/") + std::to_string(n), "matmul", 0, flops, "", dense},
            [n, bits, precision](benchmark::State& st) {
                const auto& q = mm_quantized(bits);
                const auto x = gaussian(n * kMmCols, 3);
                std::vector<float> y(n * kMmRows);
                for (auto _ : st) {
                    hlwq::matmul(q, x, n, y, {.threads = 1, .activations = precision});
                    benchmark::DoNotOptimize(y.data());
                }
                st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * 2 * kMmRows * kMmCols * n));
            });
    }
}

// Products of a small model's layers (Gemma 4 tiny: 1536 x 384 attention and MLP, 384 x 1536
// down, 8192 x 384 an output head) on one thread, PQ4 against Eigen's fp32: a prefill of n
// tokens, or one token (group "decode"), where the per-call work on the activations (rotation,
// rounding) weighs as much as the codes.
void add_layer_product(std::size_t rows, std::size_t cols, std::size_t n) {
    const std::size_t flops = 2 * rows * cols * n;
    const std::string group = n == 1 ? "decode" : "prefill";
    const std::string shape = std::to_string(rows) + "x" + std::to_string(cols) + "/" + std::to_string(n);
    const std::string dense = group + "/dense_f32/" + shape;
    add({dense, group, 0, flops, "", ""}, [rows, cols, n, flops](benchmark::State& st) {
        using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        const Eigen::Map<const M> w(weights().data(), static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
        const auto xv = gaussian(n * cols, 3);
        const Eigen::Map<const M> x(xv.data(), static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(cols));
        M y(static_cast<Eigen::Index>(n), static_cast<Eigen::Index>(rows));
        for (auto _ : st) {
            y.noalias() = x * w.transpose();
            benchmark::DoNotOptimize(y.data());
        }
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * flops));
    });
    for (const auto precision : {hlwq::activation_precision::f32, hlwq::activation_precision::int8}) {
        const bool int8 = precision == hlwq::activation_precision::int8;
        add({group + "/PQ4" + (int8 ? "/int8/" : "/") + shape, group, 0, flops, "", dense},
            [rows, cols, n, flops, precision](benchmark::State& st) {
                const auto q = hlwq::quantize(std::span(weights()).first(rows * cols), rows, cols, 4);
                const auto x = gaussian(n * cols, 3);
                std::vector<float> y(n * rows);
                for (auto _ : st) {
                    hlwq::matmul(q, x, n, y, {.threads = 1, .activations = precision});
                    benchmark::DoNotOptimize(y.data());
                }
                st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * flops));
            });
    }
}

}  // namespace

int main(int argc, char** argv) {
    hlwq_bench::group_notes() = {
        {"matvec", "16384 x 4096, 2 threads; bytes = bytes read (codes + norms, or the dense matrix); "
                   "x memcpy column = time / time of streaming the PQ4 matrix's bytes"},
        {"matvec_cached", "256 x 4096, 1 thread, int8 activations, in L2: the kernels' arithmetic speed"},
        {"matmul", "4096 x 4096 x batch, 1 thread; items = flops (Mitems/s = MFLOP/s)"},
        {"prefill", "rows x cols / batch, 1 thread, PQ4; items = flops; speedup = Eigen fp32 time / its time"},
        {"decode", "rows x cols / 1 token, 1 thread, PQ4; items = flops; speedup = Eigen fp32 time / its time"},
    };
    hlwq_bench::speedup_note() = "dense fp32 time / its time";
    add_stream(stored_bytes(4));
    add_dense_matvec();
    for (int bits : {2, 3, 4, 5, 6, 8}) add_matvec(bits, hlwq::activation_precision::f32);
    for (int bits : {2, 3, 4, 5, 6, 8}) add_matvec(bits, hlwq::activation_precision::int8);
    for (int bits : {2, 3, 4, 5, 6, 8}) add_matvec_cached(bits);
    for (std::size_t n : {8, 32, 128}) add_matmul(n);
    for (std::size_t n : {1, 32, 512}) {
        add_layer_product(1536, 384, n);
        add_layer_product(384, 1536, n);
        add_layer_product(8192, 384, n);
    }
    return hlwq_bench::run_main(argc, argv);
}
