// SPDX-License-Identifier: MIT
// Whole-model speed: prefill and decode tokens/s of a Gemma 4 text model with random weights,
// bf16 (the baseline) against HLWQ Q4 and Q5 weights, in one run.
//
//   gemma4/<size>/bf16/prefill    forward over a 64-token prompt (chunked prefill, matmul path)
//   gemma4/<size>/bf16/decode     16 tokens decoded one at a time after it (matvec path)
//   gemma4/<size>/PQ4/...         the same model with every linear layer at 4 bits
//   gemma4/<size>/PQ5/...         ... at 5 bits
//
// The model (--gemma4_size=1b, default): 16 layers (sliding window 512, full attention every
// 6th and the last, head_dim 256 / 512), hidden 2048, MLP 8192, 8 query heads, 2 KV heads,
// vocabulary 32768, tied embeddings: about 1.0 B parameters. --gemma4_size=tiny is the ctest
// smoke run. The folders (config.json + model.safetensors, bf16 or HLWQ v1) are written to a
// temp directory once and removed at exit; loading maps them. All threads of the machine,
// int8 activations in the quantized layers (the programs' default).
//
// Items are tokens: Mitems/s = M tokens/s; the "speedup" column is bf16 time / its time.
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/quantize.hpp>

#include <benchmark/benchmark.h>

#include "gemma4.hpp"
#include "ratio.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;

struct gemma4_size {
    std::string name;
    int layers = 0, hidden = 0, mlp = 0, heads = 0, kv_heads = 0, head_dim = 0, global_head_dim = 0, vocab = 0,
        window = 0;
};

gemma4_size g_size{"1b", 16, 2048, 8192, 8, 2, 256, 512, 32768, 512};
constexpr std::size_t kPrompt = 64, kDecode = 16;

std::vector<std::string> layer_types(const gemma4_size& s) {
    std::vector<std::string> t;
    for (int i = 0; i < s.layers; ++i)
        t.push_back((i + 1) % 6 == 0 || i + 1 == s.layers ? "full_attention" : "sliding_attention");
    return t;
}

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

struct parameter {
    std::string name;
    std::vector<std::int64_t> shape;
    bool linear = false;  // quantized in the HLWQ folders
};

std::vector<parameter> parameters(const gemma4_size& s) {
    std::vector<parameter> p{{"model.embed_tokens.weight", {s.vocab, s.hidden}}, {"model.norm.weight", {s.hidden}}};
    const auto types = layer_types(s);
    for (int i = 0; i < s.layers; ++i) {
        const std::string l = "model.layers." + std::to_string(i) + ".";
        const std::int64_t hd = types[static_cast<std::size_t>(i)] == "full_attention" ? s.global_head_dim : s.head_dim;
        for (const char* n : {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                              "post_feedforward_layernorm"})
            p.push_back({l + n + ".weight", {s.hidden}});
        p.push_back({l + "layer_scalar", {1}});
        p.push_back({l + "self_attn.q_norm.weight", {hd}});
        p.push_back({l + "self_attn.k_norm.weight", {hd}});
        p.push_back({l + "self_attn.q_proj.weight", {s.heads * hd, s.hidden}, true});
        p.push_back({l + "self_attn.k_proj.weight", {s.kv_heads * hd, s.hidden}, true});
        p.push_back({l + "self_attn.v_proj.weight", {s.kv_heads * hd, s.hidden}, true});
        p.push_back({l + "self_attn.o_proj.weight", {s.hidden, s.heads * hd}, true});
        p.push_back({l + "mlp.gate_proj.weight", {s.mlp, s.hidden}, true});
        p.push_back({l + "mlp.up_proj.weight", {s.mlp, s.hidden}, true});
        p.push_back({l + "mlp.down_proj.weight", {s.hidden, s.mlp}, true});
    }
    return p;
}

nlohmann::json config(const gemma4_size& s) {
    return {{"architectures", {"Gemma4ForCausalLM"}},
            {"model_type", "gemma4_text"},
            {"vocab_size", s.vocab},
            {"hidden_size", s.hidden},
            {"intermediate_size", s.mlp},
            {"num_hidden_layers", s.layers},
            {"num_attention_heads", s.heads},
            {"num_key_value_heads", s.kv_heads},
            {"head_dim", s.head_dim},
            {"per_layer_config", [&] {
                 nlohmann::json j = nlohmann::json::object();
                 const auto types = layer_types(s);
                 for (std::size_t i = 0; i < types.size(); ++i)
                     if (types[i] == "full_attention") j[std::to_string(i)] = {{"head_dim", s.global_head_dim}};
                 return j;
             }()},
            {"layer_types", layer_types(s)},
            {"sliding_window", s.window},
            {"max_position_embeddings", 8192},
            {"hidden_activation", "gelu_pytorch_tanh"},
            {"rms_norm_eps", 1e-6},
            {"rope_parameters",
             {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
              {"full_attention", {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.25}, {"rope_theta", 1e6}}}}},
            {"final_logit_softcapping", 30.0},
            {"tie_word_embeddings", true},
            {"attention_bias", false},
            {"attention_k_eq_v", false},
            {"num_kv_shared_layers", 0},
            {"hidden_size_per_layer_input", 0},
            {"vocab_size_per_layer_input", s.vocab},
            {"enable_moe_block", false},
            {"use_double_wide_mlp", false},
            {"bos_token_id", 2},
            {"eos_token_id", 1},
            {"pad_token_id", 0}};
}

/// Writes the model folder for `bits` (0 = bf16) and returns it.
fs::path write_model(const fs::path& root, int bits) {
    const fs::path dir = root / (bits ? "PQ" + std::to_string(bits) : std::string("bf16"));
    fs::create_directories(dir);
    const auto params = parameters(g_size);
    hlwq::io::quantization_config qc;
    qc.bits = bits;
    std::vector<hlwq::io::tensor_spec> specs;
    for (const auto& p : params) {
        if (bits && p.linear) {
            for (auto& s : hlwq::io::quantized_tensor_specs(p.name, p.shape, bits, qc.block_size)) specs.push_back(s);
            qc.tensors[p.name] = {p.shape, bits, {}};
        } else {
            specs.push_back({p.name, hlwq::io::dtype::bf16, p.shape});
        }
    }
    nlohmann::json cfg = config(g_size);
    if (bits) cfg = hlwq::io::with_quantization_config(cfg, qc);
    std::ofstream(dir / "config.json") << cfg.dump(1);
    hlwq::io::safetensors_writer out(dir / "model.safetensors", specs);
    random_values rnd;
    for (const auto& p : params) {
        std::size_t n = 1;
        for (auto d : p.shape) n *= static_cast<std::size_t>(d);
        const float sd = p.shape.size() == 1 ? 0.0f : p.linear ? 1.0f / std::sqrt(static_cast<float>(p.shape[1])) : 0.3f;
        std::vector<float> w(n);
        for (float& x : w) x = sd == 0.0f ? 1.0f + rnd.next(0.1f) : rnd.next(sd);
        if (bits && p.linear) {
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

/// The three model folders, written on first use and removed at exit.
struct model_folders {
    fs::path root = fs::temp_directory_path() / ("hlwq_bench_gemma4_" + std::to_string(::getpid()));
    std::map<int, fs::path> dirs;
    const fs::path& get(int bits) {
        auto it = dirs.find(bits);
        if (it == dirs.end()) it = dirs.emplace(bits, write_model(root, bits)).first;
        return it->second;
    }
    ~model_folders() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
};

model_folders& folders() {
    static model_folders f;
    return f;
}

std::vector<std::int32_t> prompt_ids() {
    std::vector<std::int32_t> ids(kPrompt);
    for (std::size_t i = 0; i < kPrompt; ++i) ids[i] = static_cast<std::int32_t>(3 + (i * 7919) % (g_size.vocab - 3));
    return ids;
}

void register_all() {
    const std::string base = "gemma4/" + g_size.name + "/";
    hlwq_bench::group_notes()["prefill"] = std::to_string(kPrompt) + "-token prompt; items = tokens";
    hlwq_bench::group_notes()["decode"] = std::to_string(kDecode) + " tokens after the prompt; items = tokens";
    hlwq_bench::speedup_note() = "bf16 time / its time";
    for (int bits : {0, 4, 5}) {
        const std::string w = bits ? "PQ" + std::to_string(bits) : "bf16";
        hlwq_bench::add({base + w + "/prefill", "prefill", 0, kPrompt, "", bits ? base + "bf16/prefill" : ""},
                        [bits](benchmark::State& st) {
                            auto model = hlwq::rt::load_gemma4(folders().get(bits), {});
                            const auto ids = prompt_ids();
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
        hlwq_bench::add({base + w + "/decode", "decode", 0, kDecode, "", bits ? base + "bf16/decode" : ""},
                        [bits](benchmark::State& st) {
                            auto model = hlwq::rt::load_gemma4(folders().get(bits), {});
                            const auto ids = prompt_ids();
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

}  // namespace

int main(int argc, char** argv) {
    // --gemma4_size=1b|tiny (ours), removed before google-benchmark parses the rest.
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--gemma4_size=tiny") g_size = {"tiny", 2, 256, 512, 2, 1, 64, 128, 512, 64};
        else if (a == "--gemma4_size=1b") continue;
        else if (a.starts_with("--gemma4_size=")) {
            std::fprintf(stderr, "bench_gemma4: --gemma4_size must be 1b or tiny\n");
            return 2;
        } else argv[kept++] = argv[i];
    }
    argc = kept;
    register_all();
    return hlwq_bench::run_main(argc, argv);
}
