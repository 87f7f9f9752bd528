// SPDX-License-Identifier: MIT
// hlwq-quantize: converts a Hugging Face model folder (safetensors, bf16 / f16 / f32, sharded
// or not) into an HLWQ checkpoint folder (docs/format.md, format version 1), or a PolarQuant
// folder (polar_config.json) into an HLWQ folder without re-quantizing (--to-hlwq).
//
//   hlwq-quantize IN_DIR OUT_DIR --bits 4
//   hlwq-quantize IN_DIR OUT_DIR --recipe PQ2-Mixed --json report.json
//   hlwq-quantize POLAR_DIR OUT_DIR --to-hlwq
//   hlwq-quantize IN_DIR OUT_DIR --recipe PQ4-E8 --max-shard-size 5GB
//
// Streaming: one tensor is read from the memory-mapped input, quantized (multithreaded),
// checked (NMSE) and written through a safetensors_writer; its input pages are then dropped
// (madvise), so the peak memory is about one tensor plus its codes, not the model.
// The output is written as OUT_DIR.tmp-<pid> and renamed to OUT_DIR at the end; on any error
// the temporary folder is removed. Which tensors are quantized: see kUsage.
// Exit status: 0 ok, 1 error (message on stderr, no OUT_DIR left), 2 usage error.
#include <hlwq/codebook.hpp>
#include <hlwq/io/hlwq_format.hpp>
#include <hlwq/io/safetensors.hpp>
#include <hlwq/io/shards.hpp>
#include <hlwq/quantize.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kUsage =
    "usage: hlwq-quantize IN_DIR OUT_DIR --bits N [options]\n"
    "       hlwq-quantize IN_DIR OUT_DIR --recipe FILE|NAME [options]\n"
    "       hlwq-quantize POLAR_DIR OUT_DIR --to-hlwq [options]\n"
    "\n"
    "Converts a Hugging Face model folder (config.json + safetensors in bf16/f16/f32, single\n"
    "file or sharded) into an HLWQ checkpoint folder (docs/format.md, format version 1).\n"
    "\n"
    "options (also --name=value):\n"
    "  --bits N           default bit width 1..8 (overrides a recipe's default)\n"
    "  --recipe R         built-in recipe NAME, or a JSON FILE (below)\n"
    "  --include-vision   also quantize vision/audio towers\n"
    "  --threads N        worker threads, 0 = all cores           (default 0)\n"
    "  --json FILE        also write the report as JSON\n"
    "  --max-shard-size S write shards of at most S bytes of tensor data each (Output,\n"
    "                     below), S as transformers' max_shard_size: 500MB, 5GB (powers\n"
    "                     of 1000), 500MiB, 5GiB (powers of 1024), or bytes\n"
    "  --force            replace OUT_DIR if it exists\n"
    "  --to-hlwq          IN_DIR is a PolarQuant folder (polar_config.json): convert it\n"
    "                     without re-quantizing (same codes, repacked)\n"
    "  --help             this text\n"
    "\n"
    "Quantized: floating-point (F32/F16/BF16) 2-D tensors whose name ends in '.weight', and\n"
    "3-D expert tensors [experts, out, in] whose name contains 'experts' (quantized per\n"
    "expert, row by row). Kept in their original dtype, in this order of precedence:\n"
    "  - anything that is not F32/F16/BF16, not 2-D/3-D, or (2-D) not named *.weight (biases,\n"
    "    scalars, buffers);\n"
    "  - vision/audio towers: names containing vision_tower, audio_tower,\n"
    "    multi_modal_projector, embed_vision, embed_audio or 'visual.' (unless --include-vision);\n"
    "  - embeddings: names containing 'embed' (embed_tokens, per-layer embeddings), unless a\n"
    "    recipe rule's regex matches the name: the rule's bits then apply (PQ<b>-E<e>);\n"
    "  - norms: a last-but-one name component containing 'norm' (input_layernorm, q_norm,\n"
    "    model.norm, ...);\n"
    "  - MoE routing: names containing 'router', ending in '.gate.weight' (the MoE gate; dense\n"
    "    MLPs use gate_proj) or containing 'shared_expert_gate';\n"
    "  - lm_head.weight when the embeddings are tied (tie_word_embeddings, top level or in\n"
    "    text_config; transformers' default is tied);\n"
    "  - tensors with fewer than 128 columns (one block: quantizing would not save space);\n"
    "  - tensors a recipe rule maps to \"keep\".\n"
    "\n"
    "Recipes: the first rule whose regex matches (std::regex ECMAScript, search anywhere in\n"
    "the name) gives the bits, else the default.\n"
    "  uniform (default)  every quantized tensor at --bits\n"
    "  PQ1 .. PQ8         uniform at that width\n"
    "  PQ<b>-E<e>         linear layers at b bits, embeddings at e bits (rule 'embed'), e.g.\n"
    "                     PQ4-E8: token embeddings (and a tied lm_head) at 8 bits\n"
    "  PQ2-Mixed          MLP and experts at 2 bits ('mlp|experts|feed_forward'), attention\n"
    "                     at 4 bits ('self_attn|attention'), default 4 (or --bits)\n"
    "  FILE               {\"default\": 4, \"rules\": [{\"pattern\": \"mlp\", \"bits\": 2},\n"
    "                      {\"pattern\": \"layers\\\\.0\\\\.\", \"bits\": \"keep\"}]}\n"
    "\n"
    "Output: the same shard files as the input (one model.safetensors, or the input's shard\n"
    "names plus model.safetensors.index.json), holding <name>.codes / <name>.norms for each\n"
    "quantized tensor and every other tensor unchanged. With --max-shard-size S, shards as\n"
    "transformers writes them instead: model-00001-of-0000N.safetensors ... plus the index,\n"
    "tensors in name order, a new shard begun when the next tensor would take the current\n"
    "one's data over S (the file adds its header, a few kB); the .codes and .norms of one\n"
    "tensor stay together; a tensor larger than S gets a shard of its own; a single shard is\n"
    "written as model.safetensors. config.json gains quantization_config; every other file\n"
    "of IN_DIR up to 256 MiB is copied (tokenizer, chat template, processor, generation\n"
    "config, ...), except weights in other formats (.bin .pt .pth .gguf ...).\n"
    "Written as OUT_DIR.tmp-<pid>, renamed at the end. Progress on stderr (a bar on a\n"
    "terminal), the report on stdout.\n"
    "\n"
    "exit status: 0 ok, 1 error (nothing left at OUT_DIR), 2 usage error\n";

struct usage_error {
    std::string message{};
};

/// Everything else: printed as "error: ...", exit status 1.
struct fatal : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct options {
    fs::path in{};
    fs::path out{};
    std::optional<int> bits = std::nullopt;
    std::string recipe{};
    bool include_vision = false;
    unsigned threads = 0;
    std::string json_file{};
    bool force = false;
    bool to_hlwq = false;
    std::optional<std::uint64_t> max_shard_bytes = std::nullopt;  // --max-shard-size; none = the input's shards
};

template <class T>
T parse_uint(std::string_view flag, std::string_view text, T lo, T hi) {
    T v{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size())
        throw usage_error{std::string(flag) + ": '" + std::string(text) + "' is not a number in " +
                          std::to_string(lo) + ".." + std::to_string(hi)};
    if (v < lo || v > hi)
        throw usage_error{std::string(flag) + ": " + std::string(text) + " is outside " + std::to_string(lo) + ".." +
                          std::to_string(hi)};
    return v;
}

std::optional<options> parse_args(int argc, char** argv) {
    options o;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i], flag = arg, value;
        bool has_value = false;
        if (const std::size_t eq = arg.find('='); arg.starts_with("--") && eq != arg.npos) {
            flag = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            has_value = true;
        }
        auto next = [&]() -> std::string_view {
            if (has_value) return value;
            if (i + 1 >= argc) throw usage_error{std::string(flag) + " needs a value"};
            return argv[++i];
        };
        auto no_value = [&] {
            if (has_value) throw usage_error{std::string(flag) + " takes no value"};
        };
        if (flag == "--help" || flag == "-h") {
            no_value();
            std::fputs(kUsage, stdout);
            return std::nullopt;
        } else if (flag == "--bits") {
            o.bits = parse_uint<int>(flag, next(), hlwq::min_bits, hlwq::max_bits);
        } else if (flag == "--recipe") {
            o.recipe = std::string(next());
            if (o.recipe.empty()) throw usage_error{"--recipe needs a name or a file"};
        } else if (flag == "--include-vision") {
            no_value();
            o.include_vision = true;
        } else if (flag == "--threads") {
            o.threads = parse_uint<unsigned>(flag, next(), 0, 4096);
        } else if (flag == "--json") {
            o.json_file = std::string(next());
            if (o.json_file.empty()) throw usage_error{"--json needs a file name"};
        } else if (flag == "--max-shard-size") {
            try {
                o.max_shard_bytes = hlwq::io::parse_shard_size(next());
            } catch (const std::invalid_argument& e) {
                throw usage_error{"--max-shard-size: " + std::string(e.what())};
            }
        } else if (flag == "--force") {
            no_value();
            o.force = true;
        } else if (flag == "--to-hlwq") {
            no_value();
            o.to_hlwq = true;
        } else if (arg.starts_with("-") && arg != "-") {
            throw usage_error{"unknown option '" + std::string(arg) + "'"};
        } else {
            positional.emplace_back(arg);
        }
    }
    if (positional.size() != 2)
        throw usage_error{"expected IN_DIR and OUT_DIR, got " + std::to_string(positional.size()) + " paths"};
    o.in = positional[0];
    o.out = positional[1];
    if (o.to_hlwq && (o.bits || !o.recipe.empty()))
        throw usage_error{"--to-hlwq keeps the checkpoint's codes; --bits and --recipe do not apply"};
    if (!o.to_hlwq && !o.bits && o.recipe.empty()) throw usage_error{"--bits or --recipe is required"};
    return o;
}

// ---------------------------------------------------------------------------------------
// Recipes
// ---------------------------------------------------------------------------------------
struct rule {
    std::string pattern{};
    std::regex re{};
    int bits = 0;  // 0 = keep
};

struct recipe {
    std::string name{};
    int default_bits = 4;
    std::vector<rule> rules{};

    /// Bits for an eligible tensor (0 = keep), and the rule that decided ("" = default).
    std::pair<int, std::string> bits_for(const std::string& tensor) const {
        if (const rule* r = rule_for(tensor)) return {r->bits, r->pattern};
        return {default_bits, ""};
    }
    /// The first rule whose regex matches `tensor`, or null.
    const rule* rule_for(const std::string& tensor) const {
        for (const rule& r : rules)
            if (std::regex_search(tensor, r.re)) return &r;
        return nullptr;
    }
};

rule make_rule(const std::string& pattern, int bits, const std::string& where) {
    try {
        return rule{pattern, std::regex(pattern, std::regex::ECMAScript), bits};
    } catch (const std::regex_error& e) {
        throw fatal(where + ": invalid regex '" + pattern + "': " + e.what());
    }
}

recipe load_recipe(const options& o) {
    const std::string& r = o.recipe;
    if (r.empty() || r == "uniform") {
        if (!o.bits) throw usage_error{"--recipe uniform needs --bits"};
        return {"uniform", *o.bits, {}};
    }
    if (r.size() == 3 && r.starts_with("PQ") && r[2] >= '1' && r[2] <= '8') return {r, o.bits.value_or(r[2] - '0'), {}};
    // PQ<b>-E<e>: the linear layers at b bits and the embeddings at e, as llama.cpp's
    // quantization types keep token embeddings wider than the rest.
    if (r.size() == 6 && r.starts_with("PQ") && r[2] >= '1' && r[2] <= '8' && r.substr(3, 2) == "-E" && r[5] >= '1' &&
        r[5] <= '8')
        return {r, o.bits.value_or(r[2] - '0'), {make_rule("embed", r[5] - '0', r)}};
    if (r == "PQ2-Mixed")
        return {r,
                o.bits.value_or(4),
                {make_rule("mlp|experts|feed_forward", 2, r), make_rule("self_attn|attention", 4, r)}};
    std::error_code ec;
    if (!fs::is_regular_file(r, ec))
        throw usage_error{"--recipe: '" + r + "' is neither a built-in recipe (uniform, PQ1..PQ8, PQ<b>-E<e>, PQ2-Mixed) nor a file"};
    std::ifstream in(r, std::ios::binary);
    const json j = json::parse(in, nullptr, false);
    const std::string where = "recipe " + r;
    if (j.is_discarded() || !j.is_object()) throw fatal(where + ": not a JSON object");
    const auto bits_of = [&](const json& v, const std::string& what) {
        if (v.is_string() && v == "keep") return 0;
        if (!v.is_number_integer() || v.get<std::int64_t>() < 1 || v.get<std::int64_t>() > 8)
            throw fatal(where + ": " + what + " " + v.dump() + " is neither 1..8 nor \"keep\"");
        return static_cast<int>(v.get<std::int64_t>());
    };
    recipe out;
    out.name = r;
    if (!j.contains("default") && !o.bits) throw fatal(where + ": no \"default\" bits (or pass --bits)");
    out.default_bits = o.bits ? *o.bits : bits_of(j["default"], "default");
    if (out.default_bits == 0) throw fatal(where + ": \"default\" must be 1..8");
    if (j.contains("rules")) {
        if (!j["rules"].is_array()) throw fatal(where + ": \"rules\" is not an array");
        for (const json& e : j["rules"]) {
            if (!e.is_object() || !e.contains("pattern") || !e["pattern"].is_string() || !e.contains("bits"))
                throw fatal(where + ": each rule needs \"pattern\" (a string) and \"bits\"");
            out.rules.push_back(make_rule(e["pattern"].get<std::string>(), bits_of(e["bits"], "bits"), where));
        }
    }
    for (const auto& [k, v] : j.items())
        if (k != "default" && k != "rules") throw fatal(where + ": unknown field '" + k + "'");
    return out;
}

// ---------------------------------------------------------------------------------------
// Which tensors are quantized
// ---------------------------------------------------------------------------------------
bool contains(std::string_view s, std::string_view what) { return s.find(what) != s.npos; }

bool tied_embeddings(const json& config) {
    if (config.contains("tie_word_embeddings") && config["tie_word_embeddings"].is_boolean())
        return config["tie_word_embeddings"].get<bool>();
    if (config.contains("text_config") && config["text_config"].is_object() &&
        config["text_config"].contains("tie_word_embeddings") && config["text_config"]["tie_word_embeddings"].is_boolean())
        return config["text_config"]["tie_word_embeddings"].get<bool>();
    return true;  // transformers' default
}

/// Why a tensor is kept, or "" if it is eligible for quantization. Embeddings are kept unless
/// `embeddings` (a recipe rule names them).
std::string keep_reason(const std::string& name, const hlwq::io::tensor_view& v, const json& config,
                        bool include_vision, bool embeddings) {
    using hlwq::io::dtype;
    if (v.type != dtype::f32 && v.type != dtype::f16 && v.type != dtype::bf16) return "not floating point";
    if (v.shape.size() != 2 && v.shape.size() != 3) return "not a matrix";
    if (v.shape.size() == 2 && !name.ends_with(".weight")) return "not a .weight";
    if (v.shape.size() == 3 && !contains(name, "experts")) return "3-D, not experts";
    if (!include_vision)
        for (const char* p : {"vision_tower", "audio_tower", "multi_modal_projector", "embed_vision", "embed_audio", "visual."})
            if (contains(name, p)) return "vision/audio";
    if (contains(name, "embed") && !embeddings) return "embedding";
    {
        std::string_view s = name;
        if (s.ends_with(".weight")) s.remove_suffix(7);
        const std::size_t dot = s.rfind('.');
        if (contains(dot == s.npos ? s : s.substr(dot + 1), "norm")) return "norm";
    }
    if (contains(name, "router") || name.ends_with(".gate.weight") || contains(name, "shared_expert_gate"))
        return "router";
    if (name == "lm_head.weight" && tied_embeddings(config)) return "tied lm_head";
    if (v.shape.back() < 128) return "< 128 columns";
    return "";
}

// ---------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------
std::string human_bytes(double b) {
    char buf[32];
    if (b >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
    else if (b >= 1e6) std::snprintf(buf, sizeof buf, "%.2f MB", b / 1e6);
    else std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
    return buf;
}

std::string hms(double s) {
    if (!std::isfinite(s) || s < 0) return "--:--";
    const auto t = static_cast<long>(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
    return buf;
}

class progress {
public:
    progress(std::size_t tensors, std::uint64_t bytes)
        : tty_(::isatty(STDERR_FILENO) != 0), total_(tensors), total_bytes_(bytes),
          start_(std::chrono::steady_clock::now()) {}

    void done(const std::string& name, std::uint64_t bytes, const std::string& what) {
        ++count_;
        bytes_ += bytes;
        const double s = seconds();
        const double rate = s > 0 ? static_cast<double>(bytes_) / s : 0;
        const double eta = rate > 0 ? static_cast<double>(total_bytes_ - bytes_) / rate : NAN;
        char line[512];
        if (tty_) {
            constexpr int width = 24;
            const int fill = total_bytes_ ? static_cast<int>(width * static_cast<double>(bytes_) / static_cast<double>(total_bytes_)) : width;
            std::string bar(static_cast<std::size_t>(fill), '#');
            bar.resize(width, '.');
            std::snprintf(line, sizeof line, "\r[%s] %zu/%zu tensors  %.2f GB/s  ETA %s  %-40.40s", bar.c_str(), count_,
                          total_, rate / 1e9, hms(eta).c_str(), name.c_str());
            std::fputs(line, stderr);
            if (count_ == total_) std::fputs("\n", stderr);
        } else {
            std::snprintf(line, sizeof line, "[%zu/%zu] %s: %s (%.2f GB/s, ETA %s)\n", count_, total_, name.c_str(),
                          what.c_str(), rate / 1e9, hms(eta).c_str());
            std::fputs(line, stderr);
        }
        std::fflush(stderr);
    }
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

private:
    bool tty_ = false;
    std::size_t total_ = 0, count_ = 0;
    std::uint64_t total_bytes_ = 0, bytes_ = 0;
    std::chrono::steady_clock::time_point start_{};
};

// ---------------------------------------------------------------------------------------
// Quantizing one tensor
// ---------------------------------------------------------------------------------------
/// Tells the kernel the pages of `data` (a read-only file mapping) are not needed any more,
/// so that the input does not pile up in the resident set. Errors are harmless and ignored.
void drop_pages(std::span<const std::byte> data) {
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto b = reinterpret_cast<std::uintptr_t>(data.data()) / page * page;
    const auto e = (reinterpret_cast<std::uintptr_t>(data.data()) + data.size()) / page * page;
    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

/// Sum of squared errors and of squared weights of q against w, dequantized in chunks of rows
/// on `threads` threads.
template <class T>
std::pair<double, double> error_sums(const hlwq::quantized_view& q, std::span<const T> w, unsigned threads) {
    const std::size_t rows = q.rows, cols = q.cols;
    const std::size_t n = std::max<std::size_t>(1, std::min<std::size_t>(threads, rows));
    std::vector<double> err(n, 0.0), ref(n, 0.0);
    const auto work = [&](std::size_t t) {
        const std::size_t r0 = rows * t / n, r1 = rows * (t + 1) / n, chunk = std::max<std::size_t>(1, 65536 / cols);
        std::vector<float> buf;
        for (std::size_t r = r0; r < r1; r += chunk) {
            const std::size_t m = std::min(chunk, r1 - r);
            buf.resize(m * cols);
            hlwq::dequantize_rows(q, r, std::span<float>(buf));
            for (std::size_t i = 0; i < m * cols; ++i) {
                const double x = static_cast<float>(w[r * cols + i]), d = x - buf[i];
                err[t] += d * d;
                ref[t] += x * x;
            }
        }
    };
    std::vector<std::thread> pool;
    try {
        for (std::size_t t = 1; t < n; ++t) pool.emplace_back(work, t);
    } catch (const std::system_error&) {  // cannot start more threads: do their part here
        for (std::size_t t = pool.size() + 1; t < n; ++t) work(t);
    }
    work(0);
    for (auto& th : pool) th.join();
    double e = 0, r = 0;
    for (std::size_t t = 0; t < n; ++t) {
        e += err[t];
        r += ref[t];
    }
    return {e, r};
}

struct quantized_result {
    hlwq::quantized_matrix q{};  // all rows (experts · rows for a 3-D tensor)
    double nmse = 0;
};

template <class T>
quantized_result quantize_tensor(const std::string& name, std::span<const T> w, const std::vector<std::int64_t>& shape,
                                 int bits, unsigned threads) {
    const std::size_t experts = shape.size() == 3 ? static_cast<std::size_t>(shape[0]) : 1;
    const auto rows = static_cast<std::size_t>(shape[shape.size() - 2]), cols = static_cast<std::size_t>(shape.back());
    const unsigned nthreads = threads ? threads : std::max(1u, std::thread::hardware_concurrency());
    quantized_result out;
    double err = 0, ref = 0;
    for (std::size_t e = 0; e < experts; ++e) {
        const auto slice = w.subspan(e * rows * cols, rows * cols);
        hlwq::quantized_matrix q;
        try {
            q = hlwq::quantize(slice, rows, cols, bits, {.block = 128, .threads = nthreads});
        } catch (const std::invalid_argument& ex) {
            throw fatal("tensor '" + name + "'" + (experts > 1 ? ", expert " + std::to_string(e) : std::string()) +
                        ": " + ex.what());
        }
        const auto [de, dr] = error_sums(q.view(), slice, nthreads);
        err += de;
        ref += dr;
        if (experts == 1) {
            out.q = std::move(q);
        } else {
            if (e == 0) {
                out.q = q;
                out.q.rows = experts * rows;
                out.q.codes.reserve(experts * q.codes.size());
                out.q.norms.reserve(experts * q.norms.size());
            } else {
                out.q.codes.insert(out.q.codes.end(), q.codes.begin(), q.codes.end());
                out.q.norms.insert(out.q.norms.end(), q.norms.begin(), q.norms.end());
            }
        }
    }
    out.nmse = ref > 0 ? err / ref : 0.0;
    return out;
}

/// The elements of `v` (F32/F16/BF16) as a zero-copy span when aligned, else copied.
template <class T>
std::span<const T> typed(const hlwq::io::tensor_view& v, std::vector<T>& storage) {
    if (reinterpret_cast<std::uintptr_t>(v.data.data()) % alignof(T) == 0) return v.as<T>();
    storage = v.to_vector<T>();
    return storage;
}

// ---------------------------------------------------------------------------------------
// The conversion
// ---------------------------------------------------------------------------------------
struct tensor_plan {
    std::string name{};         // parameter name
    int bits = 0;               // 0 = kept
    std::string reason{};       // why kept / which rule
    std::vector<std::int64_t> shape{};
    hlwq::io::dtype type = hlwq::io::dtype::f32;  // of a kept tensor
    std::vector<float> own_centroids{};           // --to-hlwq: PolarQuant centroids that are not Lloyd-Max's
    std::uint64_t in_bytes = 0; // bytes read from the input
    std::uint64_t weights = 0;  // elements
};

/// The tensors written for `t`: itself when kept, else its .codes and .norms (and .centroids).
std::vector<hlwq::io::tensor_spec> stored_specs(const tensor_plan& t) {
    if (t.bits == 0) return {{t.name, t.type, t.shape}};
    std::vector<hlwq::io::tensor_spec> specs = hlwq::io::quantized_tensor_specs(t.name, t.shape, t.bits, 128);
    if (!t.own_centroids.empty())
        specs.push_back({t.name + ".centroids", hlwq::io::dtype::f32, {static_cast<std::int64_t>(t.own_centroids.size())}});
    return specs;
}

/// Bytes of tensor data written for `t` (what a shard's size counts).
std::uint64_t stored_bytes(const tensor_plan& t) {
    std::uint64_t total = 0;
    for (const hlwq::io::tensor_spec& s : stored_specs(t)) {
        std::uint64_t b = hlwq::io::dtype_size(s.type);
        for (std::int64_t d : s.shape) b *= static_cast<std::uint64_t>(d);
        total += b;
    }
    return total;
}

struct shard_plan {
    std::string file{};  // output file name
    std::vector<tensor_plan> tensors{};
};

struct report_entry {
    std::string name{};
    int bits = 0;
    std::vector<std::int64_t> shape{};
    std::optional<double> nmse = std::nullopt;
};

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_signal(int) { g_interrupted = 1; }

/// Removes the temporary output folder unless committed.
struct temp_folder {
    fs::path path{};
    bool committed = false;
    ~temp_folder() {
        if (!committed && !path.empty()) {
            std::error_code ec;
            fs::remove_all(path, ec);
        }
    }
};

bool is_weight_like(const fs::path& p) {
    const std::string ext = p.extension().string();
    for (const char* e : {".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx", ".safetensors"})
        if (ext == e) return true;
    return false;
}

void write_text(const fs::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::binary);
    out << text;
    out.flush();
    if (!out) throw fatal("cannot write " + p.string() + " (disk full?)");
}

int run(const options& o) {
    using namespace hlwq::io;
    const auto t0 = std::chrono::steady_clock::now();
    const recipe rcp = o.to_hlwq ? recipe{"to-hlwq", 4, {}} : load_recipe(o);
    std::error_code ec;
    if (!fs::is_directory(o.in, ec)) throw fatal(o.in.string() + ": not a folder");
    if (!fs::exists(o.in / "config.json", ec)) throw fatal(o.in.string() + ": no config.json (not a model folder)");
    if (fs::weakly_canonical(o.in, ec) == fs::weakly_canonical(o.out, ec))
        throw fatal("OUT_DIR is IN_DIR (" + o.in.string() + ")");
    if (fs::exists(o.out, ec) && !o.force)
        throw fatal(o.out.string() + " exists; pass --force to replace it");

    checkpoint ck = checkpoint::open(o.in);
    if (o.to_hlwq && ck.format() != checkpoint_format::polar)
        throw fatal(o.in.string() + ": --to-hlwq needs a PolarQuant folder (polar_config.json)");
    if (!o.to_hlwq && ck.format() == checkpoint_format::polar)
        throw fatal(o.in.string() + ": a PolarQuant folder; convert it with --to-hlwq");
    if (!o.to_hlwq && ck.config().contains("quantization_config"))
        throw fatal(o.in.string() + ": config.json already has a quantization_config (an already quantized model)");
    const json& config = ck.config();
    const safetensors_model& model = ck.tensors();

    // Plan: every tensor, in name order, known from the headers alone.
    std::map<std::string, std::size_t> input_shard_of;  // stored name -> input shard index
    for (std::size_t i = 0; i < model.shards().size(); ++i)
        for (std::string_view n : model.shards()[i].names()) input_shard_of.emplace(std::string(n), i);
    std::vector<tensor_plan> plans;
    std::vector<std::size_t> plan_input_shard;
    std::uint64_t in_bytes = 0, total_weights = 0;
    for (const safetensors_file& f : model.shards()) in_bytes += fs::file_size(f.path());
    for (const std::string& name : ck.names()) {
        tensor_plan t;
        t.name = name;
        t.shape = ck.shape(name);
        t.weights = 1;
        for (auto d : t.shape) t.weights *= static_cast<std::uint64_t>(d);
        std::string stored = name;
        if (ck.is_quantized(name)) {  // PolarQuant: already quantized
            t.bits = ck.bits(name);
            stored = name.substr(0, name.size() - 7) + ".codes";
            t.in_bytes = model.view(stored).data.size();
            // Centroids that are not the Lloyd-Max table (beyond float rounding) are stored with
            // the tensor. Converted to read them, released: one tensor in memory at a time.
            const auto v = ck.quantized(name);
            const auto lm = hlwq::lloyd_max_view(t.bits).centroids;
            double worst = 0;
            for (std::size_t i = 0; i < lm.size(); ++i)
                worst = std::max(worst, std::abs(static_cast<double>(v.centroids[i]) - lm[i]) / std::max(1.0, std::abs(static_cast<double>(lm[i]))));
            if (worst > 1e-5) t.own_centroids.assign(v.centroids.begin(), v.centroids.end());
            ck.release(name);
        } else {
            const tensor_view v = model.view(name);
            t.type = v.type;
            t.in_bytes = v.data.size();
            if (!o.to_hlwq) {
                // An embedding is quantized only when a rule's regex matches its name: the
                // default width is meant for linear layers, and token embeddings are usually
                // worth more bits than them (or none: kept).
                t.reason = keep_reason(name, v, config, o.include_vision, rcp.rule_for(name) != nullptr);
                if (t.reason.empty()) {
                    std::tie(t.bits, t.reason) = rcp.bits_for(name);
                    if (t.bits == 0) t.reason = "recipe: " + t.reason;
                }
            }
        }
        total_weights += t.weights;
        plans.push_back(std::move(t));
        plan_input_shard.push_back(input_shard_of.at(stored));
    }

    // Output shards: the input's, or transformers' split under --max-shard-size (a tensor's
    // .codes and .norms are one unit of the split).
    std::vector<shard_plan> shards;
    bool sharded = false;  // write an index
    if (o.max_shard_bytes) {
        std::vector<std::uint64_t> bytes;
        for (const tensor_plan& t : plans) bytes.push_back(stored_bytes(t));
        std::vector<std::vector<std::size_t>> split = split_into_shards(bytes, *o.max_shard_bytes);
        if (split.empty()) split.emplace_back();  // no tensors: one empty file
        sharded = split.size() > 1;
        for (std::size_t i = 0; i < split.size(); ++i) {
            shards.push_back({sharded ? shard_file_name(i, split.size()) : "model.safetensors", {}});
            for (std::size_t k : split[i]) shards.back().tensors.push_back(std::move(plans[k]));
        }
    } else {
        sharded = fs::exists(o.in / shard_index_name, ec);
        for (const safetensors_file& f : model.shards()) shards.push_back({f.path().filename().string(), {}});
        for (std::size_t k = 0; k < plans.size(); ++k) shards[plan_input_shard[k]].tensors.push_back(std::move(plans[k]));
    }
    std::size_t total_tensors = 0;
    for (const shard_plan& s : shards) total_tensors += s.tensors.size();

    // Output, into a temporary folder.
    temp_folder tmp;
    tmp.path = o.out;
    tmp.path += ".tmp-" + std::to_string(::getpid());
    fs::remove_all(tmp.path, ec);
    if (o.out.has_parent_path()) fs::create_directories(o.out.parent_path(), ec);
    if (!fs::create_directory(tmp.path, ec) || ec)
        throw fatal("cannot create " + tmp.path.string() + ": " + ec.message());

    quantization_config qc;
    qc.bits = rcp.default_bits;
    qc.block_size = 128;
    std::vector<report_entry> report;
    std::map<int, std::pair<std::size_t, std::uint64_t>> per_bits;  // bits -> tensors, weights
    std::size_t kept = 0;
    std::uint64_t kept_bytes = 0, quantized_weights = 0;
    std::map<std::string, std::string> weight_map;    // stored tensor -> shard file
    std::uint64_t out_bytes = 0, total_size = 0;      // file bytes; tensor data bytes (the index's total_size)
    progress bar(total_tensors, in_bytes);

    for (const shard_plan& s : shards) {
        std::vector<tensor_spec> specs;
        for (const tensor_plan& t : s.tensors) {
            for (tensor_spec& x : stored_specs(t)) specs.push_back(std::move(x));
            total_size += stored_bytes(t);
        }
        for (const tensor_spec& sp : specs) weight_map[sp.name] = s.file;

        safetensors_writer writer(tmp.path / s.file, specs, {{"format", "pt"}});
        for (const tensor_plan& t : s.tensors) {
            if (g_interrupted) throw fatal("interrupted");
            std::string what;
            if (t.bits == 0) {
                const tensor_view v = model.view(t.name);
                writer.write(t.name, v.data);
                drop_pages(v.data);
                ++kept;
                kept_bytes += v.data.size();
                what = "kept (" + t.reason + ")";
            } else if (o.to_hlwq) {
                const auto v = ck.quantized(t.name);
                write_quantized(writer, t.name, v);
                if (!t.own_centroids.empty()) writer.write(t.name + ".centroids", std::span<const float>(t.own_centroids));
                qc.tensors[t.name] = {t.shape, t.bits, t.own_centroids.empty() ? "" : t.name + ".centroids"};
                report.push_back({t.name, t.bits, t.shape, std::nullopt});
                what = "PQ" + std::to_string(t.bits) + " (repacked)";
            } else {
                const tensor_view v = model.view(t.name);
                quantized_result r;
                const auto go = [&]<class T>() {
                    std::vector<T> storage;
                    r = quantize_tensor(t.name, typed<T>(v, storage), t.shape, t.bits, o.threads);
                };
                if (v.type == dtype::bf16) go.operator()<hlwq::bfloat16>();
                else if (v.type == dtype::f16) go.operator()<hlwq::half>();
                else go.operator()<float>();
                write_quantized(writer, t.name, r.q);
                drop_pages(v.data);
                qc.tensors[t.name] = {t.shape, t.bits, ""};
                report.push_back({t.name, t.bits, t.shape, r.nmse});
                char buf[64];
                std::snprintf(buf, sizeof buf, "PQ%d, NMSE %.3e", t.bits, r.nmse);
                what = buf;
            }
            if (t.bits != 0) {
                auto& pb = per_bits[t.bits];
                ++pb.first;
                pb.second += t.weights;
                quantized_weights += t.weights;
            }
            bar.done(t.name, t.in_bytes, what);
            if (o.to_hlwq && t.bits != 0) ck.release(t.name);
        }
        writer.finish();
        out_bytes += writer.file_size();
    }
    if (total_tensors == 0) bar.done("(no tensors)", 0, "");

    // Index, config, other files.
    if (sharded) write_text(tmp.path / shard_index_name, shard_index(weight_map, total_size).dump(2) + "\n");
    json cfg = config;
    cfg.erase("quantization_config");
    cfg = with_quantization_config(cfg, qc);
    cfg["quantization_config"]["recipe"] = rcp.name;
    write_text(tmp.path / "config.json", cfg.dump(2) + "\n");
    std::vector<std::string> not_copied;
    for (const fs::directory_entry& e : fs::directory_iterator(o.in)) {
        const std::string fname = e.path().filename().string();
        if (fname == "config.json" || fname == shard_index_name ||
            std::any_of(model.shards().begin(), model.shards().end(),
                        [&](const safetensors_file& f) { return f.path().filename() == fname; }))
            continue;
        if (o.to_hlwq && fname == "polar_config.json") continue;
        if (!e.is_regular_file()) {
            not_copied.push_back(fname + " (not a regular file)");
        } else if (is_weight_like(e.path()) && fname != "tokenizer.model") {
            not_copied.push_back(fname + " (weights in another file)");
        } else if (e.file_size() > (std::uint64_t{256} << 20)) {
            not_copied.push_back(fname + " (over 256 MiB)");
        } else {
            fs::copy_file(e.path(), tmp.path / fname, ec);
            if (ec) throw fatal("cannot copy " + e.path().string() + ": " + ec.message());
        }
    }
    for (const std::string& n : not_copied) std::fprintf(stderr, "note: not copied: %s\n", n.c_str());

    // Commit: rename into place (replacing OUT_DIR with --force).
    fs::path old;
    if (fs::exists(o.out, ec)) {
        old = o.out;
        old += ".old-" + std::to_string(::getpid());
        fs::rename(o.out, old, ec);
        if (ec) throw fatal("cannot move the existing " + o.out.string() + " away: " + ec.message());
    }
    fs::rename(tmp.path, o.out, ec);
    if (ec) {
        if (!old.empty()) fs::rename(old, o.out, ec);
        throw fatal("cannot rename " + tmp.path.string() + " to " + o.out.string());
    }
    tmp.committed = true;
    if (!old.empty()) fs::remove_all(old, ec);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // Report.
    std::vector<const report_entry*> by_nmse;
    double nmse_sum = 0, ratio_sum = 0;
    for (const report_entry& r : report)
        if (r.nmse) {
            by_nmse.push_back(&r);
            nmse_sum += *r.nmse;
            ratio_sum += *r.nmse / hlwq::lloyd_max_mse(r.bits);
        }
    std::sort(by_nmse.begin(), by_nmse.end(), [](auto* a, auto* b) { return *a->nmse > *b->nmse; });
    const double nmse_mean = by_nmse.empty() ? 0 : nmse_sum / static_cast<double>(by_nmse.size());
    const double ratio_mean = by_nmse.empty() ? 0 : ratio_sum / static_cast<double>(by_nmse.size());
    const double ratio = out_bytes ? static_cast<double>(in_bytes) / static_cast<double>(out_bytes) : 0;

    std::printf("hlwq-quantize: %s -> %s (recipe %s, default PQ%d)\n", o.in.c_str(), o.out.c_str(), rcp.name.c_str(),
                rcp.default_bits);
    std::printf("tensors: %zu quantized, %zu kept\n", report.size(), kept);
    for (const auto& [b, pb] : per_bits)
        std::printf("  PQ%d   %5zu tensors  %12llu weights\n", b, pb.first, static_cast<unsigned long long>(pb.second));
    std::printf("  kept  %5zu tensors  %12s\n", kept, human_bytes(static_cast<double>(kept_bytes)).c_str());
    if (!by_nmse.empty()) {
        std::printf("NMSE: mean %.4e over %zu tensors (mean NMSE / Lloyd-Max MSE of their width: %.3f)\n", nmse_mean,
                    by_nmse.size(), ratio_mean);
        std::printf("worst %zu:\n", std::min<std::size_t>(10, by_nmse.size()));
        for (std::size_t i = 0; i < by_nmse.size() && i < 10; ++i)
            std::printf("  %.4e  PQ%d  (x%.3f of Lloyd-Max)  %s\n", *by_nmse[i]->nmse, by_nmse[i]->bits,
                        *by_nmse[i]->nmse / hlwq::lloyd_max_mse(by_nmse[i]->bits), by_nmse[i]->name.c_str());
    }
    std::printf("size: %s -> %s (x%.2f)\n", human_bytes(static_cast<double>(in_bytes)).c_str(),
                human_bytes(static_cast<double>(out_bytes)).c_str(), ratio);
    std::printf("time: %.2f s (%.1f M weights/s, %.3f GB/s of input)\n", seconds,
                static_cast<double>(total_weights) / seconds / 1e6, static_cast<double>(in_bytes) / seconds / 1e9);

    if (!o.json_file.empty()) {
        json j;
        j["input_dir"] = o.in.string();
        j["output_dir"] = o.out.string();
        j["recipe"] = rcp.name;
        j["default_bits"] = rcp.default_bits;
        j["seconds"] = seconds;
        j["input_bytes"] = in_bytes;
        j["output_bytes"] = out_bytes;
        j["compression_ratio"] = ratio;
        j["weights"] = total_weights;
        j["quantized_weights"] = quantized_weights;
        j["weights_per_second"] = static_cast<double>(total_weights) / seconds;
        j["bits"] = json::object();
        for (const auto& [b, pb] : per_bits) j["bits"][std::to_string(b)] = {{"tensors", pb.first}, {"weights", pb.second}};
        j["kept"] = {{"tensors", kept}, {"bytes", kept_bytes}};
        j["nmse_mean"] = by_nmse.empty() ? json(nullptr) : json(nmse_mean);
        j["nmse_mean_over_limit"] = by_nmse.empty() ? json(nullptr) : json(ratio_mean);
        j["worst"] = json::array();
        for (std::size_t i = 0; i < by_nmse.size() && i < 10; ++i) j["worst"].push_back(by_nmse[i]->name);
        j["tensors"] = json::array();
        for (const report_entry& r : report)
            j["tensors"].push_back({{"name", r.name},
                                    {"bits", r.bits},
                                    {"shape", r.shape},
                                    {"nmse", r.nmse ? json(*r.nmse) : json(nullptr)},
                                    {"lloyd_max_mse", hlwq::lloyd_max_mse(r.bits)}});
        std::ofstream out(o.json_file);
        out << j.dump(2) << "\n";
        out.flush();
        if (!out) throw fatal("cannot write " + o.json_file);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::signal(SIGXFSZ, SIG_IGN);  // a file size limit is a write error (EFBIG), not a kill
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    try {
        const auto o = parse_args(argc, argv);
        if (!o) return 0;
        return run(*o);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "hlwq-quantize: %s\n(hlwq-quantize --help for usage)\n", e.message.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
