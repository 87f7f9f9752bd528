// SPDX-License-Identifier: MIT
// Whole-model speed: prefill and decode tokens/s of a Gemma 4 text model with random weights,
// bf16 (the baseline) against HLWQ Q4 and Q5 weights, in one run (see model_bench.hpp).
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
// temp directory once and removed at exit; loading maps them.
#include "gemma4.hpp"
#include "model_bench.hpp"

#include <cstdio>
#include <string>
#include <vector>

namespace {

using hlwq_bench::parameter;

struct gemma4_size {
    std::string name;
    int layers = 0, hidden = 0, mlp = 0, heads = 0, kv_heads = 0, head_dim = 0, global_head_dim = 0, vocab = 0,
        window = 0;
};

std::vector<std::string> layer_types(const gemma4_size& s) {
    std::vector<std::string> t;
    for (int i = 0; i < s.layers; ++i)
        t.push_back((i + 1) % 6 == 0 || i + 1 == s.layers ? "full_attention" : "sliding_attention");
    return t;
}

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
            {"global_head_dim", s.global_head_dim},
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

}  // namespace

int main(int argc, char** argv) {
    // --gemma4_size=1b|tiny (ours), removed before google-benchmark parses the rest.
    const std::string size = hlwq_bench::take_flag(argc, argv, "gemma4_size", "1b");
    gemma4_size s;
    if (size == "1b") s = {"1b", 16, 2048, 8192, 8, 2, 256, 512, 32768, 512};
    else if (size == "tiny") s = {"tiny", 2, 256, 512, 2, 1, 64, 128, 512, 64};
    else {
        std::fprintf(stderr, "bench_gemma4: --gemma4_size must be 1b or tiny\n");
        return 2;
    }
    hlwq_bench::model_folders folders({"gemma4", s.name, config(s), parameters(s), static_cast<std::size_t>(s.vocab)});
    hlwq_bench::register_model_benchmarks(folders, hlwq::rt::load_gemma4);
    return hlwq_bench::run_main(argc, argv);
}
