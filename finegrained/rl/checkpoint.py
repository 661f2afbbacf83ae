"""RL checkpoints: everything needed to continue a run exactly.

``output_dir/checkpoints/iter-N/`` holds ``policy.safetensors``, ``value.safetensors`` (algorithms with a
critic: ``value`` is None for the others, and their checkpoints hold no value file), ``optimizer.pt``,
``scheduler.pt`` (torch files we wrote, read back with ``weights_only=True``), ``rng.pt`` (python, numpy,
torch and CUDA generator states) and ``state.json`` (iteration, data position, KL controller). Each is
written into a temporary directory that is renamed into place, so a crash never leaves half a checkpoint;
only the newest ``keep`` checkpoints are kept. Nothing non-finite is written (``model_dirs.save_module_file``).

Resuming reads the newest checkpoint whole and checks it (every file readable, tensor names and shapes those
of the models, values finite, ``state.json`` well-formed) before changing anything; a checkpoint that fails
is skipped, saying why, for the next older one (``load_latest_checkpoint``).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FinegrainedError
from ..io import atomic_directory, remove_stale_temporaries
from ..model_dirs import first_non_finite, optimizer_tensors, read_safetensors, refuse_non_finite, save_module_file

_NAME = re.compile(r"^iter-(\d+)$")
CHECKPOINT_NAMES = r"iter-\d+"
STATE_FILE = "state.json"


def checkpoint_dirs(output_dir: Path, complete_only: bool = True) -> list[tuple[int, Path]]:
    """Checkpoints ``(iteration, directory)``, oldest first: those with state.json, or every ``iter-N``."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _NAME.match(d.name)
            if m and d.is_dir() and (not complete_only or (d / STATE_FILE).is_file()):
                found.append((int(m.group(1)), d))
    return sorted(found)


def remove_interrupted_writes(output_dir: Path) -> list[Path]:
    """Temporary checkpoint directories a killed run left in ``output_dir/checkpoints``."""
    return remove_stale_temporaries(Path(output_dir) / "checkpoints", CHECKPOINT_NAMES)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), np_state[2], np_state[3], np_state[4]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, iteration: int, policy, value, optimizer, scheduler, state: dict, keep: int) -> Path:
    final = Path(output_dir) / "checkpoints" / f"iter-{iteration}"
    with atomic_directory(final, overwrite=True) as tmp:
        save_module_file(policy, tmp / "policy.safetensors", "the policy")
        if value is not None:
            save_module_file(value, tmp / "value.safetensors", "the value model")
        refuse_non_finite(optimizer_tensors(optimizer), tmp, "the optimizer state")
        _save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
        _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        _save_torch(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}, indent=2))
    for _, old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_torch(obj, path: Path) -> None:
    # through a Python file: a full disk is then OSError(ENOSPC), where torch's own file writer only says
    # "unexpected pos"
    with open(path, "wb") as f:
        torch.save(obj, f)


@dataclass
class CheckpointContents:
    """A checkpoint read whole and checked, not yet applied."""

    directory: Path
    policy: dict[str, torch.Tensor]
    value: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: dict
    state: dict[str, Any]


class CheckpointError(FinegrainedError):
    """A checkpoint that cannot be resumed from (damaged, or not of this run's models)."""


def _alias_groups(module) -> list[list[str]]:
    """State-dict names grouped by the storage they share (tied weights): ``save_model`` writes one of each."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault((tensor.data_ptr(), tuple(tensor.shape), tensor.dtype), []).append(name)
    return list(groups.values())


def _adapter_hint(saved, expected) -> str:
    """Why the names differ when LoRA is the reason: peft's adapter weights are ``...lora_A.<adapter>.weight``
    (finegrained's own LoRA before peft wrote ``...lora_A``), the wrapped model's ``base_model.model....``."""
    def has_adapters(names) -> bool:
        return any(".lora_A." in n for n in names)

    if any(n.endswith(".lora_A") for n in saved):
        return "; it was written by finegrained's LoRA before peft, which cannot be resumed: pass overwrite=true"
    if has_adapters(saved) != has_adapters(expected):
        held = "holds LoRA adapters and this run has none" if has_adapters(saved) else "has no LoRA adapters and this run has"
        return f"; the checkpoint {held}: resume with the run's own lora.* settings"
    if has_adapters(saved):
        return "; LoRA adapters on other layers: resume with the run's own lora.targets"
    return ""


def _check_weights(tensors: dict[str, torch.Tensor], module, what: str, directory: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [group[0] for group in _alias_groups(module) if not any(name in tensors for name in group)]
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: {what} weights do not match this run's model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}){_adapter_hint(tensors, expected)}")
    wrong = [k for k in tensors if tuple(tensors[k].shape) != expected[k]]
    if wrong:
        raise CheckpointError(f"{directory}: {what} tensor {wrong[0]!r} has shape {tuple(tensors[wrong[0]].shape)}, "
                              f"this run's model {expected[wrong[0]]}")
    bad = first_non_finite(tensors.items())
    if bad is not None:
        raise CheckpointError(f"{directory}: {what} tensor {bad!r} has NaN or infinite values")


def _torch_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # a damaged pickle/zip raises many kinds of error; every one means "unreadable"
        detail = " ".join(str(e).split())[:200]  # torch's messages run over several lines
        raise CheckpointError(f"{path.parent}: {path.name} is unreadable ({type(e).__name__}: {detail})") from None


def _check_state(state: Any, iteration: int, directory: Path) -> dict:
    if not isinstance(state, dict):
        raise CheckpointError(f"{directory / STATE_FILE}: must be a JSON object")
    problems = []
    if state.get("iteration") != iteration:
        problems.append(f"iteration is {state.get('iteration')!r}, the directory says {iteration}")
    position = state.get("data_position")
    if not (isinstance(position, int) and not isinstance(position, bool) and position >= 0):
        problems.append(f"data_position must be a non-negative integer, got {position!r}")
    if not isinstance(state.get("kl_controller"), dict):
        problems.append("kl_controller must be a mapping")
    if problems:
        raise CheckpointError(f"{directory / STATE_FILE}: {'; '.join(problems)}")
    return state


def _check_optimizer(saved: Any, optimizer, directory: Path) -> None:
    """Same parameter groups as this run's optimizer, state tensors of the parameters' shapes, all finite."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    current = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict) or \
            [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{directory}: optimizer.pt does not match this run's parameter groups")
    shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]
    for index, state in saved["state"].items():
        if not (isinstance(index, int) and 0 <= index < len(shapes) and isinstance(state, dict)):
            raise CheckpointError(f"{directory}: optimizer.pt has state for an unknown parameter {index!r}")
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[index]:
                raise CheckpointError(f"{directory}: optimizer.pt state[{index}].{key} has shape {tuple(value.shape)}, "
                                      f"the parameter {shapes[index]}")
    bad = first_non_finite((f"state[{i}].{k}", v) for i, s in saved["state"].items() for k, v in s.items())
    if bad is not None:
        raise CheckpointError(f"{directory}: optimizer.pt tensor {bad!r} has NaN or infinite values")


def _check_rng(rng: Any, directory: Path) -> None:
    """The structure ``set_rng_state`` expects (``rng_state``'s)."""
    ok = (
        isinstance(rng, dict)
        and isinstance(rng.get("python"), (tuple, list)) and len(rng["python"]) == 3
        and isinstance(rng.get("numpy"), (tuple, list)) and len(rng["numpy"]) == 5
        and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
        and isinstance(rng.get("cuda"), (tuple, list))
    )  # fmt: skip
    if not ok:
        raise CheckpointError(f"{directory}: rng.pt does not hold the random generator states of a checkpoint")


def read_checkpoint(directory: Path, policy, value, optimizer) -> CheckpointContents:
    """Read and check every file of a checkpoint against this run's models; raises ``CheckpointError``."""
    directory = Path(directory)
    m = _NAME.match(directory.name)
    if not m:
        raise CheckpointError(f"{directory}: not a checkpoint directory (expected iter-N)")
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {STATE_FILE} (an incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / STATE_FILE}: unreadable ({e})") from None
    state = _check_state(state, int(m.group(1)), directory)
    tensors: dict[str, Any] = {"value": None}
    for what, module in (("policy", policy), ("value", value)):
        if module is None:
            continue
        try:
            tensors[what] = read_safetensors(directory / f"{what}.safetensors", "a checkpoint")
        except FinegrainedError as e:
            raise CheckpointError(str(e)) from None
        _check_weights(tensors[what], module, f"the {what}", directory)
    optimizer_state = _torch_file(directory / "optimizer.pt")
    _check_optimizer(optimizer_state, optimizer, directory)
    scheduler_state = _torch_file(directory / "scheduler.pt")
    if not isinstance(scheduler_state, dict):
        raise CheckpointError(f"{directory}: scheduler.pt does not hold a scheduler state")
    rng = _torch_file(directory / "rng.pt")
    _check_rng(rng, directory)
    return CheckpointContents(directory, tensors["policy"], tensors["value"], optimizer_state, scheduler_state, rng, state)


def apply_checkpoint(contents: CheckpointContents, policy, value, optimizer, scheduler) -> dict:
    """Restore models, optimizer, scheduler and RNG states in place from checked contents; returns state.json."""
    # strict=False: a tied weight is stored once (checked complete by read_checkpoint)
    policy.load_state_dict(contents.policy, strict=False)
    if value is not None:
        value.load_state_dict(contents.value, strict=False)
    optimizer.load_state_dict(contents.optimizer)
    scheduler.load_state_dict(contents.scheduler)
    set_rng_state(contents.rng)
    return contents.state


def load_checkpoint(directory: Path, policy, value, optimizer, scheduler) -> dict:
    """Check one checkpoint whole, then restore it in place; returns state.json (``CheckpointError`` if bad)."""
    contents = read_checkpoint(directory, policy, value, optimizer)
    return apply_checkpoint(contents, policy, value, optimizer, scheduler)


def load_latest_checkpoint(output_dir: Path, policy, value, optimizer, scheduler, log) -> tuple[dict, Path] | None:
    """Restore the newest checkpoint that passes ``read_checkpoint``; every newer one is skipped with a
    message saying why (``log``). None when there is no checkpoint at all; ``CheckpointError`` listing every
    reason when none of them loads."""
    found = checkpoint_dirs(output_dir, complete_only=False)
    if not found:
        return None
    reasons = []
    for _, directory in reversed(found):
        try:
            contents = read_checkpoint(directory, policy, value, optimizer)
        except CheckpointError as e:
            reasons.append(str(e))
            log(f"[ppo] skipped checkpoint {directory}: {e}")
            continue
        return apply_checkpoint(contents, policy, value, optimizer, scheduler), directory
    raise CheckpointError(
        f"{Path(output_dir) / 'checkpoints'}: no checkpoint can be resumed from:\n  " + "\n  ".join(reasons)
        + "\npass overwrite=true to start the run over"
    )
