// SPDX-License-Identifier: MIT
// hlwq_demo: quantize synthetic weight matrices at PQ1..PQ8 and print the quality / size
// table of HLWQ model cards, computed live.
//
//   hlwq_demo                          # 1024 x 4096, all widths, both data sets
//   hlwq_demo --bits 2,4 --rows 256    # a subset
//   hlwq_demo --help
//
// Data sets (deterministic for a given --seed, the same on every platform: the generator
// and the distributions are implemented here, not taken from <random>):
//   gaussian  w ~ N(0,1)
//   heavy     w ~ Student-t, 4 degrees of freedom, and every 512th column (0, 512, ...)
//             multiplied by 20: the outlier channels of real LLM weights.
//
// Everything goes to stdout; --no-timing leaves out the wall times (ms), so that the output
// depends only on the options.
// Exit status: 0 ok, 1 error reported by the library (e.g. an invalid --block), 2 usage error.
#include <hlwq/codebook.hpp>
#include <hlwq/quantize.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: hlwq_demo [options]\n"
    "\n"
    "Quantizes synthetic weight matrices (Gaussian N(0,1); Student-t with 4 dof plus a x20\n"
    "outlier column every 512 columns) with HLWQ at the given bit widths and prints, per\n"
    "data set and width: bits per weight (fp16 block norms included), NMSE, cosine\n"
    "similarity, SNR, size and compression against fp16, and the Lloyd-Max limit.\n"
    "\n"
    "options (also --name=value):\n"
    "  --rows N       matrix rows                          (default 1024)\n"
    "  --cols N       matrix columns                       (default 4096)\n"
    "  --block N      columns per block, power of two 16..1024 (default 128)\n"
    "  --threads N    worker threads, 0 = all cores        (default 0)\n"
    "  --seed N       data seed                            (default 1)\n"
    "  --bits LIST    comma-separated widths in 1..8       (default 1,2,3,4,5,6,7,8)\n"
    "  --no-timing    leave out the wall-time columns (output depends only on options)\n"
    "  --help         this text\n"
    "\n"
    "exit status: 0 ok, 1 library error, 2 usage error\n";

struct options {
    std::size_t rows = 1024;
    std::size_t cols = 4096;
    std::size_t block = 128;
    unsigned threads = 0;
    std::uint64_t seed = 1;
    std::vector<int> bits{1, 2, 3, 4, 5, 6, 7, 8};
    bool timing = true;
};

/// A command-line error: printed with the usage hint, exit status 2.
struct usage_error {
    std::string message;
};

template <class T>
T parse_uint(std::string_view flag, std::string_view text, T lo, T hi) {
    T v{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec == std::errc::result_out_of_range || ec != std::errc() ||
        end != text.data() + text.size())
        throw usage_error{std::string(flag) + ": '" + std::string(text) + "' is not a number in " +
                          std::to_string(lo) + ".." + std::to_string(hi)};
    if (v < lo || v > hi)
        throw usage_error{std::string(flag) + ": " + std::string(text) + " is outside " + std::to_string(lo) +
                          ".." + std::to_string(hi)};
    return v;
}

std::vector<int> parse_bits(std::string_view text) {
    std::vector<int> out;
    std::size_t pos = 0;
    while (true) {
        const std::size_t comma = text.find(',', pos);
        const std::string_view item = text.substr(pos, comma == std::string_view::npos ? text.npos : comma - pos);
        const int b = parse_uint<int>("--bits", item, hlwq::min_bits, hlwq::max_bits);
        for (int seen : out)
            if (seen == b) throw usage_error{"--bits: " + std::to_string(b) + " given twice"};
        out.push_back(b);
        if (comma == std::string_view::npos) break;
        pos = comma + 1;
    }
    return out;
}

/// Parses argv; returns nullopt after printing --help.
std::optional<options> parse_args(int argc, char** argv) {
    options o;
    constexpr std::size_t max_dim = std::size_t{1} << 24;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i], flag = arg, value;
        bool has_value = false;
        if (const std::size_t eq = arg.find('='); arg.starts_with("--") && eq != arg.npos) {
            flag = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            has_value = true;
        }
        auto next = [&]() -> std::string_view {
            if (has_value) return value;
            if (i + 1 >= argc) throw usage_error{std::string(flag) + " needs a value"};
            return argv[++i];
        };
        if (flag == "--help" || flag == "-h") {
            if (has_value) throw usage_error{std::string(flag) + " takes no value"};
            std::fputs(kUsage, stdout);
            return std::nullopt;
        } else if (flag == "--no-timing") {
            if (has_value) throw usage_error{std::string(flag) + " takes no value"};
            o.timing = false;
        } else if (flag == "--rows") {
            o.rows = parse_uint<std::size_t>(flag, next(), 1, max_dim);
        } else if (flag == "--cols") {
            o.cols = parse_uint<std::size_t>(flag, next(), 1, max_dim);
        } else if (flag == "--block") {
            // Any number: whether it is a valid block size is the library's call.
            o.block = parse_uint<std::size_t>(flag, next(), 0, std::numeric_limits<std::size_t>::max());
        } else if (flag == "--threads") {
            o.threads = parse_uint<unsigned>(flag, next(), 0, 1024);
        } else if (flag == "--seed") {
            o.seed = parse_uint<std::uint64_t>(flag, next(), 0, std::numeric_limits<std::uint64_t>::max());
        } else if (flag == "--bits") {
            o.bits = parse_bits(next());
        } else {
            throw usage_error{"unknown option '" + std::string(arg) + "'"};
        }
    }
    if (o.rows * o.cols > (std::size_t{1} << 28))
        throw usage_error{"--rows x --cols: " + std::to_string(o.rows * o.cols) +
                          " weights is more than this demo allows (2^28)"};
    return o;
}

// ---------------------------------------------------------------------------------------
// Deterministic data: splitmix64 + Box-Muller.
// ---------------------------------------------------------------------------------------
class rng {
public:
    explicit rng(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next() noexcept {
        std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    /// Uniform in (0, 1]: never 0, so log() is finite.
    double uniform() noexcept { return static_cast<double>((next() >> 11) + 1) * 0x1.0p-53; }
    /// Standard normal (Box-Muller, both values used).
    double normal() noexcept {
        if (spare_) {
            const double v = *spare_;
            spare_.reset();
            return v;
        }
        constexpr double two_pi = 6.283185307179586476925;
        const double r = std::sqrt(-2.0 * std::log(uniform())), t = two_pi * uniform();
        spare_ = r * std::sin(t);
        return r * std::cos(t);
    }
    /// Student-t with 4 degrees of freedom: Z / sqrt(V / 4), V ~ chi^2(4) = -2 ln(U1 U2).
    double student_t4() noexcept {
        const double z = normal();
        const double v = -2.0 * (std::log(uniform()) + std::log(uniform()));
        return z / std::sqrt(v / 4.0);
    }

private:
    std::uint64_t state_;
    std::optional<double> spare_;
};

std::vector<float> gaussian(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::vector<float> w(rows * cols);
    rng g(seed);
    for (float& x : w) x = static_cast<float>(g.normal());
    return w;
}

std::vector<float> heavy_tailed(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    std::vector<float> w(rows * cols);
    rng g(seed ^ 0x5bd1e9955bd1e995ull);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c)
            w[r * cols + c] = static_cast<float>(g.student_t4() * (c % 512 == 0 ? 20.0 : 1.0));
    return w;
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------
struct metrics {
    double nmse = 0, cosine = 0, snr_db = 0;
};

metrics compare(std::span<const float> w, std::span<const float> wq) {
    double err = 0, ref = 0, deq = 0, dot = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double a = w[i], b = wq[i];
        err += (a - b) * (a - b);
        ref += a * a;
        deq += b * b;
        dot += a * b;
    }
    metrics m;
    m.nmse = ref > 0 ? err / ref : 0.0;
    m.cosine = ref > 0 && deq > 0 ? dot / std::sqrt(ref * deq) : 0.0;
    m.snr_db = m.nmse > 0 ? -10.0 * std::log10(m.nmse) : std::numeric_limits<double>::infinity();
    return m;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void run(const options& o) {
    hlwq::check_rotation_size(o.block, "block size");  // fail before generating data
    const hlwq::quantize_options qopts{.block = o.block, .threads = o.threads, .sign_seed = std::nullopt};
    const double fp16_mib = static_cast<double>(o.rows * o.cols) * 2.0 / (1024.0 * 1024.0);

    std::printf("HLWQ (Hadamard-Lloyd Weight Quantization) on synthetic weights\n");
    std::printf("matrix %zu x %zu, block %zu, seed %llu, fp16 size %.2f MiB\n", o.rows, o.cols, o.block,
                static_cast<unsigned long long>(o.seed), fp16_mib);
    std::printf("bpw = stored bits per weight incl. fp16 block norms; NMSE = sum (w - w')^2 / sum w^2;\n"
                "cosine of w and w' (flattened); SNR = -10 log10 NMSE; x fp16 = fp16 size / stored size;\n"
                "LM limit = Lloyd-Max MSE of N(0,1) at that width, what NMSE approaches on Gaussian data\n");
    if (o.timing)
        std::printf("quant/deq ms = wall time of quantize / dequantize; threads %s; backend %s\n",
                    o.threads ? std::to_string(o.threads).c_str()
                              : ("0 = all (" + std::to_string(std::thread::hardware_concurrency()) + ")").c_str(),
                    hlwq::default_backend::name());
    std::fflush(stdout);

    struct data_set {
        const char* name;
        const char* description;
        std::vector<float> (*make)(std::size_t, std::size_t, std::uint64_t);
    };
    const data_set sets[] = {
        {"gaussian", "N(0,1)", gaussian},
        {"heavy", "Student-t(4) + x20 outlier column every 512", heavy_tailed},
    };
    for (const data_set& ds : sets) {
        const std::vector<float> w = ds.make(o.rows, o.cols, o.seed);
        std::vector<float> wq(w.size());

        std::printf("\n%s: %s\n", ds.name, ds.description);
        std::printf("%-4s %6s %12s %10s %8s %9s %7s %12s %10s", "PQ", "bpw", "NMSE", "cosine", "SNR dB", "MiB",
                    "x fp16", "LM limit", "NMSE/limit");
        if (o.timing) std::printf(" %9s %9s", "quant ms", "deq ms");
        std::printf("\n");
        for (int bits : o.bits) {
            auto t0 = std::chrono::steady_clock::now();
            const hlwq::quantized_matrix q = hlwq::quantize(w, o.rows, o.cols, bits, qopts);
            const double q_ms = ms_since(t0);
            t0 = std::chrono::steady_clock::now();
            hlwq::dequantize(q, std::span<float>(wq), o.threads);
            const double dq_ms = ms_since(t0);
            const metrics m = compare(w, wq);
            const double limit = hlwq::lloyd_max_mse(bits);
            const double mib = static_cast<double>(q.storage_bytes()) / (1024.0 * 1024.0);
            std::printf("PQ%-2d %6.3f %12.4e %10.6f %8.2f %9.3f %7.2f %12.4e %10.3f", bits, q.bits_per_weight(),
                        m.nmse, m.cosine, m.snr_db, mib, fp16_mib / mib, limit, m.nmse / limit);
            if (o.timing) std::printf(" %9.1f %9.1f", q_ms, dq_ms);
            std::printf("\n");
            std::fflush(stdout);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::optional<options> o;
    try {
        o = parse_args(argc, argv);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "hlwq_demo: %s\n(run 'hlwq_demo --help' for usage)\n", e.message.c_str());
        return 2;
    }
    if (!o) return 0;
    try {
        run(*o);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
