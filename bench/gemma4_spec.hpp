// SPDX-License-Identifier: MIT
// The random-weight Gemma 4 text model of the whole-model benchmarks (bench_gemma4, and the
// language model under bench_vision's vision tower): its sizes, tensors and config.json.
#pragma once

#include "model_bench.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace hlwq_bench {

struct gemma4_size {
    std::string name;
    int layers = 0, hidden = 0, mlp = 0, heads = 0, kv_heads = 0, head_dim = 0, global_head_dim = 0, vocab = 0,
        window = 0;
};

/// --gemma4_size=1b: 16 layers (sliding window 512, full attention every 6th and the last,
/// head_dim 256 / 512), hidden 2048, MLP 8192, 8 query heads, 2 KV heads, vocabulary 32768,
/// tied embeddings: about 1.0 B parameters. "tiny" is the smoke runs' model.
inline gemma4_size gemma4_1b() { return {"1b", 16, 2048, 8192, 8, 2, 256, 512, 32768, 512}; }
inline gemma4_size gemma4_tiny() { return {"tiny", 2, 256, 512, 2, 1, 64, 128, 512, 64}; }

inline std::vector<std::string> gemma4_layer_types(const gemma4_size& s) {
    std::vector<std::string> t;
    for (int i = 0; i < s.layers; ++i)
        t.push_back((i + 1) % 6 == 0 || i + 1 == s.layers ? "full_attention" : "sliding_attention");
    return t;
}

/// The text model's tensors; `prefix` is "model." (Gemma4ForCausalLM) or
/// "model.language_model." (inside Gemma4ForConditionalGeneration).
inline std::vector<parameter> gemma4_parameters(const gemma4_size& s, const std::string& prefix = "model.") {
    std::vector<parameter> p{{prefix + "embed_tokens.weight", {s.vocab, s.hidden}}, {prefix + "norm.weight", {s.hidden}}};
    const auto types = gemma4_layer_types(s);
    for (int i = 0; i < s.layers; ++i) {
        const std::string l = prefix + "layers." + std::to_string(i) + ".";
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

/// config.json of the text model (Gemma4ForCausalLM; also text_config of a multimodal one).
inline nlohmann::json gemma4_config(const gemma4_size& s) {
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
            {"layer_types", gemma4_layer_types(s)},
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

}  // namespace hlwq_bench
