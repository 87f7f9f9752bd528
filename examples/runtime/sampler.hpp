// SPDX-License-Identifier: MIT
/// @file sampler.hpp
/// @brief Next-token selection from logits: greedy, or sampling with repetition penalty,
/// temperature, top-k, top-p and min-p (transformers' semantics and order), seeded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace hlwq::rt {

/// How the next token is chosen. The defaults are llama.cpp's (temperature 0.8, top-k 40,
/// top-p 0.95, min-p 0.05, no repetition penalty, penalty window 64).
struct sampler_options {
    /// Softmax temperature; 0 (or less) = greedy: the highest logit after the repetition
    /// penalty, the lowest id on ties. The filters below are then not used.
    float temperature = 0.8f;
    /// Keep the `top_k` most likely tokens (ties broken by the lower id); 0 = off.
    std::size_t top_k = 40;
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (probabilities after top-k); 1 = off. Must be in (0, 1].
    float top_p = 0.95f;
    /// Drop tokens whose probability is below `min_p` times the largest one; 0 = off.
    /// Must be in [0, 1].
    float min_p = 0.05f;
    /// Repetition penalty (CTRL paper, transformers, llama.cpp): the logit of every distinct
    /// token among the last `repeat_last_n` tokens of the context is divided by it when positive
    /// and multiplied by it when negative; 1 = off. Must be > 0.
    float repeat_penalty = 1.0f;
    /// How many of the latest context tokens the penalty looks at; 0 = none, -1 = all.
    std::int64_t repeat_last_n = 64;
    /// Seed of the random generator (std::mt19937_64); the same seed, options and logits give
    /// the same tokens on every platform (the uniform draw is computed here, not by the
    /// implementation-defined distributions of the standard library).
    std::uint64_t seed = 0;
};

/// Checks `o` and returns an empty string, or a message naming the first bad option.
std::string validate(const sampler_options& o);

/// Chooses tokens from logits.
///
/// Order of operations (transformers' logits processors and warpers, also llama.cpp's default
/// chain minus its extras):
/// 1. repetition penalty over the last `repeat_last_n` tokens of `history`;
/// 2. greedy (temperature <= 0): argmax, done; otherwise divide by the temperature;
/// 3. top-k; 4. top-p on the softmax of what top-k kept; 5. min-p (relative to the most likely
///    token, so it does not matter whether it is measured before or after top-p);
/// 6. draw from the softmax of the survivors with one uniform number from the generator.
///
/// Logits equal to -inf are allowed (never chosen unless everything is -inf, which throws);
/// NaN logits throw std::runtime_error. The sampler keeps no history: the caller passes the
/// context (prompt and generated tokens) to every call.
class sampler {
public:
    /// Throws std::invalid_argument when validate(options) reports a problem.
    explicit sampler(const sampler_options& options = {});

    /// The next token for `logits` (one row, the vocabulary) after the context `history`.
    /// Throws std::runtime_error for NaN logits or when every logit is -inf.
    std::int32_t sample(std::span<const float> logits, std::span<const std::int32_t> history = {});

    /// The candidate set step 6 would draw from, as (id, probability) sorted by decreasing
    /// probability (greedy: the one chosen token with probability 1). Does not draw; for tests
    /// and diagnostics.
    std::vector<std::pair<std::int32_t, double>> candidates(std::span<const float> logits,
                                                            std::span<const std::int32_t> history = {});

    /// Restart the random generator from `seed`.
    void reseed(std::uint64_t seed);

    /// The options in use.
    const sampler_options& options() const noexcept { return options_; }

    /// The repetition penalty alone: `logits` changed in place as step 1 describes (exposed for
    /// tests and other samplers).
    static void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history,
                                         float penalty, std::int64_t last_n);

private:
    struct candidate {
        float logit = 0.0f;
        std::int32_t id = 0;
    };
    // Steps 1-5; returns the survivors sorted by decreasing logit (lowest id first on ties).
    void filter(std::span<const float> logits, std::span<const std::int32_t> history);
    double uniform();

    sampler_options options_{};
    std::mt19937_64 rng_{};
    std::vector<float> work_{};        // penalized logits
    std::vector<candidate> cand_{};    // survivors of the filters
};

}  // namespace hlwq::rt
