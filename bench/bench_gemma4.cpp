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
#include "gemma4_spec.hpp"

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    using namespace hlwq_bench;
    // --gemma4_size=1b|tiny (ours), removed before google-benchmark parses the rest.
    const std::string size = take_flag(argc, argv, "gemma4_size", "1b");
    gemma4_size s;
    if (size == "1b") s = gemma4_1b();
    else if (size == "tiny") s = gemma4_tiny();
    else {
        std::fprintf(stderr, "bench_gemma4: --gemma4_size must be 1b or tiny\n");
        return 2;
    }
    model_folders folders({"gemma4", s.name, gemma4_config(s), gemma4_parameters(s), static_cast<std::size_t>(s.vocab)});
    register_model_benchmarks(folders, hlwq::rt::load_gemma4);
    return run_main(argc, argv);
}
