// SPDX-License-Identifier: MIT
// Where the runtime tests find their data: the reference directory made by make_reference.mjs
// (HLWQ_TOKENIZER_REFERENCE_DIR) and tests/runtime (HLWQ_RUNTIME_TEST_DIR).
#pragma once

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace hlwq::rt::test {

inline std::filesystem::path reference_dir() { return HLWQ_TOKENIZER_REFERENCE_DIR; }
inline std::filesystem::path source_dir() { return HLWQ_RUNTIME_TEST_DIR; }

inline std::string rerun_hint() {
    return "run tools/setup.sh (it runs `npm ci` in tests/runtime), then ctest makes it; or by hand: "
           "(cd tests/runtime && npm ci) && node tests/runtime/make_reference.mjs " +
           reference_dir().string();
}

inline std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) FAIL("cannot read " << p.string() << ": " << rerun_hint());
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline nlohmann::ordered_json read_json(const std::filesystem::path& p) {
    return nlohmann::ordered_json::parse(read_file(p));
}

inline std::vector<std::string> corpus_lines() {
    const std::string text = read_file(source_dir() / "corpus.txt");
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < text.size()) {
        const std::size_t nl = text.find('\n', start);
        if (nl == std::string::npos) {
            lines.push_back(text.substr(start));
            break;
        }
        lines.push_back(text.substr(start, nl - start));
        start = nl + 1;
    }
    return lines;
}

}  // namespace hlwq::rt::test
