// SPDX-License-Identifier: MIT
// The gated delta rule (recurrent and chunked) and the causal conv1d of Gated DeltaNet layers;
// see gated_delta.hpp.
#include "gated_delta.hpp"

#include <hlwq/detail/parallel.hpp>
#include <hlwq/kv_cache.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::rt {

namespace {

void check_shape(const delta_rule_shape& s, const delta_rule_inputs& in, const char* fn) {
    if (s.k_heads == 0 || s.v_heads == 0 || s.k_dim == 0 || s.v_dim == 0 || s.v_heads % s.k_heads != 0)
        throw std::invalid_argument(std::string(fn) + ": shape of " + std::to_string(s.k_heads) + " key heads x " +
                                    std::to_string(s.k_dim) + " and " + std::to_string(s.v_heads) +
                                    " value heads x " + std::to_string(s.v_dim) +
                                    " (value heads must be a positive multiple of key heads)");
    if (in.stride < s.k_heads * s.k_dim || in.stride < s.v_heads * s.v_dim)
        throw std::invalid_argument(std::string(fn) + ": stride " + std::to_string(in.stride) +
                                    " is smaller than the heads of one token");
}

/// y[0..n) += a · x[0..n).
inline void axpy(float a, const float* x, float* y, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

/// o[0..v) = Σ_a x[a] · S[a][0..v) for S of k rows.
inline void vec_mat(const float* x, const float* S, std::size_t k, std::size_t v, float* o) noexcept {
    std::fill(o, o + v, 0.0f);
    for (std::size_t a = 0; a < k; ++a) axpy(x[a], S + a * v, o, v);
}

unsigned head_threads(unsigned threads, const delta_rule_shape& s, std::size_t T) {
    // A head's work is about T · k_dim · v_dim multiply-adds; don't spawn for tiny jobs.
    const std::size_t work = T * s.k_dim * s.v_dim;
    return detail::thread_count(threads, s.v_heads, std::max<std::size_t>(1, (1u << 16) / std::max<std::size_t>(1, work)));
}

}  // namespace

void l2_normalize(float* x, std::size_t n, float eps, float scale) noexcept {
    float ss = 0.0f;
    for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv = scale / std::sqrt(ss + eps);
    for (std::size_t i = 0; i < n; ++i) x[i] *= inv;
}

void causal_conv1d(const float* x, std::size_t T, std::size_t channels, const float* w, std::size_t K, float* state,
                   float* out, bool silu) noexcept {
    if (K == 0) return;
    const std::size_t hist = K - 1;
    // Input of token index p (p < 0 reads the state: state row hist + p).
    const auto input = [&](std::ptrdiff_t p) -> const float* {
        return p < 0 ? state + static_cast<std::size_t>(static_cast<std::ptrdiff_t>(hist) + p) * channels
                     : x + static_cast<std::size_t>(p) * channels;
    };
    for (std::size_t t = 0; t < T; ++t) {
        float* o = out + t * channels;
        std::fill(o, o + channels, 0.0f);
        for (std::size_t j = 0; j < K; ++j) {
            const float* src = input(static_cast<std::ptrdiff_t>(t + j) - static_cast<std::ptrdiff_t>(hist));
            for (std::size_t c = 0; c < channels; ++c) o[c] += w[c * K + j] * src[c];
        }
        if (silu)
            for (std::size_t c = 0; c < channels; ++c) o[c] = o[c] / (1.0f + std::exp(-o[c]));
    }
    if (hist == 0) return;
    // New state: the last hist inputs of (old state, x).
    std::vector<float> next(hist * channels);
    for (std::size_t r = 0; r < hist; ++r) {
        const std::ptrdiff_t p = static_cast<std::ptrdiff_t>(T) - static_cast<std::ptrdiff_t>(hist) +
                                 static_cast<std::ptrdiff_t>(r);
        std::copy_n(input(p), channels, next.data() + r * channels);
    }
    std::copy(next.begin(), next.end(), state);
}

void gated_delta_recurrent(const delta_rule_shape& s, const delta_rule_inputs& in, std::size_t T, float* state,
                           float* out, unsigned threads) {
    check_shape(s, in, "hlwq::rt::gated_delta_recurrent");
    if (T == 0) return;
    const std::size_t dk = s.k_dim, dv = s.v_dim, group = s.v_heads / s.k_heads;
    detail::parallel_for(s.v_heads, head_threads(threads, s, T), [&](std::size_t h0, std::size_t h1) {
        std::vector<float> mem(dv), delta(dv);
        for (std::size_t h = h0; h < h1; ++h) {
            float* S = state + h * dk * dv;
            const std::size_t kh = h / group;
            for (std::size_t t = 0; t < T; ++t) {
                const float* q = in.q + t * in.stride + kh * dk;
                const float* k = in.k + t * in.stride + kh * dk;
                const float* v = in.v + t * in.stride + h * dv;
                const float decay = std::exp(in.g[t * s.v_heads + h]), beta = in.beta[t * s.v_heads + h];
                // S ← decay·S; delta = β (v − Sᵀk); S ← S + k ⊗ delta; o = Sᵀq.
                for (std::size_t a = 0; a < dk * dv; ++a) S[a] *= decay;
                vec_mat(k, S, dk, dv, mem.data());
                for (std::size_t m = 0; m < dv; ++m) delta[m] = (v[m] - mem[m]) * beta;
                float* o = out + (t * s.v_heads + h) * dv;
                std::fill(o, o + dv, 0.0f);
                for (std::size_t a = 0; a < dk; ++a) {
                    float* row = S + a * dv;
                    axpy(k[a], delta.data(), row, dv);
                    axpy(q[a], row, o, dv);
                }
            }
        }
    });
}

void gated_delta_chunked(const delta_rule_shape& s, const delta_rule_inputs& in, std::size_t T, float* state,
                         float* out, std::size_t chunk, unsigned threads) {
    check_shape(s, in, "hlwq::rt::gated_delta_chunked");
    if (chunk == 0) throw std::invalid_argument("hlwq::rt::gated_delta_chunked: chunk must be positive");
    if (T == 0) return;
    const std::size_t dk = s.k_dim, dv = s.v_dim, group = s.v_heads / s.k_heads, C = std::min(chunk, T);
    detail::parallel_for(s.v_heads, head_threads(threads, s, T), [&](std::size_t h0, std::size_t h1) {
        std::vector<float> cum(C), A(C * C), intra(C * C), newv(C * dv), kcd(C * dk), vnew(C * dv), tmp(dv);
        for (std::size_t h = h0; h < h1; ++h) {
            float* S = state + h * dk * dv;
            const std::size_t kh = h / group;
            for (std::size_t c0 = 0; c0 < T; c0 += C) {
                const std::size_t L = std::min(C, T - c0);
                const auto q = [&](std::size_t i) { return in.q + (c0 + i) * in.stride + kh * dk; };
                const auto k = [&](std::size_t i) { return in.k + (c0 + i) * in.stride + kh * dk; };
                const auto v = [&](std::size_t i) { return in.v + (c0 + i) * in.stride + h * dv; };
                const auto beta = [&](std::size_t i) { return in.beta[(c0 + i) * s.v_heads + h]; };
                float acc = 0.0f;
                for (std::size_t i = 0; i < L; ++i) cum[i] = acc += in.g[(c0 + i) * s.v_heads + h];
                // The UT system (strictly lower part, unit diagonal implied) and the
                // within-chunk attention, both with the pairwise decays exp(cum_i − cum_j).
                for (std::size_t i = 0; i < L; ++i)
                    for (std::size_t j = 0; j <= i; ++j) {
                        const float decay = std::exp(cum[i] - cum[j]);
                        if (j < i) A[i * C + j] = beta(i) * detail::kv_dot(k(i), k(j), dk) * decay;
                        intra[i * C + j] = detail::kv_dot(q(i), k(j), dk) * decay;
                    }
                // Forward substitution: newv = (I + A)⁻¹ (β v), kcd = (I + A)⁻¹ (β k exp(cum)).
                for (std::size_t i = 0; i < L; ++i) {
                    float* nv = newv.data() + i * dv;
                    float* kc = kcd.data() + i * dk;
                    const float b = beta(i), bd = b * std::exp(cum[i]);
                    for (std::size_t m = 0; m < dv; ++m) nv[m] = v(i)[m] * b;
                    for (std::size_t a = 0; a < dk; ++a) kc[a] = k(i)[a] * bd;
                    for (std::size_t j = 0; j < i; ++j) {
                        const float f = -A[i * C + j];
                        axpy(f, newv.data() + j * dv, nv, dv);
                        axpy(f, kcd.data() + j * dk, kc, dk);
                    }
                }
                // vnew = newv − kcd S (the part of the values the old state does not predict).
                for (std::size_t i = 0; i < L; ++i) {
                    vec_mat(kcd.data() + i * dk, S, dk, dv, tmp.data());
                    for (std::size_t m = 0; m < dv; ++m) vnew[i * dv + m] = newv[i * dv + m] - tmp[m];
                }
                // Outputs: exp(cum_i) qᵢ S + Σ_{j≤i} intra_ij vnew_j.
                for (std::size_t i = 0; i < L; ++i) {
                    float* o = out + ((c0 + i) * s.v_heads + h) * dv;
                    vec_mat(q(i), S, dk, dv, o);
                    const float e = std::exp(cum[i]);
                    for (std::size_t m = 0; m < dv; ++m) o[m] *= e;
                    for (std::size_t j = 0; j <= i; ++j) axpy(intra[i * C + j], vnew.data() + j * dv, o, dv);
                }
                // State: exp(cum_last) S + Σ_i exp(cum_last − cum_i) kᵢ ⊗ vnewᵢ.
                const float last = cum[L - 1], chunk_decay = std::exp(last);
                for (std::size_t a = 0; a < dk * dv; ++a) S[a] *= chunk_decay;
                for (std::size_t i = 0; i < L; ++i) {
                    const float e = std::exp(last - cum[i]);
                    const float* ki = k(i);
                    for (std::size_t a = 0; a < dk; ++a) axpy(e * ki[a], vnew.data() + i * dv, S + a * dv, dv);
                }
            }
        }
    });
}

}  // namespace hlwq::rt
