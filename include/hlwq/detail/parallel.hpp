// SPDX-License-Identifier: MIT
/// @file detail/parallel.hpp
/// @brief parallel_for over an index range on a persistent thread pool; deterministic error
/// reporting.
///
/// A decode step makes hundreds of small parallel products, and starting std::threads for each
/// cost tens of microseconds a call. The pool's workers are started once, lazily, and grow to
/// the largest thread count ever asked for minus one (the calling thread always works too).
/// A call posts a job of `threads` chunks, takes chunks itself until none are left and waits
/// for those the workers took.
///
/// - Several threads may call parallel_for at once: jobs queue, and each caller works through
///   its own job, so every job finishes even when all workers are busy elsewhere.
/// - A call from inside a worker runs its chunks inline (a worker never waits on the pool, so
///   nesting cannot deadlock); a nested call from the calling thread's own share posts a job
///   like any other.
/// - If no more threads can be started, the calling thread does the work of the missing ones.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace hlwq::detail {

/// Threads to use for `work` items when the caller asked for `requested` (0 = all cores):
/// at most one per `min_per_thread` items, so small jobs stay on the calling thread.
inline unsigned thread_count(unsigned requested, std::size_t work, std::size_t min_per_thread) {
    // Read once: glibc answers hardware_concurrency by reading sysfs (an open, read and close,
    // some microseconds), which every small matvec would pay.
    static const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const std::size_t useful = std::max<std::size_t>(1, work / std::max<std::size_t>(1, min_per_thread));
    return static_cast<unsigned>(std::min<std::size_t>(requested ? requested : hw, useful));
}

/// The process-wide pool behind parallel_for (see parallel.hpp).
class thread_pool {
public:
    /// One parallel_for call: `tasks` chunks, run by call(ctx, chunk). Lives on the caller's
    /// stack; workers touch it only between claiming a chunk and counting it done.
    struct job {
        void (*call)(void*, std::size_t) = nullptr;
        void* ctx = nullptr;
        std::size_t tasks = 0;
        std::size_t next = 0;              ///< next unclaimed chunk (under the pool mutex)
        std::atomic<std::size_t> done{0};  ///< chunks finished (incremented under the mutex)
    };

    thread_pool() = default;
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    ~thread_pool() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        work_cv_.notify_all();
        for (auto& w : workers_) w.join();
    }

    /// The pool; its workers end at static destruction.
    static thread_pool& instance() {
        static thread_pool pool;
        return pool;
    }

    /// Whether the current thread is one of a pool's workers.
    static bool& in_worker() noexcept {
        static thread_local bool flag = false;
        return flag;
    }

    /// Workers started so far.
    std::size_t workers() {
        std::lock_guard lock(mutex_);
        return workers_.size();
    }

    /// Runs all chunks of `j` with up to `helpers` workers and the calling thread; returns
    /// when every chunk has finished. call() must not throw.
    void run(job& j, std::size_t helpers) {
        {
            std::lock_guard lock(mutex_);
            grow(helpers);
            queue_.push_back(&j);
            queued_.fetch_add(1, std::memory_order_release);
        }
        work_cv_.notify_all();
        // The caller takes chunks of its own job until none are left.
        for (;;) {
            std::size_t chunk;
            {
                std::lock_guard lock(mutex_);
                if (j.next == j.tasks) break;
                chunk = claim(j);
            }
            j.call(j.ctx, chunk);
            finish(j);
        }
        // Workers usually finish their chunks about when the caller does: spin briefly first.
        for (int spin = 0; spin < spin_iterations && j.done.load(std::memory_order_acquire) != j.tasks; ++spin) pause();
        if (j.done.load(std::memory_order_acquire) == j.tasks) return;
        std::unique_lock lock(mutex_);
        done_cv_.wait(lock, [&] { return j.done.load(std::memory_order_acquire) == j.tasks; });
    }

private:
    // Spins before sleeping on the condition variable: a few microseconds, enough to catch
    // the next call of a decode step on an idle machine. Longer spins only took CPU from
    // the caller's serial work when cores are oversubscribed (gemma4-gcide-tiny on 2 loaded
    // cores: 0 and 2000 spins gave the same decode and prefill speeds within noise).
    static constexpr int spin_iterations = 256;

    static void pause() noexcept {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
        _mm_pause();
#else
        std::this_thread::yield();
#endif
    }

    // Under mutex_: the next chunk of j, dropping j from the queue once all are claimed.
    std::size_t claim(job& j) {
        const std::size_t chunk = j.next++;
        if (j.next == j.tasks) {
            queue_.erase(std::find(queue_.begin(), queue_.end(), &j));
            queued_.fetch_sub(1, std::memory_order_relaxed);
        }
        return chunk;
    }

    // Counts a chunk of j done. After the increment j may be gone: only the pool is touched.
    void finish(job& j) {
        std::lock_guard lock(mutex_);
        j.done.fetch_add(1, std::memory_order_release);
        done_cv_.notify_all();
    }

    // Under mutex_: starts workers up to `n`; if the system refuses, fewer (callers do the rest).
    void grow(std::size_t n) {
        try {
            while (workers_.size() < n) workers_.emplace_back([this] { work(); });
        } catch (const std::system_error&) {
        }
    }

    void work() {
        in_worker() = true;
        for (;;) {
            for (int spin = 0; spin < spin_iterations && queued_.load(std::memory_order_acquire) == 0; ++spin) pause();
            job* j;
            std::size_t chunk;
            {
                std::unique_lock lock(mutex_);
                work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
                if (stop_) return;
                j = queue_.front();
                chunk = claim(*j);
            }
            j->call(j->ctx, chunk);
            finish(*j);
        }
    }

    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<job*> queue_;
    std::atomic<std::size_t> queued_{0};  // queue_.size(), read without the lock by spinning workers
    std::vector<std::thread> workers_;
    bool stop_ = false;
};

/// Calls f(begin, end) on `threads` contiguous chunks of [0, n), chunk t being
/// [n·t/threads, n·(t+1)/threads), on the pool's workers and the calling thread. If chunks
/// throw, the exception of the lowest chunk is rethrown after all have finished, so the error
/// a caller sees does not depend on scheduling. From inside a pool worker the chunks run
/// inline, in order.
template <class F>
void parallel_for(std::size_t n, unsigned threads, F&& f) {
    threads = static_cast<unsigned>(std::min<std::size_t>(std::max(1u, threads), std::max<std::size_t>(n, 1)));
    if (threads == 1) {
        f(std::size_t{0}, n);
        return;
    }
    std::vector<std::exception_ptr> errors(threads);
    auto chunk = [&](std::size_t t) {
        try {
            f(n * t / threads, n * (t + 1) / threads);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    if (thread_pool::in_worker()) {
        for (unsigned t = 0; t < threads; ++t) chunk(t);
    } else {
        thread_pool::job j;
        j.call = [](void* ctx, std::size_t t) { (*static_cast<decltype(chunk)*>(ctx))(t); };
        j.ctx = &chunk;
        j.tasks = threads;
        thread_pool::instance().run(j, threads - 1);
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace hlwq::detail
