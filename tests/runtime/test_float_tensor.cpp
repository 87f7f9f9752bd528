// Tests of examples/runtime/float_tensor.hpp: small parameters read into fp32 from every
// stored form (F32, F16, BF16, HLWQ codes of a matrix and of experts), and errors that name
// the tensor and the file holding it (the shard, in a sharded folder).
#include "float_tensor.hpp"

#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/io/shards.hpp>
#include <hlwq/quantize.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace hlwq;
using doctest::Contains;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / ("hlwq_float_tensor_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::vector<float> ramp(std::size_t n, float scale) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = scale * (static_cast<float>(i) - 2.5f);  // exact in f16 and bf16
    return v;
}

/// A folder in two shards: dense vectors and a matrix of each float type, an I32 vector, and
/// HLWQ codes of a 2-D parameter and of a 3-D expert parameter (4 bits, blocks of 128).
struct folder {
    temp_dir dir;
    quantized_matrix q2d, q3d_0, q3d_1;

    folder() {
        const std::vector<float> w2d = ramp(4 * 128, 0.01f), w3d = ramp(2 * 4 * 128, -0.003f);
        q2d = quantize(w2d, 4, 128, 4);
        q3d_0 = quantize(std::span<const float>(w3d).first(512), 4, 128, 4);
        q3d_1 = quantize(std::span<const float>(w3d).subspan(512), 4, 128, 4);
        io::quantization_config qc;
        qc.tensors["q.weight"] = {{4, 128}, 4, ""};
        qc.tensors["experts.weight"] = {{2, 4, 128}, 4, ""};

        std::map<std::string, std::string> weight_map;
        const auto file = [](std::size_t i) { return io::shard_file_name(i, 2); };
        {
            std::vector<io::tensor_spec> specs{{"f32", io::dtype::f32, {6}},
                                               {"f16", io::dtype::f16, {6}},
                                               {"bf16", io::dtype::bf16, {6}},
                                               {"matrix", io::dtype::bf16, {2, 3}}};
            for (auto& s : io::quantized_tensor_specs("q.weight", std::vector<std::int64_t>{4, 128}, 4, 128)) specs.push_back(s);
            io::safetensors_writer w(dir.path / file(0), specs);
            const std::vector<float> v = ramp(6, 0.5f);
            std::vector<half> h;
            std::vector<bfloat16> b;
            for (float x : v) {
                h.emplace_back(x);
                b.emplace_back(x);
            }
            w.write("f32", std::span<const float>(v));
            w.write("f16", std::span<const half>(h));
            w.write("bf16", std::span<const bfloat16>(b));
            w.write("matrix", std::span<const bfloat16>(b));
            io::write_quantized(w, "q.weight", q2d.view());
            for (const auto& s : specs) weight_map[s.name] = file(0);
            w.finish();
        }
        {
            std::vector<io::tensor_spec> specs{{"i32", io::dtype::i32, {6}}};
            for (auto& s : io::quantized_tensor_specs("experts.weight", std::vector<std::int64_t>{2, 4, 128}, 4, 128))
                specs.push_back(s);
            io::safetensors_writer w(dir.path / file(1), specs);
            const std::vector<std::int32_t> i{1, 2, 3, 4, 5, 6};
            w.write("i32", std::span<const std::int32_t>(i));
            quantized_matrix both = q3d_0;
            both.rows = 8;
            both.codes.insert(both.codes.end(), q3d_1.codes.begin(), q3d_1.codes.end());
            both.norms.insert(both.norms.end(), q3d_1.norms.begin(), q3d_1.norms.end());
            io::write_quantized(w, "experts.weight", both.view());
            for (const auto& s : specs) weight_map[s.name] = file(1);
            w.finish();
        }
        std::ofstream(dir.path / std::string(io::shard_index_name)) << io::shard_index(weight_map, 0).dump(2);
        std::ofstream(dir.path / "config.json") << io::with_quantization_config(nlohmann::json::object(), qc).dump();
    }
    fs::path shard(std::size_t i) const { return dir.path / io::shard_file_name(i, 2); }
};

}  // namespace

TEST_CASE("read_floats / read_vector: F32, F16, BF16 exactly, any shape for read_floats") {
    const folder f;
    const auto ck = io::checkpoint::open(f.dir.path);
    const std::vector<float> want = ramp(6, 0.5f);
    for (const char* n : {"f32", "f16", "bf16"}) {
        CAPTURE(n);
        const rt::float_tensor t = rt::read_vector(ck, n, 6);
        CHECK(t.values == want);
        CHECK(t.stored_bytes == 6 * io::dtype_size(ck.dense(n).type));
        CHECK(rt::read_floats(ck, n, 6).values == want);
    }
    const rt::float_tensor m = rt::read_floats(ck, "matrix", 6);
    CHECK(m.values == want);
    CHECK(m.stored_bytes == 12);
}

TEST_CASE("read_floats: an HLWQ parameter is dequantized (2-D, and 3-D expert by expert)") {
    const folder f;
    const auto ck = io::checkpoint::open(f.dir.path);
    REQUIRE(ck.is_quantized("q.weight"));
    const rt::float_tensor q = rt::read_floats(ck, "q.weight", 4 * 128);
    CHECK(q.values == dequantize(f.q2d.view()));
    CHECK(q.stored_bytes == f.q2d.storage_bytes());
    const rt::float_tensor e = rt::read_floats(ck, "experts.weight", 2 * 4 * 128);
    std::vector<float> want = dequantize(f.q3d_0.view());
    const std::vector<float> second = dequantize(f.q3d_1.view());
    want.insert(want.end(), second.begin(), second.end());
    CHECK(e.values == want);
    CHECK(e.stored_bytes == f.q3d_0.storage_bytes() + f.q3d_1.storage_bytes());
}

TEST_CASE("read_floats / read_vector: errors name the tensor and the file that holds it") {
    const folder f;
    const auto ck = io::checkpoint::open(f.dir.path);
    const std::string dir = f.dir.path.string(), first = f.shard(0).string(), second = f.shard(1).string();
    CHECK_THROWS_WITH_AS(rt::read_floats(ck, "nope", 6), (dir + ": tensor 'nope' is missing").c_str(), std::runtime_error);
    CHECK_THROWS_WITH_AS(rt::read_floats(ck, "f16", 7),
                         (first + ": tensor 'f16' has 6 elements (shape [6]), expected 7").c_str(), std::runtime_error);
    CHECK_THROWS_WITH_AS(rt::read_vector(ck, "matrix", 6),
                         (first + ": tensor 'matrix' has shape [2, 3], expected [6]").c_str(), std::runtime_error);
    CHECK_THROWS_WITH_AS(rt::read_vector(ck, "bf16", 5),
                         (first + ": tensor 'bf16' has shape [6], expected [5]").c_str(), std::runtime_error);
    CHECK_THROWS_WITH_AS(rt::read_floats(ck, "i32", 6),
                         (second + ": tensor 'i32' has dtype I32, not F32, F16 or BF16 (or HLWQ codes)").c_str(),
                         std::runtime_error);
    // A quantized parameter: named by its parameter name, in the file of its codes.
    CHECK_THROWS_WITH_AS(rt::read_vector(ck, "experts.weight", 1024),
                         (second + ": tensor 'experts.weight' has shape [2, 4, 128], expected [1024]").c_str(),
                         std::runtime_error);
    CHECK_THROWS_WITH_AS(rt::read_floats(ck, "q.weight", 100), Contains((first + ": tensor 'q.weight' has 512 elements").c_str()),
                         std::runtime_error);
}
