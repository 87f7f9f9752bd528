// SPDX-License-Identifier: MIT
// Decode attention over a KV cache (Google Benchmark): one query token, 16 query heads over
// 8 KV heads (GQA), head_dim 256, over 1K, 8K and 32K cached tokens, with the cache stored
// as fp16 (hlwq::fp16_policy) or HLWQ PQ2/PQ3/PQ4 (hlwq::hlwq_policy<B>).
//
// Groups, one per context length, named decode/<context>/...:
//   fp16, PQ2, PQ3, PQ4   kv_cache<P>::attention(): time per decode step;
//                         bytes = the keys and values read per step (context · 2 · 8 heads ·
//                         record bytes), so GB/s is the rate the cache is read at.
//   read                  a streaming read (sum) of as many bytes as the fp16 cache holds,
//                         on as many threads as attention uses: what reading fp16 costs at
//                         best, the baseline of the group.
//
// RATIO table columns here: "x memcpy" = time / time of decode/<context>/read (below 1:
// faster than merely reading the fp16 cache), "speedup" = fp16 time / time, each at the same
// context.
//
// Quick run: hlwq_bench_attention --benchmark_min_time=0.05
#include <hlwq/kv_cache.hpp>

#include <benchmark/benchmark.h>

#include "ratio.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kQHeads = 16, kKvHeads = 8, kHeadDim = 256;
constexpr std::array<std::size_t, 3> kContexts{1024, 8192, 32768};
constexpr std::size_t kFill = 1024;  // distinct tokens; longer caches repeat them

std::string context_name(std::size_t n) { return std::to_string(n / 1024) + "K"; }

unsigned threads() { return std::max(1u, std::thread::hardware_concurrency()); }

/// Gaussian vectors of kFill tokens (keys, values) and one query, built once.
const std::vector<float>& data(int which) {
    static const std::array<std::vector<float>, 3> d = [] {
        std::mt19937_64 rng(1);
        std::normal_distribution<float> normal;
        std::array<std::vector<float>, 3> v;
        v[0].resize(kFill * kKvHeads * kHeadDim);
        v[1].resize(v[0].size());
        v[2].resize(kQHeads * kHeadDim);
        for (auto& x : v)
            for (float& f : x) f = normal(rng);
        return v;
    }();
    return d[static_cast<std::size_t>(which)];
}

/// The cache of policy P holding n tokens, built on first use and kept for the run.
template <class P>
const hlwq::kv_cache<P>& cache(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<hlwq::kv_cache<P>>> caches;
    auto& c = caches[n];
    if (!c) {
        c = std::make_unique<hlwq::kv_cache<P>>(
            hlwq::kv_cache_config{.n_kv_heads = kKvHeads, .head_dim = kHeadDim, .capacity = n});
        for (std::size_t t = 0; t < n; t += kFill) c->append(data(0), data(1), kFill);
    }
    return *c;
}

template <class P>
void add_decode(std::size_t n) {
    const std::string group = "decode/" + context_name(n);
    const std::size_t bytes = n * 2 * kKvHeads * P::record_bytes(kHeadDim);
    const std::string name = group + "/" + P::name();
    hlwq_bench::add({name, group, bytes, n * kQHeads, group + "/read",
                     name == group + "/fp16" ? "" : group + "/fp16"},
                    [n, bytes](benchmark::State& st) {
                        const auto& c = cache<P>(n);
                        std::vector<float> out(kQHeads * kHeadDim);
                        for (auto _ : st) {
                            c.attention(data(2), kQHeads, out);
                            benchmark::DoNotOptimize(out.data());
                            benchmark::ClobberMemory();
                        }
                        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
                        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * n * kQHeads));
                    })
        ->Unit(benchmark::kMicrosecond);
}

/// Sums `bytes` bytes of floats on threads(): the bandwidth bound of reading the fp16 cache.
void add_read(std::size_t n) {
    const std::string group = "decode/" + context_name(n);
    const std::size_t bytes = n * 2 * kKvHeads * hlwq::fp16_policy::record_bytes(kHeadDim);
    hlwq_bench::add({group + "/read", group, bytes, 0, "", ""},
                    [bytes](benchmark::State& st) {
                        using batch = xsimd::batch<float>;
                        static std::map<std::size_t, std::vector<float>> bufs;
                        auto& buf = bufs[bytes];
                        if (buf.empty()) buf.assign(bytes / sizeof(float), 1.0f);
                        const std::size_t floats = buf.size() - buf.size() % batch::size;
                        std::vector<float> partial(threads());
                        for (auto _ : st) {
                            hlwq::detail::parallel_for(threads(), threads(), [&](std::size_t t0, std::size_t t1) {
                                for (std::size_t t = t0; t < t1; ++t) {
                                    const std::size_t lo = floats / batch::size * t / threads() * batch::size;
                                    const std::size_t hi = floats / batch::size * (t + 1) / threads() * batch::size;
                                    batch s0(0.0f), s1(0.0f);
                                    std::size_t i = lo;
                                    for (; i + 2 * batch::size <= hi; i += 2 * batch::size) {
                                        s0 += batch::load_unaligned(buf.data() + i);
                                        s1 += batch::load_unaligned(buf.data() + i + batch::size);
                                    }
                                    for (; i < hi; i += batch::size) s0 += batch::load_unaligned(buf.data() + i);
                                    partial[t] = xsimd::hadd(s0 + s1);
                                }
                            });
                            benchmark::DoNotOptimize(partial.data());
                            benchmark::ClobberMemory();
                        }
                        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
                    })
        ->Unit(benchmark::kMicrosecond);
}

void register_all() {
    for (std::size_t n : kContexts) {
        add_read(n);
        add_decode<hlwq::fp16_policy>(n);
        add_decode<hlwq::hlwq_policy<2>>(n);
        add_decode<hlwq::hlwq_policy<3>>(n);
        add_decode<hlwq::hlwq_policy<4>>(n);
    }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::AddCustomContext("hlwq_default_backend", hlwq::default_backend::name());
    benchmark::AddCustomContext("hlwq_attention", "1 query token, 16 q heads, 8 kv heads, head_dim 256, threads " +
                                                      std::to_string(threads()));
    for (std::size_t n : kContexts)
        hlwq_bench::group_notes()["decode/" + context_name(n)] =
            "bytes = K+V read per step; x memcpy = time / streaming read of the fp16 cache's bytes";
    hlwq_bench::speedup_note() = "fp16 cache time / its time, same context";
    register_all();
    return hlwq_bench::run_main(argc, argv);
}
