// SPDX-License-Identifier: MIT
// Shared by the hlwq benchmark programs: a registry of benchmarks with their memcpy (or
// other) baseline, and a reporter that prints, after Google Benchmark's own output, a RATIO
// table computed from the same run: each benchmark's time over its baseline's, and over the
// variant it is compared with (e.g. scalar vs SIMD).
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hlwq_bench {

// ---------------------------------------------------------------------------------------
// Registry: what the RATIO table needs to know about each benchmark.
// ---------------------------------------------------------------------------------------
struct entry {
    std::string name;
    std::string group;      // printed as a section header
    std::size_t bytes = 0;  // bytes per iteration (as in SetBytesProcessed)
    std::size_t items = 0;  // items per iteration (weights, floats, codes; as in SetItemsProcessed)
    std::string baseline;   // memcpy baseline of the same bytes ("" for the baseline itself)
    std::string scalar;     // the variant this one is compared with, "speedup" column ("" if none)
};

inline std::vector<entry>& registry() {
    static std::vector<entry> r;
    return r;
}

template <class F>
benchmark::internal::Benchmark* add(entry e, F&& f) {
    registry().push_back(e);
    return benchmark::RegisterBenchmark(e.name.c_str(), std::forward<F>(f))->UseRealTime();
}

inline void add_memcpy(const std::string& group, std::size_t bytes) {
    add({group + "/memcpy", group, bytes, 0, "", ""}, [bytes](benchmark::State& st) {
        std::vector<char> src(bytes, 1), dst(bytes, 0);
        for (auto _ : st) {
            std::memcpy(dst.data(), src.data(), bytes);
            benchmark::DoNotOptimize(dst.data());
            benchmark::ClobberMemory();
        }
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
    });
}

/// One-line explanation printed under a group's header in the RATIO table.
inline std::map<std::string, std::string>& group_notes() {
    static std::map<std::string, std::string> n;
    return n;
}
/// What the speedup column compares, printed in the table's legend.
inline std::string& speedup_note() {
    static std::string n = "scalar time / cpu time";
    return n;
}

// ---------------------------------------------------------------------------------------
// Reporter: forwards everything to the default display reporter (honours
// --benchmark_format / --benchmark_color), keeps each benchmark's real times (one per
// repetition), and prints the RATIO table at Finalize(): from the best times, and, for
// --benchmark_repetitions (best with --benchmark_enable_random_interleaving, so that every
// benchmark samples the same spells of a noisy machine), from the medians too.
// ---------------------------------------------------------------------------------------
class ratio_reporter final : public benchmark::BenchmarkReporter {
public:
    explicit ratio_reporter(benchmark::BenchmarkReporter* inner) : inner_(inner) {}

    bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& r : runs) {
            if (r.error_occurred || r.run_type != Run::RT_Iteration) continue;
            const double s = r.GetAdjustedRealTime() * seconds_per_unit(r.time_unit);
            times_[r.run_name.function_name].push_back(s);
        }
        inner_->ReportRuns(runs);
    }

    void Finalize() override {
        inner_->Finalize();
        // Keep machine-readable formats clean on stdout.
        std::ostream& os = dynamic_cast<benchmark::ConsoleReporter*>(inner_.get()) ? std::cout : std::cerr;
        print_table(os);
    }

private:
    static double seconds_per_unit(benchmark::TimeUnit u) {
        switch (u) {
            case benchmark::kNanosecond: return 1e-9;
            case benchmark::kMicrosecond: return 1e-6;
            case benchmark::kMillisecond: return 1e-3;
            default: return 1.0;
        }
    }
    std::optional<double> time(const std::string& name) const {
        const auto it = times_.find(name);
        if (it == times_.end()) return std::nullopt;
        return *std::min_element(it->second.begin(), it->second.end());
    }
    std::optional<double> median(const std::string& name) const {
        const auto it = times_.find(name);
        if (it == times_.end()) return std::nullopt;
        std::vector<double> v = it->second;
        std::sort(v.begin(), v.end());
        const std::size_t n = v.size();
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }
    static std::string fmt_time(double s) {
        char buf[32];
        if (s >= 1e-3) std::snprintf(buf, sizeof buf, "%9.3f ms", s * 1e3);
        else std::snprintf(buf, sizeof buf, "%9.2f us", s * 1e6);
        return buf;
    }

    static const char* group_note(const std::string& group) {
        const auto it = group_notes().find(group);
        return it == group_notes().end() ? "" : it->second.c_str();
    }

    void print_table(std::ostream& os) const {
        if (times_.empty()) return;
        char line[256];
        os << "\nRATIO table (from this run; best real time per iteration)\n"
              "  x memcpy = time / time of the group's memcpy of the same bytes (1.00 = memcpy speed)\n"
              "  med x (n) = as x memcpy, from the median times of n repetitions\n"
              "  speedup  = time of the variant it is compared with / its time ("
           << speedup_note() << ")\n";
        std::string group;
        for (const entry& e : registry()) {
            const auto t = time(e.name);
            if (!t) continue;
            if (e.group != group) {
                group = e.group;
                os << "\n" << group << ": " << group_note(group) << "\n";
                std::snprintf(line, sizeof line, "  %-26s %10s %12s %9s %11s %8s %10s %8s\n", "", "bytes/it", "time/it",
                              "x memcpy", "med x (n)", "GB/s", "Mitems/s", "speedup");
                os << line;
            }
            std::string ratio = "-", med = "-", speedup = "-", items = "-";
            if (const auto b = time(e.baseline)) {
                std::snprintf(line, sizeof line, "%.2f", *t / *b);
                ratio = line;
                std::snprintf(line, sizeof line, "%.2f (%zu)", *median(e.name) / *median(e.baseline),
                              times_.at(e.name).size());
                med = line;
            }
            if (const auto sc = time(e.scalar)) {
                std::snprintf(line, sizeof line, "%.2fx", *sc / *t);
                speedup = line;
            }
            if (e.items) {
                // whole-model benchmarks count tokens: thousands a second, so keep 4 digits
                const double m = static_cast<double>(e.items) / *t / 1e6;
                std::snprintf(line, sizeof line, m >= 100 ? "%.1f" : "%.4g", m);
                items = line;
            }
            std::snprintf(line, sizeof line, "  %-26s %10zu %12s %9s %11s %8.2f %10s %8s\n", e.name.c_str(), e.bytes,
                          fmt_time(*t).c_str(), ratio.c_str(), med.c_str(), static_cast<double>(e.bytes) / *t / 1e9,
                          items.c_str(), speedup.c_str());
            os << line;
        }
        os << std::flush;
    }

    std::unique_ptr<benchmark::BenchmarkReporter> inner_;
    std::map<std::string, std::vector<double>> times_;  // function name -> seconds per iteration, per repetition
};

/// Runs the registered benchmarks with the RATIO table; returns main's exit code.
inline int run_main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
#ifndef __OPTIMIZE__
    std::cerr << argv[0] << ": WARNING: built without optimization; numbers are meaningless\n";
#endif
    ratio_reporter reporter(benchmark::CreateDefaultDisplayReporter());
    benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    return 0;
}

}  // namespace hlwq_bench
