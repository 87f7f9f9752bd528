#include <hlwq/io/safetensors.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace hlwq::io;

namespace {

/// A fresh temporary folder, removed with everything in it at the end of the test.
struct temp_dir {
    fs::path path;
    temp_dir() {
        static std::atomic<int> counter{0};
        const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
        path = fs::temp_directory_path() /
               ("hlwq_st_" + std::to_string(::getpid()) + "_" + std::to_string(stamp) + "_" +
                std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    fs::path operator/(const std::string& name) const { return path / name; }
};

std::vector<std::byte> read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(c.size());
    if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
    return out;
}

void write_bytes(const fs::path& p, const std::vector<std::byte>& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Builds a raw safetensors image: header length `n` (default: the header's size), the
/// header text, then `data_size` bytes 0, 1, 2, ...
std::vector<std::byte> raw_file(const std::string& header, std::size_t data_size,
                                std::optional<std::uint64_t> n = std::nullopt) {
    const std::uint64_t len = n.value_or(header.size());
    std::vector<std::byte> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((len >> (8 * i)) & 0xff));
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    for (std::size_t i = 0; i < data_size; ++i) out.push_back(static_cast<std::byte>(i & 0xff));
    return out;
}

/// Writes a raw file and returns its path.
fs::path raw(const temp_dir& d, const std::string& name, const std::string& header,
             std::size_t data_size, std::optional<std::uint64_t> n = std::nullopt) {
    const fs::path p = d / name;
    write_bytes(p, raw_file(header, data_size, n));
    return p;
}

template <class T>
std::vector<T> iota_values(std::size_t n) {
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        if constexpr (std::same_as<T, hlwq::half> || std::same_as<T, hlwq::bfloat16>)
            v[i] = T(static_cast<float>(i) * 0.5f - 3.0f);
        else if constexpr (std::same_as<T, bool>)
            v[i] = (i % 3) == 0;
        else
            v[i] = static_cast<T>(static_cast<int>(i) * 3 - 7);
    }
    return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    if (a.size() != b.size()) return false;
    if constexpr (std::same_as<T, bool>) return a == b;
    else return a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("safetensors: dtype names and sizes") {
    CHECK(dtype_size(dtype::f32) == 4);
    CHECK(dtype_size(dtype::bf16) == 2);
    CHECK(dtype_size(dtype::f64) == 8);
    CHECK(dtype_size(dtype::boolean) == 1);
    CHECK(dtype_name(dtype::boolean) == "BOOL");
    CHECK(parse_dtype("BF16") == dtype::bf16);
    CHECK(parse_dtype("I64") == dtype::i64);
    CHECK_FALSE(parse_dtype("f32").has_value());
    CHECK_FALSE(parse_dtype("F8_E4M3").has_value());
    CHECK(dtype_of<hlwq::half>() == dtype::f16);
    CHECK(dtype_of<std::uint8_t>() == dtype::u8);
}

TEST_CASE("safetensors: round trip of every dtype, scalars, empty tensors and metadata") {
    temp_dir d;
    const fs::path p = d / "all.safetensors";
    const std::vector<tensor_spec> specs = {
        {.name = "u8", .type = dtype::u8, .shape = {3}},  // odd size first: layout must still align
        {.name = "f32", .type = dtype::f32, .shape = {2, 3}},
        {.name = "f16", .type = dtype::f16, .shape = {5}},
        {.name = "bf16", .type = dtype::bf16, .shape = {1, 7}},
        {.name = "f64", .type = dtype::f64, .shape = {3}},
        {.name = "i8", .type = dtype::i8, .shape = {4}},
        {.name = "i16", .type = dtype::i16, .shape = {3}},
        {.name = "i32", .type = dtype::i32, .shape = {2, 2}},
        {.name = "i64", .type = dtype::i64, .shape = {3}},
        {.name = "bool", .type = dtype::boolean, .shape = {6}},
        {.name = "scalar", .type = dtype::f32, .shape = {}},
        {.name = "empty", .type = dtype::f32, .shape = {0, 4}},
        {.name = "empty_i64", .type = dtype::i64, .shape = {0}},
    };
    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo"}};
    const auto vf32 = iota_values<float>(6);
    const auto vf16 = iota_values<hlwq::half>(5);
    const auto vbf16 = iota_values<hlwq::bfloat16>(7);
    const auto vf64 = iota_values<double>(3);
    const auto vi8 = iota_values<std::int8_t>(4);
    const auto vu8 = iota_values<std::uint8_t>(3);
    const auto vi16 = iota_values<std::int16_t>(3);
    const auto vi32 = iota_values<std::int32_t>(4);
    const auto vi64 = iota_values<std::int64_t>(3);
    const bool vbool[6] = {true, false, false, true, true, false};
    const float vscalar = 42.5f;
    {
        safetensors_writer w(p, specs, meta);
        CHECK_FALSE(fs::exists(p));  // only the .tmp exists until finish()
        // Any order, typed or raw bytes.
        w.write("i64", std::span<const std::int64_t>(vi64));
        w.write("f32", std::span<const float>(vf32));
        w.write("f16", std::span<const hlwq::half>(vf16));
        w.write("bf16", std::span<const hlwq::bfloat16>(vbf16));
        w.write("f64", std::span<const double>(vf64));
        w.write("i8", std::span<const std::int8_t>(vi8));
        w.write("u8", std::span<const std::uint8_t>(vu8));
        w.write("i16", std::span<const std::int16_t>(vi16));
        w.write("i32", std::span<const std::int32_t>(vi32));
        w.write("bool", std::span<const bool>(vbool));
        w.write("scalar", std::as_bytes(std::span<const float>(&vscalar, 1)));
        w.write("empty", std::span<const float>());
        w.write("empty_i64", std::span<const std::int64_t>());
        w.finish();
        CHECK(fs::file_size(p) == w.file_size());
    }
    CHECK(fs::exists(p));
    CHECK_FALSE(fs::exists(p.string() + ".tmp"));

    auto f = safetensors_file::open(p);
    CHECK(f.size() == specs.size());
    CHECK(f.metadata() == meta);
    CHECK(f.buffer().data_offset() % 8 == 0);
    for (const tensor_spec& s : specs) {
        CAPTURE(s.name);
        const tensor_view v = f.view(s.name);
        CHECK(v.name == s.name);
        CHECK(v.type == s.type);
        CHECK(std::vector<std::int64_t>(v.shape.begin(), v.shape.end()) == s.shape);
        // Every tensor is aligned to its element size in the mapping.
        CHECK(reinterpret_cast<std::uintptr_t>(v.data.data()) % dtype_size(s.type) == 0);
    }
    CHECK(same_bits(f.view("f32").to_vector<float>(), vf32));
    CHECK(same_bits(f.view("f16").to_vector<hlwq::half>(), vf16));
    CHECK(same_bits(f.view("bf16").to_vector<hlwq::bfloat16>(), vbf16));
    CHECK(same_bits(f.view("f64").to_vector<double>(), vf64));
    CHECK(same_bits(f.view("i8").to_vector<std::int8_t>(), vi8));
    CHECK(same_bits(f.view("u8").to_vector<std::uint8_t>(), vu8));
    CHECK(same_bits(f.view("i16").to_vector<std::int16_t>(), vi16));
    CHECK(same_bits(f.view("i32").to_vector<std::int32_t>(), vi32));
    CHECK(same_bits(f.view("i64").to_vector<std::int64_t>(), vi64));
    CHECK(f.view("bool").to_vector<bool>() == std::vector<bool>(vbool, vbool + 6));
    const auto sc = f.view("scalar");
    CHECK(sc.shape.empty());
    CHECK(sc.numel() == 1);
    CHECK(sc.as<float>()[0] == 42.5f);
    CHECK(f.view("empty").numel() == 0);
    CHECK(f.view("empty").as<float>().empty());
    CHECK(f.view("empty_i64").data.empty());
    // Zero-copy typed view.
    const auto span32 = f.view("f32").as<float>();
    REQUIRE(span32.size() == 6);
    CHECK(span32[5] == vf32[5]);
    // Lookups.
    CHECK(f.find("nope") == std::nullopt);
    CHECK(f.contains("i8"));
    CHECK(f.names().front() == "bf16");  // lexicographic
    CHECK_THROWS_WITH_AS(f.view("nope"), doctest::Contains("no tensor 'nope'"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(f.view("f32").as<double>(), doctest::Contains("F32, not F64"),
                         std::invalid_argument);
    std::vector<float> small(2);
    CHECK_THROWS_AS(f.view("f32").copy_to(std::span<float>(small)), std::invalid_argument);

    // Moving the file keeps views valid.
    const safetensors_file moved = std::move(f);
    CHECK(moved.view("f32").as<float>()[1] == vf32[1]);
}

TEST_CASE("safetensors: writer output is byte-exact against a hand-built file") {
    temp_dir d;
    const fs::path p = d / "exact.safetensors";
    const std::vector<float> a = {1.0f, -2.0f};
    const std::vector<std::uint8_t> b = {7};
    {
        safetensors_writer w(p, {{.name = "b", .type = dtype::u8, .shape = {1}},
                                 {.name = "a", .type = dtype::f32, .shape = {2}}},
                             {{"k", "v"}});
        w.write("b", std::span<const std::uint8_t>(b));
        w.write("a", std::span<const float>(a));
        w.finish();
    }
    std::string header =
        R"({"__metadata__":{"k":"v"},"a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},)"
        R"("b":{"data_offsets":[8,9],"dtype":"U8","shape":[1]}})";
    header.append((8 - header.size() % 8) % 8, ' ');
    std::vector<std::byte> expect = raw_file(header, 0);
    for (float x : a) {
        std::byte tmp[4];
        std::memcpy(tmp, &x, 4);
        expect.insert(expect.end(), tmp, tmp + 4);
    }
    expect.push_back(std::byte{7});
    CHECK(read_all(p) == expect);
}

TEST_CASE("safetensors: reader against a hand-built file (unpadded header, gap)") {
    temp_dir d;
    // Header of odd length: the data starts unaligned, so typed views refuse, copies work.
    std::string header =
        R"({"x":{"dtype":"I16","shape":[2],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[2,1],"data_offsets":[6,8]}})";
    if (header.size() % 2 == 0) header += ' ';  // trailing whitespace is valid JSON
    const fs::path p = raw(d, "hand.safetensors", header, 8);
    const auto f = safetensors_file::open(p);
    CHECK(f.metadata().empty());
    const auto x = f.view("x");
    std::vector<std::int16_t> xs(2);
    x.copy_to(std::span<std::int16_t>(xs));
    CHECK(xs[0] == 0x0100);  // data bytes 0,1,2,3 little-endian
    CHECK(xs[1] == 0x0302);
    REQUIRE(f.buffer().data_offset() % 2 != 0);
    CHECK_THROWS_WITH_AS(x.as<std::int16_t>(), doctest::Contains("not aligned"), std::invalid_argument);
    CHECK(f.view("y").as<std::uint8_t>()[1] == std::uint8_t{7});
}

TEST_CASE("safetensors: writer misuse and temporary file handling") {
    temp_dir d;
    const fs::path p = d / "w.safetensors";
    const fs::path tmp = p.string() + ".tmp";
    CHECK_THROWS_WITH_AS(safetensors_writer(p, {{.name = "a"}, {.name = "a"}}),
                         doctest::Contains("duplicate tensor 'a'"), std::invalid_argument);
    CHECK_THROWS_AS(safetensors_writer(p, {{.name = "__metadata__"}}), std::invalid_argument);
    CHECK_THROWS_WITH_AS(safetensors_writer(p, {{.name = "n", .type = dtype::f32, .shape = {-1}}}),
                         doctest::Contains("negative"), std::invalid_argument);
    CHECK_THROWS_AS(safetensors_writer(p, {{.name = "o", .type = dtype::f64,
                                            .shape = {1LL << 40, 1LL << 40}}}),
                    std::invalid_argument);
    CHECK_FALSE(fs::exists(tmp));
    {
        safetensors_writer w(p, {{.name = "a", .type = dtype::f32, .shape = {2}},
                                 {.name = "b", .type = dtype::i32, .shape = {1}}});
        CHECK(fs::exists(tmp));
        const std::vector<float> a = {1, 2};
        const std::vector<double> wrong = {1, 2};
        CHECK_THROWS_WITH_AS(w.write("a", std::span<const double>(wrong)),
                             doctest::Contains("declared F32"), std::invalid_argument);
        CHECK_THROWS_WITH_AS(w.write("a", std::span<const float>(a.data(), 1)),
                             doctest::Contains("needs 8 bytes"), std::invalid_argument);
        CHECK_THROWS_WITH_AS(w.write("zz", std::span<const float>(a)),
                             doctest::Contains("undeclared tensor 'zz'"), std::invalid_argument);
        w.write("a", std::span<const float>(a));
        CHECK_THROWS_WITH_AS(w.write("a", std::span<const float>(a)), doctest::Contains("twice"),
                             std::invalid_argument);
        CHECK_THROWS_WITH_AS(w.finish(), doctest::Contains("'b' was not written"), std::invalid_argument);
    }
    // Destroyed without finish(): nothing left behind.
    CHECK_FALSE(fs::exists(tmp));
    CHECK_FALSE(fs::exists(p));
    // Empty file (no tensors) is valid.
    {
        safetensors_writer w(p, {});
        w.finish();
    }
    CHECK(safetensors_file::open(p).size() == 0);
}

TEST_CASE("safetensors: sharded model through model.safetensors.index.json") {
    temp_dir d;
    const std::vector<float> a = {1, 2, 3};
    const std::vector<std::int64_t> b = {4, 5};
    {
        safetensors_writer w(d / "model-00001-of-00002.safetensors",
                             {{.name = "layer.0.w", .type = dtype::f32, .shape = {3}}});
        w.write("layer.0.w", std::span<const float>(a));
        w.finish();
    }
    {
        safetensors_writer w(d / "model-00002-of-00002.safetensors",
                             {{.name = "layer.1.w", .type = dtype::i64, .shape = {2}}});
        w.write("layer.1.w", std::span<const std::int64_t>(b));
        w.finish();
    }
    const std::string index = R"({"metadata": {"total_size": 28}, "weight_map": {
        "layer.0.w": "model-00001-of-00002.safetensors",
        "layer.1.w": "model-00002-of-00002.safetensors"}})";
    {
        std::ofstream(d / "model.safetensors.index.json") << index;
    }
    const auto m = safetensors_model::open(d.path);
    CHECK(m.shards().size() == 2);
    CHECK(m.size() == 2);
    CHECK(m.index_metadata()["total_size"] == 28);
    CHECK(m.view("layer.0.w").to_vector<float>() == a);
    CHECK(m.view("layer.1.w").as<std::int64_t>()[1] == 5);
    CHECK_FALSE(m.find("layer.2.w").has_value());
    CHECK(m.names().size() == 2);
    CHECK_THROWS_AS(m.view("layer.2.w"), std::invalid_argument);

    // A shard named by the index that does not exist.
    {
        std::ofstream(d / "model.safetensors.index.json")
            << R"({"weight_map": {"layer.0.w": "model-00001-of-00002.safetensors",
                                  "layer.9.w": "model-00009-of-00009.safetensors"}})";
    }
    CHECK_THROWS_WITH_AS(safetensors_model::open(d.path),
                         doctest::Contains("shard 'model-00009-of-00009.safetensors'"),
                         safetensors_error);
    // A tensor mapped to a shard that does not hold it.
    {
        std::ofstream(d / "model.safetensors.index.json")
            << R"({"weight_map": {"layer.1.w": "model-00001-of-00002.safetensors"}})";
    }
    CHECK_THROWS_WITH_AS(safetensors_model::open(d.path),
                         doctest::Contains("tensor 'layer.1.w' is mapped to shard"), safetensors_error);
    // Malformed indexes.
    {
        std::ofstream(d / "model.safetensors.index.json") << "{\"weight_map\": [";
    }
    CHECK_THROWS_WITH_AS(safetensors_model::open(d.path),
                         doctest::Contains("model.safetensors.index.json: index is not valid JSON"),
                         safetensors_error);
    {
        std::ofstream(d / "model.safetensors.index.json")
            << R"({"weight_map": {"x": "../escape.safetensors"}})";
    }
    CHECK_THROWS_AS(safetensors_model::open(d.path), safetensors_error);
    {
        std::ofstream(d / "model.safetensors.index.json") << R"({"metadata": {}})";
    }
    CHECK_THROWS_WITH_AS(safetensors_model::open(d.path), doctest::Contains("weight_map"),
                         safetensors_error);
}

TEST_CASE("safetensors: single-file model folder") {
    temp_dir d;
    CHECK_THROWS_WITH_AS(safetensors_model::open(d.path), doctest::Contains("neither"),
                         safetensors_error);
    {
        safetensors_writer w(d / "model.safetensors", {{.name = "w", .type = dtype::u8, .shape = {1}}});
        const std::uint8_t x = 9;
        w.write("w", std::span<const std::uint8_t>(&x, 1));
        w.finish();
    }
    const auto m = safetensors_model::open(d.path);
    CHECK(m.shards().size() == 1);
    CHECK(m.view("w").as<std::uint8_t>()[0] == 9);
    CHECK(safetensors_model::open(d / "model.safetensors").size() == 1);
}

TEST_CASE("safetensors: malformed files give errors naming the file and tensor") {
    temp_dir d;
    const std::string ok_t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    auto expect_error = [&](const std::string& file, const std::string& header, std::size_t data,
                            const std::string& needle, std::optional<std::uint64_t> n = std::nullopt) {
        CAPTURE(file);
        CAPTURE(header);
        const fs::path p = raw(d, file, header, data, n);
        CHECK_THROWS_WITH_AS(safetensors_file::open(p), doctest::Contains(file.c_str()), safetensors_error);
        CHECK_THROWS_WITH_AS(safetensors_file::open(p), doctest::Contains(needle.c_str()), safetensors_error);
    };
    // The control: a valid file.
    CHECK_NOTHROW(safetensors_file::open(raw(d, "ok.safetensors", "{" + ok_t + "}", 8)));

    {  // shorter than the length field
        const fs::path p = d / "tiny.safetensors";
        write_bytes(p, {std::byte{1}, std::byte{2}});
        CHECK_THROWS_WITH_AS(safetensors_file::open(p), doctest::Contains("tiny.safetensors: file too small"),
                             safetensors_error);
    }
    {  // empty file
        const fs::path p = d / "zero.safetensors";
        write_bytes(p, {});
        CHECK_THROWS_WITH_AS(safetensors_file::open(p), doctest::Contains("zero.safetensors"), safetensors_error);
    }
    CHECK_THROWS_WITH_AS(safetensors_file::open(d / "absent.safetensors"),
                         doctest::Contains("absent.safetensors: cannot open"), safetensors_error);
    CHECK_THROWS_WITH_AS(safetensors_file::open(d.path), doctest::Contains("not a regular file"),
                         safetensors_error);

    expect_error("len_beyond.st", "{" + ok_t + "}", 8, "beyond the end of the file", 1000);
    expect_error("len_huge.st", "{}", 0, "exceeds the limit", 0xffffffffffffffffULL);
    expect_error("bad_json.st", R"({"t":{"dtype":"F32",)", 0, "not valid JSON");
    expect_error("trailing.st", "{}x", 0, "not valid JSON");
    expect_error("array.st", "[1, 2]", 0, "not a JSON object");
    expect_error("dup.st", "{" + ok_t + "," + ok_t + "}", 8, "duplicate key 't'");
    expect_error("dup_field.st", R"({"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8,
                 "duplicate key 'dtype'");
    expect_error("unknown_dtype.st", R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8,
                 "tensor 't': unknown dtype 'Q4'");
    expect_error("dtype_type.st", R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8,
                 "tensor 't': dtype is not a string");
    expect_error("size.st", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
                 "tensor 't': shape [3] × F32 is 12 bytes but data_offsets [0, 8] span 8");
    expect_error("outside.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8,
                 "tensor 't': data_offsets [4, 12] lie outside the data buffer (8 bytes)");
    expect_error("far_outside.st",
                 R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
                 8, "outside the data buffer");
    expect_error("begin_end.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8,
                 "tensor 't': data_offsets [8, 0] has begin > end");
    expect_error("overlap.st",
                 R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12, "tensor 'b': data_offsets [4, 12] overlap tensor 'a'");
    expect_error("overlap_empty.st",
                 R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                 8, "overlap");
    expect_error("missing.st", R"({"t":{"dtype":"F32","shape":[2]}})", 8,
                 "tensor 't': missing field 'data_offsets'");
    expect_error("extra.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8,
                 "tensor 't': unexpected field 'x'");
    expect_error("entry_type.st", R"({"t":[1]})", 8, "tensor 't': entry is not an object");
    expect_error("shape_type.st", R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8,
                 "tensor 't': shape is not an array");
    expect_error("shape_neg.st", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8,
                 "tensor 't': negative dimension");
    expect_error("shape_float.st", R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8,
                 "tensor 't': shape entry is not a non-negative integer");
    expect_error("shape_huge.st",
                 R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8,
                 "dimension too large");
    expect_error("shape_overflow.st",
                 R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8,
                 "tensor 't': element count of shape [4294967296,4294967296] overflows");
    expect_error("bytes_overflow.st",
                 R"({"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8,
                 "overflows");
    expect_error("offsets_type.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8,
                 "tensor 't': data_offsets is not an array of two non-negative integers");
    expect_error("offsets_neg.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8,
                 "data_offsets is not an array");
    expect_error("meta_type.st", R"({"__metadata__":[1]})", 0, "__metadata__ is not an object");
    expect_error("meta_value.st", R"({"__metadata__":{"a":"b","n":1}})", 0,
                 "__metadata__ value of 'n' is not a string");

    // A zero dimension with another huge one is a valid empty tensor.
    CHECK_NOTHROW(safetensors_file::open(
        raw(d, "zero_dim.st", R"({"t":{"dtype":"F32","shape":[0,9223372036854775807,9223372036854775807],"data_offsets":[0,0]}})", 0)));
    // BOOL bytes other than 0/1 are caught when converting.
    const auto f = safetensors_file::open(
        raw(d, "bool.st", R"({"t":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", 3));
    CHECK_THROWS_WITH_AS(f.view("t").to_vector<bool>(), doctest::Contains("BOOL element 2"),
                         safetensors_error);
}

TEST_CASE("safetensors: in-memory buffer parser (the fuzzer's entry point)") {
    const auto bytes = raw_file(R"({"t":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 4);
    const safetensors_buffer buf(bytes, "mem");
    CHECK(buf.view("t").as<std::uint8_t>()[0] == 1);
    CHECK_THROWS_WITH_AS(safetensors_buffer(std::span<const std::byte>(bytes).first(20), "mem"),
                         doctest::Contains("safetensors: mem: header length"), safetensors_error);
}

TEST_CASE("safetensors: the fuzzer's seed corpus parses (valid_*) or is rejected (bad_*)") {
    std::size_t seen = 0;
    for (const auto& e : fs::directory_iterator(HLWQ_SAFETENSORS_CORPUS)) {
        const std::string name = e.path().filename().string();
        CAPTURE(name);
        if (name.starts_with("valid_")) {
            CHECK_NOTHROW(safetensors_file::open(e.path()));
            ++seen;
        } else if (name.starts_with("bad_")) {
            CHECK_THROWS_WITH_AS(safetensors_file::open(e.path()), doctest::Contains(name.c_str()),
                                 safetensors_error);
            ++seen;
        }
    }
    CHECK(seen >= 6);
}
