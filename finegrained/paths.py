"""Where the project's shipped files live (configs, annotation schemas)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
CONF_DIR = PROJECT_DIR / "conf"
SCHEMA_DIR = PROJECT_DIR / "annotation_schemas"
