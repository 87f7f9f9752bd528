// SPDX-License-Identifier: MIT
// Gated delta rule and causal conv1d (examples/runtime/gated_delta.hpp): the recurrent and the
// chunked forms against a double-precision recurrence, against each other, and continued from
// a state; the conv1d against its definition and continued from its rolling state.
#include "gated_delta.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <stdexcept>
#include <vector>

using hlwq::rt::delta_rule_inputs;
using hlwq::rt::delta_rule_shape;

namespace {

/// Random inputs of the delta rule as a Qwen3.5 layer makes them: normalized keys, queries
/// normalized and scaled by 1/sqrt(k_dim), N(0,1) values, g = −exp(A)·softplus(a) and
/// β = sigmoid(b) with O(1) a, b.
struct problem {
    delta_rule_shape shape;
    std::size_t T = 0, stride = 0;
    std::vector<float> qkv, g, beta;

    problem(const delta_rule_shape& s, std::size_t tokens, unsigned seed) : shape(s), T(tokens) {
        stride = 2 * s.k_heads * s.k_dim + s.v_heads * s.v_dim;
        std::mt19937 rng(seed);
        std::normal_distribution<float> n01(0.0f, 1.0f);
        qkv.resize(T * stride);
        for (float& x : qkv) x = n01(rng);
        for (std::size_t t = 0; t < T; ++t)
            for (std::size_t j = 0; j < 2 * s.k_heads; ++j) {
                const float scale = j < s.k_heads ? 1.0f / std::sqrt(static_cast<float>(s.k_dim)) : 1.0f;
                hlwq::rt::l2_normalize(qkv.data() + t * stride + j * s.k_dim, s.k_dim, 1e-6f, scale);
            }
        g.resize(T * s.v_heads);
        beta.resize(T * s.v_heads);
        for (std::size_t i = 0; i < g.size(); ++i) {
            const float a = n01(rng), b = n01(rng);
            g[i] = -std::exp(0.5f * n01(rng)) * std::log1p(std::exp(a));
            beta[i] = 1.0f / (1.0f + std::exp(-b));
        }
    }
    delta_rule_inputs inputs(std::size_t t0 = 0) const {
        const float* base = qkv.data() + t0 * stride;
        return {.q = base,
                .k = base + shape.k_heads * shape.k_dim,
                .v = base + 2 * shape.k_heads * shape.k_dim,
                .stride = stride,
                .g = g.data() + t0 * shape.v_heads,
                .beta = beta.data() + t0 * shape.v_heads};
    }
};

/// The recurrence of gated_delta.hpp in double precision.
void reference(const problem& p, std::vector<double>& state, std::vector<double>& out) {
    const auto& s = p.shape;
    const std::size_t dk = s.k_dim, dv = s.v_dim, group = s.v_heads / s.k_heads;
    const auto in = p.inputs();
    out.assign(p.T * s.v_heads * dv, 0.0);
    for (std::size_t h = 0; h < s.v_heads; ++h) {
        double* S = state.data() + h * dk * dv;
        for (std::size_t t = 0; t < p.T; ++t) {
            const float* q = in.q + t * p.stride + (h / group) * dk;
            const float* k = in.k + t * p.stride + (h / group) * dk;
            const float* v = in.v + t * p.stride + h * dv;
            const double decay = std::exp(static_cast<double>(p.g[t * s.v_heads + h]));
            for (std::size_t a = 0; a < dk * dv; ++a) S[a] *= decay;
            for (std::size_t m = 0; m < dv; ++m) {
                double mem = 0;
                for (std::size_t a = 0; a < dk; ++a) mem += S[a * dv + m] * k[a];
                const double delta = (v[m] - mem) * p.beta[t * s.v_heads + h];
                for (std::size_t a = 0; a < dk; ++a) S[a * dv + m] += k[a] * delta;
                double o = 0;
                for (std::size_t a = 0; a < dk; ++a) o += S[a * dv + m] * q[a];
                out[(t * s.v_heads + h) * dv + m] = o;
            }
        }
    }
}

template <class A, class B>
double max_diff(const A& a, const B& b) {
    REQUIRE(a.size() == b.size());
    double m = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    return m;
}

template <class A>
double max_abs(const A& a) {
    double m = 0;
    for (auto x : a) m = std::max(m, std::abs(static_cast<double>(x)));
    return m;
}

// Tolerance, relative to the largest output or state element. fp32 rounds each operation to
// u = 2^-24 relatively. The state update S ← γ(I − β k kᵀ) S + β k vᵀ is a non-expansion
// (|k| = 1, 0 < β < 1, 0 < γ ≤ 1), so rounding errors do not grow from token to token. Each
// output element is a sum of at most k_dim (recurrent) or k_dim + 64 (chunked: the state read
// plus the sum over the chunk) products, whose worst-case relative error is that count times
// u; we allow 4·(k_dim + 64)·u (1.9e-5 at k_dim 16). Measured: ≤ 2e-7 recurrent, ≤ 2e-6
// chunked (printed by the first test).
constexpr double unit_roundoff = 1.0 / (1 << 24);
double tolerance(const delta_rule_shape& s) { return 4.0 * static_cast<double>(s.k_dim + 64) * unit_roundoff; }

}  // namespace

TEST_CASE("gated delta rule: recurrent and chunked forms equal the double-precision recurrence") {
    for (const delta_rule_shape shape : {delta_rule_shape{.k_heads = 2, .v_heads = 4, .k_dim = 16, .v_dim = 8},
                                         delta_rule_shape{.k_heads = 1, .v_heads = 1, .k_dim = 32, .v_dim = 24}}) {
        for (const std::size_t T : {1u, 63u, 64u, 65u, 150u}) {
            CAPTURE(T);
            CAPTURE(shape.k_dim);
            const problem p(shape, T, static_cast<unsigned>(7 + T));
            std::vector<double> ref_state(shape.state_size(), 0.0), ref_out;
            reference(p, ref_state, ref_out);
            std::vector<float> rs(shape.state_size(), 0.0f), ro(ref_out.size());
            std::vector<float> cs(shape.state_size(), 0.0f), co(ref_out.size());
            hlwq::rt::gated_delta_recurrent(shape, p.inputs(), T, rs.data(), ro.data(), 1);
            hlwq::rt::gated_delta_chunked(shape, p.inputs(), T, cs.data(), co.data(), 64, 2);
            const double out_scale = max_abs(ref_out), state_scale = max_abs(ref_state);
            const double e_rec = max_diff(ro, ref_out) / out_scale, e_chunk = max_diff(co, ref_out) / out_scale;
            const double e_rs = max_diff(rs, ref_state) / state_scale, e_cs = max_diff(cs, ref_state) / state_scale;
            MESSAGE("T=" << T << " dk=" << shape.k_dim << " rel. errors: recurrent out " << e_rec << " state " << e_rs
                         << ", chunked out " << e_chunk << " state " << e_cs << " (tolerance " << tolerance(shape)
                         << ")");
            CHECK(e_rec <= tolerance(shape));
            CHECK(e_chunk <= tolerance(shape));
            CHECK(e_rs <= tolerance(shape));
            CHECK(e_cs <= tolerance(shape));
            CHECK(max_diff(co, ro) / out_scale <= tolerance(shape));
        }
    }
}

TEST_CASE("gated delta rule: continuing from a state equals one pass") {
    const delta_rule_shape shape{.k_heads = 2, .v_heads = 4, .k_dim = 16, .v_dim = 16};
    const std::size_t T = 150;
    const problem p(shape, T, 99);
    std::vector<float> one_state(shape.state_size(), 0.0f), one(T * shape.v_heads * shape.v_dim);
    hlwq::rt::gated_delta_chunked(shape, p.inputs(), T, one_state.data(), one.data());
    const double scale = max_abs(one), sscale = max_abs(one_state);
    for (const std::size_t split : {1u, 7u, 64u, 70u, 149u}) {
        CAPTURE(split);
        for (int decode_first = 0; decode_first < 2; ++decode_first) {
            // First part chunked (or recurrent, as decode would), the rest chunked from that state.
            std::vector<float> state(shape.state_size(), 0.0f), out(one.size());
            if (decode_first) hlwq::rt::gated_delta_recurrent(shape, p.inputs(), split, state.data(), out.data());
            else hlwq::rt::gated_delta_chunked(shape, p.inputs(), split, state.data(), out.data(), 64);
            hlwq::rt::gated_delta_chunked(shape, p.inputs(split), T - split, state.data(),
                                          out.data() + split * shape.v_heads * shape.v_dim, 64);
            CHECK(max_diff(out, one) / scale <= tolerance(shape));
            CHECK(max_diff(state, one_state) / sscale <= tolerance(shape));
        }
    }
    // Chunks of 7 (as a prefill in chunks of 7 tokens uses them) and recurrent decode after it.
    std::vector<float> state(shape.state_size(), 0.0f), out(one.size());
    hlwq::rt::gated_delta_chunked(shape, p.inputs(), 100, state.data(), out.data(), 7);
    for (std::size_t t = 100; t < T; ++t)
        hlwq::rt::gated_delta_recurrent(shape, p.inputs(t), 1, state.data(), out.data() + t * shape.v_heads * shape.v_dim);
    CHECK(max_diff(out, one) / scale <= tolerance(shape));
    CHECK(max_diff(state, one_state) / sscale <= tolerance(shape));
}

TEST_CASE("gated delta rule: inconsistent shapes are refused") {
    const problem p(delta_rule_shape{.k_heads = 2, .v_heads = 4, .k_dim = 16, .v_dim = 8}, 3, 1);
    std::vector<float> state(1024), out(1024);
    auto in = p.inputs();
    CHECK_THROWS_AS(hlwq::rt::gated_delta_recurrent({.k_heads = 3, .v_heads = 4, .k_dim = 16, .v_dim = 8}, in, 3,
                                                    state.data(), out.data()),
                    std::invalid_argument);
    CHECK_THROWS_AS(hlwq::rt::gated_delta_chunked(p.shape, in, 3, state.data(), out.data(), 0), std::invalid_argument);
    in.stride = 8;
    CHECK_THROWS_AS(hlwq::rt::gated_delta_chunked(p.shape, in, 3, state.data(), out.data()), std::invalid_argument);
    CHECK_THROWS_AS(hlwq::rt::gated_delta_recurrent({.k_heads = 0, .v_heads = 0, .k_dim = 16, .v_dim = 8}, p.inputs(),
                                                    3, state.data(), out.data()),
                    std::invalid_argument);
}

TEST_CASE("causal conv1d: definition, SiLU, and a rolling state that continues the sequence") {
    const std::size_t channels = 5, K = 4, T = 11;
    std::mt19937 rng(3);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> x(T * channels), w(channels * K);
    for (float& v : x) v = n01(rng);
    for (float& v : w) v = n01(rng);
    // Definition with zeros before the sequence.
    std::vector<double> ref(T * channels, 0.0);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t c = 0; c < channels; ++c) {
            double s = 0;
            for (std::size_t j = 0; j < K; ++j) {
                const std::ptrdiff_t p = static_cast<std::ptrdiff_t>(t + j) - static_cast<std::ptrdiff_t>(K - 1);
                if (p >= 0) s += static_cast<double>(w[c * K + j]) * x[static_cast<std::size_t>(p) * channels + c];
            }
            ref[t * channels + c] = s / (1.0 + std::exp(-s));
        }
    std::vector<float> state((K - 1) * channels, 0.0f), out(T * channels);
    hlwq::rt::causal_conv1d(x.data(), T, channels, w.data(), K, state.data(), out.data(), true);
    CHECK(max_diff(out, ref) <= 1e-5);
    // The state is the last K−1 inputs.
    for (std::size_t i = 0; i < state.size(); ++i) CHECK(state[i] == x[(T - (K - 1)) * channels + i]);
    // Pieces of 2, 1, 1, 7 tokens continue from the state.
    for (const auto& pieces : {std::vector<std::size_t>{2, 1, 1, 7}, std::vector<std::size_t>{1, 1, 1, 1, 1, 6}}) {
        std::fill(state.begin(), state.end(), 0.0f);
        std::vector<float> split(T * channels);
        std::size_t t0 = 0;
        for (std::size_t n : pieces) {
            hlwq::rt::causal_conv1d(x.data() + t0 * channels, n, channels, w.data(), K, state.data(),
                                    split.data() + t0 * channels, true);
            t0 += n;
        }
        CHECK(max_diff(split, out) == 0.0);
    }
    // Without SiLU.
    std::fill(state.begin(), state.end(), 0.0f);
    hlwq::rt::causal_conv1d(x.data(), 1, channels, w.data(), K, state.data(), out.data(), false);
    for (std::size_t c = 0; c < channels; ++c) CHECK(out[c] == doctest::Approx(w[c * K + K - 1] * x[c]));
}
