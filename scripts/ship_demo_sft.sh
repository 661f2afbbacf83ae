#!/usr/bin/env bash
# Rebuild finegrained/tasks/synthetic_qa_sft/: the built-in task's SFT policy exactly as `finegrained demo`
# stage 1 trains it (seed 0, full size: about 4-5 minutes on 2 CPU cores). `demo quick` starts from it
# (sft_policy=shipped) so that a first run shows RL at work in under two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
finegrained sft output_dir="$work/sft" seed=0
target=finegrained/tasks/synthetic_qa_sft
rm -rf "$target" && mkdir -p "$target"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json README.md; do
    install -m 644 "$work/sft/final/$f" "$target/$f"
done
sha256sum "$target/model.safetensors"
