// SPDX-License-Identifier: MIT
#include <hlwq/kv_cache.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <vector>

namespace {

using hlwq::attention_params;
using hlwq::kv_cache;
using hlwq::kv_cache_config;

/// Reference attention of one query head, in double: softmax(softcap(scale · q·k_t)) · v_t
/// over the given key and value vectors (d each, concatenated).
std::vector<double> reference_attention(std::span<const float> q, const std::vector<float>& keys,
                                        const std::vector<float>& values, std::size_t d, double scale,
                                        std::optional<float> softcap) {
    const std::size_t n = keys.size() / d;
    std::vector<double> s(n);
    double m = -std::numeric_limits<double>::infinity();
    for (std::size_t t = 0; t < n; ++t) {
        double dot = 0;
        for (std::size_t i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * keys[t * d + i];
        s[t] = scale * dot;
        if (softcap) s[t] = *softcap * std::tanh(s[t] / *softcap);
        m = std::max(m, s[t]);
    }
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - m));
    std::vector<double> out(d, 0.0);
    for (std::size_t t = 0; t < n; ++t)
        for (std::size_t i = 0; i < d; ++i) out[i] += s[t] / sum * values[t * d + i];
    return out;
}

/// ‖a - b‖ / ‖b‖.
double rel_error(std::span<const float> a, const std::vector<double>& b) {
    double e = 0, r = 0;
    for (std::size_t i = 0; i < b.size(); ++i) {
        e += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    return std::sqrt(e / r);
}

/// The dequantized keys or values of kv head h over positions [lo, hi].
template <class Cache>
std::vector<float> dequantized(const Cache& c, bool keys, std::size_t h, std::size_t lo, std::size_t hi) {
    const std::size_t d = c.head_dim();
    std::vector<float> out((hi - lo + 1) * d);
    for (std::size_t p = lo; p <= hi; ++p) {
        const std::span<float> dst(out.data() + (p - lo) * d, d);
        keys ? c.key(p, h, dst) : c.value(p, h, dst);
    }
    return out;
}

/// Largest ‖out - reference‖/‖reference‖ over the query heads of one query at `pos`, the
/// reference computed in double over the cache's own dequantized vectors at positions lo..pos.
template <class Cache>
double max_error_vs_dequantized(const Cache& c, std::span<const float> q, std::span<const float> out,
                                std::size_t n_q_heads, std::size_t lo, std::size_t pos, const attention_params& p) {
    const std::size_t d = c.head_dim(), group = n_q_heads / c.n_kv_heads();
    const double scale = p.scale.value_or(1.0f / std::sqrt(static_cast<float>(d)));
    double worst = 0;
    for (std::size_t j = 0; j < n_q_heads; ++j) {
        const std::size_t h = j / group;
        const auto ref = reference_attention(q.subspan(j * d, d), dequantized(c, true, h, lo, pos),
                                             dequantized(c, false, h, lo, pos), d, scale, p.softcap);
        worst = std::max(worst, rel_error(out.subspan(j * d, d), ref));
    }
    return worst;
}

// Tolerance against the double reference over the dequantized cache. The cache computes the
// same sums in float, in another order (rotated domain): each score carries rounding of
// order u·sqrt(d·log2 d)·‖q‖‖k‖·scale/sqrt(d) with u = 2^-24 (the WHT of q adds log2 d
// roundings per element, the dot product d more), about 2e-6 for d = 512 and scores of
// order 1; softmax passes a score error δ to the output as at most 2δ relative, the value
// sums add u·sqrt(n). A wrong code, norm, slot or scale errs by 1e-3 or more.
constexpr double kExactTol = 1e-5;

using hlwq::bf16_policy;
using hlwq::fp16_policy;
template <int B>
using pq = hlwq::hlwq_policy<B>;

}  // namespace

TEST_CASE_TEMPLATE("decode attention over the cache equals attention over its dequantized vectors", P,
                   fp16_policy, bf16_policy, pq<1>, pq<2>, pq<3>, pq<4>, pq<8>) {
    const std::size_t n_kv = 2, n_tokens = 37;
    for (std::size_t d : {64, 128, 256, 512})
        for (std::size_t ratio : {1, 2, 4})
            for (int variant = 0; variant < 3; ++variant) {
                attention_params p;
                if (variant == 1) p.softcap = 2.0f;  // small enough to bend the scores
                if (variant == 2) {                 // Gemma-style: scale 1, softcap 50
                    p.scale = 1.0f / 16;
                    p.softcap = 50.0f;
                }
                CAPTURE(d);
                CAPTURE(ratio);
                CAPTURE(variant);
                kv_cache<P> c({.n_kv_heads = n_kv, .head_dim = d, .capacity = 64});
                const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 1);
                const auto v = hlwq_test::gaussian(n_tokens * n_kv * d, 2);
                c.append(k, v, n_tokens);
                const std::size_t nq = n_kv * ratio;
                const auto q = hlwq_test::gaussian(nq * d, 3);
                std::vector<float> out(q.size());
                c.attention(q, nq, out, p);
                CHECK(max_error_vs_dequantized(c, q, out, nq, 0, n_tokens - 1, p) < kExactTol);
            }
}

TEST_CASE_TEMPLATE("sliding window: a ring buffer of the last tokens, attention over the window", P,
                   fp16_policy, pq<3>) {
    const std::size_t n_kv = 2, d = 64, window = 12, nq = 4;
    for (std::size_t capacity : {12, 19}) {
        CAPTURE(capacity);
        kv_cache<P> c({.n_kv_heads = n_kv, .head_dim = d, .capacity = capacity, .sliding_window = window});
        // Each token's vectors are also stored alone in a one-slot cache: the ring must hand
        // back exactly those records, whatever slot they went to.
        kv_cache<P> alone({.n_kv_heads = n_kv, .head_dim = d, .capacity = 1, .sliding_window = 1});
        const std::size_t n_tokens = 3 * capacity + 5;
        const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 4);
        const auto v = hlwq_test::gaussian(n_tokens * n_kv * d, 5);
        std::vector<float> a(d), b(d), out(nq * d);
        for (std::size_t t = 0; t < n_tokens; ++t) {
            const std::span<const float> kt(k.data() + t * n_kv * d, n_kv * d), vt(v.data() + t * n_kv * d, n_kv * d);
            c.append(kt, vt, 1);
            alone.append(kt, vt, 1);
            CHECK(c.next_position() == t + 1);
            CHECK(c.size() == std::min(t + 1, capacity));
            for (std::size_t h = 0; h < n_kv; ++h) {
                c.key(t, h, a);
                alone.key(t, h, b);
                CHECK(a == b);
                c.value(t, h, a);
                alone.value(t, h, b);
                CHECK(a == b);
            }
            const auto q = hlwq_test::gaussian(nq * d, static_cast<unsigned>(100 + t));
            c.attention(q, nq, out);
            const std::size_t lo = t + 1 > window ? t + 1 - window : 0;
            CHECK(max_error_vs_dequantized(c, q, out, nq, lo, t, {}) < kExactTol);
        }
        // Positions that fell out of the ring cannot be read back.
        CHECK_THROWS_AS(c.key(n_tokens - capacity - 1, 0, a), std::invalid_argument);
    }
}

TEST_CASE_TEMPLATE("appending a chunk stores what appending token by token stores", P, fp16_policy, pq<2>,
                   pq<4>) {
    const std::size_t n_kv = 2, d = 128, nq = 4, n_tokens = 45;
    for (std::optional<std::size_t> window : {std::optional<std::size_t>{}, std::optional<std::size_t>{16}}) {
        CAPTURE(window.value_or(0));
        const kv_cache_config cfg{.n_kv_heads = n_kv, .head_dim = d, .capacity = window ? 20u : 64u, .sliding_window = window};
        kv_cache<P> one(cfg), chunked(cfg);
        const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 6);
        const auto v = hlwq_test::gaussian(n_tokens * n_kv * d, 7);
        for (std::size_t t = 0; t < n_tokens; ++t)
            one.append(std::span(k).subspan(t * n_kv * d, n_kv * d), std::span(v).subspan(t * n_kv * d, n_kv * d), 1);
        // Chunks of 1, 7, 30 (longer than the ring: only its last tokens survive) and 7.
        std::size_t t = 0;
        for (std::size_t len : {1, 7, 30, 7}) {
            chunked.append(std::span(k).subspan(t * n_kv * d, len * n_kv * d),
                           std::span(v).subspan(t * n_kv * d, len * n_kv * d), len);
            t += len;
        }
        REQUIRE(chunked.next_position() == n_tokens);
        std::vector<float> a(d), b(d);
        for (std::size_t pos = chunked.first_position(); pos < n_tokens; ++pos)
            for (std::size_t h = 0; h < n_kv; ++h) {
                one.key(pos, h, a);
                chunked.key(pos, h, b);
                CHECK(a == b);
                one.value(pos, h, a);
                chunked.value(pos, h, b);
                CHECK(a == b);
            }
        const auto q = hlwq_test::gaussian(nq * d, 8);
        std::vector<float> out1(q.size()), out2(q.size());
        one.attention(q, nq, out1);
        chunked.attention(q, nq, out2);
        CHECK(out1 == out2);
    }
}

TEST_CASE_TEMPLATE("chunked attention is causal and equals decoding token by token", P, fp16_policy, pq<3>) {
    const std::size_t n_kv = 2, d = 64, nq = 4, n_tokens = 30, chunk = 10;
    for (std::optional<std::size_t> window : {std::optional<std::size_t>{}, std::optional<std::size_t>{8}}) {
        CAPTURE(window.value_or(0));
        // A chunk of 10 over a window of 8 needs capacity 8 + 10 - 1 = 17.
        const kv_cache_config cfg{.n_kv_heads = n_kv, .head_dim = d, .capacity = window ? 17u : 64u, .sliding_window = window};
        kv_cache<P> prefill(cfg), decode(cfg);
        const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 9);
        const auto v = hlwq_test::gaussian(n_tokens * n_kv * d, 10);
        const auto q = hlwq_test::gaussian(n_tokens * nq * d, 11);
        std::vector<float> out(q.size()), step(nq * d);
        for (std::size_t t0 = 0; t0 < n_tokens; t0 += chunk) {
            prefill.append(std::span(k).subspan(t0 * n_kv * d, chunk * n_kv * d),
                           std::span(v).subspan(t0 * n_kv * d, chunk * n_kv * d), chunk);
            prefill.attention_chunk(std::span(q).subspan(t0 * nq * d, chunk * nq * d), nq, chunk,
                                    std::span(out).subspan(t0 * nq * d, chunk * nq * d));
        }
        for (std::size_t t = 0; t < n_tokens; ++t) {
            decode.append(std::span(k).subspan(t * n_kv * d, n_kv * d), std::span(v).subspan(t * n_kv * d, n_kv * d), 1);
            decode.attention(std::span(q).subspan(t * nq * d, nq * d), nq, step);
            CHECK(std::equal(step.begin(), step.end(), out.begin() + static_cast<std::ptrdiff_t>(t * nq * d)));
        }
        // Explicit positions: the last 3 queries again, read from the same cache.
        std::vector<float> again(3 * nq * d);
        prefill.attention_chunk(std::span(q).subspan((n_tokens - 3) * nq * d, 3 * nq * d), nq, 3, again, {},
                                n_tokens - 3);
        CHECK(std::equal(again.begin(), again.end(), out.end() - static_cast<std::ptrdiff_t>(again.size())));
        if (window) {
            // One slot less and the chunk's first query would need an overwritten token.
            kv_cache<P> small({.n_kv_heads = n_kv, .head_dim = d, .capacity = 16, .sliding_window = window});
            small.append(std::span(k).subspan(0, 2 * chunk * n_kv * d), std::span(v).subspan(0, 2 * chunk * n_kv * d),
                         2 * chunk);
            std::vector<float> o(chunk * nq * d);
            CHECK_THROWS_AS(small.attention_chunk(std::span(q).subspan(0, chunk * nq * d), nq, chunk, o),
                            std::invalid_argument);
            CHECK_NOTHROW(small.attention_chunk(std::span(q).subspan(0, (chunk - 1) * nq * d), nq, chunk - 1,
                                                std::span(o).subspan(0, (chunk - 1) * nq * d)));
        }
    }
}

TEST_CASE("the AVX-512 code path reads the packed records as the scalar backend does") {
    // The backends encode and rotate bit-identically, and decoding is a lookup: the register
    // lookups of backend::cpu and the scalar unpack + decode give identical floats.
    const std::size_t n_kv = 1, nq = 2, n_tokens = 9;
    auto run = [&]<int B>() {
        for (std::size_t d : {16, 32, 64, 256, 1024}) {
            CAPTURE(B);
            CAPTURE(d);
            const kv_cache_config cfg{.n_kv_heads = n_kv, .head_dim = d, .capacity = n_tokens};
            kv_cache<hlwq::hlwq_policy<B>> simd(cfg);
            kv_cache<hlwq::hlwq_policy<B, hlwq::backend::scalar>> scalar(cfg);
            const auto k = hlwq_test::gaussian(n_tokens * d, 12), v = hlwq_test::gaussian(n_tokens * d, 13);
            simd.append(k, v, n_tokens);
            scalar.append(k, v, n_tokens);
            std::vector<float> a(d), b(d);
            for (std::size_t t = 0; t < n_tokens; ++t) {
                simd.key(t, 0, a);
                scalar.key(t, 0, b);
                REQUIRE(a == b);
            }
            const auto q = hlwq_test::gaussian(nq * d, 14);
            std::vector<float> o1(q.size()), o2(q.size());
            simd.attention(q, nq, o1);
            scalar.attention(q, nq, o2);
            CHECK(o1 == o2);
        }
    };
    run.operator()<1>();
    run.operator()<2>();
    run.operator()<3>();
    run.operator()<4>();
    run.operator()<5>();
    run.operator()<8>();
}

TEST_CASE("the error against fp32 attention shrinks with Bits as the Lloyd-Max distortion says") {
    const std::size_t n_kv = 2, nq = 4, n_tokens = 2048, n_queries = 8;
    for (std::size_t d : {128, 256}) {
        CAPTURE(d);
        const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 20), v = hlwq_test::gaussian(n_tokens * n_kv * d, 21);
        const auto q = hlwq_test::gaussian(n_queries * nq * d, 22);
        // Per kv head, the fp32 keys and values: the reference is the uncompressed cache.
        std::vector<std::vector<float>> kh(n_kv), vh(n_kv);
        for (std::size_t t = 0; t < n_tokens; ++t)
            for (std::size_t h = 0; h < n_kv; ++h) {
                kh[h].insert(kh[h].end(), k.begin() + static_cast<std::ptrdiff_t>((t * n_kv + h) * d),
                             k.begin() + static_cast<std::ptrdiff_t>((t * n_kv + h + 1) * d));
                vh[h].insert(vh[h].end(), v.begin() + static_cast<std::ptrdiff_t>((t * n_kv + h) * d),
                             v.begin() + static_cast<std::ptrdiff_t>((t * n_kv + h + 1) * d));
            }
        const double scale = 1.0 / std::sqrt(static_cast<double>(d));
        std::vector<std::vector<double>> ref;
        for (std::size_t j = 0; j < n_queries * nq; ++j)
            ref.push_back(reference_attention(std::span(q).subspan(j * d, d), kh[(j % nq) / (nq / n_kv)],
                                              vh[(j % nq) / (nq / n_kv)], d, scale, std::nullopt));
        std::vector<double> err(9), ratio(9);
        auto measure = [&]<int B>() {
            kv_cache<pq<B>> c({.n_kv_heads = n_kv, .head_dim = d, .capacity = n_tokens});
            c.append(k, v, n_tokens);
            // Keys: the NMSE of the stored vectors is the Lloyd-Max distortion. A rotated
            // Gaussian vector lies on a sphere, so its coordinates have slightly lighter tails
            // than N(0,1): the NMSE lands 1-2% below (README). The estimate is noisier than
            // its sample count suggests, the error being dominated by the few values in the
            // wide outer cells: about 1.3% standard deviation over 131k values (measured over
            // seeds), so 0.5-0.7% over the 512k-1M here, and [0.95, 1.02] is 3 sigma around
            // 0.98-0.99.
            double e = 0, r = 0;
            std::vector<float> x(d);
            for (std::size_t t = 0; t < n_tokens; ++t)
                for (std::size_t h = 0; h < n_kv; ++h) {
                    c.key(t, h, x);
                    for (std::size_t i = 0; i < d; ++i) {
                        const double ki = k[(t * n_kv + h) * d + i];
                        e += (x[i] - ki) * (x[i] - ki);
                        r += ki * ki;
                    }
                }
            ratio[B] = e / r / hlwq::lloyd_max<B>::mse;
            std::vector<float> out(nq * d);
            double sum = 0;
            for (std::size_t i = 0; i < n_queries; ++i) {
                c.attention(std::span(q).subspan(i * nq * d, nq * d), nq, out);
                for (std::size_t j = 0; j < nq; ++j) sum += rel_error(std::span(out).subspan(j * d, d), ref[i * nq + j]);
            }
            err[B] = sum / static_cast<double>(n_queries * nq);
        };
        measure.operator()<1>();
        measure.operator()<2>();
        measure.operator()<3>();
        measure.operator()<4>();
        measure.operator()<5>();
        measure.operator()<6>();
        measure.operator()<7>();
        measure.operator()<8>();
        for (int b = 1; b <= 8; ++b) {
            CAPTURE(b);
            CHECK(ratio[b] > 0.95);
            CHECK(ratio[b] < 1.02);
            if (b > 1) CHECK(err[b] < err[b - 1]);
        }
        // The output error is linear in the key and value errors to first order, which are
        // sqrt(mse_b) relative: err_b / sqrt(mse_b) is the same for every width, up to the
        // softmax's second-order terms at low widths and sampling noise (32 queries).
        double lo = 1e300, hi = 0;
        for (int b = 2; b <= 8; ++b) {
            const double r = err[b] / std::sqrt(hlwq::lloyd_max_mse(b));
            MESSAGE("d=" << d << " PQ" << b << " attention rel err " << err[b] << ", / sqrt(mse) " << r
                         << ", key NMSE / mse " << ratio[b]);
            lo = std::min(lo, r);
            hi = std::max(hi, r);
        }
        CHECK(hi / lo < 1.25);
    }
}

TEST_CASE("bytes: fp16 and HLWQ records, PQ3 at head_dim 256 is 5.2x smaller than fp16") {
    const kv_cache_config cfg{.n_kv_heads = 8, .head_dim = 256, .capacity = 1000};
    const kv_cache<fp16_policy> f16(cfg);
    const kv_cache<pq<3>> q3(cfg);
    CHECK(f16.record_bytes() == 512);
    CHECK(q3.record_bytes() == 2 + 256 * 3 / 8);  // 98
    CHECK(f16.bytes() == 2 * 8 * 1000 * 512);
    CHECK(q3.bytes() == 2 * 8 * 1000 * 98);
    CHECK(q3.bytes_per_token() == 2 * 8 * 98);
    CHECK(static_cast<double>(f16.bytes()) / static_cast<double>(q3.bytes()) >= 5.2);  // 512 / 98 = 5.22
    CHECK(kv_cache<pq<2>>(cfg).record_bytes() == 66);
    CHECK(kv_cache<pq<4>>(cfg).record_bytes() == 130);
    CHECK(kv_cache<bf16_policy>(cfg).bytes() == f16.bytes());
    // A ring buffer allocates its window.
    CHECK(kv_cache<pq<3>>({.n_kv_heads = 8, .head_dim = 256, .sliding_window = 100}).bytes() == 2 * 8 * 100 * 98);
}

TEST_CASE("fp16 cache: stores the rounded values and stays within fp16 rounding of fp32 attention") {
    const std::size_t n_kv = 2, nq = 4, d = 128, n_tokens = 64;
    kv_cache<fp16_policy> c({.n_kv_heads = n_kv, .head_dim = d, .capacity = n_tokens});
    const auto k = hlwq_test::gaussian(n_tokens * n_kv * d, 30), v = hlwq_test::gaussian(n_tokens * n_kv * d, 31);
    const auto q = hlwq_test::gaussian(nq * d, 32);
    c.append(k, v, n_tokens);
    std::vector<float> x(d);
    for (std::size_t t = 0; t < n_tokens; ++t)
        for (std::size_t h = 0; h < n_kv; ++h) {
            c.key(t, h, x);
            for (std::size_t i = 0; i < d; ++i)
                REQUIRE(x[i] == static_cast<float>(hlwq::half(k[(t * n_kv + h) * d + i])));
        }
    std::vector<float> out(nq * d);
    c.attention(q, nq, out);
    // fp16 rounding moves every element by at most u = 2^-11 relative. A score then moves by
    // at most δ = scale·u·Σ|q_i k_i|, each softmax weight by a factor within e^{±2δ} (so
    // Σ|Δp| <= e^{2δ} - 1), and out_i = Σ p_t v_ti by at most
    // (e^{2δ} - 1 + u)·max_t |v_ti|, plus float rounding (1e-5 of it).
    const double u = 1.0 / 2048, scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (std::size_t j = 0; j < nq; ++j) {
        const std::size_t h = j / (nq / n_kv);
        std::vector<float> kh, vh;
        double delta = 0;
        std::vector<double> vmax(d, 0.0);
        for (std::size_t t = 0; t < n_tokens; ++t) {
            double s = 0;
            for (std::size_t i = 0; i < d; ++i) {
                const float ki = k[(t * n_kv + h) * d + i], vi = v[(t * n_kv + h) * d + i];
                s += std::abs(q[j * d + i] * ki);
                vmax[i] = std::max(vmax[i], static_cast<double>(std::abs(vi)));
                kh.push_back(ki);
                vh.push_back(vi);
            }
            delta = std::max(delta, scale * u * s);
        }
        const auto ref = reference_attention(std::span(q).subspan(j * d, d), kh, vh, d, scale, std::nullopt);
        double worst = 0;
        for (std::size_t i = 0; i < d; ++i) {
            const double bound = (std::expm1(2 * delta) + u + 1e-5) * vmax[i];
            worst = std::max(worst, std::abs(out[j * d + i] - ref[i]) / bound);
        }
        CHECK(worst <= 1.0);
    }
}

TEST_CASE("bad input is an std::invalid_argument or std::length_error, and leaves the cache as it was") {
    using C = kv_cache<pq<3>>;
    CHECK_THROWS_AS(C({.n_kv_heads = 0, .head_dim = 64, .capacity = 8}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = 2, .head_dim = 96, .capacity = 8}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = 2, .head_dim = 2048, .capacity = 8}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = 2, .head_dim = 64, .capacity = 0}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = 2, .head_dim = 64, .capacity = 8, .sliding_window = 0}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = 2, .head_dim = 64, .capacity = 8, .sliding_window = 9}), std::invalid_argument);
    CHECK_THROWS_AS(C({.n_kv_heads = std::size_t{1} << 40, .head_dim = 64, .capacity = std::size_t{1} << 40}),
                    std::invalid_argument);
    CHECK_THROWS_AS(kv_cache<fp16_policy>({.n_kv_heads = 1, .head_dim = 0, .capacity = 8}), std::invalid_argument);
    CHECK_NOTHROW(kv_cache<fp16_policy>({.n_kv_heads = 1, .head_dim = 96, .capacity = 8}));

    const std::size_t d = 64, n_kv = 2;
    C c({.n_kv_heads = n_kv, .head_dim = d, .capacity = 4});
    std::vector<float> q(4 * d, 0.5f), out(4 * d);
    CHECK_THROWS_AS(c.attention(q, 4, out), std::invalid_argument);  // empty
    auto kv = hlwq_test::gaussian(3 * n_kv * d, 40);
    CHECK_THROWS_AS(c.append(kv, kv, 2), std::invalid_argument);                              // 3 tokens given
    CHECK_THROWS_AS(c.append(kv, std::span(kv).first(2 * n_kv * d), 3), std::invalid_argument);  // v too short
    auto bad = kv;
    bad[n_kv * d + d + 5] = std::numeric_limits<float>::quiet_NaN();  // value of token 1, head 1
    CHECK_THROWS_WITH_AS(c.append(kv, bad, 3), doctest::Contains("value of token 1, kv head 1"), std::invalid_argument);
    bad[n_kv * d + d + 5] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(c.append(bad, kv, 3), std::invalid_argument);
    bad[n_kv * d + d + 5] = 1e5f;  // finite, but the norm does not fit the fp16 norm
    CHECK_THROWS_WITH_AS(c.append(kv, bad, 3), doctest::Contains("fp16"), std::invalid_argument);
    CHECK(c.empty());  // nothing of a rejected append was stored
    kv_cache<fp16_policy> f({.n_kv_heads = n_kv, .head_dim = d, .capacity = 4});
    CHECK_THROWS_WITH_AS(f.append(kv, bad, 3), doctest::Contains("fp16 range"), std::invalid_argument);

    c.append(kv, kv, 3);
    CHECK_THROWS_AS(c.append(kv, kv, 3), std::length_error);  // 3 + 3 > 4
    CHECK(c.next_position() == 3);
    CHECK_NOTHROW(c.append(std::span(kv).first(n_kv * d), std::span(kv).first(n_kv * d), 1));
    CHECK_THROWS_AS(c.append(std::span(kv).first(n_kv * d), std::span(kv).first(n_kv * d), 1), std::length_error);

    CHECK_NOTHROW(c.attention(q, 4, out));
    CHECK_THROWS_AS(c.attention(q, 3, std::span(out).first(3 * d)), std::invalid_argument);  // 3 % 2
    CHECK_THROWS_AS(c.attention(q, 0, out), std::invalid_argument);
    CHECK_THROWS_AS(c.attention(q, 2, out), std::invalid_argument);                // q holds 4 heads
    CHECK_THROWS_AS(c.attention(q, 4, std::span(out).first(d)), std::invalid_argument);
    CHECK_THROWS_AS(c.attention(q, 4, out, {.scale = 0.0f}), std::invalid_argument);
    CHECK_THROWS_AS(c.attention(q, 4, out, {.scale = std::numeric_limits<float>::quiet_NaN()}), std::invalid_argument);
    CHECK_THROWS_AS(c.attention(q, 4, out, {.softcap = -1.0f}), std::invalid_argument);
    CHECK_THROWS_AS(c.attention(q, 4, out, {.softcap = std::numeric_limits<float>::infinity()}),
                    std::invalid_argument);
    std::vector<float> q5(5 * 4 * d), out5(q5.size());
    CHECK_THROWS_AS(c.attention_chunk(q5, 4, 5, out5), std::invalid_argument);  // only 4 tokens
    CHECK_THROWS_AS(c.attention_chunk(std::span(q5).first(2 * 4 * d), 4, 2, std::span(out5).first(2 * 4 * d), {}, 3),
                    std::invalid_argument);  // positions 3, 4: past the last token
    CHECK_THROWS_AS(c.attention_chunk(std::span(q5).first(0), 4, 0, std::span(out5).first(0)), std::invalid_argument);

    std::vector<float> x(d);
    CHECK_THROWS_AS(c.key(4, 0, x), std::invalid_argument);
    CHECK_THROWS_AS(c.key(0, 2, x), std::invalid_argument);
    CHECK_THROWS_AS(c.value(0, 0, std::span(x).first(d - 1)), std::invalid_argument);

    c.clear();
    CHECK(c.empty());
    CHECK(c.size() == 0);
    CHECK_NOTHROW(c.append(kv, kv, 3));
}

TEST_CASE_TEMPLATE("truncate: dropping the last tokens equals never having appended them", P, fp16_policy, pq<3>) {
    const std::size_t n_kv = 2, d = 32, nq = 4;
    const auto k = hlwq_test::gaussian(40 * n_kv * d, 11);
    const auto v = hlwq_test::gaussian(40 * n_kv * d, 12);
    const auto tok = [&](const std::vector<float>& x, std::size_t t0, std::size_t n) {
        return std::span<const float>(x.data() + t0 * n_kv * d, n * n_kv * d);
    };
    for (std::optional<std::size_t> window : {std::optional<std::size_t>{}, std::optional<std::size_t>{6}}) {
        CAPTURE(window.value_or(0));
        // A window of 6 in a ring of 10: truncating from 12 to 9 keeps positions 2..8 (a query at 9
        // needs 4..8); to 5 it would need 0, overwritten by 10 and 11.
        kv_cache<P> c({.n_kv_heads = n_kv, .head_dim = d, .capacity = window ? std::size_t{10} : std::size_t{40}, .sliding_window = window});
        kv_cache<P> ref({.n_kv_heads = n_kv, .head_dim = d, .capacity = window ? std::size_t{10} : std::size_t{40}, .sliding_window = window});
        c.append(tok(k, 0, 12), tok(v, 0, 12), 12);
        CHECK_THROWS_AS(c.truncate(13), std::invalid_argument);
        if (window) {
            CHECK_THROWS_AS(c.truncate(5), std::invalid_argument);
            CHECK(c.next_position() == 12);  // unchanged by the refusal
        }
        c.truncate(9);
        CHECK(c.next_position() == 9);
        CHECK(c.first_position() == (window ? 2u : 0u));
        // Different tokens at 9.. than the first time.
        c.append(tok(k, 20, 8), tok(v, 20, 8), 8);
        ref.append(tok(k, 0, 9), tok(v, 0, 9), 9);
        ref.append(tok(k, 20, 8), tok(v, 20, 8), 8);
        CHECK(c.next_position() == 17);
        CHECK(c.first_position() == ref.first_position());
        std::vector<float> a(d), b(d), oc(nq * d), orf(nq * d);
        for (std::size_t p = ref.first_position(); p < 17; ++p) {
            c.key(p, 1, a);
            ref.key(p, 1, b);
            CHECK(a == b);
            c.value(p, 0, a);
            ref.value(p, 0, b);
            CHECK(a == b);
        }
        const auto q = hlwq_test::gaussian(nq * d, 13);
        c.attention(q, nq, oc);
        ref.attention(q, nq, orf);
        CHECK(oc == orf);
        c.truncate(0);
        CHECK(c.empty());
        CHECK(c.first_position() == 0);
    }
}
