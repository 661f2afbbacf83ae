"""Read a Hydra command line strictly: refuse unknown keys, check every resolved value, write the help.

``compose_checked(name, overrides)`` is what ``finegrained.config.compose_from_argv`` runs before any work
starts: it reports every problem of the command line at once (one line each, naming the key, its value and
what is allowed) as an ``InputError``, or returns the composed config. The rules come from the tables in
``finegrained.settings``; ``render_help(name)`` writes ``--help`` from the same tables. Nothing here imports
torch, transformers or accelerate.

Also here: ``warn_if_one_class``, the loud warning for span training labels that are all one class.
"""

from __future__ import annotations

import copy
import difflib
import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from .errors import FinegrainedError, InputError, Problem
from .paths import CONF_DIR
from .settings import COMMANDS, Command, Setting, show_value

MISSING = "???"  # OmegaConf's "must be set"; the commands themselves say which key to set


def command_spec(config_name: str) -> Command:
    """The command's table; a Hydra command without one still gets the unknown-key check."""
    if config_name in COMMANDS:
        return COMMANDS[config_name]
    return Command(config_name.replace("_", "-"), "", f"finegrained {config_name.replace('_', '-')} [key=value ...]", (), {})


def problem(config_name: str, key: str | None, message: str) -> Problem:
    return Problem(f"finegrained {command_spec(config_name).cli_name}", None, message, key)


# -- config groups ------------------------------------------------------------------------------------
@functools.cache
def group_defaults(config_name: str) -> dict[str, str | None]:
    """Group -> default option, from the defaults list of ``conf/<config_name>.yaml`` (in its order); a
    plain entry naming another top-level config (grpo.yaml's ``- ppo``) contributes that config's groups."""
    raw = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    found: dict[str, str | None] = {}
    for entry in raw.get("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and (CONF_DIR / f"{entry}.yaml").is_file():
            found.update(group_defaults(entry))
            continue
        if isinstance(entry, str) or not hasattr(entry, "items"):
            continue  # _self_
        for group, option in entry.items():
            found[str(group).removeprefix("optional ").strip()] = option
    return found


@functools.cache
def group_options(group: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


@functools.cache
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


# -- spec lookup --------------------------------------------------------------------------------------
def _matches(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) == len(k) and all(a == "*" or a == b for a, b in zip(p, k))


def lookup(settings: dict[str, Setting], key: str) -> Setting | None:
    """The entry for ``key``: an exact one first, else the pattern with the fewest wildcards."""
    pattern = _pattern_of(settings, key)
    return settings[pattern] if pattern is not None else None


def _under_open(settings: dict[str, Setting], key: str) -> bool:
    parts = key.split(".")
    for n in range(1, len(parts)):
        entry = lookup(settings, ".".join(parts[:n]))
        if entry is not None and entry.open:
            return True
    return False


def _is_spec_prefix(settings: dict[str, Setting], key: str) -> bool:
    depth = key.count(".") + 1
    return any(_matches(".".join(p.split(".")[:depth]), key) for p in settings if p.count(".") >= depth)


def known_key(settings: dict[str, Setting], present: set[str], key: str) -> bool:
    return key in present or lookup(settings, key) is not None or _under_open(settings, key) or _is_spec_prefix(settings, key)


def suggestions(settings: dict[str, Setting], present: set[str], key: str, extra: Sequence[str] = ()) -> list[str]:
    """Close known keys (difflib); a pattern's ``*`` takes the user's own name at that place."""
    parts = key.split(".")
    candidates = set(present) | set(extra)
    for pattern in settings:
        p = pattern.split(".")
        candidates.add(".".join(parts[i] if s == "*" and i < len(parts) else s for i, s in enumerate(p)))
    return difflib.get_close_matches(key, sorted(c for c in candidates if "*" not in c), n=3, cutoff=0.6)


def node_paths(container, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every (dotted path, value) of a plain nested dict, mappings included."""
    if isinstance(container, dict):
        for k, v in container.items():
            path = f"{prefix}{k}"
            yield path, v
            yield from node_paths(v, path + ".")


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; bad overrides become user errors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise FinegrainedError(f"finegrained {config_name.replace('_', '-')}: bad configuration: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


@functools.lru_cache(maxsize=64)
def _composed(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    return compose(config_name, overrides)


def compose_cached(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """``config.compose``, remembered: the conf/ files do not change while a process runs, and a demo
    check composes its stages' configs more than once. A copy each time (callers may change it)."""
    return copy.deepcopy(_composed(config_name, tuple(overrides)))


# -- the command line ---------------------------------------------------------------------------------
@dataclass
class ReadOverrides:
    groups: list[str]  # group=option overrides, as Hydra wants them
    values: list[tuple[str, str, object]]  # (key, override text, parsed override) of every other one
    problems: list[Problem]


def expand_words(command: Command, argv: Sequence[str]) -> list[str]:
    """Bare words (``demo quick``) and aliases (``eval-rm model=DIR``) as the overrides they stand for."""
    out, extra = [], []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq and arg in command.words:
            out.append(command.words[arg][0])
            extra += command.words[arg][1:]
        elif eq and key in command.aliases:
            out.append(f"{command.aliases[key]}={value}")
        else:
            out.append(arg)
    given = {a.lstrip("+~").partition("=")[0] for a in out}
    return out + [e for e in extra if e.partition("=")[0] not in given]


def read_overrides(config_name: str, argv: Sequence[str]) -> ReadOverrides:
    """Split the command line into group choices and settings; bad syntax and bad options are problems."""
    from hydra.errors import HydraException

    groups = group_defaults(config_name)
    parser = _override_parser()
    read = ReadOverrides([], [], [])
    for arg in argv:
        if "=" not in arg and not arg.startswith("~"):
            hint = [f"{g}={arg}" for g in groups if arg in group_options(g)]
            read.problems.append(problem(config_name, None, f"{arg}: not a key=value setting"
                                         + (f" (did you mean {hint[0]}?)" if hint else "")))
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as e:
            reason = str(e).splitlines()[0]
            if "=[" in arg and arg.count("=") > 1:
                reason += " (quote list items that hold '=', e.g. 'ppo_overrides=[\"ppo.lr=1e-4\"]')"
            read.problems.append(problem(config_name, None, f"{arg}: cannot parse: {reason}"))
            continue
        key = override.key_or_group
        if key in groups and override.package is None:
            read.problems += _check_group_choice(config_name, key, override)
            read.groups.append(arg.lstrip("+"))  # a group of this command is chosen, never appended
        else:
            read.values.append((key, arg, override))
    return read


def _check_group_choice(config_name: str, group: str, override) -> list[Problem]:
    if override.is_delete():
        return []
    value = override.value()
    options = group_options(group)
    chosen = value if isinstance(value, list) else [value]
    bad = [v for v in chosen if not isinstance(v, str) or v not in options]
    if not bad:
        return []
    close = difflib.get_close_matches(str(bad[0]), options, n=1)
    hint = f" (did you mean {group}={close[0]}?)" if close else ""
    return [problem(config_name, group, f"{show_value(bad[0])}: no such option; one of {', '.join(options)}{hint}")]


def check_keys(config_name: str, read: ReadOverrides, base: DictConfig | None) -> list[str]:
    """Every setting override checked against the known keys; returns the overrides Hydra should get.
    A known key the composed config does not hold yet (a new policy name, a new reward category) is
    passed as ``++key=value``; an unknown one is a problem, even with ``+`` or ``++``."""
    command = command_spec(config_name)
    container = OmegaConf.to_container(base, resolve=False) if base is not None else {}
    present = {path for path, _ in node_paths(container)}
    groups = list(group_defaults(config_name))
    out = list(read.groups)
    for key, text, override in read.values:
        if not known_key(command.settings, present, key):
            close = suggestions(command.settings, present, key, extra=groups)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            if (CONF_DIR / key).is_dir():
                hint = f"{key} is a config group of other commands, not of this one ({', '.join(groups) or 'none'}); "
            read.problems.append(problem(config_name, key, f"unknown setting; {hint}"
                                         f"`finegrained {command.cli_name} --help` lists every key"))
            continue
        bare = text.lstrip("+")
        if override.is_delete() and key in command.settings and not _under_open(command.settings, key):
            read.problems.append(problem(config_name, key, "cannot be removed (the command reads it); set a value instead"))
        elif override.is_delete() or override.is_force_add():
            out.append(text)
        elif key in present:
            out.append(bare)  # "+key" for a key that is already there: Hydra would refuse it
        else:
            out.append("++" + bare)
    return out


# -- values -------------------------------------------------------------------------------------------
def check_values(config_name: str, cfg: DictConfig) -> list[Problem]:
    """Every value of the composed config against the command's table, then its cross-key rules."""
    from omegaconf.errors import OmegaConfBaseException

    command = command_spec(config_name)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        return [problem(config_name, None, f"cannot resolve the configuration: {e}")]
    found: list[Problem] = []
    valid: dict[str, object] = {}
    for path, value in node_paths(container):
        entry = lookup(command.settings, path)
        if entry is None or value == MISSING:
            continue
        message = entry.problem(value)
        if message:
            found.append(problem(config_name, path, f"{_shown(value)}: {message}"))
            continue
        valid[path] = value
        if entry.overrides_for:
            found += _check_nested(config_name, path, entry.overrides_for, value)
    for rule in command.rules:
        if all(k in valid for k in rule.keys) and not rule.test(*(valid[k] for k in rule.keys)):
            others = ", ".join(f"{k}={_shown(valid[k])}" for k in rule.keys[1:])
            found.append(problem(config_name, rule.keys[0], f"{_shown(valid[rule.keys[0]])}: {rule.message}"
                                 + (f" ({others})" if others else "")))  # a one-key rule has no others to show
    return found


def _shown(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return show_value(value)


def _check_nested(config_name: str, key: str, target: str, overrides: list[str]) -> list[Problem]:
    """Overrides a command passes on to another one (the demo's stages), checked as that command would."""
    try:
        compose_checked(target, overrides)
    except InputError as e:
        return [problem(config_name, f"{key}: {p.field}" if p.field else key, p.message) for p in e.problems]
    return []


def compose_checked(config_name: str, argv: Sequence[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with the command line, refusing unknown keys and bad values
    (every problem at once, as one ``InputError``)."""
    read = read_overrides(config_name, expand_words(command_spec(config_name), argv))
    # With problems already found, carry on with what is left to name every other problem too.
    base = _compose_or_none(config_name, read.groups, quiet=bool(read.problems))
    overrides = check_keys(config_name, read, base)
    cfg = _compose_or_none(config_name, overrides, quiet=bool(read.problems))
    found = read.problems + (check_values(config_name, cfg) if cfg is not None else [])
    if found:
        raise InputError(found)
    return cfg


def _compose_or_none(config_name: str, overrides: list[str], quiet: bool) -> DictConfig | None:
    """The composed config without the bad group choices; None if Hydra still refuses it and ``quiet``."""
    try:
        return compose_cached(config_name, [o for o in overrides if not _bad_group(config_name, o)])
    except FinegrainedError:
        if quiet:
            return None
        raise


def _bad_group(config_name: str, text: str) -> bool:
    """A group choice (``group=option``) naming no option of a group of this command."""
    group, _, option = text.partition("=")
    return group in group_defaults(config_name) and option not in group_options(group)


# -- help ---------------------------------------------------------------------------------------------
def render_help(config_name: str, argv: Sequence[str] = ()) -> str:
    """``--help``: usage, examples, this command's groups, and every key of the composed config (with the
    group choices on the command line) with its default, what is allowed and one line of description."""
    command = command_spec(config_name)
    read = read_overrides(config_name, expand_words(command, argv))
    chosen = [g for g in read.groups if not _bad_group(config_name, g)]
    try:
        base = OmegaConf.to_container(compose_cached(config_name, chosen), resolve=False)
    except FinegrainedError:
        base = OmegaConf.to_container(compose_cached(config_name, []), resolve=False)
    lines = [f"usage: {command.usage}", ""]
    if command.summary:
        lines += [command.summary, ""]
    if command.examples:
        lines += ["examples:", *(f"  {e}" for e in command.examples), ""]
    lines += _group_lines(config_name, chosen)
    lines += ["settings (key=default  description [allowed]):", *_setting_lines(command, base), ""]
    if command.notes:
        lines += [command.notes]
    lines += [
        "Every value is checked before any work starts; unknown keys are refused (even with + or ++).",
        f"`finegrained {command.cli_name} [group=option ...] --cfg` prints the composed config; "
        f"`finegrained {command.cli_name} group=option --help` lists that option's keys.",
    ]
    return "\n".join(lines)


def _group_lines(config_name: str, chosen: list[str]) -> list[str]:
    groups = group_defaults(config_name)
    if not groups:
        return []
    picked = {g.partition("=")[0]: g.partition("=")[2] for g in chosen}
    width = max(len(g) for g in groups)
    lines = ["groups (group=option):"]
    for group, default in groups.items():
        now = picked.get(group, default)
        lines.append(f"  {group:<{width}}  {', '.join(group_options(group))}  (default: {show_value(default)}"
                     + (f"; chosen: {now})" if now != default else ")"))
    return lines + [""]


def _setting_lines(command: Command, base: dict) -> list[str]:
    rows: list[tuple[str, str]] = []
    for path, value in node_paths(base):
        pattern = _pattern_of(command.settings, path)
        entry = command.settings.get(pattern) if pattern else None
        if pattern is not None and "*" in pattern:
            row = (pattern.replace("*", "<name>"), _describe(entry))
            if row not in rows:
                rows.append(row)
        elif entry is None:
            if not (_under_open(command.settings, path) or isinstance(value, dict)):
                rows.append((f"{path}={_short(_shown(value))}", _describe(None)))  # a key without a table entry
        elif entry.open or entry.kind == "mapping":
            if entry.open or entry.nullable:  # a block with listed keys is shown through its keys
                rows.append((path if isinstance(value, dict) else f"{path}={_shown(value)}", _describe(entry)))
        else:
            rows.append((f"{path}={_short(_shown(value))}", _describe(entry)))
    width = min(max((len(k) for k, _ in rows), default=0), 44)
    return [f"  {k:<{width}}  {d}" if len(k) <= width else f"  {k}\n  {'':<{width}}  {d}" for k, d in rows]


def _pattern_of(settings: dict[str, Setting], key: str) -> str | None:
    """The table key for ``key``: itself, else the pattern with the fewest wildcards."""
    if key in settings:
        return key
    matching = [p for p in settings if "*" in p and _matches(p, key)]
    return min(matching, key=lambda p: p.count("*")) if matching else None


def _describe(entry: Setting | None) -> str:
    if entry is None:
        return "(not described yet)"
    if entry.kind == "mapping":
        return entry.help + (" [a mapping, or null]" if entry.nullable else "")
    return f"{entry.help} [{entry.allowed()}]"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- training data ------------------------------------------------------------------------------------
def warn_if_one_class(category: str, n_segments: int, n_errors: int, source: str = "data.train") -> str | None:
    """A span category whose training labels are all one class (no error segment at all, or nothing but
    errors) trains a model that says the same thing everywhere. Prints a loud warning to stderr and
    returns it; None when both classes occur."""
    if n_segments and 0 < n_errors < n_segments:
        return None
    if not n_segments:
        what = "no labelled segments at all"
    elif n_errors == 0:
        what = f"no error segment among {n_segments} (every label is 'clean')"
    else:
        what = f"every one of {n_segments} segments is an error"
    message = (f"WARNING: train-rm {category}: {source} has {what}; the reward model can only learn to give "
               f"one answer everywhere. Check the annotations and the schema's labels for {category}.")
    bar = "!" * min(len(message), 100)
    print(f"{bar}\n{message}\n{bar}", file=sys.stderr, flush=True)
    return message
