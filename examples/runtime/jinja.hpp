// SPDX-License-Identifier: MIT
/// @file jinja.hpp
/// A Jinja2 subset for chat templates (Gemma 3/4, Qwen3 and similar), rendering the way
/// transformers does (`trim_blocks` and `lstrip_blocks` on, loop controls, `raise_exception`,
/// `strftime_now`).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace hlwq::rt {

/// A template syntax error, a runtime error while rendering, or `raise_exception(...)` called by
/// the template. what() is "chat template:LINE:COLUMN: message"; the parts are also available.
class template_error : public std::runtime_error {
public:
    /// An error at `line`:`column` (1-based; 0 when unknown).
    template_error(const std::string& message, std::size_t line, std::size_t column, bool raised = false);

    /// The message without the location.
    const std::string& message() const noexcept { return message_; }
    /// 1-based line of the error in the template source (0 if unknown).
    std::size_t line() const noexcept { return line_; }
    /// 1-based column of the error (0 if unknown).
    std::size_t column() const noexcept { return column_; }
    /// Whether the template itself raised it with raise_exception().
    bool raised() const noexcept { return raised_; }

private:
    std::string message_{};
    std::size_t line_ = 0;
    std::size_t column_ = 0;
    bool raised_ = false;
};

/// A parsed Jinja template.
///
/// Supported: `{{ }}`, `{% %}`, `{# #}` with `-` whitespace control; `if/elif/else`,
/// `for ... in ... [if ...]` with `else`, `loop.*`, `break`/`continue`, `set` (also
/// `set ns.attr = ...` and block `set`), `macro` (with defaults and keyword arguments),
/// `generation`; expressions with literals, lists, dicts, tuples, attribute and item access,
/// slicing, calls, `+ - * / // % ** ~`, comparisons, `in`/`not in`, `and/or/not`,
/// `x if c else y`, filters (`trim length count tojson safe string upper lower capitalize title
/// replace join first last default list items keys values selectattr rejectattr map unique
/// sort reverse int float abs indent round wordcount`), tests (`defined undefined none string
/// number integer float boolean mapping iterable sequence true false odd even divisibleby eq ne
/// in callable`), string methods (`startswith endswith split strip lstrip rstrip upper lower
/// replace title capitalize join format`) and dict methods (`items keys values get`), globals
/// `namespace range raise_exception strftime_now dict`.
class jinja_template {
public:
    /// Parse `source`. Throws template_error with the line and column of a syntax error.
    explicit jinja_template(std::string_view source);
    jinja_template(jinja_template&&) noexcept;             ///< move
    jinja_template& operator=(jinja_template&&) noexcept;  ///< move assignment
    ~jinja_template();                                     ///< destructor

    /// Render with the variables of `context` (a JSON object; key order is kept for tojson).
    /// Throws template_error (with the location) on errors and for raise_exception().
    std::string render(const nlohmann::ordered_json& context) const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

/// Options of chat_template::apply().
struct chat_options {
    bool add_generation_prompt = true;             ///< end with the assistant turn's header
    std::optional<bool> enable_thinking{};         ///< passed as `enable_thinking` if set
    nlohmann::ordered_json tools = nullptr;        ///< passed as `tools` unless null
    nlohmann::ordered_json extra = nlohmann::ordered_json::object();  ///< more variables
};

/// A model's chat template with its special tokens, as transformers' apply_chat_template uses it.
class chat_template {
public:
    /// From a model folder: `chat_template.jinja` if present, otherwise `chat_template` of
    /// `tokenizer_config.json` (a string, or a list of {name, template} whose "default" is used);
    /// the token strings (bos_token, eos_token, ...) come from tokenizer_config.json.
    /// Throws template_error or std::runtime_error naming the file.
    static chat_template from_model_dir(const std::filesystem::path& dir);

    /// From a template source and the special token strings (e.g. {"bos_token": "<bos>"}).
    chat_template(std::string_view source, nlohmann::ordered_json special_tokens);

    /// Render `messages` (a JSON array of {role, content, ...}).
    std::string apply(const nlohmann::ordered_json& messages, const chat_options& options = {}) const;

    /// The special token strings passed to the template.
    const nlohmann::ordered_json& special_tokens() const noexcept { return special_tokens_; }

private:
    jinja_template template_;
    nlohmann::ordered_json special_tokens_{};
};

}  // namespace hlwq::rt
