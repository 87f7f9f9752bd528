#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write tests/runtime/corpus.txt, the tokenizer test corpus (deterministic: fixed seed).

    python3 tests/runtime/make_corpus.py > tests/runtime/corpus.txt

One test case per line (make_reference.mjs also joins runs of lines into multi-line documents
with \\n, \\r\\n and mixed newlines). Sections: hand-picked hard cases, English, C++ and Python
code, CJK, emoji (skin tones, ZWJ sequences, flags, keycaps), Arabic, Hebrew, Hindi, Thai,
Cyrillic, Greek, combining marks (NFC), whitespace runs and tabs, carriage returns, special-token
strings. Characters are limited to Unicode 14 (the tables of tools/gen_unicode_tables.py) and
avoid U+0085 and U+FEFF, on which the JavaScript reference's \\s differs from Unicode White_Space.
"""
import random

R = random.Random(20260517)

HARD = [
    "", " ", "  ", "\t", " \t ", "a", "A", "0", "00", "000", "0000", "12345678901234567890",
    "Hello world", " Hello world", "Hello world ", "Hello  world", "Hello\tworld", "Hello\rworld",
    "hello\r", "\r", "\r\r\r", " \r ", "\u00a0", "a\u00a0b", "\u3000", "x\u2003y", "\u2028", "\u200b",
    "don't", "DON'T", "I'm", "they'll", "we've", "you're", "she'd", "It's", "'s", "''", "'", "'''s",
    "ABC's", "O'Reilly's", "l'été", "1,000,000.00", "3.14159", "-42", "+1-800-555-0199", "1e-9",
    "<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>user",
    "<start_of_turn>user\nHi<end_of_turn>", "<bos><bos>", "<<bos>>", "<bos", "bos>", "< bos >",
    "<start_of_image>", "<image_soft_token>", "<unused0>", "<unused99>", "x<unused5>y",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>system", "<|im_start|>user\nhi<|im_end|>",
    "<think>", "</think>", "<think>\n\n</think>\n\n", "<tool_call>", "</tool_call>", "<|im_start|><|im_end|>",
    "<|im_start", "im_start|>", "<|vision_pad|>", "<|fim_prefix|>", "a<|im_end|>b", " <|im_end|> ",
    "<mask>", "[CLS]", "<s>", "</s>", "<0x41>", "<0xE4>", "▁", "▁▁", "▁hello", "Ġhello", "Ċ",
    "café", "cafe\u0301", "Cafe\u0301 na\u0131\u0308ve", "e\u0301\u0301", "\u1100\u1161\u11a8", "\u212b", "\u2126",
    "A\u030a", "\u0344", "ﬁ", "Ⅻ", "①", "½", "x²", "H₂O", "ℕ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪", "1️⃣", "❤️", "👩🏾‍💻", "🧑‍🤝‍🧑", "🤷‍♀️",
    "中", "中文", "日本語のテキスト", "한국어", "ภาษาไทย", "עברית", "العربية", "हिन्दी", "Ελληνικά", "Русский",
    "!!!", "???", "...", "…", "—", "--", "==>", "->", "::", "&&", "||", "#include", "@user", "$HOME",
    "\\n", "\\t", "\\\\", "\"quoted\"", "`code`", "```", "~~~", "***bold***", "__init__", "snake_case_name",
    "CamelCaseName", "HTTPServerError", "iPhone", "x86_64", "UTF-8", "A/B", "a.b.c", "http://example.com/a?b=c&d=e",
    "user@example.com", "#FF00FF", "0xDEADBEEF", "0b1010", "1_000_000", "v1.2.3-rc.1",
    " " * 17, "\t" * 9, " \t" * 6, "a" + " " * 40 + "b", "-" * 64, "=" * 33, "." * 12, "_" * 20,
    "x" * 300, "ab" * 150, "hello " * 60, "中" * 50, "😀" * 30,
]

WORDS = """the of and to in is was for on that with as by at from his her an be this which or are it
had not but were have their one all been has they who its more when so if out some about what
into than them time only new would there these two could first other may any over such after
most also many then very years people state world government system school history number part
quantization matrix weights model tokenizer language learning neural network attention layer
rotation hadamard codebook centroid gaussian accuracy memory bandwidth inference decoding
dictionary abbreviation etymology pronunciation obsolete noun verb adjective adverb
""".split()

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Mallory", "Trent", "Zoë", "José", "Øyvind", "Łukasz"]


def english():
    n = R.randint(3, 24)
    w = [R.choice(WORDS) for _ in range(n)]
    if R.random() < 0.3:
        w.insert(R.randint(0, n), R.choice(NAMES))
    if R.random() < 0.2:
        w.insert(R.randint(0, n), str(R.randint(0, 10 ** R.randint(1, 9))))
    s = " ".join(w)
    s = s[0].upper() + s[1:]
    s += R.choice([".", ".", "!", "?", ",", ";", ":", "", "...", " —", "'s", "n't"])
    if R.random() < 0.15:
        s = "\"" + s + "\""
    if R.random() < 0.1:
        s = s.upper()
    return s


CPP = [
    "#include <{h}>", "template <typename T> {t} {f}(const T& {v}) {{ return {v} * {n}; }}",
    "for (std::size_t {v} = 0; {v} < {n}; ++{v}) {{", "    {v} += {f}({v}, {n});", "}}",
    "static_assert(sizeof({t}) == {n}, \"{f}\");", "std::vector<{t}> {v}({n}, {t}{{}});",
    "auto {f} = [&]({t} {v}) -> {t} {{ return {v} << {n}; }};", "// TODO({v}): {w} {w} {w}",
    "/* {w} */ int {v} = 0x{x};", "if ({v} != nullptr && {v}->{f}()) return {n};",
    "\tswitch ({v}) {{ case {n}: break; default: return -1; }}", "namespace {v}::{f} {{",
    "constexpr {t} {v}[] = {{{n}, {n}, {n}}};", "std::printf(\"%d %s\\n\", {v}, \"{w}\");",
]
PY = [
    "def {f}({v}, *args, **kwargs):", "    return [{v} ** 2 for {v} in range({n}) if {v} % 3 == 0]",
    "import {v} as {f}", "from {v}.{f} import {w}", "class {t}({f}.Base):", "        self.{v} = {n}",
    "    {v}: dict[str, int] = {{\"{w}\": {n}}}", "print(f\"{{{v}!r:>10}} {w}\")", "@{f}.setter",
    "if __name__ == \"__main__\":", "    raise ValueError(f\"bad {w}: {{{v}}}\")", "lambda {v}: {v}[::-1]",
    "    with open(\"{w}.txt\", encoding=\"utf-8\") as {v}:", "# {w} {w} -- {n}%", "x = {v} if {v} else None  # noqa",
]


def code(templates):
    t = R.choice(templates)
    return t.format(h=R.choice(["vector", "cstdint", "hlwq/quantize.hpp", "string_view"]),
                    t=R.choice(["int", "float", "std::uint8_t", "Tensor", "Foo", "bool"]),
                    f=R.choice(["compute", "matvec", "_helper", "get_value", "fwht", "run"]),
                    v=R.choice(["i", "x", "idx", "self_", "row", "col", "buf"]),
                    n=R.randint(0, 4096), x=format(R.getrandbits(32), "08X"), w=R.choice(WORDS))


def from_ranges(ranges, n):
    out = []
    for _ in range(n):
        a, b = R.choice(ranges)
        out.append(chr(R.randint(a, b)))
    return "".join(out)


CJK = [(0x4E00, 0x9FA5)]
HIRA = [(0x3041, 0x3093)]
KATA = [(0x30A1, 0x30F6)]
HANGUL = [(0xAC00, 0xD7A3)]
ARABIC = [(0x0621, 0x063A), (0x0641, 0x064A)]
HEBREW = [(0x05D0, 0x05EA)]
DEVA = [(0x0905, 0x0939), (0x093E, 0x094C)]
THAI = [(0x0E01, 0x0E30), (0x0E40, 0x0E44)]
CYR = [(0x0410, 0x044F)]
GREEK = [(0x0391, 0x03A9), (0x03B1, 0x03C9)]
EMOJI = [(0x1F600, 0x1F64F), (0x1F300, 0x1F3FF), (0x1F680, 0x1F6C5), (0x1F90C, 0x1F93A)]
TONES = [chr(c) for c in range(0x1F3FB, 0x1F400)]
ZWJ = ["👨‍👩‍👧", "👩‍❤️‍👨", "🏳️‍⚧️", "🧑‍🚀", "👁️‍🗨️", "🐻‍❄️", "👨🏻‍🦰", "🧔🏿‍♂️", "👯‍♀️", "🫱🏼‍🫲🏾"]


def words_of(ranges, lo, hi, sep=" "):
    return sep.join(from_ranges(ranges, R.randint(1, 6)) for _ in range(R.randint(lo, hi)))


def cjk():
    k = R.randint(0, 3)
    if k == 0:
        s = from_ranges(CJK, R.randint(2, 30))
    elif k == 1:
        s = from_ranges(HIRA + KATA + CJK, R.randint(2, 30))
    elif k == 2:
        s = words_of(HANGUL, 1, 8)
    else:
        s = from_ranges(CJK, 5) + R.choice(["，", "。", "、", "！", "？", "：", "「", "」"]) + from_ranges(CJK, 5)
    if R.random() < 0.3:
        s = english() + " " + s
    return s


def emoji():
    parts = []
    for _ in range(R.randint(1, 8)):
        k = R.random()
        if k < 0.4:
            parts.append(from_ranges(EMOJI, 1))
        elif k < 0.6:
            parts.append(chr(R.choice([0x1F44D, 0x1F44B, 0x1F64F, 0x270C, 0x1F590])) + R.choice(TONES))
        elif k < 0.8:
            parts.append(R.choice(ZWJ))
        elif k < 0.9:
            a, b = R.sample(range(0x1F1E6, 0x1F200), 2)
            parts.append(chr(a) + chr(b))
        else:
            parts.append(R.choice("0123456789#*") + "\ufe0f\u20e3")
    sep = R.choice(["", " ", "  ", " and "])
    s = sep.join(parts)
    if R.random() < 0.5:
        s = english() + " " + s
    return s


def script():
    k = R.randint(0, 6)
    table = [ARABIC, HEBREW, DEVA, THAI, CYR, GREEK, ARABIC]
    s = words_of(table[k], 1, 10, sep=" " if k != 3 else "")
    if k == 6:
        s += " " + str(R.randint(0, 9999)) + " " + "".join(chr(0x0660 + R.randint(0, 9)) for _ in range(4))
    if k == 2:
        s += R.choice(["।", " ।", "॥"])
    return s


def combining():
    base = R.choice("aeiouAEIOUnNcCsSzZyY")
    marks = "".join(chr(R.choice([0x300, 0x301, 0x302, 0x303, 0x308, 0x30A, 0x327, 0x328, 0x323, 0x331]))
                    for _ in range(R.randint(1, 3)))
    jamo = chr(0x1100 + R.randint(0, 18)) + chr(0x1161 + R.randint(0, 20)) + (chr(0x11A8 + R.randint(0, 26)) if R.random() < 0.5 else "")
    return R.choice([english() + " " + base + marks, base + marks + base + marks, jamo + " " + jamo, "Cafe\u0301 " + english()])


def whitespace():
    ws = [" ", "  ", "   ", "\t", "\t\t", " \t", "\u00a0", "\u3000", "\r", " \r ", "\u2009"]
    parts = []
    for _ in range(R.randint(1, 8)):
        parts.append(R.choice(ws) * R.randint(1, 4))
        parts.append(R.choice(WORDS + ["", "", "x", "12", "(", "):"]))
    s = "".join(parts)
    if R.random() < 0.3:
        s = s.rstrip() + " " * R.randint(1, 6)
    return s


def specials():
    toks = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
            "<think>", "</think>", "<tool_call>", "</tool_call>", "<pad>", "<start_of_image>", "<|vision_start|>"]
    parts = []
    for _ in range(R.randint(1, 6)):
        parts.append(R.choice(toks))
        parts.append(R.choice(["", " ", "\t", "user", "model", "assistant", "system", english(), " " + R.choice(WORDS) + " "]))
    return "".join(parts)


def mixed():
    return " ".join(R.choice([english, cjk, emoji, script, lambda: code(CPP), lambda: code(PY)])() for _ in range(R.randint(2, 4)))


def main():
    lines = [h.replace("\n", "\\n") for h in HARD]  # newlines come in the multi-line documents
    sections = [(english, 500), (lambda: code(CPP), 200), (lambda: code(PY), 200), (cjk, 200), (emoji, 150),
                (script, 200), (combining, 80), (whitespace, 150), (specials, 120), (mixed, 150)]
    for fn, n in sections:
        for _ in range(n):
            lines.append(fn())
    assert all("\n" not in l for l in lines)
    assert all("\u0085" not in l and "\ufeff" not in l for l in lines)
    out = "\n".join(lines) + "\n"
    import sys
    sys.stdout.buffer.write(out.encode("utf-8"))


if __name__ == "__main__":
    main()
