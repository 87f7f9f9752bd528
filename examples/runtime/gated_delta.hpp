// SPDX-License-Identifier: MIT
/// @file gated_delta.hpp
/// @brief The pieces of a Gated DeltaNet (linear-attention) layer that are not linear
/// layers: the causal depthwise conv1d with its rolling state and the gated delta rule, in
/// its recurrent form (decode) and its chunked form (prefill), as transformers 5.17
/// `models/qwen3_5` computes them (`causal_conv1d_fn` / `causal_conv1d_update`,
/// `torch_recurrent_gated_delta_rule`, `torch_chunk_gated_delta_rule`). All in fp32.
///
/// ## The gated delta rule
/// Per value head h with state S (k_dim × v_dim), for each token t with query q_t, key k_t
/// (k_dim), value v_t (v_dim), log-decay g_t ≤ 0 and rate β_t:
///
///     S ← exp(g_t) · S
///     S ← S + k_t ⊗ (β_t · (v_t − Sᵀ k_t))
///     o_t = Sᵀ q_t
///
/// The chunked form computes the same outputs and final state for a chunk of C tokens with a
/// few small matrix products (a unit lower-triangular solve, the UT transform of the
/// DeltaNet paper) instead of C sequential state updates; the two agree to fp32 rounding.
///
/// Query/key heads may be fewer than value heads (value head h reads query/key head
/// h / (v_heads / k_heads), transformers' repeat_interleave). q and k are used as given: the
/// model L2-normalizes them and scales q by 1/sqrt(k_dim) first (l2_normalize()).
#pragma once

#include <cstddef>

namespace hlwq::rt {

/// Shape of a gated delta rule.
struct delta_rule_shape {
    std::size_t k_heads = 0;  ///< query/key heads
    std::size_t v_heads = 0;  ///< value heads (a multiple of k_heads): one state each
    std::size_t k_dim = 0;    ///< elements of a query/key head
    std::size_t v_dim = 0;    ///< elements of a value head

    /// Floats of the recurrent state of all heads: v_heads · k_dim · v_dim.
    std::size_t state_size() const noexcept { return v_heads * k_dim * v_dim; }
};

/// Inputs of the delta rule for T tokens. Token t's query of key head j starts at
/// q + t·stride + j·k_dim (likewise k), its value of value head h at v + t·stride + h·v_dim,
/// so q, k and v can be slices of one [T][q | k | v] buffer; g and beta are [T][v_heads].
struct delta_rule_inputs {
    const float* q = nullptr;     ///< queries (normalized and scaled by the caller)
    const float* k = nullptr;     ///< keys (normalized by the caller)
    const float* v = nullptr;     ///< values
    std::size_t stride = 0;       ///< floats from one token's q (k, v) to the next one's
    const float* g = nullptr;     ///< log-decays, ≤ 0, [T][v_heads]
    const float* beta = nullptr;  ///< rates, [T][v_heads]
};

/// The recurrent form over T tokens: updates `state` ([v_heads][k_dim][v_dim], in place) one
/// token at a time and writes out [T][v_heads][v_dim]. Heads run on `threads` workers
/// (0 = one per hardware thread).
/// @throws std::invalid_argument for an inconsistent shape (v_heads not a positive multiple
///   of k_heads, a zero dimension, or stride smaller than the heads it must hold).
void gated_delta_recurrent(const delta_rule_shape& shape, const delta_rule_inputs& in, std::size_t T, float* state,
                           float* out, unsigned threads = 0);

/// The chunked form over T tokens, in chunks of `chunk` tokens (64 in transformers; the last
/// one shorter): same contract and, to fp32 rounding, same results as gated_delta_recurrent.
/// @throws std::invalid_argument as gated_delta_recurrent, and for chunk 0.
void gated_delta_chunked(const delta_rule_shape& shape, const delta_rule_inputs& in, std::size_t T, float* state,
                         float* out, std::size_t chunk = 64, unsigned threads = 0);

/// x[0..n) ← x · scale / sqrt(Σ x² + eps): transformers' `l2norm` (eps 1e-6 there), with the
/// query's extra 1/sqrt(k_dim) folded in as `scale`.
void l2_normalize(float* x, std::size_t n, float eps, float scale = 1.0f) noexcept;

/// Causal depthwise conv1d over T tokens with a rolling state, then SiLU if `silu`:
///
///     out[t][c] = Σ_{j<K} w[c][j] · x[t − (K−1) + j][c]
///
/// where positions before the first of these T tokens come from `state`: [K−1][channels],
/// the inputs of the K−1 tokens before (zeros at the start of a sequence; oldest first). On
/// return `state` holds the last K−1 inputs, so a following call continues the sequence.
/// x and out are [T][channels] and must not overlap; w is [channels][K].
void causal_conv1d(const float* x, std::size_t T, std::size_t channels, const float* w, std::size_t K, float* state,
                   float* out, bool silu) noexcept;

}  // namespace hlwq::rt
