// SPDX-License-Identifier: MIT
// Conversion benchmark: hlwq-quantize on a synthetic bf16 model folder, next to copying the
// same weights file (std::filesystem::copy_file), both measured in the same run.
//
//   convert/copy   copy model.safetensors to another file in the same temp folder (baseline)
//   convert/PQ4    hlwq-quantize IN OUT --bits 4 --force (all cores), run as a child process
//   convert/PQ2    the same at 2 bits
//
// The model: N bf16 tensors [rows, 4096] named model.layers.<i>.mlp.down_proj.weight
// (Gaussian values, all quantized), written once to a temp folder and removed at exit. Its
// size in MB is --convert_mb=N (default 2048, i.e. about 2 GB), or the environment variable
// HLWQ_BENCH_CONVERT_MB; the ctest smoke run uses a tiny one. The file is in the page cache
// after it is written, so copy and conversion both read from memory.
//
// Counters: weights/s (items_per_second), input bytes/s, and peak_rss_MB, the child's peak
// resident set (wait4's ru_maxrss): the converter streams, so it stays near one tensor plus
// buffers whatever the model size. The RATIO table's "x memcpy" column is, here, the time
// over the time of convert/copy.
#include <hlwq/float16.hpp>
#include <hlwq/io/safetensors.hpp>

#include <benchmark/benchmark.h>

#include "ratio.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

namespace fs = std::filesystem;

std::size_t g_model_mb = 2048;

/// Shape of the synthetic model: `count` tensors of rows x 4096 bf16 weights, about
/// g_model_mb MB in all.
struct model_shape {
    std::size_t rows = 0, cols = 4096, count = 0;
    std::size_t weights() const { return rows * cols * count; }
};
model_shape shape() {
    model_shape s;
    const std::size_t total = g_model_mb << 20;
    s.rows = std::max<std::size_t>(16, std::min<std::size_t>(4096, total / (s.cols * 2)));
    s.count = std::max<std::size_t>(1, total / (s.rows * s.cols * 2));
    return s;
}

/// The synthetic model folder, written on first use and removed at exit.
struct model_folder {
    fs::path dir;
    std::uint64_t weights = 0;
    std::uint64_t bytes = 0;

    model_folder() {
        dir = fs::temp_directory_path() / ("hlwq_bench_convert_" + std::to_string(::getpid()));
        fs::create_directories(dir / "in");
        std::ofstream(dir / "in" / "config.json") << R"({"model_type": "synthetic", "tie_word_embeddings": true})";
        const model_shape sh = shape();
        const std::size_t rows = sh.rows, cols = sh.cols, count = sh.count;
        std::vector<hlwq::bfloat16> w(rows * cols);
        std::mt19937 rng(1);
        std::normal_distribution<float> normal(0.0f, 0.02f);
        for (auto& x : w) x = hlwq::bfloat16(normal(rng));
        std::vector<hlwq::io::tensor_spec> specs;
        for (std::size_t i = 0; i < count; ++i)
            specs.push_back({"model.layers." + std::to_string(i) + ".mlp.down_proj.weight", hlwq::io::dtype::bf16,
                             {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)}});
        hlwq::io::safetensors_writer out(dir / "in" / "model.safetensors", specs);
        for (const auto& s : specs) out.write(s.name, std::span<const hlwq::bfloat16>(w));
        out.finish();
        weights = count * rows * cols;
        bytes = fs::file_size(dir / "in" / "model.safetensors");
    }
    ~model_folder() {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

model_folder& model() {
    static model_folder m;
    return m;
}

/// Runs hlwq-quantize on the model; returns the child's peak RSS in bytes.
double convert(int bits) {
    model_folder& m = model();
    const std::string in = (m.dir / "in").string(), out = (m.dir / "out").string(), b = std::to_string(bits);
    std::vector<std::string> args{HLWQ_QUANTIZE_EXE, in, out, "--bits", b, "--force"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error(std::string("cannot start hlwq-quantize: ") + std::strerror(rc));
    int status = 0;
    struct rusage ru {};
    if (::wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error("hlwq-quantize failed");
    return static_cast<double>(ru.ru_maxrss) * 1024.0;  // kB on Linux
}

void register_all() {
    hlwq_bench::group_notes()["convert"] =
        "synthetic bf16 model; 'x memcpy' = time / time of convert/copy (copy_file of the same file)";
    const std::size_t weights = shape().weights(), bytes = 2 * weights;
    hlwq_bench::add({"convert/copy", "convert", bytes, weights, "", ""}, [](benchmark::State& st) {
        model_folder& m = model();
        for (auto _ : st) {
            fs::copy_file(m.dir / "in" / "model.safetensors", m.dir / "copy.safetensors",
                          fs::copy_options::overwrite_existing);
        }
        fs::remove(m.dir / "copy.safetensors");
        st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * m.weights));
        st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * m.bytes));
    })->Unit(benchmark::kMillisecond);
    for (int bits : {4, 2}) {
        const std::string name = "convert/PQ" + std::to_string(bits);
        hlwq_bench::add({name, "convert", bytes, weights, "convert/copy", ""}, [bits](benchmark::State& st) {
            model_folder& m = model();
            double rss = 0;
            for (auto _ : st) rss = std::max(rss, convert(bits));
            st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * m.weights));
            st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * m.bytes));
            st.counters["peak_rss_MB"] = rss / 1e6;
            st.counters["model_MB"] = static_cast<double>(m.bytes) / 1e6;
        })->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (const char* env = std::getenv("HLWQ_BENCH_CONVERT_MB")) g_model_mb = std::strtoull(env, nullptr, 10);
    // --convert_mb=N (ours), removed before google-benchmark parses the rest.
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a.starts_with("--convert_mb=")) g_model_mb = std::strtoull(argv[i] + 13, nullptr, 10);
        else argv[kept++] = argv[i];
    }
    argc = kept;
    if (g_model_mb == 0) {
        std::fprintf(stderr, "bench_convert: the model size must be at least 1 MB\n");
        return 1;
    }
    register_all();
    const int rc = hlwq_bench::run_main(argc, argv);
    return rc;
}
