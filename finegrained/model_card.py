"""Model cards: a ``README.md`` in the Hugging Face model-card format for every directory we write.

A card is YAML front matter (``library_name``, ``base_model`` when it is a hub id, ``tags``,
``datasets`` when they are hub ids, ``pipeline_tag``) followed by plain Markdown: what the model was
trained on, the schema and its categories, the measured metrics, the command and the resolved config,
and the library versions. Everything in it is read from what the run already recorded (a reward
model's ``finegrained.json`` and ``metrics.json``, a policy run's resolved config), so a card never
claims more than the directory holds. No upload code: users who push a directory to a hub get an
honest card with it.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"

# ``owner/name`` or ``name``: what a hub accepts as a model or dataset id. Local paths (absolute,
# relative with ./ or ../, or with more than one slash) are described in the text instead.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_PIPELINE_TAGS = {"span": "token-classification", "preference": "text-classification", "joint": "token-classification"}


def is_hub_id(name: object) -> bool:
    """True when ``name`` looks like a hub id rather than a local path (``gpt2``, ``org/model``)."""
    return isinstance(name, str) and bool(_HUB_ID_RE.match(name)) and not Path(name).exists()


def invocation() -> str:
    """The command line of this process, as a user would type it (``finegrained ppo key=value ...``)."""
    argv = list(sys.argv)
    program = Path(argv[0]) if argv else Path()
    # the console script, python -m finegrained(.cli); any other program (pytest, a user's script) keeps its name
    if program.name == "finegrained" or (program.name in ("cli.py", "__main__.py") and program.parent.name == "finegrained"):
        argv = ["finegrained", *argv[1:]]
    return shlex.join(argv) if argv else "finegrained"


def plain(value: Any) -> Any:
    """``value`` as plain dicts and lists (an OmegaConf config resolved), so YAML can write it."""
    from omegaconf import DictConfig

    from .config import to_container

    return to_container(value) if isinstance(value, DictConfig) else value


def render_card(front_matter: Mapping[str, Any], title: str, sections: list[tuple[str, str]]) -> str:
    """The card's text: ``---``-fenced YAML front matter, a title, then ``## heading`` sections."""
    matter = {k: v for k, v in front_matter.items() if v not in (None, [], {})}
    lines = ["---", yaml.safe_dump(matter, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    return "\n".join(lines)


def _yaml_block(value: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip() + "\n```"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not rows:
        return "No held-out metrics were recorded."
    out = ["| metric | value |", "| --- | ---: |"]
    out += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _versions_line() -> str:
    from .config import library_versions

    return ", ".join(f"{name} {v}" for name, v in library_versions().items())


def _data_files(data: Mapping[str, Any]) -> str:
    lines = []
    for key, entry in data.items():
        if isinstance(entry, Mapping) and entry.get("path"):
            digest = entry.get("sha256") or ""
            lines.append(f"- `{key}`: `{entry['path']}`" + (f" (sha256 `{digest[:16]}`)" if digest else ""))
        elif isinstance(entry, str) and entry:
            lines.append(f"- `{key}`: {entry}")
    return "\n".join(lines) if lines else "Not recorded (an untrained or benchmark directory)."


def reward_model_card(metadata: Mapping[str, Any], metrics: Mapping[str, Any] | None, command: str | None = None) -> str:
    """The card of a reward-model directory, from its ``finegrained.json`` metadata and metrics."""
    kind = metadata.get("kind")
    if kind == "joint":
        categories = dict(metadata.get("categories") or {})
        title = "Joint reward model: " + ", ".join(categories)
    else:
        categories = {metadata.get("category"): {k: metadata.get(k) for k in ("kind", "granularity", "error_types")}}
        title = f"Reward model for {metadata.get('category')} ({kind})"
    backbone = metadata.get("backbone")
    schema = metadata.get("schema") or {}
    front = {
        "library_name": "transformers",
        "base_model": backbone if is_hub_id(backbone) and backbone != "tiny" else None,
        "tags": ["finegrained", "reward-model", "rlhf", "fine-grained-rlhf", *sorted(str(c) for c in categories)],
        "pipeline_tag": _PIPELINE_TAGS.get(str(kind)),
    }
    category_lines = []
    for name, c in categories.items():
        c = c or {}
        types = ", ".join(c.get("error_types") or []) or "none"
        category_lines.append(f"- **{name}**: {c.get('kind')} category judged per {c.get('granularity')} (error types: {types})")
    how = (
        "A span reward model is a token classifier read at a marker token that ends each segment "
        "(probability of an error per segment); a preference model gives one score per answer, trained with "
        "a Bradley-Terry loss on pairs. Load it with `finegrained.rewards.inference.load_judge(directory)`."
    )
    sections = [
        ("What it judges", "\n".join(category_lines) + "\n\n" + how),
        ("Schema", f"`{schema.get('name') or 'unknown'}` (sha256 `{(schema.get('sha256') or '')[:16]}`); segmentation: "
                   f"`{json.dumps(metadata.get('segmentation'), sort_keys=True)}`"),
        ("Training data", _data_files(metadata.get("data") or {})),
        ("Held-out metrics", _metrics_table(metrics or {})),
        ("Backbone", f"`{backbone}`"),
        ("How it was made", f"```\n{command or invocation()}\n```\n\n" + _yaml_block(metadata.get("training") or {})),
        ("Library versions", _versions_line()),
    ]
    return render_card(front, title, sections)


def policy_card(
    *, algorithm: str, base_model: str | None, config: Mapping[str, Any], reward: Mapping[str, Any] | None = None,
    command: str | None = None, summary: Mapping[str, Any] | None = None,
) -> str:
    """The card of a policy directory (``final/`` of sft or ppo): a plain causal LM. ``config`` and ``reward``
    may be OmegaConf configs; ``base_model`` ``"tiny"`` (or a local path) stays out of the front matter."""
    config, reward = plain(config), plain(reward)
    front = {
        "library_name": "transformers",
        "base_model": base_model if is_hub_id(base_model) and base_model != "tiny" else None,
        "tags": ["finegrained", algorithm, "rlhf" if algorithm != "sft" else "sft", "fine-grained-rlhf"],
        "pipeline_tag": "text-generation",
    }
    if reward:
        lines = []
        for name, c in (reward.get("categories") or {}).items():
            c = c or {}
            judge = c.get("model") or (c.get("judge") or {}).get("_target_") or "?"
            lines.append(f"- **{name}**: weight {c.get('weight')}, judged by `{judge}`")
        reward_text = "\n".join(lines) or "none"
    elif algorithm == "dpo":
        reward_text = "Offline preference optimisation (DPO, IPO or dense DPO): no reward model; the pairs are in the config's `data`."
    else:
        reward_text = "Supervised fine-tuning: no reward."
    sections = [
        ("What it is", f"A causal language model trained with `finegrained {algorithm}` from `{base_model}`. "
                       "Load it with `transformers.AutoModelForCausalLM.from_pretrained(directory)`."),
        ("Rewards", reward_text),
        ("Run summary", _metrics_table(summary or {})),
        ("How it was made", f"```\n{command or invocation()}\n```\n\n" + _yaml_block(dict(config))),
        ("Library versions", _versions_line()),
    ]
    return render_card(front, f"{algorithm.upper()} policy", sections)


def write_card(directory: str | Path, text: str) -> Path:
    """Write ``directory/README.md`` (atomically)."""
    from .io import atomic_write_text

    path = Path(directory) / CARD_FILE
    atomic_write_text(path, text)
    return path
