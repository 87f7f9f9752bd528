// SPDX-License-Identifier: MIT
// Shared by the whole-model benchmarks (bench_gemma4, bench_qwen35, bench_vision):
// random-weight model folders written in the run (bf16, or HLWQ v1 with every linear layer
// quantized), and the prefill/decode benchmarks over a causal_lm loader, bf16 being each
// one's baseline.
//
//   <family>/<size>/<weights>/prefill   forward over a kPrompt-token prompt (chunked prefill,
//                                       the matmul path)
//   <family>/<size>/<weights>/decode    kDecode tokens decoded one at a time after it (matvec)
//
// Items are tokens (Mitems/s = M tokens/s); "speedup" = bf16 time / its time.
#pragma once

#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/quantize.hpp>

#include <benchmark/benchmark.h>

#include "model.hpp"
#include "ratio.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <unistd.h>

namespace hlwq_bench {

namespace fs = std::filesystem;

inline constexpr std::size_t kPrompt = 64, kDecode = 16;

/// Fast reproducible pseudo-random values of a given standard deviation (uniform; the
/// distribution does not matter for speed).
struct random_values {
    std::uint64_t state = 0x9E3779B97F4A7C15ull;
    float next(float sd) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return sd * 3.4641016f * (static_cast<float>(state >> 40) / 16777216.0f - 0.5f);  // √12 · U(-½, ½)
    }
};

/// One tensor of the checkpoint.
struct parameter {
    std::string name;
    std::vector<std::int64_t> shape;
    bool linear = false;  ///< a 2-D linear layer: quantized in the HLWQ folders
    bool keep = false;    ///< a linear layer kept dense there too (as hlwq-quantize keeps embedders)
};

/// A random-weight model: its config.json and tensors.
struct model_spec {
    std::string family;  ///< "gemma4", "qwen35": the benchmark names' prefix
    std::string size;    ///< "1b", "tiny"
    nlohmann::json config;
    std::vector<parameter> params;
    std::size_t vocab = 0;
    std::map<std::string, nlohmann::json> files{};  ///< other JSON files of the folder (preprocessor_config.json)
};

/// Writes the folder of `spec` with weights `bits` (0 = bf16) under `root`. Linear layers get
/// standard deviation 1/√cols (activations stay O(1) through the layers), vectors (norms,
/// biases) 1 ± 0.1, other tensors (embeddings, conv filters) 0.3. Linear layers are quantized
/// unless `keep`.
inline fs::path write_model(const fs::path& root, const model_spec& spec, int bits) {
    const fs::path dir = root / (bits ? "PQ" + std::to_string(bits) : std::string("bf16"));
    fs::create_directories(dir);
    hlwq::io::quantization_config qc;
    qc.bits = bits;
    std::vector<hlwq::io::tensor_spec> specs;
    for (const auto& p : spec.params) {
        if (bits && p.linear && !p.keep) {
            for (auto& s : hlwq::io::quantized_tensor_specs(p.name, p.shape, bits, qc.block_size)) specs.push_back(s);
            qc.tensors[p.name] = {p.shape, bits, {}};
        } else {
            specs.push_back({p.name, hlwq::io::dtype::bf16, p.shape});
        }
    }
    nlohmann::json cfg = spec.config;
    if (bits) cfg = hlwq::io::with_quantization_config(cfg, qc);
    std::ofstream(dir / "config.json") << cfg.dump(1);
    for (const auto& [name, content] : spec.files) std::ofstream(dir / name) << content.dump(1);
    hlwq::io::safetensors_writer out(dir / "model.safetensors", specs);
    random_values rnd;
    for (const auto& p : spec.params) {
        std::size_t n = 1;
        for (auto d : p.shape) n *= static_cast<std::size_t>(d);
        const float sd = p.shape.size() == 1 ? 0.0f : p.linear ? 1.0f / std::sqrt(static_cast<float>(p.shape[1])) : 0.3f;
        std::vector<float> w(n);
        for (float& x : w) x = sd == 0.0f ? 1.0f + rnd.next(0.1f) : rnd.next(sd);
        if (bits && p.linear && !p.keep) {
            const auto q = hlwq::quantize(w, static_cast<std::size_t>(p.shape[0]), static_cast<std::size_t>(p.shape[1]),
                                          bits);
            hlwq::io::write_quantized(out, p.name, q);
        } else {
            std::vector<hlwq::bfloat16> b(w.begin(), w.end());
            out.write(p.name, std::span<const hlwq::bfloat16>(b));
        }
    }
    out.finish();
    return dir;
}

/// The model folders of one spec, written on first use and removed at exit.
class model_folders {
public:
    explicit model_folders(model_spec spec)
        : spec_(std::move(spec)),
          root_(fs::temp_directory_path() / ("hlwq_bench_" + spec_.family + "_" + std::to_string(::getpid()))) {}
    model_folders(const model_folders&) = delete;
    model_folders& operator=(const model_folders&) = delete;
    ~model_folders() {
        std::error_code ec;
        fs::remove_all(root_, ec);
    }
    const model_spec& spec() const { return spec_; }
    const fs::path& get(int bits) {
        auto it = dirs_.find(bits);
        if (it == dirs_.end()) it = dirs_.emplace(bits, write_model(root_, spec_, bits)).first;
        return it->second;
    }

private:
    model_spec spec_;
    fs::path root_;
    std::map<int, fs::path> dirs_;
};

/// Loads a model folder (load_gemma4, load_qwen35).
using model_loader = std::function<std::unique_ptr<hlwq::rt::causal_lm>(const fs::path&, const hlwq::rt::model_options&)>;

/// A fixed prompt of n ids spread over [3, vocab) (ids 3.. avoid the special tokens).
inline std::vector<std::int32_t> prompt_ids(std::size_t vocab, std::size_t n = kPrompt) {
    std::vector<std::int32_t> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<std::int32_t>(3 + (i * 7919) % (vocab - 3));
    return ids;
}

/// Registers prefill and decode of bf16, PQ4 and PQ5 weights (all threads of the machine,
/// int8 activations in the quantized layers: the programs' defaults). The folders live as
/// long as the program: `folders` must outlive the benchmarks' run.
inline void register_model_benchmarks(model_folders& folders, model_loader load) {
    const model_spec& spec = folders.spec();
    const std::string base = spec.family + "/" + spec.size + "/";
    group_notes()["prefill"] = std::to_string(kPrompt) + "-token prompt; items = tokens";
    group_notes()["decode"] = std::to_string(kDecode) + " tokens after the prompt; items = tokens";
    speedup_note() = "bf16 time / its time";
    // All prefills, then all decodes: the RATIO table prints one section per group.
    for (int bits : {0, 4, 5}) {
        const std::string w = bits ? "PQ" + std::to_string(bits) : "bf16";
        add({base + w + "/prefill", "prefill", 0, kPrompt, "", bits ? base + "bf16/prefill" : ""},
            [&folders, load, bits](benchmark::State& st) {
                auto model = load(folders.get(bits), {});
                const auto ids = prompt_ids(folders.spec().vocab);
                std::vector<float> logits(model->vocab_size());
                for (auto _ : st) {
                    model->reset();
                    model->forward(ids, logits, false);
                    benchmark::DoNotOptimize(logits.data());
                }
                st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kPrompt));
                st.counters["weights_MB"] = static_cast<double>(model->weight_bytes()) / 1e6;
            })
            ->Unit(benchmark::kMillisecond)
            ->Iterations(2);
    }
    for (int bits : {0, 4, 5}) {
        const std::string w = bits ? "PQ" + std::to_string(bits) : "bf16";
        add({base + w + "/decode", "decode", 0, kDecode, "", bits ? base + "bf16/decode" : ""},
            [&folders, load, bits](benchmark::State& st) {
                auto model = load(folders.get(bits), {});
                const auto ids = prompt_ids(folders.spec().vocab);
                std::vector<float> logits(model->vocab_size());
                for (auto _ : st) {
                    st.PauseTiming();
                    model->reset();
                    model->forward(ids, logits, false);
                    st.ResumeTiming();
                    for (std::size_t t = 0; t < kDecode; ++t) {
                        const std::int32_t next = static_cast<std::int32_t>(
                            std::max_element(logits.begin(), logits.end()) - logits.begin());
                        model->forward(std::span(&next, 1), logits, false);
                    }
                    benchmark::DoNotOptimize(logits.data());
                }
                st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * kDecode));
            })
            ->Unit(benchmark::kMillisecond)
            ->Iterations(2);
    }
}

/// Takes `--<flag>=value` out of argv (before google-benchmark parses the rest) and returns
/// the value, or `fallback` if the flag is absent.
inline std::string take_flag(int& argc, char** argv, std::string_view flag, std::string fallback) {
    const std::string prefix = "--" + std::string(flag) + "=";
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a.starts_with(prefix)) fallback = std::string(a.substr(prefix.size()));
        else argv[kept++] = argv[i];
    }
    argc = kept;
    return fallback;
}

}  // namespace hlwq_bench
