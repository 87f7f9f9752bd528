// SPDX-License-Identifier: MIT
// gemma4_chat: chat with a Gemma 4 model (original Hugging Face folder or HLWQ folder).
//
//   gemma4_chat --model DIR [--prompt TEXT] [options]     (gemma4_chat --help for all of them)
//
// The whole command line lives in the shared runtime (examples/runtime/program.cpp), so that
// every chat program behaves the same; this file only names the model.
// Exit status: 0 ok, 1 error, 2 usage.

#include "gemma4.hpp"
#include "program.hpp"

int main(int argc, char** argv) { return hlwq::rt::run_chat_program(argc, argv, "gemma4_chat", hlwq::rt::load_gemma4); }
