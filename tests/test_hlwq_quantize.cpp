// Tests of the hlwq-quantize program (examples/hlwq_quantize.cpp), run as a child process on
// small model folders written here. HLWQ_QUANTIZE_EXE is the program's path;
// HLWQ_REAL_MODEL_DIR, when defined, a real Hugging Face folder to convert.
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/io/shards.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace hlwq::io;
using json = nlohmann::json;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        static std::atomic<int> counter{0};
        const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
        path = fs::temp_directory_path() / ("hlwq_q_" + std::to_string(::getpid()) + "_" + std::to_string(stamp) + "_" +
                                            std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct result {
    int rc = -1;
    std::string out, err;
};

/// Runs hlwq-quantize with `args` (already shell-quoted where needed), optionally after a
/// shell `prefix` (e.g. "ulimit -f 64;").
result run(const std::string& args, const temp_dir& d, const std::string& prefix = "") {
    const std::string cmd = prefix + " '" HLWQ_QUANTIZE_EXE "' " + args + " > '" + (d / "stdout").string() + "' 2> '" +
                            (d / "stderr").string() + "'";
    const int status = std::system(("sh -c \"" + cmd + "\"").c_str());
    result r;
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    r.out = slurp(d / "stdout");
    r.err = slurp(d / "stderr");
    return r;
}

bool no_temp_left(const fs::path& out) {
    for (const auto& e : fs::directory_iterator(out.parent_path()))
        if (e.path().filename().string().starts_with(out.filename().string() + ".tmp-")) return false;
    return true;
}

/// Bytes of tensor data in a safetensors file (what transformers' total_size counts).
std::uint64_t data_bytes(const fs::path& file) {
    const safetensors_file f = safetensors_file::open(file);
    std::uint64_t n = 0;
    for (const auto& e : f.buffer().entries()) n += e.end - e.begin;
    return n;
}

/// The .safetensors files of a folder, by name.
std::set<std::string> safetensors_files(const fs::path& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") out.insert(e.path().filename().string());
    return out;
}

// ---------------------------------------------------------------------------------------
// A fake Hugging Face model folder.
// ---------------------------------------------------------------------------------------
struct fake_tensor {
    std::string name;
    dtype type = dtype::bf16;
    std::vector<std::int64_t> shape;
    std::vector<float> values;  // stored rounded to `type`
    int expect_bits = 0;        // what PQ2-Mixed should do; 0 = kept
};

struct fake_model {
    std::vector<fake_tensor> tensors;

    fake_model() {
        unsigned seed = 1;
        const auto add = [&](std::string name, dtype t, std::vector<std::int64_t> shape, int bits) {
            std::size_t n = 1;
            for (auto d : shape) n *= static_cast<std::size_t>(d);
            auto v = hlwq_test::gaussian(n, seed++);
            for (float& x : v) x *= 0.05f;
            tensors.push_back({std::move(name), t, std::move(shape), std::move(v), bits});
        };
        add("model.embed_tokens.weight", dtype::bf16, {64, 256}, 0);
        for (int l = 0; l < 2; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".";
            add(p + "input_layernorm.weight", dtype::bf16, {256}, 0);
            add(p + "post_attention_layernorm.weight", dtype::bf16, {256}, 0);
            add(p + "self_attn.q_proj.weight", dtype::bf16, {256, 256}, 4);
            add(p + "self_attn.q_proj.bias", dtype::bf16, {256}, 0);
            add(p + "self_attn.k_proj.weight", dtype::bf16, {128, 256}, 4);
            add(p + "self_attn.v_proj.weight", dtype::f16, {128, 256}, 4);
            add(p + "self_attn.o_proj.weight", dtype::bf16, {256, 256}, 4);
            add(p + "self_attn.q_norm.weight", dtype::bf16, {64}, 0);
            add(p + "mlp.gate_proj.weight", dtype::bf16, {512, 256}, 2);
            add(p + "mlp.up_proj.weight", dtype::bf16, {512, 256}, 2);
            add(p + "mlp.down_proj.weight", dtype::f32, {256, 300}, 2);
        }
        add("model.layers.1.mlp.gate.weight", dtype::bf16, {4, 256}, 0);  // MoE router
        add("model.layers.1.mlp.experts.gate_up_proj", dtype::bf16, {4, 64, 256}, 2);
        add("model.layers.1.mlp.experts.down_proj", dtype::bf16, {4, 256, 32}, 0);  // < 128 columns
        add("model.vision_tower.encoder.layers.0.self_attn.q_proj.weight", dtype::bf16, {128, 256}, 0);
        // Embeddings that an 'embed' rule must not quantize: a vision one (a vision tensor
        // first) and a narrow one (< 128 columns).
        add("model.embed_vision.embedding_projection.weight", dtype::bf16, {64, 256}, 0);
        add("model.embed_tokens_per_layer.weight", dtype::bf16, {64, 96}, 0);
        add("model.norm.weight", dtype::f32, {256}, 0);
        for (fake_tensor& t : tensors) t.values = stored_values(t);
    }

    static std::vector<float> stored_values(const fake_tensor& t) {
        std::vector<float> v = t.values;
        for (float& x : v) {
            if (t.type == dtype::bf16) x = static_cast<float>(hlwq::bfloat16(x));
            if (t.type == dtype::f16) x = static_cast<float>(hlwq::half(x));
        }
        return v;
    }

    static std::vector<std::byte> bytes(const fake_tensor& t) {
        std::vector<std::byte> out(t.values.size() * dtype_size(t.type));
        for (std::size_t i = 0; i < t.values.size(); ++i) {
            if (t.type == dtype::bf16) {
                const hlwq::bfloat16 b(t.values[i]);
                std::memcpy(out.data() + 2 * i, &b, 2);
            } else if (t.type == dtype::f16) {
                const hlwq::half h(t.values[i]);
                std::memcpy(out.data() + 2 * i, &h, 2);
            } else {
                std::memcpy(out.data() + 4 * i, &t.values[i], 4);
            }
        }
        return out;
    }

    const fake_tensor& at(const std::string& name) const {
        for (const fake_tensor& t : tensors)
            if (t.name == name) return t;
        throw std::logic_error("no " + name);
    }

    /// Writes config, tokenizer stubs and weights (in `shards` files, round robin).
    void write(const fs::path& dir, int shards = 1) const {
        fs::create_directories(dir);
        std::ofstream(dir / "config.json") << json{{"model_type", "fake"}, {"hidden_size", 256},
                                                   {"tie_word_embeddings", true}}.dump(2);
        std::ofstream(dir / "tokenizer.json") << R"({"version": "1.0", "model": {"type": "BPE"}})";
        std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<bos>"})";
        std::ofstream(dir / "chat_template.jinja") << "{{ messages }}";
        json weight_map = json::object();
        for (int s = 0; s < shards; ++s) {
            const std::string file = shards == 1 ? "model.safetensors"
                                                 : "model-0000" + std::to_string(s + 1) + "-of-0000" +
                                                       std::to_string(shards) + ".safetensors";
            std::vector<tensor_spec> specs;
            std::vector<const fake_tensor*> mine;
            for (std::size_t i = 0; i < tensors.size(); ++i)
                if (static_cast<int>(i % static_cast<std::size_t>(shards)) == s) {
                    specs.push_back({tensors[i].name, tensors[i].type, tensors[i].shape});
                    mine.push_back(&tensors[i]);
                    weight_map[tensors[i].name] = file;
                }
            safetensors_writer w(dir / file, specs);
            for (const fake_tensor* t : mine) {
                const auto b = bytes(*t);
                w.write(t->name, std::span<const std::byte>(b));
            }
            w.finish();
        }
        if (shards > 1)
            std::ofstream(dir / "model.safetensors.index.json") << json{{"metadata", json::object()},
                                                                        {"weight_map", weight_map}}.dump(2);
    }
};

/// The expected quantization of a fake tensor: per expert for 3-D.
std::vector<hlwq::quantized_matrix> expected_quantization(const fake_tensor& t, int bits) {
    const std::size_t experts = t.shape.size() == 3 ? static_cast<std::size_t>(t.shape[0]) : 1;
    const auto rows = static_cast<std::size_t>(t.shape[t.shape.size() - 2]), cols = static_cast<std::size_t>(t.shape.back());
    std::vector<hlwq::quantized_matrix> out;
    for (std::size_t e = 0; e < experts; ++e) {
        const std::vector<float> slice(t.values.begin() + static_cast<std::ptrdiff_t>(e * rows * cols),
                                       t.values.begin() + static_cast<std::ptrdiff_t>((e + 1) * rows * cols));
        out.push_back(hlwq::quantize(slice, rows, cols, bits));
    }
    return out;
}

double nmse(const std::vector<float>& w, const std::vector<float>& back) {
    double e = 0, r = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        e += (double(w[i]) - back[i]) * (double(w[i]) - back[i]);
        r += double(w[i]) * w[i];
    }
    return e / r;
}

/// Checks OUT against the fake model and the bits `expect(t)` gives each tensor.
template <class Expect>
void check_output(const fs::path& out, const fs::path& in, const fake_model& m, Expect&& expect) {
    const checkpoint c = checkpoint::open(out);
    REQUIRE(c.format() == checkpoint_format::hlwq);
    CHECK(c.names().size() == m.tensors.size());
    const checkpoint orig = checkpoint::open(in);
    for (const fake_tensor& t : m.tensors) {
        CAPTURE(t.name);
        const int bits = expect(t);
        REQUIRE(c.contains(t.name));
        CHECK(c.shape(t.name) == t.shape);
        if (bits == 0) {
            REQUIRE_FALSE(c.is_quantized(t.name));
            const auto a = c.dense(t.name), b = orig.dense(t.name);
            CHECK(a.type == b.type);
            CHECK((a.data.size() == b.data.size() && std::memcmp(a.data.data(), b.data.data(), a.data.size()) == 0));
            continue;
        }
        REQUIRE(c.is_quantized(t.name));
        CHECK(c.bits(t.name) == bits);
        const auto expected = expected_quantization(t, bits);
        for (std::size_t e = 0; e < expected.size(); ++e) {
            const auto v = t.shape.size() == 3 ? c.quantized(t.name, e) : c.quantized(t.name);
            CHECK(std::equal(v.codes.begin(), v.codes.end(), expected[e].codes.begin(), expected[e].codes.end()));
            CHECK(hlwq::dequantize(v) == hlwq::dequantize(expected[e]));
        }
        if (t.shape.size() == 3) CHECK(c.experts(t.name) == static_cast<std::size_t>(t.shape[0]));
    }
    // Small files copied unchanged, config kept and extended.
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}) CHECK(slurp(out / f) == slurp(in / f));
    const json cfg = json::parse(slurp(out / "config.json"));
    CHECK(cfg["model_type"] == "fake");
    CHECK(cfg["hidden_size"] == 256);
    CHECK(cfg["quantization_config"]["quant_method"] == "hlwq");
    CHECK(cfg["quantization_config"]["format_version"] == 1);
}

}  // namespace

TEST_CASE("hlwq-quantize PQ2-Mixed: bits per tensor, kept tensors byte-identical, report and JSON") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --recipe PQ2-Mixed --threads 2 --json '" +
                           (d / "report.json").string() + "'",
                       d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    CHECK(no_temp_left(d / "out"));
    check_output(d / "out", d / "in", m, [](const fake_tensor& t) { return t.expect_bits; });

    // The report: counts per width, sizes, NMSE.
    int n2 = 0, n4 = 0, kept = 0;
    std::uint64_t w2 = 0;
    for (const fake_tensor& t : m.tensors) {
        n2 += t.expect_bits == 2;
        n4 += t.expect_bits == 4;
        kept += t.expect_bits == 0;
        if (t.expect_bits == 2) w2 += t.values.size();
    }
    CHECK(r.out.find("tensors: " + std::to_string(n2 + n4) + " quantized, " + std::to_string(kept) + " kept") !=
          std::string::npos);
    CHECK(r.out.find("recipe PQ2-Mixed") != std::string::npos);
    CHECK(r.out.find("worst 10:") != std::string::npos);
    const json j = json::parse(slurp(d / "report.json"));
    CHECK(j["bits"]["2"]["tensors"] == n2);
    CHECK(j["bits"]["2"]["weights"] == w2);
    CHECK(j["bits"]["4"]["tensors"] == n4);
    CHECK(j["kept"]["tensors"] == kept);
    CHECK(j["input_bytes"] == fs::file_size(d / "in" / "model.safetensors"));
    CHECK(j["output_bytes"] == fs::file_size(d / "out" / "model.safetensors"));
    CHECK(j["compression_ratio"].get<double>() ==
          doctest::Approx(double(fs::file_size(d / "in" / "model.safetensors")) / double(fs::file_size(d / "out" / "model.safetensors"))));
    CHECK(j["compression_ratio"].get<double>() > 2.0);
    CHECK(j["recipe"] == "PQ2-Mixed");
    CHECK(j["worst"].size() == 10);
    REQUIRE(j["tensors"].size() == static_cast<std::size_t>(n2 + n4));
    double mean = 0;
    for (const json& e : j["tensors"]) {
        const fake_tensor& t = m.at(e["name"]);
        CAPTURE(t.name);
        CHECK(e["bits"] == t.expect_bits);
        CHECK(e["shape"] == json(t.shape));
        // The NMSE it reports is the NMSE of the weights it wrote.
        std::vector<float> back;
        for (const auto& q : expected_quantization(t, t.expect_bits)) {
            const auto b = hlwq::dequantize(q);
            back.insert(back.end(), b.begin(), b.end());
        }
        CHECK(e["nmse"].get<double>() == doctest::Approx(nmse(t.values, back)).epsilon(1e-6));
        CHECK(e["nmse"].get<double>() < 1.2 * hlwq::lloyd_max_mse(t.expect_bits));
        mean += e["nmse"].get<double>();
    }
    CHECK(j["nmse_mean"].get<double>() == doctest::Approx(mean / double(n2 + n4)));
}

TEST_CASE("hlwq-quantize: sharded input gives sharded output with an index; --include-vision; uniform bits") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in", 2);
    const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 3 --include-vision", d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    CHECK(fs::exists(d / "out" / "model-00001-of-00002.safetensors"));
    CHECK(fs::exists(d / "out" / "model-00002-of-00002.safetensors"));
    CHECK_FALSE(fs::exists(d / "out" / "model.safetensors"));
    const json idx = json::parse(slurp(d / "out" / "model.safetensors.index.json"));
    const json in_idx = json::parse(slurp(d / "in" / "model.safetensors.index.json"));
    CHECK(idx["weight_map"]["model.layers.0.self_attn.q_proj.weight.codes"] ==
          in_idx["weight_map"]["model.layers.0.self_attn.q_proj.weight"]);
    CHECK(idx["weight_map"]["model.layers.0.self_attn.k_proj.weight.norms"] ==
          in_idx["weight_map"]["model.layers.0.self_attn.k_proj.weight"]);
    CHECK(idx["weight_map"]["model.norm.weight"] == in_idx["weight_map"]["model.norm.weight"]);
    // transformers' total_size: tensor data, headers not counted.
    CHECK(idx["metadata"]["total_size"] == data_bytes(d / "out" / "model-00001-of-00002.safetensors") +
                                               data_bytes(d / "out" / "model-00002-of-00002.safetensors"));
    check_output(d / "out", d / "in", m, [](const fake_tensor& t) {
        // embed_vision is then an embedding, kept without a rule naming it.
        return t.expect_bits ? 3 : t.name.find("vision_tower") != std::string::npos ? 3 : 0;
    });
    // Not a terminal: plain progress lines.
    CHECK(r.err.find("[1/") != std::string::npos);
    CHECK(r.err.find('\r') == std::string::npos);
}

TEST_CASE("hlwq-quantize: a recipe file, first match wins, \"keep\"") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    std::ofstream(d / "recipe.json") << R"({"default": 5, "rules": [
        {"pattern": "layers\\.0\\.mlp", "bits": "keep"},
        {"pattern": "down_proj", "bits": 6},
        {"pattern": "mlp", "bits": 1}]})";
    const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --recipe '" +
                           (d / "recipe.json").string() + "'",
                       d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    check_output(d / "out", d / "in", m, [](const fake_tensor& t) {
        if (!t.expect_bits) return 0;
        if (t.name.find("layers.0.mlp") != std::string::npos) return 0;
        if (t.name.find("down_proj") != std::string::npos) return 6;
        if (t.name.find("mlp") != std::string::npos) return 1;
        return 5;
    });
    std::ofstream(d / "bad.json") << R"({"default": 5, "rules": [{"pattern": "(", "bits": 2}]})";
    const auto bad = run("'" + (d / "in").string() + "' '" + (d / "out2").string() + "' --recipe '" + (d / "bad.json").string() + "'", d);
    CHECK(bad.rc == 1);
    CHECK(bad.err.find("invalid regex '('") != std::string::npos);
    std::ofstream(d / "bad2.json") << R"({"default": 9})";
    const auto bad2 = run("'" + (d / "in").string() + "' '" + (d / "out2").string() + "' --recipe '" + (d / "bad2.json").string() + "'", d);
    CHECK(bad2.rc == 1);
    CHECK(bad2.err.find("neither 1..8 nor \"keep\"") != std::string::npos);
    CHECK_FALSE(fs::exists(d / "out2"));
}

TEST_CASE("hlwq-quantize: embeddings are kept unless a recipe rule names them; PQ<b>-E<e>") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    const std::string io = "'" + (d / "in").string() + "' '" + (d / "out").string() + "' --force ";
    const auto embed_tokens = [](const fake_tensor& t) { return t.name == "model.embed_tokens.weight"; };
    SUBCASE("PQ4: the default width is not for embeddings") {
        const auto r = run(io + "--recipe PQ4", d);
        INFO(r.err);
        REQUIRE(r.rc == 0);
        check_output(d / "out", d / "in", m, [](const fake_tensor& t) { return t.expect_bits ? 4 : 0; });
        CHECK(r.err.find("model.embed_tokens.weight: kept (embedding)") != std::string::npos);
    }
    SUBCASE("PQ4-E8: embed_tokens at 8 bits; vision and narrow embeddings still kept") {
        const auto r = run(io + "--recipe PQ4-E8", d);
        INFO(r.err);
        REQUIRE(r.rc == 0);
        check_output(d / "out", d / "in", m,
                     [&](const fake_tensor& t) { return embed_tokens(t) ? 8 : t.expect_bits ? 4 : 0; });
        CHECK(r.out.find("recipe PQ4-E8") != std::string::npos);
        CHECK(json::parse(slurp(d / "out" / "config.json"))["quantization_config"]["recipe"] == "PQ4-E8");
    }
    SUBCASE("PQ6-E2 with --bits 3: --bits sets the default only") {
        const auto r = run(io + "--recipe PQ6-E2 --bits 3", d);
        INFO(r.err);
        REQUIRE(r.rc == 0);
        check_output(d / "out", d / "in", m,
                     [&](const fake_tensor& t) { return embed_tokens(t) ? 2 : t.expect_bits ? 3 : 0; });
    }
    SUBCASE("a recipe file: a rule naming the embedding gives its bits, \"keep\" keeps it") {
        std::ofstream(d / "r.json") << R"({"default": 4, "rules": [{"pattern": "mlp", "bits": 2},
            {"pattern": "^model\\.embed_tokens\\.", "bits": 6}]})";
        auto r = run(io + "--recipe '" + (d / "r.json").string() + "'", d);
        INFO(r.err);
        REQUIRE(r.rc == 0);
        check_output(d / "out", d / "in", m, [&](const fake_tensor& t) {
            return embed_tokens(t) ? 6 : !t.expect_bits ? 0 : t.name.find("mlp") != std::string::npos ? 2 : 4;
        });
        std::ofstream(d / "k.json") << R"({"default": 4, "rules": [{"pattern": "embed", "bits": "keep"}]})";
        r = run(io + "--recipe '" + (d / "k.json").string() + "'", d);
        REQUIRE(r.rc == 0);
        check_output(d / "out", d / "in", m, [](const fake_tensor& t) { return t.expect_bits ? 4 : 0; });
    }
    SUBCASE("malformed built-in names") {
        for (const char* bad : {"PQ4-E9", "PQ4-E0", "PQ9-E4", "PQ4-E", "PQ4-E88", "PQ4-X8"}) {
            CAPTURE(bad);
            const auto r = run(io + "--recipe " + bad, d);
            CHECK(r.rc == 2);
            CHECK(r.err.find("is neither a built-in recipe (uniform, PQ1..PQ8, PQ<b>-E<e>, PQ2-Mixed) nor a file") !=
                  std::string::npos);
        }
    }
}

TEST_CASE("hlwq-quantize: an existing OUT_DIR is refused without --force, replaced with it") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    fs::create_directories(d / "out");
    std::ofstream(d / "out" / "keep.txt") << "mine";
    const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
    CHECK(r.rc == 1);
    CHECK(r.err.find("exists; pass --force to replace it") != std::string::npos);
    CHECK(slurp(d / "out" / "keep.txt") == "mine");
    const auto f = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4 --force", d);
    CHECK(f.rc == 0);
    CHECK_FALSE(fs::exists(d / "out" / "keep.txt"));
    CHECK(fs::exists(d / "out" / "model.safetensors"));
    CHECK(no_temp_left(d / "out"));
}

TEST_CASE("hlwq-quantize: errors leave no output behind") {
    temp_dir d;
    fake_model m;
    SUBCASE("missing config.json") {
        m.write(d / "in");
        fs::remove(d / "in" / "config.json");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("no config.json") != std::string::npos);
    }
    SUBCASE("missing weights") {
        m.write(d / "in");
        fs::remove(d / "in" / "model.safetensors");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("neither model.safetensors nor") != std::string::npos);
    }
    SUBCASE("missing shard") {
        m.write(d / "in", 2);
        fs::remove(d / "in" / "model-00002-of-00002.safetensors");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("model-00002-of-00002.safetensors' named in the index is missing") != std::string::npos);
    }
    SUBCASE("NaN weight: names tensor, row and column") {
        for (fake_tensor& t : m.tensors)
            if (t.name == "model.layers.1.mlp.up_proj.weight") t.values[7 * 256 + 100] = NAN;
        m.write(d / "in");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("tensor 'model.layers.1.mlp.up_proj.weight': hlwq::quantize: weight at row 7, column 100 is NaN") !=
              std::string::npos);
    }
    SUBCASE("infinite weight in an expert") {
        for (fake_tensor& t : m.tensors)
            if (t.name == "model.layers.1.mlp.experts.gate_up_proj") t.values[2 * 64 * 256 + 3 * 256 + 5] = INFINITY;
        m.write(d / "in");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("'model.layers.1.mlp.experts.gate_up_proj', expert 2: hlwq::quantize: weight at row 3, column 5 is infinite") !=
              std::string::npos);
    }
    SUBCASE("write error (file size limit: EFBIG, as a full disk gives ENOSPC)") {
        m.write(d / "in");
        const auto r = run("'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4", d, "ulimit -f 64;");
        CHECK(r.rc == 1);
        CHECK(r.err.find("error: safetensors: ") != std::string::npos);
        CHECK(r.err.find("File too large") != std::string::npos);
    }
    SUBCASE("already quantized input") {
        m.write(d / "in");
        REQUIRE(run("'" + (d / "in").string() + "' '" + (d / "mid").string() + "' --bits 4", d).rc == 0);
        const auto r = run("'" + (d / "mid").string() + "' '" + (d / "out").string() + "' --bits 4", d);
        CHECK(r.rc == 1);
        CHECK(r.err.find("already has a quantization_config") != std::string::npos);
    }
    CHECK_FALSE(fs::exists(d / "out"));
    CHECK(no_temp_left(d / "out"));
}

TEST_CASE("hlwq-quantize: usage") {
    temp_dir d;
    const auto help = run("--help", d);
    CHECK(help.rc == 0);
    CHECK(help.out.starts_with("usage: hlwq-quantize"));
    CHECK(help.out.find("vision_tower") != std::string::npos);
    CHECK(help.out.find("PQ<b>-E<e>") != std::string::npos);
    const auto unknown = run("a b --bits 4 --no-such-flag", d);
    CHECK(unknown.rc == 2);
    CHECK(unknown.err.find("unknown option '--no-such-flag'") != std::string::npos);
    CHECK(run("a b", d).rc == 2);
    CHECK(run("a b --bits 9", d).err.find("--bits: 9 is outside 1..8") != std::string::npos);
    CHECK(run("a --bits 4", d).rc == 2);
    CHECK(run("a b --bits", d).rc == 2);
    CHECK(run("a b --recipe nosuch", d).rc == 2);
    CHECK(run("a b --to-hlwq --bits 4", d).rc == 2);
}

// ---------------------------------------------------------------------------------------
// --max-shard-size: shards as transformers' save_pretrained(max_shard_size=...) writes them.
// ---------------------------------------------------------------------------------------
namespace {

/// The parameter a stored tensor belongs to (`<name>.codes` / `.norms` / `.centroids` -> name).
std::string parameter_of(const std::string& stored, const checkpoint& c) {
    for (const char* suffix : {".codes", ".norms", ".centroids"})
        if (stored.ends_with(suffix)) {
            const std::string p = stored.substr(0, stored.size() - std::strlen(suffix));
            if (c.contains(p) && c.is_quantized(p)) return p;
        }
    return stored;
}

/// Checks the sharded folder `out` against transformers' rule for `max` bytes a shard and
/// against `one`, the same conversion in a single file: same stored tensors, byte for byte.
void check_shards(const fs::path& out, const fs::path& one, std::uint64_t max) {
    const json idx = json::parse(slurp(out / "model.safetensors.index.json"));
    const std::set<std::string> files = safetensors_files(out);
    const std::size_t n = files.size();
    REQUIRE(n >= 2);
    CHECK_FALSE(fs::exists(out / "model.safetensors"));
    for (std::size_t i = 0; i < n; ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
        CHECK_MESSAGE(files.contains(name), name);
    }
    const checkpoint c = checkpoint::open(out);
    const safetensors_file single = safetensors_file::open(one / "model.safetensors");

    // The index: every stored tensor, in the shard that holds it; total_size = tensor data.
    std::uint64_t total = 0;
    std::size_t stored = 0;
    std::map<std::string, std::string> shard_of_parameter;
    // Parameters in the order of the shards' files, as lists of groups (parameter, bytes).
    std::vector<std::vector<std::pair<std::string, std::uint64_t>>> shards;
    for (const std::string& f : files) {
        CAPTURE(f);
        const safetensors_file sf = safetensors_file::open(out / f);
        CHECK(sf.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
        std::map<std::string, std::uint64_t> groups;
        for (const auto& e : sf.buffer().entries()) {
            CHECK(idx["weight_map"][e.name] == f);
            ++stored;
            total += e.end - e.begin;
            groups[parameter_of(e.name, c)] += e.end - e.begin;
            // The same tensor as in the single file.
            const auto a = sf.view(e.name);
            const auto b = single.find(e.name);
            REQUIRE_MESSAGE(b, e.name);
            CHECK(a.type == b->type);
            CHECK(std::equal(a.shape.begin(), a.shape.end(), b->shape.begin(), b->shape.end()));
            CHECK((a.data.size() == b->data.size() && std::memcmp(a.data.data(), b->data.data(), a.data.size()) == 0));
        }
        shards.emplace_back(groups.begin(), groups.end());
        for (const auto& g : groups) {
            // A quantized parameter's .codes and .norms are in one shard.
            CHECK_MESSAGE(!shard_of_parameter.contains(g.first), g.first << " is split over two shards");
            shard_of_parameter[g.first] = f;
        }
    }
    CHECK(stored == single.size());
    CHECK(idx["weight_map"].size() == stored);
    CHECK(idx["metadata"]["total_size"] == total);
    CHECK(idx["metadata"].size() == 1);

    // transformers' split, checked against its description: a shard over `max` holds one
    // parameter larger than `max`; the other shards hold the remaining parameters in name
    // order, and each was begun because the next parameter did not fit in the one before.
    std::vector<std::string> regular_order, expected_order;
    const std::vector<std::pair<std::string, std::uint64_t>>* previous = nullptr;
    std::uint64_t previous_bytes = 0;
    for (const auto& shard : shards) {
        std::uint64_t bytes = 0;
        for (const auto& g : shard) bytes += g.second;
        if (shard.size() == 1 && bytes > max) continue;  // a parameter alone, larger than max
        CHECK(bytes <= max);
        if (previous) CHECK(previous_bytes + shard.front().second > max);
        for (const auto& g : shard) regular_order.push_back(g.first);
        previous = &shard;
        previous_bytes = bytes;
    }
    for (const std::string& p : c.names()) {
        std::uint64_t bytes = 0;
        for (const auto& shard : shards)
            for (const auto& g : shard)
                if (g.first == p) bytes = g.second;
        if (bytes <= max) expected_order.push_back(p);
    }
    CHECK(regular_order == expected_order);
}

}  // namespace

TEST_CASE("hlwq-quantize --max-shard-size: transformers' shards and index, a parameter in one shard, same tensors") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    const std::string in = "'" + (d / "in").string() + "' ";
    REQUIRE(run(in + "'" + (d / "one").string() + "' --recipe PQ2-Mixed", d).rc == 0);
    // 50 KB: the two 64 KiB bf16 tensors kept (vision q_proj, experts.down_proj) are each
    // larger, the quantized ones (17-35 kB) and the rest pack two or more to a shard.
    const auto r = run(in + "'" + (d / "out").string() + "' --recipe PQ2-Mixed --max-shard-size 50KB", d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    check_shards(d / "out", d / "one", 50'000);
    check_output(d / "out", d / "in", m, [](const fake_tensor& t) { return t.expect_bits; });
    CHECK(slurp(d / "out" / "config.json") == slurp(d / "one" / "config.json"));
    bool alone = false;  // a kept tensor over 50 KB has a shard of its own
    for (const std::string& f : safetensors_files(d / "out")) {
        const safetensors_file sf = safetensors_file::open(d / "out" / f);
        if (sf.names() == std::vector<std::string_view>{"model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"}) alone = true;
    }
    CHECK(alone);

    SUBCASE("the same size in bytes and in KiB gives the same files") {
        for (const char* size : {"50000", "48.828125KiB", "0.00005GB"}) {
            CAPTURE(size);
            const auto b = run(in + "'" + (d / "bytes").string() + "' --recipe PQ2-Mixed --force --max-shard-size=" + size, d);
            REQUIRE(b.rc == 0);
            CHECK(safetensors_files(d / "bytes") == safetensors_files(d / "out"));
            for (const std::string& f : safetensors_files(d / "out")) CHECK(slurp(d / "bytes" / f) == slurp(d / "out" / f));
            CHECK(slurp(d / "bytes" / "model.safetensors.index.json") == slurp(d / "out" / "model.safetensors.index.json"));
        }
    }
    SUBCASE("a sharded input is split anew; its shard files are not copied") {
        m.write(d / "in2", 2);
        const auto s = run("'" + (d / "in2").string() + "' '" + (d / "out2").string() + "' --recipe PQ2-Mixed --max-shard-size 50KB", d);
        INFO(s.err);
        REQUIRE(s.rc == 0);
        CHECK(safetensors_files(d / "out2") == safetensors_files(d / "out"));
        check_shards(d / "out2", d / "one", 50'000);
        CHECK(s.err.find("not copied") == std::string::npos);
    }
    SUBCASE("a size that holds everything: one model.safetensors, no index") {
        const auto one = run(in + "'" + (d / "big").string() + "' --recipe PQ2-Mixed --max-shard-size 5GB", d);
        REQUIRE(one.rc == 0);
        CHECK(safetensors_files(d / "big") == std::set<std::string>{"model.safetensors"});
        CHECK_FALSE(fs::exists(d / "big" / "model.safetensors.index.json"));
        CHECK(slurp(d / "big" / "model.safetensors") == slurp(d / "one" / "model.safetensors"));
    }
    SUBCASE("one byte: every parameter larger, each alone, in name order") {
        const auto tiny = run(in + "'" + (d / "tiny").string() + "' --recipe PQ2-Mixed --max-shard-size 1", d);
        REQUIRE(tiny.rc == 0);
        check_shards(d / "tiny", d / "one", 1);
        const checkpoint c = checkpoint::open(d / "tiny");
        const std::vector<std::string> names = c.names();
        CHECK(safetensors_files(d / "tiny").size() == names.size());
        const json idx = json::parse(slurp(d / "tiny" / "model.safetensors.index.json"));
        for (std::size_t i = 0; i < names.size(); ++i)
            CHECK(idx["weight_map"][names[i] + (c.is_quantized(names[i]) ? ".codes" : "")] ==
                  hlwq::io::shard_file_name(i, names.size()));
    }
}

TEST_CASE("hlwq-quantize --max-shard-size: bad sizes are usage errors") {
    temp_dir d;
    const fake_model m;
    m.write(d / "in");
    const std::string io = "'" + (d / "in").string() + "' '" + (d / "out").string() + "' --bits 4 ";
    const std::vector<std::pair<std::string, std::string>> bad{
        {"--max-shard-size 0", "must be at least one byte"},
        {"--max-shard-size 0MB", "must be at least one byte"},
        {"--max-shard-size 5XB", "unknown unit 'XB'"},
        {"--max-shard-size 5M", "unknown unit 'M'"},
        {"--max-shard-size 5mb", "a lowercase b is ambiguous"},
        {"--max-shard-size MB", "no number"},
        {"--max-shard-size -5MB", "no number"},
        {"--max-shard-size 1.5", "a number of bytes must be whole"},
        {"--max-shard-size 99999999999TB", "too large"},
        {"--max-shard-size=", "no number"},
        {"--max-shard-size", "--max-shard-size needs a value"}};
    for (const auto& item : bad) {
        const std::string& args = item.first;  // (clang 14 cannot capture a structured binding)
        const std::string& message = item.second;
        CAPTURE(args);
        const auto r = run(io + args, d);
        CHECK(r.rc == 2);
        CHECK(r.err.find(message) != std::string::npos);
        if (args != "--max-shard-size") CHECK(r.err.find("--max-shard-size: shard size '") != std::string::npos);
        CHECK_FALSE(fs::exists(d / "out"));
    }
    CHECK(run("--help", d).out.find("--max-shard-size") != std::string::npos);
}

// ---------------------------------------------------------------------------------------
// --to-hlwq on PolarQuant folders written here (int8, nibbles, Q5 LSB).
// ---------------------------------------------------------------------------------------
TEST_CASE("hlwq-quantize --to-hlwq: same codes, repacked, other tensors unchanged") {
    temp_dir d;
    const fs::path in = d / "polar";
    fs::create_directories(in);
    struct layer {
        std::string prefix;
        int bits;
        polar_layout layout;
        std::size_t rows, cols;
    };
    const std::vector<layer> layers{{"model.layers.0.self_attn.q_proj", 3, polar_layout::int8, 8, 200},
                                    {"model.layers.0.mlp.up_proj", 4, polar_layout::nibbles, 6, 256},
                                    {"model.layers.0.mlp.down_proj", 5, polar_layout::q5_lsb, 4, 384}};
    std::vector<hlwq::quantized_matrix> qs;
    std::vector<tensor_spec> specs{{"model.norm.weight", dtype::f32, {4}}};
    std::vector<std::vector<std::uint8_t>> packed;
    json lj = json::object();
    for (std::size_t i = 0; i < layers.size(); ++i) {
        const layer& L = layers[i];
        qs.push_back(hlwq::quantize(hlwq_test::gaussian(L.rows * L.cols, static_cast<unsigned>(i + 1)), L.rows, L.cols, L.bits));
        const std::size_t padded = (L.cols + 127) / 128 * 128;
        std::vector<std::uint8_t> bytes;
        for (std::size_t r = 0; r < L.rows; ++r) {
            std::vector<std::uint8_t> c(padded);
            for (std::size_t b = 0; b < padded / 128; ++b)
                hlwq::unpack_codes(L.bits, qs[i].block_codes(r, b), std::span(c).subspan(b * 128, 128));
            if (L.layout == polar_layout::int8) bytes.insert(bytes.end(), c.begin(), c.end());
            else if (L.layout == polar_layout::nibbles)
                for (std::size_t b = 0; b < padded; b += 128)
                    for (std::size_t k = 0; k < 64; ++k) bytes.push_back(static_cast<std::uint8_t>(c[b + k] | c[b + k + 64] << 4));
            else
                for (std::size_t t = 0; t < padded; t += 8) {  // 40-bit little-endian groups
                    std::uint64_t g = 0;
                    for (int k = 0; k < 8; ++k) g |= std::uint64_t(c[t + static_cast<std::size_t>(k)]) << (5 * k);
                    for (int k = 0; k < 5; ++k) bytes.push_back(static_cast<std::uint8_t>(g >> (8 * k)));
                }
        }
        packed.push_back(bytes);
        specs.push_back({L.prefix + ".codes", L.layout == polar_layout::int8 ? dtype::i8 : dtype::u8,
                         {std::int64_t(L.rows), std::int64_t(bytes.size() / L.rows)}});
        specs.push_back({L.prefix + ".norms", dtype::f16, {std::int64_t(L.rows), std::int64_t(padded / 128)}});
        specs.push_back({L.prefix + ".ct_scaled", dtype::f32, {std::int64_t(1) << L.bits}});
        lj[L.prefix] = {{"in_features", L.cols}, {"out_features", L.rows}, {"in_features_padded", padded},
                        {"n_blocks", padded / 128}, {"bits", L.bits}, {"packed", L.layout == polar_layout::nibbles},
                        {"packed_q5", L.layout == polar_layout::q5_lsb}};
    }
    {
        safetensors_writer w(in / "model.safetensors", specs);
        const std::vector<float> norm{1, 2, 3, 4};
        w.write("model.norm.weight", std::span<const float>(norm));
        for (std::size_t i = 0; i < layers.size(); ++i) {
            w.write(layers[i].prefix + ".codes", std::as_bytes(std::span<const std::uint8_t>(packed[i])));
            w.write(layers[i].prefix + ".norms", std::span<const hlwq::half>(qs[i].norms));
            std::vector<float> ct;
            for (float c : qs[i].centroids) ct.push_back(c / std::sqrt(128.0f));
            if (i == 2) ct[0] *= 1.01f;  // not the Lloyd-Max table: must travel with the tensor
            w.write(layers[i].prefix + ".ct_scaled", std::span<const float>(ct));
        }
        w.finish();
    }
    std::ofstream(in / "polar_config.json") << json{{"format", "polar_engine_v4"}, {"block_size", 128}, {"layers", lj}}.dump();
    std::ofstream(in / "config.json") << json{{"model_type", "polar"}}.dump();
    std::ofstream(in / "tokenizer.json") << "{}";

    const auto r = run("'" + in.string() + "' '" + (d / "out").string() + "' --to-hlwq", d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    CHECK_FALSE(fs::exists(d / "out" / "polar_config.json"));
    CHECK(fs::exists(d / "out" / "tokenizer.json"));
    const checkpoint c = checkpoint::open(d / "out");
    REQUIRE(c.format() == checkpoint_format::hlwq);
    CHECK(c.names().size() == 4);
    CHECK(c.dense("model.norm.weight").to_vector<float>() == std::vector<float>{1, 2, 3, 4});
    for (std::size_t i = 0; i < layers.size(); ++i) {
        CAPTURE(layers[i].prefix);
        const auto v = c.quantized(layers[i].prefix + ".weight");
        CHECK(v.bits == layers[i].bits);
        CHECK(std::equal(v.codes.begin(), v.codes.end(), qs[i].codes.begin(), qs[i].codes.end()));
        CHECK(std::memcmp(v.norms.data(), qs[i].norms.data(), v.norms.size() * 2) == 0);
        const bool own = i == 2;
        CHECK(c.tensors().contains(layers[i].prefix + ".weight.centroids") == own);
        if (own) CHECK(v.centroids[0] == doctest::Approx(qs[i].centroids[0] * 1.01f));
        else CHECK(v.centroids.data() == hlwq::lloyd_max_view(layers[i].bits).centroids.data());
    }
}

#ifdef HLWQ_REAL_MODEL_DIR
TEST_CASE("real model: hlwq-quantize --bits 4, mean NMSE within 10% of the Lloyd-Max MSE") {
    temp_dir d;
    const auto r = run("'" HLWQ_REAL_MODEL_DIR "' '" + (d / "out").string() + "' --bits 4 --json '" +
                           (d / "r.json").string() + "'",
                       d);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    MESSAGE(r.out);
    const json j = json::parse(slurp(d / "r.json"));
    const double mean = j["nmse_mean"].get<double>(), limit = hlwq::lloyd_max_mse(4);
    CHECK(j["bits"]["4"]["tensors"].get<int>() > 0);
    CHECK(mean >= 0.9 * limit);
    CHECK(mean <= 1.1 * limit);
    // The output loads, and a quantized weight decodes close to the original.
    const checkpoint in = checkpoint::open(HLWQ_REAL_MODEL_DIR), out = checkpoint::open(d / "out");
    CHECK(out.format() == checkpoint_format::hlwq);
    CHECK(out.names() == in.names());
    for (const std::string& n : out.names()) {
        if (!out.is_quantized(n)) continue;
        const auto w = in.dense(n).to_vector<hlwq::bfloat16>();
        std::vector<float> f;
        for (auto x : w) f.push_back(static_cast<float>(x));
        CHECK(nmse(f, hlwq::dequantize(out.quantized(n))) < 1.2 * limit);
        break;
    }
}
#endif
