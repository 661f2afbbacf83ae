#!/usr/bin/env bash
# Does fine-grained PPO on the built-in task learn as well with the options that cut the work?
# Reuses a finished `finegrained demo` directory (its SFT policy and reward models), runs fine-grained PPO
# with the demo's settings for each option, then evaluates every policy with the oracle as the demo does.
#
#   finegrained demo output_dir=outputs/demo              # once (about 14 minutes on 2 cores)
#   bash scripts/options_on_demo.sh outputs/demo          # about 5 more minutes
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=${1:-outputs/demo}
SEED=${SEED:-0}
FG=${FG:-.venv/bin/finegrained}
[ -d "$DEMO/sft/final" ] || { echo "no $DEMO/sft/final: run finegrained demo output_dir=$DEMO first" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# The demo's fine-grained run, as config.yaml recorded it, minus the keys each option changes.
base=(policy=pretrained "policy.name_or_path=$DEMO/sft/final" task=synthetic_qa ppo.iterations=40
      generation.max_new_tokens=64 reward=fine_grained reward.span_mode=penalty
      "reward.categories.relevance.model=$DEMO/rm/relevance" reward.categories.relevance.weight=0.3
      "reward.categories.factuality.model=$DEMO/rm/factuality" reward.categories.factuality.weight=0.5
      "reward.categories.completeness.model=$DEMO/rm/completeness" reward.categories.completeness.weight=0.3
      "seed=$SEED" overwrite=true log.progress=false)
declare -A options=(
    [shared_value]="ppo.lr=1e-4 value.shared=true"
    [lora8]="ppo.lr=1e-3 lora.r=8"
    [lora8_shared]="ppo.lr=1e-3 lora.r=8 value.shared=true"
)
mkdir -p "$DEMO/options"
policies=("policies.sft=$DEMO/sft/final" "policies.fine_grained=$DEMO/ppo/fine_grained-seed$SEED/final")
for name in shared_value lora8 lora8_shared; do
    run="$DEMO/options/$name-seed$SEED"
    if [ ! -d "$run/final" ]; then
        echo "[options] fine-grained PPO with ${options[$name]}" >&2
        started=$(date +%s)
        # shellcheck disable=SC2086
        "$FG" ppo "${base[@]}" ${options[$name]} "output_dir=$run" 2>"$DEMO/options/$name.log" || {
            echo "[options] $name failed, see $DEMO/options/$name.log" >&2; exit 1; }
        echo "[options] $name: $(( $(date +%s) - started )) s" >&2
    fi
    policies+=("policies.fg_$name=$run/final")
done
"$FG" evaluate "output_dir=$DEMO/options/eval-seed$SEED" "seed=$SEED" n_prompts=200 reference=sft \
    generation.do_sample=true generation.max_new_tokens=64 "${policies[@]}"
