// SPDX-License-Identifier: MIT
// A deterministic stand-in for a causal_lm in the session and program tests: the logits of a
// position are 0 except 20 at next(context up to and including that position), so greedy and
// the default sampling both pick next(...). Records every forward(), truncate() and reset().
#pragma once

#include "model.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace hlwq::test {

class fake_lm : public hlwq::rt::causal_lm {
public:
    std::size_t vocab = 8192;     ///< vocabulary size
    std::size_t context = 4096;   ///< max_context()
    bool refuse_truncate = false; ///< truncate() throws (like a model whose sliding window moved on)
    /// The favoured next token after `ctx`; default (last * 31 + 7) mod vocab.
    std::function<std::int32_t(std::span<const std::int32_t>)> next{};

    std::vector<std::int32_t> tokens{};             ///< what the cache holds
    std::vector<std::vector<std::int32_t>> fed{};   ///< ids of every forward() call
    std::vector<std::size_t> truncations{};         ///< arguments of truncate()
    std::size_t resets = 0;                         ///< reset() calls

    std::size_t vocab_size() const override { return vocab; }
    std::size_t position() const override { return tokens.size(); }
    std::size_t max_context() const override { return context; }
    void reset() override {
        tokens.clear();
        ++resets;
    }
    void truncate(std::size_t n) override {
        if (n > tokens.size()) throw std::invalid_argument("fake_lm: truncate past the position");
        truncations.push_back(n);
        if (refuse_truncate) throw std::runtime_error("fake_lm: cannot truncate");
        tokens.resize(n);
    }
    void forward(std::span<const std::int32_t> ids, std::span<float> logits, bool all_positions) override {
        for (std::int32_t id : ids)
            if (id < 0 || static_cast<std::size_t>(id) >= vocab)
                throw std::invalid_argument("fake_lm: token id " + std::to_string(id) + " outside the vocabulary");
        if (logits.size() != (all_positions ? ids.size() : 1) * vocab)
            throw std::invalid_argument("fake_lm: wrong logits size");
        if (tokens.size() + ids.size() > context) throw std::invalid_argument("fake_lm: context exceeded");
        fed.emplace_back(ids.begin(), ids.end());
        for (std::size_t i = 0; i < ids.size(); ++i) {
            tokens.push_back(ids[i]);
            if (!all_positions && i + 1 < ids.size()) continue;
            const auto row = all_positions ? logits.subspan(i * vocab, vocab) : logits;
            std::fill(row.begin(), row.end(), 0.0f);
            row[static_cast<std::size_t>(predict(tokens))] = 20.0f;
        }
    }
    std::size_t weight_bytes() const override { return 1000; }
    std::size_t cache_bytes() const override { return tokens.size() * 10; }
    std::string description() const override { return "fake_lm (vocab " + std::to_string(vocab) + ")"; }

    std::int32_t predict(std::span<const std::int32_t> ctx) const {
        if (next) return next(ctx);
        return static_cast<std::int32_t>((static_cast<std::size_t>(ctx.back()) * 31 + 7) % vocab);
    }
};

}  // namespace hlwq::test
