// Deterministic test data shared by the suites.
#pragma once

#include <random>
#include <vector>

namespace hlwq_test {

/// n samples of N(0,1) from a seeded mt19937.
inline std::vector<float> gaussian(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d;
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
}

}  // namespace hlwq_test
