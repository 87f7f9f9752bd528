// SPDX-License-Identifier: MIT
#include "session.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace hlwq::rt {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// The JSON of `path`, or null when the file does not exist.
nlohmann::json read_json_if_present(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return nullptr;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path.string() + ": cannot open");
    std::ostringstream text;
    text << in.rdbuf();
    nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
    if (j.is_discarded()) throw std::runtime_error(path.string() + ": not valid JSON");
    return j;
}

// Integer ids of a field that is an id or a list of ids.
std::vector<std::int32_t> ids_of(const nlohmann::json& v) {
    std::vector<std::int32_t> out;
    const auto add = [&](const nlohmann::json& x) {
        if (x.is_number_integer() && x.get<std::int64_t>() >= 0 && x.get<std::int64_t>() <= INT32_MAX)
            out.push_back(static_cast<std::int32_t>(x.get<std::int64_t>()));
    };
    if (v.is_array())
        for (const auto& x : v) add(x);
    else
        add(v);
    return out;
}

// A token string of tokenizer_config.json: "…" or {"content": "…"}.
std::optional<std::string> token_string(const nlohmann::json& cfg, const char* key) {
    if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
    const auto& v = cfg[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return std::nullopt;
}

// The special token that ends an assistant turn in `tmpl`, found by rendering one exchange.
std::optional<std::int32_t> template_end_of_turn(const chat_template& tmpl, const tokenizer& tok) {
    try {
        static constexpr std::string_view marker = "Xq7marker";
        nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
        msgs.push_back({{"role", "user"}, {"content", "Hello"}});
        msgs.push_back({{"role", "assistant"}, {"content", std::string(marker)}});
        chat_options o;
        o.add_generation_prompt = false;
        const std::string text = tmpl.apply(msgs, o);
        const std::size_t at = text.rfind(marker);
        if (at == std::string::npos) return std::nullopt;
        const auto ids = tok.encode(std::string_view(text).substr(at + marker.size()), false);
        if (ids.empty() || !tok.is_special(ids.front())) return std::nullopt;
        const std::string& name = tok.id_to_token(ids.front());
        if (name.size() == 6 && name.starts_with("<0x")) return std::nullopt;  // a byte-fallback token
        return ids.front();
    } catch (const std::exception&) {
        // A template that refuses this conversation: rely on the known names.
    }
    return std::nullopt;
}

}  // namespace

special_token_ids read_special_token_ids(const std::filesystem::path& dir, const tokenizer* tok,
                                         const chat_template* tmpl) {
    special_token_ids out;
    const nlohmann::json config = read_json_if_present(dir / "config.json");
    const nlohmann::json gen = read_json_if_present(dir / "generation_config.json");
    const nlohmann::json tok_cfg = read_json_if_present(dir / "tokenizer_config.json");

    const auto first_id = [](const nlohmann::json& j, const char* key) -> std::optional<std::int32_t> {
        if (!j.is_object() || !j.contains(key)) return std::nullopt;
        const auto v = ids_of(j[key]);
        if (v.empty()) return std::nullopt;
        return v.front();
    };
    const nlohmann::json text_config =
        config.is_object() && config.contains("text_config") ? config["text_config"] : nlohmann::json(nullptr);
    for (const nlohmann::json* j : {&config, &text_config, &gen}) {
        if (!out.bos) out.bos = first_id(*j, "bos_token_id");
        if (!out.eos) out.eos = first_id(*j, "eos_token_id");
        if (j->is_object() && j->contains("eos_token_id"))
            for (std::int32_t id : ids_of((*j)["eos_token_id"])) out.stop.push_back(id);
    }
    if (tok) {
        if (const auto s = token_string(tok_cfg, "bos_token"); s && !out.bos) out.bos = tok->token_to_id(*s);
        if (const auto s = token_string(tok_cfg, "eos_token")) {
            if (const auto id = tok->token_to_id(*s)) {
                if (!out.eos) out.eos = id;
                out.stop.push_back(*id);
            }
        }
        for (const char* name : {"<end_of_turn>", "<turn|>", "<|im_end|>", "<|eot_id|>", "<|end|>"})
            if (const auto id = tok->token_to_id(name)) out.stop.push_back(*id);
        if (tmpl)
            if (const auto id = template_end_of_turn(*tmpl, *tok)) out.stop.push_back(*id);
    }
    std::sort(out.stop.begin(), out.stop.end());
    out.stop.erase(std::unique(out.stop.begin(), out.stop.end()), out.stop.end());
    return out;
}

generation_stats& generation_stats::operator+=(const generation_stats& o) noexcept {
    prompt_tokens += o.prompt_tokens;
    reused_tokens += o.reused_tokens;
    prefill_tokens += o.prefill_tokens;
    prefill_seconds += o.prefill_seconds;
    generated_tokens += o.generated_tokens;
    decode_tokens += o.decode_tokens;
    decode_seconds += o.decode_seconds;
    stop = o.stop;
    return *this;
}

std::size_t peak_rss_bytes() noexcept {
    rusage u{};
    if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
    return static_cast<std::size_t>(u.ru_maxrss) * 1024;  // Linux: KiB
}

std::string format_stats(const generation_stats& s) {
    const auto rate = [](std::size_t n, double sec) { return sec > 0 ? static_cast<double>(n) / sec : 0.0; };
    std::array<char, 512> buf{};
    const int n = std::snprintf(
        buf.data(), buf.size(),
        "prefill:  %zu tokens in %.3f s (%.1f tokens/s)%s\n"
        "decode:   %zu tokens in %.3f s (%.1f tokens/s)\n"
        "peak RSS: %.1f MiB\n",
        s.prefill_tokens, s.prefill_seconds, rate(s.prefill_tokens, s.prefill_seconds),
        s.reused_tokens ? (", " + std::to_string(s.reused_tokens) + " reused from the KV cache").c_str() : "",
        s.generated_tokens, s.decode_seconds, rate(s.generated_tokens, s.decode_seconds),
        static_cast<double>(peak_rss_bytes()) / (1024.0 * 1024.0));
    return std::string(buf.data(), n > 0 ? std::min(static_cast<std::size_t>(n), buf.size() - 1) : 0);
}

chat_session::chat_session(causal_lm& model, const tokenizer& tok, std::optional<chat_template> tmpl,
                           std::vector<std::int32_t> stop_ids, session_options options)
    : model_(&model),
      tok_(&tok),
      template_(std::move(tmpl)),
      stop_(std::move(stop_ids)),
      options_(std::move(options)),
      sampler_(options_.sampling) {
    if (!options_.raw && !template_)
        throw std::invalid_argument("chat_session: no chat template (use raw mode for plain text)");
    std::sort(stop_.begin(), stop_.end());
    options_.template_options.add_generation_prompt = true;
    if (model.position() != 0) model.reset();  // the session owns the cache from now on
}

bool chat_session::is_stop(std::int32_t id) const noexcept {
    return std::binary_search(stop_.begin(), stop_.end(), id);
}

nlohmann::ordered_json chat_session::messages() const {
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    if (!options_.raw && !options_.system.empty())
        msgs.push_back({{"role", "system"}, {"content", options_.system}});
    for (const auto& m : turns_) msgs.push_back(m);
    return msgs;
}

std::vector<std::int32_t> chat_session::render(const nlohmann::ordered_json& turns, const std::string& document,
                                               const std::vector<std::vector<std::int32_t>>& expansions,
                                               std::vector<std::pair<std::size_t, std::size_t>>& spans) const {
    spans.clear();
    if (options_.raw) return tok_->encode(document, true);
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    if (!options_.system.empty()) msgs.push_back({{"role", "system"}, {"content", options_.system}});
    for (const auto& m : turns) msgs.push_back(m);
    const std::vector<std::int32_t> ids = tok_->encode(template_->apply(msgs, options_.template_options), false);
    const std::int32_t image = model_->image_token_id();
    if (image < 0) return ids;
    // The processor's expansion: each image token of the text becomes its image's tokens.
    std::vector<std::int32_t> out;
    out.reserve(ids.size());
    for (const std::int32_t id : ids) {
        if (id != image) {
            out.push_back(id);
            continue;
        }
        if (spans.size() == expansions.size())
            throw std::runtime_error("the prompt holds more image tokens than the " + std::to_string(expansions.size()) +
                                     " image(s) of the conversation");
        const auto& e = expansions[spans.size()];
        spans.emplace_back(out.size(), out.size() + e.size());
        out.insert(out.end(), e.begin(), e.end());
    }
    if (spans.size() != expansions.size())
        throw std::runtime_error("the chat template wrote " + std::to_string(spans.size()) + " image token(s) for " +
                                 std::to_string(expansions.size()) +
                                 " image(s) (does it render {\"type\": \"image\"} content entries?)");
    return out;
}

void chat_session::reset() {
    turns_ = nlohmann::ordered_json::array();
    document_.clear();
    cache_.clear();
    images_.clear();
    expansions_.clear();
    model_->reset();
}

generation_stats chat_session::send(std::string_view user_text, const text_callback& on_text,
                                    std::span<const rgb_image> images) {
    generation_stats st;
    nlohmann::ordered_json turns = turns_;
    std::string document = document_;
    if (!images.empty() && options_.raw) throw std::invalid_argument("images need the chat template (not raw mode)");
    if (!images.empty() && !model_->has_vision())
        throw std::runtime_error(model_->description() + ": the model does not read images (no vision tower)");
    if (options_.raw) {
        document.append(user_text);
    } else if (images.empty()) {
        turns.push_back({{"role", "user"}, {"content", std::string(user_text)}});
    } else {
        nlohmann::ordered_json content = nlohmann::ordered_json::array();
        for (std::size_t i = 0; i < images.size(); ++i) content.push_back({{"type", "image"}});
        content.push_back({{"type", "text"}, {"text", std::string(user_text)}});
        turns.push_back({{"role", "user"}, {"content", std::move(content)}});
    }

    // New images are encoded and queued in the model now (their token counts shape the
    // prompt); any failure before they are fed empties the model, queue included.
    std::vector<rgb_image> all_images = images_;
    std::vector<std::vector<std::int32_t>> expansions = expansions_;
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    std::vector<std::int32_t> ids;
    try {
        for (const rgb_image& im : images) {
            expansions.push_back(model_->queue_image(im));
            all_images.push_back(im);
        }
        ids = render(turns, document, expansions, spans);
        if (ids.empty()) throw std::runtime_error("the prompt is empty (no tokens)");
    } catch (...) {
        if (!images.empty()) {
            cache_.clear();
            model_->reset();
        }
        throw;
    }
    const std::size_t max_context = model_->max_context();
    if (ids.size() > max_context)
        throw std::runtime_error("the conversation is " + std::to_string(ids.size()) +
                                 " tokens long and the context holds " + std::to_string(max_context) +
                                 " (start over with /reset, or a larger context)");
    st.prompt_tokens = ids.size();

    // The longest prefix of the prompt the cache already holds; at least one token is fed, for
    // the logits of the last one.
    std::size_t keep = 0;
    while (keep < cache_.size() && keep < ids.size() && cache_[keep] == ids[keep]) ++keep;
    keep = std::min(keep, ids.size() - 1);
    // Images are fed whole: never keep part of one. An earlier image that must be fed again
    // has to be queued before the new ones: then everything starts over (rare: the template
    // re-rendered an earlier turn differently).
    bool start_over = false;
    for (std::size_t i = 0; i < spans.size(); ++i) {
        if (spans[i].first < keep && keep < spans[i].second) keep = spans[i].first;
        if (i < images_.size() && spans[i].second > keep) start_over = true;
    }

    const std::size_t vocab = model_->vocab_size();
    const std::size_t drawable = std::min(vocab, tok_->vocab_size());  // ids the tokenizer can decode
    logits_.resize(vocab);
    std::vector<std::int32_t> generated;
    std::string answer;
    try {
        if (!start_over && keep < cache_.size()) {
            try {
                model_->truncate(keep);
            } catch (const std::exception&) {
                start_over = true;  // e.g. a sliding window already past `keep`
            }
            cache_.resize(keep);
        }
        if (start_over) {
            model_->reset();  // also drops the queued images: queue every image again, in order
            keep = 0;
            cache_.clear();
            for (const rgb_image& im : all_images) (void)model_->queue_image(im);
        }
        st.reused_tokens = keep;
        st.prefill_tokens = ids.size() - keep;
        auto t0 = clock_type::now();
        model_->forward(std::span(ids).subspan(keep), logits_, false);
        cache_ = ids;
        st.prefill_seconds = seconds_since(t0);

        t0 = clock_type::now();
        // The answer's text is what is streamed. In raw mode the decoder first sees the last
        // prompt token (its text is dropped), so that the continuation decodes in context (e.g.
        // a SentencePiece "▁word" keeps its space after the prompt's last word).
        stream_decoder decoder(*tok_);
        if (options_.raw) (void)decoder.push(cache_.back());
        const auto emit = [&](const std::string& piece) {
            if (piece.empty()) return;
            answer += piece;
            if (on_text) on_text(piece);
        };
        for (;;) {
            const std::int32_t next = sampler_.sample(std::span<const float>(logits_).first(drawable), cache_);
            if (is_stop(next)) {
                st.stop = stop_reason::end_of_turn;
                break;
            }
            generated.push_back(next);
            emit(decoder.push(next));
            if (options_.max_new_tokens != 0 && generated.size() >= options_.max_new_tokens) {
                st.stop = stop_reason::max_tokens;
                break;
            }
            if (cache_.size() >= max_context) {
                st.stop = stop_reason::context_full;
                break;
            }
            model_->forward(std::span(&next, 1), logits_, false);
            cache_.push_back(next);
            ++st.decode_tokens;
        }
        emit(decoder.finish());
        st.decode_seconds = seconds_since(t0);
    } catch (...) {
        // The model's state is unknown after a failed forward pass: start from an empty cache.
        cache_.clear();
        model_->reset();
        throw;
    }
    st.generated_tokens = generated.size();

    if (options_.raw)
        document += answer;
    else
        turns.push_back({{"role", "assistant"}, {"content", answer}});
    turns_ = std::move(turns);
    document_ = std::move(document);
    images_ = std::move(all_images);
    expansions_ = std::move(expansions);
    totals_ += st;
    return st;
}

}  // namespace hlwq::rt
