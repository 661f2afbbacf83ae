"""The import graph of ``finegrained/`` keeps its layers (docs/ARCHITECTURE.md, "Layers").

Every import counts, function-level lazy ones too. A module no rule of ``LAYERS`` places fails the test, so
a new file must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finegrained"

# layer -> (the layers it may import besides itself, its modules; a package name places its whole folder)
LAYERS: dict[str, tuple[set[str], list[str]]] = {
    "base": (set(), ["finegrained", "errors", "io", "paths", "progress", "settings", "config", "config_checks",
                     "trackers", "model_card", "plots", "models"]),
    "data": ({"base"}, ["schema", "data", "model_dirs", "prompts"]),
    "text": ({"base", "data"}, ["segment", "labels", "text_metrics"]),
    "convert": ({"base", "data", "text"}, ["convert"]),
    "app": ({"base", "data"}, ["app"]),
    "rewards": ({"base", "data", "text"}, ["rewards"]),
    "rl": ({"base", "data", "text", "rewards"}, ["rl"]),
    "tasks": ({"base", "data", "text", "rewards", "rl"}, ["tasks"]),
    "workflows": ({"base", "data", "text", "convert", "app", "rewards", "rl", "tasks"},
                  ["sft", "evaluate", "sample", "agreement", "demo", "bench"]),
    "commands": ({"base", "data", "text", "convert", "app", "rewards", "rl", "tasks", "workflows"}, ["commands", "cli"]),
}
RULES = {name: layer for layer, (_, names) in LAYERS.items() for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of the longest rule naming ``module`` or a package above it (``finegrained``: only itself)."""
    parts = module.split(".")[1:]
    if not parts:
        return RULES["finegrained"]
    return next((RULES[n] for i in range(len(parts), 0, -1) if (n := ".".join(parts[:i])) in RULES), None)


def imports_of(module: str) -> list[tuple[int, str]]:
    """(line, finegrained module) of every import in ``module``, relative ones resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``from .config import log``: the module is finegrained.config
                target = target.rpartition(".")[0]
            if target.startswith("finegrained") and target != module:
                found.append((node.lineno, target))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_imports_are_found_lazy_and_relative_ones_too():
    assert "finegrained.rewards.placement" in {t for _, t in GRAPH["finegrained.rl.generation"]}  # in a function
    assert "finegrained.agreement" in {t for _, t in GRAPH["finegrained.commands.agreement"]}  # from .. import agreement
    assert "finegrained.config" in {t for _, t in GRAPH["finegrained.sft"]}  # from .config import log


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    problems = []
    for module, edges in GRAPH.items():
        layer = layer_of(module)
        for line, target in edges if layer else []:  # an unplaced module fails the test above
            if layer_of(target) not in LAYERS[layer][0] | {layer}:
                path = MODULES[module].relative_to(PACKAGE.parent)
                problems.append(f"{path}:{line}: {module} ({layer}) imports {target} ({layer_of(target)})")
    assert list(dict.fromkeys(problems)) == [], "\n".join(dict.fromkeys(problems))


def test_no_import_cycle():
    cycles, state = {}, {}  # state: 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in dict.fromkeys(target for _, target in GRAPH[module]):
            if state.get(target) == 1:
                cycles[" -> ".join(path[path.index(target):] + [target])] = None
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert list(cycles) == [], "\n".join(cycles)
