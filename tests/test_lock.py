"""The lock (requirements/constraints.txt) agrees with pyproject.toml: every dependency of the package, of its
dev extra (what scripts/setup.sh installs) and of the extras CI adds (.ci/run's FINEGRAINED_EXTRAS) is pinned to
one exact version inside its declared range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one "==" per line
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in out, f"constraints.txt pins {req.name} twice"
        out[name] = Version(spec.version)
    return out


def ci_extras() -> list[str]:
    found = re.search(r"^export FINEGRAINED_EXTRAS=(\S+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    return found.group(1).split(",") if found else []


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in (*project["dependencies"], *(r for e in ["dev", *ci_extras()] for r in extras[e]))]


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_every_declared_dependency_is_pinned_inside_its_range(requirement):
    pinned = pins().get(canonicalize_name(requirement.name))
    assert pinned is not None, f"{requirement.name} is in pyproject.toml but not in requirements/constraints.txt (bash scripts/lock.sh)"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"requirements/constraints.txt pins {requirement.name}=={pinned}, outside pyproject.toml's {requirement}"
    )


def test_setup_installs_from_the_lock_by_default():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "requirements/constraints.txt" in setup and "FINEGRAINED_UNLOCKED" in setup


def test_ci_installs_extras_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert ci_extras() and set(ci_extras()) <= set(extras)
