#!/usr/bin/env bash
# Install what the browser tests (tests/test_app_browser.py, pytest -m browser) need: Debian's headless
# chromium and the Playwright Python driver. Playwright drives the system chromium
# (executable_path=/usr/bin/chromium), so `playwright install` (a browser download) is never run.
# Idempotent: each step is skipped when its result is already there. Needs root (or sudo) for apt.
#
#   scripts/install_browser.sh [PYTHON]     # PYTHON defaults to .venv/bin/python next to this script
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-$repo/.venv/bin/python}"

if command -v chromium >/dev/null 2>&1; then
    echo "chromium: already installed ($(command -v chromium))"
else
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    echo "chromium: installing the Debian package"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium
fi

if "$python" -c "import playwright" >/dev/null 2>&1; then
    echo "playwright: already installed for $python"
else
    echo "playwright: pip install into $python"
    "$python" -m pip install --quiet playwright
fi

# The real binary: Debian's /usr/bin/chromium wrapper script prints a harmless shell warning on some hosts.
if [ -x /usr/lib/chromium/chromium ]; then /usr/lib/chromium/chromium --version; else chromium --version; fi
