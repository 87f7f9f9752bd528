// Tests of io/shards.hpp: the shard size argument, transformers' split, shard names, the
// index, and a sharded folder written with them read back by safetensors_model.
#include <hlwq/io/safetensors.hpp>
#include <hlwq/io/shards.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;
using namespace hlwq::io;
using shards_t = std::vector<std::vector<std::size_t>>;

namespace {

std::string error_of(std::string_view text) {
    try {
        parse_shard_size(text);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "(accepted)";
}

}  // namespace

TEST_CASE("parse_shard_size: decimal and binary units, fractions, bytes") {
    CHECK(parse_shard_size("5MB") == 5'000'000);
    CHECK(parse_shard_size("7MB") == 7'000'000);
    CHECK(parse_shard_size("5GB") == 5'000'000'000);
    CHECK(parse_shard_size("2KB") == 2'000);
    CHECK(parse_shard_size("3TB") == 3'000'000'000'000);
    CHECK(parse_shard_size("5kB") == 5'000);  // the prefix letter in either case
    CHECK(parse_shard_size("500MiB") == 500ull << 20);
    CHECK(parse_shard_size("5GiB") == 5ull << 30);
    CHECK(parse_shard_size("5gib") == 5ull << 30);
    CHECK(parse_shard_size("1KiB") == 1024);
    CHECK(parse_shard_size("2TiB") == 2ull << 40);
    CHECK(parse_shard_size("1.5GB") == 1'500'000'000);
    CHECK(parse_shard_size("0.5MiB") == 1ull << 19);
    CHECK(parse_shard_size("48.828125KiB") == 50'000);
    CHECK(parse_shard_size("1.0009KB") == 1'000);  // rounded down: 1000.9 bytes
    CHECK(parse_shard_size("0.001KB") == 1);
    CHECK(parse_shard_size("123") == 123);
    CHECK(parse_shard_size("1.0") == 1);
    CHECK(parse_shard_size(" 7MB ") == 7'000'000);
    CHECK(parse_shard_size("7 MB") == 7'000'000);
    CHECK(parse_shard_size("18446744073709551615") == std::numeric_limits<std::uint64_t>::max());
    CHECK(parse_shard_size("16777215.999999999TiB") == (16777215ull << 40) + ((1ull << 40) - 1100));
}

TEST_CASE("parse_shard_size: bad sizes name the text and what is wrong") {
    const std::vector<std::pair<std::string, std::string>> bad{
        {"", "no number"},
        {"MB", "no number"},
        {"-5MB", "no number"},
        {".MB", "no number"},
        {"0", "must be at least one byte"},
        {"0MB", "must be at least one byte"},
        {"0.0001KB", "must be at least one byte"},  // 0.1 byte
        {"5XB", "unknown unit 'XB'"},
        {"5M", "unknown unit 'M'"},
        {"5MBs", "unknown unit 'MBs'"},
        {"5B", "unknown unit 'B'"},
        {"1.2.3MB", "unknown unit '.3MB'"},
        {"5mb", "a lowercase b is ambiguous"},
        {"5Gb", "write GB"},
        {"1.5", "a number of bytes must be whole"},
        {"1.0000000001GB", "more than 9 decimals"},
        {"18446744073709551616", "too large"},
        {"18446744073709551615.5KB", "too large"},
        {"16777216TiB", "too large"},
        {"18446744073709552KB", "too large"}};
    for (const auto& item : bad) {
        const std::string& text = item.first;  // (clang 14 cannot capture a structured binding)
        const std::string& why = item.second;
        CAPTURE(text);
        const std::string e = error_of(text);
        CHECK(e.find("shard size '" + text + "': ") == 0);
        CHECK(e.find(why) != std::string::npos);
    }
}

TEST_CASE("split_into_shards: transformers' rule") {
    using v = std::vector<std::uint64_t>;
    // Fill until the next does not fit.
    CHECK(split_into_shards(v{3, 3, 3}, 6) == shards_t{{0, 1}, {2}});
    CHECK(split_into_shards(v{3, 3, 3}, 9) == shards_t{{0, 1, 2}});
    // huggingface_hub's documented example: 10 GB with [6, 6, 2, 6, 2, 2] gives [6], [6+2], [6+2+2].
    CHECK(split_into_shards(v{6, 6, 2, 6, 2, 2}, 10) == shards_t{{0}, {1, 2}, {3, 4, 5}});
    // Exactly the limit fits.
    CHECK(split_into_shards(v{10, 10}, 10) == shards_t{{0}, {1}});
    CHECK(split_into_shards(v{4, 6, 1}, 10) == shards_t{{0, 1}, {2}});
    // A group larger than the limit gets a shard of its own where it is met; the open shard
    // goes on filling after it.
    CHECK(split_into_shards(v{2, 12, 3, 9}, 10) == shards_t{{1}, {0, 2}, {3}});
    CHECK(split_into_shards(v{11}, 10) == shards_t{{0}});
    CHECK(split_into_shards(v{11, 12, 1}, 10) == shards_t{{0}, {1}, {2}});
    // Empty groups, no groups.
    CHECK(split_into_shards(v{0, 0, 5}, 5) == shards_t{{0, 1, 2}});
    CHECK(split_into_shards(v{}, 5).empty());
    // Near 2^64: the sum would overflow, it must not wrap into "fits".
    constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    CHECK(split_into_shards(v{max - 1, 5}, max) == shards_t{{0}, {1}});
    CHECK_THROWS_AS(split_into_shards(v{1}, 0), std::invalid_argument);
}

TEST_CASE("split_into_shards: on random sizes, every group once, shards within the limit, each begun by a group that did not fit") {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 200; ++trial) {
        const std::uint64_t limit = 1 + rng() % 100;
        std::vector<std::uint64_t> bytes(rng() % 40);
        for (auto& b : bytes) b = rng() % 130;
        CAPTURE(trial);
        const shards_t s = split_into_shards(bytes, limit);
        std::vector<std::size_t> regular;  // the groups not larger than the limit, shard by shard
        const std::vector<std::size_t>* previous = nullptr;
        std::uint64_t previous_sum = 0;
        std::size_t seen = 0;
        for (const auto& shard : s) {
            REQUIRE_FALSE(shard.empty());
            seen += shard.size();
            std::uint64_t sum = 0;
            for (std::size_t i : shard) sum += bytes[i];
            if (shard.size() == 1 && bytes[shard[0]] > limit) continue;
            CHECK(sum <= limit);
            if (previous) CHECK(previous_sum + bytes[shard.front()] > limit);
            regular.insert(regular.end(), shard.begin(), shard.end());
            previous = &shard;
            previous_sum = sum;
        }
        CHECK(seen == bytes.size());
        std::vector<std::size_t> expected;
        for (std::size_t i = 0; i < bytes.size(); ++i)
            if (bytes[i] <= limit) expected.push_back(i);
        CHECK(regular == expected);
    }
}

TEST_CASE("shard_file_name and shard_index: transformers' names and index text") {
    CHECK(shard_file_name(0, 2) == "model-00001-of-00002.safetensors");
    CHECK(shard_file_name(1, 2) == "model-00002-of-00002.safetensors");
    CHECK(shard_file_name(41, 123) == "model-00042-of-00123.safetensors");
    CHECK(shard_file_name(99999, 100000) == "model-100000-of-100000.safetensors");
    CHECK_THROWS_AS(shard_file_name(2, 2), std::invalid_argument);
    // The text transformers writes: json.dumps(index, indent=2, sort_keys=True) + "\n".
    const std::map<std::string, std::string> map{{"b.weight", "model-00002-of-00002.safetensors"},
                                                 {"a.weight.codes", "model-00001-of-00002.safetensors"},
                                                 {"a.weight.norms", "model-00001-of-00002.safetensors"}};
    CHECK(shard_index(map, 1234).dump(2) + "\n" ==
          "{\n"
          "  \"metadata\": {\n"
          "    \"total_size\": 1234\n"
          "  },\n"
          "  \"weight_map\": {\n"
          "    \"a.weight.codes\": \"model-00001-of-00002.safetensors\",\n"
          "    \"a.weight.norms\": \"model-00001-of-00002.safetensors\",\n"
          "    \"b.weight\": \"model-00002-of-00002.safetensors\"\n"
          "  }\n"
          "}\n");
}

TEST_CASE("a folder sharded with split_into_shards reads back the same tensors") {
    static std::atomic<int> counter{0};
    const fs::path dir = fs::temp_directory_path() / ("hlwq_shards_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
    struct tensor {
        std::string name;
        std::vector<float> values;
    };
    std::vector<tensor> tensors;
    for (int i = 0; i < 9; ++i) {
        tensor t{"t" + std::to_string(i), std::vector<float>(static_cast<std::size_t>(10 + 7 * i))};
        for (std::size_t k = 0; k < t.values.size(); ++k) t.values[k] = static_cast<float>(i * 1000 + static_cast<int>(k));
        tensors.push_back(std::move(t));
    }
    std::vector<std::uint64_t> bytes;
    for (const tensor& t : tensors) bytes.push_back(t.values.size() * sizeof(float));
    const shards_t split = split_into_shards(bytes, 200);  // 40..264 bytes a tensor
    REQUIRE(split.size() > 2);
    std::map<std::string, std::string> weight_map;
    std::uint64_t total = 0;
    for (std::size_t s = 0; s < split.size(); ++s) {
        std::vector<tensor_spec> specs;
        for (std::size_t i : split[s]) specs.push_back({tensors[i].name, dtype::f32, {static_cast<std::int64_t>(tensors[i].values.size())}});
        safetensors_writer w(dir / shard_file_name(s, split.size()), specs);
        for (std::size_t i : split[s]) {
            w.write(tensors[i].name, std::span<const float>(tensors[i].values));
            weight_map[tensors[i].name] = shard_file_name(s, split.size());
            total += bytes[i];
        }
        w.finish();
    }
    std::ofstream(dir / std::string(shard_index_name)) << shard_index(weight_map, total).dump(2) << "\n";
    {
        const safetensors_model m = safetensors_model::open(dir);
        CHECK(m.shards().size() == split.size());
        CHECK(m.index_metadata()["total_size"] == total);
        CHECK(m.size() == tensors.size());
        for (const tensor& t : tensors) {
            CAPTURE(t.name);
            CHECK(m.view(t.name).to_vector<float>() == t.values);
        }
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
}
