// SPDX-License-Identifier: MIT
/// @file shards.hpp
/// @brief Splitting a checkpoint into safetensors shard files of bounded size, as
/// transformers' `save_pretrained(max_shard_size=...)` does: the size argument, the split, the
/// shard file names and the `model.safetensors.index.json` object.
///
/// The split walks the tensors in order and starts a new shard when the next one would take
/// the current shard's data over the limit; a tensor larger than the limit gets a shard of its
/// own (so that shard is larger than the limit). The unit of the split is a *group* of
/// tensors that must stay in one file, e.g. the `.codes` and `.norms` of one quantized
/// parameter. The limit bounds the tensor data, not the file: each file adds its header (8
/// bytes, then the JSON, a few kB for a few hundred tensors). safetensors_model reads the result.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hlwq::io {

/// The name of the index of a sharded folder.
inline constexpr std::string_view shard_index_name = "model.safetensors.index.json";

/// Parses a maximum shard size as transformers' max_shard_size takes it: a positive number
/// (digits, optionally a fraction such as `1.5`) followed by a unit, `KB` `MB` `GB` `TB`
/// (powers of 1000) or `KiB` `MiB` `GiB` `TiB` (powers of 1024, any letter case), or no unit
/// for bytes. The result is rounded down to whole bytes. A decimal unit must end in a capital
/// `B`: transformers reads `5Mb` as megabits and huggingface_hub as megabytes, so `5Mb` and
/// `5mb` are refused rather than guessed.
/// @throws std::invalid_argument naming the text for anything else (no number, an unknown
///   unit, more than 9 decimals, zero, or more than 2^64 - 1 bytes).
inline std::uint64_t parse_shard_size(std::string_view text) {
    const auto fail = [&](const std::string& why) -> void {
        throw std::invalid_argument("shard size '" + std::string(text) + "': " + why +
                                    " (expected e.g. 500MB, 5GB, 500MiB or a number of bytes)");
    };
    std::string_view s = text;
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    std::size_t i = 0;
    std::uint64_t whole = 0, frac = 0, frac_scale = 1;
    bool digits = false;
    constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        digits = true;
        const auto d = static_cast<std::uint64_t>(s[i] - '0');
        if (whole > (max - d) / 10) fail("too large");
        whole = whole * 10 + d;
    }
    if (i < s.size() && s[i] == '.') {
        for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
            digits = true;
            if (frac_scale == 1'000'000'000) fail("more than 9 decimals");
            frac = frac * 10 + static_cast<std::uint64_t>(s[i] - '0');
            frac_scale *= 10;
        }
    }
    if (!digits) fail("no number");
    std::string_view unit = s.substr(i);
    while (!unit.empty() && (unit.front() == ' ' || unit.front() == '\t')) unit.remove_prefix(1);
    std::uint64_t mult = 0;
    const auto upper = [](char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; };
    constexpr std::string_view prefixes = "KMGT";
    if (unit.empty()) {
        mult = 1;
    } else if (const std::size_t p = prefixes.find(upper(unit[0])); p != prefixes.npos && unit.size() == 3 &&
                                                                    upper(unit[1]) == 'I' && upper(unit[2]) == 'B') {
        mult = std::uint64_t{1} << (10 * (p + 1));
    } else if (p != prefixes.npos && unit.size() == 2 && upper(unit[1]) == 'B') {
        if (unit[1] != 'B')
            fail("a lowercase b is ambiguous (bits to transformers, bytes to huggingface_hub); write " +
                 std::string(1, upper(unit[0])) + "B");
        mult = 1;
        for (std::size_t k = 0; k <= p; ++k) mult *= 1000;
    } else {
        fail("unknown unit '" + std::string(unit) + "' (KB, MB, GB, TB, KiB, MiB, GiB or TiB)");
    }
    if (mult == 1 && frac != 0) fail("a number of bytes must be whole");
    if (whole > max / mult) fail("too large");
    // floor(frac / frac_scale * mult) without overflow: frac < frac_scale <= 1e9.
    const std::uint64_t part = frac * (mult / frac_scale) + frac * (mult % frac_scale) / frac_scale;
    const std::uint64_t bytes = whole * mult;
    if (bytes > max - part) fail("too large");
    if (bytes + part == 0) fail("must be at least one byte");
    return bytes + part;
}

/// The shards of groups of `bytes[i]` bytes each (in this order) under `max_shard_bytes`:
/// for each shard, the indices of its groups, in order. The rule of transformers
/// (huggingface_hub's split_state_dict_into_shards_factory): a group goes into the current
/// shard unless that takes the shard over the limit, in which case the current shard is closed
/// and a new one started with it; a group larger than the limit is put in a shard of its own,
/// placed where it is met, and the current shard stays open. No groups, no shards.
/// @throws std::invalid_argument if max_shard_bytes is 0.
inline std::vector<std::vector<std::size_t>> split_into_shards(std::span<const std::uint64_t> bytes,
                                                               std::uint64_t max_shard_bytes) {
    if (max_shard_bytes == 0) throw std::invalid_argument("split_into_shards: the maximum shard size is 0");
    std::vector<std::vector<std::size_t>> shards;
    std::vector<std::size_t> current;
    std::uint64_t current_bytes = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] > max_shard_bytes) {
            shards.push_back({i});
            continue;
        }
        if (bytes[i] > max_shard_bytes - current_bytes) {  // current_bytes + bytes[i] > max, without overflow
            shards.push_back(std::move(current));
            current.clear();
            current_bytes = 0;
        }
        current.push_back(i);
        current_bytes += bytes[i];
    }
    if (!current.empty()) shards.push_back(std::move(current));
    return shards;
}

/// The file name of shard `index` (0-based) of `count`: `model-00001-of-00003.safetensors`
/// (at least five digits each, as transformers writes them).
/// @throws std::invalid_argument if index >= count.
inline std::string shard_file_name(std::size_t index, std::size_t count) {
    if (index >= count)
        throw std::invalid_argument("shard_file_name: shard " + std::to_string(index) + " of " + std::to_string(count));
    const auto five = [](std::size_t n) {
        std::string s = std::to_string(n);
        return std::string(s.size() < 5 ? 5 - s.size() : 0, '0') + s;
    };
    return "model-" + five(index + 1) + "-of-" + five(count) + ".safetensors";
}

/// The index of a sharded folder, as transformers writes it: `{"metadata": {"total_size":
/// <bytes of tensor data in all shards, headers not counted>}, "weight_map": {tensor: file}}`.
/// Dump it with `dump(2)` plus a newline for transformers' text (keys sorted, two spaces).
inline nlohmann::json shard_index(const std::map<std::string, std::string>& weight_map, std::uint64_t total_size) {
    return {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
}

}  // namespace hlwq::io
