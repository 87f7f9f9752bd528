// SPDX-License-Identifier: MIT
// qwen35_chat: chat with a Qwen3.5 model (dense or MoE; original or HLWQ folder). The command
// line is the shared run_chat_program (examples/runtime/program.hpp, `--help`); this file only
// names the model loader.
#include "program.hpp"
#include "qwen35.hpp"

int main(int argc, char** argv) { return hlwq::rt::run_chat_program(argc, argv, "qwen35_chat", hlwq::rt::load_qwen35); }
