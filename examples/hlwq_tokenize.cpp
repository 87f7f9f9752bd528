// SPDX-License-Identifier: MIT
// hlwq-tokenize: token ids of each line of stdin with a tokenizer.json (like llama-tokenize).
//
//   hlwq-tokenize TOKENIZER_JSON [--no-special] [--decode] [--help]
//
// Exit status: 0 ok, 1 error (unreadable/invalid tokenizer.json, bad token id), 2 usage.

#include "tokenizer.hpp"

#include <charconv>
#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* usage_text =
    "usage: hlwq-tokenize TOKENIZER_JSON [--no-special] [--decode] [--help]\n"
    "\n"
    "Reads lines from stdin and writes, for each line, its token ids separated by spaces\n"
    "(the line's final '\\n' is not part of the text).\n"
    "\n"
    "  TOKENIZER_JSON  a Hugging Face tokenizer.json (BPE: Gemma, Qwen, Llama 3, GPT-2 style)\n"
    "  --no-special    encoding: do not add the post-processor's special tokens (e.g. <bos>);\n"
    "                  decoding: leave special tokens out of the text\n"
    "  --decode        the other way: each line holds token ids (separated by spaces or commas)\n"
    "                  and the decoded text is written, one line per input line\n"
    "  --help          this text\n"
    "\n"
    "Exit status: 0 ok, 1 error (unreadable or invalid tokenizer.json, unknown token id),\n"
    "2 usage error.\n";

int usage_error(const std::string& msg) {
    std::cerr << "hlwq-tokenize: " << msg << "\n(hlwq-tokenize --help for usage)\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string path;
    bool special = true, decode = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--help" || a == "-h") {
            std::cout << usage_text;
            return 0;
        }
        if (a == "--no-special") special = false;
        else if (a == "--decode") decode = true;
        else if (a.size() > 1 && a[0] == '-') return usage_error("unknown option '" + std::string(a) + "'");
        else if (path.empty()) path = a;
        else return usage_error("more than one tokenizer file given");
    }
    if (path.empty()) return usage_error("no TOKENIZER_JSON given");

    try {
        const hlwq::rt::tokenizer tok = hlwq::rt::tokenizer::from_file(path);
        std::string line;
        std::size_t line_no = 0;
        while (std::getline(std::cin, line)) {
            ++line_no;
            if (!decode) {
                const auto ids = tok.encode(line, special);
                std::string out;
                for (std::size_t k = 0; k < ids.size(); ++k) {
                    if (k) out.push_back(' ');
                    out += std::to_string(ids[k]);
                }
                out.push_back('\n');
                std::fwrite(out.data(), 1, out.size(), stdout);
                continue;
            }
            std::vector<std::int32_t> ids;
            for (std::size_t i = 0; i < line.size();) {
                const char c = line[i];
                if (c == ' ' || c == ',' || c == '\t' || c == '\r' || c == '[' || c == ']') {
                    ++i;
                    continue;
                }
                std::int32_t v = 0;
                const auto [p, ec] = std::from_chars(line.data() + i, line.data() + line.size(), v);
                if (ec != std::errc() || p == line.data() + i) {
                    std::cerr << "error: line " << line_no << ": '" << line << "' is not a list of token ids\n";
                    return 1;
                }
                ids.push_back(v);
                i = static_cast<std::size_t>(p - line.data());
            }
            std::string text = tok.decode(ids, !special);
            text.push_back('\n');
            std::fwrite(text.data(), 1, text.size(), stdout);
        }
        std::fflush(stdout);
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
