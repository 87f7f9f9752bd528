#include <hlwq/io/hlwq_format.hpp>

#include <doctest/doctest.h>

#include "test_data.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace hlwq::io;
using doctest::Contains;
using json = nlohmann::json;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        static std::atomic<int> counter{0};
        const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
        path = fs::temp_directory_path() / ("hlwq_fmt_" + std::to_string(::getpid()) + "_" + std::to_string(stamp) +
                                            "_" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

/// One tensor to write: declaration plus bytes.
struct blob {
    tensor_spec spec;
    std::vector<std::byte> bytes;
};

template <class T>
blob make_blob(std::string name, std::vector<std::int64_t> shape, const std::vector<T>& v) {
    blob b{{std::move(name), dtype_of<T>(), std::move(shape)}, std::vector<std::byte>(v.size() * sizeof(T))};
    if (!v.empty()) std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
    return b;
}

void write_file(const fs::path& p, const std::vector<blob>& blobs) {
    std::vector<tensor_spec> specs;
    for (const blob& b : blobs) specs.push_back(b.spec);
    safetensors_writer w(p, specs);
    for (const blob& b : blobs) w.write(b.spec.name, std::span<const std::byte>(b.bytes));
    w.finish();
}

void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2); }

std::vector<hlwq::bfloat16> to_bf16(const std::vector<float>& v) {
    std::vector<hlwq::bfloat16> out;
    for (float x : v) out.emplace_back(x);
    return out;
}

/// The blobs (codes, norms) of a quantized parameter.
std::vector<blob> quantized_blobs(const std::string& name, const std::vector<std::int64_t>& shape,
                                  const hlwq::quantized_matrix& q) {
    const auto specs = quantized_tensor_specs(name, shape, q.bits, q.block);
    return {make_blob(specs[0].name, specs[0].shape, q.codes), make_blob(specs[1].name, specs[1].shape, q.norms)};
}

/// A small HLWQ folder: a dense bf16 embedding and f32 norm, a 4-bit 2-D weight with
/// cols not a multiple of the block, a 2-bit 2-D weight, a 3-bit 3-D expert tensor.
struct hlwq_fixture {
    std::vector<float> embed = hlwq_test::gaussian(16 * 64, 1);
    std::vector<float> norm = hlwq_test::gaussian(64, 2);
    std::vector<float> q4w = hlwq_test::gaussian(12 * 300, 3);
    std::vector<float> q2w = hlwq_test::gaussian(10 * 256, 4);
    std::vector<float> ew = hlwq_test::gaussian(3 * 8 * 256, 5);
    hlwq::quantized_matrix q4 = hlwq::quantize(q4w, 12, 300, 4);
    hlwq::quantized_matrix q2 = hlwq::quantize(q2w, 10, 256, 2);
    hlwq::quantized_matrix qe = hlwq::quantize(ew, 24, 256, 3);  // 3 experts x 8 rows, row by row
    quantization_config qc;
    json config = {{"model_type", "test"}, {"hidden_size", 64}};

    hlwq_fixture() {
        qc.bits = 4;
        qc.tensors["model.layers.0.self_attn.q_proj.weight"] = {{12, 300}, 4, ""};
        qc.tensors["model.layers.0.mlp.down_proj.weight"] = {{10, 256}, 2, ""};
        qc.tensors["model.layers.0.experts.down_proj"] = {{3, 8, 256}, 3, ""};
    }

    std::vector<blob> blobs() const {
        std::vector<blob> b{make_blob("model.embed_tokens.weight", {16, 64}, to_bf16(embed)),
                            make_blob("model.norm.weight", {64}, norm)};
        for (auto&& x : quantized_blobs("model.layers.0.self_attn.q_proj.weight", {12, 300}, q4)) b.push_back(x);
        for (auto&& x : quantized_blobs("model.layers.0.mlp.down_proj.weight", {10, 256}, q2)) b.push_back(x);
        for (auto&& x : quantized_blobs("model.layers.0.experts.down_proj", {3, 8, 256}, qe)) b.push_back(x);
        return b;
    }

    void write(const fs::path& dir, const std::vector<blob>& b, const json& cfg) const {
        write_file(dir / "model.safetensors", b);
        write_json(dir / "config.json", cfg);
    }
    void write(const fs::path& dir) const { write(dir, blobs(), with_quantization_config(config, qc)); }
};

bool same_view(const hlwq::quantized_view& a, const hlwq::quantized_matrix& b) {
    return a.rows == b.rows && a.cols == b.cols && a.bits == b.bits && a.block == b.block &&
           std::equal(a.codes.begin(), a.codes.end(), b.codes.begin(), b.codes.end()) &&
           a.norms.size() == b.norms.size() &&
           std::memcmp(a.norms.data(), b.norms.data(), a.norms.size() * sizeof(hlwq::half)) == 0 &&
           std::equal(a.centroids.begin(), a.centroids.end(), b.centroids.begin(), b.centroids.end());
}

}  // namespace

TEST_CASE("HLWQ folder: write then read gives the same codes, norms, config and weights") {
    temp_dir d;
    hlwq_fixture f;
    f.write(d.path);
    const checkpoint c = checkpoint::open(d.path);
    CHECK(c.format() == checkpoint_format::hlwq);
    CHECK(c.config()["model_type"] == "test");
    CHECK(c.quantization().bits == 4);
    CHECK(c.quantization().block_size == 128);
    CHECK(c.names() == std::vector<std::string>{"model.embed_tokens.weight", "model.layers.0.experts.down_proj",
                                                "model.layers.0.mlp.down_proj.weight",
                                                "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"});
    CHECK_FALSE(c.is_quantized("model.norm.weight"));
    CHECK(c.is_quantized("model.layers.0.self_attn.q_proj.weight"));
    CHECK(c.bits("model.layers.0.mlp.down_proj.weight") == 2);
    CHECK(c.shape("model.layers.0.self_attn.q_proj.weight") == std::vector<std::int64_t>{12, 300});
    CHECK(c.shape("model.norm.weight") == std::vector<std::int64_t>{64});

    const auto v4 = c.quantized("model.layers.0.self_attn.q_proj.weight");
    CHECK(same_view(v4, f.q4));
    CHECK(hlwq::dequantize(v4) == hlwq::dequantize(f.q4));
    CHECK(same_view(c.quantized("model.layers.0.mlp.down_proj.weight"), f.q2));
    // Zero copy: the view points into the mapped file.
    CHECK(v4.codes.data() ==
          reinterpret_cast<const std::uint8_t*>(
              c.tensors().view("model.layers.0.self_attn.q_proj.weight.codes").data.data()));
    CHECK(v4.centroids.data() == hlwq::lloyd_max_view(4).centroids.data());

    CHECK(c.dense("model.norm.weight").to_vector<float>() == f.norm);
    CHECK(c.dense("model.embed_tokens.weight").type == dtype::bf16);

    // Experts: one rows x cols view per expert, equal to quantizing that expert alone.
    CHECK(c.experts("model.layers.0.experts.down_proj") == 3);
    CHECK(c.experts("model.layers.0.self_attn.q_proj.weight") == 0);
    for (std::size_t e = 0; e < 3; ++e) {
        const std::vector<float> slice(f.ew.begin() + static_cast<std::ptrdiff_t>(e * 8 * 256),
                                       f.ew.begin() + static_cast<std::ptrdiff_t>((e + 1) * 8 * 256));
        const auto alone = hlwq::quantize(slice, 8, 256, 3);
        const auto ve = c.quantized("model.layers.0.experts.down_proj", e);
        CHECK(ve.rows == 8);
        CHECK(same_view(ve, alone));
        CHECK(hlwq::dequantize(ve) == hlwq::dequantize(alone));
    }

    // The config round trips through JSON.
    const auto qc2 = parse_quantization_config(to_json(f.qc), "x");
    CHECK(qc2.tensors.size() == 3);
    CHECK(qc2.tensors.at("model.layers.0.experts.down_proj").shape == std::vector<std::int64_t>{3, 8, 256});
    CHECK(qc2.tensors.at("model.layers.0.experts.down_proj").bits == 3);
}

TEST_CASE("HLWQ folder: misuse of the loader names the tensor") {
    temp_dir d;
    hlwq_fixture f;
    f.write(d.path);
    const checkpoint c = checkpoint::open(d.path);
    CHECK_THROWS_WITH_AS(c.dense("nope"), Contains("no tensor 'nope'"), format_error);
    CHECK_THROWS_WITH_AS(c.dense("model.layers.0.mlp.down_proj.weight"), Contains("is quantized"), format_error);
    CHECK_THROWS_WITH_AS(c.quantized("model.norm.weight"), Contains("not quantized"), format_error);
    CHECK_THROWS_WITH_AS(c.quantized("model.layers.0.experts.down_proj"), Contains("3 experts"), format_error);
    CHECK_THROWS_WITH_AS(c.quantized("model.layers.0.experts.down_proj", 3), Contains("expert 3 of 3"), format_error);
    CHECK_THROWS_WITH_AS(c.quantized("model.layers.0.mlp.down_proj.weight", 0), Contains("not a 3-D"), format_error);
}

TEST_CASE("HLWQ folder: every malformed case is rejected with the file and tensor named") {
    hlwq_fixture f;
    const json good = with_quantization_config(f.config, f.qc);
    const std::string q4 = "model.layers.0.self_attn.q_proj.weight";

    SUBCASE("config fields") {
        struct bad_cfg {
            const char* pointer;
            json value;
            const char* message;
        };
        for (const bad_cfg& b : {bad_cfg{"/quantization_config/format_version", 2, "unknown format_version 2"},
                                 bad_cfg{"/quantization_config/format_version", "1", "format_version is missing"},
                                 bad_cfg{"/quantization_config/bits", 9, "bits 9 is outside 1..8"},
                                 bad_cfg{"/quantization_config/bits", 0, "bits 0 is outside 1..8"},
                                 bad_cfg{"/quantization_config/block_size", 100, "block_size 100"},
                                 bad_cfg{"/quantization_config/quant_method", "gptq", "not \"hlwq\""},
                                 bad_cfg{"/quantization_config/packing", "planes-v2", "unknown packing"},
                                 bad_cfg{"/quantization_config/codebook", "uniform", "unknown codebook"},
                                 bad_cfg{"/quantization_config/sign_seed", -3, "sign_seed"}}) {
            CAPTURE(b.pointer);
            temp_dir d;
            json cfg = good;
            cfg[json::json_pointer(b.pointer)] = b.value;
            f.write(d.path, f.blobs(), cfg);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains(b.message), format_error);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains("config.json"), format_error);
        }
    }
    SUBCASE("tensor entries") {
        for (const auto& bad :
             std::vector<std::pair<json, std::string>>{{json{{"bits", 9}, {"shape", {12, 300}}}, "bits 9 is outside"},
                                                       {json{{"bits", 4}, {"shape", {3600}}}, "shape must be"},
                                                       {json{{"bits", 4}, {"shape", {12, 0}}}, "not a positive"},
                                                       {json{{"bits", 4}}, "shape must be"},
                                                       {json(4), "not an object"}}) {
            const json& value = bad.first;
            const std::string& message = bad.second;
            CAPTURE(value.dump());
            temp_dir d;
            json cfg = good;
            cfg["quantization_config"]["tensors"][q4] = value;
            f.write(d.path, f.blobs(), cfg);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains(message.c_str()), format_error);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains(q4.c_str()), format_error);
        }
    }
    SUBCASE("codes and norms tensors") {
        const auto edit = [&](auto&& change) {
            auto b = f.blobs();
            change(b);
            return b;
        };
        const auto find = [](std::vector<blob>& b, const std::string& n) -> blob& {
            for (blob& x : b)
                if (x.spec.name == n) return x;
            throw std::logic_error("no " + n);
        };
        struct bad_blob {
            std::vector<blob> blobs;
            std::string message;
        };
        std::vector<bad_blob> cases;
        cases.push_back({edit([&](std::vector<blob>& b) {
                             std::erase_if(b, [&](const blob& x) { return x.spec.name == q4 + ".codes"; });
                         }),
                         "tensor '" + q4 + ".codes' is missing"});
        cases.push_back({edit([&](std::vector<blob>& b) {
                             std::erase_if(b, [&](const blob& x) { return x.spec.name == q4 + ".norms"; });
                         }),
                         "tensor '" + q4 + ".norms' is missing"});
        cases.push_back({edit([&](std::vector<blob>& b) { find(b, q4 + ".codes").spec.type = dtype::i8; }),
                         "dtype is I8, expected U8"});
        cases.push_back({edit([&](std::vector<blob>& b) {
                             blob& n = find(b, q4 + ".norms");
                             n.spec.type = dtype::bf16;
                         }),
                         "dtype is BF16, expected F16"});
        cases.push_back({edit([&](std::vector<blob>& b) { find(b, q4 + ".codes").spec.shape = {12, 3 * 64}; }),
                         "shape [12,192], expected [12,3,64]"});
        cases.push_back({edit([&](std::vector<blob>& b) { find(b, q4 + ".norms").spec.shape = {3, 12}; }),
                         "shape [3,12], expected [12,3]"});
        for (const bad_blob& c : cases) {
            CAPTURE(c.message);
            temp_dir d;
            f.write(d.path, c.blobs, good);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains(c.message.c_str()), format_error);
        }
    }
    SUBCASE("own centroids") {
        json cfg = good;
        cfg["quantization_config"]["tensors"][q4]["centroids"] = q4 + ".centroids";
        auto b = f.blobs();
        SUBCASE("valid: used instead of the Lloyd-Max table") {
            std::vector<float> c(f.q4.centroids);
            for (float& x : c) x *= 2;
            b.push_back(make_blob(q4 + ".centroids", {16}, c));
            temp_dir d;
            f.write(d.path, b, cfg);
            const auto ck = checkpoint::open(d.path);
            const auto v = ck.quantized(q4);
            CHECK(std::vector<float>(v.centroids.begin(), v.centroids.end()) == c);
            const auto names = ck.names();
            CHECK(std::count(names.begin(), names.end(), q4 + ".centroids") == 0);
        }
        SUBCASE("wrong count") {
            b.push_back(make_blob(q4 + ".centroids", {8}, std::vector<float>(8, 0.0f)));
            temp_dir d;
            f.write(d.path, b, cfg);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains("shape [8], expected [16]"), format_error);
        }
        SUBCASE("not ascending") {
            b.push_back(make_blob(q4 + ".centroids", {16}, std::vector<float>{3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
            temp_dir d;
            f.write(d.path, b, cfg);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains("ascending"), format_error);
        }
        SUBCASE("missing") {
            temp_dir d;
            f.write(d.path, b, cfg);
            CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains(".centroids' is missing"), format_error);
        }
    }
    SUBCASE("config.json not JSON, weights missing") {
        temp_dir d;
        f.write(d.path);
        std::ofstream(d / "config.json") << "{ not json";
        CHECK_THROWS_WITH_AS(checkpoint::open(d.path), Contains("config.json: not valid JSON"), format_error);
        write_json(d / "config.json", good);
        fs::remove(d / "model.safetensors");
        CHECK_THROWS_AS(checkpoint::open(d.path), safetensors_error);
        CHECK_THROWS_WITH_AS(checkpoint::open(d / "nowhere"), Contains("not a folder"), format_error);
    }
}

TEST_CASE("write_quantized checks the declared sizes") {
    temp_dir d;
    const auto q = hlwq::quantize(hlwq_test::gaussian(4 * 128, 9), 4, 128, 3);
    safetensors_writer w(d / "m.safetensors", quantized_tensor_specs("w", std::vector<std::int64_t>{4, 256}, 3, 128));
    CHECK_THROWS_AS(write_quantized(w, "w", q), std::invalid_argument);
    CHECK_THROWS_AS(quantized_tensor_specs("w", std::vector<std::int64_t>{4}, 3, 128), std::invalid_argument);
    CHECK_THROWS_AS(quantized_tensor_specs("w", std::vector<std::int64_t>{4, 128}, 9, 128), std::invalid_argument);
    CHECK(codes_shape(std::vector<std::int64_t>{2, 5, 300}, 5, 128) == std::vector<std::int64_t>{2, 5, 3, 80});
}

TEST_CASE("original folder (sharded, bf16/f16/f32): dense views by name") {
    temp_dir d;
    const auto a = hlwq_test::gaussian(8 * 128, 1), b = hlwq_test::gaussian(128, 2);
    std::vector<hlwq::half> h;
    for (float x : b) h.emplace_back(x);
    write_file(d / "model-00001-of-00002.safetensors", {make_blob("a.weight", {8, 128}, to_bf16(a))});
    write_file(d / "model-00002-of-00002.safetensors",
               {make_blob("b.weight", {128}, h), make_blob("c.weight", {2, 64}, std::vector<float>(a.begin(), a.begin() + 128))});
    write_json(d / "model.safetensors.index.json",
               {{"metadata", json::object()},
                {"weight_map",
                 {{"a.weight", "model-00001-of-00002.safetensors"},
                  {"b.weight", "model-00002-of-00002.safetensors"},
                  {"c.weight", "model-00002-of-00002.safetensors"}}}});
    write_json(d / "config.json", {{"model_type", "x"}});
    const checkpoint c = checkpoint::open(d.path);
    CHECK(c.format() == checkpoint_format::original);
    CHECK(c.names() == std::vector<std::string>{"a.weight", "b.weight", "c.weight"});
    CHECK(c.dense("a.weight").to_vector<hlwq::bfloat16>().size() == a.size());
    CHECK(c.dense("b.weight").type == dtype::f16);
    CHECK(c.dense("c.weight").to_vector<float>()[5] == a[5]);
    CHECK_FALSE(c.is_quantized("a.weight"));
    CHECK_THROWS_WITH_AS(c.quantized("a.weight"), Contains("not quantized"), format_error);
}

// ---------------------------------------------------------------------------------------
// PolarQuant folders, written here from the byte formulas of the published layouts.
// ---------------------------------------------------------------------------------------
namespace {

std::vector<std::uint8_t> polar_encode(polar_layout layout, const std::vector<std::uint8_t>& c, std::size_t block) {
    std::vector<std::uint8_t> out;
    const auto put = [&](unsigned v) { out.push_back(static_cast<std::uint8_t>(v & 0xFF)); };
    if (layout == polar_layout::int8) return c;
    if (layout == polar_layout::nibbles) {
        for (std::size_t b = 0; b < c.size(); b += block)
            for (std::size_t i = 0; i < block / 2; ++i) put(c[b + i] | unsigned(c[b + i + block / 2]) << 4);
        return out;
    }
    for (std::size_t t = 0; t < c.size(); t += 8) {
        const auto x = [&](int k) { return unsigned(c[t + static_cast<std::size_t>(k)]); };
        if (layout == polar_layout::q5_lsb) {
            put(x(0) | x(1) << 5);
            put(x(1) >> 3 | x(2) << 2 | x(3) << 7);
            put(x(3) >> 1 | x(4) << 4);
            put(x(4) >> 4 | x(5) << 1 | x(6) << 6);
            put(x(6) >> 2 | x(7) << 3);
        } else {
            put(x(0) << 3 | x(1) >> 2);
            put((x(1) & 3) << 6 | x(2) << 1 | x(3) >> 4);
            put((x(3) & 15) << 4 | x(4) >> 1);
            put((x(4) & 1) << 7 | x(5) << 2 | x(6) >> 3);
            put((x(6) & 7) << 5 | x(7));
        }
    }
    return out;
}

/// A PolarQuant weight with random codes and norms, its expected dequantization by the
/// description (ŵ = norm · H_orth (ct_scaled[codes]), H_orth[i][j] = (-1)^popcount(i&j)/√B,
/// computed naively in double) and its tensors.
struct polar_case {
    std::string prefix;
    polar_layout layout = polar_layout::int8;
    int bits = 0;
    std::size_t rows = 0, cols = 0, block = 0;
    std::vector<std::uint8_t> codes;  // one per byte, rows x padded
    std::vector<hlwq::half> norms;
    std::vector<float> ct_scaled;
    std::vector<double> expected;

    polar_case(std::string p, polar_layout l, int b, std::size_t r, std::size_t c, std::size_t bs, unsigned seed)
        : prefix(std::move(p)), layout(l), bits(b), rows(r), cols(c), block(bs) {
        std::mt19937 rng(seed);
        const std::size_t nb = (cols + block - 1) / block, padded = nb * block;
        codes.resize(rows * padded);
        for (auto& x : codes) x = static_cast<std::uint8_t>(rng() % (1u << bits));
        for (std::size_t i = 0; i < rows * nb; ++i) norms.emplace_back(0.5f + static_cast<float>(rng() % 1000) / 250.0f);
        const auto lm = hlwq::lloyd_max_view(bits).centroids;
        for (float x : lm) ct_scaled.push_back(x / std::sqrt(static_cast<float>(block)));
        expected.assign(rows * cols, 0.0);
        const double s = 1.0 / std::sqrt(static_cast<double>(block));
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t b = 0; b < nb; ++b)
                for (std::size_t i = 0; i < block && b * block + i < cols; ++i) {
                    double acc = 0;
                    for (std::size_t j = 0; j < block; ++j)
                        acc += ((__builtin_popcountll(i & j) & 1) ? -s : s) * ct_scaled[codes[r * padded + b * block + j]];
                    expected[r * cols + b * block + i] = acc * static_cast<float>(norms[r * nb + b]);
                }
    }
    std::size_t padded() const { return (cols + block - 1) / block * block; }
    json config() const {
        json e = {{"in_features", cols}, {"out_features", rows}, {"in_features_padded", padded()},
                  {"n_blocks", padded() / block}, {"bits", bits}, {"packed", layout == polar_layout::nibbles},
                  {"packed_q5", layout == polar_layout::q5_lsb || layout == polar_layout::q5_msb}};
        if (layout == polar_layout::q5_msb) e["q5_order"] = "msb";
        return e;
    }
    std::vector<blob> blobs() const {
        std::vector<std::uint8_t> packed;
        for (std::size_t r = 0; r < rows; ++r) {
            const std::vector<std::uint8_t> row(codes.begin() + static_cast<std::ptrdiff_t>(r * padded()),
                                                codes.begin() + static_cast<std::ptrdiff_t>((r + 1) * padded()));
            const auto p = polar_encode(layout, row, block);
            packed.insert(packed.end(), p.begin(), p.end());
        }
        const auto width = static_cast<std::int64_t>(packed.size() / rows);
        std::vector<blob> out;
        if (layout == polar_layout::int8) {
            std::vector<std::int8_t> s(packed.size());
            std::memcpy(s.data(), packed.data(), packed.size());
            out.push_back(make_blob(prefix + ".codes", {std::int64_t(rows), width}, s));
        } else {
            out.push_back(make_blob(prefix + ".codes", {std::int64_t(rows), width}, packed));
        }
        out.push_back(make_blob(prefix + ".norms", {std::int64_t(rows), std::int64_t(padded() / block)}, norms));
        out.push_back(make_blob(prefix + ".ct_scaled", {std::int64_t(ct_scaled.size())}, ct_scaled));
        return out;
    }
};

std::vector<polar_case> polar_cases() {
    return {polar_case("model.layers.0.self_attn.q_proj", polar_layout::int8, 3, 5, 200, 128, 1),
            polar_case("model.layers.0.self_attn.k_proj", polar_layout::nibbles, 4, 4, 256, 128, 2),
            polar_case("model.layers.0.mlp.up_proj", polar_layout::q5_lsb, 5, 3, 130, 64, 3),
            polar_case("model.layers.0.mlp.down_proj", polar_layout::q5_msb, 5, 6, 128, 128, 4)};
}

void write_polar(const fs::path& dir, const std::vector<polar_case>& cases, json cfg, std::size_t block) {
    std::vector<blob> b{make_blob("model.norm.weight", {4}, std::vector<float>{1, 2, 3, 4})};
    json layers = json::object();
    for (const polar_case& c : cases) {
        for (auto&& x : c.blobs()) b.push_back(x);
        layers[c.prefix] = c.config();
    }
    write_file(dir / "model.safetensors", b);
    write_json(dir / "polar_config.json", {{"format", "polar_engine_v5"}, {"block_size", block}, {"layers", layers}});
    write_json(dir / "config.json", cfg);
}

}  // namespace

TEST_CASE("PolarQuant folder, all four code layouts: weights as the description's formula") {
    for (const std::size_t block : {std::size_t{128}, std::size_t{64}}) {
        CAPTURE(block);
        temp_dir d;
        std::vector<polar_case> cases;
        for (const polar_case& c : polar_cases())
            if (c.block == block) cases.push_back(c);
        write_polar(d.path, cases, {{"model_type", "p"}}, block);
        const checkpoint ck = checkpoint::open(d.path);
        CHECK(ck.format() == checkpoint_format::polar);
        CHECK(ck.dense("model.norm.weight").to_vector<float>() == std::vector<float>{1, 2, 3, 4});
        CHECK(ck.names().size() == cases.size() + 1);
        for (const polar_case& c : cases) {
            CAPTURE(c.prefix);
            const std::string name = c.prefix + ".weight";
            REQUIRE(ck.is_quantized(name));
            CHECK(ck.bits(name) == c.bits);
            CHECK(ck.shape(name) == std::vector<std::int64_t>{std::int64_t(c.rows), std::int64_t(c.cols)});
            const auto w = hlwq::dequantize(ck.quantized(name));
            REQUIRE(w.size() == c.expected.size());
            double err = 0, ref = 0;
            for (std::size_t i = 0; i < w.size(); ++i) {
                err += (w[i] - c.expected[i]) * (w[i] - c.expected[i]);
                ref += c.expected[i] * c.expected[i];
            }
            CHECK(std::sqrt(err / ref) < 1e-5);
            // The codes are the same codes, repacked.
            const auto v = ck.quantized(name);
            std::vector<std::uint8_t> row(v.block);
            hlwq::unpack_codes(v.bits, v.block_codes(1, 0), row);
            CHECK(std::equal(row.begin(), row.end(), c.codes.begin() + static_cast<std::ptrdiff_t>(c.padded())));
        }
    }
}

TEST_CASE("PolarQuant folder: malformed cases") {
    const auto cases = std::vector<polar_case>{polar_cases()[1]};
    const auto open_with = [&](auto&& edit) {
        temp_dir d;
        write_polar(d.path, cases, json::object(), 128);
        json pc = json::parse(std::ifstream(d / "polar_config.json"));
        edit(pc);
        write_json(d / "polar_config.json", pc);
        return checkpoint::open(d.path);
    };
    const std::string L = "model.layers.0.self_attn.k_proj";
    CHECK_NOTHROW(open_with([](json&) {}));
    // Layer entries may also sit at the top level, next to format and block_size.
    const auto top = open_with([](json& j) {
        for (auto& [k, v] : j["layers"].items()) j[k] = v;
        j.erase("layers");
    });
    CHECK(top.is_quantized("model.layers.0.self_attn.k_proj.weight"));
    CHECK(top.bits("model.layers.0.self_attn.k_proj.weight") == 4);
    CHECK_THROWS_WITH_AS(open_with([](json& j) { j["format"] = "polar_engine_v9"; }), Contains("polar_engine_v4"),
                         format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"][L]["bits"] = 9; }), Contains("bits 9 is outside"),
                         format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"][L]["bits"] = 5; }), Contains("packed needs bits <= 4"),
                         format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"][L]["in_features_padded"] = 512; }),
                         Contains("in_features_padded"), format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"][L]["out_features"] = 5; }),
                         Contains("shape [4,128], expected [5,128]"), format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"]["model.layers.9.x"] = j["layers"][L]; }),
                         Contains("model.layers.9.x.codes' is missing"), format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["layers"][L]["bits"] = 3; }), Contains("8 F32 centroids"),
                         format_error);
    CHECK_THROWS_WITH_AS(open_with([&](json& j) { j["q5_order"] = "middle"; }), Contains("q5_order"), format_error);
}
