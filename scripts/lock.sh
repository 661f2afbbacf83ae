#!/usr/bin/env bash
# Write requirements/constraints.txt: the exact version of every package in .venv, the environment the
# README's figures were measured in. Run after a deliberate upgrade (FINEGRAINED_UNLOCKED=1 bash
# scripts/setup.sh, re-measure, then this), and commit the result with the new figures.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
{
    echo "# Exact versions of the environment the README's figures were measured in (scripts/lock.sh)."
    echo "# scripts/setup.sh installs with these constraints; FINEGRAINED_UNLOCKED=1 installs from pyproject.toml's"
    echo "# ranges instead. A constraints file only pins what gets installed: optional extras pin too when chosen."
    # torch's local version label (+cpu) names the build, not the release: ==2.13.0 accepts the CPU and CUDA builds.
    python -m pip freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements/constraints.txt.tmp
mv requirements/constraints.txt.tmp requirements/constraints.txt
echo "wrote requirements/constraints.txt ($(grep -vc '^#' requirements/constraints.txt) packages)" >&2
