// SPDX-License-Identifier: MIT
// Whole-model speed: prefill and decode tokens/s of a Qwen3.5 text model with random weights,
// bf16 (the baseline) against HLWQ Q4 and Q5 weights, in one run (see model_bench.hpp).
//
//   qwen35/<size>/bf16/prefill    forward over a 64-token prompt (chunked prefill: matmul
//                                 path, chunked delta rule)
//   qwen35/<size>/bf16/decode     16 tokens decoded one at a time after it (matvec path,
//                                 recurrent delta rule)
//   qwen35/<size>/PQ4/...         the same model with every linear layer at 4 bits
//   qwen35/<size>/PQ5/...         ... at 5 bits
//
// The model (--qwen35_size=1b, default): 16 layers, three Gated DeltaNet (linear_attention)
// layers to one gated full_attention layer; hidden 2048, MLP 6144 (SwiGLU); full attention 8
// query heads, 2 KV heads, head_dim 256, partial RoPE 0.25; linear attention 16 key and 16
// value heads of 128, conv kernel 4; vocabulary 32768, tied embeddings: about 0.98 B
// parameters. --qwen35_size=tiny is the ctest smoke run.
#include "model_bench.hpp"
#include "qwen35.hpp"

#include <cstdio>
#include <string>
#include <vector>

namespace {

using hlwq_bench::parameter;

struct qwen35_size {
    std::string name;
    int layers = 0, hidden = 0, mlp = 0, heads = 0, kv_heads = 0, head_dim = 0, lk_heads = 0, lv_heads = 0,
        linear_dim = 0, vocab = 0;
};

constexpr int kConvKernel = 4;

bool full_layer(int i) { return (i + 1) % 4 == 0; }  // 3 linear_attention : 1 full_attention

std::vector<parameter> parameters(const qwen35_size& s) {
    std::vector<parameter> p{{"model.embed_tokens.weight", {s.vocab, s.hidden}}, {"model.norm.weight", {s.hidden}}};
    const std::int64_t key_dim = std::int64_t{s.lk_heads} * s.linear_dim, value_dim = std::int64_t{s.lv_heads} * s.linear_dim;
    const std::int64_t conv_dim = 2 * key_dim + value_dim;
    for (int i = 0; i < s.layers; ++i) {
        const std::string l = "model.layers." + std::to_string(i) + ".";
        p.push_back({l + "input_layernorm.weight", {s.hidden}});
        p.push_back({l + "post_attention_layernorm.weight", {s.hidden}});
        if (full_layer(i)) {
            const std::string a = l + "self_attn.";
            p.push_back({a + "q_proj.weight", {2 * s.heads * s.head_dim, s.hidden}, true});  // query and its gate
            p.push_back({a + "k_proj.weight", {s.kv_heads * s.head_dim, s.hidden}, true});
            p.push_back({a + "v_proj.weight", {s.kv_heads * s.head_dim, s.hidden}, true});
            p.push_back({a + "o_proj.weight", {s.hidden, s.heads * s.head_dim}, true});
            p.push_back({a + "q_norm.weight", {s.head_dim}});
            p.push_back({a + "k_norm.weight", {s.head_dim}});
        } else {
            const std::string a = l + "linear_attn.";
            p.push_back({a + "in_proj_qkv.weight", {conv_dim, s.hidden}, true});
            p.push_back({a + "in_proj_z.weight", {value_dim, s.hidden}, true});
            p.push_back({a + "in_proj_b.weight", {s.lv_heads, s.hidden}, true});
            p.push_back({a + "in_proj_a.weight", {s.lv_heads, s.hidden}, true});
            p.push_back({a + "out_proj.weight", {s.hidden, value_dim}, true});
            p.push_back({a + "conv1d.weight", {conv_dim, 1, kConvKernel}});
            p.push_back({a + "A_log", {s.lv_heads}});
            p.push_back({a + "dt_bias", {s.lv_heads}});
            p.push_back({a + "norm.weight", {s.linear_dim}});
        }
        p.push_back({l + "mlp.gate_proj.weight", {s.mlp, s.hidden}, true});
        p.push_back({l + "mlp.up_proj.weight", {s.mlp, s.hidden}, true});
        p.push_back({l + "mlp.down_proj.weight", {s.hidden, s.mlp}, true});
    }
    return p;
}

nlohmann::json config(const qwen35_size& s) {
    std::vector<std::string> types;
    for (int i = 0; i < s.layers; ++i) types.push_back(full_layer(i) ? "full_attention" : "linear_attention");
    return {{"architectures", {"Qwen3_5ForCausalLM"}},
            {"model_type", "qwen3_5_text"},
            {"vocab_size", s.vocab},
            {"hidden_size", s.hidden},
            {"intermediate_size", s.mlp},
            {"num_hidden_layers", s.layers},
            {"num_attention_heads", s.heads},
            {"num_key_value_heads", s.kv_heads},
            {"head_dim", s.head_dim},
            {"layer_types", types},
            {"linear_conv_kernel_dim", kConvKernel},
            {"linear_key_head_dim", s.linear_dim},
            {"linear_value_head_dim", s.linear_dim},
            {"linear_num_key_heads", s.lk_heads},
            {"linear_num_value_heads", s.lv_heads},
            {"max_position_embeddings", 8192},
            {"hidden_act", "silu"},
            {"rms_norm_eps", 1e-6},
            {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}}},
            {"tie_word_embeddings", true},
            {"attention_bias", false}};
}

}  // namespace

int main(int argc, char** argv) {
    // --qwen35_size=1b|tiny (ours), removed before google-benchmark parses the rest.
    const std::string size = hlwq_bench::take_flag(argc, argv, "qwen35_size", "1b");
    qwen35_size s;
    if (size == "1b") s = {"1b", 16, 2048, 6144, 8, 2, 256, 16, 16, 128, 32768};
    else if (size == "tiny") s = {"tiny", 4, 256, 512, 2, 1, 64, 2, 4, 64, 512};
    else {
        std::fprintf(stderr, "bench_qwen35: --qwen35_size must be 1b or tiny\n");
        return 2;
    }
    hlwq_bench::model_folders folders({"qwen35", s.name, config(s), parameters(s), static_cast<std::size_t>(s.vocab)});
    hlwq_bench::register_model_benchmarks(folders, hlwq::rt::load_qwen35);
    return hlwq_bench::run_main(argc, argv);
}
