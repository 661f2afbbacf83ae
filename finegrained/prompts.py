"""Prompts for every command that samples from a policy (``ppo``, ``evaluate``, ``sample``).

``load_prompts(task_cfg, split)`` is the one way in. A task config names a prompts function in
``task.prompts._target_``; it is called with ``split`` (``train`` for training, ``eval``/``test`` for
held-out prompts) and, when it accepts them, ``n`` (how many a command wants) and ``seed``, plus the
other keys of ``task.prompts``. It returns records ``{"id", "prompt", "reference"?, ...}``, checked here
whatever their source: a prompt must be a non-blank string, ids (default ``p<line>``) unique, a
reference a string when given. Three sources ship:

- the built-in task (``task=synthetic_qa``, the default): ``finegrained.tasks.synthetic_qa.prompts``;
- JSONL files (``task=jsonl task.train=prompts.jsonl task.eval=heldout.jsonl``): ``jsonl_prompts``;
- a Hugging Face ``datasets`` dataset (``task=hf_dataset task.path=... task.columns.prompt=question``):
  ``dataset_prompts``: a directory written by ``save_to_disk``, a local data file, ``data_files`` for a
  builder such as ``json`` or ``csv``, or a dataset name (from the local cache; no download here).

Problems are reported as ``FILE:LINE: field: message`` (for a dataset: ``PATH[SPLIT]:ROW``, rows counted
from 1).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import FinegrainedError, InputError, Problem

TRAIN_SPLIT = "train"
MAX_PROBLEMS = 50
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def is_training_split(split: str) -> bool:
    """``train`` reads a task's training prompts; every other split (``eval``, ``test``) its held-out ones."""
    return split == TRAIN_SPLIT


def load_prompts(task_cfg: DictConfig | Mapping, split: str, *, n: int | None = None, seed: int | None = None) -> list[dict]:
    """Checked prompt records of ``split`` from the task's prompts function (see the module docstring).

    ``n``: at most this many (passed to the function when it takes ``n``, else the first ``n``);
    ``seed``: passed when the function takes it (the built-in task draws its prompts from it).
    """
    from hydra.utils import get_method

    spec = task_cfg.get("prompts") if task_cfg is not None else None
    if not spec or "_target_" not in spec:
        raise FinegrainedError("the task has no prompts: set task=synthetic_qa, task=jsonl or task=hf_dataset, "
                               "or task.prompts._target_=<module.function>")  # fmt: skip
    target = str(spec["_target_"])
    try:
        function = get_method(target)
    except Exception as e:  # hydra wraps import errors of every kind
        raise FinegrainedError(f"task.prompts._target_={target}: cannot import it: {e}") from None
    kwargs = {k: v for k, v in _plain(spec).items() if k not in ("_target_", "_partial_")}
    kwargs["split"] = split
    accepts = _accepted(function)
    for key, value in (("n", n), ("seed", seed)):
        if value is not None and (key in accepts or "**" in accepts):
            kwargs[key] = value
    records = function(**kwargs)
    source = f"{target}(split={split})"
    checked = check_prompt_records(records, source)
    if not checked:
        raise FinegrainedError(f"{source}: the task gave no prompts for split {split!r}")
    return checked[:n] if n is not None else checked


def check_prompt_records(records: Sequence, source: str, first_line: int = 1) -> list[dict]:
    """Validated copies of prompt records: ``id`` a string (an integer is converted; default ``p<line>``),
    unique; ``prompt`` a non-blank string; ``reference`` a string or absent. Raises ``InputError``
    listing every problem as ``SOURCE:LINE: field: message``; ``records[i]`` is line ``first_line + i``
    unless it carries its own ``_line``."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    out = []
    for index, record in enumerate(records or []):
        line = record.get("_line", first_line + index) if isinstance(record, Mapping) else first_line + index
        if not isinstance(record, Mapping):
            problems.append(Problem(source, line, "each prompt record must be an object with a 'prompt'"))
            continue
        before = len(problems)
        prompt = record.get("prompt")
        if "prompt" not in record:
            problems.append(Problem(source, line, "missing", "prompt"))
        elif not isinstance(prompt, str):
            problems.append(Problem(source, line, f"must be a string, got {type(prompt).__name__}", "prompt"))
        elif not prompt.strip():
            problems.append(Problem(source, line, "is blank", "prompt"))
        reference = record.get("reference")
        if reference is not None and not isinstance(reference, str):
            problems.append(Problem(source, line, f"must be a string when given, got {type(reference).__name__}", "reference"))
        raw_id = record.get("id")
        if raw_id is None:
            raw_id = f"p{line}"
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            problems.append(Problem(source, line, "must be a string or an integer", "id"))
        elif str(raw_id) in seen:
            problems.append(Problem(source, line, f"duplicate id {str(raw_id)!r} (first used on line {seen[str(raw_id)]})", "id"))
        else:
            seen[str(raw_id)] = line
        if len(problems) == before:
            clean = {k: v for k, v in record.items() if k != "_line"}
            clean["id"] = str(raw_id)
            if reference is None:
                clean.pop("reference", None)
            out.append(clean)
    if problems:
        raise InputError(problems[:MAX_PROBLEMS])
    return out


def read_prompt_file(path: str | Path) -> list[dict]:
    """Checked prompt records of a JSONL file (``{"id"?, "prompt", "reference"?}`` per line)."""
    from .io import read_string_records

    rows = read_string_records(path, ("prompt",))  # missing or empty file, bad JSON, non-string prompt
    return check_prompt_records(rows, str(path))


def jsonl_prompts(split: str, train: str | None = None, eval: str | None = None, n: int | None = None) -> list[dict]:
    """Prompts of ``task=jsonl``: ``train`` for the training split, ``eval`` for every held-out split."""
    key, path = ("train", train) if is_training_split(split) else ("eval", eval)
    if not path:
        what = "training prompts (ppo)" if key == "train" else "held-out prompts (evaluate)"
        raise FinegrainedError(f"task=jsonl: set task.{key}=<prompts.jsonl> for the {what}")
    records = read_prompt_file(path)
    return records[:n] if n is not None else records


def dataset_prompts(split: str, path: str | None = None, name: str | None = None, data_files=None,
                    train_split: str = "train", eval_split: str = "test", columns: Mapping | None = None,
                    n: int | None = None) -> list[dict]:  # fmt: skip
    """Prompts of ``task=hf_dataset`` from a ``datasets`` dataset.

    ``path``: a ``save_to_disk`` directory, a local data file (.json/.jsonl/.csv/.parquet), a builder
    name with ``data_files`` (``path=json data_files.train=a.jsonl data_files.test=b.jsonl``) or a dataset
    name (read from the local cache). ``columns``: ``{"prompt", "id"?, "reference"?}`` column names.
    """
    if not path:
        raise FinegrainedError("task=hf_dataset: set task.path=<dataset directory, data file or name>")
    columns = {"prompt": "prompt", "id": None, "reference": None, **dict(columns or {})}
    split_name = train_split if is_training_split(split) else eval_split
    dataset, source = load_dataset_split(str(path), name, data_files, split_name)
    wanted = {role: col for role, col in columns.items() if col}
    missing = [f"task.columns.{role}={col!r}" for role, col in wanted.items() if col not in dataset.column_names]
    if missing:
        raise FinegrainedError(f"{source}: no such column ({', '.join(missing)}); its columns: {', '.join(dataset.column_names)}")
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    data = {role: dataset[col] for role, col in wanted.items()}
    records = [{role: values[i] for role, values in data.items()} for i in range(len(dataset))]
    if not records:
        raise InputError(Problem(source, None, "empty: no rows"))
    return check_prompt_records(records, source)


def load_dataset_split(path: str, name: str | None, data_files, split_name: str):
    """``(dataset, source)``: one split of a ``datasets`` dataset, and how problems should name it."""
    import datasets

    from .model_dirs import check_local_source

    local = Path(path).expanduser()
    source = f"{path}[{split_name}]"
    try:
        if data_files:
            files = OmegaConf.to_container(data_files) if isinstance(data_files, DictConfig) else data_files
            return datasets.load_dataset(path, name, data_files=files, split=split_name), source
        if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split_name not in loaded:
                    raise FinegrainedError(f"{path}: no split {split_name!r} (its splits: {', '.join(loaded)})")
                return loaded[split_name], source
            return loaded, str(path)
        if local.is_file():
            builder = DATA_FILE_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise FinegrainedError(f"{path}: unknown data file type; use one of {', '.join(DATA_FILE_BUILDERS)}")
            # one file is one split: the command reads all of it, whichever split it asked for
            return datasets.load_dataset(builder, data_files=str(local), split="train"), str(path)
        check_local_source(path, "task.path")
        return datasets.load_dataset(path, name, split=split_name), source
    except FinegrainedError:
        raise
    except Exception as e:  # datasets raises many kinds (not found, bad split, parse errors, offline)
        raise FinegrainedError(f"task.path={path}: cannot load split {split_name!r}: {type(e).__name__}: {e}") from None


def _plain(spec) -> dict:
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)  # type: ignore[return-value]
    return dict(spec)


def _accepted(function) -> set[str]:
    """Names of the keyword parameters ``function`` takes (``**`` when it takes any)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {"**"}
    return {"**" if p.kind is p.VAR_KEYWORD else p.name for p in parameters}
