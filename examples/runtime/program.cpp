// SPDX-License-Identifier: MIT
#include "program.hpp"

#include "image.hpp"
#include "jinja.hpp"
#include "sampler.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

#include <hlwq/io/safetensors.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hlwq::rt {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// A usage error (exit status 2).
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Everything the command line sets.
struct program_options {
    std::string model_dir{};
    std::optional<std::string> prompt{};
    std::string system{};
    std::vector<std::string> images{};  // --image, in order
    std::size_t max_new_tokens = 512;
    bool raw = false;
    model_options model{};
    sampler_options sampling{};
    bool seed_given = false;
    // Testing modes.
    std::optional<std::vector<std::int32_t>> ids{};
    std::optional<std::string> logits_out{};
    std::optional<std::size_t> greedy{};
    std::optional<std::string> perplexity{};
    std::optional<std::size_t> ctx{};
    std::size_t max_windows = 0;
    std::size_t first_window = 0;
    bool help = false;
};

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
    T v{};
    const char* end = text.data() + text.size();
    const auto [p, ec] = std::from_chars(text.data(), end, v);
    if (text.empty() || ec != std::errc() || p != end)
        throw usage_error(std::string(flag) + ": '" + std::string(text) + "' is not a number");
    if constexpr (std::is_floating_point_v<T>)
        if (!std::isfinite(v)) throw usage_error(std::string(flag) + ": '" + std::string(text) + "' is not a finite number");
    return v;
}

std::vector<std::int32_t> parse_ids(std::string_view text) {
    std::vector<std::int32_t> ids;
    std::size_t i = 0;
    while (i < text.size()) {
        if (text[i] == ',' || text[i] == ' ') {
            ++i;
            continue;
        }
        std::int32_t v = 0;
        const auto [p, ec] = std::from_chars(text.data() + i, text.data() + text.size(), v);
        if (ec != std::errc() || p == text.data() + i || v < 0 ||
            (p != text.data() + text.size() && *p != ',' && *p != ' '))
            throw usage_error("--ids: '" + std::string(text) + "' is not a comma-separated list of token ids");
        ids.push_back(v);
        i = static_cast<std::size_t>(p - text.data());
    }
    if (ids.empty()) throw usage_error("--ids: no token ids given");
    return ids;
}

program_options parse_args(std::span<const std::string> args) {
    program_options o;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        const auto value = [&]() -> std::string_view {
            if (i + 1 >= args.size()) throw usage_error(a + " needs a value");
            return args[++i];
        };
        if (a == "--help" || a == "-h") {
            o.help = true;
            return o;
        } else if (a == "--model" || a == "-m") {
            o.model_dir = value();
        } else if (a == "--prompt" || a == "-p") {
            o.prompt = std::string(value());
        } else if (a == "--system") {
            o.system = value();
        } else if (a == "--image") {
            o.images.emplace_back(value());
        } else if (a == "--max-new-tokens" || a == "-n") {
            o.max_new_tokens = parse_number<std::size_t>(a, value());
        } else if (a == "--kv-bits") {
            const std::string_view v = value();
            const int bits = parse_number<int>(a, v);
            if (bits != 0 && bits != 2 && bits != 3 && bits != 4 && bits != 32)
                throw usage_error("--kv-bits: " + std::string(v) + " is not 0, 2, 3, 4 or 32");
            o.model.kv_bits = bits;
        } else if (a == "--threads" || a == "-t") {
            o.model.threads = parse_number<unsigned>(a, value());
        } else if (a == "--prefill-chunk") {
            o.model.prefill_chunk = parse_number<std::size_t>(a, value());
            if (o.model.prefill_chunk == 0) throw usage_error("--prefill-chunk must be at least 1");
        } else if (a == "--exact") {
            o.model.int8_activations = false;
        } else if (a == "--raw") {
            o.raw = true;
        } else if (a == "--temperature" || a == "--temp") {
            o.sampling.temperature = parse_number<float>(a, value());
            if (o.sampling.temperature < 0.0f) throw usage_error(a + " must be >= 0");
        } else if (a == "--greedy-sampling") {
            o.sampling.temperature = 0.0f;
        } else if (a == "--top-k") {
            o.sampling.top_k = parse_number<std::size_t>(a, value());
        } else if (a == "--top-p") {
            o.sampling.top_p = parse_number<float>(a, value());
        } else if (a == "--min-p") {
            o.sampling.min_p = parse_number<float>(a, value());
        } else if (a == "--repeat-penalty") {
            o.sampling.repeat_penalty = parse_number<float>(a, value());
        } else if (a == "--repeat-last-n") {
            o.sampling.repeat_last_n = parse_number<std::int64_t>(a, value());
        } else if (a == "--seed") {
            o.sampling.seed = parse_number<std::uint64_t>(a, value());
            o.seed_given = true;
        } else if (a == "--ids") {
            o.ids = parse_ids(value());
        } else if (a == "--logits-out") {
            o.logits_out = std::string(value());
        } else if (a == "--greedy") {
            o.greedy = parse_number<std::size_t>(a, value());
        } else if (a == "--perplexity") {
            o.perplexity = std::string(value());
        } else if (a == "--ctx" || a == "-c") {
            o.ctx = parse_number<std::size_t>(a, value());
            if (*o.ctx < 2) throw usage_error(a + " must be at least 2");
        } else if (a == "--max-windows") {
            o.max_windows = parse_number<std::size_t>(a, value());
        } else if (a == "--first-window") {
            o.first_window = parse_number<std::size_t>(a, value());
        } else if (!a.empty() && a[0] == '-') {
            throw usage_error("unknown option '" + a + "'");
        } else {
            throw usage_error("unexpected argument '" + a + "' (the model folder goes after --model)");
        }
    }
    if (o.model_dir.empty()) throw usage_error("no model folder given (--model DIR)");
    if (const std::string msg = validate(o.sampling); !msg.empty()) throw usage_error(msg);
    if (o.ids && o.perplexity) throw usage_error("--ids and --perplexity are different modes; choose one");
    if (o.ids && !o.logits_out && !o.greedy) throw usage_error("--ids needs --logits-out FILE and/or --greedy N");
    if (!o.ids && (o.logits_out || o.greedy)) throw usage_error("--logits-out and --greedy need --ids");
    if ((o.ids || o.perplexity) && (o.prompt || o.raw || !o.system.empty()))
        throw usage_error("--prompt, --system and --raw are for chat, not for --ids or --perplexity");
    if (o.max_windows && !o.perplexity) throw usage_error("--max-windows needs --perplexity");
    if (o.first_window && !o.perplexity) throw usage_error("--first-window needs --perplexity");
    if (o.raw && !o.system.empty()) throw usage_error("--system needs the chat template (not --raw)");
    if (!o.images.empty() && o.perplexity) throw usage_error("--image is for chat and --ids, not for --perplexity");
    if (!o.images.empty() && o.raw) throw usage_error("--image needs the chat template (not --raw)");
    return o;
}

// --- --ids modes ---------------------------------------------------------------------

void check_ids(const std::vector<std::int32_t>& ids, const causal_lm& model) {
    for (const std::int32_t id : ids)
        if (static_cast<std::size_t>(id) >= model.vocab_size())
            throw std::runtime_error("--ids: token id " + std::to_string(id) + " is outside the vocabulary (" +
                                     std::to_string(model.vocab_size()) + " tokens)");
}

void write_logits(const std::string& path, std::span<const float> logits, std::size_t seq, std::size_t vocab) {
    io::safetensors_writer w(path, {io::tensor_spec{"logits", io::dtype::f32,
                                                    {static_cast<std::int64_t>(seq), static_cast<std::int64_t>(vocab)}}});
    w.write("logits", logits);
    w.finish();
}

std::int32_t argmax(std::span<const float> row) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < row.size(); ++i)
        if (row[i] > row[best]) best = i;
    return static_cast<std::int32_t>(best);
}

/// Empties the model and queues the --image images: the ids already hold their expanded
/// image tokens, which the images fill in order.
void queue_images(causal_lm& model, const std::vector<rgb_image>& images) {
    model.reset();
    for (const rgb_image& im : images) (void)model.queue_image(im);
}

int run_ids(const program_options& o, causal_lm& model, const std::vector<rgb_image>& images, std::ostream& out,
            std::ostream& err) {
    const auto& ids = *o.ids;
    check_ids(ids, model);
    const std::size_t vocab = model.vocab_size();
    if (o.logits_out) {
        std::vector<float> logits(ids.size() * vocab);
        queue_images(model, images);
        const auto t0 = clock_type::now();
        model.forward(ids, logits, true);
        const double sec = seconds_since(t0);
        for (const float v : logits)
            if (!std::isfinite(v)) throw std::runtime_error("the model produced a non-finite logit");
        write_logits(*o.logits_out, logits, ids.size(), vocab);
        err << "wrote " << *o.logits_out << ": logits [" << ids.size() << ", " << vocab << "] (forward pass "
            << sec * 1000.0 << " ms)\n";
    }
    if (o.greedy) {
        std::vector<float> logits(vocab);
        queue_images(model, images);
        model.forward(ids, logits, false);
        std::string line;
        for (std::size_t k = 0; k < *o.greedy; ++k) {
            const std::int32_t next = argmax(logits);
            if (k) line += ',';
            line += std::to_string(next);
            if (k + 1 < *o.greedy) model.forward(std::span(&next, 1), logits, false);
        }
        out << line << '\n' << std::flush;
    }
    return 0;
}

// --- perplexity ------------------------------------------------------------------------

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::ostringstream s;
    s << in.rdbuf();
    if (in.bad()) throw std::runtime_error(path + ": read error");
    return s.str();
}

std::string_view strip(std::string_view s) {
    constexpr std::string_view ws = " \t\n\r\v\f";
    const std::size_t b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

int run_perplexity(const program_options& o, causal_lm& model, const tokenizer& tok, const special_token_ids& sp,
                   std::ostream& out, std::ostream& err) {
    if (!sp.eos)
        throw std::runtime_error(o.model_dir + ": no eos_token_id in config.json/generation_config.json (the "
                                 "perplexity method appends <eos> after each entry)");
    // <bos> when the tokenizer's post-processor adds one (as llama-perplexity's add_bos).
    std::optional<std::int32_t> bos;
    if (const auto with = tok.encode("", true); !with.empty()) bos = with.front();

    const std::string text = read_file(*o.perplexity);
    std::vector<std::int32_t> tokens;
    std::size_t entries = 0;
    for (std::size_t at = 0; at <= text.size();) {
        std::size_t end = text.find("\n\n", at);
        if (end == std::string::npos) end = text.size();
        const auto ids = tok.encode(strip(std::string_view(text).substr(at, end - at)), false);
        tokens.insert(tokens.end(), ids.begin(), ids.end());
        tokens.push_back(*sp.eos);
        ++entries;
        at = end + 2;
    }
    const std::size_t ctx = o.ctx.value_or(512);
    const std::size_t window = bos ? ctx - 1 : ctx;  // tokens of the text per window
    std::size_t windows = tokens.size() / window;
    if (windows == 0)
        throw std::runtime_error(*o.perplexity + ": " + std::to_string(tokens.size()) +
                                 " tokens, fewer than one window of " + std::to_string(window));
    // --first-window/--max-windows select a slice of the windows, so that a long evaluation can
    // be split over processes and recombined exactly: log(ppl) is the mean NLL per token.
    const std::size_t first = o.first_window;
    if (first >= windows)
        throw std::runtime_error(*o.perplexity + ": --first-window " + std::to_string(first) + " but only " +
                                 std::to_string(windows) + " windows");
    windows -= first;
    if (o.max_windows) windows = std::min(windows, o.max_windows);
    err << *o.perplexity << ": " << entries << " entries, " << tokens.size() << " tokens; " << windows << " windows of "
        << ctx << (bos ? " (<bos> + " + std::to_string(window) + " tokens)" : std::string())
        << (first ? ", from window " + std::to_string(first) : std::string()) << "\n";

    const std::size_t vocab = model.vocab_size();
    const std::size_t chunk = std::max<std::size_t>(1, o.model.prefill_chunk);
    std::vector<float> logits;
    std::vector<std::int32_t> seq;
    double sum = 0, sum_sq = 0;
    std::size_t count = 0;
    const auto t0 = clock_type::now();
    for (std::size_t w = 0; w < windows; ++w) {
        seq.clear();
        if (bos) seq.push_back(*bos);
        seq.insert(seq.end(), tokens.begin() + static_cast<std::ptrdiff_t>((first + w) * window),
                   tokens.begin() + static_cast<std::ptrdiff_t>((first + w + 1) * window));
        model.reset();
        // Positions 0 .. n-2 predict tokens 1 .. n-1; the last position's logits are not needed.
        const std::size_t n = seq.size();
        for (std::size_t from = 0; from + 1 < n; from += chunk) {
            const std::size_t len = std::min(chunk, n - 1 - from);
            logits.resize(len * vocab);
            model.forward(std::span(seq).subspan(from, len), logits, true);
            for (std::size_t i = 0; i < len; ++i) {
                const std::span<const float> row(logits.data() + i * vocab, vocab);
                const float mx = *std::max_element(row.begin(), row.end());
                double z = 0;
                for (const float v : row) z += std::exp(static_cast<double>(v - mx));
                const double nll = std::log(z) + mx - row[static_cast<std::size_t>(seq[from + i + 1])];
                if (!std::isfinite(nll)) throw std::runtime_error("the model produced a non-finite logit");
                sum += nll;
                sum_sq += nll * nll;
                ++count;
            }
        }
        err << '[' << (w + 1) << ']' << std::fixed;
        err.precision(4);
        err << std::exp(sum / static_cast<double>(count)) << (w + 1 < windows ? "," : "\n") << std::flush;
        err.unsetf(std::ios::floatfield);
    }
    const double sec = seconds_since(t0);
    const double mean = sum / static_cast<double>(count);
    const double var = count > 1 ? std::max(0.0, (sum_sq / static_cast<double>(count) - mean * mean)) : 0.0;
    const double ppl = std::exp(mean);
    const double ppl_err = ppl * std::sqrt(var / static_cast<double>(count));
    char line[256];
    std::snprintf(line, sizeof line, "perplexity: %.4f +/- %.4f (%zu tokens, %zu windows of %zu)\n", ppl, ppl_err,
                  count, windows, ctx);
    out << line << std::flush;
    std::snprintf(line, sizeof line, "%.1f s, %.1f tokens/s; peak RSS %.1f MiB\n", sec,
                  sec > 0 ? static_cast<double>(windows * (window + (bos ? 1 : 0) - 1)) / sec : 0.0,
                  static_cast<double>(peak_rss_bytes()) / (1024.0 * 1024.0));
    err << line;
    return 0;
}

// --- chat ------------------------------------------------------------------------------

constexpr const char* chat_commands =
    "commands: /reset forget the conversation, /image PATH attach an image to the next message,\n"
    "/help this text, /exit (or end of input) quit; a line ending with '\\' continues on the next line\n";

int run_chat(const program_options& o, const char* name, causal_lm& model, const tokenizer& tok,
             std::optional<chat_template> tmpl, const special_token_ids& sp, std::vector<rgb_image> images,
             std::istream& in, std::ostream& out, std::ostream& err) {
    session_options so;
    so.sampling = o.sampling;
    if (so.sampling.temperature > 0.0f) {
        if (!o.seed_given) so.sampling.seed = std::random_device{}();
        err << name << ": seed " << so.sampling.seed << '\n';
    }
    so.max_new_tokens = o.max_new_tokens;
    so.raw = o.raw;
    so.system = o.system;
    chat_session session(model, tok, std::move(tmpl), sp.stop, so);
    const auto stream = [&](std::string_view piece) { out << piece << std::flush; };

    if (o.prompt) {
        session.send(*o.prompt, stream, images);
        out << '\n' << std::flush;
        err << format_stats(session.totals());
        return 0;
    }

    err << name << ": " << (o.raw ? "raw text mode (no chat template); " : "chat; ") << chat_commands;
    std::string line, text;
    for (;;) {
        err << (text.empty() ? "> " : ". ") << std::flush;
        if (!std::getline(in, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty() && line.back() == '\\') {
            line.pop_back();
            text += line + '\n';
            continue;
        }
        text += line;
        const std::string input = std::exchange(text, std::string());
        if (input == "/exit" || input == "/quit") break;
        if (input == "/help") {
            err << chat_commands;
            continue;
        }
        if (input == "/reset") {
            session.reset();
            images.clear();
            err << "(conversation cleared)\n";
            continue;
        }
        if (input == "/image" || input.rfind("/image ", 0) == 0) {
            const std::string path(strip(std::string_view(input).substr(6)));
            try {
                if (path.empty()) throw std::runtime_error("/image needs a file: /image PATH");
                if (!model.has_vision()) throw std::runtime_error("the model does not read images (no vision tower)");
                images.push_back(load_image(path));
                err << "(image " << path << ", " << images.back().width << "x" << images.back().height
                    << ", goes with the next message)\n";
            } catch (const std::exception& e) {
                err << "error: " << e.what() << '\n';
            }
            continue;
        }
        if (input.size() > 1 && input[0] == '/' && input.find_first_of(" \n") == std::string::npos) {
            err << "unknown command '" << input << "' (/help lists them)\n";
            continue;
        }
        if (strip(input).empty()) continue;
        try {
            const generation_stats st = session.send(input, stream, std::exchange(images, {}));
            out << '\n' << std::flush;
            if (st.stop == stop_reason::context_full) err << "(the context is full; /reset to start over)\n";
        } catch (const std::exception& e) {
            out << std::flush;
            err << "\nerror: " << e.what() << '\n';
        }
    }
    err << '\n' << format_stats(session.totals());
    return 0;
}

int run(const program_options& o, const char* name, model_loader load, std::istream& in, std::ostream& out,
        std::ostream& err) {
    namespace fs = std::filesystem;
    const fs::path dir = o.model_dir;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw std::runtime_error(o.model_dir + ": no such model folder");

    // Tokenizer and template first: their errors come before a slow model load.
    std::optional<tokenizer> tok;
    std::optional<chat_template> tmpl;
    const bool chat = !o.ids && !o.perplexity;
    if (!o.ids) {
        const fs::path tj = dir / "tokenizer.json";
        if (!fs::is_regular_file(tj, ec))
            throw std::runtime_error(tj.string() + ": not found (chat and --perplexity need the model's tokenizer; "
                                                   "--ids modes do not)");
        tok = tokenizer::from_file(tj);
        if (chat && !o.raw) tmpl = chat_template::from_model_dir(dir);
    }
    const special_token_ids sp = read_special_token_ids(dir, tok ? &*tok : nullptr, tmpl ? &*tmpl : nullptr);
    std::vector<rgb_image> images;
    for (const std::string& path : o.images) images.push_back(load_image(path));

    model_options mo = o.model;
    if (o.perplexity)
        mo.max_context = o.ctx.value_or(512);
    else if (o.ctx)
        mo.max_context = *o.ctx;
    const auto t0 = clock_type::now();
    std::unique_ptr<causal_lm> model = load(dir, mo);
    if (!model) throw std::runtime_error(o.model_dir + ": the model loader returned nothing");
    {
        char line[160];
        std::snprintf(line, sizeof line, "loaded in %.2f s: weights %.1f MiB, context %zu tokens\n",
                      seconds_since(t0), static_cast<double>(model->weight_bytes()) / (1024.0 * 1024.0),
                      model->max_context());
        err << name << ": " << model->description() << '\n' << name << ": " << line;
    }
    if (!images.empty() && !model->has_vision())
        throw std::runtime_error(o.model_dir + ": the model has no vision tower (--image needs a vision-language model)");
    if (o.ids) return run_ids(o, *model, images, out, err);
    if (o.perplexity) return run_perplexity(o, *model, *tok, sp, out, err);
    if (sp.stop.empty())
        err << name << ": warning: no EOS or end-of-turn token known; answers stop at --max-new-tokens\n";
    return run_chat(o, name, *model, *tok, std::move(tmpl), sp, std::move(images), in, out, err);
}

}  // namespace

std::string chat_program_usage(const char* name) {
    const std::string n = name;
    return "usage: " + n + " --model DIR [options]\n"
        "\n"
        "Chats with the language model in DIR (a Hugging Face folder with bf16/f16/f32 safetensors,\n"
        "or an HLWQ folder made by hlwq-quantize), using its tokenizer.json and chat template.\n"
        "By default an interactive multi-turn chat: type a message and press Enter; the answer is\n"
        "streamed as it is generated, and the KV cache is kept between turns (only the new part of\n"
        "the conversation is computed). Commands: /reset (forget the conversation), /help, /exit\n"
        "(or end of input); a line ending with '\\' continues on the next line.\n"
        "\n"
        "  -m, --model DIR          the model folder (required)\n"
        "  -p, --prompt TEXT        answer TEXT once and exit (no interaction)\n"
        "      --system TEXT        a system message first in the conversation\n"
        "      --image PATH         an image (PNG, JPEG, BMP, GIF, WebP) for the first message\n"
        "                           (--prompt or the first chat line), repeatable; in the chat, /image\n"
        "                           PATH attaches one to the next message. Needs a model with a vision\n"
        "                           tower. Each image becomes the chat template's image entry, expanded\n"
        "                           to the image's soft tokens. With --ids, the ids already hold the\n"
        "                           expanded image tokens and the images fill them, in order\n"
        "      --raw                no chat template: the text is tokenized as it is (with the\n"
        "                           tokenizer's <bos>) and continued; turns append to one document\n"
        "  -n, --max-new-tokens N   tokens per answer at most (default 512; 0 = until the end-of-turn\n"
        "                           token or a full context)\n"
        "  -c, --ctx N              chat: context size in tokens (default: the model's\n"
        "                           max_position_embeddings); --perplexity: window size (default 512)\n"
        "      --kv-bits B          KV cache: 0 = fp16 (default), 2, 3 or 4 = HLWQ-compressed,\n"
        "                           32 = fp32 (exact comparisons)\n"
        "  -t, --threads N          worker threads (default 0 = one per hardware thread)\n"
        "      --exact              quantized layers multiply with fp32 activations (default: int8,\n"
        "                           faster; dense layers always use fp32)\n"
        "      --prefill-chunk N    tokens per prefill batch (default 64)\n"
        "\n"
        "Sampling (defaults as llama.cpp; applied in transformers' order: repetition penalty,\n"
        "temperature, top-k, top-p, min-p):\n"
        "      --temperature T      (also --temp) default 0.8; 0 = greedy\n"
        "      --greedy-sampling    the same as --temperature 0: always the most likely token\n"
        "      --top-k N            keep the N most likely tokens (default 40; 0 = off)\n"
        "      --top-p P            keep the smallest set reaching probability P (default 0.95;\n"
        "                           1 = off)\n"
        "      --min-p P            drop tokens below P x the best one's probability (default 0.05;\n"
        "                           0 = off)\n"
        "      --repeat-penalty R   divide positive logits and multiply negative ones of recent\n"
        "                           tokens by R (default 1 = off)\n"
        "      --repeat-last-n N    how many recent tokens the penalty looks at (default 64;\n"
        "                           -1 = the whole context, 0 = off)\n"
        "      --seed S             random seed (default: random, printed); the same seed gives the\n"
        "                           same answer\n"
        "\n"
        "Measuring (no chat; output on stdout):\n"
        "      --perplexity FILE    perplexity of FILE as llama-perplexity and the gemma4-gcide-tiny\n"
        "                           README define it: entries split on blank lines and stripped,\n"
        "                           each tokenized without special tokens and followed by <eos>,\n"
        "                           concatenated, cut into windows of ctx-1 tokens (the last partial\n"
        "                           one dropped), <bos> prepended; every token after the first is\n"
        "                           predicted; prints 'perplexity: X +/- E (N tokens, ...)'\n"
        "      --max-windows N      only N windows\n"
        "      --first-window N     start at window N (0-based; default 0): split a long run over\n"
        "                           processes, log(perplexity) being the mean NLL per token\n"
        "      --ids 2,17,23        token ids for the two testing modes below (the model folder\n"
        "                           needs no tokenizer files for them):\n"
        "      --logits-out FILE    one forward pass over exactly those ids; writes float32 logits\n"
        "                           [seq, vocab] as safetensors (tensor 'logits')\n"
        "      --greedy N           prints the N greedy next token ids (comma-separated, one line),\n"
        "                           fed back one at a time through the KV cache; EOS does not stop it\n"
        "\n"
        "  -h, --help               this text\n"
        "\n"
        "Generated text, greedy ids and the perplexity go to stdout; progress, prefill/decode\n"
        "tokens/s and peak memory to stderr. Exit status: 0 ok, 1 error (\"error: ...\"), 2 usage.\n";
}

int run_chat_program(std::span<const std::string> args, const char* name, model_loader load, std::istream& in,
                     std::ostream& out, std::ostream& err) {
    program_options o;
    try {
        o = parse_args(args);
    } catch (const usage_error& e) {
        err << name << ": " << e.what() << "\n(" << name << " --help for usage)\n";
        return 2;
    }
    if (o.help) {
        out << chat_program_usage(name);
        return 0;
    }
    try {
        return run(o, name, load, in, out, err);
    } catch (const std::exception& e) {
        out << std::flush;
        err << "error: " << e.what() << '\n';
        return 1;
    } catch (...) {
        err << "error: unknown exception\n";
        return 1;
    }
}

int run_chat_program(int argc, char** argv, const char* name, model_loader load) {
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
    std::ios::sync_with_stdio(true);
    return run_chat_program(args, name, load, std::cin, std::cout, std::cerr);
}

}  // namespace hlwq::rt
