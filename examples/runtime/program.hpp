// SPDX-License-Identifier: MIT
/// @file program.hpp
/// @brief The command line every chat program shares (gemma4_chat, qwen35_chat): interactive
/// chat, one-shot --prompt, perplexity, and the --ids testing modes. A program is one line:
/// `return hlwq::rt::run_chat_program(argc, argv, "gemma4_chat", hlwq::rt::load_gemma4);`
#pragma once

#include "model.hpp"

#include <iosfwd>
#include <span>
#include <string>

namespace hlwq::rt {

/// Runs the chat program `program_name` over the model that `load` opens: parses `argc/argv`
/// (see the text of `--help`), reads stdin, writes generated text, greedy ids and the
/// perplexity to stdout and progress, statistics and errors to stderr.
/// @return the exit status: 0 ok, 1 error (a message "error: ..." on stderr), 2 usage error.
int run_chat_program(int argc, char** argv, const char* program_name, model_loader load);

/// The same with explicit arguments (without the program name) and streams, for tests.
/// Never throws: every error becomes exit status 1 (or 2 for usage).
int run_chat_program(std::span<const std::string> args, const char* program_name, model_loader load,
                     std::istream& in, std::ostream& out, std::ostream& err);

/// The text of `--help` for `program_name`.
std::string chat_program_usage(const char* program_name);

}  // namespace hlwq::rt
