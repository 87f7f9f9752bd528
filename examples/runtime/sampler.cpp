// SPDX-License-Identifier: MIT
#include "sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <unordered_set>

namespace hlwq::rt {

namespace {

// Order of candidates: decreasing logit, then increasing id (deterministic ties).
struct by_logit {
    template <class C>
    bool operator()(const C& a, const C& b) const noexcept {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    }
};

}  // namespace

std::string validate(const sampler_options& o) {
    if (std::isnan(o.temperature)) return "temperature must be a number";
    if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) return "top-p must be in (0, 1]";
    if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) return "min-p must be in [0, 1]";
    if (!(o.repeat_penalty > 0.0f) || std::isinf(o.repeat_penalty)) return "repeat penalty must be > 0";
    if (o.repeat_last_n < -1) return "repeat-last-n must be -1 (all), 0 (off) or positive";
    return {};
}

sampler::sampler(const sampler_options& options) : options_(options), rng_(options.seed) {
    if (const std::string msg = validate(options); !msg.empty()) throw std::invalid_argument("sampler: " + msg);
}

void sampler::reseed(std::uint64_t seed) { rng_.seed(seed); }

double sampler::uniform() {
    // 53 random bits -> [0, 1), identical everywhere (std::mt19937_64's output is specified).
    return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void sampler::apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history,
                                       float penalty, std::int64_t last_n) {
    if (penalty == 1.0f || last_n == 0 || history.empty()) return;
    std::size_t n = history.size();
    if (last_n > 0) n = std::min(n, static_cast<std::size_t>(last_n));
    const auto recent = history.subspan(history.size() - n);
    std::unordered_set<std::int32_t> seen;
    seen.reserve(recent.size() * 2);
    for (const std::int32_t id : recent) {
        if (id < 0 || static_cast<std::size_t>(id) >= logits.size()) continue;  // not a vocabulary id
        if (!seen.insert(id).second) continue;  // each distinct token once
        float& l = logits[static_cast<std::size_t>(id)];
        l = l > 0.0f ? l / penalty : l * penalty;
    }
}

void sampler::filter(std::span<const float> logits, std::span<const std::int32_t> history) {
    if (logits.empty()) throw std::invalid_argument("sampler: empty logits");
    if (logits.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
        throw std::invalid_argument("sampler: vocabulary too large");
    work_.assign(logits.begin(), logits.end());
    for (const float l : work_)
        if (std::isnan(l)) throw std::runtime_error("sampler: the logits contain NaN");
    apply_repetition_penalty(work_, history, options_.repeat_penalty, options_.repeat_last_n);

    cand_.clear();
    if (!(options_.temperature > 0.0f)) {
        // Greedy: argmax, lowest id on ties.
        std::size_t best = 0;
        for (std::size_t i = 1; i < work_.size(); ++i)
            if (work_[i] > work_[best]) best = i;
        if (work_[best] == -std::numeric_limits<float>::infinity())
            throw std::runtime_error("sampler: every logit is -inf");
        cand_.push_back({work_[best], static_cast<std::int32_t>(best)});
        return;
    }

    const float inv_t = 1.0f / options_.temperature;
    cand_.reserve(work_.size());
    for (std::size_t i = 0; i < work_.size(); ++i) {
        const float l = work_[i] == -std::numeric_limits<float>::infinity() ? work_[i] : work_[i] * inv_t;
        if (std::isnan(l)) throw std::runtime_error("sampler: the logits contain NaN after the temperature");
        if (l != -std::numeric_limits<float>::infinity()) cand_.push_back({l, static_cast<std::int32_t>(i)});
    }
    if (cand_.empty()) throw std::runtime_error("sampler: every logit is -inf");
    // +inf logits (temperature overflow): only they survive, equally likely.
    if (std::any_of(cand_.begin(), cand_.end(), [](const candidate& c) { return std::isinf(c.logit); })) {
        std::erase_if(cand_, [](const candidate& c) { return !std::isinf(c.logit); });
        for (candidate& c : cand_) c.logit = 0.0f;
    }

    // Top-k.
    if (options_.top_k > 0 && options_.top_k < cand_.size()) {
        std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(options_.top_k - 1),
                         cand_.end(), by_logit{});
        cand_.resize(options_.top_k);
    }
    // Softmax normalizer over what top-k kept (top-p measures probabilities against it).
    const float max_logit = std::max_element(cand_.begin(), cand_.end(), [](const candidate& a, const candidate& b) {
                                return a.logit < b.logit;
                            })->logit;
    double z = 0.0;
    for (const candidate& c : cand_) z += std::exp(static_cast<double>(c.logit) - max_logit);

    // Min-p: keep p_i >= min_p * p_max, i.e. exp(l_i - l_max) >= min_p. Both min-p and top-p keep
    // a prefix of the sorted order, so filtering by min-p first and then walking top-p's
    // cumulative sum (with the normalizer of the top-k set) gives the intersection that
    // transformers' top-p-then-min-p gives, while sorting fewer candidates.
    if (options_.min_p > 0.0f) {
        const double min_p = options_.min_p;
        std::erase_if(cand_, [&](const candidate& c) {
            return std::exp(static_cast<double>(c.logit) - max_logit) < min_p;
        });
    }
    std::sort(cand_.begin(), cand_.end(), by_logit{});
    if (options_.top_p < 1.0f) {
        const double p = options_.top_p;
        double cum = 0.0;
        std::size_t keep = 0;
        while (keep < cand_.size()) {
            cum += std::exp(static_cast<double>(cand_[keep].logit) - max_logit) / z;
            ++keep;
            if (cum >= p) break;
        }
        cand_.resize(std::max<std::size_t>(keep, 1));
    }
}

std::vector<std::pair<std::int32_t, double>> sampler::candidates(std::span<const float> logits,
                                                                 std::span<const std::int32_t> history) {
    filter(logits, history);
    std::vector<std::pair<std::int32_t, double>> out;
    out.reserve(cand_.size());
    const double top = cand_.front().logit;
    double z = 0.0;
    for (const candidate& c : cand_) z += std::exp(static_cast<double>(c.logit) - top);
    for (const candidate& c : cand_) out.emplace_back(c.id, std::exp(static_cast<double>(c.logit) - top) / z);
    return out;
}

std::int32_t sampler::sample(std::span<const float> logits, std::span<const std::int32_t> history) {
    filter(logits, history);
    if (cand_.size() == 1) return cand_.front().id;
    const double top = cand_.front().logit;
    double z = 0.0;
    for (const candidate& c : cand_) z += std::exp(static_cast<double>(c.logit) - top);
    const double u = uniform() * z;
    double cum = 0.0;
    for (const candidate& c : cand_) {
        cum += std::exp(static_cast<double>(c.logit) - top);
        if (u < cum) return c.id;
    }
    return cand_.back().id;  // rounding: u just below z
}

}  // namespace hlwq::rt
