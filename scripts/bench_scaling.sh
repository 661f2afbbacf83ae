#!/usr/bin/env bash
# How PPO cost grows with work: `finegrained bench` (holistic) at the reference size (GPT-2 6 x 384,
# vocabulary 8192, 4 PPO epochs) over batch sizes at 64 tokens and response lengths at batch 16, then the
# options that cut the work (shared value head, LoRA) at batch 16 x 64 tokens. Prints a Markdown table
# (seconds per iteration, tokens per second, peak RSS) and writes OUT/scaling.json.
#
#   bash scripts/bench_scaling.sh                          # the README's table (15-31 min on 2 cores)
#   BATCHES="8 16" LENGTHS="32" OPTIONS=no ITERATIONS=2 N_LAYER=2 N_EMBD=128 N_HEAD=4 VOCAB=1024 bash scripts/bench_scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BATCHES=${BATCHES:-"8 16 32 64"}
LENGTHS=${LENGTHS:-"32 64 128 256"}
OPTIONS=${OPTIONS:-yes}
ITERATIONS=${ITERATIONS:-3}
N_LAYER=${N_LAYER:-6}
N_EMBD=${N_EMBD:-384}
N_HEAD=${N_HEAD:-6}           # must divide N_EMBD
VOCAB=${VOCAB:-8192}
OUT=${OUT:-outputs/bench-scaling}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

runs=()
for b in $BATCHES; do runs+=("b${b}-t64|bench.batch_size=$b bench.response_length=64"); done
for t in $LENGTHS; do
    [ "$t" = 64 ] && [[ " $BATCHES " == *" 16 "* ]] && continue  # 16 x 64 already ran
    runs+=("b16-t${t}|bench.batch_size=16 bench.response_length=$t")
done
if [ "$OPTIONS" = yes ]; then
    runs+=("b16-t64-shared|bench.batch_size=16 bench.response_length=64 bench.shared_value=true")
    runs+=("b16-t64-lora8|bench.batch_size=16 bench.response_length=64 bench.lora_r=8")
    runs+=("b16-t64-lora8-shared|bench.batch_size=16 bench.response_length=64 bench.lora_r=8 bench.shared_value=true")
fi

mkdir -p "$OUT"
for run in "${runs[@]}"; do
    name=${run%%|*}
    overrides=${run#*|}
    echo "[scaling] $name: $overrides" >&2
    # One process per run: peak RSS is then the run's own.
    # shellcheck disable=SC2086
    "$PYTHON" -m finegrained.cli bench output_dir="$OUT/$name" bench.mode=holistic bench.n_layer="$N_LAYER" \
        bench.n_embd="$N_EMBD" bench.n_head="$N_HEAD" bench.vocab_size="$VOCAB" bench.iterations="$ITERATIONS" bench.bare_repeats=1 \
        $overrides 2>"$OUT/$name.log" | sed 's/^/    /' >&2
done

"$PYTHON" - "$OUT" "${runs[@]}" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for run in sys.argv[2:]:
    name = run.split("|")[0]
    r = json.loads((out / name / "bench.json").read_text())
    b = r["config"]["bench"]
    rows.append({
        "run": name, "batch_size": b["batch_size"], "response_length": b["response_length"],
        "shared_value": b["shared_value"], "lora_r": b["lora_r"],
        "seconds_per_iteration": r["seconds_per_iteration"], "bare_seconds": r["bare_seconds"],
        "overhead_factor": r["overhead_factor"], "tokens_per_second": r["tokens_per_second"],
        "peak_rss_mb": r["peak_rss_mb"], "update_seconds": r["phases"]["update"],
        "generate_seconds": r["phases"]["generate"],
    })
(out / "scaling.json").write_text(json.dumps(rows, indent=2))
print("| batch | tokens | options | s/iteration | overhead | generate s | update s | tokens/s | peak RSS MB |")
print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    options = ", ".join(o for o in ("shared value" if r["shared_value"] else "", f"LoRA r={r['lora_r']}" if r["lora_r"] else "") if o) or "default"
    overhead = f"x{r['overhead_factor']:.2f}" if r["overhead_factor"] else "-"
    print(f"| {r['batch_size']} | {r['response_length']} | {options} | {r['seconds_per_iteration']:.2f} | {overhead} | "
          f"{r['generate_seconds']:.2f} | {r['update_seconds']:.2f} | {r['tokens_per_second']:.0f} | {r['peak_rss_mb']:.0f} |")
print(f"wrote {out / 'scaling.json'}", file=sys.stderr)
EOF
