#include <hlwq/detail/parallel.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using hlwq::detail::parallel_for;

namespace {

// Runs parallel_for(n, threads) and checks every index was visited exactly once, by chunks
// that are the documented contiguous ranges.
void check_cover(std::size_t n, unsigned threads) {
    CAPTURE(n);
    CAPTURE(threads);
    std::vector<std::atomic<int>> hits(n);
    std::atomic<unsigned> calls{0};
    parallel_for(n, threads, [&](std::size_t a, std::size_t b) {
        REQUIRE(a <= b);
        REQUIRE(b <= n);
        ++calls;
        for (std::size_t i = a; i < b; ++i) ++hits[i];
    });
    for (std::size_t i = 0; i < n; ++i) REQUIRE(hits[i].load() == 1);
    const unsigned chunks = std::max(1u, static_cast<unsigned>(std::min<std::size_t>(std::max(1u, threads), std::max<std::size_t>(n, 1))));
    CHECK(calls.load() == chunks);
}

}  // namespace

TEST_CASE("parallel_for covers every index exactly once") {
    for (std::size_t n : {0u, 1u, 2u, 3u, 7u, 64u, 100u, 1000u, 4097u})
        for (unsigned threads : {0u, 1u, 2u, 3u, 4u, 5u, 8u, 16u}) check_cover(n, threads);
}

TEST_CASE("parallel_for chunks are the documented ranges") {
    const std::size_t n = 10;
    const unsigned threads = 4;
    std::vector<std::pair<std::size_t, std::size_t>> seen(threads);
    parallel_for(n, threads, [&](std::size_t a, std::size_t b) {
        // chunk t starts at n·t/threads: find t from a
        for (unsigned t = 0; t < threads; ++t)
            if (n * t / threads == a) seen[t] = {a, b};
    });
    for (unsigned t = 0; t < threads; ++t) {
        CHECK(seen[t].first == n * t / threads);
        CHECK(seen[t].second == n * (t + 1) / threads);
    }
}

TEST_CASE("parallel_for runs on several threads and reuses them") {
    // Two chunks that wait for each other can only finish if they run at the same time.
    for (int round = 0; round < 50; ++round) {
        std::atomic<int> arrived{0};
        parallel_for(2, 2, [&](std::size_t, std::size_t) {
            ++arrived;
            while (arrived.load() < 2) std::this_thread::yield();
        });
        CHECK(arrived.load() == 2);
    }
    // The pool holds at least the one worker, and repeated calls did not add more.
    const std::size_t workers = hlwq::detail::thread_pool::instance().workers();
    CHECK(workers >= 1);
    parallel_for(2, 2, [](std::size_t, std::size_t) {});
    CHECK(hlwq::detail::thread_pool::instance().workers() == workers);
}

TEST_CASE("parallel_for rethrows the exception of the lowest throwing chunk") {
    for (int round = 0; round < 20; ++round) {
        std::atomic<int> finished{0};
        try {
            parallel_for(8, 4, [&](std::size_t a, std::size_t) {
                if (a >= 4) throw std::runtime_error("chunk at " + std::to_string(a));
                ++finished;
            });
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "chunk at 4");
        }
        // the chunks that did not throw all ran before the call returned
        CHECK(finished.load() == 2);
    }
    // The pool still works after exceptions.
    check_cover(1000, 4);
}

TEST_CASE("nested parallel_for covers the product of both ranges") {
    const std::size_t outer = 13, inner = 57;
    for (unsigned t1 : {1u, 2u, 4u})
        for (unsigned t2 : {1u, 2u, 3u}) {
            CAPTURE(t1);
            CAPTURE(t2);
            std::vector<std::atomic<int>> hits(outer * inner);
            parallel_for(outer, t1, [&](std::size_t a, std::size_t b) {
                for (std::size_t i = a; i < b; ++i)
                    parallel_for(inner, t2, [&](std::size_t c, std::size_t d) {
                        for (std::size_t j = c; j < d; ++j) ++hits[i * inner + j];
                    });
            });
            for (auto& h : hits) REQUIRE(h.load() == 1);
        }
    // A nested call that throws reaches the outer caller.
    CHECK_THROWS_AS(parallel_for(4, 2,
                                 [](std::size_t a, std::size_t) {
                                     parallel_for(4, 2, [a](std::size_t c, std::size_t) {
                                         if (a == 2 && c == 2) throw std::logic_error("inner");
                                     });
                                 }),
                    std::logic_error);
}

TEST_CASE("parallel_for from several threads at once") {
    constexpr unsigned callers = 4;
    constexpr std::size_t n = 5000;
    std::vector<std::vector<int>> hits(callers, std::vector<int>(n, 0));
    std::vector<int> ok(callers, 0);
    std::vector<std::thread> ts;
    for (unsigned c = 0; c < callers; ++c)
        ts.emplace_back([&, c] {
            bool good = true;
            for (int round = 0; round < 100; ++round) {
                std::vector<std::atomic<int>> h(n);
                parallel_for(n, 1 + (c + round) % 4, [&](std::size_t a, std::size_t b) {
                    for (std::size_t i = a; i < b; ++i) ++h[i];
                });
                for (std::size_t i = 0; i < n; ++i) good = good && h[i].load() == 1;
                try {
                    parallel_for(6, 3, [&](std::size_t a, std::size_t) {
                        if (a >= 2) throw std::runtime_error(std::to_string(c));
                    });
                    good = false;
                } catch (const std::runtime_error& e) {
                    good = good && std::string(e.what()) == std::to_string(c);
                }
            }
            ok[c] = good;
        });
    for (auto& t : ts) t.join();
    for (unsigned c = 0; c < callers; ++c) CHECK(ok[c] == 1);
}
