#!/usr/bin/env bash
# finegrained bench and its peer (trl 1.12.0 PPOTrainer) on the same work, alternating, in one run.
#
#   scripts/bench_compare.sh                       reference size: GPT-2 6 x 384, vocab 8192, batch 16, 64 tokens, 4 epochs
#   FG_ARGS="bench.bf16=true" TRL_ARGS="--bf16" scripts/bench_compare.sh          both with bf16 autocast
#   FG_ARGS="bench.lora_r=8" TRL_ARGS="--lora-r 8" scripts/bench_compare.sh       both with LoRA r=8 (trl via peft)
#   FG_ARGS="bench.mode=fine_grained bench.shared_rm=true" scripts/bench_compare.sh   three categories on one reward backbone vs trl holistic
#   ROUNDS=1 ITERATIONS=3 N_LAYER=2 N_EMBD=128 N_HEAD=4 VOCAB=2048 BATCH=8 LENGTH=32 EPOCHS=2 scripts/bench_compare.sh
#
# Each round runs `finegrained bench` (holistic mode unless FG_ARGS says otherwise) then the peer, ITERATIONS iterations each; the first
# iteration of every run is a warm-up. Prints the median seconds per iteration of each over all rounds and
# their ratio, and writes OUT/compare.json. trl is installed in its own venv ($TRL_VENV, made on first use:
# torch 2.13.0 CPU, then trl 1.12.0 and peft with the transformers pip picks), never into the project's.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
ITERATIONS=${ITERATIONS:-3}
N_LAYER=${N_LAYER:-6}
N_EMBD=${N_EMBD:-384}
N_HEAD=${N_HEAD:-6}
VOCAB=${VOCAB:-8192}
BATCH=${BATCH:-16}
LENGTH=${LENGTH:-64}
EPOCHS=${EPOCHS:-4}
OUT=${OUT:-outputs/bench-compare}
PYTHON=${PYTHON:-.venv/bin/python}
TRL_VENV=${TRL_VENV:-../trl-venv}
FG_ARGS=${FG_ARGS:-}         # extra finegrained bench overrides, e.g. "bench.bf16=true"
TRL_ARGS=${TRL_ARGS:-}       # e.g. "--bf16 --gradient-checkpointing" for trl's own PPOConfig defaults
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ ! -x "$TRL_VENV/bin/python" ] || ! "$TRL_VENV/bin/python" -c "import trl.experimental.ppo, peft" 2>/dev/null; then
    echo "[compare] installing trl 1.12.0 into $TRL_VENV" >&2
    python3 -m venv "$TRL_VENV"
    "$TRL_VENV/bin/pip" install -q torch==2.13.0
    "$TRL_VENV/bin/pip" install -q trl==1.12.0 peft
fi

mkdir -p "$OUT"
"$PYTHON" scripts/bench_trl_peer.py prepare --out "$OUT/peer-inputs" --vocab-size "$VOCAB" --n-prompts $((BATCH * ITERATIONS))

for round in $(seq 1 "$ROUNDS"); do
    echo "[compare] round $round/$ROUNDS: finegrained bench" >&2
    "$PYTHON" -m finegrained.cli bench output_dir="$OUT/finegrained-$round" bench.mode=holistic \
        bench.n_layer="$N_LAYER" bench.n_embd="$N_EMBD" bench.n_head="$N_HEAD" bench.vocab_size="$VOCAB" \
        bench.batch_size="$BATCH" bench.response_length="$LENGTH" bench.ppo_epochs="$EPOCHS" \
        bench.iterations="$ITERATIONS" bench.bare_repeats=1 $FG_ARGS
    echo "[compare] round $round/$ROUNDS: trl PPOTrainer" >&2
    "$TRL_VENV/bin/python" scripts/bench_trl_peer.py run --inputs "$OUT/peer-inputs" --out "$OUT/trl-$round.json" \
        --n-layer "$N_LAYER" --n-embd "$N_EMBD" --n-head "$N_HEAD" --batch-size "$BATCH" \
        --response-length "$LENGTH" --ppo-epochs "$EPOCHS" --iterations "$ITERATIONS" $TRL_ARGS 2>"$OUT/trl-$round.log"
done

"$PYTHON" - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
fg = [json.loads((out / f"finegrained-{r}" / "bench.json").read_text()) for r in range(1, rounds + 1)]
peer = [json.loads((out / f"trl-{r}.json").read_text()) for r in range(1, rounds + 1)]
# every timed iteration (the first of each run is a warm-up) of every round, pooled
fg_times = [s for r in fg for s in r["iteration_seconds"][1:]]
peer_times = [s for r in peer for s in r["iteration_seconds"][1:]]
summary = {
    "finegrained_seconds_per_iteration": statistics.median(fg_times),
    "trl_seconds_per_iteration": statistics.median(peer_times),
    "finegrained_bare_seconds": statistics.median(r["bare_seconds"] for r in fg),
    "finegrained_overhead_factor": statistics.median(fg_times) / statistics.median(r["bare_seconds"] for r in fg),
    "finegrained_peak_rss_mb": max(r["peak_rss_mb"] for r in fg),
    "trl_peak_rss_mb": max(r["peak_rss_mb"] for r in peer),
    "finegrained_iteration_seconds": fg_times,
    "trl_iteration_seconds": peer_times,
    "finegrained_phases": {p: statistics.median(r["phases"][p] for r in fg) for p in fg[0]["phases"]},
    "settings": fg[0]["config"]["bench"],
    "trl_versions": peer[0]["versions"],
}
summary["ratio_finegrained_over_trl"] = summary["finegrained_seconds_per_iteration"] / summary["trl_seconds_per_iteration"]
(out / "compare.json").write_text(json.dumps(summary, indent=2))
print(f"finegrained {summary['finegrained_seconds_per_iteration']:.3f} s/iteration "
      f"(bare {summary['finegrained_bare_seconds']:.3f}, overhead x{summary['finegrained_overhead_factor']:.2f}, "
      f"peak RSS {summary['finegrained_peak_rss_mb']:.0f} MB)")
print(f"trl PPO     {summary['trl_seconds_per_iteration']:.3f} s/iteration (peak RSS {summary['trl_peak_rss_mb']:.0f} MB)")
print(f"ratio finegrained/trl = {summary['ratio_finegrained_over_trl']:.3f}  ({len(fg_times)} + {len(peer_times)} timed iterations)")
print(f"wrote {out / 'compare.json'}")
EOF
