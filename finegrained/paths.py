"""Where the project's shipped files live (configs, annotation schemas)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
CONF_DIR = PROJECT_DIR / "conf"
SCHEMA_DIR = PROJECT_DIR / "annotation_schemas"
# The built-in task's SFT policy as `finegrained demo` stage 1 trains it (seed 0, full size), shipped so that
# `demo quick` can show RL at work in under two minutes (scripts/ship_demo_sft.sh rebuilds it).
SHIPPED_SFT_DIR = PACKAGE_DIR / "tasks" / "synthetic_qa_sft"
