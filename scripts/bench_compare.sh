#!/usr/bin/env bash
# finegrained bench and its trl peer on the same work, alternating, in one run. ALGORITHM picks the pair:
#   ppo  (default)  finegrained bench (PPO)               vs trl 1.12.0 trl.experimental.ppo.PPOTrainer ($TRL_VENV)
#   grpo            finegrained bench bench.algorithm=grpo vs trl 1.16.0 trl.GRPOTrainer, no vLLM     ($TRL_NEW_VENV)
#   dpo             finegrained bench bench.algorithm=dpo  vs trl 1.16.0 trl.DPOTrainer               ($TRL_NEW_VENV)
# (trl 1.16.0 is the newest trl on the package index on 2026-12-02; it no longer ships PPO, hence two venvs.)
#
#   scripts/bench_compare.sh                       reference size: GPT-2 6 x 384, vocab 8192, batch 16, 64 tokens, 4 epochs
#   FG_ARGS="bench.bf16=true" TRL_ARGS="--bf16" scripts/bench_compare.sh          both with bf16 autocast (needs AVX512-BF16/AMX or a GPU)
#   FG_ARGS="bench.lora_r=8" TRL_ARGS="--lora-r 8" scripts/bench_compare.sh       both with LoRA r=8 (trl via peft)
#   FG_ARGS="bench.mode=fine_grained bench.shared_rm=true" scripts/bench_compare.sh   three categories on one reward backbone vs trl holistic
#   ROUNDS=1 ITERATIONS=3 N_LAYER=2 N_EMBD=128 N_HEAD=4 VOCAB=2048 BATCH=8 LENGTH=32 EPOCHS=2 scripts/bench_compare.sh
#   ALGORITHM=grpo scripts/bench_compare.sh        GRPO: 16 completions (4 prompts x GENERATIONS=4) of 64 tokens, 4 epochs
#   ALGORITHM=dpo scripts/bench_compare.sh         DPO: 16 pairs per step, PROMPT_LENGTH=64 + LENGTH=64 tokens
#   ALGORITHM=grpo PEER_ONLY=1 ...                 the trl side alone (no finegrained bench run)
#
# Each round runs `finegrained bench` (holistic mode unless FG_ARGS says otherwise) then the peer, ITERATIONS
# iterations (DPO: optimizer steps) each; the first of every run is a warm-up. Prints the median seconds per
# iteration (DPO: per step) of each over all rounds and their ratio, and writes OUT/compare.json. Equal work,
# and each trl default turned to finegrained's, is spelled out in scripts/bench_trl_peer.py's header. trl is
# installed in its own venvs (made on first use: torch 2.13.0 CPU, then trl and peft with the transformers
# pip picks), never into the project's.
set -euo pipefail
cd "$(dirname "$0")/.."

ALGORITHM=${ALGORITHM:-ppo}
ROUNDS=${ROUNDS:-2}
ITERATIONS=${ITERATIONS:-3}
N_LAYER=${N_LAYER:-6}
N_EMBD=${N_EMBD:-384}
N_HEAD=${N_HEAD:-6}
VOCAB=${VOCAB:-8192}
BATCH=${BATCH:-16}           # ppo, grpo: episodes (completions) per iteration; dpo: preference pairs per step
LENGTH=${LENGTH:-64}         # new tokens per response (dpo: of the chosen and of the rejected completion)
EPOCHS=${EPOCHS:-4}          # ppo, grpo: optimisation epochs per batch
GENERATIONS=${GENERATIONS:-4}  # grpo: samples per prompt (trl num_generations; finegrained bench: 4)
MINIBATCHES=${MINIBATCHES:-1}  # grpo: optimizer steps per epoch
PROMPT_LENGTH=${PROMPT_LENGTH:-64}  # dpo: prompt tokens of the peer's pairs (finegrained's bench: 64)
OUT=${OUT:-outputs/bench-compare}
PYTHON=${PYTHON:-.venv/bin/python}
TRL_VENV=${TRL_VENV:-../trl-venv}            # trl 1.12.0 (PPO)
TRL_NEW_VENV=${TRL_NEW_VENV:-../trl-new-venv}  # trl 1.16.0 (GRPO, DPO)
PEER_ONLY=${PEER_ONLY:-0}    # 1: run only the trl side
FG_ARGS=${FG_ARGS:-}         # extra finegrained bench overrides, e.g. "bench.bf16=true"
TRL_ARGS=${TRL_ARGS:-}       # e.g. "--bf16 --gradient-checkpointing" for trl's own defaults, "--beta 0" (grpo)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ ! -x "$PYTHON" ]; then
    echo "PYTHON=$PYTHON: not an executable; set PYTHON to the project's venv python (e.g. /path/to/.venv/bin/python)" >&2
    exit 2
fi
case "$ALGORITHM" in
    ppo) venv=$TRL_VENV; trl_version=1.12.0; probe="import trl.experimental.ppo, peft" ;;
    grpo | dpo) venv=$TRL_NEW_VENV; trl_version=1.16.0; probe="import trl, peft; assert trl.__version__ == '1.16.0'" ;;
    *) echo "ALGORITHM=$ALGORITHM: expected ppo, grpo or dpo" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$probe" 2>/dev/null; then
    echo "[compare] installing trl $trl_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q "trl==$trl_version" peft
fi

shape=(bench.n_layer="$N_LAYER" bench.n_embd="$N_EMBD" bench.n_head="$N_HEAD" bench.vocab_size="$VOCAB")
peer_shape=(--n-layer "$N_LAYER" --n-embd "$N_EMBD" --n-head "$N_HEAD")
case "$ALGORITHM" in
    ppo)
        fg_args=(bench.mode=holistic "${shape[@]}" bench.batch_size="$BATCH" bench.response_length="$LENGTH"
                 bench.ppo_epochs="$EPOCHS" bench.iterations="$ITERATIONS" bench.bare_repeats=1)
        peer_args=(run "${peer_shape[@]}" --batch-size "$BATCH" --response-length "$LENGTH" --ppo-epochs "$EPOCHS"
                   --iterations "$ITERATIONS")
        n_prompts=$((BATCH * ITERATIONS)) ;;
    grpo)
        # equal work: BATCH completions per iteration on both sides, BATCH / GENERATIONS prompts x GENERATIONS samples
        # (finegrained bench's critic-free runs sample 4 per prompt)
        if [ "$GENERATIONS" != 4 ] || [ $((BATCH % 4)) != 0 ]; then
            echo "ALGORITHM=grpo: finegrained bench samples 4 per prompt: GENERATIONS must be 4 and BATCH a multiple of 4" >&2; exit 2
        fi
        fg_args=(bench.algorithm=grpo bench.mode=holistic "${shape[@]}" bench.batch_size="$BATCH"
                 bench.response_length="$LENGTH" bench.ppo_epochs="$EPOCHS"
                 bench.minibatches="$MINIBATCHES" bench.iterations="$ITERATIONS" bench.bare_repeats=1)
        peer_args=(grpo "${peer_shape[@]}" --prompts $((BATCH / GENERATIONS)) --generations "$GENERATIONS" --response-length "$LENGTH"
                   --epochs "$EPOCHS" --minibatches "$MINIBATCHES" --iterations "$ITERATIONS")
        n_prompts=$((BATCH * ITERATIONS)) ;;
    dpo)
        # finegrained's DPO bench pairs have 64 prompt tokens (finegrained.rl.dpo_bench.PROMPT_TOKENS): PROMPT_LENGTH=64
        fg_args=(bench.algorithm=dpo "${shape[@]}" bench.batch_size="$BATCH" bench.response_length="$LENGTH"
                 bench.iterations="$ITERATIONS")
        peer_args=(dpo "${peer_shape[@]}" --batch-size "$BATCH" --prompt-length "$PROMPT_LENGTH"
                   --completion-length "$LENGTH" --steps "$ITERATIONS")
        n_prompts=1 ;;  # the peer's pairs are drawn token ids: only the tokenizer is needed
esac

mkdir -p "$OUT"
rm -f "$OUT"/trl-*.json "$OUT/compare.json"  # a result of an earlier run must not pass for this one's
"$PYTHON" scripts/bench_trl_peer.py prepare --out "$OUT/peer-inputs" --vocab-size "$VOCAB" --n-prompts "$n_prompts"

for round in $(seq 1 "$ROUNDS"); do
    if [ "$PEER_ONLY" != 1 ]; then
        echo "[compare] round $round/$ROUNDS: finegrained bench ($ALGORITHM)" >&2
        # shellcheck disable=SC2086
        "$PYTHON" -m finegrained.cli bench output_dir="$OUT/finegrained-$round" "${fg_args[@]}" $FG_ARGS
    fi
    echo "[compare] round $round/$ROUNDS: trl ($ALGORITHM)" >&2
    # shellcheck disable=SC2086
    "$venv/bin/python" scripts/bench_trl_peer.py "${peer_args[@]}" --inputs "$OUT/peer-inputs" \
        --out "$OUT/trl-$round.json" $TRL_ARGS 2>"$OUT/trl-$round.log" || { tail -20 "$OUT/trl-$round.log" >&2; exit 1; }
done

"$PYTHON" - "$OUT" "$ROUNDS" "$ALGORITHM" "$PEER_ONLY" <<'PY'
import json, statistics, sys
from pathlib import Path

out, rounds, algorithm, peer_only = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
unit = "step" if algorithm == "dpo" else "iteration"


def timed(r):
    """Every timed iteration (step) of one run: the first is a warm-up. finegrained's DPO bench may name its
    list step_seconds or iteration_seconds."""
    seconds = r.get(f"{unit}_seconds") or r["iteration_seconds"]
    return seconds[1:] if len(seconds) > 1 else seconds


peer = [json.loads((out / f"trl-{r}.json").read_text()) for r in range(1, rounds + 1)]
peer_times = [s for r in peer for s in timed(r)]
summary = {
    "algorithm": algorithm,
    f"trl_seconds_per_{unit}": statistics.median(peer_times),
    "trl_peak_rss_mb": max(r["peak_rss_mb"] for r in peer),
    f"trl_{unit}_seconds": peer_times,
    "trl_peer": peer[0]["peer"],
    "trl_settings": peer[0]["settings"],
    "trl_versions": peer[0]["versions"],
}
name = {"ppo": "trl PPO ", "grpo": "trl GRPO", "dpo": "trl DPO "}[algorithm]
if not peer_only:
    fg = [json.loads((out / f"finegrained-{r}" / "bench.json").read_text()) for r in range(1, rounds + 1)]
    fg_times = [s for r in fg for s in timed(r)]
    summary.update({
        f"finegrained_seconds_per_{unit}": statistics.median(fg_times),
        "finegrained_peak_rss_mb": max(r["peak_rss_mb"] for r in fg),
        f"finegrained_{unit}_seconds": fg_times,
        "settings": fg[0]["config"]["bench"],
    })
    bare = [r["bare_seconds"] for r in fg if r.get("bare_seconds")]
    if bare:
        summary["finegrained_bare_seconds"] = statistics.median(bare)
        summary["finegrained_overhead_factor"] = statistics.median(fg_times) / statistics.median(bare)
    if fg[0].get("phases"):
        summary["finegrained_phases"] = {p: statistics.median(r["phases"][p] for r in fg) for p in fg[0]["phases"]}
    summary["ratio_finegrained_over_trl"] = summary[f"finegrained_seconds_per_{unit}"] / summary[f"trl_seconds_per_{unit}"]
    overhead = (f"bare {summary['finegrained_bare_seconds']:.3f}, overhead x{summary['finegrained_overhead_factor']:.2f}, "
                if bare else "")
    print(f"finegrained {summary[f'finegrained_seconds_per_{unit}']:.3f} s/{unit} "
          f"({overhead}peak RSS {summary['finegrained_peak_rss_mb']:.0f} MB)")
print(f"{name}    {summary[f'trl_seconds_per_{unit}']:.3f} s/{unit} (peak RSS {summary['trl_peak_rss_mb']:.0f} MB)")
if not peer_only:
    print(f"ratio finegrained/trl = {summary['ratio_finegrained_over_trl']:.3f}  "
          f"({len(summary[f'finegrained_{unit}_seconds'])} + {len(peer_times)} timed {unit}s)")
(out / "compare.json").write_text(json.dumps(summary, indent=2))
print(f"wrote {out / 'compare.json'}")
PY
