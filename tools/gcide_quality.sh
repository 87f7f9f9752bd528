#!/usr/bin/env bash
# The quantization quality table of docs/quality.md: gemma4-gcide-tiny (a really trained 21M
# Gemma 4) converted by hlwq-quantize at PQ2..PQ8 and PQ2-Mixed, and its bf16 weights with the
# HLWQ KV cache at 2..4 bits. Per row: bits per quantized weight, file size, perplexity of
# eval.txt (the model README's method, the whole file), its ratio to bf16, and agreement of the
# six greedy continuations of reference.json.
#
#   tools/gcide_quality.sh BUILD_DIR MODEL_DIR WORK_DIR [JOBS] [SLICES] [EXTRA_RECIPE...]
#
# EXTRA_RECIPE: more hlwq-quantize recipes (built-in names or JSON files) as rows;
# HLWQ_QUALITY_ROWS="PQ7 PQ4-E8" (environment) computes only those rows and bf16.
#
# The perplexity of each row is computed in SLICES slices of windows (--first-window /
# --max-windows), JOBS single-threaded processes at a time, and recombined exactly (log ppl is
# the mean NLL per token). Finished slices are kept in WORK_DIR, so a rerun resumes. Prints the
# Markdown table on stdout. Needs python3 (standard library only) for the JSON files.
set -euo pipefail
build=$(realpath "$1") model=$(realpath "$2") work=$3
jobs=${4:-$(nproc)} slices=${5:-16}
shift $(( $# < 5 ? $# : 5 ))
extra=("$@")
chat=$build/examples/gemma4_chat quantize=$build/examples/hlwq-quantize
mkdir -p "$work/ppl" "$work/greedy"
work=$(realpath "$work")

# --- conversions ------------------------------------------------------------------------
recipes=(PQ2 PQ3 PQ4 PQ5 PQ6 PQ7 PQ8 PQ2-Mixed)
for r in "${recipes[@]}" "${extra[@]}"; do
    name=$(basename "$r" .json)
    [[ -f $work/$name.json ]] && continue
    [[ -n ${HLWQ_QUALITY_ROWS:-} && " $HLWQ_QUALITY_ROWS " != *" $name "* ]] && continue
    echo "quantize $name" >&2
    "$quantize" "$model" "$work/$name" --recipe "$r" --json "$work/$name.json" --force --threads 2 >/dev/null
done

# --- rows: name, model folder, kv bits (0 = the default fp16 cache) -------------------------
rows=("bf16 $model 0")
for r in "${recipes[@]}" "${extra[@]}"; do rows+=("$(basename "$r" .json) $work/$(basename "$r" .json) 0"); done
rows+=("bf16+KV4 $model 4" "bf16+KV3 $model 3" "bf16+KV2 $model 2")
# HLWQ_QUALITY_ROWS="PQ7 PQ4-E8": only those rows (and bf16, the baseline of the ratios).
if [[ -n ${HLWQ_QUALITY_ROWS:-} ]]; then
    kept=()
    for row in "${rows[@]}"; do
        name=${row%% *}
        [[ $name == bf16 || " $HLWQ_QUALITY_ROWS " == *" $name "* ]] && kept+=("$row")
    done
    rows=("${kept[@]}")
fi

windows=$(( $(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["eval_tokens"])' "$model/reference.json") / 511 ))
per=$(( (windows + slices - 1) / slices ))

tasks=()
for row in "${rows[@]}"; do
    read -r name dir kv <<<"$row"
    for ((f = 0; f < windows; f += per)); do
        out=$work/ppl/$name.$f.txt
        grep -q '^perplexity:' "$out" 2>/dev/null && continue
        tasks+=("$chat --model $dir --threads 1 --kv-bits $kv --perplexity $model/eval.txt --first-window $f --max-windows $per > $out 2>/dev/null")
    done
    python3 - "$model/reference.json" <<'EOF' | while read -r i len ids; do
import json, sys
for i, g in enumerate(json.load(open(sys.argv[1]))["generations"]):
    print(i, len(g["greedy_ids"]), ",".join(map(str, g["prompt_ids"])))
EOF
        out=$work/greedy/$name.$i.txt
        [[ -s $out ]] && continue
        echo "$chat --model $dir --threads 1 --kv-bits $kv --ids $ids --greedy $len > $out 2>/dev/null"
    done >"$work/greedy_tasks.$name"
    mapfile -t -O "${#tasks[@]}" tasks <"$work/greedy_tasks.$name"
done
echo "${#tasks[@]} tasks on $jobs processes" >&2
printf '%s\n' "${tasks[@]}" | xargs -d '\n' -P "$jobs" -I{} sh -c '{}'

# --- the table --------------------------------------------------------------------------
python3 - "$model" "$work" "${rows[@]}" <<'EOF'
import json, math, os, sys
model, work, rows = sys.argv[1], sys.argv[2], [r.split() for r in sys.argv[3:]]
ref = json.load(open(os.path.join(model, "reference.json")))
gens = ref["generations"]
total_tokens = sum(len(g["greedy_ids"]) for g in gens)

def perplexity(name):
    nll, tokens = 0.0, 0
    for f in os.listdir(os.path.join(work, "ppl")):
        if not f.startswith(name + "."):
            continue
        line = open(os.path.join(work, "ppl", f)).read().split("\n")[0]  # perplexity: X +/- E (N tokens, ...)
        x, n = float(line.split()[1]), int(line.split("(")[1].split()[0])
        nll += math.log(x) * n
        tokens += n
    return math.exp(nll / tokens), tokens

def greedy(name):
    prefix, equal = 0, 0
    for i, g in enumerate(gens):
        got = [int(t) for t in open(os.path.join(work, "greedy", f"{name}.{i}.txt")).read().split(",") if t.strip()]
        want = g["greedy_ids"]
        got = got[:len(want)]
        n = 0
        while n < len(want) and n < len(got) and got[n] == want[n]:
            n += 1
        prefix += n
        equal += n == len(want)
    return prefix, equal

def size_and_bpw(name, folder):
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
    j = os.path.join(work, name + ".json")
    if not os.path.exists(j):
        return size, "16 (bf16)"
    rep = json.load(open(j))
    w = sum(b["weights"] for b in rep["bits"].values())
    bits = sum(int(k) * b["weights"] for k, b in rep["bits"].items())
    return size, f"{(bits + 16 * w / 128) / w:.3f}"

base, _ = perplexity("bf16")
print("| weights | KV cache | bits/weight (quantized tensors) | model.safetensors | perplexity | × bf16 "
      "| greedy tokens equal (prefix) | continuations equal |")
print("|---|---|---|---|---|---|---|---|")
for name, folder, kv in rows:
    ppl, tokens = perplexity(name)
    size, bpw = size_and_bpw(name.split("+")[0], folder)
    prefix, equal = greedy(name)
    weights = name.split("+")[0]
    cache = "fp16" if kv == "0" else f"PQ{kv}"
    print(f"| {weights} | {cache} | {bpw} | {size / 1e6:.2f} MB | {ppl:.4f} | {ppl / base:.4f} "
          f"| {prefix}/{total_tokens} | {equal}/{len(gens)} |")
print(f"\n{tokens} predicted tokens per row (windows of 512 over eval.txt); reference perplexity "
      f"(transformers, fp32, bf16 weights): {ref['eval_perplexity']:.4f}")
EOF
