// SPDX-License-Identifier: MIT
/// @file kv_cache.hpp
/// @brief A KV cache for decoder attention that stores keys and values as fp16/bf16 (the
/// baseline) or as HLWQ codes (`hlwq_policy<Bits>`), and runs attention on it in place.
///
/// ## What is stored
/// For every token and KV head, one key and one value vector of `head_dim` = d floats, each as
/// one fixed-size record of the storage policy:
/// - `fp16_policy` / `bf16_policy`: the d values as `half` / `bfloat16`: 2d bytes.
/// - `hlwq_policy<Bits>`: norm = ‖v‖₂ as fp16 (2 bytes), then the codes of y = H v / norm, H
///   the unnormalized d × d Sylvester Hadamard matrix, under the Lloyd-Max codebook of `Bits`
///   bits, packed with `packer<Bits>`: 2 + d·Bits/8 bytes, exactly a weight block of d in
///   quantize.hpp. It decodes to v̂ = H c · norm / d (c the centroids of the codes).
///   PQ3 at d = 256 is 98 bytes against fp16's 512 (5.2× smaller).
///
/// Keys must be cached **after RoPE**: the cache stores the vectors it is given and knows
/// nothing of positional encodings.
///
/// ## Attention
/// For query head j, kv head h = j / (n_q_heads / n_kv_heads) (grouped-query attention), and
/// the visible tokens t:
///
///     s_t = scale · q·k̂_t;  s_t = softcap · tanh(s_t / softcap) if a softcap is given;
///     out = Σ_t softmax(s)_t · v̂_t
///
/// HLWQ records are read in place, never dequantized: H is symmetric, so
/// q·k̂_t = (H q)·c_t · norm_t / d. The query is rotated once; each score is then a table
/// lookup on the key's codes and a dot product. Values are summed in the rotated domain,
/// Σ_t p_t (norm_t / d) c_t, and rotated back by one H per head and query. A step reads
/// 2 · n_kv_heads · record bytes per visible token, which is why a compressed cache is faster
/// than fp16 once the cache no longer fits in the caches of the CPU.
///
/// ## Positions, capacity, sliding windows
/// Tokens get consecutive absolute positions 0, 1, 2, … in the order they are appended. Each
/// head has `capacity` slots and position p lives in slot p % capacity.
/// - Without a sliding window at most `capacity` tokens can be appended; one more is a
///   std::length_error (clear() starts over).
/// - With a sliding window w, a query at position p sees positions p-w+1 … p, and the slots
///   form a ring buffer keeping the last `capacity` tokens (capacity defaults to w).
///   Decoding one token at a time needs capacity ≥ w. Attention for a chunk of n queries
///   appended together (prefill) needs capacity ≥ w + n - 1, since its first query still
///   sees the w - 1 tokens before it; with less, the call throws instead of reading
///   overwritten slots.
#pragma once

#include "codebook.hpp"
#include "detail/parallel.hpp"
#include "float16.hpp"
#include "packer.hpp"
#include "quantize.hpp"
#include "rotation.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace hlwq {

/// Shape of a kv_cache.
struct kv_cache_config {
    /// Key/value heads (a query head count that is a multiple of it gives GQA).
    std::size_t n_kv_heads = 0;
    /// Elements per head vector. HLWQ policies need a power of two in 16..1024 (models use
    /// 64..512); fp16/bf16 take any size.
    std::size_t head_dim = 0;
    /// Token slots per head. Without a sliding window, the most tokens the cache can hold;
    /// with one, the size of the ring buffer (0 = the window; see kv_cache.hpp for chunks).
    std::size_t capacity = 0;
    /// Sliding-window length: a query at position p sees positions p-w+1 … p. Empty = global
    /// attention.
    std::optional<std::size_t> sliding_window = std::nullopt;
};

/// What the model passes to kv_cache::attention().
struct attention_params {
    /// Multiplies q·k. Empty = 1/sqrt(head_dim); models that fold the scale elsewhere pass 1.
    std::optional<float> scale = std::nullopt;
    /// Logit softcapping (Gemma 2): scores become softcap · tanh(scores / softcap). Empty = none.
    std::optional<float> softcap = std::nullopt;
    /// Worker threads over (query, kv head) pairs; 0 = one per hardware thread. Short contexts
    /// stay on the calling thread whatever this says.
    unsigned threads = 0;
};

/// What kv_cache needs of a storage policy (fp16_policy, bf16_policy, hlwq_policy):
/// - `name()`: short name ("fp16", "PQ3");
/// - `check_head_dim(d)`: throws std::invalid_argument for a head_dim it cannot store;
/// - `record_bytes(d)`: bytes of one stored vector;
/// - `problem(v, d)`: why v cannot be stored (NaN, out of range) or nothing;
/// - `store(v, d, record)`: writes the record of v;
/// - `decode(record, d, buf)` returns a float f and fills d floats in buf, and
///   `to_domain(x, d)` applies a symmetric linear map M in place, such that the stored
///   vector is v̂ = M (f · buf). Hence q·v̂ = (M q)·buf · f: attention maps each query with M
///   once, takes dot products with buf, sums values as f · buf, and maps the sum with M.
///   (fp16: M = identity, f = 1; HLWQ: M = H unnormalized, buf = centroids, f = norm / d.)
template <class P>
concept kv_policy = requires(const float* v, float* x, std::uint8_t* rec, const std::uint8_t* crec,
                             std::size_t d) {
    { P::name() } -> std::convertible_to<std::string_view>;
    P::check_head_dim(d);
    { P::record_bytes(d) } -> std::same_as<std::size_t>;
    { P::problem(v, d) } -> std::same_as<std::optional<std::string>>;
    P::store(v, d, rec);
    { P::decode(crec, d, x) } -> std::same_as<float>;
    P::to_domain(x, d);
};

namespace detail {

/// Σ a[i]·b[i] for i < n, with two register accumulators.
inline float kv_dot(const float* a, const float* b, std::size_t n) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    batch s0(0.0f), s1(0.0f);
    std::size_t i = 0;
    for (; i + 2 * w <= n; i += 2 * w) {
        s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
        s1 = xsimd::fma(batch::load_unaligned(a + i + w), batch::load_unaligned(b + i + w), s1);
    }
    for (; i + w <= n; i += w) s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
    float s = xsimd::hadd(s0 + s1);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

/// Tokens that attention decodes and scores together: four independent dot products (each
/// on two accumulators) keep the FMA units busy where one would wait on its own latency, and
/// a value block updates the accumulator once for four tokens.
inline constexpr std::size_t kv_block = 4;

/// out[j] = Σ a[i]·b[j·n + i] for i < n, j < kv_block (b holds kv_block vectors of n).
inline void kv_dot4(const float* a, const float* b, std::size_t n, float* out) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    static_assert(kv_block == 4);
    const float *b0 = b, *b1 = b + n, *b2 = b + 2 * n, *b3 = b + 3 * n;
    batch s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f), t0(0.0f), t1(0.0f), t2(0.0f), t3(0.0f);
    std::size_t i = 0;
    for (; i + 2 * w <= n; i += 2 * w) {
        const batch x = batch::load_unaligned(a + i), y = batch::load_unaligned(a + i + w);
        s0 = xsimd::fma(x, batch::load_unaligned(b0 + i), s0);
        s1 = xsimd::fma(x, batch::load_unaligned(b1 + i), s1);
        s2 = xsimd::fma(x, batch::load_unaligned(b2 + i), s2);
        s3 = xsimd::fma(x, batch::load_unaligned(b3 + i), s3);
        t0 = xsimd::fma(y, batch::load_unaligned(b0 + i + w), t0);
        t1 = xsimd::fma(y, batch::load_unaligned(b1 + i + w), t1);
        t2 = xsimd::fma(y, batch::load_unaligned(b2 + i + w), t2);
        t3 = xsimd::fma(y, batch::load_unaligned(b3 + i + w), t3);
    }
    for (; i + w <= n; i += w) {
        const batch x = batch::load_unaligned(a + i);
        s0 = xsimd::fma(x, batch::load_unaligned(b0 + i), s0);
        s1 = xsimd::fma(x, batch::load_unaligned(b1 + i), s1);
        s2 = xsimd::fma(x, batch::load_unaligned(b2 + i), s2);
        s3 = xsimd::fma(x, batch::load_unaligned(b3 + i), s3);
    }
    out[0] = xsimd::hadd(s0 + t0);
    out[1] = xsimd::hadd(s1 + t1);
    out[2] = xsimd::hadd(s2 + t2);
    out[3] = xsimd::hadd(s3 + t3);
    for (; i < n; ++i)
        for (std::size_t j = 0; j < kv_block; ++j) out[j] += a[i] * b[j * n + i];
}

/// acc[i] += Σ_j f[j]·x[j·n + i] for i < n, j < kv_block.
inline void kv_axpy4(float* acc, const float* f, const float* x, std::size_t n) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    const batch f0(f[0]), f1(f[1]), f2(f[2]), f3(f[3]);
    const float *x0 = x, *x1 = x + n, *x2 = x + 2 * n, *x3 = x + 3 * n;
    std::size_t i = 0;
    for (; i + w <= n; i += w) {
        batch v = xsimd::fma(f0, batch::load_unaligned(x0 + i), batch::load_unaligned(acc + i));
        v = xsimd::fma(f1, batch::load_unaligned(x1 + i), v);
        v = xsimd::fma(f2, batch::load_unaligned(x2 + i), v);
        xsimd::fma(f3, batch::load_unaligned(x3 + i), v).store_unaligned(acc + i);
    }
    for (; i < n; ++i) acc[i] += f[0] * x0[i] + f[1] * x1[i] + f[2] * x2[i] + f[3] * x3[i];
}

/// acc[i] += f · x[i] for i < n.
inline void kv_axpy(float* acc, float f, const float* x, std::size_t n) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    const batch fb(f);
    std::size_t i = 0;
    for (; i + w <= n; i += w)
        xsimd::fma(fb, batch::load_unaligned(x + i), batch::load_unaligned(acc + i)).store_unaligned(acc + i);
    for (; i < n; ++i) acc[i] += f * x[i];
}

/// e^x for x <= 0 (softmax arguments), to about 1 ulp: Cephes' expf (x = n ln2 + r,
/// |r| <= ln2/2, a degree-7 polynomial for e^r, 2^n built in the exponent bits). Written
/// here rather than taken from xsimd 8, whose exp inlines AVX-512 intrinsics that GCC 12.2
/// falsely reports as uninitialized (bug 105593). Below -87 it returns about 1e-38 rather
/// than a subnormal or 0, which no softmax sum can tell apart.
inline xsimd::batch<float> kv_exp(xsimd::batch<float> x) noexcept {
    using batch = xsimd::batch<float>;
    using ibatch = xsimd::batch<std::int32_t>;
    x = xsimd::select(x < batch(-87.0f), batch(-87.0f), x);  // (xsimd::max: same GCC bug)
    constexpr float round = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const batch t = xsimd::fma(x, batch(1.44269504088896341f), batch(round));
    const batch n = t - batch(round);
    const batch r = xsimd::fnma(n, batch(-2.12194440e-4f), xsimd::fnma(n, batch(0.693359375f), x));
    batch p(1.9875691500e-4f);
    p = xsimd::fma(p, r, batch(1.3981999507e-3f));
    p = xsimd::fma(p, r, batch(8.3334519073e-3f));
    p = xsimd::fma(p, r, batch(4.1665795894e-2f));
    p = xsimd::fma(p, r, batch(1.6666665459e-1f));
    p = xsimd::fma(p, r, batch(5.0000001201e-1f));
    p = xsimd::fma(p * r, r, r + batch(1.0f));
    // 2^n: n + 127 in the exponent field (n >= -126 after the clamp). An integer multiply
    // rather than a shift, whose AVX-512 form trips the same GCC bug.
    const ibatch ni = xsimd::bitwise_cast<ibatch>(t) - ibatch(std::bit_cast<std::int32_t>(round));
    const batch two_n = xsimd::bitwise_cast<batch>((ni + ibatch(127)) * ibatch(1 << 23));
    return p * two_n;
}

/// tanh(y) for the softcap: Cephes' tanhf, an odd polynomial below |y| = 0.625 (where
/// 1 - 2/(e^{2|y|} + 1) would lose relative precision), that expression above.
inline xsimd::batch<float> kv_tanh(xsimd::batch<float> y) noexcept {
    using batch = xsimd::batch<float>;
    const batch a = xsimd::select(y < batch(0.0f), -y, y);
    const batch z = y * y;
    batch p(-5.70498872745e-3f);
    p = xsimd::fma(p, z, batch(2.06390887954e-2f));
    p = xsimd::fma(p, z, batch(-5.37397155531e-2f));
    p = xsimd::fma(p, z, batch(1.33314422036e-1f));
    p = xsimd::fma(p, z, batch(-3.33332819422e-1f));
    const batch small = xsimd::fma(p * z, y, y);
    // e^{-2a} (argument <= 0, where kv_exp is accurate): tanh a = (1 - e) / (1 + e).
    const batch e = kv_exp(batch(-2.0f) * a);
    const batch big = (batch(1.0f) - e) / (batch(1.0f) + e);
    return xsimd::select(a < batch(0.625f), small, xsimd::select(y < batch(0.0f), -big, big));
}

/// Softcaps the n scores if asked, replaces them by exp(s - max) and returns their sum
/// (the softmax is s / sum; dividing once per output saves n divisions).
inline float kv_softmax(float* s, std::size_t n, std::optional<float> softcap) noexcept {
    using batch = xsimd::batch<float>;
    constexpr std::size_t w = batch::size;
    const std::size_t full = n - n % w;
    if (softcap) {
        const float c = *softcap;
        const batch cb(c);
        for (std::size_t i = 0; i < full; i += w) (cb * kv_tanh(batch::load_unaligned(s + i) / cb)).store_unaligned(s + i);
        for (std::size_t i = full; i < n; ++i) s[i] = c * std::tanh(s[i] / c);
    }
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t i = 0; i < n; ++i) m = std::max(m, s[i]);
    const batch mb(m);
    batch sum(0.0f);
    for (std::size_t i = 0; i < full; i += w) {
        const batch e = kv_exp(batch::load_unaligned(s + i) - mb);
        e.store_unaligned(s + i);
        sum += e;
    }
    float total = xsimd::hadd(sum);
    for (std::size_t i = full; i < n; ++i) total += (s[i] = std::exp(s[i] - m));
    return total;
}

/// Why v[0..d) cannot be stored as T (a value that is NaN, infinite or beyond T's range), or
/// nothing.
template <class T>
std::optional<std::string> dense_problem(const float* v, std::size_t d) {
    for (std::size_t i = 0; i < d; ++i) {
        if (!std::isfinite(v[i]))
            return "element " + std::to_string(i) + " is " + (std::isnan(v[i]) ? "NaN" : "infinite");
        if constexpr (std::is_same_v<T, half>)
            if (!std::isfinite(static_cast<float>(half(v[i]))))
                return "element " + std::to_string(i) + " = " + std::to_string(v[i]) +
                       " is beyond the fp16 range";
    }
    return std::nullopt;
}

}  // namespace detail

/// Storage policy keeping keys and values as 16-bit floats, `half` (fp16_policy) or
/// `bfloat16` (bf16_policy): the uncompressed baseline. Any head_dim.
template <class T>
    requires std::same_as<T, half> || std::same_as<T, bfloat16>
struct dense_policy {
    /// "fp16" or "bf16".
    static constexpr const char* name() noexcept { return std::is_same_v<T, half> ? "fp16" : "bf16"; }
    /// Throws std::invalid_argument for head_dim 0.
    static void check_head_dim(std::size_t d) {
        if (d == 0) throw std::invalid_argument("hlwq::kv_cache: head_dim must be positive");
    }
    /// 2 bytes per element.
    static constexpr std::size_t record_bytes(std::size_t d) noexcept { return d * sizeof(T); }
    /// Why v cannot be stored: a NaN or infinite element, or (fp16) one beyond ±65504 after
    /// rounding.
    static std::optional<std::string> problem(const float* v, std::size_t d) {
        return detail::dense_problem<T>(v, d);
    }
    /// Rounds v to T (nearest even), little-endian bits.
    static void store(const float* v, std::size_t d, std::uint8_t* rec) noexcept {
        std::size_t i = 0;
#if defined(__F16C__)
        if constexpr (std::is_same_v<T, half>)  // vcvtps2ph rounds like half(float), see float16.hpp
            for (; i + 8 <= d; i += 8)
                _mm_storeu_si128(reinterpret_cast<__m128i*>(rec + 2 * i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < d; ++i) {
            const std::uint16_t b = T(v[i]).bits;
            std::memcpy(rec + 2 * i, &b, 2);
        }
    }
    /// buf = the stored values as floats (exact); the factor is 1.
    static float decode(const std::uint8_t* rec, std::size_t d, float* buf) noexcept {
        std::size_t i = 0;
#if defined(__F16C__)
        if constexpr (std::is_same_v<T, half>)
            for (; i + 8 <= d; i += 8)
                _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 2 * i))));
#endif
        for (; i < d; ++i) {
            std::uint16_t b;
            std::memcpy(&b, rec + 2 * i, 2);
            buf[i] = T::to_float(b);
        }
        return 1.0f;
    }
    /// The identity: fp16 attention runs on the vectors themselves.
    static void to_domain(float*, std::size_t) noexcept {}
};

/// fp16 keys and values (2 bytes per element).
using fp16_policy = dense_policy<half>;
/// bf16 keys and values (2 bytes per element).
using bf16_policy = dense_policy<bfloat16>;

/// Storage policy keeping keys and values as fp32 (4 bytes per element): exact, for reference
/// runs and parity tests against fp32 frameworks. Any head_dim.
struct f32_policy {
    /// "f32".
    static constexpr const char* name() noexcept { return "f32"; }
    /// Throws std::invalid_argument for head_dim 0.
    static void check_head_dim(std::size_t d) {
        if (d == 0) throw std::invalid_argument("hlwq::kv_cache: head_dim must be positive");
    }
    /// 4 bytes per element.
    static constexpr std::size_t record_bytes(std::size_t d) noexcept { return d * sizeof(float); }
    /// Why v cannot be stored: a NaN or infinite element.
    static std::optional<std::string> problem(const float* v, std::size_t d) {
        return detail::dense_problem<float>(v, d);
    }
    /// Copies v.
    static void store(const float* v, std::size_t d, std::uint8_t* rec) noexcept {
        std::memcpy(rec, v, d * sizeof(float));
    }
    /// buf = the stored values; the factor is 1.
    static float decode(const std::uint8_t* rec, std::size_t d, float* buf) noexcept {
        std::memcpy(buf, rec, d * sizeof(float));
        return 1.0f;
    }
    /// The identity.
    static void to_domain(float*, std::size_t) noexcept {}
};

/// Storage policy keeping each key and value vector as HLWQ: fp16 norm + `Bits`-bit Lloyd-Max
/// codes of the rotated vector (see kv_cache.hpp), 2 + head_dim·Bits/8 bytes. head_dim must
/// be a power of two in 16..1024. `Backend` runs the WHT, encoding and packing.
template <int Bits, class Backend = default_backend>
    requires valid_bits<Bits>
struct hlwq_policy {
    /// The codebook.
    using codebook_type = lloyd_max<Bits>;
    /// Code width.
    static constexpr int bits = Bits;
    /// "PQ1" … "PQ8".
    static constexpr const char* name() noexcept {
        constexpr const char* names[] = {"", "PQ1", "PQ2", "PQ3", "PQ4", "PQ5", "PQ6", "PQ7", "PQ8"};
        return names[Bits];
    }
    /// Throws std::invalid_argument unless d is a power of two in 16..1024.
    static void check_head_dim(std::size_t d) { check_rotation_size(d, "kv_cache head_dim"); }
    /// 2 bytes of norm and d·Bits/8 bytes of codes.
    static constexpr std::size_t record_bytes(std::size_t d) noexcept {
        return sizeof(half) + packer<Bits>::packed_bytes(d);
    }
    /// Why v cannot be stored: a NaN or infinite element, or a norm beyond the fp16 range.
    static std::optional<std::string> problem(const float* v, std::size_t d) {
        if (auto p = detail::dense_problem<float>(v, d)) return p;
        const double n = norm(v, d);
        if (!std::isfinite(static_cast<float>(half(static_cast<float>(n)))))
            return "L2 norm " + std::to_string(n) + " is beyond the fp16 range of the stored norm";
        return std::nullopt;
    }
    /// Writes norm (fp16 bits, little endian) and the packed codes of H v / norm; as
    /// quantize() does for one block of d (an all-zero vector stores norm 0).
    static void store(const float* v, std::size_t d, std::uint8_t* rec) {
        const double n = norm(v, d);
        const std::uint16_t n16 = half(static_cast<float>(n)).bits;
        std::memcpy(rec, &n16, sizeof n16);
        alignas(64) float y[max_rotation_size];
        std::uint8_t codes[max_rotation_size];
        std::copy_n(v, d, y);
        detail::encode_block<Bits, Backend>(y, d, n, codebook_type::boundaries.data(), codes, rec + sizeof n16);
    }
    /// buf = the centroids of the codes; the factor is norm / d.
    static float decode(const std::uint8_t* rec, std::size_t d, float* buf) {
        std::uint16_t n16;
        std::memcpy(&n16, rec, sizeof n16);
        kernels<Backend>::template decode_packed<Bits>(rec + sizeof n16, d, codebook_type::centroids.data(), buf);
        return half::to_float(n16) / static_cast<float>(d);  // exact: d is a power of two
    }
    /// x = H x, the unnormalized WHT (symmetric; H H = d I, the 1/d is in decode's factor).
    static void to_domain(float* x, std::size_t d) noexcept { kernels<Backend>::fwht(x, d); }

private:
    static double norm(const float* v, std::size_t d) noexcept {
        double s = 0;
        for (std::size_t i = 0; i < d; ++i) s += static_cast<double>(v[i]) * v[i];
        return std::sqrt(s);
    }
};

/// A per-layer KV cache whose vectors are stored by `Policy` (fp16_policy, bf16_policy,
/// hlwq_policy<Bits>), with decode and chunked (prefill) attention that read it in place.
/// See kv_cache.hpp for the storage, the attention and the position rules.
///
/// Not synchronized: appends and attention calls on one cache must not overlap; attention
/// calls (const) may run concurrently with each other.
template <kv_policy Policy>
class kv_cache {
public:
    /// The storage policy.
    using policy = Policy;

    /// An empty cache of the given shape, all slots allocated.
    /// @throws std::invalid_argument for 0 kv heads, a head_dim the policy cannot store, a
    ///   window of 0, no capacity without a window, a capacity below the window, or a size
    ///   that overflows.
    explicit kv_cache(const kv_cache_config& config) : cfg_(config) {
        if (cfg_.n_kv_heads == 0) throw std::invalid_argument("hlwq::kv_cache: n_kv_heads must be positive");
        Policy::check_head_dim(cfg_.head_dim);
        if (cfg_.sliding_window) {
            if (*cfg_.sliding_window == 0)
                throw std::invalid_argument("hlwq::kv_cache: sliding_window must be positive");
            if (cfg_.capacity == 0) cfg_.capacity = *cfg_.sliding_window;
            if (cfg_.capacity < *cfg_.sliding_window)
                throw std::invalid_argument("hlwq::kv_cache: capacity " + std::to_string(cfg_.capacity) +
                                            " is below the sliding window " +
                                            std::to_string(*cfg_.sliding_window));
        } else if (cfg_.capacity == 0) {
            throw std::invalid_argument("hlwq::kv_cache: capacity must be positive without a sliding window");
        }
        rec_ = Policy::record_bytes(cfg_.head_dim);
        const std::size_t max = std::numeric_limits<std::size_t>::max();
        if (cfg_.capacity > max / cfg_.n_kv_heads || cfg_.capacity * cfg_.n_kv_heads > max / 2 / rec_)
            throw std::invalid_argument("hlwq::kv_cache: " + std::to_string(cfg_.capacity) + " tokens x " +
                                        std::to_string(cfg_.n_kv_heads) + " heads overflow the size");
        keys_.resize(cfg_.n_kv_heads * cfg_.capacity * rec_);
        values_.resize(keys_.size());
    }

    /// The shape, with the capacity resolved (the window when 0 was given).
    const kv_cache_config& config() const noexcept { return cfg_; }
    /// Key/value heads.
    std::size_t n_kv_heads() const noexcept { return cfg_.n_kv_heads; }
    /// Elements per head vector.
    std::size_t head_dim() const noexcept { return cfg_.head_dim; }
    /// Token slots per head.
    std::size_t capacity() const noexcept { return cfg_.capacity; }

    /// Tokens held now: min(tokens appended, capacity), less what truncate() made unreachable.
    std::size_t size() const noexcept { return seen_ - first_position(); }
    /// True before the first append.
    bool empty() const noexcept { return seen_ == 0; }
    /// Position the next appended token gets (= tokens appended so far).
    std::size_t next_position() const noexcept { return seen_; }
    /// Oldest position still held (0 until a ring buffer wraps).
    std::size_t first_position() const noexcept {
        return std::max(floor_, seen_ > cfg_.capacity ? seen_ - cfg_.capacity : std::size_t{0});
    }

    /// Bytes of one stored vector (key or value of one head).
    std::size_t record_bytes() const noexcept { return rec_; }
    /// Bytes stored per token: keys and values of all heads.
    std::size_t bytes_per_token() const noexcept { return 2 * cfg_.n_kv_heads * rec_; }
    /// Bytes of the allocated keys and values (capacity · bytes_per_token(); the object's few
    /// other bytes aside).
    std::size_t bytes() const noexcept { return keys_.size() + values_.size(); }

    /// Forgets all tokens; positions start at 0 again. Keeps the memory.
    void clear() noexcept { seen_ = floor_ = 0; }

    /// Forgets the tokens at positions n and later: the next append gets position n (e.g. to
    /// re-use a shared prompt prefix). n = 0 is clear(). With a sliding window the ring must
    /// still hold what a query at position n sees (positions n-w+1 … n-1): overwritten slots
    /// cannot come back, so a ring that wrapped past them cannot be truncated that far.
    /// @throws std::invalid_argument if n > next_position() or, with a window, a position a
    ///   query at n needs is no longer held; the cache is then unchanged.
    void truncate(std::size_t n) {
        if (n > seen_)
            throw std::invalid_argument("hlwq::kv_cache::truncate: position " + std::to_string(n) +
                                        " is past the " + std::to_string(seen_) + " tokens appended");
        if (n == 0) {
            clear();
            return;
        }
        const std::size_t first = first_position();
        if (lowest_visible(n) < first)
            throw std::invalid_argument("hlwq::kv_cache::truncate: a query at position " + std::to_string(n) +
                                        " needs position " + std::to_string(lowest_visible(n)) +
                                        ", already overwritten in the ring buffer (oldest held: " +
                                        std::to_string(first) + ")");
        floor_ = first;
        seen_ = n;
    }

    /// Appends n_tokens tokens: k and v hold [n_tokens][n_kv_heads][head_dim] floats, keys
    /// after RoPE. Either all of them are stored or, on an exception, none.
    /// @throws std::invalid_argument on a size mismatch or a vector the policy cannot store
    ///   (naming it); std::length_error if they do not fit (no sliding window).
    void append(std::span<const float> k, std::span<const float> v, std::size_t n_tokens) {
        const std::size_t d = cfg_.head_dim, nh = cfg_.n_kv_heads, per_token = nh * d;
        if (n_tokens > std::numeric_limits<std::size_t>::max() / per_token || k.size() != n_tokens * per_token ||
            v.size() != k.size())
            throw std::invalid_argument("hlwq::kv_cache::append: " + std::to_string(n_tokens) + " tokens of " +
                                        std::to_string(nh) + " heads x " + std::to_string(d) +
                                        " need that many floats each for keys and values, got " +
                                        std::to_string(k.size()) + " and " + std::to_string(v.size()));
        if (!cfg_.sliding_window && n_tokens > cfg_.capacity - seen_)
            throw std::length_error("hlwq::kv_cache::append: " + std::to_string(n_tokens) +
                                    " more tokens do not fit: " + std::to_string(seen_) + " of " +
                                    std::to_string(cfg_.capacity) + " slots are used");
        for (std::size_t t = 0; t < n_tokens; ++t)
            for (std::size_t h = 0; h < nh; ++h)
                for (int which = 0; which < 2; ++which) {
                    const float* src = (which ? v : k).data() + (t * nh + h) * d;
                    if (auto p = Policy::problem(src, d))
                        throw std::invalid_argument("hlwq::kv_cache::append: " +
                                                    std::string(which ? "value" : "key") + " of token " +
                                                    std::to_string(t) + ", kv head " + std::to_string(h) +
                                                    ": " + *p);
                }
        // In a ring shorter than the chunk only the last `capacity` tokens survive.
        for (std::size_t t = n_tokens - std::min(n_tokens, cfg_.capacity); t < n_tokens; ++t) {
            const std::size_t slot = (seen_ + t) % cfg_.capacity;
            for (std::size_t h = 0; h < nh; ++h) {
                Policy::store(k.data() + (t * nh + h) * d, d, record(keys_, h, slot));
                Policy::store(v.data() + (t * nh + h) * d, d, record(values_, h, slot));
            }
        }
        seen_ += n_tokens;
    }

    /// Decode attention for one query token, the last one appended (its position is
    /// next_position() - 1): q and out are [n_q_heads][head_dim].
    /// @throws std::invalid_argument for an empty cache, n_q_heads not a positive multiple
    ///   of n_kv_heads, span sizes that do not match, or a non-positive/non-finite scale or
    ///   softcap.
    void attention(std::span<const float> q, std::size_t n_q_heads, std::span<float> out,
                   const attention_params& params = {}) const {
        attention_chunk(q, n_q_heads, 1, out, params);
    }

    /// Attention for n_queries consecutive query tokens at positions first, first + 1, …
    /// (default: the last n_queries appended, i.e. a prefill chunk that
    /// was just appended), with causal masking: query i sees the held tokens at positions
    /// ≤ its own, and within the sliding window if there is one. q and out are
    /// [n_queries][n_q_heads][head_dim]. Each query is computed exactly as attention()
    /// computes it when that token is the last one appended.
    /// @throws std::invalid_argument as attention(), for queries past the last token
    ///   appended, or when a query needs a token the ring buffer has already overwritten.
    void attention_chunk(std::span<const float> q, std::size_t n_q_heads, std::size_t n_queries,
                         std::span<float> out, const attention_params& params = {},
                         std::optional<std::size_t> first = std::nullopt) const {
        const std::size_t d = cfg_.head_dim, nh = cfg_.n_kv_heads;
        if (n_q_heads == 0 || n_q_heads % nh != 0)
            throw std::invalid_argument("hlwq::kv_cache::attention: n_q_heads " + std::to_string(n_q_heads) +
                                        " is not a positive multiple of n_kv_heads " + std::to_string(nh));
        if (n_queries == 0) throw std::invalid_argument("hlwq::kv_cache::attention: no queries");
        if (n_q_heads > std::numeric_limits<std::size_t>::max() / d / n_queries ||
            q.size() != n_queries * n_q_heads * d || out.size() != q.size())
            throw std::invalid_argument("hlwq::kv_cache::attention: " + std::to_string(n_queries) + " queries of " +
                                        std::to_string(n_q_heads) + " heads x " + std::to_string(d) +
                                        " need that many floats for q and out, got " + std::to_string(q.size()) +
                                        " and " + std::to_string(out.size()));
        const float scale = params.scale.value_or(1.0f / std::sqrt(static_cast<float>(d)));
        if (!(std::isfinite(scale) && scale > 0))
            throw std::invalid_argument("hlwq::kv_cache::attention: scale must be positive and finite, got " +
                                        std::to_string(scale));
        if (params.softcap && !(std::isfinite(*params.softcap) && *params.softcap > 0))
            throw std::invalid_argument("hlwq::kv_cache::attention: softcap must be positive and finite, got " +
                                        std::to_string(*params.softcap));
        if (seen_ == 0) throw std::invalid_argument("hlwq::kv_cache::attention: the cache is empty");
        if (n_queries > seen_)
            throw std::invalid_argument("hlwq::kv_cache::attention: " + std::to_string(n_queries) +
                                        " queries but only " + std::to_string(seen_) + " tokens appended");
        const std::size_t p0 = first.value_or(seen_ - n_queries);
        if (p0 > seen_ - n_queries)
            throw std::invalid_argument("hlwq::kv_cache::attention: queries at positions " + std::to_string(p0) +
                                        " .. " + std::to_string(p0 + n_queries - 1) +
                                        " reach past the last token appended, " + std::to_string(seen_ - 1));
        if (lowest_visible(p0) < first_position())  // later queries see later tokens only
            throw std::invalid_argument(
                "hlwq::kv_cache::attention: the query at position " + std::to_string(p0) + " needs position " +
                std::to_string(lowest_visible(p0)) + ", already overwritten (oldest held: " +
                std::to_string(first_position()) + "); a chunk of n queries needs capacity >= window + n - 1");

        const std::size_t group = n_q_heads / nh, items = n_queries * nh;
        const std::size_t longest = p0 + n_queries - lowest_visible(p0 + n_queries - 1);
        // A (query, head) item reads about longest·d elements twice; 2^18 of them per thread
        // (tens of microseconds) outweigh starting it.
        const std::size_t per_thread = std::max<std::size_t>(1, (std::size_t{1} << 18) / std::max<std::size_t>(1, longest * d));
        detail::parallel_for(items, detail::thread_count(params.threads, items, per_thread),
                             [&](std::size_t i0, std::size_t i1) {
                                 scratch s;
                                 for (std::size_t it = i0; it < i1; ++it) {
                                     const std::size_t qi = it / nh, h = it % nh, pos = p0 + qi;
                                     const std::size_t lo = lowest_visible(pos), at = (qi * n_q_heads + h * group) * d;
                                     attend(q.data() + at, group, h, lo, pos - lo + 1, scale, params.softcap,
                                            out.data() + at, s);
                                 }
                             });
    }

    /// Dequantized key at `position` of kv head `kv_head` into out (head_dim floats).
    /// @throws std::invalid_argument for a position not held, a head out of range or a
    ///   wrong out size.
    void key(std::size_t position, std::size_t kv_head, std::span<float> out) const {
        load(keys_, position, kv_head, out, "key");
    }
    /// Dequantized value at `position` of kv head `kv_head` into out (head_dim floats).
    /// @throws std::invalid_argument as key().
    void value(std::size_t position, std::size_t kv_head, std::span<float> out) const {
        load(values_, position, kv_head, out, "value");
    }

private:
    struct scratch {
        std::vector<float> q, scores, buf, acc, sum;
    };

    std::uint8_t* record(std::vector<std::uint8_t>& pool, std::size_t h, std::size_t slot) noexcept {
        return pool.data() + (h * cfg_.capacity + slot) * rec_;
    }
    const std::uint8_t* record(const std::vector<std::uint8_t>& pool, std::size_t h, std::size_t slot) const noexcept {
        return pool.data() + (h * cfg_.capacity + slot) * rec_;
    }

    std::size_t lowest_visible(std::size_t pos) const noexcept {
        const std::size_t w = cfg_.sliding_window.value_or(0);
        return w != 0 && pos + 1 > w ? pos + 1 - w : 0;
    }

    /// Calls f(t, m, slots) for the n positions from lo on, in blocks of m <= kv_block
    /// tokens: slots[j] holds position lo + t + j (a block may straddle the ring's end).
    template <class F>
    void for_each_block(std::size_t lo, std::size_t n, F&& f) const {
        std::size_t slot = lo % cfg_.capacity;
        for (std::size_t t = 0; t < n; t += detail::kv_block) {
            const std::size_t m = std::min(detail::kv_block, n - t);
            std::size_t slots[detail::kv_block] = {};
            for (std::size_t j = 0; j < m; ++j) {
                slots[j] = slot;
                if (++slot == cfg_.capacity) slot = 0;
            }
            f(t, m, slots);
        }
    }

    /// Attention of the `group` query heads at q (group × d) that share kv head h, over the
    /// n positions from lo, into out (group × d). Each record is decoded once for the group.
    void attend(const float* q, std::size_t group, std::size_t h, std::size_t lo, std::size_t n, float scale,
                std::optional<float> softcap, float* out, scratch& s) const {
        constexpr std::size_t B = detail::kv_block;
        const std::size_t d = cfg_.head_dim;
        s.q.resize(group * d);
        s.scores.resize(group * n);
        s.buf.resize(B * d);
        s.acc.assign(group * d, 0.0f);
        s.sum.resize(group);
        for (std::size_t g = 0; g < group; ++g) {
            for (std::size_t i = 0; i < d; ++i) s.q[g * d + i] = q[g * d + i] * scale;
            Policy::to_domain(s.q.data() + g * d, d);  // once per query head
        }
        float* buf = s.buf.data();
        for_each_block(lo, n, [&](std::size_t t, std::size_t m, const std::size_t* slots) {
            float f[B], dots[B];
            for (std::size_t j = 0; j < m; ++j) f[j] = Policy::decode(record(keys_, h, slots[j]), d, buf + j * d);
            for (std::size_t g = 0; g < group; ++g) {
                const float* qg = s.q.data() + g * d;
                if (m == B) detail::kv_dot4(qg, buf, d, dots);
                else
                    for (std::size_t j = 0; j < m; ++j) dots[j] = detail::kv_dot(qg, buf + j * d, d);
                for (std::size_t j = 0; j < m; ++j) s.scores[g * n + t + j] = f[j] * dots[j];
            }
        });
        for (std::size_t g = 0; g < group; ++g) s.sum[g] = detail::kv_softmax(s.scores.data() + g * n, n, softcap);
        for_each_block(lo, n, [&](std::size_t t, std::size_t m, const std::size_t* slots) {
            float f[B], p[B];
            for (std::size_t j = 0; j < m; ++j) f[j] = Policy::decode(record(values_, h, slots[j]), d, buf + j * d);
            for (std::size_t g = 0; g < group; ++g) {
                float* acc = s.acc.data() + g * d;
                for (std::size_t j = 0; j < m; ++j) p[j] = s.scores[g * n + t + j] * f[j];
                if (m == B) detail::kv_axpy4(acc, p, buf, d);
                else
                    for (std::size_t j = 0; j < m; ++j) detail::kv_axpy(acc, p[j], buf + j * d, d);
            }
        });
        for (std::size_t g = 0; g < group; ++g) {
            Policy::to_domain(s.acc.data() + g * d, d);  // back from the rotated domain, once
            const float inv = 1.0f / s.sum[g];
            for (std::size_t i = 0; i < d; ++i) out[g * d + i] = s.acc[g * d + i] * inv;
        }
    }

    void load(const std::vector<std::uint8_t>& pool, std::size_t position, std::size_t h, std::span<float> out,
              const char* what) const {
        if (position < first_position() || position >= seen_ || h >= cfg_.n_kv_heads || out.size() != cfg_.head_dim)
            throw std::invalid_argument(std::string("hlwq::kv_cache::") + what + ": position " +
                                        std::to_string(position) + " (held: " + std::to_string(first_position()) +
                                        " .. " + std::to_string(seen_) + " excluded), kv head " + std::to_string(h) +
                                        " of " + std::to_string(cfg_.n_kv_heads) + ", out of " +
                                        std::to_string(out.size()) + " floats for head_dim " +
                                        std::to_string(cfg_.head_dim));
        const float f = Policy::decode(record(pool, h, position % cfg_.capacity), cfg_.head_dim, out.data());
        Policy::to_domain(out.data(), cfg_.head_dim);
        for (float& x : out) x *= f;
    }

    kv_cache_config cfg_;
    std::size_t rec_ = 0;
    std::size_t seen_ = 0;
    std::size_t floor_ = 0;  // oldest position truncate() left reachable (slots below it may be reused)
    std::vector<std::uint8_t> keys_, values_;  // [n_kv_heads][capacity][record]
};

}  // namespace hlwq
