// SPDX-License-Identifier: MIT
/// @file detail/parallel.hpp
/// @brief parallel_for over an index range with std::thread; deterministic error reporting.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace hlwq::detail {

/// Threads to use for `work` items when the caller asked for `requested` (0 = all cores):
/// at most one per `min_per_thread` items, so small jobs stay on the calling thread.
inline unsigned thread_count(unsigned requested, std::size_t work, std::size_t min_per_thread) {
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const std::size_t useful = std::max<std::size_t>(1, work / std::max<std::size_t>(1, min_per_thread));
    return static_cast<unsigned>(std::min<std::size_t>(requested ? requested : hw, useful));
}

/// Calls f(begin, end) on `threads` contiguous chunks of [0, n). If chunks throw, the
/// exception of the lowest chunk is rethrown after all have finished, so the error a caller
/// sees does not depend on scheduling.
template <class F>
void parallel_for(std::size_t n, unsigned threads, F&& f) {
    threads = static_cast<unsigned>(std::min<std::size_t>(std::max(1u, threads), std::max<std::size_t>(n, 1)));
    if (threads == 1) {
        f(std::size_t{0}, n);
        return;
    }
    std::vector<std::exception_ptr> errors(threads);
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    auto run = [&](unsigned t) {
        try {
            f(n * t / threads, n * (t + 1) / threads);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    unsigned started = 1;
    try {
        for (; started < threads; ++started) pool.emplace_back(run, started);
    } catch (const std::system_error&) {
        // No more threads to be had: the calling thread runs the chunks not started.
    }
    for (unsigned t = started; t < threads; ++t) run(t);
    run(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace hlwq::detail
