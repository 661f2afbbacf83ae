#!/usr/bin/env bash
# Set up the environment (idempotent) and run the embedded default end to end.
# Extra arguments are Hydra overrides for `finegrained demo` (e.g. `quick`, `seeds=3`, `output_dir=D`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec finegrained demo "$@"
